"""The reports' static charts as inline SVG, readable without JavaScript: the
diff page's KL histogram, KL by position and trend across candidates, and
bisect's KL against depth. One element writer, number format and log-decade
grid for all of them; each chart keeps its own layout and colours.
"""

from __future__ import annotations

import html
import math
import numbers
from typing import Sequence

import numpy as np

from .render import fmt

KL_FLOOR = 1e-12  # KL at or below this (zero included) is drawn at 1e-12
# (statistic, colour) of the KL series: the trend across candidates and bisect's depths.
TREND_SERIES = (("mean", "#1f77b4"), ("p99", "#ff7f0e"), ("max", "#d62728"))
DEPTH_SERIES = (("mean", "#1f77b4"), ("p99", "#ff7f0e"), ("max", "#2ca02c"))


def _value(v) -> str:
    """An attribute value: text as given, integers as they are, other numbers to 0.1 px."""
    if isinstance(v, str):
        return html.escape(v)
    if isinstance(v, numbers.Integral):
        return str(int(v))
    return f"{float(v):.1f}"


def el(tag: str, *content: str, **attrs) -> str:
    """``<tag a="v" ...>content</tag>``, attributes in the order given ("_" in a
    name is "-"); without content the element closes itself. ``content`` is
    markup: escape text with ``html.escape`` first."""
    head = "".join(f' {k.replace("_", "-")}="{_value(v)}"' for k, v in attrs.items())
    return f"<{tag}{head}>{''.join(content)}</{tag}>" if content else f"<{tag}{head}/>"


def _svg(w: int, h: int, label: str, parts: Sequence[str]) -> str:
    return el("svg", *parts, xmlns="http://www.w3.org/2000/svg", width=w, height=h, role="img", aria_label=label)


def _points(pts) -> str:
    return " ".join(f"{a:.1f},{b:.1f}" for a, b, *_ in pts)


def _decades(lo: int, hi: int, y, x1, x2, grid: str, label_x, label=lambda e: f"1e{e}", **label_attrs) -> list[str]:
    """A grid line and its label at every power of ten from 1e``lo`` to 1e``hi``; ``y(e)`` places 1e``e``."""
    return [el("line", x1=x1, x2=x2, y1=y(e), y2=y(e), stroke=grid)
            + el("text", label(e), x=label_x, y=y(e) + 4, text_anchor="end", **label_attrs)
            for e in range(lo, hi + 1)]


def _limit(x1, x2, yy: float, colour: str, limit: float, **label_attrs) -> str:
    """The dashed line of the max-KL threshold, labelled."""
    return (el("line", x1=x1, x2=x2, y1=yy, y2=yy, stroke=colour, stroke_dasharray="5 4")
            + el("text", f"max KL {limit:g}", x=x1 + 4, y=yy - 4, **label_attrs, fill=colour))


def _series(pts: list[tuple[float, float, str, str]], colour: str) -> list[str]:
    """A line through (x, y) and a dot with a tooltip at each: (x, y, title, dot colour)."""
    out = [el("polyline", fill="none", stroke=colour, stroke_width=2, points=_points(pts))] if len(pts) > 1 else []
    return out + [el("circle", el("title", title), cx=a, cy=b, r=4, fill=dot) for a, b, title, dot in pts]


def histogram(kl: np.ndarray, w: int = 900, h: int = 160) -> str:
    """KL histogram on log10 bins."""
    with np.errstate(divide="ignore", invalid="ignore"):
        y = np.log10(np.clip(kl[np.isfinite(kl)], KL_FLOOR, None))
    if not len(y):
        return "<p>no finite KL values</p>"
    lo, hi = math.floor(y.min()), math.ceil(y.max())
    hi = max(hi, lo + 1)
    bins = (hi - lo) * 4
    counts, edges = np.histogram(y, bins=bins, range=(lo, hi))
    pad_l, pad_b = 48, 18
    bw = (w - pad_l - 4) / bins
    top = counts.max() or 1
    parts = []
    for i, c in enumerate(counts):
        bh = (h - pad_b - 6) * c / top
        parts.append(el("rect", el("title", f"{c} positions in [1e{edges[i]:.2f}, 1e{edges[i + 1]:.2f})"),
                        x=pad_l + i * bw, y=h - pad_b - bh, width=float(max(bw - 1, 1)), height=bh, fill="#1f6feb"))
    for e in range(lo, hi + 1):
        label = f"≤ 1e{e}" if e == lo and e <= math.log10(KL_FLOOR) else f"1e{e}"  # zero and negative KL land here
        parts.append(el("text", label, x=pad_l + (e - lo) * 4 * bw, y=h - 4, text_anchor="end" if e == hi else "middle"))
    parts.append(el("text", str(top), x=pad_l - 4, y=12, text_anchor="end"))
    return _svg(w, h, "KL histogram", parts)


def trend(labels: Sequence[str], kl: Sequence[dict], top1: Sequence[float | None], failed: Sequence[bool],
          limit: float | None, w: int = 960, h: int = 300) -> str:
    """KL mean/p99/max (log scale, left) and top-1 agreement (right) per
    candidate, with its legend: one entry per candidate of ``labels``, ``kl``
    its summary's KL statistics, ``failed`` whether its verdict is a fail."""
    n = len(labels)
    pad_l, pad_r, pad_t = 56, 64, 16
    pad_b = 36 if max(len(x) for x in labels) * 6 < (w - pad_l - pad_r) / n else 110
    vals = [s.get(k) for s in kl for k, _ in TREND_SERIES]
    logs = [math.log10(max(v, KL_FLOOR)) for v in vals if v is not None and math.isfinite(v)]
    if limit:
        logs.append(math.log10(limit))
    lo, hi = (math.floor(min(logs)), math.ceil(max(logs))) if logs else (-8, 0)
    hi = max(hi, lo + 1)
    tops = [t for t in top1 if t is not None]
    t_lo = min(0.9, math.floor(min(tops) * 20) / 20) if tops else 0.9

    def x(i: int) -> float:
        return pad_l + (w - pad_l - pad_r) * ((i + 0.5) / n)

    def ey(e: float) -> float:  # 1e``e`` on the KL axis
        return pad_t + (h - pad_t - pad_b) * (1 - (e - lo) / (hi - lo))

    def ky(v: float) -> float:
        return ey(math.log10(max(v, KL_FLOOR)))

    def ty(v: float) -> float:
        return pad_t + (h - pad_t - pad_b) * (1 - (v - t_lo) / (1 - t_lo))

    p = [el("rect", x=pad_l, y=pad_t, width=w - pad_l - pad_r, height=h - pad_t - pad_b, fill="#fafbfc",
            stroke="#d1d9e0")]
    p += _decades(lo, hi, ey, pad_l, w - pad_r, "#eaeef2", pad_l - 4)
    step = next(s for s in (0.005, 0.01, 0.02, 0.025, 0.05, 0.1, 0.2, 0.25) if (1 - t_lo) / s <= 6)
    for k in range(int((1 - t_lo) / step + 1e-9) + 1):
        v = 1 - k * step
        p.append(el("text", f"{v:g}", x=w - pad_r + 4, y=ty(v) + 4, fill="#1a7f37"))
    mid = f"{pad_t + (h - pad_b) / 2:.0f}"
    p.append(el("text", "KL (nats, log)", x=14, y=mid, transform=f"rotate(-90 14 {mid})", text_anchor="middle")
             + el("text", "top-1 agreement", x=w - 10, y=mid, transform=f"rotate(90 {w - 10} {mid})",
                  text_anchor="middle", fill="#1a7f37"))
    if limit:
        p.append(_limit(pad_l, w - pad_r, ky(limit), "#cf222e", limit))
    for key, colour in TREND_SERIES:
        p += _series([(x(i), ky(s[key]), f"{html.escape(labels[i])}: KL {key} {fmt(s[key])}", colour)
                      for i, s in enumerate(kl) if s.get(key) is not None and math.isfinite(s[key])], colour)
    tp = [(x(i), ty(t), i) for i, t in enumerate(top1) if t is not None]
    if len(tp) > 1:
        p.append(el("polyline", fill="none", stroke="#1a7f37", stroke_width=2, stroke_dasharray="6 3",
                    points=_points(tp)))
    for a, b, i in tp:
        p.append(el("rect", el("title", f"{html.escape(labels[i])}: top-1 agreement {fmt(top1[i])}"),
                    x=a - 4, y=b - 4, width=8, height=8, fill="#1a7f37"))
    yb = h - pad_b + 14
    for i, (label, fails) in enumerate(zip(labels, failed)):
        colour = "#cf222e" if fails else "#444"
        if pad_b > 40:
            p.append(el("text", html.escape(label), x=x(i), y=yb, text_anchor="end", fill=colour,
                        transform=f"rotate(-35 {x(i):.1f} {yb})"))
        else:
            p.append(el("text", html.escape(label), x=x(i), y=yb, text_anchor="middle", fill=colour))
    legend = " ".join(f'<span style="color:{c}">&#9679; KL {k}</span>' for k, c in TREND_SERIES)
    return (f'<div>{_svg(w, h, "KL and top-1 agreement per candidate", p)}</div><p class="small">{legend} '
            f'<span style="color:#1a7f37">&#9632; top-1 agreement (right axis)</span>; '
            f'labels in red: the candidate fails.</p>')


def kl_by_depth(depths: Sequence[int], kl: Sequence[dict], verdicts: Sequence[str], total_layers: int,
                limit, first_drift: int | None, w: int = 760, h: int = 320, pad: int = 56) -> str:
    """Bisect's KL (mean, p99, max) against depth on a log scale, with its
    legend: one entry per probed depth, in depth order."""
    def ly(v):
        return math.log10(max(v, KL_FLOOR))

    values = [ly(v) for s in kl for v in (s.get("mean"), s.get("p99"), s.get("max"))
              if isinstance(v, float) and math.isfinite(v)]
    lo, hi = (min(values), max(values)) if values else (-12.0, 0.0)
    lo, hi = math.floor(lo), math.ceil(hi) if math.ceil(hi) > math.floor(lo) else math.floor(lo) + 1
    d0, d1 = min(1, *(depths or [1])), max(total_layers, *(depths or [1]))

    def x(d):
        return pad + (w - 2 * pad) * ((d - d0) / (d1 - d0) if d1 > d0 else 0.5)

    def ey(e):  # 1e``e`` on the KL axis
        return h - pad - (h - 2 * pad) * ((e - lo) / (hi - lo))

    def y(v):
        return ey(ly(v))

    # Zero KL is drawn on the floor.
    svg = _decades(lo, hi, ey, pad, w - pad, "#ddd", pad - 6,
                   lambda e: f"1e{e}" if e > math.log10(KL_FLOOR) else f"\u2264 1e{math.log10(KL_FLOOR):.0f}",
                   font_size=11)
    svg += [el("text", str(d), x=x(d), y=h - pad + 16, text_anchor="middle", font_size=11) for d in range(d0, d1 + 1)]
    svg.append(el("text", "depth (layers)", x=f"{w / 2}", y=h - 12, text_anchor="middle", font_size=12)
               + el("text", "KL (nats)", x=14, y=f"{h / 2}", font_size=12, transform=f"rotate(-90 14 {h / 2})",
                    text_anchor="middle"))
    if isinstance(limit, (int, float)) and limit > 0:
        svg.append(_limit(pad, w - pad, y(limit), "#c00", limit, text_anchor="start", font_size=11))
    for key, colour in DEPTH_SERIES:
        svg += _series([(x(d), y(s[key]), f"depth {d}: KL {key} {fmt(s[key])} ({v})", "#c00" if v == "fail" else colour)
                        for d, s, v in zip(depths, kl, verdicts)
                        if isinstance(s.get(key), float) and math.isfinite(s[key])], colour)
    if first_drift is not None:
        fx = x(first_drift)
        svg.append(el("line", x1=fx, x2=fx, y1=pad, y2=h - pad, stroke="#c00")
                   + el("text", "first drift", x=fx + 4, y=pad + 12, font_size=12, fill="#c00"))
    legend = " ".join(f'<span style="color:{c}">&#9632; KL {k}</span>' for k, c in DEPTH_SERIES)
    return f"{_svg(w, h, 'KL against depth', svg)}<p>{legend}</p>"


POSITION_SERIES = (("kl_mean", "#1f77b4"), ("kl_p99", "#ff7f0e"))


def kl_by_position(bins: Sequence[dict], w: int = 900, h: int = 220) -> str:
    """KL mean (with its 95% interval as a bar) and p99 per bin of absolute
    position (``summary.kl_by_position``'s bins, in position order) on a log
    scale, with its legend."""
    pad_l, pad_r, pad_t, pad_b = 56, 16, 12, 36
    vals = [v for b in bins for v in (b.get("kl_mean"), b.get("kl_p99"), *(b.get("kl_mean_ci95") or ()))
            if v is not None and math.isfinite(v) and v > 0]
    logs = [math.log10(max(v, KL_FLOOR)) for v in vals]
    lo, hi = (math.floor(min(logs)), math.ceil(max(logs))) if logs else (-8, 0)
    hi = max(hi, lo + 1)
    n = max(len(bins), 1)

    def x(i: int) -> float:
        return pad_l + (w - pad_l - pad_r) * ((i + 0.5) / n)

    def ey(e: float) -> float:
        return pad_t + (h - pad_t - pad_b) * (1 - (e - lo) / (hi - lo))

    def ky(v: float) -> float:
        return ey(math.log10(max(v, KL_FLOOR)))

    p = [el("rect", x=pad_l, y=pad_t, width=w - pad_l - pad_r, height=h - pad_t - pad_b, fill="#fafbfc",
            stroke="#d1d9e0")]
    p += _decades(lo, hi, ey, pad_l, w - pad_r, "#eaeef2", pad_l - 4)
    for i, b in enumerate(bins):
        a, z = b["position"]
        # 65536-131071 as 64k-128k: fourteen bins of 128k positions fit side by side.
        label = f"{a // 1024}k-{(z + 1) // 1024}k" if a >= 1024 else f"{a}-{z}"
        p.append(el("text", label, x=x(i), y=h - pad_b + 14, text_anchor="middle"))
        ci = b.get("kl_mean_ci95")
        if ci and all(v is not None and math.isfinite(v) for v in ci):
            p.append(el("line", x1=x(i), x2=x(i), y1=ky(ci[0]), y2=ky(ci[1]), stroke="#1f77b4", stroke_width=2,
                        opacity="0.5"))
    p.append(el("text", "absolute position (bins)", x=f"{(pad_l + w - pad_r) / 2:.0f}", y=h - 4, text_anchor="middle"))
    for key, colour in POSITION_SERIES:
        p += _series([(x(i), ky(b[key]), f"{b['position'][0]}-{b['position'][1]}: KL {key[3:]} {fmt(b[key])} "
                       f"({b['positions']} positions)", colour)
                      for i, b in enumerate(bins) if b.get(key) is not None and math.isfinite(b[key])], colour)
    legend = ('<span style="color:#1f77b4">&#9679; KL mean (bar: 95% interval)</span> '
              '<span style="color:#ff7f0e">&#9679; KL p99 (bins of 100+ positions)</span>')
    return f'<div>{_svg(w, h, "KL by position", p)}</div><p class="small">{legend}</p>'

"""Terminal and HTML renderings of a Report."""

from __future__ import annotations

import html
import math

import numpy as np

from schemas.store import GENERATED, PROMPT

from .floor import times
from .report import Report, sequence_slice

MAX_SEQ_ROWS = 20
MAX_PLOTS = 64
PLOT_POINTS = 800
KL_FLOOR = 1e-12


class _Style:
    def __init__(self, color: bool):
        self.color = color

    def _wrap(self, code: str, text: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.color else text

    def bold(self, t: str) -> str:
        return self._wrap("1", t)

    def red(self, t: str) -> str:
        return self._wrap("31", t)

    def green(self, t: str) -> str:
        return self._wrap("32", t)

    def yellow(self, t: str) -> str:
        return self._wrap("33", t)

    def dim(self, t: str) -> str:
        return self._wrap("2", t)


def fmt(x, digits: int = 4) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        if math.isnan(x):
            return "nan"
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e5):
            return f"{x:.{digits - 1}e}"
        return f"{x:.{digits}f}"
    return str(x)


def _tok(token: int | None, text: str | None) -> str:
    if token is None:
        return "-"
    return f"{token}" + (f" {text!r}" if text is not None else "")


def _store_lines(label: str, info: dict) -> list[str]:
    mode = "full vocab" if info["logprobs"] == -1 else f"top-{info['logprobs']}"
    versions = ", ".join(f"{k} {v}" for k, v in sorted(info["versions"].items()))
    return [
        f"{label:>10}: {info['path']}",
        f"{'':>10}  model={info['model']} device={info['device']} dtype={info['dtype']} {mode} "
        f"vocab={info['vocab_size']} digest={info['digest'][:24]}",
        *([f"{'':>10}  {versions}"] if versions else []),
    ]


def _summary_lines(s: dict, st: _Style) -> list[str]:
    kl = s["kl"]
    approx = " (approximate: top-N rows)" if s.get("approximate") else ""
    lines = [
        f"  positions: {s['positions']}   NaN positions: {s['nan_positions']}   "
        f"+inf positions: {s['inf_positions']}   non-finite KL: {s['nonfinite_kl_positions']}",
        f"  KL(ref||cand) nats{approx}: mean {fmt(kl['mean'])}  median {fmt(kl['median'])}  p90 {fmt(kl['p90'])}  "
        f"p99 {fmt(kl['p99'])}  p99.9 {fmt(kl['p999'])}  max {fmt(kl['max'])}",
        f"  top-1 agreement: {fmt(s['top1_agreement'])}   top-5 overlap: {fmt(s['top5_overlap'])}   "
        f"top-10 overlap: {fmt(s['top10_overlap'])}",
        f"  delta-p (ref top token): mean {fmt(s['delta_p']['mean'])}  RMS {fmt(s['delta_p']['rms'])}   "
        f"max|delta|: {fmt(s['max_abs'])}   mean|delta|: {fmt(s['mean_abs'])}",
        f"  pearson: min {fmt(s['pearson']['min'], 6)}  mean {fmt(s['pearson']['mean'], 6)}   "
        f"outliers: {s['outliers']}   rank of ref top token in cand: mean {fmt(s['rank']['mean'], 2)} "
        f"max {fmt(s['rank']['max'], 0)}",
    ]
    if s.get("token_match_rate") is not None:
        lines.append(f"  token match rate: {fmt(s['token_match_rate'])}")
    return lines


def _pearson_mark(r: float | None, st: _Style) -> str:
    if r is None or math.isnan(r):
        return ""
    if r >= 0.999:
        return st.green("✓")
    if r >= 0.99:
        return st.yellow("~")
    return st.red("✗")


def _legacy_block(d: dict, st: _Style) -> list[str]:
    """The legacy tool's block for the worst position: stats, snippet, top-5 table."""
    snip = lambda s: "[" + ", ".join(f"{v:.4f}" for v in s["head"]) + ", ..., " + ", ".join(f"{v:.4f}" for v in s["tail"]) + "]"  # noqa: E731
    lines = [
        st.bold(f"Worst position: sequence {d['sequence']}, {d['kind']} position {d['position']}, KL {fmt(d['kl'])}"),
        f"Outliers (absΔ ≥ EPS): {d['outliers']}  (EPS={d['eps']})",
        f"        Vocab size: {d['vocab_size']}",
        f"    Finite overlap: {d['finite']}",
        f"          max|Δ|: {fmt(d['max_abs'], 6)}",
        f"         mean|Δ|: {fmt(d['mean_abs'], 6)}",
        f"          pearson: {fmt(d['pearson'], 6)}  {_pearson_mark(d['pearson'], st)}",
        "",
        "Logits-like (logprob) snippet — head…tail",
        f"  cand  : {snip(d['snippet']['candidate'])}",
        f"  golden: {snip(d['snippet']['reference'])}",
        "",
        "Top-5 (logprob) argmax — CAND vs GOLD",
        "-" * 56,
        f"{'Rank':<8}{'C.idx':>6}{'C.val':>11}{'G.idx':>13}{'G.val':>11}",
    ]
    c, g = d["top5"]["candidate"], d["top5"]["reference"]
    for i in range(max(len(c), len(g))):
        ci, cv = c[i] if i < len(c) else ("-", float("nan"))
        gi, gv = g[i] if i < len(g) else ("-", float("nan"))
        row = f"{i + 1:>4}    {ci!s:>6}{cv:>11.4f}{gi!s:>13}{gv:>11.4f}"
        lines.append(row if ci == gi else st.yellow(row))
    return lines


def render_text(report: Report, color: bool = True) -> str:
    st = _Style(color)
    r = report
    out = [st.bold("parity diff"), *_store_lines("reference", r.reference), *_store_lines("candidate", r.candidate)]
    out.append(f"{'alignment':>10}: " + ("same forced trajectory: every position compared" if r.forced
                                         else "free-running: positions up to each sequence's first divergent token"))
    for w in r.warnings:
        out.append(st.yellow(f"  warning: {w}"))
    out += ["", st.bold("Generated positions"), *_summary_lines(r.summary, st)]
    if r.prompt:
        out += ["", st.bold("Prompt positions"), *_summary_lines(r.prompt, st)]
    if r.floor:
        out += ["", st.bold("Noise floor (baseline vs reference)"), *_floor_lines(r.floor, st)]

    out += ["", st.bold("Sequences"),
            f"  {'seq':>4} {'positions':>9} {'first div':>9} {'KL mean':>11} {'KL max':>11} {'top-1':>7}  vLLM rule"]
    for s in r.sequences[:MAX_SEQ_ROWS]:
        div = s.get("divergence")
        rule = "-" if not div else (st.green("ok") if div["passes"] else st.red("FAIL")) + (
            f" (ref tok rank {fmt(div['ref_token_rank_in_cand'], 0)} in cand, cand tok rank {fmt(div['cand_token_rank_in_ref'], 0)} in ref)")
        fd = "-" if s["first_divergence"] is None else str(s["first_divergence"])
        out.append(f"  {s['index']:>4} {s['positions']:>9} {fd:>9} {fmt(s['kl_mean']):>11} {fmt(s['kl_max']):>11} "
                   f"{fmt(s['top1_agreement'], 3):>7}  {rule}")
    if len(r.sequences) > MAX_SEQ_ROWS:
        out.append(st.dim(f"  ... {len(r.sequences) - MAX_SEQ_ROWS} more sequences (see --json / --html)"))

    out += ["", st.bold("KL by reference top-token confidence"),
            f"  {'p(top)':>13} {'positions':>9} {'KL mean':>11} {'KL median':>11} {'KL max':>11} {'top-1':>7}"]
    for b in r.kl_by_confidence:
        lo, hi = b["confidence"]
        out.append(f"  {f'[{lo:.2f}, {hi:.2f}]':>13} {b['positions']:>9} {fmt(b['kl_mean']):>11} "
                   f"{fmt(b['kl_median']):>11} {fmt(b['kl_max']):>11} {fmt(b['top1_agreement'], 3):>7}")

    if r.worst:
        out += ["", st.bold("Worst positions"),
                f"  {'kind':<9} {'seq':>4} {'pos':>6} {'KL':>11}  token / ref top / cand top"]
        for w in r.worst:
            line = (f"  {w['kind']:<9} {w['sequence']:>4} {w['position']:>6} {fmt(w['kl']):>11}  "
                    f"{_tok(w['token'], w['token_text'])} / {_tok(w['ref_top'], w['ref_top_text'])} / "
                    f"{_tok(w['cand_top'], w['cand_top_text'])}")
            out.append(line if w["top1"] else st.red(line))
    if r.worst_detail:
        out += ["", *_legacy_block(r.worst_detail, st)]

    out.append("")
    if r.verdict == "report":
        out.append(st.bold("verdict: report only (no thresholds given)"))
    elif r.verdict == "pass":
        out.append(st.green(st.bold("verdict: PASS")) + f"  thresholds {_thr(r)}")
    else:
        out.append(st.red(st.bold("verdict: FAIL")) + f"  thresholds {_thr(r)}")
        out += [st.red(f"  - {f}") for f in r.failures]
    return "\n".join(out) + "\n"


def _thr(r: Report) -> str:
    items = [(k, v) for k, v in r.thresholds.to_dict().items() if v is not None]
    if r.floor and r.floor["max_floor_ratio"] is not None:
        items.append(("max_floor_ratio", r.floor["max_floor_ratio"]))
    return ", ".join(f"{k}={v:g}" for k, v in items)


def _baseline_label(f: dict) -> str:
    b = f["baseline"]
    mode = "full vocab" if b["logprobs"] == -1 else f"top-{b['logprobs']}"
    free = "" if f["forced_trajectory"] else ", free-running"
    return f"{b['device']} {b['dtype']} ({mode}{free}) {b['path']}"


def _x(r: float | None) -> str:
    if r is None or math.isinf(r):
        return times(r)
    return f"{times(r)}x"


def _ratio_line(label: str, rt: dict, limit: float | None) -> str:
    p99 = rt["kl_p99"]
    lead = ("is above the baseline's zero floor" if p99 is not None and math.isinf(p99)
            else f"is {_x(p99)} the baseline floor")
    line = (f"{label} KL p99 {lead} (mean {_x(rt['kl_mean'])}, max {_x(rt['kl_max'])}, "
            f"top-1 disagreement {_x(rt['top1_disagreement'])})")
    return line + (f"; limit {limit:g}x" if limit is not None else "")


def _floor_lines(f: dict, st: _Style) -> list[str]:
    lines = [f"  baseline: {_baseline_label(f)}"]
    for label, s in (("generated", f["generated"]), ("prompt", f["prompt"])):
        if s is not None:
            lines.append(f"  {label:<9}  positions {s['positions']}   KL mean {fmt(s['kl_mean'])}  p99 {fmt(s['kl_p99'])}  "
                         f"max {fmt(s['kl_max'])}   top-1 agreement {fmt(s['top1_agreement'])}")
    limit = f["max_floor_ratio"]
    r = f["ratios"]["kl_p99"]
    line = "  " + _ratio_line("candidate", f["ratios"], limit)
    if limit is not None and r is not None:
        line = st.red(line) if r > limit else st.green(line)
    lines.append(line)
    if f["prompt_ratios"]:
        lines.append("  " + _ratio_line("prompt: candidate", f["prompt_ratios"], None))
    if f["baseline_verdict"] != "report":
        lines.append(f"  baseline against the thresholds: {f['baseline_verdict'].upper()}")
    lines += [st.dim(f"  baseline: {w}") for w in f["warnings"]]
    return lines


# -- HTML ------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1100px}
h1{font-size:1.4em} h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.9em} td,th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}
th{background:#f4f4f4} td.l,th.l{text-align:left}
.pass{color:#1a7f37;font-weight:bold}.fail{color:#c62828;font-weight:bold}.report{color:#555;font-weight:bold}
.warn{color:#9a6700} .plot{margin:.4em 0 1.2em} svg text{font-size:10px;fill:#444}
"""


def _log_kl(kl: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log10(np.clip(np.where(np.isfinite(kl), kl, np.nan), KL_FLOOR, None))


def _kl_plot(kl: np.ndarray, positions: np.ndarray, marks: list[tuple[int, str, str]], limit: float | None,
             w: int = 960, h: int = 150) -> str:
    """Per-position KL (log scale) as an SVG polyline; spikes survive downsampling."""
    pad_l, pad_b, pad_t = 48, 18, 6
    n = len(kl)
    if n == 0:
        return "<p>no positions compared</p>"
    y = _log_kl(kl)
    bad = ~np.isfinite(kl)
    if n > PLOT_POINTS:  # keep each bucket's maximum
        edges = np.linspace(0, n, PLOT_POINTS + 1).astype(int)
        y = np.array([np.nanmax(y[a:b]) if np.isfinite(y[a:b]).any() else np.nan for a, b in zip(edges[:-1], edges[1:])])
        xs = edges[:-1]
    else:
        xs = np.arange(n)
    finite = y[np.isfinite(y)]
    lo = math.floor(min(finite.min(), math.log10(limit) if limit else 0) if len(finite) else -6)
    hi = math.ceil(max(finite.max(), math.log10(limit) if limit else -12) if len(finite) else 0)
    hi = max(hi, lo + 1)
    px = lambda i: pad_l + (w - pad_l - 4) * (i / max(n - 1, 1))  # noqa: E731
    py = lambda v: pad_t + (h - pad_t - pad_b) * (1 - (v - lo) / (hi - lo))  # noqa: E731
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img">',
             f'<rect x="{pad_l}" y="{pad_t}" width="{w - pad_l - 4}" height="{h - pad_t - pad_b}" fill="#fafafa" stroke="#ccc"/>']
    for e in range(lo, hi + 1):
        yy = py(e)
        parts.append(f'<line x1="{pad_l}" x2="{w - 4}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#eee"/>'
                     f'<text x="{pad_l - 4}" y="{yy + 3:.1f}" text-anchor="end">1e{e}</text>')
    if limit:
        yy = py(math.log10(max(limit, KL_FLOOR)))
        parts.append(f'<line x1="{pad_l}" x2="{w - 4}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#c62828" stroke-dasharray="4 3"/>')
    for at, color, label in marks:
        xx = px(at)
        parts.append(f'<line x1="{xx:.1f}" x2="{xx:.1f}" y1="{pad_t}" y2="{h - pad_b}" stroke="{color}" stroke-width="1.5"/>'
                     f'<text x="{xx + 3:.1f}" y="{pad_t + 10}" fill="{color}">{html.escape(label)}</text>')
    pts, segs = [], []
    for i, v in zip(xs, y):
        if np.isfinite(v):
            pts.append(f"{px(i):.1f},{py(v):.1f}")
        elif pts:
            segs.append(pts)
            pts = []
    if pts:
        segs.append(pts)
    for s in segs:
        parts.append(f'<polyline fill="none" stroke="#1f6feb" stroke-width="1" points="{" ".join(s)}"/>')
    for i in np.flatnonzero(bad)[:200]:
        parts.append(f'<circle cx="{px(i):.1f}" cy="{pad_t + 3}" r="2.5" fill="#c62828"/>')
    parts.append(f'<text x="{pad_l}" y="{h - 4}">position {int(positions[0])}</text>'
                 f'<text x="{w - 4}" y="{h - 4}" text-anchor="end">position {int(positions[-1])}</text></svg>')
    return "".join(parts)


def _histogram(kl: np.ndarray, w: int = 960, h: int = 180) -> str:
    y = _log_kl(kl)
    y = y[np.isfinite(y)]
    if not len(y):
        return "<p>no finite KL values</p>"
    lo, hi = math.floor(y.min()), math.ceil(y.max())
    hi = max(hi, lo + 1)
    bins = (hi - lo) * 4
    counts, edges = np.histogram(y, bins=bins, range=(lo, hi))
    pad_l, pad_b = 48, 18
    bw = (w - pad_l - 4) / bins
    top = counts.max() or 1
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img">']
    for i, c in enumerate(counts):
        bh = (h - pad_b - 6) * c / top
        parts.append(f'<rect x="{pad_l + i * bw:.1f}" y="{h - pad_b - bh:.1f}" width="{max(bw - 1, 1):.1f}" '
                     f'height="{bh:.1f}" fill="#1f6feb"><title>{c} positions in [1e{edges[i]:.2f}, 1e{edges[i + 1]:.2f})</title></rect>')
    for e in range(lo, hi + 1):
        parts.append(f'<text x="{pad_l + (e - lo) * 4 * bw:.1f}" y="{h - 4}" text-anchor="middle">1e{e}</text>')
    parts.append(f'<text x="{pad_l - 4}" y="12" text-anchor="end">{top}</text></svg>')
    return "".join(parts)


def _table(head: list[str], rows: list[list], left: int = 0) -> str:
    th = "".join(f'<th class="{"l" if i < left else ""}">{html.escape(h)}</th>' for i, h in enumerate(head))
    body = "".join(
        "<tr>" + "".join(f'<td class="{"l" if i < left else ""}">{html.escape(str(c))}</td>' for i, c in enumerate(r)) + "</tr>"
        for r in rows
    )
    return f"<table><tr>{th}</tr>{body}</table>"


def _summary_table(s: dict) -> str:
    kl = s["kl"]
    rows = [
        ["positions", s["positions"]], ["KL mean", fmt(kl["mean"])], ["KL median", fmt(kl["median"])],
        ["KL p90", fmt(kl["p90"])], ["KL p99", fmt(kl["p99"])], ["KL p99.9", fmt(kl["p999"])], ["KL max", fmt(kl["max"])],
        ["non-finite KL", s["nonfinite_kl_positions"]], ["top-1 agreement", fmt(s["top1_agreement"])],
        ["top-5 overlap", fmt(s["top5_overlap"])], ["delta-p RMS", fmt(s["delta_p"]["rms"])],
        ["max |delta|", fmt(s["max_abs"])], ["NaN positions", s["nan_positions"]],
        ["token match rate", fmt(s.get("token_match_rate"))],
    ]
    return _table(["metric", "value"], rows, left=1)


def _floor_html(r: Report) -> str:
    f, e = r.floor, html.escape
    g, rt = f["generated"], f["ratios"]
    c = r.summary
    rows = [
        ["positions", g["positions"], c["positions"], ""],
        ["KL mean", fmt(g["kl_mean"]), fmt(c["kl"]["mean"]), _x(rt["kl_mean"])],
        ["KL p50", fmt(g["kl_p50"]), fmt(c["kl"]["median"]), ""],
        ["KL p99", fmt(g["kl_p99"]), fmt(c["kl"]["p99"]), _x(rt["kl_p99"])],
        ["KL max", fmt(g["kl_max"]), fmt(c["kl"]["max"]), _x(rt["kl_max"])],
        ["top-1 agreement", fmt(g["top1_agreement"]), fmt(c["top1_agreement"]),
         _x(rt["top1_disagreement"]) + " (disagreement)"],
    ]
    parts = [
        "<h2>Noise floor (baseline vs reference)</h2>",
        f"<p>baseline: {e(_baseline_label(f))}</p>",
        _table(["generated positions", "baseline (floor)", "candidate", "candidate / floor"], rows, left=1),
        f"<p>{e(_ratio_line('candidate', rt, f['max_floor_ratio']))}</p>",
    ]
    if f["prompt"] is not None:
        p = f["prompt"]
        parts.append(f"<p>prompt positions: baseline KL mean {e(fmt(p['kl_mean']))}, p99 {e(fmt(p['kl_p99']))}, "
                     f"max {e(fmt(p['kl_max']))}, top-1 {e(fmt(p['top1_agreement']))}"
                     + (f"; {e(_ratio_line('candidate', f['prompt_ratios'], None))}" if f["prompt_ratios"] else "")
                     + "</p>")
    if f["baseline_verdict"] != "report":
        v = f["baseline_verdict"]
        parts.append(f'<p>baseline against the thresholds: <span class="{e(v)}">{e(v.upper())}</span></p>')
    if f["warnings"]:
        parts.append("<ul>" + "".join(f'<li class="warn">baseline: {e(w)}</li>' for w in f["warnings"]) + "</ul>")
    return "".join(parts)


def render_html(report: Report) -> str:
    r = report
    e = html.escape
    limit = r.thresholds.max_kl
    parts = [
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>parity diff</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>parity diff</h1>",
        f'<p>verdict: <span class="{e(r.verdict)}">{e(r.verdict.upper())}</span></p>',
    ]
    if r.failures:
        parts.append("<ul>" + "".join(f'<li class="fail">{e(f)}</li>' for f in r.failures) + "</ul>")
    parts.append(_table(
        ["", "path", "model", "device", "dtype", "logprobs", "digest"],
        [[label, i["path"], i["model"], i["device"], i["dtype"], i["logprobs"], i["digest"][:24]]
         for label, i in (("reference", r.reference), ("candidate", r.candidate))], left=7))
    parts.append("<p>" + ("Same forced trajectory: every position compared." if r.forced else
                          "Free-running: positions up to each sequence's first divergent token.") + "</p>")
    if r.warnings:
        parts.append("<ul>" + "".join(f'<li class="warn">{e(w)}</li>' for w in r.warnings) + "</ul>")
    parts.append("<h2>Generated positions</h2>" + _summary_table(r.summary))
    if r.prompt:
        parts.append("<h2>Prompt positions</h2>" + _summary_table(r.prompt))
    if r.floor:
        parts.append(_floor_html(r))

    gen = r.positions.get(GENERATED, {})
    pr = r.positions.get(PROMPT, {})
    parts.append("<h2>KL histogram (generated positions, log10 nats)</h2>")
    parts.append(_histogram(gen["kl"]) if gen else "<p>no data</p>")
    parts.append("<h2>KL per position, by sequence</h2><p>Log scale. Red dashed line: --max-kl. "
                 "Orange: first argmax disagreement. Red: first divergent generated token. "
                 "Red dots: non-finite KL.</p>")
    order = sorted(r.sequences, key=lambda s: -(s["kl_max"] if s["kl_max"] is not None else math.inf))
    for s in sorted(order[:MAX_PLOTS], key=lambda s: s["index"]):
        i = s["index"]
        marks = []
        if s.get("first_top1_mismatch") is not None:
            marks.append((s["first_top1_mismatch"], "#e36209", "argmax differs"))
        if s["first_divergence"] is not None:
            marks.append((s["first_divergence"], "#c62828", "tokens diverge"))
        parts.append(f"<h3>sequence {i}: KL mean {e(fmt(s['kl_mean']))}, max {e(fmt(s['kl_max']))}, "
                     f"top-1 {e(fmt(s['top1_agreement'], 3))}</h3>")
        if gen:
            sl = sequence_slice(gen["seq"], i)
            parts.append(f'<div class="plot">{_kl_plot(gen["kl"][sl], gen["pos"][sl], marks, limit)}</div>')
        if pr and len(pr["seq"]):
            sl = sequence_slice(pr["seq"], i)
            if sl.stop > sl.start:
                parts.append(f'<div class="plot">prompt positions{_kl_plot(pr["kl"][sl], pr["pos"][sl], [], limit, h=100)}</div>')
    if len(r.sequences) > MAX_PLOTS:
        parts.append(f"<p>{len(r.sequences) - MAX_PLOTS} sequences with the smallest max KL not plotted.</p>")

    parts.append("<h2>Worst positions</h2>" + _table(
        ["kind", "seq", "pos", "KL", "token", "ref top", "cand top", "p(ref top)", "delta-p"],
        [[w["kind"], w["sequence"], w["position"], fmt(w["kl"]), _tok(w["token"], w["token_text"]),
          _tok(w["ref_top"], w["ref_top_text"]), _tok(w["cand_top"], w["cand_top_text"]), fmt(w["ref_conf"]),
          fmt(w["delta_p"])] for w in r.worst], left=1))
    parts.append("<h2>KL by reference top-token confidence</h2>" + _table(
        ["p(top)", "positions", "KL mean", "KL median", "KL max", "top-1"],
        [[f"[{b['confidence'][0]:.2f}, {b['confidence'][1]:.2f}]", b["positions"], fmt(b["kl_mean"]),
          fmt(b["kl_median"]), fmt(b["kl_max"]), fmt(b["top1_agreement"], 3)] for b in r.kl_by_confidence]))
    parts.append("</body></html>\n")
    return "".join(parts)

"""The HTML report: ``render_html(report)`` or ``render_html([r1, r2, ...])``.

One self-contained file (no network fetch, no external script, font or
style) that opens in any current browser:

* an overview heatmap, sequences by position, colour = KL on a log scale,
  each sequence's first argmax disagreement and first divergent token marked,
  so where drift starts shows at a glance; hovering a cell names it, clicking
  it (or a worst-position link, or ``#select=SEQ,POS[&cand=N][&kind=prompt]``
  in the URL) fills a panel with the position's token and context, both
  sides' top-5 (ids, texts, logprobs, probabilities), KL, and the sequence's
  KL profile;
* with several candidates (``compare``), a trend plot of KL mean/p99/max and
  top-1 agreement per candidate, and tabs that switch heatmap and sections;
* the summaries of the terminal report: verdicts, failures, thresholds,
  summary tables, the noise floor, worst positions, the worst position's
  block, KL by confidence, a KL histogram, per-sequence tables.

Why a <canvas> and a few hundred lines of inline JavaScript rather than a
plotting library: the heatmap is one cell per compared position, 500k cells
for 500 sequences of 1000 tokens. Vega-Lite (with Vega, ~1 MB inline) makes
a scenegraph mark per cell: slow and memory-hungry at 500k. Plotly's heatmap
trace draws an image and would cope, but its bundle alone is ~3.5 MB per
page, and the linked detail panel, the drift markers and row sorting would
still be our JavaScript around it. Here each cell is one ImageData pixel
scaled by CSS. Measured in headless Chromium (tests/differ/
test_html_browser.py prints the numbers; Python's render_html time aside):
6 sequences x 50 tokens, 1 candidate: 65 kB, drawn in ~50 ms; 3 candidates:
110 kB, ~60 ms; 500 x 1000, 1 candidate: 6.0 MB, 0.1-0.25 s (3 candidates:
15 MB, ~0.25 s). The small static charts (trend, histogram) are SVG written
here, readable without JavaScript.

The per-position data travel as one zlib stream of byte-shuffled typed
arrays (float32 KL, int32 token ids and uint8 top-1 agreement per cell; with
``diff(details=True)`` both sides' int32 top-5 ids and float32 logprobs per
position), base64 in the page, unpacked by the browser's DecompressionStream
(Chrome 80+, Firefox 113+, Safari 16.4+). KL and ids are exact; logprobs keep
``LP_BITS`` significant bits. At most ``DETAIL_CAP`` positions per candidate
carry top-5 lists (the page says so when the cap bites): the positions with
the largest KL, and every sequence's first argmax disagreement and first
divergent token.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
import time
import zlib
from typing import Callable, Sequence

import numpy as np

from parity.errors import UsageError
from parity.schemas.store import GENERATED, PROMPT

from .render import _baseline_label, _ratio_line, _thr, _tok, _x, fmt
from .report import Report, sequence_slice

log = logging.getLogger("parity")

DETAIL_CAP = 100_000  # positions per candidate whose top-5 are embedded
# Top-5 logprobs keep 12 of float32's 24 significant bits (relative error
# <= 1.2e-4: -10.0000 +- 0.0012, a probability to about 0.1%): the low bits
# are noise to a reader and would be half of a 500x1000 page.
LP_BITS = 12
KL_FLOOR = 1e-12
MAX_OPEN_SEQ_ROWS = 40  # longer sequence tables start collapsed
Decode = Callable[[int], str]

_CSS = """
:root{--fg:#1f2328;--mute:#59636e;--line:#d1d9e0;--bg2:#f6f8fa;--blue:#1f6feb}
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.5em auto;padding:0 1.5em;color:var(--fg);
  max-width:1280px;font-size:14px;line-height:1.4}
h1{font-size:1.5em;margin:.2em 0} h2{font-size:1.2em;margin:1.6em 0 .5em;border-bottom:1px solid var(--line)}
h3{font-size:1.05em;margin:1.2em 0 .4em}
table{border-collapse:collapse;font-size:.92em;margin:.3em 0} td,th{padding:2px 8px;border-bottom:1px solid #e6e9ec;
  text-align:right;white-space:nowrap} th{background:var(--bg2);font-weight:600} td.l,th.l{text-align:left}
code.path{white-space:normal;word-break:break-all;display:inline-block;max-width:34em;text-align:left}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.92em}
.pass{color:#1a7f37;font-weight:bold}.fail{color:#cf222e;font-weight:bold}.report{color:var(--mute);font-weight:bold}
.warn{color:#9a6700} .mute{color:var(--mute)} .small{font-size:.88em}
ul.fails li{color:#cf222e} a{color:var(--blue)}
.tabs{display:flex;flex-wrap:wrap;gap:4px;margin:.6em 0}
.tabs button{border:1px solid var(--line);background:#fff;border-radius:6px;padding:3px 10px;cursor:pointer;font:inherit}
.tabs button[aria-pressed=true]{background:var(--fg);color:#fff;border-color:var(--fg)}
.tabs .lbl{color:var(--mute);padding:3px 4px 3px 0}
#heat-wrap{position:relative;user-select:none}
#heat{position:absolute;image-rendering:pixelated;image-rendering:crisp-edges}
#heat-over{position:absolute;left:0;top:0;cursor:crosshair;outline:none}
#tip{position:fixed;pointer-events:none;background:rgba(31,35,40,.94);color:#fff;padding:5px 8px;border-radius:6px;
  font-size:12px;max-width:420px;display:none;z-index:10;white-space:pre-wrap}
#legend{display:flex;flex-wrap:wrap;align-items:center;gap:14px;margin:.4em 0;font-size:.9em}
.sw{display:inline-block;width:12px;height:12px;vertical-align:-2px;border:1px solid #999;margin-right:4px}
#panel{border:1px solid var(--line);border-radius:8px;padding:.6em 1em;margin:.8em 0;background:#fff;min-height:3em}
#panel .ctx{font-family:ui-monospace,Menlo,Consolas,monospace;background:var(--bg2);padding:4px 6px;border-radius:4px;
  white-space:pre-wrap;word-break:break-all}
#panel .ctx mark{background:#ffd33d;padding:0 1px} #panel .ctx .t1{background:#e6e9ec}
#panel table.top5 td.id{color:var(--mute)} #panel tr.diff td{background:#fff8c5}
#profile{display:block;margin-top:.5em;cursor:crosshair}
.js .cand-only{display:none} .js .cand-only.active{display:block}
#err{display:none;background:#ffebe9;border:1px solid #cf222e;color:#cf222e;padding:.5em 1em;border-radius:6px}
svg text{font-size:11px;fill:#444}
details>summary{cursor:pointer;color:var(--blue)}
"""


# -- data ------------------------------------------------------------------

def _as_list(reports: Report | Sequence[Report]) -> list[Report]:
    out = [reports] if isinstance(reports, Report) else list(reports)
    if not out:
        raise UsageError("render_html needs at least one report")
    if not all(isinstance(r, Report) for r in out):
        raise UsageError("render_html takes a Report or a list of Reports")
    digests = {r.reference.get("digest") for r in out}
    if len(digests) > 1:
        raise UsageError("render_html: the reports compare different references; "
                         "one page shows the candidates of one reference")
    return out


def _labels(reports: list[Report]) -> list[str]:
    if len(reports) == 1:
        c = reports[0].candidate
        return [f"{c.get('device')} {c.get('dtype')}"]
    from .multi import labels  # the terminal table's labels: the same names in both
    return labels(reports)


def _num(x) -> float | str | None:
    """JSON-safe number: non-finite floats as strings JavaScript's Number() reads."""
    if x is None:
        return None
    x = float(x)
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    return x


class _Blob:
    """Typed arrays packed for the page: byte-shuffled (the bytes of each
    significance together, as blosc does: float exponents and small ids then
    compress well), concatenated, zlib-compressed, base64."""

    CODES = {np.dtype(np.float32): "f4", np.dtype(np.int32): "i4", np.dtype(np.uint8): "u1"}

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.index: list[dict] = []
        self.size = 0

    def add(self, name: str, arr: np.ndarray) -> None:
        arr = np.ascontiguousarray(arr).ravel()
        code = self.CODES[arr.dtype]
        raw = arr.view(np.uint8).reshape(len(arr), arr.itemsize).T.tobytes() if arr.itemsize > 1 else arr.tobytes()
        self.index.append({"name": name, "dtype": code, "n": int(len(arr)), "offset": self.size})
        self.parts.append(raw)
        self.size += len(raw)

    def encode(self) -> str:
        return base64.b64encode(zlib.compress(b"".join(self.parts), 6)).decode("ascii")


def _kinds(reports: list[Report]) -> list[str]:
    return [k for k in (GENERATED, PROMPT) if any(_positions(r, k) for r in reports)]


def _layout(reports: list[Report], kind: str) -> dict:
    """Cells of one kind: per sequence, the longest prefix any candidate compared.

    Positions of a sequence are a prefix on every side (plan.build_plan):
    generated index j from 0, prompt position k from 1; a candidate's cell for
    (s, j) is ``offset[s] + j`` and it covers ``count[c][s]`` cells of row s.
    """
    seqs = reports[0].sequences
    n = len(seqs)
    base = np.array([s["prompt_len"] if kind == GENERATED else 1 for s in seqs], np.int64)
    counts = []
    for r in reports:
        pos = _positions(r, kind)
        counts.append(np.bincount(pos["seq"], minlength=n)[:n] if pos else np.zeros(n, np.int64))
    length = np.max(counts, axis=0)
    offset = np.concatenate([[0], np.cumsum(length)])
    return {"base": base, "counts": counts, "length": length, "offset": offset, "cells": int(offset[-1])}


def _positions(r: Report, kind: str) -> dict | None:
    """The report's per-position arrays of a kind, None when it compared none."""
    pos = r.positions.get(kind)
    return pos if pos is not None and len(pos.get("kl", ())) else None


def _cells(pos: dict, lay: dict) -> np.ndarray:
    return lay["offset"][pos["seq"]] + (pos["pos"] - lay["base"][pos["seq"]])


def _detail_rows(r: Report, cap: int) -> dict[str, np.ndarray | None]:
    """Per kind, the positions whose top-5 go into the page (None: all of them)."""
    kinds = [k for k in (GENERATED, PROMPT) if _positions(r, k) and "cand_top5_ids" in r.positions[k]]
    total = sum(len(r.positions[k]["kl"]) for k in kinds)
    if total <= cap:
        return {k: None for k in kinds}
    # Largest KL first, non-finite before all; each sequence's first argmax
    # disagreement and first divergent token always (where drift starts).
    scores = []
    for k in kinds:
        kl = r.positions[k]["kl"]
        score = np.where(np.isnan(kl), np.inf, np.nan_to_num(kl, posinf=np.finfo(np.float64).max))
        if k == GENERATED:
            pos = r.positions[k]
            for s in r.sequences:
                sl = sequence_slice(pos["seq"], s["index"])
                for j in (s.get("first_top1_mismatch"), s.get("first_divergence")):
                    if j is not None and sl.start + j < sl.stop:
                        score[sl.start + j] = np.inf
        scores.append(score)
    allscore = np.concatenate(scores)
    keep = np.zeros(total, bool)
    keep[np.argpartition(-allscore, cap - 1)[:cap]] = True
    out, a = {}, 0
    for k, score in zip(kinds, scores):
        out[k] = np.flatnonzero(keep[a: a + len(score)])
        a += len(score)
    return out


def _round_bits(x: np.ndarray, bits: int = LP_BITS) -> np.ndarray:
    """float32 rounded to ``bits`` significant bits (to nearest); NaN and inf kept."""
    x = np.ascontiguousarray(x, np.float32)
    drop = 24 - bits
    u = x.view(np.uint32)
    r = ((u + np.uint32(1 << (drop - 1))) & ~np.uint32((1 << drop) - 1)).view(np.float32)
    return np.where(np.isfinite(x), r, x).astype(np.float32)


def _pack(reports: list[Report], cap: int, decode: Decode | None) -> tuple[dict, str]:
    blob = _Blob()
    kinds = _kinds(reports)
    meta: dict = {"kinds": {}, "cands": [], "detailCap": cap}
    used_ids: list[np.ndarray] = []
    finite: list[np.ndarray] = []
    layouts = {k: _layout(reports, k) for k in kinds}
    for kind, lay in layouts.items():
        tokens = np.full(lay["cells"], -1, np.int32)
        for r in reports:
            pos = _positions(r, kind)
            if pos:
                tokens[_cells(pos, lay)] = pos["token"]
        blob.add(f"tok/{kind}", tokens)
        used_ids.append(tokens)
        meta["kinds"][kind] = {
            "seqs": [int(s["index"]) for s in reports[0].sequences],
            "base": lay["base"].tolist(),
            "len": lay["length"].tolist(),
            "off": lay["offset"][:-1].tolist(),
            "counts": [c.tolist() for c in lay["counts"]],
        }
    for c, r in enumerate(reports):
        rows = _detail_rows(r, cap)
        cm: dict = {"details": {}, "seq": {
            "firstTop1": [s.get("first_top1_mismatch") for s in r.sequences],
            "firstDiv": [s["first_divergence"] for s in r.sequences],
            "klMax": [_num(s["kl_max"]) for s in r.sequences],
            "klMean": [_num(s["kl_mean"]) for s in r.sequences],
            "top1": [_num(s["top1_agreement"]) for s in r.sequences],
        }}
        for kind, lay in layouts.items():
            pos = _positions(r, kind)
            kl = np.full(lay["cells"], np.nan, np.float32)
            top1 = np.zeros(lay["cells"], np.uint8)
            if pos:
                at = _cells(pos, lay)
                kl[at] = pos["kl"]
                top1[at] = pos["top1"]
                f = pos["kl"][np.isfinite(pos["kl"]) & (pos["kl"] > 0)]
                if len(f):
                    finite.append(f)
            blob.add(f"kl/{c}/{kind}", kl)
            blob.add(f"top1/{c}/{kind}", top1)
            if not pos or kind not in rows:
                continue
            sel = rows[kind]
            take = slice(None) if sel is None else sel
            ids = np.concatenate([pos["ref_top5_ids"][take], pos["cand_top5_ids"][take]], axis=1).astype(np.int32)
            lp = _round_bits(np.concatenate([pos["ref_top5_lp"][take], pos["cand_top5_lp"][take]], axis=1))
            blob.add(f"dids/{c}/{kind}", ids)
            blob.add(f"dlp/{c}/{kind}", lp)
            used_ids.append(ids.ravel())
            d = {"n": int(len(ids)), "of": int(len(pos["kl"]))}
            if sel is not None:
                blob.add(f"dsel/{c}/{kind}", sel.astype(np.int32))
                d["sel"] = True
            cm["details"][kind] = d
        meta["cands"].append(cm)
    meta["scale"] = _scale(finite, reports[0].thresholds.max_kl)
    meta["texts"] = _texts(reports, used_ids, decode)
    meta["arrays"] = blob.index
    meta["rawBytes"] = blob.size
    return meta, blob.encode()


def _scale(finite: list[np.ndarray], limit: float | None) -> dict:
    """The colour scale's decades: from the 0.5th percentile of positive KL to its maximum."""
    if finite:
        v = np.log10(np.concatenate(finite))
        lo, hi = math.floor(float(np.percentile(v, 0.5))), math.ceil(float(v.max()))
    else:
        lo, hi = -8, 0
    if limit:
        lo, hi = min(lo, math.floor(math.log10(limit))), max(hi, math.ceil(math.log10(limit)))
    lo = max(lo, int(math.log10(KL_FLOOR)))
    return {"lo": lo, "hi": max(hi, lo + 1), "maxKl": limit}


def _texts(reports: list[Report], used: list[np.ndarray], decode: Decode | None) -> dict[str, str]:
    merged: dict[int, str] = {}
    for r in reports:
        merged.update(r.token_texts)
    ids = np.unique(np.concatenate(used)) if used else np.zeros(0, np.int64)
    out: dict[str, str] = {}
    failed = False
    for t in ids[ids >= 0].tolist():
        text = merged.get(t)
        if text is None and decode is not None and not failed:
            try:
                text = str(decode(t))
            except Exception as e:  # a user's decoder must not sink the page
                log.warning("decode(%d) failed: %s (the page shows ids)", t, e)
                failed = True
        if text is not None:
            out[str(t)] = text
    return out


def _json_script(obj) -> str:
    # "<" escaped: a token text holding "</script>" must not end the element.
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")


# -- static sections ----------------------------------------------------------

def _table(head: list[str], rows: list[list], left: int = 0, cls: str = "") -> str:
    th = "".join(f'<th class="{"l" if i < left else ""}">{html.escape(str(h))}</th>' for i, h in enumerate(head))
    body = "".join(
        "<tr>" + "".join(f'<td class="{"l" if i < left else ""}">{c if isinstance(c, _Raw) else html.escape(str(c))}</td>'
                         for i, c in enumerate(row)) + "</tr>"
        for row in rows)
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


class _Raw(str):
    """Table cell content that is HTML already."""


def _verdict(v: str) -> _Raw:
    return _Raw(f'<span class="{html.escape(v)}">{html.escape(v.upper())}</span>')


def _link(text: str, seq: int, pos: int, cand: int, kind: str) -> _Raw:
    href = f"#select={seq},{pos}&cand={cand + 1}" + (f"&kind={kind}" if kind != GENERATED else "")
    return _Raw(f'<a href="{html.escape(href)}">{html.escape(text)}</a>')


def _mode(info: dict) -> str:
    return "full vocab" if info["logprobs"] == -1 else f"top-{info['logprobs']}"


def _versions(info: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(info.get("versions", {}).items()))


def _first_drift(r: Report) -> str:
    """Where drift starts, in words: the earliest first argmax disagreement and token divergence."""
    parts = []
    for key, what in (("first_top1_mismatch", "argmax first differs"), ("first_divergence", "tokens first diverge")):
        hits = [(s[key], s["index"]) for s in r.sequences if s.get(key) is not None]
        if hits:
            j, seq = min(hits)
            med = float(np.median([h[0] for h in hits]))
            parts.append(f"{what} in {len(hits)} of {len(r.sequences)} sequences, earliest at generated index {j} "
                         f"(sequence {seq}), median index {med:g}")
    return "; ".join(parts) if parts else "argmax agrees and tokens match at every compared position"


def _overview(reports: list[Report], labels: list[str]) -> str:
    head = ["candidate", "verdict", "device", "dtype", "logprobs", "positions", "KL mean", "KL p99", "KL max",
            "top-1", "NaN pos.", "diverged seqs", "path"]
    rows = []
    for r, label in zip(reports, labels):
        s, c = r.summary, r.candidate
        diverged = sum(q["first_divergence"] is not None for q in r.sequences)
        rows.append([label, _verdict(r.verdict), c["device"], c["dtype"], _mode(c), s["positions"],
                     fmt(s["kl"]["mean"]), fmt(s["kl"]["p99"]), fmt(s["kl"]["max"]), fmt(s["top1_agreement"]),
                     s["nan_positions"], f"{diverged}/{len(r.sequences)}", _Raw(_path(c["path"]))])
    return _table(head, rows, left=1)


def _path(path) -> str:
    return f'<code class="path">{html.escape(str(path))}</code>'



def _summary_rows(s: dict) -> list[tuple[str, str]]:
    kl = s["kl"]
    approx = " (approx.)" if s.get("approximate") else ""
    return [
        ("positions", str(s["positions"])), (f"KL mean{approx}", fmt(kl["mean"])), ("KL median", fmt(kl["median"])),
        ("KL p90", fmt(kl["p90"])), ("KL p99", fmt(kl["p99"])), ("KL p99.9", fmt(kl["p999"])),
        ("KL max", fmt(kl["max"])), ("non-finite KL", str(s["nonfinite_kl_positions"])),
        ("top-1 agreement", fmt(s["top1_agreement"])), ("top-5 overlap", fmt(s["top5_overlap"])),
        ("top-10 overlap", fmt(s["top10_overlap"])), ("delta-p mean", fmt(s["delta_p"]["mean"])),
        ("delta-p RMS", fmt(s["delta_p"]["rms"])), ("max |delta|", fmt(s["max_abs"])),
        ("mean |delta|", fmt(s["mean_abs"])), ("pearson min", fmt(s["pearson"]["min"], 6)),
        ("pearson mean", fmt(s["pearson"]["mean"], 6)), ("outliers", str(s["outliers"])),
        ("rank of ref top in cand: mean", fmt(s["rank"]["mean"], 2)), ("rank: max", fmt(s["rank"]["max"], 0)),
        ("NaN positions", str(s["nan_positions"])), ("+inf positions", str(s["inf_positions"])),
        ("masked (-inf) positions", str(s.get("masked_positions", 0))),
        ("token match rate", fmt(s.get("token_match_rate"))),
    ]


def _summary_table(summaries: list[dict | None], labels: list[str]) -> str:
    present = [s for s in summaries if s]
    if not present:
        return ""
    names = [n for n, _ in _summary_rows(present[0])]
    cols = [dict(_summary_rows(s)) if s else {} for s in summaries]
    rows = [[n, *[c.get(n, "-") for c in cols]] for n in names]
    head = ["metric", *labels] if len(labels) > 1 else ["metric", "value"]
    return _table(head, rows, left=1)


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
        "<h3>Noise floor (baseline vs reference)</h3>",
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
        parts.append(f"<p>baseline against the thresholds: {_verdict(v)}</p>")
    if f["warnings"]:
        parts.append("<ul>" + "".join(f'<li class="warn">baseline: {e(w)}</li>' for w in f["warnings"]) + "</ul>")
    return "".join(parts)


def _worst_detail_html(d: dict) -> str:
    e = html.escape
    snip = lambda s: "[" + ", ".join(f"{v:.4f}" for v in s["head"]) + ", …, " + ", ".join(f"{v:.4f}" for v in s["tail"]) + "]"  # noqa: E731
    stats = _table(["", ""], [
        ["outliers (|Δ| ≥ eps)", f"{d['outliers']} (eps={d['eps']})"], ["vocab size", d["vocab_size"]],
        ["finite overlap", d["finite"]], ["max |Δ|", fmt(d["max_abs"], 6)], ["mean |Δ|", fmt(d["mean_abs"], 6)],
        ["pearson", fmt(d["pearson"], 6)],
        ["logprob snippet, candidate", snip(d["snippet"]["candidate"])],
        ["logprob snippet, reference", snip(d["snippet"]["reference"])],
    ], left=2)
    c, g = d["top5"]["candidate"], d["top5"]["reference"]
    rows = []
    for i in range(max(len(c), len(g))):
        ci, cv = c[i] if i < len(c) else ("-", float("nan"))
        gi, gv = g[i] if i < len(g) else ("-", float("nan"))
        rows.append([i + 1, gi, fmt(gv), ci, fmt(cv), "" if ci == gi else "differs"])
    return (f"<h3>Worst position: sequence {d['sequence']}, {e(d['kind'])} position {d['position']}, "
            f"KL {e(fmt(d['kl']))}</h3>" + stats
            + _table(["rank", "ref id", "ref logprob", "cand id", "cand logprob", ""], rows))


def _histogram(kl: np.ndarray, w: int = 900, h: int = 160) -> str:
    """KL histogram on log10 bins, as SVG: readable without JavaScript."""
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
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img" aria-label="KL histogram">']
    for i, c in enumerate(counts):
        bh = (h - pad_b - 6) * c / top
        parts.append(f'<rect x="{pad_l + i * bw:.1f}" y="{h - pad_b - bh:.1f}" width="{max(bw - 1, 1):.1f}" '
                     f'height="{bh:.1f}" fill="#1f6feb"><title>{c} positions in [1e{edges[i]:.2f}, '
                     f'1e{edges[i + 1]:.2f})</title></rect>')
    for e in range(lo, hi + 1):
        anchor = "end" if e == hi else "middle"
        label = f"≤ 1e{e}" if e == lo and e <= math.log10(KL_FLOOR) else f"1e{e}"  # zero and negative KL land here
        parts.append(f'<text x="{pad_l + (e - lo) * 4 * bw:.1f}" y="{h - 4}" text-anchor="{anchor}">{label}</text>')
    parts.append(f'<text x="{pad_l - 4}" y="12" text-anchor="end">{top}</text></svg>')
    return "".join(parts)


def _trend(reports: list[Report], labels: list[str], limit: float | None, w: int = 960, h: int = 300) -> str:
    """KL mean/p99/max (log scale, left) and top-1 agreement (right) per candidate, as SVG."""
    n = len(reports)
    pad_l, pad_r, pad_t = 56, 64, 16
    pad_b = 36 if max(len(x) for x in labels) * 6 < (w - pad_l - pad_r) / n else 110
    series = [("mean", "#1f77b4"), ("p99", "#ff7f0e"), ("max", "#d62728")]
    vals = [r.summary["kl"].get(k) for r in reports for k, _ in series]
    logs = [math.log10(max(v, KL_FLOOR)) for v in vals if v is not None and math.isfinite(v)]
    if limit:
        logs.append(math.log10(limit))
    lo, hi = (math.floor(min(logs)), math.ceil(max(logs))) if logs else (-8, 0)
    hi = max(hi, lo + 1)
    tops = [r.summary["top1_agreement"] for r in reports if r.summary["top1_agreement"] is not None]
    t_lo = min(0.9, math.floor(min(tops) * 20) / 20) if tops else 0.9
    x = lambda i: pad_l + (w - pad_l - pad_r) * ((i + 0.5) / n)  # noqa: E731
    ky = lambda v: pad_t + (h - pad_t - pad_b) * (1 - (math.log10(max(v, KL_FLOOR)) - lo) / (hi - lo))  # noqa: E731
    ty = lambda v: pad_t + (h - pad_t - pad_b) * (1 - (v - t_lo) / (1 - t_lo))  # noqa: E731
    p = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img" '
         f'aria-label="KL and top-1 agreement per candidate">',
         f'<rect x="{pad_l}" y="{pad_t}" width="{w - pad_l - pad_r}" height="{h - pad_t - pad_b}" fill="#fafbfc" '
         f'stroke="#d1d9e0"/>']
    for e in range(lo, hi + 1):
        yy = pad_t + (h - pad_t - pad_b) * (1 - (e - lo) / (hi - lo))
        p.append(f'<line x1="{pad_l}" x2="{w - pad_r}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#eaeef2"/>'
                 f'<text x="{pad_l - 4}" y="{yy + 4:.1f}" text-anchor="end">1e{e}</text>')
    step = next(s for s in (0.005, 0.01, 0.02, 0.025, 0.05, 0.1, 0.2, 0.25) if (1 - t_lo) / s <= 6)
    for k in range(int((1 - t_lo) / step + 1e-9) + 1):
        v = 1 - k * step
        p.append(f'<text x="{w - pad_r + 4}" y="{ty(v) + 4:.1f}" fill="#1a7f37">{v:g}</text>')
    p.append(f'<text x="14" y="{pad_t + (h - pad_b) / 2:.0f}" transform="rotate(-90 14 {pad_t + (h - pad_b) / 2:.0f})" '
             f'text-anchor="middle">KL (nats, log)</text>'
             f'<text x="{w - 10}" y="{pad_t + (h - pad_b) / 2:.0f}" transform="rotate(90 {w - 10} '
             f'{pad_t + (h - pad_b) / 2:.0f})" text-anchor="middle" fill="#1a7f37">top-1 agreement</text>')
    if limit:
        yy = ky(limit)
        p.append(f'<line x1="{pad_l}" x2="{w - pad_r}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#cf222e" '
                 f'stroke-dasharray="5 4"/><text x="{pad_l + 4}" y="{yy - 4:.1f}" fill="#cf222e">max KL {limit:g}</text>')
    for key, colour in series:
        pts = [(x(i), ky(r.summary["kl"][key]), r) for i, r in enumerate(reports)
               if r.summary["kl"].get(key) is not None and math.isfinite(r.summary["kl"][key])]
        if len(pts) > 1:
            p.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="'
                     + " ".join(f"{a:.1f},{b:.1f}" for a, b, _ in pts) + '"/>')
        for (a, b, r), i in zip(pts, [i for i, r in enumerate(reports) if r.summary["kl"].get(key) is not None
                                       and math.isfinite(r.summary["kl"][key])]):
            p.append(f'<circle cx="{a:.1f}" cy="{b:.1f}" r="4" fill="{colour}"><title>{html.escape(labels[i])}: '
                     f'KL {key} {fmt(r.summary["kl"][key])}</title></circle>')
    tp = [(x(i), ty(r.summary["top1_agreement"]), i) for i, r in enumerate(reports) if r.summary["top1_agreement"] is not None]
    if len(tp) > 1:
        p.append('<polyline fill="none" stroke="#1a7f37" stroke-width="2" stroke-dasharray="6 3" points="'
                 + " ".join(f"{a:.1f},{b:.1f}" for a, b, _ in tp) + '"/>')
    for a, b, i in tp:
        p.append(f'<rect x="{a - 4:.1f}" y="{b - 4:.1f}" width="8" height="8" fill="#1a7f37"><title>'
                 f'{html.escape(labels[i])}: top-1 agreement {fmt(reports[i].summary["top1_agreement"])}</title></rect>')
    for i, (r, label) in enumerate(zip(reports, labels)):
        colour = "#cf222e" if r.verdict == "fail" else "#444"
        yb = h - pad_b + 14
        if pad_b > 40:
            p.append(f'<text x="{x(i):.1f}" y="{yb}" text-anchor="end" fill="{colour}" '
                     f'transform="rotate(-35 {x(i):.1f} {yb})">{html.escape(label)}</text>')
        else:
            p.append(f'<text x="{x(i):.1f}" y="{yb}" text-anchor="middle" fill="{colour}">{html.escape(label)}</text>')
    p.append("</svg>")
    legend = " ".join(f'<span style="color:{c}">&#9679; KL {k}</span>' for k, c in series)
    return (f'<div>{p[0]}{"".join(p[1:])}</div><p class="small">{legend} '
            f'<span style="color:#1a7f37">&#9632; top-1 agreement (right axis)</span>; '
            f'labels in red: the candidate fails.</p>')


def _seq_table(r: Report, c: int) -> str:
    """Every sequence; each links to its largest-KL position."""
    pos = r.positions.get(GENERATED, {})
    rows = []
    for s in r.sequences:
        rule = "-"
        div = s.get("divergence")
        if div:
            rule = ("ok" if div["passes"] else "FAIL") + (f" (ref tok rank {fmt(div['ref_token_rank_in_cand'], 0)} "
                                                         f"in cand, cand tok rank {fmt(div['cand_token_rank_in_ref'], 0)} in ref)")
        link: object = s["index"]
        if pos and s["positions"]:
            sl = sequence_slice(pos["seq"], s["index"])
            kl = pos["kl"][sl]
            at = int(np.argmax(np.isnan(kl))) if np.isnan(kl).any() else int(np.argmax(np.nan_to_num(kl, posinf=1e300)))
            link = _link(str(s["index"]), s["index"], int(pos["pos"][sl][at]), c, GENERATED)
        p = s.get("prompt") or {}
        rows.append([link, s["prompt_len"], s["positions"], "-" if s["first_divergence"] is None else s["first_divergence"],
                     "-" if s.get("first_top1_mismatch") is None else s["first_top1_mismatch"],
                     fmt(s["kl_mean"]), fmt(s["kl_max"]), fmt(s["top1_agreement"], 3), s["nan_positions"],
                     fmt(p.get("kl_max")) if p else "-", rule])
    table = _table(["seq", "prompt len", "positions", "first div", "first argmax diff", "KL mean", "KL max", "top-1",
                    "NaN", "prompt KL max", "vLLM rule"], rows, left=0)
    state = " open" if len(rows) <= MAX_OPEN_SEQ_ROWS else ""
    return (f"<details{state}><summary>{len(rows)} sequences (generated indices; a sequence's number links to its "
            f"largest KL)</summary>{table}</details>")


def _cand_section(r: Report, label: str, c: int, several: bool) -> str:
    e = html.escape
    info = r.candidate
    parts = [f'<section class="cand-only{" active" if c == 0 else ""}" data-cand="{c}">',
             f"<h2>{'Candidate ' + e(label) if several else 'Candidate'}: {_verdict(r.verdict)}</h2>"]
    parts.append(_table(["", "path", "model", "device", "dtype", "logprobs", "digest", "versions", "created"], [
        [side, _Raw(_path(i["path"])), i["model"], i["device"], i["dtype"], _mode(i),
         _Raw(f'<code title="{e(i["digest"])}">{e(i["digest"][:24])}</code>'), _versions(i), i.get("created_at", "")]
        for side, i in (("reference", r.reference), ("candidate", info))], left=9))
    parts.append("<p>" + ("Same forced trajectory: every position compared." if r.forced else
                          "Free-running: positions up to each sequence's first divergent token.")
                 + f" {e(_first_drift(r))}.</p>")
    if r.failures:
        parts.append('<ul class="fails">' + "".join(f"<li>{e(f)}</li>" for f in r.failures) + "</ul>")
    if r.warnings:
        parts.append("<ul>" + "".join(f'<li class="warn">{e(w)}</li>' for w in r.warnings) + "</ul>")
    if r.floor:
        parts.append(_floor_html(r))
    if r.worst:
        parts.append("<h3>Worst positions</h3>" + _table(
            ["kind", "seq", "pos", "KL", "token", "ref top", "cand top", "p(ref top)", "delta-p", "max |delta|"],
            [[w["kind"], w["sequence"], _link(str(w["position"]), w["sequence"], w["position"], c, w["kind"]),
              fmt(w["kl"]), _tok(w["token"], w["token_text"]), _tok(w["ref_top"], w["ref_top_text"]),
              _tok(w["cand_top"], w["cand_top_text"]), fmt(w["ref_conf"]), fmt(w["delta_p"]), fmt(w["max_abs"])]
             for w in r.worst], left=1))
    if r.worst_detail:
        parts.append(_worst_detail_html(r.worst_detail))
    parts.append("<h3>KL by reference top-token confidence</h3>" + _table(
        ["p(top)", "positions", "KL mean", "KL median", "KL max", "top-1"],
        [[f"[{b['confidence'][0]:.2f}, {b['confidence'][1]:.2f}]", b["positions"], fmt(b["kl_mean"]),
          fmt(b["kl_median"]), fmt(b["kl_max"]), fmt(b["top1_agreement"], 3)] for b in r.kl_by_confidence]))
    gen = r.positions.get(GENERATED)
    parts.append("<h3>KL histogram (generated positions, log10 nats)</h3>"
                 + (_histogram(gen["kl"]) if gen is not None and len(gen["kl"]) else "<p>no data</p>"))
    parts.append("<h3>Sequences</h3>" + _seq_table(r, c))
    parts.append("</section>")
    return "".join(parts)


def render_html(reports: Report | Sequence[Report], *, decode: Decode | None = None,
                detail_cap: int = DETAIL_CAP) -> str:
    """One self-contained HTML page for one report, or for the reports of
    several candidates of one reference (``compare``); see the module docstring.

    Top-5 details appear when the reports were made with ``details=True``.
    Token texts come from ``report.token_texts`` (``decode=`` given to
    diff/compare), else from ``decode`` here, else the page shows ids.
    """
    t0 = time.perf_counter()
    rs = _as_list(reports)
    labels = _labels(rs)
    several = len(rs) > 1
    e = html.escape
    ref = rs[0].reference
    meta, data = _pack(rs, max(int(detail_cap), 1), decode)
    meta["labels"] = labels
    meta["verdicts"] = [r.verdict for r in rs]
    meta["forced"] = [r.forced for r in rs]
    meta["hasDetails"] = any(c["details"] for c in meta["cands"])
    meta["capped"] = any(d.get("sel") for c in meta["cands"] for d in c["details"].values())
    verdicts = [r.verdict for r in rs]
    overall = "fail" if "fail" in verdicts else "pass" if "pass" in verdicts else "report"
    thr = _thr(rs[0])

    parts = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>parity diff: {e(str(ref['model']))} — {e(overall.upper())}</title>",
        f"<style>{_CSS}</style></head><body>",
        '<div id="err" role="alert"></div>',
        "<h1>parity diff</h1>",
        f'<p>verdict: {_verdict(overall)}' + (f" ({sum(v == 'fail' for v in verdicts)} of {len(rs)} candidates fail)"
                                              if several else "")
        + (f"; thresholds {e(thr)}" if thr else "; no thresholds given (report only)") + "</p>",
        f"<p>reference: <code>{e(str(ref['path']))}</code> · model {e(str(ref['model']))} · {e(str(ref['device']))} "
        f"{e(str(ref['dtype']))} · {e(_mode(ref))} · vocab {ref['vocab_size']} · {ref['sequences']} sequences · "
        f"<code title=\"{e(ref['digest'])}\">{e(ref['digest'][:24])}</code>"
        + (f" · {e(_versions(ref))}" if _versions(ref) else "") + "</p>",
    ]
    for label, r in zip(labels, rs):
        if r.failures:
            parts.append((f"<p>{e(label)}: {_verdict(r.verdict)}</p>" if several else "")
                         + '<ul class="fails">' + "".join(f"<li>{e(f)}</li>" for f in r.failures) + "</ul>")
    parts.append("<h2>Candidates</h2>" + _overview(rs, labels))
    if several:
        parts.append("<h2>Trend across candidates</h2>" + _trend(rs, labels, rs[0].thresholds.max_kl))

    note_cap = ""
    if meta["capped"]:
        note_cap = (f" The top-5 lists of at most {detail_cap:,} positions per candidate are embedded: those with "
                    "the largest KL and every sequence's first argmax disagreement and divergent token.")
    no_details = ("" if meta["hasDetails"] else
                  " This report was made without per-position details: clicking shows KL and tokens only "
                  "(top-5 lists come with <code>diff(..., details=True)</code>, which <code>parity diff --html</code> asks for).")
    parts.append(
        "<h2>Overview: KL by sequence and position</h2>"
        '<div class="tabs" id="cand-tabs"></div><div class="tabs" id="kind-tabs"></div><div class="tabs" id="sort-tabs"></div>'
        f'<p class="small mute">Rows are sequences, columns token positions (generated index, 0 = first generated '
        f'token). Colour: KL(reference ‖ candidate) in nats, log scale. Hover a cell for its values; click it for '
        f'both sides\' top-5 and the sequence\'s KL profile; arrow keys move the selection.{e(note_cap)}{no_details}</p>'
        '<div id="legend"></div><div id="heat-wrap"><canvas id="heat"></canvas><canvas id="heat-over" tabindex="0">'
        '</canvas></div><div id="tip"></div>'
        '<div id="panel" aria-live="polite"><span class="mute">Click a cell to see the position.</span></div>'
        "<noscript><p>The heatmap needs JavaScript; the tables below do not.</p></noscript>"
    )

    parts.append("<h2>Generated positions</h2>" + _summary_table([r.summary for r in rs], labels))
    if any(r.prompt for r in rs):
        parts.append("<h2>Prompt positions</h2>" + _summary_table([r.prompt for r in rs], labels))
    for c, (r, label) in enumerate(zip(rs, labels)):
        parts.append(_cand_section(r, label, c, several))
    parts.append(f'<p class="small mute">parity · reference {e(ref["digest"])} · {len(rs)} candidate(s) · '
                 f'{meta["rawBytes"]:,} bytes of position data, {len(data):,} embedded</p>')
    parts.append(f'<script type="application/json" id="parity-meta">{_json_script(meta)}</script>')
    parts.append(f'<script type="application/octet-stream" id="parity-data">{data}</script>')
    parts.append(f"<script>{_JS}</script></body></html>\n")
    page = "".join(parts)
    log.debug("html report: %d candidates, %.1f MB, %.2fs", len(rs), len(page) / 1e6, time.perf_counter() - t0)
    return page


_JS = r"""
"use strict";
(function () {
const T0 = performance.now();
const body = document.body, $ = (id) => document.getElementById(id);
function fail(msg) {
  body.dataset.error = (body.dataset.error ? body.dataset.error + " | " : "") + msg;
  const box = $("err"); box.style.display = "block"; box.textContent = "Report script error: " + body.dataset.error;
}
window.addEventListener("error", (ev) => fail("error: " + ev.message + " (line " + ev.lineno + ")"));
window.addEventListener("unhandledrejection", (ev) => fail("unhandled rejection: " + (ev.reason && ev.reason.stack || ev.reason)));
const consoleError = console.error.bind(console);
console.error = (...a) => { fail("console.error: " + a.join(" ")); consoleError(...a); };

const M = JSON.parse($("parity-meta").textContent);
const num = (v) => v === null || v === undefined ? null : Number(v);
const NC = M.cands.length, KINDS = Object.keys(M.kinds);
let A = null;  // name -> typed array
const S = {cand: 0, kind: KINDS[0] || "generated", sel: null, bin: 1, W: 0, rowPx: 8, PW: 0, sort: "index", order: [], rowOf: []};

function h(tag, attrs, ...kids) {  // DOM builder; text goes through textContent, never innerHTML
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") el.className = v; else if (k === "style") el.style.cssText = v; else el.setAttribute(k, v);
  }
  for (const k of kids) if (k !== null && k !== undefined) el.append(k instanceof Node ? k : String(k));
  return el;
}
function fmt(x, d) {
  d = d || 4;
  if (x === null || x === undefined) return "n/a";
  if (Number.isNaN(x)) return "nan";
  if (!Number.isFinite(x)) return x > 0 ? "inf" : "-inf";
  if (x !== 0 && (Math.abs(x) < 1e-3 || Math.abs(x) >= 1e5)) return x.toExponential(d - 1);
  return x.toFixed(d);
}
function text(id) {
  if (id < 0) return null;
  const t = M.texts[String(id)];
  return t === undefined ? null : t;
}
function tokLabel(id) {
  if (id < 0) return "-";
  const t = text(id);
  return t === null ? "#" + id : JSON.stringify(t) + " (" + id + ")";
}

async function unpack() {
  const b64 = $("parity-data").textContent.trim();
  const bin = atob(b64), z = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) z[i] = bin.charCodeAt(i);
  if (typeof DecompressionStream === "undefined")
    throw new Error("this browser lacks DecompressionStream (Chrome 80+, Firefox 113+, Safari 16.4+ have it)");
  const raw = new Uint8Array(await new Response(new Blob([z]).stream().pipeThrough(new DecompressionStream("deflate"))).arrayBuffer());
  if (raw.length !== M.rawBytes) throw new Error("position data: " + raw.length + " bytes, expected " + M.rawBytes);
  const out = {}, TYPES = {f4: [Float32Array, 4], i4: [Int32Array, 4], u1: [Uint8Array, 1]};
  for (const a of M.arrays) {
    const [T, size] = TYPES[a.dtype], n = a.n, src = raw.subarray(a.offset, a.offset + n * size);
    let bytes = src;
    if (size > 1) {  // undo the byte shuffle
      bytes = new Uint8Array(n * size);
      for (let b = 0; b < size; b++) { const o = b * n; for (let i = 0; i < n; i++) bytes[i * size + b] = src[o + i]; }
    } else bytes = src.slice();
    out[a.name] = new T(bytes.buffer, 0, n);
  }
  return out;
}

// Reversed magma: pale for agreement, dark for drift.
const ANCHORS = ["#fcfdbf", "#fec287", "#fb8761", "#e55064", "#b5367a", "#812581", "#4f127b", "#1c1044", "#000004"];
const NAN_RGB = [0, 184, 212], INF_RGB = [0, 200, 83], MISSING_RGB = [215, 218, 222];
const LUT = (() => {
  const rgb = ANCHORS.map((c) => [1, 3, 5].map((i) => parseInt(c.slice(i, i + 2), 16))), lut = [];
  for (let i = 0; i < 256; i++) {
    const t = i / 255 * (rgb.length - 1), k = Math.min(Math.floor(t), rgb.length - 2), f = t - k;
    lut.push(rgb[k].map((v, c) => Math.round(v + (rgb[k + 1][c] - v) * f)));
  }
  return lut;
})();
const LO = M.scale.lo, HI = M.scale.hi;
function tOf(kl) { return kl <= 0 ? 0 : Math.min(1, Math.max(0, (Math.log10(kl) - LO) / (HI - LO))); }
function rgbOf(kl) {
  if (Number.isNaN(kl)) return NAN_RGB;
  if (kl === Infinity) return INF_RGB;
  return LUT[Math.round(tOf(kl) * 255)];
}
const css = (c) => "rgb(" + c.join(",") + ")";

function G() { return M.kinds[S.kind]; }
function arr(prefix) { return A[prefix + "/" + S.cand + "/" + S.kind]; }
function count(s) { return G().counts[S.cand][s]; }
// Row order: by sequence index, by where the argmax first differs (drift
// start as a staircase), or by the row's largest KL.
function sortRows() {
  const g = G(), n = g.seqs.length, idx = Array.from({length: n}, (_, i) => i);
  if (S.sort === "drift" && S.kind === "generated") {
    const f = M.cands[S.cand].seq.firstTop1, key = (s) => f[s] === null ? Infinity : f[s];
    idx.sort((a, b) => key(a) - key(b) || a - b);
  } else if (S.sort === "klmax") {
    const kl = arr("kl"), worst = idx.map((s) => {
      let m = -Infinity;
      for (let j = 0; j < count(s); j++) { const v = kl[g.off[s] + j]; if (Number.isNaN(v)) return Infinity; if (v > m) m = v; }
      return m;
    });
    idx.sort((a, b) => (worst[b] - worst[a]) || a - b);
  }
  S.order = idx; S.rowOf = new Array(n);
  idx.forEach((s, row) => { S.rowOf[s] = row; });
}

// -- heatmap ----------------------------------------------------------------
const ML = 44, MR = 18, MT = 6, MB = 30;
function draw() {
  const g = G(), n = g.seqs.length, kl = arr("kl");
  const cols = g.len.reduce((m, v) => Math.max(m, v), 1);
  const wrap = $("heat-wrap"), avail = Math.max(200, wrap.clientWidth || 960);
  S.PW = avail - ML - MR;
  S.bin = Math.max(1, Math.ceil(cols / Math.min(S.PW, 1600)));
  S.W = Math.ceil(cols / S.bin);
  // Thousands of sequences get one pixel a row: canvases stop at ~32k pixels.
  S.rowPx = Math.max(n > 1000 ? 1 : 2, Math.min(40, Math.floor(640 / Math.max(n, 1))));
  const PH = n * S.rowPx;
  const heat = $("heat"), ctx = heat.getContext("2d");
  heat.width = S.W; heat.height = Math.max(n, 1);
  heat.style.left = ML + "px"; heat.style.top = MT + "px"; heat.style.width = S.PW + "px"; heat.style.height = PH + "px";
  const img = ctx.createImageData(S.W, Math.max(n, 1)), px = img.data;
  sortRows();
  for (let row = 0; row < n; row++) {
    const s = S.order[row], off = g.off[s], have = count(s), len = g.len[s];
    for (let x = 0; x < S.W; x++) {
      const a = x * S.bin, b = Math.min(a + S.bin, len);
      let c = MISSING_RGB, best = -1;
      for (let j = a; j < b && j < have; j++) {  // a bin shows its worst cell: NaN, then inf, then the largest KL
        const v = kl[off + j], r = Number.isNaN(v) ? 3 : v === Infinity ? 2 : 1 + tOf(v) * 0.999;
        if (r > best) { best = r; c = rgbOf(v); }
      }
      const p = (row * S.W + x) * 4;
      px[p] = c[0]; px[p + 1] = c[1]; px[p + 2] = c[2]; px[p + 3] = 255;
    }
  }
  ctx.putImageData(img, 0, 0);
  const over = $("heat-over"), dpr = window.devicePixelRatio || 1;
  const OW = ML + S.PW + MR, OH = MT + PH + MB;
  wrap.style.height = OH + "px";
  over.width = Math.round(OW * dpr); over.height = Math.round(OH * dpr);
  over.style.width = OW + "px"; over.style.height = OH + "px";
  drawOver();
}
function xOf(j) { return ML + (j / S.bin) * (S.PW / S.W); }
function cellW() { return S.PW / S.W; }
function drawOver() {
  const g = G(), n = g.seqs.length, over = $("heat-over"), dpr = window.devicePixelRatio || 1;
  const c = over.getContext("2d");
  c.setTransform(dpr, 0, 0, dpr, 0, 0);
  c.clearRect(0, 0, over.width, over.height);
  c.font = "11px system-ui, sans-serif"; c.fillStyle = "#444"; c.strokeStyle = "#999";
  const PH = n * S.rowPx, cols = g.len.reduce((m, v) => Math.max(m, v), 1);
  c.strokeRect(ML - 0.5, MT - 0.5, S.PW + 1, PH + 1);
  // y: sequence numbers
  const every = niceStep(n, Math.max(1, Math.floor(PH / 16)));
  c.textAlign = "right"; c.textBaseline = "middle";
  for (let row = 0; row < n; row += every) c.fillText(String(g.seqs[S.order[row]]), ML - 4, MT + (row + 0.5) * S.rowPx);
  // x: position ticks
  c.textAlign = "center"; c.textBaseline = "top";
  const step = niceStep(cols, Math.max(2, Math.floor(S.PW / 70)));
  for (let j = 0; j <= cols; j += step) {
    const x = xOf(j) + (S.bin === 1 ? cellW() / 2 : 0);
    if (x > ML + S.PW + 1) break;
    c.fillRect(x, MT + PH, 1, 4); c.fillText(String(j), x, MT + PH + 5);
  }
  c.fillText(S.kind === "generated" ? "generated token index" : "prompt position", ML + S.PW / 2, MT + PH + 17);
  // where drift starts, per sequence
  if (S.kind === "generated") {
    const q = M.cands[S.cand].seq, h = S.rowPx;
    for (let s = 0; s < n; s++) {
      const y = MT + S.rowOf[s] * h, d = q.firstDiv[s], t = q.firstTop1[s];
      if (d !== null) markBox(c, d, y, h);
      if (t !== null) mark(c, t, y, h, "#1f6feb", null);
    }
  }
  if (S.sel && S.sel.kind === S.kind) {
    const x = xOf(Math.floor(S.sel.j / S.bin) * S.bin), y = MT + S.rowOf[S.sel.s] * S.rowPx;
    c.lineWidth = 2; c.strokeStyle = "#00e5ff"; c.strokeRect(x - 1, y - 1, Math.max(cellW(), 2) + 2, S.rowPx + 2);
    c.lineWidth = 1; c.strokeStyle = "#000"; c.strokeRect(x - 2.5, y - 2.5, Math.max(cellW(), 2) + 5, S.rowPx + 5);
  }
}
// The first divergent token: a white frame in a black one around the cell
// (the argmax tick can sit inside it); a framed tick where cells are too small.
function markBox(c, j, y, h) {
  const w = cellW();
  if (w < 5 || h < 5) { mark(c, j, y, h, "#fff", "#000"); return; }
  const x = xOf(Math.floor(j / S.bin) * S.bin);
  c.lineWidth = 1; c.strokeStyle = "#000"; c.strokeRect(x + 0.5, y + 0.5, w - 1, h - 1);
  c.strokeStyle = "#fff"; c.strokeRect(x + 1.5, y + 1.5, w - 3, h - 3);
}
function mark(c, j, y, h, fill, edge) {
  const x = xOf(Math.floor(j / S.bin) * S.bin) + Math.min(cellW(), 6) / 2, w = 2;
  if (edge) { c.fillStyle = edge; c.fillRect(x - w / 2 - 1, y, w + 2, h); }
  c.fillStyle = fill; c.fillRect(x - w / 2, y + (edge && h > 2 ? 1 : 0), w, edge && h > 2 ? h - 2 : h);
}
function niceStep(span, ticks) {
  const raw = span / ticks, p = Math.pow(10, Math.floor(Math.log10(Math.max(raw, 1))));
  for (const m of [1, 2, 5, 10]) if (m * p >= raw) return Math.max(1, m * p);
  return Math.max(1, 10 * p);
}
function legend() {
  const el = $("legend"); el.textContent = "";
  const bar = h("canvas", {width: 260, height: 12, style: "border:1px solid #999;vertical-align:middle"});
  const c = bar.getContext("2d");
  for (let x = 0; x < 260; x++) { c.fillStyle = css(LUT[Math.round(x / 259 * 255)]); c.fillRect(x, 0, 1, 12); }
  if (M.scale.maxKl) {
    const x = (Math.log10(M.scale.maxKl) - LO) / (HI - LO) * 259;
    c.fillStyle = "#cf222e"; c.fillRect(Math.round(x) - 1, 0, 2, 12);
  }
  el.append(h("span", {}, "KL ≤ 1e" + LO + " ", bar, " ≥ 1e" + HI + (M.scale.maxKl ? " (red: --max-kl " + M.scale.maxKl + ")" : "")));
  const sw = (rgb, label) => h("span", {}, h("span", {class: "sw", style: "background:" + css(rgb)}), label);
  el.append(sw(NAN_RGB, "NaN"), sw(INF_RGB, "+inf"), sw(MISSING_RGB, "not compared"));
  el.append(h("span", {}, h("span", {class: "sw", style: "background:#1f6feb"}), "first argmax disagreement"));
  el.append(h("span", {}, h("span", {class: "sw", style: "background:transparent;border:2px solid #000;outline:1px solid #fff;outline-offset:-3px"}), "first divergent token"));
  if (S.bin > 1) el.append(h("span", {class: "mute"}, "each column: " + S.bin + " positions (their worst)"));
}

// -- hit testing, tooltip, selection ----------------------------------------
function hit(ev) {
  const r = $("heat-over").getBoundingClientRect(), x = ev.clientX - r.left - ML, y = ev.clientY - r.top - MT;
  const g = G(), n = g.seqs.length;
  if (x < 0 || y < 0 || x >= S.PW || y >= n * S.rowPx) return null;
  const s = S.order[Math.floor(y / S.rowPx)], col = Math.floor(x / cellW());
  const a = col * S.bin, b = Math.min(a + S.bin, count(s));
  if (a >= b) return {s, j: a, missing: true};
  let j = a, best = -1; const kl = arr("kl"), off = g.off[s];
  for (let k = a; k < b; k++) {
    const v = kl[off + k], r2 = Number.isNaN(v) ? 3 : v === Infinity ? 2 : 1 + tOf(v) * 0.999;
    if (r2 > best) { best = r2; j = k; }
  }
  return {s, j, missing: false};
}
function posOf(s, j) { return G().base[s] + j; }
function tip(ev) {
  const t = $("tip"), p = hit(ev);
  if (!p) { t.style.display = "none"; return; }
  const g = G(), seq = g.seqs[p.s];
  let lines;
  if (p.missing) lines = ["sequence " + seq + ", index " + p.j + ": not compared by this candidate"];
  else {
    const cell = g.off[p.s] + p.j, kl = arr("kl")[cell], agree = arr("top1")[cell];
    const tok = A["tok/" + S.kind][cell];
    lines = ["sequence " + seq + " · position " + posOf(p.s, p.j) + (S.kind === "generated" ? " (generated index " + p.j + ")" : ""),
             "token " + tokLabel(tok), "KL " + fmt(kl) + " · argmax " + (agree ? "agrees" : "DIFFERS")];
    const d = detailRow(p.s, p.j);
    if (d !== null) {
      const ids = A["dids/" + S.cand + "/" + S.kind], lp = A["dlp/" + S.cand + "/" + S.kind];
      lines.push("ref top: " + tokLabel(ids[d * 10]) + " p=" + fmt(Math.exp(lp[d * 10]), 3)
                 + "\ncand top: " + tokLabel(ids[d * 10 + 5]) + " p=" + fmt(Math.exp(lp[d * 10 + 5]), 3));
    }
    if (S.bin > 1) lines.push("(worst of positions " + (posOf(p.s, Math.floor(p.j / S.bin) * S.bin)) + "–" + (posOf(p.s, Math.min((Math.floor(p.j / S.bin) + 1) * S.bin, g.len[p.s]) - 1)) + ")");
    lines.push("click for top-5");
  }
  t.textContent = lines.join("\n"); t.style.display = "block";
  const w = t.offsetWidth, hgt = t.offsetHeight;
  t.style.left = Math.min(ev.clientX + 14, window.innerWidth - w - 4) + "px";
  t.style.top = Math.min(ev.clientY + 14, window.innerHeight - hgt - 4) + "px";
}
// The detail row of candidate position (s, j): details follow the
// candidate's own position order; with a cap, a sorted list says which are in.
function detailRow(s, j) {
  const d = M.cands[S.cand].details[S.kind];
  if (!d || j >= count(s)) return null;
  const counts = G().counts[S.cand];
  let i = j; for (let k = 0; k < s; k++) i += counts[k];
  if (!d.sel) return i;
  const sel = A["dsel/" + S.cand + "/" + S.kind];
  let lo = 0, hi = sel.length - 1;
  while (lo <= hi) { const m = (lo + hi) >> 1; if (sel[m] === i) return m; if (sel[m] < i) lo = m + 1; else hi = m - 1; }
  return null;
}

function select(s, j, scroll) {
  const g = G();
  if (s < 0 || s >= g.seqs.length) return false;
  j = Math.max(0, Math.min(j, Math.max(count(s), 1) - 1));
  S.sel = {s, j, kind: S.kind};
  drawOver(); panel();
  if (scroll) $("panel").scrollIntoView({block: "nearest"});
  return true;
}
function panel() {
  const P = $("panel"), g = G(), {s, j} = S.sel, seq = g.seqs[s], cell = g.off[s] + j;
  P.textContent = "";
  const label = NC > 1 ? M.labels[S.cand] + " · " : "";
  if (j >= count(s)) { P.append(h("p", {}, label + "sequence " + seq + ": no compared positions for this candidate")); return; }
  const kl = arr("kl")[cell], agree = arr("top1")[cell], toks = A["tok/" + S.kind], tok = toks[cell];
  P.append(h("h3", {}, label + "sequence " + seq + ", " + S.kind + " position " + posOf(s, j)
             + (S.kind === "generated" ? " (generated index " + j + ")" : "")));
  P.append(h("p", {}, "KL(ref ‖ cand) ", h("b", {"data-role": "kl"}, fmt(kl)), " nats · argmax ",
             h("b", {class: agree ? "pass" : "fail"}, agree ? "agrees" : "differs"), " · token ", h("code", {}, tokLabel(tok))));
  // context: the tokens before this one, then the token itself; tokens
  // alternate in shade so their boundaries show
  const ctx = h("div", {class: "ctx"}), from = Math.max(0, j - 24);
  const shown = (id) => { const t = text(id); return t === null ? "[" + id + "]" : t.replace(/\n/g, "↵\n"); };
  for (let k = from; k < j; k++) {
    const id = toks[g.off[s] + k];
    ctx.append(h("span", {class: (k - j) % 2 ? "t1" : "t0", title: "#" + id}, shown(id)));
  }
  ctx.append(h("mark", {title: "#" + tok}, shown(tok)));
  P.append(h("div", {class: "small mute"}, "context (the reference's tokens; this row predicts the marked one):"), ctx);
  const d = detailRow(s, j);
  if (d === null) {
    const det = M.cands[S.cand].details[S.kind];
    P.append(h("p", {class: "mute", "data-role": "no-detail"}, det
      ? "Top-5 not embedded for this position: the page keeps " + det.n.toLocaleString() + " of " + det.of.toLocaleString() + " (the largest KL and where drift starts)."
      : "No top-5 lists in this report (made without details=True)."));
  } else {
    const ids = A["dids/" + S.cand + "/" + S.kind], lp = A["dlp/" + S.cand + "/" + S.kind];
    const refIds = Array.from(ids.subarray(d * 10, d * 10 + 5)), candIds = Array.from(ids.subarray(d * 10 + 5, d * 10 + 10));
    const tb = h("tbody");
    for (let k = 0; k < 5; k++) {
      const ri = ids[d * 10 + k], rl = lp[d * 10 + k], ci = ids[d * 10 + 5 + k], cl = lp[d * 10 + 5 + k];
      const rin = candIds.indexOf(ri), cin = refIds.indexOf(ci);
      const cell2 = (id, l, other) => [h("td", {class: "id"}, id < 0 ? "-" : String(id)),
        h("td", {class: "l"}, id < 0 ? "" : (text(id) === null ? "" : JSON.stringify(text(id)))),
        h("td", {}, id < 0 ? "" : fmt(l)), h("td", {}, id < 0 ? "" : fmt(Math.exp(l))),
        h("td", {class: "mute"}, id < 0 ? "" : other < 0 ? "–" : "#" + (other + 1))];
      tb.append(h("tr", {class: ri !== ci ? "diff" : ""}, h("td", {}, String(k + 1)), ...cell2(ri, rl, rin), ...cell2(ci, cl, cin)));
    }
    const th = (...c) => h("tr", {}, ...c.map((x) => h("th", {class: x.endsWith("text") ? "l" : ""}, x)));
    P.append(h("table", {class: "top5", "data-role": "top5"}, h("thead", {},
      th("rank", "ref id", "ref text", "ref logprob", "ref p", "in cand", "cand id", "cand text", "cand logprob", "cand p", "in ref")), tb));
  }
  profile(s, j);
  P.dataset.filled = [seq, posOf(s, j), d === null ? "nodetail" : "detail"].join(",");
}
// The selected sequence's KL along its positions; click it to move.
function profile(s, j) {
  const P = $("panel"), g = G(), have = count(s), kl = arr("kl"), off = g.off[s];
  const W = Math.max(300, P.clientWidth - 32), H = 130, L = 48, B = 18, T = 8;
  const cv = h("canvas", {id: "profile", width: Math.round(W * (window.devicePixelRatio || 1)), height: Math.round(H * (window.devicePixelRatio || 1)),
                          style: "width:" + W + "px;height:" + H + "px"});
  const c = cv.getContext("2d"), dpr = window.devicePixelRatio || 1;
  c.setTransform(dpr, 0, 0, dpr, 0, 0);
  c.font = "10px system-ui, sans-serif"; c.fillStyle = "#fafbfc"; c.fillRect(L, T, W - L - 4, H - T - B);
  const X = (k) => L + (W - L - 4) * (have > 1 ? k / (have - 1) : 0.5);
  const Y = (v) => T + (H - T - B) * (1 - tOf(v));
  c.fillStyle = "#666"; c.textAlign = "right"; c.textBaseline = "middle";
  for (let e = LO; e <= HI; e += Math.max(1, Math.round((HI - LO) / 4))) {
    const y = T + (H - T - B) * (1 - (e - LO) / (HI - LO));
    c.fillText("1e" + e, L - 4, y); c.fillStyle = "#e6e9ec"; c.fillRect(L, y, W - L - 4, 1); c.fillStyle = "#666";
  }
  if (M.scale.maxKl) { c.fillStyle = "#cf222e"; c.fillRect(L, Y(M.scale.maxKl), W - L - 4, 1); }
  const q = M.cands[S.cand].seq;
  if (S.kind === "generated") {
    if (q.firstTop1[s] !== null) { c.fillStyle = "#1f6feb"; c.fillRect(X(q.firstTop1[s]) - 1, T, 2, H - T - B); }
    if (q.firstDiv[s] !== null) { c.fillStyle = "#000"; c.fillRect(X(q.firstDiv[s]) - 1, T, 2, H - T - B); }
  }
  c.strokeStyle = "#8250df"; c.lineWidth = 1.2; c.beginPath();
  let pen = false;
  for (let k = 0; k < have; k++) {
    const v = kl[off + k];
    if (!Number.isFinite(v)) { pen = false; c.fillStyle = Number.isNaN(v) ? css(NAN_RGB) : css(INF_RGB); c.fillRect(X(k) - 2, T, 4, 4); continue; }
    if (pen) c.lineTo(X(k), Y(v)); else c.moveTo(X(k), Y(v));
    pen = true;
  }
  c.stroke();
  c.fillStyle = "#00a3b8"; c.fillRect(X(j) - 1, T, 2, H - T - B);
  c.fillStyle = "#666"; c.textAlign = "left"; c.textBaseline = "top"; c.fillText("0", L, H - B + 4);
  c.textAlign = "right"; c.fillText(String(have - 1), W - 4, H - B + 4);
  c.textAlign = "center"; c.fillText("KL along sequence " + g.seqs[s] + " (click to move)", (L + W) / 2, H - B + 4);
  cv.addEventListener("click", (ev) => {
    const r = cv.getBoundingClientRect(), f = (ev.clientX - r.left - L) / (W - L - 4);
    select(s, Math.round(f * Math.max(have - 1, 0)), false);
  });
  P.append(cv);
}

// -- tabs, hash, keys -----------------------------------------------------------
function tabs() {
  const ct = $("cand-tabs"), kt = $("kind-tabs");
  ct.textContent = ""; kt.textContent = "";
  if (NC > 1) {
    ct.append(h("span", {class: "lbl"}, "candidate:"));
    M.labels.forEach((l, i) => {
      const b = h("button", {"aria-pressed": String(i === S.cand), title: M.verdicts[i]}, l + (M.verdicts[i] === "fail" ? " ✗" : M.verdicts[i] === "pass" ? " ✓" : ""));
      b.addEventListener("click", () => setCand(i));
      ct.append(b);
    });
  }
  if (KINDS.length > 1) {
    kt.append(h("span", {class: "lbl"}, "positions:"));
    for (const k of KINDS) {
      const b = h("button", {"aria-pressed": String(k === S.kind)}, k);
      b.addEventListener("click", () => { S.kind = k; S.sel = null; tabs(); draw(); legend(); });
      kt.append(b);
    }
  }
  const st = $("sort-tabs"); st.textContent = "";
  if (G() && G().seqs.length > 2) {
    st.append(h("span", {class: "lbl"}, "rows:"));
    const opts = [["index", "by sequence"], ["drift", "by first argmax disagreement"], ["klmax", "by largest KL"]];
    for (const [k, label] of opts) {
      if (k === "drift" && S.kind !== "generated") continue;
      const b = h("button", {"aria-pressed": String(k === S.sort)}, label);
      b.addEventListener("click", () => { S.sort = k; tabs(); draw(); });
      st.append(b);
    }
  }
  document.querySelectorAll("section.cand-only").forEach((el) => el.classList.toggle("active", Number(el.dataset.cand) === S.cand));
}
function setCand(i) {
  S.cand = i; tabs(); draw(); legend();
  if (S.sel && S.sel.kind === S.kind) panel();
}
function fromHash() {
  const m = /select=(\d+),(\d+)/.exec(location.hash);
  if (!m) return false;
  const p = new URLSearchParams(location.hash.slice(1));
  const cand = Math.max(1, Math.min(NC, Number(p.get("cand") || 1))) - 1, kind = p.get("kind") || "generated";
  if (!M.kinds[kind]) { body.dataset.selected = "error: no " + kind + " positions"; return false; }
  const sort = p.get("rows") || S.sort;
  if (kind !== S.kind || cand !== S.cand || sort !== S.sort) { S.kind = kind; S.cand = cand; S.sort = sort; tabs(); draw(); legend(); }
  const g = G(), s = g.seqs.indexOf(Number(m[1]));
  if (s < 0) { body.dataset.selected = "error: no sequence " + m[1]; return false; }
  const j = Number(m[2]) - g.base[s];
  if (j < 0 || j >= count(s)) { body.dataset.selected = "error: position " + m[2] + " not compared"; return false; }
  select(s, j, !(p.has("probe") || p.has("tip")));
  const P = $("panel"), rows = P.querySelectorAll("table[data-role=top5] tbody tr").length;
  const ok = P.querySelector("[data-role=kl]") && (rows === 5 || P.querySelector("[data-role=no-detail]"));
  body.dataset.selected = ok ? "ok:" + P.dataset.filled : "error: the panel was not filled";
  if (p.has("probe")) probe(s, j);
  if (p.has("tip")) $("heat-over").dispatchEvent(new MouseEvent("mousemove", cellPoint(s, j)));
  return true;
}
function cellPoint(s, j) {
  const r = $("heat-over").getBoundingClientRect();
  return {clientX: r.left + xOf(Math.floor(j / S.bin) * S.bin) + cellW() / 2, clientY: r.top + MT + (S.rowOf[s] + 0.5) * S.rowPx, bubbles: true};
}
// For the browser test (#select=...&probe): the real mouse and key handlers
// on the selected cell, with their outcome written into the DOM.
function probe(s, j) {
  const over = $("heat-over"), at = cellPoint(s, j);
  over.dispatchEvent(new MouseEvent("mousemove", at));
  const t = $("tip"), seq = G().seqs[s];
  const hovered = t.style.display === "block" && t.textContent.startsWith("sequence " + seq + " · position " + posOf(s, j)) && t.textContent.includes("KL ");
  S.sel = null;
  over.dispatchEvent(new MouseEvent("click", at));
  const clicked = S.sel && S.sel.s === s && S.sel.j === j;
  over.dispatchEvent(new KeyboardEvent("keydown", {key: j + 1 < count(s) ? "ArrowRight" : "ArrowLeft", bubbles: true}));
  const moved = S.sel && S.sel.s === s && Math.abs(S.sel.j - j) === 1;
  over.dispatchEvent(new MouseEvent("mouseleave", at));
  body.dataset.probe = hovered && clicked && moved && t.style.display === "none" ? "ok"
    : "error: hover " + hovered + ", click " + clicked + ", key " + moved + ": " + t.textContent.split("\n")[0];
}
function keys(ev) {
  if (!S.sel || ev.altKey || ev.ctrlKey || ev.metaKey) return;
  const d = {ArrowLeft: [0, -1], ArrowRight: [0, 1], ArrowUp: [-1, 0], ArrowDown: [1, 0]}[ev.key];
  if (!d || S.sel.kind !== S.kind) return;
  ev.preventDefault();
  const row = Math.max(0, Math.min(G().seqs.length - 1, S.rowOf[S.sel.s] + d[0]));
  select(S.order[row], S.sel.j + d[1], false);
}

async function main() {
  A = await unpack();
  if (!KINDS.length) { $("panel").textContent = "No positions were compared."; body.dataset.rendered = "ok"; return; }
  // Candidate sections become tabs only once the page works: a page whose
  // script fails still shows every section.
  document.documentElement.classList.add("js");
  tabs(); draw(); legend();
  const over = $("heat-over");
  over.addEventListener("mousemove", tip);
  over.addEventListener("mouseleave", () => { $("tip").style.display = "none"; });
  over.addEventListener("click", (ev) => {
    const p = hit(ev);
    if (p && !p.missing) { select(p.s, p.j, false); over.focus({preventScroll: true}); }
  });
  // Arrow keys move the selection while the heatmap has the focus; elsewhere they scroll.
  over.addEventListener("keydown", keys);
  window.addEventListener("hashchange", fromHash);
  let pending = 0;
  window.addEventListener("resize", () => { clearTimeout(pending); pending = setTimeout(() => { draw(); }, 150); });
  body.dataset.renderMs = String(Math.round(performance.now() - T0));
  body.dataset.rendered = "ok";
  fromHash();
}
main().catch((e) => fail("render failed: " + (e && e.stack || e)));
})();
"""

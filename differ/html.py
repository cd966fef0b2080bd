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
  summary tables (with the 95% intervals), the noise floor, worst positions,
  the worst position's block, KL by confidence, KL against position (the
  drift verdict, a chart, the bins), a KL histogram, per-sequence tables.

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
by ``svg``, readable without JavaScript. The script and the stylesheet are
package files (``assets/report.js``, ``assets/report.css``) inlined into
every page.

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
from functools import cache
from importlib.resources import files
from typing import Callable, Sequence

import numpy as np

from parity.errors import UsageError
from parity.schemas import GENERATED, PROMPT

from .render import _baseline_label, _interval, _ratio_line, _se, _thr, _tok, _x, fmt
from .report import Report
from .summary import sequence_slice
from .svg import KL_FLOOR, histogram, kl_by_position, trend

log = logging.getLogger("parity")

DETAIL_CAP = 100_000  # positions per candidate whose top-5 are embedded
# Top-5 logprobs keep 12 of float32's 24 significant bits (relative error
# <= 1.2e-4: -10.0000 +- 0.0012, a probability to about 0.1%): the low bits
# are noise to a reader and would be half of a 500x1000 page.
LP_BITS = 12
MAX_OPEN_SEQ_ROWS = 40  # longer sequence tables start collapsed
Decode = Callable[[int], str]


@cache
def _asset(name: str) -> str:
    """The page's stylesheet or script (``assets/``), inlined: the page fetches nothing."""
    return (files("parity.differ") / "assets" / name).read_text(encoding="utf-8")


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
        ("top-1 agreement", fmt(s["top1_agreement"])), *_interval_rows(s),
        ("top-5 overlap", fmt(s["top5_overlap"])),
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


def _floor_gate_html(r: Report, c: int) -> str:
    """The per-position gate against the floor: one row per row kind, then its worst-ratio positions."""
    f = r.floor
    rule, per = f.get("rule"), f.get("per_position") or {}
    if not rule:
        return ""
    rows, worst = [], []
    for kind, p in per.items():
        if p is None:
            continue
        rows.append([kind, p["positions"], f"{100 * p['fraction_within']:.1f}%", f"{100 * p['fraction_within_kl']:.1f}%",
                     f"{100 * p['fraction_within_abs']:.1f}%", _x(p["sigma_ratio_kl"]), _x(p["sigma_ratio_abs"])])
        worst += [[kind, w["sequence"], _link(str(w["position"]), w["sequence"], w["position"], c, kind),
                   fmt(w["kl"]), fmt(w["floor_kl"]), _x(w["ratio"]), fmt(w["max_abs"]), fmt(w["floor_max_abs"])]
                  for w in p["worst_ratio"]]
    head = (f"<h3>Position by position against the floor</h3><p>within: KL &le; {rule['ratio']:g}&times; the "
            f"floor's + {rule['kl_eps']:g} and max |delta| &le; {rule['ratio']:g}&times; the floor's + "
            f"{rule['abs_eps']:g}; needs {100 * rule['min_fraction']:g}% of positions, sigma ratios &le; "
            f"{rule['max_sigma_ratio']:g} (KL) and {rule.get('max_sigma_ratio_abs', rule['max_sigma_ratio']):g} "
            "(|delta|)</p>")
    return (head + _table(["kind", "positions", "within", "KL within", "|delta| within", "sigma KL", "sigma |delta|"],
                          rows)
            + "<h4>Worst ratios to the floor</h4>"
            + _table(["kind", "seq", "pos", "KL", "floor KL", "ratio", "max |delta|", "floor max |delta|"], worst))


def _flips_html(r: Report, c: int) -> str:
    """Argmax flips by class, and the widest listed."""
    if not any(f["flips"] for f in r.flips.values()):
        return ""
    rows, listed = [], []
    for kind, f in r.flips.items():
        rows.append([kind, f["flips"], f["near-tie"], f["real"], f["garbage"], f"{f['tie_steps']:g} {f['dtype']}"])
        listed += [[kind, x["sequence"], _link(str(x["position"]), x["sequence"], x["position"], c, kind), x["class"],
                    x["reference_token"], x["candidate_token"], fmt(x["gap"], 3),
                    "n/a" if x["steps"] is None else f"{x['steps']:.1f}", x["rank_in_reference"]]
                   for x in f["listed"][:10]]
    return ("<h3>Argmax flips</h3><p>The reference's logprob gap between its top token and the candidate's, in "
            "rounding steps of the candidate's dtype; outside the reference's top-100 is garbage.</p>"
            + _table(["kind", "flips", "near-ties", "real", "garbage", "tie limit (steps)"], rows)
            + _table(["kind", "seq", "pos", "class", "ref token", "cand token", "gap", "steps", "rank in ref"],
                     listed))


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
        parts.append(_floor_gate_html(r, c))
    parts.append(_flips_html(r, c))
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
        ["p(top)", "positions", "KL mean", "± SE", "KL median", "KL max", "top-1", "top-1 95% interval"],
        [[f"[{b['confidence'][0]:.2f}, {b['confidence'][1]:.2f}]", b["positions"], fmt(b["kl_mean"]),
          _se(b.get("kl_mean_se")), fmt(b["kl_median"]), fmt(b["kl_max"]), fmt(b["top1_agreement"], 3),
          _interval(b.get("top1_agreement_ci95"), 3)] for b in r.kl_by_confidence]))
    parts.append(_position_html(r))
    gen = r.positions.get(GENERATED)
    parts.append("<h3>KL histogram (generated positions, log10 nats)</h3>"
                 + (histogram(gen["kl"]) if gen is not None and len(gen["kl"]) else "<p>no data</p>"))
    parts.append("<h3>Sequences</h3>" + _seq_table(r, c))
    parts.append("</section>")
    return "".join(parts)


def _interval_rows(s: dict) -> list[tuple[str, str]]:
    """The summary's standard errors and 95% intervals (summary.uncertain); none in an older summary."""
    if "se_method" not in s:
        return []
    what = "sequences" if s["se_method"] == "by sequence" else "positions"
    return [("KL mean SE", _se(s["kl_mean_se"])), ("KL mean 95% interval", _interval(s["kl_mean_ci95"])),
            ("top-1 agreement SE", _se(s["top1_agreement_se"])),
            ("top-1 agreement 95% interval", _interval(s["top1_agreement_ci95"])),
            ("SE method", f"{s['se_method']} ({s['se_clusters']} {what})")]


def _position_html(r: Report) -> str:
    """KL against absolute position per row kind: the drift verdict, a chart, the bins."""
    e = html.escape
    parts = []
    for kind, p in r.kl_by_position.items():
        if not p:
            continue
        verdict = f'<p class="warn"><b>{e(p["verdict"])}</b></p>' if p["drift"] else f"<p>{e(p['verdict'])}</p>"
        rows = [[f"{b['position'][0]}-{b['position'][1]}", b["positions"], b["sequences"], fmt(b["kl_mean"]),
                 _se(b["kl_mean_se"]), fmt(b["kl_p99"]), fmt(b["top1_agreement"], 3),
                 _interval(b.get("top1_agreement_ci95"), 3)] for b in p["bins"]]
        parts.append(f"<h4>{e(kind)} positions</h4>" + verdict + kl_by_position(p["bins"]) + _table(
            ["position", "positions", "sequences", "KL mean", "± SE", "KL p99", "top-1", "top-1 95% interval"], rows))
    if not parts:
        return ""
    return ("<h3>KL against position</h3><p class=\"small mute\">Compared positions grouped by absolute position "
            "in the sequence (bins double in width from 16 on); slope: least squares of KL on position, "
            "its SE clustered by sequence.</p>" + "".join(parts))


def _heatmap(meta: dict, detail_cap: int) -> str:
    """The overview heatmap's section: the script draws it from the page's data."""
    e = html.escape
    note_cap = ""
    if meta["capped"]:
        note_cap = (f" The top-5 lists of at most {detail_cap:,} positions per candidate are embedded: those with "
                    "the largest KL and every sequence's first argmax disagreement and divergent token.")
    no_details = ("" if meta["hasDetails"] else
                  " This report was made without per-position details: clicking shows KL and tokens only "
                  "(top-5 lists come with <code>diff(..., details=True)</code>, which <code>parity diff --html</code> asks for).")
    return (
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
        f"<style>\n{_asset('report.css')}</style></head><body>",
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
        parts.append("<h2>Trend across candidates</h2>" + trend(
            labels, [r.summary["kl"] for r in rs], [r.summary["top1_agreement"] for r in rs],
            [r.verdict == "fail" for r in rs], rs[0].thresholds.max_kl))

    parts.append(_heatmap(meta, detail_cap))

    parts.append("<h2>Generated positions</h2>" + _summary_table([r.summary for r in rs], labels))
    if any(r.prompt for r in rs):
        parts.append("<h2>Prompt positions</h2>" + _summary_table([r.prompt for r in rs], labels))
    for c, (r, label) in enumerate(zip(rs, labels)):
        parts.append(_cand_section(r, label, c, several))
    parts.append(f'<p class="small mute">parity · reference {e(ref["digest"])} · {len(rs)} candidate(s) · '
                 f'{meta["rawBytes"]:,} bytes of position data, {len(data):,} embedded</p>')
    parts.append(f'<script type="application/json" id="parity-meta">{_json_script(meta)}</script>')
    parts.append(f'<script type="application/octet-stream" id="parity-data">{data}</script>')
    parts.append(f"<script>\n{_asset('report.js')}</script></body></html>\n")
    page = "".join(parts)
    log.debug("html report: %d candidates, %.1f MB, %.2fs", len(rs), len(page) / 1e6, time.perf_counter() - t0)
    return page

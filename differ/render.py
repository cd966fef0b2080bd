"""Terminal rendering of a Report (the HTML page is in ``differ.html``)."""

from __future__ import annotations

import math

from .floor import times
from .report import Report

MAX_SEQ_ROWS = 20


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
    lines += _interval_lines(s)
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
    out += _drift_lines(r.kl_by_position.get("generated"), st)
    if r.prompt:
        out += ["", st.bold("Prompt positions"), *_summary_lines(r.prompt, st)]
        out += _drift_lines(r.kl_by_position.get("prompt"), st)
    if r.floor:
        out += ["", st.bold("Noise floor (baseline vs reference)"), *_floor_lines(r.floor, st),
                *_floor_gate_lines(r.floor, st)]
    out += _flip_lines(r.flips, st)

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
            f"  {'p(top)':>13} {'positions':>9} {'KL mean':>11} {'± SE':>10} {'KL median':>11} {'KL max':>11} "
            f"{'top-1':>7}"]
    for b in r.kl_by_confidence:
        lo, hi = b["confidence"]
        out.append(f"  {f'[{lo:.2f}, {hi:.2f}]':>13} {b['positions']:>9} {fmt(b['kl_mean']):>11} "
                   f"{_se(b.get('kl_mean_se')):>10} {fmt(b['kl_median']):>11} {fmt(b['kl_max']):>11} "
                   f"{fmt(b['top1_agreement'], 3):>7}")
    out += _position_tables(r, st)

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
    rule = r.floor.get("rule") if r.floor else None
    if rule:
        items += [(f"floor {k}", v) for k, v in rule.items()]
    return ", ".join(f"{k}={v:g}" for k, v in items)


def _floor_gate_lines(f: dict, st: _Style) -> list[str]:
    """The per-position gate: how much of each kind sits within the floor, the sigma ratios, the worst ratios."""
    rule, parts = f.get("rule"), f.get("per_position") or {}
    if not rule:
        return []
    lines = [f"  per position: within {rule['ratio']:g}x the floor (+{rule['kl_eps']:g} KL, +{rule['abs_eps']:g} "
             f"|delta|) at >= {100 * rule['min_fraction']:g}% of positions; sigma ratios <= "
             f"{rule['max_sigma_ratio']:g} (KL), {rule.get('max_sigma_ratio_abs', rule['max_sigma_ratio']):g} (|delta|)"]
    for kind, p in parts.items():
        if p is None:
            continue
        ok = p["fraction_within"] >= rule["min_fraction"] and (
            p["sigma_ratio_kl"] is None or p["sigma_ratio_kl"] <= rule["max_sigma_ratio"]) and (
            p["sigma_ratio_abs"] is None or p["sigma_ratio_abs"] <= rule.get("max_sigma_ratio_abs", math.inf))
        line = (f"  {kind:<9}  within at {100 * p['fraction_within']:.1f}% of {p['positions']} (KL "
                f"{100 * p['fraction_within_kl']:.1f}%, |delta| {100 * p['fraction_within_abs']:.1f}%); sigma ratio "
                f"KL {_x(p['sigma_ratio_kl'])}, |delta| {_x(p['sigma_ratio_abs'])}")
        lines.append(st.green(line) if ok else st.red(line))
        worst = [w for w in p["worst_ratio"] if w["ratio"] is None or w["ratio"] > 1][:3]
        if worst:
            lines.append(st.dim("             worst ratio: " + "; ".join(
                f"seq {w['sequence']} pos {w['position']} KL {fmt(w['kl'], 2)} vs {fmt(w['floor_kl'], 2)}"
                for w in worst)))
    return lines


def _flip_lines(flips: dict, st: _Style) -> list[str]:
    """Argmax flips by class, with the widest listed."""
    if not any(f["flips"] for f in flips.values()):
        return []
    lines = ["", st.bold("Argmax flips (reference top-1 gap in the candidate dtype's rounding steps)")]
    for kind, f in flips.items():
        if not f["flips"]:
            continue
        head = (f"  {kind:<9}  {f['flips']} flips: {f['near-tie']} near-ties (<= {f['tie_steps']:g} {f['dtype']} "
                f"steps), {f['real']} real, {f['garbage']} outside the reference's top-{f['garbage_rank']}")
        lines.append(st.red(head) if f["garbage"] else head)
        for x in f["listed"][:5]:
            steps = "n/a" if x["steps"] is None else f"{x['steps']:.1f}"
            lines.append(st.dim(f"             seq {x['sequence']} pos {x['position']}: {x['class']}, gap "
                                f"{fmt(x['gap'], 3)} = {steps} steps, candidate token rank {x['rank_in_reference']}"))
    return lines


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


def _se(x: float | None) -> str:
    """A standard error, two significant digits: enough to read a mean's precision by."""
    return "n/a" if x is None else f"{x:.1e}"


def _interval(ci: list | None, digits: int = 4) -> str:
    return "n/a" if ci is None else f"[{fmt(ci[0], digits)}, {fmt(ci[1], digits)}]"


def _interval_lines(s: dict) -> list[str]:
    """The 95% intervals of the KL mean and top-1 agreement (summary.uncertain)."""
    if "se_method" not in s or not s["positions"]:
        return []
    what = "sequences" if s["se_method"] == "by sequence" else "positions"
    return [f"  95% intervals ({s['se_method']}, {s['se_clusters']} {what}): KL mean {_interval(s['kl_mean_ci95'])} "
            f"(SE {_se(s['kl_mean_se'])})   top-1 agreement {_interval(s['top1_agreement_ci95'])} "
            f"(SE {_se(s['top1_agreement_se'])})"]


def _drift_lines(p: dict | None, st: _Style) -> list[str]:
    """KL against position in one line: the drift named (in yellow), or the flat slope."""
    if not p:
        return []
    return [("  " + st.yellow(p["verdict"])) if p["drift"] else f"  {p['verdict']}"]


def _position_tables(r: Report, st: _Style) -> list[str]:
    """Per kind, KL by bins of absolute position (summary.kl_by_position)."""
    out: list[str] = []
    for kind, p in r.kl_by_position.items():
        if not p:
            continue
        out += ["", st.bold(f"KL by {kind} position (absolute position in the sequence)"),
                f"  {'position':>13} {'positions':>9} {'seqs':>5} {'KL mean':>11} {'± SE':>10} {'KL p99':>11} "
                f"{'top-1':>7}"]
        for b in p["bins"]:
            lo, hi = b["position"]
            out.append(f"  {f'{lo}-{hi}':>13} {b['positions']:>9} {b['sequences']:>5} {fmt(b['kl_mean']):>11} "
                       f"{_se(b['kl_mean_se']):>10} {fmt(b['kl_p99']):>11} {fmt(b['top1_agreement'], 3):>7}")
    return out

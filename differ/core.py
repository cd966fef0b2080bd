"""``diff`` and ``compare``: stream a reference and its candidates block by block and build Reports."""

from __future__ import annotations

import logging
import math
import numbers
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from parity.errors import ParityError, UsageError
from parity.settings import settings
from schemas.store import GENERATED, PROMPT, Store

from . import metrics
from .plan import KINDS, Pairs, Plan, blocks, build_plan, check_compatible
from .floor import attach_floor
from .report import Report, kl_by_confidence, nan_mask, sequence_slice, summarize
from .thresholds import Thresholds

log = logging.getLogger("parity")

BLOCK_BYTES = 8 << 20  # raw float32 bytes per side per block (peak RSS grows with it)
MAX_BLOCK_ROWS = 256
MAX_TOPN_BLOCK_ROWS = 2048
SNIPPET = 3  # head and tail entries shown for the worst position

# Blocks read and decoded ahead on a helper thread while one is compared:
# blosc and numpy release the GIL, so on two cores reading and comparing
# overlap; two blocks ahead absorb the jitter of either side.
READ_AHEAD = 2
Progress = Callable[[int, int], None]
Decode = Callable[[int], str]


def _open(x: str | Path | Store) -> Store:
    return x if isinstance(x, Store) else Store.open(x)


def block_rows_for(width: int, full: bool) -> int:
    rows = BLOCK_BYTES // max(4 * width, 1)
    cap = MAX_BLOCK_ROWS if full else MAX_TOPN_BLOCK_ROWS
    return int(min(max((rows // 16) * 16, 16), cap))


def _width(ref: Store, cand: Store) -> tuple[int, bool]:
    """(values per row that a block of this pair holds, both sides full vocabulary)."""
    full = ref.full_vocab and cand.full_vocab
    width = ref.vocab_size if full else max(ref.vocab_size if ref.full_vocab else ref.manifest.request.logprobs, 1)
    return width, full


def _read_group(ref: Store, cands: Sequence[Store], kind: str, pairs: Sequence[Pairs], a: int, b: int):
    """(ref values, ref ids, [(cand values, cand ids), ...]) for pairs [a, b)."""
    ra, n = int(pairs[0].ref[a]), b - a
    sides = []
    for cand, p in zip(cands, pairs):
        ca = int(p.cand[a])
        sides.append((cand.rows(kind, ca, ca + n), None if cand.full_vocab else cand.rows(kind, ca, ca + n, ids=True)))
    return (
        ref.rows(kind, ra, ra + n),
        None if ref.full_vocab else ref.rows(kind, ra, ra + n, ids=True),
        sides,
    )


def compare_group(ref: Store, cands: Sequence[Store], kind: str, pairs: Sequence[Pairs], eps: float,
                  tick: Callable[[int], None], kernel: str | None = None) -> list[dict[str, np.ndarray]]:
    """Per-position metrics of one row kind for candidates whose pairs share
    the reference rows: each reference block is read once for all of them."""
    n = len(pairs[0])
    outs = [metrics.empty(n) for _ in cands]
    if n == 0:
        return outs
    shapes = [_width(ref, c) for c in cands]
    fulls = [full for _, full in shapes]
    # The narrowest budget keeps every side's block within BLOCK_BYTES.
    cuts = blocks(pairs, min(block_rows_for(w, full) for w, full in shapes))
    # At most READ_AHEAD + 1 blocks per side are held at once.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="parity-diff-read") as pool:
        ahead = [pool.submit(_read_group, ref, cands, kind, pairs, a, b) for a, b in cuts[:READ_AHEAD]]
        for i, (a, b) in enumerate(cuts):
            x, xi, sides = ahead.pop(0).result()
            if i + READ_AHEAD < len(cuts):
                ahead.append(pool.submit(_read_group, ref, cands, kind, pairs, *cuts[i + READ_AHEAD]))
            for out, full, (y, yi) in zip(outs, fulls, sides):
                if full:
                    got = metrics.full_block(x, y, eps, kernel)
                else:
                    got = metrics.topn_block(metrics.Side(x, xi), metrics.Side(y, yi), eps)
                for k, v in got.items():
                    out[k][a:b] = v
                tick(b - a)
            del x, xi, sides, y, yi, got
    return outs


def compare_kind(ref: Store, cand: Store, kind: str, pairs: Pairs, eps: float, tick: Callable[[int], None],
                 kernel: str | None = None) -> dict[str, np.ndarray]:
    """Per-position metrics for every pair of one row kind."""
    return compare_group(ref, [cand], kind, [pairs], eps, tick, kernel)[0]


def _text(decode: Decode | None, token: int | None) -> str | None:
    if decode is None or token is None or token < 0:
        return None
    try:
        return decode(int(token))
    except Exception as e:  # a user's decoder must not sink the report
        log.warning("decode(%d) failed: %s", token, e)
        return None


def _read_row(store: Store, kind: str, row: int) -> tuple[np.ndarray, np.ndarray | None]:
    values = store.rows(kind, row, row + 1)[0]
    ids = None if store.full_vocab else store.rows(kind, row, row + 1, ids=True)[0]
    return values, ids


def _divergence(ref: Store, cand: Store, plan: Plan, top_n: int, decode: Decode | None) -> dict[int, dict]:
    """vLLM's rule at each sequence's first divergent token: each side's token
    must be within the other's top-N."""
    out: dict[int, dict] = {}
    r_off, c_off = ref.row_offsets(GENERATED), cand.row_offsets(GENERATED)
    for sp in plan.sequences:
        if sp.first_divergence is None:
            continue
        j = sp.first_divergence
        rv, ri = _read_row(ref, GENERATED, int(r_off[sp.index] + j))
        cv, ci = _read_row(cand, GENERATED, int(c_off[sp.index] + j))
        r_in_c = metrics.rank_in_row(cv, ci, sp.ref_token)
        c_in_r = metrics.rank_in_row(rv, ri, sp.cand_token)
        listed = min(n for n in (len(rv), len(cv)))
        ok = bool(r_in_c <= top_n and c_in_r <= top_n)  # NaN (not listed) fails
        out[sp.index] = {
            "generated_index": j,
            "position": sp.prompt_len + j,
            "ref_token": sp.ref_token,
            "cand_token": sp.cand_token,
            "ref_text": _text(decode, sp.ref_token),
            "cand_text": _text(decode, sp.cand_token),
            "ref_token_rank_in_cand": r_in_c,
            "cand_token_rank_in_ref": c_in_r,
            "top_n": top_n if listed >= top_n else listed,
            "passes": ok,
        }
    return out


def _worst_detail(ref: Store, cand: Store, kind: str, ref_row: int, cand_row: int, eps: float) -> dict:
    rv, ri = _read_row(ref, kind, ref_row)
    cv, ci = _read_row(cand, kind, cand_row)

    def top(values, ids):
        lid, lv = metrics.Side(values[None, :], None if ids is None else ids[None, :]).listed(5)
        return [[int(i), float(v)] for i, v in zip(lid[0][:5], lv[0][:5])]

    def snippet(values, ids):
        if ids is not None:  # top-N: show listed values in id order
            values = values[np.argsort(ids)]
        return {"head": [float(v) for v in values[:SNIPPET]], "tail": [float(v) for v in values[-SNIPPET:]]}

    return {
        "kind": kind,
        "width": {"reference": int(len(rv)), "candidate": int(len(cv))},
        "top5": {"reference": top(rv, ri), "candidate": top(cv, ci)},
        "snippet": {"reference": snippet(rv, ri), "candidate": snippet(cv, ci)},
    }


def _store_info(store: Store) -> dict:
    m = store.manifest
    return {
        "path": str(store.path),
        "digest": m.digest,
        "model": m.request.model.id,
        "weights_digest": m.request.model.weights_digest,
        "tokenizer_digest": m.request.model.tokenizer_digest,
        "device": m.device.kind,
        "dtype": m.request.dtype,
        "logprobs": m.request.logprobs,
        "vocab_size": m.vocab_size,
        "versions": dict(m.device.versions),
        "created_at": m.created_at,
        "sequences": len(m.sequences),
        "positions": {"generated": m.generated_positions, "prompt": m.prompt_positions},
    }


def _seq_summary(pos: dict[str, np.ndarray], seq: np.ndarray, index: int) -> dict:
    sl = sequence_slice(seq, index)
    kl = pos["kl"][sl]
    fin = kl[np.isfinite(kl)]
    notnan = kl[~np.isnan(kl)]
    top1 = pos["top1"][sl]
    return {
        "positions": int(len(kl)),
        "kl_mean": float(fin.mean()) if len(fin) else None,
        "kl_max": float(notnan.max()) if len(notnan) else None,
        "top1_agreement": float(top1.mean()) if len(top1) else None,
        "nan_positions": int(np.count_nonzero(nan_mask({k: v[sl] for k, v in pos.items()}))),
        "_first_top1_mismatch": int(np.argmin(top1)) if len(top1) and not top1.all() else None,
    }


def diff(
    reference: str | Path | Store,
    candidate: str | Path | Store,
    *,
    baseline: str | Path | Store | None = None,
    max_floor_ratio: float | None = None,
    thresholds: Thresholds | None = None,
    eps: float = 0.5,
    top_n_rule: int = 5,
    worst: int = 10,
    decode: Decode | None = None,
    progress: Progress | None = None,
    kernel: str | None = None,
) -> Report:
    """Compares two stores position by position; see the package docstring.

    ``kernel``: "fused" (C) or "numpy" for full-vocabulary rows; default from
    PARITY_DIFF_KERNEL, else the C kernel when it was built.

    ``baseline``: a store of accepted numerics (e.g. the same request in
    bfloat16, or on the hf device), compared with the reference in the same
    pass; the report's ``floor`` then sets the candidate beside it.
    ``max_floor_ratio``: fail when the candidate's generated KL p99 is more
    than this many times the baseline's (see ``floor.ratio``).
    """
    max_floor_ratio = _check_floor_ratio(max_floor_ratio, baseline)
    opts = dict(thresholds=thresholds, eps=eps, top_n_rule=top_n_rule, worst=worst, decode=decode,
                progress=progress, kernel=kernel)
    t0 = time.perf_counter()
    if baseline is None:
        report = _compare(reference, [candidate], [None], **opts)[0]
    else:
        report, base = _compare(reference, [candidate, baseline], [None, "baseline"], **opts)
        report = attach_floor(report, base, max_floor_ratio)
    log.info("diff done in %.2fs: verdict %s", time.perf_counter() - t0, report.verdict)
    return report


def compare(
    reference: str | Path | Store,
    candidates: Sequence[str | Path | Store],
    *,
    thresholds: Thresholds | None = None,
    eps: float = 0.5,
    top_n_rule: int = 5,
    worst: int = 10,
    decode: Decode | None = None,
    progress: Progress | None = None,
    kernel: str | None = None,
) -> list[Report]:
    """One Report per candidate, as ``diff(reference, candidate)`` gives it.

    Candidates whose row pairs of a kind use the same reference rows (all
    recorded on the reference's forced trajectory, say) share one streaming
    pass: each reference block is read once and compared with every one of
    them. ``progress`` counts row pairs over all candidates.
    """
    if isinstance(candidates, (str, Path, Store)):
        raise UsageError("compare() takes a list of candidate stores; diff() compares one")
    candidates = list(candidates)
    labels = [None] if len(candidates) == 1 else [f"candidate {i + 1}" for i in range(len(candidates))]
    t0 = time.perf_counter()
    reports = _compare(reference, candidates, labels, thresholds=thresholds, eps=eps, top_n_rule=top_n_rule,
                       worst=worst, decode=decode, progress=progress, kernel=kernel)
    log.info("compare done in %.2fs: verdicts %s", time.perf_counter() - t0, ", ".join(r.verdict for r in reports))
    return reports


def _check_floor_ratio(ratio: float | None, baseline) -> float | None:
    if ratio is None:
        return None
    if baseline is None:
        raise UsageError("max_floor_ratio needs a baseline store to measure the floor on")
    if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real) or math.isnan(ratio) or ratio < 0:
        raise UsageError(f"max_floor_ratio must be a non-negative number, got {ratio!r}")
    return float(ratio)


def _checked(ref: Store, cand: Store, label: str | None) -> tuple[list[str], Plan]:
    """(warnings, plan); errors name the side when several are compared."""
    try:
        warnings = check_compatible(ref, cand)
        plan = build_plan(ref, cand)
    except ParityError as e:
        if label is None:
            raise
        raise type(e)(f"{label} {cand.path}: {e}", hint=e.hint) from None
    return warnings + plan.warnings, plan


def _groups(pairs: list[Pairs]) -> list[list[int]]:
    """Candidate indices grouped by identical reference rows, in first-seen order."""
    groups: list[list[int]] = []
    for i, p in enumerate(pairs):
        for g in groups:
            if np.array_equal(pairs[g[0]].ref, p.ref):
                g.append(i)
                break
        else:
            groups.append([i])
    return groups


def _compare(reference, candidates: list, labels: list[str | None], *, thresholds: Thresholds | None, eps: float,
             top_n_rule: int, worst: int, decode: Decode | None, progress: Progress | None,
             kernel: str | None) -> list[Report]:
    kernel = metrics.resolve_kernel(kernel or settings().diff_kernel)
    ref = _open(reference)
    cands = [_open(c) for c in candidates]
    for store in (ref, *cands):
        # A missing file would read back as zeros and give plausible metrics.
        store.check_complete()
    checked = [_checked(ref, c, label) for c, label in zip(cands, labels)]
    plans = [plan for _, plan in checked]
    total = sum(plan.total_rows for plan in plans)
    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(done, total)

    for cand, plan in zip(cands, plans):
        log.info("diff: %s vs %s, %d row pairs (%s), %s kernel", ref.path, cand.path, plan.total_rows,
                 "forced trajectory" if plan.forced else "free-running", kernel)
    if progress is not None:
        progress(0, total)
    positions: list[dict[str, dict[str, np.ndarray]]] = [{} for _ in cands]
    for kind in KINDS:
        pairs = [plan.pairs[kind] for plan in plans]
        groups = _groups(pairs)
        for n, group in enumerate(groups):
            if n and len(pairs[group[0]]):
                log.debug("%s rows: %d of %d candidates pair other reference rows; reading the reference again",
                          kind, len(group), len(cands))
            outs = compare_group(ref, [cands[i] for i in group], kind, [pairs[i] for i in group], eps, tick, kernel)
            for i, out in zip(group, outs):
                positions[i][kind] = out
    reports = [
        _report(ref, cand, plan, warnings, pos, thresholds=thresholds, eps=eps, top_n_rule=top_n_rule,
                worst=worst, decode=decode)
        for cand, (warnings, plan), pos in zip(cands, checked, positions)
    ]
    return reports


def _report(ref: Store, cand: Store, plan: Plan, warnings: list[str], positions: dict[str, dict[str, np.ndarray]],
            *, thresholds: Thresholds | None, eps: float, top_n_rule: int, worst: int,
            decode: Decode | None) -> Report:
    gen, pr = positions[GENERATED], positions[PROMPT]
    for kind in KINDS:
        for k in ("seq", "pos", "token"):
            positions[kind][k] = getattr(plan.pairs[kind], k)

    common = sum(sp.common for sp in plan.sequences)
    matched = sum(sp.common if sp.first_divergence is None else sp.first_divergence for sp in plan.sequences)
    summary = summarize(gen, matched / common if common else None)
    prompt = summarize(pr) if len(plan.pairs[PROMPT]) else None

    divergence = _divergence(ref, cand, plan, top_n_rule, decode)
    sequences = []
    for sp in plan.sequences:
        s = _seq_summary(gen, plan.pairs[GENERATED].seq, sp.index)
        first_top1 = s.pop("_first_top1_mismatch")
        p = _seq_summary(pr, plan.pairs[PROMPT].seq, sp.index) if prompt else None
        if p:
            p.pop("_first_top1_mismatch")
        sequences.append({
            "index": sp.index,
            "positions": s["positions"],
            "first_divergence": sp.first_divergence,
            "kl_mean": s["kl_mean"],
            "kl_max": s["kl_max"],
            "top1_agreement": s["top1_agreement"],
            "nan_positions": s["nan_positions"],
            "prompt_len": sp.prompt_len,
            "generated": {"reference": sp.ref_len, "candidate": sp.cand_len, "common": sp.common},
            "first_divergence_position": None if sp.first_divergence is None else sp.prompt_len + sp.first_divergence,
            "first_top1_mismatch": first_top1,
            "divergence": divergence.get(sp.index),
            "prompt": p,
        })

    worst_list, detail = _worst(ref, cand, plan, positions, worst, decode, eps)
    return Report(
        reference=_store_info(ref),
        candidate=_store_info(cand),
        forced=plan.forced,
        summary=summary,
        prompt=prompt,
        sequences=sequences,
        worst=worst_list,
        thresholds=thresholds or Thresholds(),
        warnings=warnings,
        kl_by_confidence=kl_by_confidence(gen),
        worst_detail=detail,
        eps=eps,
        top_n_rule=top_n_rule,
        positions=positions,
    )


def _worst(ref: Store, cand: Store, plan: Plan, positions: dict, n: int, decode: Decode | None, eps: float):
    """The n positions with the largest KL (NaN first, then inf), both kinds."""
    def rank_key(kl: float) -> tuple[bool, float]:
        return (not np.isnan(kl), 0.0 if np.isnan(kl) else -kl)

    rows = []
    for kind in KINDS:
        kl = positions[kind]["kl"]
        order = np.lexsort((-np.nan_to_num(kl, nan=0.0), ~np.isnan(kl)))[:n]
        rows += [(rank_key(float(kl[i])), kind, int(i)) for i in order]
    rows = [(kind, i) for _, kind, i in sorted(rows, key=lambda r: r[0])[:n]]
    out = []
    for kind, i in rows:
        p = positions[kind]
        out.append({
            "kind": kind,
            "sequence": int(p["seq"][i]),
            "position": int(p["pos"][i]),
            "kl": float(p["kl"][i]),
            "token": int(p["token"][i]),
            "token_text": _text(decode, int(p["token"][i])),
            "ref_top": int(p["ref_top"][i]),
            "cand_top": int(p["cand_top"][i]),
            "ref_top_text": _text(decode, int(p["ref_top"][i])),
            "cand_top_text": _text(decode, int(p["cand_top"][i])),
            "ref_conf": float(p["ref_conf"][i]),
            "delta_p": float(p["delta_p"][i]),
            "max_abs": float(p["max_abs"][i]),
            "top1": bool(p["top1"][i]),
        })
    detail = None
    if rows:
        kind, i = rows[0]
        pairs = plan.pairs[kind]
        p = positions[kind]
        detail = _worst_detail(ref, cand, kind, int(pairs.ref[i]), int(pairs.cand[i]), eps)
        detail.update({
            "sequence": int(p["seq"][i]),
            "position": int(p["pos"][i]),
            "kl": float(p["kl"][i]),
            "finite": int(p["finite"][i]),
            "outliers": int(p["outliers"][i]),
            "max_abs": float(p["max_abs"][i]),
            "mean_abs": float(p["mean_abs"][i]),
            "pearson": float(p["pearson"][i]),
            "eps": eps,
            "vocab_size": ref.vocab_size,
        })
    return out, detail

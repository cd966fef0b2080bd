"""``diff`` and ``compare``: stream a reference and its candidates block by block and build Reports."""

from __future__ import annotations

import logging
import math
import numbers
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from parity.errors import ParityError, UsageError
from parity.settings import settings
from parity.schemas.store import GENERATED, PROMPT, Store, available_cores, row_array_names

from . import metrics
from .plan import KINDS, Pairs, Plan, blocks, build_plan, check_compatible
from .floor import attach_floor
from .report import Report, kl_by_confidence, nan_mask, sequence_slice, summarize
from .thresholds import Thresholds

log = logging.getLogger("parity")

# Raw float32 bytes per side per block. Small on purpose: a block's rows are
# decoded and compared while they are still in the CPU's cache, and each
# worker keeps its own buffers (peak RSS stays flat in the store's size).
BLOCK_BYTES = 2 << 20
MAX_BLOCK_ROWS = 256
MAX_TOPN_BLOCK_ROWS = 2048
SNIPPET = 3  # head and tail entries shown for the worst position
# With details=True: each side's top entries per position, kept for the HTML
# report's hover (positions x 20 numbers: 40 bytes a position).
DETAIL_TOP = 5
DETAIL_FIELDS = ("ref_top5_ids", "ref_top5_lp", "cand_top5_ids", "cand_top5_lp")

# Every worker reads, decodes and compares whole blocks (Blosc, the pread and
# the C kernel release the GIL), one worker per core; results are taken in
# order, at most this many blocks per worker in flight.
IN_FLIGHT_PER_WORKER = 2
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


class _Buffers(threading.local):
    """A worker's reusable block buffers, one per side (no fresh pages per block)."""

    def __init__(self):
        self.arrays: dict[int, np.ndarray] = {}

    def rows(self, side: int, store: Store, kind: str, start: int, n: int) -> np.ndarray:
        if not store.full_vocab:  # narrow top-N rows: small, and their ids come along
            return store.rows(kind, start, start + n)
        info = store.manifest.arrays[row_array_names(kind)[0]]
        dtype = np.dtype(info.dtype)
        buf = self.arrays.get(side)
        if buf is None or buf.shape[0] < n or buf.shape[1:] != tuple(info.shape[1:]) or buf.dtype != dtype:
            buf = self.arrays[side] = np.empty((max(n, 16), *info.shape[1:]), dtype)
        return store.rows(kind, start, start + n, out=buf[:n])


def _read_group(ref: Store, cands: Sequence[Store], kind: str, pairs: Sequence[Pairs], a: int, b: int,
                buffers: _Buffers):
    """(ref values, ref ids, [(cand values, cand ids), ...]) for pairs [a, b).

    Full-vocabulary values are decoded into the calling worker's ``buffers``:
    valid until its next block.
    """
    ra, n = int(pairs[0].ref[a]), b - a
    sides = []
    for side, (cand, p) in enumerate(zip(cands, pairs), start=1):
        ca = int(p.cand[a])
        sides.append((buffers.rows(side, cand, kind, ca, n),
                      None if cand.full_vocab else cand.rows(kind, ca, ca + n, ids=True)))
    return (
        buffers.rows(0, ref, kind, ra, n),
        None if ref.full_vocab else ref.rows(kind, ra, ra + n, ids=True),
        sides,
    )


def _top_entries(values: np.ndarray, ids: np.ndarray | None, nan_rows: np.ndarray, top: np.ndarray | None = None,
                 k: int = DETAIL_TOP) -> tuple[np.ndarray, np.ndarray]:
    """(ids int32, logprobs float32) of each row's k largest entries, descending;
    a top-N row listing fewer than k pads with id -1 and NaN.

    ``top``: the row's largest ids, as the full-vocabulary kernels found them
    (``metrics.TOP_IDS``): then only their values are gathered. Rows holding
    NaN (``nan_rows``) get a full stable sort with NaN last, so their lists do
    not depend on how a kernel orders NaN.
    """
    if top is not None:
        lid = top[:, :k]
        lv = np.take_along_axis(values, lid, axis=1)
    else:
        lid, lv = metrics.Side(values, ids).listed(k)
        lid, lv = lid[:, :k], lv[:, :k]
    for r in np.flatnonzero(nan_rows):
        order = np.argsort(-values[r], kind="stable")[:k]
        lid[r, : len(order)] = order if ids is None else ids[r][order]
        lv[r, : len(order)] = values[r][order]
    out_ids = np.full((len(values), k), -1, np.int32)
    out_lp = np.full((len(values), k), np.nan, np.float32)
    out_ids[:, : lid.shape[1]] = lid
    out_lp[:, : lv.shape[1]] = lv
    return out_ids, out_lp


def _detail_arrays(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((n, DETAIL_TOP), -1, np.int32), np.full((n, DETAIL_TOP), np.nan, np.float32)


def compare_group(ref: Store, cands: Sequence[Store], kind: str, pairs: Sequence[Pairs], eps: float,
                  tick: Callable[[int], None], kernel: str | None = None,
                  details: bool | Sequence[bool] = False) -> list[dict[str, np.ndarray]]:
    """Per-position metrics of one row kind for candidates whose pairs share
    the reference rows: each reference block is read once for all of them.

    ``details`` (one flag, or one per candidate): also keep both sides' top
    ``DETAIL_TOP`` ids and logprobs per position (``DETAIL_FIELDS``), taken
    from the blocks already in memory; the reference's arrays are one object
    shared by the candidates of the group.
    """
    n = len(pairs[0])
    outs = [metrics.empty(n) for _ in cands]
    want = [bool(details)] * len(cands) if isinstance(details, (bool, np.bool_)) else [bool(d) for d in details]
    if any(want):
        ref_ids, ref_lp = _detail_arrays(n)
        for out, w in zip(outs, want):
            if w:
                out["ref_top5_ids"], out["ref_top5_lp"] = ref_ids, ref_lp
                out["cand_top5_ids"], out["cand_top5_lp"] = _detail_arrays(n)
    if n == 0:
        return outs
    shapes = [_width(ref, c) for c in cands]
    fulls = [full for _, full in shapes]
    # The narrowest budget keeps every side's block within BLOCK_BYTES.
    cuts = blocks(pairs, min(block_rows_for(w, full) for w, full in shapes))
    buffers = _Buffers()

    def block(a: int, b: int):
        """Metrics (and detail entries) of pairs [a, b) for every candidate, on a worker."""
        x, xi, sides = _read_group(ref, cands, kind, pairs, a, b, buffers)
        ref_entries, results = None, []
        for full, w, (y, yi) in zip(fulls, want, sides):
            if full:
                got = metrics.full_block(x, y, eps, kernel, top_ids=w)
            else:
                got = metrics.topn_block(metrics.Side(x, xi), metrics.Side(y, yi), eps)
            entries = None
            if w:
                # Full rows: the kernel's own top ids, so details cost no second pass.
                top_r, top_c = (got.pop(key, None) for key in metrics.TOP_IDS)
                if ref_entries is None:  # once per block for the group
                    ref_entries = _top_entries(x, xi, got["nan_ref"] > 0, top_r)
                entries = _top_entries(y, yi, got["nan_cand"] > 0, top_c)
            results.append((got, entries))
        return ref_entries, results

    workers = max(1, min(available_cores(), len(cuts)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="parity-diff") as pool:
        ahead = deque(pool.submit(block, a, b) for a, b in cuts[: workers * IN_FLIGHT_PER_WORKER])
        for i, (a, b) in enumerate(cuts):
            ref_entries, results = ahead.popleft().result()
            more = i + len(ahead) + 1
            if more < len(cuts):
                ahead.append(pool.submit(block, *cuts[more]))
            if ref_entries is not None:
                ref_ids[a:b], ref_lp[a:b] = ref_entries
            for out, (got, entries) in zip(outs, results):
                if entries is not None:
                    out["cand_top5_ids"][a:b], out["cand_top5_lp"][a:b] = entries
                for k, v in got.items():
                    out[k][a:b] = v
                tick(b - a)
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
    details: bool = False,
) -> Report:
    """Compares two stores position by position; see the package docstring.

    ``kernel``: "fused" (C) or "numpy" for full-vocabulary rows; default from
    PARITY_DIFF_KERNEL, else the C kernel when it was built.

    ``baseline``: a store of accepted numerics (e.g. the same request in
    bfloat16, or on the hf device), compared with the reference in the same
    pass; the report's ``floor`` then sets the candidate beside it.
    ``max_floor_ratio``: fail when the candidate's generated KL p99 is more
    than this many times the baseline's (see ``floor.ratio``).

    ``details``: also keep both sides' top-5 ids and logprobs per position in
    ``report.positions`` (and, with ``decode``, the texts of every id they and
    the tokens use in ``report.token_texts``) for the HTML report's hover. Off
    by default: it costs a top-5 selection per row and 40 bytes a position.
    """
    max_floor_ratio = _check_floor_ratio(max_floor_ratio, baseline)
    opts = dict(thresholds=thresholds, eps=eps, top_n_rule=top_n_rule, worst=worst, decode=decode,
                progress=progress, kernel=kernel)
    t0 = time.perf_counter()
    if baseline is None:
        report = _compare(reference, [candidate], [None], details=[details], **opts)[0]
    else:
        # The baseline only feeds the floor's summary: no details for it.
        report, base = _compare(reference, [candidate, baseline], [None, "baseline"], details=[details, False],
                                **opts)
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
    details: bool | Sequence[bool] = False,
) -> list[Report]:
    """One Report per candidate, as ``diff(reference, candidate)`` gives it.

    Candidates whose row pairs of a kind use the same reference rows (all
    recorded on the reference's forced trajectory, say) share one streaming
    pass: each reference block is read once and compared with every one of
    them. ``progress`` counts row pairs over all candidates. ``details``: as
    for ``diff``, for every candidate, or one flag per candidate (a baseline
    that only feeds the floor needs none).
    """
    if isinstance(candidates, (str, Path, Store)):
        raise UsageError("compare() takes a list of candidate stores; diff() compares one")
    candidates = list(candidates)
    labels = [None] if len(candidates) == 1 else [f"candidate {i + 1}" for i in range(len(candidates))]
    t0 = time.perf_counter()
    reports = _compare(reference, candidates, labels, thresholds=thresholds, eps=eps, top_n_rule=top_n_rule,
                       worst=worst, decode=decode, progress=progress, kernel=kernel,
                       details=_flags(details, len(candidates)))
    log.info("compare done in %.2fs: verdicts %s", time.perf_counter() - t0, ", ".join(r.verdict for r in reports))
    return reports


def _flags(details: bool | Sequence[bool], n: int) -> list[bool]:
    if isinstance(details, (bool, np.bool_)):
        return [bool(details)] * n
    flags = [bool(d) for d in details]
    if len(flags) != n:
        raise UsageError(f"details: {len(flags)} flags for {n} candidates")
    return flags


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
             kernel: str | None, details: list[bool]) -> list[Report]:
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
            outs = compare_group(ref, [cands[i] for i in group], kind, [pairs[i] for i in group], eps, tick, kernel,
                                 details=[details[i] for i in group])
            for i, out in zip(group, outs):
                positions[i][kind] = out
    texts = _Texts(decode)
    reports = [
        _report(ref, cand, plan, warnings, pos, thresholds=thresholds, eps=eps, top_n_rule=top_n_rule,
                worst=worst, decode=decode)
        for cand, (warnings, plan), pos in zip(cands, checked, positions)
    ]
    for report, want in zip(reports, details):
        if want and decode is not None:
            report.token_texts = texts.of(report.positions)
    return reports


class _Texts:
    """Decoded texts of the ids the details use, each id decoded once over all reports."""

    def __init__(self, decode: Decode | None):
        self.decode = decode
        self.cache: dict[int, str | None] = {}
        self.failed = 0

    def of(self, positions: dict[str, dict[str, np.ndarray]]) -> dict[int, str]:
        parts = []
        for pos in positions.values():
            parts.append(pos["token"].ravel())
            parts += [pos[k].ravel() for k in ("ref_top5_ids", "cand_top5_ids") if k in pos]
        ids = np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
        out = {}
        for t in ids[ids >= 0].tolist():
            if t not in self.cache:
                self.cache[t] = self._one(t)
            if self.cache[t] is not None:
                out[t] = self.cache[t]
        return out

    def _one(self, token: int) -> str | None:
        try:
            return str(self.decode(token))
        except Exception as e:  # a user's decoder must not sink the report; one warning, not one per id
            self.failed += 1
            if self.failed == 1:
                log.warning("decode(%d) failed: %s (the HTML report shows ids where decoding fails)", token, e)
            return None


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

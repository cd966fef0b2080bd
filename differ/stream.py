"""Stage 1 of a diff: stream the paired rows of a reference and its candidates
block by block and compute the per-position metrics (``metrics.FIELDS``).

Blocks of both stores are read, decoded and compared on a pool of workers;
results are gathered in order into one array per metric and candidate, for
``assemble`` to summarise.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import numpy as np

from parity.schemas import Store
from parity.schemas.layout import row_array_names
from parity.schemas.streamcheck import Checks
from parity.schemas.verify import available_cores

from . import metrics
from .plan import KINDS, Pairs, Plan, blocks

log = logging.getLogger("parity")

# Raw float32 bytes per side per block. Small on purpose: a block's rows are
# decoded and compared while they are still in the CPU's cache, and each
# worker keeps its own buffers (peak RSS stays flat in the store's size).
BLOCK_BYTES = 2 << 20
MAX_BLOCK_ROWS = 256
MAX_TOPN_BLOCK_ROWS = 2048
# With details=True: each side's top entries per position, kept for the HTML
# report's hover (positions x 20 numbers: 40 bytes a position).
DETAIL_TOP = 5
DETAIL_FIELDS = ("ref_top5_ids", "ref_top5_lp", "cand_top5_ids", "cand_top5_lp")

# Every worker reads, decodes and compares whole blocks (Blosc, the pread and
# the C kernel release the GIL), one worker per core; results are taken in
# order, at most this many blocks per worker in flight.
IN_FLIGHT_PER_WORKER = 2
Progress = Callable[[int, int], None]
# Per candidate: row kind -> metric name -> one value per compared position.
Positions = dict[str, dict[str, np.ndarray]]


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
                  details: bool | Sequence[bool] = False, checks: Checks | None = None) -> list[dict[str, np.ndarray]]:
    """Per-position metrics of one row kind for candidates whose pairs share
    the reference rows: each reference block is read once for all of them.

    ``details`` (one flag, or one per candidate): also keep both sides' top
    ``DETAIL_TOP`` ids and logprobs per position (``DETAIL_FIELDS``), taken
    from the blocks already in memory; the reference's arrays are one object
    shared by the candidates of the group.
    """
    n = len(pairs[0])
    outs = [metrics.empty(n, flips=True) for _ in cands]
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

    values, id_name = row_array_names(kind)
    if checks is not None:  # every row read here is checked against its digest
        for store in (ref, *cands):
            store.skip_row_crcs([n for n in (values, id_name) if n in store.manifest.arrays])

    def feeds(a: int, x, xi, sides) -> list:
        """What the block read, for the digest checks: each side's rows and ids at their first row."""
        out = [(checks.of(ref, values), int(pairs[0].ref[a]), x)]
        if xi is not None:
            out.append((checks.of(ref, id_name), int(pairs[0].ref[a]), xi))
        for cand, p, (y, yi) in zip(cands, pairs, sides):
            out.append((checks.of(cand, values), int(p.cand[a]), y))
            if yi is not None:
                out.append((checks.of(cand, id_name), int(p.cand[a]), yi))
        return out

    def block(i: int, a: int, b: int):
        try:
            return _block(i, a, b)
        except BaseException:
            if checks is not None:  # the blocks after this one must not wait for its turn
                checks.abort()
            raise

    def _block(i: int, a: int, b: int):
        """Metrics (and detail entries) of pairs [a, b) for every candidate, on a worker."""
        x, xi, sides = _read_group(ref, cands, kind, pairs, a, b, buffers)
        ref_entries, results = None, []
        for full, w, (y, yi) in zip(fulls, want, sides):
            if full:
                got = metrics.full_block(x, y, eps, kernel, top_ids=w)
            else:
                got = metrics.topn_block(metrics.Side(x, xi), metrics.Side(y, yi), eps)
            got.update(metrics.flips(metrics.Side(x, xi), got))
            entries = None
            if w:
                # Full rows: the kernel's own top ids, so details cost no second pass.
                top_r, top_c = (got.pop(key, None) for key in metrics.TOP_IDS)
                if ref_entries is None:  # once per block for the group
                    ref_entries = _top_entries(x, xi, got["nan_ref"] > 0, top_r)
                entries = _top_entries(y, yi, got["nan_cand"] > 0, top_c)
            results.append((got, entries))
        if checks is not None:  # after the metrics: block i's hashing overlaps block i+1's decoding
            checks.feed_in_turn(i, feeds(a, x, xi, sides))
        return ref_entries, results

    if checks is not None:
        checks.reset_turns()
    workers = max(1, min(available_cores(), len(cuts)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="parity-diff") as pool:
        ahead = deque(pool.submit(block, j, a, b) for j, (a, b) in enumerate(cuts[: workers * IN_FLIGHT_PER_WORKER]))
        for i, (a, b) in enumerate(cuts):
            ref_entries, results = ahead.popleft().result()
            more = i + len(ahead) + 1
            if more < len(cuts):
                ahead.append(pool.submit(block, more, *cuts[more]))
            if ref_entries is not None:
                ref_ids[a:b], ref_lp[a:b] = ref_entries
            for out, (got, entries) in zip(outs, results):
                if entries is not None:
                    out["cand_top5_ids"][a:b], out["cand_top5_lp"][a:b] = entries
                for k, v in got.items():
                    out[k][a:b] = v
                tick(b - a)
    return outs


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


def stream(ref: Store, cands: Sequence[Store], plans: Sequence[Plan], *, eps: float, kernel: str,
           details: Sequence[bool], progress: Progress | None = None, check: bool = True) -> list[Positions]:
    """Per candidate, the per-position metrics of every row kind its plan pairs.

    Candidates pairing the same reference rows share a pass (``compare_group``);
    ``progress(done, total)`` counts row pairs over all candidates. ``check``:
    re-derive the digests of every row array read, in the same pass, and
    raise StoreCorruptError before returning on any mismatch (``schemas.streamcheck``).
    """
    checks = Checks() if check else None
    total = sum(plan.total_rows for plan in plans)
    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(done, total)

    if progress is not None:
        progress(0, total)
    positions: list[Positions] = [{} for _ in cands]
    for kind in KINDS:
        pairs = [plan.pairs[kind] for plan in plans]
        for n, group in enumerate(_groups(pairs)):
            if n and len(pairs[group[0]]):
                log.debug("%s rows: %d of %d candidates pair other reference rows; reading the reference again",
                          kind, len(group), len(cands))
            outs = compare_group(ref, [cands[i] for i in group], kind, [pairs[i] for i in group], eps, tick, kernel,
                                 details=[details[i] for i in group], checks=checks)
            for i, out in zip(group, outs):
                positions[i][kind] = out
    if checks is not None:
        checks.finish()
    return positions

"""Verifying a store: every digest re-derived from the rows on disk, in parallel.

``Store.verify`` is the entry point; it passes the store's own reads and
block layout, so this module needs nothing of the reader but those.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np

from parity.errors import StoreCorruptError

from .digest import ArrayHasher, hash_array, rows_digest
from .layout import CHUNK_ROWS, SHARE_SUFFIX, STORE_SUFFIX, kind_of, store_name
from .manifest import ArrayInfo, Manifest

# verify decodes blocks of about this many raw bytes on up to VERIFY_THREADS
# threads (one per core), this many blocks ahead of the hashing; peak memory
# is a few blocks per thread, whatever the store.
VERIFY_BLOCK_BYTES = 8 << 20
VERIFY_AHEAD = 2
VERIFY_THREADS = 4

# read(array name, rows, out) -> rows, decoded into ``out`` when given
Read = Callable[[str, slice, np.ndarray | None], np.ndarray]
# blocks(row kind) -> (start row, row count) of every sequence's block
Blocks = Callable[[str], tuple[np.ndarray, list[int]]]


def verify_store(manifest: Manifest, path: Path, read: Read, blocks: Blocks) -> Manifest:
    """Re-derives every array digest and the content digest and request key.

    Rows are decoded on a helper thread a few blocks ahead of the hashing
    (both release the GIL), into a ring of reused buffers.
    """
    for name, info in manifest.arrays.items():
        dtype = np.dtype(info.dtype)
        if len(info.shape) == 2:
            starts, counts = blocks(kind_of(name))
            width = info.shape[1]
            hashers = [ArrayHasher(dtype) for _ in counts]
            spans = [(s, int(a), int(a) + n) for s, (a, n) in enumerate(zip(starts, counts))]
            for s, rows in _stream(read, name, info, spans, width * dtype.itemsize):
                hashers[s].update(rows)
            digests = [h.hexdigest((n, width)) for h, n in zip(hashers, counts)]
            for seq, (got, want) in enumerate(zip(digests, info.blocks or ())):
                if got != want:
                    raise StoreCorruptError(f"{path}: array {name!r}, sequence {seq}: does not match its recorded digest")
            actual = rows_digest(dtype, width, digests)
        else:
            actual = hash_array(read(name, slice(None), None))
        if actual != info.digest:
            raise StoreCorruptError(f"{path}: array {name!r} does not match its recorded digest")
    derived = replace(manifest, digest="", request_key="").with_digests()
    if derived.request_key != manifest.request_key:
        raise StoreCorruptError(f"{path}: request key does not match the manifest's request")
    if derived.digest != manifest.digest:
        raise StoreCorruptError(f"{path}: content digest does not match the manifest")
    if path.name.endswith((STORE_SUFFIX, SHARE_SUFFIX)) and path.name != store_name(derived.digest, manifest.share):
        raise StoreCorruptError(f"{path}: directory name does not match the content digest {derived.digest}")
    return derived


def _stream(read: Read, name: str, info: ArrayInfo, spans: list[tuple[int, int, int]], row_bytes: int):
    """(tag, rows) for every piece of each (tag, start, stop) span, in order.

    The rows are read in blocks of about VERIFY_BLOCK_BYTES cut on chunk
    boundaries across touching spans: a chunk holding the end of one
    sequence and the start of the next is decoded once, not once per
    side (the readers' partial-chunk cache is per thread, and two
    threads would each decode it). Blocks are decoded ahead on helper
    threads into a ring of reused buffers: a yielded array is
    overwritten once the consumer asks for a few more, so use it (hash
    it) before moving on.
    """
    step = max(VERIFY_BLOCK_BYTES // max(row_bytes, 1) // CHUNK_ROWS * CHUNK_ROWS, CHUNK_ROWS)
    runs: list[list[int]] = []  # [start, stop] of spans that touch
    for _, a, b in spans:
        if b <= a:
            continue
        if runs and runs[-1][1] == a:
            runs[-1][1] = b
        else:
            runs.append([a, b])
    cuts = [(r, min((r // step + 1) * step, b)) for a, b in runs for r in [a, *range((a // step + 1) * step, b, step)]]
    if not cuts:
        return
    threads = max(1, min(available_cores(), VERIFY_THREADS, len(cuts)))
    ahead_n = max(VERIFY_AHEAD, threads)
    ring = [np.empty((min(step, max(b - a for a, b in cuts)), *info.shape[1:]), np.dtype(info.dtype))
            for _ in range(ahead_n + 1)]

    def read_cut(i: int) -> np.ndarray:
        a, b = cuts[i]
        return read(name, slice(a, b), ring[i % len(ring)][: b - a])

    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="parity-verify-read") as pool:
        ahead = deque(pool.submit(read_cut, i) for i in range(min(ahead_n, len(cuts))))

        def decoded():
            for i, (a, b) in enumerate(cuts):
                rows = ahead.popleft().result()
                if i + ahead_n < len(cuts):
                    ahead.append(pool.submit(read_cut, i + ahead_n))
                yield a, b, rows

        # Cuts follow the spans' order and cover each exactly once.
        blocks = decoded()
        a = b = 0
        for tag, lo, hi in spans:
            while lo < hi:
                if not a <= lo < b:
                    a, b, rows = next(blocks)
                stop = min(hi, b)
                yield tag, rows[lo - a : stop - a]
                lo = stop


def available_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1

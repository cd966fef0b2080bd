"""Writing parity stores (Zarr v3 groups; the contract is SPEC.md).

Writing streams rows into sharded, compressed, crc32c-checked arrays from a
background thread, under a temporary directory that is renamed into place
only when everything (arrays, manifest, digests) is complete.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import uuid
from collections import OrderedDict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import zarr
from zarr.storage import LocalStore

from parity.errors import OutputNotWritableError, ParityError, StoreCorruptError

from .digest import BlockHashers, hash_array, rows_digest
from .layout import (
    ATTR_KEY,
    CHUNK_ROWS,
    ROW_KINDS,
    TMP_PREFIX,
    VECTOR_CHUNK,
    kind_of,
    row_array_names,
    row_codecs,
    shard_rows_for,
    store_name,
    vector_codecs,
)
from .manifest import BLOCK_DIGESTS_FROM, ArrayInfo, Manifest
from .shards import _ShardFiles

log = logging.getLogger("parity")


class _RowStream:
    """Row array writer. Two layouts (SPEC.md, "Arrays"):

    packed: rows appended as they come, sequence blocks back to back; for
        sequences recorded one at a time. Interleaved arrival is repaired by
        a reorder pass at commit.
    aligned: each sequence owns a region of ``reserve[s]`` rows rounded up to
        whole shards, so interleaved sequences (batched decoding) write their
        own shards directly; memory is one shard buffer per active sequence.
    """

    def __init__(self, group, name, width, dtype, pool, reserve: list[int] | None = None, lanes: int = 1,
                 dims: tuple[str, str] | None = None, direct_io: bool = True):
        self.name = name
        # A values array and its top-N ids array share their axes.
        self.dims = dims or (f"{name}_row", "vocab")
        self.width = width
        self.dtype = np.dtype(dtype)
        self.group = group
        self.pool = pool
        self.aligned = reserve is not None
        target = shard_rows_for(width, self.dtype.itemsize)
        if self.aligned:
            # The shard budget is shared by the sequences decoded together.
            target = max((target // max(lanes, 1)) // CHUNK_ROWS * CHUNK_ROWS, CHUNK_ROWS)
            longest = max(reserve, default=0)
            target = min(target, max(-(-longest // CHUNK_ROWS) * CHUNK_ROWS, CHUNK_ROWS))
        self.shard_rows = target
        starts, total = [], 0
        for n in reserve or []:
            starts.append(total)
            total += -(-n // self.shard_rows) * self.shard_rows
        self.region_starts = starts
        self.array = group.create_array(
            name,
            shape=(total if self.aligned else 0, width),
            dtype=self.dtype,
            chunks=(CHUNK_ROWS, width),
            shards=(self.shard_rows, width),
            fill_value=0,
            config={"write_empty_chunks": True},
            # Named axes (SPEC.md, "Arrays"): what xarray needs to open the store.
            dimension_names=self.dims,
            **row_codecs(),
        )
        self.direct_io = direct_io
        self.files = _ShardFiles(self.array, Path(group.store.root), direct_io)
        self.hashers = BlockHashers(self.dtype)
        self.counts: dict[int, int] = {}
        self.pending: list[Future] = []
        # Sequences decoded together fill their shards in the same step: room
        # for all of them keeps the engine's thread from waiting on the writer
        # every time (the shard budget is already divided among the lanes).
        self.max_pending = max(2, lanes + 1) if self.aligned else 2
        self.written_rows = 0
        # Shard buffers come back from the writer for reuse: a fresh 16-64 MiB
        # buffer per shard costs a page fault per 4 KiB on the engine's thread.
        self.spare: deque[np.ndarray] = deque()
        # packed layout state
        self.buffer = self._new_buffer()
        self.tags = np.empty(self.shard_rows, dtype=np.int32)
        self.filled = 0
        self.flushed = 0
        self.arrival: list[np.ndarray] = []
        # aligned layout state: seq -> (buffer, first absolute row of buffer, rows filled)
        self.lanes: dict[int, list] = {}

    # -- appending ----------------------------------------------------------
    def append(self, seq: int, rows: np.ndarray) -> None:
        rows = np.asarray(rows, dtype=self.dtype)
        if rows.ndim == 1:
            rows = rows[None, :]
        if rows.shape[1] != self.width:
            raise ValueError(f"{self.name}: row width {rows.shape[1]} != {self.width}")
        done = self.counts.get(seq, 0)
        self.counts[seq] = done + rows.shape[0]
        if self.aligned:
            self._append_aligned(seq, done, rows)
        else:
            self._append_packed(seq, rows)

    def _append_packed(self, seq: int, rows: np.ndarray) -> None:
        self.arrival.append(np.full(rows.shape[0], seq, dtype=np.int32))
        start = 0
        while start < rows.shape[0]:
            take = min(self.shard_rows - self.filled, rows.shape[0] - start)
            self.buffer[self.filled : self.filled + take] = rows[start : start + take]
            self.tags[self.filled : self.filled + take] = seq
            self.filled += take
            start += take
            if self.filled == self.shard_rows:
                self._flush_packed()

    def _flush_packed(self) -> None:
        if self.filled == 0:
            return
        block, tags, n = self.buffer, self.tags, self.filled
        begin = self.flushed
        self.flushed += n
        self.filled = 0
        self.buffer = self._new_buffer()
        self.tags = np.empty_like(self.tags)
        self._submit(n, self._write_packed, begin, block, n, tags[:n])

    def _new_buffer(self) -> np.ndarray:
        try:
            return self.spare.pop()
        except IndexError:
            return np.empty((self.shard_rows, self.width), dtype=self.dtype)

    def _write_packed(self, begin: int, buf: np.ndarray, n: int, tags: np.ndarray) -> None:
        self.array.resize((begin + n, self.width))
        self.files.write(begin, buf[:n], self.shard_rows)
        self.hashers.update_tagged(tags, buf[:n])
        self.spare.append(buf)

    def _append_aligned(self, seq: int, done: int, rows: np.ndarray) -> None:
        if seq >= len(self.region_starts):
            raise ValueError(f"{self.name}: sequence {seq} has no reserved region")
        region = self.region_starts[seq]
        limit = (self.region_starts[seq + 1] if seq + 1 < len(self.region_starts) else self.array.shape[0]) - region
        if done + rows.shape[0] > limit:
            raise ValueError(f"{self.name}: sequence {seq} exceeds its reserved rows")
        start = 0
        while start < rows.shape[0]:
            lane = self.lanes.get(seq)
            if lane is None:
                absolute = region + done + start
                lane = self.lanes[seq] = [self._new_buffer(), absolute, 0]
            buf, first, filled = lane
            room = self.shard_rows - (first % self.shard_rows) - filled
            take = min(room, rows.shape[0] - start)
            buf[filled : filled + take] = rows[start : start + take]
            lane[2] = filled + take
            start += take
            if lane[2] + (first % self.shard_rows) == self.shard_rows:
                self.finish(seq)

    def finish(self, seq: int) -> None:
        """Writes out what a sequence has buffered (aligned layout)."""
        lane = self.lanes.pop(seq, None)
        if lane is None or lane[2] == 0:
            return
        buf, first, filled = lane
        self._submit(filled, self._write_aligned, seq, first, buf, filled)

    def _write_aligned(self, seq: int, first: int, buf: np.ndarray, n: int) -> None:
        self.files.write(first, buf[:n], self.shard_rows)
        self.hashers.update(seq, buf[:n])
        self.spare.append(buf)

    def _submit(self, rows: int, fn, *args) -> None:
        # Bounded writes in flight per array: bounded memory, overlapped I/O.
        while len(self.pending) >= self.max_pending:
            self.pending.pop(0).result()
        self.written_rows += rows
        self.pending.append(self.pool.submit(fn, *args))

    def _drain(self) -> None:
        while self.pending:
            self.pending.pop(0).result()

    # -- closing ------------------------------------------------------------
    def close(self, num_seqs: int) -> tuple[np.ndarray, list[int]]:
        """Flushes everything; returns (start row of each sequence block, rows per sequence)."""
        counts = [self.counts.get(s, 0) for s in range(num_seqs)]
        if self.aligned:
            for seq in list(self.lanes):
                self.finish(seq)
            self._drain()
            starts = np.array(self.region_starts[:num_seqs], dtype=np.int64)
            return starts, counts
        self._flush_packed()
        self._drain()
        tags = np.concatenate(self.arrival) if self.arrival else np.zeros(0, np.int32)
        if len(tags) and np.any(np.diff(tags) < 0):
            self._reorder(tags)
        starts = np.zeros(num_seqs, dtype=np.int64)
        starts[1:] = np.cumsum(counts)[:-1] if num_seqs else []
        return starts, counts

    def block_digests(self, counts: list[int]) -> list[str]:
        return self.hashers.block_digests(counts, self.width)

    def _reorder(self, tags: np.ndarray) -> None:
        """Rewrites an interleaved packed array in sequence order, in bounded memory."""
        root = Path(self.group.store.root)
        staging = f"{self.name}.staging"
        os.replace(root / self.name, root / staging)
        src = zarr.open_array(store=LocalStore(root), path=staging, mode="r")
        dst = _RowStream(self.group, self.name, self.width, self.dtype, self.pool, dims=self.dims,
                         direct_io=self.direct_io)
        order = np.argsort(tags, kind="stable")
        cache: OrderedDict[int, np.ndarray] = OrderedDict()
        for start in range(0, len(order), dst.shard_rows):
            idx = order[start : start + dst.shard_rows]
            block = np.empty((len(idx), self.width), dtype=self.dtype)
            for i, row in enumerate(idx):
                chunk = int(row) // CHUNK_ROWS
                if chunk not in cache:
                    cache[chunk] = src[chunk * CHUNK_ROWS : (chunk + 1) * CHUNK_ROWS]
                    if len(cache) > 64:
                        cache.popitem(last=False)
                block[i] = cache[chunk][int(row) % CHUNK_ROWS]
            for seq in np.unique(tags[idx]):
                dst.append(int(seq), block[tags[idx] == seq])
        dst._flush_packed()
        dst._drain()
        shutil.rmtree(root / staging)
        self.array, self.hashers = dst.array, dst.hashers

    def bytes_written(self) -> int:
        return self.written_rows * self.width * self.dtype.itemsize


class StoreWriter:
    """Builds one store. Use as a context manager; ``commit`` publishes it.

    ``reserve`` (rows per sequence, per row kind: the most each sequence can
    produce) selects the aligned layout, for batched decoding where rows of
    several sequences interleave. Without it rows are packed; interleaved
    arrival is then repaired at commit by a reorder pass.

    ``direct_io`` False writes shard files through the page cache instead of
    with O_DIRECT (``directio.py``). It is an argument because the format
    layer reads no settings: the recorder passes ``PARITY_DIRECT_IO``'s.
    """

    def __init__(self, out_dir: Path | str, *, vocab_size: int, topn: int | None = None,
                 reserve: dict[str, list[int]] | None = None, lanes: int = 1, direct_io: bool = True):
        self.out_dir = Path(out_dir).expanduser()
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.tmp = self.out_dir / f"{TMP_PREFIX}{uuid.uuid4().hex[:12]}"
            self.tmp.mkdir()
        except OSError as e:
            raise OutputNotWritableError(f"cannot write to {self.out_dir}: {e.strerror or e}") from None
        self.vocab_size = vocab_size
        self.topn = topn
        self.group = zarr.open_group(store=LocalStore(self.tmp), mode="w", zarr_format=3)
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="parity-writer")
        width = topn if topn else vocab_size
        column = "rank" if topn else "vocab"
        self.streams: dict[str, _RowStream] = {}
        for kind in ROW_KINDS:
            values, ids = row_array_names(kind)
            kind_reserve = reserve.get(kind) if reserve else None
            dims = (f"{values}_row", column)
            self.streams[values] = _RowStream(self.group, values, width, np.float32, self.pool, kind_reserve, lanes,
                                              dims, direct_io)
            if topn:
                self.streams[ids] = _RowStream(self.group, ids, width, np.int32, self.pool, kind_reserve, lanes,
                                               dims, direct_io)
        self.lock = threading.Lock()
        self.committed: Path | None = None

    # -- rows -------------------------------------------------------------
    def append_rows(self, kind: str, seq: int, values: np.ndarray, ids: np.ndarray | None = None) -> None:
        name_values, name_ids = row_array_names(kind)
        with self.lock:
            self.streams[name_values].append(seq, values)
            if self.topn:
                if ids is None:
                    raise ValueError("top-N rows need their token ids")
                self.streams[name_ids].append(seq, ids)

    def finish_sequence(self, seq: int, kind: str | None = None) -> None:
        """A sequence will get no more rows (of ``kind``, or of any kind): write out and release its buffers.

        Aligned layout only. Call it once the sequence has really ended: rows
        appended afterwards start a new buffer in the middle of a shard, which
        zarr then merges into the shard already written (a read-modify-write).
        """
        names = set(row_array_names(kind)) if kind is not None else None
        with self.lock:
            for name, stream in self.streams.items():
                if stream.aligned and (names is None or name in names):
                    stream.finish(seq)

    def bytes_written(self) -> int:
        return sum(s.bytes_written() for s in self.streams.values())

    # -- publish ----------------------------------------------------------
    def commit(self, manifest: Manifest, token_ids: list[list[int]]) -> tuple[Path, Manifest]:
        """Writes vectors and the manifest, verifies counts, renames into place."""
        seqs = manifest.sequences
        if len(token_ids) != len(seqs):
            raise ValueError("one token list per sequence is required")
        arrays: dict[str, ArrayInfo] = {}
        expected = {kind: np.array(manifest.row_counts(kind), dtype=np.int64) for kind in ROW_KINDS}
        for name, stream in self.streams.items():
            starts, counts = stream.close(len(seqs))
            kind = kind_of(name)
            if not np.array_equal(np.array(counts, dtype=np.int64), expected[kind]):
                raise StoreCorruptError(
                    f"{name}: captured {counts} rows per sequence, expected {expected[kind].tolist()}",
                    hint="the engine did not report every position; rerun with PARITY_DEBUG=1",
                )
            blocks = stream.block_digests(counts)
            arrays[name] = ArrayInfo(stream.dtype.str, tuple(stream.array.shape),
                                     rows_digest(stream.dtype, stream.width, blocks),
                                     tuple(blocks) if manifest.schema_version >= BLOCK_DIGESTS_FROM else None)
            if not name.endswith("_ids"):
                starts_name = f"{name}_starts"
                self._write_vector(starts_name, starts, "sequence")
                arrays[starts_name] = ArrayInfo(starts.dtype.str, starts.shape, hash_array(starts))

        flat = np.array([t for seq in token_ids for t in seq], dtype=np.int32)
        offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(t) for t in token_ids])
        for s, toks in zip(seqs, token_ids):
            if len(toks) != s.prompt_len + s.generated_len:
                raise ValueError(f"sequence {s.index}: {len(toks)} tokens, manifest says prompt+generated")
        for name, values, dim in (("token_ids", flat, "token"), ("token_offsets", offsets, "sequence_boundary")):
            self._write_vector(name, values, dim)
            arrays[name] = ArrayInfo(values.dtype.str, values.shape, hash_array(values))

        manifest = replace(manifest, arrays=arrays).with_digests()
        self.group.attrs.put({ATTR_KEY: manifest.to_dict()})
        self.pool.shutdown(wait=True)

        final = self.out_dir / store_name(manifest.digest, manifest.share)
        if final.exists():
            existing = _committed_manifest(final)
            if existing is None or existing.digest != manifest.digest:
                raise OutputNotWritableError(f"{final} already exists")
            # The same content recorded again (digests leave out when and where): keep the
            # store that is there, which may carry a floor, and drop this copy.
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.committed = final
            log.info("an identical store is already at %s", final)
            return final, existing
        os.replace(self.tmp, final)
        self.committed = final
        log.info("store committed: %s", final)
        return final, manifest

    def _write_vector(self, name: str, values: np.ndarray, dim: str) -> None:
        arr = self.group.create_array(
            name,
            shape=values.shape,
            dtype=values.dtype,
            chunks=(min(VECTOR_CHUNK, max(len(values), 1)),),
            fill_value=0,
            config={"write_empty_chunks": True},
            dimension_names=(dim,),
            **vector_codecs(),
        )
        if len(values):
            arr[:] = values

    def abort(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.committed is None:
            self.abort()


def _committed_manifest(path: Path) -> Manifest | None:
    """The manifest of the store at ``path``, or None when it is not one parity can open."""
    from .reader import Store

    try:
        return Store.open(path, partial=True).manifest
    except (ParityError, OSError):
        return None

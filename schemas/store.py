"""Reading and writing parity stores (Zarr v3 groups; the contract is SPEC.md).

Writing streams rows into sharded, compressed, crc32c-checked arrays from a
background thread, under a temporary directory that is renamed into place
only when everything (arrays, manifest, digests) is complete.
"""

from __future__ import annotations

import logging
import os
import shutil
import struct
import threading
import uuid
from collections import OrderedDict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import google_crc32c
import numpy as np
import zarr
from numcodecs import Blosc
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec
from zarr.storage import LocalStore

from parity.errors import (
    NotAStoreError,
    OutputNotWritableError,
    StoreCorruptError,
    StoreNotFoundError,
)

from parity.settings import settings

from . import directio
from .digest import ArrayHasher, canonical_json, digest_bytes, hash_array, parse_tagged
from .manifest import ArrayInfo, Manifest
from .shards import ArrayReader, Unsupported, read_metadata

log = logging.getLogger("parity")

ATTR_KEY = "parity"
STORE_SUFFIX = ".parity.zarr"
TMP_PREFIX = ".parity-tmp-"
NAME_HEX_CHARS = 24
CHUNK_ROWS = 16
SHARD_TARGET_BYTES = 64 << 20
VECTOR_CHUNK = 1 << 16
# verify decodes blocks of about this many raw bytes on up to VERIFY_THREADS
# threads (one per core), this many blocks ahead of the hashing; peak memory
# is a few blocks per thread, whatever the store.
VERIFY_BLOCK_BYTES = 8 << 20
VERIFY_AHEAD = 2
VERIFY_THREADS = 4

# Generated rows and prompt rows live in separate arrays (SPEC.md, "Arrays").
GENERATED = "generated"
PROMPT = "prompt"
ROW_KINDS = (GENERATED, PROMPT)


def row_array_names(kind: str) -> tuple[str, str]:
    """(values array, top-N ids array) for a row kind."""
    base = "logprobs" if kind == GENERATED else "prompt_logprobs"
    return base, f"{base}_ids"


def kind_of(name: str) -> str:
    """The row kind a row array (values or ids) belongs to."""
    return PROMPT if name.startswith(row_array_names(PROMPT)[0]) else GENERATED


def store_name(digest: str) -> str:
    return parse_tagged(digest)[:NAME_HEX_CHARS] + STORE_SUFFIX


# Row arrays: LZ4 after byte shuffle. The shuffle groups the float32 exponent
# bytes, which is where log-prob rows compress; on captured rows LZ4 stores
# 3.01 bytes/logit against zstd-1's 2.93, but encodes 6x and decodes 15x
# faster, and the writer shares the CPU with the engine it records.
ROW_BLOSC = {"cname": "lz4", "clevel": 5, "shuffle": "shuffle"}


def _row_codecs():
    # crc32c last: corruption is caught before decode.
    return dict(
        serializer=BytesCodec(endian="little"),
        compressors=[BloscCodec(typesize=4, **ROW_BLOSC), Crc32cCodec()],
    )


def _vector_codecs():
    return dict(
        serializer=BytesCodec(endian="little"),
        compressors=[BloscCodec(cname="zstd", clevel=3, shuffle="shuffle", typesize=4), Crc32cCodec()],
    )


def shard_rows_for(width: int, itemsize: int = 4) -> int:
    rows = max(SHARD_TARGET_BYTES // max(width * itemsize, 1), CHUNK_ROWS)
    return (rows // CHUNK_ROWS) * CHUNK_ROWS


class _BlockHashers:
    """One streaming hasher per sequence block; combined into the array digest."""

    def __init__(self, dtype: np.dtype):
        self.dtype = dtype
        self.blocks: dict[int, ArrayHasher] = {}

    def update(self, seq: int, rows: np.ndarray) -> None:
        if seq not in self.blocks:
            self.blocks[seq] = ArrayHasher(self.dtype)
        self.blocks[seq].update(rows)

    def update_tagged(self, tags: np.ndarray, rows: np.ndarray) -> None:
        cuts = np.flatnonzero(np.diff(tags)) + 1
        for a, b in zip([0, *cuts.tolist()], [*cuts.tolist(), len(tags)]):
            self.update(int(tags[a]), rows[a:b])

    def digest(self, counts: list[int], width: int) -> str:
        return rows_digest(
            self.dtype,
            width,
            [(self.blocks[s].hexdigest((n, width)) if s in self.blocks else _empty_block(self.dtype, width))
             for s, n in enumerate(counts)],
        )


def _empty_block(dtype, width: int) -> str:
    return ArrayHasher(dtype).hexdigest((0, width))


def rows_digest(dtype, width: int, block_digests: list[str]) -> str:
    """Digest of a row array: its dtype, width and each sequence block's digest, in order."""
    body = canonical_json({"dtype": np.dtype(dtype).newbyteorder("<").str, "width": width, "blocks": block_digests})
    return digest_bytes(body, b"parity.rows/1\n")


_EMPTY_CHUNK = np.uint64(2**64 - 1)


def _crc32c(data: bytes) -> bytes:
    return struct.pack("<I", google_crc32c.value(data))


class _ShardFiles:
    """Writes whole shards of a row array straight to their files.

    The bytes are exactly what zarr's sharding codec writes for this array's
    metadata (SPEC.md, "Chunking"): each inner chunk as little-endian bytes,
    Blosc, crc32c; then the chunk index (uint64 offset and length per chunk,
    2**64-1 for a chunk never written) and its crc32c. Going around zarr's
    per-chunk async pipeline makes a shard 3x cheaper to write, and the
    writer shares the CPU with the engine. Anything but a block starting on
    a shard boundary goes through zarr.
    """

    def __init__(self, array, root: Path):
        self.array = array
        self.dir = root / array.path
        shuffle = {"noshuffle": Blosc.NOSHUFFLE, "shuffle": Blosc.SHUFFLE, "bitshuffle": Blosc.BITSHUFFLE}
        self.blosc = Blosc(cname=ROW_BLOSC["cname"], clevel=ROW_BLOSC["clevel"], shuffle=shuffle[ROW_BLOSC["shuffle"]])
        # None until the first shard says whether the file system takes O_DIRECT (schemas/directio.py).
        self.direct: bool | None = None if settings().direct_io else False

    def write(self, first: int, block: np.ndarray, shard_rows: int) -> None:
        if first % shard_rows or block.shape[0] > shard_rows or block.dtype.byteorder == ">":
            self.array[first : first + block.shape[0]] = block
            return
        chunks = shard_rows // CHUNK_ROWS
        index = np.full((chunks, 1, 2), _EMPTY_CHUNK, dtype="<u8")
        parts, offset = [], 0
        for k, a in enumerate(range(0, block.shape[0], CHUNK_ROWS)):
            chunk = block[a : a + CHUNK_ROWS]
            if chunk.shape[0] < CHUNK_ROWS:  # stored whole, padded with the fill value
                chunk = np.concatenate([chunk, np.zeros((CHUNK_ROWS - chunk.shape[0], chunk.shape[1]), chunk.dtype)])
            body = self.blosc.encode(np.ascontiguousarray(chunk))
            parts += [body, _crc32c(body)]
            index[k, 0] = (offset, len(body) + 4)
            offset += len(body) + 4
        raw = index.tobytes()
        parts += [raw, _crc32c(raw)]
        path = self.dir / self.array.metadata.encode_chunk_key((first // shard_rows, 0))
        path.parent.mkdir(parents=True, exist_ok=True)
        if self.direct is not False:
            used = directio.write_direct(path, parts)
            if self.direct is None:
                log.debug("%s: shards written %s", self.dir, "with O_DIRECT" if used else "through the page cache")
            self.direct = used
            if used:
                return
        directio.write_buffered(path, parts)


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
                 dims: tuple[str, str] | None = None):
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
            **_row_codecs(),
        )
        self.files = _ShardFiles(self.array, Path(group.store.root))
        self.hashers = _BlockHashers(self.dtype)
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

    def digest(self, counts: list[int]) -> str:
        return self.hashers.digest(counts, self.width)

    def _reorder(self, tags: np.ndarray) -> None:
        """Rewrites an interleaved packed array in sequence order, in bounded memory."""
        root = Path(self.group.store.root)
        staging = f"{self.name}.staging"
        os.replace(root / self.name, root / staging)
        src = zarr.open_array(store=LocalStore(root), path=staging, mode="r")
        dst = _RowStream(self.group, self.name, self.width, self.dtype, self.pool, dims=self.dims)
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
    """

    def __init__(self, out_dir: Path | str, *, vocab_size: int, topn: int | None = None,
                 reserve: dict[str, list[int]] | None = None, lanes: int = 1):
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
                                              dims)
            if topn:
                self.streams[ids] = _RowStream(self.group, ids, width, np.int32, self.pool, kind_reserve, lanes,
                                               dims)
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
            arrays[name] = ArrayInfo(stream.dtype.str, tuple(stream.array.shape), stream.digest(counts))
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

        final = self.out_dir / store_name(manifest.digest)
        if final.exists():
            raise OutputNotWritableError(f"{final} already exists")
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
            **_vector_codecs(),
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


def _open_group(path: Path) -> zarr.Group:
    try:
        return zarr.open_group(store=LocalStore(path, read_only=True), mode="r")
    except Exception as e:  # zarr raises several types for unreadable metadata
        raise NotAStoreError(f"{path} is not a readable Zarr group: {e}") from None


def _node_metadata(node: Path, node_type: str) -> dict | None:
    """A Zarr v3 group's or array's zarr.json; None when zarr has to say."""
    try:
        meta = read_metadata(node)
    except Unsupported:
        return None
    return meta if meta.get("zarr_format") == 3 and meta.get("node_type") == node_type else None


def _group_attributes(path: Path) -> dict | None:
    """A plain Zarr v3 group's attributes from its zarr.json; None for anything else."""
    meta = _node_metadata(path, "group")
    if meta is None:
        return None
    attrs = meta.get("attributes", {})
    return attrs if isinstance(attrs, dict) else None


def _array_shape(path: Path, name: str) -> tuple[int, ...] | None:
    """A Zarr v3 array's shape from its zarr.json; None when zarr has to say."""
    meta = _node_metadata(path / name, "array")
    if meta is None:
        return None
    shape = meta.get("shape")
    if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
        return None
    return tuple(shape)


class Store:
    """A committed store, opened read-only and validated.

    Arrays are read by the shard reader (``schemas/shards.py``) when their
    metadata is what it knows, else through zarr; ``PARITY_FAST_READ=0``
    sends every read through zarr.
    """

    def __init__(self, path: Path, group: zarr.Group | None, manifest: Manifest):
        self.path = path
        self._group = group
        self.manifest = manifest
        self._fast = settings().fast_read
        self._readers: dict[str, ArrayReader | None] = {}
        self._arrays: dict[str, zarr.Array] = {}
        self._block_cache: dict[str, tuple[np.ndarray, list[int]]] = {}
        self._offsets = np.asarray(self._read("token_offsets", slice(None)), dtype=np.int64)

    @classmethod
    def open(cls, path: Path | str) -> "Store":
        path = Path(path).expanduser()
        if not path.exists():
            raise StoreNotFoundError(f"no store at {path}")
        if not (path / "zarr.json").is_file():
            raise NotAStoreError(f"{path} is not a parity store (no zarr.json)")
        # The group's and arrays' zarr.json read directly when the fast reader
        # is on (zarr's open costs ~12 ms a store in event-loop round trips);
        # anything that is not a plain v3 group goes through zarr.
        group = None
        attrs = _group_attributes(path) if settings().fast_read else None
        if attrs is None:
            group = _open_group(path)
            attrs = dict(group.attrs)
        manifest = Manifest.parse(attrs.get(ATTR_KEY))
        for name, info in manifest.arrays.items():
            shape = _array_shape(path, name) if group is None else None
            if shape is None:
                if group is None:
                    group = _open_group(path)
                if name not in group:
                    raise StoreCorruptError(f"{path}: array {name!r} is missing")
                shape = tuple(group[name].shape)
            if shape != tuple(info.shape):
                raise StoreCorruptError(f"{path}: array {name!r} has shape {shape}, manifest says {info.shape}")
        store = cls(path, group, manifest)
        store.check_complete()
        return store

    @property
    def group(self) -> zarr.Group:
        """The store's zarr group, opened on first use (the fast reader does not need it)."""
        if self._group is None:
            self._group = _open_group(self.path)
        return self._group

    # -- structure --------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.manifest.vocab_size

    @property
    def full_vocab(self) -> bool:
        return self.manifest.request.full_vocab

    def check_complete(self) -> None:
        """Every chunk (or shard) file that holds data is on disk.

        Chunks missing inside a shard that is there are found when read: the
        shard reader refuses to return fill values for rows of a block.
        """
        for name, info in self.manifest.arrays.items():
            if not info.shape or info.shape[0] == 0:
                continue
            reader = self._reader(name)
            if reader is not None:
                per_file = reader.rows_per_file
            else:
                arr = self._array(name)
                per_file = arr.shards[0] if arr.shards else arr.chunks[0]
            if len(info.shape) == 2:
                starts, counts = self._blocks(kind_of(name))
                needed = sorted({i for a, n in zip(starts, counts) if n
                                 for i in range(int(a) // per_file, (int(a) + n - 1) // per_file + 1)})
                files = [self.path / name / "c" / str(i) / "0" for i in needed]
            else:
                files = [self.path / name / "c" / str(i) for i in range(-(-info.shape[0] // per_file))]
            missing = [f for f in files if not f.is_file()]
            if missing:
                raise StoreCorruptError(
                    f"{self.path}: array {name!r} is missing {len(missing)} of {len(files)} chunk files (truncated store)")

    def _blocks(self, kind: str) -> tuple[np.ndarray, list[int]]:
        """(start row, row count) of every sequence's block in a row array."""
        if kind not in self._block_cache:
            values, _ = row_array_names(kind)
            m = self.manifest
            counts = m.row_counts(kind)
            starts_name = f"{values}_starts"
            if starts_name in m.arrays:
                starts = np.asarray(self._read(starts_name, slice(None)), dtype=np.int64)
            else:
                raise StoreCorruptError(f"{self.path}: array {starts_name!r} is missing")
            self._block_cache[kind] = (starts, counts)
        return self._block_cache[kind]

    def tokens(self, seq: int) -> np.ndarray:
        a, b = self._offsets[seq], self._offsets[seq + 1]
        return self._read("token_ids", slice(int(a), int(b)))

    def row_offsets(self, kind: str) -> np.ndarray:
        """Start row of each sequence's block, then the end of the last block (S + 1 values).

        Sequence ``s`` owns rows ``[offsets[s], offsets[s] + its row count)``; in
        the aligned layout (batched recordings) blocks are separated by padding.
        """
        starts, counts = self._blocks(kind)
        end = int(starts[-1]) + counts[-1] if len(counts) else 0
        return np.append(starts, np.int64(end))

    def row_positions(self, kind: str) -> tuple[np.ndarray, np.ndarray]:
        """(sequence index, token position predicted) for every row of a kind."""
        seqs, positions = [], []
        for s, n in zip(self.manifest.sequences, self.manifest.row_counts(kind)):
            first = s.prompt_len if kind == GENERATED else 1
            seqs.append(np.full(n, s.index, np.int32))
            positions.append(np.arange(first, first + n, dtype=np.int32))
        cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0, np.int32)  # noqa: E731
        return cat(seqs), cat(positions)

    def rows(self, kind: str, start: int = 0, stop: int | None = None, ids: bool = False,
             out: np.ndarray | None = None) -> np.ndarray:
        """Rows [start, stop) of a row array (the ids array with ``ids``).

        ``out``: a C-contiguous array of exactly the rows' shape and dtype to
        decode into (a caller streaming blocks reuses a few buffers instead of
        faulting in fresh pages for every block); it is returned.
        """
        values, id_name = row_array_names(kind)
        name = id_name if ids else values
        if name not in self.manifest.arrays:
            raise KeyError(f"store has no {name} array")
        return self._read(name, slice(start, stop), out)

    def sequence_rows(self, kind: str, seq: int, ids: bool = False) -> np.ndarray:
        starts, counts = self._blocks(kind)
        return self.rows(kind, int(starts[seq]), int(starts[seq]) + counts[seq], ids=ids)

    def _read(self, name: str, sl: slice, out: np.ndarray | None = None) -> np.ndarray:
        if out is not None:
            self._check_out(name, sl, out)
        try:
            reader = self._reader(name)
            if reader is not None:
                start, stop, step = sl.indices(reader.shape[0])
                if step == 1:
                    return reader.read(start, stop, out)
            values = np.asarray(self._array(name)[sl])
            if out is None:
                return values
            out[...] = values
            return out
        except Exception as e:  # checksum failures and undecodable chunks surface here
            raise StoreCorruptError(f"{self.path}: cannot read {name}: {type(e).__name__}: {e}") from None

    def _check_out(self, name: str, sl: slice, out: np.ndarray) -> None:
        info = self.manifest.arrays[name]
        start, stop, step = sl.indices(info.shape[0])
        shape = (len(range(start, stop, step)), *info.shape[1:])
        if out.shape != shape or out.dtype != np.dtype(info.dtype) or not out.flags.c_contiguous:
            raise ValueError(f"out must be a C-contiguous {np.dtype(info.dtype)} array of shape {shape}, "
                             f"got {out.dtype} {out.shape}")

    def _array(self, name: str) -> zarr.Array:
        array = self._arrays.get(name)
        if array is None:  # opening reads and parses the array's metadata
            array = self._arrays[name] = self.group[name]
        return array

    def _reader(self, name: str) -> ArrayReader | None:
        """The shard reader of an array, or None when zarr reads it."""
        if name in self._readers:
            return self._readers[name]
        reader = None
        if self._fast:
            # Row arrays have padding (rows outside every block) that may
            # never have been written; every entry of a 1-D array is data.
            required = self._holds_data(kind_of(name)) if name in self._row_arrays() else (lambda a, b: True)
            try:
                reader = ArrayReader.open(self.path / name, required)
            except Unsupported as e:
                log.debug("%s: zarr reads %s (%s)", self.path, name, e)
            else:
                info = self.manifest.arrays.get(name)
                if info is not None and (reader.shape != tuple(info.shape) or reader.dtype != np.dtype(info.dtype)):
                    log.debug("%s: zarr reads %s (metadata disagrees with the manifest)", self.path, name)
                    reader = None
        self._readers[name] = reader
        return reader

    def _row_arrays(self) -> set[str]:
        return {n for kind in ROW_KINDS for n in row_array_names(kind)}

    def _holds_data(self, kind: str):
        """Whether rows [a, b) of a row array overlap a sequence's block (else they are padding)."""
        def holds(a: int, b: int) -> bool:
            starts, counts = self._blocks(kind)
            starts = np.asarray(starts, np.int64)
            ends = starts + np.asarray(counts, np.int64)
            return bool(np.any((starts < b) & (ends > a) & (ends > starts)))
        return holds

    def _stream(self, name: str, spans: list[tuple[int, int, int]], row_bytes: int):
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
        info = self.manifest.arrays[name]
        ring = [np.empty((min(step, max(b - a for a, b in cuts)), *info.shape[1:]), np.dtype(info.dtype))
                for _ in range(ahead_n + 1)]

        def read(i: int) -> np.ndarray:
            a, b = cuts[i]
            return self._read(name, slice(a, b), ring[i % len(ring)][: b - a])

        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="parity-verify-read") as pool:
            ahead = deque(pool.submit(read, i) for i in range(min(ahead_n, len(cuts))))

            def decoded():
                for i, (a, b) in enumerate(cuts):
                    rows = ahead.popleft().result()
                    if i + ahead_n < len(cuts):
                        ahead.append(pool.submit(read, i + ahead_n))
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

    # -- verification -----------------------------------------------------
    def verify(self) -> Manifest:
        """Re-derives every array digest and the content digest and request key.

        Rows are decoded on a helper thread a few blocks ahead of the hashing
        (both release the GIL), into a ring of reused buffers.
        """
        for name, info in self.manifest.arrays.items():
            dtype = np.dtype(info.dtype)
            if len(info.shape) == 2:
                starts, counts = self._blocks(kind_of(name))
                width = info.shape[1]
                hashers = [ArrayHasher(dtype) for _ in counts]
                spans = [(s, int(a), int(a) + n) for s, (a, n) in enumerate(zip(starts, counts))]
                for s, rows in self._stream(name, spans, width * dtype.itemsize):
                    hashers[s].update(rows)
                blocks = [h.hexdigest((n, width)) for h, n in zip(hashers, counts)]
                actual = rows_digest(dtype, width, blocks)
            else:
                actual = hash_array(self._read(name, slice(None)))
            if actual != info.digest:
                raise StoreCorruptError(f"{self.path}: array {name!r} does not match its recorded digest")
        derived = replace(self.manifest, digest="", request_key="").with_digests()
        if derived.request_key != self.manifest.request_key:
            raise StoreCorruptError(f"{self.path}: request key does not match the manifest's request")
        if derived.digest != self.manifest.digest:
            raise StoreCorruptError(f"{self.path}: content digest does not match the manifest")
        if self.path.name.endswith(STORE_SUFFIX) and self.path.name != store_name(derived.digest):
            raise StoreCorruptError(f"{self.path}: directory name does not match the content digest {derived.digest}")
        return derived


def available_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def open_store(path: Path | str) -> Store:
    return Store.open(path)


def stores_in(paths: "list[Path | str] | Path | str") -> list[Path]:
    """Store directories named by ``paths``: each a store, or a directory holding stores.

    A directory is searched one level deep; hidden entries (the recorder's
    temporary stores among them) are never taken.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    found: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if (path / "zarr.json").is_file():
            found.append(path)
        elif path.is_dir():
            inner = sorted(p for p in path.iterdir()
                           if not p.name.startswith(".") and (p / "zarr.json").is_file())
            if not inner:
                raise StoreNotFoundError(f"no stores in {path}")
            found += inner
        elif path.exists():
            raise NotAStoreError(f"{path} is not a parity store or a directory of stores")
        else:
            raise StoreNotFoundError(f"no store at {path}")
    seen: set[Path] = set()
    return [p for p in found if not (p.resolve() in seen or seen.add(p.resolve()))]


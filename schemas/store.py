"""Reading and writing parity stores (Zarr v3 groups; the contract is SPEC.md).

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
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import numpy as np
import zarr
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec
from zarr.storage import LocalStore

from parity.errors import (
    NotAStoreError,
    OutputNotWritableError,
    StoreCorruptError,
    StoreNotFoundError,
)

from .digest import ArrayHasher, hash_array, parse_tagged
from .manifest import ArrayInfo, Manifest, SequenceInfo

log = logging.getLogger("parity")

ATTR_KEY = "parity"
STORE_SUFFIX = ".parity.zarr"
TMP_PREFIX = ".parity-tmp-"
NAME_HEX_CHARS = 24
CHUNK_ROWS = 16
SHARD_TARGET_BYTES = 64 << 20
VECTOR_CHUNK = 1 << 16

# Generated rows and prompt rows live in separate arrays (SPEC.md, "Arrays").
GENERATED = "generated"
PROMPT = "prompt"
ROW_KINDS = (GENERATED, PROMPT)


def row_array_names(kind: str) -> tuple[str, str]:
    """(values array, top-N ids array) for a row kind."""
    base = "logprobs" if kind == GENERATED else "prompt_logprobs"
    return base, f"{base}_ids"


def store_name(digest: str) -> str:
    return parse_tagged(digest)[:NAME_HEX_CHARS] + STORE_SUFFIX


def _row_codecs():
    # Byte shuffle groups the float32 exponent bytes together, which is where
    # logprob rows compress; crc32c last so corruption is caught before decode.
    return dict(
        serializer=BytesCodec(endian="little"),
        compressors=[BloscCodec(cname="zstd", clevel=3, shuffle="shuffle", typesize=4), Crc32cCodec()],
    )


def _vector_codecs():
    return dict(
        serializer=BytesCodec(endian="little"),
        compressors=[BloscCodec(cname="zstd", clevel=3, shuffle="shuffle", typesize=4), Crc32cCodec()],
    )


def shard_rows_for(width: int, itemsize: int = 4) -> int:
    rows = max(SHARD_TARGET_BYTES // max(width * itemsize, 1), CHUNK_ROWS)
    return (rows // CHUNK_ROWS) * CHUNK_ROWS


class _RowStream:
    """Appends 2-D rows to one array through a bounded double buffer."""

    def __init__(self, group: zarr.Group, name: str, width: int, dtype, pool: ThreadPoolExecutor):
        self.name = name
        self.width = width
        self.dtype = np.dtype(dtype)
        self.shard_rows = shard_rows_for(width, self.dtype.itemsize)
        self.array = group.create_array(
            name,
            shape=(0, width),
            dtype=self.dtype,
            chunks=(CHUNK_ROWS, width),
            shards=(self.shard_rows, width),
            fill_value=0,
            config={"write_empty_chunks": True},
            **_row_codecs(),
        )
        self.pool = pool
        self.buffer = np.empty((self.shard_rows, width), dtype=self.dtype)
        self.filled = 0
        self.flushed = 0
        self.seq_tags: list[np.ndarray] = []
        self.hasher = ArrayHasher(self.dtype)
        self.pending: Future | None = None

    def append(self, seq: int, rows: np.ndarray) -> None:
        rows = np.asarray(rows, dtype=self.dtype)
        if rows.ndim == 1:
            rows = rows[None, :]
        if rows.shape[1] != self.width:
            raise ValueError(f"{self.name}: row width {rows.shape[1]} != {self.width}")
        self.seq_tags.append(np.full(rows.shape[0], seq, dtype=np.int32))
        start = 0
        while start < rows.shape[0]:
            take = min(self.shard_rows - self.filled, rows.shape[0] - start)
            self.buffer[self.filled : self.filled + take] = rows[start : start + take]
            self.filled += take
            start += take
            if self.filled == self.shard_rows:
                self._flush()

    def _flush(self) -> None:
        if self.filled == 0:
            return
        block, self.filled = self.buffer[: self.filled], 0
        self._wait()
        begin = self.flushed
        self.flushed += block.shape[0]
        self.pending = self.pool.submit(self._write, begin, block)
        # The worker owns `block` now; fill a fresh buffer meanwhile.
        self.buffer = np.empty_like(self.buffer)

    def _write(self, begin: int, block: np.ndarray) -> None:
        self.array.resize((begin + block.shape[0], self.width))
        self.array[begin : begin + block.shape[0]] = block
        self.hasher.update(block)

    def _wait(self) -> None:
        if self.pending is not None:
            self.pending.result()
            self.pending = None

    def close(self) -> np.ndarray:
        """Flush everything; returns the sequence tag of every stored row."""
        self._flush()
        self._wait()
        return np.concatenate(self.seq_tags) if self.seq_tags else np.zeros(0, np.int32)

    def bytes_written(self) -> int:
        return self.flushed * self.width * self.dtype.itemsize


class StoreWriter:
    """Builds one store. Use as a context manager; ``commit`` publishes it.

    Rows may arrive interleaved across sequences (batched decoding); if they
    do, ``commit`` reorders them by sequence with bounded memory.
    """

    def __init__(self, out_dir: Path | str, *, vocab_size: int, topn: int | None = None):
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
        self.streams: dict[str, _RowStream] = {}
        for kind in ROW_KINDS:
            values, ids = row_array_names(kind)
            self.streams[values] = _RowStream(self.group, values, width, np.float32, self.pool)
            if topn:
                self.streams[ids] = _RowStream(self.group, ids, width, np.int32, self.pool)
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

    def bytes_written(self) -> int:
        return sum(s.bytes_written() for s in self.streams.values())

    # -- publish ----------------------------------------------------------
    def commit(self, manifest: Manifest, token_ids: list[list[int]]) -> tuple[Path, Manifest]:
        """Writes vectors and the manifest, verifies counts, renames into place."""
        seqs = manifest.sequences
        if len(token_ids) != len(seqs):
            raise ValueError("one token list per sequence is required")
        arrays: dict[str, ArrayInfo] = {}
        expected = {
            GENERATED: np.array([s.generated_len for s in seqs], dtype=np.int64),
            PROMPT: np.array(
                [max(s.prompt_len - 1, 0) if manifest.request.prompt_logprobs else 0 for s in seqs],
                dtype=np.int64,
            ),
        }
        for name, stream in self.streams.items():
            tags = stream.close()
            kind = GENERATED if name.startswith("logprobs") else PROMPT
            counts = np.bincount(tags, minlength=len(seqs)) if len(tags) else np.zeros(len(seqs), np.int64)
            if len(counts) != len(seqs) or not np.array_equal(counts, expected[kind]):
                raise StoreCorruptError(
                    f"{name}: captured {counts.tolist()} rows per sequence, expected {expected[kind].tolist()}",
                    hint="the engine did not report every position; rerun with PARITY_DEBUG=1",
                )
            if len(tags) and np.any(np.diff(tags) < 0):
                digest = self._reorder(stream, tags)
            else:
                digest = stream.hasher.hexdigest((len(tags), stream.width))
            arrays[name] = ArrayInfo(stream.dtype.str, (len(tags), stream.width), digest)

        flat = np.array([t for seq in token_ids for t in seq], dtype=np.int32)
        offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(t) for t in token_ids])
        for s, toks in zip(seqs, token_ids):
            if len(toks) != s.prompt_len + s.generated_len:
                raise ValueError(f"sequence {s.index}: {len(toks)} tokens, manifest says prompt+generated")
        for name, values in (("token_ids", flat), ("token_offsets", offsets)):
            self._write_vector(name, values)
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

    def _write_vector(self, name: str, values: np.ndarray) -> None:
        arr = self.group.create_array(
            name,
            shape=values.shape,
            dtype=values.dtype,
            chunks=(min(VECTOR_CHUNK, max(len(values), 1)),),
            fill_value=0,
            config={"write_empty_chunks": True},
            **_vector_codecs(),
        )
        if len(values):
            arr[:] = values

    def _reorder(self, stream: _RowStream, tags: np.ndarray) -> str:
        """Rewrites an interleaved row array in sequence order; returns its digest."""
        staging = f"{stream.name}.staging"
        os.replace(self.tmp / stream.name, self.tmp / staging)
        src = zarr.open_array(store=LocalStore(self.tmp), path=staging, mode="r")
        dst = _RowStream(self.group, stream.name, stream.width, stream.dtype, self.pool)
        order = np.argsort(tags, kind="stable")
        cache: OrderedDict[int, np.ndarray] = OrderedDict()
        for start in range(0, len(order), dst.shard_rows):
            idx = order[start : start + dst.shard_rows]
            block = np.empty((len(idx), stream.width), dtype=stream.dtype)
            for i, row in enumerate(idx):
                chunk = int(row) // CHUNK_ROWS
                if chunk not in cache:
                    cache[chunk] = src[chunk * CHUNK_ROWS : (chunk + 1) * CHUNK_ROWS]
                    if len(cache) > 64:
                        cache.popitem(last=False)
                block[i] = cache[chunk][int(row) % CHUNK_ROWS]
            dst.append(0, block)
        dst.close()
        shutil.rmtree(self.tmp / staging)
        return dst.hasher.hexdigest((len(tags), stream.width))

    def abort(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.committed is None:
            self.abort()


class Store:
    """A committed store, opened read-only and validated."""

    def __init__(self, path: Path, group: zarr.Group, manifest: Manifest):
        self.path = path
        self.group = group
        self.manifest = manifest
        self._offsets = np.asarray(group["token_offsets"][:], dtype=np.int64)

    @classmethod
    def open(cls, path: Path | str) -> "Store":
        path = Path(path).expanduser()
        if not path.exists():
            raise StoreNotFoundError(f"no store at {path}")
        if not (path / "zarr.json").is_file():
            raise NotAStoreError(f"{path} is not a parity store (no zarr.json)")
        try:
            group = zarr.open_group(store=LocalStore(path, read_only=True), mode="r")
            attrs = dict(group.attrs)
        except Exception as e:  # zarr raises several types for unreadable metadata
            raise NotAStoreError(f"{path} is not a readable Zarr group: {e}") from None
        manifest = Manifest.parse(attrs.get(ATTR_KEY))
        for name, info in manifest.arrays.items():
            if name not in group:
                raise StoreCorruptError(f"{path}: array {name!r} is missing")
            if tuple(group[name].shape) != tuple(info.shape):
                raise StoreCorruptError(f"{path}: array {name!r} has shape {group[name].shape}, manifest says {info.shape}")
        store = cls(path, group, manifest)
        store.check_complete()
        return store

    # -- structure --------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.manifest.vocab_size

    @property
    def full_vocab(self) -> bool:
        return self.manifest.request.full_vocab

    def check_complete(self) -> None:
        """Every chunk (or shard) file the arrays need is on disk."""
        for name, info in self.manifest.arrays.items():
            arr = self.group[name]
            if not info.shape or info.shape[0] == 0:
                continue
            per_file = arr.shards[0] if arr.shards else arr.chunks[0]
            need = -(-info.shape[0] // per_file)
            folder = self.path / name / "c"
            have = sum(1 for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0
            if have < need:
                raise StoreCorruptError(f"{self.path}: array {name!r} has {have} of {need} chunk files (truncated store)")

    def tokens(self, seq: int) -> np.ndarray:
        a, b = self._offsets[seq], self._offsets[seq + 1]
        return self._read("token_ids", slice(int(a), int(b)))

    def row_offsets(self, kind: str) -> np.ndarray:
        counts = [
            s.generated_len if kind == GENERATED else (max(s.prompt_len - 1, 0) if self.manifest.request.prompt_logprobs else 0)
            for s in self.manifest.sequences
        ]
        out = np.zeros(len(counts) + 1, dtype=np.int64)
        out[1:] = np.cumsum(counts)
        return out

    def row_positions(self, kind: str) -> tuple[np.ndarray, np.ndarray]:
        """(sequence index, token position predicted) for every row of a kind."""
        seqs, positions = [], []
        for s in self.manifest.sequences:
            if kind == GENERATED:
                n, first = s.generated_len, s.prompt_len
            else:
                n = max(s.prompt_len - 1, 0) if self.manifest.request.prompt_logprobs else 0
                first = 1
            seqs.append(np.full(n, s.index, np.int32))
            positions.append(np.arange(first, first + n, dtype=np.int32))
        cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0, np.int32)  # noqa: E731
        return cat(seqs), cat(positions)

    def rows(self, kind: str, start: int = 0, stop: int | None = None, ids: bool = False) -> np.ndarray:
        values, id_name = row_array_names(kind)
        name = id_name if ids else values
        if name not in self.group:
            raise KeyError(f"store has no {name} array")
        return self._read(name, slice(start, stop))

    def sequence_rows(self, kind: str, seq: int, ids: bool = False) -> np.ndarray:
        off = self.row_offsets(kind)
        return self.rows(kind, int(off[seq]), int(off[seq + 1]), ids=ids)

    def iter_row_blocks(self, kind: str, block_rows: int | None = None, ids: bool = False) -> Iterator[tuple[int, np.ndarray]]:
        values, id_name = row_array_names(kind)
        arr = self.group[id_name if ids else values]
        total = arr.shape[0]
        step = block_rows or CHUNK_ROWS * 8
        for start in range(0, total, step):
            yield start, self._read(arr.basename, slice(start, min(start + step, total)))

    def _read(self, name: str, sl: slice) -> np.ndarray:
        try:
            return np.asarray(self.group[name][sl])
        except Exception as e:  # checksum failures and undecodable chunks surface here
            raise StoreCorruptError(f"{self.path}: cannot read {name}: {type(e).__name__}: {e}") from None

    # -- verification -----------------------------------------------------
    def verify(self) -> Manifest:
        """Re-derives every array digest and the content digest and request key."""
        for name, info in self.manifest.arrays.items():
            arr = self.group[name]
            hasher = ArrayHasher(np.dtype(info.dtype))
            step = (arr.shards or arr.chunks)[0]
            for start in range(0, arr.shape[0], step):
                hasher.update(self._read(name, slice(start, start + step)))
            if hasher.hexdigest(tuple(info.shape)) != info.digest:
                raise StoreCorruptError(f"{self.path}: array {name!r} does not match its recorded digest")
        derived = replace(self.manifest, digest="", request_key="").with_digests()
        if derived.request_key != self.manifest.request_key:
            raise StoreCorruptError(f"{self.path}: request key does not match the manifest's request")
        if derived.digest != self.manifest.digest:
            raise StoreCorruptError(f"{self.path}: content digest does not match the manifest")
        if self.path.name.endswith(STORE_SUFFIX) and self.path.name != store_name(derived.digest):
            raise StoreCorruptError(f"{self.path}: directory name does not match the content digest {derived.digest}")
        return derived


def open_store(path: Path | str) -> Store:
    return Store.open(path)


def sequence_info(index: int, prompt_len: int, generated_len: int, **kw) -> SequenceInfo:
    return SequenceInfo(index=index, prompt_len=prompt_len, generated_len=generated_len, **kw)

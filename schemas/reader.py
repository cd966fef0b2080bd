"""Reading parity stores (Zarr v3 groups; the contract is SPEC.md).

Opening validates the manifest against the arrays on disk; rows are read by
the shard reader (``shards.py``) where it knows the metadata, else by zarr.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import zarr
from zarr.storage import LocalStore

from parity.errors import NotAStoreError, StoreCorruptError, StoreNotFoundError

from .layout import ATTR_KEY, GENERATED, ROW_KINDS, kind_of, row_array_names
from .manifest import Manifest
from .shards import ArrayReader, Unsupported, read_metadata
from .verify import verify_store

log = logging.getLogger("parity")


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
    metadata is what it knows, else through zarr; ``fast_read=False`` sends
    every read through zarr. It is an argument because the format layer
    reads no settings: the commands pass ``PARITY_FAST_READ``'s.
    """

    def __init__(self, path: Path, group: zarr.Group | None, manifest: Manifest, fast_read: bool = True):
        self.path = path
        self._group = group
        self.manifest = manifest
        self._fast = fast_read
        self._readers: dict[str, ArrayReader | None] = {}
        self._arrays: dict[str, zarr.Array] = {}
        self._block_cache: dict[str, tuple[np.ndarray, list[int]]] = {}
        self._offsets = np.asarray(self._read("token_offsets", slice(None)), dtype=np.int64)

    @classmethod
    def open(cls, path: Path | str, fast_read: bool = True) -> "Store":
        path = Path(path).expanduser()
        if not path.exists():
            raise StoreNotFoundError(f"no store at {path}")
        if not (path / "zarr.json").is_file():
            raise NotAStoreError(f"{path} is not a parity store (no zarr.json)")
        # The group's and arrays' zarr.json read directly when the fast reader
        # is on (zarr's open costs ~12 ms a store in event-loop round trips);
        # anything that is not a plain v3 group goes through zarr.
        group = None
        attrs = _group_attributes(path) if fast_read else None
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
        store = cls(path, group, manifest, fast_read)
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

    # -- verification -----------------------------------------------------
    def verify(self) -> Manifest:
        """Re-derives every array digest and the content digest and request key (``verify.py``)."""
        return verify_store(self.manifest, self.path, self._read, self._blocks)


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


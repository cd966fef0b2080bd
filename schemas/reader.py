"""Reading parity stores (Zarr v3 groups; the contract is SPEC.md).

A store is somebody else's bytes (goldens come from Hub repos other people
write): opening one reads its metadata bounded and strictly, checks the
manifest against the arrays on disk and the small arrays' content against
the manifest, and refuses anything else with one line naming the file
(``Store.open``). Rows are read by the shard reader (``shards.py``) where it
knows the metadata, else by zarr.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import numpy as np
import zarr
from zarr.storage import LocalStore

from parity.errors import NotAStoreError, ParityError, PartialStoreError, StoreCorruptError, StoreNotFoundError

from .layout import ATTR_KEY, GENERATED, ROW_KINDS, kind_of, row_array_names
from .manifest import Manifest
from .shards import (
    ARRAY_METADATA_BYTES,
    GROUP_METADATA_BYTES,
    ArrayReader,
    BadMetadata,
    Unsupported,
    _short,
    chunk_problem,
    codec_problem,
    file_problem,
    hf_blobs,
    read_metadata,
)
from .verify import verify_store

log = logging.getLogger("parity")

# Zarr v3's names of the dtypes a store holds (SPEC.md, "Arrays").
ZARR_DTYPES = {"<f4": "float32", "<i4": "int32", "<i8": "int64"}
# Token ids read at a time when opening checks them (16 MiB).
TOKEN_STEP = 1 << 22


def _open_group(path: Path) -> zarr.Group:
    try:
        return zarr.open_group(store=LocalStore(path, read_only=True), mode="r")
    except Exception as e:  # zarr raises several types for unreadable metadata
        raise NotAStoreError(f"{path} is not a readable Zarr group: {type(e).__name__}: {_short(str(e), 160)}") from None


def _free_form(meta: dict) -> dict:
    """The group's metadata but the manifest's prompts and sequences, whose every element
    ``Manifest.parse`` checks (walking them for nesting too would cost a third of the parse)."""
    attrs = meta.get("attributes")
    manifest = attrs.get(ATTR_KEY) if isinstance(attrs, dict) else None
    if not isinstance(manifest, dict):
        return meta
    lean = {**manifest, "sequences": None}
    if isinstance(manifest.get("request"), dict):
        lean["request"] = {**manifest["request"], "prompts": None}
    return {**meta, "attributes": {**attrs, ATTR_KEY: lean}}


def _expected_arrays(m: Manifest) -> dict[str, tuple[str, tuple, str]]:
    """Every array a store with this manifest holds: (dtype, shape with None for any row count, why)."""
    seqs = len(m.sequences)
    tokens = sum(s.prompt_len + s.generated_len for s in m.sequences)
    full = m.request.full_vocab
    width = m.vocab_size if full else m.request.logprobs
    rows = f"rows of {width} (vocab_size)" if full else f"rows of {width} (the top-{width} of request.logprobs)"
    want = {
        "token_ids": ("<i4", (tokens,), f"the {tokens} tokens of the manifest's sequences"),
        "token_offsets": ("<i8", (seqs + 1,), f"one more than the {seqs} sequences"),
    }
    for kind in ROW_KINDS:
        values, ids = row_array_names(kind)
        want[values] = ("<f4", (None, width), rows)
        want[f"{values}_starts"] = ("<i8", (seqs,), f"one per sequence, {seqs}")
        if not full:
            want[ids] = ("<i4", (None, width), rows)
    return want


class Store:
    """A committed store, opened read-only and validated.

    Arrays are read by the shard reader (``schemas/shards.py``) when their
    metadata is what it knows, else through zarr; ``fast_read=False`` sends
    every read through zarr. It is an argument because the format layer
    reads no settings: the commands pass ``PARITY_FAST_READ``'s.
    """

    def __init__(self, path: Path, group: zarr.Group | None, manifest: Manifest, fast_read: bool = True,
                 links: str | None = None):
        self.path = path
        self._group = group
        self.manifest = manifest
        self._fast = fast_read
        self._links = links  # where a store pulled into the HF cache links its files (``shards.hf_blobs``)
        self._readers: dict[str, ArrayReader | None] = {}
        self._arrays: dict[str, zarr.Array] = {}
        self._block_cache: dict[str, tuple[np.ndarray, list[int]]] = {}
        self._offsets = np.zeros(len(manifest.sequences) + 1, np.int64)  # read by ``_validate``

    @classmethod
    def open(cls, path: Path | str, fast_read: bool = True, *, partial: bool = False) -> "Store":
        """Opens a store, refusing anything damaged or hostile with one line naming the file.

        Checked: every zarr.json (bounded size and depth, UTF-8, strict JSON,
        a regular file: never a link, but the Hugging Face cache's, never a
        FIFO); the manifest's every field; the arrays against the manifest
        (names, dtypes, shapes, codecs parity reads); every chunk file a
        sequence needs (there, a non-empty regular file; shard indexes inside
        their file, chunks not sharing bytes); token offsets, block starts and
        token ids against the manifest. Rows are not read: their content is
        the digests' business (``verify``, and the diff as it streams).

        A share of a sharded recording (a partial store) is refused unless
        ``partial``: only merging, showing and verifying take one.
        """
        path = Path(path).expanduser()
        if not path.exists():
            raise StoreNotFoundError(f"no store at {path}")
        meta_file = path / "zarr.json"
        if not path.is_dir() or not os.path.lexists(meta_file):
            raise NotAStoreError(f"{path} is not a parity store (no zarr.json)")
        links = hf_blobs(path)
        try:
            meta = read_metadata(path, GROUP_METADATA_BYTES, links, nesting=_free_form)
        except BadMetadata as e:
            raise NotAStoreError(f"{e}: not a readable Zarr group", hint=StoreCorruptError.hint) from None
        if meta.get("zarr_format") != 3 or meta.get("node_type") != "group":
            raise NotAStoreError(f"{meta_file} is not a Zarr v3 group's metadata: not a readable Zarr group")
        attrs = meta.get("attributes")
        try:
            manifest = Manifest.parse(attrs.get(ATTR_KEY) if isinstance(attrs, dict) else None)
        except ParityError as e:
            raise type(e)(f"{meta_file}: {e}", hint=e.hint) from None
        if manifest.share is not None and not partial:
            raise PartialStoreError(f"{path} is share {manifest.share} of a sharded recording "
                                    f"({len(manifest.sequences)} of its {len(manifest.request.prompts)} sequences), "
                                    "not a complete store")
        store = cls(path, None, manifest, fast_read, links)
        store._validate()
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

    # -- opening: what a store must be --------------------------------------
    def _validate(self) -> None:
        m, path = self.manifest, self.path
        want = _expected_arrays(m)
        extra = sorted(set(m.arrays) - set(want))
        if extra:
            raise StoreCorruptError(f"{path}: the manifest lists array {extra[0]!r}, which a "
                                    f"{'full-vocabulary' if m.request.full_vocab else 'top-N'} store does not hold")
        for name, (dtype, shape, why) in want.items():
            info = m.arrays.get(name)
            if info is None:
                raise StoreCorruptError(f"{path}: the manifest lists no array {name!r}")
            if info.dtype != dtype:
                raise StoreCorruptError(f"{path}: array {name!r} is {info.dtype} in the manifest, not {dtype}")
            if len(info.shape) != len(shape) or any(w is not None and w != n for n, w in zip(info.shape, shape)):
                wanted = "[" + ", ".join("N" if w is None else str(w) for w in shape) + "]"
                raise StoreCorruptError(f"{path}: array {name!r} has shape {list(info.shape)} in the manifest, "
                                        f"not {wanted} ({why})")
        for name, info in m.arrays.items():
            blocks = getattr(info, "blocks", None)  # schema 3: one digest per sequence block of a row array
            if blocks is not None and (len(info.shape) != 2 or len(blocks) != len(m.sequences)):
                raise StoreCorruptError(f"{path}: array {name!r} lists {len(blocks)} block digests in the manifest, "
                                        f"not one per sequence of a row array")
        for kind in ROW_KINDS:
            values, ids = row_array_names(kind)
            if ids in m.arrays and m.arrays[ids].shape != m.arrays[values].shape:
                raise StoreCorruptError(f"{path}: array {ids!r} has shape {list(m.arrays[ids].shape)} in the "
                                        f"manifest, not its values' {list(m.arrays[values].shape)}")
        vectors = [n for n, info in m.arrays.items() if len(info.shape) == 1]
        for name in m.arrays:
            self._open_array(name)
        for name in vectors:  # before reading them: zarr would follow a link or block on a FIFO
            self._check_files(name)
        self._offsets = self._checked_offsets()
        for kind in ROW_KINDS:
            self._check_blocks(kind)
        for name in m.arrays:
            if name not in vectors:
                self._check_files(name)
        self._check_token_ids()

    def _open_array(self, name: str) -> None:
        """Reads an array's zarr.json, checks it against the manifest, and picks its reader."""
        info, where = self.manifest.arrays[name], self.path / name
        try:
            mode = os.lstat(where).st_mode
        except FileNotFoundError:
            raise StoreCorruptError(f"{self.path}: array {name!r} is missing") from None
        except OSError as e:
            raise StoreCorruptError(f"{where} cannot be read ({e.strerror or e})") from None
        if not stat.S_ISDIR(mode):
            kind = "a symbolic link (parity follows no links inside a store)" if stat.S_ISLNK(mode) else "not a directory"
            raise StoreCorruptError(f"{where} is {kind}")
        if not os.path.lexists(where / "zarr.json"):
            raise StoreCorruptError(f"{self.path}: array {name!r} is missing (no {name}/zarr.json)")
        try:
            meta = read_metadata(where, ARRAY_METADATA_BYTES, self._links)
        except BadMetadata as e:
            raise StoreCorruptError(str(e)) from None
        meta_file = where / "zarr.json"
        if meta.get("zarr_format") != 3 or meta.get("node_type") != "array":
            raise StoreCorruptError(f"{meta_file} is not a Zarr v3 array's metadata")
        shape = meta.get("shape")
        if not isinstance(shape, list) or [type(n) for n in shape] != [int] * len(shape) \
                or tuple(shape) != tuple(info.shape):
            raise StoreCorruptError(f"{self.path}: array {name!r} has shape {_short(shape)}, manifest says "
                                    f"{list(info.shape)}")
        if meta.get("data_type") != ZARR_DTYPES[info.dtype]:
            raise StoreCorruptError(f"{self.path}: array {name!r} is {_short(meta.get('data_type'))} in its "
                                    f"zarr.json, manifest says {info.dtype} ({ZARR_DTYPES[info.dtype]})")
        problem = codec_problem(meta) or chunk_problem(meta, np.dtype(info.dtype).itemsize)
        if problem:
            raise StoreCorruptError(f"{meta_file}: {problem}")
        reader = None
        if self._fast:
            # Row arrays have padding (rows outside every block) that may
            # never have been written; every entry of a 1-D array is data.
            required = self._holds_data(kind_of(name)) if len(info.shape) == 2 else (lambda a, b: True)
            try:
                reader = ArrayReader(where, meta, required, self._links)
            except Unsupported as e:
                log.debug("%s: zarr reads %s (%s)", self.path, name, e)
        self._readers[name] = reader
        if reader is None:  # zarr's metadata parsing, its errors made one line here
            try:
                self._arrays[name] = self.group[name]
            except ParityError:
                raise
            except Exception as e:
                raise StoreCorruptError(f"{meta_file}: zarr cannot read it ({type(e).__name__}: "
                                        f"{_short(str(e), 160)})") from None

    def _checked_offsets(self) -> np.ndarray:
        """token_offsets, checked against the manifest's sequences and token_ids."""
        m, where = self.manifest, f"{self.path}: array 'token_offsets'"
        offsets = np.asarray(self._read("token_offsets", slice(None)), dtype=np.int64)
        spans = np.array([s.prompt_len + s.generated_len for s in m.sequences], np.int64)
        tokens = m.arrays["token_ids"].shape[0]
        steps = np.diff(offsets)
        if offsets[0] != 0:
            raise StoreCorruptError(f"{where} starts at {offsets[0]}, not 0")
        if np.any(steps < 0):
            s = int(np.argmax(steps < 0))
            raise StoreCorruptError(f"{where} decreases after sequence {s} ({offsets[s]}, then {offsets[s + 1]})")
        if offsets[-1] != tokens:
            raise StoreCorruptError(f"{where} ends at {offsets[-1]}, not at the {tokens} tokens of 'token_ids'")
        if np.any(steps != spans):
            s = int(np.argmax(steps != spans))
            raise StoreCorruptError(f"{where} gives sequence {s} {steps[s]} tokens, the manifest "
                                    f"{spans[s]} (prompt_len + generated_len)")
        return offsets

    def _check_blocks(self, kind: str) -> None:
        """Each sequence's block of a row array: inside the array, in sequence order, not overlapping."""
        values, _ = row_array_names(kind)
        starts, counts = self._blocks(kind)
        rows = self.manifest.arrays[values].shape[0]
        where = f"{self.path}: array '{values}_starts'"
        outside = (starts < 0) | (starts > rows)
        ends = np.where(outside, 0, starts) + np.asarray(counts, np.int64)
        outside |= ends > rows
        if np.any(outside):
            s = int(np.argmax(outside))
            raise StoreCorruptError(f"{where} puts the {counts[s]} rows of sequence {s} at row {starts[s]}, "
                                    f"outside the {rows} rows of {values!r}")
        if len(starts) > 1 and np.any(starts[1:] < ends[:-1]):
            s = int(np.argmax(starts[1:] < ends[:-1]))
            raise StoreCorruptError(f"{where}: the block of sequence {s + 1} (from row {starts[s + 1]}) overlaps or "
                                    f"precedes the block of sequence {s} (rows {starts[s]}-{ends[s] - 1})")

    def _check_token_ids(self) -> None:
        """Token ids: none negative, and inside the vocabulary wherever a row predicts them.

        (A prompt token no row predicts, the first one or any without prompt
        rows, is only an input: the synthetic stores of tests use small
        vocabularies with the default prompt.) Read in steps: a store's
        tokens may be many.
        """
        m = self.manifest
        total, vocab = m.arrays["token_ids"].shape[0], m.vocab_size
        first_row = np.array([s.prompt_len if not m.request.prompt_logprobs else min(1, s.prompt_len)
                              for s in m.sequences], np.int64)  # the first token of a sequence a row predicts
        for a in range(0, total, TOKEN_STEP):
            ids = self._read("token_ids", slice(a, min(a + TOKEN_STEP, total)))
            bad = np.flatnonzero((ids < 0) | (ids >= vocab))
            if not len(bad):
                continue
            at = a + bad
            seq = np.searchsorted(self._offsets, at, side="right") - 1
            pos = at - self._offsets[seq]
            real = (ids[bad] < 0) | (pos >= first_row[seq])
            if real.any():
                j = int(np.argmax(real))
                raise StoreCorruptError(f"{self.path}: array 'token_ids' holds token id {ids[bad[j]]} at position "
                                        f"{pos[j]} of sequence {seq[j]}, outside the vocabulary [0, {vocab})")

    def _check_files(self, name: str) -> None:
        """Every chunk (or shard) file of an array that holds data: there, a non-empty regular file.

        Only ``lstat``: no file is opened (a FIFO would block, a link to a
        device would feed the reader forever) and no shard is read (its
        index and chunks are checked when read). Files are checked in order
        and the first problem ends the check, so a store claiming more files
        than it has costs what it has.
        """
        info = self.manifest.arrays[name]
        if not info.shape or info.shape[0] == 0:
            return
        reader = self._reader(name)
        if reader is not None:
            per_file, file_path = reader.rows_per_file, reader.file_path
        else:
            arr = self._array(name)
            per_file = arr.shards[0] if arr.shards else arr.chunks[0]
            tail = (0,) * (len(info.shape) - 1)
            file_path = lambda i: self.path / name / arr.metadata.encode_chunk_key((i, *tail))
        total, files = self._files_needed(name, per_file)
        for i in files:
            f = file_path(i)
            problem = file_problem(f, self._links)
            if problem == "is missing":
                raise StoreCorruptError(f"{self.path}: array {name!r} is missing {f.relative_to(self.path)}, one of "
                                        f"the {total} chunk files it needs (truncated store)")
            if problem:
                raise StoreCorruptError(f"{f} {problem}")

    def _files_needed(self, name: str, per_file: int):
        """(how many, their indices in increasing order) of the files of an array that hold data."""
        info = self.manifest.arrays[name]
        if len(info.shape) == 1:
            n = -(-info.shape[0] // per_file)
            return n, range(n)
        starts, counts = self._blocks(kind_of(name))
        spans = sorted((int(a) // per_file, (int(a) + c - 1) // per_file) for a, c in zip(starts, counts) if c)
        total, last = 0, -1
        for lo, hi in spans:
            total += max(hi - max(lo, last + 1) + 1, 0)
            last = max(last, hi)

        def indices():
            last = -1
            for lo, hi in spans:
                yield from range(max(lo, last + 1), hi + 1)
                last = max(last, hi)
        return total, indices()

    def check_complete(self) -> None:
        """Every chunk (or shard) file that holds data is on disk, a non-empty regular file.

        Chunks missing inside a shard that is there are found when read: the
        shard reader refuses to return fill values for rows of a block.
        """
        for name in self.manifest.arrays:
            self._check_files(name)

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
        """The shard reader of an array, or None when zarr reads it (picked when the store is opened)."""
        if name not in self._readers:
            self._open_array(name)
        return self._readers[name]

    def _holds_data(self, kind: str):
        """Whether rows [a, b) of a row array overlap a sequence's block (else they are padding)."""
        def holds(a: int, b: int) -> bool:
            starts, counts = self._blocks(kind)
            starts = np.asarray(starts, np.int64)
            ends = starts + np.asarray(counts, np.int64)
            return bool(np.any((starts < b) & (ends > a) & (ends > starts)))
        return holds

    def skip_row_crcs(self, names) -> None:
        """The row arrays ``names`` are read without their chunks' crc32c:
        for a caller that re-derives the digests of every row it reads
        (``streamcheck.Checks``), which catches what the crc would."""
        for name in names:
            reader = self._reader(name)
            if reader is not None:
                reader.check_crc = False

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


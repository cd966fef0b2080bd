"""Writing and reading a store's arrays straight from their files.

``_ShardFiles`` (at the end) writes Zarr v3 ``sharding_indexed`` shards
itself; ``ArrayReader`` reads them back the same way. zarr's per-chunk pipeline (an asyncio
task, buffer wrappers and a codec dispatch for every 16-row chunk) costs more
than decoding the chunk: on full-vocabulary stores zarr took about 3x as long
as this reader to return the same rows, and the diff waited on it
(``bench/diff_throughput.py``).

What is read here, and checked:

- the array's ``zarr.json``: a regular grid chunked along rows only, the
  default chunk key encoding, and per chunk the codecs ``bytes`` (little
  endian), optionally ``blosc``, optionally ``crc32c`` last; sharded arrays
  add an index of ``bytes`` and optionally ``crc32c``, at either end. Any
  other metadata raises ``Unsupported`` and the caller reads the array
  through zarr, which stays the format's reference reader;
- each shard's index: its crc32c, that every chunk lies inside the file,
  that no two chunks share bytes, and that no chunk is longer than one
  chunk's bytes can encode to (so nothing is allocated for a lie);
- each chunk: its crc32c before anything is decoded, then that the Blosc
  header announces exactly one chunk's bytes (a header announcing gigabytes
  is refused before decoding, into a buffer of one chunk);
- the files themselves (``open_regular``): a regular file, never a link
  (but the Hugging Face cache's, ``hf_blobs``), never a FIFO or a device,
  opened without blocking.

``read_metadata`` reads a zarr.json bounded (size, nesting) and strictly
(UTF-8, JSON without NaN or infinities): a store is somebody else's bytes.

A chunk or shard that was never written reads as the fill value, as zarr
reads it, except where ``required`` says the rows hold data: a parity store
has every chunk of every sequence's block on disk (SPEC.md, "Chunking"), so a
hole there is a truncated store, never a run of zeros.

Reading, checking and decoding release the GIL (``os.preadv``,
google_crc32c's C extension and numcodecs' Blosc all run without it; the
crc32c costs about 40 us per MB of compressed bytes): a reader thread
decodes while another thread computes.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import re
import stat
import struct
import sys
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import google_crc32c
import numpy as np
from numcodecs import Blosc, blosc

from . import directio
from .layout import CHUNK_ROWS, ROW_BLOSC

log = logging.getLogger("parity")

# crc32c over a message followed by its own crc32c (little endian) is this
# constant: a chunk is checked in place, without slicing its last 4 bytes off.
CRC32C_RESIDUE = 0x48674BC7
EMPTY = 2**64 - 1
BLOSC_HEADER = 16
# Compressed bytes fetched with one read: large enough that a read is a few
# syscalls per block, small enough that the per-thread buffer stays modest.
READ_BYTES = 16 << 20
# Shard indexes kept per array (a shard of 16-row chunks of a narrow top-N
# array has an index near 1 MB).
INDEX_CACHE = 64

Required = Callable[[int, int], bool]


class Unsupported(Exception):
    """The array's metadata names something this reader does not decode."""


class CorruptArray(ValueError):
    """The files on disk disagree with the array's metadata or checksums."""


def _named(codec) -> tuple[str, dict]:
    if isinstance(codec, str):
        return codec, {}
    if isinstance(codec, dict) and isinstance(codec.get("name"), str):
        conf = codec.get("configuration") or {}
        if isinstance(conf, dict):
            return codec["name"], dict(conf)
    raise Unsupported(f"codec {_short(codec)}")


def _count(value) -> bool:
    """A JSON integer (not a bool) that counts something: rows, a chunk's length."""
    return type(value) is int and 0 <= value < 1 << 40


def _rows_shape(value, what: str) -> list[int]:
    if not isinstance(value, list) or not all(_count(n) for n in value):
        raise Unsupported(f"{what} {_short(value)}")
    return value


def _chain(codecs, itemsize: int) -> tuple[bool, bool]:
    """(blosc, crc32c) of a chunk's codec list: ``bytes`` [``blosc``] [``crc32c``]."""
    named = [_named(c) for c in codecs or []]
    if not named or named[0][0] != "bytes":
        raise Unsupported(f"codecs {[n for n, _ in named]} (expected bytes first)")
    endian = named[0][1].get("endian", "little")
    if endian != "little" and itemsize > 1:
        raise Unsupported(f"{endian}-endian bytes")
    rest = [n for n, _ in named[1:]]
    crc = bool(rest) and rest[-1] == "crc32c"
    if crc:
        rest = rest[:-1]
    if rest not in ([], ["blosc"]):
        raise Unsupported(f"codecs {[n for n, _ in named]}")
    return rest == ["blosc"], crc


def _fill(value, dtype: np.dtype):
    if isinstance(value, str):
        if value.startswith("0x"):  # the value's bit pattern, big-endian hex
            raw = bytes.fromhex(value[2:])
            if len(raw) != dtype.itemsize:
                raise Unsupported(f"fill value {value!r}")
            return np.frombuffer(raw, dtype.newbyteorder(">"))[0].astype(dtype)
        special = {"NaN": np.nan, "Infinity": np.inf, "-Infinity": -np.inf}
        if value not in special or dtype.kind != "f":
            raise Unsupported(f"fill value {value!r}")
        return dtype.type(special[value])
    if isinstance(value, (bool, int, float)):
        return dtype.type(value)
    raise Unsupported(f"fill value {value!r}")


# What parity reads of a node's zarr.json: the group's holds the manifest
# (prompts included), an array's a few hundred bytes.
GROUP_METADATA_BYTES = 64 << 20
ARRAY_METADATA_BYTES = 1 << 20
METADATA_DEPTH = 64  # nesting of JSON containers in a zarr.json
# Decoded bytes of one chunk (parity writes 16 rows: 8 MiB for a 128k vocabulary).
MAX_CHUNK_BYTES = 256 << 20
MAX_SHARD_CHUNKS = 1 << 22  # a shard index of 64 MiB
# The codecs parity reads: these (fast, below) or zarr's built-in ones (through zarr).
READABLE_CODECS = ("bytes", "blosc", "crc32c", "sharding_indexed", "zstd", "gzip", "transpose")
BLOSC_MAX_OVERHEAD = 16  # a Blosc frame is at most its input plus this


class BadFile(CorruptArray):
    """A file of a store that is not what it should be (a link, a FIFO, a directory, empty, unreadable)."""


class BadMetadata(ValueError):
    """A zarr.json that parity does not read: too large, not UTF-8, not JSON, nested too deep, not a file."""


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 and not n & ((1 << 20) - 1) else f"{n} bytes"


def _file_kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory, not a file"
    if stat.S_ISLNK(mode):
        return "a symbolic link (parity follows no links inside a store)"
    if stat.S_ISFIFO(mode):
        return "a FIFO, not a file"
    if stat.S_ISSOCK(mode):
        return "a socket, not a file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device, not a file"
    return "not a regular file"


def hf_blobs(store: Path | str) -> str | None:
    """The blobs directory of the Hugging Face cache repository a store was pulled into, else None.

    A pulled store's files are links from ``snapshots/<commit>/...`` to
    ``blobs/<hash>`` (how huggingface_hub keeps its cache): the only links
    a store may hold, and only to a regular file in that directory.
    """
    real = Path(os.path.realpath(store))
    for p in (real, *real.parents):
        if p.parent.name == "snapshots" and p.parent != p:
            blobs = p.parent.parent / "blobs"
            return os.path.realpath(blobs) if blobs.is_dir() else None
    return None


def _linked_blob(path: Path | str, links: str | None) -> str:
    """The blob a Hugging Face cache link points at; BadFile for any other link."""
    target = os.path.realpath(path) if links else ""
    if not links or os.path.dirname(target) != links:
        raise BadFile(f"{path} is {_file_kind(stat.S_IFLNK)}")
    return target


def file_problem(path: Path | str, links: str | None = None) -> str | None:
    """Why ``path`` is not a non-empty regular file ("is missing", "is a FIFO, not a file", ...), or None.

    Never opens it, so a FIFO or a device cannot block or feed the reader.
    """
    try:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            st = os.stat(_linked_blob(path, links))
    except BadFile as e:
        return str(e)[len(str(path)) + 1 :]
    except (FileNotFoundError, NotADirectoryError):
        return "is missing"
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    if not stat.S_ISREG(st.st_mode):
        return f"is {_file_kind(st.st_mode)}"
    if st.st_size == 0:
        return "is empty"
    return None


_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


def open_regular(path: Path | str, links: str | None = None) -> int:
    """A read-only descriptor of the regular file at ``path``.

    A link is never followed (but a Hugging Face cache link into ``links``,
    see ``hf_blobs``), and a FIFO or a device never blocks the open: BadFile.
    FileNotFoundError when there is no file.
    """
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as e:
        if e.errno not in (errno.ELOOP, errno.EMLINK) or not os.path.islink(path):
            if isinstance(e, (FileNotFoundError, NotADirectoryError)):
                raise FileNotFoundError(e.errno, e.strerror, str(path)) from None
            raise BadFile(f"{path} cannot be read ({e.strerror or e})") from None
        fd = os.open(_linked_blob(path, links), _OPEN_FLAGS)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise BadFile(f"{path} is {_file_kind(mode)}")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _json_depth_ok(obj, limit: int) -> bool:
    """Whether no container in ``obj`` is nested deeper than ``limit`` (no recursion)."""
    stack = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return False
        values = node.values() if type(node) is dict else node
        if set(map(type, values)) <= _SCALARS:  # a list of token ids: one C-speed pass
            continue
        stack.extend((v, depth + 1) for v in values if type(v) is dict or type(v) is list)
    return True


_SCALARS = {str, int, float, bool, type(None)}
_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")


def _not_json_constant(name: str):
    raise ValueError(f"it holds {name}")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"it holds the number {text[:40]}, which overflows a float")
    return value


def read_metadata(node: Path, limit: int = ARRAY_METADATA_BYTES, links: str | None = None,
                  nesting: Callable[[dict], object] | None = None) -> dict:
    """The JSON object in a Zarr v3 node's (group's or array's) zarr.json.

    Bounded: at most ``limit`` bytes, containers nested at most
    METADATA_DEPTH deep; strict: UTF-8, JSON without NaN or infinities, a
    regular file (``open_regular``). BadMetadata names the file and what is wrong.
    ``nesting``: the part of the object whose nesting to check, when the
    caller checks the rest field by field (the manifest's token ids).
    """
    path = Path(node) / "zarr.json"
    try:
        fd = open_regular(path, links)
    except FileNotFoundError:
        raise BadMetadata(f"{path} is missing") from None
    except BadFile as e:
        raise BadMetadata(str(e)) from None
    try:
        size = os.fstat(fd).st_size
        if size > limit:
            raise BadMetadata(f"{path} is {size} bytes, more than parity reads ({_size(limit)})")
        want = size + 1  # one more: a file that grew since fstat is refused below
        raw = os.read(fd, want) if size else b""
        while size and len(raw) < want:
            more = os.read(fd, want - len(raw))
            if not more:
                break
            raw += more
    except OSError as e:
        raise BadMetadata(f"{path} cannot be read ({e.strerror or e})") from None
    finally:
        os.close(fd)
    if len(raw) > limit:
        raise BadMetadata(f"{path} is more than parity reads ({_size(limit)})")
    if not raw:
        raise BadMetadata(f"{path} is empty")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadMetadata(f"{path} is not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start})") from None
    try:
        meta = json.loads(text, parse_constant=_not_json_constant, parse_float=_finite)
    except RecursionError:
        raise BadMetadata(f"{path} nests JSON deeper than parity reads ({METADATA_DEPTH} levels)") from None
    except json.JSONDecodeError as e:
        raise BadMetadata(f"{path} is not JSON ({e.msg}: line {e.lineno} column {e.colno})") from None
    except ValueError as e:  # NaN, infinities, integers too long to convert
        raise BadMetadata(f"{path} is not JSON ({str(e)[:120]})") from None
    if not isinstance(meta, dict):
        raise BadMetadata(f"{path} is not a JSON object")
    if not _json_depth_ok(meta if nesting is None else nesting(meta), METADATA_DEPTH):
        raise BadMetadata(f"{path} nests JSON deeper than parity reads ({METADATA_DEPTH} levels)")
    if "\\" in text and _SURROGATE.search(text):  # UTF-16 halves: legal in pairs only
        try:
            json.dumps(meta, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise BadMetadata(f"{path} holds an unpaired UTF-16 surrogate escape, which is not text") from None
    return meta


def codec_problem(meta: dict) -> str | None:
    """What in an array's codecs parity does not read (a codec it does not know, a malformed entry), or None."""
    pending = [meta.get("codecs")]
    while pending:
        codecs = pending.pop()
        if not isinstance(codecs, list) or not codecs:
            return f"codecs {_short(codecs)} are not a list of codecs"
        for codec in codecs:
            name = codec if isinstance(codec, str) else codec.get("name") if isinstance(codec, dict) else None
            if not isinstance(name, str):
                return f"codec {_short(codec)} has no name"
            if name not in READABLE_CODECS:
                return f"codec {_short(name)} is not one parity reads"
            conf = codec.get("configuration", {}) if isinstance(codec, dict) else {}
            if not isinstance(conf, dict):
                return f"codec {name!r} has a configuration that is not an object"
            if name == "sharding_indexed":
                pending += [conf.get("codecs"), conf.get("index_codecs")]
    return None


def chunk_problem(meta: dict, itemsize: int) -> str | None:
    """Whether an array's chunks (the inner ones of a shard) decode to more than parity reads, or None."""
    shape = None
    grid = meta.get("chunk_grid")
    if isinstance(grid, dict) and isinstance(grid.get("configuration"), dict):
        shape = grid["configuration"].get("chunk_shape")
    codecs = meta.get("codecs")
    first = codecs[0] if isinstance(codecs, list) and codecs else None
    if isinstance(first, dict) and first.get("name") == "sharding_indexed":
        conf = first.get("configuration")
        shape = conf.get("chunk_shape") if isinstance(conf, dict) else None
    if not isinstance(shape, list) or not shape or not all(type(n) is int and 0 < n < 1 << 40 for n in shape):
        return f"chunk shape {_short(shape)} is not a list of positive integers"
    nbytes = itemsize
    for n in shape:
        nbytes *= n
    if nbytes > MAX_CHUNK_BYTES:
        return f"chunks of {nbytes} bytes, more than parity reads ({_size(MAX_CHUNK_BYTES)})"
    return None


def _short(value, n: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


class _Buffers(threading.local):
    """Per-thread reusable buffer for the compressed bytes of a read."""

    def __init__(self):
        self.bytes = np.empty(0, np.uint8)

    def buffer(self, n: int) -> np.ndarray:
        if self.bytes.size < n:
            self.bytes = np.empty(max(n, min(2 * self.bytes.size, READ_BYTES)), np.uint8)
        return self.bytes[:n]


_buffers = _Buffers()


def _pread_into(fd: int, buf: np.ndarray, offset: int) -> int:
    if hasattr(os, "preadv"):
        return os.preadv(fd, [buf], offset)
    os.lseek(fd, offset, os.SEEK_SET)  # macOS before 11: each thread opens its own descriptor
    return os.readv(fd, [buf])


class ArrayReader:
    """Rows of one array, read from its chunk or shard files (see the module docstring)."""

    def __init__(self, path: Path, meta: dict, required: Required | None = None, links: str | None = None):
        self.path = Path(path)
        self.required = required
        self.links = links  # where a pulled store's files may link to (``hf_blobs``)
        try:
            self._parse(meta)
        except (TypeError, ValueError, OverflowError, AttributeError, KeyError) as e:  # malformed, not unknown
            raise Unsupported(f"malformed metadata ({type(e).__name__}: {str(e)[:80]})") from None
        self._indexes: OrderedDict[int, tuple[list[int], list[int]]] = OrderedDict()
        self._lock = threading.Lock()
        # Per thread: the last chunk decoded only in part, as ((file, chunk), rows);
        # a stream's next read starts inside it.
        self._edge = threading.local()

    def _parse(self, meta: dict) -> None:
        if not isinstance(meta, dict) or meta.get("zarr_format") != 3 or meta.get("node_type") != "array":
            raise Unsupported("not a Zarr v3 array")
        if sys.byteorder != "little":
            raise Unsupported("big-endian host")
        if meta.get("storage_transformers"):
            raise Unsupported("storage transformers")
        dtype = meta.get("data_type")
        if not isinstance(dtype, str):
            raise Unsupported(f"data type {dtype!r}")
        try:
            self.dtype = np.dtype(dtype)
        except TypeError:
            raise Unsupported(f"data type {dtype!r}") from None
        if self.dtype.kind not in "biuf":
            raise Unsupported(f"data type {dtype!r}")
        self.shape = tuple(_rows_shape(meta.get("shape"), "shape"))
        if len(self.shape) not in (1, 2):
            raise Unsupported(f"{len(self.shape)}-D array")
        self.row_shape = self.shape[1:]
        self.fill = _fill(meta.get("fill_value", 0), self.dtype)

        grid, grid_conf = _named(meta.get("chunk_grid"))
        outer = _rows_shape(grid_conf.get("chunk_shape"), "chunk shape")
        if grid != "regular" or len(outer) != len(self.shape) or outer[1:] != list(self.row_shape):
            raise Unsupported(f"chunk grid {meta.get('chunk_grid')!r} (rows only)")
        keys, key_conf = _named(meta.get("chunk_key_encoding", {"name": "default"}))
        self.sep = key_conf.get("separator", "/")
        if keys != "default" or self.sep not in ("/", "."):
            raise Unsupported(f"chunk key encoding {keys!r}")
        self.rows_per_file = int(outer[0])

        codecs = meta.get("codecs") or []
        first, conf = _named(codecs[0]) if codecs else ("", {})
        self.sharded = first == "sharding_indexed"
        if self.sharded:
            if len(codecs) != 1:
                raise Unsupported("codecs after sharding_indexed")
            inner = _rows_shape(conf.get("chunk_shape"), "inner chunk shape")
            if len(inner) != len(self.shape) or inner[1:] != list(self.row_shape) or inner[0] <= 0 \
                    or self.rows_per_file % inner[0]:
                raise Unsupported(f"inner chunk shape {inner} (whole rows, dividing the shard)")
            self.chunk_rows = int(inner[0])
            self.blosc, self.crc = _chain(conf.get("codecs"), self.dtype.itemsize)
            index_blosc, self.index_crc = _chain(conf.get("index_codecs"), 8)
            if index_blosc:
                raise Unsupported("compressed shard index")
            location = conf.get("index_location", "end")
            if location not in ("start", "end"):
                raise Unsupported(f"index location {location!r}")
            self.index_at_end = location == "end"
            self.chunks_per_file = self.rows_per_file // self.chunk_rows
            if self.chunks_per_file > MAX_SHARD_CHUNKS:
                raise Unsupported(f"{self.chunks_per_file} chunks a shard")
            self.index_nbytes = 16 * self.chunks_per_file + (4 if self.index_crc else 0)
        else:
            self.chunk_rows = self.rows_per_file
            self.blosc, self.crc = _chain(codecs, self.dtype.itemsize)
            self.chunks_per_file = 1
        if self.rows_per_file <= 0:
            raise Unsupported("empty chunks")
        self.row_nbytes = (self.row_shape[0] if self.row_shape else 1) * self.dtype.itemsize
        self.chunk_nbytes = self.chunk_rows * self.row_nbytes
        if self.chunk_nbytes > MAX_CHUNK_BYTES or self.row_nbytes == 0:
            raise Unsupported(f"chunks of {self.chunk_nbytes} bytes")
        # The most bytes a chunk can take on disk: Blosc adds at most its
        # header, crc32c its 4 bytes (a longer one is refused unread).
        self.max_encoded = self.chunk_nbytes + (BLOSC_MAX_OVERHEAD if self.blosc else 0) + (4 if self.crc else 0)

    @classmethod
    def open(cls, path: Path | str, required: Required | None = None, links: str | None = None) -> "ArrayReader":
        path = Path(path)
        return cls(path, read_metadata(path, links=links), required, links)

    # -- files --------------------------------------------------------------
    def file_key(self, i: int) -> str:
        return self.sep.join(["c", str(i)] + ["0"] * (len(self.shape) - 1))

    def file_path(self, i: int) -> Path:
        return self.path.joinpath(*self.file_key(i).split("/"))

    def files_for(self, start: int, stop: int) -> range:
        """Indices of the chunk (or shard) files holding rows [start, stop)."""
        if stop <= start:
            return range(0)
        return range(start // self.rows_per_file, (stop - 1) // self.rows_per_file + 1)

    def _where(self, i: int, k: int) -> str:
        return f"{self.file_key(i)} chunk {k}" if self.sharded else self.file_key(i)

    def _open(self, i: int) -> int | None:
        """A descriptor of file i (``open_regular``), None when it does not exist."""
        try:
            return open_regular(self.file_path(i), self.links)
        except FileNotFoundError:
            return None
        except BadFile as e:
            raise BadFile(f"{self.file_key(i)}{str(e)[len(str(self.file_path(i))):]}") from None

    # -- reading ------------------------------------------------------------
    def read(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Rows [start, stop) (clipped to the array), decoded into ``out`` when given."""
        start, stop = max(start, 0), min(stop, self.shape[0])
        n = max(stop - start, 0)
        if out is None:
            out = np.empty((n, *self.row_shape), self.dtype)
        elif out.shape != (n, *self.row_shape) or out.dtype != self.dtype or not out.flags.c_contiguous:
            raise ValueError(f"out must be a C-contiguous {self.dtype} array of shape {(n, *self.row_shape)}")
        for i in self.files_for(start, stop):
            a = max(start, i * self.rows_per_file)
            b = min(stop, (i + 1) * self.rows_per_file)
            self._read_file(i, a, b, out[a - start : b - start])
        return out

    def _read_file(self, i: int, a: int, b: int, dest: np.ndarray) -> None:
        first = i * self.rows_per_file
        k0, k1 = (a - first) // self.chunk_rows, (b - 1 - first) // self.chunk_rows + 1
        fd = self._open(i)
        if fd is None:
            for k in range(k0, k1):
                self._fill_chunk(i, k, a, b, dest)
            return
        try:
            if self.sharded:
                offsets, lengths = self._index(i, fd)
            else:
                size = os.fstat(fd).st_size
                if size > self.max_encoded:
                    raise CorruptArray(f"{self.file_key(i)}: {size} bytes, more than a chunk of "
                                       f"{self.chunk_nbytes} bytes encodes to")
                offsets, lengths = [0], [size]
            run: list[int] = []
            for k in range(k0, k1):
                if offsets[k] == EMPTY:
                    self._decode_run(fd, i, run, offsets, lengths, a, b, dest)
                    run = []
                    self._fill_chunk(i, k, a, b, dest)
                    continue
                if run:
                    last = run[-1]
                    contiguous = offsets[k] == offsets[last] + lengths[last]
                    if not contiguous or offsets[k] + lengths[k] - offsets[run[0]] > READ_BYTES:
                        self._decode_run(fd, i, run, offsets, lengths, a, b, dest)
                        run = []
                run.append(k)
            self._decode_run(fd, i, run, offsets, lengths, a, b, dest)
        finally:
            os.close(fd)

    def _chunk_rows(self, i: int, k: int, a: int, b: int) -> tuple[int, int, int]:
        """(first row of chunk k, first and end row of it inside [a, b))."""
        c0 = i * self.rows_per_file + k * self.chunk_rows
        return c0, max(a, c0), min(b, c0 + self.chunk_rows)

    def _fill_chunk(self, i: int, k: int, a: int, b: int, dest: np.ndarray) -> None:
        _, lo, hi = self._chunk_rows(i, k, a, b)
        if self.required is not None and self.required(lo, hi):
            raise CorruptArray(f"{self._where(i, k)} was never written but holds rows {lo}-{hi - 1} "
                               "of a sequence (truncated store)")
        dest[lo - a : hi - a] = self.fill

    def _decode_run(self, fd: int, i: int, run: list[int], offsets: list[int], lengths: list[int],
                    a: int, b: int, dest: np.ndarray) -> None:
        if not run:
            return
        edge = getattr(self._edge, "chunk", None)
        todo = []
        for k in run:
            c0, lo, hi = self._chunk_rows(i, k, a, b)
            whole = lo == c0 and hi == c0 + self.chunk_rows
            if not whole and edge is not None and edge[0] == (i, k):
                dest[lo - a : hi - a] = edge[1][lo - c0 : hi - c0]
            else:
                todo.append((k, c0, lo, hi, whole))
        if not todo:
            return
        base = offsets[todo[0][0]]
        end = offsets[todo[-1][0]] + lengths[todo[-1][0]]
        buf = _buffers.buffer(end - base)
        got = 0
        while got < len(buf):  # short reads only happen at the end of a file
            more = _pread_into(fd, buf[got:], base + got)
            if more <= 0:
                raise CorruptArray(f"{self.file_key(i)} ends inside a chunk (truncated file)")
            got += more
        for k, c0, lo, hi, whole in todo:
            o = offsets[k] - base
            body = buf[o : o + lengths[k]]
            if whole:
                self._decode(body, dest[lo - a : hi - a], i, k)
                continue
            chunk = edge[1] if edge is not None else np.empty((self.chunk_rows, *self.row_shape), self.dtype)
            self._edge.chunk = None  # half-decoded if this raises
            self._decode(body, chunk, i, k)
            edge = self._edge.chunk = ((i, k), chunk)
            dest[lo - a : hi - a] = chunk[lo - c0 : hi - c0]

    # False when the caller re-derives the digests of the rows it reads
    # (``streamcheck``): a damaged chunk is then caught after decoding, by its
    # block's digest, and its crc32c is not computed.
    check_crc = True

    def _decode(self, body: np.ndarray, dest: np.ndarray, i: int, k: int) -> None:
        if self.crc:
            if body.size < 4 or (self.check_crc and google_crc32c.value(body) != CRC32C_RESIDUE):
                raise CorruptArray(f"{self._where(i, k)}: crc32c checksum mismatch")
            body = body[:-4]
        if not self.blosc:
            if body.size != self.chunk_nbytes:
                raise CorruptArray(f"{self._where(i, k)}: {body.size} bytes, expected {self.chunk_nbytes}")
            dest.reshape(-1).view(np.uint8)[:] = body
            return
        if body.size < BLOSC_HEADER:
            raise CorruptArray(f"{self._where(i, k)}: too short for a Blosc header")
        nbytes, _, cbytes = struct.unpack_from("<III", body, 4)
        if nbytes != self.chunk_nbytes or cbytes != body.size:
            raise CorruptArray(f"{self._where(i, k)}: Blosc header says {nbytes} bytes from {cbytes}, "
                               f"expected {self.chunk_nbytes} from {body.size}")
        blosc.decompress(body, dest)

    # -- shard indexes ------------------------------------------------------
    def index(self, i: int) -> tuple[list[int], list[int]] | None:
        """(offsets, lengths) of shard i's chunks (``EMPTY`` where never written); None without a file."""
        fd = self._open(i)
        if fd is None:
            return None
        try:
            return self._index(i, fd)
        finally:
            os.close(fd)

    def _index(self, i: int, fd: int) -> tuple[list[int], list[int]]:
        with self._lock:
            cached = self._indexes.get(i)
        if cached is not None:
            return cached
        size = os.fstat(fd).st_size
        if size < self.index_nbytes:
            raise CorruptArray(f"{self.file_key(i)}: {size} bytes, shorter than its chunk index (truncated file)")
        at = size - self.index_nbytes if self.index_at_end else 0
        raw = np.frombuffer(os.pread(fd, self.index_nbytes, at), np.uint8)
        if raw.size != self.index_nbytes:
            raise CorruptArray(f"{self.file_key(i)}: chunk index cut short")
        if self.index_crc and google_crc32c.value(raw) != CRC32C_RESIDUE:
            raise CorruptArray(f"{self.file_key(i)}: crc32c checksum mismatch in the chunk index")
        pairs = raw[: 16 * self.chunks_per_file].view("<u8").reshape(-1, 2)
        offsets, lengths = pairs[:, 0].copy(), pairs[:, 1].copy()
        empty = offsets == EMPTY
        if np.any(empty != (lengths == EMPTY)):
            raise CorruptArray(f"{self.file_key(i)}: chunk index has a half-empty entry")
        lo, hi = (0, size - self.index_nbytes) if self.index_at_end else (self.index_nbytes, size)
        ks = np.flatnonzero(~empty)
        o, n = offsets[ks], lengths[ks]
        least = 4 if self.crc else 1
        for bad, why in ((n > self.max_encoded, f"more than a chunk of {self.chunk_nbytes} bytes encodes to"),
                         (n < least, "too short for a chunk"),
                         ((o < lo) | (n > hi) | (o > hi - np.minimum(n, hi)), "outside the file's chunk bytes")):
            if np.any(bad):
                j = int(np.argmax(bad))
                raise CorruptArray(f"{self.file_key(i)} chunk {int(ks[j])}: the index gives bytes "
                                   f"{int(o[j])}-{int(o[j]) + int(n[j]) - 1} of a {size}-byte file, {why}")
        order = np.argsort(o, kind="stable")
        ends = (o + n)[order]
        overlap = o[order][1:] < ends[:-1]
        if np.any(overlap):
            j = int(np.argmax(overlap))
            first, second = sorted((int(ks[order[j]]), int(ks[order[j + 1]])))
            raise CorruptArray(f"{self.file_key(i)}: chunks {first} and {second} share bytes in the chunk index")
        parsed = (offsets.tolist(), lengths.tolist())
        with self._lock:
            self._indexes[i] = parsed
            if len(self._indexes) > INDEX_CACHE:
                self._indexes.popitem(last=False)
        return parsed


# -- writing ------------------------------------------------------------------
_EMPTY_CHUNK = np.uint64(EMPTY)


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

    def __init__(self, array, root: Path, direct_io: bool):
        self.array = array
        self.dir = root / array.path
        shuffle = {"noshuffle": Blosc.NOSHUFFLE, "shuffle": Blosc.SHUFFLE, "bitshuffle": Blosc.BITSHUFFLE}
        self.blosc = Blosc(cname=ROW_BLOSC["cname"], clevel=ROW_BLOSC["clevel"], shuffle=shuffle[ROW_BLOSC["shuffle"]])
        # None until the first shard says whether the file system takes O_DIRECT (schemas/directio.py).
        self.direct: bool | None = None if direct_io else False

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

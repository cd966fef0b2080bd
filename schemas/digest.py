"""Content addressing: canonical JSON and algorithm-tagged xxh3-128 digests.

Canonical JSON: UTF-8, keys sorted, no insignificant whitespace, no NaN or
infinity (they are not JSON), integers as integers. A digest is written
``xxh3-128:<32 lowercase hex>``.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import xxhash

ALGORITHM = "xxh3-128"


def canonical_json(obj: Any) -> bytes:
    def check(o):
        if isinstance(o, float) and not math.isfinite(o):
            raise ValueError("canonical JSON cannot hold NaN or infinity")
        if isinstance(o, dict):
            for v in o.values():
                check(v)
        elif isinstance(o, (list, tuple)):
            for v in o:
                check(v)

    check(obj)
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def tag(hexdigest: str) -> str:
    return f"{ALGORITHM}:{hexdigest}"


def parse_tagged(digest: str) -> str:
    algo, _, hexpart = digest.partition(":")
    if algo != ALGORITHM or len(hexpart) != 32 or any(c not in "0123456789abcdef" for c in hexpart):
        raise ValueError(f"not an {ALGORITHM} digest: {digest!r}")
    return hexpart


def digest_bytes(data: bytes, domain: bytes) -> str:
    h = xxhash.xxh3_128()
    h.update(domain)
    h.update(data)
    return tag(h.hexdigest())


def request_key(key_fields: dict) -> str:
    return digest_bytes(canonical_json(key_fields), b"parity.request/1\n")


# Schema 4 on (SPEC.md, "Content addressing"): the manifest keys that say when,
# where, how fast and in what layout a store was written, not what it holds.
# They stay in the manifest; the content digest leaves them out, so the same
# values recorded again, on other hosts or in shares then merged, have one address.
CIRCUMSTANCES = {"": ("digest", "floor", "created_at"), "device": ("host", "env"), "run": ("timings", "shares")}
LAYOUT_ARRAYS = ("logprobs_starts", "prompt_logprobs_starts")


def content_view(manifest: dict) -> dict:
    """What a schema-4 content digest covers: the manifest without its circumstances and layout.

    Row arrays keep their digest (dtype, width and every sequence block's
    rows) but not their row count, which counts padding; the arrays of block
    starts are layout too.
    """
    view = {k: v for k, v in manifest.items() if k not in CIRCUMSTANCES[""]}
    for section in ("device", "run"):
        if isinstance(view.get(section), dict):
            view[section] = {k: v for k, v in view[section].items() if k not in CIRCUMSTANCES[section]}
    if isinstance(view.get("arrays"), dict):
        view["arrays"] = {
            name: ({k: v for k, v in info.items() if k != "shape"}
                   if isinstance(info, dict) and len(info.get("shape") or ()) == 2 else info)
            for name, info in view["arrays"].items() if name not in LAYOUT_ARRAYS}
    return view


def content_digest(manifest_without_digest: dict) -> str:
    return digest_bytes(canonical_json(manifest_without_digest), b"parity.content/1\n")


class ArrayHasher:
    """Streams an array's logical content: dtype, shape, then C-order little-endian bytes.

    Independent of chunking and codecs: the same values give the same digest.
    """

    def __init__(self, dtype: np.dtype):
        self.dtype = np.dtype(dtype).newbyteorder("<")
        self._h = xxhash.xxh3_128()
        self._h.update(b"parity.array/1\n" + self.dtype.str.encode() + b"\n")
        self.rows = 0
        self.row_shape: tuple[int, ...] | None = None

    def update(self, block: np.ndarray) -> None:
        block = np.ascontiguousarray(block, dtype=self.dtype)
        if self.row_shape is None:
            self.row_shape = block.shape[1:]
        self.rows += block.shape[0] if block.ndim else 1
        self._h.update(memoryview(block).cast("B"))

    def hexdigest(self, shape: tuple[int, ...]) -> str:
        h = self._h.copy()
        h.update(b"\nshape=" + canonical_json(list(shape)))
        return tag(h.hexdigest())


def hash_array(values: np.ndarray) -> str:
    h = ArrayHasher(values.dtype)
    h.update(values)
    return h.hexdigest(values.shape)


class BlockHashers:
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

    def block_digests(self, counts: list[int], width: int) -> list[str]:
        """Each sequence block's digest, in sequence order."""
        return [(self.blocks[s].hexdigest((n, width)) if s in self.blocks else _empty_block(self.dtype, width))
                for s, n in enumerate(counts)]

    def digest(self, counts: list[int], width: int) -> str:
        return rows_digest(self.dtype, width, self.block_digests(counts, width))


def _empty_block(dtype, width: int) -> str:
    return ArrayHasher(dtype).hexdigest((0, width))


def rows_digest(dtype, width: int, block_digests: list[str]) -> str:
    """Digest of a row array: its dtype, width and each sequence block's digest, in order."""
    body = canonical_json({"dtype": np.dtype(dtype).newbyteorder("<").str, "width": width, "blocks": block_digests})
    return digest_bytes(body, b"parity.rows/1\n")

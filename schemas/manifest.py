"""The manifest: what a store holds and how it was made (see SPEC.md).

Schema objects are frozen dataclasses with explicit ``parse`` (from the JSON
dict, validating) and ``to_dict`` (to canonical-JSON-ready dicts).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from parity.errors import NotAStoreError, SchemaVersionError, StoreCorruptError

from .digest import content_view, parse_tagged, request_key
from .layout import ROW_KINDS, row_array_names

FORMAT = "parity.store"
SCHEMA_VERSION = 4  # what writers write
BLOCK_DIGESTS_FROM = 3  # row arrays list their sequence blocks' digests from this version on
CONTENT_VIEW_FROM = 4  # the content digest covers the content view (digest.content_view) from this version on
OLDEST_SCHEMA_VERSION = 1  # readers open every version from this one up (SPEC.md, "Versioning")


def _require(d: dict, key: str, kind, where: str):
    if key not in d:
        raise NotAStoreError(f"manifest is missing {where}.{key}")
    value = d[key]
    if kind is not None and value is not None and not isinstance(value, kind):
        raise NotAStoreError(f"manifest field {where}.{key} has the wrong type")
    return value


# Strict field parsing: a store is somebody else's bytes, and a wrong type
# must be refused here, named by its dotted path, not crash a command later.
MAX_COUNT = 1 << 40  # no count in a store comes near this
TOKEN_LIMIT = 1 << 31  # token ids are stored as int32
DTYPES = ("<f4", "<i4", "<i8")  # what parity stores (SPEC.md, "Arrays")
ARRAY_NAMES = ("token_ids", "token_offsets",
               *(n for kind in ROW_KINDS for v, ids in [row_array_names(kind)] for n in (v, f"{v}_starts", ids)))
_REQUIRED = object()


def _damaged(message: str) -> NotAStoreError:
    """A manifest that has a field wrong: the store is damaged (or was written to mislead), not another kind of directory."""
    return NotAStoreError(message, hint=StoreCorruptError.hint)


def _bad(path: str, what: str):
    raise _damaged(f"manifest field {path} must be {what}")


def _field(d: dict, key: str, where: str, ok, what: str, default=_REQUIRED):
    """``d[key]`` when ``ok`` says it is ``what``; ``default`` when absent (absent and no default: an error)."""
    if key not in d:
        if default is _REQUIRED:
            raise _damaged(f"manifest is missing {where}.{key}" if where else f"manifest is missing {key}")
        return default
    value = d[key]
    if not ok(value):
        _bad(f"{where}.{key}" if where else key, what)
    return value


def _is_count(v) -> bool:
    return type(v) is int and 0 <= v < MAX_COUNT


def _is_positive(v) -> bool:
    return type(v) is int and 0 < v < MAX_COUNT


def _is_int(v) -> bool:
    return type(v) is int and -(1 << 63) <= v < 1 << 64


def _is_str(v) -> bool:
    return type(v) is str


def _is_dict(v) -> bool:
    return type(v) is dict


def _optional(ok):
    return lambda v: v is None or ok(v)


_is_text = _optional(_is_str)
_is_object = _optional(_is_dict)


def _is_digest(v) -> bool:
    try:
        return type(v) is str and bool(parse_tagged(v))
    except ValueError:
        return False


COUNT = "a non-negative integer"
DIGEST = "an xxh3-128 digest ('xxh3-128:' and 32 hex digits)"


def _token_ids(p) -> bool:
    """A list of token ids (one C-speed pass over the types, then min and max)."""
    return type(p) is list and (not p or (set(map(type, p)) == {int} and min(p) >= 0 and max(p) < TOKEN_LIMIT))


@dataclass(frozen=True)
class ModelRef:
    id: str
    weights_digest: str | None = None
    tokenizer_digest: str | None = None
    revision: str | None = None
    source: str = "local"  # local | hub | preset | built-in

    @classmethod
    def parse(cls, d: dict, where: str = "request.model") -> "ModelRef":
        text = _is_text
        return cls(
            id=_field(d, "id", where, _is_str, "a string"),
            weights_digest=_field(d, "weights_digest", where, text, "a string or null", None),
            tokenizer_digest=_field(d, "tokenizer_digest", where, text, "a string or null", None),
            revision=_field(d, "revision", where, text, "a string or null", None),
            source=_field(d, "source", where, _is_str, "a string", "local"),
        )


@dataclass(frozen=True)
class Request:
    """What was asked. Its digest is the request key: computable without data."""

    model: ModelRef
    prompts: tuple[tuple[int, ...], ...]
    max_tokens: int
    logprobs: int  # -1: full vocabulary; N > 0: top-N
    prompt_logprobs: bool
    dtype: str
    max_model_len: int
    seed: int
    num_hidden_layers: int | None = None
    sampling: dict = field(default_factory=lambda: {"temperature": 0.0})

    @property
    def full_vocab(self) -> bool:
        return self.logprobs == -1

    def key_fields(self) -> dict:
        """The fields that identify a request across devices and hosts.

        dtype and max_model_len are left out on purpose: they are how a device
        runs the request (an NPU run in bf16 still wants the float32 CPU golden).
        """
        return {
            "model": {
                "weights_digest": self.model.weights_digest or self.model.id,
                "tokenizer_digest": self.model.tokenizer_digest,
                "num_hidden_layers": self.num_hidden_layers,
            },
            "prompts": [list(p) for p in self.prompts],
            "max_tokens": self.max_tokens,
            "logprobs": self.logprobs,
            "sampling": self.sampling,
            "seed": self.seed,
        }

    def key(self) -> str:
        return request_key(self.key_fields())

    def to_dict(self) -> dict:
        d = asdict(self)
        d["prompts"] = [list(p) for p in self.prompts]
        return d

    @classmethod
    def parse(cls, d: dict, where: str = "request") -> "Request":
        prompts = _field(d, "prompts", where, lambda v: type(v) is list, "a list of prompts")
        for i, p in enumerate(prompts):
            if not _token_ids(p):
                _bad(f"{where}.prompts[{i}]", f"a list of token ids (integers from 0 to {TOKEN_LIMIT - 1})")
        return cls(
            model=ModelRef.parse(_field(d, "model", where, _is_dict, "an object"), f"{where}.model"),
            prompts=tuple(tuple(p) for p in prompts),
            max_tokens=_field(d, "max_tokens", where, _is_count, COUNT),
            logprobs=_field(d, "logprobs", where, lambda v: v == -1 and type(v) is int or _is_positive(v),
                            "-1 (full vocabulary) or a positive integer (top-N)"),
            prompt_logprobs=_field(d, "prompt_logprobs", where, lambda v: type(v) is bool, "true or false"),
            dtype=_field(d, "dtype", where, _is_str, "a string"),
            max_model_len=_field(d, "max_model_len", where, _is_count, COUNT),
            seed=_field(d, "seed", where, _is_int, "an integer"),
            num_hidden_layers=_field(d, "num_hidden_layers", where, _optional(_is_positive),
                                     "a positive integer or null", None),
            sampling=_field(d, "sampling", where, _optional(_is_dict), "an object", None) or {"temperature": 0.0},
        )


@dataclass(frozen=True)
class Device:
    kind: str  # cpu | rbln | hf | ...
    versions: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)
    engine_args: dict = field(default_factory=dict)
    host: dict = field(default_factory=dict)

    @classmethod
    def parse(cls, d: dict, where: str = "device") -> "Device":
        obj = _is_object
        return cls(
            kind=_field(d, "kind", where, _is_str, "a string"),
            **{k: _field(d, k, where, obj, "an object", None) or {} for k in ("versions", "env", "engine_args", "host")},
        )


@dataclass(frozen=True)
class SequenceInfo:
    index: int
    prompt_len: int
    generated_len: int
    finish_reason: str | None = None
    nan_rows: int = 0
    inf_rows: int = 0
    text: str | None = None

    @classmethod
    def parse(cls, d: dict, where: str = "sequences[]") -> "SequenceInfo":
        if not _is_dict(d):
            _bad(where, "an object")
        text = _is_text
        return cls(
            index=_field(d, "index", where, _is_count, COUNT),
            prompt_len=_field(d, "prompt_len", where, _is_count, COUNT),
            generated_len=_field(d, "generated_len", where, _is_count, COUNT),
            finish_reason=_field(d, "finish_reason", where, text, "a string or null", None),
            nan_rows=_field(d, "nan_rows", where, _is_count, COUNT, 0),
            inf_rows=_field(d, "inf_rows", where, _is_count, COUNT, 0),
            text=_field(d, "text", where, text, "a string or null", None),
        )


@dataclass(frozen=True)
class ArrayInfo:
    dtype: str
    shape: tuple[int, ...]
    digest: str
    # Row arrays from schema 3 on: each sequence block's digest, in sequence
    # order (``digest`` combines them), so a reader names the sequence it
    # finds damaged. None: a 1-D array, or a store written before schema 3.
    blocks: tuple[str, ...] | None = None

    @classmethod
    def parse(cls, d: dict, where: str = "arrays[]") -> "ArrayInfo":
        if not _is_dict(d):
            _bad(where, "an object")
        blocks = _field(d, "blocks", where, _optional(lambda v: type(v) is list and all(map(_is_digest, v))),
                        "a list of digests", None)
        shape = _field(d, "shape", where, lambda v: type(v) is list and len(v) in (1, 2) and all(map(_is_count, v)),
                       "a list of one or two non-negative integers")
        return cls(
            dtype=_field(d, "dtype", where, lambda v: v in DTYPES and type(v) is str,
                         "one of " + ", ".join(map(repr, DTYPES))),
            shape=tuple(shape),
            digest=_field(d, "digest", where, _is_digest, DIGEST),
            blocks=None if blocks is None else tuple(blocks),
        )

    def to_dict(self) -> dict:
        d = {"dtype": self.dtype, "shape": list(self.shape), "digest": self.digest}
        if self.blocks is not None:
            d["blocks"] = list(self.blocks)
        return d


@dataclass(frozen=True)
class FloorLink:
    """The golden's noise floor: a store of accepted numerics recorded on its
    trajectory, kept inside the golden's directory (SPEC.md, "Noise floor").

    Not covered by the golden's content digest: a floor is a measurement made
    of a golden, attached after the golden is complete; the floor's own
    digest, named here, covers the floor, and its ``run.golden`` names the golden.
    """

    path: str  # directory inside the golden's, relative, one component
    digest: str  # the floor store's content digest
    kind: str  # how it was recorded: "bf16" (same device, bfloat16), "hf-bf16", ...
    device: str
    dtype: str

    @classmethod
    def parse(cls, d: Any) -> "FloorLink":
        if not isinstance(d, dict):
            raise _damaged("manifest field floor must be an object")
        link = cls(**{k: _field(d, k, "floor", _is_digest if k == "digest" else _is_str,
                                DIGEST if k == "digest" else "a string")
                         for k in ("path", "digest", "kind", "device", "dtype")})
        if not link.path or link.path in (".", "..") or "/" in link.path or "\\" in link.path:
            raise _damaged(f"manifest field floor.path {link.path[:60]!r} is not a directory name inside the store")
        return link

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Share:
    """Which share of a sharded recording a partial store holds (SPEC.md, "Shares").

    ``index`` counts from 1 to ``count``; the sequences it holds are the
    manifest's, named by their ``index`` in the full request.
    """

    index: int
    count: int

    @classmethod
    def parse(cls, d: Any) -> "Share":
        if not _is_dict(d):
            _bad("share", "an object")
        count = _field(d, "count", "share", lambda v: _is_positive(v) and v < MAX_COUNT, "a positive integer")
        index = _field(d, "index", "share", lambda v: _is_positive(v) and v <= count,
                       f"an integer from 1 to share.count ({count})")
        return cls(index=index, count=count)

    def to_dict(self) -> dict:
        return {"index": self.index, "count": self.count}

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


@dataclass(frozen=True)
class Manifest:
    request: Request
    device: Device
    vocab_size: int
    sequences: tuple[SequenceInfo, ...]
    arrays: dict  # name -> ArrayInfo
    created_at: str
    tool_version: str
    run: dict = field(default_factory=dict)  # timings, capture path, golden, forced
    tokenizer_vocab_size: int | None = None
    schema_version: int = SCHEMA_VERSION
    request_key: str = ""
    digest: str = ""
    floor: FloorLink | None = None  # not covered by ``digest`` (see FloorLink)
    share: Share | None = None  # set on a partial store: one share of a sharded recording

    @property
    def partial(self) -> bool:
        return self.share is not None

    def row_counts(self, kind: str) -> list[int]:
        """Rows each sequence owns in a row array: "generated" or "prompt" (SPEC.md, "Arrays")."""
        if kind == "generated":
            return [s.generated_len for s in self.sequences]
        return [max(s.prompt_len - 1, 0) if self.request.prompt_logprobs else 0 for s in self.sequences]

    @property
    def prompt_positions(self) -> int:
        return sum(self.row_counts("prompt"))

    @property
    def generated_positions(self) -> int:
        return sum(self.row_counts("generated"))

    @property
    def nan_rows(self) -> int:
        return sum(s.nan_rows for s in self.sequences)

    def to_dict(self, *, with_digest: bool = True) -> dict:
        d = {
            "format": FORMAT,
            "schema_version": self.schema_version,
            "request": self.request.to_dict(),
            "request_key": self.request_key,
            "device": asdict(self.device),
            "vocab_size": self.vocab_size,
            "tokenizer_vocab_size": self.tokenizer_vocab_size,
            "sequences": [asdict(s) for s in self.sequences],
            "positions": {"prompt": self.prompt_positions, "generated": self.generated_positions},
            "arrays": {k: v.to_dict() for k, v in sorted(self.arrays.items())},
            "run": self.run,
            "created_at": self.created_at,
            "tool_version": self.tool_version,
        }
        if self.share is not None:
            d["share"] = self.share.to_dict()
        if with_digest:
            d["digest"] = self.digest
            if self.floor is not None:
                d["floor"] = self.floor.to_dict()
        return d

    def with_digests(self) -> "Manifest":
        """The manifest with its request key and content digest derived: over ``to_dict(with_digest=False)``
        (every key but ``digest`` and ``floor``), from schema 4 on over its content view (SPEC.md,
        "Content addressing")."""
        from .digest import content_digest

        keyed = replace(self, request_key=self.request.key())
        covered = keyed.to_dict(with_digest=False)
        if self.schema_version >= CONTENT_VIEW_FROM:
            covered = content_view(covered)
        return replace(keyed, digest=content_digest(covered))

    @classmethod
    def parse(cls, d: Any) -> "Manifest":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise NotAStoreError("not a parity store (no parity manifest in the Zarr group attributes)")
        version = d.get("schema_version")
        if type(version) is not int:
            raise NotAStoreError("manifest has no schema_version")
        if not 0 <= version < MAX_COUNT:
            raise NotAStoreError("manifest has an unknown schema_version")
        if version < OLDEST_SCHEMA_VERSION:
            raise NotAStoreError(f"manifest has an unknown schema_version {version}")
        if version > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"store has schema_version {version}; this parity reads up to {SCHEMA_VERSION}"
            )
        arrays = _field(d, "arrays", "", _is_dict, "an object")
        for name in arrays:
            if name not in ARRAY_NAMES:
                raise _damaged(f"manifest field arrays names an array {name[:40]!r} that is not one of a "
                               "parity store's")
        sequences = _field(d, "sequences", "", lambda v: type(v) is list, "a list")
        manifest = cls(
            request=Request.parse(_field(d, "request", "", _is_dict, "an object")),
            device=Device.parse(_field(d, "device", "", _is_dict, "an object")),
            vocab_size=_field(d, "vocab_size", "", lambda v: _is_positive(v) and v <= TOKEN_LIMIT,
                              f"a positive integer up to {TOKEN_LIMIT}"),
            tokenizer_vocab_size=_field(d, "tokenizer_vocab_size", "", _optional(_is_positive),
                                        "a positive integer or null", None),
            sequences=tuple(SequenceInfo.parse(s, f"sequences[{i}]") for i, s in enumerate(sequences)),
            arrays={k: ArrayInfo.parse(v, f"arrays.{k}") for k, v in arrays.items()},
            created_at=_field(d, "created_at", "", _is_str, "a string"),
            tool_version=_field(d, "tool_version", "", _is_str, "a string"),
            run=_field(d, "run", "", _optional(_is_dict), "an object", None) or {},
            schema_version=version,
            request_key=_field(d, "request_key", "", _is_digest, DIGEST, ""),
            digest=_field(d, "digest", "", _is_digest, DIGEST, ""),
            floor=FloorLink.parse(d["floor"]) if d.get("floor") is not None else None,
            share=Share.parse(d["share"]) if d.get("share") is not None else None,
        )
        if manifest.share is not None and version < CONTENT_VIEW_FROM:
            raise _damaged(f"manifest field share appears in schema_version {version}: shares exist from "
                           f"schema_version {CONTENT_VIEW_FROM} on")
        manifest._check_sequences(d.get("positions"))
        return manifest

    def _check_sequences(self, positions: Any) -> None:
        """The sequences against the request's prompts, and the derived ``positions`` against both."""
        prompts = self.request.prompts
        if self.share is None and len(self.sequences) != len(prompts):
            raise _damaged(f"manifest field sequences has {len(self.sequences)} entries for "
                           f"{len(prompts)} prompts in request.prompts")
        if self.share is not None and not self.sequences:
            raise _damaged("manifest field sequences is empty: a share holds at least one sequence")
        previous = -1
        for i, s in enumerate(self.sequences):
            if self.share is None and s.index != i:
                raise _damaged(f"manifest field sequences[{i}].index is {s.index}, not its position {i}")
            if self.share is not None and not previous < s.index < len(prompts):
                raise _damaged(f"manifest field sequences[{i}].index is {s.index}: a share's sequences name "
                               f"request prompts (0 to {len(prompts) - 1}) in increasing order")
            previous, p = s.index, prompts[s.index]
            if s.prompt_len != len(p):
                raise _damaged(f"manifest field sequences[{i}].prompt_len is {s.prompt_len}, but "
                               f"request.prompts[{s.index}] has {len(p)} tokens")
        if positions is None:
            return
        if not _is_dict(positions):
            _bad("positions", "an object")
        for kind in ("prompt", "generated"):
            derived = sum(self.row_counts(kind))
            if positions.get(kind) != derived or type(positions.get(kind)) is not int:
                raise _damaged(f"manifest field positions.{kind} must be {derived}, the {kind} rows "
                               "its sequences hold")

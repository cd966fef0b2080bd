"""The manifest: what a store holds and how it was made (see SPEC.md).

Schema objects are frozen dataclasses with explicit ``parse`` (from the JSON
dict, validating) and ``to_dict`` (to canonical-JSON-ready dicts).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from parity.errors import NotAStoreError, SchemaVersionError

from .digest import request_key

FORMAT = "parity.store"
SCHEMA_VERSION = 2  # what writers write
OLDEST_SCHEMA_VERSION = 1  # readers open every version from this one up (SPEC.md, "Versioning")


def _require(d: dict, key: str, kind, where: str):
    if key not in d:
        raise NotAStoreError(f"manifest is missing {where}.{key}")
    value = d[key]
    if kind is not None and value is not None and not isinstance(value, kind):
        raise NotAStoreError(f"manifest field {where}.{key} has the wrong type")
    return value


@dataclass(frozen=True)
class ModelRef:
    id: str
    weights_digest: str | None = None
    tokenizer_digest: str | None = None
    revision: str | None = None
    source: str = "local"  # local | hub | preset | built-in

    @classmethod
    def parse(cls, d: dict) -> "ModelRef":
        return cls(
            id=_require(d, "id", str, "request.model"),
            weights_digest=d.get("weights_digest"),
            tokenizer_digest=d.get("tokenizer_digest"),
            revision=d.get("revision"),
            source=d.get("source", "local"),
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
    def parse(cls, d: dict) -> "Request":
        prompts = _require(d, "prompts", list, "request")
        if not all(isinstance(p, list) and all(isinstance(t, int) for t in p) for p in prompts):
            raise NotAStoreError("manifest request.prompts must be lists of token ids")
        return cls(
            model=ModelRef.parse(_require(d, "model", dict, "request")),
            prompts=tuple(tuple(p) for p in prompts),
            max_tokens=_require(d, "max_tokens", int, "request"),
            logprobs=_require(d, "logprobs", int, "request"),
            prompt_logprobs=bool(_require(d, "prompt_logprobs", bool, "request")),
            dtype=_require(d, "dtype", str, "request"),
            max_model_len=_require(d, "max_model_len", int, "request"),
            seed=_require(d, "seed", int, "request"),
            num_hidden_layers=d.get("num_hidden_layers"),
            sampling=d.get("sampling") or {"temperature": 0.0},
        )


@dataclass(frozen=True)
class Device:
    kind: str  # cpu | rbln | hf | ...
    versions: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)
    engine_args: dict = field(default_factory=dict)
    host: dict = field(default_factory=dict)

    @classmethod
    def parse(cls, d: dict) -> "Device":
        return cls(
            kind=_require(d, "kind", str, "device"),
            versions=d.get("versions") or {},
            env=d.get("env") or {},
            engine_args=d.get("engine_args") or {},
            host=d.get("host") or {},
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
    def parse(cls, d: dict) -> "SequenceInfo":
        return cls(
            index=_require(d, "index", int, "sequences[]"),
            prompt_len=_require(d, "prompt_len", int, "sequences[]"),
            generated_len=_require(d, "generated_len", int, "sequences[]"),
            finish_reason=d.get("finish_reason"),
            nan_rows=d.get("nan_rows", 0),
            inf_rows=d.get("inf_rows", 0),
            text=d.get("text"),
        )


@dataclass(frozen=True)
class ArrayInfo:
    dtype: str
    shape: tuple[int, ...]
    digest: str

    @classmethod
    def parse(cls, d: dict) -> "ArrayInfo":
        return cls(
            dtype=_require(d, "dtype", str, "arrays[]"),
            shape=tuple(_require(d, "shape", list, "arrays[]")),
            digest=_require(d, "digest", str, "arrays[]"),
        )

    def to_dict(self) -> dict:
        return {"dtype": self.dtype, "shape": list(self.shape), "digest": self.digest}


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
            raise NotAStoreError("manifest field floor must be an object")
        link = cls(**{k: _require(d, k, str, "floor") for k in ("path", "digest", "kind", "device", "dtype")})
        if not link.path or link.path in (".", "..") or "/" in link.path or "\\" in link.path:
            raise NotAStoreError(f"manifest field floor.path {link.path!r} is not a directory name inside the store")
        return link

    def to_dict(self) -> dict:
        return asdict(self)


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
        if with_digest:
            d["digest"] = self.digest
            if self.floor is not None:
                d["floor"] = self.floor.to_dict()
        return d

    def with_digests(self) -> "Manifest":
        """The manifest with its request key and content digest derived (``to_dict(with_digest=False)``:
        every key but ``digest`` and ``floor``)."""
        from .digest import content_digest

        keyed = replace(self, request_key=self.request.key())
        return replace(keyed, digest=content_digest(keyed.to_dict(with_digest=False)))

    @classmethod
    def parse(cls, d: Any) -> "Manifest":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise NotAStoreError("not a parity store (no parity manifest in the Zarr group attributes)")
        version = d.get("schema_version")
        if not isinstance(version, int):
            raise NotAStoreError("manifest has no schema_version")
        if version < OLDEST_SCHEMA_VERSION:
            raise NotAStoreError(f"manifest has an unknown schema_version {version}")
        if version > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"store has schema_version {version}; this parity reads up to {SCHEMA_VERSION}"
            )
        return cls(
            request=Request.parse(_require(d, "request", dict, "manifest")),
            device=Device.parse(_require(d, "device", dict, "manifest")),
            vocab_size=_require(d, "vocab_size", int, "manifest"),
            tokenizer_vocab_size=d.get("tokenizer_vocab_size"),
            sequences=tuple(SequenceInfo.parse(s) for s in _require(d, "sequences", list, "manifest")),
            arrays={k: ArrayInfo.parse(v) for k, v in _require(d, "arrays", dict, "manifest").items()},
            created_at=_require(d, "created_at", str, "manifest"),
            tool_version=_require(d, "tool_version", str, "manifest"),
            run=d.get("run") or {},
            schema_version=version,
            request_key=d.get("request_key", ""),
            digest=d.get("digest", ""),
            floor=FloorLink.parse(d["floor"]) if d.get("floor") is not None else None,
        )

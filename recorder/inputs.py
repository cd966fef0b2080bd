"""Resolving what to record: the model (preset, Hub id or directory) and the prompts.

Nothing here imports vllm or torch, so bad input fails in well under a second.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

import xxhash

from parity.errors import ModelNotFoundError, PromptError, UsageError
from parity.schemas import Request
from parity.schemas.digest import canonical_json, digest_bytes, tag

from .model_files import TOKENIZER_FILES
from .presets import BUILTIN_TINY, PRESETS
from .suites import DEFAULT_SUITE, SuitePrompt, load_suite

log = logging.getLogger("parity")

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")
TOKENIZER_DOMAIN = b"parity.tokenizer/2\n"
ADDED_TOKEN_FIELDS = ("id", "content", "special", "lstrip", "rstrip", "normalized", "single_word")
# Encoded for the digest (SPEC.md, "Tokenizer digest"): spaces at the start and
# doubled, newlines and tabs, accents and non-Latin scripts, digits, code.
PROBE_TEXTS = (
    "",
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    " leading space,  two spaces,\nnew line,\ttab and trailing space ",
    "Caf\u00e9 na\u00efve \u00c5ngstr\u00f6m \ufb01 \u0130stanbul "
    "\u6771\u4eac \uc11c\uc6b8 \u0645\u0631\u062d\u0628\u0627 \U0001f642",
    "3.14159 + 2,718 = 5.85959; 10000000 x=y*z",
    "def add(a, b):\n    return a + b  # sum\n",
)


@dataclass(frozen=True)
class ResolvedModel:
    id: str          # what the user asked for, normalised (preset -> its Hub id)
    path: Path       # local directory holding config, weights, tokenizer
    source: str      # built-in | local | hub
    revision: str | None = None  # hub: the commit sha
    # hub: the weight files vLLM loads (the digest covers these only); None: every weight file under path.
    weight_files: tuple[str, ...] | None = None
    missing: tuple[str, ...] = ()  # weight files not fetched (resolve_model(weights=False))


def resolve_model(spec: str, cache_dir: Path, *, revision: str | None = None, weights: bool = True,
                  endpoint: str | None = None, hf_cache: Path | None = None) -> ResolvedModel:
    """Turns --model into a local directory; a Hub id is downloaded on first use (hubmodel.py).

    ``weights=False`` fetches a Hub model's config and tokenizer only and
    lists its uncached weights in ``missing``. ``endpoint`` and ``hf_cache``
    default to huggingface_hub's (HF_ENDPOINT, HF_HUB_CACHE).
    """
    if spec in PRESETS:
        preset = PRESETS[spec]
        if spec == BUILTIN_TINY:
            _no_revision(revision, f"the built-in {spec!r} model")
            from .tinymodel import tiny_model_dir

            return ResolvedModel(preset.model_id, tiny_model_dir(cache_dir), "built-in")
        spec = preset.model_id
    path = Path(spec).expanduser()
    if path.exists() or spec.startswith((".", "/", "~")):
        _no_revision(revision, f"the local directory {path}")
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"model directory {path} not found or has no config.json")
        return ResolvedModel(str(path.resolve()), path.resolve(), "local")
    if HUB_ID.match(spec):
        from .hubmodel import fetch

        got = fetch(spec, revision, weights=weights, endpoint=endpoint, cache_dir=hf_cache)
        return ResolvedModel(spec, got.path, "hub", revision=got.commit, weight_files=got.weight_files,
                             missing=got.missing)
    known = ", ".join(sorted(PRESETS))
    raise ModelNotFoundError(f"unknown model {spec!r}: not a preset ({known}), a Hub id or a directory")


def _no_revision(revision: str | None, what: str) -> None:
    if revision is not None:
        raise UsageError(f"--revision pins a Hugging Face Hub model; {what} has none",
                         hint="drop --revision, or pass --model ORG/NAME")


def _digest_files(files: list[Path], root: Path, domain: bytes) -> str | None:
    if not files:
        return None
    h = xxhash.xxh3_128(domain)
    for f in sorted(files):
        inner = xxhash.xxh3_128()
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                inner.update(block)
        h.update(canonical_json([f.relative_to(root).as_posix(), f.stat().st_size, inner.hexdigest()]))
    return tag(h.hexdigest())


def weights_digest(model_dir: Path, cache_dir: Path, files: tuple[str, ...] | None = None) -> str | None:
    """xxh3-128 over weight files (name, size, content); cached by path, size and mtime.

    ``files`` (relative to model_dir) names the weights when they are known
    (a Hub model: ResolvedModel.weight_files); otherwise every weight file
    under model_dir counts.
    """
    if files is not None:
        files = [model_dir / f for f in files]
    else:
        files = [p for p in model_dir.rglob("*") if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)]
    stamp = canonical_json(sorted([str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in files))
    cache = cache_dir / "digests" / (xxhash.xxh3_64_hexdigest(stamp) + ".json")
    if cache.is_file():
        try:
            return json.loads(cache.read_text())["digest"]
        except (ValueError, KeyError):
            pass
    digest = _digest_files(files, model_dir, b"parity.weights/1\n")
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"digest": digest}))
        os.replace(tmp, cache)
    except OSError:
        pass
    return digest


def legacy_tokenizer_digest(model_dir: Path) -> str | None:
    """Schema 1's tokenizer digest: the bytes of the tokenizer files (SPEC.md, "Versioning").

    Kept to check goldens of schema 1 and to compute the request key they were
    filed under; a re-saved but equivalent tokenizer does not match it.
    """
    files = [model_dir / n for n in TOKENIZER_FILES if (model_dir / n).is_file()]
    return _digest_files(files, model_dir, b"parity.tokenizer/1\n")


def legacy_request_key(request: Request, tokenizer_dir: Path) -> str:
    """The request key a schema-1 golden of this request carries (its tokenizer digest was the files' bytes)."""
    model = replace(request.model, tokenizer_digest=legacy_tokenizer_digest(tokenizer_dir))
    return replace(request, model=model).key()


def tokenizer_digest(tokenizer) -> str:
    """Semantic identity of a tokenizer: what decides the token ids of a prompt, not how its files look.

    Takes a loaded transformers tokenizer (or a directory, loaded here). The
    exact definition is SPEC.md's "Tokenizer digest"; ``tokenizer_identity``
    returns the JSON it covers.
    """
    if isinstance(tokenizer, (str, os.PathLike)):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer)
    return digest_bytes(canonical_json(tokenizer_identity(tokenizer)), TOKENIZER_DOMAIN)


def tokenizer_identity(tokenizer) -> dict:
    """The canonical-JSON-ready sections the tokenizer digest covers."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        added = [_added_token(t) for t in spec.get("added_tokens") or []]
        identity = {
            "kind": "tokenizers",
            "model": _model_section(spec["model"]),
            "normalizer": spec.get("normalizer"),
            "pre_tokenizer": spec.get("pre_tokenizer"),
            "post_processor": _single_sequence(spec.get("post_processor")),
        }
    else:
        # Slow-only tokenizers have no serialisable pipeline: the vocabulary,
        # added tokens and the probe encodings below are what can be observed.
        added = [
            _added_token({"id": i, "content": t.content, "special": t.special, "lstrip": t.lstrip,
                          "rstrip": t.rstrip, "normalized": t.normalized, "single_word": t.single_word})
            for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items()
        ]
        identity = {"kind": "vocab", "vocab": dict(tokenizer.get_vocab())}
    added.sort(key=lambda t: t["id"])
    identity["added_tokens"] = added
    identity["special_token_ids"] = {
        name: getattr(tokenizer, f"{name}_token_id", None) for name in ("bos", "eos", "unk", "pad")
    }
    # Encoded by the call plan_recording tokenizes prompts with: this is how
    # add_bos_token/add_eos_token, split_special_tokens and any other
    # transformers-level step enter the digest as they are applied, not as
    # configured. The probe set depends only on covered data (added tokens).
    # verbose=False: the added-token probe may exceed model_max_length, which
    # only warns (nothing is truncated).
    probes = [*PROBE_TEXTS, "".join(f"{t['content']} x" for t in added)]
    identity["encodings"] = [[int(i) for i in tokenizer(text, verbose=False)["input_ids"]] for text in probes]
    return identity


def _added_token(t: dict) -> dict:
    # Only the fields that change matching; a newer tokenizers may add others.
    return {k: t.get(k) for k in ADDED_TOKEN_FIELDS}


def _single_sequence(processor):
    # Prompts are encoded one at a time, so a template's "pair" form never
    # applies; transformers also rewrites it when it rebuilds the template
    # from add_bos_token/add_eos_token.
    if not isinstance(processor, dict):
        return processor
    out = {k: v for k, v in processor.items() if not (k == "pair" and processor.get("type") == "TemplateProcessing")}
    if isinstance(out.get("processors"), list):
        out["processors"] = [_single_sequence(p) for p in out["processors"]]
    return out


def _model_section(model: dict) -> dict:
    # Options at null/false are dropped: newer tokenizers releases serialise
    # options they added (e.g. BPE's ignore_merges) at their off value, which
    # older releases simply omit, and an NPU host pins an older transformers
    # than the CPU host. Behaviour the options change is still in "encodings".
    model = {k: v for k, v in model.items() if v is not None and v is not False}
    merges = model.get("merges")
    if isinstance(merges, list):
        # tokenizers < 0.20 writes a merge as "a b", newer versions as ["a", "b"].
        model["merges"] = [m.split(" ") if isinstance(m, str) else list(m) for m in merges]
    return model


@dataclass(frozen=True)
class PromptSource:
    """The prompts of a recording, before tokenization, and the shipped suite they come from."""

    prompts: list[SuitePrompt]
    suite: str | None  # None: --prompts or --prompts-file

    @property
    def texts(self) -> list[str]:
        return [p.text for p in self.prompts]


def resolve_prompts(
    prompts: list[str] | None,
    prompts_file: Path | None,
    num_prompts: int | None,
    suite: str | None = None,
) -> PromptSource:
    """--prompts, --prompts-file or --suite (one of them; none: the default suite), cycled to --num-prompts."""
    given = [opt for opt, value in (("--suite", suite), ("--prompts", prompts), ("--prompts-file", prompts_file))
             if value is not None and value != []]
    if len(given) > 1:
        raise PromptError(f"give one of --suite, --prompts and --prompts-file, not {' and '.join(given)}")
    if prompts_file is not None:
        items = [SuitePrompt(t) for t in _read_prompts_file(Path(prompts_file).expanduser())]
    elif prompts is not None:
        items = [SuitePrompt(t) for t in prompts]
    else:
        suite = DEFAULT_SUITE if suite is None else suite
        items = list(load_suite(suite).prompts)
    if num_prompts is not None:
        if num_prompts < 1:
            raise PromptError("--num-prompts must be at least 1")
        items = (items * (num_prompts // max(len(items), 1) + 1))[:num_prompts] if items else []
    items = [p for p in items if p.text.strip()]
    if not items:
        raise PromptError("the prompt list is empty", hint="pass --prompts TEXT or a non-empty --prompts-file")
    return PromptSource(items, suite)


def load_prompts(
    prompts: list[str] | None,
    prompts_file: Path | None,
    num_prompts: int | None,
    suite: str | None = None,
) -> list[str]:
    """The prompt texts ``resolve_prompts`` picks (a suite's long documents whole, not yet fitted)."""
    return resolve_prompts(prompts, prompts_file, num_prompts, suite).texts


def _read_prompts_file(path: Path) -> list[str]:
    if not path.is_file():
        raise PromptError(f"prompts file {path} not found")
    text = path.read_text(encoding="utf-8")
    if path.suffix != ".jsonl":
        return [line for line in text.splitlines() if line.strip()]
    items = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            raise PromptError(f"{path}:{n}: not a JSON object") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str):
            raise PromptError(f'{path}:{n}: expected {{"prompt": "..."}}')
        items.append(obj["prompt"])
    return items

"""Resolving what to record: the model (preset, Hub id or directory) and the prompts.

Nothing here imports vllm or torch, so bad input fails in well under a second.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import xxhash

from parity.errors import ModelNotFoundError, PromptError
from schemas.digest import canonical_json, tag

from .presets import BUILTIN_TINY, DEFAULT_PROMPTS, PRESETS

log = logging.getLogger("parity")

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json",
    "merges.txt", "special_tokens_map.json", "added_tokens.json",
)


@dataclass(frozen=True)
class ResolvedModel:
    id: str          # what the user asked for, normalised (preset -> its Hub id)
    path: Path       # local directory holding config, weights, tokenizer
    source: str      # built-in | local | hub
    revision: str | None = None


def resolve_model(spec: str, cache_dir: Path) -> ResolvedModel:
    """Turns --model into a local directory; never downloads."""
    if spec in PRESETS:
        preset = PRESETS[spec]
        if spec == BUILTIN_TINY:
            from .tinymodel import tiny_model_dir

            return ResolvedModel(preset.model_id, tiny_model_dir(cache_dir), "built-in")
        spec = preset.model_id
    path = Path(spec).expanduser()
    if path.exists() or spec.startswith((".", "/", "~")):
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"model directory {path} not found or has no config.json")
        return ResolvedModel(str(path.resolve()), path.resolve(), "local")
    if HUB_ID.match(spec):
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            local = snapshot_download(spec, local_files_only=True)
        except (LocalEntryNotFoundError, OSError, ValueError):
            raise ModelNotFoundError(
                f"model {spec} is not in the local Hugging Face cache",
                hint=f"download it first (`hf download {spec}`) or pass a local directory",
            ) from None
        return ResolvedModel(spec, Path(local), "hub", revision=Path(local).name)
    known = ", ".join(sorted(PRESETS))
    raise ModelNotFoundError(f"unknown model {spec!r}: not a preset ({known}), a Hub id or a directory")


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


def weights_digest(model_dir: Path, cache_dir: Path) -> str | None:
    """xxh3-128 over weight files (name, size, content); cached by path, size and mtime."""
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


def tokenizer_digest(model_dir: Path) -> str | None:
    files = [model_dir / n for n in TOKENIZER_FILES if (model_dir / n).is_file()]
    return _digest_files(files, model_dir, b"parity.tokenizer/1\n")


def load_prompts(
    prompts: list[str] | None,
    prompts_file: Path | None,
    num_prompts: int | None,
) -> list[str]:
    if prompts and prompts_file:
        raise PromptError("give --prompts or --prompts-file, not both")
    if prompts_file is not None:
        path = Path(prompts_file).expanduser()
        if not path.is_file():
            raise PromptError(f"prompts file {path} not found")
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".jsonl":
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
        else:
            items = [line for line in text.splitlines() if line.strip()]
    elif prompts is not None:
        items = list(prompts)
    else:
        items = list(DEFAULT_PROMPTS)
    if num_prompts is not None:
        if num_prompts < 1:
            raise PromptError("--num-prompts must be at least 1")
        items = (items * (num_prompts // max(len(items), 1) + 1))[:num_prompts] if items else []
    items = [p for p in items if p.strip()]
    if not items:
        raise PromptError("the prompt list is empty", hint="pass --prompts TEXT or a non-empty --prompts-file")
    return items

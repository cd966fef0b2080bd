"""A model cut to its first K decoder layers, final norm and LM head kept.

Such a model (the "logit lens" at depth K) is complete on every device, so a
golden and a candidate recorded at the same depth tell whether drift is
already there after K layers.

vLLM cannot do this from the full checkpoint: ``hf_overrides`` shrinks the
module tree but its weight loader still meets ``layers.K`` and refuses it.
So, for the cpu and hf devices, the recorder hands the engine a *derived
checkpoint directory*: config.json with the layer count (and every per-layer
list) cut to K, and safetensors holding only the tensors of the kept layers.
Shards whose tensors are all kept are symlinked, shards with none are left
out, and only mixed shards are rewritten, by copying byte ranges (no tensor is
decoded, so memory stays flat and any dtype works). The directory is built
once per (weights, K) under the parity cache, atomically.

The rbln device uses what vllm-rbln 0.12 supports instead (see
devices/rbln.py): its own ``VLLM_RBLN_NUM_HIDDEN_LAYERS`` on the vllm-model
path, ``hf_overrides`` on the optimum path.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path

from parity.errors import ModelNotFoundError, UsageError

log = logging.getLogger("parity")

FORMAT = "parity.truncated/1"
MARKER = "parity-truncation.json"
LAYER_NAME = re.compile(r"^(?P<prefix>(?:.*\.)?(?:layers|h|blocks|layer))\.(?P<index>\d+)\.")
COPY_CHUNK = 16 << 20
# Modules whose numbered blocks are not the decoder's (multimodal towers).
NOT_DECODER = ("vision", "visual", "audio", "encoder.", "image", "mm_projector")


@dataclass(frozen=True)
class Depth:
    """The layer count a recording runs with: ``requested`` of ``total`` layers."""

    requested: int
    total: int

    @property
    def truncated(self) -> bool:
        return self.requested < self.total


def _text_config(config: dict) -> dict:
    """The sub-config that holds the decoder's layer count."""
    if "num_hidden_layers" in config:
        return config
    for key in ("text_config", "language_config", "llm_config"):
        sub = config.get(key)
        if isinstance(sub, dict) and "num_hidden_layers" in sub:
            return sub
    raise UsageError("--num-hidden-layers: the model's config.json has no num_hidden_layers")


def read_config(model_dir: Path) -> dict:
    try:
        return json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise ModelNotFoundError(f"cannot read {model_dir}/config.json: {e}") from None


def layer_count(model_dir: Path) -> int:
    return int(_text_config(read_config(model_dir))["num_hidden_layers"])


def resolve_depth(model_dir: Path, requested: int) -> Depth:
    """Checks ``--num-hidden-layers K`` against the model's own count."""
    total = layer_count(model_dir)
    if requested < 1:
        raise UsageError(f"--num-hidden-layers must be at least 1, not {requested}")
    if requested > total:
        raise UsageError(f"--num-hidden-layers {requested}: the model has only {total} layers")
    return Depth(requested, total)


def config_overrides(config: dict, k: int) -> dict:
    """The config keys to change for depth K (for ``hf_overrides`` or a derived config.json).

    Besides the count, lists with one entry per layer (``layer_types``,
    ``mlp_only_layers``-style flags, sliding-window tables) are cut to K, or
    transformers' own validation refuses the config.
    """
    text = _text_config(config)
    total = int(text["num_hidden_layers"])
    flat = {"num_hidden_layers": k}
    for key, value in text.items():
        if isinstance(value, list) and len(value) == total and key != "architectures":
            flat[key] = value[:k]
    if text is config:
        return flat
    key = next(k_ for k_, v in config.items() if v is text)
    return {key: flat}


def _apply(config: dict, overrides: dict) -> dict:
    out = dict(config)
    for key, value in overrides.items():
        out[key] = _apply(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


# safetensors: an 8-byte little-endian header length, a JSON header mapping
# names to dtype/shape/data_offsets (relative to the end of the header), data.
def _read_header(path: Path) -> tuple[dict, int]:
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
    return header, 8 + n


def _write_subset(src: Path, dst: Path, header: dict, data_start: int, keep: list[str]) -> None:
    offsets, new_header, pos = [], {}, 0
    if "__metadata__" in header:
        new_header["__metadata__"] = header["__metadata__"]
    for name in sorted(keep, key=lambda n: header[n]["data_offsets"][0]):
        a, b = header[name]["data_offsets"]
        new_header[name] = {**header[name], "data_offsets": [pos, pos + (b - a)]}
        offsets.append((a, b))
        pos += b - a
    raw = json.dumps(new_header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the format allows space padding; keeps the data 8-byte aligned
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        fout.write(struct.pack("<Q", len(raw)))
        fout.write(raw)
        for a, b in offsets:
            fin.seek(data_start + a)
            left = b - a
            while left:
                chunk = fin.read(min(left, COPY_CHUNK))
                if not chunk:
                    raise ModelNotFoundError(f"{src} is truncated: a tensor's bytes end early")
                fout.write(chunk)
                left -= len(chunk)


def _decoder_prefix(names: list[str], total: int) -> str:
    """The name prefix of the decoder's numbered layers (``model.layers`` for Llama)."""
    found: dict[str, set[int]] = {}
    for name in names:
        m = LAYER_NAME.match(name)
        if m:
            found.setdefault(m["prefix"], set()).add(int(m["index"]))
    fits = [p for p, idx in found.items() if set(range(total)) <= idx]
    if len(fits) > 1:
        fits = [p for p in fits if not any(w in p for w in NOT_DECODER)] or fits
    if len(fits) != 1:
        raise UsageError(
            f"--num-hidden-layers: cannot tell the decoder's {total} layers from the checkpoint's tensor names "
            f"(numbered blocks under {sorted(found) or 'no prefix'})",
            hint="record the full model, or report the architecture",
        )
    return fits[0]


def _weight_files(model_dir: Path) -> list[Path]:
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        other = sorted(p.name for p in model_dir.glob("*") if p.suffix in (".bin", ".pt", ".gguf"))
        raise UsageError(
            f"--num-hidden-layers needs safetensors weights; {model_dir} has "
            f"{', '.join(other[:3]) or 'no weight files'}",
            hint="convert the checkpoint (model.save_pretrained(dir, safe_serialization=True))",
        )
    return files


def truncated_dir(model_dir: Path, depth: Depth, cache_dir: Path, weights_digest: str | None) -> Path:
    """The derived checkpoint for ``depth`` (built on first use), or model_dir itself at full depth."""
    if not depth.truncated:
        return model_dir
    ident = (weights_digest or str(Path(model_dir).resolve())).replace(":", "-")
    out = Path(cache_dir) / "truncated" / ident / f"layers-{depth.requested}"
    marker = out / MARKER
    if marker.is_file():
        try:
            if json.loads(marker.read_text()).get("source") == str(Path(model_dir).resolve()):
                return out
        except ValueError:
            pass
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        _build(Path(model_dir).resolve(), depth, tmp)
        (tmp / MARKER).write_text(json.dumps({
            "format": FORMAT, "source": str(Path(model_dir).resolve()), "weights_digest": weights_digest,
            "num_hidden_layers": depth.requested, "of": depth.total,
        }, indent=2))
        if out.exists():  # a stale build (another source path): replace it
            shutil.rmtree(out)
        try:
            os.replace(tmp, out)
        except OSError:
            if not (out / MARKER).is_file():  # lost a race to an identical build: fine
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("model truncated to %d of %d layers at %s", depth.requested, depth.total, out)
    return out


def _build(src: Path, depth: Depth, out: Path) -> None:
    config = read_config(src)
    files = _weight_files(src)
    headers = {f: _read_header(f) for f in files}
    names = [n for h, _ in headers.values() for n in h if n != "__metadata__"]
    prefix = _decoder_prefix(names, depth.total)

    def kept(name: str) -> bool:
        m = LAYER_NAME.match(name)
        return not (m and m["prefix"] == prefix and int(m["index"]) >= depth.requested)

    weight_map = {}
    for f, (header, start) in headers.items():
        tensors = [n for n in header if n != "__metadata__"]
        keep = [n for n in tensors if kept(n)]
        if not keep:
            continue
        if len(keep) == len(tensors):
            os.symlink(f.resolve(), out / f.name)
        else:
            _write_subset(f, out / f.name, header, start, keep)
        weight_map.update({n: f.name for n in keep})
    if len(files) > 1 or (src / "model.safetensors.index.json").exists():
        index = {"metadata": {"parity_truncated_from": str(src)}, "weight_map": dict(sorted(weight_map.items()))}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (out / "config.json").write_text(json.dumps(_apply(config, config_overrides(config, depth.requested)), indent=2))
    for f in src.iterdir():
        skip = f.suffix in (".safetensors", ".bin", ".pt", ".gguf") or f.name in (
            "config.json", "model.safetensors.index.json", MARKER) or f.name.endswith(".index.json")
        if f.is_file() and not skip:
            os.symlink(f.resolve(), out / f.name)

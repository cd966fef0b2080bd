"""A tiny Llama built locally: the embedded default model (no download).

The tokenizer is a byte-level BPE trained here with `tokenizers` on a small
built-in corpus; weights are random with a fixed seed, scaled so that the
next-token distributions are peaked rather than uniform (a uniform model would
make every comparison trivially pass). `perturb` adds small noise to every
weight, which stands in for a device whose numerics differ slightly.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from pathlib import Path

log = logging.getLogger("parity")

CORPUS = """\
The quick brown fox jumps over the lazy dog. A golden record holds the reference
distribution for every position of a sequence, and a candidate device must match it.
Once upon a time there was a small model that lived on a CPU and dreamed of an NPU.
Hello, my name is parity and I compare next-token distributions between devices.
The capital of France is Paris. The capital of Korea is Seoul. Numbers: 1 2 3 4 5 6 7 8 9 10.
In the beginning the tokens were few, and the logits were many, and the softmax was stable.
def add(a, b):\n    return a + b\nfor i in range(10):\n    print(i * i)\n
Large language models predict the next token given all the previous ones; the
Kullback-Leibler divergence measures how far one distribution is from another.
"""

DEFAULT_VOCAB = 4096


def _train_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=min(vocab_size, 1024),
        special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([CORPUS] * 4, trainer=trainer)
    return tok


def tokenizer_and_config(out_dir: Path, *, vocab_size: int, hidden_size: int, num_layers: int,
                         max_position_embeddings: int = 1024):
    """The tiny tokenizer, trained and saved into out_dir, and the LlamaConfig of a
    tiny model over it (head_dim 64: vLLM's CPU attention rejects smaller heads)."""
    from transformers import LlamaConfig, PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=_train_tokenizer(vocab_size), bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(out_dir)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=hidden_size // 64,
        num_key_value_heads=hidden_size // 64,
        head_dim=64,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    return fast, config


def build_tiny_model(
    out_dir: Path | str,
    *,
    vocab_size: int = DEFAULT_VOCAB,
    hidden_size: int = 128,
    num_layers: int = 2,
    seed: int = 0,
    perturb: float = 0.0,
    perturb_seed: int = 1,
) -> Path:
    """Writes a Llama checkpoint + tokenizer into out_dir (atomically) and returns it.

    head_dim is 64 because vLLM's CPU attention rejects smaller heads.
    """
    out_dir = Path(out_dir)
    if (out_dir / "config.json").exists():
        return out_dir
    import torch
    from transformers import LlamaForCausalLM

    tmp = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        fast, config = tokenizer_and_config(tmp, vocab_size=vocab_size, hidden_size=hidden_size,
                                            num_layers=num_layers)
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.ndim >= 2:
                    p.normal_(0.0, 0.08 if "embed" in name or "lm_head" in name else 0.05)
            if perturb:
                gen = torch.Generator().manual_seed(perturb_seed)
                for p in model.parameters():
                    p.add_(torch.randn(p.shape, generator=gen) * perturb * p.abs().mean())
        model.save_pretrained(tmp, safe_serialization=True)
        (tmp / "parity-tiny.json").write_text(
            json.dumps({"vocab_size": vocab_size, "seed": seed, "perturb": perturb, "perturb_seed": perturb_seed})
        )
        try:
            os.replace(tmp, out_dir)
        except OSError:
            if not (out_dir / "config.json").exists():  # lost a race to an identical build: fine
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("built tiny model at %s", out_dir)
    return out_dir


def tiny_model_dir(cache_dir: Path, *, vocab_size: int = DEFAULT_VOCAB, perturb: float = 0.0) -> Path:
    name = f"tiny-llama-v{vocab_size}" + (f"-perturbed-{perturb:g}" if perturb else "")
    return build_tiny_model(Path(cache_dir) / "models" / name, vocab_size=vocab_size, perturb=perturb)


def perturb_layer(model_dir: Path | str, out_dir: Path | str, layer: int, *, scale: float = 0.3,
                  seed: int = 3) -> Path:
    """A copy of model_dir whose decoder layer ``layer`` (0-based) has its matrices perturbed.

    Noise of ``scale`` times each matrix's mean magnitude: a device that drifts
    from one layer on, so the depth ``parity bisect`` must name is known
    (``layer + 1``). Written atomically; an existing out_dir is returned as is.
    """
    import numpy as np
    from safetensors.numpy import load_file, save_file

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if (out_dir / "config.json").exists():
        return out_dir
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    shutil.copytree(model_dir, tmp)
    try:
        tensors = load_file(str(model_dir / "model.safetensors"))
        rng = np.random.default_rng(seed)
        touched = 0
        for name, value in tensors.items():
            if f"layers.{layer}." in name and value.ndim == 2:
                noise = rng.standard_normal(value.shape) * scale * np.abs(value).mean()
                tensors[name] = (value + noise).astype(value.dtype)
                touched += 1
        if not touched:
            raise ValueError(f"{model_dir} has no decoder layer {layer}")
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir

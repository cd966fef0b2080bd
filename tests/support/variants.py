"""Model directories for calibrating and testing floor verdicts: a briefly
trained tiny Llama, and copies of it with known bugs.

``trained_tiny_model`` trains the tiny Llama of ``parity.recorder.tinymodel``
(same tokenizer, same shape family: head_dim 64, hidden 128) with torch on the
CPU for a few hundred steps on local text cut into long windows, so that its
next-token distributions are peaked and depend on position (a model with
random weights barely attends by position, and a RoPE bug then hides in the
bf16 noise). The variants copy a model directory and change one thing, as a
device with that bug would:

- ``rope_base``: the rotary base (``rope_theta``) in config.json;
- ``perturb_final_norm``: ``model.norm.weight *= 1 + scale * N``;
- ``perturb_layer_norm``: ``layers.{layer}.input_layernorm.weight *= 1 + scale * N``;
- ``perturb_layer``: noise on one decoder layer's matrices (``tinymodel.perturb_layer``).

N is standard normal noise per element from ``numpy.random.default_rng(seed)``.
Every function writes its directory atomically and returns an existing one as
is, so a session fixture can call it on a cache directory. The weights of a
variant differ from its source's: ``parity record --golden`` warns and records
(a candidate device with a bug).

Training is deterministic for a given seed and torch thread count (the
machines here have 2 cores; the default ``threads=2`` pins it).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path

# Text written for this module (the tiny model's own CORPUS is added to it):
# prose of several registers, lists and code, so that the model sees
# different contexts and has to attend to them to tell them apart.
PARAGRAPHS = (
    """The lighthouse keeper climbed the spiral stairs every evening at six. There were one hundred and \
twelve steps, and he counted them aloud, because counting kept his mind from the wind. At the top he \
wiped the great lens with a soft cloth, trimmed the wick, and wrote the time in a brown notebook that \
had belonged to his father.""",
    """A recipe for bread needs only four things: flour, water, salt and yeast. Mix the flour and the \
water first and let them rest for half an hour. Then add the salt and the yeast, knead the dough until \
it is smooth, and leave it in a warm place until it has doubled. Shape it, let it rise again, and bake \
it in a hot oven for forty minutes.""",
    """When two devices run the same model, their numbers are rarely identical. One adds in a different \
order, another rounds every product to bfloat16, a third fuses the softmax into the attention kernel. \
Each difference is small, but a bug is also small at first, and the only way to tell them apart is to \
measure how far the honest differences usually go.""",
    """Monday: the train left at seven and arrived at nine. Tuesday: the train left at eight and \
arrived at ten. Wednesday: the train left at nine and arrived at eleven. Thursday: the train did not \
leave at all, because snow had covered the tracks in the night. Friday: the train left at noon and \
arrived at two.""",
    """The river starts as a spring high in the mountains, cold and clear. It runs through a forest of \
pines, past a village with a stone bridge, and into a wide valley where farmers grow barley and \
apples. By the time it reaches the sea it is brown and slow, and it carries the silt of a hundred \
fields.""",
    """def mean(values):\n    total = 0.0\n    for v in values:\n        total += v\n    return total / \
len(values)\n\ndef variance(values):\n    m = mean(values)\n    return mean([(v - m) ** 2 for v in \
values])\n\nprint(mean([1, 2, 3, 4]))\nprint(variance([1, 2, 3, 4]))\n""",
    """First, check that the reference and the candidate used the same prompts. Second, check that \
they used the same tokenizer. Third, compare the distributions position by position. Fourth, look at \
the positions where the top token differs, and ask whether the reference itself was unsure there. \
Fifth, write down what you found, with the numbers.""",
    """The old library had three floors. On the first were the newspapers and the maps; on the second, \
novels in many languages; on the third, a reading room with green lamps, where students slept over \
their books and nobody woke them until the bell rang at nine.""",
    """In the winter the lake froze so thick that the children skated across it to school. The teacher \
kept a kettle on the stove, and each child who arrived with red cheeks got a cup of sweet tea before \
the first lesson. The lessons were arithmetic, geography and singing, in that order, every day.""",
    """Alpha, bravo, charlie, delta, echo, foxtrot, golf, hotel, india, juliet, kilo, lima, mike, \
november, oscar, papa, quebec, romeo, sierra, tango, uniform, victor, whiskey, xray, yankee, zulu.""",
    """The committee met on the last Thursday of the month. The chair read the minutes of the previous \
meeting, the treasurer reported that the roof fund had reached four thousand pounds, and the \
secretary announced that the summer fair would take place on the second Saturday of July, weather \
permitting.""",
    """Red sky at night, shepherd's delight; red sky in the morning, shepherd's warning. The old \
sayings about weather are often right for a simple reason: in these latitudes the weather comes from \
the west, and the colour of the sky at sunset tells what the west is bringing.""",
)


def training_text(seed: int = 0, repeats: int = 8) -> str:
    """The training text: the paragraphs (and tinymodel's CORPUS) in ``repeats`` shuffled orders."""
    import random

    from parity.recorder.tinymodel import CORPUS

    rng = random.Random(seed)
    parts = [*PARAGRAPHS, CORPUS.strip()]
    out = []
    for _ in range(repeats):
        rng.shuffle(parts)
        out.extend(parts)
    return "\n\n".join(out)


def _tmp_beside(out_dir: Path) -> Path:
    return out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"


def _publish(tmp: Path, out_dir: Path) -> None:
    try:
        os.replace(tmp, out_dir)
    except OSError:
        if not (out_dir / "config.json").exists():  # lost a race to an identical build: fine
            raise


def trained_tiny_model(
    out_dir: Path | str,
    *,
    vocab_size: int = 4096,
    hidden_size: int = 128,
    num_layers: int = 2,
    max_position_embeddings: int = 1024,
    seq_len: int = 1024,
    batch_size: int = 2,
    steps: int = 300,
    lr: float = 5e-3,
    seed: int = 0,
    threads: int | None = 2,
) -> Path:
    """Trains the tiny Llama briefly on the CPU and saves it (with the tiny
    tokenizer) into out_dir, atomically; an existing out_dir is returned as is.

    Windows of ``seq_len`` tokens at random offsets of the tokenized
    ``training_text(seed)``; AdamW, cosine schedule with 20 warm-up steps,
    gradient clipping at 1. head_dim is 64 (vLLM's CPU attention rejects
    smaller heads); ``parity-tiny.json`` records the recipe, the final loss
    and the training time. The defaults take about 40 s on 2 idle cores
    (0.12 s a step; 70-100 s when the cores are shared) and reach a loss of
    0.05-0.09: the golden's median top-1 probability is then ~0.99.
    """
    out_dir = Path(out_dir)
    if (out_dir / "config.json").exists():
        return out_dir
    import torch
    from transformers import LlamaForCausalLM

    from parity.recorder.tinymodel import tokenizer_and_config

    if hidden_size % 64:
        raise ValueError("hidden_size must be a multiple of 64 (head_dim 64)")
    if seq_len > max_position_embeddings:
        raise ValueError(f"seq_len {seq_len} is longer than max_position_embeddings {max_position_embeddings}")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_beside(out_dir)
    tmp.mkdir(parents=True)
    old_threads = torch.get_num_threads()
    try:
        if threads:
            torch.set_num_threads(threads)
        fast, config = tokenizer_and_config(tmp, vocab_size=vocab_size, hidden_size=hidden_size,
                                            num_layers=num_layers, max_position_embeddings=max_position_embeddings)
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
        ids = torch.tensor(fast(training_text(seed))["input_ids"], dtype=torch.long)
        if len(ids) <= seq_len + 1:
            raise ValueError(f"training text has {len(ids)} tokens, fewer than seq_len {seq_len}")
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
        warmup = min(20, steps)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: (s + 1) / warmup if s < warmup
            else 0.5 * (1 + torch.cos(torch.tensor((s - warmup) / max(steps - warmup, 1) * torch.pi)).item()))
        model.train()
        t0 = time.perf_counter()
        loss_value = float("nan")
        for _ in range(steps):
            starts = torch.randint(0, len(ids) - seq_len - 1, (batch_size,), generator=gen)
            batch = torch.stack([ids[s:s + seq_len] for s in starts.tolist()])
            loss = model(input_ids=batch, labels=batch).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            loss_value = loss.detach().item()
        train_s = time.perf_counter() - t0
        model.eval()
        model.save_pretrained(tmp, safe_serialization=True)
        (tmp / "parity-tiny.json").write_text(json.dumps({
            "vocab_size": vocab_size, "seed": seed, "trained": True, "num_layers": num_layers,
            "hidden_size": hidden_size, "seq_len": seq_len, "batch_size": batch_size, "steps": steps, "lr": lr,
            "train_tokens": int(len(ids)), "final_loss": round(loss_value, 4), "train_s": round(train_s, 1),
        }))
        _publish(tmp, out_dir)
    finally:
        torch.set_num_threads(old_threads)
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _copy(src: Path, out_dir: Path, edit) -> Path:
    """out_dir as a copy of src changed by ``edit(tmp_dir)``, written atomically."""
    if (out_dir / "config.json").exists():
        return out_dir
    if not (src / "config.json").exists():
        raise FileNotFoundError(f"{src} is not a model directory (no config.json)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_beside(out_dir)
    shutil.copytree(src, tmp)
    try:
        edit(tmp)
        _publish(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def rope_base(src: Path | str, out: Path | str, theta: float = 10500.0) -> Path:
    """A copy of src whose rotary base is ``theta``.

    transformers 5 writes the base as ``rope_parameters.rope_theta`` (4.x wrote
    a top-level ``rope_theta``); both are set where present, and at least the
    one this transformers writes, so vLLM and transformers read ``theta``.
    """
    def edit(tmp: Path) -> None:
        path = tmp / "config.json"
        cfg = json.loads(path.read_text())
        params = cfg.get("rope_parameters")
        if isinstance(params, dict):
            params["rope_theta"] = float(theta)
        if "rope_theta" in cfg or not isinstance(params, dict):
            cfg["rope_theta"] = float(theta)
        if isinstance(cfg.get("rope_scaling"), dict) and "rope_theta" in cfg["rope_scaling"]:
            cfg["rope_scaling"]["rope_theta"] = float(theta)
        path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")

    return _copy(Path(src), Path(out), edit)


def _scale_weights(src: Path, out_dir: Path, names, scale: float, seed: int) -> Path:
    import numpy as np
    from safetensors.numpy import load_file, save_file

    def edit(tmp: Path) -> None:
        tensors = load_file(str(src / "model.safetensors"))
        missing = [n for n in names if n not in tensors]
        if missing:
            raise KeyError(f"{src} has no tensor {missing[0]}")
        rng = np.random.default_rng(seed)
        for n in names:
            w = tensors[n]
            tensors[n] = (w.astype(np.float64) * (1.0 + scale * rng.standard_normal(w.shape))).astype(w.dtype)
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})

    return _copy(src, out_dir, edit)


def perturb_final_norm(src: Path | str, out: Path | str, scale: float = 0.05, seed: int = 0) -> Path:
    """A copy of src with ``model.norm.weight *= 1 + scale * N``."""
    return _scale_weights(Path(src), Path(out), ["model.norm.weight"], scale, seed)


def perturb_layer_norm(src: Path | str, out: Path | str, layer: int, scale: float = 0.6, seed: int = 0) -> Path:
    """A copy of src with ``model.layers.{layer}.input_layernorm.weight *= 1 + scale * N``."""
    return _scale_weights(Path(src), Path(out), [f"model.layers.{layer}.input_layernorm.weight"], scale, seed)


def perturb_layer(src: Path | str, out: Path | str, layer: int, scale: float = 0.3, seed: int = 3) -> Path:
    """A copy of src with noise of ``scale`` times each matrix's mean magnitude
    on decoder layer ``layer`` (``parity.recorder.tinymodel.perturb_layer``)."""
    from parity.recorder.tinymodel import perturb_layer as _perturb_layer

    return _perturb_layer(src, out, layer, scale=scale, seed=seed)

"""Synthetic stores the tests build without an engine, all through the real StoreWriter.

- ``write_deterministic``: the store whose content digest tests/schemas pins;
- ``simple_store``: a one-sequence golden whose request key depends on model,
  weights, prompt and depth only (the goldens tests' repo contents);
- the ``make_store`` fixture (tests/conftest.py) for row-level differ tests,
  over ``parity.differ.testing``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from parity.differ.testing import SeqData, StoreSpec, write_store
from parity.schemas import (
    GENERATED, PROMPT, SCHEMA_VERSION, Device, Manifest, ModelRef, Request, SequenceInfo, StoreWriter,
)

V = 64


def deterministic_rows(n: int, offset: int = 0) -> np.ndarray:
    x = np.arange(offset * V, (offset + n) * V, dtype=np.float64).reshape(n, V)
    logits = np.sin(x * 0.37) * 4.0
    lse = np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return (logits - lse).astype(np.float32)


def deterministic_manifest(prompts=((1, 2, 3), (4, 5)), schema_version: int = SCHEMA_VERSION) -> Manifest:
    request = Request(
        model=ModelRef(id="pinned", weights_digest="xxh3-128:" + "a" * 32, tokenizer_digest="xxh3-128:" + "b" * 32),
        prompts=prompts, max_tokens=3, logprobs=-1, prompt_logprobs=True, dtype="float32",
        max_model_len=64, seed=0,
    )
    return Manifest(
        request=request, device=Device(kind="cpu", versions={"vllm": "0"}), vocab_size=V,
        sequences=(SequenceInfo(0, 3, 3, "length"), SequenceInfo(1, 2, 2, "stop")), arrays={},
        created_at="2026-01-01T00:00:00+00:00", tool_version="0.0.0", schema_version=schema_version,
    )


def write_deterministic(out, interleave: bool = False, schema_version: int = SCHEMA_VERSION):
    with StoreWriter(out, vocab_size=V) as w:
        if interleave:
            w.append_rows(GENERATED, 0, deterministic_rows(1, 0))
            w.append_rows(GENERATED, 1, deterministic_rows(2, 3))
            w.append_rows(GENERATED, 0, deterministic_rows(2, 1))
        else:
            w.append_rows(GENERATED, 0, deterministic_rows(3, 0))
            w.append_rows(GENERATED, 1, deterministic_rows(2, 3))
        w.append_rows(PROMPT, 0, deterministic_rows(2, 10))
        w.append_rows(PROMPT, 1, deterministic_rows(1, 12))
        return w.commit(deterministic_manifest(schema_version=schema_version), [[1, 2, 3, 7, 8, 9], [4, 5, 6, 6]])


def simple_store(
    out_dir: Path,
    *,
    prompt: tuple[int, ...] = (1, 2, 3),
    device: str = "cpu",
    model: str = "tiny/llama",
    created_at: str = "2026-01-01T00:00:00+00:00",
    generated: int = 4,
    seed: int = 0,
    num_hidden_layers: int | None = None,
    weights_digest: str | None = None,
) -> Path:
    """A small committed store; its request key depends on model, weights, prompt and depth only."""
    rng = np.random.default_rng(seed + sum(prompt) * 7919 + len(device))
    rows = rng.standard_normal((generated, V)).astype(np.float32) - 5.0
    tokens = [int(t) for t in rng.integers(0, V, generated)]
    spec = StoreSpec(
        vocab_size=V, sequences=[SeqData(list(prompt), tokens, rows)], model_id=model,
        weights_digest=weights_digest, tokenizer_digest=None, device=device,
        versions={"parity": "test", device: "1.0"}, created_at=created_at, max_model_len=128,
        num_hidden_layers=num_hidden_layers,
    )
    return write_store(out_dir, spec)[0]


# Three sequences a test can write whole or in shares (tests/schemas/test_shares.py).
PROMPTS = ((1, 2, 3), (4, 5), (6, 7, 8, 9))
GENERATED_LEN = (3, 2, 4)
TOKENS = ([1, 2, 3, 10, 11, 12], [4, 5, 13, 14], [6, 7, 8, 9, 15, 16, 17, 18])


def share_rows(seq: int, kind: str) -> np.ndarray:
    n = GENERATED_LEN[seq] if kind == GENERATED else len(PROMPTS[seq]) - 1
    return deterministic_rows(n, 100 * seq + (50 if kind == PROMPT else 0))


def share_manifest(seqs, share=None, **changes):
    m = deterministic_manifest(prompts=PROMPTS)
    infos = tuple(SequenceInfo(i, len(PROMPTS[i]), GENERATED_LEN[i], "length", text=f"s{i}") for i in seqs)
    return replace(m, sequences=infos, share=share, run={"capture": "tensor", "timings": {"generate_s": 1.0}},
                   **changes)


def write_share(out: Path, seqs=(0, 1, 2), share=None, aligned=False, **changes) -> tuple[Path, object]:
    reserve = None
    if aligned:  # the batched layout: every sequence's block starts a region of its own
        reserve = {GENERATED: [8] * len(seqs), PROMPT: [8] * len(seqs)}
    with StoreWriter(out, vocab_size=V, reserve=reserve, lanes=2 if aligned else 1) as w:
        for local, seq in enumerate(seqs):
            w.append_rows(GENERATED, local, share_rows(seq, GENERATED))
            w.append_rows(PROMPT, local, share_rows(seq, PROMPT))
            if aligned:
                w.finish_sequence(local)
        return w.commit(share_manifest(seqs, share, **changes), [TOKENS[s] for s in seqs])

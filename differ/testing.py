"""Synthetic stores for tests, benchmarks and notebooks.

Builds real on-disk stores through ``StoreWriter`` from arrays the caller
chooses, so the differ can be exercised without an inference engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from parity.schemas import GENERATED, PROMPT, StoreWriter
from parity.schemas.manifest import Device, Manifest, ModelRef, Request, SequenceInfo


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64."""
    z = np.asarray(logits, dtype=np.float64)
    m = np.max(z, axis=-1, keepdims=True)
    z = z - m
    return z - np.log(np.sum(np.exp(z), axis=-1, keepdims=True))


@dataclass
class SeqData:
    """One sequence: prompt and generated token ids, and its rows.

    ``generated`` has one row per generated token; ``prompt_rows`` has
    ``len(prompt) - 1`` rows (or None when prompt logprobs were not recorded).
    Rows are either full-vocab log-probabilities or, with ``ids``, top-N values.
    """

    prompt: list[int]
    tokens: list[int]
    generated: np.ndarray
    prompt_rows: np.ndarray | None = None
    generated_ids: np.ndarray | None = None
    prompt_ids: np.ndarray | None = None


@dataclass
class StoreSpec:
    vocab_size: int
    sequences: list[SeqData]
    topn: int | None = None
    model_id: str = "synthetic/tiny"
    weights_digest: str | None = "w1"
    tokenizer_digest: str | None = "tok1"
    device: str = "cpu"
    dtype: str = "float32"
    versions: dict = field(default_factory=lambda: {"vllm": "0.0-test"})
    run: dict = field(default_factory=dict)
    finish_reasons: list[str] | None = None
    schema_version: int | None = None  # None: the current one
    created_at: str = "2025-01-01T00:00:00Z"
    max_model_len: int = 4096
    num_hidden_layers: int | None = None


def build_manifest(spec: StoreSpec) -> Manifest:
    has_prompt = any(s.prompt_rows is not None for s in spec.sequences)
    request = Request(
        model=ModelRef(id=spec.model_id, weights_digest=spec.weights_digest, tokenizer_digest=spec.tokenizer_digest),
        prompts=tuple(tuple(int(t) for t in s.prompt) for s in spec.sequences),
        max_tokens=max((len(s.tokens) for s in spec.sequences), default=0),
        logprobs=spec.topn if spec.topn else -1,
        prompt_logprobs=has_prompt,
        dtype=spec.dtype,
        max_model_len=spec.max_model_len,
        seed=0,
        num_hidden_layers=spec.num_hidden_layers,
    )
    seqs = tuple(
        SequenceInfo(
            index=i,
            prompt_len=len(s.prompt),
            generated_len=len(s.tokens),
            finish_reason=(spec.finish_reasons[i] if spec.finish_reasons else "length"),
        )
        for i, s in enumerate(spec.sequences)
    )
    return Manifest(
        request=request,
        device=Device(kind=spec.device, versions=dict(spec.versions)),
        vocab_size=spec.vocab_size,
        sequences=seqs,
        arrays={},
        created_at=spec.created_at,
        tool_version="test",
        run=dict(spec.run),
        **({"schema_version": spec.schema_version} if spec.schema_version is not None else {}),
    )


def write_store(out_dir: Path | str, spec: StoreSpec) -> tuple[Path, Manifest]:
    """Writes ``spec`` as a committed store under ``out_dir``; returns (path, manifest)."""
    manifest = build_manifest(spec)
    with StoreWriter(out_dir, vocab_size=spec.vocab_size, topn=spec.topn) as w:
        for i, s in enumerate(spec.sequences):
            if len(s.tokens):
                w.append_rows(GENERATED, i, s.generated, s.generated_ids)
            if manifest.request.prompt_logprobs and len(s.prompt) > 1:
                w.append_rows(PROMPT, i, s.prompt_rows, s.prompt_ids)
        return w.commit(manifest, [list(s.prompt) + list(s.tokens) for s in spec.sequences])


def random_logits(rng: np.random.Generator, rows: int, vocab: int, scale: float = 3.0) -> np.ndarray:
    return rng.standard_normal((rows, vocab)) * scale


def topn_of(logprobs: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(values, ids) of the n largest entries of each row, sorted descending."""
    ids = np.argsort(-logprobs, axis=1, kind="stable")[:, :n]
    return np.take_along_axis(logprobs, ids, axis=1), ids.astype(np.int32)


def greedy_tokens(rows: np.ndarray) -> list[int]:
    return [int(t) for t in np.argmax(rows, axis=1)]


DEFAULT_PROMPT = [3, 1, 4, 1, 5]


def pair_rows(rng: np.random.Generator, rows: int, vocab: int = 512, noise: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """(reference, candidate) float32 log-prob rows: the candidate's logits are perturbed."""
    logits = random_logits(rng, rows, vocab)
    ref = log_softmax(logits).astype(np.float32)
    cand = log_softmax(logits + rng.standard_normal((rows, vocab)) * noise).astype(np.float32)
    return ref, cand

"""Fixtures for the differ tests: synthetic stores written through StoreWriter."""

from __future__ import annotations

import numpy as np
import pytest

from parity.differ.testing import DEFAULT_PROMPT as PROMPT
from parity.differ.testing import SeqData, StoreSpec, greedy_tokens, write_store

V = 512


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def make_store(tmp_path):
    """make_store(rows_per_seq, prompt_rows=None, tokens=None, **spec) -> (path, manifest)."""

    def make(generated: list[np.ndarray], *, prompt_rows=None, tokens=None, prompts=None, ids=None, **spec):
        seqs = []
        for i, rows in enumerate(generated):
            prompt = list(prompts[i]) if prompts else list(PROMPT)
            toks = tokens[i] if tokens is not None else (greedy_tokens(rows) if ids is None else list(ids[i][:, 0]))
            seqs.append(SeqData(prompt=prompt, tokens=list(toks), generated=rows,
                                prompt_rows=None if prompt_rows is None else prompt_rows[i],
                                generated_ids=None if ids is None else ids[i]))
        vocab = spec.pop("vocab_size", generated[0].shape[1] if not spec.get("topn") else V)
        return write_store(tmp_path / "stores", StoreSpec(vocab_size=vocab, sequences=seqs, **spec))

    return make

"""Session-wide fixtures: an isolated parity cache and the tiny local models.

The tiny models are built once per session (a locally trained tokenizer and
random weights; nothing is downloaded). Engine tests share one recorded golden.
"""

from __future__ import annotations

import os

import pytest

# The loopback Hub and its goldens, for tests of every package (it also sets the
# client's environment before anything imports huggingface_hub).
pytest_plugins = ["tests.support.hub_fixtures"]


@pytest.fixture(scope="session", autouse=True)
def parity_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("parity-cache")
    os.environ["PARITY_CACHE"] = str(cache)
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    os.environ["PARITY_NO_PROGRESS"] = "1"
    return cache


@pytest.fixture(scope="session")
def tiny_model(parity_cache):
    from parity.recorder.tinymodel import tiny_model_dir

    return tiny_model_dir(parity_cache)


@pytest.fixture(scope="session")
def perturbed_model(parity_cache):
    from parity.recorder.tinymodel import tiny_model_dir

    return tiny_model_dir(parity_cache, perturb=0.05)


# Prompts of different lengths, so batched runs remove and move rows mid-batch.
ENGINE_PROMPTS = [
    "Hello, my name is",
    "The capital of France is Paris. The capital of Korea is",
    "Once",
    "def add(a, b):\n    return a + b\nfor i in range(10):",
]
ENGINE_MAX_TOKENS = 12


@pytest.fixture(scope="session")
def engine_options():
    from parity.recorder import EngineOptions

    return EngineOptions(max_model_len=256)


@pytest.fixture(scope="session")
def golden(tiny_model, engine_options, tmp_path_factory):
    """A CPU golden of the tiny model: full vocabulary, prompt positions on, batch 1."""
    from parity.recorder import RecordConfig, record

    out = tmp_path_factory.mktemp("golden")
    return record(RecordConfig(model=str(tiny_model), prompts=ENGINE_PROMPTS, max_tokens=ENGINE_MAX_TOKENS,
                               out=out, engine=engine_options))


# The one synthetic-store factory: real stores through StoreWriter, rows chosen by the test.
TOPN_VOCAB = 512


@pytest.fixture
def make_store(tmp_path):
    """make_store(rows_per_seq, prompt_rows=None, tokens=None, **spec) -> (path, manifest)."""
    from parity.differ.testing import DEFAULT_PROMPT as PROMPT
    from parity.differ.testing import SeqData, StoreSpec, greedy_tokens, write_store

    def make(generated: list, *, prompt_rows=None, tokens=None, prompts=None, ids=None, **spec):
        seqs = []
        for i, rows in enumerate(generated):
            prompt = list(prompts[i]) if prompts else list(PROMPT)
            toks = tokens[i] if tokens is not None else (greedy_tokens(rows) if ids is None else list(ids[i][:, 0]))
            seqs.append(SeqData(prompt=prompt, tokens=list(toks), generated=rows,
                                prompt_rows=None if prompt_rows is None else prompt_rows[i],
                                generated_ids=None if ids is None else ids[i]))
        vocab = spec.pop("vocab_size", generated[0].shape[1] if not spec.get("topn") else TOPN_VOCAB)
        return write_store(tmp_path / "stores", StoreSpec(vocab_size=vocab, sequences=seqs, **spec))

    return make

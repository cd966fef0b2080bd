"""Session-wide fixtures: an isolated parity cache and the tiny local models.

The tiny models are built once per session (a locally trained tokenizer and
random weights; nothing is downloaded). Engine tests share one recorded golden.
"""

from __future__ import annotations

import os

import pytest


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

"""Fixtures shared by the recorder tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def no_npu_env(monkeypatch):
    """No NPU name and none of the plugin's selector variables: the plan is decided by options alone."""
    for var in ("RBLN_FORCE_NPU_NAME", "RBLN_TARGET_SOC", "VLLM_PLUGINS", "VLLM_RBLN_USE_VLLM_MODEL",
                "VLLM_RBLN_COMPILE_ONLY", "VLLM_RBLN_NUM_HIDDEN_LAYERS"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch

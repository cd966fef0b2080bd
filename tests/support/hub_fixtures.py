"""Fixtures for every test that talks to the Hub: a loopback Hub (`hub`) and small goldens (`stores`).

Loaded as a pytest plugin by tests/conftest.py, so the goldens, recorder and
workflows tests share one Hub.

huggingface_hub reads HF_HUB_DISABLE_XET when it is imported, so it is set
here, before anything imports the client (a Xet upload cannot go to a
loopback server). Everything else is passed explicitly or set per test.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from huggingface_hub.utils._runtime import is_xet_available  # noqa: E402

from tests.support.hub_server import READ, READ_TOKEN, WRITE, WRITE_TOKEN, HubServer  # noqa: E402
from tests.support.stores import simple_store  # noqa: E402


@dataclass
class LoopbackHub:
    server: HubServer
    cache_dir: Path

    @property
    def kw(self) -> dict:
        """What every goldens call gets: the loopback endpoint and a private HF cache."""
        return {"endpoint": self.server.endpoint, "cache_dir": self.cache_dir}


@pytest.fixture
def hub(tmp_path, monkeypatch):
    # Big files go through the LFS batch API when the client can use it (Xet
    # disabled); otherwise every file is committed inline ("regular").
    lfs_threshold = None if is_xet_available() else 256
    with HubServer(tokens={WRITE_TOKEN: WRITE, READ_TOKEN: READ}, lfs_threshold=lfs_threshold) as server:
        cache = tmp_path / "hf" / "hub"
        monkeypatch.setenv("HF_TOKEN", WRITE_TOKEN)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
        monkeypatch.setenv("HF_HUB_CACHE", str(cache))
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        # Safety net: anything not aimed at the loopback server goes to a dead proxy.
        monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
        monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
        monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
        yield LoopbackHub(server, cache)
        assert not server.unhandled, f"client called endpoints the test hub does not serve: {server.unhandled}"


@pytest.fixture
def stores(tmp_path):
    """Factory: ``stores(prompt=..., device=...)`` makes a store under tmp_path/stores."""
    counter = iter(range(1000))

    def build(**kw) -> Path:
        return simple_store(tmp_path / "stores" / str(next(counter)), **kw)

    return build

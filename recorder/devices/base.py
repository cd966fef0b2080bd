"""The device-profile interface: one small module per device.

A profile says which engine runs its device, whether the device can run
here, which environment variables and engine arguments it needs, and how it
reports its versions. Adding a device is one new module registered in
``devices/__init__.py``.
"""

from __future__ import annotations

import importlib.metadata as md
import platform
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from parity.schemas import Request


@dataclass(frozen=True)
class EngineOptions:
    """Device-independent engine settings taken from the command line."""

    dtype: str = "float32"
    max_model_len: int = 1024
    seed: int = 0
    batch: int = 1
    tp: int = 1
    pp: int = 1
    dp: int = 1
    ep: bool = False
    # vLLM's distributed_executor_backend (mp | ray | uni); None: vLLM's choice (mp when tp*pp > 1).
    executor: str | None = None
    block_size: int | None = None
    num_hidden_layers: int | None = None
    trust_remote_code: bool = False
    max_num_batched_tokens: int | None = None
    # Read by the rbln profile only (devices/rbln.py); the CLI refuses them for other devices.
    rbln_path: str = "auto"
    rbln_host_logits: bool = False
    rbln_fresh_compile: bool = False
    extra: dict = field(default_factory=dict)


# How --num-hidden-layers K reaches the engine (recorder/truncate.py):
TRUNCATE_CHECKPOINT = "checkpoint"        # a derived checkpoint directory of K layers
TRUNCATE_HF_OVERRIDES = "hf_overrides"    # the full checkpoint, config overridden to K layers
TRUNCATE_PLUGIN_ENV = "plugin-env"        # the platform plugin's own variable (vllm-rbln)

# The engines a device runs on (recorder/engines/__init__.py maps each name to its engine):
ENGINE_VLLM = "vllm"  # vLLM, on the hardware of its platform plugin
ENGINE_HF = "hf"      # plain transformers, the reference vLLM's own tests use


class DeviceProfile:
    name: str = ""
    # Whether this device records through vLLM or plain transformers: decided here only.
    engine: str = ENGINE_VLLM
    # Whether prompt positions are recorded unless the user says otherwise.
    prompt_logprobs_default: bool = True
    install_hint: str = ""
    packages: tuple[str, ...] = ()

    def check_available(self) -> None:
        """Raises DeviceUnavailableError (one line, with the install step) if absent."""

    def validate(self, opts: EngineOptions, request: "Request") -> None:
        """Raises UsageError (one line) for settings this device refuses.

        Runs in ``plan_recording``, before any engine start or compilation,
        so a refused setting costs nothing on the device host.
        """

    def layer_truncation(self, opts: EngineOptions) -> str:
        """How this device runs a model cut to --num-hidden-layers (one of the TRUNCATE_* names)."""
        return TRUNCATE_CHECKPOINT

    def plan_details(self, opts: EngineOptions) -> dict:
        """Device-specific choices worth showing in a dry-run plan (JSON-serialisable)."""
        return {}

    def environment(self, opts: EngineOptions, *, full_vocab: bool) -> dict[str, str]:
        return {}

    def engine_args(self, opts: EngineOptions) -> dict:
        return {}

    def versions(self) -> dict[str, str]:
        return {name: _version(name) for name in self.packages}

    def host(self) -> dict[str, str]:
        return {"hostname": socket.gethostname(), "machine": platform.machine(), "python": platform.python_version()}


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "not installed"


def module_available(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False

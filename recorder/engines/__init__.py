"""The recording engines by name: the one place a device's engine is looked up.

A device profile names its engine (``DeviceProfile.engine``). A name, not
the class: the engines import the planning module, which imports the
profiles, so the profiles cannot import the engines.
"""

from __future__ import annotations

from ..devices.base import ENGINE_HF, ENGINE_VLLM, DeviceProfile
from .base import Engine, Generation, environment
from .hf import HfEngine
from .vllm import VllmEngine

ENGINES: dict[str, type[Engine]] = {
    ENGINE_VLLM: VllmEngine,
    ENGINE_HF: HfEngine,
}


def engine_for(profile: DeviceProfile) -> type[Engine]:
    return ENGINES[profile.engine]


__all__ = ["ENGINES", "Engine", "Generation", "engine_for", "environment"]

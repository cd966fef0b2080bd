"""Device profiles by name. A new device is one module plus one line here."""

from __future__ import annotations

from parity.errors import UsageError

from .base import DeviceProfile, EngineOptions
from .cpu import CpuProfile
from .hf import HfProfile
from .rbln import RblnProfile

PROFILES: dict[str, type[DeviceProfile]] = {
    "cpu": CpuProfile,
    "rbln": RblnProfile,
    "hf": HfProfile,
}


def get_profile(name: str) -> DeviceProfile:
    try:
        return PROFILES[name]()
    except KeyError:
        raise UsageError(f"unknown device {name!r}; choose one of: {', '.join(sorted(PROFILES))}") from None


__all__ = ["DeviceProfile", "EngineOptions", "PROFILES", "get_profile"]

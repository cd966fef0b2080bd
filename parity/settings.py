"""The one place parity reads environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def _on(value: str | None) -> bool:
    """A switch that is on unless set to 0, false, no or off."""
    return (value or "1").strip().lower() not in {"0", "false", "no", "off"}


@dataclass(frozen=True)
class Settings:
    debug: bool
    cache_dir: Path
    no_progress: bool
    hf_offline: bool
    # "fused" or "numpy": forces the diff's full-vocabulary kernel (checking
    # a suspected kernel bug, benchmarks); empty means the fastest built one.
    diff_kernel: str = ""
    # Off ("0"): every array is read through zarr instead of the shard
    # reader (schemas/shards.py), to rule the fast path out or to measure it.
    fast_read: bool = True
    # Off ("0"): the recorder writes shard files through the page cache
    # instead of with O_DIRECT (schemas/directio.py).
    direct_io: bool = True

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "Settings":
        env = dict(os.environ if env is None else env)
        if env.get("PARITY_CACHE"):
            cache = Path(env["PARITY_CACHE"])
        else:
            base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
            cache = Path(base) / "parity"
        return cls(
            debug=_flag(env.get("PARITY_DEBUG")),
            cache_dir=cache.expanduser(),
            no_progress=_flag(env.get("PARITY_NO_PROGRESS")) or _flag(env.get("CI")),
            hf_offline=_flag(env.get("HF_HUB_OFFLINE")),
            diff_kernel=(env.get("PARITY_DIFF_KERNEL") or "").strip().lower(),
            fast_read=_on(env.get("PARITY_FAST_READ")),
            direct_io=_on(env.get("PARITY_DIRECT_IO")),
        )


def settings() -> Settings:
    return Settings.from_env()


# Variables of the inference stack that change numerics or behaviour; they are
# recorded in every manifest so a run can be reproduced and explained.
RECORDED_ENV_PREFIXES = ("VLLM_", "RBLN_", "OMP_", "MKL_", "CUDA_VISIBLE", "TORCH_")
SECRET_MARKERS = ("TOKEN", "KEY", "SECRET", "PASSWORD")


def recorded_env(env: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if env is None else env)
    return {
        k: v
        for k, v in sorted(env.items())
        if k.startswith(RECORDED_ENV_PREFIXES) and not any(m in k for m in SECRET_MARKERS)
    }

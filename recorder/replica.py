"""One replica of ``record --replicas``: its share, its CPUs, and its share recorded in this process.

Shared by the local replicas (``replicas.py``: a process each) and the Ray
replicas (``replicas_ray.py``: a task each); an error a replica reports is
raised by the driver as the same class (``replica_error``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import parity.errors as errors
from parity.errors import EngineError, ParityError
from parity.schemas.manifest import Share

from .devices.cpu import THREADS_BIND, cpu_list
from .plan import RecordConfig


@dataclass(frozen=True)
class Replica:
    """What one replica runs: its share of the recording and where its threads go."""

    share: Share
    cpus: tuple[int, ...] | None  # None: unbound (fewer CPUs than replicas)

    def describe(self) -> str:
        return f"replica {self.share} on " + (f"CPUs {cpu_list(self.cpus)}" if self.cpus else "unbound threads")


def replica_error(replica: Replica, name: str | None, message: str, hint: str | None) -> ParityError:
    """The error a replica reported (by class name: it crossed a process), raised as that class by the driver."""
    cls = getattr(errors, name or "", None)
    if not (isinstance(cls, type) and issubclass(cls, ParityError)):
        cls = EngineError
    return cls(f"{replica.describe()}: {message}", hint=hint)


def record_share(cfg: RecordConfig, replica: Replica, progress) -> tuple[Path, float, str]:
    """Records one share in this process, its threads on the replica's CPUs."""
    from .engines import environment
    from .record import record

    env = {}
    if replica.cpus:
        # Not OMP_NUM_THREADS: set, it changes which kernels run (other values, another digest,
        # than a single engine's); vLLM sizes its thread pool from the CPUs it binds.
        os.sched_setaffinity(0, replica.cpus)
        if cfg.engine.tp * cfg.engine.pp == 1:
            env[THREADS_BIND] = ",".join(map(str, replica.cpus))
    with environment(env):
        result = record(cfg, progress)
    m = result.manifest
    summary = (f"{len(m.sequences)} sequences, {m.generated_positions} generated + {m.prompt_positions} prompt "
               f"positions at {result.timings.get('generated_tokens_per_s')} tok/s ({replica.describe()})")
    return result.path, float(m.run.get("timings", {}).get("engine_start_s") or 0.0), summary

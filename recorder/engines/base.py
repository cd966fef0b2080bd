"""The engine interface: what runs the model for one recording.

An engine is built for one plan, started once, generates every planned
sequence into a row sink, and is shut down. The vLLM engine (any device
through its platform plugin) and the plain-transformers reference implement
it, so the recording itself (record.py) and its dry-run have no branch on
the device. Which engine a device runs on is the device profile's
``engine`` (devices/base.py), resolved in ``engines/__init__.py``.
"""

from __future__ import annotations

import contextlib
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Callable, NamedTuple

if TYPE_CHECKING:
    from ..plan import Plan, RecordConfig
    from ..rows import EngineRows, LocalRows
    from ..sink import Progress, WriterSpec


class Generation(NamedTuple):
    results: list[tuple[list[int], str | None]]  # per sequence: generated token ids, finish reason
    rows: "LocalRows | EngineRows"  # the sink the rows went to: statistics, then commit or abort


class Engine(ABC):
    def __init__(self, cfg: "RecordConfig", plan: "Plan", model_path: Path):
        # model_path: the model directory the engine loads (a derived checkpoint for a cut model).
        self.cfg, self.plan, self.model_path = cfg, plan, model_path

    @abstractmethod
    def engine_args(self) -> dict:
        """The arguments the engine starts with: recorded in the manifest, shown by ``--dry-run``."""

    @abstractmethod
    def start(self) -> None:
        """Loads the model; raises EngineError (one line) when that fails."""

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """The model's vocabulary (the width of a full row), once started."""

    @abstractmethod
    def generate(self, spec: "WriterSpec", progress: Callable[["Progress"], None] | None) -> Generation:
        """Generates every planned sequence, its rows going to a sink opened from ``spec``.

        Aborts that sink when generation fails; afterwards the caller commits
        or aborts it through ``Generation.rows``.
        """

    @abstractmethod
    def run_info(self, rows: "LocalRows | EngineRows") -> dict:
        """How rows were captured, for the manifest's ``run``: capture, prompt_capture, executor."""

    def shutdown(self) -> None:
        """Frees what the engine holds (worker processes, memory); called once after a started engine."""


@contextlib.contextmanager
def environment(env: dict[str, str]):
    """Sets the device's variables for one recording, then restores the previous values.

    Worker processes inherit them at start; restoring keeps one recording's
    settings (a layer limit, say) out of the next one in the same process.
    """
    previous = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in previous.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

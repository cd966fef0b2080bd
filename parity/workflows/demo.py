"""The embedded default job: golden, perturbed candidate on its trajectory, diff."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from parity import differ
from parity.recorder.devices import EngineOptions
from parity.recorder.plan import RecordConfig
from parity.recorder.record import record
from parity.recorder.tinymodel import tiny_model_dir
from parity.settings import settings

log = logging.getLogger("parity")


@dataclass(frozen=True)
class DemoResult:
    golden: Path
    candidate: Path
    report: differ.Report

    def report_text(self, color: bool = False) -> str:
        return differ.render_text(self.report, color=color)


def run_demo(*, out: Path | None, max_tokens: int, perturb: float,
             progress: Callable | None = None, note: Callable[[str], None] = log.info) -> DemoResult:
    st = settings()
    out = Path(out) if out else st.cache_dir / "demo"
    base = tiny_model_dir(st.cache_dir)
    perturbed = tiny_model_dir(st.cache_dir, perturb=perturb)
    engine = EngineOptions(max_model_len=512)
    note(f"recording the CPU golden of the tiny model ({base})")
    golden = record(RecordConfig(model=str(base), max_tokens=max_tokens, out=out, engine=engine), progress)
    note(f"golden: {golden.path}")
    note(f"recording the perturbed model (noise {perturb:g}) on the golden's trajectory")
    cand = record(RecordConfig(model=str(perturbed), golden=golden.path, out=out, engine=engine), progress)
    note(f"candidate: {cand.path}")
    return DemoResult(golden.path, cand.path, differ.diff(golden.path, cand.path))

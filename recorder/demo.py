"""The embedded default job: golden, perturbed candidate on its trajectory, diff."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from parity.settings import settings

from .devices import EngineOptions
from .record import RecordConfig, record
from .tinymodel import tiny_model_dir

log = logging.getLogger("parity")


@dataclass(frozen=True)
class DemoResult:
    golden: Path
    candidate: Path
    report: object | None

    def report_text(self, color: bool = False) -> str:
        if self.report is None:
            from parity.schemas import open_store

            m = open_store(self.candidate).manifest
            return f"candidate recorded: {m.generated_positions} positions (differ not available)"
        from parity import differ

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
    try:
        from parity import differ

        report = differ.diff(golden.path, cand.path)
    except (ImportError, AttributeError):
        report = None
    return DemoResult(golden.path, cand.path, report)

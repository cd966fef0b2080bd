"""The diff report: the summaries with their verdict (``assemble.report``), JSON output."""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from parity.errors import OutputNotWritableError

from .thresholds import Thresholds

JSON_SCHEMA = "parity.diff/1"


def jsonable(obj: Any) -> Any:
    """Plain JSON types; non-finite floats become the strings "inf", "-inf", "nan"."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        x = float(obj)
        if math.isnan(x):
            return "nan"
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        return x
    if isinstance(obj, Path):
        return str(obj)
    return obj


@dataclass
class Report:
    """Everything ``diff`` found. ``to_dict`` is the ``--json`` document.

    ``verdict`` and ``failures`` are ``verdict.judge``'s, judged once when the
    report is assembled (``assemble.report``).
    """

    reference: dict
    candidate: dict
    forced: bool
    summary: dict
    prompt: dict | None
    sequences: list[dict]
    worst: list[dict]
    thresholds: Thresholds
    warnings: list[str] = field(default_factory=list)
    kl_by_confidence: list[dict] = field(default_factory=list)
    # KL against absolute position by row kind (summary.kl_by_position): bins, slope, drift verdict.
    kl_by_position: dict = field(default_factory=dict)
    worst_detail: dict | None = None
    eps: float = 0.5
    top_n_rule: int = 5
    # Baseline vs reference and the candidate's ratios to it (floor.py); None without a baseline.
    floor: dict | None = None
    # Argmax flips by row kind, classified (flips.py).
    flips: dict = field(default_factory=dict)
    verdict: str = "report"
    failures: list[str] = field(default_factory=list)
    # Per-position arrays by row kind ("generated", "prompt"); not in the JSON.
    # With diff(details=True) also each side's top-5 ids and logprobs (2-D).
    positions: dict[str, dict[str, np.ndarray]] = field(default_factory=dict, repr=False)
    # id -> decoded text of the ids the details use (details=True with decode); not in the JSON.
    token_texts: dict[int, str] = field(default_factory=dict, repr=False)

    @property
    def exit_code(self) -> int:
        return 1 if self.verdict == "fail" else 0

    def to_dict(self) -> dict:
        """The JSON document (Python floats: inf and nan kept as floats)."""
        return {
            "schema": JSON_SCHEMA,
            "reference": self.reference,
            "candidate": self.candidate,
            "summary": self.summary,
            "sequences": self.sequences,
            "worst": self.worst,
            "verdict": self.verdict,
            "thresholds": self.thresholds.to_dict(),
            "failures": self.failures,
            "warnings": self.warnings,
            "forced_trajectory": self.forced,
            "prompt": self.prompt,
            "kl_by_confidence": self.kl_by_confidence,
            "kl_by_position": self.kl_by_position,
            "worst_detail": self.worst_detail,
            "eps": self.eps,
            "top_n_rule": self.top_n_rule,
            "floor": self.floor,
            "flips": self.flips,
        }

    def to_json(self) -> str:
        return json.dumps(jsonable(self.to_dict()), indent=2, allow_nan=False) + "\n"

    def write_json(self, path: str | Path) -> Path:
        """Writes the JSON document atomically (temporary file, then rename)."""
        return write_atomic(path, self.to_json())


def write_atomic(path: str | Path, text: str) -> Path:
    """Writes text to path through a temporary file in the same directory."""
    path = Path(path).expanduser()
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise OutputNotWritableError(f"cannot write {path}: {e.strerror or e}", hint="choose another path") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path

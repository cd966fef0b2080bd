"""Runs the `parity` command as a user does: a real subprocess, stdout/stderr, exit code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def parity(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    full_env.pop("PARITY_DEBUG", None)  # tracebacks would hide the one-line errors under test
    return subprocess.run([sys.executable, "-m", "parity.cli", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=ROOT)

"""`parity diff --baseline STORE --max-floor-ratio R` as a user runs it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from parity.differ.testing import SeqData, StoreSpec, greedy_tokens, log_softmax, write_store
from tests.support.cli_run import parity


@pytest.fixture
def stores(tmp_path):
    rng = np.random.default_rng(11)
    logits = rng.normal(0, 3, (24, 64))
    ref_rows = log_softmax(logits).astype(np.float32)
    tokens = greedy_tokens(ref_rows)

    def store(name, noise, **spec):
        rows = log_softmax(logits + rng.normal(0, noise, logits.shape)).astype(np.float32) if noise else ref_rows
        path, _ = write_store(tmp_path / name, StoreSpec(64, [SeqData([1, 2, 3], tokens, rows)], **spec))
        return str(path)

    return store("ref", 0), store("cand", 0.04, run={"forced": True}), store("base", 0.015, run={"forced": True},
                                                                           dtype="bfloat16")


def test_gate_fails_with_exit_1_and_prints_the_ratio(stores, tmp_path):
    ref, cand, base = stores
    # --no-floor-gate: the floor reported beside the candidate, the p99 ratio gate alone.
    proc = parity("diff", ref, cand, "--baseline", base, "--no-floor-gate", "--no-color", "--json",
                  str(tmp_path / "r.json"))
    assert proc.returncode == 0, proc.stderr
    floor = json.loads((tmp_path / "r.json").read_text())["floor"]
    ratio = floor["ratios"]["kl_p99"]
    assert ratio > 1 and floor["baseline"]["path"] == base
    assert f"candidate KL p99 is {ratio:.2g}x the baseline floor" in proc.stdout
    assert "verdict: report only" in proc.stdout

    failing = parity("diff", ref, cand, "--baseline", base, "--no-floor-gate", "--max-floor-ratio", f"{ratio * 0.9}",
                     "--no-color")
    assert failing.returncode == 1, failing.stderr
    assert "verdict: FAIL" in failing.stdout and "the baseline's floor" in failing.stdout
    passing = parity("diff", ref, cand, "--baseline", base, "--no-floor-gate", "--max-floor-ratio", f"{ratio * 1.1}",
                     "--tolerance", "bf16", "--no-color")
    assert passing.returncode == 0, passing.stdout
    assert "verdict: PASS" in passing.stdout and "max_floor_ratio=" in passing.stdout


@pytest.mark.parametrize("args,fragment", [
    (["--max-floor-ratio", "2"], "--baseline"),
    (["--baseline", "BASE", "--max-floor-ratio", "-1"], "non-negative"),
    (["--baseline", "MISSING"], "no store"),
])
def test_unusable_floor_options_exit_2_with_one_line(stores, tmp_path, args, fragment):
    ref, cand, base = stores
    args = [base if a == "BASE" else str(tmp_path / "missing") if a == "MISSING" else a for a in args]
    proc = parity("diff", ref, cand, *args)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and fragment in errors[0], proc.stderr

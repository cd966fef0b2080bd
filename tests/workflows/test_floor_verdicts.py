"""The default workflow separates bf16 arithmetic from bugs (the issue's table).

A tiny Llama trained here briefly (so that attention uses position: on random
weights a RoPE bug is nearly invisible) is recorded as a float32 CPU golden
with its bf16 noise floor (``record --floor bf16``) on the default prompt
suite, whose long documents reach max_model_len. Candidates are recorded in
bfloat16 on the golden's trajectory: an independent faithful implementation
(transformers, ``--device hf``) and three bugs (a wrong RoPE base, a perturbed
final norm, one layer's perturbed input norm). Plain ``parity diff GOLDEN
CANDIDATE`` must pass the faithful run and fail every bug, naming why.
Every part is real: vLLM's CPU engine, transformers, the stores, the CLI.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support import variants
from tests.support.cli_run import parity

MAX_MODEL_LEN = "512"
MAX_TOKENS = "32"


def _recorded(proc) -> Path:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return Path(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def trained(parity_cache):
    return variants.trained_tiny_model(parity_cache / "trained-tiny")


@pytest.fixture(scope="module")
def golden(trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("golden")
    return _recorded(parity("record", "--model", str(trained), "--max-model-len", MAX_MODEL_LEN,
                            "--max-tokens", MAX_TOKENS, "--floor", "bf16", "--out", str(out)))


CANDIDATES = {
    # name: (model variant, extra record options, should pass, failure fragments any of which must be named)
    "faithful hf bf16": (None, ("--device", "hf"), True, ()),
    "RoPE base 10000 -> 10500": (lambda m, d: variants.rope_base(m, d, 10500.0), (), False,
                                 ("within 4x the floor", "sigma ratio")),
    "final norm x(1+0.05N)": (lambda m, d: variants.perturb_final_norm(m, d, 0.05), (), False,
                              ("within 4x the floor", "sigma ratio")),
    "layer 0 input norm x(1+0.6N)": (lambda m, d: variants.perturb_layer_norm(m, d, 0, 0.6), (), False,
                                     ("within 4x the floor", "sigma ratio", "real argmax flips")),
}


@pytest.mark.engine
@pytest.mark.parametrize("name", list(CANDIDATES))
def test_plain_diff_against_a_golden_with_its_floor(name, trained, golden, tmp_path):
    variant, extra, should_pass, reasons = CANDIDATES[name]
    model = trained if variant is None else variant(trained, tmp_path / "model")
    cand = _recorded(parity("record", "--model", str(model), "--golden", str(golden), "--dtype", "bfloat16",
                            *extra, "--out", str(tmp_path / "cand")))
    report_path = tmp_path / "report.json"
    diffed = parity("diff", str(golden), str(cand), "--no-color", "--json", str(report_path))
    report = json.loads(report_path.read_text())
    assert report["floor"] is not None and report["floor"]["rule"] is not None  # the golden's floor, untold
    long_positions = max(s["positions"] for s in report["sequences"])
    assert long_positions >= 32
    if should_pass:
        assert diffed.returncode == 0 and report["verdict"] == "pass", report["failures"]
        assert "verdict: PASS" in diffed.stdout
    else:
        assert diffed.returncode == 1 and report["verdict"] == "fail", diffed.stdout[-2000:]
        assert any(r in f for f in report["failures"] for r in reasons), report["failures"]
        assert "verdict: FAIL" in diffed.stdout

"""``parity record --floor``: a golden and its noise floor in one invocation, on the real vLLM CPU engine."""

from __future__ import annotations

from pathlib import Path

import pytest

from parity.schemas import Store
from parity.schemas.floorlink import open_floor
from parity.schemas.layout import TMP_PREFIX
from tests.support.cli_run import parity

PROMPTS = ("--prompts", "Hello, my name is", "--prompts", "The capital of France is")


def _result(proc) -> Path:
    assert proc.returncode == 0, proc.stderr
    return Path(proc.stdout.strip().splitlines()[-1])


@pytest.mark.engine
def test_record_with_floor_then_diff_uses_it(tiny_model, tmp_path):
    out = tmp_path / "goldens"
    golden = _result(parity("record", "--model", str(tiny_model), *PROMPTS, "--max-tokens", "6",
                            "--max-model-len", "128", "--floor", "bf16", "--out", str(out)))
    g = Store.open(golden)
    link = g.manifest.floor
    assert link is not None and (link.kind, link.device, link.dtype) == ("bf16", "cpu", "bfloat16")
    floor = open_floor(g)
    fm = floor.manifest
    # Recorded on the golden's trajectory, for the same request, in bfloat16; the golden's digest is its own.
    assert fm.run["forced"] and fm.run["golden"] == g.manifest.digest and fm.request_key == g.manifest.request_key
    assert fm.request.dtype == "bfloat16" and g.manifest.request.dtype == "float32"
    assert fm.generated_positions == g.manifest.generated_positions
    assert fm.prompt_positions == g.manifest.prompt_positions
    assert [p.name for p in out.iterdir()] == [golden.name]  # nothing left beside the golden
    assert not [p for p in golden.iterdir() if p.name.startswith(TMP_PREFIX)]
    verified = parity("verify", str(golden))
    assert verified.returncode == 0 and "noise floor" in verified.stdout and link.digest in verified.stdout

    # A candidate recorded in bfloat16 on the golden: diffed with no option, against the floor.
    cand = _result(parity("record", "--model", str(tiny_model), "--golden", str(golden), "--dtype", "bfloat16",
                          "--device", "hf", "--out", str(tmp_path / "cand")))
    diffed = parity("diff", str(golden), str(cand), "--no-color")
    assert "Noise floor" in diffed.stdout and "per position: within" in diffed.stdout, diffed.stdout
    assert diffed.returncode in (0, 1) and "verdict: " in diffed.stdout


@pytest.mark.engine
@pytest.mark.parametrize("args,fragment", [
    (["--floor", "bf16", "--dtype", "bfloat16"], "would record the golden's own numerics"),
    (["--floor", "fp8"], "unknown floor"),
    (["--floor", "bf16", "--device", "rbln"], "--floor goes with a golden recording"),
])
def test_floor_option_errors_are_one_line(tiny_model, tmp_path, args, fragment):
    proc = parity("record", "--model", str(tiny_model), *PROMPTS, "--out", str(tmp_path), *args)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(errors) == 1, proc.stderr
    assert fragment in errors[0]
    assert not list(tmp_path.iterdir())  # refused before anything was recorded

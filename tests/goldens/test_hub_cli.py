"""The publish-on-CPU / pull-on-NPU workflow through the `parity` command, against the loopback Hub."""

from __future__ import annotations

from pathlib import Path

from parity.schemas import Store
from tests.support.cli_run import parity


def test_push_pull_ls_and_diff_a_hub_reference(hub, stores):
    golden = stores(prompt=(1, 2, 3))
    other = stores(prompt=(4, 5, 6))
    pushed = parity("push", str(golden), "--repo", "org/goldens")
    assert pushed.returncode == 0, pushed.stderr
    ref = pushed.stdout.strip().splitlines()[-1]
    assert ref.startswith("hf://datasets/org/goldens@") and Store.open(golden).path.name in ref
    assert parity("push", str(other), "--repo", "org/goldens").returncode == 0

    again = parity("push", str(golden), "--repo", "org/goldens")
    assert again.returncode == 0 and "nothing uploaded" in again.stderr

    listed = parity("ls", "--repo", "org/goldens")
    assert listed.returncode == 0
    assert Store.open(golden).manifest.digest in listed.stdout and Store.open(other).manifest.digest in listed.stdout

    pulled = parity("pull", ref)
    assert pulled.returncode == 0, pulled.stderr
    local = Path(pulled.stdout.strip().splitlines()[-1])
    assert local != golden and Store.open(local).verify().digest == Store.open(golden).manifest.digest

    by_digest = parity("pull", Store.open(other).manifest.digest[9:21], "--repo", "org/goldens")
    assert by_digest.returncode == 0
    assert Store.open(by_digest.stdout.strip().splitlines()[-1]).manifest.digest == Store.open(other).manifest.digest

    diffed = parity("diff", ref, str(golden), "--tolerance", "fp32", "--no-color")
    assert diffed.returncode == 0, diffed.stderr


def test_auth_failure_is_one_line(hub, stores, monkeypatch):
    golden = stores(prompt=(1, 2, 3))
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    proc = parity("push", str(golden), "--repo", "org/goldens")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "HF_TOKEN" in errors[0]

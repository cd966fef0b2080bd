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


def test_a_golden_travels_with_its_noise_floor(hub, stores, tmp_path):
    """push uploads the floor inside the golden; ls names it; pull brings and verifies both; a golden
    already on the repo without its floor is uploaded again once it carries one."""
    import numpy as np

    from parity.differ.testing import SeqData, StoreSpec, write_store
    from parity.schemas.floorlink import attach_floor, open_floor

    golden = stores(prompt=(7, 8, 9))
    g = Store.open(golden)
    s = g.manifest.sequences[0]
    rows = g.sequence_rows("generated", 0) + np.float32(0.01)
    spec = StoreSpec(vocab_size=g.vocab_size, sequences=[SeqData(list(g.manifest.request.prompts[0]),
                                                                 [int(t) for t in g.tokens(0)[s.prompt_len:]], rows)],
                     model_id=g.manifest.request.model.id, weights_digest=None, tokenizer_digest=None,
                     dtype="bfloat16", versions={"parity": "test", "cpu": "1.0"}, max_model_len=128,
                     run={"golden": g.manifest.digest, "forced": True})
    floor_path, floor_m = write_store(tmp_path / "floor", spec)

    assert parity("push", str(golden), "--repo", "org/goldens").returncode == 0
    listed = parity("ls", "--repo", "org/goldens")
    assert "FLOOR" in listed.stdout and " bf16 " not in listed.stdout

    attach_floor(g, Store.open(floor_path), "bf16")
    pushed = parity("push", str(golden), "--repo", "org/goldens")
    assert pushed.returncode == 0 and "nothing uploaded" not in pushed.stderr, pushed.stderr
    listed = parity("ls", "--repo", "org/goldens", "--json")
    import json

    [entry] = json.loads(listed.stdout)
    assert entry["floor"] == floor_m.digest and entry["floor_kind"] == "bf16"

    pulled = parity("pull", pushed.stdout.strip().splitlines()[-1])
    assert pulled.returncode == 0, pulled.stderr
    local = Store.open(Path(pulled.stdout.strip().splitlines()[-1]))
    assert local.path != golden and open_floor(local).verify().digest == floor_m.digest

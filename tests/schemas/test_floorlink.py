"""A golden's noise floor: kept inside the golden's directory, linked from its
manifest, outside its content digest, checked when followed."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from parity.differ.testing import log_softmax
from parity.errors import StoreCorruptError, UsageError
from parity.schemas import Store
from parity.schemas.floorlink import FLOOR_PREFIX, attach_floor, open_floor, store_files, verify_with_floor
from parity.schemas.layout import TMP_PREFIX
from parity.schemas.manifest import Manifest
from tests.support.cli_run import parity

V = 64


@pytest.fixture
def rng():
    return np.random.default_rng(7)


@pytest.fixture
def pair(make_store, rng):
    """(golden path, floor path): the floor recorded (synthetically) on the golden's trajectory."""
    gen = [log_softmax(rng.standard_normal((12, V)) * 3).astype(np.float32) for _ in range(2)]
    tokens = [list(np.argmax(g, axis=1)) for g in gen]
    golden, gm = make_store(gen, tokens=tokens)
    noisy = [log_softmax(g + rng.standard_normal(g.shape) * 0.01).astype(np.float32) for g in gen]
    floor, _ = make_store(noisy, tokens=tokens, dtype="bfloat16", run={"golden": gm.digest, "forced": True})
    return golden, floor


def test_attach_keeps_the_digest_and_verify_follows_the_link(pair):
    golden, floor = pair
    before = Store.open(golden).manifest
    floor_digest = Store.open(floor).manifest.digest
    after = attach_floor(Store.open(golden), Store.open(floor), "bf16")
    assert after.digest == before.digest and after.floor.digest == floor_digest
    assert not floor.exists() and (golden / after.floor.path / "zarr.json").is_file()
    reread = Store.open(golden)
    assert reread.manifest.floor == after.floor and reread.manifest.floor.kind == "bf16"
    # The content digest re-derived by verify does not cover the link.
    assert verify_with_floor(golden).digest == before.digest
    assert open_floor(reread).manifest.digest == floor_digest
    # A reader that predates the link (parses the manifest without it) derives the same digest.
    d = json.loads((golden / "zarr.json").read_text())["attributes"]["parity"]
    d.pop("floor")
    assert Manifest.parse(d).with_digests().digest == before.digest


def test_a_store_not_on_the_golden_trajectory_is_refused(make_store, pair, rng):
    golden, _ = pair
    other, _ = make_store([log_softmax(rng.standard_normal((12, V))).astype(np.float32)], run={"forced": True})
    with pytest.raises(UsageError, match="trajectory"):
        attach_floor(Store.open(golden), Store.open(other), "bf16")


def test_a_damaged_link_is_a_one_line_error(pair):
    golden, floor = pair
    m = attach_floor(Store.open(golden), Store.open(floor), "bf16")
    meta_path = golden / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"]["parity"]["floor"]["digest"] = "xxh3-128:" + "0" * 32
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(StoreCorruptError, match="not the linked"):
        open_floor(Store.open(golden))
    proc = parity("verify", str(golden))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "not the linked" in proc.stderr
    shutil.rmtree(golden / m.floor.path)
    with pytest.raises(StoreCorruptError, match="missing"):
        open_floor(Store.open(golden))
    meta["attributes"]["parity"]["floor"]["path"] = "../elsewhere"
    meta_path.write_text(json.dumps(meta))
    proc = parity("verify", str(golden))
    assert proc.returncode == 2 and "floor.path" in proc.stderr and "Traceback" not in proc.stderr


def test_store_files_are_the_store_and_its_linked_floor(pair):
    golden, floor = pair
    m = attach_floor(Store.open(golden), Store.open(floor), "bf16")
    (golden / f"{TMP_PREFIX}floor-abc").mkdir()
    (golden / f"{TMP_PREFIX}floor-abc" / "junk").write_text("x")
    (golden / f"{FLOOR_PREFIX}0000").mkdir()  # an unlinked floor: left by an interrupted replace
    (golden / f"{FLOOR_PREFIX}0000" / "zarr.json").write_text("{}")
    files = store_files(golden, m)
    rel = {p.relative_to(golden).parts[0] for p in files}
    assert m.floor.path in rel and "zarr.json" in rel
    assert not any(r.startswith(TMP_PREFIX) or (r.startswith(FLOOR_PREFIX) and r != m.floor.path) for r in rel)


def test_diff_uses_the_floor_the_golden_carries(pair, make_store, rng):
    golden, floor = pair
    attach_floor(Store.open(golden), Store.open(floor), "bf16")
    g = Store.open(golden)
    rows = [g.sequence_rows("generated", s.index) for s in g.manifest.sequences]
    tokens = [list(g.tokens(s.index)[s.prompt_len:]) for s in g.manifest.sequences]
    forced = {"golden": g.manifest.digest, "forced": True}
    faithful, _ = make_store([log_softmax(r + rng.standard_normal(r.shape) * 0.01).astype(np.float32) for r in rows],
                             tokens=tokens, run=forced, device="rbln", dtype="bfloat16")
    bugged, _ = make_store([log_softmax(r + rng.standard_normal(r.shape) * 0.1).astype(np.float32) for r in rows],
                           tokens=tokens, run=forced, device="rbln", dtype="bfloat16")
    ok = parity("diff", str(golden), str(faithful), "--no-color")
    assert ok.returncode == 0 and "Noise floor" in ok.stdout and "verdict: PASS" in ok.stdout, ok.stdout + ok.stderr
    bad = parity("diff", str(golden), str(bugged), "--no-color")
    assert bad.returncode == 1 and "within 4x the floor" in bad.stdout, bad.stdout
    plain = parity("diff", str(golden), str(bugged), "--no-floor", "--no-color")
    assert plain.returncode == 0 and "verdict: report only" in plain.stdout
    suggested = parity("diff", str(golden), "--suggest-thresholds")
    assert suggested.returncode == 0 and "suggested: --max-kl" in suggested.stdout

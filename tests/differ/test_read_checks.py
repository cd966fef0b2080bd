"""A diff checks what it reads: rows whose bytes decode cleanly (codecs and
checksums intact) but do not match the manifest's digests are refused, with
one line naming the array and the sequence, before any verdict."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from parity import differ
from parity.differ.testing import log_softmax
from parity.errors import StoreCorruptError
from tests.support.cli_run import parity

V = 96
ROWS = (24, 30, 18)


@pytest.fixture
def lying_pair(make_store, tmp_path):
    """(good, lying, other): ``lying`` is ``good``'s manifest over rows where
    sequence 1 was recorded with other values (whole chunk files swapped in
    from a store of the same layout, so every byte decodes and passes its crc)."""
    rng = np.random.default_rng(3)
    gen = [log_softmax(rng.standard_normal((n, V)) * 3).astype(np.float32) for n in ROWS]
    tokens = [list(np.argmax(g, axis=1)) for g in gen]
    good, _ = make_store(gen, tokens=tokens)
    changed = [g.copy() for g in gen]
    changed[1][5, 7] += np.float32(0.25)  # one logprob of sequence 1
    other, _ = make_store(changed, tokens=tokens, created_at="2025-02-02T00:00:00Z")
    lying = tmp_path / "lying" / good.name
    shutil.copytree(good, lying)
    shutil.rmtree(lying / "logprobs")
    shutil.copytree(other / "logprobs", lying / "logprobs")
    return good, lying, other


def test_diff_refuses_rows_that_do_not_match_their_digests(lying_pair):
    good, lying, other = lying_pair
    assert differ.diff(good, other).summary["positions"] == sum(ROWS)  # the swapped rows themselves are fine
    for ref, cand in ((good, lying), (lying, good)):
        with pytest.raises(StoreCorruptError, match=r"array 'logprobs', sequence 1: the rows read do not match"):
            differ.diff(ref, cand)


@pytest.mark.parametrize("direction", ["as reference", "as candidate"])
def test_the_cli_says_one_line_and_exits_2(lying_pair, direction):
    good, lying, _ = lying_pair
    args = (str(lying), str(good)) if direction == "as reference" else (str(good), str(lying))
    proc = parity("diff", *args, "--no-color")
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "'logprobs', sequence 1" in errors[0] and str(lying) in errors[0]
    assert "verdict" not in proc.stdout  # refused before any report


def test_rows_a_free_running_diff_skips_are_still_checked(make_store, lying_pair):
    """A free-running candidate is compared up to its first divergence; the
    rest of each sequence is read to complete the digest."""
    good, lying, _ = lying_pair
    from parity.schemas import Store

    g = Store.open(good)
    rows = [g.sequence_rows("generated", s.index) for s in g.manifest.sequences]
    tokens = [list(g.tokens(s.index)[s.prompt_len:]) for s in g.manifest.sequences]
    diverging = [list(t) for t in tokens]
    for t in diverging:
        t[2] = (t[2] + 1) % V  # every sequence diverges at its third token
    free, _ = make_store(rows, tokens=diverging)
    report = differ.diff(good, free)
    assert report.summary["positions"] < sum(ROWS)  # only up to the divergences were compared
    with pytest.raises(StoreCorruptError, match="sequence 1"):
        differ.diff(lying, free)


def test_a_manifest_edited_after_the_fact_is_refused(lying_pair):
    import json

    good, _, _ = lying_pair
    meta = json.loads((good / "zarr.json").read_text())
    meta["attributes"]["parity"]["device"]["kind"] = "rbln"  # the digests are left as they were
    (good / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(StoreCorruptError, match="does not match its content digest"):
        differ.diff(good, good)
    proc = parity("show", str(good))
    assert proc.returncode == 2 and "does not match its content digest" in proc.stderr


def test_a_block_that_fails_mid_stream_stops_the_pass_without_hanging(lying_pair, monkeypatch):
    """A read error in one block: the workers waiting for its turn to hash are released."""
    from parity.differ import stream
    from parity.errors import StoreCorruptError as Corrupt

    good, _, other = lying_pair
    real = stream._read_group
    calls = {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise Corrupt("injected: the first block cannot be read")
        return real(*args, **kwargs)

    monkeypatch.setattr(stream, "BLOCK_BYTES", 4 * V * 16)  # many small blocks: others wait on the first
    monkeypatch.setattr(stream, "_read_group", failing)
    with pytest.raises(Corrupt, match="injected"):
        differ.diff(good, other)


def test_the_same_store_twice_is_checked_once_per_block(lying_pair):
    from parity.schemas import Store

    good, lying, _ = lying_pair
    s = Store.open(good)
    reports = differ.compare(s, [s, s])
    assert [r.summary["positions"] for r in reports] == [sum(ROWS)] * 2
    bad = Store.open(lying)
    with pytest.raises(StoreCorruptError, match="sequence 1"):
        differ.compare(s, [bad, bad])


def test_workers_asking_for_an_array_check_at_once_get_the_same_one(lying_pair, monkeypatch):
    """Two workers making an array's check at the same moment must share it: separate
    checks would take separate turns and the workers would wait for each other forever."""
    import threading
    import time

    from parity.schemas import Store, streamcheck

    class Slow(streamcheck.RowCheck):
        def __init__(self, *args):
            time.sleep(0.05)  # both workers inside the constructor at once
            super().__init__(*args)

    monkeypatch.setattr(streamcheck, "RowCheck", Slow)
    checks = streamcheck.Checks()
    store = Store.open(lying_pair[0])
    got = []
    workers = [threading.Thread(target=lambda: got.append(checks.of(store, "logprobs"))) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert len(got) == 2 and got[0] is got[1]

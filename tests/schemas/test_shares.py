"""Shares of a sharded recording and merging them; what the schema-4 content digest covers.

Stores here are written by the real StoreWriter from deterministic rows; the
engine tests (tests/recorder/test_shards_engine.py) do the same with vLLM.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import zarr

from parity.differ.api import diff
from parity.errors import IncompatibleStoresError, PartialStoreError, StoreCorruptError, UsageError
from parity.recorder.plan import share_members
from parity.schemas import GENERATED, PROMPT, Device, Store, StoreWriter
from parity.schemas.layout import TMP_PREFIX
from parity.schemas.manifest import Share
from parity.schemas.merge import merge_shares
from tests.support.cli_run import assert_one_line_error
from tests.support.cli_run import parity as run_cli
from tests.support.stores import TOKENS, V, share_rows as _rows, share_manifest as _manifest, write_share as write

@pytest.fixture
def two_shares(tmp_path):
    a, _ = write(tmp_path / "shares", (0, 2), Share(1, 2), created_at="2026-03-01T10:00:00+00:00")
    b, _ = write(tmp_path / "shares", (1,), Share(2, 2), created_at="2026-03-01T11:00:00+00:00",
                 device=Device(kind="cpu", versions={"vllm": "0"}, host={"hostname": "other"}))
    return a, b


# -- the content digest (schema 4) -------------------------------------------------
def test_when_where_and_how_fast_are_outside_the_content_digest(tmp_path):
    _, m = write(tmp_path / "a")
    _, other = write(tmp_path / "b", created_at="2027-05-05T00:00:00+00:00",
                     device=Device(kind="cpu", versions={"vllm": "0"}, env={"OMP_NUM_THREADS": "1"},
                                   host={"hostname": "elsewhere"}))
    assert other.digest == m.digest
    assert other.created_at != m.created_at  # still recorded, in the manifest
    changed = replace(other, device=replace(other.device, versions={"vllm": "1"}), digest="").with_digests()
    assert changed.digest != m.digest  # what produced the values is covered


def test_schema_3_digests_still_cover_the_whole_manifest():
    m = replace(_manifest((0, 1, 2)), schema_version=3)
    later = replace(m, created_at="2027-05-05T00:00:00+00:00")
    assert m.with_digests().digest != later.with_digests().digest


def test_the_same_values_in_the_batched_layout_have_the_same_digest(tmp_path):
    packed, m = write(tmp_path / "a")
    aligned, a = write(tmp_path / "b", aligned=True)
    assert a.arrays["logprobs"].shape[0] > m.arrays["logprobs"].shape[0]  # padding rows
    assert a.digest == m.digest
    assert Store.open(aligned).verify().digest == Store.open(packed).verify().digest


def test_other_values_have_another_digest(tmp_path):
    _, m = write(tmp_path / "a")
    with StoreWriter(tmp_path / "b", vocab_size=V) as w:
        for seq in range(3):
            rows = _rows(seq, GENERATED)
            if seq == 2:
                rows[1, 5] = np.nextafter(rows[1, 5], 0)
            w.append_rows(GENERATED, seq, rows)
            w.append_rows(PROMPT, seq, _rows(seq, PROMPT))
        _, other = w.commit(_manifest((0, 1, 2)), list(TOKENS))
    assert other.digest != m.digest


def test_recording_identical_content_again_keeps_the_store_that_is_there(tmp_path):
    first, m = write(tmp_path)
    again, m2 = write(tmp_path, created_at="2027-01-01T00:00:00+00:00")
    assert again == first and m2.digest == m.digest
    assert Store.open(first).manifest.created_at == m.created_at
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(TMP_PREFIX)]


# -- shares --------------------------------------------------------------------------
def test_a_share_is_named_as_one_and_refused_where_a_store_is_needed(two_shares, tmp_path):
    a, b = two_shares
    assert a.name.endswith(".share-1-of-2.parity-share.zarr")
    with pytest.raises(PartialStoreError, match=r"share 1/2 of a sharded recording \(2 of its 3 sequences\)"):
        Store.open(a)
    share = Store.open(a, partial=True)
    assert [s.index for s in share.manifest.sequences] == [0, 2]
    np.testing.assert_array_equal(share.sequence_rows(GENERATED, 1), _rows(2, GENERATED))
    assert share.verify().digest == share.manifest.digest
    full, _ = write(tmp_path / "full")
    with pytest.raises(PartialStoreError):
        diff(full, a)


def test_merged_shares_have_the_digest_of_the_single_recording(two_shares, tmp_path):
    full, single = write(tmp_path / "full")
    result = merge_shares(list(two_shares), tmp_path / "merged")
    assert result.manifest.digest == single.digest
    assert result.path.name == full.name
    merged = Store.open(result.path)
    assert merged.verify().digest == single.digest
    for seq in range(3):
        np.testing.assert_array_equal(merged.sequence_rows(GENERATED, seq), _rows(seq, GENERATED))
        assert list(merged.tokens(seq)) == TOKENS[seq]
    m = merged.manifest
    assert m.share is None and m.created_at == "2026-03-01T11:00:00+00:00"  # the latest share's
    assert [s["sequences"] for s in m.run["shares"]] == [[0, 2], [1]]
    assert m.run["shares"][1]["host"] == {"hostname": "other"}
    # Merging again gives the same store, byte for byte in its manifest.
    again = merge_shares(list(two_shares), tmp_path / "again")
    assert json.loads((again.path / "zarr.json").read_text()) == json.loads((result.path / "zarr.json").read_text())


def test_merge_refuses_a_missing_share(two_shares, tmp_path):
    with pytest.raises(UsageError, match=r"share 2/2 is missing \(1 of 2 shares given\)"):
        merge_shares([two_shares[0]], tmp_path / "out")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_merge_refuses_a_share_given_twice(two_shares, tmp_path):
    copy, _ = write(tmp_path / "elsewhere", (0, 2), Share(1, 2), created_at="2026-03-02T00:00:00+00:00",
                    device=Device(kind="cpu", versions={"vllm": "0"}, host={"hostname": "third"}))
    with pytest.raises(UsageError, match="share 1/2 is given twice"):
        merge_shares([*two_shares, copy], tmp_path / "out")


def test_merge_refuses_shares_of_another_split(two_shares, tmp_path):
    third, _ = write(tmp_path / "three", (1,), Share(2, 3))
    with pytest.raises(IncompatibleStoresError, match="shares of one recording have one count"):
        merge_shares([two_shares[0], third], tmp_path / "out")


def test_merge_refuses_a_sequence_in_two_shares(two_shares, tmp_path):
    overlapping, _ = write(tmp_path / "o", (1, 2), Share(2, 2))
    with pytest.raises(IncompatibleStoresError, match="sequence 2 is in share 1/2 and in share 2/2"):
        merge_shares([two_shares[0], overlapping], tmp_path / "out")


def test_merge_refuses_shares_of_other_versions(two_shares, tmp_path):
    other, _ = write(tmp_path / "v", (1,), Share(2, 2), device=Device(kind="cpu", versions={"vllm": "0.99"}))
    with pytest.raises(IncompatibleStoresError, match=r"differ in device\.versions\.vllm \('0' against '0\.99'\)"):
        merge_shares([two_shares[0], other], tmp_path / "out")


def test_merge_refuses_a_complete_store(two_shares, tmp_path):
    full, _ = write(tmp_path / "full")
    with pytest.raises(UsageError, match="is a complete store, not a share"):
        merge_shares([two_shares[0], full], tmp_path / "out")


def test_merge_refuses_a_share_whose_rows_do_not_match_and_leaves_nothing(two_shares, tmp_path):
    a, b = two_shares
    # A row rewritten through zarr: its chunk's checksum is right, only the
    # share's block digest can tell.
    rows = zarr.open_array(a / "logprobs", mode="r+")
    starts = Store.open(a, partial=True).row_offsets(GENERATED)
    rows[int(starts[1]) + 1, 5] = 0.0
    out = tmp_path / "out"
    with pytest.raises(StoreCorruptError, match="array 'logprobs', sequence 2: does not match"):
        merge_shares([a, b], out)
    assert list(out.iterdir()) == []  # neither a store nor its temporary directory


def test_an_interrupted_merge_leaves_nothing(two_shares, tmp_path):
    out = tmp_path / "out"

    def interrupt(done, total):
        if done:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        merge_shares(list(two_shares), out, progress=interrupt)
    assert list(out.iterdir()) == []


def test_share_members_balance_positions_and_depend_on_the_request_only():
    costs = [1000, 20, 30, 990, 25, 10]
    shares = [share_members(costs, Share(i, 2)) for i in (1, 2)]
    assert sorted(shares[0] + shares[1]) == list(range(6))
    assert shares == [[0, 4, 5], [1, 2, 3]]
    loads = [sum(costs[i] for i in s) for s in shares]
    assert abs(loads[0] - loads[1]) <= max(costs[1:])
    assert shares == [share_members(costs, Share(i, 2)) for i in (1, 2)]
    with pytest.raises(UsageError, match="--shard 7/7: the request has 6 sequences, fewer than 7 shares"):
        share_members(costs, Share(7, 7))


# -- the command line ----------------------------------------------------------------
def test_merge_command_prints_the_store_and_refuses_in_one_line(two_shares, tmp_path):
    _, single = write(tmp_path / "full")
    res = run_cli(*["merge", *map(str, two_shares), "--out", str(tmp_path / "m")])
    assert res.returncode == 0, res.stderr
    assert Store.open(res.stdout.strip()).manifest.digest == single.digest
    assert "merged 2 shares: 3 sequences" in res.stderr
    assert_one_line_error(run_cli(*["merge", str(two_shares[0])]), "share 2/2 is missing")
    assert_one_line_error(run_cli(*["diff", str(tmp_path / "full" / Path(res.stdout.strip()).name), str(two_shares[0])]),
                          "is share 1/2 of a sharded recording")
    shown = run_cli(*["show", str(two_shares[1])])
    assert shown.returncode == 0 and "share        2/2 of a sharded recording: 1 of 3 sequences" in shown.stdout
    verified = run_cli(*["verify", str(two_shares[1])])
    assert verified.returncode == 0 and "share 2/2 of a sharded recording" in verified.stdout

"""Bad input: each case raises the right parity error with a one-line message."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from parity.schemas import Store

from parity import differ
from parity.differ.testing import pair_rows
from parity.errors import (
    IncompatibleStoresError,
    NotAStoreError,
    ParityError,
    SchemaVersionError,
    StoreCorruptError,
    StoreNotFoundError,
)


@pytest.fixture
def two(make_store, rng):
    ref, cand = pair_rows(rng, 40)
    ref_path, ref_m = make_store([ref])
    cand_path, _ = make_store([cand], tokens=[list(np.argmax(ref, axis=1))], run={"golden": ref_m.digest})
    return ref_path, cand_path


def raises_one_line(cls, fn, *match):
    with pytest.raises(cls) as e:
        fn()
    assert isinstance(e.value, ParityError)
    line = e.value.one_line()
    assert "\n" not in line and line
    for m in match:
        assert m in str(e.value)
    return e.value


def test_missing_path(two, tmp_path):
    ref, _ = two
    raises_one_line(StoreNotFoundError, lambda: differ.diff(ref, tmp_path / "nope"), "nope")


def test_not_a_store(two, tmp_path):
    ref, _ = two
    (tmp_path / "plain").mkdir()
    raises_one_line(NotAStoreError, lambda: differ.diff(tmp_path / "plain", ref))
    other = tmp_path / "zarr-group"
    other.mkdir()
    (other / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}}))
    raises_one_line(NotAStoreError, lambda: differ.diff(ref, other), "not a parity store")


def test_newer_schema_version(two, tmp_path):
    ref, cand = two
    newer = tmp_path / "newer.parity.zarr"
    shutil.copytree(cand, newer)
    meta = json.loads((newer / "zarr.json").read_text())
    meta["attributes"]["parity"]["schema_version"] = 99
    (newer / "zarr.json").write_text(json.dumps(meta))
    raises_one_line(SchemaVersionError, lambda: differ.diff(ref, newer), "99")


def test_vocab_mismatch(make_store, rng):
    a, _ = pair_rows(rng, 5, vocab=512)
    b, _ = pair_rows(rng, 5, vocab=600)
    pa, _ = make_store([a])
    pb, _ = make_store([b])
    raises_one_line(IncompatibleStoresError, lambda: differ.diff(pa, pb), "512", "600")


def test_prompt_mismatch(make_store, rng):
    a, b = pair_rows(rng, 5)
    pa, _ = make_store([a, a], prompts=[[1, 2, 3], [4, 5, 6]])
    pb, _ = make_store([b, b], prompts=[[1, 2, 3], [4, 9, 6]])
    raises_one_line(IncompatibleStoresError, lambda: differ.diff(pa, pb), "sequence 1")
    pc, _ = make_store([b], prompts=[[1, 2, 3]])
    raises_one_line(IncompatibleStoresError, lambda: differ.diff(pa, pc), "2", "1")


def test_tokenizer_mismatch_is_an_error_weights_a_warning(make_store, rng):
    a, b = pair_rows(rng, 5)
    pa, _ = make_store([a])
    pb, _ = make_store([b], tokenizer_digest="other-tokenizer")
    raises_one_line(IncompatibleStoresError, lambda: differ.diff(pa, pb), "tokenizer")
    pc, _ = make_store([b], weights_digest="w2", device="rbln", versions={"vllm": "9.9"}, dtype="bfloat16")
    report = differ.diff(pa, pc)
    text = " | ".join(report.warnings)
    for word in ("weights digest", "device", "vllm version", "dtype"):
        assert word in text
    assert "weights digest" in differ.render_text(report, color=False)


def test_tokenizer_digests_of_schema_1_and_2_are_not_compared(make_store, rng):
    # Schema 1 digested tokenizer file bytes, schema 2 what decides the ids.
    a, b = pair_rows(rng, 5)
    old, _ = make_store([a], tokenizer_digest="file-bytes", schema_version=1)
    new, _ = make_store([b], tokenizer_digest="semantic")
    report = differ.diff(old, new)
    assert any("schema 1 and 2" in w for w in report.warnings)
    # Prompt token ids are still compared exactly.
    other, _ = make_store([b], tokenizer_digest="semantic", prompts=[[9, 9, 9]])
    raises_one_line(IncompatibleStoresError, lambda: differ.diff(old, other), "prompt token ids differ")


def _chunk_file(store_path):
    files = sorted(p for p in (store_path / "logprobs" / "c").rglob("*") if p.is_file())
    assert files, "expected chunk files under logprobs/c"
    return files[0]


def test_truncated_store(two):
    ref, cand = two
    f = _chunk_file(cand)
    assert f.relative_to(cand).as_posix() == "logprobs/c/0/0"
    f.unlink()
    raises_one_line(StoreCorruptError, lambda: differ.diff(ref, cand), "logprobs")


def test_corrupted_chunk(two):
    ref, cand = two
    f = _chunk_file(cand)
    data = bytearray(f.read_bytes())
    mid = len(data) // 3
    for i in range(mid, mid + 16):
        data[i] ^= 0xFF
    f.write_bytes(bytes(data))
    err = raises_one_line(StoreCorruptError, lambda: differ.diff(ref, cand), "logprobs")
    # The diff reads rows without their crc32c and checks their digests instead:
    # damaged bytes either fail to decode or decode to rows that fail the digest.
    assert "cannot read" in str(err) or "do not match their recorded digest" in str(err)
    # verify still checks every chunk's crc32c.
    with pytest.raises(StoreCorruptError, match="cannot read logprobs"):
        Store.open(cand).verify()


@pytest.mark.parametrize("fast", ["1", "0"], ids=["own-open", "zarr-open"])
def test_open_checks_arrays_on_both_paths(two, tmp_path, monkeypatch, fast):
    # Store.open reads zarr.json files itself when the fast reader is on, and
    # through zarr when it is off: the same checks, the same errors.
    monkeypatch.setenv("PARITY_FAST_READ", fast)
    ref, cand = two
    missing = tmp_path / "missing.parity.zarr"
    shutil.copytree(cand, missing)
    shutil.rmtree(missing / "token_ids")
    raises_one_line(StoreCorruptError, lambda: differ.diff(ref, missing), "'token_ids' is missing")
    reshaped = tmp_path / "reshaped.parity.zarr"
    shutil.copytree(cand, reshaped)
    meta = json.loads((reshaped / "token_ids" / "zarr.json").read_text())
    meta["shape"] = [meta["shape"][0] + 1]
    (reshaped / "token_ids" / "zarr.json").write_text(json.dumps(meta))
    raises_one_line(StoreCorruptError, lambda: differ.diff(ref, reshaped), "'token_ids' has shape")
    broken = tmp_path / "broken.parity.zarr"
    shutil.copytree(cand, broken)
    (broken / "zarr.json").write_text("{not json")
    raises_one_line(NotAStoreError, lambda: differ.diff(ref, broken), "not a readable Zarr group")
    assert differ.diff(ref, cand).summary["positions"] > 0

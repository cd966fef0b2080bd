"""The store format contract: round trips, content addressing, verification, atomicity."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from parity.errors import NotAStoreError, SchemaVersionError, StoreCorruptError, StoreNotFoundError
from parity.schemas import (
    GENERATED, PROMPT, SCHEMA_VERSION, Device, Manifest, Store, StoreWriter,
    canonical_json, hash_array,
)
from parity.schemas.digest import parse_tagged
from parity.schemas.layout import ATTR_KEY
from tests.support.stores import V, deterministic_manifest, deterministic_rows, write_deterministic

# Pinned: a change to canonical JSON, the digest domains, the array hashing or
# the manifest layout changes this value. Such a change needs a new
# schema_version and a line in SPEC.md, then a new pin.
PINNED_DIGEST = "xxh3-128:cded5baa91261bed63687253c584c67f"
# The same store written as schema 3 (the digest over the whole manifest, not
# its content view): the pin parity wrote before version 4.
PINNED_DIGEST_V3 = "xxh3-128:a109d734bec60233bce94dadfdacb998"
# The same store written as schema 2 (row arrays without their sequence
# blocks' digests): the pin parity wrote before version 3.
PINNED_DIGEST_V2 = "xxh3-128:abef8b8b11c8fee562a657634a48496a"
# The same store written as schema 1: the pin parity wrote before version 2
# (only the tokenizer digest's definition changed, and schema_version is in
# the manifest), so version-1 stores on disk and on the Hub keep verifying.
PINNED_DIGEST_V1 = "xxh3-128:cb1c5a115895fd745afc1c914cf58c62"


def test_known_digest_is_pinned(tmp_path):
    path, manifest = write_deterministic(tmp_path)
    assert SCHEMA_VERSION == 4
    assert manifest.digest == PINNED_DIGEST
    assert path.name == parse_tagged(PINNED_DIGEST)[:24] + ".parity.zarr"
    store = Store.open(path)
    assert store.manifest.schema_version == 4
    # Row arrays list their sequence blocks' digests; 1-D arrays do not.
    assert len(store.manifest.arrays["logprobs"].blocks) == len(store.manifest.sequences)
    assert store.manifest.arrays["token_ids"].blocks is None


def test_version_3_store_still_opens_and_verifies(tmp_path):
    """Schema 3 digested the whole manifest (created_at, timings, host and all): its stores keep their digest."""
    path, manifest = write_deterministic(tmp_path, schema_version=3)
    assert manifest.digest == PINNED_DIGEST_V3
    store = Store.open(path)
    assert store.manifest.schema_version == 3
    assert store.verify().digest == PINNED_DIGEST_V3


def test_version_2_store_still_opens_and_verifies(tmp_path):
    path, manifest = write_deterministic(tmp_path, schema_version=2)
    assert manifest.digest == PINNED_DIGEST_V2  # what parity wrote under schema 2
    store = Store.open(path)
    assert store.manifest.arrays["logprobs"].blocks is None
    assert store.verify().digest == PINNED_DIGEST_V2


def test_a_damaged_block_is_named_by_its_sequence(tmp_path):
    """With block digests, verify names the sequence whose rows do not match."""
    path, _ = write_deterministic(tmp_path)
    meta = json.loads((path / "zarr.json").read_text())
    blocks = meta["attributes"][ATTR_KEY]["arrays"]["logprobs"]["blocks"]
    blocks[1] = blocks[1][:-4] + "0000"
    (path / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(StoreCorruptError, match="array 'logprobs', sequence 1: does not match"):
        Store.open(path).verify()


def test_version_1_store_still_opens_and_verifies(tmp_path):
    path, manifest = write_deterministic(tmp_path, schema_version=1)
    assert manifest.digest == PINNED_DIGEST_V1  # what parity wrote under schema 1
    store = Store.open(path)
    assert store.manifest.schema_version == 1
    assert store.verify().digest == PINNED_DIGEST_V1
    np.testing.assert_array_equal(store.sequence_rows(GENERATED, 0), deterministic_rows(3, 0))


def test_round_trip_reads_back_what_was_written(tmp_path):
    path, manifest = write_deterministic(tmp_path)
    store = Store.open(path)
    np.testing.assert_array_equal(store.sequence_rows(GENERATED, 0), deterministic_rows(3, 0))
    np.testing.assert_array_equal(store.sequence_rows(GENERATED, 1), deterministic_rows(2, 3))
    np.testing.assert_array_equal(store.sequence_rows(PROMPT, 1), deterministic_rows(1, 12))
    assert list(store.tokens(1)) == [4, 5, 6, 6]
    seqs, positions = store.row_positions(GENERATED)
    assert list(seqs) == [0, 0, 0, 1, 1] and list(positions) == [3, 4, 5, 2, 3]
    assert store.manifest.to_dict() == json.loads(json.dumps(manifest.to_dict()))
    assert store.verify().digest == manifest.digest


def test_interleaved_rows_are_stored_in_sequence_order_with_the_same_digest(tmp_path):
    _, ordered = write_deterministic(tmp_path / "a")
    path, interleaved = write_deterministic(tmp_path / "b", interleave=True)
    assert interleaved.arrays["logprobs"].digest == ordered.arrays["logprobs"].digest
    np.testing.assert_array_equal(Store.open(path).sequence_rows(GENERATED, 0), deterministic_rows(3, 0))


def test_digest_is_independent_of_chunking():
    rows = deterministic_rows(5)
    assert hash_array(rows) == hash_array(np.ascontiguousarray(rows.copy(order="F")))
    assert hash_array(rows) != hash_array(rows[:4])
    assert hash_array(rows.astype(np.float32)) != hash_array(rows.astype(np.float64))


def test_request_key_ignores_the_device_and_follows_the_request():
    m = deterministic_manifest()
    other_device = Manifest(**{**m.__dict__, "device": Device(kind="rbln")})
    assert m.with_digests().request_key == other_device.with_digests().request_key
    assert m.with_digests().digest != other_device.with_digests().digest
    other_prompts = deterministic_manifest(prompts=((1, 2, 3), (4, 6)))
    assert other_prompts.with_digests().request_key != m.with_digests().request_key


def test_canonical_json_is_sorted_compact_and_rejects_nan():
    assert canonical_json({"b": 1, "a": [1, "é"]}) == '{"a":[1,"é"],"b":1}'.encode()
    with pytest.raises(ValueError):
        canonical_json({"x": math.nan})


def test_verify_catches_a_flipped_byte_in_a_chunk(tmp_path):
    path, _ = write_deterministic(tmp_path)
    shard = path / "logprobs" / "c" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(StoreCorruptError):
        Store.open(path).verify()


def test_verify_catches_an_edited_manifest(tmp_path):
    path, _ = write_deterministic(tmp_path)
    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"][ATTR_KEY]["request"]["max_tokens"] = 99
    (path / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(StoreCorruptError, match="request key|content digest"):
        Store.open(path).verify()


def test_missing_chunk_file_is_a_truncated_store(tmp_path):
    path, _ = write_deterministic(tmp_path)
    (path / "prompt_logprobs" / "c" / "0" / "0").unlink()
    with pytest.raises(StoreCorruptError, match="truncated"):
        Store.open(path)


@pytest.mark.parametrize("version,error,message", [
    (5, SchemaVersionError, "reads up to 4"),     # newer than this reader
    (0, NotAStoreError, "schema_version 0"),      # below the first version
])
def test_schema_versions_this_reader_does_not_know_are_refused(tmp_path, version, error, message):
    path, _ = write_deterministic(tmp_path)
    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"][ATTR_KEY]["schema_version"] = version
    (path / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(error, match=message):
        Store.open(path)


def test_missing_and_foreign_paths_are_clear_errors(tmp_path):
    with pytest.raises(StoreNotFoundError):
        Store.open(tmp_path / "nope")
    (tmp_path / "plain").mkdir()
    with pytest.raises(NotAStoreError):
        Store.open(tmp_path / "plain")


def test_aborted_writer_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with StoreWriter(tmp_path, vocab_size=V) as w:
            w.append_rows(GENERATED, 0, deterministic_rows(2))
            raise RuntimeError("crash while recording")
    assert list(tmp_path.iterdir()) == []


def test_uncommitted_temporary_store_is_not_a_store(tmp_path):
    w = StoreWriter(tmp_path, vocab_size=V)
    w.append_rows(GENERATED, 0, deterministic_rows(2))
    (tmp_dir,) = list(tmp_path.iterdir())
    assert tmp_dir.name.startswith(".parity-tmp-")
    with pytest.raises(NotAStoreError):
        Store.open(tmp_dir)
    w.abort()
    assert list(tmp_path.iterdir()) == []


def test_commit_refuses_row_counts_that_disagree_with_the_manifest(tmp_path):
    with StoreWriter(tmp_path, vocab_size=V) as w:
        w.append_rows(GENERATED, 0, deterministic_rows(2))
        with pytest.raises(StoreCorruptError):
            w.commit(deterministic_manifest(), [[1, 2, 3, 7, 8, 9], [4, 5, 6, 6]])
    assert list(tmp_path.iterdir()) == []


def test_nan_and_inf_rows_are_stored_as_they_are(tmp_path):
    rows = deterministic_rows(3)
    rows[1, 5] = np.nan
    rows[2, :] = -np.inf
    rows[2, 0] = 0.0
    with StoreWriter(tmp_path, vocab_size=V) as w:
        w.append_rows(GENERATED, 0, rows)
        w.append_rows(GENERATED, 1, deterministic_rows(2))
        w.append_rows(PROMPT, 0, deterministic_rows(2))
        w.append_rows(PROMPT, 1, deterministic_rows(1))
        path, _ = w.commit(deterministic_manifest(), [[1, 2, 3, 7, 8, 9], [4, 5, 6, 6]])
    back = Store.open(path).sequence_rows(GENERATED, 0)
    assert np.isnan(back[1, 5]) and np.isneginf(back[2, 1]) and back[2, 0] == 0.0


def test_aligned_layout_for_batched_rows_reads_back_and_keeps_row_digests(tmp_path):
    # Batched decoding: rows of both sequences interleave, and sequence 1 stops
    # early (2 of 5 reserved rows). Each sequence writes into its own region.
    _, packed = write_deterministic(tmp_path / "packed")
    reserve = {GENERATED: [3, 5], PROMPT: [2, 1]}
    with StoreWriter(tmp_path / "aligned", vocab_size=V, reserve=reserve, lanes=2) as w:
        w.append_rows(PROMPT, 0, deterministic_rows(2, 10))
        w.append_rows(PROMPT, 1, deterministic_rows(1, 12))
        w.append_rows(GENERATED, 1, deterministic_rows(1, 3))
        w.append_rows(GENERATED, 0, deterministic_rows(1, 0))
        w.append_rows(GENERATED, 1, deterministic_rows(1, 4))
        w.finish_sequence(1)
        w.append_rows(GENERATED, 0, deterministic_rows(2, 1))
        path, aligned = w.commit(deterministic_manifest(), [[1, 2, 3, 7, 8, 9], [4, 5, 6, 6]])
    store = Store.open(path)
    offsets = store.row_offsets(GENERATED)
    assert offsets[1] > 3, "sequence 1 starts on its own region, after padding"
    np.testing.assert_array_equal(store.sequence_rows(GENERATED, 0), deterministic_rows(3, 0))
    np.testing.assert_array_equal(store.sequence_rows(GENERATED, 1), deterministic_rows(2, 3))
    np.testing.assert_array_equal(store.sequence_rows(PROMPT, 0), deterministic_rows(2, 10))
    for name in ("logprobs", "prompt_logprobs"):
        assert aligned.arrays[name].digest == packed.arrays[name].digest  # logical content only
    assert store.verify().digest == aligned.digest


def test_shards_written_directly_are_what_zarr_writes(tmp_path):
    # The writer encodes whole shards itself (SPEC.md, "Chunking"). zarr must
    # read them back, padding and never-written chunks included, and writing
    # the same rows through zarr must give the same shard bytes.
    import zarr
    from zarr.storage import LocalStore

    from parity.schemas.layout import row_codecs as _row_codecs

    reserve = {GENERATED: [40, 40], PROMPT: [0, 0]}
    with StoreWriter(tmp_path / "out", vocab_size=V, reserve=reserve, lanes=2) as w:
        w.append_rows(GENERATED, 0, deterministic_rows(40, 0))  # 2 whole chunks + 1 padded
        w.append_rows(GENERATED, 1, deterministic_rows(5, 40))  # 1 padded chunk, 2 never written
        stream = w.streams["logprobs"]
        w.finish_sequence(0)
        w.finish_sequence(1)
        stream._drain()
        shard_rows = stream.shard_rows
        root = w.tmp
        array = zarr.open_array(store=LocalStore(root), path="logprobs", mode="r")
        expected = np.zeros((2 * shard_rows, V), np.float32)
        expected[:40] = deterministic_rows(40, 0)
        expected[shard_rows : shard_rows + 5] = deterministic_rows(5, 40)
        assert shard_rows == 48
        np.testing.assert_array_equal(array[:], expected)

        scratch = zarr.open_group(store=LocalStore(tmp_path / "zarr"), mode="w", zarr_format=3)
        ref = scratch.create_array("logprobs", shape=array.shape, dtype=np.float32, chunks=(16, V),
                                   shards=(shard_rows, V), fill_value=0, **_row_codecs())
        ref[:40] = expected[:40]
        ref[shard_rows : shard_rows + 5] = expected[shard_rows : shard_rows + 5]
        for shard in ("c/0/0", "c/1/0"):
            assert (root / "logprobs" / shard).read_bytes() == (tmp_path / "zarr" / "logprobs" / shard).read_bytes()
        w.abort()


def test_lanes_filling_their_shards_together_do_not_wait_on_the_writer(tmp_path):
    # Batched decoding fills every lane's shard in the same step. With room
    # for fewer writes in flight than lanes, the engine's thread (here: the
    # appending thread) would block until the writer catches up.
    import threading

    lanes = 4
    reserve = {GENERATED: [40] * lanes, PROMPT: [0] * lanes}
    with StoreWriter(tmp_path / "out", vocab_size=V, reserve=reserve, lanes=lanes) as w:
        stream = w.streams["logprobs"]
        release = threading.Event()
        w.pool.submit(release.wait)  # the writer is busy until released
        done = threading.Event()

        def fill_every_lane():
            for seq in range(lanes):
                w.append_rows(GENERATED, seq, deterministic_rows(stream.shard_rows, seq))
            done.set()

        appender = threading.Thread(target=fill_every_lane, daemon=True)
        appender.start()
        try:
            assert done.wait(10), "appending blocked on the busy writer"
            assert len(stream.pending) == lanes
        finally:
            release.set()
            appender.join(10)
        stream._drain()
        w.abort()

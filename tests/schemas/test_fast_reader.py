"""The shard reader (schemas/shards.py) against zarr, the format's reference reader.

Every row the fast path returns must be bit-identical to zarr's, for every
layout the writer produces; corruption must give the same one-line errors and
exit codes as before; metadata the fast path does not know must go to zarr.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import google_crc32c
import numpy as np
import pytest
import zarr
from zarr.storage import LocalStore

from parity import differ
from parity.differ.testing import SeqData, StoreSpec, build_manifest
from parity.errors import StoreCorruptError
from parity.schemas import layout as store_mod
from parity.schemas.shards import EMPTY, ArrayReader
from parity.schemas import GENERATED, PROMPT, Store, StoreWriter
from parity.schemas.layout import row_array_names

ROOT = Path(__file__).resolve().parents[2]
V = 40
TOPN = 6
SHARD_ROWS = 48  # three 16-row chunks a shard: reads cross chunk and shard edges
PROMPTS = [[5, 6, 7, 8], [9, 10], [11, 12, 13]]
GEN_LENS = [37, 16, 53]  # ends mid-chunk, on a chunk edge, past a shard edge


@pytest.fixture(autouse=True)
def small_shards(monkeypatch):
    monkeypatch.setattr(store_mod, "SHARD_TARGET_BYTES", SHARD_ROWS * V * 4)


def special_rows(rng, n: int, width: int, seed: int) -> np.ndarray:
    """Rows with what must survive bit for bit: NaNs with payloads, +-inf, -0.0."""
    rows = (rng.standard_normal((n, width)) * 3 - 5).astype(np.float32)
    bits = rows.view(np.uint32)
    if n > 3:
        bits[1, 2] = 0x7FC00000 | seed  # quiet NaN, payload
        bits[2, 3] = 0xFFA00001  # negative NaN, payload
        rows[3, :] = -np.inf
        rows[3, 0] = 0.0
        rows[0, 1] = np.inf
        rows[0, 4] = -0.0
    return rows


def write(out: Path, layout: str, topn: int | None = None, seed: int = 0) -> Path:
    """A store in one of the writer's layouts: "packed", "interleaved" (packed,
    rows arriving out of order: the reorder pass), "aligned" or
    "aligned-3lanes" (batched: regions of whole shards)."""
    rng = np.random.default_rng(seed)
    width = topn or V
    gen = [special_rows(rng, n, width, seed + i) for i, n in enumerate(GEN_LENS)]
    prompt = [special_rows(rng, len(p) - 1, width, seed + 10 + i) for i, p in enumerate(PROMPTS)]
    ids = lambda n: np.stack([rng.permutation(V)[:width] for _ in range(n)]).astype(np.int32)  # noqa: E731
    gen_ids = [ids(len(g)) for g in gen] if topn else [None] * len(gen)
    prompt_ids = [ids(len(p)) for p in prompt] if topn else [None] * len(prompt)
    tokens = [[int(t) % V for t in range(n)] for n in GEN_LENS]
    spec = StoreSpec(vocab_size=V, topn=topn, sequences=[
        SeqData(p, t, g, pr, gi, pi) for p, t, g, pr, gi, pi in zip(PROMPTS, tokens, gen, prompt, gen_ids, prompt_ids)])
    manifest = build_manifest(spec)
    reserve, lanes = None, 1
    if layout.startswith("aligned"):
        # Room for 40 more rows than each sequence makes: whole chunks and
        # whole shards of padding, never written.
        reserve = {GENERATED: [n + 40 for n in GEN_LENS], PROMPT: [len(p) - 1 for p in PROMPTS]}
        lanes = 3 if layout == "aligned-3lanes" else 1  # 3 lanes: 16-row shards
    with StoreWriter(out, vocab_size=V, topn=topn, reserve=reserve, lanes=lanes) as w:
        for s, rows in enumerate(prompt):
            w.append_rows(PROMPT, s, rows, prompt_ids[s])
        if layout == "packed":
            for s, rows in enumerate(gen):
                w.append_rows(GENERATED, s, rows, gen_ids[s])
        else:  # batched decoding: a few rows of each sequence in turn
            done = [0] * len(gen)
            while any(d < len(g) for d, g in zip(done, gen)):
                for s, rows in enumerate(gen):
                    a, b = done[s], min(done[s] + 5, len(rows))
                    if a < b:
                        w.append_rows(GENERATED, s, rows[a:b], None if gen_ids[s] is None else gen_ids[s][a:b])
                        done[s] = b
                    elif reserve:
                        w.finish_sequence(s)
        path, _ = w.commit(manifest, [p + t for p, t in zip(PROMPTS, tokens)])
    return path


def open_both(path: Path, monkeypatch) -> tuple[Store, Store]:
    return Store.open(path, fast_read=True), Store.open(path, fast_read=False)


def same(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal shape, dtype and bytes: NaN payloads and -0.0 included."""
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def slices(n: int) -> list[tuple[int, int]]:
    edges = sorted({0, 1, 15, 16, 17, 31, 32, 47, 48, 49, 64, 95, 96, 97, n - 1, n, n + 5})
    return [(a, b) for a in edges for b in edges if a <= b and a <= n] + [(0, 10**6), (n + 3, n + 9)]


@pytest.mark.parametrize("topn", [None, TOPN], ids=["full", "topn"])
@pytest.mark.parametrize("layout", ["packed", "interleaved", "aligned", "aligned-3lanes"])
def test_fast_reader_returns_what_zarr_returns(tmp_path, monkeypatch, layout, topn):
    path = write(tmp_path, layout, topn)
    fast, slow = open_both(path, monkeypatch)
    names = list(fast.manifest.arrays)
    assert {"logprobs", "prompt_logprobs", "token_ids", "token_offsets"} <= set(names)
    assert ("logprobs_ids" in names) == bool(topn)
    for name in names:
        reader = fast._reader(name)
        assert reader is not None, f"{name} fell back to zarr"
        assert slow._reader(name) is None
        n = fast.manifest.arrays[name].shape[0]
        if name == "logprobs":
            assert reader.sharded and n > 2 * SHARD_ROWS, "the rows must span several shards"
        for a, b in slices(n):
            x, y = fast._read(name, slice(a, b)), slow._read(name, slice(a, b))
            assert same(x, y), (name, a, b)
    for kind in (GENERATED, PROMPT):
        for s in range(len(PROMPTS)):
            for ids in ([False, True] if topn else [False]):
                assert same(fast.sequence_rows(kind, s, ids=ids), slow.sequence_rows(kind, s, ids=ids))
    rows = fast.sequence_rows(GENERATED, 0)
    assert np.isnan(rows[1, 2]) and rows.view(np.uint32)[1, 2] == 0x7FC00000
    assert np.isneginf(rows[3, 1]) and np.isposinf(rows[0, 1]) and np.signbit(rows[0, 4])
    assert fast.verify().digest == slow.verify().digest == fast.manifest.digest


@pytest.mark.parametrize("layout", ["packed", "aligned"])
def test_streamed_reads_and_reused_buffers_match_one_read(tmp_path, monkeypatch, layout):
    # A diff reads consecutive blocks whose edges fall inside chunks (the
    # reader keeps the chunk it decoded in part); `out` decodes in place.
    path = write(tmp_path, layout)
    fast, slow = open_both(path, monkeypatch)
    n = fast.manifest.arrays["logprobs"].shape[0]
    whole = slow.rows(GENERATED, 0, n)
    for step in (1, 5, 7, 16, 23, 48, 50):
        buf = np.full((step, V), 7.0, np.float32)
        parts = [fast.rows(GENERATED, a, min(a + step, n), out=buf[: min(step, n - a)]).copy()
                 for a in range(0, n, step)]
        assert same(np.concatenate(parts), whole), step
    monkeypatch.delattr(os, "preadv")  # hosts without it (macOS before 11) seek and readv
    assert same(fast.rows(GENERATED, 3, n - 2), whole[3 : n - 2])
    with pytest.raises(ValueError, match="out must be"):
        fast.rows(GENERATED, 0, 4, out=np.empty((5, V), np.float32))
    with pytest.raises(ValueError, match="out must be"):
        fast.rows(GENERATED, 0, 4, out=np.empty((4, V), np.float64))


def test_reads_from_several_threads_agree(tmp_path, monkeypatch):
    path = write(tmp_path, "aligned")
    fast, slow = open_both(path, monkeypatch)
    n = fast.manifest.arrays["logprobs"].shape[0]
    cuts = [(a, min(a + w, n)) for w in (3, 16, 21) for a in range(0, n, w)] * 3
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda ab: fast.rows(GENERATED, *ab), cuts))
    for (a, b), x in zip(cuts, got):
        assert same(x, slow.rows(GENERATED, a, b))


def rewrite_array(path: Path, name: str, **create) -> np.ndarray:
    """Rewrites one array of a committed store through plain zarr with other
    metadata; the rows, hence the digests, are unchanged."""
    values = np.asarray(zarr.open_array(store=LocalStore(path), path=name, mode="r")[:])
    shutil.rmtree(path / name)
    group = zarr.open_group(store=LocalStore(path), mode="a")
    array = group.create_array(name, shape=values.shape, dtype=values.dtype, fill_value=0,
                               config={"write_empty_chunks": True}, **create)
    array[:] = values
    return values


@pytest.mark.parametrize("variant", ["zstd-shards", "gzip-chunks", "transpose"])
def test_metadata_the_fast_path_does_not_know_is_read_by_zarr(tmp_path, monkeypatch, variant):
    from zarr.codecs import BytesCodec, Crc32cCodec, GzipCodec, TransposeCodec, ZstdCodec

    path = write(tmp_path, "packed")
    create = {
        "zstd-shards": dict(chunks=(16, V), shards=(SHARD_ROWS, V), serializer=BytesCodec(),
                            compressors=[ZstdCodec(level=1), Crc32cCodec()]),
        "gzip-chunks": dict(chunks=(16, V), serializer=BytesCodec(), compressors=[GzipCodec(), Crc32cCodec()]),
        "transpose": dict(chunks=(16, V), filters=[TransposeCodec(order=(1, 0))], serializer=BytesCodec(),
                          compressors=[Crc32cCodec()]),
    }[variant]
    values = rewrite_array(path, "logprobs", **create)
    fast, slow = open_both(path, monkeypatch)
    assert fast._reader("logprobs") is None, "unknown codecs must go to zarr"
    assert fast._reader("prompt_logprobs") is not None, "the other arrays keep the fast path"
    assert same(fast.rows(GENERATED, 0, len(values)), values)
    assert same(fast.rows(GENERATED, 5, 40), slow.rows(GENERATED, 5, 40))
    assert fast.verify().digest == fast.manifest.digest


@pytest.mark.parametrize("location", ["start", "end"])
def test_other_shard_shapes_zarr_writes_are_read_fast(tmp_path, monkeypatch, location):
    # Not what parity writes, but what the format allows: 8-row chunks, the
    # index first, Blosc zstd, no per-chunk crc.
    from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ShardingCodec

    path = write(tmp_path, "packed")
    sharding = ShardingCodec(chunk_shape=(8, V), codecs=[BytesCodec(), BloscCodec(cname="zstd", typesize=4)],
                             index_codecs=[BytesCodec(), Crc32cCodec()], index_location=location)
    values = rewrite_array(path, "logprobs", chunks=(SHARD_ROWS, V), serializer=sharding, compressors=None)
    fast, slow = open_both(path, monkeypatch)
    reader = fast._reader("logprobs")
    assert reader is not None and reader.chunk_rows == 8 and not reader.crc
    for a, b in slices(len(values)):
        assert same(fast.rows(GENERATED, a, b), slow.rows(GENERATED, a, b)), (a, b)
    assert fast.verify().digest == fast.manifest.digest


# -- corruption ---------------------------------------------------------------
def shard(path: Path, i: int = 0, name: str = "logprobs") -> Path:
    return path / name / "c" / str(i) / "0"


def flip(f: Path, at: int) -> None:
    data = bytearray(f.read_bytes())
    data[at] ^= 0x55
    f.write_bytes(bytes(data))


def chunk_offset(path: Path, k: int) -> int:
    reader = ArrayReader.open(path / "logprobs")
    offsets, lengths = reader.index(0)
    return int(offsets[k]) + int(lengths[k]) // 2


def one_line_error(fn) -> str:
    with pytest.raises(StoreCorruptError) as e:
        fn()
    line = e.value.one_line()
    assert "\n" not in line
    return str(e.value)


@pytest.mark.parametrize("where", ["chunk", "index", "index crc"])
def test_a_flipped_byte_is_the_same_error_on_both_paths(tmp_path, monkeypatch, where):
    path = write(tmp_path, "packed")
    cand = write(tmp_path / "c", "packed", seed=0)
    size = shard(path).stat().st_size
    at = {"chunk": chunk_offset(path, 1), "index": size - 20, "index crc": size - 2}[where]
    flip(shard(path), at)
    messages = {}
    for mode in ("1", "0"):
        monkeypatch.setenv("PARITY_FAST_READ", mode)  # for the diffs
        store = Store.open(path, fast_read=mode == "1")  # opening reads no shard
        messages[mode] = one_line_error(store.verify)
        one_line_error(lambda: differ.diff(path, cand))
        one_line_error(lambda: differ.diff(cand, path))
    for message in messages.values():
        assert message.startswith(f"{path}: cannot read logprobs: ")
    assert "crc32c checksum mismatch" in messages["1"]


def test_a_chunk_missing_from_its_shard_is_a_truncated_store(tmp_path, monkeypatch):
    # zarr reads a chunk the index marks as never written as fill values: the
    # fast path refuses where that chunk holds rows of a sequence.
    path = write(tmp_path, "packed")
    f = shard(path)
    data = bytearray(f.read_bytes())
    reader = ArrayReader.open(path / "logprobs")
    index_at = len(data) - reader.index_nbytes
    data[index_at + 16 : index_at + 32] = struct.pack("<QQ", EMPTY, EMPTY)  # chunk 1
    crc = google_crc32c.value(bytes(data[index_at:-4]))
    data[-4:] = struct.pack("<I", crc)
    f.write_bytes(bytes(data))
    monkeypatch.setenv("PARITY_FAST_READ", "1")
    store = Store.open(path)
    message = one_line_error(lambda: store.rows(GENERATED, 0, 40))
    assert "chunk 1 was never written" in message and "truncated store" in message
    assert same(store.rows(GENERATED, 0, 16), Store.open(path).rows(GENERATED, 0, 16))  # chunk 0 is fine
    one_line_error(store.verify)


def test_padding_that_was_never_written_reads_as_zeros(tmp_path, monkeypatch):
    # Aligned layout: each sequence's region is whole shards, and a sequence
    # that stopped early leaves chunks (even shards) that were never written.
    path = write(tmp_path, "aligned")
    fast, slow = open_both(path, monkeypatch)
    offsets = fast.row_offsets(GENERATED)
    end0 = int(offsets[0]) + GEN_LENS[0]
    assert offsets[1] - end0 >= 16, "a whole chunk of padding"
    reader = fast._reader("logprobs")
    assert reader.rows_per_file == SHARD_ROWS
    absent = [i for i in reader.files_for(0, reader.shape[0]) if not reader.file_path(i).exists()]
    assert absent, "a whole padding shard has no file"
    holes = [(i, k) for i in reader.files_for(0, reader.shape[0]) if i not in absent
             for k, o in enumerate(reader.index(i)[0]) if o == EMPTY]
    assert holes, "a written shard has chunks that were never written"
    padding = fast.rows(GENERATED, end0, int(offsets[1]))
    assert same(padding, slow.rows(GENERATED, end0, int(offsets[1]))) and not padding.any()
    for i in absent:
        assert same(fast.rows(GENERATED, i * SHARD_ROWS, (i + 1) * SHARD_ROWS), np.zeros((SHARD_ROWS, V), np.float32))


def test_a_shard_deleted_or_cut_short_is_a_truncated_store(tmp_path, monkeypatch):
    path = write(tmp_path, "packed")
    for mode in ("1", "0"):
        monkeypatch.setenv("PARITY_FAST_READ", mode)
        copy = tmp_path / f"deleted-{mode}"
        shutil.copytree(path, copy)
        shard(copy, 1).unlink()
        assert "truncated store" in one_line_error(lambda: Store.open(copy, fast_read=mode == "1"))
    monkeypatch.setenv("PARITY_FAST_READ", "1")
    store = Store.open(path)
    shard(path, 1).unlink()  # after opening: still never a run of zeros
    assert "never written" in one_line_error(lambda: store.rows(GENERATED, SHARD_ROWS, SHARD_ROWS + 4))
    f = shard(path, 0)
    f.write_bytes(f.read_bytes()[:200])
    assert "truncated" in one_line_error(lambda: Store.open(path).rows(GENERATED, 0, 4))


def test_a_lying_blosc_header_is_refused(tmp_path, monkeypatch):
    # A chunk whose crc32c matches but whose Blosc header announces another
    # size (a writer bug, not bit rot) must not fill a buffer halfway.
    path = write(tmp_path, "packed")
    f = shard(path)
    data = bytearray(f.read_bytes())
    reader = ArrayReader.open(path / "logprobs")
    offsets, lengths = reader.index(0)
    o, n = int(offsets[0]), int(lengths[0])
    body = bytearray(data[o : o + n - 4])
    struct.pack_into("<I", body, 4, 15 * V * 4)  # nbytes: 15 rows, not 16
    data[o : o + n] = bytes(body) + struct.pack("<I", google_crc32c.value(bytes(body)))
    f.write_bytes(bytes(data))
    monkeypatch.setenv("PARITY_FAST_READ", "1")
    assert "Blosc header" in one_line_error(lambda: Store.open(path).rows(GENERATED, 0, 16))


def cli(*args: str, fast: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PARITY_FAST_READ": fast}
    env.pop("PARITY_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "parity.cli", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=300)


def test_cli_exit_codes_are_unchanged(tmp_path):
    path = write(tmp_path / "a", "packed")
    cand = write(tmp_path / "b", "packed")
    flip(shard(path), chunk_offset(path, 0))
    deleted = tmp_path / "deleted.parity.zarr"
    shutil.copytree(cand, deleted)
    shard(deleted, 1).unlink()
    # verify reports a damaged store with exit 1; unusable input is 2.
    expected = [
        (("verify", str(path)), 1, "cannot read logprobs"),
        # The diff's fast reader skips the crc32c and catches the flip by the rows' digest;
        # through zarr the crc32c catches it: either way one line naming logprobs.
        (("diff", str(cand), str(path)), 2, "logprobs"),
        (("verify", str(deleted)), 2, "truncated store"),
        (("diff", str(cand), str(deleted)), 2, "truncated store"),
        (("show", str(deleted)), 2, "truncated store"),
    ]
    for args, code, fragment in expected:
        for fast in ("1", "0"):
            proc = cli(*args, fast=fast)
            errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
            assert proc.returncode == code and "Traceback" not in proc.stderr and len(errors) == 1, \
                (args, fast, proc.returncode, proc.stderr)
            assert fragment in errors[0], errors[0]
    ok = cli("verify", str(cand), fast="1")
    assert ok.returncode == 0 and "ok xxh3-128:" in ok.stdout


def test_a_failed_zarr_read_leaves_no_traceback_at_exit(tmp_path):
    # Three damaged chunks in one zarr read: zarr returns the first error while
    # its other chunk tasks still run, and at exit asyncio used to log them
    # with tracebacks under the one-line error (about one run in twenty).
    path = write(tmp_path / "a", "packed")
    cand = write(tmp_path / "b", "packed")
    for k in range(3):
        flip(shard(path), chunk_offset(path, k))
    for _ in range(6):
        proc = cli("diff", str(cand), str(path), fast="0")
        assert proc.returncode == 2 and "Traceback" not in proc.stderr and "Task" not in proc.stderr, proc.stderr
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert sum(line.startswith("error: ") for line in lines) == 1, proc.stderr
        assert all(line.startswith(("diff: ", "error: ")) for line in lines), proc.stderr  # the header, the error


def test_parity_fast_read_setting():
    from parity.settings import Settings

    assert Settings.from_env({}).fast_read
    assert not Settings.from_env({"PARITY_FAST_READ": "0"}).fast_read
    assert Settings.from_env({"PARITY_FAST_READ": "1"}).fast_read


def test_metadata_parsing_refuses_what_it_does_not_know(tmp_path):
    from parity.schemas.shards import Unsupported

    path = write(tmp_path, "packed")
    meta = json.loads((path / "logprobs" / "zarr.json").read_text())
    ArrayReader(path / "logprobs", meta)
    bad = [
        ("data_type", "complex64"),
        ("chunk_key_encoding", {"name": "v2", "configuration": {"separator": "."}}),
        ("chunk_grid", {"name": "regular", "configuration": {"chunk_shape": [SHARD_ROWS, V // 2]}}),
        ("fill_value", "0x7fc0000000"),
        ("storage_transformers", [{"name": "x"}]),
    ]
    for key, value in bad:
        with pytest.raises(Unsupported):
            ArrayReader(path / "logprobs", {**meta, key: value})
    sharding = meta["codecs"][0]
    for key, value in [("index_location", "middle"), ("chunk_shape", [10, V]),
                       ("codecs", [{"name": "bytes", "configuration": {"endian": "big"}}]),
                       ("codecs", [{"name": "bytes"}, {"name": "crc32c"}, {"name": "blosc"}])]:
        conf = {**sharding["configuration"], key: value}
        with pytest.raises(Unsupported):
            ArrayReader(path / "logprobs", {**meta, "codecs": [{**sharding, "configuration": conf}]})
    assert row_array_names(GENERATED)[0] == "logprobs"


@pytest.mark.parametrize("layout", ["packed", "aligned"])
def test_verify_streams_blocks_through_reused_buffers(tmp_path, monkeypatch, layout):
    from parity.schemas import verify as store_mod

    # Blocks of one chunk, decoded ahead on several threads into a ring of
    # buffers: a buffer reused too early would change the digest.
    path = write(tmp_path, layout)
    monkeypatch.setattr(store_mod, "VERIFY_BLOCK_BYTES", 16 * V * 4)
    monkeypatch.setattr(store_mod, "available_cores", lambda: 4)
    fast, slow = open_both(path, monkeypatch)
    assert fast.verify().digest == slow.verify().digest == fast.manifest.digest


@pytest.mark.parametrize("layout", ["packed", "aligned"])
@pytest.mark.parametrize("block_chunks", [1, 2])
def test_verify_decodes_each_chunk_once(tmp_path, monkeypatch, layout, block_chunks):
    from parity.schemas import verify as store_mod

    # Sequences end mid-chunk (GEN_LENS): cutting blocks per sequence made two
    # threads each decode the chunk they share.
    path = write(tmp_path, layout)
    monkeypatch.setattr(store_mod, "VERIFY_BLOCK_BYTES", block_chunks * 16 * V * 4)
    monkeypatch.setattr(store_mod, "available_cores", lambda: 4)
    decoded = []
    real = ArrayReader._decode

    def counting(self, body, dest, i, k):
        decoded.append((self.path.name, i, k))
        return real(self, body, dest, i, k)

    store = Store.open(path)
    monkeypatch.setattr(ArrayReader, "_decode", counting)
    assert store.verify().digest == store.manifest.digest
    rows = [d for d in decoded if d[0] in row_array_names(GENERATED) + row_array_names(PROMPT)]
    assert rows and len(rows) == len(set(rows)), sorted(rows)

"""Hostile and damaged stores: a golden is somebody else's bytes (issue 23).

Each case mutates a copy of a valid store the way a hostile or broken Hub
repo could: metadata that is not JSON, nested, huge or of the wrong types;
codecs parity does not read; arrays whose content lies (re-encoded with their
own codecs and a correct crc32c, so only the semantic checks can catch them);
shard indexes that point outside their file or share bytes; a Blosc header
announcing gigabytes; links, FIFOs, directories and empty files where files
should be. Every command that opens the store (``verify``, ``show``, ``diff``
with the store as reference and as candidate) must then print exactly one
``error:`` line naming the file or array, no traceback, nothing "unexpected",
and finish within a time bound under a 2 GiB address-space cap.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, NamedTuple

import google_crc32c
import numpy as np
import pytest
import zarr
from zarr.storage import LocalStore

from parity.differ.testing import DEFAULT_PROMPT, SeqData, StoreSpec, greedy_tokens, log_softmax, write_store
from parity.errors import NotAStoreError, StoreCorruptError
from parity.schemas import Store
from parity.schemas.shards import ArrayReader
from tests.support.cli_run import ROOT

V = 64
GEN = [20, 23, 17]  # 60 generated rows: four 16-row chunks in one shard
TIMEOUT = 60
MEMORY = 2 << 30


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    rng = np.random.default_rng(23)
    seqs = []
    for n in GEN:
        rows = log_softmax(rng.standard_normal((n, V)) * 3).astype(np.float32)
        prompt = log_softmax(rng.standard_normal((len(DEFAULT_PROMPT) - 1, V)) * 3).astype(np.float32)
        seqs.append(SeqData(prompt=list(DEFAULT_PROMPT), tokens=greedy_tokens(rows), generated=rows,
                            prompt_rows=prompt))
    path, _ = write_store(tmp_path_factory.mktemp("good"), StoreSpec(vocab_size=V, sequences=seqs))
    return path


# -- mutations ------------------------------------------------------------------
def edit_json(f: Path, edit) -> None:
    meta = json.loads(f.read_text())
    edit(meta)
    f.write_text(json.dumps(meta))


def edit_manifest(edit):
    return lambda h: edit_json(h / "zarr.json", lambda meta: edit(meta["attributes"]["parity"]))


def edit_vector(name: str, edit):
    """Rewrites a 1-D array's values through zarr: its own codecs, a correct crc32c."""
    def mutate(h: Path) -> None:
        array = zarr.open_array(store=LocalStore(h), path=name, mode="r+")
        values = np.asarray(array[:])
        edit(values)
        array[:] = values
    return mutate


def set_generated_token(value: int):
    def edit(ids: np.ndarray) -> None:
        ids[len(DEFAULT_PROMPT) + 2] = value  # the third generated token of sequence 0
    return edit


def shard_index(edit):
    """Rewrites entries of the chunk index of logprobs' shard 0, its crc32c recomputed."""
    def mutate(h: Path) -> None:
        reader = ArrayReader.open(h / "logprobs")
        f = h / "logprobs" / "c" / "0" / "0"
        data = bytearray(f.read_bytes())
        at = len(data) - reader.index_nbytes
        pairs = np.frombuffer(bytes(data[at : at + 16 * reader.chunks_per_file]), "<u8").reshape(-1, 2).copy()
        edit(pairs, len(data))
        data[at : at + pairs.nbytes] = pairs.tobytes()
        data[-4:] = struct.pack("<I", google_crc32c.value(bytes(data[at:-4])))
        f.write_bytes(bytes(data))
    return mutate


def blosc_bomb(name: str, file: str):
    """Chunk 0's Blosc header announces 4 GiB (the most its 32-bit field holds); its crc32c is recomputed."""
    def mutate(h: Path) -> None:
        f = h / name / file
        data = bytearray(f.read_bytes())
        if name == "logprobs":
            offsets, lengths = ArrayReader.open(h / name).index(0)
            o, n = int(offsets[0]), int(lengths[0])
        else:
            o, n = 0, len(data)
        body = bytearray(data[o : o + n - 4])
        struct.pack_into("<I", body, 4, 0xFFFFFFFF)
        data[o : o + n] = bytes(body) + struct.pack("<I", google_crc32c.value(bytes(body)))
        f.write_bytes(bytes(data))
    return mutate


def replace_file(rel: str, make):
    def mutate(h: Path) -> None:
        f = h / rel
        if f.is_dir() and not f.is_symlink():
            shutil.rmtree(f)
        else:
            f.unlink()
        make(f, h)
    return mutate


def write_bytes(rel: str, data: bytes):
    return lambda h: (h / rel).write_bytes(data)


def too_big(h: Path) -> None:
    with open(h / "zarr.json", "r+b") as f:  # sparse: no disk used
        f.truncate((64 << 20) + 1)


def link_outside(f: Path, h: Path) -> None:
    outside = h.parent / "elsewhere.json"
    shutil.copy(h.parent / "original-zarr.json", outside)
    f.symlink_to(outside)


def set_codec(h: Path) -> None:
    def edit(meta):
        meta["codecs"][0]["configuration"]["codecs"][1]["name"] = "evil_codec"
    edit_json(h / "logprobs" / "zarr.json", edit)


def nest_in_device(meta):
    inner: dict = {}
    meta["device"]["env"] = inner
    for _ in range(100):
        inner["x"] = {}
        inner = inner["x"]


class Case(NamedTuple):
    """A hostile store: its mutation and what the error line must say.

    ``at_open`` False: the lie is in the rows (a shard index, a chunk).
    Opening reads no shard, so ``show`` (which reads no rows) succeeds,
    ``verify`` reports a damaged store (exit 1) and ``diff`` fails (exit 2)
    when they read them. ``zarr_says``: what ``verify`` says with
    PARITY_FAST_READ=0, where zarr decodes the chunks (None: whatever
    zarr or the digests say, in one line). Cases in the group's zarr.json
    are read by the same code whatever the mode, and run only the fast one.
    """

    id: str
    mutate: Callable[[Path], None]
    says: str
    at_open: bool = True
    zarr_says: str | None = ""  # "": the same as ``says``


CASES = [Case(*c) for c in [
    ("not-json", write_bytes("zarr.json", b"{not json"), "zarr.json is not JSON", True),
    ("not-utf8", write_bytes("zarr.json", b'{"zarr_format": 3, "x": "\xff\xfe"}'), "zarr.json is not UTF-8", True),
    ("nested-100000", write_bytes("zarr.json", b"[" * 100000 + b"]" * 100000), "zarr.json nests JSON deeper", True),
    ("nested-in-manifest", edit_manifest(nest_in_device), "zarr.json nests JSON deeper", True),
    ("nan-literal", lambda h: (h / "zarr.json").write_text(
        (h / "zarr.json").read_text().replace('"seed": 0', '"seed": NaN')), "zarr.json is not JSON (it holds NaN)", True),
    ("too-big", too_big, "zarr.json is 67108865 bytes, more than parity reads (64 MiB)", True),
    ("prompt-len-string", edit_manifest(lambda m: m["sequences"][1].update(prompt_len="5")),
     "manifest field sequences[1].prompt_len must be a non-negative integer", True),
    ("prompts-object", edit_manifest(lambda m: m["request"].update(prompts={"0": [1, 2]})),
     "manifest field request.prompts must be a list of prompts", True),
    ("vocab-size-bool", edit_manifest(lambda m: m.update(vocab_size=True)),
     "manifest field vocab_size must be a positive integer", True),
    ("generated-len-negative", edit_manifest(lambda m: m["sequences"][2].update(generated_len=-1)),
     "manifest field sequences[2].generated_len must be a non-negative integer", True),
    ("max-tokens-missing", edit_manifest(lambda m: m["request"].pop("max_tokens")),
     "manifest is missing request.max_tokens", True),
    ("array-dtype", edit_manifest(lambda m: m["arrays"]["logprobs"].update(dtype="|O")),
     "manifest field arrays.logprobs.dtype must be one of", True),
    ("array-name", edit_manifest(lambda m: m["arrays"].update({"../../etc": m["arrays"]["logprobs"]})),
     "manifest field arrays names an array '../../etc'", True),
    ("unknown-codec", set_codec, "logprobs/zarr.json: codec 'evil_codec' is not one parity reads", True),
    ("array-zarr-json-not-json", write_bytes("logprobs/zarr.json", b"\x00\x01"), "logprobs/zarr.json is not JSON",
     True),
    ("negative-token-id", edit_vector("token_ids", set_generated_token(-3)), "'token_ids' holds token id -3", True),
    ("token-id-past-vocab", edit_vector("token_ids", set_generated_token(V)), f"'token_ids' holds token id {V}", True),
    ("offsets-decrease", edit_vector("token_offsets", lambda o: o.__setitem__(1, o[2] + 1)),
     "'token_offsets' decreases after sequence 1", True),
    ("offsets-end-short", edit_vector("token_offsets", lambda o: o.__setitem__(-1, o[-1] - 1)),
     "'token_offsets' ends at", True),
    ("starts-overlap", edit_vector("logprobs_starts", lambda s: s.__setitem__(1, 5)),
     "'logprobs_starts': the block of sequence 1 (from row 5) overlaps", True),
    ("starts-outside", edit_vector("logprobs_starts", lambda s: s.__setitem__(2, 10**9)),
     "'logprobs_starts' puts the 17 rows of sequence 2 at row 1000000000, outside", True),
    ("index-outside-file", shard_index(lambda p, size: p.__setitem__((1, 0), size + 100)),
     "c/0/0 chunk 1: the index gives bytes", False, None),
    ("index-shared-bytes", shard_index(lambda p, size: p.__setitem__(1, p[0])),
     "c/0/0: chunks 0 and 1 share bytes", False, None),
    ("blosc-4gib-rows", blosc_bomb("logprobs", "c/0/0"), "Blosc header says 4294967295 bytes", False, None),
    ("blosc-4gib-token-ids", blosc_bomb("token_ids", "c/0"), "Blosc header says 4294967295 bytes", True,
     "cannot read token_ids"),
    ("zarr-json-symlink", replace_file("zarr.json", link_outside), "zarr.json is a symbolic link", True),
    ("chunk-symlink-dev-zero", replace_file("logprobs/c/0/0", lambda f, h: f.symlink_to("/dev/zero")),
     "logprobs/c/0/0 is a symbolic link", True),
    ("chunk-fifo", replace_file("logprobs/c/0/0", lambda f, h: os.mkfifo(f)), "logprobs/c/0/0 is a FIFO", True),
    ("vector-fifo", replace_file("token_ids/c/0", lambda f, h: os.mkfifo(f)), "token_ids/c/0 is a FIFO", True),
    ("zarr-json-directory", replace_file("zarr.json", lambda f, h: f.mkdir()),
     "zarr.json is a directory, not a file", True),
    ("zarr-json-empty", write_bytes("zarr.json", b""), "zarr.json is empty", True),
    ("shard-empty", write_bytes("logprobs/c/0/0", b""), "logprobs/c/0/0 is empty", True),
]]


# `python -m parity.cli`, with the address space capped first (in the child
# itself: a preexec_fn is not safe with the threads that run the commands).
CAPPED = ("import resource, runpy; resource.setrlimit(resource.RLIMIT_AS, ({0}, {0})); "
          "runpy.run_module('parity.cli', run_name='__main__', alter_sys=True)").format(MEMORY)


def cli(*args: str, fast: str = "1") -> tuple[subprocess.CompletedProcess, float]:
    """`parity ARGS` as a user runs it (tests.support.cli_run), under a 2 GiB address-space cap."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PARITY_FAST_READ": fast}
    env.pop("PARITY_DEBUG", None)
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CAPPED, *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=TIMEOUT)
    return proc, time.perf_counter() - t


def test_the_cap_holds():
    proc, _ = cli("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("parity "), proc.stderr
    hog = subprocess.run([sys.executable, "-c", CAPPED.split("; runpy")[0] + "; bytearray(3 << 30)"],
                         capture_output=True, text=True, timeout=TIMEOUT)
    assert "MemoryError" in hog.stderr


def one_error(proc: subprocess.CompletedProcess) -> str:
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "unexpected" not in proc.stderr, proc.stderr
    return errors[0]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_hostile_store_is_one_line_from_every_command(good, tmp_path, case: Case):
    name, mutate, says, at_open, zarr_says = case
    hostile = tmp_path / "hostile" / good.name
    shutil.copytree(good, hostile)
    shutil.copy(good / "zarr.json", tmp_path / "hostile" / "original-zarr.json")
    mutate(hostile)
    runs = {
        "verify": ("verify", str(hostile)),
        "show": ("show", str(hostile)),
        "diff as reference": ("diff", str(hostile), str(good)),
        "diff as candidate": ("diff", str(good), str(hostile)),
    }
    both_modes = not says.startswith(("zarr.json", "manifest"))  # the group's zarr.json: one code path
    with ThreadPoolExecutor(len(runs) + 1) as pool:
        done = {k: pool.submit(cli, *args) for k, args in runs.items()}
        zarr_verify = pool.submit(cli, "verify", str(hostile), fast="0") if both_modes else None
        results = {k: f.result() for k, f in done.items()}
    lines = {}
    for what, (proc, seconds) in results.items():
        if what == "show" and not at_open:
            assert proc.returncode == 0, proc.stderr  # show reads no rows
            continue
        expected = 1 if what == "verify" and not at_open else 2
        assert proc.returncode == expected, (what, proc.returncode, proc.stderr)
        line = lines[what] = one_error(proc)
        assert says in line, (what, line)
        assert str(hostile) in line or not at_open and "logprobs" in line, (what, line)
        assert seconds < TIMEOUT
    if zarr_verify is not None:
        # Through zarr (PARITY_FAST_READ=0) opening makes the same checks; the rows are zarr's to read.
        slow_proc, _ = zarr_verify.result()
        assert slow_proc.returncode in (1, 2), slow_proc.stderr
        lines["verify (zarr)"] = one_error(slow_proc)
        if zarr_says is not None:
            assert (zarr_says or says) in lines["verify (zarr)"], lines["verify (zarr)"]
    print(f"\n{name}:\n  " + "\n  ".join(f"{k}: {v}" for k, v in lines.items()))


# -- pulled stores: the Hugging Face cache's links are the only ones followed ---
def hf_layout(good: Path, root: Path) -> Path:
    """``good`` as huggingface_hub keeps a pulled store: snapshot files linking to blobs."""
    repo = root / "datasets--org--goldens"
    blobs, snapshot = repo / "blobs", repo / "snapshots" / ("0" * 40)
    blobs.mkdir(parents=True)
    for i, f in enumerate(sorted(p for p in good.rglob("*") if p.is_file())):
        rel = f.relative_to(good)
        blob = blobs / f"{i:040x}"
        shutil.copy(f, blob)
        link = snapshot / "goldens" / good.name / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return snapshot / "goldens" / good.name


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "zarr"])
def test_a_pulled_store_reads_through_its_cache_links(good, tmp_path, fast):
    pulled = hf_layout(good, tmp_path)
    assert (pulled / "logprobs" / "c" / "0" / "0").is_symlink()
    store = Store.open(pulled, fast_read=fast)
    assert store.verify().digest == Store.open(good).manifest.digest
    # A link out of the cache's blobs is refused, even to a copy of the same bytes.
    f = pulled / "logprobs" / "c" / "0" / "0"
    copy = tmp_path / "copy"
    shutil.copy(f, copy)
    f.unlink()
    f.symlink_to(copy)
    with pytest.raises(StoreCorruptError, match="logprobs/c/0/0 is a symbolic link"):
        Store.open(pulled, fast_read=fast)
    meta = pulled / "zarr.json"
    meta.unlink()
    meta.symlink_to("/dev/zero")
    with pytest.raises(NotAStoreError, match="zarr.json is a symbolic link"):
        Store.open(pulled, fast_read=fast)

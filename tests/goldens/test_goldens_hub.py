"""goldens against the real huggingface_hub client and a loopback Hub."""

from __future__ import annotations

import re
import socket
import subprocess
import sys

import httpx2
import pytest

from parity import goldens
from parity import hub as hub_client
from tests.support.hub_server import READ_TOKEN
from parity.goldens import HubRef, is_hub_reference
from parity.errors import (
    GoldenNotFoundError,
    HubAuthError,
    HubError,
    ParityError,
    StoreCorruptError,
    StoreNotFoundError,
    UsageError,
)
from parity.schemas import Store

REPO = "org/goldens"


def store_files(path) -> int:
    return sum(1 for p in path.rglob("*") if p.is_file())


def manifest(path):
    return Store.open(path).manifest


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setattr(hub_client, "BACKOFF_SECONDS", 0.01)


# -- push ---------------------------------------------------------------------
def test_push_uploads_store_and_index_in_one_commit(hub, stores):
    path = stores()
    m = manifest(path)
    result = goldens.push(path, REPO, **hub.kw)

    assert result.uploaded
    assert result.files == store_files(path) + 1  # the store plus its index file
    assert hub.server.count("POST", r"/commit/") == 1
    key = m.request_key.split(":")[1]
    assert result.path == f"goldens/{key}/{path.name}"
    assert result.revision == hub.server.repos[REPO].refs["main"]
    assert result.ref == f"hf://datasets/{REPO}@{result.revision}/goldens/{key}/{path.name}"
    assert is_hub_reference(result.ref)

    remote = hub.server.files(REPO)
    for f in path.rglob("*"):
        if f.is_file():
            entry = remote[f"{result.path}/{f.relative_to(path).as_posix()}"]
            assert hub.server.content(entry) == f.read_bytes()
    assert f"index/{m.digest.split(':')[1]}.json" in remote


def test_push_creates_private_repo(hub, stores):
    goldens.push(stores(), "org/private-goldens", private=True, **hub.kw)
    assert hub.server.repos["org/private-goldens"].private


def test_repush_is_a_noop_without_upload(hub, stores):
    path = stores()
    first = goldens.push(path, REPO, **hub.kw)
    head = hub.server.repos[REPO].refs["main"]
    hub.server.clear_log()

    again = goldens.push(path, REPO, **hub.kw)

    assert not again.uploaded and again.files == 0
    assert hub.server.uploads() == 0  # no LFS PUT, no commit
    assert hub.server.count("POST", r"/preupload/") == 0
    assert hub.server.repos[REPO].refs["main"] == head
    assert again.path == first.path and again.revision == head


def test_push_uses_lfs_for_binary_chunks_when_available(hub, stores):
    if hub.server.lfs_threshold is None:
        pytest.skip("huggingface_hub was imported with Xet enabled; files are committed inline")
    goldens.push(stores(), REPO, **hub.kw)
    assert hub.server.count("POST", r"\.git/info/lfs/objects/batch$") == 1
    assert hub.server.count("PUT", r"^/lfs-upload/") >= 1


def test_push_rejects_a_corrupt_store(hub, stores):
    path = stores()
    chunk = next(p for p in (path / "logprobs" / "c").rglob("*") if p.is_file())
    data = bytearray(chunk.read_bytes())
    data[-8] ^= 0xFF
    chunk.write_bytes(bytes(data))
    with pytest.raises(StoreCorruptError):
        goldens.push(path, REPO, **hub.kw)
    assert hub.server.uploads() == 0


# -- pull ---------------------------------------------------------------------
def test_pull_transfers_only_the_requested_store(hub, stores):
    paths = [stores(prompt=(i, i + 1, i + 2)) for i in range(1, 4)]
    refs = [goldens.push(p, REPO, **hub.kw).ref for p in paths]
    hub.server.clear_log()

    local = goldens.pull(refs[1], **hub.kw)

    wanted = HubRef.parse(refs[1]).path
    downloaded = hub.server.downloads()
    assert downloaded and all(d.startswith(wanted + "/") for d in downloaded)
    # Every file of the store arrives; files with identical bytes (e.g. the two
    # one-sequence `*_starts` arrays) share one cached blob and transfer once.
    assert store_files(local) == store_files(paths[1]) == 12
    unique_contents = {p.read_bytes() for p in paths[1].rglob("*") if p.is_file()}
    assert len(set(downloaded)) == len(downloaded) == len(unique_contents)
    assert hub.server.count("POST") == 0
    assert local.name == paths[1].name
    assert Store.open(local).verify().digest == manifest(paths[1]).digest
    assert hub.cache_dir in local.parents  # in the HF cache


def test_pull_forms_of_reference(hub, stores):
    path = stores()
    result = goldens.push(path, REPO, **hub.kw)
    digest = manifest(path).digest
    href = HubRef.parse(result.ref)

    unpinned = str(HubRef(REPO, href.path))
    assert goldens.pull(unpinned, **hub.kw).name == path.name
    assert goldens.pull(digest, repo=REPO, **hub.kw).name == path.name
    assert goldens.pull(digest.split(":")[1][:10], repo=REPO, **hub.kw).name == path.name
    assert result.revision in goldens.pull(unpinned, revision=result.revision, **hub.kw).parts


def test_pull_pinned_revision_survives_later_pushes(hub, stores):
    first = goldens.push(stores(prompt=(5, 6)), REPO, **hub.kw)
    goldens.push(stores(prompt=(7, 8)), REPO, **hub.kw)
    local = goldens.pull(first.ref, **hub.kw)
    assert first.revision in local.parts


def test_pull_tampered_file_fails_digest_check(hub, stores):
    path = stores()
    result = goldens.push(path, REPO, **hub.kw)
    chunk = next(p for p in hub.server.files(REPO) if p.startswith(result.path + "/logprobs/c/"))
    hub.server.tamper(REPO, chunk)

    with pytest.raises(StoreCorruptError) as err:
        goldens.pull(result.ref, **hub.kw)
    line = err.value.one_line()
    assert "\n" not in line and "fails verification" in line and "copy on the Hub is damaged" in line


def test_pull_heals_a_tampered_cache(hub, stores):
    path = stores()
    result = goldens.push(path, REPO, **hub.kw)
    local = goldens.pull(result.ref, **hub.kw)
    zarr_json = (local / "zarr.json").resolve()
    zarr_json.write_text(zarr_json.read_text().replace('"tiny/llama"', '"tiny/llamb"'))
    with pytest.raises(StoreCorruptError):
        Store.open(local).verify()

    again = goldens.pull(result.ref, **hub.kw)
    assert Store.open(again).verify().digest == manifest(path).digest


def test_pull_unknown_references(hub, stores):
    result = goldens.push(stores(), REPO, **hub.kw)
    href = HubRef.parse(result.ref)
    missing = str(HubRef(REPO, href.path.replace(href.store_name, "0" * 24 + ".parity.zarr"), href.revision))
    with pytest.raises(GoldenNotFoundError):
        goldens.pull(missing, **hub.kw)
    with pytest.raises(GoldenNotFoundError):
        goldens.pull("abcdef0123", repo=REPO, **hub.kw)
    with pytest.raises(GoldenNotFoundError, match="not found"):
        goldens.pull(str(HubRef("org/nope", href.path)), **hub.kw)
    with pytest.raises(GoldenNotFoundError, match="revision"):
        goldens.pull(str(HubRef(REPO, href.path, "f" * 40)), **hub.kw)
    with pytest.raises(UsageError):
        goldens.pull("not-a-ref", repo=REPO, **hub.kw)
    with pytest.raises(UsageError):
        goldens.pull(result.entry.digest)  # a digest needs --repo


def test_offline_pull_from_cache(hub, stores, monkeypatch):
    a, b = stores(prompt=(1, 1)), stores(prompt=(2, 2))
    ra = goldens.push(a, REPO, **hub.kw)
    rb = goldens.push(b, REPO, **hub.kw)
    goldens.pull(ra.ref, **hub.kw)
    unpinned = str(HubRef(REPO, ra.path))
    goldens.pull(unpinned, **hub.kw)  # records refs/main in the cache
    listed = goldens.list_goldens(REPO, **hub.kw)

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.server.clear_log()

    assert goldens.pull(ra.ref, **hub.kw).name == a.name
    assert goldens.pull(unpinned, **hub.kw).name == a.name
    assert goldens.pull(manifest(a).digest, repo=REPO, **hub.kw).name == a.name
    assert goldens.list_goldens(REPO, **hub.kw) == listed
    with pytest.raises(GoldenNotFoundError, match="HF_HUB_OFFLINE"):
        goldens.pull(rb.ref, **hub.kw)
    assert hub.server.requests == []
    with pytest.raises(UsageError):
        goldens.push(a, REPO, **hub.kw)


def test_offline_without_cache_is_a_clear_error(hub, stores, monkeypatch):
    result = goldens.push(stores(), REPO, **hub.kw)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(GoldenNotFoundError, match="HF_HUB_OFFLINE") as err:
        goldens.pull(result.ref, **hub.kw)
    assert "unset HF_HUB_OFFLINE" in err.value.one_line()


# -- auth and network -----------------------------------------------------------
def test_invalid_token_is_a_one_line_auth_error(hub, stores, monkeypatch):
    result = goldens.push(stores(), REPO, **hub.kw)
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    for action in (lambda: goldens.push(stores(prompt=(3, 3)), REPO, **hub.kw), lambda: goldens.pull(result.ref, **hub.kw)):
        with pytest.raises(HubAuthError) as err:
            action()
        line = err.value.one_line()
        assert "\n" not in line and "401" in line and "HF_TOKEN" in line


@pytest.mark.parametrize("repo_exists", [False, True])
def test_read_only_token_cannot_push(hub, stores, repo_exists):
    if repo_exists:
        goldens.push(stores(prompt=(8, 8)), REPO, **hub.kw)
    with pytest.raises(HubAuthError, match="403") as err:
        goldens.push(stores(), REPO, token=READ_TOKEN, **hub.kw)
    assert "write access" in err.value.one_line()


def test_no_token_cannot_push(hub, stores):
    with pytest.raises(HubAuthError, match="401"):
        goldens.push(stores(), REPO, token=False, **hub.kw)


def test_private_repo_needs_a_token_to_pull(hub, stores):
    result = goldens.push(stores(), "org/private", private=True, **hub.kw)
    with pytest.raises(GoldenNotFoundError) as err:
        goldens.pull(result.ref, token=False, **hub.kw)
    assert "HF_TOKEN" in err.value.one_line()
    assert goldens.pull(result.ref, token=READ_TOKEN, **hub.kw).is_dir()


def test_transient_failures_are_retried(hub, stores):
    result = goldens.push(stores(), REPO, **hub.kw)
    hub.server.fail_next = [503, 502]
    assert goldens.list_goldens(REPO, **hub.kw)[0].digest == result.entry.digest
    assert hub.server.fail_next == []


def test_unreachable_hub_fails_clearly_after_retries(tmp_path, stores):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    with pytest.raises(HubError) as err:
        goldens.list_goldens(REPO, endpoint=f"http://127.0.0.1:{port}", cache_dir=tmp_path / "cache")
    line = err.value.one_line()
    assert f"after {hub_client.ATTEMPTS} attempt" in line and "HF_HUB_OFFLINE" in line


# -- ls -------------------------------------------------------------------------
def test_list_goldens_reads_index_only(hub, stores):
    with pytest.raises(GoldenNotFoundError, match="was not found"):
        goldens.list_goldens(REPO, **hub.kw)
    a = stores(prompt=(1, 2), created_at="2026-01-01T00:00:00+00:00")
    b = stores(prompt=(3, 4), model="tiny/qwen", created_at="2026-02-01T00:00:00+00:00")
    goldens.push(a, REPO, **hub.kw)
    goldens.push(b, REPO, **hub.kw)
    hub.server.clear_log()

    entries = goldens.list_goldens(REPO, **hub.kw)

    assert [e.model for e in entries] == ["tiny/qwen", "tiny/llama"]  # newest first
    assert hub.server.downloads() == ["index.json"]
    e = entries[1]
    m = manifest(a)
    assert (e.device, e.positions, e.digest, e.request_key) == ("cpu", 4, m.digest, m.request_key)
    assert e.versions == {"parity": "test", "cpu": "1.0"}
    assert e.size == sum(p.stat().st_size for p in a.rglob("*") if p.is_file())
    assert set(e.to_dict()) >= {"model", "device", "versions", "positions", "size", "created_at", "digest", "request_key", "path"}
    assert [x.model for x in goldens.list_goldens(REPO, model="tiny/qwen", **hub.kw)] == ["tiny/qwen"]
    assert goldens.pull(e.ref(), **hub.kw).name == a.name


def test_list_empty_repo(hub):
    hub.server.create("org/empty")
    assert goldens.list_goldens("org/empty", **hub.kw) == []


# -- resolution by request --------------------------------------------------------
def test_resolve_by_request_picks_the_cpu_golden(hub, stores):
    cpu = stores(prompt=(9, 8, 7))
    rbln = stores(prompt=(9, 8, 7), device="rbln", created_at="2026-03-01T00:00:00+00:00")
    other = stores(prompt=(1, 2, 3))
    for p in (cpu, rbln, other):
        goldens.push(p, REPO, **hub.kw)
    key = manifest(cpu).request_key
    assert manifest(rbln).request_key == key != manifest(other).request_key

    local, entry, notes = goldens.resolve_by_request(REPO, key, **hub.kw)

    assert local.name == cpu.name and entry.device == "cpu" and notes == []
    assert Store.open(local).manifest.request_key == key


def test_resolve_by_request_prefers_newest_and_says_so(hub, stores):
    old = stores(prompt=(4, 4), created_at="2026-01-01T00:00:00+00:00", seed=1)
    new = stores(prompt=(4, 4), created_at="2026-05-01T00:00:00+00:00", seed=2)
    goldens.push(new, REPO, **hub.kw)
    goldens.push(old, REPO, **hub.kw)

    local, entry, notes = goldens.resolve_by_request(REPO, manifest(old).request_key, **hub.kw)

    assert local.name == new.name
    assert len(notes) == 1 and "2 goldens match" in notes[0] and "newest" in notes[0]


def test_resolve_by_request_none_found_lists_candidates(hub, stores):
    goldens.push(stores(prompt=(1, 2)), REPO, **hub.kw)
    only_rbln = stores(prompt=(5, 6), device="rbln")
    goldens.push(only_rbln, REPO, **hub.kw)
    unknown = stores(prompt=(7, 7))

    with pytest.raises(GoldenNotFoundError) as err:
        goldens.resolve_by_request(REPO, manifest(unknown).request_key, model="tiny/llama", **hub.kw)
    line = err.value.one_line()
    assert "nearest candidates" in line and "tiny/llama on cpu" in line and "parity ls" in line

    with pytest.raises(GoldenNotFoundError, match="recorded on: rbln"):
        goldens.resolve_by_request(REPO, manifest(only_rbln).request_key, **hub.kw)


# -- resolve_store / references ------------------------------------------------
def test_resolve_store_accepts_paths_refs_and_digests(hub, stores):
    path = stores()
    result = goldens.push(path, REPO, **hub.kw)
    assert goldens.resolve_store(path) == path
    assert goldens.resolve_store(str(path)) == path
    assert goldens.resolve_store(result.ref, **hub.kw).name == path.name
    assert goldens.resolve_store(result.entry.digest, repo=REPO, **hub.kw).name == path.name
    with pytest.raises(StoreNotFoundError):
        goldens.resolve_store(str(path.parent / "missing.parity.zarr"))


def test_hub_reference_parsing():
    ref = "hf://datasets/org/name@" + "a" * 40 + "/goldens/" + "b" * 32 + "/" + "c" * 24 + ".parity.zarr"
    h = HubRef.parse(ref)
    assert (h.repo, h.revision, h.store_name) == ("org/name", "a" * 40, "c" * 24 + ".parity.zarr")
    assert str(h) == ref
    assert HubRef.parse("hf://datasets/org/name@refs%2Fpr%2F1/x/y.parity.zarr").revision == "refs/pr/1"
    assert str(HubRef("org/name", "x/y.parity.zarr", "refs/pr/1")) == "hf://datasets/org/name@refs%2Fpr%2F1/x/y.parity.zarr"
    assert not is_hub_reference("/tmp/x.parity.zarr")
    for bad in ("hf://models/org/name/x.parity.zarr", "hf://datasets/org/name", "hf://datasets/org/name/goldens/x"):
        with pytest.raises(UsageError):
            HubRef.parse(bad)
    assert issubclass(UsageError, ParityError)


def test_server_honours_range_requests(hub, stores):
    result = goldens.push(stores(), REPO, **hub.kw)
    path = f"{result.path}/zarr.json"
    url = f"{hub.server.endpoint}/datasets/{REPO}/resolve/{result.revision}/{path}"
    full = httpx2.get(url).content
    part = httpx2.get(url, headers={"Range": "bytes=10-"})
    assert part.status_code == 206 and part.content == full[10:]
    assert re.match(rf"bytes 10-{len(full) - 1}/{len(full)}", part.headers["Content-Range"])


def test_offline_resolution_from_pulled_stores_only(hub, stores, monkeypatch):
    path = stores(prompt=(6, 6))
    result = goldens.push(path, REPO, **hub.kw)
    goldens.pull(str(HubRef(REPO, result.path)), **hub.kw)  # pulled, never listed
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.server.clear_log()

    local, entry, _ = goldens.resolve_by_request(REPO, manifest(path).request_key, **hub.kw)

    assert local.name == path.name and entry.digest == manifest(path).digest
    assert goldens.pull(entry.digest[-32:-20], repo=REPO, **hub.kw) == local
    assert hub.server.requests == []


def test_transient_upload_failure_is_retried(hub, stores):
    if hub.server.lfs_threshold is None:
        pytest.skip("no LFS transfers when Xet is enabled in the client")
    hub.server.create(REPO)
    hub.server.fail_route["lfs_put"] = [503]  # the first LFS PUT (retried by the client)
    result = goldens.push(stores(), REPO, **hub.kw)
    assert hub.server.fail_route["lfs_put"] == []
    assert result.uploaded and goldens.pull(result.ref, **hub.kw).is_dir()


def test_record_golden_repo_finds_a_schema_1_golden_by_its_file_byte_key(hub, tiny_model, tmp_path):
    """`record --golden ORG/NAME` on a model whose tokenizer files match a schema-1 golden's."""
    import dataclasses
    import shutil

    import numpy as np

    from parity.recorder import EngineOptions, RecordConfig
    from parity.recorder.inputs import legacy_tokenizer_digest
    from parity.recorder.plan import plan_recording
    from parity.schemas.manifest import Device, Manifest, SequenceInfo
    from parity.schemas import StoreWriter

    cfg = RecordConfig(model=str(tiny_model), prompts=["Hello"], max_tokens=2, out=tmp_path / "out",
                       engine=EngineOptions(max_model_len=64))
    request = plan_recording(cfg, check_out=False).request
    v1_request = dataclasses.replace(request, model=dataclasses.replace(
        request.model, tokenizer_digest=legacy_tokenizer_digest(tiny_model)))
    prompt = list(request.prompts[0])
    vocab = 4096
    rows = np.log(np.full((2, vocab), 1 / vocab, dtype=np.float32))
    with StoreWriter(tmp_path / "v1", vocab_size=vocab) as w:
        w.append_rows("generated", 0, rows)
        if request.prompt_logprobs and len(prompt) > 1:
            w.append_rows("prompt", 0, np.log(np.full((len(prompt) - 1, vocab), 1 / vocab, dtype=np.float32)))
        path, golden = w.commit(Manifest(
            request=v1_request, device=Device(kind="cpu"), vocab_size=vocab,
            sequences=(SequenceInfo(0, len(prompt), 2, "length"),), arrays={},
            created_at="2025-01-01T00:00:00+00:00", tool_version="old", schema_version=1,
        ), [prompt + [5, 6]])
    assert golden.request_key != request.key()  # the v1 key is not the v2 one
    goldens.push(path, REPO, **hub.kw)

    # A fresh process: huggingface_hub reads HF_ENDPOINT (the loopback Hub) when it is imported.
    def lookup(model):
        script = ("import sys; from pathlib import Path; from parity.recorder import RecordConfig, EngineOptions; "
                  "from parity.workflows.against_golden import find_golden; "
                  "cfg = RecordConfig(model=sys.argv[1], prompts=['Hello'], max_tokens=2, "
                  "engine=EngineOptions(max_model_len=64)); "
                  "found = find_golden(cfg, sys.argv[2]); print(found.path); print(*found.notes, sep='\\n')")
        return subprocess.run([sys.executable, "-c", script, str(model), REPO], capture_output=True, text=True,
                              timeout=300)

    found = lookup(tiny_model)
    assert found.returncode == 0, found.stderr
    path_line, *notes = found.stdout.strip().splitlines()
    assert Store.open(path_line).manifest.digest == golden.digest
    assert any("schema-1 golden" in n for n in notes)

    # A re-saved copy whose tokenizer files differ in bytes cannot be matched to a schema-1 key.
    copy = tmp_path / "resaved"
    shutil.copytree(tiny_model, copy)
    config = copy / "tokenizer_config.json"
    config.write_text(config.read_text() + "\n")
    missing = lookup(copy)
    assert missing.returncode != 0 and "GoldenNotFoundError" in missing.stderr

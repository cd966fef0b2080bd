"""index.json and the dataset card: kept by every push, safe under concurrent pushes, read by `ls` in one download.

The real huggingface_hub client against the loopback Hub; "older parity"
repos are written through the same client the way parity wrote them before
index.json existed (the store and its own index file, nothing else).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from huggingface_hub import CommitOperationAdd, DatasetCard, HfApi, hf_hub_download

from parity import goldens
import parity.goldens.upload  # noqa: F401  (loads the submodule read below)
from parity import hub as hub_client
from tests.support.hub_server import WRITE_TOKEN
from parity.goldens.card import END, START
from parity.goldens.refs import index_path
from parity.errors import HubError
from parity.schemas import Store

REPO = "org/goldens"
ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = "xxh3-128:" + "1" * 32


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setattr(hub_client, "BACKOFF_SECONDS", 0.01)


def manifest(path):
    return Store.open(path).manifest


def identity(m) -> tuple:
    """What the card must tell about a golden."""
    return (m.digest, m.request.model.id, m.request_key, m.request.num_hidden_layers, m.device.kind)


def index_doc(hub) -> dict:
    return json.loads(hub.server.content(hub.server.files(REPO)["index.json"]))


def load_card(hub) -> DatasetCard:
    local = hf_hub_download(REPO, "README.md", repo_type="dataset", endpoint=hub.server.endpoint,
                            cache_dir=hub.cache_dir / "card")
    return DatasetCard.load(local)


def card_identities(card: DatasetCard) -> set[tuple]:
    return {(g["digest"], g["model"], g["request_key"], g["num_hidden_layers"], g["device"])
            for g in card.data["parity"]["goldens"]}


def table_rows(card: DatasetCard) -> list[str]:
    block = card.text[card.text.index(START):card.text.index(END)]
    return [line for line in block.splitlines() if re.match(r"^\| `[0-9a-f]{12}` \|", line)]


def index_downloads(hub) -> list[str]:
    return [d for d in hub.server.downloads() if d == "index.json" or d.startswith("index/")]


def push_the_old_way(hub, path) -> None:
    """A push by parity before index.json: one commit with the store and index/<digest>.json only."""
    api = HfApi(endpoint=hub.server.endpoint, token=WRITE_TOKEN)
    api.create_repo(REPO, repo_type="dataset", exist_ok=True)
    m = manifest(path)
    files = sorted(p for p in path.rglob("*") if p.is_file())
    entry = goldens.GoldenEntry.from_manifest(m, size=sum(p.stat().st_size for p in files), files=len(files))
    old = {k: v for k, v in entry.fields().items() if k != "prompts"}  # a field those versions did not write
    old["format"] = "parity.golden-index/1"
    ops = [CommitOperationAdd(f"{entry.path}/{p.relative_to(path).as_posix()}", str(p)) for p in files]
    ops.append(CommitOperationAdd(index_path(m.digest), json.dumps(old, sort_keys=True, indent=1).encode()))
    api.create_commit(REPO, ops, repo_type="dataset", commit_message=f"Add golden {m.digest}")


# -- the card and the index after ordinary pushes ------------------------------------
def test_two_pushes_card_and_index_list_both(hub, stores):
    a = stores(prompt=(1, 2, 3), weights_digest=WEIGHTS, created_at="2026-01-01T00:00:00+00:00")
    b = stores(prompt=(4, 5), model="tiny/qwen", num_hidden_layers=2, created_at="2026-02-01T10:30:00+00:00")
    goldens.push(a, REPO, **hub.kw)
    goldens.push(b, REPO, **hub.kw)
    assert hub.server.count("POST", "/commit/") == 2
    ma, mb = manifest(a), manifest(b)

    doc = index_doc(hub)
    assert (doc["format"], doc["version"]) == ("parity.goldens-index", 1)
    assert {g["digest"] for g in doc["goldens"]} == {ma.digest, mb.digest}
    assert all(g["prompts"] == 1 for g in doc["goldens"])
    # index/<digest>.json stay: parity before index.json reads only those.
    assert {index_path(ma.digest), index_path(mb.digest)} <= set(hub.server.files(REPO))

    card = load_card(hub)
    assert card_identities(card) == {identity(ma), identity(mb)}
    by_digest = {g["digest"]: g for g in card.data["parity"]["goldens"]}
    assert by_digest[ma.digest]["num_hidden_layers"] is None  # the full model
    assert by_digest[ma.digest]["weights_digest"] == WEIGHTS
    assert by_digest[mb.digest]["versions"] == {"cpu": "1.0", "parity": "test"}
    assert card.data["pretty_name"] == f"parity goldens: {REPO}" and "parity" in card.data["tags"]
    assert card.data["viewer"] is False
    assert DatasetCard(card.content).data.to_dict() == card.data.to_dict()  # what the Hub will parse back

    rows = table_rows(card)
    assert len(rows) == 2
    assert rows[0].startswith(f"| `{mb.digest[9:21]}` | tiny/qwen | — | `{mb.request_key[9:21]}` | 1 | 4 + 0 | 2 | cpu (cpu 1.0, parity test) | 2026-02-01 10:30 |")
    assert rows[1].startswith(f"| `{ma.digest[9:21]}` | tiny/llama | `{'1' * 12}` | `{ma.request_key[9:21]}` | 1 | 4 + 0 | all |")
    assert f"parity record --device rbln --model MODEL --golden {REPO}" in card.text
    assert f"parity bisect --device rbln --model MODEL --golden {REPO}" in card.text


def test_ls_reads_one_index_file(hub, stores):
    a = stores(prompt=(1, 2), created_at="2026-01-01T00:00:00+00:00")
    b = stores(prompt=(3, 4), model="tiny/qwen", created_at="2026-02-01T00:00:00+00:00")
    c = stores(prompt=(3, 4), model="tiny/qwen", device="rbln", created_at="2026-03-01T00:00:00+00:00")
    goldens.push(a, REPO, **hub.kw)
    goldens.push_many([b, c], REPO, **hub.kw)
    hub.server.clear_log()

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    listed = subprocess.run([sys.executable, "-m", "parity.cli", "ls", "--repo", REPO, "--json"], capture_output=True,
                            text=True, env=env, timeout=300, cwd=ROOT)
    assert listed.returncode == 0, listed.stderr
    assert index_downloads(hub) == ["index.json"]
    assert hub.server.downloads() == ["index.json"]
    assert [e["digest"] for e in json.loads(listed.stdout)] == [manifest(p).digest for p in (c, b, a)]

    hub.server.clear_log()
    entries = goldens.list_goldens(REPO, cache_dir=hub.cache_dir / "fresh", endpoint=hub.server.endpoint)
    assert index_downloads(hub) == ["index.json"]

    # What the per-golden files give (how `ls` read before): the same entries.
    hub.server.commit_files(REPO, {"index.json": None})
    hub.server.clear_log()
    before = goldens.list_goldens(REPO, **hub.kw)
    assert sorted(index_downloads(hub)) == sorted(index_path(manifest(p).digest) for p in (a, b, c))
    assert entries == before and [e.prompts for e in entries] == [1, 1, 1]
    assert [e.model for e in entries] == ["tiny/qwen", "tiny/qwen", "tiny/llama"]


def test_offline_listing_reads_the_cached_index(hub, stores, monkeypatch):
    goldens.push(stores(prompt=(1, 1)), REPO, **hub.kw)
    goldens.push(stores(prompt=(2, 2)), REPO, **hub.kw)
    online = goldens.list_goldens(REPO, **hub.kw)
    head = hub.server.repos[REPO].refs["main"]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.server.clear_log()

    assert goldens.list_goldens(REPO, revision=head, **hub.kw) == online
    assert hub.server.requests == []


# -- concurrency ------------------------------------------------------------------------
def test_a_push_landing_between_read_and_commit_is_merged(hub, stores):
    a, b, c = stores(prompt=(1, 1)), stores(prompt=(2, 2)), stores(prompt=(3, 3), device="rbln")
    goldens.push(a, REPO, **hub.kw)
    hub.server.clear_log()
    landed = []
    # B's first commit arrives after B read index.json and the card; C's whole push lands first.
    hub.server.before_commit.append(lambda: landed.append(goldens.push(c, REPO, **hub.kw)))

    result = goldens.push(b, REPO, **hub.kw)

    assert landed and landed[0].uploaded
    stale = [r for r in hub.server.requests if r.method == "POST" and "/commit/" in r.path and r.status == 412]
    assert len(stale) == 1 and hub.server.count("POST", "/commit/") == 3  # B refused once, C, B again
    assert result.uploaded and result.revision == hub.server.repos[REPO].refs["main"]
    everyone = {manifest(p).digest for p in (a, b, c)}
    assert {g["digest"] for g in index_doc(hub)["goldens"]} == everyone
    card = load_card(hub)
    assert card_identities(card) == {identity(manifest(p)) for p in (a, b, c)}
    assert len(table_rows(card)) == 3
    assert {e.digest for e in goldens.list_goldens(REPO, **hub.kw)} == everyone


def test_concurrent_pushes_all_end_up_listed(hub, stores):
    paths = [stores(prompt=(i, i + 1)) for i in range(4)]
    # Each commit waits a moment before the Hub checks it, so pushers that
    # started together read the same head and all but one are refused.
    hub.server.before_commit.extend([lambda: threading.Event().wait(0.2)] * 16)
    errors, start = [], threading.Barrier(len(paths))

    def run(path):
        start.wait()
        try:
            goldens.push(path, REPO, **hub.kw)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(p,)) for p in paths]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)

    assert errors == []
    commits = [r for r in hub.server.requests if r.method == "POST" and "/commit/" in r.path]
    assert sum(r.status == 200 for r in commits) == len(paths)
    assert any(r.status == 412 for r in commits)
    everyone = {manifest(p).digest for p in paths}
    assert {g["digest"] for g in index_doc(hub)["goldens"]} == everyone
    assert card_identities(load_card(hub)) == {identity(manifest(p)) for p in paths}


def test_a_repo_that_never_settles_fails_in_one_line(hub, stores):
    goldens.push(stores(prompt=(1, 1)), REPO, **hub.kw)
    hub.server.clear_log()

    def another_commit():
        hub.server.commit_files(REPO, {"notes.txt": os.urandom(8)})
        hub.server.before_commit.append(another_commit)

    hub.server.before_commit.append(another_commit)
    path = stores(prompt=(2, 2))
    with pytest.raises(HubError) as err:
        goldens.push(path, REPO, **hub.kw)
    hub.server.before_commit.clear()

    line = err.value.one_line()
    assert "\n" not in line and f"{goldens.upload.COMMIT_ATTEMPTS} attempts" in line and "push again" in line
    commits = [r for r in hub.server.requests if r.method == "POST" and "/commit/" in r.path]
    assert len(commits) == goldens.upload.COMMIT_ATTEMPTS and all(r.status == 412 for r in commits)
    assert index_path(manifest(path).digest) not in hub.server.files(REPO)


# -- repos written by older parity -------------------------------------------------------
def test_repo_written_by_older_parity_lists_and_migrates(hub, stores):
    old1, old2 = stores(prompt=(1, 1), created_at="2025-01-01T00:00:00+00:00"), stores(prompt=(2, 2))
    push_the_old_way(hub, old1)
    push_the_old_way(hub, old2)
    hub.server.clear_log()

    listed = goldens.list_goldens(REPO, **hub.kw)
    assert {e.digest for e in listed} == {manifest(old1).digest, manifest(old2).digest}
    assert sorted(index_downloads(hub)) == sorted(index_path(manifest(p).digest) for p in (old1, old2))
    assert all(e.prompts == 0 for e in listed)  # not recorded by those versions

    new = stores(prompt=(3, 3))
    goldens.push(new, REPO, **hub.kw)
    assert {g["digest"] for g in index_doc(hub)["goldens"]} == {manifest(p).digest for p in (old1, old2, new)}
    assert len(table_rows(load_card(hub))) == 3

    # An older parity pushing after: only its own index file; ls still finds it, the next push adds it.
    late = stores(prompt=(4, 4))
    push_the_old_way(hub, late)
    hub.server.clear_log()
    listed = goldens.list_goldens(REPO, **hub.kw)
    assert manifest(late).digest in {e.digest for e in listed} and len(listed) == 4
    assert index_downloads(hub) == ["index.json", index_path(manifest(late).digest)]
    goldens.push(stores(prompt=(5, 5)), REPO, **hub.kw)
    assert len(index_doc(hub)["goldens"]) == 5 and len(table_rows(load_card(hub))) == 5


def test_an_index_from_a_newer_parity(hub, stores):
    a = stores(prompt=(1, 1))
    goldens.push(a, REPO, **hub.kw)
    newer = index_doc(hub) | {"version": 2, "goldens": "somewhere else"}
    hub.server.commit_files(REPO, {"index.json": json.dumps(newer).encode()})

    # Listing falls back to the per-golden files; pushing would drop what version 2 holds.
    assert [e.digest for e in goldens.list_goldens(REPO, **hub.kw)] == [manifest(a).digest]
    with pytest.raises(HubError) as err:
        goldens.push(stores(prompt=(2, 2)), REPO, **hub.kw)
    assert "index.json is version 2" in err.value.one_line() and "upgrade parity" in err.value.one_line()
    assert json.loads(hub.server.content(hub.server.files(REPO)["index.json"])) == newer


# -- the owner's edits ---------------------------------------------------------------------
def test_owner_text_outside_the_block_survives_a_push(hub, stores):
    a, b = stores(prompt=(1, 1)), stores(prompt=(2, 2))
    goldens.push(a, REPO, **hub.kw)
    text = load_card(hub).content
    text = text.replace("viewer: false", "viewer: false\nlicense: mit")
    text = text.replace(START, "Recorded on the lab's Xeon box; ask Kim before deleting.\n\n" + START)
    text = text.replace("## Goldens\n", "## Goldens\n\nA note inside the block.\n")
    text += "\nFooter written by hand.\n"
    HfApi(endpoint=hub.server.endpoint, token=WRITE_TOKEN).upload_file(
        path_or_fileobj=text.encode(), path_in_repo="README.md", repo_id=REPO, repo_type="dataset")

    goldens.push(b, REPO, **hub.kw)

    card = load_card(hub)
    assert card.data["license"] == "mit"
    assert "ask Kim before deleting." in card.text and card.text.rstrip().endswith("Footer written by hand.")
    assert card.text.index("ask Kim") < card.text.index(START) < card.text.index(END) < card.text.index("Footer")
    assert "A note inside the block." not in card.text
    assert len(table_rows(card)) == 2 and card.text.count(START) == 1
    assert card_identities(card) == {identity(manifest(a)), identity(manifest(b))}


def test_a_hand_written_readme_gets_the_block_appended(hub, stores):
    api = HfApi(endpoint=hub.server.endpoint, token=WRITE_TOKEN)
    api.create_repo(REPO, repo_type="dataset")
    readme = "---\nlicense: apache-2.0\n---\n# Our goldens\n\nHand-written.\n"
    api.upload_file(path_or_fileobj=readme.encode(), path_in_repo="README.md", repo_id=REPO, repo_type="dataset")
    a = stores()

    goldens.push(a, REPO, **hub.kw)

    card = load_card(hub)
    assert card.data["license"] == "apache-2.0" and card.data.get("pretty_name") is None
    assert card.text.startswith("# Our goldens\n\nHand-written.\n") and card.text.index(START) > 0
    assert card_identities(card) == {identity(manifest(a))}


def test_metadata_the_hub_refuses_is_a_one_line_error(hub, stores):
    goldens.push(stores(prompt=(1, 1)), REPO, **hub.kw)
    text = hub.server.content(hub.server.files(REPO)["README.md"]).decode()
    # Committed past the Hub's validation (no API request checks it).
    hub.server.commit_files(REPO, {"README.md": text.replace("viewer: false", "viewer: sometimes").encode()})

    with pytest.raises(HubError) as err:
        goldens.push(stores(prompt=(2, 2)), REPO, **hub.kw)
    line = err.value.one_line()
    assert "\n" not in line and "README.md" in line and '"viewer" must be a boolean' in line

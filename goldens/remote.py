"""Reading a goldens repo: its head, its index files, and (offline) what the HF cache kept of them."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

from huggingface_hub import hf_hub_download, snapshot_download
from huggingface_hub.errors import RemoteEntryNotFoundError

from parity.errors import GoldenNotFoundError, HubError, ParityError
from parity.hub import REPO_TYPE, Hub, call, check_repo
from parity.schemas import STORE_SUFFIX, Store
from parity.schemas.floorlink import store_files
from parity.settings import settings

from .catalog import GoldenEntry, NewerCatalog, newest_first, parse_catalog, read_index_dir
from .refs import GOLDENS_DIR, INDEX_DIR, INDEX_FILE, index_digest

log = logging.getLogger("parity")


@dataclass(frozen=True)
class Head:
    """A branch head as repo_info reports it."""

    sha: str
    files: frozenset[str] | None  # every path at sha; None if the Hub did not list them

    @classmethod
    def of(cls, info) -> "Head":
        siblings = getattr(info, "siblings", None)
        return cls(info.sha, None if siblings is None else frozenset(s.rfilename for s in siblings))

    def may_have(self, path: str) -> bool:
        return self.files is None or path in self.files


def fetch_file(hub: Hub, repo: str, sha: str, path: str, what: str) -> bytes | None:
    """One small file of the repo at a commit, through the HF cache; None if that commit has none."""
    def get():
        try:
            return hf_hub_download(repo, path, repo_type=REPO_TYPE, revision=sha, cache_dir=hub.cache_dir,
                                   endpoint=hub.endpoint, token=hub.token)
        except RemoteEntryNotFoundError:
            return None

    local = call(get, hub=hub, repo=repo, what=what)
    return None if local is None else Path(local).read_bytes()


def remote_entries(hub: Hub, repo: str, head: Head, what: str, *, writing: bool = False) -> list[GoldenEntry]:
    """Every golden at ``head``: index.json, plus per-golden files it lacks; per-golden files alone without it."""
    catalog = _catalog(hub, repo, head, what, writing=writing)
    if catalog is None:
        if head.files is not None and not any(index_digest(p) for p in head.files):
            return []
        # A repo written before index.json (or with an unreadable one): one download per golden.
        folder = call(
            lambda: snapshot_download(
                repo, repo_type=REPO_TYPE, revision=head.sha, allow_patterns=[f"{INDEX_DIR}/*.json"],
                cache_dir=hub.cache_dir, endpoint=hub.endpoint, token=hub.token,
            ),
            hub=hub, repo=repo, what=what,
        )
        return read_index_dir(Path(folder) / INDEX_DIR, repo, head.sha)
    return catalog + _unlisted(hub, repo, head, what, {e.digest_hex for e in catalog})


def _catalog(hub: Hub, repo: str, head: Head, what: str, *, writing: bool) -> list[GoldenEntry] | None:
    """The entries of index.json at ``head``; None when it has none this parity can read."""
    if not head.may_have(INDEX_FILE):
        return None
    data = fetch_file(hub, repo, head.sha, INDEX_FILE, what)
    if data is None:
        return None
    try:
        return parse_catalog(data, repo=repo, revision=head.sha)
    except NewerCatalog as e:
        if writing:
            # Rewriting it in version 1 would drop what the newer parity put there.
            raise HubError(f"{what}: {repo}'s {e}", hint="upgrade parity (`pip install -U parity`) to push to this repo") from None
        log.warning("%s: %s; reading the per-golden index files instead (upgrade parity)", repo, e)
    except ValueError as e:
        log.warning("%s: %s; reading the per-golden index files instead", repo, e)
    return None


def _unlisted(hub: Hub, repo: str, head: Head, what: str, known: set[str]) -> list[GoldenEntry]:
    # A parity from before index.json pushing to this repo adds only its own
    # index/<digest>.json: the file list repo_info already gave names those.
    missing = sorted(p for p in head.files or () if index_digest(p) is not None and index_digest(p) not in known)
    if missing:
        log.info("%s: %d golden(s) not yet in %s (pushed by an older parity); reading their index files",
                 repo, len(missing), INDEX_FILE)
    entries = []
    for path in missing:
        data = fetch_file(hub, repo, head.sha, path, what)
        try:
            entries.append(GoldenEntry.parse(json.loads(data or b""), repo=repo, revision=head.sha))
        except (ValueError, KeyError, TypeError) as e:
            log.warning("skipping an unreadable golden index file %s in %s: %s", path, repo, e)
    return entries


# -- list ---------------------------------------------------------------------
def cached_head(hub: Hub, repo: str, revision: str | None, what: str) -> str:
    """Offline: the commit a revision pointed to when the cache last saw it."""
    rev = revision or "main"
    ref_file = hub.storage_folder(repo) / "refs" / rev
    if ref_file.is_file():
        return ref_file.read_text().strip()
    if len(rev) == 40 and (hub.storage_folder(repo) / "snapshots" / rev).is_dir():
        return rev
    raise GoldenNotFoundError(
        f"{what}: {repo}@{rev} is not in the local cache and HF_HUB_OFFLINE is set",
        hint="unset HF_HUB_OFFLINE and pull it once while online",
    )


def list_entries(hub: Hub, repo: str, revision: str | None) -> list[GoldenEntry]:
    """Every golden of ``repo`` at ``revision`` (the branch head if None), newest first."""
    what = f"list goldens in {repo}"
    if hub.offline:
        sha = cached_head(hub, repo, revision, what)
        entries = _cached_entries(hub, repo, sha)
    else:
        api = hub.api()
        info = call(lambda: api.repo_info(repo, repo_type=REPO_TYPE, revision=revision), hub=hub, repo=repo, what=what)
        entries = remote_entries(hub, repo, Head.of(info), what)
    return newest_first(entries)


def _cached_entries(hub: Hub, repo: str, sha: str) -> list[GoldenEntry]:
    """Offline: only what earlier online listings and pulls brought into the cache."""
    root = hub.storage_folder(repo) / "snapshots" / sha
    entries: list[GoldenEntry] = []
    if (root / INDEX_FILE).is_file():
        try:
            entries = parse_catalog((root / INDEX_FILE).read_bytes(), repo=repo, revision=sha)
        except ValueError as e:
            log.warning("%s: cached %s", repo, e)
    known = {e.digest for e in entries}
    entries += [e for e in read_index_dir(root / INDEX_DIR, repo, sha) if e.digest not in known]
    return entries + _cached_stores(hub, repo, sha, {e.digest for e in entries})


def _cached_stores(hub: Hub, repo: str, sha: str, known: set[str]) -> list[GoldenEntry]:
    """Entries for stores pulled earlier whose index file is not in the cache."""
    root = hub.storage_folder(repo) / "snapshots" / sha
    out = []
    for path in sorted(root.glob(f"{GOLDENS_DIR}/*/*{STORE_SUFFIX}")):
        try:
            manifest = Store.open(path, fast_read=settings().fast_read).manifest
        except ParityError as e:
            log.warning("skipping cached store %s: %s", path, e.one_line())
            continue
        if manifest.digest in known:
            continue
        files = store_files(path, manifest)
        entry = GoldenEntry.from_manifest(manifest, size=sum(p.stat().st_size for p in files), files=len(files))
        out.append(replace(entry, path=path.relative_to(root).as_posix(), repo=repo, revision=sha))
    return out


def list_goldens(repo: str, *, model: str | None = None, revision: str | None = None, token=None, endpoint=None, cache_dir=None) -> list[GoldenEntry]:
    """The goldens of a repo, newest first, from the index files only (no arrays)."""
    check_repo(repo)
    hub = Hub.resolve(token=token, endpoint=endpoint, cache_dir=cache_dir)
    entries = list_entries(hub, repo, revision)
    if model:
        entries = [e for e in entries if e.model == model or e.model.endswith("/" + model)]
    return entries

"""Pushing stores to a goldens repo: one commit adds the stores, their index files, index.json and the card.

(``upload``, not ``push``: the package exports the function ``push``, which a
submodule of that name would shadow as an attribute of ``parity.goldens``.)
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import CommitOperationAdd
from huggingface_hub.errors import RepositoryNotFoundError

from parity import hub as hub_
from parity.errors import HubError, UsageError
from parity.hub import REPO_TYPE, Hub, HubRef, StaleHeadError, call, check_repo
from parity.schemas import Manifest, Store
from parity.schemas.floorlink import store_files, verify_with_floor
from parity.settings import settings

from . import card as card_
from .catalog import GoldenEntry, catalog_json, newest_first
from .refs import CARD_FILE, INDEX_FILE, index_path
from .remote import Head, fetch_file, remote_entries

log = logging.getLogger("parity")

# Each failed attempt means another commit landed in between, so k pushers
# racing need at most k attempts; beyond this the repo is busier than pushes.
COMMIT_ATTEMPTS = 5


@dataclass(frozen=True)
class PushResult:
    ref: str
    uploaded: bool
    files: int
    repo: str
    path: str
    revision: str
    entry: GoldenEntry | None = None


@dataclass(frozen=True)
class _Staged:
    """A store verified for upload, with what the repo will say about it."""

    store: Store
    manifest: Manifest
    entry: GoldenEntry
    files: tuple[Path, ...]  # every file of the store, sorted

    @classmethod
    def verify(cls, path: Path | str) -> "_Staged":
        store = Store.open(path, fast_read=settings().fast_read)
        manifest = verify_with_floor(path, fast_read=settings().fast_read)
        files = tuple(store_files(store.path, manifest))
        entry = GoldenEntry.from_manifest(manifest, size=sum(p.stat().st_size for p in files), files=len(files))
        return cls(store, manifest, entry, files)

    @property
    def digest(self) -> str:
        return self.manifest.digest

    def operations(self) -> list[CommitOperationAdd]:
        ops = [CommitOperationAdd(f"{self.entry.path}/{p.relative_to(self.store.path).as_posix()}", str(p))
               for p in self.files]
        ops.append(CommitOperationAdd(index_path(self.digest), self.entry.index_json()))
        return ops


@dataclass(frozen=True)
class _Base:
    """The head one commit attempt builds on, and what of the staged stores it lacks."""

    head: Head
    on_hub: dict[str, GoldenEntry]  # every golden at head, by digest
    todo: tuple[_Staged, ...]

    def uploads(self, staged: _Staged) -> bool:
        return _needs_upload(staged, self.on_hub)


def _needs_upload(staged: _Staged, on_hub: dict[str, GoldenEntry]) -> bool:
    """Not on the repo yet, or there without the noise floor it now carries."""
    listed = on_hub.get(staged.digest)
    return listed is None or (staged.entry.floor is not None and listed.floor != staged.entry.floor)


def push(store_path_: Path | str, repo: str, *, private: bool = False, token=None, endpoint=None, cache_dir=None) -> PushResult:
    """Uploads a store in one commit; a store already on the repo is a no-op."""
    return push_many([store_path_], repo, private=private, token=token, endpoint=endpoint, cache_dir=cache_dir)[0]


def push_many(store_paths: list[Path | str], repo: str, *, private: bool = False, token=None, endpoint=None,
              cache_dir=None) -> list[PushResult]:
    """Uploads several stores (goldens at several depths, say) in one commit.

    Every store is verified before anything is sent; stores already on the
    repo are left out, so pushing a set twice uploads nothing the second time.
    The commit also rewrites ``index.json`` and the dataset card from the
    head it was based on, and names that head as its parent: if another push
    lands in between, the Hub refuses it and the push starts over from the
    new head, so concurrent pushes all end up listed.
    """
    check_repo(repo)
    if not store_paths:
        raise UsageError("nothing to push: no stores given")
    staged = _stage(store_paths)
    hub = Hub.resolve(token=token, endpoint=endpoint, cache_dir=cache_dir)
    if hub.offline:
        raise UsageError("cannot push while HF_HUB_OFFLINE is set", hint="unset HF_HUB_OFFLINE")
    what = f"push {staged[0].digest}" if len(staged) == 1 else f"push {len(staged)} stores"
    base, oid = _commit_with_retries(hub, repo, staged, private=private, what=what)
    return _results(repo, staged, base, oid)


def _stage(store_paths: list[Path | str]) -> list[_Staged]:
    """Every store verified, each content digest once (the first path given for it)."""
    staged: dict[str, _Staged] = {}
    for path in store_paths:
        s = _Staged.verify(path)
        staged.setdefault(s.digest, s)
    return list(staged.values())


def _commit_with_retries(hub: Hub, repo: str, staged: list[_Staged], *, private: bool,
                         what: str) -> tuple[_Base, str | None]:
    """The head the push ended on and its commit's id (None: nothing to upload), reading the head again after a 412."""
    api = hub.api()
    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        base = _read_base(hub, api, repo, staged, private=private, what=what)
        if not base.todo:
            return base, None
        try:
            return base, _commit(hub, api, repo, base, what)
        except StaleHeadError:
            if attempt == COMMIT_ATTEMPTS:
                raise StaleHeadError(
                    f"{what}: {repo} on {hub.endpoint} kept changing: each of {COMMIT_ATTEMPTS} attempts found a newer commit",
                ) from None
            # Random, so pushers that collided do not collide again in step.
            delay = random.uniform(0, hub_.BACKOFF_SECONDS * attempt)
            log.info("%s: another commit landed on %s first; merging with it and retrying in %.2fs (attempt %d/%d)",
                     what, repo, delay, attempt + 1, COMMIT_ATTEMPTS)
            time.sleep(delay)
    raise AssertionError("unreachable: the last attempt returns or raises")


def _read_base(hub: Hub, api, repo: str, staged: list[_Staged], *, private: bool, what: str) -> _Base:
    head = call(lambda: _head_or_create(api, repo, private), hub=hub, repo=repo, what=what)
    on_hub = {e.digest: e for e in remote_entries(hub, repo, head, what, writing=True)}
    return _Base(head, on_hub, tuple(s for s in staged if _needs_upload(s, on_hub)))


def _head_or_create(api, repo: str, private: bool) -> Head:
    # Look before creating: create_repo's fallback for tokens that may not
    # create repos builds a URL only the default endpoint's hosts parse.
    try:
        return Head.of(api.repo_info(repo, repo_type=REPO_TYPE))
    except RepositoryNotFoundError:
        api.create_repo(repo, repo_type=REPO_TYPE, private=True if private else None, exist_ok=True)
        log.info("created dataset repo %s", repo)
        # A new repo has a first commit (.gitattributes): ours names it as parent.
        return Head.of(api.repo_info(repo, repo_type=REPO_TYPE))


def _commit(hub: Hub, api, repo: str, base: _Base, what: str) -> str:
    """Commits ``base.todo`` with index.json and the card rewritten, ``base.head`` as parent; the new commit's id."""
    replaced = {s.digest for s in base.todo}  # a golden uploaded again with its floor: its new entry
    listed = newest_first([*(e for d, e in base.on_hub.items() if d not in replaced), *(s.entry for s in base.todo)])
    readme = fetch_file(hub, repo, base.head.sha, CARD_FILE, what) if base.head.may_have(CARD_FILE) else None
    card_text = card_.render(repo, listed, None if readme is None else readme.decode("utf-8-sig", errors="replace"))
    info = call(lambda: _create_commit(api, repo, base, listed, card_text, what), hub=hub, repo=repo, what=what)
    return info.oid


def _create_commit(api, repo: str, base: _Base, listed: list[GoldenEntry], card_text: str, what: str):
    ops = [op for s in base.todo for op in s.operations()]
    ops.append(CommitOperationAdd(INDEX_FILE, catalog_json(listed)))
    ops.append(CommitOperationAdd(CARD_FILE, card_text.encode()))
    message, description = _commit_message(base.todo, listed)
    try:
        return api.create_commit(repo, ops, repo_type=REPO_TYPE, commit_message=message,
                                 commit_description=description, parent_commit=base.head.sha)
    except ValueError as e:
        # huggingface_hub has the Hub validate a README's metadata before uploading anything.
        if CARD_FILE not in str(e):
            raise
        raise HubError(
            f"{what}: the Hub refuses the metadata of {repo}'s {CARD_FILE}: {' '.join(str(e).split())}",
            hint=f"fix the card's YAML on the Hub (parity rewrites only its `{card_.METADATA_KEY}` key and the goldens table)",
        ) from None


def _commit_message(todo: tuple[_Staged, ...], listed: list[GoldenEntry]) -> tuple[str, str]:
    manifests = [s.manifest for s in todo]
    if len(manifests) == 1:
        m = manifests[0]
        message = f"Add golden {m.request.model.id} on {m.device.kind} ({m.digest})"
        description = f"request key {m.request_key}"
    else:
        models = sorted({m.request.model.id for m in manifests})
        message = f"Add {len(manifests)} goldens of {', '.join(models)}"
        description = "\n".join(f"{m.digest} request key {m.request_key}" + (
            f" ({m.request.num_hidden_layers} layers)" if m.request.num_hidden_layers else "")
            for m in manifests)
    description += f"\n\n{INDEX_FILE} and {CARD_FILE} list {len(listed)} goldens."
    return message, description


def _results(repo: str, staged: list[_Staged], base: _Base, oid: str | None) -> list[PushResult]:
    for s in staged:
        if not base.uploads(s):
            log.info("%s is already on %s at %s; nothing uploaded", s.digest, repo, s.entry.path)
    if oid is None:
        revision = base.head.sha
    else:
        log.info("pushed %d stores to %s@%s", len(base.todo), repo, oid)
        revision = oid
    # With nothing committed every store was already on the hub: none counts as uploaded.
    return [PushResult(str(HubRef(repo, s.entry.path, revision)), base.uploads(s), len(s.files) + 1 if base.uploads(s) else 0,
                       repo, s.entry.path, revision, s.entry)
            for s in staged]

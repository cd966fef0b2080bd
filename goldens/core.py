"""Push, pull, list and resolve goldens on a Hugging Face Hub dataset repo."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

from huggingface_hub import CommitOperationAdd, snapshot_download
from huggingface_hub.errors import RepositoryNotFoundError

from parity.errors import GoldenNotFoundError, NotAStoreError, ParityError, StoreCorruptError, StoreNotFoundError, UsageError
from schemas.digest import parse_tagged
from schemas.manifest import Manifest
from schemas.store import STORE_SUFFIX, Store

from .hub import REPO_TYPE, Hub, call
from .refs import (
    GOLDENS_DIR,
    INDEX_DIR,
    MIN_PREFIX,
    HubRef,
    check_repo,
    digest_prefix,
    index_path,
    is_hub_reference,
    store_path,
)

log = logging.getLogger("parity")

INDEX_FORMAT = "parity.golden-index/1"
NEAREST = 5


@dataclass(frozen=True)
class GoldenEntry:
    """What ``ls`` shows about one golden; read from ``index/<digest>.json``."""

    model: str
    device: str
    versions: dict
    positions: int  # generated positions (prompt positions are in prompt_positions)
    size: int  # bytes of the store's files
    created_at: str
    digest: str
    request_key: str
    path: str  # store directory inside the repo
    prompt_positions: int = 0
    files: int = 0
    # Layers the golden was recorded with (None: the full model); weights it was recorded from.
    num_hidden_layers: int | None = None
    weights_digest: str | None = None
    repo: str | None = field(default=None, compare=False)
    revision: str | None = field(default=None, compare=False)

    def to_dict(self) -> dict:
        return asdict(self)

    def ref(self) -> str:
        if not self.repo:
            raise ValueError("entry has no repo")
        return str(HubRef(self.repo, self.path, self.revision))

    @classmethod
    def from_manifest(cls, manifest: Manifest, *, size: int, files: int) -> "GoldenEntry":
        return cls(
            model=manifest.request.model.id,
            device=manifest.device.kind,
            versions=dict(manifest.device.versions),
            positions=manifest.generated_positions,
            size=size,
            created_at=manifest.created_at,
            digest=manifest.digest,
            request_key=manifest.request_key,
            path=store_path(manifest.request_key, manifest.digest),
            prompt_positions=manifest.prompt_positions,
            files=files,
            num_hidden_layers=manifest.request.num_hidden_layers,
            weights_digest=manifest.request.model.weights_digest,
        )

    @classmethod
    def parse(cls, d: dict, *, repo: str | None = None, revision: str | None = None) -> "GoldenEntry":
        if not isinstance(d, dict) or d.get("format") != INDEX_FORMAT:
            raise ValueError("not a golden index file")
        return cls(
            model=str(d["model"]),
            device=str(d["device"]),
            versions=dict(d.get("versions") or {}),
            positions=int(d["positions"]),
            size=int(d["size"]),
            created_at=str(d["created_at"]),
            digest=str(d["digest"]),
            request_key=str(d["request_key"]),
            path=str(d["path"]),
            prompt_positions=int(d.get("prompt_positions", 0)),
            files=int(d.get("files", 0)),
            # Index files written before these fields existed: a full-model golden
            # (--num-hidden-layers never reached the engine before them).
            num_hidden_layers=None if d.get("num_hidden_layers") is None else int(d["num_hidden_layers"]),
            weights_digest=d.get("weights_digest"),
            repo=repo,
            revision=revision,
        )

    def index_json(self) -> bytes:
        d = {k: v for k, v in self.to_dict().items() if k not in ("repo", "revision")}
        d["format"] = INDEX_FORMAT
        return (json.dumps(d, sort_keys=True, indent=1) + "\n").encode()


@dataclass(frozen=True)
class PushResult:
    ref: str
    uploaded: bool
    files: int
    repo: str
    path: str
    revision: str
    entry: GoldenEntry | None = None


def _sort_key(entry: GoldenEntry):
    try:
        t = datetime.fromisoformat(entry.created_at.replace("Z", "+00:00"))
        if t.tzinfo is None:
            t = t.replace(tzinfo=timezone.utc)
        return (t.timestamp(), entry.digest)
    except ValueError:
        return (0.0, entry.digest)


# -- push ---------------------------------------------------------------------
def push(store_path_: Path | str, repo: str, *, private: bool = False, token=None, endpoint=None, cache_dir=None) -> PushResult:
    """Uploads a store in one commit; a store already on the repo is a no-op."""
    return push_many([store_path_], repo, private=private, token=token, endpoint=endpoint, cache_dir=cache_dir)[0]


def push_many(store_paths: list[Path | str], repo: str, *, private: bool = False, token=None, endpoint=None,
              cache_dir=None) -> list[PushResult]:
    """Uploads several stores (goldens at several depths, say) in one commit.

    Every store is verified before anything is sent; stores already on the
    repo are left out, so pushing a set twice uploads nothing the second time.
    """
    check_repo(repo)
    if not store_paths:
        raise UsageError("nothing to push: no stores given")
    prepared = []
    for path in store_paths:
        store = Store.open(path)
        manifest = store.verify()
        files = sorted(p for p in store.path.rglob("*") if p.is_file())
        entry = GoldenEntry.from_manifest(manifest, size=sum(p.stat().st_size for p in files), files=len(files))
        if all(e.digest != entry.digest for _, _, e, _ in prepared):
            prepared.append((store, manifest, entry, files))
    hub = Hub.resolve(token=token, endpoint=endpoint, cache_dir=cache_dir)
    if hub.offline:
        raise UsageError("cannot push while HF_HUB_OFFLINE is set", hint="unset HF_HUB_OFFLINE")
    api = hub.api()
    digests = [m.digest for _, m, _, _ in prepared]
    what = f"push {digests[0]}" if len(digests) == 1 else f"push {len(digests)} stores"

    def head_or_create() -> str | None:
        # Look before creating: create_repo's fallback for tokens that may not
        # create repos builds a URL only the default endpoint's hosts parse.
        try:
            return api.repo_info(repo, repo_type=REPO_TYPE).sha
        except RepositoryNotFoundError:
            api.create_repo(repo, repo_type=REPO_TYPE, private=True if private else None, exist_ok=True)
            log.info("created dataset repo %s", repo)
            return None

    head = call(head_or_create, hub=hub, repo=repo, what=what)
    present: set[str] = set()
    if head is not None:
        for _, manifest, _, _ in prepared:
            if call(lambda: api.file_exists(repo, index_path(manifest.digest), repo_type=REPO_TYPE, revision=head),
                    hub=hub, repo=repo, what=what):
                present.add(manifest.digest)
    todo = [p for p in prepared if p[1].digest not in present]
    for _, manifest, entry, _ in prepared:
        if manifest.digest in present:
            log.info("%s is already on %s at %s; nothing uploaded", manifest.digest, repo, entry.path)
    if not todo:
        return [PushResult(str(HubRef(repo, e.path, head)), False, 0, repo, e.path, head, e) for _, _, e, _ in prepared]

    def commit():
        ops = []
        for store, manifest, entry, files in todo:
            ops += [CommitOperationAdd(f"{entry.path}/{p.relative_to(store.path).as_posix()}", str(p)) for p in files]
            ops.append(CommitOperationAdd(index_path(manifest.digest), entry.index_json()))
        if len(todo) == 1:
            m = todo[0][1]
            message = f"Add golden {m.request.model.id} on {m.device.kind} ({m.digest})"
            description = f"request key {m.request_key}"
        else:
            models = sorted({m.request.model.id for _, m, _, _ in todo})
            message = f"Add {len(todo)} goldens of {', '.join(models)}"
            description = "\n".join(f"{m.digest} request key {m.request_key}" + (
                f" ({m.request.num_hidden_layers} layers)" if m.request.num_hidden_layers else "")
                for _, m, _, _ in todo)
        return api.create_commit(repo, ops, repo_type=REPO_TYPE, commit_message=message,
                                 commit_description=description)

    info = call(commit, hub=hub, repo=repo, what=what)
    log.info("pushed %d stores to %s@%s", len(todo), repo, info.oid)
    results = []
    for _, manifest, entry, files in prepared:
        uploaded = manifest.digest not in present
        results.append(PushResult(str(HubRef(repo, entry.path, info.oid)), uploaded, len(files) + 1 if uploaded else 0,
                                  repo, entry.path, info.oid, entry))
    return results


# -- list ---------------------------------------------------------------------
def _head(hub: Hub, repo: str, revision: str | None, what: str) -> str:
    """The commit a revision points to (offline: the one recorded in the cache)."""
    if hub.offline:
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
    api = hub.api()
    return call(lambda: api.repo_info(repo, repo_type=REPO_TYPE, revision=revision), hub=hub, repo=repo, what=what).sha


def _list(hub: Hub, repo: str, revision: str | None) -> list[GoldenEntry]:
    what = f"list goldens in {repo}"
    sha = _head(hub, repo, revision, what)
    if hub.offline:
        # Only what an earlier online listing brought into the cache.
        index = hub.storage_folder(repo) / "snapshots" / sha / INDEX_DIR
        texts = [p.read_bytes() for p in sorted(index.glob("*.json"))] if index.is_dir() else []
    else:
        folder = call(
            lambda: snapshot_download(
                repo, repo_type=REPO_TYPE, revision=sha, allow_patterns=[f"{INDEX_DIR}/*.json"],
                cache_dir=hub.cache_dir, endpoint=hub.endpoint, token=hub.token,
            ),
            hub=hub, repo=repo, what=what,
        )
        index = Path(folder) / INDEX_DIR
        texts = [p.read_bytes() for p in sorted(index.glob("*.json"))] if index.is_dir() else []
    entries = []
    for text in texts:
        try:
            entries.append(GoldenEntry.parse(json.loads(text), repo=repo, revision=sha))
        except (ValueError, KeyError, TypeError) as e:
            log.warning("skipping an unreadable golden index file in %s: %s", repo, e)
    if hub.offline:
        entries += _cached_stores(hub, repo, sha, {e.digest for e in entries})
    return sorted(entries, key=_sort_key, reverse=True)


def _cached_stores(hub: Hub, repo: str, sha: str, known: set[str]) -> list[GoldenEntry]:
    """Entries for stores pulled earlier whose index file is not in the cache."""
    root = hub.storage_folder(repo) / "snapshots" / sha
    out = []
    for path in sorted(root.glob(f"{GOLDENS_DIR}/*/*{STORE_SUFFIX}")):
        try:
            manifest = Store.open(path).manifest
        except ParityError as e:
            log.warning("skipping cached store %s: %s", path, e.one_line())
            continue
        if manifest.digest in known:
            continue
        files = [p for p in path.rglob("*") if p.is_file()]
        entry = GoldenEntry.from_manifest(manifest, size=sum(p.stat().st_size for p in files), files=len(files))
        out.append(replace(entry, path=path.relative_to(root).as_posix(), repo=repo, revision=sha))
    return out


def list_goldens(repo: str, *, model: str | None = None, revision: str | None = None, token=None, endpoint=None, cache_dir=None) -> list[GoldenEntry]:
    """The goldens of a repo, newest first, from the index files only (no arrays)."""
    check_repo(repo)
    hub = Hub.resolve(token=token, endpoint=endpoint, cache_dir=cache_dir)
    entries = _list(hub, repo, revision)
    if model:
        entries = [e for e in entries if e.model == model or e.model.endswith("/" + model)]
    return entries


# -- pull ---------------------------------------------------------------------
def _by_digest(hub: Hub, repo: str, prefix: str, revision: str | None) -> HubRef:
    entries = _list(hub, repo, revision)
    matches = [e for e in entries if parse_tagged(e.digest).startswith(prefix)]
    if not matches:
        raise GoldenNotFoundError(f"no golden with digest {prefix}… in {repo}")
    if len(matches) > 1:
        listed = ", ".join(e.digest for e in matches[:NEAREST])
        raise UsageError(f"digest prefix {prefix} is ambiguous in {repo}: {listed}", hint="give more digits of the digest")
    e = matches[0]
    return HubRef(repo, e.path, e.revision)


def _download(hub: Hub, ref: HubRef, *, force: bool = False) -> Path:
    what = f"pull {ref}"
    sha = _head(hub, ref.repo, ref.revision, what) if hub.offline else ref.revision
    folder = call(
        lambda: snapshot_download(
            ref.repo, repo_type=REPO_TYPE, revision=sha, allow_patterns=[f"{ref.path}/*"],
            cache_dir=hub.cache_dir, endpoint=hub.endpoint, token=hub.token,
            local_files_only=hub.offline, force_download=force,
        ),
        hub=hub, repo=ref.repo, what=what,
    )
    local = Path(folder) / ref.path
    if not (local / "zarr.json").is_file():
        raise GoldenNotFoundError(f"{what}: no store at {ref.path} in {ref.repo}@{Path(folder).name}")
    return local


def _verified(hub: Hub, ref: HubRef, expect: str | None) -> Path:
    local = _download(hub, ref)
    try:
        manifest = Store.open(local).verify()
    except (StoreCorruptError, NotAStoreError):
        if hub.offline:
            raise
        # The cached copy may be the damaged one: fetch it again, once.
        log.warning("cached copy of %s failed verification; downloading it again", ref)
        local = _download(hub, ref, force=True)
        try:
            manifest = Store.open(local).verify()
        except (StoreCorruptError, NotAStoreError) as e:
            raise StoreCorruptError(
                f"{ref} as served by {hub.endpoint} fails verification: {e}",
                hint="the copy on the Hub is damaged: push the golden again from its original store",
            ) from None
    if expect and not parse_tagged(manifest.digest).startswith(expect):
        raise StoreCorruptError(f"{local}: content digest {manifest.digest} is not the requested {expect}")
    return local


def pull(ref: str, *, repo: str | None = None, revision: str | None = None, token=None, endpoint=None, cache_dir=None) -> Path:
    """Downloads exactly one store into the HF cache, verifies it, returns its local path."""
    hub = Hub.resolve(token=token, endpoint=endpoint, cache_dir=cache_dir)
    if is_hub_reference(ref):
        href = HubRef.parse(ref)
        if repo and repo != href.repo:
            raise UsageError(f"--repo {repo} disagrees with the reference's repo {href.repo}")
        if revision:
            href = HubRef(href.repo, href.path, revision)
        name_hex = href.store_name[: -len(STORE_SUFFIX)]
        return _verified(hub, href, name_hex)
    prefix = digest_prefix(ref)
    if prefix is None:
        raise UsageError(
            f"not a hub reference or content digest: {ref!r}",
            hint=f"pass hf://datasets/ORG/NAME/..., or a digest (at least {MIN_PREFIX} hex digits) with --repo",
        )
    if not repo:
        raise UsageError(f"a digest ({ref}) needs --repo ORG/NAME")
    check_repo(repo)
    return _verified(hub, _by_digest(hub, repo, prefix, revision), prefix)


# -- resolution ---------------------------------------------------------------
def resolve_by_request(
    repo: str, request_key: str, *, device: str | None = "cpu", model: str | None = None,
    token=None, endpoint=None, cache_dir=None,
) -> tuple[Path, GoldenEntry, list[str]]:
    """Finds the golden recorded for a request key (newest if several), pulls it."""
    check_repo(repo)
    parse_tagged(request_key)
    hub = Hub.resolve(token=token, endpoint=endpoint, cache_dir=cache_dir)
    entries = _list(hub, repo, None)
    same_key = [e for e in entries if e.request_key == request_key]
    matches = [e for e in same_key if device is None or e.device == device]
    notes: list[str] = []
    if not matches:
        raise GoldenNotFoundError(_not_found_message(repo, request_key, device, model, entries, same_key))
    chosen = matches[0]  # entries are newest first
    if len(matches) > 1:
        notes.append(
            f"{len(matches)} goldens match request key {request_key}; picked the newest "
            f"({chosen.digest}, {chosen.created_at})"
        )
    local = _verified(hub, HubRef(repo, chosen.path, chosen.revision), parse_tagged(chosen.digest))
    return local, chosen, notes


def _not_found_message(repo, key, device, model, entries, same_key) -> str:
    where = f"{device} golden" if device else "golden"
    head = f"no {where} for request key {key} in {repo}"
    if same_key:
        others = sorted({e.device for e in same_key})
        return f"{head}; this request was recorded on: {', '.join(others)}"
    if not entries:
        return f"{head}; the repo holds no goldens"
    near = [e for e in entries if model and e.model == model] or entries
    if device:
        near = [e for e in near if e.device == device] or near
    shown = "; ".join(f"{e.model} on {e.device}, {e.positions} positions, {e.created_at}, key {e.request_key}" for e in near[:NEAREST])
    return f"{head}; nearest candidates: {shown}"


def resolve_store(ref: str | Path, *, repo: str | None = None, revision: str | None = None, token=None, endpoint=None, cache_dir=None) -> Path:
    """A local store path for what `diff` and `record --golden` are given."""
    text = str(ref)
    local = Path(text).expanduser()
    if local.exists():
        return local
    if is_hub_reference(text) or (repo and digest_prefix(text)):
        return pull(text, repo=repo, revision=revision, token=token, endpoint=endpoint, cache_dir=cache_dir)
    raise StoreNotFoundError(f"no store at {text}")

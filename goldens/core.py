"""Push, pull, list and resolve goldens on a Hugging Face Hub dataset repo."""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

from huggingface_hub import CommitOperationAdd, hf_hub_download, snapshot_download
from huggingface_hub.errors import RemoteEntryNotFoundError, RepositoryNotFoundError

from parity.errors import (
    GoldenNotFoundError,
    HubError,
    NotAStoreError,
    ParityError,
    StoreCorruptError,
    StoreNotFoundError,
    UsageError,
)
from parity.schemas.digest import parse_tagged
from parity.schemas.manifest import Manifest
from parity.schemas.store import STORE_SUFFIX, Store

from . import card as card_
from . import hub as hub_
from .hub import REPO_TYPE, Hub, StaleHeadError, call
from .refs import (
    CARD_FILE,
    GOLDENS_DIR,
    INDEX_DIR,
    INDEX_FILE,
    MIN_PREFIX,
    HubRef,
    check_repo,
    digest_prefix,
    index_digest,
    index_path,
    is_hub_reference,
    store_path,
)

log = logging.getLogger("parity")

INDEX_FORMAT = "parity.golden-index/1"  # index/<digest>.json
CATALOG_FORMAT = "parity.goldens-index"  # index.json
CATALOG_VERSION = 1
NEAREST = 5
# Each failed attempt means another commit landed in between, so k pushers
# racing need at most k attempts; beyond this the repo is busier than pushes.
COMMIT_ATTEMPTS = 5


@dataclass(frozen=True)
class GoldenEntry:
    """What ``ls`` shows about one golden; an entry of ``index.json`` (and ``index/<digest>.json``)."""

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
    prompts: int = 0  # 0: unknown (index files written before the field)
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
            prompts=len(manifest.request.prompts),
        )

    @classmethod
    def parse(cls, d: dict, *, repo: str | None = None, revision: str | None = None) -> "GoldenEntry":
        """An ``index/<digest>.json`` file."""
        if not isinstance(d, dict) or d.get("format") != INDEX_FORMAT:
            raise ValueError("not a golden index file")
        return cls.from_fields(d, repo=repo, revision=revision)

    @classmethod
    def from_fields(cls, d: dict, *, repo: str | None = None, revision: str | None = None) -> "GoldenEntry":
        if not isinstance(d, dict):
            raise ValueError("a golden's entry is not an object")
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
            prompts=int(d.get("prompts") or 0),
            repo=repo,
            revision=revision,
        )

    def fields(self) -> dict:
        """What the repo stores about the golden (where it was listed from is not part of it)."""
        return {k: v for k, v in self.to_dict().items() if k not in ("repo", "revision")}

    def index_json(self) -> bytes:
        d = self.fields()
        d["format"] = INDEX_FORMAT
        return (json.dumps(d, sort_keys=True, indent=1) + "\n").encode()

    @property
    def digest_hex(self) -> str:
        return parse_tagged(self.digest)


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


# -- the aggregated index ---------------------------------------------------------
class _NewerCatalog(ValueError):
    """index.json in a version this parity does not read (written by a newer one)."""


def catalog_json(entries: list[GoldenEntry]) -> bytes:
    """``index.json``: every golden's entry, one per line, so a push's diff is its own lines."""
    rows = [json.dumps(e.fields(), sort_keys=True) for e in sorted(entries, key=lambda e: e.digest)]
    return (f'{{"format": "{CATALOG_FORMAT}", "version": {CATALOG_VERSION}, "goldens": [\n'
            + ",\n".join(rows) + ("\n" if rows else "") + "]}\n").encode()


def parse_catalog(data: bytes, *, repo: str | None = None, revision: str | None = None) -> list[GoldenEntry]:
    """The entries of an ``index.json``; ValueError when it is not one this parity reads."""
    try:
        doc = json.loads(data)
    except ValueError as e:
        raise ValueError(f"{INDEX_FILE} is not JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != CATALOG_FORMAT:
        raise ValueError(f"{INDEX_FILE} is not a {CATALOG_FORMAT} file")
    version = doc.get("version")
    if type(version) is not int or version < 1:
        raise ValueError(f"{INDEX_FILE} has no valid version")
    if version > CATALOG_VERSION:
        raise _NewerCatalog(f"{INDEX_FILE} is version {version}, newer than the {CATALOG_VERSION} this parity reads")
    goldens = doc.get("goldens")
    if not isinstance(goldens, list):
        raise ValueError(f"{INDEX_FILE} lists no goldens")
    entries = []
    for d in goldens:
        try:
            entries.append(GoldenEntry.from_fields(d, repo=repo, revision=revision))
        except (ValueError, KeyError, TypeError) as e:
            log.warning("skipping an unreadable entry of %s in %s: %s", INDEX_FILE, repo, e)
    return entries


@dataclass(frozen=True)
class _Head:
    """A branch head as repo_info reports it."""

    sha: str
    files: frozenset[str] | None  # every path at sha; None if the Hub did not list them

    @classmethod
    def of(cls, info) -> "_Head":
        siblings = getattr(info, "siblings", None)
        return cls(info.sha, None if siblings is None else frozenset(s.rfilename for s in siblings))

    def may_have(self, path: str) -> bool:
        return self.files is None or path in self.files


def _fetch(hub: Hub, repo: str, sha: str, path: str, what: str) -> bytes | None:
    """One small file of the repo at a commit, through the HF cache; None if that commit has none."""
    def get():
        try:
            return hf_hub_download(repo, path, repo_type=REPO_TYPE, revision=sha, cache_dir=hub.cache_dir,
                                   endpoint=hub.endpoint, token=hub.token)
        except RemoteEntryNotFoundError:
            return None

    local = call(get, hub=hub, repo=repo, what=what)
    return None if local is None else Path(local).read_bytes()


def _read_index_dir(index: Path, repo: str, sha: str) -> list[GoldenEntry]:
    entries = []
    for p in sorted(index.glob("*.json")) if index.is_dir() else []:
        try:
            entries.append(GoldenEntry.parse(json.loads(p.read_bytes()), repo=repo, revision=sha))
        except (ValueError, KeyError, TypeError) as e:
            log.warning("skipping an unreadable golden index file in %s: %s", repo, e)
    return entries


def _remote_entries(hub: Hub, repo: str, head: _Head, what: str, *, writing: bool = False) -> list[GoldenEntry]:
    """Every golden at ``head``: index.json, plus per-golden files it lacks; per-golden files alone without it."""
    catalog = None
    if head.may_have(INDEX_FILE):
        data = _fetch(hub, repo, head.sha, INDEX_FILE, what)
        if data is not None:
            try:
                catalog = parse_catalog(data, repo=repo, revision=head.sha)
            except _NewerCatalog as e:
                if writing:
                    # Rewriting it in version 1 would drop what the newer parity put there.
                    raise HubError(f"{what}: {repo}'s {e}", hint="upgrade parity (`pip install -U parity`) to push to this repo") from None
                log.warning("%s: %s; reading the per-golden index files instead (upgrade parity)", repo, e)
            except ValueError as e:
                log.warning("%s: %s; reading the per-golden index files instead", repo, e)
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
        return _read_index_dir(Path(folder) / INDEX_DIR, repo, head.sha)
    # A parity from before index.json pushing to this repo adds only its own
    # index/<digest>.json: the file list repo_info already gave names those.
    known = {e.digest_hex for e in catalog}
    missing = sorted(p for p in head.files or () if index_digest(p) is not None and index_digest(p) not in known)
    if missing:
        log.info("%s: %d golden(s) not yet in %s (pushed by an older parity); reading their index files",
                 repo, len(missing), INDEX_FILE)
    for path in missing:
        data = _fetch(hub, repo, head.sha, path, what)
        try:
            catalog.append(GoldenEntry.parse(json.loads(data or b""), repo=repo, revision=head.sha))
        except (ValueError, KeyError, TypeError) as e:
            log.warning("skipping an unreadable golden index file %s in %s: %s", path, repo, e)
    return catalog


def _unique(entries: list[GoldenEntry]) -> list[GoldenEntry]:
    seen: dict[str, GoldenEntry] = {}
    for e in entries:
        seen.setdefault(e.digest, e)
    return list(seen.values())


# -- push ---------------------------------------------------------------------
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

    def head_or_create() -> _Head:
        # Look before creating: create_repo's fallback for tokens that may not
        # create repos builds a URL only the default endpoint's hosts parse.
        try:
            return _Head.of(api.repo_info(repo, repo_type=REPO_TYPE))
        except RepositoryNotFoundError:
            api.create_repo(repo, repo_type=REPO_TYPE, private=True if private else None, exist_ok=True)
            log.info("created dataset repo %s", repo)
            # A new repo has a first commit (.gitattributes): ours names it as parent.
            return _Head.of(api.repo_info(repo, repo_type=REPO_TYPE))

    def commit(todo, listed: list[GoldenEntry], card_text: str, parent: str):
        ops = []
        for store, manifest, entry, files in todo:
            ops += [CommitOperationAdd(f"{entry.path}/{p.relative_to(store.path).as_posix()}", str(p)) for p in files]
            ops.append(CommitOperationAdd(index_path(manifest.digest), entry.index_json()))
        ops.append(CommitOperationAdd(INDEX_FILE, catalog_json(listed)))
        ops.append(CommitOperationAdd(CARD_FILE, card_text.encode()))
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
        description += f"\n\n{INDEX_FILE} and {CARD_FILE} list {len(listed)} goldens."
        try:
            return api.create_commit(repo, ops, repo_type=REPO_TYPE, commit_message=message,
                                     commit_description=description, parent_commit=parent)
        except ValueError as e:
            # huggingface_hub has the Hub validate a README's metadata before uploading anything.
            if CARD_FILE not in str(e):
                raise
            raise HubError(
                f"{what}: the Hub refuses the metadata of {repo}'s {CARD_FILE}: {' '.join(str(e).split())}",
                hint=f"fix the card's YAML on the Hub (parity rewrites only its `{card_.METADATA_KEY}` key and the goldens table)",
            ) from None

    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        head = call(head_or_create, hub=hub, repo=repo, what=what)
        on_hub = {e.digest: e for e in _remote_entries(hub, repo, head, what, writing=True)}
        todo = [p for p in prepared if p[1].digest not in on_hub]
        if not todo:
            break
        listed = sorted(_unique([*on_hub.values(), *(e for _, _, e, _ in todo)]), key=_sort_key, reverse=True)
        readme = _fetch(hub, repo, head.sha, CARD_FILE, what) if head.may_have(CARD_FILE) else None
        card_text = card_.render(repo, listed, None if readme is None else readme.decode("utf-8-sig", errors="replace"))
        try:
            info = call(lambda: commit(todo, listed, card_text, head.sha), hub=hub, repo=repo, what=what)
            break
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

    for _, manifest, entry, _ in prepared:
        if manifest.digest in on_hub:
            log.info("%s is already on %s at %s; nothing uploaded", manifest.digest, repo, entry.path)
    if not todo:
        return [PushResult(str(HubRef(repo, e.path, head.sha)), False, 0, repo, e.path, head.sha, e)
                for _, _, e, _ in prepared]
    log.info("pushed %d stores to %s@%s", len(todo), repo, info.oid)
    results = []
    for _, manifest, entry, files in prepared:
        uploaded = manifest.digest not in on_hub
        results.append(PushResult(str(HubRef(repo, entry.path, info.oid)), uploaded, len(files) + 1 if uploaded else 0,
                                  repo, entry.path, info.oid, entry))
    return results


# -- list ---------------------------------------------------------------------
def _cached_head(hub: Hub, repo: str, revision: str | None, what: str) -> str:
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


def _list(hub: Hub, repo: str, revision: str | None) -> list[GoldenEntry]:
    what = f"list goldens in {repo}"
    if hub.offline:
        sha = _cached_head(hub, repo, revision, what)
        entries = _cached_entries(hub, repo, sha)
    else:
        api = hub.api()
        info = call(lambda: api.repo_info(repo, repo_type=REPO_TYPE, revision=revision), hub=hub, repo=repo, what=what)
        entries = _remote_entries(hub, repo, _Head.of(info), what)
    return sorted(_unique(entries), key=_sort_key, reverse=True)


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
    entries += [e for e in _read_index_dir(root / INDEX_DIR, repo, sha) if e.digest not in known]
    return entries + _cached_stores(hub, repo, sha, {e.digest for e in entries})


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
    sha = _cached_head(hub, ref.repo, ref.revision, what) if hub.offline else ref.revision
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

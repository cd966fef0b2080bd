"""Pulling one store into the HF cache, verified, by hub reference, digest prefix or request key.

(``download``, not ``pull``: the package exports the function ``pull``, which a
submodule of that name would shadow as an attribute of ``parity.goldens``.)
"""

from __future__ import annotations

import logging
from pathlib import Path

from huggingface_hub import snapshot_download

from parity.errors import GoldenNotFoundError, NotAStoreError, StoreCorruptError, StoreNotFoundError, UsageError
from parity.hub import REPO_TYPE, Hub, HubRef, call, check_repo, is_hub_reference
from parity.schemas.floorlink import verify_with_floor
from parity.schemas import STORE_SUFFIX
from parity.schemas.digest import parse_tagged
from parity.settings import settings

from .catalog import GoldenEntry
from .refs import MIN_PREFIX, digest_prefix
from .remote import cached_head, list_entries

log = logging.getLogger("parity")

NEAREST = 5


# -- pull ---------------------------------------------------------------------
def _by_digest(hub: Hub, repo: str, prefix: str, revision: str | None) -> HubRef:
    entries = list_entries(hub, repo, revision)
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
    sha = cached_head(hub, ref.repo, ref.revision, what) if hub.offline else ref.revision
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
        manifest = verify_with_floor(local, fast_read=settings().fast_read)
    except (StoreCorruptError, NotAStoreError):
        if hub.offline:
            raise
        # The cached copy may be the damaged one: fetch it again, once.
        log.warning("cached copy of %s failed verification; downloading it again", ref)
        local = _download(hub, ref, force=True)
        try:
            manifest = verify_with_floor(local, fast_read=settings().fast_read)
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
    entries = list_entries(hub, repo, None)
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

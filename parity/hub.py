"""The Hugging Face Hub client, wrapped: retries, offline mode, one-line errors.

Every call into ``huggingface_hub`` goes through :func:`call`, which retries
transient failures (connection errors, timeouts, 5xx, 429) and turns the
client's exceptions into parity errors whose message says what to do next.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar
from urllib.parse import quote, unquote

import httpx2
from huggingface_hub import HfApi, constants
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
    RevisionResolutionError,
)
from huggingface_hub.file_download import repo_folder_name

from parity.errors import GoldenNotFoundError, HubAuthError, HubError, ModelNotFoundError, UsageError
from parity.schemas import STORE_SUFFIX
from parity.settings import settings

log = logging.getLogger("parity")

REPO_TYPE = "dataset"
ATTEMPTS = 3
BACKOFF_SECONDS = 0.5
TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
SCHEME = "hf://"
PREFIX = "hf://datasets/"
_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
NETWORK_ERRORS = (httpx2.TransportError, ConnectionError, TimeoutError)

T = TypeVar("T")


@dataclass(frozen=True)
class Hub:
    """Where and as whom to talk to the Hub, resolved once per operation."""

    endpoint: str
    token: str | bool | None
    cache_dir: Path
    offline: bool

    @classmethod
    def resolve(cls, *, token=None, endpoint=None, cache_dir=None) -> "Hub":
        # huggingface_hub reads HF_ENDPOINT / HF_HUB_CACHE / HF_HUB_OFFLINE when
        # it is imported; explicit arguments win, and parity's own settings
        # (read at call time) can switch offline mode on as well.
        return cls(
            endpoint=(endpoint or constants.ENDPOINT).rstrip("/"),
            token=token,
            cache_dir=Path(cache_dir or constants.HF_HUB_CACHE).expanduser(),
            offline=settings().hf_offline or constants.HF_HUB_OFFLINE,
        )

    def api(self) -> HfApi:
        return HfApi(endpoint=self.endpoint, token=self.token)

    def storage_folder(self, repo: str) -> Path:
        return self.cache_dir / repo_folder_name(repo_id=repo, repo_type=REPO_TYPE)


def is_hub_reference(ref: str) -> bool:
    return isinstance(ref, str) and ref.startswith(SCHEME)


def check_repo(repo: str) -> str:
    if not isinstance(repo, str) or not _REPO_ID.match(repo):
        raise UsageError(f"not a Hub repo id: {repo!r}", hint="pass --repo ORG/NAME")
    return repo


@dataclass(frozen=True)
class HubRef:
    repo: str
    path: str
    revision: str | None = None

    def __str__(self) -> str:
        rev = f"@{quote(self.revision, safe='')}" if self.revision else ""
        return f"{PREFIX}{self.repo}{rev}/{self.path}"

    @property
    def store_name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    @classmethod
    def parse(cls, ref: str) -> "HubRef":
        if not ref.startswith(PREFIX):
            raise UsageError(
                f"not a dataset hub reference: {ref!r}",
                hint="use hf://datasets/ORG/NAME[@REVISION]/goldens/<key>/<name>.parity.zarr, as printed by `parity push`",
            )
        parts = ref[len(PREFIX):].strip("/").split("/")
        if len(parts) < 3:
            raise UsageError(f"hub reference {ref!r} names no store", hint="use the reference printed by `parity push`")
        org, name, rest = parts[0], parts[1], parts[2:]
        revision = None
        if "@" in name:
            name, _, rev = name.partition("@")
            revision = unquote(rev) or None
        repo = check_repo(f"{org}/{name}")
        path = "/".join(rest)
        if not path.endswith(STORE_SUFFIX) or ".." in rest:
            raise UsageError(
                f"hub reference {ref!r} does not end in a store directory (*{STORE_SUFFIX})",
                hint="use the reference printed by `parity push`",
            )
        return cls(repo=repo, path=path, revision=revision)


@dataclass(frozen=True)
class LocalRef:
    """A path that exists on this machine: a store or a directory of stores."""

    path: Path


@dataclass(frozen=True)
class RepoRef:
    """A Hub dataset repo ORG/NAME."""

    repo: str


def resolve_ref(ref: str) -> LocalRef | HubRef | RepoRef | None:
    """What a reference on the command line names, or None when it names nothing parity knows.

    An existing local path wins over everything (a directory may be called
    ``org/name``); then an ``hf://`` reference; then ``ORG/NAME``.
    """
    local = Path(ref).expanduser()
    if local.exists():
        return LocalRef(local)
    if is_hub_reference(ref):
        return HubRef.parse(ref)
    if ref.count("/") == 1 and not ref.startswith((".", "/", "~")):
        return RepoRef(ref)
    return None


class StaleHeadError(HubError):
    """A commit named a parent that is no longer the branch head: another commit landed first.

    The Hub answers 412 ("A commit has happened since. Please refresh and try
    again.") to a create_commit whose parent_commit is stale; huggingface_hub
    raises it as a plain HfHubHTTPError. Whoever committed must re-read the
    head and redo what depends on it.
    """

    hint = "push again: nothing was committed"


def http_status(exc: BaseException) -> int | None:
    """The HTTP status of a client error, if it carries a response."""
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, OfflineModeIsEnabled):
        return False
    if isinstance(exc, NETWORK_ERRORS):
        return True
    if isinstance(exc, HfHubHTTPError):
        return http_status(exc) in TRANSIENT_STATUS
    if _wrapper(exc):
        # snapshot_download reports a cache miss when the Hub is unreachable and
        # LFS uploads wrap their failure: the cause says what really happened.
        return _is_transient(exc.__cause__)
    return False


def _wrapper(exc: BaseException) -> bool:
    return exc.__cause__ is not None and (isinstance(exc, LocalEntryNotFoundError) or type(exc) is RuntimeError)


def call(fn: Callable[[], T], *, hub: Hub, repo: str, what: str) -> T:
    """Runs one Hub operation with retries; raises parity errors only."""
    delay = BACKOFF_SECONDS
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - every client error is mapped below
            if _is_transient(exc) and attempt < ATTEMPTS and not hub.offline:
                log.warning("%s: %s; retrying in %.1fs (attempt %d/%d)", what, short_error(exc), delay, attempt, ATTEMPTS)
                time.sleep(delay)
                delay *= 2
                continue
            raise translate(exc, hub=hub, repo=repo, what=what, attempts=attempt) from None
    raise AssertionError("unreachable")


def short_error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def translate(exc: BaseException, *, hub: Hub, repo: str, what: str, attempts: int = 1) -> Exception:
    """The parity error for a huggingface_hub (or network) exception."""
    if isinstance(exc, HubError):
        return exc
    if type(exc) is RuntimeError and exc.__cause__ is not None:
        return translate(exc.__cause__, hub=hub, repo=repo, what=what, attempts=attempts)
    where = f"{repo} on {hub.endpoint}"
    status = http_status(exc)
    if isinstance(exc, GatedRepoError):
        return HubAuthError(f"{what}: {where} is gated", hint="accept its access conditions on the Hub, then set HF_TOKEN or run `hf auth login`")
    if isinstance(exc, RepositoryNotFoundError):
        return GoldenNotFoundError(
            f"{what}: dataset repo {where} was not found",
            hint="check --repo; if the repo is private, set HF_TOKEN or run `hf auth login` with a token that can read it",
        )
    if isinstance(exc, RevisionNotFoundError):
        return GoldenNotFoundError(f"{what}: revision not found in {where}", hint="check the @revision of the reference")
    if status == 401:
        return HubAuthError(f"{what}: {hub.endpoint} rejected the credentials (401)")
    if status == 403:
        return HubAuthError(
            f"{what}: no permission on {where} (403)",
            hint="use a token with write access to the repo (HF_TOKEN or `hf auth login`), or push to a repo you own",
        )
    if isinstance(exc, OfflineModeIsEnabled) or (isinstance(exc, LocalEntryNotFoundError) and hub.offline):
        return GoldenNotFoundError(
            f"{what}: not in the local cache and HF_HUB_OFFLINE is set",
            hint="unset HF_HUB_OFFLINE and pull it once while online",
        )
    if isinstance(exc, (EntryNotFoundError, LocalEntryNotFoundError)) and not _is_transient(exc):
        return GoldenNotFoundError(f"{what}: not found in {where}")
    if _is_transient(exc):
        cause = exc.__cause__ if isinstance(exc, LocalEntryNotFoundError) and exc.__cause__ else exc
        return HubError(
            f"{what}: cannot reach {hub.endpoint} after {attempts} attempt(s) ({short_error(cause)})",
            hint="check the network and HF_ENDPOINT, or set HF_HUB_OFFLINE=1 to use cached goldens",
        )
    if status == 412:
        return StaleHeadError(f"{what}: {where} changed since it was read (412)")
    if isinstance(exc, HfHubHTTPError):
        return HubError(f"{what}: the Hub answered {status} for {where} ({short_error(exc)})", hint="retry later; rerun with PARITY_DEBUG=1 for details")
    return HubError(f"{what}: {short_error(exc)}", hint="rerun with PARITY_DEBUG=1 for details")


def _cause(exc: BaseException) -> BaseException:
    # The client reports a failed Hub call as a cache miss (LocalEntryNotFoundError)
    # or a revision it cannot resolve, with the real failure as the cause.
    while isinstance(exc, (LocalEntryNotFoundError, RevisionResolutionError)) and exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


def translate_model_error(exc: BaseException, *, repo: str, revision: str | None, endpoint: str, cache: Path,
               offline: bool) -> Exception:
    """The parity error for a failed model download (a ModelNotFoundError, HubAuthError or HubError)."""
    where = f"{repo}@{revision}" if revision else repo
    cause = _cause(exc)
    status = http_status(cause)
    if isinstance(cause, GatedRepoError):
        return HubAuthError(f"model {where} on {endpoint} is gated",
                            hint="accept its access conditions on the Hub, then set HF_TOKEN or run `hf auth login`")
    if isinstance(cause, RepositoryNotFoundError):
        return ModelNotFoundError(
            f"model repo {repo} was not found on {endpoint}",
            hint="check --model; if the repo is private, set HF_TOKEN or run `hf auth login` "
                 "with a token that can read it",
        )
    if isinstance(cause, RevisionNotFoundError):
        return ModelNotFoundError(f"revision {revision or 'main'!r} not found in model repo {repo} on {endpoint}",
                                  hint="--revision takes a branch, a tag or a full commit sha")
    if status == 401:
        return HubAuthError(f"{endpoint} rejected the credentials (401) for model {where}",
                            hint="check HF_TOKEN, or run `hf auth login` with a token that can read the repo")
    if status == 403:
        return HubAuthError(f"no permission to read model {where} on {endpoint} (403)",
                            hint="use a token that can read the repo (HF_TOKEN or `hf auth login`)")
    if offline or isinstance(cause, OfflineModeIsEnabled):
        return ModelNotFoundError(
            f"model {where} is not in the local Hugging Face cache ({cache}) and HF_HUB_OFFLINE is set",
            hint="unset HF_HUB_OFFLINE to download it, or pass a local model directory",
        )
    if isinstance(cause, NETWORK_ERRORS) or (isinstance(cause, OSError) and "Consistency check failed" in str(cause)):
        return HubError(f"download of model {where} from {endpoint} failed ({short_error(cause)})",
                        hint="check the network and HF_ENDPOINT, then run the same command again: "
                             "it downloads what is missing")
    if isinstance(cause, HfHubHTTPError):
        return HubError(f"the Hub answered {status} for model {where} on {endpoint} ({short_error(cause)})",
                        hint="retry later; rerun with PARITY_DEBUG=1 for details")
    if isinstance(cause, OSError) and cause.errno is not None:
        return HubError(f"cannot write model {where} to the Hugging Face cache {cache}: {cause.strerror or cause}",
                        hint="free disk space or point HF_HUB_CACHE elsewhere")
    return HubError(f"model {where}: {short_error(cause)}", hint="rerun with PARITY_DEBUG=1 for details")

"""The Hugging Face Hub client, wrapped: retries, offline mode, one-line errors.

Every call into ``huggingface_hub`` goes through :func:`call`, which retries
transient failures (connection errors, timeouts, 5xx, 429) and turns the
client's exceptions into parity errors whose message says what to do next.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

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
)
from huggingface_hub.file_download import repo_folder_name

from parity.errors import GoldenNotFoundError, HubAuthError, HubError
from parity.settings import settings

log = logging.getLogger("parity")

REPO_TYPE = "dataset"
ATTEMPTS = 3
BACKOFF_SECONDS = 0.5
TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
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

"""`parity diff --candidates-from`: the candidates of a reference in a directory of stores or a Hub repo."""

from __future__ import annotations

from pathlib import Path

from parity import goldens
from parity.errors import GoldenNotFoundError, UsageError
from parity.hub import LocalRef, RepoRef, resolve_ref
from parity.schemas import Store, stores_in
from parity.settings import settings


def candidates_from(reference: Store, source: str) -> list[Path]:
    """Candidates for ``reference`` in a directory of stores or a Hub repo ORG/NAME.

    A directory: every store but the reference; those recorded on the
    reference's trajectory when there are any. A repo: the goldens of the
    reference's request key other than the reference, oldest first (pulled
    and verified).
    """
    digest = reference.manifest.digest
    found = resolve_ref(source)
    if isinstance(found, LocalRef):
        stores = [Store.open(p, fast_read=settings().fast_read) for p in stores_in([found.path])]
        stores = [s for s in stores if s.manifest.digest != digest]
        following = [s for s in stores if s.manifest.run.get("golden") == digest]
        chosen = following or stores
        if not chosen:
            raise GoldenNotFoundError(f"--candidates-from {source}: no stores other than the reference")
        return [s.path for s in sorted(chosen, key=lambda s: (s.manifest.created_at, s.manifest.digest))]
    if not isinstance(found, RepoRef):
        raise UsageError(f"--candidates-from {source!r} is not a directory of stores or a Hub repo ORG/NAME")
    entries = [e for e in goldens.list_goldens(found.repo)
               if e.request_key == reference.manifest.request_key and e.digest != digest]
    if not entries:
        raise GoldenNotFoundError(f"no stores of request key {reference.manifest.request_key} in {source} "
                                  "other than the reference")
    entries.sort(key=lambda e: (e.created_at, e.digest))
    return [goldens.pull(e.ref()) for e in entries]

"""Finding the golden a run should follow: a local store, a hub reference, or a repo.

With a repo (``--golden ORG/NAME``) the run's request key is computed from
its own settings (no engine needed) and the matching CPU golden is pulled.
That plan is handed back with the golden, so the recording completes it
(``record(cfg, keyed=...)``) instead of planning its model a second time.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

from parity import goldens
from parity.errors import GoldenNotFoundError, UsageError
from parity.hub import HubRef, LocalRef, RepoRef, resolve_ref

from parity.recorder.inputs import legacy_request_key
from parity.recorder.plan import Plan, RecordConfig, plan_recording

log = logging.getLogger("parity")


@dataclass(frozen=True)
class FoundGolden:
    path: Path
    notes: list[str]
    # The plan of the run without its golden, when the golden was looked up by
    # its request key (None: the reference named the store itself).
    keyed: Plan | None = None


def find_golden(cfg: RecordConfig, ref: str, *, repo: str | None = None) -> FoundGolden:
    found = resolve_ref(ref)
    if isinstance(found, LocalRef):
        return FoundGolden(found.path, [])
    if repo or isinstance(found, HubRef):
        return FoundGolden(goldens.resolve_store(ref, repo=repo), [])
    if isinstance(found, RepoRef):
        plan = plan_recording(dataclasses.replace(cfg, golden=None), check_out=False)
        key = plan.request.key()
        log.info("looking up the golden for request %s in %s", key, ref)
        try:
            path, entry, notes = goldens.resolve_by_request(ref, key, device="cpu", model=plan.request.model.id)
        except GoldenNotFoundError as missing:
            # A schema-1 golden is filed under the key of its tokenizer files' bytes.
            legacy = legacy_request_key(plan.request, Path(cfg.tokenizer) if cfg.tokenizer else plan.model.path)
            if legacy == key:
                raise
            try:
                path, entry, notes = goldens.resolve_by_request(ref, legacy, device="cpu", model=plan.request.model.id)
            except GoldenNotFoundError:
                raise missing from None
            notes = [*notes, f"schema-1 golden found under its file-byte tokenizer key {legacy}"]
        notes = [f"following golden {entry.digest} ({entry.model}, {entry.device}, {entry.created_at})", *notes]
        return FoundGolden(path, notes, keyed=plan)
    raise UsageError(f"--golden {ref!r} is not a store directory, a hub reference (hf://...) or a repository ORG/NAME")

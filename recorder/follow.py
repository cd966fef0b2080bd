"""Finding the golden a run should follow: a local store, a hub reference, or a repo.

With a repo (``--golden ORG/NAME``) the run's request key is computed from
its own settings (no engine needed) and the matching CPU golden is pulled.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from parity.errors import GoldenNotFoundError, UsageError

from .inputs import legacy_request_key
from .record import RecordConfig, plan_recording

log = logging.getLogger("parity")


def resolve_golden(cfg: RecordConfig, ref: str, *, repo: str | None = None) -> tuple[Path, list[str]]:
    local = Path(ref).expanduser()
    if local.exists():
        return local, []
    from parity import goldens

    if goldens.is_hub_reference(ref) or repo:
        return goldens.resolve_store(ref, repo=repo), []
    if ref.count("/") == 1 and not ref.startswith((".", "/", "~")):
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
        return path, [f"following golden {entry.digest} ({entry.model}, {entry.device}, {entry.created_at})", *notes]
    raise UsageError(f"--golden {ref!r} is not a store directory, a hub reference (hf://...) or a repository ORG/NAME")

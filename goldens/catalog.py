"""What a goldens repo says about its goldens: the entry of one golden, ``index.json`` and ``index/<digest>.json``.

Formats only: parsing and writing them, no Hub calls (``remote`` reads them from the Hub).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from parity.hub import HubRef
from parity.schemas.digest import parse_tagged
from parity.schemas.manifest import Manifest

from .refs import INDEX_FILE, store_path

log = logging.getLogger("parity")

INDEX_FORMAT = "parity.golden-index/1"  # index/<digest>.json
CATALOG_FORMAT = "parity.goldens-index"  # index.json
CATALOG_VERSION = 1


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
    # The noise floor stored inside the golden's directory: its digest and kind (None: no floor).
    floor: str | None = None
    floor_kind: str | None = None
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
            floor=manifest.floor.digest if manifest.floor is not None else None,
            floor_kind=manifest.floor.kind if manifest.floor is not None else None,
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
            floor=None if d.get("floor") is None else str(d["floor"]),
            floor_kind=None if d.get("floor_kind") is None else str(d["floor_kind"]),
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


def _sort_key(entry: GoldenEntry):
    try:
        t = datetime.fromisoformat(entry.created_at.replace("Z", "+00:00"))
        if t.tzinfo is None:
            t = t.replace(tzinfo=timezone.utc)
        return (t.timestamp(), entry.digest)
    except ValueError:
        return (0.0, entry.digest)


def _unique(entries: list[GoldenEntry]) -> list[GoldenEntry]:
    seen: dict[str, GoldenEntry] = {}
    for e in entries:
        seen.setdefault(e.digest, e)
    return list(seen.values())


def newest_first(entries: list[GoldenEntry]) -> list[GoldenEntry]:
    """One entry per digest (the first seen), newest first: the order of ``ls`` and of the card."""
    return sorted(_unique(entries), key=_sort_key, reverse=True)


# -- the per-golden index files -------------------------------------------------
def read_index_dir(index: Path, repo: str, sha: str) -> list[GoldenEntry]:
    """The ``index/<digest>.json`` files of a local copy of the repo at ``sha``."""
    entries = []
    for p in sorted(index.glob("*.json")) if index.is_dir() else []:
        try:
            entries.append(GoldenEntry.parse(json.loads(p.read_bytes()), repo=repo, revision=sha))
        except (ValueError, KeyError, TypeError) as e:
            log.warning("skipping an unreadable golden index file in %s: %s", repo, e)
    return entries


# -- the aggregated index ---------------------------------------------------------
class NewerCatalog(ValueError):
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
        raise NewerCatalog(f"{INDEX_FILE} is version {version}, newer than the {CATALOG_VERSION} this parity reads")
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

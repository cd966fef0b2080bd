"""A golden's noise floor: a store kept inside the golden's directory and
linked from its manifest (SPEC.md, "Noise floor").

Attaching is crash-safe at every step: the floor moves in under a name of its
own digest, then the golden's ``zarr.json`` is replaced in one rename, then a
floor it replaces is removed. A reader follows only the link, so a directory
left by an interrupted attach is never taken for the golden's floor.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from dataclasses import replace
from pathlib import Path

from parity.errors import StoreCorruptError, UsageError

from .digest import parse_tagged
from .layout import ATTR_KEY, TMP_PREFIX
from .manifest import FloorLink, Manifest
from .reader import Store

log = logging.getLogger("parity")

FLOOR_PREFIX = "floor-"


def floor_dir_name(digest: str) -> str:
    return FLOOR_PREFIX + parse_tagged(digest)[:16]


def attach_floor(golden: Store, floor: Store, kind: str) -> Manifest:
    """Moves the committed store ``floor`` into ``golden``'s directory and links
    it from the golden's manifest; returns the golden's new manifest (same digest).

    ``floor`` must have been recorded on the golden's trajectory.
    """
    fm, gm = floor.manifest, golden.manifest
    if fm.run.get("golden") != gm.digest or not fm.run.get("forced"):
        raise UsageError(f"{floor.path} was not recorded on the trajectory of {golden.path}: it cannot be its floor")
    if fm.request_key != gm.request_key:
        raise UsageError(f"{floor.path} answers another request than {golden.path}: it cannot be its floor")
    name = floor_dir_name(fm.digest)
    target = golden.path / name
    if target.exists():
        shutil.rmtree(target)  # the same floor, attached before: replaced whole
    os.replace(floor.path, target)
    link = FloorLink(path=name, digest=fm.digest, kind=kind, device=fm.device.kind, dtype=fm.request.dtype)
    manifest = replace(gm, floor=link)
    _write_manifest(golden.path, manifest)
    old = gm.floor
    if old is not None and old.path != name and (golden.path / old.path).is_dir():
        shutil.rmtree(golden.path / old.path, ignore_errors=True)
    log.info("floor %s (%s) attached to %s", fm.digest, kind, golden.path)
    return manifest


def _write_manifest(path: Path, manifest: Manifest) -> None:
    """Replaces the group's manifest attribute in one rename of ``zarr.json``."""
    meta_path = path / "zarr.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    meta.setdefault("attributes", {})[ATTR_KEY] = manifest.to_dict()
    tmp = path / f"{TMP_PREFIX}zarr-{uuid.uuid4().hex[:8]}.json"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2, allow_nan=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, meta_path)
    finally:
        tmp.unlink(missing_ok=True)


def floor_path(golden: Store) -> Path | None:
    """Where the golden's linked floor is (None: it has none)."""
    link = golden.manifest.floor
    return None if link is None else golden.path / link.path


def open_floor(golden: Store, *, fast_read: bool = True) -> Store | None:
    """The golden's floor, opened and checked against the link (None: it has none)."""
    link = golden.manifest.floor
    if link is None:
        return None
    where = golden.path / link.path
    if where.is_symlink():
        raise StoreCorruptError(f"{golden.path}: its noise floor {link.path}/ is a symbolic link (parity follows no "
                                "links inside a store)", hint="pull the golden again, or diff without it (--no-floor)")
    if not (where / "zarr.json").is_file():
        raise StoreCorruptError(f"{golden.path}: its manifest links a noise floor at {link.path}/, which is missing",
                                hint="pull the golden again, or diff without it (--no-floor)")
    floor = Store.open(where, fast_read=fast_read)
    if floor.manifest.digest != link.digest:
        raise StoreCorruptError(f"{where}: the floor's content digest {floor.manifest.digest} is not the linked "
                                f"{link.digest}", hint="pull the golden again, or diff without it (--no-floor)")
    if floor.manifest.run.get("golden") != golden.manifest.digest:
        raise StoreCorruptError(f"{where}: the floor was not recorded on this golden's trajectory",
                                hint="pull the golden again, or diff without it (--no-floor)")
    return floor


def store_files(store_path: Path, manifest: Manifest) -> list[Path]:
    """The files that make a store: its own, and its linked floor's; not the
    leftovers of an interrupted write or an unlinked floor."""
    keep = manifest.floor.path if manifest.floor is not None else None
    out = []
    for p in sorted(store_path.rglob("*")):
        rel = p.relative_to(store_path).parts
        if not p.is_file() or any(part.startswith(TMP_PREFIX) for part in rel):
            continue
        if rel[0].startswith(FLOOR_PREFIX) and rel[0] != keep:
            continue
        out.append(p)
    return out


def verify_with_floor(path: Path | str, *, fast_read: bool = True) -> Manifest:
    """``Store.verify`` of a store and of the floor it links (which must be
    the linked one and recorded on this store's trajectory)."""
    store = Store.open(path, fast_read=fast_read)
    manifest = store.verify()
    floor = open_floor(store, fast_read=fast_read)
    if floor is not None:
        floor.verify()
    return manifest

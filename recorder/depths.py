"""Recordings at several depths (``record --depths``), reusing what is already recorded.

A depth K is the model cut to its first K layers (recorder/truncate.py); the
full depth is an ordinary recording, so its store is the usual golden. vLLM
builds a model's layers when the engine starts, so each depth is its own
engine start: they run one after the other in this process, and a depth whose
store is already in the output directory (same request key, device, versions
and golden) is taken as it is. That is also what lets an interrupted
``parity bisect`` resume.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from parity.errors import ParityError, UsageError
from parity.schemas import Manifest, Store
from parity.settings import settings

from .plan import Plan, RecordConfig, plan_recording
from .record import Recorder, record
from .sink import Progress
from .truncate import layer_count

log = logging.getLogger("parity")

ALL = "all"
EVERY = "every"


def parse_depths(spec: str, total: int) -> list[int]:
    """``1,2,4,all`` / ``2-6`` / ``every`` -> sorted layer counts within [1, total]."""
    out: set[int] = set()
    for raw in spec.split(","):
        part = raw.strip().lower()
        try:
            if part == ALL:
                out.add(total)
            elif part == EVERY:
                out.update(range(1, total + 1))
            elif "-" in part:
                a, b = (int(x) for x in part.split("-", 1))
                if a > b:
                    raise ValueError
                out.update(range(a, b + 1))
            else:
                out.add(int(part))
        except ValueError:
            raise UsageError(f"--depths: cannot read {raw.strip()!r}",
                             hint="give layer counts, ranges and 'all', e.g. 1,2,4,all or 1-8 or every") from None
    bad = sorted(d for d in out if not 1 <= d <= total)
    if bad:
        raise UsageError(f"--depths {spec}: the model has {total} layers, so {bad[0]} is out of range",
                         hint=f"use 1 to {total}, or 'all'")
    if not out:
        raise UsageError("--depths is empty")
    return sorted(out)


@dataclass(frozen=True)
class DepthRecording:
    depth: int  # layers recorded with
    total: int  # layers of the model
    path: Path
    manifest: Manifest
    reused: bool


def at_depth(cfg: RecordConfig, depth: int) -> RecordConfig:
    # The full depth is passed explicitly too (the request normalises it away), so every
    # depth is planned and reported the same way.
    return dataclasses.replace(cfg, engine=dataclasses.replace(cfg.engine, num_hidden_layers=depth))


def find_recorded(plan: Plan, out: Path) -> Path | None:
    """A committed store in ``out`` for exactly this planned recording, if there is one."""
    key = plan.request.key()
    golden = plan.golden.manifest.digest if plan.golden is not None else None
    versions = plan.profile.versions()
    if not out.is_dir():
        return None
    for path in sorted(out.iterdir()):
        if path.name.startswith(".") or not (path / "zarr.json").is_file():
            continue
        try:
            store = Store.open(path, fast_read=settings().fast_read)
            m = store.manifest
            if (m.request_key != key or m.device.kind != plan.profile.name or m.run.get("golden") != golden
                    or dict(m.device.versions) != versions):
                continue
            store.check_complete()
        except ParityError as e:
            log.debug("not reusing %s: %s", path, e.one_line())
            continue
        return path
    return None


def record_or_reuse(cfg: RecordConfig, progress: Callable[[Progress], None] | None = None,
                    *, total: int | None = None, reuse: bool = True, run: Recorder | None = None) -> DepthRecording:
    """Records ``cfg`` unless its output directory already holds that recording.

    ``run(cfg, progress)``: how to record it (default: one engine; ``record --replicas``: several)."""
    plan = plan_recording(cfg)
    total = total or layer_count(plan.model.path)
    depth = plan.depth.requested if plan.depth is not None else total
    existing = find_recorded(plan, plan.out) if reuse else None
    if existing is not None:
        log.info("depth %d: reusing %s", depth, existing)
        return DepthRecording(depth, total, existing, Store.open(existing, fast_read=settings().fast_read).manifest, True)
    result = run(cfg, progress) if run is not None else record(cfg, progress=progress, plan=plan)
    return DepthRecording(depth, total, result.path, result.manifest, False)


def record_depths(cfg: RecordConfig, depths: str | list[int], progress: Callable[[Progress], None] | None = None,
                  on_done: Callable[[DepthRecording], None] | None = None, *, reuse: bool = True,
                  run: Recorder | None = None) -> list[DepthRecording]:
    """One store per depth, shallowest first (``depths``: a --depths spelling or layer counts)."""
    if cfg.golden is not None:
        raise UsageError("--depths records goldens; to follow goldens at several depths use parity bisect",
                         hint="parity bisect --golden DIR|REPO --sweep records and diffs every depth")
    if cfg.engine.num_hidden_layers is not None:
        raise UsageError("--depths and --num-hidden-layers exclude each other")
    from .inputs import resolve_model
    from parity.settings import settings

    total = layer_count(resolve_model(cfg.model, settings().cache_dir, revision=cfg.revision).path)
    wanted = parse_depths(depths, total) if isinstance(depths, str) else sorted(set(depths))
    done = []
    for depth in wanted:
        rec = record_or_reuse(at_depth(cfg, depth), progress, total=total, reuse=reuse, run=run)
        done.append(rec)
        if on_done is not None:
            on_done(rec)
    return done

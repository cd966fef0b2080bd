"""``record --floor KIND``: a golden and its noise floor in one invocation.

The floor is a second recording of the same request with accepted numerics
(by default the same device in bfloat16), forced on the golden's trajectory,
moved into the golden's directory and linked from its manifest
(``schemas.floorlink``). ``parity diff GOLDEN CANDIDATE`` then judges the
candidate against it without being told.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from parity.errors import UsageError
from parity.schemas import Manifest, Store
from parity.schemas.floorlink import attach_floor
from parity.schemas.layout import TMP_PREFIX
from parity.settings import settings

from .plan import RecordConfig
from .record import Recorder, RecordResult, record
from .sink import Progress

log = logging.getLogger("parity")


@dataclass(frozen=True)
class FloorKind:
    name: str
    device: str | None  # None: the golden's own device
    dtype: str
    description: str


FLOOR_KINDS: dict[str, FloorKind] = {k.name: k for k in (
    FloorKind("bf16", None, "bfloat16", "the same device and engine in bfloat16"),
    FloorKind("fp16", None, "float16", "the same device and engine in float16"),
    FloorKind("hf-bf16", "hf", "bfloat16", "transformers (--device hf) in bfloat16: another implementation"),
)}
GOLDEN_DEVICES = ("cpu", "hf")


def floor_kind(name: str) -> FloorKind:
    try:
        return FLOOR_KINDS[name]
    except KeyError:
        raise UsageError(f"unknown floor {name!r} (known: {', '.join(FLOOR_KINDS)})") from None


def check_floor_options(cfg: RecordConfig, kind: FloorKind) -> None:
    """What a floor needs of the golden's recording, checked before either starts."""
    if cfg.golden is not None:
        raise UsageError("--floor records a golden's noise floor: it does not combine with --golden",
                         hint="a run that follows a golden is a candidate; record the golden itself with --floor")
    if cfg.device not in GOLDEN_DEVICES:
        raise UsageError(f"--floor goes with a golden recording (--device {' or '.join(GOLDEN_DEVICES)}), "
                         f"not --device {cfg.device}")
    if cfg.engine.dtype == kind.dtype and (kind.device or cfg.device) == cfg.device:
        raise UsageError(f"--floor {kind.name} would record the golden's own numerics ({cfg.engine.dtype} on "
                         f"{cfg.device}): the floor would be zero", hint="record the golden in float32")


def floor_config(cfg: RecordConfig, golden: Path, kind: FloorKind, out: Path) -> RecordConfig:
    return dataclasses.replace(
        cfg, device=kind.device or cfg.device, golden=golden, out=out, prompts=None, prompts_file=None,
        prompt_token_ids=None, num_prompts=None,
        engine=dataclasses.replace(cfg.engine, dtype=kind.dtype),
    )


def record_floor(cfg: RecordConfig, golden: Path, kind: FloorKind,
                 progress: Callable[[Progress], None] | None = None, *,
                 run: Recorder | None = None) -> tuple[Manifest, RecordResult]:
    """Records ``kind``'s floor on the committed golden at ``golden`` and
    attaches it; returns the golden's manifest (with its floor link) and the
    floor's recording. Until the attach, the floor is a hidden temporary
    directory inside the golden's, removed on any failure. ``run``: how to
    record it (default: one engine; ``record --replicas``: as the golden)."""
    staging = golden / f"{TMP_PREFIX}floor-{uuid.uuid4().hex[:8]}"
    try:
        result = (run or record)(floor_config(cfg, golden, kind, staging), progress)
        st = settings()
        manifest = attach_floor(Store.open(golden, fast_read=st.fast_read),
                                Store.open(result.path, fast_read=st.fast_read), kind.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    floor_path = golden / manifest.floor.path
    return manifest, dataclasses.replace(result, path=floor_path)

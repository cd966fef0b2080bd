"""`record`: run one device through its engine and write a parity store.

Flow: validate everything that can be validated without the engine (model,
prompts, output directory, device, lengths: plan.py), start the engine the
device runs on (engines/), open the row sink where the sampler runs (this
process, or vLLM's output worker: see capture.py and rows.py), stream every
captured row into its store writer, write the manifest (manifest.py), then
commit the store under its content-addressed name. Anything that goes wrong
before commit leaves only a hidden temporary directory, which is removed on
the way out.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from parity.errors import EngineError, GoldenMismatchError
from parity.schemas import GENERATED, PROMPT, Manifest
from parity.settings import settings

from .devices.base import TRUNCATE_CHECKPOINT
from .engines import Engine, engine_for, environment
from .manifest import build_manifest, sequences
from .plan import Plan, RecordConfig, plan_recording
from .sink import Progress, WriterSpec
from .truncate import truncated_dir



@dataclass(frozen=True)
class RecordResult:
    path: Path
    manifest: Manifest
    timings: dict


# How a recording is run: ``record`` itself (one engine), or ``record --replicas``'s several.
Recorder = Callable[[RecordConfig, Callable[[Progress], None] | None], RecordResult]


def record(cfg: RecordConfig, progress: Callable[[Progress], None] | None = None, *,
           plan: Plan | None = None, keyed: Plan | None = None) -> RecordResult:
    """Records one store; returns its path, manifest and timings.

    ``plan``: from plan_recording(cfg). ``keyed``: the plan of cfg without its
    golden, which the golden was looked up by (see plan_recording).
    """
    plan = plan or plan_recording(cfg, keyed=keyed)
    engine = engine_for(plan.profile)(cfg, plan, _engine_model(cfg, plan))
    with environment(plan.profile.environment(cfg.engine, full_vocab=plan.topn is None)):
        return _record(cfg, plan, engine, progress)


def _engine_model(cfg: RecordConfig, plan: Plan) -> Path:
    """The model directory the engine loads: a derived checkpoint when the device cuts layers that way."""
    depth = plan.depth
    if depth is not None and depth.truncated and plan.profile.layer_truncation(cfg.engine) == TRUNCATE_CHECKPOINT:
        return truncated_dir(plan.model.path, depth, settings().cache_dir, plan.request.model.weights_digest)
    return plan.model.path


def _record(cfg: RecordConfig, plan: Plan, engine: Engine, progress: Callable[[Progress], None] | None) -> RecordResult:
    t_start = time.perf_counter()
    engine.start()
    try:
        vocab_size = engine.vocab_size
        t_engine = time.perf_counter() - t_start
        if plan.golden is not None and plan.golden.manifest.vocab_size != vocab_size:
            raise GoldenMismatchError(
                f"the model's vocabulary ({vocab_size}) differs from the golden's ({plan.golden.manifest.vocab_size})")
        spec = _writer_spec(cfg, plan, vocab_size)
        t_gen_start = time.perf_counter()
        results, rows = engine.generate(spec, progress)
        try:
            t_gen = time.perf_counter() - t_gen_start
            stats = rows.stats()
            if stats.error:
                raise EngineError(f"capture lost alignment: {stats.error}")
            token_lists, seq_infos = sequences(plan, results, stats)
            manifest = build_manifest(plan, engine, rows, vocab_size=vocab_size, seq_infos=seq_infos,
                                      t_engine=t_engine, t_gen=t_gen)
            path, manifest = rows.commit(manifest, token_lists)
        except BaseException:
            rows.abort()
            raise
        # Generation through the published store: what a user waits for after the engine is up.
        timings = {**manifest.run["timings"], "record_s": round(time.perf_counter() - t_gen_start, 3)}
        return RecordResult(path, manifest, timings)
    finally:
        engine.shutdown()


def _writer_spec(cfg: RecordConfig, plan: Plan, vocab_size: int) -> WriterSpec:
    prompt_ids, prompt_logprobs = plan.prompt_ids, plan.request.prompt_logprobs
    reserve = None
    if cfg.engine.batch > 1 and len(prompt_ids) > 1:
        # Rows of concurrently decoded sequences interleave: give each its own region.
        reserve = {
            GENERATED: plan.lengths,
            PROMPT: [len(p) - 1 if prompt_logprobs else 0 for p in prompt_ids],
        }
    total = sum(plan.lengths) + sum(len(p) - 1 for p in prompt_ids if prompt_logprobs)
    return WriterSpec(out=str(plan.out), vocab_size=vocab_size, topn=plan.topn, num_seqs=len(prompt_ids),
                      total=total, reserve=reserve, lanes=cfg.engine.batch)

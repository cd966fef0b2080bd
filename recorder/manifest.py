"""The manifest of a recording: its request, the device it ran on, its sequences and how the run went."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import parity
from parity.errors import EngineError
from parity.schemas import Device, Manifest, SequenceInfo
from parity.settings import recorded_env

from .devices import EngineOptions
from .engines import Engine
from .plan import Plan
from .sink import SinkStats


def sequences(plan: Plan, results: list[tuple[list[int], str | None]],
              stats: SinkStats) -> tuple[list[list[int]], list[SequenceInfo]]:
    """Each sequence's tokens (prompt, then generated) and its manifest entry.

    Raises EngineError when a forced sequence left the golden's trajectory.
    """
    prompt_ids, prompt_texts, trajectories = plan.prompt_ids, plan.prompt_texts, plan.trajectories
    token_lists, seq_infos = [], []
    indices = plan.sequence_indices
    for i, (gen_ids, finish_reason) in enumerate(results):
        token_lists.append(list(prompt_ids[i]) + gen_ids)
        text = plan.tokenizer.decode(gen_ids, skip_special_tokens=False) if gen_ids else ""
        seq_infos.append(SequenceInfo(
            index=indices[i], prompt_len=len(prompt_ids[i]), generated_len=len(gen_ids),
            finish_reason=finish_reason, nan_rows=stats.nan_rows[i], inf_rows=stats.inf_rows[i],
            text=(prompt_texts[i] or "") + text,
        ))
    if trajectories:
        for i, (traj, toks) in enumerate(zip(trajectories, token_lists)):
            if toks[len(prompt_ids[i]):] != traj[: len(toks) - len(prompt_ids[i])]:
                raise EngineError(f"sequence {indices[i]} did not follow the golden trajectory")
    return token_lists, seq_infos


def build_manifest(plan: Plan, engine: Engine, rows, *, vocab_size: int, seq_infos: list[SequenceInfo],
                   t_engine: float, t_gen: float) -> Manifest:
    """The manifest to commit (the store writer adds the array digests)."""
    profile, golden_store, opts = plan.profile, plan.golden, engine.cfg.engine
    generated = sum(s.generated_len for s in seq_infos)
    run = {
        **engine.run_info(rows),
        "timings": {
            "engine_start_s": round(t_engine, 3),
            "generate_s": round(t_gen, 3),
            "generated_tokens_per_s": round(generated / t_gen, 2) if t_gen > 0 else None,
        },
        "forced": bool(plan.trajectories),
        "depth": _depth_info(plan, opts, engine.model_path),
        "golden": golden_store.manifest.digest if golden_store else None,
        "golden_request_key": golden_store.manifest.request_key if golden_store else None,
    }
    if plan.suite is not None:
        run["prompt_suite"] = plan.suite  # not in the request (the prompt ids are): which shipped suite they are
    device = Device(
        kind=profile.name,
        versions=profile.versions(),
        env=recorded_env(),
        engine_args=engine.engine_args(),
        host=profile.host(),
    )
    return Manifest(
        request=plan.request,
        device=device,
        vocab_size=vocab_size,
        tokenizer_vocab_size=len(plan.tokenizer),
        sequences=tuple(seq_infos),
        arrays={},
        created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        tool_version=parity.__version__,
        run=run,
        share=plan.share,
    )


def _depth_info(plan: Plan, opts: EngineOptions, engine_model: Path) -> dict | None:
    """How the layer count was applied (None for a full-model recording)."""
    if plan.depth is None or not plan.depth.truncated:
        return None
    return {"num_hidden_layers": plan.depth.requested, "of": plan.depth.total,
            "mechanism": plan.profile.layer_truncation(opts),
            "model_dir": str(engine_model) if engine_model != plan.model.path else None}

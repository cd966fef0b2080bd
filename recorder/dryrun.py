"""`record --dry-run`: the resolved plan of a recording, with no engine and no vllm import.

Everything ``record`` validates before starting the engine is validated here
the same way (``plan_recording``), and a refused request raises the same
one-line error. What is left is the state of this host: whether the device
can run here and whether the output directory can be created. A dry-run
reports those as ``problems`` instead of failing, because it is meant to be
run anywhere, including on a workstation without the device (an NPU plan
checked before the NPU host is booked).

A Hub model (``--model ORG/NAME``) not yet in the cache has its config and
tokenizer downloaded, not its weights: the plan then names the commit and
the weights ``record`` would download, and has no request key (the key
covers the weights digest). ``--golden ORG/NAME`` needs the key to find the
golden, so with it the weights are downloaded.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from parity.errors import DeviceUnavailableError

from .engines import engine_for
from .plan import Plan, RecordConfig, plan_recording

# Blosc LZ4 + byte shuffle on captured full-vocabulary rows (docs/performance.md, bench/record_overhead.py).
COMPRESSED_BYTES_PER_LOGIT = 3.0
FLOAT32_BYTES = 4
ID_BYTES = 4  # top-N ids are int32


def dry_run(cfg: RecordConfig, *, keyed: Plan | None = None, replicas: int = 1,
            ray_address: str | None = None) -> dict:
    """The plan ``record(cfg)`` would execute, as one JSON-serialisable dict.

    Raises the same ParityError as ``record`` for a request that cannot run
    anywhere (bad options, missing model, a golden that does not match);
    reports what only stops it on this host in ``problems``. ``keyed``: as
    for ``record``, the plan of cfg without its golden. ``replicas``: the
    share and CPUs each replica of ``record --replicas`` would get.
    """
    cfg = dataclasses.replace(cfg, check_device=False)
    plan = plan_recording(cfg, check_out=False, fetch_weights=False, keyed=keyed)
    profile, request = plan.profile, plan.request

    problems: list[str] = []
    notes: list[str] = []
    try:
        profile.check_available()
        available = True
    except DeviceUnavailableError as e:
        available = False
        problems.append(e.one_line())
    out_problem = _out_dir_problem(plan.out)
    if out_problem:
        problems.append(out_problem)

    vocab_size = model_vocab_size(plan.model.path)
    if plan.golden is not None and vocab_size is not None and vocab_size != plan.golden.manifest.vocab_size:
        problems.append(f"the model's config.json vocab_size ({vocab_size}) differs from the golden's "
                        f"({plan.golden.manifest.vocab_size}): the run would stop after the engine starts")

    prompt_rows = sum(len(p) - 1 for p in plan.prompt_ids) if request.prompt_logprobs else 0
    generated_rows = sum(plan.lengths)
    if not plan.trajectories:
        notes.append("generated positions are an upper bound: a sequence stops early at its end-of-sequence token")
    if plan.model.missing:
        notes.append(f"the weights of {plan.model.id}@{plan.model.revision} are not in the Hugging Face cache "
                     f"({len(plan.model.missing)} file(s)): record downloads them; the request key covers "
                     "their digest, so this plan has none")

    # The engine is built, not started: its arguments without loading anything.
    engine_args = engine_for(profile)(cfg, plan, plan.model.path).engine_args()
    resolved = {
        "device": profile.name,
        "available": available,
        "env": profile.environment(cfg.engine, full_vocab=plan.topn is None),
        "engine_args": engine_args,
        "device_plan": profile.plan_details(cfg.engine),
        "request_key": None if plan.model.missing else request.key(),
        "model": {"id": request.model.id, "path": str(plan.model.path), "source": plan.model.source,
                  "revision": plan.model.revision, "weights_missing": list(plan.model.missing)},
        "golden": plan.golden.manifest.digest if plan.golden is not None else None,
        "depth": _depth_plan(plan, cfg),
        "out": str(plan.out),
        "prompts": {"suite": plan.suite, "count": len(plan.prompt_ids),
                    "lengths": [len(p) for p in plan.prompt_ids]},
        "positions": {"prompt": prompt_rows, "generated": generated_rows, "total": prompt_rows + generated_rows},
        "estimated_bytes": estimate_bytes(prompt_rows + generated_rows, vocab_size, plan.topn),
        "problems": problems,
        "notes": notes,
    }
    if plan.share is not None:
        resolved["share"] = {"index": plan.share.index, "count": plan.share.count, "sequences": list(plan.members)}
    if replicas > 1:
        from .replicas import replica_plan

        resolved["replicas"] = replica_plan(plan, replicas, ray_address)
    return resolved


def _depth_plan(plan, cfg: RecordConfig) -> dict | None:
    """How --num-hidden-layers would be applied (None: the full model)."""
    if plan.depth is None or not plan.depth.truncated:
        return None
    mechanism = plan.profile.layer_truncation(cfg.engine)
    return {"num_hidden_layers": plan.depth.requested, "of": plan.depth.total, "mechanism": mechanism,
            "note": "a derived checkpoint of the first layers is built under the parity cache when recording"
            if mechanism == "checkpoint" else None}


def estimate_bytes(rows: int, vocab_size: int | None, topn: int | None) -> dict:
    """Raw float32 bytes of the row arrays, and the stored size for full-vocabulary rows.

    Top-N rows are too narrow for the full-row compression ratio to say
    anything, so they get no compressed estimate.
    """
    if topn:
        return {"vocab_size": vocab_size, "width": topn, "raw": rows * topn * (FLOAT32_BYTES + ID_BYTES),
                "compressed": None, "compressed_bytes_per_logit": None}
    if vocab_size is None:
        return {"vocab_size": None, "width": None, "raw": None, "compressed": None,
                "compressed_bytes_per_logit": COMPRESSED_BYTES_PER_LOGIT}
    return {"vocab_size": vocab_size, "width": vocab_size, "raw": rows * vocab_size * FLOAT32_BYTES,
            "compressed": round(rows * vocab_size * COMPRESSED_BYTES_PER_LOGIT),
            "compressed_bytes_per_logit": COMPRESSED_BYTES_PER_LOGIT}


def model_vocab_size(model_dir: Path) -> int | None:
    """``vocab_size`` from config.json (or its ``text_config``, for multimodal models)."""
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    for section in (config, config.get("text_config") or {}):
        if isinstance(section.get("vocab_size"), int):
            return section["vocab_size"]
    return None


def _out_dir_problem(out: Path) -> str | None:
    """Why ``record`` could not create a store under ``out``, without creating anything."""
    probe = out
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        return f"cannot create output directory {out}: {probe} is not a directory"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"output directory {out} is not writable ({probe})"
    return None

"""Starts vLLM exactly as a ``parity record --dry-run`` plan says, and prints what the plugin accepted (tests only).

Reads the plan (JSON) from the file given as the first argument, sets its
environment, starts ``vllm.LLM`` with its engine arguments and parity's
capture processor, and prints one JSON object: the platform, scheduler,
worker, runner and sampler classes vLLM ended up with, the configuration
after the plugin's checks and updates (model path, block size, KV blocks,
batch, parallelism, the plugin's ``additional_config``), and the plugin's own
reading of the environment variables the plan set. Then it asks for prompt
logprobs and reports how that request ended (parity refuses them on rbln).

Usage: python -m tests.support.rbln_engine_config PLAN.json
"""

from __future__ import annotations

import json
import os
import sys


def main(plan_path: str) -> None:
    with open(plan_path) as f:
        plan = json.load(f)
    os.environ.update(plan["env"])
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from parity.recorder.capture import CaptureProcessor

    llm = LLM(logits_processors=[CaptureProcessor], **plan["engine_args"])
    from vllm.platforms import current_platform
    from vllm_rbln import envs as rbln_envs

    config = llm.llm_engine.vllm_config
    core = llm.llm_engine.engine_core.engine_core
    worker = core.model_executor.driver_worker.worker
    additional = config.additional_config
    accepted = {
        "platform": f"{type(current_platform).__module__}.{type(current_platform).__name__}",
        "device_type": current_platform.device_type,
        "scheduler": type(core.scheduler).__name__,
        "worker": type(worker).__name__,
        "runner": type(worker.model_runner).__name__,
        "sampler": type(worker.model_runner.sampler).__name__,
        "model_impl": config.model_config.model_impl,
        "rbln_config": type(additional).__name__,
        "block_size": config.cache_config.block_size,
        "num_gpu_blocks": config.cache_config.num_gpu_blocks,
        "num_gpu_blocks_override": config.cache_config.num_gpu_blocks_override,
        "max_num_seqs": config.scheduler_config.max_num_seqs,
        "max_num_batched_tokens": config.scheduler_config.max_num_batched_tokens,
        "max_model_len": config.model_config.max_model_len,
        "tensor_parallel_size": config.parallel_config.tensor_parallel_size,
        "pipeline_parallel_size": config.parallel_config.pipeline_parallel_size,
        "enable_prefix_caching": config.cache_config.enable_prefix_caching,
        "async_scheduling": config.scheduler_config.async_scheduling,
        "additional_config": {k: getattr(additional, k) for k in plan["engine_args"]["additional_config"]},
        "plugin_env": {name: getattr(rbln_envs, name) for name in plan["env"] if name.startswith("VLLM_RBLN_")},
        "use_v2_model_runner": os.environ.get("VLLM_USE_V2_MODEL_RUNNER"),
        "decode_buckets": sorted(worker.model_runner.bucketing_manager.decode_batch_buckets),
    }
    try:
        llm.generate([TokensPrompt(prompt_token_ids=[1, 5, 9, 13])],
                     SamplingParams(max_tokens=1, prompt_logprobs=1), use_tqdm=False)
        accepted["prompt_logprobs"] = "returned"
    except Exception as e:  # noqa: BLE001 - the outcome is the finding
        accepted["prompt_logprobs"] = f"{type(e).__name__}: {e}"
    print(json.dumps(accepted, default=str))


if __name__ == "__main__":
    main(sys.argv[1])

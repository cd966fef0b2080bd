"""vLLM on Rebellions NPUs through the vllm-rbln plugin (runs only on an NPU host).

What we know of the plugin (engine facts): V1 model runner only; its sampler
honours raw logprobs with logprobs=-1 and custom logits processors; prompt
logprobs are reported broken, so they are off by default; warm-up with large
logprobs counts was reported to crash; block size is required.
"""

from __future__ import annotations

from parity.errors import DeviceUnavailableError

from .base import DeviceProfile, EngineOptions, module_available

DEFAULT_BLOCK_SIZE = 8192  # the legacy tool's --block-size-rbln


class RblnProfile(DeviceProfile):
    name = "rbln"
    prompt_logprobs_default = False
    install_hint = (
        "on an NPU host: pip install 'parity[rbln]' --extra-index-url <Rebellions package index> "
        "(vllm-rbln and rebel-compiler)"
    )
    packages = ("vllm-rbln", "rebel-compiler", "vllm", "torch")

    def check_available(self) -> None:
        missing = [m for m in ("vllm_rbln", "rebel") if not module_available(m)]
        if missing:
            raise DeviceUnavailableError(
                f"device 'rbln' needs the vllm-rbln plugin and rebel-compiler ({', '.join(missing)} not importable)",
                hint=self.install_hint,
            )

    def environment(self, opts: EngineOptions, *, full_vocab: bool) -> dict[str, str]:
        env = {
            "VLLM_PLUGINS": "rbln",
            "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
            "RBLN_KERNEL_MODE": "triton",
            "VLLM_DISABLE_COMPILE_CACHE": "1",
            # vLLM's own model implementations (not optimum-rbln's), as the legacy tool did.
            "VLLM_RBLN_USE_VLLM_MODEL": "1",
            "VLLM_RBLN_SAMPLER": "1",
        }
        if full_vocab:
            env["VLLM_RBLN_ENABLE_WARM_UP"] = "false"
        if opts.batch > 1:
            # One decode bucket equal to the batch keeps batch composition fixed.
            env["VLLM_RBLN_DECODE_BATCH_BUCKET_MIN"] = str(opts.batch)
            env["VLLM_RBLN_DECODE_BATCH_BUCKET_MAX"] = str(opts.batch)
        return env

    def engine_args(self, opts: EngineOptions) -> dict:
        return {
            "max_num_seqs": opts.batch,
            "block_size": opts.block_size or DEFAULT_BLOCK_SIZE,
            "tensor_parallel_size": opts.tp,
            "pipeline_parallel_size": opts.pp,
            "data_parallel_size": opts.dp,
            "enable_expert_parallel": opts.ep,
            "enable_prefix_caching": False,
            "max_num_batched_tokens": opts.max_num_batched_tokens or max(opts.max_model_len, 128),
        }

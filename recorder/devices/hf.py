"""Plain transformers, eager attention, float32: the reference vLLM's own tests use.

Recording the same request with `--device hf` and diffing it against a CPU
golden checks the golden itself. It does not go through vLLM: its engine
(recorder/engines/hf.py) scores each sequence with a KV cache, one token at
a time, greedy or forced onto a golden's trajectory.
"""

from __future__ import annotations

from parity.errors import DeviceUnavailableError

from .base import ENGINE_HF, DeviceProfile, EngineOptions, module_available


class HfProfile(DeviceProfile):
    name = "hf"
    engine = ENGINE_HF
    prompt_logprobs_default = True
    install_hint = "pip install torch transformers"
    packages = ("transformers", "torch")

    def check_available(self) -> None:
        missing = [m for m in ("torch", "transformers") if not module_available(m)]
        if missing:
            raise DeviceUnavailableError(f"device 'hf' needs {', '.join(missing)}", hint=self.install_hint)

    def engine_args(self, opts: EngineOptions) -> dict:
        return {"attn_implementation": "eager", "dtype": opts.dtype}

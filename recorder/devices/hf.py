"""Plain transformers, eager attention, float32: the reference vLLM's own tests use.

Recording the same request with `--device hf` and diffing it against a CPU
golden checks the golden itself. It does not go through vLLM: the runner
below scores each sequence with a KV cache, one token at a time, greedy or
forced onto a golden's trajectory.
"""

from __future__ import annotations

from pathlib import Path

from parity.errors import DeviceUnavailableError

from .base import DeviceProfile, EngineOptions, module_available


class HfProfile(DeviceProfile):
    name = "hf"
    runner = "hf"
    prompt_logprobs_default = True
    install_hint = "pip install torch transformers"
    packages = ("transformers", "torch")

    def check_available(self) -> None:
        missing = [m for m in ("torch", "transformers") if not module_available(m)]
        if missing:
            raise DeviceUnavailableError(f"device 'hf' needs {', '.join(missing)}", hint=self.install_hint)

    def engine_args(self, opts: EngineOptions) -> dict:
        return {"attn_implementation": "eager", "dtype": opts.dtype}


def run_hf(model_path: Path, prompts: list[list[int]], lengths: list[int], trajectories, *, dtype: str,
           seed: int, eos_token_id, prompt_logprobs: bool, emit):
    """Yields (generated ids, finish reason) per sequence; rows go to ``emit``.

    ``emit(kind, seq, position, logprobs)`` receives float32 log-softmax rows
    (torch tensors), prompt rows as one ``[n, vocab]`` block at position 0.
    """
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype), attn_implementation="eager")
    model.eval()
    eos = set(eos_token_id if isinstance(eos_token_id, (list, tuple)) else [eos_token_id])
    results = []
    with torch.no_grad():
        for i, ids in enumerate(prompts):
            out = model(torch.tensor([ids]), use_cache=True)
            logprobs = out.logits[0].float().log_softmax(dim=-1)
            if prompt_logprobs and len(ids) > 1:
                emit("prompt", i, 0, logprobs[:-1])
            current, past = logprobs[-1], out.past_key_values
            generated, reason = [], "length"
            for step in range(lengths[i]):
                emit("generated", i, step, current)
                token = trajectories[i][step] if trajectories else int(current.argmax())
                generated.append(token)
                if not trajectories and token in eos:
                    reason = "stop"
                    break
                if step + 1 == lengths[i]:
                    break
                out = model(torch.tensor([[token]]), past_key_values=past, use_cache=True)
                current, past = out.logits[0, -1].float().log_softmax(dim=-1), out.past_key_values
            results.append((generated, reason))
    return results

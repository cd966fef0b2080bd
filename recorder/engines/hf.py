"""Plain transformers as the recording engine: the hf reference device.

It does not go through vLLM: ``run_hf`` scores each sequence with a KV cache,
one token at a time, greedy or forced onto a golden's trajectory, and every
row goes to a sink in this process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from parity.errors import EngineError
from parity.schemas import PROMPT
from parity.settings import settings

from ..rows import LocalRows
from ..sink import Progress, RowSink, WriterSpec, tensor_rows
from .base import Engine, Generation

CAPTURE_HF = "hf"


class HfEngine(Engine):
    _vocab_size: int | None = None

    def engine_args(self) -> dict:
        return self.plan.profile.engine_args(self.cfg.engine)

    def start(self) -> None:
        # The model itself loads in run_hf: one pass over the prompts needs no engine kept running.
        from transformers import AutoConfig

        self._vocab_size = int(AutoConfig.from_pretrained(self.model_path).get_text_config().vocab_size)

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def generate(self, spec: WriterSpec, progress: Callable[[Progress], None] | None) -> Generation:
        rows = LocalRows(RowSink(spec, progress))
        try:
            return Generation(self._score(rows.sink), rows)
        except BaseException:
            rows.abort()
            raise

    def _score(self, sink: RowSink) -> list[tuple[list[int], str | None]]:
        plan, opts = self.plan, self.cfg.engine

        def emit(kind: str, seq: int, position: int, logprobs) -> None:
            values, ids = tensor_rows(logprobs if logprobs.ndim == 2 else logprobs[None, :], plan.topn, copy=True)
            if kind == PROMPT:
                sink.prompt(seq, position, values, ids)
            else:
                sink.generated([(seq, position)], values, ids)

        try:
            return run_hf(self.model_path, plan.prompt_ids, plan.lengths, plan.trajectories, dtype=opts.dtype,
                          seed=opts.seed, eos_token_id=plan.tokenizer.eos_token_id,
                          prompt_logprobs=plan.request.prompt_logprobs, emit=emit)
        except Exception as e:
            if settings().debug:
                raise
            raise EngineError(f"transformers failed while scoring: {type(e).__name__}: {e}") from None

    def run_info(self, rows) -> dict:
        return {"capture": CAPTURE_HF,
                "prompt_capture": CAPTURE_HF if self.plan.request.prompt_logprobs else None,
                "executor": None}


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

"""Tensor-level capture of full-vocabulary rows inside the vLLM engine.

Generated positions: a V1 logits processor sees each decode step's float32
logits ``[num_reqs, vocab]`` before any sampling transform; it log-softmaxes
them exactly as vLLM's sampler does and hands rows to a sink. It can also
force the trajectory (every logit but the golden token set to -inf) after the
row has been captured, so the stored distribution is the model's own.

Prompt positions: vLLM computes them in the model runner's
``_get_prompt_logprobs_dict`` through ``sampler.compute_logprobs``; we ask for
``prompt_logprobs=0`` (cheap on the public side) and wrap those two methods on
the in-process runner to keep the full rows. The wrapper checks every shape it
sees against the request it expects and disables itself on any mismatch, in
which case the recorder falls back to the public ``prompt_logprobs=-1`` path.

This module imports torch and vllm; it is only imported by the recorder.
"""

from __future__ import annotations

import logging
from typing import Callable, Protocol

import numpy as np
import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

log = logging.getLogger("parity")

EXTRA_KEY = "parity_seq"


class RowSink(Protocol):
    def generated(self, entries: list[tuple[int, int]], values: np.ndarray, ids: np.ndarray | None) -> None: ...
    def finished(self, seq: int) -> None: ...
    def prompt(self, seq: int, start: int, rows: np.ndarray) -> None: ...


class _State:
    """Process-wide hand-off between the recorder and the engine-owned processor."""

    sink: RowSink | None = None
    forced: dict[int, list[int]] = {}
    topn: int | None = None


STATE = _State()


def _seq_of(params) -> int | None:
    extra = getattr(params, "extra_args", None) or {}
    return extra.get(EXTRA_KEY)


class CaptureProcessor(LogitsProcessor):
    """Captures (and optionally forces) every decode step of parity requests."""

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool) -> None:
        self.rows: dict[int, tuple[int, list[int]]] = {}  # batch index -> (seq, output ids ref)

    def is_argmax_invariant(self) -> bool:
        # Must run for greedy requests too: capture and forcing both need every step.
        return False

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if not batch_update:
            return
        for index in batch_update.removed:
            entry = self.rows.pop(index, None)
            if entry is not None and STATE.sink is not None:
                # Lets the writer release the sequence's buffers as soon as it leaves the batch.
                STATE.sink.finished(entry[0])
        for index, params, _prompt, output_ids in batch_update.added:
            seq = _seq_of(params)
            if seq is None:
                self.rows.pop(index, None)
            else:
                self.rows[index] = (seq, output_ids)
        for a, b, direction in batch_update.moved:
            entry_a = self.rows.pop(a, None)
            entry_b = self.rows.pop(b, None)
            if entry_a is not None:
                self.rows[b] = entry_a
            if entry_b is not None and direction == MoveDirectionality.SWAP:
                self.rows[a] = entry_b

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.rows:
            return logits
        sink = STATE.sink
        indices = sorted(self.rows)
        if sink is not None:
            index_t = torch.tensor(indices, dtype=torch.long, device=logits.device)
            # Same op and dtype as vLLM's Sampler.compute_logprobs.
            logprobs = logits.index_select(0, index_t).log_softmax(dim=-1, dtype=torch.float32)
            if STATE.topn:
                values, ids = torch.topk(logprobs, STATE.topn, dim=-1)
                values_np, ids_np = values.cpu().numpy(), ids.to(torch.int32).cpu().numpy()
            else:
                values_np, ids_np = logprobs.cpu().numpy(), None
            sink.generated([(self.rows[i][0], len(self.rows[i][1])) for i in indices], values_np, ids_np)
        if STATE.forced:
            for index in indices:
                seq, output_ids = self.rows[index]
                trajectory = STATE.forced.get(seq)
                step = len(output_ids)
                if trajectory is not None and step < len(trajectory):
                    target = trajectory[step]
                    keep = logits[index, target].clone()
                    logits[index].fill_(float("-inf"))
                    logits[index, target] = keep if torch.isfinite(keep) else 0.0
        return logits


def install_prompt_hook(worker, on_rows: Callable[[int, int, torch.Tensor], None]) -> bool:
    """Wraps the runner's prompt-logprob computation to keep full rows.

    ``on_rows(seq, start, logprobs)`` receives ``[n, vocab]`` float32 rows whose
    first row predicts prompt token ``start + 1``. Returns False (and changes
    nothing) when this vLLM does not have the expected internals.
    """
    runner = getattr(worker, "model_runner", None)
    needed = ("_get_prompt_logprobs_dict", "sampler", "requests", "num_prompt_logprobs")
    if runner is None or not all(hasattr(runner, n) for n in needed):
        return False
    sampler = runner.sampler
    if not hasattr(sampler, "compute_logprobs"):
        return False
    original_dict = runner._get_prompt_logprobs_dict
    original_compute = sampler.compute_logprobs
    pending: list[tuple[int, int, int]] = []  # (seq, start, n) in the order vLLM will compute them
    state = {"ok": True}

    def expected_calls(num_scheduled_tokens) -> list[tuple[int, int, int]]:
        calls = []
        for req_id in runner.num_prompt_logprobs:
            num_tokens = num_scheduled_tokens.get(req_id)
            request = runner.requests.get(req_id)
            if num_tokens is None or request is None or request.prompt_token_ids is None:
                continue
            start = request.num_computed_tokens
            remaining = len(request.prompt_token_ids) - (start + 1)
            n = num_tokens if num_tokens <= remaining else remaining
            if n > 0:
                seq = _seq_of(request.sampling_params)
                calls.append((-1 if seq is None else seq, start, n))
        return calls

    def compute_logprobs(logits, *args, **kwargs):
        out = original_compute(logits, *args, **kwargs)
        if pending and state["ok"]:
            seq, start, n = pending.pop(0)
            if out.ndim != 2 or out.shape[0] != n:
                state["ok"] = False
                log.warning("prompt capture disabled: unexpected logits shape %s", tuple(out.shape))
            elif seq >= 0:
                on_rows(seq, start, out)
        return out

    def get_prompt_logprobs_dict(hidden_states, num_scheduled_tokens):
        pending[:] = expected_calls(num_scheduled_tokens) if state["ok"] else []
        try:
            return original_dict(hidden_states, num_scheduled_tokens)
        finally:
            if pending and state["ok"]:
                state["ok"] = False
                log.warning("prompt capture disabled: vLLM computed fewer prompt rows than expected")
            pending.clear()

    runner._get_prompt_logprobs_dict = get_prompt_logprobs_dict
    sampler.compute_logprobs = compute_logprobs
    runner._parity_prompt_capture = state
    return True


def prompt_capture_ok(worker) -> bool:
    state = getattr(getattr(worker, "model_runner", None), "_parity_prompt_capture", None)
    return bool(state and state["ok"])

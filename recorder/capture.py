"""Tensor-level capture of full-vocabulary rows inside the vLLM engine.

Generated positions: a V1 logits processor sees each decode step's logits
``[num_reqs, vocab]`` before any sampling transform; it log-softmaxes them in
float32 exactly as vLLM's sampler does and hands rows to a sink. It can also
force the trajectory (every logit but the golden token set to -inf) after the
row has been captured, so the stored distribution is the model's own.

Prompt positions: vLLM computes them in the model runner's
``_get_prompt_logprobs_dict`` through ``sampler.compute_logprobs``; we ask for
``prompt_logprobs=0`` (cheap on the public side) and wrap those two methods on
the runner to keep the full rows. The wrapper checks every shape it sees
against the request it expects and disables itself on any mismatch, in which
case the recorder falls back to the public ``prompt_logprobs=-1`` path.

Where the sampler runs: in the recorder's own process for the in-process
engine, in worker processes for vLLM's multiprocess executor (``--tp/--pp >
1``) and in Ray actors for its Ray executor. The recorder reaches every
worker through ``LLM.collective_rpc`` with the module-level functions at the
end of this file: ``configure`` sends each worker the trajectories to force
and opens the row sink (and so the store writer) in the one worker whose
sampler output vLLM returns (first tensor-parallel rank of the last pipeline
stage); ``sink_stats``, ``commit`` and ``abort`` finish the job there. Rows
never leave the process that computed them except as compressed shards on
disk.

This module imports torch and vllm; it is only imported by the recorder.
"""

from __future__ import annotations

import logging
import os
from typing import Callable

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from .sink import Progress, RowSink, SinkStats, WriterSpec, tensor_rows

log = logging.getLogger("parity")

EXTRA_KEY = "parity_seq"


class _State:
    """Per-process hand-off between the recorder's RPCs and the engine-owned processor."""

    sink: RowSink | None = None
    forced: dict[int, list[int]] = {}
    topn: int | None = None
    # Set by the recorder in its own process: a sink opened there reports progress directly.
    local_progress: Callable[[Progress], None] | None = None


STATE = _State()


def _seq_of(params) -> int | None:
    extra = getattr(params, "extra_args", None) or {}
    return extra.get(EXTRA_KEY)


def _ended(params, output_ids: list[int], prompt_len: int, max_model_len: int | None) -> bool:
    """Whether vLLM's stop check ended this request, as ``check_stop`` decides it.

    (``vllm/v1/core/sched/utils.py:94-115`` in vLLM 0.30.) The EOS token
    (``params.eos_token_id`` is None under ``ignore_eos``, which forced runs
    use: a golden's EOS mid-trajectory is no end), a stop token, max tokens,
    or the model length. Anything else that takes a request out of the batch
    (a pause, a preemption) is not an end. vLLM's min-tokens processor keeps
    stop tokens from being sampled earlier, so they need no check here.
    """
    n = len(output_ids)
    if n == 0:
        return False
    last = output_ids[-1]
    eos = getattr(params, "eos_token_id", None)
    if eos is not None and last == eos:
        return True
    if last in (getattr(params, "stop_token_ids", None) or ()):
        return True
    max_tokens = getattr(params, "max_tokens", None)
    if max_tokens is not None and n >= max_tokens:
        return True
    return max_model_len is not None and prompt_len + n >= max_model_len


class CaptureProcessor(LogitsProcessor):
    """Captures (and optionally forces) every decode step of parity requests."""

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool) -> None:
        # batch index -> (seq, output ids: vLLM's own list, grown in place, params, prompt length)
        self.rows: dict[int, tuple[int, list[int], object, int]] = {}
        model_config = getattr(vllm_config, "model_config", None)
        self.max_model_len: int | None = getattr(model_config, "max_model_len", None)
        self._mask: torch.Tensor | None = None  # forcing mask, reused (see apply)

    def is_argmax_invariant(self) -> bool:
        # Must run for greedy requests too: capture and forcing both need every step.
        return False

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if not batch_update:
            return
        for index in batch_update.removed:
            self._leave(self.rows.pop(index, None))
        for index, params, prompt, output_ids in batch_update.added:
            # vLLM reuses a removed request's index without listing it in "removed".
            self._leave(self.rows.pop(index, None))
            seq = _seq_of(params)
            if seq is not None:
                self.rows[index] = (seq, output_ids, params, len(prompt or ()))
        for a, b, direction in batch_update.moved:
            entry_a = self.rows.pop(a, None)
            entry_b = self.rows.pop(b, None)
            if entry_a is not None:
                self.rows[b] = entry_a
            if direction == MoveDirectionality.SWAP:
                if entry_b is not None:
                    self.rows[a] = entry_b
            else:
                # A one-way move fills b, the hole a removed request left (not listed in "removed").
                self._leave(entry_b)

    def _leave(self, entry: tuple[int, list[int], object, int] | None) -> None:
        """A request left the batch: tell the sink only if it ended, not if it was paused.

        Leaving the batch is not the end of a request: vllm-rbln's scheduler
        takes the decode batch out whenever it admits a prefill
        (``v1/core/rbln_scheduler.py:874-894``) and the runner removes those
        requests from the input batch as it removes finished ones
        (``v1/worker/rbln_model_runner.py:616-631``); vLLM's ``BatchUpdate``
        says which index left, not why. A sequence that reached its planned
        row count is finished by the sink itself; here what vLLM's stop check
        ended counts, early ends (EOS, a stop token) among them.
        """
        if entry is None or STATE.sink is None:
            return
        seq, output_ids, params, prompt_len = entry
        if _ended(params, output_ids, prompt_len, self.max_model_len):
            STATE.sink.finished(seq)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        # Device-resident logits (vllm-rbln's default VLLM_RBLN_USE_DEVICE_TENSOR=1)
        # live on the NPU, where every op here runs eagerly; so this method keeps to
        # the operations the plugin itself runs eagerly on those logits each step
        # (vllm-rbln 0.12, vLLM 0.30 paths; see docs/npu-host.md, "What runs where"):
        # row slices and index_select (v1/worker/rbln_model_runner.py:1871,1873),
        # log_softmax to float32 (vllm/v1/sample/sampler.py:307, called first thing
        # by v1/sample/rbln_sampler.py:291), topk (rbln_sampler.py:373), the copy to
        # the host (logprobs tensors .tolists(), rbln_model_runner.py:1553), a
        # host-built boolean mask applied with masked_fill_ (the allowed-token-ids
        # mask, vllm/v1/sample/sampler.py:394), advanced-index reads, isfinite and
        # index_put_ (min-tokens processor, vllm/v1/sample/logits_processor/
        # builtin.py:263-283). No Python value is read back from the device.
        if not self.rows:
            return logits
        sink = STATE.sink
        indices = sorted(self.rows)
        if sink is not None:
            # Same op and dtype as vLLM's Sampler.compute_logprobs. Captured rows
            # that are a run of the batch (every row, at batch 1 or when all
            # requests are parity's) are a view: no copy of the logits first.
            if indices[-1] - indices[0] + 1 == len(indices):
                picked = logits[indices[0] : indices[-1] + 1]
            else:
                picked = logits.index_select(0, torch.tensor(indices, dtype=torch.long, device=logits.device))
            logprobs = picked.log_softmax(dim=-1, dtype=torch.float32)
            values_np, ids_np = tensor_rows(logprobs, STATE.topn)
            sink.generated([(self.rows[i][0], len(self.rows[i][1])) for i in indices], values_np, ids_np)
        if STATE.forced:
            self._force(logits, indices)
        return logits

    def _force(self, logits: torch.Tensor, indices: list[int]) -> None:
        """Every logit of a forced row but its golden token becomes -inf (after the row was captured).

        The golden token keeps its own logit (0 if that was not finite, so the
        row still has one finite entry to sample).
        """
        rows, targets = [], []
        for index in indices:
            seq, output_ids, _params, _prompt_len = self.rows[index]
            trajectory = STATE.forced.get(seq)
            step = len(output_ids)
            if trajectory is not None and step < len(trajectory):
                rows.append(index)
                targets.append(trajectory[step])
        if not rows:
            return
        shape = (logits.shape[0], logits.shape[1])
        if self._mask is None or tuple(self._mask.shape) != shape:
            self._mask = torch.zeros(shape, dtype=torch.bool)
        mask = self._mask
        rows_t = torch.tensor(rows, dtype=torch.long)
        targets_t = torch.tensor(targets, dtype=torch.long)
        mask[rows_t] = True
        mask[rows_t, targets_t] = False
        try:
            device_rows = rows_t.to(logits.device)
            device_targets = targets_t.to(logits.device)
            keep = logits[device_rows, device_targets]
            keep = torch.where(torch.isfinite(keep), keep, torch.zeros_like(keep))
            logits.masked_fill_(mask.to(logits.device), float("-inf"))
            logits.index_put_((device_rows, device_targets), keep)
        finally:
            mask[rows_t] = False  # all False again for the next step


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


# Worker-side RPC endpoints (``LLM.collective_rpc`` calls them with the worker
# first). Module-level, so every executor can send them by reference.

def _is_output_rank() -> bool:
    """Whether this worker's sampler output is the one vLLM returns (first TP rank, last PP stage)."""
    from vllm.distributed import parallel_state

    if not (parallel_state.model_parallel_is_initialized()):
        return True
    return parallel_state.get_tp_group().rank_in_group == 0 and parallel_state.get_pp_group().is_last_rank


def _on_prompt_rows(seq: int, start: int, logprobs: torch.Tensor) -> None:
    if STATE.sink is not None:
        STATE.sink.prompt(seq, start, *tensor_rows(logprobs, STATE.topn, copy=True))


def _parity_errors_as_answers(endpoint):
    """A ParityError in a worker comes back as an answer, re-raised as itself by the recorder (rows.py).

    Executors wrap a worker's exception in their own (the CLI would lose the
    one-line message and its hint); a plain dict crosses every executor.
    """
    import functools

    from parity.errors import ParityError

    @functools.wraps(endpoint)
    def wrapper(*args, **kwargs):
        try:
            return endpoint(*args, **kwargs)
        except ParityError as e:
            return {PARITY_ERROR: type(e).__name__, "message": str(e), "hint": e.hint}

    return wrapper


PARITY_ERROR = "parity_error"


@_parity_errors_as_answers
def configure(worker, spec: WriterSpec | None, forced: dict[int, list[int]], topn: int | None,
              prompt_rows: bool, recorder_pid: int) -> dict | None:
    """Every worker forces the trajectories; the output worker also opens the row sink.

    Returns None on other workers; on the output worker, where the store is
    being built and whether prompt rows are captured as tensors.
    """
    abort(worker)
    _ensure_pipeline_buffers(worker)
    STATE.forced, STATE.topn = dict(forced), topn
    if spec is None or not _is_output_rank():
        return None
    local = os.getpid() == recorder_pid
    sink = RowSink(spec, progress=STATE.local_progress if local else None)
    progress_file = None if local else str(sink.report_to_file())
    STATE.sink = sink
    prompt_hooked = bool(prompt_rows) and _prompt_hook(worker)
    return {"pid": os.getpid(), "tmp": str(sink.tmp), "progress_file": progress_file, "prompt_hooked": prompt_hooked}


def _ensure_pipeline_buffers(worker) -> None:
    """Allocates a later pipeline stage's receive buffers where vLLM's CPU runner did not.

    vLLM's GPU runner allocates them in its warm-up dummy run; the CPU runner
    skips that run when compilation is off (``enforce_eager``), and the first
    step of a pipeline-parallel engine then fails ("assert
    self.intermediate_tensors is not None"). Same call as the dummy run.
    """
    from vllm.distributed import parallel_state

    runner = getattr(worker, "model_runner", None)
    if (runner is None or getattr(runner, "intermediate_tensors", False) is not None
            or not parallel_state.model_parallel_is_initialized() or parallel_state.get_pp_group().is_first_rank):
        return
    make = getattr(runner.model, "make_empty_intermediate_tensors", None)
    if make is not None:
        runner.intermediate_tensors = make(batch_size=runner.max_num_tokens, dtype=runner.model_config.dtype,
                                           device=runner.device)


def _prompt_hook(worker) -> bool:
    runner = getattr(worker, "model_runner", None)
    if getattr(runner, "_parity_prompt_capture", None) is not None:
        return prompt_capture_ok(worker)  # already wrapped: one engine, several recordings
    return install_prompt_hook(worker, _on_prompt_rows)


def sink_stats(worker) -> SinkStats | None:
    return STATE.sink.stats() if STATE.sink is not None else None


def prompt_rows_ok(worker) -> bool | None:
    return prompt_capture_ok(worker) if STATE.sink is not None else None


@_parity_errors_as_answers
def commit(worker, manifest, token_ids: list[list[int]]):
    """Publishes the store on the output worker: (path as str, manifest with digests)."""
    if STATE.sink is None:
        return None
    sink, STATE.sink = STATE.sink, None
    STATE.forced = {}
    try:
        path, final = sink.commit(manifest, token_ids)
    except BaseException:
        sink.abort()
        raise
    return str(path), final


def abort(worker) -> None:
    sink, STATE.sink = STATE.sink, None
    STATE.forced = {}
    if sink is not None:
        sink.abort()

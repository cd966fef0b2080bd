"""vLLM as the recording engine: the cpu and rbln devices (the platform plugin picks the hardware).

Rows are captured as tensors by ``capture.CaptureProcessor`` where vLLM's
sampler runs and written by a sink there (rows.py); an engine that refuses
the processor falls back to vLLM's public logprobs output, which the sink in
this process receives.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from pathlib import Path
from typing import Callable

import numpy as np

from parity.errors import EngineError
from parity.schemas import GENERATED, PROMPT
from parity.settings import settings

from ..devices.base import TRUNCATE_HF_OVERRIDES
from ..plan import CAPTURE_PUBLIC, CAPTURE_TENSOR, RecordConfig
from ..rows import EngineRows, LocalRows
from ..sink import Progress, RowSink, WriterSpec
from ..truncate import config_overrides, read_config
from .base import Engine, Generation

log = logging.getLogger("parity")


def engine_kwargs(cfg: RecordConfig, profile, model_path: Path, tokenizer: str | None) -> dict:
    kwargs = dict(
        model=str(model_path),
        tokenizer=str(tokenizer or model_path),
        dtype=cfg.engine.dtype,
        max_model_len=cfg.engine.max_model_len,
        seed=cfg.engine.seed,
        trust_remote_code=cfg.engine.trust_remote_code,
        **profile.engine_args(cfg.engine),
    )
    if cfg.engine.num_hidden_layers and profile.layer_truncation(cfg.engine) == TRUNCATE_HF_OVERRIDES:
        kwargs["hf_overrides"] = config_overrides(read_config(model_path), cfg.engine.num_hidden_layers)
    if cfg.engine.executor:
        kwargs["distributed_executor_backend"] = cfg.engine.executor
    return kwargs


class VllmEngine(Engine):
    llm = None
    capture: str = CAPTURE_TENSOR  # what start() got: tensor capture, or the public path

    def engine_args(self) -> dict:
        # The tokenizer is the model's own even when a derived checkpoint is loaded.
        tokenizer = self.cfg.tokenizer or str(self.plan.model.path)
        return engine_kwargs(self.cfg, self.plan.profile, self.model_path, tokenizer)

    def start(self) -> None:
        """Starts vLLM with the capture processor; falls back to the public path if refused."""
        from vllm import LLM

        from .. import capture as cap
        from ..vllm_compat import close_message_queues_on_collect

        cfg = self.cfg
        close_message_queues_on_collect()
        kwargs = self.engine_args()
        debug = settings().debug
        if not debug:
            for name in ("vllm", "transformers"):
                logging.getLogger(name).setLevel(logging.WARNING)
        mode = cfg.capture
        try:
            if mode == CAPTURE_TENSOR:
                try:
                    self.llm, self.capture = LLM(logits_processors=[cap.CaptureProcessor], **kwargs), CAPTURE_TENSOR
                    return
                except TypeError as e:
                    log.warning("tensor capture unavailable (%s); using vLLM's public logprobs path", e)
                    mode = CAPTURE_PUBLIC
            max_lp = -1 if cfg.logprobs == -1 else cfg.logprobs
            self.llm = LLM(max_logprobs=max_lp, logits_processors=[cap.CaptureProcessor], **kwargs)
            self.capture = CAPTURE_PUBLIC
        except Exception as e:
            if debug:
                raise
            raise EngineError(f"vLLM could not start on device {self.plan.profile.name!r}: "
                              f"{type(e).__name__}: {e}") from None

    @property
    def vocab_size(self) -> int:
        return int(self.llm.llm_engine.model_config.get_vocab_size())

    def generate(self, spec: WriterSpec, progress: Callable[[Progress], None] | None) -> Generation:
        """Runs vLLM with tensor capture (or the public path)."""
        from .. import capture as cap

        plan, llm = self.plan, self.llm
        public = self.capture == CAPTURE_PUBLIC
        forced = {i: t for i, t in enumerate(plan.trajectories)} if plan.trajectories else {}
        cap.STATE.local_progress = progress
        if public:
            # Rows come back through the engine's outputs, into a sink here;
            # the workers still force the trajectories.
            llm.collective_rpc(cap.configure, args=(None, forced, plan.topn, False, os.getpid()))
            rows = LocalRows(RowSink(spec, progress))
        else:
            rows = EngineRows.open(llm, spec, forced, plan.topn, plan.request.prompt_logprobs)
        try:
            outputs = self._generate(rows, public, progress, spec.total)
            return Generation(self._results(outputs, rows, public, spec.vocab_size), rows)
        except BaseException:
            rows.abort()
            raise
        finally:
            cap.STATE.local_progress = None
            if public:
                llm.collective_rpc(cap.abort)  # clears the forced trajectories

    def _generate(self, rows, public: bool, progress: Callable[[Progress], None] | None, total: int):
        from vllm.inputs import TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=p) for p in self.plan.prompt_ids]
        params = self._sampling_params(public, rows.prompt_hooked)
        try:
            with rows.watch(progress, total), _sigint_seen() as interrupted:
                outputs = self.llm.generate(prompts, params, use_tqdm=False)
        except Exception as e:  # the engine's own failures: keep one line, traceback under PARITY_DEBUG
            if interrupted():
                # Ctrl-C also stops vLLM's workers, and the executor may report their end first.
                raise KeyboardInterrupt from None
            if settings().debug:
                raise
            raise EngineError(f"the engine failed while generating: {type(e).__name__}: {e}") from None
        if not public and rows.prompt_hooked and self.plan.request.prompt_logprobs and not rows.prompt_rows_ok():
            raise EngineError("prompt-row capture disabled itself mid-run (unexpected shapes from this vLLM)",
                              hint="rerun; if it persists, report the vLLM version")
        return outputs

    def _sampling_params(self, public: bool, prompt_hooked: bool) -> list:
        from vllm import SamplingParams

        from ..capture import EXTRA_KEY

        plan, topn = self.plan, self.plan.topn
        prompt_logprobs = plan.request.prompt_logprobs
        want_public_prompt = prompt_logprobs and (public or not prompt_hooked)
        return [SamplingParams(
            temperature=0.0,
            max_tokens=max(n, 1),
            seed=self.cfg.engine.seed,
            ignore_eos=bool(plan.trajectories),
            detokenize=False,
            logprobs=(-1 if topn is None else topn) if public else None,
            prompt_logprobs=(-1 if topn is None else topn) if want_public_prompt else (0 if prompt_logprobs else None),
            extra_args={EXTRA_KEY: i},
        ) for i, n in enumerate(plan.lengths)]

    def _results(self, outputs, rows, public: bool, vocab_size: int) -> list[tuple[list[int], str | None]]:
        """Per sequence (generated ids, finish reason); public rows go to the local sink on the way."""
        topn, prompt_logprobs = self.plan.topn, self.plan.request.prompt_logprobs
        results = []
        for i, o in enumerate(outputs):
            comp = o.outputs[0]
            if public:
                rows.sink.append(GENERATED, i, *_rows_from_public(comp.logprobs or [], vocab_size, topn))
            if prompt_logprobs and (public or not rows.prompt_hooked):
                rows.sink.append(PROMPT, i, *_rows_from_public((o.prompt_logprobs or [])[1:], vocab_size, topn))
            results.append((list(comp.token_ids), comp.finish_reason))
        return results

    def run_info(self, rows) -> dict:
        prompt_capture = CAPTURE_TENSOR if rows.prompt_hooked else CAPTURE_PUBLIC
        return {"capture": self.capture,
                "prompt_capture": prompt_capture if self.plan.request.prompt_logprobs else None,
                "executor": _executor_kind(self.llm)}

    def shutdown(self) -> None:
        """Stops the engine's workers now rather than at garbage collection (they hold cores and memory)."""
        if self.llm is None:
            return
        try:
            engine_core = getattr(self.llm.llm_engine, "engine_core", None)
            if engine_core is not None and hasattr(engine_core, "shutdown"):
                engine_core.shutdown()
        except Exception as e:  # noqa: BLE001 - the store is already committed or aborted
            log.debug("engine shutdown: %s", e)


def _executor_kind(llm) -> str | None:
    """Where the sampler ran: uni (this process), mp (worker processes) or ray."""
    backend = llm.llm_engine.vllm_config.parallel_config.distributed_executor_backend
    return backend if isinstance(backend, str) else getattr(backend, "__name__", str(backend))


def _rows_from_public(entries, vocab_size: int, topn: int | None):
    """Dense rows from vLLM's public logprobs output (the slow, guarded fallback)."""
    values = []
    ids = []
    for entry in entries:
        items = list(entry.items()) if hasattr(entry, "items") else []
        if topn:
            items.sort(key=lambda kv: kv[1].logprob, reverse=True)
            items = items[:topn]
            ids.append(np.array([k for k, _ in items], dtype=np.int32))
            values.append(np.array([v.logprob for _, v in items], dtype=np.float32))
        else:
            row = np.full(vocab_size, -np.inf, dtype=np.float32)
            keys = np.fromiter((k for k, _ in items), dtype=np.int64, count=len(items))
            row[keys] = np.fromiter((v.logprob for _, v in items), dtype=np.float32, count=len(items))
            values.append(row)
    v = np.stack(values) if values else np.zeros((0, topn or vocab_size), np.float32)
    return v, (np.stack(ids) if topn and ids else None)


@contextlib.contextmanager
def _sigint_seen():
    """Yields a function telling whether SIGINT arrived meanwhile (the previous handler still runs)."""
    seen = []
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum, frame):
        seen.append(signum)
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: bool(seen)
    finally:
        signal.signal(signal.SIGINT, previous)

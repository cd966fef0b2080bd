"""`record`: run one device through vLLM and write a parity store.

Flow: validate everything that can be validated without the engine (model,
prompts, output directory, device, lengths), start the engine, open the row
sink where the sampler runs (this process, or vLLM's output worker: see
capture.py and rows.py), stream every captured row into its store writer,
then commit the store under its content-addressed name. Anything that goes
wrong before commit leaves only a hidden temporary directory, which is
removed on the way out.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

import parity
from parity.errors import EngineError, GoldenMismatchError, OutputNotWritableError, PromptError, UsageError
from parity.settings import recorded_env, settings
from parity.schemas import Device, Manifest, ModelRef, Request, SequenceInfo, Store
from parity.schemas.store import GENERATED, PROMPT

from .devices import EngineOptions, get_profile
from .devices.base import TRUNCATE_CHECKPOINT, TRUNCATE_HF_OVERRIDES
from .rows import EngineRows, LocalRows
from .sink import Progress, RowSink, WriterSpec
from .inputs import load_prompts, resolve_model, tokenizer_digest, weights_digest
from .truncate import Depth, config_overrides, read_config, resolve_depth, truncated_dir

log = logging.getLogger("parity")

CAPTURE_TENSOR = "tensor"
CAPTURE_PUBLIC = "public"
# vLLM's distributed_executor_backend values the recorder supports (None: vLLM's choice).
EXECUTORS = (None, "mp", "ray", "uni")


@dataclass
class RecordConfig:
    model: str = "tiny"
    revision: str | None = None  # a Hub model's branch, tag or commit (--revision)
    device: str = "cpu"
    prompts: list[str] | None = None
    prompts_file: Path | None = None
    prompt_token_ids: list[list[int]] | None = None  # pre-tokenized prompts (no tokenizer pass)
    num_prompts: int | None = None
    max_tokens: int = 32
    logprobs: int = -1
    prompt_logprobs: bool | None = None  # None: the device's default
    engine: EngineOptions = field(default_factory=EngineOptions)
    out: Path | None = None
    golden: Path | None = None  # a local store to follow (forced trajectory)
    capture: str = CAPTURE_TENSOR
    tokenizer: str | None = None
    # False for plans made off the device host (--dry-run): an absent device is
    # reported by the caller instead of refused. Kept on the config so that
    # resolve_golden's request-key plan inherits it.
    check_device: bool = True


@dataclass(frozen=True)
class RecordResult:
    path: Path
    manifest: Manifest
    timings: dict


def _check_out_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputNotWritableError(f"cannot create output directory {out}: {e.strerror or e}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise OutputNotWritableError(f"output directory {out} is not writable")


def _golden_plan(golden: Store) -> tuple[list[list[int]], list[list[int]]]:
    """Prompts and trajectories to follow, taken from the golden store."""
    prompts = [list(p) for p in golden.manifest.request.prompts]
    trajectories = []
    for s in golden.manifest.sequences:
        toks = golden.tokens(s.index)
        trajectories.append([int(t) for t in toks[s.prompt_len :]])
    return prompts, trajectories


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


@dataclass
class Plan:
    """Everything decided before the engine starts (all input validation happens here)."""

    profile: object
    model: object
    tokenizer: object
    request: Request
    prompt_texts: list
    trajectories: list[list[int]] | None
    golden: Store | None
    out: Path
    depth: Depth | None = None  # --num-hidden-layers, checked against the model (None: the full model)

    @property
    def prompt_ids(self) -> list[list[int]]:
        return [list(p) for p in self.request.prompts]

    @property
    def lengths(self) -> list[int]:
        """Most tokens each sequence will generate: the golden's when forced."""
        if self.trajectories:
            return [len(t) for t in self.trajectories]
        return [self.request.max_tokens] * len(self.request.prompts)

    @property
    def topn(self) -> int | None:
        return self.request.logprobs if self.request.logprobs > 0 else None


def plan_recording(cfg: RecordConfig, *, check_out: bool = True, fetch_weights: bool = True) -> Plan:
    """Validates the inputs and builds the request (and so its key) without an engine.

    ``fetch_weights=False`` (a dry-run) leaves a Hub model's uncached weights
    on the Hub: the request then has no weights digest (``plan.model.missing``).
    """
    st = settings()
    profile = get_profile(cfg.device)
    if cfg.logprobs == 0 or cfg.logprobs < -1:
        raise UsageError("--logprobs must be -1 (full vocabulary) or a positive N (top-N)")
    if cfg.max_tokens < 1:
        raise UsageError("--max-tokens must be at least 1")
    if cfg.engine.dp > 1:
        # vLLM's offline LLM() raises for data_parallel_size > 1 (vllm/entrypoints/llm.py:282-294 in 0.32).
        raise UsageError(f"--dp {cfg.engine.dp}: vLLM's offline LLM() refuses data_parallel_size > 1",
                         hint="run one recording per replica, each with --dp 1")
    if cfg.engine.block_size is not None and cfg.engine.block_size < 1:
        raise UsageError("--block-size must be at least 1")
    if cfg.device != "rbln" and (cfg.engine.rbln_path != "auto" or cfg.engine.rbln_host_logits
                                 or cfg.engine.rbln_fresh_compile):
        raise UsageError(f"--rbln-path, --rbln-host-logits and --rbln-fresh-compile apply to --device rbln, "
                         f"not {cfg.device!r}")
    if cfg.engine.executor not in EXECUTORS:
        raise UsageError(f"--distributed-executor-backend must be one of {', '.join(e for e in EXECUTORS if e)}, "
                         f"not {cfg.engine.executor!r}")
    if cfg.engine.executor == "uni" and cfg.engine.tp * cfg.engine.pp > 1:
        raise UsageError("--distributed-executor-backend uni runs one worker: it cannot serve --tp/--pp > 1",
                         hint="use mp (the default) or ray")
    out = Path(cfg.out).expanduser() if cfg.out else st.cache_dir / "stores"
    if check_out:
        _check_out_dir(out)
    if cfg.check_device:
        profile.check_available()

    golden_store = Store.open(cfg.golden) if cfg.golden else None
    model = resolve_model(cfg.model, st.cache_dir, revision=cfg.revision, weights=fetch_weights)
    depth = None
    if cfg.engine.num_hidden_layers is not None:
        depth = resolve_depth(model.path, cfg.engine.num_hidden_layers)
        if not depth.truncated:
            # The full model: the same request (and key) as a recording without the option.
            log.debug("the model has %d layers: --num-hidden-layers %d records the full model", depth.total,
                     depth.requested)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer or model.path, trust_remote_code=cfg.engine.trust_remote_code)
    tok_digest = tokenizer_digest(tokenizer)
    w_digest = None if model.missing else weights_digest(model.path, st.cache_dir, model.weight_files)

    trajectories = None
    max_tokens = cfg.max_tokens
    logprobs = cfg.logprobs
    if golden_store is not None:
        gm = golden_store.manifest
        golden_tok = gm.request.model.tokenizer_digest
        if golden_tok and gm.schema_version < 2:
            from .inputs import legacy_tokenizer_digest

            # Schema 1 digested the tokenizer files' bytes: only that comparison means anything.
            if legacy_tokenizer_digest(Path(cfg.tokenizer) if cfg.tokenizer else model.path) != golden_tok:
                raise GoldenMismatchError(
                    f"the tokenizer files of {cfg.model} differ from the golden's ({gm.request.model.id})",
                    hint="the golden has schema_version 1, which compares tokenizer files byte for byte: "
                         "use the tokenizer files it was recorded with, or re-record it with this parity",
                )
        elif golden_tok and tok_digest != golden_tok:
            raise GoldenMismatchError(f"the tokenizer of {cfg.model} differs from the golden's ({gm.request.model.id})")
        if gm.request.model.weights_digest and w_digest != gm.request.model.weights_digest:
            log.warning("model weights differ from the golden's (%s): recording a different model on its trajectory",
                        gm.request.model.id)
        prompt_ids, trajectories = _golden_plan(golden_store)
        prompt_texts = [None] * len(prompt_ids)
        max_tokens = gm.request.max_tokens
        logprobs = gm.request.logprobs if cfg.logprobs == -1 else cfg.logprobs
    elif cfg.prompt_token_ids is not None:
        prompt_ids = [list(map(int, p)) for p in cfg.prompt_token_ids]
        if not prompt_ids:
            raise PromptError("the prompt list is empty")
        prompt_texts = [None] * len(prompt_ids)
    else:
        texts = load_prompts(cfg.prompts, cfg.prompts_file, cfg.num_prompts)
        prompt_ids = [list(tokenizer(t)["input_ids"]) for t in texts]
        prompt_texts = texts
    for i, ids in enumerate(prompt_ids):
        if not ids:
            raise PromptError(f"prompt {i} tokenizes to nothing")
        if len(ids) >= cfg.engine.max_model_len:
            raise PromptError(
                f"prompt {i} has {len(ids)} tokens; --max-model-len is {cfg.engine.max_model_len}",
                hint="shorten the prompt or raise --max-model-len",
            )
    request = Request(
        model=ModelRef(id=model.id, weights_digest=w_digest, tokenizer_digest=tok_digest,
                       revision=model.revision, source=model.source),
        prompts=tuple(tuple(p) for p in prompt_ids),
        max_tokens=max_tokens,
        logprobs=logprobs,
        prompt_logprobs=profile.prompt_logprobs_default if cfg.prompt_logprobs is None else cfg.prompt_logprobs,
        dtype=cfg.engine.dtype,
        max_model_len=cfg.engine.max_model_len,
        seed=cfg.engine.seed,
        num_hidden_layers=depth.requested if depth is not None and depth.truncated else None,
    )
    profile.validate(cfg.engine, request)
    return Plan(profile, model, tokenizer, request, prompt_texts, trajectories, golden_store, out, depth)


def record(cfg: RecordConfig, progress: Callable[[Progress], None] | None = None, *,
           plan: Plan | None = None) -> RecordResult:
    """Records one store; returns its path, manifest and timings (``plan``: from plan_recording(cfg))."""
    plan = plan or plan_recording(cfg)
    profile, model = plan.profile, plan.model
    engine_model = model.path
    if plan.depth is not None and plan.depth.truncated and profile.layer_truncation(cfg.engine) == TRUNCATE_CHECKPOINT:
        engine_model = truncated_dir(model.path, plan.depth, settings().cache_dir, plan.request.model.weights_digest)

    hf = getattr(profile, "runner", "vllm") == "hf"
    with _environment(profile.environment(cfg.engine, full_vocab=plan.topn is None)):
        return _record(cfg, plan, engine_model, hf, progress)


@contextlib.contextmanager
def _environment(env: dict[str, str]):
    """Sets the device's variables for one recording, then restores the previous values.

    Worker processes inherit them at start; restoring keeps one recording's
    settings (a layer limit, say) out of the next one in the same process.
    """
    previous = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in previous.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _record(cfg: RecordConfig, plan: Plan, engine_model: Path, hf: bool,
            progress: Callable[[Progress], None] | None) -> RecordResult:
    profile, model, golden_store = plan.profile, plan.model, plan.golden
    t_start = time.perf_counter()
    llm = None
    if hf:
        from transformers import AutoConfig

        capture_mode = "hf"
        vocab_size = int(AutoConfig.from_pretrained(engine_model).get_text_config().vocab_size)
    else:
        llm, capture_mode = _start_engine(cfg, profile, engine_model, cfg.tokenizer or str(model.path))
    try:
        if llm is not None:
            vocab_size = int(llm.llm_engine.model_config.get_vocab_size())
        t_engine = time.perf_counter() - t_start
        if golden_store is not None and golden_store.manifest.vocab_size != vocab_size:
            raise GoldenMismatchError(
                f"the model's vocabulary ({vocab_size}) differs from the golden's ({golden_store.manifest.vocab_size})")
        return _record_rows(cfg, plan, llm, capture_mode, vocab_size, t_engine, progress, engine_model)
    finally:
        if llm is not None:
            _shutdown(llm)


def _writer_spec(cfg: RecordConfig, plan: Plan, vocab_size: int) -> WriterSpec:
    prompt_ids, prompt_logprobs = plan.prompt_ids, plan.request.prompt_logprobs
    reserve = None
    if cfg.engine.batch > 1 and len(prompt_ids) > 1:
        # Rows of concurrently decoded sequences interleave: give each its own region.
        reserve = {
            GENERATED: plan.lengths,
            PROMPT: [len(p) - 1 if prompt_logprobs else 0 for p in prompt_ids],
        }
    total = sum(plan.lengths) + sum(len(p) - 1 for p in prompt_ids if prompt_logprobs)
    return WriterSpec(out=str(plan.out), vocab_size=vocab_size, topn=plan.topn, num_seqs=len(prompt_ids),
                      total=total, reserve=reserve, lanes=cfg.engine.batch)


def _record_rows(cfg: RecordConfig, plan: Plan, llm, capture_mode: str, vocab_size: int, t_engine: float,
                 progress: Callable[[Progress], None] | None, engine_model: Path) -> RecordResult:
    profile, model, tokenizer, request = plan.profile, plan.model, plan.tokenizer, plan.request
    prompt_ids, prompt_texts, trajectories, golden_store = plan.prompt_ids, plan.prompt_texts, plan.trajectories, plan.golden
    prompt_logprobs = request.prompt_logprobs
    hf = llm is None
    spec = _writer_spec(cfg, plan, vocab_size)
    t_gen_start = time.perf_counter()
    if hf:
        rows = LocalRows(RowSink(spec, progress))
        try:
            results = _generate_hf(cfg, plan, rows.sink, engine_model)
        except BaseException:
            rows.abort()
            raise
    else:
        results, rows = _generate_vllm(cfg, plan, llm, capture_mode, spec, progress)
    try:
        t_gen = time.perf_counter() - t_gen_start
        stats = rows.stats()
        if stats.error:
            raise EngineError(f"capture lost alignment: {stats.error}")

        token_lists, seq_infos = [], []
        for i, (gen_ids, finish_reason) in enumerate(results):
            token_lists.append(list(prompt_ids[i]) + gen_ids)
            text = tokenizer.decode(gen_ids, skip_special_tokens=False) if gen_ids else ""
            seq_infos.append(SequenceInfo(
                index=i, prompt_len=len(prompt_ids[i]), generated_len=len(gen_ids),
                finish_reason=finish_reason, nan_rows=stats.nan_rows[i], inf_rows=stats.inf_rows[i],
                text=(prompt_texts[i] or "") + text,
            ))
        if trajectories:
            for i, (traj, toks) in enumerate(zip(trajectories, token_lists)):
                if toks[len(prompt_ids[i]):] != traj[: len(toks) - len(prompt_ids[i])]:
                    raise EngineError(f"sequence {i} did not follow the golden trajectory")

        generated = sum(s.generated_len for s in seq_infos)
        run = {
            "capture": capture_mode,
            "prompt_capture": (capture_mode if hf else CAPTURE_TENSOR if rows.prompt_hooked else CAPTURE_PUBLIC)
            if prompt_logprobs else None,
            "executor": _executor_kind(llm),
            "timings": {
                "engine_start_s": round(t_engine, 3),
                "generate_s": round(t_gen, 3),
                "generated_tokens_per_s": round(generated / t_gen, 2) if t_gen > 0 else None,
            },
            "forced": bool(trajectories),
            "depth": _depth_info(plan, cfg.engine, engine_model),
            "golden": golden_store.manifest.digest if golden_store else None,
            "golden_request_key": golden_store.manifest.request_key if golden_store else None,
        }
        device = Device(
            kind=profile.name,
            versions=profile.versions(),
            env=recorded_env(),
            engine_args=profile.engine_args(cfg.engine) if hf else _engine_kwargs(
                cfg, profile, engine_model, cfg.tokenizer or str(model.path)),
            host=profile.host(),
        )
        manifest = Manifest(
            request=request,
            device=device,
            vocab_size=vocab_size,
            tokenizer_vocab_size=len(tokenizer),
            sequences=tuple(seq_infos),
            arrays={},
            created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            tool_version=parity.__version__,
            run=run,
        )
        path, manifest = rows.commit(manifest, token_lists)
    except BaseException:
        rows.abort()
        raise
    # Generation through the published store: what a user waits for after the engine is up.
    timings = {**run["timings"], "record_s": round(time.perf_counter() - t_gen_start, 3)}
    return RecordResult(path, manifest, timings)


def _depth_info(plan: Plan, opts: EngineOptions, engine_model: Path) -> dict | None:
    """How the layer count was applied (None for a full-model recording)."""
    if plan.depth is None or not plan.depth.truncated:
        return None
    return {"num_hidden_layers": plan.depth.requested, "of": plan.depth.total,
            "mechanism": plan.profile.layer_truncation(opts),
            "model_dir": str(engine_model) if engine_model != plan.model.path else None}


def _executor_kind(llm) -> str | None:
    """Where the sampler ran: uni (this process), mp (worker processes) or ray."""
    if llm is None:
        return None
    backend = llm.llm_engine.vllm_config.parallel_config.distributed_executor_backend
    return backend if isinstance(backend, str) else getattr(backend, "__name__", str(backend))


def _shutdown(llm) -> None:
    """Stops the engine's workers now rather than at garbage collection (they hold cores and memory)."""
    try:
        engine_core = getattr(llm.llm_engine, "engine_core", None)
        if engine_core is not None and hasattr(engine_core, "shutdown"):
            engine_core.shutdown()
    except Exception as e:  # noqa: BLE001 - the store is already committed or aborted
        log.debug("engine shutdown: %s", e)


def _generate_vllm(cfg: RecordConfig, plan: Plan, llm, capture_mode: str, spec: WriterSpec,
                   progress: Callable[[Progress], None] | None):
    """Runs vLLM with tensor capture (or the public path); returns per-sequence results and the rows handle."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from . import capture as cap

    request, topn, trajectories = plan.request, plan.topn, plan.trajectories
    prompt_ids, prompt_logprobs = plan.prompt_ids, request.prompt_logprobs
    vocab_size = spec.vocab_size
    public = capture_mode == CAPTURE_PUBLIC
    forced = {i: t for i, t in enumerate(trajectories)} if trajectories else {}
    cap.STATE.local_progress = progress
    if public:
        # Rows come back through the engine's outputs, into a sink here;
        # the workers still force the trajectories.
        llm.collective_rpc(cap.configure, args=(None, forced, topn, False, os.getpid()))
        rows = LocalRows(RowSink(spec, progress))
    else:
        rows = EngineRows.open(llm, spec, forced, topn, prompt_logprobs)
    try:
        params = []
        for i, n in enumerate(plan.lengths):
            want_public_prompt = prompt_logprobs and (public or not rows.prompt_hooked)
            params.append(SamplingParams(
                temperature=0.0,
                max_tokens=max(n, 1),
                seed=cfg.engine.seed,
                ignore_eos=bool(trajectories),
                detokenize=False,
                logprobs=(-1 if topn is None else topn) if public else None,
                prompt_logprobs=(-1 if topn is None else topn) if want_public_prompt else (0 if prompt_logprobs else None),
                extra_args={cap.EXTRA_KEY: i},
            ))
        prompts = [TokensPrompt(prompt_token_ids=p) for p in prompt_ids]
        try:
            with rows.watch(progress, spec.total), _sigint_seen() as interrupted:
                outputs = llm.generate(prompts, params, use_tqdm=False)
        except Exception as e:  # the engine's own failures: keep one line, traceback under PARITY_DEBUG
            if interrupted():
                # Ctrl-C also stops vLLM's workers, and the executor may report their end first.
                raise KeyboardInterrupt from None
            if settings().debug:
                raise
            raise EngineError(f"the engine failed while generating: {type(e).__name__}: {e}") from None
        if not public and rows.prompt_hooked and prompt_logprobs and not rows.prompt_rows_ok():
            raise EngineError("prompt-row capture disabled itself mid-run (unexpected shapes from this vLLM)",
                              hint="rerun; if it persists, report the vLLM version")
        results = []
        for i, o in enumerate(outputs):
            comp = o.outputs[0]
            if public:
                rows.sink.append(GENERATED, i, *_rows_from_public(comp.logprobs or [], vocab_size, topn))
            if prompt_logprobs and (public or not rows.prompt_hooked):
                rows.sink.append(PROMPT, i, *_rows_from_public((o.prompt_logprobs or [])[1:], vocab_size, topn))
            results.append((list(comp.token_ids), comp.finish_reason))
    except BaseException:
        rows.abort()
        raise
    finally:
        cap.STATE.local_progress = None
        if public:
            llm.collective_rpc(cap.abort)  # clears the forced trajectories
    return results, rows


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


def _generate_hf(cfg: RecordConfig, plan: Plan, sink: RowSink, engine_model: Path) -> list[tuple[list[int], str | None]]:
    from .devices.hf import run_hf
    from .sink import tensor_rows

    def emit(kind: str, seq: int, position: int, logprobs) -> None:
        values, ids = tensor_rows(logprobs if logprobs.ndim == 2 else logprobs[None, :], plan.topn, copy=True)
        if kind == PROMPT:
            sink.prompt(seq, position, values, ids)
        else:
            sink.generated([(seq, position)], values, ids)

    try:
        return run_hf(engine_model, plan.prompt_ids, plan.lengths, plan.trajectories, dtype=cfg.engine.dtype,
                      seed=cfg.engine.seed, eos_token_id=plan.tokenizer.eos_token_id,
                      prompt_logprobs=plan.request.prompt_logprobs,
                      emit=emit)
    except Exception as e:
        if settings().debug:
            raise
        raise EngineError(f"transformers failed while scoring: {type(e).__name__}: {e}") from None


def _engine_kwargs(cfg: RecordConfig, profile, model_path: Path, tokenizer: str | None) -> dict:
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


def _start_engine(cfg: RecordConfig, profile, model_path: Path, tokenizer: str | None):
    """Starts vLLM with the capture processor; falls back to the public path if refused."""
    import logging as _logging

    from vllm import LLM

    from . import capture as cap

    from .vllm_compat import close_message_queues_on_collect

    close_message_queues_on_collect()
    kwargs = _engine_kwargs(cfg, profile, model_path, tokenizer)
    debug = settings().debug
    if not debug:
        for name in ("vllm", "transformers"):
            _logging.getLogger(name).setLevel(_logging.WARNING)
    mode = cfg.capture
    try:
        if mode == CAPTURE_TENSOR:
            try:
                return LLM(logits_processors=[cap.CaptureProcessor], **kwargs), CAPTURE_TENSOR
            except TypeError as e:
                log.warning("tensor capture unavailable (%s); using vLLM's public logprobs path", e)
                mode = CAPTURE_PUBLIC
        max_lp = -1 if cfg.logprobs == -1 else cfg.logprobs
        return LLM(max_logprobs=max_lp, logits_processors=[cap.CaptureProcessor], **kwargs), CAPTURE_PUBLIC
    except Exception as e:
        if debug:
            raise
        raise EngineError(f"vLLM could not start on device {profile.name!r}: {type(e).__name__}: {e}") from None

"""Planning a recording: everything ``record`` decides before an engine starts.

``plan_recording`` validates the options, the device, the output directory,
the model, its tokenizer and the prompts (or the golden the run follows), and
builds the request, and so its key. A refused request costs no engine start;
``record --dry-run`` shows the same plan.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from parity.errors import GoldenMismatchError, OutputNotWritableError, PromptError, UsageError
from parity.schemas import ModelRef, Request, Store
from parity.schemas.manifest import Share
from parity.schemas.streamcheck import check_opened
from parity.settings import settings

from .devices import EngineOptions, get_profile
from .inputs import ResolvedModel, resolve_model, resolve_prompts, tokenizer_digest, weights_digest
from .suites import fit_budget, fit_ids
from .truncate import Depth, resolve_depth

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
    suite: str | None = None  # a shipped prompt suite (recorder/suites); None with no prompts: "default"
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
    # the golden lookup's request-key plan (workflows/against_golden.py) inherits it.
    check_device: bool = True
    shard: Share | None = None  # --shard I/N: record only the I-th of N shares of the request's sequences


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
    suite: str | None = None  # the prompt suite the prompts come from (None: given prompts, or the golden's)
    share: Share | None = None  # --shard: this run records only these sequences of the request
    members: tuple[int, ...] | None = None  # with ``share``: their indices in the request, increasing

    @property
    def sequence_indices(self) -> list[int]:
        """The request's sequences this run records, in the order the engine gets them."""
        return list(self.members) if self.members is not None else list(range(len(self.request.prompts)))

    @property
    def prompt_ids(self) -> list[list[int]]:
        return [list(self.request.prompts[i]) for i in self.sequence_indices]

    @property
    def lengths(self) -> list[int]:
        """Most tokens each recorded sequence will generate: the golden's when forced."""
        if self.trajectories:
            return [len(t) for t in self.trajectories]
        return [self.request.max_tokens] * len(self.sequence_indices)

    @property
    def topn(self) -> int | None:
        return self.request.logprobs if self.request.logprobs > 0 else None


@dataclass(frozen=True)
class _ModelInputs:
    """The model side of a plan: what a run's request-key plan and its recording share."""

    model: ResolvedModel
    depth: Depth | None
    tokenizer: object
    ref: ModelRef  # the model as the request names it (id, digests, revision, source)

    @classmethod
    def of(cls, plan: Plan) -> "_ModelInputs":
        return cls(plan.model, plan.depth, plan.tokenizer, plan.request.model)


def plan_recording(cfg: RecordConfig, *, check_out: bool = True, fetch_weights: bool = True,
                   keyed: Plan | None = None) -> Plan:
    """Validates the inputs and builds the request (and so its key) without an engine.

    ``fetch_weights=False`` (a dry-run) leaves a Hub model's uncached weights
    on the Hub: the request then has no weights digest (``plan.model.missing``).

    ``keyed``: the plan of this same ``cfg`` without its golden, made to look
    the golden up by its request key (``record --golden ORG/NAME``). What it
    already checked and resolved (options, device, model, tokenizer, digests)
    is taken over rather than done again, so a recording resolves its model
    once and its request cannot drift from the key its golden was found by.
    """
    profile = keyed.profile if keyed is not None else get_profile(cfg.device)
    if keyed is None:
        _check_options(cfg)
    out = Path(cfg.out).expanduser() if cfg.out else settings().cache_dir / "stores"
    if check_out:
        _check_out_dir(out)
    if keyed is None and cfg.check_device:
        profile.check_available()

    golden_store = Store.open(cfg.golden, fast_read=settings().fast_read) if cfg.golden else None
    if golden_store is not None:
        check_opened(golden_store)  # its prompts and tokens become this run's request
    inputs = _ModelInputs.of(keyed) if keyed is not None else _resolve_model_inputs(cfg, fetch_weights)

    trajectories = None
    suite = None
    max_tokens = cfg.max_tokens
    logprobs = cfg.logprobs
    if golden_store is not None:
        _check_against_golden(cfg, inputs, golden_store)
        gm = golden_store.manifest
        prompt_ids, trajectories = _golden_plan(golden_store)
        prompt_texts = [None] * len(prompt_ids)
        max_tokens = gm.request.max_tokens
        logprobs = gm.request.logprobs if cfg.logprobs == -1 else cfg.logprobs
    else:
        prompt_ids, prompt_texts, suite = _prompts(cfg, inputs.tokenizer)
    _check_prompt_lengths(prompt_ids, cfg.engine.max_model_len)
    depth = inputs.depth
    request = Request(
        model=inputs.ref,
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
    members = None
    if cfg.shard is not None:
        members = tuple(share_members(share_costs(request, trajectories), cfg.shard))
        prompt_texts = [prompt_texts[i] for i in members]
        trajectories = [trajectories[i] for i in members] if trajectories else trajectories
    return Plan(profile, inputs.model, inputs.tokenizer, request, prompt_texts, trajectories, golden_store, out,
                depth, suite, cfg.shard, members)


def share_costs(request: Request, trajectories: list[list[int]] | None) -> list[int]:
    """What each sequence of a request costs to record, for splitting it: its positions."""
    return [len(p) + (len(trajectories[i]) if trajectories else request.max_tokens)
            for i, p in enumerate(request.prompts)]


def share_members(costs: list[int], share: Share) -> list[int]:
    """The sequences of share ``share`` (SPEC.md, "Shares"): greedy balancing of their positions.

    Sequences are taken from the costliest (prompt plus generated tokens; the
    lower index first among equals), each going to the share with the least
    so far (the lowest-numbered among equals). Every share of a request is
    therefore non-empty when there are at least as many sequences as shares,
    and the split depends on the request alone.
    """
    if share.count > len(costs):
        raise UsageError(f"--shard {share}: the request has {len(costs)} sequence{'s' if len(costs) != 1 else ''}, "
                         f"fewer than {share.count} shares", hint=f"use at most {len(costs)} shares")
    loads = [0] * share.count
    members: list[list[int]] = [[] for _ in range(share.count)]
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        target = min(range(share.count), key=lambda j: (loads[j], j))
        loads[target] += costs[i]
        members[target].append(i)
    return sorted(members[share.index - 1])


def _check_options(cfg: RecordConfig) -> None:
    """The option checks that need nothing but the options."""
    if cfg.logprobs == 0 or cfg.logprobs < -1:
        raise UsageError("--logprobs must be -1 (full vocabulary) or a positive N (top-N)")
    if cfg.max_tokens < 1:
        raise UsageError("--max-tokens must be at least 1")
    if cfg.engine.dp > 1:
        # vLLM's offline LLM() raises for data_parallel_size > 1 (vllm/entrypoints/llm.py:282-294 in 0.32).
        raise UsageError(f"--dp {cfg.engine.dp}: vLLM's offline LLM() refuses data_parallel_size > 1",
                         hint="run one recording per replica, each with --dp 1")
    if cfg.shard is not None and not 1 <= cfg.shard.index <= cfg.shard.count:
        raise UsageError(f"--shard {cfg.shard}: shares are numbered 1 to {cfg.shard.count}",
                         hint=f"record --shard 1/{cfg.shard.count} up to --shard {cfg.shard.count}/{cfg.shard.count}")
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


def _check_out_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputNotWritableError(f"cannot create output directory {out}: {e.strerror or e}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise OutputNotWritableError(f"output directory {out} is not writable")


def _resolve_model_inputs(cfg: RecordConfig, fetch_weights: bool) -> _ModelInputs:
    """The model (downloaded when it is a Hub model not yet cached), its depth, tokenizer and digests."""
    st = settings()
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
    ref = ModelRef(id=model.id, weights_digest=w_digest, tokenizer_digest=tok_digest,
                   revision=model.revision, source=model.source)
    return _ModelInputs(model, depth, tokenizer, ref)


def _check_against_golden(cfg: RecordConfig, inputs: _ModelInputs, golden: Store) -> None:
    """Refuses a tokenizer the golden was not recorded with; warns about other weights."""
    gm = golden.manifest
    golden_tok = gm.request.model.tokenizer_digest
    if golden_tok and gm.schema_version < 2:
        from .inputs import legacy_tokenizer_digest

        # Schema 1 digested the tokenizer files' bytes: only that comparison means anything.
        if legacy_tokenizer_digest(Path(cfg.tokenizer) if cfg.tokenizer else inputs.model.path) != golden_tok:
            raise GoldenMismatchError(
                f"the tokenizer files of {cfg.model} differ from the golden's ({gm.request.model.id})",
                hint="the golden has schema_version 1, which compares tokenizer files byte for byte: "
                     "use the tokenizer files it was recorded with, or re-record it with this parity",
            )
    elif golden_tok and inputs.ref.tokenizer_digest != golden_tok:
        raise GoldenMismatchError(f"the tokenizer of {cfg.model} differs from the golden's ({gm.request.model.id})")
    if gm.request.model.weights_digest and inputs.ref.weights_digest != gm.request.model.weights_digest:
        log.warning("model weights differ from the golden's (%s): recording a different model on its trajectory",
                    gm.request.model.id)


def _golden_plan(golden: Store) -> tuple[list[list[int]], list[list[int]]]:
    """Prompts and trajectories to follow, taken from the golden store."""
    prompts = [list(p) for p in golden.manifest.request.prompts]
    trajectories = []
    for s in golden.manifest.sequences:
        toks = golden.tokens(s.index)
        trajectories.append([int(t) for t in toks[s.prompt_len :]])
    return prompts, trajectories


def _prompts(cfg: RecordConfig, tokenizer) -> tuple[list[list[int]], list, str | None]:
    """Prompt token ids, texts (None for prompts given as ids) and suite of a run that follows no golden.

    A suite's long documents are cut here to max_model_len - max_tokens
    tokens, so the request (and its key) holds the ids that run; their text
    is the decoded cut.
    """
    if cfg.prompt_token_ids is not None:
        if cfg.suite is not None:
            raise PromptError("give prompt token ids or a prompt suite, not both")
        prompt_ids = [list(map(int, p)) for p in cfg.prompt_token_ids]
        if not prompt_ids:
            raise PromptError("the prompt list is empty")
        return prompt_ids, [None] * len(prompt_ids), None
    source = resolve_prompts(cfg.prompts, cfg.prompts_file, cfg.num_prompts, cfg.suite)
    ids, texts, fitted = [], [], {}
    for p in source.prompts:
        if p.fit is None:
            ids.append(list(tokenizer(p.text)["input_ids"]))
            texts.append(p.text)
            continue
        if p.text not in fitted:  # --num-prompts may cycle a long document several times
            # verbose=False: a long document exceeds model_max_length until it is cut, which only warns.
            cut = fit_ids(list(tokenizer(p.text, verbose=False)["input_ids"]),
                          fit_budget(cfg.engine.max_model_len, cfg.max_tokens))
            fitted[p.text] = cut, tokenizer.decode(cut, skip_special_tokens=True)
        ids.append(list(fitted[p.text][0]))
        texts.append(fitted[p.text][1])
    return ids, texts, source.suite


def _check_prompt_lengths(prompt_ids: list[list[int]], max_model_len: int) -> None:
    for i, ids in enumerate(prompt_ids):
        if not ids:
            raise PromptError(f"prompt {i} tokenizes to nothing")
        if len(ids) >= max_model_len:
            raise PromptError(
                f"prompt {i} has {len(ids)} tokens; --max-model-len is {max_model_len}",
                hint="shorten the prompt or raise --max-model-len",
            )

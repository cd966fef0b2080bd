"""The `parity` command line. Thin: validate, call one library function, report.

This is the only module that imports typer. Heavy libraries (vllm, torch) are
imported inside the commands that need them, so `parity diff --help` is fast.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer

from parity import __version__
from parity.errors import ParityError, StoreCorruptError, UsageError
from parity.output import Output, stdout_to_stderr
from parity.units import human_bytes
from parity.settings import settings

app = typer.Typer(
    name="parity",
    help="Record golden next-token distributions and diff them across devices.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Shared option aliases -------------------------------------------------------
StoreArg = Annotated[str, typer.Argument(help="A store directory, or a hub reference (hf://datasets/ORG/NAME/...).")]
RepoOpt = Annotated[Optional[str], typer.Option("--repo", help="Hub dataset repository ORG/NAME.")]
JsonFlag = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]
NoColor = Annotated[bool, typer.Option("--no-color", help="Disable ANSI colours.")]
OutDir = Annotated[Optional[Path], typer.Option("--out", help="Directory in which the store is created (default: the parity cache).")]
MaxKl = Annotated[Optional[float], typer.Option("--max-kl", help="Fail if any position's KL exceeds this (nats).")]
MaxMeanKl = Annotated[Optional[float], typer.Option("--max-mean-kl")]
MinTop1 = Annotated[Optional[float], typer.Option("--min-top1", help="Minimum argmax agreement rate (0-1).")]
MaxAbs = Annotated[Optional[float], typer.Option("--max-abs", help="Maximum |delta logprob|.")]
Tolerance = Annotated[Optional[str], typer.Option("--tolerance", help="Named thresholds: fp32 | bf16.")]
Eps = Annotated[float, typer.Option("--eps", help="Outlier threshold on |delta logprob|.")]
NoFloor = Annotated[bool, typer.Option("--no-floor", help="Ignore the noise floor the reference (a golden recorded with --floor) carries.")]
FloorGate = Annotated[bool, typer.Option("--floor-gate/--no-floor-gate", help="Judge the candidate position by position against the floor (default), or only report it.")]
FloorRatio = Annotated[Optional[float], typer.Option("--floor-ratio", help="Per position: the candidate's KL and |delta| within R times the floor's (default 4).")]
FloorFraction = Annotated[Optional[float], typer.Option("--floor-fraction", help="Fraction of positions that must be within the floor (default 0.8).")]
MaxSigmaRatio = Annotated[Optional[float], typer.Option("--max-sigma-ratio", help="Largest sigma ratio of KL to the floor's: sqrt(mean KL / floor mean KL) (default 3).")]
MaxSigmaRatioAbs = Annotated[Optional[float], typer.Option("--max-sigma-ratio-abs", help="Largest RMS ratio of |delta logprob| to the floor's (default 2).")]
TieSteps = Annotated[Optional[float], typer.Option("--tie-steps", help="Argmax flips within this many rounding steps of the candidate's dtype are near-ties (default 4).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu | rbln | hf (transformers float32 reference).")]
ModelOpt = Annotated[str, typer.Option("--model", help="Preset name, Hugging Face id (downloaded on first use), or local model directory.")]
RevisionOpt = Annotated[Optional[str], typer.Option("--revision", help="Hub model only: the branch, tag or commit to use (default main); the manifest keeps the commit.")]
MaxModelLen = Annotated[int, typer.Option("--max-model-len")]
DtypeOpt = Annotated[str, typer.Option("--dtype")]
SeedOpt = Annotated[int, typer.Option("--seed")]
BatchOpt = Annotated[int, typer.Option("--batch", help="max_num_seqs; 1 keeps CPU numerics batch-independent.")]
TpOpt = Annotated[int, typer.Option("--tp")]
PpOpt = Annotated[int, typer.Option("--pp")]
ExecutorOpt = Annotated[Optional[str], typer.Option("--distributed-executor-backend", help="vLLM's executor for --tp/--pp > 1: mp (default) | ray | uni.")]
BlockSizeOpt = Annotated[Optional[int], typer.Option("--block-size", help="KV-cache block size (rbln default: --max-model-len).")]
TrustRemoteCode = Annotated[bool, typer.Option("--trust-remote-code")]
RblnPath = Annotated[str, typer.Option("--rbln-path", help="rbln model path: auto (optimum on RBLN-CA*, vllm-model elsewhere) | vllm-model | optimum.")]
RblnHostLogits = Annotated[bool, typer.Option("--rbln-host-logits", help="rbln: keep logits on the host (VLLM_RBLN_USE_DEVICE_TENSOR=0).")]
RblnFreshCompile = Annotated[bool, typer.Option("--rbln-fresh-compile", help="rbln: compile again instead of using the compile cache (VLLM_DISABLE_COMPILE_CACHE=1).")]
ReuseFlag = Annotated[bool, typer.Option("--reuse/--no-reuse", help="Take a depth's store from --out when that exact recording is there (resumes).")]
ShardOpt = Annotated[Optional[str], typer.Option("--shard", help="Record only share I of N of the sequences (e.g. 2/4) into a partial store; `parity merge` makes the shares one store.")]
ReplicasOpt = Annotated[int, typer.Option("--replicas", help="Run N engines, each on a share of the sequences and its own CPUs (or on a Ray cluster with --ray-address), then merge them into one store.")]
RayAddressOpt = Annotated[Optional[str], typer.Option("--ray-address", help="With --replicas: run the replicas as tasks on this Ray cluster (e.g. 10.0.0.1:6379).")]
SuiteOpt = Annotated[Optional[str], typer.Option("--suite", help="A shipped prompt suite: default (short prompts and long documents cut to --max-model-len minus --max-tokens tokens; used when no prompts are given) | seed | short | long.")]


def _setup_logging() -> None:
    level = logging.DEBUG if settings().debug else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("parity")
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False


# record -----------------------------------------------------------------------
@app.command()
def record(
    device: DeviceOpt = "cpu",
    model: ModelOpt = "tiny",
    revision: RevisionOpt = None,
    golden: Annotated[Optional[str], typer.Option("--golden", help="Follow this golden's token trajectory (store path or hub reference/repo).")] = None,
    prompts: Annotated[Optional[list[str]], typer.Option("--prompts", help="A prompt (repeat the option for more).")] = None,
    prompts_file: Annotated[Optional[Path], typer.Option("--prompts-file", help=".txt (one prompt per line) or .jsonl ({\"prompt\": ...} per line).")] = None,
    suite: SuiteOpt = None,
    num_prompts: Annotated[Optional[int], typer.Option("--num-prompts", help="Use this many prompts (cycling the list).")] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="Tokens to generate per prompt.")] = 32,
    logprobs: Annotated[int, typer.Option("--logprobs", help="-1: full vocabulary; N: top-N ids and values.")] = -1,
    prompt_logprobs: Annotated[Optional[bool], typer.Option("--prompt-logprobs/--no-prompt-logprobs", help="Record prompt positions (default: on for cpu and hf; refused on rbln).")] = None,
    num_hidden_layers: Annotated[Optional[int], typer.Option("--num-hidden-layers", help="Record the model cut to its first K layers (final norm and LM head kept).")] = None,
    depths: Annotated[Optional[str], typer.Option("--depths", help="One store per depth, e.g. 1,2,4,all | 1-8 | every (goldens for parity bisect).")] = None,
    reuse: ReuseFlag = True,
    max_model_len: MaxModelLen = 1024,
    dtype: DtypeOpt = "float32",
    seed: SeedOpt = 0,
    batch: BatchOpt = 1,
    tp: TpOpt = 1,
    pp: PpOpt = 1,
    dp: Annotated[int, typer.Option("--dp")] = 1,
    ep: Annotated[bool, typer.Option("--ep", help="Expert parallel (MoE).")] = False,
    executor: ExecutorOpt = None,
    block_size: BlockSizeOpt = None,
    trust_remote_code: TrustRemoteCode = False,
    rbln_path: RblnPath = "auto",
    rbln_host_logits: RblnHostLogits = False,
    rbln_fresh_compile: RblnFreshCompile = False,
    out: OutDir = None,
    repo: RepoOpt = None,
    shard: ShardOpt = None,
    replicas: ReplicasOpt = 1,
    ray_address: RayAddressOpt = None,
    floor: Annotated[Optional[str], typer.Option("--floor", help="Also record the golden's noise floor on its trajectory and keep it with the golden: bf16 (default numerics to accept) | fp16 | hf-bf16.")] = None,
    diff: Annotated[bool, typer.Option("--diff", help="Diff against the golden at the end and print the report.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate and print the resolved plan as JSON; start no engine, record nothing.")] = False,
    no_color: NoColor = False,
) -> None:
    """Record full-vocabulary logprobs for every position into a new store."""
    # Over 80 lines only by its option list: typer reads the options from the signature.
    from parity.recorder import EngineOptions, RecordConfig, record as run_record
    from parity.workflows.against_golden import find_golden

    sink = Output(progress=not settings().no_progress)
    if batch < 1 or tp < 1 or pp < 1 or dp < 1:
        raise UsageError("--batch, --tp, --pp and --dp must be at least 1")
    cfg = RecordConfig(
        model=model, revision=revision, device=device, prompts=prompts, prompts_file=prompts_file, suite=suite,
        num_prompts=num_prompts,
        max_tokens=max_tokens, logprobs=logprobs, prompt_logprobs=prompt_logprobs, out=out,
        engine=EngineOptions(
            dtype=dtype, max_model_len=max_model_len, seed=seed, batch=batch, tp=tp, pp=pp, dp=dp, ep=ep, executor=executor,
            block_size=block_size, num_hidden_layers=num_hidden_layers, trust_remote_code=trust_remote_code,
            rbln_path=rbln_path, rbln_host_logits=rbln_host_logits, rbln_fresh_compile=rbln_fresh_compile,
        ),
        check_device=not dry_run, shard=_parse_shard(shard),
    )
    _check_split(cfg, replicas, ray_address, floor=floor, depths=depths, diff=diff)
    kind = _floor_kind(cfg, floor, golden)
    keyed = None  # the plan a golden was looked up by, completed by the recording rather than redone
    if golden:
        found = find_golden(cfg, golden, repo=repo)
        cfg, keyed = dataclasses.replace(cfg, golden=found.path), found.keyed
        for line in found.notes:
            sink.note(line)
    if depths is not None:
        if dry_run or golden or diff:
            raise UsageError("--depths records goldens: it does not combine with --dry-run, --golden or --diff",
                             hint="to follow goldens at several depths use parity bisect")
        _record_depths(cfg, depths, sink, reuse=reuse, floor=kind, run=_replicas_runner(replicas, ray_address, sink))
        return
    if dry_run:
        from parity.recorder.dryrun import dry_run as plan_dry_run

        with stdout_to_stderr():
            resolved = plan_dry_run(cfg, keyed=keyed, replicas=replicas, ray_address=ray_address)
        sink.data({**resolved, "floor": kind.name} if kind else resolved)
        return
    run = _replicas_runner(replicas, ray_address, sink)
    with stdout_to_stderr():
        if run is not None:
            result = run(cfg, _recording_bar(sink))
        else:
            result = run_record(cfg, progress=_recording_bar(sink), keyed=keyed)
    sink.finish()
    m = result.manifest
    share = f"share {m.share} ({len(m.sequences)} of {len(m.request.prompts)} sequences): " if m.share else ""
    sink.note(
        f"recorded {share}{m.generated_positions} generated + {m.prompt_positions} prompt positions "
        f"({len(m.sequences)} sequences, vocab {m.vocab_size}) at "
        f"{result.timings.get('generated_tokens_per_s')} tok/s"
        f"{f' with {replicas} replicas' if replicas > 1 else ''}; digest {m.digest}"
    )
    if kind is not None:
        _record_floor(cfg, result.path, kind, sink, run)
    if diff and cfg.golden is not None:
        _print_diff(cfg.golden, result.path, sink, color=not no_color)
    sink.result(str(result.path))


def _parse_shard(text: str | None):
    if text is None:
        return None
    from parity.schemas.manifest import Share

    index, sep, count = text.partition("/")
    if not sep or not index.strip().isdigit() or not count.strip().isdigit() or int(count) < 1:
        raise UsageError(f"--shard {text!r}: give I/N, share I of N (e.g. 1/4)")
    return Share(int(index), int(count))


def _check_split(cfg, replicas: int, ray_address: str | None, *, floor, depths, diff) -> None:
    """The options that do not combine with recording in shares or replicas."""
    if cfg.shard is not None and (floor or depths is not None or diff):
        raise UsageError("--shard records a partial store: it does not combine with --floor, --depths or --diff",
                         hint="merge the shares with `parity merge`, then use the merged store")
    if replicas < 1:
        raise UsageError("--replicas must be at least 1")
    if ray_address is not None and replicas < 2:
        raise UsageError("--ray-address runs replicas on a Ray cluster: give --replicas N (N >= 2) too")
    if replicas > 1:
        from parity.recorder.replicas import check_replica_options

        check_replica_options(cfg, replicas, ray_address)


def _floor_kind(cfg, name: str | None, golden: str | None):
    if name is None:
        return None
    from parity.recorder.floor import check_floor_options, floor_kind

    kind = floor_kind(name)
    check_floor_options(dataclasses.replace(cfg, golden=Path(golden) if golden else None), kind)
    return kind


def _replicas_runner(replicas: int, ray_address: str | None, sink: Output):
    """``record --replicas``'s way of recording (None: one engine)."""
    if replicas < 2:
        return None
    from parity.recorder.replicas import record_replicas

    return lambda cfg, progress: record_replicas(cfg, replicas, ray_address=ray_address, progress=progress,
                                                 on_share=lambda line: (sink.finish(), sink.note(line)))


def _record_floor(cfg, golden: Path, kind, sink: Output, run=None) -> None:
    from parity.recorder.floor import record_floor

    sink.note(f"recording the noise floor: {kind.description}, on the golden's trajectory")
    with stdout_to_stderr():
        manifest, rec = record_floor(cfg, golden, kind, progress=_recording_bar(sink), run=run)
    sink.finish()
    sink.note(f"noise floor {rec.manifest.digest} ({kind.name}) kept in {rec.path}")


def _recording_bar(sink: Output):
    return lambda p: sink.bar(p.positions, p.total,
                              f"{p.positions / max(p.elapsed, 1e-9):.0f} pos/s {human_bytes(p.bytes_written)}")


def _record_depths(cfg, depths: str, sink: Output, *, reuse: bool, floor=None, run=None) -> None:
    from parity.recorder.depths import at_depth, record_depths

    def done(rec) -> None:
        sink.finish()
        m = rec.manifest
        how = "reused" if rec.reused else f"recorded at {m.run.get('timings', {}).get('generated_tokens_per_s')} tok/s"
        sink.note(f"depth {rec.depth}/{rec.total}: {how}; {m.generated_positions} generated + "
                  f"{m.prompt_positions} prompt positions; request key {m.request_key}")
        if floor is not None and m.floor is None:  # a reused golden keeps the floor it has
            _record_floor(at_depth(cfg, rec.depth), rec.path, floor, sink, run)

    with stdout_to_stderr():
        recs = record_depths(cfg, depths, progress=_recording_bar(sink), on_done=done, reuse=reuse, run=run)
    sink.result("\n".join(str(r.path) for r in recs))


# diff -------------------------------------------------------------------------
@app.command()
def diff(
    reference: StoreArg,
    candidates: Annotated[Optional[list[str]], typer.Argument(help="One or more candidate stores (or hub references).", show_default=False)] = None,
    candidates_from: Annotated[Optional[str], typer.Option("--candidates-from", help="Also compare every candidate in this directory of stores or Hub repo ORG/NAME.")] = None,
    repo: RepoOpt = None,
    max_kl: MaxKl = None,
    max_mean_kl: MaxMeanKl = None,
    min_top1: MinTop1 = None,
    max_abs: MaxAbs = None,
    tolerance: Tolerance = None,
    eps: Eps = 0.5,
    worst: Annotated[int, typer.Option("--worst", help="How many worst positions to list.")] = 10,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Write the JSON report here (parity.diff/1; parity.compare/1 with several candidates).")] = None,
    html_path: Annotated[Optional[Path], typer.Option("--html", help="Write a self-contained HTML report here.")] = None,
    tokenizer: Annotated[Optional[str], typer.Option("--tokenizer", help="tokenizer.json or its directory, for token texts in the HTML report (default: the reference's model directory, when it is here).")] = None,
    baseline: Annotated[Optional[str], typer.Option("--baseline", help="A store of accepted numerics (e.g. bf16, or --device hf) diffed against the reference in the same pass: the measured noise floor the candidate is set beside.")] = None,
    max_floor_ratio: Annotated[Optional[float], typer.Option("--max-floor-ratio", help="Fail if the candidate's generated KL p99 exceeds R times the baseline's (needs a floor).")] = None,
    no_floor: NoFloor = False,
    floor_gate: FloorGate = True,
    floor_ratio: FloorRatio = None,
    floor_fraction: FloorFraction = None,
    max_sigma_ratio: MaxSigmaRatio = None,
    max_sigma_ratio_abs: MaxSigmaRatioAbs = None,
    tie_steps: TieSteps = None,
    suggest_thresholds: Annotated[bool, typer.Option("--suggest-thresholds", help="Print thresholds measured on the floor (the reference's, or --baseline) with --margin, instead of a diff.")] = False,
    margin: Annotated[float, typer.Option("--margin", help="With --suggest-thresholds: how many times the floor's statistics to allow.")] = 2.0,
    no_color: NoColor = False,
) -> None:
    """Compare a reference with one or more candidates: KL, top-k agreement, deltas, first divergence, verdicts.

    The reference is read once for all candidates. Exit 0: every candidate passes (or report only),
    1: any fails, 2: unusable input.
    """
    from parity import differ
    from parity.differ import multi
    from parity.differ.report import write_atomic
    from parity.schemas import Store

    thresholds = _thresholds(tolerance, max_kl=max_kl, max_mean_kl=max_mean_kl, min_top1=min_top1, max_abs=max_abs)
    rule = _floor_rule(floor_gate, ratio=floor_ratio, min_fraction=floor_fraction, max_sigma_ratio=max_sigma_ratio,
                       max_sigma_ratio_abs=max_sigma_ratio_abs)
    ref = Store.open(_resolve_any(reference, repo), fast_read=settings().fast_read)
    base = _resolve_any(baseline, repo) if baseline else None
    if suggest_thresholds:
        _suggest(ref, base, candidates, margin, json_path, no_floor)
        return
    if max_floor_ratio is not None and baseline is None and (no_floor or ref.manifest.floor is None):
        raise UsageError("--max-floor-ratio needs a floor: --baseline STORE, or a golden recorded with --floor")
    cands = [_resolve_any(c, repo) for c in candidates or []]
    if candidates_from:
        from parity.workflows.candidates import candidates_from as find_candidates

        cands += find_candidates(ref, candidates_from)
    if not cands:
        raise UsageError("no candidate: give CANDIDATE stores after the reference, or --candidates-from DIR|ORG/NAME")
    decode = differ.decoder_for(ref, tokenizer) if html_path or tokenizer else None
    sink = Output(progress=not settings().no_progress)
    tie = {} if tie_steps is None else {"tie_steps": tie_steps}
    reports = multi.compare_all(ref, cands, baseline=base, max_floor_ratio=max_floor_ratio, thresholds=thresholds,
                                use_floor=not no_floor, floor_rule=rule, eps=eps, worst=worst, decode=decode,
                                details=bool(html_path), progress=lambda done, total: sink.bar(done, total, "rows"),
                                **tie)
    sink.finish()
    if json_path:
        multi.write_json(reports, json_path)
    if html_path:
        write_atomic(html_path, differ.render_html(reports[0] if len(reports) == 1 else reports, decode=decode))
    color = not no_color and sink.color
    sink.result(differ.render_text(reports[0], color=color) if len(reports) == 1
                else multi.render_text(reports, color=color))
    raise typer.Exit(multi.exit_code(reports))


def _floor_rule(gate: bool, **given):
    """The per-position floor gate (False: the floor only reported), defaults where not given."""
    from parity.differ.floor import FloorRule

    return FloorRule(**{k: v for k, v in given.items() if v is not None}) if gate else False


def _suggest(ref, baseline: Path | None, candidates, margin: float, json_path: Path | None, no_floor: bool) -> None:
    from parity.differ import suggest as suggest_
    from parity.differ.report import jsonable, write_atomic

    if candidates:
        raise UsageError("--suggest-thresholds measures the floor alone: give the reference only (and --baseline)")
    suggestion = suggest_.suggest(ref, baseline, margin=margin, use_floor=not no_floor)
    if json_path:
        write_atomic(json_path, json.dumps(jsonable(suggestion), indent=2, allow_nan=False) + "\n")
    Output().result(suggest_.render(suggestion))


def _thresholds(tolerance: str | None, **explicit):
    """A named preset, with the explicitly given thresholds on top."""
    from parity import differ

    given = differ.Thresholds(**explicit)
    return differ.Thresholds.preset(tolerance).merge(given) if tolerance else given


def _print_diff(ref: Path, cand: Path, sink: Output, *, color: bool) -> None:
    from parity import differ

    report = differ.diff(ref, cand)
    sink.note(differ.render_text(report, color=color and sink.is_tty))


def _resolve_any(ref: str, repo: str | None) -> Path:
    local = Path(ref).expanduser()
    if local.exists():
        # Checked here too: a local store needs no Hub client (importing it costs a diff's start-up).
        return local
    from parity import goldens

    if goldens.is_hub_reference(ref) or repo:
        return goldens.resolve_store(ref, repo=repo)
    return local


# bisect -------------------------------------------------------------------------
@app.command()
def bisect(
    golden: Annotated[list[str], typer.Option("--golden", help="Goldens at several depths: a directory of stores, store paths (repeat the option), or a Hub repo ORG/NAME.")],
    device: DeviceOpt = "cpu",
    model: ModelOpt = "tiny",
    revision: RevisionOpt = None,
    sweep: Annotated[bool, typer.Option("--sweep", help="Probe every golden depth instead of a binary search.")] = False,
    depths: Annotated[Optional[str], typer.Option("--depths", help="Only probe these depths, e.g. 1-8,all.")] = None,
    reuse: ReuseFlag = True,
    max_kl: MaxKl = None,
    max_mean_kl: MaxMeanKl = None,
    min_top1: MinTop1 = None,
    max_abs: MaxAbs = None,
    tolerance: Tolerance = None,
    eps: Eps = 0.5,
    max_model_len: MaxModelLen = 1024,
    dtype: DtypeOpt = "float32",
    seed: SeedOpt = 0,
    batch: BatchOpt = 1,
    tp: TpOpt = 1,
    pp: PpOpt = 1,
    executor: ExecutorOpt = None,
    block_size: BlockSizeOpt = None,
    trust_remote_code: TrustRemoteCode = False,
    rbln_path: RblnPath = "auto",
    rbln_host_logits: RblnHostLogits = False,
    rbln_fresh_compile: RblnFreshCompile = False,
    out: OutDir = None,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Write the parity.bisect/1 JSON here.")] = None,
    html_path: Annotated[Optional[Path], typer.Option("--html", help="Write a self-contained HTML page (KL against depth) here.")] = None,
    no_color: NoColor = False,
) -> None:
    """Find the first depth (layer count) at which the device drifts from goldens recorded at several depths.

    Exit 0: no probed depth fails, 1: one does (named on the last line), 2: unusable input.
    """
    from parity import differ
    from parity.differ.report import write_atomic
    from parity.recorder import EngineOptions, RecordConfig
    from parity.workflows.bisect import bisect as run_bisect, render_html, render_text

    thresholds = _thresholds(tolerance, max_kl=max_kl, max_mean_kl=max_mean_kl, min_top1=min_top1, max_abs=max_abs)
    if batch < 1 or tp < 1 or pp < 1:
        raise UsageError("--batch, --tp and --pp must be at least 1")
    cfg = RecordConfig(model=model, revision=revision, device=device, out=out, engine=EngineOptions(
        dtype=dtype, max_model_len=max_model_len, seed=seed, batch=batch, tp=tp, pp=pp, executor=executor,
        block_size=block_size, trust_remote_code=trust_remote_code, rbln_path=rbln_path,
        rbln_host_logits=rbln_host_logits, rbln_fresh_compile=rbln_fresh_compile))
    sink = Output(progress=not settings().no_progress)

    def probed(r) -> None:
        sink.finish()
        sink.note(f"depth {r.depth}: {r.verdict} (KL max {differ.render.fmt(r.kl.get('max'))}, top-1 "
                  f"{differ.render.fmt(r.top1_agreement)}){' [reused]' if r.candidate.reused else ''}")

    with stdout_to_stderr():
        result = run_bisect(cfg, golden, thresholds=thresholds, eps=eps, sweep=sweep, depths=depths, reuse=reuse,
                            progress=_recording_bar(sink), on_probe=probed, note=sink.note)
    sink.finish()
    if json_path:
        write_atomic(json_path, result.to_json())
    if html_path:
        write_atomic(html_path, render_html(result))
    sink.result(render_text(result, color=not no_color and sink.color))
    raise typer.Exit(result.exit_code)


# show / verify -----------------------------------------------------------------
@app.command()
def show(store: StoreArg, json_out: JsonFlag = False, repo: RepoOpt = None) -> None:
    """Print a store's manifest summary (--json: the whole manifest)."""
    from parity.schemas import Store
    from parity.schemas.streamcheck import check_opened

    s = Store.open(_resolve_any(store, repo), fast_read=settings().fast_read, partial=True)
    check_opened(s)  # what is shown is what the content digest names
    m = s.manifest
    sink = Output(json_mode=json_out)
    if json_out:
        sink.data(m.to_dict())
        return
    lines = [
        f"store        {s.path}",
        f"digest       {m.digest}",
        f"request key  {m.request_key}",
        f"model        {m.request.model.id} ({m.request.model.source}; weights {m.request.model.weights_digest})",
        f"device       {m.device.kind}  " + " ".join(f"{k}={v}" for k, v in sorted(m.device.versions.items())),
        f"logprobs     {'full vocabulary' if m.request.full_vocab else f'top-{m.request.logprobs}'}; "
        f"prompt positions {'on' if m.request.prompt_logprobs else 'off'}; vocab {m.vocab_size}",
        f"positions    {m.generated_positions} generated, {m.prompt_positions} prompt, {len(m.sequences)} sequences",
        f"settings     dtype={m.request.dtype} max_tokens={m.request.max_tokens} max_model_len={m.request.max_model_len} seed={m.request.seed}",
        f"run          {m.created_at}  capture={m.run.get('capture')}  forced={m.run.get('forced')}  golden={m.run.get('golden')}",
        f"timings      {m.run.get('timings')}",
    ]
    if m.share is not None:
        lines.insert(1, f"share        {m.share} of a sharded recording: {len(m.sequences)} of "
                        f"{len(m.request.prompts)} sequences (not a complete store: `parity merge` the shares)")
    if m.nan_rows:
        lines.append(f"WARNING      {m.nan_rows} rows contain NaN")
    for seq in m.sequences[:20]:
        text = (seq.text or "").replace("\n", "\\n")
        lines.append(f"  [{seq.index}] prompt {seq.prompt_len} + generated {seq.generated_len} ({seq.finish_reason}) {text[:70]!r}")
    if len(m.sequences) > 20:
        lines.append(f"  ... {len(m.sequences) - 20} more sequences")
    sink.result("\n".join(lines))


@app.command()
def verify(store: StoreArg, repo: RepoOpt = None) -> None:
    """Re-derive every digest of a store; exit 1 if anything does not match."""
    from parity.schemas import Store
    from parity.schemas.floorlink import open_floor

    sink = Output()
    # Opening checks the structure (exit 2 when it is not a complete store); verify the content (exit 1).
    s = Store.open(_resolve_any(store, repo), fast_read=settings().fast_read, partial=True)
    try:
        m = s.verify()
        floor = open_floor(s, fast_read=settings().fast_read)
        if floor is not None:
            floor.verify()
    except StoreCorruptError as e:
        sink.error(e.one_line())
        raise typer.Exit(1)
    floor = f"; noise floor {m.floor.digest} ({m.floor.kind}) ok" if m.floor is not None else ""
    share = f"; share {m.share} of a sharded recording" if m.share is not None else ""
    sink.result(f"ok {m.digest} (request key {m.request_key}){floor}{share}")


@app.command()
def merge(
    shares: Annotated[list[str], typer.Argument(help="The shares (`record --shard I/N` stores), or directories holding them.")],
    out: Annotated[Optional[Path], typer.Option("--out", help="Directory in which the merged store is created (default: the first share's).")] = None,
) -> None:
    """Merge the shares of a sharded recording into one store (checked: one request, every sequence once)."""
    from parity.schemas.merge import merge_shares

    sink = Output(progress=not settings().no_progress)
    result = merge_shares(shares, out, fast_read=settings().fast_read, direct_io=settings().direct_io,
                          progress=lambda done, total: sink.bar(done, total, "rows"))
    sink.finish()
    m = result.manifest
    sink.note(f"merged {len(result.shares)} shares: {len(m.sequences)} sequences, {m.generated_positions} generated + "
              f"{m.prompt_positions} prompt positions; digest {m.digest}")
    sink.result(str(result.path))


# hub -------------------------------------------------------------------------
@app.command()
def push(
    stores: Annotated[list[str], typer.Argument(help="Store directories, or directories of stores (a set of depths, say).")],
    repo: Annotated[str, typer.Option("--repo", help="Hub dataset repository ORG/NAME.")],
    private: Annotated[bool, typer.Option("--private", help="Create the repository as private.")] = False,
) -> None:
    """Upload stores to a Hub dataset repository in one commit (those already there are skipped)."""
    from parity import goldens
    from parity.schemas import stores_in

    sink = Output()
    results = goldens.push_many(stores_in(stores), repo, private=private)
    uploaded = [r for r in results if r.uploaded]
    if not uploaded:
        sink.note("already on the Hub: nothing uploaded")
    else:
        sink.note(f"uploaded {len(uploaded)} store(s), {sum(r.files for r in uploaded)} files"
                  + (f"; {len(results) - len(uploaded)} already there" if len(uploaded) < len(results) else ""))
    sink.result("\n".join(r.ref for r in results))


@app.command()
def pull(
    ref: Annotated[str, typer.Argument(help="hf://datasets/ORG/NAME[@REV]/PATH, or a digest (prefix) with --repo.")],
    repo: RepoOpt = None,
    revision: Annotated[Optional[str], typer.Option("--revision")] = None,
) -> None:
    """Download exactly one store into the Hugging Face cache and verify it."""
    from parity import goldens

    path = goldens.pull(ref, repo=repo, revision=revision)
    Output().result(str(path))


@app.command("ls")
def list_goldens(
    repo: Annotated[str, typer.Option("--repo", help="Hub dataset repository ORG/NAME.")],
    model: Annotated[Optional[str], typer.Option("--model", help="Only goldens of this model.")] = None,
    json_out: JsonFlag = False,
) -> None:
    """List the goldens in a Hub repository without downloading arrays."""
    from parity import goldens

    entries = goldens.list_goldens(repo, model=model)
    sink = Output(json_mode=json_out)
    if json_out:
        sink.data([e.to_dict() for e in entries])
        return
    if not entries:
        sink.note(f"no goldens in {repo}")
        return
    rows = [("MODEL", "DEVICE", "LAYERS", "PROMPTS", "POSITIONS", "FLOOR", "SIZE", "CREATED", "DIGEST")]
    for e in entries:
        rows.append((str(e.model), str(e.device), "all" if e.num_hidden_layers is None else str(e.num_hidden_layers),
                     str(e.prompts or "?"), str(e.positions), e.floor_kind or "-", human_bytes(e.size),
                     str(e.created_at)[:19], e.digest))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    sink.result("\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows))


# presets / demo ----------------------------------------------------------------
@app.command()
def presets() -> None:
    """List the model presets."""
    from parity.recorder.presets import PRESETS

    Output().result("\n".join(
        f"{p.name:<18} {p.model_id:<40} {'--ep' if p.expert_parallel else ''} {p.note}".rstrip()
        for p in PRESETS.values()
    ))


@app.command()
def demo(
    out: OutDir = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens")] = 24,
    perturb: Annotated[float, typer.Option("--perturb", help="Relative weight noise of the candidate model.")] = 0.02,
    no_color: NoColor = False,
) -> None:
    """Build a tiny local model, record a CPU golden, record a perturbed copy on its trajectory, diff."""
    from parity.workflows.demo import run_demo

    sink = Output(progress=not settings().no_progress)
    with stdout_to_stderr():
        result = run_demo(out=out, max_tokens=max_tokens, perturb=perturb,
                          progress=lambda p: sink.bar(p.positions, p.total, "positions"), note=sink.note)
    sink.finish()
    sink.result(result.report_text(color=not no_color and sink.color))
    sink.result(str(result.candidate))


@app.callback(invoke_without_command=True)
def _main(version: Annotated[bool, typer.Option("--version", help="Show the version.")] = False) -> None:
    _setup_logging()
    if version:
        Output().result(f"parity {__version__}")
        raise typer.Exit(0)


INTERRUPTED = 130  # 128 + SIGINT, as shells report it


def _click_errors(name: str) -> tuple[type, ...]:
    """click's exception class ``name``, and typer's vendored copy of it (typer >= 0.2x ships its own click)."""
    import importlib

    found = []
    for module in ("click.exceptions", "typer._click.exceptions"):
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(found)


def main() -> None:
    debug = settings().debug
    if not debug:
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        # When one chunk of a zarr read fails, zarr's gather returns the error
        # while its other chunk tasks are still running on zarr's event loop;
        # at exit asyncio reports them ("Task was destroyed but it is
        # pending!", "cannot schedule new futures after shutdown", "coroutine
        # ... was never awaited") with tracebacks, under the one-line error
        # that already said what went wrong.
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
        warnings.filterwarnings("ignore", message="coroutine .* was never awaited", category=RuntimeWarning)
    try:
        rc = app(standalone_mode=False, prog_name="parity")
        if rc == INTERRUPTED:  # typer turns Ctrl-C into this return code, silently
            Output().error("interrupted; nothing was published")
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except ParityError as e:
        if debug:
            raise
        Output().error(e.one_line())
        sys.exit(e.exit_code)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        Output().error("interrupted; nothing was published")
        sys.exit(INTERRUPTED)
    except Exception as e:  # noqa: BLE001 - the contract is one line, never a traceback
        if isinstance(e, _click_errors("ClickException")):  # usage mistakes: click's usage line, exit 2
            e.show()
            sys.exit(e.exit_code)
        if isinstance(e, _click_errors("Abort")):
            Output().error("aborted")
            sys.exit(130)
        if debug:
            raise
        Output().error(f"unexpected {type(e).__name__}: {e} (rerun with PARITY_DEBUG=1 for the traceback)")
        sys.exit(2)


if __name__ == "__main__":
    main()

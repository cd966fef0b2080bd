"""`record --replicas N`: one recording run by N engines, each on a share of the sequences, then merged.

Locally, each replica is a process of its own (vLLM keeps one engine per
process) bound to a disjoint set of this process's CPUs: a NUMA node each
when there are enough, else contiguous splits, the rule ``--tp`` applies to
its workers (``devices/cpu.cpu_groups``). On a Ray cluster
(``--ray-address``, ``replicas_ray.py``), each replica is a Ray task pinned
to a node, bound the same way among the replicas of its node. Shares go to a hidden temporary directory beside the output, are
merged (``schemas.merge``: every row checked against its digest) into the
one store a single engine would have written, then removed. Ctrl-C or a
failed replica stops the others and leaves no store.
"""

from __future__ import annotations

import logging
import os
import queue as queue_mod
import shutil
import signal
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Callable

from parity.errors import EngineError, ParityError, UsageError
from parity.schemas import Store
from parity.schemas.layout import TMP_PREFIX
from parity.schemas.manifest import Share
from parity.schemas.merge import merge_shares
from parity.settings import settings

from .devices.cpu import THREADS_BIND, allowed_cpus, cpu_groups, numa_nodes
from .plan import RecordConfig, plan_recording, share_costs, share_members
from .replica import Replica, record_share, replica_error
from .record import RecordResult
from .sink import Progress

log = logging.getLogger("parity")

REPLICA_DEVICES = ("cpu", "hf")
# A replica that ignores the stop request (an engine stuck in a collective) is killed after this.
STOP_GRACE_S = 20.0
LIVENESS_S = 0.5  # how often the driver looks for a replica that ended without a word


def check_replica_options(cfg: RecordConfig, count: int, ray_address: str | None) -> None:
    """What ``--replicas`` refuses before anything starts."""
    if count < 1:
        raise UsageError("--replicas must be at least 1")
    if ray_address is not None and count < 2:
        raise UsageError("--ray-address runs the replicas on a Ray cluster: give --replicas N with N >= 2")
    if cfg.shard is not None:
        raise UsageError("--shard records one share; --replicas records them all and merges them: choose one")
    if cfg.device not in REPLICA_DEVICES:
        raise UsageError(f"--replicas runs engines on CPUs ({', '.join(REPLICA_DEVICES)}), not --device {cfg.device}",
                         hint="on an NPU host record one share per NPU with --shard I/N, then `parity merge` them")
    if ray_address is None and THREADS_BIND in os.environ:
        groups = os.environ[THREADS_BIND].split("|")
        if len(groups) != count or cfg.engine.tp * cfg.engine.pp > 1:
            raise UsageError(f"{THREADS_BIND} is set ({os.environ[THREADS_BIND]!r}): with --replicas {count} it "
                             f"must give one CPU list per replica, separated by '|'",
                             hint=f"unset {THREADS_BIND} and parity binds each replica to its own CPUs")


def local_replicas(count: int) -> list[Replica]:
    """The replicas of this host, each with its CPUs (a user's ``VLLM_CPU_OMP_THREADS_BIND``
    with one '|'-separated list per replica is taken as given)."""
    given = os.environ.get(THREADS_BIND)
    if given is not None:
        groups = [tuple(_parse_cpus(g)) for g in given.split("|")]
    else:
        found = cpu_groups(count, allowed_cpus(), numa_nodes())
        if found is None:
            log.warning("--replicas %d on %d CPUs: the replicas share CPUs (threads left unbound)", count,
                        len(allowed_cpus()))
        groups = [tuple(g) for g in found] if found else [None] * count
    return [Replica(Share(i + 1, count), g) for i, g in enumerate(groups)]


def replica_plan(plan, count: int, ray_address: str | None) -> list[dict]:
    """What each replica would record and where (``record --dry-run --replicas N``)."""
    costs = share_costs(plan.request, plan.trajectories)
    local = local_replicas(count) if ray_address is None else None
    return [{"share": f"{i}/{count}", "sequences": share_members(costs, Share(i, count)),
             "cpus": (list(local[i - 1].cpus) if local[i - 1].cpus else None) if local else None,
             "where": "this host" if local else f"a Ray task on {ray_address} (bound among its node's replicas)"}
            for i in range(1, count + 1)]


def record_replicas(cfg: RecordConfig, count: int, *, ray_address: str | None = None,
                    progress: Callable[[Progress], None] | None = None,
                    on_share: Callable[[str], None] | None = None) -> RecordResult:
    """Records ``cfg`` with ``count`` engines and merges their shares into one store in ``cfg.out``.

    ``on_share(line)`` hears of each share as it completes.
    """
    check_replica_options(cfg, count, ray_address)
    plan = plan_recording(cfg)  # every input refused here, once, before any engine starts
    if count > len(plan.request.prompts):
        raise UsageError(f"--replicas {count}: the request has {len(plan.request.prompts)} sequences, fewer than "
                         "the replicas", hint=f"use at most {len(plan.request.prompts)} replicas")
    out = plan.out
    cfg = replace(cfg, out=out)
    total = sum(plan.lengths) + (sum(len(p) - 1 for p in plan.prompt_ids) if plan.request.prompt_logprobs else 0)
    work = out / f"{TMP_PREFIX}replicas-{uuid.uuid4().hex[:12]}"
    work.mkdir()
    started = time.perf_counter()
    procs: list = []  # local replica processes, still exiting when their shares are in
    try:
        if ray_address is None:
            shares, engine_s = _run_local(cfg, local_replicas(count), work, total, progress, on_share, procs)
        else:
            from .replicas_ray import run_ray

            shares, engine_s = run_ray(cfg, count, ray_address, work, on_share)
        wall = time.perf_counter() - started
        manifests = [Store.open(p, partial=True).manifest for p in shares]
        generated = sum(m.generated_positions for m in manifests)
        # The replicas ran side by side: the slowest share's generation is the run's.
        generate = max((m.run.get("timings") or {}).get("generate_s") or 0.0 for m in manifests)
        timings = {"replicas": count, "engine_start_s": round(max(engine_s), 3), "generate_s": round(generate, 3),
                   "generated_tokens_per_s": round(generated / generate, 2) if generate > 0 else None,
                   "wall_s": round(wall, 3)}
        merged_at = time.perf_counter()
        result = merge_shares(shares, out, fast_read=settings().fast_read, direct_io=settings().direct_io,
                              timings=timings)
        done = time.perf_counter()
        return RecordResult(result.path, result.manifest,
                            {**timings, "merge_s": round(done - merged_at, 3), "record_s": round(done - started, 3)})
    finally:
        _join(procs)
        shutil.rmtree(work, ignore_errors=True)


# -- local processes -------------------------------------------------------------
def _run_local(cfg: RecordConfig, replicas: list[Replica], work: Path, total: int,
               progress: Callable[[Progress], None] | None,
               on_share: Callable[[str], None] | None, procs: list) -> tuple[list[Path], list[float]]:
    """Runs the replicas as processes (appended to ``procs``) until every share is in.

    They are stopped on any failure; once every share is in they are left to
    exit while the shares merge (an engine's shutdown takes seconds).
    """
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # vLLM and torch do not survive fork
    messages = ctx.Queue()
    for r in replicas:
        log.info("starting %s", r.describe())
        p = ctx.Process(target=_replica_process, name=f"parity-replica-{r.share.index}",
                        args=(replace(cfg, shard=r.share, out=work), r, messages))
        p.start()
        procs.append(p)
    shares: dict[int, Path] = {}
    engine_s: dict[int, float] = {}
    seen: dict[int, tuple[int, int, int]] = {}
    started = time.perf_counter()
    backlog: list[tuple] = []  # messages read while looking for an ended replica's last word
    checked = time.monotonic()
    try:
        while len(shares) < len(procs):
            msg = None
            if backlog:
                msg = backlog.pop(0)
            elif time.monotonic() - checked > LIVENESS_S:
                # Checked on a clock: the others' progress keeps the queue busy.
                checked = time.monotonic()
                ended = [(r, p) for r, p in zip(replicas, procs) if r.share.index not in shares and not p.is_alive()]
                if ended:
                    msg = _last_word(messages, *ended[0], backlog)
            if msg is None:
                try:
                    msg = messages.get(timeout=LIVENESS_S)
                except queue_mod.Empty:
                    continue
            kind, index = msg[0], msg[1]
            if kind == "progress":
                seen[index] = msg[2:5]
                if progress:
                    positions, total, written = (sum(v[k] for v in seen.values()) for k in range(3))
                    progress(Progress(positions, total, written, time.perf_counter() - started))
            elif kind == "done":
                shares[index] = Path(msg[2])
                engine_s[index] = msg[3]
                if on_share:
                    on_share(f"share {index}/{len(procs)} recorded: {msg[4]}")
            elif kind == "error":
                raise replica_error(replicas[index - 1], msg[2], msg[3], msg[4])
        return [shares[i] for i in sorted(shares)], list(engine_s.values())
    except BaseException:
        _stop(procs)
        raise


def _last_word(messages, replica: Replica, proc, backlog: list) -> tuple:
    """The last message of a replica that ended: its result or error, else an error of its exit code.

    The others keep reporting progress meanwhile: a short, bounded look at the queue.
    """
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        try:
            msg = messages.get(timeout=0.2)
        except queue_mod.Empty:
            continue
        if msg[1] == replica.share.index and msg[0] in ("done", "error"):
            return msg
        backlog.append(msg)
    code = proc.exitcode
    how = f"was killed by signal {signal.Signals(-code).name}" if code is not None and code < 0 else \
        f"exited with code {code}"
    raise EngineError(f"{replica.describe()} {how} before finishing its share",
                      hint="rerun with PARITY_DEBUG=1; a killed replica is often out of memory: use fewer replicas")


def _join(procs) -> None:
    """Waits for replicas that have sent their share to exit (stopped if they do not in time)."""
    deadline = time.monotonic() + STOP_GRACE_S
    for p in procs:
        p.join(max(deadline - time.monotonic(), 0.1))
    _stop(procs)


def _stop(procs) -> None:
    """Stops the replicas still running: SIGINT (they abort their writers), then SIGKILL after a grace period."""
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        try:
            os.kill(p.pid, signal.SIGINT)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + STOP_GRACE_S
    for p in alive:
        p.join(max(deadline - time.monotonic(), 0.1))
        if p.is_alive():
            p.kill()
            p.join()


def _replica_process(cfg: RecordConfig, replica: Replica, messages) -> None:
    """A replica process's entry point."""
    os.dup2(2, 1)  # the command's stdout carries its result only
    _child_logging(replica)
    _replica_main(cfg, replica, messages)


def _replica_main(cfg: RecordConfig, replica: Replica, messages) -> None:
    """Binds, records the replica's share, reports on ``messages``: progress, then "done" or "error"."""
    try:
        path, engine_s, summary = record_share(cfg, replica, lambda p: messages.put(
            ("progress", replica.share.index, p.positions, p.total, p.bytes_written)))
        messages.put(("done", replica.share.index, str(path), engine_s, summary))
    except KeyboardInterrupt:
        messages.put(("error", replica.share.index, "EngineError", "interrupted", None))
    except ParityError as e:
        messages.put(("error", replica.share.index, type(e).__name__, str(e), e.hint))
    except BaseException as e:  # noqa: BLE001 - reported to the driver, which decides
        if settings().debug:
            import traceback

            traceback.print_exc()
        messages.put(("error", replica.share.index, None, f"{type(e).__name__}: {e}", EngineError.hint))


def _child_logging(replica: Replica) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(f"[replica {replica.share}] %(message)s"))
    logger = logging.getLogger("parity")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG if settings().debug else logging.WARNING)
    logger.propagate = False


def _parse_cpus(text: str) -> list[int]:
    from .devices.cpu import _parse_cpu_list

    try:
        return _parse_cpu_list(text)
    except ValueError:
        raise UsageError(f"{THREADS_BIND}: {text!r} is not a CPU list (e.g. 0-3,8)") from None

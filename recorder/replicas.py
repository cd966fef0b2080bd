"""`record --replicas N`: one recording run by N engines, each on a share of the sequences, then merged.

Locally, each replica is a process of its own (vLLM keeps one engine per
process) bound to a disjoint set of this process's CPUs: a NUMA node each
when there are enough, else contiguous splits, the rule ``--tp`` applies to
its workers (``devices/cpu.cpu_groups``). On a Ray cluster
(``--ray-address``), each replica is a Ray task pinned to a node, bound the
same way among the replicas of its node; it writes its share where the
driver reads it when the two see one filesystem, else returns the share's
files. Shares go to a hidden temporary directory beside the output, are
merged (``schemas.merge``: every row checked against its digest) into the
one store a single engine would have written, then removed. Ctrl-C or a
failed replica stops the others and leaves no store.
"""

from __future__ import annotations

import io
import logging
import os
import queue as queue_mod
import shutil
import signal
import tarfile
import tempfile
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import parity.errors as errors
from parity.errors import DeviceUnavailableError, EngineError, ParityError, UsageError
from parity.schemas import Store
from parity.schemas.layout import TMP_PREFIX
from parity.schemas.manifest import Share
from parity.schemas.merge import merge_shares
from parity.settings import settings

from .devices.cpu import THREADS_BIND, allowed_cpus, cpu_groups, cpu_list, numa_nodes
from .plan import RecordConfig, plan_recording, share_costs, share_members
from .record import RecordResult
from .sink import Progress

log = logging.getLogger("parity")

REPLICA_DEVICES = ("cpu", "hf")
# A replica that ignores the stop request (an engine stuck in a collective) is killed after this.
STOP_GRACE_S = 20.0
LIVENESS_S = 0.5  # how often the driver looks for a replica that ended without a word
MARKER = "replicas-driver"  # a file in the shares' directory that tells a Ray worker it sees the driver's disk


@dataclass(frozen=True)
class Replica:
    """What one replica runs: its share of the recording and where its threads go."""

    share: Share
    cpus: tuple[int, ...] | None  # None: unbound (fewer CPUs than replicas)
    node: str | None = None  # Ray node id

    def describe(self) -> str:
        where = f"CPUs {cpu_list(self.cpus)}" if self.cpus else "unbound threads"
        return f"replica {self.share} on {where}" + (f" of node {self.node[:12]}" if self.node else "")


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
    try:
        if ray_address is None:
            shares, engine_s = _run_local(cfg, local_replicas(count), work, total, progress, on_share)
        else:
            shares, engine_s = _run_ray(cfg, count, ray_address, work, on_share)
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
        shutil.rmtree(work, ignore_errors=True)


# -- local processes -------------------------------------------------------------
def _run_local(cfg: RecordConfig, replicas: list[Replica], work: Path, total: int,
               progress: Callable[[Progress], None] | None,
               on_share: Callable[[str], None] | None) -> tuple[list[Path], list[float]]:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # vLLM and torch do not survive fork
    messages = ctx.Queue()
    procs = []
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
                raise _replica_error(replicas[index - 1], msg[2], msg[3], msg[4])
        for p in procs:
            p.join()
        return [shares[i] for i in sorted(shares)], list(engine_s.values())
    finally:
        _stop(procs)


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


def _replica_error(replica: Replica, name: str | None, message: str, hint: str | None) -> ParityError:
    cls = getattr(errors, name or "", None)
    if not (isinstance(cls, type) and issubclass(cls, ParityError)):
        cls = EngineError
    return cls(f"{replica.describe()}: {message}", hint=hint)


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
        path, engine_s, summary = _record_share(cfg, replica, lambda p: messages.put(
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


def _record_share(cfg: RecordConfig, replica: Replica, progress) -> tuple[Path, float, str]:
    """Records one share in this process, its threads on the replica's CPUs."""
    from .engines import environment
    from .record import record

    env = {}
    if replica.cpus:
        # Not OMP_NUM_THREADS: set, it changes which kernels run (other values, another digest,
        # than a single engine's); vLLM sizes its thread pool from the CPUs it binds.
        os.sched_setaffinity(0, replica.cpus)
        if cfg.engine.tp * cfg.engine.pp == 1:
            env[THREADS_BIND] = ",".join(map(str, replica.cpus))
    with environment(env):
        result = record(cfg, progress)
    m = result.manifest
    summary = (f"{len(m.sequences)} sequences, {m.generated_positions} generated + {m.prompt_positions} prompt "
               f"positions at {result.timings.get('generated_tokens_per_s')} tok/s ({replica.describe()})")
    return result.path, float(m.run.get("timings", {}).get("engine_start_s") or 0.0), summary


# -- Ray ------------------------------------------------------------------------------
def _run_ray(cfg: RecordConfig, count: int, address: str, work: Path,
             on_share: Callable[[str], None] | None) -> tuple[list[Path], list[float]]:
    try:
        import ray
    except ImportError:
        raise DeviceUnavailableError("--ray-address needs Ray, which is not installed",
                                     hint="pip install 'ray[default]'") from None
    token = uuid.uuid4().hex
    (work / MARKER).write_text(token)
    _check_reachable(address)
    try:
        ray.init(address=address, log_to_driver=settings().debug, logging_level=logging.WARNING)
    except Exception as e:  # noqa: BLE001 - Ray's connection errors have no common base
        raise EngineError(f"cannot connect to the Ray cluster at {address}: {type(e).__name__}: {_first_line(e)}",
                          hint="start it with `ray start --head` and pass the address it prints") from None
    try:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        placed = _place(ray.nodes(), count)
        task = ray.remote(_ray_share)
        refs = {}
        for i, (node, slot, per_node, cpus) in enumerate(placed):
            share = Share(i + 1, count)
            refs[task.options(num_cpus=cpus, max_retries=0, scheduling_strategy=NodeAffinitySchedulingStrategy(
                node, soft=False)).remote(replace(cfg, shard=share, out=work), share, slot, per_node, str(work),
                                          token)] = share
        shares: dict[int, Path] = {}
        engine_s = []
        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                share = refs[done[0]]
                try:
                    outcome = ray.get(done[0])
                except Exception as e:  # noqa: BLE001 - a task's exception arrives wrapped by Ray
                    raise _ray_error(share, e) from None
                if outcome[0] == "error":
                    raise _replica_error(Replica(share, None), outcome[1], outcome[2], outcome[3])
                _, where, payload, seconds, summary = outcome
                shares[share.index] = Path(payload) if where == "path" else _unpack(payload, work)
                engine_s.append(seconds)
                if on_share:
                    on_share(f"share {share}: {summary}")
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        return [shares[i] for i in sorted(shares)], engine_s
    finally:
        ray.shutdown()


def _check_reachable(address: str) -> None:
    """A HOST:PORT nobody answers at is refused at once (Ray itself retries for minutes)."""
    import socket

    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in address:
        return  # "auto", ray:// client addresses: Ray's own resolution
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
    except OSError as e:
        raise EngineError(f"cannot connect to the Ray cluster at {address}: {e.strerror or e}",
                          hint="start it with `ray start --head` and pass the address it prints") from None


def _place(nodes: list[dict], count: int) -> list[tuple[str, int, int, float]]:
    """(node id, slot on the node, replicas on the node, CPUs to ask) per replica: spread over the
    alive nodes in proportion to their CPUs, each replica asking its node's CPUs divided evenly."""
    alive = sorted(((n["NodeID"], n.get("Resources", {}).get("CPU", 0)) for n in nodes if n.get("Alive")),
                   key=lambda t: (-t[1], t[0]))
    alive = [(node, cpus) for node, cpus in alive if cpus >= 1]
    if not alive:
        raise EngineError("the Ray cluster has no alive node with a CPU")
    per_node = {node: 0 for node, _ in alive}
    for _ in range(count):
        node, _ = max(alive, key=lambda t: (t[1] / (per_node[t[0]] + 1), -list(per_node).index(t[0])))
        per_node[node] += 1
    cpus = dict(alive)
    placed, slots = [], {node: 0 for node in per_node}
    for node, n in per_node.items():
        for _ in range(n):
            placed.append((node, slots[node], n, max(int(cpus[node] // n), 1)))
            slots[node] += 1
    return placed


def _ray_share(cfg: RecordConfig, share: Share, slot: int, per_node: int, driver_dir: str, token: str):
    """A Ray task: records one share on this node, bound among the node's ``per_node`` replicas."""
    marker = Path(driver_dir) / MARKER
    shared = marker.is_file() and marker.read_text() == token
    local = None if shared else Path(tempfile.mkdtemp(prefix="parity-share-"))
    groups = cpu_groups(per_node, allowed_cpus(), numa_nodes())
    replica = Replica(share, tuple(groups[slot]) if groups else None)
    if cfg.engine.tp * cfg.engine.pp > 1 and cfg.engine.executor is None:
        cfg = replace(cfg, engine=replace(cfg.engine, executor="mp"))  # not the Ray executor inside a Ray task
    affinity = os.sched_getaffinity(0)
    try:
        path, engine_s, summary = _record_share(cfg if shared else replace(cfg, out=local), replica, None)
        if shared:
            return ("done", "path", str(path), engine_s, summary)
        return ("done", "files", _pack(path), engine_s, summary)
    except ParityError as e:
        return ("error", type(e).__name__, str(e), e.hint)
    finally:
        os.sched_setaffinity(0, affinity)
        if local is not None:
            shutil.rmtree(local, ignore_errors=True)


def _pack(path: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(path, arcname=path.name)
    return buf.getvalue()


def _unpack(data: bytes, work: Path) -> Path:
    """A share returned as files, unpacked under ``work`` (a share is checked, rows and all, when merged)."""
    target = Path(tempfile.mkdtemp(prefix="share-", dir=work))
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
            tar.extractall(target, filter="data")  # no links out, no absolute or parent paths
    except (tarfile.TarError, OSError) as e:
        raise EngineError(f"a Ray replica returned a share that cannot be unpacked: {e}") from None
    inner = [p for p in target.iterdir() if p.is_dir()]
    if len(inner) != 1:
        raise EngineError("a Ray replica returned a share that is not one store directory")
    return inner[0]


def _ray_error(share: Share, e: Exception) -> EngineError:
    cause = getattr(e, "cause", None) or e
    return EngineError(f"replica {share} failed on the Ray cluster: {type(cause).__name__}: {_first_line(cause)}")


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else ""


def _parse_cpus(text: str) -> list[int]:
    from .devices.cpu import _parse_cpu_list

    try:
        return _parse_cpu_list(text)
    except ValueError:
        raise UsageError(f"{THREADS_BIND}: {text!r} is not a CPU list (e.g. 0-3,8)") from None

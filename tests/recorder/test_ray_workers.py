"""Capture and forcing inside Ray actors, the way vLLM's Ray executor reaches its workers.

vLLM's CPU platform cannot run its Ray executor (it has no ``ray_device_key``,
and Ray reserves the "CPU" resource name vLLM would ask for), so a full engine
cannot run on Ray here; ``test_ray_executor_on_cpu_is_a_one_line_error`` pins
that refusal. Everything up to that point is real: a local Ray instance this
module starts and stops, vLLM's own ``RayWorkerWrapper`` actors, vLLM's real
tensor/pipeline parallel groups (gloo) inside them, and our RPC endpoints sent
by vLLM's own ``RayDistributedExecutor.collective_rpc`` (cloudpickle, then
``execute_method.remote``). The one stand-in is the model: each decode step
feeds our ``CaptureProcessor`` logits drawn from a seed every rank shares, as
tensor-parallel ranks see identical gathered logits.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import ray

from parity.recorder.rows import EngineRows
from parity.recorder.sink import WriterSpec
from parity.schemas import GENERATED, Device, Manifest, ModelRef, Request, SequenceInfo, Store

pytestmark = pytest.mark.engine

VOCAB = 257
STEPS = 5


@pytest.fixture(scope="module")
def local_ray():
    import cloudpickle

    # The actors do not import test modules: send this module's functions by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _init_rank(wrapper, rank: int, world: int, port: int, tp: int, pp: int):
    """Runs in the actor: vLLM's parallel groups over gloo, and a stand-in for the model worker."""
    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.distributed import ensure_model_parallel_initialized, init_distributed_environment

    wrapper.worker = SimpleNamespace(rank=rank, model_runner=None)
    with set_current_vllm_config(VllmConfig()):
        init_distributed_environment(world_size=world, rank=rank, local_rank=rank, backend="gloo",
                                     distributed_init_method=f"tcp://127.0.0.1:{port}")
        ensure_model_parallel_initialized(tp, pp)
    return os.getpid()


def _logits(step: int, batch: int):
    import torch

    gen = torch.Generator().manual_seed(1000 + step)
    return torch.randn(batch, VOCAB, generator=gen) * 3.0


def _decode(wrapper, seqs_by_index: dict[int, int], steps: int):
    """Runs in the actor: the sampler's side of ``steps`` decode steps through our processor."""
    import torch
    from vllm import SamplingParams
    from vllm.v1.sample.logits_processor import BatchUpdate

    from parity.recorder.capture import EXTRA_KEY, CaptureProcessor

    proc = CaptureProcessor(None, torch.device("cpu"), False)
    outputs = {i: [] for i in seqs_by_index}
    added = [(i, SamplingParams(extra_args={EXTRA_KEY: seq}), [1, 2], outputs[i]) for i, seq in seqs_by_index.items()]
    proc.update_state(BatchUpdate(batch_size=len(added), removed=[], added=added, moved=[]))
    for step in range(steps):
        logits = proc.apply(_logits(step, len(seqs_by_index)))
        for i in seqs_by_index:
            outputs[i].append(int(logits[i].argmax()))
    proc.update_state(BatchUpdate(batch_size=0, removed=list(seqs_by_index), added=[], moved=[]))
    return {seqs_by_index[i]: toks for i, toks in outputs.items()}


def _executor_rpc(actors):
    """An object with ``collective_rpc`` exactly as vLLM's Ray executor implements it."""
    from vllm.v1.executor.ray_executor import RayDistributedExecutor

    executor = SimpleNamespace(workers=actors)

    def collective_rpc(method, timeout=None, args=(), kwargs=None):
        return RayDistributedExecutor.collective_rpc(executor, method, timeout, args, kwargs)

    return SimpleNamespace(collective_rpc=collective_rpc)


def _manifest(num_seqs: int, trajectories: dict[int, list[int]]) -> Manifest:
    return Manifest(
        request=Request(model=ModelRef(id="ray-test"), prompts=tuple((1, 2) for _ in range(num_seqs)),
                        max_tokens=STEPS, logprobs=-1, prompt_logprobs=False, dtype="float32",
                        max_model_len=64, seed=0),
        device=Device(kind="cpu"), vocab_size=VOCAB,
        sequences=tuple(SequenceInfo(i, 2, STEPS, "length") for i in range(num_seqs)),
        arrays={}, created_at="t", tool_version="0",
    )


@pytest.mark.parametrize("tp,pp,output_rank", [(2, 1, 0), (1, 2, 1)], ids=["tp2", "pp2"])
def test_rows_are_written_by_the_output_actor_and_forcing_reaches_every_rank(local_ray, tmp_path, tp, pp, output_rank):
    import cloudpickle
    import torch
    from vllm.v1.executor.ray_utils import RayWorkerWrapper

    world = tp * pp
    actors = [ray.remote(num_cpus=1)(RayWorkerWrapper).remote(rpc_rank=r) for r in range(world)]
    port = _free_port()
    init = cloudpickle.dumps(_init_rank)
    pids = ray.get([a.execute_method.remote(init, r, world, port, tp, pp) for r, a in enumerate(actors)])
    llm = _executor_rpc(actors)

    # Sequence ids in batch order 1, 0: the processor must map rows by request, not by index.
    seqs_by_index = {0: 1, 1: 0}
    trajectories = {0: [7, 8, 9, 10, 11], 1: [200, 100, 50, 25, 12]}
    spec = WriterSpec(out=str(tmp_path), vocab_size=VOCAB, topn=None, num_seqs=2, total=2 * STEPS)
    rows = EngineRows.open(llm, spec, trajectories, None, False)
    assert rows.info["pid"] == pids[output_rank]  # the first TP rank of the last pipeline stage
    assert rows.info["progress_file"]  # another process: progress comes through a file

    seen = []
    with rows.watch(seen.append, spec.total):
        decoded = ray.get([a.execute_method.remote(cloudpickle.dumps(_decode), seqs_by_index, STEPS)
                           for a in actors])
    # Every rank sampled the golden trajectory: forcing reached each of them.
    for per_rank in decoded:
        assert per_rank == trajectories
    assert seen and seen[-1].positions == 2 * STEPS

    stats = rows.stats()
    assert stats.positions == 2 * STEPS and stats.error is None and stats.nan_rows == [0, 0]
    path, manifest = rows.commit(_manifest(2, trajectories), [[1, 2, *trajectories[s]] for s in range(2)])
    store = Store.open(path)
    assert path.parent == tmp_path and store.verify().digest == manifest.digest
    # The stored rows are the model's own distributions, before forcing.
    for seq, index in ((1, 0), (0, 1)):
        expected = np.stack([_logits(step, 2)[index].log_softmax(-1, dtype=torch.float32).numpy()
                             for step in range(STEPS)])
        np.testing.assert_allclose(store.sequence_rows(GENERATED, seq), expected, rtol=0, atol=1e-6)
    assert not any(p.name.startswith(".parity-tmp-") for p in tmp_path.iterdir())
    for a in actors:
        ray.kill(a)


def test_a_failed_or_aborted_worker_recording_leaves_nothing(local_ray, tmp_path):
    import cloudpickle
    from vllm.v1.executor.ray_utils import RayWorkerWrapper

    from parity.errors import StoreCorruptError

    actors = [ray.remote(num_cpus=1)(RayWorkerWrapper).remote(rpc_rank=0)]
    ray.get(actors[0].execute_method.remote(cloudpickle.dumps(_init_rank), 0, 1, _free_port(), 1, 1))
    llm = _executor_rpc(actors)
    spec = WriterSpec(out=str(tmp_path), vocab_size=VOCAB, topn=None, num_seqs=1, total=STEPS)

    # The manifest claims STEPS rows, the actor captured 2: the worker's commit
    # refuses, and the recorder gets parity's own error (not Ray's wrapper of it).
    rows = EngineRows.open(llm, spec, {}, None, False)
    ray.get(actors[0].execute_method.remote(cloudpickle.dumps(_decode), {0: 0}, 2))
    assert any(p.name.startswith(".parity-tmp-") for p in tmp_path.iterdir())
    with pytest.raises(StoreCorruptError, match="captured") as err:
        rows.commit(_manifest(1, {}), [[1, 2, 0, 0, 0, 0, 0]])
    assert err.value.hint and "PARITY_DEBUG" in err.value.hint
    rows.abort()
    assert list(tmp_path.iterdir()) == []

    rows = EngineRows.open(llm, spec, {}, None, False)
    ray.get(actors[0].execute_method.remote(cloudpickle.dumps(_decode), {0: 0}, 2))
    rows.abort()
    assert list(tmp_path.iterdir()) == []
    ray.kill(actors[0])


def test_ray_executor_on_cpu_is_a_one_line_error(tiny_model, tmp_path):
    env = {**os.environ, "PARITY_NO_PROGRESS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "parity.cli", "record", "--model", str(tiny_model), "--tp", "2",
         "--distributed-executor-backend", "ray", "--out", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Ray executor" in lines[0] and "--distributed-executor-backend mp" in lines[0]
    assert list(tmp_path.iterdir()) == []

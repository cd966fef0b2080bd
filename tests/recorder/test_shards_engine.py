"""Recording in shares and replicas with the real vLLM CPU engine, merged into one store.

Everything is real: the engine, the stores, the replica processes bound to
their CPUs, and a local Ray instance this module starts (`ray start --head`)
and stops. The thread count of an engine changes float reduction order on
the CPU, so a merged store is compared with a single engine on as many CPUs
as each replica had.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from parity.recorder import EngineOptions, RecordConfig, record
from parity.recorder.devices.cpu import allowed_cpus
from parity.schemas import Store
from parity.schemas.layout import TMP_PREFIX
from parity.schemas.manifest import Share
from parity.schemas.merge import merge_shares
from tests.conftest import ENGINE_MAX_TOKENS, ENGINE_PROMPTS
from tests.support.cli_run import ROOT, assert_one_line_error, parity

pytestmark = pytest.mark.engine

needs_two_cpus = pytest.mark.skipif(len(allowed_cpus()) < 2, reason="replicas on disjoint CPUs need 2 CPUs")
PROMPT_ARGS = [a for p in ENGINE_PROMPTS for a in ("--prompts", p)]


def _record_args(model: Path, out: Path) -> list[str]:
    return ["record", "--model", str(model), *PROMPT_ARGS, "--max-tokens", str(ENGINE_MAX_TOKENS),
            "--max-model-len", "256", "--out", str(out)]


def _only_the_store(out: Path) -> Path:
    entries = list(out.iterdir())
    assert len(entries) == 1 and entries[0].name.endswith(".parity.zarr"), entries  # no share, no temporary
    return entries[0]


def test_shares_recorded_apart_merge_into_the_single_recording(tiny_model, golden, tmp_path):
    """Batch 1, the same threads as the golden (this process): exactly the golden's digest."""
    shares = []
    for i in (1, 2):
        cfg = RecordConfig(model=str(tiny_model), prompts=ENGINE_PROMPTS, max_tokens=ENGINE_MAX_TOKENS,
                           out=tmp_path / "shares", engine=EngineOptions(max_model_len=256), shard=Share(i, 2))
        result = record(cfg)
        m = result.manifest
        assert m.share == Share(i, 2) and m.request_key == golden.manifest.request_key
        assert result.path.name.endswith(f".share-{i}-of-2.parity-share.zarr")
        shares.append(result.path)
    held = [[s.index for s in Store.open(p, partial=True).manifest.sequences] for p in shares]
    assert sorted(held[0] + held[1]) == list(range(len(ENGINE_PROMPTS))) and all(held)
    merged = merge_shares(shares, tmp_path / "merged")
    assert merged.manifest.digest == golden.manifest.digest
    assert Store.open(merged.path).verify().digest == golden.manifest.digest
    # A share is no golden: following one is refused in one line.
    assert_one_line_error(parity("record", "--model", str(tiny_model), "--golden", str(shares[0]),
                                 "--out", str(tmp_path / "x")), "is share 1/2 of a sharded recording")


def test_shares_of_a_forced_recording_merge_into_it(tiny_model, golden, tmp_path):
    """On an NPU host the candidate is what gets sharded: shares that follow the golden."""
    single = record(RecordConfig(model=str(tiny_model), golden=golden.path, out=tmp_path / "single",
                                 engine=EngineOptions(max_model_len=256, dtype="bfloat16")))
    shares = [record(RecordConfig(model=str(tiny_model), golden=golden.path, out=tmp_path / "shares",
                                  engine=EngineOptions(max_model_len=256, dtype="bfloat16"), shard=Share(i, 2))).path
              for i in (1, 2)]
    merged = merge_shares(shares, tmp_path / "merged")
    assert merged.manifest.run["forced"] and merged.manifest.run["golden"] == golden.manifest.digest
    assert merged.manifest.digest == single.manifest.digest


@pytest.fixture(scope="module")
def one_cpu_single(tiny_model, tmp_path_factory):
    """The recording of one engine on one CPU (what each of two replicas on a 2-CPU host gets)."""
    out = tmp_path_factory.mktemp("one-cpu")
    proc = subprocess.run(["taskset", "-c", str(allowed_cpus()[0]), sys.executable, "-m", "parity.cli",
                           *_record_args(tiny_model, out)], capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    return Store.open(proc.stdout.strip()).manifest


@needs_two_cpus
def test_two_local_replicas_give_one_store_with_the_single_engines_digest(tiny_model, one_cpu_single, tmp_path):
    cpus = allowed_cpus()[:2]
    out = tmp_path / "out"
    # One CPU each, given as vLLM's own '|'-separated binding syntax.
    proc = parity(*_record_args(tiny_model, out), "--replicas", "2",
                  env={"VLLM_CPU_OMP_THREADS_BIND": f"{cpus[0]}|{cpus[1]}"})
    assert proc.returncode == 0, proc.stderr
    store = Store.open(proc.stdout.strip())
    assert store.path == _only_the_store(out)
    m = store.manifest
    assert m.digest == one_cpu_single.digest
    assert m.share is None and [s["index"] for s in m.run["shares"]] == [1, 2]
    binds = [s["env"].get("VLLM_CPU_OMP_THREADS_BIND") for s in m.run["shares"]]
    assert binds == [str(cpus[0]), str(cpus[1])]
    assert m.run["timings"]["replicas"] == 2
    assert "share 1/2 recorded" in proc.stderr and "share 2/2 recorded" in proc.stderr
    assert parity("verify", str(store.path)).returncode == 0


@needs_two_cpus
def test_replicas_record_the_golden_and_its_floor(tiny_model, tmp_path):
    """--floor with --replicas: the floor is recorded by replicas too, on the merged golden's trajectory."""
    out = tmp_path / "out"
    proc = parity(*_record_args(tiny_model, out), "--replicas", "2", "--floor", "bf16")
    assert proc.returncode == 0, proc.stderr
    golden = Store.open(proc.stdout.strip())
    link = golden.manifest.floor
    assert link is not None and link.kind == "bf16"
    floor = Store.open(golden.path / link.path)
    assert floor.manifest.run["golden"] == golden.manifest.digest
    assert [s["index"] for s in floor.manifest.run["shares"]] == [1, 2]
    verified = parity("verify", str(golden.path))
    assert verified.returncode == 0 and f"noise floor {link.digest} (bf16) ok" in verified.stdout
    assert _only_the_store(out) == golden.path
    assert not [p for p in golden.path.iterdir() if p.name.startswith(TMP_PREFIX)]


@needs_two_cpus
def test_a_killed_replica_fails_in_one_line_and_leaves_nothing(tiny_model, tmp_path):
    out = tmp_path / "out"
    proc = _start_long_replicas(tiny_model, out)
    victim = _wait_for_rows(proc, out)[0]
    os.kill(victim, signal.SIGKILL)
    _, stderr = proc.communicate(timeout=180)
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 2 and len(errors) == 1, stderr
    assert "was killed by signal SIGKILL before finishing its share" in errors[0]
    assert "Traceback" not in stderr
    assert list(out.iterdir()) == []
    _assert_gone(proc.pid)


@needs_two_cpus
def test_ctrl_c_stops_every_replica_and_leaves_nothing(tiny_model, tmp_path):
    out = tmp_path / "out"
    proc = _start_long_replicas(tiny_model, out)
    replicas = _wait_for_rows(proc, out)
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole process group
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 130, stderr
    assert "error: interrupted; nothing was published" in stderr.splitlines()
    assert list(out.iterdir()) == []
    for pid in replicas:
        _assert_gone(pid)


def _start_long_replicas(model: Path, out: Path) -> subprocess.Popen:
    """Two replicas on a recording long enough to be stopped while rows flow."""
    out.mkdir()
    args = ["record", "--model", str(model), "--suite", "seed", "--max-tokens", "400", "--replicas", "2",
            "--out", str(out)]
    return subprocess.Popen([sys.executable, "-m", "parity.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "PARITY_NO_PROGRESS": "1"})


def _wait_for_rows(proc: subprocess.Popen, out: Path) -> list[int]:
    """The replica processes' pids, once both replicas' writers are open (rows flow)."""
    deadline = time.monotonic() + 300
    while True:
        assert proc.poll() is None and time.monotonic() < deadline, "the recording ended before it could be stopped"
        work = [p for p in out.iterdir() if p.name.startswith(f"{TMP_PREFIX}replicas-")]
        if work and sum(1 for p in work[0].iterdir() if p.name.startswith(TMP_PREFIX)) == 2:
            break
        time.sleep(0.2)
    time.sleep(2)
    return _replica_pids(proc.pid)


def _replica_pids(parent: int) -> list[int]:
    pids = []
    for task in Path(f"/proc/{parent}/task").iterdir():
        for child in (task / "children").read_text().split():
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            if b"spawn_main" in cmdline:
                pids.append(int(child))
    assert len(pids) == 2, pids
    return pids


def _assert_gone(pid: int) -> None:
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        status = Path(f"/proc/{pid}/status").read_text() if Path(f"/proc/{pid}/status").exists() else ""
        if "State:\tZ" in status:
            return
        time.sleep(0.2)
    assert not Path(f"/proc/{pid}").exists(), f"process {pid} is still running"


# -- Ray ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A local Ray instance of 2 CPUs, started and stopped as a user would."""
    ray_bin = Path(sys.executable).parent / "ray"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(ROOT)}
    temp = tmp_path_factory.mktemp("ray")
    started = subprocess.run([str(ray_bin), "start", "--head", "--port", str(port), "--num-cpus", "2",
                              "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"],
                             capture_output=True, text=True, env=env, timeout=180)
    assert started.returncode == 0, started.stderr
    yield f"127.0.0.1:{port}"
    subprocess.run([str(ray_bin), "stop", "--force"], capture_output=True, env=env, timeout=120)


@needs_two_cpus
def test_replicas_on_a_ray_cluster_give_the_single_engines_digest(tiny_model, one_cpu_single, ray_head, tmp_path):
    out = tmp_path / "out"
    proc = parity(*_record_args(tiny_model, out), "--replicas", "2", "--ray-address", ray_head,
                  env={"RAY_USAGE_STATS_ENABLED": "0"})
    assert proc.returncode == 0, proc.stderr
    store = Store.open(proc.stdout.strip())
    assert store.path == _only_the_store(out)
    m = store.manifest
    assert m.digest == one_cpu_single.digest
    assert [s["index"] for s in m.run["shares"]] == [1, 2]
    assert sorted(s["env"].get("VLLM_CPU_OMP_THREADS_BIND") for s in m.run["shares"]) == \
        sorted(str(c) for c in allowed_cpus()[:2])
    assert json.loads(parity("show", "--json", str(store.path)).stdout)["digest"] == m.digest


def test_an_unreachable_ray_cluster_is_a_one_line_error(tiny_model, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there
    proc = parity(*_record_args(tiny_model, tmp_path / "out"), "--replicas", "2", "--ray-address",
                  f"127.0.0.1:{port}", env={"RAY_USAGE_STATS_ENABLED": "0"}, timeout=300)
    assert_one_line_error(proc, f"cannot connect to the Ray cluster at 127.0.0.1:{port}")
    assert not [p for p in (tmp_path / "out").iterdir()]

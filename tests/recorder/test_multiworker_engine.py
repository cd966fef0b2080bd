"""Recording when the sampler runs in vLLM's worker processes (--tp 2, --pp 2).

Real vLLM CPU engines with the multiprocess executor on this 2-core,
single-NUMA-node host, with no extra environment: the recorder must bind
threads itself, open the store writer in the output worker and send the
golden's trajectory to every worker.
"""

from __future__ import annotations

import numpy as np
import pytest

from parity.recorder import EngineOptions, RecordConfig, record
from parity.schemas import GENERATED, PROMPT, Store
from tests.conftest import ENGINE_PROMPTS

pytestmark = pytest.mark.engine

PROMPTS = ENGINE_PROMPTS[:2]
MAX_TOKENS = 6


def _assert_worker_capture(store: Store, *, tp: int, pp: int) -> None:
    m = store.manifest
    assert m.run["capture"] == "tensor" and m.run["prompt_capture"] == "tensor"
    assert m.run["executor"] == "mp"
    assert m.device.engine_args["tensor_parallel_size"] == tp and m.device.engine_args["pipeline_parallel_size"] == pp
    # Bound by the recorder (vLLM's "auto" needs one NUMA node per worker).
    assert m.device.env["VLLM_CPU_OMP_THREADS_BIND"] not in ("", "auto")
    assert store.verify().digest == m.digest


def test_tp2_rows_are_tensors_and_match_the_engines_own_logprobs(tiny_model, tmp_path):
    opts = EngineOptions(max_model_len=256, tp=2)
    captured = record(RecordConfig(model=str(tiny_model), prompts=PROMPTS, max_tokens=MAX_TOKENS,
                                   out=tmp_path / "tensor", engine=opts))
    public = record(RecordConfig(model=str(tiny_model), prompts=PROMPTS, max_tokens=MAX_TOKENS,
                                 out=tmp_path / "public", engine=opts, capture="public"))
    c, p = Store.open(captured.path), Store.open(public.path)
    _assert_worker_capture(c, tp=2, pp=1)
    assert p.manifest.run["capture"] == "public"
    for s in c.manifest.sequences:
        assert list(c.tokens(s.index)) == list(p.tokens(s.index))
        assert s.generated_len == MAX_TOKENS
        for kind in (GENERATED, PROMPT):
            rows = c.sequence_rows(kind, s.index)
            assert rows.shape[0] > 0
            assert np.abs(rows - p.sequence_rows(kind, s.index)).max() <= 1e-4


def test_pp2_follows_the_golden_from_worker_processes(golden, tiny_model, tmp_path):
    # Forcing happens in the worker that samples: the trajectory must reach it.
    forced = record(RecordConfig(model=str(tiny_model), golden=golden.path, out=tmp_path,
                                 engine=EngineOptions(max_model_len=256, pp=2)))
    f, g = Store.open(forced.path), Store.open(golden.path)
    _assert_worker_capture(f, tp=1, pp=2)
    assert f.manifest.run["forced"] is True and f.manifest.run["golden"] == g.manifest.digest
    for s in g.manifest.sequences:
        assert list(f.tokens(s.index)) == list(g.tokens(s.index))
        # The golden's rows were checked against vLLM's own logprobs (test_record_engine).
        for kind in (GENERATED, PROMPT):
            rows, expected = f.sequence_rows(kind, s.index), g.sequence_rows(kind, s.index)
            assert rows.shape == expected.shape
            if rows.size:  # a one-token prompt has no prompt rows
                assert np.abs(rows - expected).max() <= 1e-4


def test_an_interrupted_worker_recording_leaves_nothing(tiny_model, tmp_path):
    def interrupt(progress):
        if progress.positions >= 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        record(RecordConfig(model=str(tiny_model), prompts=PROMPTS, max_tokens=MAX_TOKENS, out=tmp_path,
                            engine=EngineOptions(max_model_len=256, tp=2)), progress=interrupt)
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_during_a_worker_recording_is_an_interrupt_and_leaves_nothing(tiny_model, tmp_path):
    # SIGINT reaches the whole process group, vLLM's workers included, as a terminal's Ctrl-C does.
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "parity.cli", "record", "--model", str(tiny_model), "--tp", "2", "--suite", "seed",
         "--max-tokens", "400", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, "PARITY_NO_PROGRESS": "1"})
    deadline = time.monotonic() + 240
    while not any(p.name.startswith(".parity-tmp-") for p in out.iterdir()):  # the writer is open: rows flow
        assert proc.poll() is None and time.monotonic() < deadline, "the recording ended before it could be interrupted"
        time.sleep(0.2)
    time.sleep(2)
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert "error: interrupted; nothing was published" in stderr.splitlines()
    assert list(out.iterdir()) == []

"""The row sink (wherever the sampler runs) and CPU thread binding: no engine needed."""

from __future__ import annotations

import numpy as np
import pytest

from parity.errors import UsageError
from parity.recorder import EngineOptions, get_profile
from parity.recorder.devices.cpu import THREADS_BIND, allowed_cpus, numa_nodes, threads_bind
from parity.recorder.sink import PROGRESS_FILE, RowSink, WriterSpec, read_progress
from parity.schemas import GENERATED, PROMPT, Device, Manifest, ModelRef, Request, SequenceInfo, Store


def _manifest(vocab: int, nan_rows: int) -> Manifest:
    return Manifest(
        request=Request(model=ModelRef(id="m"), prompts=((1, 2),), max_tokens=2, logprobs=-1, prompt_logprobs=True,
                        dtype="float32", max_model_len=16, seed=0),
        device=Device(kind="cpu"), vocab_size=vocab,
        sequences=(SequenceInfo(0, 2, 2, "error", nan_rows=nan_rows),), arrays={},
        created_at="t", tool_version="0",
    )


def test_sink_stores_nan_rows_and_counts_them(tmp_path):
    vocab = 8
    sink = RowSink(WriterSpec(out=str(tmp_path), vocab_size=vocab, topn=None, num_seqs=1, total=3))
    good = np.log(np.full(vocab, 1 / vocab, dtype=np.float32))
    bad = good.copy()
    bad[3] = np.nan
    masked = good.copy()
    masked[0] = -np.inf  # a ruled-out token is not a bad row
    sink.prompt(0, 0, np.stack([good]))
    sink.generated([(0, 0)], np.stack([masked]))
    sink.generated([(0, 1)], np.stack([bad]))
    stats = sink.stats()
    assert stats.nan_rows == [1] and stats.inf_rows == [0] and stats.positions == 3
    sink.generated([(0, 5)], np.stack([good]))  # out of order: flagged, not stored
    assert sink.stats().error and "position 5" in sink.stats().error
    path, m = sink.commit(_manifest(vocab, stats.nan_rows[0]), [[1, 2, 5, 6]])
    back = Store.open(path)
    assert back.manifest.nan_rows == 1 and back.manifest.sequences[0].finish_reason == "error"
    assert np.isnan(back.sequence_rows(GENERATED, 0)[1, 3])
    assert back.sequence_rows(PROMPT, 0).shape == (1, vocab)


def test_progress_file_reports_positions_and_is_not_published(tmp_path):
    vocab = 8
    sink = RowSink(WriterSpec(out=str(tmp_path), vocab_size=vocab, topn=None, num_seqs=1, total=3))
    path = sink.report_to_file()
    assert read_progress(path) == (0, 0)
    rows = np.log(np.full((1, vocab), 1 / vocab, dtype=np.float32))
    sink.prompt(0, 0, rows)
    sink.generated([(0, 0)], rows)
    sink.generated([(0, 1)], rows)  # the last position is always reported
    assert read_progress(path)[0] == 3
    store, _ = sink.commit(_manifest(vocab, 0), [[1, 2, 5, 6]])
    assert not (store / PROGRESS_FILE).exists()
    assert read_progress(tmp_path / "missing") is None


def test_aborted_sink_leaves_nothing(tmp_path):
    sink = RowSink(WriterSpec(out=str(tmp_path), vocab_size=4, topn=None, num_seqs=1, total=1))
    sink.report_to_file()
    sink.generated([(0, 0)], np.zeros((1, 4), np.float32))
    sink.abort()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("workers,cpus,nodes,expected", [
    (2, [0, 1], {0: [0, 1]}, "0|1"),                               # our CI hosts
    (2, [0, 1, 2, 3, 4], {0: [0, 1, 2, 3, 4]}, "0,1,2|3,4"),
    (4, [0, 1, 2, 3, 4, 5, 6, 7], {0: [0, 1, 2, 3], 1: [4, 5, 6, 7]}, "0,1|2,3|4,5|6,7"),
    (2, [0, 1, 2, 3], {0: [0, 1], 1: [2, 3]}, "auto"),              # one node each: vLLM's own binding works
    (2, [2, 3], {0: [0, 1], 1: [2, 3]}, "2|3"),                     # only one node is allowed to us
    (3, [0, 1], {0: [0, 1]}, "nobind"),                             # fewer CPUs than workers
])
def test_threads_are_bound_one_disjoint_group_per_worker(workers, cpus, nodes, expected):
    assert threads_bind(workers, cpus, nodes) == expected


def test_cpu_profile_binds_threads_only_for_several_workers(monkeypatch):
    monkeypatch.delenv(THREADS_BIND, raising=False)
    cpu = get_profile("cpu")
    assert THREADS_BIND not in cpu.environment(EngineOptions(), full_vocab=True)
    bound = cpu.environment(EngineOptions(tp=2), full_vocab=True)[THREADS_BIND]
    assert bound == threads_bind(2, allowed_cpus(), numa_nodes())
    monkeypatch.setenv(THREADS_BIND, "0-1|0-1")  # the user's own binding wins
    assert THREADS_BIND not in cpu.environment(EngineOptions(pp=2), full_vocab=True)


def test_ray_executor_on_cpu_is_refused_before_the_engine_starts():
    with pytest.raises(UsageError, match="Ray executor") as err:
        get_profile("cpu").validate(EngineOptions(tp=2, executor="ray"), None)
    assert "--distributed-executor-backend mp" in err.value.one_line()

"""The logits processor's row selection, driven the way vLLM's sampler drives it,
into the real row sink and store: no engine needed (vLLM's BatchUpdate and
SamplingParams are the real classes)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality

from parity.recorder import capture
from parity.recorder.capture import EXTRA_KEY, CaptureProcessor
from parity.recorder.sink import RowSink, WriterSpec
from parity.schemas import GENERATED, Device, Manifest, ModelRef, Request, SequenceInfo, Store

VOCAB = 50
STEPS = 3


def manifest(num_seqs: int) -> Manifest:
    return Manifest(
        request=Request(model=ModelRef(id="m"), prompts=tuple((1, 2) for _ in range(num_seqs)), max_tokens=STEPS,
                        logprobs=-1, prompt_logprobs=False, dtype="float32", max_model_len=16, seed=0),
        device=Device(kind="cpu"), vocab_size=VOCAB,
        sequences=tuple(SequenceInfo(i, 2, STEPS, "length") for i in range(num_seqs)), arrays={},
        created_at="t", tool_version="0",
    )


# batch index -> parity sequence (None: another request sharing the batch)
BATCHES = {
    "every-row": [0, 1, 2],
    "a-run-inside": [None, 1, 0],
    "with-gaps": [1, None, 0, None],
}


@pytest.mark.parametrize("batch", list(BATCHES.values()), ids=list(BATCHES))
def test_each_sequence_gets_the_log_softmax_of_its_own_row(tmp_path, monkeypatch, batch):
    seqs = [s for s in batch if s is not None]
    sink = RowSink(WriterSpec(out=str(tmp_path), vocab_size=VOCAB, topn=None, num_seqs=len(seqs),
                              total=len(seqs) * STEPS))
    monkeypatch.setattr(capture.STATE, "sink", sink)
    monkeypatch.setattr(capture.STATE, "forced", {})
    proc = CaptureProcessor(None, torch.device("cpu"), False)
    outputs = {i: [] for i in range(len(batch))}
    added = [(i, SamplingParams(extra_args={EXTRA_KEY: s} if s is not None else None), [1, 2], outputs[i])
             for i, s in enumerate(batch)]
    proc.update_state(BatchUpdate(batch_size=len(batch), removed=[], added=added, moved=[]))
    expected = {s: [] for s in seqs}
    gen = torch.Generator().manual_seed(7)
    for _ in range(STEPS):
        logits = torch.randn(len(batch), VOCAB, generator=gen) * 3
        want = torch.log_softmax(logits, dim=-1).numpy().copy()
        out = proc.apply(logits)
        for i, s in enumerate(batch):
            if s is not None:
                expected[s].append(want[i])
            outputs[i].append(int(out[i].argmax()))
    path, _ = sink.commit(manifest(len(seqs)), [[1, 2, *outputs[batch.index(s)]] for s in range(len(seqs))])
    store = Store.open(path)
    for s in seqs:
        np.testing.assert_array_equal(store.sequence_rows(GENERATED, s), np.stack(expected[s]))


def _aligned_sink(tmp_path, lengths: list[int], lanes: int) -> RowSink:
    """A sink with the aligned layout, as the recorder opens it for batched decoding."""
    return RowSink(WriterSpec(out=str(tmp_path), vocab_size=VOCAB, topn=None, num_seqs=len(lengths),
                              total=sum(lengths), reserve={GENERATED: lengths, "prompt": [0] * len(lengths)},
                              lanes=lanes))


def _spy_shard_writes(monkeypatch) -> list[tuple[int, int]]:
    """(first row, shard rows) of every shard write; a first row inside a shard is a zarr read-modify-write."""
    from parity.schemas import shards as store_module

    calls: list[tuple[int, int]] = []
    original = store_module._ShardFiles.write

    def write(self, first, block, shard_rows):
        calls.append((first, shard_rows))
        return original(self, first, block, shard_rows)

    monkeypatch.setattr(store_module._ShardFiles, "write", write)
    return calls


def _manifest_of(lengths: list[int]) -> Manifest:
    base = manifest(len(lengths))
    return Manifest(request=base.request, device=base.device, vocab_size=VOCAB,
                    sequences=tuple(SequenceInfo(i, 2, n, "length") for i, n in enumerate(lengths)), arrays={},
                    created_at="t", tool_version="0")


def test_a_paused_sequence_is_not_finished_and_no_shard_is_rewritten(tmp_path, monkeypatch):
    """vllm-rbln's scheduler takes the decode batch out on every prefill admission and puts it back later.

    Driven as its runner drives vLLM's InputBatch: the paused requests are
    "removed", then "added" again with the same params and the same output
    list. Each sequence must be finished once, when its planned rows are in,
    and every shard written whole, once.
    """
    lengths = [5, 3]
    sink = _aligned_sink(tmp_path, lengths, lanes=2)
    finished: list[int] = []
    original_finished = sink.finished
    monkeypatch.setattr(sink, "finished", lambda seq: (finished.append(seq), original_finished(seq)))
    writes = _spy_shard_writes(monkeypatch)
    monkeypatch.setattr(capture.STATE, "sink", sink)
    monkeypatch.setattr(capture.STATE, "forced", {})
    proc = CaptureProcessor(None, torch.device("cpu"), False)
    outputs = [[], []]
    params = [SamplingParams(max_tokens=n, extra_args={EXTRA_KEY: s}) for s, n in enumerate(lengths)]
    expected = {0: [], 1: []}
    gen = torch.Generator().manual_seed(3)

    def step(batch: list[int]) -> None:
        logits = torch.randn(len(batch), VOCAB, generator=gen)
        want = torch.log_softmax(logits, dim=-1).numpy().copy()
        out = proc.apply(logits)
        for i, s in enumerate(batch):
            expected[s].append(want[i])
            outputs[s].append(int(out[i].argmax()))

    both = [(i, params[s], [1, 2], outputs[s]) for i, s in enumerate([0, 1])]
    proc.update_state(BatchUpdate(batch_size=2, removed=[], added=both, moved=[]))
    step([0, 1])
    # A prefill admission: the decode batch leaves (a pause), then comes back.
    proc.update_state(BatchUpdate(batch_size=0, removed=[0, 1], added=[], moved=[]))
    proc.update_state(BatchUpdate(batch_size=2, removed=[], added=both, moved=[]))
    step([0, 1])
    proc.update_state(BatchUpdate(batch_size=0, removed=[1, 0], added=[], moved=[]))
    swapped = [(0, params[1], [1, 2], outputs[1]), (1, params[0], [1, 2], outputs[0])]
    proc.update_state(BatchUpdate(batch_size=2, removed=[], added=swapped, moved=[]))
    step([1, 0])
    assert len(outputs[1]) == lengths[1]
    proc.update_state(BatchUpdate(batch_size=1, removed=[0], added=[], moved=[]))  # seq 1 (index 0) is done
    proc.update_state(BatchUpdate(batch_size=1, removed=[], added=[], moved=[(1, 0, MoveDirectionality.UNIDIRECTIONAL)]))
    step([0])
    step([0])
    proc.update_state(BatchUpdate(batch_size=0, removed=[0], added=[], moved=[]))
    assert finished == [1, 0]  # each once, at its end (max_tokens reached), never at a pause
    assert writes and all(first % shard == 0 for first, shard in writes), writes
    path, _ = sink.commit(_manifest_of(lengths), [[1, 2, *outputs[s]] for s in range(2)])
    store = Store.open(path)
    for s in range(2):
        np.testing.assert_array_equal(store.sequence_rows(GENERATED, s), np.stack(expected[s]))
    assert store.verify().digest


def test_a_stop_token_ends_a_sequence_early(tmp_path, monkeypatch):
    sink = _aligned_sink(tmp_path, [4], lanes=1)
    finished: list[int] = []
    monkeypatch.setattr(sink, "finished", finished.append)
    monkeypatch.setattr(capture.STATE, "sink", sink)
    monkeypatch.setattr(capture.STATE, "forced", {})
    proc = CaptureProcessor(None, torch.device("cpu"), False)
    params = SamplingParams(max_tokens=4, stop_token_ids=[7], extra_args={EXTRA_KEY: 0})
    outputs: list[int] = [3]
    proc.update_state(BatchUpdate(batch_size=1, removed=[], added=[(0, params, [1], outputs)], moved=[]))
    proc.update_state(BatchUpdate(batch_size=0, removed=[0], added=[], moved=[]))
    assert finished == []  # left after token 3: a pause
    proc.update_state(BatchUpdate(batch_size=1, removed=[], added=[(0, params, [1], outputs)], moved=[]))
    outputs.append(7)
    proc.update_state(BatchUpdate(batch_size=0, removed=[0], added=[], moved=[]))
    assert finished == [0]
    sink.abort()


@pytest.mark.parametrize(("ignore_eos", "ends"), [(False, True), (True, False)])
def test_eos_ends_a_sequence_unless_eos_is_ignored(tmp_path, monkeypatch, ignore_eos, ends):
    """Forced runs ignore EOS: a golden's EOS mid-trajectory followed by a pause is no end."""
    sink = _aligned_sink(tmp_path, [4], lanes=1)
    finished: list[int] = []
    monkeypatch.setattr(sink, "finished", finished.append)
    monkeypatch.setattr(capture.STATE, "sink", sink)
    proc = CaptureProcessor(None, torch.device("cpu"), False)
    params = SamplingParams(max_tokens=4, ignore_eos=ignore_eos, extra_args={EXTRA_KEY: 0})
    params.update_from_generation_config({}, eos_token_id=2)  # as vLLM's input processor does
    outputs = [5, 2]
    proc.update_state(BatchUpdate(batch_size=1, removed=[], added=[(0, params, [1], outputs)], moved=[]))
    proc.update_state(BatchUpdate(batch_size=0, removed=[0], added=[], moved=[]))
    assert finished == ([0] if ends else [])
    sink.abort()


def test_forcing_leaves_only_the_golden_token_and_other_rows_untouched(monkeypatch):
    monkeypatch.setattr(capture.STATE, "sink", None)
    # Batch: parity seq 0, another request, parity seq 1 (its golden token's logit is -inf), seq 2 past its trajectory.
    monkeypatch.setattr(capture.STATE, "forced", {0: [11, 12], 1: [5], 2: [9]})
    proc = CaptureProcessor(None, torch.device("cpu"), False)
    outs = {0: [4], 2: [], 3: [9]}
    added = [(0, SamplingParams(extra_args={EXTRA_KEY: 0}), [1], outs[0]),
             (1, SamplingParams(), [1], []),
             (2, SamplingParams(extra_args={EXTRA_KEY: 1}), [1], outs[2]),
             (3, SamplingParams(extra_args={EXTRA_KEY: 2}), [1], outs[3])]
    proc.update_state(BatchUpdate(batch_size=4, removed=[], added=added, moved=[]))
    for _ in range(2):  # twice: the reused mask must be clean again
        logits = torch.randn(4, VOCAB, generator=torch.Generator().manual_seed(5))
        logits[2, 5] = float("-inf")
        before = logits.clone()
        proc.apply(logits)
        finite = torch.isfinite(logits)
        assert finite[0].nonzero().flatten().tolist() == [12] and logits[0, 12] == before[0, 12]
        assert finite[2].nonzero().flatten().tolist() == [5] and logits[2, 5] == 0.0
        assert torch.equal(logits[1], before[1]) and torch.equal(logits[3], before[3])


def test_reaching_the_model_length_ends_a_sequence(tmp_path, monkeypatch):
    from types import SimpleNamespace

    sink = _aligned_sink(tmp_path, [8], lanes=1)
    finished: list[int] = []
    monkeypatch.setattr(sink, "finished", finished.append)
    monkeypatch.setattr(capture.STATE, "sink", sink)
    config = SimpleNamespace(model_config=SimpleNamespace(max_model_len=5))
    proc = CaptureProcessor(config, torch.device("cpu"), False)
    params = SamplingParams(max_tokens=8, extra_args={EXTRA_KEY: 0})
    outputs = [5]
    added = [(0, params, [1, 2, 3], outputs)]
    proc.update_state(BatchUpdate(batch_size=1, removed=[], added=added, moved=[]))
    proc.update_state(BatchUpdate(batch_size=0, removed=[0], added=[], moved=[]))
    assert finished == []  # 3 + 1 tokens of 5: paused
    proc.update_state(BatchUpdate(batch_size=1, removed=[], added=added, moved=[]))
    outputs.append(6)
    proc.update_state(BatchUpdate(batch_size=0, removed=[0], added=[], moved=[]))
    assert finished == [0]  # 3 + 2 = max_model_len: vLLM capped it
    sink.abort()

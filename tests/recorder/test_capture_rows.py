"""The logits processor's row selection, driven the way vLLM's sampler drives it,
into the real row sink and store: no engine needed (vLLM's BatchUpdate and
SamplingParams are the real classes)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate

from recorder import capture
from recorder.capture import EXTRA_KEY, CaptureProcessor
from recorder.sink import RowSink, WriterSpec
from schemas import GENERATED, Device, Manifest, ModelRef, Request, SequenceInfo, Store

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

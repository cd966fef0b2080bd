"""The CPU recorder against the real vLLM engine (in-process, tiny local model)."""

from __future__ import annotations

import numpy as np
import pytest

from parity.recorder import EngineOptions, RecordConfig, record
from parity.schemas import GENERATED, PROMPT, Store
from tests.conftest import ENGINE_MAX_TOKENS, ENGINE_PROMPTS

pytestmark = pytest.mark.engine


def _logsumexp(rows: np.ndarray) -> np.ndarray:
    rows = rows.astype(np.float64)
    m = rows.max(axis=1, keepdims=True)
    return (m + np.log(np.exp(rows - m).sum(axis=1, keepdims=True)))[:, 0]


def test_golden_holds_every_position_as_normalised_rows(golden, tiny_model):
    store = Store.open(golden.path)
    m = store.manifest
    assert m.request.full_vocab and m.request.prompt_logprobs
    assert m.run["capture"] == "tensor" and m.run["prompt_capture"] == "tensor"
    assert len(m.sequences) == len(ENGINE_PROMPTS)
    for s in m.sequences:
        gen = store.sequence_rows(GENERATED, s.index)
        prompt = store.sequence_rows(PROMPT, s.index)
        assert gen.shape == (s.generated_len, m.vocab_size)
        assert prompt.shape == (s.prompt_len - 1, m.vocab_size)
        assert 1 <= s.generated_len <= ENGINE_MAX_TOKENS
        # Log-probabilities: each row's probabilities sum to one.
        np.testing.assert_allclose(_logsumexp(gen), 0.0, atol=1e-4)
        np.testing.assert_allclose(_logsumexp(prompt), 0.0, atol=1e-4)
        # Greedy decoding: each generated token is the argmax of the row that produced it.
        tokens = store.tokens(s.index)
        assert list(gen.argmax(axis=1)) == list(tokens[s.prompt_len:])
    assert store.verify().digest == m.digest


def test_tensor_capture_matches_the_engines_own_logprobs(golden, tiny_model, engine_options, tmp_path):
    public = record(RecordConfig(model=str(tiny_model), prompts=ENGINE_PROMPTS[:2], max_tokens=6,
                                 out=tmp_path, engine=engine_options, capture="public"))
    ref = Store.open(public.path)
    cap = Store.open(golden.path)
    assert ref.manifest.run["capture"] == "public"
    for s in ref.manifest.sequences:
        n = s.generated_len
        assert list(ref.tokens(s.index)) == list(cap.tokens(s.index))[: s.prompt_len + n]
        gen_diff = np.abs(ref.sequence_rows(GENERATED, s.index) - cap.sequence_rows(GENERATED, s.index)[:n])
        prompt_diff = np.abs(ref.sequence_rows(PROMPT, s.index) - cap.sequence_rows(PROMPT, s.index))
        assert gen_diff.max() <= 1e-5
        assert prompt_diff.max() <= 1e-5


def test_batched_recording_reorders_interleaved_rows_by_sequence(golden, tiny_model, tmp_path):
    # Five prompts of different lengths through two slots: requests are added,
    # removed and moved within the persistent batch while rows are captured.
    prompts = ENGINE_PROMPTS + ["In the beginning the tokens were few"]
    batched = record(RecordConfig(model=str(tiny_model), prompts=prompts, max_tokens=ENGINE_MAX_TOKENS,
                                  out=tmp_path, engine=EngineOptions(max_model_len=256, batch=2)))
    b = Store.open(batched.path)
    g = Store.open(golden.path)
    assert b.manifest.device.engine_args["max_num_seqs"] == 2
    for s in g.manifest.sequences:
        assert list(b.tokens(s.index)) == list(g.tokens(s.index))
        np.testing.assert_allclose(b.sequence_rows(GENERATED, s.index), g.sequence_rows(GENERATED, s.index), atol=1e-4)
        np.testing.assert_allclose(b.sequence_rows(PROMPT, s.index), g.sequence_rows(PROMPT, s.index), atol=1e-4)
    assert b.verify()


def test_top_n_mode_stores_the_n_best_ids_and_values(golden, tiny_model, engine_options, tmp_path):
    top = record(RecordConfig(model=str(tiny_model), prompts=ENGINE_PROMPTS[:2], max_tokens=6, logprobs=5,
                              out=tmp_path, engine=engine_options))
    t = Store.open(top.path)
    g = Store.open(golden.path)
    assert t.manifest.request.logprobs == 5
    for s in t.manifest.sequences:
        full = g.sequence_rows(GENERATED, s.index)[: s.generated_len]
        ids = t.sequence_rows(GENERATED, s.index, ids=True)
        values = t.sequence_rows(GENERATED, s.index)
        expected_ids = np.argsort(-full, axis=1, kind="stable")[:, :5]
        assert ids.shape == (s.generated_len, 5)
        np.testing.assert_array_equal(ids[:, 0], expected_ids[:, 0])
        np.testing.assert_allclose(values, np.take_along_axis(full, ids.astype(np.int64), axis=1), atol=1e-5)
        assert np.all(np.diff(values, axis=1) <= 0)


def test_forced_recording_follows_the_golden_and_keeps_its_own_distribution(golden, perturbed_model, engine_options, tmp_path):
    g = Store.open(golden.path)
    forced = record(RecordConfig(model=str(perturbed_model), golden=golden.path, out=tmp_path / "forced",
                                 engine=engine_options))
    f = Store.open(forced.path)
    assert f.manifest.run["forced"] is True and f.manifest.run["golden"] == g.manifest.digest
    assert f.manifest.request.prompts == g.manifest.request.prompts
    # Independent reference: the perturbed model scores the golden's full
    # sequences through vLLM's public prompt-logprobs path (teacher forcing).
    full_sequences = [[int(x) for x in g.tokens(s.index)[:-1]] for s in g.manifest.sequences]
    teacher = record(RecordConfig(model=str(perturbed_model), prompt_token_ids=full_sequences, max_tokens=1,
                                  out=tmp_path / "teacher", engine=engine_options, capture="public"))
    t = Store.open(teacher.path)
    disagreements = 0
    for s in g.manifest.sequences:
        assert list(f.tokens(s.index)) == list(g.tokens(s.index))
        forced_rows = f.sequence_rows(GENERATED, s.index)
        assert forced_rows.shape[0] == s.generated_len
        # Prompt row i predicts token i+1, so rows from prompt_len-1 on score the
        # golden's generated tokens; the last one is the teacher's first decode step.
        teacher_rows = np.concatenate([t.sequence_rows(PROMPT, s.index)[s.prompt_len - 1 :],
                                       t.sequence_rows(GENERATED, s.index)[:1]])
        assert teacher_rows.shape == forced_rows.shape
        assert np.abs(forced_rows - teacher_rows).max() <= 1e-4
        assert np.isfinite(forced_rows).all()  # the model's own rows, not the forcing mask
        disagreements += int((forced_rows.argmax(1) != g.sequence_rows(GENERATED, s.index).argmax(1)).sum())
    # The perturbation is large enough that free-running would have diverged somewhere.
    assert disagreements > 0


def test_interrupted_recording_leaves_nothing_that_looks_complete(tiny_model, engine_options, tmp_path):
    def interrupt(progress):
        if progress.positions >= 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        record(RecordConfig(model=str(tiny_model), prompts=ENGINE_PROMPTS[:2], max_tokens=8, out=tmp_path,
                            engine=engine_options), progress=interrupt)
    assert list(tmp_path.iterdir()) == []
    again = record(RecordConfig(model=str(tiny_model), prompts=ENGINE_PROMPTS[:2], max_tokens=8, out=tmp_path,
                                engine=engine_options))
    assert [p.name for p in tmp_path.iterdir()] == [again.path.name]


def test_hf_reference_device_agrees_with_the_cpu_golden(golden, tiny_model, engine_options, tmp_path):
    # transformers eager float32 on the golden's trajectory: an independent check of the golden itself.
    ref = record(RecordConfig(model=str(tiny_model), device="hf", golden=golden.path, out=tmp_path,
                              engine=engine_options))
    h = Store.open(ref.path)
    g = Store.open(golden.path)
    assert h.manifest.device.kind == "hf" and h.manifest.run["capture"] == "hf"
    for s in g.manifest.sequences:
        assert list(h.tokens(s.index)) == list(g.tokens(s.index))
        assert np.abs(h.sequence_rows(GENERATED, s.index) - g.sequence_rows(GENERATED, s.index)).max() <= 1e-3
        if s.prompt_len > 1:
            assert np.abs(h.sequence_rows(PROMPT, s.index) - g.sequence_rows(PROMPT, s.index)).max() <= 1e-3
    assert h.manifest.prompt_positions == g.manifest.prompt_positions > 0
    assert h.verify()

"""Our capture processor inside vllm-rbln 0.12's real RBLNSampler, on CPU.

The plugin's sampler code, its logits-processor set, its runner's padding
helpers and vLLM 0.30's persistent ``InputBatch`` (which produces the
``BatchUpdate`` seen by every logits processor) are the real ones; only the
NPU compiler is stood in for (``tests/support/rbln_standin/``: its compile backend
runs the traced graph as is, and ``rbln::argmax`` is ``argmax(-1)``). Logits
are what the plugin hands the sampler on decode: model dtype (bf16), one row
per decode-bucket slot, rows past the live requests being padding.

Needs vLLM 0.30.x (what vllm-rbln 0.12 pins) and vllm-rbln 0.12.0's code in
a plain directory (not installed: its entry points would make vLLM load the
rbln platform); ``make test-vllm030`` sets both up in ``.venv-vllm030`` and
runs this with PARITY_REQUIRE_RBLN=1, which turns the skip into a
failure.
"""

from __future__ import annotations

import ast
import os
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from tests.support import rbln_standin

pytestmark = pytest.mark.rbln_sampler

BUCKET = 4
VOCAB = 3001  # not a multiple of any SIMD width
MAX_MODEL_LEN = 64


rbln_standin.skip_or_fail(rbln_standin.unavailable())
PLUGIN_DIR = rbln_standin.plugin_dir()


def _runner_helpers(namespace: dict) -> SimpleNamespace:
    """The plugin runner's own padding functions, taken from its source.

    Importing ``rbln_model_runner`` needs far more of the NPU toolchain than
    the sampler does (attention kernels, ``rebel.triton``), so the three small
    functions its ``_sample`` wraps the sampler call in are compiled from the
    plugin's file instead of being rewritten here.
    """
    path = PLUGIN_DIR / "vllm_rbln" / "v1" / "worker" / "rbln_model_runner.py"
    tree = ast.parse(path.read_text(), filename=str(path))
    wanted = {"_pad_rows", "_pad_sampling_metadata", "_depad_sampler_output"}
    nodes = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in wanted]
    assert {n.name for n in nodes} == wanted, f"{path} no longer defines {sorted(wanted)}"
    exec(compile(ast.Module(body=nodes, type_ignores=[]), str(path), "exec"), namespace)
    return SimpleNamespace(**{name: namespace[name] for name in wanted})


@pytest.fixture(scope="module")
def rbln():
    """Stand-in compiler, plugin on sys.path, then the real modules. Undone (as far as possible) afterwards."""
    import logging

    from tests.support import rbln_standin

    saved_env = {k: os.environ.get(k) for k in ("VLLM_PLUGINS", "TORCH_DEVICE_BACKEND_AUTOLOAD")}
    rbln_standin.install()  # before anything below imports vLLM or torch
    sys.path.insert(0, str(PLUGIN_DIR))
    try:
        import dataclasses

        import torch
        from vllm.config import VllmConfig
        from vllm.platforms import current_platform
        from vllm.sampling_params import SamplingParams
        from vllm.v1.outputs import LogprobsTensors, SamplerOutput
        from vllm.v1.sample.metadata import SamplingMetadata
        from vllm.v1.worker.gpu_input_batch import CachedRequestState, InputBatch
        from vllm_rbln.v1.sample.rbln_logits_processor import build_rbln_logitsprocs
        from vllm_rbln.v1.sample.rbln_sampler import RBLNSampler

        from parity.recorder import capture

        # torch's structured-trace logger (meant not to propagate) would flood pytest's failure reports.
        logging.getLogger("torch.__trace").propagate = False
        # VLLM_PLUGINS=none kept the plugin's platform out even though its entry points are on sys.path.
        assert current_platform.device_type == "cpu", current_platform
        helpers = _runner_helpers({"dataclasses": dataclasses, "torch": torch, "SamplingMetadata": SamplingMetadata,
                                   "SamplerOutput": SamplerOutput, "LogprobsTensors": LogprobsTensors})
        yield SimpleNamespace(torch=torch, VllmConfig=VllmConfig, SamplingParams=SamplingParams,
                              CachedRequestState=CachedRequestState, InputBatch=InputBatch,
                              build_rbln_logitsprocs=build_rbln_logitsprocs, RBLNSampler=RBLNSampler,
                              capture=capture, standin=rbln_standin, **vars(helpers))
    finally:
        sys.path.remove(str(PLUGIN_DIR))
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class RecordingSink:
    """What the recorder's sink receives, kept per (sequence, position)."""

    def __init__(self):
        self.rows: dict[tuple[int, int], np.ndarray] = {}
        self.calls: list[list[tuple[int, int]]] = []
        self.finished_seqs: list[int] = []

    def generated(self, entries, values, ids):
        assert ids is None  # full vocabulary
        assert values.dtype == np.float32 and values.shape == (len(entries), VOCAB)
        self.calls.append(list(entries))
        for k, key in enumerate(entries):
            assert key not in self.rows, f"position captured twice: {key}"
            self.rows[key] = values[k].copy()

    def finished(self, seq):
        self.finished_seqs.append(seq)

    def prompt(self, seq, start, rows, ids=None):  # prompt positions never reach a logits processor
        raise AssertionError("prompt rows from a logits processor")


def _step_logits(torch, seq: int, step: int) -> np.ndarray:
    """The "model's" logits for one sequence at one step: distinct per (seq, step), bf16-representable."""
    g = np.random.default_rng(1000 * seq + step)
    row = g.normal(0.0, 3.0, VOCAB).astype(np.float32)
    row[g.integers(VOCAB)] += 12.0  # a clear argmax, as a trained model usually has
    return torch.from_numpy(row).to(torch.bfloat16).float().numpy()


class Harness:
    """A persistent batch, the plugin's processors and sampler, driven like the plugin runner's ``_sample``."""

    def __init__(self, rbln, logprobs: int | None = -1):
        t = rbln.torch
        self.rbln, self.t, self.logprobs = rbln, t, logprobs
        config = rbln.VllmConfig()
        device = t.device("cpu")
        self.procs = rbln.build_rbln_logitsprocs(config, device, False, False, [rbln.capture.CaptureProcessor])
        self.capture_proc = next(p for p in self.procs.all if isinstance(p, rbln.capture.CaptureProcessor))
        self.batch = rbln.InputBatch(
            max_num_reqs=BUCKET, max_model_len=MAX_MODEL_LEN, max_num_batched_tokens=MAX_MODEL_LEN,
            device=device, vocab_size=VOCAB, block_sizes=[16], kernel_block_sizes=[16],
            max_num_blocks_per_req=[MAX_MODEL_LEN // 16], logitsprocs=self.procs,
            logitsprocs_need_output_token_ids=True)
        self.sampler = rbln.RBLNSampler(logprobs_mode="raw_logprobs")
        self.requests: dict[int, object] = {}  # seq -> CachedRequestState
        self.step = 0

    def add(self, seq: int, extra: bool = True, max_tokens: int = 32) -> None:
        params = self.rbln.SamplingParams(temperature=0.0, max_tokens=max_tokens, logprobs=self.logprobs,
                                          extra_args={self.rbln.capture.EXTRA_KEY: seq} if extra else None)
        req = self.rbln.CachedRequestState(
            req_id=f"req-{seq}", prompt_token_ids=[1, 2, 3], mm_features=[], sampling_params=params, generator=None,
            block_ids=([0],), num_computed_tokens=3, output_token_ids=[])
        self.requests[seq] = req
        self.batch.add_request(req)

    def remove(self, seq: int) -> None:
        self.batch.remove_request(f"req-{seq}")
        del self.requests[seq]

    def order(self) -> list[int]:
        """Sequence of each live batch row."""
        return [int(r.split("-")[1]) for r in self.batch.req_ids]

    def run_step(self, tweak=None):
        """One decode step: bucket-padded bf16 logits through the sampler; returns what the runner would keep."""
        t = self.t
        self.batch.condense()
        self.batch.refresh_metadata()
        order = self.order()
        positions = [len(self.requests[seq].output_token_ids) for seq in order]
        live = np.stack([_step_logits(t, seq, pos) for seq, pos in zip(order, positions)])
        padding = np.random.default_rng(99 + self.step).normal(0.0, 50.0, (BUCKET - len(order), VOCAB))
        logits = t.from_numpy(np.concatenate([live, padding]).astype(np.float32)).to(t.bfloat16)
        if tweak is not None:
            tweak(logits, order)
        model_logits = logits.clone()
        md = self.rbln._pad_sampling_metadata(self.batch.sampling_metadata, logits.shape[0])
        out = self.rbln._depad_sampler_output(self.sampler(logits=logits, sampling_metadata=md), len(order))
        sampled = out.sampled_token_ids[:, 0].tolist()
        for seq, token in zip(order, sampled):
            self.requests[seq].output_token_ids.append(int(token))
        self.step += 1
        return SimpleNamespace(order=order, positions=positions, model_logits=model_logits, sampled=sampled, out=out)


def _log_softmax64(row) -> np.ndarray:
    x = np.asarray(row, dtype=np.float64)
    m = x.max()
    return x - (m + np.log(np.exp(x - m).sum()))


def _returned_rows(t, out) -> np.ndarray:
    """Dense rows back from the sampler's logprobs output (logprobs=-1: column 0 the sampled token, then all ids)."""
    lp = out.out.logprobs_tensors
    ids, values = lp.logprob_token_ids[:, 1:].long(), lp.logprobs[:, 1:]
    dense = t.full((ids.shape[0], VOCAB), float("nan"))
    return dense.scatter_(1, ids, values).numpy()


@pytest.fixture
def state(rbln):
    sink = RecordingSink()
    st = rbln.capture.STATE
    st.sink, st.forced, st.topn = sink, {}, None
    yield sink
    st.sink, st.forced, st.topn = None, {}, None


def test_captured_rows_are_the_live_rows_log_softmax_and_equal_the_samplers_raw_logprobs(rbln, state):
    h = Harness(rbln)
    for seq in (2, 0, 1):  # batch rows 0, 1, 2 hold sequences 2, 0, 1; row 3 is padding
        h.add(seq)
    steps = [h.run_step(), h.run_step()]
    assert steps[0].order == [2, 0, 1]
    # The plugin's compiled greedy path ran (through the stand-in backend) and sampled every live row.
    assert any("rbln.argmax" in str(g.code) for g in rbln.standin.COMPILED_GRAPHS)
    for s in steps:
        rows = [state.rows[key] for key in zip(s.order, s.positions)]
        model = s.model_logits.float().numpy()
        # (a) float32 log_softmax of the bf16 logits of exactly the live rows, each under its own sequence.
        for k, seq in enumerate(s.order):
            np.testing.assert_allclose(rows[k], _log_softmax64(model[k]), rtol=0, atol=2e-5)
            assert s.sampled[k] == int(model[k].argmax())
        # (b) bit for bit what the sampler returns as raw logprobs for those rows.
        np.testing.assert_array_equal(np.stack(rows), _returned_rows(rbln.torch, s))
        assert s.out.logprobs_tensors.logprobs.shape[0] == len(s.order)
    # Nothing else reached the sink: padding rows never, each live row once per step.
    assert state.calls == [[(2, 0), (0, 0), (1, 0)], [(2, 1), (0, 1), (1, 1)]]
    assert len(state.rows) == 6


def test_forced_token_is_sampled_through_the_plugins_argmax_while_the_row_stays_the_models(rbln, state):
    h = Harness(rbln)
    for seq in (1, 0, 2):
        h.add(seq)
    # Trajectories of each sequence's least likely token; sequence 2 runs free.
    forced = {seq: [int(_step_logits(rbln.torch, seq, k).argmin()) for k in range(3)] for seq in (0, 1)}
    rbln.capture.STATE.forced = forced
    for _ in range(3):
        s = h.run_step()
        model = s.model_logits.float().numpy()
        for k, (seq, step) in enumerate(zip(s.order, s.positions)):
            row = state.rows[(seq, step)]
            # (c) the model's own distribution is recorded, not the forcing mask ...
            np.testing.assert_allclose(row, _log_softmax64(model[k]), rtol=0, atol=2e-5)
            assert np.isfinite(row).all()
            if seq in forced:
                # ... while the token sampled (rbln::argmax over the forced logits) is the golden's.
                assert s.sampled[k] == forced[seq][step] != int(row.argmax())
            else:
                assert s.sampled[k] == int(row.argmax())
        # The sampler's raw logprobs are computed before the processors run: unforced too.
        np.testing.assert_array_equal(np.stack([state.rows[key] for key in zip(s.order, s.positions)]),
                                      _returned_rows(rbln.torch, s))
    assert [h.requests[seq].output_token_ids for seq in (0, 1)] == [forced[0], forced[1]]


def _leave_and_move_scenario(h, max_tokens: dict[int, int] | None = None) -> list:
    """Requests leave, join and swap in the persistent batch, as vLLM's runner does it (condense, swap)."""
    max_tokens = max_tokens or {}
    for seq in (0, 1, 2):
        h.add(seq, max_tokens=max_tokens.get(seq, 32))
    h.add(9, extra=False)  # a request that is not ours fills the last bucket slot
    steps = [h.run_step()]
    # Sequence 0 leaves: vLLM moves the last row (request 9) into its slot.
    h.remove(0)
    steps.append(h.run_step())
    # A new sequence takes a freed slot while two rows swap.
    h.remove(1)
    h.add(3, max_tokens=max_tokens.get(3, 32))
    h.batch.condense()
    h.batch.swap_states(0, 2)
    steps.append(h.run_step())
    # Sequences 2 and 3 leave together: 9 moves down, three padding rows follow.
    h.remove(2)
    h.remove(3)
    steps.append(h.run_step())
    h.add(4, max_tokens=max_tokens.get(4, 32))
    steps.append(h.run_step())
    return steps


def test_rows_stay_with_their_sequence_when_requests_leave_and_rows_move(rbln, state):
    h = Harness(rbln, logprobs=None)  # as the recorder asks: no public logprobs
    steps = _leave_and_move_scenario(h)
    assert [s.order for s in steps] == [[0, 1, 2, 9], [9, 1, 2], [2, 3, 9], [9], [9, 4]]
    assert all(s.out.logprobs_tensors is None for s in steps)
    # (d) each step hands the sink exactly its parity rows, in batch order, at their positions ...
    expected = [[(0, 0), (1, 0), (2, 0)], [(1, 1), (2, 1)], [(2, 2), (3, 0)], [], [(4, 0)]]
    assert state.calls == [c for c in expected if c]
    # ... and every captured row is its own sequence's logits at its own step.
    for (seq, position), row in state.rows.items():
        np.testing.assert_allclose(row, _log_softmax64(_step_logits(rbln.torch, seq, position)), rtol=0, atol=2e-5)
    assert sorted(state.rows) == sorted(k for c in expected for k in c)
    # Trajectories follow the batch too: the sampled tokens are each row's own argmax.
    for s in steps:
        assert s.sampled == [int(_step_logits(rbln.torch, q, p).argmax()) for q, p in zip(s.order, s.positions)]


def test_a_sequence_is_reported_finished_when_it_ends_not_whenever_it_leaves_the_batch(rbln, state):
    # A request leaves vLLM's persistent batch when it ends and also when the
    # plugin's scheduler pauses it (every prefill admission takes the decode batch
    # out); BatchUpdate says neither, and drops a removed index from "removed"
    # when condense() moves a row into it or add_request() reuses it. Sequences 0
    # and 2 leave having produced all their tokens (max_tokens 1 and 3): ended.
    # Sequences 1 and 3 leave after 2 and 1 of their 32: paused, their rows kept.
    _leave_and_move_scenario(Harness(rbln, logprobs=None), max_tokens={0: 1, 2: 3})
    assert sorted(state.finished_seqs) == [0, 2]


def test_nan_logits_are_captured_as_nan_and_forcing_still_holds(rbln, state):
    h = Harness(rbln)
    for seq in (0, 1, 2):
        h.add(seq)
    rbln.capture.STATE.forced = {1: [7, 8]}

    def poison(logits, order):  # one NaN in sequence 0's row, sequence 1's row all NaN
        logits[order.index(0), 5] = float("nan")
        logits[order.index(1)] = float("nan")

    s = h.run_step(poison)
    # (e) captured as NaN (the recorder counts NaN rows), not dropped and not crashing.
    assert np.isnan(state.rows[(0, 0)]).all() and np.isnan(state.rows[(1, 0)]).all()
    np.testing.assert_allclose(state.rows[(2, 0)], _log_softmax64(s.model_logits[2].float().numpy()), rtol=0, atol=2e-5)
    np.testing.assert_array_equal(np.stack([state.rows[(q, 0)] for q in s.order]), _returned_rows(rbln.torch, s))
    assert s.sampled[s.order.index(1)] == 7  # the forced token even where the model's row is NaN
    s2 = h.run_step()
    assert s2.sampled[s2.order.index(1)] == 8 and np.isfinite(state.rows[(1, 1)]).all()

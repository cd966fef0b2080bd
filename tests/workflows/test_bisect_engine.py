"""Goldens at several depths and `parity bisect`, through the real vLLM CPU engine.

The model is a tiny 4-layer Llama built here; the "drifting device" is the same
model with one layer's weights perturbed, recorded on the CPU too, so the depth
bisect must name is known: the perturbed layer's index + 1.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from parity.recorder import EngineOptions, RecordConfig
from parity.workflows.bisect import bisect
from parity.recorder.depths import record_depths
from parity.recorder.plan import plan_recording
from parity.schemas import GENERATED, PROMPT, Store

pytestmark = pytest.mark.engine

LAYERS = 4
DRIFT_LAYER = 2  # 0-based: depths 1-2 match the golden, 3 and 4 do not
PROMPTS = ["The capital of France is", "Once upon a time"]
MAX_TOKENS = 6


@pytest.fixture(scope="module")
def deep_model(tmp_path_factory):
    from parity.recorder.tinymodel import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "deep", num_layers=LAYERS)


@pytest.fixture(scope="module")
def drifting_model(deep_model, tmp_path_factory):
    """deep_model with layer DRIFT_LAYER's matrices perturbed by 30% of their mean magnitude."""
    from parity.recorder.tinymodel import perturb_layer

    return perturb_layer(deep_model, tmp_path_factory.mktemp("models") / "drifting", DRIFT_LAYER)


def _cfg(model, out, **kw) -> RecordConfig:
    return RecordConfig(model=str(model), prompts=PROMPTS, max_tokens=MAX_TOKENS, out=out,
                        engine=EngineOptions(max_model_len=256), **kw)


@pytest.fixture(scope="module")
def depth_goldens(deep_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("goldens")
    recs = record_depths(_cfg(deep_model, out), "every")
    return out, recs


def test_goldens_at_every_depth_are_normal_stores_keyed_by_depth(depth_goldens, deep_model):
    out, recs = depth_goldens
    assert [r.depth for r in recs] == [1, 2, 3, 4] and not any(r.reused for r in recs)
    keys = set()
    for r in recs:
        store = Store.open(r.path)
        m = store.verify()
        assert m.request.num_hidden_layers == (r.depth if r.depth < LAYERS else None)
        assert m.generated_positions == len(PROMPTS) * MAX_TOKENS and m.prompt_positions > 0
        depth = m.run["depth"]
        if r.depth < LAYERS:
            assert depth["num_hidden_layers"] == r.depth and depth["of"] == LAYERS
            assert depth["mechanism"] == "checkpoint"
        else:
            assert depth is None
        keys.add(m.request_key)
    assert len(keys) == LAYERS
    # The full depth is the ordinary golden: the same request key as a recording without the option.
    plain = plan_recording(_cfg(deep_model, out), check_out=False).request.key()
    assert recs[-1].manifest.request_key == plain
    # Asked again, every depth is found in the output directory instead of recorded.
    again = record_depths(_cfg(deep_model, out), "1,all")
    assert [(a.depth, a.reused, a.path) for a in again] == [(1, True, recs[0].path), (4, True, recs[-1].path)]


@pytest.mark.parametrize("depth", [1, 2])
def test_a_cut_recording_equals_transformers_own_cut_of_the_model(depth_goldens, deep_model, depth):
    """vLLM on the derived checkpoint against transformers' num_hidden_layers override of the original."""
    import torch
    from transformers import AutoModelForCausalLM

    store = Store.open(depth_goldens[1][depth - 1].path)
    full = Store.open(depth_goldens[1][-1].path)
    model = AutoModelForCausalLM.from_pretrained(deep_model, dtype=torch.float32, num_hidden_layers=depth)
    for s in store.manifest.sequences:
        tokens = torch.tensor([list(store.tokens(s.index))])
        with torch.no_grad():
            want = model(tokens).logits[0].log_softmax(-1).numpy()
        gen = store.sequence_rows(GENERATED, s.index)
        prompt = store.sequence_rows(PROMPT, s.index)
        assert np.abs(gen - want[s.prompt_len - 1:s.prompt_len - 1 + len(gen)]).max() <= 1e-3
        assert np.abs(prompt - want[: s.prompt_len - 1]).max() <= 1e-3
        assert np.abs(gen - full.sequence_rows(GENERATED, s.index)).max() > 0.05  # a cut model: other rows


def test_bisect_names_the_depth_after_the_perturbed_layer_and_resumes(depth_goldens, drifting_model, tmp_path):
    goldens_dir = depth_goldens[0]
    cands = tmp_path / "candidates"
    result = bisect(_cfg(drifting_model, cands), [str(goldens_dir)])
    assert result.first_drift_depth == DRIFT_LAYER + 1
    assert result.recordings <= 3 and result.reused == 0  # 1 + ceil(log2 4) at most
    by_depth = {r.depth: r for r in result.results}
    assert by_depth[LAYERS].verdict == "fail" and by_depth[DRIFT_LAYER + 1].verdict == "fail"
    for d, r in by_depth.items():
        if d <= DRIFT_LAYER:
            assert r.verdict == "pass" and r.kl["max"] <= 1e-6  # the same layers: the same numbers
        assert r.golden.digest == depth_goldens[1][d - 1].manifest.digest
        cand = Store.open(r.candidate.path).manifest
        assert cand.run["golden"] == r.golden.digest and cand.request.num_hidden_layers == (d if d < LAYERS else None)
    doc = json.loads(result.to_json())
    assert doc["schema"] == "parity.bisect/1" and doc["first_drift_depth"] == DRIFT_LAYER + 1
    assert [d["num_hidden_layers"] for d in doc["depths"]] == sorted(by_depth)
    assert set(doc["depths"][0]) >= {"num_hidden_layers", "verdict", "kl", "top1_agreement", "golden", "candidate"}
    assert doc["thresholds"]["max_kl"] == 1e-4  # the fp32 preset, for a float32 golden

    # Run again: every probe is found in the output directory; lose one and only it is recorded.
    again = bisect(_cfg(drifting_model, cands), [str(goldens_dir)])
    assert (again.first_drift_depth, again.recordings, again.reused) == (DRIFT_LAYER + 1, 0, len(result.results))
    shutil.rmtree(by_depth[LAYERS].candidate.path)
    resumed = bisect(_cfg(drifting_model, cands), [str(goldens_dir)])
    assert (resumed.recordings, resumed.first_drift_depth) == (1, DRIFT_LAYER + 1)


def test_bisect_of_a_faithful_device_stops_after_the_full_depth(depth_goldens, deep_model, tmp_path):
    result = bisect(_cfg(deep_model, tmp_path), [str(depth_goldens[0])])
    assert result.first_drift_depth is None and result.exit_code == 0
    assert [r.depth for r in result.results] == [LAYERS] and result.results[0].verdict == "pass"


def test_bisect_command_sweeps_on_the_hf_device(depth_goldens, drifting_model, tmp_path):
    """The CLI end to end; the candidate device is transformers (no engine start per depth)."""
    json_path, html_path = tmp_path / "b.json", tmp_path / "b.html"
    proc = subprocess.run(
        [sys.executable, "-m", "parity.cli", "bisect", "--device", "hf", "--model", str(drifting_model),
         "--golden", str(depth_goldens[0]), "--sweep", "--out", str(tmp_path / "c"), "--max-model-len", "256",
         "--json", str(json_path), "--html", str(html_path), "--no-color"],
        capture_output=True, text=True, timeout=900)
    assert proc.returncode == 1, proc.stderr[-2000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith(f"first drift at depth {DRIFT_LAYER + 1} of {LAYERS}")
    doc = json.loads(json_path.read_text())
    assert doc["mode"] == "sweep" and [d["verdict"] for d in doc["depths"]] == ["pass", "pass", "fail", "fail"]
    page = html_path.read_text()
    assert page.count("<circle") == 3 * LAYERS and "first drift" in page and "http" not in page.replace(
        "http://www.w3.org/2000/svg", "")


def test_a_qwen2_model_with_tied_embeddings_and_layer_types_is_cut_too(deep_model, tmp_path):
    """The issue's second architecture: per-layer `layer_types` and no lm_head tensor of its own."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from parity.recorder import record

    qwen = tmp_path / "qwen2"
    config = Qwen2Config(vocab_size=4096, hidden_size=128, intermediate_size=256, num_hidden_layers=3,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=64, max_position_embeddings=512,
                         tie_word_embeddings=True, torch_dtype="float32")
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(qwen, safe_serialization=True)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(deep_model / f, qwen / f)
    result = record(RecordConfig(model=str(qwen), prompts=PROMPTS[:1], max_tokens=4, out=tmp_path / "s",
                                 engine=EngineOptions(max_model_len=256, num_hidden_layers=1)))
    store = Store.open(result.path)
    assert store.manifest.request.num_hidden_layers == 1
    cut = AutoModelForCausalLM.from_pretrained(qwen, dtype=torch.float32, num_hidden_layers=1)
    s = store.manifest.sequences[0]
    with torch.no_grad():
        want = cut(torch.tensor([list(store.tokens(0))])).logits[0].log_softmax(-1).numpy()
    gen = store.sequence_rows(GENERATED, 0)
    assert np.abs(gen - want[s.prompt_len - 1:s.prompt_len - 1 + len(gen)]).max() <= 1e-3


def test_bisect_judges_each_depth_against_its_floor(deep_model, drifting_model, tmp_path):
    """``record --depths ... --floor bf16`` gives every depth golden its floor; bisect of a bfloat16
    device then judges each probe against its depth's floor, untold (no preset)."""
    goldens = tmp_path / "goldens"
    prompts = [a for p in PROMPTS for a in ("--prompts", p)]
    rec = subprocess.run(
        [sys.executable, "-m", "parity.cli", "record", "--model", str(deep_model), *prompts, "--max-tokens",
         str(MAX_TOKENS), "--max-model-len", "256", "--depths", "every", "--floor", "bf16", "--out", str(goldens)],
        capture_output=True, text=True, timeout=1200)
    assert rec.returncode == 0, rec.stderr[-2000:]
    stores = [Store.open(p) for p in rec.stdout.strip().splitlines()]
    assert len(stores) == LAYERS and all(s.manifest.floor is not None for s in stores)
    json_path = tmp_path / "b.json"
    proc = subprocess.run(
        [sys.executable, "-m", "parity.cli", "bisect", "--model", str(drifting_model), "--dtype", "bfloat16",
         "--golden", str(goldens), "--sweep", "--out", str(tmp_path / "c"), "--max-model-len", "256",
         "--json", str(json_path), "--no-color"],
        capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 1, proc.stderr[-2000:]
    doc = json.loads(json_path.read_text())
    assert doc["thresholds_source"] == "the golden's noise floor (bf16)"
    assert [d["verdict"] for d in doc["depths"]] == ["pass", "pass", "fail", "fail"]
    assert doc["first_drift_depth"] == DRIFT_LAYER + 1

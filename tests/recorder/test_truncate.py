"""Layer truncation without an engine: the derived checkpoint, depth specs, the rbln settings."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from parity.errors import UsageError
from parity.recorder import EngineOptions, RecordConfig, get_profile
from parity.recorder.depths import parse_depths
from parity.recorder.engines.vllm import engine_kwargs as _engine_kwargs
from parity.recorder.tinymodel import build_tiny_model
from parity.recorder.truncate import Depth, config_overrides, layer_count, resolve_depth, truncated_dir

LAYERS = 4


@pytest.fixture(scope="module")
def four_layers(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("m") / "four", num_layers=LAYERS, vocab_size=300)


@pytest.fixture(scope="module")
def sharded(four_layers, tmp_path_factory):
    """The same weights saved in small shards, as big checkpoints are."""
    import torch
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("m") / "sharded"
    model = AutoModelForCausalLM.from_pretrained(four_layers, dtype=torch.float32)
    model.save_pretrained(out, safe_serialization=True, max_shard_size="300KB")
    for f in four_layers.iterdir():
        if f.name.startswith("tokenizer"):
            (out / f.name).write_bytes(f.read_bytes())
    assert len(list(out.glob("*.safetensors"))) > 2
    return out


def _tensors(model_dir) -> dict[str, np.ndarray]:
    out = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(f), "np") as fh:
            out.update({k: fh.get_tensor(k) for k in fh.keys()})
    return out


@pytest.mark.parametrize("k", [1, 3])
def test_derived_checkpoint_keeps_exactly_the_first_k_layers(four_layers, tmp_path, k):
    derived = truncated_dir(four_layers, Depth(k, LAYERS), tmp_path, "xxh3-128:00")
    original, cut = _tensors(four_layers), _tensors(derived)
    dropped = {n for n in original if any(f"layers.{i}." in n for i in range(k, LAYERS))}
    assert dropped and set(cut) == set(original) - dropped
    for name, value in cut.items():
        assert value.dtype == original[name].dtype and np.array_equal(value, original[name]), name
    config = json.loads((derived / "config.json").read_text())
    assert config["num_hidden_layers"] == k and layer_count(derived) == k
    assert json.loads((four_layers / "config.json").read_text())["num_hidden_layers"] == LAYERS  # source untouched
    assert (derived / "tokenizer.json").read_bytes() == (four_layers / "tokenizer.json").read_bytes()
    # Built once: a second call returns the same directory without rebuilding it.
    stamp = (derived / "config.json").stat().st_mtime_ns
    assert truncated_dir(four_layers, Depth(k, LAYERS), tmp_path, "xxh3-128:00") == derived
    assert (derived / "config.json").stat().st_mtime_ns == stamp
    assert not [p for p in derived.parent.iterdir() if p.name.startswith(".")]  # no temporary left


def test_transformers_reads_the_derived_checkpoint_as_the_cut_model(four_layers, tmp_path):
    """Logits of the derived checkpoint equal transformers' own num_hidden_layers override of the original."""
    import torch
    from transformers import AutoModelForCausalLM

    derived = truncated_dir(four_layers, Depth(2, LAYERS), tmp_path, None)
    ids = torch.tensor([[1, 5, 9, 42, 7]])
    with torch.no_grad():
        ours = AutoModelForCausalLM.from_pretrained(derived, dtype=torch.float32)(ids).logits
        theirs = AutoModelForCausalLM.from_pretrained(four_layers, dtype=torch.float32, num_hidden_layers=2)(ids).logits
        full = AutoModelForCausalLM.from_pretrained(four_layers, dtype=torch.float32)(ids).logits
    assert torch.equal(ours, theirs)
    assert not torch.allclose(ours, full)  # the cut changes the output: the comparison above means something


def test_sharded_checkpoints_link_whole_shards_and_slice_mixed_ones(sharded, tmp_path):
    derived = truncated_dir(sharded, Depth(1, LAYERS), tmp_path, "xxh3-128:01")
    index = json.loads((derived / "model.safetensors.index.json").read_text())["weight_map"]
    assert set(index) == set(_tensors(derived))
    assert not any(f"layers.{i}." in n for n in index for i in range(1, LAYERS))
    linked = [f for f in derived.glob("*.safetensors") if f.is_symlink()]
    written = [f for f in derived.glob("*.safetensors") if not f.is_symlink()]
    assert linked, "shards whose tensors are all kept should be linked, not copied"
    for f in linked:
        assert os.path.realpath(f) == str((sharded / f.name).resolve())
    src = _tensors(sharded)
    for name, value in _tensors(derived).items():
        assert np.array_equal(value, src[name])
    assert len(linked) + len(written) < len(list(sharded.glob("*.safetensors")))  # shards of dropped layers omitted


def test_per_layer_config_lists_are_cut_with_the_count():
    config = {"num_hidden_layers": 4, "layer_types": ["a", "b", "a", "b"], "architectures": ["X"] * 4,
              "text_config": None}
    assert config_overrides(config, 2) == {"num_hidden_layers": 2, "layer_types": ["a", "b"]}
    nested = {"architectures": ["V"], "text_config": {"num_hidden_layers": 3, "mlp_only_layers": [0, 1, 2]}}
    assert config_overrides(nested, 1) == {"text_config": {"num_hidden_layers": 1, "mlp_only_layers": [0]}}


def test_the_decoder_layers_are_told_from_a_vision_towers(tmp_path):
    model = tmp_path / "vlm"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"num_hidden_layers": 3}))
    tensors = {f"model.layers.{i}.w": np.full((2,), i, np.float32) for i in range(3)}
    tensors |= {f"vision_model.encoder.layers.{i}.w": np.full((2,), 10 + i, np.float32) for i in range(4)}
    tensors["lm_head.weight"] = np.ones((2, 2), np.float32)
    save_file(tensors, str(model / "model.safetensors"))
    cut = _tensors(truncated_dir(model, Depth(1, 3), tmp_path / "cache", None))
    assert set(cut) == set(tensors) - {"model.layers.1.w", "model.layers.2.w"}


def test_unusable_layer_counts_and_checkpoints_are_one_line_errors(four_layers, tmp_path):
    with pytest.raises(UsageError, match="at least 1"):
        resolve_depth(four_layers, 0)
    with pytest.raises(UsageError, match="only 4 layers"):
        resolve_depth(four_layers, 5)
    assert not resolve_depth(four_layers, 4).truncated
    binary = tmp_path / "bin"
    binary.mkdir()
    (binary / "config.json").write_text(json.dumps({"num_hidden_layers": 2}))
    (binary / "pytorch_model.bin").write_bytes(b"\0")
    with pytest.raises(UsageError, match="needs safetensors"):
        truncated_dir(binary, Depth(1, 2), tmp_path / "cache", None)
    assert not (tmp_path / "cache" / "truncated").exists() or not any(
        p for p in (tmp_path / "cache" / "truncated").rglob("layers-*"))


@pytest.mark.parametrize("spec, want", [
    ("1,2,4,all", [1, 2, 4, 8]), ("all", [8]), ("every", list(range(1, 9))), ("2-4, 8", [2, 3, 4, 8]),
    ("4,4,1", [1, 4]),
])
def test_depth_specs(spec, want):
    assert parse_depths(spec, 8) == want


@pytest.mark.parametrize("spec", ["0", "9", "x", "3-1", "1,,2", ""])
def test_bad_depth_specs_are_usage_errors(spec):
    with pytest.raises(UsageError):
        parse_depths(spec, 8)


def test_rbln_cuts_layers_the_way_the_plugin_supports(no_npu_env, four_layers):
    from parity.recorder.devices.base import TRUNCATE_CHECKPOINT, TRUNCATE_HF_OVERRIDES, TRUNCATE_PLUGIN_ENV

    rbln = get_profile("rbln")
    vllm_path = EngineOptions(num_hidden_layers=2, rbln_path="vllm-model")
    optimum = EngineOptions(num_hidden_layers=2, rbln_path="optimum")
    assert rbln.layer_truncation(vllm_path) == TRUNCATE_PLUGIN_ENV
    assert rbln.environment(vllm_path, full_vocab=True)["VLLM_RBLN_NUM_HIDDEN_LAYERS"] == "2"
    assert "hf_overrides" not in _engine_kwargs(RecordConfig(engine=vllm_path), rbln, four_layers, None)
    assert rbln.layer_truncation(optimum) == TRUNCATE_HF_OVERRIDES
    assert "VLLM_RBLN_NUM_HIDDEN_LAYERS" not in rbln.environment(optimum, full_vocab=True)
    kwargs = _engine_kwargs(RecordConfig(engine=optimum), rbln, four_layers, None)
    assert kwargs["hf_overrides"] == {"num_hidden_layers": 2}
    assert "VLLM_RBLN_NUM_HIDDEN_LAYERS" not in rbln.environment(EngineOptions(rbln_path="vllm-model"), full_vocab=True)
    for name in ("cpu", "hf"):
        assert get_profile(name).layer_truncation(EngineOptions(num_hidden_layers=2)) == TRUNCATE_CHECKPOINT
    assert "hf_overrides" not in _engine_kwargs(RecordConfig(engine=EngineOptions(num_hidden_layers=2)),
                                                get_profile("cpu"), four_layers, None)


def test_rbln_refuses_a_layer_limit_the_store_would_not_record(no_npu_env):
    from parity.schemas import ModelRef, Request

    request = Request(model=ModelRef(id="m"), prompts=((1, 2),), max_tokens=2, logprobs=-1, prompt_logprobs=False,
                      dtype="float32", max_model_len=1024, seed=0)
    rbln = get_profile("rbln")
    no_npu_env.setenv("VLLM_RBLN_NUM_HIDDEN_LAYERS", "3")
    with pytest.raises(UsageError, match="VLLM_RBLN_NUM_HIDDEN_LAYERS=3"):
        rbln.validate(EngineOptions(rbln_path="vllm-model"), request)
    rbln.validate(EngineOptions(rbln_path="vllm-model", num_hidden_layers=3), request)  # the same limit: fine
    no_npu_env.delenv("VLLM_RBLN_NUM_HIDDEN_LAYERS")
    with pytest.raises(UsageError, match="smaller than --pp 4"):
        rbln.validate(EngineOptions(rbln_path="vllm-model", num_hidden_layers=2, pp=4, batch=4), request)


def test_dry_run_shows_the_depth_and_the_full_count_is_the_plain_request(four_layers, tmp_path):
    from parity.recorder.dryrun import dry_run

    def plan(**engine):
        return dry_run(RecordConfig(model=str(four_layers), prompts=["hi there"], max_tokens=2, out=tmp_path,
                                    engine=EngineOptions(max_model_len=64, **engine)))

    cut = plan(num_hidden_layers=2)
    assert cut["depth"]["num_hidden_layers"] == 2 and cut["depth"]["of"] == LAYERS
    assert cut["depth"]["mechanism"] == "checkpoint" and "hf_overrides" not in cut["engine_args"]
    plain, full = plan(), plan(num_hidden_layers=LAYERS)
    assert plain["depth"] is None and full["depth"] is None
    assert full["request_key"] == plain["request_key"] != cut["request_key"]
    assert not list((tmp_path).iterdir())  # a plan builds nothing

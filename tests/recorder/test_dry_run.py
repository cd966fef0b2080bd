"""`parity record --dry-run` as a user runs it: real subprocesses, the JSON plan, exit codes.

No engine starts here; the rbln plans are made on a host without the plugin,
which is what a dry-run is for.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.cli_run import assert_one_line_error

ROOT = Path(__file__).resolve().parents[2]
REQUIRED_KEYS = {"device", "available", "env", "engine_args", "request_key", "positions", "estimated_bytes", "problems"}
PROMPTS = ("--prompts", "Hello, my name is", "--prompts", "Once upon a time")
MAX_TOKENS = 5
# Variables that would steer the rbln plan from outside the command line.
STEERING = ("RBLN_FORCE_NPU_NAME", "RBLN_TARGET_SOC", "VLLM_PLUGINS", "VLLM_RBLN_USE_VLLM_MODEL",
            "VLLM_RBLN_COMPILE_ONLY", "PARITY_DEBUG")


def _env(extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in STEERING}
    return {**env, "PYTHONPATH": str(ROOT), **(extra or {})}


def parity(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "parity.cli", *args], capture_output=True, text=True,
                          env=_env(env), timeout=300, cwd=ROOT)


def dry_run(*args: str, env: dict | None = None) -> dict:
    proc = parity("record", "--dry-run", *args, env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # one JSON object and nothing else on stdout


def vocab_size(model_dir: Path) -> int:
    return json.loads((model_dir / "config.json").read_text())["vocab_size"]


def prompt_lengths(model_dir: Path) -> list[int]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    return [len(tok(p)["input_ids"]) for p in PROMPTS[1::2]]


def test_rbln_dry_run_prints_the_plan_without_the_plugin(tmp_path, tiny_model):
    out = tmp_path / "not-created"
    plan = dry_run("--device", "rbln", "--model", str(tiny_model), *PROMPTS, "--max-tokens", str(MAX_TOKENS),
                   "--max-model-len", "256", "--batch", "2", "--out", str(out))
    assert REQUIRED_KEYS <= set(plan)
    assert plan["device"] == "rbln" and plan["available"] is False
    assert any("pip install 'parity[rbln]'" in p for p in plan["problems"]), plan["problems"]
    args = plan["engine_args"]
    assert args["block_size"] == args["max_model_len"] == 256
    assert args["model_impl"] == "vllm" and args["max_num_seqs"] == 2
    assert args["additional_config"]["decode_batch_bucket_limit"] == 1
    assert args["model"] == str(tiny_model)
    # KV blocks: 2 sequences x one 256-token block + the null block, not the plugin's memory-based count.
    assert args["num_gpu_blocks_override"] == 3
    assert plan["device_plan"]["kv_blocks"]["num_gpu_blocks_override"] == 3
    env = plan["env"]
    assert env["VLLM_USE_V2_MODEL_RUNNER"] == "0"
    assert "VLLM_PLUGINS" not in env and "RBLN_KERNEL_MODE" not in env and "VLLM_DISABLE_COMPILE_CACHE" not in env
    # No NPU name on this host: the plan says the NPU host decides the path.
    assert plan["device_plan"]["path_decided_here"] is False
    generated = len(PROMPTS) // 2 * MAX_TOKENS
    assert plan["positions"] == {"prompt": 0, "generated": generated, "total": generated}  # rbln: no prompt rows
    vocab = vocab_size(tiny_model)
    assert plan["estimated_bytes"]["raw"] == generated * vocab * 4
    assert plan["estimated_bytes"]["compressed"] == round(generated * vocab * 3.0)
    assert not out.exists()  # a dry-run creates nothing


def test_cpu_dry_run_and_the_request_key_is_device_independent(tmp_path, tiny_model):
    common = ("--model", str(tiny_model), *PROMPTS, "--max-tokens", str(MAX_TOKENS), "--out", str(tmp_path))
    cpu = dry_run("--device", "cpu", *common)
    assert REQUIRED_KEYS <= set(cpu)
    assert cpu["available"] is True and cpu["problems"] == []
    assert cpu["engine_args"]["enforce_eager"] is True and "block_size" not in cpu["engine_args"]
    prompt_rows = sum(n - 1 for n in prompt_lengths(tiny_model))  # cpu records prompt positions by default
    generated = len(PROMPTS) // 2 * MAX_TOKENS
    assert cpu["positions"] == {"prompt": prompt_rows, "generated": generated, "total": prompt_rows + generated}
    rbln = dry_run("--device", "rbln", *common)
    assert rbln["request_key"] == cpu["request_key"]


@pytest.fixture(scope="module")
def hf_store(tiny_model, tmp_path_factory):
    """A real store, recorded cheaply with transformers (no vLLM): its request key is the reference."""
    from parity.recorder import RecordConfig, record

    return record(RecordConfig(model=str(tiny_model), device="hf", prompts=list(PROMPTS[1::2]), max_tokens=MAX_TOKENS,
                               prompt_logprobs=False, out=tmp_path_factory.mktemp("hf-store")))


def test_dry_run_request_key_matches_a_recorded_store_and_follows_a_golden(tmp_path, tiny_model, hf_store):
    plan = dry_run("--device", "rbln", "--model", str(tiny_model), *PROMPTS, "--max-tokens", str(MAX_TOKENS),
                   "--out", str(tmp_path))
    assert plan["request_key"] == hf_store.manifest.request_key
    followed = dry_run("--device", "rbln", "--model", str(tiny_model), "--golden", str(hf_store.path),
                       "--out", str(tmp_path))
    assert followed["request_key"] == hf_store.manifest.request_key
    assert followed["golden"] == hf_store.manifest.digest
    # Forced onto the golden's trajectory: exactly its generated positions, no upper bound.
    assert followed["positions"]["generated"] == hf_store.manifest.generated_positions
    assert not any("upper bound" in n for n in followed["notes"])


def test_rbln_bad_block_size_is_a_one_line_error(tmp_path, tiny_model):
    proc = parity("record", "--dry-run", "--device", "rbln", "--model", str(tiny_model), "--prompts", "Hi",
                  "--max-model-len", "1024", "--block-size", "8192", "--out", str(tmp_path))
    assert_one_line_error(proc, "--block-size 8192", "--max-model-len 1024", "divisor")


def test_rbln_prompt_logprobs_is_a_one_line_error(tmp_path, tiny_model):
    proc = parity("record", "--dry-run", "--device", "rbln", "--model", str(tiny_model), "--prompts", "Hi",
                  "--prompt-logprobs", "--out", str(tmp_path))
    # Where the plugin fails (test_rbln_e2e.py shows it does), and the next step.
    assert_one_line_error(proc, "--prompt-logprobs", "rbln", "RBLNSampler.gather_logprobs", "cpu or hf recording")
    optimum = parity("record", "--dry-run", "--device", "rbln", "--rbln-path", "optimum", "--model", str(tiny_model),
                     "--prompts", "Hi", "--prompt-logprobs", "--out", str(tmp_path))
    assert_one_line_error(optimum, "--prompt-logprobs", "one row of logits per request")


@pytest.mark.parametrize(("batch", "max_model_len", "block", "blocks"),
                         [(1, 1024, None, 2), (4, 256, 64, 17), (3, 100, 25, 13)])
def test_rbln_kv_blocks_are_what_the_batch_needs_at_full_length(tmp_path, tiny_model, batch, max_model_len, block,
                                                                 blocks):
    extra = ("--block-size", str(block)) if block else ()
    plan = dry_run("--device", "rbln", "--model", str(tiny_model), "--prompts", "Hi", "--batch", str(batch),
                   "--max-model-len", str(max_model_len), *extra, "--out", str(tmp_path))
    assert plan["engine_args"]["num_gpu_blocks_override"] == blocks
    assert plan["device_plan"]["kv_blocks"]["num_gpu_blocks_override"] == blocks
    optimum = dry_run("--device", "rbln", "--rbln-path", "optimum", "--model", str(tiny_model), "--prompts", "Hi",
                      "--out", str(tmp_path))
    # The optimum path's block count is the compiled model's own.
    assert "num_gpu_blocks_override" not in optimum["engine_args"]
    assert optimum["device_plan"]["kv_blocks"]["num_gpu_blocks_override"] is None


@pytest.mark.parametrize("device", ["rbln", "cpu"])
def test_dp_above_one_is_a_one_line_error_naming_the_next_step(tmp_path, tiny_model, device):
    proc = parity("record", "--dry-run", "--device", device, "--model", str(tiny_model), "--prompts", "Hi",
                  "--dp", "2", "--out", str(tmp_path))
    assert_one_line_error(proc, "--dp 2", "one recording per replica")


def test_rbln_path_follows_the_npu_name_and_refuses_what_the_plugin_refuses(tmp_path, tiny_model):
    atom = {"RBLN_FORCE_NPU_NAME": "RBLN-CA25"}
    common = ("--device", "rbln", "--model", str(tiny_model), "--prompts", "Hi", "--out", str(tmp_path))
    plan = dry_run(*common, env=atom)
    assert plan["engine_args"]["model_impl"] == "optimum"
    assert plan["device_plan"]["npu_name"] == "RBLN-CA25" and plan["device_plan"]["path_decided_here"] is True
    assert_one_line_error(parity("record", "--dry-run", *common, "--rbln-path", "vllm-model", env=atom),
                          "vllm-model path on RBLN-CA25")
    assert_one_line_error(parity("record", "--dry-run", *common, "--rbln-path", "optimum", "--tp", "2"),
                          "--tp 1 and --pp 1 only")
    host = dry_run(*common, "--rbln-host-logits", "--rbln-fresh-compile")
    assert host["env"]["VLLM_RBLN_USE_DEVICE_TENSOR"] == "0" and host["env"]["VLLM_DISABLE_COMPILE_CACHE"] == "1"


def test_rbln_options_on_another_device_are_refused(tmp_path, tiny_model):
    proc = parity("record", "--dry-run", "--device", "cpu", "--model", str(tiny_model), "--prompts", "Hi",
                  "--rbln-host-logits", "--out", str(tmp_path))
    assert_one_line_error(proc, "apply to --device rbln")


def test_dry_run_imports_no_vllm(tmp_path, tiny_model):
    code = f"""
import sys
from parity.recorder import EngineOptions, RecordConfig
from parity.recorder.dryrun import dry_run
for device in ("rbln", "cpu"):
    plan = dry_run(RecordConfig(model={str(tiny_model)!r}, device=device, prompts=["Hi"], max_tokens=2,
                                out={str(tmp_path)!r}, engine=EngineOptions(max_model_len=128)))
    assert plan["engine_args"]["max_model_len"] == 128, plan
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("vllm", "vllm_rbln"))
assert not loaded, loaded
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=300,
                          cwd=ROOT)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_dry_run_shows_each_share_and_replica(tiny_model):
    """The split a sharded run would make, and each local replica's CPUs (disjoint, from this host's)."""
    from parity.recorder.devices.cpu import allowed_cpus

    plan = dry_run("--model", str(tiny_model), "--suite", "default", "--max-model-len", "512", "--replicas", "2")
    replicas = plan["replicas"]
    assert [r["share"] for r in replicas] == ["1/2", "2/2"]
    held = replicas[0]["sequences"] + replicas[1]["sequences"]
    assert sorted(held) == list(range(plan["prompts"]["count"])) and all(r["sequences"] for r in replicas)
    if len(allowed_cpus()) >= 2:
        assert set(replicas[0]["cpus"]).isdisjoint(replicas[1]["cpus"])
        assert set(replicas[0]["cpus"] + replicas[1]["cpus"]) <= set(allowed_cpus())
    share = dry_run("--model", str(tiny_model), "--suite", "default", "--max-model-len", "512", "--shard", "2/2")
    assert share["share"] == {"index": 2, "count": 2, "sequences": replicas[1]["sequences"]}
    assert share["prompts"]["count"] == len(replicas[1]["sequences"])

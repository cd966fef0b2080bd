"""`parity record/bisect --device rbln` through vllm-rbln 0.12's real code, end to end, on a CPU.

What is real: parity's CLI and recorder, vLLM 0.30, and the whole vllm-rbln
0.12.0 vLLM-model path: its platform and config checks, ``RBLNWorker``,
``RBLNModelRunner``, ``RBLNScheduler`` (which takes the decode batch out of a
step whenever it admits a prefill), warm-up, ``RBLNSampler``, its model
patches (``VLLM_RBLN_NUM_HIDDEN_LAYERS``), the Dynamo tracing of its model
and sampler. What is stood in: the NPU compiler and runtime (rebel-compiler)
and torch-rbln's ``torch.rbln`` module, and only those
(``tests/support/rbln_standin/``: the compiled graphs run eagerly on the CPU, the
attention ops are a reference paged attention, the KV cache the plugin keeps
on the meta device is backed by host memory). So numerics here are the CPU's,
not the NPU's: every store must equal transformers float32 forced onto the
same golden (KL <= 1e-5, top-1 1.0), which shows the rows are the right rows
at the right positions through the plugin's batching, paging and sampling.

Each parity command runs in its own process: the stand-in and the rbln
platform must never reach other tests (vLLM picks its platform once per
process). Needs ``make test-vllm030`` (vLLM 0.30 venv, the plugin's code in a
``--target`` directory with a metadata-only ``vllm`` alias); it sets
PARITY_REQUIRE_RBLN=1, which turns the skip into a failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import rbln_standin

pytestmark = pytest.mark.rbln_e2e

rbln_standin.skip_or_fail(rbln_standin.unavailable(need_alias=True))

REPO = rbln_standin.REPO
LAYERS = 4
DRIFT_LAYER = 2  # 0-based: bisect must name depth 3
MAX_MODEL_LEN = 256
MAX_TOKENS = 12
# Ten prompts of different lengths (batch 4 admits prefills while others decode);
# the last spans several 16-token KV blocks with its generated tokens.
PROMPTS = [
    "Hello",
    "The quick brown fox jumps over the lazy dog. A golden record",
    "Once upon a time",
    "def add(a, b):",
    "The capital of France is",
    "Numbers: 1 2 3",
    "In the beginning the tokens were few",
    "Kullback-Leibler",
    "Large language models predict the next token given all the previous ones;",
    "A long prompt for paged attention: the key and value cache of this sequence fills several blocks of sixteen "
    "tokens before the first token is generated, so every decode step reads keys from more than one block, "
    "and the block table has to map each position to the right block and offset.",
]
ALLOWED_KL = 1e-5
PROCESS_TIMEOUT_S = 900


def _env(tmp: Path, *, standin: bool) -> dict[str, str]:
    env = {**os.environ, "PARITY_CACHE": str(tmp / "cache"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "VLLM_CACHE_ROOT": str(tmp / "vllm-cache"), "PARITY_NO_PROGRESS": "1"}
    env.pop("PYTHONPATH", None)
    if standin:
        env = rbln_standin.subprocess_env(rbln_standin.plugin_dir(), env)
    else:
        env["VLLM_PLUGINS"] = "none"  # the plain CPU engine, even if the plugin were installed
    return env


def _run(argv: list[str], tmp: Path, *, standin: bool, ok: tuple[int, ...] = (0,),
         extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, cwd=REPO, env=_env(tmp, standin=standin) | (extra_env or {}), capture_output=True,
                          text=True, timeout=PROCESS_TIMEOUT_S)
    assert proc.returncode in ok, f"{' '.join(argv[2:7])}... exited {proc.returncode}:\n{proc.stderr[-4000:]}"
    return proc


def parity(*args: str, tmp: Path, ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess:
    """The parity CLI without the plugin (CPU and hf recordings, diff, verify)."""
    return _run([sys.executable, "-m", "parity.cli", *args], tmp, standin=False, ok=ok)


def parity_rbln(*args: str, tmp: Path, ok: tuple[int, ...] = (0,)) -> tuple[subprocess.CompletedProcess, dict]:
    """The parity CLI with the plugin loaded and the NPU stood in; returns the process and its counters."""
    trace = tmp / f"trace-{os.urandom(4).hex()}.json"
    proc = _run([sys.executable, "-m", "tests.support.rbln_traced_cli", *args], tmp, standin=True, ok=ok,
                extra_env={"PARITY_TEST_TRACE": str(trace)})
    return proc, json.loads(trace.read_text())


def _store(proc: subprocess.CompletedProcess) -> Path:
    return Path(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("rbln-e2e")


@pytest.fixture(scope="module")
def models(work) -> dict[str, Path]:
    """A 4-layer tiny Llama; a copy with other weights (the golden's trajectory); one with layer 2 perturbed."""
    from parity.recorder.tinymodel import build_tiny_model, perturb_layer

    deep = build_tiny_model(work / "models" / "deep", num_layers=LAYERS)
    other = build_tiny_model(work / "models" / "other", num_layers=LAYERS, perturb=0.5)
    drifting = perturb_layer(deep, work / "models" / "drifting", DRIFT_LAYER)
    return {"deep": deep, "other": other, "drifting": drifting}


@pytest.fixture(scope="module")
def golden(work, models) -> Path:
    """The CPU golden (vLLM 0.30's CPU engine) of the other weights: rbln runs are forced onto its tokens."""
    prompts = work / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    return _store(parity("record", "--device", "cpu", "--model", str(models["other"]), "--prompts-file", str(prompts),
                         "--max-tokens", str(MAX_TOKENS), "--max-model-len", str(MAX_MODEL_LEN),
                         "--out", str(work / "goldens"), tmp=work))


def _hf_reference(work: Path, models: dict, golden: Path, *extra: str) -> Path:
    return _store(parity("record", "--device", "hf", "--model", str(models["deep"]), "--golden", str(golden),
                         "--no-prompt-logprobs", "--max-model-len", str(MAX_MODEL_LEN), *extra,
                         "--out", str(work / "hf"), tmp=work))


@pytest.fixture(scope="module")
def hf_reference(work, models, golden) -> Path:
    """transformers float32 forced onto the same golden: what every rbln store must equal."""
    return _hf_reference(work, models, golden)


def record_rbln(work: Path, models: dict, golden: Path, *args: str) -> tuple[Path, dict]:
    proc, trace = parity_rbln("record", "--device", "rbln", "--rbln-host-logits", "--model", str(models["deep"]),
                              "--golden", str(golden), "--max-model-len", str(MAX_MODEL_LEN), *args,
                              "--out", str(work / "rbln"), tmp=work)
    return _store(proc), trace


def assert_equals_reference(work: Path, ref: Path, cand: Path, trace: dict | None = None) -> dict:
    """The diff's verdict at KL <= 1e-5 and top-1 1.0 over every forced position, and verify; returns the report.

    Prints one line of figures (make test-vllm030 shows them with -rP).
    """
    from parity.schemas import Store

    report_path = work / f"diff-{cand.name}.json"
    parity("diff", str(ref), str(cand), "--max-kl", str(ALLOWED_KL), "--min-top1", "1.0",
           "--json", str(report_path), tmp=work)
    report = json.loads(report_path.read_text())
    assert report["verdict"] == "pass" and report["forced_trajectory"]
    summary = report["summary"]
    assert summary["positions"] == Store.open(ref).manifest.generated_positions > 0
    assert summary["kl"]["max"] <= ALLOWED_KL and summary["top1_agreement"] == 1.0
    assert "ok xxh3-128:" in parity("verify", str(cand), tmp=work).stdout
    counts = {k: trace[k] for k in ("evictions", "shard_writes", "shard_rewrites", "rows_after_finished")
              if trace and k in trace}
    print(f"rbln vs hf: {summary['positions']} rows, KL max {summary['kl']['max']:.3e}, "
          f"top-1 {summary['top1_agreement']:.4f}, verified; {counts}")
    return report


def assert_recorded_on_the_standin(store: Path, golden: Path) -> dict:
    from parity.schemas import Store

    manifest = Store.open(store).manifest
    assert manifest.device.kind == "rbln"
    versions = manifest.device.versions
    # The store says it came from the stand-in, never from an NPU.
    assert versions["rebel-compiler"] == "0.0.0+cpu.standin" and versions["vllm-rbln"] == "0.12.0"
    assert manifest.device.host["npu"] == "RBLN-CR03" and manifest.device.host["npu_source"] == "rebel.get_npu_name(0)"
    assert manifest.run["forced"] and manifest.run["golden"] == Store.open(golden).manifest.digest
    assert manifest.request.prompt_logprobs is False and manifest.prompt_positions == 0
    return manifest.device.engine_args


def test_batch_1(work, models, golden, hf_reference):
    store, trace = record_rbln(work, models, golden, "--batch", "1")
    args = assert_recorded_on_the_standin(store, golden)
    assert args["max_num_seqs"] == 1 and args["num_gpu_blocks_override"] == 2 and args["model_impl"] == "vllm"
    assert trace["evictions"] == 0 and trace["attention_calls"]["decode"] > 0
    assert_equals_reference(work, hf_reference, store, trace)


def test_batch_4_prefill_admissions_pause_the_decode_batch_and_rows_stay_whole(work, models, golden, hf_reference):
    store, trace = record_rbln(work, models, golden, "--batch", "4")
    assert_recorded_on_the_standin(store, golden)
    # The plugin's scheduler took the decode batch out to admit a prefill, several times...
    assert trace["evictions"] >= 3, trace
    # ...and no sequence was taken for finished at a pause: each ended once, nothing came after,
    # and every shard was written whole, once (no read-modify-write of a shard on disk).
    assert all(n == 1 for n in trace["finished_calls"].values()), trace
    assert trace["rows_after_finished"] == 0 and trace["shard_rewrites"] == 0 and trace["shard_writes"] > 0, trace
    assert_equals_reference(work, hf_reference, store, trace)


def test_tensor_parallel_2(work, models, golden, hf_reference):
    store, _trace = record_rbln(work, models, golden, "--tp", "2")
    assert_recorded_on_the_standin(store, golden)
    from parity.schemas import Store

    assert Store.open(store).manifest.run["executor"] == "mp"  # rows captured in a worker process
    assert_equals_reference(work, hf_reference, store)


def test_a_block_size_dividing_max_model_len_with_prompts_over_several_blocks(work, models, golden, hf_reference):
    from parity.schemas import Store

    block = 16
    longest = max(s.prompt_len for s in Store.open(golden).manifest.sequences)
    assert longest > 3 * block  # the long prompt's prefill spans several blocks
    store, trace = record_rbln(work, models, golden, "--batch", "2", "--block-size", str(block))
    args = assert_recorded_on_the_standin(store, golden)
    assert args["block_size"] == block and args["num_gpu_blocks_override"] == 2 * (MAX_MODEL_LEN // block) + 1
    # The plugin chose its flash (multi-block) attention, never the one-block kernels.
    calls = trace["attention_calls"]
    assert calls["flash_prefill"] > 0 and calls["flash_decode"] > 0 and calls["prefill"] == calls["decode"] == 0
    assert_equals_reference(work, hf_reference, store, trace)


def test_num_hidden_layers_through_the_plugins_own_layer_limit(work, models, golden):
    depth = 2
    store, _trace = record_rbln(work, models, golden, "--num-hidden-layers", str(depth))
    from parity.schemas import Store

    manifest = Store.open(store).manifest
    assert manifest.request.num_hidden_layers == depth
    assert manifest.run["depth"] == {"num_hidden_layers": depth, "of": LAYERS, "mechanism": "plugin-env",
                                     "model_dir": None}
    assert manifest.device.env["VLLM_RBLN_NUM_HIDDEN_LAYERS"] == str(depth)  # the plugin's limit, recorded
    reference = _hf_reference(work, models, golden, "--num-hidden-layers", str(depth))
    assert_equals_reference(work, reference, store)


def test_bisect_on_rbln_names_the_perturbed_layer_against_cpu_goldens_at_depths(work, models):
    from parity.schemas import Store

    goldens = work / "depth-goldens"
    parity("record", "--device", "cpu", "--model", str(models["deep"]), "--depths", "every",
           "--prompts", "The capital of France is", "--prompts", "Once upon a time", "--max-tokens", "6",
           "--max-model-len", str(MAX_MODEL_LEN), "--out", str(goldens), tmp=work)
    report = work / "bisect.json"
    proc, _trace = parity_rbln("bisect", "--device", "rbln", "--rbln-host-logits", "--model", str(models["drifting"]),
                               "--golden", str(goldens), "--max-model-len", str(MAX_MODEL_LEN),
                               "--out", str(work / "bisect"), "--json", str(report), tmp=work, ok=(1,))
    assert proc.stdout.strip().splitlines()[-1].startswith(f"first drift at depth {DRIFT_LAYER + 1} of {LAYERS}")
    doc = json.loads(report.read_text())
    assert doc["first_drift_depth"] == DRIFT_LAYER + 1
    print("bisect on rbln:", [(d["num_hidden_layers"], d["verdict"], f"{d['kl']['max']:.3e}") for d in doc["depths"]])
    for probe in doc["depths"]:
        cand = Store.open(probe["candidate"]["path"])
        cand.verify()
        assert cand.manifest.device.kind == "rbln"
        if probe["num_hidden_layers"] <= DRIFT_LAYER:
            # The same first layers on the plugin as on the CPU engine: fp32 noise only.
            assert probe["verdict"] == "pass" and probe["kl"]["max"] <= ALLOWED_KL
        else:
            assert probe["verdict"] == "fail"


def test_dry_run_plan_is_what_the_plugin_accepts(work, models):
    """The plan's engine arguments and environment, given to the real plugin: what it ends up running."""
    plan_path = work / "plan.json"
    batch, block, depth = 4, 64, 2
    proc = parity("record", "--dry-run", "--device", "rbln", "--rbln-host-logits", "--model", str(models["deep"]),
                  "--prompts", "Hello", "--batch", str(batch), "--block-size", str(block),
                  "--max-model-len", str(MAX_MODEL_LEN), "--num-hidden-layers", str(depth), tmp=work)
    plan_path.write_text(proc.stdout)
    plan = json.loads(proc.stdout)
    args, env = plan["engine_args"], plan["env"]
    accepted = json.loads(_run([sys.executable, "-m", "tests.support.rbln_engine_config", str(plan_path)], work,
                               standin=True).stdout.strip().splitlines()[-1])
    assert accepted["platform"] == "vllm_rbln.platform.RblnPlatform"
    assert (accepted["scheduler"], accepted["worker"], accepted["runner"], accepted["sampler"]) == (
        "RBLNScheduler", "RBLNWorker", "RBLNModelRunner", "RBLNSampler")
    assert accepted["rbln_config"] == "RBLNConfig"  # the vllm-model path, as planned
    assert plan["device_plan"]["path"] == "vllm-model"
    for key in ("block_size", "max_num_seqs", "max_num_batched_tokens", "max_model_len", "tensor_parallel_size",
                "pipeline_parallel_size", "enable_prefix_caching", "async_scheduling", "num_gpu_blocks_override"):
        assert accepted[key] == args[key], key
    # The pool is the planned block count, and the plugin's int16 check took it.
    assert accepted["num_gpu_blocks"] == plan["device_plan"]["kv_blocks"]["num_gpu_blocks_override"] == args[
        "num_gpu_blocks_override"] == batch * (MAX_MODEL_LEN // block) + 1
    assert accepted["additional_config"] == args["additional_config"]
    assert accepted["decode_buckets"] == [batch]  # one decode bucket, as planned
    assert accepted["use_v2_model_runner"] == env["VLLM_USE_V2_MODEL_RUNNER"] == "0"
    # The plugin's own reading of the variables the plan sets.
    assert accepted["plugin_env"]["VLLM_RBLN_USE_DEVICE_TENSOR"] is False and env["VLLM_RBLN_USE_DEVICE_TENSOR"] == "0"
    assert accepted["plugin_env"]["VLLM_RBLN_NUM_HIDDEN_LAYERS"] == depth
    # parity refuses prompt logprobs on rbln because the plugin cannot compute them: it raises here.
    assert "Index tensor must have the same number of dimensions" in accepted["prompt_logprobs"]

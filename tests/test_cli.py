"""The `parity` command as a user runs it: real subprocesses, stdout/stderr, exit codes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from parity.schemas import Store
from tests.support.cli_run import parity


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str, code: int = 2) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def test_unknown_preset(tmp_path):
    assert_one_line_error(parity("record", "--model", "llama9-400b", "--out", str(tmp_path)), "unknown model", "preset")


def test_missing_model_directory(tmp_path):
    assert_one_line_error(parity("record", "--model", str(tmp_path / "nowhere"), "--out", str(tmp_path)),
                          "not found")


def test_empty_prompt_list(tmp_path, tiny_model):
    empty = tmp_path / "prompts.txt"
    empty.write_text("\n\n")
    assert_one_line_error(parity("record", "--model", str(tiny_model), "--prompts-file", str(empty),
                                 "--out", str(tmp_path / "o")), "prompt list is empty")


def test_bad_jsonl_prompts(tmp_path, tiny_model):
    bad = tmp_path / "prompts.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"text": "wrong key"}\n')
    assert_one_line_error(parity("record", "--model", str(tiny_model), "--prompts-file", str(bad),
                                 "--out", str(tmp_path / "o")), "prompts.jsonl:2")


def test_prompt_longer_than_max_model_len(tmp_path, tiny_model):
    proc = parity("record", "--model", str(tiny_model), "--prompts", "word " * 80, "--max-model-len", "32",
                  "--out", str(tmp_path / "o"))
    assert_one_line_error(proc, "--max-model-len is 32")


def test_unwritable_output_directory(tmp_path, tiny_model):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    assert_one_line_error(parity("record", "--model", str(tiny_model), "--out", str(blocker / "sub")),
                          "cannot create output directory")


def test_device_not_installed_names_the_install_step(tmp_path, tiny_model):
    proc = parity("record", "--device", "rbln", "--model", str(tiny_model), "--out", str(tmp_path))
    assert_one_line_error(proc, "vllm-rbln", "pip install 'parity[rbln]'")


def test_unknown_device(tmp_path):
    assert_one_line_error(parity("record", "--device", "tpu", "--out", str(tmp_path)), "unknown device")


def test_show_and_verify_report_missing_store(tmp_path):
    assert_one_line_error(parity("show", str(tmp_path / "missing")), "no store at")
    assert_one_line_error(parity("verify", str(tmp_path / "missing")), "no store at")


def test_help_lists_every_command():
    proc = parity("--help")
    assert proc.returncode == 0
    for command in ("record", "diff", "show", "verify", "push", "pull", "ls", "demo", "presets"):
        assert command in proc.stdout


@pytest.mark.engine
def test_record_prints_the_store_path_last_and_show_verify_read_it(tmp_path, tiny_model):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "Hello, my name is"}\n{"prompt": "Once upon a time"}\n')
    proc = parity("record", "--model", str(tiny_model), "--prompts-file", str(prompts), "--max-tokens", "5",
                  "--max-model-len", "128", "--out", str(tmp_path / "stores"))
    assert proc.returncode == 0, proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert len(proc.stdout.strip().splitlines()) == 1, "stdout must carry only the result"
    store = Store.open(last)
    assert Path(last).parent == tmp_path / "stores"
    assert [s.generated_len for s in store.manifest.sequences] == [5, 5]

    shown = parity("show", last, "--json")
    assert shown.returncode == 0
    manifest = json.loads(shown.stdout)
    assert manifest["digest"] == store.manifest.digest
    assert manifest["request_key"] == store.manifest.request_key

    verified = parity("verify", last)
    assert verified.returncode == 0 and store.manifest.digest in verified.stdout

    # Tamper with one generated chunk: verify must now fail with exit 1.
    shard = Path(last) / "logprobs" / "c" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x55
    shard.write_bytes(bytes(data))
    assert_one_line_error(parity("verify", last), code=1)


def _synthetic_pair(tmp_path, noise: float, vocab_b: int | None = None):
    import numpy as np

    from parity.differ.testing import SeqData, StoreSpec, greedy_tokens, log_softmax, write_store

    rng = np.random.default_rng(7)
    logits = rng.normal(0, 3, (6, 64))
    ref_rows = log_softmax(logits).astype(np.float32)
    cand_logits = logits + rng.normal(0, noise, logits.shape)
    if vocab_b:
        cand_logits = np.concatenate([cand_logits, np.full((6, vocab_b - 64), -30.0)], axis=1)
    cand_rows = log_softmax(cand_logits).astype(np.float32)
    tokens = greedy_tokens(ref_rows)
    ref, _ = write_store(tmp_path / "ref", StoreSpec(64, [SeqData([1, 2, 3], tokens, ref_rows)]))
    cand, _ = write_store(tmp_path / "cand", StoreSpec(vocab_b or 64, [SeqData([1, 2, 3], tokens, cand_rows)],
                                                     run={"forced": True}))
    return ref, cand


def test_diff_exit_codes_and_reports(tmp_path):
    ref, cand = _synthetic_pair(tmp_path, noise=0.3)
    report_only = parity("diff", str(ref), str(cand), "--no-color", "--json", str(tmp_path / "r.json"),
                         "--html", str(tmp_path / "r.html"))
    assert report_only.returncode == 0, report_only.stderr
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["schema"] == "parity.diff/1" and data["verdict"] == "report"
    assert data["summary"]["positions"] == 6
    assert "<svg" in (tmp_path / "r.html").read_text()
    failing = parity("diff", str(ref), str(cand), "--max-kl", "1e-9")
    assert failing.returncode == 1
    passing = parity("diff", str(ref), str(ref), "--tolerance", "fp32")
    assert passing.returncode == 0


def test_diff_unusable_input_exits_2(tmp_path):
    ref, cand = _synthetic_pair(tmp_path, noise=0.1, vocab_b=80)
    assert_one_line_error(parity("diff", str(ref), str(cand)), "vocab")
    assert_one_line_error(parity("diff", str(ref), str(tmp_path / "missing")), "no store")
    assert_one_line_error(parity("diff", str(ref), str(ref), "--tolerance", "fp8"), "fp8")
    assert_one_line_error(parity("diff", str(ref), str(ref), env={"PARITY_DIFF_KERNEL": "cuda"}),
                          "PARITY_DIFF_KERNEL", "fused, numpy")


def test_diff_kernel_can_be_forced_and_gives_the_same_report(tmp_path):
    ref, cand = _synthetic_pair(tmp_path, noise=0.3)
    reports = {}
    for kernel in ("fused", "numpy"):
        proc = parity("diff", str(ref), str(cand), "--json", str(tmp_path / f"{kernel}.json"),
                      env={"PARITY_DIFF_KERNEL": kernel})
        assert proc.returncode == 0, proc.stderr
        assert f"{kernel} kernel" in proc.stderr
        reports[kernel] = json.loads((tmp_path / f"{kernel}.json").read_text())["summary"]
    assert reports["fused"]["positions"] == reports["numpy"]["positions"] > 0
    assert reports["fused"]["top1_agreement"] == reports["numpy"]["top1_agreement"]
    assert reports["fused"]["kl"]["mean"] == pytest.approx(reports["numpy"]["kl"]["mean"], rel=1e-5)


@pytest.mark.engine
def test_record_following_a_golden_with_diff(tmp_path, golden, perturbed_model):
    proc = parity("record", "--model", str(perturbed_model), "--golden", str(golden.path), "--diff", "--no-color",
                  "--max-model-len", "256", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    store = Store.open(proc.stdout.strip().splitlines()[-1])
    assert store.manifest.run["forced"] and store.manifest.run["golden"] == golden.manifest.digest
    assert "same forced trajectory" in proc.stderr and "verdict" in proc.stderr
    assert "weights differ from the golden" in proc.stderr

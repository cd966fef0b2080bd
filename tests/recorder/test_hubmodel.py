"""`--model ORG/NAME` fetched from the Hub on first use: the real huggingface_hub client against the loopback Hub.

The tiny model is served as a model repository beside files a real repo
carries and vLLM does not load (a duplicate ``.bin``, ``original/``, GGUF,
Flax, TF, ONNX). In-process calls pass the loopback endpoint and cache
explicitly (huggingface_hub reads HF_ENDPOINT and HF_HUB_CACHE when it is
imported); the CLI runs as a subprocess with the hub fixture's environment.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from tests.support.hub_server import READ_TOKEN

from parity.errors import HubAuthError, ModelNotFoundError, UsageError
from parity.recorder.hubmodel import select_files
from parity.recorder.inputs import resolve_model, weights_digest
from parity.schemas import Store
from tests.support.cli_run import parity

REPO = "org/tiny"
# What vLLM loads from the repo below, and so all that may be downloaded.
NEEDED = sorted(["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                 "chat_template.jinja", "model.safetensors"])
PROMPT = ("--prompts", "Hello, my name is")


def repo_files(model_dir: Path) -> dict[str, bytes]:
    files = {p.relative_to(model_dir).as_posix(): p.read_bytes() for p in model_dir.rglob("*") if p.is_file()}
    files.update({
        "pytorch_model.bin": files["model.safetensors"],  # the same weights again, as many repos carry
        "original/consolidated.00.pth": b"\0" * 4096,
        "original/params.json": b"{}",
        "original/tokenizer.model": b"\0" * 512,
        "original/model.safetensors": b"\0" * 256,
        "tiny.Q4_0.gguf": b"GGUF" + b"\0" * 256,
        "flax_model.msgpack": b"\0" * 256,
        "tf_model.h5": b"\0" * 256,
        "onnx/model.onnx": b"\0" * 256,
        "README.md": b"# tiny\n",
        "chat_template.jinja": b"{% for m in messages %}{{ m['content'] }}{% endfor %}",
    })
    return files


@pytest.fixture
def model_repo(hub, tiny_model) -> str:
    """org/tiny on the loopback Hub; the sha of the commit holding the model."""
    return hub.server.create_model(REPO, repo_files(tiny_model))


def resolve(hub, tmp_path: Path, spec: str = REPO, **kw):
    return resolve_model(spec, tmp_path / "parity-cache", endpoint=hub.server.endpoint, hf_cache=hub.cache_dir, **kw)


def snapshot(hub, commit: str) -> Path:
    return hub.cache_dir / "models--org--tiny" / "snapshots" / commit


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert proc.stdout == "" and "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


# -- which files --------------------------------------------------------------------
def test_a_hub_id_downloads_only_what_vllm_loads_then_works_offline(hub, model_repo, tiny_model, tmp_path,
                                                                    monkeypatch):
    model = resolve(hub, tmp_path)
    assert sorted(hub.server.model_downloads(REPO)) == NEEDED
    assert (model.id, model.source, model.revision) == (REPO, "hub", model_repo)
    assert model.path == snapshot(hub, model_repo) and model.weight_files == ("model.safetensors",)
    assert sorted(p.name for p in model.path.iterdir()) == NEEDED
    assert weights_digest(model.path, tmp_path, model.weight_files) == weights_digest(tiny_model, tmp_path / "d")

    # Cached: online, only the question which commit main is; offline, nothing at all.
    hub.server.clear_log()
    assert resolve(hub, tmp_path) == model
    assert [r.path for r in hub.server.requests] == [f"/api/models/{REPO}"] and not hub.server.sent
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.server.clear_log()
    assert resolve(hub, tmp_path) == model
    assert hub.server.requests == []


def test_an_index_picks_the_shards_beside_a_consolidated_file(hub, tmp_path):
    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    index = {"metadata": {}, "weight_map": {"a.weight": shards[0], "b.weight": shards[1]}}
    commit = hub.server.create_model(REPO, {
        # Distinct contents: identical files are one blob, downloaded once.
        "config.json": b"{}", "tokenizer.json": b'{"model": {}}',
        "model.safetensors.index.json": json.dumps(index).encode(),
        shards[0]: b"\1" * 300, shards[1]: b"\2" * 200, "consolidated.safetensors": b"\3" * 500,
        "pytorch_model.bin.index.json": b"{}", "pytorch_model-00001-of-00001.bin": b"\4" * 500,
    })
    model = resolve(hub, tmp_path)
    assert model.revision == commit and model.weight_files == tuple(shards)
    assert sorted(hub.server.model_downloads(REPO)) == sorted(
        ["config.json", "tokenizer.json", "model.safetensors.index.json", *shards])


def test_selection_rule():
    def no_index(name):
        raise AssertionError(f"{name} read")

    listing = ["config.json", "generation_config.json", "tokenizer.model", "special_tokens_map.json",
               "chat_template.json", "modeling_tiny.py", "model.safetensors", "pytorch_model.bin", "model.pt",
               "tiny.gguf", "flax_model.msgpack", "tf_model.h5", "model.onnx", "README.md", "LICENSE",
               "original/consolidated.00.pth", "original/model.safetensors", "onnx/model.onnx"]
    files, weights = select_files(listing, no_index)
    assert weights == ["model.safetensors"]
    assert files == sorted(["config.json", "generation_config.json", "tokenizer.model", "special_tokens_map.json",
                            "chat_template.json", "modeling_tiny.py", "model.safetensors"])
    # No safetensors: the .bin weights, never a training state or .pt.
    files, weights = select_files(["config.json", "pytorch_model.bin", "training_args.bin", "model.pt"], no_index)
    assert (files, weights) == (["config.json", "pytorch_model.bin"], ["pytorch_model.bin"])
    files, weights = select_files(
        ["config.json", "pytorch_model.bin.index.json", "pytorch_model-00001-of-00002.bin",
         "pytorch_model-00002-of-00002.bin", "pytorch_model.bin"],
        lambda name: {"weight_map": {"a": "pytorch_model-00001-of-00002.bin", "b": "pytorch_model-00002-of-00002.bin"}})
    assert weights == ["pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"]
    assert files == ["config.json", "pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin",
                     "pytorch_model.bin.index.json"]


# -- revisions ---------------------------------------------------------------------
def test_revision_pins_a_tag_or_a_commit(hub, model_repo, tmp_path, monkeypatch):
    hub.server.tag(REPO, "v1")
    weights = bytearray(hub.server.content(hub.server.files(REPO, kind="model")["model.safetensors"]))
    weights[-1] ^= 1
    second = hub.server.commit_model(REPO, {"model.safetensors": bytes(weights)}, "retrain")

    by_tag = resolve(hub, tmp_path, revision="v1")
    by_sha = resolve(hub, tmp_path, revision=model_repo)
    latest, by_main = resolve(hub, tmp_path), resolve(hub, tmp_path, revision="main")
    assert by_tag == by_sha and by_tag.revision == model_repo and by_tag.path == snapshot(hub, model_repo)
    assert latest == by_main and latest.revision == second != model_repo
    digest = lambda m: weights_digest(m.path, tmp_path, m.weight_files)  # noqa: E731
    assert digest(by_tag) != digest(latest)

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the tag resolves through the cache's refs
    hub.server.clear_log()
    assert resolve(hub, tmp_path, revision="v1") == by_tag and hub.server.requests == []
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(ModelNotFoundError, match="revision 'v9' not found in model repo org/tiny"):
        resolve(hub, tmp_path, revision="v9")


def test_a_preset_naming_a_hub_id_is_fetched_the_same_way(hub, tiny_model, tmp_path):
    commit = hub.server.create_model("meta-llama/Llama-3.2-1B", repo_files(tiny_model))
    hub.server.tag("meta-llama/Llama-3.2-1B", "v1")
    model = resolve(hub, tmp_path, "llama3.2-1b", revision="v1")
    assert (model.id, model.source, model.revision) == ("meta-llama/Llama-3.2-1B", "hub", commit)
    assert sorted(hub.server.model_downloads("meta-llama/Llama-3.2-1B")) == NEEDED


def test_revision_needs_a_hub_model(tmp_path, tiny_model):
    with pytest.raises(UsageError, match="--revision"):
        resolve_model("tiny", tmp_path, revision="main")
    with pytest.raises(UsageError, match="--revision"):
        resolve_model(str(tiny_model), tmp_path, revision="main")
    bisect = parity("bisect", "--model", str(tiny_model), "--revision", "v1", "--golden", str(tmp_path))
    assert_one_line_error(bisect, "--revision pins a Hugging Face Hub model")


def test_dry_run_names_the_commit_and_leaves_the_weights_on_the_hub(hub, model_repo, tiny_model, tmp_path):
    hub.server.tag(REPO, "v1")
    hub.server.commit_model(REPO, {"README.md": b"# tiny, later\n"})
    args = ("record", "--dry-run", "--revision", "v1", *PROMPT, "--max-tokens", "4", "--out", str(tmp_path))
    proc = parity(*args[:2], "--model", REPO, *args[2:])
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert plan["model"]["revision"] == model_repo and plan["model"]["source"] == "hub"
    assert plan["request_key"] is None and plan["model"]["weights_missing"] == ["model.safetensors"]
    assert any("record downloads them" in n for n in plan["notes"])
    assert "model.safetensors" not in hub.server.model_downloads(REPO)

    resolve(hub, tmp_path, revision="v1")  # the weights are cached now
    plan = json.loads(parity(*args[:2], "--model", REPO, *args[2:]).stdout)
    local = parity("record", "--dry-run", "--model", str(tiny_model), *PROMPT, "--max-tokens", "4")
    assert plan["request_key"] == json.loads(local.stdout)["request_key"] is not None
    assert_one_line_error(parity(*args[:2], "--model", "tiny", *args[2:]), "--revision")


# -- failures ----------------------------------------------------------------------
def record(tmp_path: Path, model: str = REPO, env: dict | None = None) -> subprocess.CompletedProcess:
    return parity("record", "--model", model, *PROMPT, "--max-tokens", "1", "--out", str(tmp_path / "stores"),
                  env=env)


def test_a_wrong_token_is_one_line(hub, model_repo, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    assert_one_line_error(record(tmp_path), "rejected the credentials (401)", "org/tiny", "HF_TOKEN")
    assert not (hub.cache_dir / "models--org--tiny" / "snapshots").exists()


def test_a_missing_repo_is_one_line(hub, model_repo, tmp_path):
    assert_one_line_error(record(tmp_path, "org/nothing-here"), "model repo org/nothing-here was not found")


def test_a_private_repo_needs_a_token(hub, tiny_model, tmp_path, monkeypatch):
    hub.server.create_model("org/private-tiny", repo_files(tiny_model), private=True)
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(ModelNotFoundError, match="not found") as refused:
        resolve(hub, tmp_path, "org/private-tiny")
    assert "HF_TOKEN" in refused.value.one_line()
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    with pytest.raises(HubAuthError, match="401"):
        resolve(hub, tmp_path, "org/private-tiny")
    monkeypatch.setenv("HF_TOKEN", READ_TOKEN)
    assert resolve(hub, tmp_path, "org/private-tiny").weight_files == ("model.safetensors",)


def test_a_dropped_connection_is_one_line_and_the_next_run_completes(hub, model_repo, tiny_model, tmp_path):
    size = (tiny_model / "model.safetensors").stat().st_size
    hub.server.drop_at["model.safetensors"] = size // 3
    assert_one_line_error(record(tmp_path), "download of model org/tiny", "run the same command again")
    sent = [s for s in hub.server.sent if s.path == "model.safetensors"]
    assert sent and not any(s.complete for s in sent)
    snap = snapshot(hub, model_repo)
    assert (snap / "config.json").is_file() and not (snap / "model.safetensors").exists()

    # In between, the cache alone is not taken for a model.
    assert_one_line_error(record(tmp_path, env={"HF_HUB_OFFLINE": "1"}), "incomplete", "missing model.safetensors",
                          "HF_HUB_OFFLINE")

    del hub.server.drop_at["model.safetensors"]
    model = resolve(hub, tmp_path)
    assert weights_digest(model.path, tmp_path, model.weight_files) == weights_digest(tiny_model, tmp_path / "d")


def test_a_truncated_cached_file_is_not_taken_for_complete(hub, model_repo, tiny_model, tmp_path, monkeypatch):
    model = resolve(hub, tmp_path)
    blob = (model.path / "model.safetensors").resolve()
    size = blob.stat().st_size
    with open(blob, "r+b") as f:
        f.truncate(size // 2)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="incomplete .* missing model.safetensors"):
        resolve(hub, tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert resolve(hub, tmp_path) == model and blob.stat().st_size == size
    assert (weights_digest(model.path, tmp_path / "d1", model.weight_files)
            == weights_digest(tiny_model, tmp_path / "d2"))


# -- a recording -----------------------------------------------------------------
@pytest.mark.engine
def test_record_by_hub_id_downloads_once_then_records_offline(hub, model_repo, tiny_model, tmp_path):
    args = ("record", "--model", REPO, *PROMPT, "--max-tokens", "4", "--max-model-len", "128",
            "--out", str(tmp_path / "stores"))
    first = parity(*args)
    assert first.returncode == 0, first.stderr
    assert sorted(hub.server.model_downloads(REPO)) == NEEDED
    assert f"downloading {REPO}@{model_repo[:12]}" in first.stderr

    hub.server.clear_log()
    second = parity(*args, env={"HF_HUB_OFFLINE": "1"})
    assert second.returncode == 0, second.stderr
    assert hub.server.requests == []
    assert f"using {REPO}@{model_repo[:12]} from the Hugging Face cache (HF_HUB_OFFLINE)" in second.stderr

    online, offline = (Store.open(p.stdout.strip().splitlines()[-1]).manifest for p in (first, second))
    assert online.request.model == offline.request.model and online.request_key == offline.request_key
    model = online.request.model
    assert (model.id, model.source, model.revision) == (REPO, "hub", model_repo)
    assert model.weights_digest == weights_digest(tiny_model, tmp_path / "d")

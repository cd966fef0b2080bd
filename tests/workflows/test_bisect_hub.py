"""The bring-up workflow across hosts: goldens at depths pushed as one set, bisect against the repo.

Both "hosts" use the hf device (transformers float32) so no engine starts: the
Hub side (one commit for the set, the depth in each index entry, pulling only
the depths probed) is what this test is about. The loopback server speaks the
Hub's HTTP protocol to the real huggingface_hub client.
"""

from __future__ import annotations

import json

import pytest

from parity.schemas import Store
from tests.support.cli_run import parity

LAYERS = 4
DRIFT_LAYER = 2  # binary search probes depths 4, 2, 3: depth 1's golden is never needed


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from parity.recorder.tinymodel import build_tiny_model, perturb_layer

    root = tmp_path_factory.mktemp("models")
    good = build_tiny_model(root / "good", num_layers=LAYERS, vocab_size=512)
    return good, perturb_layer(good, root / "bad", DRIFT_LAYER, seed=5)


def test_push_a_depth_set_in_one_commit_then_bisect_against_the_repo(hub, models, tmp_path):
    good, bad = models
    goldens_dir = tmp_path / "goldens"
    recorded = parity("record", "--device", "hf", "--model", str(good), "--depths", "every", "--max-tokens", "4",
                      "--prompts", "hello world", "--prompts", "the cat sat", "--max-model-len", "128",
                      "--out", str(goldens_dir))
    assert recorded.returncode == 0, recorded.stderr[-2000:]
    paths = recorded.stdout.strip().splitlines()[-LAYERS:]
    assert len(paths) == LAYERS and all(Store.open(p).verify() for p in paths)

    commits_before = hub.server.count("POST", "/commit/")
    pushed = parity("push", str(goldens_dir), "--repo", "org/goldens")
    assert pushed.returncode == 0, pushed.stderr[-2000:]
    assert hub.server.count("POST", "/commit/") - commits_before == 1  # the whole set in one commit
    assert len(pushed.stdout.strip().splitlines()) == LAYERS
    again = parity("push", *paths, "--repo", "org/goldens")
    assert again.returncode == 0 and "nothing uploaded" in again.stderr

    listed = parity("ls", "--repo", "org/goldens", "--json")
    entries = json.loads(listed.stdout)
    assert sorted((e["num_hidden_layers"] or LAYERS) for e in entries) == list(range(1, LAYERS + 1))
    weights = {e["weights_digest"] for e in entries}
    assert weights == {Store.open(paths[-1]).manifest.request.model.weights_digest}

    hub.server.clear_log()
    out = tmp_path / "candidates"
    result = parity("bisect", "--device", "hf", "--model", str(bad), "--golden", "org/goldens", "--out", str(out),
                    "--max-model-len", "128", "--json", str(tmp_path / "b.json"), "--no-color")
    assert result.returncode == 1, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1].startswith(f"first drift at depth {DRIFT_LAYER + 1} of {LAYERS}")
    doc = json.loads((tmp_path / "b.json").read_text())
    probed = {d["num_hidden_layers"] for d in doc["depths"]}
    assert probed == {2, 3, LAYERS}
    # Only the probed depths' goldens were downloaded.
    fetched = {p.split("/")[2] for p in hub.server.downloads() if p.startswith("goldens/")}
    digests = {Store.open(p).manifest.digest[9:33] for p in paths}
    assert fetched and fetched <= {d + ".parity.zarr" for d in digests}
    assert len(fetched) == len(probed)

"""Thresholds, verdicts, the JSON document, renderings, import hygiene."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from parity import differ
from parity.differ import TOLERANCE_PRESETS, Thresholds
from parity.differ.testing import pair_rows
from parity.errors import UsageError


@pytest.fixture
def report_pair(make_store, rng):
    ref, cand = pair_rows(rng, 30, noise=0.1)
    ref_path, ref_m = make_store([ref, ref[:10]])
    toks = [list(np.argmax(ref, axis=1)), list(np.argmax(ref[:10], axis=1))]
    cand_path, _ = make_store([cand, cand[:10]], tokens=toks, run={"golden": ref_m.digest}, device="rbln")
    return ref_path, cand_path


def test_thresholds_presets_and_merge():
    assert Thresholds().is_empty()
    fp32 = Thresholds.preset("fp32")
    assert fp32.max_kl == 1e-4 and not fp32.is_empty()
    assert Thresholds.preset("BF16").max_kl == 0.08
    assert set(TOLERANCE_PRESETS) >= {"fp32", "bf16"}
    with pytest.raises(UsageError, match="fp64"):
        Thresholds.preset("fp64")
    merged = fp32.merge(Thresholds(max_kl=0.5))
    assert merged.max_kl == 0.5 and merged.max_mean_kl == fp32.max_mean_kl
    assert merged.to_dict() == {"max_kl": 0.5, "max_mean_kl": fp32.max_mean_kl, "min_top1": fp32.min_top1,
                                "max_abs": fp32.max_abs}
    with pytest.raises(UsageError):
        Thresholds(min_top1=1.5)
    with pytest.raises(UsageError):
        Thresholds(max_kl=-1)


def test_verdicts(report_pair):
    ref, cand = report_pair
    r = differ.diff(ref, cand)
    assert (r.verdict, r.exit_code, r.failures) == ("report", 0, [])
    kl_max = r.summary["kl"]["max"]
    ok = differ.diff(ref, cand, thresholds=Thresholds(max_kl=kl_max * 1.01, min_top1=0.0))
    assert (ok.verdict, ok.exit_code) == ("pass", 0)
    bad = differ.diff(ref, cand, thresholds=Thresholds(max_kl=kl_max * 0.99, max_mean_kl=0.0, max_abs=0.0, min_top1=1.0))
    assert (bad.verdict, bad.exit_code) == ("fail", 1)
    assert len(bad.failures) >= 3
    assert any("max KL" in f for f in bad.failures)
    assert any("mean KL" in f for f in bad.failures)


def test_json_document_shape(report_pair, tmp_path):
    ref, cand = report_pair
    r = differ.diff(ref, cand, thresholds=Thresholds.preset("bf16"), worst=4)
    path = r.write_json(tmp_path / "diff.json")
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    doc = json.loads(path.read_text())
    assert doc["schema"] == "parity.diff/1"
    assert {"reference", "candidate", "summary", "sequences", "worst", "verdict", "thresholds"} <= set(doc)
    s = doc["summary"]
    assert isinstance(s["positions"], int) and s["positions"] == 40
    assert set(s["kl"]) == {"mean", "median", "p90", "p99", "p999", "max"}
    assert all(isinstance(v, float) for v in s["kl"].values())
    for k in ("top1_agreement", "max_abs", "token_match_rate"):
        assert isinstance(s[k], float)
    assert set(s["delta_p"]) >= {"mean", "rms"} and isinstance(s["nan_positions"], int)
    assert [q["index"] for q in doc["sequences"]] == [0, 1]
    for q in doc["sequences"]:
        assert {"index", "positions", "first_divergence", "kl_mean", "kl_max", "top1_agreement"} <= set(q)
    assert len(doc["worst"]) == 4
    kls = [w["kl"] for w in doc["worst"]]
    assert kls == sorted(kls, reverse=True)
    assert doc["verdict"] in ("pass", "fail")
    assert doc["thresholds"]["max_kl"] == 0.08
    assert doc["reference"]["digest"].startswith("xxh3-128:")


def test_render_text_and_html(report_pair):
    ref, cand = report_pair
    names = {1: "hello", 2: "world"}
    r = differ.diff(ref, cand, thresholds=Thresholds(max_kl=1e-9), decode=lambda t: names.get(t, f"<{t}>"))
    plain = differ.render_text(r, color=False)
    assert "\033[" not in plain
    for needle in ("Outliers (absΔ ≥ EPS)", "pearson", "Top-5", "head…tail", "verdict: FAIL", "device differs"):
        assert needle in plain
    assert re.search(r"'<\d+>'", plain)  # decoded token texts are shown
    assert "\033[" in differ.render_text(r, color=True)
    page = differ.render_html(r)
    assert page.startswith("<!DOCTYPE html>")
    assert "<svg" in page and '<canvas id="heat">' in page  # histogram; the heatmap
    assert "verdict: " in page and "FAIL" in page and "device differs" in page
    assert re.search(r"&#x27;&lt;\d+&gt;&#x27;|'&lt;\d+&gt;'", page)  # decoded texts in the worst table
    # self-contained: inline scripts only, no URL but SVG's namespace
    assert not re.search(r"<script[^>]*\bsrc=", page)
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in page


def test_store_objects_accepted(report_pair):
    from parity.schemas import Store

    ref, cand = report_pair
    r = differ.diff(Store.open(ref), Store.open(cand))
    assert r.summary["positions"] == 40


def test_import_does_not_pull_torch_or_vllm():
    code = "import sys; import parity.differ; bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'vllm', 'typer')]; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

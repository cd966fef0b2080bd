"""`parity diff G C1 C2 C3`: one reference, several candidates, as a user runs it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from parity import differ
from parity.differ import multi
from parity.differ.testing import SeqData, StoreSpec, greedy_tokens, log_softmax, write_store
from tests.support.cli_run import parity


@pytest.fixture
def series(tmp_path):
    """A golden and three candidates on its trajectory: two clean releases and one that drifts."""
    rng = np.random.default_rng(7)
    logits = [rng.normal(0, 3, (20, 64)), rng.normal(0, 3, (12, 64))]
    rows = [log_softmax(x).astype(np.float32) for x in logits]
    tokens = [greedy_tokens(r) for r in rows]

    def store(folder, noise, **spec):
        seqs = [SeqData([1, 2, 3], t, log_softmax(x + rng.normal(0, noise, x.shape)).astype(np.float32) if noise
                        else r) for x, r, t in zip(logits, rows, tokens)]
        path, m = write_store(tmp_path / folder, StoreSpec(64, seqs, **spec))
        return path, m

    golden, gm = store("golden", 0)
    cands = []
    for version, noise in (("0.9.1", 1e-4), ("0.9.2", 1e-4), ("0.9.3", 0.3)):
        path, _ = store("candidates", noise, run={"forced": True, "golden": gm.digest}, device="rbln",
                        versions={"rebel-compiler": version, "vllm-rbln": "0.12.0"})
        cands.append(path)
    return golden, cands


def test_three_candidates_side_by_side(series, tmp_path):
    golden, cands = series
    out = tmp_path / "cmp.json"
    proc = parity("diff", str(golden), *map(str, cands), "--tolerance", "fp32", "--json", str(out), "--no-color")
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == "1 of 3 candidates fail (candidate 3)"
    verdict = next(line for line in lines if line.startswith("verdict"))
    assert verdict.split()[1:] == ["PASS", "PASS", "FAIL"]
    header = lines[lines.index("") + 1]
    assert "rebel-compiler=0.9.1" in header and "rebel-compiler=0.9.3" in header and "vllm-rbln" not in header
    doc = json.loads(out.read_text())
    assert doc["schema"] == "parity.compare/1" and doc["reference"]["digest"] == differ.diff(golden, cands[0]).reference["digest"]
    assert [c["schema"] for c in doc["candidates"]] == ["parity.diff/1"] * 3
    # Each candidate's report is the one a two-store diff gives.
    for c, path in zip(doc["candidates"], cands):
        alone = json.loads(differ.diff(golden, path, thresholds=differ.Thresholds.preset("fp32")).to_json())
        assert c == alone


def test_one_candidate_keeps_the_diff_schema_and_output(series, tmp_path):
    golden, cands = series
    out = tmp_path / "one.json"
    proc = parity("diff", str(golden), str(cands[0]), "--json", str(out), "--no-color")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())["schema"] == "parity.diff/1"
    assert proc.stdout == differ.render_text(differ.diff(golden, cands[0]), color=False) + "\n"


def test_candidates_from_a_directory(series):
    golden, cands = series
    proc = parity("diff", str(golden), "--candidates-from", str(cands[0].parent), "--tolerance", "fp32", "--no-color")
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[-1].startswith("1 of 3 candidates fail (candidate ")
    failing = lines[-1].rstrip(")").split()[-1]
    assert any(line.startswith(f"[{failing} rbln rebel-compiler=0.9.3]") for line in lines)  # the drifting one
    empty = parity("diff", str(golden), "--candidates-from", str(golden.parent))
    assert empty.returncode == 2 and "no stores other than the reference" in empty.stderr


def test_all_passing_and_report_only_summaries(series):
    golden, cands = series
    ok = parity("diff", str(golden), str(cands[0]), str(cands[1]), "--tolerance", "fp32", "--no-color")
    assert ok.returncode == 0 and ok.stdout.strip().splitlines()[-1] == "all 2 candidates pass"
    report_only = parity("diff", str(golden), *map(str, cands), "--no-color")
    assert report_only.returncode == 0
    assert report_only.stdout.strip().splitlines()[-1] == "3 candidates compared (no thresholds: report only)"


def test_labels_name_only_what_differs_between_candidates(series):
    golden, cands = series
    reports = multi.compare_all(golden, cands)
    got = multi.labels(reports)
    assert [label.split()[0] for label in got] == ["1", "2", "3"]
    assert got[0].endswith("rebel-compiler=0.9.1") and "vllm-rbln" not in got[0]


@pytest.mark.parametrize("args, fragment", [
    (["diff"], "Missing argument"),
    (["diff", "--no-such-option", "a"], "No such option"),
    (["record", "--bogus"], "No such option"),
    (["bisect"], "Missing option"),
])
def test_usage_mistakes_print_the_usage_line_and_exit_2(args, fragment):
    proc = parity(*args)
    assert proc.returncode == 2
    assert proc.stderr.startswith("Usage: parity ") and fragment in proc.stderr
    assert "unexpected" not in proc.stderr and "Traceback" not in proc.stderr


def test_a_diff_without_any_candidate_is_a_usage_error(series):
    golden, _ = series
    proc = parity("diff", str(golden))
    assert proc.returncode == 2 and proc.stderr.startswith("error: no candidate")


def test_html_of_a_series_holds_every_candidate(series, tmp_path):
    golden, cands = series
    page = tmp_path / "series.html"
    proc = parity("diff", str(golden), *map(str, cands), "--html", str(page), "--no-color")
    assert proc.returncode == 0, proc.stderr
    text = page.read_text()
    for label in multi.labels(multi.compare_all(golden, cands)):
        assert label in text
    assert "<canvas" in text and "Trend across candidates" in text

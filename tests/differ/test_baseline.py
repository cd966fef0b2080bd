"""A measured noise floor: diff(..., baseline=STORE, max_floor_ratio=R)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import special

from parity import differ
from parity.differ import Thresholds
from parity.differ.testing import log_softmax
from parity.errors import IncompatibleStoresError, ParityError, UsageError

V = 512
ROWS = (30, 17)  # generated rows of the two sequences
PROMPT_ROWS = 4  # DEFAULT_PROMPT has 5 tokens


def kl_rows(lr: np.ndarray, lc: np.ndarray) -> np.ndarray:
    return special.rel_entr(np.exp(lr.astype(np.float64)), np.exp(lc.astype(np.float64))).sum(axis=1)


def noisy(rng, rows: list[np.ndarray], noise: float) -> list[np.ndarray]:
    return [log_softmax(r.astype(np.float64) + rng.standard_normal(r.shape) * noise).astype(np.float32) for r in rows]


@pytest.fixture
def trio(make_store, rng):
    """(reference, candidate, baseline) paths and their rows: the baseline is
    closer to the reference than the candidate, all on its forced trajectory."""
    gen = [log_softmax(rng.standard_normal((n, V)) * 3).astype(np.float32) for n in ROWS]
    prompt = [log_softmax(rng.standard_normal((PROMPT_ROWS, V)) * 3).astype(np.float32) for _ in ROWS]
    tokens = [list(np.argmax(g, axis=1)) for g in gen]
    ref, ref_m = make_store(gen, prompt_rows=prompt, tokens=tokens)
    rows = {"ref": (gen, prompt)}
    paths = {"ref": ref}
    for name, noise, extra in (("cand", 0.3, {"device": "rbln"}), ("base", 0.1, {"dtype": "bfloat16"})):
        g, p = noisy(rng, gen, noise), noisy(rng, prompt, noise)
        paths[name], _ = make_store(g, prompt_rows=p, tokens=tokens, run={"golden": ref_m.digest}, **extra)
        rows[name] = (g, p)
    return paths, rows


def p99(kl: np.ndarray) -> float:
    return float(np.percentile(kl, 99))


def test_floor_ratios_match_separate_diffs(trio):
    paths, rows = trio
    # The floor reported, not gated (floor_rule=False): the verdict stays the thresholds' ("report").
    r = differ.diff(paths["ref"], paths["cand"], baseline=paths["base"], floor_rule=False)
    alone = differ.diff(paths["ref"], paths["cand"])
    floor = differ.diff(paths["ref"], paths["base"])

    # The baseline changes nothing of the candidate's own comparison.
    assert r.summary == alone.summary and r.sequences == alone.sequences
    for kind in ("generated", "prompt"):
        for k, v in alone.positions[kind].items():
            np.testing.assert_array_equal(r.positions[kind][k], v)
    assert r.verdict == "report" and alone.floor is None

    f = r.floor
    assert f["baseline"] == floor.candidate and f["baseline"]["dtype"] == "bfloat16"
    assert f["forced_trajectory"] and f["gated_statistic"] == "kl_p99" and f["max_floor_ratio"] is None
    for label, s in (("generated", floor.summary), ("prompt", floor.prompt)):
        assert f[label]["positions"] == s["positions"]
        assert (f[label]["kl_mean"], f[label]["kl_p50"], f[label]["kl_p99"], f[label]["kl_max"]) == (
            s["kl"]["mean"], s["kl"]["median"], s["kl"]["p99"], s["kl"]["max"])
        assert f[label]["top1_agreement"] == s["top1_agreement"]
    for key, ratios, c, b in (("generated", f["ratios"], alone.summary, floor.summary),
                              ("prompt", f["prompt_ratios"], alone.prompt, floor.prompt)):
        assert ratios["kl_mean"] == pytest.approx(c["kl"]["mean"] / b["kl"]["mean"], rel=1e-12)
        assert ratios["kl_p99"] == pytest.approx(c["kl"]["p99"] / b["kl"]["p99"], rel=1e-12)
        assert ratios["kl_max"] == pytest.approx(c["kl"]["max"] / b["kl"]["max"], rel=1e-12)
        dc, db = 1 - c["top1_agreement"], 1 - b["top1_agreement"]
        expected = (1.0 if dc == db else math.inf) if db == 0 else dc / db
        assert ratios["top1_disagreement"] == pytest.approx(expected, rel=1e-12)

    # And independently of the differ: row-by-row KL in float64.
    kl_c = np.concatenate([kl_rows(a, b) for a, b in zip(rows["ref"][0], rows["cand"][0])])
    kl_b = np.concatenate([kl_rows(a, b) for a, b in zip(rows["ref"][0], rows["base"][0])])
    assert f["generated"]["positions"] == len(kl_b) == sum(ROWS)
    assert f["generated"]["kl_p99"] == pytest.approx(p99(kl_b), rel=1e-4)
    assert f["ratios"]["kl_p99"] == pytest.approx(p99(kl_c) / p99(kl_b), rel=1e-4)
    assert f["ratios"]["kl_mean"] == pytest.approx(kl_c.mean() / kl_b.mean(), rel=1e-4)
    assert f["ratios"]["kl_p99"] > 1  # the candidate's noise is three times the baseline's

    doc = json.loads(r.to_json())
    assert doc["schema"] == "parity.diff/1"
    assert set(doc["floor"]) >= {"baseline", "generated", "prompt", "ratios", "max_floor_ratio", "gated_statistic",
                                 "baseline_verdict"}
    assert doc["floor"]["ratios"]["kl_p99"] == f["ratios"]["kl_p99"]
    assert json.loads(alone.to_json())["floor"] is None


def test_gate_passes_above_the_measured_ratio_and_fails_below(trio):
    paths, _ = trio
    c = differ.diff(paths["ref"], paths["cand"]).summary["kl"]["p99"]
    b = differ.diff(paths["ref"], paths["base"]).summary["kl"]["p99"]
    measured = c / b
    # The KL p99 ratio gate alone (floor_rule=False: no per-position gate).
    ok = differ.diff(paths["ref"], paths["cand"], baseline=paths["base"], max_floor_ratio=measured * (1 + 1e-9),
                     floor_rule=False)
    assert (ok.verdict, ok.exit_code, ok.failures) == ("pass", 0, [])
    limit = measured * (1 - 1e-9)
    bad = differ.diff(paths["ref"], paths["cand"], baseline=paths["base"], max_floor_ratio=limit, floor_rule=False)
    assert (bad.verdict, bad.exit_code) == ("fail", 1)
    assert len(bad.failures) == 1
    line = bad.failures[0]
    assert line.startswith("generated: KL p99 ") and "the baseline's floor" in line and f"(limit {limit:g}x)" in line
    assert f"is {measured:.2g}x" in line
    assert bad.to_dict()["floor"]["max_floor_ratio"] == limit


def test_gate_combines_with_thresholds(trio):
    paths, _ = trio
    base_kw = dict(baseline=paths["base"], floor_rule=False)
    kl_max = differ.diff(paths["ref"], paths["cand"]).summary["kl"]["max"]
    loose, tight = Thresholds(max_kl=kl_max * 2, min_top1=0.0), Thresholds(max_kl=kl_max / 2)
    assert differ.diff(paths["ref"], paths["cand"], thresholds=loose, max_floor_ratio=1e6, **base_kw).verdict == "pass"
    only_kl = differ.diff(paths["ref"], paths["cand"], thresholds=tight, max_floor_ratio=1e6, **base_kw)
    assert only_kl.verdict == "fail" and all("max KL" in f for f in only_kl.failures)
    only_floor = differ.diff(paths["ref"], paths["cand"], thresholds=loose, max_floor_ratio=0.5, **base_kw)
    assert only_floor.verdict == "fail" and len(only_floor.failures) == 1
    assert "baseline's floor" in only_floor.failures[0]
    # The baseline is judged by the same thresholds (it is not gated on itself).
    assert only_kl.floor["baseline_verdict"] == differ.diff(paths["ref"], paths["base"], thresholds=tight).verdict


def test_baseline_failing_the_thresholds_is_a_warning(trio):
    paths, _ = trio
    r = differ.diff(paths["ref"], paths["cand"], baseline=paths["base"], thresholds=Thresholds(max_kl=1e-12))
    assert r.floor["baseline_verdict"] == "fail" and r.floor["baseline_failures"]
    assert any("baseline itself fails the thresholds" in w for w in r.warnings)


def test_zero_floor_warning_and_ratio_semantics(make_store, rng, trio):
    paths, rows = trio
    gen, prompt = rows["ref"]
    tokens = [list(np.argmax(g, axis=1)) for g in gen]
    # The reference's own rows recorded again: a floor of exactly zero.
    same, _ = make_store(gen, prompt_rows=prompt, tokens=tokens, run={"forced": True}, device="hf")
    r = differ.diff(paths["ref"], paths["cand"], baseline=same, max_floor_ratio=1e6)
    assert any("bit-identical" in w and "floor is zero" in w for w in r.warnings)
    assert r.floor["generated"]["kl_p99"] == 0 and r.floor["generated"]["kl_max"] == 0
    assert r.floor["ratios"]["kl_p99"] == math.inf and r.floor["ratios"]["kl_mean"] == math.inf
    assert r.verdict == "fail" and "zero floor" in r.failures[0]
    assert json.loads(r.to_json())["floor"]["ratios"]["kl_p99"] == "inf"
    # A candidate that equals the reference sits on a zero floor: ratio 1, the gate passes.
    on_floor = differ.diff(paths["ref"], same, baseline=same, max_floor_ratio=1.0)
    assert on_floor.floor["ratios"]["kl_p99"] == 1.0 and on_floor.verdict == "pass"
    # No warning when the floor is measured on other numerics.
    assert not any("floor is zero" in w for w in differ.diff(paths["ref"], paths["cand"], baseline=paths["base"]).warnings)


def test_ratio_function():
    from parity.differ.floor import ratio

    assert ratio(3.0, 1.5) == 2.0
    assert ratio(0.0, 0.0) == 1.0 and ratio(2.0, 0.0) == math.inf and ratio(0.0, 2.0) == 0.0
    assert ratio(math.inf, math.inf) == 1.0 and ratio(1.0, math.inf) == 0.0 and ratio(math.inf, 2.0) == math.inf
    assert ratio(None, 1.0) is None and ratio(1.0, None) is None


@pytest.mark.parametrize("kwargs,match", [
    ({"max_floor_ratio": 2.0}, "needs a baseline"),
    ({"max_floor_ratio": -1.0, "baseline": "B"}, "non-negative"),
    ({"max_floor_ratio": float("nan"), "baseline": "B"}, "non-negative"),
    ({"max_floor_ratio": "2", "baseline": "B"}, "non-negative"),
])
def test_bad_floor_ratio_is_a_usage_error(trio, kwargs, match):
    paths, _ = trio
    if kwargs.get("baseline") == "B":
        kwargs = {**kwargs, "baseline": paths["base"]}
    with pytest.raises(UsageError, match=match) as e:
        differ.diff(paths["ref"], paths["cand"], **kwargs)
    assert "\n" not in e.value.one_line()


def test_incompatible_baseline_fails_like_a_candidate(make_store, rng, trio):
    paths, _ = trio
    other, _ = make_store([log_softmax(rng.standard_normal((5, 600))).astype(np.float32)])
    with pytest.raises(IncompatibleStoresError) as e:
        differ.diff(paths["ref"], paths["cand"], baseline=other)
    assert isinstance(e.value, ParityError) and "\n" not in e.value.one_line()
    assert str(e.value).startswith("baseline ") and "600" in str(e.value)
    with pytest.raises(IncompatibleStoresError, match="600"):
        differ.diff(paths["ref"], other)


def test_free_running_baseline_is_flagged(make_store, rng, trio):
    paths, rows = trio
    gen, prompt = rows["base"]
    tokens = [list(np.argmax(g, axis=1)) for g in rows["ref"][0]]
    tokens[0][7] = (tokens[0][7] + 1) % V  # diverges at generated index 7, no forced trajectory
    free, _ = make_store(gen, prompt_rows=prompt, tokens=tokens)
    r = differ.diff(paths["ref"], paths["cand"], baseline=free)
    assert not r.floor["forced_trajectory"]
    assert r.floor["generated"]["positions"] == 8 + ROWS[1]
    assert any("free-running" in w for w in r.floor["warnings"])


def test_render_floor(trio):
    paths, _ = trio
    r = differ.diff(paths["ref"], paths["cand"], baseline=paths["base"], max_floor_ratio=1.0)
    ratio = r.floor["ratios"]["kl_p99"]
    text = differ.render_text(r, color=False)
    assert "Noise floor (baseline vs reference)" in text
    assert f"baseline: cpu bfloat16 (full vocab) {r.floor['baseline']['path']}" in text
    assert f"candidate KL p99 is {ratio:.2g}x the baseline floor (mean {r.floor['ratios']['kl_mean']:.2g}x" in text
    assert "limit 1x" in text and "max_floor_ratio=1" in text and "verdict: FAIL" in text
    page = differ.render_html(r)
    assert "Noise floor" in page and f"{ratio:.2g}x" in page and "bfloat16" in page
    plain = differ.render_text(differ.diff(paths["ref"], paths["cand"]), color=False)
    assert "Noise floor" not in plain

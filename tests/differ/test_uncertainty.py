"""Standard errors, intervals and KL against position (differ/uncertainty.py, summary.kl_by_position)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from parity import differ
from parity.differ import uncertainty as unc
from parity.differ.summary import DRIFT_RATIO, kl_by_confidence, kl_by_position, position_edges, uncertain
from parity.differ.testing import DEFAULT_PROMPT, log_softmax, pair_rows


# -- the estimators against independent computations ----------------------------

def test_iid_se_is_llama_cpp_formula(rng):
    y = rng.exponential(1e-3, 500)
    est = unc.mean(y, unc.clusters(None, len(y)))
    # llama.cpp's --kl-divergence: sqrt((sum2/n - mean^2) / (n - 1))
    n = len(y)
    expect = math.sqrt((np.sum(y * y) / n - np.mean(y) ** 2) / (n - 1))
    assert est.method == unc.BY_POSITION and est.se == pytest.approx(expect, rel=1e-9)
    assert est.lo < est.value < est.hi


def test_cluster_se_is_the_ratio_estimator_by_hand():
    # Three sequences of unequal length; the formula written out with Python lists.
    seqs = [[1.0, 2.0, 3.0], [10.0, 12.0], [4.0, 4.0, 5.0, 6.0]]
    y = np.concatenate([np.array(s) for s in seqs])
    seq = np.concatenate([np.full(len(s), i) for i, s in enumerate(seqs)])
    r = sum(map(sum, seqs)) / sum(map(len, seqs))
    g = len(seqs)
    var = g / (g - 1) * sum((sum(s) - r * len(s)) ** 2 for s in seqs) / len(y) ** 2
    est = unc.mean(y, unc.clusters(seq, len(y)))
    assert est.method == unc.BY_SEQUENCE and est.clusters == 3
    assert est.value == pytest.approx(r) and est.se == pytest.approx(math.sqrt(var), rel=1e-12)
    # 95% interval with Student-t at G - 1 = 2 degrees of freedom (4.303)
    assert est.hi - est.value == pytest.approx(4.302652729911275 * est.se, rel=1e-6)


def test_cluster_se_agrees_with_a_cluster_bootstrap(rng):
    # 60 sequences whose positions share a sequence level: the positions' i.i.d.
    # SE is far too small, the cluster SE matches resampling whole sequences.
    levels = rng.lognormal(-8, 1.0, 60)
    lengths = rng.integers(20, 200, 60)
    seq = np.repeat(np.arange(60), lengths)
    y = levels[seq] * rng.exponential(1.0, len(seq))
    est = unc.mean(y, unc.clusters(seq, len(y)))
    sums, sizes = np.bincount(seq, weights=y), np.bincount(seq)
    boot = []
    for _ in range(4000):
        pick = rng.integers(0, 60, 60)
        boot.append(sums[pick].sum() / sizes[pick].sum())
    assert est.se == pytest.approx(np.std(boot), rel=0.12)
    iid = unc.mean(y, unc.clusters(None, len(y)))
    assert iid.se < 0.6 * est.se


def test_one_sequence_falls_back_to_positions():
    c = unc.clusters(np.zeros(10, np.int64), 10)
    assert c.method == unc.BY_POSITION and c.count == 10
    assert unc.clusters(np.array([3, 3, 7]), 3).method == unc.BY_SEQUENCE


def test_full_agreement_interval_is_below_one():
    ok = np.ones(50, bool)
    est = unc.rate(ok, unc.clusters(None, 50))
    assert est.value == 1.0 and est.se == 0.0
    lo, hi = est.interval
    assert hi == 1.0 and lo < 0.95
    # Clopper-Pearson's lower bound for 50 of 50 is 0.025 ** (1/50) = 0.929; Wilson's n / (n + z^2) the same
    assert lo == pytest.approx(50 / (50 + 1.959964 ** 2), rel=1e-5)
    assert lo == pytest.approx(0.025 ** (1 / 50), abs=0.005)
    # by sequence: fewer degrees of freedom, a wider interval
    by_seq = unc.rate(ok, unc.clusters(np.repeat(np.arange(5), 10), 50))
    assert by_seq.lo < lo


def test_wilson_matches_the_textbook_interval():
    # Newcombe (1998), example: 81 of 263 -> [0.2553, 0.3662]
    lo, hi = unc.wilson(81, 263, 1.959964)
    assert (round(lo, 4), round(hi, 4)) == (0.2553, 0.3662)


@pytest.mark.parametrize("df", [1, 2, 3, 4, 7, 10, 30, 99, 150, 1000])
def test_student_t_against_scipy(df):
    stats = pytest.importorskip("scipy.stats")
    for p in (0.975, 1 - unc.normal_sf(3.0)):
        assert unc.t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-6)
    for t in (0.2, 1.5, 3.0, 8.0):
        assert unc.t_sf(t, df) == pytest.approx(stats.t.sf(t, df), rel=1e-6, abs=1e-12)


def test_slope_se_against_a_hand_sandwich_and_numpy(rng):
    x = np.tile(np.arange(100.0), 6)
    seq = np.repeat(np.arange(6), 100)
    y = 1e-6 * x + rng.normal(0, 1e-4, len(x)) + np.repeat(rng.normal(0, 5e-5, 6), 100)
    fit = unc.slope(x, y, unc.clusters(seq, len(x)))
    b, a = np.polyfit(x, y, 1)
    assert fit.slope == pytest.approx(b, rel=1e-9)
    # The CR1 sandwich with matrices: (X'X)^-1 (sum_g X_g' e_g e_g' X_g) (X'X)^-1
    X = np.column_stack([np.ones_like(x), x])
    e = y - X @ np.array([a, b])
    bread = np.linalg.inv(X.T @ X)
    meat = sum(np.outer(X[seq == g].T @ e[seq == g], X[seq == g].T @ e[seq == g]) for g in range(6))
    n, k, G = len(x), 2, 6
    V = G / (G - 1) * (n - 1) / (n - k) * bread @ meat @ bread
    assert fit.se == pytest.approx(math.sqrt(V[1, 1]), rel=1e-9)
    assert fit.df == 5 and fit.method == unc.BY_SEQUENCE


# -- KL against position ---------------------------------------------------------

def _positions(kl, pos, seq, top1=None):
    return {"kl": np.asarray(kl, float), "pos": np.asarray(pos), "seq": np.asarray(seq),
            "top1": np.ones(len(kl), bool) if top1 is None else top1}


def test_edges_cover_32_to_128k():
    assert position_edges(31).tolist() == [0, 16, 32]
    e = position_edges(131071)
    assert e[-1] == 131072 and len(e) - 1 == 14


def test_drift_is_named_for_kl_growing_with_position(rng):
    seqs, length = 8, 1024
    pos = np.tile(np.arange(length), seqs)
    seq = np.repeat(np.arange(seqs), length)
    kl = 1e-5 * (1 + pos / 64) * rng.exponential(1.0, len(pos))  # linear growth, heavy noise
    p = kl_by_position(_positions(kl, pos, seq))
    assert p["drift"] is True
    assert p["verdict"].startswith("KL grows with position: ")
    assert "RoPE" in p["verdict"] and "0-15" in p["verdict"] and "512-1023" in p["verdict"]
    assert p["slope_per_1k"] == pytest.approx(1e-5 / 64 * 1000, rel=0.15)
    assert p["slope_per_1k"] / p["slope_per_1k_se"] > 3 and p["last_to_first"] >= DRIFT_RATIO
    assert p["se_method"] == "by sequence" and p["slope_df"] == seqs - 1
    assert [b["position"] for b in p["bins"]][:3] == [[0, 15], [16, 31], [32, 63]]
    assert sum(b["positions"] for b in p["bins"]) == len(kl)
    last = p["bins"][-1]
    assert last["kl_p99"] is not None and last["kl_mean_se"] > 0 and last["sequences"] == seqs


@pytest.mark.parametrize("seed", range(5))
def test_flat_noisy_kl_is_not_called_drift(seed):
    r = np.random.default_rng(seed)
    seqs, length = 6, 700
    pos = np.tile(np.arange(length), seqs)
    seq = np.repeat(np.arange(seqs), length)
    kl = 1e-4 * r.lognormal(0, 1.5, len(pos)) * np.repeat(r.lognormal(0, 0.5, seqs), length)
    p = kl_by_position(_positions(kl, pos, seq))
    assert p["drift"] is False
    assert p["verdict"].startswith("KL against position: no drift: slope ")


def test_a_significant_but_small_rise_is_not_drift(rng):
    pos = np.tile(np.arange(512), 10)
    seq = np.repeat(np.arange(10), 512)
    kl = 1e-4 * (1 + 0.2 * pos / 512) + rng.normal(0, 1e-7, len(pos))  # +20%: real, too small to name
    p = kl_by_position(_positions(kl, pos, seq))
    assert p["slope_p"] < 1e-6 and p["drift"] is False
    assert "significant but under 2x" in p["verdict"]


def test_one_spike_at_the_end_is_not_drift(rng):
    pos = np.arange(2000)
    kl = rng.exponential(1e-5, 2000)
    kl[-1] = 1.0  # one huge position far out: moves the slope and its robust SE alike
    p = kl_by_position(_positions(kl, pos, np.zeros(2000, np.int64)))
    assert p["se_method"] == "by position" and p["drift"] is False


def test_inf_and_nan_kl_stay_out_of_means_and_fit(rng):
    pos = np.tile(np.arange(40), 3)
    seq = np.repeat(np.arange(3), 40)
    kl = rng.exponential(1e-5, 120)
    kl[5], kl[50] = np.inf, np.nan
    p = kl_by_position(_positions(kl, pos, seq))
    assert p["bins"][0]["nonfinite_kl_positions"] == 2
    fin = np.isfinite(kl) & (pos < 16)
    assert p["bins"][0]["kl_mean"] == pytest.approx(kl[fin].mean())
    assert math.isfinite(p["slope_per_1k"])


def test_too_few_positions_give_no_fit():
    p = kl_by_position(_positions([1e-5, 2e-5], [3, 4], [0, 0]))
    assert p["slope_per_1k"] is None and p["drift"] is False and "no fit" in p["verdict"]
    assert kl_by_position(_positions([], [], [])) is None


def test_confidence_buckets_carry_se(rng):
    n = 400
    pos = {"kl": rng.exponential(1e-4, n), "top1": rng.random(n) > 0.05, "ref_conf": rng.random(n),
           "seq": np.repeat(np.arange(4), n // 4)}
    for b in kl_by_confidence(pos):
        if b["positions"] >= 2:
            m = (pos["ref_conf"] >= b["confidence"][0]) & (pos["ref_conf"] < b["confidence"][1])
            assert b["kl_mean_se"] == pytest.approx(uncertain(pos, m)["kl_mean_se"])
            assert b["kl_mean_se"] > 0 and b["se_method"] == "by sequence"
            assert b["top1_agreement_ci95"][0] <= b["top1_agreement"] <= b["top1_agreement_ci95"][1]


# -- through a diff: the JSON and the terminal ---------------------------------------

@pytest.fixture
def drifting_pair(make_store, rng):
    """4 forced sequences of 120 generated tokens whose candidate noise grows with position."""
    refs, cands, toks = [], [], []
    for _ in range(4):
        logits = rng.standard_normal((120, 256)) * 3
        scale = 0.01 * (1 + np.arange(120) / 8)[:, None]
        refs.append(log_softmax(logits).astype(np.float32))
        cands.append(log_softmax(logits + rng.standard_normal(logits.shape) * scale).astype(np.float32))
        toks.append(list(np.argmax(refs[-1], axis=1)))
    pref, pcand = pair_rows(rng, len(DEFAULT_PROMPT) - 1, vocab=256, noise=0.05)
    ref_path, ref_m = make_store(refs, prompt_rows=[pref] * 4)
    cand_path, _ = make_store(cands, tokens=toks, prompt_rows=[pcand] * 4, run={"forced": True})
    return ref_path, cand_path


def test_fields_reach_the_json_and_the_terminal(drifting_pair):
    r = differ.diff(*drifting_pair)
    doc = json.loads(r.to_json())
    s = doc["summary"]
    assert s["se_method"] == "by sequence" and s["se_clusters"] == 4
    assert s["kl_mean_se"] > 0
    lo, hi = s["kl_mean_ci95"]
    assert lo < s["kl"]["mean"] < hi
    assert s["top1_agreement_ci95"][0] <= s["top1_agreement"] <= s["top1_agreement_ci95"][1]
    assert doc["prompt"]["se_method"] == "by sequence"
    assert {"kl_mean_se", "top1_agreement_ci95"} <= set(doc["kl_by_confidence"][0])
    gen = doc["kl_by_position"]["generated"]
    assert gen["drift"] is True and gen["verdict"].startswith("KL grows with position")
    assert doc["kl_by_position"]["prompt"]["positions"] == 4 * (len(DEFAULT_PROMPT) - 1)
    # the existing keys keep their shape
    assert set(s["kl"]) == {"mean", "median", "p90", "p99", "p999", "max"}

    text = differ.render_text(r, color=False)
    assert "95% intervals (by sequence, 4 sequences): KL mean [" in text
    assert gen["verdict"] in text
    assert "KL by generated position (absolute position in the sequence)" in text
    assert "KL by prompt position" in text
    assert "± SE" in text


def test_the_html_page_shows_position_and_intervals(drifting_pair):
    r = differ.diff(*drifting_pair)
    page = differ.render_html(r)
    assert "KL against position" in page and "KL grows with position" in page
    assert "KL mean 95% interval" in page and "top-1 agreement 95% interval" in page
    assert 'aria-label="KL by position"' in page


def test_identical_stores_are_certain_in_kl_not_in_agreement(make_store, rng):
    ref, _ = pair_rows(rng, 30)
    path, _ = make_store([ref, ref])
    r = differ.diff(path, path)
    assert r.summary["kl_mean_se"] == 0.0 and r.summary["kl_mean_ci95"] == [0.0, 0.0]
    assert r.summary["top1_agreement"] == 1.0 and r.summary["top1_agreement_ci95"][0] < 1.0
    assert r.kl_by_position["generated"]["drift"] is False

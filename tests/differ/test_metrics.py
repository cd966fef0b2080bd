"""Per-position metrics and summaries against independent computations (scipy)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import special, stats

from parity import differ
from parity.differ import metrics
from parity.differ import stream as core
from parity.differ.testing import DEFAULT_PROMPT as PROMPT
from parity.differ.testing import log_softmax, pair_rows

V = 512
# The C kernel and the numpy kernel (its fallback without a C compiler) are
# both held to the independent computations below.
KERNELS = pytest.mark.parametrize("kernel", ["fused", "numpy"])


def ref_kl(lr: np.ndarray, lc: np.ndarray) -> np.ndarray:
    """KL(ref||cand) per row from the stored float32 values, by scipy."""
    p = np.exp(lr.astype(np.float64))
    q = np.exp(lc.astype(np.float64))
    return special.rel_entr(p, q).sum(axis=1)


def forced_pair(make_store, ref_rows, cand_rows, **kw):
    ref_path, ref_m = make_store(ref_rows, **kw)
    tokens = [list(np.argmax(r, axis=1)) for r in ref_rows]
    cand_path, _ = make_store(cand_rows, tokens=tokens, device="rbln", run={"golden": ref_m.digest}, **kw)
    return ref_path, cand_path


@KERNELS
def test_full_vocab_metrics_match_scipy(kernel, make_store, rng):
    pairs = [pair_rows(rng, n) for n in (37, 20, 51)]
    ref_rows, cand_rows = [p[0] for p in pairs], [p[1] for p in pairs]
    ref_path, cand_path = forced_pair(make_store, ref_rows, cand_rows)
    report = differ.diff(ref_path, cand_path, kernel=kernel)
    assert report.forced
    lr, lc = np.concatenate(ref_rows), np.concatenate(cand_rows)
    x, y = lr.astype(np.float64), lc.astype(np.float64)
    pos = report.positions["generated"]

    kl = ref_kl(lr, lc)
    np.testing.assert_allclose(pos["kl"], kl, rtol=1e-5, atol=1e-9)
    top_r, top_c = np.argmax(x, axis=1), np.argmax(y, axis=1)
    np.testing.assert_array_equal(pos["top1"], top_r == top_c)
    for k in (5, 10):
        a = np.argsort(-x, axis=1)[:, :k]
        b = np.argsort(-y, axis=1)[:, :k]
        expect = [len(set(u) & set(w)) / k for u, w in zip(a, b)]
        np.testing.assert_allclose(pos[f"overlap{k}"], expect)
    rows = np.arange(len(x))
    np.testing.assert_allclose(pos["delta_p"], np.exp(y[rows, top_r]) - np.exp(x[rows, top_r]), rtol=1e-9, atol=1e-12)
    # rank of the reference's top token in the candidate ("max" ranks of the negated row = 1 + count greater)
    expect_rank = [stats.rankdata(-row, method="min")[t] for row, t in zip(y, top_r)]
    np.testing.assert_array_equal(pos["rank"], expect_rank)
    d = np.abs(x - y)
    np.testing.assert_allclose(pos["max_abs"], d.max(axis=1), rtol=1e-12)
    np.testing.assert_allclose(pos["mean_abs"], d.mean(axis=1), rtol=1e-9)
    np.testing.assert_array_equal(pos["outliers"], (d >= 0.5).sum(axis=1))
    np.testing.assert_allclose(pos["pearson"], [stats.pearsonr(u, w)[0] for u, w in zip(x, y)], rtol=1e-9)

    s = report.summary
    assert s["positions"] == len(kl)
    assert s["kl"]["mean"] == pytest.approx(kl.mean(), rel=1e-5)
    for key, q in (("median", 50), ("p90", 90), ("p99", 99), ("p999", 99.9)):
        assert s["kl"][key] == pytest.approx(stats.scoreatpercentile(kl, q), rel=1e-5)
    assert s["kl"]["max"] == pytest.approx(kl.max(), rel=1e-5)
    assert s["top1_agreement"] == pytest.approx(np.mean(top_r == top_c))
    dp = np.exp(y[rows, top_r]) - np.exp(x[rows, top_r])
    assert s["delta_p"]["rms"] == pytest.approx(np.sqrt(np.mean(dp**2)), rel=1e-9)
    assert s["max_abs"] == pytest.approx(d.max())
    assert s["nan_positions"] == 0
    # per sequence
    start = 0
    for seq, rr in zip(report.sequences, ref_rows):
        k = kl[start : start + len(rr)]
        assert seq["positions"] == len(rr)
        assert seq["kl_mean"] == pytest.approx(k.mean(), rel=1e-5)
        assert seq["kl_max"] == pytest.approx(k.max(), rel=1e-5)
        start += len(rr)


@KERNELS
def test_closed_form_two_point_kl(kernel, make_store):
    """Two-token distributions (the rest masked with -inf): KL has a closed form."""
    ps = [0.9, 0.5, 0.99, 0.3]
    qs = [0.8, 0.5, 0.9, 0.6]
    ref = np.full((4, 64), -np.inf, np.float32)
    cand = np.full((4, 64), -np.inf, np.float32)
    for i, (p, q) in enumerate(zip(ps, qs)):
        ref[i, 7], ref[i, 9] = np.log(p), np.log(1 - p)
        cand[i, 7], cand[i, 9] = np.log(q), np.log(1 - q)
    ref_path, cand_path = forced_pair(make_store, [ref], [cand])
    report = differ.diff(ref_path, cand_path, kernel=kernel)
    pos = report.positions["generated"]
    p64 = np.exp(ref.astype(np.float64))
    expect = [p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q)) for p, q in zip(p64[:, 7], np.exp(cand[:, 7].astype(np.float64)))]
    np.testing.assert_allclose(pos["kl"], expect, rtol=1e-6, atol=1e-12)
    assert pos["kl"][1] == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_array_equal(pos["neginf_ref"], [62] * 4)
    assert report.summary["masked_positions"] == 4
    assert report.summary["nonfinite_kl_positions"] == 0
    np.testing.assert_array_equal(pos["finite"], [2] * 4)  # |delta| over entries finite on both sides


@KERNELS
def test_nan_and_inf_are_counted_not_fatal(kernel, make_store, rng, tmp_path):
    ref, cand = pair_rows(rng, 8)
    cand = cand.copy()
    cand[2, int(np.argmax(ref[2]))] = -np.inf  # reference mass on a token the candidate rules out
    cand[5, 11] = np.nan
    cand[6, 3] = np.inf
    ref_path, cand_path = forced_pair(make_store, [ref], [cand])
    report = differ.diff(ref_path, cand_path, kernel=kernel, thresholds=differ.Thresholds(max_mean_kl=10.0))
    pos = report.positions["generated"]
    assert pos["kl"][2] == np.inf
    assert np.isnan(pos["kl"][5])
    assert pos["nan_cand"][5] == 1 and pos["posinf_cand"][6] == 1
    s = report.summary
    assert s["nan_positions"] == 1
    assert s["inf_positions"] == 1
    assert s["nonfinite_kl_positions"] == 3  # inf, nan, and -inf from the +inf candidate entry
    assert s["kl"]["max"] == np.inf
    finite = np.isfinite(pos["kl"])
    expect = ref_kl(ref, cand)[finite]
    assert s["kl"]["mean"] == pytest.approx(expect.mean(), rel=1e-5)
    # masked statistics still defined over the finite entries of the NaN row
    x, y = ref[5].astype(np.float64), cand[5].astype(np.float64)
    ok = np.isfinite(y)
    assert pos["max_abs"][5] == pytest.approx(np.abs(x - y)[ok].max())
    assert pos["pearson"][5] == pytest.approx(stats.pearsonr(x[ok], y[ok])[0], rel=1e-9)
    assert report.verdict == "fail"
    assert any("NaN" in f for f in report.failures)
    out = report.write_json(tmp_path / "r.json")
    doc = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert doc["summary"]["kl"]["max"] == "inf"


def test_streaming_blocks_give_same_result(make_store, rng, monkeypatch):
    pairs = [pair_rows(rng, n) for n in (70, 45)]
    ref_path, cand_path = forced_pair(make_store, [p[0] for p in pairs], [p[1] for p in pairs])
    whole = differ.diff(ref_path, cand_path)
    monkeypatch.setattr(core, "BLOCK_BYTES", 16 * 4 * V)  # 16-row blocks
    monkeypatch.setattr(metrics, "SUB_ELEMENTS", 3 * V)  # 3-row sub-blocks
    seen = []
    small = differ.diff(ref_path, cand_path, progress=lambda done, total: seen.append((done, total)))
    for k, v in whole.positions["generated"].items():
        np.testing.assert_array_equal(v, small.positions["generated"][k], err_msg=k)
    assert len(seen) > 6
    assert seen[-1] == (115, 115)
    assert all(a <= b for (a, _), (b, _) in zip(seen, seen[1:]))


def test_topk_grouped_matches_argsort(rng):
    rows = rng.standard_normal((9, 3001)).astype(np.float32)  # not a multiple of the group width
    rows[0, -1] = 50.0  # the largest entry in the partial last group
    ids, vals = metrics.topk(rows, 10)
    np.testing.assert_array_equal(ids, np.argsort(-rows, axis=1, kind="stable")[:, :10])
    np.testing.assert_array_equal(vals, -np.sort(-rows, axis=1)[:, :10])


def test_prompt_positions_compared_separately(make_store, rng):
    ref, cand = pair_rows(rng, 12)
    pref, pcand = pair_rows(rng, len(PROMPT) - 1, noise=0.05)
    ref_path, ref_m = make_store([ref], prompt_rows=[pref])
    cand_path, _ = make_store([cand], prompt_rows=[pcand], tokens=[list(np.argmax(ref, axis=1))],
                              run={"forced": True})
    report = differ.diff(ref_path, cand_path)
    assert report.prompt["positions"] == len(PROMPT) - 1
    assert report.summary["positions"] == 12
    np.testing.assert_allclose(report.positions["prompt"]["kl"], ref_kl(pref, pcand), rtol=1e-5, atol=1e-10)
    np.testing.assert_array_equal(report.positions["prompt"]["pos"], np.arange(1, len(PROMPT)))
    assert report.prompt["kl"]["mean"] == pytest.approx(ref_kl(pref, pcand).mean(), rel=1e-5)
    assert report.sequences[0]["prompt"]["positions"] == len(PROMPT) - 1


def test_kl_by_confidence_buckets(make_store, rng):
    ref, cand = pair_rows(rng, 40)
    ref_path, cand_path = forced_pair(make_store, [ref], [cand])
    report = differ.diff(ref_path, cand_path)
    conf = np.exp(ref.astype(np.float64)).max(axis=1)
    kl = ref_kl(ref, cand)
    assert sum(b["positions"] for b in report.kl_by_confidence) == 40
    for b in report.kl_by_confidence:
        lo, hi = b["confidence"]
        m = (conf >= lo) & ((conf <= hi) if hi == 1.0 else (conf < hi))
        assert b["positions"] == m.sum()
        if m.any():
            assert b["kl_mean"] == pytest.approx(kl[m].mean(), rel=1e-5)


def test_identical_stores_have_zero_kl(make_store, rng):
    ref, _ = pair_rows(rng, 10)
    ref_path, _ = make_store([ref])
    report = differ.diff(ref_path, ref_path, thresholds=differ.Thresholds.preset("fp32"))
    assert report.summary["kl"]["max"] == 0.0
    assert report.summary["top1_agreement"] == 1.0
    assert report.summary["token_match_rate"] == 1.0
    assert report.verdict == "pass" and report.exit_code == 0


def test_topn_stores_approximate(make_store, rng):
    n = 8
    logits = rng.standard_normal((15, V)) * 3
    lr = log_softmax(logits)
    lc = log_softmax(logits + rng.standard_normal(logits.shape) * 0.3)
    ir = np.argsort(-lr, axis=1)[:, :n]
    ic = np.argsort(-lc, axis=1)[:, :n]
    vr = np.take_along_axis(lr, ir, axis=1).astype(np.float32)
    vc = np.take_along_axis(lc, ic, axis=1).astype(np.float32)
    ref_path, ref_m = make_store([vr], ids=[ir.astype(np.int32)], topn=n)
    cand_path, _ = make_store([vc], ids=[ic.astype(np.int32)], topn=n, tokens=[list(ir[:, 0])],
                              run={"golden": ref_m.digest})
    report = differ.diff(ref_path, cand_path)
    pos = report.positions["generated"]
    assert report.summary["approximate"]
    assert any("approximate" in w for w in report.warnings)
    np.testing.assert_array_equal(pos["top1"], ir[:, 0] == ic[:, 0])
    np.testing.assert_allclose(pos["overlap5"], [len(set(a[:5]) & set(b[:5])) / 5 for a, b in zip(ir, ic)])
    # independent: KL over the reference's listed ids, both renormalised there;
    # ids missing in the candidate take the candidate's smallest listed value.
    expect = []
    for i in range(15):
        cmap = dict(zip(ic[i], vc[i].astype(np.float64)))
        floor = vc[i].astype(np.float64).min()
        q = np.array([cmap.get(t, floor) for t in ir[i]])
        p = vr[i].astype(np.float64)
        expect.append(special.rel_entr(special.softmax(p), special.softmax(q)).sum())
    np.testing.assert_allclose(pos["kl"], expect, rtol=1e-6, atol=1e-12)
    expect_dp = [np.exp(dict(zip(ic[i], vc[i].astype(np.float64))).get(ir[i, 0], np.nan)) - np.exp(float(vr[i, 0]))
                 for i in range(15)]
    np.testing.assert_allclose(pos["delta_p"], expect_dp, rtol=1e-9, equal_nan=True)


def test_topn_candidate_against_full_reference(make_store, rng):
    n = 6
    ref, cand_full = pair_rows(rng, 10)
    ic = np.argsort(-cand_full, axis=1)[:, :n].astype(np.int32)
    vc = np.take_along_axis(cand_full, ic, axis=1)
    ref_path, ref_m = make_store([ref])
    cand_path, _ = make_store([vc], ids=[ic], topn=n, vocab_size=V, tokens=[list(np.argmax(ref, axis=1))],
                              run={"forced": True})
    report = differ.diff(ref_path, cand_path)
    pos = report.positions["generated"]
    np.testing.assert_array_equal(pos["top1"], np.argmax(ref, axis=1) == ic[:, 0])
    assert report.summary["approximate"]

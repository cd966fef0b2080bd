"""The C kernel for full-vocabulary rows, held to a row-by-row float64/scipy
computation that shares no code with either kernel, and to the numpy kernel."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import special, stats

from parity.differ import metrics
from parity.differ.testing import log_softmax, pair_rows

EPS = 0.5


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return math.nan  # undefined (scipy warns and returns NaN)
    return float(stats.pearsonr(a, b)[0])


def expected_row(x: np.ndarray, y: np.ndarray, eps: float) -> dict:
    """Every metric of one row pair, one entry at a time where it matters."""
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    both = np.isfinite(x64) & np.isfinite(y64)
    order_x = np.argsort(-x64, kind="stable")
    order_y = np.argsort(-y64, kind="stable")
    t = int(order_x[0])
    p, q = np.exp(x64), np.exp(y64)
    kl = float(special.rel_entr(p, q).sum())
    d = np.abs(x64[both] - y64[both])
    out = {
        "kl": kl,
        "ref_top": t,
        "cand_top": int(order_y[0]),
        "top1": t == int(order_y[0]),
        "rank": float(stats.rankdata(-y64, method="min")[t]),
        "ref_conf": math.exp(x64[t]),
        "delta_p": math.exp(y64[t]) - math.exp(x64[t]),
        "finite": int(both.sum()),
        "neginf_ref": int(np.sum(x64 == -np.inf)),
        "neginf_cand": int(np.sum(y64 == -np.inf)),
        "max_abs": float(d.max()) if len(d) else math.nan,
        "mean_abs": float(d.mean()) if len(d) else math.nan,
        "outliers": int(np.sum(d >= eps)),
        "pearson": pearson(x64[both], y64[both]),
    }
    for k in (5, 10):
        out[f"overlap{k}"] = len(set(order_x[:k]) & set(order_y[:k])) / k if len(x) >= k else math.nan
    return out


def check(got: dict, rows_x: np.ndarray, rows_y: np.ndarray, eps: float = EPS) -> None:
    for i, (x, y) in enumerate(zip(rows_x, rows_y)):
        want = expected_row(x, y, eps)
        for k, v in want.items():
            g = got[k][i]
            if k in ("kl", "pearson", "mean_abs", "ref_conf", "delta_p"):
                rtol = {"kl": 1e-5, "pearson": 1e-9, "mean_abs": 1e-9}.get(k, 1e-12)
                assert g == pytest.approx(v, rel=rtol, abs=1e-12, nan_ok=True), f"row {i} {k}: {g} != {v}"
            elif k == "max_abs":
                assert g == pytest.approx(v, rel=1e-15, nan_ok=True), f"row {i} {k}"
            else:
                assert g == v or (isinstance(v, float) and math.isnan(v) and math.isnan(g)), f"row {i} {k}: {g} != {v}"


@pytest.fixture(scope="module")
def fused():
    if metrics._kernel is None:
        pytest.fail("the C kernel (differ/_kernel.c) was not built: `make install` builds it with the system C compiler")
    return lambda x, y, eps=EPS: metrics.full_block(x, y, eps, "fused")


@pytest.mark.parametrize("vocab", [1000, 32003, 13, 7])  # tails of every length, fewer entries than top-10
def test_fused_kernel_matches_row_by_row_computation(fused, rng, vocab):
    x, y = pair_rows(rng, 12, vocab=vocab, noise=0.3)
    check(fused(x, y), x, y)


def test_fused_kernel_on_masked_tokens(fused, rng):
    """-inf entries: statistics over entries finite on both sides, KL = inf
    where the candidate rules out a token the reference allows."""
    x, y = pair_rows(rng, 8, vocab=301)
    x[0, :50] = y[0, :50] = -np.inf  # masked on both sides
    x[1, 7] = -np.inf  # reference rules out a token: no KL term
    y[2, 300] = -np.inf  # candidate rules it out: KL is +inf
    y[3, :] = -np.inf
    y[3, 5] = 0.0
    x[4, :] = -np.inf  # a whole row masked
    x[4, 0] = 0.0
    got = fused(x, y)
    check(got, x, y)
    assert math.isinf(got["kl"][2]) and not math.isinf(got["kl"][1])
    assert got["neginf_ref"][0] == 50 and got["finite"][0] == 251


def test_fused_kernel_hands_nan_and_posinf_rows_to_numpy(fused, rng):
    x, y = pair_rows(rng, 6, vocab=256)
    x[1, 3] = np.nan
    y[2, 9] = np.inf
    x[3, :] += 100.0  # not log-probs at all: exp would overflow float32
    got = fused(x, y)
    ref = metrics.full_block(x, y, EPS, "numpy")
    assert got["nan_ref"][1] == 1 and got["posinf_cand"][2] == 1
    for k in metrics.FIELDS:
        np.testing.assert_array_equal(got[k][1:4], ref[k][1:4], err_msg=k)
    check({k: v[[0, 4, 5]] for k, v in got.items()}, x[[0, 4, 5]], y[[0, 4, 5]])
    assert got["kl"][3] == pytest.approx(expected_row(x[3], y[3], EPS)["kl"], rel=1e-5)


def test_fused_kernel_ties_keep_the_lower_id_first(fused):
    x = np.full((2, 40), -5.0, np.float32)
    y = x.copy()
    x[0, [3, 17, 30]] = -1.0
    y[0, [30, 17]] = -1.0
    y[1, 25] = 0.0  # row 1 of x is all ties: its top is id 0
    got = fused(x, y)
    check(got, x, y)
    assert list(got["ref_top"]) == [3, 0]


def test_fused_kernel_counts_outliers_for_any_eps(fused, rng):
    x, y = pair_rows(rng, 4, vocab=29)  # 29 = 3 * 8 + 5: a padded tail
    for eps in (0.0, 1e-3, 2.0):
        check(fused(x, y, eps), x, y, eps)


def test_fused_and_numpy_kernels_agree(fused, rng):
    logits = rng.standard_normal((64, 4096)) * 4
    x = log_softmax(logits).astype(np.float32)
    y = log_softmax(logits + rng.standard_normal(logits.shape) * 0.05).astype(np.float32)
    a, b = fused(x, y), metrics.full_block(x, y, EPS, "numpy")
    # The fused kernel also hands ``flips`` the reference row's sum (the numpy path lets flips sum it).
    np.testing.assert_allclose(a.pop(metrics.REF_SUM), x.astype(np.float64).sum(axis=1), rtol=1e-9)
    for k, v in a.items():
        if v.dtype.kind == "f":
            np.testing.assert_allclose(v, b[k], rtol=1e-5 if k == "kl" else 1e-9, err_msg=k)
        else:
            np.testing.assert_array_equal(v, b[k], err_msg=k)


def test_fused_kernel_rejects_wrong_buffers(fused):
    k = metrics._kernel
    x = np.zeros((2, 8), np.float32)
    with pytest.raises(TypeError):
        k.full_rows(x.astype(np.float64), x, EPS, np.empty((2, k.NF)), np.empty((2, k.NI), np.int64))
    with pytest.raises(ValueError):
        k.full_rows(x, x[:1], EPS, np.empty((2, k.NF)), np.empty((2, k.NI), np.int64))
    with pytest.raises(ValueError, match="contiguous"):
        k.full_rows(x, x[:, ::2], EPS, np.empty((2, k.NF)), np.empty((2, k.NI), np.int64))


def test_forcing_an_unbuilt_kernel_names_the_way_out(monkeypatch):
    from parity.errors import UsageError

    monkeypatch.setattr(metrics, "_kernel", None)  # as on a machine without a C compiler
    with pytest.raises(UsageError, match="PARITY_DIFF_KERNEL=numpy"):
        metrics.resolve_kernel("fused")
    assert metrics.resolve_kernel("numpy") == "numpy"
    with pytest.raises(UsageError, match="fused, numpy"):
        metrics.resolve_kernel("gpu")

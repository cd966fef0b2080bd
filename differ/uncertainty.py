"""Standard errors and intervals of the diff's statistics, sequences as clusters.

Positions of one sequence are not independent draws: a prompt that is hard
for the candidate makes every position of that sequence drift together, so
an i.i.d. standard error over positions (llama.cpp's ``--kl-divergence``:
sqrt(var / n)) understates the uncertainty of a mean over a few long
sequences. With two or more sequences every estimator here is
cluster-robust, the sequence the cluster ("by sequence"); with one, each
position is its own cluster ("by position"), which for a mean is exactly the
i.i.d. formula. Pure numpy and ``math``: ``differ`` imports no scipy.

References: Cochran, *Sampling Techniques* (3rd ed., 1977), 6.11 (the
variance of a ratio estimator over clusters); Liang & Zeger (1986) and
Cameron & Miller, "A Practitioner's Guide to Cluster-Robust Inference"
(J. Human Resources, 2015) for the sandwich variance, its G/(G-1) small-sample
factor (Stata's CR1) and Student-t with G-1 degrees of freedom; Wilson (1927)
for the score interval of a proportion; Korn & Graubard (1998) for using it
with an effective sample size under clustering; Abramowitz & Stegun 26.7.3-4
for Student's t distribution at integer degrees of freedom.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

BY_SEQUENCE, BY_POSITION = "by sequence", "by position"
LEVEL = 0.95  # the reported intervals' coverage
# Above this many degrees of freedom Student's t is the normal to < 1e-3 at 3 sigma.
_T_EXACT_DF = 2000


@dataclass(frozen=True)
class Clusters:
    """Cluster labels 0..count-1 for each value, and how they were chosen."""

    labels: np.ndarray
    count: int
    method: str  # BY_SEQUENCE or BY_POSITION


def clusters(seq: np.ndarray | None, n: int) -> Clusters:
    """Sequences as clusters when the values come from two or more of them,
    else one cluster per position (the i.i.d. case)."""
    if seq is not None and len(seq) == n and n:
        uniq, labels = np.unique(np.asarray(seq), return_inverse=True)
        if len(uniq) >= 2:
            return Clusters(labels.astype(np.int64), int(len(uniq)), BY_SEQUENCE)
    return Clusters(np.arange(n, dtype=np.int64), int(n), BY_POSITION)


def subset(c: Clusters, mask: np.ndarray) -> Clusters:
    """The clusters of the values where ``mask`` holds, relabelled 0..k-1 (a
    subset of one sequence's values stays by sequence only with two or more left)."""
    n = int(np.count_nonzero(mask))
    if c.method == BY_POSITION:
        return Clusters(np.arange(n, dtype=np.int64), n, BY_POSITION)
    return clusters(c.labels[mask], n)


@dataclass(frozen=True)
class Estimate:
    """A mean or a rate with its standard error and 95% interval."""

    value: float | None
    se: float | None
    lo: float | None
    hi: float | None
    n: int  # values the estimate is over
    clusters: int
    method: str

    @property
    def interval(self) -> list[float] | None:
        return None if self.lo is None or self.hi is None else [self.lo, self.hi]


def _df(c: Clusters) -> int:
    """Degrees of freedom of a cluster-robust mean: G - 1 (Cameron & Miller 2015, II.C)."""
    return max(c.count - 1, 1)


def mean(y: np.ndarray, c: Clusters, *, lower: float | None = None) -> Estimate:
    """The mean of ``y`` (all values, finite, one per position) with its standard error.

    The mean is the ratio estimator r = sum(Y_g) / sum(N_g) over clusters g
    (Y_g a cluster's sum, N_g its size); its linearised variance (Cochran
    6.11, the CR1 sandwich of an intercept-only regression) is

        Var(r) = G / (G - 1) * sum_g (Y_g - r N_g)^2 / N^2.

    With one value per cluster this is var(y, ddof=1) / N exactly: the
    i.i.d. standard error. The interval is r +- t(0.975, G - 1) SE, cut at
    ``lower`` (0 for KL, which cannot be negative).
    """
    y = np.asarray(y, dtype=np.float64)
    n = len(y)
    if n == 0:
        return Estimate(None, None, None, None, 0, c.count, c.method)
    r = float(np.mean(y))
    if c.count < 2:
        return Estimate(r, None, None, None, n, c.count, c.method)
    sums = np.bincount(c.labels, weights=y, minlength=c.count)
    sizes = np.bincount(c.labels, minlength=c.count).astype(np.float64)
    e = sums - r * sizes
    se = math.sqrt(c.count / (c.count - 1) * float(np.dot(e, e))) / n
    half = t_quantile(0.5 + LEVEL / 2, _df(c)) * se
    # The cut never lifts the interval above the estimate (a mean of -1e-12 from rounding).
    lo = r - half if lower is None else max(min(lower, r), r - half)
    return Estimate(r, se, lo, r + half, n, c.count, c.method)


def wilson(k: float, n: float, z: float) -> tuple[float, float]:
    """Wilson's (1927) score interval of a proportion k/n (``n`` may be an
    effective, non-integer size). Unlike p +- z SE it does not shrink to a
    point at 0 or n successes: 50 of 50 gives [0.929, 1]."""
    p = k / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    lo, hi = max(0.0, centre - half), min(1.0, centre + half)
    # Exactly 0 or 1 where the formula's rounding would leave 1 - 1e-16.
    return (0.0 if k <= 0 else lo), (1.0 if k >= n else hi)


def rate(ok: np.ndarray, c: Clusters) -> Estimate:
    """An agreement rate with its cluster-robust standard error (``mean`` of
    the 0/1 values) and a Wilson interval on the effective sample size.

    The effective size is n / deff, deff = SE^2 / (p(1-p)/n) the design
    effect of the clustering, never taken below 1; with clusters it is scaled
    by (z / t(0.975, G - 1))^2 for their few degrees of freedom (Korn &
    Graubard 1998). With no disagreement (or no agreement) there is no
    variance to measure the design effect by and the n positions count in
    full: the interval still says a rate of 1.0 over 50 positions is not
    certain, but cannot tell whether disagreements would come in clusters.
    """
    ok = np.asarray(ok, dtype=np.float64)
    est = mean(ok, c)
    n = len(ok)
    if n == 0 or est.value is None:
        return est
    p = est.value
    n_eff = float(n)
    if est.se is not None and est.se > 0 and 0 < p < 1:
        n_eff = min(n_eff, p * (1 - p) / est.se ** 2)
    z = normal_quantile(0.5 + LEVEL / 2)
    if c.method == BY_SEQUENCE:
        n_eff *= (z / t_quantile(0.5 + LEVEL / 2, _df(c))) ** 2
    lo, hi = wilson(p * n_eff, n_eff, z)
    return Estimate(p, est.se, lo, hi, n, c.count, c.method)


@dataclass(frozen=True)
class Slope:
    """The least-squares slope of y on x with its standard error and one-sided test."""

    slope: float
    se: float
    t: float  # slope / se; +inf for a positive slope with no residual
    df: int
    p_increase: float  # one-sided p-value of "no increase" (slope <= 0)
    n: int
    clusters: int
    method: str


def slope(x: np.ndarray, y: np.ndarray, c: Clusters) -> Slope | None:
    """Ordinary least squares of ``y`` on ``x`` (with an intercept): the slope
    b = Sxy / Sxx and its cluster-robust (CR1) standard error,

        Var(b) = G/(G-1) (N-1)/(N-2) sum_g (sum_{i in g} (x_i - xbar) e_i)^2 / Sxx^2,

    e the residuals (Liang & Zeger 1986; Cameron & Miller 2015, II.B-C). With
    one position per cluster this is White's heteroskedasticity-robust HC1,
    which a heavy-tailed KL needs: one spike far out moves the slope and its
    standard error alike. t has G - 1 degrees of freedom with clusters,
    N - 2 without. None when there are fewer than 3 values or x is constant.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n = len(x)
    if n < 3 or c.count < 2:
        return None
    dx = x - x.mean()
    sxx = float(np.dot(dx, dx))
    if sxx <= 0:
        return None
    b = float(np.dot(dx, y - y.mean())) / sxx
    e = (y - y.mean()) - b * dx
    scores = np.bincount(c.labels, weights=dx * e, minlength=c.count)
    factor = c.count / (c.count - 1) * (n - 1) / (n - 2)
    se = math.sqrt(factor * float(np.dot(scores, scores))) / sxx
    df = _df(c) if c.method == BY_SEQUENCE else n - 2
    if se > 0:
        t = b / se
    else:  # an exact line: certain in whichever direction it goes
        t = math.inf if b > 0 else -math.inf if b < 0 else 0.0
    return Slope(b, se, t, df, t_sf(t, df), n, c.count, c.method)


# -- distributions (no scipy in differ) -----------------------------------------

def normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal."""
    return 0.5 * math.erfc(z / math.sqrt(2))


def t_sf(t: float, df: int) -> float:
    """P(T > t) for Student's t with integer ``df`` degrees of freedom: the
    closed forms of Abramowitz & Stegun 26.7.3 (odd df) and 26.7.4 (even df);
    the normal above ``_T_EXACT_DF``."""
    if math.isinf(t):
        return 0.0 if t > 0 else 1.0
    if t < 0:
        return 1.0 - t_sf(-t, df)
    if df > _T_EXACT_DF:
        return normal_sf(t)
    theta = math.atan(t / math.sqrt(df))
    s, c = math.sin(theta), math.cos(theta)
    c2 = c * c
    if df % 2:  # A(t|df) = 2/pi (theta + sin(theta) (cos + 2/3 cos^3 + ... ))
        total, term = 0.0, c
        if df > 1:
            total = term
            for k in range(1, (df - 1) // 2):
                term *= c2 * (2 * k) / (2 * k + 1)
                total += term
        inside = 2 / math.pi * (theta + s * total)
    else:  # A(t|df) = sin(theta) (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...)
        total, term = 1.0, 1.0
        for k in range(1, df // 2):
            term *= c2 * (2 * k - 1) / (2 * k)
            total += term
        inside = s * total
    return max(0.0, (1.0 - inside) / 2)


def _invert(sf, p: float) -> float:
    """x with sf(x) = 1 - p, for p in (0.5, 1): bisection on a decreasing tail."""
    target = 1.0 - p
    lo, hi = 0.0, 1.0
    while sf(hi) > target:
        lo, hi = hi, hi * 2
    for _ in range(100):
        mid = (lo + hi) / 2
        if sf(mid) > target:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * hi:
            break
    return (lo + hi) / 2


@lru_cache(maxsize=64)
def normal_quantile(p: float) -> float:
    """The standard normal's p-quantile, p in (0.5, 1)."""
    return _invert(normal_sf, p)


@lru_cache(maxsize=256)
def t_quantile(p: float, df: int) -> float:
    """Student's t's p-quantile at integer ``df``, p in (0.5, 1): t(0.975, 3) = 3.182.

    Above 100 degrees of freedom the Cornish-Fisher expansion in 1/df
    (Abramowitz & Stegun 26.7.5, four terms; error < 1e-7 there) rather than
    the bisection, whose tail sums grow with df."""
    if df <= 100:
        return _invert(lambda t: t_sf(t, df), p)
    z = normal_quantile(p)
    g1 = (z ** 3 + z) / 4
    g2 = (5 * z ** 5 + 16 * z ** 3 + 3 * z) / 96
    g3 = (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / 384
    g4 = (79 * z ** 9 + 776 * z ** 7 + 1482 * z ** 5 - 1920 * z ** 3 - 945 * z) / 92160
    return z + g1 / df + g2 / df ** 2 + g3 / df ** 3 + g4 / df ** 4

"""Per-position comparison metrics, vectorised over blocks of rows.

Every kernel takes a block of reference rows and the matching candidate rows
and returns one value per row for each field of ``FIELDS``. Sums are taken in
float64. Non-finite entries never raise: NaN and +/-inf are counted, and the
statistics that are defined over finite entries use a masked path.

Full-vocabulary rows go through the C kernel (``_kernel.c``, one fused pass
per row pair, GIL released) when it was built, and through numpy otherwise;
both give the same numbers to within float rounding, and tests hold both to
independent computations.
"""

from __future__ import annotations

import threading

import numpy as np

from parity.errors import UsageError

try:
    # The extension module itself, not the package: ``from . import`` would
    # make metrics depend on parity.differ's __init__, which imports metrics.
    import parity.differ._kernel as _kernel
except ImportError:  # built without a C compiler: numpy does the same work, slower
    _kernel = None

KERNELS = ("fused", "numpy")
DEFAULT_KERNEL = "fused" if _kernel is not None else "numpy"


def resolve_kernel(name: str | None) -> str:
    """The kernel to use for full-vocabulary rows: ``name``, or the fastest built one."""
    kernel = name or DEFAULT_KERNEL
    if kernel not in KERNELS:
        raise UsageError(f"unknown diff kernel {kernel!r} (PARITY_DIFF_KERNEL): expected one of {', '.join(KERNELS)}")
    if kernel == "fused" and _kernel is None:
        raise UsageError("the C diff kernel was not built (no C compiler at install time): "
                         "install gcc and rerun `make install`, or set PARITY_DIFF_KERNEL=numpy")
    return kernel

# name -> dtype of the per-position arrays every kernel fills.
FIELDS: dict[str, type] = {
    "kl": np.float64,  # KL(ref || cand), nats
    "top1": np.bool_,  # argmax agreement
    "overlap5": np.float64,  # |top5(ref) & top5(cand)| / 5 (NaN when a side lists fewer)
    "overlap10": np.float64,
    "delta_p": np.float64,  # p_cand(t) - p_ref(t), t = reference's top token
    "rank": np.float64,  # 1-based rank of t in the candidate row (NaN: not listed)
    "max_abs": np.float64,  # max |lp_ref - lp_cand| over entries finite on both sides
    "mean_abs": np.float64,
    "pearson": np.float64,  # Pearson of the two logprob rows over finite entries
    "outliers": np.int64,  # entries with |delta| >= eps
    "finite": np.int64,  # entries compared (finite on both sides)
    "nan_ref": np.int64,
    "nan_cand": np.int64,
    "posinf_ref": np.int64,
    "posinf_cand": np.int64,
    "neginf_ref": np.int64,
    "neginf_cand": np.int64,
    "ref_top": np.int64,  # reference's top token id
    "cand_top": np.int64,
    "ref_conf": np.float64,  # reference's top-token probability
    "approx": np.bool_,  # KL restricted to listed top-N ids, renormalised
}
# Filled by ``flips`` after a kernel, where the argmaxes disagree (NaN / 0 elsewhere).
FLIP_FIELDS: dict[str, type] = {
    "flip_gap": np.float64,  # ref logprob of its top token minus of the candidate's top token (>= 0)
    "flip_rank": np.int64,  # 1-based rank of the candidate's top token in the reference row (0: no flip)
    "ref_logit": np.float64,  # the reference's top logit, estimated as its top logprob minus the row's mean
}
# Rank given to a candidate top token that a top-N reference row does not list.
UNLISTED_RANK = np.iinfo(np.int32).max

# Elements per sub-block for the float64 temporaries: small enough to stay in
# cache, which roughly halves the time of the memory-bound passes.
SUB_ELEMENTS = 1 << 18
TOPK = 10
TOP_GROUP = 64


def _rowdot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise dot products. einsum, not np.vecdot: vecdot goes through a
    multithreaded BLAS whose spinning threads made the diff 20x slower on a
    busy 2-core machine."""
    return np.einsum("ij,ij->i", a, b)


def empty(rows: int, *, flips: bool = False) -> dict[str, np.ndarray]:
    """Zeroed arrays of every kernel field (and with ``flips``, of ``FLIP_FIELDS``)."""
    fields = {**FIELDS, **FLIP_FIELDS} if flips else FIELDS
    return {k: np.zeros(rows, dtype=t) for k, t in fields.items()}


def topk(rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, values) of the k largest entries of each row, sorted descending.

    For wide rows, the maxima of groups of 64 entries are found first: the k
    largest entries all lie in the k groups with the largest maxima, so only
    those 64*k entries are sorted (a full argpartition costs 5x more).
    NaN sorts as the largest value, as in ``np.argmax``.
    """
    n, v = rows.shape
    k = min(k, v)
    if v < TOP_GROUP * k * 4:
        ids = np.argsort(-rows, axis=1, kind="stable")[:, :k]
        return ids, np.take_along_axis(rows, ids, axis=1)
    starts = np.arange(0, v, TOP_GROUP)
    gmax = np.maximum.reduceat(rows, starts, axis=1)
    g = np.argpartition(-gmax, k - 1, axis=1)[:, :k] if gmax.shape[1] > k else np.broadcast_to(np.arange(gmax.shape[1]), (n, gmax.shape[1]))
    cand = (g[:, :, None] * TOP_GROUP + np.arange(TOP_GROUP)).reshape(n, -1)
    valid = cand < v
    cand = np.minimum(cand, v - 1)
    vals = np.take_along_axis(rows, cand, axis=1)
    vals = np.where(valid, vals, -np.inf)
    best = np.argpartition(-vals, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(best, np.argsort(-np.take_along_axis(vals, best, axis=1), axis=1, kind="stable"), axis=1)
    return np.take_along_axis(cand, order, axis=1), np.take_along_axis(vals, order, axis=1)


def overlap(a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    """|first k of a & first k of b| / k per row; NaN when a side has fewer than k."""
    if a.shape[1] < k or b.shape[1] < k:
        return np.full(a.shape[0], np.nan)
    hit = (a[:, :k, None] == b[:, None, :k]).any(axis=2)
    return hit.sum(axis=1) / k


def _nonfinite_counts(out: dict, sl: slice, x: np.ndarray, y: np.ndarray) -> None:
    for side, arr in (("ref", x), ("cand", y)):
        out[f"nan_{side}"][sl] = np.count_nonzero(np.isnan(arr), axis=1)
        out[f"posinf_{side}"][sl] = np.count_nonzero(arr == np.inf, axis=1)
        out[f"neginf_{side}"][sl] = np.count_nonzero(arr == -np.inf, axis=1)


def masked_stats(x: np.ndarray, y: np.ndarray, mask: np.ndarray, eps: float) -> dict[str, np.ndarray]:
    """|delta| and Pearson over the entries where ``mask`` holds (float64)."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        x0 = np.where(mask, x, 0.0).astype(np.float64)
        y0 = np.where(mask, y, 0.0).astype(np.float64)
        n = mask.sum(axis=1)
        ad = np.abs(x0 - y0)
        safe_n = np.maximum(n, 1)
        sx, sy = x0.sum(axis=1), y0.sum(axis=1)
        mx, my = sx / safe_n, sy / safe_n
        xc = np.where(mask, x0 - mx[:, None], 0.0)
        yc = np.where(mask, y0 - my[:, None], 0.0)
        cov = np.einsum("ij,ij->i", xc, yc)
        var = np.einsum("ij,ij->i", xc, xc) * np.einsum("ij,ij->i", yc, yc)
        pearson = np.where((n > 1) & (var > 0), cov / np.sqrt(var), np.nan)
        return {
            "max_abs": np.where(n > 0, ad.max(axis=1, initial=0.0), np.nan),
            "mean_abs": np.where(n > 0, ad.sum(axis=1) / safe_n, np.nan),
            "outliers": np.count_nonzero(ad >= eps, axis=1),
            "pearson": pearson,
            "finite": n,
        }


class Scratch:
    """Reusable temporaries for ``full_block``: one per thread.

    Fresh multi-MiB temporaries per sub-block go through mmap/munmap and
    fault every page in again, which made the comparison 2.5x slower than
    the arithmetic itself.
    """

    def __init__(self) -> None:
        self.width = -1
        self.rows = 0

    def get(self, rows: int, width: int) -> "Scratch":
        if (rows, width) != (self.rows, self.width):
            self.rows, self.width = rows, width
            self.x64 = np.empty((rows, width))
            self.y64 = np.empty((rows, width))
            self.d64 = np.empty((rows, width))
            self.p32 = np.empty((rows, width), np.float32)
            self.mask = np.empty((rows, width), np.bool_)
        return self


_LOCAL = threading.local()


def _scratch(rows: int, width: int) -> Scratch:
    sc = getattr(_LOCAL, "scratch", None)
    if sc is None:
        sc = _LOCAL.scratch = Scratch()
    return sc.get(rows, width)


TOP_IDS = ("top_ids_ref", "top_ids_cand")


def full_block(x: np.ndarray, y: np.ndarray, eps: float, kernel: str | None = None,
               top_ids: bool = False) -> dict[str, np.ndarray]:
    """Metrics for full-vocabulary rows: x (reference) and y (candidate) are (R, V) log-probs.

    ``kernel`` picks "fused" (the C kernel) or "numpy"; default: the C
    kernel when it was built. ``top_ids``: also return ``TOP_IDS``, each
    side's ``min(TOPK, V)`` largest ids per row, descending (ties: lower id
    first), which both kernels find anyway; rows holding NaN get no defined
    order there.
    """
    if resolve_kernel(kernel) == "fused":
        return _full_fused(x, y, eps, top_ids)
    return _full_numpy(x, y, eps, top_ids)


def _with_top_ids(out: dict, rows: int, v: int) -> dict:
    for key in TOP_IDS:
        out[key] = np.full((rows, min(TOPK, v)), -1, np.int64)
    return out


def _full_fused(x: np.ndarray, y: np.ndarray, eps: float, top_ids: bool = False) -> dict[str, np.ndarray]:
    """The C kernel's columns, handed out as views: every field, derived ones
    included, is computed there with the GIL released."""
    x = np.ascontiguousarray(x, np.float32)
    y = np.ascontiguousarray(y, np.float32)
    r, v = x.shape
    K = _kernel
    f = np.empty((r, K.NF))
    o = np.empty((r, K.NI), np.int64)
    K.full_rows(x, y, float(eps), f, o)
    k = min(TOPK, v)
    ids_x, ids_y = o[:, K.I_IDS_X : K.I_IDS_X + k], o[:, K.I_IDS_Y : K.I_IDS_Y + k]
    zeros = np.zeros(r, np.int64)
    out = {
        "kl": f[:, K.F_KL],
        "top1": o[:, K.I_TOP1].astype(np.bool_),
        "overlap5": f[:, K.F_OVERLAP5],
        "overlap10": f[:, K.F_OVERLAP10],
        "delta_p": f[:, K.F_DELTAP],
        "rank": o[:, K.I_RANK].astype(np.float64),
        "max_abs": f[:, K.F_MAXABS],
        "mean_abs": f[:, K.F_MEANABS],
        "pearson": f[:, K.F_PEARSON],
        "outliers": o[:, K.I_OUTLIERS],
        "finite": o[:, K.I_FINITE],
        "nan_ref": zeros,  # a row holding NaN or +inf is not exact: the numpy path counts them
        "nan_cand": zeros,
        "posinf_ref": zeros,
        "posinf_cand": zeros,
        "neginf_ref": o[:, K.I_NEGINF_X],
        "neginf_cand": o[:, K.I_NEGINF_Y],
        "ref_top": ids_x[:, 0],
        "cand_top": ids_y[:, 0],
        "ref_conf": f[:, K.F_REFCONF],
        "approx": np.zeros(r, np.bool_),
        # For ``flips`` (popped there): the reference row's sum over the compared entries.
        REF_SUM: f[:, K.F_SX],
    }
    if top_ids:
        out["top_ids_ref"], out["top_ids_cand"] = ids_x, ids_y
    bad = np.flatnonzero(o[:, K.I_EXACT] == 0)
    if len(bad):  # NaN or +inf somewhere in the row: the numpy path, into owned copies
        out = {key: val.copy() for key, val in out.items()}
        for key, val in _full_numpy(x[bad], y[bad], eps, top_ids).items():
            out[key][bad] = val
    return out


def _pearson(sx, sd, sxx, sdd, sxd, n) -> np.ndarray:
    """Pearson of x and y = x - d from raw float64 sums over n entries: var_y
    and cov_xy follow from var_x, var_d and cov_xd without another pass."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        var_x = sxx - sx * sx / n
        var_d = sdd - sd * sd / n
        cov_xd = sxd - sx * sd / n
        cov_xy = var_x - cov_xd
        var_y = var_x - 2 * cov_xd + var_d
        ok = (n > 1) & (var_x > 0) & (var_y > 0)
        return np.minimum(np.where(ok, cov_xy / np.sqrt(np.maximum(var_x * var_y, 0)), np.nan), 1.0)


def _tops(out: dict, sl: slice, x: np.ndarray, y: np.ndarray, ids_x: np.ndarray, ids_y: np.ndarray) -> np.ndarray:
    """Fields that follow from the top-k ids of both rows; returns the
    candidate's values at the reference's top tokens."""
    t = ids_x[:, 0]
    rows = np.arange(len(t))
    out["ref_top"][sl] = t
    out["cand_top"][sl] = ids_y[:, 0]
    out["top1"][sl] = t == ids_y[:, 0]
    out["overlap5"][sl] = overlap(ids_x, ids_y, 5)
    out["overlap10"][sl] = overlap(ids_x, ids_y, 10)
    y_t = y[rows, t]
    lx_t = x[rows, t].astype(np.float64)
    ly_t = y_t.astype(np.float64)
    with np.errstate(over="ignore"):
        out["ref_conf"][sl] = np.exp(lx_t)
        out["delta_p"][sl] = np.exp(ly_t) - np.exp(lx_t)
    return y_t


def _full_numpy(x: np.ndarray, y: np.ndarray, eps: float, top_ids: bool = False) -> dict[str, np.ndarray]:
    r, v = x.shape
    out = _with_top_ids(empty(r), r, v) if top_ids else empty(r)
    step = max(1, SUB_ELEMENTS // max(v, 1))
    sc = _scratch(step, v)
    for a in range(0, r, step):
        _full_sub(x[a : a + step], y[a : a + step], eps, out, slice(a, min(a + step, r)), sc)
    return out


def _full_sub(x: np.ndarray, y: np.ndarray, eps: float, out: dict, sl: slice, sc: Scratch) -> None:
    n, v = x.shape
    x64, y64, d, p, mask = sc.x64[:n], sc.y64[:n], sc.d64[:n], sc.p32[:n], sc.mask[:n]
    with np.errstate(invalid="ignore", over="ignore"):
        np.copyto(x64, x)
        np.copyto(y64, y)
        np.subtract(x64, y64, out=d)
        # p in float32: numpy's float32 exp is vectorised (float64 exp is 4x
        # slower here); its 1e-7 relative error is far below the rounding of
        # the stored float32 log-probs themselves. Products and sums are float64.
        np.exp(x, out=p)
        np.copyto(y64, p)  # y64 now holds p; y itself is still at hand in float32
        kl = _rowdot(y64, d)
        sx, sd = x64.sum(axis=1), d.sum(axis=1)
        sxx, sdd, sxd = _rowdot(x64, x64), _rowdot(d, d), _rowdot(x64, d)
        ad = np.abs(d, out=d)
        max_abs = ad.max(axis=1)
        sum_abs = ad.sum(axis=1)
        outliers = np.count_nonzero(np.greater_equal(ad, eps, out=mask), axis=1)
    ok = np.isfinite(kl) & np.isfinite(sum_abs) & np.isfinite(sx)
    out["kl"][sl] = kl
    out["max_abs"][sl] = max_abs
    out["mean_abs"][sl] = sum_abs / v
    out["pearson"][sl] = _pearson(sx, sd, sxx, sdd, sxd, np.full(n, v))
    out["outliers"][sl] = outliers
    out["finite"][sl] = v

    ids_x, _ = topk(x, TOPK)
    ids_y, _ = topk(y, TOPK)
    if "top_ids_ref" in out:
        out["top_ids_ref"][sl], out["top_ids_cand"][sl] = ids_x, ids_y
    y_t = _tops(out, sl, x, y, ids_x, ids_y)
    out["rank"][sl] = np.count_nonzero(np.greater(y, y_t[:, None], out=mask), axis=1) + 1

    bad = np.flatnonzero(~ok)
    if len(bad):
        _full_nonfinite(x[bad], y[bad], eps, out, np.arange(sl.start, sl.stop)[bad])


def _full_nonfinite(x: np.ndarray, y: np.ndarray, eps: float, out: dict, idx: np.ndarray) -> None:
    """Rows holding NaN or +/-inf: masked statistics, KL with 0*log0 = 0."""
    for side, arr in (("ref", x), ("cand", y)):
        out[f"nan_{side}"][idx] = np.count_nonzero(np.isnan(arr), axis=1)
        out[f"posinf_{side}"][idx] = np.count_nonzero(arr == np.inf, axis=1)
        out[f"neginf_{side}"][idx] = np.count_nonzero(arr == -np.inf, axis=1)
    x64 = x.astype(np.float64)
    y64 = y.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore", under="ignore"):
        p = np.exp(x64)
        terms = np.where(p > 0, p * (x64 - y64), 0.0)
        kl = terms.sum(axis=1)
        # Reference mass on a token the candidate rules out: KL is +inf even
        # when that mass underflows.
        ruled_out = (np.isfinite(x64) & (y64 == -np.inf)).any(axis=1)
        kl = np.where(ruled_out & ~np.isnan(kl), np.inf, kl)
        kl = np.where(np.isnan(x64).any(axis=1) | np.isnan(y64).any(axis=1), np.nan, kl)
    out["kl"][idx] = kl
    mask = np.isfinite(x64) & np.isfinite(y64)
    for k, val in masked_stats(x64, y64, mask, eps).items():
        out[k][idx] = val
    t = out["ref_top"][idx]
    rows = np.arange(len(idx))
    with np.errstate(invalid="ignore", over="ignore"):
        lx_t, ly_t = x64[rows, t], y64[rows, t]
        out["ref_conf"][idx] = np.exp(lx_t)
        out["delta_p"][idx] = np.exp(ly_t) - np.exp(lx_t)
        out["rank"][idx] = np.where(np.isnan(ly_t), np.nan, np.count_nonzero(y64 > ly_t[:, None], axis=1) + 1)


def _logsumexp(v: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", over="ignore"):
        m = np.max(np.where(np.isfinite(v), v, -np.inf), axis=1, keepdims=True)
        m = np.where(np.isfinite(m), m, 0.0)
        return (m + np.log(np.sum(np.exp(v - m), axis=1, keepdims=True)))


class Side:
    """One side of a block: full rows, or top-N values with their ids."""

    def __init__(self, values: np.ndarray, ids: np.ndarray | None):
        self.values = values
        self.ids = ids

    @property
    def full(self) -> bool:
        return self.ids is None

    def listed(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids, values) of the listed (or k largest) entries, descending."""
        if self.full:
            return topk(self.values, k)
        order = np.argsort(-self.values, axis=1, kind="stable")
        return np.take_along_axis(self.ids, order, axis=1), np.take_along_axis(self.values, order, axis=1)

    def lookup(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(values at ids, known mask): unknown where a top-N row does not list the id."""
        if self.full:
            return np.take_along_axis(self.values, ids, axis=1), np.ones(ids.shape, bool)
        eq = ids[:, :, None] == self.ids[:, None, :]
        known = eq.any(axis=2)
        at = np.take_along_axis(self.values, eq.argmax(axis=2), axis=1)
        return np.where(known, at, np.nan), known

    def rank_of(self, ids: np.ndarray) -> np.ndarray:
        """1-based rank of one id per row (NaN when a top-N row does not list it)."""
        if self.full:
            v = np.take_along_axis(self.values, ids[:, None], axis=1)
            return np.where(np.isnan(v[:, 0]), np.nan, np.count_nonzero(self.values > v, axis=1) + 1).astype(np.float64)
        lid, _ = self.listed(0)
        eq = lid == ids[:, None]
        return np.where(eq.any(axis=1), eq.argmax(axis=1) + 1, np.nan).astype(np.float64)


REF_SUM = "_ref_sum"


def flips(ref: Side, got: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``flip_gap``, ``flip_rank`` and ``ref_logit`` of a block whose other
    metrics are ``got``: computed for the rows whose argmaxes disagree only
    (rare, so a pass over those rows costs nothing on a faithful run).

    Logits are not stored, only logprobs, which are logits shifted by the row's
    log-sum-exp; the top logit is estimated as the top logprob minus the mean
    of the row's finite logprobs, i.e. as if the logits had mean zero. It sets
    the scale of the rounding step a flip's gap is measured in (``differ.flips``).
    """
    n = len(got["top1"])
    ref_sum = got.pop(REF_SUM, None)
    out = {"flip_gap": np.full(n, np.nan), "flip_rank": np.zeros(n, np.int64), "ref_logit": np.full(n, np.nan)}
    rows = np.flatnonzero(~got["top1"])
    if not len(rows):
        return out
    cand_top = got["cand_top"][rows]
    ref_top = got["ref_top"][rows]
    if ref.full:
        x = ref.values[rows]  # a copy of the few disagreeing rows, float32: two passes over each
        top_v = np.take_along_axis(x, ref_top[:, None], axis=1)[:, 0].astype(np.float64)
        cand_v = np.take_along_axis(x, cand_top[:, None], axis=1)[:, 0]
        rank = np.count_nonzero(x > cand_v[:, None], axis=1) + 1
        cand_v = cand_v.astype(np.float64)
        # The kernel's sum over the entries finite on both sides, when it gave one: no pass of our own.
        mean = (ref_sum[rows] / np.maximum(got["finite"][rows], 1) if ref_sum is not None
                else x.sum(axis=1, dtype=np.float64) / x.shape[1])
        for r in np.flatnonzero(~np.isfinite(mean)):  # -inf (masked) or NaN entries: the finite ones only
            fin = x[r][np.isfinite(x[r])]
            mean[r] = fin.mean(dtype=np.float64) if len(fin) else np.nan
        out["ref_logit"][rows] = top_v - mean
    else:
        ids, vals = ref.listed(0)
        ids, vals = ids[rows], vals[rows].astype(np.float64)
        top_v = vals[:, 0]
        eq = ids == cand_top[:, None]
        listed = eq.any(axis=1)
        # Unlisted: the gap is at least the one to the last listed entry.
        cand_v = np.where(listed, np.take_along_axis(vals, eq.argmax(axis=1)[:, None], axis=1)[:, 0], vals[:, -1])
        rank = np.where(listed, eq.argmax(axis=1) + 1, UNLISTED_RANK)
    out["flip_gap"][rows] = top_v - cand_v
    out["flip_rank"][rows] = rank
    return out


def topn_block(ref: Side, cand: Side, eps: float) -> dict[str, np.ndarray]:
    """Metrics when at least one side holds top-N rows (approximate KL)."""
    r = ref.values.shape[0]
    out = empty(r)
    out["approx"][:] = True
    _nonfinite_counts(out, slice(0, r), ref.values, cand.values)
    k_ref = ref.values.shape[1] if not ref.full else (cand.values.shape[1] if not cand.full else TOPK)
    ids_r, lr = ref.listed(max(k_ref, 1))
    ids_c, _ = cand.listed(max(TOPK, ids_r.shape[1]))
    lr = lr.astype(np.float64)
    lc, known = cand.lookup(ids_r)
    lc = lc.astype(np.float64)
    t = ids_r[:, 0]
    out["ref_top"][:] = t
    out["cand_top"][:] = ids_c[:, 0]
    out["top1"][:] = t == ids_c[:, 0]
    out["overlap5"][:] = overlap(ids_r, ids_c, 5)
    out["overlap10"][:] = overlap(ids_r, ids_c, 10)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        out["ref_conf"][:] = np.exp(lr[:, 0])
        out["delta_p"][:] = np.where(known[:, 0], np.exp(lc[:, 0]) - np.exp(lr[:, 0]), np.nan)
        # KL over the reference's listed ids, both sides renormalised there.
        # An id the candidate does not list gets the candidate's smallest
        # listed logprob: an upper bound on its true value.
        floor = np.nanmin(np.where(np.isfinite(cand.values), cand.values, np.nan), axis=1, keepdims=True) if not cand.full else None
        lc_filled = lc if floor is None else np.where(known, lc, floor)
        pr = lr - _logsumexp(lr)
        pc = lc_filled - _logsumexp(lc_filled)
        p = np.exp(pr)
        kl = np.where(p > 0, p * (pr - pc), 0.0).sum(axis=1)
        kl = np.where(np.isnan(lr).any(axis=1) | np.isnan(lc_filled).any(axis=1), np.nan, kl)
    out["kl"][:] = kl
    out["rank"][:] = cand.rank_of(t)
    mask = known & np.isfinite(lr) & np.isfinite(lc)
    for k, val in masked_stats(lr, lc, mask, eps).items():
        out[k][:] = val
    return out


def rank_in_row(values: np.ndarray, ids: np.ndarray | None, token: int) -> float:
    """1-based rank of ``token`` in one row (NaN if a top-N row does not list it)."""
    side = Side(values[None, :], None if ids is None else ids[None, :])
    return float(side.rank_of(np.array([token]))[0])

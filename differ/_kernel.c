/*
 * Fused full-vocabulary row metrics for `parity diff`.
 *
 * The numpy kernel in metrics.py makes about twenty passes over every pair of
 * rows (float64 copies, exp, three dot products, abs, max, top-k...), which
 * made comparing cost more than reading. Here one vectorised pass over a row
 * pair takes every sum (float64 accumulators throughout), and the top-k and
 * rank passes follow while the rows are still in cache. The GIL is released
 * for a whole block, so the reader thread keeps the other core busy.
 *
 * -inf entries (masked tokens) are handled here with the numpy path's
 * semantics: statistics over the entries finite on both sides, 0 log 0 = 0,
 * and KL = +inf when the reference gives mass to a token the candidate rules
 * out. A row holding NaN or +inf, or a reference entry above EXP_HI, is
 * reported as not exact (I_EXACT = 0) and the caller recomputes it on the
 * numpy path.
 *
 * Per row it returns the raw float64 sums and, from them and the top-k lists,
 * every derived field (mean |delta|, Pearson, overlaps, the reference top
 * token's probability and delta), with the numpy kernel's formulas in the
 * same order of operations, so the Python side only hands out columns: per
 * block Python would hold the GIL that the other workers need.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <string.h>

#define TOPK 10
#define CHUNK 64
/* Above this, exp overflows float32 (the stored logprobs are <= 0, so such a
 * row is garbage anyway: the numpy path deals with it). */
#define EXP_HI 88.0f
/* exp of anything below is under 1.2e-38 and counts as zero probability. */
#define EXP_LO -87.0f

enum {
    F_KL, F_SX, F_SD, F_SXX, F_SDD, F_SXD, F_MAXABS, F_SUMABS,
    /* derived */
    F_MEANABS, F_PEARSON, F_OVERLAP5, F_OVERLAP10, F_REFCONF, F_DELTAP, NF
};
enum {
    I_OUTLIERS, I_RANK, I_EXACT, I_FINITE, I_NEGINF_X, I_NEGINF_Y, I_TOP1, I_IDS_X,
    I_IDS_Y = I_IDS_X + TOPK, NI = I_IDS_Y + TOPK
};

/* GCC vector extensions: the same code becomes AVX2 in the avx2 clone and
 * pairs of SSE2 operations in the default one, with identical results (no FMA
 * contraction, fixed lane order), so a diff does not depend on the host. */
typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));
typedef double v4d __attribute__((vector_size(32)));
typedef double v8d __attribute__((vector_size(64)));
typedef int64_t v4l __attribute__((vector_size(32)));

#define INLINE static inline __attribute__((always_inline))

INLINE v8f sel8(v8i m, v8f a, v8f b) { return (v8f)(((v8i)a & m) | ((v8i)b & ~m)); }
INLINE v4d sel4(v4l m, v4d a, v4d b) { return (v4d)(((v4l)a & m) | ((v4l)b & ~m)); }

/* exp for float32 lanes: Cody-Waite reduction and the classic minimax
 * polynomial on [-ln2/2, ln2/2], relative error ~1e-7 (the rounding of the
 * stored float32 logprobs is of the same order). The polynomial is evaluated
 * by Estrin's scheme, whose short dependency chains keep more of the pass in
 * flight than Horner's. Lanes below EXP_LO, -inf and NaN give 0; a row with
 * NaN never reaches the caller's results anyway. */
INLINE v8f exp8(v8f x)
{
    v8i above_lo = x > EXP_LO; /* false for NaN */
    v8f xc = sel8(above_lo, sel8(x < EXP_HI, x, (v8f){} + EXP_HI), (v8f){} + EXP_LO);
    /* n = round(x / ln2): adding 1.5 * 2^23 rounds to an integer held in the
     * sum's low mantissa bits. */
    const float magic = 12582912.0f;
    v8f t = xc * 1.44269504088896341f + magic;
    v8i ni = (v8i)t - (v8i)((v8f){} + magic);
    v8f n = t - magic;
    v8f r = xc - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    v8f r2 = r * r, r4 = r2 * r2;
    v8f c54 = r * 1.9875691500e-4f + 1.3981999507e-3f;
    v8f c32 = r * 8.3334519073e-3f + 4.1665795894e-2f;
    v8f c10 = r * 1.6666665459e-1f + 5.0000001201e-1f;
    v8f p = (c54 * r4 + c32 * r2) + c10;
    p = p * r2 + r + 1.0f;
    v8f e = p * (v8f)((ni + 127) << 23);
    return (v8f)((v8i)e & above_lo);
}

typedef struct {
    double kl, sx, sd, sxx, sdd, sxd, maxabs, sumabs;
    int64_t outliers, finite, neginf_x, neginf_y, ruled_out;
} Sums;

INLINE double hsum(v4d v) { return (v[0] + v[1]) + (v[2] + v[3]); }
INLINE int64_t hsuml(v4l v) { return (v[0] + v[1]) + (v[2] + v[3]); }
INLINE double hmax(v4d v)
{
    double a = v[0] > v[1] ? v[0] : v[1], b = v[2] > v[3] ? v[2] : v[3];
    return a > b ? a : b;
}

/* Tails shorter than 8 are padded with PAD on both sides and the padding's
 * contribution taken back (only the counts see it: x = y gives d = 0). */
INLINE void load_tail(float *xt, float *yt, const float *x, const float *y, Py_ssize_t rest, float pad)
{
    for (int i = 0; i < 8; i++)
        xt[i] = yt[i] = pad;
    memcpy(xt, x, rest * sizeof(float));
    memcpy(yt, y, rest * sizeof(float));
}

/* Sums over one row pair, four float64 lanes each; counters subtract
 * comparison masks (-1 where true). */
typedef struct {
    v4d kl, sx, sd, sxx, sdd, sxd, maxabs, sumabs;
    v4l outliers, finite, neginf_x, neginf_y, ruled_out, bad;
} Acc;

/* `masked` is a constant after inlining, so each loop is compiled twice:
 *  0: the common case, every entry of both rows finite; no masks at all. If a
 *     NaN or an infinity is there after all, sx or sd comes out non-finite
 *     and the caller runs the masked loop instead.
 *  1: rows with -inf entries (masked tokens): statistics over the entries
 *     finite on both sides; NaN and +inf are counted as bad. */
INLINE void step4(Acc *a, v4d x, v4d y, v4d p, double eps, int masked)
{
    v4l counted = ~(v4l){};
    v4d d = x - y;
    if (masked) {
        const v4d ninf = (v4d){} - INFINITY, pinf = (v4d){} + INFINITY;
        v4l okx = x > ninf, oky = y > ninf; /* false for NaN as well */
        counted = okx & oky;
        a->bad -= ~(x < pinf) | ~(y < pinf);
        a->neginf_x -= x == ninf;
        a->neginf_y -= y == ninf;
        a->ruled_out -= okx & (y == ninf);
        a->finite -= counted;
        /* off the mask d is 0 and exp(-inf) is 0: 0 log 0 = 0 */
        x = sel4(counted, x, (v4d){});
        d = sel4(counted, d, (v4d){});
    }
    v4d ad = (v4d)((v4l)d & 0x7fffffffffffffffLL);
    a->kl += p * d;
    a->sx += x;
    a->sd += d;
    a->sxx += x * x;
    a->sdd += d * d;
    a->sxd += x * d;
    a->sumabs += ad;
    a->maxabs = sel4(ad > a->maxabs, ad, a->maxabs);
    a->outliers -= counted & (ad >= eps);
}

/* float32 lanes to two float64 halves. Through an 8-lane double vector:
 * GCC 12 turns that into one vcvtps2pd per half, but a 4-lane conversion
 * into two 2-lane ones and an insert, which cost the pass a fifth of its time. */
INLINE void halves(v8f v, v4d *lo, v4d *hi)
{
    v8d d = __builtin_convertvector(v, v8d);
    *lo = __builtin_shufflevector(d, d, 0, 1, 2, 3);
    *hi = __builtin_shufflevector(d, d, 4, 5, 6, 7);
}

INLINE void step8(Acc *a, const float *x, const float *y, double eps, int masked)
{
    v8f xv, yv;
    memcpy(&xv, x, sizeof xv);
    memcpy(&yv, y, sizeof yv);
    v4d xl, xh, yl, yh, pl, ph;
    halves(xv, &xl, &xh);
    halves(yv, &yl, &yh);
    halves(exp8(xv), &pl, &ph);
    step4(a, xl, yl, pl, eps, masked);
    step4(a, xh, yh, ph, eps, masked);
}

/* Returns 0 when the row needs the other loop (masked = 0) or the numpy path
 * (masked = 1). */
INLINE int row_sums(const float *x, const float *y, Py_ssize_t v, double eps, Sums *out, int masked)
{
    Acc a;
    memset(&a, 0, sizeof a);
    Py_ssize_t j = 0, pad = 0;
    for (; j + 8 <= v; j += 8)
        step8(&a, x + j, y + j, eps, masked);
    if (j < v) {
        /* Padding: -inf on both sides is off the mask and only counted as
         * -inf; 0 on both sides gives d = 0 and is only an outlier if eps <= 0. */
        float xt[8], yt[8];
        pad = 8 - (v - j);
        load_tail(xt, yt, x + j, y + j, v - j, masked ? -INFINITY : 0.0f);
        step8(&a, xt, yt, eps, masked);
    }
    out->kl = hsum(a.kl);
    out->sx = hsum(a.sx);
    out->sd = hsum(a.sd);
    out->sxx = hsum(a.sxx);
    out->sdd = hsum(a.sdd);
    out->sxd = hsum(a.sxd);
    out->sumabs = hsum(a.sumabs);
    out->maxabs = hmax(a.maxabs);
    out->outliers = hsuml(a.outliers) - (!masked && eps <= 0 ? pad : 0);
    if (!masked) {
        out->finite = v;
        out->neginf_x = out->neginf_y = out->ruled_out = 0;
        return isfinite(out->sx) && isfinite(out->sd);
    }
    out->finite = hsuml(a.finite);
    out->neginf_x = hsuml(a.neginf_x) - pad;
    out->neginf_y = hsuml(a.neginf_y) - pad;
    out->ruled_out = hsuml(a.ruled_out);
    return hsuml(a.bad) == 0;
}

/* Largest entry of v[0..64): 8 vectors, then across lanes. */
INLINE float chunk_max(const float *v)
{
    v8f m;
    memcpy(&m, v, sizeof m);
    for (int i = 8; i < CHUNK; i += 8) {
        v8f e;
        memcpy(&e, v + i, sizeof e);
        m = sel8(e > m, e, m);
    }
    float r = m[0];
    for (int i = 1; i < 8; i++)
        r = m[i] > r ? m[i] : r;
    return r;
}

INLINE int64_t count_greater(const float *v, Py_ssize_t n, float t)
{
    v8i c = {0};
    Py_ssize_t j = 0;
    for (; j + 8 <= n; j += 8) {
        v8f e;
        memcpy(&e, v + j, sizeof e);
        c -= e > t;
    }
    int64_t total = 0;
    for (int i = 0; i < 8; i++)
        total += c[i];
    for (; j < n; j++)
        total += v[j] > t;
    return total;
}

/* The k largest entries, descending; ties keep the lower index first (a
 * stable sort of the negated row). Chunks whose maximum cannot enter the list
 * are skipped after one vectorised max, so this costs little more than one
 * read of the row. */
INLINE void row_topk(const float *v, Py_ssize_t n, int k, float *vals, int64_t *ids)
{
    int count = 0;
    for (Py_ssize_t a = 0; a < n; a += CHUNK) {
        Py_ssize_t b = a + CHUNK < n ? a + CHUNK : n;
        if (count == k && b - a == CHUNK && !(chunk_max(v + a) > vals[k - 1]))
            continue;
        for (Py_ssize_t j = a; j < b; j++) {
            float e = v[j];
            int pos;
            if (count < k)
                pos = count++;
            else if (e > vals[k - 1])
                pos = k - 1;
            else
                continue;
            while (pos > 0 && vals[pos - 1] < e) {
                vals[pos] = vals[pos - 1];
                ids[pos] = ids[pos - 1];
                pos--;
            }
            vals[pos] = e;
            ids[pos] = j;
        }
    }
}

/* Pearson of x and y = x - d from raw float64 sums over n entries, as
 * metrics._pearson computes it (var_y and cov_xy follow from var_x, var_d
 * and cov_xd without another pass). */
static double pearson(const double *f, int64_t n)
{
    double nn = (double)n;
    double var_x = f[F_SXX] - f[F_SX] * f[F_SX] / nn;
    double var_d = f[F_SDD] - f[F_SD] * f[F_SD] / nn;
    double cov_xd = f[F_SXD] - f[F_SX] * f[F_SD] / nn;
    double cov_xy = var_x - cov_xd;
    double var_y = var_x - 2 * cov_xd + var_d;
    if (!(n > 1 && var_x > 0 && var_y > 0))
        return NAN;
    double prod = var_x * var_y;
    double r = cov_xy / sqrt(prod > 0 ? prod : 0);
    return r < 1.0 ? r : 1.0; /* NaN stays NaN, as np.minimum keeps it */
}

/* |first k of a & first k of b| / k; NaN when the lists are shorter. */
static double overlap(const int64_t *a, const int64_t *b, int listed, int k)
{
    if (listed < k)
        return NAN;
    int hits = 0;
    for (int i = 0; i < k; i++)
        for (int j = 0; j < k; j++)
            if (a[i] == b[j]) {
                hits++;
                break;
            }
    return (double)hits / k;
}

/* Fields derived from a row's sums and top-k lists (exact rows only: the
 * numpy path recomputes the others). */
static void derive(const float *xr, const float *yr, int k, double *f, int64_t *o)
{
    int64_t n = o[I_FINITE], t = o[I_IDS_X];
    f[F_MEANABS] = n > 0 ? f[F_SUMABS] / (double)n : NAN;
    if (n == 0)
        f[F_MAXABS] = NAN;
    f[F_PEARSON] = pearson(f, n);
    f[F_OVERLAP5] = overlap(o + I_IDS_X, o + I_IDS_Y, k, 5);
    f[F_OVERLAP10] = overlap(o + I_IDS_X, o + I_IDS_Y, k, 10);
    double px = exp((double)xr[t]);
    f[F_REFCONF] = px;
    f[F_DELTAP] = exp((double)yr[t]) - px;
    o[I_TOP1] = t == o[I_IDS_Y];
}

/* Everything above is inlined here, once per target: AVX2 where the CPU has
 * it (chosen at load time), SSE2 otherwise. */
__attribute__((target_clones("avx2", "default")))
static void block(const float *x, const float *y, Py_ssize_t rows, Py_ssize_t v, double eps,
                  double *fo, int64_t *io)
{
    int k = v < TOPK ? (int)v : TOPK;
    for (Py_ssize_t i = 0; i < rows; i++) {
        const float *xr = x + i * v, *yr = y + i * v;
        double *f = fo + i * NF;
        int64_t *o = io + i * NI;
        float vx[TOPK] = {0}, vy[TOPK] = {0};
        Sums s = {0};
        int exact = v > 0 && (row_sums(xr, yr, v, eps, &s, 0) || row_sums(xr, yr, v, eps, &s, 1));
        f[F_KL] = s.ruled_out ? INFINITY : s.kl;
        f[F_SX] = s.sx;
        f[F_SD] = s.sd;
        f[F_SXX] = s.sxx;
        f[F_SDD] = s.sdd;
        f[F_SXD] = s.sxd;
        f[F_MAXABS] = s.maxabs;
        f[F_SUMABS] = s.sumabs;
        o[I_OUTLIERS] = s.outliers;
        o[I_FINITE] = s.finite;
        o[I_NEGINF_X] = s.neginf_x;
        o[I_NEGINF_Y] = s.neginf_y;
        o[I_RANK] = o[I_TOP1] = 0;
        for (int j = F_MEANABS; j < NF; j++)
            f[j] = NAN;
        for (int j = 0; j < TOPK; j++)
            o[I_IDS_X + j] = o[I_IDS_Y + j] = -1;
        o[I_EXACT] = exact;
        if (!exact)
            continue;
        row_topk(xr, v, k, vx, o + I_IDS_X);
        row_topk(yr, v, k, vy, o + I_IDS_Y);
        if (vx[0] > EXP_HI) {
            o[I_EXACT] = 0;
            continue;
        }
        o[I_RANK] = count_greater(yr, v, yr[o[I_IDS_X]]) + 1;
        derive(xr, yr, k, f, o);
    }
}

static int get_buffer(PyObject *obj, Py_buffer *view, const char *name, char fmt, Py_ssize_t itemsize,
                      int writable)
{
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0)
        return -1;
    const char *f = view->format ? view->format : "B";
    if (*f == '<' || *f == '=' || *f == '@')
        f++;
    int ok = view->ndim == 2 && view->itemsize == itemsize &&
             (f[0] == fmt || (fmt == 'q' && (f[0] == 'l' && itemsize == sizeof(long)))) && f[1] == 0;
    if (!ok) {
        PyErr_Format(PyExc_TypeError, "%s: expected a C-contiguous 2-D array of '%c' (itemsize %zd)", name,
                     fmt, itemsize);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static PyObject *full_rows(PyObject *Py_UNUSED(self), PyObject *args)
{
    PyObject *xo, *yo, *fo, *io;
    double eps;
    if (!PyArg_ParseTuple(args, "OOdOO", &xo, &yo, &eps, &fo, &io))
        return NULL;
    Py_buffer x, y, f, o;
    if (get_buffer(xo, &x, "x", 'f', 4, 0) < 0)
        return NULL;
    if (get_buffer(yo, &y, "y", 'f', 4, 0) < 0)
        goto fail_x;
    if (get_buffer(fo, &f, "floats", 'd', 8, 1) < 0)
        goto fail_y;
    if (get_buffer(io, &o, "ints", 'q', 8, 1) < 0)
        goto fail_f;
    Py_ssize_t rows = x.shape[0], v = x.shape[1];
    if (y.shape[0] != rows || y.shape[1] != v || f.shape[0] != rows || f.shape[1] != NF ||
        o.shape[0] != rows || o.shape[1] != NI) {
        PyErr_SetString(PyExc_ValueError, "full_rows: shapes do not match");
        goto fail_o;
    }
    Py_BEGIN_ALLOW_THREADS
    block((const float *)x.buf, (const float *)y.buf, rows, v, eps, (double *)f.buf, (int64_t *)o.buf);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&o);
    PyBuffer_Release(&f);
    PyBuffer_Release(&y);
    PyBuffer_Release(&x);
    Py_RETURN_NONE;
fail_o:
    PyBuffer_Release(&o);
fail_f:
    PyBuffer_Release(&f);
fail_y:
    PyBuffer_Release(&y);
fail_x:
    PyBuffer_Release(&x);
    return NULL;
}

static PyMethodDef methods[] = {
    {"full_rows", full_rows, METH_VARARGS,
     "full_rows(x, y, eps, floats, ints): fused metrics of float32 rows x (reference) and y "
     "(candidate) into floats (rows, NF) float64 and ints (rows, NI) int64."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "differ._kernel", NULL, -1, methods, NULL, NULL, NULL, NULL};

/* The row layout of the output buffers, for the Python side. */
static const struct {
    const char *name;
    int value;
} layout[] = {
    {"TOPK", TOPK},         {"NF", NF},
    {"NI", NI},             {"F_KL", F_KL},
    {"F_SX", F_SX},         {"F_SD", F_SD},
    {"F_SXX", F_SXX},       {"F_SDD", F_SDD},
    {"F_SXD", F_SXD},       {"F_MAXABS", F_MAXABS},
    {"F_SUMABS", F_SUMABS}, {"F_MEANABS", F_MEANABS},
    {"F_PEARSON", F_PEARSON}, {"F_OVERLAP5", F_OVERLAP5},
    {"F_OVERLAP10", F_OVERLAP10}, {"F_REFCONF", F_REFCONF},
    {"F_DELTAP", F_DELTAP}, {"I_TOP1", I_TOP1},
    {"I_OUTLIERS", I_OUTLIERS},
    {"I_RANK", I_RANK},     {"I_EXACT", I_EXACT},
    {"I_FINITE", I_FINITE}, {"I_NEGINF_X", I_NEGINF_X},
    {"I_NEGINF_Y", I_NEGINF_Y}, {"I_IDS_X", I_IDS_X},
    {"I_IDS_Y", I_IDS_Y},
};

PyMODINIT_FUNC PyInit__kernel(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    for (size_t i = 0; i < sizeof layout / sizeof layout[0]; i++) {
        if (PyModule_AddIntConstant(m, layout[i].name, layout[i].value) < 0) {
            Py_DECREF(m);
            return NULL;
        }
    }
    return m;
}

/*
 * stats.c -- per-call statistics (SPEC 5), shared by the backends. See
 * stats.h for what each figure is.
 */
#include "stats.h"

#include <cblas.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- denominators -------------------------------------------------- */

void tki_den_acc_init(tki_den_acc *a) {
    a->min = INFINITY;
    a->max = -INFINITY;
    a->sum = 0;
    a->n = a->n_le_eps = a->n_nonfinite = 0;
}

void tki_den_acc_add(tki_den_acc *a, double den, double eps) {
    a->n++;
    a->sum += den;
    if (!isfinite(den)) a->n_nonfinite++;
    if (den <= eps) a->n_le_eps++;
    if (den < a->min) a->min = den;
    if (den > a->max) a->max = den;
}

void tki_den_acc_merge(tki_den_acc *into, const tki_den_acc *from) {
    into->n += from->n;
    into->n_le_eps += from->n_le_eps;
    into->n_nonfinite += from->n_nonfinite;
    into->sum += from->sum;
    if (from->min < into->min) into->min = from->min;
    if (from->max > into->max) into->max = from->max;
}

void tki_den_acc_finish(const tki_den_acc *a, tk_denoms *out) {
    memset(out, 0, sizeof *out);
    if (a->n == 0) return;
    out->n = a->n;
    out->n_le_eps = a->n_le_eps;
    out->n_nonfinite = a->n_nonfinite;
    out->mean = a->sum / (double)a->n;
    /* all NaN: no ordered value to report */
    out->min = a->min <= a->max ? a->min : NAN;
    out->max = a->min <= a->max ? a->max : NAN;
}

/* ---- distributions ------------------------------------------------- */

/* k-th smallest of v[0..n) (no NaN), reordering v (Hoare quickselect). */
static double select_kth(double *v, int64_t n, int64_t k) {
    int64_t lo = 0, hi = n - 1;
    while (lo < hi) {
        /* median of three as pivot */
        int64_t mid = lo + (hi - lo) / 2;
        double a = v[lo], b = v[mid], c = v[hi];
        double pivot = a < b ? (b < c ? b : (a < c ? c : a)) : (a < c ? a : (b < c ? c : b));
        int64_t i = lo, j = hi;
        while (i <= j) {
            while (v[i] < pivot) i++;
            while (v[j] > pivot) j--;
            if (i <= j) {
                double t = v[i];
                v[i] = v[j];
                v[j] = t;
                i++;
                j--;
            }
        }
        if (k <= j)
            hi = j;
        else if (k >= i)
            lo = i;
        else
            return v[k];
    }
    return v[k];
}

/* Moves the NaNs of v to the end; returns the count of the others. */
static int64_t nan_to_end(double *v, int64_t n) {
    int64_t m = 0;
    for (int64_t i = 0; i < n; i++)
        if (!isnan(v[i])) {
            double t = v[m];
            v[m++] = v[i];
            v[i] = t;
        }
    return m;
}

static double order_stat(double *v, int64_t m, int64_t k) { return k >= m ? NAN : select_kth(v, m, k); }

static double percentile_of(double *v, int64_t n, int64_t m, double p) {
    double pos = p / 100.0 * (double)(n - 1);
    int64_t lo = (int64_t)floor(pos), hi = (int64_t)ceil(pos);
    double frac = pos - (double)lo;
    double a = order_stat(v, m, lo);
    if (hi == lo || frac == 0) return a;
    double b = order_stat(v, m, hi);
    if (a == b) return a;
    return a + (b - a) * frac;
}

double tki_percentile(double *values, int64_t n, double p) {
    if (n <= 0) return NAN;
    int64_t m = nan_to_end(values, n);
    return percentile_of(values, n, m, p);
}

void tki_dist_summarize(double *v, int64_t n, tk_dist *out) {
    memset(out, 0, sizeof *out);
    if (n <= 0) return;
    double sum = 0;
    for (int64_t i = 0; i < n; i++) sum += v[i];
    int64_t m = nan_to_end(v, n);
    out->n = n;
    out->mean = sum / (double)n;
    out->min = percentile_of(v, n, m, 0);
    out->p50 = percentile_of(v, n, m, 50);
    out->p90 = percentile_of(v, n, m, 90);
    out->p99 = percentile_of(v, n, m, 99);
    out->max = percentile_of(v, n, m, 100);
}

/* ---- reference rows ------------------------------------------------ */

/* Keys are processed in blocks of this many rows: fp64 copies of a block,
 * never of the whole key set. */
#define KEY_BLOCK 1024

/* C[m][n] = alpha * A[m][k] . B[n][k]^T + beta * C (row-major, leading dims). */
static void gemm_nt(int m, int n, int k, double alpha, const double *A, int lda, const double *B,
                    int ldb, double beta, double *C, int ldc) {
    if (m <= 0 || n <= 0) return;
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
}
/* C[m][n] = alpha * A[m][k] . B[k][n] + beta * C. */
static void gemm_nn(int m, int n, int k, double alpha, const double *A, int lda, const double *B,
                    int ldb, double beta, double *C, int ldc) {
    if (m <= 0 || n <= 0) return;
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
}

/* Softmax of one row of logits, in place (-Inf = excluded: weight 0). */
static void softmax_inplace(double *l, int n) {
    double m = -INFINITY, sum = 0;
    for (int j = 0; j < n; j++)
        if (l[j] > m) m = l[j];
    for (int j = 0; j < n; j++) {
        l[j] = l[j] == -INFINITY ? 0 : exp(l[j] - m);
        sum += l[j];
    }
    for (int j = 0; j < n; j++) l[j] /= sum;
}

static double dot(const double *a, const double *b, int n) {
    double s = 0;
    for (int i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

/* ---- the whole call ------------------------------------------------ */

typedef struct {
    double *rel, *cos;
    double abs_sum, abs_max;
    int64_t n_rows, n_elems;
} quality_acc;

static void quality_add(quality_acc *a, const float *o, const double *e, int dv) {
    double de = 0, ee = 0, oo = 0, oe = 0;
    for (int c = 0; c < dv; c++) {
        double d = (double)o[c] - e[c];
        de += d * d;
        ee += e[c] * e[c];
        oo += (double)o[c] * o[c];
        oe += (double)o[c] * e[c];
        double ad = fabs(d);
        a->abs_sum += ad;
        if (ad > a->abs_max || isnan(ad)) a->abs_max = ad;
    }
    a->n_elems += dv;
    double rel = ee > 0 ? sqrt(de) / sqrt(ee) : (de == 0 ? 0 : INFINITY);
    double cs = (oo > 0 && ee > 0) ? oe / (sqrt(oo) * sqrt(ee)) : (oo == 0 && ee == 0 ? 1 : 0);
    a->rel[a->n_rows] = rel;
    a->cos[a->n_rows] = cs;
    a->n_rows++;
}

static void quality_finish(quality_acc *a, tk_quality *q) {
    memset(q, 0, sizeof *q);
    if (a->n_rows == 0) return;
    double cs_sum = 0, cs_min = INFINITY, rel_sum = 0;
    for (int64_t r = 0; r < a->n_rows; r++) {
        cs_sum += a->cos[r];
        if (a->cos[r] < cs_min || isnan(a->cos[r])) cs_min = a->cos[r];
        rel_sum += a->rel[r];
    }
    q->n = a->n_rows;
    q->rel_l2_mean = rel_sum / (double)a->n_rows;
    q->rel_l2_p95 = tki_percentile(a->rel, a->n_rows, 95);
    q->rel_l2_max = tki_percentile(a->rel, a->n_rows, 100);
    q->cos_min = cs_min;
    q->cos_mean = cs_sum / (double)a->n_rows;
    q->abs_err_mean = a->abs_sum / (double)a->n_elems;
    q->abs_err_max = a->abs_max;
}

static double norm_f(const float *x, int n) {
    double s = 0;
    for (int i = 0; i < n; i++) s += (double)x[i] * x[i];
    return sqrt(s);
}

/* x (D floats) -> out (D doubles), each Taylor slice modified; returns the
 * norm of the result. */
static double taylor_mod_row(const tki_plan *p, const float *x, double *out) {
    double total = 0;
    for (int i = 0; i < p->D; i++) out[i] = x[i];
    for (int c = 0; c < p->blocks; c++) {
        double *sl = out + (size_t)c * p->d;
        tki_qkmod_apply(&p->mod, sl, p->d, sl);
        total += dot(sl, sl, p->d);
    }
    return sqrt(total);
}

/* hat[r][0..g) = modify(P_h x_r) for n float rows x (stride D); X: n*D
 * doubles of scratch. Returns nothing; norms are the caller's. */
static void far_rows(const tki_plan *p, int h, const float *x, int n, double *X, double *hat) {
    for (size_t t = 0; t < (size_t)n * p->D; t++) X[t] = x[t];
    gemm_nt(n, p->g, p->D, 1.0, X, p->D, p->proj + (size_t)h * p->g * p->D, p->D, 0.0, hat, p->g);
    for (int r = 0; r < n; r++) tki_qkmod_apply(&p->mod, hat + (size_t)r * p->g, p->g, hat + (size_t)r * p->g);
}

/* Every buffer of tki_stats_fill, allocated and freed together. */
typedef struct {
    int64_t *qidx, *qki, *qkj;
    double *Qs, *Qm, *Qhs;   /* sampled rows: q [ns][D], modified q [ns][D], far q [ns][g] */
    double *Kb, *Vb, *Kmb;   /* key block: k, v, modified k */
    double *Xb, *Hb;         /* far: q0/k0 block [KEY_BLOCK][D], its far vectors [KEY_BLOCK][g] */
    double *L, *Le, *Lf;     /* logits [ns][Nk]: raw, effective, far (additive) */
    double *Lt;              /* taylor: [blocks][ns][Nk] */
    double *Er, *Ee;         /* references [ns][Dv] */
    double *qn_raw, *qn_mod, *kn_raw, *kn_mod, *qk, *wmass;
    quality_acc raw, eff;
} stats_buf;

static void buf_free(stats_buf *b) {
    void *all[] = {b->qidx, b->qki, b->qkj, b->Qs, b->Qm, b->Qhs, b->Kb, b->Vb, b->Kmb, b->Xb, b->Hb,
                   b->L, b->Le, b->Lf, b->Lt, b->Er, b->Ee, b->qn_raw, b->qn_mod, b->kn_raw,
                   b->kn_mod, b->qk, b->wmass, b->raw.rel, b->raw.cos, b->eff.rel, b->eff.cos};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) free(all[i]);
}

/* malloc of n elements of size sz, at least one. Sets *fail on failure. */
static void *grab(size_t n, size_t sz, int *fail) {
    void *p = malloc((n ? n : 1) * sz);
    if (!p) *fail = 1;
    return p;
}

int tki_stats_fill(const tki_plan *p, const tk_call *call, const float *o, const tki_den_acc *den,
                   const tk_stats_request *req, tk_stats *st, char *err, size_t errlen) {
    memset(st, 0, sizeof *st);
    const int B = p->B, H = p->H, Nq = p->Nq, Nk = p->Nk, D = p->D, Dv = p->Dv, g = p->g;
    const int nb = p->blocks, d = p->d, dv = p->dv;
    const float *q = call->q, *k = call->k, *v = call->v;
    const int hybrid = p->mode == TK_MODE_HYBRID, taylor = p->mode == TK_MODE_TAYLOR;
    const int far = hybrid && p->proj != NULL;
    int64_t ns = req ? req->quality_samples : 0, nqk = req ? req->qk_samples : 0;
    uint64_t seed = req ? req->seed : 0;
    ns = ns < 0 ? 0 : ns > Nq ? Nq : ns;
    int64_t nqk_q = nqk < 0 ? 0 : nqk > Nq ? Nq : nqk, nqk_k = nqk < 0 ? 0 : nqk > Nk ? Nk : nqk;
    const size_t rows = (size_t)B * H * ns;

    stats_buf b;
    memset(&b, 0, sizeof b);
    int fail = 0;
    b.qidx = grab(ns, sizeof *b.qidx, &fail);
    b.qki = grab(nqk_q, sizeof *b.qki, &fail);
    b.qkj = grab(nqk_k, sizeof *b.qkj, &fail);
    b.Qs = grab(ns * D, sizeof(double), &fail);
    b.Kb = grab((size_t)KEY_BLOCK * D, sizeof(double), &fail);
    b.Vb = grab((size_t)KEY_BLOCK * Dv, sizeof(double), &fail);
    b.L = grab(ns * Nk, sizeof(double), &fail);
    b.Er = grab(ns * Dv, sizeof(double), &fail);
    b.Ee = grab(ns * Dv, sizeof(double), &fail);
    if (taylor) {
        b.Qm = grab(ns * D, sizeof(double), &fail);
        b.Kmb = grab((size_t)KEY_BLOCK * D, sizeof(double), &fail);
        b.Lt = grab((size_t)nb * ns * Nk, sizeof(double), &fail);
    }
    if (hybrid) b.Le = grab(ns * Nk, sizeof(double), &fail);
    if (far) {
        b.Qhs = grab(ns * g, sizeof(double), &fail);
        b.Xb = grab((size_t)KEY_BLOCK * D, sizeof(double), &fail);
        b.Hb = grab((size_t)KEY_BLOCK * g, sizeof(double), &fail);
        b.Lf = grab(ns * Nk, sizeof(double), &fail);
    }
    b.qn_raw = grab((size_t)B * H * Nq, sizeof(double), &fail);
    b.qn_mod = grab((size_t)B * H * Nq, sizeof(double), &fail);
    b.kn_raw = grab((size_t)B * H * Nk, sizeof(double), &fail);
    b.kn_mod = grab((size_t)B * H * Nk, sizeof(double), &fail);
    b.qk = grab((size_t)B * H * nqk_q * nqk_k, sizeof(double), &fail);
    b.wmass = grab(rows, sizeof(double), &fail);
    b.raw.rel = grab(rows, sizeof(double), &fail);
    b.raw.cos = grab(rows, sizeof(double), &fail);
    b.eff.rel = grab(rows, sizeof(double), &fail);
    b.eff.cos = grab(rows, sizeof(double), &fail);
    if (fail) {
        buf_free(&b);
        snprintf(err, errlen, "stats: out of memory");
        return TK_ERR_NOMEM;
    }
    ns = tki_sample_indices(seed, TKI_SALT_QUALITY, Nq, ns, b.qidx);
    nqk_q = tki_sample_indices(seed, TKI_SALT_QK_Q, Nq, nqk_q, b.qki);
    nqk_k = tki_sample_indices(seed, TKI_SALT_QK_K, Nk, nqk_k, b.qkj);

    int64_t nqn = 0, nqn_mod = 0, nkn = 0, nkn_mod = 0, nqkv = 0, nwm = 0;
    for (int bi = 0; bi < B; bi++) {
        const uint8_t *mask = call->key_mask ? call->key_mask + (size_t)bi * Nk : NULL;
        for (int h = 0; h < H; h++) {
            const size_t bh = (size_t)bi * H + h;
            const float *qh = q + bh * Nq * D, *kh = k + bh * Nk * D, *vh = v + bh * Nk * Dv;
            const float *q0h = p->q_far + bh * Nq * D, *k0h = p->k_far + bh * Nk * D;
            const float *oh = o + bh * Nq * Dv;

            /* queries: norms; the sampled rows in fp64 (modified, far) */
            for (int i = 0; i < Nq; i++) {
                const float *qi = qh + (size_t)i * D;
                b.qn_raw[nqn++] = norm_f(qi, D);
                if (taylor) b.qn_mod[nqn_mod++] = taylor_mod_row(p, qi, b.Kb); /* Kb: scratch */
                else if (!hybrid) b.qn_mod[nqn_mod++] = b.qn_raw[nqn - 1];
            }
            if (far)
                for (int i0 = 0; i0 < Nq; i0 += KEY_BLOCK) {
                    int n = Nq - i0 < KEY_BLOCK ? Nq - i0 : KEY_BLOCK;
                    far_rows(p, h, q0h + (size_t)i0 * D, n, b.Xb, b.Hb);
                    for (int r = 0; r < n; r++) b.qn_mod[nqn_mod++] = sqrt(dot(b.Hb + (size_t)r * g, b.Hb + (size_t)r * g, g));
                }
            for (int64_t t = 0; t < ns; t++) {
                const float *qi = qh + (size_t)b.qidx[t] * D;
                for (int c = 0; c < D; c++) b.Qs[t * D + c] = qi[c];
                if (taylor) taylor_mod_row(p, qi, b.Qm + t * D);
                if (far) tki_far_vector(p, h, q0h + (size_t)b.qidx[t] * D, b.Qhs + t * g);
            }

            /* sampled q.k */
            for (int64_t a = 0; a < nqk_q; a++)
                for (int64_t c = 0; c < nqk_k; c++) {
                    int64_t j = b.qkj[c];
                    if (mask && !mask[j]) continue;
                    const float *qi = qh + (size_t)b.qki[a] * D, *kj = kh + (size_t)j * D;
                    double s = 0;
                    for (int e = 0; e < D; e++) s += (double)qi[e] * kj[e];
                    b.qk[nqkv++] = p->s0 * s;
                }

            /* keys, block by block: norms, and the logits of the sampled rows */
            for (int j0 = 0; j0 < Nk; j0 += KEY_BLOCK) {
                int n = Nk - j0 < KEY_BLOCK ? Nk - j0 : KEY_BLOCK;
                for (size_t t = 0; t < (size_t)n * D; t++) b.Kb[t] = kh[(size_t)j0 * D + t];
                for (int r = 0; r < n; r++) {
                    int j = j0 + r;
                    double mod_norm = 0;
                    if (taylor) mod_norm = taylor_mod_row(p, kh + (size_t)j * D, b.Kmb + (size_t)r * D);
                    if (mask && !mask[j]) continue;
                    b.kn_raw[nkn++] = sqrt(dot(b.Kb + (size_t)r * D, b.Kb + (size_t)r * D, D));
                    if (taylor) b.kn_mod[nkn_mod++] = mod_norm;
                    else if (!hybrid) b.kn_mod[nkn_mod++] = b.kn_raw[nkn - 1];
                }
                if (far) {
                    far_rows(p, h, k0h + (size_t)j0 * D, n, b.Xb, b.Hb);
                    for (int r = 0; r < n; r++)
                        if (!mask || mask[j0 + r])
                            b.kn_mod[nkn_mod++] = sqrt(dot(b.Hb + (size_t)r * g, b.Hb + (size_t)r * g, g));
                    gemm_nt((int)ns, n, g, p->s, b.Qhs, g, b.Hb, g, 0.0, b.Lf + j0, Nk);
                }
                gemm_nt((int)ns, n, D, p->s0, b.Qs, D, b.Kb, D, 0.0, b.L + j0, Nk);
                for (int c = 0; c < (taylor ? nb : 0); c++)
                    gemm_nt((int)ns, n, d, p->s, b.Qm + (size_t)c * d, D, b.Kmb + (size_t)c * d, D, 0.0,
                            b.Lt + (size_t)c * ns * Nk + j0, Nk);
            }
            if (ns == 0) continue;

            /* logits -> probabilities (masked keys excluded) */
            for (int64_t t = 0; t < ns; t++) {
                int64_t i = b.qidx[t];
                double *l = b.L + t * Nk;
                for (int j = 0; j < Nk; j++) {
                    int kept = !mask || mask[j];
                    if (hybrid) {
                        int inw = tki_in_window(&p->win, i, j);
                        double *le = b.Le + t * Nk;
                        if (!kept) le[j] = -INFINITY;
                        else if (inw) le[j] = l[j];
                        else if (far && p->combine == TK_COMBINE_NORMALIZED) le[j] = log(p->w) + b.Lf[t * Nk + j];
                        else le[j] = -INFINITY;
                        if (far && p->combine == TK_COMBINE_ADDITIVE && !kept) b.Lf[t * Nk + j] = -INFINITY;
                    }
                    if (!kept) l[j] = -INFINITY;
                    for (int c = 0; c < (taylor ? nb : 0); c++)
                        if (!kept) b.Lt[((size_t)c * ns + t) * Nk + j] = -INFINITY;
                }
                softmax_inplace(l, Nk);
                if (hybrid) {
                    softmax_inplace(b.Le + t * Nk, Nk);
                    if (far && p->combine == TK_COMBINE_ADDITIVE) softmax_inplace(b.Lf + t * Nk, Nk);
                    double m = 0;
                    for (int j = 0; j < Nk; j++)
                        if (tki_in_window(&p->win, i, j)) m += l[j];
                    b.wmass[nwm++] = m;
                }
                for (int c = 0; c < (taylor ? nb : 0); c++) softmax_inplace(b.Lt + ((size_t)c * ns + t) * Nk, Nk);
            }

            /* references = probabilities . values, block by block */
            memset(b.Er, 0, (size_t)ns * Dv * sizeof *b.Er);
            memset(b.Ee, 0, (size_t)ns * Dv * sizeof *b.Ee);
            for (int j0 = 0; j0 < Nk; j0 += KEY_BLOCK) {
                int n = Nk - j0 < KEY_BLOCK ? Nk - j0 : KEY_BLOCK;
                for (size_t t = 0; t < (size_t)n * Dv; t++) b.Vb[t] = vh[(size_t)j0 * Dv + t];
                gemm_nn((int)ns, Dv, n, 1.0, b.L + j0, Nk, b.Vb, Dv, 1.0, b.Er, Dv);
                if (hybrid) {
                    gemm_nn((int)ns, Dv, n, 1.0, b.Le + j0, Nk, b.Vb, Dv, 1.0, b.Ee, Dv);
                    if (far && p->combine == TK_COMBINE_ADDITIVE)
                        gemm_nn((int)ns, Dv, n, p->w, b.Lf + j0, Nk, b.Vb, Dv, 1.0, b.Ee, Dv);
                }
                for (int c = 0; c < (taylor ? nb : 0); c++)
                    gemm_nn((int)ns, dv, n, 1.0, b.Lt + (size_t)c * ns * Nk + j0, Nk, b.Vb + (size_t)c * dv,
                            Dv, 1.0, b.Ee + (size_t)c * dv, Dv);
            }
            if (!taylor && !hybrid) memcpy(b.Ee, b.Er, (size_t)ns * Dv * sizeof *b.Ee);
            for (int64_t t = 0; t < ns; t++) {
                quality_add(&b.raw, oh + (size_t)b.qidx[t] * Dv, b.Er + t * Dv, Dv);
                quality_add(&b.eff, oh + (size_t)b.qidx[t] * Dv, b.Ee + t * Dv, Dv);
            }
        }
    }

    if (ns > 0) {
        quality_finish(&b.raw, &st->quality_raw);
        quality_finish(&b.eff, &st->quality_eff);
        st->have |= TK_HAVE_QUALITY;
        if (hybrid) {
            tki_dist_summarize(b.wmass, nwm, &st->window_mass);
            st->have |= TK_HAVE_WINDOW_MASS;
        }
    }
    if (den && den->n > 0) {
        tki_den_acc_finish(den, &st->den);
        st->have |= TK_HAVE_DENOMS;
    }
    tki_dist_summarize(b.qn_raw, nqn, &st->q_norm_raw);
    tki_dist_summarize(b.kn_raw, nkn, &st->k_norm_raw);
    tki_dist_summarize(b.qn_mod, nqn_mod, &st->q_norm_mod);
    tki_dist_summarize(b.kn_mod, nkn_mod, &st->k_norm_mod);
    st->have |= TK_HAVE_NORMS;
    if (nqkv > 0) {
        tki_dist_summarize(b.qk, nqkv, &st->qk);
        st->have |= TK_HAVE_QK;
    }
    buf_free(&b);
    return TK_OK;
}

/*
 * stats.c -- per-call statistics (SPEC 5), shared by the backends. See
 * stats.h for what each figure is.
 */
#include "stats.h"

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

/* out[0..dv) += coef * sum_j softmax(logit)_j v_j over the finite logits
 * (-Inf = excluded). weights (NULL or Nk) receives the probabilities. */
static void softmax_accumulate(const double *logit, int Nk, const float *v, int64_t v_stride,
                               int dv, double coef, double *out, double *weights) {
    double m = -INFINITY;
    for (int j = 0; j < Nk; j++)
        if (logit[j] > m) m = logit[j];
    double sum = 0;
    for (int j = 0; j < Nk; j++) sum += logit[j] == -INFINITY ? 0 : exp(logit[j] - m);
    for (int j = 0; j < Nk; j++) {
        double p = logit[j] == -INFINITY ? 0 : exp(logit[j] - m) / sum;
        if (weights) weights[j] = p;
        if (p == 0) continue;
        const float *vj = v + (size_t)j * v_stride;
        for (int c = 0; c < dv; c++) out[c] += coef * p * vj[c];
    }
}

static double dot(const double *a, const double *b, int n) {
    double s = 0;
    for (int i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

void tki_softmax_row(const double *q, const double *keys, int64_t key_stride, int d,
                     const float *v, int64_t v_stride, int dv, const uint8_t *mask, int Nk,
                     double scale, double *out, double *weights) {
    double *logit = malloc((size_t)Nk * sizeof *logit);
    for (int c = 0; c < dv; c++) out[c] = 0;
    if (!logit) { /* tiny allocation; callers pre-check memory */
        for (int c = 0; c < dv; c++) out[c] = NAN;
        return;
    }
    for (int j = 0; j < Nk; j++)
        logit[j] = (mask && !mask[j]) ? -INFINITY : scale * dot(q, keys + (size_t)j * key_stride, d);
    softmax_accumulate(logit, Nk, v, v_stride, dv, 1.0, out, weights);
    free(logit);
}

void tki_hybrid_eff_row(const tki_plan *plan, int64_t i, const double *q_row, const double *keys,
                        const double *qhat, const double *khat, const float *v,
                        const uint8_t *mask, double *logit, double *out) {
    int Nk = plan->Nk, D = plan->D, Dv = plan->Dv, g = plan->g;
    int use_far = plan->w > 0 && qhat && khat;
    for (int c = 0; c < Dv; c++) out[c] = 0;
    /* local (and, normalized, the far keys on the same softmax) */
    for (int j = 0; j < Nk; j++) {
        if (mask && !mask[j])
            logit[j] = -INFINITY;
        else if (tki_in_window(&plan->win, i, j))
            logit[j] = plan->s0 * dot(q_row, keys + (size_t)j * D, D);
        else if (use_far && plan->combine == TK_COMBINE_NORMALIZED)
            logit[j] = log(plan->w) + plan->s * dot(qhat, khat + (size_t)j * g, g);
        else
            logit[j] = -INFINITY;
    }
    softmax_accumulate(logit, Nk, v, Dv, Dv, 1.0, out, NULL);
    if (!use_far || plan->combine != TK_COMBINE_ADDITIVE) return;
    /* additive: + w * the far field's own softmax over every kept key */
    for (int j = 0; j < Nk; j++)
        logit[j] = (mask && !mask[j]) ? -INFINITY : plan->s * dot(qhat, khat + (size_t)j * g, g);
    softmax_accumulate(logit, Nk, v, Dv, Dv, plan->w, out, NULL);
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
    double cs_sum = 0, cs_min = INFINITY;
    for (int64_t r = 0; r < a->n_rows; r++) {
        cs_sum += a->cos[r];
        if (a->cos[r] < cs_min || isnan(a->cos[r])) cs_min = a->cos[r];
    }
    double rel_sum = 0;
    for (int64_t r = 0; r < a->n_rows; r++) rel_sum += a->rel[r];
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

/* Norm of the Taylor-modified row: each slice scaled by its own factor. */
static double taylor_mod_norm(const tki_plan *p, const float *x) {
    double total = 0;
    for (int c = 0; c < p->blocks; c++) {
        double n = norm_f(x + (size_t)c * p->d, p->d);
        double f = tki_qkmod_factor(&p->mod, n);
        total += (f * n) * (f * n);
    }
    return sqrt(total);
}

/* x (D floats) -> out (D doubles), each Taylor slice modified. */
static void taylor_mod_row(const tki_plan *p, const float *x, double *out) {
    for (int i = 0; i < p->D; i++) out[i] = x[i];
    for (int c = 0; c < p->blocks; c++)
        tki_qkmod_apply(&p->mod, out + (size_t)c * p->d, p->d, out + (size_t)c * p->d);
}

int tki_stats_fill(const tki_plan *p, const tk_call *call, const float *o, const tki_den_acc *den,
                   const tk_stats_request *req, tk_stats *st, char *err, size_t errlen) {
    memset(st, 0, sizeof *st);
    const int B = p->B, H = p->H, Nq = p->Nq, Nk = p->Nk, D = p->D, Dv = p->Dv, g = p->g;
    const float *q = call->q, *k = call->k, *v = call->v;
    const uint8_t *mask_all = call->key_mask;
    int hybrid = p->mode == TK_MODE_HYBRID, taylor = p->mode == TK_MODE_TAYLOR;
    int far = hybrid && p->proj != NULL;
    int64_t nsamp = req ? req->quality_samples : 0, nqk = req ? req->qk_samples : 0;
    uint64_t seed = req ? req->seed : 0;
    if (nsamp > Nq) nsamp = Nq;
    if (nsamp < 0) nsamp = 0;
    int64_t nqk_q = nqk > Nq ? Nq : (nqk < 0 ? 0 : nqk), nqk_k = nqk > Nk ? Nk : (nqk < 0 ? 0 : nqk);
    int64_t rows = (int64_t)B * H * nsamp;

    int64_t *qidx = malloc((size_t)(nsamp + 1) * sizeof *qidx);
    int64_t *qki = malloc((size_t)(nqk_q + 1) * sizeof *qki);
    int64_t *qkj = malloc((size_t)(nqk_k + 1) * sizeof *qkj);
    double *keys = malloc((size_t)Nk * D * sizeof *keys);
    double *keys_mod = taylor ? malloc((size_t)Nk * D * sizeof *keys_mod) : NULL;
    double *khat = far ? malloc((size_t)Nk * g * sizeof *khat) : NULL;
    double *qrow = malloc((size_t)(D + g + 1) * sizeof *qrow);
    double *qhat = qrow + D;
    double *qmod = malloc((size_t)D * sizeof *qmod);
    double *weights = malloc((size_t)Nk * sizeof *weights);
    double *e_raw = malloc((size_t)Dv * sizeof *e_raw), *e_eff = malloc((size_t)Dv * sizeof *e_eff);
    double *qn_raw = malloc((size_t)B * H * Nq * sizeof *qn_raw);
    double *qn_mod = malloc((size_t)B * H * Nq * sizeof *qn_mod);
    double *kn_raw = malloc((size_t)B * H * Nk * sizeof *kn_raw);
    double *kn_mod = malloc((size_t)B * H * Nk * sizeof *kn_mod);
    double *qk = malloc((size_t)(B * H * nqk_q * nqk_k + 1) * sizeof *qk);
    double *wmass = malloc((size_t)(rows + 1) * sizeof *wmass);
    quality_acc raw = {0}, eff = {0};
    raw.rel = malloc((size_t)(rows + 1) * sizeof(double));
    raw.cos = malloc((size_t)(rows + 1) * sizeof(double));
    eff.rel = malloc((size_t)(rows + 1) * sizeof(double));
    eff.cos = malloc((size_t)(rows + 1) * sizeof(double));
    int rc = TK_OK;
    if (!qidx || !qki || !qkj || !keys || (taylor && !keys_mod) || (far && !khat) || !qrow ||
        !qmod || !weights || !e_raw || !e_eff || !qn_raw || !qn_mod || !kn_raw || !kn_mod || !qk ||
        !wmass || !raw.rel || !raw.cos || !eff.rel || !eff.cos) {
        snprintf(err, errlen, "stats: out of memory");
        rc = TK_ERR_NOMEM;
        goto done;
    }
    nsamp = tki_sample_indices(seed, TKI_SALT_QUALITY, Nq, nsamp, qidx);
    nqk_q = tki_sample_indices(seed, TKI_SALT_QK_Q, Nq, nqk_q, qki);
    nqk_k = tki_sample_indices(seed, TKI_SALT_QK_K, Nk, nqk_k, qkj);

    int64_t nqn = 0, nqn_mod = 0, nkn = 0, nkn_mod = 0, nqkv = 0, nwm = 0;
    for (int b = 0; b < B; b++) {
        const uint8_t *mask = mask_all ? mask_all + (size_t)b * Nk : NULL;
        for (int h = 0; h < H; h++) {
            size_t bh = (size_t)b * H + h;
            const float *qh = q + bh * Nq * D, *kh = k + bh * Nk * D, *vh = v + bh * Nk * Dv;
            const float *q0h = p->q_far + bh * Nq * D, *k0h = p->k_far + bh * Nk * D;
            const float *oh = o + bh * Nq * Dv;
            /* keys: fp64 copy, norms, modified forms */
            for (int j = 0; j < Nk; j++) {
                const float *kj = kh + (size_t)j * D;
                for (int i = 0; i < D; i++) keys[(size_t)j * D + i] = kj[i];
                if (taylor) taylor_mod_row(p, kj, keys_mod + (size_t)j * D);
                if (far) tki_far_vector(p, h, k0h + (size_t)j * D, khat + (size_t)j * g);
                if (mask && !mask[j]) continue;
                kn_raw[nkn++] = norm_f(kj, D);
                if (taylor)
                    kn_mod[nkn_mod++] = taylor_mod_norm(p, kj);
                else if (far)
                    kn_mod[nkn_mod++] = sqrt(dot(khat + (size_t)j * g, khat + (size_t)j * g, g));
                else if (!hybrid)
                    kn_mod[nkn_mod++] = kn_raw[nkn - 1];
            }
            for (int i = 0; i < Nq; i++) {
                const float *qi = qh + (size_t)i * D;
                qn_raw[nqn++] = norm_f(qi, D);
                if (taylor) {
                    qn_mod[nqn_mod++] = taylor_mod_norm(p, qi);
                } else if (far) {
                    tki_far_vector(p, h, q0h + (size_t)i * D, qhat);
                    qn_mod[nqn_mod++] = sqrt(dot(qhat, qhat, g));
                } else if (!hybrid) {
                    qn_mod[nqn_mod++] = qn_raw[nqn - 1];
                }
            }
            /* sampled q.k */
            for (int64_t a = 0; a < nqk_q; a++)
                for (int64_t c = 0; c < nqk_k; c++) {
                    int64_t j = qkj[c];
                    if (mask && !mask[j]) continue;
                    const float *qi = qh + (size_t)qki[a] * D;
                    double s = 0;
                    for (int i = 0; i < D; i++) s += (double)qi[i] * keys[(size_t)j * D + i];
                    qk[nqkv++] = p->s0 * s;
                }
            /* quality rows */
            for (int64_t t = 0; t < nsamp; t++) {
                int64_t i = qidx[t];
                const float *qi = qh + (size_t)i * D;
                for (int c = 0; c < D; c++) qrow[c] = qi[c];
                tki_softmax_row(qrow, keys, D, D, vh, Dv, Dv, mask, Nk, p->s0, e_raw, weights);
                if (hybrid) {
                    double m = 0;
                    for (int j = 0; j < Nk; j++)
                        if (tki_in_window(&p->win, i, j)) m += weights[j];
                    wmass[nwm++] = m;
                }
                if (taylor) {
                    taylor_mod_row(p, qi, qmod);
                    for (int c = 0; c < p->blocks; c++)
                        tki_softmax_row(qmod + (size_t)c * p->d, keys_mod + (size_t)c * p->d, D,
                                        p->d, vh + (size_t)c * p->dv, Dv, p->dv, mask, Nk, p->s,
                                        e_eff + (size_t)c * p->dv, NULL);
                } else if (hybrid) {
                    if (far) tki_far_vector(p, h, q0h + (size_t)i * D, qhat);
                    tki_hybrid_eff_row(p, i, qrow, keys, far ? qhat : NULL, khat, vh, mask,
                                       weights, e_eff);
                } else {
                    memcpy(e_eff, e_raw, (size_t)Dv * sizeof *e_eff);
                }
                quality_add(&raw, oh + (size_t)i * Dv, e_raw, Dv);
                quality_add(&eff, oh + (size_t)i * Dv, e_eff, Dv);
            }
        }
    }

    if (nsamp > 0) {
        quality_finish(&raw, &st->quality_raw);
        quality_finish(&eff, &st->quality_eff);
        st->have |= TK_HAVE_QUALITY;
        if (hybrid) {
            tki_dist_summarize(wmass, nwm, &st->window_mass);
            st->have |= TK_HAVE_WINDOW_MASS;
        }
    }
    if (den && den->n > 0) {
        tki_den_acc_finish(den, &st->den);
        st->have |= TK_HAVE_DENOMS;
    }
    tki_dist_summarize(qn_raw, nqn, &st->q_norm_raw);
    tki_dist_summarize(kn_raw, nkn, &st->k_norm_raw);
    tki_dist_summarize(qn_mod, nqn_mod, &st->q_norm_mod);
    tki_dist_summarize(kn_mod, nkn_mod, &st->k_norm_mod);
    st->have |= TK_HAVE_NORMS;
    if (nqkv > 0) {
        tki_dist_summarize(qk, nqkv, &st->qk);
        st->have |= TK_HAVE_QK;
    }

done:
    free(qidx);
    free(qki);
    free(qkj);
    free(keys);
    free(keys_mod);
    free(khat);
    free(qrow);
    free(qmod);
    free(weights);
    free(e_raw);
    free(e_eff);
    free(qn_raw);
    free(qn_mod);
    free(kn_raw);
    free(kn_mod);
    free(qk);
    free(wmass);
    free(raw.rel);
    free(raw.cos);
    free(eff.rel);
    free(eff.cos);
    return rc;
}

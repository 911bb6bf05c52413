/* stats_test.c -- per-call statistics (SPEC 5) against brute-force values on
 * small inputs, the summaries, and the seeded sampling. */
#include "harness.h"
#include "plan.h"
#include "stats.h"
#include "test_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Sorted-array percentile with linear interpolation (numpy's default). */
static double pct_sorted(const double *v, int n, double p) {
    double pos = p / 100 * (n - 1);
    int lo = (int)floor(pos), hi = (int)ceil(pos);
    return v[lo] + (v[hi] - v[lo]) * (pos - lo);
}

static void check_dist(const tk_dist *d, double *vals, int n, const char *what) {
    qsort(vals, n, sizeof *vals, cmp_double);
    double sum = 0;
    for (int i = 0; i < n; i++) sum += vals[i];
    double tol = 1e-9 * (1 + fabs(vals[n - 1]) + fabs(vals[0]));
    TH_CHECKF(d->n == n, "%s: n %lld vs %d", what, (long long)d->n, n);
    TH_CHECKF(fabs(d->min - vals[0]) <= tol, "%s min %g vs %g", what, d->min, vals[0]);
    TH_CHECKF(fabs(d->max - vals[n - 1]) <= tol, "%s max", what);
    TH_CHECKF(fabs(d->mean - sum / n) <= tol, "%s mean", what);
    TH_CHECKF(fabs(d->p50 - pct_sorted(vals, n, 50)) <= tol, "%s p50", what);
    TH_CHECKF(fabs(d->p90 - pct_sorted(vals, n, 90)) <= tol, "%s p90", what);
    TH_CHECKF(fabs(d->p99 - pct_sorted(vals, n, 99)) <= tol, "%s p99", what);
}

/* Quality of o (f32) against references e (fp64), both [rows][dv]. */
static void check_quality(const tk_quality *q, const float *o, const double *e, int rows, int dv,
                          const char *what) {
    double *rel = malloc(rows * sizeof *rel), cs_min = 1e300, cs_sum = 0, rel_sum = 0, abs_sum = 0,
           abs_max = 0;
    for (int r = 0; r < rows; r++) {
        double de = 0, ee = 0, oo = 0, oe = 0;
        for (int c = 0; c < dv; c++) {
            double d = o[r * dv + c] - e[r * dv + c];
            de += d * d, ee += e[r * dv + c] * e[r * dv + c], oo += (double)o[r * dv + c] * o[r * dv + c];
            oe += o[r * dv + c] * e[r * dv + c];
            abs_sum += fabs(d);
            if (fabs(d) > abs_max) abs_max = fabs(d);
        }
        rel[r] = sqrt(de / ee);
        rel_sum += rel[r];
        double cs = oe / sqrt(oo * ee);
        cs_sum += cs;
        if (cs < cs_min) cs_min = cs;
    }
    qsort(rel, rows, sizeof *rel, cmp_double);
    TH_CHECKF(q->n == rows, "%s n", what);
    TH_CHECKF(fabs(q->rel_l2_mean - rel_sum / rows) <= 1e-9, "%s rel mean %g vs %g", what, q->rel_l2_mean, rel_sum / rows);
    TH_CHECKF(fabs(q->rel_l2_max - rel[rows - 1]) <= 1e-9, "%s rel max", what);
    TH_CHECKF(fabs(q->rel_l2_p95 - pct_sorted(rel, rows, 95)) <= 1e-9, "%s rel p95", what);
    TH_CHECKF(fabs(q->cos_min - cs_min) <= 1e-9, "%s cos min", what);
    TH_CHECKF(fabs(q->cos_mean - cs_sum / rows) <= 1e-9, "%s cos mean", what);
    TH_CHECKF(fabs(q->abs_err_mean - abs_sum / (rows * dv)) <= 1e-9, "%s abs mean", what);
    TH_CHECKF(fabs(q->abs_err_max - abs_max) <= 1e-9, "%s abs max", what);
    free(rel);
}

static void test_quality_raw_is_zero_for_exact_mode(void) {
    tu_call t;
    tu_make(&t, 2, 3, 20, 20, 8, 8, 1, 1.0);
    tk_config cfg;
    tu_config(&cfg);
    tk_stats_request sr = {8, 16, 5};
    tk_result res;
    TH_CHECK(tu_run(TK_BACKEND_REF, &t.c, &cfg, TK_MODE_EXACT, &sr, &res) == 0);
    TH_EQ_INT(res.reason, TK_REASON_NONE);
    const tk_stats *st = &res.stats;
    TH_CHECK(st->have & TK_HAVE_QUALITY);
    TH_EQ_INT(st->quality_raw.n, 2 * 3 * 8);
    /* the output is f32: zero up to its rounding */
    TH_CHECKF(st->quality_raw.rel_l2_max < 1e-6, "%g", st->quality_raw.rel_l2_max);
    TH_CHECK(st->quality_raw.cos_min > 1 - 1e-12);
    TH_CHECK(st->quality_eff.rel_l2_max < 1e-6);
    TH_CHECK(!(st->have & TK_HAVE_DENOMS));
    TH_CHECK(st->have & TK_HAVE_TIME && st->kernel_ms >= 0);
    /* a Taylor run of the same input is measurably worse: the figure moves */
    cfg.terms = 2;
    cfg.sub_head_blocks = 1;
    TH_CHECK(tu_run(TK_BACKEND_REF, &t.c, &cfg, TK_MODE_TAYLOR, &sr, &res) == 0);
    TH_EQ_INT(res.reason, TK_REASON_NONE);
    TH_CHECK(res.stats.quality_raw.rel_l2_mean > 1e-3);
    tu_free(&t);
}

static void test_taylor_stats_equal_brute_force_values(void) {
    const int B = 1, H = 2, N = 10, D = 8, Dv = 4, nb = 2, d = 4, dv = 2, P = 3;
    tu_call t;
    tu_make(&t, B, H, N, N, D, Dv, 2, 1.2);
    tk_config cfg;
    tu_config(&cfg);
    cfg.sub_head_blocks = nb, cfg.terms = P, cfg.qk_norm_power = 0.5;
    tk_stats_request sr = {N, N, 3}; /* every query, every (q, k) pair */
    tk_result res;
    TH_CHECK(tu_run(TK_BACKEND_REF, &t.c, &cfg, TK_MODE_TAYLOR, &sr, &res) == 0);
    TH_EQ_INT(res.reason, TK_REASON_NONE);
    const tk_stats *st = &res.stats;
    TH_CHECK((st->have & (TK_HAVE_QUALITY | TK_HAVE_DENOMS | TK_HAVE_NORMS | TK_HAVE_QK)) ==
             (TK_HAVE_QUALITY | TK_HAVE_DENOMS | TK_HAVE_NORMS | TK_HAVE_QK));
    double s0 = 1 / sqrt((double)D), s = 1 / sqrt((double)d), eps = cfg.eps;

    /* modified slices: x * (||x|| + eps)^-1/2 */
    double *qm = malloc(B * H * N * D * sizeof *qm), *km = malloc(B * H * N * D * sizeof *km);
    double qn_raw[20], qn_mod[20], kn_raw[20], kn_mod[20];
    for (int r = 0; r < B * H * N; r++) {
        double tq = 0, tk = 0, mq = 0, mk = 0;
        for (int c = 0; c < nb; c++) {
            double nq = 0, nk = 0;
            for (int e = 0; e < d; e++) {
                nq += (double)t.q[r * D + c * d + e] * t.q[r * D + c * d + e];
                nk += (double)t.k[r * D + c * d + e] * t.k[r * D + c * d + e];
            }
            tq += nq, tk += nk;
            double fq = pow(sqrt(nq) + eps, -0.5), fk = pow(sqrt(nk) + eps, -0.5);
            for (int e = 0; e < d; e++) qm[r * D + c * d + e] = t.q[r * D + c * d + e] * fq, km[r * D + c * d + e] = t.k[r * D + c * d + e] * fk;
            mq += fq * fq * nq, mk += fk * fk * nk;
        }
        qn_raw[r] = sqrt(tq), kn_raw[r] = sqrt(tk), qn_mod[r] = sqrt(mq), kn_mod[r] = sqrt(mk);
    }
    check_dist(&st->q_norm_raw, qn_raw, 20, "q_norm_raw");
    check_dist(&st->k_norm_raw, kn_raw, 20, "k_norm_raw");
    check_dist(&st->q_norm_mod, qn_mod, 20, "q_norm_mod");
    check_dist(&st->k_norm_mod, kn_mod, 20, "k_norm_mod");

    /* q.k sample: every pair of every head */
    double qk[200];
    int nqk = 0;
    for (int h = 0; h < H; h++)
        for (int i = 0; i < N; i++)
            for (int j = 0; j < N; j++) {
                double x = 0;
                for (int e = 0; e < D; e++) x += (double)t.q[(h * N + i) * D + e] * t.k[(h * N + j) * D + e];
                qk[nqk++] = s0 * x;
            }
    check_dist(&st->qk, qk, nqk, "qk");

    /* denominators: sum_j kappa_3(s q~.k~) per head, slice, query */
    double dmin = 1e300, dmax = -1e300, dsum = 0;
    for (int h = 0; h < H; h++)
        for (int c = 0; c < nb; c++)
            for (int i = 0; i < N; i++) {
                double den = 0;
                for (int j = 0; j < N; j++) {
                    double x = 0;
                    for (int e = 0; e < d; e++) x += qm[(h * N + i) * D + c * d + e] * km[(h * N + j) * D + c * d + e];
                    x *= s;
                    den += 1 + x + x * x / 2;
                }
                dmin = fmin(dmin, den), dmax = fmax(dmax, den), dsum += den;
            }
    TH_EQ_INT(st->den.n, H * nb * N);
    TH_NEAR(st->den.min, dmin, 1e-9);
    TH_NEAR(st->den.max, dmax, 1e-9);
    TH_NEAR(st->den.mean, dsum / (H * nb * N), 1e-9);
    TH_EQ_INT(st->den.n_le_eps, 0);

    /* quality_raw: against exact softmax with s0 */
    double *e = malloc(B * H * N * Dv * sizeof *e);
    tu_naive_exact(&t.c, 0, e);
    check_quality(&st->quality_raw, t.o, e, B * H * N, Dv, "quality_raw");
    /* quality_eff: per-slice softmax of s q~.k~ */
    for (int h = 0; h < H; h++)
        for (int c = 0; c < nb; c++)
            for (int i = 0; i < N; i++) {
                double l[10], m = -1e300, sum = 0;
                for (int j = 0; j < N; j++) {
                    double x = 0;
                    for (int a = 0; a < d; a++) x += qm[(h * N + i) * D + c * d + a] * km[(h * N + j) * D + c * d + a];
                    l[j] = s * x;
                    m = fmax(m, l[j]);
                }
                double *out = e + (h * N + i) * Dv + c * dv;
                for (int a = 0; a < dv; a++) out[a] = 0;
                for (int j = 0; j < N; j++) {
                    double w = exp(l[j] - m);
                    sum += w;
                    for (int a = 0; a < dv; a++) out[a] += w * t.v[(h * N + j) * Dv + c * dv + a];
                }
                for (int a = 0; a < dv; a++) out[a] /= sum;
            }
    check_quality(&st->quality_eff, t.o, e, B * H * N, Dv, "quality_eff");
    TH_CHECK(st->quality_eff.rel_l2_mean < st->quality_raw.rel_l2_mean);
    free(qm), free(km), free(e);
    tu_free(&t);
}

static void test_hybrid_window_mass_equals_brute_force(void) {
    const int N = 12, D = 4, Dv = 2, W = 2;
    tu_call t;
    tu_make(&t, 1, 1, N, N, D, Dv, 3, 1.5);
    t.c.text_tokens = 2; /* text queries: every key is in their window */
    tk_config cfg;
    tu_config(&cfg);
    cfg.window_shape = 0, cfg.local_window = W, cfg.global_weight = 0;
    tk_stats_request sr = {N, 4, 9};
    tk_result res;
    TH_CHECK(tu_run(TK_BACKEND_REF, &t.c, &cfg, TK_MODE_HYBRID, &sr, &res) == 0);
    TH_EQ_INT(res.reason, TK_REASON_NONE);
    TH_CHECK(res.stats.have & TK_HAVE_WINDOW_MASS);
    double mass[12], s0 = 0.5;
    for (int i = 0; i < N; i++) {
        double l[12], m = -1e300, tot = 0, in = 0;
        for (int j = 0; j < N; j++) {
            double x = 0;
            for (int e = 0; e < D; e++) x += (double)t.q[i * D + e] * t.k[j * D + e];
            l[j] = s0 * x, m = fmax(m, l[j]);
        }
        for (int j = 0; j < N; j++) {
            double p = exp(l[j] - m);
            tot += p;
            if (i < 2 || abs(i - j) <= W) in += p;
        }
        mass[i] = in / tot;
    }
    TH_NEAR(mass[0], 1.0, 1e-15);
    check_dist(&res.stats.window_mass, mass, N, "window_mass");
    /* w = 0: the output is the local attention, which is the effective
     * reference: quality_eff ~ 0 while quality_raw is not */
    TH_CHECK(res.stats.quality_eff.rel_l2_max < 1e-6);
    TH_CHECK(res.stats.quality_raw.rel_l2_max > 1e-3);
    TH_CHECK(!(res.stats.have & TK_HAVE_DENOMS)); /* no far field: no far den */
    tu_free(&t);
}

static void test_hybrid_quality_eff_shrinks_as_far_terms_grow(void) {
    /* no q0/k0, global_dim = D: the far field sees q.k unprojected, so its
     * exp version is exact attention, and eff = raw */
    const int N = 24, D = 4;
    tu_call t;
    tu_make(&t, 1, 2, N, N, D, 4, 4, 0.6);
    tk_config cfg;
    tu_config(&cfg);
    cfg.window_shape = 0, cfg.local_window = 2, cfg.global_dim = D;
    tk_stats_request sr = {N, 0, 1};
    tk_result res;
    double prev = INFINITY;
    for (int P = 2; P <= 6; P += 2) {
        cfg.global_P = P;
        TH_CHECK(tu_run(TK_BACKEND_REF, &t.c, &cfg, TK_MODE_HYBRID, &sr, &res) == 0);
        TH_EQ_INT(res.reason, TK_REASON_NONE);
        TH_NEAR(res.stats.quality_eff.rel_l2_mean, res.stats.quality_raw.rel_l2_mean, 1e-9);
        TH_CHECKF(res.stats.quality_eff.rel_l2_mean < prev, "P=%d: %g", P, res.stats.quality_eff.rel_l2_mean);
        prev = res.stats.quality_eff.rel_l2_mean;
        TH_CHECK(res.stats.have & TK_HAVE_DENOMS);
        TH_CHECK(!(res.stats.have & TK_HAVE_QK)); /* qk_samples 0 */
    }
    TH_CHECKF(prev < 1e-3, "P=6: %g", prev);
    tu_free(&t);
}

/* quality_eff of the hybrid is the hybrid with an exact exp far field
 * (docs/MATH.md 4). With global_dim = D the projection is a rotation, so the
 * far logits are s q0.k0 and the reference can be written down here. */
static void test_hybrid_quality_eff_is_the_hybrid_with_an_exp_far_field(void) {
    const int N = 12, D = 4, Dv = 2, W = 2;
    const double w = 0.7, s = 0.5;
    tu_call t;
    tu_make(&t, 1, 1, N, N, D, Dv, 8, 1.0);
    tu_add_q0k0(&t, 8, 0.7);
    tk_config cfg;
    tu_config(&cfg);
    cfg.window_shape = 0, cfg.local_window = W, cfg.global_dim = D, cfg.global_weight = w;
    tk_stats_request sr = {N, 0, 2};
    for (int combine = 0; combine < 2; combine++) {
        cfg.combine = combine;
        tk_result res;
        TH_CHECK(tu_run(TK_BACKEND_REF, &t.c, &cfg, TK_MODE_HYBRID, &sr, &res) == 0);
        TH_EQ_INT(res.reason, TK_REASON_NONE);
        double e[12 * 2];
        for (int i = 0; i < N; i++) {
            double loc[12], farl[12], mloc = -1e300, mfar = -1e300;
            for (int j = 0; j < N; j++) {
                double x = 0, x0 = 0;
                for (int a = 0; a < D; a++) x += (double)t.q[i * D + a] * t.k[j * D + a], x0 += (double)t.q0[i * D + a] * t.k0[j * D + a];
                int inw = abs(i - j) <= W;
                loc[j] = inw ? s * x : (combine ? log(w) + s * x0 : -INFINITY);
                farl[j] = s * x0;
                mloc = fmax(mloc, loc[j]), mfar = fmax(mfar, farl[j]);
            }
            double sl = 0, sf = 0, ol[2] = {0, 0}, of[2] = {0, 0};
            for (int j = 0; j < N; j++) {
                double pl = loc[j] == -INFINITY ? 0 : exp(loc[j] - mloc), pf = exp(farl[j] - mfar);
                sl += pl, sf += pf;
                for (int a = 0; a < Dv; a++) ol[a] += pl * t.v[j * Dv + a], of[a] += pf * t.v[j * Dv + a];
            }
            for (int a = 0; a < Dv; a++) e[i * Dv + a] = ol[a] / sl + (combine ? 0 : w * of[a] / sf);
        }
        check_quality(&res.stats.quality_eff, t.o, e, N, Dv, combine ? "eff normalized" : "eff additive");
    }
    tu_free(&t);
}

static void test_percentiles_interpolate_and_keep_non_finite_values(void) {
    double v[101];
    for (int i = 0; i < 101; i++) v[i] = 100 - i; /* 0..100 shuffled by reversal */
    tk_dist d;
    tki_dist_summarize(v, 101, &d);
    TH_NEAR(d.min, 0, 0);
    TH_NEAR(d.p50, 50, 0);
    TH_NEAR(d.p90, 90, 0);
    TH_NEAR(d.p99, 99, 0);
    TH_NEAR(d.max, 100, 0);
    TH_NEAR(d.mean, 50, 1e-12);
    double w[4] = {1, 2, 3, 4};
    TH_NEAR(tki_percentile(w, 4, 50), 2.5, 1e-15);
    double x[3] = {1, INFINITY, 2};
    tki_dist_summarize(x, 3, &d);
    TH_CHECK(isinf(d.max) && isinf(d.mean) && d.min == 1);
    double y[3] = {1, NAN, 2};
    tki_dist_summarize(y, 3, &d);
    TH_CHECK(isnan(d.max) && isnan(d.mean) && d.min == 1 && d.n == 3);
    tki_dist_summarize(y, 0, &d);
    TH_EQ_INT(d.n, 0);
}

static void test_denominator_accumulators_merge_and_count(void) {
    tki_den_acc a, b, all;
    tki_den_acc_init(&a), tki_den_acc_init(&b), tki_den_acc_init(&all);
    double vals[] = {3, -1, 1e-7, 5, INFINITY, 2};
    for (int i = 0; i < 6; i++) {
        tki_den_acc_add(i < 3 ? &a : &b, vals[i], 1e-6);
        tki_den_acc_add(&all, vals[i], 1e-6);
    }
    tki_den_acc_merge(&a, &b);
    tk_denoms x, y;
    tki_den_acc_finish(&a, &x), tki_den_acc_finish(&all, &y);
    TH_CHECK(memcmp(&x, &y, sizeof x) == 0);
    TH_EQ_INT(x.n, 6);
    TH_EQ_INT(x.n_le_eps, 2);
    TH_EQ_INT(x.n_nonfinite, 1);
    TH_NEAR(x.min, -1, 0);
    TH_CHECK(isinf(x.max) && isinf(x.mean));
}

static void test_sampled_indices_are_distinct_sorted_and_reproducible(void) {
    int64_t a[50], b[50];
    TH_EQ_INT(tki_sample_indices(42, TKI_SALT_QUALITY, 1000, 50, a), 50);
    TH_EQ_INT(tki_sample_indices(42, TKI_SALT_QUALITY, 1000, 50, b), 50);
    TH_CHECK(memcmp(a, b, sizeof a) == 0);
    for (int i = 1; i < 50; i++) TH_CHECK(a[i] > a[i - 1]);
    TH_CHECK(a[0] >= 0 && a[49] < 1000);
    tki_sample_indices(43, TKI_SALT_QUALITY, 1000, 50, b);
    TH_CHECK(memcmp(a, b, sizeof a) != 0);
    tki_sample_indices(42, TKI_SALT_PROBE, 1000, 50, b);
    TH_CHECK(memcmp(a, b, sizeof a) != 0);
    TH_EQ_INT(tki_sample_indices(1, 1, 7, 50, a), 7); /* more asked than there are */
    for (int i = 0; i < 7; i++) TH_EQ_INT(a[i], i);
    TH_EQ_INT(tki_sample_indices(1, 1, 0, 5, a), 0);
    /* roughly uniform: each index of 10 picked ~ 3/10 of the time */
    int hits[10] = {0};
    for (int seed = 0; seed < 2000; seed++) {
        int64_t c[3];
        tki_sample_indices((uint64_t)seed, 7, 10, 3, c);
        for (int i = 0; i < 3; i++) hits[c[i]]++;
    }
    for (int i = 0; i < 10; i++) TH_CHECKF(hits[i] > 500 && hits[i] < 700, "index %d: %d", i, hits[i]);
}

static void test_stats_on_a_fallback_are_not_reported(void) {
    tu_call t;
    tu_make(&t, 1, 1, 8, 8, 4, 2, 5, 1.0);
    for (int i = 0; i < 32; i++) t.k[i] = 1, t.q[i] = -1; /* P=2: den < 0 */
    tk_config cfg;
    tu_config(&cfg);
    cfg.terms = 2, cfg.sub_head_blocks = 1;
    tk_stats_request sr = {4, 4, 1};
    tk_result res;
    TH_CHECK(tu_run(TK_BACKEND_REF, &t.c, &cfg, TK_MODE_TAYLOR, &sr, &res) == 0);
    TH_EQ_INT(res.reason, TK_REASON_DENOMINATOR_TOO_SMALL);
    TH_EQ_INT(res.stats.have, 0);
    tu_free(&t);
}

static const th_test tests[] = {
    TH_TEST(test_quality_raw_is_zero_for_exact_mode),
    TH_TEST(test_taylor_stats_equal_brute_force_values),
    TH_TEST(test_hybrid_window_mass_equals_brute_force),
    TH_TEST(test_hybrid_quality_eff_shrinks_as_far_terms_grow),
    TH_TEST(test_hybrid_quality_eff_is_the_hybrid_with_an_exp_far_field),
    TH_TEST(test_percentiles_interpolate_and_keep_non_finite_values),
    TH_TEST(test_denominator_accumulators_merge_and_count),
    TH_TEST(test_sampled_indices_are_distinct_sorted_and_reproducible),
    TH_TEST(test_stats_on_a_fallback_are_not_reported),
    {0},
};

int main(int argc, char **argv) { return th_main(tests, argc, argv); }

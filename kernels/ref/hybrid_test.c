/* hybrid_test.c -- the reference hybrid: windows (1d, 2d with text tokens),
 * the combine formulas, w = 0, dropped far terms, schedules, PCA cache. */
#include "harness.h"
#include "pca.h"
#include "ref.h"
#include "test_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The reference hybrid in fp64 through the internal entry point. Returns the
 * denominator accumulator in *den_out (may be NULL). */
static void run64(tk_context *ctx, const tk_call *c, const tk_config *cfg, double *o64,
                  tk_result *res, tki_den_acc *den_out) {
    char err[256];
    TH_CHECKF(tk_check(ctx, c, cfg, TK_MODE_HYBRID, err, sizeof err) == TK_REASON_NONE, "%s", err);
    tki_plan p;
    TH_CHECK(tki_plan_make(ctx, c, cfg, TK_MODE_HYBRID, &p, err, sizeof err) == 0);
    tki_den_acc den;
    tki_den_acc_init(&den);
    memset(res, 0, sizeof *res);
    TH_CHECK(tkref_hybrid(&p, c, o64, &den, res) == 0);
    TH_EQ_INT(res->reason, TK_REASON_NONE);
    if (den_out) *den_out = den;
}

static tk_context *ref_ctx(void) {
    tk_context *ctx;
    char err[256];
    TH_CHECK(tk_context_open(TK_BACKEND_REF, &ctx, err, sizeof err) == 0);
    return ctx;
}

/* The window, written here apart from the library. */
typedef struct {
    int shape2d, radius, T, gw;
} win;
static int in_win(const win *w, int i, int j) {
    if (w->radius == 0 || i < w->T) return 1;
    if (!w->shape2d) return abs(i - j) <= w->radius;
    if (j < w->T) return 1;
    int ri = (i - w->T) / w->gw, ci = (i - w->T) % w->gw, rj = (j - w->T) / w->gw, cj = (j - w->T) % w->gw;
    return abs(ri - rj) <= w->radius && abs(ci - cj) <= w->radius;
}

/* Windowed (local) softmax attention, naive fp64. */
static void naive_local(const tk_call *c, const win *w, double *out) {
    double s0 = 1 / sqrt((double)c->D);
    const float *q = c->q, *k = c->k, *v = c->v;
    for (int bh = 0; bh < c->B * c->H; bh++)
        for (int i = 0; i < c->Nq; i++) {
            double m = -INFINITY, sum = 0, *o = out + ((size_t)bh * c->Nq + i) * c->Dv;
            double *l = malloc(c->Nk * sizeof *l);
            for (int j = 0; j < c->Nk; j++) {
                l[j] = -INFINITY;
                if (!in_win(w, i, j)) continue;
                double s = 0;
                for (int d = 0; d < c->D; d++) s += (double)q[((size_t)bh * c->Nq + i) * c->D + d] * k[((size_t)bh * c->Nk + j) * c->D + d];
                l[j] = s0 * s;
                if (l[j] > m) m = l[j];
            }
            for (int e = 0; e < c->Dv; e++) o[e] = 0;
            for (int j = 0; j < c->Nk; j++) {
                if (l[j] == -INFINITY) continue;
                double x = exp(l[j] - m);
                sum += x;
                for (int e = 0; e < c->Dv; e++) o[e] += x * v[((size_t)bh * c->Nk + j) * c->Dv + e];
            }
            for (int e = 0; e < c->Dv; e++) o[e] /= sum;
            free(l);
        }
}

static double max_diff_dd(const double *a, const double *b, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs(a[i] - b[i]);
        if (!(d <= m)) m = d;
    }
    return m;
}

static void test_a_window_covering_every_key_equals_exact_attention(void) {
    tu_call t;
    tu_make(&t, 2, 2, 12, 12, 8, 4, 1, 0.8);
    tu_add_q0k0(&t, 1, 0.3);
    size_t n = tu_n(2, 2, 12, 4);
    double *want = malloc(n * sizeof *want), *got = malloc(n * sizeof *got);
    tu_naive_exact(&t.c, 0, want);
    tk_config cfg;
    tu_config(&cfg);
    cfg.window_shape = 0;
    tk_context *ctx = ref_ctx();
    tk_result res;
    int windows[] = {0, 11, 50}; /* 0 = full; 11 and 50 reach every key */
    for (int a = 0; a < 3; a++) {
        cfg.local_window = windows[a];
        run64(ctx, &t.c, &cfg, got, &res, NULL);
        TH_CHECKF(max_diff_dd(got, want, n) < 1e-13, "W=%d: %g", windows[a], max_diff_dd(got, want, n));
    }
    /* a window one short of every key differs (the test can fail) */
    cfg.local_window = 10;
    run64(ctx, &t.c, &cfg, got, &res, NULL);
    TH_CHECK(max_diff_dd(got, want, n) > 1e-6);
    tk_context_close(ctx);
    free(want), free(got);
    tu_free(&t);
}

static void test_far_weight_zero_equals_local_attention_1d_and_2d(void) {
    tu_call t;
    tu_make(&t, 1, 2, 3 + 4 * 5, 3 + 4 * 5, 8, 4, 2, 0.8);
    t.c.text_tokens = 3, t.c.grid_h = 4, t.c.grid_w = 5;
    size_t n = tu_n(1, 2, 23, 4);
    double *want = malloc(n * sizeof *want), *got = malloc(n * sizeof *got);
    tk_config cfg;
    tu_config(&cfg);
    cfg.global_weight = 0;
    tk_context *ctx = ref_ctx();
    tk_result res;
    for (int shape = 0; shape < 2; shape++)
        for (int combine = 0; combine < 2; combine++) {
            cfg.window_shape = shape;
            cfg.combine = combine;
            cfg.local_window = shape ? 1 : 3;
            win w = {shape, cfg.local_window, 3, 5};
            naive_local(&t.c, &w, want);
            run64(ctx, &t.c, &cfg, got, &res, NULL);
            TH_CHECKF(max_diff_dd(got, want, n) < 1e-13, "shape %d combine %d", shape, combine);
        }
    tk_context_close(ctx);
    free(want), free(got);
    tu_free(&t);
}

static void test_the_2d_window_reaches_exactly_the_grid_neighbours_and_the_text(void) {
    const int T = 3, gh = 5, gw = 6;
    for (int r = 1; r <= 3; r++) {
        tki_window w = {TK_WINDOW_2D, r, T, gh, gw};
        for (int i = 0; i < T + gh * gw; i++) {
            int count = 0, want = 0;
            for (int j = 0; j < T + gh * gw; j++) count += tki_in_window(&w, i, j);
            if (i < T) {
                want = T + gh * gw; /* text queries see every key */
            } else {
                int y = (i - T) / gw, x = (i - T) % gw;
                int rows = (y + r < gh ? y + r : gh - 1) - (y - r > 0 ? y - r : 0) + 1;
                int cols = (x + r < gw ? x + r : gw - 1) - (x - r > 0 ? x - r : 0) + 1;
                want = T + rows * cols;
                for (int j = 0; j < T; j++) TH_CHECK(tki_in_window(&w, i, j));
            }
            TH_CHECKF(count == want, "r=%d query %d: %d keys, expected %d", r, i, count, want);
        }
    }
    /* behaviour: with w = 0 and r = 1, a key outside the neighbourhood does
     * not reach the query; a neighbour and a text key do */
    tu_call t;
    tu_make(&t, 1, 1, T + gh * gw, T + gh * gw, 4, 2, 3, 0.5);
    t.c.text_tokens = T, t.c.grid_h = gh, t.c.grid_w = gw;
    tk_config cfg;
    tu_config(&cfg);
    cfg.window_shape = 1, cfg.local_window = 1, cfg.global_weight = 0;
    int query = T + 2 * gw + 2; /* cell (2,2) */
    int far_key = T + 0 * gw + 4, near_key = T + 3 * gw + 3, text_key = 1;
    tk_result res;
    TH_CHECK(tu_run(TK_BACKEND_REF, &t.c, &cfg, TK_MODE_HYBRID, NULL, &res) == 0);
    float before[2] = {t.o[query * 2], t.o[query * 2 + 1]};
    int keys[3] = {far_key, near_key, text_key};
    for (int a = 0; a < 3; a++) {
        float keep = t.v[keys[a] * 2];
        t.v[keys[a] * 2] += 100;
        TH_CHECK(tu_run(TK_BACKEND_REF, &t.c, &cfg, TK_MODE_HYBRID, NULL, &res) == 0);
        int moved = t.o[query * 2] != before[0];
        TH_CHECKF(moved == (a > 0), "key %d moved=%d", keys[a], moved);
        t.v[keys[a] * 2] = keep;
    }
    tu_free(&t);
}

/* The combine formulas of SPEC 4, computed here by brute force. With
 * global_dim = D the projection is a rotation, so q^.k^ = q0.k0 and the far
 * kernel is kappa_P(s q0.k0) with no PCA needed. */
static void brute_hybrid(const tk_call *c, const win *w, int P, double wt, int normalized, double *out) {
    double s0 = 1 / sqrt((double)c->D), s = s0;
    const float *q = c->q, *k = c->k, *v = c->v, *q0 = c->q0, *k0 = c->k0;
    int Nq = c->Nq, Nk = c->Nk, D = c->D, Dv = c->Dv;
    for (int bh = 0; bh < c->B * c->H; bh++)
        for (int i = 0; i < Nq; i++) {
            double m = -INFINITY;
            int inw = 0;
            for (int j = 0; j < Nk; j++)
                if (in_win(w, i, j)) {
                    double d = 0;
                    for (int x = 0; x < D; x++) d += (double)q[((size_t)bh * Nq + i) * D + x] * k[((size_t)bh * Nk + j) * D + x];
                    if (s0 * d > m) m = s0 * d;
                    inw++;
                }
            double dl = 0, df = 0, dfw = 0, nl[16] = {0}, nf[16] = {0}, nfw[16] = {0};
            for (int j = 0; j < Nk; j++) {
                double d = 0, d0 = 0;
                for (int x = 0; x < D; x++) {
                    d += (double)q[((size_t)bh * Nq + i) * D + x] * k[((size_t)bh * Nk + j) * D + x];
                    d0 += (double)q0[((size_t)bh * Nq + i) * D + x] * k0[((size_t)bh * Nk + j) * D + x];
                }
                double kap = 0, term = 1, xx = s * d0;
                for (int p = 0; p < P; p++) kap += term, term *= xx / (p + 1);
                const float *vj = v + ((size_t)bh * Nk + j) * Dv;
                df += kap;
                for (int e = 0; e < Dv; e++) nf[e] += kap * vj[e];
                if (in_win(w, i, j)) {
                    double ex = exp(s0 * d - m);
                    dl += ex;
                    dfw += kap;
                    for (int e = 0; e < Dv; e++) nl[e] += ex * vj[e], nfw[e] += kap * vj[e];
                }
            }
            double *o = out + ((size_t)bh * Nq + i) * Dv;
            for (int e = 0; e < Dv; e++) {
                if (normalized) {
                    double dd = df - dfw;
                    o[e] = (inw == Nk || dd <= 0) ? nl[e] / dl
                                                  : (nl[e] + wt * exp(-m) * (nf[e] - nfw[e])) / (dl + wt * exp(-m) * dd);
                } else {
                    o[e] = nl[e] / dl + (df > 0 ? wt * nf[e] / df : 0);
                }
            }
        }
}

static void test_both_combine_modes_follow_the_spec_formulas(void) {
    tu_call t;
    tu_make(&t, 1, 2, 14, 14, 6, 3, 4, 0.9);
    tu_add_q0k0(&t, 4, 0.5);
    size_t n = tu_n(1, 2, 14, 3);
    double *want = malloc(n * sizeof *want), *got = malloc(n * sizeof *got);
    tk_config cfg;
    tu_config(&cfg);
    cfg.window_shape = 0, cfg.local_window = 2, cfg.global_dim = 6, cfg.global_P = 3;
    cfg.global_weight = 0.7;
    win w = {0, 2, 0, 0};
    tk_context *ctx = ref_ctx();
    tk_result res;
    for (int normalized = 0; normalized < 2; normalized++) {
        cfg.combine = normalized;
        brute_hybrid(&t.c, &w, 3, 0.7, normalized, want);
        run64(ctx, &t.c, &cfg, got, &res, NULL);
        double d = max_diff_dd(got, want, n);
        TH_CHECKF(d < 1e-10, "combine %d: %g", normalized, d);
    }
    tk_context_close(ctx);
    free(want), free(got);
    tu_free(&t);
}

static void test_a_query_with_a_nonpositive_far_denominator_drops_its_far_term(void) {
    /* global_P = 2: kappa = 1 + s q0.k0 < 0 when q0 opposes every k0 */
    const int N = 12, D = 4;
    tu_call t;
    tu_make(&t, 1, 1, N, N, D, 2, 5, 0.5);
    tu_add_q0k0(&t, 5, 0.0);
    for (int j = 0; j < N; j++)
        for (int x = 0; x < D; x++) t.k0[j * D + x] = 2.0f, t.q0[j * D + x] = j % 2 ? -2.0f : 2.0f;
    size_t n = tu_n(1, 1, N, 2);
    double *local = malloc(n * sizeof *local), *got = malloc(n * sizeof *got);
    tk_config cfg;
    tu_config(&cfg);
    cfg.window_shape = 0, cfg.local_window = 1, cfg.global_dim = D, cfg.global_P = 2;
    tk_context *ctx = ref_ctx();
    tk_result res;
    tki_den_acc den;
    cfg.global_weight = 0;
    run64(ctx, &t.c, &cfg, local, &res, NULL);
    cfg.global_weight = 1;
    run64(ctx, &t.c, &cfg, got, &res, &den);
    for (int i = 0; i < N; i++) {
        double d = fabs(got[i * 2] - local[i * 2]);
        if (i % 2)
            TH_CHECKF(d == 0, "query %d kept a negative far term", i);
        else
            TH_CHECKF(d > 1e-6, "query %d lost its positive far term", i);
    }
    TH_EQ_INT(den.n, N);
    TH_EQ_INT(den.n_le_eps, N / 2);
    TH_CHECK(den.min < 0);
    tk_context_close(ctx);
    free(local), free(got);
    tu_free(&t);
}

static void test_window_schedule_end_and_mid_points_match_the_formula(void) {
    tk_config c;
    tk_config_defaults(&c);
    c.local_window = 5;
    TH_EQ_INT(tk_window_at(&c, 0.7), 5); /* high <= low: the fixed window */
    c.local_window_sigma_low = 0.2, c.local_window_sigma_high = 1.0;
    c.local_window_min = 8, c.local_window_max = 32;
    TH_EQ_INT(tk_window_at(&c, 1.0), 32);
    TH_EQ_INT(tk_window_at(&c, 3.0), 32);
    TH_EQ_INT(tk_window_at(&c, 0.2), 8);
    TH_EQ_INT(tk_window_at(&c, 0.0), 8);
    TH_EQ_INT(tk_window_at(&c, 0.6), 20); /* t = 1/2: smoothstep 1/2 */
    /* t = 1/4: f = 1/16 * 5/2 = 0.15625 -> 32 - 24 * 0.15625 = 28.25 */
    TH_EQ_INT(tk_window_at(&c, 0.8), 28);
    /* t = 3/4: f = 9/16 * 3/2 = 0.84375 -> 32 - 20.25 = 11.75 */
    TH_EQ_INT(tk_window_at(&c, 0.4), 12);
    /* a full-attention end (0) holds until the smoothstep midpoint */
    c.local_window_max = 0;
    TH_EQ_INT(tk_window_at(&c, 0.61), 0);
    TH_EQ_INT(tk_window_at(&c, 0.59), 8);
}

static void test_far_weight_schedule_end_and_mid_points_match_the_formula(void) {
    tk_config c;
    tk_config_defaults(&c);
    c.global_weight = 0.8;
    TH_NEAR(tk_far_weight_at(&c, 5.0), 0.8, 0); /* off */
    c.global_sigma_low = 0.2, c.global_sigma_high = 1.0;
    TH_NEAR(tk_far_weight_at(&c, 0.2), 0.8, 0);
    TH_NEAR(tk_far_weight_at(&c, 0.1), 0.8, 0);
    TH_NEAR(tk_far_weight_at(&c, 1.0), 0.0, 0);
    TH_NEAR(tk_far_weight_at(&c, 2.0), 0.0, 0);
    TH_NEAR(tk_far_weight_at(&c, 0.6), 0.4, 1e-15);
    TH_NEAR(tk_far_weight_at(&c, 0.4), 0.6, 1e-15);
}

static void test_the_call_reports_the_scheduled_window_and_weight(void) {
    tu_call t;
    tu_make(&t, 1, 1, 16, 16, 4, 2, 6, 0.5);
    tk_config cfg;
    tu_config(&cfg);
    cfg.window_shape = 0;
    cfg.local_window_sigma_low = 0.2, cfg.local_window_sigma_high = 1.0;
    cfg.local_window_min = 2, cfg.local_window_max = 10;
    cfg.global_sigma_low = 0.2, cfg.global_sigma_high = 1.0, cfg.global_weight = 1;
    t.c.sigma = 0.6;
    tk_result res;
    TH_CHECK(tu_run(TK_BACKEND_REF, &t.c, &cfg, TK_MODE_HYBRID, NULL, &res) == 0);
    TH_EQ_INT(res.reason, TK_REASON_NONE);
    TH_EQ_INT(res.path, TK_PATH_HYBRID);
    TH_EQ_INT(res.window, 6);
    TH_NEAR(res.w, 0.5, 1e-15);
    TH_EQ_INT(res.R, taylor_feature_count(4, 3));
    tu_free(&t);
}

static void test_pca_keeps_dot_products_of_rows_in_a_g_dim_subspace(void) {
    const int D = 12, g = 4, n = 200;
    uint64_t seed = 11;
    double basis[4][12], *rows = malloc(n * D * sizeof *rows), proj[4 * 12];
    for (int a = 0; a < g; a++)
        for (int x = 0; x < D; x++) basis[a][x] = tu_normal(&seed);
    for (int r = 0; r < n; r++)
        for (int x = 0; x < D; x++) {
            rows[r * D + x] = 0;
            for (int a = 0; a < g; a++) rows[r * D + x] += (a + 1) * basis[a][x] * (r % (a + 2) - 0.5 * (a + 1)) ;
        }
    char err[128];
    TH_CHECK(tki_pca_fit(rows, n, D, g, proj, err, sizeof err) == 0);
    /* orthonormal rows */
    for (int a = 0; a < g; a++)
        for (int b = 0; b < g; b++) {
            double d = 0;
            for (int x = 0; x < D; x++) d += proj[a * D + x] * proj[b * D + x];
            TH_NEAR(d, a == b, 1e-10);
        }
    /* (P x).(P y) = x.y for x, y in the span */
    for (int r = 0; r + 1 < 20; r++) {
        double px[4], py[4], xy = 0, pp = 0;
        for (int a = 0; a < g; a++) {
            px[a] = py[a] = 0;
            for (int x = 0; x < D; x++) px[a] += proj[a * D + x] * rows[r * D + x], py[a] += proj[a * D + x] * rows[(r + 1) * D + x];
            pp += px[a] * py[a];
        }
        for (int x = 0; x < D; x++) xy += rows[r * D + x] * rows[(r + 1) * D + x];
        TH_NEAR(pp, xy, 1e-9 * (1 + fabs(xy)));
    }
    /* fewer rows than g: the truncated identity */
    TH_CHECK(tki_pca_fit(rows, 3, D, g, proj, err, sizeof err) == 0);
    for (int a = 0; a < g; a++)
        for (int x = 0; x < D; x++) TH_NEAR(proj[a * D + x], a == x, 0);
    free(rows);
}

static void test_pca_orders_directions_by_variance_with_a_fixed_sign(void) {
    const int D = 5, n = 400;
    double *rows = malloc(n * D * sizeof *rows), proj[3 * 5];
    uint64_t seed = 12;
    for (int r = 0; r < n; r++)
        for (int x = 0; x < D; x++) rows[r * D + x] = (x == 3 ? 5 : x == 1 ? 3 : x == 0 ? 2 : 0.5) * tu_normal(&seed);
    char err[128];
    TH_CHECK(tki_pca_fit(rows, n, D, 3, proj, err, sizeof err) == 0);
    int want[3] = {3, 1, 0};
    for (int a = 0; a < 3; a++) TH_CHECKF(proj[a * D + want[a]] > 0.95, "direction %d", a);
    free(rows);
}

static void test_pca_is_fitted_once_per_layer_and_refitted_on_schedule(void) {
    tu_call t;
    tu_make(&t, 1, 2, 16, 16, 8, 4, 7, 0.5);
    tu_add_q0k0(&t, 7, 0.2);
    tk_config cfg;
    tu_config(&cfg);
    cfg.window_shape = 0, cfg.local_window = 2, cfg.global_dim = 4;
    tk_context *ctx = ref_ctx();
    tk_result res;
    for (int step = 0; step < 4; step++) {
        t.c.step = step;
        TH_CHECK(tk_attention(ctx, &t.c, &cfg, TK_MODE_HYBRID, NULL, &res) == 0);
    }
    TH_EQ_INT(tki_pca_cache_fits(ctx->pca), 1); /* pca_refit_every = 0: once */
    t.c.layer = 3;
    TH_CHECK(tk_attention(ctx, &t.c, &cfg, TK_MODE_HYBRID, NULL, &res) == 0);
    TH_EQ_INT(tki_pca_cache_fits(ctx->pca), 2); /* a new layer */
    cfg.pca_refit_every = 2;
    for (int step = 4; step < 8; step++) {
        t.c.step = step;
        TH_CHECK(tk_attention(ctx, &t.c, &cfg, TK_MODE_HYBRID, NULL, &res) == 0);
    }
    /* layer 3 fitted at step 3: refits at 5 and 7 */
    TH_EQ_INT(tki_pca_cache_fits(ctx->pca), 4);
    tk_context_reset(ctx);
    TH_CHECK(tk_attention(ctx, &t.c, &cfg, TK_MODE_HYBRID, NULL, &res) == 0);
    TH_EQ_INT(tki_pca_cache_fits(ctx->pca), 5);
    /* an unknown layer is fitted on every call */
    t.c.layer = -1;
    TH_CHECK(tk_attention(ctx, &t.c, &cfg, TK_MODE_HYBRID, NULL, &res) == 0);
    TH_CHECK(tk_attention(ctx, &t.c, &cfg, TK_MODE_HYBRID, NULL, &res) == 0);
    TH_EQ_INT(tki_pca_cache_fits(ctx->pca), 7);
    tk_context_close(ctx);
    tu_free(&t);
}

static void test_pca_rows_mix_q_and_kept_k_rows_the_same_for_every_head(void) {
    uint8_t mask[2 * 6] = {1, 1, 0, 1, 1, 1, 1, 0, 0, 1, 1, 1};
    tki_pca_row rows[64];
    int64_t n = tki_pca_select_rows(1, 64, 2, 5, 6, mask, rows);
    TH_EQ_INT(n, 2 * 5 + 9); /* every q row and every kept k row */
    int nq = 0;
    for (int64_t t = 0; t < n; t++) {
        if (!rows[t].is_key) nq++;
        else TH_CHECK(mask[rows[t].b * 6 + rows[t].n]);
    }
    TH_EQ_INT(nq, 10);
    n = tki_pca_select_rows(1, 7, 2, 5, 6, mask, rows);
    TH_EQ_INT(n, 7);
    tki_pca_row again[7];
    TH_EQ_INT(tki_pca_select_rows(1, 7, 2, 5, 6, mask, again), 7);
    TH_CHECK(memcmp(rows, again, sizeof again) == 0);
}

static const th_test tests[] = {
    TH_TEST(test_a_window_covering_every_key_equals_exact_attention),
    TH_TEST(test_far_weight_zero_equals_local_attention_1d_and_2d),
    TH_TEST(test_the_2d_window_reaches_exactly_the_grid_neighbours_and_the_text),
    TH_TEST(test_both_combine_modes_follow_the_spec_formulas),
    TH_TEST(test_a_query_with_a_nonpositive_far_denominator_drops_its_far_term),
    TH_TEST(test_window_schedule_end_and_mid_points_match_the_formula),
    TH_TEST(test_far_weight_schedule_end_and_mid_points_match_the_formula),
    TH_TEST(test_the_call_reports_the_scheduled_window_and_weight),
    TH_TEST(test_pca_keeps_dot_products_of_rows_in_a_g_dim_subspace),
    TH_TEST(test_pca_orders_directions_by_variance_with_a_fixed_sign),
    TH_TEST(test_pca_is_fitted_once_per_layer_and_refitted_on_schedule),
    TH_TEST(test_pca_rows_mix_q_and_kept_k_rows_the_same_for_every_head),
    {0},
};

int main(int argc, char **argv) { return th_main(tests, argc, argv); }

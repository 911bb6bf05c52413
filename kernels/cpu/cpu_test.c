/*
 * cpu_test.c -- the cpu backend against the reference (fp64 oracle), per mode,
 * on shapes that are not multiples of the cpu block sizes (query blocks of
 * 256, key blocks of 512, feature blocks of 32..256 tokens, 8x8 grid tiles),
 * with batch > 1, key masks, cross attention and both window shapes.
 *
 * The measure is the normalized error ||o_cpu - o_ref|| / ||o_ref|| over the
 * whole output. Thresholds (why they are what they are):
 *   exact   1e-5: the cpu computes logits with float sgemm (K = D terms,
 *           relative rounding ~ sqrt(D) 6e-8 ~ 1e-6 of |q||k| s0, i.e. an
 *           absolute logit error ~1e-6 for logits of size ~1-5), exponentiates
 *           in float (~1e-7 relative) and sums in float/fp64: the weights are
 *           off by ~1e-6 relative, and so is o. 1e-5 leaves a 10x margin and
 *           still fails on any real mistake (a dropped key or block moves o by
 *           1e-3 or more at these sizes).
 *   taylor  1e-4: features are products of up to P-1 float factors (~P 6e-8
 *           each), S and z sum Nk float terms of both signs (sgemm: relative
 *           error ~ sqrt(Nk) 6e-8 of the sum of magnitudes, ~1e-5 when the
 *           terms cancel to a tenth), and num/den divides two such sums.
 *   hybrid  1e-4: the local part is as exact; the far part is a P=3 Taylor on
 *           16 dims (as taylor) scaled by w e^{-m} and added to the local sums.
 * Measured (TK_TEST_VERBOSE=1 prints them): exact <= 1.5e-6, taylor <= 9e-7,
 * hybrid <= 6e-7 -- 7x to 100x below the thresholds. Removing the far term
 * of the hybrid moves o by 0.2-1.6, so the hybrid cases do test it.
 */
#include "harness.h"
#include "kernels.h"
#include "test_util.h"
#include "cpu/cpu.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EXACT_TOL 1e-5
#define TAYLOR_TOL 1e-4
#define HYBRID_TOL 1e-4

static double norm_err(const float *a, const float *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - (double)b[i];
        if (!isfinite(d)) return INFINITY;
        num += d * d;
        den += (double)b[i] * b[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* Runs ref and cpu on the same call; both must take the same path and
 * reason; returns the normalized error (0 for a shared fallback). */
static double compare(tu_call *t, const tk_config *cfg, tk_mode mode, tk_result *rref, tk_result *rcpu) {
    size_t n = tu_n(t->c.B, t->c.H, t->c.Nq, t->c.Dv);
    float *oref = malloc(n * sizeof *oref);
    float *ocpu = malloc(n * sizeof *ocpu);
    TH_CHECK(oref && ocpu);
    for (size_t i = 0; i < n; i++) oref[i] = ocpu[i] = -777.0f; /* untouched marker */
    tk_call c = t->c;
    c.o = oref;
    TH_CHECK(tu_run(TK_BACKEND_REF, &c, cfg, mode, NULL, rref) == 0);
    c.o = ocpu;
    TH_CHECK(tu_run(TK_BACKEND_CPU, &c, cfg, mode, NULL, rcpu) == 0);
    TH_CHECKF(rref->reason == rcpu->reason, "ref reason %s (%s), cpu reason %s (%s)",
              tk_reason_name(rref->reason), rref->detail, tk_reason_name(rcpu->reason), rcpu->detail);
    TH_EQ_INT(rref->stage, rcpu->stage);
    TH_EQ_INT(rref->path, rcpu->path);
    TH_EQ_INT(rref->R, rcpu->R);
    double e = 0;
    if (rcpu->reason == TK_REASON_NONE) {
        e = norm_err(ocpu, oref, n);
    } else {
        for (size_t i = 0; i < n; i++) TH_CHECKF(ocpu[i] == -777.0f, "fallback wrote o[%zu]", i);
    }
    free(oref);
    free(ocpu);
    return e;
}

static void check_mode(tu_call *t, const tk_config *cfg, tk_mode mode, double tol, const char *what) {
    tk_result a, b;
    double e = compare(t, cfg, mode, &a, &b);
    TH_CHECKF(a.reason == TK_REASON_NONE, "%s: ref fell back: %s (%s)", what, tk_reason_name(a.reason), a.detail);
    if (getenv("TK_TEST_VERBOSE")) fprintf(stderr, "%s: %.3g\n", what, e);
    TH_CHECKF(e <= tol, "%s: cpu vs ref normalized error %.3g > %.3g", what, e, tol);
}

static void test_exact_agrees_with_ref_on_odd_shapes_batches_and_masks(void) {
    tk_config cfg;
    tu_config(&cfg);
    struct { int B, H, Nq, Nk, D, Dv; } shapes[] = {
        {1, 1, 1, 1, 8, 8}, {2, 3, 77, 77, 16, 24}, {1, 2, 600, 600, 64, 64}, {2, 1, 130, 1029, 32, 16},
    };
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        tu_call t;
        tu_make(&t, shapes[s].B, shapes[s].H, shapes[s].Nq, shapes[s].Nk, shapes[s].D, shapes[s].Dv, 11 + s, 1.5);
        char what[64];
        snprintf(what, sizeof what, "exact shape %zu", s);
        check_mode(&t, &cfg, TK_MODE_EXACT, EXACT_TOL, what);
        uint8_t *m = tu_add_mask(&t);
        for (int j = 0; j < t.c.B * t.c.Nk; j++) m[j] = (j * 7 + s) % 3 != 0;
        m[0] = 1;
        if (t.c.Nk > 600) memset(m + 1, 0, 560); /* a whole key block masked in batch 0 */
        snprintf(what, sizeof what, "exact masked shape %zu", s);
        check_mode(&t, &cfg, TK_MODE_EXACT, EXACT_TOL, what);
        tu_free(&t);
    }
}

static void test_exact_with_large_logits_stays_finite_and_agrees(void) {
    tk_config cfg;
    tu_config(&cfg);
    tu_call t;
    tu_make(&t, 1, 2, 200, 700, 32, 32, 5, 6.0); /* logits ~ +-36 s0-scaled: the running max matters */
    check_mode(&t, &cfg, TK_MODE_EXACT, EXACT_TOL, "exact large logits");
    tu_free(&t);
}

static void test_taylor_agrees_with_ref_across_terms_blocks_and_shapes(void) {
    struct { int B, H, Nq, Nk, D, Dv, P, blocks; } cases[] = {
        {1, 1, 70, 70, 8, 8, 3, 1},      {2, 2, 300, 300, 32, 32, 4, 4}, {1, 3, 97, 131, 16, 8, 5, 2},
        {3, 1, 41, 41, 12, 6, 2, 3},     {1, 1, 520, 520, 64, 64, 3, 4},
    };
    for (size_t s = 0; s < sizeof cases / sizeof cases[0]; s++) {
        tk_config cfg;
        tu_config(&cfg);
        cfg.terms = cases[s].P;
        cfg.sub_head_blocks = cases[s].blocks;
        cfg.fallback_on_negative = 0; /* compare outputs even where P even makes den small */
        tu_call t;
        tu_make(&t, cases[s].B, cases[s].H, cases[s].Nq, cases[s].Nk, cases[s].D, cases[s].Dv, 21 + s, 0.7);
        char what[64];
        snprintf(what, sizeof what, "taylor case %zu", s);
        check_mode(&t, &cfg, TK_MODE_TAYLOR, TAYLOR_TOL, what);
        uint8_t *m = tu_add_mask(&t);
        for (int j = 0; j < t.c.B * t.c.Nk; j++) m[j] = (j * 5 + s) % 4 != 1;
        snprintf(what, sizeof what, "taylor masked case %zu", s);
        check_mode(&t, &cfg, TK_MODE_TAYLOR, TAYLOR_TOL, what);
        tu_free(&t);
    }
}

static void test_taylor_q_k_modification_and_scale_agree_with_ref(void) {
    tu_call t;
    tu_make(&t, 1, 2, 150, 150, 32, 32, 31, 2.0);
    tk_config cfg;
    tu_config(&cfg);
    cfg.qk_normalize = 1;
    check_mode(&t, &cfg, TK_MODE_TAYLOR, TAYLOR_TOL, "qk_normalize");
    tu_config(&cfg);
    cfg.qk_norm_power = 0.5;
    cfg.qk_norm_clip = 3;
    cfg.scale_mul = 0.7;
    cfg.fallback_on_negative = 0;
    check_mode(&t, &cfg, TK_MODE_TAYLOR, TAYLOR_TOL, "power+clip+scale_mul");
    tu_free(&t);
}

/* q = -k with even P: kappa_2(x) = 1 + x < 0 for every pair. */
static void test_taylor_fallbacks_match_ref_in_probe_and_full_pass_and_leave_o_untouched(void) {
    tu_call t;
    tu_make(&t, 1, 2, 100, 100, 8, 8, 41, 3.0);
    for (size_t i = 0; i < tu_n(1, 2, 100, 8); i++) t.q[i] = -t.k[i] * 2.0f;
    tk_config cfg;
    tu_config(&cfg);
    cfg.terms = 2;
    cfg.sub_head_blocks = 1;
    tk_result a, b;
    compare(&t, &cfg, TK_MODE_TAYLOR, &a, &b);
    TH_EQ_INT(b.reason, TK_REASON_DENOMINATOR_TOO_SMALL);
    TH_EQ_INT(b.stage, TK_STAGE_PROBE);
    cfg.early_probe = 0;
    compare(&t, &cfg, TK_MODE_TAYLOR, &a, &b);
    TH_EQ_INT(b.reason, TK_REASON_DENOMINATOR_TOO_SMALL);
    TH_EQ_INT(b.stage, TK_STAGE_FULL);
    cfg.denom_fallback_frac_limit = 1.0; /* tolerated: clamped to eps, output written */
    compare(&t, &cfg, TK_MODE_TAYLOR, &a, &b);
    TH_EQ_INT(b.reason, TK_REASON_NONE);
    tu_free(&t);
}

/* A hybrid call: text tokens then a gh x gw grid, with pre-RoPE q0/k0. */
static void make_hybrid(tu_call *t, int B, int H, int T, int gh, int gw, int D, int Dv, uint64_t seed) {
    int N = T + gh * gw;
    tu_make(t, B, H, N, N, D, Dv, seed, 1.2);
    tu_add_q0k0(t, seed, 0.3);
    t->c.text_tokens = T;
    t->c.grid_h = gh;
    t->c.grid_w = gw;
}

static void hybrid_config(tk_config *cfg, int shape, int radius, int combine, int P) {
    tu_config(cfg);
    cfg->window_shape = shape;
    cfg->local_window = radius;
    cfg->combine = combine;
    cfg->global_P = P;
    cfg->global_dim = 8;
    cfg->pca_samples = 256;
}

static void test_hybrid_2d_agrees_with_ref_in_both_combine_modes(void) {
    tu_call t;
    make_hybrid(&t, 2, 2, 5, 12, 13, 32, 16, 51); /* 161 tokens: tiles of 8x8 cut at the edges */
    for (int combine = 0; combine < 2; combine++)
        for (int radius = 1; radius <= 3; radius += 2) {
            tk_config cfg;
            hybrid_config(&cfg, TK_WINDOW_2D, radius, combine, 3);
            char what[64];
            snprintf(what, sizeof what, "hybrid 2d r=%d combine=%d", radius, combine);
            check_mode(&t, &cfg, TK_MODE_HYBRID, HYBRID_TOL, what);
        }
    tu_free(&t);
}

static void test_hybrid_1d_agrees_with_ref_with_text_and_odd_lengths(void) {
    tu_call t;
    make_hybrid(&t, 1, 3, 3, 10, 15, 16, 16, 52); /* 153 tokens: 1d tiles of 64 cut at the end */
    for (int combine = 0; combine < 2; combine++) {
        tk_config cfg;
        hybrid_config(&cfg, TK_WINDOW_1D, 7, combine, 3);
        char what[64];
        snprintf(what, sizeof what, "hybrid 1d combine=%d", combine);
        check_mode(&t, &cfg, TK_MODE_HYBRID, HYBRID_TOL, what);
    }
    tu_free(&t);
    /* cross attention: 140 queries over 100 keys, every window still holds keys */
    tu_make(&t, 2, 1, 140, 100, 16, 8, 56, 1.2);
    tu_add_q0k0(&t, 56, 0.3);
    t.c.text_tokens = 2;
    tk_config cfg;
    hybrid_config(&cfg, TK_WINDOW_1D, 45, TK_COMBINE_NORMALIZED, 3);
    check_mode(&t, &cfg, TK_MODE_HYBRID, HYBRID_TOL, "hybrid 1d cross attention");
    tu_free(&t);
}

static void test_hybrid_with_masks_agrees_with_ref(void) {
    tu_call t;
    make_hybrid(&t, 2, 1, 4, 9, 9, 16, 8, 53);
    uint8_t *m = tu_add_mask(&t);
    for (int j = 0; j < t.c.B * t.c.Nk; j++) m[j] = (j * 11) % 5 != 2;
    for (int shape = 0; shape < 2; shape++)
        for (int combine = 0; combine < 2; combine++) {
            tk_config cfg;
            hybrid_config(&cfg, shape, shape ? 2 : 9, combine, 3);
            char what[64];
            snprintf(what, sizeof what, "hybrid masked shape=%d combine=%d", shape, combine);
            check_mode(&t, &cfg, TK_MODE_HYBRID, HYBRID_TOL, what);
        }
    tu_free(&t);
}

static void test_hybrid_edge_settings_agree_with_ref(void) {
    tu_call t;
    make_hybrid(&t, 1, 2, 6, 20, 20, 32, 32, 54); /* 406 tokens, default radius 8 */
    tk_config cfg;
    hybrid_config(&cfg, TK_WINDOW_2D, 8, TK_COMBINE_NORMALIZED, 3);
    check_mode(&t, &cfg, TK_MODE_HYBRID, HYBRID_TOL, "radius 8");
    hybrid_config(&cfg, TK_WINDOW_2D, 0, TK_COMBINE_NORMALIZED, 3);
    check_mode(&t, &cfg, TK_MODE_HYBRID, HYBRID_TOL, "radius 0 normalized");
    hybrid_config(&cfg, TK_WINDOW_2D, 0, TK_COMBINE_ADDITIVE, 3);
    check_mode(&t, &cfg, TK_MODE_HYBRID, HYBRID_TOL, "radius 0 additive");
    hybrid_config(&cfg, TK_WINDOW_2D, 2, TK_COMBINE_NORMALIZED, 3);
    cfg.global_weight = 0;
    check_mode(&t, &cfg, TK_MODE_HYBRID, HYBRID_TOL, "w = 0");
    hybrid_config(&cfg, TK_WINDOW_2D, 2, TK_COMBINE_NORMALIZED, 2); /* 1+x goes negative: drops */
    cfg.global_scale_mul = 4;
    check_mode(&t, &cfg, TK_MODE_HYBRID, HYBRID_TOL, "P = 2, far terms dropped");
    hybrid_config(&cfg, TK_WINDOW_1D, 30, TK_COMBINE_NORMALIZED, 4);
    cfg.qk_norm_power = 0.5;
    cfg.global_weight = 0.3;
    check_mode(&t, &cfg, TK_MODE_HYBRID, HYBRID_TOL, "P = 4, norm power, w = 0.3");
    /* schedules of sigma: window 6 -> 1 and weight 1 -> 0 over sigma 1 -> 0, at sigma 0.5 */
    hybrid_config(&cfg, TK_WINDOW_2D, 2, TK_COMBINE_NORMALIZED, 3);
    cfg.local_window_max = 6, cfg.local_window_min = 1;
    cfg.local_window_sigma_high = 1, cfg.local_window_sigma_low = 0;
    cfg.global_sigma_high = 1, cfg.global_sigma_low = 0;
    t.c.sigma = 0.5;
    tk_result a, b;
    double e = compare(&t, &cfg, TK_MODE_HYBRID, &a, &b);
    TH_CHECKF(e <= HYBRID_TOL, "schedules: %.3g", e);
    TH_EQ_INT(b.window, tk_window_at(&cfg, 0.5));
    TH_NEAR(b.w, 0.5, 1e-12);
    TH_EQ_INT(a.window, b.window);
    tu_free(&t);
}

static void test_hybrid_without_q0_k0_uses_q_k_like_ref(void) {
    tu_call t;
    make_hybrid(&t, 1, 1, 2, 11, 7, 16, 16, 55);
    t.c.q0 = t.c.k0 = NULL;
    tk_config cfg;
    hybrid_config(&cfg, TK_WINDOW_2D, 2, TK_COMBINE_NORMALIZED, 3);
    check_mode(&t, &cfg, TK_MODE_HYBRID, HYBRID_TOL, "no q0/k0");
    tu_free(&t);
}

/* cpu and ref report the same stats: the same helpers (kernels/stats.c) run
 * on outputs that agree to ~1e-6, and denominators summed in float vs fp64. */
static void near_rel(double a, double b, double tol, const char *what) {
    TH_CHECKF(fabs(a - b) <= tol * (fabs(b) + 1e-3), "%s: cpu %.9g, ref %.9g", what, a, b);
}

static void test_stats_of_cpu_match_stats_of_ref(void) {
    tu_call t;
    make_hybrid(&t, 1, 2, 4, 10, 10, 32, 32, 61);
    tk_stats_request sr = {8, 16, 99};
    for (int mode = 0; mode < 3; mode++) {
        tk_config cfg;
        hybrid_config(&cfg, TK_WINDOW_2D, 2, TK_COMBINE_NORMALIZED, 3);
        cfg.fallback_on_negative = 0;
        tk_result a, b;
        size_t n = tu_n(1, 2, t.c.Nq, 32);
        float *o2 = malloc(n * sizeof *o2);
        tk_call c = t.c;
        TH_CHECK(tu_run(TK_BACKEND_REF, &c, &cfg, (tk_mode)mode, &sr, &a) == 0);
        c.o = o2;
        TH_CHECK(tu_run(TK_BACKEND_CPU, &c, &cfg, (tk_mode)mode, &sr, &b) == 0);
        free(o2);
        TH_EQ_INT(a.reason, TK_REASON_NONE);
        TH_EQ_INT(b.reason, TK_REASON_NONE);
        TH_EQ_INT(a.stats.have, b.stats.have);
        TH_EQ_INT(a.stats.quality_raw.n, b.stats.quality_raw.n);
        TH_CHECK(b.stats.quality_raw.n > 0);
        near_rel(b.stats.quality_raw.rel_l2_mean, a.stats.quality_raw.rel_l2_mean, 1e-3, "quality_raw.rel_l2_mean");
        near_rel(b.stats.quality_eff.rel_l2_max, a.stats.quality_eff.rel_l2_max, 1e-3, "quality_eff.rel_l2_max");
        near_rel(b.stats.quality_raw.cos_min, a.stats.quality_raw.cos_min, 1e-5, "quality_raw.cos_min");
        TH_EQ_INT(a.stats.den.n, b.stats.den.n);
        if (mode != TK_MODE_EXACT) {
            TH_CHECK(b.stats.den.n > 0);
            near_rel(b.stats.den.min, a.stats.den.min, 1e-4, "den.min");
            near_rel(b.stats.den.mean, a.stats.den.mean, 1e-4, "den.mean");
            TH_EQ_INT(a.stats.den.n_le_eps, b.stats.den.n_le_eps);
        }
        TH_EQ_INT(a.stats.qk.n, b.stats.qk.n);
        near_rel(b.stats.qk.p99, a.stats.qk.p99, 1e-9, "qk.p99");
        near_rel(b.stats.k_norm_mod.max, a.stats.k_norm_mod.max, 1e-9, "k_norm_mod.max");
        if (mode == TK_MODE_HYBRID) near_rel(b.stats.window_mass.mean, a.stats.window_mass.mean, 1e-9, "window_mass");
        if (mode == TK_MODE_EXACT) TH_CHECK(b.stats.quality_raw.rel_l2_max < 1e-5);
    }
    tu_free(&t);
}

/* More threads than items, one thread, and the default: the same answer
 * (the key chunks and their partial sums change with the thread count). */
static void test_any_thread_count_gives_the_ref_answer(void) {
    static const char *counts[] = {"1", "3", "7"};
    for (int i = 0; i < 3; i++) {
        setenv("TK_CPU_THREADS", counts[i], 1);
        tu_call t;
        tu_make(&t, 1, 1, 90, 333, 16, 16, 71, 1.0);
        tk_config cfg;
        tu_config(&cfg);
        cfg.sub_head_blocks = 2;
        check_mode(&t, &cfg, TK_MODE_EXACT, EXACT_TOL, counts[i]);
        check_mode(&t, &cfg, TK_MODE_TAYLOR, TAYLOR_TOL, counts[i]);
        tu_free(&t);
        make_hybrid(&t, 1, 1, 3, 9, 11, 16, 16, 72);
        hybrid_config(&cfg, TK_WINDOW_2D, 2, TK_COMBINE_NORMALIZED, 3);
        check_mode(&t, &cfg, TK_MODE_HYBRID, HYBRID_TOL, counts[i]);
        tu_free(&t);
    }
}

/* The numerators go straight to o in a second query pass when the buffer
 * for them cannot be had (TK_CPU_TAYLOR_BUFFER_MAX=0 forces it). */
static void test_taylor_without_the_numerator_buffer_agrees_and_still_falls_back(void) {
    setenv("TK_CPU_TAYLOR_BUFFER_MAX", "0", 1);
    tu_call t;
    tu_make(&t, 2, 2, 150, 150, 16, 16, 81, 0.8);
    tk_config cfg;
    tu_config(&cfg);
    cfg.sub_head_blocks = 2;
    check_mode(&t, &cfg, TK_MODE_TAYLOR, TAYLOR_TOL, "two query passes");
    for (size_t i = 0; i < tu_n(2, 2, 150, 16); i++) t.k[i] *= 4.0f, t.q[i] = -t.k[i] * 2.0f;
    cfg.terms = 2;
    cfg.early_probe = 0;
    tk_result a, b;
    compare(&t, &cfg, TK_MODE_TAYLOR, &a, &b); /* checks o untouched */
    TH_EQ_INT(b.reason, TK_REASON_DENOMINATOR_TOO_SMALL);
    TH_EQ_INT(b.stage, TK_STAGE_FULL);
    tu_free(&t);
}

/* The buffered hybrid path (taken when the far sums could near float's
 * range) gives the same output as the direct one. */
static void test_hybrid_buffered_path_agrees_with_ref(void) {
    setenv("TK_CPU_HYBRID_BUFFER", "1", 1);
    tu_call t;
    make_hybrid(&t, 1, 2, 3, 9, 10, 16, 16, 82);
    for (int combine = 0; combine < 2; combine++) {
        tk_config cfg;
        hybrid_config(&cfg, TK_WINDOW_2D, 2, combine, 3);
        check_mode(&t, &cfg, TK_MODE_HYBRID, HYBRID_TOL, combine ? "buffered normalized" : "buffered additive");
    }
    tu_free(&t);
}

/* Huge but finite q0/k0: the far sums overflow float. The cpu then either
 * agrees with ref or falls back with denominator_invalid leaving o as it was;
 * it never writes Inf/NaN. */
static void test_hybrid_overflowing_far_field_never_writes_nonfinite_output(void) {
    tu_call t;
    make_hybrid(&t, 1, 1, 2, 8, 8, 16, 16, 83);
    for (size_t i = 0; i < tu_n(1, 1, t.c.Nq, 16); i++) t.q0[i] *= 3e9f, t.k0[i] *= 3e9f;
    for (int combine = 0; combine < 2; combine++) {
        tk_config cfg;
        hybrid_config(&cfg, TK_WINDOW_2D, 1, combine, 3);
        cfg.global_scale_mul = 100;
        size_t n = tu_n(1, 1, t.c.Nq, 16);
        float *o = malloc(n * sizeof *o);
        for (size_t i = 0; i < n; i++) o[i] = 5.0f;
        tk_call c = t.c;
        c.o = o;
        tk_result r;
        TH_CHECK(tu_run(TK_BACKEND_CPU, &c, &cfg, TK_MODE_HYBRID, NULL, &r) == 0);
        if (getenv("TK_TEST_VERBOSE")) fprintf(stderr, "overflow combine=%d: %s %s\n", combine, tk_reason_name(r.reason), r.detail);
        if (r.reason == TK_REASON_NONE) {
            for (size_t i = 0; i < n; i++) TH_CHECKF(isfinite(o[i]), "o[%zu] = %g", i, (double)o[i]);
        } else {
            TH_EQ_INT(r.reason, TK_REASON_DENOMINATOR_INVALID);
            for (size_t i = 0; i < n; i++) TH_CHECKF(o[i] == 5.0f, "fallback wrote o[%zu]", i);
        }
        free(o);
    }
    tu_free(&t);
}

/* The portable (non-AVX) build of the vector kernels, end to end. */
static void test_generic_vector_code_gives_the_ref_answer(void) {
    TH_CHECK(tkcpu_vec_set_isa("generic") == 0);
    tu_call t;
    make_hybrid(&t, 1, 2, 3, 9, 11, 32, 32, 91);
    tk_config cfg;
    tu_config(&cfg);
    check_mode(&t, &cfg, TK_MODE_EXACT, EXACT_TOL, "generic exact");
    check_mode(&t, &cfg, TK_MODE_TAYLOR, TAYLOR_TOL, "generic taylor");
    hybrid_config(&cfg, TK_WINDOW_2D, 2, TK_COMBINE_NORMALIZED, 3);
    check_mode(&t, &cfg, TK_MODE_HYBRID, HYBRID_TOL, "generic hybrid");
    tu_free(&t);
}

/* 300 random calls (seeded): modes, shapes, batches, masks, window shapes,
 * radii, combine modes, terms, blocks, q/k modification, probe and rule
 * settings. cpu and ref must take the same path and reason and agree within
 * the thresholds above. Left out: the additive hybrid with an even far P,
 * where kappa changes sign and D_far passes through zero, so o = N_far/D_far
 * amplifies float rounding without bound (both backends are right to 1e-7 in
 * D_far; the quotient is ill-conditioned). */
static void test_random_calls_agree_with_ref(void) {
    uint64_t rs = 2026;
    for (int it = 0; it < 300; it++) {
        int B = 1 + (int)(tu_next(&rs) % 3), H = 1 + (int)(tu_next(&rs) % 3);
        tk_mode mode = (tk_mode)(tu_next(&rs) % 3);
        int shape = (int)(tu_next(&rs) % 2);
        int T = (int)(tu_next(&rs) % 6), gh = 1 + (int)(tu_next(&rs) % 14), gw = 1 + (int)(tu_next(&rs) % 14);
        int Nq = T + gh * gw, Nk = Nq;
        int blocks = 1 + (int)(tu_next(&rs) % 4);
        int D = blocks * (1 + (int)(tu_next(&rs) % 12)), Dv = blocks * (1 + (int)(tu_next(&rs) % 10));
        if (mode != TK_MODE_HYBRID && tu_next(&rs) % 3 == 0) Nk = 1 + (int)(tu_next(&rs) % 700);
        tu_call t;
        tu_make(&t, B, H, Nq, Nk, D, Dv, 1000 + it, 0.5 + 2 * tu_uniform(&rs));
        if (mode == TK_MODE_HYBRID) {
            if (tu_next(&rs) % 2) tu_add_q0k0(&t, it, 0.3);
            t.c.text_tokens = T, t.c.grid_h = gh, t.c.grid_w = gw;
        }
        if (tu_next(&rs) % 3 == 0) {
            uint8_t *m = tu_add_mask(&t);
            for (int j = 0; j < B * Nk; j++) m[j] = tu_next(&rs) % 4 != 0;
        }
        tk_config cfg;
        tu_config(&cfg);
        cfg.terms = 1 + (int)(tu_next(&rs) % 5);
        cfg.sub_head_blocks = blocks;
        cfg.fallback_on_negative = (int)(tu_next(&rs) % 2);
        cfg.early_probe = (int)(tu_next(&rs) % 2);
        cfg.denom_fallback_frac_limit = tu_next(&rs) % 2 ? 0.3 : 0;
        cfg.window_shape = shape;
        cfg.local_window = (int)(tu_next(&rs) % 6);
        cfg.combine = (int)(tu_next(&rs) % 2);
        cfg.global_P = 1 + (int)(tu_next(&rs) % 4);
        cfg.global_dim = 1 + (int)(tu_next(&rs) % 8);
        cfg.global_weight = 2 * tu_uniform(&rs);
        cfg.qk_norm_power = tu_next(&rs) % 3 == 0 ? 0.5 : 0;
        cfg.qk_normalize = tu_next(&rs) % 5 == 0;
        cfg.pca_samples = 64;
        if (mode == TK_MODE_HYBRID && cfg.combine == TK_COMBINE_ADDITIVE && cfg.global_P % 2 == 0) cfg.global_P++;
        tk_result a, b;
        double e = compare(&t, &cfg, mode, &a, &b);
        double tol = mode == TK_MODE_EXACT ? EXACT_TOL : mode == TK_MODE_TAYLOR ? TAYLOR_TOL : HYBRID_TOL;
        TH_CHECKF(e <= tol, "call %d (mode %d, B%d H%d Nq%d Nk%d D%d Dv%d): error %.3g > %.3g", it, (int)mode, B, H,
                  Nq, Nk, D, Dv, e, tol);
        tu_free(&t);
    }
}

static const th_test tests[] = {
    TH_TEST(test_exact_agrees_with_ref_on_odd_shapes_batches_and_masks),
    TH_TEST(test_exact_with_large_logits_stays_finite_and_agrees),
    TH_TEST(test_taylor_agrees_with_ref_across_terms_blocks_and_shapes),
    TH_TEST(test_taylor_q_k_modification_and_scale_agree_with_ref),
    TH_TEST(test_taylor_fallbacks_match_ref_in_probe_and_full_pass_and_leave_o_untouched),
    TH_TEST(test_hybrid_2d_agrees_with_ref_in_both_combine_modes),
    TH_TEST(test_hybrid_1d_agrees_with_ref_with_text_and_odd_lengths),
    TH_TEST(test_hybrid_with_masks_agrees_with_ref),
    TH_TEST(test_hybrid_edge_settings_agree_with_ref),
    TH_TEST(test_hybrid_without_q0_k0_uses_q_k_like_ref),
    TH_TEST(test_stats_of_cpu_match_stats_of_ref),
    TH_TEST(test_any_thread_count_gives_the_ref_answer),
    TH_TEST(test_taylor_without_the_numerator_buffer_agrees_and_still_falls_back),
    TH_TEST(test_hybrid_buffered_path_agrees_with_ref),
    TH_TEST(test_hybrid_overflowing_far_field_never_writes_nonfinite_output),
    TH_TEST(test_generic_vector_code_gives_the_ref_answer),
    TH_TEST(test_random_calls_agree_with_ref),
    {0},
};

int main(int argc, char **argv) { return th_main(tests, argc, argv); }

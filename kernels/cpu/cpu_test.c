/*
 * cpu_test.c -- the cpu backend against the reference (fp64 oracle), per mode,
 * on shapes that are not multiples of the cpu block sizes (query blocks of
 * 128, key blocks of 512, feature blocks of 32..256 tokens, 8x8 grid tiles),
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
 * Measured errors sit 10-100x below these (printed on failure).
 */
#include "harness.h"
#include "kernels.h"
#include "test_util.h"

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

static const th_test tests[] = {
    TH_TEST(test_exact_agrees_with_ref_on_odd_shapes_batches_and_masks),
    TH_TEST(test_exact_with_large_logits_stays_finite_and_agrees),
    TH_TEST(test_taylor_agrees_with_ref_across_terms_blocks_and_shapes),
    TH_TEST(test_taylor_q_k_modification_and_scale_agree_with_ref),
    TH_TEST(test_taylor_fallbacks_match_ref_in_probe_and_full_pass_and_leave_o_untouched),
    {0},
};

int main(int argc, char **argv) { return th_main(tests, argc, argv); }

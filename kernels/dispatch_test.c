/* dispatch_test.c -- contexts, backends, and every reason tk_check and
 * tk_attention give (SPEC 6), with o left untouched on a fallback. */
#include "harness.h"
#include "kernels.h"
#include "test_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

static void test_ref_and_cpu_backends_are_always_available(void) {
    TH_CHECK(tk_backend_available(TK_BACKEND_REF));
    TH_CHECK(tk_backend_available(TK_BACKEND_CPU));
    tk_context *ctx;
    char err[256];
    TH_CHECK(tk_context_open(TK_BACKEND_REF, &ctx, err, sizeof err) == 0);
    TH_EQ_INT(tk_context_backend(ctx), TK_BACKEND_REF);
    tk_context_reset(ctx);
    tk_context_close(ctx);
    tk_context_close(NULL);
}

static void test_an_unknown_or_absent_backend_is_an_error_with_a_message(void) {
    tk_context *ctx = (tk_context *)1;
    char err[256] = "";
    TH_CHECK(tk_context_open((tk_backend)7, &ctx, err, sizeof err) != 0);
    TH_CHECK(ctx == NULL && err[0]);
    if (!tk_backend_available(TK_BACKEND_CUDA)) {
        TH_CHECK(tk_context_open(TK_BACKEND_CUDA, &ctx, err, sizeof err) != 0);
        TH_CHECK(strstr(err, "cuda") != NULL);
    }
}

/* Runs `mode` on t with cfg, expecting `want`; o must be untouched when it
 * is a fallback. */
static void expect(tu_call *t, const tk_config *cfg, tk_mode mode, tk_reason want, int line) {
    size_t n = tu_n(t->c.B, t->c.H, t->c.Nq, t->c.Dv);
    for (size_t i = 0; i < n; i++) t->o[i] = 777.0f;
    tk_result res;
    TH_CHECK(tu_run(TK_BACKEND_REF, &t->c, cfg, mode, NULL, &res) == 0);
    if (res.reason != want)
        th_fail(__FILE__, line, "reason %s (%s), expected %s", tk_reason_name(res.reason), res.detail,
                tk_reason_name(want));
    if (want != TK_REASON_NONE) {
        if (res.path != TK_PATH_FALLBACK) th_fail(__FILE__, line, "path %s", tk_path_name(res.path));
        if (!res.detail[0]) th_fail(__FILE__, line, "no detail for %s", tk_reason_name(want));
        for (size_t i = 0; i < n; i++)
            if (t->o[i] != 777.0f) th_fail(__FILE__, line, "o written on a fallback");
    } else if (t->o[0] == 777.0f) {
        th_fail(__FILE__, line, "o not written");
    }
}
#define EXPECT(t, cfg, mode, want) expect(t, cfg, mode, want, __LINE__)

static void test_bad_shapes_are_unsupported_shape_in_every_mode(void) {
    tu_call t;
    tu_make(&t, 1, 2, 8, 8, 8, 8, 1, 0.5);
    tk_config cfg;
    tu_config(&cfg);
    for (int mode = 0; mode < 3; mode++) {
        tk_call keep = t.c;
        t.c.B = 0;
        EXPECT(&t, &cfg, (tk_mode)mode, TK_REASON_UNSUPPORTED_SHAPE);
        t.c = keep;
        t.c.dtype = TK_DTYPE_F16; /* ref and cpu take f32 */
        EXPECT(&t, &cfg, (tk_mode)mode, TK_REASON_UNSUPPORTED_SHAPE);
        t.c = keep;
        t.c.text_tokens = 2, t.c.grid_h = 2, t.c.grid_w = 2; /* 2 + 4 != 8 */
        EXPECT(&t, &cfg, (tk_mode)mode, TK_REASON_UNSUPPORTED_SHAPE);
        t.c = keep;
        t.c.text_tokens = 9; /* more text than tokens */
        EXPECT(&t, &cfg, (tk_mode)mode, TK_REASON_UNSUPPORTED_SHAPE);
        t.c = keep;
    }
    tu_free(&t);
}

static void test_null_arguments_are_misuse_not_a_crash(void) {
    tu_call t;
    tu_make(&t, 1, 1, 4, 4, 4, 4, 1, 0.5);
    tk_config cfg;
    tu_config(&cfg);
    tk_context *ctx;
    char err[256];
    TH_CHECK(tk_context_open(TK_BACKEND_REF, &ctx, err, sizeof err) == 0);
    tk_result res;
    TH_CHECK(tk_attention(ctx, NULL, &cfg, TK_MODE_EXACT, NULL, &res) != 0);
    TH_CHECK(tk_attention(NULL, &t.c, &cfg, TK_MODE_EXACT, NULL, &res) != 0);
    t.c.v = NULL;
    TH_CHECK(tk_attention(ctx, &t.c, &cfg, TK_MODE_EXACT, NULL, &res) != 0);
    TH_EQ_INT(tk_check(ctx, &t.c, &cfg, TK_MODE_EXACT, err, sizeof err), TK_REASON_UNSUPPORTED_SHAPE);
    tk_context_close(ctx);
    tu_free(&t);
}

static void test_nan_or_inf_in_q_k_or_v_is_bad_input_in_every_mode(void) {
    tu_call t;
    tu_make(&t, 2, 2, 8, 8, 8, 8, 2, 0.5);
    tk_config cfg;
    tu_config(&cfg);
    cfg.window_shape = 0;
    float *bufs[3] = {t.q, t.k, t.v};
    for (int mode = 0; mode < 3; mode++)
        for (int b = 0; b < 3; b++) {
            float keep = bufs[b][37];
            bufs[b][37] = b == 1 ? INFINITY : NAN;
            EXPECT(&t, &cfg, (tk_mode)mode, TK_REASON_BAD_INPUT);
            bufs[b][37] = keep;
        }
    EXPECT(&t, &cfg, TK_MODE_TAYLOR, TK_REASON_NONE);
    tu_free(&t);
}

static void test_a_nan_anywhere_in_a_large_tensor_is_found_at_its_element(void) {
    tu_call t;
    tu_make(&t, 1, 1, 200, 200, 8, 8, 3, 0.5); /* 1,600 elements: whole blocks and a tail */
    tk_config cfg;
    tu_config(&cfg);
    const int at[] = {0, 63, 64, 1000, 1535, 1536, 1599};
    for (size_t i = 0; i < sizeof at / sizeof at[0]; i++) {
        float keep = t.k[at[i]];
        t.k[at[i]] = i % 2 ? -INFINITY : NAN;
        tk_result res;
        TH_CHECK(tu_run(TK_BACKEND_CPU, &t.c, &cfg, TK_MODE_EXACT, NULL, &res) == 0);
        TH_EQ_INT(res.reason, TK_REASON_BAD_INPUT);
        char want[64];
        snprintf(want, sizeof want, "k holds a NaN or Inf at element %d", at[i]);
        TH_CHECKF(strstr(res.detail, want) != NULL, "detail \"%s\", expected \"%s\"", res.detail, want);
        t.k[at[i]] = keep;
    }
    tu_free(&t);
}

static void test_a_batch_with_every_key_masked_is_unsupported_mask(void) {
    tu_call t;
    tu_make(&t, 2, 1, 8, 8, 8, 8, 3, 0.5);
    uint8_t *m = tu_add_mask(&t);
    tk_config cfg;
    tu_config(&cfg);
    cfg.window_shape = 0;
    memset(m + 8, 0, 8); /* batch 1 */
    for (int mode = 0; mode < 3; mode++) EXPECT(&t, &cfg, (tk_mode)mode, TK_REASON_UNSUPPORTED_MASK);
    m[12] = 1;
    for (int mode = 0; mode < 2; mode++) EXPECT(&t, &cfg, (tk_mode)mode, TK_REASON_NONE);
    tu_free(&t);
}

static void test_a_hybrid_window_with_only_masked_keys_is_unsupported_mask(void) {
    tu_call t;
    tu_make(&t, 1, 1, 16, 16, 8, 8, 4, 0.5);
    uint8_t *m = tu_add_mask(&t);
    tk_config cfg;
    tu_config(&cfg);
    cfg.window_shape = 0; /* 1d */
    cfg.local_window = 2;
    memset(m + 6, 0, 5); /* keys 6..10 masked: query 8 sees 6..10 only */
    EXPECT(&t, &cfg, TK_MODE_HYBRID, TK_REASON_UNSUPPORTED_MASK);
    cfg.local_window = 3; /* now 5 and 11 are in reach */
    EXPECT(&t, &cfg, TK_MODE_HYBRID, TK_REASON_NONE);
    /* 2d: 4 text tokens + 3x4 grid, r = 1; all text masked and the 3x3
     * neighbourhood of cell (0,0) masked */
    cfg.window_shape = 1;
    cfg.local_window = 1;
    t.c.text_tokens = 4, t.c.grid_h = 3, t.c.grid_w = 4;
    memset(m, 1, 16);
    memset(m, 0, 4);
    m[4 + 0] = m[4 + 1] = m[4 + 4] = m[4 + 5] = 0;
    EXPECT(&t, &cfg, TK_MODE_HYBRID, TK_REASON_UNSUPPORTED_MASK);
    m[2] = 1; /* one text key kept: every image query sees it */
    EXPECT(&t, &cfg, TK_MODE_HYBRID, TK_REASON_NONE);
    tu_free(&t);
}

static void test_the_gates_give_their_reasons_and_exact_always_runs(void) {
    tu_call t;
    tu_make(&t, 1, 2, 8, 8, 8, 8, 5, 0.5);
    tk_config cfg;
    tu_config(&cfg);
    cfg.window_shape = 0;
    for (int mode = 1; mode < 3; mode++) {
        tk_config c = cfg;
        c.taylor_sigma_max = 0.5;
        t.c.sigma = 0.7;
        EXPECT(&t, &c, (tk_mode)mode, TK_REASON_SKIPPED_BY_SIGMA);
        EXPECT(&t, &c, TK_MODE_EXACT, TK_REASON_NONE);
        t.c.sigma = 0.5;
        EXPECT(&t, &c, (tk_mode)mode, TK_REASON_NONE);
        c = cfg;
        c.min_tokens = 9;
        EXPECT(&t, &c, (tk_mode)mode, TK_REASON_BELOW_MIN_TOKENS);
        EXPECT(&t, &c, TK_MODE_EXACT, TK_REASON_NONE);
        c = cfg;
        c.max_head_dim = 4;
        EXPECT(&t, &c, (tk_mode)mode, TK_REASON_HEAD_DIM_TOO_LARGE);
        EXPECT(&t, &c, TK_MODE_EXACT, TK_REASON_NONE);
        c = cfg;
        c.max_feature_dim_R = 10; /* taylor R(2,4)=10 fits; far R(8,3)=45 does not */
        EXPECT(&t, &c, (tk_mode)mode, mode == 1 ? TK_REASON_NONE : TK_REASON_FEATURE_DIM_TOO_LARGE);
        c.max_feature_dim_R = 9;
        EXPECT(&t, &c, (tk_mode)mode, TK_REASON_FEATURE_DIM_TOO_LARGE);
        EXPECT(&t, &c, TK_MODE_EXACT, TK_REASON_NONE);
    }
    tu_free(&t);
}

static void test_cross_attention_needs_its_knob(void) {
    tu_call t;
    tu_make(&t, 1, 1, 6, 10, 8, 8, 6, 0.5);
    tk_config cfg;
    tu_config(&cfg);
    cfg.window_shape = 0;
    cfg.allow_cross_attention = 0;
    EXPECT(&t, &cfg, TK_MODE_TAYLOR, TK_REASON_CROSS_ATTENTION_DISABLED);
    EXPECT(&t, &cfg, TK_MODE_HYBRID, TK_REASON_CROSS_ATTENTION_DISABLED);
    EXPECT(&t, &cfg, TK_MODE_EXACT, TK_REASON_NONE);
    cfg.allow_cross_attention = 1;
    EXPECT(&t, &cfg, TK_MODE_TAYLOR, TK_REASON_NONE);
    EXPECT(&t, &cfg, TK_MODE_HYBRID, TK_REASON_NONE);
    tu_free(&t);
    /* more queries than keys: a 1d window of 2 leaves query 13 with no key */
    tu_make(&t, 1, 1, 14, 10, 8, 8, 6, 0.5);
    cfg.local_window = 2;
    EXPECT(&t, &cfg, TK_MODE_HYBRID, TK_REASON_UNSUPPORTED_SHAPE);
    cfg.local_window = 4;
    EXPECT(&t, &cfg, TK_MODE_HYBRID, TK_REASON_NONE);
    tu_free(&t);
}

static void test_sub_head_blocks_must_divide_D_and_Dv(void) {
    tu_call t;
    tu_make(&t, 1, 1, 8, 8, 8, 6, 7, 0.5);
    tk_config cfg;
    tu_config(&cfg);
    cfg.sub_head_blocks = 4; /* divides D=8, not Dv=6 */
    EXPECT(&t, &cfg, TK_MODE_TAYLOR, TK_REASON_SUB_HEAD_BLOCK_MISMATCH);
    cfg.sub_head_blocks = 3; /* divides Dv, not D */
    EXPECT(&t, &cfg, TK_MODE_TAYLOR, TK_REASON_SUB_HEAD_BLOCK_MISMATCH);
    cfg.sub_head_blocks = 2;
    EXPECT(&t, &cfg, TK_MODE_TAYLOR, TK_REASON_NONE);
    tu_free(&t);
}

static void test_a_2d_hybrid_window_needs_the_grid(void) {
    tu_call t;
    tu_make(&t, 1, 1, 10, 10, 8, 8, 8, 0.5);
    tk_config cfg;
    tu_config(&cfg);
    cfg.window_shape = 1;
    EXPECT(&t, &cfg, TK_MODE_HYBRID, TK_REASON_UNSUPPORTED_SHAPE);
    t.c.text_tokens = 4, t.c.grid_h = 2, t.c.grid_w = 3;
    EXPECT(&t, &cfg, TK_MODE_HYBRID, TK_REASON_NONE);
    /* only one of q0/k0 */
    t.c.q0 = t.q;
    EXPECT(&t, &cfg, TK_MODE_HYBRID, TK_REASON_UNSUPPORTED_SHAPE);
    t.c.k0 = t.k;
    EXPECT(&t, &cfg, TK_MODE_HYBRID, TK_REASON_NONE);
    tu_free(&t);
}

static void test_tk_check_explains_without_running(void) {
    tu_call t;
    tu_make(&t, 1, 1, 8, 8, 128, 128, 9, 0.5);
    tk_config cfg;
    tu_config(&cfg);
    cfg.sub_head_blocks = 1;
    tk_context *ctx;
    char err[256], detail[192];
    TH_CHECK(tk_context_open(TK_BACKEND_REF, &ctx, err, sizeof err) == 0);
    TH_EQ_INT(tk_check(ctx, &t.c, &cfg, TK_MODE_TAYLOR, detail, sizeof detail),
              TK_REASON_FEATURE_DIM_TOO_LARGE);
    TH_CHECK(strstr(detail, "366145") != NULL);
    TH_EQ_INT(tk_check(ctx, &t.c, &cfg, TK_MODE_EXACT, detail, sizeof detail), TK_REASON_NONE);
    tk_context_close(ctx);
    tu_free(&t);
}

/* A workspace that cannot be had is a reason, not a crash: limit the address
 * space of this (forked) test, then ask for a Taylor call whose S alone
 * (R(64,5) x 64 doubles = 417 MB) does not fit. */
static void test_a_workspace_out_of_memory_is_a_reason(void) {
    if (getenv("TS_SANITIZE")) th_skip("address-space limits do not mix with the sanitizer's shadow memory");
    tu_call t;
    tu_make(&t, 1, 1, 2, 2, 64, 64, 10, 0.1);
    tk_config cfg;
    tu_config(&cfg);
    cfg.sub_head_blocks = 1, cfg.terms = 5, cfg.max_feature_dim_R = 1000000, cfg.early_probe = 0;
    long pages = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f || fscanf(f, "%ld", &pages) != 1) th_skip("no /proc/self/statm");
    fclose(f);
    struct rlimit rl = {(rlim_t)pages * 4096 + ((rlim_t)160 << 20), RLIM_INFINITY};
    if (setrlimit(RLIMIT_AS, &rl) != 0) th_skip("setrlimit refused");
    EXPECT(&t, &cfg, TK_MODE_TAYLOR, TK_REASON_OUT_OF_MEMORY);
    /* the exact path of the same call still runs */
    EXPECT(&t, &cfg, TK_MODE_EXACT, TK_REASON_NONE);
    tu_free(&t);
}

static const th_test tests[] = {
    TH_TEST(test_ref_and_cpu_backends_are_always_available),
    TH_TEST(test_an_unknown_or_absent_backend_is_an_error_with_a_message),
    TH_TEST(test_bad_shapes_are_unsupported_shape_in_every_mode),
    TH_TEST(test_null_arguments_are_misuse_not_a_crash),
    TH_TEST(test_nan_or_inf_in_q_k_or_v_is_bad_input_in_every_mode),
    TH_TEST(test_a_nan_anywhere_in_a_large_tensor_is_found_at_its_element),
    TH_TEST(test_a_batch_with_every_key_masked_is_unsupported_mask),
    TH_TEST(test_a_hybrid_window_with_only_masked_keys_is_unsupported_mask),
    TH_TEST(test_the_gates_give_their_reasons_and_exact_always_runs),
    TH_TEST(test_cross_attention_needs_its_knob),
    TH_TEST(test_sub_head_blocks_must_divide_D_and_Dv),
    TH_TEST(test_a_2d_hybrid_window_needs_the_grid),
    TH_TEST(test_tk_check_explains_without_running),
    TH_TEST(test_a_workspace_out_of_memory_is_a_reason),
    {0},
};

int main(int argc, char **argv) { return th_main(tests, argc, argv); }

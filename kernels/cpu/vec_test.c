/* vec_test.c -- the cpu backend's building blocks: the vector exp2 and its
 * masking of out-of-range weights, kappa, the window mask, feature rows
 * against the fp64 feature map, and the thread pool running every item once. */
#include "harness.h"
#include "cpu/cpu.h"
#include "kernels.h"
#include "feature_map.h"

#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void test_exp2_is_accurate_to_float_rounding_and_zero_below_range(void) {
    enum { N = 4099 }; /* not a multiple of 16: the tail path too */
    float *x = malloc(N * sizeof *x);
    double worst = 0;
    for (int i = 0; i < N; i++) x[i] = -126.0f * (float)i / (N - 1);
    float m = 0.0f;
    float *y = malloc(N * sizeof *y);
    memcpy(y, x, N * sizeof *y);
    double sum = tkcpu_exp2_shift_sum(y, N, m), want_sum = 0;
    for (int i = 0; i < N; i++) {
        double want = exp2((double)x[i]);
        want_sum += want;
        double rel = fabs(y[i] - want) / want;
        if (rel > worst) worst = rel;
        TH_CHECKF(rel < 3e-7, "2^%g: got %.9g, want %.9g (rel %.3g)", (double)x[i], (double)y[i], want, rel);
    }
    TH_NEAR(sum, want_sum, 1e-6 * want_sum);
    float z[5] = {-127.5f, -INFINITY, NAN, -1000.0f, 0.0f};
    tkcpu_exp2_shift_sum(z, 5, 0.0f);
    TH_CHECK(z[0] == 0 && z[1] == 0 && z[2] == 0 && z[3] == 0 && z[4] == 1.0f);
    TH_NEAR(tkcpu_exp2_neg(-3.0f), 0.125, 1e-9);
    TH_CHECK(tkcpu_exp2_neg(NAN) == 0.0f);
    free(x);
    free(y);
}

static void test_max_sum_and_axpby_handle_tails(void) {
    float v[37];
    for (int i = 0; i < 37; i++) v[i] = (float)((i * 7) % 37) - 18.0f;
    TH_NEAR(tkcpu_max(v, 37), 18.0, 0);
    TH_CHECK(tkcpu_max(v, 0) == -INFINITY);
    double s = 0;
    for (int i = 0; i < 37; i++) s += v[i];
    TH_NEAR(tkcpu_sum(v, 37), s, 1e-9);
    float y[37], x[37];
    for (int i = 0; i < 37; i++) y[i] = 1.0f, x[i] = (float)i;
    tkcpu_axpby(y, 2.0f, x, -0.5f, 37);
    for (int i = 0; i < 37; i++) TH_NEAR(y[i], 2.0 - 0.5 * i, 0);
}

static void test_kappa_equals_the_taylor_polynomial(void) {
    for (int P = 1; P <= 6; P++) {
        float x[21];
        for (int i = 0; i < 21; i++) x[i] = -3.0f + 0.3f * (float)i;
        float y[21];
        memcpy(y, x, sizeof y);
        tkcpu_kappa(y, 21, 0.5f, P);
        for (int i = 0; i < 21; i++) {
            double want = tki_kappa(P, 0.5 * x[i]);
            TH_CHECKF(fabs(y[i] - want) <= 1e-6 * (1 + fabs(want)), "P=%d x=%g: %g vs %g", P, (double)x[i],
                      (double)y[i], want);
        }
    }
}

static void test_window_mask_keeps_exactly_the_cells_within_the_radius(void) {
    enum { G = 9 };
    int32_t cy[G * G], cx[G * G];
    float s[G * G], k[G * G];
    for (int y = 0; y < G; y++)
        for (int x = 0; x < G; x++) cy[y * G + x] = y, cx[y * G + x] = x;
    for (int i = 0; i < G * G; i++) s[i] = 1.0f, k[i] = 2.0f;
    int64_t inside = tkcpu_window_mask(s, k, cy, cx, G * G, 4, 6, 2);
    TH_EQ_INT(inside, 5 * 5);
    for (int y = 0; y < G; y++)
        for (int x = 0; x < G; x++) {
            int in = abs(y - 4) <= 2 && abs(x - 6) <= 2;
            TH_CHECK(in ? s[y * G + x] == 1.0f && k[y * G + x] == 2.0f
                        : s[y * G + x] == -INFINITY && k[y * G + x] == 0.0f);
        }
}

static void test_feature_blocks_equal_the_fp64_feature_map(void) {
    int d = 5, P = 4;
    double s = 0.7;
    int64_t R = taylor_feature_count(d, P);
    tkcpu_fmap fm;
    TH_CHECK(tkcpu_fmap_make(&fm, d, P, s, R, 48) == 0);
    TH_EQ_INT(fm.R, R);
    tki_features f;
    char err[128];
    TH_CHECK(tki_features_build(&f, d, P, R, err, sizeof err) == 0);
    double *w = malloc(R * sizeof *w), *psi = malloc(R * sizeof *psi);
    tki_features_weights(&f, s, w);
    float rows[37][5], fac[37], *phi = malloc(R * 48 * sizeof *phi), xs[5 * 48];
    const float *ptr[37];
    for (int j = 0; j < 37; j++) {
        for (int e = 0; e < d; e++) rows[j][e] = (float)sin(1.0 + j * 0.37 + e * 1.3);
        ptr[j] = rows[j];
        fac[j] = 0.5f + 0.01f * (float)j;
    }
    tkcpu_features_block(&fm, ptr, fac, 37, xs, phi);
    for (int j = 0; j < 37; j++) {
        double x[5];
        for (int e = 0; e < d; e++) x[e] = (double)(rows[j][e] * fac[j]);
        tki_features_eval(&f, x, w, psi);
        for (int64_t r = 0; r < R; r++)
            TH_CHECKF(fabs(phi[r * 48 + j] - psi[r]) <= 2e-6 * (1 + fabs(psi[r])), "token %d feature %lld: %g vs %g",
                      j, (long long)r, (double)phi[r * 48 + j], psi[r]);
    }
    tki_features_free(&f);
    tkcpu_fmap_free(&fm);
    free(w), free(psi), free(phi);
}

typedef struct {
    atomic_int *hits;
    atomic_int workers_seen[8];
} pool_arg;

static void count_item(void *arg, int64_t item, int worker) {
    pool_arg *a = arg;
    atomic_fetch_add(&a->hits[item], 1);
    atomic_fetch_add(&a->workers_seen[worker], 1);
}

static void test_pool_runs_every_item_exactly_once_for_any_thread_count(void) {
    enum { N = 1000 };
    for (int threads = 1; threads <= 5; threads += 2) {
        tkcpu_pool *p;
        char err[128];
        TH_CHECK(tkcpu_pool_create(threads, &p, err, sizeof err) == 0);
        TH_EQ_INT(tkcpu_pool_threads(p), threads);
        for (int run = 0; run < 20; run++) { /* the same pool, run after run */
            pool_arg a;
            a.hits = calloc(N, sizeof *a.hits);
            for (int w = 0; w < 8; w++) atomic_init(&a.workers_seen[w], 0);
            int64_t n = run % 4 == 3 ? 1 : N;
            tkcpu_pool_run(p, n, count_item, &a);
            for (int64_t i = 0; i < N; i++) TH_EQ_INT(atomic_load(&a.hits[i]), i < n ? 1 : 0);
            for (int w = threads; w < 8; w++) TH_EQ_INT(atomic_load(&a.workers_seen[w]), 0);
            free(a.hits);
        }
        tkcpu_pool_run(p, 0, count_item, NULL);
        tkcpu_pool_destroy(p);
    }
}

/* The same checks on every instruction set this processor has. */
static void run_on_each_isa(void (*fn)(void)) {
    static const char *const isas[] = {"generic", "avx2", "avx512"};
    int ran = 0;
    for (int i = 0; i < 3; i++) {
        if (tkcpu_vec_set_isa(isas[i]) != 0) continue;
        TH_EQ_STR(tkcpu_vec_isa(), isas[i]);
        fn();
        ran++;
    }
    TH_CHECK(ran >= 1);
    TH_CHECK(tkcpu_vec_set_isa("sse9") != 0);
}

static void all_vector_checks(void) {
    test_exp2_is_accurate_to_float_rounding_and_zero_below_range();
    test_max_sum_and_axpby_handle_tails();
    test_kappa_equals_the_taylor_polynomial();
    test_window_mask_keeps_exactly_the_cells_within_the_radius();
    test_feature_blocks_equal_the_fp64_feature_map();
}

static void test_every_instruction_set_variant_passes_the_same_checks(void) { run_on_each_isa(all_vector_checks); }

static const th_test tests[] = {
    TH_TEST(test_exp2_is_accurate_to_float_rounding_and_zero_below_range),
    TH_TEST(test_max_sum_and_axpby_handle_tails),
    TH_TEST(test_kappa_equals_the_taylor_polynomial),
    TH_TEST(test_window_mask_keeps_exactly_the_cells_within_the_radius),
    TH_TEST(test_feature_blocks_equal_the_fp64_feature_map),
    TH_TEST(test_pool_runs_every_item_exactly_once_for_any_thread_count),
    TH_TEST(test_every_instruction_set_variant_passes_the_same_checks),
    {0},
};

int main(int argc, char **argv) { return th_main(tests, argc, argv); }

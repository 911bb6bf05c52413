/* The simulator's device generator (agent/sim/workload_cuda.cu) against the
 * CPU generator (workload.c, the reference): one layer of tiny (256x256) and
 * of flux1 at 512x512, every tensor, at a noisy and at a formed sigma.
 *
 * Bound: max |gpu - cpu| over max |cpu| <= 1e-4 per tensor. Both run the same
 * float arithmetic on the same seeded fields; they differ only in the order
 * of the 32-term projection sums (OpenBLAS's blocking against a plain loop)
 * and of the RMS reductions, each a relative error of a few float ulps
 * (~1e-7) that the RMS norm and the gain (up to ~3) carry through; 1e-4 leaves
 * two orders of margin and still fails at once on a wrong index, a missed
 * RoPE pair, a swapped sigma or a stale latent (all O(1) differences).
 * The bf16 output (what taylor-sim feeds the cuda backend) adds its own
 * rounding, at most 2^-9 of each value: bound 4e-3 of the max.
 * Skipped without a device. */
#include "harness.h"
#include "kernels.h"
#include "sim/sim.h"
#include "sim/workload_cuda.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef TK_HAVE_CUDA
#include "cuda/tkcuda_util.h"
#include "gpu_test.h"
#include "internal.h"

/* Max |a - b| / max |b| over n floats; a NaN anywhere counts as infinite. */
static double rel_max_diff(const float *a, const float *b, size_t n) {
    double dmax = 0, bmax = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (d != d) return INFINITY;
        if (d > dmax) dmax = d;
        if (fabs(b[i]) > bmax) bmax = fabs(b[i]);
    }
    return bmax > 0 ? dmax / bmax : dmax;
}

/* Draws (layer, sigma) on both generators and compares all five tensors. */
static void compare_layers(const char *model, int px, const int *layers, const double *sigmas,
                           int count, int bf16) {
    const double bound = bf16 ? 4e-3 : 1e-4;
    need_device();
    char err[256];
    tsim_shape s;
    TH_CHECKF(tsim_shape_make(tsim_model_find(model), px, px, &s, err, sizeof err) == 0, "%s", err);
    tsim_workload *w = NULL;
    TH_CHECKF(tsim_workload_open(&s, 7, &w, err, sizeof err) == 0, "%s", err);
    tsim_workload_cuda *g = NULL;
    TH_CHECKF(tsim_workload_cuda_open(w, &g, err, sizeof err) == 0, "%s", err);
    size_t n = (size_t)s.model.heads * s.tokens * s.model.head_dim;
    float *host[5], *gpu[5];
    void *dev[5];
    for (int i = 0; i < 5; i++) {
        host[i] = malloc(n * sizeof(float));
        gpu[i] = malloc(n * sizeof(float));
        TH_CHECK(host[i] && gpu[i]);
        TH_CHECKF(tkcu_alloc(&dev[i], n * sizeof(float), err, sizeof err) == 0, "%s", err);
    }
    static const char *names[5] = {"q", "k", "v", "q0", "k0"};
    for (int c = 0; c < count; c++) {
        for (int i = 0; i < 5; i++)
            TH_CHECKF(tkcu_poison(dev[i], n * sizeof(float), 0xff, err, sizeof err) == 0, "%s", err);
        TH_CHECK(tsim_workload_layer(w, layers[c], sigmas[c], host[0], host[1], host[2], host[3],
                                     host[4]) == 0);
        TH_CHECKF(tsim_workload_cuda_layer(g, layers[c], sigmas[c], bf16, dev[0], dev[1], dev[2],
                                           dev[3], dev[4], err, sizeof err) == 0,
                  "%s", err);
        for (int i = 0; i < 5; i++) {
            TH_CHECKF(tkcu_download(gpu[i], dev[i], n, bf16 ? TK_DTYPE_BF16 : TK_DTYPE_F32, err, sizeof err) == 0, "%s", err);
            double r = rel_max_diff(gpu[i], host[i], n);
            printf("  %s %dpx layer %d sigma %.2f %s%s: max diff / max value %.2e\n", model, px,
                   layers[c], sigmas[c], names[i], bf16 ? " (bf16)" : "", r);
            TH_CHECKF(r <= bound, "%s layer %d sigma %.2f: %s differs by %.3e of its max", model,
                      layers[c], sigmas[c], names[i], r);
        }
        /* q is not q0: RoPE did rotate the image tokens */
        TH_CHECK(rel_max_diff(gpu[0], gpu[3], n) > 1e-2);
    }
    for (int i = 0; i < 5; i++) free(host[i]), free(gpu[i]), tkcu_free(dev[i]);
    tsim_workload_cuda_free(g);
    tsim_workload_free(w);
}

static void test_tiny_layers_match_the_cpu_generator_at_noisy_and_formed_sigma(void) {
    int layers[] = {0, 7, 3};
    double sigmas[] = {1.0, 0.3, 0.3}; /* the third reuses the cached latent of the second */
    compare_layers("tiny", 256, layers, sigmas, 3, 0);
}

static void test_tiny_and_small_bf16_layers_match_the_cpu_generator_to_bf16_rounding(void) {
    int layers[] = {0, 5};
    double sigmas[] = {0.8, 0.1};
    compare_layers("tiny", 256, layers, sigmas, 2, 1);
    compare_layers("small", 512, layers, sigmas, 2, 1);
}

static void test_flux1_512_layers_match_the_cpu_generator(void) {
    int layers[] = {0, 56};
    double sigmas[] = {0.9, 0.05};
    compare_layers("flux1", 512, layers, sigmas, 2, 0);
}

/* The host's output checksum on the device: equal to the same sums taken
 * here in double (to 1e-10 of the abs sum: only the order differs), and the same
 * bits twice over the same bytes (a replay compares them). */
static void test_device_checksums_equal_the_host_sums_and_repeat_exactly(void) {
    need_device();
    char err[256];
    tsim_shape s;
    TH_CHECK(tsim_shape_make(tsim_model_find("small"), 0, 0, &s, err, sizeof err) == 0);
    tsim_workload *w = NULL;
    TH_CHECK(tsim_workload_open(&s, 3, &w, err, sizeof err) == 0);
    tsim_workload_cuda *g = NULL;
    TH_CHECKF(tsim_workload_cuda_open(w, &g, err, sizeof err) == 0, "%s", err);
    size_t n = (size_t)s.model.heads * s.tokens * s.model.head_dim;
    void *dq = NULL, *dk = NULL;
    float *host = malloc(n * sizeof(float));
    TH_CHECK(host && tkcu_alloc(&dq, n * 4, err, sizeof err) == 0 && tkcu_alloc(&dk, n * 4, err, sizeof err) == 0);
    for (int bf16 = 0; bf16 < 2; bf16++) {
        TH_CHECKF(tsim_workload_cuda_layer(g, 2, 0.4, bf16, dq, dk, NULL, NULL, NULL, err, sizeof err) == 0, "%s", err);
        TH_CHECKF(tkcu_download(host, dq, n, bf16 ? TK_DTYPE_BF16 : TK_DTYPE_F32, err, sizeof err) == 0, "%s", err);
        double hs = 0, ha = 0;
        for (size_t i = 0; i < n; i++) hs += host[i], ha += fabs(host[i]);
        double s1, a1, s2, a2;
        TH_CHECKF(tsim_workload_cuda_sums(g, dq, n, bf16, &s1, &a1, err, sizeof err) == 0, "%s", err);
        TH_CHECKF(tsim_workload_cuda_sums(g, dq, n, bf16, &s2, &a2, err, sizeof err) == 0, "%s", err);
        printf("  bf16=%d: sum %.12e (host %.12e), abs %.12e (host %.12e)\n", bf16, s1, hs, a1, ha);
        TH_CHECK(a1 > 0);
        TH_CHECKF(fabs(s1 - hs) <= 1e-10 * ha && fabs(a1 - ha) <= 1e-10 * ha, "sums differ: %.17g vs %.17g, %.17g vs %.17g", s1, hs, a1, ha);
        TH_CHECK(memcmp(&s1, &s2, sizeof s1) == 0 && memcmp(&a1, &a2, sizeof a1) == 0);
    }
    free(host);
    tkcu_free(dq), tkcu_free(dk);
    tsim_workload_cuda_free(g);
    tsim_workload_free(w);
}

static void test_a_layer_out_of_range_is_an_error(void) {
    need_device();
    char err[256];
    tsim_shape s;
    TH_CHECK(tsim_shape_make(tsim_model_find("tiny"), 0, 0, &s, err, sizeof err) == 0);
    tsim_workload *w = NULL;
    TH_CHECK(tsim_workload_open(&s, 1, &w, err, sizeof err) == 0);
    tsim_workload_cuda *g = NULL;
    TH_CHECKF(tsim_workload_cuda_open(w, &g, err, sizeof err) == 0, "%s", err);
    void *q = NULL, *k = NULL;
    size_t n = (size_t)s.model.heads * s.tokens * s.model.head_dim;
    TH_CHECK(tkcu_alloc(&q, n * 4, err, sizeof err) == 0 && tkcu_alloc(&k, n * 4, err, sizeof err) == 0);
    err[0] = 0;
    TH_CHECK(tsim_workload_cuda_layer(g, s.layers, 0.5, 0, q, k, NULL, NULL, NULL, err, sizeof err) != 0);
    TH_CHECK(strstr(err, "out of range") != NULL);
    TH_CHECK(tsim_workload_cuda_layer(g, 0, 1.5, 0, q, k, NULL, NULL, NULL, err, sizeof err) != 0);
    TH_CHECK(tsim_workload_cuda_layer(g, 0, 0.5, 0, q, k, NULL, NULL, NULL, err, sizeof err) == 0);
    tkcu_free(q), tkcu_free(k);
    tsim_workload_cuda_free(g);
    tsim_workload_free(w);
}

#define T(name) TH_TEST(name)
#else
static void test_the_device_generator_is_not_built(void) { th_skip("built without nvcc"); }
#define T(name) TH_TEST(test_the_device_generator_is_not_built)
#endif

static const th_test tests[] = {
#ifdef TK_HAVE_CUDA
    T(test_tiny_layers_match_the_cpu_generator_at_noisy_and_formed_sigma),
    T(test_tiny_and_small_bf16_layers_match_the_cpu_generator_to_bf16_rounding),
    T(test_flux1_512_layers_match_the_cpu_generator),
    T(test_device_checksums_equal_the_host_sums_and_repeat_exactly),
    T(test_a_layer_out_of_range_is_an_error),
#else
    T(x),
#endif
    {0},
};

int main(int argc, char **argv) { return th_main(tests, argc, argv); }

/* The hybrid's PCA on cuda (kernels/cuda/hybrid.cu pca_for): on q0/k0 rows that
 * lie near a planted g-dimensional subspace (x = A z + small noise, A an
 * orthonormal D x g basis, z with spread-out variances 9 .. 1), the cached
 * projection P must be orthonormal (|P^T P - I| <= 1e-4: float output of a
 * double eigensolve) and span A's subspace: |A^T P|_F^2 >= g (1 - 1e-3).
 * The noise (sd 0.01 per dim) tilts the true top subspace by about
 * 0.01^2 * D / 1 relative energy ~ 1e-2 per dim at most against variance >= 1,
 * i.e. |A^T P|_F^2 ~ g (1 - 1e-4): a bound of 1e-3 still fails at once for a
 * wrong vector, a half-converged iteration or a basis of the wrong rows.
 * Skipped without a device. */
#include "harness.h"
#include "kernels.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef TK_HAVE_CUDA
#include "cuda/tkcuda_util.h"
#include "gpu_test.h"
#include "internal.h"

/* D x g orthonormal columns (row-major [D][g]) by Gram-Schmidt of normals. */
static void random_basis(double *A, int D, int g) {
    for (int i = 0; i < D * g; i++) A[i] = nrand();
    for (int j = 0; j < g; j++) {
        for (int p = 0; p < j; p++) {
            double d = 0;
            for (int i = 0; i < D; i++) d += A[i * g + j] * A[i * g + p];
            for (int i = 0; i < D; i++) A[i * g + j] -= d * A[i * g + p];
        }
        double n = 0;
        for (int i = 0; i < D; i++) n += A[i * g + j] * A[i * g + j];
        for (int i = 0; i < D; i++) A[i * g + j] /= sqrt(n);
    }
}

static void check_planted(int D, int g, int H) {
    need_device();
    int T = 16, gh = 16, gw = 16, N = T + gh * gw;
    size_t n = (size_t)H * N * D;
    char err[256] = "";
    double *A = malloc(sizeof(double) * H * D * g);
    float *x = malloc(sizeof(float) * n), *Pm = malloc(sizeof(float) * D * g);
    TH_CHECK(A && x && Pm);
    gt_seed(4242 + D + g);
    for (int h = 0; h < H; h++) {
        double *Ah = A + (size_t)h * D * g;
        random_basis(Ah, D, g);
        for (int t = 0; t < N; t++) {
            double z[32];
            for (int j = 0; j < g; j++) z[j] = nrand() * (3.0 - 2.0 * j / (g - 1));
            for (int i = 0; i < D; i++) {
                double s = 0.01 * nrand();
                for (int j = 0; j < g; j++) s += Ah[i * g + j] * z[j];
                x[((size_t)h * N + t) * D + i] = (float)s;
            }
        }
    }
    void *dx = NULL, *dv = NULL, *dout = NULL;
    TH_CHECKF(tkcu_alloc(&dx, n * 2, err, sizeof err) == 0 && tkcu_alloc(&dv, n * 2, err, sizeof err) == 0 &&
                  tkcu_alloc(&dout, n * 2, err, sizeof err) == 0,
              "%s", err);
    TH_CHECKF(tkcu_upload(dx, x, n, TK_DTYPE_BF16, err, sizeof err) == 0, "%s", err);
    TH_CHECKF(tkcu_random(dv, n, TK_DTYPE_BF16, 5, 1.f, err, sizeof err) == 0, "%s", err);
    tk_context *ctx = NULL;
    TH_CHECKF(tk_context_open(TK_BACKEND_CUDA, &ctx, err, sizeof err) == 0, "%s", err);
    tk_call c;
    memset(&c, 0, sizeof c);
    c.B = 1, c.H = H, c.Nq = c.Nk = N, c.D = c.Dv = D, c.dtype = TK_DTYPE_BF16;
    c.q = c.k = c.q0 = c.k0 = dx, c.v = dv, c.o = dout;
    c.text_tokens = T, c.grid_h = gh, c.grid_w = gw, c.layer = 3;
    tk_config cfg;
    tk_config_defaults(&cfg);
    cfg.global_dim = g;
    cfg.pca_samples = 200;
    tk_result r;
    memset(&r, 0, sizeof r);
    TH_EQ_INT(tk_attention(ctx, &c, &cfg, TK_MODE_HYBRID, NULL, &r), TK_OK);
    TH_CHECKF(r.reason == TK_REASON_NONE, "reason %s: %s", tk_reason_name(r.reason), r.detail);
    double worst_orth = 0, worst_span = 1e9;
    for (int h = 0; h < H; h++) {
        int Dm = 0, gm = 0;
        TH_CHECK(tkcu_hybrid_projection(ctx, 3, h, Pm, &Dm, &gm) == 0);
        TH_EQ_INT(Dm, D);
        TH_EQ_INT(gm, g);
        for (int a = 0; a < g; a++)
            for (int b = 0; b < g; b++) {
                double d = 0;
                for (int i = 0; i < D; i++) d += (double)Pm[i * g + a] * Pm[i * g + b];
                double e = fabs(d - (a == b));
                if (e > worst_orth) worst_orth = e;
            }
        const double *Ah = A + (size_t)h * D * g;
        double span = 0;
        for (int a = 0; a < g; a++)
            for (int b = 0; b < g; b++) {
                double d = 0;
                for (int i = 0; i < D; i++) d += Ah[i * g + a] * Pm[i * g + b];
                span += d * d;
            }
        if (span < worst_span) worst_span = span;
    }
    printf("  D %d g %d: worst |P^T P - I| %.2e, worst |A^T P|_F^2 %.6f of %d\n", D, g, worst_orth,
           worst_span, g);
    TH_CHECKF(worst_orth <= 1e-4, "P is not orthonormal: %.3e", worst_orth);
    TH_CHECKF(worst_span >= g * (1 - 1e-3), "P misses the planted subspace: %.6f of %d", worst_span, g);
    tk_context_close(ctx);
    tkcu_free(dx), tkcu_free(dv), tkcu_free(dout);
    free(A), free(x), free(Pm);
}

static void test_pca_finds_a_planted_16_dim_subspace_at_head_dim_128(void) { check_planted(128, 16, 3); }
static void test_pca_finds_a_planted_32_dim_subspace_at_head_dim_128(void) { check_planted(128, 32, 2); }
static void test_pca_finds_a_planted_16_dim_subspace_at_head_dim_64(void) { check_planted(64, 16, 2); }

#define T(name) TH_TEST(name)
#else
static void test_the_cuda_pca_is_not_built(void) { th_skip("built without nvcc"); }
#define T(name) TH_TEST(test_the_cuda_pca_is_not_built)
#endif

static const th_test tests[] = {
#ifdef TK_HAVE_CUDA
    T(test_pca_finds_a_planted_16_dim_subspace_at_head_dim_128),
    T(test_pca_finds_a_planted_32_dim_subspace_at_head_dim_128),
    T(test_pca_finds_a_planted_16_dim_subspace_at_head_dim_64),
#else
    T(x),
#endif
    {0},
};

int main(int argc, char **argv) { return th_main(tests, argc, argv); }

/* workload_test.c -- the synthetic generator: seeded, structured, RoPE'd. */
#include "harness.h"
#include "sim.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    tsim_shape shape;
    tsim_workload *w;
    size_t n;
    float *q, *k, *v, *q0, *k0;
} drawn;

static void draw(drawn *d, const char *model, int px, uint64_t seed, int layer, double sigma) {
    char err[256];
    memset(d, 0, sizeof *d);
    TH_EQ_INT(tsim_shape_make(tsim_model_find(model), px, px, &d->shape, err, sizeof err), 0);
    TH_CHECKF(tsim_workload_open(&d->shape, seed, &d->w, err, sizeof err) == 0, "%s", err);
    d->n = (size_t)d->shape.model.heads * d->shape.tokens * d->shape.model.head_dim;
    d->q = malloc(d->n * sizeof(float)), d->k = malloc(d->n * sizeof(float));
    d->v = malloc(d->n * sizeof(float)), d->q0 = malloc(d->n * sizeof(float));
    d->k0 = malloc(d->n * sizeof(float));
    TH_CHECK(d->q && d->k && d->v && d->q0 && d->k0);
    TH_EQ_INT(tsim_workload_layer(d->w, layer, sigma, d->q, d->k, d->v, d->q0, d->k0), 0);
}

static void drop(drawn *d) {
    tsim_workload_free(d->w);
    free(d->q), free(d->k), free(d->v), free(d->q0), free(d->k0);
}

static void test_same_seed_gives_the_same_bytes(void) {
    drawn a, b;
    draw(&a, "tiny", 0, 42, 3, 0.4);
    draw(&b, "tiny", 0, 42, 3, 0.4);
    TH_CHECK(memcmp(a.q, b.q, a.n * sizeof(float)) == 0);
    TH_CHECK(memcmp(a.k, b.k, a.n * sizeof(float)) == 0);
    TH_CHECK(memcmp(a.v, b.v, a.n * sizeof(float)) == 0);
    TH_CHECK(memcmp(a.q0, b.q0, a.n * sizeof(float)) == 0);
    drop(&a), drop(&b);
}

static void test_a_threaded_draw_gives_the_same_bytes(void) {
    /* flux1 at 256x256: 24 heads x 768 tokens x 128, above the size where
     * the per-row work is split over threads */
    drawn a, b;
    draw(&a, "flux1", 256, 5, 40, 0.6);
    draw(&b, "flux1", 256, 5, 40, 0.6);
    TH_CHECK(memcmp(a.q, b.q, a.n * sizeof(float)) == 0);
    TH_CHECK(memcmp(a.k0, b.k0, a.n * sizeof(float)) == 0);
    TH_CHECK(memcmp(a.v, b.v, a.n * sizeof(float)) == 0);
    drop(&a), drop(&b);
}

static void test_layers_drawn_out_of_order_give_the_same_bytes(void) {
    drawn a, b;
    draw(&a, "tiny", 0, 42, 5, 0.7);
    draw(&b, "tiny", 0, 42, 1, 0.2); /* another layer and sigma first */
    TH_EQ_INT(tsim_workload_layer(b.w, 5, 0.7, b.q, b.k, b.v, b.q0, b.k0), 0);
    TH_CHECK(memcmp(a.q, b.q, a.n * sizeof(float)) == 0);
    TH_CHECK(memcmp(a.v, b.v, a.n * sizeof(float)) == 0);
    drop(&a), drop(&b);
}

static void test_different_seed_gives_different_tensors(void) {
    drawn a, b;
    draw(&a, "tiny", 0, 42, 3, 0.4);
    draw(&b, "tiny", 0, 43, 3, 0.4);
    size_t same = 0;
    for (size_t i = 0; i < a.n; i++) same += a.q[i] == b.q[i];
    TH_CHECKF(same < a.n / 100, "%zu of %zu q values equal", same, a.n);
    drop(&a), drop(&b);
}

static void test_tensors_are_finite_and_rms_normed_with_a_gain(void) {
    drawn a;
    draw(&a, "tiny", 0, 7, 2, 0.5);
    int D = a.shape.model.head_dim;
    double g = tsim_workload_layer_gain(a.w, 2) * (1.0 - 0.3 * 0.5);
    for (size_t i = 0; i < a.n; i++) TH_CHECK(isfinite(a.q[i]) && isfinite(a.k[i]) && isfinite(a.v[i]));
    /* RoPE is a rotation: post-RoPE rows keep the pre-RoPE norm, which is
     * about gain * sqrt(D) after the RMS norm. */
    for (size_t row = 0; row < a.n / D; row += 37) {
        double nq = 0, nq0 = 0;
        for (int d = 0; d < D; d++) {
            nq += (double)a.q[row * D + d] * a.q[row * D + d];
            nq0 += (double)a.q0[row * D + d] * a.q0[row * D + d];
        }
        TH_NEAR(sqrt(nq), sqrt(nq0), 1e-3 * sqrt(nq0));
        TH_CHECKF(sqrt(nq) > 0.6 * g * sqrt(D) && sqrt(nq) < 1.4 * g * sqrt(D), "row %zu norm %g, gain*sqrt(D) %g",
                  row, sqrt(nq), g * sqrt(D));
    }
    drop(&a);
}

static void test_rope_rotates_image_tokens_and_leaves_text_alone(void) {
    drawn a;
    draw(&a, "tiny", 0, 9, 0, 0.3);
    int D = a.shape.model.head_dim, T = a.shape.model.text_tokens;
    /* text tokens (position 0) and the first image token (0,0): unrotated */
    TH_CHECK(memcmp(a.q, a.q0, (size_t)(T + 1) * D * sizeof(float)) == 0);
    /* image token (r=2,c=3): the index-axis dims are unrotated, others are */
    size_t row = (size_t)T + 2 * a.shape.grid_w + 3;
    TH_CHECK(memcmp(a.q + row * D, a.q0 + row * D, a.shape.model.rope_axes[0] * sizeof(float)) == 0);
    TH_CHECK(memcmp(a.q + row * D, a.q0 + row * D, D * sizeof(float)) != 0);
    /* tsim_rope_apply reproduces the generator's rotation from q0 */
    float *x = malloc(a.n * sizeof(float));
    TH_CHECK(x != NULL);
    memcpy(x, a.q0, a.n * sizeof(float));
    tsim_rope_apply(&a.shape, x);
    for (size_t i = 0; i < a.n; i++) TH_NEAR(x[i], a.q[i], 1e-5);
    free(x);
    drop(&a);
}

static void test_the_latent_moves_from_noise_to_structure(void) {
    /* Neighbouring image tokens: their k0 rows agree more at low sigma (a
     * smooth field) than at sigma 1 (i.i.d. noise). Position component
     * aside, measured on a head with low locality. */
    drawn a;
    draw(&a, "tiny", 0, 11, 0, 1.0);
    int H = a.shape.model.heads, D = a.shape.model.head_dim, N = a.shape.tokens, T = a.shape.model.text_tokens;
    int hmin = 0;
    for (int h = 1; h < H; h++)
        if (tsim_workload_head(a.w, 0, h)->locality < tsim_workload_head(a.w, 0, hmin)->locality) hmin = h;
    double corr[2];
    for (int pass = 0; pass < 2; pass++) {
        TH_EQ_INT(tsim_workload_layer(a.w, 0, pass ? 0.0 : 1.0, a.q, a.k, a.v, a.q0, a.k0), 0);
        double s = 0;
        int cnt = 0;
        for (int n = T; n + 1 < N; n++) {
            if ((n - T) % a.shape.grid_w == a.shape.grid_w - 1) continue;
            const float *x = a.v + ((size_t)hmin * N + n) * D, *y = x + D;
            double xy = 0, xx = 0, yy = 0;
            for (int d = 0; d < D; d++) xy += x[d] * y[d], xx += x[d] * x[d], yy += y[d] * y[d];
            s += xy / sqrt(xx * yy), cnt++;
        }
        corr[pass] = s / cnt;
    }
    TH_CHECKF(corr[1] > corr[0] + 0.3, "neighbour correlation of v: sigma 1 %g, sigma 0 %g", corr[0], corr[1]);
    drop(&a);
}

static const th_test tests[] = {
    TH_TEST(test_same_seed_gives_the_same_bytes),
    TH_TEST(test_a_threaded_draw_gives_the_same_bytes),
    TH_TEST(test_layers_drawn_out_of_order_give_the_same_bytes),
    TH_TEST(test_different_seed_gives_different_tensors),
    TH_TEST(test_tensors_are_finite_and_rms_normed_with_a_gain),
    TH_TEST(test_rope_rotates_image_tokens_and_leaves_text_alone),
    TH_TEST(test_the_latent_moves_from_noise_to_structure),
    {0},
};

int main(int argc, char **argv) { return th_main(tests, argc, argv); }

/* schedule_test.c -- the sigma schedule and the model shapes. */
#include "harness.h"
#include "sim.h"

#include <math.h>
#include <string.h>

static void test_shift_mu_passes_through_fluxs_two_points(void) {
    TH_NEAR(tsim_shift_mu(256), 0.5, 1e-12);
    TH_NEAR(tsim_shift_mu(4096), 1.15, 1e-12);
    TH_NEAR(tsim_shift_mu(2176), 0.825, 1e-12); /* midpoint */
}

static void test_schedule_values_equal_the_formula(void) {
    double sig[29];
    int steps = 28, n = 4096;
    tsim_schedule(steps, n, sig);
    double mu = 0.5 + (1.15 - 0.5) * (n - 256) / (4096.0 - 256.0);
    for (int i = 0; i < steps; i++) {
        double t = 1.0 - (double)i / steps;
        double want = exp(mu) / (exp(mu) + (1.0 / t - 1.0));
        TH_NEAR(sig[i], want, 1e-12);
    }
    TH_NEAR(sig[0], 1.0, 0);
    TH_NEAR(sig[steps], 0.0, 0);
}

static void test_schedule_falls_strictly_and_shift_keeps_sigma_high_longer(void) {
    double big[21], small[21];
    tsim_schedule(20, 4096, big);
    tsim_schedule(20, 256, small);
    for (int i = 0; i < 20; i++) TH_CHECKF(big[i + 1] < big[i], "step %d: %g then %g", i, big[i], big[i + 1]);
    /* More image tokens: a larger shift, so sigma stays higher mid-way. */
    TH_CHECKF(big[10] > small[10], "sigma at half-way: 4096 tokens %g, 256 tokens %g", big[10], small[10]);
    TH_CHECK(big[10] > 0.5);
}

static void test_flux1_shape_is_fluxs(void) {
    const tsim_model *m = tsim_model_find("flux1");
    TH_CHECK(m != NULL);
    tsim_shape s;
    char err[128];
    TH_EQ_INT(tsim_shape_make(m, 1024, 1024, &s, err, sizeof err), 0);
    TH_EQ_INT(s.tokens, 4608);
    TH_EQ_INT(s.layers, 57);
    TH_EQ_INT(s.model.heads, 24);
    TH_EQ_INT(s.model.rope_axes[0], 16);
    TH_EQ_INT(s.model.rope_axes[1], 56);
    TH_EQ_INT(tsim_shape_make(m, 2048, 2048, &s, err, sizeof err), 0);
    TH_EQ_INT(s.tokens, 16896);
}

static void test_image_size_not_a_multiple_of_16_is_refused(void) {
    tsim_shape s;
    char err[128] = "";
    TH_CHECK(tsim_shape_make(tsim_model_find("tiny"), 250, 256, &s, err, sizeof err) != 0);
    TH_CHECKF(strstr(err, "multiples of 16") != NULL, "message: %s", err);
}

static void test_rope_axes_scale_fluxs_split(void) {
    int a[3];
    TH_EQ_INT(tsim_rope_axes_for(128, a), 0);
    TH_CHECK(a[0] == 16 && a[1] == 56 && a[2] == 56);
    TH_EQ_INT(tsim_rope_axes_for(32, a), 0);
    TH_CHECK(a[0] == 4 && a[1] == 14 && a[2] == 14);
    for (int i = 0; i < tsim_model_count(); i++) {
        const tsim_model *m = tsim_model_at(i);
        TH_EQ_INT(m->rope_axes[0] + m->rope_axes[1] + m->rope_axes[2], m->head_dim);
    }
    TH_CHECK(tsim_rope_axes_for(30, a) != 0);
}

static const th_test tests[] = {
    TH_TEST(test_shift_mu_passes_through_fluxs_two_points),
    TH_TEST(test_schedule_values_equal_the_formula),
    TH_TEST(test_schedule_falls_strictly_and_shift_keeps_sigma_high_longer),
    TH_TEST(test_flux1_shape_is_fluxs),
    TH_TEST(test_image_size_not_a_multiple_of_16_is_refused),
    TH_TEST(test_rope_axes_scale_fluxs_split),
    {0},
};

int main(int argc, char **argv) { return th_main(tests, argc, argv); }

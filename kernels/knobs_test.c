/* knobs_test.c -- the one knob table: defaults, parsing, validation. */
#include "harness.h"
#include "kernels.h"

#include <math.h>
#include <string.h>

static void test_defaults_are_inside_their_ranges(void) {
    tk_config c;
    tk_config_defaults(&c);
    char err[256];
    for (int i = 0; i < tk_knob_count(); i++) {
        const tk_knob *k = tk_knob_at(i);
        tk_config d = c;
        TH_CHECKF(tk_config_set_number(&d, k, tk_config_get(&c, k), err, sizeof err) == 0,
                  "default of %s refused: %s", k->name, err);
    }
    TH_CHECK(tk_config_validate(&c, err, sizeof err) == 0);
}

static void test_every_spec_knob_is_in_the_table(void) {
    static const char *names[] = {
        "mode", "terms", "sub_head_blocks", "qk_normalize", "qk_norm_power", "qk_norm_clip",
        "qk_norm_sigma_max", "scale_mul", "eps", "fallback_on_negative",
        "denom_fallback_frac_limit", "early_probe", "probe_samples", "min_tokens", "max_head_dim",
        "max_feature_dim_R", "allow_cross_attention", "taylor_sigma_max", "window_shape",
        "local_window", "local_window_min", "local_window_max", "local_window_sigma_low",
        "local_window_sigma_high", "global_dim", "global_P", "global_scale_mul", "global_weight",
        "global_sigma_low", "global_sigma_high", "pca_samples", "pca_refit_every", "combine",
        "quality_samples", "taylor_layer_start", "taylor_layer_end", "hybrid_layer_start",
        "hybrid_layer_end", "quality_every", "per_layer_records", NULL};
    for (int i = 0; names[i]; i++) TH_CHECKF(tk_knob_find(names[i]) != NULL, "missing %s", names[i]);
}

static void test_out_of_range_value_names_knob_and_range_and_changes_nothing(void) {
    tk_config c, before;
    tk_config_defaults(&c);
    before = c;
    char err[256] = "";
    TH_CHECK(tk_config_set(&c, "terms", "99", err, sizeof err) != 0);
    TH_CHECK(strstr(err, "terms") != NULL);
    TH_CHECK(strstr(err, "[1, 8]") != NULL);
    TH_CHECK(memcmp(&c, &before, sizeof c) == 0);
    TH_CHECK(tk_config_set(&c, "scale_mul", "-1", err, sizeof err) != 0);
    TH_CHECK(tk_config_set(&c, "scale_mul", "nan", err, sizeof err) != 0);
    TH_CHECK(tk_config_set(&c, "scale_mul", "1.5x", err, sizeof err) != 0);
    TH_CHECK(tk_config_set(&c, "terms", "2.5", err, sizeof err) != 0);
    TH_CHECK(tk_config_set(&c, "qk_normalize", "maybe", err, sizeof err) != 0);
    TH_CHECK(tk_config_set(&c, "mode", "fast", err, sizeof err) != 0);
    TH_CHECK(strstr(err, "exact,taylor,hybrid") != NULL);
    TH_CHECK(tk_config_set(&c, "no_such_knob", "1", err, sizeof err) != 0);
    TH_CHECK(memcmp(&c, &before, sizeof c) == 0);
}

static void test_values_of_each_type_parse_and_format_back(void) {
    tk_config c;
    tk_config_defaults(&c);
    char err[256], buf[64];
    TH_CHECK(tk_config_set(&c, "mode", "hybrid", err, sizeof err) == 0);
    TH_EQ_INT(c.mode, TK_MODE_HYBRID);
    TH_EQ_STR(tk_config_format(&c, tk_knob_find("mode"), buf, sizeof buf), "hybrid");
    TH_CHECK(tk_config_set(&c, "qk-normalize", "true", err, sizeof err) == 0);
    TH_EQ_INT(c.qk_normalize, 1);
    TH_CHECK(tk_config_set(&c, "qk_norm_power", "0.25", err, sizeof err) == 0);
    TH_NEAR(c.qk_norm_power, 0.25, 0);
    TH_CHECK(tk_config_set(&c, "sub_head_blocks", "8", err, sizeof err) == 0);
    TH_EQ_INT(c.sub_head_blocks, 8);
    TH_EQ_STR(tk_config_format(&c, tk_knob_find("sub_head_blocks"), buf, sizeof buf), "8");
}

static void test_inverted_pairs_are_refused_by_validate(void) {
    tk_config c;
    tk_config_defaults(&c);
    char err[256];
    c.taylor_layer_start = 10;
    c.taylor_layer_end = 3;
    TH_CHECK(tk_config_validate(&c, err, sizeof err) != 0);
    TH_CHECK(strstr(err, "taylor_layer_start") != NULL);
}

static void test_reason_names_round_trip(void) {
    for (int i = 0; i < TK_REASON_COUNT; i++) {
        tk_reason r;
        TH_CHECK(tk_reason_from_name(tk_reason_name((tk_reason)i), &r) == 0);
        TH_EQ_INT(r, i);
    }
    TH_EQ_STR(tk_reason_name(TK_REASON_DENOMINATOR_TOO_SMALL), "denominator_too_small");
    tk_reason r;
    TH_CHECK(tk_reason_from_name("not_a_reason", &r) != 0);
}

static const th_test tests[] = {
    TH_TEST(test_defaults_are_inside_their_ranges),
    TH_TEST(test_every_spec_knob_is_in_the_table),
    TH_TEST(test_out_of_range_value_names_knob_and_range_and_changes_nothing),
    TH_TEST(test_values_of_each_type_parse_and_format_back),
    TH_TEST(test_inverted_pairs_are_refused_by_validate),
    TH_TEST(test_reason_names_round_trip),
    {0},
};

int main(int argc, char **argv) { return th_main(tests, argc, argv); }

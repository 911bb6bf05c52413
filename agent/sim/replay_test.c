/* replay_test.c -- capture a synthetic run, replay it, get the same run;
 * malformed manifests and missing files are clear errors. */
#include "harness.h"
#include "sim.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void options(tsim_options *o, const char *mode) {
    char err[256];
    char *argv[] = {"taylor-sim", "--quiet", "--listen", "none", "--steps", "3", "--mode", (char *)mode, NULL};
    TH_CHECKF(tsim_parse_args(8, argv, o, err, sizeof err) == 0, "%s", err);
}

static void capture_then_replay(tsim_format format, const char *sub) {
    char dir[512], err[512];
    snprintf(dir, sizeof dir, "%s/%s", th_tmpdir(), sub);
    tsim_options o;
    options(&o, "taylor");
    o.capture_dir = dir;
    o.capture_format = format;
    tsim_run_stats a, b;
    TH_CHECKF(tsim_run(&o, &a, err, sizeof err) == 0, "capture: %s", err);
    o.capture_dir = NULL;
    o.replay_dir = dir;
    TH_CHECKF(tsim_run(&o, &b, err, sizeof err) == 0, "replay: %s", err);
    TH_EQ_INT(b.steps_done, a.steps_done);
    TH_EQ_INT(b.calls, a.calls);
    TH_EQ_INT(b.calls, 3 * 8);
    TH_EQ_INT(b.fallbacks, a.fallbacks);
    for (int r = 0; r < TK_REASON_COUNT; r++) TH_EQ_INT(b.by_reason[r], a.by_reason[r]);
    for (int p = 0; p < 4; p++) TH_EQ_INT(b.by_path[p], a.by_path[p]);
    TH_CHECKF(b.output_sum == a.output_sum && b.output_abs_sum == a.output_abs_sum,
              "outputs differ: %.17g/%.17g vs %.17g/%.17g", a.output_sum, a.output_abs_sum,
              b.output_sum, b.output_abs_sum);
}

static void test_replay_of_a_safetensors_capture_reproduces_the_run(void) {
    capture_then_replay(TSIM_FORMAT_SAFETENSORS, "st");
}

static void test_replay_of_an_npy_capture_reproduces_the_run(void) {
    capture_then_replay(TSIM_FORMAT_NPY, "npy");
}

static void test_capture_refuses_a_directory_that_holds_one(void) {
    char dir[512], err[512] = "";
    snprintf(dir, sizeof dir, "%s/twice", th_tmpdir());
    tsim_options o;
    options(&o, "exact");
    o.steps = 1;
    o.capture_dir = dir;
    tsim_run_stats st;
    TH_EQ_INT(tsim_run(&o, &st, err, sizeof err), 0);
    TH_CHECK(tsim_run(&o, &st, err, sizeof err) != 0);
    TH_CHECKF(strstr(err, "already holds a capture") != NULL, "message: %s", err);
}

/* A one-step capture to break in different ways. */
static const char *fresh_capture(const char *sub) {
    static char dir[512];
    char err[512];
    snprintf(dir, sizeof dir, "%s/%s", th_tmpdir(), sub);
    tsim_options o;
    options(&o, "exact");
    o.steps = 1;
    o.capture_dir = dir;
    tsim_run_stats st;
    TH_CHECKF(tsim_run(&o, &st, err, sizeof err) == 0, "%s", err);
    return dir;
}

static void write_file(const char *dir, const char *name, const char *text) {
    char path[600];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    TH_CHECK(f != NULL);
    fputs(text, f);
    fclose(f);
}

static void expect_error(const char *dir, const char *needle) {
    tsim_replay r;
    char err[512] = "";
    TH_CHECK(tsim_replay_open(dir, &r, err, sizeof err) != 0);
    TH_CHECKF(strstr(err, needle) != NULL, "message \"%s\" lacks \"%s\"", err, needle);
    TH_CHECK(r.calls == NULL && r.ncalls == 0);
}

static const char *head = "# taylorscope capture 1\nmodel\ttiny\nheads\t4\nhead_dim\t32\nblocks\t4\t4\n"
                          "text_tokens\t64\ngrid\t16\t16\n";

static void test_malformed_manifests_are_clear_errors(void) {
    const char *dir = fresh_capture("bad");
    char text[2048];
    write_file(dir, TSIM_MANIFEST, "step sigma layer\n");
    expect_error(dir, "not a capture manifest");
    write_file(dir, TSIM_MANIFEST, "# taylorscope capture 9\n");
    expect_error(dir, "capture format 9");
    snprintf(text, sizeof text, "%s0\t1\t0\ts0000_l000.safetensors\n", head);
    write_file(dir, TSIM_MANIFEST, text);
    expect_error(dir, ":8: expected 8 columns");
    snprintf(text, sizeof text, "%s0\tabc\t0\ta.npy\ta.npy\ta.npy\t-\t-\n", head);
    write_file(dir, TSIM_MANIFEST, text);
    expect_error(dir, "sigma \"abc\"");
    snprintf(text, sizeof text, "%s0\t1\t8\ta.npy\ta.npy\ta.npy\t-\t-\n", head);
    write_file(dir, TSIM_MANIFEST, text);
    expect_error(dir, "layer \"8\" is not in [0, 7]");
    write_file(dir, TSIM_MANIFEST, "# taylorscope capture 1\nheads\t4\n0\t1\t0\ta.npy\ta.npy\ta.npy\t-\t-\n");
    expect_error(dir, "before the header is complete");
    snprintf(text, sizeof text, "%scolour\tblue\n", head);
    write_file(dir, TSIM_MANIFEST, text);
    expect_error(dir, "unknown key \"colour\"");
    snprintf(text, sizeof text, "%s0\t1\t0\ta.txt\ta.npy\ta.npy\t-\t-\n", head);
    write_file(dir, TSIM_MANIFEST, text);
    expect_error(dir, "not a .npy or .safetensors file");
    snprintf(text, sizeof text,
             "%s1\t0.5\t0\ts0000_l000.safetensors\ts0000_l000.safetensors\ts0000_l000.safetensors\t-\t-\n"
             "0\t1\t0\ts0000_l000.safetensors\ts0000_l000.safetensors\ts0000_l000.safetensors\t-\t-\n",
             head);
    write_file(dir, TSIM_MANIFEST, text);
    expect_error(dir, "must be in order");
    write_file(dir, TSIM_MANIFEST, head);
    expect_error(dir, "no calls");
}

static void test_a_missing_file_is_named(void) {
    const char *dir = fresh_capture("missing");
    char path[600];
    snprintf(path, sizeof path, "%s/s0000_l003.safetensors", dir);
    TH_EQ_INT(remove(path), 0);
    expect_error(dir, "s0000_l003.safetensors: no such file");
    tsim_replay r;
    char err[512];
    char nodir[600];
    snprintf(nodir, sizeof nodir, "%s/nowhere", th_tmpdir());
    TH_CHECK(tsim_replay_open(nodir, &r, err, sizeof err) != 0);
    TH_CHECKF(strstr(err, "manifest.tsv: cannot open") != NULL, "message: %s", err);
}

static void test_a_tensor_of_the_wrong_shape_is_refused_at_load(void) {
    const char *dir = fresh_capture("shape");
    char text[2048], err[512] = "";
    /* the manifest claims 8 heads; the files hold 4 */
    snprintf(text, sizeof text,
             "# taylorscope capture 1\nheads\t8\nhead_dim\t32\nblocks\t4\t4\ntext_tokens\t64\ngrid\t16\t16\n"
             "0\t1\t0\ts0000_l000.safetensors\ts0000_l000.safetensors\ts0000_l000.safetensors\t-\t-\n");
    write_file(dir, TSIM_MANIFEST, text);
    tsim_options o;
    options(&o, "exact");
    o.replay_dir = dir;
    tsim_run_stats st;
    TH_CHECK(tsim_run(&o, &st, err, sizeof err) != 0);
    TH_CHECKF(strstr(err, "has shape [1,4,320,32], expected [8,320,32]") != NULL, "message: %s", err);
}

static void test_a_capture_without_q0_k0_replays(void) {
    const char *dir = fresh_capture("noq0");
    char text[4096], err[512];
    int n = snprintf(text, sizeof text, "%s", head);
    for (int l = 0; l < 8; l++)
        n += snprintf(text + n, sizeof text - n, "0\t1\t%d\ts0000_l%03d.safetensors\ts0000_l%03d.safetensors\t"
                      "s0000_l%03d.safetensors\t-\t-\n", l, l, l, l);
    write_file(dir, TSIM_MANIFEST, text);
    tsim_replay r;
    TH_CHECKF(tsim_replay_open(dir, &r, err, sizeof err) == 0, "%s", err);
    TH_EQ_INT(r.ncalls, 8);
    TH_EQ_INT(r.steps, 1);
    TH_CHECK(r.calls[0].file[3] == NULL && r.calls[0].file[4] == NULL);
    tsim_replay_free(&r);
    tsim_options o;
    options(&o, "hybrid"); /* the far field falls back to q/k */
    o.replay_dir = dir;
    tsim_run_stats st;
    TH_CHECKF(tsim_run(&o, &st, err, sizeof err) == 0, "%s", err);
    TH_EQ_INT(st.calls, 8);
    TH_EQ_INT(st.by_path[TK_PATH_HYBRID], 8);
}

static const th_test tests[] = {
    TH_TEST(test_replay_of_a_safetensors_capture_reproduces_the_run),
    TH_TEST(test_replay_of_an_npy_capture_reproduces_the_run),
    TH_TEST(test_capture_refuses_a_directory_that_holds_one),
    TH_TEST(test_malformed_manifests_are_clear_errors),
    TH_TEST(test_a_missing_file_is_named),
    TH_TEST(test_a_capture_without_q0_k0_replays),
    TH_TEST(test_a_tensor_of_the_wrong_shape_is_refused_at_load),
    {0},
};

int main(int argc, char **argv) { return th_main(tests, argc, argv); }

/* screen_test.c -- the screens as an operator reads them: drawn into a
 * virtual terminal (newterm on /dev/null) and read back cell by cell. */
#include <curses.h>
#include <locale.h>
#include <stdio.h>
#include <string.h>

#include "harness.h"
#include "ui/synthetic.h"
#include "ui/ui.h"

static SCREEN *scr;
static FILE *out_f, *in_f;

static void term_open(int h, int w) {
    out_f = fopen("/dev/null", "w");
    in_f = fopen("/dev/null", "r");
    TH_CHECK(out_f && in_f);
    scr = newterm("xterm-256color", out_f, in_f);
    if (!scr) th_skip("no xterm-256color terminfo");
    set_term(scr);
    resizeterm(h, w);
}

static void term_close(void) {
    endwin();
    delscreen(scr);
    fclose(out_f);
    fclose(in_f);
}

/* The whole screen as text, rows joined by '\n'. */
static void screen_text(char *buf, size_t len) {
    size_t off = 0;
    for (int y = 0; y < LINES && off + (size_t)COLS + 2 < len; y++) {
        char line[1024];
        int n = mvinnstr(y, 0, line, COLS < 1000 ? COLS : 1000);
        if (n < 0) n = 0;
        memcpy(buf + off, line, (size_t)n);
        off += (size_t)n;
        buf[off++] = '\n';
    }
    buf[off] = '\0';
}

static void test_the_live_screen_at_80x24_shows_header_steps_reasons_and_keys(void) {
    term_open(24, 80);
    tc_model m;
    tc_model_init(&m);
    char err[128], text[8192];
    TH_CHECK(tc_model_fill_synthetic(&m, 57, 50, err, sizeof err) == 0);
    tc_ui ui = {0};
    ui.live = &m;
    tc_ui_init(&ui, 1);
    tc_ui_draw(&ui);
    screen_text(text, sizeof text);
    term_close();
    TH_CHECKF(strstr(text, "step 50/50"), "no progress in:\n%s", text);
    TH_CHECKF(strstr(text, "mode taylor"), "no mode in:\n%s", text);
    TH_CHECKF(strstr(text, "denominator_too_small"), "no reasons in:\n%s", text);
    TH_CHECKF(strstr(text, "   49 "), "newest step row missing:\n%s", text);
    TH_CHECKF(strstr(text, "F10Quit"), "no key bar:\n%s", text);
    tc_model_free(&m);
}

static void test_a_step_without_figures_shows_na_not_zero(void) {
    term_open(24, 80);
    tc_model m;
    tc_model_init(&m);
    tp_step s;
    memset(&s, 0, sizeof s);
    s.step = 7;
    s.sigma = 0.5;
    s.calls = 3;
    s.window = -1;
    s.attn_ms = 0.0 / 0.0; /* not reported */
    char err[64], text[8192];
    TH_CHECK(tc_model_put_step(&m, &s, err, sizeof err) == 0);
    tc_ui ui = {0};
    ui.live = &m;
    tc_ui_init(&ui, 1);
    tc_ui_draw(&ui);
    screen_text(text, sizeof text);
    term_close();
    const char *row = strstr(text, "    7 ");
    TH_CHECKF(row, "no row for step 7:\n%s", text);
    char line[100];
    snprintf(line, sizeof line, "%.*s", (int)strcspn(row, "\n"), row);
    int na = 0;
    for (const char *p = line; (p = strstr(p, "n/a")); p++) na++;
    TH_CHECKF(na == 5, "expected 5 n/a (worst_q den_min qk_p99 attn_ms win) in '%s'", line);
    tc_model_free(&m);
}

static void test_the_knob_editor_sends_the_typed_value_for_the_selected_knob(void) {
    term_open(24, 80);
    tc_model m;
    tc_model_init(&m);
    char err[128];
    TH_CHECK(tc_model_fill_synthetic(&m, 4, 3, err, sizeof err) == 0);
    tc_ui ui = {0};
    ui.live = &m;
    tc_ui_init(&ui, 1);
    TH_EQ_INT(tc_ui_key(&ui, KEY_F(4)), TC_ACT_REDRAW);
    TH_EQ_INT(ui.screen, TC_SCREEN_KNOBS);
    /* down to local_window_min */
    tp_knob_desc k;
    int guard = 0;
    while (tc_ui_knob_at(&m, ui.knob_sel, &k) == 0 && strcmp(k.name, "local_window_min") && guard++ < 200)
        tc_ui_key(&ui, KEY_DOWN);
    TH_EQ_STR(k.name, "local_window_min");
    TH_EQ_INT(tc_ui_key(&ui, '\n'), TC_ACT_REDRAW);
    TH_CHECK(ui.editing);
    TH_EQ_STR(ui.edit_buf, "8"); /* starts as the value in force */
    tc_ui_key(&ui, '3');         /* the first key replaces it */
    TH_EQ_STR(ui.edit_buf, "3");
    TH_EQ_INT(tc_ui_key(&ui, '\n'), TC_ACT_SET_KNOB);
    TH_EQ_STR(ui.act_knob, "local_window_min");
    TH_EQ_STR(ui.act_value, "3");
    TH_CHECK(!ui.editing);
    term_close();
    tc_model_free(&m);
}

static void test_escape_cancels_an_edit_and_sends_nothing(void) {
    term_open(24, 80);
    tc_model m;
    tc_model_init(&m);
    char err[128];
    TH_CHECK(tc_model_fill_synthetic(&m, 4, 3, err, sizeof err) == 0);
    tc_ui ui = {0};
    ui.live = &m;
    tc_ui_init(&ui, 1);
    tc_ui_key(&ui, KEY_F(4));
    tc_ui_key(&ui, '\n');
    tc_ui_key(&ui, '5');
    TH_EQ_INT(tc_ui_key(&ui, 27), TC_ACT_REDRAW);
    TH_CHECK(!ui.editing);
    TH_EQ_INT(tc_ui_key(&ui, 'q'), TC_ACT_QUIT); /* q is a key again, not input */
    term_close();
    tc_model_free(&m);
}

static void test_a_readonly_observer_cannot_open_the_edit_line(void) {
    term_open(24, 80);
    tc_model m;
    tc_model_init(&m);
    char err[128], text[8192];
    TH_CHECK(tc_model_fill_synthetic(&m, 4, 3, err, sizeof err) == 0);
    tc_ui ui = {0};
    ui.live = &m;
    ui.readonly = 1;
    tc_ui_init(&ui, 1);
    tc_ui_key(&ui, KEY_F(4));
    TH_EQ_INT(tc_ui_key(&ui, '\n'), TC_ACT_REDRAW);
    TH_CHECK(!ui.editing);
    tc_ui_draw(&ui);
    screen_text(text, sizeof text);
    term_close();
    TH_CHECKF(strstr(text, "read-only"), "no read-only notice:\n%s", text);
    tc_model_free(&m);
}

static void test_the_agents_rejection_is_shown_in_the_editor(void) {
    term_open(24, 80);
    tc_model m;
    tc_model_init(&m);
    char err[128], text[8192];
    TH_CHECK(tc_model_fill_synthetic(&m, 4, 3, err, sizeof err) == 0);
    m.edit.state = TC_EDIT_REJECTED;
    snprintf(m.edit.error, sizeof m.edit.error, "knob local_window_min: -3 is out of range");
    tc_ui ui = {0};
    ui.live = &m;
    tc_ui_init(&ui, 0);
    ui.screen = TC_SCREEN_KNOBS;
    tc_ui_draw(&ui);
    screen_text(text, sizeof text);
    term_close();
    TH_CHECKF(strstr(text, "rejected: knob local_window_min: -3 is out of range"), "no error:\n%s", text);
    tc_model_free(&m);
}

static void test_a_tiny_terminal_gets_a_notice_and_every_screen_draws_at_80x24(void) {
    term_open(10, 40);
    tc_model m;
    tc_model_init(&m);
    char err[128], text[8192];
    TH_CHECK(tc_model_fill_synthetic(&m, 57, 50, err, sizeof err) == 0);
    tc_ui ui = {0};
    ui.live = &m;
    tc_ui_init(&ui, 0);
    tc_ui_draw(&ui);
    screen_text(text, sizeof text);
    TH_CHECKF(strstr(text, "too small"), "no notice:\n%s", text);
    resizeterm(24, 80);
    for (int s = 0; s < TC_SCREEN_COUNT; s++) {
        ui.screen = (tc_screen)s;
        tc_ui_draw(&ui);
        screen_text(text, sizeof text);
        TH_CHECKF(strstr(text, "F1Help"), "screen %d has no key bar:\n%s", s, text);
    }
    term_close();
    tc_model_free(&m);
}

static void test_compare_shows_the_knobs_that_differ_and_both_curves(void) {
    term_open(24, 80);
    tc_model a, b;
    tc_model_init(&a);
    tc_model_init(&b);
    char err[128], text[8192];
    TH_CHECK(tc_model_fill_synthetic(&a, 57, 50, err, sizeof err) == 0);
    TH_CHECK(tc_model_fill_synthetic(&b, 57, 30, err, sizeof err) == 0);
    b.header.initial.local_window = 4;
    b.header.initial.qk_norm_power = 0.5;
    tc_ui ui = {0};
    ui.live = &a;
    tc_ui_init(&ui, 1);
    ui.cmp[0] = &a;
    ui.cmp[1] = &b;
    ui.screen = TC_SCREEN_COMPARE;
    tc_ui_draw(&ui);
    screen_text(text, sizeof text);
    term_close();
    TH_CHECKF(strstr(text, "qk_norm_power"), "no qk_norm_power diff:\n%s", text);
    const char *lw = strstr(text, "local_window ");
    TH_CHECKF(lw, "no local_window diff:\n%s", text);
    char line[100];
    snprintf(line, sizeof line, "%.*s", (int)strcspn(lw, "\n"), lw);
    TH_CHECKF(strstr(line, "8") && strstr(line, "| 4"), "local_window line: '%s'", line);
    TH_CHECKF(!strstr(text, "scale_mul"), "an equal knob listed:\n%s", text);
    TH_CHECKF(strstr(text, "A: synthetic-57x50") && strstr(text, "B: synthetic-57x30"), "runs not named:\n%s", text);
    tc_model_free(&a);
    tc_model_free(&b);
}

static const th_test tests[] = {
    TH_TEST(test_compare_shows_the_knobs_that_differ_and_both_curves),
    TH_TEST(test_the_live_screen_at_80x24_shows_header_steps_reasons_and_keys),
    TH_TEST(test_a_step_without_figures_shows_na_not_zero),
    TH_TEST(test_the_knob_editor_sends_the_typed_value_for_the_selected_knob),
    TH_TEST(test_escape_cancels_an_edit_and_sends_nothing),
    TH_TEST(test_a_readonly_observer_cannot_open_the_edit_line),
    TH_TEST(test_the_agents_rejection_is_shown_in_the_editor),
    TH_TEST(test_a_tiny_terminal_gets_a_notice_and_every_screen_draws_at_80x24),
    {0},
};

int main(int argc, char **argv) {
    setlocale(LC_ALL, "C");
    return th_main(tests, argc, argv);
}

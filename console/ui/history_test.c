/* history_test.c -- the history browser's data: a run written through the
 * store comes back as the same view model, and the runs list says what an
 * operator looks for (model, mode, steps, worst quality, fallbacks, status). */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "harness.h"
#include "store.h"
#include "ui/history.h"
#include "ui/synthetic.h"

static const char *db_file(const char *name) {
    static char buf[512];
    snprintf(buf, sizeof buf, "%s/%s", th_tmpdir(), name);
    return buf;
}

/* Writes the model's run into a store as the recorder would. */
static void store_model(const char *db, tc_model *m, int end) {
    tc_store *s;
    char err[512];
    TH_CHECKF(tc_store_open(db, TC_STORE_WRITE, &s, err, sizeof err) == 0, "%s", err);
    int64_t run;
    uint64_t last_seq;
    int created, stored;
    TH_CHECKF(tc_store_run_upsert(s, m->run_id, "ipc:///test", &m->header, 1, &run, &last_seq, &created, err,
                                  sizeof err) == 0,
              "%s", err);
    for (int i = 0; i < m->n_steps; i++)
        TH_CHECKF(tc_store_add_step(s, run, (uint64_t)i + 2, &m->steps[i], 2, (uint64_t)i + 2, &stored, err,
                                    sizeof err) == 0,
                  "%s", err);
    tp_knob_change ch = {"local_window_min", "4", "8"};
    tp_knob_event ev;
    memset(&ev, 0, sizeof ev);
    snprintf(ev.origin, sizeof ev.origin, "console");
    snprintf(ev.request_id, sizeof ev.request_id, "console-1-1");
    ev.status = TP_KNOB_APPLIED;
    ev.effective_step = 25;
    ev.config_version = 2;
    ev.n_changes = 1;
    ev.changes = &ch;
    TH_CHECKF(tc_store_add_knob_event(s, run, 1000, 3, &ev, 3, 0, err, sizeof err) == 0, "%s", err);
    if (end) {
        tp_run_end e;
        memset(&e, 0, sizeof e);
        snprintf(e.status, sizeof e.status, "finished");
        e.steps_done = m->n_steps;
        TH_CHECKF(tc_store_end_run(s, run, &e, 4, 0, err, sizeof err) == 0, "%s", err);
    }
    tc_store_close(s);
}

static void test_a_finished_run_is_listed_with_its_figures(void) {
    tc_model m;
    tc_model_init(&m);
    char err[512];
    TH_CHECK(tc_model_fill_synthetic(&m, 57, 50, err, sizeof err) == 0);
    const char *db = db_file("list.db");
    store_model(db, &m, 1);
    tc_history h = {0};
    TH_CHECKF(tc_history_load(db, &h, err, sizeof err) == 0, "%s", err);
    TH_EQ_INT(h.n, 1);
    TH_EQ_STR(h.runs[0].run_id, m.run_id);
    TH_EQ_STR(h.runs[0].status, "finished");
    TH_EQ_STR(h.runs[0].mode, "taylor");
    TH_EQ_INT(h.runs[0].steps_done, 50);
    TH_EQ_INT(h.runs[0].total_steps, 50);
    TH_CHECK(h.runs[0].have_quality);
    int rep;
    TH_NEAR(h.runs[0].worst_quality, tc_model_worst_quality(&m, &rep), 1e-12);
    TH_EQ_INT(h.runs[0].fallbacks, tc_model_run_fallbacks(&m));
    TH_CHECK(strstr(h.runs[0].model, "flux1 24x128 19+38") != NULL);
    tc_history_free(&h);
    tc_model_free(&m);
}

static void test_an_opened_run_is_the_same_view_as_the_live_one(void) {
    tc_model m, back;
    tc_model_init(&m);
    tc_model_init(&back);
    char err[512];
    TH_CHECK(tc_model_fill_synthetic(&m, 57, 50, err, sizeof err) == 0);
    m.steps[3].den_min = NAN; /* a reported NaN stays NaN */
    m.steps[4].have &= ~(unsigned)TP_HAVE_QK; /* a figure not reported stays so */
    const char *db = db_file("open.db");
    store_model(db, &m, 1);
    TH_CHECKF(tc_history_load_run(db, m.run_id, &back, err, sizeof err) == 0, "%s", err);
    TH_EQ_INT(back.conn, TC_CONN_HISTORY);
    TH_EQ_STR(back.stored_status, "finished");
    TH_EQ_INT(back.n_steps, 50);
    TH_EQ_INT(tc_model_layers(&back), 57);
    TH_EQ_INT(back.steps[10].n_layers, 57);
    TH_NEAR(back.steps[10].layers[7].quality_raw_mean, m.steps[10].layers[7].quality_raw_mean, 1e-15);
    TH_EQ_INT(back.steps[10].window, m.steps[10].window);
    TH_EQ_INT(back.steps[12].reason_counts[TK_REASON_DENOMINATOR_TOO_SMALL],
              m.steps[12].reason_counts[TK_REASON_DENOMINATOR_TOO_SMALL]);
    TH_CHECK(isnan(back.steps[3].den_min) && (back.steps[3].have & TP_HAVE_DENOMS));
    TH_CHECK(!(back.steps[4].have & TP_HAVE_QK));
    TH_EQ_INT(back.n_knob_events, 1);
    TH_EQ_STR(back.knob_events[0].changes[0].name, "local_window_min");
    TH_EQ_INT(back.knob_events[0].effective_step, 25);
    char buf[32];
    TH_EQ_STR(tc_model_knob_value(&back, "mode", buf, sizeof buf), "taylor");
    tc_model_free(&back);
    tc_model_free(&m);
}

static void test_an_unknown_run_or_a_foreign_file_is_an_error_not_a_crash(void) {
    tc_model m, back;
    tc_model_init(&m);
    tc_model_init(&back);
    char err[512];
    TH_CHECK(tc_model_fill_synthetic(&m, 3, 2, err, sizeof err) == 0);
    const char *db = db_file("unknown.db");
    store_model(db, &m, 0);
    TH_CHECK(tc_history_load_run(db, "no-such-run", &back, err, sizeof err) != 0);
    TH_CHECKF(strstr(err, "no-such-run"), "%s", err);
    const char *foreign = db_file("foreign.txt");
    FILE *f = fopen(foreign, "w");
    TH_CHECK(f);
    fputs("not a database\n", f);
    fclose(f);
    tc_history h = {0};
    TH_CHECK(tc_history_load(foreign, &h, err, sizeof err) != 0);
    TH_CHECK(tc_history_load(db_file("missing.db"), &h, err, sizeof err) != 0);
    TH_CHECKF(strstr(err, "does not exist"), "%s", err);
    tc_model_free(&m);
}

static const th_test tests[] = {
    TH_TEST(test_a_finished_run_is_listed_with_its_figures),
    TH_TEST(test_an_opened_run_is_the_same_view_as_the_live_one),
    TH_TEST(test_an_unknown_run_or_a_foreign_file_is_an_error_not_a_crash),
    {0},
};

int main(int argc, char **argv) { return th_main(tests, argc, argv); }

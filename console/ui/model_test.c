/* model_test.c -- the view model: what the console keeps from the stream. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "harness.h"
#include "ui/model.h"

static tp_msg msg_of(tp_msg_type type, const char *run, uint64_t seq) {
    tp_msg m;
    memset(&m, 0, sizeof m);
    m.type = type;
    m.version = TP_PROTOCOL_VERSION;
    snprintf(m.run_id, sizeof m.run_id, "%s", run);
    m.seq = seq;
    return m;
}

static void apply_header(tc_model *m, const char *run, uint64_t seq) {
    tp_msg h = msg_of(TP_MSG_HEADER, run, seq);
    h.u.header.total_steps = 10;
    h.u.header.model.n_double = 2;
    h.u.header.model.n_single = 3;
    tk_config_defaults(&h.u.header.initial);
    h.u.header.current = h.u.header.initial;
    h.u.header.config_version = 1;
    char err[128];
    TH_CHECK(tc_model_apply(m, &h, 1000, err, sizeof err) == 0);
}

static void apply_step(tc_model *m, const char *run, uint64_t seq, int step) {
    tp_msg s = msg_of(TP_MSG_STEP, run, seq);
    s.u.step.step = step;
    s.u.step.sigma = 1.0 - step * 0.1;
    s.u.step.calls = 5;
    s.u.step.window = -1;
    char err[128];
    TH_CHECK(tc_model_apply(m, &s, 2000 + (int64_t)seq, err, sizeof err) == 0);
}

static void test_steps_are_kept_in_step_order_and_replayed_duplicates_are_dropped(void) {
    tc_model m;
    tc_model_init(&m);
    apply_header(&m, "r1", 1);
    apply_step(&m, "r1", 2, 0);
    apply_step(&m, "r1", 4, 2);
    apply_step(&m, "r1", 3, 1); /* replayed late */
    apply_step(&m, "r1", 3, 1); /* and again */
    TH_EQ_INT(m.n_steps, 3);
    for (int i = 0; i < 3; i++) TH_EQ_INT(tc_model_step_at(&m, i)->step, i);
    TH_EQ_INT(tc_model_total_steps(&m), 10);
    TH_EQ_INT(tc_model_layers(&m), 5);
    tc_model_free(&m);
}

static void test_a_sequence_hole_is_a_gap_and_replay_recovers_it(void) {
    tc_model m;
    tc_model_init(&m);
    apply_header(&m, "r1", 1);
    apply_step(&m, "r1", 2, 0);
    apply_step(&m, "r1", 6, 4); /* 3..5 missing */
    TH_EQ_INT(m.n_gaps, 1);
    TH_EQ_INT(m.gaps[0].from_seq, 3);
    TH_EQ_INT(m.gaps[0].to_seq, 5);
    TH_EQ_INT(m.missing, 3);
    apply_step(&m, "r1", 3, 1);
    apply_step(&m, "r1", 4, 2);
    TH_EQ_INT(m.recovered, 2);
    tc_model_gap_result(&m, 3, 5, 1); /* seq 5 was gone from the ring */
    TH_EQ_INT(m.lost, 1);
    TH_EQ_INT(m.gaps[0].state, TC_GAP_LOST);
    tc_model_free(&m);
}

static void test_attaching_late_asks_for_the_runs_start_without_calling_it_missing(void) {
    tc_model m;
    tc_model_init(&m);
    apply_step(&m, "r1", 40, 12);
    TH_EQ_INT(m.n_gaps, 1);
    TH_CHECK(m.gaps[0].backfill);
    TH_EQ_INT(m.gaps[0].from_seq, 1);
    TH_EQ_INT(m.gaps[0].to_seq, 39);
    TH_EQ_INT(m.missing, 0);
    apply_step(&m, "r1", 5, 2); /* replayed */
    TH_EQ_INT(m.n_steps, 2);
    TH_EQ_INT(m.recovered, 0);
    tc_model_gap_result(&m, 1, 39, 30);
    TH_EQ_INT(m.lost, 0);
    tc_model_free(&m);
}

static void test_heartbeat_past_the_last_seen_seq_is_a_gap(void) {
    tc_model m;
    tc_model_init(&m);
    apply_header(&m, "r1", 1);
    tp_msg hb = msg_of(TP_MSG_HEARTBEAT, "r1", 2);
    hb.u.hb.last_seq = 9;
    hb.u.hb.dropped = 4;
    char err[128];
    TH_CHECK(tc_model_apply(&m, &hb, 5000, err, sizeof err) == 0);
    TH_EQ_INT(m.missing, 7); /* 3..9 */
    TH_EQ_INT(m.dropped, 4);
    tc_model_free(&m);
}

static void test_a_new_run_id_starts_the_model_over(void) {
    tc_model m;
    tc_model_init(&m);
    apply_header(&m, "r1", 1);
    apply_step(&m, "r1", 2, 0);
    apply_step(&m, "r2", 1, 0);
    TH_EQ_STR(m.run_id, "r2");
    TH_EQ_INT(m.n_steps, 1);
    TH_EQ_INT(m.have_header, 0);
    TH_EQ_INT(m.n_gaps, 0);
    tc_model_free(&m);
}

static void test_an_applied_knob_event_changes_the_value_in_force_and_completes_the_edit(void) {
    tc_model m;
    tc_model_init(&m);
    apply_header(&m, "r1", 1);
    snprintf(m.edit.request_id, sizeof m.edit.request_id, "req-7");
    snprintf(m.edit.knob, sizeof m.edit.knob, "local_window_min");
    m.edit.state = TC_EDIT_PENDING;
    tp_msg e = msg_of(TP_MSG_KNOB_EVENT, "r1", 2);
    snprintf(e.u.knob.request_id, sizeof e.u.knob.request_id, "req-7");
    e.u.knob.status = TP_KNOB_APPLIED;
    e.u.knob.effective_step = 3;
    e.u.knob.config_version = 2;
    tp_knob_change ch = {"local_window_min", "4", "8"};
    e.u.knob.changes = &ch;
    e.u.knob.n_changes = 1;
    char err[128], buf[64];
    TH_CHECK(tc_model_apply(&m, &e, 3000, err, sizeof err) == 0);
    TH_EQ_STR(tc_model_knob_value(&m, "local_window_min", buf, sizeof buf), "4");
    TH_EQ_INT(m.config_version, 2);
    TH_EQ_INT(m.edit.state, TC_EDIT_APPLIED);
    TH_EQ_INT(m.edit.effective_step, 3);
    TH_EQ_INT(m.n_knob_events, 1);
    TH_EQ_STR(m.knob_events[0].changes[0].value, "4"); /* a deep copy: ch is gone soon */
    tc_model_free(&m);
}

static void test_a_rejected_knob_event_keeps_the_agents_error(void) {
    tc_model m;
    tc_model_init(&m);
    apply_header(&m, "r1", 1);
    snprintf(m.edit.request_id, sizeof m.edit.request_id, "req-8");
    m.edit.state = TC_EDIT_SENDING;
    tp_msg e = msg_of(TP_MSG_KNOB_EVENT, "r1", 2);
    snprintf(e.u.knob.request_id, sizeof e.u.knob.request_id, "req-8");
    e.u.knob.status = TP_KNOB_REJECTED;
    snprintf(e.u.knob.error, sizeof e.u.knob.error, "knob eps: 5 is out of range");
    char err[128], buf[64];
    TH_CHECK(tc_model_apply(&m, &e, 3000, err, sizeof err) == 0);
    TH_EQ_INT(m.edit.state, TC_EDIT_REJECTED);
    TH_EQ_STR(m.edit.error, "knob eps: 5 is out of range");
    TH_EQ_STR(tc_model_knob_value(&m, "eps", buf, sizeof buf), "1e-06");
    tc_model_free(&m);
}

static void test_not_reported_is_na_and_a_reported_nan_is_nan(void) {
    char buf[32];
    TH_EQ_STR(tc_fmt_num(0.0, 0, 3, buf, sizeof buf), "n/a");
    TH_EQ_STR(tc_fmt_num(NAN, 1, 3, buf, sizeof buf), "nan");
    TH_EQ_STR(tc_fmt_num(-INFINITY, 1, 3, buf, sizeof buf), "-inf");
    TH_EQ_STR(tc_fmt_num(0.0, 1, 3, buf, sizeof buf), "0");
    tp_layer_row r;
    memset(&r, 0, sizeof r);
    double v;
    TH_EQ_INT(tc_metric_value(TC_METRIC_DEN_MIN, &r, &v), 0);
    r.have = TP_HAVE_DENOMS;
    TH_EQ_INT(tc_metric_value(TC_METRIC_DEN_MIN, &r, &v), 1);
    TH_NEAR(v, 0.0, 0);
}

static void test_worst_quality_of_a_run_is_nan_when_any_step_reported_nan(void) {
    tc_model m;
    tc_model_init(&m);
    int rep;
    tc_model_worst_quality(&m, &rep);
    TH_EQ_INT(rep, 0);
    tp_step s;
    memset(&s, 0, sizeof s);
    s.have = TP_HAVE_QUALITY;
    s.quality_raw_max = 0.25;
    char err[64];
    TH_CHECK(tc_model_put_step(&m, &s, err, sizeof err) == 0);
    TH_NEAR(tc_model_worst_quality(&m, &rep), 0.25, 0);
    TH_EQ_INT(rep, 1);
    s.step = 1;
    s.quality_raw_max = NAN;
    TH_CHECK(tc_model_put_step(&m, &s, err, sizeof err) == 0);
    TH_CHECK(isnan(tc_model_worst_quality(&m, &rep)));
    tc_model_free(&m);
}

static void test_the_connection_goes_stale_without_messages(void) {
    tc_model m;
    tc_model_init(&m);
    apply_header(&m, "r1", 1);
    TH_EQ_INT(m.conn, TC_CONN_LIVE);
    tc_model_tick(&m, 1000 + 6LL * 1000000000LL);
    TH_EQ_INT(m.conn, TC_CONN_STALE);
    tp_msg end = msg_of(TP_MSG_RUN_END, "r1", 2);
    snprintf(end.u.end.status, sizeof end.u.end.status, "finished");
    char err[64];
    TH_CHECK(tc_model_apply(&m, &end, 7LL * 1000000000LL, err, sizeof err) == 0);
    TH_EQ_INT(m.conn, TC_CONN_ENDED);
    tc_model_free(&m);
}

static const th_test tests[] = {
    TH_TEST(test_steps_are_kept_in_step_order_and_replayed_duplicates_are_dropped),
    TH_TEST(test_a_sequence_hole_is_a_gap_and_replay_recovers_it),
    TH_TEST(test_attaching_late_asks_for_the_runs_start_without_calling_it_missing),
    TH_TEST(test_heartbeat_past_the_last_seen_seq_is_a_gap),
    TH_TEST(test_a_new_run_id_starts_the_model_over),
    TH_TEST(test_an_applied_knob_event_changes_the_value_in_force_and_completes_the_edit),
    TH_TEST(test_a_rejected_knob_event_keeps_the_agents_error),
    TH_TEST(test_not_reported_is_na_and_a_reported_nan_is_nan),
    TH_TEST(test_worst_quality_of_a_run_is_nan_when_any_step_reported_nan),
    TH_TEST(test_the_connection_goes_stale_without_messages),
    {0},
};

int main(int argc, char **argv) { return th_main(tests, argc, argv); }

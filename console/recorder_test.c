/* recorder_test.c -- the recorder against a synthetic agent over ipc:
 * end to end, gaps replayed or recorded, lost runs, kill -9 and restart,
 * a slow subscriber. */
#include "recorder.h"

#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "synth_pub.h"

#define LAYERS 57

static const char *tmp_path(const char *name) {
    static char buf[4][512];
    static int k;
    char *p = buf[k++ % 4];
    snprintf(p, 512, "%s/%s", th_tmpdir(), name);
    return p;
}

static const char *ipc_url(const char *name) {
    static char buf[4][600];
    static int k;
    char *p = buf[k++ % 4];
    snprintf(p, 600, "ipc://%s/%s.pub", th_tmpdir(), name);
    return p;
}

static double mono_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static long long one_int(sqlite3 *db, const char *sql) {
    sqlite3_stmt *st = NULL;
    long long v = -12345;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return v;
}

typedef struct {
    tc_store *store;
    tc_recorder *rec;
} rig;

static rig rig_open(const char *db, const char *url, const tc_recorder_opts *o) {
    rig r = {0};
    char err[512];
    TH_CHECKF(tc_store_open(db, TC_STORE_WRITE, &r.store, err, sizeof err) == 0, "%s", err);
    TH_CHECKF(tc_recorder_open(r.store, o, &r.rec, err, sizeof err) == 0, "%s", err);
    TH_CHECKF(tc_recorder_add(r.rec, url, err, sizeof err) == 0, "%s", err);
    return r;
}

static void rig_close(rig *r) {
    tc_recorder_close(r->rec);
    tc_store_close(r->store);
}

static void pump(rig *r, double seconds) {
    char err[512];
    double end = mono_s() + seconds;
    do {
        TH_CHECKF(tc_recorder_poll_once(r->rec, 10, err, sizeof err) == 0, "%s", err);
    } while (mono_s() < end);
}

/* Polls until the synthetic agent sees a subscriber. */
static void wait_connected(rig *r, tc_synth *s) {
    double end = mono_s() + 5;
    while (tc_synth_subscribers(s) < 1 && mono_s() < end) pump(r, 0.01);
    TH_CHECK(tc_synth_subscribers(s) >= 1);
    pump(r, 0.05);
}

/* Polls until the run's status is not running (or the time is up). */
static void pump_until_ended(rig *r, double seconds) {
    double end = mono_s() + seconds;
    tc_recorder_stats st;
    do {
        pump(r, 0.02);
        tc_recorder_get_stats(r->rec, &st);
    } while (st.runs_ended < 1 && mono_s() < end);
}

/* Every step 0..steps-1 and every layer row of them, with the right figures. */
static void check_complete(sqlite3 *db, int steps) {
    char sql[512];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM steps WHERE step BETWEEN 0 AND %d", steps - 1);
    TH_EQ_INT(one_int(db, sql), steps);
    TH_EQ_INT(one_int(db, "SELECT count(*) FROM steps"), steps);
    TH_EQ_INT(one_int(db, "SELECT count(*) FROM layers"), (long long)steps * LAYERS);
    TH_EQ_INT(one_int(db, "SELECT count(*) FROM (SELECT DISTINCT step, layer FROM layers)"), (long long)steps * LAYERS);
    /* the figures are those published */
    sqlite3_stmt *st = NULL;
    TH_CHECK(sqlite3_prepare_v2(db, "SELECT step, layer, quality_raw_mean FROM layers", -1, &st, NULL) == SQLITE_OK);
    while (sqlite3_step(st) == SQLITE_ROW)
        TH_NEAR(sqlite3_column_double(st, 2),
                tc_synth_expected_quality(sqlite3_column_int(st, 0), sqlite3_column_int(st, 1)), 1e-12);
    sqlite3_finalize(st);
    TH_EQ_INT(one_int(db, "SELECT count(*) FROM pragma_integrity_check WHERE integrity_check = 'ok'"), 1);
}

static void test_a_run_is_recorded_end_to_end(void) {
    const char *url = ipc_url("e2e");
    tc_synth *s;
    char err[512];
    TH_CHECKF(tc_synth_open(url, "run-e2e", 0, &s, err, sizeof err) == 0, "%s", err);
    rig r = rig_open(tmp_path("e2e.db"), url, NULL);
    wait_connected(&r, s);
    const int steps = 12;
    tc_synth_header(s, steps, LAYERS);
    for (int k = 0; k < steps; k++) {
        if (k == 4) {
            tc_synth_knob_event(s, TP_KNOB_APPLIED, "qk_norm_power", "0.5", 4, NULL);
            tc_synth_knob_event(s, TP_KNOB_REJECTED, "qk_norm_power", "9", -1,
                                "qk_norm_power: 9 is out of range [0, 4]");
        }
        tc_synth_step(s, k, LAYERS);
        if (k % 3 == 0) tc_synth_heartbeat(s);
        pump(&r, 0.002);
    }
    tc_synth_run_end(s, "finished", steps);
    pump_until_ended(&r, 5);
    sqlite3 *db = tc_store_db(r.store);
    check_complete(db, steps);
    TH_EQ_INT(one_int(db, "SELECT count(*) FROM runs"), 1);
    TH_EQ_INT(one_int(db, "SELECT status = 'finished' AND steps_done = 12 AND agent_run_id = 'run-e2e' AND "
                          "model_name = 'synthetic' AND total_steps = 12 AND last_seq = "
                          "(SELECT max(seq) FROM steps) + 1 FROM runs"),
              1);
    TH_EQ_INT(one_int(db, "SELECT count(*) FROM knob_events"), 2);
    TH_EQ_INT(one_int(db, "SELECT count(*) FROM knob_events WHERE status='applied' AND effective_step=4"), 1);
    TH_EQ_INT(one_int(db, "SELECT count(*) FROM knob_events WHERE status='rejected' AND error LIKE '%out of range%'"), 1);
    TH_EQ_INT(one_int(db, "SELECT count(*) FROM gaps"), 0);
    /* the NaN of step 1 and the +Inf of every step survived */
    TH_EQ_INT(one_int(db, "SELECT den_min IS NULL AND instr(nan_cols, ',den_min,') > 0 FROM steps WHERE step = 1"), 1);
    TH_EQ_INT(one_int(db, "SELECT count(*) FROM steps WHERE den_max > 1e308"), steps);
    TH_EQ_INT(one_int(db, "SELECT json_extract(initial_config, '$.mode') = 'taylor' FROM runs"), 1);
    rig_close(&r);
    tc_synth_close(s);
}

static void test_a_gap_is_replayed_from_the_agents_ring(void) {
    const char *url = ipc_url("gap");
    tc_synth *s;
    char err[512];
    TH_CHECK(tc_synth_open(url, "run-gap", 0, &s, err, sizeof err) == 0);
    rig r = rig_open(tmp_path("gap.db"), url, NULL);
    wait_connected(&r, s);
    tc_synth_header(s, 10, LAYERS);
    for (int k = 0; k < 10; k++) {
        if (k == 3) tc_synth_hold_back(s, 4); /* steps 3..6 never sent live */
        tc_synth_step(s, k, LAYERS);
        pump(&r, 0.002);
    }
    tc_synth_run_end(s, "finished", 10);
    pump_until_ended(&r, 5);
    sqlite3 *db = tc_store_db(r.store);
    check_complete(db, 10);
    TH_EQ_INT(one_int(db, "SELECT count(*) FROM gaps"), 1);
    TH_EQ_INT(one_int(db, "SELECT from_seq = 5 AND to_seq = 8 AND recovered = 1 AND missing = 0 FROM gaps"), 1);
    tc_recorder_stats st;
    tc_recorder_get_stats(r.rec, &st);
    TH_EQ_INT(st.replayed, 4);
    rig_close(&r);
    tc_synth_close(s);
}

static void test_what_the_ring_no_longer_has_is_recorded_as_a_gap(void) {
    const char *url = ipc_url("lostgap");
    tc_synth *s;
    char err[512];
    TH_CHECK(tc_synth_open(url, "run-lostgap", 4, &s, err, sizeof err) == 0); /* ring of 4 */
    rig r = rig_open(tmp_path("lostgap.db"), url, NULL);
    wait_connected(&r, s);
    tc_synth_header(s, 20, LAYERS);
    for (int k = 0; k < 20; k++) {
        if (k == 2) tc_synth_hold_back(s, 10); /* steps 2..11; only the last 3 stay in the ring */
        tc_synth_step(s, k, LAYERS);
        pump(&r, 0.002);
    }
    tc_synth_run_end(s, "finished", 20);
    pump_until_ended(&r, 5);
    sqlite3 *db = tc_store_db(r.store);
    TH_EQ_INT(one_int(db, "SELECT count(*) FROM gaps WHERE from_seq = 4 AND to_seq = 13"), 1);
    long long missing = one_int(db, "SELECT missing FROM gaps");
    TH_CHECKF(missing >= 7 && missing < 10, "missing = %lld", missing);
    TH_EQ_INT(one_int(db, "SELECT recovered FROM gaps"), 0);
    TH_EQ_INT(one_int(db, "SELECT count(*) FROM steps"), 20 - missing);
    TH_EQ_INT(one_int(db, "SELECT count(*) FROM steps WHERE step IN (0, 1, 11, 12, 19)"), 5);
    TH_EQ_INT(one_int(db, "SELECT status = 'finished' FROM runs"), 1);
    TH_EQ_INT(one_int(db, "SELECT messages_lost FROM run_overview"), missing);
    rig_close(&r);
    tc_synth_close(s);
}

/* Polls until `sql` gives `want` (at most `seconds`); returns as soon as it does. */
static void pump_until(rig *r, const char *sql, long long want, double seconds) {
    char err[512];
    double end = mono_s() + seconds;
    while (one_int(tc_store_db(r->store), sql) != want && mono_s() < end)
        TH_CHECKF(tc_recorder_poll_once(r->rec, 5, err, sizeof err) == 0, "%s", err);
}

static void test_a_silent_agent_makes_its_run_lost_until_it_speaks_again(void) {
    const char *url = ipc_url("silent");
    tc_synth *s;
    char err[512];
    TH_CHECK(tc_synth_open(url, "run-silent", 0, &s, err, sizeof err) == 0);
    tc_recorder_opts o;
    memset(&o, 0, sizeof o);
    o.lost_after_s = 1.0;
    rig r = rig_open(tmp_path("silent.db"), url, &o);
    wait_connected(&r, s);
    sqlite3 *db = tc_store_db(r.store);
    tc_synth_header(s, 10, LAYERS);
    tc_synth_step(s, 0, LAYERS);
    double t0 = mono_s();
    pump_until(&r, "SELECT count(*) FROM steps", 1, 5);
    TH_EQ_INT(one_int(db, "SELECT status = 'running' FROM runs"), 1);
    pump_until(&r, "SELECT status = 'lost' FROM runs", 1, 10);
    TH_CHECK(mono_s() - t0 >= 0.9); /* not before the timeout */
    TH_EQ_INT(one_int(db, "SELECT status = 'lost' AND status_message LIKE 'no message%' FROM runs"), 1);
    tc_synth_step(s, 1, LAYERS);
    pump_until(&r, "SELECT count(*) FROM steps", 2, 5);
    TH_EQ_INT(one_int(db, "SELECT status = 'running' FROM runs"), 1);
    rig_close(&r);
    tc_synth_close(s);
}

static void test_a_dropped_run_end_is_replayed_when_the_run_goes_silent(void) {
    const char *url = ipc_url("tail");
    tc_synth *s;
    char err[512];
    TH_CHECK(tc_synth_open(url, "run-tail", 0, &s, err, sizeof err) == 0);
    tc_recorder_opts o;
    memset(&o, 0, sizeof o);
    o.lost_after_s = 0.3;
    rig r = rig_open(tmp_path("tail.db"), url, &o);
    wait_connected(&r, s);
    tc_synth_header(s, 3, LAYERS);
    tc_synth_step(s, 0, LAYERS);
    tc_synth_hold_back(s, 3); /* the last step and the run end never arrive */
    tc_synth_step(s, 1, LAYERS);
    tc_synth_step(s, 2, LAYERS);
    tc_synth_run_end(s, "failed", 3);
    pump_until_ended(&r, 3);
    sqlite3 *db = tc_store_db(r.store);
    TH_EQ_INT(one_int(db, "SELECT status = 'failed' AND steps_done = 3 FROM runs"), 1);
    TH_EQ_INT(one_int(db, "SELECT count(*) FROM steps"), 3);
    TH_EQ_INT(one_int(db, "SELECT from_seq = 3 AND to_seq = 5 AND recovered = 1 FROM gaps"), 1);
    rig_close(&r);
    tc_synth_close(s);
}

static void test_a_new_run_of_the_same_agent_makes_an_unended_run_lost(void) {
    const char *url = ipc_url("newrun");
    tc_synth *s;
    char err[512];
    TH_CHECK(tc_synth_open(url, "run-old", 0, &s, err, sizeof err) == 0);
    rig r = rig_open(tmp_path("newrun.db"), url, NULL);
    wait_connected(&r, s);
    tc_synth_header(s, 5, LAYERS);
    tc_synth_step(s, 0, LAYERS);
    pump_until(&r, "SELECT count(*) FROM steps", 1, 5);
    tc_synth_new_run(s, "run-new"); /* the host crashed and started again */
    tc_synth_header(s, 5, LAYERS);
    tc_synth_step(s, 0, LAYERS);
    pump_until(&r, "SELECT count(*) FROM steps", 2, 5);
    sqlite3 *db = tc_store_db(r.store);
    TH_EQ_INT(one_int(db, "SELECT status = 'lost' AND status_message LIKE '%started run run-new%' FROM runs "
                          "WHERE agent_run_id = 'run-old'"),
              1);
    TH_EQ_INT(one_int(db, "SELECT status = 'running' FROM runs WHERE agent_run_id = 'run-new'"), 1);
    TH_EQ_INT(one_int(db, "SELECT count(*) FROM steps"), 2);
    rig_close(&r);
    tc_synth_close(s);
}

static void test_runs_left_running_become_lost_when_their_agent_is_gone(void) {
    const char *url = ipc_url("gone");
    const char *p = tmp_path("gone.db");
    char err[512];
    tc_store *st;
    TH_CHECK(tc_store_open(p, TC_STORE_WRITE, &st, err, sizeof err) == 0);
    int64_t run;
    uint64_t last;
    TH_CHECK(tc_store_run_upsert(st, "run-gone", url, NULL, 1, &run, &last, NULL, err, sizeof err) == 0);
    TH_CHECK(tc_store_run_upsert(st, "run-elsewhere", "ipc:///other.pub", NULL, 1, &run, &last, NULL, err,
                                 sizeof err) == 0);
    tc_store_close(st);
    tc_recorder_opts o;
    memset(&o, 0, sizeof o);
    o.lost_after_s = 0.2;
    o.replay_timeout_s = 0.1;
    rig r = rig_open(p, url, &o); /* nobody publishes at url */
    pump(&r, 0.6);
    sqlite3 *db = tc_store_db(r.store);
    TH_EQ_INT(one_int(db, "SELECT status = 'lost' FROM runs WHERE agent_run_id = 'run-gone'"), 1);
    TH_EQ_INT(one_int(db, "SELECT status = 'running' FROM runs WHERE agent_run_id = 'run-elsewhere'"), 1);
    rig_close(&r);
}

/* The child: records until killed. */
static void record_forever(const char *db, const char *url) {
    tc_store *store;
    tc_recorder *rec;
    char err[512];
    if (tc_store_open(db, TC_STORE_WRITE, &store, err, sizeof err) ||
        tc_recorder_open(store, NULL, &rec, err, sizeof err) || tc_recorder_add(rec, url, err, sizeof err)) {
        fprintf(stderr, "child: %s\n", err);
        _exit(3);
    }
    for (;;)
        if (tc_recorder_poll_once(rec, 50, err, sizeof err)) {
            fprintf(stderr, "child: %s\n", err);
            _exit(4);
        }
}

static void test_a_recorder_killed_mid_run_resumes_the_same_run(void) {
    const char *url = ipc_url("kill");
    const char *db_path = tmp_path("kill.db");
    /* fork before this process starts nng's threads */
    pid_t child = fork();
    TH_CHECK(child >= 0);
    if (child == 0) record_forever(db_path, url);
    tc_synth *s;
    char err[512];
    TH_CHECK(tc_synth_open(url, "run-kill", 0, &s, err, sizeof err) == 0);
    double end = mono_s() + 5;
    while (tc_synth_subscribers(s) < 1 && mono_s() < end) sleep_ms(10);
    TH_CHECK(tc_synth_subscribers(s) == 1);
    sleep_ms(50);
    const int steps = 30;
    tc_synth_header(s, steps, LAYERS);
    sqlite3 *db = NULL;
    int k = 0;
    for (; k < 10; k++) {
        tc_synth_step(s, k, LAYERS);
        sleep_ms(5);
    }
    /* wait until the child committed some steps, then kill it mid-stream */
    TH_CHECK(sqlite3_open_v2(db_path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK);
    sqlite3_busy_timeout(db, 2000);
    end = mono_s() + 5;
    while (one_int(db, "SELECT count(*) FROM steps") < 5 && mono_s() < end) sleep_ms(10);
    sqlite3_close(db);
    for (; k < 14; k++) tc_synth_step(s, k, LAYERS); /* some of these are in flight */
    kill(child, SIGKILL);
    int status;
    waitpid(child, &status, 0);
    TH_CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    /* the database is consistent and has whole steps only */
    TH_CHECK(sqlite3_open(db_path, &db) == SQLITE_OK);
    TH_EQ_INT(one_int(db, "SELECT count(*) FROM pragma_integrity_check WHERE integrity_check = 'ok'"), 1);
    long long committed = one_int(db, "SELECT count(*) FROM steps");
    TH_CHECKF(committed >= 5, "committed %lld", committed);
    TH_EQ_INT(one_int(db, "SELECT count(*) FROM layers"), committed * LAYERS);
    TH_EQ_INT(one_int(db, "SELECT status = 'running' FROM runs"), 1);
    sqlite3_close(db);
    /* the agent goes on while no one records */
    for (; k < 20; k++) tc_synth_step(s, k, LAYERS);
    /* a new recorder continues the run and replays what it missed */
    rig r = rig_open(db_path, url, NULL);
    wait_connected(&r, s);
    for (; k < steps; k++) {
        tc_synth_step(s, k, LAYERS);
        pump(&r, 0.002);
    }
    tc_synth_run_end(s, "finished", steps);
    pump_until_ended(&r, 5);
    db = tc_store_db(r.store);
    check_complete(db, steps);
    TH_EQ_INT(one_int(db, "SELECT count(*) FROM runs"), 1);
    TH_EQ_INT(one_int(db, "SELECT status = 'finished' AND agent_run_id = 'run-kill' FROM runs"), 1);
    TH_CHECK(one_int(db, "SELECT count(*) FROM gaps WHERE recovered = 1") >= 1);
    rig_close(&r);
    tc_synth_close(s);
}

typedef struct {
    tc_synth *s;
    int steps;
} flood_arg;

static void *flood(void *p) {
    flood_arg *a = p;
    tc_synth_header(a->s, a->steps, LAYERS);
    for (int k = 0; k < a->steps; k++) tc_synth_step(a->s, k, LAYERS);
    tc_synth_run_end(a->s, "finished", a->steps);
    return NULL;
}

static void test_a_slow_subscriber_gets_its_gaps_replayed(void) {
    const char *url = ipc_url("slow");
    tc_synth *s;
    char err[512];
    TH_CHECK(tc_synth_open(url, "run-slow", 0, &s, err, sizeof err) == 0);
    tc_recorder_opts o;
    memset(&o, 0, sizeof o);
    o.slow_ms = 3;       /* forced: slower than the agent */
    o.recv_buffer = 4;   /* and a small buffer, so that PUB drops */
    rig r = rig_open(tmp_path("slow.db"), url, &o);
    wait_connected(&r, s);
    flood_arg a = {s, 150};
    pthread_t t;
    pthread_create(&t, NULL, flood, &a);
    pthread_join(t, NULL); /* the agent is done long before the recorder */
    pump_until_ended(&r, 20);
    tc_recorder_stats st;
    tc_recorder_get_stats(r.rec, &st);
    sqlite3 *db = tc_store_db(r.store);
    TH_CHECKF(st.gaps >= 1, "no gap detected (%llu messages)", (unsigned long long)st.messages);
    TH_CHECK(one_int(db, "SELECT count(*) FROM gaps") >= 1);
    TH_EQ_INT(one_int(db, "SELECT count(*) FROM gaps WHERE recovered = 0"), 0);
    TH_CHECK(st.replayed >= 1);
    check_complete(db, 150);
    TH_EQ_INT(one_int(db, "SELECT status = 'finished' FROM runs"), 1);
    rig_close(&r);
    tc_synth_close(s);
}

static void test_a_read_only_store_is_refused(void) {
    const char *p = tmp_path("ro.db");
    char err[512];
    TH_CHECK(tc_store_create_at_version(p, tc_store_latest_version(), err, sizeof err) == 0);
    sqlite3 *db;
    sqlite3_open(p, &db);
    sqlite3_exec(db, "PRAGMA user_version = 1000", NULL, NULL, NULL);
    sqlite3_close(db);
    tc_store *s;
    TH_CHECK(tc_store_open(p, TC_STORE_WRITE, &s, err, sizeof err) == 0);
    tc_recorder *rec = NULL;
    TH_CHECK(tc_recorder_open(s, NULL, &rec, err, sizeof err) != 0);
    TH_CHECKF(strstr(err, "read-only") != NULL, "%s", err);
    tc_store_close(s);
}

static const th_test tests[] = {
    TH_TEST(test_a_run_is_recorded_end_to_end),
    TH_TEST(test_a_gap_is_replayed_from_the_agents_ring),
    TH_TEST(test_what_the_ring_no_longer_has_is_recorded_as_a_gap),
    TH_TEST(test_a_silent_agent_makes_its_run_lost_until_it_speaks_again),
    TH_TEST(test_a_dropped_run_end_is_replayed_when_the_run_goes_silent),
    TH_TEST(test_a_new_run_of_the_same_agent_makes_an_unended_run_lost),
    TH_TEST(test_runs_left_running_become_lost_when_their_agent_is_gone),
    TH_TEST(test_a_recorder_killed_mid_run_resumes_the_same_run),
    TH_TEST(test_a_slow_subscriber_gets_its_gaps_replayed),
    TH_TEST(test_a_read_only_store_is_refused),
    {0},
};

int main(int argc, char **argv) { return th_main(tests, argc, argv); }

/* agent_record_test.c -- the recorder and the taylorscope commands against
 * the real agent (ta_*, ref backend, a tiny model) over ipc. The commands
 * are run as the built program ($BUILD/bin/taylorscope). */
#include <math.h>
#include <signal.h>
#include <nng/nng.h>
#include <nng/supplemental/util/platform.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"
#include "harness.h"
#include "recorder.h"

static const ta_model tiny = {"tiny", 2, 8, 2, 3, 4, 2, 2}; /* 5 layers */
#define LAYERS 5

static float buf_q[2 * 16 * 8], buf_k[2 * 16 * 8], buf_v[2 * 16 * 8], buf_o[2 * 16 * 8];

static double mono_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static ta_agent *open_agent(const char *name) {
    static char url[400];
    snprintf(url, sizeof url, "ipc://%s/%s.pub", th_tmpdir(), name);
    ta_options o;
    memset(&o, 0, sizeof o);
    o.endpoint = url;
    o.backend = TK_BACKEND_REF;
    o.model = tiny;
    ta_agent *a = NULL;
    char err[256];
    TH_CHECKF(ta_open(&o, &a, err, sizeof err) == 0, "ta_open: %s", err);
    for (int i = 0; i < (int)(sizeof buf_q / sizeof buf_q[0]); i++) {
        buf_q[i] = (float)sin(0.37 * i);
        buf_k[i] = (float)cos(0.21 * i);
        buf_v[i] = (float)sin(0.11 * i + 1);
    }
    return a;
}

static void host_step(ta_agent *a, int step, double sigma) {
    TH_CHECK(ta_step_begin(a, step, sigma) == 0);
    for (int l = 0; l < tiny.n_double + tiny.n_single; l++) {
        ta_call c;
        memset(&c, 0, sizeof c);
        c.B = 1, c.H = 2, c.Nq = 16, c.Nk = 16, c.D = 8, c.Dv = 8;
        c.dtype = TK_DTYPE_F32;
        c.q = buf_q, c.k = buf_k, c.v = buf_v, c.o = buf_o;
        c.block_type = l < tiny.n_double ? TA_BLOCK_DOUBLE : TA_BLOCK_SINGLE;
        c.block_index = l < tiny.n_double ? l : l - tiny.n_double;
        tk_result res;
        TH_CHECK(ta_attention(a, &c, &res) == 0);
    }
    TH_CHECK(ta_step_end(a) == 0);
}

static long long one_int(sqlite3 *db, const char *sql) {
    sqlite3_stmt *st = NULL;
    long long v = -12345;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return v;
}

static const char *program(void) {
    static char path[512];
    const char *b = getenv("BUILD");
    snprintf(path, sizeof path, "%s/bin/taylorscope", b && *b ? b : "build");
    struct stat sb;
    if (stat(path, &sb) != 0) th_skip("%s is not built", path);
    return path;
}

/* Runs `taylorscope ARGS` (a shell fragment), stdout and stderr together
 * into out; returns the exit status. */
static int run_cmd(char *out, size_t outlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int run_cmd(char *out, size_t outlen, const char *fmt, ...) {
    char args[2048], cmd[2600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    snprintf(cmd, sizeof cmd, "'%s' %s 2>&1", program(), args);
    FILE *p = popen(cmd, "r");
    TH_CHECK(p != NULL);
    size_t n = fread(out, 1, outlen - 1, p);
    out[n] = 0;
    int status = pclose(p);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

/* Records one run of the real agent: 6 steps, a knob change at step 2. */
static void record_run(const char *db_path, ta_agent *a) {
    tc_store *store;
    tc_recorder *rec;
    char err[512];
    TH_CHECKF(tc_store_open(db_path, TC_STORE_WRITE, &store, err, sizeof err) == 0, "%s", err);
    TH_CHECK(tc_recorder_open(store, NULL, &rec, err, sizeof err) == 0);
    TH_CHECKF(tc_recorder_add(rec, ta_endpoint(a), err, sizeof err) == 0, "%s", err);
    double end = mono_s() + 5;
    while (ta_subscribers(a) < 1 && mono_s() < end) tc_recorder_poll_once(rec, 10, err, sizeof err);
    TH_CHECK(ta_subscribers(a) >= 1);
    tc_recorder_poll_once(rec, 50, err, sizeof err);
    TH_CHECKF(ta_run_begin(a, 6, "tiny-model", "euler", err, sizeof err) == 0, "%s", err);
    for (int k = 0; k < 6; k++) {
        if (k == 2) {
            int eff = -1;
            TH_CHECKF(ta_set_knob(a, "qk_norm_power", "0.5", &eff, err, sizeof err) == 0, "%s", err);
        }
        host_step(a, k, 1.0 - k / 6.0);
        TH_CHECKF(tc_recorder_poll_once(rec, 5, err, sizeof err) == 0, "%s", err);
    }
    TH_CHECK(ta_run_end(a, TA_RUN_FINISHED, "") == 0);
    tc_recorder_stats st;
    end = mono_s() + 5;
    do {
        TH_CHECKF(tc_recorder_poll_once(rec, 20, err, sizeof err) == 0, "%s", err);
        tc_recorder_get_stats(rec, &st);
    } while (st.runs_ended < 1 && mono_s() < end);
    TH_EQ_INT(st.runs_ended, 1);
    tc_recorder_close(rec);
    tc_store_close(store);
}

static void test_a_real_agent_run_is_recorded_end_to_end(void) {
    ta_agent *a = open_agent("e2e");
    char db_path[512];
    snprintf(db_path, sizeof db_path, "%s/e2e.db", th_tmpdir());
    record_run(db_path, a);
    sqlite3 *db;
    TH_CHECK(sqlite3_open(db_path, &db) == SQLITE_OK);
    TH_EQ_INT(one_int(db, "SELECT count(*) FROM runs"), 1);
    TH_EQ_INT(one_int(db, "SELECT status = 'finished' AND model_name = 'tiny-model' AND total_steps = 6 AND "
                          "n_double = 2 AND n_single = 3 AND backend = 'ref' FROM runs"),
              1);
    char sql[256];
    snprintf(sql, sizeof sql, "SELECT agent_run_id = '%s' FROM runs", ta_run_id(a));
    TH_EQ_INT(one_int(db, sql), 1);
    TH_EQ_INT(one_int(db, "SELECT count(*) FROM steps WHERE step BETWEEN 0 AND 5"), 6);
    TH_EQ_INT(one_int(db, "SELECT count(*) FROM layers"), 6 * LAYERS);
    TH_EQ_INT(one_int(db, "SELECT count(*) FROM (SELECT DISTINCT step, layer FROM layers)"), 6 * LAYERS);
    TH_EQ_INT(one_int(db, "SELECT sum(calls) FROM steps"), 6 * LAYERS);
    TH_CHECK(one_int(db, "SELECT count(*) FROM knob_events") >= 1);
    TH_EQ_INT(one_int(db, "SELECT count(*) FROM knob_events e JOIN knob_changes c ON c.event_id = e.id "
                          "WHERE e.status = 'applied' AND c.name = 'qk_norm_power' AND e.effective_step = 2"),
              1);
    /* the knob version of the steps follows the change */
    TH_CHECK(one_int(db, "SELECT config_version FROM steps WHERE step = 5") >
             one_int(db, "SELECT config_version FROM steps WHERE step = 1"));
    TH_EQ_INT(one_int(db, "SELECT count(*) FROM gaps WHERE recovered = 0"), 0);
    TH_EQ_INT(one_int(db, "SELECT count(*) FROM pragma_integrity_check WHERE integrity_check = 'ok'"), 1);
    sqlite3_close(db);
    ta_close(a);
}

static void test_set_out_of_range_prints_the_agents_error_and_changes_nothing(void) {
    ta_agent *a = open_agent("set");
    char err[256], out[8192];
    TH_CHECK(ta_run_begin(a, 4, "tiny-model", "euler", err, sizeof err) == 0);
    host_step(a, 0, 1.0);
    tk_config before = *ta_config(a);
    uint32_t version = ta_config_version(a);
    int rc = run_cmd(out, sizeof out, "set '%s' qk_norm_power=99", ta_endpoint(a));
    TH_CHECKF(rc == 1, "exit %d: %s", rc, out);
    TH_CHECKF(strstr(out, "qk_norm_power") && strstr(out, "refused by the agent"), "%s", out);
    host_step(a, 1, 0.8);
    TH_CHECK(memcmp(&before, ta_config(a), sizeof before) == 0);
    TH_EQ_INT(ta_config_version(a), version);
    /* an unknown knob too */
    rc = run_cmd(out, sizeof out, "set '%s' no_such_knob=1", ta_endpoint(a));
    TH_CHECKF(rc == 1 && strstr(out, "no_such_knob"), "exit %d: %s", rc, out);
    /* a valid one is acknowledged with the step it takes effect at */
    rc = run_cmd(out, sizeof out, "set '%s' qk_norm_power=0.25", ta_endpoint(a));
    TH_CHECKF(rc == 0 && strstr(out, "takes effect at step 2"), "exit %d: %s", rc, out);
    host_step(a, 2, 0.6);
    TH_NEAR(ta_config(a)->qk_norm_power, 0.25, 0);
    /* bad usage is refused before anything is sent */
    rc = run_cmd(out, sizeof out, "set '%s' qk_norm_power", ta_endpoint(a));
    TH_CHECKF(rc == 2 && strstr(out, "NAME=VALUE"), "exit %d: %s", rc, out);
    ta_close(a);
    /* nobody listening: a clear error, not a hang */
    rc = run_cmd(out, sizeof out, "set ipc://%s/nobody.pub mode=exact --timeout 0.3", th_tmpdir());
    TH_CHECKF(rc == 1 && strstr(out, "no answer"), "exit %d: %s", rc, out);
}

static void test_tap_prints_one_line_per_message(void) {
    ta_agent *a = open_agent("tap");
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "'%s' tap '%s' --count 4 --duration 10", program(), ta_endpoint(a));
    FILE *p = popen(cmd, "r");
    TH_CHECK(p != NULL);
    double end = mono_s() + 5;
    while (ta_subscribers(a) < 1 && mono_s() < end) nng_msleep(10);
    TH_CHECK(ta_subscribers(a) >= 1);
    nng_msleep(50);
    char err[256];
    TH_CHECK(ta_run_begin(a, 4, "tiny-model", "euler", err, sizeof err) == 0);
    for (int k = 0; k < 3; k++) host_step(a, k, 1.0 - 0.2 * k);
    char line[4096];
    int n = 0, header = 0, steps = 0;
    while (fgets(line, sizeof line, p)) {
        n++;
        if (strstr(line, "type=header")) header++;
        if (strstr(line, "type=step")) steps++;
        TH_CHECKF(strstr(line, "seq=") == line, "line: %s", line);
    }
    int status = pclose(p);
    TH_CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    TH_EQ_INT(n, 4);
    TH_EQ_INT(header, 1);
    TH_EQ_INT(steps, 3);
    ta_close(a);
}

static void test_the_history_commands_read_a_recorded_run(void) {
    ta_agent *a = open_agent("hist");
    char db[512], out[65536];
    snprintf(db, sizeof db, "%s/hist.db", th_tmpdir());
    record_run(db, a);
    int rc = run_cmd(out, sizeof out, "runs --db '%s'", db);
    TH_CHECKF(rc == 0 && strstr(out, ta_run_id(a)) && strstr(out, "finished") && strstr(out, "6/6"), "%s", out);
    rc = run_cmd(out, sizeof out, "show 1 --db '%s'", db);
    TH_CHECKF(rc == 0 && strstr(out, "tiny-model") && strstr(out, "qk_norm_power=0.5"), "%s", out);
    /* the run id works as well as the number */
    rc = run_cmd(out, sizeof out, "show '%s' --db '%s'", ta_run_id(a), db);
    TH_CHECKF(rc == 0 && strstr(out, "2 double + 3 single"), "%s", out);
    rc = run_cmd(out, sizeof out, "export 1 --table layers --csv --db '%s'", db);
    int lines = 0;
    for (char *c = out; *c; c++) lines += *c == '\n';
    TH_CHECKF(rc == 0 && lines == 1 + 6 * LAYERS, "exit %d, %d lines", rc, lines);
    TH_CHECK(strncmp(out, "step,layer,", 11) == 0);
    rc = run_cmd(out, sizeof out, "export 1 --table knobs --db '%s'", db);
    TH_CHECKF(rc == 0 && strstr(out, "applied") && strstr(out, "qk_norm_power,0.5"), "%s", out);
    rc = run_cmd(out, sizeof out, "query 'SELECT count(*) AS n FROM steps' --db '%s'", db);
    TH_CHECKF(rc == 0 && strcmp(out, "n\n6\n") == 0, "%s", out);
    /* bad input: clear errors, distinct exit codes, nothing changed */
    rc = run_cmd(out, sizeof out, "query 'DELETE FROM steps' --db '%s'", db);
    TH_CHECKF(rc == 1 && strstr(out, "readonly"), "exit %d: %s", rc, out);
    rc = run_cmd(out, sizeof out, "query 'SELEC nonsense' --db '%s'", db);
    TH_CHECKF(rc == 1 && strstr(out, "syntax error"), "exit %d: %s", rc, out);
    rc = run_cmd(out, sizeof out, "export 1 --table bogus --db '%s'", db);
    TH_CHECKF(rc == 2 && strstr(out, "steps, layers, knobs or gaps"), "exit %d: %s", rc, out);
    rc = run_cmd(out, sizeof out, "show 99 --db '%s'", db);
    TH_CHECKF(rc == 1 && strstr(out, "no run '99'"), "exit %d: %s", rc, out);
    rc = run_cmd(out, sizeof out, "runs --limit -3 --db '%s'", db);
    TH_CHECKF(rc == 2 && strstr(out, "--limit"), "exit %d: %s", rc, out);
    rc = run_cmd(out, sizeof out, "runs --db '%s/absent.db'", th_tmpdir());
    TH_CHECKF(rc == 1 && strstr(out, "no database"), "exit %d: %s", rc, out);
    rc = run_cmd(out, sizeof out, "show 1 --db /etc/passwd");
    TH_CHECKF(rc == 1 && strstr(out, "not a SQLite database"), "exit %d: %s", rc, out);
    char fresh[600];
    snprintf(fresh, sizeof fresh, "%s/never.db", th_tmpdir());
    rc = run_cmd(out, sizeof out, "record not-a-url --db '%s'", fresh);
    struct stat sb;
    TH_CHECKF(rc == 2 && strstr(out, "unsupported URL") && stat(fresh, &sb) != 0, "exit %d: %s", rc, out);
    rc = run_cmd(out, sizeof out, "tap");
    TH_CHECKF(rc == 2 && strstr(out, "no URL"), "exit %d: %s", rc, out);
    sqlite3 *d;
    TH_CHECK(sqlite3_open(db, &d) == SQLITE_OK);
    TH_EQ_INT(one_int(d, "SELECT count(*) FROM steps"), 6);
    sqlite3_close(d);
    ta_close(a);
}

static pid_t spawn_recorder(const char *url, const char *db) {
    const char *bin = program();
    pid_t pid = fork();
    TH_CHECK(pid >= 0);
    if (pid == 0) {
        freopen("/dev/null", "w", stderr);
        execl(bin, bin, "record", url, "--db", db, "--runs", "1", (char *)NULL);
        _exit(127);
    }
    return pid;
}

static void wait_subscribed(ta_agent *a) {
    double end = mono_s() + 5;
    while (ta_subscribers(a) < 1 && mono_s() < end) nng_msleep(10);
    TH_CHECK(ta_subscribers(a) >= 1);
    nng_msleep(50);
}

static void test_kill_9_of_taylorscope_record_then_restart_continues_the_run(void) {
    ta_agent *a = open_agent("kill");
    char db_path[512], err[256];
    snprintf(db_path, sizeof db_path, "%s/kill.db", th_tmpdir());
    pid_t rec = spawn_recorder(ta_endpoint(a), db_path);
    wait_subscribed(a);
    TH_CHECK(ta_run_begin(a, 20, "tiny-model", "euler", err, sizeof err) == 0);
    int k = 0;
    for (; k < 8; k++) {
        host_step(a, k, 1.0 - k / 20.0);
        nng_msleep(5);
    }
    sqlite3 *db;
    TH_CHECK(sqlite3_open_v2(db_path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK);
    sqlite3_busy_timeout(db, 2000);
    double end = mono_s() + 5;
    while (one_int(db, "SELECT count(*) FROM steps") < 4 && mono_s() < end) nng_msleep(10);
    sqlite3_close(db);
    for (; k < 10; k++) host_step(a, k, 1.0 - k / 20.0);
    kill(rec, SIGKILL);
    int status;
    waitpid(rec, &status, 0);
    TH_CHECK(WIFSIGNALED(status));
    /* consistent, whole steps only, the run still running */
    TH_CHECK(sqlite3_open(db_path, &db) == SQLITE_OK);
    TH_EQ_INT(one_int(db, "SELECT count(*) FROM pragma_integrity_check WHERE integrity_check = 'ok'"), 1);
    long long committed = one_int(db, "SELECT count(*) FROM steps");
    TH_CHECKF(committed >= 4, "%lld steps committed", committed);
    TH_EQ_INT(one_int(db, "SELECT count(*) FROM layers"), committed * LAYERS);
    TH_EQ_INT(one_int(db, "SELECT status = 'running' FROM runs"), 1);
    sqlite3_close(db);
    for (; k < 14; k++) host_step(a, k, 1.0 - k / 20.0); /* nobody records these */
    rec = spawn_recorder(ta_endpoint(a), db_path);
    wait_subscribed(a);
    for (; k < 20; k++) host_step(a, k, 1.0 - k / 20.0);
    TH_CHECK(ta_run_end(a, TA_RUN_FINISHED, "") == 0);
    /* --runs 1: the recorder exits once the run ended */
    end = mono_s() + 10;
    int done = 0;
    while (!done && mono_s() < end) {
        done = waitpid(rec, &status, WNOHANG) == rec;
        if (!done) nng_msleep(20);
    }
    if (!done) kill(rec, SIGKILL), waitpid(rec, &status, 0);
    TH_CHECK(done && WIFEXITED(status) && WEXITSTATUS(status) == 0);
    TH_CHECK(sqlite3_open(db_path, &db) == SQLITE_OK);
    TH_EQ_INT(one_int(db, "SELECT count(*) FROM runs"), 1);
    char sql[256];
    snprintf(sql, sizeof sql, "SELECT status = 'finished' AND agent_run_id = '%s' FROM runs", ta_run_id(a));
    TH_EQ_INT(one_int(db, sql), 1);
    TH_EQ_INT(one_int(db, "SELECT count(*) FROM steps WHERE step BETWEEN 0 AND 19"), 20);
    TH_EQ_INT(one_int(db, "SELECT count(*) FROM layers"), 20 * LAYERS);
    TH_CHECK(one_int(db, "SELECT count(*) FROM gaps WHERE recovered = 1") >= 1);
    TH_EQ_INT(one_int(db, "SELECT count(*) FROM gaps WHERE recovered = 0"), 0);
    TH_EQ_INT(one_int(db, "SELECT count(*) FROM pragma_integrity_check WHERE integrity_check = 'ok'"), 1);
    sqlite3_close(db);
    ta_close(a);
}

static const th_test tests[] = {
    TH_TEST(test_a_real_agent_run_is_recorded_end_to_end),
    TH_TEST(test_set_out_of_range_prints_the_agents_error_and_changes_nothing),
    TH_TEST(test_tap_prints_one_line_per_message),
    TH_TEST(test_kill_9_of_taylorscope_record_then_restart_continues_the_run),
    TH_TEST(test_the_history_commands_read_a_recorded_run),
    {0},
};

int main(int argc, char **argv) { return th_main(tests, argc, argv); }

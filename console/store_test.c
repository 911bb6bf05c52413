/* store_test.c -- the history store: migrations, foreign and newer files,
 * the NaN / Inf / not-reported encoding, deduplication, run lookup. */
#include "store.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"

static char *path_in_tmp(const char *name) {
    static char buf[4][512];
    static int k;
    char *p = buf[k++ % 4];
    snprintf(p, 512, "%s/%s", th_tmpdir(), name);
    return p;
}

static long long one_int(sqlite3 *db, const char *sql) {
    sqlite3_stmt *st = NULL;
    long long v = -12345;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return v;
}

static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *p = malloc((size_t)n + 1);
    *len = fread(p, 1, (size_t)n, f);
    fclose(f);
    return p;
}

static int file_exists(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0;
}

static tc_store *open_ok(const char *path, tc_store_mode mode) {
    tc_store *s = NULL;
    char err[512];
    int rc = tc_store_open(path, mode, &s, err, sizeof err);
    TH_CHECKF(rc == 0 && s, "open %s: %s", path, err);
    return s;
}

static void fake_header(tp_header *h) {
    memset(h, 0, sizeof *h);
    snprintf(h->agent_id, sizeof h->agent_id, "testhost:42");
    snprintf(h->agent_version, sizeof h->agent_version, "0.1.0");
    snprintf(h->model_name, sizeof h->model_name, "flux1-test");
    snprintf(h->sampler, sizeof h->sampler, "euler");
    snprintf(h->backend, sizeof h->backend, "cpu");
    snprintf(h->model.name, sizeof h->model.name, "flux1");
    h->model.heads = 24;
    h->model.head_dim = 128;
    h->model.n_double = 19;
    h->model.n_single = 38;
    h->model.text_tokens = 512;
    h->model.grid_h = h->model.grid_w = 64;
    h->total_steps = 4;
    h->started_ns = 1700000000000000000LL;
    tk_config_defaults(&h->initial);
    h->initial.qk_norm_power = 0.5;
    h->current = h->initial;
    h->config_version = 1;
    h->last_step = -1;
}

static void fake_step(tp_step *st, tp_layer_row *rows, int n_layers, int step) {
    memset(st, 0, sizeof *st);
    st->step = step;
    st->sigma = 1.0 - 0.1 * step;
    st->wall_ms = 10 + step;
    st->attn_ms = 5;
    st->config_version = 1;
    st->calls = n_layers;
    st->n_taylor = n_layers - 1;
    st->n_fallback = 1;
    st->reason_counts[TK_REASON_DENOMINATOR_TOO_SMALL] = 1;
    st->have = TP_HAVE_QUALITY | TP_HAVE_DENOMS | TP_HAVE_QK | TP_HAVE_TIME;
    st->quality_raw_mean = 0.01 * (step + 1);
    st->den_min = 0.5;
    st->window = -1;
    st->n_layers = n_layers;
    st->layers = rows;
    for (int l = 0; l < n_layers; l++) {
        memset(&rows[l], 0, sizeof rows[l]);
        rows[l].layer = l;
        rows[l].calls = 1;
        rows[l].path = TK_PATH_TAYLOR;
        rows[l].have = TP_HAVE_QUALITY | TP_HAVE_DENOMS;
        rows[l].quality_raw_mean = 0.001 * l + step;
        rows[l].den_min = 1.0 / (l + 1);
        rows[l].window = -1;
        rows[l].R = 6545;
    }
}

static int64_t add_run(tc_store *s, const char *id) {
    tp_header h;
    fake_header(&h);
    int64_t run = 0;
    uint64_t last = 99;
    int created = 0;
    char err[512];
    TH_CHECKF(tc_store_run_upsert(s, id, "ipc:///tmp/x.pub", &h, 1, &run, &last, &created, err, sizeof err) == 0,
              "%s", err);
    TH_CHECK(created);
    TH_EQ_INT(last, 0);
    return run;
}

/* ---- migrations ---------------------------------------------------------- */

static void test_a_new_file_gets_every_migration_and_the_application_id(void) {
    const char *p = path_in_tmp("sub/dir/new.db");
    tc_store *s = open_ok(p, TC_STORE_WRITE);
    TH_EQ_INT(tc_store_schema_version(s), tc_store_latest_version());
    TH_CHECK(tc_store_latest_version() >= 2);
    TH_EQ_INT(one_int(tc_store_db(s), "PRAGMA application_id"), TC_APPLICATION_ID);
    TH_EQ_INT(one_int(tc_store_db(s), "PRAGMA user_version"), tc_store_latest_version());
    sqlite3_stmt *st = NULL;
    sqlite3_prepare_v2(tc_store_db(s), "PRAGMA journal_mode", -1, &st, NULL);
    TH_CHECK(sqlite3_step(st) == SQLITE_ROW);
    TH_EQ_STR((const char *)sqlite3_column_text(st, 0), "wal");
    sqlite3_finalize(st);
    TH_EQ_INT(one_int(tc_store_db(s), "SELECT count(*) FROM sqlite_master WHERE name IN "
                                      "('runs','steps','layers','fallbacks','knob_events','knob_changes','gaps','run_overview')"),
              8);
    TH_CHECK(tc_store_warning(s)[0] == 0);
    tc_store_close(s);
    /* opening again applies nothing and changes nothing */
    s = open_ok(p, TC_STORE_WRITE);
    TH_EQ_INT(tc_store_schema_version(s), tc_store_latest_version());
    tc_store_close(s);
}

static void test_every_earlier_version_migrates_to_the_latest_keeping_its_runs(void) {
    for (int v = 0; v < tc_store_latest_version(); v++) {
        char name[64], err[512];
        snprintf(name, sizeof name, "v%d.db", v);
        const char *p = path_in_tmp(name);
        TH_CHECKF(tc_store_create_at_version(p, v, err, sizeof err) == 0, "v%d: %s", v, err);
        if (v >= 1) {
            sqlite3 *db = NULL;
            sqlite3_open(p, &db);
            TH_EQ_INT(one_int(db, "PRAGMA user_version"), v);
            TH_CHECK(sqlite3_exec(db,
                                  "INSERT INTO runs(agent_run_id, status, last_seq) VALUES('old-run', 'finished', 7);"
                                  "INSERT INTO steps(run_id, step, seq, have) VALUES(1, 0, 2, 0);",
                                  NULL, NULL, NULL) == SQLITE_OK);
            sqlite3_close(db);
        }
        tc_store *s = open_ok(p, TC_STORE_WRITE);
        TH_EQ_INT(one_int(tc_store_db(s), "PRAGMA user_version"), tc_store_latest_version());
        TH_EQ_INT(one_int(tc_store_db(s), "PRAGMA application_id"), TC_APPLICATION_ID);
        /* version 2's column and view exist */
        TH_EQ_INT(one_int(tc_store_db(s), "SELECT count(*) FROM run_overview WHERE agent_dropped IS NULL"),
                  v >= 1 ? 1 : 0);
        if (v >= 1) {
            TH_EQ_INT(one_int(tc_store_db(s), "SELECT last_seq FROM runs WHERE agent_run_id='old-run'"), 7);
            TH_EQ_INT(one_int(tc_store_db(s), "SELECT steps_recorded FROM run_overview"), 1);
        }
        TH_EQ_INT(one_int(tc_store_db(s), "SELECT count(*) FROM pragma_integrity_check WHERE integrity_check='ok'"), 1);
        tc_store_close(s);
    }
}

static void check_refused_untouched(const char *p, const char *expect_in_err) {
    size_t len0 = 0, len1 = 0;
    char *before = read_file(p, &len0);
    TH_CHECK(before != NULL);
    tc_store *s = NULL;
    char err[512] = "";
    TH_CHECK(tc_store_open(p, TC_STORE_WRITE, &s, err, sizeof err) != 0);
    TH_CHECK(s == NULL);
    TH_CHECKF(strstr(err, expect_in_err) != NULL, "error was: %s", err);
    TH_CHECKF(strstr(err, p) != NULL, "error does not name the file: %s", err);
    TH_CHECK(tc_store_open(p, TC_STORE_READ, &s, err, sizeof err) != 0);
    char *after = read_file(p, &len1);
    TH_CHECK(len0 == len1 && memcmp(before, after, len0) == 0);
    char wal[600];
    snprintf(wal, sizeof wal, "%s-wal", p);
    TH_CHECK(!file_exists(wal));
    free(before);
    free(after);
}

static void test_a_foreign_sqlite_file_is_refused_and_left_untouched(void) {
    const char *p = path_in_tmp("foreign.db");
    sqlite3 *db = NULL;
    sqlite3_open(p, &db);
    sqlite3_exec(db, "CREATE TABLE notes(x); INSERT INTO notes VALUES('mine');", NULL, NULL, NULL);
    sqlite3_close(db);
    check_refused_untouched(p, "not a taylorscope database");

    const char *q = path_in_tmp("other-app.db");
    sqlite3_open(q, &db);
    sqlite3_exec(db, "PRAGMA application_id = 305419896; CREATE TABLE runs(x);", NULL, NULL, NULL);
    sqlite3_close(db);
    check_refused_untouched(q, "0x12345678");
}

static void test_a_file_that_is_not_sqlite_is_refused_and_left_untouched(void) {
    const char *p = path_in_tmp("notes.txt");
    FILE *f = fopen(p, "w");
    for (int i = 0; i < 200; i++) fprintf(f, "line %d of somebody's notes, not a database\n", i);
    fclose(f);
    check_refused_untouched(p, "not a SQLite database");
}

static void test_a_newer_schema_opens_read_only_with_a_warning(void) {
    const char *p = path_in_tmp("newer.db");
    char err[512];
    TH_CHECK(tc_store_create_at_version(p, tc_store_latest_version(), err, sizeof err) == 0);
    sqlite3 *db = NULL;
    sqlite3_open(p, &db);
    sqlite3_exec(db, "PRAGMA user_version = 99; INSERT INTO runs(agent_run_id) VALUES('future');", NULL, NULL, NULL);
    sqlite3_close(db);
    tc_store *s = open_ok(p, TC_STORE_WRITE);
    TH_CHECK(tc_store_read_only(s));
    TH_CHECKF(strstr(tc_store_warning(s), "newer") && strstr(tc_store_warning(s), "read-only"), "warning: %s",
              tc_store_warning(s));
    /* reading works, writing is refused with a clear message */
    TH_EQ_INT(one_int(tc_store_db(s), "SELECT count(*) FROM runs"), 1);
    int64_t run;
    uint64_t last;
    TH_CHECK(tc_store_run_upsert(s, "r2", "u", NULL, 1, &run, &last, NULL, err, sizeof err) != 0);
    TH_CHECKF(strstr(err, "read-only") != NULL, "%s", err);
    tc_store_close(s);
    sqlite3_open(p, &db);
    TH_EQ_INT(one_int(db, "PRAGMA user_version"), 99);
    TH_EQ_INT(one_int(db, "SELECT count(*) FROM runs"), 1);
    sqlite3_close(db);
}

static void test_reading_a_missing_or_empty_file_creates_nothing(void) {
    const char *p = path_in_tmp("absent.db");
    tc_store *s = NULL;
    char err[512];
    TH_CHECK(tc_store_open(p, TC_STORE_READ, &s, err, sizeof err) != 0);
    TH_CHECKF(strstr(err, "no database") != NULL, "%s", err);
    TH_CHECK(!file_exists(p));
    const char *q = path_in_tmp("empty.db");
    FILE *f = fopen(q, "w");
    fclose(f);
    TH_CHECK(tc_store_open(q, TC_STORE_READ, &s, err, sizeof err) != 0);
    TH_CHECKF(strstr(err, "empty") != NULL, "%s", err);
    struct stat sb;
    TH_CHECK(stat(q, &sb) == 0 && sb.st_size == 0);
    /* recording into it is fine */
    s = open_ok(q, TC_STORE_WRITE);
    TH_EQ_INT(tc_store_schema_version(s), tc_store_latest_version());
    tc_store_close(s);
}

/* ---- values ------------------------------------------------------------- */

static void test_nan_inf_and_not_reported_are_kept_apart(void) {
    tc_store *s = open_ok(path_in_tmp("values.db"), TC_STORE_WRITE);
    int64_t run = add_run(s, "run-values");
    tp_step st;
    tp_layer_row rows[3];
    fake_step(&st, rows, 3, 0);
    st.den_min = NAN;
    st.qk_max = INFINITY;
    st.cos_min = -INFINITY;
    st.quality_raw_p50 = 0.0;               /* a reported zero */
    st.have &= ~(unsigned)TP_HAVE_WINDOW;   /* window mass not reported */
    st.window_mass_mean = 0.75;             /* ignored: not reported */
    rows[1].quality_eff_max = NAN;
    rows[2].have = 0;                       /* nothing reported */
    char err[512];
    int stored = 0;
    TH_CHECKF(tc_store_add_step(s, run, 2, &st, 5, 2, &stored, err, sizeof err) == 0, "%s", err);
    TH_CHECK(stored);
    sqlite3 *db = tc_store_db(s);
    TH_EQ_INT(one_int(db, "SELECT den_min IS NULL AND instr(nan_cols, ',den_min,') > 0 FROM steps"), 1);
    TH_EQ_INT(one_int(db, "SELECT qk_max > 1e308 FROM steps"), 1);
    TH_EQ_INT(one_int(db, "SELECT cos_min < -1e308 FROM steps"), 1);
    TH_EQ_INT(one_int(db, "SELECT quality_raw_p50 = 0 AND quality_raw_p50 IS NOT NULL FROM steps"), 1);
    TH_EQ_INT(one_int(db, "SELECT window_mass_mean IS NULL AND (have & 8) = 0 AND "
                          "coalesce(instr(nan_cols, 'window_mass'), 0) = 0 FROM steps"),
              1);
    TH_EQ_INT(one_int(db, "SELECT quality_eff_max IS NULL AND nan_cols = ',quality_eff_max,' FROM layers WHERE layer=1"),
              1);
    TH_EQ_INT(one_int(db, "SELECT quality_raw_mean IS NULL AND den_min IS NULL AND nan_cols IS NULL AND have = 0 "
                          "FROM layers WHERE layer=2"),
              1);
    TH_EQ_INT(one_int(db, "SELECT count(*) FROM fallbacks WHERE reason='denominator_too_small' AND count=1"), 1);

    /* the text a CSV export shows */
    sqlite3_stmt *q = NULL;
    TH_CHECK(sqlite3_prepare_v2(db, "SELECT den_min, qk_max, cos_min, window_mass_mean, quality_raw_p50, nan_cols "
                                    "FROM steps", -1, &q, NULL) == SQLITE_OK);
    TH_CHECK(sqlite3_step(q) == SQLITE_ROW);
    const char *nan = (const char *)sqlite3_column_text(q, 5);
    char b[64];
    TH_EQ_STR(tc_cell_text(q, 0, nan, b, sizeof b), "nan");
    TH_EQ_STR(tc_cell_text(q, 1, nan, b, sizeof b), "inf");
    TH_EQ_STR(tc_cell_text(q, 2, nan, b, sizeof b), "-inf");
    TH_EQ_STR(tc_cell_text(q, 3, nan, b, sizeof b), "");
    TH_EQ_STR(tc_cell_text(q, 4, nan, b, sizeof b), "0");
    sqlite3_finalize(q);
    tc_store_close(s);
}

static void test_a_replayed_step_is_stored_once(void) {
    tc_store *s = open_ok(path_in_tmp("dup.db"), TC_STORE_WRITE);
    int64_t run = add_run(s, "run-dup");
    tp_step st;
    tp_layer_row rows[57];
    fake_step(&st, rows, 57, 3);
    char err[512];
    int stored = 0;
    TH_CHECK(tc_store_add_step(s, run, 5, &st, 1, 5, &stored, err, sizeof err) == 0 && stored);
    TH_CHECK(tc_store_add_step(s, run, 5, &st, 2, 0, &stored, err, sizeof err) == 0);
    TH_EQ_INT(stored, 0);
    TH_EQ_INT(one_int(tc_store_db(s), "SELECT count(*) FROM steps"), 1);
    TH_EQ_INT(one_int(tc_store_db(s), "SELECT count(*) FROM layers"), 57);
    TH_EQ_INT(one_int(tc_store_db(s), "SELECT count(*) FROM fallbacks"), 1);
    TH_EQ_INT(one_int(tc_store_db(s), "SELECT last_seq FROM runs"), 5);
    TH_EQ_INT(one_int(tc_store_db(s), "SELECT last_step FROM runs"), 3);
    tc_store_close(s);
}

static void test_knob_events_keep_their_changes_and_errors(void) {
    tc_store *s = open_ok(path_in_tmp("knobs.db"), TC_STORE_WRITE);
    int64_t run = add_run(s, "run-knobs");
    tp_knob_change ch[2];
    memset(ch, 0, sizeof ch);
    snprintf(ch[0].name, sizeof ch[0].name, "qk_norm_power");
    snprintf(ch[0].value, sizeof ch[0].value, "0.75");
    snprintf(ch[0].old_value, sizeof ch[0].old_value, "0.5");
    snprintf(ch[1].name, sizeof ch[1].name, "mode");
    snprintf(ch[1].value, sizeof ch[1].value, "hybrid");
    tp_knob_event ev;
    memset(&ev, 0, sizeof ev);
    snprintf(ev.request_id, sizeof ev.request_id, "req-1");
    snprintf(ev.origin, sizeof ev.origin, "cli");
    ev.status = TP_KNOB_APPLIED;
    ev.config_version = 2;
    ev.effective_step = 3;
    ev.n_changes = 2;
    ev.changes = ch;
    char err[512];
    TH_CHECKF(tc_store_add_knob_event(s, run, 9, 100, &ev, 1, 0, err, sizeof err) == 0, "%s", err);
    TH_CHECK(tc_store_add_knob_event(s, run, 9, 100, &ev, 1, 0, err, sizeof err) == 0); /* duplicate */
    ev.status = TP_KNOB_REJECTED;
    ev.n_changes = 1;
    snprintf(ev.error, sizeof ev.error, "qk_norm_power: 9 is out of range [0, 4]");
    TH_CHECK(tc_store_add_knob_event(s, run, 10, 101, &ev, 1, 0, err, sizeof err) == 0);
    sqlite3 *db = tc_store_db(s);
    TH_EQ_INT(one_int(db, "SELECT count(*) FROM knob_events"), 2);
    TH_EQ_INT(one_int(db, "SELECT count(*) FROM knob_changes"), 3);
    TH_EQ_INT(one_int(db, "SELECT effective_step FROM knob_events WHERE status='applied' AND request_id='req-1'"), 3);
    TH_EQ_INT(one_int(db, "SELECT count(*) FROM knob_events WHERE status='rejected' AND error LIKE '%out of range%'"),
              1);
    TH_EQ_INT(one_int(db, "SELECT count(*) FROM knob_changes c JOIN knob_events e ON e.id = c.event_id "
                          "WHERE e.status = 'applied' AND c.name='qk_norm_power' AND c.value='0.75' AND c.old_value='0.5'"), 1);
    tc_store_close(s);
}

static void test_run_status_moves_from_running_to_lost_and_back_and_ends(void) {
    tc_store *s = open_ok(path_in_tmp("status.db"), TC_STORE_WRITE);
    int64_t run = add_run(s, "run-status");
    char err[512];
    sqlite3 *db = tc_store_db(s);
    TH_CHECK(tc_store_mark_lost(s, run, "silent", 10, err, sizeof err) == 0);
    TH_EQ_INT(one_int(db, "SELECT status='lost' FROM runs"), 1);
    TH_CHECK(tc_store_touch(s, run, 11, 4, 17, err, sizeof err) == 0);
    TH_EQ_INT(one_int(db, "SELECT status='running' AND agent_dropped=17 AND last_seq=4 FROM runs"), 1);
    tp_run_end end;
    memset(&end, 0, sizeof end);
    snprintf(end.status, sizeof end.status, "failed");
    snprintf(end.message, sizeof end.message, "out of memory at step 3");
    end.steps_done = 3;
    TH_CHECK(tc_store_end_run(s, run, &end, 12, 5, err, sizeof err) == 0);
    TH_EQ_INT(one_int(db, "SELECT status='failed' AND steps_done=3 AND status_message LIKE 'out of memory%' FROM runs"),
              1);
    /* an ended run is never marked lost */
    TH_CHECK(tc_store_mark_lost(s, run, "silent", 13, err, sizeof err) == 0);
    TH_EQ_INT(one_int(db, "SELECT status='failed' FROM runs"), 1);
    /* the indexes exist once a run ended */
    TH_EQ_INT(one_int(db, "SELECT count(*) FROM sqlite_master WHERE type='index' AND name='layers_by_run_layer'"), 1);
    tc_store_close(s);
}

static void test_a_run_is_found_by_number_run_id_or_prefix(void) {
    tc_store *s = open_ok(path_in_tmp("find.db"), TC_STORE_WRITE);
    int64_t a = add_run(s, "abc-123");
    int64_t b = add_run(s, "abd-456");
    int64_t got = 0;
    char err[512];
    TH_CHECK(tc_store_find_run(s, "2", &got, err, sizeof err) == 0 && got == b);
    TH_CHECK(tc_store_find_run(s, "abc-123", &got, err, sizeof err) == 0 && got == a);
    TH_CHECK(tc_store_find_run(s, "abd", &got, err, sizeof err) == 0 && got == b);
    TH_CHECK(tc_store_find_run(s, "ab", &got, err, sizeof err) != 0);
    TH_CHECKF(strstr(err, "ambiguous") != NULL, "%s", err);
    TH_CHECK(tc_store_find_run(s, "zzz", &got, err, sizeof err) != 0);
    TH_CHECKF(strstr(err, "no run 'zzz'") != NULL, "%s", err);
    TH_CHECK(tc_store_find_run(s, "77", &got, err, sizeof err) != 0);
    tc_store_close(s);
}

static void test_the_default_path_follows_the_environment(void) {
    char p[1024], err[256];
    setenv("TAYLORSCOPE_DB", "/x/y.db", 1);
    TH_CHECK(tc_default_db_path(p, sizeof p, err, sizeof err) == 0);
    TH_EQ_STR(p, "/x/y.db");
    unsetenv("TAYLORSCOPE_DB");
    setenv("XDG_DATA_HOME", "/data", 1);
    TH_CHECK(tc_default_db_path(p, sizeof p, err, sizeof err) == 0);
    TH_EQ_STR(p, "/data/taylorscope/runs.db");
    unsetenv("XDG_DATA_HOME");
    setenv("HOME", "/home/u", 1);
    TH_CHECK(tc_default_db_path(p, sizeof p, err, sizeof err) == 0);
    TH_EQ_STR(p, "/home/u/.local/share/taylorscope/runs.db");
    unsetenv("HOME");
    TH_CHECK(tc_default_db_path(p, sizeof p, err, sizeof err) != 0);
}

static const th_test tests[] = {
    TH_TEST(test_a_new_file_gets_every_migration_and_the_application_id),
    TH_TEST(test_every_earlier_version_migrates_to_the_latest_keeping_its_runs),
    TH_TEST(test_a_foreign_sqlite_file_is_refused_and_left_untouched),
    TH_TEST(test_a_file_that_is_not_sqlite_is_refused_and_left_untouched),
    TH_TEST(test_a_newer_schema_opens_read_only_with_a_warning),
    TH_TEST(test_reading_a_missing_or_empty_file_creates_nothing),
    TH_TEST(test_nan_inf_and_not_reported_are_kept_apart),
    TH_TEST(test_a_replayed_step_is_stored_once),
    TH_TEST(test_knob_events_keep_their_changes_and_errors),
    TH_TEST(test_run_status_moves_from_running_to_lost_and_back_and_ends),
    TH_TEST(test_a_run_is_found_by_number_run_id_or_prefix),
    TH_TEST(test_the_default_path_follows_the_environment),
    {0},
};

int main(int argc, char **argv) { return th_main(tests, argc, argv); }

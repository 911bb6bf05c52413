/*
 * store_record.c -- the history store's speed goals (issue 7), each next to
 * a baseline measured in the same run:
 *   1. recording >= 100,000 layer rows/s from a synthetic publisher over ipc
 *      (baselines: the store alone, no network; decoding alone);
 *   2. "one layer over every step" of a 50-step x 57-layer run < 20 ms, in a
 *      history of 1,000 runs (baseline: the same query without the index);
 *   3. `taylorscope runs` over 1,000 recorded runs < 50 ms (the whole
 *      program; baseline: its query alone, in process).
 */
#include <math.h>
#include <pthread.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "recorder.h"
#include "store.h"
#include "synth_pub.h"

extern char **environ;

#define LAYERS 57

static double mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

static void die(const char *what, const char *err) {
    fprintf(stderr, "store_record: %s: %s\n", what, err);
    exit(1);
}

static void fill_step(tp_step *st, tp_layer_row *rows, int step) {
    memset(st, 0, sizeof *st);
    st->step = step;
    st->sigma = 1.0 / (1 + step);
    st->wall_ms = 20;
    st->attn_ms = 12;
    st->config_version = 1;
    st->calls = LAYERS;
    st->n_taylor = LAYERS;
    st->have = TP_HAVE_QUALITY | TP_HAVE_DENOMS | TP_HAVE_QK | TP_HAVE_TIME;
    st->quality_raw_mean = 0.01 * step;
    st->den_min = 0.1;
    st->window = -1;
    st->n_layers = LAYERS;
    st->layers = rows;
    for (int l = 0; l < LAYERS; l++) {
        memset(&rows[l], 0, sizeof rows[l]);
        rows[l].layer = l;
        rows[l].calls = 1;
        rows[l].path = TK_PATH_TAYLOR;
        rows[l].have = st->have;
        rows[l].quality_raw_mean = 0.001 * l + 0.01 * step;
        rows[l].quality_raw_max = rows[l].quality_eff_mean = rows[l].quality_eff_max = 0.01;
        rows[l].cos_min = 0.99;
        rows[l].den_min = 0.1;
        rows[l].qk_p99 = 3;
        rows[l].qk_max = 5;
        rows[l].q_norm_mean = rows[l].k_norm_mean = 11;
        rows[l].window = -1;
        rows[l].w = 1;
        rows[l].R = 6545;
        rows[l].attn_ms = 0.2;
    }
}

/* ---- 1. recording ------------------------------------------------------ */

typedef struct {
    tc_synth *s;
    int steps;
} pub_arg;

static void *publisher(void *p) {
    pub_arg *a = p;
    tc_synth_header(a->s, a->steps, LAYERS);
    for (int k = 0; k < a->steps; k++) tc_synth_step(a->s, k, LAYERS);
    tc_synth_run_end(a->s, "finished", a->steps);
    return NULL;
}

static double bench_store_alone(const char *dir, int steps) {
    char path[600], err[512];
    snprintf(path, sizeof path, "%s/alone.db", dir);
    tc_store *s;
    if (tc_store_open(path, TC_STORE_WRITE, &s, err, sizeof err)) die("open", err);
    int64_t run;
    uint64_t last;
    if (tc_store_run_upsert(s, "alone", "none", NULL, 0, &run, &last, NULL, err, sizeof err)) die("run", err);
    tp_step st;
    tp_layer_row rows[LAYERS];
    double t0 = mono_ms();
    for (int k = 0; k < steps; k++) {
        fill_step(&st, rows, k);
        if (tc_store_add_step(s, run, (uint64_t)k + 2, &st, 0, (uint64_t)k + 2, NULL, err, sizeof err))
            die("step", err);
    }
    double ms = mono_ms() - t0;
    tc_store_close(s);
    return (double)steps * LAYERS / (ms / 1e3);
}

static double bench_decode_alone(int steps) {
    tp_msg m;
    memset(&m, 0, sizeof m);
    m.type = TP_MSG_STEP;
    m.version = TP_PROTOCOL_VERSION;
    snprintf(m.run_id, sizeof m.run_id, "decode");
    tp_layer_row rows[LAYERS];
    fill_step(&m.u.step, rows, 3);
    tp_buf b = {0};
    char err[256];
    if (tp_encode_msg(&m, &b, err, sizeof err)) die("encode", err);
    double t0 = mono_ms();
    for (int k = 0; k < steps; k++) {
        tp_msg d;
        memset(&d, 0, sizeof d);
        if (tp_decode_msg(b.data, b.len, &d, err, sizeof err)) die("decode", err);
        tp_msg_free(&d);
    }
    double ms = mono_ms() - t0;
    tp_buf_free(&b);
    return (double)steps * LAYERS / (ms / 1e3);
}

static double bench_record(const char *dir, int steps, tc_recorder_stats *stats) {
    char path[600], url[700], err[512];
    snprintf(path, sizeof path, "%s/record.db", dir);
    snprintf(url, sizeof url, "ipc://%s/bench.pub", dir);
    tc_synth *s;
    if (tc_synth_open(url, "bench-run", 8192, &s, err, sizeof err)) die("synth", err);
    tc_store *store;
    tc_recorder *rec;
    tc_recorder_opts o;
    memset(&o, 0, sizeof o);
    o.recv_buffer = 8192;
    if (tc_store_open(path, TC_STORE_WRITE, &store, err, sizeof err)) die("open", err);
    if (tc_recorder_open(store, &o, &rec, err, sizeof err) || tc_recorder_add(rec, url, err, sizeof err))
        die("recorder", err);
    double until = mono_ms() + 5000;
    while (tc_synth_subscribers(s) < 1 && mono_ms() < until) tc_recorder_poll_once(rec, 10, err, sizeof err);
    pub_arg a = {s, steps};
    pthread_t t;
    double t0 = mono_ms();
    pthread_create(&t, NULL, publisher, &a);
    tc_recorder_stats st;
    do {
        if (tc_recorder_poll_once(rec, 50, err, sizeof err)) die("record", err);
        tc_recorder_get_stats(rec, &st);
    } while (st.runs_ended < 1 && mono_ms() - t0 < 120000);
    double ms = mono_ms() - t0;
    pthread_join(t, NULL);
    sqlite3_stmt *q;
    sqlite3_prepare_v2(tc_store_db(store), "SELECT count(*) FROM layers", -1, &q, NULL);
    long long rows = sqlite3_step(q) == SQLITE_ROW ? sqlite3_column_int64(q, 0) : 0;
    sqlite3_finalize(q);
    if (rows != (long long)steps * LAYERS)
        fprintf(stderr, "store_record: %lld layer rows recorded, expected %lld\n", rows, (long long)steps * LAYERS);
    *stats = st;
    tc_recorder_close(rec);
    tc_store_close(store);
    tc_synth_close(s);
    return (double)rows / (ms / 1e3);
}

/* ---- 2, 3. a history of 1,000 runs -------------------------------------- */

static void build_history(const char *path, int runs, int runs_with_layers, int steps) {
    char err[512];
    tc_store *s;
    if (tc_store_open(path, TC_STORE_WRITE, &s, err, sizeof err)) die("open", err);
    tp_step st;
    tp_layer_row rows[LAYERS];
    tp_run_end end;
    memset(&end, 0, sizeof end);
    snprintf(end.status, sizeof end.status, "finished");
    end.steps_done = steps;
    for (int r = 0; r < runs; r++) {
        char id[64];
        snprintf(id, sizeof id, "hist-%05d", r);
        int64_t run;
        uint64_t last;
        if (tc_store_run_upsert(s, id, "ipc:///bench", NULL, 0, &run, &last, NULL, err, sizeof err)) die("run", err);
        for (int k = 0; k < steps; k++) {
            fill_step(&st, rows, k);
            if (r % (runs / runs_with_layers) != 0) st.n_layers = 0;
            if (tc_store_add_step(s, run, (uint64_t)k + 2, &st, 0, (uint64_t)k + 2, NULL, err, sizeof err))
                die("step", err);
        }
        if (tc_store_end_run(s, run, &end, 0, (uint64_t)steps + 2, err, sizeof err)) die("end", err);
    }
    tc_store_close(s);
}

static double time_layer_query(sqlite3 *db, int64_t run, int layer, int use_index, int *rows_out) {
    char sql[512];
    snprintf(sql, sizeof sql,
             "SELECT step, quality_raw_mean, quality_eff_mean, den_min, qk_p99, attn_ms FROM layers %s"
             " WHERE run_id = ?1 AND layer = ?2 ORDER BY step",
             use_index ? "" : "NOT INDEXED");
    double t0 = mono_ms();
    sqlite3_stmt *q;
    if (sqlite3_prepare_v2(db, sql, -1, &q, NULL) != SQLITE_OK) die("prepare", sqlite3_errmsg(db));
    sqlite3_bind_int64(q, 1, run);
    sqlite3_bind_int(q, 2, layer);
    int rows = 0;
    double sum = 0;
    while (sqlite3_step(q) == SQLITE_ROW) {
        sum += sqlite3_column_double(q, 1);
        rows++;
    }
    sqlite3_finalize(q);
    *rows_out = rows;
    return mono_ms() - t0 + 0 * sum;
}

static double time_runs_command(const char *bin, const char *db) {
    pid_t pid;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", 1 /* O_WRONLY */, 0);
    char *argv[] = {(char *)bin, "runs", "--db", (char *)db, NULL};
    double t0 = mono_ms();
    if (posix_spawn(&pid, bin, &fa, NULL, argv, environ) != 0) {
        posix_spawn_file_actions_destroy(&fa);
        return -1;
    }
    int status;
    waitpid(pid, &status, 0);
    double ms = mono_ms() - t0;
    posix_spawn_file_actions_destroy(&fa);
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? ms : -1;
}

static double time_runs_query(sqlite3 *db) {
    double t0 = mono_ms();
    sqlite3_stmt *q;
    sqlite3_prepare_v2(db,
                       "SELECT r.id, r.agent_run_id, r.status, r.model_name, r.backend,"
                       " (SELECT count(*) FROM steps s WHERE s.run_id = r.id), r.total_steps,"
                       " (SELECT count(*) FROM gaps g WHERE g.run_id = r.id AND g.recovered = 0), r.started_ns"
                       " FROM runs r ORDER BY r.id DESC",
                       -1, &q, NULL);
    long long n = 0;
    while (sqlite3_step(q) == SQLITE_ROW) n += sqlite3_column_int64(q, 5);
    sqlite3_finalize(q);
    return mono_ms() - t0 + 0 * (double)n;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(void) {
    char dir[] = "/tmp/store_bench.XXXXXX";
    if (!mkdtemp(dir)) die("mkdtemp", "failed");
    const int steps = 2000;
    printf("store_record: SQLite %s, %d-layer steps\n\n", sqlite3_libversion(), LAYERS);

    double decode = bench_decode_alone(steps);
    double alone = bench_store_alone(dir, steps);
    tc_recorder_stats st;
    double e2e = bench_record(dir, steps, &st);
    printf("%-52s %14s %14s\n", "recording (layer rows per second)", "measured", "goal");
    printf("%-52s %14.0f %14s\n", "  baseline: decoding alone (no network, no store)", decode, "-");
    printf("%-52s %14.0f %14s\n", "  baseline: the store alone (no network, no decode)", alone, "-");
    printf("%-52s %14.0f %14s  %s\n", "  recorder: synthetic publisher over ipc, end to end", e2e, ">= 100000",
           e2e >= 100000 ? "ok" : "MISSED");
    printf("    (%d steps x %d layers; %llu messages, %llu gaps, %llu replayed, %llu lost)\n\n", steps, LAYERS,
           (unsigned long long)st.messages, (unsigned long long)st.gaps, (unsigned long long)st.replayed,
           (unsigned long long)st.lost_messages);

    char hist[600];
    snprintf(hist, sizeof hist, "%s/history.db", dir);
    double t0 = mono_ms();
    build_history(hist, 1000, 100, 50);
    printf("history: 1000 runs x 50 steps, 100 of them with 57 layer rows per step (built in %.1f s)\n\n",
           (mono_ms() - t0) / 1e3);

    sqlite3 *db;
    sqlite3_open_v2(hist, &db, SQLITE_OPEN_READONLY, NULL);
    double with_idx[21], without_idx = 0;
    int rows = 0;
    /* runs.id 501 is one of those with layer rows (every 10th from 1) */
    for (int i = 0; i < 21; i++) with_idx[i] = time_layer_query(db, 501, 30 + i % 20, 1, &rows);
    int rows_noidx = 0;
    without_idx = time_layer_query(db, 501, 30, 0, &rows_noidx);
    double first = with_idx[0];
    qsort(with_idx, 21, sizeof with_idx[0], cmp_double);
    printf("%-52s %14s %14s\n", "one layer over every step (ms)", "measured", "goal");
    printf("%-52s %14.3f %14s\n", "  baseline: the same query without the index", without_idx, "-");
    printf("%-52s %14.3f %14s  %s\n", "  with the index built at run end (median of 21)", with_idx[10], "< 20",
           with_idx[10] < 20 ? "ok" : "MISSED");
    printf("%-52s %14.3f %14s\n", "  first query of the connection", first, "< 20");
    printf("    (%d rows returned)\n\n", rows);

    double q[5], c[5];
    for (int i = 0; i < 5; i++) q[i] = time_runs_query(db);
    sqlite3_close(db);
    const char *build = getenv("BUILD");
    char bin[600];
    snprintf(bin, sizeof bin, "%s/bin/taylorscope", build && *build ? build : "build");
    for (int i = 0; i < 5; i++) c[i] = time_runs_command(bin, hist);
    qsort(q, 5, sizeof q[0], cmp_double);
    qsort(c, 5, sizeof c[0], cmp_double);
    printf("%-52s %14s %14s\n", "runs over 1,000 recorded runs (ms)", "measured", "goal");
    printf("%-52s %14.3f %14s\n", "  baseline: its query alone, in process (median of 5)", q[2], "-");
    if (c[2] >= 0)
        printf("%-52s %14.3f %14s  %s\n", "  `taylorscope runs`, whole program (median of 5)", c[2], "< 50",
               c[2] < 50 ? "ok" : "MISSED");
    else
        printf("  `taylorscope runs`: could not run %s\n", bin);

    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "store_record: could not remove %s\n", dir);
    return 0;
}

/* cmd_runs.c -- `taylorscope runs`: the recorded runs, newest first. */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "cmd.h"
#include "store.h"

/* "2026-11-27 14:03:05" (UTC) or "-" */
static const char *utc_text(sqlite3_stmt *st, int col, char *buf, size_t len) {
    if (sqlite3_column_type(st, col) == SQLITE_NULL) return "-";
    time_t t = (time_t)(sqlite3_column_int64(st, col) / 1000000000);
    struct tm tm;
    if (!gmtime_r(&t, &tm) || !strftime(buf, len, "%Y-%m-%d %H:%M:%S", &tm)) return "-";
    return buf;
}

static const char *text_or(sqlite3_stmt *st, int col, const char *dflt) {
    const unsigned char *t = sqlite3_column_text(st, col);
    return t && *t ? (const char *)t : dflt;
}

int tc_cmd_runs(int argc, char **argv) {
    const char *db = NULL, *status = NULL, *limit_text = NULL;
    int csv = 0;
    for (int i = 1; i < argc;) {
        int r;
        if ((r = tc_opt(argc, argv, &i, "--db", &db)) || (r = tc_opt(argc, argv, &i, "--status", &status)) ||
            (r = tc_opt(argc, argv, &i, "--limit", &limit_text))) {
            if (r < 0) return tc_usage_error("runs", "%s needs a value", argv[i]);
            continue;
        }
        if (!strcmp(argv[i], "--csv")) {
            csv = 1;
            i++;
            continue;
        }
        return tc_usage_error("runs", "unexpected argument '%s'", argv[i]);
    }
    if (status && strcmp(status, "running") && strcmp(status, "finished") && strcmp(status, "failed") &&
        strcmp(status, "lost"))
        return tc_usage_error("runs", "--status must be running, finished, failed or lost, not '%s'",
                              status);
    int64_t limit = -1;
    if (limit_text && tc_parse_count(limit_text, &limit))
        return tc_usage_error("runs", "--limit must be a whole number >= 0, not '%s'", limit_text);

    tc_store *s;
    int rc = tc_open_history("runs", db, TC_STORE_READ, &s);
    if (rc) return rc;
    sqlite3_stmt *st = NULL;
    const char *sql =
        "SELECT r.id, r.agent_run_id, r.status, r.model_name, r.backend,"
        " (SELECT count(*) FROM steps s WHERE s.run_id = r.id), r.total_steps,"
        " (SELECT count(*) FROM gaps g WHERE g.run_id = r.id AND g.recovered = 0), r.started_ns,"
        " r.first_seen_ns"
        " FROM runs r WHERE ?1 IS NULL OR r.status = ?1 ORDER BY r.id DESC LIMIT ?2";
    if (sqlite3_prepare_v2(tc_store_db(s), sql, -1, &st, NULL) != SQLITE_OK) {
        rc = tc_fail("runs", "%s", sqlite3_errmsg(tc_store_db(s)));
        tc_store_close(s);
        return rc;
    }
    if (status) sqlite3_bind_text(st, 1, status, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, limit);
    if (csv)
        printf("id,agent_run_id,status,model,backend,steps_recorded,total_steps,gaps_unrecovered,started_utc\n");
    else
        printf("%5s  %-24s %-9s %-12s %-7s %-11s %5s  %s\n", "ID", "RUN ID", "STATUS", "MODEL", "BACKEND",
               "STEPS", "GAPS", "STARTED (UTC)");
    int step_rc, rows = 0;
    while ((step_rc = sqlite3_step(st)) == SQLITE_ROW) {
        char when[32], steps[32];
        const char *started = utc_text(st, sqlite3_column_type(st, 8) == SQLITE_NULL ? 9 : 8, when, sizeof when);
        if (sqlite3_column_type(st, 6) == SQLITE_NULL)
            snprintf(steps, sizeof steps, "%lld/?", (long long)sqlite3_column_int64(st, 5));
        else
            snprintf(steps, sizeof steps, "%lld/%lld", (long long)sqlite3_column_int64(st, 5),
                     (long long)sqlite3_column_int64(st, 6));
        if (csv) {
            printf("%lld,", (long long)sqlite3_column_int64(st, 0));
            tc_csv_field(stdout, text_or(st, 1, ""));
            printf(",%s,", text_or(st, 2, ""));
            tc_csv_field(stdout, text_or(st, 3, ""));
            printf(",%s,%lld,%s,%lld,%s\n", text_or(st, 4, ""), (long long)sqlite3_column_int64(st, 5),
                   text_or(st, 6, ""), (long long)sqlite3_column_int64(st, 7),
                   strcmp(started, "-") ? started : "");
        } else {
            printf("%5lld  %-24s %-9s %-12s %-7s %-11s %5lld  %s\n", (long long)sqlite3_column_int64(st, 0),
                   text_or(st, 1, "-"), text_or(st, 2, "-"), text_or(st, 3, "-"), text_or(st, 4, "-"), steps,
                   (long long)sqlite3_column_int64(st, 7), started);
        }
        rows++;
    }
    if (step_rc != SQLITE_DONE) rc = tc_fail("runs", "%s", sqlite3_errmsg(tc_store_db(s)));
    else if (!rows && !csv) printf("(no runs recorded in %s)\n", tc_store_path(s));
    sqlite3_finalize(st);
    tc_store_close(s);
    return rc;
}

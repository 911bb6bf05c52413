/* cmd_show.c -- `taylorscope show RUN`: one run in full: identity, shape,
 * knobs that differ from the defaults, knob events, gaps, steps. A figure
 * that was not reported prints n/a, a NaN prints nan. */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "cmd.h"
#include "store.h"

static const char *col_text(sqlite3_stmt *st, int i, const char *dflt) {
    const unsigned char *t = sqlite3_column_text(st, i);
    return t && *t ? (const char *)t : dflt;
}

/* A figure: n/a when not reported, nan, inf, or %g. */
static const char *figure(sqlite3_stmt *st, int i, const char *nan_cols, char *buf, size_t len) {
    tc_cell_text(st, i, nan_cols, buf, len);
    if (!buf[0]) return "n/a";
    if (sqlite3_column_type(st, i) == SQLITE_FLOAT) {
        double v = sqlite3_column_double(st, i);
        if (isfinite(v)) snprintf(buf, len, "%.4g", v);
    }
    return buf;
}

static int print_header(sqlite3 *db, int64_t run) {
    sqlite3_stmt *st = NULL;
    const char *sql =
        "SELECT id, agent_run_id, status, status_message, agent_id, agent_version, source_url,"
        " model_name, model_config, heads, head_dim, n_double, n_single, text_tokens, grid_h, grid_w,"
        " sampler, backend, total_steps, (SELECT count(*) FROM steps WHERE run_id = runs.id), last_step,"
        " started_ns, coalesce((SELECT max(config_version) FROM steps WHERE run_id = runs.id), config_version),"
        " agent_dropped, last_seq"
        " FROM runs WHERE id = ?1";
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) return 1;
    sqlite3_bind_int64(st, 1, run);
    if (sqlite3_step(st) != SQLITE_ROW) {
        sqlite3_finalize(st);
        return 1;
    }
    printf("run %lld  (agent run id %s)\n", (long long)sqlite3_column_int64(st, 0), col_text(st, 1, "?"));
    printf("  status    %s%s%s\n", col_text(st, 2, "?"), sqlite3_column_text(st, 3) ? ": " : "",
           col_text(st, 3, ""));
    printf("  agent     %s (agent %s), recorded from %s\n", col_text(st, 4, "unknown"), col_text(st, 5, "?"),
           col_text(st, 6, "?"));
    if (sqlite3_column_type(st, 9) != SQLITE_NULL)
        printf("  model     %s (%s: %d heads x %d, %d double + %d single blocks, %d text + %dx%d image tokens)\n",
               col_text(st, 7, "?"), col_text(st, 8, "?"), sqlite3_column_int(st, 9), sqlite3_column_int(st, 10),
               sqlite3_column_int(st, 11), sqlite3_column_int(st, 12), sqlite3_column_int(st, 13),
               sqlite3_column_int(st, 14), sqlite3_column_int(st, 15));
    else
        printf("  model     unknown (no run header received)\n");
    printf("  sampler   %s, backend %s, %s steps planned, %lld recorded, last step %s\n", col_text(st, 16, "?"),
           col_text(st, 17, "?"), col_text(st, 18, "?"), (long long)sqlite3_column_int64(st, 19),
           col_text(st, 20, "-"));
    if (sqlite3_column_type(st, 21) != SQLITE_NULL) {
        time_t t = (time_t)(sqlite3_column_int64(st, 21) / 1000000000);
        struct tm tm;
        char when[40] = "?";
        if (gmtime_r(&t, &tm)) strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S UTC", &tm);
        printf("  started   %s\n", when);
    }
    printf("  stream    %lld messages accounted for, knob version %s, agent dropped %s\n",
           (long long)sqlite3_column_int64(st, 24), col_text(st, 22, "?"), col_text(st, 23, "n/a"));
    sqlite3_finalize(st);
    return 0;
}

/* Initial knobs that differ from this build's defaults. */
static void print_knobs(sqlite3 *db, int64_t run) {
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db,
                           "SELECT j.key, j.value, j.type FROM runs, json_each(runs.initial_config) j"
                           " WHERE runs.id = ?1 AND json_valid(runs.initial_config)",
                           -1, &st, NULL) != SQLITE_OK)
        return;
    sqlite3_bind_int64(st, 1, run);
    tk_config dflt;
    tk_config_defaults(&dflt);
    int shown = 0, total = 0;
    printf("  knobs     ");
    while (sqlite3_step(st) == SQLITE_ROW) {
        const char *name = (const char *)sqlite3_column_text(st, 0);
        const char *value = col_text(st, 1, "");
        const char *type = col_text(st, 2, "");
        total++;
        const tk_knob *k = tk_knob_find(name);
        if (k) {
            char def[96];
            tk_config_format(&dflt, k, def, sizeof def);
            int same;
            if (!strcmp(type, "true") || !strcmp(type, "false"))
                same = (!strcmp(type, "true")) == (tk_config_get(&dflt, k) != 0);
            else if (!strcmp(type, "text"))
                same = !strcmp(value, def);
            else
                same = sqlite3_column_double(st, 1) == tk_config_get(&dflt, k);
            if (same) continue;
        }
        printf("%s%s=%s", shown ? " " : "", name, !strcmp(type, "true") || !strcmp(type, "false") ? type : value);
        shown++;
    }
    if (!total)
        printf("unknown (no run header received)\n");
    else if (!shown)
        printf("all %d at their defaults\n", total);
    else
        printf("   (initial, %d of %d differ from the defaults)\n", shown, total);
    sqlite3_finalize(st);
}

static void print_gaps(sqlite3 *db, int64_t run) {
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db,
                           "SELECT count(*), coalesce(sum(recovered), 0), coalesce(sum(missing), 0)"
                           " FROM gaps WHERE run_id = ?1",
                           -1, &st, NULL) != SQLITE_OK)
        return;
    sqlite3_bind_int64(st, 1, run);
    if (sqlite3_step(st) == SQLITE_ROW)
        printf("  gaps      %lld detected, %lld replayed in full, %lld messages lost for good\n",
               (long long)sqlite3_column_int64(st, 0), (long long)sqlite3_column_int64(st, 1),
               (long long)sqlite3_column_int64(st, 2));
    sqlite3_finalize(st);
}

static void print_fallbacks(sqlite3 *db, int64_t run) {
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db,
                           "SELECT reason, sum(count) AS n FROM fallbacks WHERE run_id = ?1"
                           " GROUP BY reason ORDER BY n DESC, reason",
                           -1, &st, NULL) != SQLITE_OK)
        return;
    sqlite3_bind_int64(st, 1, run);
    int n = 0;
    printf("  fallbacks ");
    while (sqlite3_step(st) == SQLITE_ROW)
        printf("%s%s %lld", n++ ? ", " : "", col_text(st, 0, "?"), (long long)sqlite3_column_int64(st, 1));
    printf("%s\n", n ? "" : "none");
    sqlite3_finalize(st);
}

static void print_knob_events(sqlite3 *db, int64_t run) {
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db,
                           "SELECT e.seq, e.status, e.origin, e.effective_step, e.config_version, e.error,"
                           " (SELECT group_concat(c.name || '=' || coalesce(c.value, '')"
                           "   || CASE WHEN c.old_value IS NOT NULL THEN ' (was ' || c.old_value || ')'"
                           "      ELSE '' END, ', ') FROM knob_changes c WHERE c.event_id = e.id)"
                           " FROM knob_events e WHERE e.run_id = ?1 ORDER BY e.seq",
                           -1, &st, NULL) != SQLITE_OK)
        return;
    sqlite3_bind_int64(st, 1, run);
    int n = 0;
    while (sqlite3_step(st) == SQLITE_ROW) {
        if (!n++) printf("\nknob events\n  %6s  %-9s %-8s %5s %7s  %s\n", "SEQ", "STATUS", "ORIGIN", "STEP",
                         "VERSION", "CHANGES");
        printf("  %6lld  %-9s %-8s %5s %7s  %s%s%s\n", (long long)sqlite3_column_int64(st, 0),
               col_text(st, 1, "?"), col_text(st, 2, "-"), col_text(st, 3, "-"), col_text(st, 4, "-"),
               col_text(st, 6, ""), sqlite3_column_text(st, 5) ? "  error: " : "", col_text(st, 5, ""));
    }
    if (!n) printf("\nknob events: none\n");
    sqlite3_finalize(st);
}

static void print_steps(sqlite3 *db, int64_t run) {
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db,
                           "SELECT step, sigma, wall_ms, attn_ms, n_exact, n_taylor, n_hybrid, n_fallback,"
                           " quality_raw_mean, quality_eff_mean, den_min, qk_p99, config_version, nan_cols"
                           " FROM steps WHERE run_id = ?1 ORDER BY step",
                           -1, &st, NULL) != SQLITE_OK)
        return;
    sqlite3_bind_int64(st, 1, run);
    int n = 0;
    char b[9][48];
    while (sqlite3_step(st) == SQLITE_ROW) {
        const char *nan = (const char *)sqlite3_column_text(st, 13);
        if (!n++)
            printf("\nsteps\n  %5s %9s %9s %9s %6s %6s %6s %6s %10s %10s %10s %9s %4s\n", "STEP", "SIGMA",
                   "WALL_MS", "ATTN_MS", "EXACT", "TAYLOR", "HYBRID", "FALLBK", "Q_RAW", "Q_EFF", "DEN_MIN",
                   "QK_P99", "KV");
        printf("  %5d %9s %9s %9s %6d %6d %6d %6d %10s %10s %10s %9s %4d\n", sqlite3_column_int(st, 0),
               figure(st, 1, nan, b[0], 48), figure(st, 2, nan, b[1], 48), figure(st, 3, nan, b[2], 48),
               sqlite3_column_int(st, 4), sqlite3_column_int(st, 5), sqlite3_column_int(st, 6),
               sqlite3_column_int(st, 7), figure(st, 8, nan, b[3], 48), figure(st, 9, nan, b[4], 48),
               figure(st, 10, nan, b[5], 48), figure(st, 11, nan, b[6], 48), sqlite3_column_int(st, 12));
    }
    if (!n) printf("\nsteps: none recorded\n");
    sqlite3_finalize(st);
}

int tc_cmd_show(int argc, char **argv) {
    const char *db = NULL, *run_spec = NULL;
    for (int i = 1; i < argc;) {
        int r;
        if ((r = tc_opt(argc, argv, &i, "--db", &db))) {
            if (r < 0) return tc_usage_error("show", "--db needs a file name");
            continue;
        }
        if (argv[i][0] == '-') return tc_usage_error("show", "unknown option '%s'", argv[i]);
        if (run_spec) return tc_usage_error("show", "one RUN expected, got also '%s'", argv[i]);
        run_spec = argv[i++];
    }
    if (!run_spec) return tc_usage_error("show", "no RUN given (see `taylorscope runs`)");
    tc_store *s;
    int rc = tc_open_history("show", db, TC_STORE_READ, &s);
    if (rc) return rc;
    char err[512];
    int64_t run;
    if (tc_store_find_run(s, run_spec, &run, err, sizeof err)) {
        rc = tc_fail("show", "%s", err);
    } else if (print_header(tc_store_db(s), run)) {
        rc = tc_fail("show", "%s", sqlite3_errmsg(tc_store_db(s)));
    } else {
        print_knobs(tc_store_db(s), run);
        print_gaps(tc_store_db(s), run);
        print_fallbacks(tc_store_db(s), run);
        print_knob_events(tc_store_db(s), run);
        print_steps(tc_store_db(s), run);
    }
    tc_store_close(s);
    return rc;
}

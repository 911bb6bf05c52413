/* cmd_export.c -- `taylorscope export RUN --table T --csv`: one table of a
 * run as CSV. NaN figures come back as "nan" (from nan_cols), infinities as
 * inf/-inf, figures that were not reported as empty fields. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "cmd.h"
#include "store.h"

typedef struct {
    const char *name;
    const char *sql; /* ?1 = runs.id */
} export_table;

static const export_table tables[] = {
    {"steps", "SELECT * FROM steps WHERE run_id = ?1 ORDER BY step"},
    {"layers", "SELECT * FROM layers WHERE run_id = ?1 ORDER BY step, layer, id"},
    {"knobs",
     "SELECT e.seq, e.t_ns, e.status, e.origin, e.request_id, e.config_version, e.effective_step,"
     " c.name, c.value, c.old_value, e.error"
     " FROM knob_events e LEFT JOIN knob_changes c ON c.event_id = e.id"
     " WHERE e.run_id = ?1 ORDER BY e.seq, c.name"},
    {"gaps",
     "SELECT from_seq, to_seq, detected_ns, recovered, missing FROM gaps WHERE run_id = ?1"
     " ORDER BY from_seq, id"},
};
#define NTABLES ((int)(sizeof tables / sizeof tables[0]))

/* Columns not worth a CSV field: the run (implied) and the NaN list (shown as nan). */
static int skipped(const char *col) {
    return !strcmp(col, "run_id") || !strcmp(col, "nan_cols") || !strcmp(col, "id");
}

int tc_cmd_export(int argc, char **argv) {
    const char *db = NULL, *table = NULL, *run_spec = NULL, *out_path = NULL;
    for (int i = 1; i < argc;) {
        int r;
        if ((r = tc_opt(argc, argv, &i, "--db", &db)) || (r = tc_opt(argc, argv, &i, "--table", &table)) ||
            (r = tc_opt(argc, argv, &i, "-o", &out_path))) {
            if (r < 0) return tc_usage_error("export", "%s needs a value", argv[i]);
            continue;
        }
        if (!strcmp(argv[i], "--csv")) {
            i++;
            continue;
        }
        if (argv[i][0] == '-') return tc_usage_error("export", "unknown option '%s'", argv[i]);
        if (run_spec) return tc_usage_error("export", "one RUN expected, got also '%s'", argv[i]);
        run_spec = argv[i++];
    }
    if (!run_spec) return tc_usage_error("export", "no RUN given");
    if (!table) return tc_usage_error("export", "--table steps|layers|knobs|gaps is required");
    const export_table *t = NULL;
    for (int i = 0; i < NTABLES; i++)
        if (!strcmp(tables[i].name, table)) t = &tables[i];
    if (!t) return tc_usage_error("export", "no table '%s': choose steps, layers, knobs or gaps", table);

    tc_store *s;
    int rc = tc_open_history("export", db, TC_STORE_READ, &s);
    if (rc) return rc;
    char err[512];
    int64_t run;
    sqlite3_stmt *st = NULL;
    FILE *out = stdout;
    if (tc_store_find_run(s, run_spec, &run, err, sizeof err)) {
        rc = tc_fail("export", "%s", err);
        goto done;
    }
    if (sqlite3_prepare_v2(tc_store_db(s), t->sql, -1, &st, NULL) != SQLITE_OK) {
        rc = tc_fail("export", "%s", sqlite3_errmsg(tc_store_db(s)));
        goto done;
    }
    sqlite3_bind_int64(st, 1, run);
    if (out_path && !(out = fopen(out_path, "w"))) {
        out = stdout;
        rc = tc_fail("export", "cannot write %s: %s", out_path, strerror(errno));
        goto done;
    }
    int n = sqlite3_column_count(st), nan_col = -1, first = 1;
    for (int i = 0; i < n; i++) {
        const char *name = sqlite3_column_name(st, i);
        if (!strcmp(name, "nan_cols")) nan_col = i;
        if (skipped(name)) continue;
        if (!first) fputc(',', out);
        tc_csv_field(out, name);
        first = 0;
    }
    fputc('\n', out);
    int step_rc;
    char cell[4096];
    while ((step_rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *nan = nan_col >= 0 ? (const char *)sqlite3_column_text(st, nan_col) : NULL;
        first = 1;
        for (int i = 0; i < n; i++) {
            if (skipped(sqlite3_column_name(st, i))) continue;
            if (!first) fputc(',', out);
            tc_csv_field(out, tc_cell_text(st, i, nan, cell, sizeof cell));
            first = 0;
        }
        fputc('\n', out);
    }
    if (step_rc != SQLITE_DONE) rc = tc_fail("export", "%s", sqlite3_errmsg(tc_store_db(s)));
done:
    if (out != stdout && fclose(out) != 0 && rc == TC_EXIT_OK)
        rc = tc_fail("export", "cannot write %s: %s", out_path, strerror(errno));
    sqlite3_finalize(st);
    tc_store_close(s);
    return rc;
}

/* cmd_query.c -- `taylorscope query SQL`: any SQL on a read-only connection.
 * A result column named nan_cols (steps, layers) is used to print NaN
 * figures as "nan" instead of empty. */
#include <stdio.h>
#include <string.h>

#include "cmd.h"
#include "store.h"

static void print_rows(sqlite3_stmt *st, int csv, int *printed_header) {
    int n = sqlite3_column_count(st), nan_col = -1;
    for (int i = 0; i < n; i++)
        if (!strcmp(sqlite3_column_name(st, i), "nan_cols")) nan_col = i;
    if (!*printed_header) {
        for (int i = 0; i < n; i++) {
            if (i) fputc(csv ? ',' : '\t', stdout);
            if (csv)
                tc_csv_field(stdout, sqlite3_column_name(st, i));
            else
                fputs(sqlite3_column_name(st, i), stdout);
        }
        fputc('\n', stdout);
        *printed_header = 1;
    }
    const unsigned char *nan = nan_col >= 0 ? sqlite3_column_text(st, nan_col) : NULL;
    char cell[4096];
    for (int i = 0; i < n; i++) {
        if (i) fputc(csv ? ',' : '\t', stdout);
        tc_cell_text(st, i, (const char *)nan, cell, sizeof cell);
        if (csv)
            tc_csv_field(stdout, cell);
        else
            fputs(cell, stdout);
    }
    fputc('\n', stdout);
}

int tc_cmd_query(int argc, char **argv) {
    const char *db = NULL, *sql = NULL;
    int csv = 0;
    for (int i = 1; i < argc;) {
        int r;
        if ((r = tc_opt(argc, argv, &i, "--db", &db))) {
            if (r < 0) return tc_usage_error("query", "--db needs a file name");
            continue;
        }
        if (!strcmp(argv[i], "--csv")) {
            csv = 1;
            i++;
            continue;
        }
        if (!strcmp(argv[i], "--")) {
            if (i + 1 < argc && !sql) sql = argv[i + 1];
            i += 2;
            continue;
        }
        if (argv[i][0] == '-' && argv[i][1] == '-')
            return tc_usage_error("query", "unknown option '%s'", argv[i]);
        if (sql) return tc_usage_error("query", "one SQL text expected (quote it), got also '%s'", argv[i]);
        sql = argv[i++];
    }
    if (!sql || !*sql) return tc_usage_error("query", "no SQL given");

    /* the store checks whose file it is (and migrates it), then a separate
     * connection that cannot write runs the user's SQL */
    tc_store *s;
    int rc = tc_open_history("query", db, TC_STORE_READ, &s);
    if (rc) return rc;
    sqlite3 *ro = NULL;
    if (sqlite3_open_v2(tc_store_path(s), &ro, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) {
        rc = tc_fail("query", "cannot open %s read-only: %s", tc_store_path(s), sqlite3_errmsg(ro));
        sqlite3_close(ro);
        tc_store_close(s);
        return rc;
    }
    tc_store_close(s);
    sqlite3_busy_timeout(ro, 5000);
    sqlite3_exec(ro, "PRAGMA query_only=1", NULL, NULL, NULL);
    const char *tail = sql;
    while (rc == TC_EXIT_OK && tail && *tail) {
        sqlite3_stmt *st = NULL;
        if (sqlite3_prepare_v2(ro, tail, -1, &st, &tail) != SQLITE_OK) {
            rc = tc_fail("query", "%s", sqlite3_errmsg(ro));
            break;
        }
        if (!st) break; /* only whitespace or comments left */
        int printed_header = 0, step_rc;
        while ((step_rc = sqlite3_step(st)) == SQLITE_ROW) print_rows(st, csv, &printed_header);
        if (step_rc != SQLITE_DONE) rc = tc_fail("query", "%s", sqlite3_errmsg(ro));
        sqlite3_finalize(st);
    }
    sqlite3_close(ro);
    return rc;
}

/*
 * history.h -- the history browser's data: the runs list and whole runs
 * read from the SQLite store (the numbered migrations in schema/, docs/SCHEMA.md), turned into
 * the same view model (tc_model) the live screens draw.
 *
 * Ownership: tc_history_load fills a caller's tc_history (free with
 * tc_history_free, safe on a zeroed one). tc_history_load_run fills a
 * caller's initialized tc_model (reset first).
 */
#ifndef TC_UI_HISTORY_H
#define TC_UI_HISTORY_H

#include <stdint.h>

#include "proto.h"
#include "ui/model.h"


typedef struct {
    char run_id[TP_RUN_ID_LEN];
    int64_t started_ns;          /* unix ns */
    char model[TP_NAME_LEN];     /* "flux1 24x128 19+38 512+64x64" */
    char mode[16];               /* initial mode */
    int steps_done, total_steps;
    int have_quality;
    double worst_quality;        /* max rel-L2 over the run */
    int64_t fallbacks;
    char status[16];             /* running finished failed lost */
} tc_run_summary;

typedef struct {
    tc_run_summary *runs;        /* newest first */
    int n;
    char db_path[512];
} tc_history;

void tc_history_free(tc_history *h);

/* Reads the runs list of the database at db_path (opened read-only,
 * refused unless it is a taylorscope file). 0, or nonzero with err. */
int tc_history_load(const char *db_path, tc_history *h, char *err, size_t errlen);
/* Loads one run (by the agent's run id) into *m (emptied first) as the
 * live stream would have built it; m->conn = TC_CONN_HISTORY. */
int tc_history_load_run(const char *db_path, const char *run_id, tc_model *m, char *err, size_t errlen);

#endif /* TC_UI_HISTORY_H */

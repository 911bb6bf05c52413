/*
 * store.h -- the history store: one SQLite file of recorded runs (SPEC 9).
 * Prefix tc_store_ / tc_.
 *
 * The schema lives in schema/NNN_name.sql (embedded at build time) and is
 * documented in docs/SCHEMA.md. Opening a file checks that it belongs to
 * taylorscope (PRAGMA application_id = TC_APPLICATION_ID), refuses anything
 * else without modifying it, applies missing migrations (one transaction
 * each), and opens a file written by a newer taylorscope read-only with a
 * warning.
 *
 * Writes (the recorder's side) are one transaction each: a step with its
 * layer rows and fallback counts goes in whole or not at all, so a crash
 * loses at most the step in flight. Statements are prepared once per store.
 *
 * Threading: one tc_store is used from one thread.
 * Errors: 0 on success, nonzero with a message in err.
 */
#ifndef TC_STORE_H
#define TC_STORE_H

#include <sqlite3.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "proto.h"

/* PRAGMA application_id of a taylorscope database: "TayS". */
#define TC_APPLICATION_ID 0x54617953

typedef struct tc_store tc_store;

typedef enum {
    TC_STORE_WRITE = 0, /* create the file (and its folder) if missing; WAL, synchronous=NORMAL */
    TC_STORE_READ = 1,  /* the file must exist; migrated if older (when writable), then query_only */
} tc_store_mode;

/* Opens (and migrates) the store at path. On success *out is the caller's
 * (tc_store_close); on failure *out is NULL and the file is untouched. A
 * newer schema opens read-only: tc_store_read_only() is 1 and
 * tc_store_warning() says why. */
int tc_store_open(const char *path, tc_store_mode mode, tc_store **out, char *err, size_t errlen);
void tc_store_close(tc_store *s);

sqlite3 *tc_store_db(tc_store *s);              /* borrowed; valid until close */
int tc_store_schema_version(const tc_store *s); /* PRAGMA user_version after open */
int tc_store_read_only(const tc_store *s);
const char *tc_store_warning(const tc_store *s); /* "" when none */
const char *tc_store_path(const tc_store *s);
int tc_store_latest_version(void); /* the last embedded migration */

/* Creates a new database at path with migrations 1..version only (for tests
 * of migrations and for tools). The file must not exist. */
int tc_store_create_at_version(const char *path, int version, char *err, size_t errlen);

/* The database path when --db is not given: $TAYLORSCOPE_DB, else
 * $XDG_DATA_HOME/taylorscope/runs.db, else ~/.local/share/taylorscope/runs.db. */
int tc_default_db_path(char *buf, size_t len, char *err, size_t errlen);

/* --------------------------------------------------------------------- */
/* Writing (the recorder)                                                */
/* --------------------------------------------------------------------- */
/* Every write takes `last_seq`: the run's watermark (all messages with
 * seq <= it are stored or recorded as a gap) is raised to it in the same
 * transaction; pass 0 to leave it. `now_ns` is the recorder's clock. */

/* Finds or creates the run of agent_run_id. h may be NULL (a message of a
 * run whose header was not seen yet: a placeholder row that a later header
 * fills in). A header also turns a `lost` run back to `running`. On return
 * *run is runs.id and *last_seq its watermark. *created is 1 for a new row. */
int tc_store_run_upsert(tc_store *s, const char *agent_run_id, const char *source_url,
                        const tp_header *h, int64_t now_ns, int64_t *run, uint64_t *last_seq,
                        int *created, char *err, size_t errlen);

/* A step with its layer rows and fallbacks. A step already stored (a
 * replayed duplicate) is left as it is and *stored is 0. */
int tc_store_add_step(tc_store *s, int64_t run, uint64_t seq, const tp_step *st, int64_t now_ns,
                      uint64_t last_seq, int *stored, char *err, size_t errlen);
/* A knob event with its changes; a duplicate (same run and seq) is ignored. */
int tc_store_add_knob_event(tc_store *s, int64_t run, uint64_t seq, int64_t t_ns,
                            const tp_knob_event *ev, int64_t now_ns, uint64_t last_seq, char *err,
                            size_t errlen);
/* The run end: status finished or failed, then the secondary indexes. */
int tc_store_end_run(tc_store *s, int64_t run, const tp_run_end *end, int64_t now_ns,
                     uint64_t last_seq, char *err, size_t errlen);
/* Marks a running run lost (nothing happens to finished/failed runs). */
int tc_store_mark_lost(tc_store *s, int64_t run, const char *why, int64_t now_ns, char *err,
                       size_t errlen);
/* A hole [from_seq, to_seq]; missing = how many never came back (0 = recovered). */
int tc_store_add_gap(tc_store *s, int64_t run, uint64_t from_seq, uint64_t to_seq, uint64_t missing,
                     int64_t now_ns, uint64_t last_seq, char *err, size_t errlen);
/* A heartbeat or anything else that only moves the watermark; dropped < 0: unknown. */
int tc_store_touch(tc_store *s, int64_t run, int64_t now_ns, uint64_t last_seq, int64_t dropped,
                   char *err, size_t errlen);
/* Builds the secondary indexes if missing (done at each run end). */
int tc_store_build_indexes(tc_store *s, char *err, size_t errlen);

/* --------------------------------------------------------------------- */
/* Reading                                                               */
/* --------------------------------------------------------------------- */

/* RUN as a user types it: a local number (runs.id) or an agent run id (or
 * a unique prefix of one). */
int tc_store_find_run(tc_store *s, const char *spec, int64_t *run, char *err, size_t errlen);

/* The text a CSV or table cell shows for column i of a row whose nan_cols
 * is given (may be NULL): "nan" for a NaN column, "inf"/"-inf", "" for NULL
 * (not reported), numbers in full precision. Returns buf. */
const char *tc_cell_text(sqlite3_stmt *st, int i, const char *nan_cols, char *buf, size_t len);

/* Writes one CSV field (quoted when it must be). */
void tc_csv_field(FILE *f, const char *text);

#endif

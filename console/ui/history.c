/*
 * history.c -- the history browser's data, read straight from the SQLite
 * store with the queries below (the tables are documented in
 * schema/001_init.sql and docs/SCHEMA.md; this file only reads):
 *
 *   runs list   one row per `runs` row, newest first, with the steps
 *               recorded, the worst steps.quality_raw_max (NaN when a
 *               step's is listed in nan_cols), the sum of steps.n_fallback
 *               and the initial mode (json_extract(initial_config,'$.mode'));
 *   one run     runs (header fields, initial/current config and the knob
 *               table from their JSON), steps + fallbacks + layers (the
 *               step records with their layer rows), knob_events +
 *               knob_changes, gaps -- turned into a tc_model exactly as
 *               the live stream would have built it.
 *
 * Stored NULL means "not reported" when the row's `have` bit is clear, and
 * NaN when the column is listed in nan_cols; both become NaN here and the
 * `have` bits keep the difference.
 *
 * The file is opened read-only (the recorder may be writing it: WAL lets
 * both go on) and refused unless it carries taylorscope's application_id.
 */
#include "ui/history.h"

#include <math.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "store.h"
#include "ui/live.h"
#include "ui/model.h"


void tc_history_free(tc_history *h) {
    free(h->runs);
    h->runs = NULL;
    h->n = 0;
}

int tc_live_db_path(const char *given, char *buf, size_t len, char *err, size_t errlen) {
    if (given && *given) {
        if (snprintf(buf, len, "%s", given) >= (int)len) {
            snprintf(err, errlen, "database path too long");
            return -1;
        }
        return 0;
    }
    return tc_default_db_path(buf, len, err, errlen) == 0 ? 0 : -1;
}

static int db_open(const char *path, sqlite3 **db, char *err, size_t errlen) {
    *db = NULL;
    if (access(path, R_OK) != 0) {
        snprintf(err, errlen, "no history yet: %s does not exist (the console records there)", path);
        return -1;
    }
    if (sqlite3_open_v2(path, db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "cannot open %s: %s", path, *db ? sqlite3_errmsg(*db) : "out of memory");
        sqlite3_close(*db);
        *db = NULL;
        return -1;
    }
    sqlite3_busy_timeout(*db, 200);
    sqlite3_stmt *st = NULL;
    int app = 0;
    if (sqlite3_prepare_v2(*db, "PRAGMA application_id", -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
        app = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    if (app != TC_APPLICATION_ID) {
        snprintf(err, errlen, "%s is not a taylorscope database (application_id %d)", path, app);
        sqlite3_close(*db);
        *db = NULL;
        return -1;
    }
    return 0;
}

static const char *col_text(sqlite3_stmt *st, int i) {
    const unsigned char *t = sqlite3_column_text(st, i);
    return t ? (const char *)t : "";
}

static double col_real(sqlite3_stmt *st, int i) {
    return sqlite3_column_type(st, i) == SQLITE_NULL ? NAN : sqlite3_column_double(st, i);
}

static int prep(sqlite3 *db, const char *sql, sqlite3_stmt **st, char *err, size_t errlen) {
    if (sqlite3_prepare_v2(db, sql, -1, st, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "history query failed: %s", sqlite3_errmsg(db));
        return -1;
    }
    return 0;
}

static int load_runs(sqlite3 *db, tc_history *h, char *err, size_t errlen) {
    static const char *sql =
        "SELECT r.agent_run_id, coalesce(r.started_ns, r.first_seen_ns), r.model_name, r.heads, r.head_dim,"
        " r.n_double, r.n_single, json_extract(r.initial_config, '$.mode'),"
        " (SELECT count(*) FROM steps s WHERE s.run_id = r.id), r.total_steps,"
        " (SELECT count(*) FROM steps s WHERE s.run_id = r.id AND (s.have & 1)),"
        " (SELECT max(s.quality_raw_max) FROM steps s WHERE s.run_id = r.id AND (s.have & 1)),"
        " (SELECT count(*) FROM steps s WHERE s.run_id = r.id AND instr(s.nan_cols, ',quality_raw_max,') > 0),"
        " (SELECT coalesce(sum(s.n_fallback), 0) FROM steps s WHERE s.run_id = r.id), r.status"
        " FROM runs r ORDER BY coalesce(r.started_ns, r.first_seen_ns) DESC, r.id DESC";
    sqlite3_stmt *st;
    if (prep(db, sql, &st, err, errlen) != 0) return -1;
    tc_history_free(h);
    int cap = 0, rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (h->n == cap) {
            cap = cap ? cap * 2 : 64;
            tc_run_summary *n = realloc(h->runs, (size_t)cap * sizeof *n);
            if (!n) {
                sqlite3_finalize(st);
                snprintf(err, errlen, "out of memory reading the runs list");
                return -1;
            }
            h->runs = n;
        }
        tc_run_summary *s = &h->runs[h->n++];
        memset(s, 0, sizeof *s);
        snprintf(s->run_id, sizeof s->run_id, "%s", col_text(st, 0));
        s->started_ns = sqlite3_column_int64(st, 1);
        snprintf(s->model, sizeof s->model, "%.20s %dx%d %d+%d", col_text(st, 2), sqlite3_column_int(st, 3),
                 sqlite3_column_int(st, 4), sqlite3_column_int(st, 5), sqlite3_column_int(st, 6));
        snprintf(s->mode, sizeof s->mode, "%s", col_text(st, 7));
        s->steps_done = sqlite3_column_int(st, 8);
        s->total_steps = sqlite3_column_int(st, 9);
        s->have_quality = sqlite3_column_int(st, 10) > 0;
        s->worst_quality = sqlite3_column_int(st, 12) > 0 ? NAN : col_real(st, 11);
        s->fallbacks = sqlite3_column_int64(st, 13);
        snprintf(s->status, sizeof s->status, "%s", col_text(st, 14));
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) {
        snprintf(err, errlen, "reading the runs list: %s", sqlite3_errmsg(db));
        return -1;
    }
    return 0;
}

/* A JSON object name -> value (runs.initial_config / current_config) over
 * the defaults. Values the local table does not know are skipped. */
static void load_config(sqlite3 *db, int64_t run, const char *column, tk_config *c) {
    char sql[256];
    snprintf(sql, sizeof sql,
             "SELECT key, CASE type WHEN 'true' THEN 'true' WHEN 'false' THEN 'false'"
             " ELSE CAST(value AS TEXT) END FROM json_each((SELECT %s FROM runs WHERE id = ?))",
             column);
    tk_config_defaults(c);
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) return;
    sqlite3_bind_int64(st, 1, run);
    char e[256];
    while (sqlite3_step(st) == SQLITE_ROW) (void)tk_config_set(c, col_text(st, 0), col_text(st, 1), e, sizeof e);
    sqlite3_finalize(st);
}

static void load_knob_table(sqlite3 *db, int64_t run, tp_header *h) {
    static const char *sql =
        "SELECT json_extract(value, '$.name'), json_extract(value, '$.type'), json_extract(value, '$.group'),"
        " json_extract(value, '$.live'), json_extract(value, '$.default'), json_extract(value, '$.min'),"
        " json_extract(value, '$.max'), json_extract(value, '$.choices'), json_extract(value, '$.description')"
        " FROM json_each((SELECT knob_table FROM runs WHERE id = ?))";
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) return;
    sqlite3_bind_int64(st, 1, run);
    int cap = 0;
    while (sqlite3_step(st) == SQLITE_ROW) {
        if (h->n_knobs == cap) {
            cap = cap ? cap * 2 : 64;
            tp_knob_desc *n = realloc(h->knobs, (size_t)cap * sizeof *n);
            if (!n) break;
            h->knobs = n;
        }
        tp_knob_desc *k = &h->knobs[h->n_knobs++];
        memset(k, 0, sizeof *k);
        snprintf(k->name, sizeof k->name, "%s", col_text(st, 0));
        snprintf(k->type, sizeof k->type, "%s", col_text(st, 1));
        snprintf(k->group, sizeof k->group, "%s", col_text(st, 2));
        k->live = sqlite3_column_int(st, 3);
        k->def = col_real(st, 4);
        k->min = col_real(st, 5);
        k->max = col_real(st, 6);
        snprintf(k->choices, sizeof k->choices, "%s", col_text(st, 7));
        snprintf(k->description, sizeof k->description, "%s", col_text(st, 8));
    }
    sqlite3_finalize(st);
}

static int load_header(sqlite3 *db, const char *run_id, tc_model *m, int64_t *run, char *err, size_t errlen) {
    static const char *sql =
        "SELECT id, agent_run_id, agent_id, agent_version, model_name, model_config, heads, head_dim, n_double,"
        " n_single, text_tokens, grid_h, grid_w, sampler, backend, total_steps, started_ns, config_version,"
        " status, first_seen_ns, coalesce(ended_ns, last_seen_ns), last_seq, last_step"
        " FROM runs WHERE agent_run_id = ?";
    sqlite3_stmt *st;
    if (prep(db, sql, &st, err, errlen) != 0) return -1;
    sqlite3_bind_text(st, 1, run_id, -1, SQLITE_TRANSIENT);
    if (sqlite3_step(st) != SQLITE_ROW) {
        sqlite3_finalize(st);
        snprintf(err, errlen, "run %s is not in the database", run_id);
        return -1;
    }
    tp_header h;
    memset(&h, 0, sizeof h);
    *run = sqlite3_column_int64(st, 0);
    snprintf(m->run_id, sizeof m->run_id, "%s", col_text(st, 1));
    snprintf(h.agent_id, sizeof h.agent_id, "%s", col_text(st, 2));
    snprintf(h.agent_version, sizeof h.agent_version, "%s", col_text(st, 3));
    snprintf(h.model_name, sizeof h.model_name, "%s", col_text(st, 4));
    snprintf(h.model.name, sizeof h.model.name, "%s", col_text(st, 5));
    h.model.heads = sqlite3_column_int(st, 6);
    h.model.head_dim = sqlite3_column_int(st, 7);
    h.model.n_double = sqlite3_column_int(st, 8);
    h.model.n_single = sqlite3_column_int(st, 9);
    h.model.text_tokens = sqlite3_column_int(st, 10);
    h.model.grid_h = sqlite3_column_int(st, 11);
    h.model.grid_w = sqlite3_column_int(st, 12);
    snprintf(h.sampler, sizeof h.sampler, "%s", col_text(st, 13));
    snprintf(h.backend, sizeof h.backend, "%s", col_text(st, 14));
    h.total_steps = sqlite3_column_int(st, 15);
    h.started_ns = sqlite3_column_int64(st, 16);
    h.config_version = (uint32_t)sqlite3_column_int64(st, 17);
    snprintf(m->stored_status, sizeof m->stored_status, "%s", col_text(st, 18));
    m->stored_started_ns = sqlite3_column_int64(st, 19);
    m->stored_ended_ns = sqlite3_column_int64(st, 20);
    m->last_seq = (uint64_t)sqlite3_column_int64(st, 21);
    h.last_step = sqlite3_column_type(st, 22) == SQLITE_NULL ? -1 : sqlite3_column_int(st, 22);
    sqlite3_finalize(st);
    load_config(db, *run, "initial_config", &h.initial);
    load_config(db, *run, "current_config", &h.current);
    load_knob_table(db, *run, &h);
    int rc = tc_model_put_header(m, &h, err, errlen);
    free(h.knobs);
    return rc;
}

static int path_code(const char *p) {
    if (!strcmp(p, "exact")) return TK_PATH_EXACT;
    if (!strcmp(p, "taylor")) return TK_PATH_TAYLOR;
    if (!strcmp(p, "hybrid")) return TK_PATH_HYBRID;
    return TK_PATH_FALLBACK;
}

static int load_steps(sqlite3 *db, int64_t run, tc_model *m, char *err, size_t errlen) {
    static const char *step_sql =
        "SELECT step, sigma, wall_ms, attn_ms, config_version, calls, n_exact, n_taylor, n_hybrid, n_fallback,"
        " probe_fallbacks, have, quality_raw_mean, quality_raw_p50, quality_raw_p95, quality_raw_max,"
        " quality_eff_mean, quality_eff_p50, quality_eff_p95, quality_eff_max, cos_min, den_min, den_max,"
        " den_mean, den_le_eps, den_nonfinite, qk_p50, qk_p99, qk_max, q_norm_mean, k_norm_mean,"
        " window_mass_mean, window_mass_min, window, w FROM steps WHERE run_id = ? ORDER BY step";
    static const char *layer_sql =
        "SELECT step, layer, calls, fallbacks, path, reason, have, quality_raw_mean, quality_raw_max,"
        " quality_eff_mean, quality_eff_max, cos_min, den_min, den_le_eps, den_nonfinite, qk_p99, qk_max,"
        " q_norm_mean, k_norm_mean, window_mass_mean, window, w, R, attn_ms"
        " FROM layers WHERE run_id = ? ORDER BY step, layer";
    static const char *fb_sql = "SELECT step, reason, count FROM fallbacks WHERE run_id = ?";

    sqlite3_stmt *st;
    if (prep(db, step_sql, &st, err, errlen) != 0) return -1;
    sqlite3_bind_int64(st, 1, run);
    tp_step *steps = NULL;
    int n = 0, cap = 0, rc = 0;
    while (sqlite3_step(st) == SQLITE_ROW) {
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            tp_step *nn = realloc(steps, (size_t)cap * sizeof *nn);
            if (!nn) {
                rc = -1;
                break;
            }
            steps = nn;
        }
        tp_step *s = &steps[n++];
        memset(s, 0, sizeof *s);
        int c = 0;
        s->step = sqlite3_column_int(st, c++);
        s->sigma = col_real(st, c++);
        s->wall_ms = col_real(st, c++);
        s->attn_ms = col_real(st, c++);
        s->config_version = (uint32_t)sqlite3_column_int64(st, c++);
        s->calls = sqlite3_column_int(st, c++);
        s->n_exact = sqlite3_column_int(st, c++);
        s->n_taylor = sqlite3_column_int(st, c++);
        s->n_hybrid = sqlite3_column_int(st, c++);
        s->n_fallback = sqlite3_column_int(st, c++);
        s->probe_fallbacks = sqlite3_column_int64(st, c++);
        s->have = (unsigned)sqlite3_column_int(st, c++);
        s->quality_raw_mean = col_real(st, c++);
        s->quality_raw_p50 = col_real(st, c++);
        s->quality_raw_p95 = col_real(st, c++);
        s->quality_raw_max = col_real(st, c++);
        s->quality_eff_mean = col_real(st, c++);
        s->quality_eff_p50 = col_real(st, c++);
        s->quality_eff_p95 = col_real(st, c++);
        s->quality_eff_max = col_real(st, c++);
        s->cos_min = col_real(st, c++);
        s->den_min = col_real(st, c++);
        s->den_max = col_real(st, c++);
        s->den_mean = col_real(st, c++);
        s->den_le_eps = sqlite3_column_int64(st, c++);
        s->den_nonfinite = sqlite3_column_int64(st, c++);
        s->qk_p50 = col_real(st, c++);
        s->qk_p99 = col_real(st, c++);
        s->qk_max = col_real(st, c++);
        s->q_norm_mean = col_real(st, c++);
        s->k_norm_mean = col_real(st, c++);
        s->window_mass_mean = col_real(st, c++);
        s->window_mass_min = col_real(st, c++);
        s->window = sqlite3_column_type(st, c) == SQLITE_NULL ? -1 : sqlite3_column_int(st, c);
        c++;
        s->w = col_real(st, c++);
    }
    sqlite3_finalize(st);
    if (rc != 0) {
        free(steps);
        snprintf(err, errlen, "out of memory reading steps");
        return -1;
    }

    /* fallbacks by reason */
    if (prep(db, fb_sql, &st, err, errlen) == 0) {
        sqlite3_bind_int64(st, 1, run);
        int i = 0;
        while (sqlite3_step(st) == SQLITE_ROW) {
            int step = sqlite3_column_int(st, 0);
            tk_reason r;
            if (tk_reason_from_name(col_text(st, 1), &r) != 0) continue;
            for (i = 0; i < n && steps[i].step != step; i++) {
            }
            if (i < n) steps[i].reason_counts[r] += sqlite3_column_int64(st, 2);
        }
        sqlite3_finalize(st);
    }

    /* layer rows: sorted by step like the steps, attached in one pass */
    if (prep(db, layer_sql, &st, err, errlen) == 0) {
        sqlite3_bind_int64(st, 1, run);
        int i = 0, lcap = 0;
        while (sqlite3_step(st) == SQLITE_ROW) {
            int step = sqlite3_column_int(st, 0);
            while (i < n && steps[i].step < step) {
                i++;
                lcap = 0;
            }
            if (i >= n || steps[i].step != step) continue;
            tp_step *s = &steps[i];
            if (s->n_layers == lcap) {
                lcap = lcap ? lcap * 2 : 64;
                tp_layer_row *nl = realloc(s->layers, (size_t)lcap * sizeof *nl);
                if (!nl) break;
                s->layers = nl;
            }
            tp_layer_row *l = &s->layers[s->n_layers++];
            memset(l, 0, sizeof *l);
            int c = 1;
            l->layer = sqlite3_column_int(st, c++);
            l->calls = sqlite3_column_int(st, c++);
            l->fallbacks = sqlite3_column_int(st, c++);
            l->path = path_code(col_text(st, c++));
            tk_reason r = TK_REASON_NONE;
            if (sqlite3_column_type(st, c) != SQLITE_NULL) (void)tk_reason_from_name(col_text(st, c), &r);
            c++;
            l->reason = (int)r;
            l->have = (unsigned)sqlite3_column_int(st, c++);
            l->quality_raw_mean = col_real(st, c++);
            l->quality_raw_max = col_real(st, c++);
            l->quality_eff_mean = col_real(st, c++);
            l->quality_eff_max = col_real(st, c++);
            l->cos_min = col_real(st, c++);
            l->den_min = col_real(st, c++);
            l->den_le_eps = sqlite3_column_int64(st, c++);
            l->den_nonfinite = sqlite3_column_int64(st, c++);
            l->qk_p99 = col_real(st, c++);
            l->qk_max = col_real(st, c++);
            l->q_norm_mean = col_real(st, c++);
            l->k_norm_mean = col_real(st, c++);
            l->window_mass_mean = col_real(st, c++);
            l->window = sqlite3_column_type(st, c) == SQLITE_NULL ? -1 : sqlite3_column_int(st, c);
            c++;
            l->w = col_real(st, c++);
            l->R = sqlite3_column_int64(st, c++);
            l->attn_ms = col_real(st, c++);
        }
        sqlite3_finalize(st);
    }

    for (int i = 0; i < n && rc == 0; i++) rc = tc_model_put_step(m, &steps[i], err, errlen);
    for (int i = 0; i < n; i++) free(steps[i].layers);
    free(steps);
    return rc;
}

static int load_knob_events(sqlite3 *db, int64_t run, tc_model *m, char *err, size_t errlen) {
    static const char *sql =
        "SELECT id, status, origin, request_id, config_version, effective_step, error"
        " FROM knob_events WHERE run_id = ? ORDER BY id";
    static const char *ch_sql = "SELECT name, value, old_value FROM knob_changes WHERE event_id = ?";
    sqlite3_stmt *st, *cst;
    if (prep(db, sql, &st, err, errlen) != 0) return -1;
    if (prep(db, ch_sql, &cst, err, errlen) != 0) {
        sqlite3_finalize(st);
        return -1;
    }
    sqlite3_bind_int64(st, 1, run);
    int rc = 0;
    while (rc == 0 && sqlite3_step(st) == SQLITE_ROW) {
        tp_knob_event e;
        memset(&e, 0, sizeof e);
        const char *status = col_text(st, 1);
        e.status = !strcmp(status, "applied")    ? TP_KNOB_APPLIED
                   : !strcmp(status, "rejected") ? TP_KNOB_REJECTED
                                                 : TP_KNOB_REQUESTED;
        snprintf(e.origin, sizeof e.origin, "%s", col_text(st, 2));
        snprintf(e.request_id, sizeof e.request_id, "%s", col_text(st, 3));
        e.config_version = (uint32_t)sqlite3_column_int64(st, 4);
        e.effective_step = sqlite3_column_type(st, 5) == SQLITE_NULL ? -1 : sqlite3_column_int(st, 5);
        snprintf(e.error, sizeof e.error, "%s", col_text(st, 6));
        tp_knob_change ch[16];
        sqlite3_reset(cst);
        sqlite3_bind_int64(cst, 1, sqlite3_column_int64(st, 0));
        while (e.n_changes < 16 && sqlite3_step(cst) == SQLITE_ROW) {
            tp_knob_change *c = &ch[e.n_changes++];
            memset(c, 0, sizeof *c);
            snprintf(c->name, sizeof c->name, "%s", col_text(cst, 0));
            snprintf(c->value, sizeof c->value, "%s", col_text(cst, 1));
            snprintf(c->old_value, sizeof c->old_value, "%s", col_text(cst, 2));
        }
        e.changes = ch;
        /* the stored config is already the final one: do not re-apply */
        int have_config = m->have_config;
        m->have_config = 0;
        rc = tc_model_put_knob_event(m, &e, err, errlen);
        m->have_config = have_config;
    }
    sqlite3_finalize(st);
    sqlite3_finalize(cst);
    return rc;
}

static void load_gaps(sqlite3 *db, int64_t run, tc_model *m) {
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db, "SELECT from_seq, to_seq, recovered, missing FROM gaps WHERE run_id = ? ORDER BY id",
                           -1, &st, NULL) != SQLITE_OK)
        return;
    sqlite3_bind_int64(st, 1, run);
    while (sqlite3_step(st) == SQLITE_ROW) {
        uint64_t from = (uint64_t)sqlite3_column_int64(st, 0), to = (uint64_t)sqlite3_column_int64(st, 1);
        uint64_t missing = (uint64_t)sqlite3_column_int64(st, 3);
        if (m->n_gaps == m->cap_gaps) {
            int cap = m->cap_gaps ? m->cap_gaps * 2 : 8;
            tc_gap *g = realloc(m->gaps, (size_t)cap * sizeof *g);
            if (!g) break;
            m->gaps = g;
            m->cap_gaps = cap;
        }
        m->gaps[m->n_gaps++] = (tc_gap){from, to, missing ? TC_GAP_LOST : TC_GAP_RECOVERED, 0};
        m->missing += to - from + 1;
        m->lost += missing;
        m->recovered += to - from + 1 - missing;
    }
    sqlite3_finalize(st);
}

int tc_history_load(const char *db_path, tc_history *h, char *err, size_t errlen) {
    sqlite3 *db;
    snprintf(h->db_path, sizeof h->db_path, "%s", db_path);
    if (db_open(db_path, &db, err, errlen) != 0) return -1;
    int rc = load_runs(db, h, err, errlen);
    sqlite3_close(db);
    return rc;
}

int tc_history_load_run(const char *db_path, const char *run_id, tc_model *m, char *err, size_t errlen) {
    sqlite3 *db;
    if (db_open(db_path, &db, err, errlen) != 0) return -1;
    tc_model_free(m);
    m->conn = TC_CONN_HISTORY;
    int64_t run = 0;
    int rc = load_header(db, run_id, m, &run, err, errlen);
    if (rc == 0) rc = load_steps(db, run, m, err, errlen);
    if (rc == 0) rc = load_knob_events(db, run, m, err, errlen);
    if (rc == 0) load_gaps(db, run, m);
    sqlite3_close(db);
    if (rc != 0) tc_model_free(m);
    m->conn = TC_CONN_HISTORY;
    return rc;
}

int tc_live_history_action(const char *db_path, tc_action a, tc_ui *ui, tc_history *hist, tc_model *opened,
                           tc_model cmp[2], char *err, size_t errlen) {
    switch (a) {
    case TC_ACT_RELOAD_HISTORY:
        ui->hist = hist;
        if (tc_history_load(db_path, hist, err, errlen) != 0) return -1;
        if (ui->run_sel >= hist->n) ui->run_sel = hist->n ? hist->n - 1 : 0;
        tc_ui_status(ui, "%d runs in %s", hist->n, db_path);
        return 0;
    case TC_ACT_OPEN_RUN:
        if (tc_history_load_run(db_path, ui->act_run_a, opened, err, errlen) != 0) return -1;
        ui->shown = opened;
        ui->screen = TC_SCREEN_LIVE;
        ui->step_scroll = ui->heat_scroll = 0;
        tc_ui_status(ui, "stored run %s opened (%d steps); l returns to the live run", opened->run_id,
                     opened->n_steps);
        return 0;
    case TC_ACT_COMPARE_RUNS:
        if (tc_history_load_run(db_path, ui->act_run_a, &cmp[0], err, errlen) != 0) return -1;
        if (tc_history_load_run(db_path, ui->act_run_b, &cmp[1], err, errlen) != 0) return -1;
        ui->cmp[0] = &cmp[0];
        ui->cmp[1] = &cmp[1];
        ui->screen = TC_SCREEN_COMPARE;
        tc_ui_status(ui, "comparing %s (A) with %s (B)", cmp[0].run_id, cmp[1].run_id);
        return 0;
    default: return 0;
    }
}

/*
 * store.c -- the SQLite history store (see store.h, docs/SCHEMA.md).
 *
 * Opening: read PRAGMA application_id / user_version and the table count
 * before anything that writes (journal_mode=WAL rewrites the header), so a
 * foreign file is refused untouched. Then one transaction per missing
 * migration. Column lists of the wide tables (steps, layers) are the
 * tables below; each names the struct field and the `have` group it
 * belongs to, and the insert statements are generated from them.
 */
#include "store.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* from build/obj/schema/schema_sql.c (scripts/embed-schema.sh) */
struct tc_migration {
    int version;
    const char *name;
    const char *sql;
};
extern const struct tc_migration tc_migrations[];
extern const int tc_migration_count;

/* ---- the wide rows ---------------------------------------------------- */

typedef enum { COL_DOUBLE, COL_I64, COL_INT, COL_U32 } col_kind;
typedef struct {
    const char *name;
    col_kind kind;
    size_t offset;
    unsigned have; /* TP_HAVE_* group, 0 = always reported */
} col_def;

#define SC(f, k, h) {#f, k, offsetof(tp_step, f), h}
static const col_def step_cols[] = {
    SC(sigma, COL_DOUBLE, 0),
    SC(wall_ms, COL_DOUBLE, 0),
    SC(attn_ms, COL_DOUBLE, 0), /* always sent for a step */
    SC(config_version, COL_U32, 0),
    SC(calls, COL_INT, 0),
    SC(n_exact, COL_INT, 0),
    SC(n_taylor, COL_INT, 0),
    SC(n_hybrid, COL_INT, 0),
    SC(n_fallback, COL_INT, 0),
    SC(probe_fallbacks, COL_I64, 0),
    SC(quality_raw_mean, COL_DOUBLE, TP_HAVE_QUALITY),
    SC(quality_raw_p50, COL_DOUBLE, TP_HAVE_QUALITY),
    SC(quality_raw_p95, COL_DOUBLE, TP_HAVE_QUALITY),
    SC(quality_raw_max, COL_DOUBLE, TP_HAVE_QUALITY),
    SC(quality_eff_mean, COL_DOUBLE, TP_HAVE_QUALITY),
    SC(quality_eff_p50, COL_DOUBLE, TP_HAVE_QUALITY),
    SC(quality_eff_p95, COL_DOUBLE, TP_HAVE_QUALITY),
    SC(quality_eff_max, COL_DOUBLE, TP_HAVE_QUALITY),
    SC(cos_min, COL_DOUBLE, TP_HAVE_QUALITY),
    SC(den_min, COL_DOUBLE, TP_HAVE_DENOMS),
    SC(den_max, COL_DOUBLE, TP_HAVE_DENOMS),
    SC(den_mean, COL_DOUBLE, TP_HAVE_DENOMS),
    SC(den_le_eps, COL_I64, TP_HAVE_DENOMS),
    SC(den_nonfinite, COL_I64, TP_HAVE_DENOMS),
    SC(qk_p50, COL_DOUBLE, TP_HAVE_QK),
    SC(qk_p99, COL_DOUBLE, TP_HAVE_QK),
    SC(qk_max, COL_DOUBLE, TP_HAVE_QK),
    SC(q_norm_mean, COL_DOUBLE, TP_HAVE_QK),
    SC(k_norm_mean, COL_DOUBLE, TP_HAVE_QK),
    SC(window_mass_mean, COL_DOUBLE, TP_HAVE_WINDOW),
    SC(window_mass_min, COL_DOUBLE, TP_HAVE_WINDOW),
    SC(window, COL_INT, 0),
    SC(w, COL_DOUBLE, 0),
    SC(n_layers, COL_INT, 0),
};
#undef SC

#define LC(f, k, h) {#f, k, offsetof(tp_layer_row, f), h}
static const col_def layer_cols[] = {
    LC(layer, COL_INT, 0),
    LC(calls, COL_INT, 0),
    LC(fallbacks, COL_INT, 0),
    LC(quality_raw_mean, COL_DOUBLE, TP_HAVE_QUALITY),
    LC(quality_raw_max, COL_DOUBLE, TP_HAVE_QUALITY),
    LC(quality_eff_mean, COL_DOUBLE, TP_HAVE_QUALITY),
    LC(quality_eff_max, COL_DOUBLE, TP_HAVE_QUALITY),
    LC(cos_min, COL_DOUBLE, TP_HAVE_QUALITY),
    LC(den_min, COL_DOUBLE, TP_HAVE_DENOMS),
    LC(den_le_eps, COL_I64, TP_HAVE_DENOMS),
    LC(den_nonfinite, COL_I64, TP_HAVE_DENOMS),
    LC(qk_p99, COL_DOUBLE, TP_HAVE_QK),
    LC(qk_max, COL_DOUBLE, TP_HAVE_QK),
    LC(q_norm_mean, COL_DOUBLE, TP_HAVE_QK),
    LC(k_norm_mean, COL_DOUBLE, TP_HAVE_QK),
    LC(window_mass_mean, COL_DOUBLE, TP_HAVE_WINDOW),
    LC(window, COL_INT, 0),
    LC(w, COL_DOUBLE, 0),
    LC(R, COL_I64, 0),
    LC(attn_ms, COL_DOUBLE, TP_HAVE_TIME),
};
#undef LC

#define NCOLS(a) ((int)(sizeof(a) / sizeof((a)[0])))

/* Secondary indexes, built when a run ends (inserts never need them). */
static const char *const index_sql =
    "CREATE INDEX IF NOT EXISTS layers_by_run_layer ON layers(run_id, layer, step);"
    "CREATE INDEX IF NOT EXISTS gaps_by_run ON gaps(run_id);"
    "CREATE INDEX IF NOT EXISTS knob_events_by_run_step ON knob_events(run_id, effective_step);";

/* ---- the store -------------------------------------------------------- */

enum {
    ST_BEGIN,
    ST_COMMIT,
    ST_ROLLBACK,
    ST_INS_STEP,
    ST_INS_LAYER,
    ST_INS_FALLBACK,
    ST_RUN_AFTER_WRITE,
    ST_INS_KNOB_EVENT,
    ST_INS_KNOB_CHANGE,
    ST_INS_GAP,
    ST_COUNT
};

struct tc_store {
    sqlite3 *db;
    char path[1024];
    int read_only;
    int version;
    char warning[256];
    sqlite3_stmt *st[ST_COUNT]; /* prepared on first use */
};

static void set_err(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || !errlen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

int tc_store_latest_version(void) {
    int v = 0;
    for (int i = 0; i < tc_migration_count; i++)
        if (tc_migrations[i].sql && tc_migrations[i].version > v) v = tc_migrations[i].version;
    return v;
}

sqlite3 *tc_store_db(tc_store *s) { return s->db; }
int tc_store_schema_version(const tc_store *s) { return s->version; }
int tc_store_read_only(const tc_store *s) { return s->read_only; }
const char *tc_store_warning(const tc_store *s) { return s->warning; }
const char *tc_store_path(const tc_store *s) { return s->path; }

static int pragma_int(sqlite3 *db, const char *sql, int64_t *out, char *err, size_t errlen,
                      const char *path) {
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
    if (rc == SQLITE_OK) rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *out = sqlite3_column_int64(st, 0);
        sqlite3_finalize(st);
        return 0;
    }
    int code = sqlite3_errcode(db);
    if (code == SQLITE_NOTADB)
        set_err(err, errlen, "%s is not a SQLite database; refusing to touch it", path);
    else
        set_err(err, errlen, "%s: cannot read: %s", path, sqlite3_errmsg(db));
    sqlite3_finalize(st);
    return 1;
}

static int exec(sqlite3 *db, const char *sql, char *err, size_t errlen, const char *what) {
    char *msg = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &msg) == SQLITE_OK) return 0;
    set_err(err, errlen, "%s: %s", what, msg ? msg : sqlite3_errmsg(db));
    sqlite3_free(msg);
    return 1;
}

/* Applies migrations (from, to] each in its own transaction. */
static int migrate(sqlite3 *db, int from, int to, char *err, size_t errlen) {
    for (int v = from + 1; v <= to; v++) {
        const struct tc_migration *m = NULL;
        for (int i = 0; i < tc_migration_count; i++)
            if (tc_migrations[i].version == v && tc_migrations[i].sql) m = &tc_migrations[i];
        if (!m) {
            set_err(err, errlen, "schema migration %d is missing from this build", v);
            return 1;
        }
        if (exec(db, "BEGIN IMMEDIATE", err, errlen, "cannot start a migration")) return 1;
        char what[128], tail[96];
        snprintf(what, sizeof what, "schema migration %s failed", m->name);
        snprintf(tail, sizeof tail, "PRAGMA application_id = %d; PRAGMA user_version = %d;",
                 TC_APPLICATION_ID, v);
        if (exec(db, m->sql, err, errlen, what) || exec(db, tail, err, errlen, what) ||
            exec(db, "COMMIT", err, errlen, what)) {
            sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
            return 1;
        }
    }
    return 0;
}

static int mkdir_parents(const char *path, char *err, size_t errlen) {
    char dir[1024];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (!slash || slash == dir) return 0;
    *slash = 0;
    for (char *p = dir + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
            set_err(err, errlen, "cannot create folder %s: %s", dir, strerror(errno));
            return 1;
        }
        *p = '/';
    }
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        set_err(err, errlen, "cannot create folder %s: %s", dir, strerror(errno));
        return 1;
    }
    return 0;
}

/* Checks whose file it is. *fresh = an empty database (no tables, ids 0). */
static int check_identity(sqlite3 *db, const char *path, int64_t *version, int *fresh, char *err,
                          size_t errlen) {
    int64_t app = 0, objects = 0;
    if (pragma_int(db, "PRAGMA application_id", &app, err, errlen, path) ||
        pragma_int(db, "PRAGMA user_version", version, err, errlen, path) ||
        pragma_int(db, "SELECT count(*) FROM sqlite_master", &objects, err, errlen, path))
        return 1;
    *fresh = app == 0 && *version == 0 && objects == 0;
    if (*fresh) return 0;
    if (app != TC_APPLICATION_ID) {
        set_err(err, errlen,
                "%s is not a taylorscope database (application_id 0x%08llx, expected 0x%08x, "
                "%lld schema objects); refusing to touch it",
                path, (unsigned long long)(uint32_t)app, TC_APPLICATION_ID, (long long)objects);
        return 1;
    }
    return 0;
}

int tc_store_open(const char *path, tc_store_mode mode, tc_store **out, char *err, size_t errlen) {
    *out = NULL;
    if (!path || !*path) {
        set_err(err, errlen, "no database path given");
        return 1;
    }
    if (strlen(path) >= sizeof((tc_store *)0)->path) {
        set_err(err, errlen, "database path too long");
        return 1;
    }
    struct stat sb;
    int exists = stat(path, &sb) == 0;
    if (exists && !S_ISREG(sb.st_mode)) {
        set_err(err, errlen, "%s is not a regular file", path);
        return 1;
    }
    if (!exists && mode == TC_STORE_READ) {
        set_err(err, errlen, "no database at %s (record a run first, or pass --db FILE)", path);
        return 1;
    }
    if (!exists && mkdir_parents(path, err, errlen)) return 1;

    tc_store *s = calloc(1, sizeof *s);
    if (!s) {
        set_err(err, errlen, "out of memory");
        return 1;
    }
    snprintf(s->path, sizeof s->path, "%s", path);
    /* one thread per store (store.h): no per-call mutex */
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX | (mode == TC_STORE_WRITE ? SQLITE_OPEN_CREATE : 0);
    if (sqlite3_open_v2(path, &s->db, flags, NULL) != SQLITE_OK) {
        set_err(err, errlen, "cannot open %s: %s", path, s->db ? sqlite3_errmsg(s->db) : "out of memory");
        tc_store_close(s);
        return 1;
    }
    sqlite3_busy_timeout(s->db, 5000);
    int64_t version = 0;
    int fresh = 0;
    if (check_identity(s->db, path, &version, &fresh, err, errlen)) {
        tc_store_close(s);
        return 1;
    }
    if (fresh && mode == TC_STORE_READ) {
        /* reading never turns somebody's empty file into ours */
        set_err(err, errlen, "%s is an empty database with no runs (record a run first)", path);
        tc_store_close(s);
        return 1;
    }
    int latest = tc_store_latest_version();
    if (version > latest) {
        /* a newer taylorscope wrote it: read what we understand, write nothing */
        sqlite3_close(s->db);
        s->db = NULL;
        if (sqlite3_open_v2(path, &s->db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK) {
            set_err(err, errlen, "cannot open %s read-only: %s", path, sqlite3_errmsg(s->db));
            tc_store_close(s);
            return 1;
        }
        sqlite3_busy_timeout(s->db, 5000);
        s->read_only = 1;
        s->version = (int)version;
        snprintf(s->warning, sizeof s->warning,
                 "%s has schema version %lld, newer than this taylorscope's %d: opened read-only",
                 path, (long long)version, latest);
        *out = s;
        return 0;
    }
    if (sqlite3_db_readonly(s->db, "main") == 1) {
        if (version < latest) {
            set_err(err, errlen,
                    "%s has schema version %lld and needs migrating to %d, but it is read-only",
                    path, (long long)version, latest);
            tc_store_close(s);
            return 1;
        }
        s->read_only = 1;
    } else {
        if (mode == TC_STORE_WRITE && exec(s->db, "PRAGMA journal_mode=WAL", err, errlen, path)) {
            tc_store_close(s);
            return 1;
        }
        if (exec(s->db, "PRAGMA synchronous=NORMAL", err, errlen, path) ||
            migrate(s->db, (int)version, latest, err, errlen)) {
            tc_store_close(s);
            return 1;
        }
    }
    s->version = latest;
    if (mode == TC_STORE_READ) {
        exec(s->db, "PRAGMA query_only=1", err, errlen, path);
        s->read_only = 1;
    }
    *out = s;
    return 0;
}

void tc_store_close(tc_store *s) {
    if (!s) return;
    for (int i = 0; i < ST_COUNT; i++) sqlite3_finalize(s->st[i]);
    if (s->db) sqlite3_close(s->db);
    free(s);
}

int tc_store_create_at_version(const char *path, int version, char *err, size_t errlen) {
    struct stat sb;
    if (stat(path, &sb) == 0) {
        set_err(err, errlen, "%s exists already", path);
        return 1;
    }
    if (version < 0 || version > tc_store_latest_version()) {
        set_err(err, errlen, "no schema version %d (latest is %d)", version, tc_store_latest_version());
        return 1;
    }
    sqlite3 *db = NULL;
    int rc = 0;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) != SQLITE_OK) {
        set_err(err, errlen, "cannot create %s: %s", path, db ? sqlite3_errmsg(db) : "out of memory");
        rc = 1;
    } else {
        rc = exec(db, "PRAGMA journal_mode=WAL", err, errlen, path) || migrate(db, 0, version, err, errlen);
    }
    sqlite3_close(db);
    return rc;
}

int tc_default_db_path(char *buf, size_t len, char *err, size_t errlen) {
    const char *env = getenv("TAYLORSCOPE_DB");
    int n;
    if (env && *env) {
        n = snprintf(buf, len, "%s", env);
    } else if ((env = getenv("XDG_DATA_HOME")) && *env == '/') {
        n = snprintf(buf, len, "%s/taylorscope/runs.db", env);
    } else if ((env = getenv("HOME")) && *env) {
        n = snprintf(buf, len, "%s/.local/share/taylorscope/runs.db", env);
    } else {
        set_err(err, errlen, "no default database: HOME is not set (pass --db FILE)");
        return 1;
    }
    if (n < 0 || (size_t)n >= len) {
        set_err(err, errlen, "default database path too long (pass --db FILE)");
        return 1;
    }
    return 0;
}

/* ---- statements ------------------------------------------------------- */

/* Text of the insert of a wide table: fixed leading columns, then cols. */
static void wide_insert_sql(char *buf, size_t len, const char *verb, const char *table,
                            const char *lead, int nlead, const col_def *cols, int n) {
    size_t o = (size_t)snprintf(buf, len, "%s INTO %s(%s", verb, table, lead);
    for (int i = 0; i < n && o < len; i++) o += (size_t)snprintf(buf + o, len - o, ",%s", cols[i].name);
    if (o < len) o += (size_t)snprintf(buf + o, len - o, ") VALUES(?");
    for (int i = 1; i < nlead + n && o < len; i++) o += (size_t)snprintf(buf + o, len - o, ",?");
    if (o < len) snprintf(buf + o, len - o, ")");
}

static sqlite3_stmt *stmt(tc_store *s, int which, char *err, size_t errlen) {
    if (s->st[which]) {
        sqlite3_reset(s->st[which]);
        sqlite3_clear_bindings(s->st[which]);
        return s->st[which];
    }
    char sql[4096];
    switch (which) {
    case ST_BEGIN: snprintf(sql, sizeof sql, "BEGIN IMMEDIATE"); break;
    case ST_COMMIT: snprintf(sql, sizeof sql, "COMMIT"); break;
    case ST_ROLLBACK: snprintf(sql, sizeof sql, "ROLLBACK"); break;
    case ST_INS_STEP:
        wide_insert_sql(sql, sizeof sql, "INSERT OR IGNORE", "steps",
                        "run_id,step,seq,received_ns,have,nan_cols", 6, step_cols, NCOLS(step_cols));
        break;
    case ST_INS_LAYER:
        wide_insert_sql(sql, sizeof sql, "INSERT", "layers", "run_id,step,path,reason,have,nan_cols", 6,
                        layer_cols, NCOLS(layer_cols));
        break;
    case ST_INS_FALLBACK:
        snprintf(sql, sizeof sql,
                 "INSERT OR IGNORE INTO fallbacks(run_id,step,reason,count) VALUES(?,?,?,?)");
        break;
    case ST_RUN_AFTER_WRITE:
        snprintf(sql, sizeof sql,
                 "UPDATE runs SET last_seq = max(last_seq, ?2), last_seen_ns = ?3,"
                 " last_step = CASE WHEN ?4 IS NULL THEN last_step"
                 "   ELSE max(coalesce(last_step, ?4), ?4) END,"
                 " status = CASE WHEN status = 'lost' THEN 'running' ELSE status END,"
                 " ended_ns = CASE WHEN status = 'lost' THEN NULL ELSE ended_ns END"
                 " WHERE id = ?1");
        break;
    case ST_INS_KNOB_EVENT:
        snprintf(sql, sizeof sql,
                 "INSERT OR IGNORE INTO knob_events(run_id,seq,t_ns,status,origin,request_id,"
                 "config_version,effective_step,error) VALUES(?,?,?,?,?,?,?,?,?)");
        break;
    case ST_INS_KNOB_CHANGE:
        snprintf(sql, sizeof sql,
                 "INSERT OR REPLACE INTO knob_changes(event_id,name,value,old_value) VALUES(?,?,?,?)");
        break;
    case ST_INS_GAP:
        snprintf(sql, sizeof sql,
                 "INSERT INTO gaps(run_id,from_seq,to_seq,detected_ns,recovered,missing)"
                 " VALUES(?,?,?,?,?,?)");
        break;
    default: return NULL;
    }
    if (sqlite3_prepare_v3(s->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &s->st[which], NULL) != SQLITE_OK) {
        set_err(err, errlen, "%s: cannot prepare a statement: %s", s->path, sqlite3_errmsg(s->db));
        return NULL;
    }
    return s->st[which];
}

static int run_stmt(tc_store *s, sqlite3_stmt *st, char *err, size_t errlen) {
    int rc = sqlite3_step(st);
    if (rc == SQLITE_DONE || rc == SQLITE_ROW) {
        sqlite3_reset(st);
        return 0;
    }
    set_err(err, errlen, "%s: %s", s->path, sqlite3_errmsg(s->db));
    sqlite3_reset(st);
    return 1;
}

static int simple(tc_store *s, int which, char *err, size_t errlen) {
    sqlite3_stmt *st = stmt(s, which, err, errlen);
    return !st || run_stmt(s, st, err, errlen);
}

static int writable(tc_store *s, char *err, size_t errlen) {
    if (!s->read_only) return 0;
    set_err(err, errlen, "%s is open read-only%s%s", s->path, s->warning[0] ? ": " : "", s->warning);
    return 1;
}

static int begin(tc_store *s, char *err, size_t errlen) {
    return writable(s, err, errlen) || simple(s, ST_BEGIN, err, errlen);
}
static int finish(tc_store *s, int failed, char *err, size_t errlen) {
    if (failed) {
        char ignore[64];
        simple(s, ST_ROLLBACK, ignore, sizeof ignore);
        return 1;
    }
    return simple(s, ST_COMMIT, err, errlen);
}

static int after_write(tc_store *s, int64_t run, uint64_t last_seq, int64_t now_ns, const int *step,
                       char *err, size_t errlen) {
    sqlite3_stmt *st = stmt(s, ST_RUN_AFTER_WRITE, err, errlen);
    if (!st) return 1;
    sqlite3_bind_int64(st, 1, run);
    sqlite3_bind_int64(st, 2, (int64_t)last_seq);
    sqlite3_bind_int64(st, 3, now_ns);
    if (step) sqlite3_bind_int(st, 4, *step);
    return run_stmt(s, st, err, errlen);
}

/* Binds cols of the struct at base from parameter index first; appends the
 * names of NaN columns to nan (",a,b,"). */
static void bind_wide(sqlite3_stmt *st, int first, const col_def *cols, int n, const void *base,
                      unsigned have, char *nan, size_t nanlen) {
    size_t o = 0;
    nan[0] = 0;
    for (int i = 0; i < n; i++) {
        const col_def *c = &cols[i];
        int p = first + i;
        const char *f = (const char *)base + c->offset;
        if (c->have && !(have & c->have)) {
            sqlite3_bind_null(st, p);
            continue;
        }
        switch (c->kind) {
        case COL_DOUBLE: {
            double v;
            memcpy(&v, f, sizeof v);
            if (isnan(v)) {
                sqlite3_bind_null(st, p);
                if (o == 0 && nanlen > 1) o = (size_t)snprintf(nan, nanlen, ",");
                if (o < nanlen) o += (size_t)snprintf(nan + o, nanlen - o, "%s,", c->name);
            } else {
                sqlite3_bind_double(st, p, v);
            }
            break;
        }
        case COL_I64: {
            int64_t v;
            memcpy(&v, f, sizeof v);
            sqlite3_bind_int64(st, p, v);
            break;
        }
        case COL_INT: {
            int v;
            memcpy(&v, f, sizeof v);
            sqlite3_bind_int(st, p, v);
            break;
        }
        case COL_U32: {
            uint32_t v;
            memcpy(&v, f, sizeof v);
            sqlite3_bind_int64(st, p, v);
            break;
        }
        }
    }
}

static void bind_text_or_null(sqlite3_stmt *st, int p, const char *text) {
    if (text && *text)
        sqlite3_bind_text(st, p, text, -1, SQLITE_TRANSIENT);
    else
        sqlite3_bind_null(st, p);
}

int tc_store_add_step(tc_store *s, int64_t run, uint64_t seq, const tp_step *step, int64_t now_ns,
                      uint64_t last_seq, int *stored, char *err, size_t errlen) {
    if (stored) *stored = 0;
    if (begin(s, err, errlen)) return 1;
    int failed = 0;
    char nan[1024];
    sqlite3_stmt *st = stmt(s, ST_INS_STEP, err, errlen);
    if (!st) return finish(s, 1, err, errlen);
    sqlite3_bind_int64(st, 1, run);
    sqlite3_bind_int(st, 2, step->step);
    sqlite3_bind_int64(st, 3, (int64_t)seq);
    sqlite3_bind_int64(st, 4, now_ns);
    sqlite3_bind_int(st, 5, (int)step->have);
    bind_wide(st, 7, step_cols, NCOLS(step_cols), step, step->have, nan, sizeof nan);
    bind_text_or_null(st, 6, nan);
    failed = run_stmt(s, st, err, errlen);
    int inserted = !failed && sqlite3_changes(s->db) > 0;
    for (int i = 0; inserted && !failed && i < step->n_layers; i++) {
        const tp_layer_row *row = &step->layers[i];
        st = stmt(s, ST_INS_LAYER, err, errlen);
        if (!st) {
            failed = 1;
            break;
        }
        sqlite3_bind_int64(st, 1, run);
        sqlite3_bind_int(st, 2, step->step);
        sqlite3_bind_text(st, 3, tk_path_name((tk_path)row->path), -1, SQLITE_STATIC);
        if (row->reason > 0 && row->reason < TK_REASON_COUNT)
            sqlite3_bind_text(st, 4, tk_reason_name((tk_reason)row->reason), -1, SQLITE_STATIC);
        sqlite3_bind_int(st, 5, (int)row->have);
        bind_wide(st, 7, layer_cols, NCOLS(layer_cols), row, row->have, nan, sizeof nan);
        bind_text_or_null(st, 6, nan);
        failed = run_stmt(s, st, err, errlen);
    }
    for (int r = 1; inserted && !failed && r < TK_REASON_COUNT; r++) {
        if (step->reason_counts[r] == 0) continue;
        st = stmt(s, ST_INS_FALLBACK, err, errlen);
        if (!st) {
            failed = 1;
            break;
        }
        sqlite3_bind_int64(st, 1, run);
        sqlite3_bind_int(st, 2, step->step);
        sqlite3_bind_text(st, 3, tk_reason_name((tk_reason)r), -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 4, step->reason_counts[r]);
        failed = run_stmt(s, st, err, errlen);
    }
    if (!failed) failed = after_write(s, run, last_seq, now_ns, &step->step, err, errlen);
    if (finish(s, failed, err, errlen)) return 1;
    if (stored) *stored = inserted;
    return 0;
}

/* ---- runs ------------------------------------------------------------- */

/* A growable string for the JSON columns. */
typedef struct {
    char *p;
    size_t len, cap;
    int oom;
} sbuf;

static void sb_add(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_add(sbuf *b, const char *fmt, ...) {
    if (b->oom) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        size_t room = b->cap - b->len;
        int n = vsnprintf(b->p ? b->p + b->len : NULL, b->p ? room : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->oom = 1;
            return;
        }
        if (b->p && (size_t)n < room) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = b->cap ? b->cap * 2 : 1024;
        while (cap < b->len + (size_t)n + 1) cap *= 2;
        char *np = realloc(b->p, cap);
        if (!np) {
            b->oom = 1;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
}

static void sb_json_string(sbuf *b, const char *s) {
    sb_add(b, "\"");
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        if (*c == '"' || *c == '\\')
            sb_add(b, "\\%c", *c);
        else if (*c < 0x20)
            sb_add(b, "\\u%04x", *c);
        else
            sb_add(b, "%c", *c);
    }
    sb_add(b, "\"");
}

static void sb_json_number(sbuf *b, double v) {
    if (isnan(v))
        sb_add(b, "\"nan\"");
    else if (isinf(v))
        sb_add(b, v > 0 ? "\"inf\"" : "\"-inf\"");
    else
        sb_add(b, "%.17g", v);
}

/* {"mode":"taylor","terms":4,...}: numbers as JSON numbers, enums as names. */
static void config_json(sbuf *b, const tk_config *c) {
    sb_add(b, "{");
    for (int i = 0; i < tk_knob_count(); i++) {
        const tk_knob *k = tk_knob_at(i);
        char text[96];
        if (i) sb_add(b, ",");
        sb_json_string(b, k->name);
        sb_add(b, ":");
        switch (k->type) {
        case TK_KNOB_BOOL: sb_add(b, "%s", tk_config_get(c, k) != 0 ? "true" : "false"); break;
        case TK_KNOB_ENUM: sb_json_string(b, tk_config_format(c, k, text, sizeof text)); break;
        default: sb_json_number(b, tk_config_get(c, k)); break;
        }
    }
    sb_add(b, "}");
}

static void knob_table_json(sbuf *b, const tp_header *h) {
    sb_add(b, "[");
    for (int i = 0; i < h->n_knobs && h->knobs; i++) {
        const tp_knob_desc *k = &h->knobs[i];
        sb_add(b, "%s{\"name\":", i ? "," : "");
        sb_json_string(b, k->name);
        sb_add(b, ",\"type\":");
        sb_json_string(b, k->type);
        sb_add(b, ",\"group\":");
        sb_json_string(b, k->group);
        sb_add(b, ",\"live\":%s,\"default\":", k->live ? "true" : "false");
        sb_json_number(b, k->def);
        sb_add(b, ",\"min\":");
        sb_json_number(b, k->min);
        sb_add(b, ",\"max\":");
        sb_json_number(b, k->max);
        sb_add(b, ",\"choices\":");
        sb_json_string(b, k->choices);
        sb_add(b, ",\"description\":");
        sb_json_string(b, k->description);
        sb_add(b, "}");
    }
    sb_add(b, "]");
}

static void reasons_json(sbuf *b, const tp_header *h) {
    sb_add(b, "[");
    for (int i = 0; i < h->n_reasons && h->reasons; i++) {
        if (i) sb_add(b, ",");
        sb_json_string(b, h->reasons[i]);
    }
    sb_add(b, "]");
}

static int bind_header(sqlite3_stmt *st, const tp_header *h, char *err, size_t errlen) {
    sbuf initial = {0}, current = {0}, knobs = {0}, reasons = {0};
    config_json(&initial, &h->initial);
    config_json(&current, &h->current);
    knob_table_json(&knobs, h);
    reasons_json(&reasons, h);
    int oom = initial.oom || current.oom || knobs.oom || reasons.oom;
    if (!oom) {
        int p = 3;
        bind_text_or_null(st, p++, h->agent_id);
        bind_text_or_null(st, p++, h->agent_version);
        bind_text_or_null(st, p++, h->model_name);
        bind_text_or_null(st, p++, h->model.name);
        sqlite3_bind_int(st, p++, h->model.heads);
        sqlite3_bind_int(st, p++, h->model.head_dim);
        sqlite3_bind_int(st, p++, h->model.n_double);
        sqlite3_bind_int(st, p++, h->model.n_single);
        sqlite3_bind_int(st, p++, h->model.text_tokens);
        sqlite3_bind_int(st, p++, h->model.grid_h);
        sqlite3_bind_int(st, p++, h->model.grid_w);
        bind_text_or_null(st, p++, h->sampler);
        bind_text_or_null(st, p++, h->backend);
        sqlite3_bind_int(st, p++, h->total_steps);
        sqlite3_bind_int64(st, p++, h->started_ns);
        sqlite3_bind_text(st, p++, initial.p, (int)initial.len, SQLITE_TRANSIENT);
        sqlite3_bind_text(st, p++, current.p, (int)current.len, SQLITE_TRANSIENT);
        sqlite3_bind_int64(st, p++, h->config_version);
        sqlite3_bind_text(st, p++, knobs.p, (int)knobs.len, SQLITE_TRANSIENT);
        sqlite3_bind_text(st, p++, reasons.p, (int)reasons.len, SQLITE_TRANSIENT);
    } else {
        set_err(err, errlen, "out of memory");
    }
    free(initial.p);
    free(current.p);
    free(knobs.p);
    free(reasons.p);
    return oom;
}

static const char *const header_cols =
    "agent_id=?3, agent_version=?4, model_name=?5, model_config=?6, heads=?7, head_dim=?8,"
    " n_double=?9, n_single=?10, text_tokens=?11, grid_h=?12, grid_w=?13, sampler=?14,"
    " backend=?15, total_steps=?16, started_ns=?17,"
    " initial_config=coalesce(initial_config, ?18), current_config=?19, config_version=?20,"
    " knob_table=?21, reasons=?22";

int tc_store_run_upsert(tc_store *s, const char *agent_run_id, const char *source_url,
                        const tp_header *h, int64_t now_ns, int64_t *run, uint64_t *last_seq,
                        int *created, char *err, size_t errlen) {
    if (created) *created = 0;
    if (!agent_run_id || !*agent_run_id) {
        set_err(err, errlen, "a message without a run id");
        return 1;
    }
    if (begin(s, err, errlen)) return 1;
    int failed = 0, made = 0;
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(s->db,
                           "INSERT OR IGNORE INTO runs(agent_run_id, source_url, first_seen_ns,"
                           " last_seen_ns) VALUES(?1, ?2, ?3, ?3)",
                           -1, &st, NULL) != SQLITE_OK) {
        set_err(err, errlen, "%s: %s", s->path, sqlite3_errmsg(s->db));
        return finish(s, 1, err, errlen);
    }
    sqlite3_bind_text(st, 1, agent_run_id, -1, SQLITE_TRANSIENT);
    bind_text_or_null(st, 2, source_url);
    sqlite3_bind_int64(st, 3, now_ns);
    failed = run_stmt(s, st, err, errlen);
    made = !failed && sqlite3_changes(s->db) > 0;
    sqlite3_finalize(st);
    st = NULL;
    if (!failed && h) {
        char sql[1024];
        snprintf(sql, sizeof sql,
                 "UPDATE runs SET %s, last_seen_ns=?2,"
                 " status = CASE WHEN status = 'lost' THEN 'running' ELSE status END,"
                 " ended_ns = CASE WHEN status = 'lost' THEN NULL ELSE ended_ns END"
                 " WHERE agent_run_id=?1",
                 header_cols);
        if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) != SQLITE_OK) {
            set_err(err, errlen, "%s: %s", s->path, sqlite3_errmsg(s->db));
            failed = 1;
        } else {
            sqlite3_bind_text(st, 1, agent_run_id, -1, SQLITE_TRANSIENT);
            sqlite3_bind_int64(st, 2, now_ns);
            failed = bind_header(st, h, err, errlen) || run_stmt(s, st, err, errlen);
        }
        sqlite3_finalize(st);
        st = NULL;
    }
    if (!failed) {
        if (sqlite3_prepare_v2(s->db, "SELECT id, last_seq FROM runs WHERE agent_run_id=?1", -1, &st,
                               NULL) != SQLITE_OK) {
            set_err(err, errlen, "%s: %s", s->path, sqlite3_errmsg(s->db));
            failed = 1;
        } else {
            sqlite3_bind_text(st, 1, agent_run_id, -1, SQLITE_TRANSIENT);
            if (sqlite3_step(st) == SQLITE_ROW) {
                *run = sqlite3_column_int64(st, 0);
                *last_seq = (uint64_t)sqlite3_column_int64(st, 1);
            } else {
                set_err(err, errlen, "%s: run %s vanished", s->path, agent_run_id);
                failed = 1;
            }
        }
        sqlite3_finalize(st);
    }
    if (finish(s, failed, err, errlen)) return 1;
    if (created) *created = made;
    return 0;
}

int tc_store_add_knob_event(tc_store *s, int64_t run, uint64_t seq, int64_t t_ns,
                            const tp_knob_event *ev, int64_t now_ns, uint64_t last_seq, char *err,
                            size_t errlen) {
    if (begin(s, err, errlen)) return 1;
    sqlite3_stmt *st = stmt(s, ST_INS_KNOB_EVENT, err, errlen);
    if (!st) return finish(s, 1, err, errlen);
    sqlite3_bind_int64(st, 1, run);
    sqlite3_bind_int64(st, 2, (int64_t)seq);
    sqlite3_bind_int64(st, 3, t_ns);
    sqlite3_bind_text(st, 4, tp_knob_status_name(ev->status), -1, SQLITE_STATIC);
    bind_text_or_null(st, 5, ev->origin);
    sqlite3_bind_text(st, 6, ev->request_id, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 7, ev->config_version);
    sqlite3_bind_int(st, 8, ev->effective_step);
    bind_text_or_null(st, 9, ev->error);
    int failed = run_stmt(s, st, err, errlen);
    int inserted = !failed && sqlite3_changes(s->db) > 0;
    int64_t event_id = sqlite3_last_insert_rowid(s->db);
    for (int i = 0; inserted && !failed && i < ev->n_changes; i++) {
        st = stmt(s, ST_INS_KNOB_CHANGE, err, errlen);
        if (!st) {
            failed = 1;
            break;
        }
        sqlite3_bind_int64(st, 1, event_id);
        sqlite3_bind_text(st, 2, ev->changes[i].name, -1, SQLITE_TRANSIENT);
        bind_text_or_null(st, 3, ev->changes[i].value);
        bind_text_or_null(st, 4, ev->changes[i].old_value);
        failed = run_stmt(s, st, err, errlen);
    }
    if (!failed) failed = after_write(s, run, last_seq, now_ns, NULL, err, errlen);
    return finish(s, failed, err, errlen);
}

static int exec_bound(tc_store *s, const char *sql, int64_t run, const char *text, int64_t n1,
                      int64_t n2, char *err, size_t errlen) {
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) != SQLITE_OK) {
        set_err(err, errlen, "%s: %s", s->path, sqlite3_errmsg(s->db));
        return 1;
    }
    /* parameters a statement does not use are ignored (SQLITE_RANGE) */
    sqlite3_bind_int64(st, 1, run);
    bind_text_or_null(st, 2, text);
    sqlite3_bind_int64(st, 3, n1);
    sqlite3_bind_int64(st, 4, n2);
    int rc = run_stmt(s, st, err, errlen);
    sqlite3_finalize(st);
    return rc;
}

int tc_store_end_run(tc_store *s, int64_t run, const tp_run_end *end, int64_t now_ns,
                     uint64_t last_seq, char *err, size_t errlen) {
    const char *status = strcmp(end->status, "failed") == 0 ? "failed" : "finished";
    if (begin(s, err, errlen)) return 1;
    char sql[256];
    snprintf(sql, sizeof sql,
             "UPDATE runs SET status='%s', status_message=?2, steps_done=?3, ended_ns=?4 WHERE id=?1",
             status);
    int failed = exec_bound(s, sql, run, end->message, end->steps_done, now_ns, err, errlen);
    if (!failed) failed = after_write(s, run, last_seq, now_ns, NULL, err, errlen);
    if (finish(s, failed, err, errlen)) return 1;
    return tc_store_build_indexes(s, err, errlen);
}

int tc_store_mark_lost(tc_store *s, int64_t run, const char *why, int64_t now_ns, char *err,
                       size_t errlen) {
    if (writable(s, err, errlen)) return 1;
    return exec_bound(s,
                      "UPDATE runs SET status='lost', status_message=?2, ended_ns=?3"
                      " WHERE id=?1 AND status='running'",
                      run, why, now_ns, 0, err, errlen);
}

int tc_store_add_gap(tc_store *s, int64_t run, uint64_t from_seq, uint64_t to_seq, uint64_t missing,
                     int64_t now_ns, uint64_t last_seq, char *err, size_t errlen) {
    if (begin(s, err, errlen)) return 1;
    sqlite3_stmt *st = stmt(s, ST_INS_GAP, err, errlen);
    if (!st) return finish(s, 1, err, errlen);
    sqlite3_bind_int64(st, 1, run);
    sqlite3_bind_int64(st, 2, (int64_t)from_seq);
    sqlite3_bind_int64(st, 3, (int64_t)to_seq);
    sqlite3_bind_int64(st, 4, now_ns);
    sqlite3_bind_int(st, 5, missing == 0);
    sqlite3_bind_int64(st, 6, (int64_t)missing);
    int failed = run_stmt(s, st, err, errlen);
    if (!failed) failed = after_write(s, run, last_seq, now_ns, NULL, err, errlen);
    return finish(s, failed, err, errlen);
}

int tc_store_touch(tc_store *s, int64_t run, int64_t now_ns, uint64_t last_seq, int64_t dropped,
                   char *err, size_t errlen) {
    if (begin(s, err, errlen)) return 1;
    int failed = after_write(s, run, last_seq, now_ns, NULL, err, errlen);
    if (!failed && dropped >= 0)
        failed = exec_bound(s, "UPDATE runs SET agent_dropped=?3 WHERE id=?1",
                            run, NULL, dropped, 0, err, errlen);
    return finish(s, failed, err, errlen);
}

int tc_store_build_indexes(tc_store *s, char *err, size_t errlen) {
    if (writable(s, err, errlen)) return 1;
    return exec(s->db, index_sql, err, errlen, "cannot build the indexes");
}

/* ---- reading ---------------------------------------------------------- */

int tc_store_find_run(tc_store *s, const char *spec, int64_t *run, char *err, size_t errlen) {
    if (!spec || !*spec) {
        set_err(err, errlen, "no run given");
        return 1;
    }
    char *end = NULL;
    errno = 0;
    long long n = strtoll(spec, &end, 10);
    sqlite3_stmt *st = NULL;
    int found = 0;
    if (!errno && end && !*end && n > 0) {
        if (sqlite3_prepare_v2(s->db, "SELECT id FROM runs WHERE id=?1", -1, &st, NULL) == SQLITE_OK) {
            sqlite3_bind_int64(st, 1, n);
            if (sqlite3_step(st) == SQLITE_ROW) {
                *run = sqlite3_column_int64(st, 0);
                found = 1;
            }
        }
        sqlite3_finalize(st);
        st = NULL;
        if (found) return 0;
    }
    /* exact agent run id, else a unique prefix */
    if (sqlite3_prepare_v2(s->db,
                           "SELECT id, agent_run_id = ?1 FROM runs WHERE agent_run_id = ?1 OR "
                           "substr(agent_run_id, 1, length(?1)) = ?1 ORDER BY 2 DESC LIMIT 2",
                           -1, &st, NULL) != SQLITE_OK) {
        set_err(err, errlen, "%s: %s", s->path, sqlite3_errmsg(s->db));
        return 1;
    }
    sqlite3_bind_text(st, 1, spec, -1, SQLITE_TRANSIENT);
    int rows = 0, exact = 0;
    while (sqlite3_step(st) == SQLITE_ROW) {
        if (rows == 0) {
            *run = sqlite3_column_int64(st, 0);
            exact = sqlite3_column_int(st, 1);
        }
        rows++;
    }
    sqlite3_finalize(st);
    if (rows == 1 || (rows > 1 && exact)) return 0;
    if (rows > 1)
        set_err(err, errlen, "run '%s' is ambiguous: more than one run id starts with it", spec);
    else
        set_err(err, errlen, "no run '%s' in %s (see `taylorscope runs`)", spec, s->path);
    return 1;
}

const char *tc_cell_text(sqlite3_stmt *st, int i, const char *nan_cols, char *buf, size_t len) {
    switch (sqlite3_column_type(st, i)) {
    case SQLITE_NULL: {
        buf[0] = 0;
        if (nan_cols) {
            const char *name = sqlite3_column_name(st, i);
            char key[160];
            snprintf(key, sizeof key, ",%s,", name ? name : "");
            if (strstr(nan_cols, key)) snprintf(buf, len, "nan");
        }
        return buf;
    }
    case SQLITE_INTEGER: snprintf(buf, len, "%lld", (long long)sqlite3_column_int64(st, i)); return buf;
    case SQLITE_FLOAT: {
        double v = sqlite3_column_double(st, i);
        if (isinf(v)) {
            snprintf(buf, len, "%s", v > 0 ? "inf" : "-inf");
        } else {
            /* the shortest text that reads back as the same double */
            snprintf(buf, len, "%.15g", v);
            if (strtod(buf, NULL) != v) snprintf(buf, len, "%.17g", v);
        }
        return buf;
    }
    default: {
        const unsigned char *t = sqlite3_column_text(st, i);
        snprintf(buf, len, "%s", t ? (const char *)t : "");
        return buf;
    }
    }
}

void tc_csv_field(FILE *f, const char *text) {
    if (!strpbrk(text, ",\"\n\r")) {
        fputs(text, f);
        return;
    }
    fputc('"', f);
    for (const char *c = text; *c; c++) {
        if (*c == '"') fputc('"', f);
        fputc(*c, f);
    }
    fputc('"', f);
}

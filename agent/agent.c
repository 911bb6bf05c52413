/*
 * agent.c -- the in-process agent (agent.h): run and step life cycle, live
 * knobs, the attention call under the gates, telemetry through the
 * transport.
 *
 * Knobs. `cfg` (with `cfg_version`) is the configuration in force; only the
 * host thread writes it, at step boundaries, holding `lock` (the control
 * thread reads it under the lock). A change from the console or the API is
 * validated at once against `pending_cfg` (= cfg plus every accepted change
 * not yet applied), given the next version number, queued, and acknowledged
 * with the step it will take effect at (the step after the current one).
 * ta_step_begin and ta_run_begin apply the queue in order and publish one
 * `applied` knob_event per request, with the actual step. A request whose
 * id was seen before (last 64 ids) gets the first answer again with
 * duplicate = true and changes nothing. Knobs that are not live are refused
 * while a run is open.
 */
#include "agent.h"

#include "internal.h"
#include "proto.h"
#include "transport.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum { DEDUP_IDS = 64, MAX_PENDING = 256 };

typedef struct {
    char id[TP_NAME_LEN];
    char origin[16];
    uint32_t version;       /* version once applied */
    int n;
    tp_knob_change *changes;
} pending_req;

typedef struct {
    char id[TP_NAME_LEN];
    uint32_t version;
    int effective_step;
} seen_id;

struct ta_agent {
    /* fixed at open */
    char model_name[TP_NAME_LEN];
    ta_model model;
    int n_layers;
    tk_backend backend;
    tk_context *ctx;
    tt_transport *tt;
    char endpoint[512];
    char agent_id[TP_NAME_LEN];
    tp_knob_desc *knob_descs;
    char (*reason_names)[TP_NAME_LEN];

    pthread_mutex_t lock;   /* guards everything below that the control thread reads */
    tk_config cfg;          /* in force */
    uint32_t cfg_version;
    tk_config pending_cfg;  /* cfg + queued changes */
    uint32_t pending_version;
    pending_req pending[MAX_PENDING];
    int n_pending;
    seen_id seen[DEDUP_IDS];
    int n_seen, seen_next;
    /* run state */
    int run_open;
    char run_id[TP_RUN_ID_LEN];
    char run_model[TP_NAME_LEN], sampler[TP_NAME_LEN];
    int total_steps;
    int64_t started_ns;
    tk_config initial;
    int step;               /* step begun, -1 none yet */
    int in_step;
    int last_step;          /* last step ended, -1 none */
    int steps_done;
    unsigned run_counter;

    /* host thread only */
    double step_t0;
    double sigma;
    uint64_t call_index;
    tai_agg agg;
    tai_tune tune;
};

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

static int64_t unix_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void set_err(char *err, size_t errlen, const char *msg) {
    if (err && errlen) snprintf(err, errlen, "%s", msg);
}

/* ------------------------------------------------------------------ */
/* Publishing helpers (any thread)                                     */
/* ------------------------------------------------------------------ */

static void publish(ta_agent *a, tp_msg *m) {
    if (!a->tt || !a->run_open) return; /* nothing is published between runs */
    snprintf(m->run_id, sizeof m->run_id, "%s", a->run_id);
    m->t_ns = unix_ns();
    tt_publish(a->tt, m);
}

/* Called with a->lock held. */
static void fill_header(ta_agent *a, tp_header *h) {
    memset(h, 0, sizeof *h);
    snprintf(h->agent_id, sizeof h->agent_id, "%s", a->agent_id);
    snprintf(h->agent_version, sizeof h->agent_version, "%s", TA_VERSION);
    snprintf(h->model_name, sizeof h->model_name, "%s", a->run_model);
    snprintf(h->sampler, sizeof h->sampler, "%s", a->sampler);
    snprintf(h->backend, sizeof h->backend, "%s", tk_backend_name(a->backend));
    snprintf(h->model.name, sizeof h->model.name, "%s", a->model_name);
    h->model.heads = a->model.heads;
    h->model.head_dim = a->model.head_dim;
    h->model.n_double = a->model.n_double;
    h->model.n_single = a->model.n_single;
    h->model.text_tokens = a->model.text_tokens;
    h->model.grid_h = a->model.grid_h;
    h->model.grid_w = a->model.grid_w;
    h->total_steps = a->total_steps;
    h->started_ns = a->started_ns;
    h->n_knobs = tk_knob_count();
    h->knobs = a->knob_descs;
    h->n_reasons = TK_REASON_COUNT;
    h->reasons = a->reason_names;
    h->initial = a->initial;
    h->current = a->cfg;
    h->config_version = a->cfg_version;
    h->last_step = a->last_step;
}

static int cb_header(void *user, const char *run_id, tp_header *h) {
    ta_agent *a = user;
    pthread_mutex_lock(&a->lock);
    int rc = -1;
    if (a->run_open && strcmp(run_id, a->run_id) == 0) {
        fill_header(a, h);
        rc = 0;
    }
    pthread_mutex_unlock(&a->lock);
    return rc;
}

static void cb_progress(void *user, int *step, int *total) {
    ta_agent *a = user;
    pthread_mutex_lock(&a->lock);
    *step = a->step;
    *total = a->total_steps;
    pthread_mutex_unlock(&a->lock);
}

/* ------------------------------------------------------------------ */
/* Knob changes                                                        */
/* ------------------------------------------------------------------ */

/* The step a change queued now takes effect at. Lock held. */
static int next_step(const ta_agent *a) {
    if (a->in_step) return a->step + 1;
    if (a->last_step >= 0) return a->last_step + 1;
    return a->step >= 0 ? a->step + 1 : 0;
}

static void publish_knob_event(ta_agent *a, const char *id, const char *origin,
                               tp_knob_status status, uint32_t version, int eff_step,
                               const char *error, int n, const tp_knob_change *ch) {
    tp_msg m;
    memset(&m, 0, sizeof m);
    m.type = TP_MSG_KNOB_EVENT;
    tp_knob_event *k = &m.u.knob;
    snprintf(k->request_id, sizeof k->request_id, "%s", id ? id : "");
    snprintf(k->origin, sizeof k->origin, "%s", origin && *origin ? origin : "console");
    k->status = status;
    k->config_version = version;
    k->effective_step = eff_step;
    if (error) snprintf(k->error, sizeof k->error, "%s", error);
    k->n_changes = n;
    k->changes = (tp_knob_change *)ch;
    publish(a, &m);
}

/*
 * Validates and queues a request (lock held). Fills rep (ok, error,
 * config_version, effective_step, duplicate, config). Returns 0 if queued
 * or a duplicate, nonzero if refused.
 */
static int queue_changes(ta_agent *a, const char *id, const char *origin, int64_t expected,
                         int n, const tp_knob_change *ch, tp_reply *rep) {
    rep->step = a->step;
    rep->total_steps = a->total_steps;
    snprintf(rep->run_id, sizeof rep->run_id, "%s", a->run_id);
    if (id && *id) {
        for (int i = 0; i < a->n_seen; i++)
            if (strcmp(a->seen[i].id, id) == 0) {
                rep->ok = 1;
                rep->duplicate = 1;
                rep->config_version = a->seen[i].version;
                rep->effective_step = a->seen[i].effective_step;
                rep->has_config = 1;
                rep->config = a->pending_cfg;
                return 0;
            }
    }
    char err[256] = "";
    tk_config next = a->pending_cfg;
    if (n <= 0) {
        snprintf(err, sizeof err, "no knob changes given");
    } else if (n > MAX_PENDING) {
        snprintf(err, sizeof err, "too many knob changes (%d > %d)", n, MAX_PENDING);
    } else if (a->n_pending >= MAX_PENDING) {
        snprintf(err, sizeof err, "too many changes waiting for the next step; try again");
    } else if (expected >= 0 && (uint64_t)expected != a->pending_version) {
        snprintf(err, sizeof err,
                 "config version is %u, the request expected %lld; nothing applied "
                 "(get the knobs again and retry)",
                 a->pending_version, (long long)expected);
    } else {
        for (int i = 0; i < n && !err[0]; i++) {
            const tk_knob *k = tk_knob_find(ch[i].name);
            if (!k) {
                snprintf(err, sizeof err, "unknown knob '%.64s'; nothing applied", ch[i].name);
            } else if (!k->live && a->run_open) {
                snprintf(err, sizeof err,
                         "knob %s cannot change during a run (set it before run_begin); "
                         "nothing applied",
                         k->name);
            } else {
                char e[200];
                if (tk_config_set(&next, k->name, ch[i].value, e, sizeof e) != 0)
                    snprintf(err, sizeof err, "%s; nothing applied", e);
            }
        }
        if (!err[0]) {
            char e[200];
            if (tk_config_validate(&next, e, sizeof e) != 0)
                snprintf(err, sizeof err, "%s; nothing applied", e);
        }
    }
    if (err[0]) {
        rep->ok = 0;
        snprintf(rep->error, sizeof rep->error, "%s", err);
        rep->config_version = a->pending_version;
        rep->effective_step = -1;
        publish_knob_event(a, id, origin, TP_KNOB_REJECTED, a->pending_version, -1, err,
                           n > 0 && n <= MAX_PENDING ? n : 0, ch);
        return -1;
    }
    pending_req *p = &a->pending[a->n_pending];
    p->changes = calloc((size_t)n, sizeof *p->changes);
    if (!p->changes) {
        rep->ok = 0;
        snprintf(rep->error, sizeof rep->error, "out of memory; nothing applied");
        return -1;
    }
    a->n_pending++;
    memcpy(p->changes, ch, (size_t)n * sizeof *ch);
    for (int i = 0; i < n; i++) {
        /* canonical names and values (e.g. "qk-norm-power" -> "qk_norm_power", "1" -> "true") */
        const tk_knob *k = tk_knob_find(ch[i].name);
        snprintf(p->changes[i].name, sizeof p->changes[i].name, "%s", k->name);
        tk_config_format(&next, k, p->changes[i].value, sizeof p->changes[i].value);
        p->changes[i].old_value[0] = '\0';
    }
    p->n = n;
    snprintf(p->id, sizeof p->id, "%s", id ? id : "");
    snprintf(p->origin, sizeof p->origin, "%s", origin && *origin ? origin : "console");
    a->pending_cfg = next;
    p->version = ++a->pending_version;
    int eff = next_step(a);
    if (id && *id) {
        seen_id *s = &a->seen[a->seen_next];
        snprintf(s->id, sizeof s->id, "%s", id);
        s->version = p->version;
        s->effective_step = eff;
        a->seen_next = (a->seen_next + 1) % DEDUP_IDS;
        if (a->n_seen < DEDUP_IDS) a->n_seen++;
    }
    rep->ok = 1;
    rep->config_version = p->version;
    rep->effective_step = eff;
    rep->has_config = 1;
    rep->config = next;
    publish_knob_event(a, p->id, p->origin, TP_KNOB_REQUESTED, p->version, eff, NULL, p->n,
                       p->changes);
    return 0;
}

/* Applies every queued request in order (host thread, lock held). */
static void apply_pending(ta_agent *a, int step) {
    for (int r = 0; r < a->n_pending; r++) {
        pending_req *p = &a->pending[r];
        for (int i = 0; i < p->n; i++) {
            const tk_knob *k = tk_knob_find(p->changes[i].name);
            char e[200];
            if (!k) continue;
            tk_config_format(&a->cfg, k, p->changes[i].old_value, sizeof p->changes[i].old_value);
            /* validated against the same chain when queued, so it applies */
            if (tk_config_set(&a->cfg, k->name, p->changes[i].value, e, sizeof e) != 0)
                fprintf(stderr, "agent: queued knob change failed to apply: %s\n", e);
        }
        a->cfg_version = p->version;
        publish_knob_event(a, p->id, p->origin, TP_KNOB_APPLIED, p->version, step, NULL, p->n,
                           p->changes);
        free(p->changes);
        p->changes = NULL;
    }
    a->n_pending = 0;
}

static void cb_control(void *user, const tp_request *q, tp_reply *rep) {
    ta_agent *a = user;
    pthread_mutex_lock(&a->lock);
    switch (q->op) {
    case TP_OP_SET_KNOBS:
        queue_changes(a, q->request_id, q->origin[0] ? q->origin : "console", q->expected_version,
                      q->n_changes, q->changes, rep);
        break;
    case TP_OP_GET_KNOBS:
        rep->has_config = 1;
        rep->config = a->cfg;
        __attribute__((fallthrough)); /* the state figures too */
    case TP_OP_GET_STATE:
    default:
        rep->ok = 1;
        snprintf(rep->run_id, sizeof rep->run_id, "%s", a->run_id);
        rep->step = a->step;
        rep->total_steps = a->total_steps;
        rep->config_version = a->cfg_version;
        rep->effective_step = -1;
        break;
    }
    pthread_mutex_unlock(&a->lock);
}

int ta_set_knob(ta_agent *a, const char *name, const char *value, int *effective_step, char *err,
                size_t errlen) {
    if (!a || !name || !value) {
        set_err(err, errlen, "ta_set_knob: NULL argument");
        return TA_ERR;
    }
    tp_knob_change ch;
    memset(&ch, 0, sizeof ch);
    if (strlen(name) >= sizeof ch.name || strlen(value) >= sizeof ch.value) {
        set_err(err, errlen, "knob name or value too long");
        return TA_ERR;
    }
    snprintf(ch.name, sizeof ch.name, "%s", name);
    snprintf(ch.value, sizeof ch.value, "%s", value);
    tp_reply rep;
    memset(&rep, 0, sizeof rep);
    pthread_mutex_lock(&a->lock);
    int rc = queue_changes(a, "", "api", -1, 1, &ch, &rep);
    pthread_mutex_unlock(&a->lock);
    if (rc != 0) {
        set_err(err, errlen, rep.error);
        return TA_ERR;
    }
    if (effective_step) *effective_step = rep.effective_step;
    return TA_OK;
}

const tk_config *ta_config(const ta_agent *a) { return &a->cfg; }
uint32_t ta_config_version(const ta_agent *a) { return a->cfg_version; }

/* ------------------------------------------------------------------ */
/* Open / close                                                        */
/* ------------------------------------------------------------------ */

int ta_open(const ta_options *opts, ta_agent **out, char *err, size_t errlen) {
    if (!out) return TA_ERR;
    *out = NULL;
    if (!opts) {
        set_err(err, errlen, "ta_open: no options");
        return TA_ERR;
    }
    const ta_model *m = &opts->model;
    if (m->heads <= 0 || m->head_dim <= 0 || m->n_double < 0 || m->n_single < 0 ||
        m->n_double + m->n_single <= 0 || m->text_tokens < 0 || m->grid_h < 0 || m->grid_w < 0) {
        snprintf(err, errlen,
                 "ta_open: bad model (heads=%d head_dim=%d n_double=%d n_single=%d "
                 "text_tokens=%d grid=%dx%d)",
                 m->heads, m->head_dim, m->n_double, m->n_single, m->text_tokens, m->grid_h,
                 m->grid_w);
        return TA_ERR;
    }
    if (m->n_double + m->n_single > 100000) {
        set_err(err, errlen, "ta_open: more than 100000 layers");
        return TA_ERR;
    }
    tk_config cfg;
    if (opts->knobs) {
        cfg = *opts->knobs;
        /* every field must be inside its knob's range */
        for (int i = 0; i < tk_knob_count(); i++) {
            const tk_knob *k = tk_knob_at(i);
            tk_config probe = cfg;
            char e[200];
            if (tk_config_set_number(&probe, k, tk_config_get(&cfg, k), e, sizeof e) != 0) {
                snprintf(err, errlen, "ta_open: %s", e);
                return TA_ERR;
            }
        }
        if (tk_config_validate(&cfg, err, errlen) != 0) return TA_ERR;
    } else {
        tk_config_defaults(&cfg);
    }
    ta_agent *a = calloc(1, sizeof *a);
    if (!a) {
        set_err(err, errlen, "out of memory");
        return TA_ERR;
    }
    pthread_mutex_init(&a->lock, NULL);
    a->model = *m;
    snprintf(a->model_name, sizeof a->model_name, "%s", m->name ? m->name : "model");
    a->model.name = a->model_name;
    a->n_layers = m->n_double + m->n_single;
    a->backend = opts->backend;
    a->cfg = a->pending_cfg = a->initial = cfg;
    a->cfg_version = a->pending_version = 1;
    a->step = a->last_step = -1;
    char host[40] = "host";
    gethostname(host, sizeof host - 1);
    host[sizeof host - 1] = '\0';
    snprintf(a->agent_id, sizeof a->agent_id, "%.40s:%d", host, (int)getpid());
    a->knob_descs = calloc((size_t)tk_knob_count(), sizeof *a->knob_descs);
    a->reason_names = calloc(TK_REASON_COUNT, sizeof *a->reason_names);
    if (!a->knob_descs || !a->reason_names || tai_agg_init(&a->agg, a->n_layers) != 0) {
        set_err(err, errlen, "out of memory");
        goto fail;
    }
    static const char *const type_names[] = {"bool", "int", "float", "enum"};
    for (int i = 0; i < tk_knob_count(); i++) {
        const tk_knob *k = tk_knob_at(i);
        tp_knob_desc *d = &a->knob_descs[i];
        snprintf(d->name, sizeof d->name, "%s", k->name);
        snprintf(d->type, sizeof d->type, "%s", type_names[k->type]);
        snprintf(d->group, sizeof d->group, "%s", k->group);
        d->live = k->live;
        d->def = k->def, d->min = k->min, d->max = k->max;
        snprintf(d->choices, sizeof d->choices, "%s", k->choices);
        snprintf(d->description, sizeof d->description, "%s", k->description);
    }
    for (int i = 0; i < TK_REASON_COUNT; i++)
        snprintf(a->reason_names[i], TP_NAME_LEN, "%s", tk_reason_name((tk_reason)i));
    if (tk_context_open(opts->backend, &a->ctx, err, errlen) != 0) goto fail;

    if (!opts->endpoint || opts->endpoint[0]) {
        char pub[512], ctl[512];
        if (!opts->endpoint) {
            /* the endpoint is named after the model, in the characters a name may hold */
            char name[33];
            snprintf(name, sizeof name, "%.32s", a->model_name);
            for (char *p = name; *p; p++)
                if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                      (*p >= '0' && *p <= '9') || *p == '-' || *p == '.'))
                    *p = '_';
            if (tp_default_endpoints(name, pub, sizeof pub, ctl, sizeof ctl, err, errlen) != 0)
                goto fail;
        } else {
            snprintf(pub, sizeof pub, "%s", opts->endpoint);
            if (tp_control_url_for(pub, ctl, sizeof ctl, err, errlen) != 0) goto fail;
        }
        tt_callbacks cb = {a, cb_control, cb_header, cb_progress};
        if (tt_open(pub, ctl, opts->queue_len, opts->replay_ring, opts->header_every_s, &cb,
                    &a->tt, err, errlen) != 0)
            goto fail;
        snprintf(a->endpoint, sizeof a->endpoint, "%s", tt_pub_url(a->tt));
    }
    *out = a;
    return TA_OK;
fail:
    ta_close(a);
    return TA_ERR;
}

void ta_close(ta_agent *a) {
    if (!a) return;
    if (a->run_open) ta_run_end(a, TA_RUN_FAILED, "agent closed during the run");
    tt_close(a->tt); /* before anything its threads read */
    if (a->ctx) tk_context_close(a->ctx);
    for (int i = 0; i < a->n_pending; i++) free(a->pending[i].changes);
    tai_agg_free(&a->agg);
    tai_tune_free(&a->tune);
    free(a->knob_descs);
    free(a->reason_names);
    pthread_mutex_destroy(&a->lock);
    free(a);
}

const char *ta_endpoint(const ta_agent *a) { return a->endpoint; }
int ta_subscribers(const ta_agent *a) { return a->tt ? tt_subscribers(a->tt) : 0; }
const char *ta_run_id(const ta_agent *a) { return a->run_id; }
uint64_t ta_dropped(const ta_agent *a) { return a->tt ? tt_dropped(a->tt) : 0; }
uint64_t ta_published(const ta_agent *a) { return a->tt ? tt_published(a->tt) : 0; }

/* ------------------------------------------------------------------ */
/* Runs and steps                                                      */
/* ------------------------------------------------------------------ */

int ta_run_begin(ta_agent *a, int total_steps, const char *model_name, const char *sampler,
                 char *err, size_t errlen) {
    if (!a) return TA_ERR;
    if (total_steps < 0) {
        set_err(err, errlen, "ta_run_begin: total_steps must be >= 0");
        return TA_ERR;
    }
    pthread_mutex_lock(&a->lock);
    if (a->run_open) {
        pthread_mutex_unlock(&a->lock);
        set_err(err, errlen, "ta_run_begin: a run is open; end it with ta_run_end first");
        return TA_ERR;
    }
    a->run_counter++;
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    char stamp[32];
    strftime(stamp, sizeof stamp, "%Y%m%dT%H%M%S", &tm);
    snprintf(a->run_id, sizeof a->run_id, "%.15s-%d-%u", stamp, (int)getpid() % 10000000,
             a->run_counter % 100000);
    snprintf(a->run_model, sizeof a->run_model, "%s", model_name ? model_name : a->model_name);
    snprintf(a->sampler, sizeof a->sampler, "%s", sampler ? sampler : "");
    a->total_steps = total_steps;
    a->started_ns = unix_ns();
    a->step = a->last_step = -1;
    a->in_step = 0;
    a->steps_done = 0;
    /* changes queued between runs: in force from the start, silently part
     * of the initial config (there was no run to record them against) */
    for (int r = 0; r < a->n_pending; r++) {
        pending_req *p = &a->pending[r];
        for (int i = 0; i < p->n; i++) {
            char e[200];
            tk_config_set(&a->cfg, p->changes[i].name, p->changes[i].value, e, sizeof e);
        }
        a->cfg_version = p->version;
        free(p->changes);
        p->changes = NULL;
    }
    a->n_pending = 0;
    a->initial = a->cfg;
    a->run_open = 1;
    tp_msg m;
    memset(&m, 0, sizeof m);
    m.type = TP_MSG_HEADER;
    fill_header(a, &m.u.header);
    publish(a, &m);
    pthread_mutex_unlock(&a->lock);
    tk_context_reset(a->ctx);
    a->call_index = 0;
    if (tai_tune_begin(&a->tune, &a->cfg) != 0) {
        set_err(err, errlen, "ta_run_begin: out of memory for the auto-tune");
        return TA_ERR;
    }
    return TA_OK;
}

/* Ends the auto-tune search at a step boundary: the best candidate becomes
 * a queued change with origin "autotune" (lock held). */
static void tune_boundary(ta_agent *a) {
    if (!a->tune.active) return;
    if (--a->tune.steps_left > 0) return;
    a->tune.active = 0;
    const tai_candidate *best = tai_tune_best(&a->tune);
    if (!best) return;
    tp_knob_change ch[3];
    memset(ch, 0, sizeof ch);
    snprintf(ch[0].name, sizeof ch[0].name, "qk_norm_power");
    snprintf(ch[0].value, sizeof ch[0].value, "%.9g", best->power);
    snprintf(ch[1].name, sizeof ch[1].name, "qk_norm_clip");
    snprintf(ch[1].value, sizeof ch[1].value, "%.9g", best->clip);
    snprintf(ch[2].name, sizeof ch[2].name, "scale_mul");
    snprintf(ch[2].value, sizeof ch[2].value, "%.9g", best->scale_mul);
    tp_reply rep;
    memset(&rep, 0, sizeof rep);
    if (queue_changes(a, "", "autotune", -1, 3, ch, &rep) != 0)
        fprintf(stderr, "agent: auto-tune result refused: %s\n", rep.error);
}

int ta_step_begin(ta_agent *a, int step, double sigma) {
    if (!a) return TA_ERR;
    pthread_mutex_lock(&a->lock);
    if (a->in_step) {
        /* a step_begin without step_end: close the previous one quietly */
        a->in_step = 0;
    }
    if (a->tune.active && a->step >= 0) tune_boundary(a);
    apply_pending(a, step);
    a->step = step;
    a->in_step = 1;
    pthread_mutex_unlock(&a->lock);
    a->sigma = sigma;
    tai_agg_begin(&a->agg, step, sigma, a->cfg_version);
    a->step_t0 = now_ms();
    return TA_OK;
}

int ta_step_end(ta_agent *a) {
    if (!a) return TA_ERR;
    double wall = now_ms() - a->step_t0;
    if (!a->in_step) return TA_ERR;
    const tp_step *s = tai_agg_finish(&a->agg, wall, a->cfg.per_layer_records);
    if (a->tt && a->run_open) {
        tp_msg m;
        m.type = TP_MSG_STEP;
        m.version = 0;
        m.seq = 0;
        m.u.step = *s;
        snprintf(m.run_id, sizeof m.run_id, "%s", a->run_id);
        m.t_ns = unix_ns();
        tt_publish(a->tt, &m);
    }
    pthread_mutex_lock(&a->lock);
    a->in_step = 0;
    a->last_step = a->step;
    a->steps_done++;
    pthread_mutex_unlock(&a->lock);
    return TA_OK;
}

int ta_run_end(ta_agent *a, int status, const char *message) {
    if (!a) return TA_ERR;
    pthread_mutex_lock(&a->lock);
    if (!a->run_open) {
        pthread_mutex_unlock(&a->lock);
        return TA_ERR;
    }
    if (a->in_step) {
        pthread_mutex_unlock(&a->lock);
        ta_step_end(a);
        pthread_mutex_lock(&a->lock);
    }
    tp_msg m;
    memset(&m, 0, sizeof m);
    m.type = TP_MSG_RUN_END;
    snprintf(m.u.end.status, sizeof m.u.end.status, "%s",
             status == TA_RUN_FINISHED ? "finished" : "failed");
    m.u.end.steps_done = a->steps_done;
    snprintf(m.u.end.message, sizeof m.u.end.message, "%s", message ? message : "");
    publish(a, &m);
    a->run_open = 0;
    pthread_mutex_unlock(&a->lock);
    tai_tune_free(&a->tune);
    if (a->tt) tt_flush(a->tt, 1000);
    return TA_OK;
}

/* ------------------------------------------------------------------ */
/* Attention                                                           */
/* ------------------------------------------------------------------ */

static void to_tk_call(const ta_agent *a, const ta_call *c, int layer, tk_call *t) {
    t->B = c->B, t->H = c->H, t->Nq = c->Nq, t->Nk = c->Nk, t->D = c->D, t->Dv = c->Dv;
    t->dtype = c->dtype;
    t->q = c->q, t->k = c->k, t->v = c->v, t->q0 = c->q0, t->k0 = c->k0;
    t->key_mask = c->key_mask;
    t->o = c->o;
    /* the model's layout applies to calls of the model's token count; any
     * other call (cross attention, a smaller image) has no known grid */
    int tokens = a->model.text_tokens + a->model.grid_h * a->model.grid_w;
    int grid_ok = c->Nq == tokens && c->Nk == tokens;
    t->text_tokens = grid_ok || (a->model.text_tokens <= c->Nq && a->model.text_tokens <= c->Nk)
                         ? a->model.text_tokens
                         : 0;
    t->grid_h = grid_ok ? a->model.grid_h : 0;
    t->grid_w = grid_ok ? a->model.grid_w : 0;
    t->scale = c->scale;
    t->layer = layer;
    t->step = a->step;
    t->sigma = a->sigma;
    t->stream = c->stream;
}

static int global_layer(const ta_agent *a, const ta_call *c) {
    if (c->block_type == TA_BLOCK_DOUBLE) {
        if (c->block_index < 0 || c->block_index >= a->model.n_double) return -1;
        return c->block_index;
    }
    if (c->block_index < 0 || c->block_index >= a->model.n_single) return -1;
    return a->model.n_double + c->block_index;
}

int ta_attention(ta_agent *a, const ta_call *call, tk_result *res) {
    if (!a || !call || !res) return TA_ERR;
    double t0 = now_ms();
    int layer = global_layer(a, call);
    const tk_config *cfg = &a->cfg;
    res->reason = TK_REASON_NONE;
    if (layer < 0) {
        memset(res, 0, sizeof *res);
        res->reason = TK_REASON_UNSUPPORTED_SHAPE;
        res->path = TK_PATH_FALLBACK;
        res->window = -1;
        snprintf(res->detail, sizeof res->detail, "%s block index %d outside the model (%d/%d)",
                 call->block_type == TA_BLOCK_DOUBLE ? "double" : "single", call->block_index,
                 a->model.n_double, a->model.n_single);
    } else {
        char detail[sizeof res->detail];
        tk_reason r = tai_gate(cfg, layer, a->sigma, call, detail, sizeof detail);
        if (r != TK_REASON_NONE) {
            memset(res, 0, sizeof *res);
            res->reason = r;
            res->path = TK_PATH_FALLBACK;
            res->window = -1;
            memcpy(res->detail, detail, sizeof detail);
        } else {
            tk_call tc;
            to_tk_call(a, call, layer, &tc);
            tk_config scratch;
            int cand = -1;
            const tk_config *run_cfg = tai_tune_config(&a->tune, cfg, &scratch, &cand);
            if (!run_cfg) run_cfg = cfg;
            tk_stats_request sr, *srp = NULL;
            uint64_t ci = a->call_index++;
            int every = cfg->quality_every > 0 ? cfg->quality_every : 1;
            if ((cfg->stats && ci % (uint64_t)every == 0) || cand >= 0) {
                sr.quality_samples = cfg->quality_samples > 0 ? cfg->quality_samples
                                                              : (cand >= 0 ? 16 : 0);
                sr.qk_samples = 64;
                sr.seed = (uint64_t)cfg->seed * 0x9E3779B97F4A7C15ull ^
                          ((uint64_t)(uint32_t)a->step << 20) ^ (uint64_t)layer;
                srp = &sr;
            }
            if (tk_attention(a->ctx, &tc, run_cfg, (tk_mode)cfg->mode, srp, res) != TK_OK) {
                memset(res, 0, sizeof *res);
                res->reason = TK_REASON_BACKEND_ERROR;
                res->path = TK_PATH_FALLBACK;
                snprintf(res->detail, sizeof res->detail, "tk_attention refused the call");
            }
            if (cand >= 0) tai_tune_score(&a->tune, cand, res);
        }
    }
    double ms = now_ms() - t0;
    if (a->in_step) {
        double kernel_ms = (res->stats.have & TK_HAVE_TIME) ? res->stats.kernel_ms : ms;
        tai_agg_add(&a->agg, layer, res, res->reason == TK_REASON_NONE ? kernel_ms : ms);
    }
    return TA_OK;
}

int ta_exact_attention(ta_agent *a, const ta_call *call, char *err, size_t errlen) {
    if (!a || !call) {
        set_err(err, errlen, "ta_exact_attention: NULL argument");
        return TA_ERR;
    }
    double t0 = now_ms();
    int layer = global_layer(a, call);
    tk_call tc;
    memset(&tc, 0, sizeof tc);
    to_tk_call(a, call, layer, &tc);
    tk_result res;
    int rc = tk_attention(a->ctx, &tc, &a->cfg, TK_MODE_EXACT, NULL, &res);
    if (a->in_step) tai_agg_add_host_ms(&a->agg, now_ms() - t0);
    if (rc != TK_OK || res.reason != TK_REASON_NONE) {
        snprintf(err, errlen, "exact attention failed: %s%s%s",
                 rc != TK_OK ? "bad arguments" : tk_reason_name(res.reason),
                 res.detail[0] && rc == TK_OK ? ": " : "", rc == TK_OK ? res.detail : "");
        return TA_ERR;
    }
    return TA_OK;
}

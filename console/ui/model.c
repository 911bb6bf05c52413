/* model.c -- the view model (see model.h): collection only, no drawing. */
#include "ui/model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define STALE_AFTER_NS (5LL * 1000000000LL) /* header every 2 s, heartbeats more often */
#define RATE_WINDOW_NS (1000000000LL)

const char *tc_conn_state_name(tc_conn_state s) {
    switch (s) {
    case TC_CONN_WAITING: return "waiting";
    case TC_CONN_LIVE: return "live";
    case TC_CONN_STALE: return "stale";
    case TC_CONN_ENDED: return "ended";
    case TC_CONN_HISTORY: return "history";
    }
    return "?";
}

void tc_model_init(tc_model *m) {
    memset(m, 0, sizeof *m);
    m->hb_step = -1;
    m->edit.effective_step = -1;
}

void tc_free_step(tp_step *s) {
    free(s->layers);
    s->layers = NULL;
    s->n_layers = 0;
}

int tc_copy_step(tp_step *dst, const tp_step *src) {
    *dst = *src;
    dst->layers = NULL;
    if (src->n_layers > 0 && src->layers) {
        dst->layers = malloc((size_t)src->n_layers * sizeof *dst->layers);
        if (!dst->layers) {
            dst->n_layers = 0;
            return -1;
        }
        memcpy(dst->layers, src->layers, (size_t)src->n_layers * sizeof *dst->layers);
    } else {
        dst->n_layers = 0;
    }
    return 0;
}

void tc_free_header(tp_header *h) {
    free(h->knobs);
    free(h->reasons);
    h->knobs = NULL;
    h->reasons = NULL;
    h->n_knobs = h->n_reasons = 0;
}

int tc_copy_header(tp_header *dst, const tp_header *src) {
    *dst = *src;
    dst->knobs = NULL;
    dst->reasons = NULL;
    dst->n_knobs = dst->n_reasons = 0;
    if (src->n_knobs > 0 && src->knobs) {
        dst->knobs = malloc((size_t)src->n_knobs * sizeof *dst->knobs);
        if (!dst->knobs) return -1;
        memcpy(dst->knobs, src->knobs, (size_t)src->n_knobs * sizeof *dst->knobs);
        dst->n_knobs = src->n_knobs;
    }
    if (src->n_reasons > 0 && src->reasons) {
        dst->reasons = malloc((size_t)src->n_reasons * sizeof *dst->reasons);
        if (!dst->reasons) {
            tc_free_header(dst);
            return -1;
        }
        memcpy(dst->reasons, src->reasons, (size_t)src->n_reasons * sizeof *dst->reasons);
        dst->n_reasons = src->n_reasons;
    }
    return 0;
}

void tc_free_knob_event(tp_knob_event *e) {
    free(e->changes);
    e->changes = NULL;
    e->n_changes = 0;
}

int tc_copy_knob_event(tp_knob_event *dst, const tp_knob_event *src) {
    *dst = *src;
    dst->changes = NULL;
    dst->n_changes = 0;
    if (src->n_changes > 0 && src->changes) {
        dst->changes = malloc((size_t)src->n_changes * sizeof *dst->changes);
        if (!dst->changes) return -1;
        memcpy(dst->changes, src->changes, (size_t)src->n_changes * sizeof *dst->changes);
        dst->n_changes = src->n_changes;
    }
    return 0;
}

void tc_model_reset_run(tc_model *m) {
    for (int i = 0; i < m->n_steps; i++) tc_free_step(&m->steps[i]);
    for (int i = 0; i < m->n_knob_events; i++) tc_free_knob_event(&m->knob_events[i]);
    if (m->have_header) tc_free_header(&m->header);
    free(m->steps);
    free(m->knob_events);
    free(m->gaps);
    char endpoint[sizeof m->endpoint];
    memcpy(endpoint, m->endpoint, sizeof endpoint);
    tc_conn_state conn = m->conn;
    int64_t first = m->first_msg_ns, last = m->last_msg_ns;
    double rate = m->msg_rate_hz;
    uint64_t msgs = m->msgs, decode_errors = m->decode_errors;
    tc_model_init(m);
    memcpy(m->endpoint, endpoint, sizeof endpoint);
    m->conn = conn == TC_CONN_HISTORY ? conn : TC_CONN_WAITING;
    m->first_msg_ns = first;
    m->last_msg_ns = last;
    m->msg_rate_hz = rate;
    m->msgs = msgs;
    m->decode_errors = decode_errors;
}

void tc_model_free(tc_model *m) {
    tc_model_reset_run(m);
    tc_model_init(m);
}

/* Index of the first step record with step number >= step. */
static int step_lower_bound(const tc_model *m, int step) {
    int lo = 0, hi = m->n_steps;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (m->steps[mid].step < step)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

int tc_model_put_step(tc_model *m, const tp_step *s, char *err, size_t errlen) {
    int at = step_lower_bound(m, s->step);
    if (at < m->n_steps && m->steps[at].step == s->step) return 0; /* replayed duplicate */
    if (m->n_steps == m->cap_steps) {
        int cap = m->cap_steps ? m->cap_steps * 2 : 64;
        tp_step *n = realloc(m->steps, (size_t)cap * sizeof *n);
        if (!n) {
            snprintf(err, errlen, "out of memory keeping step %d", s->step);
            return -1;
        }
        m->steps = n;
        m->cap_steps = cap;
    }
    tp_step copy;
    if (tc_copy_step(&copy, s) != 0) {
        snprintf(err, errlen, "out of memory keeping step %d", s->step);
        return -1;
    }
    memmove(&m->steps[at + 1], &m->steps[at], (size_t)(m->n_steps - at) * sizeof *m->steps);
    m->steps[at] = copy;
    m->n_steps++;
    if (copy.n_layers > m->max_layers) m->max_layers = copy.n_layers;
    return 0;
}

int tc_model_put_knob_event(tc_model *m, const tp_knob_event *e, char *err, size_t errlen) {
    if (m->n_knob_events == m->cap_knob_events) {
        int cap = m->cap_knob_events ? m->cap_knob_events * 2 : 16;
        tp_knob_event *n = realloc(m->knob_events, (size_t)cap * sizeof *n);
        if (!n) {
            snprintf(err, errlen, "out of memory keeping a knob event");
            return -1;
        }
        m->knob_events = n;
        m->cap_knob_events = cap;
    }
    if (tc_copy_knob_event(&m->knob_events[m->n_knob_events], e) != 0) {
        snprintf(err, errlen, "out of memory keeping a knob event");
        return -1;
    }
    m->n_knob_events++;
    /* An applied change updates the config in force. Values come from the
     * agent, already validated; one that fails here is left as it was. */
    if (e->status == TP_KNOB_APPLIED && m->have_config) {
        char e2[256];
        for (int i = 0; i < e->n_changes; i++)
            (void)tk_config_set(&m->config, e->changes[i].name, e->changes[i].value, e2, sizeof e2);
        if (e->config_version) m->config_version = e->config_version;
    }
    /* The editor's own request: pending -> applied at step N, or rejected. */
    if (m->edit.request_id[0] && !strcmp(m->edit.request_id, e->request_id)) {
        if (e->status == TP_KNOB_APPLIED) {
            m->edit.state = TC_EDIT_APPLIED;
            m->edit.effective_step = e->effective_step;
        } else if (e->status == TP_KNOB_REJECTED) {
            m->edit.state = TC_EDIT_REJECTED;
            snprintf(m->edit.error, sizeof m->edit.error, "%s", e->error);
        } else if (m->edit.state == TC_EDIT_SENDING) {
            m->edit.state = TC_EDIT_PENDING;
            m->edit.effective_step = e->effective_step;
        }
    }
    return 0;
}

int tc_model_put_header(tc_model *m, const tp_header *h, char *err, size_t errlen) {
    tp_header copy;
    if (tc_copy_header(&copy, h) != 0) {
        snprintf(err, errlen, "out of memory keeping the run header");
        return -1;
    }
    int first = !m->have_header;
    if (m->have_header) tc_free_header(&m->header);
    m->header = copy;
    m->have_header = 1;
    /* The header's `current` is authoritative when it is newer than what
     * knob events told us (or on the first header). */
    if (first || !m->have_config || h->config_version >= m->config_version) {
        m->config = h->current;
        m->config_version = h->config_version;
        m->have_config = 1;
    }
    return 0;
}

static int add_gap_kind(tc_model *m, uint64_t from, uint64_t to, int backfill) {
    if (m->n_gaps == m->cap_gaps) {
        int cap = m->cap_gaps ? m->cap_gaps * 2 : 8;
        tc_gap *n = realloc(m->gaps, (size_t)cap * sizeof *n);
        if (!n) return -1;
        m->gaps = n;
        m->cap_gaps = cap;
    }
    m->gaps[m->n_gaps++] = (tc_gap){from, to, TC_GAP_OPEN, backfill};
    return 0;
}

static int add_gap(tc_model *m, uint64_t from, uint64_t to) { return add_gap_kind(m, from, to, 0); }

void tc_model_gap_result(tc_model *m, uint64_t from_seq, uint64_t to_seq, uint64_t gone) {
    for (int i = 0; i < m->n_gaps; i++) {
        tc_gap *g = &m->gaps[i];
        if (g->from_seq == from_seq && g->to_seq == to_seq && g->state != TC_GAP_RECOVERED &&
            g->state != TC_GAP_LOST) {
            g->state = gone ? TC_GAP_LOST : TC_GAP_RECOVERED;
            if (!g->backfill) m->lost += gone;
        }
    }
}

static void count_rate(tc_model *m, int64_t now_ns) {
    if (m->rate_window_ns == 0) m->rate_window_ns = now_ns;
    int64_t span = now_ns - m->rate_window_ns;
    if (span >= RATE_WINDOW_NS) {
        double inst = (double)m->rate_window_msgs * 1e9 / (double)span;
        m->msg_rate_hz = m->msg_rate_hz == 0 ? inst : 0.5 * m->msg_rate_hz + 0.5 * inst;
        m->rate_window_ns = now_ns;
        m->rate_window_msgs = 0;
    }
}

void tc_model_tick(tc_model *m, int64_t now_ns) {
    if (m->conn == TC_CONN_HISTORY) return;
    count_rate(m, now_ns);
    if (m->conn == TC_CONN_LIVE && now_ns - m->last_msg_ns > STALE_AFTER_NS) m->conn = TC_CONN_STALE;
}

int tc_model_apply(tc_model *m, const tp_msg *msg, int64_t now_ns, char *err, size_t errlen) {
    if (m->run_id[0] && strcmp(m->run_id, msg->run_id) != 0) tc_model_reset_run(m);
    if (!m->run_id[0]) snprintf(m->run_id, sizeof m->run_id, "%s", msg->run_id);

    /* sequence: gaps and replays */
    if (msg->seq > m->last_seq) {
        if (m->last_seq == 0 && msg->seq > 1 && m->conn != TC_CONN_HISTORY)
            (void)add_gap_kind(m, 1, msg->seq - 1, 1); /* attached late: the run's start */
        if (m->last_seq > 0 && msg->seq > m->last_seq + 1) {
            uint64_t from = m->last_seq + 1, to = msg->seq - 1;
            m->missing += to - from + 1;
            (void)add_gap(m, from, to); /* OOM: still counted in `missing` */
        }
        m->last_seq = msg->seq;
    } else if (msg->seq > 0) {
        for (int i = 0; i < m->n_gaps; i++) {
            tc_gap *g = &m->gaps[i];
            if (msg->seq >= g->from_seq && msg->seq <= g->to_seq) {
                if (!g->backfill) m->recovered++;
                break;
            }
        }
    }

    if (m->first_msg_ns == 0) m->first_msg_ns = now_ns;
    m->last_msg_ns = now_ns;
    m->msgs++;
    m->rate_window_msgs++;
    count_rate(m, now_ns);
    if (m->conn != TC_CONN_HISTORY) m->conn = m->ended ? TC_CONN_ENDED : TC_CONN_LIVE;

    switch (msg->type) {
    case TP_MSG_HEADER: return tc_model_put_header(m, &msg->u.header, err, errlen);
    case TP_MSG_STEP: return tc_model_put_step(m, &msg->u.step, err, errlen);
    case TP_MSG_KNOB_EVENT: return tc_model_put_knob_event(m, &msg->u.knob, err, errlen);
    case TP_MSG_RUN_END:
        m->ended = 1;
        m->end = msg->u.end;
        if (m->conn != TC_CONN_HISTORY) m->conn = TC_CONN_ENDED;
        return 0;
    case TP_MSG_HEARTBEAT:
        m->dropped = msg->u.hb.dropped;
        m->hb_step = msg->u.hb.step;
        m->hb_total_steps = msg->u.hb.total_steps;
        if (msg->u.hb.last_seq > m->last_seq) {
            /* messages published that we never saw, at the end of the stream */
            uint64_t from = m->last_seq + 1, to = msg->u.hb.last_seq;
            if (m->last_seq > 0) {
                m->missing += to - from + 1;
                (void)add_gap(m, from, to);
            }
            m->last_seq = msg->u.hb.last_seq;
        }
        return 0;
    }
    snprintf(err, errlen, "unknown message type %d", (int)msg->type);
    return -1;
}

const tp_step *tc_model_step_at(const tc_model *m, int i) {
    return (i >= 0 && i < m->n_steps) ? &m->steps[i] : NULL;
}

const tp_step *tc_model_last_step(const tc_model *m) {
    return m->n_steps ? &m->steps[m->n_steps - 1] : NULL;
}

int tc_model_total_steps(const tc_model *m) {
    if (m->have_header && m->header.total_steps > 0) return m->header.total_steps;
    return m->hb_total_steps > 0 ? m->hb_total_steps : 0;
}

int tc_model_layers(const tc_model *m) {
    if (m->have_header) {
        int n = m->header.model.n_double + m->header.model.n_single;
        if (n > 0) return n > m->max_layers ? n : m->max_layers;
    }
    return m->max_layers;
}

void tc_model_run_reasons(const tc_model *m, int64_t out[TK_REASON_COUNT]) {
    memset(out, 0, sizeof(int64_t) * TK_REASON_COUNT);
    for (int i = 0; i < m->n_steps; i++)
        for (int r = 0; r < TK_REASON_COUNT; r++) out[r] += m->steps[i].reason_counts[r];
}

double tc_step_worst_quality(const tp_step *s) { return s->quality_raw_max; }

double tc_step_fallback_share(const tp_step *s) {
    return s->calls > 0 ? (double)s->n_fallback / s->calls : 0.0;
}

double tc_model_worst_quality(const tc_model *m, int *reported) {
    double worst = -INFINITY;
    *reported = 0;
    for (int i = 0; i < m->n_steps; i++) {
        if (!(m->steps[i].have & TP_HAVE_QUALITY)) continue;
        double q = m->steps[i].quality_raw_max;
        *reported = 1;
        if (isnan(q)) return q; /* a non-finite quality is the worst there is */
        if (q > worst) worst = q;
    }
    return *reported ? worst : NAN;
}

int64_t tc_model_run_fallbacks(const tc_model *m) {
    int64_t n = 0;
    for (int i = 0; i < m->n_steps; i++) n += m->steps[i].n_fallback;
    return n;
}

const char *tc_metric_name(tc_metric m) {
    switch (m) {
    case TC_METRIC_QUALITY_RAW: return "quality_raw";
    case TC_METRIC_QUALITY_EFF: return "quality_eff";
    case TC_METRIC_DEN_MIN: return "den_min";
    case TC_METRIC_QK_P99: return "qk_p99";
    case TC_METRIC_FALLBACKS: return "fallback_share";
    case TC_METRIC_ATTN_MS: return "attn_ms";
    case TC_METRIC_WINDOW_MASS: return "window_mass";
    case TC_METRIC_COUNT: break;
    }
    return "?";
}

int tc_metric_log_scale(tc_metric m) {
    return m == TC_METRIC_QUALITY_RAW || m == TC_METRIC_QUALITY_EFF || m == TC_METRIC_DEN_MIN;
}

int tc_metric_value(tc_metric m, const tp_layer_row *r, double *out) {
    unsigned need = 0;
    double v = NAN;
    switch (m) {
    case TC_METRIC_QUALITY_RAW: need = TP_HAVE_QUALITY; v = r->quality_raw_mean; break;
    case TC_METRIC_QUALITY_EFF: need = TP_HAVE_QUALITY; v = r->quality_eff_mean; break;
    case TC_METRIC_DEN_MIN: need = TP_HAVE_DENOMS; v = r->den_min; break;
    case TC_METRIC_QK_P99: need = TP_HAVE_QK; v = r->qk_p99; break;
    case TC_METRIC_FALLBACKS:
        *out = r->calls > 0 ? (double)r->fallbacks / r->calls : NAN;
        return r->calls > 0;
    case TC_METRIC_ATTN_MS: need = TP_HAVE_TIME; v = r->attn_ms; break;
    case TC_METRIC_WINDOW_MASS: need = TP_HAVE_WINDOW; v = r->window_mass_mean; break;
    case TC_METRIC_COUNT: break;
    }
    *out = v;
    return need != 0 && (r->have & need) == need;
}

const char *tc_model_knob_value(const tc_model *m, const char *knob, char *buf, size_t len) {
    const tk_knob *k = tk_knob_find(knob);
    if (!k || !m->have_config) {
        snprintf(buf, len, "n/a");
        return buf;
    }
    return tk_config_format(&m->config, k, buf, len);
}

const char *tc_fmt_num(double v, int reported, int sig, char *buf, size_t len) {
    if (!reported)
        snprintf(buf, len, "n/a");
    else if (isnan(v))
        snprintf(buf, len, "nan");
    else if (isinf(v))
        snprintf(buf, len, v > 0 ? "inf" : "-inf");
    else if (v != 0 && (fabs(v) < 1e-3 || fabs(v) >= 1e6))
        snprintf(buf, len, "%.*e", sig > 2 ? sig - 2 : 0, v);
    else
        snprintf(buf, len, "%.*g", sig, v);
    return buf;
}

const char *tc_fmt_int(int64_t v, int reported, char *buf, size_t len) {
    if (!reported)
        snprintf(buf, len, "n/a");
    else
        snprintf(buf, len, "%lld", (long long)v);
    return buf;
}

const char *tc_fmt_duration(double s, char *buf, size_t len) {
    if (!(s >= 0) || isinf(s))
        snprintf(buf, len, "n/a");
    else if (s < 60)
        snprintf(buf, len, "%.1fs", s);
    else if (s < 3600)
        snprintf(buf, len, "%dm%02ds", (int)(s / 60), (int)s % 60);
    else
        snprintf(buf, len, "%dh%02dm", (int)(s / 3600), ((int)s / 60) % 60);
    return buf;
}

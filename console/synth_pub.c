/* synth_pub.c -- the synthetic agent of the recorder's tests (see synth_pub.h). */
#include "synth_pub.h"

#include <math.h>
#include <nng/nng.h>
#include <nng/protocol/pubsub0/pub.h>
#include <nng/protocol/reqrep0/rep.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
    uint64_t seq; /* 0 = empty */
    tp_buf enc;
} ring_slot;

struct tc_synth {
    nng_socket pub, rep;
    pthread_t thread;
    int thread_started;
    pthread_mutex_t mu;
    char run_id[TP_RUN_ID_LEN];
    uint64_t seq;
    int hold_back;
    int subscribers;
    int step;
    int total_steps;
    tk_config config;
    uint32_t config_version;
    ring_slot *ring;
    int ring_len;
};

static void set_err(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t errlen, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void on_pipe(nng_pipe p, nng_pipe_ev ev, void *arg) {
    (void)p;
    tc_synth *s = arg;
    pthread_mutex_lock(&s->mu);
    s->subscribers += ev == NNG_PIPE_EV_ADD_POST ? 1 : -1;
    pthread_mutex_unlock(&s->mu);
}

/* Encodes, keeps in the ring, sends unless held back. Fills seq, run id. */
static int publish(tc_synth *s, tp_msg *m) {
    char err[256];
    pthread_mutex_lock(&s->mu);
    m->version = TP_PROTOCOL_VERSION;
    snprintf(m->run_id, sizeof m->run_id, "%s", s->run_id);
    m->seq = ++s->seq;
    m->t_ns = now_ns();
    ring_slot *slot = &s->ring[m->seq % (uint64_t)s->ring_len];
    slot->enc.len = 0;
    int rc = tp_encode_msg(m, &slot->enc, err, sizeof err);
    if (rc) {
        fprintf(stderr, "synth: cannot encode: %s\n", err);
        slot->seq = 0;
        pthread_mutex_unlock(&s->mu);
        return rc;
    }
    slot->seq = m->seq;
    int send = s->hold_back == 0;
    if (!send) s->hold_back--;
    /* nng_send copies; PUB never blocks (a slow subscriber loses messages) */
    if (send) rc = nng_send(s->pub, slot->enc.data, slot->enc.len, 0);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

static void answer(tc_synth *s, const tp_request *q, tp_reply *p) {
    p->version = TP_PROTOCOL_VERSION;
    p->ok = 1;
    pthread_mutex_lock(&s->mu);
    snprintf(p->run_id, sizeof p->run_id, "%s", s->run_id);
    p->step = s->step;
    p->total_steps = s->total_steps;
    p->last_seq = s->seq;
    switch (q->op) {
    case TP_OP_GET_STATE:
    case TP_OP_GET_KNOBS:
        p->has_config = 1;
        p->config = s->config;
        p->config_version = s->config_version;
        break;
    case TP_OP_SET_KNOBS: {
        tk_config c = s->config;
        char err[256];
        for (int i = 0; i < q->n_changes; i++)
            if (tk_config_set(&c, q->changes[i].name, q->changes[i].value, err, sizeof err)) {
                p->ok = 0;
                snprintf(p->error, sizeof p->error, "%s", err);
                break;
            }
        if (p->ok) {
            s->config = c;
            s->config_version++;
            p->effective_step = s->step + 1;
        }
        p->config_version = s->config_version;
        break;
    }
    case TP_OP_REPLAY: {
        uint64_t from = q->from_seq, to = q->to_seq > s->seq ? s->seq : q->to_seq;
        int n = 0;
        p->messages = calloc(to >= from ? (size_t)(to - from + 1) : 1, sizeof *p->messages);
        for (uint64_t k = from; p->messages && k <= to && k >= 1; k++) {
            ring_slot *slot = &s->ring[k % (uint64_t)s->ring_len];
            if (slot->seq != k) {
                if (!p->replay_first_missing) p->replay_first_missing = k;
                p->replay_missing++;
                continue;
            }
            p->messages[n].data = malloc(slot->enc.len);
            memcpy(p->messages[n].data, slot->enc.data, slot->enc.len);
            p->messages[n].len = p->messages[n].cap = slot->enc.len;
            n++;
        }
        p->n_messages = n;
        break;
    }
    default:
        p->ok = 0;
        snprintf(p->error, sizeof p->error, "unknown operation");
    }
    pthread_mutex_unlock(&s->mu);
}

static void *serve(void *arg) {
    tc_synth *s = arg;
    for (;;) {
        void *data = NULL;
        size_t len = 0;
        if (nng_recv(s->rep, &data, &len, NNG_FLAG_ALLOC) != 0) break; /* closed */
        tp_request q;
        tp_reply p;
        memset(&q, 0, sizeof q);
        memset(&p, 0, sizeof p);
        char err[256];
        if (tp_decode_request(data, len, &q, err, sizeof err)) {
            p.version = TP_PROTOCOL_VERSION;
            snprintf(p.error, sizeof p.error, "bad request: %.200s", err);
        } else {
            answer(s, &q, &p);
        }
        nng_free(data, len);
        tp_buf b = {0};
        if (tp_encode_reply(&p, &b, err, sizeof err) == 0) nng_send(s->rep, b.data, b.len, 0);
        tp_buf_free(&b);
        tp_request_free(&q);
        tp_reply_free(&p);
    }
    return NULL;
}

int tc_synth_open(const char *pub_url, const char *run_id, int ring, tc_synth **out, char *err, size_t errlen) {
    *out = NULL;
    char ctl[512];
    if (tp_control_url_for(pub_url, ctl, sizeof ctl, err, errlen)) return 1;
    tc_synth *s = calloc(1, sizeof *s);
    s->ring_len = ring > 0 ? ring : 4096;
    s->ring = calloc((size_t)s->ring_len, sizeof *s->ring);
    pthread_mutex_init(&s->mu, NULL);
    snprintf(s->run_id, sizeof s->run_id, "%s", run_id);
    s->step = -1;
    tk_config_defaults(&s->config);
    s->config_version = 1;
    int rv;
    if ((rv = nng_pub0_open(&s->pub)) || (rv = nng_pipe_notify(s->pub, NNG_PIPE_EV_ADD_POST, on_pipe, s)) ||
        (rv = nng_pipe_notify(s->pub, NNG_PIPE_EV_REM_POST, on_pipe, s)) ||
        (rv = nng_socket_set_int(s->pub, NNG_OPT_SENDBUF, 1024)) || (rv = nng_listen(s->pub, pub_url, NULL, 0))) {
        set_err(err, errlen, "synth: cannot listen on %s: %s", pub_url, nng_strerror(rv));
        tc_synth_close(s);
        return 1;
    }
    if ((rv = nng_rep0_open(&s->rep)) || (rv = nng_listen(s->rep, ctl, NULL, 0))) {
        set_err(err, errlen, "synth: cannot listen on %s: %s", ctl, nng_strerror(rv));
        tc_synth_close(s);
        return 1;
    }
    pthread_create(&s->thread, NULL, serve, s);
    s->thread_started = 1;
    *out = s;
    return 0;
}

void tc_synth_close(tc_synth *s) {
    if (!s) return;
    nng_close(s->rep);
    if (s->thread_started) pthread_join(s->thread, NULL);
    nng_close(s->pub);
    for (int i = 0; i < s->ring_len; i++) tp_buf_free(&s->ring[i].enc);
    free(s->ring);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

int tc_synth_subscribers(tc_synth *s) {
    pthread_mutex_lock(&s->mu);
    int n = s->subscribers;
    pthread_mutex_unlock(&s->mu);
    return n;
}

uint64_t tc_synth_last_seq(tc_synth *s) {
    pthread_mutex_lock(&s->mu);
    uint64_t n = s->seq;
    pthread_mutex_unlock(&s->mu);
    return n;
}

void tc_synth_new_run(tc_synth *s, const char *run_id) {
    pthread_mutex_lock(&s->mu);
    snprintf(s->run_id, sizeof s->run_id, "%s", run_id);
    s->seq = 0;
    s->step = -1;
    for (int i = 0; i < s->ring_len; i++) s->ring[i].seq = 0;
    pthread_mutex_unlock(&s->mu);
}

void tc_synth_hold_back(tc_synth *s, int count) {
    pthread_mutex_lock(&s->mu);
    s->hold_back = count;
    pthread_mutex_unlock(&s->mu);
}

void tc_synth_config(tc_synth *s, tk_config *out) {
    pthread_mutex_lock(&s->mu);
    *out = s->config;
    pthread_mutex_unlock(&s->mu);
}

int tc_synth_header(tc_synth *s, int total_steps, int n_layers) {
    static tp_msg m; /* large; one publisher thread */
    memset(&m, 0, sizeof m);
    m.type = TP_MSG_HEADER;
    tp_header *h = &m.u.header;
    snprintf(h->agent_id, sizeof h->agent_id, "synth:%d", 1);
    snprintf(h->agent_version, sizeof h->agent_version, "synth");
    snprintf(h->model_name, sizeof h->model_name, "synthetic");
    snprintf(h->sampler, sizeof h->sampler, "euler");
    snprintf(h->backend, sizeof h->backend, "cpu");
    snprintf(h->model.name, sizeof h->model.name, "flux1");
    h->model.heads = 24;
    h->model.head_dim = 128;
    h->model.n_double = n_layers / 3;
    h->model.n_single = n_layers - n_layers / 3;
    h->model.text_tokens = 512;
    h->model.grid_h = h->model.grid_w = 64;
    h->total_steps = total_steps;
    h->started_ns = now_ns();
    pthread_mutex_lock(&s->mu);
    s->total_steps = total_steps;
    h->initial = s->config;
    h->current = s->config;
    h->config_version = s->config_version;
    h->last_step = s->step;
    pthread_mutex_unlock(&s->mu);
    return publish(s, &m);
}

double tc_synth_expected_quality(int step, int layer) { return 0.001 * layer + 0.01 * step; }

int tc_synth_step(tc_synth *s, int step, int n_layers) {
    tp_msg m;
    memset(&m, 0, sizeof m);
    m.type = TP_MSG_STEP;
    tp_step *st = &m.u.step;
    tp_layer_row *rows = calloc((size_t)(n_layers > 0 ? n_layers : 1), sizeof *rows);
    st->step = step;
    st->sigma = 1.0 / (1 + step);
    st->wall_ms = 20;
    st->attn_ms = 12;
    st->config_version = 1;
    st->calls = n_layers;
    st->n_taylor = n_layers;
    st->have = TP_HAVE_QUALITY | TP_HAVE_DENOMS | TP_HAVE_QK | TP_HAVE_TIME;
    st->quality_raw_mean = st->quality_raw_p50 = 0.01 * step;
    st->quality_raw_p95 = st->quality_raw_max = 0.02 * step;
    st->quality_eff_mean = st->quality_eff_p50 = st->quality_eff_p95 = st->quality_eff_max = 0.005;
    st->cos_min = 0.99;
    st->den_min = step == 1 ? NAN : 0.1; /* one NaN, to see it kept */
    st->den_max = INFINITY;
    st->den_mean = 1;
    st->qk_p50 = 1;
    st->qk_p99 = 3;
    st->qk_max = 5;
    st->q_norm_mean = st->k_norm_mean = 11;
    st->window = -1;
    st->w = 1;
    st->n_layers = n_layers;
    st->layers = rows;
    for (int l = 0; l < n_layers; l++) {
        tp_layer_row *r = &rows[l];
        r->layer = l;
        r->calls = 1;
        r->path = TK_PATH_TAYLOR;
        r->reason = TK_REASON_NONE;
        r->have = TP_HAVE_QUALITY | TP_HAVE_DENOMS | TP_HAVE_QK | TP_HAVE_TIME;
        r->quality_raw_mean = tc_synth_expected_quality(step, l);
        r->quality_raw_max = r->quality_eff_mean = r->quality_eff_max = 0.01;
        r->cos_min = 0.99;
        r->den_min = 0.1;
        r->qk_p99 = 3;
        r->qk_max = 5;
        r->q_norm_mean = r->k_norm_mean = 11;
        r->window = -1;
        r->w = 1;
        r->R = 6545;
        r->attn_ms = 0.2;
    }
    pthread_mutex_lock(&s->mu);
    s->step = step;
    st->config_version = s->config_version;
    pthread_mutex_unlock(&s->mu);
    int rc = publish(s, &m);
    free(rows);
    return rc;
}

int tc_synth_knob_event(tc_synth *s, tp_knob_status status, const char *name, const char *value,
                        int effective_step, const char *error) {
    tp_msg m;
    memset(&m, 0, sizeof m);
    m.type = TP_MSG_KNOB_EVENT;
    tp_knob_change ch;
    memset(&ch, 0, sizeof ch);
    snprintf(ch.name, sizeof ch.name, "%s", name);
    snprintf(ch.value, sizeof ch.value, "%s", value);
    tp_knob_event *ev = &m.u.knob;
    snprintf(ev->request_id, sizeof ev->request_id, "synth-%d", effective_step);
    snprintf(ev->origin, sizeof ev->origin, "console");
    ev->status = status;
    ev->config_version = 2;
    ev->effective_step = effective_step;
    if (error) snprintf(ev->error, sizeof ev->error, "%s", error);
    ev->n_changes = 1;
    ev->changes = &ch;
    return publish(s, &m);
}

int tc_synth_heartbeat(tc_synth *s) {
    tp_msg m;
    memset(&m, 0, sizeof m);
    m.type = TP_MSG_HEARTBEAT;
    pthread_mutex_lock(&s->mu);
    m.u.hb.last_seq = s->seq + 1;
    m.u.hb.step = s->step;
    m.u.hb.total_steps = s->total_steps;
    pthread_mutex_unlock(&s->mu);
    return publish(s, &m);
}

int tc_synth_run_end(tc_synth *s, const char *status, int steps_done) {
    tp_msg m;
    memset(&m, 0, sizeof m);
    m.type = TP_MSG_RUN_END;
    snprintf(m.u.end.status, sizeof m.u.end.status, "%s", status);
    m.u.end.steps_done = steps_done;
    return publish(s, &m);
}

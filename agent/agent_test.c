/* agent_test.c -- the agent as a host and a console see it: live knobs
 * (validation, step-boundary application, request ids, expected versions),
 * the stream (header, steps, knob events, run end, replay), bad control
 * messages, the gates. Endpoints are ipc sockets under th_tmpdir(). */
#include "agent.h"
#include "harness.h"
#include "internal.h"
#include "proto.h"
#include "transport.h"

#include <math.h>
#include <nng/nng.h>
#include <nng/protocol/pubsub0/sub.h>
#include <nng/protocol/reqrep0/req.h>
#include <nng/supplemental/util/platform.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <sys/stat.h>
#include <time.h>

/* ------------------------------------------------------------------ */
/* helpers                                                             */
/* ------------------------------------------------------------------ */

static const ta_model small_model = {"tiny", 2, 8, 2, 3, 4, 2, 2};

static ta_agent *open_agent(const char *name, int ring, int queue, ta_agent **out) {
    static char url[300];
    ta_options o;
    memset(&o, 0, sizeof o);
    if (name) {
        snprintf(url, sizeof url, "ipc://%s/%s.pub", th_tmpdir(), name);
        o.endpoint = url;
    } else {
        o.endpoint = "";
    }
    o.backend = TK_BACKEND_REF;
    o.model = small_model;
    o.replay_ring = ring;
    o.queue_len = queue;
    o.header_every_s = 30; /* tests count messages: no periodic header */
    char err[256];
    TH_CHECKF(ta_open(&o, out, err, sizeof err) == 0, "ta_open: %s", err);
    return *out;
}

typedef struct {
    nng_socket s;
    int fd;
} sub;

static void sub_open(sub *s, ta_agent *a) {
    TH_CHECK(nng_sub0_open(&s->s) == 0);
    TH_CHECK(nng_socket_set(s->s, NNG_OPT_SUB_SUBSCRIBE, "", 0) == 0);
    nng_socket_set_int(s->s, NNG_OPT_RECVBUF, 1024);
    nng_socket_set_size(s->s, NNG_OPT_RECVMAXSZ, TP_MAX_MESSAGE_BYTES);
    TH_CHECK(nng_dial(s->s, ta_endpoint(a), NULL, 0) == 0);
    TH_CHECK(nng_socket_get_int(s->s, NNG_OPT_RECVFD, &s->fd) == 0);
    for (int i = 0; i < 1000 && ta_subscribers(a) < 1; i++) nng_msleep(5);
    TH_CHECK(ta_subscribers(a) >= 1);
    nng_msleep(20); /* the subscription reaches the PUB side */
}

/* Next message within timeout_ms; 0 ok, -1 none. */
static int sub_recv(sub *s, tp_msg *m, int timeout_ms) {
    struct pollfd p = {s->fd, POLLIN, 0};
    for (;;) {
        void *buf = NULL;
        size_t len = 0;
        int rv = nng_recv(s->s, &buf, &len, NNG_FLAG_ALLOC | NNG_FLAG_NONBLOCK);
        if (rv == 0) {
            char err[256];
            int rc = tp_decode_msg(buf, len, m, err, sizeof err);
            nng_free(buf, len);
            TH_CHECKF(rc == 0, "decode: %s", err);
            return 0;
        }
        if (poll(&p, 1, timeout_ms) <= 0) return -1;
    }
}

static void sub_close(sub *s) { nng_close(s->s); }

/* One control round trip with raw bytes; decodes the reply. */
static void ctl_raw(ta_agent *a, const void *data, size_t len, tp_reply *rep) {
    nng_socket r;
    char ctl[400], err[256];
    TH_CHECK(tp_control_url_for(ta_endpoint(a), ctl, sizeof ctl, err, sizeof err) == 0);
    TH_CHECK(nng_req0_open(&r) == 0);
    nng_socket_set_ms(r, NNG_OPT_RECVTIMEO, 5000);
    nng_socket_set_size(r, NNG_OPT_RECVMAXSZ, TP_MAX_MESSAGE_BYTES + 65536);
    TH_CHECK(nng_dial(r, ctl, NULL, 0) == 0);
    TH_CHECK(nng_send(r, (void *)data, len, 0) == 0);
    void *buf = NULL;
    size_t n = 0;
    TH_CHECKF(nng_recv(r, &buf, &n, NNG_FLAG_ALLOC) == 0, "no reply from the agent");
    int rc = tp_decode_reply(buf, n, rep, err, sizeof err);
    nng_free(buf, n);
    nng_close(r);
    TH_CHECKF(rc == 0, "reply decode: %s", err);
}

static void ctl(ta_agent *a, const tp_request *q, tp_reply *rep) {
    tp_buf b = {0};
    char err[256];
    TH_CHECK(tp_encode_request(q, &b, err, sizeof err) == 0);
    ctl_raw(a, b.data, b.len, rep);
    tp_buf_free(&b);
}

static void set_now(ta_agent *a, const char *name, const char *value);

static void set_request(tp_request *q, const char *id, int64_t expect, tp_knob_change *ch, int n) {
    memset(q, 0, sizeof *q);
    q->op = TP_OP_SET_KNOBS;
    snprintf(q->request_id, sizeof q->request_id, "%s", id);
    snprintf(q->origin, sizeof q->origin, "console");
    q->expected_version = expect;
    q->changes = ch;
    q->n_changes = n;
}

static float buf_q[1 * 2 * 16 * 8], buf_k[1 * 2 * 16 * 8], buf_v[1 * 2 * 16 * 8],
    buf_o[1 * 2 * 16 * 8];

static ta_call small_call(ta_block_type bt, int idx) {
    ta_call c;
    memset(&c, 0, sizeof c);
    c.B = 1, c.H = 2, c.Nq = 16, c.Nk = 16, c.D = 8, c.Dv = 8;
    c.dtype = TK_DTYPE_F32;
    c.q = buf_q, c.k = buf_k, c.v = buf_v, c.o = buf_o;
    c.block_type = bt;
    c.block_index = idx;
    return c;
}

/* A host step over every layer of the small model. */
static void host_step(ta_agent *a, int step, double sigma) {
    TH_CHECK(ta_step_begin(a, step, sigma) == 0);
    for (int l = 0; l < small_model.n_double + small_model.n_single; l++) {
        ta_call c = small_call(l < small_model.n_double ? TA_BLOCK_DOUBLE : TA_BLOCK_SINGLE,
                               l < small_model.n_double ? l : l - small_model.n_double);
        tk_result res;
        TH_CHECK(ta_attention(a, &c, &res) == 0);
    }
    TH_CHECK(ta_step_end(a) == 0);
}

/* ------------------------------------------------------------------ */
/* knobs                                                               */
/* ------------------------------------------------------------------ */

static void expect_refused(ta_agent *a, const tk_knob *k, const char *value) {
    char err[256] = "";
    tk_config before = *ta_config(a);
    uint32_t v = ta_config_version(a);
    int eff = -7;
    TH_CHECKF(ta_set_knob(a, k->name, value, &eff, err, sizeof err) != 0, "%s=%s accepted",
              k->name, value);
    TH_CHECKF(strstr(err, k->name) != NULL, "error does not name %s: %s", k->name, err);
    TH_CHECKF(strstr(err, "nothing applied") != NULL, "%s", err);
    TH_CHECK(ta_step_begin(a, 0, 1.0) == 0); /* a boundary: nothing must apply */
    TH_CHECK(ta_step_end(a) == 0);
    TH_CHECK(memcmp(&before, ta_config(a), sizeof before) == 0);
    TH_EQ_INT(ta_config_version(a), v);
}

static void test_every_knob_refuses_values_outside_its_type_and_bounds(void) {
    ta_agent *a;
    open_agent(NULL, 0, 0, &a);
    char v[64], range_hint[64];
    for (int i = 0; i < tk_knob_count(); i++) {
        const tk_knob *k = tk_knob_at(i);
        switch (k->type) {
        case TK_KNOB_INT:
            snprintf(v, sizeof v, "%.0f", k->min - 1);
            expect_refused(a, k, v);
            snprintf(v, sizeof v, "%.0f", k->max + 1);
            expect_refused(a, k, v);
            snprintf(v, sizeof v, "%.0f.5", k->min);
            expect_refused(a, k, v);
            expect_refused(a, k, "twelve");
            break;
        case TK_KNOB_FLOAT:
            snprintf(v, sizeof v, "%.17g", k->min - (fabs(k->min) * 1e-3 + 1e-9));
            expect_refused(a, k, v);
            snprintf(v, sizeof v, "%.17g", k->max + fabs(k->max) * 1e-3 + 1e-9);
            expect_refused(a, k, v);
            expect_refused(a, k, "nan");
            expect_refused(a, k, "inf");
            expect_refused(a, k, "0.5x");
            break;
        case TK_KNOB_BOOL:
            expect_refused(a, k, "maybe");
            expect_refused(a, k, "2");
            break;
        case TK_KNOB_ENUM:
            expect_refused(a, k, "no_such_choice");
            break;
        }
        (void)range_hint;
    }
    ta_close(a);
}

static void test_every_knob_accepts_both_ends_of_its_range(void) {
    ta_agent *a;
    open_agent(NULL, 0, 0, &a);
    char v[64], err[256];
    uint32_t version = ta_config_version(a);
    for (int i = 0; i < tk_knob_count(); i++) {
        const tk_knob *k = tk_knob_at(i);
        if (k->type != TK_KNOB_INT && k->type != TK_KNOB_FLOAT) continue;
        if (!strncmp(k->name, "auto_tune_", 10) || strstr(k->name, "_layer_")) continue; /* pairs */
        for (int end = 0; end < 2; end++) {
            snprintf(v, sizeof v, "%.17g", end ? k->max : k->min);
            TH_CHECKF(ta_set_knob(a, k->name, v, NULL, err, sizeof err) == 0, "%s=%s: %s", k->name,
                      v, err);
            TH_CHECK(ta_step_begin(a, 0, 1.0) == 0);
            TH_CHECK(ta_step_end(a) == 0);
            TH_NEAR(tk_config_get(ta_config(a), k), end ? k->max : k->min, 0);
            TH_EQ_INT(ta_config_version(a), ++version);
        }
    }
    ta_close(a);
}

static void test_a_pair_out_of_order_is_refused_by_the_whole_config_check(void) {
    ta_agent *a;
    open_agent(NULL, 0, 0, &a);
    char err[256];
    TH_CHECK(ta_set_knob(a, "taylor_layer_start", "10", NULL, err, sizeof err) == 0);
    TH_CHECK(ta_set_knob(a, "taylor_layer_end", "5", NULL, err, sizeof err) != 0);
    TH_CHECKF(strstr(err, "taylor_layer_start") != NULL, "%s", err);
    ta_close(a);
}

static void test_a_knob_that_is_not_live_is_refused_during_a_run(void) {
    ta_agent *a;
    open_agent(NULL, 0, 0, &a);
    char err[256];
    TH_CHECK(ta_run_begin(a, 4, "tiny", "euler", err, sizeof err) == 0);
    TH_CHECK(ta_set_knob(a, "seed", "7", NULL, err, sizeof err) != 0);
    TH_CHECKF(strstr(err, "seed") && strstr(err, "during a run"), "%s", err);
    TH_CHECK(ta_run_end(a, TA_RUN_FINISHED, "") == 0);
    TH_CHECK(ta_set_knob(a, "seed", "7", NULL, err, sizeof err) == 0);
    TH_CHECK(ta_run_begin(a, 4, "tiny", "euler", err, sizeof err) == 0);
    TH_EQ_INT(ta_config(a)->seed, 7);
    ta_close(a);
}

static void test_a_change_sent_mid_step_applies_at_the_next_step_never_earlier(void) {
    ta_agent *a;
    open_agent("mid", 0, 0, &a);
    char err[256];
    TH_CHECK(ta_run_begin(a, 4, "tiny", "euler", err, sizeof err) == 0);
    host_step(a, 0, 1.0);
    TH_CHECK(ta_step_begin(a, 1, 0.8) == 0);
    tp_knob_change ch = {"qk_norm_power", "0.5", ""};
    tp_request q;
    tp_reply rep;
    set_request(&q, "mid-1", -1, &ch, 1);
    ctl(a, &q, &rep);
    TH_CHECKF(rep.ok, "%s", rep.error);
    TH_EQ_INT(rep.effective_step, 2);
    TH_EQ_INT(rep.config_version, 2);
    /* the rest of step 1 runs under the old value */
    ta_call c = small_call(TA_BLOCK_DOUBLE, 0);
    tk_result res;
    TH_CHECK(ta_attention(a, &c, &res) == 0);
    TH_NEAR(ta_config(a)->qk_norm_power, 0.0, 0);
    TH_EQ_INT(ta_config_version(a), 1);
    TH_CHECK(ta_step_end(a) == 0);
    TH_NEAR(ta_config(a)->qk_norm_power, 0.0, 0);
    TH_CHECK(ta_step_begin(a, 2, 0.6) == 0);
    TH_NEAR(ta_config(a)->qk_norm_power, 0.5, 0);
    TH_EQ_INT(ta_config_version(a), 2);
    TH_CHECK(ta_step_end(a) == 0);
    ta_close(a);
}

static void test_a_resent_request_id_applies_once(void) {
    ta_agent *a;
    open_agent("dup", 0, 0, &a);
    char err[256];
    TH_CHECK(ta_run_begin(a, 4, "tiny", "euler", err, sizeof err) == 0);
    host_step(a, 0, 1.0);
    tp_knob_change ch = {"min_tokens", "+1", ""};
    snprintf(ch.value, sizeof ch.value, "100");
    tp_request q;
    tp_reply r1, r2;
    set_request(&q, "same-id", -1, &ch, 1);
    ctl(a, &q, &r1);
    ctl(a, &q, &r2);
    TH_CHECK(r1.ok && r2.ok);
    TH_EQ_INT(r1.duplicate, 0);
    TH_EQ_INT(r2.duplicate, 1);
    TH_EQ_INT(r2.config_version, r1.config_version);
    host_step(a, 1, 0.9);
    TH_EQ_INT(ta_config_version(a), 2); /* one version step, not two */
    TH_EQ_INT(ta_config(a)->min_tokens, 100);
    /* and a third resend after it applied still changes nothing */
    tp_reply r3;
    ctl(a, &q, &r3);
    TH_EQ_INT(r3.duplicate, 1);
    host_step(a, 2, 0.8);
    TH_EQ_INT(ta_config_version(a), 2);
    ta_close(a);
}

static void test_an_expected_version_mismatch_is_refused(void) {
    ta_agent *a;
    open_agent("ver", 0, 0, &a);
    char err[256];
    TH_CHECK(ta_run_begin(a, 4, "tiny", "euler", err, sizeof err) == 0);
    tp_knob_change ch = {"scale_mul", "0.5", ""};
    tp_request q;
    tp_reply rep;
    set_request(&q, "v-wrong", 7, &ch, 1);
    ctl(a, &q, &rep);
    TH_EQ_INT(rep.ok, 0);
    TH_CHECKF(strstr(rep.error, "version") && strstr(rep.error, "7"), "%s", rep.error);
    host_step(a, 0, 1.0);
    TH_NEAR(ta_config(a)->scale_mul, 1.0, 0);
    set_request(&q, "v-right", 1, &ch, 1);
    ctl(a, &q, &rep);
    TH_CHECKF(rep.ok, "%s", rep.error);
    /* a second change expecting the old version conflicts with the queued one */
    tp_knob_change ch2 = {"scale_mul", "0.25", ""};
    set_request(&q, "v-stale", 1, &ch2, 1);
    ctl(a, &q, &rep);
    TH_EQ_INT(rep.ok, 0);
    host_step(a, 1, 0.9);
    TH_NEAR(ta_config(a)->scale_mul, 0.5, 0);
    ta_close(a);
}

static void test_get_knobs_reports_the_config_in_force(void) {
    ta_agent *a;
    open_agent("get", 0, 0, &a);
    char err[256];
    TH_CHECK(ta_set_knob(a, "mode", "hybrid", NULL, err, sizeof err) == 0);
    TH_CHECK(ta_run_begin(a, 4, "tiny", "euler", err, sizeof err) == 0);
    tp_request q = {0};
    q.op = TP_OP_GET_KNOBS;
    tp_reply rep;
    ctl(a, &q, &rep);
    TH_CHECK(rep.ok && rep.has_config);
    TH_EQ_INT(rep.config.mode, TK_MODE_HYBRID);
    TH_EQ_STR(rep.run_id, ta_run_id(a));
    TH_EQ_INT(rep.config_version, ta_config_version(a));
    ta_close(a);
}

/* ------------------------------------------------------------------ */
/* the stream                                                          */
/* ------------------------------------------------------------------ */

static void test_a_subscriber_sees_header_steps_knob_events_and_run_end_in_order(void) {
    ta_agent *a;
    open_agent("stream", 0, 0, &a);
    sub s;
    sub_open(&s, a);
    char err[256];
    TH_CHECK(ta_run_begin(a, 5, "tiny", "euler", err, sizeof err) == 0);
    for (int step = 0; step < 5; step++) {
        if (step == 2) {
            char e[256];
            TH_CHECK(ta_set_knob(a, "qk_norm_clip", "4", NULL, e, sizeof e) == 0);
            TH_CHECK(ta_set_knob(a, "terms", "99", NULL, e, sizeof e) != 0);
        }
        host_step(a, step, 1.0 - 0.2 * step);
    }
    TH_CHECK(ta_run_end(a, TA_RUN_FINISHED, "done") == 0);
    tp_msg m;
    uint64_t seq = 0;
    int steps = 0, header = 0, requested = 0, applied = 0, rejected = 0, end = 0;
    while (!end && sub_recv(&s, &m, 2000) == 0) {
        TH_EQ_STR(m.run_id, ta_run_id(a));
        TH_EQ_INT(m.seq, seq + 1);
        seq = m.seq;
        switch (m.type) {
        case TP_MSG_HEADER:
            header++;
            TH_EQ_INT(steps, 0);
            TH_EQ_INT(m.u.header.total_steps, 5);
            TH_EQ_INT(m.u.header.model.n_single, 3);
            TH_EQ_INT(m.u.header.n_knobs, tk_knob_count());
            TH_EQ_INT(m.u.header.n_reasons, TK_REASON_COUNT);
            break;
        case TP_MSG_STEP:
            TH_EQ_INT(m.u.step.step, steps);
            TH_EQ_INT(m.u.step.calls, 5);
            TH_EQ_INT(m.u.step.n_layers, 5);
            TH_EQ_INT(m.u.step.config_version, steps < 2 ? 1 : 2);
            steps++;
            break;
        case TP_MSG_KNOB_EVENT:
            if (m.u.knob.status == TP_KNOB_REQUESTED) requested++;
            if (m.u.knob.status == TP_KNOB_REJECTED) {
                rejected++;
                TH_CHECKF(strstr(m.u.knob.error, "terms") != NULL, "%s", m.u.knob.error);
            }
            if (m.u.knob.status == TP_KNOB_APPLIED) {
                applied++;
                TH_EQ_INT(m.u.knob.effective_step, 2); /* set between steps 1 and 2 */
                TH_EQ_STR(m.u.knob.origin, "api");
                TH_EQ_STR(m.u.knob.changes[0].name, "qk_norm_clip");
                TH_EQ_STR(m.u.knob.changes[0].value, "4");
                TH_EQ_STR(m.u.knob.changes[0].old_value, "0");
            }
            break;
        case TP_MSG_RUN_END:
            end = 1;
            TH_EQ_STR(m.u.end.status, "finished");
            TH_EQ_INT(m.u.end.steps_done, 5);
            break;
        case TP_MSG_HEARTBEAT: break;
        }
        tp_msg_free(&m);
    }
    TH_EQ_INT(header, 1);
    TH_EQ_INT(steps, 5);
    TH_EQ_INT(requested, 1);
    TH_EQ_INT(applied, 1);
    TH_EQ_INT(rejected, 1);
    TH_EQ_INT(end, 1);
    ta_close(a); /* the publisher first: nng 1.5.2 can hang closing a SUB whose peer still sends */
    sub_close(&s);
}

static void test_the_header_is_resent_with_the_config_in_force(void) {
    ta_agent *a;
    ta_options o;
    memset(&o, 0, sizeof o);
    char url[300], err[256];
    snprintf(url, sizeof url, "ipc://%s/resend.pub", th_tmpdir());
    o.endpoint = url;
    o.backend = TK_BACKEND_REF;
    o.model = small_model;
    o.header_every_s = 0.2;
    TH_CHECKF(ta_open(&o, &a, err, sizeof err) == 0, "%s", err);
    sub s;
    sub_open(&s, a);
    TH_CHECK(ta_run_begin(a, 9, "tiny", "euler", err, sizeof err) == 0);
    set_now(a, "global_weight", "0.25");
    host_step(a, 0, 1.0);
    int headers = 0, beats = 0;
    uint64_t seq = 0;
    tp_msg m;
    double t_end = 0;
    for (int i = 0; i < 200 && (headers < 3 || beats < 1); i++) {
        if (sub_recv(&s, &m, 3000) != 0) break;
        TH_EQ_INT(m.seq, seq + 1);
        seq = m.seq;
        if (m.type == TP_MSG_HEADER) {
            headers++;
            if (headers > 1) { /* re-sent after the change applied at step 0 */
                TH_NEAR(m.u.header.current.global_weight, 0.25, 0);
                TH_NEAR(m.u.header.initial.global_weight, 1.0, 0);
                TH_EQ_INT(m.u.header.config_version, 2);
                TH_EQ_INT(m.u.header.last_step, 0);
            }
        }
        if (m.type == TP_MSG_HEARTBEAT) {
            beats++;
            TH_EQ_INT(m.u.hb.step, 0);
            TH_EQ_INT(m.u.hb.total_steps, 9);
            TH_EQ_INT(m.u.hb.last_seq, m.seq);
        }
        tp_msg_free(&m);
    }
    (void)t_end;
    TH_CHECK(headers >= 3);
    TH_CHECK(beats >= 1);
    ta_close(a); /* the publisher first: nng 1.5.2 can hang closing a SUB whose peer still sends */
    sub_close(&s);
}

static void test_a_replay_request_returns_the_missing_messages(void) {
    ta_agent *a;
    open_agent("replay", 8, 0, &a);
    char err[256];
    TH_CHECK(ta_run_begin(a, 12, "tiny", "euler", err, sizeof err) == 0);
    for (int step = 0; step < 12; step++) host_step(a, step, 1.0);
    TH_CHECK(ta_run_end(a, TA_RUN_FINISHED, "") == 0);
    /* nobody listened: 1 header + 12 steps + run_end = 14 messages, ring of 8 */
    tp_request q = {0};
    tp_reply st;
    q.op = TP_OP_GET_STATE;
    for (int i = 0; i < 100; i++) { /* the I/O thread is done with them (a loaded machine) */
        ctl(a, &q, &st);
        if (st.last_seq >= 14) break;
        nng_msleep(50);
    }
    q.op = TP_OP_REPLAY;
    q.from_seq = 3;
    q.to_seq = 14;
    tp_reply rep;
    ctl(a, &q, &rep);
    TH_CHECKF(rep.ok, "%s", rep.error);
    TH_EQ_INT(rep.last_seq, 14);
    TH_EQ_INT(rep.n_messages, 8);
    TH_EQ_INT(rep.replay_first_missing, 3);
    TH_EQ_INT(rep.replay_missing, 4); /* 3..6 fell out of the ring */
    for (int i = 0; i < rep.n_messages; i++) {
        tp_msg m;
        TH_CHECK(tp_decode_msg(rep.messages[i].data, rep.messages[i].len, &m, err, sizeof err) == 0);
        TH_EQ_INT(m.seq, 7 + i);
        TH_EQ_STR(m.run_id, ta_run_id(a));
        if (i < 7) {
            TH_EQ_INT(m.type, TP_MSG_STEP);
            TH_EQ_INT(m.u.step.step, 5 + i);
        } else {
            TH_EQ_INT(m.type, TP_MSG_RUN_END);
        }
        tp_msg_free(&m);
    }
    tp_reply_free(&rep);
    /* another run's messages are gone */
    snprintf(q.run_id, sizeof q.run_id, "not-this-run");
    ctl(a, &q, &rep);
    TH_EQ_INT(rep.ok, 0);
    TH_CHECK(strstr(rep.error, "not-this-run") != NULL);
    ta_close(a);
}

static void test_a_replay_too_large_for_one_reply_comes_in_parts(void) {
    /* 2,000 layers: a step message of 2,000 rows is ~180 kB; 40 steps need two replies */
    ta_options o;
    memset(&o, 0, sizeof o);
    char url[300], err[256];
    snprintf(url, sizeof url, "ipc://%s/big.pub", th_tmpdir());
    o.endpoint = url;
    o.backend = TK_BACKEND_REF;
    o.model = small_model;
    o.model.n_single = 1998;
    o.header_every_s = 30;
    ta_agent *a;
    TH_CHECKF(ta_open(&o, &a, err, sizeof err) == 0, "%s", err);
    set_now(a, "mode", "exact"); /* every call: a quick `disabled` */
    TH_CHECK(ta_run_begin(a, 40, "big", "euler", err, sizeof err) == 0);
    for (int step = 0; step < 40; step++) {
        TH_CHECK(ta_step_begin(a, step, 1.0) == 0);
        for (int l = 0; l < 2000; l++) {
            ta_call c = small_call(l < 2 ? TA_BLOCK_DOUBLE : TA_BLOCK_SINGLE, l < 2 ? l : l - 2);
            tk_result res;
            TH_CHECK(ta_attention(a, &c, &res) == 0);
        }
        TH_CHECK(ta_step_end(a) == 0);
    }
    TH_CHECK(ta_run_end(a, TA_RUN_FINISHED, "") == 0);
    uint64_t next = 1, parts = 0;
    while (next <= 42) {
        tp_request q = {0};
        q.op = TP_OP_REPLAY;
        q.from_seq = next;
        q.to_seq = 42;
        tp_reply rep;
        ctl(a, &q, &rep);
        TH_CHECKF(rep.ok, "%s", rep.error);
        TH_EQ_INT(rep.replay_missing, 0);
        TH_CHECK(rep.n_messages > 0);
        for (int i = 0; i < rep.n_messages; i++) {
            tp_msg m;
            TH_CHECK(tp_decode_msg(rep.messages[i].data, rep.messages[i].len, &m, err, sizeof err) == 0);
            TH_EQ_INT(m.seq, next);
            if (m.type == TP_MSG_STEP) TH_EQ_INT(m.u.step.n_layers, 2000);
            next++;
            tp_msg_free(&m);
        }
        tp_reply_free(&rep);
        parts++;
    }
    TH_CHECKF(parts >= 2, "%llu parts", (unsigned long long)parts);
    ta_close(a);
}

static void test_bad_control_messages_get_an_error_reply_and_the_agent_keeps_serving(void) {
    ta_agent *a;
    open_agent("bad", 0, 0, &a);
    char err[256];
    TH_CHECK(ta_run_begin(a, 4, "tiny", "euler", err, sizeof err) == 0);
    tk_config before = *ta_config(a);
    tp_reply rep;
    /* garbage */
    ctl_raw(a, "hello", 5, &rep);
    TH_EQ_INT(rep.ok, 0);
    TH_CHECKF(strstr(rep.error, "bad request") != NULL, "%s", rep.error);
    /* truncated set_knobs */
    tp_knob_change ch = {"scale_mul", "0.5", ""};
    tp_request q;
    set_request(&q, "t1", -1, &ch, 1);
    tp_buf b = {0};
    TH_CHECK(tp_encode_request(&q, &b, err, sizeof err) == 0);
    ctl_raw(a, b.data, b.len - 3, &rep);
    TH_EQ_INT(rep.ok, 0);
    TH_CHECKF(strstr(rep.error, "truncated") != NULL, "%s", rep.error);
    /* oversized */
    size_t big_n = TP_MAX_MESSAGE_BYTES + 100;
    char *big = calloc(1, big_n);
    big[0] = (char)0x80;
    ctl_raw(a, big, big_n, &rep);
    free(big);
    TH_EQ_INT(rep.ok, 0);
    TH_CHECKF(strstr(rep.error, "larger than") != NULL, "%s", rep.error);
    /* wrong version */
    q.version = 9;
    TH_CHECK(tp_encode_request(&q, &b, err, sizeof err) == 0);
    ctl_raw(a, b.data, b.len, &rep);
    TH_EQ_INT(rep.ok, 0);
    TH_CHECKF(strstr(rep.error, "version 9") != NULL, "%s", rep.error);
    TH_EQ_INT(rep.version, TP_PROTOCOL_VERSION);
    /* an unknown knob */
    tp_knob_change bad = {"no_such_knob", "1", ""};
    set_request(&q, "t2", -1, &bad, 1);
    ctl(a, &q, &rep);
    TH_EQ_INT(rep.ok, 0);
    TH_CHECK(strstr(rep.error, "no_such_knob") != NULL);
    tp_buf_free(&b);
    /* nothing changed, and the agent still answers */
    host_step(a, 0, 1.0);
    TH_CHECK(memcmp(&before, ta_config(a), sizeof before) == 0);
    TH_EQ_INT(ta_config_version(a), 1);
    tp_request gs = {0};
    gs.op = TP_OP_GET_STATE;
    ctl(a, &gs, &rep);
    TH_CHECK(rep.ok);
    TH_EQ_INT(rep.step, 0);
    ta_close(a);
}

static void test_ipc_sockets_are_private(void) {
    ta_agent *a;
    open_agent("mode", 0, 0, &a);
    struct stat st;
    TH_CHECK(stat(ta_endpoint(a) + 6, &st) == 0);
    TH_EQ_INT(st.st_mode & 0777, 0600);
    char ctl_url[400], err[256];
    TH_CHECK(tp_control_url_for(ta_endpoint(a), ctl_url, sizeof ctl_url, err, sizeof err) == 0);
    TH_CHECK(stat(ctl_url + 6, &st) == 0);
    TH_EQ_INT(st.st_mode & 0777, 0600);
    ta_close(a);
}

static void test_the_default_endpoint_is_private_and_named_after_the_model(void) {
    char rt[300], err[256];
    snprintf(rt, sizeof rt, "%s/xdg", th_tmpdir());
    TH_CHECK(mkdir(rt, 0700) == 0);
    setenv("XDG_RUNTIME_DIR", rt, 1);
    ta_options o;
    memset(&o, 0, sizeof o);
    o.endpoint = NULL;
    o.backend = TK_BACKEND_REF;
    o.model = small_model;
    o.model.name = "flux 1/dev";
    ta_agent *a;
    TH_CHECKF(ta_open(&o, &a, err, sizeof err) == 0, "%s", err);
    char want[400];
    snprintf(want, sizeof want, "ipc://%s/taylorscope/agent-flux_1_dev.pub", rt);
    TH_EQ_STR(ta_endpoint(a), want);
    struct stat st;
    TH_CHECK(stat(ta_endpoint(a) + 6, &st) == 0);
    TH_EQ_INT(st.st_mode & 0777, 0600);
    /* a second agent of the same name cannot take the socket: a clear error */
    ta_agent *b = NULL;
    TH_CHECK(ta_open(&o, &b, err, sizeof err) != 0);
    TH_CHECK(b == NULL);
    TH_CHECKF(strstr(err, "agent-flux_1_dev.pub") != NULL, "%s", err);
    ta_close(a);
}

static void test_a_stale_socket_left_by_a_crashed_agent_is_reused(void) {
    char path[300], url[310], err[256];
    snprintf(path, sizeof path, "%s/stale.pub", th_tmpdir());
    snprintf(url, sizeof url, "ipc://%s", path);
    /* a bound, never-listening, closed unix socket: what a killed agent leaves */
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    TH_CHECK(fd >= 0);
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    TH_CHECK(strlen(path) < sizeof sa.sun_path);
    memcpy(sa.sun_path, path, strlen(path) + 1);
    TH_CHECK(bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0);
    close(fd);
    ta_options o;
    memset(&o, 0, sizeof o);
    o.endpoint = url;
    o.backend = TK_BACKEND_REF;
    o.model = small_model;
    ta_agent *a;
    TH_CHECKF(ta_open(&o, &a, err, sizeof err) == 0, "%s", err);
    ta_close(a);
}

static void test_a_full_queue_drops_and_counts_and_the_stream_stays_contiguous(void) {
    char url[300], ctl_url[320], err[256];
    snprintf(url, sizeof url, "ipc://%s/q.pub", th_tmpdir());
    snprintf(ctl_url, sizeof ctl_url, "ipc://%s/q.ctl", th_tmpdir());
    tt_transport *t;
    TH_CHECKF(tt_open(url, ctl_url, 4, 16, 30, NULL, &t, err, sizeof err) == 0, "%s", err);
    sub s;
    TH_CHECK(nng_sub0_open(&s.s) == 0);
    nng_socket_set(s.s, NNG_OPT_SUB_SUBSCRIBE, "", 0);
    TH_CHECK(nng_dial(s.s, url, NULL, 0) == 0);
    nng_socket_get_int(s.s, NNG_OPT_RECVFD, &s.fd);
    for (int i = 0; i < 200 && tt_subscribers(t) < 1; i++) nng_msleep(5);
    nng_msleep(20);
    tt_pause(t, 1);
    tp_msg m;
    memset(&m, 0, sizeof m);
    m.type = TP_MSG_STEP;
    snprintf(m.run_id, sizeof m.run_id, "r1");
    int dropped = 0;
    for (int i = 0; i < 10; i++) {
        m.u.step.step = i;
        dropped += tt_publish(t, &m);
    }
    TH_EQ_INT(dropped, 6);
    TH_EQ_INT(tt_dropped(t), 6);
    tt_pause(t, 0);
    TH_CHECK(tt_flush(t, 2000) == 0);
    tp_msg d;
    for (int i = 0; i < 4; i++) {
        TH_CHECK(sub_recv(&s, &d, 2000) == 0);
        TH_EQ_INT(d.seq, i + 1);
        TH_EQ_INT(d.u.step.step, i);
        tp_msg_free(&d);
    }
    /* the heartbeat (about a second later) reports the drops */
    int saw = 0;
    for (int i = 0; i < 5 && !saw; i++) {
        if (sub_recv(&s, &d, 1500) != 0) break;
        if (d.type == TP_MSG_HEARTBEAT) {
            saw = 1;
            TH_EQ_INT(d.u.hb.dropped, 6);
            TH_EQ_INT(d.seq, 5);
            TH_EQ_INT(d.u.hb.last_seq, 5);
        }
        tp_msg_free(&d);
    }
    TH_CHECK(saw);
    nng_close(s.s);
    tt_close(t);
}

/* ------------------------------------------------------------------ */
/* gates                                                               */
/* ------------------------------------------------------------------ */

static tk_reason call_reason(ta_agent *a, ta_call c) {
    tk_result res;
    TH_CHECK(ta_attention(a, &c, &res) == 0);
    if (res.reason != TK_REASON_NONE) TH_EQ_INT(res.path, TK_PATH_FALLBACK);
    return res.reason;
}

static void set_now(ta_agent *a, const char *name, const char *value) {
    char err[256];
    TH_CHECKF(ta_set_knob(a, name, value, NULL, err, sizeof err) == 0, "%s", err);
}

static void test_mode_exact_falls_back_as_disabled(void) {
    ta_agent *a;
    open_agent(NULL, 0, 0, &a);
    set_now(a, "mode", "exact");
    TH_CHECK(ta_step_begin(a, 0, 1.0) == 0);
    TH_EQ_INT(call_reason(a, small_call(TA_BLOCK_DOUBLE, 0)), TK_REASON_DISABLED);
    ta_close(a);
}

static void test_layers_outside_the_mode_range_are_skipped_by_layer(void) {
    ta_agent *a;
    open_agent(NULL, 0, 0, &a);
    set_now(a, "mode", "taylor");
    set_now(a, "taylor_layer_start", "1");
    set_now(a, "taylor_layer_end", "2");
    set_now(a, "hybrid_layer_start", "4"); /* the other mode's range does not matter */
    TH_CHECK(ta_step_begin(a, 0, 1.0) == 0);
    TH_EQ_INT(call_reason(a, small_call(TA_BLOCK_DOUBLE, 0)), TK_REASON_SKIPPED_BY_LAYER);
    TH_CHECK(call_reason(a, small_call(TA_BLOCK_DOUBLE, 1)) != TK_REASON_SKIPPED_BY_LAYER);
    /* single block 0 is global layer n_double + 0 = 2: inside */
    TH_CHECK(call_reason(a, small_call(TA_BLOCK_SINGLE, 0)) != TK_REASON_SKIPPED_BY_LAYER);
    TH_EQ_INT(call_reason(a, small_call(TA_BLOCK_SINGLE, 1)), TK_REASON_SKIPPED_BY_LAYER);
    TH_CHECK(ta_step_end(a) == 0);
    set_now(a, "mode", "hybrid");
    TH_CHECK(ta_step_begin(a, 1, 1.0) == 0);
    TH_EQ_INT(call_reason(a, small_call(TA_BLOCK_SINGLE, 1)), TK_REASON_SKIPPED_BY_LAYER);
    TH_CHECK(call_reason(a, small_call(TA_BLOCK_SINGLE, 2)) != TK_REASON_SKIPPED_BY_LAYER);
    ta_close(a);
}

static void test_sigma_above_taylor_sigma_max_is_skipped_by_sigma(void) {
    ta_agent *a;
    open_agent(NULL, 0, 0, &a);
    set_now(a, "taylor_sigma_max", "0.5");
    TH_CHECK(ta_step_begin(a, 0, 0.9) == 0);
    TH_EQ_INT(call_reason(a, small_call(TA_BLOCK_DOUBLE, 0)), TK_REASON_SKIPPED_BY_SIGMA);
    TH_CHECK(ta_step_end(a) == 0);
    TH_CHECK(ta_step_begin(a, 1, 0.5) == 0);
    TH_CHECK(call_reason(a, small_call(TA_BLOCK_DOUBLE, 0)) != TK_REASON_SKIPPED_BY_SIGMA);
    ta_close(a);
}

static void test_missing_tensors_and_unknown_blocks_are_unsupported_shape(void) {
    ta_agent *a;
    open_agent(NULL, 0, 0, &a);
    TH_CHECK(ta_step_begin(a, 0, 1.0) == 0);
    ta_call c = small_call(TA_BLOCK_DOUBLE, 0);
    c.k = NULL;
    TH_EQ_INT(call_reason(a, c), TK_REASON_UNSUPPORTED_SHAPE);
    c = small_call(TA_BLOCK_DOUBLE, 0);
    c.Nq = 0;
    TH_EQ_INT(call_reason(a, c), TK_REASON_UNSUPPORTED_SHAPE);
    TH_EQ_INT(call_reason(a, small_call(TA_BLOCK_SINGLE, 3)), TK_REASON_UNSUPPORTED_SHAPE);
    TH_EQ_INT(call_reason(a, small_call(TA_BLOCK_DOUBLE, -1)), TK_REASON_UNSUPPORTED_SHAPE);
    TH_CHECK(ta_step_end(a) == 0);
    ta_close(a);
}

static void test_step_counts_fallbacks_by_reason(void) {
    ta_agent *a;
    open_agent("counts", 0, 0, &a);
    sub s;
    sub_open(&s, a);
    char err[256];
    TH_CHECK(ta_run_begin(a, 1, "tiny", "euler", err, sizeof err) == 0);
    set_now(a, "taylor_layer_end", "1");
    TH_CHECK(ta_step_begin(a, 0, 1.0) == 0);
    for (int i = 0; i < 3; i++) call_reason(a, small_call(TA_BLOCK_SINGLE, i)); /* layers 2..4 */
    ta_call c = small_call(TA_BLOCK_DOUBLE, 0);
    c.v = NULL;
    call_reason(a, c);
    TH_CHECK(ta_step_end(a) == 0);
    TH_CHECK(ta_run_end(a, TA_RUN_FINISHED, "") == 0);
    tp_msg m;
    int found = 0;
    while (!found && sub_recv(&s, &m, 2000) == 0) {
        if (m.type == TP_MSG_STEP) {
            found = 1;
            TH_EQ_INT(m.u.step.calls, 4);
            TH_EQ_INT(m.u.step.n_fallback, 4);
            TH_EQ_INT(m.u.step.reason_counts[TK_REASON_SKIPPED_BY_LAYER], 3);
            TH_EQ_INT(m.u.step.reason_counts[TK_REASON_UNSUPPORTED_SHAPE], 1);
            TH_EQ_INT(m.u.step.n_layers, 4);
            TH_EQ_INT(m.u.step.layers[1].layer, 2);
            TH_EQ_INT(m.u.step.layers[1].reason, TK_REASON_SKIPPED_BY_LAYER);
        }
        tp_msg_free(&m);
    }
    TH_CHECK(found);
    ta_close(a); /* the publisher first: nng 1.5.2 can hang closing a SUB whose peer still sends */
    sub_close(&s);
}

/* The kernel-side reasons, through the agent and the ref backend. */

static float kq[1 * 2 * 16 * 8], kk[1 * 2 * 16 * 8], kv[1 * 2 * 16 * 8], ko[1 * 2 * 16 * 8];

static void fill_random(void) {
    uint64_t x = 12345;
    for (size_t i = 0; i < sizeof kq / sizeof kq[0]; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        kq[i] = (float)((x >> 11) * 0x1.0p-53 - 0.5);
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        kk[i] = (float)((x >> 11) * 0x1.0p-53 - 0.5);
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        kv[i] = (float)((x >> 11) * 0x1.0p-53 - 0.5);
    }
}

static ta_call kernel_call(void) {
    ta_call c = small_call(TA_BLOCK_DOUBLE, 0);
    c.q = kq, c.k = kk, c.v = kv, c.o = ko;
    return c;
}

/* An agent with telemetry off whose config is the defaults plus `sets`
 * ("name=value" pairs, NULL-terminated), in force from step 0. */
static ta_agent *agent_with(const char *const *sets) {
    ta_agent *a;
    open_agent(NULL, 0, 0, &a);
    set_now(a, "min_tokens", "0");
    set_now(a, "sub_head_blocks", "1");
    for (int i = 0; sets && sets[i]; i++) {
        char name[64];
        const char *eq = strchr(sets[i], '=');
        snprintf(name, sizeof name, "%.*s", (int)(eq - sets[i]), sets[i]);
        set_now(a, name, eq + 1);
    }
    TH_CHECK(ta_step_begin(a, 0, 1.0) == 0);
    return a;
}

static void expect_kernel_reason(const char *const *sets, ta_call c, tk_reason want) {
    ta_agent *a = agent_with(sets);
    tk_result res;
    TH_CHECK(ta_attention(a, &c, &res) == 0);
    TH_CHECKF(res.reason == want, "got %s (%s), expected %s", tk_reason_name(res.reason),
              res.detail, tk_reason_name(want));
    TH_EQ_INT(res.path, TK_PATH_FALLBACK);
    ta_close(a);
}

static void test_a_plain_taylor_call_runs_and_reports_its_stats(void) {
    fill_random();
    ta_agent *a = agent_with(NULL);
    tk_result res;
    ta_call c = kernel_call();
    memset(ko, 0, sizeof ko);
    TH_CHECK(ta_attention(a, &c, &res) == 0);
    TH_CHECKF(res.reason == TK_REASON_NONE, "%s: %s", tk_reason_name(res.reason), res.detail);
    TH_EQ_INT(res.path, TK_PATH_TAYLOR);
    TH_CHECK(res.stats.have & TK_HAVE_QUALITY);
    TH_CHECK(res.stats.quality_raw.rel_l2_mean < 0.5);
    int nonzero = 0;
    for (size_t i = 0; i < sizeof ko / sizeof ko[0]; i++) nonzero += ko[i] != 0;
    TH_CHECK(nonzero > 0);
    ta_close(a);
}

static void test_kernel_limits_give_their_reasons(void) {
    fill_random();
    ta_call c = kernel_call();
    c.Nk = 8;
    expect_kernel_reason(NULL, c, TK_REASON_CROSS_ATTENTION_DISABLED);
    expect_kernel_reason((const char *[]){"min_tokens=100", NULL}, kernel_call(),
                         TK_REASON_BELOW_MIN_TOKENS);
    expect_kernel_reason((const char *[]){"max_head_dim=4", NULL}, kernel_call(),
                         TK_REASON_HEAD_DIM_TOO_LARGE);
    expect_kernel_reason((const char *[]){"sub_head_blocks=3", NULL}, kernel_call(),
                         TK_REASON_SUB_HEAD_BLOCK_MISMATCH);
    expect_kernel_reason((const char *[]){"max_feature_dim_R=10", NULL}, kernel_call(),
                         TK_REASON_FEATURE_DIM_TOO_LARGE);
    static const uint8_t none_kept[16] = {0};
    c = kernel_call();
    c.key_mask = none_kept;
    expect_kernel_reason(NULL, c, TK_REASON_UNSUPPORTED_MASK);
    c = kernel_call();
    c.dtype = TK_DTYPE_F16; /* the ref backend takes f32 only */
    expect_kernel_reason(NULL, c, TK_REASON_UNSUPPORTED_SHAPE);
}

static void test_nan_input_is_bad_input(void) {
    fill_random();
    kq[5] = NAN;
    expect_kernel_reason(NULL, kernel_call(), TK_REASON_BAD_INPUT);
    fill_random();
    kv[7] = INFINITY;
    expect_kernel_reason(NULL, kernel_call(), TK_REASON_BAD_INPUT);
}

static void test_negative_denominators_fall_back_at_the_probe_or_in_full(void) {
    /* P = 2: kappa = 1 + x, negative for q.k strongly negative */
    for (size_t i = 0; i < sizeof kq / sizeof kq[0]; i++) kq[i] = 3, kk[i] = -3, kv[i] = 1;
    ta_agent *a = agent_with((const char *[]){"terms=2", NULL});
    tk_result res;
    ta_call c = kernel_call();
    TH_CHECK(ta_attention(a, &c, &res) == 0);
    TH_EQ_INT(res.reason, TK_REASON_DENOMINATOR_TOO_SMALL);
    TH_EQ_INT(res.stage, TK_STAGE_PROBE);
    ta_close(a);
    a = agent_with((const char *[]){"terms=2", "early_probe=false", NULL});
    TH_CHECK(ta_attention(a, &c, &res) == 0);
    TH_EQ_INT(res.reason, TK_REASON_DENOMINATOR_TOO_SMALL);
    TH_EQ_INT(res.stage, TK_STAGE_FULL);
    ta_close(a);
}

static void test_overflowing_denominators_are_denominator_invalid(void) {
    /* finite input whose degree-7 terms overflow double: den = inf */
    for (size_t i = 0; i < sizeof kq / sizeof kq[0]; i++) kq[i] = 1e38f, kk[i] = 1e38f, kv[i] = 1;
    expect_kernel_reason((const char *[]){"terms=8", NULL}, kernel_call(),
                         TK_REASON_DENOMINATOR_INVALID);
}

static void test_a_workspace_that_cannot_be_allocated_is_out_of_memory(void) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
    th_skip("address-space limits and a sanitizer's allocator do not mix");
#endif
    if (getenv("TS_SANITIZE")) th_skip("address-space limits and the sanitizer's shadow memory do not mix");
    /* R(64,5) = 814,385 features: the reference S alone is 814,385 x 64 doubles = 417 MB */
    enum { N = 64, D = 64 };
    static float q[N * D], k[N * D], v[N * D], o[N * D];
    for (int i = 0; i < N * D; i++) q[i] = k[i] = v[i] = (float)((i % 7) - 3) * 0.01f;
    ta_agent *a = agent_with((const char *[]){"terms=5", "max_feature_dim_R=100000000",
                                              "max_head_dim=4096", "stats=false", NULL});
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f) th_skip("no /proc/self/statm");
    unsigned long pages = 0;
    TH_CHECK(fscanf(f, "%lu", &pages) == 1);
    fclose(f);
    struct rlimit rl = {(rlim_t)pages * 4096 + (64ul << 20), RLIM_INFINITY};
    TH_CHECK(setrlimit(RLIMIT_AS, &rl) == 0);
    ta_call c = small_call(TA_BLOCK_DOUBLE, 0);
    c.H = 1, c.Nq = N, c.Nk = N, c.D = D, c.Dv = D;
    c.q = q, c.k = k, c.v = v, c.o = o;
    tk_result res;
    TH_CHECK(ta_attention(a, &c, &res) == 0);
    TH_CHECKF(res.reason == TK_REASON_OUT_OF_MEMORY, "got %s (%s)", tk_reason_name(res.reason),
              res.detail);
    ta_close(a);
}

static void test_a_hybrid_step_reports_window_weight_and_window_mass(void) {
    fill_random();
    ta_agent *a;
    open_agent("hyb", 0, 0, &a);
    sub s;
    sub_open(&s, a);
    set_now(a, "min_tokens", "0");
    set_now(a, "mode", "hybrid");
    set_now(a, "local_window", "1");
    set_now(a, "global_weight", "0.5");
    char err[256];
    TH_CHECK(ta_run_begin(a, 1, "tiny", "euler", err, sizeof err) == 0);
    TH_CHECK(ta_step_begin(a, 0, 0.3) == 0);
    /* the model's token count (4 text + 2x2 grid): the 2d window has its grid */
    ta_call c = kernel_call();
    c.Nq = c.Nk = 8;
    tk_result res;
    TH_CHECK(ta_attention(a, &c, &res) == 0);
    TH_CHECKF(res.reason == TK_REASON_NONE, "%s: %s", tk_reason_name(res.reason), res.detail);
    TH_EQ_INT(res.path, TK_PATH_HYBRID);
    TH_CHECK(ta_step_end(a) == 0);
    TH_CHECK(ta_run_end(a, TA_RUN_FINISHED, "") == 0);
    tp_msg m;
    int found = 0;
    while (!found && sub_recv(&s, &m, 2000) == 0) {
        if (m.type == TP_MSG_STEP) {
            found = 1;
            TH_EQ_INT(m.u.step.n_hybrid, 1);
            TH_EQ_INT(m.u.step.window, 1);
            TH_NEAR(m.u.step.w, 0.5, 1e-12);
            TH_CHECK(m.u.step.have & TP_HAVE_WINDOW);
            TH_CHECK(m.u.step.window_mass_mean > 0 && m.u.step.window_mass_mean <= 1 + 1e-9);
            TH_EQ_INT(m.u.step.layers[0].path, TK_PATH_HYBRID);
            TH_EQ_INT(m.u.step.layers[0].window, 1);
            TH_CHECK(m.u.step.layers[0].R > 0);
        }
        tp_msg_free(&m);
    }
    TH_CHECK(found);
    ta_close(a); /* the publisher first: nng 1.5.2 can hang closing a SUB whose peer still sends */
    sub_close(&s);
}

static void test_autotune_locks_its_best_candidate_with_origin_autotune(void) {
    fill_random();
    ta_agent *a;
    open_agent("tune", 0, 0, &a);
    sub s;
    sub_open(&s, a);
    set_now(a, "min_tokens", "0");
    set_now(a, "sub_head_blocks", "1");
    set_now(a, "auto_tune", "true");
    set_now(a, "auto_tune_steps", "2");
    set_now(a, "auto_tune_candidates", "3");
    char err[256];
    TH_CHECK(ta_run_begin(a, 4, "tiny", "euler", err, sizeof err) == 0);
    TH_EQ_INT(ta_config(a)->auto_tune, 1);
    uint32_t v0 = ta_config_version(a);
    for (int step = 0; step < 4; step++) {
        TH_CHECK(ta_step_begin(a, step, 1.0) == 0);
        for (int i = 0; i < 6; i++) {
            ta_call c = kernel_call();
            tk_result res;
            TH_CHECK(ta_attention(a, &c, &res) == 0);
        }
        TH_CHECK(ta_step_end(a) == 0);
    }
    TH_CHECK(ta_run_end(a, TA_RUN_FINISHED, "") == 0);
    tp_msg m;
    int found = 0, end = 0;
    while (!end && sub_recv(&s, &m, 2000) == 0) {
        if (m.type == TP_MSG_KNOB_EVENT && m.u.knob.status == TP_KNOB_APPLIED) {
            TH_EQ_STR(m.u.knob.origin, "autotune");
            TH_EQ_INT(m.u.knob.effective_step, 2);
            TH_EQ_INT(m.u.knob.n_changes, 3);
            TH_EQ_STR(m.u.knob.changes[0].name, "qk_norm_power");
            TH_EQ_STR(m.u.knob.changes[2].name, "scale_mul");
            found++;
        }
        end = m.type == TP_MSG_RUN_END;
        tp_msg_free(&m);
    }
    TH_EQ_INT(found, 1);
    TH_EQ_INT(ta_config_version(a), v0 + 1);
    ta_close(a); /* the publisher first: nng 1.5.2 can hang closing a SUB whose peer still sends */
    sub_close(&s);
}

/* ------------------------------------------------------------------ */
/* aggregation and auto-tune, on results built by hand                 */
/* ------------------------------------------------------------------ */

static tk_result fake_result(double rel, double den_min, int64_t le_eps) {
    tk_result r;
    memset(&r, 0, sizeof r);
    r.path = TK_PATH_TAYLOR;
    r.R = 969;
    r.window = -1;
    r.stats.have = TK_HAVE_QUALITY | TK_HAVE_DENOMS;
    r.stats.quality_raw = (tk_quality){rel, rel * 2, rel * 3, 0.9, 0.95, 0, 0, 16};
    r.stats.quality_eff = (tk_quality){rel / 2, rel, rel, 0.99, 0.99, 0, 0, 16};
    r.stats.den = (tk_denoms){den_min, 10, 5, 64, le_eps, 0};
    return r;
}

static void test_step_quantiles_are_over_calls_and_nan_is_kept(void) {
    tai_agg g;
    TH_CHECK(tai_agg_init(&g, 4) == 0);
    tai_agg_begin(&g, 3, 0.5, 2);
    for (int i = 0; i < 4; i++) {
        tk_result r = fake_result(0.1 * (i + 1), 0.5 - i, i);
        tai_agg_add(&g, i, &r, 1.0);
    }
    tk_result fb;
    memset(&fb, 0, sizeof fb);
    fb.reason = TK_REASON_DENOMINATOR_TOO_SMALL;
    fb.stage = TK_STAGE_PROBE;
    tai_agg_add(&g, 0, &fb, 0.5);
    const tp_step *s = tai_agg_finish(&g, 10, 1);
    TH_EQ_INT(s->calls, 5);
    TH_EQ_INT(s->n_taylor, 4);
    TH_EQ_INT(s->n_fallback, 1);
    TH_EQ_INT(s->probe_fallbacks, 1);
    TH_NEAR(s->attn_ms, 4.5, 1e-12);
    TH_NEAR(s->quality_raw_mean, 0.25, 1e-12);
    TH_NEAR(s->quality_raw_p50, 0.25, 1e-12);
    TH_NEAR(s->quality_raw_max, 1.2, 1e-12);
    TH_NEAR(s->den_min, -2.5, 1e-12);
    TH_EQ_INT(s->den_le_eps, 6);
    TH_EQ_INT(s->n_layers, 4);
    TH_EQ_INT(s->layers[0].calls, 2);
    TH_EQ_INT(s->layers[0].fallbacks, 1);
    TH_EQ_INT(s->layers[0].reason, TK_REASON_DENOMINATOR_TOO_SMALL);
    TH_CHECK(s->have & TP_HAVE_QUALITY);
    TH_CHECK(!(s->have & TP_HAVE_WINDOW));
    /* a NaN quality stays NaN */
    tai_agg_begin(&g, 4, 0.4, 2);
    tk_result r = fake_result(NAN, 1, 0);
    tai_agg_add(&g, 1, &r, 1.0);
    s = tai_agg_finish(&g, 1, 0);
    TH_CHECK(isnan(s->quality_raw_mean));
    TH_CHECK(isnan(s->quality_raw_max));
    TH_EQ_INT(s->n_layers, 0); /* per_layer_records off */
    tai_agg_free(&g);
}

static void test_autotune_picks_the_candidate_with_the_best_score(void) {
    tk_config cfg;
    tk_config_defaults(&cfg);
    cfg.auto_tune = 1;
    cfg.auto_tune_candidates = 5;
    tai_tune t;
    memset(&t, 0, sizeof t);
    TH_CHECK(tai_tune_begin(&t, &cfg) == 0);
    TH_EQ_INT(t.n, 5);
    for (int i = 0; i < 5; i++) {
        TH_CHECK(t.cand[i].power >= cfg.auto_tune_power_min && t.cand[i].power <= cfg.auto_tune_power_max);
        TH_CHECK(t.cand[i].clip >= cfg.auto_tune_clip_min && t.cand[i].clip <= cfg.auto_tune_clip_max);
        TH_CHECK(t.cand[i].scale_mul >= cfg.auto_tune_scale_min &&
                 t.cand[i].scale_mul <= cfg.auto_tune_scale_max);
    }
    for (int call = 0; call < 20; call++) {
        tk_config scratch;
        int idx = -1;
        const tk_config *c = tai_tune_config(&t, &cfg, &scratch, &idx);
        TH_CHECK(c != NULL);
        TH_EQ_INT(idx, call % 5);
        TH_NEAR(c->qk_norm_power, t.cand[idx].power, 0);
        /* candidate 3 is best on quality; candidate 1 even better but its denominators fail */
        tk_result r = fake_result(idx == 3 ? 0.01 : idx == 1 ? 0.001 : 0.2, 1, idx == 1 ? 32 : 0);
        tai_tune_score(&t, idx, &r);
    }
    const tai_candidate *best = tai_tune_best(&t);
    TH_CHECK(best == &t.cand[3]);
    tai_tune_free(&t);
}

static const th_test tests[] = {
    TH_TEST(test_every_knob_refuses_values_outside_its_type_and_bounds),
    TH_TEST(test_every_knob_accepts_both_ends_of_its_range),
    TH_TEST(test_a_pair_out_of_order_is_refused_by_the_whole_config_check),
    TH_TEST(test_a_knob_that_is_not_live_is_refused_during_a_run),
    TH_TEST(test_a_change_sent_mid_step_applies_at_the_next_step_never_earlier),
    TH_TEST(test_a_resent_request_id_applies_once),
    TH_TEST(test_an_expected_version_mismatch_is_refused),
    TH_TEST(test_get_knobs_reports_the_config_in_force),
    TH_TEST(test_a_subscriber_sees_header_steps_knob_events_and_run_end_in_order),
    TH_TEST(test_the_header_is_resent_with_the_config_in_force),
    TH_TEST(test_a_replay_request_returns_the_missing_messages),
    TH_TEST(test_a_replay_too_large_for_one_reply_comes_in_parts),
    TH_TEST(test_bad_control_messages_get_an_error_reply_and_the_agent_keeps_serving),
    TH_TEST(test_ipc_sockets_are_private),
    TH_TEST(test_the_default_endpoint_is_private_and_named_after_the_model),
    TH_TEST(test_a_stale_socket_left_by_a_crashed_agent_is_reused),
    TH_TEST(test_a_full_queue_drops_and_counts_and_the_stream_stays_contiguous),
    TH_TEST(test_mode_exact_falls_back_as_disabled),
    TH_TEST(test_layers_outside_the_mode_range_are_skipped_by_layer),
    TH_TEST(test_sigma_above_taylor_sigma_max_is_skipped_by_sigma),
    TH_TEST(test_missing_tensors_and_unknown_blocks_are_unsupported_shape),
    TH_TEST(test_step_counts_fallbacks_by_reason),
    TH_TEST(test_a_plain_taylor_call_runs_and_reports_its_stats),
    TH_TEST(test_kernel_limits_give_their_reasons),
    TH_TEST(test_nan_input_is_bad_input),
    TH_TEST(test_negative_denominators_fall_back_at_the_probe_or_in_full),
    TH_TEST(test_overflowing_denominators_are_denominator_invalid),
    TH_TEST(test_a_workspace_that_cannot_be_allocated_is_out_of_memory),
    TH_TEST(test_a_hybrid_step_reports_window_weight_and_window_mass),
    TH_TEST(test_autotune_locks_its_best_candidate_with_origin_autotune),
    TH_TEST(test_step_quantiles_are_over_calls_and_nan_is_kept),
    TH_TEST(test_autotune_picks_the_candidate_with_the_best_score),
    {0},
};

int main(int argc, char **argv) { return th_main(tests, argc, argv); }

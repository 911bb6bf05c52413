/* link_test.c -- the console's sockets against a synthetic agent over ipc:
 * knob changes acknowledged or refused with the agent's error, the stream
 * and replies read without ever blocking, a silent agent given up on. */
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "harness.h"
#include "synth_pub.h"
#include "ui/link.h"
#include "ui/model.h"

static const char *ipc_url(const char *name) {
    static char buf[600];
    snprintf(buf, sizeof buf, "ipc://%s/%s.pub", th_tmpdir(), name);
    return buf;
}

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Waits (polling the reply descriptor, as the live loop does) for the reply. */
static int wait_reply(tc_link *l, tp_reply *rep, int timeout_ms) {
    char err[256];
    int64_t end = now_ns() + (int64_t)timeout_ms * 1000000;
    while (now_ns() < end) {
        struct pollfd p = {.fd = l->req_fd, .events = POLLIN};
        poll(&p, 1, 20);
        int rc = tc_link_recv_reply(l, rep, err, sizeof err);
        if (rc != 0) return rc;
    }
    return 0;
}

static int send_set(tc_link *l, const char *name, const char *value) {
    tp_knob_change ch;
    memset(&ch, 0, sizeof ch);
    snprintf(ch.name, sizeof ch.name, "%s", name);
    snprintf(ch.value, sizeof ch.value, "%s", value);
    tp_request r;
    memset(&r, 0, sizeof r);
    r.op = TP_OP_SET_KNOBS;
    snprintf(r.origin, sizeof r.origin, "console");
    r.expected_version = -1;
    r.n_changes = 1;
    r.changes = &ch;
    char err[256];
    int rc;
    int64_t end = now_ns() + 3000 * 1000000LL;
    /* not connected yet: the dial is in the background */
    while ((rc = tc_link_send_request(l, &r, now_ns(), err, sizeof err)) == 1 && now_ns() < end) {
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
    return rc;
}

static void test_a_knob_change_is_acknowledged_with_the_step_it_takes_effect_at(void) {
    const char *url = ipc_url("ack");
    tc_synth *syn;
    tc_link l;
    char err[512];
    TH_CHECKF(tc_synth_open(url, "run-ack", 0, &syn, err, sizeof err) == 0, "%s", err);
    TH_CHECKF(tc_link_open(&l, url, 1, err, sizeof err) == 0, "%s", err);
    tc_synth_step(syn, 4, 3);
    TH_EQ_INT(send_set(&l, "local_window_min", "3"), 0);
    TH_EQ_INT(send_set(&l, "local_window_min", "5"), -1); /* one request at a time */
    tp_reply rep;
    memset(&rep, 0, sizeof rep);
    TH_EQ_INT(wait_reply(&l, &rep, 3000), 1);
    TH_CHECKF(rep.ok, "refused: %s", rep.error);
    TH_EQ_INT(rep.effective_step, 5);
    tk_config c;
    tc_synth_config(syn, &c);
    TH_EQ_INT(c.local_window_min, 3);
    tp_reply_free(&rep);
    tc_link_close(&l);
    tc_synth_close(syn);
}

static void test_an_out_of_range_value_comes_back_as_the_agents_error_and_changes_nothing(void) {
    const char *url = ipc_url("bad");
    tc_synth *syn;
    tc_link l;
    char err[512];
    TH_CHECKF(tc_synth_open(url, "run-bad", 0, &syn, err, sizeof err) == 0, "%s", err);
    TH_CHECKF(tc_link_open(&l, url, 0, err, sizeof err) == 0, "%s", err);
    TH_EQ_INT(send_set(&l, "local_window_min", "-5"), 0);
    tp_reply rep;
    memset(&rep, 0, sizeof rep);
    TH_EQ_INT(wait_reply(&l, &rep, 3000), 1);
    TH_CHECK(!rep.ok);
    TH_CHECKF(strstr(rep.error, "local_window_min") && strstr(rep.error, "range"), "error: %s", rep.error);
    tk_config c;
    tc_synth_config(syn, &c);
    TH_EQ_INT(c.local_window_min, 8);
    tp_reply_free(&rep);
    tc_link_close(&l);
    tc_synth_close(syn);
}

static void test_the_stream_is_read_without_blocking_and_feeds_the_model(void) {
    const char *url = ipc_url("stream");
    tc_synth *syn;
    tc_link l;
    char err[512];
    TH_CHECKF(tc_synth_open(url, "run-stream", 0, &syn, err, sizeof err) == 0, "%s", err);
    TH_CHECKF(tc_link_open(&l, url, 1, err, sizeof err) == 0, "%s", err);
    tp_msg msg;
    memset(&msg, 0, sizeof msg);
    int64_t t0 = now_ns();
    TH_EQ_INT(tc_link_recv_msg(&l, &msg, err, sizeof err), 0); /* nothing yet: returns at once */
    TH_CHECK(now_ns() - t0 < 50 * 1000000LL);
    for (int i = 0; i < 200 && tc_synth_subscribers(syn) == 0; i++) {
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
    tc_synth_header(syn, 5, 4);
    for (int s = 0; s < 3; s++) tc_synth_step(syn, s, 4);
    tc_model m;
    tc_model_init(&m);
    int64_t end = now_ns() + 3000 * 1000000LL;
    while (m.n_steps < 3 && now_ns() < end) {
        struct pollfd p = {.fd = l.sub_fd, .events = POLLIN};
        poll(&p, 1, 20);
        int rc;
        while ((rc = tc_link_recv_msg(&l, &msg, err, sizeof err)) == 1) {
            TH_EQ_INT(tc_model_apply(&m, &msg, now_ns(), err, sizeof err), 0);
            tp_msg_free(&msg);
        }
        TH_CHECKF(rc == 0, "%s", err);
    }
    TH_EQ_INT(m.n_steps, 3);
    TH_EQ_STR(m.run_id, "run-stream");
    TH_EQ_INT(tc_model_total_steps(&m), 5);
    tc_model_free(&m);
    tc_link_close(&l);
    tc_synth_close(syn);
}

static void test_a_request_to_an_absent_agent_is_given_up_not_waited_for(void) {
    tc_link l;
    char err[512];
    TH_CHECKF(tc_link_open(&l, ipc_url("nobody"), 1, err, sizeof err) == 0, "%s", err);
    tp_knob_change ch = {"eps", "0.001", ""};
    tp_request r;
    memset(&r, 0, sizeof r);
    r.op = TP_OP_SET_KNOBS;
    r.n_changes = 1;
    r.changes = &ch;
    int64_t t0 = now_ns();
    int sent = tc_link_send_request(&l, &r, now_ns(), err, sizeof err);
    TH_CHECK(now_ns() - t0 < 100 * 1000000LL); /* never waits for a connection */
    TH_CHECKF(sent == 1, "sent %d: %s", sent, err);
    TH_CHECKF(strstr(err, "not connected"), "%s", err);
    if (sent == 0) {
        tp_reply rep;
        memset(&rep, 0, sizeof rep);
        TH_EQ_INT(wait_reply(&l, &rep, 200), 0);
        TH_EQ_INT(tc_link_request_expired(&l, now_ns() + 5000 * 1000000LL, 3000), 1);
        TH_CHECK(!l.busy);
    }
    tc_link_close(&l);
}

static const th_test tests[] = {
    TH_TEST(test_a_knob_change_is_acknowledged_with_the_step_it_takes_effect_at),
    TH_TEST(test_an_out_of_range_value_comes_back_as_the_agents_error_and_changes_nothing),
    TH_TEST(test_the_stream_is_read_without_blocking_and_feeds_the_model),
    TH_TEST(test_a_request_to_an_absent_agent_is_given_up_not_waited_for),
    {0},
};

int main(int argc, char **argv) { return th_main(tests, argc, argv); }

/* host_test.c -- the host loop drives the agent like a sampler: every layer
 * of every step, fallbacks answered by exact attention, every step delivered
 * to a subscriber. And the command line refuses what it cannot run. */
#include "agent.h"
#include "harness.h"
#include "proto.h"
#include "sim.h"

#include <nng/nng.h>
#include <nng/protocol/pubsub0/sub.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void parse(tsim_options *o, int argc, char **argv) {
    char err[256];
    TH_CHECKF(tsim_parse_args(argc, argv, o, err, sizeof err) == 0, "%s", err);
}

static void test_a_run_calls_every_layer_of_every_step(void) {
    char *argv[] = {"taylor-sim", "-q", "--listen", "none", "--steps", "4", "--mode", "taylor"};
    tsim_options o;
    parse(&o, 8, argv);
    tsim_run_stats st;
    char err[512];
    TH_CHECKF(tsim_run(&o, &st, err, sizeof err) == 0, "%s", err);
    TH_EQ_INT(st.steps_done, 4);
    TH_EQ_INT(st.calls, 4 * 8);
    int64_t by_path = 0, by_reason = 0;
    for (int p = 0; p < 4; p++) by_path += st.by_path[p];
    for (int r = 0; r < TK_REASON_COUNT; r++) by_reason += st.by_reason[r];
    TH_EQ_INT(by_path, st.calls);
    TH_EQ_INT(by_reason, st.fallbacks);
    TH_EQ_INT(st.by_path[TK_PATH_FALLBACK], st.fallbacks);
    TH_CHECK(st.output_abs_sum > 0); /* every call wrote an output, approximate or exact */
}

static void test_fallbacks_are_answered_by_the_hosts_exact_path(void) {
    /* every layer outside the taylor range: all fall back, all answered */
    char *argv[] = {"taylor-sim", "-q", "--listen", "none", "--steps", "2", "--mode", "taylor",
                    "--knob", "taylor_layer_start=100"};
    tsim_options o;
    parse(&o, 10, argv);
    tsim_run_stats st;
    char err[512];
    TH_CHECKF(tsim_run(&o, &st, err, sizeof err) == 0, "%s", err);
    TH_EQ_INT(st.fallbacks, st.calls);
    TH_EQ_INT(st.by_reason[TK_REASON_SKIPPED_BY_LAYER], st.calls);
    TH_CHECK(st.exact_ms > 0);
    /* the same run in exact mode gives the same outputs */
    char *argv2[] = {"taylor-sim", "-q", "--listen", "none", "--steps", "2", "--mode", "exact"};
    tsim_options o2;
    parse(&o2, 8, argv2);
    tsim_run_stats ex;
    TH_CHECKF(tsim_run(&o2, &ex, err, sizeof err) == 0, "%s", err);
    TH_NEAR(st.output_abs_sum, ex.output_abs_sum, 1e-6 * ex.output_abs_sum);
}

/* ---- a subscriber ---- */

typedef struct {
    char url[512];
    int steps_seen[64];
    int headers, run_ends, decode_errors;
    uint64_t last_seq, gaps;
    int ready, done;
    char err[1024];
} sub_state;

static void *subscriber(void *arg) {
    sub_state *s = arg;
    nng_socket sock;
    if (nng_sub0_open(&sock) != 0) {
        snprintf(s->err, sizeof s->err, "cannot open SUB");
        s->done = 1;
        return NULL;
    }
    nng_socket_set(sock, NNG_OPT_SUB_SUBSCRIBE, "", 0);
    nng_socket_set_int(sock, NNG_OPT_RECVBUF, 8192);
    int rv;
    for (int i = 0; i < 200 && (rv = nng_dial(sock, s->url, NULL, 0)) != 0; i++) {
        struct timespec ts = {0, 25 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    if (rv != 0) {
        snprintf(s->err, sizeof s->err, "cannot dial %s: %s", s->url, nng_strerror(rv));
        nng_close(sock);
        s->done = 1;
        return NULL;
    }
    int fd;
    nng_socket_get_int(sock, NNG_OPT_RECVFD, &fd);
    __atomic_store_n(&s->ready, 1, __ATOMIC_SEQ_CST);
    for (int idle = 0; idle < 300 && !s->run_ends;) { /* up to 30 s without a message */
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, 100) <= 0) {
            idle++;
            continue;
        }
        idle = 0;
        nng_msg *msg;
        if (nng_recvmsg(sock, &msg, NNG_FLAG_NONBLOCK) != 0) continue;
        tp_msg m;
        char e[256];
        if (tp_decode_msg(nng_msg_body(msg), nng_msg_len(msg), &m, e, sizeof e) != 0) {
            s->decode_errors++;
        } else {
            /* every message, header re-sends and heartbeats too, takes the next seq */
            if (s->last_seq && m.seq != s->last_seq + 1) s->gaps++;
            s->last_seq = m.seq;
            if (m.type == TP_MSG_HEADER) s->headers++;
            if (m.type == TP_MSG_STEP && m.u.step.step >= 0 && m.u.step.step < 64)
                s->steps_seen[m.u.step.step]++;
            if (m.type == TP_MSG_RUN_END) s->run_ends++;
            tp_msg_free(&m);
        }
        nng_msg_free(msg);
    }
    nng_close(sock);
    __atomic_store_n(&s->done, 1, __ATOMIC_SEQ_CST);
    return NULL;
}

static void test_a_full_tiny_run_with_a_subscriber_delivers_every_step(void) {
    sub_state *s = calloc(1, sizeof *s);
    TH_CHECK(s != NULL);
    snprintf(s->url, sizeof s->url, "ipc://%s/sim.pub", th_tmpdir());
    char *argv[] = {"taylor-sim", "-q", "--listen", s->url, "--wait-console", "20", "--mode", "hybrid"};
    tsim_options o;
    parse(&o, 8, argv);
    pthread_t t;
    TH_EQ_INT(pthread_create(&t, NULL, subscriber, s), 0);
    tsim_run_stats st;
    char err[512];
    int rc = tsim_run(&o, &st, err, sizeof err);
    pthread_join(t, NULL);
    TH_CHECKF(rc == 0, "%s", err);
    TH_CHECKF(!s->err[0], "%s", s->err);
    TH_EQ_INT(st.steps_done, 20);
    for (int i = 0; i < 20; i++) TH_CHECKF(s->steps_seen[i] == 1, "step %d seen %d times", i, s->steps_seen[i]);
    TH_CHECK(s->headers >= 1);
    TH_EQ_INT(s->run_ends, 1);
    TH_EQ_INT(s->decode_errors, 0);
    TH_EQ_INT(s->gaps, 0);
    TH_EQ_INT(st.dropped, 0);
    free(s);
}

static void test_without_a_console_the_run_starts_after_the_wait(void) {
    char url[600];
    snprintf(url, sizeof url, "ipc://%s/lonely.pub", th_tmpdir());
    char *argv[] = {"taylor-sim", "-q", "--listen", url, "--wait-console", "0.3", "--steps", "1"};
    tsim_options o;
    parse(&o, 8, argv);
    tsim_run_stats st;
    char err[512];
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    TH_CHECKF(tsim_run(&o, &st, err, sizeof err) == 0, "%s", err);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double waited_s = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
    TH_EQ_INT(st.steps_done, 1);
    TH_CHECKF(waited_s >= 0.29, "the run took %.3f s, less than the 0.3 s wait", waited_s);
}

/* ---- the command line ---- */

static void expect_bad(const char *needle, int argc, char **argv) {
    tsim_options o;
    char err[256] = "";
    TH_CHECKF(tsim_parse_args(argc, argv, &o, err, sizeof err) != 0, "accepted (%s)", needle);
    TH_CHECKF(strstr(err, needle) != NULL, "message \"%s\" lacks \"%s\"", err, needle);
}

static void test_bad_options_are_named(void) {
    char *a1[] = {"taylor-sim", "--model", "flux9"};
    expect_bad("unknown model \"flux9\"", 3, a1);
    char *a2[] = {"taylor-sim", "--steps", "0"};
    expect_bad("--steps: expected an integer in [1, 10000]", 3, a2);
    char *a3[] = {"taylor-sim", "--width", "250"};
    expect_bad("--width: 250 is not a multiple of 16", 3, a3);
    char *a4[] = {"taylor-sim", "--knob", "qk_norm_power=9"};
    expect_bad("qk_norm_power", 3, a4);
    char *a5[] = {"taylor-sim", "--knob", "no_such_knob=1"};
    expect_bad("no_such_knob", 3, a5);
    char *a6[] = {"taylor-sim", "--knob", "terms"};
    expect_bad("expected NAME=VALUE", 3, a6);
    char *a7[] = {"taylor-sim", "--mode", "fast"};
    expect_bad("--mode", 3, a7);
    char *a8[] = {"taylor-sim", "--backend", "tpu"};
    expect_bad("expected ref|cpu|cuda", 3, a8);
    char *a9[] = {"taylor-sim", "--frobnicate"};
    expect_bad("unknown option \"--frobnicate\"", 2, a9);
    char *a10[] = {"taylor-sim", "--seed"};
    expect_bad("--seed needs a value", 2, a10);
    char *a11[] = {"taylor-sim", "--wait-console", "-1"};
    expect_bad("--wait-console: expected seconds", 3, a11);
    char *a12[] = {"taylor-sim", "--replay", "x", "--capture", "y"};
    expect_bad("cannot be combined", 5, a12);
    char *a13[] = {"taylor-sim", "--listen", "none", "--wait-console", "5"};
    expect_bad("--wait-console needs telemetry", 5, a13);
}

static void test_options_set_knobs_in_order(void) {
    char *argv[] = {"taylor-sim", "--mode=hybrid", "--knob", "local_window=4", "--knob",
                    "local-window=6", "--model", "flux1", "--width", "512", "--seed", "99"};
    tsim_options o;
    parse(&o, 12, argv);
    TH_EQ_INT(o.knobs.mode, TK_MODE_HYBRID);
    TH_EQ_INT(o.knobs.local_window, 6);
    TH_EQ_STR(o.model, "flux1");
    TH_EQ_INT(o.width_px, 512);
    TH_EQ_INT(o.height_px, 0);
    TH_EQ_INT(o.seed, 99);
}

static const th_test tests[] = {
    TH_TEST(test_a_run_calls_every_layer_of_every_step),
    TH_TEST(test_fallbacks_are_answered_by_the_hosts_exact_path),
    TH_TEST(test_a_full_tiny_run_with_a_subscriber_delivers_every_step),
    TH_TEST(test_without_a_console_the_run_starts_after_the_wait),
    TH_TEST(test_bad_options_are_named),
    TH_TEST(test_options_set_knobs_in_order),
    {0},
};

int main(int argc, char **argv) { return th_main(tests, argc, argv); }

/* cmd_tap.c -- `taylorscope tap URL`: the decoded stream, one text line per
 * message (tp_msg_to_text). Reads by polling the SUB socket's receive fd. */
#include <errno.h>
#include <nng/nng.h>
#include <nng/protocol/pubsub0/sub.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "cmd.h"
#include "proto.h"

static volatile sig_atomic_t stop_requested;
static void on_signal(int sig) {
    (void)sig;
    stop_requested = 1;
}

static double mono_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

int tc_cmd_tap(int argc, char **argv) {
    const char *url = NULL, *count_text = NULL, *duration_text = NULL;
    for (int i = 1; i < argc;) {
        int r;
        if ((r = tc_opt(argc, argv, &i, "--count", &count_text)) ||
            (r = tc_opt(argc, argv, &i, "--duration", &duration_text))) {
            if (r < 0) return tc_usage_error("tap", "%s needs a value", argv[i]);
            continue;
        }
        if (argv[i][0] == '-') return tc_usage_error("tap", "unknown option '%s'", argv[i]);
        if (url) return tc_usage_error("tap", "one URL expected, got also '%s'", argv[i]);
        url = argv[i++];
    }
    if (!url) return tc_usage_error("tap", "no URL given (the agent's PUB endpoint)");
    int64_t count = -1;
    double duration_s = -1;
    if (count_text && (tc_parse_count(count_text, &count) || count < 1))
        return tc_usage_error("tap", "--count must be a whole number >= 1, not '%s'", count_text);
    if (duration_text && tc_parse_seconds(duration_text, &duration_s))
        return tc_usage_error("tap", "--duration must be a number of seconds >= 0, not '%s'", duration_text);

    nng_socket sub;
    int rv, fd = -1;
    if ((rv = nng_sub0_open(&sub)) != 0) return tc_fail("tap", "cannot open a SUB socket: %s", nng_strerror(rv));
    if ((rv = nng_socket_set(sub, NNG_OPT_SUB_SUBSCRIBE, "", 0)) != 0 ||
        (rv = nng_socket_set_int(sub, NNG_OPT_RECVBUF, 4096)) != 0 ||
        (rv = nng_socket_set_size(sub, NNG_OPT_RECVMAXSZ, TP_MAX_MESSAGE_BYTES)) != 0 ||
        (rv = nng_socket_get_int(sub, NNG_OPT_RECVFD, &fd)) != 0) {
        nng_close(sub);
        return tc_fail("tap", "cannot set up the SUB socket: %s", nng_strerror(rv));
    }
    if ((rv = nng_dial(sub, url, NULL, NNG_FLAG_NONBLOCK)) != 0) {
        nng_close(sub);
        return tc_fail("tap", "cannot subscribe to %s: %s", url, nng_strerror(rv));
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    double t0 = mono_s();
    int64_t printed = 0;
    int rc = TC_EXIT_OK;
    tp_buf line = {0};
    while (!stop_requested && (count < 0 || printed < count)) {
        if (duration_s >= 0 && mono_s() - t0 >= duration_s) break;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int pr = poll(&p, 1, 200);
        if (pr < 0 && errno != EINTR) {
            rc = tc_fail("tap", "poll: %s", strerror(errno));
            break;
        }
        if (pr <= 0 || !(p.revents & POLLIN)) continue;
        nng_msg *msg = NULL;
        if ((rv = nng_recvmsg(sub, &msg, 0)) != 0) {
            rc = tc_fail("tap", "receive failed: %s", nng_strerror(rv));
            break;
        }
        tp_msg m;
        memset(&m, 0, sizeof m);
        char err[256];
        if (tp_decode_msg(nng_msg_body(msg), nng_msg_len(msg), &m, err, sizeof err)) {
            printf("# undecodable message (%zu bytes): %s\n", nng_msg_len(msg), err);
        } else if (tp_msg_to_text(&m, &line) == 0) {
            fwrite(line.data, 1, line.len, stdout);
            fputc('\n', stdout);
        }
        tp_msg_free(&m);
        nng_msg_free(msg);
        if (fflush(stdout) != 0) break; /* the reader went away */
        printed++;
    }
    tp_buf_free(&line);
    tc_exit_if_close_hangs(rc, 3);
    nng_close(sub);
    return rc;
}

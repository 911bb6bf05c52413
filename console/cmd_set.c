/* cmd_set.c -- `taylorscope set URL NAME=VALUE...`: a knob change through
 * the agent's control socket. The agent validates (an error names the knob
 * and its range, and nothing changes) and answers with the step the change
 * takes effect at. Exit status: 0 accepted, 1 refused or no answer. */
#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cmd.h"
#include "proto.h"

int tc_cmd_set(int argc, char **argv) {
    const char *url = NULL, *expect_text = NULL, *id = NULL, *timeout_text = NULL;
    tp_knob_change changes[64];
    int n = 0;
    for (int i = 1; i < argc;) {
        int r;
        if ((r = tc_opt(argc, argv, &i, "--expect-version", &expect_text)) ||
            (r = tc_opt(argc, argv, &i, "--id", &id)) || (r = tc_opt(argc, argv, &i, "--timeout", &timeout_text))) {
            if (r < 0) return tc_usage_error("set", "%s needs a value", argv[i]);
            continue;
        }
        const char *a = argv[i++];
        if (a[0] == '-' && a[1] == '-') return tc_usage_error("set", "unknown option '%s'", a);
        if (!url) {
            url = a;
            continue;
        }
        const char *eq = strchr(a, '=');
        if (!eq || eq == a) return tc_usage_error("set", "'%s' is not NAME=VALUE", a);
        if (n == 64) return tc_usage_error("set", "at most 64 knobs at once");
        size_t name_len = (size_t)(eq - a);
        memset(&changes[n], 0, sizeof changes[n]);
        if (name_len >= sizeof changes[n].name) return tc_usage_error("set", "knob name too long in '%s'", a);
        if (strlen(eq + 1) >= sizeof changes[n].value) return tc_usage_error("set", "value too long in '%s'", a);
        if (!eq[1]) return tc_usage_error("set", "'%s' has no value", a);
        memcpy(changes[n].name, a, name_len);
        snprintf(changes[n].value, sizeof changes[n].value, "%s", eq + 1);
        for (int j = 0; j < n; j++)
            if (!strcmp(changes[j].name, changes[n].name))
                return tc_usage_error("set", "knob '%s' is given twice", changes[n].name);
        n++;
    }
    if (!url) return tc_usage_error("set", "no URL given (the agent's PUB or control endpoint)");
    if (!n) return tc_usage_error("set", "no NAME=VALUE given");
    int64_t expect = -1;
    if (expect_text && tc_parse_count(expect_text, &expect))
        return tc_usage_error("set", "--expect-version must be a whole number >= 0, not '%s'", expect_text);
    double timeout_s = 5;
    if (timeout_text && (tc_parse_seconds(timeout_text, &timeout_s) || timeout_s <= 0))
        return tc_usage_error("set", "--timeout must be a number of seconds > 0, not '%s'", timeout_text);
    if (id && (!*id || strlen(id) >= TP_NAME_LEN))
        return tc_usage_error("set", "--id must be 1..%d characters", TP_NAME_LEN - 1);

    char ctl[512], err[512];
    size_t ul = strlen(url);
    if (ul > 4 && !strcmp(url + ul - 4, ".ctl")) {
        if (ul >= sizeof ctl) return tc_usage_error("set", "URL too long");
        snprintf(ctl, sizeof ctl, "%s", url);
    } else if (tp_control_url_for(url, ctl, sizeof ctl, err, sizeof err)) {
        return tc_usage_error("set", "%s", err);
    }

    tp_request q;
    memset(&q, 0, sizeof q);
    q.version = TP_PROTOCOL_VERSION;
    q.op = TP_OP_SET_KNOBS;
    if (id)
        snprintf(q.request_id, sizeof q.request_id, "%s", id);
    else
        snprintf(q.request_id, sizeof q.request_id, "cli-%ld-%lld", (long)getpid(), (long long)tc_now_ns());
    snprintf(q.origin, sizeof q.origin, "cli");
    q.expected_version = expect;
    q.n_changes = n;
    q.changes = changes;
    tp_buf b = {0};
    if (tp_encode_request(&q, &b, err, sizeof err)) {
        tp_buf_free(&b);
        return tc_fail("set", "cannot encode the request: %s", err);
    }
    nng_socket req;
    int rv;
    if ((rv = nng_req0_open(&req)) != 0) {
        tp_buf_free(&b);
        return tc_fail("set", "cannot open a REQ socket: %s", nng_strerror(rv));
    }
    nng_socket_set_ms(req, NNG_OPT_RECVTIMEO, (nng_duration)(timeout_s * 1000));
    nng_socket_set_ms(req, NNG_OPT_SENDTIMEO, (nng_duration)(timeout_s * 1000));
    int rc = TC_EXIT_OK;
    void *data = NULL;
    size_t len = 0;
    if ((rv = nng_dial(req, ctl, NULL, NNG_FLAG_NONBLOCK)) != 0) {
        rc = tc_fail("set", "cannot reach %s: %s", ctl, nng_strerror(rv));
    } else if ((rv = nng_send(req, b.data, b.len, 0)) != 0) {
        rc = tc_fail("set", "no answer from %s within %g s (is the agent running?): %s", ctl, timeout_s,
                     nng_strerror(rv));
    } else if ((rv = nng_recv(req, &data, &len, NNG_FLAG_ALLOC)) != 0) {
        rc = tc_fail("set", "no answer from %s within %g s (is the agent running?): %s", ctl, timeout_s,
                     nng_strerror(rv));
    } else {
        tp_reply rep;
        memset(&rep, 0, sizeof rep);
        if (tp_decode_reply(data, len, &rep, err, sizeof err)) {
            rc = tc_fail("set", "undecodable answer from %s: %s", ctl, err);
        } else if (!rep.ok) {
            rc = tc_fail("set", "refused by the agent: %s", rep.error);
        } else {
            printf("%s: ", rep.duplicate ? "already applied (same request id)" : "accepted");
            for (int i = 0; i < n; i++) printf("%s%s=%s", i ? " " : "", changes[i].name, changes[i].value);
            if (rep.effective_step >= 0)
                printf(" -> takes effect at step %d (config version %u, run %s)\n", rep.effective_step,
                       rep.config_version, rep.run_id[0] ? rep.run_id : "-");
            else
                printf(" -> takes effect at the next step (config version %u, run %s)\n", rep.config_version,
                       rep.run_id[0] ? rep.run_id : "-");
        }
        tp_reply_free(&rep);
        nng_free(data, len);
    }
    tp_buf_free(&b);
    nng_close(req);
    return rc;
}

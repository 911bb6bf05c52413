/* link.c -- see link.h. */
#include "ui/link.h"

#include <nng/nng.h>
#include <nng/protocol/pubsub0/sub.h>
#include <nng/protocol/reqrep0/req.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

enum { SUB_RECV_BUFFER = 8192 }; /* messages; nng's maximum: a slow console drops less */

static nng_socket sock_of(uint32_t id) {
    nng_socket s;
    s.id = id;
    return s;
}

void tc_link_close(tc_link *l) {
    if (l->sub_id) nng_close(sock_of(l->sub_id));
    if (l->req_id) nng_close(sock_of(l->req_id));
    l->sub_id = l->req_id = 0;
    l->sub_fd = l->req_fd = -1;
    l->busy = 0;
}

int tc_link_open(tc_link *l, const char *pub_url, int with_sub, char *err, size_t errlen) {
    memset(l, 0, sizeof *l);
    l->sub_fd = l->req_fd = -1;
    if (snprintf(l->pub_url, sizeof l->pub_url, "%s", pub_url) >= (int)sizeof l->pub_url) {
        snprintf(err, errlen, "URL too long: %s", pub_url);
        return -1;
    }
    if (tp_control_url_for(pub_url, l->ctl_url, sizeof l->ctl_url, err, errlen) != 0) return -1;
    nng_socket s;
    int rv;
    if (with_sub) {
        if ((rv = nng_sub0_open(&s)) != 0) goto fail_sub;
        l->sub_id = s.id;
        if ((rv = nng_socket_set(s, NNG_OPT_SUB_SUBSCRIBE, "", 0)) != 0 ||
            (rv = nng_socket_set_int(s, NNG_OPT_RECVBUF, SUB_RECV_BUFFER)) != 0 ||
            (rv = nng_socket_set_size(s, NNG_OPT_RECVMAXSZ, TP_MAX_MESSAGE_BYTES)) != 0 ||
            (rv = nng_socket_get_int(s, NNG_OPT_RECVFD, &l->sub_fd)) != 0 ||
            (rv = nng_dial(s, pub_url, NULL, NNG_FLAG_NONBLOCK)) != 0)
            goto fail_sub;
    }
    if ((rv = nng_req0_open(&s)) != 0) goto fail_req;
    l->req_id = s.id;
    if ((rv = nng_socket_set_size(s, NNG_OPT_RECVMAXSZ, 64u << 20)) != 0 ||
        (rv = nng_socket_get_int(s, NNG_OPT_RECVFD, &l->req_fd)) != 0 ||
        (rv = nng_dial(s, l->ctl_url, NULL, NNG_FLAG_NONBLOCK)) != 0)
        goto fail_req;
    return 0;
fail_sub:
    snprintf(err, errlen, "cannot subscribe to %s: %s", pub_url, nng_strerror(rv));
    tc_link_close(l);
    return -1;
fail_req:
    snprintf(err, errlen, "cannot open the control socket %s: %s", l->ctl_url, nng_strerror(rv));
    tc_link_close(l);
    return -1;
}

int tc_link_recv_msg(tc_link *l, tp_msg *out, char *err, size_t errlen) {
    if (!l->sub_id) return 0;
    nng_msg *msg = NULL;
    int rv = nng_recvmsg(sock_of(l->sub_id), &msg, NNG_FLAG_NONBLOCK);
    if (rv == NNG_EAGAIN) return 0;
    if (rv != 0) {
        snprintf(err, errlen, "receive: %s", nng_strerror(rv));
        return -1;
    }
    int drc = tp_decode_msg(nng_msg_body(msg), nng_msg_len(msg), out, err, errlen);
    nng_msg_free(msg);
    return drc == 0 ? 1 : -1;
}

int tc_link_send_request(tc_link *l, tp_request *r, int64_t now_ns, char *err, size_t errlen) {
    if (!l->req_id) {
        snprintf(err, errlen, "no control socket");
        return -1;
    }
    if (l->busy) {
        snprintf(err, errlen, "a %s request is still waiting for the agent", tp_op_name(l->busy_op));
        return -1;
    }
    r->version = TP_PROTOCOL_VERSION;
    if (!r->request_id[0])
        snprintf(r->request_id, sizeof r->request_id, "console-%ld-%u", (long)getpid(), ++l->next_request);
    tp_buf buf = {0};
    if (tp_encode_request(r, &buf, err, errlen) != 0) {
        tp_buf_free(&buf);
        return -1;
    }
    int rv = nng_send(sock_of(l->req_id), buf.data, buf.len, NNG_FLAG_NONBLOCK);
    tp_buf_free(&buf);
    if (rv == NNG_EAGAIN) { /* no connection to the agent (yet): nothing was sent */
        snprintf(err, errlen, "not connected to the agent (%s)", l->ctl_url);
        return 1;
    }
    if (rv != 0) {
        snprintf(err, errlen, "cannot send to %s: %s", l->ctl_url, nng_strerror(rv));
        return -1;
    }
    l->busy = 1;
    l->busy_op = r->op;
    l->busy_since_ns = now_ns;
    snprintf(l->busy_request_id, sizeof l->busy_request_id, "%s", r->request_id);
    l->replay_from = r->from_seq;
    l->replay_to = r->to_seq;
    return 0;
}

int tc_link_recv_reply(tc_link *l, tp_reply *out, char *err, size_t errlen) {
    if (!l->req_id || !l->busy) return 0;
    nng_msg *msg = NULL;
    int rv = nng_recvmsg(sock_of(l->req_id), &msg, NNG_FLAG_NONBLOCK);
    if (rv == NNG_EAGAIN) return 0;
    l->busy = 0;
    if (rv != 0) {
        snprintf(err, errlen, "control reply: %s", nng_strerror(rv));
        return -1;
    }
    int drc = tp_decode_reply(nng_msg_body(msg), nng_msg_len(msg), out, err, errlen);
    nng_msg_free(msg);
    return drc == 0 ? 1 : -1;
}

int tc_link_request_expired(tc_link *l, int64_t now_ns, int timeout_ms) {
    if (!l->busy || now_ns - l->busy_since_ns <= (int64_t)timeout_ms * 1000000) return 0;
    l->busy = 0;
    return 1;
}

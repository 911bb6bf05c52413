/*
 * link.h -- the console's nng sockets to one agent: a SUB socket for the
 * stats stream (when the recorder does not provide it) and a REQ socket to
 * the agent's control URL (set_knobs, get_state, replay). Nothing here
 * blocks: sockets are read by polling their NNG_OPT_RECVFD descriptors
 * (SPEC 8: receive timeouts on SUB sockets can crash nng 1.5.2) and every
 * send/receive uses NNG_FLAG_NONBLOCK. Dials are non-blocking too: the
 * agent may start after the console, nng redials in the background.
 *
 * The REQ socket carries one request at a time; a request without a reply
 * after timeout_ms is given up (tc_link_request_expired) and the next one
 * may be sent (nng's REQ cancels the old one).
 *
 * Ownership: the caller's tc_link, closed with tc_link_close (safe on a
 * zeroed one). Decoded messages and replies are the caller's to free
 * (tp_msg_free / tp_reply_free).
 */
#ifndef TC_UI_LINK_H
#define TC_UI_LINK_H

#include <stddef.h>
#include <stdint.h>

#include "proto.h"

typedef struct {
    uint32_t sub_id, req_id;   /* nng_socket ids; 0 = not open */
    int sub_fd, req_fd;        /* -1 when not open */
    char pub_url[256], ctl_url[256];
    int busy;                  /* a request is waiting for its reply */
    tp_op busy_op;
    int64_t busy_since_ns;
    char busy_request_id[TP_NAME_LEN];
    uint64_t replay_from, replay_to; /* busy_op == REPLAY: the range asked */
    unsigned next_request;
} tc_link;

/* Opens the REQ socket to the control URL of pub_url (tp_control_url_for)
 * and, when with_sub, a SUB socket on pub_url. 0, or nonzero with err. */
int tc_link_open(tc_link *l, const char *pub_url, int with_sub, char *err, size_t errlen);
void tc_link_close(tc_link *l);

/* Next stream message, without blocking: 1 with *out filled, 0 when none
 * is waiting, -1 when one arrived but did not decode (err says why). */
int tc_link_recv_msg(tc_link *l, tp_msg *out, char *err, size_t errlen);

/* Sends a request (r->request_id is filled when empty). Returns 0 sent,
 * 1 not connected to the agent (yet; nothing sent, try again later), -1
 * refused (another request in flight, or an error; err says). */
int tc_link_send_request(tc_link *l, tp_request *r, int64_t now_ns, char *err, size_t errlen);
/* The reply to the request in flight, without blocking: 1 with *out, 0 not
 * yet, -1 undecodable (the request is over). */
int tc_link_recv_reply(tc_link *l, tp_reply *out, char *err, size_t errlen);
/* 1 when the request in flight has waited more than timeout_ms (it is then
 * abandoned: busy is cleared). */
int tc_link_request_expired(tc_link *l, int64_t now_ns, int timeout_ms);

#endif

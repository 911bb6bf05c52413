/*
 * transport.h -- private to agent/: the nng side of the agent. Prefix tt_.
 *
 * A PUB socket (stats and events) and a REP socket (control), each with its
 * own thread:
 *
 *   host thread ──tt_publish──▶ bounded queue ──▶ I/O thread: seq, encode,
 *                 (drop+count when full)            replay ring, PUB send,
 *                                                   header re-send, heartbeat
 *   console REQ ──▶ REP ──▶ control thread: decode, replay from the ring, or
 *                                           the agent's handler; reply
 *
 * The host never wakes the I/O thread for an ordinary message (a wake-up
 * costs the host more than the copy): the I/O thread polls the queue every
 * 2 ms while a run is open, so a step reaches subscribers within ~2 ms.
 *
 * Sequence numbers are assigned by the I/O thread, per run, so a message
 * dropped by the full queue never takes one: the stream has no holes on the
 * agent's side, and drops show in the heartbeat's `dropped`. A message whose
 * run id differs from the previous one starts a new run (seq back to 1, ring
 * cleared). Header re-sends and heartbeats happen only while a run is open
 * (from its first message to its run_end).
 */
#ifndef TA_TRANSPORT_H
#define TA_TRANSPORT_H

#include "proto.h"

typedef struct tt_transport tt_transport;

typedef struct {
    void *user;
    /* get_state / get_knobs / set_knobs, on the control thread. rep arrives
     * zeroed with version set; the handler fills it (ok, error, ...). */
    void (*control)(void *user, const tp_request *q, tp_reply *rep);
    /* Fills the header to re-send (current config, version, last step) for
     * run `run_id`; returns 0, or nonzero when that run is no longer the
     * agent's (nothing is sent). The header's knobs and reasons arrays are
     * the agent's and must stay valid while the transport is open. */
    int (*header)(void *user, const char *run_id, tp_header *h);
    /* Current step and total steps for the heartbeat. */
    void (*progress)(void *user, int *step, int *total_steps);
} tt_callbacks;

/* Listens on pub_url and ctl_url (tcp://:PORT becomes tcp://127.0.0.1:PORT,
 * ipc sockets get mode 0600). Returns 0 and *out (free with tt_close), or
 * nonzero with err. */
int tt_open(const char *pub_url, const char *ctl_url, int queue_len, int ring_len,
            double header_every_s, const tt_callbacks *cb, tt_transport **out, char *err,
            size_t errlen);
/* Sends what is queued, stops the threads, closes the sockets. */
void tt_close(tt_transport *t);

/* Queues a copy of m for publishing (any thread; never waits for I/O).
 * m->seq and m->version are ignored (the I/O thread assigns them). The
 * header's knobs/reasons pointers are copied as pointers (see above); step
 * layers and knob changes are copied. Returns 0 queued, 1 dropped (counted). */
int tt_publish(tt_transport *t, const tp_msg *m);

/* Waits until the queue is empty and sent (tests, run end); 0 or -1 on timeout. */
int tt_flush(tt_transport *t, int timeout_ms);
/* Holds (1) or releases (0) the I/O thread, so tests can fill the queue. */
void tt_pause(tt_transport *t, int paused);

uint64_t tt_dropped(tt_transport *t);   /* since open */
uint64_t tt_published(tt_transport *t); /* sent on PUB since open */
uint64_t tt_last_seq(tt_transport *t);  /* of the current run */
int tt_subscribers(tt_transport *t);    /* PUB pipes connected now */
const char *tt_pub_url(const tt_transport *t);
const char *tt_ctl_url(const tt_transport *t);

#endif

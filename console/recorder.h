/*
 * recorder.h -- subscribes to agents and records their streams into a
 * tc_store (SPEC 8, 9). Prefix tc_recorder_.
 *
 * Per agent: an nng SUB socket (receive buffer raised; read by polling its
 * NNG_OPT_RECVFD, never with receive timeouts, which crash nng 1.5.2's SUB)
 * and, when a gap needs replaying, a REQ socket to its control URL
 * (tp_control_url_for). Per run: the next sequence number expected. A hole
 * [next, seq-1] is asked from the agent's replay ring in chunks; what comes
 * back is recorded, what does not is recorded as a gap (gaps.missing > 0).
 * A run whose agent is silent for lost_after_s is marked lost; run_end marks
 * it finished or failed. A restarted recorder finds the run by the agent's
 * run id and continues it: the watermark in runs.last_seq says where.
 *
 * Driving it: standalone, loop on tc_recorder_poll_once(). From another
 * poll loop (the console UI): add tc_recorder_fds() to your pollfd set,
 * call tc_recorder_service() when any of them is readable and at least
 * every second or so (it also runs the lost-run timeouts). on_msg is
 * called for every decoded message after it is stored.
 *
 * Threading: one thread. Errors: 0 or nonzero with err. Ownership: the
 * store is borrowed and must outlive the recorder.
 */
#ifndef TC_RECORDER_H
#define TC_RECORDER_H

#include <poll.h>
#include <stddef.h>
#include <stdint.h>

#include "proto.h"
#include "store.h"

typedef struct tc_recorder tc_recorder;

typedef struct {
    double lost_after_s;     /* silence that makes a running run lost (0 = 30 s) */
    int recv_buffer;         /* SUB receive buffer, messages (0 = 4096; nng caps it at 8192) */
    double replay_timeout_s; /* wait for a replay reply (0 = 2 s) */
    int replay_chunk;        /* sequence numbers per replay request (0 = 64) */
    double slow_ms;          /* tests: sleep this long per message received (a slow subscriber) */
    /* Called after each decoded message is stored (replayed = 1 when it came
     * from a replay). run is runs.id. The message is borrowed for the call. */
    void (*on_msg)(void *user, const char *url, int64_t run, const tp_msg *m, int replayed);
    /* Notable events as text lines (gaps, lost runs, undecodable messages). */
    void (*on_note)(void *user, const char *line);
    void *user;
} tc_recorder_opts;

/* opts may be NULL (defaults). *out is the caller's (tc_recorder_close). */
int tc_recorder_open(tc_store *store, const tc_recorder_opts *opts, tc_recorder **out, char *err,
                     size_t errlen);
void tc_recorder_close(tc_recorder *r);

/* Subscribes to the agent publishing at pub_url (dialled in the background:
 * the agent may start later). Runs of this URL left `running` in the store
 * are watched for the lost timeout from now. */
int tc_recorder_add(tc_recorder *r, const char *pub_url, char *err, size_t errlen);

/* Fills up to max pollfds (POLLIN) to wait on; returns how many. */
int tc_recorder_fds(tc_recorder *r, struct pollfd *fds, int max);
/* Reads every message waiting (without blocking), records them, replays
 * gaps, runs the timeouts. Returns 0, or nonzero when the store failed. */
int tc_recorder_service(tc_recorder *r, char *err, size_t errlen);
/* Waits up to timeout_ms for messages, then tc_recorder_service. */
int tc_recorder_poll_once(tc_recorder *r, int timeout_ms, char *err, size_t errlen);

typedef struct {
    uint64_t messages;      /* decoded and handled (replayed included) */
    uint64_t replayed;      /* of which came from replays */
    uint64_t gaps;          /* holes detected */
    uint64_t lost_messages; /* never recovered */
    uint64_t undecodable;   /* refused by the codec */
    int runs_ended;         /* finished, failed or lost since open */
    int runs_active;        /* tracked runs still running */
} tc_recorder_stats;
void tc_recorder_get_stats(const tc_recorder *r, tc_recorder_stats *out);

#endif

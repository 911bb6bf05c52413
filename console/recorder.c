/*
 * recorder.c -- agent streams into the store (see recorder.h).
 *
 * Sequence bookkeeping per run: `next` is the first sequence number not yet
 * accounted for (runs.last_seq + 1 in the store). A live message with
 * seq == next is recorded and moves the watermark; seq > next opens a gap
 * that is replayed (chunks of replay_chunk) before the message is recorded;
 * seq < next is a duplicate or a late replay and only deduplicated inserts
 * happen (steps by (run, step), knob events by (run, seq)).
 */
#include "recorder.h"

#include <errno.h>
#include <nng/nng.h>
#include <nng/protocol/pubsub0/sub.h>
#include <nng/protocol/reqrep0/req.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
    char agent_run_id[TP_RUN_ID_LEN];
    int64_t run;         /* runs.id */
    uint64_t next;       /* next sequence number expected */
    double last_heard_s; /* monotonic */
    int ended;           /* run_end seen */
    int lost;            /* marked lost (until heard from again) */
} run_state;

typedef struct {
    char url[512];
    char ctl_url[512];
    nng_socket sub;
    int sub_open;
    int recv_fd;
    nng_socket req;
    int req_open;
    run_state *runs;
    int n_runs, cap_runs;
} source;

struct tc_recorder {
    tc_store *store;
    tc_recorder_opts o;
    source *src;
    int n_src;
    tc_recorder_stats stats;
    int failed; /* the store refused a write: stop */
};

static void set_err(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || !errlen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static void note(tc_recorder *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void note(tc_recorder *r, const char *fmt, ...) {
    if (!r->o.on_note) return;
    char line[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    r->o.on_note(r->o.user, line);
}

static double mono_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int tc_recorder_open(tc_store *store, const tc_recorder_opts *opts, tc_recorder **out, char *err,
                     size_t errlen) {
    *out = NULL;
    if (tc_store_read_only(store)) {
        set_err(err, errlen, "cannot record into %s: it is open read-only%s%s", tc_store_path(store),
                tc_store_warning(store)[0] ? " (" : "", tc_store_warning(store));
        if (tc_store_warning(store)[0]) strncat(err, ")", errlen - strlen(err) - 1);
        return 1;
    }
    tc_recorder *r = calloc(1, sizeof *r);
    if (!r) {
        set_err(err, errlen, "out of memory");
        return 1;
    }
    r->store = store;
    if (opts) r->o = *opts;
    if (r->o.lost_after_s <= 0) r->o.lost_after_s = 30;
    if (r->o.recv_buffer <= 0) r->o.recv_buffer = 4096;
    if (r->o.recv_buffer > 8192) r->o.recv_buffer = 8192;
    if (r->o.replay_timeout_s <= 0) r->o.replay_timeout_s = 2;
    if (r->o.replay_chunk <= 0) r->o.replay_chunk = 64;
    *out = r;
    return 0;
}

void tc_recorder_close(tc_recorder *r) {
    if (!r) return;
    for (int i = 0; i < r->n_src; i++) {
        if (r->src[i].sub_open) nng_close(r->src[i].sub);
        if (r->src[i].req_open) nng_close(r->src[i].req);
        free(r->src[i].runs);
    }
    free(r->src);
    free(r);
}

void tc_recorder_get_stats(const tc_recorder *r, tc_recorder_stats *out) {
    *out = r->stats;
    out->runs_active = 0;
    for (int i = 0; i < r->n_src; i++)
        for (int j = 0; j < r->src[i].n_runs; j++)
            if (!r->src[i].runs[j].ended && !r->src[i].runs[j].lost) out->runs_active++;
}

static run_state *track(source *s, const char *agent_run_id, int64_t run, uint64_t last_seq) {
    if (s->n_runs == s->cap_runs) {
        int cap = s->cap_runs ? s->cap_runs * 2 : 8;
        run_state *n = realloc(s->runs, (size_t)cap * sizeof *n);
        if (!n) return NULL;
        s->runs = n;
        s->cap_runs = cap;
    }
    run_state *rs = &s->runs[s->n_runs++];
    memset(rs, 0, sizeof *rs);
    snprintf(rs->agent_run_id, sizeof rs->agent_run_id, "%s", agent_run_id);
    rs->run = run;
    rs->next = last_seq + 1;
    rs->last_heard_s = mono_s();
    return rs;
}

static run_state *find_run(source *s, const char *agent_run_id) {
    for (int i = 0; i < s->n_runs; i++)
        if (!strcmp(s->runs[i].agent_run_id, agent_run_id)) return &s->runs[i];
    return NULL;
}

/* Runs of this URL that the store still has as running: watch them. */
static int load_running(tc_recorder *r, source *s, char *err, size_t errlen) {
    sqlite3_stmt *st = NULL;
    sqlite3 *db = tc_store_db(r->store);
    if (sqlite3_prepare_v2(db,
                           "SELECT id, agent_run_id, last_seq FROM runs WHERE source_url = ?1"
                           " AND status = 'running'",
                           -1, &st, NULL) != SQLITE_OK) {
        set_err(err, errlen, "%s: %s", tc_store_path(r->store), sqlite3_errmsg(db));
        return 1;
    }
    sqlite3_bind_text(st, 1, s->url, -1, SQLITE_STATIC);
    while (sqlite3_step(st) == SQLITE_ROW) {
        const char *id = (const char *)sqlite3_column_text(st, 1);
        if (id && !find_run(s, id))
            track(s, id, sqlite3_column_int64(st, 0), (uint64_t)sqlite3_column_int64(st, 2));
    }
    sqlite3_finalize(st);
    return 0;
}

int tc_recorder_add(tc_recorder *r, const char *pub_url, char *err, size_t errlen) {
    if (!pub_url || !*pub_url) {
        set_err(err, errlen, "no URL given");
        return 1;
    }
    if (strlen(pub_url) >= sizeof r->src[0].url) {
        set_err(err, errlen, "URL too long: %s", pub_url);
        return 1;
    }
    for (int i = 0; i < r->n_src; i++)
        if (!strcmp(r->src[i].url, pub_url)) {
            set_err(err, errlen, "%s is given twice", pub_url);
            return 1;
        }
    source s;
    memset(&s, 0, sizeof s);
    snprintf(s.url, sizeof s.url, "%s", pub_url);
    char cerr[256];
    if (tp_control_url_for(pub_url, s.ctl_url, sizeof s.ctl_url, cerr, sizeof cerr)) {
        set_err(err, errlen, "%s", cerr);
        return 1;
    }
    int rv;
    if ((rv = nng_sub0_open(&s.sub)) != 0) {
        set_err(err, errlen, "cannot open a SUB socket: %s", nng_strerror(rv));
        return 1;
    }
    s.sub_open = 1;
    if ((rv = nng_socket_set(s.sub, NNG_OPT_SUB_SUBSCRIBE, "", 0)) != 0 ||
        (rv = nng_socket_set_int(s.sub, NNG_OPT_RECVBUF, r->o.recv_buffer)) != 0 ||
        (rv = nng_socket_set_size(s.sub, NNG_OPT_RECVMAXSZ, TP_MAX_MESSAGE_BYTES)) != 0 ||
        (rv = nng_socket_get_int(s.sub, NNG_OPT_RECVFD, &s.recv_fd)) != 0) {
        set_err(err, errlen, "cannot set up the SUB socket: %s", nng_strerror(rv));
        nng_close(s.sub);
        return 1;
    }
    /* non-blocking dial: nng keeps retrying until the agent listens */
    if ((rv = nng_dial(s.sub, pub_url, NULL, NNG_FLAG_NONBLOCK)) != 0) {
        set_err(err, errlen, "cannot subscribe to %s: %s", pub_url, nng_strerror(rv));
        nng_close(s.sub);
        return 1;
    }
    source *n = realloc(r->src, (size_t)(r->n_src + 1) * sizeof *n);
    if (!n) {
        nng_close(s.sub);
        set_err(err, errlen, "out of memory");
        return 1;
    }
    r->src = n;
    r->src[r->n_src] = s;
    r->n_src++;
    return load_running(r, &r->src[r->n_src - 1], err, errlen);
}

int tc_recorder_fds(tc_recorder *r, struct pollfd *fds, int max) {
    int n = 0;
    for (int i = 0; i < r->n_src && n < max; i++) {
        fds[n].fd = r->src[i].recv_fd;
        fds[n].events = POLLIN;
        fds[n].revents = 0;
        n++;
    }
    return n;
}

/* ---- replay ------------------------------------------------------------ */

static int req_socket(tc_recorder *r, source *s) {
    if (s->req_open) return 0;
    int rv;
    if ((rv = nng_req0_open(&s->req)) != 0) {
        note(r, "%s: cannot open a REQ socket: %s", s->ctl_url, nng_strerror(rv));
        return 1;
    }
    nng_duration ms = (nng_duration)(r->o.replay_timeout_s * 1000);
    nng_socket_set_ms(s->req, NNG_OPT_RECVTIMEO, ms);
    nng_socket_set_ms(s->req, NNG_OPT_SENDTIMEO, ms);
    nng_socket_set_size(s->req, NNG_OPT_RECVMAXSZ, (size_t)64 << 20);
    if ((rv = nng_dial(s->req, s->ctl_url, NULL, NNG_FLAG_NONBLOCK)) != 0) {
        note(r, "%s: cannot dial the control socket: %s", s->ctl_url, nng_strerror(rv));
        nng_close(s->req);
        return 1;
    }
    s->req_open = 1;
    return 0;
}

/* One request/reply on the control socket. Returns 0 with *reply filled
 * (caller frees with tp_reply_free). */
static int control_call(tc_recorder *r, source *s, const tp_request *q, tp_reply *reply, char *why,
                        size_t whylen) {
    memset(reply, 0, sizeof *reply);
    if (req_socket(r, s)) {
        set_err(why, whylen, "no control socket");
        return 1;
    }
    tp_buf b = {0};
    char err[256];
    if (tp_encode_request(q, &b, err, sizeof err)) {
        set_err(why, whylen, "cannot encode the request: %s", err);
        tp_buf_free(&b);
        return 1;
    }
    int rv = nng_send(s->req, b.data, b.len, 0);
    tp_buf_free(&b);
    if (rv != 0) {
        set_err(why, whylen, "cannot send to %s: %s", s->ctl_url, nng_strerror(rv));
        return 1;
    }
    void *data = NULL;
    size_t len = 0;
    if ((rv = nng_recv(s->req, &data, &len, NNG_FLAG_ALLOC)) != 0) {
        set_err(why, whylen, "no answer from %s: %s", s->ctl_url, nng_strerror(rv));
        /* a REQ socket with an unanswered request is reopened next time */
        nng_close(s->req);
        s->req_open = 0;
        return 1;
    }
    rv = tp_decode_reply(data, len, reply, err, sizeof err);
    nng_free(data, len);
    if (rv) {
        set_err(why, whylen, "undecodable reply from %s: %s", s->ctl_url, err);
        tp_reply_free(reply);
        return 1;
    }
    return 0;
}

static int handle(tc_recorder *r, source *s, tp_msg *m, int replayed, char *err, size_t errlen);

/* Asks for [from, to] of the run and records what comes back; returns how
 * many of the range never came (gap recorded by the caller). */
static uint64_t replay_range(tc_recorder *r, source *s, const char *run_id, uint64_t from, uint64_t to,
                             char *err, size_t errlen) {
    uint64_t missing = 0;
    /* no ring holds more than this: do not ask for what cannot be there */
    const uint64_t max_replay = 65536;
    if (to - from + 1 > max_replay) {
        missing += to - from + 1 - max_replay;
        from = to - max_replay + 1;
    }
    for (uint64_t a = from; a <= to && !r->failed;) {
        uint64_t b = to - a + 1 > (uint64_t)r->o.replay_chunk ? a + (uint64_t)r->o.replay_chunk - 1 : to;
        tp_request q;
        memset(&q, 0, sizeof q);
        q.version = TP_PROTOCOL_VERSION;
        q.op = TP_OP_REPLAY;
        snprintf(q.origin, sizeof q.origin, "console");
        q.expected_version = -1;
        snprintf(q.run_id, sizeof q.run_id, "%s", run_id);
        q.from_seq = a;
        q.to_seq = b;
        tp_reply rep;
        char why[512];
        uint64_t got = 0;
        if (control_call(r, s, &q, &rep, why, sizeof why)) {
            note(r, "%s: replay of %s seq %llu..%llu failed: %s", s->url, run_id, (unsigned long long)a,
                 (unsigned long long)to, why);
            missing += to - a + 1;
            break; /* the agent does not answer: the rest is lost too */
        }
        if (!rep.ok) {
            note(r, "%s: replay of %s seq %llu..%llu refused: %s", s->url, run_id, (unsigned long long)a,
                 (unsigned long long)to, rep.error);
            tp_reply_free(&rep);
            missing += to - a + 1;
            break; /* e.g. not the agent's current run: none of it will come */
        } else {
            for (int i = 0; i < rep.n_messages && !r->failed; i++) {
                tp_msg m;
                memset(&m, 0, sizeof m);
                char derr[256];
                if (tp_decode_msg(rep.messages[i].data, rep.messages[i].len, &m, derr, sizeof derr)) {
                    r->stats.undecodable++;
                    note(r, "%s: undecodable replayed message: %s", s->url, derr);
                } else if (strcmp(m.run_id, run_id) == 0 && m.seq >= a && m.seq <= b) {
                    got++;
                    if (handle(r, s, &m, 1, err, errlen)) r->failed = 1;
                }
                tp_msg_free(&m);
            }
        }
        tp_reply_free(&rep);
        missing += (b - a + 1) - (got > b - a + 1 ? b - a + 1 : got);
        a = b + 1;
    }
    return missing;
}

/* ---- handling ---------------------------------------------------------- */

static int store_msg(tc_recorder *r, source *s, run_state *rs, const tp_msg *m, uint64_t mark,
                     char *err, size_t errlen) {
    int64_t now = now_ns();
    switch (m->type) {
    case TP_MSG_HEADER: {
        int64_t run;
        uint64_t last;
        if (tc_store_run_upsert(r->store, m->run_id, s->url, &m->u.header, now, &run, &last, NULL, err,
                                errlen))
            return 1;
        return tc_store_touch(r->store, rs->run, now, mark, -1, err, errlen);
    }
    case TP_MSG_STEP:
        return tc_store_add_step(r->store, rs->run, m->seq, &m->u.step, now, mark, NULL, err, errlen);
    case TP_MSG_KNOB_EVENT:
        return tc_store_add_knob_event(r->store, rs->run, m->seq, m->t_ns, &m->u.knob, now, mark, err,
                                       errlen);
    case TP_MSG_RUN_END:
        if (tc_store_end_run(r->store, rs->run, &m->u.end, now, mark, err, errlen)) return 1;
        if (!rs->ended) {
            rs->ended = 1;
            r->stats.runs_ended++;
            note(r, "%s: run %s %s after %d steps", s->url, m->run_id, m->u.end.status, m->u.end.steps_done);
        }
        return 0;
    case TP_MSG_HEARTBEAT:
        return tc_store_touch(r->store, rs->run, now, mark, (int64_t)m->u.hb.dropped, err, errlen);
    }
    return 0;
}

static void mark_lost(tc_recorder *r, source *s, run_state *rs, const char *why);

static int handle(tc_recorder *r, source *s, tp_msg *m, int replayed, char *err, size_t errlen) {
    run_state *rs = find_run(s, m->run_id);
    if (!rs) {
        int64_t run;
        uint64_t last;
        int created;
        if (tc_store_run_upsert(r->store, m->run_id, s->url, m->type == TP_MSG_HEADER ? &m->u.header : NULL,
                                now_ns(), &run, &last, &created, err, errlen))
            return 1;
        if (!(rs = track(s, m->run_id, run, last))) {
            set_err(err, errlen, "out of memory");
            return 1;
        }
        /* the store knows how the run ended, if it did */
        sqlite3_stmt *st = NULL;
        if (sqlite3_prepare_v2(tc_store_db(r->store), "SELECT status FROM runs WHERE id=?1", -1, &st, NULL) ==
            SQLITE_OK) {
            sqlite3_bind_int64(st, 1, run);
            if (sqlite3_step(st) == SQLITE_ROW) {
                const char *status = (const char *)sqlite3_column_text(st, 0);
                rs->ended = status && (!strcmp(status, "finished") || !strcmp(status, "failed"));
            }
        }
        sqlite3_finalize(st);
        note(r, "%s: %s run %s (run %lld) at seq %llu", s->url, created ? "new" : "continuing", m->run_id,
             (long long)run, (unsigned long long)m->seq);
        /* one agent runs one run at a time: the others of this URL are over,
         * and their end never arrived */
        for (int j = 0; j < s->n_runs; j++) {
            run_state *o = &s->runs[j];
            if (o == rs || o->ended || o->lost) continue;
            char why[160];
            snprintf(why, sizeof why, "the agent started run %s before this run's end was received", m->run_id);
            mark_lost(r, s, o, why);
        }
    }
    rs->last_heard_s = mono_s();
    if (rs->lost) {
        rs->lost = 0;
        note(r, "%s: run %s is heard from again", s->url, m->run_id);
    }
    uint64_t mark = 0; /* the watermark this message moves to (0: none) */
    if (!replayed && m->seq > rs->next) {
        uint64_t from = rs->next, to = m->seq - 1;
        r->stats.gaps++;
        note(r, "%s: gap in run %s: seq %llu..%llu missing, asking for a replay", s->url, m->run_id,
             (unsigned long long)from, (unsigned long long)to);
        uint64_t missing = replay_range(r, s, m->run_id, from, to, err, errlen);
        if (r->failed) return 1;
        r->stats.lost_messages += missing;
        if (missing) note(r, "%s: run %s: %llu of seq %llu..%llu could not be recovered", s->url, m->run_id,
                          (unsigned long long)missing, (unsigned long long)from, (unsigned long long)to);
        if (tc_store_add_gap(r->store, rs->run, from, to, missing, now_ns(), to, err, errlen)) return 1;
        rs->next = m->seq;
    }
    if (!replayed && m->seq == rs->next) {
        mark = m->seq;
        rs->next = m->seq + 1;
    }
    if (store_msg(r, s, rs, m, mark, err, errlen)) return 1;
    r->stats.messages++;
    if (replayed) r->stats.replayed++;
    if (r->o.on_msg) r->o.on_msg(r->o.user, s->url, rs->run, m, replayed);
    return 0;
}

static void mark_lost(tc_recorder *r, source *s, run_state *rs, const char *why) {
    char err[256];
    if (tc_store_mark_lost(r->store, rs->run, why, now_ns(), err, sizeof err) == 0) {
        rs->lost = 1;
        r->stats.runs_ended++;
        note(r, "%s: run %s lost: %s", s->url, rs->agent_run_id, why);
    } else {
        note(r, "%s: cannot mark run %s lost: %s", s->url, rs->agent_run_id, err);
    }
}

/* A silent run: its last messages (the run end, say) may have been dropped
 * while nothing followed to reveal the gap. Ask the agent where it is and
 * replay the tail; only then call the run lost. */
static void recover_tail(tc_recorder *r, source *s, int j, char *err, size_t errlen) {
    tp_request q;
    memset(&q, 0, sizeof q);
    q.version = TP_PROTOCOL_VERSION;
    q.op = TP_OP_GET_STATE;
    snprintf(q.origin, sizeof q.origin, "console");
    q.expected_version = -1;
    tp_reply rep;
    char why[512];
    if (control_call(r, s, &q, &rep, why, sizeof why)) return;
    run_state *rs = &s->runs[j];
    if (rep.ok && !strcmp(rep.run_id, rs->agent_run_id) && rep.last_seq >= rs->next) {
        uint64_t from = rs->next, to = rep.last_seq;
        char id[TP_RUN_ID_LEN];
        snprintf(id, sizeof id, "%s", rs->agent_run_id);
        r->stats.gaps++;
        note(r, "%s: run %s silent; asking for seq %llu..%llu", s->url, id, (unsigned long long)from,
             (unsigned long long)to);
        uint64_t missing = replay_range(r, s, id, from, to, err, errlen);
        rs = &s->runs[j];
        r->stats.lost_messages += missing;
        if (!r->failed && tc_store_add_gap(r->store, rs->run, from, to, missing, now_ns(), to, err, errlen) == 0)
            rs->next = to + 1;
        else
            r->failed = 1;
    }
    tp_reply_free(&rep);
}

static void check_timeouts(tc_recorder *r, char *err, size_t errlen) {
    for (int i = 0; i < r->n_src && !r->failed; i++) {
        source *s = &r->src[i];
        for (int j = 0; j < s->n_runs && !r->failed; j++) {
            if (s->runs[j].ended || s->runs[j].lost || mono_s() - s->runs[j].last_heard_s < r->o.lost_after_s)
                continue;
            recover_tail(r, s, j, err, errlen);
            run_state *rs = &s->runs[j];
            if (rs->ended || r->failed) continue;
            rs->last_heard_s = mono_s() - r->o.lost_after_s; /* a replayed tail does not revive it */
            char why[128];
            snprintf(why, sizeof why, "no message from the agent for %.0f s", r->o.lost_after_s);
            mark_lost(r, s, rs, why);
        }
    }
}

static int readable(int fd) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    return poll(&p, 1, 0) > 0 && (p.revents & POLLIN);
}

int tc_recorder_service(tc_recorder *r, char *err, size_t errlen) {
    if (r->failed) {
        set_err(err, errlen, "the recorder stopped after a store error");
        return 1;
    }
    for (int i = 0; i < r->n_src; i++) {
        source *s = &r->src[i];
        /* a bounded batch per socket keeps a caller's UI responsive */
        for (int k = 0; k < 512 && readable(s->recv_fd); k++) {
            nng_msg *msg = NULL;
            /* the fd said a message is waiting: this receive does not block */
            int rv = nng_recvmsg(s->sub, &msg, 0);
            if (rv != 0) {
                note(r, "%s: receive failed: %s", s->url, nng_strerror(rv));
                break;
            }
            if (r->o.slow_ms > 0) {
                struct timespec ts = {(time_t)(r->o.slow_ms / 1000),
                                      (long)((r->o.slow_ms - 1000 * (double)(time_t)(r->o.slow_ms / 1000)) * 1e6)};
                nanosleep(&ts, NULL);
            }
            tp_msg m;
            memset(&m, 0, sizeof m);
            char derr[256];
            if (tp_decode_msg(nng_msg_body(msg), nng_msg_len(msg), &m, derr, sizeof derr)) {
                r->stats.undecodable++;
                note(r, "%s: undecodable message: %s", s->url, derr);
            } else if (handle(r, s, &m, 0, err, errlen)) {
                r->failed = 1;
            }
            tp_msg_free(&m);
            nng_msg_free(msg);
            if (r->failed) return 1;
        }
    }
    check_timeouts(r, err, errlen);
    return r->failed;
}

int tc_recorder_poll_once(tc_recorder *r, int timeout_ms, char *err, size_t errlen) {
    struct pollfd fds[64];
    int n = tc_recorder_fds(r, fds, 64);
    if (poll(fds, (nfds_t)n, timeout_ms) < 0 && errno != EINTR) {
        set_err(err, errlen, "poll: %s", strerror(errno));
        return 1;
    }
    return tc_recorder_service(r, err, errlen);
}

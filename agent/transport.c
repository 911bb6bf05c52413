/*
 * transport.c -- nng PUB + REP for the agent (see transport.h for the
 * threads and the rules of sequence numbers).
 *
 * The publish queue is a ring of preallocated slots with atomic head and
 * tail: a producer (the host thread, or the control thread for knob events;
 * they serialize on plock) fills the slot at the tail, copying the message
 * (slots keep their layer/change buffers between uses), advances the tail
 * and posts a semaphore; the I/O thread encodes and sends the slot at the
 * head and then advances the head. No lock is shared between the host and
 * the I/O thread, so a descheduled I/O thread never stalls the host. When
 * every slot is taken, tt_publish drops the message and counts it.
 *
 * The replay ring keeps the last ring_len encoded messages of the current
 * run, indexed by seq % ring_len; the control thread copies from it under
 * its own mutex.
 */
#include "transport.h"

#include <errno.h>
#include <nng/nng.h>
#include <nng/protocol/pubsub0/pub.h>
#include <nng/protocol/reqrep0/rep.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

enum { MAX_URL = 512 };

typedef struct {
    tp_msg msg;
    int layers_cap;          /* capacity of msg.u.step.layers when it is owned */
    tp_layer_row *layers;    /* owned buffer reused by step messages */
    int changes_cap;
    tp_knob_change *changes; /* owned buffer reused by knob events */
} slot;

typedef struct {
    uint64_t seq; /* 0 = empty */
    tp_buf data;
} ring_entry;

struct tt_transport {
    tt_callbacks cb;
    char pub_url[MAX_URL], ctl_url[MAX_URL];
    nng_socket pub, rep;
    int pub_open, rep_open;
    double header_every_s;

    /* publish queue: producers serialize on plock; the I/O thread is the
     * only consumer. head/tail are atomics and the wake-up is a semaphore,
     * so a producer never waits for the I/O thread. */
    pthread_mutex_t plock;   /* one producer fills the tail slot at a time */
    char prod_run[TP_RUN_ID_LEN];       /* run of the last message offered (plock) */
    _Atomic uint64_t dropped_run_base;  /* `dropped` when that run's first message came */
    sem_t wake;              /* posted: new message, stop, pause change */
    slot *slots;
    int qlen;                /* number of slots */
    _Atomic uint64_t head, tail; /* head: next to send (advanced after sending); tail: next free */
    _Atomic int stop, paused;
    pthread_t io_thread;
    int io_started;
    int sem_ok;

    /* I/O thread state (touched by that thread only, but for the atomics) */
    char run_id[TP_RUN_ID_LEN];
    int run_open;
    double next_header_s, next_heartbeat_s;
    tp_buf enc;

    /* replay ring */
    pthread_mutex_t rlock;
    ring_entry *ring;
    int ring_len;
    char ring_run[TP_RUN_ID_LEN];
    _Atomic uint64_t last_seq;

    pthread_t ctl_thread;
    int ctl_started;

    _Atomic uint64_t dropped, published;
    _Atomic int subscribers;
};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int64_t unix_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* ------------------------------------------------------------------ */
/* Publishing (I/O thread)                                             */
/* ------------------------------------------------------------------ */

/* Assigns the next seq, encodes, keeps a copy in the ring, sends. */
static void send_msg(tt_transport *t, tp_msg *m) {
    char err[256];
    pthread_mutex_lock(&t->rlock);
    if (strcmp(m->run_id, t->ring_run) != 0) {
        /* a new run: sequence restarts, the old run's ring is forgotten */
        for (int i = 0; i < t->ring_len; i++) t->ring[i].seq = 0;
        snprintf(t->ring_run, sizeof t->ring_run, "%s", m->run_id);
        atomic_store(&t->last_seq, 0);
    }
    uint64_t seq = atomic_load(&t->last_seq) + 1;
    m->seq = seq;
    m->version = TP_PROTOCOL_VERSION;
    if (m->t_ns == 0) m->t_ns = unix_ns();
    pthread_mutex_unlock(&t->rlock);

    if (tp_encode_msg(m, &t->enc, err, sizeof err) != 0) {
        /* cannot happen for messages the agent builds; counted as a drop */
        atomic_fetch_add(&t->dropped, 1);
        return;
    }
    pthread_mutex_lock(&t->rlock);
    ring_entry *e = &t->ring[seq % (uint64_t)t->ring_len];
    e->data.len = 0;
    e->seq = 0;
    if (e->data.cap < t->enc.len + 1) {
        char *d = realloc(e->data.data, t->enc.len + 1);
        if (d) e->data.data = d, e->data.cap = t->enc.len + 1;
    }
    if (e->data.cap >= t->enc.len + 1) {
        memcpy(e->data.data, t->enc.data, t->enc.len);
        e->data.len = t->enc.len;
        e->seq = seq;
    }
    atomic_store(&t->last_seq, seq);
    pthread_mutex_unlock(&t->rlock);

    /* PUB never blocks: with no subscriber or a full pipe nng drops */
    if (nng_send(t->pub, t->enc.data, t->enc.len, NNG_FLAG_NONBLOCK) == 0)
        atomic_fetch_add(&t->published, 1);
}

static void send_periodic(tt_transport *t) {
    if (!t->run_open) return;
    double now = now_s();
    if (now >= t->next_header_s && t->cb.header) {
        tp_msg m;
        memset(&m, 0, sizeof m);
        m.type = TP_MSG_HEADER;
        snprintf(m.run_id, sizeof m.run_id, "%s", t->run_id);
        if (t->cb.header(t->cb.user, t->run_id, &m.u.header) == 0) send_msg(t, &m);
        t->next_header_s = now + t->header_every_s;
    }
    if (now >= t->next_heartbeat_s) {
        tp_msg m;
        memset(&m, 0, sizeof m);
        m.type = TP_MSG_HEARTBEAT;
        snprintf(m.run_id, sizeof m.run_id, "%s", t->run_id);
        m.u.hb.dropped = atomic_load(&t->dropped) - atomic_load(&t->dropped_run_base);
        m.u.hb.last_seq = atomic_load(&t->last_seq) + 1; /* this heartbeat's own seq */
        m.u.hb.step = -1;
        if (t->cb.progress) t->cb.progress(t->cb.user, &m.u.hb.step, &m.u.hb.total_steps);
        send_msg(t, &m);
        t->next_heartbeat_s = now + 1.0;
    }
}

/* How often the I/O thread looks at the queue while a run is open (s). */
#define TT_POLL_S 0.002

static void *io_main(void *arg) {
    tt_transport *t = arg;
    /* below the host's priority: on a busy machine telemetry waits (and
     * drops, counted) rather than taking CPU from the sampler. Best effort. */
    if (setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), 10) != 0) {
    }
    for (;;) {
        uint64_t head = atomic_load(&t->head);
        if (!atomic_load(&t->paused) && head != atomic_load(&t->tail)) {
            slot *s = &t->slots[head % (uint64_t)t->qlen];
            tp_msg *m = &s->msg;
            if (strcmp(m->run_id, t->run_id) != 0) {
                snprintf(t->run_id, sizeof t->run_id, "%s", m->run_id);
                t->next_header_s = now_s() + t->header_every_s;
                t->next_heartbeat_s = now_s() + 1.0;
            }
            t->run_open = m->type != TP_MSG_RUN_END;
            send_msg(t, m);
            atomic_store(&t->head, head + 1); /* the slot is free again */
            send_periodic(t);
            continue;
        }
        if (atomic_load(&t->stop) && head == atomic_load(&t->tail)) break;
        if (!atomic_load(&t->paused)) send_periodic(t);
        double wake = t->next_heartbeat_s < t->next_header_s ? t->next_heartbeat_s
                                                              : t->next_header_s;
        double wait = t->run_open && !atomic_load(&t->paused) ? wake - now_s() : 0.5;
        if (wait > 0.5) wait = 0.5;
        if (t->run_open && wait > TT_POLL_S) wait = TT_POLL_S;
        if (wait > 0) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            double sec = ts.tv_sec + ts.tv_nsec * 1e-9 + wait;
            ts.tv_sec = (time_t)sec;
            ts.tv_nsec = (long)((sec - (double)ts.tv_sec) * 1e9);
            if (ts.tv_nsec >= 1000000000L) ts.tv_nsec = 999999999L;
            while (sem_timedwait(&t->wake, &ts) != 0 && errno == EINTR) {
            }
        }
    }
    return NULL;
}

int tt_publish(tt_transport *t, const tp_msg *m) {
    int rc = 1;
    pthread_mutex_lock(&t->plock);
    if (strcmp(m->run_id, t->prod_run) != 0) {
        snprintf(t->prod_run, sizeof t->prod_run, "%s", m->run_id);
        atomic_store(&t->dropped_run_base, atomic_load(&t->dropped));
    }
    uint64_t tail = atomic_load(&t->tail);
    if (tail - atomic_load(&t->head) >= (uint64_t)t->qlen || atomic_load(&t->stop)) goto drop;
    slot *s = &t->slots[tail % (uint64_t)t->qlen];

    /* The slot at the tail is ours until tail moves (plock keeps other
     * producers out; the I/O thread never reads past head < tail). */
    s->msg = *m;
    if (m->type == TP_MSG_STEP) {
        int n = m->u.step.n_layers > 0 && m->u.step.layers ? m->u.step.n_layers : 0;
        if (n > s->layers_cap) {
            tp_layer_row *l = realloc(s->layers, (size_t)n * sizeof *l);
            if (!l) goto drop;
            s->layers = l;
            s->layers_cap = n;
        }
        if (n) memcpy(s->layers, m->u.step.layers, (size_t)n * sizeof *s->layers);
        s->msg.u.step.layers = s->layers;
        s->msg.u.step.n_layers = n;
    } else if (m->type == TP_MSG_KNOB_EVENT) {
        int n = m->u.knob.n_changes > 0 && m->u.knob.changes ? m->u.knob.n_changes : 0;
        if (n > s->changes_cap) {
            tp_knob_change *c = realloc(s->changes, (size_t)n * sizeof *c);
            if (!c) goto drop;
            s->changes = c;
            s->changes_cap = n;
        }
        if (n) memcpy(s->changes, m->u.knob.changes, (size_t)n * sizeof *s->changes);
        s->msg.u.knob.changes = s->changes;
        s->msg.u.knob.n_changes = n;
    }
    atomic_store(&t->tail, tail + 1);
    /* Waking the I/O thread costs the host a futex call and, in a VM, an
     * interrupt to the other core (about 14 us a step measured by
     * bench/agent_overhead): the I/O thread polls every TT_POLL_S while a
     * run is open, and is woken only for a run's first and last message or
     * when the queue is half full. */
    if (m->type == TP_MSG_HEADER || m->type == TP_MSG_RUN_END ||
        tail + 1 - atomic_load(&t->head) >= (uint64_t)t->qlen / 2)
        sem_post(&t->wake);
    rc = 0;
drop:
    if (rc) atomic_fetch_add(&t->dropped, 1);
    pthread_mutex_unlock(&t->plock);
    return rc;
}

/* ------------------------------------------------------------------ */
/* Control (REP thread)                                                 */
/* ------------------------------------------------------------------ */

static void do_replay(tt_transport *t, const tp_request *q, tp_reply *rep) {
    pthread_mutex_lock(&t->rlock);
    if (q->run_id[0] && strcmp(q->run_id, t->ring_run) != 0) {
        rep->ok = 0;
        snprintf(rep->error, sizeof rep->error,
                 "replay: run '%s' is not the current run ('%s'); its messages are gone",
                 q->run_id, t->ring_run);
        pthread_mutex_unlock(&t->rlock);
        return;
    }
    uint64_t last = atomic_load(&t->last_seq);
    uint64_t from = q->from_seq ? q->from_seq : 1, to = q->to_seq < last ? q->to_seq : last;
    snprintf(rep->run_id, sizeof rep->run_id, "%s", t->ring_run);
    rep->ok = 1;
    size_t budget = TP_MAX_MESSAGE_BYTES - 64 * 1024, used = 0;
    uint64_t n = to >= from ? to - from + 1 : 0;
    if (n > (uint64_t)t->ring_len) n = (uint64_t)t->ring_len + 1; /* enough to count */
    rep->messages = n ? calloc(n, sizeof *rep->messages) : NULL;
    for (uint64_t s = from; s <= to && rep->messages; s++) {
        ring_entry *e = &t->ring[s % (uint64_t)t->ring_len];
        if (e->seq != s) {
            if (!rep->replay_first_missing) rep->replay_first_missing = s;
            rep->replay_missing++;
            continue;
        }
        if (used + e->data.len + 16 > budget || rep->n_messages >= (int)n) break; /* ask again */
        tp_buf *b = &rep->messages[rep->n_messages];
        b->data = malloc(e->data.len + 1);
        if (!b->data) break;
        memcpy(b->data, e->data.data, e->data.len);
        b->len = e->data.len;
        b->cap = e->data.len + 1;
        used += e->data.len + 16;
        rep->n_messages++;
    }
    rep->last_seq = last;
    pthread_mutex_unlock(&t->rlock);
}

static void reply_send(tt_transport *t, tp_reply *rep) {
    tp_buf out = {0};
    char err[256];
    rep->dropped = atomic_load(&t->dropped);
    if (!rep->last_seq) rep->last_seq = atomic_load(&t->last_seq);
    if (tp_encode_reply(rep, &out, err, sizeof err) != 0) {
        tp_reply small = {0};
        small.version = TP_PROTOCOL_VERSION;
        snprintf(small.error, sizeof small.error, "reply could not be encoded: %.200s", err);
        small.step = -1;
        small.effective_step = -1;
        tp_encode_reply(&small, &out, err, sizeof err);
    }
    nng_send(t->rep, out.data, out.len, 0);
    tp_buf_free(&out);
}

static void *ctl_main(void *arg) {
    tt_transport *t = arg;
    for (;;) {
        nng_msg *msg = NULL;
        int rv = nng_recvmsg(t->rep, &msg, 0);
        if (rv == NNG_ECLOSED) break;
        if (rv != 0) continue;
        tp_request q;
        tp_reply rep;
        memset(&rep, 0, sizeof rep);
        rep.version = TP_PROTOCOL_VERSION;
        rep.step = -1;
        rep.effective_step = -1;
        if (tp_decode_request(nng_msg_body(msg), nng_msg_len(msg), &q, rep.error,
                              sizeof rep.error) != 0) {
            char why[sizeof rep.error];
            snprintf(why, sizeof why, "%s", rep.error);
            snprintf(rep.error, sizeof rep.error, "bad request: %.200s", why);
            rep.ok = 0;
        } else if (q.op == TP_OP_REPLAY) {
            do_replay(t, &q, &rep);
        } else if (t->cb.control) {
            t->cb.control(t->cb.user, &q, &rep);
        }
        nng_msg_free(msg);
        reply_send(t, &rep);
        tp_request_free(&q);
        tp_reply_free(&rep);
    }
    return NULL;
}

/* ------------------------------------------------------------------ */
/* Open / close                                                        */
/* ------------------------------------------------------------------ */

static void pipe_event(nng_pipe p, nng_pipe_ev ev, void *arg) {
    (void)p;
    tt_transport *t = arg;
    if (ev == NNG_PIPE_EV_ADD_POST) atomic_fetch_add(&t->subscribers, 1);
    if (ev == NNG_PIPE_EV_REM_POST) atomic_fetch_sub(&t->subscribers, 1);
}

/* tcp://:PORT and tcp://[*]:PORT bind loopback only; the rest as given. */
static void loopback_default(const char *in, char *out, size_t len) {
    if (!strncmp(in, "tcp://:", 7))
        snprintf(out, len, "tcp://127.0.0.1:%s", in + 7);
    else if (!strncmp(in, "tcp://*:", 8))
        snprintf(out, len, "tcp://127.0.0.1:%s", in + 8);
    else
        snprintf(out, len, "%s", in);
}

static int listen_on(nng_socket s, const char *url, char *err, size_t errlen) {
    nng_listener l;
    int rv = nng_listener_create(&l, s, url);
    if (rv != 0) {
        snprintf(err, errlen, "cannot listen on %s: %s", url, nng_strerror(rv));
        return -1;
    }
    if (!strncmp(url, "ipc://", 6)) {
        rv = nng_listener_set_int(l, NNG_OPT_IPC_PERMISSIONS, 0600);
        if (rv != 0) {
            snprintf(err, errlen, "cannot set mode 0600 on %s: %s", url, nng_strerror(rv));
            return -1;
        }
    }
    rv = nng_listener_start(l, 0);
    if (rv != 0) {
        snprintf(err, errlen, "cannot listen on %s: %s", url, nng_strerror(rv));
        return -1;
    }
    if (!strncmp(url, "ipc://", 6)) {
        struct stat st;
        if (stat(url + 6, &st) == 0 && (st.st_mode & 077)) chmod(url + 6, 0600);
    }
    return 0;
}

int tt_open(const char *pub_url, const char *ctl_url, int queue_len, int ring_len,
            double header_every_s, const tt_callbacks *cb, tt_transport **out, char *err,
            size_t errlen) {
    *out = NULL;
    tt_transport *t = calloc(1, sizeof *t);
    if (!t) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    if (cb) t->cb = *cb;
    t->qlen = queue_len > 0 ? queue_len : 1024;
    t->ring_len = ring_len > 0 ? ring_len : 4096;
    t->header_every_s = header_every_s > 0 ? header_every_s : 2.0;
    t->next_header_s = t->next_heartbeat_s = 1e300;
    loopback_default(pub_url, t->pub_url, sizeof t->pub_url);
    loopback_default(ctl_url, t->ctl_url, sizeof t->ctl_url);
    pthread_mutex_init(&t->plock, NULL);
    pthread_mutex_init(&t->rlock, NULL);
    if (sem_init(&t->wake, 0, 0) != 0) {
        snprintf(err, errlen, "cannot create a semaphore");
        free(t);
        return -1;
    }
    t->sem_ok = 1;
    t->slots = calloc((size_t)t->qlen, sizeof *t->slots);
    t->ring = calloc((size_t)t->ring_len, sizeof *t->ring);
    if (!t->slots || !t->ring) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    int rv;
    if ((rv = nng_pub0_open(&t->pub)) != 0 || (t->pub_open = 1, 0) ||
        (rv = nng_rep0_open(&t->rep)) != 0) {
        snprintf(err, errlen, "cannot open nng sockets: %s", nng_strerror(rv));
        goto fail;
    }
    t->rep_open = 1;
    /* oversized requests get an error reply from the codec, not a silent drop */
    nng_socket_set_size(t->rep, NNG_OPT_RECVMAXSZ, (size_t)TP_MAX_MESSAGE_BYTES + 65536);
    /* PUB never blocks, it drops: a deeper per-subscriber queue (default 16
     * messages) absorbs bursts such as replies to a replay or a header re-send */
    nng_socket_set_int(t->pub, NNG_OPT_SENDBUF, 1024);
    nng_pipe_notify(t->pub, NNG_PIPE_EV_ADD_POST, pipe_event, t);
    nng_pipe_notify(t->pub, NNG_PIPE_EV_REM_POST, pipe_event, t);
    if (listen_on(t->pub, t->pub_url, err, errlen) != 0 ||
        listen_on(t->rep, t->ctl_url, err, errlen) != 0)
        goto fail;
    if (pthread_create(&t->io_thread, NULL, io_main, t) != 0) {
        snprintf(err, errlen, "cannot start the I/O thread");
        goto fail;
    }
    t->io_started = 1;
    if (pthread_create(&t->ctl_thread, NULL, ctl_main, t) != 0) {
        snprintf(err, errlen, "cannot start the control thread");
        goto fail;
    }
    t->ctl_started = 1;
    *out = t;
    return 0;
fail:
    tt_close(t);
    return -1;
}

void tt_close(tt_transport *t) {
    if (!t) return;
    if (t->io_started) {
        atomic_store(&t->stop, 1);
        atomic_store(&t->paused, 0);
        sem_post(&t->wake);
        pthread_join(t->io_thread, NULL);
    }
    if (t->rep_open) nng_close(t->rep);
    if (t->ctl_started) pthread_join(t->ctl_thread, NULL);
    if (t->pub_open) {
        /* nng 1.5 has no linger: give connected subscribers a moment to
         * receive the last messages (run_end) before the socket goes */
        if (atomic_load(&t->subscribers) > 0) nanosleep(&(struct timespec){0, 50000000L}, NULL);
        nng_close(t->pub);
    }
    for (int i = 0; t->slots && i < t->qlen; i++) {
        free(t->slots[i].layers);
        free(t->slots[i].changes);
    }
    for (int i = 0; t->ring && i < t->ring_len; i++) tp_buf_free(&t->ring[i].data);
    free(t->slots);
    free(t->ring);
    tp_buf_free(&t->enc);
    pthread_mutex_destroy(&t->plock);
    pthread_mutex_destroy(&t->rlock);
    if (t->sem_ok) sem_destroy(&t->wake);
    free(t);
}

int tt_flush(tt_transport *t, int timeout_ms) {
    sem_post(&t->wake);
    for (int waited_ms = 0; atomic_load(&t->head) != atomic_load(&t->tail); waited_ms++) {
        if (waited_ms >= timeout_ms) return -1;
        nanosleep(&(struct timespec){0, 1000000L}, NULL);
    }
    return 0;
}

void tt_pause(tt_transport *t, int paused) {
    atomic_store(&t->paused, paused);
    sem_post(&t->wake);
}

uint64_t tt_dropped(tt_transport *t) { return atomic_load(&t->dropped); }
uint64_t tt_published(tt_transport *t) { return atomic_load(&t->published); }
uint64_t tt_last_seq(tt_transport *t) { return atomic_load(&t->last_seq); }
int tt_subscribers(tt_transport *t) { return atomic_load(&t->subscribers); }
const char *tt_pub_url(const tt_transport *t) { return t->pub_url; }
const char *tt_ctl_url(const tt_transport *t) { return t->ctl_url; }

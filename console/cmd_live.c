/*
 * cmd_live.c -- `taylorscope [live [URL]]`: the ncurses console attached to
 * one agent. One thread, one poll loop over the keyboard and the nng
 * receive descriptors (NNG_OPT_RECVFD; never a receive timeout, SPEC 8):
 *
 *   poll(stdin, stream fds, control fd)     at most 250 ms
 *     stream messages -> recorder (SQLite) -> view model   (collect)
 *     control replies -> the knob editor's request state
 *     keys            -> tc_ui_key -> actions (send a knob, open a run, quit)
 *   redraw when something changed, at most every 100 ms   (draw)
 *
 * Nothing waits on the network: sends are non-blocking, a control request
 * without a reply is given up after CONTROL_TIMEOUT_MS. Quitting (q, F10,
 * SIGINT, SIGTERM) restores the terminal and exits 0.
 */
#include <curses.h>
#include <errno.h>
#include <locale.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cmd.h"
#include "ui/history.h"
#include "ui/link.h"
#include "ui/live.h"
#include "ui/model.h"
#include "ui/ui.h"

enum {
    REDRAW_MIN_MS = 100,      /* at most 10 frames a second */
    CLOCK_REDRAW_MS = 1000,   /* elapsed/ETA/stale move even without messages */
    CONTROL_TIMEOUT_MS = 3000,
    MAX_MSGS_PER_ROUND = 512, /* keep keys responsive under a burst */
};

static volatile sig_atomic_t quit_signal;

static void on_signal(int sig) { quit_signal = sig; }

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

typedef struct {
    tc_model live;           /* the attached run */
    tc_model opened;         /* a stored run opened from the history browser */
    tc_model cmp[2];         /* the compare screen's runs */
    tc_history hist;
    tc_ui ui;
    tc_link link;
    char db_path[512];
    int dirty;
    uint64_t seen_msgs;
    int64_t last_draw_ns;
    /* a knob change waiting for the control socket to be free */
    int want_set;
    int64_t want_since_ns;
    char want_knob[TP_NAME_LEN], want_value[64];
} live_state;

static void usage(FILE *f) {
    fprintf(f,
            "usage: taylorscope live [URL] [--readonly] [--mono] [--db FILE] [--no-record]\n"
            "\n"
            "The console: attaches to the agent publishing at URL (default: the one agent\n"
            "listening on this user's default ipc endpoints), shows the run live, edits\n"
            "its knobs, records it into the history database and browses the runs\n"
            "recorded there.\n"
            "\n"
            "  --readonly   observer: knobs are shown, never changed\n"
            "  --mono       no colours (also when NO_COLOR is set)\n"
            "  --db FILE    history database (default: $TAYLORSCOPE_DB, else\n"
            "               $XDG_DATA_HOME/taylorscope/runs.db)\n"
            "  --no-record  do not record (the history browser still reads --db)\n"
            "\n"
            "Keys: F1/? help, F2 live, F3 heat map, F4 knobs, F5 history, q quit.\n");
}

/* ---- actions ---- */

static void send_knob(live_state *s, const char *knob, const char *value) {
    tc_model *m = &s->live;
    char err[256];
    tp_knob_change ch;
    memset(&ch, 0, sizeof ch);
    snprintf(ch.name, sizeof ch.name, "%s", knob);
    snprintf(ch.value, sizeof ch.value, "%s", value);
    tp_request r;
    memset(&r, 0, sizeof r);
    r.op = TP_OP_SET_KNOBS;
    snprintf(r.origin, sizeof r.origin, "console");
    r.expected_version = -1;
    r.n_changes = 1;
    r.changes = &ch;
    memset(&m->edit, 0, sizeof m->edit);
    m->edit.effective_step = -1;
    snprintf(m->edit.knob, sizeof m->edit.knob, "%s", knob);
    snprintf(m->edit.value, sizeof m->edit.value, "%s", value);
    int rc = tc_link_send_request(&s->link, &r, now_ns(), err, sizeof err);
    if (rc == 1 && now_ns() - s->want_since_ns < (int64_t)CONTROL_TIMEOUT_MS * 1000000) {
        s->want_set = 1; /* not connected yet: tried again from the loop */
        m->edit.state = TC_EDIT_SENDING;
        return;
    }
    if (rc != 0) {
        m->edit.state = TC_EDIT_REJECTED;
        snprintf(m->edit.error, sizeof m->edit.error, "not sent: %.200s", err);
        return;
    }
    m->edit.state = TC_EDIT_SENDING;
    snprintf(m->edit.request_id, sizeof m->edit.request_id, "%s", r.request_id);
    tc_ui_status(&s->ui, "%s = %s sent to the agent", knob, value);
}

static void handle_reply(live_state *s, tp_reply *rep, tp_op op) {
    tc_model *m = &s->live;
    if (op == TP_OP_SET_KNOBS) {
        if (!rep->ok) {
            m->edit.state = TC_EDIT_REJECTED;
            snprintf(m->edit.error, sizeof m->edit.error, "%s", rep->error[0] ? rep->error : "refused");
            tc_ui_status(&s->ui, "the agent refused %s = %s", m->edit.knob, m->edit.value);
        } else {
            /* the agent's knob_event (requested, even applied) may have come first */
            if (m->edit.state == TC_EDIT_SENDING) m->edit.state = TC_EDIT_PENDING;
            if (m->edit.state == TC_EDIT_PENDING) m->edit.effective_step = rep->effective_step;
            tc_ui_status(&s->ui, "%s = %s accepted%s: takes effect at step %d", m->edit.knob, m->edit.value,
                         rep->duplicate ? " (a resend, applied once)" : "", rep->effective_step);
        }
        return;
    }
    if (op == TP_OP_REPLAY) {
        char err[256];
        for (int i = 0; i < rep->n_messages; i++) {
            tp_msg msg;
            memset(&msg, 0, sizeof msg);
            if (tp_decode_msg(rep->messages[i].data, rep->messages[i].len, &msg, err, sizeof err) == 0)
                (void)tc_model_apply(m, &msg, now_ns(), err, sizeof err);
            else
                m->decode_errors++;
            tp_msg_free(&msg);
        }
        tc_model_gap_result(m, s->link.replay_from, s->link.replay_to, rep->replay_missing);
    }
}

/* Asks the agent to replay the oldest open gap (the console's own stream;
 * when the recorder feeds the model, it replays and this finds no gap open). */
static void replay_gaps(live_state *s) {
    tc_model *m = &s->live;
    if (s->link.busy || !s->link.sub_id) return;
    for (int i = 0; i < m->n_gaps; i++) {
        tc_gap *g = &m->gaps[i];
        if (g->state != TC_GAP_OPEN) continue;
        tp_request r;
        memset(&r, 0, sizeof r);
        r.op = TP_OP_REPLAY;
        snprintf(r.origin, sizeof r.origin, "console");
        snprintf(r.run_id, sizeof r.run_id, "%s", m->run_id);
        r.from_seq = g->from_seq;
        r.to_seq = g->to_seq;
        r.expected_version = -1;
        char err[256];
        if (tc_link_send_request(&s->link, &r, now_ns(), err, sizeof err) == 0) g->state = TC_GAP_ASKED;
        return;
    }
}

static void do_action(live_state *s, tc_action a, int *quit) {
    switch (a) {
    case TC_ACT_NONE: return;
    case TC_ACT_QUIT: *quit = 1; return;
    case TC_ACT_SET_KNOB:
        snprintf(s->want_knob, sizeof s->want_knob, "%s", s->ui.act_knob);
        snprintf(s->want_value, sizeof s->want_value, "%s", s->ui.act_value);
        s->want_since_ns = now_ns();
        if (s->link.busy)
            s->want_set = 1; /* after the request in flight */
        else
            send_knob(s, s->want_knob, s->want_value);
        break;
    case TC_ACT_RELOAD_HISTORY:
    case TC_ACT_OPEN_RUN:
    case TC_ACT_COMPARE_RUNS: {
        char err[256];
        if (tc_live_history_action(s->db_path, a, &s->ui, &s->hist, &s->opened, s->cmp, err, sizeof err) != 0)
            tc_ui_status(&s->ui, "%s", err);
        break;
    }
    case TC_ACT_FOLLOW_LIVE:
    case TC_ACT_REDRAW: break;
    }
    s->dirty = 1;
}

/* ---- the loop ---- */

static int parse_args(int argc, char **argv, const char **url, int *readonly, int *mono, const char **db,
                      int *record) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 1;
        } else if (!strcmp(a, "--readonly")) {
            *readonly = 1;
        } else if (!strcmp(a, "--mono")) {
            *mono = 1;
        } else if (!strcmp(a, "--no-record")) {
            *record = 0;
        } else if (!strcmp(a, "--db")) {
            if (i + 1 >= argc) {
                fprintf(stderr, "taylorscope live: --db needs a FILE\n");
                return 2;
            }
            *db = argv[++i];
        } else if (!strncmp(a, "--db=", 5)) {
            *db = a + 5;
        } else if (a[0] == '-') {
            fprintf(stderr, "taylorscope live: unknown option '%s'\n", a);
            usage(stderr);
            return 2;
        } else if (!*url) {
            *url = a;
        } else {
            fprintf(stderr, "taylorscope live: one URL only ('%s' is extra)\n", a);
            return 2;
        }
    }
    return 0;
}

int tc_cmd_live(int argc, char **argv) {
    const char *url = NULL, *db = NULL;
    int readonly = 0, mono = 0, record = 1;
    int prc = parse_args(argc, argv, &url, &readonly, &mono, &db, &record);
    if (prc) return prc == 1 ? 0 : prc;

    if (!isatty(STDIN_FILENO) || !isatty(STDOUT_FILENO)) {
        fprintf(stderr, "taylorscope live: needs a terminal (use `taylorscope tap` or `record` in scripts)\n");
        return 1;
    }
    static live_state s; /* large; one per process */
    memset(&s, 0, sizeof s);
    char err[512], pub[256];
    if (!url) {
        /* no URL: the one agent listening on a default endpoint */
        char dir[256], urls[4][256];
        int found = 0;
        if (tp_find_default_agents(&urls[0][0], sizeof urls[0], 4, &found, dir, sizeof dir, err,
                                   sizeof err) != 0) {
            fprintf(stderr, "taylorscope live: %s\n", err);
            return 1;
        }
        if (found == 0) {
            fprintf(stderr,
                    "taylorscope live: no agent is listening in %s; start a sampler first, or give "
                    "its URL (taylorscope live URL)\n", dir);
            return 2;
        }
        if (found > 1) {
            fprintf(stderr, "taylorscope live: %d agents are listening; choose one:\n", found);
            for (int i = 0; i < found && i < 4; i++)
                fprintf(stderr, "  taylorscope live %s\n", urls[i]);
            return 2;
        }
        snprintf(pub, sizeof pub, "%s", urls[0]);
        url = pub;
    }
    if (tc_live_db_path(db, s.db_path, sizeof s.db_path, err, sizeof err) != 0) {
        fprintf(stderr, "taylorscope live: %s\n", err);
        return 1;
    }
    tc_model_init(&s.live);
    tc_model_init(&s.opened);
    tc_model_init(&s.cmp[0]);
    tc_model_init(&s.cmp[1]);
    snprintf(s.live.endpoint, sizeof s.live.endpoint, "%s", url);

    tc_live_source *src = NULL;
    if (tc_live_source_open(&src, url, record ? s.db_path : NULL, &s.live, err, sizeof err) != 0) {
        fprintf(stderr, "taylorscope live: %s\n", err);
        return 1;
    }
    int with_sub = !tc_live_source_has_stream(src);
    if (tc_link_open(&s.link, url, with_sub, err, sizeof err) != 0) {
        fprintf(stderr, "taylorscope live: %s\n", err);
        tc_live_source_close(src);
        return 1;
    }

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    setlocale(LC_ALL, "");
    initscr();
    cbreak();
    noecho();
    nonl();
    keypad(stdscr, TRUE);
    nodelay(stdscr, TRUE);
    set_escdelay(25);
    curs_set(0);

    s.ui.live = &s.live;
    s.ui.readonly = readonly;
    tc_ui_init(&s.ui, mono);
    if (tc_live_source_note(src)[0])
        tc_ui_status(&s.ui, "attached to %.100s; %.140s; F1 help", url, tc_live_source_note(src));
    else
        tc_ui_status(&s.ui, "attached to %.100s, recording to %.120s; F1 help", url, s.db_path);
    s.hist.runs = NULL;
    s.dirty = 1;

    int quit = 0;
    while (!quit && !quit_signal) {
        int64_t t = now_ns();
        struct pollfd fds[16];
        int n = 0;
        fds[n++] = (struct pollfd){.fd = STDIN_FILENO, .events = POLLIN};
        if (s.link.sub_fd >= 0) fds[n++] = (struct pollfd){.fd = s.link.sub_fd, .events = POLLIN};
        if (s.link.req_fd >= 0 && s.link.busy) fds[n++] = (struct pollfd){.fd = s.link.req_fd, .events = POLLIN};
        n += tc_live_source_fds(src, fds + n, (int)(sizeof fds / sizeof fds[0]) - n);
        int timeout_ms = 250;
        if (s.dirty) {
            int64_t wait = REDRAW_MIN_MS - (t - s.last_draw_ns) / 1000000;
            timeout_ms = wait < 0 ? 0 : (int)wait;
        }
        if (poll(fds, (nfds_t)n, timeout_ms) < 0 && errno != EINTR) break;
        t = now_ns();

        /* collect: the stream */
        if (tc_live_source_service(src, t, err, sizeof err) != 0) tc_ui_status(&s.ui, "recorder: %s", err);
        for (int i = 0; i < MAX_MSGS_PER_ROUND; i++) {
            tp_msg msg;
            memset(&msg, 0, sizeof msg);
            int rc = tc_link_recv_msg(&s.link, &msg, err, sizeof err);
            if (rc == 0) break;
            if (rc > 0)
                (void)tc_model_apply(&s.live, &msg, t, err, sizeof err);
            else
                s.live.decode_errors++;
            tp_msg_free(&msg);
        }
        if (s.live.msgs != s.seen_msgs) { /* any message applied since the last draw */
            s.seen_msgs = s.live.msgs;
            s.dirty = 1;
        }

        /* collect: control replies */
        if (s.link.busy) {
            tp_reply rep;
            memset(&rep, 0, sizeof rep);
            tp_op op = s.link.busy_op;
            int rc = tc_link_recv_reply(&s.link, &rep, err, sizeof err);
            if (rc > 0) handle_reply(&s, &rep, op);
            if (rc < 0 && op == TP_OP_SET_KNOBS) {
                s.live.edit.state = TC_EDIT_REJECTED;
                snprintf(s.live.edit.error, sizeof s.live.edit.error, "bad reply: %.200s", err);
            }
            if (rc != 0) s.dirty = 1;
            tp_reply_free(&rep);
            if (tc_link_request_expired(&s.link, t, CONTROL_TIMEOUT_MS)) {
                if (op == TP_OP_SET_KNOBS && s.live.edit.state == TC_EDIT_SENDING) {
                    s.live.edit.state = TC_EDIT_REJECTED;
                    snprintf(s.live.edit.error, sizeof s.live.edit.error,
                             "no reply from the agent at %.150s in %d s (is it running?)", s.link.ctl_url,
                             CONTROL_TIMEOUT_MS / 1000);
                }
                s.dirty = 1;
            }
        }
        if (!s.link.busy && s.want_set) {
            s.want_set = 0;
            send_knob(&s, s.want_knob, s.want_value);
            s.dirty = 1;
        }
        if (s.link.busy && s.want_set && t - s.want_since_ns > (int64_t)CONTROL_TIMEOUT_MS * 1000000) {
            s.want_set = 0; /* the request in flight never finished: give this one up too */
            s.live.edit.state = TC_EDIT_REJECTED;
            snprintf(s.live.edit.error, sizeof s.live.edit.error, "not sent: the agent did not answer");
        }
        replay_gaps(&s);

        /* keys */
        for (int ch; (ch = getch()) != ERR;) {
            do_action(&s, tc_ui_key(&s.ui, ch), &quit);
            if (quit) break;
        }

        /* draw */
        tc_conn_state before = s.live.conn;
        tc_model_tick(&s.live, t);
        if (s.live.conn != before) s.dirty = 1;
        int64_t since_ms = (t - s.last_draw_ns) / 1000000;
        if ((s.dirty && since_ms >= REDRAW_MIN_MS) || since_ms >= CLOCK_REDRAW_MS) {
            s.ui.now_ns = t;
            tc_ui_draw(&s.ui);
            s.last_draw_ns = t;
            s.dirty = 0;
        }
    }

    endwin();
    tc_exit_if_close_hangs(0, 3);
    tc_link_close(&s.link);
    tc_live_source_close(src);
    tc_history_free(&s.hist);
    tc_model_free(&s.live);
    tc_model_free(&s.opened);
    tc_model_free(&s.cmp[0]);
    tc_model_free(&s.cmp[1]);
    return 0;
}

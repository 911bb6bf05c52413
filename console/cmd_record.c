/* cmd_record.c -- `taylorscope record URL...`: headless recording. */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "cmd.h"
#include "recorder.h"

static volatile sig_atomic_t stop_requested;
static void on_signal(int sig) {
    (void)sig;
    stop_requested = 1;
}

static void print_note(void *user, const char *line) {
    (void)user;
    time_t t = time(NULL);
    struct tm tm;
    char when[32] = "";
    if (gmtime_r(&t, &tm)) strftime(when, sizeof when, "%H:%M:%S", &tm);
    fprintf(stderr, "%s %s\n", when, line);
}

int tc_cmd_record(int argc, char **argv) {
    const char *db = NULL, *lost_text = NULL, *runs_text = NULL, *duration_text = NULL;
    const char *urls[64];
    int n_urls = 0;
    for (int i = 1; i < argc;) {
        int r;
        if ((r = tc_opt(argc, argv, &i, "--db", &db)) || (r = tc_opt(argc, argv, &i, "--lost-after", &lost_text)) ||
            (r = tc_opt(argc, argv, &i, "--runs", &runs_text)) ||
            (r = tc_opt(argc, argv, &i, "--duration", &duration_text))) {
            if (r < 0) return tc_usage_error("record", "%s needs a value", argv[i]);
            continue;
        }
        if (argv[i][0] == '-') return tc_usage_error("record", "unknown option '%s'", argv[i]);
        if (n_urls == 64) return tc_usage_error("record", "at most 64 URLs");
        urls[n_urls++] = argv[i++];
    }
    if (!n_urls) return tc_usage_error("record", "no URL given (the agent's PUB endpoint, e.g. ipc:///run/...pub)");
    tc_recorder_opts o;
    memset(&o, 0, sizeof o);
    o.on_note = print_note;
    int64_t runs_wanted = -1;
    double duration_s = -1;
    if (lost_text && (tc_parse_seconds(lost_text, &o.lost_after_s) || o.lost_after_s <= 0))
        return tc_usage_error("record", "--lost-after must be a number of seconds > 0, not '%s'", lost_text);
    if (runs_text && (tc_parse_count(runs_text, &runs_wanted) || runs_wanted < 1))
        return tc_usage_error("record", "--runs must be a whole number >= 1, not '%s'", runs_text);
    if (duration_text && tc_parse_seconds(duration_text, &duration_s))
        return tc_usage_error("record", "--duration must be a number of seconds >= 0, not '%s'", duration_text);

    /* check every URL before the database is created or touched */
    for (int i = 0; i < n_urls; i++) {
        char ctl[512], err[256];
        if (tp_control_url_for(urls[i], ctl, sizeof ctl, err, sizeof err))
            return tc_usage_error("record", "%s", err);
        for (int j = 0; j < i; j++)
            if (!strcmp(urls[i], urls[j])) return tc_usage_error("record", "%s is given twice", urls[i]);
    }
    tc_store *s;
    int rc = tc_open_history("record", db, TC_STORE_WRITE, &s);
    if (rc) return rc;
    char err[512];
    tc_recorder *rec = NULL;
    if (tc_recorder_open(s, &o, &rec, err, sizeof err)) {
        tc_store_close(s);
        return tc_fail("record", "%s", err);
    }
    for (int i = 0; i < n_urls; i++) {
        if (tc_recorder_add(rec, urls[i], err, sizeof err)) {
            tc_recorder_close(rec);
            tc_store_close(s);
            return tc_fail("record", "%s", err);
        }
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    fprintf(stderr, "recording %d agent%s into %s (Ctrl-C stops)\n", n_urls, n_urls == 1 ? "" : "s",
            tc_store_path(s));
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    while (!stop_requested) {
        if (tc_recorder_poll_once(rec, 200, err, sizeof err)) {
            rc = tc_fail("record", "%s", err);
            break;
        }
        tc_recorder_stats st;
        tc_recorder_get_stats(rec, &st);
        if (runs_wanted > 0 && st.runs_ended >= runs_wanted) break;
        clock_gettime(CLOCK_MONOTONIC, &t);
        if (duration_s >= 0 && (double)(t.tv_sec - t0.tv_sec) + (t.tv_nsec - t0.tv_nsec) * 1e-9 >= duration_s) break;
    }
    tc_recorder_stats st;
    tc_recorder_get_stats(rec, &st);
    fprintf(stderr,
            "recorded %llu messages (%llu replayed), %llu gaps, %llu messages lost, %d runs ended\n",
            (unsigned long long)st.messages, (unsigned long long)st.replayed, (unsigned long long)st.gaps,
            (unsigned long long)st.lost_messages, st.runs_ended);
    tc_store_close(s); /* the database first: closing the sockets can hang in nng 1.5.2 */
    tc_exit_if_close_hangs(rc, 3);
    tc_recorder_close(rec);
    return rc;
}

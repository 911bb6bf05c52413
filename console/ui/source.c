/* source.c -- the live loop's stream source (see live.h): the store
 * branch's recorder, recording into the history database and handing every
 * decoded message (replayed ones included) to the view model. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "recorder.h"
#include "store.h"
#include "ui/live.h"

struct tc_live_source {
    tc_model *model;
    tc_store *store;
    tc_recorder *rec;
    char note[300];
};

static int64_t wall_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* The recorder stored the message; now the view model takes it. */
static void on_msg(void *user, const char *url, int64_t run, const tp_msg *m, int replayed) {
    tc_live_source *s = user;
    char err[128];
    if (tc_model_apply(s->model, m, wall_ns(), err, sizeof err) != 0)
        snprintf(s->note, sizeof s->note, "view: %s", err);
}

int tc_live_source_open(tc_live_source **out, const char *pub_url, const char *db_path, tc_model *model,
                        char *err, size_t errlen) {
    tc_live_source *s = calloc(1, sizeof *s);
    *out = s;
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    s->model = model;
    if (!db_path) {
        snprintf(s->note, sizeof s->note, "not recording (--no-record)");
        return 0;
    }
    char e[256];
    if (tc_store_open(db_path, TC_STORE_WRITE, &s->store, e, sizeof e) != 0) {
        snprintf(s->note, sizeof s->note, "not recording: %.250s", e);
        return 0;
    }
    if (tc_store_read_only(s->store)) {
        snprintf(s->note, sizeof s->note, "not recording: %.250s", tc_store_warning(s->store));
        tc_store_close(s->store);
        s->store = NULL;
        return 0;
    }
    tc_recorder_opts o;
    memset(&o, 0, sizeof o);
    o.on_msg = on_msg;
    o.user = s;
    if (tc_recorder_open(s->store, &o, &s->rec, e, sizeof e) != 0 || tc_recorder_add(s->rec, pub_url, e, sizeof e) != 0) {
        snprintf(err, errlen, "%s", e);
        tc_live_source_close(s);
        *out = NULL;
        return -1;
    }
    return 0;
}

void tc_live_source_close(tc_live_source *s) {
    if (!s) return;
    /* the database first: closing the sockets can hang in nng 1.5.2 */
    if (s->store) tc_store_close(s->store);
    if (s->rec) tc_recorder_close(s->rec);
    free(s);
}

int tc_live_source_has_stream(const tc_live_source *s) { return s && s->rec; }

int tc_live_source_fds(tc_live_source *s, struct pollfd *fds, int max) {
    return s && s->rec ? tc_recorder_fds(s->rec, fds, max) : 0;
}

int tc_live_source_service(tc_live_source *s, int64_t now_ns, char *err, size_t errlen) {
    if (!s || !s->rec) return 0;
    int rc = tc_recorder_service(s->rec, err, errlen);
    /* the recorder replays gaps itself; what it could not get back is lost */
    tc_recorder_stats st;
    tc_recorder_get_stats(s->rec, &st);
    if (st.lost_messages > s->model->lost) s->model->lost = st.lost_messages;
    return rc;
}

const char *tc_live_source_note(const tc_live_source *s) { return s ? s->note : ""; }

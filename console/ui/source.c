/* source.c -- the live loop's stream source (see live.h). Until the
 * recorder is wired in, there is none: the console subscribes itself. */
#include <stdlib.h>

#include "ui/live.h"

struct tc_live_source {
    tc_model *model;
    char note[256];
};

int tc_live_source_open(tc_live_source **out, const char *pub_url, const char *db_path, tc_model *model,
                        char *err, size_t errlen) {
    *out = calloc(1, sizeof **out);
    if (!*out) return -1;
    (*out)->model = model;
    return 0;
}

void tc_live_source_close(tc_live_source *s) { free(s); }
int tc_live_source_has_stream(const tc_live_source *s) { return 0; }
int tc_live_source_fds(tc_live_source *s, struct pollfd *fds, int max) { return 0; }
int tc_live_source_service(tc_live_source *s, int64_t now_ns, char *err, size_t errlen) { return 0; }
const char *tc_live_source_note(const tc_live_source *s) { return s->note; }

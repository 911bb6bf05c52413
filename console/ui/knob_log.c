/* knob_log.c -- the history of knob changes in the shown run, newest at
 * the bottom: requested / applied at step N / rejected with the error. */
#include <curses.h>
#include <stdio.h>
#include <string.h>

#include "ui/ui.h"

static void draw_knob_log(const tc_ui *ui, tc_rect r) {
    const tc_model *m = ui->shown;
    tc_title(ui, r, "knob changes in this run");
    if (!m || r.h < 2) return;
    if (m->n_knob_events == 0) {
        tc_put(r.y + 1, r.x, r.w, tc_attr(ui, TC_PAIR_DIM), "  none");
        return;
    }
    int rows = r.h - 1;
    int first = m->n_knob_events > rows ? m->n_knob_events - rows : 0;
    for (int i = first; i < m->n_knob_events; i++) {
        const tp_knob_event *e = &m->knob_events[i];
        char what[200] = "";
        size_t off = 0;
        for (int c = 0; c < e->n_changes && off < sizeof what - 1; c++) {
            const tp_knob_change *ch = &e->changes[c];
            int n;
            if (ch->old_value[0])
                n = snprintf(what + off, sizeof what - off, "%s%s %s->%s", c ? ", " : "", ch->name,
                             ch->old_value, ch->value);
            else
                n = snprintf(what + off, sizeof what - off, "%s%s=%s", c ? ", " : "", ch->name, ch->value);
            if (n < 0) break;
            off += (size_t)n;
        }
        if (off >= sizeof what) off = sizeof what - 1;
        int y = r.y + 1 + (i - first);
        const char *origin = e->origin[0] ? e->origin : "?";
        switch (e->status) {
        case TP_KNOB_APPLIED:
            tc_put(y, r.x, r.w, tc_attr(ui, TC_PAIR_GOOD), "  applied at step %-4d v%-3u %s (%s)",
                   e->effective_step, e->config_version, what, origin);
            break;
        case TP_KNOB_REQUESTED:
            tc_put(y, r.x, r.w, A_NORMAL, "  requested for step %-4d %s (%s)", e->effective_step, what, origin);
            break;
        case TP_KNOB_REJECTED:
            tc_put(y, r.x, r.w, tc_attr(ui, TC_PAIR_BAD), "  rejected %s (%s): %s", what, origin, e->error);
            break;
        }
    }
}

const tc_panel tc_panel_knob_log = {"knob_log", draw_knob_log};

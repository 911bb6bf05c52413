/* reasons.c -- fallback reasons of the current (newest) step and of the
 * run, most frequent first. Names come from the run header's reason table
 * (the agent's), else from the local list (SPEC 6). */
#include <curses.h>
#include <stdio.h>

#include "ui/ui.h"

static const char *reason_name(const tc_model *m, int r) {
    if (m->have_header && r < m->header.n_reasons && m->header.reasons[r][0]) return m->header.reasons[r];
    return tk_reason_name((tk_reason)r);
}

static void draw_reasons(const tc_ui *ui, tc_rect r) {
    const tc_model *m = ui->shown;
    const tp_step *last = m ? tc_model_last_step(m) : NULL;
    char t[96];
    snprintf(t, sizeof t, "fallback reasons: step %s and run", last ? "" : "n/a");
    if (last) snprintf(t, sizeof t, "fallback reasons: step %d and run", last->step);
    tc_title(ui, r, t);
    if (!m || r.h < 2) return;
    int64_t run[TK_REASON_COUNT];
    tc_model_run_reasons(m, run);
    int order[TK_REASON_COUNT], n = 0;
    for (int i = 1; i < TK_REASON_COUNT; i++)
        if (run[i] > 0) order[n++] = i;
    for (int i = 1; i < n; i++) /* most frequent first (insertion sort, n <= 16) */
        for (int j = i; j > 0 && run[order[j]] > run[order[j - 1]]; j--) {
            int tmp = order[j];
            order[j] = order[j - 1];
            order[j - 1] = tmp;
        }
    if (n == 0) {
        tc_put(r.y + 1, r.x, r.w, tc_attr(ui, TC_PAIR_GOOD), "  no fallbacks in this run%s",
               m->n_steps ? "" : " (no steps yet)");
        return;
    }
    /* two entries per row when wide enough */
    int per_row = r.w >= 100 ? 2 : 1;
    int col_w = r.w / per_row;
    int shown = (r.h - 1) * per_row;
    for (int i = 0; i < n && i < shown; i++) {
        int y = r.y + 1 + i / per_row, x = r.x + (i % per_row) * col_w;
        int64_t step_n = last ? last->reason_counts[order[i]] : 0;
        tc_put(y, x, col_w, step_n ? tc_attr(ui, TC_PAIR_WARN) : (int)A_NORMAL, "  %-26s step %6lld  run %8lld",
               reason_name(m, order[i]), (long long)step_n, (long long)run[order[i]]);
    }
    if (n > shown)
        tc_put(r.y + r.h - 1, r.x + r.w - 12, 12, tc_attr(ui, TC_PAIR_DIM), "(+%d more)", n - shown);
}

const tc_panel tc_panel_reasons = {"reasons", draw_reasons};

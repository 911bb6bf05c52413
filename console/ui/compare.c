/* compare.c -- two runs side by side: which knobs of their initial configs
 * differ, then each curve of both runs on one shared scale (A above B). */
#include <curses.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "ui/ui.h"

static void run_line(const tc_ui *ui, int y, int x, int w, char tag, const tc_model *m) {
    char mode[24], q[24];
    int rep;
    double worst = tc_model_worst_quality(m, &rep);
    tc_put(y, x, w, A_BOLD, " %c: %s  %s  mode %s  steps %d  worst_q %s  fallbacks %lld  %s", tag, m->run_id,
           m->have_header ? m->header.model_name : "n/a", tc_model_knob_value(m, "mode", mode, sizeof mode),
           m->n_steps, tc_fmt_num(worst, rep, 3, q, sizeof q), (long long)tc_model_run_fallbacks(m),
           m->stored_status[0] ? m->stored_status : tc_conn_state_name(m->conn));
}

static void draw_compare(const tc_ui *ui, tc_rect r) {
    const tc_model *a = ui->cmp[0], *b = ui->cmp[1];
    tc_title(ui, r, "compare two runs   F5 back to the runs list");
    if (!a || !b) {
        tc_put(r.y + 1, r.x, r.w, tc_attr(ui, TC_PAIR_DIM),
               "  pick two runs in the history browser (F5): c on the first, c on the second");
        return;
    }
    if (r.h < 8) return;
    run_line(ui, r.y + 1, r.x, r.w, 'A', a);
    run_line(ui, r.y + 2, r.x, r.w, 'B', b);

    /* config diff over the initial configs (headers) */
    int curves_h = 1 + 2 * TC_SPARK_COUNT;
    int diff_h = r.h - 3 - curves_h;
    if (diff_h < 2) {
        diff_h = 2;
        curves_h = r.h - 3 - diff_h;
    }
    int y = r.y + 3;
    tc_put(y, r.x, r.w, tc_attr(ui, TC_PAIR_TITLE), " initial config: knobs that differ  (A | B)");
    int lines = 0, differ = 0;
    if (a->have_header && b->have_header) {
        for (int i = 0; i < tk_knob_count(); i++) {
            const tk_knob *k = tk_knob_at(i);
            char va[64], vb[64];
            tk_config_format(&a->header.initial, k, va, sizeof va);
            tk_config_format(&b->header.initial, k, vb, sizeof vb);
            if (!strcmp(va, vb)) continue;
            differ++;
            if (lines < diff_h - 1) {
                int half = (r.w - 2) / 2;
                tc_put(y + 1 + lines, r.x, half, tc_attr(ui, TC_PAIR_WARN), "  %-26s %s", k->name, va);
                tc_put(y + 1 + lines, r.x + half, r.w - half, tc_attr(ui, TC_PAIR_WARN), "| %s", vb);
                lines++;
            }
        }
        if (differ == 0) tc_put(y + 1, r.x, r.w, A_NORMAL, "  identical initial configs");
        else if (differ > lines)
            tc_put(y + diff_h - 1, r.x, r.w, tc_attr(ui, TC_PAIR_DIM), "  ... %d more differ", differ - lines);
    } else {
        tc_put(y + 1, r.x, r.w, tc_attr(ui, TC_PAIR_DIM), "  n/a (a run has no stored header)");
    }

    y = r.y + 3 + diff_h;
    tc_put(y, r.x, r.w, tc_attr(ui, TC_PAIR_TITLE), " curves: A above B, one scale per figure");
    int w = r.w - 2;
    int n = w - 22 > 0 ? w - 22 : 1;
    for (int k = 0; k < TC_SPARK_COUNT && 1 + 2 * k + 1 < curves_h; k++) {
        double lo1, hi1, lo2, hi2;
        tc_spark_range(a, k, n, &lo1, &hi1);
        tc_spark_range(b, k, n, &lo2, &hi2);
        double lo = fmin(lo1, lo2), hi = fmax(hi1, hi2);
        tc_put(y + 1 + 2 * k, r.x, 2, A_BOLD, "A");
        tc_spark_row(ui, a, k, y + 1 + 2 * k, r.x + 2, w, 1, lo, hi);
        tc_put(y + 2 + 2 * k, r.x, 2, A_BOLD, "B");
        tc_spark_row(ui, b, k, y + 2 + 2 * k, r.x + 2, w, 1, lo, hi);
    }
}

const tc_panel tc_panel_compare = {"compare", draw_compare};

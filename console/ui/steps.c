/* steps.c -- the step table: one row per step (sigma, calls, fallbacks,
 * worst quality, den min, q.k p99, attention time, window and config
 * version in force). Follows the newest step unless scrolled (ui->step_scroll).
 * A row whose window or config version differs from the step before is
 * bold, so a knob change is visible where it took effect. */
#include <curses.h>
#include <math.h>
#include <stdio.h>

#include "ui/ui.h"

static void draw_steps(const tc_ui *ui, tc_rect r) {
    const tc_model *m = ui->shown;
    char t[96];
    snprintf(t, sizeof t, "steps%s", ui->step_scroll ? "  (scrolled: End follows)" : "");
    tc_title(ui, r, t);
    if (r.h < 3) return;
    tc_put(r.y + 1, r.x, r.w, A_BOLD, "%5s %8s %6s %5s %9s %10s %8s %8s %5s %4s", "step", "sigma",
           "calls", "fb", "worst_q", "den_min", "qk_p99", "attn_ms", "win", "cfg");
    int rows = r.h - 2;
    if (!m || m->n_steps == 0) {
        tc_put(r.y + 2, r.x, r.w, tc_attr(ui, TC_PAIR_DIM), "  no steps yet");
        return;
    }
    int scroll = ui->step_scroll;
    if (scroll > m->n_steps - rows) scroll = m->n_steps - rows;
    if (scroll < 0) scroll = 0;
    int last = m->n_steps - 1 - scroll;
    int first = last - rows + 1;
    if (first < 0) first = 0;
    for (int i = first; i <= last; i++) {
        const tp_step *s = &m->steps[i];
        const tp_step *prev = i > 0 ? &m->steps[i - 1] : NULL;
        char sg[16], q[16], dm[16], qk[16], at[16], win[16];
        int hq = (s->have & TP_HAVE_QUALITY) != 0, hd = (s->have & TP_HAVE_DENOMS) != 0;
        int hk = (s->have & TP_HAVE_QK) != 0;
        int ht = (s->have & TP_HAVE_TIME) != 0 || !isnan(s->attn_ms); /* no bit of its own at step level */
        if (s->window < 0)
            snprintf(win, sizeof win, "n/a");
        else if (s->window == 0)
            snprintf(win, sizeof win, "full");
        else
            snprintf(win, sizeof win, "%d", s->window);
        int attr = A_NORMAL;
        if (s->n_fallback > 0) attr = tc_attr(ui, TC_PAIR_WARN);
        if ((hq && !isfinite(s->quality_raw_max)) || (hd && (!isfinite(s->den_min) || s->den_nonfinite)))
            attr = tc_attr(ui, TC_PAIR_BAD);
        if (prev && (prev->window != s->window || prev->config_version != s->config_version))
            attr |= A_BOLD;
        tc_put(r.y + 2 + (i - first), r.x, r.w, attr, "%5d %8s %6d %5d %9s %10s %8s %8s %5s %4u",
               s->step, tc_fmt_num(s->sigma, 1, 4, sg, sizeof sg), s->calls, s->n_fallback,
               tc_fmt_num(tc_step_worst_quality(s), hq, 3, q, sizeof q),
               tc_fmt_num(s->den_min, hd, 3, dm, sizeof dm), tc_fmt_num(s->qk_p99, hk, 3, qk, sizeof qk),
               tc_fmt_num(s->attn_ms, ht, 4, at, sizeof at), win, s->config_version);
    }
}

const tc_panel tc_panel_steps = {"steps", draw_steps};

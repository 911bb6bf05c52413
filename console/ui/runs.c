/* runs.c -- the history browser's runs list (date, model, mode, steps,
 * worst quality, fallbacks, status), newest first. */
#include <curses.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "ui/ui.h"

static void draw_runs(const tc_ui *ui, tc_rect r) {
    const tc_history *h = ui->hist;
    char t[600];
    snprintf(t, sizeof t, "runs in %s   Enter open  c compare (twice)  r reload", h ? h->db_path : "(no database)");
    tc_title(ui, r, t);
    if (r.h < 3) return;
    /* the run id column takes what the terminal has beyond 80 columns */
    int run_w = 16 + (r.w - 80);
    if (run_w > TP_RUN_ID_LEN) run_w = TP_RUN_ID_LEN;
    if (run_w < 8) run_w = 8;
    tc_put(r.y + 1, r.x, r.w, A_BOLD, " %-11s %-*s %-10s %-6s %6s %8s %5s %s", "started", run_w, "run", "model",
           "mode", "steps", "worst_q", "fallb", "status");
    if (!h || h->n == 0) {
        tc_put(r.y + 2, r.x, r.w, tc_attr(ui, TC_PAIR_DIM), "  no runs recorded%s", h ? "" : " (no database open)");
        return;
    }
    int rows = r.h - 2;
    int sel = ui->run_sel < 0 ? 0 : ui->run_sel >= h->n ? h->n - 1 : ui->run_sel;
    int top = sel - rows / 2;
    if (top > h->n - rows) top = h->n - rows;
    if (top < 0) top = 0;
    for (int i = top; i < h->n && i < top + rows; i++) {
        const tc_run_summary *s = &h->runs[i];
        char date[32] = "n/a", steps[24], q[24];
        if (s->started_ns > 0) {
            time_t tt = (time_t)(s->started_ns / 1000000000LL);
            struct tm tmv;
            if (localtime_r(&tt, &tmv)) strftime(date, sizeof date, "%m-%d %H:%M", &tmv);
        }
        if (s->total_steps > 0)
            snprintf(steps, sizeof steps, "%d/%d", s->steps_done, s->total_steps);
        else
            snprintf(steps, sizeof steps, "%d", s->steps_done);
        int attr = A_NORMAL;
        if (i == sel)
            attr = tc_attr(ui, TC_PAIR_SEL);
        else if (!strcmp(s->status, "failed") || !strcmp(s->status, "lost"))
            attr = tc_attr(ui, TC_PAIR_WARN);
        tc_put(r.y + 2 + (i - top), r.x, r.w, attr, "%c%-11s %-*.*s %-10.10s %-6.6s %6s %8s %5lld %s",
               i == ui->run_mark ? '*' : ' ', date, run_w, run_w, s->run_id, s->model,
               s->mode[0] ? s->mode : "n/a", steps, tc_fmt_num(s->worst_quality, s->have_quality, 3, q, sizeof q),
               (long long)s->fallbacks, s->status[0] ? s->status : "n/a");
    }
}

const tc_panel tc_panel_runs = {"runs", draw_runs};

/* header.c -- the header panel: run, model and shape, mode, step k/N with
 * a progress bar, sigma, elapsed and ETA, connection state, message rate,
 * drops and gaps. Three rows. */
#include <curses.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "ui/ui.h"

static const char *mode_name(const tc_model *m, char *buf, size_t len) {
    return tc_model_knob_value(m, "mode", buf, len);
}

static void draw_header(const tc_ui *ui, tc_rect r) {
    const tc_model *m = ui->shown;
    char a[64], b[64], c[64], d[64];
    int title = tc_attr(ui, TC_PAIR_TITLE);
    if (!m) {
        tc_put(r.y, r.x, r.w, title, " taylorscope  (no run)");
        return;
    }
    /* row 1: run, model, shape, mode, backend */
    if (m->have_header) {
        const tp_header *h = &m->header;
        tc_put(r.y, r.x, r.w, title, " run %s  %s %dx%d %d+%d blk %d+%dx%d tok  mode %s  %s  %s",
               m->run_id, h->model_name[0] ? h->model_name : h->model.name, h->model.heads,
               h->model.head_dim, h->model.n_double, h->model.n_single, h->model.text_tokens,
               h->model.grid_h, h->model.grid_w, mode_name(m, a, sizeof a), h->backend, h->sampler);
    } else {
        tc_put(r.y, r.x, r.w, title, " run %s  (waiting for the run header)",
               m->run_id[0] ? m->run_id : "n/a");
    }
    if (r.h < 2) return;

    /* row 2: step k/N, progress bar, sigma, elapsed, ETA */
    const tp_step *last = tc_model_last_step(m);
    int total = tc_model_total_steps(m);
    int done = last ? last->step + 1 : 0;
    /* steps done; a heartbeat names the step in progress, so hb_step are done */
    if (m->hb_step > done && m->conn != TC_CONN_HISTORY) done = m->hb_step;
    double elapsed_s = NAN, eta_s = NAN;
    if (m->conn == TC_CONN_HISTORY) {
        if (m->stored_started_ns && m->stored_ended_ns > m->stored_started_ns)
            elapsed_s = (double)(m->stored_ended_ns - m->stored_started_ns) / 1e9;
    } else if (m->first_msg_ns) {
        int64_t start = m->have_header && m->header.started_ns ? m->header.started_ns : m->first_msg_ns;
        int64_t end = m->ended ? m->last_msg_ns : ui->now_ns;
        /* started_ns is the sender's wall clock; use it only when sane */
        if (end - start < 0 || end - start > 86400LL * 1000000000LL) start = m->first_msg_ns;
        elapsed_s = (double)(end - start) / 1e9;
        if (done > 0 && total > done && !m->ended) eta_s = elapsed_s / done * (total - done);
        if (m->ended) eta_s = 0;
    }
    char stepbuf[32];
    if (total > 0)
        snprintf(stepbuf, sizeof stepbuf, "step %d/%d", done, total);
    else if (done > 0)
        snprintf(stepbuf, sizeof stepbuf, "step %d/n/a", done);
    else
        snprintf(stepbuf, sizeof stepbuf, "step n/a");
    int x = r.x;
    tc_put(r.y + 1, x, 16, A_BOLD, " %s", stepbuf);
    x += 16;
    int bar_w = r.w - 16 - 46;
    if (bar_w > 40) bar_w = 40;
    if (bar_w >= 6) {
        int fill = total > 0 ? (int)((double)done / total * (bar_w - 2) + 0.5) : 0;
        if (fill > bar_w - 2) fill = bar_w - 2;
        mvaddch(r.y + 1, x, '[');
        attrset(tc_attr(ui, TC_PAIR_GOOD) | A_BOLD);
        for (int i = 0; i < bar_w - 2; i++) mvaddch(r.y + 1, x + 1 + i, i < fill ? '#' : ' ');
        attrset(A_NORMAL);
        if (!ui->colour)
            for (int i = fill; i < bar_w - 2; i++) mvaddch(r.y + 1, x + 1 + i, '.');
        mvaddch(r.y + 1, x + bar_w - 1, ']');
        x += bar_w + 1;
    }
    tc_put(r.y + 1, x, r.x + r.w - x, A_NORMAL, "sigma %s  elapsed %s  ETA %s",
           last ? tc_fmt_num(last->sigma, 1, 4, a, sizeof a) : "n/a",
           tc_fmt_duration(elapsed_s, b, sizeof b), tc_fmt_duration(eta_s, c, sizeof c));
    if (r.h < 3) return;

    /* row 3: connection, rate, drops, gaps, config version */
    int conn_pair = m->conn == TC_CONN_LIVE      ? TC_PAIR_GOOD
                    : m->conn == TC_CONN_STALE   ? TC_PAIR_BAD
                    : m->conn == TC_CONN_WAITING ? TC_PAIR_WARN
                                                 : TC_PAIR_DIM;
    const char *st = tc_conn_state_name(m->conn);
    char endbuf[80] = "";
    if (m->ended) snprintf(endbuf, sizeof endbuf, " (%s)", m->end.status);
    int cw = (int)strlen(st) + (int)strlen(endbuf) + 2;
    tc_put(r.y + 2, r.x, cw, tc_attr(ui, conn_pair) | A_BOLD, " %s%s", st, endbuf);
    uint64_t open_gaps = m->missing - m->recovered - m->lost;
    if (m->recovered + m->lost > m->missing) open_gaps = 0;
    int gap_pair = (m->lost || m->dropped) ? TC_PAIR_BAD : open_gaps ? TC_PAIR_WARN : TC_PAIR_GOOD;
    if (m->conn == TC_CONN_HISTORY) {
        tc_put(r.y + 2, r.x + cw, r.w - cw, A_NORMAL, " status %s  steps %d  knob changes %d  v%u",
               m->stored_status[0] ? m->stored_status : "n/a", m->n_steps, m->n_knob_events,
               m->config_version);
        return;
    }
    char gapbuf[96];
    int n_gaps = 0;
    for (int i = 0; i < m->n_gaps; i++) n_gaps += !m->gaps[i].backfill;
    snprintf(gapbuf, sizeof gapbuf, "drops %llu  gaps %d missing %llu lost %llu",
             (unsigned long long)m->dropped, n_gaps, (unsigned long long)open_gaps,
             (unsigned long long)m->lost);
    int gw = (int)strlen(gapbuf) + 1;
    if (r.w - cw - gw < 24) gw = 0; /* too narrow: the rate first */
    snprintf(d, sizeof d, "%.1f msg/s", m->msg_rate_hz);
    tc_put(r.y + 2, r.x + cw, r.w - cw - gw - 2, A_NORMAL, " %s  cfg v%u  %s", d, m->config_version, m->endpoint);
    if (gw) tc_put(r.y + 2, r.x + r.w - gw, gw, tc_attr(ui, gap_pair), "%s ", gapbuf);
}

const tc_panel tc_panel_header = {"header", draw_header};

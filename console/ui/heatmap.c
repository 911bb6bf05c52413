/* heatmap.c -- the layer x step heat map of one metric (cycled with `m`):
 * layers across (one column each, or several per column on a narrow
 * screen, which then shows the worst of them), steps down with the newest
 * at the bottom, and a legend. Log metrics use log10 (symlog for den_min).
 * Not reported: blank; a reported NaN/Inf: '!'. */
#include <curses.h>
#include <math.h>
#include <stdio.h>

#include "ui/ui.h"

/* "Worse" direction of a metric: den_min and window_mass are bad when low. */
static int low_is_bad(tc_metric m) { return m == TC_METRIC_DEN_MIN || m == TC_METRIC_WINDOW_MASS; }

static double plotted(tc_metric m, double v) {
    if (m == TC_METRIC_DEN_MIN) return tc_symlog(v);
    if (tc_metric_log_scale(m)) return v > 0 ? log10(v) : (v == 0 ? -12 : v);
    return v;
}

/* The value of a cell (a group of layers): the worst reported one.
 * Returns 0 not reported, 1 finite, 2 non-finite. */
static int cell_value(tc_metric metric, const tp_step *s, int l0, int l1, double *out) {
    int state = 0;
    double best = NAN;
    for (int i = 0; i < s->n_layers; i++) {
        const tp_layer_row *row = &s->layers[i];
        if (row->layer < l0 || row->layer > l1) continue;
        double v;
        if (!tc_metric_value(metric, row, &v)) continue;
        if (!isfinite(v)) {
            *out = v;
            return 2;
        }
        if (state == 0 || (low_is_bad(metric) ? v < best : v > best)) best = v;
        state = 1;
    }
    *out = best;
    return state;
}

static void draw_heatmap(const tc_ui *ui, tc_rect r) {
    const tc_model *m = ui->shown;
    tc_metric metric = ui->heat_metric;
    char t[128];
    snprintf(t, sizeof t, "heat map: %s per layer (x) and step (y)   [m] next metric", tc_metric_name(metric));
    tc_title(ui, r, t);
    if (r.h < 5 || r.w < 20) return;
    int layers = m ? tc_model_layers(m) : 0;
    if (!m || layers <= 0 || m->n_steps == 0) {
        tc_put(r.y + 2, r.x, r.w, tc_attr(ui, TC_PAIR_DIM), "  no per-layer rows yet (per_layer_records)");
        return;
    }
    const int label_w = 6;
    int avail = r.w - label_w - 1;
    int per_col = (layers + avail - 1) / avail; /* layers per column */
    int cols = (layers + per_col - 1) / per_col;
    int cell_w = per_col == 1 ? avail / cols : 1;
    if (cell_w > 3) cell_w = 3;
    if (cell_w < 1) cell_w = 1;

    int rows = r.h - 3; /* title, legend, ticks */
    int scroll = ui->heat_scroll;
    if (scroll > m->n_steps - rows) scroll = m->n_steps - rows;
    if (scroll < 0) scroll = 0;
    int last = m->n_steps - 1 - scroll, first = last - rows + 1;
    if (first < 0) first = 0;

    /* scale over the shown cells */
    double lo = INFINITY, hi = -INFINITY, vmin = INFINITY, vmax = -INFINITY;
    for (int i = first; i <= last; i++)
        for (int c = 0; c < cols; c++) {
            double v;
            if (cell_value(metric, &m->steps[i], c * per_col, c * per_col + per_col - 1, &v) == 1) {
                double p = plotted(metric, v);
                if (p < lo) lo = p;
                if (p > hi) hi = p;
                if (v < vmin) vmin = v;
                if (v > vmax) vmax = v;
            }
        }
    int levels = tc_heat_levels(ui);

    /* legend */
    char a[24], b[24];
    int have_range = lo <= hi;
    int ly = r.y + 1, lx = r.x;
    tc_put(ly, lx, 10, A_NORMAL, " low %s", "");
    lx += 5;
    for (int i = 0; i < levels; i++) tc_heat_cell(ui, ly, lx + i, i);
    lx += levels;
    tc_put(ly, lx, r.x + r.w - lx, A_NORMAL, " high  min %s max %s%s  blank=n/a !=nan/inf%s",
           tc_fmt_num(vmin, have_range, 3, a, sizeof a), tc_fmt_num(vmax, have_range, 3, b, sizeof b),
           metric == TC_METRIC_DEN_MIN ? " (symlog)" : tc_metric_log_scale(metric) ? " (log)" : "",
           per_col > 1 ? "  (worst of each column's layers)" : "");

    /* column ticks: layer numbers every 10 */
    int ty = r.y + 2;
    tc_put(ty, r.x, r.w, tc_attr(ui, TC_PAIR_DIM), " step");
    for (int c = 0; c < cols; c++) {
        int layer = c * per_col;
        if (layer % 10 == 0 || (per_col > 1 && c % 5 == 0)) {
            char lab[8];
            int n = snprintf(lab, sizeof lab, "%d", layer);
            int x = r.x + label_w + c * cell_w;
            if (x + n <= r.x + r.w) tc_put(ty, x, n, tc_attr(ui, TC_PAIR_DIM), "%s", lab);
        }
    }

    for (int i = first; i <= last; i++) {
        int y = r.y + 3 + (i - first);
        const tp_step *s = &m->steps[i];
        tc_put(y, r.x, label_w, A_NORMAL, "%5d ", s->step);
        for (int c = 0; c < cols; c++) {
            double v;
            int st = cell_value(metric, s, c * per_col, c * per_col + per_col - 1, &v);
            int x = r.x + label_w + c * cell_w;
            for (int k = 0; k < cell_w; k++) {
                if (st == 0) {
                    attrset(A_NORMAL);
                    mvaddch(y, x + k, ' ');
                } else if (st == 2) {
                    attrset(tc_attr(ui, TC_PAIR_BAD));
                    mvaddch(y, x + k, '!');
                    attrset(A_NORMAL);
                } else {
                    double p = plotted(metric, v);
                    int level = hi > lo ? (int)((p - lo) / (hi - lo) * (levels - 0.001)) : levels / 2;
                    tc_heat_cell(ui, y, x + k, level);
                }
            }
        }
    }
}

const tc_panel tc_panel_heatmap = {"heatmap", draw_heatmap};

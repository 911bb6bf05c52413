/* sparks.c -- curves across steps: quality_raw and quality_eff (mean
 * rel-L2, log10 scale), den_min (symmetric log, see tc_symlog), fallback
 * share and q.k p99. One row each, the newest step at the right; a step
 * that did not report the figure is blank, a reported NaN/Inf is '!'. */
#include <curses.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "ui/ui.h"

typedef enum {
    SP_QRAW = TC_SPARK_QUALITY_RAW,
    SP_QEFF = TC_SPARK_QUALITY_EFF,
    SP_DEN = TC_SPARK_DEN_MIN,
    SP_FB = TC_SPARK_FALLBACK_SHARE,
    SP_QK = TC_SPARK_QK_P99,
    SP_COUNT = TC_SPARK_COUNT
} spark_kind;

static const char *const spark_label[SP_COUNT] = {"quality_raw", "quality_eff", "den_min log",
                                                  "fallbacks", "qk_p99"};

/* The figure of one step for a curve; returns reported. *shown is the
 * plotted value (log scales applied), *raw the figure itself. */
static int spark_value(spark_kind k, const tp_step *s, double *raw, double *shown) {
    int rep = 0;
    double v = NAN;
    switch (k) {
    case SP_QRAW: rep = (s->have & TP_HAVE_QUALITY) != 0; v = s->quality_raw_mean; break;
    case SP_QEFF: rep = (s->have & TP_HAVE_QUALITY) != 0; v = s->quality_eff_mean; break;
    case SP_DEN: rep = (s->have & TP_HAVE_DENOMS) != 0; v = s->den_min; break;
    case SP_FB: rep = s->calls > 0; v = tc_step_fallback_share(s); break;
    case SP_QK: rep = (s->have & TP_HAVE_QK) != 0; v = s->qk_p99; break;
    case SP_COUNT: break;
    }
    *raw = v;
    if (k == SP_QRAW || k == SP_QEFF)
        *shown = v > 0 ? log10(v) : (v == 0 ? -12 : v);
    else if (k == SP_DEN)
        *shown = tc_symlog(v);
    else
        *shown = v;
    return rep;
}

/* Range of the plotted values of a figure over a model's last `n` steps. */
void tc_spark_range(const tc_model *m, int kind, int n, double *lo, double *hi) {
    *lo = INFINITY;
    *hi = -INFINITY;
    int first = m->n_steps > n ? m->n_steps - n : 0;
    for (int i = first; i < m->n_steps; i++) {
        double raw, v;
        if (spark_value((spark_kind)kind, &m->steps[i], &raw, &v) && isfinite(v)) {
            if (v < *lo) *lo = v;
            if (v > *hi) *hi = v;
        }
    }
}

void tc_spark_row(const tc_ui *ui, const tc_model *m, int kind, int y, int x, int w, int fixed_scale,
                  double lo, double hi) {
    const int label_w = 12, value_w = 10;
    int sw = w - label_w - value_w;
    tc_put(y, x, label_w, A_BOLD, "%s", spark_label[kind]);
    if (sw < 4 || !m) return;
    int n = m->n_steps < sw ? m->n_steps : sw;
    int first = m->n_steps - n;
    double vals[512];
    unsigned char has[512];
    if (n > 512) {
        first += n - 512;
        n = 512;
    }
    double last_raw = NAN;
    int last_rep = 0;
    for (int i = 0; i < n; i++) {
        double raw;
        has[i] = (unsigned char)spark_value((spark_kind)kind, &m->steps[first + i], &raw, &vals[i]);
        last_raw = raw;
        last_rep = has[i];
    }
    if (!fixed_scale) tc_spark_range(m, kind, n, &lo, &hi);
    if (kind == SP_FB) { /* a share: always on [0, 1], so no fallbacks is the lowest bar */
        lo = 0;
        hi = 1;
    }
    if (!(lo <= hi)) lo = hi = 0;
    int pair = kind == SP_FB && last_rep && last_raw > 0 ? TC_PAIR_WARN : TC_PAIR_GOOD;
    tc_spark(ui, y, x + label_w, sw, vals, has, n, lo, hi, tc_attr(ui, pair));
    char buf[24];
    tc_put(y, x + label_w + sw, value_w, A_NORMAL, " %s",
           n ? tc_fmt_num(last_raw, last_rep, 3, buf, sizeof buf) : "n/a");
}

static void draw_sparks(const tc_ui *ui, tc_rect r) {
    tc_title(ui, r, "curves across steps (newest right; quality log10, den symlog)");
    for (int k = 0; k < SP_COUNT && 1 + k < r.h; k++)
        tc_spark_row(ui, ui->shown, k, r.y + 1 + k, r.x, r.w, 0, 0, 0);
}

const tc_panel tc_panel_sparks = {"sparks", draw_sparks};

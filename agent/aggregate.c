/*
 * aggregate.c -- per-call results folded into the step record and the
 * per-layer rows (SPEC 5):
 *
 *   counts       by path and by reason; probe-stage denominator fallbacks
 *   quality      mean / p50 / p95 over calls of each call's rel-L2 mean;
 *                max of the calls' rel-L2 max; min of cos_min
 *   denominators min of mins, max of maxes, mean weighted by count; sums
 *   q.k          max over calls of each call's p50 / p99 / max
 *   norms        mean over calls of the raw mean norms
 *   window mass  mean of means, min of mins (hybrid)
 *   window, w    the last hybrid call's (the schedule's value at this sigma)
 *
 * A figure is reported (its TP_HAVE_ bit set) when at least one call
 * measured it. Non-finite values propagate: a NaN in, a NaN out.
 */
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

double tai_min(double a, double b) {
    if (isnan(a) || isnan(b)) return NAN;
    return a < b ? a : b;
}
double tai_max(double a, double b) {
    if (isnan(a) || isnan(b)) return NAN;
    return a > b ? a : b;
}

static int cmp_nan_last(const void *pa, const void *pb) {
    double a = *(const double *)pa, b = *(const double *)pb;
    if (isnan(a)) return isnan(b) ? 0 : 1;
    if (isnan(b)) return -1;
    return (a > b) - (a < b);
}

double tai_quantile(double *v, int n, double q) {
    if (n <= 0) return NAN;
    qsort(v, (size_t)n, sizeof *v, cmp_nan_last);
    double pos = q * (n - 1);
    int i = (int)floor(pos);
    if (i >= n - 1) return v[n - 1];
    double f = pos - i;
    if (f == 0) return v[i];
    return v[i] + f * (v[i + 1] - v[i]);
}

int tai_agg_init(tai_agg *g, int n_layers) {
    memset(g, 0, sizeof *g);
    if (n_layers < 1) n_layers = 1;
    g->n_layers = n_layers;
    size_t n = (size_t)n_layers;
    g->rows = calloc(n, sizeof *g->rows);
    g->out_rows = calloc(n, sizeof *g->out_rows);
    g->row_used = calloc(n, sizeof *g->row_used);
    g->row_qraw_sum = calloc(n, sizeof(double));
    g->row_qeff_sum = calloc(n, sizeof(double));
    g->row_qn_sum = calloc(n, sizeof(double));
    g->row_kn_sum = calloc(n, sizeof(double));
    g->row_wm_sum = calloc(n, sizeof(double));
    g->row_q_calls = calloc(n, sizeof(int));
    g->row_qk_calls = calloc(n, sizeof(int));
    g->row_wm_calls = calloc(n, sizeof(int));
    g->cap_q = 4 * n_layers;
    g->q_raw = calloc((size_t)g->cap_q, sizeof(double));
    g->q_eff = calloc((size_t)g->cap_q, sizeof(double));
    if (!g->rows || !g->out_rows || !g->row_used || !g->row_qraw_sum || !g->row_qeff_sum ||
        !g->row_qn_sum || !g->row_kn_sum || !g->row_wm_sum || !g->row_q_calls ||
        !g->row_qk_calls || !g->row_wm_calls || !g->q_raw || !g->q_eff) {
        tai_agg_free(g);
        return -1;
    }
    return 0;
}

void tai_agg_free(tai_agg *g) {
    free(g->rows), free(g->out_rows), free(g->row_used);
    free(g->row_qraw_sum), free(g->row_qeff_sum), free(g->row_qn_sum), free(g->row_kn_sum);
    free(g->row_wm_sum), free(g->row_q_calls), free(g->row_qk_calls), free(g->row_wm_calls);
    free(g->q_raw), free(g->q_eff);
    memset(g, 0, sizeof *g);
}

void tai_agg_begin(tai_agg *g, int step, double sigma, uint32_t config_version) {
    tp_step *s = &g->step;
    memset(s, 0, sizeof *s);
    s->step = step;
    s->sigma = sigma;
    s->config_version = config_version;
    s->window = -1;
    s->w = NAN;
    s->cos_min = s->den_min = s->window_mass_min = INFINITY;
    s->den_max = -INFINITY;
    s->qk_p50 = s->qk_p99 = s->qk_max = -INFINITY;
    s->quality_raw_max = s->quality_eff_max = -INFINITY;
    g->n_q = 0;
    g->den_sum = 0, g->den_n = 0;
    g->qn_sum = g->kn_sum = 0, g->qk_calls = 0;
    g->wm_sum = 0, g->wm_calls = 0;
    size_t n = (size_t)g->n_layers;
    memset(g->row_used, 0, n * sizeof(int));
    memset(g->row_qraw_sum, 0, n * sizeof(double));
    memset(g->row_qeff_sum, 0, n * sizeof(double));
    memset(g->row_qn_sum, 0, n * sizeof(double));
    memset(g->row_kn_sum, 0, n * sizeof(double));
    memset(g->row_wm_sum, 0, n * sizeof(double));
    memset(g->row_q_calls, 0, n * sizeof(int));
    memset(g->row_qk_calls, 0, n * sizeof(int));
    memset(g->row_wm_calls, 0, n * sizeof(int));
}

static tp_layer_row *row_for(tai_agg *g, int layer) {
    if (layer < 0 || layer >= g->n_layers) return NULL;
    tp_layer_row *r = &g->rows[layer];
    if (!g->row_used[layer]) {
        g->row_used[layer] = 1;
        memset(r, 0, sizeof *r);
        r->layer = layer;
        r->reason = TK_REASON_NONE;
        r->window = -1;
        r->w = NAN;
        r->quality_raw_max = r->quality_eff_max = -INFINITY;
        r->cos_min = r->den_min = INFINITY;
        r->qk_p99 = r->qk_max = -INFINITY;
        r->attn_ms = 0;
        r->have = TP_HAVE_TIME;
    }
    return r;
}

static void push_q(tai_agg *g, double raw, double eff) {
    if (g->n_q == g->cap_q) {
        int cap = g->cap_q * 2;
        double *a = realloc(g->q_raw, (size_t)cap * sizeof *a);
        if (!a) return;
        g->q_raw = a;
        double *b = realloc(g->q_eff, (size_t)cap * sizeof *b);
        if (!b) return;
        g->q_eff = b;
        g->cap_q = cap;
    }
    g->q_raw[g->n_q] = raw;
    g->q_eff[g->n_q] = eff;
    g->n_q++;
}

void tai_agg_add(tai_agg *g, int layer, const tk_result *res, double attn_ms) {
    tp_step *s = &g->step;
    tp_layer_row *r = row_for(g, layer);
    s->calls++;
    s->attn_ms += attn_ms;
    int fell_back = res->reason != TK_REASON_NONE;
    if (fell_back) {
        s->n_fallback++;
        if (res->reason > 0 && res->reason < TK_REASON_COUNT) s->reason_counts[res->reason]++;
        if (res->reason == TK_REASON_DENOMINATOR_TOO_SMALL && res->stage == TK_STAGE_PROBE)
            s->probe_fallbacks++;
    } else if (res->path == TK_PATH_EXACT) {
        s->n_exact++;
    } else if (res->path == TK_PATH_TAYLOR) {
        s->n_taylor++;
    } else if (res->path == TK_PATH_HYBRID) {
        s->n_hybrid++;
    }
    if (res->path == TK_PATH_HYBRID && !fell_back) {
        s->window = res->window;
        s->w = res->w;
    }
    if (r) {
        r->calls++;
        r->fallbacks += fell_back;
        r->path = fell_back ? TK_PATH_FALLBACK : res->path;
        if (fell_back) r->reason = res->reason;
        r->attn_ms += attn_ms;
        if (!fell_back) {
            r->R = res->R;
            r->window = res->window;
            r->w = res->w;
        }
    }
    if (fell_back) return;
    const tk_stats *st = &res->stats;
    if ((st->have & TK_HAVE_QUALITY) && st->quality_raw.n > 0) {
        s->have |= TP_HAVE_QUALITY;
        push_q(g, st->quality_raw.rel_l2_mean, st->quality_eff.rel_l2_mean);
        s->quality_raw_max = tai_max(s->quality_raw_max, st->quality_raw.rel_l2_max);
        s->quality_eff_max = tai_max(s->quality_eff_max, st->quality_eff.rel_l2_max);
        s->cos_min = tai_min(s->cos_min, st->quality_raw.cos_min);
        if (r) {
            r->have |= TP_HAVE_QUALITY;
            g->row_qraw_sum[layer] += st->quality_raw.rel_l2_mean;
            g->row_qeff_sum[layer] += st->quality_eff.rel_l2_mean;
            g->row_q_calls[layer]++;
            r->quality_raw_max = tai_max(r->quality_raw_max, st->quality_raw.rel_l2_max);
            r->quality_eff_max = tai_max(r->quality_eff_max, st->quality_eff.rel_l2_max);
            r->cos_min = tai_min(r->cos_min, st->quality_raw.cos_min);
        }
    }
    if ((st->have & TK_HAVE_DENOMS) && st->den.n > 0) {
        s->have |= TP_HAVE_DENOMS;
        s->den_min = tai_min(s->den_min, st->den.min);
        s->den_max = tai_max(s->den_max, st->den.max);
        g->den_sum += st->den.mean * (double)st->den.n;
        g->den_n += st->den.n;
        s->den_le_eps += st->den.n_le_eps;
        s->den_nonfinite += st->den.n_nonfinite;
        if (r) {
            r->have |= TP_HAVE_DENOMS;
            r->den_min = tai_min(r->den_min, st->den.min);
            r->den_le_eps += st->den.n_le_eps;
            r->den_nonfinite += st->den.n_nonfinite;
        }
    }
    if ((st->have & TK_HAVE_QK) && st->qk.n > 0) {
        s->have |= TP_HAVE_QK;
        s->qk_p50 = tai_max(s->qk_p50, st->qk.p50);
        s->qk_p99 = tai_max(s->qk_p99, st->qk.p99);
        s->qk_max = tai_max(s->qk_max, st->qk.max);
        if (r) {
            r->have |= TP_HAVE_QK;
            r->qk_p99 = tai_max(r->qk_p99, st->qk.p99);
            r->qk_max = tai_max(r->qk_max, st->qk.max);
        }
    }
    if (st->have & TK_HAVE_NORMS) {
        s->have |= TP_HAVE_QK;
        g->qn_sum += st->q_norm_raw.mean;
        g->kn_sum += st->k_norm_raw.mean;
        g->qk_calls++;
        if (r) {
            r->have |= TP_HAVE_QK;
            g->row_qn_sum[layer] += st->q_norm_raw.mean;
            g->row_kn_sum[layer] += st->k_norm_raw.mean;
            g->row_qk_calls[layer]++;
        }
    }
    if ((st->have & TK_HAVE_WINDOW_MASS) && st->window_mass.n > 0) {
        s->have |= TP_HAVE_WINDOW;
        g->wm_sum += st->window_mass.mean;
        g->wm_calls++;
        s->window_mass_min = tai_min(s->window_mass_min, st->window_mass.min);
        if (r) {
            r->have |= TP_HAVE_WINDOW;
            g->row_wm_sum[layer] += st->window_mass.mean;
            g->row_wm_calls[layer]++;
        }
    }
}

void tai_agg_add_host_ms(tai_agg *g, double ms) { g->step.attn_ms += ms; }

static double mean_of(double sum, int n) { return n > 0 ? sum / n : NAN; }

const tp_step *tai_agg_finish(tai_agg *g, double wall_ms, int per_layer) {
    tp_step *s = &g->step;
    s->wall_ms = wall_ms;
    if (s->have & TP_HAVE_QUALITY) {
        double sum_raw = 0, sum_eff = 0;
        for (int i = 0; i < g->n_q; i++) sum_raw += g->q_raw[i], sum_eff += g->q_eff[i];
        s->quality_raw_mean = mean_of(sum_raw, g->n_q);
        s->quality_eff_mean = mean_of(sum_eff, g->n_q);
        s->quality_raw_p50 = tai_quantile(g->q_raw, g->n_q, 0.5);
        s->quality_raw_p95 = tai_quantile(g->q_raw, g->n_q, 0.95);
        s->quality_eff_p50 = tai_quantile(g->q_eff, g->n_q, 0.5);
        s->quality_eff_p95 = tai_quantile(g->q_eff, g->n_q, 0.95);
    }
    if (s->have & TP_HAVE_DENOMS) s->den_mean = g->den_n > 0 ? g->den_sum / (double)g->den_n : NAN;
    if (s->have & TP_HAVE_QK) {
        s->q_norm_mean = mean_of(g->qn_sum, g->qk_calls);
        s->k_norm_mean = mean_of(g->kn_sum, g->qk_calls);
    }
    if (s->have & TP_HAVE_WINDOW) s->window_mass_mean = mean_of(g->wm_sum, g->wm_calls);
    /* norms reported without a q.k sample: the q.k figures stay n/a */
    if (s->qk_max == -INFINITY) s->qk_p50 = s->qk_p99 = s->qk_max = NAN;
    s->n_layers = 0;
    s->layers = g->out_rows;
    if (per_layer) {
        for (int l = 0; l < g->n_layers; l++) {
            if (!g->row_used[l]) continue;
            tp_layer_row *r = &g->rows[l];
            r->quality_raw_mean = mean_of(g->row_qraw_sum[l], g->row_q_calls[l]);
            r->quality_eff_mean = mean_of(g->row_qeff_sum[l], g->row_q_calls[l]);
            r->q_norm_mean = mean_of(g->row_qn_sum[l], g->row_qk_calls[l]);
            r->k_norm_mean = mean_of(g->row_kn_sum[l], g->row_qk_calls[l]);
            r->window_mass_mean = mean_of(g->row_wm_sum[l], g->row_wm_calls[l]);
            if (r->qk_max == -INFINITY) r->qk_p99 = r->qk_max = NAN;
            g->out_rows[s->n_layers++] = *r;
        }
    }
    return s;
}

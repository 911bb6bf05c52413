/* synthetic.c -- a made-up run in a view model, for the draw benchmark
 * and the panel tests (never shown to a user as data). Deterministic. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ui/synthetic.h"

int tc_model_fill_synthetic(tc_model *m, int layers, int steps, char *err, size_t errlen) {
    tp_msg msg;
    memset(&msg, 0, sizeof msg);
    msg.type = TP_MSG_HEADER;
    msg.version = TP_PROTOCOL_VERSION;
    snprintf(msg.run_id, sizeof msg.run_id, "synthetic-%dx%d", layers, steps);
    tp_header *h = &msg.u.header;
    snprintf(h->model_name, sizeof h->model_name, "flux1");
    snprintf(h->model.name, sizeof h->model.name, "flux1");
    snprintf(h->backend, sizeof h->backend, "cpu");
    snprintf(h->sampler, sizeof h->sampler, "euler");
    h->model.heads = 24;
    h->model.head_dim = 128;
    h->model.n_double = layers < 19 ? layers : 19;
    h->model.n_single = layers - h->model.n_double;
    h->model.text_tokens = 512;
    h->model.grid_h = h->model.grid_w = 64;
    h->total_steps = steps;
    tk_config_defaults(&h->initial);
    h->current = h->initial;
    h->config_version = 1;
    h->last_step = -1;
    int64_t t0 = 1700000000LL * 1000000000LL;
    uint64_t seq = 1;
    msg.seq = seq++;
    if (tc_model_apply(m, &msg, t0, err, errlen) != 0) return -1;

    tp_layer_row *rows = calloc((size_t)layers, sizeof *rows);
    if (!rows) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (int s = 0; s < steps; s++) {
        memset(&msg, 0, sizeof msg);
        msg.type = TP_MSG_STEP;
        msg.version = TP_PROTOCOL_VERSION;
        snprintf(msg.run_id, sizeof msg.run_id, "synthetic-%dx%d", layers, steps);
        msg.seq = seq++;
        tp_step *st = &msg.u.step;
        st->step = s;
        st->sigma = 1.0 - (double)s / steps;
        st->wall_ms = 120 + s % 7;
        st->attn_ms = 80 + s % 5;
        st->config_version = s < steps / 2 ? 1 : 2;
        st->calls = layers;
        st->have = TP_HAVE_QUALITY | TP_HAVE_DENOMS | TP_HAVE_QK | TP_HAVE_TIME;
        st->window = s < steps / 2 ? 8 : 4;
        st->w = 1;
        st->den_min = INFINITY;
        st->quality_raw_max = 0;
        for (int l = 0; l < layers; l++) {
            tp_layer_row *r = &rows[l];
            memset(r, 0, sizeof *r);
            r->layer = l;
            r->calls = 1;
            r->have = st->have;
            r->quality_raw_mean = 1e-3 * (1 + l % 13) * (1 + st->sigma * 4);
            r->quality_raw_max = 2 * r->quality_raw_mean;
            r->quality_eff_mean = 0.5 * r->quality_raw_mean;
            r->quality_eff_max = r->quality_raw_max;
            r->den_min = ((l * 7 + s * 3) % 11 - 2) * 1e-3;
            r->qk_p99 = 2 + sin(l * 0.3 + s * 0.1);
            r->attn_ms = 1.5 + (l % 5) * 0.1;
            r->window = st->window;
            r->w = 1;
            if (r->den_min <= 0 && (l + s) % 9 == 0) {
                r->fallbacks = 1;
                r->reason = TK_REASON_DENOMINATOR_TOO_SMALL;
                st->reason_counts[TK_REASON_DENOMINATOR_TOO_SMALL]++;
                st->n_fallback++;
            } else {
                st->n_taylor++;
            }
            if (r->quality_raw_max > st->quality_raw_max) st->quality_raw_max = r->quality_raw_max;
            if (r->den_min < st->den_min) st->den_min = r->den_min;
            st->quality_raw_mean += r->quality_raw_mean / layers;
            st->quality_eff_mean += r->quality_eff_mean / layers;
            if (r->qk_p99 > st->qk_p99) st->qk_p99 = r->qk_p99;
        }
        st->n_layers = layers;
        st->layers = rows;
        if (tc_model_apply(m, &msg, t0 + (int64_t)(s + 1) * 130000000LL, err, errlen) != 0) {
            free(rows);
            return -1;
        }
    }
    free(rows);
    return 0;
}

/*
 * gates.c -- the agent's own gates, checked before a call reaches the
 * kernels (which then apply their limits: tk_check). The rules:
 *
 *   mode = exact                      -> disabled: approximation is off; the
 *                                        host answers with its exact attention
 *   mode = taylor, layer outside       -> skipped_by_layer
 *     [taylor_layer_start, taylor_layer_end]
 *   mode = hybrid, layer outside       -> skipped_by_layer
 *     [hybrid_layer_start, hybrid_layer_end]       (-1 = open on that side)
 *   taylor_sigma_max > 0, sigma > it  -> skipped_by_sigma
 *   a NULL tensor or a size <= 0      -> unsupported_shape
 *
 * Order: disabled, then layer, then sigma, then shape, so the reason names
 * the most deliberate decision (a configured gate) over a property of the data.
 */
#include "internal.h"

#include <stdio.h>

int tai_layer_in_range(int layer, int start, int end) {
    if (start >= 0 && layer < start) return 0;
    if (end >= 0 && layer > end) return 0;
    return 1;
}

tk_reason tai_gate(const tk_config *cfg, int layer, double sigma, const ta_call *call,
                   char *detail, size_t detail_len) {
    if (cfg->mode == TK_MODE_EXACT) {
        snprintf(detail, detail_len, "mode is exact");
        return TK_REASON_DISABLED;
    }
    int start = cfg->mode == TK_MODE_TAYLOR ? cfg->taylor_layer_start : cfg->hybrid_layer_start;
    int end = cfg->mode == TK_MODE_TAYLOR ? cfg->taylor_layer_end : cfg->hybrid_layer_end;
    if (!tai_layer_in_range(layer, start, end)) {
        snprintf(detail, detail_len, "layer %d is outside %s layers [%d, %d]", layer,
                 cfg->mode == TK_MODE_TAYLOR ? "taylor" : "hybrid", start, end);
        return TK_REASON_SKIPPED_BY_LAYER;
    }
    if (cfg->taylor_sigma_max > 0 && sigma > cfg->taylor_sigma_max) {
        snprintf(detail, detail_len, "sigma %g > taylor_sigma_max %g", sigma,
                 cfg->taylor_sigma_max);
        return TK_REASON_SKIPPED_BY_SIGMA;
    }
    if (!call->q || !call->k || !call->v || !call->o || call->B <= 0 || call->H <= 0 ||
        call->Nq <= 0 || call->Nk <= 0 || call->D <= 0 || call->Dv <= 0) {
        snprintf(detail, detail_len, "missing tensor or non-positive size (B=%d H=%d Nq=%d Nk=%d D=%d Dv=%d)",
                 call->B, call->H, call->Nq, call->Nk, call->D, call->Dv);
        return TK_REASON_UNSUPPORTED_SHAPE;
    }
    return TK_REASON_NONE;
}

/*
 * attention.c -- the reference backend's entry point: resolve the plan, run
 * the mode's family into an fp64 buffer, write o only when no fallback was
 * decided, then the stats (on the written f32 output, as every backend does).
 */
#include "ref.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

int tkref_attention(tk_context *ctx, const tk_call *call, const tk_config *cfg, tk_mode mode,
                    const tk_stats_request *stats_req, tk_result *res) {
    double t0 = now_ms();
    tki_plan plan;
    char err[160];
    if (tki_plan_make(ctx, call, cfg, mode, &plan, err, sizeof err) != TK_OK) {
        res->reason = TK_REASON_OUT_OF_MEMORY;
        snprintf(res->detail, sizeof res->detail, "%s", err);
        return TK_OK;
    }
    res->R = plan.R;
    res->window = mode == TK_MODE_HYBRID ? plan.win.radius : -1;
    res->w = mode == TK_MODE_HYBRID ? plan.w : 0;

    size_t n_out = (size_t)plan.B * plan.H * plan.Nq * plan.Dv;
    double *o64 = malloc(n_out * sizeof *o64);
    if (!o64) {
        res->reason = TK_REASON_OUT_OF_MEMORY;
        snprintf(res->detail, sizeof res->detail, "output workspace of %zu doubles", n_out);
        return TK_OK;
    }
    tki_den_acc den;
    tki_den_acc_init(&den);
    int rc = TK_OK;
    switch (mode) {
    case TK_MODE_EXACT: rc = tkref_exact(&plan, call, o64); break;
    case TK_MODE_TAYLOR: rc = tkref_taylor(&plan, call, o64, &den, res); break;
    case TK_MODE_HYBRID: rc = tkref_hybrid(&plan, call, o64, &den, res); break;
    }
    if (rc != TK_OK) {
        res->reason = TK_REASON_OUT_OF_MEMORY;
        snprintf(res->detail, sizeof res->detail, "%s workspace", mode == TK_MODE_TAYLOR ? "Taylor" : "attention");
    }
    if (res->reason != TK_REASON_NONE) {
        free(o64);
        return TK_OK;
    }
    float *o = call->o;
    for (size_t t = 0; t < n_out; t++) o[t] = (float)o64[t];
    free(o64);
    res->path = mode == TK_MODE_EXACT ? TK_PATH_EXACT
                : mode == TK_MODE_TAYLOR ? TK_PATH_TAYLOR
                                         : TK_PATH_HYBRID;
    double kernel_ms = now_ms() - t0;
    if (stats_req) {
        /* Stats failing for memory leave the output standing: have = 0. */
        if (tki_stats_fill(&plan, call, o, mode == TK_MODE_EXACT ? NULL : &den, stats_req,
                           &res->stats, err, sizeof err) != TK_OK)
            memset(&res->stats, 0, sizeof res->stats);
        res->stats.kernel_ms = kernel_ms;
        res->stats.have |= TK_HAVE_TIME;
    }
    return TK_OK;
}

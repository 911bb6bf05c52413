/*
 * backend.c -- the cpu backend's entry points (internal.h): the context's
 * thread pool, and one call: resolve the plan (kernels/plan.c, shared with
 * ref and cuda), run the mode's kernel with OpenBLAS held to one thread while
 * the pool owns the cores, then the stats from the shared helpers
 * (kernels/stats.c) on the written output -- so cpu and ref report the same
 * figures for the same output. A kernel writes o only when it returns with
 * no reason.
 */
#include "cpu.h"

#include "stats.h"

#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int tkcpu_open(tk_context *ctx, char *err, size_t errlen) {
    tkcpu_state *st = calloc(1, sizeof *st);
    if (!st) {
        snprintf(err, errlen, "cpu backend: out of memory");
        return TK_ERR_NOMEM;
    }
    st->threads = tkcpu_default_threads();
    int rc = tkcpu_pool_create(st->threads, &st->pool, err, errlen);
    if (rc != TK_OK) {
        free(st);
        return rc;
    }
    ctx->cpu = st;
    return TK_OK;
}

void tkcpu_close(tk_context *ctx) {
    tkcpu_state *st = ctx->cpu;
    if (!st) return;
    tkcpu_pool_destroy(st->pool);
    free(st);
    ctx->cpu = NULL;
}

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

int tkcpu_attention(tk_context *ctx, const tk_call *call, const tk_config *cfg, tk_mode mode,
                    const tk_stats_request *stats_req, tk_result *res) {
    tkcpu_state *st = ctx->cpu;
    if (!st) {
        res->reason = TK_REASON_BACKEND_ERROR;
        snprintf(res->detail, sizeof res->detail, "cpu backend context is not open");
        return TK_OK;
    }
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

    tki_den_acc den;
    tki_den_acc_init(&den);
    tkcpu_job job = {ctx, st, call, cfg, &plan, res, &den};
    /* The pool owns the cores; with one thread OpenBLAS may use its own. */
    int blas_threads = openblas_get_num_threads();
    if (st->threads > 1) openblas_set_num_threads(1);
    int rc = TK_OK;
    switch (mode) {
    case TK_MODE_EXACT: rc = tkcpu_exact(&job); break;
    case TK_MODE_TAYLOR: rc = tkcpu_taylor(&job); break;
    case TK_MODE_HYBRID: rc = tkcpu_hybrid(&job); break;
    }
    if (st->threads > 1) openblas_set_num_threads(blas_threads);
    if (rc != TK_OK) {
        res->reason = TK_REASON_OUT_OF_MEMORY;
        snprintf(res->detail, sizeof res->detail, "cpu %s workspace",
                 mode == TK_MODE_EXACT ? "exact" : mode == TK_MODE_TAYLOR ? "Taylor" : "hybrid");
    }
    if (res->reason != TK_REASON_NONE) return TK_OK;
    res->path = mode == TK_MODE_EXACT ? TK_PATH_EXACT : mode == TK_MODE_TAYLOR ? TK_PATH_TAYLOR : TK_PATH_HYBRID;
    double kernel_ms = now_ms() - t0;
    if (stats_req) {
        /* Stats failing for memory leave the output standing: have = 0. */
        if (tki_stats_fill(&plan, call, call->o, mode == TK_MODE_EXACT ? NULL : &den, stats_req,
                           &res->stats, err, sizeof err) != TK_OK)
            memset(&res->stats, 0, sizeof res->stats);
        res->stats.kernel_ms = kernel_ms;
        res->stats.have |= TK_HAVE_TIME;
    }
    return TK_OK;
}

/*
 * dispatch.c -- picks a backend for a call; "can this call run, and if not,
 * why" (tk_check). FOUNDATION STUB: the kernels issue replaces the bodies.
 */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int tk_backend_available(tk_backend b) { return b == TK_BACKEND_REF || b == TK_BACKEND_CPU; }

int tk_context_open(tk_backend backend, tk_context **out, char *err, size_t errlen) {
    *out = NULL;
    if (!tk_backend_available(backend)) {
        snprintf(err, errlen, "backend %s is not available", tk_backend_name(backend));
        return TK_ERR_UNSUPPORTED;
    }
    tk_context *c = calloc(1, sizeof *c);
    if (!c) {
        snprintf(err, errlen, "out of memory");
        return TK_ERR_NOMEM;
    }
    c->backend = backend;
    *out = c;
    return TK_OK;
}

void tk_context_close(tk_context *ctx) { free(ctx); }
tk_backend tk_context_backend(const tk_context *ctx) { return ctx->backend; }
void tk_context_reset(tk_context *ctx) { (void)ctx; }

tk_reason tk_check(const tk_context *ctx, const tk_call *call, const tk_config *cfg, tk_mode mode,
                   char *detail, size_t detail_len) {
    (void)ctx, (void)call, (void)cfg, (void)mode;
    if (detail) snprintf(detail, detail_len, "kernels are not implemented yet");
    return TK_REASON_BACKEND_ERROR;
}

int tk_attention(tk_context *ctx, const tk_call *call, const tk_config *cfg, tk_mode mode,
                 const tk_stats_request *stats_req, tk_result *res) {
    (void)stats_req;
    if (!ctx || !call || !cfg || !res) return TK_ERR;
    memset(res, 0, sizeof *res);
    res->reason = tk_check(ctx, call, cfg, mode, res->detail, sizeof res->detail);
    res->path = TK_PATH_FALLBACK;
    return TK_OK;
}

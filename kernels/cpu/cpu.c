/* cpu.c -- FOUNDATION STUB of the cpu backend; the kernels issue replaces it. */
#include "internal.h"

#include <stdio.h>

int tkcpu_open(tk_context *ctx, char *err, size_t errlen) {
    (void)ctx, (void)err, (void)errlen;
    return TK_OK;
}

void tkcpu_close(tk_context *ctx) { (void)ctx; }

int tkcpu_attention(tk_context *ctx, const tk_call *call, const tk_config *cfg, tk_mode mode,
                    const tk_stats_request *stats_req, tk_result *res) {
    (void)ctx, (void)call, (void)cfg, (void)mode, (void)stats_req;
    res->reason = TK_REASON_BACKEND_ERROR;
    snprintf(res->detail, sizeof res->detail, "cpu backend not implemented yet");
    return TK_OK;
}

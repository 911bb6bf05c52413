// backend.cu -- FOUNDATION STUB of the cuda backend entry points; the GPU
// issue replaces the bodies (kernels/cuda/{exact,taylor,hybrid,stats}.cu).
#include <stdio.h>

#include "internal.h"

extern "C" int tkcuda_available(void) {
    char err[256];
    return tkcuda_selfcheck(err, sizeof err) == 0;
}

extern "C" int tkcuda_open(tk_context *ctx, char *err, size_t errlen) {
    (void)ctx;
    if (!tkcuda_available()) {
        snprintf(err, errlen, "no usable CUDA device");
        return TK_ERR_UNSUPPORTED;
    }
    return TK_OK;
}

extern "C" void tkcuda_close(tk_context *ctx) { (void)ctx; }

extern "C" int tkcuda_attention(tk_context *ctx, const tk_call *call, const tk_config *cfg,
                                tk_mode mode, const tk_stats_request *stats_req, tk_result *res) {
    (void)ctx, (void)call, (void)cfg, (void)mode, (void)stats_req;
    res->reason = TK_REASON_BACKEND_ERROR;
    snprintf(res->detail, sizeof res->detail, "cuda backend not implemented yet");
    return TK_OK;
}

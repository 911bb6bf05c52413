/* ref.c -- FOUNDATION STUB of the reference backend; the kernels issue
 * replaces it with kernels/ref/{exact,taylor,hybrid,stats}.c. */
#include "internal.h"

#include <stdio.h>

int tkref_attention(tk_context *ctx, const tk_call *call, const tk_config *cfg, tk_mode mode,
                    const tk_stats_request *stats_req, tk_result *res) {
    (void)ctx, (void)call, (void)cfg, (void)mode, (void)stats_req;
    res->reason = TK_REASON_BACKEND_ERROR;
    snprintf(res->detail, sizeof res->detail, "ref backend not implemented yet");
    return TK_OK;
}

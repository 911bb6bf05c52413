/* names.c -- stable names of the enumerations in kernels.h (reasons, paths,
 * backends, dtypes). The reason list itself is TK_REASONS in kernels.h. */
#include "kernels.h"

#include <string.h>

#define TK_REASON_NAME_(id, name) name,
static const char *const reason_names[] = {TK_REASONS(TK_REASON_NAME_)};
#undef TK_REASON_NAME_

const char *tk_reason_name(tk_reason r) {
    return (r >= 0 && r < TK_REASON_COUNT) ? reason_names[r] : "unknown";
}

int tk_reason_from_name(const char *name, tk_reason *out) {
    for (int i = 0; name && i < TK_REASON_COUNT; i++)
        if (strcmp(reason_names[i], name) == 0) {
            *out = (tk_reason)i;
            return 0;
        }
    return -1;
}

const char *tk_stage_name(tk_stage s) {
    switch (s) {
    case TK_STAGE_PROBE: return "probe";
    case TK_STAGE_FULL: return "full";
    default: return "none";
    }
}

const char *tk_path_name(tk_path p) {
    switch (p) {
    case TK_PATH_EXACT: return "exact";
    case TK_PATH_TAYLOR: return "taylor";
    case TK_PATH_HYBRID: return "hybrid";
    default: return "fallback";
    }
}

static const char *const backend_names[] = {"ref", "cpu", "cuda"};

const char *tk_backend_name(tk_backend b) {
    return (b >= 0 && b <= TK_BACKEND_CUDA) ? backend_names[b] : "unknown";
}

int tk_backend_from_name(const char *name, tk_backend *out) {
    for (int i = 0; name && i <= TK_BACKEND_CUDA; i++)
        if (strcmp(backend_names[i], name) == 0) {
            *out = (tk_backend)i;
            return 0;
        }
    return -1;
}

const char *tk_dtype_name(tk_dtype d) {
    switch (d) {
    case TK_DTYPE_F32: return "f32";
    case TK_DTYPE_F16: return "f16";
    case TK_DTYPE_BF16: return "bf16";
    }
    return "unknown";
}

size_t tk_dtype_size(tk_dtype d) { return d == TK_DTYPE_F32 ? 4 : 2; }

/*
 * dispatch.c -- contexts, backend choice, and "can this call run, and if
 * not, why" (tk_check, ggml's supports_op returning a reason).
 *
 * tk_check, in order (the first failing check is the reason):
 *   shape     every dim >= 1, q/k/v/o given, sizes fit in memory, text tokens
 *             and grid consistent with Nq/Nk                -> unsupported_shape
 *   dtype     f32 for ref and cpu; f32/f16/bf16 for cuda     -> unsupported_shape
 *   mask      (host backends) a batch whose keys are all masked -> unsupported_mask
 *   -- mode exact stops here: it always runs --
 *   sigma     taylor_sigma_max > 0 and sigma > it            -> skipped_by_sigma
 *   cross     Nq != Nk and not allow_cross_attention         -> cross_attention_disabled
 *   tokens    max(Nq, Nk) < min_tokens                       -> below_min_tokens
 *   head dim  D > max_head_dim                               -> head_dim_too_large
 *   taylor    sub_head_blocks divides D and Dv               -> sub_head_block_mismatch
 *             R(D/b, terms) <= max_feature_dim_R             -> feature_dim_too_large
 *   hybrid    q0 and k0 both given or both absent, 2d window needs the grid
 *             (text_tokens + grid_h*grid_w = Nq = Nk), a 1d window must
 *             reach a key from every query (cross attention) -> unsupported_shape
 *             R(min(global_dim, D), global_P) <= max_feature_dim_R
 *                                                           -> feature_dim_too_large
 *             (host backends) every query's window holds a kept key
 *                                                           -> unsupported_mask
 * tk_attention then adds the data checks: NaN/Inf in q, k, v (and q0/k0 for
 * hybrid) -> bad_input (host backends; cuda checks on the device).
 */
#include "internal.h"
#include "pca.h"
#include "plan.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int tk_backend_available(tk_backend b) {
    switch (b) {
    case TK_BACKEND_REF:
    case TK_BACKEND_CPU: return 1;
    case TK_BACKEND_CUDA:
#ifdef TK_HAVE_CUDA
        return tkcuda_available();
#else
        return 0;
#endif
    }
    return 0;
}

int tk_context_open(tk_backend backend, tk_context **out, char *err, size_t errlen) {
    *out = NULL;
    if (backend != TK_BACKEND_REF && backend != TK_BACKEND_CPU && backend != TK_BACKEND_CUDA) {
        snprintf(err, errlen, "unknown backend %d", (int)backend);
        return TK_ERR;
    }
    if (!tk_backend_available(backend)) {
        snprintf(err, errlen, "backend %s is not available%s", tk_backend_name(backend),
                 backend == TK_BACKEND_CUDA ? " (not compiled in, or no usable device)" : "");
        return TK_ERR_UNSUPPORTED;
    }
    tk_context *c = calloc(1, sizeof *c);
    if (!c) {
        snprintf(err, errlen, "out of memory");
        return TK_ERR_NOMEM;
    }
    c->backend = backend;
    int rc = TK_OK;
    if (backend == TK_BACKEND_CPU) rc = tkcpu_open(c, err, errlen);
#ifdef TK_HAVE_CUDA
    if (backend == TK_BACKEND_CUDA) rc = tkcuda_open(c, err, errlen);
#endif
    if (rc != TK_OK) {
        free(c);
        return rc;
    }
    *out = c;
    return TK_OK;
}

void tk_context_close(tk_context *ctx) {
    if (!ctx) return;
    if (ctx->backend == TK_BACKEND_CPU) tkcpu_close(ctx);
#ifdef TK_HAVE_CUDA
    if (ctx->backend == TK_BACKEND_CUDA) tkcuda_close(ctx);
#endif
    tki_pca_cache_free(ctx->pca);
    free(ctx);
}

tk_backend tk_context_backend(const tk_context *ctx) { return ctx->backend; }

void tk_context_reset(tk_context *ctx) {
    if (!ctx) return;
    tki_pca_cache_clear(ctx->pca);
#ifdef TK_HAVE_CUDA
    if (ctx->cuda) tkcuda_reset(ctx);
#endif
}

static tk_reason say(tk_reason r, char *detail, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static tk_reason say(tk_reason r, char *detail, size_t len, const char *fmt, ...) {
    if (detail && len) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(detail, len, fmt, ap);
        va_end(ap);
    }
    return r;
}

static int host_backend(const tk_context *ctx) { return ctx->backend != TK_BACKEND_CUDA; }

/* Shape, dtype and configuration sanity: what every mode needs. */
static tk_reason check_shape(const tk_context *ctx, const tk_call *c, const tk_config *cfg,
                             char *detail, size_t len) {
    if (!c->q || !c->k || !c->v || !c->o)
        return say(TK_REASON_UNSUPPORTED_SHAPE, detail, len, "q, k, v and o must all be given");
    if (c->B < 1 || c->H < 1 || c->Nq < 1 || c->Nk < 1 || c->D < 1 || c->Dv < 1)
        return say(TK_REASON_UNSUPPORTED_SHAPE, detail, len,
                   "every dim must be >= 1 (B=%d H=%d Nq=%d Nk=%d D=%d Dv=%d)", c->B, c->H, c->Nq,
                   c->Nk, c->D, c->Dv);
    size_t esz = tk_dtype_size(c->dtype);
    if (esz == 0) return say(TK_REASON_UNSUPPORTED_SHAPE, detail, len, "unknown dtype %d", (int)c->dtype);
    /* fp64 workspaces of the reference are 8 bytes an element */
    if (tki_elems4(c->B, c->H, c->Nq, c->D > c->Dv ? c->D : c->Dv, 8) < 0 ||
        tki_elems4(c->B, c->H, c->Nk, c->D > c->Dv ? c->D : c->Dv, 8) < 0)
        return say(TK_REASON_UNSUPPORTED_SHAPE, detail, len, "tensor sizes overflow");
    if (c->text_tokens < 0 || c->grid_h < 0 || c->grid_w < 0)
        return say(TK_REASON_UNSUPPORTED_SHAPE, detail, len,
                   "text_tokens=%d, grid %dx%d: must not be negative", c->text_tokens, c->grid_h,
                   c->grid_w);
    if ((c->grid_h == 0) != (c->grid_w == 0))
        return say(TK_REASON_UNSUPPORTED_SHAPE, detail, len, "grid %dx%d: give both sides or neither",
                   c->grid_h, c->grid_w);
    if (c->grid_h > 0) {
        int64_t tokens = (int64_t)c->text_tokens + (int64_t)c->grid_h * c->grid_w;
        if (tokens != c->Nq)
            return say(TK_REASON_UNSUPPORTED_SHAPE, detail, len,
                       "text_tokens %d + grid %dx%d = %lld tokens, but Nq = %d", c->text_tokens,
                       c->grid_h, c->grid_w, (long long)tokens, c->Nq);
    } else if (c->text_tokens > c->Nq) {
        return say(TK_REASON_UNSUPPORTED_SHAPE, detail, len, "text_tokens %d > Nq %d",
                   c->text_tokens, c->Nq);
    }
    if (host_backend(ctx) && c->dtype != TK_DTYPE_F32)
        return say(TK_REASON_UNSUPPORTED_SHAPE, detail, len, "the %s backend takes f32, not %s",
                   tk_backend_name(ctx->backend), tk_dtype_name(c->dtype));
    if (cfg->terms < 1 || cfg->sub_head_blocks < 1 || cfg->global_dim < 1 || cfg->global_P < 1 ||
        cfg->probe_samples < 1 || cfg->pca_samples < 1 || cfg->window_shape < 0 ||
        cfg->window_shape > 1 || cfg->combine < 0 || cfg->combine > 1)
        return say(TK_REASON_UNSUPPORTED_SHAPE, detail, len,
                   "configuration out of range (terms, sub_head_blocks, global_dim, global_P, "
                   "probe_samples, pca_samples, window_shape or combine)");
    return TK_REASON_NONE;
}

/* Every batch keeps at least one key (host mask). */
static tk_reason check_mask_batches(const tk_call *c, char *detail, size_t len) {
    if (!c->key_mask) return TK_REASON_NONE;
    for (int b = 0; b < c->B; b++) {
        int kept = 0;
        for (int j = 0; j < c->Nk && !kept; j++) kept = c->key_mask[(size_t)b * c->Nk + j] != 0;
        if (!kept)
            return say(TK_REASON_UNSUPPORTED_MASK, detail, len,
                       "batch %d: every key is masked", b);
    }
    return TK_REASON_NONE;
}

/* Every query's local window holds a kept key (host mask, hybrid). Prefix
 * sums of the kept keys: O(Nk) per batch. */
static tk_reason check_mask_windows(const tk_call *c, const tki_window *w, char *detail,
                                    size_t len) {
    if (!c->key_mask || w->radius <= 0) return TK_REASON_NONE;
    int64_t *pre = NULL;
    tk_reason r = TK_REASON_NONE;
    if (w->shape == TK_WINDOW_1D) {
        pre = malloc(((size_t)c->Nk + 1) * sizeof *pre);
        if (!pre) return say(TK_REASON_OUT_OF_MEMORY, detail, len, "mask check: out of memory");
        for (int b = 0; b < c->B && r == TK_REASON_NONE; b++) {
            const uint8_t *m = c->key_mask + (size_t)b * c->Nk;
            pre[0] = 0;
            for (int j = 0; j < c->Nk; j++) pre[j + 1] = pre[j] + (m[j] != 0);
            for (int i = c->text_tokens; i < c->Nq; i++) {
                int64_t lo = (int64_t)i - w->radius, hi = (int64_t)i + w->radius;
                if (lo < 0) lo = 0;
                if (hi > c->Nk - 1) hi = c->Nk - 1;
                if (lo > hi || pre[hi + 1] - pre[lo] == 0) {
                    r = say(TK_REASON_UNSUPPORTED_MASK, detail, len,
                            "batch %d, query %d: every key of its window is masked", b, i);
                    break;
                }
            }
        }
    } else {
        int gh = w->grid_h, gw = w->grid_w, T = w->text_tokens;
        pre = malloc(((size_t)gh + 1) * ((size_t)gw + 1) * sizeof *pre);
        if (!pre) return say(TK_REASON_OUT_OF_MEMORY, detail, len, "mask check: out of memory");
#define PRE(y, x) pre[(size_t)(y) * (gw + 1) + (x)]
        for (int b = 0; b < c->B && r == TK_REASON_NONE; b++) {
            const uint8_t *m = c->key_mask + (size_t)b * c->Nk;
            int text_kept = 0;
            for (int j = 0; j < T && !text_kept; j++) text_kept = m[j] != 0;
            if (text_kept) continue; /* every image query sees the text keys */
            for (int x = 0; x <= gw; x++) PRE(0, x) = 0;
            for (int y = 0; y < gh; y++) {
                PRE(y + 1, 0) = 0;
                for (int x = 0; x < gw; x++)
                    PRE(y + 1, x + 1) = PRE(y, x + 1) + PRE(y + 1, x) - PRE(y, x) +
                                        (m[T + (size_t)y * gw + x] != 0);
            }
            for (int y = 0; y < gh && r == TK_REASON_NONE; y++)
                for (int x = 0; x < gw; x++) {
                    int y0 = y - w->radius < 0 ? 0 : y - w->radius;
                    int x0 = x - w->radius < 0 ? 0 : x - w->radius;
                    int y1 = y + w->radius >= gh ? gh - 1 : y + w->radius;
                    int x1 = x + w->radius >= gw ? gw - 1 : x + w->radius;
                    int64_t kept = PRE(y1 + 1, x1 + 1) - PRE(y0, x1 + 1) - PRE(y1 + 1, x0) + PRE(y0, x0);
                    if (kept == 0) {
                        r = say(TK_REASON_UNSUPPORTED_MASK, detail, len,
                                "batch %d, query %d: every key of its window is masked", b,
                                T + y * gw + x);
                        break;
                    }
                }
        }
#undef PRE
    }
    free(pre);
    return r;
}

tk_reason tk_check(const tk_context *ctx, const tk_call *c, const tk_config *cfg, tk_mode mode,
                   char *detail, size_t len) {
    if (detail && len) detail[0] = '\0';
    if (!ctx || !c || !cfg)
        return say(TK_REASON_UNSUPPORTED_SHAPE, detail, len, "missing context, call or config");
    if (mode != TK_MODE_EXACT && mode != TK_MODE_TAYLOR && mode != TK_MODE_HYBRID)
        return say(TK_REASON_UNSUPPORTED_SHAPE, detail, len, "unknown mode %d", (int)mode);
    tk_reason r = check_shape(ctx, c, cfg, detail, len);
    if (r != TK_REASON_NONE) return r;
    if (host_backend(ctx) && (r = check_mask_batches(c, detail, len)) != TK_REASON_NONE) return r;
    if (mode == TK_MODE_EXACT) return TK_REASON_NONE;

    if (cfg->taylor_sigma_max > 0 && !(c->sigma <= cfg->taylor_sigma_max))
        return say(TK_REASON_SKIPPED_BY_SIGMA, detail, len, "sigma %g > taylor_sigma_max %g",
                   c->sigma, cfg->taylor_sigma_max);
    if (c->Nq != c->Nk && !cfg->allow_cross_attention)
        return say(TK_REASON_CROSS_ATTENTION_DISABLED, detail, len,
                   "Nq %d != Nk %d and allow_cross_attention is off", c->Nq, c->Nk);
    int tokens = c->Nq > c->Nk ? c->Nq : c->Nk;
    if (tokens < cfg->min_tokens)
        return say(TK_REASON_BELOW_MIN_TOKENS, detail, len, "%d tokens < min_tokens %d", tokens,
                   cfg->min_tokens);
    if (c->D > cfg->max_head_dim)
        return say(TK_REASON_HEAD_DIM_TOO_LARGE, detail, len, "D=%d > max_head_dim %d", c->D,
                   cfg->max_head_dim);

    if (mode == TK_MODE_TAYLOR) {
        int b = cfg->sub_head_blocks;
        if (c->D % b != 0 || c->Dv % b != 0)
            return say(TK_REASON_SUB_HEAD_BLOCK_MISMATCH, detail, len,
                       "sub_head_blocks %d does not divide D=%d and Dv=%d", b, c->D, c->Dv);
        int64_t R = taylor_feature_count(c->D / b, cfg->terms);
        if (R < 0 || R > cfg->max_feature_dim_R)
            return say(TK_REASON_FEATURE_DIM_TOO_LARGE, detail, len,
                       "R(%d,%d)=%lld > max_feature_dim_R %d", c->D / b, cfg->terms,
                       (long long)R, cfg->max_feature_dim_R);
        return TK_REASON_NONE;
    }

    /* hybrid */
    if ((c->q0 == NULL) != (c->k0 == NULL))
        return say(TK_REASON_UNSUPPORTED_SHAPE, detail, len,
                   "give both pre-RoPE q0 and k0, or neither");
    if (cfg->window_shape == TK_WINDOW_2D) {
        if (c->grid_h == 0)
            return say(TK_REASON_UNSUPPORTED_SHAPE, detail, len,
                       "a 2d window needs the grid (text_tokens, grid_h, grid_w)");
        if (c->Nq != c->Nk)
            return say(TK_REASON_UNSUPPORTED_SHAPE, detail, len,
                       "a 2d window needs Nq = Nk (got %d, %d)", c->Nq, c->Nk);
    }
    int radius = tk_window_at(cfg, c->sigma);
    if (cfg->window_shape == TK_WINDOW_1D && radius > 0 && c->Nq > c->text_tokens &&
        (int64_t)c->Nq - 1 - radius > (int64_t)c->Nk - 1)
        return say(TK_REASON_UNSUPPORTED_SHAPE, detail, len,
                   "1d window %d: query %d has no key within reach (Nk = %d)", radius, c->Nq - 1,
                   c->Nk);
    int g = cfg->global_dim < c->D ? cfg->global_dim : c->D;
    int64_t R = taylor_feature_count(g, cfg->global_P);
    if (R < 0 || R > cfg->max_feature_dim_R)
        return say(TK_REASON_FEATURE_DIM_TOO_LARGE, detail, len,
                   "far field R(%d,%d)=%lld > max_feature_dim_R %d", g, cfg->global_P,
                   (long long)R, cfg->max_feature_dim_R);
    if (host_backend(ctx)) {
        tki_window w = {(tk_window_shape)cfg->window_shape, radius, c->text_tokens, c->grid_h,
                        c->grid_w};
        if ((r = check_mask_windows(c, &w, detail, len)) != TK_REASON_NONE) return r;
    }
    return TK_REASON_NONE;
}

/* Index of the first non-finite value of x[0..n), or -1. A float is NaN or
 * Inf when its exponent bits are all ones; blocks of 64 are tested with
 * branch-free vector compares (this scan runs over every input of every
 * call), and only a block that holds one is searched element by element. */
typedef uint32_t tki_u32x4 __attribute__((vector_size(16)));
static int64_t first_nonfinite(const float *x, int64_t n) {
    const tki_u32x4 exp_mask = {0x7f800000u, 0x7f800000u, 0x7f800000u, 0x7f800000u};
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {
        tki_u32x4 any = {0, 0, 0, 0};
        for (int j = 0; j < 64; j += 4) {
            tki_u32x4 b;
            memcpy(&b, x + i + j, sizeof b);
            any |= (tki_u32x4)((b & exp_mask) == exp_mask);
        }
        if (any[0] | any[1] | any[2] | any[3]) break;
    }
    for (; i < n; i++)
        if (!isfinite(x[i])) return i;
    return -1;
}

static tk_reason check_finite(const tk_call *c, tk_mode mode, char *detail, size_t len) {
    struct {
        const char *name;
        const void *p;
        int n, d;
    } t[5] = {{"q", c->q, c->Nq, c->D},   {"k", c->k, c->Nk, c->D},  {"v", c->v, c->Nk, c->Dv},
              {"q0", c->q0, c->Nq, c->D}, {"k0", c->k0, c->Nk, c->D}};
    int count = mode == TK_MODE_HYBRID ? 5 : 3;
    for (int i = 0; i < count; i++) {
        if (!t[i].p) continue;
        int64_t n = tki_elems4(c->B, c->H, t[i].n, t[i].d, 4);
        int64_t at = first_nonfinite((const float *)t[i].p, n);
        if (at >= 0)
            return say(TK_REASON_BAD_INPUT, detail, len, "%s holds a NaN or Inf at element %lld",
                       t[i].name, (long long)at);
    }
    return TK_REASON_NONE;
}

int tk_attention(tk_context *ctx, const tk_call *call, const tk_config *cfg, tk_mode mode,
                 const tk_stats_request *stats_req, tk_result *res) {
    if (!ctx || !call || !cfg || !res) return TK_ERR;
    memset(res, 0, sizeof *res);
    res->path = TK_PATH_FALLBACK;
    res->window = -1;
    if (!call->q || !call->k || !call->v || !call->o) return TK_ERR;

    tk_reason r = check_shape(ctx, call, cfg, res->detail, sizeof res->detail);
    if (r == TK_REASON_NONE && host_backend(ctx))
        r = check_finite(call, mode, res->detail, sizeof res->detail);
    if (r == TK_REASON_NONE) r = tk_check(ctx, call, cfg, mode, res->detail, sizeof res->detail);
    if (r != TK_REASON_NONE) {
        res->reason = r;
        return TK_OK;
    }
    int rc;
    switch (ctx->backend) {
    case TK_BACKEND_REF: rc = tkref_attention(ctx, call, cfg, mode, stats_req, res); break;
    case TK_BACKEND_CPU: rc = tkcpu_attention(ctx, call, cfg, mode, stats_req, res); break;
#ifdef TK_HAVE_CUDA
    case TK_BACKEND_CUDA: rc = tkcuda_attention(ctx, call, cfg, mode, stats_req, res); break;
#endif
    default:
        res->reason = say(TK_REASON_BACKEND_ERROR, res->detail, sizeof res->detail,
                          "backend %s is not compiled in", tk_backend_name(ctx->backend));
        return TK_OK;
    }
    if (rc != TK_OK && res->reason == TK_REASON_NONE) {
        res->reason = TK_REASON_BACKEND_ERROR;
        if (!res->detail[0]) snprintf(res->detail, sizeof res->detail, "backend returned %d", rc);
    }
    if (res->reason != TK_REASON_NONE) {
        res->path = TK_PATH_FALLBACK;
        memset(&res->stats, 0, sizeof res->stats);
    }
    return TK_OK;
}

/*
 * internal.h -- private to kernels/: the context, and what each backend
 * implements. Prefix tki_ (shared helpers), tkref_/tkcpu_/tkcuda_ (backends).
 *
 * tk_attention (dispatch.c) validates arguments, runs tk_check, and hands
 * the call to the backend's *_attention, which computes the mode, applies the
 * denominator rule and the probe, fills res (path, R, window, w) and, when
 * stats_req is given, res->stats.
 */
#ifndef TK_INTERNAL_H
#define TK_INTERNAL_H

#include "kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

struct tki_pca_cache; /* per (layer, head) far-field projections; kernels/pca.c */

struct tk_context {
    tk_backend backend;
    struct tki_pca_cache *pca; /* owned; NULL until first hybrid call */
    void *cpu;                 /* cpu backend state (threads, workspaces), kernels/cpu */
    void *cuda;                /* cuda backend state (stream-independent workspaces, handles) */
};

typedef int (*tki_attention_fn)(tk_context *ctx, const tk_call *call, const tk_config *cfg,
                                tk_mode mode, const tk_stats_request *stats_req, tk_result *res);

int tkref_attention(tk_context *ctx, const tk_call *call, const tk_config *cfg, tk_mode mode,
                    const tk_stats_request *stats_req, tk_result *res);

int tkcpu_open(tk_context *ctx, char *err, size_t errlen);
void tkcpu_close(tk_context *ctx);
int tkcpu_attention(tk_context *ctx, const tk_call *call, const tk_config *cfg, tk_mode mode,
                    const tk_stats_request *stats_req, tk_result *res);

#ifdef TK_HAVE_CUDA
int tkcuda_selfcheck(char *err, size_t errlen);
int tkcuda_available(void);
int tkcuda_open(tk_context *ctx, char *err, size_t errlen);
void tkcuda_close(tk_context *ctx);
void tkcuda_reset(tk_context *ctx); /* forget cached PCA projections */
int tkcuda_attention(tk_context *ctx, const tk_call *call, const tk_config *cfg, tk_mode mode,
                     const tk_stats_request *stats_req, tk_result *res);
#endif

#ifdef __cplusplus
}
#endif
#endif

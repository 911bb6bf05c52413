/*
 * test_util.h -- helpers for the kernels' unit tests (header only, static):
 * seeded random tensors, a call with its own buffers, one-shot runs, a naive
 * exact attention written independently of the library, and comparisons.
 * Not part of the library.
 */
#ifndef TK_TEST_UTIL_H
#define TK_TEST_UTIL_H

#include "kernels.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static inline uint64_t tu_next(uint64_t *s) {
    uint64_t x = (*s += 0x9e3779b97f4a7c15ull);
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}
/* uniform in [0, 1) */
static inline double tu_uniform(uint64_t *s) { return (double)(tu_next(s) >> 11) * 0x1.0p-53; }
/* standard normal (Box-Muller) */
static inline double tu_normal(uint64_t *s) {
    double u = tu_uniform(s), v = tu_uniform(s);
    if (u < 1e-300) u = 1e-300;
    return sqrt(-2 * log(u)) * cos(6.283185307179586 * v);
}
static inline void tu_fill(float *x, size_t n, uint64_t seed, double scale) {
    uint64_t s = seed;
    for (size_t i = 0; i < n; i++) x[i] = (float)(scale * tu_normal(&s));
}

/* A call that owns its buffers (q, k, v, o; q0/k0/mask on request). */
typedef struct {
    tk_call c;
    float *q, *k, *v, *o, *q0, *k0;
    uint8_t *mask;
} tu_call;

static inline size_t tu_n(int a, int b, int c, int d) { return (size_t)a * b * c * d; }

/* q, k with entries ~ N(0, qk_scale^2), v ~ N(0, 1), o zeroed. */
static inline void tu_make(tu_call *t, int B, int H, int Nq, int Nk, int D, int Dv, uint64_t seed,
                           double qk_scale) {
    memset(t, 0, sizeof *t);
    t->q = malloc(tu_n(B, H, Nq, D) * sizeof(float));
    t->k = malloc(tu_n(B, H, Nk, D) * sizeof(float));
    t->v = malloc(tu_n(B, H, Nk, Dv) * sizeof(float));
    t->o = calloc(tu_n(B, H, Nq, Dv), sizeof(float));
    tu_fill(t->q, tu_n(B, H, Nq, D), seed * 4 + 1, qk_scale);
    tu_fill(t->k, tu_n(B, H, Nk, D), seed * 4 + 2, qk_scale);
    tu_fill(t->v, tu_n(B, H, Nk, Dv), seed * 4 + 3, 1.0);
    tk_call *c = &t->c;
    c->B = B, c->H = H, c->Nq = Nq, c->Nk = Nk, c->D = D, c->Dv = Dv;
    c->dtype = TK_DTYPE_F32;
    c->q = t->q, c->k = t->k, c->v = t->v, c->o = t->o;
    c->layer = 0;
}

/* Adds pre-RoPE q0/k0: q/k plus a small perturbation (a stand-in for RoPE). */
static inline void tu_add_q0k0(tu_call *t, uint64_t seed, double perturb) {
    tk_call *c = &t->c;
    size_t nq = tu_n(c->B, c->H, c->Nq, c->D), nk = tu_n(c->B, c->H, c->Nk, c->D);
    t->q0 = malloc(nq * sizeof(float));
    t->k0 = malloc(nk * sizeof(float));
    tu_fill(t->q0, nq, seed * 8 + 5, perturb);
    tu_fill(t->k0, nk, seed * 8 + 6, perturb);
    for (size_t i = 0; i < nq; i++) t->q0[i] += t->q[i];
    for (size_t i = 0; i < nk; i++) t->k0[i] += t->k[i];
    c->q0 = t->q0, c->k0 = t->k0;
}

static inline uint8_t *tu_add_mask(tu_call *t) {
    t->mask = malloc((size_t)t->c.B * t->c.Nk);
    memset(t->mask, 1, (size_t)t->c.B * t->c.Nk);
    t->c.key_mask = t->mask;
    return t->mask;
}

static inline void tu_free(tu_call *t) {
    free(t->q), free(t->k), free(t->v), free(t->o), free(t->q0), free(t->k0), free(t->mask);
    memset(t, 0, sizeof *t);
}

/* One call on a fresh context of `backend`. Returns the tk_attention status. */
static inline int tu_run(tk_backend backend, const tk_call *c, const tk_config *cfg, tk_mode mode,
                         const tk_stats_request *sr, tk_result *res) {
    tk_context *ctx;
    char err[256];
    if (tk_context_open(backend, &ctx, err, sizeof err) != 0) return -1;
    int rc = tk_attention(ctx, c, cfg, mode, sr, res);
    tk_context_close(ctx);
    return rc;
}

/* Naive exact attention (fp64), written apart from the library: out is
 * [B,H,Nq,Dv] doubles. scale 0 = D^-1/2. */
static inline void tu_naive_exact(const tk_call *c, double scale, double *out) {
    if (scale <= 0) scale = 1 / sqrt((double)c->D);
    const float *q = c->q, *k = c->k, *v = c->v;
    for (int b = 0; b < c->B; b++)
        for (int h = 0; h < c->H; h++)
            for (int i = 0; i < c->Nq; i++) {
                size_t bh = (size_t)b * c->H + h;
                const float *qi = q + (bh * c->Nq + i) * c->D;
                double m = -INFINITY;
                for (int j = 0; j < c->Nk; j++) {
                    if (c->key_mask && !c->key_mask[(size_t)b * c->Nk + j]) continue;
                    double s = 0;
                    for (int d = 0; d < c->D; d++) s += (double)qi[d] * k[(bh * c->Nk + j) * c->D + d];
                    if (s * scale > m) m = s * scale;
                }
                double sum = 0;
                double *o = out + (bh * c->Nq + i) * c->Dv;
                for (int e = 0; e < c->Dv; e++) o[e] = 0;
                for (int j = 0; j < c->Nk; j++) {
                    if (c->key_mask && !c->key_mask[(size_t)b * c->Nk + j]) continue;
                    double s = 0;
                    for (int d = 0; d < c->D; d++) s += (double)qi[d] * k[(bh * c->Nk + j) * c->D + d];
                    double e = exp(s * scale - m);
                    sum += e;
                    for (int x = 0; x < c->Dv; x++) o[x] += e * v[(bh * c->Nk + j) * c->Dv + x];
                }
                for (int e = 0; e < c->Dv; e++) o[e] /= sum;
            }
}

/* max_i |a_i - b_i| over n values (NaN -> Inf). */
static inline double tu_max_diff_fd(const float *a, const double *b, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (isnan(d)) return INFINITY;
        if (d > m) m = d;
    }
    return m;
}
static inline double tu_max_diff_ff(const float *a, const float *b, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (isnan(d)) return INFINITY;
        if (d > m) m = d;
    }
    return m;
}

/* A config with the gates opened for small test shapes. */
static inline void tu_config(tk_config *cfg) {
    tk_config_defaults(cfg);
    cfg->min_tokens = 0;
    cfg->allow_cross_attention = 1;
}

#endif

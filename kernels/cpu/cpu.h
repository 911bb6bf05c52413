/*
 * cpu.h -- private to kernels/cpu: the fast float32 backend. Prefix tkcpu_.
 *
 *   pool.c    a small persistent pthread pool (the calling thread is worker 0)
 *   vec.c     vectorized row kernels (exp2, max, feature rows), compiled for
 *             AVX-512, AVX2+FMA and plain x86-64, chosen at run time
 *   exact.c   exact attention in query blocks, online softmax over key blocks
 *   taylor.c  Taylor attention streaming key blocks into S and z
 *   hybrid.c  local window softmax + far-field Taylor on the PCA projection
 *   backend.c tkcpu_open/close/attention: plan, mode, stats
 *
 * Matrix products go through OpenBLAS sgemm, called from the pool's workers
 * with OpenBLAS itself held to one thread during a call (the pool owns the
 * cores; two layers of threads would oversubscribe them).
 */
#ifndef TK_CPU_H
#define TK_CPU_H

#include <stddef.h>
#include <stdint.h>

#include "internal.h"
#include "plan.h"

/* ---- thread pool ---- */

typedef struct tkcpu_pool tkcpu_pool;
/* fn(arg, item, worker): item in [0, n), worker in [0, threads). */
typedef void (*tkcpu_task_fn)(void *arg, int64_t item, int worker);

/* threads >= 1 (1 = no extra threads). 0 ok, nonzero with err filled. *out owned by caller. */
int tkcpu_pool_create(int threads, tkcpu_pool **out, char *err, size_t errlen);
void tkcpu_pool_destroy(tkcpu_pool *p);
int tkcpu_pool_threads(const tkcpu_pool *p);
/* Runs fn on items 0..n-1 over the workers (dynamic, one item at a time) and
 * returns when all are done. Not reentrant. */
void tkcpu_pool_run(tkcpu_pool *p, int64_t n, tkcpu_task_fn fn, void *arg);

/* ---- backend state (ctx->cpu) ---- */

typedef struct {
    tkcpu_pool *pool;
    int threads;
} tkcpu_state;

/* Threads the backend uses: TK_CPU_THREADS from the environment, else the
 * online processors (at least 1, at most 64). */
int tkcpu_default_threads(void);

/* ---- vector kernels (vec.c) ---- */

/* Instruction set of the vector kernels in use: "avx512", "avx2" or "generic"
 * (the widest the processor has). set_isa picks a narrower one (tests);
 * returns -1 for an unknown name or one the processor lacks. */
const char *tkcpu_vec_isa(void);
int tkcpu_vec_set_isa(const char *name);

/* 2^x for x <= 0 (x < -126, -inf and NaN give 0); scalar form of the vector code. */
float tkcpu_exp2_neg(float x);
/* max of x[0..n), -inf when n == 0. */
float tkcpu_max(const float *x, int64_t n);
/* x[i] = 2^(x[i] - m) (see tkcpu_exp2_neg); returns the sum (fp64 accumulated). */
double tkcpu_exp2_shift_sum(float *x, int64_t n, float m);
/* y[i] *= a */
void tkcpu_scale(float *y, int64_t n, float a);
/* y[i] = a[i] * b[i] * c */
void tkcpu_mul3(float *y, const float *a, const float *b, float c, int64_t n);
/* y[i] += x[i] */
void tkcpu_add(float *y, const float *x, int64_t n);
/* y[i] = a y[i] + b x[i] */
void tkcpu_axpby(float *y, float a, const float *x, float b, int64_t n);
/* phi[r][0..cols) = phi[parent[r]] * x[last[r]] * ratio[r] for r = 1..R-1;
 * rows of stride ld; cols a multiple of 16, <= ld */
void tkcpu_feature_rows(float *phi, int ld, int cols, const int32_t *parent, const uint16_t *last,
                        const float *ratio, int R, const float *x);
/* sum of x (fp64) */
double tkcpu_sum(const float *x, int64_t n);
/* x[i] = kappa_P(s x[i]) = sum_{p<P} (s x[i])^p / p! */
void tkcpu_kappa(float *x, int64_t n, float s, int terms);
/* Window of one query row: entry j is outside when |cy[j]-qy| > rad or
 * |cx[j]-qx| > rad; outside entries of srow become -inf and of krow (may be
 * NULL) 0. Returns the number inside. */
int64_t tkcpu_window_mask(float *srow, float *krow, const int32_t *cy, const int32_t *cx, int64_t n,
                          int qy, int qx, int rad);

/* ---- feature blocks (features.c) ---- */

/* The feature map of (d, P, s) prepared for blocks of ld tokens: kref's
 * table (feature_map.h) plus ratio[r] = weight[r] / weight[parent[r]], so
 * that Φ_r = Φ_parent(r) ∘ X_last(r) · ratio[r], one vector multiply a row. */
typedef struct {
    int R, d, ld;
    const int32_t *parent;
    const uint16_t *last;
    float *ratio;      /* owned */
    void *table;       /* owned tki_features */
} tkcpu_fmap;

/* 0, or TK_ERR_NOMEM (nothing to free). ld: tokens per block, a multiple of 16. */
int tkcpu_fmap_make(tkcpu_fmap *fm, int d, int terms, double s, int64_t R, int ld);
void tkcpu_fmap_free(tkcpu_fmap *fm);
/*
 * Φ [R][ld] of n <= ld tokens: rows[j] points at token j's d values, scaled
 * by factor[j] (NULL = 1: already modified). x: [d][ld] scratch. Columns
 * n..round16(n)-1 hold the features of a zero vector; the rest are not
 * touched.
 */
void tkcpu_features_block(const tkcpu_fmap *fm, const float *const *rows, const float *factor, int n,
                          float *x, float *phi);

/* ---- mode kernels: each returns TK_OK, or a reason through res ---- */

struct tki_den_acc_s;
typedef struct {
    tk_context *ctx;
    tkcpu_state *st;
    const tk_call *call;
    const tk_config *cfg;
    const tki_plan *plan;
    tk_result *res;
    void *den; /* tki_den_acc * (stats.h): the denominators the mode used */
} tkcpu_job;

/* Exact attention of the whole call into call->o. Returns 0 or TK_ERR_NOMEM. */
int tkcpu_exact(tkcpu_job *job);
/* Taylor: 0 and o written, or a fallback reason set in job->res (o untouched),
 * or TK_ERR_NOMEM. */
int tkcpu_taylor(tkcpu_job *job);
int tkcpu_hybrid(tkcpu_job *job);

/* ---- exact.c: online softmax over key blocks, reused by the hybrid ---- */

enum { TKCPU_QBLOCK = 256, TKCPU_KBLOCK = 512 };

typedef struct {
    float *qs; /* TKCPU_QBLOCK x D: the scaled queries */
    float *s;  /* TKCPU_QBLOCK x TKCPU_KBLOCK: logits, then weights */
    float *m;  /* TKCPU_QBLOCK: running row max (log2 units) */
} tkcpu_flash_scratch;

/* 0 or TK_ERR_NOMEM (nothing to free). */
int tkcpu_flash_scratch_alloc(tkcpu_flash_scratch *s, int D);
void tkcpu_flash_scratch_free(tkcpu_flash_scratch *s);
/*
 * Exact softmax attention of nq <= TKCPU_QBLOCK query rows (rows[r]: D
 * floats each, anywhere) over the Nk keys K [Nk][D] / values V [Nk][Dv] of
 * one head; keep: the batch's key mask or NULL. Writes o rows at out + r*ldo.
 * With out_den/out_max (nq each) the rows get the unnormalized numerators
 * relative to the row max instead, out_den the denominators and out_max the
 * row max (natural-log units).
 */
void tkcpu_flash_rows(const float *const *rows, int nq, const float *K, const float *V, int Nk,
                      int D, int Dv, double scale, const uint8_t *keep, float *out, int ldo,
                      double *out_den, double *out_max, tkcpu_flash_scratch *sc);

#endif

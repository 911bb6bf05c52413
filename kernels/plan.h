/*
 * plan.h -- private to kernels/: what every backend needs to agree on before
 * it computes anything. One call's parameters resolved once (tki_plan: the
 * scales, the feature dimension, the q/k modification in force, the window
 * and far weight of the schedules, the PCA projections), the seeded sampling
 * of rows, the window predicate and the denominator rule. ref and cpu use
 * these, so they sample the same rows, modify q/k the same way and fall back
 * for the same reasons. The cuda backend draws its early-probe and quality
 * rows with tki_sample_indices too (same seeds and salts: cfg->seed with
 * TKI_SALT_PROBE, the stats request's seed with TKI_SALT_QUALITY) and fits
 * its PCA on the same rows (tki_pca_select_rows), so its probe, quality_raw
 * and projections look at ref's rows. Prefix tki_. The math:
 * docs/MATH.md.
 */
#ifndef TK_PLAN_H
#define TK_PLAN_H

#include "kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- seeded sampling ---------------------------------------------- */

/* Salts: each sampled set of a call is drawn from its own stream. */
#define TKI_SALT_PROBE 0x70726f6265ull   /* early-probe queries */
#define TKI_SALT_QUALITY 0x7175616c69ull /* quality queries */
#define TKI_SALT_QK_Q 0x716b5f71ull      /* q rows of the q.k sample */
#define TKI_SALT_QK_K 0x716b5f6bull      /* k rows of the q.k sample */
#define TKI_SALT_PCA 0x706361ull         /* PCA rows */

/* splitmix64 finalizer: a well-mixed 64-bit hash of x. */
uint64_t tki_mix64(uint64_t x);

/*
 * Chooses m = min(count, pool) distinct indices of [0, pool), in increasing
 * order, reproducibly from (seed, salt) (selection sampling: every m-subset
 * equally likely; O(pool)). Writes m entries to out and returns m; returns 0
 * when pool <= 0 or count <= 0.
 */
int64_t tki_sample_indices(uint64_t seed, uint64_t salt, int64_t pool, int64_t count, int64_t *out);

/* ---- local window (SPEC 4) ------------------------------------------ */

typedef struct {
    tk_window_shape shape;
    int radius;      /* W (1d) or r (2d); 0 = every key is in the window */
    int text_tokens; /* tokens [0, text_tokens) are text */
    int grid_h, grid_w; /* image tokens after the text, row-major (2d) */
} tki_window;

/*
 * 1 if key j is in query i's window (the key mask is not consulted):
 *   radius 0            every key
 *   i a text query      every key (i < text_tokens)
 *   1d                  |i - j| <= W
 *   2d                  j is text, or both are image tokens whose grid cells
 *                       differ by at most r in row and in column
 * (2d needs text_tokens + grid_h*grid_w = Nq = Nk; tk_check guarantees it.)
 */
int tki_in_window(const tki_window *w, int64_t i, int64_t j);

/* ---- q/k modification (SPEC 3.3) ------------------------------------ */

typedef struct {
    int active;     /* 0: identity (gated off by qk_norm_sigma_max, or nothing set) */
    int normalize;  /* qk_normalize */
    double power;   /* qk_norm_power (0 = off) */
    double clip;    /* qk_norm_clip (0 = off) */
    double eps;     /* n = ||x|| + eps */
} tki_qkmod;

/* The factor a vector of Euclidean norm `norm` is multiplied by (1 when
 * inactive): normalize: 1/n; else n^-power (power > 0) * min(1, clip/n)
 * (clip > 0), n = norm + eps. */
double tki_qkmod_factor(const tki_qkmod *m, double norm);
/* out[0..n) = x * factor(||x||); out may alias x. */
void tki_qkmod_apply(const tki_qkmod *m, const double *x, int n, double *out);

/* ---- the plan of one call ------------------------------------------- */

/*
 * One call's parameters, resolved from (call, cfg, mode). The projections
 * are borrowed from the context's PCA cache and stay valid until the next
 * call on the same context (or tk_context_reset / close).
 */
typedef struct {
    tk_mode mode;
    int B, H, Nq, Nk, D, Dv;
    double s0;          /* exact scale: call->scale or D^-1/2 */

    /* Taylor feature map (taylor: per sub-head slice; hybrid: far field) */
    int blocks;         /* sub-head blocks b (taylor), 1 otherwise */
    int d;              /* featurized dim: D/b (taylor), g (hybrid), D (exact) */
    int dv;             /* value dim per slice: Dv/b (taylor), Dv otherwise */
    int terms;          /* P: terms (taylor) or global_P (hybrid); 0 for exact */
    double s;           /* feature scale: d^-1/2*scale_mul (taylor),
                           D^-1/2*global_scale_mul (hybrid), s0 (exact) */
    int64_t R;          /* feature count R(d, terms); 0 for exact */
    tki_qkmod mod;      /* q/k modification in force (inactive for exact) */

    /* denominator rule (SPEC 3.1) and probe (3.4) */
    double eps;
    int fallback_on_negative;
    double frac_limit;
    int early_probe;
    int probe_samples;
    uint64_t seed;      /* cfg->seed: probe rows, PCA rows */

    /* hybrid (SPEC 4) */
    tki_window win;     /* window in force (schedule applied) */
    double w;           /* far weight in force */
    tk_combine combine;
    int g;              /* far-field dim: min(global_dim, D) */
    const double *proj; /* [H][g][D] row-major PCA projections of this layer */
    const float *q_far; /* q0, or q when q0 is absent: [B,H,Nq,D] */
    const float *k_far; /* k0, or k when k0 is absent: [B,H,Nk,D] */
} tki_plan;

/*
 * Fills *plan for a call that tk_check accepted in `mode`. For hybrid it
 * fits or reuses the PCA projections of the call's layer (kernels/pca.c),
 * reading q_far/k_far from host memory. Returns 0, or TK_ERR_NOMEM with err
 * filled (the call then falls back with out_of_memory).
 */
int tki_plan_make(tk_context *ctx, const tk_call *call, const tk_config *cfg, tk_mode mode,
                  tki_plan *plan, char *err, size_t errlen);

/*
 * hat = modify(P_h x): the far-field vector (g entries) of a q0/k0 row x (D
 * entries) of head h, fp64.
 */
void tki_far_vector(const tki_plan *plan, int h, const float *x, double *hat);

/*
 * The denominator rule (SPEC 3.1) over n_total denominators of which
 * n_le_eps are <= eps and n_nonfinite NaN/Inf. Returns TK_REASON_NONE or
 * DENOMINATOR_INVALID / DENOMINATOR_TOO_SMALL with detail filled (detail may
 * be NULL). The stage is the caller's to set.
 */
tk_reason tki_denominator_rule(const tki_plan *plan, int64_t n_le_eps, int64_t n_nonfinite,
                               int64_t n_total, char *detail, size_t detail_len);

/* Element count of [a,b,c,d], or -1 when it does not fit in int64 / size_t
 * bytes of `elem` each. */
int64_t tki_elems4(int64_t a, int64_t b, int64_t c, int64_t d, size_t elem);

#ifdef __cplusplus
}
#endif
#endif

/*
 * stats.h -- private to kernels/: the per-call statistics of SPEC 5, computed
 * on the host from a call's inputs and its finished output, the same way for
 * every backend (the cpu backend calls tki_stats_fill with its output; the
 * cuda backend can copy the few rows it needs). Never a full exact attention:
 * exact reference rows only for the sampled queries, as fp64 matrix products
 * (OpenBLAS dgemm) of the sampled rows with every key. Prefix tki_.
 *
 * What is measured (docs/MATH.md, "Statistics"):
 *   quality_raw  o against exact softmax on the unmodified post-RoPE q/k with
 *                s0, for quality_samples sampled queries (the same query
 *                indices for every batch and head; n = B*H*samples rows)
 *   quality_eff  o against the "effective" reference of the mode: the same
 *                computation with the Taylor kernel kappa_P replaced by exp,
 *                i.e. exact: = raw; taylor: per sub-head slice, softmax of
 *                s*q~.k~ on the modified slices; hybrid: the hybrid with an
 *                exact exp far field, on the same window, weight, projection
 *                and modification (docs/MATH.md section 4). The gap between
 *                raw and eff is the cost of modification/projection/window;
 *                eff itself is the truncation error.
 *   den          the denominators the backend accumulated (tki_den_acc)
 *   norms        ||q||, ||k|| of every row (masked keys left out), raw and
 *                modified (taylor: the concatenated modified slices; hybrid:
 *                the modified far-field vectors; exact: = raw)
 *   qk           s0 q.k on a qk_samples x qk_samples sample of (query, key)
 *                indices, every batch and head (masked keys left out)
 *   window_mass  hybrid: share of the raw exact softmax mass inside the
 *                query's window, for the quality queries
 */
#ifndef TK_STATS_H
#define TK_STATS_H

#include "kernels.h"
#include "plan.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Denominator accumulator: add every denominator (before clamping), merge
 * per-thread accumulators, finish into tk_denoms. min/max are over the non-NaN
 * values; a NaN makes the mean NaN (non-finite values are kept, not dropped). */
typedef struct {
    double min, max, sum;
    int64_t n, n_le_eps, n_nonfinite;
} tki_den_acc;

void tki_den_acc_init(tki_den_acc *a);
void tki_den_acc_add(tki_den_acc *a, double den, double eps);
void tki_den_acc_merge(tki_den_acc *into, const tki_den_acc *from);
void tki_den_acc_finish(const tki_den_acc *a, tk_denoms *out);

/*
 * Summary of values[0..n) (min, mean, p50, p90, p99, max; n). Reorders
 * values. Percentiles interpolate linearly between order statistics
 * (position p*(n-1)). NaN orders above +Inf, so a NaN shows in max (and in
 * the mean); n = 0 gives an all-zero summary with n = 0 (not reported).
 */
void tki_dist_summarize(double *values, int64_t n, tk_dist *out);
/* The p-th percentile (0..100) of values[0..n) as above; reorders values. */
double tki_percentile(double *values, int64_t n, double p);

/*
 * Fills *st (and st->have) for a call that produced output o (host f32,
 * [B,H,Nq,Dv]) under plan, reading q/k/v/q0/k0/key_mask from call (host
 * f32). den: the backend's denominators (NULL: none, e.g. exact). req gives
 * quality_samples, qk_samples and the seed. kernel_ms is left to the caller.
 * Returns 0, or TK_ERR_NOMEM with err filled (*st then has have = 0).
 */
int tki_stats_fill(const tki_plan *plan, const tk_call *call, const float *o,
                   const tki_den_acc *den, const tk_stats_request *req, tk_stats *st, char *err,
                   size_t errlen);

#ifdef __cplusplus
}
#endif
#endif

/*
 * pca.h -- private to kernels/: the far-field projections of the hybrid
 * (SPEC 4), one per (layer, head), fitted on sampled q0/k0 rows and cached in
 * the context. ref, cpu and cuda call the same fit, so they project alike.
 *
 * The fit: rows x_1..x_n (both q0 and k0 rows of one head), second-moment
 * matrix C = (1/n) sum x x^T in fp64 (no mean subtraction: the far term needs
 * dot products, and (Px).(Py) ~ x.y is best kept by the top eigenvectors of
 * the uncentered moment), its top g eigenvectors (LAPACK dsyev) as the rows
 * of P [g][D], in decreasing eigenvalue order, each with its largest-magnitude
 * component positive. Fewer than g rows: the truncated identity (P x = the
 * first g coordinates of x). Prefix tki_.
 */
#ifndef TK_PCA_H
#define TK_PCA_H

#include "kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

struct tki_pca_cache;

/* A row of the fit's pool: q0[b, h, n] (is_key 0) or k0[b, h, n] (is_key 1). */
typedef struct {
    int is_key;
    int b;
    int n;
} tki_pca_row;

/*
 * The rows the fit of every head of a call uses (the same for all heads):
 * the pool is every q row (b-major, then token) followed by every kept k row
 * (key_mask NULL = all kept; host memory), and min(count, pool) rows of it
 * are chosen by tki_sample_indices(seed, TKI_SALT_PCA, ...), in pool order.
 * out must hold count entries; returns the number written, or -1 when out of
 * memory.
 */
int64_t tki_pca_select_rows(uint64_t seed, int count, int B, int Nq, int Nk,
                            const uint8_t *key_mask, tki_pca_row *out);

/*
 * Fits P [g][D] on rows [n][D] (fp64, row-major) as described above; g <= D.
 * Returns 0, or nonzero with err filled (out of memory, eigen solver
 * failure); proj is then left as the truncated identity.
 */
int tki_pca_fit(const double *rows, int64_t n, int D, int g, double *proj, char *err,
                size_t errlen);

/*
 * The cache. A layer's entry holds [H][g][D] projections and the step they
 * were fitted at. It is current for (H, D, g) at `step` when those match and
 * refit_every is 0 or fit_step <= step < fit_step + refit_every.
 */
/* Returns the current projections of `layer`, or NULL if a (re)fit is due. */
const double *tki_pca_cache_lookup(const struct tki_pca_cache *c, int layer, int H, int D, int g,
                                   int step, int refit_every);
/* Copies proj [H][g][D] into the cache as layer's entry fitted at `step`,
 * creating the cache (*c) if NULL. Returns the cached copy, or NULL when out
 * of memory (the cache is then unchanged). */
const double *tki_pca_cache_store(struct tki_pca_cache **c, int layer, int H, int D, int g,
                                  int step, const double *proj);
/* Forgets every entry (keeps the cache). */
void tki_pca_cache_clear(struct tki_pca_cache *c);
void tki_pca_cache_free(struct tki_pca_cache *c);
/* Number of fits stored since the cache was made (tests: refit policy). */
int64_t tki_pca_cache_fits(const struct tki_pca_cache *c);

/*
 * Host-memory convenience for ref and cpu: the projections of call->layer,
 * fitted now (on call->q0/k0, or q/k when absent, host f32) if the cache has
 * none current. A call with layer < 0 (unknown) is fitted every time. cfg gives pca_samples, pca_refit_every and seed. *proj stays
 * valid until the next call on ctx. Returns 0 or TK_ERR_NOMEM/TK_ERR.
 */
int tki_pca_get(tk_context *ctx, const tk_call *call, const tk_config *cfg, int g,
                const double **proj, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif
#endif

/*
 * feature_map.h -- private to kernels/: the Taylor feature map of SPEC 3 as a
 * table every backend reuses (ref, cpu, cuda).
 *
 * For d variables and P terms the features are the multi-indices alpha over
 * d dimensions with |alpha| < P, written as non-decreasing index tuples
 * (i_1 <= ... <= i_p), p = |alpha|. Order: by degree p, then lexicographic
 * on the tuple. So feature 0 is the constant, features 1..d are x_0..x_{d-1},
 * then (0,0), (0,1), ..., (d-1,d-1), then the degree-3 tuples, and so on.
 *
 *   psi_alpha(x) = s^{p/2} * x^alpha / sqrt(alpha!)       (alpha! = prod of
 *                                                         repeat-count factorials)
 *   <psi(q), psi(k)> = sum_{p<P} (s q.k)^p / p! = kappa_P(s q.k)
 *
 * Every tuple of degree p >= 1 has a parent: the same tuple without its last
 * index, a feature of degree p-1 that comes earlier in the order. So the
 * monomials are computed in one pass, m[r] = m[parent[r]] * x[last[r]],
 * then psi[r] = m[r] * weight[r] with weight[r] = coef[r] * s^{degree[r]/2}.
 * Prefix tki_.
 */
#ifndef TK_FEATURE_MAP_H
#define TK_FEATURE_MAP_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The feature table of (d, P). All arrays have R entries except idx. */
typedef struct {
    int d;             /* variables */
    int terms;         /* P: degrees 0..P-1 */
    int64_t R;         /* feature count = taylor_feature_count(d, P) */
    int max_degree;    /* P - 1: the stride of idx */
    uint16_t *idx;     /* [R][max_degree] index tuple of feature r, non-decreasing;
                          entries past degree[r] are 0 (NULL when P == 1) */
    uint8_t *degree;   /* [R] |alpha| */
    int32_t *parent;   /* [R] feature of the tuple without its last index; -1 for r = 0 */
    uint16_t *last;    /* [R] last index of the tuple (0 for r = 0) */
    double *coef;      /* [R] 1/sqrt(alpha!) (the weight without s) */
} tki_features;

/*
 * Builds the table of (d, P): 1 <= d <= 65535, 1 <= P <= 255, R at most
 * max_R. Returns 0 with *f filled (caller frees with tki_features_free), or
 * nonzero with err filled and *f zeroed (nothing to free) when the arguments
 * are out of range, R > max_R, or memory runs out.
 */
int tki_features_build(tki_features *f, int d, int terms, int64_t max_R, char *err, size_t errlen);
void tki_features_free(tki_features *f);

/* weight[r] = coef[r] * s^{degree[r]/2}; weight has f->R entries. */
void tki_features_weights(const tki_features *f, double s, double *weight);

/*
 * psi = features of x (x has f->d entries, psi f->R). weight from
 * tki_features_weights. fp64 throughout. psi must not alias x.
 */
void tki_features_eval(const tki_features *f, const double *x, const double *weight, double *psi);
/* The same in float (for the fast backends). */
void tki_features_eval_f32(const tki_features *f, const float *x, const float *weight, float *psi);

/* kappa_P(x) = sum_{p<P} x^p / p!, summed in fp64. */
double tki_kappa(int terms, double x);

#ifdef __cplusplus
}
#endif
#endif

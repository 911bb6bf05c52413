/*
 * features.c -- R(d,P) and the multi-index feature table (see feature_map.h and
 * docs/MATH.md for the math).
 */
#include "feature_map.h"

#include "kernels.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int64_t taylor_feature_count(int d, int terms) {
    if (d < 1 || terms < 1) return 0;
    /* C(d+P-1, P-1) built as prod_{i=1}^{P-1} (d+i)/i: every partial
     * product is itself a binomial coefficient, so each division is exact. */
    uint64_t r = 1;
    for (int i = 1; i < terms; i++) {
        uint64_t num = (uint64_t)d + (uint64_t)i;
        if (r > UINT64_MAX / num) return -1;
        r = r * num / (uint64_t)i;
        if (r > (uint64_t)INT64_MAX) return -1;
    }
    return (int64_t)r;
}

void tki_features_free(tki_features *f) {
    if (!f) return;
    free(f->idx);
    free(f->degree);
    free(f->parent);
    free(f->last);
    free(f->coef);
    memset(f, 0, sizeof *f);
}

static double factorial(int n) {
    double r = 1;
    for (int i = 2; i <= n; i++) r *= i;
    return r;
}

int tki_features_build(tki_features *f, int d, int terms, int64_t max_R, char *err, size_t errlen) {
    memset(f, 0, sizeof *f);
    if (d < 1 || d > 65535 || terms < 1 || terms > 255) {
        snprintf(err, errlen, "feature map: d=%d, P=%d out of range (1..65535, 1..255)", d, terms);
        return TK_ERR;
    }
    int64_t R = taylor_feature_count(d, terms);
    if (R < 0 || R > max_R) {
        snprintf(err, errlen, "feature map: R(%d,%d) exceeds the limit %lld", d, terms,
                 (long long)max_R);
        return TK_ERR;
    }
    int maxdeg = terms - 1;
    f->d = d;
    f->terms = terms;
    f->R = R;
    f->max_degree = maxdeg;
    size_t n = (size_t)R;
    f->degree = malloc(n * sizeof *f->degree);
    f->parent = malloc(n * sizeof *f->parent);
    f->last = malloc(n * sizeof *f->last);
    f->coef = malloc(n * sizeof *f->coef);
    if (maxdeg > 0) f->idx = calloc(n * (size_t)maxdeg, sizeof *f->idx);
    if (!f->degree || !f->parent || !f->last || !f->coef || (maxdeg > 0 && !f->idx)) {
        tki_features_free(f);
        snprintf(err, errlen, "feature map: out of memory for R=%lld", (long long)R);
        return TK_ERR_NOMEM;
    }

    /* Feature 0: the constant. */
    f->degree[0] = 0;
    f->parent[0] = -1;
    f->last[0] = 0;
    f->coef[0] = 1;
    int64_t r = 1;
    /* Degree p: every tuple is a tuple of degree p-1 extended by an index >=
     * its last one. Walking the degree-(p-1) features in their (lexicographic)
     * order and, for each, the extensions in increasing order yields the
     * degree-p tuples in lexicographic order. */
    int64_t prev_begin = 0, prev_end = 1; /* degree-0 range */
    uint16_t tuple[256];
    for (int p = 1; p <= maxdeg; p++) {
        int64_t begin = r;
        for (int64_t a = prev_begin; a < prev_end; a++) {
            int pd = p - 1;
            for (int t = 0; t < pd; t++) tuple[t] = f->idx[(size_t)a * maxdeg + t];
            int lo = pd > 0 ? tuple[pd - 1] : 0;
            for (int i = lo; i < d; i++) {
                tuple[pd] = (uint16_t)i;
                for (int t = 0; t < p; t++) f->idx[(size_t)r * maxdeg + t] = tuple[t];
                f->degree[r] = (uint8_t)p;
                f->parent[r] = (int32_t)a;
                f->last[r] = (uint16_t)i;
                /* alpha! = product of factorials of the runs of equal indices */
                double afact = 1;
                int run = 1;
                for (int t = 1; t <= p; t++) {
                    if (t < p && tuple[t] == tuple[t - 1]) {
                        run++;
                    } else {
                        afact *= factorial(run);
                        run = 1;
                    }
                }
                f->coef[r] = 1.0 / sqrt(afact);
                r++;
            }
        }
        prev_begin = begin;
        prev_end = r;
    }
    if (r != R) { /* cannot happen: the count formula and the walk agree */
        tki_features_free(f);
        snprintf(err, errlen, "feature map: generated %lld features, expected %lld",
                 (long long)r, (long long)R);
        return TK_ERR;
    }
    return TK_OK;
}

void tki_features_weights(const tki_features *f, double s, double *weight) {
    double pow_half[256];
    double sq = sqrt(s);
    pow_half[0] = 1;
    for (int p = 1; p <= f->max_degree; p++) pow_half[p] = pow_half[p - 1] * sq;
    for (int64_t r = 0; r < f->R; r++) weight[r] = f->coef[r] * pow_half[f->degree[r]];
}

void tki_features_eval(const tki_features *f, const double *x, const double *weight, double *psi) {
    /* Monomials first (a parent precedes its children), then the weights. */
    psi[0] = 1;
    for (int64_t r = 1; r < f->R; r++) psi[r] = psi[f->parent[r]] * x[f->last[r]];
    for (int64_t r = 0; r < f->R; r++) psi[r] *= weight[r];
}

void tki_features_eval_f32(const tki_features *f, const float *x, const float *weight, float *psi) {
    psi[0] = 1;
    for (int64_t r = 1; r < f->R; r++) psi[r] = psi[f->parent[r]] * x[f->last[r]];
    for (int64_t r = 0; r < f->R; r++) psi[r] *= weight[r];
}

double tki_kappa(int terms, double x) {
    double sum = 0, term = 1;
    for (int p = 0; p < terms; p++) {
        sum += term;
        term *= x / (p + 1);
    }
    return sum;
}

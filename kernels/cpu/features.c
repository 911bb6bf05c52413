/*
 * features.c -- feature blocks of the cpu backend: the shared table of
 * kernels/feature_map.h laid out for vector rows. Φ is feature-major,
 * [R][ld]: row r holds feature r of the block's ld tokens, so a row is
 * Φ_parent(r) ∘ X_last(r) times the constant weight[r] / weight[parent[r]]
 * (weight = coef * s^{degree/2}, never 0) -- one vector multiply per feature,
 * whatever the degree.
 */
#include "cpu.h"

#include "feature_map.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int tkcpu_fmap_make(tkcpu_fmap *fm, int d, int terms, double s, int64_t R, int ld) {
    memset(fm, 0, sizeof *fm);
    tki_features *f = calloc(1, sizeof *f);
    if (!f) return TK_ERR_NOMEM;
    char err[160];
    if (tki_features_build(f, d, terms, R, err, sizeof err) != TK_OK) {
        free(f);
        return TK_ERR_NOMEM;
    }
    double *w = malloc((size_t)f->R * sizeof *w);
    fm->ratio = malloc((size_t)f->R * sizeof *fm->ratio);
    if (!w || !fm->ratio) {
        free(w);
        free(fm->ratio);
        tki_features_free(f);
        free(f);
        fm->ratio = NULL;
        return TK_ERR_NOMEM;
    }
    tki_features_weights(f, s, w);
    fm->ratio[0] = 1.0f;
    for (int64_t r = 1; r < f->R; r++) fm->ratio[r] = (float)(w[r] / w[f->parent[r]]);
    free(w);
    fm->R = (int)f->R;
    fm->d = d;
    fm->ld = ld;
    fm->parent = f->parent;
    fm->last = f->last;
    fm->table = f;
    return TK_OK;
}

void tkcpu_fmap_free(tkcpu_fmap *fm) {
    if (fm->table) {
        tki_features_free(fm->table);
        free(fm->table);
    }
    free(fm->ratio);
    memset(fm, 0, sizeof *fm);
}

void tkcpu_features_block(const tkcpu_fmap *fm, const float *const *rows, const float *factor, int n,
                          float *x, float *phi) {
    const int d = fm->d, ld = fm->ld;
    for (int j = 0; j < n; j++) {
        const float *src = rows[j];
        float fac = factor ? factor[j] : 1.0f;
        for (int e = 0; e < d; e++) x[(size_t)e * ld + j] = src[e] * fac;
    }
    int cols = (n + 15) / 16 * 16;
    for (int e = 0; e < d; e++)
        for (int j = n; j < cols; j++) x[(size_t)e * ld + j] = 0;
    for (int j = 0; j < cols; j++) phi[j] = 1.0f;
    tkcpu_feature_rows(phi, ld, cols, fm->parent, fm->last, fm->ratio, fm->R, x);
}

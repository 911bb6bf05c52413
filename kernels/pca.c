/*
 * pca.c -- the per-(layer, head) PCA projections of the hybrid far field
 * (see pca.h for the fit and the cache policy).
 */
#include "pca.h"

#include "internal.h"
#include "plan.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* LAPACK (shipped inside OpenBLAS): symmetric eigen decomposition, eigenvalues
 * ascending, eigenvectors in the columns of a (column-major). The trailing
 * arguments are the hidden lengths of the two character arguments. */
extern void dsyev_(const char *jobz, const char *uplo, const int *n, double *a, const int *lda,
                   double *w, double *work, const int *lwork, int *info, size_t jobz_len,
                   size_t uplo_len);

typedef struct {
    int layer, H, D, g, fit_step;
    double *proj; /* [H][g][D] */
} pca_entry;

struct tki_pca_cache {
    pca_entry *entries;
    int count, cap;
    int64_t fits;
};

int64_t tki_pca_select_rows(uint64_t seed, int count, int B, int Nq, int Nk,
                            const uint8_t *key_mask, tki_pca_row *out) {
    int64_t nq = (int64_t)B * Nq;
    int64_t nk = 0;
    for (int b = 0; b < B; b++)
        for (int j = 0; j < Nk; j++) nk += !key_mask || key_mask[(size_t)b * Nk + j];
    int64_t pool = nq + nk;
    if (count <= 0 || pool <= 0) return 0;
    int64_t m = count < pool ? count : pool;
    int64_t *idx = malloc((size_t)m * sizeof *idx);
    if (!idx) return -1;
    m = tki_sample_indices(seed, TKI_SALT_PCA, pool, m, idx);
    /* idx is increasing: walk the pool once. */
    int64_t t = 0, pos = 0;
    for (int b = 0; b < B && t < m; b++)
        for (int i = 0; i < Nq && t < m; i++, pos++)
            if (idx[t] == pos) out[t++] = (tki_pca_row){0, b, i};
    for (int b = 0; b < B && t < m; b++)
        for (int j = 0; j < Nk && t < m; j++) {
            if (key_mask && !key_mask[(size_t)b * Nk + j]) continue;
            if (idx[t] == pos) out[t++] = (tki_pca_row){1, b, j};
            pos++;
        }
    free(idx);
    return t;
}

static void truncated_identity(int D, int g, double *proj) {
    memset(proj, 0, (size_t)g * D * sizeof *proj);
    for (int r = 0; r < g; r++) proj[(size_t)r * D + r] = 1;
}

int tki_pca_fit(const double *rows, int64_t n, int D, int g, double *proj, char *err,
                size_t errlen) {
    truncated_identity(D, g, proj);
    if (n < g) return TK_OK;
    double *cov = calloc((size_t)D * D, sizeof *cov);
    double *eval = malloc((size_t)D * sizeof *eval);
    if (!cov || !eval) {
        free(cov);
        free(eval);
        snprintf(err, errlen, "PCA fit: out of memory (D=%d)", D);
        return TK_ERR_NOMEM;
    }
    /* Upper triangle (row-major) = lower triangle (column-major) of C. */
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, D, (int)n, 1.0 / (double)n, rows, D, 0.0,
                cov, D);
    int nn = D, lda = D, info = 0, lwork = -1;
    double wquery = 0;
    dsyev_("V", "L", &nn, cov, &lda, eval, &wquery, &lwork, &info, 1, 1);
    lwork = info == 0 && wquery >= 1 ? (int)wquery : 3 * D;
    double *work = malloc((size_t)lwork * sizeof *work);
    if (!work) {
        free(cov);
        free(eval);
        snprintf(err, errlen, "PCA fit: out of memory (D=%d)", D);
        return TK_ERR_NOMEM;
    }
    dsyev_("V", "L", &nn, cov, &lda, eval, work, &lwork, &info, 1, 1);
    free(work);
    if (info != 0) {
        free(cov);
        free(eval);
        snprintf(err, errlen, "PCA fit: eigen solver failed (info=%d)", info);
        return TK_ERR;
    }
    /* Column c of the column-major result = eigenvector of eval[c]; the
     * largest eigenvalues are last. */
    for (int r = 0; r < g; r++) {
        const double *vec = cov + (size_t)(D - 1 - r) * D;
        int big = 0;
        for (int i = 1; i < D; i++)
            if (fabs(vec[i]) > fabs(vec[big])) big = i;
        double sign = vec[big] < 0 ? -1.0 : 1.0;
        for (int i = 0; i < D; i++) proj[(size_t)r * D + i] = sign * vec[i];
    }
    free(cov);
    free(eval);
    return TK_OK;
}

static pca_entry *find_entry(const struct tki_pca_cache *c, int layer) {
    if (!c) return NULL;
    for (int i = 0; i < c->count; i++)
        if (c->entries[i].layer == layer) return &c->entries[i];
    return NULL;
}

const double *tki_pca_cache_lookup(const struct tki_pca_cache *c, int layer, int H, int D, int g,
                                   int step, int refit_every) {
    const pca_entry *e = find_entry(c, layer);
    if (!e || e->H != H || e->D != D || e->g != g) return NULL;
    if (refit_every > 0 && (step < e->fit_step || (int64_t)step - e->fit_step >= refit_every))
        return NULL;
    return e->proj;
}

const double *tki_pca_cache_store(struct tki_pca_cache **cp, int layer, int H, int D, int g,
                                  int step, const double *proj) {
    if (!*cp) {
        *cp = calloc(1, sizeof **cp);
        if (!*cp) return NULL;
    }
    struct tki_pca_cache *c = *cp;
    size_t n = (size_t)H * g * D;
    double *copy = malloc(n * sizeof *copy);
    if (!copy) return NULL;
    memcpy(copy, proj, n * sizeof *copy);
    pca_entry *e = find_entry(c, layer);
    if (!e) {
        if (c->count == c->cap) {
            int cap = c->cap ? 2 * c->cap : 16;
            pca_entry *grown = realloc(c->entries, (size_t)cap * sizeof *grown);
            if (!grown) {
                free(copy);
                return NULL;
            }
            c->entries = grown;
            c->cap = cap;
        }
        e = &c->entries[c->count++];
        e->proj = NULL;
        e->layer = layer;
    }
    free(e->proj);
    e->proj = copy;
    e->H = H;
    e->D = D;
    e->g = g;
    e->fit_step = step;
    c->fits++;
    return copy;
}

void tki_pca_cache_clear(struct tki_pca_cache *c) {
    if (!c) return;
    for (int i = 0; i < c->count; i++) free(c->entries[i].proj);
    c->count = 0;
}

void tki_pca_cache_free(struct tki_pca_cache *c) {
    if (!c) return;
    tki_pca_cache_clear(c);
    free(c->entries);
    free(c);
}

int64_t tki_pca_cache_fits(const struct tki_pca_cache *c) { return c ? c->fits : 0; }

int tki_pca_get(tk_context *ctx, const tk_call *call, const tk_config *cfg, int g,
                const double **proj, char *err, size_t errlen) {
    int H = call->H, D = call->D, B = call->B, Nq = call->Nq, Nk = call->Nk;
    /* layer < 0 (unknown): no key to cache under, so every call fits anew */
    const double *cached =
        call->layer < 0 ? NULL
                        : tki_pca_cache_lookup(ctx->pca, call->layer, H, D, g, call->step,
                                               cfg->pca_refit_every);
    if (cached) {
        *proj = cached;
        return TK_OK;
    }
    const float *qf = (const float *)(call->q0 ? call->q0 : call->q);
    const float *kf = (const float *)(call->k0 ? call->k0 : call->k);
    int count = cfg->pca_samples;
    tki_pca_row *sel = malloc((size_t)(count > 0 ? count : 1) * sizeof *sel);
    double *all = malloc((size_t)H * g * D * sizeof *all);
    double *rows = malloc((size_t)(count > 0 ? count : 1) * D * sizeof *rows);
    int64_t n = sel ? tki_pca_select_rows((uint64_t)cfg->seed, count, B, Nq, Nk, call->key_mask, sel)
                    : -1;
    int rc = TK_OK;
    if (!sel || !all || !rows || n < 0) {
        snprintf(err, errlen, "PCA fit: out of memory (%d rows of %d)", count, D);
        rc = TK_ERR_NOMEM;
        goto done;
    }
    for (int h = 0; h < H && rc == TK_OK; h++) {
        for (int64_t t = 0; t < n; t++) {
            const tki_pca_row *r = &sel[t];
            const float *src = r->is_key
                                   ? kf + (((size_t)r->b * H + h) * Nk + r->n) * D
                                   : qf + (((size_t)r->b * H + h) * Nq + r->n) * D;
            for (int i = 0; i < D; i++) rows[(size_t)t * D + i] = src[i];
        }
        rc = tki_pca_fit(rows, n, D, g, all + (size_t)h * g * D, err, errlen);
    }
    if (rc == TK_OK) {
        *proj = tki_pca_cache_store(&ctx->pca, call->layer, H, D, g, call->step, all);
        if (!*proj) {
            snprintf(err, errlen, "PCA cache: out of memory");
            rc = TK_ERR_NOMEM;
        }
    }
done:
    free(sel);
    free(all);
    free(rows);
    return rc;
}

/*
 * taylor.c -- reference Taylor attention (SPEC 3), fp64.
 *
 * For every (batch, head, slice c of the b sub-head blocks), with d = D/b,
 * dv = Dv/b, s = d^-1/2 * scale_mul and x~ = the q/k modification of x's
 * slice (SPEC 3.3):
 *   z     = sum_{kept j} psi(k~_j)                   (R)
 *   S     = sum_{kept j} psi(k~_j) v_{j,c}^T         (R x dv)
 *   den_i = psi(q~_i) . z
 *   o_i,c = psi(q~_i)^T S / max(den_i, eps)
 * The denominator rule (SPEC 3.1) is applied over all den of the call (every
 * batch, head, slice and query): NaN/Inf -> denominator_invalid; with
 * fallback_on_negative, n = #{den <= eps} > 0 (limit 0) or n/total > limit
 * -> denominator_too_small (stage full). The early probe (SPEC 3.4) applies
 * the same rule to the probe queries' den right after z, before S: stage
 * probe. The passes are written out one after the other for clarity: the
 * probe pass builds z, the full pass builds z and S again.
 */
#include "ref.h"

#include "feature_map.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Workspace of one slice. */
typedef struct {
    tki_features f;
    double *weight; /* R */
    double *z;      /* R */
    double *S;      /* R x dv */
    double *psi;    /* R */
    double *x;      /* d: a modified slice */
    int64_t *probe; /* probe query indices */
    int64_t n_probe;
} work;

static void work_free(work *w) {
    tki_features_free(&w->f);
    free(w->weight);
    free(w->z);
    free(w->S);
    free(w->psi);
    free(w->x);
    free(w->probe);
}

/* x~ = modify(slice c of row), as doubles into w->x. */
static void modified_slice(const tki_plan *p, const float *row, int c, double *x) {
    for (int i = 0; i < p->d; i++) x[i] = row[(size_t)c * p->d + i];
    tki_qkmod_apply(&p->mod, x, p->d, x);
}

/* z (and S when with_S) of slice c of head (b, h). */
static void build_sums(const tki_plan *p, const tk_call *call, work *w, int b, int h, int c,
                       int with_S) {
    const int Nk = p->Nk, D = p->D, Dv = p->Dv, dv = p->dv;
    const int64_t R = w->f.R;
    size_t bh = (size_t)b * p->H + h;
    const float *kh = (const float *)call->k + bh * Nk * D;
    const float *vh = (const float *)call->v + bh * Nk * Dv;
    const uint8_t *mask = call->key_mask ? call->key_mask + (size_t)b * Nk : NULL;
    memset(w->z, 0, (size_t)R * sizeof *w->z);
    if (with_S) memset(w->S, 0, (size_t)R * dv * sizeof *w->S);
    for (int j = 0; j < Nk; j++) {
        if (mask && !mask[j]) continue;
        modified_slice(p, kh + (size_t)j * D, c, w->x);
        tki_features_eval(&w->f, w->x, w->weight, w->psi);
        const float *vj = vh + (size_t)j * Dv + (size_t)c * dv;
        for (int64_t r = 0; r < R; r++) {
            w->z[r] += w->psi[r];
            if (with_S)
                for (int e = 0; e < dv; e++) w->S[(size_t)r * dv + e] += w->psi[r] * vj[e];
        }
    }
}

/* den of query i of slice c of head (b, h), with z built; leaves psi(q~_i)
 * in w->psi. */
static double query_den(const tki_plan *p, const tk_call *call, work *w, int b, int h, int c,
                        int64_t i) {
    size_t bh = (size_t)b * p->H + h;
    const float *qi = (const float *)call->q + (bh * p->Nq + (size_t)i) * p->D;
    modified_slice(p, qi, c, w->x);
    tki_features_eval(&w->f, w->x, w->weight, w->psi);
    double den = 0;
    for (int64_t r = 0; r < w->f.R; r++) den += w->psi[r] * w->z[r];
    return den;
}

int tkref_taylor(const tki_plan *p, const tk_call *call, double *o64, tki_den_acc *den,
                 tk_result *res) {
    const int B = p->B, H = p->H, Nq = p->Nq, Dv = p->Dv, dv = p->dv, nb = p->blocks;
    work w;
    memset(&w, 0, sizeof w);
    char err[128];
    int rc = tki_features_build(&w.f, p->d, p->terms, p->R, err, sizeof err);
    if (rc != TK_OK) return TK_ERR_NOMEM;
    const int64_t R = w.f.R;
    double *dens = malloc((size_t)B * H * nb * Nq * sizeof *dens);
    w.weight = malloc((size_t)R * sizeof *w.weight);
    w.z = malloc((size_t)R * sizeof *w.z);
    w.S = malloc((size_t)R * dv * sizeof *w.S);
    w.psi = malloc((size_t)R * sizeof *w.psi);
    w.x = malloc((size_t)p->d * sizeof *w.x);
    w.probe = malloc((size_t)p->probe_samples * sizeof *w.probe);
    if (!dens || !w.weight || !w.z || !w.S || !w.psi || !w.x || !w.probe) {
        rc = TK_ERR_NOMEM;
        goto done;
    }
    tki_features_weights(&w.f, p->s, w.weight);

    /* Early probe: den of the sampled queries, every head and slice. */
    if (p->early_probe) {
        w.n_probe = tki_sample_indices(p->seed, TKI_SALT_PROBE, Nq, p->probe_samples, w.probe);
        int64_t n_le = 0, n_bad = 0, n_all = 0;
        for (int b = 0; b < B; b++)
            for (int h = 0; h < H; h++)
                for (int c = 0; c < nb; c++) {
                    build_sums(p, call, &w, b, h, c, 0);
                    for (int64_t t = 0; t < w.n_probe; t++) {
                        double d = query_den(p, call, &w, b, h, c, w.probe[t]);
                        n_all++;
                        n_bad += !isfinite(d);
                        n_le += d <= p->eps;
                    }
                }
        res->reason = tki_denominator_rule(p, n_le, n_bad, n_all, res->detail, sizeof res->detail);
        if (res->reason != TK_REASON_NONE) {
            res->stage = TK_STAGE_PROBE;
            goto done;
        }
    }

    /* Full pass: numerators into o64, denominators into dens. */
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int c = 0; c < nb; c++) {
                build_sums(p, call, &w, b, h, c, 1);
                for (int i = 0; i < Nq; i++) {
                    double d = query_den(p, call, &w, b, h, c, i);
                    dens[(((size_t)b * H + h) * nb + c) * Nq + i] = d;
                    double *out = o64 + (((size_t)b * H + h) * Nq + i) * Dv + (size_t)c * dv;
                    for (int e = 0; e < dv; e++) out[e] = 0;
                    for (int64_t r = 0; r < R; r++)
                        for (int e = 0; e < dv; e++) out[e] += w.psi[r] * w.S[(size_t)r * dv + e];
                }
            }
    int64_t n_le = 0, n_bad = 0, n_all = (int64_t)B * H * nb * Nq;
    for (int64_t t = 0; t < n_all; t++) {
        tki_den_acc_add(den, dens[t], p->eps);
        n_bad += !isfinite(dens[t]);
        n_le += dens[t] <= p->eps;
    }
    res->reason = tki_denominator_rule(p, n_le, n_bad, n_all, res->detail, sizeof res->detail);
    if (res->reason != TK_REASON_NONE) {
        res->stage = TK_STAGE_FULL;
        goto done;
    }
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int c = 0; c < nb; c++)
                for (int i = 0; i < Nq; i++) {
                    double d = dens[(((size_t)b * H + h) * nb + c) * Nq + i];
                    if (d <= p->eps) d = p->eps;
                    double *out = o64 + (((size_t)b * H + h) * Nq + i) * Dv + (size_t)c * dv;
                    for (int e = 0; e < dv; e++) out[e] /= d;
                }
done:
    work_free(&w);
    free(dens);
    return rc;
}

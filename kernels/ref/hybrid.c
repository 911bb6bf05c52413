/*
 * hybrid.c -- reference hybrid attention (SPEC 4), fp64.
 *
 * Per (batch, head), W_i = the kept keys in query i's window (plan.h):
 *   local   m_i = max_{j in W_i} s0 q_i.k_j
 *           N_loc = sum_{W_i} e^{s0 q_i.k_j - m_i} v_j,  D_loc = sum_{W_i} e^{...}
 *   far     q^_i = modify(P_h q0_i), k^_j = modify(P_h k0_j)  (g dims)
 *           kappa_ij = kappa_P(s q^_i.k^_j) = psi(q^_i).psi(k^_j), s = D^-1/2 global_scale_mul
 *           D_far = psi(q^_i).z, N_far = psi(q^_i)^T S   (z, S over every kept key)
 *           D_win = sum_{W_i} kappa_ij, N_win = sum_{W_i} kappa_ij v_j
 *   normalized  Df = D_far - D_win, Nf = N_far - N_win
 *               o_i = (N_loc + w e^{-m_i} Nf) / (D_loc + w e^{-m_i} Df)
 *               Df <= 0: the far term is dropped (o_i = N_loc/D_loc); a
 *               query whose window holds every kept key has no far term.
 *   additive    o_i = N_loc/D_loc + w N_far/D_far  (D_far <= 0: far dropped)
 *   w = 0: o_i = N_loc/D_loc (no far field computed at all).
 * Every far denominator that is used (Df, or D_far for additive) goes to the
 * denominator stats; any NaN/Inf among them -> denominator_invalid.
 */
#include "ref.h"

#include "feature_map.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int tkref_hybrid(const tki_plan *p, const tk_call *call, double *o64, tki_den_acc *den,
                 tk_result *res) {
    const int B = p->B, H = p->H, Nq = p->Nq, Nk = p->Nk, D = p->D, Dv = p->Dv, g = p->g;
    const int far = p->w > 0 && p->proj != NULL;
    tki_features f;
    memset(&f, 0, sizeof f);
    char err[128];
    int64_t R = 0;
    if (far) {
        if (tki_features_build(&f, g, p->terms, p->R, err, sizeof err) != TK_OK) return TK_ERR_NOMEM;
        R = f.R;
    }
    double *logit = malloc((size_t)Nk * sizeof *logit);
    double *khat = malloc((size_t)Nk * (g > 0 ? g : 1) * sizeof *khat);
    double *qhat = malloc((size_t)(g > 0 ? g : 1) * sizeof *qhat);
    double *weight = malloc((size_t)(R > 0 ? R : 1) * sizeof *weight);
    double *psi = malloc((size_t)(R > 0 ? R : 1) * sizeof *psi);
    double *z = malloc((size_t)(R > 0 ? R : 1) * sizeof *z);
    double *S = malloc((size_t)(R > 0 ? R : 1) * Dv * sizeof *S);
    double *nloc = malloc((size_t)Dv * sizeof *nloc), *nfar = malloc((size_t)Dv * sizeof *nfar);
    double *nwin = malloc((size_t)Dv * sizeof *nwin);
    int rc = TK_OK;
    int64_t n_bad = 0, n_all = 0;
    if (!logit || !khat || !qhat || !weight || !psi || !z || !S || !nloc || !nfar || !nwin) {
        rc = TK_ERR_NOMEM;
        goto done;
    }
    if (far) tki_features_weights(&f, p->s, weight);

    for (int b = 0; b < B; b++) {
        const uint8_t *mask = call->key_mask ? call->key_mask + (size_t)b * Nk : NULL;
        int kept_total = 0;
        for (int j = 0; j < Nk; j++) kept_total += !mask || mask[j];
        for (int h = 0; h < H; h++) {
            size_t bh = (size_t)b * H + h;
            const float *qh = (const float *)call->q + bh * Nq * D;
            const float *kh = (const float *)call->k + bh * Nk * D;
            const float *vh = (const float *)call->v + bh * Nk * Dv;
            const float *q0h = p->q_far + bh * Nq * D, *k0h = p->k_far + bh * Nk * D;

            /* far field sums over every kept key */
            if (far) {
                memset(z, 0, (size_t)R * sizeof *z);
                memset(S, 0, (size_t)R * Dv * sizeof *S);
                for (int j = 0; j < Nk; j++) {
                    if (mask && !mask[j]) continue;
                    tki_far_vector(p, h, k0h + (size_t)j * D, khat + (size_t)j * g);
                    tki_features_eval(&f, khat + (size_t)j * g, weight, psi);
                    for (int64_t r = 0; r < R; r++) {
                        z[r] += psi[r];
                        for (int e = 0; e < Dv; e++) S[(size_t)r * Dv + e] += psi[r] * vh[(size_t)j * Dv + e];
                    }
                }
            }

            for (int i = 0; i < Nq; i++) {
                double *out = o64 + (bh * Nq + i) * Dv;
                /* local softmax sums over the window */
                double m = -INFINITY;
                int in_window = 0;
                for (int j = 0; j < Nk; j++) {
                    logit[j] = -INFINITY;
                    if ((mask && !mask[j]) || !tki_in_window(&p->win, i, j)) continue;
                    double s = 0;
                    for (int c = 0; c < D; c++) s += (double)qh[(size_t)i * D + c] * kh[(size_t)j * D + c];
                    logit[j] = p->s0 * s;
                    if (logit[j] > m) m = logit[j];
                    in_window++;
                }
                double dloc = 0;
                for (int e = 0; e < Dv; e++) nloc[e] = 0;
                for (int j = 0; j < Nk; j++) {
                    if (logit[j] == -INFINITY) continue;
                    double ex = exp(logit[j] - m);
                    dloc += ex;
                    for (int e = 0; e < Dv; e++) nloc[e] += ex * vh[(size_t)j * Dv + e];
                }
                for (int e = 0; e < Dv; e++) out[e] = nloc[e] / dloc;
                if (!far) continue;
                if (p->combine == TK_COMBINE_NORMALIZED && in_window == kept_total) continue;

                /* far field of this query */
                tki_far_vector(p, h, q0h + (size_t)i * D, qhat);
                tki_features_eval(&f, qhat, weight, psi);
                double dfar = 0;
                for (int e = 0; e < Dv; e++) nfar[e] = 0;
                for (int64_t r = 0; r < R; r++) {
                    dfar += psi[r] * z[r];
                    for (int e = 0; e < Dv; e++) nfar[e] += psi[r] * S[(size_t)r * Dv + e];
                }
                if (p->combine == TK_COMBINE_ADDITIVE) {
                    tki_den_acc_add(den, dfar, p->eps);
                    n_all++;
                    if (!isfinite(dfar)) n_bad++;
                    if (!(dfar > 0)) continue; /* far term dropped */
                    for (int e = 0; e < Dv; e++) out[e] += p->w * nfar[e] / dfar;
                    continue;
                }
                /* normalized: take the window's keys out of the far sums */
                double dwin = 0;
                for (int e = 0; e < Dv; e++) nwin[e] = 0;
                for (int j = 0; j < Nk; j++) {
                    if (logit[j] == -INFINITY) continue;
                    double dotp = 0;
                    for (int c = 0; c < g; c++) dotp += qhat[c] * khat[(size_t)j * g + c];
                    double kap = tki_kappa(p->terms, p->s * dotp);
                    dwin += kap;
                    for (int e = 0; e < Dv; e++) nwin[e] += kap * vh[(size_t)j * Dv + e];
                }
                double df = dfar - dwin;
                tki_den_acc_add(den, df, p->eps);
                n_all++;
                if (!isfinite(df)) n_bad++;
                if (!(df > 0)) continue; /* far term dropped */
                double scale = p->w * exp(-m);
                for (int e = 0; e < Dv; e++) {
                    double nf = nfar[e] - nwin[e];
                    out[e] = isfinite(scale) ? (nloc[e] + scale * nf) / (dloc + scale * df) : nf / df;
                }
            }
        }
    }
    if (n_bad > 0)
        res->reason = tki_denominator_rule(p, 0, n_bad, n_all, res->detail, sizeof res->detail);
    if (res->reason != TK_REASON_NONE) res->stage = TK_STAGE_FULL;
done:
    tki_features_free(&f);
    free(logit);
    free(khat);
    free(qhat);
    free(weight);
    free(psi);
    free(z);
    free(S);
    free(nloc);
    free(nfar);
    free(nwin);
    return rc;
}

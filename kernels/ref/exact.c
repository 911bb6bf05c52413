/*
 * exact.c -- reference exact attention (SPEC 2):
 *   o_i = sum_j softmax_j(s0 q_i.k_j) v_j  over the kept keys,
 * in fp64 with the row maximum subtracted before exp.
 */
#include "ref.h"

#include <math.h>
#include <stdlib.h>

int tkref_exact(const tki_plan *p, const tk_call *call, double *o64) {
    const int Nq = p->Nq, Nk = p->Nk, D = p->D, Dv = p->Dv;
    const float *q = call->q, *k = call->k, *v = call->v;
    double *logit = malloc((size_t)Nk * sizeof *logit);
    if (!logit) return TK_ERR_NOMEM;
    for (int b = 0; b < p->B; b++) {
        const uint8_t *mask = call->key_mask ? call->key_mask + (size_t)b * Nk : NULL;
        for (int h = 0; h < p->H; h++) {
            size_t bh = (size_t)b * p->H + h;
            const float *qh = q + bh * Nq * D, *kh = k + bh * Nk * D, *vh = v + bh * Nk * Dv;
            for (int i = 0; i < Nq; i++) {
                double *out = o64 + (bh * Nq + i) * Dv;
                double m = -INFINITY;
                for (int j = 0; j < Nk; j++) {
                    if (mask && !mask[j]) continue;
                    double s = 0;
                    for (int c = 0; c < D; c++) s += (double)qh[(size_t)i * D + c] * kh[(size_t)j * D + c];
                    logit[j] = p->s0 * s;
                    if (logit[j] > m) m = logit[j];
                }
                double sum = 0;
                for (int c = 0; c < Dv; c++) out[c] = 0;
                for (int j = 0; j < Nk; j++) {
                    if (mask && !mask[j]) continue;
                    double e = exp(logit[j] - m);
                    sum += e;
                    for (int c = 0; c < Dv; c++) out[c] += e * vh[(size_t)j * Dv + c];
                }
                for (int c = 0; c < Dv; c++) out[c] /= sum;
            }
        }
    }
    free(logit);
    return TK_OK;
}

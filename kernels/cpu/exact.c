/*
 * exact.c -- exact softmax attention on the cpu backend (SPEC 2), float32.
 *
 * Per (batch, head, block of TKCPU_QBLOCK queries), keys in blocks of
 * TKCPU_KBLOCK, never more than a query block x key block of logits:
 *   S   = (s0 log2 e) Q_blk K_blkᵀ                      (sgemm)
 *   m'  = max(m, rowmax S)     (masked keys: -inf)
 *   P   = 2^(S - m'),  l = l 2^(m - m') + rowsum P        (vec.c, fp64 sums)
 *   O   = O 2^(m - m') + P V_blk                          (sgemm, beta 1)
 * and o = O / l at the end. Work items are (batch, head, query block), handed
 * to the pool; each worker has its own scratch.
 */
#include "cpu.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define LOG2E 1.4426950408889634
#define LN2 0.6931471805599453

int tkcpu_flash_scratch_alloc(tkcpu_flash_scratch *s, int D) {
    memset(s, 0, sizeof *s);
    s->qs = malloc((size_t)TKCPU_QBLOCK * D * sizeof(float));
    s->s = malloc((size_t)TKCPU_QBLOCK * TKCPU_KBLOCK * sizeof(float));
    s->m = malloc(TKCPU_QBLOCK * sizeof(float));
    if (!s->qs || !s->s || !s->m) {
        tkcpu_flash_scratch_free(s);
        return TK_ERR_NOMEM;
    }
    return TK_OK;
}

void tkcpu_flash_scratch_free(tkcpu_flash_scratch *s) {
    free(s->qs);
    free(s->s);
    free(s->m);
    memset(s, 0, sizeof *s);
}

void tkcpu_flash_rows(const float *const *rows, int nq, const float *K, const float *V, int Nk,
                      int D, int Dv, double scale, const uint8_t *keep, float *out, int ldo,
                      double *out_den, double *out_max, tkcpu_flash_scratch *sc) {
    const float c = (float)(scale * LOG2E);
    double lsum[TKCPU_QBLOCK];
    float *m = sc->m;
    for (int r = 0; r < nq; r++) {
        const float *src = rows[r];
        float *dst = sc->qs + (size_t)r * D;
        for (int e = 0; e < D; e++) dst[e] = src[e] * c;
        m[r] = -INFINITY;
        lsum[r] = 0;
        memset(out + (size_t)r * ldo, 0, (size_t)Dv * sizeof *out);
    }
    for (int j0 = 0; j0 < Nk; j0 += TKCPU_KBLOCK) {
        int nk = Nk - j0 < TKCPU_KBLOCK ? Nk - j0 : TKCPU_KBLOCK;
        if (keep) { /* skip a block whose keys are all masked */
            int any = 0;
            for (int j = 0; j < nk && !any; j++) any = keep[j0 + j] != 0;
            if (!any) continue;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nq, nk, D, 1.0f, sc->qs, D,
                    K + (size_t)j0 * D, D, 0.0f, sc->s, nk);
        if (keep)
            for (int j = 0; j < nk; j++)
                if (!keep[j0 + j])
                    for (int r = 0; r < nq; r++) sc->s[(size_t)r * nk + j] = -INFINITY;
        for (int r = 0; r < nq; r++) {
            float *row = sc->s + (size_t)r * nk;
            float mt = tkcpu_max(row, nk);
            float mn = mt > m[r] ? mt : m[r];
            if (mn == -INFINITY) { /* nothing kept yet in this row */
                memset(row, 0, (size_t)nk * sizeof *row);
                continue;
            }
            double a = m[r] == -INFINITY ? 0.0 : exp2((double)m[r] - (double)mn);
            lsum[r] = lsum[r] * a + tkcpu_exp2_shift_sum(row, nk, mn);
            if (a != 1.0) tkcpu_scale(out + (size_t)r * ldo, Dv, (float)a);
            m[r] = mn;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nq, Dv, nk, 1.0f, sc->s, nk,
                    V + (size_t)j0 * Dv, Dv, 1.0f, out, ldo);
    }
    for (int r = 0; r < nq; r++) {
        if (out_den) {
            out_den[r] = lsum[r];
            out_max[r] = (double)m[r] * LN2;
        } else {
            tkcpu_scale(out + (size_t)r * ldo, Dv, lsum[r] > 0 ? (float)(1.0 / lsum[r]) : 0.0f);
        }
    }
}

typedef struct {
    tkcpu_job *job;
    tkcpu_flash_scratch *scratch; /* one per worker */
    int qblocks;
} exact_task;

static void exact_item(void *arg, int64_t item, int worker) {
    exact_task *t = arg;
    const tki_plan *p = t->job->plan;
    const tk_call *call = t->job->call;
    int64_t bh = item / t->qblocks;
    int i0 = (int)(item % t->qblocks) * TKCPU_QBLOCK;
    int nq = p->Nq - i0 < TKCPU_QBLOCK ? p->Nq - i0 : TKCPU_QBLOCK;
    int b = (int)(bh / p->H);
    const float *q = (const float *)call->q + ((size_t)bh * p->Nq + i0) * p->D;
    const float *K = (const float *)call->k + (size_t)bh * p->Nk * p->D;
    const float *V = (const float *)call->v + (size_t)bh * p->Nk * p->Dv;
    float *o = (float *)call->o + ((size_t)bh * p->Nq + i0) * p->Dv;
    const uint8_t *keep = call->key_mask ? call->key_mask + (size_t)b * p->Nk : NULL;
    const float *rows[TKCPU_QBLOCK];
    for (int r = 0; r < nq; r++) rows[r] = q + (size_t)r * p->D;
    tkcpu_flash_rows(rows, nq, K, V, p->Nk, p->D, p->Dv, p->s0, keep, o, p->Dv, NULL, NULL,
                     &t->scratch[worker]);
}

int tkcpu_exact(tkcpu_job *job) {
    const tki_plan *p = job->plan;
    int T = tkcpu_pool_threads(job->st->pool);
    exact_task t = {job, calloc((size_t)T, sizeof(tkcpu_flash_scratch)), (p->Nq + TKCPU_QBLOCK - 1) / TKCPU_QBLOCK};
    int rc = t.scratch ? TK_OK : TK_ERR_NOMEM;
    for (int w = 0; w < T && rc == TK_OK; w++) rc = tkcpu_flash_scratch_alloc(&t.scratch[w], p->D);
    if (rc == TK_OK) tkcpu_pool_run(job->st->pool, (int64_t)p->B * p->H * t.qblocks, exact_item, &t);
    for (int w = 0; t.scratch && w < T; w++) tkcpu_flash_scratch_free(&t.scratch[w]);
    free(t.scratch);
    return rc;
}

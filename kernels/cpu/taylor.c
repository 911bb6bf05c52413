/*
 * taylor.c -- Taylor attention on the cpu backend (SPEC 3), float32, never
 * holding the features of all keys.
 *
 * A unit is one (batch, head, sub-head slice c). Features are built a block
 * of tokens at a time in feature-major layout Φ [R][n] (row r = feature r of
 * the n tokens), one vector multiply per row from the table's parent and last
 * index: Φ_r = Φ_parent(r) ∘ X_last(r) · (weight_r / weight_parent(r)), where
 * X [d][n] holds the modified slices of the block's tokens (SPEC 3.3). Masked
 * keys are left out of the blocks. Then
 *
 *   probe (early_probe)  z = Σ_blocks Φk·1 (sgemv); den of the probe queries
 *                        (tki_sample_indices, the same for every unit) and the
 *                        rule of SPEC 3.1 -> stage probe, before S
 *   keys                 [S|z] += Φk · [V_c | 1]          (sgemm, R x (dv+1))
 *   queries              [num|den] = Φqᵀ · [S|z]          (sgemm, n x (dv+1))
 *   rule                 over every den of the call -> stage full
 *   o                    num / max(den, eps)
 *
 * The rule needs every den before o may be written, so the numerators wait in
 * a buffer of o's size; when that cannot be had (or would pass
 * TAYLOR_BUFFER_MAX) the query pass runs twice instead, first for the
 * denominators only (sgemv), then for the numerators straight into o.
 *
 * Blocks hold about 2 MiB of Φ (32 to 256 tokens; 64 for R = 6545): Φ stays
 * in L2 between its build and its sgemm. The products are skinny (dv+1 = 33
 * columns for Flux with 4 blocks), so OpenBLAS packs S once per query block.
 *
 * Parallel items: (unit, key chunk) for the key passes -- a unit's keys are
 * split into chunks with their own partial sums when there are fewer units
 * than 2x the threads -- and (unit, query block) for the query passes.
 */
#include "cpu.h"

#include "stats.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TAYLOR_BUFFER_MAX ((size_t)1 << 30) /* bytes of buffered numerators */

typedef struct {
    tkcpu_job *job;
    const tki_plan *p;
    tkcpu_fmap fm;     /* the feature map of (d, P, s) */
    int R, d, dv, nb, units;
    int fb;            /* keys per feature block */
    int fbq;           /* queries per feature block (larger: S is packed once a block) */
    int ld;            /* max(fb, fbq) rounded up to 16: the row stride of Φ and X */
    int kchunks;       /* key chunks per unit */
    int qblocks;       /* query blocks per unit (fb queries each) */
    float *z;          /* [units][R] (probe) */
    float *S;          /* [units][R][dv+1] */
    float *partial;    /* [units][kchunks][R][dv+1] or [units][kchunks][R] when kchunks > 1 */
    float *den;        /* [units][Nq] */
    float *num;        /* [B,H,Nq,Dv] buffered numerators, or NULL (two query passes) */
    int64_t *probe;    /* probe query indices */
    int64_t n_probe;
    float *probe_den;  /* [units][n_probe] */
    int pass;          /* which pass the pool runs (see below) */
    /* per-worker scratch */
    float **phi, **x, **vaug, **out, **fac;
    int32_t **rows;
    const float ***ptr;
} taylor_ctx;

enum { PASS_Z, PASS_PROBE, PASS_S, PASS_Q_BOTH, PASS_Q_DEN, PASS_Q_NUM };

/* Builds Φ [R][ld] of the n token rows (each D floats; slice c), with the
 * q/k modification of SPEC 3.3 per slice. */
static void build_features(const taylor_ctx *t, const float *base, const int32_t *rows, int n, int c,
                           int worker) {
    const tki_plan *p = t->p;
    const int d = t->d;
    const float **ptr = t->ptr[worker];
    float *fac = t->fac[worker];
    for (int j = 0; j < n; j++) {
        const float *src = base + (size_t)rows[j] * p->D + (size_t)c * d;
        ptr[j] = src;
        if (p->mod.active) {
            double ss = 0;
            for (int e = 0; e < d; e++) ss += (double)src[e] * src[e];
            fac[j] = (float)tki_qkmod_factor(&p->mod, sqrt(ss));
        }
    }
    tkcpu_features_block(&t->fm, ptr, p->mod.active ? fac : NULL, n, t->x[worker], t->phi[worker]);
}

/* Key range [k0, k1) of chunk `chunk` of Nk. */
static void chunk_range(int Nk, int chunks, int chunk, int *k0, int *k1) {
    *k0 = (int)((int64_t)Nk * chunk / chunks);
    *k1 = (int)((int64_t)Nk * (chunk + 1) / chunks);
}

/* Key passes: z (PASS_Z) or [S|z] (PASS_S) of one (unit, chunk). */
static void key_item(taylor_ctx *t, int64_t item, int worker) {
    const tki_plan *p = t->p;
    const tk_call *call = t->job->call;
    int unit = (int)(item / t->kchunks), chunk = (int)(item % t->kchunks);
    int bh = unit / t->nb, c = unit % t->nb, b = bh / p->H;
    const float *K = (const float *)call->k + (size_t)bh * p->Nk * p->D;
    const float *V = (const float *)call->v + (size_t)bh * p->Nk * p->Dv;
    const uint8_t *keep = call->key_mask ? call->key_mask + (size_t)b * p->Nk : NULL;
    const int R = t->R, dv = t->dv, w1 = dv + 1;
    int with_s = t->pass == PASS_S;
    size_t acc_len = (size_t)R * (with_s ? (size_t)w1 : 1);
    float *acc = t->kchunks == 1 ? (with_s ? t->S : t->z) + (size_t)unit * acc_len
                                 : t->partial + (size_t)item * acc_len;
    memset(acc, 0, acc_len * sizeof *acc);
    float *phi = t->phi[worker], *vaug = t->vaug[worker];
    int32_t *rows = t->rows[worker];
    int k0, k1;
    chunk_range(p->Nk, t->kchunks, chunk, &k0, &k1);
    int j = k0;
    while (j < k1) {
        int n = 0;
        for (; j < k1 && n < t->fb; j++)
            if (!keep || keep[j]) rows[n++] = j;
        if (n == 0) break;
        build_features(t, K, rows, n, c, worker);
        if (with_s) {
            for (int r = 0; r < n; r++) {
                const float *src = V + (size_t)rows[r] * p->Dv + (size_t)c * dv;
                memcpy(vaug + (size_t)r * w1, src, (size_t)dv * sizeof *src);
                vaug[(size_t)r * w1 + dv] = 1.0f;
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, R, w1, n, 1.0f, phi, t->ld, vaug,
                        w1, 1.0f, acc, w1);
        } else {
            for (int r = 0; r < n; r++) vaug[r] = 1.0f;
            cblas_sgemv(CblasRowMajor, CblasNoTrans, R, n, 1.0f, phi, t->ld, vaug, 1, 1.0f, acc, 1);
        }
    }
}

/* Query passes of one (unit, block): PASS_PROBE (probe rows, den vs z),
 * PASS_Q_BOTH (num into t->num, den), PASS_Q_DEN (den only), PASS_Q_NUM (num
 * / clamped den straight into o). */
static void query_item(taylor_ctx *t, int64_t item, int worker) {
    const tki_plan *p = t->p;
    const tk_call *call = t->job->call;
    const int R = t->R, dv = t->dv, w1 = dv + 1;
    int unit, i0, n;
    int32_t *rows = t->rows[worker];
    if (t->pass == PASS_PROBE) {
        unit = (int)item;
        i0 = 0;
        n = (int)t->n_probe;
    } else {
        unit = (int)(item / t->qblocks);
        i0 = (int)(item % t->qblocks) * t->fbq;
        n = p->Nq - i0 < t->fbq ? p->Nq - i0 : t->fbq;
    }
    int bh = unit / t->nb, c = unit % t->nb;
    const float *Q = (const float *)call->q + (size_t)bh * p->Nq * p->D;
    float *phi = t->phi[worker], *out = t->out[worker];
    if (t->pass == PASS_PROBE) {
        /* the probe may ask for more rows than a block: do them fb at a time */
        for (int s0 = 0; s0 < n; s0 += t->fb) {
            int m = n - s0 < t->fb ? n - s0 : t->fb;
            for (int r = 0; r < m; r++) rows[r] = (int32_t)t->probe[s0 + r];
            build_features(t, Q, rows, m, c, worker);
            cblas_sgemv(CblasRowMajor, CblasTrans, R, m, 1.0f, phi, t->ld, t->z + (size_t)unit * R, 1,
                        0.0f, t->probe_den + (size_t)unit * t->n_probe + s0, 1);
        }
        return;
    }
    for (int r = 0; r < n; r++) rows[r] = i0 + r;
    build_features(t, Q, rows, n, c, worker);
    const float *S = t->S + (size_t)unit * R * w1;
    float *den = t->den + (size_t)unit * p->Nq + i0;
    if (t->pass == PASS_Q_DEN) {
        cblas_sgemv(CblasRowMajor, CblasTrans, R, n, 1.0f, phi, t->ld, S + dv, w1, 0.0f, den, 1);
        return;
    }
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, w1, R, 1.0f, phi, t->ld, S, w1, 0.0f, out, w1);
    float *dst = t->pass == PASS_Q_BOTH ? t->num : (float *)call->o;
    for (int r = 0; r < n; r++) {
        float *o = dst + ((size_t)bh * p->Nq + i0 + r) * p->Dv + (size_t)c * dv;
        const float *src = out + (size_t)r * w1;
        if (t->pass == PASS_Q_BOTH) {
            den[r] = src[dv];
            memcpy(o, src, (size_t)dv * sizeof *o);
        } else {
            double dn = den[r] <= p->eps ? p->eps : den[r];
            float inv = (float)(1.0 / dn);
            for (int e = 0; e < dv; e++) o[e] = src[e] * inv;
        }
    }
}

static void taylor_item(void *arg, int64_t item, int worker) {
    taylor_ctx *t = arg;
    if (t->pass == PASS_Z || t->pass == PASS_S)
        key_item(t, item, worker);
    else
        query_item(t, item, worker);
}

/* Sums the chunk partials of every unit into dst ([units][len]). */
static void reduce_partials(taylor_ctx *t, float *dst, size_t len) {
    if (t->kchunks == 1) return;
    for (int u = 0; u < t->units; u++) {
        float *d = dst + (size_t)u * len;
        memcpy(d, t->partial + (size_t)u * t->kchunks * len, len * sizeof *d);
        for (int ch = 1; ch < t->kchunks; ch++)
            tkcpu_add(d, t->partial + ((size_t)u * t->kchunks + ch) * len, (int64_t)len);
    }
}

static void run_pass(taylor_ctx *t, int pass, int64_t items) {
    t->pass = pass;
    tkcpu_pool_run(t->job->st->pool, items, taylor_item, t);
}

static void free_ctx(taylor_ctx *t, int T) {
    tkcpu_fmap_free(&t->fm);
    free(t->z);
    free(t->S);
    free(t->partial);
    free(t->den);
    free(t->num);
    free(t->probe);
    free(t->probe_den);
    for (int w = 0; w < T; w++) {
        if (t->phi) free(t->phi[w]);
        if (t->x) free(t->x[w]);
        if (t->vaug) free(t->vaug[w]);
        if (t->out) free(t->out[w]);
        if (t->rows) free(t->rows[w]);
        if (t->fac) free(t->fac[w]);
        if (t->ptr) free(t->ptr[w]);
    }
    free(t->fac);
    free(t->ptr);
    free(t->phi);
    free(t->x);
    free(t->vaug);
    free(t->out);
    free(t->rows);
}

/* Tokens per feature block: Φ of a key block stays near `bytes` (L2) but
 * never under 32 or over 256 tokens. TK_CPU_TAYLOR_BLOCK / _QBLOCK override
 * (benchmarks). */
static int feature_block(int64_t R, const char *env, int bytes) {
    const char *e = getenv(env);
    int fb = e && *e ? atoi(e) : (int)(bytes / 4 / (R > 0 ? R : 1));
    if (fb < 32) fb = 32;
    if (fb > 256) fb = 256;
    return fb / 16 * 16;
}

int tkcpu_taylor(tkcpu_job *job) {
    const tki_plan *p = job->plan;
    const tk_call *call = job->call;
    tk_result *res = job->res;
    int T = tkcpu_pool_threads(job->st->pool);
    taylor_ctx t;
    memset(&t, 0, sizeof t);
    t.job = job;
    t.p = p;
    t.d = p->d;
    t.dv = p->dv;
    t.nb = p->blocks;
    t.units = p->B * p->H * p->blocks;
    t.fb = feature_block(p->R, "TK_CPU_TAYLOR_BLOCK", 1 << 21);
    t.fbq = feature_block(p->R, "TK_CPU_TAYLOR_QBLOCK", 1 << 21);
    t.ld = t.fb > t.fbq ? t.fb : t.fbq;
    if (tkcpu_fmap_make(&t.fm, p->d, p->terms, p->s, p->R, t.ld) != TK_OK) return TK_ERR_NOMEM;
    t.R = t.fm.R;
    t.qblocks = (p->Nq + t.fbq - 1) / t.fbq;
    t.kchunks = 1;
    if (t.units < 2 * T) {
        t.kchunks = (2 * T + t.units - 1) / t.units;
        int most = (p->Nk + t.fb - 1) / t.fb;
        if (t.kchunks > most) t.kchunks = most > 0 ? most : 1;
    }
    const int R = t.R, w1 = t.dv + 1;
    size_t s_len = (size_t)R * w1;
    t.S = malloc((size_t)t.units * s_len * sizeof *t.S);
    t.den = malloc((size_t)t.units * p->Nq * sizeof *t.den);
    if (t.kchunks > 1) t.partial = malloc((size_t)t.units * t.kchunks * s_len * sizeof *t.partial);
    t.phi = calloc((size_t)T, sizeof *t.phi);
    t.x = calloc((size_t)T, sizeof *t.x);
    t.vaug = calloc((size_t)T, sizeof *t.vaug);
    t.out = calloc((size_t)T, sizeof *t.out);
    t.rows = calloc((size_t)T, sizeof *t.rows);
    t.fac = calloc((size_t)T, sizeof *t.fac);
    t.ptr = calloc((size_t)T, sizeof *t.ptr);
    int ok = t.fac && t.ptr && t.S && t.den && (t.kchunks == 1 || t.partial) && t.phi && t.x &&
             t.vaug && t.out && t.rows;
    for (int w = 0; ok && w < T; w++) {
        t.phi[w] = malloc((size_t)R * t.ld * sizeof(float));
        t.x[w] = malloc((size_t)t.d * t.ld * sizeof(float));
        t.vaug[w] = malloc((size_t)t.ld * w1 * sizeof(float));
        t.out[w] = malloc((size_t)t.ld * w1 * sizeof(float));
        t.rows[w] = malloc((size_t)t.ld * sizeof(int32_t));
        t.fac[w] = malloc((size_t)t.ld * sizeof(float));
        t.ptr[w] = malloc((size_t)t.ld * sizeof(float *));
        ok = t.phi[w] && t.x[w] && t.vaug[w] && t.out[w] && t.rows[w] && t.fac[w] && t.ptr[w];
    }
    if (!ok) {
        free_ctx(&t, T);
        return TK_ERR_NOMEM;
    }

    /* early probe */
    if (p->early_probe) {
        t.probe = malloc((size_t)p->probe_samples * sizeof *t.probe);
        t.z = malloc((size_t)t.units * R * sizeof *t.z);
        if (!t.probe || !t.z) {
            free_ctx(&t, T);
            return TK_ERR_NOMEM;
        }
        t.n_probe = tki_sample_indices(p->seed, TKI_SALT_PROBE, p->Nq, p->probe_samples, t.probe);
        t.probe_den = malloc((size_t)t.units * (t.n_probe > 0 ? t.n_probe : 1) * sizeof *t.probe_den);
        if (!t.probe_den) {
            free_ctx(&t, T);
            return TK_ERR_NOMEM;
        }
        run_pass(&t, PASS_Z, (int64_t)t.units * t.kchunks);
        reduce_partials(&t, t.z, (size_t)R);
        run_pass(&t, PASS_PROBE, t.units);
        int64_t n_le = 0, n_bad = 0, n_all = (int64_t)t.units * t.n_probe;
        for (int64_t i = 0; i < n_all; i++) {
            n_bad += !isfinite(t.probe_den[i]);
            n_le += t.probe_den[i] <= p->eps;
        }
        res->reason = tki_denominator_rule(p, n_le, n_bad, n_all, res->detail, sizeof res->detail);
        if (res->reason != TK_REASON_NONE) {
            res->stage = TK_STAGE_PROBE;
            free_ctx(&t, T);
            return TK_OK;
        }
    }

    /* keys: [S|z] */
    run_pass(&t, PASS_S, (int64_t)t.units * t.kchunks);
    reduce_partials(&t, t.S, s_len);

    /* queries: numerators buffered when they fit, else a den-only pass first */
    size_t o_count = (size_t)p->B * p->H * p->Nq * p->Dv;
    size_t buffer_max = TAYLOR_BUFFER_MAX;
    const char *bm = getenv("TK_CPU_TAYLOR_BUFFER_MAX"); /* tests: 0 forces the two query passes */
    if (bm && *bm) buffer_max = (size_t)strtoull(bm, NULL, 10);
    if (o_count * sizeof(float) <= buffer_max) t.num = malloc(o_count * sizeof *t.num);
    int64_t q_items = (int64_t)t.units * t.qblocks;
    run_pass(&t, t.num ? PASS_Q_BOTH : PASS_Q_DEN, q_items);

    tki_den_acc *acc = job->den;
    int64_t n_le = 0, n_bad = 0, n_all = (int64_t)t.units * p->Nq;
    for (int64_t i = 0; i < n_all; i++) {
        double dn = t.den[i];
        tki_den_acc_add(acc, dn, p->eps);
        n_bad += !isfinite(dn);
        n_le += dn <= p->eps;
    }
    res->reason = tki_denominator_rule(p, n_le, n_bad, n_all, res->detail, sizeof res->detail);
    if (res->reason != TK_REASON_NONE) {
        res->stage = TK_STAGE_FULL;
        free_ctx(&t, T);
        return TK_OK;
    }
    if (t.num) { /* o = num / max(den, eps) */
        float *o = call->o;
        for (int u = 0; u < t.units; u++) {
            int bh = u / t.nb, c = u % t.nb;
            const float *den = t.den + (size_t)u * p->Nq;
            for (int i = 0; i < p->Nq; i++) {
                size_t off = ((size_t)bh * p->Nq + i) * p->Dv + (size_t)c * t.dv;
                double dn = den[i] <= p->eps ? p->eps : den[i];
                float inv = (float)(1.0 / dn);
                for (int e = 0; e < t.dv; e++) o[off + e] = t.num[off + e] * inv;
            }
        }
    } else {
        run_pass(&t, PASS_Q_NUM, q_items);
    }
    free_ctx(&t, T);
    return TK_OK;
}

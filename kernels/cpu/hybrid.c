/*
 * hybrid.c -- hybrid attention on the cpu backend (SPEC 4), float32, the
 * same formulas as kernels/ref/hybrid.c (read that file's top comment first).
 *
 * Phase F, items (batch*head, chunk): the far vectors k^ = modify(P_h k0)
 * and q^ = modify(P_h q0) for the whole call (sgemm against the PCA
 * projection of kernels/pca.c, then the per-row modification), and the far
 * sums [S|z] += Φ(k^) [V|1] over the kept keys in feature blocks (features.c).
 *
 * Phase O, items (batch*head, tile). A tile is either
 *   full    up to 256 queries whose window is every key (text queries, or
 *           radius 0): the exact path's online softmax over all keys
 *           (exact.c), plus w N_far/D_far when combine is additive;
 *   window  up to 64 image queries (1d: consecutive; 2d: an 8x8 block of
 *           grid cells) and their candidate keys -- every kept key any of
 *           them can see (2d: all text keys, then the grid rectangle grown by
 *           r; 1d: the index range grown by W) gathered into contiguous rows:
 *             S   = s0 log2e Q Kcᵀ  (sgemm), outside a query's window -> -inf
 *             P   = 2^(S - m2), D_loc = Σ P            (m2: row max)
 *             κ   = kappa_P(s q^ k^cᵀ) (sgemm + Horner), outside -> 0
 *             normalized, far kept (Df = D_far - Σκ > 0, and the window is
 *             not every kept key):  W = a P - b κ  with c = w 2^-m2 (= w e^-m)
 *             and (a, b) = (1, c) when c <= 1 else (1/c, 1), so that
 *             o = (W Vc + b N_far) / (a D_loc + b Df) -- ref's formula with
 *             numerator and denominator scaled by a, which keeps every
 *             product bounded when e^-m is huge (ref's non-finite-scale case
 *             is the limit a = 0)
 *             otherwise W = P and o = W Vc / D_loc (+ w N_far / D_far, additive)
 *           one sgemm W Vc gives the local and window-far numerators at once.
 *
 * o must stay untouched on a fallback (a NaN/Inf far denominator). The far
 * sums are bounded by Nk max|v| e^{s (max|q^|^2 + max|k^|^2)/2}; when that
 * bound is far from float's range the tiles write o directly, otherwise
 * they write into a buffer copied to o once no denominator was non-finite.
 */
#include "cpu.h"

#include "stats.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LOG2E 1.4426950408889634

enum { TILE_FULL, TILE_1D, TILE_2D };
enum { TILE_Q = 64, TILE_SIDE = 8, FAR_BLOCK = 128 };

typedef struct {
    int kind;
    int i0, n;          /* full, 1d: queries [i0, i0+n) */
    int y0, x0, th, tw; /* 2d: grid cells [y0, y0+th) x [x0, x0+tw) */
} tile;

typedef struct {
    float *s, *kap, *kc, *vc, *khc, *qs, *qhc, *phi, *x, *far, *out, *vaug;
    int32_t *cand, *cy, *cx;
    const float **ptr;
    double *dloc, *ra, *rb, *rdf; /* per query row: D_loc, (a, b), Df */
    tkcpu_flash_scratch flash;
    tki_den_acc den;
    int64_t n_bad;
} worker_scratch;

typedef struct {
    tkcpu_job *job;
    const tki_plan *p;
    const tk_call *call;
    int far, units, kchunks, nc_max, pass;
    tkcpu_fmap fm;
    float *projf;      /* [H][g][D] */
    float *khat, *qhat;/* [units][Nk][g], [units][Nq][g] */
    float *Sfar;       /* [units][R][Dv+1] */
    float *partial;    /* [units][kchunks][R][Dv+1] when kchunks > 1 */
    double *maxk2, *maxq2, *maxv; /* per phase F item */
    int *kept_total;   /* [B] */
    tile *tiles;
    int ntiles;
    float *dst;        /* call->o, or a buffer (see above) */
    worker_scratch *ws;
    int T;
} hyb;

enum { PASS_F, PASS_O };

/* ---- phase F ---------------------------------------------------------- */

/* rows [r0, r1) of x ([.][D]) projected into hat ([.][g]) and modified;
 * returns the largest squared norm after modification. */
static double far_vectors(const hyb *H_, int h, const float *x, float *hat, int r0, int r1) {
    const tki_plan *p = H_->p;
    int n = r1 - r0, g = p->g;
    if (n <= 0) return 0;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, g, p->D, 1.0f, x + (size_t)r0 * p->D, p->D,
                H_->projf + (size_t)h * g * p->D, p->D, 0.0f, hat + (size_t)r0 * g, g);
    double most = 0;
    for (int r = r0; r < r1; r++) {
        float *v = hat + (size_t)r * g;
        double ss = 0;
        for (int e = 0; e < g; e++) ss += (double)v[e] * v[e];
        double f = tki_qkmod_factor(&p->mod, sqrt(ss));
        if (f != 1.0)
            for (int e = 0; e < g; e++) v[e] = (float)(v[e] * f);
        double n2 = ss * f * f;
        if (n2 > most || isnan(n2)) most = n2;
    }
    return most;
}

static void far_item(hyb *H_, int64_t item, int worker) {
    const tki_plan *p = H_->p;
    const tk_call *call = H_->call;
    worker_scratch *w = &H_->ws[worker];
    int unit = (int)(item / H_->kchunks), chunk = (int)(item % H_->kchunks);
    int b = unit / p->H, h = unit % p->H;
    const int g = p->g, Dv = p->Dv, w1 = Dv + 1, R = H_->fm.R;
    int k0 = (int)((int64_t)p->Nk * chunk / H_->kchunks), k1 = (int)((int64_t)p->Nk * (chunk + 1) / H_->kchunks);
    int q0 = (int)((int64_t)p->Nq * chunk / H_->kchunks), q1 = (int)((int64_t)p->Nq * (chunk + 1) / H_->kchunks);
    float *khat = H_->khat + (size_t)unit * p->Nk * g, *qhat = H_->qhat + (size_t)unit * p->Nq * g;
    H_->maxk2[item] = far_vectors(H_, h, p->k_far + (size_t)unit * p->Nk * p->D, khat, k0, k1);
    H_->maxq2[item] = far_vectors(H_, h, p->q_far + (size_t)unit * p->Nq * p->D, qhat, q0, q1);
    const float *V = (const float *)call->v + (size_t)unit * p->Nk * Dv;
    const uint8_t *keep = call->key_mask ? call->key_mask + (size_t)b * p->Nk : NULL;
    double mv = 0;
    for (size_t t = (size_t)k0 * Dv; t < (size_t)k1 * Dv; t++) {
        double a = fabs((double)V[t]);
        if (a > mv) mv = a;
    }
    H_->maxv[item] = mv;
    size_t s_len = (size_t)R * w1;
    float *acc = H_->kchunks == 1 ? H_->Sfar + (size_t)unit * s_len : H_->partial + (size_t)item * s_len;
    memset(acc, 0, s_len * sizeof *acc);
    int j = k0;
    while (j < k1) {
        int n = 0;
        for (; j < k1 && n < FAR_BLOCK; j++) {
            if (keep && !keep[j]) continue;
            w->ptr[n] = khat + (size_t)j * g;
            memcpy(w->vaug + (size_t)n * w1, V + (size_t)j * Dv, (size_t)Dv * sizeof(float));
            w->vaug[(size_t)n * w1 + Dv] = 1.0f;
            n++;
        }
        if (n == 0) break;
        tkcpu_features_block(&H_->fm, w->ptr, NULL, n, w->x, w->phi);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, R, w1, n, 1.0f, w->phi, H_->fm.ld, w->vaug,
                    w1, 1.0f, acc, w1);
    }
}

/* ---- phase O ---------------------------------------------------------- */

/* FAR rows [N_far | D_far] of the n queries (far vectors at qh rows qi[]). */
static void far_rows(hyb *H_, worker_scratch *w, int unit, const float *qh, const int32_t *qi, int n) {
    const int g = H_->p->g, w1 = H_->p->Dv + 1;
    for (int r = 0; r < n; r++) w->ptr[r] = qh + (size_t)qi[r] * g;
    tkcpu_features_block(&H_->fm, w->ptr, NULL, n, w->x, w->phi);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, w1, H_->fm.R, 1.0f, w->phi, H_->fm.ld,
                H_->Sfar + (size_t)unit * H_->fm.R * w1, w1, 0.0f, w->far, w1);
}

static void full_tile(hyb *H_, worker_scratch *w, int unit, const tile *t) {
    const tki_plan *p = H_->p;
    const tk_call *call = H_->call;
    int b = unit / p->H;
    const float *Q = (const float *)call->q + (size_t)unit * p->Nq * p->D;
    const float *K = (const float *)call->k + (size_t)unit * p->Nk * p->D;
    const float *V = (const float *)call->v + (size_t)unit * p->Nk * p->Dv;
    const uint8_t *keep = call->key_mask ? call->key_mask + (size_t)b * p->Nk : NULL;
    float *o = H_->dst + ((size_t)unit * p->Nq + t->i0) * p->Dv;
    for (int r = 0; r < t->n; r++) w->ptr[r] = Q + (size_t)(t->i0 + r) * p->D;
    tkcpu_flash_rows(w->ptr, t->n, K, V, p->Nk, p->D, p->Dv, p->s0, keep, o, p->Dv, NULL, NULL, &w->flash);
    if (!H_->far || p->combine != TK_COMBINE_ADDITIVE) return; /* normalized: no far term here */
    for (int r = 0; r < t->n; r++) w->cand[r] = t->i0 + r;
    far_rows(H_, w, unit, H_->qhat + (size_t)unit * p->Nq * p->g, w->cand, t->n);
    const int Dv = p->Dv, w1 = Dv + 1;
    for (int r = 0; r < t->n; r++) {
        const float *fr = w->far + (size_t)r * w1;
        double dfar = fr[Dv];
        tki_den_acc_add(&w->den, dfar, p->eps);
        if (!isfinite(dfar)) w->n_bad++;
        if (!(dfar > 0)) continue;
        float f = (float)(p->w / dfar);
        tkcpu_axpby(o + (size_t)r * Dv, 1.0f, fr, f, Dv);
    }
}

static void window_tile(hyb *H_, worker_scratch *w, int unit, const tile *t) {
    const tki_plan *p = H_->p;
    const tk_call *call = H_->call;
    const int b = unit / p->H, D = p->D, Dv = p->Dv, g = p->g, w1 = Dv + 1;
    const int Tt = p->win.text_tokens, rad = p->win.radius, gw = p->win.grid_w, gh = p->win.grid_h;
    const float *Q = (const float *)call->q + (size_t)unit * p->Nq * D;
    const float *K = (const float *)call->k + (size_t)unit * p->Nk * D;
    const float *V = (const float *)call->v + (size_t)unit * p->Nk * Dv;
    const float *qh = H_->qhat + (size_t)unit * p->Nq * g, *kh = H_->khat + (size_t)unit * p->Nk * g;
    const uint8_t *keep = call->key_mask ? call->key_mask + (size_t)b * p->Nk : NULL;
    const int normalized_far = H_->far && p->combine == TK_COMBINE_NORMALIZED;

    /* the tile's queries: index, and (qy, qx) for the window test */
    int32_t qi[TILE_Q], qy[TILE_Q], qx[TILE_Q];
    int n = 0;
    if (t->kind == TILE_1D) {
        for (int r = 0; r < t->n; r++) qi[n] = t->i0 + r, qy[n] = 0, qx[n] = t->i0 + r, n++;
    } else {
        for (int y = t->y0; y < t->y0 + t->th; y++)
            for (int x = t->x0; x < t->x0 + t->tw; x++) qi[n] = Tt + y * gw + x, qy[n] = y, qx[n] = x, n++;
    }
    /* candidate keys (kept only): nt always-visible text keys, then the rest */
    int nc = 0, nt = 0;
    if (t->kind == TILE_1D) {
        int64_t lo = (int64_t)t->i0 - rad, hi = (int64_t)t->i0 + t->n - 1 + rad;
        if (lo < 0) lo = 0;
        if (hi > p->Nk - 1) hi = p->Nk - 1;
        for (int64_t j = lo; j <= hi; j++)
            if (!keep || keep[j]) w->cand[nc] = (int32_t)j, w->cy[nc] = 0, w->cx[nc] = (int32_t)j, nc++;
    } else {
        for (int j = 0; j < Tt; j++)
            if (!keep || keep[j]) w->cand[nc++] = j;
        nt = nc;
        int ya = t->y0 - rad < 0 ? 0 : t->y0 - rad, yb = t->y0 + t->th - 1 + rad;
        int xa = t->x0 - rad < 0 ? 0 : t->x0 - rad, xb = t->x0 + t->tw - 1 + rad;
        if (yb > gh - 1) yb = gh - 1;
        if (xb > gw - 1) xb = gw - 1;
        for (int y = ya; y <= yb; y++)
            for (int x = xa; x <= xb; x++) {
                int j = Tt + y * gw + x;
                if (!keep || keep[j]) w->cand[nc] = j, w->cy[nc] = y, w->cx[nc] = x, nc++;
            }
    }
    /* gather */
    const float c0 = (float)(p->s0 * LOG2E);
    for (int r = 0; r < n; r++) {
        const float *src = Q + (size_t)qi[r] * D;
        for (int e = 0; e < D; e++) w->qs[(size_t)r * D + e] = src[e] * c0;
    }
    for (int c = 0; c < nc; c++) {
        memcpy(w->kc + (size_t)c * D, K + (size_t)w->cand[c] * D, (size_t)D * sizeof(float));
        memcpy(w->vc + (size_t)c * Dv, V + (size_t)w->cand[c] * Dv, (size_t)Dv * sizeof(float));
    }
    if (nc == 0) { /* an empty window (1d cross attention past the keys): no local term */
        w->s[0] = -INFINITY;
        w->kap[0] = 0;
    } else {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, nc, D, 1.0f, w->qs, D, w->kc, D, 0.0f, w->s, nc);
    }
    if (normalized_far && nc > 0) {
        for (int r = 0; r < n; r++) memcpy(w->qhc + (size_t)r * g, qh + (size_t)qi[r] * g, (size_t)g * sizeof(float));
        for (int c = 0; c < nc; c++) memcpy(w->khc + (size_t)c * g, kh + (size_t)w->cand[c] * g, (size_t)g * sizeof(float));
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, nc, g, 1.0f, w->qhc, g, w->khc, g, 0.0f, w->kap, nc);
        tkcpu_kappa(w->kap, (int64_t)n * nc, (float)p->s, p->terms);
    }
    if (H_->far) far_rows(H_, w, unit, qh, qi, n);
    int kept_total = H_->kept_total[b];
    for (int r = 0; r < n; r++) {
        float *srow = w->s + (size_t)r * nc, *krow = normalized_far ? w->kap + (size_t)r * nc : NULL;
        int64_t inside = nt + tkcpu_window_mask(srow + nt, krow ? krow + nt : NULL, w->cy + nt, w->cx + nt,
                                                nc - nt, qy[r], qx[r], rad);
        float m2 = tkcpu_max(srow, nc);
        w->dloc[r] = tkcpu_exp2_shift_sum(srow, nc, m2);
        w->ra[r] = 1, w->rb[r] = 0;
        if (!normalized_far || inside == kept_total) continue;
        double df = (double)w->far[(size_t)r * w1 + Dv] - tkcpu_sum(krow, nc);
        tki_den_acc_add(&w->den, df, p->eps);
        if (!isfinite(df)) w->n_bad++;
        if (!(df > 0)) continue; /* far term dropped */
        double c = p->w * exp2(-(double)m2);
        double a = c <= 1 ? 1.0 : 1.0 / c, bb = c <= 1 ? c : 1.0;
        tkcpu_axpby(srow, (float)a, krow, (float)-bb, nc);
        w->ra[r] = a, w->rb[r] = bb, w->rdf[r] = df;
    }
    if (nc > 0)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, Dv, nc, 1.0f, w->s, nc, w->vc, Dv, 0.0f, w->out, Dv);
    else
        memset(w->out, 0, (size_t)n * Dv * sizeof *w->out);
    for (int r = 0; r < n; r++) {
        float *o = H_->dst + ((size_t)unit * p->Nq + qi[r]) * Dv;
        const float *num = w->out + (size_t)r * Dv, *fr = H_->far ? w->far + (size_t)r * w1 : NULL;
        if (w->rb[r] > 0) {
            double inv = 1.0 / (w->ra[r] * w->dloc[r] + w->rb[r] * w->rdf[r]);
            for (int e = 0; e < Dv; e++) o[e] = (float)((num[e] + w->rb[r] * fr[e]) * inv);
            continue;
        }
        float inv = (float)(1.0 / w->dloc[r]);
        for (int e = 0; e < Dv; e++) o[e] = num[e] * inv;
        if (H_->far && p->combine == TK_COMBINE_ADDITIVE) {
            double dfar = fr[Dv];
            tki_den_acc_add(&w->den, dfar, p->eps);
            if (!isfinite(dfar)) w->n_bad++;
            if (dfar > 0) tkcpu_axpby(o, 1.0f, fr, (float)(p->w / dfar), Dv);
        }
    }
}

static void hyb_item(void *arg, int64_t item, int worker) {
    hyb *H_ = arg;
    if (H_->pass == PASS_F) {
        far_item(H_, item, worker);
        return;
    }
    int unit = (int)(item / H_->ntiles);
    const tile *t = &H_->tiles[item % H_->ntiles];
    if (t->kind == TILE_FULL)
        full_tile(H_, &H_->ws[worker], unit, t);
    else
        window_tile(H_, &H_->ws[worker], unit, t);
}

/* ---- set-up ----------------------------------------------------------- */

static int make_tiles(hyb *H_) {
    const tki_plan *p = H_->p;
    int rad = p->win.radius, Tt = p->win.text_tokens < p->Nq ? p->win.text_tokens : p->Nq;
    int full_end = rad <= 0 ? p->Nq : Tt;
    int n = (full_end + TKCPU_QBLOCK - 1) / TKCPU_QBLOCK;
    int ty = 0, tx = 0;
    if (rad > 0) {
        if (p->win.shape == TK_WINDOW_1D) {
            n += (p->Nq - Tt + TILE_Q - 1) / TILE_Q;
        } else {
            ty = (p->win.grid_h + TILE_SIDE - 1) / TILE_SIDE;
            tx = (p->win.grid_w + TILE_SIDE - 1) / TILE_SIDE;
            n += ty * tx;
        }
    }
    H_->tiles = calloc((size_t)(n > 0 ? n : 1), sizeof *H_->tiles);
    if (!H_->tiles) return TK_ERR_NOMEM;
    int k = 0;
    for (int i = 0; i < full_end; i += TKCPU_QBLOCK)
        H_->tiles[k++] = (tile){TILE_FULL, i, full_end - i < TKCPU_QBLOCK ? full_end - i : TKCPU_QBLOCK, 0, 0, 0, 0};
    if (rad > 0 && p->win.shape == TK_WINDOW_1D) {
        for (int i = Tt; i < p->Nq; i += TILE_Q)
            H_->tiles[k++] = (tile){TILE_1D, i, p->Nq - i < TILE_Q ? p->Nq - i : TILE_Q, 0, 0, 0, 0};
        int64_t span = (int64_t)TILE_Q + 2 * (int64_t)rad;
        H_->nc_max = (int)(span < p->Nk ? span : p->Nk);
    } else if (rad > 0) {
        for (int y = 0; y < ty; y++)
            for (int x = 0; x < tx; x++) {
                int y0 = y * TILE_SIDE, x0 = x * TILE_SIDE;
                int th = p->win.grid_h - y0 < TILE_SIDE ? p->win.grid_h - y0 : TILE_SIDE;
                int tw = p->win.grid_w - x0 < TILE_SIDE ? p->win.grid_w - x0 : TILE_SIDE;
                H_->tiles[k++] = (tile){TILE_2D, 0, th * tw, y0, x0, th, tw};
            }
        int64_t sh = TILE_SIDE + 2 * (int64_t)rad, sw = sh;
        if (sh > p->win.grid_h) sh = p->win.grid_h;
        if (sw > p->win.grid_w) sw = p->win.grid_w;
        H_->nc_max = (int)(p->win.text_tokens + sh * sw);
    }
    H_->ntiles = k;
    return TK_OK;
}

static void free_hyb(hyb *H_) {
    tkcpu_fmap_free(&H_->fm);
    free(H_->projf), free(H_->khat), free(H_->qhat), free(H_->Sfar), free(H_->partial);
    free(H_->maxk2), free(H_->maxq2), free(H_->maxv), free(H_->kept_total), free(H_->tiles);
    if (H_->dst && H_->dst != H_->call->o) free(H_->dst);
    for (int i = 0; H_->ws && i < H_->T; i++) {
        worker_scratch *w = &H_->ws[i];
        free(w->s), free(w->kap), free(w->kc), free(w->vc), free(w->khc), free(w->qs), free(w->qhc);
        free(w->phi), free(w->x), free(w->far), free(w->out), free(w->vaug);
        free(w->cand), free(w->cy), free(w->cx), free(w->ptr);
        free(w->dloc), free(w->ra), free(w->rb), free(w->rdf);
        tkcpu_flash_scratch_free(&w->flash);
    }
    free(H_->ws);
}

static int alloc_workers(hyb *H_) {
    const tki_plan *p = H_->p;
    H_->ws = calloc((size_t)H_->T, sizeof *H_->ws);
    if (!H_->ws) return TK_ERR_NOMEM;
    size_t nc = (size_t)(H_->nc_max > 0 ? H_->nc_max : 1), g = (size_t)(p->g > 0 ? p->g : 1);
    size_t R = (size_t)(H_->fm.R > 0 ? H_->fm.R : 1), ld = (size_t)TKCPU_QBLOCK, rows = TKCPU_QBLOCK;
    size_t w1 = (size_t)p->Dv + 1;
    for (int i = 0; i < H_->T; i++) {
        worker_scratch *w = &H_->ws[i];
        tki_den_acc_init(&w->den);
        w->s = malloc(TILE_Q * nc * sizeof(float));
        w->kap = malloc(TILE_Q * nc * sizeof(float));
        w->kc = malloc(nc * (size_t)p->D * sizeof(float));
        w->vc = malloc(nc * (size_t)p->Dv * sizeof(float));
        w->khc = malloc(nc * g * sizeof(float));
        w->qs = malloc(TILE_Q * (size_t)p->D * sizeof(float));
        w->qhc = malloc(TILE_Q * g * sizeof(float));
        w->phi = malloc(R * ld * sizeof(float));
        w->x = malloc(g * ld * sizeof(float));
        w->far = malloc(rows * w1 * sizeof(float));
        w->out = malloc(TILE_Q * (size_t)p->Dv * sizeof(float));
        w->vaug = malloc((size_t)FAR_BLOCK * w1 * sizeof(float));
        size_t nci = nc > rows ? nc : rows;
        w->cand = malloc(nci * sizeof(int32_t));
        w->cy = malloc(nci * sizeof(int32_t));
        w->cx = malloc(nci * sizeof(int32_t));
        w->ptr = malloc(rows * sizeof(float *));
        w->dloc = malloc(rows * sizeof(double));
        w->ra = malloc(rows * sizeof(double));
        w->rb = malloc(rows * sizeof(double));
        w->rdf = malloc(rows * sizeof(double));
        if (!w->s || !w->kap || !w->kc || !w->vc || !w->khc || !w->qs || !w->qhc || !w->phi || !w->x ||
            !w->far || !w->out || !w->vaug || !w->cand || !w->cy || !w->cx || !w->ptr || !w->dloc ||
            !w->ra || !w->rb || !w->rdf || tkcpu_flash_scratch_alloc(&w->flash, p->D) != TK_OK)
            return TK_ERR_NOMEM;
    }
    return TK_OK;
}

int tkcpu_hybrid(tkcpu_job *job) {
    const tki_plan *p = job->plan;
    const tk_call *call = job->call;
    hyb H_;
    memset(&H_, 0, sizeof H_);
    H_.job = job;
    H_.p = p;
    H_.call = call;
    H_.T = tkcpu_pool_threads(job->st->pool);
    H_.units = p->B * p->H;
    H_.far = p->w > 0 && p->proj != NULL;
    H_.dst = call->o;
    int rc = make_tiles(&H_);
    if (rc == TK_OK && H_.far) rc = tkcpu_fmap_make(&H_.fm, p->g, p->terms, p->s, p->R, TKCPU_QBLOCK);
    if (rc == TK_OK) rc = alloc_workers(&H_);
    H_.kept_total = calloc((size_t)p->B, sizeof *H_.kept_total);
    if (rc == TK_OK && !H_.kept_total) rc = TK_ERR_NOMEM;
    if (rc != TK_OK) {
        free_hyb(&H_);
        return rc;
    }
    for (int b = 0; b < p->B; b++)
        for (int j = 0; j < p->Nk; j++) H_.kept_total[b] += !call->key_mask || call->key_mask[(size_t)b * p->Nk + j];

    if (H_.far) {
        const int g = p->g, R = H_.fm.R, w1 = p->Dv + 1;
        H_.kchunks = H_.units < 2 * H_.T ? (2 * H_.T + H_.units - 1) / H_.units : 1;
        int64_t items = (int64_t)H_.units * H_.kchunks;
        H_.projf = malloc((size_t)p->H * g * p->D * sizeof(float));
        H_.khat = malloc((size_t)H_.units * p->Nk * g * sizeof(float));
        H_.qhat = malloc((size_t)H_.units * p->Nq * g * sizeof(float));
        H_.Sfar = malloc((size_t)H_.units * R * w1 * sizeof(float));
        if (H_.kchunks > 1) H_.partial = malloc((size_t)items * R * w1 * sizeof(float));
        H_.maxk2 = malloc((size_t)items * sizeof(double));
        H_.maxq2 = malloc((size_t)items * sizeof(double));
        H_.maxv = malloc((size_t)items * sizeof(double));
        if (!H_.projf || !H_.khat || !H_.qhat || !H_.Sfar || (H_.kchunks > 1 && !H_.partial) || !H_.maxk2 ||
            !H_.maxq2 || !H_.maxv) {
            free_hyb(&H_);
            return TK_ERR_NOMEM;
        }
        for (size_t t = 0; t < (size_t)p->H * g * p->D; t++) H_.projf[t] = (float)p->proj[t];
        H_.pass = PASS_F;
        tkcpu_pool_run(job->st->pool, items, hyb_item, &H_);
        size_t s_len = (size_t)R * w1;
        if (H_.kchunks > 1)
            for (int u = 0; u < H_.units; u++) {
                float *d = H_.Sfar + (size_t)u * s_len;
                memcpy(d, H_.partial + (size_t)u * H_.kchunks * s_len, s_len * sizeof *d);
                for (int c = 1; c < H_.kchunks; c++)
                    tkcpu_add(d, H_.partial + ((size_t)u * H_.kchunks + c) * s_len, (int64_t)s_len);
            }
        /* the bound of the top comment, in natural log */
        double mk = 0, mq = 0, mv = 0;
        for (int64_t i = 0; i < items; i++) {
            mk = isnan(H_.maxk2[i]) || H_.maxk2[i] > mk ? H_.maxk2[i] : mk;
            mq = isnan(H_.maxq2[i]) || H_.maxq2[i] > mq ? H_.maxq2[i] : mq;
            mv = H_.maxv[i] > mv ? H_.maxv[i] : mv;
        }
        double log_bound = log((double)p->Nk + 1) + p->s * (mq + mk) / 2 + log(mv + 1e-30);
        if (!(log_bound < 60) || getenv("TK_CPU_HYBRID_BUFFER")) { /* the env: tests */
            H_.dst = malloc((size_t)p->B * p->H * p->Nq * p->Dv * sizeof(float));
            if (!H_.dst) {
                free_hyb(&H_);
                return TK_ERR_NOMEM;
            }
        }
    }
    H_.pass = PASS_O;
    tkcpu_pool_run(job->st->pool, (int64_t)H_.units * H_.ntiles, hyb_item, &H_);
    tki_den_acc *den = job->den;
    int64_t n_bad = 0;
    for (int i = 0; i < H_.T; i++) {
        tki_den_acc_merge(den, &H_.ws[i].den);
        n_bad += H_.ws[i].n_bad;
    }
    tk_result *res = job->res;
    if (n_bad > 0) {
        res->reason = tki_denominator_rule(p, 0, n_bad, den->n, res->detail, sizeof res->detail);
        res->stage = TK_STAGE_FULL;
    } else if (H_.dst != call->o) {
        memcpy(call->o, H_.dst, (size_t)p->B * p->H * p->Nq * p->Dv * sizeof(float));
    }
    free_hyb(&H_);
    return TK_OK;
}

/*
 * workload.c -- the seeded synthetic process that stands in for a Flux
 * transformer's attention inputs (docs/SIMULATOR.md, "Synthetic tensors").
 *
 * Per run (seeded): a structure field S [grid, C] (a few low-frequency plane
 * waves per channel), a noise field E [grid, C] (i.i.d. normal, fixed for the
 * run as in rectified flow), text embeddings T [text, C], and per layer the
 * projections Wq, Wk, Wv [C, H*D] (Wk = rho*Wq + sqrt(1-rho^2)*Z per head:
 * q and k of a trained head are correlated), a RoPE-position vector u and a
 * text-affinity vector a per head, and RMS-norm gains.
 *
 * Per step and layer at sigma:
 *   hidden_n = rmsnorm((1-sigma) S_n + sigma E_n)        image tokens
 *            = rmsnorm(T_n)                              text tokens
 *   q0_n = gain * rmsnorm(c_q + pw(sigma) u [image] + tw a)
 *   k0_n = gain * rmsnorm(c_k + pw(sigma) u [image] + tw a [text])
 *   q = RoPE(q0), k = RoPE(k0), v = c_v
 * with c_q = hidden Wq (c_k, c_v likewise), pw(sigma) = pos_weight *
 * (1 - 0.6 sigma). The RoPE-position component makes q.k a function of the
 * offset between tokens (a local head); the content component makes tokens
 * of similar structure attend to each other (smooth as sigma falls, noise at
 * sigma 1); the text component pulls image queries to text keys.
 */
#include "sim.h"
#include "workload_cuda.h"

#include <cblas.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { CHANNELS = 32, WAVES = 8, TSIM_MAX_THREADS = 16 };

/* Labels of the random streams (the first label of tsim_key). */
enum {
    STREAM_STRUCT = 1, STREAM_NOISE, STREAM_TEXT, STREAM_WQ, STREAM_WK, STREAM_WV, STREAM_U,
    STREAM_A, STREAM_GAIN, STREAM_HEAD, STREAM_LAYER,
};

typedef struct {
    float *wq, *wk, *wv;   /* [C, H*D] each; NULL until the layer is first drawn */
    float *u, *a, *gain;   /* [H*D] each */
} layer_weights;

struct tsim_workload {
    tsim_shape shape;
    uint64_t seed;
    float *structure;       /* [G, C] */
    float *noise;           /* [G, C] */
    float *text;            /* [T, C] */
    float *hidden;          /* [N, C] at hidden_sigma */
    double hidden_sigma;    /* NAN: not computed */
    float *cos_row, *sin_row; /* [grid_h, axes[1]/2] */
    float *cos_col, *sin_col; /* [grid_w, axes[2]/2] */
    tsim_head_params *heads;  /* [L*H] */
    double *layer_gain;       /* [L] */
    layer_weights *layers;    /* [L] */
};

/* ---- random numbers ---- */

uint64_t tsim_mix64(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

uint64_t tsim_key(uint64_t seed, uint64_t a, uint64_t b, uint64_t c, uint64_t d) {
    uint64_t k = tsim_mix64(seed ^ 0x5851f42d4c957f2dull);
    k = tsim_mix64(k ^ a);
    k = tsim_mix64(k ^ b);
    k = tsim_mix64(k ^ c);
    return tsim_mix64(k ^ d);
}

double tsim_uniform(uint64_t key, uint64_t i) {
    return (double)(tsim_mix64(key + i * 0xd1b54a32d192ed03ull) >> 11) * 0x1.0p-53;
}

double tsim_normal(uint64_t key, uint64_t i) {
    double u1 = 1.0 - tsim_uniform(key, 2 * i); /* (0,1] */
    double u2 = tsim_uniform(key, 2 * i + 1);
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

/* ---- RoPE ---- */

static void rope_tables(tsim_workload *w) {
    const tsim_shape *s = &w->shape;
    int p1 = s->model.rope_axes[1] / 2, p2 = s->model.rope_axes[2] / 2;
    for (int r = 0; r < s->grid_h; r++)
        for (int p = 0; p < p1; p++) {
            double omega = pow(s->model.rope_theta, -2.0 * p / s->model.rope_axes[1]);
            w->cos_row[r * p1 + p] = (float)cos(r * omega);
            w->sin_row[r * p1 + p] = (float)sin(r * omega);
        }
    for (int c = 0; c < s->grid_w; c++)
        for (int p = 0; p < p2; p++) {
            double omega = pow(s->model.rope_theta, -2.0 * p / s->model.rope_axes[2]);
            w->cos_col[c * p2 + p] = (float)cos(c * omega);
            w->sin_col[c * p2 + p] = (float)sin(c * omega);
        }
}

/* Rotates pairs (x[2i], x[2i+1]) of one token's head vector by the tables. */
static void rope_token(const tsim_shape *s, const float *cos_row, const float *sin_row,
                       const float *cos_col, const float *sin_col, int r, int c, float *x) {
    int a0 = s->model.rope_axes[0], p1 = s->model.rope_axes[1] / 2, p2 = s->model.rope_axes[2] / 2;
    float *xr = x + a0, *xc = x + a0 + 2 * p1;
    for (int p = 0; p < p1; p++) {
        float cs = cos_row[r * p1 + p], sn = sin_row[r * p1 + p];
        float x0 = xr[2 * p], x1 = xr[2 * p + 1];
        xr[2 * p] = x0 * cs - x1 * sn;
        xr[2 * p + 1] = x0 * sn + x1 * cs;
    }
    for (int p = 0; p < p2; p++) {
        float cs = cos_col[c * p2 + p], sn = sin_col[c * p2 + p];
        float x0 = xc[2 * p], x1 = xc[2 * p + 1];
        xc[2 * p] = x0 * cs - x1 * sn;
        xc[2 * p + 1] = x0 * sn + x1 * cs;
    }
}

void tsim_rope_apply(const tsim_shape *s, float *x) {
    /* Standalone form (replay tools, tests): builds its own tables. */
    tsim_workload tmp;
    memset(&tmp, 0, sizeof tmp);
    tmp.shape = *s;
    int p1 = s->model.rope_axes[1] / 2, p2 = s->model.rope_axes[2] / 2;
    tmp.cos_row = malloc(sizeof(float) * (size_t)s->grid_h * p1 + 1);
    tmp.sin_row = malloc(sizeof(float) * (size_t)s->grid_h * p1 + 1);
    tmp.cos_col = malloc(sizeof(float) * (size_t)s->grid_w * p2 + 1);
    tmp.sin_col = malloc(sizeof(float) * (size_t)s->grid_w * p2 + 1);
    if (tmp.cos_row && tmp.sin_row && tmp.cos_col && tmp.sin_col) {
        rope_tables(&tmp);
        int D = s->model.head_dim, T = s->model.text_tokens;
        for (int h = 0; h < s->model.heads; h++)
            for (int n = T; n < s->tokens; n++) {
                int g = n - T;
                rope_token(s, tmp.cos_row, tmp.sin_row, tmp.cos_col, tmp.sin_col, g / s->grid_w,
                           g % s->grid_w, x + ((size_t)h * s->tokens + n) * D);
            }
    }
    free(tmp.cos_row), free(tmp.sin_row), free(tmp.cos_col), free(tmp.sin_col);
}

/* ---- per-run fields ---- */

static void normalize_columns(float *x, int rows, int cols) {
    for (int c = 0; c < cols; c++) {
        double s = 0, s2 = 0;
        for (int r = 0; r < rows; r++) s += x[(size_t)r * cols + c];
        double mean = s / rows;
        for (int r = 0; r < rows; r++) {
            double d = x[(size_t)r * cols + c] - mean;
            s2 += d * d;
        }
        double inv = s2 > 0 ? 1.0 / sqrt(s2 / rows) : 1.0;
        for (int r = 0; r < rows; r++)
            x[(size_t)r * cols + c] = (float)((x[(size_t)r * cols + c] - mean) * inv);
    }
}

static void make_structure(tsim_workload *w) {
    const tsim_shape *s = &w->shape;
    int G = s->grid_h * s->grid_w;
    for (int c = 0; c < CHANNELS; c++) {
        uint64_t key = tsim_key(w->seed, STREAM_STRUCT, (uint64_t)c, 0, 0);
        double kr[WAVES], kc[WAVES], ph[WAVES], amp[WAVES];
        for (int m = 0; m < WAVES; m++) {
            /* Up to 3 cycles across the image: the same picture at any grid. */
            kr[m] = 6.0 * tsim_uniform(key, 4 * m) - 3.0;
            kc[m] = 6.0 * tsim_uniform(key, 4 * m + 1) - 3.0;
            ph[m] = 6.283185307179586 * tsim_uniform(key, 4 * m + 2);
            amp[m] = 0.5 + tsim_uniform(key, 4 * m + 3);
        }
        for (int g = 0; g < G; g++) {
            double y = (double)(g / s->grid_w) / s->grid_h, x = (double)(g % s->grid_w) / s->grid_w;
            double v = 0;
            for (int m = 0; m < WAVES; m++)
                v += amp[m] * cos(6.283185307179586 * (kr[m] * y + kc[m] * x) + ph[m]);
            w->structure[(size_t)g * CHANNELS + c] = (float)v;
        }
    }
    normalize_columns(w->structure, G, CHANNELS);
    uint64_t nkey = tsim_key(w->seed, STREAM_NOISE, 0, 0, 0);
    for (size_t i = 0; i < (size_t)G * CHANNELS; i++) w->noise[i] = (float)tsim_normal(nkey, i);
    uint64_t tkey = tsim_key(w->seed, STREAM_TEXT, 0, 0, 0);
    for (size_t i = 0; i < (size_t)s->model.text_tokens * CHANNELS; i++)
        w->text[i] = (float)tsim_normal(tkey, i);
}

/* The spread of heads: every layer holds the full range of locality, in a
 * seeded order, so no layer is all-local or all-global. */
static void make_heads(tsim_workload *w) {
    const tsim_shape *s = &w->shape;
    int H = s->model.heads, L = s->layers;
    int *perm = malloc(sizeof(int) * (size_t)H);
    if (!perm) return;
    for (int l = 0; l < L; l++) {
        uint64_t key = tsim_key(w->seed, STREAM_HEAD, (uint64_t)l, 0, 0);
        for (int h = 0; h < H; h++) perm[h] = h;
        for (int h = H - 1; h > 0; h--) { /* Fisher-Yates */
            int j = (int)(tsim_uniform(key, (uint64_t)h) * (h + 1));
            int t = perm[h];
            perm[h] = perm[j];
            perm[j] = t;
        }
        for (int h = 0; h < H; h++) {
            tsim_head_params *p = &w->heads[l * H + h];
            double lam = H > 1 ? (double)perm[h] / (H - 1) : 0.5;
            lam += 0.06 * (tsim_uniform(key, 1000 + (uint64_t)h) - 0.5);
            lam = lam < 0 ? 0 : lam > 1 ? 1 : lam;
            p->locality = lam;
            /* The constants below are the calibration (docs/SIMULATOR.md). */
            p->pos_weight = 1.5 + 1.5 * lam * lam;
            p->pos_length = 8.0 - 5.0 * lam;
            p->text_weight = 0.3 * (1.0 - lam) * (1.0 - lam);
            p->qk_corr = -0.2 + 1.0 * lam + 0.05 * tsim_uniform(key, 2000 + (uint64_t)h);
        }
    }
    /* Logit scale: layer gains log-spaced so that the row-max logit spans
     * about 3..25 across layers (docs/SIMULATOR.md, calibration), in a
     * seeded order over depth. */
    int *lperm = malloc(sizeof(int) * (size_t)L);
    if (lperm) {
        uint64_t lkey = tsim_key(w->seed, STREAM_LAYER, 0, 0, 0);
        for (int l = 0; l < L; l++) lperm[l] = l;
        for (int l = L - 1; l > 0; l--) {
            int j = (int)(tsim_uniform(lkey, (uint64_t)l) * (l + 1));
            int t = lperm[l];
            lperm[l] = lperm[j];
            lperm[j] = t;
        }
        double lo = 3.8, hi = 28.0, D = s->model.head_dim;
        for (int l = 0; l < L; l++) {
            double f = L > 1 ? (double)lperm[l] / (L - 1) : 0.5;
            double target = lo * pow(hi / lo, f); /* row-max logit aimed at */
            w->layer_gain[l] = sqrt(target / sqrt(D));
        }
        free(lperm);
    }
    free(perm);
}

/* Energy of a RoPE pair of frequency omega: a log-normal band around
 * omega = 1/len, so q.k of the position component goes like a bump of
 * about len tokens (cos(offset/len) smoothed), negative beyond. */
static double pair_energy(double omega, double len) {
    double x = log(omega * len) / 0.6;
    return exp(-0.5 * x * x);
}

static int make_layer(tsim_workload *w, int l) {
    const tsim_shape *s = &w->shape;
    int H = s->model.heads, D = s->model.head_dim, HD = H * D;
    layer_weights *lw = &w->layers[l];
    size_t nw = (size_t)CHANNELS * HD;
    lw->wq = malloc(sizeof(float) * nw);
    lw->wk = malloc(sizeof(float) * nw);
    lw->wv = malloc(sizeof(float) * nw);
    lw->u = malloc(sizeof(float) * HD);
    lw->a = malloc(sizeof(float) * HD);
    lw->gain = malloc(sizeof(float) * HD);
    if (!lw->wq || !lw->wk || !lw->wv || !lw->u || !lw->a || !lw->gain) {
        free(lw->wq), free(lw->wk), free(lw->wv), free(lw->u), free(lw->a), free(lw->gain);
        memset(lw, 0, sizeof *lw);
        return 1;
    }
    uint64_t kq = tsim_key(w->seed, STREAM_WQ, (uint64_t)l, 0, 0);
    uint64_t kk = tsim_key(w->seed, STREAM_WK, (uint64_t)l, 0, 0);
    uint64_t kv = tsim_key(w->seed, STREAM_WV, (uint64_t)l, 0, 0);
    double inv_c = 1.0 / sqrt((double)CHANNELS);
    for (size_t i = 0; i < nw; i++) {
        int h = (int)(i % HD) / D;
        double rho = w->heads[l * H + h].qk_corr;
        double zq = tsim_normal(kq, i), zk = tsim_normal(kk, i);
        lw->wq[i] = (float)(zq * inv_c);
        lw->wk[i] = (float)((rho * zq + sqrt(1 - rho * rho) * zk) * inv_c);
        lw->wv[i] = (float)(tsim_normal(kv, i) * inv_c);
    }
    int a0 = s->model.rope_axes[0], a1 = s->model.rope_axes[1], a2 = s->model.rope_axes[2];
    uint64_t ku = tsim_key(w->seed, STREAM_U, (uint64_t)l, 0, 0);
    uint64_t ka = tsim_key(w->seed, STREAM_A, (uint64_t)l, 0, 0);
    uint64_t kg = tsim_key(w->seed, STREAM_GAIN, (uint64_t)l, 0, 0);
    for (int h = 0; h < H; h++) {
        const tsim_head_params *p = &w->heads[l * H + h];
        float *u = lw->u + h * D, *a = lw->a + h * D, *g = lw->gain + h * D;
        memset(u, 0, sizeof(float) * D);
        memset(a, 0, sizeof(float) * D);
        /* u: RoPE-position vector on the row and column dims, a random
         * direction in each pair with the pair's energy. */
        double e2 = 0;
        for (int axis = 1; axis <= 2; axis++) {
            int base = axis == 1 ? a0 : a0 + a1, dim = axis == 1 ? a1 : a2;
            for (int pr = 0; pr < dim / 2; pr++) {
                double omega = pow(s->model.rope_theta, -2.0 * pr / dim);
                double amp = sqrt(pair_energy(omega, p->pos_length));
                double ang = 6.283185307179586 * tsim_uniform(ku, (uint64_t)(h * D + base + 2 * pr));
                u[base + 2 * pr] = (float)(amp * cos(ang));
                u[base + 2 * pr + 1] = (float)(amp * sin(ang));
                e2 += amp * amp;
            }
        }
        double su = e2 > 0 ? sqrt((double)D / e2) : 0; /* ||u||^2 = D: RMS 1 like content */
        for (int d = 0; d < D; d++) u[d] = (float)(u[d] * su);
        /* a: text affinity on the index axis (not rotated: every token has
         * index 0), RMS 1 over the whole head. */
        double sa = sqrt((double)D / a0);
        for (int d = 0; d < a0; d++) a[d] = (float)(tsim_normal(ka, (uint64_t)(h * D + d)) * sa);
        /* RMS-norm gain: the layer's scale times a per-dim factor near 1. */
        for (int d = 0; d < D; d++)
            g[d] = (float)(w->layer_gain[l] * (1.0 + 0.15 * tsim_normal(kg, (uint64_t)(h * D + d))));
    }
    return 0;
}

int tsim_workload_open(const tsim_shape *shape, uint64_t seed, tsim_workload **out, char *err,
                       size_t errlen) {
    *out = NULL;
    int axes_sum = shape->model.rope_axes[0] + shape->model.rope_axes[1] + shape->model.rope_axes[2];
    if (axes_sum != shape->model.head_dim || shape->model.rope_axes[1] % 2 ||
        shape->model.rope_axes[2] % 2 || shape->model.rope_axes[0] < 2) {
        snprintf(err, errlen, "model %s: RoPE axes %d/%d/%d do not fit head dim %d",
                 shape->model.name, shape->model.rope_axes[0], shape->model.rope_axes[1],
                 shape->model.rope_axes[2], shape->model.head_dim);
        return 1;
    }
    tsim_workload *w = calloc(1, sizeof *w);
    if (!w) goto oom;
    w->shape = *shape;
    w->seed = seed;
    w->hidden_sigma = NAN;
    int G = shape->grid_h * shape->grid_w, T = shape->model.text_tokens, N = shape->tokens;
    int L = shape->layers, H = shape->model.heads;
    int p1 = shape->model.rope_axes[1] / 2, p2 = shape->model.rope_axes[2] / 2;
    w->structure = malloc(sizeof(float) * (size_t)G * CHANNELS);
    w->noise = malloc(sizeof(float) * (size_t)G * CHANNELS);
    w->text = malloc(sizeof(float) * ((size_t)T * CHANNELS + 1));
    w->hidden = malloc(sizeof(float) * (size_t)N * CHANNELS);
    w->cos_row = malloc(sizeof(float) * (size_t)shape->grid_h * p1);
    w->sin_row = malloc(sizeof(float) * (size_t)shape->grid_h * p1);
    w->cos_col = malloc(sizeof(float) * (size_t)shape->grid_w * p2);
    w->sin_col = malloc(sizeof(float) * (size_t)shape->grid_w * p2);
    w->heads = calloc((size_t)L * H, sizeof *w->heads);
    w->layer_gain = calloc((size_t)L, sizeof *w->layer_gain);
    w->layers = calloc((size_t)L, sizeof *w->layers);
    if (!w->structure || !w->noise || !w->text || !w->hidden || !w->cos_row ||
        !w->sin_row || !w->cos_col || !w->sin_col || !w->heads || !w->layer_gain || !w->layers)
        goto oom;
    rope_tables(w);
    make_structure(w);
    make_heads(w);
    *out = w;
    return 0;
oom:
    tsim_workload_free(w);
    snprintf(err, errlen, "workload %s %dx%d: out of memory", shape->model.name, shape->grid_w,
             shape->grid_h);
    return 1;
}

void tsim_workload_free(tsim_workload *w) {
    if (!w) return;
    if (w->layers)
        for (int l = 0; l < w->shape.layers; l++) {
            layer_weights *lw = &w->layers[l];
            free(lw->wq), free(lw->wk), free(lw->wv), free(lw->u), free(lw->a), free(lw->gain);
        }
    free(w->layers), free(w->layer_gain), free(w->heads);
    free(w->structure), free(w->noise), free(w->text), free(w->hidden);
    free(w->cos_row), free(w->sin_row), free(w->cos_col), free(w->sin_col);
    free(w);
}

const tsim_shape *tsim_workload_shape(const tsim_workload *w) { return &w->shape; }

const tsim_head_params *tsim_workload_head(const tsim_workload *w, int layer, int head) {
    return &w->heads[layer * w->shape.model.heads + head];
}

double tsim_workload_layer_gain(const tsim_workload *w, int layer) { return w->layer_gain[layer]; }

static void rms_normalize(float *x, int n) {
    double s = 0;
    for (int i = 0; i < n; i++) s += (double)x[i] * x[i];
    float inv = (float)(1.0 / sqrt(s / n + 1e-6));
    for (int i = 0; i < n; i++) x[i] *= inv;
}

static void make_hidden(tsim_workload *w, double sigma) {
    if (w->hidden_sigma == sigma) return;
    const tsim_shape *s = &w->shape;
    int T = s->model.text_tokens, G = s->grid_h * s->grid_w;
    memcpy(w->hidden, w->text, sizeof(float) * (size_t)T * CHANNELS);
    float a = (float)(1.0 - sigma), b = (float)sigma;
    for (int g = 0; g < G; g++) {
        float *x = w->hidden + (size_t)(T + g) * CHANNELS;
        const float *st = w->structure + (size_t)g * CHANNELS, *no = w->noise + (size_t)g * CHANNELS;
        for (int c = 0; c < CHANNELS; c++) x[c] = a * st[c] + b * no[c];
    }
    for (int n = 0; n < s->tokens; n++) rms_normalize(w->hidden + (size_t)n * CHANNELS, CHANNELS);
    w->hidden_sigma = sigma;
}

/* The per-row half of a layer (add the position and text components, RMS
 * norm, gain, keep q0/k0, RoPE), over rows [row0, row1) of the H*N rows. */
typedef struct {
    const tsim_workload *w;
    const layer_weights *lw;
    int layer;
    float pw, sharp;
    float *q, *k, *q0, *k0;
    size_t row0, row1;
} row_job;

static void finish_rows(const row_job *j) {
    const tsim_workload *w = j->w;
    const tsim_shape *s = &w->shape;
    int H = s->model.heads, D = s->model.head_dim, N = s->tokens, T = s->model.text_tokens;
    for (size_t row = j->row0; row < j->row1; row++) {
        int h = (int)(row / (size_t)N), n = (int)(row % (size_t)N);
        const tsim_head_params *p = &w->heads[j->layer * H + h];
        const float *u = j->lw->u + h * D, *a = j->lw->a + h * D, *g = j->lw->gain + h * D;
        float upos = (float)p->pos_weight * j->pw, utext = (float)p->text_weight;
        float *qn = j->q + row * D, *kn = j->k + row * D;
        int image = n >= T;
        for (int d = 0; d < D; d++) {
            qn[d] += utext * a[d] + (image ? upos * u[d] : 0.0f);
            kn[d] += (image ? upos * u[d] : utext * a[d]);
        }
        rms_normalize(qn, D);
        rms_normalize(kn, D);
        for (int d = 0; d < D; d++) {
            qn[d] *= g[d] * j->sharp;
            kn[d] *= g[d] * j->sharp;
        }
        if (j->q0) memcpy(j->q0 + row * D, qn, sizeof(float) * D);
        if (j->k0) memcpy(j->k0 + row * D, kn, sizeof(float) * D);
        if (image) {
            int gi = n - T, r = gi / s->grid_w, c = gi % s->grid_w;
            rope_token(s, w->cos_row, w->sin_row, w->cos_col, w->sin_col, r, c, qn);
            rope_token(s, w->cos_row, w->sin_row, w->cos_col, w->sin_col, r, c, kn);
        }
    }
}

static void *finish_rows_thread(void *arg) {
    finish_rows(arg);
    return NULL;
}

int tsim_workload_layer(tsim_workload *w, int layer, double sigma, float *q, float *k, float *v,
                        float *q0, float *k0) {
    const tsim_shape *s = &w->shape;
    if (layer < 0 || layer >= s->layers || !(sigma >= 0 && sigma <= 1)) return 1;
    if (!w->layers[layer].wq && make_layer(w, layer)) return 1;
    make_hidden(w, sigma);
    const layer_weights *lw = &w->layers[layer];
    int H = s->model.heads, D = s->model.head_dim, HD = H * D, N = s->tokens;
    for (int h = 0; h < H; h++) {
        size_t off = (size_t)h * N * D;
        /* content of q, k, v straight into the outputs: [N,C] x [C,D] */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, D, CHANNELS, 1.0f, w->hidden,
                    CHANNELS, lw->wq + h * D, HD, 0.0f, q + off, D);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, D, CHANNELS, 1.0f, w->hidden,
                    CHANNELS, lw->wk + h * D, HD, 0.0f, k + off, D);
        if (v)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, D, CHANNELS, 1.0f, w->hidden,
                        CHANNELS, lw->wv + h * D, HD, 0.0f, v + off, D);
    }
    /* The rest is independent per row: split it over threads when large.
     * Each row's arithmetic is the same whatever the split (same bytes). */
    size_t rows = (size_t)H * N;
    row_job jobs[TSIM_MAX_THREADS];
    pthread_t tid[TSIM_MAX_THREADS];
    int nt = 1;
    if (rows * (size_t)D >= (1u << 20)) {
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        nt = cpus < 1 ? 1 : cpus > TSIM_MAX_THREADS ? TSIM_MAX_THREADS : (int)cpus;
    }
    for (int t = 0; t < nt; t++) {
        jobs[t] = (row_job){w, lw, layer, (float)(1.0 - 0.8 * sigma),
                            (float)(1.0 - 0.3 * sigma) /* logits grow as the image forms */,
                            q, k, q0, k0, rows * t / nt, rows * (t + 1) / nt};
    }
    int started = 0;
    for (int t = 1; t < nt; t++) {
        if (pthread_create(&tid[t], NULL, finish_rows_thread, &jobs[t]) != 0) break;
        started = t;
    }
    /* rows of threads that could not start are done here */
    finish_rows(&jobs[0]);
    for (int t = started + 1; t < nt; t++) finish_rows(&jobs[t]);
    for (int t = 1; t <= started; t++) pthread_join(tid[t], NULL);
    return 0;
}

/* ---- the fields the device generator reads (workload_cuda.h) ---- */

void tsim_workload_fields_get(const tsim_workload *w, tsim_workload_fields *f) {
    const tsim_shape *s = &w->shape;
    memset(f, 0, sizeof *f);
    f->heads = s->model.heads, f->head_dim = s->model.head_dim;
    f->tokens = s->tokens, f->text_tokens = s->model.text_tokens;
    f->grid_h = s->grid_h, f->grid_w = s->grid_w;
    f->channels = CHANNELS, f->layers = s->layers;
    for (int i = 0; i < 3; i++) f->rope_axes[i] = s->model.rope_axes[i];
    f->structure = w->structure, f->noise = w->noise, f->text = w->text;
    f->cos_row = w->cos_row, f->sin_row = w->sin_row;
    f->cos_col = w->cos_col, f->sin_col = w->sin_col;
}

int tsim_workload_layer_fields(tsim_workload *w, int layer, tsim_layer_fields *f,
                               float *pos_weight, float *text_weight) {
    if (layer < 0 || layer >= w->shape.layers) return 1;
    if (!w->layers[layer].wq && make_layer(w, layer)) return 1;
    const layer_weights *lw = &w->layers[layer];
    f->wq = lw->wq, f->wk = lw->wk, f->wv = lw->wv;
    f->u = lw->u, f->a = lw->a, f->gain = lw->gain;
    int H = w->shape.model.heads;
    for (int h = 0; h < H; h++) {
        pos_weight[h] = (float)w->heads[layer * H + h].pos_weight;
        text_weight[h] = (float)w->heads[layer * H + h].text_weight;
    }
    return 0;
}

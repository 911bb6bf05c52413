/*
 * workload_cuda.cu -- the synthetic generator's per-layer work on the GPU
 * (see workload_cuda.h). The arithmetic mirrors workload.c line by line:
 * the latent mix and the RMS norms sum squares in double and scale in float;
 * the float products and sums use the _rn intrinsics so that nvcc does not
 * fuse them into FMAs the CPU code does not do. The 32-term projection sums
 * run in channel order (OpenBLAS's order is its own): the one source of
 * difference beyond the last bit, a relative 1e-6 or so.
 */
#include "workload_cuda.h"

#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { TSIM_CUDA_CHANNELS = 32, TOKENS_PER_BLOCK = 16 };

typedef struct {
    float *wq, *wk, *wv;   /* [C, H*D] */
    float *u, *a, *gain;   /* [H*D] */
    float *pos_weight, *text_weight; /* [H] */
} device_layer;

struct tsim_workload_cuda {
    struct tsim_workload *w;   /* borrowed */
    tsim_workload_fields f;
    float *structure, *noise, *text;      /* device copies */
    float *cos_row, *sin_row, *cos_col, *sin_col;
    float *hidden;                        /* [N, C] at hidden_sigma */
    double hidden_sigma;                  /* negative: not computed */
    device_layer *layers;                 /* [L]; wq NULL until first drawn */
    float *host_pos, *host_text;          /* [H] scratch */
};

static int cuda_ok(cudaError_t e, const char *what, char *err, size_t errlen) {
    if (e == cudaSuccess) return 0;
    snprintf(err, errlen, "cuda generator: %s: %s", what, cudaGetErrorString(e));
    return 1;
}

static int upload(float **dst, const float *src, size_t n, char *err, size_t errlen) {
    *dst = NULL;
    if (n == 0) n = 1; /* a model without text tokens still gets a valid pointer */
    if (cuda_ok(cudaMalloc((void **)dst, n * sizeof(float)), "allocating", err, errlen)) {
        *dst = NULL;
        return 1;
    }
    if (src && cuda_ok(cudaMemcpy(*dst, src, n * sizeof(float), cudaMemcpyHostToDevice),
                       "uploading", err, errlen))
        return 1;
    return 0;
}

/* ---- kernels ---- */

/* hidden_n = rmsnorm(text_n) for text tokens, rmsnorm((1-s) S_g + s E_g) for
 * image tokens (workload.c make_hidden). One thread per token. */
__global__ void hidden_kernel(const float *text, const float *structure, const float *noise,
                              int text_tokens, int tokens, float a, float b, float *hidden) {
    int n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= tokens) return;
    float x[TSIM_CUDA_CHANNELS];
    if (n < text_tokens) {
        for (int c = 0; c < TSIM_CUDA_CHANNELS; c++) x[c] = text[(size_t)n * TSIM_CUDA_CHANNELS + c];
    } else {
        size_t g = (size_t)(n - text_tokens) * TSIM_CUDA_CHANNELS;
        for (int c = 0; c < TSIM_CUDA_CHANNELS; c++)
            x[c] = __fadd_rn(__fmul_rn(a, structure[g + c]), __fmul_rn(b, noise[g + c]));
    }
    double s = 0;
    for (int c = 0; c < TSIM_CUDA_CHANNELS; c++) s += (double)x[c] * (double)x[c];
    float inv = (float)(1.0 / sqrt(s / TSIM_CUDA_CHANNELS + 1e-6));
    for (int c = 0; c < TSIM_CUDA_CHANNELS; c++)
        hidden[(size_t)n * TSIM_CUDA_CHANNELS + c] = __fmul_rn(x[c], inv);
}

/* Sum of v over the block (blockDim.x a multiple of 32, at most 1024);
 * every thread gets the total. red holds 32 doubles. */
__device__ double block_sum(double v, double *red) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    __syncthreads(); /* red may still be read from the previous call */
    if (lane == 0) red[warp] = v;
    __syncthreads();
    double t = 0;
    for (int i = 0; i < warps; i++) t += red[i];
    return t;
}

typedef struct {
    const float *hidden, *wq, *wk, *wv, *u, *a, *gain, *pos_weight, *text_weight;
    const float *cos_row, *sin_row, *cos_col, *sin_col;
    float *q, *k, *v, *q0, *k0;
    int heads, head_dim, tokens, text_tokens, grid_w, a0, a1, a2;
    float pw, sharp;
} layer_args;

/* One block per (head, TOKENS_PER_BLOCK tokens), one thread per head dim:
 * the row work of workload.c finish_rows after the projections. */
__global__ void layer_kernel(layer_args p) {
    __shared__ float hid[TSIM_CUDA_CHANNELS];
    __shared__ double red[32];
    extern __shared__ float rot[]; /* [2 * head_dim]: q then k, for the RoPE partner */
    int D = p.head_dim, HD = p.heads * D, d = threadIdx.x, h = blockIdx.y;
    int live = d < D;
    int col = h * D + (live ? d : 0);
    float wq[TSIM_CUDA_CHANNELS], wk[TSIM_CUDA_CHANNELS], wv[TSIM_CUDA_CHANNELS];
    for (int c = 0; c < TSIM_CUDA_CHANNELS; c++) {
        wq[c] = p.wq[(size_t)c * HD + col];
        wk[c] = p.wk[(size_t)c * HD + col];
        wv[c] = p.wv[(size_t)c * HD + col];
    }
    float ua = p.a[col], uu = p.u[col], g = __fmul_rn(p.gain[col], p.sharp);
    float upos = __fmul_rn(p.pos_weight[h], p.pw), utext = p.text_weight[h];
    int n0 = blockIdx.x * TOKENS_PER_BLOCK;
    int p1 = p.a1 / 2, p2 = p.a2 / 2;
    for (int t = 0; t < TOKENS_PER_BLOCK; t++) {
        int n = n0 + t;
        if (n >= p.tokens) break; /* uniform over the block */
        __syncthreads(); /* hid and rot of the previous token are read */
        if (threadIdx.x < TSIM_CUDA_CHANNELS)
            hid[threadIdx.x] = p.hidden[(size_t)n * TSIM_CUDA_CHANNELS + threadIdx.x];
        __syncthreads();
        float cq = 0, ck = 0, cv = 0;
        for (int c = 0; c < TSIM_CUDA_CHANNELS; c++) {
            cq = __fadd_rn(cq, __fmul_rn(hid[c], wq[c]));
            ck = __fadd_rn(ck, __fmul_rn(hid[c], wk[c]));
            cv = __fadd_rn(cv, __fmul_rn(hid[c], wv[c]));
        }
        int image = n >= p.text_tokens;
        float qn = __fadd_rn(cq, __fadd_rn(__fmul_rn(utext, ua), image ? __fmul_rn(upos, uu) : 0.0f));
        float kn = __fadd_rn(ck, image ? __fmul_rn(upos, uu) : __fmul_rn(utext, ua));
        double sq = live ? (double)qn * (double)qn : 0.0, sk = live ? (double)kn * (double)kn : 0.0;
        sq = block_sum(sq, red);
        sk = block_sum(sk, red);
        qn = __fmul_rn(qn, (float)(1.0 / sqrt(sq / D + 1e-6)));
        kn = __fmul_rn(kn, (float)(1.0 / sqrt(sk / D + 1e-6)));
        qn = __fmul_rn(qn, g);
        kn = __fmul_rn(kn, g);
        size_t at = ((size_t)h * p.tokens + n) * D + d;
        if (live) {
            if (p.q0) p.q0[at] = qn;
            if (p.k0) p.k0[at] = kn;
            if (p.v) p.v[at] = cv;
            rot[d] = qn;
            rot[D + d] = kn;
        }
        __syncthreads();
        float qo = qn, ko = kn;
        if (live && image && d >= p.a0) {
            int gi = n - p.text_tokens, r = gi / p.grid_w, cc = gi % p.grid_w;
            int rel = d < p.a0 + p.a1 ? d - p.a0 : d - p.a0 - p.a1;
            int pr = rel >> 1, odd = rel & 1;
            float cs, sn;
            if (d < p.a0 + p.a1) cs = p.cos_row[r * p1 + pr], sn = p.sin_row[r * p1 + pr];
            else cs = p.cos_col[cc * p2 + pr], sn = p.sin_col[cc * p2 + pr];
            int e = odd ? d - 1 : d; /* the pair's even dim */
            float q0e = rot[e], q1e = rot[e + 1], k0e = rot[D + e], k1e = rot[D + e + 1];
            if (!odd) {
                qo = __fsub_rn(__fmul_rn(q0e, cs), __fmul_rn(q1e, sn));
                ko = __fsub_rn(__fmul_rn(k0e, cs), __fmul_rn(k1e, sn));
            } else {
                qo = __fadd_rn(__fmul_rn(q0e, sn), __fmul_rn(q1e, cs));
                ko = __fadd_rn(__fmul_rn(k0e, sn), __fmul_rn(k1e, cs));
            }
        }
        if (live) {
            p.q[at] = qo;
            p.k[at] = ko;
        }
    }
}

/* ---- host side ---- */

extern "C" void tsim_workload_cuda_free(tsim_workload_cuda *g) {
    if (!g) return;
    if (g->layers)
        for (int l = 0; l < g->f.layers; l++) {
            device_layer *dl = &g->layers[l];
            float *ptrs[8] = {dl->wq, dl->wk, dl->wv, dl->u, dl->a, dl->gain, dl->pos_weight, dl->text_weight};
            for (int i = 0; i < 8; i++) cudaFree(ptrs[i]);
        }
    float *ptrs[8] = {g->structure, g->noise, g->text, g->cos_row, g->sin_row, g->cos_col, g->sin_col, g->hidden};
    for (int i = 0; i < 8; i++) cudaFree(ptrs[i]);
    free(g->layers), free(g->host_pos), free(g->host_text);
    free(g);
}

extern "C" int tsim_workload_cuda_open(struct tsim_workload *w, tsim_workload_cuda **out, char *err,
                                       size_t errlen) {
    *out = NULL;
    tsim_workload_cuda *g = (tsim_workload_cuda *)calloc(1, sizeof *g);
    if (!g) {
        snprintf(err, errlen, "cuda generator: out of memory");
        return 1;
    }
    g->w = w;
    tsim_workload_fields_get(w, &g->f);
    const tsim_workload_fields *f = &g->f;
    if (f->channels != TSIM_CUDA_CHANNELS || f->head_dim < 1 || f->head_dim > 1024) {
        snprintf(err, errlen, "cuda generator: %d channels, head dim %d not handled (32 channels, head dim <= 1024)",
                 f->channels, f->head_dim);
        free(g);
        return 1;
    }
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count < 1) {
        snprintf(err, errlen, "cuda generator: no CUDA device");
        free(g);
        return 1;
    }
    g->hidden_sigma = -1;
    size_t G = (size_t)f->grid_h * f->grid_w, C = TSIM_CUDA_CHANNELS;
    size_t p1 = (size_t)f->rope_axes[1] / 2, p2 = (size_t)f->rope_axes[2] / 2;
    g->layers = (device_layer *)calloc((size_t)f->layers, sizeof *g->layers);
    g->host_pos = (float *)malloc(sizeof(float) * (size_t)f->heads);
    g->host_text = (float *)malloc(sizeof(float) * (size_t)f->heads);
    if (!g->layers || !g->host_pos || !g->host_text) {
        snprintf(err, errlen, "cuda generator: out of memory");
        tsim_workload_cuda_free(g);
        return 1;
    }
    if (upload(&g->structure, f->structure, G * C, err, errlen) ||
        upload(&g->noise, f->noise, G * C, err, errlen) ||
        upload(&g->text, f->text, (size_t)f->text_tokens * C, err, errlen) ||
        upload(&g->cos_row, f->cos_row, (size_t)f->grid_h * p1, err, errlen) ||
        upload(&g->sin_row, f->sin_row, (size_t)f->grid_h * p1, err, errlen) ||
        upload(&g->cos_col, f->cos_col, (size_t)f->grid_w * p2, err, errlen) ||
        upload(&g->sin_col, f->sin_col, (size_t)f->grid_w * p2, err, errlen) ||
        upload(&g->hidden, NULL, (size_t)f->tokens * C, err, errlen)) {
        tsim_workload_cuda_free(g);
        return 1;
    }
    *out = g;
    return 0;
}

/* Uploads a layer's projections and head weights on its first draw. */
static int ensure_layer(tsim_workload_cuda *g, int layer, char *err, size_t errlen) {
    device_layer *dl = &g->layers[layer];
    if (dl->wq) return 0;
    tsim_layer_fields lf;
    if (tsim_workload_layer_fields(g->w, layer, &lf, g->host_pos, g->host_text)) {
        snprintf(err, errlen, "cuda generator: layer %d: out of memory drawing its weights", layer);
        return 1;
    }
    size_t HD = (size_t)g->f.heads * g->f.head_dim, CW = TSIM_CUDA_CHANNELS * HD;
    device_layer tmp;
    memset(&tmp, 0, sizeof tmp);
    int bad = upload(&tmp.wq, lf.wq, CW, err, errlen) || upload(&tmp.wk, lf.wk, CW, err, errlen) ||
              upload(&tmp.wv, lf.wv, CW, err, errlen) || upload(&tmp.u, lf.u, HD, err, errlen) ||
              upload(&tmp.a, lf.a, HD, err, errlen) || upload(&tmp.gain, lf.gain, HD, err, errlen) ||
              upload(&tmp.pos_weight, g->host_pos, (size_t)g->f.heads, err, errlen) ||
              upload(&tmp.text_weight, g->host_text, (size_t)g->f.heads, err, errlen);
    if (bad) {
        float *ptrs[8] = {tmp.wq, tmp.wk, tmp.wv, tmp.u, tmp.a, tmp.gain, tmp.pos_weight, tmp.text_weight};
        for (int i = 0; i < 8; i++) cudaFree(ptrs[i]);
        return 1;
    }
    *dl = tmp;
    return 0;
}

extern "C" int tsim_workload_cuda_layer(tsim_workload_cuda *g, int layer, double sigma, float *q,
                                        float *k, float *v, float *q0, float *k0, char *err,
                                        size_t errlen) {
    const tsim_workload_fields *f = &g->f;
    if (layer < 0 || layer >= f->layers || !(sigma >= 0 && sigma <= 1) || !q || !k) {
        snprintf(err, errlen, "cuda generator: layer %d at sigma %g: out of range", layer, sigma);
        return 1;
    }
    if (ensure_layer(g, layer, err, errlen)) return 1;
    if (g->hidden_sigma != sigma) {
        int threads = 128, blocks = (f->tokens + threads - 1) / threads;
        hidden_kernel<<<blocks, threads>>>(g->text, g->structure, g->noise, f->text_tokens,
                                           f->tokens, (float)(1.0 - sigma), (float)sigma, g->hidden);
        if (cuda_ok(cudaGetLastError(), "latent kernel", err, errlen)) return 1;
        g->hidden_sigma = sigma;
    }
    const device_layer *dl = &g->layers[layer];
    layer_args p;
    p.hidden = g->hidden, p.wq = dl->wq, p.wk = dl->wk, p.wv = dl->wv;
    p.u = dl->u, p.a = dl->a, p.gain = dl->gain;
    p.pos_weight = dl->pos_weight, p.text_weight = dl->text_weight;
    p.cos_row = g->cos_row, p.sin_row = g->sin_row, p.cos_col = g->cos_col, p.sin_col = g->sin_col;
    p.q = q, p.k = k, p.v = v, p.q0 = q0, p.k0 = k0;
    p.heads = f->heads, p.head_dim = f->head_dim, p.tokens = f->tokens;
    p.text_tokens = f->text_tokens, p.grid_w = f->grid_w;
    p.a0 = f->rope_axes[0], p.a1 = f->rope_axes[1], p.a2 = f->rope_axes[2];
    p.pw = (float)(1.0 - 0.8 * sigma);
    p.sharp = (float)(1.0 - 0.3 * sigma); /* as workload.c: logits grow as the image forms */
    int threads = (f->head_dim + 31) / 32 * 32;
    dim3 grid((unsigned)((f->tokens + TOKENS_PER_BLOCK - 1) / TOKENS_PER_BLOCK), (unsigned)f->heads);
    layer_kernel<<<grid, threads, 2 * sizeof(float) * (size_t)f->head_dim>>>(p);
    if (cuda_ok(cudaGetLastError(), "layer kernel", err, errlen)) return 1;
    return cuda_ok(cudaDeviceSynchronize(), "layer kernel", err, errlen);
}

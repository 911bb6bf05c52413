/*
 * workload_cuda.cu -- the synthetic generator's per-layer work on the GPU
 * (see workload_cuda.h). The arithmetic mirrors workload.c line by line:
 * the latent mix and its RMS norm (squares summed in double) scale in float;
 * the float products and sums use the _rn intrinsics so that nvcc does not
 * fuse them into FMAs the CPU code does not do. The 32-term projection sums
 * are FMAs in channel order (OpenBLAS's order is its own) and the RMS sums
 * of squares are float, in a warp's butterfly order (workload.c: double):
 * the sources of difference beyond the last bit, a relative 1e-6 or so.
 * Output f32, or bf16 (what taylor-sim feeds the cuda backend, as a real
 * Flux host does).
 */
#include "workload_cuda.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { TSIM_CUDA_CHANNELS = 32, LAYER_TOKENS = 64, LAYER_BATCH = 8, SUMS_BLOCKS = 264 };

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
    device_layer *layers;                 /* [L], all uploaded at open */
    float *host_pos, *host_text;          /* [H] scratch */
    double *sums;                         /* [2 * SUMS_BLOCKS + 2] checksum partials */
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

typedef struct {
    const float *hidden, *wq, *wk, *wv, *u, *a, *gain, *pos_weight, *text_weight;
    const float *cos_row, *sin_row, *cos_col, *sin_col;
    void *q, *k, *v, *q0, *k0; /* float or __nv_bfloat16, [H,N,D] */
    int heads, head_dim, tokens, text_tokens, grid_w, a0, a1, a2;
    float pw, sharp;
} layer_args;

__device__ __forceinline__ void put(float *dst, size_t at, float x) { dst[at] = x; }
__device__ __forceinline__ void put(__nv_bfloat16 *dst, size_t at, float x) {
    dst[at] = __float2bfloat16_rn(x);
}

/* Sum over the warp in a fixed butterfly order (every lane gets it). */
template <typename V> __device__ __forceinline__ V warp_sum(V v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* One block per (head, LAYER_TOKENS tokens), one thread per head dim d,
 * holding column d of the head's three [C, D] projection slices in
 * registers. Tokens go in batches of LAYER_BATCH: the hidden rows are a
 * shared-memory broadcast, each token's RMS sums are a warp butterfly then
 * the warps' partials added in warp order (the same total in every warp,
 * whose lane i turns sum i into its inverse RMS for the others),
 * and a RoPE pair (d, d ^ 1) is lanes (l, l ^ 1) of one warp.
 * The per-element arithmetic is workload.c finish_rows's, in its order; the
 * 32-term projections are fused multiply-adds in channel order (OpenBLAS
 * blocks its own way: a few float ulps either way). */
template <typename T>
__global__ void __launch_bounds__(128, 3) layer_kernel(layer_args p) {
    constexpr int C = TSIM_CUDA_CHANNELS, NB = LAYER_BATCH;
    __shared__ float4 hid[LAYER_TOKENS][C / 4];
    __shared__ float red[2][4][2 * NB]; /* [batch parity][warp][q sums, k sums] */
    const int D = p.head_dim, HD = p.heads * D, h = blockIdx.y, d = threadIdx.x;
    const int lane = d & 31, warp = d >> 5, warps = D >> 5;
    const int n0 = blockIdx.x * LAYER_TOKENS;
    const int count = p.tokens - n0 < LAYER_TOKENS ? p.tokens - n0 : LAYER_TOKENS;
    for (int i = d; i < count * (C / 4); i += D)
        hid[i / (C / 4)][i % (C / 4)] = ((const float4 *)(p.hidden + (size_t)n0 * C))[i];
    const int col = h * D + d;
    float wq[C], wk[C], wv[C];
#pragma unroll
    for (int c = 0; c < C; c++) {
        wq[c] = p.wq[(size_t)c * HD + col];
        wk[c] = p.wk[(size_t)c * HD + col];
        wv[c] = p.wv[(size_t)c * HD + col];
    }
    const float ua = p.a[col], uu = p.u[col], g = __fmul_rn(p.gain[col], p.sharp);
    const float upos = __fmul_rn(p.pos_weight[h], p.pw), utext = p.text_weight[h];
    const int p1 = p.a1 / 2, p2 = p.a2 / 2;
    /* this dim's RoPE: axis, pair index and parity (image tokens, d >= a0) */
    const int roped = d >= p.a0, on_rows = d < p.a0 + p.a1;
    const int rel = on_rows ? d - p.a0 : d - p.a0 - p.a1, pr = rel >> 1, odd = rel & 1;
    T *q = (T *)p.q, *k = (T *)p.k, *v = (T *)p.v, *q0 = (T *)p.q0, *k0 = (T *)p.k0;
    __syncthreads();
    for (int b0 = 0, parity = 0; b0 < count; b0 += NB, parity ^= 1) {
        float cq[NB], ck[NB], cv[NB];
#pragma unroll
        for (int t = 0; t < NB; t++) {
            cq[t] = ck[t] = cv[t] = 0;
            if (b0 + t < count) {
#pragma unroll
                for (int c4 = 0; c4 < C / 4; c4++) {
                    float4 x = hid[b0 + t][c4];
                    float xs[4] = {x.x, x.y, x.z, x.w};
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        cq[t] = __fmaf_rn(xs[e], wq[4 * c4 + e], cq[t]);
                        ck[t] = __fmaf_rn(xs[e], wk[4 * c4 + e], ck[t]);
                        cv[t] = __fmaf_rn(xs[e], wv[4 * c4 + e], cv[t]);
                    }
                }
            }
        }
        float sums[2 * NB];
#pragma unroll
        for (int t = 0; t < NB; t++) {
            const int image = n0 + b0 + t >= p.text_tokens;
            cq[t] = __fadd_rn(cq[t], __fadd_rn(__fmul_rn(utext, ua), image ? __fmul_rn(upos, uu) : 0.0f));
            ck[t] = __fadd_rn(ck[t], image ? __fmul_rn(upos, uu) : __fmul_rn(utext, ua));
            sums[t] = warp_sum(cq[t] * cq[t]);
            sums[NB + t] = warp_sum(ck[t] * ck[t]);
        }
        if (lane == 0)
#pragma unroll
            for (int i = 0; i < 2 * NB; i++) red[parity][warp][i] = sums[i];
        __syncthreads(); /* red[parity] is read below; the next batch writes the other half */
        /* lane i < 2 NB adds sum i over the warps (in warp order) and takes its
         * inverse RMS once; the tokens' factors then reach every lane by shuffle */
        float inv = 1.f;
        if (lane < 2 * NB) {
            float sum = 0;
            for (int w = 0; w < warps; w++) sum += red[parity][w][lane];
            inv = (float)(1.0 / sqrt((double)sum / D + 1e-6));
        }
#pragma unroll
        for (int t = 0; t < NB; t++) {
            const int n = n0 + b0 + t;
            const float iq = __shfl_sync(0xffffffffu, inv, t), ik = __shfl_sync(0xffffffffu, inv, NB + t);
            float qn = __fmul_rn(__fmul_rn(cq[t], iq), g);
            float kn = __fmul_rn(__fmul_rn(ck[t], ik), g);
            /* RoPE partner d ^ 1 is lane ^ 1: every lane shuffles */
            float qp = __shfl_xor_sync(0xffffffffu, qn, 1), kp = __shfl_xor_sync(0xffffffffu, kn, 1);
            if (b0 + t >= count) continue;
            const size_t at = ((size_t)h * p.tokens + n) * D + d;
            if (q0) put(q0, at, qn);
            if (k0) put(k0, at, kn);
            if (v) put(v, at, cv[t]);
            float qo = qn, ko = kn;
            if (n >= p.text_tokens && roped) {
                int gi = n - p.text_tokens, r = gi / p.grid_w, cc = gi % p.grid_w;
                float cs, sn;
                if (on_rows) cs = p.cos_row[r * p1 + pr], sn = p.sin_row[r * p1 + pr];
                else cs = p.cos_col[cc * p2 + pr], sn = p.sin_col[cc * p2 + pr];
                if (!odd) { /* (this, partner) = (even, odd) of the pair */
                    qo = __fsub_rn(__fmul_rn(qn, cs), __fmul_rn(qp, sn));
                    ko = __fsub_rn(__fmul_rn(kn, cs), __fmul_rn(kp, sn));
                } else {
                    qo = __fadd_rn(__fmul_rn(qp, sn), __fmul_rn(qn, cs));
                    ko = __fadd_rn(__fmul_rn(kp, sn), __fmul_rn(kn, cs));
                }
            }
            put(q, at, qo);
            put(k, at, ko);
        }
    }
}

/* Output checksums: per-block partial (sum, sum of |x|) in double, then one
 * block adds the partials in a fixed order (same bytes, same sums). */
__device__ __forceinline__ float get(const float *x, size_t i) { return x[i]; }
__device__ __forceinline__ float get(const __nv_bfloat16 *x, size_t i) { return __bfloat162float(x[i]); }

__device__ void block_pair_sum(double *a, double *b, double *red /* [2][32] */) {
    double x = warp_sum(*a), y = warp_sum(*b);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    if (lane == 0) red[warp] = x, red[32 + warp] = y;
    __syncthreads();
    x = y = 0;
    for (int i = 0; i < warps; i++) x += red[i], y += red[32 + i];
    *a = x, *b = y;
}

template <typename T> __global__ void sums_kernel(const T *x, size_t n, double *part) {
    __shared__ double red[64];
    double s = 0, sa = 0;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        double v = get(x, i);
        s += v, sa += fabs(v);
    }
    block_pair_sum(&s, &sa, red);
    if (threadIdx.x == 0) part[2 * blockIdx.x] = s, part[2 * blockIdx.x + 1] = sa;
}

__global__ void sums_final_kernel(const double *part, int blocks, double *out) {
    __shared__ double red[64];
    double s = 0, sa = 0;
    for (int i = threadIdx.x; i < blocks; i += blockDim.x) s += part[2 * i], sa += part[2 * i + 1];
    block_pair_sum(&s, &sa, red);
    if (threadIdx.x == 0) out[0] = s, out[1] = sa;
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
    cudaFree(g->sums);
    free(g->layers), free(g->host_pos), free(g->host_text);
    free(g);
}

/* Uploads a layer's projections and head weights (once; open does every layer). */
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
    if (f->channels != TSIM_CUDA_CHANNELS || f->head_dim % 32 != 0 || f->head_dim < 32 || f->head_dim > 128) {
        snprintf(err, errlen, "cuda generator: %d channels, head dim %d not handled (32 channels, head dim 32, 64, 96 or 128)",
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
    if (cuda_ok(cudaMalloc((void **)&g->sums, sizeof(double) * (2 * SUMS_BLOCKS + 2)), "allocating", err, errlen)) {
        g->sums = NULL;
        tsim_workload_cuda_free(g);
        return 1;
    }
    /* Every layer's weights now, so that no step pays for drawing them. */
    for (int l = 0; l < f->layers; l++)
        if (ensure_layer(g, l, err, errlen)) {
            tsim_workload_cuda_free(g);
            return 1;
        }
    *out = g;
    return 0;
}

extern "C" int tsim_workload_cuda_layer(tsim_workload_cuda *g, int layer, double sigma, int out_bf16,
                                        void *q, void *k, void *v, void *q0, void *k0, char *err,
                                        size_t errlen) {
    const tsim_workload_fields *f = &g->f;
    if (layer < 0 || layer >= f->layers || !(sigma >= 0 && sigma <= 1) || !q || !k) {
        snprintf(err, errlen, "cuda generator: layer %d at sigma %g: out of range", layer, sigma);
        return 1;
    }
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
    dim3 grid((unsigned)((f->tokens + LAYER_TOKENS - 1) / LAYER_TOKENS), (unsigned)f->heads);
    if (out_bf16) layer_kernel<__nv_bfloat16><<<grid, f->head_dim>>>(p);
    else layer_kernel<float><<<grid, f->head_dim>>>(p);
    if (cuda_ok(cudaGetLastError(), "layer kernel", err, errlen)) return 1;
    return cuda_ok(cudaDeviceSynchronize(), "layer kernel", err, errlen);
}

extern "C" int tsim_workload_cuda_sums(tsim_workload_cuda *g, const void *x, size_t n, int bf16,
                                       double *sum, double *abs_sum, char *err, size_t errlen) {
    if (bf16) sums_kernel<<<SUMS_BLOCKS, 256>>>((const __nv_bfloat16 *)x, n, g->sums);
    else sums_kernel<<<SUMS_BLOCKS, 256>>>((const float *)x, n, g->sums);
    sums_final_kernel<<<1, 256>>>(g->sums, SUMS_BLOCKS, g->sums + 2 * SUMS_BLOCKS);
    double out[2];
    if (cuda_ok(cudaGetLastError(), "checksum kernel", err, errlen) ||
        cuda_ok(cudaMemcpy(out, g->sums + 2 * SUMS_BLOCKS, sizeof out, cudaMemcpyDeviceToHost), "checksum", err, errlen))
        return 1;
    *sum = out[0], *abs_sum = out[1];
    return 0;
}

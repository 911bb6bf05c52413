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
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { TSIM_CUDA_CHANNELS = 32, LAYER_TOKENS = 64, SUMS_BLOCKS = 264 };
constexpr int WROW = TSIM_CUDA_CHANNELS + 8; /* padded row of a transposed weight slice: no bank conflicts */

typedef struct {
    float *u, *a, *gain;   /* [H*D] */
    float *pos_weight, *text_weight; /* [H] */
    __nv_bfloat16 *wsplit; /* [H][3][2][D][WROW]: per head, q k v slices transposed, hi and lo */
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
    const float *hidden, *u, *a, *gain, *pos_weight, *text_weight;
    const __nv_bfloat16 *wsplit; /* device_layer.wsplit */
    const float *cos_row, *sin_row, *cos_col, *sin_col;
    void *q, *k, *v, *q0, *k0; /* float or __nv_bfloat16, [H,N,D] */
    int heads, head_dim, tokens, text_tokens, grid_w, a0, a1, a2;
    float pw, sharp;
} layer_args;

/* Sum over the warp in a fixed butterfly order (every lane gets it). */
template <typename V> __device__ __forceinline__ V warp_sum(V v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* mma.sync m16n8k16, bf16 inputs, fp32 accumulate (PTX ISA fragment layouts;
 * per lane g = lane / 4, t = lane % 4):
 *   A 16x16 (row-major): a0 (g, 2t..2t+1)  a1 (g+8, 2t..)  a2 (g, 2t+8..)  a3 (g+8, 2t+8..)
 *   B 16x8 (k x n):      b0 (k 2t..2t+1, n g)  b1 (k 2t+8..2t+9, n g)
 *   C 16x8:              c0 c1 (g, 2t..2t+1)  c2 c3 (g+8, 2t..2t+1) */
__device__ __forceinline__ void mma_bf16(float *c, const uint32_t *a, uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t pack_bf16(__nv_bfloat16 lo, __nv_bfloat16 hi) {
    return (uint32_t)__bfloat16_as_ushort(lo) | ((uint32_t)__bfloat16_as_ushort(hi) << 16);
}

/* x = hi + lo with both bf16: hi * w carries 8 bits, the cross terms the next
 * 8; hi*hi + hi*lo + lo*hi is x * w to about 2^-16 relative (lo*lo dropped). */
__device__ __forceinline__ void split2(float x0, float x1, uint32_t *hi, uint32_t *lo) {
    __nv_bfloat16 h0 = __float2bfloat16_rn(x0), h1 = __float2bfloat16_rn(x1);
    *hi = pack_bf16(h0, h1);
    *lo = pack_bf16(__float2bfloat16_rn(x0 - __bfloat162float(h0)), __float2bfloat16_rn(x1 - __bfloat162float(h1)));
}

__device__ __forceinline__ void put2(float *dst, size_t at, float x0, float x1) {
    *(float2 *)(dst + at) = make_float2(x0, x1);
}
__device__ __forceinline__ void put2(__nv_bfloat16 *dst, size_t at, float x0, float x1) {
    *(__nv_bfloat162 *)(dst + at) = __floats2bfloat162_rn(x0, x1);
}


/* One block per (head, LAYER_TOKENS tokens), 4 warps of 16 tokens. The
 * projections [16 tokens x 32 channels] x [32 x D] run on the tensor cores
 * in split bf16 (three products: about float accuracy), the head's weight
 * slices sitting transposed in shared memory as hi and lo halves. Each lane
 * then holds rows g and g+8 and dims (8 j + 2t, 8 j + 2t + 1): a RoPE pair
 * (RoPE axes start at even dims) is in one lane, and a token's RMS sum is the
 * lane's 2 D/8 squares plus two shuffles over t. The rest of the arithmetic
 * is workload.c finish_rows's, in its order. */
template <typename T, int D>
__global__ void __launch_bounds__(128) layer_kernel(layer_args p) {
    constexpr int C = TSIM_CUDA_CHANNELS, NT = D / 8;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    __nv_bfloat16 *w_s = (__nv_bfloat16 *)smem_raw;               /* [3][2][D][WROW]: m, hi/lo, dim, channel */
    float *col_s = (float *)(smem_raw + sizeof(__nv_bfloat16) * 6 * D * WROW); /* [3][D]: a, u, gain*sharp */
    const int h = blockIdx.y;
    {
        const uint4 *src = (const uint4 *)(p.wsplit + (size_t)h * 6 * D * WROW);
        uint4 *dst = (uint4 *)w_s;
        for (int i = threadIdx.x; i < 6 * D * WROW / 8; i += blockDim.x) dst[i] = src[i];
    }
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        col_s[d] = p.a[h * D + d];
        col_s[D + d] = p.u[h * D + d];
        col_s[2 * D + d] = __fmul_rn(p.gain[h * D + d], p.sharp);
    }
    __syncthreads();
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const int nbase = blockIdx.x * LAYER_TOKENS + warp * 16;
    if (nbase >= p.tokens) return; /* no barrier follows */
    const int rows[2] = {nbase + g, nbase + g + 8};
    /* A fragments of the 16 hidden rows, split: [k step][reg] */
    uint32_t ahi[2][4], alo[2][4];
#pragma unroll
    for (int ks = 0; ks < 2; ks++)
#pragma unroll
        for (int r = 0; r < 4; r++) {
            int row = rows[r & 1], ch = ks * 16 + 2 * t + (r >> 1) * 8;
            float2 x = row < p.tokens ? *(const float2 *)(p.hidden + (size_t)row * C + ch) : make_float2(0.f, 0.f);
            split2(x.x, x.y, &ahi[ks][r], &alo[ks][r]);
        }
    const float upos = __fmul_rn(p.pos_weight[h], p.pw), utext = p.text_weight[h];
    const int p1 = p.a1 / 2, p2 = p.a2 / 2;
    int image[2], gr[2], gc[2];
#pragma unroll
    for (int i = 0; i < 2; i++) {
        image[i] = rows[i] >= p.text_tokens;
        int gi = image[i] ? rows[i] - p.text_tokens : 0;
        gr[i] = gi / p.grid_w, gc[i] = gi % p.grid_w;
    }
#pragma unroll 1
    for (int m = 0; m < 3; m++) { /* q, k, v */
        float acc[NT][4];
#pragma unroll
        for (int j = 0; j < NT; j++) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
        const __nv_bfloat16 *whi = w_s + (size_t)(m * 2 + 0) * D * WROW, *wlo = w_s + (size_t)(m * 2 + 1) * D * WROW;
#pragma unroll
        for (int ks = 0; ks < 2; ks++)
#pragma unroll
            for (int j = 0; j < NT; j++) {
                const int off = (j * 8 + g) * WROW + ks * 16 + 2 * t;
                uint32_t bh0 = *(const uint32_t *)(whi + off), bh1 = *(const uint32_t *)(whi + off + 8);
                uint32_t bl0 = *(const uint32_t *)(wlo + off), bl1 = *(const uint32_t *)(wlo + off + 8);
                mma_bf16(acc[j], alo[ks], bh0, bh1);
                mma_bf16(acc[j], ahi[ks], bl0, bl1);
                mma_bf16(acc[j], ahi[ks], bh0, bh1);
            }
        if (m == 2) { /* v: the projection as it is */
#pragma unroll
            for (int i = 0; i < 2; i++) {
                if (rows[i] >= p.tokens || !p.v) continue;
#pragma unroll
                for (int j = 0; j < NT; j++)
                    put2((T *)p.v, ((size_t)h * p.tokens + rows[i]) * D + j * 8 + 2 * t, acc[j][2 * i], acc[j][2 * i + 1]);
            }
            break;
        }
        /* q or k: position and text components, RMS norm, gain, RoPE */
        float ss[2] = {0.f, 0.f};
#pragma unroll
        for (int j = 0; j < NT; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int i = e >> 1, d = j * 8 + 2 * t + (e & 1);
                const float ua = col_s[d], uu = col_s[D + d];
                float x = acc[j][e];
                if (m == 0) x = __fadd_rn(x, __fadd_rn(__fmul_rn(utext, ua), image[i] ? __fmul_rn(upos, uu) : 0.0f));
                else x = __fadd_rn(x, image[i] ? __fmul_rn(upos, uu) : __fmul_rn(utext, ua));
                acc[j][e] = x;
                ss[i] += x * x;
            }
#pragma unroll
        for (int i = 0; i < 2; i++) {
            ss[i] += __shfl_xor_sync(0xffffffffu, ss[i], 1);
            ss[i] += __shfl_xor_sync(0xffffffffu, ss[i], 2);
        }
        const float inv[2] = {(float)(1.0 / sqrt((double)ss[0] / D + 1e-6)), (float)(1.0 / sqrt((double)ss[1] / D + 1e-6))};
        T *out = (T *)(m == 0 ? p.q : p.k), *out0 = (T *)(m == 0 ? p.q0 : p.k0);
#pragma unroll
        for (int i = 0; i < 2; i++) {
            if (rows[i] >= p.tokens) continue;
            const size_t base = ((size_t)h * p.tokens + rows[i]) * D;
#pragma unroll
            for (int j = 0; j < NT; j++) {
                const int d = j * 8 + 2 * t; /* even: (d, d + 1) is a RoPE pair past a0 */
                float x0 = __fmul_rn(__fmul_rn(acc[j][2 * i], inv[i]), col_s[2 * D + d]);
                float x1 = __fmul_rn(__fmul_rn(acc[j][2 * i + 1], inv[i]), col_s[2 * D + d + 1]);
                if (out0) put2(out0, base + d, x0, x1);
                if (image[i] && d >= p.a0) {
                    const int on_rows = d < p.a0 + p.a1, pr = (on_rows ? d - p.a0 : d - p.a0 - p.a1) >> 1;
                    float cs, sn;
                    if (on_rows) cs = p.cos_row[gr[i] * p1 + pr], sn = p.sin_row[gr[i] * p1 + pr];
                    else cs = p.cos_col[gc[i] * p2 + pr], sn = p.sin_col[gc[i] * p2 + pr];
                    const float r0 = __fsub_rn(__fmul_rn(x0, cs), __fmul_rn(x1, sn));
                    const float r1 = __fadd_rn(__fmul_rn(x0, sn), __fmul_rn(x1, cs));
                    x0 = r0, x1 = r1;
                }
                put2(out, base + d, x0, x1);
            }
        }
    }
}

template <typename T, int D> static cudaError_t launch_layer(const layer_args &p, dim3 grid) {
    size_t smem = sizeof(__nv_bfloat16) * 6 * D * WROW + sizeof(float) * 3 * D;
    cudaError_t e = cudaFuncSetAttribute(layer_kernel<T, D>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (e != cudaSuccess) return e;
    layer_kernel<T, D><<<grid, 128, smem>>>(p);
    return cudaGetLastError();
}

template <typename T> static cudaError_t launch_layer_dim(const layer_args &p, dim3 grid) {
    switch (p.head_dim) {
    case 32: return launch_layer<T, 32>(p, grid);
    case 64: return launch_layer<T, 64>(p, grid);
    case 96: return launch_layer<T, 96>(p, grid);
    default: return launch_layer<T, 128>(p, grid);
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
            float *ptrs[5] = {dl->u, dl->a, dl->gain, dl->pos_weight, dl->text_weight};
            for (int i = 0; i < 5; i++) cudaFree(ptrs[i]);
            cudaFree(dl->wsplit);
        }
    float *ptrs[8] = {g->structure, g->noise, g->text, g->cos_row, g->sin_row, g->cos_col, g->sin_col, g->hidden};
    for (int i = 0; i < 8; i++) cudaFree(ptrs[i]);
    cudaFree(g->sums);
    free(g->layers), free(g->host_pos), free(g->host_text);
    free(g);
}

/* wsplit[h][m][half][d][c] = hi or lo bf16 half of w_m[c][h D + d] (layer_kernel's layout). */
__global__ void split_weights_kernel(const float *wq, const float *wk, const float *wv, int H, int D,
                                     __nv_bfloat16 *out) {
    const int C = TSIM_CUDA_CHANNELS;
    size_t n = (size_t)H * 3 * D * C;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        int c = (int)(i % C), d = (int)(i / C % D), m = (int)(i / ((size_t)C * D) % 3), h = (int)(i / ((size_t)3 * C * D));
        const float *src = m == 0 ? wq : m == 1 ? wk : wv;
        float x = src[(size_t)c * H * D + (size_t)h * D + d];
        __nv_bfloat16 hi = __float2bfloat16_rn(x);
        __nv_bfloat16 *o = out + (((size_t)h * 3 + m) * 2 * D + d) * WROW + c;
        o[0] = hi;
        o[(size_t)D * WROW] = __float2bfloat16_rn(x - __bfloat162float(hi));
    }
}

/* Draws a layer's weights on the CPU (the CPU workload's draws) and uploads
 * them: the projections as layer_kernel's split bf16 slices, the rest as is. */
static int upload_layer(tsim_workload_cuda *g, int layer, char *err, size_t errlen) {
    device_layer *dl = &g->layers[layer];
    tsim_layer_fields lf;
    if (tsim_workload_layer_fields(g->w, layer, &lf, g->host_pos, g->host_text)) {
        snprintf(err, errlen, "cuda generator: layer %d: out of memory drawing its weights", layer);
        return 1;
    }
    size_t HD = (size_t)g->f.heads * g->f.head_dim, CW = TSIM_CUDA_CHANNELS * HD;
    device_layer tmp;
    memset(&tmp, 0, sizeof tmp);
    float *wq = NULL, *wk = NULL, *wv = NULL; /* f32 [C, H*D], only until split */
    int bad = upload(&wq, lf.wq, CW, err, errlen) || upload(&wk, lf.wk, CW, err, errlen) ||
              upload(&wv, lf.wv, CW, err, errlen) || upload(&tmp.u, lf.u, HD, err, errlen) ||
              upload(&tmp.a, lf.a, HD, err, errlen) || upload(&tmp.gain, lf.gain, HD, err, errlen) ||
              upload(&tmp.pos_weight, g->host_pos, (size_t)g->f.heads, err, errlen) ||
              upload(&tmp.text_weight, g->host_text, (size_t)g->f.heads, err, errlen);
    size_t nsplit = (size_t)g->f.heads * 6 * g->f.head_dim * WROW; /* padding columns zeroed */
    if (!bad && cuda_ok(cudaMalloc((void **)&tmp.wsplit, nsplit * sizeof(__nv_bfloat16)), "allocating", err, errlen)) {
        tmp.wsplit = NULL;
        bad = 1;
    }
    if (!bad) bad = cuda_ok(cudaMemset(tmp.wsplit, 0, nsplit * sizeof(__nv_bfloat16)), "clearing", err, errlen);
    if (!bad) {
        split_weights_kernel<<<256, 256>>>(wq, wk, wv, g->f.heads, g->f.head_dim, tmp.wsplit);
        bad = cuda_ok(cudaGetLastError(), "weight split kernel", err, errlen) ||
              cuda_ok(cudaDeviceSynchronize(), "weight split kernel", err, errlen);
    }
    cudaFree(wq), cudaFree(wk), cudaFree(wv);
    if (bad) {
        float *ptrs[5] = {tmp.u, tmp.a, tmp.gain, tmp.pos_weight, tmp.text_weight};
        for (int i = 0; i < 5; i++) cudaFree(ptrs[i]);
        cudaFree(tmp.wsplit);
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
        if (upload_layer(g, l, err, errlen)) {
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
    p.hidden = g->hidden, p.wsplit = dl->wsplit;
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
    cudaError_t e = out_bf16 ? launch_layer_dim<__nv_bfloat16>(p, grid) : launch_layer_dim<float>(p, grid);
    if (cuda_ok(e, "layer kernel", err, errlen)) return 1;
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

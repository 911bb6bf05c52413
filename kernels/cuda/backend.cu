// backend.cu -- the cuda backend's entry points: context state (workspace,
// device properties), the mode switch, the Taylor denominator rule and probe,
// and the stats the GPU path reports.
//
// Errors: every CUDA call is checked; a failure is the backend_error reason
// with the CUDA text in res->detail, a failed allocation is out_of_memory.
// The output o is written only when the call succeeds: Taylor writes into a
// workspace copy first and copies it to o once the denominator rule passed.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_internal.h"

namespace {

struct cuda_state {
    int device;
    int num_sms;
    void *ws;        // owned device workspace
    size_t ws_bytes;
    int table_key;   // (d << 8 | P) + 1 of the feature table in ws, 0 = none
    cudaEvent_t ev0, ev1;
    tkc_hybrid_state *hybrid; // owned: PCA cache and hybrid workspace
};

// Grows the workspace to at least bytes. 0 ok, 2 allocation failed, 1 other error.
int ensure_ws(cuda_state *s, size_t bytes, char *err, size_t errlen) {
    if (bytes <= s->ws_bytes) return 0;
    if (s->ws) {
        cudaError_t e = cudaFree(s->ws);
        s->ws = nullptr;
        s->ws_bytes = 0;
        s->table_key = 0;
        if (e != cudaSuccess) {
            snprintf(err, errlen, "cudaFree: %s", cudaGetErrorString(e));
            return 1;
        }
    }
    cudaError_t e = cudaMalloc(&s->ws, bytes);
    if (e != cudaSuccess) {
        (void)cudaGetLastError(); // clear the sticky-free allocation error
        s->ws = nullptr;
        snprintf(err, errlen, "workspace of %zu bytes: %s", bytes, cudaGetErrorString(e));
        return e == cudaErrorMemoryAllocation ? 2 : 1;
    }
    s->ws_bytes = bytes;
    return 0;
}

size_t align256(size_t x) { return (x + 255) & ~(size_t)255; }

__global__ void convert_kernel_f32_bf16(const float *src, __nv_bfloat16 *dst, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        dst[i] = __float2bfloat16(src[i]);
}
} // namespace

int tkc_convert_f32_bf16(const float *src, void *dst, size_t n, cudaStream_t st) {
    convert_kernel_f32_bf16<<<1024, 256, 0, st>>>(src, (__nv_bfloat16 *)dst, n);
    return cudaGetLastError() != cudaSuccess;
}

namespace {

// Exact output of sampled (query, head) rows in fp32: e[(s*BH + bh)*Dv + c].
// Grid (head, key split); a block holds up to 16 sampled query rows of its
// head, so K and V are read once per head, not once per sample. Each warp
// takes 32 keys per step (a key per lane: 16 dot products against the rows
// in shared memory), runs the online softmax per sample with warp
// reductions, then accumulates P.V with lanes over output columns. Blocks
// leave (max, sum, acc[Dv]) per sample in part; rows_merge_kernel combines
// the splits. Dv <= 128, D <= 256, D % 8 == 0.
constexpr int QSPLIT = 16;
constexpr int QS_MAX = 16;

template <typename TI>
__global__ void __launch_bounds__(256) exact_rows_kernel(const TI *q, const TI *k, const TI *v, const uint8_t *mask,
                                  const int *rows, int ns, int H, int Nq, int Nk, int D, int Dv,
                                  float scale, float *part) {
    __shared__ __align__(16) float qs[QS_MAX * 256];
    __shared__ float wm[8][QS_MAX], wl[8][QS_MAX];
    __shared__ float wacc[QS_MAX][128];
    const int bh = blockIdx.x, ks = blockIdx.y, b = bh / H, tid = threadIdx.x;
    const int lane = tid & 31, warp = tid >> 5;
    const TI *kb = k + (size_t)bh * Nk * D;
    const TI *vb = v + (size_t)bh * Nk * Dv;
    const int per = (Nk + QSPLIT - 1) / QSPLIT, k0 = ks * per, k1 = min(Nk, k0 + per);
    for (int g0 = 0; g0 < ns; g0 += QS_MAX) {
        const int gn = min(QS_MAX, ns - g0);
        __syncthreads();
        for (int e = tid; e < QS_MAX * D; e += 256) {
            int sr = e / D, i = e % D;
            qs[sr * D + i] = sr < gn ? tkc::elem<TI>::to_f(q[((size_t)bh * Nq + rows[g0 + sr]) * D + i]) * scale : 0.f;
        }
        for (int e = tid; e < QS_MAX * 128; e += 256) (&wacc[0][0])[e] = 0.f;
        __syncthreads();
        float m[QS_MAX], l[QS_MAX], acc[QS_MAX][4];
#pragma unroll
        for (int s = 0; s < QS_MAX; s++) {
            m[s] = -INFINITY, l[s] = 0.f;
            acc[s][0] = acc[s][1] = acc[s][2] = acc[s][3] = 0.f;
        }
        for (int j0 = k0 + warp * 32; j0 < k1; j0 += 256) {
            const int j = j0 + lane;
            const bool ok = j < k1 && !(mask && !mask[(size_t)b * Nk + j]);
            float dot[QS_MAX];
#pragma unroll
            for (int s = 0; s < QS_MAX; s++) dot[s] = 0.f;
            const TI *kr = kb + (size_t)(j < k1 ? j : k0) * D;
            for (int c8 = 0; c8 < D; c8 += 8) {
                uint4 u = *reinterpret_cast<const uint4 *>(kr + c8);
                float kv[8];
                if constexpr (sizeof(TI) == 2) {
                    const TI *hh = reinterpret_cast<const TI *>(&u);
#pragma unroll
                    for (int t = 0; t < 8; t++) kv[t] = tkc::elem<TI>::to_f(hh[t]);
                } else {
                    uint4 u2 = *reinterpret_cast<const uint4 *>(kr + c8 + 4);
                    const float *f1 = reinterpret_cast<const float *>(&u), *f2 = reinterpret_cast<const float *>(&u2);
#pragma unroll
                    for (int t = 0; t < 4; t++) kv[t] = f1[t], kv[4 + t] = f2[t];
                }
#pragma unroll
                for (int s = 0; s < QS_MAX; s++) {
                    float4 a0 = *reinterpret_cast<const float4 *>(qs + s * D + c8);
                    float4 a1 = *reinterpret_cast<const float4 *>(qs + s * D + c8 + 4);
                    dot[s] += a0.x * kv[0] + a0.y * kv[1] + a0.z * kv[2] + a0.w * kv[3] + a1.x * kv[4] +
                              a1.y * kv[5] + a1.z * kv[6] + a1.w * kv[7];
                }
            }
#pragma unroll
            for (int s = 0; s < QS_MAX; s++) {
                float x = ok ? dot[s] : -INFINITY, mx = x;
#pragma unroll
                for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
                float mn = fmaxf(m[s], mx);
                float al = mn == -INFINITY ? 1.f : expf(m[s] - mn);
                float p = mn == -INFINITY ? 0.f : expf(x - mn), ps = p;
#pragma unroll
                for (int o = 16; o > 0; o >>= 1) ps += __shfl_xor_sync(0xffffffffu, ps, o);
                m[s] = mn;
                l[s] = l[s] * al + ps;
                acc[s][0] *= al, acc[s][1] *= al, acc[s][2] *= al, acc[s][3] *= al;
                dot[s] = p;
            }
            const int nk = min(32, k1 - j0);
            for (int kk = 0; kk < nk; kk++) {
                const TI *vr = vb + (size_t)(j0 + kk) * Dv;
                float vv[4];
#pragma unroll
                for (int c = 0; c < 4; c++) {
                    int col = lane + 32 * c;
                    vv[c] = col < Dv ? tkc::elem<TI>::to_f(vr[col]) : 0.f;
                }
#pragma unroll
                for (int s = 0; s < QS_MAX; s++) {
                    float pk = __shfl_sync(0xffffffffu, dot[s], kk);
#pragma unroll
                    for (int c = 0; c < 4; c++) acc[s][c] += pk * vv[c];
                }
            }
        }
        if (lane == 0)
#pragma unroll
            for (int s = 0; s < QS_MAX; s++) wm[warp][s] = m[s], wl[warp][s] = l[s];
        __syncthreads();
        // merge the 8 warps: rescale each warp's acc to the block max and add
#pragma unroll
        for (int s = 0; s < QS_MAX; s++) {
            float M = -INFINITY;
            for (int w = 0; w < 8; w++) M = fmaxf(M, wm[w][s]);
            float f = (m[s] == -INFINITY) ? 0.f : expf(m[s] - M);
#pragma unroll
            for (int c = 0; c < 4; c++)
                if (lane + 32 * c < 128) atomicAdd(&wacc[s][lane + 32 * c], acc[s][c] * f);
        }
        __syncthreads();
        for (int e = tid; e < gn * (Dv + 2); e += 256) {
            int sr = e / (Dv + 2), c = e % (Dv + 2);
            float *pb = part + ((((size_t)(g0 + sr)) * gridDim.x + bh) * QSPLIT + ks) * (Dv + 2);
            if (c < Dv) {
                pb[c] = wacc[sr][c];
                continue;
            }
            float M = -INFINITY, L = 0.f;
            for (int w = 0; w < 8; w++) M = fmaxf(M, wm[w][sr]);
            for (int w = 0; w < 8; w++) L += wm[w][sr] == -INFINITY ? 0.f : wl[w][sr] * expf(wm[w][sr] - M);
            pb[c] = c == Dv ? M : L;
        }
    }
}

__global__ void rows_merge_kernel(const float *part, int Dv, float *e) {
    const int smp = blockIdx.x, bh = blockIdx.y, c = threadIdx.x;
    const float *pb = part + ((size_t)smp * gridDim.y + bh) * QSPLIT * (Dv + 2);
    float M = -INFINITY;
    for (int s = 0; s < QSPLIT; s++) M = fmaxf(M, pb[s * (Dv + 2) + Dv]);
    float L = 0.f, A = 0.f;
    for (int s = 0; s < QSPLIT; s++) {
        float m = pb[s * (Dv + 2) + Dv];
        float f = m == -INFINITY ? 0.f : expf(m - M);
        L += pb[s * (Dv + 2) + Dv + 1] * f;
        if (c < Dv) A += pb[s * (Dv + 2) + c] * f;
    }
    if (c < Dv) e[((size_t)smp * gridDim.y + bh) * Dv + c] = L > 0.f ? A / L : 0.f;
}

template <typename T>
__global__ void gather_rows_kernel(const T *o, const int *rows, int Nq, int Dv, float *out) {
    const int smp = blockIdx.x, bh = blockIdx.y;
    for (int c = threadIdx.x; c < Dv; c += blockDim.x)
        out[((size_t)smp * gridDim.y + bh) * Dv + c] =
            tkc::elem<T>::to_f(o[((size_t)bh * Nq + rows[smp]) * Dv + c]);
}

int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

// rel-L2, cosine and abs errors of n rows of width w (o against e).
void quality_of(const float *o, const float *e, int n, int w, tk_quality *qo) {
    memset(qo, 0, sizeof *qo);
    double *rel = (double *)malloc(sizeof(double) * (n > 0 ? n : 1));
    if (!rel) return;
    double sum_rel = 0, cmin = INFINITY, csum = 0, abs_sum = 0, abs_max = 0;
    for (int r = 0; r < n; r++) {
        double d2 = 0, e2 = 0, o2 = 0, oe = 0;
        for (int c = 0; c < w; c++) {
            double a = o[(size_t)r * w + c], b = e[(size_t)r * w + c], d = a - b;
            d2 += d * d;
            e2 += b * b;
            o2 += a * a;
            oe += a * b;
            double ad = fabs(d);
            abs_sum += ad;
            if (!(ad <= abs_max)) abs_max = ad;
        }
        rel[r] = e2 > 0 ? sqrt(d2 / e2) : sqrt(d2);
        sum_rel += rel[r];
        double cs = (o2 > 0 && e2 > 0) ? oe / sqrt(o2 * e2) : (d2 == 0 ? 1.0 : 0.0);
        if (!(cs >= cmin)) cmin = cs;
        csum += cs;
    }
    qsort(rel, n, sizeof(double), cmp_double);
    qo->n = n;
    qo->rel_l2_mean = sum_rel / n;
    qo->rel_l2_p95 = rel[(int)floor(0.95 * (n - 1))];
    qo->rel_l2_max = rel[n - 1];
    qo->cos_min = cmin;
    qo->cos_mean = csum / n;
    qo->abs_err_mean = abs_sum / ((double)n * w);
    qo->abs_err_max = abs_max;
    free(rel);
}

// quality_raw on ns sampled queries; the output rows are read from `out`
// (dtype out_dtype). Uses ws_extra (device, bytes given) for rows and results.
int quality_raw(const tk_call *call, const void *out, int out_dtype, int ns, uint64_t seed,
                void *ws_extra, cudaStream_t st, tk_quality *qo, char *err, size_t errlen) {
    int BH = call->B * call->H;
    int *rows_d = (int *)ws_extra;
    float *e_d = (float *)((char *)ws_extra + align256(sizeof(int) * ns));
    float *o_d = e_d + (size_t)ns * BH * call->Dv;
    float *part_d = o_d + (size_t)ns * BH * call->Dv;
    int *rows = (int *)malloc(sizeof(int) * ns);
    float *eh = (float *)malloc(sizeof(float) * 2 * (size_t)ns * BH * call->Dv);
    if (!rows || !eh) {
        free(rows);
        free(eh);
        snprintf(err, errlen, "host allocation for quality stats");
        return 2;
    }
    uint64_t x = seed ^ 0x51a7c0deull;
    for (int i = 0; i < ns; i++) rows[i] = (int)(tkc_draw(&x) % (uint64_t)call->Nq);
    int rc = 0;
    cudaError_t e = cudaMemcpyAsync(rows_d, rows, sizeof(int) * ns, cudaMemcpyHostToDevice, st);
    double s0 = call->scale > 0 ? call->scale : 1.0 / sqrt((double)call->D);
    size_t smem = 0;
    dim3 grid(ns, BH), gridk(BH, QSPLIT);
    if (e == cudaSuccess) {
        if (call->dtype == TK_DTYPE_BF16)
            exact_rows_kernel<__nv_bfloat16><<<gridk, 256, smem, st>>>(
                (const __nv_bfloat16 *)call->q, (const __nv_bfloat16 *)call->k,
                (const __nv_bfloat16 *)call->v, call->key_mask, rows_d, ns, call->H, call->Nq, call->Nk,
                call->D, call->Dv, (float)s0, part_d);
        else if (call->dtype == TK_DTYPE_F16)
            exact_rows_kernel<__half><<<gridk, 256, smem, st>>>(
                (const __half *)call->q, (const __half *)call->k, (const __half *)call->v,
                call->key_mask, rows_d, ns, call->H, call->Nq, call->Nk, call->D, call->Dv, (float)s0, part_d);
        else
            exact_rows_kernel<float><<<gridk, 256, smem, st>>>(
                (const float *)call->q, (const float *)call->k, (const float *)call->v,
                call->key_mask, rows_d, ns, call->H, call->Nq, call->Nk, call->D, call->Dv, (float)s0, part_d);
        e = cudaGetLastError();
    }
    if (e == cudaSuccess) {
        rows_merge_kernel<<<grid, 128, 0, st>>>(part_d, call->Dv, e_d);
        e = cudaGetLastError();
    }
    if (e == cudaSuccess) {
        if (out_dtype == TK_DTYPE_BF16)
            gather_rows_kernel<__nv_bfloat16><<<grid, 128, 0, st>>>((const __nv_bfloat16 *)out, rows_d,
                                                                   call->Nq, call->Dv, o_d);
        else if (out_dtype == TK_DTYPE_F16)
            gather_rows_kernel<__half><<<grid, 128, 0, st>>>((const __half *)out, rows_d, call->Nq,
                                                            call->Dv, o_d);
        else
            gather_rows_kernel<float><<<grid, 128, 0, st>>>((const float *)out, rows_d, call->Nq,
                                                           call->Dv, o_d);
        e = cudaGetLastError();
    }
    size_t nrow = (size_t)ns * BH;
    if (e == cudaSuccess)
        e = cudaMemcpyAsync(eh, e_d, sizeof(float) * 2 * nrow * call->Dv, cudaMemcpyDeviceToHost, st);
    if (e == cudaSuccess) e = cudaStreamSynchronize(st);
    if (e != cudaSuccess) {
        snprintf(err, errlen, "quality stats: %s", cudaGetErrorString(e));
        rc = 1;
    } else {
        quality_of(eh + nrow * call->Dv, eh, (int)nrow, call->Dv, qo);
    }
    free(rows);
    free(eh);
    return rc;
}

size_t quality_ws(const tk_call *call, int ns) {
    return align256(sizeof(int) * ns) +
           align256(sizeof(float) * (size_t)ns * call->B * call->H * (2 * call->Dv + QSPLIT * (call->Dv + 2)));
}

// Maps a launcher status to the result: 2 -> out_of_memory, 3 -> unsupported_shape, else backend_error.
void fail_rc(tk_result *res, int rc, const char *err) {
    tkc_fail(res, rc == 2 ? TK_REASON_OUT_OF_MEMORY : rc == 3 ? TK_REASON_UNSUPPORTED_SHAPE
                                                          : TK_REASON_BACKEND_ERROR,
         err);
}

int run_exact(cuda_state *s, const tk_call *call, cudaStream_t st, void *o_dst, size_t ws_off,
              char *err, size_t errlen) {
    if (call->Dv != call->D) {
        snprintf(err, errlen, "exact: Dv %d != D %d is not supported on cuda", call->Dv, call->D);
        return 3;
    }
    tkc_exact_args a;
    memset(&a, 0, sizeof a);
    a.B = call->B;
    a.H = call->H;
    a.Nq = call->Nq;
    a.Nk = call->Nk;
    a.D = call->D;
    a.mask = call->key_mask;
    a.o = o_dst;
    a.out_dtype = call->dtype;
    a.scale = call->scale > 0 ? call->scale : 1.0 / sqrt((double)call->D);
    a.warps = getenv("TKC_EXACT_WARPS") ? atoi(getenv("TKC_EXACT_WARPS")) : 0;
    if (call->dtype == TK_DTYPE_F32) {
        // f32: converted to bf16 in the workspace, then the tensor-core path
        size_t nq = (size_t)call->B * call->H * call->Nq * call->D;
        size_t nk = (size_t)call->B * call->H * call->Nk * call->D;
        char *w = (char *)s->ws + ws_off;
        __nv_bfloat16 *qh = (__nv_bfloat16 *)w;
        __nv_bfloat16 *kh = (__nv_bfloat16 *)(w + align256(nq * 2));
        __nv_bfloat16 *vh = (__nv_bfloat16 *)(w + align256(nq * 2) + align256(nk * 2));
        convert_kernel_f32_bf16<<<1024, 256, 0, st>>>((const float *)call->q, qh, nq);
        convert_kernel_f32_bf16<<<1024, 256, 0, st>>>((const float *)call->k, kh, nk);
        convert_kernel_f32_bf16<<<1024, 256, 0, st>>>((const float *)call->v, vh, nk);
        TKC_LAUNCHED("convert_kernel_f32_bf16", err, errlen);
        a.q = qh;
        a.k = kh;
        a.v = vh;
        a.in_dtype = TK_DTYPE_BF16;
    } else {
        a.q = call->q;
        a.k = call->k;
        a.v = call->v;
        a.in_dtype = call->dtype;
    }
    return tkc_exact_launch(&a, st, err, errlen);
}

size_t exact_ws(const tk_call *call) {
    if (call->dtype != TK_DTYPE_F32) return 0;
    size_t nq = (size_t)call->B * call->H * call->Nq * call->D;
    size_t nk = (size_t)call->B * call->H * call->Nk * call->D;
    return align256(nq * 2) + 2 * align256(nk * 2);
}

bool modify_active(const tk_config *cfg, double sigma) {
    return cfg->qk_norm_sigma_max <= 0 || sigma <= cfg->qk_norm_sigma_max;
}

int too_small(const tk_config *cfg, unsigned long long n_le, unsigned long long n) {
    if (!cfg->fallback_on_negative || n_le == 0) return 0;
    if (cfg->denom_fallback_frac_limit <= 0) return 1;
    return (double)n_le / (double)n > cfg->denom_fallback_frac_limit;
}

int run_taylor(cuda_state *s, const tk_call *call, const tk_config *cfg,
               const tk_stats_request *sreq, cudaStream_t st, tk_result *res) {
    char err[192] = "";
    tkc_taylor_args a;
    memset(&a, 0, sizeof a);
    a.q = call->q;
    a.k = call->k;
    a.v = call->v;
    a.mask = call->key_mask;
    a.dtype = call->dtype;
    a.B = call->B;
    a.H = call->H;
    a.Nq = call->Nq;
    a.Nk = call->Nk;
    a.D = call->D;
    a.Dv = call->Dv;
    a.blocks = cfg->sub_head_blocks;
    a.terms = cfg->terms;
    if (a.blocks <= 0 || call->D % a.blocks || call->Dv % a.blocks) {
        tkc_fail(res, TK_REASON_SUB_HEAD_BLOCK_MISMATCH, "D or Dv is not divisible by sub_head_blocks");
        return TK_OK;
    }
    int d = call->D / a.blocks;
    a.s = (float)(cfg->scale_mul / sqrt((double)d));
    a.modify = !modify_active(cfg, call->sigma) ? 0
               : cfg->qk_normalize                    ? 1
               : (cfg->qk_norm_power > 0 || cfg->qk_norm_clip > 0) ? 2
                                                                  : 0;
    a.power = (float)cfg->qk_norm_power;
    a.clip = (float)cfg->qk_norm_clip;
    a.eps = (float)cfg->eps;
    const char *sp = getenv("TKC_TAYLOR_SPLIT");
    a.split = sp ? atoi(sp) : 0;
    int pn = cfg->early_probe ? cfg->probe_samples : 0;
    if (pn > call->Nq) pn = call->Nq;
    a.probe_n = pn;
    res->R = tkc_feature_count(d, a.terms);

    size_t ws_t = tkc_taylor_workspace(&a, s->num_sms);
    if (ws_t == 0) {
        snprintf(err, sizeof err, "taylor on cuda: slice dims d=%d dv=%d, P=%d not supported", d,
                 call->Dv / a.blocks, a.terms);
        tkc_fail(res, TK_REASON_UNSUPPORTED_SHAPE, err);
        return TK_OK;
    }
    size_t o_bytes = (size_t)call->B * call->H * call->Nq * call->Dv * tk_dtype_size(call->dtype);
    int ns = (sreq && sreq->quality_samples > 0 && call->Dv <= 128 && call->D <= 256) ? sreq->quality_samples : 0;
    if (ns > call->Nq) ns = call->Nq;
    size_t off_o = align256(ws_t);
    size_t off_rows = off_o + align256(o_bytes);
    size_t off_q = off_rows + align256(sizeof(int) * (pn > 0 ? pn : 1));
    size_t total = off_q + (ns ? quality_ws(call, ns) : 0);
    int rc = ensure_ws(s, total, err, sizeof err);
    if (rc) {
        fail_rc(res, rc, err);
        return TK_OK;
    }
    int key = ((d << 8) | a.terms) + 1;
    a.table_cached = s->table_key == key;
    s->table_key = 0; // set again once the upload succeeded
    a.o = (char *)s->ws + off_o;
    if (pn > 0) {
        int *rows = (int *)malloc(sizeof(int) * pn);
        float *den = (float *)malloc(sizeof(float) * pn * (size_t)call->B * call->H * a.blocks);
        if (!rows || !den) {
            free(rows);
            free(den);
            tkc_fail(res, TK_REASON_OUT_OF_MEMORY, "host buffers of the probe");
            return TK_OK;
        }
        uint64_t x = (uint64_t)cfg->seed;
        for (int i = 0; i < pn; i++) rows[i] = (int)(tkc_draw(&x) % (uint64_t)call->Nq);
        int *rows_d = (int *)((char *)s->ws + off_rows);
        cudaError_t e = cudaMemcpyAsync(rows_d, rows, sizeof(int) * pn, cudaMemcpyHostToDevice, st);
        rc = 0;
        if (e != cudaSuccess) {
            snprintf(err, sizeof err, "probe rows: %s", cudaGetErrorString(e));
            rc = 1;
        } else {
            a.probe_rows = rows_d;
            rc = tkc_taylor_probe(&a, s->ws, ws_t, s->num_sms, st, den, err, sizeof err);
        }
        free(rows);
        if (rc) {
            free(den);
            fail_rc(res, rc, err);
            return TK_OK;
        }
        unsigned long long n = (unsigned long long)pn * call->B * call->H * a.blocks, le = 0, nf = 0;
        for (unsigned long long i = 0; i < n; i++) {
            if (!isfinite(den[i])) nf++;
            else if (den[i] <= cfg->eps) le++;
        }
        free(den);
        if (nf) {
            snprintf(err, sizeof err, "probe: %llu of %llu denominators are NaN or Inf", nf, n);
            tkc_fail(res, TK_REASON_DENOMINATOR_INVALID, err);
            res->stage = TK_STAGE_PROBE;
            return TK_OK;
        }
        if (too_small(cfg, le, n)) {
            snprintf(err, sizeof err, "probe: %llu of %llu denominators <= eps %g", le, n, cfg->eps);
            tkc_fail(res, TK_REASON_DENOMINATOR_TOO_SMALL, err);
            res->stage = TK_STAGE_PROBE;
            return TK_OK;
        }
    }
    tkc_den_stats den;
    rc = tkc_taylor_run(&a, s->ws, ws_t, s->num_sms, st, &den, err, sizeof err);
    if (rc) {
        fail_rc(res, rc, err);
        return TK_OK;
    }
    s->table_key = key;
    if (sreq) {
        res->stats.den.n = (int64_t)den.n;
        res->stats.den.n_le_eps = (int64_t)den.n_le_eps;
        res->stats.den.n_nonfinite = (int64_t)den.n_nonfinite;
        unsigned long long nfin = den.n - den.n_nonfinite;
        res->stats.den.min = nfin ? den.min : NAN;
        res->stats.den.max = nfin ? den.max : NAN;
        res->stats.den.mean = nfin ? den.sum / (double)nfin : NAN;
        res->stats.have |= TK_HAVE_DENOMS;
    }
    if (den.n_nonfinite) {
        snprintf(err, sizeof err, "%llu of %llu denominators are NaN or Inf", den.n_nonfinite, den.n);
        tkc_fail(res, TK_REASON_DENOMINATOR_INVALID, err);
        res->stage = TK_STAGE_FULL;
        return TK_OK;
    }
    if (too_small(cfg, den.n_le_eps, den.n)) {
        snprintf(err, sizeof err, "%llu of %llu denominators <= eps %g", den.n_le_eps, den.n, cfg->eps);
        tkc_fail(res, TK_REASON_DENOMINATOR_TOO_SMALL, err);
        res->stage = TK_STAGE_FULL;
        return TK_OK;
    }
    if (ns) {
        rc = quality_raw(call, a.o, call->dtype, ns, (uint64_t)cfg->seed, (char *)s->ws + off_q, st,
                         &res->stats.quality_raw, err, sizeof err);
        if (rc) {
            fail_rc(res, rc, err);
            return TK_OK;
        }
        res->stats.have |= TK_HAVE_QUALITY;
    }
    cudaError_t e = cudaMemcpyAsync(call->o, a.o, o_bytes, cudaMemcpyDeviceToDevice, st);
    if (e != cudaSuccess) {
        snprintf(err, sizeof err, "output copy: %s", cudaGetErrorString(e));
        tkc_fail(res, TK_REASON_BACKEND_ERROR, err);
        return TK_OK;
    }
    res->reason = TK_REASON_NONE;
    res->path = TK_PATH_TAYLOR;
    return TK_OK;
}

} // namespace

extern "C" int tkcuda_available(void) {
    static int cached = -1;
    if (cached < 0) {
        char err[256];
        cached = tkcuda_selfcheck(err, sizeof err) == 0;
    }
    return cached;
}

extern "C" int tkcuda_open(tk_context *ctx, char *err, size_t errlen) {
    if (!tkcuda_available()) {
        snprintf(err, errlen, "no usable CUDA device");
        return TK_ERR_UNSUPPORTED;
    }
    cuda_state *s = (cuda_state *)calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return TK_ERR_NOMEM;
    }
    cudaError_t e = cudaGetDevice(&s->device);
    if (e == cudaSuccess)
        e = cudaDeviceGetAttribute(&s->num_sms, cudaDevAttrMultiProcessorCount, s->device);
    if (e == cudaSuccess) e = cudaEventCreate(&s->ev0);
    if (e == cudaSuccess) e = cudaEventCreate(&s->ev1);
    if (e != cudaSuccess) {
        snprintf(err, errlen, "cuda backend: %s", cudaGetErrorString(e));
        free(s);
        return TK_ERR;
    }
    ctx->cuda = s;
    return TK_OK;
}

extern "C" void tkcuda_close(tk_context *ctx) {
    cuda_state *s = (cuda_state *)ctx->cuda;
    if (!s) return;
    if (s->ws) cudaFree(s->ws);
    tkc_hybrid_free(s->hybrid);
    cudaEventDestroy(s->ev0);
    cudaEventDestroy(s->ev1);
    free(s);
    ctx->cuda = nullptr;
}

extern "C" int tkcuda_attention(tk_context *ctx, const tk_call *call, const tk_config *cfg,
                                tk_mode mode, const tk_stats_request *stats_req, tk_result *res) {
    if (!ctx || !call || !cfg || !res) return TK_ERR;
    cuda_state *s = (cuda_state *)ctx->cuda;
    res->reason = TK_REASON_NONE;
    res->stage = TK_STAGE_NONE;
    res->path = TK_PATH_FALLBACK;
    res->detail[0] = 0;
    res->R = 0;
    res->window = -1;
    res->w = 0;
    memset(&res->stats, 0, sizeof res->stats);
    if (!s) {
        tkc_fail(res, TK_REASON_BACKEND_ERROR, "cuda backend: context not opened for cuda");
        return TK_OK;
    }
    cudaStream_t st = (cudaStream_t)call->stream;
    char err[192] = "";
    cudaError_t e = cudaEventRecord(s->ev0, st);
    if (e != cudaSuccess) {
        snprintf(err, sizeof err, "cudaEventRecord: %s", cudaGetErrorString(e));
        tkc_fail(res, TK_REASON_BACKEND_ERROR, err);
        return TK_OK;
    }
    if (mode == TK_MODE_EXACT) {
        int ns = (stats_req && stats_req->quality_samples > 0 && call->Dv <= 128) ? stats_req->quality_samples : 0;
        if (ns > call->Nq) ns = call->Nq;
        size_t ws_e = exact_ws(call);
        int rc = ensure_ws(s, align256(ws_e) + (ns ? quality_ws(call, ns) : 0), err, sizeof err);
        if (!rc) rc = run_exact(s, call, st, call->o, 0, err, sizeof err);
        if (!rc && ns)
            rc = quality_raw(call, call->o, call->dtype, ns, (uint64_t)cfg->seed,
                             (char *)s->ws + align256(ws_e), st, &res->stats.quality_raw, err,
                             sizeof err);
        if (rc) {
            fail_rc(res, rc, err);
            return TK_OK;
        }
        if (ns) res->stats.have |= TK_HAVE_QUALITY;
        res->path = TK_PATH_EXACT;
    } else if (mode == TK_MODE_TAYLOR) {
        run_taylor(s, call, cfg, stats_req, st, res);
        if (res->reason != TK_REASON_NONE) return TK_OK;
    } else {
        tkc_hybrid(&s->hybrid, call, cfg, stats_req, st, res);
        if (res->reason != TK_REASON_NONE) return TK_OK;
        int ns = (stats_req && stats_req->quality_samples > 0 && call->Dv <= 128) ? stats_req->quality_samples : 0;
        if (ns > call->Nq) ns = call->Nq;
        if (ns) {
            int rc = ensure_ws(s, quality_ws(call, ns), err, sizeof err);
            if (!rc)
                rc = quality_raw(call, call->o, call->dtype, ns, (uint64_t)cfg->seed, s->ws, st,
                                 &res->stats.quality_raw, err, sizeof err);
            if (rc) {
                fail_rc(res, rc, err);
                return TK_OK;
            }
            res->stats.have |= TK_HAVE_QUALITY;
        }
    }
    e = cudaEventRecord(s->ev1, st);
    if (e == cudaSuccess) e = cudaEventSynchronize(s->ev1);
    float ms = 0.f;
    if (e == cudaSuccess) e = cudaEventElapsedTime(&ms, s->ev0, s->ev1);
    if (e != cudaSuccess) {
        snprintf(err, sizeof err, "after the kernels: %s", cudaGetErrorString(e));
        tkc_fail(res, TK_REASON_BACKEND_ERROR, err);
        return TK_OK;
    }
    if (stats_req) {
        res->stats.kernel_ms = ms;
        res->stats.have |= TK_HAVE_TIME;
    }
    return TK_OK;
}

extern "C" void tkcuda_reset(tk_context *ctx) {
    cuda_state *s = ctx ? (cuda_state *)ctx->cuda : nullptr;
    if (s) tkc_hybrid_reset(s->hybrid);
}

extern "C" int tkcu_hybrid_projection(tk_context *ctx, int layer, int bh, float *out, int *D, int *g) {
    cuda_state *s = ctx ? (cuda_state *)ctx->cuda : nullptr;
    return s ? tkc_hybrid_projection(s->hybrid, layer, bh, out, D, g) : 1;
}

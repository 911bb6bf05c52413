// stats.cu -- the data checks and the sampled statistics of the cuda backend:
//   * the NaN/Inf scan of the inputs (SPEC 6 bad_input): one pass of 16-byte
//     loads over q, k, v (q0, k0), the first offending element of each tensor
//     reduced with atomicMin, one small copy back;
//   * quality_raw (SPEC 5): exact softmax output of the sampled query rows
//     (all heads) in fp32, compared on the device with the call's output
//     rows, summarized on the host as kernels/stats.c does.
//
// The sampled exact rows run on the tensor cores: a block of 4 warps takes one
// (batch, head) and one key split, streams 64-key tiles of K and V through
// shared memory (cp.async, two stages) and keeps up to 16 sampled rows as one
// m16n8k16 A fragment; each warp owns 16 keys of a tile: S = Q K^T (fp32),
// online softmax in the log2 domain, O += P V with P split into a bf16/f16
// high part and the residual (two products: P is carried to ~2^-17, so the
// reference rows are accurate to fp32 accumulation, not to the 2^-9 of one
// 16-bit P). K and V are read once per call (16 rows): the work is the memory
// read, about 0.05 ms at Flux 2048^2. The key splits fill one wave of
// resident blocks and leave (max, sum, acc[Dv]) per row; a finishing kernel
// combines them, compares each exact row with the call's output row and
// leaves six sums per row, so only those (18 KB at 16 rows x 24 heads) come
// back to the host. f32 inputs and head dims other than 64 and 128 take a
// scalar fp32 kernel.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_internal.h"
#include "stats.h"

namespace {

using namespace tkc;

size_t al256(size_t x) { return (x + 255) & ~(size_t)255; }

// ---- NaN/Inf scan ---------------------------------------------------------

struct scan_args {
    const void *p[TKC_SCAN_MAX];
    size_t n[TKC_SCAN_MAX]; // elements
    int count;
    int esz; // 2 or 4
    int f16; // 16-bit elements are f16 (else bf16)
    unsigned long long *first; // [TKC_SCAN_MAX], ULLONG_MAX = none
};

__device__ __forceinline__ bool bad_elem(const void *p, size_t e, int esz, int f16) {
    if (esz == 4) {
        uint32_t w = reinterpret_cast<const uint32_t *>(p)[e];
        return (w & 0x7f800000u) == 0x7f800000u;
    }
    uint16_t h = reinterpret_cast<const uint16_t *>(p)[e];
    uint16_t m = f16 ? 0x7c00u : 0x7f80u;
    return (h & m) == m;
}

// 1 if any element of the 16-byte word is NaN or Inf.
__device__ __forceinline__ bool bad_vec(uint4 u, int esz, int f16) {
    uint32_t w[4] = {u.x, u.y, u.z, u.w};
    bool bad = false;
    if (esz == 4) {
#pragma unroll
        for (int i = 0; i < 4; i++) bad |= (w[i] & 0x7f800000u) == 0x7f800000u;
    } else {
        uint32_t m = f16 ? 0x7c00u : 0x7f80u, mm = m | (m << 16);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            uint32_t x = w[i] & mm;
            bad |= (x & 0xffffu) == m;
            bad |= (x >> 16) == m;
        }
    }
    return bad;
}

// The first bad element of 16-byte word vi (rare path): atomicMin into first.
__device__ __noinline__ void report_vec(const void *p, size_t vi, int esz, int f16,
                                        unsigned long long *first) {
    size_t per = 16 / esz;
    for (size_t e = vi * per; e < (vi + 1) * per; e++)
        if (bad_elem(p, e, esz, f16)) {
            atomicMin(first, (unsigned long long)e);
            return;
        }
}

__global__ void __launch_bounds__(256) scan_kernel(scan_args a) {
    const size_t gid = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    for (int t = 0; t < a.count; t++) {
        const void *p = a.p[t];
        const size_t per = 16 / a.esz;
        // whole 16-byte words when the tensor is 16-byte aligned; the rest element by element
        const size_t nvec = ((uintptr_t)p & 15) ? 0 : a.n[t] / per;
        const uint4 *pv = reinterpret_cast<const uint4 *>(p);
        size_t i = gid;
        for (; i + 3 * stride < nvec; i += 4 * stride) {
            uint4 u0 = __ldcs(pv + i), u1 = __ldcs(pv + i + stride), u2 = __ldcs(pv + i + 2 * stride),
                  u3 = __ldcs(pv + i + 3 * stride);
            bool b0 = bad_vec(u0, a.esz, a.f16), b1 = bad_vec(u1, a.esz, a.f16);
            bool b2 = bad_vec(u2, a.esz, a.f16), b3 = bad_vec(u3, a.esz, a.f16);
            if (b0 | b1 | b2 | b3) {
                if (b0) report_vec(p, i, a.esz, a.f16, a.first + t);
                if (b1) report_vec(p, i + stride, a.esz, a.f16, a.first + t);
                if (b2) report_vec(p, i + 2 * stride, a.esz, a.f16, a.first + t);
                if (b3) report_vec(p, i + 3 * stride, a.esz, a.f16, a.first + t);
            }
        }
        for (; i < nvec; i += stride)
            if (bad_vec(__ldcs(pv + i), a.esz, a.f16)) report_vec(p, i, a.esz, a.f16, a.first + t);
        for (size_t e = nvec * per + gid; e < a.n[t]; e += stride)
            if (bad_elem(p, e, a.esz, a.f16)) atomicMin(a.first + t, (unsigned long long)e);
    }
}

// ---- sampled exact rows -----------------------------------------------------

constexpr int RT_KT = 64; // keys per tile (16 per warp)
constexpr int RT_WARPS = 4;
constexpr int SCALAR_SPLIT = 16;
constexpr int QS_MAX = 16;

template <int D, int DV> struct RowsSmem {
    static constexpr int LDK = D + 8, LDV = DV + 8; // padded rows: ldmatrix hits distinct banks
    static constexpr size_t bytes(size_t esz) {
        return (size_t)(16 * LDK + 2 * RT_KT * LDK + 2 * RT_KT * LDV) * esz +
               (size_t)(2 * RT_KT + 2 * RT_WARPS * 16) * sizeof(float);
    }
};

// d0/d1: one float pair split into a 16-bit high part and the 16-bit residual.
template <typename T>
__device__ __forceinline__ void split_pack(float a, float b, uint32_t &hi, uint32_t &lo) {
    float ha = elem<T>::to_f(elem<T>::from_f(a)), hb = elem<T>::to_f(elem<T>::from_f(b));
    hi = elem<T>::pack(ha, hb);
    lo = elem<T>::pack(a - ha, b - hb);
}

template <typename T, int D, int DV>
__global__ void __launch_bounds__(RT_WARPS * 32)
    rows_mma_kernel(const T *__restrict__ q, const T *__restrict__ k, const T *__restrict__ v,
                    const uint8_t *__restrict__ mask, const int *__restrict__ rows, int ns, int H,
                    int Nq, int Nk, float scale_log2, int keys_per_split, float *__restrict__ part) {
    using S = RowsSmem<D, DV>;
    constexpr int LDK = S::LDK, LDV = S::LDV, KT = RT_KT, NTHR = RT_WARPS * 32;
    constexpr int CHK = D / 8, CHV = DV / 8;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T *Qs = reinterpret_cast<T *>(smem_raw);  // [16][LDK]
    T *Ks = Qs + 16 * LDK;                    // [2][KT][LDK]
    T *Vs = Ks + 2 * KT * LDK;                // [2][KT][LDV]
    float *bias = reinterpret_cast<float *>(Vs + 2 * KT * LDV); // [2][KT]
    float *wm = bias + 2 * KT;                // [4][16] row max per warp (log2 units)
    float *wl = wm + RT_WARPS * 16;           // [4][16] row sum per warp
    float *wacc = reinterpret_cast<float *>(Ks); // [16][DV], after the key loop

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int bh = blockIdx.x, split = blockIdx.y, b = bh / H, BH = gridDim.x, nsplit = gridDim.y;
    const int k0 = split * keys_per_split, k1 = min(Nk, k0 + keys_per_split);
    const int ntiles = k1 > k0 ? (k1 - k0 + KT - 1) / KT : 0;
    const T *qb = q + (size_t)bh * Nq * D;
    const T *kb = k + (size_t)bh * Nk * D;
    const T *vb = v + (size_t)bh * Nk * DV;
    const uint8_t *mb = mask ? mask + (size_t)b * Nk : nullptr;

    auto issue_kv = [&](int j) {
        int buf = j & 1;
        T *kd = Ks + buf * KT * LDK, *vd = Vs + buf * KT * LDV;
        for (int c = tid; c < KT * CHK; c += NTHR) {
            int r = c / CHK, cc = c % CHK, gr = k0 + j * KT + r;
            bool ok = gr < k1;
            cp_async16(kd + r * LDK + cc * 8, kb + (size_t)(ok ? gr : 0) * D + cc * 8, ok ? 16 : 0);
        }
        for (int c = tid; c < KT * CHV; c += NTHR) {
            int r = c / CHV, cc = c % CHV, gr = k0 + j * KT + r;
            bool ok = gr < k1;
            cp_async16(vd + r * LDV + cc * 8, vb + (size_t)(ok ? gr : 0) * DV + cc * 8, ok ? 16 : 0);
        }
        for (int r = tid; r < KT; r += NTHR) {
            int gr = k0 + j * KT + r;
            bias[buf * KT + r] = (gr < k1 && (!mb || mb[gr])) ? 0.f : -INFINITY;
        }
    };

    for (int g0 = 0; g0 < ns; g0 += QS_MAX) {
        const int gn = min(QS_MAX, ns - g0);
        __syncthreads(); // the previous group is done with shared memory
        for (int c = tid; c < 16 * CHK; c += NTHR) {
            int r = c / CHK, cc = c % CHK;
            bool ok = r < gn;
            cp_async16(Qs + r * LDK + cc * 8, qb + (size_t)(ok ? rows[g0 + r] : 0) * D + cc * 8, ok ? 16 : 0);
        }
        if (ntiles > 0) issue_kv(0);
        cp_async_commit();
        cp_async_wait<0>();
        __syncthreads();
        uint32_t qf[D / 16][4];
        {
            int r = (lane & 7) + 8 * ((lane >> 3) & 1);
#pragma unroll
            for (int kk = 0; kk < D / 16; kk++) ldsm_x4(qf[kk], Qs + r * LDK + kk * 16 + 8 * (lane >> 4));
        }
        float acc[DV / 8][4];
#pragma unroll
        for (int i = 0; i < DV / 8; i++) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
        float m_lo = -INFINITY, m_hi = -INFINITY, l_lo = 0.f, l_hi = 0.f;

        for (int j = 0; j < ntiles; j++) {
            if (j + 1 < ntiles) issue_kv(j + 1);
            cp_async_commit();
            cp_async_wait<1>();
            __syncthreads();
            const T *kt = Ks + (j & 1) * KT * LDK + warp * 16 * LDK;
            const T *vt = Vs + (j & 1) * KT * LDV + warp * 16 * LDV;
            const float *bt = bias + (j & 1) * KT + warp * 16;
            float s[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
            for (int kk = 0; kk < D / 16; kk++) {
                uint32_t r[4];
                ldsm_x4(r, kt + ((lane & 7) + 8 * (lane >> 4)) * LDK + kk * 16 + 8 * ((lane >> 3) & 1));
                mma16816<T>(s[0], qf[kk], r[0], r[1]);
                mma16816<T>(s[1], qf[kk], r[2], r[3]);
            }
            float mx_lo = -INFINITY, mx_hi = -INFINITY;
#pragma unroll
            for (int nt = 0; nt < 2; nt++) {
                int c = nt * 8 + 2 * (lane & 3);
                float b0 = bt[c], b1 = bt[c + 1];
                s[nt][0] = s[nt][0] * scale_log2 + b0;
                s[nt][1] = s[nt][1] * scale_log2 + b1;
                s[nt][2] = s[nt][2] * scale_log2 + b0;
                s[nt][3] = s[nt][3] * scale_log2 + b1;
                mx_lo = fmaxf(mx_lo, fmaxf(s[nt][0], s[nt][1]));
                mx_hi = fmaxf(mx_hi, fmaxf(s[nt][2], s[nt][3]));
            }
            mx_lo = fmaxf(mx_lo, __shfl_xor_sync(0xffffffffu, mx_lo, 1));
            mx_lo = fmaxf(mx_lo, __shfl_xor_sync(0xffffffffu, mx_lo, 2));
            mx_hi = fmaxf(mx_hi, __shfl_xor_sync(0xffffffffu, mx_hi, 1));
            mx_hi = fmaxf(mx_hi, __shfl_xor_sync(0xffffffffu, mx_hi, 2));
            float mn_lo = fmaxf(m_lo, mx_lo), mn_hi = fmaxf(m_hi, mx_hi);
            float mu_lo = mn_lo == -INFINITY ? 0.f : mn_lo, mu_hi = mn_hi == -INFINITY ? 0.f : mn_hi;
            float al_lo = ex2(m_lo - mu_lo), al_hi = ex2(m_hi - mu_hi);
            m_lo = mn_lo;
            m_hi = mn_hi;
            uint32_t ph[4], pl[4];
            float sum_lo = 0.f, sum_hi = 0.f;
#pragma unroll
            for (int nt = 0; nt < 2; nt++) {
                float p0 = ex2(s[nt][0] - mu_lo), p1 = ex2(s[nt][1] - mu_lo);
                float p2 = ex2(s[nt][2] - mu_hi), p3 = ex2(s[nt][3] - mu_hi);
                sum_lo += p0 + p1;
                sum_hi += p2 + p3;
                split_pack<T>(p0, p1, ph[nt * 2], pl[nt * 2]);
                split_pack<T>(p2, p3, ph[nt * 2 + 1], pl[nt * 2 + 1]);
            }
            l_lo = l_lo * al_lo + sum_lo;
            l_hi = l_hi * al_hi + sum_hi;
#pragma unroll
            for (int i = 0; i < DV / 8; i++) {
                acc[i][0] *= al_lo;
                acc[i][1] *= al_lo;
                acc[i][2] *= al_hi;
                acc[i][3] *= al_hi;
            }
#pragma unroll
            for (int dp = 0; dp < DV / 16; dp++) {
                uint32_t r[4];
                ldsm_x4_t(r, vt + ((lane & 7) + 8 * ((lane >> 3) & 1)) * LDV + dp * 16 + 8 * (lane >> 4));
                mma16816<T>(acc[2 * dp], ph, r[0], r[1]);
                mma16816<T>(acc[2 * dp], pl, r[0], r[1]);
                mma16816<T>(acc[2 * dp + 1], ph, r[2], r[3]);
                mma16816<T>(acc[2 * dp + 1], pl, r[2], r[3]);
            }
            __syncthreads();
        }
        l_lo += __shfl_xor_sync(0xffffffffu, l_lo, 1);
        l_lo += __shfl_xor_sync(0xffffffffu, l_lo, 2);
        l_hi += __shfl_xor_sync(0xffffffffu, l_hi, 1);
        l_hi += __shfl_xor_sync(0xffffffffu, l_hi, 2);
        // merge the warps: rescale each warp's acc to the block's row max, add in shared memory
        const int g = lane >> 2, t4 = lane & 3;
        for (int e = tid; e < 16 * DV; e += NTHR) wacc[e] = 0.f;
        if (t4 == 0) {
            wm[warp * 16 + g] = m_lo, wm[warp * 16 + g + 8] = m_hi;
            wl[warp * 16 + g] = l_lo, wl[warp * 16 + g + 8] = l_hi;
        }
        __syncthreads();
        float M_lo = -INFINITY, M_hi = -INFINITY;
#pragma unroll
        for (int w = 0; w < RT_WARPS; w++) M_lo = fmaxf(M_lo, wm[w * 16 + g]), M_hi = fmaxf(M_hi, wm[w * 16 + g + 8]);
        float f_lo = m_lo == -INFINITY ? 0.f : ex2(m_lo - M_lo);
        float f_hi = m_hi == -INFINITY ? 0.f : ex2(m_hi - M_hi);
#pragma unroll
        for (int nt = 0; nt < DV / 8; nt++) {
            int c = nt * 8 + 2 * t4;
            atomicAdd(&wacc[g * DV + c], acc[nt][0] * f_lo);
            atomicAdd(&wacc[g * DV + c + 1], acc[nt][1] * f_lo);
            atomicAdd(&wacc[(g + 8) * DV + c], acc[nt][2] * f_hi);
            atomicAdd(&wacc[(g + 8) * DV + c + 1], acc[nt][3] * f_hi);
        }
        __syncthreads();
        for (int e = tid; e < gn * (DV + 2); e += NTHR) {
            int sr = e / (DV + 2), c = e % (DV + 2);
            float *pb = part + (((size_t)(g0 + sr) * BH + bh) * nsplit + split) * (DV + 2);
            if (c < DV) {
                pb[c] = wacc[sr * DV + c];
                continue;
            }
            float M = -INFINITY, L = 0.f;
            for (int w = 0; w < RT_WARPS; w++) M = fmaxf(M, wm[w * 16 + sr]);
            for (int w = 0; w < RT_WARPS; w++)
                L += wm[w * 16 + sr] == -INFINITY ? 0.f : wl[w * 16 + sr] * ex2(wm[w * 16 + sr] - M);
            // the merge works in natural units
            pb[c] = c == DV ? (M == -INFINITY ? M : M * 0.6931471805599453f) : L;
        }
    }
}

// Scalar fp32 fallback (f32 inputs; head dims without an mma instance).
// Grid (head, key split); a block holds up to 16 sampled rows of its head in
// shared memory; each warp takes 32 keys per step (a key per lane), runs the
// online softmax per row with warp reductions and accumulates P.V with lanes
// over output columns. Dv <= 128, D <= 256, D % 8 == 0 (16-byte loads: 8
// elements of a 16-bit type, two of f32).
template <typename TI>
__global__ void __launch_bounds__(256)
    rows_scalar_kernel(const TI *q, const TI *k, const TI *v, const uint8_t *mask, const int *rows,
                       int ns, int H, int Nq, int Nk, int D, int Dv, float scale, float *part) {
    __shared__ __align__(16) float qs[QS_MAX * 256];
    __shared__ float wm[8][QS_MAX], wl[8][QS_MAX];
    __shared__ float wacc[QS_MAX][128];
    const int bh = blockIdx.x, ks = blockIdx.y, b = bh / H, tid = threadIdx.x;
    const int lane = tid & 31, warp = tid >> 5;
    const TI *kb = k + (size_t)bh * Nk * D;
    const TI *vb = v + (size_t)bh * Nk * Dv;
    const int per = (Nk + SCALAR_SPLIT - 1) / SCALAR_SPLIT, k0 = ks * per, k1 = min(Nk, k0 + per);
    for (int g0 = 0; g0 < ns; g0 += QS_MAX) {
        const int gn = min(QS_MAX, ns - g0);
        __syncthreads();
        for (int e = tid; e < QS_MAX * D; e += 256) {
            int sr = e / D, i = e % D;
            qs[sr * D + i] = sr < gn ? elem<TI>::to_f(q[((size_t)bh * Nq + rows[g0 + sr]) * D + i]) * scale : 0.f;
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
                    for (int t = 0; t < 8; t++) kv[t] = elem<TI>::to_f(hh[t]);
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
                    vv[c] = col < Dv ? elem<TI>::to_f(vr[col]) : 0.f;
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
            float *pb = part + ((((size_t)(g0 + sr)) * gridDim.x + bh) * gridDim.y + ks) * (Dv + 2);
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

// One block per sampled (row, head), grid (ns, BH): the splits of part
// combined into the exact row e, compared with the output row o of the call;
// st[(smp*BH + bh)*QSTATS + ..] = sum (o-e)^2, sum e^2, sum o^2, sum o.e,
// sum |o-e|, max |o-e| (NaN kept), fp64. Dv <= 128, 128 threads.
constexpr int QSTATS = 6;
template <typename T>
__global__ void __launch_bounds__(128)
    rows_finish_kernel(const float *part, int nsplit, int Dv, const T *o, const int *rows, int Nq, double *st) {
    __shared__ double red[4][QSTATS];
    const int smp = blockIdx.x, bh = blockIdx.y, BH = gridDim.y, tid = threadIdx.x;
    const float *pb = part + ((size_t)smp * BH + bh) * nsplit * (Dv + 2);
    float M = -INFINITY;
    for (int s = 0; s < nsplit; s++) M = fmaxf(M, pb[s * (Dv + 2) + Dv]);
    double v[QSTATS] = {0, 0, 0, 0, 0, 0};
    for (int c = tid; c < Dv; c += blockDim.x) {
        float L = 0.f, A = 0.f;
        for (int s = 0; s < nsplit; s++) {
            float m = pb[s * (Dv + 2) + Dv];
            float f = m == -INFINITY ? 0.f : expf(m - M);
            L += pb[s * (Dv + 2) + Dv + 1] * f;
            A += pb[s * (Dv + 2) + c] * f;
        }
        double e = L > 0.f ? (double)(A / L) : 0.0;
        double a = elem<T>::to_f(o[((size_t)bh * Nq + rows[smp]) * Dv + c]), d = a - e, ad = fabs(d);
        v[0] += d * d, v[1] += e * e, v[2] += a * a, v[3] += a * e, v[4] += ad;
        if (ad > v[5] || isnan(ad)) v[5] = ad;
    }
    const int lane = tid & 31, warp = tid >> 5;
#pragma unroll
    for (int k = 0; k < QSTATS; k++)
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) {
            double u = __shfl_xor_sync(0xffffffffu, v[k], off);
            if (k < 5) v[k] += u;
            else if (u > v[k] || isnan(u)) v[k] = u;
        }
    if (lane == 0)
#pragma unroll
        for (int k = 0; k < QSTATS; k++) red[warp][k] = v[k];
    __syncthreads();
    if (tid < QSTATS) {
        double r = red[0][tid];
        for (int w = 1; w < (int)(blockDim.x / 32); w++) {
            double u = red[w][tid];
            if (tid < 5) r += u;
            else if (u > r || isnan(u)) r = u;
        }
        st[((size_t)smp * BH + bh) * QSTATS + tid] = r;
    }
}

bool mma_shape(const tk_call *c) {
    return c->dtype != TK_DTYPE_F32 && (c->D == 64 || c->D == 128) && (c->Dv == 64 || c->Dv == 128);
}

// Blocks of the mma kernel resident per multiprocessor (asked once per
// instance; the shared-memory opt-in is set on the way). 0 on a CUDA error.
template <typename T, int D, int DV> int rows_blocks_per_sm() {
    static int occ = 0;
    if (occ == 0) {
        size_t smem = RowsSmem<D, DV>::bytes(sizeof(T));
        auto kern = rows_mma_kernel<T, D, DV>;
        int n = 0;
        if (cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem) != cudaSuccess ||
            cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kern, RT_WARPS * 32, smem) != cudaSuccess) {
            (void)cudaGetLastError();
            return 0;
        }
        occ = n > 0 ? n : 1;
    }
    return occ;
}

template <typename T> int blocks_per_sm_t(const tk_call *c) {
    if (c->D == 128 && c->Dv == 128) return rows_blocks_per_sm<T, 128, 128>();
    if (c->D == 64 && c->Dv == 64) return rows_blocks_per_sm<T, 64, 64>();
    if (c->D == 128 && c->Dv == 64) return rows_blocks_per_sm<T, 128, 64>();
    return rows_blocks_per_sm<T, 64, 128>();
}

// Key splits of the mma kernel: as many blocks as are resident at once over
// all heads (one wave: no tail wave a third full), at least one 64-key tile each.
void mma_splits(const tk_call *c, int num_sms, int *nsplit, int *keys_per_split) {
    int BH = c->B * c->H, tiles = (c->Nk + RT_KT - 1) / RT_KT;
    int occ = c->dtype == TK_DTYPE_BF16 ? blocks_per_sm_t<__nv_bfloat16>(c) : blocks_per_sm_t<__half>(c);
    if (occ < 1) occ = 2;
    int want = occ * (num_sms > 0 ? num_sms : 132) / BH;
    const char *force = getenv("TKC_ROWS_SPLIT"); // benchmarking: key splits per head
    if (force && atoi(force) > 0) want = atoi(force);
    if (want > tiles) want = tiles;
    if (want > 256) want = 256;
    if (want < 1) want = 1;
    int tps = (tiles + want - 1) / want;
    *keys_per_split = tps * RT_KT;
    *nsplit = (c->Nk + *keys_per_split - 1) / *keys_per_split;
}

int splits_of(const tk_call *c, int num_sms) {
    if (!mma_shape(c)) return SCALAR_SPLIT;
    int ns, kps;
    mma_splits(c, num_sms, &ns, &kps);
    return ns;
}

template <typename T, int D, int DV>
int launch_rows_mma(const tk_call *c, const int *rows_d, int ns, int num_sms, float scale, float *part,
                    cudaStream_t st, char *err, size_t errlen) {
    int nsplit, kps;
    mma_splits(c, num_sms, &nsplit, &kps);
    size_t smem = RowsSmem<D, DV>::bytes(sizeof(T));
    auto kern = rows_mma_kernel<T, D, DV>;
    if (rows_blocks_per_sm<T, D, DV>() == 0) // sets the shared-memory opt-in
        TKC_TRY(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem), err, errlen);
    dim3 grid(c->B * c->H, nsplit);
    kern<<<grid, RT_WARPS * 32, smem, st>>>((const T *)c->q, (const T *)c->k, (const T *)c->v, c->key_mask,
                                            rows_d, ns, c->H, c->Nq, c->Nk,
                                            (float)(scale * 1.4426950408889634), kps, part);
    TKC_LAUNCHED("rows_mma_kernel", err, errlen);
    return 0;
}

template <typename T>
int launch_rows_t(const tk_call *c, const int *rows_d, int ns, int num_sms, float scale, float *part,
                  cudaStream_t st, char *err, size_t errlen) {
    if (c->D == 128 && c->Dv == 128) return launch_rows_mma<T, 128, 128>(c, rows_d, ns, num_sms, scale, part, st, err, errlen);
    if (c->D == 64 && c->Dv == 64) return launch_rows_mma<T, 64, 64>(c, rows_d, ns, num_sms, scale, part, st, err, errlen);
    if (c->D == 128 && c->Dv == 64) return launch_rows_mma<T, 128, 64>(c, rows_d, ns, num_sms, scale, part, st, err, errlen);
    return launch_rows_mma<T, 64, 128>(c, rows_d, ns, num_sms, scale, part, st, err, errlen);
}

// quality_raw from the per-row sums of rows_finish_kernel, with the
// definitions of kernels/stats.c (quality_add / quality_finish): rel-L2 =
// ||o-e||/||e|| (0/0 = 0, x/0 = Inf), cosine (both zero = 1), p95 and max by
// tki_percentile. Returns 2 when the host allocation failed.
int quality_of(const double *st, int n, int w, tk_quality *qo) {
    memset(qo, 0, sizeof *qo);
    if (n <= 0) return 0;
    double *rel = (double *)malloc(sizeof(double) * n);
    if (!rel) return 2;
    double rel_sum = 0, cs_sum = 0, cs_min = INFINITY, abs_sum = 0, abs_max = 0;
    for (int r = 0; r < n; r++) {
        const double *v = st + (size_t)r * QSTATS;
        double de = v[0], ee = v[1], oo = v[2], oe = v[3];
        rel[r] = ee > 0 ? sqrt(de) / sqrt(ee) : (de == 0 ? 0 : INFINITY);
        double cs = (oo > 0 && ee > 0) ? oe / (sqrt(oo) * sqrt(ee)) : (oo == 0 && ee == 0 ? 1 : 0);
        rel_sum += rel[r];
        cs_sum += cs;
        if (cs < cs_min || isnan(cs)) cs_min = cs;
        abs_sum += v[4];
        if (v[5] > abs_max || isnan(v[5])) abs_max = v[5];
    }
    qo->n = n;
    qo->rel_l2_mean = rel_sum / n;
    qo->cos_min = cs_min;
    qo->cos_mean = cs_sum / n;
    qo->abs_err_mean = abs_sum / ((double)n * w);
    qo->abs_err_max = abs_max;
    qo->rel_l2_p95 = tki_percentile(rel, n, 95);
    qo->rel_l2_max = tki_percentile(rel, n, 100);
    free(rel);
    return 0;
}

} // namespace

int tkc_scan_nonfinite(const void *const *ptrs, const size_t *counts, int count, int dtype,
                       unsigned long long *first_d, unsigned long long *first_h, int num_sms,
                       cudaStream_t st, char *err, size_t errlen) {
    scan_args a;
    memset(&a, 0, sizeof a);
    if (count > TKC_SCAN_MAX) count = TKC_SCAN_MAX;
    for (int i = 0; i < count; i++) a.p[i] = ptrs[i], a.n[i] = counts[i];
    a.count = count;
    a.esz = dtype == TK_DTYPE_F32 ? 4 : 2;
    a.f16 = dtype == TK_DTYPE_F16;
    a.first = first_d;
    TKC_TRY(cudaMemsetAsync(first_d, 0xff, sizeof(unsigned long long) * TKC_SCAN_MAX, st), err, errlen);
    size_t most = 0;
    for (int i = 0; i < count; i++) most = counts[i] > most ? counts[i] : most;
    size_t per_block = 256 * 4 * (16 / a.esz); // elements a block covers in one unrolled step
    int blocks = 4 * (num_sms > 0 ? num_sms : 132);
    if ((size_t)blocks > (most + per_block - 1) / per_block) blocks = (int)((most + per_block - 1) / per_block);
    if (blocks < 1) blocks = 1;
    scan_kernel<<<blocks, 256, 0, st>>>(a);
    TKC_LAUNCHED("scan_kernel", err, errlen);
    TKC_TRY(cudaMemcpyAsync(first_h, first_d, sizeof(unsigned long long) * TKC_SCAN_MAX,
                            cudaMemcpyDeviceToHost, st),
            err, errlen);
    return 0;
}

size_t tkc_quality_ws(const tk_call *call, int ns, int num_sms) {
    size_t nrow = (size_t)ns * call->B * call->H;
    return al256(sizeof(int) * ns) + al256(sizeof(double) * nrow * QSTATS) +
           al256(sizeof(float) * nrow * splits_of(call, num_sms) * (call->Dv + 2));
}

size_t tkc_quality_host_doubles(const tk_call *call, int ns) { return (size_t)ns * call->B * call->H * QSTATS; }

int tkc_quality_raw(const tk_call *call, const void *out, const int *rows, int ns, int num_sms,
                    void *ws, double *host_sums, cudaStream_t st, tk_quality *qo, char *err, size_t errlen) {
    const int BH = call->B * call->H, Dv = call->Dv;
    const size_t nrow = (size_t)ns * BH;
    int *rows_d = (int *)ws;
    double *sums_d = (double *)((char *)ws + al256(sizeof(int) * ns));
    float *part_d = (float *)((char *)sums_d + al256(sizeof(double) * nrow * QSTATS));
    const float scale = (float)(call->scale > 0 ? call->scale : 1.0 / sqrt((double)call->D));
    TKC_TRY(cudaMemcpyAsync(rows_d, rows, sizeof(int) * ns, cudaMemcpyHostToDevice, st), err, errlen);
    int nsplit = splits_of(call, num_sms), rc = 0;
    if (mma_shape(call))
        rc = call->dtype == TK_DTYPE_BF16
                 ? launch_rows_t<__nv_bfloat16>(call, rows_d, ns, num_sms, scale, part_d, st, err, errlen)
                 : launch_rows_t<__half>(call, rows_d, ns, num_sms, scale, part_d, st, err, errlen);
    else if (call->Dv > 128 || call->D > 256 || call->D % 8) {
        snprintf(err, errlen, "quality stats: D %d / Dv %d not supported", call->D, call->Dv);
        return 3;
    } else {
        dim3 gridk(BH, SCALAR_SPLIT);
        if (call->dtype == TK_DTYPE_BF16)
            rows_scalar_kernel<__nv_bfloat16><<<gridk, 256, 0, st>>>(
                (const __nv_bfloat16 *)call->q, (const __nv_bfloat16 *)call->k, (const __nv_bfloat16 *)call->v,
                call->key_mask, rows_d, ns, call->H, call->Nq, call->Nk, call->D, Dv, scale, part_d);
        else if (call->dtype == TK_DTYPE_F16)
            rows_scalar_kernel<__half><<<gridk, 256, 0, st>>>(
                (const __half *)call->q, (const __half *)call->k, (const __half *)call->v, call->key_mask,
                rows_d, ns, call->H, call->Nq, call->Nk, call->D, Dv, scale, part_d);
        else
            rows_scalar_kernel<float><<<gridk, 256, 0, st>>>(
                (const float *)call->q, (const float *)call->k, (const float *)call->v, call->key_mask,
                rows_d, ns, call->H, call->Nq, call->Nk, call->D, Dv, scale, part_d);
        TKC_LAUNCHED("rows_scalar_kernel", err, errlen);
    }
    if (rc) return rc;
    dim3 grid(ns, BH);
    if (call->dtype == TK_DTYPE_BF16)
        rows_finish_kernel<__nv_bfloat16><<<grid, 128, 0, st>>>(part_d, nsplit, Dv, (const __nv_bfloat16 *)out,
                                                                rows_d, call->Nq, sums_d);
    else if (call->dtype == TK_DTYPE_F16)
        rows_finish_kernel<__half><<<grid, 128, 0, st>>>(part_d, nsplit, Dv, (const __half *)out, rows_d,
                                                         call->Nq, sums_d);
    else
        rows_finish_kernel<float><<<grid, 128, 0, st>>>(part_d, nsplit, Dv, (const float *)out, rows_d,
                                                        call->Nq, sums_d);
    TKC_LAUNCHED("rows_finish_kernel", err, errlen);
    TKC_TRY(cudaMemcpyAsync(host_sums, sums_d, sizeof(double) * nrow * QSTATS, cudaMemcpyDeviceToHost, st), err,
            errlen);
    TKC_TRY(cudaStreamSynchronize(st), err, errlen);
    if (quality_of(host_sums, (int)nrow, Dv, qo)) {
        snprintf(err, errlen, "host allocation for quality stats");
        return 2;
    }
    return 0;
}

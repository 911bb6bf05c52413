// exact.cu -- exact attention: tiled online-softmax kernels; the N x N matrix
// never exists.
//
// Default (D 64/128, built for sm_90a): exact_wg_kernel, FA3-style on wgmma.
// One block = NWG warpgroups x 64 queries of one (batch, head). Q, K and V
// tiles sit in shared memory in the 128-byte swizzled layout wgmma reads; all
// threads stream KT-key tiles of K and V with cp.async (two stages). Per tile
// each warpgroup runs S = Q K^T as wgmma (A and B from shared memory), the
// online softmax on the S accumulators (log2 domain, scale folded into one
// FFMA per element), then O += P V as wgmma with P re-packed from the S
// accumulators as the register A operand and V read transposed (MN-major).
//
// exact_kernel (D 32, and the variants the bench compares): FlashAttention-2
// style on mma.sync m16n8k16; NW warps own 16 query rows each, keep their q
// fragments and the output accumulator in registers, K/V tiles double-
// buffered (padded rows, ldmatrix).
//
// Both: bf16 or f16 in, fp32 accumulate. Tails (Nq, Nk not tile multiples)
// are zero-filled on load and masked to -inf; the key mask is a per-tile bias;
// a row whose keys are all masked is written as zeros. q_rows lets a launch
// cover the first Nq rows of each head only (hybrid text rows); o_rows writes
// them into a compact [B,H,o_rows,D] buffer instead.
//
// tkc_exact_args.warps (TKC_EXACT_WARPS, bench variants): 0 default (wgmma,
// 2 warpgroups, KT=128, no overlap); 9 = wgmma with the intra-warpgroup
// overlap (3 stages, KT=96: KT=128 spills with two S accumulators); 8 =
// mma.sync 8 warps KT=128 (the previous default); 4 = mma.sync 4 warps KT=64;
// 16 = mma.sync 8 warps KT=64. docs/GPU-NOTES.md has their timings.
#include <stdio.h>
#include <stdlib.h>

#include <type_traits>

#include "cuda_internal.h"

namespace {

using namespace tkc;

template <int D> struct ExactSmem {
    static constexpr int LD = D + 8; // padded row (elements): ldmatrix rows hit distinct banks
};

template <typename T, typename TO, int D, int NW, int KT>
__global__ void __launch_bounds__(NW * 32, (NW == 4 ? 2 : 1))
    exact_kernel(const T *__restrict__ q, const T *__restrict__ k, const T *__restrict__ v,
                 TO *__restrict__ o, const uint8_t *__restrict__ mask, int H, int Nq, int Nk,
                 float scale_log2, int q_rows, int o_rows) {
    constexpr int LD = ExactSmem<D>::LD;
    constexpr int BR = 16 * NW;
    constexpr int NTHR = NW * 32;
    constexpr int CH = D / 8; // 16-byte chunks per row
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T *Qs = reinterpret_cast<T *>(smem_raw);
    T *Ks = Qs + BR * LD;          // [2][KT][LD]
    T *Vs = Ks + 2 * KT * LD;      // [2][KT][LD]
    float *bias = reinterpret_cast<float *>(Vs + 2 * KT * LD); // [2][KT]

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int bh = blockIdx.y, b = bh / H;
    const int q0 = blockIdx.x * BR;
    const T *qb = q + (size_t)bh * q_rows * D;
    const T *kb = k + (size_t)bh * Nk * D;
    const T *vb = v + (size_t)bh * Nk * D;
    const uint8_t *mb = mask ? mask + (size_t)b * Nk : nullptr;

    // Q tile
    for (int c = tid; c < BR * CH; c += NTHR) {
        int r = c / CH, cc = c % CH;
        int gr = q0 + r;
        const T *src = qb + (size_t)(gr < Nq ? gr : 0) * D + cc * 8;
        cp_async16(Qs + r * LD + cc * 8, src, gr < Nq ? 16 : 0);
    }
    const int ntiles = (Nk + KT - 1) / KT;
    auto issue_kv = [&](int j) {
        int buf = j & 1;
        T *kd = Ks + buf * KT * LD, *vd = Vs + buf * KT * LD;
        for (int c = tid; c < KT * CH; c += NTHR) {
            int r = c / CH, cc = c % CH;
            int gr = j * KT + r;
            bool ok = gr < Nk;
            size_t off = (size_t)(ok ? gr : 0) * D + cc * 8;
            cp_async16(kd + r * LD + cc * 8, kb + off, ok ? 16 : 0);
            cp_async16(vd + r * LD + cc * 8, vb + off, ok ? 16 : 0);
        }
        for (int r = tid; r < KT; r += NTHR) {
            int gr = j * KT + r;
            bias[buf * KT + r] = (gr < Nk && (!mb || mb[gr])) ? 0.f : -INFINITY;
        }
    };
    issue_kv(0);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();

    uint32_t qf[D / 16][4];
    {
        int r = warp * 16 + (lane & 7) + 8 * ((lane >> 3) & 1);
        for (int kk = 0; kk < D / 16; kk++) ldsm_x4(qf[kk], Qs + r * LD + kk * 16 + 8 * (lane >> 4));
    }

    float acc[D / 8][4];
#pragma unroll
    for (int i = 0; i < D / 8; i++) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
    float m_lo = -INFINITY, m_hi = -INFINITY, l_lo = 0.f, l_hi = 0.f;
    const bool any_mask = mb != nullptr;

    for (int j = 0; j < ntiles; j++) {
        if (j + 1 < ntiles) issue_kv(j + 1);
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();
        const T *kt = Ks + (j & 1) * KT * LD;
        const T *vt = Vs + (j & 1) * KT * LD;
        const float *bt = bias + (j & 1) * KT;

        float s[KT / 8][4];
#pragma unroll
        for (int i = 0; i < KT / 8; i++) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++) {
#pragma unroll
            for (int np = 0; np < KT / 16; np++) {
                uint32_t r[4];
                int row = np * 16 + (lane & 7) + 8 * (lane >> 4);
                ldsm_x4(r, kt + row * LD + kk * 16 + 8 * ((lane >> 3) & 1));
                mma16816<T>(s[2 * np], qf[kk], r[0], r[1]);
                mma16816<T>(s[2 * np + 1], qf[kk], r[2], r[3]);
            }
        }
        // scale into the log2 domain, mask, row max
        const bool tail = any_mask || (j + 1) * KT > Nk;
        float mx_lo = -INFINITY, mx_hi = -INFINITY;
#pragma unroll
        for (int nt = 0; nt < KT / 8; nt++) {
            float b0 = 0.f, b1 = 0.f;
            if (tail) {
                int c = nt * 8 + 2 * (lane & 3);
                b0 = bt[c];
                b1 = bt[c + 1];
            }
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
        float mu_lo = mn_lo == -INFINITY ? 0.f : mn_lo;
        float mu_hi = mn_hi == -INFINITY ? 0.f : mn_hi;
        float al_lo = ex2(m_lo - mu_lo), al_hi = ex2(m_hi - mu_hi);
        m_lo = mn_lo;
        m_hi = mn_hi;
        float sum_lo = 0.f, sum_hi = 0.f;
        uint32_t pf[KT / 16][4];
#pragma unroll
        for (int nt = 0; nt < KT / 8; nt++) {
            float p0 = ex2(s[nt][0] - mu_lo), p1 = ex2(s[nt][1] - mu_lo);
            float p2 = ex2(s[nt][2] - mu_hi), p3 = ex2(s[nt][3] - mu_hi);
            sum_lo += p0 + p1;
            sum_hi += p2 + p3;
            pf[nt / 2][(nt & 1) * 2 + 0] = elem<T>::pack(p0, p1);
            pf[nt / 2][(nt & 1) * 2 + 1] = elem<T>::pack(p2, p3);
        }
        l_lo = l_lo * al_lo + sum_lo;
        l_hi = l_hi * al_hi + sum_hi;
#pragma unroll
        for (int i = 0; i < D / 8; i++) {
            acc[i][0] *= al_lo;
            acc[i][1] *= al_lo;
            acc[i][2] *= al_hi;
            acc[i][3] *= al_hi;
        }
#pragma unroll
        for (int kk = 0; kk < KT / 16; kk++) {
#pragma unroll
            for (int dp = 0; dp < D / 16; dp++) {
                uint32_t r[4];
                int row = kk * 16 + (lane & 7) + 8 * ((lane >> 3) & 1);
                ldsm_x4_t(r, vt + row * LD + dp * 16 + 8 * (lane >> 4));
                mma16816<T>(acc[2 * dp], pf[kk], r[0], r[1]);
                mma16816<T>(acc[2 * dp + 1], pf[kk], r[2], r[3]);
            }
        }
        __syncthreads();
    }
    l_lo += __shfl_xor_sync(0xffffffffu, l_lo, 1);
    l_lo += __shfl_xor_sync(0xffffffffu, l_lo, 2);
    l_hi += __shfl_xor_sync(0xffffffffu, l_hi, 1);
    l_hi += __shfl_xor_sync(0xffffffffu, l_hi, 2);
    // every key masked: the row has no softmax; it is written as zeros
    float inv_lo = l_lo > 0.f ? 1.f / l_lo : 0.f;
    float inv_hi = l_hi > 0.f ? 1.f / l_hi : 0.f;
    int r_lo = q0 + warp * 16 + (lane >> 2), r_hi = r_lo + 8;
    TO *ob = o + (size_t)bh * o_rows * D;
#pragma unroll
    for (int nt = 0; nt < D / 8; nt++) {
        int c = nt * 8 + 2 * (lane & 3);
        if (r_lo < Nq) {
            ob[(size_t)r_lo * D + c] = elem<TO>::from_f(acc[nt][0] * inv_lo);
            ob[(size_t)r_lo * D + c + 1] = elem<TO>::from_f(acc[nt][1] * inv_lo);
        }
        if (r_hi < Nq) {
            ob[(size_t)r_hi * D + c] = elem<TO>::from_f(acc[nt][2] * inv_hi);
            ob[(size_t)r_hi * D + c + 1] = elem<TO>::from_f(acc[nt][3] * inv_hi);
        }
    }
}

#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define TKC_EXACT_NO_WGMMA 1 // device pass without sm_90a: the wgmma kernel compiles empty
#endif

// Byte offset of 16-byte chunk cc (8 elements) of row r in a swizzled tile of R
// rows: 64-column chunks one after the other, rows of 128 bytes, chunk ^ (r & 7).
__device__ __forceinline__ uint32_t swz_off(int r, int cc, int R) {
    return (uint32_t)((cc >> 3) * R * 128 + r * 128 + (((cc & 7) ^ (r & 7)) << 4));
}

// S = Q K^T of one warpgroup (64 rows x KT keys) from the swizzled tiles.
template <typename T, int D, int KT, int BR>
__device__ __forceinline__ void wg_issue_s(float *s, uint64_t dq, uint64_t dk) {
#pragma unroll
    for (int i = 0; i < KT / 2; i++) reg_fence(s[i]);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
        uint32_t oq = ((kk >> 2) * BR * 128 + (kk & 3) * 32) >> 4;
        uint32_t ok = ((kk >> 2) * KT * 128 + (kk & 3) * 32) >> 4;
        wgmma_ss<T, KT>(s, dq + oq, dk + ok, kk);
    }
    wgmma_commit();
}

// Online softmax of one S tile (rows g and g+8 of the warp; m in raw units,
// the scale folded into one FFMA per element): P packed as wgmma A fragments,
// O rescaled. bt = the tile's key bias (0 / -inf) when masked.
template <typename T, int D, int KT, bool MASKED>
__device__ __forceinline__ void wg_softmax(float *s, const float *bt, float scale_log2, int t2,
                                           float &m_lo, float &m_hi, float &l_lo, float &l_hi,
                                           uint32_t (*pf)[4], float *acc) {
    if constexpr (MASKED) {
#pragma unroll
        for (int nt = 0; nt < KT / 8; nt++) {
            float b0 = bt[nt * 8 + t2], b1 = bt[nt * 8 + t2 + 1];
            s[4 * nt] += b0;
            s[4 * nt + 1] += b1;
            s[4 * nt + 2] += b0;
            s[4 * nt + 3] += b1;
        }
    }
    float mx_lo = m_lo, mx_hi = m_hi;
#pragma unroll
    for (int nt = 0; nt < KT / 8; nt++) {
        mx_lo = fmaxf(mx_lo, fmaxf(s[4 * nt], s[4 * nt + 1]));
        mx_hi = fmaxf(mx_hi, fmaxf(s[4 * nt + 2], s[4 * nt + 3]));
    }
    mx_lo = fmaxf(mx_lo, __shfl_xor_sync(0xffffffffu, mx_lo, 1));
    mx_lo = fmaxf(mx_lo, __shfl_xor_sync(0xffffffffu, mx_lo, 2));
    mx_hi = fmaxf(mx_hi, __shfl_xor_sync(0xffffffffu, mx_hi, 1));
    mx_hi = fmaxf(mx_hi, __shfl_xor_sync(0xffffffffu, mx_hi, 2));
    // scaled maxima (0 while a row has seen only masked keys: p = 0, no NaN)
    const float ms_lo = mx_lo == -INFINITY ? 0.f : mx_lo * scale_log2;
    const float ms_hi = mx_hi == -INFINITY ? 0.f : mx_hi * scale_log2;
    const float al_lo = ex2(fmaf(m_lo, scale_log2, -ms_lo));
    const float al_hi = ex2(fmaf(m_hi, scale_log2, -ms_hi));
    m_lo = mx_lo;
    m_hi = mx_hi;
    float sum_lo = 0.f, sum_hi = 0.f;
#pragma unroll
    for (int nt = 0; nt < KT / 8; nt++) {
        float p0 = ex2(fmaf(s[4 * nt], scale_log2, -ms_lo));
        float p1 = ex2(fmaf(s[4 * nt + 1], scale_log2, -ms_lo));
        float p2 = ex2(fmaf(s[4 * nt + 2], scale_log2, -ms_hi));
        float p3 = ex2(fmaf(s[4 * nt + 3], scale_log2, -ms_hi));
        sum_lo += p0 + p1;
        sum_hi += p2 + p3;
        pf[nt / 2][(nt & 1) * 2 + 0] = elem<T>::pack(p0, p1);
        pf[nt / 2][(nt & 1) * 2 + 1] = elem<T>::pack(p2, p3);
    }
    l_lo = l_lo * al_lo + sum_lo;
    l_hi = l_hi * al_hi + sum_hi;
#pragma unroll
    for (int i = 0; i < D / 8; i++) {
        acc[4 * i] *= al_lo;
        acc[4 * i + 1] *= al_lo;
        acc[4 * i + 2] *= al_hi;
        acc[4 * i + 3] *= al_hi;
    }
}

// O += P V (V tile MN-major, read transposed).
template <typename T, int D, int KT>
__device__ __forceinline__ void wg_issue_pv(float *acc, uint32_t (*pf)[4], uint64_t dv) {
#pragma unroll
    for (int i = 0; i < D / 2; i++) reg_fence(acc[i]);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < KT / 16; kk++) wgmma_rs_tb<T, D>(acc, pf[kk], dv + ((kk * 16 * 128) >> 4));
    wgmma_commit();
}

// O / l to global, rows past Nq skipped; a row with l = 0 (all keys masked) is zeros.
template <typename TO, int D>
__device__ __forceinline__ void wg_store(TO *ob, const float *acc, float l_lo, float l_hi, int r_lo,
                                         int Nq, int t2) {
    l_lo += __shfl_xor_sync(0xffffffffu, l_lo, 1);
    l_lo += __shfl_xor_sync(0xffffffffu, l_lo, 2);
    l_hi += __shfl_xor_sync(0xffffffffu, l_hi, 1);
    l_hi += __shfl_xor_sync(0xffffffffu, l_hi, 2);
    float inv_lo = l_lo > 0.f ? 1.f / l_lo : 0.f;
    float inv_hi = l_hi > 0.f ? 1.f / l_hi : 0.f;
    int r_hi = r_lo + 8;
#pragma unroll
    for (int nt = 0; nt < D / 8; nt++) {
        int c = nt * 8 + t2;
        if (r_lo < Nq) {
            ob[(size_t)r_lo * D + c] = elem<TO>::from_f(acc[4 * nt] * inv_lo);
            ob[(size_t)r_lo * D + c + 1] = elem<TO>::from_f(acc[4 * nt + 1] * inv_lo);
        }
        if (r_hi < Nq) {
            ob[(size_t)r_hi * D + c] = elem<TO>::from_f(acc[4 * nt + 2] * inv_hi);
            ob[(size_t)r_hi * D + c + 1] = elem<TO>::from_f(acc[4 * nt + 3] * inv_hi);
        }
    }
}

// One overlapped tile: sc = S_j (complete). NEXT: S_{j+1} = Q K_{j+1}^T is
// issued into sn first and runs while the softmax of tile j does; then P V;
// both are awaited together.
template <typename T, int D, int KT, int BR, bool NEXT, bool MASKED>
__device__ __forceinline__ void ov_step(float (&sc)[KT / 2], float (&sn)[KT / 2], float (&acc)[D / 2],
                                        uint32_t (&pf)[KT / 16][4], const float *bt, uint64_t dq,
                                        uint64_t dk_next, uint64_t dv, float scale_log2, int t2, float &m_lo,
                                        float &m_hi, float &l_lo, float &l_hi) {
    if constexpr (NEXT) wg_issue_s<T, D, KT, BR>(sn, dq, dk_next);
    wg_softmax<T, D, KT, MASKED>(sc, bt, scale_log2, t2, m_lo, m_hi, l_lo, l_hi, pf, acc);
    wg_issue_pv<T, D, KT>(acc, pf, dv);
    wgmma_wait<0>();
#pragma unroll
    for (int i = 0; i < D / 2; i++) reg_fence(acc[i]);
    if constexpr (NEXT) {
#pragma unroll
        for (int i = 0; i < KT / 2; i++) reg_fence(sn[i]);
    }
}

// OV = false: per tile S, wait, softmax, P V, wait (two K/V stages).
// OV = true (FA3's intra-warpgroup overlap): three K/V stages; S of tile j+1 is
// issued before the softmax of tile j, so the tensor cores work on it while
// the softmax runs; P V of tile j follows, and both are awaited together. Two
// S accumulators alternate (the loop is unrolled by two).
template <typename T, typename TO, int D, int KT, int NWG, bool OV>
__global__ void __launch_bounds__(NWG * 128, 1)
    exact_wg_kernel(const T *__restrict__ q, const T *__restrict__ k, const T *__restrict__ v,
                    TO *__restrict__ o, const uint8_t *__restrict__ mask, int H, int Nq, int Nk,
                    float scale_log2, int q_rows, int o_rows, uint32_t v_lbo, uint32_t v_sbo) {
#ifndef TKC_EXACT_NO_WGMMA
    constexpr int BR = 64 * NWG, NTHR = 128 * NWG, CH = D / 8, NS = OV ? 3 : 2;
    constexpr uint32_t QBYTES = BR * D * 2, KVBYTES = KT * D * 2;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    const uint32_t raw_a = smem_addr(smem_raw);
    const uint32_t base_a = (raw_a + 1023u) & ~1023u; // swizzle atoms are 1024-byte aligned
    unsigned char *base = smem_raw + (base_a - raw_a);
    // [Q][K stages][V stages][bias: NS x KT floats]
    const uint32_t k_a = base_a + QBYTES, v_a = base_a + QBYTES + NS * KVBYTES;
    unsigned char *Qs = base, *Ks = base + QBYTES, *Vs = base + QBYTES + NS * KVBYTES;
    float *bias = reinterpret_cast<float *>(base + QBYTES + 2 * NS * KVBYTES);

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wg = warp >> 2, wq = warp & 3;
    const int bh = blockIdx.y, b = bh / H;
    const int q0 = blockIdx.x * BR;
    const T *qb = q + (size_t)bh * q_rows * D;
    const T *kb = k + (size_t)bh * Nk * D;
    const T *vb = v + (size_t)bh * Nk * D;
    const uint8_t *mb = mask ? mask + (size_t)b * Nk : nullptr;

    // Loads: thread tid copies chunk cc = tid % CH of rows r0 + i * RSTEP (RSTEP
    // a multiple of 8, so the swizzle of every row it copies is the same):
    // compile-time trip counts, one pointer step per copy.
    constexpr int RSTEP = NTHR / CH;
    static_assert(RSTEP % 8 == 0 && BR % RSTEP == 0 && KT % RSTEP == 0, "load tiling");
    const int r0 = tid / CH, cc0 = tid % CH;
    const uint32_t so_q = swz_off(r0, cc0, BR), so_kv = swz_off(r0, cc0, KT);
#pragma unroll
    for (int i = 0; i < BR / RSTEP; i++) {
        int gr = q0 + r0 + i * RSTEP;
        cp_async16(Qs + so_q + i * RSTEP * 128, qb + (size_t)(gr < Nq ? gr : 0) * D + cc0 * 8, gr < Nq ? 16 : 0);
    }
    const int ntiles = (Nk + KT - 1) / KT;
    const T *kb0 = kb + (size_t)r0 * D + cc0 * 8, *vb0 = vb + (size_t)r0 * D + cc0 * 8;
    auto issue_kv = [&](int j) {
        const int st = j % NS;
        unsigned char *kd = Ks + st * KVBYTES + so_kv, *vd = Vs + st * KVBYTES + so_kv;
        const int g0 = j * KT + r0;
        const size_t off0 = (size_t)j * KT * D;
        if ((j + 1) * KT <= Nk) {
#pragma unroll
            for (int i = 0; i < KT / RSTEP; i++) {
                cp_async16(kd + i * RSTEP * 128, kb0 + off0 + (size_t)i * RSTEP * D, 16);
                cp_async16(vd + i * RSTEP * 128, vb0 + off0 + (size_t)i * RSTEP * D, 16);
            }
        } else {
#pragma unroll
            for (int i = 0; i < KT / RSTEP; i++) {
                bool ok = g0 + i * RSTEP < Nk;
                size_t off = ok ? off0 + (size_t)i * RSTEP * D : 0;
                cp_async16(kd + i * RSTEP * 128, kb0 + off, ok ? 16 : 0);
                cp_async16(vd + i * RSTEP * 128, vb0 + off, ok ? 16 : 0);
            }
        }
        // the key bias is read only with a key mask and by the last tile
        if ((mb || (j + 1) * KT >= Nk) && tid < KT) {
            int gr = j * KT + tid;
            bias[st * KT + tid] = (gr < Nk && (!mb || mb[gr])) ? 0.f : -INFINITY;
        }
    };

    float acc[D / 2];
#pragma unroll
    for (int i = 0; i < D / 2; i++) acc[i] = 0.f;
    float m_lo = -INFINITY, m_hi = -INFINITY, l_lo = 0.f, l_hi = 0.f; // m in raw (unscaled) units
    const bool any_mask = mb != nullptr;
    const uint64_t dq = gmma_desc(base_a + wg * 64 * 128, 16, 1024);
    const int t2 = 2 * (lane & 3);
    uint32_t pf[KT / 16][4];

    if constexpr (!OV) {
        issue_kv(0);
        cp_async_commit();
        for (int j = 0; j < ntiles; j++) {
            const int st = j & 1;
            cp_async_wait<0>();
            fence_proxy_async();
            __syncthreads(); // tile j visible to all; every warpgroup is done with tile j-1's buffers
            if (j + 1 < ntiles) issue_kv(j + 1);
            cp_async_commit();
            float s[KT / 2];
            wg_issue_s<T, D, KT, BR>(s, dq, gmma_desc(k_a + st * KVBYTES, 16, 1024));
            wgmma_wait<0>();
#pragma unroll
            for (int i = 0; i < KT / 2; i++) reg_fence(s[i]);
            if (any_mask || (j + 1) * KT > Nk)
                wg_softmax<T, D, KT, true>(s, bias + st * KT, scale_log2, t2, m_lo, m_hi, l_lo, l_hi, pf, acc);
            else
                wg_softmax<T, D, KT, false>(s, bias + st * KT, scale_log2, t2, m_lo, m_hi, l_lo, l_hi, pf, acc);
            wg_issue_pv<T, D, KT>(acc, pf, gmma_desc(v_a + st * KVBYTES, v_lbo, v_sbo));
            wgmma_wait<0>();
#pragma unroll
            for (int i = 0; i < D / 2; i++) reg_fence(acc[i]);
        }
    } else {
        issue_kv(0);
        cp_async_commit();
        if (ntiles > 1) issue_kv(1);
        cp_async_commit();
        cp_async_wait<1>(); // Q and tile 0
        fence_proxy_async();
        __syncthreads();
        float sa[KT / 2], sb[KT / 2];
        wg_issue_s<T, D, KT, BR>(sa, dq, gmma_desc(k_a, 16, 1024));
        wgmma_wait<0>();
#pragma unroll
        for (int i = 0; i < KT / 2; i++) reg_fence(sa[i]);
        // Before tile j: tile j+1 visible, tile j+2's loads queued into the
        // stage of tile j-1 (every warpgroup is past its P V after the barrier).
        auto pre = [&](int j) {
            if (j + 1 < ntiles) {
                cp_async_wait<0>(); // tile j+1: the only group in flight
                fence_proxy_async();
            }
            __syncthreads();
            if (j + 2 < ntiles) issue_kv(j + 2);
            cp_async_commit();
        };
        // Straight-line code from each S issue to its wait (a branch in between
        // makes ptxas serialize the wgmma): all but the last tile run without
        // the bias unless a key mask is given; the last tile always takes it.
        auto run = [&](auto masked_tag) {
            constexpr bool M = decltype(masked_tag)::value;
            int j = 0;
            for (; j + 2 < ntiles; j += 2) {
                pre(j);
                ov_step<T, D, KT, BR, true, M>(sa, sb, acc, pf, bias + (j % NS) * KT, dq,
                                               gmma_desc(k_a + ((j + 1) % NS) * KVBYTES, 16, 1024),
                                               gmma_desc(v_a + (j % NS) * KVBYTES, v_lbo, v_sbo), scale_log2,
                                               t2, m_lo, m_hi, l_lo, l_hi);
                pre(j + 1);
                ov_step<T, D, KT, BR, true, M>(sb, sa, acc, pf, bias + ((j + 1) % NS) * KT, dq,
                                               gmma_desc(k_a + ((j + 2) % NS) * KVBYTES, 16, 1024),
                                               gmma_desc(v_a + ((j + 1) % NS) * KVBYTES, v_lbo, v_sbo),
                                               scale_log2, t2, m_lo, m_hi, l_lo, l_hi);
            }
            if (j + 1 < ntiles) {
                pre(j);
                ov_step<T, D, KT, BR, true, M>(sa, sb, acc, pf, bias + (j % NS) * KT, dq,
                                               gmma_desc(k_a + ((j + 1) % NS) * KVBYTES, 16, 1024),
                                               gmma_desc(v_a + (j % NS) * KVBYTES, v_lbo, v_sbo), scale_log2,
                                               t2, m_lo, m_hi, l_lo, l_hi);
                pre(j + 1);
                ov_step<T, D, KT, BR, false, true>(sb, sa, acc, pf, bias + ((j + 1) % NS) * KT, dq, 0,
                                                   gmma_desc(v_a + ((j + 1) % NS) * KVBYTES, v_lbo, v_sbo),
                                                   scale_log2, t2, m_lo, m_hi, l_lo, l_hi);
            } else {
                pre(j);
                ov_step<T, D, KT, BR, false, true>(sa, sb, acc, pf, bias + (j % NS) * KT, dq, 0,
                                                   gmma_desc(v_a + (j % NS) * KVBYTES, v_lbo, v_sbo),
                                                   scale_log2, t2, m_lo, m_hi, l_lo, l_hi);
            }
        };
        if (any_mask)
            run(std::true_type{});
        else
            run(std::false_type{});
    }
    wg_store<TO, D>(o + (size_t)bh * o_rows * D, acc, l_lo, l_hi, q0 + wg * 64 + wq * 16 + (lane >> 2), Nq,
                    t2);
#endif
}

int q_rows_of(const tkc_exact_args *a) { return a->q_rows > 0 ? a->q_rows : a->Nq; }
int o_rows_of(const tkc_exact_args *a) { return a->o_rows > 0 ? a->o_rows : q_rows_of(a); }

template <typename T, typename TO, int D, int KT, int NWG, bool OV>
int launch_exact_wg(const tkc_exact_args *a, cudaStream_t st, char *err, size_t errlen) {
    constexpr int BR = 64 * NWG, NS = OV ? 3 : 2;
    size_t smem = 1024 + (size_t)(BR + 2 * NS * KT) * D * 2 + NS * KT * sizeof(float);
    auto kern = exact_wg_kernel<T, TO, D, KT, NWG, OV>;
    TKC_TRY(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem), err,
            errlen);
    dim3 grid((a->Nq + BR - 1) / BR, a->B * a->H);
    float scale_log2 = (float)(a->scale * 1.4426950408889634);
    // V (MN-major B): leading offset = next 64-column chunk, stride offset = next 8 keys.
    uint32_t lbo = KT * 128, sbo = 1024;
    kern<<<grid, NWG * 128, smem, st>>>((const T *)a->q, (const T *)a->k, (const T *)a->v, (TO *)a->o,
                                        a->mask, a->H, a->Nq, a->Nk, scale_log2,
                                        q_rows_of(a), o_rows_of(a), lbo, sbo);
    TKC_LAUNCHED("exact_wg_kernel", err, errlen);
    return 0;
}

template <typename T, typename TO, int D, int NW, int KT>
int launch_exact(const tkc_exact_args *a, cudaStream_t st, char *err, size_t errlen) {
    constexpr int LD = ExactSmem<D>::LD;
    size_t smem = (size_t)(16 * NW + 4 * KT) * LD * sizeof(T) + 2 * KT * sizeof(float);
    auto kern = exact_kernel<T, TO, D, NW, KT>;
    TKC_TRY(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem), err,
            errlen);
    dim3 grid((a->Nq + 16 * NW - 1) / (16 * NW), a->B * a->H);
    float scale_log2 = (float)(a->scale * 1.4426950408889634);
    kern<<<grid, NW * 32, smem, st>>>((const T *)a->q, (const T *)a->k, (const T *)a->v, (TO *)a->o,
                                      a->mask, a->H, a->Nq, a->Nk, scale_log2,
                                      q_rows_of(a), o_rows_of(a));
    TKC_LAUNCHED("exact_kernel", err, errlen);
    return 0;
}

template <typename T, typename TO>
int launch_exact_d(const tkc_exact_args *a, cudaStream_t st, char *err, size_t errlen) {
    const int w = a->warps;
    if (a->D == 128) {
        if (w == 8) return launch_exact<T, TO, 128, 8, 128>(a, st, err, errlen);
        if (w == 4) return launch_exact<T, TO, 128, 4, 64>(a, st, err, errlen);
        if (w == 16) return launch_exact<T, TO, 128, 8, 64>(a, st, err, errlen);
        if (w == 9) return launch_exact_wg<T, TO, 128, 96, 2, true>(a, st, err, errlen);
        return launch_exact_wg<T, TO, 128, 128, 2, false>(a, st, err, errlen);
    }
    if (a->D == 64) {
        if (w == 8 || w == 16) return launch_exact<T, TO, 64, 8, 64>(a, st, err, errlen);
        if (w == 4) return launch_exact<T, TO, 64, 4, 64>(a, st, err, errlen);
        return launch_exact_wg<T, TO, 64, 128, 2, false>(a, st, err, errlen);
    }
    if (a->D == 32) return launch_exact<T, TO, 32, 8, 128>(a, st, err, errlen);
    snprintf(err, errlen, "exact: head dim %d (cuda supports 32, 64 and 128)", a->D);
    return 3;
}

} // namespace

int tkc_exact_launch(const tkc_exact_args *a, cudaStream_t st, char *err, size_t errlen) {
    if (a->in_dtype == TK_DTYPE_BF16)
        return a->out_dtype == TK_DTYPE_F32
                   ? launch_exact_d<__nv_bfloat16, float>(a, st, err, errlen)
                   : launch_exact_d<__nv_bfloat16, __nv_bfloat16>(a, st, err, errlen);
    if (a->in_dtype == TK_DTYPE_F16)
        return a->out_dtype == TK_DTYPE_F32 ? launch_exact_d<__half, float>(a, st, err, errlen)
                                            : launch_exact_d<__half, __half>(a, st, err, errlen);
    snprintf(err, errlen, "exact: tensor-core input must be bf16 or f16");
    return 3;
}

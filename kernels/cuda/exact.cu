// exact.cu -- exact attention: a FlashAttention-2 style tiled kernel.
//
// One block = 16*NW queries of one (batch, head); NW warps own 16 query rows
// each, keep their q fragments and the output accumulator in registers, and
// stream 64-key tiles of K and V through shared memory (cp.async, two
// stages). S = q k^T and O += P V run on mma.sync m16n8k16 (bf16 or f16 in,
// fp32 accumulate); the softmax is online, in the log2 domain. The N x N
// matrix never exists. Tails (Nq, Nk not tile multiples) are zero-filled on
// load and masked to -inf; the key mask is a per-tile bias.
#include <stdio.h>

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
                 float scale_log2, int q_rows) {
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
    TO *ob = o + (size_t)bh * q_rows * D;
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
                                      a->q_rows > 0 ? a->q_rows : a->Nq);
    TKC_LAUNCHED("exact_kernel", err, errlen);
    return 0;
}

template <typename T, typename TO>
int launch_exact_d(const tkc_exact_args *a, cudaStream_t st, char *err, size_t errlen) {
    // variants (bench): warps 4 = two blocks of 64 queries per SM; warps 16 = 8 warps with 128-key tiles
    if (a->D == 128)
        return a->warps == 4    ? launch_exact<T, TO, 128, 4, 64>(a, st, err, errlen)
               : a->warps == 16 ? launch_exact<T, TO, 128, 8, 64>(a, st, err, errlen)
                                : launch_exact<T, TO, 128, 8, 128>(a, st, err, errlen);
    if (a->D == 64)
        return a->warps == 4 ? launch_exact<T, TO, 64, 4, 64>(a, st, err, errlen)
                             : launch_exact<T, TO, 64, 8, 64>(a, st, err, errlen);
    snprintf(err, errlen, "exact: head dim %d (cuda supports 64 and 128)", a->D);
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

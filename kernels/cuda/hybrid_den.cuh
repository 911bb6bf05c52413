// hybrid_den.cuh -- the far denominators of the hybrid's local kernels
// (hybrid.cu's mma.sync kernel and hybrid_wgmma.cu), normalized combine: a
// row whose far denominator D_far - D_far,win comes out <= 0 is flagged for
// the recompute pass (SPEC 4), and every row's value is counted into the
// call's tkc_den_stats (n, <= 0, non-finite, min, max, sum).
#ifndef TK_CUDA_HYBRID_DEN_CUH
#define TK_CUDA_HYBRID_DEN_CUH

#include "cuda_internal.h"

namespace tkc {

// A block's running figures (in shared memory).
struct far_den_block {
    unsigned long long n, le, nf;
    unsigned mn, mx;
    double sum;
};

// One thread, before the block's first __syncthreads.
__device__ __forceinline__ void far_den_init(far_den_block &b) {
    b.n = b.le = b.nf = 0;
    b.mn = 0xffffffffu;
    b.mx = 0;
    b.sum = 0.0;
}

// Every lane of a warp: the quad leaders (lane % 4 == 0) hold the far
// denominators of two rows (tokens t_lo, t_hi of the head whose rows start at
// flags_head; < 0 = no row). Flags the dropped rows, reduces over the warp,
// and lane 0 adds into the block's figures.
__device__ __forceinline__ void far_den_warp(far_den_block &b, uint8_t *flags_head, int lane, float d_lo,
                                             float d_hi, int t_lo, int t_hi, bool drop_lo, bool drop_hi) {
    unsigned n = 0, nf = 0, le = 0, mn = 0xffffffffu, mx = 0u;
    double sum = 0.0;
    if ((lane & 3) == 0) {
        const float dd[2] = {d_lo, d_hi};
        const int tt[2] = {t_lo, t_hi};
        const bool dr[2] = {drop_lo, drop_hi};
#pragma unroll
        for (int i = 0; i < 2; i++) {
            if (tt[i] < 0) continue;
            n++;
            if (dr[i]) flags_head[tt[i]] = 1;
            if (!isfinite(dd[i])) {
                nf++;
                continue;
            }
            if (!(dd[i] > 0.f)) le++;
            mn = min(mn, ord_enc(dd[i]));
            mx = max(mx, ord_enc(dd[i]));
            sum += (double)dd[i];
        }
    }
    n = __reduce_add_sync(0xffffffffu, n);
    nf = __reduce_add_sync(0xffffffffu, nf);
    le = __reduce_add_sync(0xffffffffu, le);
    mn = __reduce_min_sync(0xffffffffu, mn);
    mx = __reduce_max_sync(0xffffffffu, mx);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    if (lane == 0 && n) {
        atomicAdd(&b.n, (unsigned long long)n);
        if (nf) atomicAdd(&b.nf, (unsigned long long)nf);
        if (le) atomicAdd(&b.le, (unsigned long long)le);
        atomicMin(&b.mn, mn);
        atomicMax(&b.mx, mx);
        atomicAdd(&b.sum, sum);
    }
}

// One thread, after a __syncthreads that follows every far_den_warp: the
// block's figures into the call's counters.
__device__ __forceinline__ void far_den_flush(const far_den_block &b, tkc_den_stats *den) {
    if (!b.n) return;
    atomicAdd(&den->n, b.n);
    atomicAdd(&den->n_le_eps, b.le);
    atomicAdd(&den->n_nonfinite, b.nf);
    atomicMin(reinterpret_cast<unsigned *>(&den->min), b.mn);
    atomicMax(reinterpret_cast<unsigned *>(&den->max), b.mx);
    atomicAdd(&den->sum, b.sum);
}

} // namespace tkc

#endif

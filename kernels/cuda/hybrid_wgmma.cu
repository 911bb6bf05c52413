// hybrid_wgmma.cu -- the hybrid's local kernel on wgmma (sm_90a), 2d window.
//
// One block = 128 image queries of one (batch, head) shaped as 8 grid rows x
// 16 grid columns, 2 warpgroups: warpgroup g owns the 8x8 cell of columns
// 8g..8g+7 (query 8y + x of the cell = accumulator row; the mma.sync C layout
// of hybrid.cu's kernel, warp w of a group holding cell rows 2w and 2w+1).
// Key list: the text keys padded to 128, then the clamped rectangle of the
// block ((8 + 2r) rows x (16 + 2r) columns at most) column by column, 128-key
// tiles. The tokens of the whole list and its visibility (per tile, one
// word per query row and per query column in the accumulator's column
// order: a thread's visibility bits of a tile are two words ANDed) are
// computed once per block into shared memory, with one bit per tile and
// warpgroup: a warpgroup skips the tiles none of its queries sees (with r = 8
// the first rectangle tile is warpgroup 0's alone and the last warpgroup 1's).
// Per tile: K and V gathered by cp.async into the 128-byte swizzled layout
// wgmma reads (two stages; the next tile's gathers are issued right after S,
// its visibility bits read while P.V runs), S = Q K^T by wgmma (A and B
// from shared memory); rectangle tiles with the fused far field (FARM 2) also
// form x' = q' k'^T on mma.sync and kappa(x') of the visible keys once S is
// issued (the mma.sync queues behind the S wgmma on the tensor pipe). Element step as hybrid.cu: invisible keys -inf, exact online
// softmax in log2 units, p = e^{x-m} - w e^{-m} kappa(x') for visible
// rectangle keys, P packed as the register A operand of O += P V (wgmma, V
// read transposed). Output rows leave through shared memory as 16-byte stores.
// FARM 2: the far prologue w phi(q') . [S | z] into the accumulators at a
// running max of 0, on wgmma: phi(q') built in registers as the A operand,
// S|z chunks of 64 features double-buffered (while tile 0 loads). FARM 0: no
// far term (window alone, or the recompute pass of rows whose far denominator
// came out <= 0).
#include <math.h>
#include <stdio.h>

#include <type_traits>

#include "hybrid_den.cuh"
#include "hybrid_wgmma.h"

#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define TKC_HYB_NO_WGMMA 1 // device pass without sm_90a: the kernel compiles empty
#endif

namespace {

using namespace tkc;

constexpr int KT = 128, BR = 128, NTHR = 256;
constexpr int FULL_BITS = 0xffffff;

__device__ __forceinline__ uint32_t swz(int r, int cc, int R) {
    return (uint32_t)((cc >> 3) * R * 128 + r * 128 + (((cc & 7) ^ (r & 7)) << 4));
}

// Warp-wide transpose of a 32 x 32 bit matrix: lane L holds row L (bit c =
// entry (L, c)); afterwards lane c holds column c (bit L = entry (L, c)).
// Each step swaps the off-diagonal j x j blocks between lanes L and L ^ j.
__device__ __forceinline__ uint32_t warp_transpose32(uint32_t x, int lane) {
    uint32_t m = 0x0000ffffu;
#pragma unroll
    for (int j = 16; j != 0; j >>= 1, m ^= m << j) {
        const uint32_t y = __shfl_xor_sync(0xffffffffu, x, j);
        x = (lane & j) ? (x & ~m) | ((y >> j) & m) : (x & m) | ((y & m) << j);
    }
    return x;
}

// Bits lo..hi of 0..n-1 (none when the range misses).
__device__ __forceinline__ int bits_in(int lo, int hi, int n) {
    lo = max(lo, 0);
    hi = min(hi, n - 1);
    return lo > hi ? 0 : (int)(((2u << hi) - 1u) & ~((1u << lo) - 1u));
}

struct FarFeatW { // taylor.cu's feature entry: w * x[i0] x[i1] x[i2], offsets idx*32
    uint16_t off[3];
    __half w;
};

__device__ __forceinline__ float col_scale(unsigned bits) {
    float m = __uint_as_float(bits);
    return m > 0.f ? m * (1.f / 1024.f) : 1.f;
}

template <int D, int G> constexpr size_t smem_bytes(int FARM) {
    return 1024 + (size_t)BR * D * 2 + (size_t)4 * KT * D * 2 +
           (FARM ? (size_t)2 * KT * (G + 8) * 2 + (size_t)BR * (G + 8) * 2 : 0) +
           (size_t)2 * TKC_HYB_WG_LIST_MAX * 4;
}

// P3: kappa has the P = 3 coefficients (1, 1, 1/2) as immediates (kept in
// registers the runtime ones were re-read from the constant bank per element).
template <typename T, typename TO, int D, int G, int FARM, bool P3>
__global__ void __launch_bounds__(NTHR, 1) hyb_wg_kernel(tkc_hyb_wg_args a) {
#ifndef TKC_HYB_NO_WGMMA
    constexpr bool FAR = FARM != 0;
    constexpr int CH = D / 8, GLD = G + 8, RSTEP = NTHR / CH;
    constexpr uint32_t QBYTES = BR * D * 2, KVBYTES = KT * D * 2;
    static_assert(RSTEP % 8 == 0 && KT % RSTEP == 0 && BR % RSTEP == 0, "load tiling");
    extern __shared__ __align__(16) unsigned char smem_raw[];
    const uint32_t raw_a = smem_addr(smem_raw);
    const uint32_t base_a = (raw_a + 1023u) & ~1023u;
    unsigned char *base = smem_raw + (base_a - raw_a);
    const uint32_t k_a = base_a + QBYTES, v_a = k_a + 2 * KVBYTES;
    unsigned char *Qs = base, *Ks = base + QBYTES, *Vs = Ks + 2 * KVBYTES;
    T *KPs = reinterpret_cast<T *>(Vs + 2 * KVBYTES);           // [2][KT][GLD] (FAR)
    T *QPs = KPs + (FAR ? 2 * KT * GLD : 0);                     // [BR][GLD] (FAR)
    int *ltok = reinterpret_cast<int *>(QPs + (FAR ? BR * GLD : 0)); // [LIST_MAX]
    uint32_t *vw = reinterpret_cast<uint32_t *>(ltok + TKC_HYB_WG_LIST_MAX); // [LIST_MAX / KT][4][24]
    static_assert(TKC_HYB_WG_LIST_MAX / KT * 4 * 24 <= TKC_HYB_WG_LIST_MAX, "visibility words fit");
    __shared__ int qtok[BR];
    __shared__ int tneed[TKC_HYB_WG_LIST_MAX / KT];
    __shared__ far_den_block s_den;

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wg = warp >> 2, wq = warp & 3;
    const int bh = blockIdx.y, b = bh / a.H;
    const int N = a.N, T_ = a.T, gw = a.gw, gh = a.gh, r = a.r;
    const T *qb = reinterpret_cast<const T *>(a.q) + (size_t)bh * N * D;
    const T *kb = reinterpret_cast<const T *>(a.k) + (size_t)bh * N * D;
    const T *vb = reinterpret_cast<const T *>(a.v) + (size_t)bh * N * D;
    const T *qpb = FAR ? reinterpret_cast<const T *>(a.qp) + (size_t)bh * N * G : nullptr;
    const T *kpb = FAR ? reinterpret_cast<const T *>(a.kp) + (size_t)bh * N * G : nullptr;
    const uint8_t *mb = a.mask ? a.mask + (size_t)b * N : nullptr;

    const int tiles_x = (gw + 15) / 16;
    const int qy0 = (blockIdx.x / tiles_x) * 8, qx0 = (blockIdx.x % tiles_x) * 16;
    const int y0 = max(0, qy0 - r), x0 = max(0, qx0 - r);
    const int RH = min(gh, qy0 + 8 + r) - y0, RW = min(gw, qx0 + 16 + r) - x0;
    const int ntext = (T_ + KT - 1) / KT, Tpad = ntext * KT;
    const int nrect = RW * RH;
    const int ntiles = ntext + (nrect + KT - 1) / KT;

    // Q (swizzled) and q' (padded rows) of the block's queries, first: their
    // latency runs under the key list's construction. Row R = 64 g + 8 y + x:
    // cell (y, x) of warpgroup g (grid columns 8 g..8 g+7 of the block).
    auto qtoken = [&](int R) {
        const int qy = qy0 + ((R & 63) >> 3), qx = qx0 + 8 * (R >> 6) + (R & 7);
        return (qy < gh && qx < gw) ? T_ + qy * gw + qx : -1;
    };
    const int r0 = tid / CH, cc0 = tid % CH;
    {
        const uint32_t so = swz(r0, cc0, BR);
#pragma unroll
        for (int i = 0; i < BR / RSTEP; i++) {
            const int t = qtoken(r0 + i * RSTEP);
            cp_async16(Qs + so + i * RSTEP * 128, qb + (size_t)(t >= 0 ? t : 0) * D + cc0 * 8, t >= 0 ? 16 : 0);
        }
    }
    if constexpr (FAR) {
        for (int c = tid; c < BR * (G / 8); c += NTHR) {
            const int rr = c / (G / 8), cc = c % (G / 8), t = qtoken(rr);
            cp_async16(QPs + rr * GLD + cc * 8, qpb + (size_t)(t >= 0 ? t : 0) * G + cc * 8, t >= 0 ? 16 : 0);
        }
    }
    cp_async_commit();

    // Key list: the token of every slot (-1 = none) and the visibility words.
    // A slot's visibility is 8 query-row bits << 16 | 16 query-column bits
    // (text keys all set, masked or missing keys 0). The element step wants
    // the bits of slots 8 nt + 2 c + e of a tile (nt < 16, e < 2: the
    // accumulator columns of the lanes with lane % 4 = c) as bit 2 nt + e, so
    // one warp takes one (tile, c) at a time, lane 2 nt + e its slot, and
    // transposes the warp's 32 x 24 bit matrix: vw[tile][c][0..7] row words,
    // [8..23] column words; a thread's visibility is its row word & its column
    // word.
    // The rectangle goes column by column: warpgroup g sees only columns
    // 8g..8g+15+2r of it, so with r = 8 the first rectangle tile holds keys
    // only warpgroup 0 sees and the last only warpgroup 1's; tneed[tile] bit
    // g = some key of the tile is visible to some query of warpgroup g (the
    // other skips the tile).
    if (tid < TKC_HYB_WG_LIST_MAX / KT) tneed[tid] = 0;
    __syncthreads();
    const float rcp_rh = 1.f / (float)RH;
    // whole text tiles without a key mask: tokens and need bits only (their
    // steps apply no visibility, so their words are never read)
    const int p0 = mb ? 0 : 4 * (T_ / KT);
    for (int L = tid; L < p0 / 4 * KT; L += NTHR) ltok[L] = L;
    if (tid < p0 / 4) tneed[tid] = 3;
    for (int p = p0 + warp; p < ntiles * 4; p += NTHR / 32) {
        const int L = (p >> 2) * KT + 8 * (lane >> 1) + 2 * (p & 3) + (lane & 1);
        int t = -1, inf = 0;
        if (L < Tpad) {
            if (L < T_) t = L, inf = FULL_BITS;
        } else if (L - Tpad < nrect) {
            const int m = L - Tpad;
            int cx = (int)(((float)m + 0.5f) * rcp_rh), cy = m - cx * RH; // m / RH, m % RH
            if (cy < 0) cx--, cy += RH;
            else if (cy >= RH) cx++, cy -= RH;
            const int kx = x0 + cx, ky = y0 + cy;
            t = T_ + ky * gw + kx;
            inf = (bits_in(ky - qy0 - r, ky - qy0 + r, 8) << 16) | bits_in(kx - qx0 - r, kx - qx0 + r, 16);
        }
        if (t >= 0 && mb && !mb[t]) t = -1, inf = 0;
        ltok[L] = t;
        // lane c < 24 gets the word of visibility bit c (column x = c, row y = c - 16)
        const uint32_t word = warp_transpose32((uint32_t)inf, lane);
        if (lane < 24) vw[p * 24 + (lane < 16 ? 8 + lane : lane - 16)] = word;
        const unsigned nb = (inf >> 16) ? ((inf & 0xff) ? 1u : 0u) | ((inf & 0xff00) ? 2u : 0u) : 0u;
        const unsigned wb = __reduce_or_sync(0xffffffffu, nb); // the warp's 32 slots share a tile
        if (lane == 0 && wb) atomicOr(&tneed[p >> 2], (int)wb);
    }
    if (tid < BR) qtok[tid] = qtoken(tid);
    if (tid == 0) {
        far_den_init(s_den);
    }
    __syncthreads();

    // loads of tile j: thread copies chunk cc0 of rows r0 + i RSTEP (same swizzle)
    const uint32_t so_kv = swz(r0, cc0, KT);
    constexpr int NTK = KT / RSTEP; // key rows a thread copies per tile
    auto issue = [&](int j, bool far_tile) {
        const int st = j & 1;
        unsigned char *kd = Ks + st * KVBYTES + so_kv, *vd = Vs + st * KVBYTES + so_kv;
        const int *tl = ltok + j * KT + r0;
        int tk[NTK];
#pragma unroll
        for (int i = 0; i < NTK; i++) tk[i] = tl[i * RSTEP];
#pragma unroll
        for (int i = 0; i < NTK; i++) {
            const int t = tk[i];
            const size_t off = (size_t)(t >= 0 ? t : 0) * D + cc0 * 8;
            cp_async16(kd + i * RSTEP * 128, kb + off, t >= 0 ? 16 : 0);
            cp_async16(vd + i * RSTEP * 128, vb + off, t >= 0 ? 16 : 0);
        }
        if (FAR && far_tile) {
            for (int c = tid; c < KT * (G / 8); c += NTHR) {
                const int rr = c / (G / 8), cc = c % (G / 8), t = ltok[j * KT + rr];
                cp_async16(KPs + (st * KT + rr) * GLD + cc * 8, kpb + (size_t)(t >= 0 ? t : 0) * G + cc * 8,
                           t >= 0 ? 16 : 0);
            }
        }
    };

    issue(0, FAR && ntext == 0); // tile 0 streams in during the far prologue
    cp_async_commit();

    float acc[D / 2];
#pragma unroll
    for (int i = 0; i < D / 2; i++) acc[i] = 0.f;
    float m_lo = -INFINITY, m_hi = -INFINITY, l1_lo = 0.f, l1_hi = 0.f, l2_lo = 0.f, l2_hi = 0.f;
    float dfar_lo = 0.f, dfar_hi = 0.f;
    uint32_t qpf[G / 16][4];
    if constexpr (FARM == 2) {
        // Far prologue on wgmma: acc = phi(q') . S and dfar = phi(q') . z over
        // 64-feature chunks of the head's f16 S|z (double-buffered). phi(q')
        // is built in registers as the f16 A fragment of the thread's two rows
        // (w x[i0] x[i1] x[i2] from taylor.cu's table, both rows as one half2:
        // q' pairs QP2[pair][G+1], pair = 8 warp + lane/4); S is read as an
        // MN-major B tile (the V layout); z by HFMA2 per chunk, then fp32.
        constexpr int FK = 64, DVP = D + 8, GP = G + 1;
        constexpr uint32_t SCB = FK * D * 2;
        // in the stage-1 K/V buffers (tile 0 is loading into stage 0)
        unsigned char *Sc = Ks + KVBYTES;                                // [2][FK x D] swizzled
        __half *Zr = reinterpret_cast<__half *>(Vs + KVBYTES);           // [2][FK][8] cols D..D+7
        FarFeatW *Tb = reinterpret_cast<FarFeatW *>(Zr + 2 * FK * 8);    // [2][FK]
        __half2 *QP2 = reinterpret_cast<__half2 *>(Tb + 2 * FK);         // [64 pairs][GP]
        unsigned *CMs = reinterpret_cast<unsigned *>(QP2 + 64 * GP);     // [DVP] the head's column maxima
        static_assert(2 * SCB <= KVBYTES && 2 * FK * 16 + 2 * FK * 8 + 64 * GP * 4 + DVP * 4 <= KVBYTES,
                      "the far prologue lives in the stage-1 K/V buffers");
        const FarFeatW *tab = reinterpret_cast<const FarFeatW *>(a.ftab);
        const __half *shb = a.fsh + (size_t)bh * a.fRpad * DVP;
        const int nch = (a.fR + FK - 1) / FK; // chunks (Rpad is a multiple of 128)
        auto load_chunk = [&](int c) {
            const int st = c & 1, f0 = c * FK;
            for (int e = tid; e < FK * (D / 8 + 1); e += NTHR) {
                const int rr = e / (D / 8 + 1), cc = e % (D / 8 + 1);
                const __half *src = shb + (size_t)(f0 + rr) * DVP + cc * 8;
                if (cc < D / 8) cp_async16(Sc + st * SCB + swz(rr, cc, FK), src, 16);
                else cp_async16(Zr + (st * FK + rr) * 8, src, 16);
            }
            if (tid < FK / 2) cp_async16(Tb + st * FK + 2 * tid, tab + f0 + 2 * tid, 16);
        };
        if (nch > 0) load_chunk(0);
        // the column maxima come with chunk 0 (read after the chunk loop)
        const unsigned *cm = a.fcolmax + (size_t)bh * DVP;
        if (tid < DVP / 4) cp_async16(CMs + 4 * tid, cm + 4 * tid, 16);
        cp_async_commit();
        cp_async_wait<2>(); // Q and q' (tile 0 and chunk 0 may be in flight)
        __syncthreads();
        for (int e = tid; e < 64 * GP; e += NTHR) {
            const int pr = e / GP, c = e % GP, rl = 16 * (pr >> 3) + (pr & 7);
            QP2[e] = c == G ? __floats2half2_rn(1.f, 1.f)
                            : __floats2half2_rn(elem<T>::to_f(QPs[rl * GLD + c]),
                                                elem<T>::to_f(QPs[(rl + 8) * GLD + c]));
        }
        const unsigned char *qp2 = reinterpret_cast<const unsigned char *>(QP2 + (8 * warp + (lane >> 2)) * GP);
        const int tq = 2 * (lane & 3);
        float den_lo = 0.f, den_hi = 0.f;
        for (int c = 0; c < nch; c++) {
            const int st = c & 1;
            cp_async_wait<0>();
            fence_proxy_async();
            __syncthreads(); // chunk c (and QP2) visible; chunk c-1's stage free
            if (c + 1 < nch) load_chunk(c + 1);
            cp_async_commit();
            const FarFeatW *tb = Tb + st * FK;
            const __half *zr = Zr + st * FK * 8;
            __half2 dh = __floats2half2_rn(0.f, 0.f);
            uint32_t af[FK / 16][4];
#pragma unroll
            for (int kk = 0; kk < FK / 16; kk++) {
                __half2 f[4];
#pragma unroll
                for (int u = 0; u < 4; u++) {
                    const int fi = kk * 16 + tq + (u & 1) + 8 * (u >> 1);
                    const FarFeatW t = tb[fi];
                    // off = idx * 32 (taylor.cu); the pair's row holds idx at idx * 4 bytes
                    const __half2 x0 = *reinterpret_cast<const __half2 *>(qp2 + (t.off[0] >> 3));
                    const __half2 x1 = *reinterpret_cast<const __half2 *>(qp2 + (t.off[1] >> 3));
                    const __half2 x2 = *reinterpret_cast<const __half2 *>(qp2 + (t.off[2] >> 3));
                    f[u] = __hmul2(__hmul2(x0, x1), __hmul2(x2, __half2half2(t.w)));
                    dh = __hfma2(f[u], __half2half2(zr[fi * 8]), dh);
                }
                const __half2 a0 = __lows2half2(f[0], f[1]), a1 = __highs2half2(f[0], f[1]);
                const __half2 a2 = __lows2half2(f[2], f[3]), a3 = __highs2half2(f[2], f[3]);
                af[kk][0] = *reinterpret_cast<const uint32_t *>(&a0);
                af[kk][1] = *reinterpret_cast<const uint32_t *>(&a1);
                af[kk][2] = *reinterpret_cast<const uint32_t *>(&a2);
                af[kk][3] = *reinterpret_cast<const uint32_t *>(&a3);
            }
#pragma unroll
            for (int i = 0; i < D / 2; i++) reg_fence(acc[i]);
            wgmma_fence();
            const uint32_t sc_a = smem_addr(Sc + st * SCB);
#pragma unroll
            for (int kk = 0; kk < FK / 16; kk++)
                wgmma_rs_tb<__half, D>(acc, af[kk], gmma_desc(sc_a + kk * 16 * 128, FK * 128, 1024));
            wgmma_commit();
            den_lo += __low2float(dh);
            den_hi += __high2float(dh);
            wgmma_wait<0>();
#pragma unroll
            for (int i = 0; i < D / 2; i++) reg_fence(acc[i]);
        }
        den_lo += __shfl_xor_sync(0xffffffffu, den_lo, 1);
        den_lo += __shfl_xor_sync(0xffffffffu, den_lo, 2);
        den_hi += __shfl_xor_sync(0xffffffffu, den_hi, 1);
        den_hi += __shfl_xor_sync(0xffffffffu, den_hi, 2);
        if (nch == 0) { // (the chunk loop's first barrier makes CMs visible otherwise)
            cp_async_wait<0>();
            __syncthreads();
        }
        const float dsc = col_scale(CMs[D]);
        dfar_lo = den_lo * dsc;
        dfar_hi = den_hi * dsc;
#pragma unroll
        for (int nt = 0; nt < D / 8; nt++) {
            const int c = nt * 8 + 2 * (lane & 3);
            const float s0 = a.w * col_scale(CMs[c]), s1 = a.w * col_scale(CMs[c + 1]);
            acc[4 * nt] *= s0, acc[4 * nt + 1] *= s1, acc[4 * nt + 2] *= s0, acc[4 * nt + 3] *= s1;
        }
        m_lo = m_hi = 0.f; // the far term enters at a running max of 0 (log2 units)
        if ((lane & 3) == 0) l1_lo = a.w * dfar_lo, l1_hi = a.w * dfar_hi;
        {
            const int rr = warp * 16 + (lane & 7) + 8 * ((lane >> 3) & 1);
#pragma unroll
            for (int kk = 0; kk < G / 16; kk++) ldsm_x4(qpf[kk], QPs + rr * GLD + kk * 16 + 8 * (lane >> 4));
        }
        // stage 1 is written next by step 0, after its barrier
    }

    // this thread's rows: cell row 2 wq (+1), cell column lane/4 of warpgroup wg
    const int g8 = lane >> 2, t2 = 2 * (lane & 3);
    const int row_lo = wg * 64 + wq * 16 + g8, row_hi = row_lo + 8;
    const int t_lo = qtok[row_lo], t_hi = qtok[row_hi];
    const uint64_t dq = gmma_desc(base_a + wg * 64 * 128, 16, 1024);
    // kernel parameters the element loops use, in registers (read through the
    // lambdas' captures they were constant-bank loads: ~6% of the stall samples)
    const float sl2 = a.scale_log2, wfar = a.w;
    const float kc0 = P3 ? 1.f : a.c0, kc1 = P3 ? 1.f : a.c1, kc2 = P3 ? 0.5f : a.c2, kc3 = P3 ? 0.f : a.c3;

    // One tile. FT: a rectangle tile with the far term; VIS: apply the
    // visibility bits (a text tile whose 128 slots are all kept keys needs none).
    // After S is issued: the next tile's gathers and, FT, kappa(x') of the
    // visible keys (0 for the others) as packed f16 pairs (x' = q' k'^T on
    // mma.sync, which waits behind the S wgmma on the tensor pipe).
    // visibility of the thread's 64 elements of tile j (read one tile ahead,
    // under P.V): bit 2 nt + e of each row
    auto vis_bits = [&](int j, uint32_t &lo, uint32_t &hi) {
        const uint32_t *w = vw + (min(j, ntiles - 1) * 4 + (lane & 3)) * 24;
        const uint32_t cw = w[8 + 8 * wg + g8];
        lo = w[2 * wq] & cw;
        hi = w[2 * wq + 1] & cw;
    };
    uint32_t vm_lo, vm_hi; // of the current tile: computed one tile ahead, under the P.V product
    vis_bits(0, vm_lo, vm_hi);
    auto step = [&](int j, auto far_tag, auto vis_tag) {
        constexpr bool FT = decltype(far_tag)::value, VIS = decltype(vis_tag)::value;
        const int st = j & 1;
        cp_async_wait<0>();
        fence_proxy_async();
        __syncthreads(); // tile j visible; every warpgroup is done with tile j-1's stage
        // the loads of tile j+1: after S is issued (their token reads and
        // address arithmetic run while S does), or at once when this
        // warpgroup skips the tile
        auto issue_next = [&]() {
            if (j + 1 < ntiles) issue(j + 1, FAR && j + 1 >= ntext);
            cp_async_commit();
        };
        if (a.skip_tiles && !((tneed[j] >> wg) & 1)) { // no query of this warpgroup sees a key of it
            issue_next();
            vis_bits(j + 1, vm_lo, vm_hi);
            return;
        }
        float s[KT / 2];
#pragma unroll
        for (int i = 0; i < KT / 2; i++) reg_fence(s[i]);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++) {
            const uint32_t oq = ((kk >> 2) * BR * 128 + (kk & 3) * 32) >> 4;
            const uint32_t ok = ((kk >> 2) * KT * 128 + (kk & 3) * 32) >> 4;
            wgmma_ss<T, KT>(s, dq + oq, gmma_desc(k_a + st * KVBYTES, 16, 1024) + ok, kk);
        }
        wgmma_commit();
        issue_next();
        __half2 kap[FT ? KT / 8 : 1][2]; // [nt][row lo | hi]: kappa(x') of elements e = 0, 1
        if constexpr (FT) {
            const T *kpt = KPs + st * KT * GLD;
#pragma unroll
            for (int np = 0; np < KT / 16; np++) {
                float x[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
#pragma unroll
                for (int kk = 0; kk < G / 16; kk++) {
                    uint32_t rf[4];
                    const int row = np * 16 + (lane & 7) + 8 * (lane >> 4);
                    ldsm_x4(rf, kpt + row * GLD + kk * 16 + 8 * ((lane >> 3) & 1));
                    mma16816<T>(x, qpf[kk], rf[0], rf[1]);
                    mma16816<T>(x + 4, qpf[kk], rf[2], rf[3]);
                }
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    const int nt = 2 * np + h;
                    float kv[4];
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        const float y = x[4 * h + e];
                        const uint32_t vm = e < 2 ? vm_lo : vm_hi;
                        const float kp = P3 ? fmaf(y, fmaf(y, 0.5f, 1.f), 1.f) : fmaf(y, fmaf(y, fmaf(y, kc3, kc2), kc1), kc0);
                        kv[e] = ((vm >> (2 * nt + (e & 1))) & 1u) ? kp : 0.f;
                    }
                    kap[nt][0] = __floats2half2_rn(kv[0], kv[1]);
                    kap[nt][1] = __floats2half2_rn(kv[2], kv[3]);
                }
            }
        }
        wgmma_wait<0>();
#pragma unroll
        for (int i = 0; i < KT / 2; i++) reg_fence(s[i]);
        float mx_lo = -INFINITY, mx_hi = -INFINITY;
#pragma unroll
        for (int nt = 0; nt < KT / 8; nt++) {
#pragma unroll
            for (int e = 0; e < 2; e++) {
                if constexpr (VIS) {
                    s[4 * nt + e] = ((vm_lo >> (2 * nt + e)) & 1u) ? s[4 * nt + e] : -INFINITY;
                    s[4 * nt + 2 + e] = ((vm_hi >> (2 * nt + e)) & 1u) ? s[4 * nt + 2 + e] : -INFINITY;
                }
            }
            mx_lo = fmaxf(mx_lo, fmaxf(s[4 * nt], s[4 * nt + 1]));
            mx_hi = fmaxf(mx_hi, fmaxf(s[4 * nt + 2], s[4 * nt + 3]));
        }
        mx_lo = fmaxf(mx_lo, __shfl_xor_sync(0xffffffffu, mx_lo, 1));
        mx_lo = fmaxf(mx_lo, __shfl_xor_sync(0xffffffffu, mx_lo, 2));
        mx_hi = fmaxf(mx_hi, __shfl_xor_sync(0xffffffffu, mx_hi, 1));
        mx_hi = fmaxf(mx_hi, __shfl_xor_sync(0xffffffffu, mx_hi, 2));
        // the maximum of the raw scores, then log2 units (the scale is positive): the scale
        // goes into the exponent's FFMA below instead of a multiply per element
        const float mn_lo = fmaxf(m_lo, mx_lo * sl2), mn_hi = fmaxf(m_hi, mx_hi * sl2);
        const float mu_lo = mn_lo == -INFINITY ? 0.f : mn_lo, mu_hi = mn_hi == -INFINITY ? 0.f : mn_hi;
        const float al_lo = ex2(m_lo - mu_lo), al_hi = ex2(m_hi - mu_hi);
        m_lo = mn_lo;
        m_hi = mn_hi;
        float s1_lo = 0.f, s1_hi = 0.f, s2_lo = 0.f, s2_hi = 0.f;
        float em_lo = 0.f, em_hi = 0.f, cw_lo = 0.f, cw_hi = 0.f;
        if constexpr (FT) {
            em_lo = ex2(fminf(-mu_lo, 120.f));
            em_hi = ex2(fminf(-mu_hi, 120.f));
            cw_lo = wfar * em_lo;
            cw_hi = wfar * em_hi;
        }
        uint32_t pf[KT / 16][4];
#pragma unroll
        for (int nt = 0; nt < KT / 8; nt++) {
            float p0 = ex2(fmaf(s[4 * nt], sl2, -mu_lo)), p1 = ex2(fmaf(s[4 * nt + 1], sl2, -mu_lo));
            float p2 = ex2(fmaf(s[4 * nt + 2], sl2, -mu_hi)), p3 = ex2(fmaf(s[4 * nt + 3], sl2, -mu_hi));
            s1_lo += p0 + p1;
            s1_hi += p2 + p3;
            if constexpr (FT) {
                const float2 kl = __half22float2(kap[nt][0]), kh = __half22float2(kap[nt][1]);
                s2_lo += kl.x + kl.y;
                s2_hi += kh.x + kh.y;
                p0 -= cw_lo * kl.x;
                p1 -= cw_lo * kl.y;
                p2 -= cw_hi * kh.x;
                p3 -= cw_hi * kh.y;
            }
            pf[nt / 2][(nt & 1) * 2 + 0] = elem<T>::pack(p0, p1);
            pf[nt / 2][(nt & 1) * 2 + 1] = elem<T>::pack(p2, p3);
        }
        l1_lo = l1_lo * al_lo + s1_lo;
        l1_hi = l1_hi * al_hi + s1_hi;
        if constexpr (FT) {
            l2_lo = l2_lo * al_lo + em_lo * s2_lo;
            l2_hi = l2_hi * al_hi + em_hi * s2_hi;
        } else {
            l2_lo *= al_lo;
            l2_hi *= al_hi;
        }
#pragma unroll
        for (int i = 0; i < D / 8; i++) {
            acc[4 * i] *= al_lo;
            acc[4 * i + 1] *= al_lo;
            acc[4 * i + 2] *= al_hi;
            acc[4 * i + 3] *= al_hi;
        }
#pragma unroll
        for (int i = 0; i < D / 2; i++) reg_fence(acc[i]);
        wgmma_fence();
        const uint64_t dv = gmma_desc(v_a + st * KVBYTES, KT * 128, 1024);
#pragma unroll
        for (int kk = 0; kk < KT / 16; kk++) wgmma_rs_tb<T, D>(acc, pf[kk], dv + ((kk * 16 * 128) >> 4));
        wgmma_commit();
        // while P.V runs: the next tile's visibility
        vis_bits(j + 1, vm_lo, vm_hi);
        wgmma_wait<0>();
#pragma unroll
        for (int i = 0; i < D / 2; i++) reg_fence(acc[i]);
    };

    using yes = std::true_type;
    using no = std::false_type;
    int j = 0;
    // text tiles: whole ones of kept keys need no visibility test
    for (; j < ntext; j++) {
        if (!mb && (j + 1) * KT <= T_) step(j, no{}, no{});
        else step(j, no{}, yes{});
    }
    for (; j < ntiles; j++) step(j, std::integral_constant<bool, FAR>{}, yes{});

#pragma unroll
    for (int o = 1; o <= 2; o <<= 1) {
        l1_lo += __shfl_xor_sync(0xffffffffu, l1_lo, o);
        l1_hi += __shfl_xor_sync(0xffffffffu, l1_hi, o);
        l2_lo += __shfl_xor_sync(0xffffffffu, l2_lo, o);
        l2_hi += __shfl_xor_sync(0xffffffffu, l2_hi, o);
    }
    float fden_lo = 0.f, fden_hi = 0.f, den_lo = l1_lo, den_hi = l1_hi;
    bool drop_lo = false, drop_hi = false;
    if constexpr (FARM == 2) {
        // l1: local sum + w e^{-m} D_far; l2: the window's far terms (e^{-m} units)
        const float mu_lo = m_lo == -INFINITY ? 0.f : m_lo, mu_hi = m_hi == -INFINITY ? 0.f : m_hi;
        const float em_lo = ex2(fminf(-mu_lo, 120.f)), em_hi = ex2(fminf(-mu_hi, 120.f));
        fden_lo = em_lo * dfar_lo - l2_lo;
        fden_hi = em_hi * dfar_hi - l2_hi;
        drop_lo = !(fden_lo > 0.f);
        drop_hi = !(fden_hi > 0.f);
        den_lo = l1_lo - a.w * l2_lo;
        den_hi = l1_hi - a.w * l2_hi;
        fden_lo *= ex2(fminf(mu_lo, 120.f)); // natural units for the stats
        fden_hi *= ex2(fminf(mu_hi, 120.f));
    }
    const float inv_lo = den_lo != 0.f ? 1.f / den_lo : 0.f, inv_hi = den_hi != 0.f ? 1.f / den_hi : 0.f;
    // Output rows through shared memory (the K stage no tile uses any more: the
    // last tile's is ntiles-1 & 1, and nothing was issued after it), then 16-byte
    // stores of whole rows.
    static_assert(sizeof(TO) == sizeof(T) && BR == KT, "the output tile fits a K stage");
    // bad input (flagged by the kernels before this one): write nothing. Read
    // here rather than at the start, where every block waited for the load
    if (a.bad && *a.bad) return;
    unsigned char *Os = Ks + (ntiles & 1) * KVBYTES;
#pragma unroll
    for (int nt = 0; nt < D / 8; nt++) {
        *reinterpret_cast<uint32_t *>(Os + swz(row_lo, nt, BR) + 2 * t2) =
            elem<TO>::pack(acc[4 * nt] * inv_lo, acc[4 * nt + 1] * inv_lo);
        *reinterpret_cast<uint32_t *>(Os + swz(row_hi, nt, BR) + 2 * t2) =
            elem<TO>::pack(acc[4 * nt + 2] * inv_hi, acc[4 * nt + 3] * inv_hi);
    }
    __syncthreads();
    {
        TO *ob = reinterpret_cast<TO *>(a.o) + (size_t)bh * N * D;
        const uint32_t so = swz(r0, cc0, BR);
#pragma unroll
        for (int i = 0; i < BR / RSTEP; i++) {
            const int t = qtok[r0 + i * RSTEP];
            if (t >= 0 && (!a.only || a.only[(size_t)bh * N + t]))
                *reinterpret_cast<uint4 *>(ob + (size_t)t * D + cc0 * 8) =
                    *reinterpret_cast<const uint4 *>(Os + so + i * RSTEP * 128);
        }
    }
    if (FAR && !a.only)
        far_den_warp(s_den, a.flags + (size_t)bh * N, lane, fden_lo, fden_hi, t_lo, t_hi, drop_lo, drop_hi);
    __syncthreads();
    if (FAR && tid == 0 && !a.only) far_den_flush(s_den, a.den);
#endif
}

template <typename T, typename TO, int D, int G, int FARM, bool P3 = false>
int launch(const tkc_hyb_wg_args *a, cudaStream_t st, char *err, size_t errlen) {
    const size_t smem = smem_bytes<D, G>(FARM);
    auto kern = hyb_wg_kernel<T, TO, D, G, FARM, P3>;
    TKC_TRY(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem), err, errlen);
    const int tiles = ((a->gh + 7) / 8) * ((a->gw + 15) / 16);
    kern<<<dim3(tiles, a->B * a->H), NTHR, smem, st>>>(*a);
    TKC_LAUNCHED("hyb_wg_kernel", err, errlen);
    return 0;
}

template <typename T, typename TO>
int launch_t(const tkc_hyb_wg_args *a, cudaStream_t st, char *err, size_t errlen) {
    if (a->farm == 0) {
        if (a->D == 128) return launch<T, TO, 128, 16, 0>(a, st, err, errlen);
        if (a->D == 64) return launch<T, TO, 64, 16, 0>(a, st, err, errlen);
    } else if (a->farm == 2) {
        const bool p3 = a->c0 == 1.f && a->c1 == 1.f && a->c2 == 0.5f && a->c3 == 0.f;
        if (a->D == 128 && a->G == 16 && p3) return launch<T, TO, 128, 16, 2, true>(a, st, err, errlen);
        if (a->D == 64 && a->G == 16 && p3) return launch<T, TO, 64, 16, 2, true>(a, st, err, errlen);
        if (a->D == 128 && a->G == 16) return launch<T, TO, 128, 16, 2>(a, st, err, errlen);
        if (a->D == 128 && a->G == 32) return launch<T, TO, 128, 32, 2>(a, st, err, errlen);
        if (a->D == 64 && a->G == 16) return launch<T, TO, 64, 16, 2>(a, st, err, errlen);
        if (a->D == 64 && a->G == 32) return launch<T, TO, 64, 32, 2>(a, st, err, errlen);
    }
    snprintf(err, errlen, "hybrid wgmma: D %d, global_dim %d, far mode %d not supported", a->D, a->G, a->farm);
    return 3;
}

} // namespace

int tkc_hyb_wg_supported(int D, int G, int farm, int dtype, int out_dtype, int T, int gh, int gw, int r) {
    if (D != 64 && D != 128) return 0;
    if (farm != 0 && !(farm == 2 && (G == 16 || G == 32))) return 0;
    if ((dtype != TK_DTYPE_BF16 && dtype != TK_DTYPE_F16) || out_dtype != dtype) return 0;
    if (gh <= 0 || gw <= 0 || T < 0 || r < 0 || r > 4096) return 0;
    const long long rh = gh < 8 + 2LL * r ? gh : 8 + 2LL * r, rw = gw < 16 + 2LL * r ? gw : 16 + 2LL * r;
    const long long slots = (T + KT - 1LL) / KT * KT + (rh * rw + KT - 1) / KT * KT;
    return slots <= TKC_HYB_WG_LIST_MAX;
}

int tkc_hyb_wg_launch(const tkc_hyb_wg_args *a, cudaStream_t st, char *err, size_t errlen) {
    if (a->dtype == TK_DTYPE_BF16) return launch_t<__nv_bfloat16, __nv_bfloat16>(a, st, err, errlen);
    if (a->dtype == TK_DTYPE_F16) return launch_t<__half, __half>(a, st, err, errlen);
    snprintf(err, errlen, "hybrid wgmma: input must be bf16 or f16");
    return 3;
}

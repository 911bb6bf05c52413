// stats.cu -- the data checks and the sampled statistics of the cuda backend:
//   * the NaN/Inf scan of the inputs (SPEC 6 bad_input): one pass of 16-byte
//     loads over q, k, v (q0, k0), the first offending element of each tensor
//     reduced with atomicMin, one small copy back;
//   * the stats of SPEC 5 with kernels/stats.c's definitions (tkc_stats_run):
//     quality_raw and quality_eff of the sampled query rows, the window mass
//     (hybrid), norms of every q and kept k row (raw and modified), the
//     sampled scaled q.k -- all on the device, one copy back.
//
// The sampled exact rows run on the tensor cores: a block of 4 warps takes one
// (batch, head) and one key split, streams 64-key tiles of K and V through
// shared memory (cp.async, two stages) and keeps up to 16 sampled rows as one
// m16n8k16 A fragment; each warp owns 16 keys of a tile: S = Q K^T (fp32),
// online softmax in the log2 domain, O += P V with P split into a bf16/f16
// high part and the residual (two products: P is carried to ~2^-17, so the
// reference rows are accurate to fp32 accumulation, not to the 2^-9 of one
// 16-bit P). A second softmax stream in the same pass gives the effective
// reference: Taylor -- per sub-head slice, s q~.k~ on the modified slices
// (the slice products are the k-steps of the same S); hybrid -- window keys
// s0 q.k, the others ln w + s_far q^.k^ (normalized), or the window alone and
// the far softmax in a second launch (additive). The far logits of the
// sampled rows (16 per key) are written by the norms pass, which projects
// every q0/k0 row anyway for the modified norms. The window mass is the raw
// stream's mass on window keys. K and V are read once per call; the key
// splits fill one wave of resident blocks and leave (acc, max, sum) per row
// and stream; a finishing kernel merges them and compares each exact row with
// the call's output row (six sums per row and stream). f32 inputs and head
// dims other than 64 and 128 take a scalar fp32 kernel (quality_raw only:
// quality_eff and the window mass are not reported there). Hybrid takes
// rows_hyb2_kernel: the same tiles and records, with the two streams on two
// groups of 4 warps (8 warps, <= 128 registers, 2 blocks per SM).
//
// Norms of every row: hybrid with bf16 rows takes norms_mma_kernel (rows read
// once from global memory into mma fragments, the projection on the tensor
// cores with P split in three bf16 parts, the far logits in fp32); the other
// cases the scalar norms_kernel. By default (TKC_STATS_TAPS=0: not) a hybrid call beside
// which the stats run (backend.cu hybrid_stats_beside) has its projection
// kernel write the same values instead (hybrid.cu project_mma_kernel's TAPS;
// tkc_stats_taps_of, tkc_stats_inputs_prep / _rest).
//
// Distributions (norms of every row, q.k) are summarized on the device by
// exact order statistics (a three-pass radix select, sel2_hist_kernel), so
// only counts, sums and eight order statistics per distribution come back
// with the per-row sums. The first launch (prep_kernel) uploads the sampled
// indices, zeroes the select's state and computes the far rows of the
// sampled queries (more than ROWS_PARAM indices: a copy, two memsets and
// qhat_kernel instead). The variants these kernels replaced, and the
// benchmarking switches that selected them (TKC_STATS_OLD,
// TKC_STATS_ROWS_SLOW, TKC_STATS_SEL_MATCH, TKC_STATS_NORMS,
// TKC_STATS_NORMS_SCALAR), are in git history: commit 4e5501e, the last of
// branch stx (docs/GPU-NOTES.md).
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

// ---- the sampled indices ----------------------------------------------------

// Up to ROWS_PARAM indices go up as a kernel parameter (prep_kernel: one
// launch, no copy engine round trip on an idle device); more take a copy from
// pinned memory.
constexpr int ROWS_PARAM = 960;
struct RowsParam {
    int n;
    int v[ROWS_PARAM];
};

// ---- sampled exact rows -----------------------------------------------------

constexpr int RT_KT = 64; // keys per tile (16 per warp)
constexpr int RT_WARPS = 4;
constexpr int SCALAR_SPLIT = 16;
constexpr int QS_MAX = 16;
constexpr float LOG2E = 1.4426950408889634f;

// What the second (effective) softmax stream of the rows kernel computes.
enum { EFF_NONE = 0, EFF_TAYLOR = 1, EFF_HYBRID = 2 };
// Hybrid effective logits (kernels/stats.c): normalized = window keys s0 q.k,
// the others ln w + far; window = window keys only (additive, first part, and
// w = 0); far = s_far q^.k^ over every kept key (additive, second part).
enum { HYB_NORMALIZED = 0, HYB_WINDOW = 1, HYB_FAR = 2 };

struct RowsArgs {
    const void *q, *k, *v;
    const uint8_t *mask;
    const int *rows; // device [ns]
    int ns, H, Nq, Nk, keys_per_split, recw;
    float scale_log2; // s0 log2(e)
    float *part, *part_e; // [row][bh][split][recw]: raw stream, effective stream
    // Taylor: per-slice softmax of s q~.k~ (s_log2 = s log2(e))
    float s_log2;
    int modify; // 0 none, 1 normalize, 2 power/clip
    float power, clip, eps;
    // hybrid
    int kind;
    float lw2;        // log2(w)
    const float *F;   // [BH][Nk][nsp] far logits s_far q^.k^ (natural units); NULL = no far field
    int nsp;
    int shape2d, radius, text, gw; // the window (kernels/plan.c tki_in_window)
};

// kernels/plan.c tki_in_window on the device (rows_hyb2_kernel), with the
// divisions done once per query row (win_query) and once per key of a tile
// (the key's code: -1 = a key every query's window holds, else grid row << 16
// | column; 1d: the token).
struct win_q {
    bool all;
    int a, b; // 2d: grid row, column; 1d: the token
};
__device__ __forceinline__ win_q win_query(const RowsArgs &a, int i) {
    win_q w;
    w.all = a.radius <= 0 || i < a.text;
    w.a = i, w.b = 0;
    if (a.shape2d && a.gw > 0 && !w.all) w.a = (i - a.text) / a.gw, w.b = (i - a.text) % a.gw;
    return w;
}

template <typename T, int D, int DV, int EFF, int NB> struct RowsSmem {
    static constexpr int LDK = D + 8, LDV = DV + 8; // padded rows: ldmatrix hits distinct banks
    static constexpr size_t elems = (size_t)16 * LDK + 2 * RT_KT * LDK + 2 * RT_KT * LDV;
    // the raw merge keeps a third [4][16] slot, unused (the window mass of this kernel's former
    // hybrid instance): the same bytes, so the same blocks per SM and key splits as before
    static constexpr size_t floats = 2 * RT_KT                                   // bias
                                     + (EFF == EFF_TAYLOR ? 16 * NB + RT_KT * NB : 0) // q~, k~ factors
                                     + 3 * RT_WARPS * 16                           // raw merge
                                     + 2 * NB * RT_WARPS * 16;                     // effective merge
    static constexpr size_t bytes = elems * sizeof(T) + floats * sizeof(float);
};

// d0/d1: one float pair split into a 16-bit high part and the 16-bit residual.
template <typename T>
__device__ __forceinline__ void split_pack(float a, float b, uint32_t &hi, uint32_t &lo) {
    float ha = elem<T>::to_f(elem<T>::from_f(a)), hb = elem<T>::to_f(elem<T>::from_f(b));
    hi = elem<T>::pack(ha, hb);
    lo = elem<T>::pack(a - ha, b - hb);
}

// One online-softmax step of a warp's 16 keys for the 16 rows: x = logits in
// log2 units (-Inf = excluded) in the C layout of S; rescales and adds to the
// accumulator columns [8 nt0, 8 (nt0 + NTN)) with P.V (nt0 a constant once
// the caller's loops are unrolled) (P as a 16-bit high part plus
// residual: two products). WIN: also the mass of the keys whose bit is set in
// wbits (bit nt*4+e), rescaled as l.
// LAZY (rows_hyb2_kernel): the running max m moves only when some row of
// the warp meets a logit above m + LAZY_LOG2 (warp-uniform), so most steps
// skip the rescale of l and the accumulators; p = 2^(x - m) then stays <=
// 2^LAZY_LOG2, and every sum is still relative to the m that is stored (the
// same softmax, other roundings).
constexpr float LAZY_LOG2 = 8.f;

template <typename T, int NTN, int NACC, int LDV, bool WIN, bool LAZY = false>
__device__ __forceinline__ void stream_step(float (&x)[2][4], float &m_lo, float &m_hi, float &l_lo, float &l_hi,
                                            float (&acc)[NACC][4], int nt0, const T *vt, int lane, unsigned wbits,
                                            float &w_lo, float &w_hi) {
    float mx_lo = fmaxf(fmaxf(x[0][0], x[0][1]), fmaxf(x[1][0], x[1][1]));
    float mx_hi = fmaxf(fmaxf(x[0][2], x[0][3]), fmaxf(x[1][2], x[1][3]));
    mx_lo = fmaxf(mx_lo, __shfl_xor_sync(0xffffffffu, mx_lo, 1));
    mx_lo = fmaxf(mx_lo, __shfl_xor_sync(0xffffffffu, mx_lo, 2));
    mx_hi = fmaxf(mx_hi, __shfl_xor_sync(0xffffffffu, mx_hi, 1));
    mx_hi = fmaxf(mx_hi, __shfl_xor_sync(0xffffffffu, mx_hi, 2));
    bool resc = true;
    if (LAZY) resc = __any_sync(0xffffffffu, mx_lo > m_lo + LAZY_LOG2 || mx_hi > m_hi + LAZY_LOG2);
    float mu_lo, mu_hi, al_lo = 1.f, al_hi = 1.f;
    if (resc) {
        float mn_lo = fmaxf(m_lo, mx_lo), mn_hi = fmaxf(m_hi, mx_hi);
        mu_lo = mn_lo == -INFINITY ? 0.f : mn_lo, mu_hi = mn_hi == -INFINITY ? 0.f : mn_hi;
        al_lo = ex2(m_lo - mu_lo), al_hi = ex2(m_hi - mu_hi);
        m_lo = mn_lo;
        m_hi = mn_hi;
    } else { // m stays; m = -Inf here only with every logit of the row -Inf so far (p = 0)
        mu_lo = m_lo == -INFINITY ? 0.f : m_lo, mu_hi = m_hi == -INFINITY ? 0.f : m_hi;
    }
    uint32_t ph[4], pl[4];
    float sum_lo = 0.f, sum_hi = 0.f, ws_lo = 0.f, ws_hi = 0.f;
#pragma unroll
    for (int nt = 0; nt < 2; nt++) {
        float p0 = ex2(x[nt][0] - mu_lo), p1 = ex2(x[nt][1] - mu_lo);
        float p2 = ex2(x[nt][2] - mu_hi), p3 = ex2(x[nt][3] - mu_hi);
        sum_lo += p0 + p1;
        sum_hi += p2 + p3;
        if (WIN) {
            ws_lo += ((wbits >> (nt * 4)) & 1u ? p0 : 0.f) + ((wbits >> (nt * 4 + 1)) & 1u ? p1 : 0.f);
            ws_hi += ((wbits >> (nt * 4 + 2)) & 1u ? p2 : 0.f) + ((wbits >> (nt * 4 + 3)) & 1u ? p3 : 0.f);
        }
        split_pack<T>(p0, p1, ph[nt * 2], pl[nt * 2]);
        split_pack<T>(p2, p3, ph[nt * 2 + 1], pl[nt * 2 + 1]);
    }
    if (resc) {
        l_lo = l_lo * al_lo + sum_lo;
        l_hi = l_hi * al_hi + sum_hi;
        if (WIN) {
            w_lo = w_lo * al_lo + ws_lo;
            w_hi = w_hi * al_hi + ws_hi;
        }
#pragma unroll
        for (int i = nt0; i < nt0 + NTN; i++) {
            acc[i][0] *= al_lo;
            acc[i][1] *= al_lo;
            acc[i][2] *= al_hi;
            acc[i][3] *= al_hi;
        }
    } else {
        l_lo += sum_lo;
        l_hi += sum_hi;
        if (WIN) {
            w_lo += ws_lo;
            w_hi += ws_hi;
        }
    }
    // V fragments loaded one step ahead, and the high products of a step's two
    // column blocks issued before the residual ones (each accumulator still
    // takes high then residual: the same sums), so no mma waits on the load or
    // product just before it
    const T *vl = vt + ((lane & 7) + 8 * ((lane >> 3) & 1)) * LDV + 8 * (lane >> 4);
    uint32_t r[2][4];
    ldsm_x4_t(r[0], vl + (nt0 / 2) * 16);
#pragma unroll
    for (int dp = nt0 / 2; dp < (nt0 + NTN) / 2; dp++) {
        const int cur = (dp - nt0 / 2) & 1;
        if (dp + 1 < (nt0 + NTN) / 2) ldsm_x4_t(r[cur ^ 1], vl + (dp + 1) * 16);
        mma16816<T>(acc[2 * dp], ph, r[cur][0], r[cur][1]);
        mma16816<T>(acc[2 * dp + 1], ph, r[cur][2], r[cur][3]);
        mma16816<T>(acc[2 * dp], pl, r[cur][0], r[cur][1]);
        mma16816<T>(acc[2 * dp + 1], pl, r[cur][2], r[cur][3]);
    }
}

// Merges the four warps' partial softmax of one stream (NBS slices of DV/NBS
// columns each; rows_mma_kernel) and writes a record per row: acc[DV], (M, L)
// per slice in log2 units, zeros (the last slot, the window mass of hybrid
// records, is 0 here).
template <int DV, int NBS>
__device__ __forceinline__ void merge_out(float (&acc)[DV / 8][4], float (&m_lo)[NBS], float (&m_hi)[NBS],
                                          float (&l_lo)[NBS], float (&l_hi)[NBS], float *wacc, float *wm, float *wl,
                                          int gn, float *out, size_t row_stride, int recw) {
    constexpr int NTHR = RT_WARPS * 32;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t4 = lane & 3;
#pragma unroll
    for (int c = 0; c < NBS; c++) {
        l_lo[c] += __shfl_xor_sync(0xffffffffu, l_lo[c], 1);
        l_lo[c] += __shfl_xor_sync(0xffffffffu, l_lo[c], 2);
        l_hi[c] += __shfl_xor_sync(0xffffffffu, l_hi[c], 1);
        l_hi[c] += __shfl_xor_sync(0xffffffffu, l_hi[c], 2);
    }
    __syncthreads(); // the key loop (or the previous stream) is done with wacc's memory
    for (int e = tid; e < 16 * DV; e += NTHR) wacc[e] = 0.f;
    if (t4 == 0) {
#pragma unroll
        for (int c = 0; c < NBS; c++) {
            wm[(c * RT_WARPS + warp) * 16 + g] = m_lo[c], wm[(c * RT_WARPS + warp) * 16 + g + 8] = m_hi[c];
            wl[(c * RT_WARPS + warp) * 16 + g] = l_lo[c], wl[(c * RT_WARPS + warp) * 16 + g + 8] = l_hi[c];
        }
    }
    __syncthreads();
    float f_lo[NBS], f_hi[NBS];
#pragma unroll
    for (int c = 0; c < NBS; c++) {
        float M_lo = -INFINITY, M_hi = -INFINITY;
#pragma unroll
        for (int w = 0; w < RT_WARPS; w++)
            M_lo = fmaxf(M_lo, wm[(c * RT_WARPS + w) * 16 + g]), M_hi = fmaxf(M_hi, wm[(c * RT_WARPS + w) * 16 + g + 8]);
        f_lo[c] = m_lo[c] == -INFINITY ? 0.f : ex2(m_lo[c] - M_lo);
        f_hi[c] = m_hi[c] == -INFINITY ? 0.f : ex2(m_hi[c] - M_hi);
    }
#pragma unroll
    for (int nt = 0; nt < DV / 8; nt++) {
        const int c = (nt * 8) / (DV / NBS), col = nt * 8 + 2 * t4;
        atomicAdd(&wacc[g * DV + col], acc[nt][0] * f_lo[c]);
        atomicAdd(&wacc[g * DV + col + 1], acc[nt][1] * f_lo[c]);
        atomicAdd(&wacc[(g + 8) * DV + col], acc[nt][2] * f_hi[c]);
        atomicAdd(&wacc[(g + 8) * DV + col + 1], acc[nt][3] * f_hi[c]);
    }
    __syncthreads();
    for (int e = tid; e < gn * recw; e += NTHR) {
        const int sr = e / recw, col = e % recw;
        float *pb = out + (size_t)sr * row_stride;
        if (col < DV) {
            pb[col] = wacc[sr * DV + col];
            continue;
        }
        float v = 0.f;
        if (col < DV + 2 * NBS) {
            const int c = (col - DV) / 2;
            float M = -INFINITY;
            for (int w = 0; w < RT_WARPS; w++) M = fmaxf(M, wm[(c * RT_WARPS + w) * 16 + sr]);
            if ((col - DV) % 2 == 0) {
                v = M;
            } else {
                const float *src = wl + c * RT_WARPS * 16;
                for (int w = 0; w < RT_WARPS; w++) {
                    float mw = wm[(c * RT_WARPS + w) * 16 + sr];
                    v += mw == -INFINITY ? 0.f : src[w * 16 + sr] * ex2(mw - M);
                }
            }
        }
        pb[col] = v;
    }
}

// The sampled rows on the tensor cores (exact and Taylor; hybrid takes
// rows_hyb2_kernel). Grid (B*H, key splits), 4 warps; each warp owns 16 keys
// of a 64-key tile. Stream 1 (raw): softmax of s0 q.k over the kept keys.
// Stream 2 (effective, EFF_TAYLOR), in the same pass over K and V: per slice
// c of NB, softmax of s q~_c.k~_c into the slice's value columns. The slices
// of S come from the same mma products as the raw S (a slice is D/NB/16 of
// the k-steps), so stream 2 adds only its softmax and P.V.
template <typename T, int D, int DV, int EFF, int NB>
__global__ void __launch_bounds__(RT_WARPS * 32) rows_mma_kernel(RowsArgs a) {
    static_assert(EFF == EFF_NONE || EFF == EFF_TAYLOR, "hybrid rows: rows_hyb2_kernel");
    using S = RowsSmem<T, D, DV, EFF, NB>;
    constexpr int LDK = S::LDK, LDV = S::LDV, KT = RT_KT, NTHR = RT_WARPS * 32;
    constexpr int CHK = D / 8, CHV = DV / 8;
    constexpr int KPS = D / 16 / NB;     // k-steps per slice
    constexpr int NTS = DV / NB / 8;     // accumulator column blocks per slice
    constexpr int DS = D / NB;           // slice width
    constexpr bool TAY = EFF == EFF_TAYLOR, TWO = EFF != EFF_NONE;
    constexpr int NBE = TAY ? NB : 1;    // slices of stream 2
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T *Qs = reinterpret_cast<T *>(smem_raw);  // [16][LDK]
    T *Ks = Qs + 16 * LDK;                    // [2][KT][LDK]
    T *Vs = Ks + 2 * KT * LDK;                // [2][KT][LDV]
    float *bias = reinterpret_cast<float *>(Vs + 2 * KT * LDV); // [2][KT]
    float *fq = bias + 2 * KT;                                 // [16][NB] (taylor)
    float *fk = fq + (TAY ? 16 * NB : 0);                       // [KT][NB] (taylor)
    float *wm = fk + (TAY ? KT * NB : 0);                       // raw merge [4][16] x3 (one unused: RowsSmem)
    float *wl = wm + RT_WARPS * 16;
    float *wme = wl + 2 * RT_WARPS * 16, *wle = wme + NB * RT_WARPS * 16; // effective merge
    float *wacc = reinterpret_cast<float *>(Ks); // [16][DV], after the key loop

    const T *q = reinterpret_cast<const T *>(a.q), *k = reinterpret_cast<const T *>(a.k);
    const T *v = reinterpret_cast<const T *>(a.v);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t4 = lane & 3;
    const int bh = blockIdx.x, split = blockIdx.y, b = bh / a.H, BH = gridDim.x, nsplit = gridDim.y;
    const int k0 = split * a.keys_per_split, k1 = min(a.Nk, k0 + a.keys_per_split);
    const int ntiles = k1 > k0 ? (k1 - k0 + KT - 1) / KT : 0;
    const T *qb = q + (size_t)bh * a.Nq * D;
    const T *kb = k + (size_t)bh * a.Nk * D;
    const T *vb = v + (size_t)bh * a.Nk * DV;
    const uint8_t *mb = a.mask ? a.mask + (size_t)b * a.Nk : nullptr;
    const size_t row_stride = (size_t)BH * nsplit * a.recw;

    for (int g0 = 0; g0 < a.ns; g0 += QS_MAX) {
        const int gn = min(QS_MAX, a.ns - g0);
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
        __syncthreads(); // the previous group is done with shared memory
        for (int c = tid; c < 16 * CHK; c += NTHR) {
            int r = c / CHK, cc = c % CHK;
            bool ok = r < gn;
            cp_async16(Qs + r * LDK + cc * 8, qb + (size_t)(ok ? a.rows[g0 + r] : 0) * D + cc * 8, ok ? 16 : 0);
        }
        if (ntiles > 0) issue_kv(0);
        cp_async_commit();
        cp_async_wait<0>();
        __syncthreads();
        if (TAY && a.modify)
            for (int p = tid; p < 16 * NB; p += NTHR) {
                int r = p / NB, c = p % NB;
                float ss = 0.f;
                for (int e = 0; e < DS; e++) {
                    float x = elem<T>::to_f(Qs[r * LDK + c * DS + e]);
                    ss += x * x;
                }
                fq[p] = mod_factor(a.modify, a.power, a.clip, a.eps, sqrtf(ss));
            }
        uint32_t qf[D / 16][4];
        {
            int r = (lane & 7) + 8 * ((lane >> 3) & 1);
#pragma unroll
            for (int kk = 0; kk < D / 16; kk++) ldsm_x4(qf[kk], Qs + r * LDK + kk * 16 + 8 * (lane >> 4));
        }
        float acc[DV / 8][4];
        float acce[TWO ? DV / 8 : 1][4];
#pragma unroll
        for (int i = 0; i < DV / 8; i++) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
#pragma unroll
        for (int i = 0; i < (TWO ? DV / 8 : 1); i++) acce[i][0] = acce[i][1] = acce[i][2] = acce[i][3] = 0.f;
        float m_lo[1] = {-INFINITY}, m_hi[1] = {-INFINITY}, l_lo[1] = {0.f}, l_hi[1] = {0.f};
        float me_lo[NBE], me_hi[NBE], le_lo[NBE], le_hi[NBE];
#pragma unroll
        for (int c = 0; c < NBE; c++) me_lo[c] = me_hi[c] = -INFINITY, le_lo[c] = le_hi[c] = 0.f;

        for (int j = 0; j < ntiles; j++) {
            if (j + 1 < ntiles) issue_kv(j + 1);
            cp_async_commit();
            cp_async_wait<1>();
            __syncthreads();
            const T *kt = Ks + (j & 1) * KT * LDK + warp * 16 * LDK;
            const T *vt = Vs + (j & 1) * KT * LDV + warp * 16 * LDV;
            const float *bt = bias + (j & 1) * KT + warp * 16;
            if (TAY && a.modify) {
                const T *kall = Ks + (j & 1) * KT * LDK;
                for (int p = tid; p < KT * NB; p += NTHR) {
                    int r = p / NB, c = p % NB;
                    float ss = 0.f;
                    for (int e = 0; e < DS; e++) {
                        float x = elem<T>::to_f(kall[r * LDK + c * DS + e]);
                        ss += x * x;
                    }
                    fk[p] = mod_factor(a.modify, a.power, a.clip, a.eps, sqrtf(ss));
                }
                __syncthreads();
            }
            float s[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
            float dummy0 = 0.f, dummy1 = 0.f;
            if constexpr (TAY) {
#pragma unroll
                for (int c = 0; c < NB; c++) {
                    float sc[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
                    for (int kk = c * KPS; kk < (c + 1) * KPS; kk++) {
                        uint32_t r[4];
                        ldsm_x4(r, kt + ((lane & 7) + 8 * (lane >> 4)) * LDK + kk * 16 + 8 * ((lane >> 3) & 1));
                        mma16816<T>(sc[0], qf[kk], r[0], r[1]);
                        mma16816<T>(sc[1], qf[kk], r[2], r[3]);
                    }
                    float x[2][4];
#pragma unroll
                    for (int nt = 0; nt < 2; nt++)
#pragma unroll
                        for (int e = 0; e < 4; e++) {
                            const int col = nt * 8 + 2 * t4 + (e & 1), row = e < 2 ? g : g + 8;
                            s[nt][e] += sc[nt][e];
                            float f = a.modify ? fq[row * NB + c] * fk[(warp * 16 + col) * NB + c] : 1.f;
                            x[nt][e] = sc[nt][e] * a.s_log2 * f + bt[col];
                        }
                    stream_step<T, NTS, DV / 8, LDV, false>(x, me_lo[c], me_hi[c], le_lo[c], le_hi[c], acce,
                                                           c * NTS, vt, lane, 0u, dummy0, dummy1);
                }
            } else {
                const T *kl = kt + ((lane & 7) + 8 * (lane >> 4)) * LDK + 8 * ((lane >> 3) & 1);
                uint32_t r[2][4];
                ldsm_x4(r[0], kl);
#pragma unroll
                for (int kk = 0; kk < D / 16; kk++) { // K fragments one step ahead
                    if (kk + 1 < D / 16) ldsm_x4(r[(kk + 1) & 1], kl + (kk + 1) * 16);
                    mma16816<T>(s[0], qf[kk], r[kk & 1][0], r[kk & 1][1]);
                    mma16816<T>(s[1], qf[kk], r[kk & 1][2], r[kk & 1][3]);
                }
            }
            float x[2][4];
#pragma unroll
            for (int nt = 0; nt < 2; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++) x[nt][e] = s[nt][e] * a.scale_log2 + bt[nt * 8 + 2 * t4 + (e & 1)];
            stream_step<T, DV / 8, DV / 8, LDV, false>(x, m_lo[0], m_hi[0], l_lo[0], l_hi[0], acc, 0, vt, lane, 0u,
                                                      dummy0, dummy1);
            __syncthreads();
        }
        const size_t base = (((size_t)g0 * BH + bh) * nsplit + split) * a.recw;
        merge_out<DV, 1>(acc, m_lo, m_hi, l_lo, l_hi, wacc, wm, wl, gn, a.part + base, row_stride, a.recw);
        if constexpr (TWO)
            merge_out<DV, NBE>(acce, me_lo, me_hi, le_lo, le_hi, wacc, wme, wle, gn, a.part_e + base, row_stride,
                               a.recw);
    }
}

// The hybrid rows (EFF_HYBRID): 8 warps, two groups of 4 over the same 64-key
// tiles in shared memory -- group 0 the raw stream (and the window mass),
// group 1 the effective stream (the logits of RowsArgs.kind); each warp
// computes its 16 keys' S itself (the same products in the same order in both
// groups, and as rows_mma_kernel's, so both groups see the same logits and
// window bits), with the Q fragments re-read from shared memory each tile.
// One accumulator per thread instead of two (<= 128 registers): 2 blocks of 8
// warps per SM, 4 warps per scheduler instead of 2 (the former single-group
// form, both streams in 4 warps, issued 0.30 instructions per cycle per
// scheduler, latency-bound at 255 registers). Records as rows_mma_kernel's,
// with the window mass in the raw record's last slot.
constexpr int R2_WARPS = 8;

template <typename T, int D, int DV> struct Rows2Smem {
    static constexpr int LDK = D + 8, LDV = DV + 8;
    static constexpr size_t elems = (size_t)16 * LDK + 2 * RT_KT * LDK + 2 * RT_KT * LDV;
    static constexpr size_t floats = 2 * RT_KT          // bias
                                     + 2 * RT_KT * 20   // far logits tile (rows of 16, padded to 20)
                                     + 2 * RT_KT        // key codes
                                     + 2 * 2 * RT_WARPS * 16 // (m, l) per group
                                     + RT_WARPS * 16;   // window mass (group 0)
    static constexpr size_t bytes = elems * sizeof(T) + floats * sizeof(float);
    static_assert(2 * 16 * DV * sizeof(float) <= 2 * RT_KT * LDK * sizeof(T), "both merge buffers fit in Ks");
};

// merge_out for the two-group kernel: each group merges its own four warps'
// stream (wacc, wm, wl: this group's) into out; the window mass (win: group 0)
// in the record's last slot. Every thread of the block calls it.
template <int DV>
__device__ __forceinline__ void merge2_out(float (&acc)[DV / 8][4], float m_lo, float m_hi, float l_lo, float l_hi,
                                           float w_lo, float w_hi, bool win, int wk, float *wacc, float *wm, float *wl,
                                           float *ww, int gn, float *out, size_t row_stride, int recw) {
    const int gtid = threadIdx.x & 127, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
    l_lo += __shfl_xor_sync(0xffffffffu, l_lo, 1);
    l_lo += __shfl_xor_sync(0xffffffffu, l_lo, 2);
    l_hi += __shfl_xor_sync(0xffffffffu, l_hi, 1);
    l_hi += __shfl_xor_sync(0xffffffffu, l_hi, 2);
    w_lo += __shfl_xor_sync(0xffffffffu, w_lo, 1);
    w_lo += __shfl_xor_sync(0xffffffffu, w_lo, 2);
    w_hi += __shfl_xor_sync(0xffffffffu, w_hi, 1);
    w_hi += __shfl_xor_sync(0xffffffffu, w_hi, 2);
    __syncthreads(); // the key loop is done with the memory of wacc
    for (int e = gtid; e < 16 * DV; e += 128) wacc[e] = 0.f;
    if (t4 == 0) {
        wm[wk * 16 + g] = m_lo, wm[wk * 16 + g + 8] = m_hi;
        wl[wk * 16 + g] = l_lo, wl[wk * 16 + g + 8] = l_hi;
        if (win) ww[wk * 16 + g] = w_lo, ww[wk * 16 + g + 8] = w_hi;
    }
    __syncthreads();
    float M_lo = -INFINITY, M_hi = -INFINITY;
#pragma unroll
    for (int w = 0; w < RT_WARPS; w++) M_lo = fmaxf(M_lo, wm[w * 16 + g]), M_hi = fmaxf(M_hi, wm[w * 16 + g + 8]);
    const float f_lo = m_lo == -INFINITY ? 0.f : ex2(m_lo - M_lo);
    const float f_hi = m_hi == -INFINITY ? 0.f : ex2(m_hi - M_hi);
#pragma unroll
    for (int nt = 0; nt < DV / 8; nt++) {
        const int col = nt * 8 + 2 * t4;
        atomicAdd(&wacc[g * DV + col], acc[nt][0] * f_lo);
        atomicAdd(&wacc[g * DV + col + 1], acc[nt][1] * f_lo);
        atomicAdd(&wacc[(g + 8) * DV + col], acc[nt][2] * f_hi);
        atomicAdd(&wacc[(g + 8) * DV + col + 1], acc[nt][3] * f_hi);
    }
    __syncthreads();
    for (int e = gtid; e < gn * recw; e += 128) {
        const int sr = e / recw, col = e % recw;
        float *pb = out + (size_t)sr * row_stride;
        if (col < DV) {
            pb[col] = wacc[sr * DV + col];
            continue;
        }
        float v = 0.f;
        if (col < DV + 2 || (win && col == recw - 1)) {
            float M = -INFINITY;
            for (int w = 0; w < RT_WARPS; w++) M = fmaxf(M, wm[w * 16 + sr]);
            if (col == DV) {
                v = M;
            } else {
                const float *src = col == recw - 1 ? ww : wl;
                for (int w = 0; w < RT_WARPS; w++) {
                    const float mw = wm[w * 16 + sr];
                    v += mw == -INFINITY ? 0.f : src[w * 16 + sr] * ex2(mw - M);
                }
            }
        }
        pb[col] = v;
    }
}

template <typename T, int D, int DV>
__global__ void __launch_bounds__(R2_WARPS * 32, 2) rows_hyb2_kernel(RowsArgs a) {
    using S = Rows2Smem<T, D, DV>;
    constexpr int LDK = S::LDK, LDV = S::LDV, KT = RT_KT, NTHR = R2_WARPS * 32;
    constexpr int CHK = D / 8, CHV = DV / 8;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T *Qs = reinterpret_cast<T *>(smem_raw);  // [16][LDK]
    T *Ks = Qs + 16 * LDK;                    // [2][KT][LDK]
    T *Vs = Ks + 2 * KT * LDK;                // [2][KT][LDV]
    float *bias = reinterpret_cast<float *>(Vs + 2 * KT * LDV); // [2][KT]
    // far logits [2][KT][FSTR]: rows of 16 padded to 20 floats, so the 8 rows x 4 key columns a
    // warp reads per step fall in distinct banks (a row stride of 16 put 4 lanes on each bank)
    constexpr int FSTR = 20;
    float *Fs = bias + 2 * KT;
    int *kcode = reinterpret_cast<int *>(Fs + 2 * KT * FSTR); // [2][KT]
    float *wm = reinterpret_cast<float *>(kcode + 2 * KT);     // [2 groups][4][16]
    float *wl = wm + 2 * RT_WARPS * 16;                        // [2 groups][4][16]
    float *ww = wl + 2 * RT_WARPS * 16;                        // [4][16]
    float *wacc = reinterpret_cast<float *>(Ks);               // [2 groups][16][DV], after the key loop

    const T *q = reinterpret_cast<const T *>(a.q), *k = reinterpret_cast<const T *>(a.k);
    const T *v = reinterpret_cast<const T *>(a.v);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t4 = lane & 3;
    const int grp = warp >> 2, wk = warp & 3; // stream (0 raw, 1 effective); the warp's 16 keys of a tile
    const int bh = blockIdx.x, split = blockIdx.y, b = bh / a.H, BH = gridDim.x, nsplit = gridDim.y;
    const int k0 = split * a.keys_per_split, k1 = min(a.Nk, k0 + a.keys_per_split);
    const int ntiles = k1 > k0 ? (k1 - k0 + KT - 1) / KT : 0;
    const T *qb = q + (size_t)bh * a.Nq * D;
    const T *kb = k + (size_t)bh * a.Nk * D;
    const T *vb = v + (size_t)bh * a.Nk * DV;
    const uint8_t *mb = a.mask ? a.mask + (size_t)b * a.Nk : nullptr;
    const bool far = a.F != nullptr;
    const size_t row_stride = (size_t)BH * nsplit * a.recw;

    for (int g0 = 0; g0 < a.ns; g0 += QS_MAX) {
        const int gn = min(QS_MAX, a.ns - g0);
        // the loads of tile j: fully unrolled, each thread on fixed 16-byte columns of its rows
        auto issue_kv = [&](int j) {
            const int buf = j & 1, t0 = k0 + j * KT;
            T *kd = Ks + buf * KT * LDK, *vd = Vs + buf * KT * LDV;
            static_assert((KT * CHK) % NTHR == 0 && (KT * CHV) % NTHR == 0 && KT * 4 == NTHR, "tile loads");
#pragma unroll
            for (int i = 0; i < KT * CHK / NTHR; i++) {
                const int r = tid / CHK + i * (NTHR / CHK), cc = tid % CHK, gr = t0 + r;
                const bool ok = gr < k1;
                cp_async16(kd + r * LDK + cc * 8, kb + (size_t)(ok ? gr : 0) * D + cc * 8, ok ? 16 : 0);
            }
#pragma unroll
            for (int i = 0; i < KT * CHV / NTHR; i++) {
                const int r = tid / CHV + i * (NTHR / CHV), cc = tid % CHV, gr = t0 + r;
                const bool ok = gr < k1;
                cp_async16(vd + r * LDV + cc * 8, vb + (size_t)(ok ? gr : 0) * DV + cc * 8, ok ? 16 : 0);
            }
            if (far) {
                const int r = tid / 4, cc = tid % 4, gr = t0 + r;
                const bool ok = gr < k1;
                cp_async16(Fs + (buf * KT + r) * FSTR + cc * 4,
                           a.F + ((size_t)bh * a.Nk + (ok ? gr : 0)) * a.nsp + g0 + cc * 4, ok ? 16 : 0);
            }
            if (tid < KT) {
                const int gr = t0 + tid;
                bias[buf * KT + tid] = (gr < k1 && (!mb || mb[gr])) ? 0.f : -INFINITY;
                // the key's window code (one division)
                int code = gr;
                if (a.shape2d) {
                    if (gr < a.text || a.gw <= 0) {
                        code = -1;
                    } else {
                        const int t = gr - a.text, row = t / a.gw;
                        code = row << 16 | (t - row * a.gw);
                    }
                }
                kcode[buf * KT + tid] = code;
            }
        };
        __syncthreads(); // the previous group is done with shared memory
        for (int c = tid; c < 16 * CHK; c += NTHR) {
            int r = c / CHK, cc = c % CHK;
            bool ok = r < gn;
            cp_async16(Qs + r * LDK + cc * 8, qb + (size_t)(ok ? a.rows[g0 + r] : 0) * D + cc * 8, ok ? 16 : 0);
        }
        if (ntiles > 0) issue_kv(0);
        cp_async_commit();
        cp_async_wait<0>();
        __syncthreads();
        const win_q wq_lo = win_query(a, g < gn ? a.rows[g0 + g] : 0);
        const win_q wq_hi = win_query(a, g + 8 < gn ? a.rows[g0 + g + 8] : 0);
        float acc[DV / 8][4];
#pragma unroll
        for (int i = 0; i < DV / 8; i++) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
        float m_lo = -INFINITY, m_hi = -INFINITY, l_lo = 0.f, l_hi = 0.f, w_lo = 0.f, w_hi = 0.f;
        const T *ql = Qs + ((lane & 7) + 8 * ((lane >> 3) & 1)) * LDK + 8 * (lane >> 4);

        for (int j = 0; j < ntiles; j++) {
            if (j + 1 < ntiles) issue_kv(j + 1);
            cp_async_commit();
            cp_async_wait<1>();
            __syncthreads();
            const T *kt = Ks + (j & 1) * KT * LDK + wk * 16 * LDK;
            const T *vt = Vs + (j & 1) * KT * LDV + wk * 16 * LDV;
            const float *bt = bias + (j & 1) * KT + wk * 16;
            float s[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
            {
                const T *kl = kt + ((lane & 7) + 8 * (lane >> 4)) * LDK + 8 * ((lane >> 3) & 1);
                uint32_t r[2][4], qf[2][4];
                ldsm_x4(qf[0], ql);
                ldsm_x4(r[0], kl);
#pragma unroll
                for (int kk = 0; kk < D / 16; kk++) { // Q and K fragments one step ahead
                    if (kk + 1 < D / 16) {
                        ldsm_x4(qf[(kk + 1) & 1], ql + (kk + 1) * 16);
                        ldsm_x4(r[(kk + 1) & 1], kl + (kk + 1) * 16);
                    }
                    mma16816<T>(s[0], qf[kk & 1], r[kk & 1][0], r[kk & 1][1]);
                    mma16816<T>(s[1], qf[kk & 1], r[kk & 1][2], r[kk & 1][3]);
                }
            }
            float x[2][4];
            unsigned wbits = 0;
            const int *kc = kcode + (j & 1) * KT + wk * 16;
#pragma unroll
            for (int nt = 0; nt < 2; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++) x[nt][e] = s[nt][e] * a.scale_log2 + bt[nt * 8 + 2 * t4 + (e & 1)];
            // the window test without branches: |d| <= radius as (unsigned)(d + radius) <= 2 radius
            const unsigned r2 = 2u * (unsigned)a.radius;
            if (a.shape2d) {
#pragma unroll
                for (int nt = 0; nt < 2; nt++)
#pragma unroll
                    for (int c2 = 0; c2 < 2; c2++) {
                        const int code = kc[nt * 8 + 2 * t4 + c2];
                        const int kr = code >> 16, kcl = code & 0xffff;
#pragma unroll
                        for (int h = 0; h < 2; h++) {
                            const win_q &wq = h ? wq_hi : wq_lo;
                            const bool in = wq.all || code < 0 ||
                                            ((unsigned)(wq.a - kr + a.radius) <= r2 &&
                                             (unsigned)(wq.b - kcl + a.radius) <= r2);
                            wbits |= (unsigned)in << (nt * 4 + 2 * h + c2);
                        }
                    }
            } else {
#pragma unroll
                for (int nt = 0; nt < 2; nt++)
#pragma unroll
                    for (int c2 = 0; c2 < 2; c2++) {
                        const int code = kc[nt * 8 + 2 * t4 + c2];
#pragma unroll
                        for (int h = 0; h < 2; h++) {
                            const win_q &wq = h ? wq_hi : wq_lo;
                            const bool in = wq.all || (unsigned)(wq.a - code + a.radius) <= r2;
                            wbits |= (unsigned)in << (nt * 4 + 2 * h + c2);
                        }
                    }
            }
            if (grp == 0) {
                stream_step<T, DV / 8, DV / 8, LDV, true, true>(x, m_lo, m_hi, l_lo, l_hi, acc, 0, vt, lane, wbits,
                                                               w_lo, w_hi);
            } else {
                const float *ft = Fs + ((j & 1) * KT + wk * 16) * FSTR;
                float fl[2][4];
                if (far) {
#pragma unroll
                    for (int nt = 0; nt < 2; nt++)
#pragma unroll
                        for (int e = 0; e < 4; e++) {
                            const int col = nt * 8 + 2 * t4 + (e & 1), row = e < 2 ? g : g + 8;
                            fl[nt][e] = ft[col * FSTR + row] * LOG2E + bt[col];
                        }
                } else {
#pragma unroll
                    for (int nt = 0; nt < 2; nt++)
#pragma unroll
                        for (int e = 0; e < 4; e++) fl[nt][e] = -INFINITY;
                }
                const bool kfar = a.kind == HYB_FAR, knorm = a.kind == HYB_NORMALIZED;
                float y[2][4];
#pragma unroll
                for (int nt = 0; nt < 2; nt++)
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        const bool inw = (wbits >> (nt * 4 + e)) & 1u;
                        y[nt][e] = kfar ? fl[nt][e] : inw ? x[nt][e] : knorm ? fl[nt][e] + a.lw2 : -INFINITY;
                    }
                float d0 = 0.f, d1 = 0.f;
                stream_step<T, DV / 8, DV / 8, LDV, false, true>(y, m_lo, m_hi, l_lo, l_hi, acc, 0, vt, lane, 0u, d0,
                                                                d1);
            }
            __syncthreads();
        }
        const size_t base = (((size_t)g0 * BH + bh) * nsplit + split) * a.recw;
        merge2_out<DV>(acc, m_lo, m_hi, l_lo, l_hi, w_lo, w_hi, grp == 0, wk, wacc + grp * 16 * DV,
                       wm + grp * RT_WARPS * 16, wl + grp * RT_WARPS * 16, ww, gn, (grp ? a.part_e : a.part) + base,
                       row_stride, a.recw);
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
                       int ns, int H, int Nq, int Nk, int D, int Dv, float scale, float *part, int recw) {
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
        for (int e = tid; e < gn * recw; e += 256) {
            int sr = e / recw, c = e % recw;
            float *pb = part + ((((size_t)(g0 + sr)) * gridDim.x + bh) * gridDim.y + ks) * recw;
            if (c < Dv) {
                pb[c] = wacc[sr][c];
                continue;
            }
            if (c > Dv + 1) { // the record's other slots (no window mass here)
                pb[c] = 0.f;
                continue;
            }
            float M = -INFINITY, L = 0.f;
            for (int w = 0; w < 8; w++) M = fmaxf(M, wm[w][sr]);
            for (int w = 0; w < 8; w++) L += wm[w][sr] == -INFINITY ? 0.f : wl[w][sr] * expf(wm[w][sr] - M);
            pb[c] = c == Dv ? M * LOG2E : L; // records keep M in log2 units
        }
    }
}

// ---- finishing the rows ----------------------------------------------------

// Per sampled (row, head): raw sums [0..6), effective sums [6..12) (each: sum
// (o-e)^2, sum e^2, sum o^2, sum o.e, sum |o-e|, max |o-e| with NaN kept),
// window mass [12].
constexpr int QREC = 13;

struct FinishArgs {
    const float *part, *part_e, *part_e2; // raw, effective, additive far stream
    int nsplit, Dv, recw, nbe;            // nbe: slices of the effective stream
    int eff;                              // 0 none, 1 part_e, 2 part_e + w part_e2
    float w;
    const void *o;
    const int *rows;
    int Nq;
    double *st; // [row][QREC]
};

// The softmax-merged exact value of column c (slice sl) of one stream's
// records for one (row, head).
__device__ __forceinline__ float merged(const float *pb, int nsplit, int recw, int Dv, int c, int sl) {
    float M = -INFINITY;
    for (int s = 0; s < nsplit; s++) M = fmaxf(M, pb[s * recw + Dv + 2 * sl]);
    float L = 0.f, A = 0.f;
    for (int s = 0; s < nsplit; s++) {
        float m = pb[s * recw + Dv + 2 * sl];
        float f = m == -INFINITY ? 0.f : exp2f(m - M);
        L += pb[s * recw + Dv + 2 * sl + 1] * f;
        A += pb[s * recw + c] * f;
    }
    return L > 0.f ? A / L : 0.f;
}

__device__ __forceinline__ void add_cmp(double *v, double a, double e) {
    double d = a - e, ad = fabs(d);
    v[0] += d * d, v[1] += e * e, v[2] += a * a, v[3] += a * e, v[4] += ad;
    if (ad > v[5] || isnan(ad)) v[5] = ad;
}

template <typename T>
__global__ void __launch_bounds__(128) rows_finish_kernel(FinishArgs f) {
    __shared__ double red[4][12];
    const int smp = blockIdx.x, bh = blockIdx.y, BH = gridDim.y, tid = threadIdx.x;
    const size_t roff = ((size_t)smp * BH + bh) * f.nsplit * f.recw;
    const T *o = reinterpret_cast<const T *>(f.o);
    double v[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    for (int c = tid; c < f.Dv; c += blockDim.x) {
        double a = elem<T>::to_f(o[((size_t)bh * f.Nq + f.rows[smp]) * f.Dv + c]);
        add_cmp(v, a, merged(f.part + roff, f.nsplit, f.recw, f.Dv, c, 0));
        if (f.eff) {
            double e = merged(f.part_e + roff, f.nsplit, f.recw, f.Dv, c, c / (f.Dv / f.nbe));
            if (f.eff == 2) e += (double)f.w * merged(f.part_e2 + roff, f.nsplit, f.recw, f.Dv, c, 0);
            add_cmp(v + 6, a, e);
        }
    }
    const int lane = tid & 31, warp = tid >> 5;
#pragma unroll
    for (int k = 0; k < 12; k++)
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) {
            double u = __shfl_xor_sync(0xffffffffu, v[k], off);
            if (k % 6 < 5) v[k] += u;
            else if (u > v[k] || isnan(u)) v[k] = u;
        }
    if (lane == 0)
#pragma unroll
        for (int k = 0; k < 12; k++) red[warp][k] = v[k];
    __syncthreads();
    double *out = f.st + ((size_t)smp * BH + bh) * QREC;
    if (tid < 12) {
        double r = red[0][tid];
        for (int w = 1; w < (int)(blockDim.x / 32); w++) {
            double u = red[w][tid];
            if (tid % 6 < 5) r += u;
            else if (u > r || isnan(u)) r = u;
        }
        out[tid] = r;
    }
    if (tid == 12) { // window mass: share of the raw softmax mass on window keys (0/0 = NaN, as stats.c)
        const float *pb = f.part + roff;
        float M = -INFINITY;
        for (int s = 0; s < f.nsplit; s++) M = fmaxf(M, pb[s * f.recw + f.Dv]);
        double L = 0, W = 0;
        for (int s = 0; s < f.nsplit; s++) {
            float m = pb[s * f.recw + f.Dv];
            double fc = m == -INFINITY ? 0.0 : (double)exp2f(m - M);
            L += pb[s * f.recw + f.Dv + 1] * fc;
            W += pb[s * f.recw + f.recw - 1] * fc;
        }
        out[12] = W / L;
    }
}

// ---- norms, far-field rows, q.k sample ---------------------------------------

// SKIP_BITS (common.cuh): a masked key left out of a distribution.

struct NormArgs {
    const void *x, *x0; // rows of the raw norm; rows of the modified norm (taylor: x; hybrid: q0 or k0)
    int N, D, H;
    const uint8_t *mask; // [B][N] for key rows, NULL = every row kept
    float *raw, *mod;    // [BH*N]; mod NULL = not computed here
    int kind;            // 0 raw only, 1 taylor slices, 2 hybrid far vectors
    int blocks;
    int modify;
    float power, clip, eps;
    const float *P;      // [BH][D][G]
    const float *qhat;   // [BH][nsp][G]: s_far q^ of the sampled queries (hybrid key rows)
    int nsp;
    float *F;            // [BH][N][nsp]: s_far q^_r . k^_j; NULL = none
};

// Grid (row blocks, BH), 128 threads: RB rows staged in shared memory as
// fp32 (16-byte loads), TPR threads per row. Raw norm; Taylor: the norm of
// the concatenated modified slices; hybrid (G > 0): y = P^T x0, the norm of
// mod(y), and the far logits F of the sampled queries. Masked key rows get
// SKIP_BITS.
template <typename T, int G>
__global__ void __launch_bounds__(128) norms_kernel(NormArgs a) {
    extern __shared__ float nsm[];
    const int D = a.D, LD = D + 1, RB = D <= 128 ? 64 : 32, TPR = 128 / RB;
    float *Xs = nsm;                       // [RB][LD]
    float *Ps = Xs + RB * LD;              // [D][G]
    float *Ys = Ps + D * G;                // [RB][G]
    float *Qh = Ys + RB * G;               // [nsp][G]
    const int bh = blockIdx.y, n0 = blockIdx.x * RB, tid = threadIdx.x;
    const int r = tid / TPR, t = tid % TPR, n = n0 + r, rows = min(RB, a.N - n0);
    const bool kept = n < a.N && !(a.mask && !a.mask[(size_t)(bh / a.H) * a.N + n]);
    auto stage = [&](const void *src) {
        const T *x = reinterpret_cast<const T *>(src) + ((size_t)bh * a.N + n0) * D;
        // 4-byte words, consecutive lanes on consecutive words: the fp32 stores
        // into rows of D+1 floats then hit distinct banks (16-byte loads put 8
        // consecutive floats per lane and serialize the stores 8 ways)
        constexpr int PER = 4 / sizeof(T);
        if (D % PER == 0 && ((uintptr_t)x & 3) == 0) {
            const uint32_t *xv = reinterpret_cast<const uint32_t *>(x);
            for (int e = tid; e < rows * D / PER; e += 128) {
                uint32_t u = __ldcs(xv + e);
                const T *h = reinterpret_cast<const T *>(&u);
                int base = e * PER, rr = base / D, cc = base % D;
#pragma unroll
                for (int i = 0; i < PER; i++) Xs[rr * LD + cc + i] = elem<T>::to_f(h[i]);
            }
        } else {
            for (int e = tid; e < rows * D; e += 128) Xs[(e / D) * LD + e % D] = elem<T>::to_f(x[e]);
        }
    };
    if (G > 0) {
        for (int i = tid; i < D * G; i += 128) Ps[i] = a.P[(size_t)bh * D * G + i];
        if (a.F)
            for (int i = tid; i < a.nsp * G; i += 128) Qh[i] = a.qhat[(size_t)bh * a.nsp * G + i];
    }
    stage(a.x);
    __syncthreads();
    float ss = 0.f, sm = 0.f;
    for (int i = t; i < D; i += TPR) ss += Xs[r * LD + i] * Xs[r * LD + i];
    if (a.kind == 1) {
        const int ds = D / a.blocks;
        for (int c = t; c < a.blocks; c += TPR) {
            float s2 = 0.f;
            for (int i = 0; i < ds; i++) s2 += Xs[r * LD + c * ds + i] * Xs[r * LD + c * ds + i];
            float f = mod_factor(a.modify, a.power, a.clip, a.eps, sqrtf(s2));
            sm += f * f * s2;
        }
    }
    for (int off = 1; off < TPR; off <<= 1) {
        ss += __shfl_xor_sync(0xffffffffu, ss, off);
        sm += __shfl_xor_sync(0xffffffffu, sm, off);
    }
    if (t == 0 && n < a.N) {
        a.raw[(size_t)bh * a.N + n] = kept ? sqrtf(ss) : __uint_as_float(SKIP_BITS);
        if (a.kind == 1) a.mod[(size_t)bh * a.N + n] = kept ? sqrtf(sm) : __uint_as_float(SKIP_BITS);
    }
    if (G > 0 && a.kind == 2) {
        constexpr int GT = G > 0 ? G / 2 : 1; // hybrid: D <= 128, so TPR = 2
        if (a.x0 != a.x) {
            __syncthreads();
            stage(a.x0);
            __syncthreads();
        }
        float y[GT];
#pragma unroll
        for (int j = 0; j < GT; j++) y[j] = 0.f;
        for (int i = 0; i < D; i++) {
            float xi = Xs[r * LD + i];
#pragma unroll
            for (int j = 0; j < GT; j++) y[j] += xi * Ps[i * G + t * GT + j];
        }
        float s2 = 0.f;
#pragma unroll
        for (int j = 0; j < GT; j++) s2 += y[j] * y[j];
        s2 += __shfl_xor_sync(0xffffffffu, s2, 1);
        float nrm = sqrtf(s2), f = mod_factor(a.modify, a.power, a.clip, a.eps, nrm);
        if (t == 0 && n < a.N) a.mod[(size_t)bh * a.N + n] = kept ? f * nrm : __uint_as_float(SKIP_BITS);
        if (a.F) {
#pragma unroll
            for (int j = 0; j < GT; j++) Ys[r * G + t * GT + j] = f * y[j];
            __syncthreads();
            const int per = a.nsp / 2;
            for (int rr = t * per; rr < (t + 1) * per; rr++) {
                float d = 0.f;
#pragma unroll
                for (int c = 0; c < G; c++) d += Ys[r * G + c] * Qh[rr * G + c];
                if (n < a.N) a.F[((size_t)bh * a.N + n) * a.nsp + rr] = d;
            }
        }
    }
}

// The hybrid norms of bf16 rows on the tensor cores (kind 2, D 64 or 128, G 16
// or 32): one warp per 16 rows, read straight from global memory into A
// fragments (16-byte loads; the k order inside a k-step is permuted, the same
// permutation on P's B fragments), y = P^T x0 as three products with P split
// into bf16 high, middle and low parts (P is carried to ~2^-27, so y is as
// accurate as the fp32 loop of norms_kernel), raw norms in fp32 from the same
// registers, and the far logits F of the sampled queries in fp32 (per quad:
// partial dots over the quad's columns, then a reduce-scatter so each lane
// stores four of them). Grid (blocks per head, BH, sides), 128 threads.
struct NormPair {
    NormArgs s[2];
};
constexpr int NM_WARPS = 4;

__device__ __forceinline__ uint32_t u4_word(const uint4 &u, int i) { return i == 0 ? u.x : i == 1 ? u.y : i == 2 ? u.z : u.w; }

// Each warp loads its next group's rows before computing the current one (32
// or 64 more registers); the three parts of P accumulate in three chains of
// mma (not one chain of 3 x D/16), added hi + mid + lo at the end; the far
// logits load each query's q^ once for both rows of a lane.
template <int D, int G, bool SAME>
__global__ void __launch_bounds__(NM_WARPS * 32) norms_mma_kernel(NormPair np) {
    constexpr int KK = D / 16, NT = G / 8, PD = D / 32; // k-steps, n-tiles, 16-byte words per lane and row
    extern __shared__ __align__(16) unsigned char nm_raw[];
    uint2 *Bf = reinterpret_cast<uint2 *>(nm_raw);                  // [KK][NT][3][32]
    float *Qh = reinterpret_cast<float *>(Bf + KK * NT * 3 * 32);    // [nsp][G]
    const NormArgs a = blockIdx.z ? np.s[1] : np.s[0];
    const int bh = blockIdx.y, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t4 = lane & 3;
    const float *Pb = a.P + (size_t)bh * D * G;
    for (int e = tid; e < KK * NT * 32; e += NM_WARPS * 32) {
        const int l = e & 31, nt = (e >> 5) % NT, kk = (e >> 5) / NT;
        const int n = nt * 8 + (l >> 2), d0 = 32 * (kk >> 1) + 8 * (l & 3) + 4 * (kk & 1);
        float v[4];
#pragma unroll
        for (int i = 0; i < 4; i++) v[i] = Pb[(size_t)(d0 + i) * G + n];
        uint32_t w[3][2];
#pragma unroll
        for (int t = 0; t < 3; t++) {
            float p[4];
#pragma unroll
            for (int i = 0; i < 4; i++) {
                p[i] = __bfloat162float(__float2bfloat16(v[i]));
                v[i] -= p[i];
            }
            w[t][0] = elem<__nv_bfloat16>::pack(p[0], p[1]);
            w[t][1] = elem<__nv_bfloat16>::pack(p[2], p[3]);
        }
#pragma unroll
        for (int t = 0; t < 3; t++) Bf[((kk * NT + nt) * 3 + t) * 32 + l] = make_uint2(w[t][0], w[t][1]);
    }
    if (a.F)
        for (int i = tid; i < a.nsp * G; i += NM_WARPS * 32) Qh[i] = a.qhat[(size_t)bh * a.nsp * G + i];
    __syncthreads();
    const int N = a.N, ngroups = (N + 15) / 16;
    const uint4 *xb = reinterpret_cast<const uint4 *>(a.x) + (size_t)bh * N * (D / 8);
    const uint4 *x0b = reinterpret_cast<const uint4 *>(a.x0) + (size_t)bh * N * (D / 8);
    const uint8_t *mb = a.mask ? a.mask + (size_t)(bh / a.H) * N : nullptr;
    auto load = [&](int gg, uint4 (&dx)[2][PD], uint4 (&d0)[2][PD]) {
#pragma unroll
        for (int h = 0; h < 2; h++)
#pragma unroll
            for (int p = 0; p < PD; p++) {
                const int rr = gg * 16 + g + 8 * h;
                const bool ok = rr < N;
                dx[h][p] = ok ? __ldcs(xb + (size_t)rr * (D / 8) + 4 * p + t4) : make_uint4(0, 0, 0, 0);
                if (!SAME) d0[h][p] = ok ? __ldcs(x0b + (size_t)rr * (D / 8) + 4 * p + t4) : make_uint4(0, 0, 0, 0);
            }
    };
    const int gstep = gridDim.x * NM_WARPS;
    uint4 nx[2][PD], n0[2][PD];
    if (blockIdx.x * NM_WARPS + warp < ngroups) load(blockIdx.x * NM_WARPS + warp, nx, n0);
    for (int gi = blockIdx.x * NM_WARPS + warp; gi < ngroups; gi += gstep) {
        int r[2] = {gi * 16 + g, gi * 16 + g + 8};
        uint4 ux[2][PD], u0[2][PD];
#pragma unroll
        for (int h = 0; h < 2; h++)
#pragma unroll
            for (int p = 0; p < PD; p++) {
                ux[h][p] = nx[h][p];
                if (!SAME) u0[h][p] = n0[h][p];
            }
        if (gi + gstep < ngroups) load(gi + gstep, nx, n0);
        float ap[3][NT][4]; // one accumulator per part of P
#pragma unroll
        for (int t = 0; t < 3; t++)
#pragma unroll
            for (int nt = 0; nt < NT; nt++) ap[t][nt][0] = ap[t][nt][1] = ap[t][nt][2] = ap[t][nt][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < KK; kk++) {
            const int p = kk >> 1, hw = 2 * (kk & 1);
            const uint4 &w0 = SAME ? ux[0][p] : u0[0][p], &w1 = SAME ? ux[1][p] : u0[1][p];
            const uint32_t af[4] = {u4_word(w0, hw), u4_word(w1, hw), u4_word(w0, hw + 1), u4_word(w1, hw + 1)};
#pragma unroll
            for (int t = 0; t < 3; t++)
#pragma unroll
                for (int nt = 0; nt < NT; nt++) {
                    const uint2 b = Bf[((kk * NT + nt) * 3 + t) * 32 + lane];
                    mma16816<__nv_bfloat16>(ap[t][nt], af, b.x, b.y);
                }
        }
        float acc[NT][4]; // y = P^T x0: hi + mid + lo
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[nt][e] = (ap[0][nt][e] + ap[1][nt][e]) + ap[2][nt][e];
        float ss[2] = {0.f, 0.f}, f[2];
#pragma unroll
        for (int h = 0; h < 2; h++)
#pragma unroll
            for (int p = 0; p < PD; p++) ss[h] += bf16_sq_sum(ux[h][p]);
        store_row_norms<NT>(acc, ss, t4, r, N, mb, a.modify, a.power, a.clip, a.eps, a.raw + (size_t)bh * N,
                            a.mod + (size_t)bh * N, f);
        if (a.F) store_far_logits<NT, G, false>(acc, f, Qh, a.nsp, t4, r, N, a.F + (size_t)bh * N * a.nsp);
    }
}

// s_far q^ = s_far mod(P^T q0) of the sampled queries, [BH][nsp][g] (rows past ns: 0). Grid BH;
// P and 16 rows at a time staged in shared memory (D <= 128, g <= 32, nsp <= 64: the far field's
// limits, plan_eff).
// The body of one head's block (bh); row_of(r) is the r-th sampled query row.
template <typename T, typename RowOf>
__device__ __forceinline__ void qhat_head(int bh, const T *q0, RowOf row_of, int ns, int nsp, int N, int D, int g,
                                          const float *P, int modify, float power, float clip, float eps,
                                          float s_far, float *qhat) {
    __shared__ float ys[64 * 32];
    __shared__ float ps[128 * 32];
    __shared__ float xs[16 * 128];
    const int tid = threadIdx.x;
    for (int i = tid; i < D * g; i += blockDim.x) ps[i] = P[(size_t)bh * D * g + i];
    for (int r0 = 0; r0 < nsp; r0 += 16) {
        __syncthreads(); // ps staged; the previous rows consumed
        for (int e = tid; e < 16 * D; e += blockDim.x) {
            const int r = r0 + e / D, i = e % D;
            xs[e] = r < ns ? elem<T>::to_f(q0[((size_t)bh * N + row_of(r)) * D + i]) : 0.f;
        }
        __syncthreads();
        for (int p = tid; p < 16 * g; p += blockDim.x) {
            const int r = p / g, c = p % g;
            float y = 0.f;
            for (int i = 0; i < D; i++) y += xs[r * D + i] * ps[i * g + c];
            ys[(r0 + r) * g + c] = y;
        }
    }
    __syncthreads();
    for (int p = threadIdx.x; p < nsp * g; p += blockDim.x) {
        int r = p / g;
        float s2 = 0.f;
        for (int c = 0; c < g; c++) s2 += ys[r * g + c] * ys[r * g + c];
        float f = mod_factor(modify, power, clip, eps, sqrtf(s2));
        qhat[(size_t)bh * nsp * g + p] = r < ns ? s_far * f * ys[p] : 0.f;
    }
}

template <typename T>
__global__ void __launch_bounds__(256) qhat_kernel(const T *q0, const int *rows, int ns, int nsp, int N, int D,
                                                   int g, const float *P, int modify, float power, float clip,
                                                   float eps, float s_far, float *qhat) {
    qhat_head<T>(blockIdx.x, q0, [&](int r) { return rows[r]; }, ns, nsp, N, D, g, P, modify, power, clip, eps,
                 s_far, qhat);
}

// s0 q_a.k_c for the sampled (a, c) pairs of every head, [BH][nq][nk]; masked keys SKIP_BITS.
// Grid (BH, ceil(nq/8)), 64 threads: 8 q rows in shared memory, a key per thread.
template <typename T>
__global__ void __launch_bounds__(64) qk_kernel(const T *q, const T *k, const uint8_t *mask, const int *qi, int nq,
                                                const int *kj, int nk, int H, int Nq, int Nk, int D, float s0,
                                                float *out) {
    __shared__ float qs[8][256];
    const int bh = blockIdx.x, a0 = blockIdx.y * 8, na = min(8, nq - a0), tid = threadIdx.x;
    for (int e = tid; e < 8 * D; e += 64)
        qs[e / D][e % D] = e / D < na ? elem<T>::to_f(q[((size_t)bh * Nq + qi[a0 + e / D]) * D + e % D]) : 0.f;
    __syncthreads();
    for (int c = tid; c < nk; c += 64) {
        const int j = kj[c];
        const bool skip = mask && !mask[(size_t)(bh / H) * Nk + j];
        float d[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
        const T *kr = k + ((size_t)bh * Nk + j) * D;
        for (int e = 0; e < D; e++) {
            float kv = elem<T>::to_f(kr[e]);
#pragma unroll
            for (int aa = 0; aa < 8; aa++) d[aa] += qs[aa][e] * kv;
        }
        for (int aa = 0; aa < na; aa++)
            out[((size_t)bh * nq + a0 + aa) * nk + c] = skip ? __uint_as_float(SKIP_BITS) : s0 * d[aa];
    }
}

// ---- exact order statistics on the device (radix select) -------------------
//
// For each of up to SEL_ARR float arrays: count and sum of the values (SKIP
// left out), and the values of rank 0, n-1 and the floor/ceil ranks of p50,
// p90, p99 at position p(n-1) (kernels/stats.c percentile_of). Keys are the
// order-preserving uint32 image of the floats (any NaN = 0xffffffff: NaN
// orders above +Inf, as stats.c). Three passes of 11, 11, 10 bits: a
// histogram of the digit among the values that share a target's prefix, then
// a scan that fixes the target's next digit. Targets with the same prefix
// share a histogram (at most one histogram bin per value and pass); each
// block counts into shared-memory histograms and flushes them once
// (sel2_hist_kernel). The last block of each array to finish a pass (a ticket
// counter) does the scan, so a pass is one launch.

constexpr int SEL_ARR = 5, SEL_T = 8, SEL_BINS = 2048;

struct sel_state {
    unsigned long long n[SEL_ARR];
    double sum[SEL_ARR];
    float val[SEL_ARR][SEL_T];
    // working state
    unsigned prefix[SEL_ARR][SEL_T];
    unsigned long long rank[SEL_ARR][SEL_T];
    int owner[SEL_ARR][SEL_T];
    unsigned kmax[SEL_ARR], kmin_inv[SEL_ARR]; // sel2: the largest key and ~(the smallest), from pass 0
};

struct SelArgs {
    const float *x[SEL_ARR];
    long long len[SEL_ARR];
    sel_state *st;
    unsigned *hist; // [3][SEL_ARR][SEL_T][SEL_BINS], then the ticket counters [3][SEL_ARR]
};
constexpr size_t SEL_HIST_WORDS = (size_t)3 * SEL_ARR * SEL_T * SEL_BINS + 3 * SEL_ARR;

__device__ __forceinline__ unsigned sel_key(float v) {
    unsigned u = __float_as_uint(v);
    if (isnan(v)) return 0xffffffffu;
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ float sel_value(unsigned key) {
    if (key == 0xffffffffu) return __uint_as_float(0x7fffffffu);
    return __uint_as_float((key & 0x80000000u) ? (key & 0x7fffffffu) : ~key);
}

// The scan of one pass for array arr (the last block of sel2_hist_kernel; 256
// threads): warp t fixes the next digit of target t. Histograms and counts
// were written by other blocks' atomics: read through L2.
template <int PASS>
__device__ __forceinline__ void sel_find(const SelArgs &a, int arr) {
    constexpr int BITS = PASS == 2 ? 10 : 11, NB = 1 << BITS;
    const int tid = threadIdx.x, lane = tid & 31, t = tid >> 5;
    sel_state *st = a.st;
    if (!a.x[arr]) return;
    const unsigned long long n = __ldcg(&st->n[arr]);
    if (n == 0) return;
    unsigned long long rank;
    unsigned prefix;
    int owner;
    if (PASS == 0) {
        const double pct = t == 0 ? 0 : t == 1 ? 100 : t < 4 ? 50 : t < 6 ? 90 : 99; // {0, 100, 50, 50, 90, 90, 99, 99}
        double pos = pct / 100.0 * (double)(n - 1);
        rank = (unsigned long long)((t >= 2 && (t & 1)) ? ceil(pos) : floor(pos));
        if (rank > n - 1) rank = n - 1;
        prefix = 0;
        owner = 0;
    } else {
        rank = st->rank[arr][t];
        prefix = st->prefix[arr][t];
        owner = st->owner[arr][t];
    }
    const unsigned *h = a.hist + (((size_t)PASS * SEL_ARR + arr) * SEL_T + owner) * SEL_BINS;
    // two levels of a warp scan, every load issued at once: lane L sums bins
    // [L PER, (L+1) PER) (16-byte loads), the lane whose range holds the rank is
    // found, then its PER bins are spread SUB to a lane and scanned again
    constexpr int PER = NB / 32, SUB = PER / 32;
    unsigned long long tot = 0;
#pragma unroll
    for (int i = 0; i < PER / 4; i++) {
        const uint4 u = __ldcg(reinterpret_cast<const uint4 *>(h + lane * PER) + i);
        tot += (unsigned long long)u.x + u.y + u.z + u.w;
    }
    unsigned long long incl = tot;
    for (int off = 1; off < 32; off <<= 1) {
        unsigned long long y = __shfl_up_sync(0xffffffffu, incl, off);
        if (lane >= off) incl += y;
    }
    unsigned ball = __ballot_sync(0xffffffffu, incl > rank);
    int digit = NB - 1;
    if (ball) {
        const int L = __ffs(ball) - 1;
        rank -= __shfl_sync(0xffffffffu, incl - tot, L);
        unsigned c[SUB];
        unsigned long long cs = 0;
#pragma unroll
        for (int k = 0; k < SUB; k++) cs += c[k] = __ldcg(h + L * PER + lane * SUB + k);
        unsigned long long incl2 = cs;
        for (int off = 1; off < 32; off <<= 1) {
            unsigned long long y = __shfl_up_sync(0xffffffffu, incl2, off);
            if (lane >= off) incl2 += y;
        }
        const unsigned ball2 = __ballot_sync(0xffffffffu, incl2 > rank);
        const int M = ball2 ? __ffs(ball2) - 1 : 31;
        unsigned long long r = rank - (incl2 - cs);
        // in lane M's bins: the first whose running count passes r
        int d = L * PER + lane * SUB + SUB - 1;
        bool found = false;
#pragma unroll
        for (int k = 0; k < SUB; k++) {
            if (!found && r < c[k]) {
                d = L * PER + lane * SUB + k;
                found = true;
            }
            if (!found) r -= c[k];
        }
        digit = __shfl_sync(0xffffffffu, d, M);
        rank = __shfl_sync(0xffffffffu, r, M);
    }
    prefix = (prefix << BITS) | (unsigned)digit;
    if (lane == 0) {
        st->prefix[arr][t] = prefix;
        st->rank[arr][t] = rank;
        if (PASS == 2) st->val[arr][t] = sel_value(prefix);
    }
    __syncthreads();
    if (tid < SEL_T) {
        int o = tid;
        for (int u = 0; u < tid; u++)
            if (st->prefix[arr][u] == st->prefix[arr][tid]) {
                o = u;
                break;
            }
        st->owner[arr][tid] = o;
    }
}

// The select's passes: every pass counts into shared-memory histograms --
// pass 0 one of 2048 bins, passes 1 and 2 one per distinct prefix of the
// percentile targets (at most 6, 48 KB of dynamic shared memory) -- flushed
// once per block, so values that share a few bins (modified norms of
// normalized rows are all ~1: every pass's digits coincide) do not serialize
// global atomics on one address (the first form counted passes 1 and 2 with
// global atomics: 62 us of its 0.106 ms in pass 1 on the H200). The minimum
// and maximum (ranks 0 and n-1) come from pass 0 (the
// extreme keys, reduced with atomicMax), so passes 1 and 2 histogram only the
// values that share a percentile's prefix; the scan of targets 0 and 1 still
// runs (on whatever histogram its prefix names) and is overwritten at the end.
// A warp reads 4 x 32 float4 (16-byte loads, all issued before the first is
// used); the last len % 4 values go to warp 0 of block 0. A warp whose 32
// values fall in one bin adds 32 once, otherwise each lane adds its own 1
// (__match_any_sync, whose cost grows with the distinct bins of a warp, made
// the select 0.073-0.077 ms instead of 0.065-0.069 on the H200).
constexpr int SEL2_U = 4;

template <int PASS>
__global__ void __launch_bounds__(256) sel2_hist_kernel(SelArgs a) {
    constexpr int SHIFT = PASS == 0 ? 21 : PASS == 1 ? 10 : 0, MASK = PASS == 2 ? 0x3ff : 0x7ff;
    constexpr int PREV = PASS == 1 ? 21 : 10;
    extern __shared__ unsigned s2_hist[]; // [slots][SEL_BINS]
    __shared__ int s_owner[SEL_T];        // the target whose histogram slot s counts
    __shared__ unsigned s_prefix[SEL_T];  // its prefix
    __shared__ int s_nslots;
    __shared__ double s_sum[8];
    __shared__ unsigned long long s_cnt[8];
    __shared__ bool s_last;
    const int arr = blockIdx.y, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const float *x = a.x[arr];
    if (!x) return;
    if (tid == 0) {
        int ns = 0;
        if (PASS == 0) {
            s_owner[0] = 0, s_prefix[0] = 0u, ns = 1;
        } else {
            // one slot per distinct prefix of targets 2..7, counted into its owner's histogram
            for (int t = 2; t < SEL_T; t++) {
                const int o = a.st->owner[arr][t];
                bool have = false;
                for (int u = 0; u < ns; u++) have |= s_owner[u] == o;
                if (!have) s_owner[ns] = o, s_prefix[ns] = a.st->prefix[arr][t], ns++;
            }
        }
        s_nslots = ns;
    }
    __syncthreads();
    const int nslots = s_nslots;
    constexpr int NSL = PASS == 0 ? 1 : SEL_T - 2;
    unsigned pre[NSL]; // no prefix of a pass is ~0u (11 or 22 bits)
#pragma unroll
    for (int u = 0; u < NSL; u++) pre[u] = u < nslots ? s_prefix[u] : ~0u;
    for (int b = tid; b < nslots * SEL_BINS; b += blockDim.x) s2_hist[b] = 0u;
    __syncthreads();
    double lsum = 0;
    unsigned long long lcnt = 0;
    unsigned kmax = 0u, kmin_inv = 0u;
    // every lane of the warp calls it (the warp vote)
    auto count = [&](float v) {
        int bin = -1;
        if (__float_as_uint(v) != SKIP_BITS) {
            const unsigned key = sel_key(v);
            if (PASS == 0) {
                lcnt++;
                lsum += (double)v;
                kmax = max(kmax, key);
                kmin_inv = max(kmin_inv, ~key);
                bin = (key >> SHIFT) & MASK;
            } else {
#pragma unroll
                for (int u = 0; u < NSL; u++)
                    if ((key >> PREV) == pre[u]) bin = u * SEL_BINS + ((key >> SHIFT) & MASK);
            }
        }
        if (__all_sync(0xffffffffu, bin == __shfl_sync(0xffffffffu, bin, 0))) {
            if (bin >= 0 && lane == 0) atomicAdd(&s2_hist[bin], 32u); // the whole warp in one bin
        } else if (bin >= 0) {
            atomicAdd(&s2_hist[bin], 1u);
        }
    };
    const long long len = a.len[arr], n4 = len / 4;
    const float4 *x4 = reinterpret_cast<const float4 *>(x);
    const float skip = __uint_as_float(SKIP_BITS);
    const long long wstep = (long long)gridDim.x * (blockDim.x / 32) * 32 * SEL2_U;
    for (long long c0 = ((long long)blockIdx.x * (blockDim.x / 32) + warp) * 32 * SEL2_U; c0 < n4; c0 += wstep) {
        float4 v[SEL2_U];
#pragma unroll
        for (int u = 0; u < SEL2_U; u++) {
            const long long i = c0 + u * 32 + lane;
            v[u] = i < n4 ? __ldcg(x4 + i) : make_float4(skip, skip, skip, skip);
        }
#pragma unroll
        for (int u = 0; u < SEL2_U; u++) {
            count(v[u].x);
            count(v[u].y);
            count(v[u].z);
            count(v[u].w);
        }
    }
    if (blockIdx.x == 0 && warp == 0) count(lane < len - 4 * n4 ? __ldcg(x + 4 * n4 + lane) : skip);
    __syncthreads();
    unsigned *h = a.hist + ((size_t)PASS * SEL_ARR + arr) * SEL_T * SEL_BINS;
    for (int b = tid; b < nslots * SEL_BINS; b += blockDim.x) {
        const unsigned c = s2_hist[b];
        if (c) atomicAdd(&h[s_owner[b / SEL_BINS] * SEL_BINS + b % SEL_BINS], c);
    }
    if (PASS == 0) {
        __shared__ unsigned s_kmax[8], s_kmin[8];
        for (int off = 16; off > 0; off >>= 1) {
            lsum += __shfl_xor_sync(0xffffffffu, lsum, off);
            lcnt += __shfl_xor_sync(0xffffffffu, lcnt, off);
        }
        kmax = __reduce_max_sync(0xffffffffu, kmax);
        kmin_inv = __reduce_max_sync(0xffffffffu, kmin_inv);
        if (lane == 0) s_sum[warp] = lsum, s_cnt[warp] = lcnt, s_kmax[warp] = kmax, s_kmin[warp] = kmin_inv;
        __syncthreads();
        if (tid == 0) {
            double s = 0;
            unsigned long long c = 0;
            unsigned hi = 0u, lo = 0u;
            for (int w = 0; w < (int)(blockDim.x / 32); w++)
                s += s_sum[w], c += s_cnt[w], hi = max(hi, s_kmax[w]), lo = max(lo, s_kmin[w]);
            if (c) {
                atomicAdd(&a.st->sum[arr], s);
                atomicAdd(&a.st->n[arr], c);
                atomicMax(&a.st->kmax[arr], hi);
                atomicMax(&a.st->kmin_inv[arr], lo);
            }
        }
    }
    // the last block of this array to get here scans the histogram
    __threadfence();
    __syncthreads();
    if (tid == 0) {
        unsigned *done = a.hist + (size_t)3 * SEL_ARR * SEL_T * SEL_BINS + PASS * SEL_ARR + arr;
        s_last = atomicAdd(done, 1u) == gridDim.x - 1;
    }
    __syncthreads();
    if (!s_last) return;
    __threadfence();
    sel_find<PASS>(a, arr);
    if (PASS == 2 && tid == 0 && __ldcg(&a.st->n[arr]) > 0) { // ranks 0 and n-1: the extreme keys
        a.st->val[arr][0] = sel_value(~__ldcg(&a.st->kmin_inv[arr]));
        a.st->val[arr][1] = sel_value(__ldcg(&a.st->kmax[arr]));
    }
}

// The first launch of the stats (unless there are more than ROWS_PARAM
// sampled indices): the indices from the launch parameter into
// rows_d, the select's histograms, tickets and state zeroed (were two
// memsets), and -- blocks below BH, when qhat is not NULL -- the far rows of
// the sampled queries as qhat_kernel computes them (the indices read from the
// parameter). Grid-stride over the zeroing.
struct PrepArgs {
    int *rows_d;
    unsigned *zero_a; // SEL_HIST_WORDS
    unsigned *zero_b; // sel_state
    int nzero_b;      // words
    // qhat (NULL = none)
    const void *q0;
    int ns, nsp, N, D, g, BH;
    const float *P;
    int modify;
    float power, clip, eps, s_far;
    float *qhat;
};

template <typename T> __global__ void __launch_bounds__(256) prep_kernel(RowsParam rp, PrepArgs a) {
    const size_t gid = blockIdx.x * (size_t)blockDim.x + threadIdx.x, stride = (size_t)gridDim.x * blockDim.x;
    for (size_t i = gid; i < SEL_HIST_WORDS; i += stride) a.zero_a[i] = 0u;
    for (size_t i = gid; i < (size_t)a.nzero_b; i += stride) a.zero_b[i] = 0u;
    for (size_t i = gid; i < (size_t)rp.n; i += stride) a.rows_d[i] = rp.v[i];
    if (a.qhat && (int)blockIdx.x < a.BH)
        qhat_head<T>(blockIdx.x, reinterpret_cast<const T *>(a.q0), [&](int r) { return rp.v[r]; }, a.ns, a.nsp, a.N,
                     a.D, a.g, a.P, a.modify, a.power, a.clip, a.eps, a.s_far, a.qhat);
}

// ---- host side ---------------------------------------------------------------

// quality from the per-row sums (offset 0: raw, 6: effective), with the
// definitions of kernels/stats.c (quality_add / quality_finish): rel-L2 =
// ||o-e||/||e|| (0/0 = 0, x/0 = Inf), cosine (both zero = 1), p95 and max by
// tki_percentile. Returns 2 when the host allocation failed.
int quality_of(const double *st, int n, int off, int w, tk_quality *qo) {
    memset(qo, 0, sizeof *qo);
    if (n <= 0) return 0;
    double *rel = (double *)malloc(sizeof(double) * n);
    if (!rel) return 2;
    double rel_sum = 0, cs_sum = 0, cs_min = INFINITY, abs_sum = 0, abs_max = 0;
    for (int r = 0; r < n; r++) {
        const double *v = st + (size_t)r * QREC + off;
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

// kernels/stats.c percentile_of from the two order statistics around p(n-1).
double interp(double a, double b, int64_t n, double p) {
    double pos = p / 100.0 * (double)(n - 1), frac = pos - floor(pos);
    if (floor(pos) == ceil(pos) || frac == 0 || a == b) return a;
    return a + (b - a) * frac;
}

void dist_of(const sel_state *s, int a, tk_dist *d) {
    memset(d, 0, sizeof *d);
    int64_t n = (int64_t)s->n[a];
    if (n <= 0) return;
    d->n = n;
    d->mean = s->sum[a] / (double)n;
    d->min = s->val[a][0];
    d->max = s->val[a][1];
    d->p50 = interp(s->val[a][2], s->val[a][3], n, 50);
    d->p90 = interp(s->val[a][4], s->val[a][5], n, 90);
    d->p99 = interp(s->val[a][6], s->val[a][7], n, 99);
}

bool mma_shape(const tk_call *c) {
    return c->dtype != TK_DTYPE_F32 && (c->D == 64 || c->D == 128) && (c->Dv == 64 || c->Dv == 128);
}

// One instance of rows_mma_kernel or rows_hyb2_kernel: its function, shared memory, and blocks
// resident per multiprocessor (asked once; the shared-memory opt-in is set on
// the way; 0 on a CUDA error).
struct rows_inst {
    const void *fn;
    size_t smem;
    int occ;
    int threads;
};

rows_inst *inst_ready(rows_inst *ri) {
    if (ri->occ == 0) {
        int n = 0;
        if (cudaFuncSetAttribute(ri->fn, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)ri->smem) != cudaSuccess ||
            cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, ri->fn, ri->threads, ri->smem) != cudaSuccess) {
            (void)cudaGetLastError();
            return ri;
        }
        ri->occ = n > 0 ? n : 1;
    }
    return ri;
}

template <typename T, int D, int DV, int EFF, int NB> rows_inst *inst() {
    static rows_inst ri = {nullptr, 0, 0, 0};
    if (!ri.fn) {
        ri.fn = reinterpret_cast<const void *>(rows_mma_kernel<T, D, DV, EFF, NB>);
        ri.smem = RowsSmem<T, D, DV, EFF, NB>::bytes;
        ri.threads = RT_WARPS * 32;
    }
    return inst_ready(&ri);
}

// rows_hyb2_kernel (hybrid)
template <typename T, int D, int DV> rows_inst *inst2() {
    static rows_inst ri = {nullptr, 0, 0, 0};
    if (!ri.fn) {
        ri.fn = reinterpret_cast<const void *>(rows_hyb2_kernel<T, D, DV>);
        ri.smem = Rows2Smem<T, D, DV>::bytes;
        ri.threads = R2_WARPS * 32;
    }
    return inst_ready(&ri);
}

// The effective stream a job's rows kernel computes, and how.
struct eff_plan {
    int eff;       // EFF_NONE / EFF_TAYLOR / EFF_HYBRID
    int nb;        // slices (Taylor), 1 otherwise
    int kind;      // hybrid logits of the (first) launch
    int additive;  // hybrid additive with a far field: a second launch (HYB_FAR)
    int far;       // F is computed (hybrid far field on the sampled rows)
    int have_eff;  // quality_eff can be reported (exact: copied from raw)
    int scalar;    // the scalar fp32 kernel (raw only)
};

eff_plan plan_eff(const tkc_stats_job *j) {
    eff_plan p;
    memset(&p, 0, sizeof p);
    const tk_call *c = j->call;
    p.nb = 1;
    p.scalar = !mma_shape(c);
    if (j->mode == TK_MODE_EXACT) {
        p.have_eff = 1;
        return p;
    }
    if (p.scalar) return p;
    if (j->mode == TK_MODE_TAYLOR) {
        int nb = j->blocks;
        bool ok = c->D == c->Dv && nb >= 1 && c->D % nb == 0 && (c->D / nb) % 16 == 0 &&
                  (nb == 1 || nb == 2 || nb == 4 || (nb == 8 && c->D == 128));
        if (ok) p.eff = EFF_TAYLOR, p.nb = nb, p.have_eff = 1;
        return p;
    }
    if (c->D != c->Dv) return p;
    p.eff = EFF_HYBRID;
    const bool far_ok = j->P && j->ns <= 64 && (j->g == 16 || j->g == 32);
    const bool whole = j->win.radius <= 0; // every key in the window
    if (j->combine == TK_COMBINE_NORMALIZED) {
        if (j->w > 0 && !whole) {
            p.kind = HYB_NORMALIZED, p.far = far_ok, p.have_eff = far_ok;
        } else {
            p.kind = HYB_WINDOW, p.have_eff = 1; // no far term: the window's softmax
        }
    } else {
        p.kind = HYB_WINDOW;
        if (j->w > 0) p.additive = p.far = far_ok, p.have_eff = far_ok;
        else p.have_eff = 1;
    }
    return p;
}

rows_inst *pick(const tk_call *c, const eff_plan &p) {
#define TKC_PICK(T)                                                                                    \
    if (c->D == 128 && c->Dv == 128) {                                                                  \
        if (p.eff == EFF_HYBRID) return inst2<T, 128, 128>();                                           \
        if (p.eff == EFF_TAYLOR)                                                                        \
            return p.nb == 1   ? inst<T, 128, 128, EFF_TAYLOR, 1>()                                     \
                   : p.nb == 2 ? inst<T, 128, 128, EFF_TAYLOR, 2>()                                     \
                   : p.nb == 4 ? inst<T, 128, 128, EFF_TAYLOR, 4>()                                     \
                               : inst<T, 128, 128, EFF_TAYLOR, 8>();                                    \
        return inst<T, 128, 128, EFF_NONE, 1>();                                                        \
    }                                                                                                   \
    if (c->D == 64 && c->Dv == 64) {                                                                    \
        if (p.eff == EFF_HYBRID) return inst2<T, 64, 64>();                                             \
        if (p.eff == EFF_TAYLOR)                                                                        \
            return p.nb == 1 ? inst<T, 64, 64, EFF_TAYLOR, 1>()                                         \
                   : p.nb == 2 ? inst<T, 64, 64, EFF_TAYLOR, 2>()                                       \
                               : inst<T, 64, 64, EFF_TAYLOR, 4>();                                      \
        return inst<T, 64, 64, EFF_NONE, 1>();                                                          \
    }                                                                                                   \
    if (c->D == 128) return inst<T, 128, 64, EFF_NONE, 1>();                                            \
    return inst<T, 64, 128, EFF_NONE, 1>();
    if (c->dtype == TK_DTYPE_BF16) {
        TKC_PICK(__nv_bfloat16)
    }
    TKC_PICK(__half)
#undef TKC_PICK
}

// Key splits of the rows kernel: as many blocks as are resident at once over
// all heads (one wave), at least one 64-key tile each; the scalar kernel has
// SCALAR_SPLIT.
void rows_splits(const tk_call *c, const eff_plan &p, int num_sms, int *nsplit, int *keys_per_split) {
    if (p.scalar) {
        *nsplit = SCALAR_SPLIT;
        *keys_per_split = 0;
        return;
    }
    int BH = c->B * c->H, tiles = (c->Nk + RT_KT - 1) / RT_KT;
    int occ = pick(c, p)->occ;
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

// Where everything of a job lives in its workspace and host buffer.
struct layout {
    eff_plan p;
    int nsplit, kps, recw, nsp, streams;
    bool mod_q, mod_k; // modified norms computed on the device (else copied from raw, or not reported)
    size_t o_rows, o_part, o_qhat, o_F, o_norm[4], o_qk, o_hist, o_out, total;
    size_t out_bytes; // sums + sel_state, copied back
};

layout layout_of(const tkc_stats_job *j, int num_sms) {
    layout L;
    memset(&L, 0, sizeof L);
    const tk_call *c = j->call;
    const size_t BH = (size_t)c->B * c->H, nrow = (size_t)j->ns * BH;
    L.p = plan_eff(j);
    if (j->ns > 0) rows_splits(c, L.p, num_sms, &L.nsplit, &L.kps);
    L.recw = c->Dv + 2 * L.p.nb + 1;
    L.nsp = (j->ns + 15) / 16 * 16;
    L.streams = 1 + (L.p.eff != EFF_NONE) + L.p.additive;
    L.mod_q = L.mod_k = (j->mode == TK_MODE_TAYLOR && j->modify) || (j->mode == TK_MODE_HYBRID && j->P);
    size_t off = 0;
    L.o_rows = off;
    off += al256(sizeof(int) * (j->ns + j->nqk_q + j->nqk_k + 1));
    L.o_part = off;
    off += al256(sizeof(float) * nrow * L.nsplit * L.recw) * L.streams;
    L.o_qhat = off;
    if (L.p.far && j->ns > 0) off += al256(sizeof(float) * BH * L.nsp * j->g);
    L.o_F = off;
    if (L.p.far && j->ns > 0) off += al256(sizeof(float) * BH * c->Nk * L.nsp);
    const size_t len[4] = {BH * c->Nq, BH * c->Nk, BH * c->Nq, BH * c->Nk};
    for (int a = 0; a < 4; a++) {
        L.o_norm[a] = off;
        if (a < 2 || (a == 2 && L.mod_q) || (a == 3 && L.mod_k)) off += al256(sizeof(float) * len[a]);
    }
    L.o_qk = off;
    off += al256(sizeof(float) * BH * j->nqk_q * j->nqk_k);
    L.o_hist = off;
    off += al256(sizeof(unsigned) * SEL_HIST_WORDS);
    L.o_out = off;
    L.out_bytes = al256(sizeof(double) * nrow * QREC) + sizeof(sel_state);
    off += al256(L.out_bytes);
    L.total = off;
    return L;
}

template <typename T>
int launch_norms(const NormArgs &na, int G, int BH, cudaStream_t st, char *err, size_t errlen) {
    const int RB = na.D <= 128 ? 64 : 32;
    size_t smem = sizeof(float) * ((size_t)RB * (na.D + 1) + (size_t)na.D * G + (size_t)RB * G + (size_t)na.nsp * G);
    dim3 grid((na.N + RB - 1) / RB, BH);
    if (grid.x == 0) return 0;
    const void *fn = G == 32   ? reinterpret_cast<const void *>(norms_kernel<T, 32>)
                     : G == 16 ? reinterpret_cast<const void *>(norms_kernel<T, 16>)
                               : reinterpret_cast<const void *>(norms_kernel<T, 0>);
    TKC_TRY(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem), err, errlen);
    NormArgs a = na;
    void *args[] = {&a};
    TKC_TRY(cudaLaunchKernel(fn, grid, dim3(128), args, smem, st), err, errlen);
    return 0;
}

int norms_dt(const NormArgs &na, int G, int BH, int dtype, cudaStream_t st, char *err, size_t errlen) {
    if (dtype == TK_DTYPE_BF16) return launch_norms<__nv_bfloat16>(na, G, BH, st, err, errlen);
    if (dtype == TK_DTYPE_F16) return launch_norms<__half>(na, G, BH, st, err, errlen);
    return launch_norms<float>(na, G, BH, st, err, errlen);
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

// TKC_STATS_PROFILE=1 (benchmarking): device time of each phase of
// tkc_stats_run on stderr, from events between the phases.
namespace {
struct phase_clock {
    bool on;
    int n;
    cudaEvent_t ev[8];
    const char *name[8];
    void mark(const char *what, cudaStream_t st) {
        if (!on || n >= 8) return;
        if (cudaEventRecord(ev[n], st) != cudaSuccess) {
            (void)cudaGetLastError();
            on = false;
            return;
        }
        name[n++] = what;
    }
};
phase_clock clock_start(cudaStream_t st) {
    phase_clock c;
    memset(&c, 0, sizeof c);
    static int want = -1;
    static cudaEvent_t evs[8];
    if (want < 0) {
        want = getenv("TKC_STATS_PROFILE") && atoi(getenv("TKC_STATS_PROFILE")) > 0;
        for (int i = 0; want && i < 8; i++)
            if (cudaEventCreate(&evs[i]) != cudaSuccess) want = 0;
    }
    c.on = want > 0;
    for (int i = 0; i < 8; i++) c.ev[i] = evs[i];
    c.mark("start", st);
    return c;
}
void clock_print(phase_clock *c) {
    if (!c->on || c->n < 2) return;
    fprintf(stderr, "stats profile (ms):");
    for (int i = 1; i < c->n; i++) {
        float ms = 0.f;
        if (cudaEventElapsedTime(&ms, c->ev[i - 1], c->ev[i]) != cudaSuccess) (void)cudaGetLastError();
        fprintf(stderr, " %s %.4f", c->name[i], ms);
    }
    fprintf(stderr, "\n");
}
} // namespace

size_t tkc_stats_ws(const tkc_stats_job *j, int num_sms) { return layout_of(j, num_sms).total; }

// The pinned host buffer: what comes back (sums, sel_state), then the sampled
// indices going up (a pinned source: the upload never waits on the stream).
static size_t host_rows_off(const tkc_stats_job *j) {
    return al256(al256(sizeof(double) * (size_t)j->ns * j->call->B * j->call->H * QREC) + sizeof(sel_state));
}

size_t tkc_stats_host_bytes(const tkc_stats_job *j) {
    return host_rows_off(j) + sizeof(int) * ((size_t)j->ns + j->nqk_q + j->nqk_k + 1);
}

// The stats of a job in two parts: INPUTS (1) queues every pass that reads
// only the inputs (indices, far rows, norms, the sampled rows' partial
// softmax, q.k, order statistics); OUTPUTS (2) queues the merge and the
// comparison with the call's output, the copy back, synchronizes st and
// fills out. Both parts of one job use the same workspace and host buffer;
// a caller that runs them on two streams orders OUTPUTS after INPUTS (an
// event). clk: the phase clock, or NULL.
// INPUTS is three phases a caller may queue apart (tkc_stats_inputs_prep /
// _rest): PREP (upload, far rows of the sampled queries), NORMS, REST (rows,
// q.k, order statistics).
enum { PART_PREP = 1, PART_NORMS = 4, PART_REST = 8, PART_INPUTS = 13, PART_OUTPUTS = 2 };
static int stats_queue(const tkc_stats_job *j, int num_sms, void *ws, void *host, cudaStream_t st, int parts,
                       phase_clock *clk, tk_stats *out, char *err, size_t errlen) {
    const tk_call *c = j->call;
    const int BH = c->B * c->H, dt = c->dtype, ns = j->ns;
    const size_t nrow = (size_t)ns * BH;
    const layout L = layout_of(j, num_sms);
    char *w = (char *)ws;
    int *rows_d = (int *)(w + L.o_rows), *qkq_d = rows_d + ns, *qkk_d = qkq_d + j->nqk_q;
    float *part = (float *)(w + L.o_part);
    const size_t part_stride = al256(sizeof(float) * nrow * L.nsplit * L.recw) / sizeof(float);
    float *qhat = (float *)(w + L.o_qhat), *F = (float *)(w + L.o_F);
    float *norm[4];
    for (int a = 0; a < 4; a++) norm[a] = (float *)(w + L.o_norm[a]);
    float *qk = (float *)(w + L.o_qk);
    unsigned *hist = (unsigned *)(w + L.o_hist);
    double *sums = (double *)(w + L.o_out);
    sel_state *sel = (sel_state *)(w + L.o_out + al256(sizeof(double) * nrow * QREC));
    const bool far_rows = L.p.far && ns > 0;
    const float s0 = (float)(c->scale > 0 ? c->scale : 1.0 / sqrt((double)c->D));

    if (parts & PART_INPUTS) {
        const void *q0 = j->q0 ? j->q0 : c->q, *k0 = j->k0 ? j->k0 : c->k;
        const float pw = j->power, cl = j->clip, ep = j->eps;
        // the sampled indices, one upload (the host buffer is free: the previous call synchronized);
        // up to ROWS_PARAM of them, prep_kernel also zeroes the select's state and computes qhat
        const bool prepped = ns + j->nqk_q + j->nqk_k <= ROWS_PARAM; // the select's state zeroed, qhat computed
        if (parts & PART_PREP) {
            int n = ns + j->nqk_q + j->nqk_k;
            RowsParam rp; // the launch parameter (3.8 KB)
            rp.n = n;
            int *tmp = n <= ROWS_PARAM ? rp.v : (int *)((char *)host + host_rows_off(j));
            if (ns) memcpy(tmp, j->qrows, sizeof(int) * ns);
            if (j->nqk_q) memcpy(tmp + ns, j->qk_q, sizeof(int) * j->nqk_q);
            if (j->nqk_k) memcpy(tmp + ns + j->nqk_q, j->qk_k, sizeof(int) * j->nqk_k);
            if (n <= ROWS_PARAM) {
                PrepArgs pa;
                memset(&pa, 0, sizeof pa);
                pa.rows_d = rows_d;
                pa.zero_a = hist;
                pa.zero_b = reinterpret_cast<unsigned *>(sel);
                pa.nzero_b = (int)(sizeof(sel_state) / sizeof(unsigned));
                if (far_rows) {
                    pa.q0 = q0, pa.ns = ns, pa.nsp = L.nsp, pa.N = c->Nq, pa.D = c->D, pa.g = j->g, pa.BH = BH;
                    pa.P = j->P, pa.modify = j->modify, pa.power = pw, pa.clip = cl, pa.eps = ep;
                    pa.s_far = (float)j->s_far, pa.qhat = qhat;
                }
                const int blocks = far_rows && BH > 64 ? BH : 64;
                if (dt == TK_DTYPE_BF16) prep_kernel<__nv_bfloat16><<<blocks, 256, 0, st>>>(rp, pa);
                else if (dt == TK_DTYPE_F16) prep_kernel<__half><<<blocks, 256, 0, st>>>(rp, pa);
                else prep_kernel<float><<<blocks, 256, 0, st>>>(rp, pa);
                TKC_LAUNCHED("prep_kernel", err, errlen);
            } else {
                cudaError_t e = cudaMemcpyAsync(rows_d, tmp, sizeof(int) * n, cudaMemcpyHostToDevice, st);
                if (e != cudaSuccess) {
                    snprintf(err, errlen, "sampled rows upload: %s", cudaGetErrorString(e));
                    return 1;
                }
            }
        }

        // far rows of the sampled queries (hybrid; more than ROWS_PARAM indices, else prep_kernel did it)
        if ((parts & PART_PREP) && far_rows && !prepped) {
            if (dt == TK_DTYPE_BF16)
                qhat_kernel<__nv_bfloat16><<<BH, 256, 0, st>>>((const __nv_bfloat16 *)q0, rows_d, ns, L.nsp, c->Nq, c->D,
                                                              j->g, j->P, j->modify, pw, cl, ep, (float)j->s_far, qhat);
            else if (dt == TK_DTYPE_F16)
                qhat_kernel<__half><<<BH, 256, 0, st>>>((const __half *)q0, rows_d, ns, L.nsp, c->Nq, c->D, j->g, j->P,
                                                       j->modify, pw, cl, ep, (float)j->s_far, qhat);
            else
                qhat_kernel<float><<<BH, 256, 0, st>>>((const float *)q0, rows_d, ns, L.nsp, c->Nq, c->D, j->g, j->P,
                                                      j->modify, pw, cl, ep, (float)j->s_far, qhat);
            TKC_LAUNCHED("qhat_kernel", err, errlen);
        }

        if (clk) clk->mark("upload+qhat", st);
        // norms of every row (and the far logits of the sampled queries on the key side)
        if (parts & PART_NORMS) {
            NormPair np;
            memset(&np, 0, sizeof np);
            for (int side = 0; side < 2; side++) {
                NormArgs &na = np.s[side];
                na.x = side ? c->k : c->q;
                na.x0 = side ? k0 : q0;
                na.N = side ? c->Nk : c->Nq;
                na.D = c->D;
                na.H = c->H;
                na.mask = side ? c->key_mask : nullptr;
                na.raw = norm[side];
                na.mod = (side ? L.mod_k : L.mod_q) ? norm[2 + side] : nullptr;
                na.kind = !na.mod ? 0 : j->mode == TK_MODE_TAYLOR ? 1 : 2;
                na.blocks = j->blocks > 0 ? j->blocks : 1;
                na.modify = j->modify, na.power = pw, na.clip = cl, na.eps = ep;
                if (na.kind == 2) {
                    na.P = j->P;
                    if (side == 1 && far_rows) na.qhat = qhat, na.nsp = L.nsp, na.F = F;
                }
                if (na.kind == 1) na.x0 = na.x;
            }
            const int G = np.s[0].kind == 2 ? j->g : 0;
            // the tensor-core kernel: hybrid projections of bf16 rows on both sides, 16-byte aligned rows
            uintptr_t align = (uintptr_t)c->q | (uintptr_t)c->k | (uintptr_t)q0 | (uintptr_t)k0;
            const bool mma = dt == TK_DTYPE_BF16 && np.s[0].kind == 2 && np.s[1].kind == 2 && (G == 16 || G == 32) &&
                             (c->D == 64 || c->D == 128) && (align & 15) == 0 && L.nsp % 16 == 0;
            if (mma) {
                const bool same = q0 == c->q && k0 == c->k;
                const int most = c->Nq > c->Nk ? c->Nq : c->Nk, groups = (most + 15) / 16;
                dim3 grid((groups + NM_WARPS * 8 - 1) / (NM_WARPS * 8), BH, 2); // 8 groups of 16 rows a warp
                const void *fn = nullptr;
    #define TKC_NM(DD, GG)                                                                                   \
        if (c->D == DD && G == GG)                                                                          \
            fn = same ? reinterpret_cast<const void *>(norms_mma_kernel<DD, GG, true>)                      \
                      : reinterpret_cast<const void *>(norms_mma_kernel<DD, GG, false>);
                TKC_NM(128, 16) TKC_NM(128, 32) TKC_NM(64, 16) TKC_NM(64, 32)
    #undef TKC_NM
                const size_t smem = sizeof(uint2) * (c->D / 16) * (G / 8) * 3 * 32 + sizeof(float) * L.nsp * G;
                // one wave of resident blocks over both sides and every head (each block builds P's
                // fragments once, then its warps take groups of 16 rows): at N=16,896, H=24 the
                // 8-groups-a-warp grid was 1,584 blocks for 924 resident, 1.7 waves
                int occ = 0;
                if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, fn, NM_WARPS * 32, smem) != cudaSuccess) {
                    (void)cudaGetLastError(); // keep the 8-groups-a-warp grid
                    occ = 0;
                }
                if (occ > 0) {
                    const int per_head = occ * (num_sms > 0 ? num_sms : 132) / (2 * BH);
                    const int most_blocks = (groups + NM_WARPS - 1) / NM_WARPS;
                    grid.x = per_head < 1 ? 1 : per_head > most_blocks ? most_blocks : per_head;
                }
                void *args[] = {&np};
                TKC_TRY(cudaLaunchKernel(fn, grid, dim3(NM_WARPS * 32), args, smem, st), err, errlen);
            } else {
                for (int side = 0; side < 2; side++) {
                    int rc = norms_dt(np.s[side], np.s[side].kind == 2 ? G : 0, BH, dt, st, err, errlen);
                    if (rc) return rc;
                }
            }
        }

        if (clk) clk->mark("norms", st);
        if (!(parts & PART_REST)) return 0;
        // sampled exact rows: raw and effective streams, then the comparison with o
        if (ns > 0) {
            if (L.p.scalar) {
                dim3 gridk(BH, SCALAR_SPLIT);
                if (dt == TK_DTYPE_BF16)
                    rows_scalar_kernel<__nv_bfloat16><<<gridk, 256, 0, st>>>(
                        (const __nv_bfloat16 *)c->q, (const __nv_bfloat16 *)c->k, (const __nv_bfloat16 *)c->v, c->key_mask,
                        rows_d, ns, c->H, c->Nq, c->Nk, c->D, c->Dv, s0, part, L.recw);
                else if (dt == TK_DTYPE_F16)
                    rows_scalar_kernel<__half><<<gridk, 256, 0, st>>>((const __half *)c->q, (const __half *)c->k,
                                                                      (const __half *)c->v, c->key_mask, rows_d, ns, c->H,
                                                                      c->Nq, c->Nk, c->D, c->Dv, s0, part, L.recw);
                else
                    rows_scalar_kernel<float><<<gridk, 256, 0, st>>>((const float *)c->q, (const float *)c->k,
                                                                     (const float *)c->v, c->key_mask, rows_d, ns, c->H,
                                                                     c->Nq, c->Nk, c->D, c->Dv, s0, part, L.recw);
                TKC_LAUNCHED("rows_scalar_kernel", err, errlen);
            } else {
                rows_inst *ri = pick(c, L.p);
                if (ri->occ == 0) // sets the shared-memory opt-in
                    TKC_TRY(cudaFuncSetAttribute(ri->fn, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)ri->smem), err,
                            errlen);
                RowsArgs ra;
                memset(&ra, 0, sizeof ra);
                ra.q = c->q, ra.k = c->k, ra.v = c->v, ra.mask = c->key_mask, ra.rows = rows_d;
                ra.ns = ns, ra.H = c->H, ra.Nq = c->Nq, ra.Nk = c->Nk, ra.keys_per_split = L.kps, ra.recw = L.recw;
                ra.scale_log2 = s0 * LOG2E;
                ra.part = part;
                ra.part_e = part + part_stride;
                ra.s_log2 = (float)(j->s_taylor * 1.4426950408889634);
                ra.modify = j->modify, ra.power = pw, ra.clip = cl, ra.eps = ep;
                ra.kind = L.p.kind;
                ra.lw2 = j->w > 0 ? (float)log2(j->w) : -INFINITY;
                ra.F = far_rows ? F : nullptr;
                ra.nsp = L.nsp;
                ra.shape2d = j->win.shape == TK_WINDOW_2D, ra.radius = j->win.radius, ra.text = j->win.text_tokens;
                ra.gw = j->win.grid_w;
                dim3 grid(BH, L.nsplit);
                void *args[] = {&ra};
                TKC_TRY(cudaLaunchKernel(ri->fn, grid, dim3(ri->threads), args, ri->smem, st), err, errlen);
                if (L.p.additive) { // the far softmax over every kept key, into the third stream
                    RowsArgs rb = ra;
                    rb.kind = HYB_FAR;
                    rb.part_e = part + 2 * part_stride;
                    void *args2[] = {&rb};
                    TKC_TRY(cudaLaunchKernel(ri->fn, grid, dim3(ri->threads), args2, ri->smem, st), err, errlen);
                }
            }
            if (clk) clk->mark("rows", st);
        }

        // the q.k sample
        if (j->nqk_q > 0 && j->nqk_k > 0) {
            dim3 grid(BH, (j->nqk_q + 7) / 8);
            if (dt == TK_DTYPE_BF16)
                qk_kernel<__nv_bfloat16><<<grid, 64, 0, st>>>((const __nv_bfloat16 *)c->q, (const __nv_bfloat16 *)c->k,
                                                             c->key_mask, qkq_d, j->nqk_q, qkk_d, j->nqk_k, c->H, c->Nq,
                                                             c->Nk, c->D, s0, qk);
            else if (dt == TK_DTYPE_F16)
                qk_kernel<__half><<<grid, 64, 0, st>>>((const __half *)c->q, (const __half *)c->k, c->key_mask, qkq_d,
                                                      j->nqk_q, qkk_d, j->nqk_k, c->H, c->Nq, c->Nk, c->D, s0, qk);
            else
                qk_kernel<float><<<grid, 64, 0, st>>>((const float *)c->q, (const float *)c->k, c->key_mask, qkq_d,
                                                     j->nqk_q, qkk_d, j->nqk_k, c->H, c->Nq, c->Nk, c->D, s0, qk);
            TKC_LAUNCHED("qk_kernel", err, errlen);
        }

        if (clk) clk->mark("qk", st);
        // order statistics of the norms and q.k
        SelArgs sa;
        memset(&sa, 0, sizeof sa);
        const long long lens[SEL_ARR] = {(long long)BH * c->Nq, (long long)BH * c->Nk, (long long)BH * c->Nq,
                                         (long long)BH * c->Nk, (long long)BH * j->nqk_q * j->nqk_k};
        for (int a = 0; a < SEL_ARR; a++) sa.len[a] = lens[a];
        sa.x[0] = norm[0], sa.x[1] = norm[1];
        sa.x[2] = L.mod_q ? norm[2] : nullptr, sa.x[3] = L.mod_k ? norm[3] : nullptr;
        sa.x[4] = lens[4] > 0 ? qk : nullptr;
        sa.st = sel, sa.hist = hist;
        if (!prepped) {
            TKC_TRY(cudaMemsetAsync(hist, 0, sizeof(unsigned) * SEL_HIST_WORDS, st), err, errlen);
            TKC_TRY(cudaMemsetAsync(sel, 0, sizeof(sel_state), st), err, errlen);
        }
        long long most = 0;
        for (int a = 0; a < SEL_ARR; a++) most = sa.x[a] && lens[a] > most ? lens[a] : most;
        // a warp per 4 x 32 float4 (one step each at N=16,896, H=24: 99 blocks an array)
        constexpr long long per = 8 * 32 * SEL2_U;
        long long nb = (most / 4 + per - 1) / per;
        const long long cap = 4LL * (num_sms > 0 ? num_sms : 132);
        if (nb > cap) nb = cap;
        if (nb < 1) nb = 1;
        const dim3 hgrid((unsigned)nb, SEL_ARR);
        const int big = (int)(sizeof(unsigned) * (SEL_T - 2) * SEL_BINS);
        TKC_TRY(cudaFuncSetAttribute(sel2_hist_kernel<1>, cudaFuncAttributeMaxDynamicSharedMemorySize, big), err, errlen);
        TKC_TRY(cudaFuncSetAttribute(sel2_hist_kernel<2>, cudaFuncAttributeMaxDynamicSharedMemorySize, big), err, errlen);
        sel2_hist_kernel<0><<<hgrid, 256, sizeof(unsigned) * SEL_BINS, st>>>(sa);
        sel2_hist_kernel<1><<<hgrid, 256, big, st>>>(sa);
        sel2_hist_kernel<2><<<hgrid, 256, big, st>>>(sa);
        TKC_LAUNCHED("sel kernels", err, errlen);

        if (clk) clk->mark("select", st);
    } // inputs
    if (!(parts & PART_OUTPUTS)) return 0;
    // the comparison of the sampled rows with the call's output
    if (ns > 0) {
        FinishArgs fa;
        memset(&fa, 0, sizeof fa);
        fa.part = part, fa.part_e = part + part_stride, fa.part_e2 = part + 2 * part_stride;
        fa.nsplit = L.nsplit, fa.Dv = c->Dv, fa.recw = L.recw, fa.nbe = L.p.nb;
        fa.eff = L.p.eff == EFF_NONE ? 0 : L.p.additive ? 2 : 1;
        fa.w = (float)j->w;
        fa.o = j->out, fa.rows = rows_d, fa.Nq = c->Nq, fa.st = sums;
        dim3 grid(ns, BH);
        if (dt == TK_DTYPE_BF16) rows_finish_kernel<__nv_bfloat16><<<grid, 128, 0, st>>>(fa);
        else if (dt == TK_DTYPE_F16) rows_finish_kernel<__half><<<grid, 128, 0, st>>>(fa);
        else rows_finish_kernel<float><<<grid, 128, 0, st>>>(fa);
        TKC_LAUNCHED("rows_finish_kernel", err, errlen);
    }
    if (clk) clk->mark("finish", st);
    // one copy back
    TKC_TRY(cudaMemcpyAsync(host, sums, L.out_bytes, cudaMemcpyDeviceToHost, st), err, errlen);
    if (clk) clk->mark("copy", st);
    TKC_TRY(cudaStreamSynchronize(st), err, errlen);
    if (clk) clock_print(clk);
    const double *hs = (const double *)host;
    const sel_state *hsel = (const sel_state *)((const char *)host + al256(sizeof(double) * nrow * QREC));

    if (ns > 0) {
        if (quality_of(hs, (int)nrow, 0, c->Dv, &out->quality_raw)) goto nomem;
        if (j->mode == TK_MODE_EXACT) out->quality_eff = out->quality_raw;
        else if (L.p.have_eff && quality_of(hs, (int)nrow, 6, c->Dv, &out->quality_eff)) goto nomem;
        out->have |= TK_HAVE_QUALITY;
        if (j->mode == TK_MODE_HYBRID && L.p.eff == EFF_HYBRID) {
            double *wm = (double *)malloc(sizeof(double) * nrow);
            if (!wm) goto nomem;
            for (size_t r = 0; r < nrow; r++) wm[r] = hs[r * QREC + 12];
            tki_dist_summarize(wm, (int64_t)nrow, &out->window_mass);
            free(wm);
            out->have |= TK_HAVE_WINDOW_MASS;
        }
    }
    dist_of(hsel, 0, &out->q_norm_raw);
    dist_of(hsel, 1, &out->k_norm_raw);
    if (L.mod_q) dist_of(hsel, 2, &out->q_norm_mod);
    else if (j->mode != TK_MODE_HYBRID) out->q_norm_mod = out->q_norm_raw; // unmodified: the same rows
    if (L.mod_k) dist_of(hsel, 3, &out->k_norm_mod);
    else if (j->mode != TK_MODE_HYBRID) out->k_norm_mod = out->k_norm_raw;
    out->have |= TK_HAVE_NORMS;
    if (hsel->n[4] > 0) {
        dist_of(hsel, 4, &out->qk);
        out->have |= TK_HAVE_QK;
    }
    return 0;
nomem:
    snprintf(err, errlen, "host allocation for the stats summaries");
    return 2;
}

int tkc_stats_run(const tkc_stats_job *j, int num_sms, void *ws, void *host, cudaStream_t st, tk_stats *out,
                  char *err, size_t errlen) {
    phase_clock clk = clock_start(st);
    return stats_queue(j, num_sms, ws, host, st, PART_INPUTS | PART_OUTPUTS, &clk, out, err, errlen);
}

int tkc_stats_inputs(const tkc_stats_job *j, int num_sms, void *ws, void *host, cudaStream_t st, char *err,
                     size_t errlen) {
    return stats_queue(j, num_sms, ws, host, st, PART_INPUTS, nullptr, nullptr, err, errlen);
}

int tkc_stats_outputs(const tkc_stats_job *j, int num_sms, void *ws, void *host, cudaStream_t st, tk_stats *out,
                      char *err, size_t errlen) {
    return stats_queue(j, num_sms, ws, host, st, PART_OUTPUTS, nullptr, out, err, errlen);
}

int tkc_stats_taps_of(const tkc_stats_job *j, int num_sms, void *ws, tkc_stats_taps *t) {
    const tk_call *c = j->call;
    const layout L = layout_of(j, num_sms);
    const void *q0 = j->q0 ? j->q0 : c->q, *k0 = j->k0 ? j->k0 : c->k;
    const uintptr_t align = (uintptr_t)c->q | (uintptr_t)c->k | (uintptr_t)q0 | (uintptr_t)k0;
    // the cases norms_mma_kernel covers (its definitions and accuracy), on the hybrid's own rows
    if (j->mode != TK_MODE_HYBRID || !j->P || !L.mod_q || !L.mod_k || c->dtype != TK_DTYPE_BF16 ||
        !(c->D == 64 || c->D == 128) || !(j->g == 16 || j->g == 32) || (align & 15) || L.nsp % 16 ||
        c->Nq != c->Nk)
        return 0;
    char *w = (char *)ws;
    memset(t, 0, sizeof *t);
    t->xraw[0] = c->q, t->xraw[1] = c->k;
    t->key_mask = c->key_mask, t->H = c->H;
    for (int s = 0; s < 2; s++) t->raw[s] = (float *)(w + L.o_norm[s]), t->mod[s] = (float *)(w + L.o_norm[2 + s]);
    if (L.p.far && j->ns > 0) t->F = (float *)(w + L.o_F), t->qhat = (const float *)(w + L.o_qhat), t->nsp = L.nsp;
    t->modify = j->modify, t->power = j->power, t->clip = j->clip, t->eps = j->eps;
    return 1;
}

int tkc_stats_inputs_prep(const tkc_stats_job *j, int num_sms, void *ws, void *host, cudaStream_t st, char *err,
                          size_t errlen) {
    return stats_queue(j, num_sms, ws, host, st, PART_PREP, nullptr, nullptr, err, errlen);
}

int tkc_stats_inputs_rest(const tkc_stats_job *j, int num_sms, void *ws, void *host, cudaStream_t st, int norms,
                          char *err, size_t errlen) {
    return stats_queue(j, num_sms, ws, host, st, PART_REST | (norms ? PART_NORMS : 0), nullptr, nullptr, err, errlen);
}

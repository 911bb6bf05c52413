// taylor_small.cu -- Taylor attention (SPEC 3) for slice dim d = dv = 16 and
// P <= 3, built on the degree-2 structure instead of a feature table.
//
// With q', k' the modified rows scaled by sqrt(s) (SPEC 3.3),
//   kappa_3(q'.k') = 1 + q'.k' + (q'.k')^2 / 2,
// and the degree-2 term is a sum over pairs (m, b) of q'_m q'_b k'_m k'_b
// with weight 1 for b > m, 1/2 for b == m, 0 for b < m. Features are formed
// in registers as mma fragments, never stored:
//   phase A (grid key split x head, 2 warps per slice): per 16 keys, the
//     fragments of V'^T and K'^T come from ldmatrix; a feature tile (m, set)
//     of 8 features is k'_m (a broadcast pair) times the fragment of K' for
//     the dims of set (0-7 or 8-15), one HMUL2 per register. Tiles:
//       0..23  degree 2: (m = tile, dims 0-7) for tile < 8, (m = tile-8,
//              dims 8-15) for tile >= 8 (the b < m features get weight 0);
//       24,25  degree 1 (k'_b), 26 sum of v (constant term);
//       27,28  Gram matrix G = sum k' k'^T (A = K'^T), 29 mu = sum k'.
//     Each (split, slice) stores its fp32 accumulators per lane.
//   sum (grid head*slice): splits added in a fixed order (deterministic),
//     weights applied, S stored as f16 mma B fragments scaled per v column
//     (largest magnitude / 1024), G as f16 B fragments, sum v, mu, N' (the
//     count of kept keys) in fp32; the denominator counters are reset here.
//   apply (persistent grid over 64-query tiles, one warp per slice): the
//     slice's S fragments stay in registers; per 16 queries, 13 k-steps of
//     q'_m * [q' pair] A fragments against them; den = N' + q'.mu +
//     q'^T G q' / 2 (G q' on the tensor cores); the epilogue divides, clamps
//     den <= eps and counts the denominators (SPEC 3.1) on the device; the
//     output rows replace the q rows in the tile's stage and leave as whole
//     rows (16-byte stores). In the one-pass call the den pass's values
//     ([B*H][Nq][NB]) come into the same stage with the q rows.
//   probe: den of the sampled rows from (N', mu, G) in the sum kernel,
//     which is psi(q').z of SPEC 3.4. The apply kernel is queued before the
//     host reads them (it writes only the workspace copy of o), so the GPU
//     never idles during the probe's round trip; the run that follows reuses
//     everything and copies the counters back.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <type_traits>

#include "taylor_small.h"

namespace {

using namespace tkc;

constexpr int NTILE = 30;     // accumulator tiles per slice (see above)
constexpr int NKS = 13;
constexpr int SUM_WARPS = 16; // warps of the sum kernel       // apply k-steps: 12 degree-2 tile pairs + degree 1
constexpr int KTA = 64;       // keys per phase-A stage
constexpr int QTB = 64;       // queries per apply stage
constexpr int LDC = 24;       // converted rows in halves (48 B: conflict-free ldmatrix)
constexpr int NCONST = 64 + 256; // per slice: scale[16] sumv[16] mu[16] N' gscale .. G''[136] ..
constexpr int OFF_TRI = 64;      // G'' (upper triangle of G + G^T, diagonal G_mm) in consts
constexpr int NTRI = 136;

size_t align256(size_t x) { return (x + 255) & ~(size_t)255; }

struct SArgs {
    const void *q, *k, *v;
    const uint8_t *mask;
    int H, Nq, Nk, BH, split;
    int modify;
    float power, clip, eps, sqrt_s;
};

__device__ __forceinline__ float row_fac(float ss, const SArgs &a) {
    float f = a.sqrt_s;
    if (a.modify) {
        float nrm = sqrtf(ss) + a.eps;
        if (a.modify == 1) {
            f /= nrm;
        } else {
            if (a.power > 0.f) f *= powf(nrm, -a.power);
            if (a.clip > 0.f) f *= fminf(1.f, a.clip / nrm);
        }
    }
    return f;
}

// 16 consecutive elements -> fp32 (16-byte loads; p 16-byte aligned).
template <typename TI> __device__ __forceinline__ void load16(const TI *p, float *x) {
    uint4 u0 = reinterpret_cast<const uint4 *>(p)[0], u1 = reinterpret_cast<const uint4 *>(p)[1];
    const TI *h0 = reinterpret_cast<const TI *>(&u0), *h1 = reinterpret_cast<const TI *>(&u1);
#pragma unroll
    for (int i = 0; i < 8; i++) x[i] = elem<TI>::to_f(h0[i]), x[8 + i] = elem<TI>::to_f(h1[i]);
}
template <> __device__ __forceinline__ void load16<float>(const float *p, float *x) {
#pragma unroll
    for (int i = 0; i < 4; i++) {
        float4 f = reinterpret_cast<const float4 *>(p)[i];
        x[4 * i] = f.x, x[4 * i + 1] = f.y, x[4 * i + 2] = f.z, x[4 * i + 3] = f.w;
    }
}
template <typename TO> __device__ __forceinline__ void store2(TO *p, float x0, float x1) {
    *reinterpret_cast<uint32_t *>(p) = elem<TO>::pack(x0, x1);
}
template <> __device__ __forceinline__ void store2<float>(float *p, float x0, float x1) {
    *reinterpret_cast<float2 *>(p) = make_float2(x0, x1);
}

__device__ __forceinline__ uint32_t h2u(__half2 h) { return *reinterpret_cast<uint32_t *>(&h); }
__device__ __forceinline__ uint32_t hmul2u(uint32_t a, uint32_t b) {
    return h2u(__hmul2(*reinterpret_cast<__half2 *>(&a), *reinterpret_cast<__half2 *>(&b)));
}
__device__ __forceinline__ uint32_t packh(float lo, float hi) { return h2u(__floats2half2_rn(lo, hi)); }
// Elementwise product of two 16-bit pairs in the mma type MT.
template <typename MT> __device__ __forceinline__ uint32_t hmul2t(uint32_t a, uint32_t b);
template <> __device__ __forceinline__ uint32_t hmul2t<__half>(uint32_t a, uint32_t b) { return hmul2u(a, b); }
template <> __device__ __forceinline__ uint32_t hmul2t<__nv_bfloat16>(uint32_t a, uint32_t b) {
    __nv_bfloat162 r = __hmul2(*reinterpret_cast<__nv_bfloat162 *>(&a), *reinterpret_cast<__nv_bfloat162 *>(&b));
    return *reinterpret_cast<uint32_t *>(&r);
}
// The pair (1, 1) in the mma type.
template <typename MT> struct one2;
template <> struct one2<__half> { static constexpr uint32_t v = 0x3C003C00u; };
template <> struct one2<__nv_bfloat16> { static constexpr uint32_t v = 0x3F803F80u; };

// Position of key r (0..63) in a row of the transposed K' tile: inside each
// 16 keys, lane t's keys 2t, 2t+1, 2t+8, 2t+9 sit at 4t..4t+3 (one 8-byte load).
__device__ __forceinline__ int kt_pos(int r) {
    int q = r & 15;
    return (r & ~15) | (((q & 7) >> 1) << 2) | ((q >> 3) << 1) | (q & 1);
}

template <typename TI, bool FAST> __host__ __device__ constexpr int a_stages() {
    return FAST ? 4 : sizeof(TI) == 4 ? 2 : 3;
}
template <typename TI> __host__ __device__ constexpr int b_stages() { return sizeof(TI) == 4 ? 3 : 4; }
template <typename TI, int NB> __host__ __device__ constexpr int raw_ld() { return 16 * NB + 16 / (int)sizeof(TI); }
template <typename TI, int NB, bool FAST> constexpr size_t smem_a() {
    return (size_t)a_stages<TI, FAST>() * 2 * KTA * raw_ld<TI, NB>() * sizeof(TI) +
           (FAST ? 0 : (size_t)NB * KTA * LDC * 2 * 2 + (size_t)NB * 16 * KTA * 2);
}
// ONE: each stage also holds the den pass's values of its queries, [QTB][NB] floats.
template <typename TI, int NB, bool ONE = false> constexpr size_t smem_b() {
    return (size_t)b_stages<TI>() * QTB * raw_ld<TI, NB>() * sizeof(TI) +
           (ONE ? (size_t)b_stages<TI>() * NB * QTB * sizeof(float) : 0);
}

// Phase A: grid (split, B*H), 64*NB threads (2 warps per slice). FAST (16-bit
// input, no q/k modification): fragments straight from the staged rows in
// the input type (masked keys zero-filled by the copy), k'_m by shuffles,
// sqrt(s) applied by the sum kernel. Otherwise each 64-key tile is first
// converted to f16 k' (modified, scaled) and v in shared memory.
template <typename TI, int NB, bool FAST>
__global__ void __launch_bounds__(64 * NB, 1)
    small_reduce_kernel(SArgs a, float4 *__restrict__ part, int *__restrict__ cnt, tkc_small_record *rec) {
    using MT = typename std::conditional<FAST, TI, __half>::type; // mma input type
    constexpr int D = 16 * NB, NTH = 64 * NB, RLD = raw_ld<TI, NB>(), ST = a_stages<TI, FAST>();
    constexpr int EPC = 16 / (int)sizeof(TI), CPR = D / EPC; // elements per 16 B, chunks per row
    constexpr uint32_t ONE = one2<MT>::v;
    extern __shared__ __align__(16) unsigned char sm[];
    TI *raw = reinterpret_cast<TI *>(sm);                             // [ST][2][KTA][RLD]
    __half *Kc = reinterpret_cast<__half *>(raw + ST * 2 * KTA * RLD); // [NB][KTA][LDC] (not FAST)
    __half *Vc = Kc + NB * KTA * LDC;                                  // [NB][KTA][LDC]
    __half *Kt = Vc + NB * KTA * LDC;                                  // [NB][16][KTA]
    __shared__ int s_cnt;

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, t = lane & 3;
    const int sp = blockIdx.x, bh = blockIdx.y, bidx = bh / a.H;
    const TI *kb = reinterpret_cast<const TI *>(a.k) + (size_t)bh * a.Nk * D;
    const TI *vb = reinterpret_cast<const TI *>(a.v) + (size_t)bh * a.Nk * D;
    const uint8_t *mb = a.mask ? a.mask + (size_t)bidx * a.Nk : nullptr;
    const int tiles = (a.Nk + KTA - 1) / KTA;
    const int per = (tiles + a.split - 1) / a.split;
    const int t0 = min(tiles, sp * per), nt = min(tiles, t0 + per) - t0;
    int my_cnt = 0; // kept keys this thread staged (chunk 0 of a k row)

    auto issue = [&](int tile, int stg) {
        const int key0 = tile * KTA;
        for (int e = tid; e < 2 * KTA * CPR; e += NTH) {
            const int which = e / (KTA * CPR), rem = e - which * KTA * CPR, r = rem / CPR, cc = rem - r * CPR;
            const int key = key0 + r;
            const bool in = key < a.Nk && (!mb || mb[key]);
            if (which == 0 && cc == 0) my_cnt += in;
            const TI *src = (which ? vb : kb) + (size_t)(in ? key : 0) * D + cc * EPC;
            cp_async16(raw + ((stg * 2 + which) * KTA + r) * RLD + cc * EPC, src, in ? 16 : 0);
        }
    };

    if (tid == 0) s_cnt = 0;
    if (tid == 0 && sp == 0 && bh == 0) { // the sum kernel counts the probe rows, the den pass the rest
        rec->probe_n = rec->probe_le = rec->probe_nf = 0ull;
        rec->suspicious = 0u;
        rec->applied = 0u;
    }
    __syncthreads();
    float acc[16][4];
#pragma unroll
    for (int i = 0; i < 16; i++) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
#pragma unroll
    for (int i = 0; i < ST - 1; i++) {
        if (i < nt) issue(t0 + i, i);
        cp_async_commit();
    }
    const int cs = tid >> 6, cr = tid & 63; // conversion: slice, key row; mma: slice cs, half
    const int half = warp & 1;
    for (int i = 0; i < nt; i++) {
        cp_async_wait<ST - 2>();
        __syncthreads(); // stage i is in; the previous tile's mma is done with its buffers
        if (i + ST - 1 < nt) issue(t0 + i + ST - 1, (i + ST - 1) % ST);
        cp_async_commit();
        const int stg = i % ST;
        const MT *Kcs, *Vcs; // fragment sources: [key][16] rows of ld LD
        int LD;
        if constexpr (FAST) {
            Kcs = raw + (stg * 2) * KTA * RLD + cs * 16;
            Vcs = raw + (stg * 2 + 1) * KTA * RLD + cs * 16;
            LD = RLD;
        } else {
            const int key = (t0 + i) * KTA + cr;
            const bool valid = key < a.Nk && (!mb || mb[key]);
            float x[16];
            load16(raw + ((stg * 2) * KTA + cr) * RLD + cs * 16, x);
            float ss = 0.f;
#pragma unroll
            for (int m = 0; m < 16; m++) ss += x[m] * x[m];
            const float f = row_fac(ss, a);
            uint32_t hk[8];
#pragma unroll
            for (int m = 0; m < 8; m++) hk[m] = valid ? packh(x[2 * m] * f, x[2 * m + 1] * f) : 0u;
            uint4 *kd = reinterpret_cast<uint4 *>(Kc + (cs * KTA + cr) * LDC);
            kd[0] = make_uint4(hk[0], hk[1], hk[2], hk[3]);
            kd[1] = make_uint4(hk[4], hk[5], hk[6], hk[7]);
            const int pos = kt_pos(cr);
#pragma unroll
            for (int m = 0; m < 8; m++) {
                __half2 h = *reinterpret_cast<__half2 *>(&hk[m]);
                Kt[(cs * 16 + 2 * m) * KTA + pos] = __low2half(h);
                Kt[(cs * 16 + 2 * m + 1) * KTA + pos] = __high2half(h);
            }
            load16(raw + ((stg * 2 + 1) * KTA + cr) * RLD + cs * 16, x);
            uint4 *vd = reinterpret_cast<uint4 *>(Vc + (cs * KTA + cr) * LDC);
#pragma unroll
            for (int m = 0; m < 8; m++) hk[m] = valid ? packh(x[2 * m], x[2 * m + 1]) : 0u;
            vd[0] = make_uint4(hk[0], hk[1], hk[2], hk[3]);
            vd[1] = make_uint4(hk[4], hk[5], hk[6], hk[7]);
            __syncthreads();
            Kcs = reinterpret_cast<const MT *>(Kc + cs * KTA * LDC);
            Vcs = reinterpret_cast<const MT *>(Vc + cs * KTA * LDC);
            LD = LDC;
        }
        const __half *Kts = Kt + cs * 16 * KTA;
#pragma unroll
        for (int ks = 0; ks < KTA / 16; ks++) {
            uint32_t KA[4], VA[4];
            const int off = (ks * 16 + (lane & 7) + 8 * (lane >> 4)) * LD + 8 * ((lane >> 3) & 1);
            ldsm_x4_t(KA, Kcs + off);
            ldsm_x4_t(VA, Vcs + off);
            // k'_m of this lane's keys (2t, 2t+1 | 2t+8, 2t+9): lo, hi
            auto km = [&](int m, uint32_t &lo, uint32_t &hi) {
                if constexpr (FAST) {
                    const int src = (m & 7) * 4 + t;
                    lo = __shfl_sync(0xffffffffu, m < 8 ? KA[0] : KA[1], src);
                    hi = __shfl_sync(0xffffffffu, m < 8 ? KA[2] : KA[3], src);
                } else {
                    const uint2 u = *reinterpret_cast<const uint2 *>(Kts + ks * 16 + 4 * t + m * KTA);
                    lo = u.x, hi = u.y;
                }
            };
            if (half == 0) {
                uint32_t lo[8], hi[8];
#pragma unroll
                for (int m = 0; m < 8; m++) km(m, lo[m], hi[m]);
#pragma unroll
                for (int j = 0; j < 14; j++) { // tiles 0..13
                    const int m = j < 8 ? j : j - 8;
                    const uint32_t b0 = hmul2t<MT>(lo[m], j < 8 ? KA[0] : KA[1]);
                    const uint32_t b1 = hmul2t<MT>(hi[m], j < 8 ? KA[2] : KA[3]);
                    mma16816<MT>(acc[j], VA, b0, b1);
                }
            } else {
#pragma unroll
                for (int j = 0; j < 10; j++) { // tiles 14..23: m = 6..15, dims 8-15
                    uint32_t lo, hi;
                    km(j + 6, lo, hi);
                    mma16816<MT>(acc[j], VA, hmul2t<MT>(lo, KA[1]), hmul2t<MT>(hi, KA[3]));
                }
                mma16816<MT>(acc[10], VA, KA[0], KA[2]); // 24: k'_b, b 0-7
                mma16816<MT>(acc[11], VA, KA[1], KA[3]); // 25: k'_b, b 8-15
                mma16816<MT>(acc[12], VA, ONE, ONE);     // 26: sum v
                mma16816<MT>(acc[13], KA, KA[0], KA[2]); // 27: G[:, 0-7]
                mma16816<MT>(acc[14], KA, KA[1], KA[3]); // 28: G[:, 8-15]
                mma16816<MT>(acc[15], KA, ONE, ONE);     // 29: mu
            }
        }
    }
    cp_async_wait<0>();
    atomicAdd(&s_cnt, my_cnt);
    float4 *pb = part + ((size_t)(sp * a.BH + bh) * NB + cs) * NTILE * 32 + lane;
    const int base = half ? 14 : 0, n = half ? 16 : 14;
#pragma unroll
    for (int j = 0; j < 16; j++)
        if (j < n) pb[(base + j) * 32] = make_float4(acc[j][0], acc[j][1], acc[j][2], acc[j][3]);
    __syncthreads();
    if (tid == 0) cnt[sp * a.BH + bh] = s_cnt;
}

// The sum over the key splits of a partial value (src: split 0, stride
// between splits) in a fixed order (deterministic): four running sums (four
// loads in flight), then (r0 + r1) + (r2 + r3). The sum kernel and both far
// tables kernels.
__device__ __forceinline__ float fadd(float a, float b) { return a + b; }
__device__ __forceinline__ float4 fadd(float4 a, float4 b) {
    return make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w);
}
template <typename V> __device__ __forceinline__ V split_sum(const V *src, size_t stride, int split, V zero) {
    V r[4] = {zero, zero, zero, zero};
    int k = 0;
    for (; k + 4 <= split; k += 4)
#pragma unroll
        for (int u = 0; u < 4; u++) r[u] = fadd(r[u], src[(k + u) * stride]);
    for (; k < split; k++) r[0] = fadd(r[0], src[k * stride]);
    return fadd(fadd(r[0], r[1]), fadd(r[2], r[3]));
}

// Splits summed in order, weights, scales, fragments; then the probe rows'
// den (pn > 0). Grid B*H*NB, SUM_WARPS warps over the accumulator tiles. fs2, fs1: factors of the degree-2
// and degree-1 sums (s and sqrt(s) when phase A ran on unscaled k, else 1).
template <typename TI>
__global__ void __launch_bounds__(32 * SUM_WARPS)
    small_sum_kernel(SArgs a, const float4 *__restrict__ part, const int *__restrict__ cnt, int NB, int P,
                     float fs2, float fs1, uint2 *sfrag, uint2 *gfrag, float *consts, tkc_small_record *rec,
                     const int *rows, int pn, float *probe_out) {
    tkc_den_stats *den = &rec->den;
    __shared__ float4 S[NTILE][32];
    __shared__ unsigned colmax[16], gmax;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t = lane & 3;
    const int bhc = blockIdx.x, bh = bhc / NB, BHC = a.BH * NB;
    if (tid < 16) colmax[tid] = 0u;
    if (tid == 0) gmax = 0u;
    if (bhc == 0 && tid == 0) {
        den->n = den->n_le_eps = den->n_nonfinite = 0ull;
        den->min = __uint_as_float(0xffffffffu);
        den->max = __uint_as_float(0u);
        den->sum = 0.0;
    }
    __syncthreads();
    for (int tau = warp; tau < NTILE; tau += SUM_WARPS) { // the splits in a fixed order (split_sum)
        float4 s = split_sum(part + (size_t)bhc * NTILE * 32 + tau * 32 + lane, (size_t)BHC * NTILE * 32, a.split,
                             make_float4(0.f, 0.f, 0.f, 0.f));
        // sum v and sum k' take every element of v and k (unmasked keys): a
        // NaN/Inf there is NaN/Inf here; the host then runs the input scan
        if ((tau == 26 || tau == 29) && !(isfinite(s.x) && isfinite(s.y) && isfinite(s.z) && isfinite(s.w)))
            atomicOr(&rec->suspicious, 1u);
        if (tau < 24) { // degree 2: weight of pair (m, b)
            const int m = tau < 8 ? tau : tau - 8, b0 = 2 * t + (tau < 8 ? 0 : 8), b1 = b0 + 1;
            const float w0 = P < 3 ? 0.f : b0 > m ? fs2 : b0 == m ? 0.5f * fs2 : 0.f;
            const float w1 = P < 3 ? 0.f : b1 > m ? fs2 : b1 == m ? 0.5f * fs2 : 0.f;
            s.x = w0 == 0.f ? 0.f : s.x * w0, s.z = w0 == 0.f ? 0.f : s.z * w0;
            s.y = w1 == 0.f ? 0.f : s.y * w1, s.w = w1 == 0.f ? 0.f : s.w * w1;
        } else if (tau == 24 || tau == 25 || tau == 29) { // degree 1, mu
            if (P < 2) s = make_float4(0.f, 0.f, 0.f, 0.f);
            else s.x *= fs1, s.y *= fs1, s.z *= fs1, s.w *= fs1;
        } else if (tau == 27 || tau == 28) { // G
            if (P < 3) s = make_float4(0.f, 0.f, 0.f, 0.f);
            else s.x *= fs2, s.y *= fs2, s.z *= fs2, s.w *= fs2;
        }
        S[tau][lane] = s;
        if (tau < 26) { // S columns: v = g (x, y), v = g + 8 (z, w)
            float lo = fmaxf(fabsf(s.x), fabsf(s.y)), hi = fmaxf(fabsf(s.z), fabsf(s.w));
            if (s.x != s.x || s.y != s.y) lo = INFINITY;
            if (s.z != s.z || s.w != s.w) hi = INFINITY;
            atomicMax(&colmax[g], __float_as_uint(lo));
            atomicMax(&colmax[g + 8], __float_as_uint(hi));
        } else if (tau == 27 || tau == 28) {
            float mx = fmaxf(fmaxf(fabsf(s.x), fabsf(s.y)), fmaxf(fabsf(s.z), fabsf(s.w)));
            if (s.x != s.x || s.y != s.y || s.z != s.z || s.w != s.w) mx = INFINITY;
            atomicMax(&gmax, __float_as_uint(mx));
        }
    }
    __syncthreads();
    auto scale_of = [](unsigned bits) {
        float m = __uint_as_float(bits);
        return (m > 0.f && m < INFINITY) ? m * (1.f / 1024.f) : 1.f;
    };
    const float sg = scale_of(colmax[g]), sg8 = scale_of(colmax[g + 8]), gs = scale_of(gmax);
    for (int s = warp; s < NKS; s += SUM_WARPS) {
        const int t1 = s < 12 ? 2 * s : 24;
        const float4 A1 = S[t1][lane], A2 = S[t1 + 1][lane];
        uint2 *dst = sfrag + ((size_t)bhc * NKS + s) * 2 * 32 + lane;
        dst[0] = make_uint2(packh(A1.x / sg, A1.y / sg), packh(A2.x / sg, A2.y / sg));
        dst[32] = make_uint2(packh(A1.z / sg8, A1.w / sg8), packh(A2.z / sg8, A2.w / sg8));
    }
    float *C = consts + (size_t)bhc * NCONST;
    __shared__ float Gs[16][17], mus[16], Ns;
    if (warp == 0) {
        const float4 GL = S[27][lane], GH = S[28][lane];
        uint2 *gd = gfrag + (size_t)bhc * 2 * 32 + lane;
        gd[0] = make_uint2(packh(GL.x / gs, GL.y / gs), packh(GH.x / gs, GH.y / gs));
        gd[32] = make_uint2(packh(GL.z / gs, GL.w / gs), packh(GH.z / gs, GH.w / gs));
        Gs[g][2 * t] = GL.x, Gs[g][2 * t + 1] = GL.y;
        Gs[g + 8][2 * t] = GL.z, Gs[g + 8][2 * t + 1] = GL.w;
        Gs[g][8 + 2 * t] = GH.x, Gs[g][9 + 2 * t] = GH.y;
        Gs[g + 8][8 + 2 * t] = GH.z, Gs[g + 8][9 + 2 * t] = GH.w;
    }
    if (warp == 1 && t == 0) {
        C[16 + g] = S[26][lane].x, C[24 + g] = S[26][lane].z;
        C[32 + g] = mus[g] = S[29][lane].x, C[40 + g] = mus[g + 8] = S[29][lane].z;
    }
    if (tid < 16) C[tid] = scale_of(colmax[tid]);
    if (tid == 32 * 2) {
        long long n = 0;
        for (int sp = 0; sp < a.split; sp++) n += cnt[sp * a.BH + bh];
        C[48] = Ns = (float)n;
        C[49] = gs;
    }
    __syncthreads();
    if (tid < NTRI) { // G'' for the den pass: the upper triangle row by row, G_mm and G_mb + G_bm
        int m = 0, idx = tid;
        while (idx >= 16 - m) idx -= 16 - m, m++;
        const int b = m + idx;
        C[OFF_TRI + tid] = b == m ? Gs[m][m] : Gs[m][b] + Gs[b][m];
    }
    if (pn <= 0) return;
    // probe: den = N' + q'.mu + q'^T G q' / 2 for the sampled rows (SPEC 3.4)
    const int D = 16 * NB, c = bhc % NB;
    unsigned long long p_nf = 0, p_le = 0;
    for (int p = tid; p < pn; p += 32 * SUM_WARPS) {
        const TI *qr = reinterpret_cast<const TI *>(a.q) + ((size_t)bh * a.Nq + rows[p]) * D + c * 16;
        float x[16], ss = 0.f;
        load16(qr, x);
#pragma unroll
        for (int m = 0; m < 16; m++) ss += x[m] * x[m];
        const float f = row_fac(ss, a);
#pragma unroll
        for (int m = 0; m < 16; m++) x[m] *= f;
        float lin = 0.f, quad = 0.f;
#pragma unroll 1
        for (int m = 0; m < 16; m++) { // not unrolled: G stays in shared memory, not in registers
            float xm = 0.f;
#pragma unroll
            for (int b = 0; b < 16; b++) xm = b == m ? x[b] : xm;
            lin += xm * mus[m];
            float r = 0.f;
#pragma unroll
            for (int b = 0; b < 16; b++) r += Gs[m][b] * x[b];
            quad += xm * r;
        }
        const float dp = Ns + lin + 0.5f * quad;
        probe_out[(size_t)bhc * pn + p] = dp;
        if (!isfinite(dp)) p_nf++;
        else if (dp <= a.eps) p_le++;
    }
    if (p_nf) atomicAdd(&rec->probe_nf, p_nf);
    if (p_le) atomicAdd(&rec->probe_le, p_le);
    if (tid == 0) atomicAdd(&rec->probe_n, (unsigned long long)pn);
}

// ---- the one-pass call: den of every query before anything reaches o ----

constexpr int DEN_TH = 256; // threads of the den pass
constexpr int DEN_RPT = 3;  // rows per thread (one load of G'' serves them; 3 keeps 3 blocks per SM)
constexpr int GST = 156;    // floats per slice in shared memory: G''[136] 2mu[16] N' (156 = 28 mod 32:
                            // LDS.128 of 8 slices hit 8 disjoint groups of 4 banks)

// The device's version of the rule (SPEC 3.1) and of the input verdict; the
// host (backend.cu) applies the same rule to the same counters.
__device__ __forceinline__ bool rule_small(unsigned long long le, unsigned long long n, const tkc_small_rule &r) {
    if (!r.fallback_on_negative || le == 0) return false;
    if (r.frac_limit <= 0) return true;
    return (double)le / (double)n > r.frac_limit;
}
__device__ bool record_passes(const tkc_small_record *rec, const tkc_small_rule &r) {
    if (rec->suspicious || rec->probe_nf || rec->den.n_nonfinite) return false;
    if (rule_small(rec->probe_le, rec->probe_n, r) || rule_small(rec->den.n_le_eps, rec->den.n, r)) return false;
    if (r.scan_d)
        for (int i = 0; i < r.scan_n; i++)
            if (r.scan_d[i] != ~0ull) return false;
    return true;
}

// Den pass: den = N' + x.mu + x^T G x / 2, x = q * the row's factor (SPEC
// 3.3 and sqrt(s); the probe's formula, fp32), for every (query, slice),
// written to den_out [B*H][Nq][NB] and counted into rec->den. As computed:
// den = N' + (sum_m x_m t_m) / 2 with t_m = 2 mu_m + sum_{b>=m} G''_mb x_b
// (G'' the upper triangle of G + G^T, diagonal G_mm); without q/k
// modification x is the raw row and sqrt(s) is folded into G'' and mu in
// shared memory. Units: (head, ROWS rows); thread = (slice, row group) with
// DEN_RPT rows, so a warp reads whole rows. A NaN/Inf element of q makes its
// den NaN/Inf (counted: the host then runs the input scan).
template <typename TI, int NB>
__global__ void __launch_bounds__(DEN_TH, 3)
    small_den_kernel(SArgs a, const float *__restrict__ consts, float *__restrict__ den_out, tkc_small_record *rec,
                     int units, int tiles) {
    constexpr int D = 16 * NB, GROUPS = DEN_TH / NB, ROWS = GROUPS * DEN_RPT;
    __shared__ __align__(16) float sg[NB * GST];
    __shared__ unsigned long long s_n, s_le, s_nf;
    __shared__ unsigned s_min, s_max;
    __shared__ double s_sum;
    const int tid = threadIdx.x, c = tid % NB, grp = tid / NB, lane = tid & 31;
    const int u0 = (int)((long long)blockIdx.x * units / gridDim.x);
    const int nu = (int)((long long)(blockIdx.x + 1) * units / gridDim.x) - u0;
    if (tid == 0) s_n = s_le = s_nf = 0ull, s_min = 0xffffffffu, s_max = 0u, s_sum = 0.0;
    unsigned n_all = 0, n_le = 0, n_nf = 0, emin = 0xffffffffu, emax = 0u;
    double dsum = 0.0;
    int cur_bh = -1;
    for (int i = 0; i < nu; i++) {
        const int u = u0 + i, bh = u / tiles, r0 = (u - bh * tiles) * ROWS;
        if (bh != cur_bh) {
            __syncthreads(); // everyone is done with the previous head's constants
            const float fg = a.modify ? 1.f : a.sqrt_s * a.sqrt_s, fm = a.modify ? 2.f : 2.f * a.sqrt_s;
            for (int e = tid; e < NB * (GST - 3); e += DEN_TH) {
                const int sl = e / (GST - 3), j = e - sl * (GST - 3);
                const float *src = consts + (size_t)(bh * NB + sl) * NCONST;
                sg[sl * GST + j] = j < NTRI ? fg * src[OFF_TRI + j] : j < NTRI + 16 ? fm * src[32 + j - NTRI] : src[48];
            }
            __syncthreads();
            cur_bh = bh;
        }
        const TI *qb = reinterpret_cast<const TI *>(a.q) + (size_t)bh * a.Nq * D + c * 16;
        float x[DEN_RPT][16];
#pragma unroll
        for (int j = 0; j < DEN_RPT; j++) {
            const int row = r0 + j * GROUPS + grp;
            if (row < a.Nq) {
                load16(qb + (size_t)row * D, x[j]);
            } else {
#pragma unroll
                for (int m = 0; m < 16; m++) x[j][m] = 0.f;
            }
        }
        const float *G = sg + c * GST;
        float quad[DEN_RPT], t[DEN_RPT];
#pragma unroll
        for (int j = 0; j < DEN_RPT; j++) {
            if (a.modify) {
                float ss = 0.f;
#pragma unroll
                for (int m = 0; m < 16; m++) ss += x[j][m] * x[j][m];
                const float f = row_fac(ss, a);
#pragma unroll
                for (int m = 0; m < 16; m++) x[j][m] *= f;
            }
            quad[j] = t[j] = 0.f;
        }
        {
            float4 g4 = make_float4(0.f, 0.f, 0.f, 0.f), mu4 = g4;
            int idx = 0;
#pragma unroll
            for (int m = 0; m < 16; m++) {
                if ((m & 3) == 0) mu4 = reinterpret_cast<const float4 *>(G + NTRI)[m >> 2];
                const float mu2 = (m & 3) == 0 ? mu4.x : (m & 3) == 1 ? mu4.y : (m & 3) == 2 ? mu4.z : mu4.w;
#pragma unroll
                for (int b = m; b < 16; b++, idx++) {
                    if ((idx & 3) == 0) g4 = reinterpret_cast<const float4 *>(G)[idx >> 2];
                    const float gv = (idx & 3) == 0 ? g4.x : (idx & 3) == 1 ? g4.y : (idx & 3) == 2 ? g4.z : g4.w;
#pragma unroll
                    for (int j = 0; j < DEN_RPT; j++) t[j] = b == m ? mu2 + gv * x[j][b] : t[j] + gv * x[j][b];
                }
#pragma unroll
                for (int j = 0; j < DEN_RPT; j++) quad[j] += x[j][m] * t[j];
            }
        }
        const float Ns = G[NTRI + 16];
        float *dout = den_out + (size_t)bh * a.Nq * NB + c; // [B*H][Nq][NB]: a warp's stores are whole rows
#pragma unroll
        for (int j = 0; j < DEN_RPT; j++) {
            const int row = r0 + j * GROUPS + grp;
            if (row >= a.Nq) continue;
            const float d = Ns + 0.5f * quad[j];
            dout[(size_t)row * NB] = d;
            n_all++;
            if (!isfinite(d)) {
                n_nf++;
                continue;
            }
            if (d <= a.eps) n_le++;
            emin = min(emin, ord_enc(d));
            emax = max(emax, ord_enc(d));
            dsum += (double)d;
        }
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        n_all += __shfl_xor_sync(0xffffffffu, n_all, off);
        n_le += __shfl_xor_sync(0xffffffffu, n_le, off);
        n_nf += __shfl_xor_sync(0xffffffffu, n_nf, off);
        emin = min(emin, __shfl_xor_sync(0xffffffffu, emin, off));
        emax = max(emax, __shfl_xor_sync(0xffffffffu, emax, off));
        dsum += __shfl_xor_sync(0xffffffffu, dsum, off);
    }
    __syncthreads(); // s_* initialized (also when nu == 0)
    if (lane == 0 && n_all) {
        atomicAdd(&s_n, (unsigned long long)n_all);
        if (n_le) atomicAdd(&s_le, (unsigned long long)n_le);
        if (n_nf) atomicAdd(&s_nf, (unsigned long long)n_nf);
        atomicMin(&s_min, emin);
        atomicMax(&s_max, emax);
        atomicAdd(&s_sum, dsum);
    }
    __syncthreads();
    if (tid == 0 && s_n) {
        atomicAdd(&rec->den.n, s_n);
        if (s_le) atomicAdd(&rec->den.n_le_eps, s_le);
        if (s_nf) atomicAdd(&rec->den.n_nonfinite, s_nf);
        atomicMin(reinterpret_cast<unsigned *>(&rec->den.min), s_min);
        atomicMax(reinterpret_cast<unsigned *>(&rec->den.max), s_max);
        atomicAdd(&rec->den.sum, s_sum);
    }
}

// Apply: persistent grid over (head, 64-query tile) units, 32*NB threads.
// Per 16 queries the features are built from the unscaled q rows (f16
// pairs): out = sum v + f acc1 + f^2 acc2 and den = N' + f q.mu + f^2 q^T G q
// / 2, f = the row's factor (SPEC 3.3 and sqrt(s)).
// ONE (the one-pass call): den comes from the den pass (den_in), nothing is
// counted here, and with gated set no block writes o unless the record
// passes (record_passes); block 0 then marks the record applied.
template <typename TI, int NB, bool ONE>
__global__ void __launch_bounds__(32 * NB, 2)
    small_apply_kernel(SArgs a, const uint2 *__restrict__ sfrag, const uint2 *__restrict__ gfrag,
                       const float *__restrict__ consts, TI *__restrict__ o, tkc_den_stats *den,
                       int units, int tiles_q, const float *__restrict__ den_in, tkc_small_record *rec,
                       tkc_small_rule rule, int gated) {
    constexpr int D = 16 * NB, NTH = 32 * NB, RLD = raw_ld<TI, NB>(), ST = b_stages<TI>();
    constexpr int EPC = 16 / (int)sizeof(TI), CPR = D / EPC;
    extern __shared__ __align__(16) unsigned char sm[];
    TI *raw = reinterpret_cast<TI *>(sm);                      // [ST][QTB][RLD]
    float *dst_den = reinterpret_cast<float *>(raw + ST * QTB * RLD); // ONE: [ST][QTB][NB]
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, t = lane & 3, g = lane >> 2;
    if constexpr (ONE) {
        __shared__ int s_ok;
        if (tid == 0) {
            s_ok = !gated || record_passes(rec, rule);
            if (s_ok && blockIdx.x == 0) rec->applied = 1u;
        }
        __syncthreads();
        if (!s_ok) return;
    }
    const int u0 = (int)((long long)blockIdx.x * units / gridDim.x);
    const int nu = (int)((long long)(blockIdx.x + 1) * units / gridDim.x) - u0;

    auto issue = [&](int u, int stg) {
        const int bh = u / tiles_q, q0 = (u - bh * tiles_q) * QTB;
        const TI *qb = reinterpret_cast<const TI *>(a.q) + (size_t)bh * a.Nq * D;
        for (int e = tid; e < QTB * CPR; e += NTH) {
            const int r = e / CPR, cc = e - r * CPR, qi = q0 + r;
            const bool in = qi < a.Nq;
            cp_async16(raw + (stg * QTB + r) * RLD + cc * EPC, qb + (size_t)(in ? qi : 0) * D + cc * EPC,
                       in ? 16 : 0);
        }
        // ONE: the den pass's values with the rows (loaded in the loop, each
        // waited for by its first use: 14% of the stall samples, ncu)
        if constexpr (ONE) {
            const float *src = den_in + ((size_t)bh * a.Nq + q0) * NB; // [B*H][Nq][NB]: the tile's rows in a row
            float *dst = dst_den + stg * QTB * NB;
            if constexpr (NB >= 4) { // 16-byte pieces of one row each (aligned: 16 NB bytes per row)
                for (int e = tid; e < QTB * NB / 4; e += NTH) {
                    const bool in = q0 + e * 4 / NB < a.Nq;
                    cp_async16(dst + 4 * e, src + (in ? 4 * e : 0), in ? 16 : 0);
                }
            } else {
                for (int e = tid; e < QTB * NB; e += NTH) {
                    const bool in = q0 + e / NB < a.Nq;
                    cp_async4(dst + e, src + (in ? e : 0), in ? 4 : 0);
                }
            }
        }
    };
#pragma unroll
    for (int i = 0; i < ST - 1; i++) {
        if (i < nu) issue(u0 + i, i);
        cp_async_commit();
    }
    int cur_bh = -1;
    uint2 SF[NKS][2], GF[2];
    float csc[2][2], cin[2][2], cmu[2][2], Nn = 0.f, hgs = 0.f;
    unsigned n_all = 0, n_le = 0, n_nf = 0, emin = 0xffffffffu, emax = 0u;
    double dsum = 0.0;
    for (int i = 0; i < nu; i++) {
        cp_async_wait<ST - 2>();
        __syncthreads();
        if (i + ST - 1 < nu) issue(u0 + i + ST - 1, (i + ST - 1) % ST);
        cp_async_commit();
        const int u = u0 + i, bh = u / tiles_q, q0 = (u - bh * tiles_q) * QTB;
        if (bh != cur_bh) {
            cur_bh = bh;
            const int bhc = bh * NB + warp;
            const uint2 *sf = sfrag + (size_t)bhc * NKS * 2 * 32 + lane;
#pragma unroll
            for (int s = 0; s < NKS; s++) SF[s][0] = sf[(2 * s) * 32], SF[s][1] = sf[(2 * s + 1) * 32];
            GF[0] = gfrag[(size_t)bhc * 64 + lane], GF[1] = gfrag[(size_t)bhc * 64 + 32 + lane];
            const float *C = consts + (size_t)bhc * NCONST;
#pragma unroll
            for (int nt = 0; nt < 2; nt++)
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    const int col = nt * 8 + 2 * t + e;
                    csc[nt][e] = C[col];
                    cin[nt][e] = C[16 + col] / C[col];
                    cmu[nt][e] = C[32 + col];
                }
            Nn = C[48];
            hgs = 0.5f * C[49];
            // Wait for these loads here, once per head: otherwise the first
            // mma of every 16 queries waited on their scoreboard, which the
            // loop's den loads reuse (26% of the stall samples, ncu).
            uint32_t w = __float_as_uint(Nn) ^ __float_as_uint(hgs) ^ GF[0].x ^ GF[0].y ^ GF[1].x ^ GF[1].y;
#pragma unroll
            for (int s = 0; s < NKS; s++) w ^= SF[s][0].x ^ SF[s][0].y ^ SF[s][1].x ^ SF[s][1].y;
#pragma unroll
            for (int nt = 0; nt < 2; nt++)
#pragma unroll
                for (int e = 0; e < 2; e++)
                    w ^= __float_as_uint(csc[nt][e]) ^ __float_as_uint(cin[nt][e]) ^ __float_as_uint(cmu[nt][e]);
            if (a.Nq < 0 && w == 0u) rec->applied = w; // never taken (Nq >= 0): only makes w, and so the waits, real
        }
        TI *stg = raw + (i % ST) * QTB * RLD;  // this tile's rows: q in, then the output in their place
        TI *srow = stg + warp * 16;              // this warp's slice of them
        const float *sden = dst_den + (i % ST) * QTB * NB + warp; // ONE: [QTB][NB] (rows past Nq: 0, not stored)
        // the one-pass call's loop two groups of 16 at a time (their loads and mma chains
        // interleave: apply -3% at 66,048 on an H100); the probe/run variant spills so
        constexpr int JUNROLL = ONE ? 2 : 1;
#pragma unroll JUNROLL
        for (int j = 0; j < QTB / 16; j++) {
            const int r0 = j * 16 + g;
            uint32_t P0[8], P1[8]; // q rows g, g+8 as f16 pairs (dims 2i, 2i+1), unscaled
            float f0, f1;
            {
                float x[16];
                load16(srow + r0 * RLD, x);
                f0 = a.sqrt_s;
                if (a.modify) {
                    float ss = 0.f;
#pragma unroll
                    for (int m = 0; m < 16; m++) ss += x[m] * x[m];
                    f0 = row_fac(ss, a);
                }
#pragma unroll
                for (int m = 0; m < 8; m++) P0[m] = packh(x[2 * m], x[2 * m + 1]);
                load16(srow + (r0 + 8) * RLD, x);
                f1 = a.sqrt_s;
                if (a.modify) {
                    float ss = 0.f;
#pragma unroll
                    for (int m = 0; m < 16; m++) ss += x[m] * x[m];
                    f1 = row_fac(ss, a);
                }
#pragma unroll
                for (int m = 0; m < 8; m++) P1[m] = packh(x[2 * m], x[2 * m + 1]);
            }
            // this lane's pairs: dims (2t, 2t+1) and (2t+8, 2t+9)
            uint32_t QL0 = P0[0], QH0 = P0[4], QL1 = P1[0], QH1 = P1[4];
#pragma unroll
            for (int k = 1; k < 4; k++)
                if (t == k) QL0 = P0[k], QH0 = P0[k + 4], QL1 = P1[k], QH1 = P1[k + 4];
            float acc2[2][2][4], acc1[2][4];
#pragma unroll
            for (int nt = 0; nt < 2; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++) acc2[0][nt][e] = acc2[1][nt][e] = acc1[nt][e] = 0.f;
#pragma unroll
            for (int s = 0; s < 12; s++) {
                const int ta = 2 * s, tb = 2 * s + 1;
                const int m1 = ta < 8 ? ta : ta - 8, m2 = tb < 8 ? tb : tb - 8;
                const uint32_t Q0 = s < 4 ? QL0 : QH0, Q1 = s < 4 ? QL1 : QH1;
                const __half2 p0a = *reinterpret_cast<const __half2 *>(&P0[m1 >> 1]);
                const __half2 p1a = *reinterpret_cast<const __half2 *>(&P1[m1 >> 1]);
                const __half2 p0b = *reinterpret_cast<const __half2 *>(&P0[m2 >> 1]);
                const __half2 p1b = *reinterpret_cast<const __half2 *>(&P1[m2 >> 1]);
                const uint32_t A[4] = {hmul2u(h2u((m1 & 1) ? __high2half2(p0a) : __low2half2(p0a)), Q0),
                                       hmul2u(h2u((m1 & 1) ? __high2half2(p1a) : __low2half2(p1a)), Q1),
                                       hmul2u(h2u((m2 & 1) ? __high2half2(p0b) : __low2half2(p0b)), Q0),
                                       hmul2u(h2u((m2 & 1) ? __high2half2(p1b) : __low2half2(p1b)), Q1)};
                mma16816<__half>(acc2[s & 1][0], A, SF[s][0].x, SF[s][0].y);
                mma16816<__half>(acc2[s & 1][1], A, SF[s][1].x, SF[s][1].y);
            }
            const uint32_t AQ[4] = {QL0, QL1, QH0, QH1};
            mma16816<__half>(acc1[0], AQ, SF[12][0].x, SF[12][0].y);
            mma16816<__half>(acc1[1], AQ, SF[12][1].x, SF[12][1].y);
            const int qa = q0 + r0, qb = qa + 8;
            float d0, d1;
            if constexpr (ONE) {
                d0 = sden[r0 * NB], d1 = sden[(r0 + 8) * NB];
            } else {
            float y[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
            mma16816<__half>(y[0], AQ, GF[0].x, GF[0].y);
            mma16816<__half>(y[1], AQ, GF[1].x, GF[1].y);
            const float2 a0 = __half22float2(*reinterpret_cast<const __half2 *>(&QL0));
            const float2 b0 = __half22float2(*reinterpret_cast<const __half2 *>(&QH0));
            const float2 a1 = __half22float2(*reinterpret_cast<const __half2 *>(&QL1));
            const float2 b1 = __half22float2(*reinterpret_cast<const __half2 *>(&QH1));
            float l0 = a0.x * cmu[0][0] + a0.y * cmu[0][1] + b0.x * cmu[1][0] + b0.y * cmu[1][1];
            float l1 = a1.x * cmu[0][0] + a1.y * cmu[0][1] + b1.x * cmu[1][0] + b1.y * cmu[1][1];
            const float g0 = a0.x * y[0][0] + a0.y * y[0][1] + b0.x * y[1][0] + b0.y * y[1][1];
            const float g1 = a1.x * y[0][2] + a1.y * y[0][3] + b1.x * y[1][2] + b1.y * y[1][3];
            d0 = f0 * (l0 + f0 * hgs * g0), d1 = f1 * (l1 + f1 * hgs * g1);
            d0 += __shfl_xor_sync(0xffffffffu, d0, 1);
            d1 += __shfl_xor_sync(0xffffffffu, d1, 1);
            d0 += __shfl_xor_sync(0xffffffffu, d0, 2);
            d1 += __shfl_xor_sync(0xffffffffu, d1, 2);
            d0 += Nn, d1 += Nn;
            }
            // rcp.approx (the correctly rounded __frcp_rn took ~20 instructions of ~350 per step)
            const float inv0 = rcp_approx(d0 <= a.eps ? a.eps : d0), inv1 = rcp_approx(d1 <= a.eps ? a.eps : d1);
            const float f0s = f0 * f0, f1s = f1 * f1;
#pragma unroll
            for (int nt = 0; nt < 2; nt++) {
                const int col = nt * 8 + 2 * t;
                float v[4];
#pragma unroll
                for (int e = 0; e < 4; e++)
                    v[e] = cin[nt][e & 1] + (e < 2 ? f0 : f1) * acc1[nt][e] +
                           (e < 2 ? f0s : f1s) * (acc2[0][nt][e] + acc2[1][nt][e]);
                // into the rows' own places in the stage (this warp's slice, read above)
                store2(srow + r0 * RLD + col, v[0] * csc[nt][0] * inv0, v[1] * csc[nt][1] * inv0);
                store2(srow + (r0 + 8) * RLD + col, v[2] * csc[nt][0] * inv1, v[3] * csc[nt][1] * inv1);
            }
            if (!ONE && t == 0) {
                const float dd[2] = {d0, d1};
                const int rr[2] = {qa, qb};
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    if (rr[e] >= a.Nq) continue;
                    n_all++;
                    if (!isfinite(dd[e])) {
                        n_nf++;
                        continue;
                    }
                    if (dd[e] <= a.eps) n_le++;
                    emin = min(emin, ord_enc(dd[e]));
                    emax = max(emax, ord_enc(dd[e]));
                    dsum += (double)dd[e];
                }
            }
        }
        // the tile's output rows, whole: 16-byte stores (the next issue into
        // this stage waits for the loop's first barrier)
        __syncthreads();
        {
            TI *ob = o + ((size_t)bh * a.Nq + q0) * D;
            for (int e = tid; e < QTB * CPR; e += NTH) {
                const int r = e / CPR, cc = e - r * CPR;
                if (q0 + r < a.Nq)
                    *reinterpret_cast<uint4 *>(ob + (size_t)r * D + cc * EPC) =
                        *reinterpret_cast<const uint4 *>(stg + r * RLD + cc * EPC);
            }
        }
    }
    cp_async_wait<0>();
    if constexpr (!ONE) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        n_all += __shfl_xor_sync(0xffffffffu, n_all, off);
        n_le += __shfl_xor_sync(0xffffffffu, n_le, off);
        n_nf += __shfl_xor_sync(0xffffffffu, n_nf, off);
        emin = min(emin, __shfl_xor_sync(0xffffffffu, emin, off));
        emax = max(emax, __shfl_xor_sync(0xffffffffu, emax, off));
        dsum += __shfl_xor_sync(0xffffffffu, dsum, off);
    }
    if (lane == 0 && n_all) {
        atomicAdd(&den->n, (unsigned long long)n_all);
        if (n_le) atomicAdd(&den->n_le_eps, (unsigned long long)n_le);
        if (n_nf) atomicAdd(&den->n_nonfinite, (unsigned long long)n_nf);
        atomicMin(reinterpret_cast<unsigned *>(&den->min), emin);
        atomicMax(reinterpret_cast<unsigned *>(&den->max), emax);
        atomicAdd(&den->sum, dsum);
    }
    }
}

// ---- host side ----

struct Plan {
    int NB, BH, BHC, split, tiles_q, units, gridB;
    int gridB1, den_tiles, den_units, gridD; // the one-pass call's apply and den pass
    size_t off_part, off_cnt, off_sfrag, off_gfrag, off_consts, off_den, off_probe, off_dens, total;
};

// Phase A without the conversion step: 16-bit input and no q/k modification.
bool fast_of(const tkc_taylor_args *a) { return a->dtype != TK_DTYPE_F32 && a->modify == 0; }

// Blocks per SM of the kernels: phase A, apply, apply of the one-pass call, den pass.
struct Occ {
    int a = -1, b = -1, b1 = -1, d = -1;
};

// Blocks per SM of the big kernels (shared memory attributes set once).
template <typename TI, int NB, bool FAST> int occupancy(Occ *out) {
    static Occ cache;
    if (cache.a < 0) {
        auto ka = small_reduce_kernel<TI, NB, FAST>;
        auto kb = small_apply_kernel<TI, NB, false>;
        auto kb1 = small_apply_kernel<TI, NB, true>;
        auto kd = small_den_kernel<TI, NB>;
        constexpr size_t sa = smem_a<TI, NB, FAST>(), sb = smem_b<TI, NB>(), sb1 = smem_b<TI, NB, true>();
        Occ o;
        if (cudaFuncSetAttribute(ka, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)sa) != cudaSuccess ||
            cudaFuncSetAttribute(kb, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)sb) != cudaSuccess ||
            cudaFuncSetAttribute(kb1, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)sb1) != cudaSuccess ||
            cudaOccupancyMaxActiveBlocksPerMultiprocessor(&o.a, ka, 64 * NB, sa) != cudaSuccess ||
            cudaOccupancyMaxActiveBlocksPerMultiprocessor(&o.b, kb, 32 * NB, sb) != cudaSuccess ||
            cudaOccupancyMaxActiveBlocksPerMultiprocessor(&o.b1, kb1, 32 * NB, sb1) != cudaSuccess ||
            cudaOccupancyMaxActiveBlocksPerMultiprocessor(&o.d, kd, DEN_TH, 0) != cudaSuccess || o.a < 1 ||
            o.b < 1 || o.b1 < 1 || o.d < 1)
            return 1;
        cache = o;
    }
    *out = cache;
    return 0;
}

template <typename TI, int NB> int occupancy_f(bool fast, Occ *o) {
    if constexpr (sizeof(TI) == 2) {
        if (fast) return occupancy<TI, NB, true>(o);
    }
    return occupancy<TI, NB, false>(o);
}

template <typename TI> int occupancy_nb(int NB, bool fast, Occ *o) {
    switch (NB) {
    case 1: return occupancy_f<TI, 1>(fast, o);
    case 2: return occupancy_f<TI, 2>(fast, o);
    case 4: return occupancy_f<TI, 4>(fast, o);
    default: return occupancy_f<TI, 8>(fast, o);
    }
}

int occupancy_of(const tkc_taylor_args *a, int NB, Occ *o) {
    if (a->dtype == TK_DTYPE_BF16) return occupancy_nb<__nv_bfloat16>(NB, fast_of(a), o);
    if (a->dtype == TK_DTYPE_F16) return occupancy_nb<__half>(NB, fast_of(a), o);
    return occupancy_nb<float>(NB, false, o);
}

// Key split: the fewest tiles per block times waves of blocks, ties to fewer splits.
bool plan_of(const tkc_taylor_args *a, int num_sms, Plan *p) {
    p->NB = a->blocks;
    p->BH = a->B * a->H;
    p->BHC = p->BH * p->NB;
    Occ occ;
    if (occupancy_of(a, p->NB, &occ)) return false;
    const int oa = occ.a, ob = occ.b;
    const int tiles = (a->Nk + KTA - 1) / KTA;
    int best = 1;
    long best_cost = -1;
    if (a->split > 0) {
        best = a->split;
    } else {
        const long slots = (long)num_sms * oa;
        for (int s = 1; s <= 128 && s <= (tiles > 0 ? tiles : 1); s++) {
            long waves = ((long)p->BH * s + slots - 1) / slots;
            long cost = waves * ((tiles + s - 1) / s);
            if (best_cost < 0 || cost < best_cost) best = s, best_cost = cost;
        }
    }
    if (tiles > 0 && best > tiles) best = tiles;
    if (best < 1) best = 1;
    p->split = best;
    p->tiles_q = (a->Nq + QTB - 1) / QTB;
    p->units = p->BH * p->tiles_q;
    long gb = (long)num_sms * ob;
    p->gridB = (int)(p->units < gb ? p->units : gb);
    gb = (long)num_sms * occ.b1;
    p->gridB1 = (int)(p->units < gb ? p->units : gb);
    const int den_rows = DEN_TH / p->NB * DEN_RPT;
    p->den_tiles = (a->Nq + den_rows - 1) / den_rows;
    p->den_units = p->BH * p->den_tiles;
    gb = (long)num_sms * occ.d;
    p->gridD = (int)(p->den_units < gb ? p->den_units : gb);
    size_t off = 0;
    p->off_part = off;
    off += align256((size_t)p->split * p->BHC * NTILE * 32 * sizeof(float4));
    p->off_cnt = off;
    off += align256((size_t)p->split * p->BH * sizeof(int));
    p->off_sfrag = off;
    off += align256((size_t)p->BHC * NKS * 2 * 32 * sizeof(uint2));
    p->off_gfrag = off;
    off += align256((size_t)p->BHC * 2 * 32 * sizeof(uint2));
    p->off_consts = off;
    off += align256((size_t)p->BHC * NCONST * sizeof(float));
    p->off_den = off;
    off += align256(sizeof(tkc_small_record));
    p->off_probe = off;
    off += align256((size_t)p->BHC * (a->probe_n > 0 ? a->probe_n : 1) * sizeof(float));
    p->off_dens = off;
    off += align256((size_t)p->BHC * (a->Nq > 0 ? a->Nq : 1) * sizeof(float));
    p->total = off;
    return true;
}

SArgs sargs_of(const tkc_taylor_args *a, const Plan &p) {
    SArgs s;
    s.q = a->q, s.k = a->k, s.v = a->v, s.mask = a->mask;
    s.H = a->H, s.Nq = a->Nq, s.Nk = a->Nk, s.BH = p.BH, s.split = p.split;
    s.modify = a->modify, s.power = a->power, s.clip = a->clip, s.eps = a->eps;
    s.sqrt_s = sqrtf(a->s);
    return s;
}

template <typename T> T *at(void *ws, size_t off) { return reinterpret_cast<T *>((unsigned char *)ws + off); }

template <typename TI, int NB>
int phase_a(const tkc_taylor_args *a, const Plan &p, void *ws, cudaStream_t st, char *err, size_t errlen) {
    SArgs s = sargs_of(a, p);
    bool fast = false;
    if constexpr (sizeof(TI) == 2) fast = fast_of(a);
    if (fast) {
        if constexpr (sizeof(TI) == 2)
            small_reduce_kernel<TI, NB, true><<<dim3(p.split, p.BH), 64 * NB, smem_a<TI, NB, true>(), st>>>(
                s, at<float4>(ws, p.off_part), at<int>(ws, p.off_cnt), at<tkc_small_record>(ws, p.off_den));
    } else {
        small_reduce_kernel<TI, NB, false><<<dim3(p.split, p.BH), 64 * NB, smem_a<TI, NB, false>(), st>>>(
            s, at<float4>(ws, p.off_part), at<int>(ws, p.off_cnt), at<tkc_small_record>(ws, p.off_den));
    }
    TKC_LAUNCHED("small_reduce_kernel", err, errlen);
    const int pn = a->probe_n > 0 && a->probe_rows ? a->probe_n : 0;
    small_sum_kernel<TI><<<p.BHC, 32 * SUM_WARPS, 0, st>>>(s, at<float4>(ws, p.off_part), at<int>(ws, p.off_cnt), NB, a->terms,
                                                fast ? a->s : 1.f, fast ? s.sqrt_s : 1.f, at<uint2>(ws, p.off_sfrag),
                                                at<uint2>(ws, p.off_gfrag), at<float>(ws, p.off_consts),
                                                at<tkc_small_record>(ws, p.off_den), a->probe_rows, pn,
                                                at<float>(ws, p.off_probe));
    TKC_LAUNCHED("small_sum_kernel", err, errlen);
    return 0;
}

// rule: NULL = the probe/run path (apply counts den itself, writes the
// workspace o); else the one-pass call (den from the den pass; gated: the
// device verdict decides whether o is written).
template <typename TI, int NB>
int apply_t(const tkc_taylor_args *a, const Plan &p, void *ws, cudaStream_t st, const tkc_small_rule *rule,
            int gated, char *err, size_t errlen) {
    if (p.units == 0) return 0;
    SArgs s = sargs_of(a, p);
    if (!rule) {
        tkc_small_rule none;
        memset(&none, 0, sizeof none);
        small_apply_kernel<TI, NB, false><<<p.gridB, 32 * NB, smem_b<TI, NB>(), st>>>(
            s, at<uint2>(ws, p.off_sfrag), at<uint2>(ws, p.off_gfrag), at<float>(ws, p.off_consts), (TI *)a->o,
            at<tkc_den_stats>(ws, p.off_den), p.units, p.tiles_q, nullptr, nullptr, none, 0);
    } else {
        small_apply_kernel<TI, NB, true><<<p.gridB1, 32 * NB, smem_b<TI, NB, true>(), st>>>(
            s, at<uint2>(ws, p.off_sfrag), at<uint2>(ws, p.off_gfrag), at<float>(ws, p.off_consts), (TI *)a->o,
            nullptr, p.units, p.tiles_q, at<float>(ws, p.off_dens), at<tkc_small_record>(ws, p.off_den), *rule,
            gated);
    }
    TKC_LAUNCHED("small_apply_kernel", err, errlen);
    return 0;
}

template <typename TI, int NB>
int den_t(const tkc_taylor_args *a, const Plan &p, void *ws, cudaStream_t st, char *err, size_t errlen) {
    if (p.den_units == 0) return 0;
    SArgs s = sargs_of(a, p);
    small_den_kernel<TI, NB><<<p.gridD, DEN_TH, 0, st>>>(s, at<float>(ws, p.off_consts), at<float>(ws, p.off_dens),
                                                          at<tkc_small_record>(ws, p.off_den), p.den_units,
                                                          p.den_tiles);
    TKC_LAUNCHED("small_den_kernel", err, errlen);
    return 0;
}

enum Step { STEP_A, STEP_APPLY, STEP_DEN };

template <typename TI, int NB>
int step_t(Step k, const tkc_taylor_args *a, const Plan &p, void *ws, cudaStream_t st, const tkc_small_rule *rule,
           int gated, char *err, size_t errlen) {
    return k == STEP_A     ? phase_a<TI, NB>(a, p, ws, st, err, errlen)
           : k == STEP_DEN ? den_t<TI, NB>(a, p, ws, st, err, errlen)
                           : apply_t<TI, NB>(a, p, ws, st, rule, gated, err, errlen);
}

template <typename TI>
int step_nb(Step k, const tkc_taylor_args *a, const Plan &p, void *ws, cudaStream_t st, const tkc_small_rule *rule,
            int gated, char *err, size_t errlen) {
    switch (p.NB) {
    case 1: return step_t<TI, 1>(k, a, p, ws, st, rule, gated, err, errlen);
    case 2: return step_t<TI, 2>(k, a, p, ws, st, rule, gated, err, errlen);
    case 4: return step_t<TI, 4>(k, a, p, ws, st, rule, gated, err, errlen);
    default: return step_t<TI, 8>(k, a, p, ws, st, rule, gated, err, errlen);
    }
}

int step(Step k, const tkc_taylor_args *a, const Plan &p, void *ws, cudaStream_t st, char *err, size_t errlen,
         const tkc_small_rule *rule = nullptr, int gated = 0) {
    if (a->dtype == TK_DTYPE_BF16) return step_nb<__nv_bfloat16>(k, a, p, ws, st, rule, gated, err, errlen);
    if (a->dtype == TK_DTYPE_F16) return step_nb<__half>(k, a, p, ws, st, rule, gated, err, errlen);
    return step_nb<float>(k, a, p, ws, st, rule, gated, err, errlen);
}

// The probe of a call leaves the whole result (phase A, o in the workspace,
// den counters) for the run that follows with the same arguments (same
// thread, same workspace): that run only reads the counters back.
struct Ticket {
    const void *ws;
    tkc_taylor_args a;
    int valid;
};
thread_local Ticket g_ticket;

bool same_call(const tkc_taylor_args *x, const tkc_taylor_args *y) {
    return x->q == y->q && x->o == y->o && x->k == y->k && x->v == y->v && x->mask == y->mask && x->dtype == y->dtype &&
           x->B == y->B && x->H == y->H && x->Nq == y->Nq && x->Nk == y->Nk && x->D == y->D && x->Dv == y->Dv &&
           x->blocks == y->blocks && x->terms == y->terms && x->s == y->s && x->modify == y->modify &&
           x->power == y->power && x->clip == y->clip && x->eps == y->eps && x->split == y->split &&
           x->probe_n == y->probe_n && x->probe_rows == y->probe_rows;
}

bool aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }

} // namespace

int tkc_small_handles(const tkc_taylor_args *a) {
    if (a->raw_out || a->blocks <= 0 || a->D != a->Dv || a->D != 16 * a->blocks) return 0;
    if (a->blocks != 1 && a->blocks != 2 && a->blocks != 4 && a->blocks != 8) return 0;
    if (a->terms < 1 || a->terms > 3) return 0;
    if (a->dtype != TK_DTYPE_BF16 && a->dtype != TK_DTYPE_F16 && a->dtype != TK_DTYPE_F32) return 0;
    if (!aligned16(a->q) || !aligned16(a->k) || !aligned16(a->v) || !aligned16(a->o)) return 0;
    return getenv("TKC_TAYLOR_GENERIC") == nullptr;
}

size_t tkc_small_workspace(const tkc_taylor_args *a, int num_sms) {
    Plan p;
    return plan_of(a, num_sms, &p) ? p.total : 0;
}

int tkc_small_probe(const tkc_taylor_args *a, void *ws, size_t ws_bytes, int num_sms, cudaStream_t st,
                    float *host_den, char *err, size_t errlen) {
    g_ticket.valid = 0;
    Plan p;
    if (!plan_of(a, num_sms, &p) || ws_bytes < p.total) {
        snprintf(err, errlen, "taylor (small) probe: bad layout");
        return 3;
    }
    int rc = step(STEP_A, a, p, ws, st, err, errlen); // the sum kernel computes the probe rows' den
    if (rc) return rc;
    // The apply kernel is queued before the host looks at the probe (a copy
    // into pageable memory blocks the host until it is done): it writes only
    // the workspace copy of o, so a failing probe still leaves the caller's o
    // untouched, and the GPU does not idle during the round trip.
    rc = step(STEP_APPLY, a, p, ws, st, err, errlen);
    if (rc) return rc;
    if (a->probe_n > 0)
        TKC_TRY(cudaMemcpyAsync(host_den, at<float>(ws, p.off_probe), (size_t)p.BHC * a->probe_n * sizeof(float),
                                cudaMemcpyDeviceToHost, st),
                err, errlen);
    TKC_TRY(cudaStreamSynchronize(st), err, errlen);
    g_ticket.ws = ws;
    g_ticket.a = *a;
    g_ticket.valid = 1;
    return 0;
}

int tkc_small_run(const tkc_taylor_args *a, void *ws, size_t ws_bytes, int num_sms, cudaStream_t st,
                  tkc_den_stats *den, char *err, size_t errlen) {
    const bool reuse = g_ticket.valid && g_ticket.ws == ws && same_call(&g_ticket.a, a);
    g_ticket.valid = 0;
    Plan p;
    if (!plan_of(a, num_sms, &p) || ws_bytes < p.total) {
        snprintf(err, errlen, "taylor (small): bad layout");
        return 3;
    }
    int rc = reuse ? 0 : step(STEP_A, a, p, ws, st, err, errlen);
    if (!rc && !reuse) rc = step(STEP_APPLY, a, p, ws, st, err, errlen);
    if (rc) return rc;
    TKC_TRY(cudaMemcpyAsync(den, at<tkc_den_stats>(ws, p.off_den), sizeof *den, cudaMemcpyDeviceToHost, st), err,
            errlen);
    TKC_TRY(cudaStreamSynchronize(st), err, errlen);
    tkc_den_decode(den);
    return 0;
}

int tkc_small_call(const tkc_taylor_args *a, const tkc_small_rule *rule, void *ws, size_t ws_bytes, int num_sms,
                   cudaStream_t st, tkc_small_record *host_rec, char *err, size_t errlen) {
    g_ticket.valid = 0;
    Plan p;
    if (!plan_of(a, num_sms, &p) || ws_bytes < p.total) {
        snprintf(err, errlen, "taylor (small): bad layout");
        return 3;
    }
    int rc = step(STEP_A, a, p, ws, st, err, errlen); // phase A, sum, the probe rows counted
    if (!rc) rc = step(STEP_DEN, a, p, ws, st, err, errlen);
    if (!rc) rc = step(STEP_APPLY, a, p, ws, st, err, errlen, rule, 1);
    if (rc) return rc;
    TKC_TRY(cudaMemcpyAsync(host_rec, at<tkc_small_record>(ws, p.off_den), sizeof *host_rec, cudaMemcpyDeviceToHost,
                            st),
            err, errlen);
    return 0;
}

int tkc_small_apply_ungated(const tkc_taylor_args *a, void *ws, size_t ws_bytes, int num_sms, cudaStream_t st,
                            char *err, size_t errlen) {
    Plan p;
    if (!plan_of(a, num_sms, &p) || ws_bytes < p.total) {
        snprintf(err, errlen, "taylor (small): bad layout");
        return 3;
    }
    tkc_small_rule none;
    memset(&none, 0, sizeof none);
    return step(STEP_APPLY, a, p, ws, st, err, errlen, &none, 0);
}

// ---- the hybrid far field (phase_a_only, g = 16): the generic tables -----
//
// The far field of a normalized hybrid call has one 16-dim k' (projected,
// modified and scaled by hybrid.cu's projection kernel) and v of Dv = 16*NB
// columns. Its [S | z] is the same degree-2 structure as above, with the
// feature fragments shared by every 16-column group of v:
//   far phase A: grid (key split, head). A warp owns a slot group (7 of the
//     28 slots: 0..23 degree-2 tiles (m, dims 0-7 | 8-15) as above, 24, 25
//     degree 1, 26 sum v, 27 the Gram matrix G and mu with A = K'^T) and
//     CSW = min(NB, 4) column groups of v: per 16 keys it builds each of its
//     feature fragments once (two shuffles, two HMUL2) and multiplies it by
//     CSW V'^T fragments. Masked keys are zero-filled by the copy (k' and v),
//     so they add nothing; N' counts the kept keys.
//   far tables: grid (column group, head): the splits summed in a fixed order
//     (deterministic), then S and z written in taylor.cu's layout: feature
//     f of the SPEC 3 order (1; k'_b; k'_m k'_b for m <= b lexicographic),
//     f16 [BH][Rpad][dvp] divided per column by colmax / 1024 (colmax = the
//     bits of the largest magnitude, NaN -> Inf; 0 -> scale 1), z in column
//     Dv, columns Dv+1.. and rows R.. zero. Weights: psi_a(x) = s^{|a|/2}
//     x^a / sqrt(a!) as the table's; the local kernel multiplies phi(q') by the
//     table's f16 weight w_h, so the diagonal features carry (1/2) / w_h here
//     (the product is exactly 1/2, as kappa_3 asks).
namespace {

constexpr int FSLOTS = 27;       // slots with a column group (the 28th, G|mu, has none)
constexpr int FKLD = 24;         // k' rows in shared memory (halves: 48 B, conflict-free ldmatrix)
constexpr int FSTAGES = 4;       // cp.async stages of 64 keys
constexpr int FT_THREADS = 512;  // far tables kernel (16 warps: two slot tiles each)
constexpr int FAR_R_MAX = 153;   // R(16, 3)

template <int NB> __host__ __device__ constexpr int far_csw() { return NB < 4 ? NB : 4; }
template <int NB> __host__ __device__ constexpr int far_warps() { return 4 * (NB / far_csw<NB>()); }
template <int NB> __host__ __device__ constexpr int far_vld() { return 16 * NB + 8; }
// partial records (32 float4 each) per (split, head): NB * 27 slot tiles, then G lo, G hi, mu
template <int NB> __host__ __device__ constexpr int far_recs() { return NB * FSLOTS + 3; }
template <int NB> constexpr size_t far_smem() {
    return (size_t)FSTAGES * KTA * (FKLD + far_vld<NB>()) * 2;
}

struct FArgs {
    const void *k, *v; // k' [BH][N][16], v [BH][N][Dv]
    const uint8_t *mask;
    int H, Nk, BH, split;
    unsigned *bad;     // or NULL: set to 1 when an element of v the kernel reads is NaN/Inf
};

// A far phase-A block's key tiles (split sp of head bh: tiles t0 .. t0+nt-1
// of 64 keys) and whether key slot r of a tile is copied. The key's mask byte
// is loaded two tiles before its copy is issued (one tile ahead, its latency
// stalled every step), by an unconditional load (clamped key) that nothing
// waits for before the use: raw() then kept().
struct FarKeys {
    const uint8_t *mb;
    int Nk, t0, nt, r;
    __device__ FarKeys(const FArgs &a, int sp, int bh, int r_) : Nk(a.Nk), r(r_) {
        mb = a.mask ? a.mask + (size_t)(bh / a.H) * a.Nk : nullptr;
        const int tiles = (a.Nk + KTA - 1) / KTA, per = (tiles + a.split - 1) / a.split;
        t0 = min(tiles, sp * per);
        nt = min(tiles, t0 + per) - t0;
    }
    __device__ int raw(int tile) const { return !mb || Nk == 0 ? 1 : (int)mb[min(tile * KTA + r, Nk - 1)]; }
    __device__ bool kept(int tile, int m) const { return tile < t0 + nt && tile * KTA + r < Nk && m != 0; }
};


// One slot group SG of a warp: 7 slots, CSW column groups; acc[j][c].
template <typename MT, int SG, int CSW>
__device__ __forceinline__ void far_slots(float (&acc)[7][CSW][4], float (&accg)[3][4], const uint32_t (&VA)[CSW][4],
                                          const uint32_t (&KA)[4], int t, bool gram) {
    constexpr uint32_t ONE = one2<MT>::v;
#pragma unroll
    for (int j = 0; j < 7; j++) {
        constexpr int base = 7 * SG;
        const int slot = base + j;
        uint32_t b0, b1;
        if (slot < 24) {
            const int m = slot < 8 ? slot : slot - 8, set = slot < 8 ? 0 : 1;
            const int src = (m & 7) * 4 + t;
            const uint32_t lo = __shfl_sync(0xffffffffu, m < 8 ? KA[0] : KA[1], src);
            const uint32_t hi = __shfl_sync(0xffffffffu, m < 8 ? KA[2] : KA[3], src);
            b0 = hmul2t<MT>(lo, KA[set]);
            b1 = hmul2t<MT>(hi, KA[set + 2]);
        } else if (slot == 24) {
            b0 = KA[0], b1 = KA[2];
        } else if (slot == 25) {
            b0 = KA[1], b1 = KA[3];
        } else if (slot == 26) {
            b0 = ONE, b1 = ONE;
        } else { // slot 27: G and mu (one warp of the group)
            if (gram) {
                mma16816<MT>(accg[0], KA, KA[0], KA[2]);
                mma16816<MT>(accg[1], KA, KA[1], KA[3]);
                mma16816<MT>(accg[2], KA, ONE, ONE);
            }
            continue;
        }
#pragma unroll
        for (int c = 0; c < CSW; c++) mma16816<MT>(acc[j][c], VA[c], b0, b1);
    }
}

// The four 16-key steps of one staged 64-key tile for slot group SG (one
// straight-line block: the next step's ldmatrix and shuffles can overlap
// this step's mma).
// chk: OR a NaN/Inf of the tile's v into nf. Every slot group's warps load the
// same V fragments (each element of the tile's columns once per group), so
// slot group SG tests register SG of each: the four groups cover all of them.
template <typename MT, int SG, int CSW, int VLD>
__device__ __forceinline__ void far_tile(const MT *Ks, const MT *Vs, int cbase, int lane, int t,
                                         float (&acc)[7][CSW][4], float (&accg)[3][4], bool gram, bool chk,
                                         unsigned &nf) {
#pragma unroll
    for (int ks = 0; ks < KTA / 16; ks++) {
        const int row = ks * 16 + (lane & 7) + 8 * (lane >> 4), col = 8 * ((lane >> 3) & 1);
        uint32_t KA[4], VA[CSW][4];
        ldsm_x4_t(KA, Ks + row * FKLD + col);
#pragma unroll
        for (int c = 0; c < CSW; c++) ldsm_x4_t(VA[c], Vs + row * VLD + cbase + c * 16 + col);
        if (chk) {
            static_assert(SG < 4, "four slot groups, four fragment registers");
#pragma unroll
            for (int c = 0; c < CSW; c++) nf |= nonfinite2<MT>(VA[c][SG]);
        }
        far_slots<MT, SG, CSW>(acc, accg, VA, KA, t, gram);
    }
}

template <typename TI, int NB>
__global__ void __launch_bounds__(32 * far_warps<NB>(), 1)
    far_reduce_kernel(FArgs a, float4 *__restrict__ part, int *__restrict__ cnt) {
    constexpr int DV = 16 * NB, CSW = far_csw<NB>(), NCH = NB / CSW, NTH = 32 * far_warps<NB>();
    constexpr int VLD = far_vld<NB>(), VCPR = DV / 8, CPR = 2 + VCPR; // 16-byte chunks per key: k', v
    constexpr int STG = KTA * (FKLD + VLD);                             // halves per stage
    extern __shared__ __align__(16) unsigned char sm[];
    TI *stage = reinterpret_cast<TI *>(sm); // [FSTAGES][ Ks[KTA][FKLD] | Vs[KTA][VLD] ]
    __shared__ int s_cnt;

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, t = lane & 3;
    const int ch = warp % NCH, sg = warp / NCH; // column half, slot group
    const int sp = blockIdx.x, bh = blockIdx.y;
    const TI *kb = reinterpret_cast<const TI *>(a.k) + (size_t)bh * a.Nk * 16;
    const TI *vb = reinterpret_cast<const TI *>(a.v) + (size_t)bh * a.Nk * DV;
    int my_cnt = 0;
    unsigned v_nf = 0; // a.bad: this thread saw a NaN/Inf in v (its share of the V fragments, far_tile)
    const bool chk = a.bad != nullptr;
    // copies: TPK threads per key (key r = tid / TPK), each every TPK-th 16-byte chunk of its row
    constexpr int TPK = NTH / KTA;
    static_assert(NTH % KTA == 0, "whole keys per thread group");
    const int r = tid / TPK, sub = tid - r * TPK;
    const FarKeys fk(a, sp, bh, r);
    const int t0 = fk.t0, nt = fk.nt;
    auto issue = [&](int tile, int stg, bool in) {
        const int key = in ? tile * KTA + r : 0;
        TI *Ks = stage + stg * STG, *Vs = Ks + KTA * FKLD;
        if (sub == 0) my_cnt += in;
#pragma unroll
        for (int cc = sub; cc < CPR; cc += TPK) {
            const TI *src = cc < 2 ? kb + (size_t)key * 16 + cc * 8 : vb + (size_t)key * DV + (cc - 2) * 8;
            TI *dst = cc < 2 ? Ks + r * FKLD + cc * 8 : Vs + r * VLD + (cc - 2) * 8;
            cp_async16(dst, src, in ? 16 : 0);
        }
    };

    if (tid == 0) s_cnt = 0;
    __syncthreads();
    float acc[7][CSW][4], accg[3][4];
#pragma unroll
    for (int j = 0; j < 7; j++)
#pragma unroll
        for (int c = 0; c < CSW; c++) acc[j][c][0] = acc[j][c][1] = acc[j][c][2] = acc[j][c][3] = 0.f;
#pragma unroll
    for (int j = 0; j < 3; j++) accg[j][0] = accg[j][1] = accg[j][2] = accg[j][3] = 0.f;
#pragma unroll
    for (int i = 0; i < FSTAGES - 1; i++) {
        if (i < nt) issue(t0 + i, i, fk.kept(t0 + i, fk.raw(t0 + i)));
        cp_async_commit();
    }
    int m_next = fk.raw(t0 + FSTAGES - 1), m_next2 = fk.raw(t0 + FSTAGES);
    const bool gram = ch == 0;
    for (int i = 0; i < nt; i++) {
        cp_async_wait<FSTAGES - 2>();
        __syncthreads(); // stage i is in; every warp is done with the stage refilled next
        if (i + FSTAGES - 1 < nt)
            issue(t0 + i + FSTAGES - 1, (i + FSTAGES - 1) % FSTAGES, fk.kept(t0 + i + FSTAGES - 1, m_next));
        cp_async_commit();
        m_next = m_next2;
        m_next2 = fk.raw(t0 + i + FSTAGES + 1);
        const TI *Ks = stage + (i % FSTAGES) * STG, *Vs = Ks + KTA * FKLD;
        switch (sg) { // outside the 16-key steps: each case is straight-line code
        case 0: far_tile<TI, 0, CSW, VLD>(Ks, Vs, ch * CSW * 16, lane, t, acc, accg, gram, chk, v_nf); break;
        case 1: far_tile<TI, 1, CSW, VLD>(Ks, Vs, ch * CSW * 16, lane, t, acc, accg, gram, chk, v_nf); break;
        case 2: far_tile<TI, 2, CSW, VLD>(Ks, Vs, ch * CSW * 16, lane, t, acc, accg, gram, chk, v_nf); break;
        default: far_tile<TI, 3, CSW, VLD>(Ks, Vs, ch * CSW * 16, lane, t, acc, accg, gram, chk, v_nf); break;
        }
    }
    cp_async_wait<0>();
    if (a.bad && __any_sync(0xffffffffu, v_nf != 0) && lane == 0) *a.bad = 1u;
    atomicAdd(&s_cnt, my_cnt);
    float4 *pb = part + (size_t)(sp * a.BH + bh) * far_recs<NB>() * 32 + lane;
#pragma unroll
    for (int j = 0; j < 7; j++) {
        const int slot = 7 * sg + j;
        if (slot < FSLOTS) {
#pragma unroll
            for (int c = 0; c < CSW; c++)
                pb[(size_t)((ch * CSW + c) * FSLOTS + slot) * 32] =
                    make_float4(acc[j][c][0], acc[j][c][1], acc[j][c][2], acc[j][c][3]);
        } else if (gram) {
#pragma unroll
            for (int g3 = 0; g3 < 3; g3++)
                pb[(size_t)(NB * FSLOTS + g3) * 32] = make_float4(accg[g3][0], accg[g3][1], accg[g3][2], accg[g3][3]);
        }
    }
    __syncthreads();
    if (tid == 0) cnt[sp * a.BH + bh] = s_cnt;
}

// Feature index of the pair (m, b), m <= b, in the SPEC 3 order (after 1 and the 16 k'_b).
__device__ __forceinline__ int far_pair(int m, int b) { return 17 + m * 16 - m * (m - 1) / 2 + (b - m); }

__device__ __forceinline__ float far_col_scale(unsigned bits) { // taylor.cu's col_scale
    float m = __uint_as_float(bits);
    return m > 0.f ? m * (1.f / 1024.f) : 1.f;
}

// The tables' second half (both record layouts): T holds features x (the
// block's 16 columns, z but z[0]) weighted; z[0] = N' (the kept keys of every
// split), then the column maxima and S | z in f16.
__device__ __forceinline__ void far_tables_emit(float (*T)[17], unsigned *cmax, const int *__restrict__ cnt,
                                                int split, int BH, int cs, int bh, int Dv, int R, int Rpad,
                                                __half *__restrict__ sh, unsigned *__restrict__ colmax) {
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, dvp = Dv + 8;
    if (cs == 0 && tid == FT_THREADS - 1) {
        long long n = 0;
        for (int sp = 0; sp < split; sp++) n += cnt[sp * BH + bh];
        T[0][16] = (float)n;
    }
    __syncthreads();
    const int ncol = cs == 0 ? 17 : 16;
    for (int c = warp; c < ncol; c += FT_THREADS / 32) {
        unsigned mx = 0u;
        for (int f = lane; f < R; f += 32) {
            float m = fabsf(T[f][c]);
            if (m != m) m = INFINITY;
            mx = max(mx, __float_as_uint(m));
        }
        mx = __reduce_max_sync(0xffffffffu, mx);
        if (lane == 0) cmax[c] = mx;
    }
    __syncthreads();
    unsigned *cmg = colmax + (size_t)bh * dvp;
    if (tid < 16) cmg[cs * 16 + tid] = cmax[tid];
    if (cs == 0 && tid >= 16 && tid < 24) cmg[Dv + tid - 16] = tid == 16 ? cmax[16] : 0u;
    __half *shb = sh + (size_t)bh * Rpad * dvp;
    for (int e = tid; e < Rpad * 2; e += FT_THREADS) { // 8 columns (16 B) per item
        const int f = e >> 1, c0 = 8 * (e & 1);
        uint32_t h[4];
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const float x0 = f < R ? T[f][c0 + 2 * i] / far_col_scale(cmax[c0 + 2 * i]) : 0.f;
            const float x1 = f < R ? T[f][c0 + 2 * i + 1] / far_col_scale(cmax[c0 + 2 * i + 1]) : 0.f;
            h[i] = packh(x0, x1);
        }
        *reinterpret_cast<uint4 *>(shb + (size_t)f * dvp + cs * 16 + c0) = make_uint4(h[0], h[1], h[2], h[3]);
    }
    if (cs == 0)
        for (int f = tid; f < Rpad; f += FT_THREADS) {
            const float z = f < R ? T[f][16] / far_col_scale(cmax[16]) : 0.f;
            *reinterpret_cast<uint4 *>(shb + (size_t)f * dvp + Dv) = make_uint4(packh(z, 0.f), 0u, 0u, 0u);
        }
}

// Grid (NB, BH): column group cs of head bh (cs 0 also the z column).
__global__ void __launch_bounds__(FT_THREADS)
    far_tables_kernel(const float4 *__restrict__ part, const int *__restrict__ cnt, int NB, int BH, int split, int R,
                      int Rpad, float s, float sqrt_s, float diag_w, __half *__restrict__ sh,
                      unsigned *__restrict__ colmax) {
    __shared__ float T[FAR_R_MAX][17]; // features x (16 columns of the group, z)
    __shared__ unsigned cmax[17];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t = lane & 3;
    const int cs = blockIdx.x, bh = blockIdx.y, Dv = 16 * NB;
    const int recs = NB * FSLOTS + 3, ntau = cs == 0 ? FSLOTS + 3 : FSLOTS;
    for (int e = tid; e < FAR_R_MAX * 17; e += FT_THREADS) (&T[0][0])[e] = 0.f;
    __syncthreads();
    for (int tau = warp; tau < ntau; tau += FT_THREADS / 32) {
        const int rec = tau < FSLOTS ? cs * FSLOTS + tau : NB * FSLOTS + (tau - FSLOTS);
        const float4 *src = part + (size_t)bh * recs * 32 + (size_t)rec * 32 + lane;
        const size_t stride = (size_t)BH * recs * 32;
        const float4 v = split_sum(src, stride, split, make_float4(0.f, 0.f, 0.f, 0.f));
        // (row, column) of the four values: S tiles have rows v column g / g+8
        // and columns features (b0 = 2t, b1 = 2t+1 of the tile's 8); G tiles
        // rows dim m = g / g+8, columns dim b
        if (tau < 24) {
            const int m = tau < 8 ? tau : tau - 8, b0 = 2 * t + (tau < 8 ? 0 : 8);
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const int b = b0 + e;
                if (b < m || far_pair(m, b) >= R) continue;
                const float w = b == m ? s * diag_w : s;
                const int f = far_pair(m, b);
                T[f][g] = (e ? v.y : v.x) * w;
                T[f][g + 8] = (e ? v.w : v.z) * w;
            }
        } else if (tau == 24 || tau == 25) {
            const int b0 = 2 * t + (tau == 24 ? 0 : 8);
            if (1 + b0 < R) {
                T[1 + b0][g] = v.x * sqrt_s, T[1 + b0][g + 8] = v.z * sqrt_s;
                T[2 + b0][g] = v.y * sqrt_s, T[2 + b0][g + 8] = v.w * sqrt_s;
            }
        } else if (tau == 26) {
            if (t == 0) T[0][g] = v.x, T[0][g + 8] = v.z;
        } else if (tau == 27 || tau == 28) { // z of degree 2: G_mb, m <= b
            const int b0 = 2 * t + (tau == 27 ? 0 : 8);
            const float vals[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int m = g + 8 * (e >> 1), b = b0 + (e & 1);
                if (b < m || far_pair(m, b) >= R) continue;
                T[far_pair(m, b)][16] = vals[e] * (b == m ? s * diag_w : s);
            }
        } else { // 29: mu (z of degree 1)
            if (t == 0 && R > 1) T[1 + g][16] = v.x * sqrt_s, T[9 + g][16] = v.z * sqrt_s;
        }
    }
    far_tables_emit(T, cmax, cnt, split, BH, cs, bh, Dv, R, Rpad, sh, colmax);
}

// ---- far phase A on wgmma (sm_90a; Dv = 128, the Flux head) ----
//
// far_reduce_wg_kernel, grid (key split, head), three warpgroups: warpgroup w
// owns feature rows 64 w .. 64 w + 63 of [S | z] (the SPEC 3 order, padded to
// 192 rows). Row f's A fragment is x[i0] * x[i1] over the tile's keys, x = k'
// with a 1 appended (dim 16) and a 0 (dim 17): f = 0 -> (16, 16), f = 1..16 ->
// (f - 1, 16), f = far_pair(m, b) -> (m, b), f >= R -> (17, 17). x is staged
// dim-major one tile ahead (key pairs as 32-bit words, a pair p = t + 4u at
// word 8 t + u so a thread's pairs of a tile are two 16-byte loads per dim):
// a thread's 16 A registers of a 64-key tile are 8 shared loads and 16 HMUL2.
// B is the staged V tile (MN-major, 128-byte swizzle, as the local kernel's
// P.V); z, the row sums, comes from a second m64n8 wgmma against a block of
// ones. Masked keys are zero-filled by the copy as in far_reduce_kernel (only
// f = 0 sees them as 1: its z is replaced by the count). Records, per (split,
// head): fp32 S by 16-column group [8][192][16], then z [192];
// far_tables_rows_kernel sums them (one column group per block). Same features in the same 16-bit type as far_reduce_kernel, whose
// A = K'^T product for G is exact where this one rounds k'_m k'_b first.
constexpr int FWG_ROWS = 192, FWG_THREADS = 384, FWG_STAGES = 6, FWG_DV = 128;
constexpr int FWG_XLD = 36;            // words per dim row of the staged x (16-byte rows, 2-way stores)
constexpr int FWG_XW = 18 * FWG_XLD;   // words per staged x tile
constexpr uint32_t FWG_VBYTES = KTA * FWG_DV * 2, FWG_STB = FWG_VBYTES + KTA * 32; // V + raw k' per stage
constexpr size_t fwg_smem() { return 1024 + (size_t)FWG_STAGES * FWG_STB + 1024 + 2 * FWG_XW * 4; }
__host__ __device__ constexpr size_t fwg_rec_floats() { return (size_t)FWG_ROWS * (FWG_DV + 1); }
static_assert(FWG_STB % 1024 == 0, "stages keep the 1024-byte alignment of the swizzle");

__device__ __forceinline__ uint32_t fwg_swz(int r, int cc, int R) {
    return (uint32_t)((cc >> 3) * R * 128 + r * 128 + (((cc & 7) ^ (r & 7)) << 4));
}

// (i0, i1) of feature row f (see above).
__device__ __forceinline__ void fwg_dims(int f, int R, int &i0, int &i1) {
    if (f >= R) {
        i0 = i1 = 17;
    } else if (f == 0) {
        i0 = i1 = 16;
    } else if (f <= 16) {
        i0 = f - 1, i1 = 16;
    } else {
        int m = 0;
        while (m < 15 && far_pair(m + 1, m + 1) <= f) m++;
        i0 = m, i1 = m + (f - far_pair(m, m));
    }
}

template <typename TI>
__global__ void __launch_bounds__(FWG_THREADS, 1)
    far_reduce_wg_kernel(FArgs a, float *__restrict__ part, int *__restrict__ cnt, int R) {
#if !(defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL))
    constexpr int DV = FWG_DV, CPR = 2 + DV / 8, TPK = FWG_THREADS / KTA, FS = FWG_STAGES;
    static_assert(FWG_THREADS % KTA == 0 && FS >= 4, "copy tiling, stages");
    extern __shared__ __align__(16) unsigned char smem_raw[];
    const uint32_t raw_a = smem_addr(smem_raw), base_a = (raw_a + 1023u) & ~1023u;
    unsigned char *base = smem_raw + (base_a - raw_a);
    const uint32_t ones_a = base_a + FS * FWG_STB;
    uint32_t *ones = reinterpret_cast<uint32_t *>(base + FS * FWG_STB);  // [256] (1, 1)
    uint32_t *xw = ones + 256;                                          // [2][18][XLD]
    __shared__ int s_cnt;

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wg = warp >> 2, wq = warp & 3;
    const int g = lane >> 2, t = lane & 3;
    const int sp = blockIdx.x, bh = blockIdx.y;
    const TI *kb = reinterpret_cast<const TI *>(a.k) + (size_t)bh * a.Nk * 16;
    const TI *vb = reinterpret_cast<const TI *>(a.v) + (size_t)bh * a.Nk * DV;
    const bool chk = a.bad != nullptr, active = 64 * wg < R; // rows of this warpgroup to write
    int my_cnt = 0;
    unsigned v_nf = 0;
    // copies: TPK threads per key, chunks sub, sub + TPK, ... of its 18 (2 of k', 16 of v)
    const int r = tid / TPK, sub = tid - r * TPK;
    const FarKeys fk(a, sp, bh, r);
    const int t0 = fk.t0, nt = fk.nt;
    auto issue = [&](int tile, int stg, bool in) {
        const int key = in ? tile * KTA + r : 0;
        unsigned char *st = base + stg * FWG_STB;
        if (sub == 0) my_cnt += in;
#pragma unroll
        for (int cc = sub; cc < CPR; cc += TPK) {
            if (cc < 2) cp_async16(st + FWG_VBYTES + r * 32 + cc * 16, kb + (size_t)key * 16 + cc * 8, in ? 16 : 0);
            else cp_async16(st + fwg_swz(r, cc - 2, KTA), vb + (size_t)key * DV + (cc - 2) * 8, in ? 16 : 0);
        }
    };
    // x of the tile in stage stg, dim-major, into buffer b: word (d, p) = x[2p][d] | x[2p+1][d] << 16
    auto stage_x = [&](int stg, int b) {
        const uint16_t *raw = reinterpret_cast<const uint16_t *>(base + stg * FWG_STB + FWG_VBYTES);
        for (int e = tid; e < 16 * KTA / 2; e += FWG_THREADS) {
            const int d = e & 15, p = e >> 4;
            xw[b * FWG_XW + d * FWG_XLD + (p & 3) * 8 + (p >> 2)] =
                (uint32_t)raw[2 * p * 16 + d] | ((uint32_t)raw[(2 * p + 1) * 16 + d] << 16);
        }
    };

    if (tid == 0) s_cnt = 0;
    if (tid < 256) ones[tid] = one2<TI>::v;
    if (tid < 2 * 2 * 32) { // dims 16 (ones) and 17 (zeros) of both buffers
        const int b = tid >> 6, d = 16 + ((tid >> 5) & 1), p = tid & 31;
        xw[b * FWG_XW + d * FWG_XLD + (p & 3) * 8 + (p >> 2)] = d == 16 ? one2<TI>::v : 0u;
    }
    fence_proxy_async(); // the ones are read by wgmma
    // this thread's A rows and their dims' word offsets (two 16-byte loads per dim and tile)
    int xo[4];
    {
        const int f_lo = 64 * wg + 16 * wq + g;
        int i0, i1, i2, i3;
        fwg_dims(f_lo, R, i0, i1);
        fwg_dims(f_lo + 8, R, i2, i3);
        xo[0] = i0 * FWG_XLD + 8 * t, xo[1] = i1 * FWG_XLD + 8 * t;
        xo[2] = i2 * FWG_XLD + 8 * t, xo[3] = i3 * FWG_XLD + 8 * t;
    }
    float acc[DV / 2], accz[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int i = 0; i < DV / 2; i++) acc[i] = 0.f;

    // Loads run FS - 2 tiles ahead, into the stage of tile i - 2: tile i's wgmma
    // is waited for one tile later (it runs under the next tile's barrier, x
    // staging and A fragments), so tile i - 1's may still read its stage.
#pragma unroll
    for (int i = 0; i < FS - 2; i++) {
        if (i < nt) issue(t0 + i, i, fk.kept(t0 + i, fk.raw(t0 + i)));
        cp_async_commit();
    }
    int m_next = fk.raw(t0 + FS - 2), m_next2 = fk.raw(t0 + FS - 1);
    cp_async_wait<FS - 3>(); // tile 0
    __syncthreads();
    if (nt > 0) stage_x(0, 0);
    const uint64_t d1 = gmma_desc(ones_a, 0, 1024);
    // A registers by tile parity (compile-time: the in-flight wgmma's stay untouched)
    auto step = [&](int i, uint32_t (&af)[4][4]) {
        const int stg = i % FS;
        cp_async_wait<FS - 4>(); // tiles <= i + 1
        fence_proxy_async();
        __syncthreads(); // tiles i, i+1 and x of tile i visible; tile i-2's wgmma done in every warp
        if (i + FS - 2 < nt) issue(t0 + i + FS - 2, (i + FS - 2) % FS, fk.kept(t0 + i + FS - 2, m_next));
        cp_async_commit();
        m_next = m_next2;
        m_next2 = fk.raw(t0 + i + FS);
        if (i + 1 < nt) stage_x((i + 1) % FS, (i + 1) & 1);
        // (every warpgroup: a wgmma on a branch is serialized; rows >= R are zeros)
        const uint32_t *xb = xw + (i & 1) * FWG_XW;
        uint4 x[4][2];
#pragma unroll
        for (int k = 0; k < 4; k++) {
            x[k][0] = *reinterpret_cast<const uint4 *>(xb + xo[k]);
            x[k][1] = *reinterpret_cast<const uint4 *>(xb + xo[k] + 4);
        }
        auto w = [&](int k, int u) { // word u (pair t + 4u) of dim slot k
            const uint4 &q = x[k][u >> 2];
            return (u & 3) == 0 ? q.x : (u & 3) == 1 ? q.y : (u & 3) == 2 ? q.z : q.w;
        };
#pragma unroll
        for (int s = 0; s < 4; s++) {
            af[s][0] = hmul2t<TI>(w(0, 2 * s), w(1, 2 * s));
            af[s][1] = hmul2t<TI>(w(2, 2 * s), w(3, 2 * s));
            af[s][2] = hmul2t<TI>(w(0, 2 * s + 1), w(1, 2 * s + 1));
            af[s][3] = hmul2t<TI>(w(2, 2 * s + 1), w(3, 2 * s + 1));
        }
        wgmma_fence();
        const uint64_t dv = gmma_desc(base_a + stg * FWG_STB, KTA * 128, 1024);
#pragma unroll
        for (int s = 0; s < 4; s++) {
            wgmma_rs_tb<TI, DV>(acc, af[s], dv + ((s * 16 * 128) >> 4));
            wgmma_rs_n8<TI>(accz, af[s], d1);
        }
        wgmma_commit();
        if (chk) { // this thread's v chunks of tile i (each element of the tile once)
            const unsigned char *st = base + stg * FWG_STB;
#pragma unroll
            for (int cc = sub; cc < CPR; cc += TPK) {
                if (cc < 2) continue;
                const uint4 u = *reinterpret_cast<const uint4 *>(st + fwg_swz(r, cc - 2, KTA));
                v_nf |= nonfinite2<TI>(u.x) | nonfinite2<TI>(u.y) | nonfinite2<TI>(u.z) |
                        nonfinite2<TI>(u.w);
            }
        }
        wgmma_wait<1>(); // tile i-1's: its A registers and stage are free
    };
    uint32_t af0[4][4], af1[4][4];
#pragma unroll
    for (int j = 0; j < DV / 2; j++) reg_fence(acc[j]);
#pragma unroll
    for (int j = 0; j < 4; j++) reg_fence(accz[j]);
    int i = 0;
    for (; i + 1 < nt; i += 2) {
        step(i, af0);
        step(i + 1, af1);
    }
    if (i < nt) step(i, af0);
    wgmma_wait<0>();
#pragma unroll
    for (int j = 0; j < DV / 2; j++) reg_fence(acc[j]);
#pragma unroll
    for (int j = 0; j < 4; j++) reg_fence(accz[j]);
    cp_async_wait<0>();
    if (a.bad && __any_sync(0xffffffffu, v_nf != 0) && lane == 0) *a.bad = 1u;
    atomicAdd(&s_cnt, my_cnt);
    if (active) {
        float *pb = part + (size_t)(sp * a.BH + bh) * fwg_rec_floats();
        const int f_lo = 64 * wg + 16 * wq + g, f_hi = f_lo + 8;
#pragma unroll
        for (int j = 0; j < DV / 8; j++) {
            float *pc = pb + (size_t)(j >> 1) * FWG_ROWS * 16 + 8 * (j & 1) + 2 * t; // column group j / 2
            if (f_lo < R) *reinterpret_cast<float2 *>(pc + f_lo * 16) = make_float2(acc[4 * j], acc[4 * j + 1]);
            if (f_hi < R) *reinterpret_cast<float2 *>(pc + f_hi * 16) = make_float2(acc[4 * j + 2], acc[4 * j + 3]);
        }
        if (t == 0) {
            if (f_lo < R) pb[(size_t)FWG_ROWS * DV + f_lo] = accz[0];
            if (f_hi < R) pb[(size_t)FWG_ROWS * DV + f_hi] = accz[2];
        }
    }
    __syncthreads();
    if (tid == 0) cnt[sp * a.BH + bh] = s_cnt;
#endif
}

// far_tables_kernel for far_reduce_wg_kernel's records: grid (column group, head).
__global__ void __launch_bounds__(FT_THREADS)
    far_tables_rows_kernel(const float *__restrict__ part, const int *__restrict__ cnt, int BH, int split, int R,
                           int Rpad, float s, float sqrt_s, float diag_w, __half *__restrict__ sh,
                           unsigned *__restrict__ colmax) {
    constexpr int Dv = FWG_DV;
    __shared__ float T[FAR_R_MAX][17]; // features x (16 columns of the group, z)
    __shared__ unsigned cmax[17];
    const int tid = threadIdx.x, cs = blockIdx.x, bh = blockIdx.y;
    const size_t rec = fwg_rec_floats(), stride = (size_t)BH * rec;
    const float *pb = part + (size_t)bh * rec;
    __shared__ float wf[FAR_R_MAX]; // the weight of feature f
    for (int f = tid; f < R; f += FT_THREADS) {
        int i0, i1;
        fwg_dims(f, R, i0, i1);
        wf[f] = f == 0 ? 1.f : f <= 16 ? sqrt_s : i0 == i1 ? s * diag_w : s;
    }
    __syncthreads();
    for (int e = tid; e < R * 17; e += FT_THREADS) {
        const int f = e / 17, c = e - f * 17;
        if (c == 16 && (cs != 0 || f == 0)) continue; // z: column group 0; z[0] is the count
        const float *src = c < 16 ? pb + ((size_t)cs * FWG_ROWS + f) * 16 + c : pb + (size_t)FWG_ROWS * Dv + f;
        T[f][c] = split_sum(src, stride, split, 0.f) * wf[f];
    }
    far_tables_emit(T, cmax, cnt, split, BH, cs, bh, Dv, R, Rpad, sh, colmax);
}

struct FarPlan {
    int NB, BH, split;
    bool wg; // far_reduce_wg_kernel (Dv 128 on sm_90a; TKC_FAR_MMA=1 keeps far_reduce_kernel)
    size_t off_part, off_cnt, total;
};

template <typename TI, int NB> int far_occupancy() {
    static int occ = -1;
    if (occ < 0) {
        auto k = far_reduce_kernel<TI, NB>;
        int o = 0;
        if (cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)far_smem<NB>()) !=
                cudaSuccess ||
            cudaOccupancyMaxActiveBlocksPerMultiprocessor(&o, k, 32 * far_warps<NB>(), far_smem<NB>()) !=
                cudaSuccess ||
            o < 1)
            return -1;
        occ = o;
    }
    return occ;
}

template <typename TI> int far_wg_occupancy() {
    static int occ = -1;
    if (occ < 0) {
        auto k = far_reduce_wg_kernel<TI>;
        int o = 0;
        if (cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)fwg_smem()) != cudaSuccess ||
            cudaOccupancyMaxActiveBlocksPerMultiprocessor(&o, k, FWG_THREADS, fwg_smem()) != cudaSuccess || o < 1)
            return -1;
        occ = o;
    }
    return occ;
}

template <typename TI> int far_occupancy_nb(int NB) {
    return NB == 2 ? far_occupancy<TI, 2>() : NB == 4 ? far_occupancy<TI, 4>() : far_occupancy<TI, 8>();
}

// Key split: the fewest (waves x (tiles per block + the partial records'
// write)) + the sum's read of them, in units of one 64-key tile of 128
// columns (~5 tiles' time to write a block's records at Dv 128, ~1 to read
// a split back); TKC_FAR_SPLIT overrides (for measurements).
bool far_plan(const tkc_taylor_args *a, int num_sms, FarPlan *p) {
    p->NB = a->Dv / 16;
    p->BH = a->B * a->H;
    p->wg = false;
    int occ = -1;
    if (p->NB == 8 && getenv("TKC_FAR_MMA") == nullptr) {
        occ = a->dtype == TK_DTYPE_BF16 ? far_wg_occupancy<__nv_bfloat16>() : far_wg_occupancy<__half>();
        p->wg = occ >= 1;
    }
    if (!p->wg)
        occ = a->dtype == TK_DTYPE_BF16 ? far_occupancy_nb<__nv_bfloat16>(p->NB) : far_occupancy_nb<__half>(p->NB);
    if (occ < 1) return false;
    const int tiles = (a->Nk + KTA - 1) / KTA;
    const double rec_w = 5.0 * p->NB / 8, rec_r = 1.0 * p->NB / 8;
    int best = 1;
    double best_cost = -1;
    const long slots = (long)num_sms * occ;
    for (int s = 1; s <= 64 && s <= (tiles > 0 ? tiles : 1); s++) {
        const long waves = ((long)p->BH * s + slots - 1) / slots;
        const double cost = (double)waves * ((tiles + s - 1) / s + rec_w) + rec_r * s;
        if (best_cost < 0 || cost < best_cost) best = s, best_cost = cost;
    }
    const char *env = getenv("TKC_FAR_SPLIT");
    if (env && atoi(env) > 0) best = atoi(env);
    if (tiles > 0 && best > tiles) best = tiles;
    if (best < 1) best = 1;
    p->split = best;
    size_t off = 0;
    p->off_part = off;
    const size_t rec = p->wg ? fwg_rec_floats() * sizeof(float) : (size_t)(p->NB * FSLOTS + 3) * 32 * sizeof(float4);
    off += align256((size_t)p->split * p->BH * rec);
    p->off_cnt = off;
    off += align256((size_t)p->split * p->BH * sizeof(int));
    p->total = off;
    return true;
}

template <typename TI, int NB>
int far_launch(const tkc_taylor_args *a, const FarPlan &p, int R, void *ws, cudaStream_t st, char *err, size_t errlen) {
    FArgs f;
    f.k = a->k, f.v = a->v, f.mask = a->mask, f.H = a->H, f.Nk = a->Nk, f.BH = p.BH, f.split = p.split;
    f.bad = a->bad;
    if (NB == 8 && p.wg) {
        far_reduce_wg_kernel<TI><<<dim3(p.split, p.BH), FWG_THREADS, fwg_smem(), st>>>(
            f, at<float>(ws, p.off_part), at<int>(ws, p.off_cnt), R);
        TKC_LAUNCHED("far_reduce_wg_kernel", err, errlen);
        return 0;
    }
    far_reduce_kernel<TI, NB><<<dim3(p.split, p.BH), 32 * far_warps<NB>(), far_smem<NB>(), st>>>(
        f, at<float4>(ws, p.off_part), at<int>(ws, p.off_cnt));
    TKC_LAUNCHED("far_reduce_kernel", err, errlen);
    return 0;
}

template <typename TI>
int far_launch_nb(const tkc_taylor_args *a, const FarPlan &p, int R, void *ws, cudaStream_t st, char *err,
                  size_t errlen) {
    return p.NB == 2 ? far_launch<TI, 2>(a, p, R, ws, st, err, errlen)
           : p.NB == 4 ? far_launch<TI, 4>(a, p, R, ws, st, err, errlen)
                       : far_launch<TI, 8>(a, p, R, ws, st, err, errlen);
}

} // namespace

int tkc_far_small_handles(const tkc_taylor_args *a) {
    if (!a->phase_a_only || a->D != 16 || a->blocks != 1 || a->terms < 1 || a->terms > 3) return 0;
    if (a->Dv != 32 && a->Dv != 64 && a->Dv != 128) return 0;
    if (a->dtype != TK_DTYPE_BF16 && a->dtype != TK_DTYPE_F16) return 0;
    if (a->modify != 0 || !aligned16(a->k) || !aligned16(a->v)) return 0;
    return getenv("TKC_HYBRID_FAR_GENERIC") == nullptr;
}

size_t tkc_far_small_workspace(const tkc_taylor_args *a, int num_sms) {
    FarPlan p;
    return far_plan(a, num_sms, &p) ? p.total : 0;
}

int tkc_far_small_run(const tkc_taylor_args *a, void *ws, size_t ws_bytes, int num_sms, cudaStream_t st, void *sh,
                      unsigned *colmax, int R, int Rpad, char *err, size_t errlen) {
    FarPlan p;
    if (!far_plan(a, num_sms, &p) || ws_bytes < p.total || R > FAR_R_MAX || Rpad < R) {
        snprintf(err, errlen, "hybrid far field (small): bad layout");
        return 3;
    }
    if (p.BH == 0) return 0;
    int rc = a->dtype == TK_DTYPE_BF16 ? far_launch_nb<__nv_bfloat16>(a, p, R, ws, st, err, errlen)
                                       : far_launch_nb<__half>(a, p, R, ws, st, err, errlen);
    if (rc) return rc;
    const float sqrt_s = sqrtf(a->s);
    // the table's f16 weight of a diagonal feature (taylor.cu's build_table: 1/sqrt(2))
    const float diag_w = 0.5f / __half2float(__float2half((float)(1.0 / sqrt(2.0))));
    if (p.wg)
        far_tables_rows_kernel<<<dim3(p.NB, p.BH), FT_THREADS, 0, st>>>(at<float>(ws, p.off_part),
                                                                        at<int>(ws, p.off_cnt), p.BH, p.split, R, Rpad,
                                                                        a->s, sqrt_s, diag_w, (__half *)sh, colmax);
    else
        far_tables_kernel<<<dim3(p.NB, p.BH), FT_THREADS, 0, st>>>(at<float4>(ws, p.off_part), at<int>(ws, p.off_cnt),
                                                                   p.NB, p.BH, p.split, R, Rpad, a->s, sqrt_s, diag_w,
                                                                   (__half *)sh, colmax);
    TKC_LAUNCHED("far_tables_kernel", err, errlen);
    return 0;
}

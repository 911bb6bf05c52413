// taylor.cu -- Taylor attention (SPEC 3), fused, features never in device memory.
//
// Per featurized slice c of a head (d = D/b, dv = Dv/b), with q', k' the
// modified rows scaled by sqrt(s), psi_a(x) = x'^a / sqrt(a!):
//   phase A (reduce): grid (feature chunk of 128, key split, head*slice).
//     k and v tiles of 64 keys go to shared memory (converted to fp32), the
//     feature tile Phi[128 feats][64 keys] is built there in f16, and one
//     mma.sync product gives part += Phi . [v | 1 | 0..] (the ones column is z).
//   reduce: the key splits are summed in a fixed order (deterministic) and
//     each column is stored in f16 scaled by its largest magnitude / 1024.
//   phase B (apply): grid (64-query tile, head*slice). Phi_q chunks of 64
//     features are built in shared memory and [num | den] += Phi_q . [S | z]
//     accumulates in registers; the epilogue divides, clamps den <= eps and
//     counts the denominators for the rule (SPEC 3.1).
//   probe: den of sampled queries straight from the kernel,
//     den_i = sum_j kappa_P(q'_i . k'_j), which equals psi(q')·z; it runs
//     before phase A so a failing call stops before the expensive half.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <type_traits>

#include "cuda_internal.h"
#include "taylor_small.h"

namespace {

using namespace tkc;

// One feature: w * x[i0] * x[i1] * x[i2]; an unused index points at the
// slot d, which holds 1 (degree < 3). 10 bits per index.
struct Feat {
    uint16_t off[3]; // index * 32: offsets (in half2) into the pair table XH[(d+1)][32]
    __half w;
};
static_assert(sizeof(Feat) == 8, "tkc_far_tables documents 8-byte feature entries");

constexpr int FA = 128; // features per phase-A block
constexpr int FB = 128; // features per phase-B chunk
constexpr int KTA = 64; // keys per phase-A tile
constexpr int QTB = 64; // queries per phase-B block
constexpr int PHI_LD = 72;
constexpr int MAXDEG = 3; // fused path: P <= 4

size_t align256(size_t x) { return (x + 255) & ~(size_t)255; }

struct Layout {
    int d, dv, dvp, R, Rpad, BHC, split, nfa;
    size_t off_tab, off_part, off_colmax, off_sh, off_den, off_probe, total;
};

int auto_split(const tkc_taylor_args *a, int nfa, int BHC, int num_sms) {
    if (a->split > 0) return a->split;
    int tiles = (a->Nk + KTA - 1) / KTA;
    long blocks = (long)nfa * BHC;
    long want = 4L * num_sms;
    int split = (int)((want + blocks - 1) / blocks);
    if (split < 1) split = 1;
    if (split > tiles) split = tiles;
    if (split > 64) split = 64;
    return split;
}

constexpr int PROBE_KEYS = 1024; // keys per probe block

bool layout_of(const tkc_taylor_args *a, int num_sms, Layout *L) {
    if (a->blocks <= 0 || a->D % a->blocks || a->Dv % a->blocks) return false;
    L->d = a->D / a->blocks;
    L->dv = a->Dv / a->blocks;
    if (L->d > 256 || L->dv % 8 || L->dv > 128 || a->terms < 1 || a->terms > MAXDEG + 1) return false;
    int64_t R = tkc_feature_count(L->d, a->terms);
    if (R <= 0 || R > (1 << 24)) return false;
    L->R = (int)R;
    L->dvp = L->dv + 8;
    L->nfa = (L->R + FA - 1) / FA;
    L->Rpad = L->nfa * FA;
    L->BHC = a->B * a->H * a->blocks;
    L->split = auto_split(a, L->nfa, L->BHC, num_sms);
    size_t off = 0;
    L->off_tab = off;
    off += align256((size_t)L->Rpad * sizeof(Feat));
    L->off_part = off;
    off += align256((size_t)L->split * L->BHC * L->Rpad * L->dvp * sizeof(float));
    L->off_colmax = off;
    off += align256((size_t)L->BHC * L->dvp * sizeof(unsigned));
    L->off_sh = off;
    off += align256((size_t)L->BHC * L->Rpad * L->dvp * sizeof(__half));
    L->off_den = off;
    off += align256(sizeof(tkc_den_stats));
    L->off_probe = off;
    int nchunk = (a->Nk + PROBE_KEYS - 1) / PROBE_KEYS;
    int pn = a->probe_n > 0 ? a->probe_n : 0;
    off += align256((size_t)L->BHC * pn * (nchunk + 1) * sizeof(float));
    L->total = off;
    return true;
}

// The SPEC 3 order: by degree, then lexicographic over non-decreasing tuples.
void build_table(int d, int P, int Rpad, Feat *out) {
    int n = 0;
    for (int deg = 0; deg < P; deg++) {
        int t[8] = {0};
        for (;;) {
            double fact = 1.0;
            int run = 0;
            for (int i = 0; i < MAXDEG; i++) {
                out[n].off[i] = (uint16_t)(32 * (i < deg ? t[i] : d));
                if (i < deg) {
                    run = (i > 0 && t[i] == t[i - 1]) ? run + 1 : 1;
                    fact *= run;
                }
            }
            out[n].w = __float2half((float)(1.0 / sqrt(fact)));
            n++;
            int i = deg - 1; // next non-decreasing tuple of length deg
            while (i >= 0 && t[i] == d - 1) i--;
            if (i < 0) break;
            t[i]++;
            for (int k = i + 1; k < deg; k++) t[k] = t[i];
        }
    }
    for (; n < Rpad; n++) { // padding features are zero
        for (int i = 0; i < MAXDEG; i++) out[n].off[i] = (uint16_t)(32 * d);
        out[n].w = __float2half(0.f);
    }
}

// Factor that turns a raw row into x' (SPEC 3.3 modification, then sqrt(s)).
__device__ __forceinline__ float row_factor(const float *x, int n, int modify, float power,
                                            float clip, float eps, float sqrt_s) {
    float f = sqrt_s;
    if (modify) {
        float ss = 0.f;
        for (int i = 0; i < n; i++) ss += x[i] * x[i];
        float nrm = sqrtf(ss) + eps;
        if (modify == 1) {
            f /= nrm;
        } else {
            if (power > 0.f) f *= powf(nrm, -power);
            if (clip > 0.f) f *= fminf(1.f, clip / nrm);
        }
    }
    return f;
}

// The feature value of a row pair; XHp = XH + pair (the pair table [(d+1)][32]).
__device__ __forceinline__ __half2 feature2(const Feat &t, const __half2 *XHp) {
    const __half2 a = XHp[t.off[0]];
    const __half2 b = XHp[t.off[1]];
    const __half2 c = XHp[t.off[2]];
    return __hmul2(__hmul2(a, b), __hmul2(c, __half2half2(t.w)));
}

// 8 consecutive elements -> fp32 (16-byte loads for 16-bit types).
template <typename TI> __device__ __forceinline__ void load8(const TI *p, float *out) {
    uint4 u = *reinterpret_cast<const uint4 *>(p);
    const TI *h = reinterpret_cast<const TI *>(&u);
#pragma unroll
    for (int i = 0; i < 8; i++) out[i] = elem<TI>::to_f(h[i]);
}
template <> __device__ __forceinline__ void load8<float>(const float *p, float *out) {
    float4 a = *reinterpret_cast<const float4 *>(p), b = *reinterpret_cast<const float4 *>(p + 4);
    out[0] = a.x, out[1] = a.y, out[2] = a.z, out[3] = a.w;
    out[4] = b.x, out[5] = b.y, out[6] = b.z, out[7] = b.w;
}

struct KArgs {
    const void *q, *k, *v;
    const uint8_t *mask;
    int H, Nq, Nk, D, Dv, b, d, dv, dvp, R, Rpad, BHC, split;
    int modify;
    float power, clip, eps, sqrt_s;
};

template <typename TI>
__device__ __forceinline__ float ld(const TI *p) {
    return elem<TI>::to_f(*p);
}

// Rows [64][d+1] fp32 (Xf) -> half2 pairs XH[(d+1)][32] scaled by rowf; slot d = 1.
__device__ __forceinline__ void pack_pairs(const float *Xf, const float *rowf, __half2 *XH, int d,
                                           int tid, int nthr) {
    const int dp1 = d + 1;
    for (int e = tid; e < dp1 * 32; e += nthr) {
        int i = e >> 5, pr = e & 31;
        XH[e] = i == d ? __floats2half2_rn(1.f, 1.f)
                       : __floats2half2_rn(Xf[(2 * pr) * dp1 + i] * rowf[2 * pr],
                                           Xf[(2 * pr + 1) * dp1 + i] * rowf[2 * pr + 1]);
    }
}

template <typename TI, int DS, int DV>
__global__ void __launch_bounds__(256) taylor_reduce_kernel(KArgs a, const Feat *__restrict__ tab,
                                                            float *__restrict__ part) {
    extern __shared__ __align__(16) unsigned char sm[];
    constexpr int NT = DV / 8 + 1, DVP = DV + 8, dp1 = DS + 1, VLD = DVP + 8;
    __half *Phi = reinterpret_cast<__half *>(sm);                  // [FA][PHI_LD]
    __half *Vh = Phi + FA * PHI_LD;                                 // [KTA][VLD]
    __half2 *KH = reinterpret_cast<__half2 *>(Vh + KTA * VLD);      // [d+1][32]
    float *Kf = reinterpret_cast<float *>(KH + dp1 * 32);           // [KTA][d+1]
    Feat *T = reinterpret_cast<Feat *>(Kf + KTA * dp1);             // [FA]
    float *rowf = reinterpret_cast<float *>(T + FA);                // [KTA]
    int *valid = reinterpret_cast<int *>(rowf + KTA);               // [KTA]

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int fc = blockIdx.x, sp = blockIdx.y, bhc = blockIdx.z;
    const int c = bhc % a.b, bh = bhc / a.b, bidx = bh / a.H;
    const TI *kb = reinterpret_cast<const TI *>(a.k) + (size_t)bh * a.Nk * a.D + c * DS;
    const TI *vb = reinterpret_cast<const TI *>(a.v) + (size_t)bh * a.Nk * a.Dv + c * DV;
    const uint8_t *mb = a.mask ? a.mask + (size_t)bidx * a.Nk : nullptr;

    for (int i = tid; i < FA; i += 256) T[i] = tab[fc * FA + i];
    // features past R are zero padding: a warp whose 16 rows are all padding
    // builds and multiplies nothing (its part rows stay zero)
    const int R16 = (a.R + 15) & ~15;
    // (slice dims <= 16 only: R = 153 at d = 16, P = 3 pads to 256; at d = 32 the
    // padding is small and the guards cost registers in the hot loops)
    constexpr bool PADSKIP = DS <= 16;
    const bool live = !PADSKIP || fc * FA + warp * 16 < a.R;
    const bool full = !PADSKIP || fc * FA + FA <= R16;
    const int tiles = (a.Nk + KTA - 1) / KTA;
    const int per = (tiles + a.split - 1) / a.split;
    const int t0 = sp * per, t1 = min(tiles, t0 + per);

    float acc[NT][4];
#pragma unroll
    for (int i = 0; i < NT; i++) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;

    for (int tt = t0; tt < t1; tt++) {
        const int key0 = tt * KTA;
        for (int r = tid; r < KTA; r += 256) {
            int key = key0 + r;
            valid[r] = key < a.Nk && (!mb || mb[key]);
        }
        for (int e = tid; e < KTA * DS / 8; e += 256) {
            int r = e / (DS / 8), cc = (e % (DS / 8)) * 8, key = key0 + r;
            float x[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            if (key < a.Nk) load8(kb + (size_t)key * a.D + cc, x);
#pragma unroll
            for (int i = 0; i < 8; i++) Kf[r * dp1 + cc + i] = x[i];
        }
        __syncthreads();
        for (int e = tid; e < KTA * DVP / 8; e += 256) {
            int r = e / (DVP / 8), cc = (e % (DVP / 8)) * 8, key = key0 + r;
            float x[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            if (valid[r]) {
                if (cc < DV) load8(vb + (size_t)key * a.Dv + cc, x);
                else x[0] = 1.f; // the ones column: z
            }
            uint4 u;
            __half2 *h = reinterpret_cast<__half2 *>(&u);
#pragma unroll
            for (int i = 0; i < 4; i++) h[i] = __floats2half2_rn(x[2 * i], x[2 * i + 1]);
            *reinterpret_cast<uint4 *>(Vh + r * VLD + cc) = u;
        }
        if (tid < KTA) rowf[tid] = row_factor(Kf + tid * dp1, DS, a.modify, a.power, a.clip, a.eps, a.sqrt_s);
        __syncthreads();
        pack_pairs(Kf, rowf, KH, DS, tid, 256);
        __syncthreads();
#pragma unroll 4
        for (int i = 0; i < FA / 8; i++) {
            int f = warp + 8 * i;
            if (full || fc * FA + f < R16) // rows past R rounded to 16 belong to warps that skip their mma
                *reinterpret_cast<__half2 *>(Phi + f * PHI_LD + 2 * lane) = feature2(T[f], KH + lane);
        }
        __syncthreads();
        if (live) {
#pragma unroll
        for (int ks = 0; ks < KTA / 16; ks++) {
            uint32_t af[4];
            ldsm_x4(af, Phi + (warp * 16 + (lane & 7) + 8 * ((lane >> 3) & 1)) * PHI_LD + ks * 16 +
                            8 * (lane >> 4));
#pragma unroll
            for (int nt = 0; nt < NT; nt++) {
                uint32_t bf[2];
                ldsm_x2_t(bf, Vh + (ks * 16 + (lane & 7) + 8 * ((lane >> 3) & 1)) * VLD + nt * 8);
                mma16816<__half>(acc[nt], af, bf[0], bf[1]);
            }
        }
        }
        __syncthreads();
    }
    float *pb = part + ((size_t)sp * a.BHC + bhc) * a.Rpad * DVP;
    int f_lo = fc * FA + warp * 16 + (lane >> 2);
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
        int col = nt * 8 + 2 * (lane & 3);
        *reinterpret_cast<float2 *>(pb + (size_t)f_lo * DVP + col) = make_float2(acc[nt][0], acc[nt][1]);
        *reinterpret_cast<float2 *>(pb + (size_t)(f_lo + 8) * DVP + col) = make_float2(acc[nt][2], acc[nt][3]);
    }
}

// Sum the splits in order into split 0 (fixed order: deterministic); per-column
// max magnitude. Grid (element blocks, head*slice); consecutive threads read
// consecutive elements, the column maxima meet in shared memory first.
constexpr int MAX_DVP = 136;
__global__ void __launch_bounds__(256) taylor_sum_kernel(float *part, unsigned *colmax, int split, int BHC,
                                                         int Rpad, int dvp) {
    __shared__ unsigned cmax[MAX_DVP];
    const int bhc = blockIdx.y, tid = threadIdx.x;
    const size_t n = (size_t)Rpad * dvp, stride = (size_t)BHC * n;
    float *p0 = part + (size_t)bhc * n;
    for (int i = tid; i < dvp; i += blockDim.x) cmax[i] = 0u;
    __syncthreads();
    for (size_t e = (size_t)blockIdx.x * blockDim.x + tid; e < n; e += (size_t)gridDim.x * blockDim.x) {
        float s = p0[e];
        for (int sp = 1; sp < split; sp++) s += p0[sp * stride + e];
        if (split > 1) p0[e] = s;
        float m = fabsf(s);
        if (m != m) m = INFINITY; // NaN: make the column's scale non-finite too
        if (m > 0.f) atomicMax(&cmax[e % dvp], __float_as_uint(m));
    }
    __syncthreads();
    for (int i = tid; i < dvp; i += blockDim.x)
        if (cmax[i]) atomicMax(colmax + bhc * dvp + i, cmax[i]);
}

__device__ __forceinline__ float col_scale(unsigned bits) {
    float m = __uint_as_float(bits);
    return m > 0.f ? m * (1.f / 1024.f) : 1.f;
}

__global__ void taylor_pack_kernel(const float *part, const unsigned *colmax, __half *sh, int BHC,
                                   int Rpad, int dvp) {
    int bhc = blockIdx.y;
    size_t n = (size_t)Rpad * dvp;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        int col = (int)(i % dvp);
        float sc = col_scale(colmax[bhc * dvp + col]);
        sh[(size_t)bhc * n + i] = __float2half(part[(size_t)bhc * n + i] / sc);
    }
}

template <typename TI, typename TO, int DS, int DV, bool RAW>
__global__ void __launch_bounds__(128) taylor_apply_kernel(KArgs a, const Feat *__restrict__ tab,
                                                           const __half *__restrict__ sh,
                                                           const unsigned *__restrict__ colmax,
                                                           TO *__restrict__ o, tkc_den_stats *den) {
    extern __shared__ __align__(16) unsigned char sm[];
    constexpr int NT = DV / 8 + 1, DVP = DV + 8, dp1 = DS + 1, SLD = DVP + 8;
    __half *Phi = reinterpret_cast<__half *>(sm);              // [FB][PHI_LD]: [feature][query]
    __half *Sb = Phi + FB * PHI_LD;                             // [2][FB][SLD]
    __half2 *QH = reinterpret_cast<__half2 *>(Sb + 2 * FB * SLD); // [d+1][32]
    float *Qf = reinterpret_cast<float *>(QH + dp1 * 32);      // [QTB][d+1]
    Feat *T = reinterpret_cast<Feat *>(Qf + QTB * dp1);         // [2][FB]
    float *rowf = reinterpret_cast<float *>(T + 2 * FB);        // [QTB]
    __shared__ unsigned long long s_le, s_nf, s_n;
    __shared__ unsigned s_min, s_max;
    __shared__ double s_sum;

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int qt = blockIdx.x, bhc = blockIdx.y;
    const int c = bhc % a.b, bh = bhc / a.b;
    const TI *qb = reinterpret_cast<const TI *>(a.q) + (size_t)bh * a.Nq * a.D + c * DS;
    const __half *shb = sh + (size_t)bhc * a.Rpad * DVP;
    const int nchunks = (a.R + FB - 1) / FB;
    const int R16 = (a.R + 15) & ~15;
    constexpr int cpr = DVP / 8; // 16-byte chunks per S row
    auto issue = [&](int ch) {
        __half *dst = Sb + (ch & 1) * FB * SLD;
        for (int e = tid; e < FB * cpr; e += 128) {
            int r = e / cpr, cc = e - r * cpr;
            cp_async16(dst + r * SLD + cc * 8, shb + (size_t)(ch * FB + r) * DVP + cc * 8, 16);
        }
        for (int i = tid; i < FB; i += 128) T[(ch & 1) * FB + i] = tab[ch * FB + i];
    };
    if (tid == 0) {
        s_le = s_nf = s_n = 0;
        s_min = 0xffffffffu;
        s_max = 0;
        s_sum = 0.0;
    }
    issue(0);
    cp_async_commit();
    for (int e = tid; e < QTB * DS / 8; e += 128) {
        int r = e / (DS / 8), cc = (e % (DS / 8)) * 8, qi = qt * QTB + r;
        float x[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        if (qi < a.Nq) load8(qb + (size_t)qi * a.D + cc, x);
#pragma unroll
        for (int i = 0; i < 8; i++) Qf[r * dp1 + cc + i] = x[i];
    }
    __syncthreads();
    if (tid < QTB) rowf[tid] = row_factor(Qf + tid * dp1, DS, a.modify, a.power, a.clip, a.eps, a.sqrt_s);
    __syncthreads();
    pack_pairs(Qf, rowf, QH, DS, tid, 128);

    float acc[NT][4];
#pragma unroll
    for (int i = 0; i < NT; i++) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
    for (int ch = 0; ch < nchunks; ch++) {
        __syncthreads(); // QH ready / previous MMA done with Phi and Sb[(ch+1)&1]
        if (ch + 1 < nchunks) issue(ch + 1);
        cp_async_commit();
        const Feat *Tc = T + (ch & 1) * FB;
        // features past R rounded to 16 (last chunk only): not built, not
        // multiplied; full chunks keep the unguarded loops
        constexpr bool PADSKIP = DS <= 16; // as in phase A
        const int nlive = PADSKIP ? min(FB, R16 - ch * FB) : FB;
        if (nlive == FB) {
#pragma unroll 4
            for (int i = 0; i < FB / 4; i++) {
                int f = warp + 4 * i;
                *reinterpret_cast<__half2 *>(Phi + f * PHI_LD + 2 * lane) = feature2(Tc[f], QH + lane);
            }
        } else {
            for (int i = 0; i < FB / 4; i++) {
                int f = warp + 4 * i;
                if (f < nlive) *reinterpret_cast<__half2 *>(Phi + f * PHI_LD + 2 * lane) = feature2(Tc[f], QH + lane);
            }
        }
        cp_async_wait<1>();
        __syncthreads();
        const __half *Sc = Sb + (ch & 1) * FB * SLD;
        auto chunk_mma = [&](auto partial_tag) {
#pragma unroll
        for (int ks = 0; ks < FB / 16; ks++) {
            if (decltype(partial_tag)::value && ks * 16 >= nlive) break;
            uint32_t af[4];
            ldsm_x4_t(af, Phi + (ks * 16 + (lane & 7) + 8 * (lane >> 4)) * PHI_LD + warp * 16 +
                              8 * ((lane >> 3) & 1));
#pragma unroll
            for (int nt = 0; nt < NT; nt++) {
                uint32_t bf[2];
                ldsm_x2_t(bf, Sc + (ks * 16 + (lane & 7) + 8 * ((lane >> 3) & 1)) * SLD + nt * 8);
                mma16816<__half>(acc[nt], af, bf[0], bf[1]);
            }
        }
        };
        if (nlive == FB) chunk_mma(std::false_type{});
        else chunk_mma(std::true_type{});
    }
    // epilogue: the den column is DV = n-tile dv/8, element 0 of the quad's lane t=0
    const unsigned *cm = colmax + bhc * DVP;
    const int ntd = DV / 8;
    float den_lo = 0.f, den_hi = 0.f;
#pragma unroll
    for (int nt = 0; nt < NT; nt++)
        if (nt == ntd) {
            den_lo = acc[nt][0];
            den_hi = acc[nt][2];
        }
    den_lo = __shfl_sync(0xffffffffu, den_lo, lane & ~3);
    den_hi = __shfl_sync(0xffffffffu, den_hi, lane & ~3);
    float dsc = col_scale(cm[DV]);
    den_lo *= dsc;
    den_hi *= dsc;
    const int r_lo = qt * QTB + warp * 16 + (lane >> 2), r_hi = r_lo + 8;
    float inv_lo = 1.f / (den_lo <= a.eps ? a.eps : den_lo);
    float inv_hi = 1.f / (den_hi <= a.eps ? a.eps : den_hi);
    if constexpr (RAW) { // hybrid far field: [num | den] unnormalized, fp32
        float *rb = reinterpret_cast<float *>(o) + (size_t)bh * a.Nq * (DV + 1);
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
            int col = nt * 8 + 2 * (lane & 3);
            if (col >= DV) continue;
            float s0 = col_scale(cm[col]), s1 = col_scale(cm[col + 1]);
            if (r_lo < a.Nq) {
                rb[(size_t)r_lo * (DV + 1) + col] = acc[nt][0] * s0;
                rb[(size_t)r_lo * (DV + 1) + col + 1] = acc[nt][1] * s1;
                if (col == 0) rb[(size_t)r_lo * (DV + 1) + DV] = den_lo;
            }
            if (r_hi < a.Nq) {
                rb[(size_t)r_hi * (DV + 1) + col] = acc[nt][2] * s0;
                rb[(size_t)r_hi * (DV + 1) + col + 1] = acc[nt][3] * s1;
                if (col == 0) rb[(size_t)r_hi * (DV + 1) + DV] = den_hi;
            }
        }
    }
    TO *ob = o + (size_t)bh * a.Nq * a.Dv + c * DV;
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
        int col = nt * 8 + 2 * (lane & 3);
        if (RAW || col >= DV) continue;
        float s0 = col_scale(cm[col]), s1 = col_scale(cm[col + 1]);
        if (r_lo < a.Nq) {
            ob[(size_t)r_lo * a.Dv + col] = elem<TO>::from_f(acc[nt][0] * s0 * inv_lo);
            ob[(size_t)r_lo * a.Dv + col + 1] = elem<TO>::from_f(acc[nt][1] * s1 * inv_lo);
        }
        if (r_hi < a.Nq) {
            ob[(size_t)r_hi * a.Dv + col] = elem<TO>::from_f(acc[nt][2] * s0 * inv_hi);
            ob[(size_t)r_hi * a.Dv + col + 1] = elem<TO>::from_f(acc[nt][3] * s1 * inv_hi);
        }
    }
    if ((lane & 3) == 0) {
        float dd[2] = {den_lo, den_hi};
        int rr[2] = {r_lo, r_hi};
        for (int i = 0; i < 2; i++) {
            if (rr[i] >= a.Nq) continue;
            atomicAdd(&s_n, 1ull);
            if (!isfinite(dd[i])) {
                atomicAdd(&s_nf, 1ull);
                continue;
            }
            if (dd[i] <= a.eps) atomicAdd(&s_le, 1ull);
            atomicMin(&s_min, ord_enc(dd[i]));
            atomicMax(&s_max, ord_enc(dd[i]));
            atomicAdd(&s_sum, (double)dd[i]);
        }
    }
    __syncthreads();
    if (tid == 0) {
        atomicAdd(&den->n, s_n);
        atomicAdd(&den->n_le_eps, s_le);
        atomicAdd(&den->n_nonfinite, s_nf);
        atomicMin(reinterpret_cast<unsigned *>(&den->min), s_min);
        atomicMax(reinterpret_cast<unsigned *>(&den->max), s_max);
        atomicAdd(&den->sum, s_sum);
    }
}

__device__ __forceinline__ float4 lds4_volatile(const float *p) {
    float4 v;
    asm volatile("ld.shared.v4.f32 {%0,%1,%2,%3}, [%4];\n"
                 : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w)
                 : "r"(smem_addr(p)));
    return v;
}

// Probe: partial den of PG probe rows at a time over PROBE_KEYS keys per
// block; each thread holds one key row and one sum per probe row in registers.
template <typename TI, int DS, int PG>
__global__ void __launch_bounds__(128, 1) taylor_probe_kernel(KArgs a, int P, const int *rows, int pn,
                                                           float *partial, int nchunk) {
    __shared__ __align__(16) float Qp[PG * DS];
    __shared__ float red[4][PG];
    __shared__ float qfac[PG];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int chunk = blockIdx.x, bhc = blockIdx.y;
    const int c = bhc % a.b, bh = bhc / a.b, bidx = bh / a.H;
    const TI *kb = reinterpret_cast<const TI *>(a.k) + (size_t)bh * a.Nk * a.D + c * DS;
    const TI *qb = reinterpret_cast<const TI *>(a.q) + (size_t)bh * a.Nq * a.D + c * DS;
    const float c0 = P > 0 ? 1.f : 0.f, c1 = P > 1 ? 1.f : 0.f, c2 = P > 2 ? 0.5f : 0.f,
                c3 = P > 3 ? 1.f / 6.f : 0.f;
    for (int g0 = 0; g0 < pn; g0 += PG) {
        const int gn = min(PG, pn - g0);
        __syncthreads();
        for (int e = tid; e < PG * DS / 8; e += 128) {
            int r = e / (DS / 8), cc = (e % (DS / 8)) * 8;
            float x[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            if (r < gn) load8(qb + (size_t)rows[g0 + r] * a.D + cc, x);
#pragma unroll
            for (int i = 0; i < 8; i++) Qp[r * DS + cc + i] = x[i];
        }
        __syncthreads();
        if (tid < PG) qfac[tid] = row_factor(Qp + tid * DS, DS, a.modify, a.power, a.clip, a.eps, a.sqrt_s);
        __syncthreads();
        for (int e = tid; e < PG * DS; e += 128) Qp[e] *= qfac[e / DS];
        __syncthreads();
        float acc[PG];
#pragma unroll
        for (int p = 0; p < PG; p++) acc[p] = 0.f;
        for (int sub = 0; sub < PROBE_KEYS; sub += 128) {
            const int key = chunk * PROBE_KEYS + sub + tid;
            if (chunk * PROBE_KEYS + sub >= a.Nk) break;
            const bool valid = key < a.Nk && (!a.mask || a.mask[(size_t)bidx * a.Nk + key]);
            float kr[DS];
#pragma unroll
            for (int i = 0; i < DS; i += 8) {
                if (key < a.Nk) load8(kb + (size_t)key * a.D + i, kr + i);
                else
#pragma unroll
                    for (int t = 0; t < 8; t++) kr[i + t] = 0.f;
            }
            if (!valid) continue;
            float ss = 0.f;
#pragma unroll
            for (int i = 0; i < DS; i++) ss += kr[i] * kr[i];
            float kf = a.sqrt_s;
            if (a.modify) {
                float nrm = sqrtf(ss) + a.eps;
                if (a.modify == 1) kf /= nrm;
                else {
                    if (a.power > 0.f) kf *= powf(nrm, -a.power);
                    if (a.clip > 0.f) kf *= fminf(1.f, a.clip / nrm);
                }
            }
#pragma unroll
            for (int p = 0; p < PG; p++) {
                float x = 0.f;
#pragma unroll
                for (int i = 0; i < DS; i += 4) {
                    float4 qv = lds4_volatile(Qp + p * DS + i); // not hoisted out of the key loop
                    x += qv.x * kr[i] + qv.y * kr[i + 1] + qv.z * kr[i + 2] + qv.w * kr[i + 3];
                }
                x *= kf;
                acc[p] += fmaf(x, fmaf(x, fmaf(x, c3, c2), c1), c0); // kappa_P, P <= 4
            }
        }
#pragma unroll
        for (int p = 0; p < PG; p++) {
            float val = acc[p];
            for (int o = 16; o > 0; o >>= 1) val += __shfl_xor_sync(0xffffffffu, val, o);
            if (lane == 0) red[warp][p] = val;
        }
        __syncthreads();
        for (int p = tid; p < gn; p += 128)
            partial[((size_t)bhc * pn + g0 + p) * nchunk + chunk] =
                red[0][p] + red[1][p] + red[2][p] + red[3][p];
    }
}

template <typename TI>
int launch_probe(const KArgs &k, int d, int P, const int *rows, int pn, float *partial, int nchunk,
                 int BHC, cudaStream_t st, char *err, size_t errlen) {
    dim3 grid(nchunk, BHC);
    switch (d) {
    case 8: taylor_probe_kernel<TI, 8, 32><<<grid, 128, 0, st>>>(k, P, rows, pn, partial, nchunk); break;
    case 16: taylor_probe_kernel<TI, 16, 32><<<grid, 128, 0, st>>>(k, P, rows, pn, partial, nchunk); break;
    case 32: taylor_probe_kernel<TI, 32, 32><<<grid, 128, 0, st>>>(k, P, rows, pn, partial, nchunk); break;
    case 64: taylor_probe_kernel<TI, 64, 16><<<grid, 128, 0, st>>>(k, P, rows, pn, partial, nchunk); break;
    case 128: taylor_probe_kernel<TI, 128, 8><<<grid, 128, 0, st>>>(k, P, rows, pn, partial, nchunk); break;
    default: snprintf(err, errlen, "taylor probe: slice dim %d not supported", d); return 3;
    }
    TKC_LAUNCHED("taylor_probe_kernel", err, errlen);
    return 0;
}

__global__ void probe_sum_kernel(const float *partial, float *out, int n, int nchunk) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float s = 0.f;
    for (int c = 0; c < nchunk; c++) s += partial[(size_t)i * nchunk + c];
    out[i] = s;
}

KArgs kargs_of(const tkc_taylor_args *a, const Layout &L) {
    KArgs k;
    k.q = a->q;
    k.k = a->k;
    k.v = a->v;
    k.mask = a->mask;
    k.H = a->H;
    k.Nq = a->Nq;
    k.Nk = a->Nk;
    k.D = a->D;
    k.Dv = a->Dv;
    k.b = a->blocks;
    k.d = L.d;
    k.dv = L.dv;
    k.dvp = L.dvp;
    k.R = L.R;
    k.Rpad = L.Rpad;
    k.BHC = L.BHC;
    k.split = L.split;
    k.modify = a->modify;
    k.power = a->power;
    k.clip = a->clip;
    k.eps = a->eps;
    k.sqrt_s = sqrtf(a->s);
    return k;
}

template <typename TI, typename TO, int DS, int DV, bool RAW>
int run_nt(const tkc_taylor_args *a, const Layout &L, unsigned char *ws, cudaStream_t st,
           char *err, size_t errlen) {
    KArgs k = kargs_of(a, L);
    const Feat *tab = reinterpret_cast<const Feat *>(ws + L.off_tab);
    float *part = reinterpret_cast<float *>(ws + L.off_part);
    unsigned *colmax = reinterpret_cast<unsigned *>(ws + L.off_colmax);
    __half *sh = reinterpret_cast<__half *>(ws + L.off_sh);
    tkc_den_stats *den = reinterpret_cast<tkc_den_stats *>(ws + L.off_den);

    size_t smA = (size_t)FA * PHI_LD * 2 + (size_t)KTA * (L.dvp + 8) * 2 + (size_t)(L.d + 1) * 32 * 4 +
                 (size_t)KTA * (L.d + 1) * 4 + FA * sizeof(Feat) + KTA * 4 + KTA * sizeof(int);
    auto ka = taylor_reduce_kernel<TI, DS, DV>;
    TKC_TRY(cudaFuncSetAttribute(ka, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smA), err,
            errlen);
    ka<<<dim3(L.nfa, L.split, L.BHC), 256, smA, st>>>(k, tab, part);
    TKC_LAUNCHED("taylor_reduce_kernel", err, errlen);

    TKC_TRY(cudaMemsetAsync(colmax, 0, (size_t)L.BHC * L.dvp * sizeof(unsigned), st), err, errlen);
    {
        size_t n = (size_t)L.Rpad * L.dvp;
        int sx = (int)((n + 255) / 256);
        if (sx > 64) sx = 64;
        taylor_sum_kernel<<<dim3(sx, L.BHC), 256, 0, st>>>(part, colmax, L.split, L.BHC, L.Rpad, L.dvp);
    }
    TKC_LAUNCHED("taylor_sum_kernel", err, errlen);
    int pk_blocks = (int)(((size_t)L.Rpad * L.dvp + 255) / 256);
    if (pk_blocks > 1024) pk_blocks = 1024;
    taylor_pack_kernel<<<dim3(pk_blocks, L.BHC), 256, 0, st>>>(part, colmax, sh, L.BHC, L.Rpad,
                                                               L.dvp);
    TKC_LAUNCHED("taylor_pack_kernel", err, errlen);
    if (a->phase_a_only) return 0; // hybrid: phase B runs inside the local kernel

    tkc_den_stats init;
    memset(&init, 0, sizeof init);
    unsigned mn = 0xffffffffu, mx = 0u;
    memcpy(&init.min, &mn, 4);
    memcpy(&init.max, &mx, 4);
    TKC_TRY(cudaMemcpyAsync(den, &init, sizeof init, cudaMemcpyHostToDevice, st), err, errlen);
    size_t smB = (size_t)FB * PHI_LD * 2 + 2 * (size_t)FB * (L.dvp + 8) * 2 + (size_t)(L.d + 1) * 32 * 4 +
                 (size_t)QTB * (L.d + 1) * 4 + 2 * FB * sizeof(Feat) + QTB * 4;
    auto kb = taylor_apply_kernel<TI, TO, DS, DV, RAW>;
    TKC_TRY(cudaFuncSetAttribute(kb, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smB), err,
            errlen);
    kb<<<dim3((a->Nq + QTB - 1) / QTB, L.BHC), 128, smB, st>>>(k, tab, sh, colmax, (TO *)a->o, den);
    TKC_LAUNCHED("taylor_apply_kernel", err, errlen);
    return 0;
}

template <typename TI, typename TO>
int run_t(const tkc_taylor_args *a, const Layout &L, unsigned char *ws, cudaStream_t st, char *err,
          size_t errlen) {
    if (a->raw_out) { // hybrid far field: d = global dim, dv = Dv, one slice
        if (L.dv == 128 && L.d == 16) return run_nt<TI, float, 16, 128, true>(a, L, ws, st, err, errlen);
        if (L.dv == 128 && L.d == 8) return run_nt<TI, float, 8, 128, true>(a, L, ws, st, err, errlen);
        if (L.dv == 128 && L.d == 32) return run_nt<TI, float, 32, 128, true>(a, L, ws, st, err, errlen);
        if (L.dv == 64 && L.d == 16) return run_nt<TI, float, 16, 64, true>(a, L, ws, st, err, errlen);
        if (L.dv == 64 && L.d == 32) return run_nt<TI, float, 32, 64, true>(a, L, ws, st, err, errlen);
        if (L.dv == 32 && L.d == 16) return run_nt<TI, float, 16, 32, true>(a, L, ws, st, err, errlen);
        if (L.dv == 32 && L.d == 32) return run_nt<TI, float, 32, 32, true>(a, L, ws, st, err, errlen);
        snprintf(err, errlen, "hybrid far field on cuda: global_dim %d with Dv %d (supported: 8, 16, 32 with Dv 128; 16, 32 with Dv 64 and 32)", L.d, L.dv);
        return 3;
    }
    if (L.d != L.dv) {
        snprintf(err, errlen, "taylor on cuda: slice dims d=%d and dv=%d differ (D == Dv needed)", L.d, L.dv);
        return 3;
    }
    switch (L.d) {
    case 8: return run_nt<TI, TO, 8, 8, false>(a, L, ws, st, err, errlen);
    case 16: return run_nt<TI, TO, 16, 16, false>(a, L, ws, st, err, errlen);
    case 32: return run_nt<TI, TO, 32, 32, false>(a, L, ws, st, err, errlen);
    case 64: return run_nt<TI, TO, 64, 64, false>(a, L, ws, st, err, errlen);
    case 128: return run_nt<TI, TO, 128, 128, false>(a, L, ws, st, err, errlen);
    default:
        snprintf(err, errlen, "taylor on cuda: slice dim %d (supported: 8, 16, 32, 64, 128)", L.d);
        return 3;
    }
}

} // namespace

int64_t tkc_feature_count(int d, int P) {
    // C(d+P-1, P-1)
    if (d <= 0 || P <= 0) return 0;
    double r = 1.0;
    int64_t v = 1;
    for (int i = 1; i <= P - 1; i++) {
        r = r * (double)(d + i) / i;
        v = (int64_t)(r + 0.5);
        if (r > 9e18) return -1;
    }
    return v;
}

// The far field's small path (phase_a_only): its records go in the generic
// part region when they fit there (that region is unused then), else after
// the generic layout. Offset of its workspace, 0 bytes when not handled.
static size_t far_small_at(const tkc_taylor_args *a, const Layout &L, int num_sms, size_t *bytes) {
    *bytes = tkc_far_small_handles(a) ? tkc_far_small_workspace(a, num_sms) : 0;
    if (*bytes == 0) return 0;
    return L.off_part + *bytes <= L.off_colmax ? L.off_part : L.total;
}

size_t tkc_taylor_workspace(const tkc_taylor_args *a, int num_sms) {
    Layout L;
    if (!layout_of(a, num_sms, &L)) return 0;
    {
        size_t fb = 0, fo = far_small_at(a, L, num_sms, &fb);
        if (fb) return fo + fb > L.total ? fo + fb : L.total;
    }
    if (tkc_small_handles(a)) { size_t sw = L.off_part + tkc_small_workspace(a, num_sms); return sw > L.total ? sw : L.total; }
    return L.total;
}

int tkc_taylor_far_tables(const tkc_taylor_args *a, void *ws, int num_sms, tkc_far_tables *out) {
    Layout L;
    if (!layout_of(a, num_sms, &L)) return 3;
    unsigned char *w = (unsigned char *)ws;
    out->tab = w + L.off_tab;
    out->sh = w + L.off_sh;
    out->colmax = reinterpret_cast<const unsigned *>(w + L.off_colmax);
    out->R = L.R, out->Rpad = L.Rpad, out->dvp = L.dvp;
    return 0;
}

int tkc_taylor_probe(const tkc_taylor_args *a, void *ws, size_t ws_bytes, int num_sms,
                     cudaStream_t st, float *host_den, char *err, size_t errlen) {
    Layout L;
    if (!layout_of(a, num_sms, &L) || ws_bytes < L.total) {
        snprintf(err, errlen, "taylor probe: bad layout");
        return 3;
    }
    if (tkc_small_handles(a)) return tkc_small_probe(a, (unsigned char *)ws + L.off_part, ws_bytes - L.off_part, num_sms, st, host_den, err, errlen);
    KArgs k = kargs_of(a, L);
    int nchunk = (a->Nk + PROBE_KEYS - 1) / PROBE_KEYS;
    float *partial = reinterpret_cast<float *>((unsigned char *)ws + L.off_probe);
    float *out = partial + (size_t)L.BHC * a->probe_n * nchunk;
    int rc = a->dtype == TK_DTYPE_BF16
                 ? launch_probe<__nv_bfloat16>(k, L.d, a->terms, a->probe_rows, a->probe_n, partial, nchunk, L.BHC, st, err, errlen)
             : a->dtype == TK_DTYPE_F16
                 ? launch_probe<__half>(k, L.d, a->terms, a->probe_rows, a->probe_n, partial, nchunk, L.BHC, st, err, errlen)
                 : launch_probe<float>(k, L.d, a->terms, a->probe_rows, a->probe_n, partial, nchunk, L.BHC, st, err, errlen);
    if (rc) return rc;
    int n = L.BHC * a->probe_n;
    probe_sum_kernel<<<(n + 255) / 256, 256, 0, st>>>(partial, out, n, nchunk);
    TKC_LAUNCHED("probe_sum_kernel", err, errlen);
    TKC_TRY(cudaMemcpyAsync(host_den, out, (size_t)n * sizeof(float), cudaMemcpyDeviceToHost, st),
            err, errlen);
    TKC_TRY(cudaStreamSynchronize(st), err, errlen);
    return 0;
}

int tkc_taylor_small_call(const tkc_taylor_args *a, const tkc_small_rule *rule, void *ws, size_t ws_bytes,
                          int num_sms, cudaStream_t st, tkc_small_record *host_rec, char *err, size_t errlen) {
    Layout L;
    if (!tkc_small_handles(a) || !layout_of(a, num_sms, &L) || ws_bytes < L.off_part) {
        snprintf(err, errlen, "taylor (small) call: bad layout");
        return 3;
    }
    return tkc_small_call(a, rule, (unsigned char *)ws + L.off_part, ws_bytes - L.off_part, num_sms, st, host_rec,
                          err, errlen);
}

int tkc_taylor_small_apply(const tkc_taylor_args *a, void *ws, size_t ws_bytes, int num_sms, cudaStream_t st,
                           char *err, size_t errlen) {
    Layout L;
    if (!tkc_small_handles(a) || !layout_of(a, num_sms, &L) || ws_bytes < L.off_part) {
        snprintf(err, errlen, "taylor (small) apply: bad layout");
        return 3;
    }
    return tkc_small_apply_ungated(a, (unsigned char *)ws + L.off_part, ws_bytes - L.off_part, num_sms, st, err,
                                   errlen);
}

int tkc_taylor_run(const tkc_taylor_args *a, void *ws, size_t ws_bytes, int num_sms,
                   cudaStream_t st, tkc_den_stats *den, char *err, size_t errlen) {
    Layout L;
    if (!layout_of(a, num_sms, &L)) {
        snprintf(err, errlen, "taylor: unsupported shape (D %d, Dv %d, blocks %d, P %d)", a->D, a->Dv,
                 a->blocks, a->terms);
        return 3;
    }
    size_t far_bytes = 0, far_off = far_small_at(a, L, num_sms, &far_bytes);
    const size_t need = far_bytes && far_off + far_bytes > L.total ? far_off + far_bytes : L.total;
    if (ws_bytes < need) {
        snprintf(err, errlen, "taylor: workspace %zu < %zu", ws_bytes, need);
        return 1;
    }
    unsigned char *w = (unsigned char *)ws;
    if (!a->table_cached) {
    Feat *host_tab = (Feat *)malloc((size_t)L.Rpad * sizeof(Feat));
    if (!host_tab) {
        snprintf(err, errlen, "taylor: host table allocation");
        return 2;
    }
    build_table(L.d, a->terms, L.Rpad, host_tab);
    cudaError_t e = cudaMemcpyAsync(w + L.off_tab, host_tab, (size_t)L.Rpad * sizeof(Feat),
                                    cudaMemcpyHostToDevice, st);
    if (e == cudaSuccess) e = cudaStreamSynchronize(st); // the host table is freed next
    free(host_tab);
    if (e != cudaSuccess) {
        snprintf(err, errlen, "taylor table upload: %s", cudaGetErrorString(e));
        return 1;
    }
    }
    if (tkc_small_handles(a)) return tkc_small_run(a, w + L.off_part, ws_bytes - L.off_part, num_sms, st, den, err, errlen);
    if (far_bytes) { // hybrid far field, normalized: the tables of tkc_taylor_far_tables on the degree-2 structure
        int frc = tkc_far_small_run(a, w + far_off, far_bytes, num_sms, st, w + L.off_sh,
                                    reinterpret_cast<unsigned *>(w + L.off_colmax), L.R, L.Rpad, err, errlen);
        if (frc) return frc;
        memset(den, 0, sizeof *den);
        return 0;
    }
    int rc;
    if (a->dtype == TK_DTYPE_BF16)
        rc = run_t<__nv_bfloat16, __nv_bfloat16>(a, L, w, st, err, errlen);
    else if (a->dtype == TK_DTYPE_F16)
        rc = run_t<__half, __half>(a, L, w, st, err, errlen);
    else
        rc = run_t<float, float>(a, L, w, st, err, errlen);
    if (rc) return rc;
    if (a->raw_out) { // hybrid far field: its denominators are judged by the local kernel
        memset(den, 0, sizeof *den);
        return 0;
    }
    tkc_den_stats *dd = reinterpret_cast<tkc_den_stats *>(w + L.off_den);
    TKC_TRY(cudaMemcpyAsync(den, dd, sizeof *den, cudaMemcpyDeviceToHost, st), err, errlen);
    TKC_TRY(cudaStreamSynchronize(st), err, errlen);
    tkc_den_decode(den);
    return 0;
}

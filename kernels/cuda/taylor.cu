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

#include "cuda_internal.h"

namespace {

using namespace tkc;

struct Feat {
    uint8_t idx[7];
    uint8_t deg;
    float w;
};

constexpr int FA = 128; // features per phase-A block
constexpr int FB = 64;  // features per phase-B chunk
constexpr int KTA = 64; // keys per phase-A tile
constexpr int QTB = 64; // queries per phase-B block
constexpr int PHI_LD = 72;

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

bool layout_of(const tkc_taylor_args *a, int num_sms, Layout *L) {
    if (a->blocks <= 0 || a->D % a->blocks || a->Dv % a->blocks) return false;
    L->d = a->D / a->blocks;
    L->dv = a->Dv / a->blocks;
    if (L->d > 256 || L->dv % 8 || L->dv > 128 || a->terms < 1 || a->terms > 8) return false;
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
    int nchunk = (a->Nk + 127) / 128;
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
            Feat f;
            memset(&f, 0, sizeof f);
            f.deg = (uint8_t)deg;
            double fact = 1.0;
            int run = 0;
            for (int i = 0; i < deg; i++) {
                f.idx[i] = (uint8_t)t[i];
                run = (i > 0 && t[i] == t[i - 1]) ? run + 1 : 1;
                fact *= run;
            }
            f.w = (float)(1.0 / sqrt(fact));
            out[n++] = f;
            // next non-decreasing tuple of length deg
            int i = deg - 1;
            while (i >= 0 && t[i] == d - 1) i--;
            if (i < 0) break;
            t[i]++;
            for (int k = i + 1; k < deg; k++) t[k] = t[i];
        }
    }
    for (; n < Rpad; n++) {
        memset(&out[n], 0, sizeof out[n]); // w = 0: padding features are zero
    }
}

__device__ __forceinline__ float feature(const Feat &f, const float *x) {
    float p = f.w;
#pragma unroll
    for (int t = 0; t < 7; t++)
        if (t < f.deg) p *= x[f.idx[t]];
    return p;
}

// x (n floats, stride 1) -> modified and scaled by sqrt(s), in place.
__device__ __forceinline__ void modify_row(float *x, int n, int modify, float power, float clip,
                                           float eps, float sqrt_s) {
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
    for (int i = 0; i < n; i++) x[i] *= f;
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

template <typename TI, int NT>
__global__ void __launch_bounds__(256) taylor_reduce_kernel(KArgs a, const Feat *__restrict__ tab,
                                                            float *__restrict__ part) {
    extern __shared__ __align__(16) unsigned char sm[];
    const int dp1 = a.d + 1;
    const int VLD = a.dvp + 8;
    __half *Phi = reinterpret_cast<__half *>(sm);                  // [FA][PHI_LD]
    __half *Vh = Phi + FA * PHI_LD;                                 // [KTA][VLD]
    float *Kf = reinterpret_cast<float *>(Vh + KTA * VLD);          // [KTA][d+1]
    Feat *T = reinterpret_cast<Feat *>(Kf + KTA * dp1);             // [FA]
    int *valid = reinterpret_cast<int *>(T + FA);                   // [KTA]

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int fc = blockIdx.x, sp = blockIdx.y, bhc = blockIdx.z;
    const int c = bhc % a.b, bh = bhc / a.b, bidx = bh / a.H;
    const TI *kb = reinterpret_cast<const TI *>(a.k) + (size_t)bh * a.Nk * a.D + c * a.d;
    const TI *vb = reinterpret_cast<const TI *>(a.v) + (size_t)bh * a.Nk * a.Dv + c * a.dv;
    const uint8_t *mb = a.mask ? a.mask + (size_t)bidx * a.Nk : nullptr;

    for (int i = tid; i < FA; i += 256) T[i] = tab[fc * FA + i];
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
        for (int e = tid; e < KTA * a.d; e += 256) {
            int r = e / a.d, cc = e % a.d, key = key0 + r;
            Kf[r * dp1 + cc] = key < a.Nk ? ld(kb + (size_t)key * a.D + cc) : 0.f;
        }
        __syncthreads();
        for (int e = tid; e < KTA * a.dvp; e += 256) {
            int r = e / a.dvp, cc = e % a.dvp, key = key0 + r;
            float x = 0.f;
            if (valid[r]) x = cc < a.dv ? ld(vb + (size_t)key * a.Dv + cc) : (cc == a.dv ? 1.f : 0.f);
            Vh[r * VLD + cc] = __float2half(x);
        }
        if (tid < KTA) modify_row(Kf + tid * dp1, a.d, a.modify, a.power, a.clip, a.eps, a.sqrt_s);
        __syncthreads();
        for (int e = tid; e < FA * KTA; e += 256) {
            int f = e / KTA, r = e % KTA;
            float p = valid[r] ? feature(T[f], Kf + r * dp1) : 0.f;
            Phi[f * PHI_LD + r] = __float2half(p);
        }
        __syncthreads();
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
        __syncthreads();
    }
    float *pb = part + ((size_t)sp * a.BHC + bhc) * a.Rpad * a.dvp;
    int f_lo = fc * FA + warp * 16 + (lane >> 2);
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
        int col = nt * 8 + 2 * (lane & 3);
        pb[(size_t)f_lo * a.dvp + col] = acc[nt][0];
        pb[(size_t)f_lo * a.dvp + col + 1] = acc[nt][1];
        pb[(size_t)(f_lo + 8) * a.dvp + col] = acc[nt][2];
        pb[(size_t)(f_lo + 8) * a.dvp + col + 1] = acc[nt][3];
    }
}

// Sum the splits in order into split 0; per-column max magnitude.
__global__ void taylor_sum_kernel(float *part, unsigned *colmax, int split, int BHC, int Rpad,
                                  int dvp) {
    int bhc = blockIdx.y;
    int f = blockIdx.x * blockDim.x + threadIdx.x;
    bool in = f < Rpad;
    size_t stride = (size_t)BHC * Rpad * dvp;
    float *p0 = part + ((size_t)bhc * Rpad + (in ? f : 0)) * dvp;
    for (int col = 0; col < dvp; col++) {
        float s = 0.f;
        if (in) {
            s = p0[col];
            for (int sp = 1; sp < split; sp++) s += p0[sp * stride + col];
            p0[col] = s;
        }
        float m = fabsf(s);
        if (m != m) m = INFINITY; // NaN: make the column's scale non-finite too
        for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
        if ((threadIdx.x & 31) == 0 && m > 0.f) atomicMax(colmax + bhc * dvp + col, __float_as_uint(m));
    }
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

__device__ __forceinline__ unsigned ord_enc(float x) {
    unsigned u = __float_as_uint(x);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

template <typename TI, typename TO, int NT>
__global__ void __launch_bounds__(128) taylor_apply_kernel(KArgs a, const Feat *__restrict__ tab,
                                                           const __half *__restrict__ sh,
                                                           const unsigned *__restrict__ colmax,
                                                           TO *__restrict__ o, tkc_den_stats *den) {
    extern __shared__ __align__(16) unsigned char sm[];
    const int dp1 = a.d + 1;
    const int SLD = a.dvp + 8;
    __half *Phi = reinterpret_cast<__half *>(sm);           // [QTB][PHI_LD]
    __half *Sb = Phi + QTB * PHI_LD;                         // [FB][SLD]
    float *Qf = reinterpret_cast<float *>(Sb + FB * SLD);    // [QTB][d+1]
    Feat *T = reinterpret_cast<Feat *>(Qf + QTB * dp1);      // [FB]
    __shared__ unsigned long long s_le, s_nf, s_n;
    __shared__ unsigned s_min, s_max;
    __shared__ double s_sum;

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int qt = blockIdx.x, bhc = blockIdx.y;
    const int c = bhc % a.b, bh = bhc / a.b;
    const TI *qb = reinterpret_cast<const TI *>(a.q) + (size_t)bh * a.Nq * a.D + c * a.d;
    const __half *shb = sh + (size_t)bhc * a.Rpad * a.dvp;
    if (tid == 0) {
        s_le = s_nf = s_n = 0;
        s_min = 0xffffffffu;
        s_max = 0;
        s_sum = 0.0;
    }
    for (int e = tid; e < QTB * a.d; e += 128) {
        int r = e / a.d, cc = e % a.d, qi = qt * QTB + r;
        Qf[r * dp1 + cc] = qi < a.Nq ? ld(qb + (size_t)qi * a.D + cc) : 0.f;
    }
    __syncthreads();
    if (tid < QTB) modify_row(Qf + tid * dp1, a.d, a.modify, a.power, a.clip, a.eps, a.sqrt_s);

    float acc[NT][4];
#pragma unroll
    for (int i = 0; i < NT; i++) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
    const int nchunks = (a.R + FB - 1) / FB;
    const int cpr = a.dvp / 8; // 16-byte chunks per S row
    for (int ch = 0; ch < nchunks; ch++) {
        for (int e = tid; e < FB * cpr; e += 128) {
            int r = e / cpr, cc = e % cpr;
            cp_async16(Sb + r * SLD + cc * 8, shb + (size_t)(ch * FB + r) * a.dvp + cc * 8, 16);
        }
        cp_async_commit();
        if (tid < FB) T[tid] = tab[ch * FB + tid];
        __syncthreads();
        for (int e = tid; e < QTB * FB; e += 128) {
            int r = e / FB, f = e % FB;
            Phi[r * PHI_LD + f] = __float2half(feature(T[f], Qf + r * dp1));
        }
        cp_async_wait<0>();
        __syncthreads();
#pragma unroll
        for (int ks = 0; ks < FB / 16; ks++) {
            uint32_t af[4];
            ldsm_x4(af, Phi + (warp * 16 + (lane & 7) + 8 * ((lane >> 3) & 1)) * PHI_LD + ks * 16 +
                            8 * (lane >> 4));
#pragma unroll
            for (int nt = 0; nt < NT; nt++) {
                uint32_t bf[2];
                ldsm_x2_t(bf, Sb + (ks * 16 + (lane & 7) + 8 * ((lane >> 3) & 1)) * SLD + nt * 8);
                mma16816<__half>(acc[nt], af, bf[0], bf[1]);
            }
        }
        __syncthreads();
    }
    // epilogue: the den column is a.dv = n-tile dv/8, element 0 of the quad's lane t=0
    const unsigned *cm = colmax + bhc * a.dvp;
    const int ntd = a.dv / 8;
    float den_lo = 0.f, den_hi = 0.f;
#pragma unroll
    for (int nt = 0; nt < NT; nt++)
        if (nt == ntd) {
            den_lo = acc[nt][0];
            den_hi = acc[nt][2];
        }
    den_lo = __shfl_sync(0xffffffffu, den_lo, lane & ~3);
    den_hi = __shfl_sync(0xffffffffu, den_hi, lane & ~3);
    float dsc = col_scale(cm[a.dv]);
    den_lo *= dsc;
    den_hi *= dsc;
    const int r_lo = qt * QTB + warp * 16 + (lane >> 2), r_hi = r_lo + 8;
    float inv_lo = 1.f / (den_lo <= a.eps ? a.eps : den_lo);
    float inv_hi = 1.f / (den_hi <= a.eps ? a.eps : den_hi);
    TO *ob = o + (size_t)bh * a.Nq * a.Dv + c * a.dv;
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
        int col = nt * 8 + 2 * (lane & 3);
        if (col >= a.dv) continue;
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

// Probe: partial den of probe rows over 128-key chunks.
template <typename TI>
__global__ void __launch_bounds__(128) taylor_probe_kernel(KArgs a, int P, const int *rows, int pn,
                                                           float *partial, int nchunk) {
    extern __shared__ __align__(16) unsigned char sm[];
    const int dp1 = a.d + 1;
    float *Kf = reinterpret_cast<float *>(sm);   // [128][d+1]
    float *Qp = Kf + 128 * dp1;                  // [64][d+1]
    __shared__ float red[4][64];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int chunk = blockIdx.x, bhc = blockIdx.y;
    const int c = bhc % a.b, bh = bhc / a.b, bidx = bh / a.H;
    const TI *kb = reinterpret_cast<const TI *>(a.k) + (size_t)bh * a.Nk * a.D + c * a.d;
    const TI *qb = reinterpret_cast<const TI *>(a.q) + (size_t)bh * a.Nq * a.D + c * a.d;
    const int key = chunk * 128 + tid;
    const bool valid = key < a.Nk && (!a.mask || a.mask[(size_t)bidx * a.Nk + key]);
    for (int e = tid; e < 128 * a.d; e += 128) {
        int r = e / a.d, cc = e % a.d, kk = chunk * 128 + r;
        Kf[r * dp1 + cc] = kk < a.Nk ? ld(kb + (size_t)kk * a.D + cc) : 0.f;
    }
    __syncthreads();
    modify_row(Kf + tid * dp1, a.d, a.modify, a.power, a.clip, a.eps, a.sqrt_s);
    for (int g0 = 0; g0 < pn; g0 += 64) {
        int gn = min(64, pn - g0);
        __syncthreads();
        for (int e = tid; e < gn * a.d; e += 128) {
            int r = e / a.d, cc = e % a.d;
            Qp[r * dp1 + cc] = ld(qb + (size_t)rows[g0 + r] * a.D + cc);
        }
        __syncthreads();
        if (tid < gn) modify_row(Qp + tid * dp1, a.d, a.modify, a.power, a.clip, a.eps, a.sqrt_s);
        __syncthreads();
        for (int p = 0; p < gn; p++) {
            float x = 0.f;
            for (int i = 0; i < a.d; i++) x += Qp[p * dp1 + i] * Kf[tid * dp1 + i];
            float kap = 0.f, term = 1.f;
            for (int n = 0; n < P; n++) {
                kap += term;
                term *= x / (float)(n + 1);
            }
            float val = valid ? kap : 0.f;
            for (int o = 16; o > 0; o >>= 1) val += __shfl_xor_sync(0xffffffffu, val, o);
            if (lane == 0) red[warp][p] = val;
        }
        __syncthreads();
        for (int p = tid; p < gn; p += 128)
            partial[((size_t)bhc * pn + g0 + p) * nchunk + chunk] =
                red[0][p] + red[1][p] + red[2][p] + red[3][p];
    }
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

template <typename TI, typename TO, int NT>
int run_nt(const tkc_taylor_args *a, const Layout &L, unsigned char *ws, cudaStream_t st,
           char *err, size_t errlen) {
    KArgs k = kargs_of(a, L);
    const Feat *tab = reinterpret_cast<const Feat *>(ws + L.off_tab);
    float *part = reinterpret_cast<float *>(ws + L.off_part);
    unsigned *colmax = reinterpret_cast<unsigned *>(ws + L.off_colmax);
    __half *sh = reinterpret_cast<__half *>(ws + L.off_sh);
    tkc_den_stats *den = reinterpret_cast<tkc_den_stats *>(ws + L.off_den);

    size_t smA = (size_t)FA * PHI_LD * 2 + (size_t)KTA * (L.dvp + 8) * 2 +
                 (size_t)KTA * (L.d + 1) * 4 + FA * sizeof(Feat) + KTA * sizeof(int);
    auto ka = taylor_reduce_kernel<TI, NT>;
    TKC_TRY(cudaFuncSetAttribute(ka, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smA), err,
            errlen);
    ka<<<dim3(L.nfa, L.split, L.BHC), 256, smA, st>>>(k, tab, part);
    TKC_LAUNCHED("taylor_reduce_kernel", err, errlen);

    TKC_TRY(cudaMemsetAsync(colmax, 0, (size_t)L.BHC * L.dvp * sizeof(unsigned), st), err, errlen);
    taylor_sum_kernel<<<dim3((L.Rpad + 127) / 128, L.BHC), 128, 0, st>>>(part, colmax, L.split,
                                                                         L.BHC, L.Rpad, L.dvp);
    TKC_LAUNCHED("taylor_sum_kernel", err, errlen);
    int pk_blocks = (int)(((size_t)L.Rpad * L.dvp + 255) / 256);
    if (pk_blocks > 1024) pk_blocks = 1024;
    taylor_pack_kernel<<<dim3(pk_blocks, L.BHC), 256, 0, st>>>(part, colmax, sh, L.BHC, L.Rpad,
                                                               L.dvp);
    TKC_LAUNCHED("taylor_pack_kernel", err, errlen);

    tkc_den_stats init;
    memset(&init, 0, sizeof init);
    unsigned mn = 0xffffffffu, mx = 0u;
    memcpy(&init.min, &mn, 4);
    memcpy(&init.max, &mx, 4);
    TKC_TRY(cudaMemcpyAsync(den, &init, sizeof init, cudaMemcpyHostToDevice, st), err, errlen);
    size_t smB = (size_t)QTB * PHI_LD * 2 + (size_t)FB * (L.dvp + 8) * 2 +
                 (size_t)QTB * (L.d + 1) * 4 + FB * sizeof(Feat);
    auto kb = taylor_apply_kernel<TI, TO, NT>;
    TKC_TRY(cudaFuncSetAttribute(kb, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smB), err,
            errlen);
    kb<<<dim3((a->Nq + QTB - 1) / QTB, L.BHC), 128, smB, st>>>(k, tab, sh, colmax, (TO *)a->o, den);
    TKC_LAUNCHED("taylor_apply_kernel", err, errlen);
    return 0;
}

template <typename TI, typename TO>
int run_t(const tkc_taylor_args *a, const Layout &L, unsigned char *ws, cudaStream_t st, char *err,
          size_t errlen) {
    switch (L.dvp / 8) {
#define TKC_NT(n) \
    case n: return run_nt<TI, TO, n>(a, L, ws, st, err, errlen);
        TKC_NT(2) TKC_NT(3) TKC_NT(5) TKC_NT(9) TKC_NT(17)
#undef TKC_NT
    default:
        snprintf(err, errlen, "taylor: slice value dim %d (cuda supports 8, 16, 32, 64, 128)", L.dv);
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

size_t tkc_taylor_workspace(const tkc_taylor_args *a, int num_sms) {
    Layout L;
    if (!layout_of(a, num_sms, &L)) return 0;
    return L.total;
}

int tkc_taylor_probe(const tkc_taylor_args *a, void *ws, size_t ws_bytes, int num_sms,
                     cudaStream_t st, float *host_den, char *err, size_t errlen) {
    Layout L;
    if (!layout_of(a, num_sms, &L) || ws_bytes < L.total) {
        snprintf(err, errlen, "taylor probe: bad layout");
        return 3;
    }
    KArgs k = kargs_of(a, L);
    int nchunk = (a->Nk + 127) / 128;
    float *partial = reinterpret_cast<float *>((unsigned char *)ws + L.off_probe);
    float *out = partial + (size_t)L.BHC * a->probe_n * nchunk;
    size_t sm = (size_t)(128 + 64) * (L.d + 1) * 4;
    dim3 grid(nchunk, L.BHC);
    if (a->dtype == TK_DTYPE_BF16) {
        TKC_TRY(cudaFuncSetAttribute(taylor_probe_kernel<__nv_bfloat16>,
                                     cudaFuncAttributeMaxDynamicSharedMemorySize, (int)sm), err, errlen);
        taylor_probe_kernel<__nv_bfloat16><<<grid, 128, sm, st>>>(k, a->terms, a->probe_rows, a->probe_n,
                                                                  partial, nchunk);
    } else if (a->dtype == TK_DTYPE_F16) {
        TKC_TRY(cudaFuncSetAttribute(taylor_probe_kernel<__half>,
                                     cudaFuncAttributeMaxDynamicSharedMemorySize, (int)sm), err, errlen);
        taylor_probe_kernel<__half><<<grid, 128, sm, st>>>(k, a->terms, a->probe_rows, a->probe_n,
                                                           partial, nchunk);
    } else {
        TKC_TRY(cudaFuncSetAttribute(taylor_probe_kernel<float>,
                                     cudaFuncAttributeMaxDynamicSharedMemorySize, (int)sm), err, errlen);
        taylor_probe_kernel<float><<<grid, 128, sm, st>>>(k, a->terms, a->probe_rows, a->probe_n,
                                                          partial, nchunk);
    }
    TKC_LAUNCHED("taylor_probe_kernel", err, errlen);
    int n = L.BHC * a->probe_n;
    probe_sum_kernel<<<(n + 255) / 256, 256, 0, st>>>(partial, out, n, nchunk);
    TKC_LAUNCHED("probe_sum_kernel", err, errlen);
    TKC_TRY(cudaMemcpyAsync(host_den, out, (size_t)n * sizeof(float), cudaMemcpyDeviceToHost, st),
            err, errlen);
    TKC_TRY(cudaStreamSynchronize(st), err, errlen);
    return 0;
}

int tkc_taylor_run(const tkc_taylor_args *a, void *ws, size_t ws_bytes, int num_sms,
                   cudaStream_t st, tkc_den_stats *den, char *err, size_t errlen) {
    Layout L;
    if (!layout_of(a, num_sms, &L)) {
        snprintf(err, errlen, "taylor: unsupported shape (D %d, Dv %d, blocks %d, P %d)", a->D, a->Dv,
                 a->blocks, a->terms);
        return 3;
    }
    if (ws_bytes < L.total) {
        snprintf(err, errlen, "taylor: workspace %zu < %zu", ws_bytes, L.total);
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
    int rc;
    if (a->dtype == TK_DTYPE_BF16)
        rc = run_t<__nv_bfloat16, __nv_bfloat16>(a, L, w, st, err, errlen);
    else if (a->dtype == TK_DTYPE_F16)
        rc = run_t<__half, __half>(a, L, w, st, err, errlen);
    else
        rc = run_t<float, float>(a, L, w, st, err, errlen);
    if (rc) return rc;
    tkc_den_stats *dd = reinterpret_cast<tkc_den_stats *>(w + L.off_den);
    TKC_TRY(cudaMemcpyAsync(den, dd, sizeof *den, cudaMemcpyDeviceToHost, st), err, errlen);
    TKC_TRY(cudaStreamSynchronize(st), err, errlen);
    // decode the ordered-int min/max
    unsigned u;
    memcpy(&u, &den->min, 4);
    u = (u & 0x80000000u) ? (u & 0x7fffffffu) : ~u;
    memcpy(&den->min, &u, 4);
    memcpy(&u, &den->max, 4);
    u = (u & 0x80000000u) ? (u & 0x7fffffffu) : ~u;
    memcpy(&den->max, &u, 4);
    return 0;
}

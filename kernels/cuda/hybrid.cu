// hybrid.cu -- hybrid attention (SPEC 4): exact softmax over a local window
// plus a far-field Taylor term on PCA-projected q0/k0, fused.
//
//  1. PCA per (layer, head), cached: the ref backend's fit (kernels/pca.h):
//     rows chosen by tki_pca_select_rows (q rows, then kept k rows, shared by
//     the batch), second moment X^T X in fp64 by one batched cuBLAS product,
//     top global_dim eigenvectors by LAPACK dsyevr on the host, one head per thread. (Second
//     moment, not centred: the far kernel depends on q.k, which the
//     projection onto the leading eigenvectors of E[x x^T] preserves best.)
//  2. A projection kernel (mma, P split into two 16-bit halves) writes
//     x' = sqrt(s_far) * mod(P^T x0) for every q0 and k0 row (s_far =
//     D^-1/2 global_scale_mul, SPEC 3.3 modification).
//  3. Far field, normalized combine: Taylor phase A only (taylor.cu,
//     phase_a_only) gives [S | z] per head; in 2d the text keys are masked out
//     of it (they are every image query's local keys). With far dim 16 and
//     P <= 3 taylor.cu hands it to taylor_small.cu's degree-2 path, which
//     writes the same tables (TKC_HYBRID_FAR_GENERIC=1: the generic phase A).
//     Additive combine: the full Taylor RAW run writes [num | den] per query
//     to a buffer.
//  4. Local kernel (one block = an 8x8 cell tile of image queries, or 64
//     consecutive tokens for the 1d window): normalized: a prologue puts
//     w phi(q') . [S | z] into the accumulators at a running max of 0, so the
//     online softmax carries the far term. The keys a window touches (text
//     keys, then the clamped (8+2r)^2 rectangle, gathered by cp.async, K of
//     the next tile before S, its V after the softmax) stream through shared
//     memory; a per-key bitmask (rows x columns of the tile's queries) gives
//     visibility; a warp skips 16-key chunks none of its queries sees;
//     S and x' = q' k'^T on mma.sync; each visible rectangle key gets
//     p = e^{x-m} - w e^{-m} kappa(x'), so one P.V product serves the local
//     sum and removes the window's keys from the far term.
//     Text queries see every key: exact kernel on those rows (side stream).
//     The 2d window with no far term or the normalized one, D 64/128, bf16/f16
//     in and out, runs hybrid_wgmma.cu's kernel instead (128-query tiles on
//     wgmma; TKC_HYBRID_LOCAL=mma keeps this one, for comparisons).
//  5. A query whose far denominator D_far - D_far,win comes out <= 0 is
//     flagged, counted, and recomputed with its local term alone.
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <type_traits>

#include <cublas_v2.h>

#include "cuda_internal.h"
#include "hybrid_den.cuh"
#include "hybrid_wgmma.h"
#include "pca.h"
#include "taylor_small.h"

// LAPACK (OpenBLAS): symmetric eigen decomposition. kernels/pca.c takes
// every eigenpair with dsyev; the fit here needs the top g only: dsyevr with
// range 'I' gives the same vectors (to rounding, then the same sign rule) in
// about half the time. Eigenvalues ascending, eigenvectors in the columns.
extern "C" void dsyevr_(const char *jobz, const char *range, const char *uplo, const int *n, double *a,
                        const int *lda, const double *vl, const double *vu, const int *il, const int *iu,
                        const double *abstol, int *m, double *w, double *z, const int *ldz, int *isuppz,
                        double *work, const int *lwork, int *iwork, const int *liwork, int *info, size_t jobz_len,
                        size_t range_len, size_t uplo_len);
// OpenBLAS's own thread count: the solves run one per worker thread, each
// single-threaded inside (OpenBLAS threads under 16 workers oversubscribed
// the cores: 42 ms a flux1 layer against ~3 ms).
extern "C" int openblas_get_num_threads(void);
extern "C" void openblas_set_num_threads(int n);

namespace {

using namespace tkc;

struct pca_entry {
    int layer, step_fit, BH, D, g;
    float *P; // device [BH][D][g]
};

// The far denominators' counters and the flagged path's bad word, one copy back.
struct den_word {
    tkc_den_stats den;
    unsigned bad; // a kernel read a NaN/Inf input (flagged path only)
};

} // namespace

struct tkc_hybrid_state {
    cublasHandle_t blas;
    pca_entry *pca;
    int npca, cap;
    void *ws;
    size_t ws_bytes;
    size_t table_key;         // far-field feature table in ws: (offset, g, P) + 1, 0 = none
    cudaStream_t side;        // text queries' exact rows run here, beside the far field
    cudaEvent_t fork, join;
    cudaEvent_t tl[5]; // TKC_HYBRID_TIMELINE (diagnostics): call start, projections, far field, local, text rows
    int tl_ok;
};

namespace {

size_t al256(size_t x) { return (x + 255) & ~(size_t)255; }

// The PCA rows [n] (is_key, b, token) of every head -> X [H][n][D] fp64.
template <typename T>
__global__ void gather_sel_rows(const T *q0, const T *k0, const int *sel, int n, int H, int Nq, int Nk, int D,
                                double *out) {
    int h = blockIdx.y;
    for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < n * D; e += gridDim.x * blockDim.x) {
        int t = e / D, c = e % D;
        const int *r = sel + 3 * t;
        const T *src = r[0] ? k0 + (((size_t)r[1] * H + h) * Nk + r[2]) * D : q0 + (((size_t)r[1] * H + h) * Nq + r[2]) * D;
        out[((size_t)h * n + t) * D + c] = (double)elem<T>::to_f(src[c]);
    }
}

// nonfinite2 (common.cuh) over 16 bytes.
template <typename T> __device__ __forceinline__ unsigned nonfinite8(const uint4 &u) {
    return nonfinite2<T>(u.x) | nonfinite2<T>(u.y) | nonfinite2<T>(u.z) | nonfinite2<T>(u.w);
}
// One warp vote, one store: *bad = 1 when a thread of the warp saw a NaN/Inf
// (every thread of the warp must call it).
__device__ __forceinline__ void flag_warp(unsigned *bad, unsigned nf) {
    if (bad && __any_sync(0xffffffffu, nf != 0) && (threadIdx.x & 31) == 0) *bad = 1u;
}

// The text rows [0, T) of every head of x [BH][N][D] (D % 8 == 0, 16-byte
// aligned): *bad = 1 when one holds a NaN/Inf. The rows far_reduce_kernel
// does not read in the flagged path (see tkc_hybrid).
template <typename T>
__global__ void __launch_bounds__(256) text_rows_scan_kernel(const T *x, int BH, int N, int Tn, int D, unsigned *bad) {
    const size_t per = (size_t)Tn * D / 8, n = per * BH; // 16-byte chunks
    unsigned nf = 0;
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < n; e += (size_t)gridDim.x * blockDim.x) {
        const size_t bh = e / per, c = e - bh * per;
        nf |= nonfinite8<T>(*reinterpret_cast<const uint4 *>(x + bh * (size_t)N * D + c * 8));
    }
    flag_warp(bad, nf);
}

// The flagged path's text rows, computed into a compact [BH][T][D] buffer at
// the start of the call (beside the projections and the far field), copied
// into o's rows [0, T) of every head once bad is final, unless it is set.
__global__ void __launch_bounds__(256) text_rows_copy_kernel(const uint4 *src, uint4 *o, int BH, int N, int Tn,
                                                            int D, const unsigned *bad) {
    if (*bad) return; // a NaN/Inf input: o stays as it was
    const size_t per = (size_t)Tn * D / 8, n = per * BH; // 16-byte chunks
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < n; e += (size_t)gridDim.x * blockDim.x) {
        const size_t bh = e / per, c = e - bh * per;
        o[bh * (size_t)N * D / 8 + c] = src[e];
    }
}

// x' rows: [BH][N][g] in T. A block projects 64 rows: the rows are staged in
// shared memory with coalesced 16-byte loads; two threads share a row, each
// computing g/2 outputs, and the norm is combined across the pair.
template <typename T, int G>
__global__ void __launch_bounds__(128) project_kernel(const T *x, const float *P, int N, int D, int modify,
                                                      float power, float clip, float eps, float sqrt_s, T *out,
                                                      unsigned *bad) {
    extern __shared__ float sm[];
    float *Ps = sm;               // [D][G]
    float *Xs = sm + D * G;       // [64][D+1]
    const int bh = blockIdx.y, n0 = blockIdx.x * 64, tid = threadIdx.x;
    for (int i = tid; i < D * G; i += 128) Ps[i] = P[(size_t)bh * D * G + i];
    const int cpr = D / 8;
    unsigned nf = 0; // bad: a NaN/Inf among this thread's loads
    for (int c = tid; c < 64 * cpr; c += 128) {
        int r = c / cpr, cc = (c % cpr) * 8, n = n0 + r;
        uint4 u = make_uint4(0, 0, 0, 0);
        if (n < N) u = *reinterpret_cast<const uint4 *>(x + ((size_t)bh * N + n) * D + cc);
        if (bad) nf |= nonfinite8<T>(u);
        const T *h = reinterpret_cast<const T *>(&u);
#pragma unroll
        for (int i = 0; i < 8; i++) Xs[r * (D + 1) + cc + i] = elem<T>::to_f(h[i]);
    }
    flag_warp(bad, nf);
    __syncthreads();
    const int r = tid >> 1, half = tid & 1, n = n0 + r;
    float acc[G / 2];
#pragma unroll
    for (int j = 0; j < G / 2; j++) acc[j] = 0.f;
    for (int i = 0; i < D; i++) {
        float xi = Xs[r * (D + 1) + i];
#pragma unroll
        for (int j = 0; j < G / 2; j++) acc[j] += xi * Ps[i * G + half * (G / 2) + j];
    }
    float ss = 0.f;
#pragma unroll
    for (int j = 0; j < G / 2; j++) ss += acc[j] * acc[j];
    ss += __shfl_xor_sync(0xffffffffu, ss, 1);
    float f = sqrt_s;
    if (modify) {
        float nrm = sqrtf(ss) + eps;
        if (modify == 1) f /= nrm;
        else {
            if (power > 0.f) f *= powf(nrm, -power);
            if (clip > 0.f) f *= fminf(1.f, clip / nrm);
        }
    }
    if (n < N) {
        T *o = out + ((size_t)bh * N + n) * G + half * (G / 2);
#pragma unroll
        for (int j = 0; j < G / 2; j++) o[j] = elem<T>::from_f(acc[j] * f);
    }
}

// The far field's key mask of a 2d normalized call: image keys the call keeps
// (the text keys are every image query's local keys, never far).
__global__ void image_key_mask_kernel(const uint8_t *mask, int B, int N, int T, uint8_t *out) {
    for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < B * N; e += gridDim.x * blockDim.x)
        out[e] = (e % N) >= T && (!mask || mask[e]);
}

// The stats' taps of one side (struct tkc_stats_taps, cuda_internal.h):
// what the projection of q0 (side 0) or k0 (side 1) writes for the stats
// beside x', with stats.cu norms_mma_kernel's definitions.
struct ProjTaps {
    const void *xraw;     // rows of the raw norm; == x: read from the staged tile
    const uint8_t *mask;  // [B][N] key rows, NULL = every row kept
    int H;
    float *raw, *mod;     // [BH*N]
    float *F;             // [BH][N][nsp], NULL = none
    const float *qhat;    // [BH][nsp][G]
    int nsp;              // a multiple of 16
    int modify;
    float power, clip, eps;
};

// The same projection on the matrix units: a block's 64 rows (bf16/f16, as
// stored) times P split into two 16-bit parts (P = hi + lo, |P - hi - lo| <=
// 2^-17 |P|), accumulated in fp32; then the row norm and the modification.
// TAPS (bf16 only): also the stats' values of every row (ProjTaps): P's third
// bf16 part in a chain of its own (y = P^T x0 to ~2^-27, as norms_mma_kernel;
// x' itself stays the two-part product), the raw norm in fp32, the stats'
// modified norm mod_factor(|y|) |y| and the far logits of the sampled queries.
template <typename T, int D, int G, bool TAPS>
__global__ void __launch_bounds__(128) project_mma_kernel(const T *x, const float *P, int N, int modify,
                                                          float power, float clip, float eps, float sqrt_s,
                                                          T *out, unsigned *bad, ProjTaps tp) {
    static_assert(!TAPS || std::is_same<T, __nv_bfloat16>::value, "the stats' taps take bf16 rows");
    constexpr int XLD = D + 8, PLD = G + 8, NT = G / 8;
    __shared__ __align__(16) T Xs[64 * XLD];
    __shared__ __align__(16) T Ph[D * PLD];
    __shared__ __align__(16) T Pl[D * PLD];
    __shared__ __align__(16) T Pt[TAPS ? D * PLD : 8]; // TAPS: P's third part
    const int bh = blockIdx.y, n0 = blockIdx.x * 64, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const T *xb = x + (size_t)bh * N * D;
    for (int c = tid; c < 64 * (D / 8); c += 128) {
        int r = c / (D / 8), cc = c % (D / 8), n = n0 + r;
        cp_async16(Xs + r * XLD + cc * 8, xb + (size_t)(n < N ? n : 0) * D + cc * 8, n < N ? 16 : 0);
    }
    cp_async_commit();
    const float *Pb = P + (size_t)bh * D * G;
    // P's D*G/128 values of this thread: every load issued before the first use (one
    // round trip, not one per value: the loop that waited on each load kept a block
    // ~4x longer than its rows' copy)
    static_assert(D * G % 128 == 0, "whole rounds of 128 threads");
    float pv[D * G / 128];
#pragma unroll
    for (int it = 0; it < D * G / 128; it++) pv[it] = __ldg(Pb + tid + it * 128);
#pragma unroll
    for (int it = 0; it < D * G / 128; it++) {
        const int i = tid + it * 128;
        const float p = pv[it];
        T hi = elem<T>::from_f(p);
        T lo = elem<T>::from_f(p - elem<T>::to_f(hi));
        Ph[(i / G) * PLD + i % G] = hi;
        Pl[(i / G) * PLD + i % G] = lo;
        if constexpr (TAPS) Pt[(i / G) * PLD + i % G] = elem<T>::from_f(p - elem<T>::to_f(hi) - elem<T>::to_f(lo));
    }
    cp_async_wait<0>();
    __syncthreads();
    float acc[NT][4], acc3[TAPS ? NT : 1][4];
#pragma unroll
    for (int i = 0; i < NT; i++) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
#pragma unroll
    for (int i = 0; i < (TAPS ? NT : 1); i++) acc3[i][0] = acc3[i][1] = acc3[i][2] = acc3[i][3] = 0.f;
    float ssr[2] = {0.f, 0.f}; // TAPS, xraw == x: the raw norms' sums of the rows lane/4 and lane/4 + 8
    const bool raw_here = TAPS && tp.xraw == (const void *)x;
    unsigned nf = 0; // bad: a NaN/Inf among the warp's rows (its A fragments hold each element once)
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
        uint32_t af[4];
        ldsm_x4(af, Xs + (warp * 16 + (lane & 7) + 8 * ((lane >> 3) & 1)) * XLD + kk * 16 + 8 * (lane >> 4));
        if (bad) nf |= nonfinite2<T>(af[0]) | nonfinite2<T>(af[1]) | nonfinite2<T>(af[2]) | nonfinite2<T>(af[3]);
        if (raw_here)
#pragma unroll
            for (int i = 0; i < 4; i++) ssr[i & 1] += bf16_sq2(af[i]); // af[0], af[2]: row lane/4; af[1], af[3]: row lane/4 + 8
        const int row = kk * 16 + (lane & 7) + 8 * ((lane >> 3) & 1);
#pragma unroll
        for (int dp = 0; dp < G / 16; dp++) {
            uint32_t r[4];
            ldsm_x4_t(r, Ph + row * PLD + dp * 16 + 8 * (lane >> 4));
            mma16816<T>(acc[2 * dp], af, r[0], r[1]);
            mma16816<T>(acc[2 * dp + 1], af, r[2], r[3]);
            ldsm_x4_t(r, Pl + row * PLD + dp * 16 + 8 * (lane >> 4));
            mma16816<T>(acc[2 * dp], af, r[0], r[1]);
            mma16816<T>(acc[2 * dp + 1], af, r[2], r[3]);
            if constexpr (TAPS) {
                ldsm_x4_t(r, Pt + row * PLD + dp * 16 + 8 * (lane >> 4));
                mma16816<T>(acc3[2 * dp], af, r[0], r[1]);
                mma16816<T>(acc3[2 * dp + 1], af, r[2], r[3]);
            }
        }
    }
    flag_warp(bad, nf);
    float ss_lo = 0.f, ss_hi = 0.f;
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
        ss_lo += acc[nt][0] * acc[nt][0] + acc[nt][1] * acc[nt][1];
        ss_hi += acc[nt][2] * acc[nt][2] + acc[nt][3] * acc[nt][3];
    }
#pragma unroll
    for (int o = 1; o <= 2; o <<= 1) {
        ss_lo += __shfl_xor_sync(0xffffffffu, ss_lo, o);
        ss_hi += __shfl_xor_sync(0xffffffffu, ss_hi, o);
    }
    float f[2] = {sqrt_s, sqrt_s}, ss[2] = {ss_lo, ss_hi};
#pragma unroll
    for (int i = 0; i < 2; i++)
        if (modify) {
            float nrm = sqrtf(ss[i]) + eps;
            if (modify == 1) f[i] /= nrm;
            else {
                if (power > 0.f) f[i] *= powf(nrm, -power);
                if (clip > 0.f) f[i] *= fminf(1.f, clip / nrm);
            }
        }
    const int n_lo = n0 + warp * 16 + (lane >> 2), n_hi = n_lo + 8;
    T *ob = out + (size_t)bh * N * G;
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
        int c = nt * 8 + 2 * (lane & 3);
        if (n_lo < N) *reinterpret_cast<uint32_t *>(ob + (size_t)n_lo * G + c) = elem<T>::pack(acc[nt][0] * f[0], acc[nt][1] * f[0]);
        if (n_hi < N) *reinterpret_cast<uint32_t *>(ob + (size_t)n_hi * G + c) = elem<T>::pack(acc[nt][2] * f[1], acc[nt][3] * f[1]);
    }
    if constexpr (TAPS) {
        const int t4 = lane & 3, rn[2] = {n_lo, n_hi};
        if (!raw_here) { // the raw rows are other rows (q0/k0 given): 16-byte loads, four per lane and row
            const uint4 *xr = reinterpret_cast<const uint4 *>(tp.xraw) + (size_t)bh * N * (D / 8);
#pragma unroll
            for (int h = 0; h < 2; h++)
#pragma unroll
                for (int p = 0; p < D / 32; p++)
                    if (rn[h] < N) ssr[h] += bf16_sq_sum(__ldcs(xr + (size_t)rn[h] * (D / 8) + 4 * p + t4));
        }
        float y[NT][4], fs[2];
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) y[nt][e] = acc[nt][e] + acc3[nt][e];
        store_row_norms<NT>(y, ssr, t4, rn, N, tp.mask ? tp.mask + (size_t)(bh / tp.H) * N : nullptr, tp.modify,
                            tp.power, tp.clip, tp.eps, tp.raw + (size_t)bh * N, tp.mod + (size_t)bh * N, fs);
        if (tp.F) // s_far q^_r . mod(y) of the sampled queries
            store_far_logits<NT, G, true>(y, fs, tp.qhat + (size_t)bh * tp.nsp * G, tp.nsp, t4, rn, N,
                                          tp.F + (size_t)bh * N * tp.nsp);
    }
}

// tp: the stats' taps (bf16, D 64/128, g 16/32 on the matrix units only; the
// caller checks project_taps_fit), NULL = none.
bool project_taps_fit(int dt, int D, int g) {
    return dt == TK_DTYPE_BF16 && (D == 64 || D == 128) && (g == 16 || g == 32) && !getenv("TKC_HYBRID_PROJ_FMA");
}

template <typename T>
int launch_project(const void *x, const float *P, int N, int D, int g, int BH, int modify, float power,
                   float clip, float eps, float sqrt_s, void *out, unsigned *bad, cudaStream_t st,
                   const ProjTaps *tp = nullptr) {
    dim3 grid((N + 63) / 64, BH);
    ProjTaps none;
    memset(&none, 0, sizeof none);
    if constexpr (std::is_same<T, __nv_bfloat16>::value) {
#define TKC_PROJ_TAPS(DD, GG)                                                                                     \
    if (tp && D == DD && g == GG) {                                                                               \
        project_mma_kernel<T, DD, GG, true><<<grid, 128, 0, st>>>((const T *)x, P, N, modify, power, clip, eps,   \
                                                                  sqrt_s, (T *)out, bad, *tp);                    \
        return cudaGetLastError() != cudaSuccess;                                                                 \
    }
        TKC_PROJ_TAPS(128, 16)
        TKC_PROJ_TAPS(128, 32)
        TKC_PROJ_TAPS(64, 16)
        TKC_PROJ_TAPS(64, 32)
#undef TKC_PROJ_TAPS
    }
    if (tp) return 1; // not a taps case (project_taps_fit)
#define TKC_PROJ(DD, GG)                                                                                  \
    if (D == DD && g == GG) {                                                                             \
        project_mma_kernel<T, DD, GG, false><<<grid, 128, 0, st>>>((const T *)x, P, N, modify, power, clip, eps, \
                                                            sqrt_s, (T *)out, bad, none);                 \
        return cudaGetLastError() != cudaSuccess;                                                         \
    }
    if (!getenv("TKC_HYBRID_PROJ_FMA")) {
        TKC_PROJ(128, 16)
        TKC_PROJ(128, 32)
        TKC_PROJ(64, 16)
        TKC_PROJ(64, 32)
        TKC_PROJ(32, 16)
        TKC_PROJ(32, 32)
    }
#undef TKC_PROJ
    size_t sm = sizeof(float) * ((size_t)D * g + 64 * (D + 1));
    if (g == 16) {
        if (cudaFuncSetAttribute(project_kernel<T, 16>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)sm)) return 1;
        project_kernel<T, 16><<<grid, 128, sm, st>>>((const T *)x, P, N, D, modify, power, clip, eps, sqrt_s, (T *)out, bad);
    } else {
        if (cudaFuncSetAttribute(project_kernel<T, 32>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)sm)) return 1;
        project_kernel<T, 32><<<grid, 128, sm, st>>>((const T *)x, P, N, D, modify, power, clip, eps, sqrt_s, (T *)out, bad);
    }
    return cudaGetLastError() != cudaSuccess;
}

struct LocalArgs {
    const void *q, *k, *v, *qp, *kp; // qp, kp: projected [BH][N][G]
    const uint8_t *mask;
    const float *far;                // FARM 1: [BH][N][D+1] num | den (unnormalized)
    const void *ftab;                // FARM 2: the far field's feature table and f16 S|z (tkc_far_tables)
    const __half *fsh;
    const unsigned *fcolmax;
    int fR, fRpad;
    void *o;
    const uint8_t *only;             // recompute pass: write only rows flagged here
    uint8_t *flags;                  // rows whose far denominator came out <= 0
    tkc_den_stats *den;
    int H, N, T, gh, gw, r, shape2d;
    int split_issue; // K of the next tile before S, its V after the softmax (else both before S)
    int skip_chunks; // 2d: a warp skips the 16-key chunks none of its queries sees
    float scale_log2, w;
    float c0, c1, c2, c3; // kappa_P coefficients (P <= 4)
    int normalized;
    const unsigned *bad;  // or NULL: nonzero as the kernel starts = write nothing (the flagged path)
};

constexpr int LKT = 64;       // keys per tile
constexpr int LNW = 4;        // warps: 64 queries
constexpr int INFO_INVALID = -1, INFO_TEXT = -2;

// Bits lo..hi of 0..7 set (none when the range misses).
__device__ __forceinline__ int range_bits(int lo, int hi) {
    lo = max(lo, 0);
    hi = min(hi, 7);
    return lo > hi ? 0 : ((2 << hi) - 1) & ~((1 << lo) - 1);
}

// Key list of a block: 2d = text tokens padded to a tile, then the clamped
// rectangle; 1d = a contiguous token range. Returns the token of list slot L
// (or -1) and its info word for the window test.
struct KeyList {
    int shape2d, T, Tpad, y0, x0, RW, RH, gw, kbeg, kend;
    __device__ __forceinline__ int count() const { return shape2d ? Tpad + RW * RH : kend - kbeg; }
    __device__ __forceinline__ int token(int L, int *info) const {
        if (!shape2d) {
            int t = kbeg + L;
            if (t >= kend) { *info = INFO_INVALID; return -1; }
            *info = t;
            return t;
        }
        if (L < Tpad) {
            if (L >= T) { *info = INFO_INVALID; return -1; }
            *info = INFO_TEXT;
            return L;
        }
        int m = L - Tpad;
        if (m >= RW * RH) { *info = INFO_INVALID; return -1; }
        int ky = y0 + m / RW, kx = x0 + m % RW;
        *info = (ky << 16) | kx;
        return T + ky * gw + kx;
    }
};

struct FarFeat { // taylor.cu's feature entry: w * x[i0] x[i1] x[i2], index G = the constant 1
    uint16_t off[3];
    __half w;
};

__device__ __forceinline__ float far_col_scale(unsigned bits) {
    float m = __uint_as_float(bits);
    return m > 0.f ? m * (1.f / 1024.f) : 1.f;
}

// Shared memory of the far prologue (FARM 2), inside the K/V buffers.
template <int D, int G> constexpr size_t far_prologue_bytes() {
    return (size_t)64 * (16 * LNW + 8) * 2 + (size_t)64 * (D + 16) * 2 + (size_t)(G + 1) * 32 * 4 + 64 * 8;
}

// FARM: 0 no far term; 1 far term read from a [num | den] buffer (additive
// combine); 2 far term fused (normalized combine): a prologue computes
// w * phi(q') . [S | z] into the accumulators at a running max of 0, so the
// online softmax rescales it with the local terms and no buffer is written.
template <typename T, typename TO, int D, int G, int FARM>
__global__ void __launch_bounds__(LNW * 32, 2) hybrid_local_kernel(LocalArgs a) {
    if (a.bad && *a.bad) return;
    constexpr bool FAR = FARM != 0;
    constexpr int LD = D + 8, GLD = G + 8, CH = D / 8, BR = 16 * LNW, NTHR = LNW * 32;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T *Qs = reinterpret_cast<T *>(smem_raw);       // [BR][LD]
    T *Ks = Qs + BR * LD;                           // [2][LKT][LD]
    T *Vs = Ks + 2 * LKT * LD;                      // [2][LKT][LD]
    T *KPs = Vs + 2 * LKT * LD;                     // [2][LKT][GLD]
    T *QPs = KPs + 2 * LKT * GLD;                   // [BR][GLD]
    int *info = reinterpret_cast<int *>(QPs + BR * GLD); // [2][LKT]
    __shared__ int qtok[BR];
    __shared__ far_den_block s_den;

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int bh = blockIdx.y, b = bh / a.H;
    const T *qb = reinterpret_cast<const T *>(a.q) + (size_t)bh * a.N * D;
    const T *kb = reinterpret_cast<const T *>(a.k) + (size_t)bh * a.N * D;
    const T *vb = reinterpret_cast<const T *>(a.v) + (size_t)bh * a.N * D;
    const T *qpb = FAR ? reinterpret_cast<const T *>(a.qp) + (size_t)bh * a.N * G : nullptr;
    const T *kpb = FAR ? reinterpret_cast<const T *>(a.kp) + (size_t)bh * a.N * G : nullptr;
    const uint8_t *mb = a.mask ? a.mask + (size_t)b * a.N : nullptr;

    KeyList kl;
    kl.shape2d = a.shape2d;
    kl.T = a.T;
    kl.Tpad = (a.T + LKT - 1) / LKT * LKT;
    kl.gw = a.gw;
    int qy0 = 0, qx0 = 0;
    if (a.shape2d) {
        int tiles_x = (a.gw + 7) / 8;
        qy0 = (blockIdx.x / tiles_x) * 8;
        qx0 = (blockIdx.x % tiles_x) * 8;
        kl.y0 = max(0, qy0 - a.r);
        kl.x0 = max(0, qx0 - a.r);
        kl.RH = min(a.gh, qy0 + 8 + a.r) - kl.y0;
        kl.RW = min(a.gw, qx0 + 8 + a.r) - kl.x0;
        kl.kbeg = kl.kend = 0;
    } else {
        int q0 = blockIdx.x * BR;
        kl.kbeg = max(0, q0 - a.r);
        kl.kend = min(a.N, q0 + BR + a.r);
        kl.y0 = kl.x0 = kl.RW = kl.RH = 0;
    }
    if (tid < BR) {
        int t;
        if (a.shape2d) {
            int qy = qy0 + tid / 8, qx = qx0 + tid % 8;
            t = (qy < a.gh && qx < a.gw) ? a.T + qy * a.gw + qx : -1;
        } else {
            t = blockIdx.x * BR + tid;
            if (t >= a.N || t < a.T) t = -1; // text queries see every key: exact rows elsewhere
        }
        qtok[tid] = t;
    }
    if (tid == 0) {
        far_den_init(s_den);
    }
    __syncthreads();
    // Q (and q') rows by token
    for (int c = tid; c < BR * CH; c += NTHR) {
        int r = c / CH, cc = c % CH, t = qtok[r];
        cp_async16(Qs + r * LD + cc * 8, qb + (size_t)(t >= 0 ? t : 0) * D + cc * 8, t >= 0 ? 16 : 0);
    }
    if (FAR)
        for (int c = tid; c < BR * (G / 8); c += NTHR) {
            int r = c / (G / 8), cc = c % (G / 8), t = qtok[r];
            cp_async16(QPs + r * GLD + cc * 8, qpb + (size_t)(t >= 0 ? t : 0) * G + cc * 8, t >= 0 ? 16 : 0);
        }
    const int nkeys = kl.count();
    const int ntiles = (nkeys + LKT - 1) / LKT;
    float acc[D / 8][4];
#pragma unroll
    for (int i = 0; i < D / 8; i++) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
    float m_lo = -INFINITY, m_hi = -INFINITY, l1_lo = 0.f, l1_hi = 0.f, l2_lo = 0.f, l2_hi = 0.f;
    float dfar_lo = 0.f, dfar_hi = 0.f; // FARM 2: D_far of this thread's rows (natural units)
    if constexpr (FARM == 2) {
        // far prologue: [num | den] = phi(q') . [S | z] for the block's queries
        constexpr int PLD = 64 + 8, SLD = D + 16, DVP = D + 8;
        __half *Ph = reinterpret_cast<__half *>(Ks);        // [64 features][PLD] over the BR queries
        __half *Sc = Ph + 64 * PLD;                          // [64][SLD] rows of S|z
        __half2 *QH = reinterpret_cast<__half2 *>(Sc + 64 * SLD); // [G+1][32] query pairs, slot G = 1
        FarFeat *Tb = reinterpret_cast<FarFeat *>(QH + (G + 1) * 32); // [64] table entries
        cp_async_commit();
        cp_async_wait<0>();
        __syncthreads();
        for (int e = tid; e < (G + 1) * 32; e += NTHR) {
            int c = e >> 5, pr = e & 31;
            QH[e] = c == G ? __floats2half2_rn(1.f, 1.f)
                           : __floats2half2_rn(elem<T>::to_f(QPs[(2 * pr) * GLD + c]),
                                               elem<T>::to_f(QPs[(2 * pr + 1) * GLD + c]));
        }
        const FarFeat *tab = reinterpret_cast<const FarFeat *>(a.ftab);
        const __half *shb = a.fsh + (size_t)bh * a.fRpad * DVP;
        float accd[4] = {0.f, 0.f, 0.f, 0.f};
        const int R16 = (a.fR + 15) & ~15;
        for (int f0 = 0; f0 < R16; f0 += 64) {
            const int nlive = min(64, R16 - f0);
            __syncthreads(); // Qf ready; previous chunk's mma done with Ph and Sc
            for (int c = tid; c < nlive * (DVP / 8); c += NTHR) {
                int r = c / (DVP / 8), cc = c % (DVP / 8);
                cp_async16(Sc + r * SLD + cc * 8, shb + (size_t)(f0 + r) * DVP + cc * 8, 16);
            }
            if (tid < 32) cp_async16(Tb + 2 * tid, tab + f0 + 2 * tid, 16); // f0 + 64 <= Rpad
            cp_async_commit();
            cp_async_wait<0>();
            __syncthreads();
            // features of 2 queries per lane (taylor.cu's half2 pair table): w x[i0] x[i1] x[i2]
#pragma unroll 4
            for (int i = 0; i < 64 / LNW; i++) {
                const int f = warp + LNW * i;
                const FarFeat t = Tb[f];
                const __half2 *q2 = QH + lane;
                *reinterpret_cast<__half2 *>(Ph + f * PLD + 2 * lane) =
                    __hmul2(__hmul2(q2[t.off[0]], q2[t.off[1]]), __hmul2(q2[t.off[2]], __half2half2(t.w)));
            }
            __syncthreads();
            for (int ks = 0; ks < nlive / 16; ks++) {
                uint32_t af[4];
                ldsm_x4_t(af, Ph + (ks * 16 + (lane & 7) + 8 * (lane >> 4)) * PLD + warp * 16 + 8 * ((lane >> 3) & 1));
                const __half *sb = Sc + (ks * 16 + (lane & 7) + 8 * ((lane >> 3) & 1)) * SLD;
#pragma unroll
                for (int nt = 0; nt < D / 8; nt++) {
                    uint32_t bf[2];
                    ldsm_x2_t(bf, sb + nt * 8);
                    mma16816<__half>(acc[nt], af, bf[0], bf[1]);
                }
                uint32_t bf[2];
                ldsm_x2_t(bf, sb + D);
                mma16816<__half>(accd, af, bf[0], bf[1]);
            }
        }
        const unsigned *cm = a.fcolmax + (size_t)bh * DVP;
        const float dsc = far_col_scale(cm[D]);
        dfar_lo = __shfl_sync(0xffffffffu, accd[0], lane & ~3) * dsc;
        dfar_hi = __shfl_sync(0xffffffffu, accd[2], lane & ~3) * dsc;
#pragma unroll
        for (int nt = 0; nt < D / 8; nt++) {
            int c = nt * 8 + 2 * (lane & 3);
            float s0 = a.w * far_col_scale(cm[c]), s1 = a.w * far_col_scale(cm[c + 1]);
            acc[nt][0] *= s0, acc[nt][1] *= s1, acc[nt][2] *= s0, acc[nt][3] *= s1;
        }
        // the far term enters at a running max of 0 (log2 units): e^{-m} w N_far
        m_lo = m_hi = 0.f;
        if ((lane & 3) == 0) l1_lo = a.w * dfar_lo, l1_hi = a.w * dfar_hi;
        __syncthreads(); // the K/V buffers are free again
    }
    // two threads per key row: each copies half of the row's chunks
    // part 0: K, k' and info of tile j; 1: its V rows (token from part 0); 2: all
    int vtok = -1;
    auto issue = [&](int j, int part) {
        int buf = j & 1;
        int r = tid >> 1, half = tid & 1;
        if (part == 1) {
            const T *vs = vb + (size_t)(vtok >= 0 ? vtok : 0) * D;
            T *vd = Vs + (buf * LKT + r) * LD;
#pragma unroll
            for (int cc = half * (CH / 2); cc < (half + 1) * (CH / 2); cc++)
                cp_async16(vd + cc * 8, vs + cc * 8, vtok >= 0 ? 16 : 0);
            return;
        }
        int inf;
        int t = kl.token(j * LKT + r, &inf);
        if (t >= 0 && mb && !mb[t]) inf = INFO_INVALID;
        bool ok = t >= 0;
        if (a.shape2d) // (ymask << 8) | xmask: bit i = the block's query row / column i sees the key
            inf = inf == INFO_INVALID ? 0 : inf == INFO_TEXT ? 0xffff
                : (range_bits((inf >> 16) - qy0 - a.r, (inf >> 16) - qy0 + a.r) << 8) |
                      range_bits((inf & 0xffff) - qx0 - a.r, (inf & 0xffff) - qx0 + a.r);
        const T *ks = kb + (size_t)(ok ? t : 0) * D, *vs = vb + (size_t)(ok ? t : 0) * D;
        T *kd = Ks + (buf * LKT + r) * LD, *vd = Vs + (buf * LKT + r) * LD;
#pragma unroll
        for (int cc = half * (CH / 2); cc < (half + 1) * (CH / 2); cc++) {
            cp_async16(kd + cc * 8, ks + cc * 8, ok ? 16 : 0);
            if (part == 2) cp_async16(vd + cc * 8, vs + cc * 8, ok ? 16 : 0);
        }
        vtok = t;
        if (FAR && half == 0)
#pragma unroll
            for (int cc = 0; cc < G / 8; cc++)
                cp_async16(KPs + (buf * LKT + r) * GLD + cc * 8, kpb + (size_t)(ok ? t : 0) * G + cc * 8,
                           ok ? 16 : 0);
        if (half == 0) info[buf * LKT + r] = inf;
    };
    issue(0, 2);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();

    uint32_t qf[D / 16][4];
    uint32_t qpf[G / 16][4];
    {
        int r = warp * 16 + (lane & 7) + 8 * ((lane >> 3) & 1);
        for (int kk = 0; kk < D / 16; kk++) ldsm_x4(qf[kk], Qs + r * LD + kk * 16 + 8 * (lane >> 4));
        if (FAR)
            for (int kk = 0; kk < G / 16; kk++) ldsm_x4(qpf[kk], QPs + r * GLD + kk * 16 + 8 * (lane >> 4));
    }
    // this thread's two query rows: token and window position
    const int row_lo = warp * 16 + (lane >> 2), row_hi = row_lo + 8;
    const int t_lo = qtok[row_lo], t_hi = qtok[row_hi];
    // 2d: the info bits this thread's rows need (row_lo = 16 warp + lane/4: cell (2 warp, lane/4))
    const int vbits_lo = (1 << (8 + 2 * warp)) | (1 << (lane >> 2));
    const int vbits_hi = (1 << (9 + 2 * warp)) | (1 << (lane >> 2));


    for (int j = 0; j < ntiles; j++) {
        if (j + 1 < ntiles) issue(j + 1, a.split_issue ? 0 : 2);
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();
        const T *kt = Ks + (j & 1) * LKT * LD;
        const T *vt = Vs + (j & 1) * LKT * LD;
        const T *kpt = KPs + (j & 1) * LKT * GLD;
        const int *it = info + (j & 1) * LKT;
        // Text tiles (2d) are visible to every image query: only invalid slots
        // are masked there, and they need no far term: the normalized far
        // field leaves the text keys out (phase A masks them), the additive
        // one does not subtract.
        const bool text_tile = a.shape2d && j * LKT < kl.Tpad;
        const bool far_tile = FAR && !text_tile;

        // 2d: the 16-key chunks holding a key some query of this warp sees
        // (from the visibility bits); the others skip their S and P.V products
        unsigned need = 0xfu;
        if (a.shape2d && a.skip_chunks) {
            const int wy = 3 << (2 * warp), i0 = it[lane], i1 = it[lane + 32];
            const unsigned b0 = __ballot_sync(0xffffffffu, ((i0 >> 8) & wy) && (i0 & 0xff));
            const unsigned b1 = __ballot_sync(0xffffffffu, ((i1 >> 8) & wy) && (i1 & 0xff));
            need = ((b0 & 0xffffu) ? 1u : 0u) | ((b0 >> 16) ? 2u : 0u) | ((b1 & 0xffffu) ? 4u : 0u) |
                   ((b1 >> 16) ? 8u : 0u);
        }
        float s[LKT / 8][4], sp[LKT / 8][4];
#pragma unroll
        for (int i = 0; i < LKT / 8; i++) {
            s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
            sp[i][0] = sp[i][1] = sp[i][2] = sp[i][3] = 0.f;
        }
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++) {
#pragma unroll
            for (int np = 0; np < LKT / 16; np++) {
                if (!((need >> np) & 1u)) continue;
                uint32_t r[4];
                int row = np * 16 + (lane & 7) + 8 * (lane >> 4);
                ldsm_x4(r, kt + row * LD + kk * 16 + 8 * ((lane >> 3) & 1));
                mma16816<T>(s[2 * np], qf[kk], r[0], r[1]);
                mma16816<T>(s[2 * np + 1], qf[kk], r[2], r[3]);
            }
        }
        if (far_tile) {
#pragma unroll
            for (int kk = 0; kk < G / 16; kk++) {
#pragma unroll
                for (int np = 0; np < LKT / 16; np++) {
                    if (!((need >> np) & 1u)) continue;
                    uint32_t r[4];
                    int row = np * 16 + (lane & 7) + 8 * (lane >> 4);
                    ldsm_x4(r, kpt + row * GLD + kk * 16 + 8 * ((lane >> 3) & 1));
                    mma16816<T>(sp[2 * np], qpf[kk], r[0], r[1]);
                    mma16816<T>(sp[2 * np + 1], qpf[kk], r[2], r[3]);
                }
            }
        }
        // window visibility -> -inf bias; row max. Specialized (window shape,
        // far tile or not) so the element loop has no branches.
        float mx_lo = -INFINITY, mx_hi = -INFINITY;
        auto visibility = [&](auto far_tag, auto s2d_tag) {
            constexpr bool FT = decltype(far_tag)::value, S2D = decltype(s2d_tag)::value;
#pragma unroll
            for (int nt = 0; nt < LKT / 8; nt++) {
                const int2 inf2 = *reinterpret_cast<const int2 *>(it + nt * 8 + 2 * (lane & 3));
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    const int inf = e ? inf2.y : inf2.x;
                    bool v_lo, v_hi;
                    if constexpr (S2D) {
                        v_lo = (inf & vbits_lo) == vbits_lo;
                        v_hi = (inf & vbits_hi) == vbits_hi;
                    } else {
                        unsigned w2 = 2u * (unsigned)a.r;
                        v_lo = inf != INFO_INVALID && (unsigned)(inf - t_lo + a.r) <= w2;
                        v_hi = inf != INFO_INVALID && (unsigned)(inf - t_hi + a.r) <= w2;
                    }
                    s[nt][e] = v_lo ? s[nt][e] * a.scale_log2 : -INFINITY;
                    s[nt][2 + e] = v_hi ? s[nt][2 + e] * a.scale_log2 : -INFINITY;
                    if constexpr (FT) {
                        float x = sp[nt][e], y = sp[nt][2 + e];
                        sp[nt][e] = v_lo ? fmaf(x, fmaf(x, fmaf(x, a.c3, a.c2), a.c1), a.c0) : 0.f;
                        sp[nt][2 + e] = v_hi ? fmaf(y, fmaf(y, fmaf(y, a.c3, a.c2), a.c1), a.c0) : 0.f;
                    }
                }
                mx_lo = fmaxf(mx_lo, fmaxf(s[nt][0], s[nt][1]));
                mx_hi = fmaxf(mx_hi, fmaxf(s[nt][2], s[nt][3]));
            }
        };
        using yes = std::true_type;
        using no = std::false_type;
        if (a.shape2d) {
            if (far_tile) visibility(yes{}, yes{});
            else visibility(no{}, yes{});
        } else {
            if (far_tile) visibility(yes{}, no{});
            else visibility(no{}, no{});
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
        // e^{-m} in log2 units, kept finite
        float em_lo = ex2(fminf(-mu_lo, 120.f)), em_hi = ex2(fminf(-mu_hi, 120.f));
        float cw_lo = a.normalized ? a.w * em_lo : 0.f, cw_hi = a.normalized ? a.w * em_hi : 0.f;
        float s1_lo = 0.f, s1_hi = 0.f, s2_lo = 0.f, s2_hi = 0.f;
        uint32_t pf[LKT / 16][4];
        auto probs = [&](auto far_tag) {
            constexpr bool FT = decltype(far_tag)::value;
#pragma unroll
            for (int nt = 0; nt < LKT / 8; nt++) {
                float p0 = ex2(s[nt][0] - mu_lo), p1 = ex2(s[nt][1] - mu_lo);
                float p2 = ex2(s[nt][2] - mu_hi), p3 = ex2(s[nt][3] - mu_hi);
                s1_lo += p0 + p1;
                s1_hi += p2 + p3;
                if constexpr (FT) {
                    s2_lo += sp[nt][0] + sp[nt][1];
                    s2_hi += sp[nt][2] + sp[nt][3];
                    p0 -= cw_lo * sp[nt][0];
                    p1 -= cw_lo * sp[nt][1];
                    p2 -= cw_hi * sp[nt][2];
                    p3 -= cw_hi * sp[nt][3];
                }
                pf[nt / 2][(nt & 1) * 2 + 0] = elem<T>::pack(p0, p1);
                pf[nt / 2][(nt & 1) * 2 + 1] = elem<T>::pack(p2, p3);
            }
        };
        if (far_tile) probs(std::true_type{});
        else probs(std::false_type{});
        if (a.split_issue && j + 1 < ntiles) { // the next tile's V rows, behind this tile's S
            issue(j + 1, 1);
            cp_async_commit();
        }
        l1_lo = l1_lo * al_lo + s1_lo;
        l1_hi = l1_hi * al_hi + s1_hi;
        l2_lo = l2_lo * al_lo + em_lo * s2_lo;
        l2_hi = l2_hi * al_hi + em_hi * s2_hi;
#pragma unroll
        for (int i = 0; i < D / 8; i++) {
            acc[i][0] *= al_lo;
            acc[i][1] *= al_lo;
            acc[i][2] *= al_hi;
            acc[i][3] *= al_hi;
        }
#pragma unroll
        for (int kk = 0; kk < LKT / 16; kk++) {
            if (!((need >> kk) & 1u)) continue; // every p of the chunk is 0
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
#pragma unroll
    for (int o = 1; o <= 2; o <<= 1) {
        l1_lo += __shfl_xor_sync(0xffffffffu, l1_lo, o);
        l1_hi += __shfl_xor_sync(0xffffffffu, l1_hi, o);
        l2_lo += __shfl_xor_sync(0xffffffffu, l2_lo, o);
        l2_hi += __shfl_xor_sync(0xffffffffu, l2_hi, o);
    }
    // combine with the far term
    float mu_lo = m_lo == -INFINITY ? 0.f : m_lo, mu_hi = m_hi == -INFINITY ? 0.f : m_hi;
    float em_lo = ex2(fminf(-mu_lo, 120.f)), em_hi = ex2(fminf(-mu_hi, 120.f));
    float fden_lo = 0.f, fden_hi = 0.f, cnum_lo = 0.f, cnum_hi = 0.f, den_lo = l1_lo, den_hi = l1_hi;
    bool drop_lo = false, drop_hi = false;
    const float *far_lo = nullptr, *far_hi = nullptr;
    if constexpr (FARM == 2) {
        // l1 holds the local sum plus w e^{-m} D_far; l2 the window's far terms
        fden_lo = em_lo * dfar_lo - l2_lo;
        fden_hi = em_hi * dfar_hi - l2_hi;
        drop_lo = !(fden_lo > 0.f);
        drop_hi = !(fden_hi > 0.f);
        den_lo = l1_lo - a.w * l2_lo;
        den_hi = l1_hi - a.w * l2_hi;
        fden_lo *= ex2(fminf(mu_lo, 120.f)); // natural units for the stats
        fden_hi *= ex2(fminf(mu_hi, 120.f));
    } else if (FAR) {
        far_lo = a.far + ((size_t)bh * a.N + (t_lo >= 0 ? t_lo : 0)) * (D + 1);
        far_hi = a.far + ((size_t)bh * a.N + (t_hi >= 0 ? t_hi : 0)) * (D + 1);
        float dfar_lo = far_lo[D], dfar_hi = far_hi[D];
        if (a.normalized) {
            // far denominator without the window's keys, in e^{-m} units
            fden_lo = em_lo * dfar_lo - l2_lo;
            fden_hi = em_hi * dfar_hi - l2_hi;
            drop_lo = !(fden_lo > 0.f);
            drop_hi = !(fden_hi > 0.f);
            cnum_lo = a.w * em_lo;
            cnum_hi = a.w * em_hi;
            den_lo = l1_lo - a.w * l2_lo + a.w * em_lo * dfar_lo;
            den_hi = l1_hi - a.w * l2_hi + a.w * em_hi * dfar_hi;
            fden_lo *= ex2(fminf(mu_lo, 120.f)); // natural units for the stats
            fden_hi *= ex2(fminf(mu_hi, 120.f));
        } else {
            fden_lo = dfar_lo;
            fden_hi = dfar_hi;
            cnum_lo = dfar_lo > 0.f ? a.w / dfar_lo : 0.f;
            cnum_hi = dfar_hi > 0.f ? a.w / dfar_hi : 0.f;
            drop_lo = !(dfar_lo > 0.f);
            drop_hi = !(dfar_hi > 0.f);
        }
    }
    const bool w_lo = t_lo >= 0 && (!a.only || a.only[(size_t)bh * a.N + t_lo]);
    const bool w_hi = t_hi >= 0 && (!a.only || a.only[(size_t)bh * a.N + t_hi]);
    float inv_lo, inv_hi;
    if (a.normalized || !FAR) {
        inv_lo = den_lo != 0.f ? 1.f / den_lo : 0.f;
        inv_hi = den_hi != 0.f ? 1.f / den_hi : 0.f;
    } else {
        inv_lo = l1_lo > 0.f ? 1.f / l1_lo : 0.f;
        inv_hi = l1_hi > 0.f ? 1.f / l1_hi : 0.f;
    }
    TO *ob = reinterpret_cast<TO *>(a.o) + (size_t)bh * a.N * D;
#pragma unroll
    for (int nt = 0; nt < D / 8; nt++) {
        int c = nt * 8 + 2 * (lane & 3);
        float o0 = acc[nt][0], o1 = acc[nt][1], o2 = acc[nt][2], o3 = acc[nt][3];
        if (a.normalized) {
            if (FARM == 1) {
                o0 = (o0 + cnum_lo * far_lo[c]) * inv_lo;
                o1 = (o1 + cnum_lo * far_lo[c + 1]) * inv_lo;
                o2 = (o2 + cnum_hi * far_hi[c]) * inv_hi;
                o3 = (o3 + cnum_hi * far_hi[c + 1]) * inv_hi;
            } else {
                o0 *= inv_lo, o1 *= inv_lo, o2 *= inv_hi, o3 *= inv_hi;
            }
        } else {
            o0 = o0 * inv_lo + (FARM == 1 ? cnum_lo * far_lo[c] : 0.f);
            o1 = o1 * inv_lo + (FARM == 1 ? cnum_lo * far_lo[c + 1] : 0.f);
            o2 = o2 * inv_hi + (FARM == 1 ? cnum_hi * far_hi[c] : 0.f);
            o3 = o3 * inv_hi + (FARM == 1 ? cnum_hi * far_hi[c + 1] : 0.f);
        }
        if (w_lo) {
            ob[(size_t)t_lo * D + c] = elem<TO>::from_f(o0);
            ob[(size_t)t_lo * D + c + 1] = elem<TO>::from_f(o1);
        }
        if (w_hi) {
            ob[(size_t)t_hi * D + c] = elem<TO>::from_f(o2);
            ob[(size_t)t_hi * D + c + 1] = elem<TO>::from_f(o3);
        }
    }
    if (FAR && !a.only)
        far_den_warp(s_den, a.flags + (size_t)bh * a.N, lane, fden_lo, fden_hi, t_lo, t_hi, drop_lo, drop_hi);
    __syncthreads();
    if (FAR && tid == 0 && !a.only) far_den_flush(s_den, a.den);
}

template <typename T, typename TO, int D, int G, int FARM>
int launch_local(const LocalArgs &la, int nblocks, int BH, cudaStream_t st, char *err, size_t errlen) {
    constexpr int LD = D + 8, GLD = G + 8, BR = 16 * LNW;
    static_assert(FARM != 2 || far_prologue_bytes<D, G>() <= (size_t)4 * LKT * LD * sizeof(T),
                  "the far prologue lives in the K/V buffers");
    size_t smem = (size_t)(BR + 4 * LKT) * LD * sizeof(T) + (size_t)(2 * LKT + BR) * GLD * sizeof(T) +
                  2 * LKT * sizeof(int);
    auto kern = hybrid_local_kernel<T, TO, D, G, FARM>;
    TKC_TRY(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem), err, errlen);
    kern<<<dim3(nblocks, BH), LNW * 32, smem, st>>>(la);
    TKC_LAUNCHED("hybrid_local_kernel", err, errlen);
    return 0;
}

template <typename T, typename TO, int FARM>
int launch_local_g(const LocalArgs &la, int D, int G, int nblocks, int BH, cudaStream_t st, char *err,
                   size_t errlen) {
    if (G == 16) {
        if (D == 128) return launch_local<T, TO, 128, 16, FARM>(la, nblocks, BH, st, err, errlen);
        if (D == 64) return launch_local<T, TO, 64, 16, FARM>(la, nblocks, BH, st, err, errlen);
        if (D == 32) return launch_local<T, TO, 32, 16, FARM>(la, nblocks, BH, st, err, errlen);
    } else if (G == 32) {
        if (D == 128) return launch_local<T, TO, 128, 32, FARM>(la, nblocks, BH, st, err, errlen);
        if (D == 64) return launch_local<T, TO, 64, 32, FARM>(la, nblocks, BH, st, err, errlen);
        if (D == 32) return launch_local<T, TO, 32, 32, FARM>(la, nblocks, BH, st, err, errlen);
    }
    snprintf(err, errlen, "hybrid on cuda: head dim %d with global_dim %d (supported: D 32/64/128, global_dim 16/32)", D, G);
    return 3;
}

// farm: 0 no far term, 1 far buffer (additive), 2 fused far term (normalized)
template <typename T, typename TO>
int launch_local_t(const LocalArgs &la, int D, int G, int farm, int nblocks, int BH, cudaStream_t st,
                   char *err, size_t errlen) {
    if (farm == 0) {
        if (D == 128) return launch_local<T, TO, 128, 16, 0>(la, nblocks, BH, st, err, errlen);
        if (D == 64) return launch_local<T, TO, 64, 16, 0>(la, nblocks, BH, st, err, errlen);
        if (D == 32) return launch_local<T, TO, 32, 16, 0>(la, nblocks, BH, st, err, errlen);
    } else if (farm == 1) {
        return launch_local_g<T, TO, 1>(la, D, G, nblocks, BH, st, err, errlen);
    } else {
        return launch_local_g<T, TO, 2>(la, D, G, nblocks, BH, st, err, errlen);
    }
    snprintf(err, errlen, "hybrid on cuda: head dim %d with global_dim %d (supported: D 32/64/128)", D, G);
    return 3;
}

int ensure(tkc_hybrid_state *h, size_t bytes, char *err, size_t errlen) {
    if (bytes <= h->ws_bytes) return 0;
    if (h->ws) cudaFree(h->ws);
    h->ws = nullptr;
    h->ws_bytes = 0;
    h->table_key = 0;
    cudaError_t e = cudaMalloc(&h->ws, bytes);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        snprintf(err, errlen, "hybrid workspace of %zu bytes: %s", bytes, cudaGetErrorString(e));
        return e == cudaErrorMemoryAllocation ? 2 : 1;
    }
    h->ws_bytes = bytes;
    return 0;
}

// The cached projection of this layer, fitted (again) when the policy says so.
// The per-head eigen solves of a PCA fit, shared by worker threads: each
// takes the next head, runs LAPACK dsyevr (top g) on its fp64 second moment
// and writes those eigenvectors with pca.c's order and sign rule.
struct eig_job {
    double *Ch;  // [H][D][D]
    float *host; // [B*H][D][g]
    int H, B, D, g;
    int next, info, nomem; // guarded by the atomics below
};

void *eig_worker(void *arg) {
    eig_job *j = (eig_job *)arg;
    const int D = j->D, g = j->g;
    const int il = D - g + 1, iu = D;
    const double vl = 0, vu = 0, abstol = 0;
    // one workspace per worker, sized by a query (it depends on D only)
    int nn = D, m = 0, info = 0, lwork = -1, liwork = -1, iwq = 0;
    double wq = 0;
    double *eval = (double *)malloc(sizeof(double) * D), *z = (double *)malloc(sizeof(double) * D * g);
    int *isuppz = (int *)malloc(sizeof(int) * 2 * D);
    if (eval && z && isuppz)
        dsyevr_("V", "I", "L", &nn, j->Ch, &nn, &vl, &vu, &il, &iu, &abstol, &m, eval, z, &nn, isuppz, &wq, &lwork,
                &iwq, &liwork, &info, 1, 1, 1);
    lwork = info == 0 && wq >= 1 ? (int)wq : 26 * D;
    liwork = info == 0 && iwq >= 1 ? iwq : 10 * D;
    double *work = (double *)malloc(sizeof(double) * lwork);
    int *iwork = (int *)malloc(sizeof(int) * liwork);
    if (!eval || !z || !isuppz || !work || !iwork) __atomic_store_n(&j->nomem, 1, __ATOMIC_RELAXED);
    for (;;) {
        if (__atomic_load_n(&j->nomem, __ATOMIC_RELAXED)) break;
        int hh = __atomic_fetch_add(&j->next, 1, __ATOMIC_RELAXED);
        if (hh >= j->H) break;
        double *a = j->Ch + (size_t)hh * D * D; // symmetric: row- and column-major alike
        info = 0;
        dsyevr_("V", "I", "L", &nn, a, &nn, &vl, &vu, &il, &iu, &abstol, &m, eval, z, &nn, isuppz, work, &lwork,
                iwork, &liwork, &info, 1, 1, 1);
        if (info != 0 || m != g) {
            __atomic_store_n(&j->info, info != 0 ? info : -1000 - m, __ATOMIC_RELAXED);
            continue;
        }
        for (int r = 0; r < g; r++) { // column g-1-r: the r-th largest eigenvalue's vector (pca.c's order)
            const double *vec = z + (size_t)(g - 1 - r) * D;
            int big = 0;
            for (int i = 1; i < D; i++)
                if (fabs(vec[i]) > fabs(vec[big])) big = i;
            double sign = vec[big] < 0 ? -1.0 : 1.0; // pca.c's sign rule
            for (int b = 0; b < j->B; b++)
                for (int i = 0; i < D; i++) j->host[((size_t)(b * j->H + hh) * D + i) * g + r] = (float)(sign * vec[i]);
        }
    }
    free(eval), free(z), free(isuppz), free(work), free(iwork);
    return nullptr;
}

// The cache entry of (layer, shape, g), or NULL; *fit: the policy fits (again) on this call.
pca_entry *pca_lookup(tkc_hybrid_state *h, const tk_call *call, const tk_config *cfg, int g, bool *fit) {
    const int BH = call->B * call->H, D = call->D;
    pca_entry *e = nullptr;
    for (int i = 0; i < h->npca; i++)
        if (h->pca[i].layer == call->layer && h->pca[i].BH == BH && h->pca[i].D == D && h->pca[i].g == g)
            e = &h->pca[i];
    *fit = !e || call->layer < 0 || /* unknown layer: fitted every call, as kernels/pca.c */
           (cfg->pca_refit_every > 0 &&
            (call->step < e->step_fit || call->step - e->step_fit >= cfg->pca_refit_every));
    return e;
}

int pca_for(tkc_hybrid_state *h, const tk_call *call, const tk_config *cfg, const void *q0,
            const void *k0, int dt, int g, cudaStream_t st, float **P_out, char *err, size_t errlen) {
    const int BH = call->B * call->H, D = call->D;
    bool fit = true;
    pca_entry *e = pca_lookup(h, call, cfg, g, &fit);
    if (!fit) {
        *P_out = e->P;
        return 0;
    }
    if (!e) {
        if (h->npca == h->cap) {
            int nc = h->cap ? 2 * h->cap : 16;
            pca_entry *np = (pca_entry *)realloc(h->pca, sizeof(pca_entry) * nc);
            if (!np) {
                snprintf(err, errlen, "PCA cache: host allocation");
                return 2;
            }
            h->pca = np;
            h->cap = nc;
        }
        e = &h->pca[h->npca++];
        memset(e, 0, sizeof *e);
        e->layer = call->layer, e->BH = BH, e->D = D, e->g = g;
        cudaError_t ce = cudaMalloc(&e->P, sizeof(float) * BH * D * g);
        if (ce != cudaSuccess) {
            (void)cudaGetLastError();
            h->npca--;
            snprintf(err, errlen, "PCA projection: %s", cudaGetErrorString(ce));
            return ce == cudaErrorMemoryAllocation ? 2 : 1;
        }
    }
    e->step_fit = call->step;
    // The ref backend's fit (kernels/pca.h): rows chosen by tki_pca_select_rows
    // (every q row, then every kept k row; seed cfg->seed), shared by the
    // batch's heads; C = X^T X in fp64 (cuBLAS); eigenvectors by LAPACK dsyevr (top g),
    // largest eigenvalue first, largest-magnitude component positive.
    const int H = call->H, B = call->B;
    const int count = cfg->pca_samples > 0 ? cfg->pca_samples : 0;
    float *host = (float *)malloc(sizeof(float) * BH * D * g);
    double *Ch = (double *)malloc(sizeof(double) * (size_t)H * D * D);
    tki_pca_row *sel = (tki_pca_row *)malloc(sizeof(tki_pca_row) * (count > 0 ? count : 1));
    int *sel3 = (int *)malloc(sizeof(int) * 3 * (count > 0 ? count : 1));
    uint8_t *hmask = call->key_mask ? (uint8_t *)malloc((size_t)B * call->Nk) : nullptr;
    int rc = 0;
    if (!host || !Ch || !sel || !sel3 || (call->key_mask && !hmask)) {
        snprintf(err, errlen, "PCA: host allocation");
        rc = 2;
    }
    if (!rc && hmask) {
        cudaError_t ce = cudaMemcpyAsync(hmask, call->key_mask, (size_t)B * call->Nk, cudaMemcpyDeviceToHost, st);
        if (ce == cudaSuccess) ce = cudaStreamSynchronize(st);
        if (ce != cudaSuccess) {
            snprintf(err, errlen, "PCA key mask: %s", cudaGetErrorString(ce));
            rc = 1;
        }
    }
    int64_t n = 0;
    if (!rc) {
        n = tki_pca_select_rows((uint64_t)cfg->seed, count, B, call->Nq, call->Nk, hmask, sel);
        if (n < 0) {
            snprintf(err, errlen, "PCA rows: host allocation");
            rc = 2;
        }
    }
    if (!rc && n < g) { // too few rows: the truncated identity (first g coordinates)
        for (int i = 0; i < BH * D * g; i++) host[i] = ((i / g) % D == i % g) ? 1.f : 0.f;
    } else if (!rc) {
        for (int64_t t = 0; t < n; t++) sel3[3 * t] = sel[t].is_key, sel3[3 * t + 1] = sel[t].b, sel3[3 * t + 2] = sel[t].n;
        size_t xbytes = al256(sizeof(double) * (size_t)H * n * D);
        size_t need = al256(sizeof(int) * 3 * n) + xbytes + al256(sizeof(double) * (size_t)H * D * D);
        h->table_key = 0; // the fit's scratch below overwrites the cached far feature table
        rc = ensure(h, need, err, errlen);
        int *sel_d = (int *)h->ws;
        double *X = (double *)((char *)h->ws + al256(sizeof(int) * 3 * n));
        double *C = (double *)((char *)X + xbytes);
        cudaError_t ce = cudaSuccess;
        if (!rc) ce = cudaMemcpyAsync(sel_d, sel3, sizeof(int) * 3 * n, cudaMemcpyHostToDevice, st);
        if (!rc && ce == cudaSuccess) {
            int nb = (int)((n * D + 255) / 256);
            dim3 grid(nb < 1024 ? nb : 1024, H);
            if (dt == TK_DTYPE_BF16)
                gather_sel_rows<<<grid, 256, 0, st>>>((const __nv_bfloat16 *)q0, (const __nv_bfloat16 *)k0, sel_d, (int)n,
                                                      H, call->Nq, call->Nk, D, X);
            else
                gather_sel_rows<<<grid, 256, 0, st>>>((const __half *)q0, (const __half *)k0, sel_d, (int)n, H,
                                                      call->Nq, call->Nk, D, X);
            ce = cudaGetLastError();
        }
        if (!rc && ce == cudaSuccess) {
            // column-major view: X_cm is D x n; C = X_cm X_cm^T (D x D) per head
            double one = 1.0 / (double)n, zero = 0.0;
            cublasStatus_t bs = cublasSetStream(h->blas, st);
            if (bs == CUBLAS_STATUS_SUCCESS)
                bs = cublasDgemmStridedBatched(h->blas, CUBLAS_OP_N, CUBLAS_OP_T, D, D, (int)n, &one, X, D,
                                               (long long)n * D, X, D, (long long)n * D, &zero, C, D,
                                               (long long)D * D, H);
            if (bs != CUBLAS_STATUS_SUCCESS) {
                snprintf(err, errlen, "PCA covariance: cuBLAS status %d", (int)bs);
                rc = 1;
            }
        }
        if (!rc && ce == cudaSuccess)
            ce = cudaMemcpyAsync(Ch, C, sizeof(double) * (size_t)H * D * D, cudaMemcpyDeviceToHost, st);
        if (!rc && ce == cudaSuccess) ce = cudaStreamSynchronize(st);
        if (!rc && ce != cudaSuccess) {
            snprintf(err, errlen, "PCA: %s", cudaGetErrorString(ce));
            rc = 1;
        }
        if (!rc) {
            // one solve per head, the heads spread over threads (24 dsyev in a row
            // made a flux1 layer's first call ~100 ms)
            eig_job job;
            job.Ch = Ch, job.host = host, job.H = H, job.B = B, job.D = D, job.g = g;
            job.next = 0, job.info = 0, job.nomem = 0;
            long cpus = sysconf(_SC_NPROCESSORS_ONLN);
            int nt = cpus < 1 ? 1 : cpus > 16 ? 16 : (int)cpus;
            if (nt > H) nt = H;
            pthread_t tid[16];
            int started = 0, blas_threads = openblas_get_num_threads();
            openblas_set_num_threads(1);
            for (int i = 1; i < nt; i++) {
                if (pthread_create(&tid[i], nullptr, eig_worker, &job) != 0) break;
                started = i;
            }
            eig_worker(&job);
            for (int i = 1; i <= started; i++) pthread_join(tid[i], nullptr);
            openblas_set_num_threads(blas_threads);
            if (job.nomem) {
                snprintf(err, errlen, "PCA: host allocation");
                rc = 2;
            } else if (job.info != 0) {
                snprintf(err, errlen, "PCA: eigen solver failed (info=%d)", job.info);
                rc = 1;
            }
        }
    }
    if (!rc) {
        cudaError_t ce = cudaMemcpyAsync(e->P, host, sizeof(float) * BH * D * g, cudaMemcpyHostToDevice, st);
        if (ce == cudaSuccess) ce = cudaStreamSynchronize(st);
        if (ce != cudaSuccess) {
            snprintf(err, errlen, "PCA upload: %s", cudaGetErrorString(ce));
            rc = 1;
        }
    }
    free(host), free(Ch), free(sel), free(sel3), free(hmask);
    if (rc) {
        e->step_fit = -1000000000; // refit next time
        return rc;
    }
    *P_out = e->P;
    return 0;
}

} // namespace

void tkc_hybrid_free(tkc_hybrid_state *h) {
    if (!h) return;
    for (int i = 0; i < h->npca; i++) cudaFree(h->pca[i].P);
    free(h->pca);
    if (h->ws) cudaFree(h->ws);
    if (h->blas) cublasDestroy(h->blas);
    if (h->side) cudaStreamDestroy(h->side);
    if (h->fork) cudaEventDestroy(h->fork);
    if (h->join) cudaEventDestroy(h->join);
    for (int i = 0; i < 5; i++)
        if (h->tl[i]) cudaEventDestroy(h->tl[i]);
    free(h);
}

void tkc_hybrid_reset(tkc_hybrid_state *h) {
    if (!h) return;
    for (int i = 0; i < h->npca; i++) cudaFree(h->pca[i].P);
    h->npca = 0;
}

int tkc_hybrid_projection(tkc_hybrid_state *h, int layer, int bh, float *out, int *D, int *g) {
    if (!h) return 1;
    for (int i = 0; i < h->npca; i++)
        if (h->pca[i].layer == layer && bh < h->pca[i].BH) {
            *D = h->pca[i].D, *g = h->pca[i].g;
            size_t n = (size_t)h->pca[i].D * h->pca[i].g;
            return cudaMemcpy(out, h->pca[i].P + bh * n, n * sizeof(float), cudaMemcpyDeviceToHost) != cudaSuccess;
        }
    return 1;
}

const float *tkc_hybrid_cached_projection(tkc_hybrid_state *h, const tk_call *call, const tk_config *cfg) {
    if (!h) return nullptr;
    bool fit = true;
    pca_entry *e = pca_lookup(h, call, cfg, cfg->global_dim, &fit); // tkc_hybrid's g
    return e && !fit ? e->P : nullptr;
}

// The flagged path (tkc_hybrid_flags_inputs): every element of q, k and v is
// read by exactly one of the kernels that set the call's bad word, all queued
// on st before any kernel that writes o:
//   q (= q0) and k (= k0): the projection kernels read every row n < N of
//     every head, all D columns (project_mma_kernel: a warp's A fragments
//     hold each element of its 16 rows once; project_kernel: its 16-byte
//     loads);
//   v rows [T, N) of every head: far_reduce_kernel (taylor_small.cu) loads
//     every kept key's row, all Dv columns, into V fragments (its slot groups
//     test one register of each: every element once; at Dv 128
//     far_reduce_wg_kernel reads back the 16-byte chunks each thread staged),
//     and the far field keeps
//     exactly the image keys (image_key_mask_kernel, no key mask on this
//     path); its splits cover every key tile;
//   v rows [0, T) (the text keys it masks out): text_rows_scan_kernel.
// The kernels that write o (the local kernel, its recompute pass, and
// text_rows_copy_kernel, which moves the text rows' exact output from the
// workspace once the far field is done) read the word first and write
// nothing when it is set. A wrong pointer
// equality (q0 a different buffer from q) or a key mask would leave rows
// unread: those calls take the scan.
static bool flag_path(const tkc_hybrid_state *h, const tk_call *call, const tk_config *cfg) {
    if (!h || (call->dtype != TK_DTYPE_BF16 && call->dtype != TK_DTYPE_F16) || call->key_mask) return false;
    if ((call->q0 && call->q0 != call->q) || (call->k0 && call->k0 != call->k)) return false;
    const int N = call->Nq, D = call->D, T = call->text_tokens > 0 ? call->text_tokens : 0;
    if (call->B <= 0 || call->H <= 0 || N <= 0 || call->Nk != N || call->Dv != D ||
        (D != 32 && D != 64 && D != 128))
        return false;
    if (cfg->window_shape != TK_WINDOW_2D || cfg->combine != TK_COMBINE_NORMALIZED) return false;
    if (tk_window_at(cfg, call->sigma) <= 0 || !(tk_far_weight_at(cfg, call->sigma) > 0)) return false;
    if (call->grid_h <= 0 || call->grid_w <= 0 || T + call->grid_h * call->grid_w != N || call->grid_w > 65535 ||
        call->grid_h > 32767)
        return false;
    const int g = cfg->global_dim, P = cfg->global_P;
    if ((g != 16 && g != 32) || P < 1 || P > 4) return false;
    // the far field on taylor_small.cu's degree-2 path (tkc_hybrid's ta; k' lies
    // in the 256-byte aligned workspace: v stands in for it in the alignment test)
    tkc_taylor_args ta;
    memset(&ta, 0, sizeof ta);
    ta.dtype = call->dtype;
    ta.B = call->B, ta.H = call->H, ta.Nq = N, ta.Nk = N, ta.D = g, ta.Dv = D;
    ta.blocks = 1, ta.terms = P, ta.s = 1.f, ta.eps = (float)cfg->eps, ta.raw_out = 1, ta.phase_a_only = 1;
    ta.q = ta.k = ta.v = call->v;
    if (!tkc_far_small_handles(&ta)) return false;
    bool fit = true;
    const pca_entry *e = pca_lookup(const_cast<tkc_hybrid_state *>(h), call, cfg, g, &fit);
    return e && !fit;
}

int tkc_hybrid_flags_inputs(const tkc_hybrid_state *hs, const tk_call *call, const tk_config *cfg) {
    return flag_path(hs, call, cfg);
}

int tkc_hybrid(tkc_hybrid_state **hs, const tk_call *call, const tk_config *cfg,
               const tk_stats_request *sreq, cudaStream_t st, tk_result *res, int flag_inputs,
               tkc_stats_taps *taps) {
    char err[192] = "";
    if (taps) taps->used = taps->rest_queued = taps->rest_rc = 0;
    if (!*hs) {
        tkc_hybrid_state *h = (tkc_hybrid_state *)calloc(1, sizeof *h);
        if (!h) {
            tkc_fail(res, TK_REASON_OUT_OF_MEMORY, "hybrid state: host allocation");
            return 0;
        }
        if (cublasCreate(&h->blas) != CUBLAS_STATUS_SUCCESS) {
            free(h);
            tkc_fail(res, TK_REASON_BACKEND_ERROR, "cublasCreate failed");
            return 0;
        }
        cudaError_t ce0 = cudaStreamCreateWithFlags(&h->side, cudaStreamNonBlocking);
        if (ce0 == cudaSuccess) ce0 = cudaEventCreateWithFlags(&h->fork, cudaEventDisableTiming);
        if (ce0 == cudaSuccess) ce0 = cudaEventCreateWithFlags(&h->join, cudaEventDisableTiming);
        if (ce0 != cudaSuccess) {
            tkc_hybrid_free(h);
            tkc_fail(res, TK_REASON_BACKEND_ERROR, "hybrid: stream/event creation failed");
            return 0;
        }
        *hs = h;
    }
    tkc_hybrid_state *h = *hs;
    // TKC_HYBRID_TIMELINE=1 (diagnostics): where each part of the call ends on the device, printed
    // to stderr when the call reads its counters back (timing events on both streams)
    static const bool timeline = getenv("TKC_HYBRID_TIMELINE") && atoi(getenv("TKC_HYBRID_TIMELINE")) > 0;
    if (timeline && !h->tl_ok) { // 1 created, 2 failed (no timeline)
        h->tl_ok = 1;
        for (int i = 0; i < 5; i++)
            if (cudaEventCreate(&h->tl[i]) != cudaSuccess) h->tl_ok = 2;
        (void)cudaGetLastError();
    }
    const bool tl = timeline && h->tl_ok == 1;
    unsigned tl_marked = 0; // the parts this call ran
    auto mark = [&](int i, cudaStream_t s_) {
        if (tl && cudaEventRecord(h->tl[i], s_) == cudaSuccess) tl_marked |= 1u << i;
    };
    mark(0, st);
    // the flagged path (flag_path): the kernels check the inputs; the caller ran no scan
    const bool flagged = flag_inputs && flag_path(h, call, cfg);
    if (flag_inputs && !flagged) { // cannot happen (the caller asked flag_path); its scan then decides
        tkc_fail(res, TK_REASON_BAD_INPUT, "hybrid: inputs not checked");
        return 0;
    }
    const int BH = call->B * call->H, N = call->Nq, D = call->D;
    const int W = tk_window_at(cfg, call->sigma);
    const double w = tk_far_weight_at(cfg, call->sigma);
    res->window = W;
    res->w = w;
    res->R = tkc_feature_count(cfg->global_dim < call->D ? cfg->global_dim : call->D, cfg->global_P);
    if (call->Nq != call->Nk || call->Dv != D || (D != 32 && D != 64 && D != 128)) {
        tkc_fail(res, TK_REASON_UNSUPPORTED_SHAPE, "hybrid on cuda: needs Nq == Nk, Dv == D and D 32, 64 or 128");
        return 0;
    }
    const int shape2d = cfg->window_shape == TK_WINDOW_2D;
    if (W > 0 && shape2d &&
        (call->grid_h <= 0 || call->grid_w <= 0 || call->text_tokens + call->grid_h * call->grid_w != N ||
         call->grid_w > 65535 || call->grid_h > 32767)) {
        tkc_fail(res, TK_REASON_UNSUPPORTED_SHAPE, "hybrid 2d window: text_tokens + grid_h*grid_w must equal N");
        return 0;
    }
    // f32: everything through bf16 copies
    const int dt = call->dtype == TK_DTYPE_F32 ? TK_DTYPE_BF16 : call->dtype;
    const size_t es = 2, nqk = (size_t)BH * N * D;
    const bool far = W > 0 && w > 0;
    const int g = cfg->global_dim, P = cfg->global_P;
    // 2: fused far term (normalized), 1: far buffer (additive), 0: none
    const int farm = !far ? 0 : cfg->combine == TK_COMBINE_NORMALIZED ? 2 : 1;
    const int T = call->text_tokens > 0 ? call->text_tokens : 0;
    const bool far_mask = farm == 2 && shape2d && T > 0;
    if (far && ((g != 16 && g != 32) || P > 4)) {
        snprintf(err, sizeof err, "hybrid on cuda: global_dim %d, global_P %d (supported: 16 or 32, P <= 4)", g, P);
        tkc_fail(res, TK_REASON_UNSUPPORTED_SHAPE, err);
        return 0;
    }
    tkc_taylor_args ta;
    memset(&ta, 0, sizeof ta);
    ta.dtype = dt;
    ta.B = call->B, ta.H = call->H, ta.Nq = N, ta.Nk = N, ta.D = g, ta.Dv = D;
    ta.blocks = 1, ta.terms = P, ta.s = 1.f, ta.eps = (float)cfg->eps, ta.raw_out = 1;
    ta.mask = call->key_mask;
    ta.phase_a_only = farm == 2;
    int nsm = 132;
    {
        int dev = 0;
        cudaGetDevice(&dev);
        cudaDeviceGetAttribute(&nsm, cudaDevAttrMultiProcessorCount, dev);
    }
    size_t ws_t = far ? tkc_taylor_workspace(&ta, nsm) : 0;
    // workspace: [conv q k v q0 k0 (f32 only)] [qp kp] [far] [flags] [taylor]
    size_t off = 0, off_conv = off;
    if (call->dtype == TK_DTYPE_F32) off += 5 * al256(nqk * es);
    size_t off_qp = off;
    if (far) off += 2 * al256((size_t)BH * N * g * es);
    size_t off_far = off;
    if (farm == 1) off += al256((size_t)BH * N * (D + 1) * sizeof(float));
    size_t off_fmask = off;
    if (far_mask) off += al256((size_t)call->B * N);
    size_t off_flags = off;
    off += al256((size_t)BH * N);
    size_t off_den = off;
    off += al256(sizeof(den_word));
    size_t off_t = off;
    off += ws_t;
    const bool text_buf = flagged && W > 0 && T > 0; // text rows into a buffer first (see text_rows)
    size_t off_text = off;
    if (text_buf) off += al256((size_t)BH * T * D * es);
    // the PCA fit uses the same workspace before the rest: fit first
    const void *q = call->q, *k = call->k, *v = call->v;
    const void *q0 = call->q0 ? call->q0 : call->q, *k0 = call->k0 ? call->k0 : call->k;
    float *Pm = nullptr;
    int rc = 0;
    if (call->dtype == TK_DTYPE_F32) {
        rc = ensure(h, off, err, sizeof err);
        if (rc) {
            tkc_fail(res, rc == 2 ? TK_REASON_OUT_OF_MEMORY : TK_REASON_BACKEND_ERROR, err);
            return 0;
        }
        const void *src[5] = {call->q, call->k, call->v, q0, k0};
        void *dst[5];
        for (int i = 0; i < 5; i++) {
            dst[i] = (char *)h->ws + off_conv + i * al256(nqk * es);
            if (tkc_convert_f32_bf16((const float *)src[i], dst[i], nqk, st)) {
                tkc_fail(res, TK_REASON_BACKEND_ERROR, "hybrid: f32 conversion failed");
                return 0;
            }
        }
        q = dst[0], k = dst[1], v = dst[2], q0 = dst[3], k0 = dst[4];
    }
    if (far) {
        // PCA needs its own scratch: fit before the big workspace is laid out (f32 copies stay valid
        // only when the fit's scratch fits behind them, so fit into a separate allocation then)
        if (call->dtype == TK_DTYPE_F32) {
            // a separate state for the fit keeps the converted copies intact
            tkc_hybrid_state tmp;
            memset(&tmp, 0, sizeof tmp);
            tmp.blas = h->blas, tmp.pca = h->pca, tmp.npca = h->npca, tmp.cap = h->cap;
            rc = pca_for(&tmp, call, cfg, q0, k0, dt, g, st, &Pm, err, sizeof err);
            h->pca = tmp.pca, h->npca = tmp.npca, h->cap = tmp.cap;
            if (tmp.ws) cudaFree(tmp.ws);
        } else {
            rc = pca_for(h, call, cfg, q0, k0, dt, g, st, &Pm, err, sizeof err);
        }
        if (rc) {
            tkc_fail(res, rc == 2 ? TK_REASON_OUT_OF_MEMORY : rc == 3 ? TK_REASON_UNSUPPORTED_SHAPE : TK_REASON_BACKEND_ERROR, err);
            return 0;
        }
    }
    rc = ensure(h, off, err, sizeof err);
    if (rc) {
        tkc_fail(res, rc == 2 ? TK_REASON_OUT_OF_MEMORY : TK_REASON_BACKEND_ERROR, err);
        return 0;
    }
    char *ws = (char *)h->ws;
    void *qp = ws + off_qp, *kp = ws + off_qp + al256((size_t)BH * N * g * es);
    float *farbuf = (float *)(ws + off_far);
    uint8_t *flags = (uint8_t *)(ws + off_flags);
    den_word *dw = (den_word *)(ws + off_den);
    tkc_den_stats *den = &dw->den;
    unsigned *bad = flagged ? &dw->bad : nullptr; // set by the kernels that read the inputs
    cudaError_t ce = cudaMemsetAsync(flags, 0, (size_t)BH * N, st);
    den_word init; // the counters' start and bad = 0, on st before every kernel of the call
    memset(&init, 0, sizeof init);
    {
        unsigned mn = 0xffffffffu, mx = 0u;
        memcpy(&init.den.min, &mn, 4);
        memcpy(&init.den.max, &mx, 4);
    }
    if (ce == cudaSuccess) ce = cudaMemcpyAsync(dw, &init, sizeof init, cudaMemcpyHostToDevice, st);
    if (ce == cudaSuccess && bad && T > 0) { // v's text rows: the far field does not read them
        const size_t chunks = (size_t)BH * T * D / 8;
        const int nb = (int)((chunks + 255) / 256 < 1024 ? (chunks + 255) / 256 : 1024);
        if (dt == TK_DTYPE_BF16)
            text_rows_scan_kernel<<<nb, 256, 0, st>>>((const __nv_bfloat16 *)v, BH, N, T, D, bad);
        else
            text_rows_scan_kernel<<<nb, 256, 0, st>>>((const __half *)v, BH, N, T, D, bad);
        ce = cudaGetLastError();
    }
    if (ce != cudaSuccess) {
        snprintf(err, sizeof err, "hybrid: %s", cudaGetErrorString(ce));
        tkc_fail(res, TK_REASON_BACKEND_ERROR, err);
        return 0;
    }
    const bool mod = cfg->qk_norm_sigma_max <= 0 || call->sigma <= cfg->qk_norm_sigma_max;
    const int modify = !mod ? 0 : cfg->qk_normalize ? 1 : (cfg->qk_norm_power > 0 || cfg->qk_norm_clip > 0) ? 2 : 0;
    const float sqrt_s = (float)sqrt(cfg->global_scale_mul / sqrt((double)D));
    bool joined = false; // the side stream's exact rows must join st before the call returns
    // text queries: every key, exact (as the ref backend's window: kernels/plan.c); 0, or 1 with res
    // failed. At the start of the call, on the side stream beside the projections and the far
    // field; on the flagged path into the workspace (bad is not final yet), copied into o by
    // text_rows_copy_kernel after the kernels that set bad.
    auto text_rows = [&]() -> int {
        if (!(W <= 0 || T > 0)) return 0; // text queries (both window shapes) see every key
        tkc_exact_args ea;
        memset(&ea, 0, sizeof ea);
        ea.q = q, ea.k = k, ea.v = v, ea.o = call->o, ea.mask = call->key_mask;
        ea.B = call->B, ea.H = call->H, ea.Nq = W <= 0 ? N : T, ea.Nk = N, ea.D = D, ea.q_rows = N;
        if (text_buf) ea.o = ws + off_text, ea.o_rows = T;
        ea.scale = call->scale > 0 ? call->scale : 1.0 / sqrt((double)D);
        ea.in_dtype = dt, ea.out_dtype = call->dtype;
        cudaStream_t es = W <= 0 ? st : h->side;
        if (es != st) {
            ce = cudaEventRecord(h->fork, st);
            if (ce == cudaSuccess) ce = cudaStreamWaitEvent(es, h->fork, 0);
            if (ce != cudaSuccess) {
                snprintf(err, sizeof err, "hybrid fork: %s", cudaGetErrorString(ce));
                tkc_fail(res, TK_REASON_BACKEND_ERROR, err);
                return 1;
            }
        }
        rc = tkc_exact_launch(&ea, es, err, sizeof err);
        if (!rc) mark(4, es);
        if (!rc && es != st) {
            ce = cudaEventRecord(h->join, es);
            if (ce != cudaSuccess) {
                snprintf(err, sizeof err, "hybrid join: %s", cudaGetErrorString(ce));
                rc = 1;
            }
            joined = true;
        }
        if (rc) {
            tkc_fail(res, rc == 2 ? TK_REASON_OUT_OF_MEMORY : rc == 3 ? TK_REASON_UNSUPPORTED_SHAPE : TK_REASON_BACKEND_ERROR, err);
            return 1;
        }
        return 0;
    };
    if (text_rows()) return 0;
    tkc_far_tables ftabs;
    memset(&ftabs, 0, sizeof ftabs);
    if (far) {
        const float pw = (float)cfg->qk_norm_power, cl = (float)cfg->qk_norm_clip, ep = (float)cfg->eps;
        // the stats' taps: the norms and far logits written by the projections (k's after the
        // sampled queries' far rows, an event from the stats stream), proj_done after both
        const bool tapped = taps && project_taps_fit(dt, D, g);
        ProjTaps tq, tk;
        if (tapped) {
            memset(&tq, 0, sizeof tq);
            tq.H = call->H, tq.modify = taps->modify, tq.power = taps->power, tq.clip = taps->clip, tq.eps = taps->eps;
            tk = tq;
            tq.xraw = taps->xraw[0], tq.raw = taps->raw[0], tq.mod = taps->mod[0];
            tk.xraw = taps->xraw[1], tk.raw = taps->raw[1], tk.mod = taps->mod[1], tk.mask = taps->key_mask;
            tk.F = taps->F, tk.qhat = taps->qhat, tk.nsp = taps->nsp;
        }
        int lfail = 0;
        if (tapped) {
            lfail = launch_project<__nv_bfloat16>(q0, Pm, N, D, g, BH, modify, pw, cl, ep, sqrt_s, qp, bad, st, &tq);
            if (!lfail && taps->F) lfail = cudaStreamWaitEvent(st, taps->prep_done, 0) != cudaSuccess;
            if (!lfail) lfail = launch_project<__nv_bfloat16>(k0, Pm, N, D, g, BH, modify, pw, cl, ep, sqrt_s, kp, bad, st, &tk);
            if (!lfail) lfail = cudaEventRecord(taps->proj_done, st) != cudaSuccess;
            if (!lfail) taps->used = 1;
        } else {
            lfail = dt == TK_DTYPE_BF16
                      ? launch_project<__nv_bfloat16>(q0, Pm, N, D, g, BH, modify, pw, cl, ep, sqrt_s, qp, bad, st) ||
                            launch_project<__nv_bfloat16>(k0, Pm, N, D, g, BH, modify, pw, cl, ep, sqrt_s, kp, bad, st)
                      : launch_project<__half>(q0, Pm, N, D, g, BH, modify, pw, cl, ep, sqrt_s, qp, bad, st) ||
                            launch_project<__half>(k0, Pm, N, D, g, BH, modify, pw, cl, ep, sqrt_s, kp, bad, st);
        }
        ce = lfail ? cudaGetLastError() : cudaSuccess;
        if (!lfail) mark(1, st);
        if (lfail) {
            snprintf(err, sizeof err, "launch project_kernel: %s", cudaGetErrorString(ce));
            tkc_fail(res, TK_REASON_BACKEND_ERROR, err);
            return 0;
        }
        if (taps && taps->queue_rest) { // before this function waits for the call on the host
            taps->rest_queued = 1;
            taps->rest_rc = taps->queue_rest(taps);
        }
        size_t tkey = ((size_t)off_t << 16) | ((size_t)g << 8) | (size_t)P;
        ta.table_cached = h->table_key == tkey + 1;
        h->table_key = 0;
        ta.q = qp, ta.k = kp, ta.v = v, ta.o = farbuf;
        ta.bad = bad; // flag_path made sure the degree-2 path (which reads it) runs
        if (far_mask) {
            uint8_t *fm = (uint8_t *)(ws + off_fmask);
            int nb = (int)((call->B * (size_t)N + 255) / 256);
            image_key_mask_kernel<<<nb < 4096 ? nb : 4096, 256, 0, st>>>(call->key_mask, call->B, N, T, fm);
            ce = cudaGetLastError();
            if (ce != cudaSuccess) {
                snprintf(err, sizeof err, "launch image_key_mask_kernel: %s", cudaGetErrorString(ce));
                tkc_fail(res, TK_REASON_BACKEND_ERROR, err);
                return 0;
            }
            ta.mask = fm;
        }
        tkc_den_stats fd;
        rc = tkc_taylor_run(&ta, ws + off_t, ws_t, nsm, st, &fd, err, sizeof err);
        if (rc) {
            tkc_fail(res, rc == 2 ? TK_REASON_OUT_OF_MEMORY : rc == 3 ? TK_REASON_UNSUPPORTED_SHAPE : TK_REASON_BACKEND_ERROR, err);
            return 0;
        }
        h->table_key = tkey + 1;
        res->R = tkc_feature_count(g, P);
        if (farm == 2 && tkc_taylor_far_tables(&ta, ws + off_t, nsm, &ftabs)) {
            tkc_fail(res, TK_REASON_BACKEND_ERROR, "hybrid: far tables");
            return 0;
        }
        mark(2, st);
    }
    if (text_buf) { // bad is final now: the text rows reach o unless it is set
        ce = cudaEventRecord(h->fork, st);
        if (ce == cudaSuccess) ce = cudaStreamWaitEvent(h->side, h->fork, 0);
        if (ce == cudaSuccess) {
            const size_t chunks = (size_t)BH * T * D / 8;
            const int nb = (int)((chunks + 255) / 256 < 1024 ? (chunks + 255) / 256 : 1024);
            text_rows_copy_kernel<<<nb, 256, 0, h->side>>>((const uint4 *)(ws + off_text), (uint4 *)call->o, BH, N,
                                                            T, D, bad);
            ce = cudaGetLastError();
        }
        if (ce == cudaSuccess) ce = cudaEventRecord(h->join, h->side);
        if (ce != cudaSuccess) {
            snprintf(err, sizeof err, "hybrid text rows: %s", cudaGetErrorString(ce));
            tkc_fail(res, TK_REASON_BACKEND_ERROR, err);
            return 0;
        }
    }
    if (W > 0) {
        LocalArgs la;
        memset(&la, 0, sizeof la);
        la.q = q, la.k = k, la.v = v, la.qp = qp, la.kp = kp, la.mask = call->key_mask;
        la.far = farm == 1 ? farbuf : nullptr;
        la.ftab = ftabs.tab, la.fsh = (const __half *)ftabs.sh, la.fcolmax = ftabs.colmax;
        la.fR = ftabs.R, la.fRpad = ftabs.Rpad;
        la.o = call->o, la.flags = flags, la.den = den;
        la.split_issue = getenv("TKC_HYBRID_JOINT_ISSUE") == nullptr; // measured 2-4% faster split (GPU-NOTES)
        la.skip_chunks = getenv("TKC_HYBRID_NOSKIP") == nullptr;
        la.H = call->H, la.N = N, la.T = T, la.gh = call->grid_h, la.gw = call->grid_w, la.r = W;
        la.shape2d = shape2d;
        double s0 = call->scale > 0 ? call->scale : 1.0 / sqrt((double)D);
        la.scale_log2 = (float)(s0 * 1.4426950408889634);
        la.w = (float)w;
        la.c0 = P > 0 ? 1.f : 0.f, la.c1 = P > 1 ? 1.f : 0.f, la.c2 = P > 2 ? 0.5f : 0.f, la.c3 = P > 3 ? 1.f / 6.f : 0.f;
        la.normalized = cfg->combine == TK_COMBINE_NORMALIZED;
        la.bad = bad;
        int nblocks = shape2d ? ((call->grid_h + 7) / 8) * ((call->grid_w + 7) / 8) : (N + 63) / 64;
        // 2d window, no far term or the fused normalized one, D 64/128, bf16/f16: the wgmma
        // kernel (hybrid_wgmma.cu); TKC_HYBRID_LOCAL=mma keeps this file's mma.sync kernel
        const char *lk = getenv("TKC_HYBRID_LOCAL");
        const bool use_wg = shape2d && !(lk && strcmp(lk, "mma") == 0) &&
                            tkc_hyb_wg_supported(D, g, farm, dt, call->dtype, T, call->grid_h, call->grid_w, W) &&
                            tkc_hyb_wg_supported(D, g, 0, dt, call->dtype, T, call->grid_h, call->grid_w, W);
        tkc_hyb_wg_args wa;
        memset(&wa, 0, sizeof wa);
        wa.q = q, wa.k = k, wa.v = v, wa.qp = qp, wa.kp = kp, wa.mask = call->key_mask;
        wa.ftab = la.ftab, wa.fsh = la.fsh, wa.fcolmax = la.fcolmax, wa.fR = la.fR, wa.fRpad = la.fRpad;
        wa.o = call->o, wa.flags = flags, wa.den = den;
        wa.B = call->B, wa.H = call->H, wa.N = N, wa.D = D, wa.G = g, wa.T = T;
        wa.gh = call->grid_h, wa.gw = call->grid_w, wa.r = W, wa.farm = farm, wa.dtype = dt;
        wa.scale_log2 = la.scale_log2, wa.w = la.w;
        wa.c0 = la.c0, wa.c1 = la.c1, wa.c2 = la.c2, wa.c3 = la.c3;
        wa.skip_tiles = la.skip_chunks; // TKC_HYBRID_NOSKIP=1 turns off both kernels' skipping
        wa.bad = bad;
        // the local kernel with la/wa as they stand (the recompute pass below changes them)
        auto launch_any_local = [&](int fm) {
            if (use_wg) return tkc_hyb_wg_launch(&wa, st, err, sizeof err);
            if (dt == TK_DTYPE_BF16)
                return call->dtype == TK_DTYPE_F32
                           ? launch_local_t<__nv_bfloat16, float>(la, D, g, fm, nblocks, BH, st, err, sizeof err)
                           : launch_local_t<__nv_bfloat16, __nv_bfloat16>(la, D, g, fm, nblocks, BH, st, err, sizeof err);
            return launch_local_t<__half, __half>(la, D, g, fm, nblocks, BH, st, err, sizeof err);
        };
        rc = launch_any_local(farm);
        if (rc) {
            tkc_fail(res, rc == 2 ? TK_REASON_OUT_OF_MEMORY : rc == 3 ? TK_REASON_UNSUPPORTED_SHAPE : TK_REASON_BACKEND_ERROR, err);
            return 0;
        }
        mark(3, st);
        if (joined) {
            ce = cudaStreamWaitEvent(st, h->join, 0); // st waits on the device; the host does not
            joined = false;
            if (ce != cudaSuccess) {
                snprintf(err, sizeof err, "hybrid join: %s", cudaGetErrorString(ce));
                tkc_fail(res, TK_REASON_BACKEND_ERROR, err);
                return 0;
            }
        }
        if (far) {
            den_word hw; // the counters and, on the flagged path, the bad word: one copy, one synchronization
            ce = cudaMemcpyAsync(&hw, dw, bad ? sizeof hw : sizeof hw.den, cudaMemcpyDeviceToHost, st);
            if (ce == cudaSuccess) ce = cudaStreamSynchronize(st);
            if (ce != cudaSuccess) {
                snprintf(err, sizeof err, "hybrid: %s", cudaGetErrorString(ce));
                tkc_fail(res, TK_REASON_BACKEND_ERROR, err);
                return 0;
            }
            if (tl) {
                float ms[5] = {-1.f, -1.f, -1.f, -1.f, -1.f}; // -1: not run in this call
                for (int i = 1; i < 5; i++)
                    if ((tl_marked & 1u) && ((tl_marked >> i) & 1u) &&
                        cudaEventElapsedTime(&ms[i], h->tl[0], h->tl[i]) != cudaSuccess)
                        ms[i] = -1.f;
                (void)cudaGetLastError();
                fprintf(stderr,
                        "hybrid timeline (ms from the call's start, -1 = not run): projections %.4f, far field %.4f, "
                        "local %.4f, text rows %.4f\n",
                        ms[1], ms[2], ms[3], ms[4]);
            }
            if (bad && hw.bad) { // nothing wrote o; no den figures, no recompute pass
                tkc_fail(res, TK_REASON_BAD_INPUT, "hybrid: a NaN or Inf input (found by the kernels)");
                return 0;
            }
            tkc_den_stats &hd = hw.den;
            tkc_den_decode(&hd);
            if (sreq) tkc_den_report(&hd, res);
            if (hd.n_le_eps + hd.n_nonfinite > 0) { // dropped far terms: local term alone for those rows
                la.only = flags;
                la.far = nullptr;
                la.w = 0.f;
                wa.only = flags, wa.farm = 0, wa.w = 0.f;
                rc = launch_any_local(0);
                if (rc) {
                    tkc_fail(res, TK_REASON_BACKEND_ERROR, err);
                    return 0;
                }
            }
        }
    }
    res->reason = TK_REASON_NONE;
    res->path = TK_PATH_HYBRID;
    return 0;
}

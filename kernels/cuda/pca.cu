// pca.cu -- the hybrid's PCA eigen step on the device: the top-g eigenvector
// subspace of each head's D x D second-moment matrix (SPEC 4), for every head
// of a call at once, by subspace iteration. One block per head, one thread
// per row: C sits in shared memory (it is symmetric, so thread i reads
// column i: conflict-free), the D x g iterate in registers (double), and each
// step is W = C V followed by a Cholesky QR (W^T W = L L^T, V = W L^-T) in
// double. The far field depends on the projected dot products q'.k' =
// q^T P P^T k only, so the subspace matters and the basis inside it does not.
// It replaces a host loop that took ~150 ms per flux1 layer (24 heads): the
// whole fit is now one launch.
#include "cuda_internal.h"

namespace {

constexpr int kIterations = 40; // as the host version it replaces

__device__ __forceinline__ uint64_t mix64(uint64_t z) { // splitmix64's finalizer
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

template <int G>
__global__ void __launch_bounds__(128) subspace_kernel(const float *C, int D, uint64_t seed, float *P) {
    extern __shared__ double smem[]; // V [D][G] double, then C [D][D] float
    double *V = smem;
    float *Cs = (float *)(smem + (size_t)D * G);
    __shared__ double gram[G * G];
    __shared__ double L[G * G];
    const int bh = blockIdx.x, i = threadIdx.x;
    const float *Ch = C + (size_t)bh * D * D;
    for (int x = i; x < D * D; x += blockDim.x) Cs[x] = Ch[x];
    if (i < D)
        for (int j = 0; j < G; j++) {
            uint64_t r = mix64(seed + (uint64_t)bh * 0x9e3779b97f4a7c15ull + (uint64_t)(i * G + j + 1) * 0xd1b54a32d192ed03ull);
            V[i * G + j] = (double)(r >> 11) / 9007199254740992.0 - 0.5;
        }
    __syncthreads();
    double w[G];
    for (int it = 0; it < kIterations; it++) {
        // W = C V: row i of W (thread i)
        for (int j = 0; j < G; j++) w[j] = 0;
        if (i < D)
            for (int k = 0; k < D; k++) {
                double c = Cs[k * D + i]; // C[i][k] = C[k][i]
#pragma unroll
                for (int j = 0; j < G; j++) w[j] += c * V[k * G + j];
            }
        // Gram matrix W^T W: entry (p, q) summed over rows by the threads
        // p*G+q (G*G <= 1024 entries over blockDim threads, rows from V)
        __syncthreads(); // every thread has read V
        if (i < D)
            for (int j = 0; j < G; j++) V[i * G + j] = w[j];
        __syncthreads();
        for (int e = i; e < G * G; e += blockDim.x) {
            int p = e / G, q = e % G;
            double s = 0;
            if (q <= p)
                for (int r = 0; r < D; r++) s += V[r * G + p] * V[r * G + q];
            gram[e] = s;
        }
        __syncthreads();
        if (i == 0) { // Cholesky of the G x G Gram matrix (lower), in place into L
            for (int p = 0; p < G; p++) {
                for (int q = 0; q <= p; q++) {
                    double s = gram[p * G + q];
                    for (int r = 0; r < q; r++) s -= L[p * G + r] * L[q * G + r];
                    if (p == q) L[p * G + p] = s > 1e-300 ? sqrt(s) : 1e-150;
                    else L[p * G + q] = s / L[q * G + q];
                }
            }
        }
        __syncthreads();
        // V row i = W row i * L^-T: solve y L^T = w (forward substitution)
        if (i < D) {
            for (int p = 0; p < G; p++) {
                double s = w[p];
                for (int r = 0; r < p; r++) s -= w[r] * L[p * G + r];
                w[p] = s / L[p * G + p];
            }
            for (int j = 0; j < G; j++) V[i * G + j] = w[j];
        }
        __syncthreads();
    }
    if (i < D)
        for (int j = 0; j < G; j++) P[(size_t)bh * D * G + i * G + j] = (float)V[i * G + j];
}

template <int G> int launch(const float *C, int BH, int D, uint64_t seed, float *P, cudaStream_t st, char *err, size_t errlen) {
    size_t smem = sizeof(double) * D * G + sizeof(float) * D * D;
    TKC_TRY(cudaFuncSetAttribute(subspace_kernel<G>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem), err, errlen);
    subspace_kernel<G><<<BH, 128, smem, st>>>(C, D, seed, P);
    TKC_LAUNCHED("pca subspace", err, errlen);
    return 0;
}

} // namespace

int tkc_pca_subspace(const float *C, int BH, int D, int g, uint64_t seed, float *P, cudaStream_t st, char *err,
                     size_t errlen) {
    if (D < 1 || D > 128 || (g != 16 && g != 32) || g > D) {
        snprintf(err, errlen, "PCA on cuda: head dim %d, global_dim %d (supported: D <= 128, global_dim 16 or 32)", D, g);
        return 3;
    }
    return g == 16 ? launch<16>(C, BH, D, seed, P, st, err, errlen) : launch<32>(C, BH, D, seed, P, st, err, errlen);
}

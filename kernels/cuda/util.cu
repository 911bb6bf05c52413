// util.cu -- the helpers of tkcuda_util.h (tests and benchmarks only).
#include <cublas_v2.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_internal.h"
#include "tkcuda_util.h"

#define TKU_TRY(call)                                                                \
    do {                                                                             \
        cudaError_t e_ = (call);                                                     \
        if (e_ != cudaSuccess) {                                                     \
            snprintf(err, errlen, "%s: %s", #call, cudaGetErrorString(e_));          \
            return 1;                                                                \
        }                                                                            \
    } while (0)

namespace {

__device__ __forceinline__ uint64_t mix(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

template <typename T>
__global__ void random_kernel(T *dst, size_t n, uint64_t seed, float sd) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        uint64_t h = mix(seed * 0x9e3779b97f4a7c15ull + i);
        float u1 = ((h >> 40) + 1) * (1.0f / 16777217.0f);
        float u2 = ((h >> 16) & 0xffffff) * (1.0f / 16777216.0f);
        float g = sqrtf(-2.f * logf(u1)) * cospif(2.f * u2);
        dst[i] = tkc::elem<T>::from_f(g * sd);
    }
}

template <typename T> __global__ void to_f32_kernel(const T *src, float *dst, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        dst[i] = tkc::elem<T>::to_f(src[i]);
}
template <typename T> __global__ void from_f32_kernel(const float *src, T *dst, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        dst[i] = tkc::elem<T>::from_f(src[i]);
}

int cmpd(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

} // namespace

extern "C" int tkcu_device_name(char *buf, size_t len) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
        (void)cudaGetLastError();
        snprintf(buf, len, "none");
        return 1;
    }
    cudaDeviceProp p;
    if (cudaGetDeviceProperties(&p, 0) != cudaSuccess) return 1;
    snprintf(buf, len, "%s", p.name);
    return 0;
}

extern "C" int tkcu_alloc(void **dev, size_t bytes, char *err, size_t errlen) {
    *dev = nullptr;
    TKU_TRY(cudaMalloc(dev, bytes ? bytes : 1));
    return 0;
}
extern "C" void tkcu_free(void *dev) {
    if (dev) cudaFree(dev);
}

extern "C" int tkcu_upload(void *dev, const float *host, size_t n, tk_dtype dt, char *err,
                           size_t errlen) {
    if (dt == TK_DTYPE_F32) {
        TKU_TRY(cudaMemcpy(dev, host, n * 4, cudaMemcpyHostToDevice));
        return 0;
    }
    float *tmp = nullptr;
    TKU_TRY(cudaMalloc(&tmp, n * 4 + 4));
    cudaError_t e = cudaMemcpy(tmp, host, n * 4, cudaMemcpyHostToDevice);
    if (e == cudaSuccess) {
        if (dt == TK_DTYPE_BF16) from_f32_kernel<<<256, 256>>>(tmp, (__nv_bfloat16 *)dev, n);
        else from_f32_kernel<<<256, 256>>>(tmp, (__half *)dev, n);
        e = cudaGetLastError();
    }
    if (e == cudaSuccess) e = cudaDeviceSynchronize();
    cudaFree(tmp);
    TKU_TRY(e);
    return 0;
}

extern "C" int tkcu_download(float *host, const void *dev, size_t n, tk_dtype dt, char *err,
                             size_t errlen) {
    if (dt == TK_DTYPE_F32) {
        TKU_TRY(cudaMemcpy(host, dev, n * 4, cudaMemcpyDeviceToHost));
        return 0;
    }
    float *tmp = nullptr;
    TKU_TRY(cudaMalloc(&tmp, n * 4 + 4));
    if (dt == TK_DTYPE_BF16) to_f32_kernel<<<256, 256>>>((const __nv_bfloat16 *)dev, tmp, n);
    else to_f32_kernel<<<256, 256>>>((const __half *)dev, tmp, n);
    cudaError_t e = cudaGetLastError();
    if (e == cudaSuccess) e = cudaMemcpy(host, tmp, n * 4, cudaMemcpyDeviceToHost);
    cudaFree(tmp);
    TKU_TRY(e);
    return 0;
}

extern "C" int tkcu_upload_bytes(void *dev, const void *host, size_t bytes, char *err, size_t errlen) {
    TKU_TRY(cudaMemcpy(dev, host, bytes, cudaMemcpyHostToDevice));
    return 0;
}

extern "C" int tkcu_download_bytes(void *host, const void *dev, size_t bytes, char *err, size_t errlen) {
    TKU_TRY(cudaMemcpy(host, dev, bytes, cudaMemcpyDeviceToHost));
    return 0;
}

extern "C" int tkcu_poison(void *dev, size_t bytes, unsigned char byte, char *err, size_t errlen) {
    TKU_TRY(cudaMemset(dev, byte, bytes));
    TKU_TRY(cudaDeviceSynchronize());
    return 0;
}

extern "C" int tkcu_random(void *dev, size_t n, tk_dtype dt, uint64_t seed, float sd, char *err,
                           size_t errlen) {
    if (dt == TK_DTYPE_BF16) random_kernel<<<1024, 256>>>((__nv_bfloat16 *)dev, n, seed, sd);
    else if (dt == TK_DTYPE_F16) random_kernel<<<1024, 256>>>((__half *)dev, n, seed, sd);
    else random_kernel<<<1024, 256>>>((float *)dev, n, seed, sd);
    TKU_TRY(cudaGetLastError());
    return 0;
}

extern "C" int tkcu_sync(char *err, size_t errlen) {
    TKU_TRY(cudaDeviceSynchronize());
    return 0;
}

extern "C" double tkcu_time_ms(tkcu_fn fn, tkcu_fn prep, void *arg, int warmup, int reps) {
    cudaEvent_t a, b;
    if (cudaEventCreate(&a) != cudaSuccess || cudaEventCreate(&b) != cudaSuccess) return -1;
    double *t = (double *)malloc(sizeof(double) * (reps > 0 ? reps : 1));
    double med = -1;
    int ok = t != nullptr;
    for (int i = 0; ok && i < warmup; i++) {
        if (prep && prep(arg)) ok = 0;
        if (ok && fn(arg)) ok = 0;
    }
    for (int i = 0; ok && i < reps; i++) {
        if (prep && prep(arg)) ok = 0;
        if (!ok || cudaDeviceSynchronize() != cudaSuccess) ok = 0;
        cudaEventRecord(a, 0);
        if (ok && fn(arg)) ok = 0;
        cudaEventRecord(b, 0);
        float ms = 0;
        if (ok && (cudaEventSynchronize(b) != cudaSuccess || cudaEventElapsedTime(&ms, a, b) != cudaSuccess))
            ok = 0;
        if (ok) t[i] = ms;
    }
    if (ok && reps > 0) {
        qsort(t, reps, sizeof(double), cmpd);
        med = t[reps / 2];
    }
    free(t);
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    return med;
}

namespace {
struct gemm_arg {
    cublasHandle_t h;
    int M, N, K;
    void *A, *B, *C;
};
int gemm_run(void *p) {
    gemm_arg *g = (gemm_arg *)p;
    float one = 1.f, zero = 0.f;
    // column-major C[M,N] = A[M,K] * B[K,N]
    return cublasGemmEx(g->h, CUBLAS_OP_N, CUBLAS_OP_N, g->M, g->N, g->K, &one, g->A, CUDA_R_16BF,
                        g->M, g->B, CUDA_R_16BF, g->K, &zero, g->C, CUDA_R_16BF, g->M,
                        CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT) != CUBLAS_STATUS_SUCCESS;
}
int gemm_prep(void *p) {
    gemm_arg *g = (gemm_arg *)p;
    static uint64_t seed = 77;
    char e[64];
    return tkcu_random(g->A, (size_t)g->M * g->K, TK_DTYPE_BF16, seed++, 1.f, e, sizeof e) ||
           tkcu_random(g->B, (size_t)g->K * g->N, TK_DTYPE_BF16, seed++, 1.f, e, sizeof e);
}
struct copy_arg {
    void *src, *dst;
    size_t bytes;
};
int copy_run(void *p) {
    copy_arg *c = (copy_arg *)p;
    return cudaMemcpyAsync(c->dst, c->src, c->bytes, cudaMemcpyDeviceToDevice, 0) != cudaSuccess;
}
} // namespace

extern "C" double tkcu_gemm_bf16_ms(int M, int N, int K, int reps, char *err, size_t errlen) {
    gemm_arg g;
    memset(&g, 0, sizeof g);
    g.M = M;
    g.N = N;
    g.K = K;
    if (cublasCreate(&g.h) != CUBLAS_STATUS_SUCCESS) {
        snprintf(err, errlen, "cublasCreate failed");
        return -1;
    }
    double ms = -1;
    if (cudaMalloc(&g.A, (size_t)M * K * 2) == cudaSuccess &&
        cudaMalloc(&g.B, (size_t)K * N * 2) == cudaSuccess &&
        cudaMalloc(&g.C, (size_t)M * N * 2) == cudaSuccess)
        ms = tkcu_time_ms(gemm_run, gemm_prep, &g, 3, reps);
    else
        snprintf(err, errlen, "gemm buffers: %s", cudaGetErrorString(cudaGetLastError()));
    cudaFree(g.A);
    cudaFree(g.B);
    cudaFree(g.C);
    cublasDestroy(g.h);
    return ms;
}

extern "C" double tkcu_copy_ms(size_t bytes, int reps, char *err, size_t errlen) {
    copy_arg c;
    c.bytes = bytes;
    c.src = c.dst = nullptr;
    double ms = -1;
    if (cudaMalloc(&c.src, bytes) == cudaSuccess && cudaMalloc(&c.dst, bytes) == cudaSuccess) {
        cudaMemset(c.src, 1, bytes);
        ms = tkcu_time_ms(copy_run, nullptr, &c, 3, reps);
    } else {
        snprintf(err, errlen, "copy buffers: %s", cudaGetErrorString(cudaGetLastError()));
    }
    cudaFree(c.src);
    cudaFree(c.dst);
    return ms;
}

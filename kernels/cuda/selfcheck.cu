// selfcheck.cu -- a device-side self-check that the CUDA build and the
// driver work: a kernel writes a known pattern that the host verifies.
// Used by tk_backend_available(TK_BACKEND_CUDA) and tests/gpu.
#include <cuda_runtime.h>

#include <stdio.h>

#include "internal.h"

__global__ void selfcheck_kernel(int *out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = i * 3 + 1;
}

extern "C" int tkcuda_selfcheck(char *err, size_t errlen) {
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count == 0) {
        snprintf(err, errlen, "no CUDA device: %s", e != cudaSuccess ? cudaGetErrorString(e) : "count is 0");
        return 1;
    }
    const int n = 1000;
    int *d = nullptr;
    if ((e = cudaMalloc(&d, n * sizeof(int))) != cudaSuccess) {
        snprintf(err, errlen, "cudaMalloc: %s", cudaGetErrorString(e));
        return 1;
    }
    selfcheck_kernel<<<(n + 255) / 256, 256>>>(d, n);
    int h[1000];
    e = cudaGetLastError();
    if (e == cudaSuccess) e = cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost);
    cudaFree(d);
    if (e != cudaSuccess) {
        snprintf(err, errlen, "self-check kernel: %s", cudaGetErrorString(e));
        return 1;
    }
    for (int i = 0; i < n; i++)
        if (h[i] != i * 3 + 1) {
            snprintf(err, errlen, "self-check kernel wrote %d at %d, expected %d", h[i], i, i * 3 + 1);
            return 1;
        }
    return 0;
}

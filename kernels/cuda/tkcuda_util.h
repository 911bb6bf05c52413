/*
 * tkcuda_util.h -- plain-C device helpers for the GPU tests and benchmarks
 * (tests/gpu, bench/gpu_*): allocation, upload/download with dtype
 * conversion, poisoning, random fill, event timing, the cuBLAS GEMM and copy
 * ceilings. Prefix tkcu_. Functions return 0 on success or nonzero with the
 * CUDA error text in err. Built only with nvcc (TK_HAVE_CUDA).
 */
#ifndef TKCUDA_UTIL_H
#define TKCUDA_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include "kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

int tkcu_device_name(char *buf, size_t len);         /* 0 ok (a device is present) */
int tkcu_alloc(void **dev, size_t bytes, char *err, size_t errlen);
void tkcu_free(void *dev);                           /* NULL ok */
/* n host floats -> device elements of dtype (rounded to nearest). */
int tkcu_upload(void *dev, const float *host, size_t n, tk_dtype dt, char *err, size_t errlen);
/* n device elements of dtype -> host floats. */
int tkcu_download(float *host, const void *dev, size_t n, tk_dtype dt, char *err, size_t errlen);
int tkcu_upload_bytes(void *dev, const void *host, size_t bytes, char *err, size_t errlen);
int tkcu_download_bytes(void *host, const void *dev, size_t bytes, char *err, size_t errlen);
/* Every byte of [dev, dev+bytes) set to byte (0xff poisons bf16/f16/f32 as NaN). */
int tkcu_poison(void *dev, size_t bytes, unsigned char byte, char *err, size_t errlen);
/* n elements ~ N(0, stddev^2), from seed, on the device. */
int tkcu_random(void *dev, size_t n, tk_dtype dt, uint64_t seed, float stddev, char *err, size_t errlen);
int tkcu_sync(char *err, size_t errlen);

/* Median over reps of the device time of fn(arg) on the default stream, in ms;
 * before each timed run, prep(arg) (may be NULL) runs untimed (fresh inputs).
 * fn returns 0 on success. Returns a negative value on failure. */
typedef int (*tkcu_fn)(void *arg);
double tkcu_time_ms(tkcu_fn fn, tkcu_fn prep, void *arg, int warmup, int reps);
/* cuBLAS bf16 GEMM C[M,N] = A[M,K] B[K,N] (fp32 accumulate): median ms. */
double tkcu_gemm_bf16_ms(int M, int N, int K, int reps, char *err, size_t errlen);
/* Device-to-device copy of bytes: median ms. */
double tkcu_copy_ms(size_t bytes, int reps, char *err, size_t errlen);

/* The hybrid PCA projection [D][g] (host fp32) cached for (layer, b*H+h) in a
 * cuda context; 0 ok, nonzero when none is cached. */
int tkcu_hybrid_projection(tk_context *ctx, int layer, int bh, float *out, int *D, int *g);
/* 1 when the last hybrid call on ctx took its NaN/Inf check from its own
 * kernels (no input scan before them), 0 when it scanned first. */
int tkcu_hybrid_flagged_inputs(tk_context *ctx);
/* 1 when the last hybrid call's stats took their row norms and far logits
 * from the hybrid's projection kernels (the stats taps), 0 when their own
 * norms pass ran (or no stats). */
int tkcu_hybrid_stats_tapped(tk_context *ctx);

#ifdef __cplusplus
}
#endif
#endif

// taylor_small.h -- the Taylor path for slice dim 16 and P <= 3
// (taylor_small.cu), reached from taylor.cu's entry points. It uses the
// workspace after the generic path's feature table, so the table that
// taylor.cu caches stays valid across calls of either path.
#ifndef TK_CUDA_TAYLOR_SMALL_H
#define TK_CUDA_TAYLOR_SMALL_H

#include "cuda_internal.h"

// 1 when the small path computes this call: not raw_out, D == Dv, D/blocks
// == 16, blocks in {1, 2, 4, 8}, P in 1..3, q/k/v 16-byte aligned, and the
// environment variable TKC_TAYLOR_GENERIC unset.
int tkc_small_handles(const tkc_taylor_args *a);
// Workspace bytes of the small path (placed after the table region).
size_t tkc_small_workspace(const tkc_taylor_args *a, int num_sms);
// The whole call (phase A, the probe rows' den into host_den
// [B*H*blocks][probe_n], and the apply kernel into the workspace a->o); a
// tkc_small_run with the same arguments and workspace right after only reads
// the denominator counters back. Launcher codes as cuda_internal.h.
int tkc_small_probe(const tkc_taylor_args *a, void *ws, size_t ws_bytes, int num_sms, cudaStream_t st,
                    float *host_den, char *err, size_t errlen);
// The whole call into a->o; denominator counters into *den (decoded).
int tkc_small_run(const tkc_taylor_args *a, void *ws, size_t ws_bytes, int num_sms, cudaStream_t st,
                  tkc_den_stats *den, char *err, size_t errlen);

#endif

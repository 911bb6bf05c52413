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

// ---- the one-pass call: the verdict is taken on the device ----
// What the device leaves of a call (copied to the host at its end).
struct tkc_small_record {
    tkc_den_stats den;        // every (query, slice) den (min/max ordered-int encoded; tkc_den_decode)
    unsigned long long probe_n, probe_le, probe_nf; // the probe rows' den: count, <= eps, NaN/Inf
    unsigned suspicious;      // the sum of v or of k' of a slice is NaN/Inf (NaN/Inf in k or v, or overflow)
    unsigned applied;         // the apply kernel wrote o
};
// The denominator rule (SPEC 3.1) as the device applies it before writing o,
// and the input scan it must also find clean (when the host ran one first).
struct tkc_small_rule {
    int fallback_on_negative;
    double frac_limit;                 // denom_fallback_frac_limit
    const unsigned long long *scan_d;  // device [scan_n]: first bad element per tensor (~0 = none), or NULL
    int scan_n;
};
// Queues phase A, the sum (probe rows' den counted on the device), the den
// pass (every den, from q, N', mu and G; counted), and the apply kernel,
// which writes a->o (the caller's o) only when the record shows nothing
// non-finite and the rule passes (rule applied to the probe rows and to all
// den); then an async copy of the record into host_rec (pinned). No host
// synchronization. Launcher codes as cuda_internal.h.
int tkc_small_call(const tkc_taylor_args *a, const tkc_small_rule *rule, void *ws, size_t ws_bytes, int num_sms,
                   cudaStream_t st, tkc_small_record *host_rec, char *err, size_t errlen);
// The apply kernel of the call just made, without the device verdict (the
// host found the call good although the record's guard stopped it).
int tkc_small_apply_ungated(const tkc_taylor_args *a, void *ws, size_t ws_bytes, int num_sms, cudaStream_t st,
                            char *err, size_t errlen);
// Decodes the ordered-int min/max of den counters copied from the device.

// taylor.cu: the same two entry points on the Taylor workspace (the small
// path's part starts after the generic path's table region).
int tkc_taylor_small_call(const tkc_taylor_args *a, const tkc_small_rule *rule, void *ws, size_t ws_bytes,
                          int num_sms, cudaStream_t st, tkc_small_record *host_rec, char *err, size_t errlen);
int tkc_taylor_small_apply(const tkc_taylor_args *a, void *ws, size_t ws_bytes, int num_sms, cudaStream_t st,
                           char *err, size_t errlen);

// ---- the hybrid far field (phase_a_only) on the degree-2 structure ----
// 1 when it computes this phase_a_only call: k' of 16 dims (D 16, one
// block), Dv 32, 64 or 128, P 1..3, bf16/f16, no q/k modification (the
// projection applied it), k/v 16-byte aligned, TKC_HYBRID_FAR_GENERIC unset.
int tkc_far_small_handles(const tkc_taylor_args *a);
// Its own workspace bytes (partial records of the key splits).
size_t tkc_far_small_workspace(const tkc_taylor_args *a, int num_sms);
// Queues phase A and the tables kernel, which writes the tables of
// tkc_far_tables: sh (f16 [B*H][Rpad][Dv+8]) and colmax ([B*H][Dv+8]) in
// taylor.cu's layout; the feature table itself is taylor.cu's upload.
// Launcher codes as cuda_internal.h.
int tkc_far_small_run(const tkc_taylor_args *a, void *ws, size_t ws_bytes, int num_sms, cudaStream_t st, void *sh,
                      unsigned *colmax, int R, int Rpad, char *err, size_t errlen);

#endif

// cuda_internal.h -- private to kernels/cuda: the launchers of each kernel
// file and the backend state. Launchers return 0, 1 (CUDA error, text in err),
// 2 (allocation failed) or 3 (unsupported shape, text in err).
#ifndef TK_CUDA_INTERNAL_H
#define TK_CUDA_INTERNAL_H

#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "common.cuh"
#include "internal.h"
#include "plan.h"

// The next draw of a seeded stream (splitmix64 over plan.c's tki_mix64), for
// the PCA rows and the eigen-solve start of hybrid.cu. The probe and quality
// rows come from plan.c's tki_sample_indices, as in the ref and cpu backends.
static inline uint64_t tkc_draw(uint64_t *state) {
    uint64_t r = tki_mix64(*state);
    *state += 0x9e3779b97f4a7c15ull;
    return r;
}

// Marks res a FALLBACK with reason r and a detail text.
static inline void tkc_fail(tk_result *res, tk_reason r, const char *detail) {
    res->reason = r;
    res->path = TK_PATH_FALLBACK;
    snprintf(res->detail, sizeof res->detail, "%s", detail);
}

struct tkc_exact_args {
    const void *q, *k, *v; // [B,H,N,D], in_dtype (bf16 or f16)
    void *o;               // [B,H,Nq,D], out_dtype (in_dtype or f32)
    const uint8_t *mask;   // [B,Nk] device, nonzero = kept; may be NULL
    int B, H, Nq, Nk, D;
    double scale;
    int in_dtype, out_dtype;
    int warps; // 4 or 8 (query rows per block = 16 * warps); 0 = default
    int q_rows; // rows per head in q and o (0 = Nq): the first Nq rows of each head are computed
    int o_rows; // rows per head in o when it differs from q_rows (0 = q_rows): a compact buffer
};
int tkc_exact_launch(const tkc_exact_args *a, cudaStream_t st, char *err, size_t errlen);

// Taylor attention of one call (all slices), written to o_out (f32 or the
// call's dtype). Counters of the denominators come back in *den.
struct tkc_den_stats {
    unsigned long long n, n_le_eps, n_nonfinite;
    float min, max; // ordered-int encoded on the device, decoded by the launcher
    double sum;
};

// The min/max of a tkc_den_stats copied from the device are ordered-int
// encoded (atomicMin/atomicMax on unsigned); decoded in place.
static inline void tkc_den_decode(tkc_den_stats *den) {
    float *f[2] = {&den->min, &den->max};
    for (int i = 0; i < 2; i++) {
        unsigned u;
        memcpy(&u, f[i], 4);
        u = (u & 0x80000000u) ? (u & 0x7fffffffu) : ~u;
        memcpy(f[i], &u, 4);
    }
}

// The SPEC 5 denominator figures of a decoded tkc_den_stats into res->stats
// (min, max and mean NaN when no den is finite).
static inline void tkc_den_report(const tkc_den_stats *den, tk_result *res) {
    res->stats.den.n = (int64_t)den->n;
    res->stats.den.n_le_eps = (int64_t)den->n_le_eps;
    res->stats.den.n_nonfinite = (int64_t)den->n_nonfinite;
    unsigned long long nfin = den->n - den->n_nonfinite;
    res->stats.den.min = nfin ? den->min : NAN;
    res->stats.den.max = nfin ? den->max : NAN;
    res->stats.den.mean = nfin ? den->sum / (double)nfin : NAN;
    res->stats.have |= TK_HAVE_DENOMS;
}

struct tkc_taylor_args {
    const void *q, *k, *v; // device, dtype
    const uint8_t *mask;   // [B,Nk] or NULL
    void *o;               // destination [B,H,Nq,Dv] in dtype (a workspace)
    int dtype;
    int B, H, Nq, Nk, D, Dv;
    int blocks; // sub-head blocks b
    int terms;  // P
    float s;    // d^-1/2 * scale_mul
    int modify; // 0 none, 1 normalize, 2 power/clip
    float power, clip, eps;
    int split;  // key chunks (0 = auto)
    // probe (run before phase A when probe_n > 0)
    int probe_n;
    const int *probe_rows; // device [probe_n]
    int table_cached;
    int raw_out; // hybrid far field: o is fp32 [B*H][Nq][Dv+1] = [num | den], not divided
    int phase_a_only; // hybrid fused far field: phase A + reduce only (o unused); see tkc_taylor_far_tables
    unsigned *bad;    // hybrid far field on taylor_small.cu's degree-2 path, or NULL: set to 1 when an
                      // element of v it reads is NaN/Inf (the other paths ignore it)
};

// Where phase A left the far field of a phase_a_only run, in its workspace:
// the feature table (8-byte entries: uint16 idx*32 [3], half weight; idx d =
// the constant 1), S|z per head*slice as f16 [BHC][Rpad][dvp] divided by a
// per-column scale (colmax bits: scale = max/1024, or 1 when 0).
struct tkc_far_tables {
    const void *tab;
    const void *sh; // __half
    const unsigned *colmax;
    int R, Rpad, dvp;
};
int tkc_taylor_far_tables(const tkc_taylor_args *a, void *ws, int num_sms, tkc_far_tables *out);

// Workspace bytes the Taylor path needs for these arguments (0 = unsupported).
size_t tkc_taylor_workspace(const tkc_taylor_args *a, int num_sms);
// Probe: den of the probe rows (all heads and slices) into host *out (n values).
// The feature table sits at the start of the workspace; table_cached = 1
// skips its upload (same d, P and workspace as the previous call).
int tkc_taylor_probe(const tkc_taylor_args *a, void *ws, size_t ws_bytes, int num_sms,
                     cudaStream_t st, float *host_den, char *err, size_t errlen);
int tkc_taylor_run(const tkc_taylor_args *a, void *ws, size_t ws_bytes, int num_sms,
                   cudaStream_t st, tkc_den_stats *den, char *err, size_t errlen);
// Feature count R(d,P) and the index table in the SPEC order.
int64_t tkc_feature_count(int d, int P);

// f32 -> bf16 on the device (the f32 paths run on bf16 copies); 0 ok.
int tkc_convert_f32_bf16(const float *src, void *dst, size_t n, cudaStream_t st);

// Hybrid attention (SPEC 4) of one call; fills res (reason, path, window, w, stats.den).
// The context's workspace and PCA cache live in the backend state.
// flag_inputs = 0: the caller has found q, k, v (q0, k0) finite (its input
// scan). flag_inputs = 1 (only where tkc_hybrid_flags_inputs holds): nothing
// was scanned; the kernels that read the inputs flag a NaN/Inf on the device,
// the kernels that write o then write nothing, and the call fails with
// bad_input (a short detail: the caller's scan names the element) and no
// stats, o untouched.
//
// taps (NULL = none): the stats' per-row values (stats.cu's norms pass) that
// the hybrid's projection kernel can write as it projects q0 and k0
// (tkc_stats_taps_of fills the stats' side). tkc_hybrid sets taps->used = 1
// when its projections wrote them (bf16, D 64/128, g 16/32 on the matrix
// units, TKC_HYBRID_PROJ_FMA unset), having made k's projection wait for
// prep_done (when F is wanted) and recorded proj_done on st after both; else
// used = 0 and nothing of taps is touched.
struct tkc_stats_taps {
    const void *xraw[2];           // rows of the raw norms (device): the call's q, k
    const uint8_t *key_mask;       // [B][N] or NULL: masked key rows get SKIP_BITS
    int H;
    float *raw[2], *mod[2];        // [BH*N] raw and modified norms of q (0) and k (1) rows (device, the stats' workspace)
    float *F;                      // [BH][N][nsp] s_far q^_r . mod(k^_j) of the sampled queries, NULL = none
    const float *qhat;             // [BH][nsp][g] the sampled queries' far rows (prep_kernel's, on the stats stream)
    int nsp;                       // a multiple of 16
    int modify;                    // the stats' modification (mod_factor)
    float power, clip, eps;
    cudaEvent_t prep_done;         // recorded on the stats stream after qhat
    cudaEvent_t proj_done;         // tkc_hybrid records it on st after both projections
    // Called by tkc_hybrid once its projections are queued (proj_done recorded
    // where used), before it waits for the call on the host: the caller queues
    // the stats' passes that wait for the projections here, so they run beside
    // the rest of the call. NULL = none; returns 0 ok (else its own error).
    int (*queue_rest)(struct tkc_stats_taps *t);
    void *ctx;                     // queue_rest's
    int used;                      // out
    int rest_queued, rest_rc;      // out: queue_rest was called, and what it returned
};
struct tkc_hybrid_state;
int tkc_hybrid(struct tkc_hybrid_state **hs, const tk_call *call, const tk_config *cfg,
               const tk_stats_request *sreq, cudaStream_t st, tk_result *res, int flag_inputs,
               struct tkc_stats_taps *taps);
// 1 when tkc_hybrid(.., flag_inputs = 1) covers every element of q, k, v by
// its kernels' flag for this call: bf16/f16, no key mask, q0/k0 absent or the
// same pointers as q/k, a 2d window with the fused normalized far term on
// taylor_small.cu's degree-2 far path, the layer's projection cached with no
// fit due. Host only.
int tkc_hybrid_flags_inputs(const struct tkc_hybrid_state *hs, const tk_call *call, const tk_config *cfg);
void tkc_hybrid_free(struct tkc_hybrid_state *hs);
/* Forgets the cached PCA projections (tk_context_reset: a new run). */
void tkc_hybrid_reset(struct tkc_hybrid_state *hs);
// The PCA projection [D][g] (fp32, host) of (layer, bh) if cached; 0 ok.
int tkc_hybrid_projection(struct tkc_hybrid_state *hs, int layer, int bh, float *out, int *D, int *g);
// The device projection [BH][D][g] the next tkc_hybrid(call, cfg) will use
// when it is already cached and that call will not fit it (again) by the
// refit policy; NULL otherwise (no state yet, no entry, a fit due). Host
// only: nothing is queued or read back.
const float *tkc_hybrid_cached_projection(struct tkc_hybrid_state *hs, const tk_call *call, const tk_config *cfg);

// ---- stats.cu ----------------------------------------------------------

// NaN/Inf scan of up to TKC_SCAN_MAX device tensors of one dtype (counts in
// elements): first_d (device, TKC_SCAN_MAX entries) is reset and gets the
// index of the first NaN/Inf element of each tensor (ULLONG_MAX = none); the
// result is copied, asynchronously on st, to first_h (pinned host memory,
// read after synchronizing st). 0 ok, 1 CUDA error (text in err).
#define TKC_SCAN_MAX 5
int tkc_scan_nonfinite(const void *const *ptrs, const size_t *counts, int count, int dtype,
                       unsigned long long *first_d, unsigned long long *first_h, int num_sms,
                       cudaStream_t st, char *err, size_t errlen);

// The sampled statistics of one finished call (SPEC 5, kernels/stats.c's
// definitions), on the device: quality_raw and quality_eff of the sampled
// query rows (every head), window mass (hybrid), norms of every q and kept k
// row (raw and modified), the sampled scaled q.k; distributions by exact
// order statistics on the device, one copy back. Fills out's quality_raw,
// quality_eff, window_mass, q/k norms and qk with their TK_HAVE_* bits (not
// den or the time). Where a figure cannot be had on this path its n stays 0
// (kernels/cuda/stats.cu says which).
struct tkc_stats_job {
    const tk_call *call;
    const void *out;            // the call's output [B,H,Nq,Dv] in its dtype (device)
    int mode;                   // tk_mode
    const int *qrows;           // quality rows (host), ns of them
    int ns;
    const int *qk_q, *qk_k;     // q.k sample rows and keys (host)
    int nqk_q, nqk_k;
    int modify;                 // q/k modification in force: 0 none, 1 normalize, 2 power/clip
    float power, clip, eps;
    int blocks;                 // Taylor sub-head blocks
    double s_taylor;            // Taylor scale d^-1/2 scale_mul
    tki_window win;             // hybrid window in force
    double w;                   // hybrid far weight
    int combine;                // tk_combine
    const float *P;             // hybrid projection [BH][D][g] (device), NULL = no far field
    int g;
    double s_far;               // D^-1/2 global_scale_mul
    const void *q0, *k0;        // far-field rows (device): the call's q0/k0, or q/k
};
// Device workspace bytes and pinned host bytes of tkc_stats_run.
size_t tkc_stats_ws(const tkc_stats_job *j, int num_sms);
size_t tkc_stats_host_bytes(const tkc_stats_job *j);
// Queues everything on st, synchronizes st once. 0, 1 (CUDA error), 2 (host allocation).
int tkc_stats_run(const tkc_stats_job *j, int num_sms, void *ws, void *host, cudaStream_t st, tk_stats *out,
                  char *err, size_t errlen);
// The same in two parts, for a caller that overlaps the passes reading only
// the inputs with the call itself: tkc_stats_inputs queues them on st (no
// synchronization; j->out is not read); tkc_stats_outputs queues the
// comparison with j->out and the copy back on st, which the caller has made
// wait for the inputs part (an event), synchronizes st and fills out. Same
// job, workspace and host buffer for both; same results as tkc_stats_run.
int tkc_stats_inputs(const tkc_stats_job *j, int num_sms, void *ws, void *host, cudaStream_t st, char *err,
                     size_t errlen);
int tkc_stats_outputs(const tkc_stats_job *j, int num_sms, void *ws, void *host, cudaStream_t st, tk_stats *out,
                      char *err, size_t errlen);
// The inputs part in two phases around a hybrid call whose projections write
// the norms and far logits (struct tkc_stats_taps): tkc_stats_taps_of says
// whether the job allows it (hybrid, far field, bf16, D 64/128, g 16/32, the
// sampled rows' indices in prep_kernel's parameter) and fills t's stats side
// (pointers into ws, the modification; not the events); 1 yes, 0 no.
// tkc_stats_inputs_prep queues the upload and the sampled queries' far rows
// on st; tkc_stats_inputs_rest the remaining input passes: with norms = 1 the
// norms pass itself (the hybrid did not write the taps), else none (st has
// been made to wait for the taps' proj_done).
int tkc_stats_taps_of(const tkc_stats_job *j, int num_sms, void *ws, struct tkc_stats_taps *t);
int tkc_stats_inputs_prep(const tkc_stats_job *j, int num_sms, void *ws, void *host, cudaStream_t st, char *err,
                          size_t errlen);
int tkc_stats_inputs_rest(const tkc_stats_job *j, int num_sms, void *ws, void *host, cudaStream_t st, int norms,
                          char *err, size_t errlen);

#endif

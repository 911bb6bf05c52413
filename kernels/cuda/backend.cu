// backend.cu -- the cuda backend's entry points: context state (workspace,
// device properties), the mode switch, the Taylor denominator rule and probe,
// and the stats the GPU path reports.
//
// Errors: every CUDA call is checked; a failure is the backend_error reason
// with the CUDA text in res->detail, a failed allocation is out_of_memory.
// The output o is written only when the call succeeds. Taylor on the small
// path (slice dim 16, P <= 3) takes the verdict on the device: its apply
// kernel writes o only when the denominator rule passed and nothing was
// non-finite (run_taylor_small); the other Taylor calls (and the small path
// with TKC_SMALL_OLD set) write into a workspace copy first and copy it to o
// once the rule passed.
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cuda_internal.h"
#include "taylor_small.h"

namespace {

// The sampled rows of one kind (probe or quality), as tki_sample_indices
// draws them, kept for the next call with the same (seed, salt, pool, count).
struct row_cache {
    int valid;
    uint64_t seed, salt;
    int64_t pool, count;
    int n;       // rows drawn
    int *rows;   // owned, host
    int64_t *tmp; // owned, host
};

struct cuda_state {
    int device;
    int num_sms;
    unsigned long long *scan_d; // owned device [TKC_SCAN_MAX]: first NaN/Inf per input
    unsigned long long *scan_h; // owned pinned host copy of scan_d
    cudaEvent_t scan_done;      // recorded after the input scan
    row_cache probe, quality, qk_q, qk_k;
    void *sws;                  // owned device workspace of the stats (kernels/cuda/stats.cu)
    size_t sws_bytes;
    void *shost;                // owned pinned host buffer the stats come back to
    size_t shost_bytes;
    // The hybrid's far projection of the last stats call, copied from hybrid.cu's
    // cache (tkc_hybrid_projection): kept while head 0's matrix is unchanged.
    float *proj_d;              // owned device [BH][D][g]
    float *proj_h;              // owned host copy, same layout
    float *proj_h0;             // owned pinned host scratch: head 0 of the current call (a pinned
                                // destination: its read-back, on every stats call, is one direct copy)
    size_t proj_cap;            // floats of proj_d / proj_h
    int proj_valid, proj_layer, proj_BH, proj_D, proj_g;
    void *ws;        // owned device workspace
    size_t ws_bytes;
    int table_key;   // (d << 8 | P) + 1 of the feature table in ws, 0 = none
    cudaEvent_t ev0, ev1;
    int ev1_recorded; // this call's ev1 is queued (before its stats: kernel_ms leaves them out)
    tkc_hybrid_state *hybrid; // owned: PCA cache and hybrid workspace
    tkc_small_record *rec_h;  // owned pinned: the record of a small-path Taylor call
    // The probe rows on the device for the small-path Taylor call, uploaded
    // when the draw changes (seed, pool, count).
    int *prow_d;              // owned device [prow_cap]
    int prow_cap, prow_valid;
    uint64_t prow_seed;
    int64_t prow_pool, prow_count;
    // The stream the stats' input passes of a hybrid call run on beside the
    // call (hybrid_stats_beside), created on first use, non-blocking: no
    // implicit synchronization with a legacy default stream the call may use.
    cudaStream_t stats_st;          // owned
    cudaEvent_t stats_fork, stats_join; // owned; valid when stats_st is
    cudaEvent_t stats_end;          // owned, timed: TKC_STATS_PROFILE's end of the input passes
    cudaEvent_t stats_prep, stats_proj; // owned (struct tkc_stats_taps' prep_done, proj_done); valid when stats_st is
    int stats_tapped;               // the last hybrid call's stats took their norms from its projections
    int hybrid_flagged;             // the last hybrid call took the kernels' flag instead of the scan
};

// Grows the workspace to at least bytes. 0 ok, 2 allocation failed, 1 other error.
int ensure_ws(cuda_state *s, size_t bytes, char *err, size_t errlen) {
    if (bytes <= s->ws_bytes) return 0;
    if (s->ws) {
        cudaError_t e = cudaFree(s->ws);
        s->ws = nullptr;
        s->ws_bytes = 0;
        s->table_key = 0;
        if (e != cudaSuccess) {
            snprintf(err, errlen, "cudaFree: %s", cudaGetErrorString(e));
            return 1;
        }
    }
    cudaError_t e = cudaMalloc(&s->ws, bytes);
    if (e != cudaSuccess) {
        (void)cudaGetLastError(); // clear the sticky-free allocation error
        s->ws = nullptr;
        snprintf(err, errlen, "workspace of %zu bytes: %s", bytes, cudaGetErrorString(e));
        return e == cudaErrorMemoryAllocation ? 2 : 1;
    }
    s->ws_bytes = bytes;
    return 0;
}

size_t align256(size_t x) { return (x + 255) & ~(size_t)255; }

__global__ void convert_kernel_f32_bf16(const float *src, __nv_bfloat16 *dst, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        dst[i] = __float2bfloat16(src[i]);
}
} // namespace

int tkc_convert_f32_bf16(const float *src, void *dst, size_t n, cudaStream_t st) {
    convert_kernel_f32_bf16<<<1024, 256, 0, st>>>(src, (__nv_bfloat16 *)dst, n);
    return cudaGetLastError() != cudaSuccess;
}

namespace {

// The rows tki_sample_indices(seed, salt, pool, count) chooses (increasing),
// as int; *n gets their number. Drawn again only when the key changed (the
// draw walks the whole pool: ~0.1 ms at 16,896 tokens). NULL when a host
// allocation failed.
const int *sampled_rows(row_cache *c, uint64_t seed, uint64_t salt, int64_t pool, int64_t count, int *n) {
    if (!(c->valid && c->seed == seed && c->salt == salt && c->pool == pool && c->count == count)) {
        c->valid = 0;
        int64_t m = count < pool ? count : pool;
        free(c->rows);
        free(c->tmp);
        c->rows = (int *)malloc(sizeof(int) * (m > 0 ? m : 1));
        c->tmp = (int64_t *)malloc(sizeof(int64_t) * (m > 0 ? m : 1));
        if (!c->rows || !c->tmp) return nullptr;
        c->n = (int)tki_sample_indices(seed, salt, pool, count, c->tmp);
        for (int i = 0; i < c->n; i++) c->rows[i] = (int)c->tmp[i];
        c->seed = seed, c->salt = salt, c->pool = pool, c->count = count, c->valid = 1;
    }
    *n = c->n;
    return c->rows;
}

void free_rows(row_cache *c) {
    free(c->rows);
    free(c->tmp);
    memset(c, 0, sizeof *c);
}

// Quality rows are sampled when stats ask for them and the shape allows (as before: Dv <= 128).
int quality_count(const tk_call *call, const tk_stats_request *sreq) {
    if (!sreq || sreq->quality_samples <= 0 || call->Dv > 128 || call->D > 256 || call->D % 8) return 0;
    return sreq->quality_samples < call->Nq ? sreq->quality_samples : call->Nq;
}

// The rows a call samples (host, kernels/plan.c's draws) and their numbers.
struct sampled {
    const int *qrows; // quality queries
    int ns;
    const int *prows; // early-probe queries (Taylor)
    int pn;
};

// SPEC 6 bad_input on the device. inputs_begin queues the NaN/Inf scan of q,
// k, v (q0, k0 for hybrid) -- every element, masked key rows too, as
// dispatch.c's check_finite does for ref and cpu -- on st, then draws the
// sampled rows while it runs; inputs_verdict waits for the scan. Taylor asks
// for the verdict only after its probe (or full pass) synchronized anyway
// (its output reaches o only at the end), so it pays no extra round trip;
// exact and hybrid write o, so they ask before launching. (A side stream that
// overlapped the scan with the Taylor kernels gave no clear gain on an H200:
// +2.1% / +6.1% at P=3 b=8 with / without the probe, against +4.2% / +4.9%
// on the call's stream; docs/GPU-NOTES.md.) Both return 0, or nonzero with
// res failed.
int inputs_scan(cuda_state *s, const tk_call *call, tk_mode mode, cudaStream_t st, tk_result *res) {
    char err[192] = "";
    const size_t BH = (size_t)call->B * call->H;
    const void *p[TKC_SCAN_MAX] = {call->q, call->k, call->v, call->q0, call->k0};
    size_t n[TKC_SCAN_MAX] = {BH * call->Nq * call->D, BH * call->Nk * call->D, BH * call->Nk * call->Dv,
                              BH * call->Nq * call->D, BH * call->Nk * call->D};
    int count = mode == TK_MODE_HYBRID && call->q0 && call->k0 ? 5 : 3;
    if (tkc_scan_nonfinite(p, n, count, call->dtype, s->scan_d, s->scan_h, s->num_sms, st, err, sizeof err)) {
        tkc_fail(res, TK_REASON_BACKEND_ERROR, err);
        return 1;
    }
    cudaError_t e = cudaEventRecord(s->scan_done, st);
    if (e != cudaSuccess) {
        snprintf(err, sizeof err, "input scan: %s", cudaGetErrorString(e));
        tkc_fail(res, TK_REASON_BACKEND_ERROR, err);
        return 1;
    }
    return 0;
}

// The sampled rows of a call (quality, probe) into sm; 0, or 1 with res failed.
int inputs_rows(cuda_state *s, const tk_call *call, const tk_config *cfg, tk_mode mode,
                const tk_stats_request *sreq, sampled *sm, tk_result *res) {
    memset(sm, 0, sizeof *sm);
    int want = quality_count(call, sreq);
    if (want) sm->qrows = sampled_rows(&s->quality, sreq->seed, TKI_SALT_QUALITY, call->Nq, want, &sm->ns);
    if (mode == TK_MODE_TAYLOR && cfg->early_probe)
        sm->prows = sampled_rows(&s->probe, (uint64_t)cfg->seed, TKI_SALT_PROBE, call->Nq, cfg->probe_samples, &sm->pn);
    if ((want && !sm->qrows) || (mode == TK_MODE_TAYLOR && cfg->early_probe && !sm->prows)) {
        tkc_fail(res, TK_REASON_OUT_OF_MEMORY, "host buffers of the sampled rows");
        return 1;
    }
    return 0;
}

int inputs_begin(cuda_state *s, const tk_call *call, const tk_config *cfg, tk_mode mode,
                 const tk_stats_request *sreq, cudaStream_t st, sampled *sm, tk_result *res) {
    return inputs_scan(s, call, mode, st, res) || inputs_rows(s, call, cfg, mode, sreq, sm, res);
}

int inputs_verdict(cuda_state *s, tk_result *res) {
    char err[192] = "";
    cudaError_t e = cudaEventSynchronize(s->scan_done);
    if (e != cudaSuccess) {
        snprintf(err, sizeof err, "input scan: %s", cudaGetErrorString(e));
        tkc_fail(res, TK_REASON_BACKEND_ERROR, err);
        return 1;
    }
    static const char *names[TKC_SCAN_MAX] = {"q", "k", "v", "q0", "k0"};
    for (int i = 0; i < TKC_SCAN_MAX; i++)
        if (s->scan_h[i] != ~0ull) {
            snprintf(err, sizeof err, "%s holds a NaN or Inf at element %llu", names[i], s->scan_h[i]);
            tkc_fail(res, TK_REASON_BAD_INPUT, err);
            return 1;
        }
    return 0;
}

// Maps a launcher status to the result: 2 -> out_of_memory, 3 -> unsupported_shape, else backend_error.
void fail_rc(tk_result *res, int rc, const char *err) {
    tkc_fail(res, rc == 2 ? TK_REASON_OUT_OF_MEMORY : rc == 3 ? TK_REASON_UNSUPPORTED_SHAPE
                                                          : TK_REASON_BACKEND_ERROR,
         err);
}

// The stats of a call whose output is already in the caller's buffer failed
// (status rc, text err). SPEC 1: a FALLBACK writes nothing, so when the
// device is still sound (the error was the stats' own: every stream of the
// call drains without an error) the output stands, as when a stats buffer
// cannot be allocated: no stats but the kernel time, the error in detail. Only a
// device fault (the streams do not drain) fails the call, backend_error:
// nothing written by then can be vouched for.
void stats_failed_after_output(cuda_state *s, cudaStream_t st, tk_result *res, int rc, const char *err) {
    (void)cudaGetLastError(); // a launch error of the stats is not sticky
    const bool sound = cudaStreamSynchronize(st) == cudaSuccess &&
                       (!s->stats_st || cudaStreamSynchronize(s->stats_st) == cudaSuccess);
    if (!sound) {
        fail_rc(res, rc ? rc : 1, err);
        return;
    }
    memset(&res->stats, 0, sizeof res->stats);
    snprintf(res->detail, sizeof res->detail, "no stats: %s", err);
}

// TKC_STATS_FAIL=1 (tests only): the stats job reports a CUDA error before it
// queues anything, so the path above can be exercised.
int stats_fail_injected(char *err, size_t errlen) {
    const char *f = getenv("TKC_STATS_FAIL");
    if (!f || atoi(f) == 0) return 0;
    snprintf(err, errlen, "TKC_STATS_FAIL: an injected error");
    return 1;
}

int run_exact(cuda_state *s, const tk_call *call, cudaStream_t st, void *o_dst, size_t ws_off,
              char *err, size_t errlen) {
    if (call->Dv != call->D) {
        snprintf(err, errlen, "exact: Dv %d != D %d is not supported on cuda", call->Dv, call->D);
        return 3;
    }
    tkc_exact_args a;
    memset(&a, 0, sizeof a);
    a.B = call->B;
    a.H = call->H;
    a.Nq = call->Nq;
    a.Nk = call->Nk;
    a.D = call->D;
    a.mask = call->key_mask;
    a.o = o_dst;
    a.out_dtype = call->dtype;
    a.scale = call->scale > 0 ? call->scale : 1.0 / sqrt((double)call->D);
    a.warps = getenv("TKC_EXACT_WARPS") ? atoi(getenv("TKC_EXACT_WARPS")) : 0;
    if (call->dtype == TK_DTYPE_F32) {
        // f32: converted to bf16 in the workspace, then the tensor-core path
        size_t nq = (size_t)call->B * call->H * call->Nq * call->D;
        size_t nk = (size_t)call->B * call->H * call->Nk * call->D;
        char *w = (char *)s->ws + ws_off;
        s->table_key = 0; // the copies may cover the Taylor feature table
        __nv_bfloat16 *qh = (__nv_bfloat16 *)w;
        __nv_bfloat16 *kh = (__nv_bfloat16 *)(w + align256(nq * 2));
        __nv_bfloat16 *vh = (__nv_bfloat16 *)(w + align256(nq * 2) + align256(nk * 2));
        convert_kernel_f32_bf16<<<1024, 256, 0, st>>>((const float *)call->q, qh, nq);
        convert_kernel_f32_bf16<<<1024, 256, 0, st>>>((const float *)call->k, kh, nk);
        convert_kernel_f32_bf16<<<1024, 256, 0, st>>>((const float *)call->v, vh, nk);
        TKC_LAUNCHED("convert_kernel_f32_bf16", err, errlen);
        a.q = qh;
        a.k = kh;
        a.v = vh;
        a.in_dtype = TK_DTYPE_BF16;
    } else {
        a.q = call->q;
        a.k = call->k;
        a.v = call->v;
        a.in_dtype = call->dtype;
    }
    return tkc_exact_launch(&a, st, err, errlen);
}

size_t exact_ws(const tk_call *call) {
    if (call->dtype != TK_DTYPE_F32) return 0;
    size_t nq = (size_t)call->B * call->H * call->Nq * call->D;
    size_t nk = (size_t)call->B * call->H * call->Nk * call->D;
    return align256(nq * 2) + 2 * align256(nk * 2);
}

bool modify_active(const tk_config *cfg, double sigma) {
    return cfg->qk_norm_sigma_max <= 0 || sigma <= cfg->qk_norm_sigma_max;
}

int too_small(const tk_config *cfg, unsigned long long n_le, unsigned long long n) {
    if (!cfg->fallback_on_negative || n_le == 0) return 0;
    if (cfg->denom_fallback_frac_limit <= 0) return 1;
    return (double)n_le / (double)n > cfg->denom_fallback_frac_limit;
}

// SPEC 3.1 on every den of a call (stage full): 1 with res failed, else 0.
int den_rule_fails(const tk_config *cfg, const tkc_den_stats *den, tk_result *res) {
    char err[192];
    if (den->n_nonfinite) {
        snprintf(err, sizeof err, "%llu of %llu denominators are NaN or Inf", den->n_nonfinite, den->n);
        tkc_fail(res, TK_REASON_DENOMINATOR_INVALID, err);
    } else if (too_small(cfg, den->n_le_eps, den->n)) {
        snprintf(err, sizeof err, "%llu of %llu denominators <= eps %g", den->n_le_eps, den->n, cfg->eps);
        tkc_fail(res, TK_REASON_DENOMINATOR_TOO_SMALL, err);
    } else {
        return 0;
    }
    res->stage = TK_STAGE_FULL;
    return 1;
}

// Grows a stats buffer (device, or pinned host) to at least bytes. 0 ok, 2 allocation failed.
int grow(void **p, size_t *cap, size_t bytes, bool pinned) {
    if (bytes <= *cap && *p) return 0;
    if (*p) {
        if (pinned) cudaFreeHost(*p);
        else cudaFree(*p);
    }
    *p = nullptr;
    *cap = 0;
    cudaError_t e = pinned ? cudaMallocHost(p, bytes) : cudaMalloc(p, bytes);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        *p = nullptr;
        return 2;
    }
    *cap = bytes;
    return 0;
}

// The far projection hybrid.cu used for this call, on the device ([BH][D][g]),
// or NULL when there is none (no far field) or it cannot be read. Head 0 is
// read back on every call (one 8 KB copy); the other heads only when head 0
// changed (a refit) or the key (layer, shape) did.
const float *hybrid_projection(cuda_state *s, const tk_call *call, int g, cudaStream_t st) {
    const int BH = call->B * call->H, D = call->D;
    const size_t n = (size_t)D * g;
    if ((size_t)BH * n > s->proj_cap) {
        if (s->proj_d) cudaFree(s->proj_d);
        free(s->proj_h);
        if (s->proj_h0) cudaFreeHost(s->proj_h0);
        s->proj_d = nullptr;
        s->proj_h = s->proj_h0 = nullptr;
        s->proj_cap = 0;
        s->proj_valid = 0;
        s->proj_h = (float *)malloc(sizeof(float) * BH * n);
        if (cudaMallocHost(&s->proj_h0, sizeof(float) * n) != cudaSuccess) s->proj_h0 = nullptr;
        if (!s->proj_h || !s->proj_h0 || cudaMalloc(&s->proj_d, sizeof(float) * BH * n) != cudaSuccess) {
            (void)cudaGetLastError();
            s->proj_d = nullptr;
            return nullptr;
        }
        s->proj_cap = (size_t)BH * n;
    }
    int pd = 0, pg = 0;
    if (tkc_hybrid_projection(s->hybrid, call->layer, 0, s->proj_h0, &pd, &pg) || pd != D || pg != g) {
        (void)cudaGetLastError();
        return nullptr;
    }
    if (s->proj_valid && s->proj_layer == call->layer && s->proj_BH == BH && s->proj_D == D && s->proj_g == g &&
        memcmp(s->proj_h0, s->proj_h, sizeof(float) * n) == 0)
        return s->proj_d;
    s->proj_valid = 0;
    for (int bh = 0; bh < BH; bh++)
        if (tkc_hybrid_projection(s->hybrid, call->layer, bh, s->proj_h + (size_t)bh * n, &pd, &pg)) {
            (void)cudaGetLastError();
            return nullptr;
        }
    if (cudaMemcpyAsync(s->proj_d, s->proj_h, sizeof(float) * BH * n, cudaMemcpyHostToDevice, st) != cudaSuccess) {
        (void)cudaGetLastError();
        return nullptr;
    }
    s->proj_valid = 1, s->proj_layer = call->layer, s->proj_BH = BH, s->proj_D = D, s->proj_g = g;
    return s->proj_d;
}

// The stats job of a call whose output (call dtype) is at out: the sampled
// rows are sm's, the q.k sample is drawn here (kernels/plan.c salts). All but
// j->P, the hybrid's far projection, which the caller sets when *far (the
// stats need one).
void stats_job_of(cuda_state *s, const tk_call *call, const tk_config *cfg, tk_mode mode,
                  const tk_stats_request *sreq, const void *out, const sampled *sm, tkc_stats_job *jp, bool *far) {
    tkc_stats_job &j = *jp;
    memset(&j, 0, sizeof j);
    *far = false;
    j.call = call;
    j.out = out;
    j.mode = mode;
    j.qrows = sm->qrows;
    j.ns = sm->qrows ? sm->ns : 0;
    int nq = sreq->qk_samples < call->Nq ? sreq->qk_samples : call->Nq;
    int nk = sreq->qk_samples < call->Nk ? sreq->qk_samples : call->Nk;
    if (sreq->qk_samples > 0 && call->D <= 256) {
        j.qk_q = sampled_rows(&s->qk_q, sreq->seed, TKI_SALT_QK_Q, call->Nq, nq, &j.nqk_q);
        j.qk_k = sampled_rows(&s->qk_k, sreq->seed, TKI_SALT_QK_K, call->Nk, nk, &j.nqk_k);
        if (!j.qk_q || !j.qk_k) j.nqk_q = j.nqk_k = 0;
    }
    const bool mod_on = mode != TK_MODE_EXACT && modify_active(cfg, call->sigma);
    j.modify = !mod_on ? 0 : cfg->qk_normalize ? 1 : (cfg->qk_norm_power > 0 || cfg->qk_norm_clip > 0) ? 2 : 0;
    j.power = (float)cfg->qk_norm_power;
    j.clip = (float)cfg->qk_norm_clip;
    j.eps = (float)cfg->eps;
    if (mode == TK_MODE_TAYLOR) {
        j.blocks = cfg->sub_head_blocks;
        j.s_taylor = cfg->scale_mul / sqrt((double)(call->D / j.blocks));
    }
    if (mode == TK_MODE_HYBRID) {
        j.win.shape = (tk_window_shape)cfg->window_shape;
        j.win.radius = tk_window_at(cfg, call->sigma);
        j.win.text_tokens = call->text_tokens;
        j.win.grid_h = call->grid_h;
        j.win.grid_w = call->grid_w;
        j.w = tk_far_weight_at(cfg, call->sigma);
        j.combine = cfg->combine;
        j.g = cfg->global_dim < call->D ? cfg->global_dim : call->D;
        j.s_far = cfg->global_scale_mul / sqrt((double)call->D);
        j.q0 = call->q0;
        j.k0 = call->k0;
        // hybrid.cu fits and uses a projection only with a window and a far weight
        *far = j.win.radius > 0 && j.w > 0;
    }
}

// The stats of a finished call (the old order: after it, on st). Returns 0,
// or 1 with res failed (a CUDA error). A stats buffer that cannot be
// allocated leaves the output standing with no stats (have = 0), as the ref
// backend does.
int run_stats(cuda_state *s, const tk_call *call, const tk_config *cfg, tk_mode mode, const tk_stats_request *sreq,
              const void *out, const sampled *sm, cudaStream_t st, tk_result *res) {
    char err[192] = "";
    cudaError_t e = cudaEventRecord(s->ev1, st); // kernel_ms ends here (kernels/stats.c: without the stats)
    if (e != cudaSuccess) {
        snprintf(err, sizeof err, "cudaEventRecord: %s", cudaGetErrorString(e));
        tkc_fail(res, TK_REASON_BACKEND_ERROR, err);
        return 1;
    }
    s->ev1_recorded = 1;
    tkc_stats_job j;
    bool far = false;
    stats_job_of(s, call, cfg, mode, sreq, out, sm, &j, &far);
    if (far) {
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        j.P = hybrid_projection(s, call, j.g, st);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        if (getenv("TKC_STATS_PROFILE"))
            fprintf(stderr, "stats profile: projection read back %.4f ms (host)\n",
                    (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6);
    }
    if (grow(&s->sws, &s->sws_bytes, tkc_stats_ws(&j, s->num_sms), false) ||
        grow(&s->shost, &s->shost_bytes, tkc_stats_host_bytes(&j), true)) {
        memset(&res->stats, 0, sizeof res->stats);
        return 0;
    }
    int rc = stats_fail_injected(err, sizeof err);
    if (!rc) rc = tkc_stats_run(&j, s->num_sms, s->sws, s->shost, st, &res->stats, err, sizeof err);
    if (rc == 2) {
        memset(&res->stats, 0, sizeof res->stats);
        return 0;
    }
    if (rc && out == call->o) { // the output is written: it stands unless the device failed
        stats_failed_after_output(s, st, res, rc, err);
        return res->reason != TK_REASON_NONE;
    }
    if (rc) {
        fail_rc(res, rc, err);
        return 1;
    }
    return 0;
}

// The stats stream and its events, created on first use; 0 ok. TKC_STATS_PRIO
// (benchmarking): its priority (negative = higher than the default 0, clamped
// to the device's range).
int stats_stream(cuda_state *s) {
    if (s->stats_st) return 0;
    int least = 0, greatest = 0, prio = 0;
    const char *pv = getenv("TKC_STATS_PRIO");
    if (pv && cudaDeviceGetStreamPriorityRange(&least, &greatest) == cudaSuccess) {
        prio = atoi(pv);
        prio = prio < greatest ? greatest : prio > least ? least : prio;
    }
    cudaStream_t st = nullptr;
    cudaEvent_t a = nullptr, b = nullptr, c = nullptr, d = nullptr, f = nullptr;
    cudaError_t e = cudaStreamCreateWithPriority(&st, cudaStreamNonBlocking, prio);
    if (e == cudaSuccess) e = cudaEventCreateWithFlags(&a, cudaEventDisableTiming);
    if (e == cudaSuccess) e = cudaEventCreateWithFlags(&b, cudaEventDisableTiming);
    if (e == cudaSuccess) e = cudaEventCreate(&c);
    if (e == cudaSuccess) e = cudaEventCreateWithFlags(&d, cudaEventDisableTiming);
    if (e == cudaSuccess) e = cudaEventCreateWithFlags(&f, cudaEventDisableTiming);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        if (f) cudaEventDestroy(f);
        if (d) cudaEventDestroy(d);
        if (c) cudaEventDestroy(c);
        if (b) cudaEventDestroy(b);
        if (a) cudaEventDestroy(a);
        if (st) cudaStreamDestroy(st);
        return 1;
    }
    s->stats_st = st, s->stats_fork = a, s->stats_join = b, s->stats_end = c, s->stats_prep = d, s->stats_proj = f;
    return 0;
}

// The stats' input passes after the projections of a hybrid call with stats
// taps (tkc_stats_taps.queue_rest, called from inside tkc_hybrid): the stats
// stream waits for proj_done where the projections wrote the taps, else runs
// the norms pass itself; the join event after them. 0 ok, else the error in
// the context's err (the CUDA error cleared, so tkc_hybrid's own checks go on).
struct beside_rest_ctx {
    cuda_state *s;
    const tkc_stats_job *j;
    int profile;
    char *err;
    size_t errlen;
};
int beside_rest(tkc_stats_taps *t) {
    beside_rest_ctx *b = (beside_rest_ctx *)t->ctx;
    cuda_state *s = b->s;
    cudaError_t e = t->used ? cudaStreamWaitEvent(s->stats_st, s->stats_proj, 0) : cudaSuccess;
    int rc = 0;
    if (e == cudaSuccess)
        rc = tkc_stats_inputs_rest(b->j, s->num_sms, s->sws, s->shost, s->stats_st, !t->used, b->err, b->errlen);
    if (!rc && e == cudaSuccess && b->profile && cudaEventRecord(s->stats_end, s->stats_st) != cudaSuccess)
        (void)cudaGetLastError();
    if (!rc && e == cudaSuccess) e = cudaEventRecord(s->stats_join, s->stats_st);
    if (!rc && e != cudaSuccess) {
        snprintf(b->err, b->errlen, "stats rest: %s", cudaGetErrorString(e));
        rc = 1;
    }
    if (rc) { // nothing of this call's stats left running
        (void)cudaStreamSynchronize(s->stats_st);
        (void)cudaGetLastError();
    }
    return rc;
}

// A hybrid call with stats whose far projection is known before the call
// (cached, no fit due; or no far field): the stats' passes that read only
// the inputs (indices, far rows, norms, the sampled rows' partial softmax,
// q.k, order statistics) run on the stats stream beside the hybrid's own
// kernels, forked from st by an event; st waits for them (an event, the host
// does not) after the hybrid, then the comparison with o and the one copy
// back run on st. The projection is the device matrix the call uses
// (tkc_hybrid_cached_projection), no read-back. Returns -1 when it does not
// apply (TKC_STATS_AFTER set, a fit due, a stats buffer not allocated: the
// caller takes the old order), else 0 with res filled as the old order
// would: a failed hybrid call reports no stats and leaves o as it does.
// flag_inputs: tkc_hybrid's (no input scan ran; its kernels check).
// The stats taps (default where the job allows: tkc_stats_taps_of;
// TKC_STATS_TAPS=0 keeps the stats' own norms pass): the
// norms and far logits come from the hybrid's projection kernels (struct
// tkc_stats_taps): the stats queue their prep, the hybrid's k projection
// waits for it, the rest of the stats' input passes wait for the projections
// (events); the stats' own norms pass runs only when the hybrid did not
// write the taps. tkc_hybrid returns to the host only when the call has
// finished on the device (it reads its counters back), so the rest is queued
// from inside it (beside_rest, tkc_stats_taps.queue_rest) right after the
// projections. H200, 16,896: stats on 1.726 -> 1.667 ms (docs/GPU-NOTES.md).
int hybrid_stats_beside(cuda_state *s, const tk_call *call, const tk_config *cfg, const tk_stats_request *sreq,
                        const sampled *sm, cudaStream_t st, tk_result *res, int flag_inputs) {
    s->stats_tapped = 0;
    const char *after = getenv("TKC_STATS_AFTER");
    if (after && atoi(after) != 0) return -1;
    tkc_stats_job j;
    bool far = false;
    stats_job_of(s, call, cfg, TK_MODE_HYBRID, sreq, call->o, sm, &j, &far);
    if (far && !(j.P = tkc_hybrid_cached_projection(s->hybrid, call, cfg))) return -1;
    if (stats_stream(s) || grow(&s->sws, &s->sws_bytes, tkc_stats_ws(&j, s->num_sms), false) ||
        grow(&s->shost, &s->shost_bytes, tkc_stats_host_bytes(&j), true))
        return -1;
    char err[192] = "";
    cudaError_t e = cudaEventRecord(s->stats_fork, st);
    if (e == cudaSuccess) e = cudaStreamWaitEvent(s->stats_st, s->stats_fork, 0);
    if (e != cudaSuccess) {
        snprintf(err, sizeof err, "stats fork: %s", cudaGetErrorString(e));
        tkc_fail(res, TK_REASON_BACKEND_ERROR, err);
        return 0;
    }
    // TKC_STATS_PROFILE (diagnostics): host times and where the input passes ended
    static int profile = -1;
    if (profile < 0) profile = getenv("TKC_STATS_PROFILE") && atoi(getenv("TKC_STATS_PROFILE")) > 0;
    struct timespec t0, t1, t2;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    const char *tv = getenv("TKC_STATS_TAPS");
    tkc_stats_taps taps;
    const bool tap = !(tv && atoi(tv) == 0) && tkc_stats_taps_of(&j, s->num_sms, s->sws, &taps);
    int rc = 0;
    e = cudaSuccess;
    beside_rest_ctx rest_ctx = {s, &j, profile, err, sizeof err};
    if (tap) {
        taps.prep_done = s->stats_prep, taps.proj_done = s->stats_proj;
        taps.queue_rest = beside_rest, taps.ctx = &rest_ctx;
        rc = tkc_stats_inputs_prep(&j, s->num_sms, s->sws, s->shost, s->stats_st, err, sizeof err);
        if (!rc) e = cudaEventRecord(s->stats_prep, s->stats_st);
    } else {
        rc = tkc_stats_inputs(&j, s->num_sms, s->sws, s->shost, s->stats_st, err, sizeof err);
        if (!rc && profile && cudaEventRecord(s->stats_end, s->stats_st) != cudaSuccess) (void)cudaGetLastError();
    }
    if (!rc && e == cudaSuccess) e = cudaEventRecord(s->stats_join, s->stats_st);
    if (rc || e != cudaSuccess) {
        (void)cudaStreamSynchronize(s->stats_st); // nothing of this call left running
        (void)cudaGetLastError();
        if (!rc) snprintf(err, sizeof err, "stats join: %s", cudaGetErrorString(e));
        fail_rc(res, rc ? rc : 1, err);
        return 0;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    tkc_hybrid(&s->hybrid, call, cfg, sreq, st, res, flag_inputs, tap ? &taps : nullptr);
    s->stats_tapped = tap && taps.used;
    if (tap && res->reason == TK_REASON_NONE) { // the rest of the inputs part, unless tkc_hybrid queued it
        rc = taps.rest_queued ? taps.rest_rc : beside_rest(&taps);
        if (rc) { // o is written: as a failed output part (both streams drained there)
            stats_failed_after_output(s, st, res, rc, err);
            return 0;
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t2);
    const cudaError_t joined_early = profile ? cudaEventQuery(s->stats_join) : cudaSuccess;
    if (res->reason != TK_REASON_NONE) {
        s->proj_valid = 0; // as the old order
        // the caller's stream covers the stats' reads of the inputs; failing that, wait here
        if (cudaStreamWaitEvent(st, s->stats_join, 0) != cudaSuccess) {
            (void)cudaGetLastError();
            (void)cudaStreamSynchronize(s->stats_st);
        }
        return 0;
    }
    e = cudaEventRecord(s->ev1, st); // kernel_ms ends with the hybrid (the stats' remainder left out)
    if (e == cudaSuccess) {
        s->ev1_recorded = 1;
        e = cudaStreamWaitEvent(st, s->stats_join, 0);
    }
    if (e != cudaSuccess) {
        (void)cudaStreamSynchronize(s->stats_st);
        snprintf(err, sizeof err, "stats join: %s", cudaGetErrorString(e));
        tkc_fail(res, TK_REASON_BACKEND_ERROR, err);
        return 0;
    }
    rc = stats_fail_injected(err, sizeof err);
    if (!rc) rc = tkc_stats_outputs(&j, s->num_sms, s->sws, s->shost, st, &res->stats, err, sizeof err);
    if (profile && !rc) {
        float in_ms = -1.f, hyb_ms = -1.f;
        if (cudaEventElapsedTime(&in_ms, s->ev0, s->stats_end) != cudaSuccess ||
            cudaEventElapsedTime(&hyb_ms, s->ev0, s->ev1) != cudaSuccess)
            (void)cudaGetLastError();
        fprintf(stderr,
                "stats beside: host queue %.4f ms, host in hybrid %.4f ms, inputs %s when it returned; "
                "device from the call's start: inputs end %.4f ms, hybrid end %.4f ms\n",
                (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6,
                (t2.tv_sec - t1.tv_sec) * 1e3 + (t2.tv_nsec - t1.tv_nsec) / 1e6,
                joined_early == cudaSuccess ? "done" : "running", in_ms, hyb_ms);
    }
    if (rc == 2) { // as run_stats: the output stands, no stats
        memset(&res->stats, 0, sizeof res->stats);
        return 0;
    }
    if (rc) stats_failed_after_output(s, st, res, rc, err); // o is written
    return 0;
}

// One hybrid call after its input check (the scan, or the kernels' flag when
// flag_inputs): the stats beside it when its projection is known up front,
// else after it. res as tkc_hybrid and the stats leave it.
void run_hybrid(cuda_state *s, const tk_call *call, const tk_config *cfg, const tk_stats_request *sreq,
                const sampled *sm, cudaStream_t st, tk_result *res, int flag_inputs) {
    const int beside = sreq ? hybrid_stats_beside(s, call, cfg, sreq, sm, st, res, flag_inputs) : -1;
    if (beside == 0) return;
    s->stats_tapped = 0;
    tkc_hybrid(&s->hybrid, call, cfg, sreq, st, res, flag_inputs, nullptr);
    if (res->reason != TK_REASON_NONE) {
        s->proj_valid = 0; // a failed call may have left a refit behind
        return;
    }
    if (sreq) (void)run_stats(s, call, cfg, TK_MODE_HYBRID, sreq, call->o, sm, st, res);
}

// What tkcuda_attention sets in res before a call.
void result_start(tk_result *res) {
    res->reason = TK_REASON_NONE;
    res->stage = TK_STAGE_NONE;
    res->path = TK_PATH_FALLBACK;
    res->detail[0] = 0;
    res->R = 0;
    res->window = -1;
    res->w = 0;
    memset(&res->stats, 0, sizeof res->stats);
}

// The hybrid call (SPEC 6 bad_input first). Where tkc_hybrid_flags_inputs
// holds (and TKC_HYBRID_SCAN is not set), no scan runs before it: its
// kernels flag a NaN/Inf input and write nothing to o, the host learns it
// from the copy it takes of the far denominators' counters anyway, and only
// then does the scan run, to name the first bad element as the ref backend
// does. Elsewhere the scan runs first and the host waits for its verdict.
void hybrid_call(cuda_state *s, const tk_call *call, const tk_config *cfg, const tk_stats_request *sreq,
                 cudaStream_t st, tk_result *res) {
    const char *fs = getenv("TKC_HYBRID_SCAN"); // 1: the scan up front on every call (benchmarks)
    const int flag = !(fs && atoi(fs) != 0) && tkc_hybrid_flags_inputs(s->hybrid, call, cfg);
    s->hybrid_flagged = flag;
    sampled sm;
    if (flag ? inputs_rows(s, call, cfg, TK_MODE_HYBRID, sreq, &sm, res)
             : inputs_begin(s, call, cfg, TK_MODE_HYBRID, sreq, st, &sm, res) || inputs_verdict(s, res))
        return;
    run_hybrid(s, call, cfg, sreq, &sm, st, res, flag);
    if (!flag || res->reason == TK_REASON_NONE) return;
    // A flagged call failed: a kernel read a NaN/Inf (bad_input; o unwritten),
    // or something else failed (before the flagging kernels, say). Either way
    // bad_input wins, as when the scan runs first: the scan names the first
    // bad element, and the result is that of a call the scan stopped.
    const tk_result failed = *res;
    result_start(res);
    if (inputs_scan(s, call, TK_MODE_HYBRID, st, res) || inputs_verdict(s, res)) {
        if (res->reason != TK_REASON_BAD_INPUT) *res = failed; // the scan itself failed: the call's failure stands
        return;
    }
    if (failed.reason != TK_REASON_BAD_INPUT) { // the inputs are finite: the other failure stands, as it was
        *res = failed;
        return;
    }
    // The scan found every element finite after the kernels flagged one. That
    // should not happen: the flag is set only where a kernel read an element of
    // q, k or v whose exponent bits are all ones (NaN or Inf, exactly), every
    // such element is one the scan reads too, and nothing writes the inputs
    // between the two on st. Were a kernel to flag wrongly (a bug), the call is
    // not lost: it runs again on the scanned path, whose verdict it now has.
    result_start(res);
    s->hybrid_flagged = 0;
    run_hybrid(s, call, cfg, sreq, &sm, st, res, 0);
}

// Taylor on the small path (taylor_small.h), one pass: phase A, sum, den
// pass and apply are queued at once; the apply kernel writes the caller's o
// only when the device found nothing non-finite and the rule passed (probe
// rows and all den). One synchronization at the end brings the record back
// (pinned); the host then names the reason with the priority of the
// probe/run path: bad_input (the input scan runs only when the record saw a
// NaN/Inf: sums of k and v, a den -- or up front when a key mask hides rows
// from phase A), the probe's den, then every den. Returns TK_OK with res set.
int run_taylor_small(cuda_state *s, const tk_call *call, const tk_config *cfg, const tk_stats_request *sreq,
                     cudaStream_t st, tk_result *res, tkc_taylor_args *a, int pn) {
    char err[192] = "";
    const bool stats_on = sreq != nullptr;
    size_t ws_t = tkc_taylor_workspace(a, s->num_sms);
    if (ws_t == 0) {
        snprintf(err, sizeof err, "taylor on cuda: slice dims d=%d dv=%d, P=%d not supported", call->D / a->blocks,
                 call->Dv / a->blocks, a->terms);
        tkc_fail(res, TK_REASON_UNSUPPORTED_SHAPE, err);
        return TK_OK;
    }
    int rc = ensure_ws(s, align256(ws_t), err, sizeof err);
    if (rc) {
        fail_rc(res, rc, err);
        return TK_OK;
    }
    const bool pre_scan = call->key_mask != nullptr; // phase A never reads masked key rows
    if (pre_scan && inputs_scan(s, call, TK_MODE_TAYLOR, st, res)) return TK_OK;
    sampled sm;
    if (inputs_rows(s, call, cfg, TK_MODE_TAYLOR, sreq, &sm, res)) return TK_OK;
    if (pn > 0) {
        if (!(s->prow_valid && s->prow_seed == (uint64_t)cfg->seed && s->prow_pool == call->Nq &&
              s->prow_count == cfg->probe_samples)) {
            s->prow_valid = 0;
            if (pn > s->prow_cap) {
                if (s->prow_d) cudaFree(s->prow_d);
                s->prow_d = nullptr;
                s->prow_cap = 0;
                if (cudaMalloc(&s->prow_d, sizeof(int) * pn) != cudaSuccess) {
                    (void)cudaGetLastError();
                    s->prow_d = nullptr;
                    tkc_fail(res, TK_REASON_OUT_OF_MEMORY, "device buffer of the probe rows");
                    return TK_OK;
                }
                s->prow_cap = pn;
            }
            cudaError_t e = cudaMemcpyAsync(s->prow_d, sm.prows, sizeof(int) * pn, cudaMemcpyHostToDevice, st);
            if (e != cudaSuccess) {
                snprintf(err, sizeof err, "probe rows: %s", cudaGetErrorString(e));
                tkc_fail(res, TK_REASON_BACKEND_ERROR, err);
                return TK_OK;
            }
            s->prow_seed = (uint64_t)cfg->seed, s->prow_pool = call->Nq, s->prow_count = cfg->probe_samples;
            s->prow_valid = 1;
        }
        a->probe_rows = s->prow_d;
    }
    tkc_small_rule rule;
    memset(&rule, 0, sizeof rule);
    rule.fallback_on_negative = cfg->fallback_on_negative;
    rule.frac_limit = cfg->denom_fallback_frac_limit;
    rule.scan_d = pre_scan ? s->scan_d : nullptr;
    rule.scan_n = 3;
    rc = tkc_taylor_small_call(a, &rule, s->ws, ws_t, s->num_sms, st, s->rec_h, err, sizeof err);
    if (rc) {
        fail_rc(res, rc, err);
        return TK_OK;
    }
    // kernel_ms ends here: recorded before the synchronization below, so the
    // caller's wait for ev1 costs no second round trip
    cudaError_t e = cudaEventRecord(s->ev1, st);
    if (e == cudaSuccess) {
        s->ev1_recorded = 1;
        e = cudaStreamSynchronize(st);
    }
    if (e != cudaSuccess) {
        snprintf(err, sizeof err, "taylor: %s", cudaGetErrorString(e));
        tkc_fail(res, TK_REASON_BACKEND_ERROR, err);
        return TK_OK;
    }
    tkc_small_record rec = *s->rec_h;
    tkc_den_decode(&rec.den);
    if (pre_scan) {
        if (inputs_verdict(s, res)) return TK_OK;
    } else if (rec.suspicious || rec.probe_nf || rec.den.n_nonfinite) { // NaN/Inf inputs make NaN sums or den
        if (inputs_scan(s, call, TK_MODE_TAYLOR, st, res) || inputs_verdict(s, res)) return TK_OK;
    }
    if (pn > 0) {
        if (rec.probe_nf) {
            snprintf(err, sizeof err, "probe: %llu of %llu denominators are NaN or Inf", rec.probe_nf, rec.probe_n);
            tkc_fail(res, TK_REASON_DENOMINATOR_INVALID, err);
            res->stage = TK_STAGE_PROBE;
            return TK_OK;
        }
        if (too_small(cfg, rec.probe_le, rec.probe_n)) {
            snprintf(err, sizeof err, "probe: %llu of %llu denominators <= eps %g", rec.probe_le, rec.probe_n,
                     cfg->eps);
            tkc_fail(res, TK_REASON_DENOMINATOR_TOO_SMALL, err);
            res->stage = TK_STAGE_PROBE;
            return TK_OK;
        }
    }
    const tkc_den_stats &den = rec.den;
    if (stats_on) tkc_den_report(&den, res);
    if (den_rule_fails(cfg, &den, res)) return TK_OK;
    if (!rec.applied) { // the device guard stopped a call the host finds good (a sum overflowed, say)
        rc = tkc_taylor_small_apply(a, s->ws, ws_t, s->num_sms, st, err, sizeof err);
        if (rc) {
            fail_rc(res, rc, err);
            return TK_OK;
        }
        s->ev1_recorded = 0; // kernel_ms takes the apply in
    }
    if (stats_on && run_stats(s, call, cfg, TK_MODE_TAYLOR, sreq, call->o, &sm, st, res)) return TK_OK;
    res->reason = TK_REASON_NONE;
    res->path = TK_PATH_TAYLOR;
    return TK_OK;
}

int run_taylor(cuda_state *s, const tk_call *call, const tk_config *cfg, const tk_stats_request *sreq,
               cudaStream_t st, tk_result *res) {
    char err[192] = "";
    const bool stats_on = sreq != nullptr;
    int pn = !cfg->early_probe ? 0 : cfg->probe_samples < call->Nq ? cfg->probe_samples : call->Nq;
    tkc_taylor_args a;
    memset(&a, 0, sizeof a);
    a.q = call->q;
    a.k = call->k;
    a.v = call->v;
    a.mask = call->key_mask;
    a.dtype = call->dtype;
    a.B = call->B;
    a.H = call->H;
    a.Nq = call->Nq;
    a.Nk = call->Nk;
    a.D = call->D;
    a.Dv = call->Dv;
    a.blocks = cfg->sub_head_blocks;
    a.terms = cfg->terms;
    if (a.blocks <= 0 || call->D % a.blocks || call->Dv % a.blocks) {
        tkc_fail(res, TK_REASON_SUB_HEAD_BLOCK_MISMATCH, "D or Dv is not divisible by sub_head_blocks");
        return TK_OK;
    }
    int d = call->D / a.blocks;
    a.s = (float)(cfg->scale_mul / sqrt((double)d));
    a.modify = !modify_active(cfg, call->sigma) ? 0
               : cfg->qk_normalize                    ? 1
               : (cfg->qk_norm_power > 0 || cfg->qk_norm_clip > 0) ? 2
                                                                  : 0;
    a.power = (float)cfg->qk_norm_power;
    a.clip = (float)cfg->qk_norm_clip;
    a.eps = (float)cfg->eps;
    const char *sp = getenv("TKC_TAYLOR_SPLIT");
    a.split = sp ? atoi(sp) : 0;
    a.probe_n = pn;
    res->R = tkc_feature_count(d, a.terms);
    a.o = call->o; // the small path writes the caller's o itself (TKC_SMALL_OLD: the probe/run path, as before)
    if (!getenv("TKC_SMALL_OLD") && tkc_small_handles(&a)) return run_taylor_small(s, call, cfg, sreq, st, res, &a, pn);
    a.o = nullptr;

    size_t ws_t = tkc_taylor_workspace(&a, s->num_sms);
    if (ws_t == 0) {
        snprintf(err, sizeof err, "taylor on cuda: slice dims d=%d dv=%d, P=%d not supported", d,
                 call->Dv / a.blocks, a.terms);
        tkc_fail(res, TK_REASON_UNSUPPORTED_SHAPE, err);
        return TK_OK;
    }
    size_t o_bytes = (size_t)call->B * call->H * call->Nq * call->Dv * tk_dtype_size(call->dtype);
    size_t off_o = align256(ws_t);
    size_t off_rows = off_o + align256(o_bytes);
    size_t off_q = off_rows + align256(sizeof(int) * (pn > 0 ? pn : 1)); // end of the workspace
    size_t total = off_q;
    int rc = ensure_ws(s, total, err, sizeof err);
    if (rc) {
        fail_rc(res, rc, err);
        return TK_OK;
    }
    int key = ((d << 8) | a.terms) + 1;
    a.table_cached = s->table_key == key;
    s->table_key = 0; // set again once the upload succeeded
    a.o = (char *)s->ws + off_o;
    sampled sm;
    if (inputs_begin(s, call, cfg, TK_MODE_TAYLOR, sreq, st, &sm, res)) return TK_OK;
    const int *probe_rows = sm.prows;
    if (pn > 0) {
        float *den = (float *)malloc(sizeof(float) * pn * (size_t)call->B * call->H * a.blocks);
        if (!den) {
            tkc_fail(res, TK_REASON_OUT_OF_MEMORY, "host buffers of the probe");
            return TK_OK;
        }
        int *rows_d = (int *)((char *)s->ws + off_rows);
        cudaError_t e = cudaMemcpyAsync(rows_d, probe_rows, sizeof(int) * pn, cudaMemcpyHostToDevice, st);
        rc = 0;
        if (e != cudaSuccess) {
            snprintf(err, sizeof err, "probe rows: %s", cudaGetErrorString(e));
            rc = 1;
        } else {
            a.probe_rows = rows_d;
            rc = tkc_taylor_probe(&a, s->ws, ws_t, s->num_sms, st, den, err, sizeof err);
        }
        if (rc) {
            free(den);
            fail_rc(res, rc, err);
            return TK_OK;
        }
        if (inputs_verdict(s, res)) { // NaN/Inf inputs make NaN den: bad_input first
            free(den);
            return TK_OK;
        }
        unsigned long long n = (unsigned long long)pn * call->B * call->H * a.blocks, le = 0, nf = 0;
        for (unsigned long long i = 0; i < n; i++) {
            if (!isfinite(den[i])) nf++;
            else if (den[i] <= cfg->eps) le++;
        }
        free(den);
        if (nf) {
            snprintf(err, sizeof err, "probe: %llu of %llu denominators are NaN or Inf", nf, n);
            tkc_fail(res, TK_REASON_DENOMINATOR_INVALID, err);
            res->stage = TK_STAGE_PROBE;
            return TK_OK;
        }
        if (too_small(cfg, le, n)) {
            snprintf(err, sizeof err, "probe: %llu of %llu denominators <= eps %g", le, n, cfg->eps);
            tkc_fail(res, TK_REASON_DENOMINATOR_TOO_SMALL, err);
            res->stage = TK_STAGE_PROBE;
            return TK_OK;
        }
    }
    tkc_den_stats den;
    rc = tkc_taylor_run(&a, s->ws, ws_t, s->num_sms, st, &den, err, sizeof err);
    if (rc) {
        fail_rc(res, rc, err);
        return TK_OK;
    }
    if (pn == 0 && inputs_verdict(s, res)) return TK_OK;
    s->table_key = key;
    if (stats_on) tkc_den_report(&den, res);
    if (den_rule_fails(cfg, &den, res)) return TK_OK;
    if (stats_on && run_stats(s, call, cfg, TK_MODE_TAYLOR, sreq, a.o, &sm, st, res)) return TK_OK;
    cudaError_t e = cudaMemcpyAsync(call->o, a.o, o_bytes, cudaMemcpyDeviceToDevice, st);
    if (e != cudaSuccess) {
        snprintf(err, sizeof err, "output copy: %s", cudaGetErrorString(e));
        tkc_fail(res, TK_REASON_BACKEND_ERROR, err);
        return TK_OK;
    }
    res->reason = TK_REASON_NONE;
    res->path = TK_PATH_TAYLOR;
    return TK_OK;
}

} // namespace

extern "C" int tkcuda_available(void) {
    static int cached = -1;
    if (cached < 0) {
        char err[256];
        cached = tkcuda_selfcheck(err, sizeof err) == 0;
    }
    return cached;
}

extern "C" int tkcuda_open(tk_context *ctx, char *err, size_t errlen) {
    if (!tkcuda_available()) {
        snprintf(err, errlen, "no usable CUDA device");
        return TK_ERR_UNSUPPORTED;
    }
    cuda_state *s = (cuda_state *)calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return TK_ERR_NOMEM;
    }
    int made = 0; // events and streams created, in the order below
    cudaError_t e = cudaGetDevice(&s->device);
    if (e == cudaSuccess)
        e = cudaDeviceGetAttribute(&s->num_sms, cudaDevAttrMultiProcessorCount, s->device);
    if (e == cudaSuccess && (e = cudaEventCreate(&s->ev0)) == cudaSuccess) made = 1;
    if (e == cudaSuccess && (e = cudaEventCreate(&s->ev1)) == cudaSuccess) made = 2;
    if (e == cudaSuccess) e = cudaMalloc(&s->scan_d, sizeof(unsigned long long) * TKC_SCAN_MAX);
    if (e == cudaSuccess) e = cudaMallocHost(&s->scan_h, sizeof(unsigned long long) * TKC_SCAN_MAX);
    if (e == cudaSuccess) e = cudaMallocHost(&s->rec_h, sizeof(tkc_small_record));
    if (e == cudaSuccess && (e = cudaEventCreateWithFlags(&s->scan_done, cudaEventDisableTiming)) == cudaSuccess)
        made = 3;
    if (e != cudaSuccess) {
        snprintf(err, errlen, "cuda backend: %s", cudaGetErrorString(e));
        if (s->scan_d) cudaFree(s->scan_d);
        if (s->scan_h) cudaFreeHost(s->scan_h);
        if (s->rec_h) cudaFreeHost(s->rec_h);
        if (made > 0) cudaEventDestroy(s->ev0);
        if (made > 1) cudaEventDestroy(s->ev1);
        free(s);
        return e == cudaErrorMemoryAllocation ? TK_ERR_NOMEM : TK_ERR;
    }
    ctx->cuda = s;
    return TK_OK;
}

extern "C" void tkcuda_close(tk_context *ctx) {
    cuda_state *s = (cuda_state *)ctx->cuda;
    if (!s) return;
    if (s->ws) cudaFree(s->ws);
    cudaFree(s->scan_d);
    cudaFreeHost(s->scan_h);
    cudaFreeHost(s->rec_h);
    if (s->prow_d) cudaFree(s->prow_d);
    if (s->sws) cudaFree(s->sws);
    if (s->shost) cudaFreeHost(s->shost);
    if (s->proj_d) cudaFree(s->proj_d);
    free(s->proj_h);
    if (s->proj_h0) cudaFreeHost(s->proj_h0);
    free_rows(&s->qk_q);
    free_rows(&s->qk_k);
    cudaEventDestroy(s->scan_done);
    free_rows(&s->probe);
    free_rows(&s->quality);
    tkc_hybrid_free(s->hybrid);
    if (s->stats_st) {
        cudaStreamDestroy(s->stats_st);
        cudaEventDestroy(s->stats_fork);
        cudaEventDestroy(s->stats_join);
        cudaEventDestroy(s->stats_end);
        cudaEventDestroy(s->stats_prep);
        cudaEventDestroy(s->stats_proj);
    }
    cudaEventDestroy(s->ev0);
    cudaEventDestroy(s->ev1);
    free(s);
    ctx->cuda = nullptr;
}

extern "C" int tkcuda_attention(tk_context *ctx, const tk_call *call, const tk_config *cfg,
                                tk_mode mode, const tk_stats_request *stats_req, tk_result *res) {
    if (!ctx || !call || !cfg || !res) return TK_ERR;
    cuda_state *s = (cuda_state *)ctx->cuda;
    result_start(res);
    if (!s) {
        tkc_fail(res, TK_REASON_BACKEND_ERROR, "cuda backend: context not opened for cuda");
        return TK_OK;
    }
    cudaStream_t st = (cudaStream_t)call->stream;
    char err[192] = "";
    s->ev1_recorded = 0;
    s->hybrid_flagged = 0;
    cudaError_t e = cudaEventRecord(s->ev0, st);
    if (e != cudaSuccess) {
        snprintf(err, sizeof err, "cudaEventRecord: %s", cudaGetErrorString(e));
        tkc_fail(res, TK_REASON_BACKEND_ERROR, err);
        return TK_OK;
    }
    sampled sm;
    if (mode == TK_MODE_EXACT) {
        size_t ws_e = exact_ws(call);
        int rc = ensure_ws(s, align256(ws_e), err, sizeof err);
        if (rc) {
            fail_rc(res, rc, err);
            return TK_OK;
        }
        if (inputs_begin(s, call, cfg, mode, stats_req, st, &sm, res) || inputs_verdict(s, res)) return TK_OK;
        rc = run_exact(s, call, st, call->o, 0, err, sizeof err);
        if (rc) {
            fail_rc(res, rc, err);
            return TK_OK;
        }
        if (stats_req && run_stats(s, call, cfg, mode, stats_req, call->o, &sm, st, res)) return TK_OK;
        res->path = TK_PATH_EXACT;
    } else if (mode == TK_MODE_TAYLOR) {
        run_taylor(s, call, cfg, stats_req, st, res);
        if (res->reason != TK_REASON_NONE) return TK_OK;
    } else {
        hybrid_call(s, call, cfg, stats_req, st, res);
        if (res->reason != TK_REASON_NONE) return TK_OK;
    }
    if (!s->ev1_recorded) e = cudaEventRecord(s->ev1, st);
    if (e == cudaSuccess) e = cudaEventSynchronize(s->ev1);
    float ms = 0.f;
    if (e == cudaSuccess) e = cudaEventElapsedTime(&ms, s->ev0, s->ev1);
    if (e != cudaSuccess) {
        snprintf(err, sizeof err, "after the kernels: %s", cudaGetErrorString(e));
        tkc_fail(res, TK_REASON_BACKEND_ERROR, err);
        return TK_OK;
    }
    if (stats_req) {
        res->stats.kernel_ms = ms;
        res->stats.have |= TK_HAVE_TIME;
    }
    return TK_OK;
}

extern "C" void tkcuda_reset(tk_context *ctx) {
    cuda_state *s = ctx ? (cuda_state *)ctx->cuda : nullptr;
    if (s) {
        tkc_hybrid_reset(s->hybrid);
        s->proj_valid = 0;
    }
}

extern "C" int tkcu_hybrid_flagged_inputs(tk_context *ctx) {
    cuda_state *s = ctx ? (cuda_state *)ctx->cuda : nullptr;
    return s ? s->hybrid_flagged : 0;
}

extern "C" int tkcu_hybrid_stats_tapped(tk_context *ctx) {
    cuda_state *s = ctx ? (cuda_state *)ctx->cuda : nullptr;
    return s ? s->stats_tapped : 0;
}

extern "C" int tkcu_hybrid_projection(tk_context *ctx, int layer, int bh, float *out, int *D, int *g) {
    cuda_state *s = ctx ? (cuda_state *)ctx->cuda : nullptr;
    return s ? tkc_hybrid_projection(s->hybrid, layer, bh, out, D, g) : 1;
}

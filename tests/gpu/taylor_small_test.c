/* GPU tests of the small-slice Taylor path (kernels/cuda/taylor_small.cu:
 * slice dim 16, P <= 3) through tk_attention against the ref backend (fp64)
 * on the same inputs rounded to the call's dtype. Outputs are poisoned
 * before each run.
 *
 * Threshold: normalized MSE <= 5e-4 (issue 4). The device rounds q', k' and
 * v to f16 for the tensor cores and stores S in f16 scaled per column, each
 * a relative error near 2^-11 that averages over many keys, so measured
 * values sit orders below the bound; the structured case (large, correlated
 * q and k) is the one that would expose a range or scaling bug. Skipped
 * without a device. */
#include "harness.h"
#include "kernels.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef TK_HAVE_CUDA
#include "cuda/tkcuda_util.h"
#include "gpu_test.h"
#include "internal.h"

typedef struct {
    int B, H, Nq, Nk, D;
    tk_dtype dt;
    float *q, *k, *v; /* host, rounded to dt */
    uint8_t *mask;    /* host [B,Nk] or NULL */
    void *dq, *dk, *dv, *dout;
    uint8_t *dmask;
} problem;

static void round_trip(float *h, void *d, size_t n, tk_dtype dt) {
    char err[256] = "";
    if (tkcu_upload(d, h, n, dt, err, sizeof err) || tkcu_download(h, d, n, dt, err, sizeof err))
        th_fail(__FILE__, __LINE__, "upload: %s", err);
}

/* kind 0: N(0, sd^2) entries; kind 1: structured -- q and k share a few
 * smooth directions (positions on a ring, so nearby tokens attend to each
 * other) times sd, plus small noise; v a smooth function of position. */
static problem make(int B, int H, int Nq, int Nk, int D, tk_dtype dt, double sd, double keep, int kind,
                    uint64_t seed) {
    problem p;
    memset(&p, 0, sizeof p);
    p.B = B, p.H = H, p.Nq = Nq, p.Nk = Nk, p.D = D, p.dt = dt;
    gt_seed(seed);
    size_t nq = (size_t)B * H * Nq * D, nk = (size_t)B * H * Nk * D, es = tk_dtype_size(dt);
    char err[256] = "";
    p.q = xmalloc(nq * 4), p.k = xmalloc(nk * 4), p.v = xmalloc(nk * 4);
    if (tkcu_alloc(&p.dq, nq * es, err, sizeof err) || tkcu_alloc(&p.dk, nk * es, err, sizeof err) ||
        tkcu_alloc(&p.dv, nk * es, err, sizeof err) || tkcu_alloc(&p.dout, nq * es, err, sizeof err))
        th_fail(__FILE__, __LINE__, "device allocation: %s", err);
    for (int which = 0; which < 3; which++) {
        float *x = which == 0 ? p.q : which == 1 ? p.k : p.v;
        int N = which == 0 ? Nq : Nk;
        for (int bh = 0; bh < B * H; bh++)
            for (int i = 0; i < N; i++)
                for (int t = 0; t < D; t++) {
                    double val;
                    if (kind == 0) {
                        val = nrand() * (which == 2 ? 1.0 : sd);
                    } else {
                        double ang = 6.283185307179586 * i / N;
                        int f = 1 + (t % 4);
                        double smooth = (t & 4) ? cos(f * ang + bh) : sin(f * ang + bh);
                        val = which == 2 ? smooth + 0.3 * nrand() : sd * smooth + 0.2 * nrand();
                    }
                    x[((size_t)bh * N + i) * D + t] = (float)val;
                }
    }
    round_trip(p.q, p.dq, nq, dt);
    round_trip(p.k, p.dk, nk, dt);
    round_trip(p.v, p.dv, nk, dt);
    if (keep < 1.0) {
        p.mask = xmalloc((size_t)B * Nk);
        for (int i = 0; i < B * Nk; i++) p.mask[i] = keep > 0 && urand() < keep;
        void *dm = NULL;
        if (tkcu_alloc(&dm, (size_t)B * Nk, err, sizeof err) ||
            tkcu_upload_bytes(dm, p.mask, (size_t)B * Nk, err, sizeof err))
            th_fail(__FILE__, __LINE__, "mask: %s", err);
        p.dmask = dm;
    }
    return p;
}

static void drop(problem *p) {
    free(p->q), free(p->k), free(p->v), free(p->mask);
    tkcu_free(p->dq), tkcu_free(p->dk), tkcu_free(p->dv), tkcu_free(p->dout), tkcu_free(p->dmask);
}

static tk_call call_of(const problem *p) {
    tk_call c;
    memset(&c, 0, sizeof c);
    c.B = p->B, c.H = p->H, c.Nq = p->Nq, c.Nk = p->Nk, c.D = c.Dv = p->D;
    c.dtype = p->dt;
    c.q = p->dq, c.k = p->dk, c.v = p->dv, c.o = p->dout, c.key_mask = p->dmask;
    return c;
}

static size_t out_n(const problem *p) { return (size_t)p->B * p->H * p->Nq * p->D; }

/* The cuda output (poisoned first) of one call through tk_attention. */
static float *run_cuda(problem *p, const tk_config *cfg, tk_result *res) {
    char err[256] = "";
    tk_context *cu = NULL;
    if (tk_context_open(TK_BACKEND_CUDA, &cu, err, sizeof err)) th_fail(__FILE__, __LINE__, "cuda: %s", err);
    if (tkcu_poison(p->dout, out_n(p) * tk_dtype_size(p->dt), 0xff, err, sizeof err))
        th_fail(__FILE__, __LINE__, "%s", err);
    tk_call c = call_of(p);
    tk_stats_request sr = {0, 0, 1};
    memset(res, 0, sizeof *res);
    TH_EQ_INT(tk_attention(cu, &c, cfg, TK_MODE_TAYLOR, &sr, res), TK_OK);
    float *o = xmalloc(out_n(p) * 4);
    if (tkcu_download(o, p->dout, out_n(p), p->dt, err, sizeof err)) th_fail(__FILE__, __LINE__, "%s", err);
    tk_context_close(cu);
    return o;
}

static float *run_ref(const problem *p, const tk_config *cfg, tk_result *res) {
    char err[256] = "";
    tk_context *ref = NULL;
    if (tk_context_open(TK_BACKEND_REF, &ref, err, sizeof err)) th_fail(__FILE__, __LINE__, "ref: %s", err);
    float *o = xmalloc(out_n(p) * 4);
    tk_call h = call_of(p);
    h.dtype = TK_DTYPE_F32, h.q = p->q, h.k = p->k, h.v = p->v, h.o = o, h.key_mask = p->mask;
    memset(res, 0, sizeof *res);
    TH_EQ_INT(tk_attention(ref, &h, cfg, TK_MODE_TAYLOR, NULL, res), TK_OK);
    tk_context_close(ref);
    return o;
}

static double nmse(const float *o, const float *ref, size_t n) {
    double e = 0, r = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)o[i] - ref[i];
        e += d * d;
        r += (double)ref[i] * ref[i];
    }
    return isfinite(e) && r > 0 ? e / r : INFINITY;
}

/* cuda against ref on p with cfg: same reason and R, MSE within 5e-4, den
 * counters of every (query, slice); returns the measured normalized MSE. */
static double check(problem *p, const tk_config *cfg) {
    tk_result rc, rr;
    float *o = run_cuda(p, cfg, &rc);
    float *ref = run_ref(p, cfg, &rr);
    TH_CHECKF(rc.reason == TK_REASON_NONE, "cuda reason %s: %s", tk_reason_name(rc.reason), rc.detail);
    TH_CHECKF(rr.reason == TK_REASON_NONE, "ref reason %s: %s", tk_reason_name(rr.reason), rr.detail);
    TH_EQ_INT(rc.path, TK_PATH_TAYLOR);
    TH_EQ_INT(rc.R, rr.R);
    TH_CHECK(rc.stats.have & TK_HAVE_DENOMS);
    TH_EQ_INT(rc.stats.den.n, (int64_t)p->B * p->H * p->Nq * cfg->sub_head_blocks);
    TH_CHECKF(rc.stats.den.min > 0 && rc.stats.den.min <= rc.stats.den.max, "den min %g max %g",
              rc.stats.den.min, rc.stats.den.max);
    double e = nmse(o, ref, out_n(p));
    TH_CHECKF(e <= 5e-4, "normalized MSE against ref %.3g > 5e-4", e);
    free(o), free(ref);
    return e;
}

static tk_config cfg_of(int P, int b) {
    tk_config c;
    tk_config_defaults(&c);
    c.terms = P, c.sub_head_blocks = b;
    return c;
}

static void test_p3_eight_blocks_bf16_with_mask_and_tails_matches_ref(void) {
    need_device();
    problem p = make(2, 2, 300, 300, 128, TK_DTYPE_BF16, 1.0, 0.7, 0, 101);
    tk_config cfg = cfg_of(3, 8);
    check(&p, &cfg);
    drop(&p);
}

static void test_every_p_up_to_3_matches_ref(void) {
    need_device();
    problem p = make(1, 2, 257, 257, 128, TK_DTYPE_BF16, 0.5, 1.0, 0, 102);
    for (int P = 1; P <= 3; P++) {
        tk_config cfg = cfg_of(P, 8);
        check(&p, &cfg);
    }
    drop(&p);
}

static void test_f16_d64_cross_attention_with_normalized_qk_matches_ref(void) {
    need_device();
    problem p = make(1, 3, 130, 333, 64, TK_DTYPE_F16, 1.0, 0.8, 0, 103);
    tk_config cfg = cfg_of(3, 4);
    cfg.qk_normalize = 1, cfg.allow_cross_attention = 1;
    check(&p, &cfg);
    drop(&p);
}

static void test_f32_d32_with_norm_power_and_clip_matches_ref(void) {
    need_device();
    problem p = make(2, 1, 200, 200, 32, TK_DTYPE_F32, 1.5, 1.0, 0, 104);
    tk_config cfg = cfg_of(3, 2);
    cfg.qk_norm_power = 0.5, cfg.qk_norm_clip = 3.0;
    check(&p, &cfg);
    drop(&p);
}

static void test_single_slice_d16_many_tiles_matches_ref(void) {
    need_device();
    problem p = make(1, 3, 1000, 1000, 16, TK_DTYPE_BF16, 1.0, 1.0, 0, 105);
    tk_config cfg = cfg_of(3, 1);
    check(&p, &cfg);
    drop(&p);
}

static void test_structured_large_correlated_inputs_match_ref(void) {
    need_device();
    problem p = make(1, 2, 700, 700, 128, TK_DTYPE_BF16, 3.0, 0.9, 1, 106);
    tk_config cfg = cfg_of(3, 8);
    check(&p, &cfg);
    cfg.scale_mul = 2.0;
    check(&p, &cfg);
    drop(&p);
}

/* Same inputs twice: bitwise equal outputs (the key splits are summed in a
 * fixed order); with and without the probe (the run reuses the probe's
 * phase A) equal too; another key split agrees within rounding. */
static void test_outputs_are_deterministic_with_and_without_probe(void) {
    need_device();
    problem p = make(1, 2, 600, 600, 128, TK_DTYPE_BF16, 1.0, 1.0, 0, 107);
    tk_config cfg = cfg_of(3, 8);
    tk_result r1, r2, r3, r4;
    float *o1 = run_cuda(&p, &cfg, &r1), *o2 = run_cuda(&p, &cfg, &r2);
    cfg.early_probe = 0;
    float *o3 = run_cuda(&p, &cfg, &r3);
    setenv("TKC_TAYLOR_SPLIT", "3", 1);
    float *o4 = run_cuda(&p, &cfg, &r4);
    unsetenv("TKC_TAYLOR_SPLIT");
    TH_EQ_STR(tk_reason_name(r1.reason), "none");
    TH_EQ_STR(tk_reason_name(r4.reason), "none");
    TH_CHECK(memcmp(o1, o2, out_n(&p) * 4) == 0);
    TH_CHECK(memcmp(o1, o3, out_n(&p) * 4) == 0);
    double e = nmse(o4, o1, out_n(&p));
    TH_CHECKF(e < 1e-6, "split 3 vs auto: normalized MSE %.3g", e);
    free(o1), free(o2), free(o3), free(o4);
    drop(&p);
}

/* The generic path (TKC_TAYLOR_GENERIC) and the small path agree, and a
 * slice dim the small path does not take (d = 8) still runs and matches. */
static void test_small_path_agrees_with_the_generic_path_and_d8_falls_back(void) {
    need_device();
    problem p = make(1, 2, 333, 333, 128, TK_DTYPE_BF16, 1.0, 0.75, 0, 108);
    tk_config cfg = cfg_of(3, 8);
    tk_result rs, rg;
    float *os = run_cuda(&p, &cfg, &rs);
    setenv("TKC_TAYLOR_GENERIC", "1", 1);
    float *og = run_cuda(&p, &cfg, &rg);
    unsetenv("TKC_TAYLOR_GENERIC");
    TH_EQ_STR(tk_reason_name(rs.reason), "none");
    TH_EQ_STR(tk_reason_name(rg.reason), "none");
    double e = nmse(os, og, out_n(&p));
    TH_CHECKF(e < 1e-5, "small vs generic: normalized MSE %.3g", e);
    TH_NEAR(rs.stats.den.min, rg.stats.den.min, 1e-3 * fabs(rg.stats.den.min));
    TH_NEAR(rs.stats.den.mean, rg.stats.den.mean, 1e-3 * fabs(rg.stats.den.mean));
    free(os), free(og);
    cfg = cfg_of(3, 16);
    check(&p, &cfg);
    drop(&p);
}

/* q = 6 e_0 and k = -6 e_0 in every slice: kappa_2(x) = 1 + x = -8 for every
 * pair, so every den is negative -> denominator_too_small at the probe (and
 * at the full stage without it), like the ref; o stays poisoned; with the
 * rule off the den (-800) are clamped, counted and o is written. */
static void test_negative_denominators_fall_back_and_leave_o_untouched(void) {
    need_device();
    problem p = make(1, 2, 100, 100, 128, TK_DTYPE_BF16, 1.0, 1.0, 0, 109);
    size_t n = out_n(&p);
    for (size_t i = 0; i < n; i++) {
        p.q[i] = i % 16 == 0 ? 6.f : 0.f;
        p.k[i] = i % 16 == 0 ? -6.f : 0.f;
    }
    round_trip(p.q, p.dq, n, p.dt);
    round_trip(p.k, p.dk, n, p.dt);
    tk_config cfg = cfg_of(2, 8);
    tk_result rc, rr;
    float *o = run_cuda(&p, &cfg, &rc);
    float *ref = run_ref(&p, &cfg, &rr);
    TH_EQ_STR(tk_reason_name(rc.reason), "denominator_too_small");
    TH_EQ_STR(tk_reason_name(rr.reason), "denominator_too_small");
    TH_EQ_INT(rc.stage, TK_STAGE_PROBE);
    int all_nan = 1;
    for (size_t i = 0; i < n; i++) all_nan &= isnan(o[i]);
    TH_CHECK(all_nan);
    free(o);
    cfg.early_probe = 0;
    o = run_cuda(&p, &cfg, &rc);
    TH_EQ_STR(tk_reason_name(rc.reason), "denominator_too_small");
    TH_EQ_INT(rc.stage, TK_STAGE_FULL);
    all_nan = 1;
    for (size_t i = 0; i < n; i++) all_nan &= isnan(o[i]);
    TH_CHECK(all_nan);
    free(o);
    cfg.fallback_on_negative = 0;
    o = run_cuda(&p, &cfg, &rc);
    TH_EQ_STR(tk_reason_name(rc.reason), "none");
    TH_EQ_INT(rc.stats.den.n_le_eps, (int64_t)100 * 2 * 8); /* every (query, slice) counted */
    TH_NEAR(rc.stats.den.max, -8.0 * 100, 1.0);
    int finite = 1;
    for (size_t i = 0; i < n; i++) finite &= isfinite(o[i]);
    TH_CHECK(finite);
    free(o), free(ref);
    drop(&p);
}

#define T(name) TH_TEST(name)
#else
static void test_cuda_backend_is_not_built(void) { th_skip("built without nvcc"); }
#define T(name) TH_TEST(test_cuda_backend_is_not_built)
#endif

static const th_test tests[] = {
#ifdef TK_HAVE_CUDA
    T(test_p3_eight_blocks_bf16_with_mask_and_tails_matches_ref),
    T(test_every_p_up_to_3_matches_ref),
    T(test_f16_d64_cross_attention_with_normalized_qk_matches_ref),
    T(test_f32_d32_with_norm_power_and_clip_matches_ref),
    T(test_single_slice_d16_many_tiles_matches_ref),
    T(test_structured_large_correlated_inputs_match_ref),
    T(test_outputs_are_deterministic_with_and_without_probe),
    T(test_small_path_agrees_with_the_generic_path_and_d8_falls_back),
    T(test_negative_denominators_fall_back_and_leave_o_untouched),
#else
    T(x),
#endif
    {0},
};

int main(int argc, char **argv) { return th_main(tests, argc, argv); }

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

/* ---- the one-pass call: the device decides whether o is written ----------
 * The small path takes the verdict on the device (kernels/cuda/backend.cu
 * run_taylor_small): NaN/Inf inputs show up as NaN sums of k or v or NaN den,
 * then the input scan names the element as ref does; the rule is applied to
 * the device's counters before the apply kernel may write o. */

static int still_poisoned(const problem *p) {
    char err[256] = "";
    size_t n = out_n(p);
    float *o = xmalloc(n * 4);
    if (tkcu_download(o, p->dout, n, p->dt, err, sizeof err)) th_fail(__FILE__, __LINE__, "%s", err);
    int all = 1;
    for (size_t i = 0; i < n; i++) all &= isnan(o[i]);
    free(o);
    return all;
}

/* cuda and ref on p with cfg: both bad_input with the same detail, which
 * names tensor; o still poisoned. */
static void expect_bad_input(problem *p, const tk_config *cfg, const char *tensor) {
    tk_result rc, rr;
    float *o = run_cuda(p, cfg, &rc);
    free(o);
    TH_CHECK(still_poisoned(p));
    float *ref = run_ref(p, cfg, &rr);
    free(ref);
    TH_EQ_STR(tk_reason_name(rr.reason), "bad_input");
    TH_EQ_STR(tk_reason_name(rc.reason), "bad_input");
    TH_EQ_INT(rc.path, TK_PATH_FALLBACK);
    TH_EQ_STR(rc.detail, rr.detail);
    TH_CHECKF(strncmp(rc.detail, tensor, strlen(tensor)) == 0 && rc.detail[strlen(tensor)] == ' ',
              "detail \"%s\" does not name %s", rc.detail, tensor);
}

static void set_value(problem *p, float *host, void *dev, size_t at, float value) {
    size_t n = host == p->q ? out_n(p) : (size_t)p->B * p->H * p->Nk * p->D;
    host[at] = value;
    round_trip(host, dev, n, p->dt);
}

static void test_nan_or_inf_in_q_k_or_v_is_bad_input_like_ref_and_leaves_o_untouched(void) {
    need_device();
    problem p = make(1, 2, 500, 500, 128, TK_DTYPE_BF16, 1.0, 1.0, 0, 110);
    tk_config cfg = cfg_of(3, 8);
    struct {
        float *host;
        void *dev;
        size_t at;
        float value;
        const char *name;
        int probe;
    } cases[] = {
        {p.k, p.dk, ((size_t)1 * 500 + 321) * 128 + 77, NAN, "k", 1}, /* head 1, key 321, slice 4 */
        {p.k, p.dk, 5, -INFINITY, "k", 0},
        {p.v, p.dv, (size_t)2 * 500 * 128 - 1, INFINITY, "v", 1}, /* the last element */
        {p.q, p.dq, ((size_t)0 * 500 + 499) * 128 + 127, NAN, "q", 1},
        {p.q, p.dq, ((size_t)1 * 500 + 13) * 128 + 3, INFINITY, "q", 0},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        float keep = cases[c].host[cases[c].at];
        set_value(&p, cases[c].host, cases[c].dev, cases[c].at, cases[c].value);
        cfg.early_probe = cases[c].probe;
        expect_bad_input(&p, &cfg, cases[c].name);
        /* a NaN in q and in k: ref names q (scanned first), so does cuda */
        if (c == 0) {
            size_t qa = ((size_t)1 * 500 + 400) * 128 + 9;
            float kq = p.q[qa];
            set_value(&p, p.q, p.dq, qa, NAN);
            expect_bad_input(&p, &cfg, "q");
            set_value(&p, p.q, p.dq, qa, kq);
        }
        set_value(&p, cases[c].host, cases[c].dev, cases[c].at, keep);
    }
    cfg.early_probe = 1;
    check(&p, &cfg); /* clean again: runs and matches ref */
    drop(&p);
}

/* With a key mask, a NaN in a dropped key row never reaches phase A: the
 * scan runs first and the device guard reads its verdict. */
static void test_nan_in_a_masked_key_row_is_bad_input_and_leaves_o_untouched(void) {
    need_device();
    problem p = make(1, 2, 300, 300, 128, TK_DTYPE_BF16, 1.0, 0.7, 0, 111);
    tk_config cfg = cfg_of(3, 8);
    int j = 0;
    while (j < 300 && p.mask[j]) j++;
    TH_CHECKF(j < 300, "the mask keeps every key");
    size_t at = ((size_t)1 * 300 + j) * 128 + 40;
    float keep = p.v[at];
    set_value(&p, p.v, p.dv, at, NAN);
    expect_bad_input(&p, &cfg, "v");
    set_value(&p, p.v, p.dv, at, keep);
    check(&p, &cfg);
    drop(&p);
}

/* Half the queries have negative den (kappa_2 = -8), half positive: with
 * denom_fallback_frac_limit 0.3 the call falls back (at the probe, or at
 * the full stage without it) and o stays poisoned; with 0.7 it runs, the
 * negative den clamped, as ref decides. */
static void test_the_fraction_limit_is_applied_on_the_device_like_ref(void) {
    need_device();
    problem p = make(1, 2, 200, 200, 128, TK_DTYPE_BF16, 1.0, 1.0, 0, 112);
    size_t n = out_n(&p);
    for (size_t i = 0; i < n; i++) {
        size_t row = i / 128;
        p.q[i] = i % 16 == 0 ? (row % 2 ? 6.f : -6.f) : 0.f;
        p.k[i] = i % 16 == 0 ? -6.f : 0.f;
    }
    round_trip(p.q, p.dq, n, p.dt);
    round_trip(p.k, p.dk, n, p.dt);
    const double limits[2] = {0.3, 0.7};
    for (int probe = 1; probe >= 0; probe--)
        for (int l = 0; l < 2; l++) {
            tk_config cfg = cfg_of(2, 8);
            cfg.denom_fallback_frac_limit = limits[l];
            cfg.early_probe = probe;
            tk_result rc, rr;
            float *o = run_cuda(&p, &cfg, &rc);
            float *ref = run_ref(&p, &cfg, &rr);
            TH_EQ_STR(tk_reason_name(rc.reason), tk_reason_name(rr.reason));
            TH_EQ_INT(rc.stage, rr.stage);
            if (l == 0) {
                TH_EQ_STR(tk_reason_name(rc.reason), "denominator_too_small");
                TH_EQ_INT(rc.stage, probe ? TK_STAGE_PROBE : TK_STAGE_FULL);
                TH_CHECK(still_poisoned(&p));
            } else {
                TH_EQ_STR(tk_reason_name(rc.reason), "none");
                TH_EQ_INT(rc.stats.den.n_le_eps, (int64_t)100 * 2 * 8);
                double e = nmse(o, ref, n);
                TH_CHECKF(e <= 5e-4, "normalized MSE against ref %.3g > 5e-4", e);
            }
            free(o), free(ref);
        }
    drop(&p);
}

/* The one-pass call and the probe/run path (TKC_SMALL_OLD) give the same
 * output within rounding (den from the den pass in fp32 against the apply
 * kernel's f16 tensor-core den) and the same counters; the one-pass call is
 * bitwise repeatable with and without the probe. */
static void test_the_one_pass_call_agrees_with_the_probe_run_path(void) {
    need_device();
    problem p = make(2, 3, 450, 450, 128, TK_DTYPE_BF16, 1.0, 1.0, 1, 113);
    tk_config cfg = cfg_of(3, 8);
    tk_result rn, rn2, ro;
    float *on = run_cuda(&p, &cfg, &rn);
    cfg.early_probe = 0;
    float *on2 = run_cuda(&p, &cfg, &rn2);
    cfg.early_probe = 1;
    setenv("TKC_SMALL_OLD", "1", 1);
    float *oo = run_cuda(&p, &cfg, &ro);
    unsetenv("TKC_SMALL_OLD");
    TH_EQ_STR(tk_reason_name(rn.reason), "none");
    TH_EQ_STR(tk_reason_name(ro.reason), "none");
    TH_CHECK(memcmp(on, on2, out_n(&p) * 4) == 0);
    double e = nmse(on, oo, out_n(&p));
    TH_CHECKF(e < 1e-6, "one pass vs probe/run: normalized MSE %.3g", e);
    TH_EQ_INT(rn.stats.den.n, ro.stats.den.n);
    TH_EQ_INT(rn.stats.den.n_le_eps, ro.stats.den.n_le_eps);
    TH_NEAR(rn.stats.den.min, ro.stats.den.min, 2e-3 * fabs(ro.stats.den.min));
    TH_NEAR(rn.stats.den.max, ro.stats.den.max, 2e-3 * fabs(ro.stats.den.max));
    TH_NEAR(rn.stats.den.mean, ro.stats.den.mean, 1e-3 * fabs(ro.stats.den.mean));
    free(on), free(on2), free(oo);
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
    T(test_nan_or_inf_in_q_k_or_v_is_bad_input_like_ref_and_leaves_o_untouched),
    T(test_nan_in_a_masked_key_row_is_bad_input_and_leaves_o_untouched),
    T(test_the_fraction_limit_is_applied_on_the_device_like_ref),
    T(test_the_one_pass_call_agrees_with_the_probe_run_path),
#else
    T(x),
#endif
    {0},
};

int main(int argc, char **argv) { return th_main(tests, argc, argv); }

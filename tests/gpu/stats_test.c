/* GPU stats (SPEC 5): every figure the cuda backend reports against the ref
 * backend's (kernels/stats.c, fp64) on the same inputs, both through
 * tk_attention. Inputs are bf16 on the device and the same rounded values as
 * f32 on the host. Skipped without a device.
 *
 * Tolerances, and why:
 *  - figures that depend only on the inputs (norms, q.k, window mass) are
 *    computed in fp32 on the device and fp64 on the host from the same
 *    values: relative 1e-5 (fp32 sums of <= 128 products; softmax sums over
 *    a few hundred keys).
 *  - quality (raw, eff) compares each backend's OWN output with the exact
 *    rows, and the two outputs differ (bf16 tensor cores vs fp64). Per row,
 *    | ||o_c-e|| - ||o_r-e|| | <= ||o_c-o_r||, and ||e|| >= ||o_r||/(1+rel_max),
 *    so rel-L2 (mean, p95, max) may differ by shift = max over the sampled
 *    rows of ||o_c-o_r|| (1+rel_max)/||o_r||; cosines by 2 shift; the mean and
 *    max absolute errors by the mean and max |o_c-o_r| over the sampled rows.
 *    Each gets 1e-4 (1e-5 absolute) on top for the device's fp32 reference
 *    rows. The tests also check that raw and eff differ by far more than
 *    these tolerances, so a stream computed on the wrong logits cannot pass.
 *  - hybrid: the backends fit their PCA projections differently (kernels/
 *    pca.c vs hybrid.cu), so q0/k0 here lie in a 16-dimensional subspace with
 *    distinct variances: both fits find that subspace, and every far figure
 *    (q^.k^, ||q^||, the modification) is invariant under a rotation inside
 *    it. What is left is the fits' own precision: modified norms relative
 *    1e-3.
 */
#include "harness.h"
#include "kernels.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef TK_HAVE_CUDA
#include "cuda/tkcuda_util.h"
#include "gpu_test.h"
#include "internal.h"
#include "plan.h"

typedef struct {
    int B, H, N, D;
    float *q, *k, *v, *q0, *k0; /* host, rounded to bf16 (q0/k0 may be NULL) */
    uint8_t *mask;              /* host [B,N] or NULL */
    void *dq, *dk, *dv, *dq0, *dk0, *dout;
    uint8_t *dmask;
} problem;

/* n values into h, rounded to bf16 through the device copy d. rank > 0: rows
 * of D values in a rank-dimensional subspace (basis A, variances falling from
 * 1.5^2 to ~0.5^2). */
static void fill(float *h, void **d, size_t n, int D, int rank, const double *A) {
    char err[256] = "";
    if (rank <= 0) {
        for (size_t i = 0; i < n; i++) h[i] = (float)nrand();
    } else {
        for (size_t r = 0; r < n / D; r++) {
            double z[32];
            for (int c = 0; c < rank; c++) z[c] = nrand() * (1.5 - c / (double)rank);
            for (int i = 0; i < D; i++) {
                double x = 0;
                for (int c = 0; c < rank; c++) x += A[i * rank + c] * z[c];
                h[r * D + i] = (float)x;
            }
        }
    }
    if (tkcu_alloc(d, n * 2, err, sizeof err) || tkcu_upload(*d, h, n, TK_DTYPE_BF16, err, sizeof err) ||
        tkcu_download(h, *d, n, TK_DTYPE_BF16, err, sizeof err))
        th_fail(__FILE__, __LINE__, "upload: %s", err);
}

/* lowrank_qk: q and k themselves rank 16 (the far field then reads q/k);
 * with_q0: separate rank-16 q0/k0 beside full-rank q/k. */
static problem make_problem(int B, int H, int N, int D, double keep, int lowrank_qk, int with_q0, uint64_t seed) {
    problem p;
    memset(&p, 0, sizeof p);
    p.B = B, p.H = H, p.N = N, p.D = D;
    gt_seed(seed);
    size_t n = (size_t)B * H * N * D;
    double A[256 * 16];
    for (int i = 0; i < D * 16; i++) A[i] = nrand() / sqrt((double)D);
    char err[256] = "";
    p.q = xmalloc(n * 4), p.k = xmalloc(n * 4), p.v = xmalloc(n * 4);
    fill(p.q, &p.dq, n, D, lowrank_qk ? 16 : 0, A);
    fill(p.k, &p.dk, n, D, lowrank_qk ? 16 : 0, A);
    fill(p.v, &p.dv, n, D, 0, A);
    if (with_q0) {
        p.q0 = xmalloc(n * 4), p.k0 = xmalloc(n * 4);
        fill(p.q0, &p.dq0, n, D, 16, A);
        fill(p.k0, &p.dk0, n, D, 16, A);
    }
    if (tkcu_alloc(&p.dout, n * 2, err, sizeof err)) th_fail(__FILE__, __LINE__, "device allocation: %s", err);
    if (keep < 1.0) {
        p.mask = xmalloc((size_t)B * N);
        for (int i = 0; i < B * N; i++) p.mask[i] = urand() < keep;
        p.mask[0] = 1;
        void *dm = NULL;
        if (tkcu_alloc(&dm, (size_t)B * N, err, sizeof err) ||
            tkcu_upload_bytes(dm, p.mask, (size_t)B * N, err, sizeof err))
            th_fail(__FILE__, __LINE__, "mask: %s", err);
        p.dmask = dm;
    }
    return p;
}

static void free_problem(problem *p) {
    free(p->q), free(p->k), free(p->v), free(p->q0), free(p->k0), free(p->mask);
    tkcu_free(p->dq), tkcu_free(p->dk), tkcu_free(p->dv), tkcu_free(p->dq0), tkcu_free(p->dk0);
    tkcu_free(p->dout), tkcu_free(p->dmask);
}

static void check_dist(const char *what, const tk_dist *c, const tk_dist *r, double rel, double abs_tol) {
    TH_CHECKF(c->n == r->n, "%s: n %lld on cuda, %lld on ref", what, (long long)c->n, (long long)r->n);
    const double cv[6] = {c->min, c->mean, c->p50, c->p90, c->p99, c->max};
    const double rv[6] = {r->min, r->mean, r->p50, r->p90, r->p99, r->max};
    static const char *names[6] = {"min", "mean", "p50", "p90", "p99", "max"};
    for (int i = 0; i < 6; i++) {
        double tol = rel * fabs(rv[i]) + abs_tol;
        TH_CHECKF(fabs(cv[i] - rv[i]) <= tol, "%s %s: cuda %.9g, ref %.9g (tolerance %.3g)", what, names[i], cv[i],
                  rv[i], tol);
    }
}

/* How far the two outputs are apart on the sampled rows (see the top comment). */
typedef struct {
    double rel_shift, abs_mean, abs_max;
} out_gap;

static out_gap gap_of(const problem *p, const float *oc, const float *orf, const tk_stats_request *sr) {
    out_gap g = {0, 0, 0};
    int64_t idx[64];
    int64_t ns = tki_sample_indices(sr->seed, TKI_SALT_QUALITY, p->N, sr->quality_samples, idx);
    double sum = 0;
    int64_t cnt = 0;
    for (int bh = 0; bh < p->B * p->H; bh++)
        for (int64_t t = 0; t < ns; t++) {
            size_t base = ((size_t)bh * p->N + (size_t)idx[t]) * p->D;
            double dd = 0, nn = 0;
            for (int c = 0; c < p->D; c++) {
                double d = (double)oc[base + c] - orf[base + c];
                dd += d * d, nn += (double)orf[base + c] * orf[base + c];
                sum += fabs(d), cnt++;
                if (fabs(d) > g.abs_max) g.abs_max = fabs(d);
            }
            double s = sqrt(dd) / sqrt(nn);
            if (s > g.rel_shift) g.rel_shift = s;
        }
    g.abs_mean = cnt ? sum / cnt : 0;
    return g;
}

static void check_quality(const char *what, const tk_quality *c, const tk_quality *r, const out_gap *g) {
    TH_CHECKF(c->n == r->n, "%s: n %lld on cuda, %lld on ref", what, (long long)c->n, (long long)r->n);
    double shift = g->rel_shift * (1 + r->rel_l2_max) + 1e-4;
    const double cv[7] = {c->rel_l2_mean, c->rel_l2_p95, c->rel_l2_max, c->cos_min, c->cos_mean, c->abs_err_mean,
                          c->abs_err_max};
    const double rv[7] = {r->rel_l2_mean, r->rel_l2_p95, r->rel_l2_max, r->cos_min, r->cos_mean, r->abs_err_mean,
                          r->abs_err_max};
    const double tol[7] = {shift, shift, shift, 2 * shift, 2 * shift, g->abs_mean + 1e-5, g->abs_max + 1e-5};
    static const char *names[7] = {"rel_l2_mean", "rel_l2_p95", "rel_l2_max", "cos_min", "cos_mean",
                                   "abs_err_mean", "abs_err_max"};
    for (int i = 0; i < 7; i++)
        TH_CHECKF(fabs(cv[i] - rv[i]) <= tol[i], "%s %s: cuda %.9g, ref %.9g (tolerance %.3g)", what, names[i],
                  cv[i], rv[i], tol[i]);
}

typedef struct {
    tk_result cu, ref;
    out_gap gap;
} pair;

/* The call (sampling step `step`) on both backends' contexts with the same
 * stats request; both must run. */
static pair run_on(tk_context *cu, tk_context *ref, problem *p, tk_mode mode, const tk_config *cfg,
                   const tk_stats_request *sr, int T, int gh, int gw, int step) {
    char err[256] = "";
    tk_call c;
    memset(&c, 0, sizeof c);
    c.B = p->B, c.H = p->H, c.Nq = c.Nk = p->N, c.D = c.Dv = p->D;
    c.dtype = TK_DTYPE_BF16;
    c.q = p->dq, c.k = p->dk, c.v = p->dv, c.q0 = p->dq0, c.k0 = p->dk0, c.o = p->dout, c.key_mask = p->dmask;
    c.text_tokens = T, c.grid_h = gh, c.grid_w = gw;
    c.layer = 3;
    c.step = step;
    pair r;
    memset(&r, 0, sizeof r);
    size_t n = (size_t)p->B * p->H * p->N * p->D;
    if (tkcu_poison(p->dout, n * 2, 0xff, err, sizeof err)) th_fail(__FILE__, __LINE__, "%s", err);
    TH_EQ_INT(tk_attention(cu, &c, cfg, mode, sr, &r.cu), TK_OK);
    TH_CHECKF(r.cu.reason == TK_REASON_NONE, "cuda: %s: %s", tk_reason_name(r.cu.reason), r.cu.detail);
    float *oc = xmalloc(n * 4), *orf = xmalloc(n * 4);
    if (tkcu_download(oc, p->dout, n, TK_DTYPE_BF16, err, sizeof err)) th_fail(__FILE__, __LINE__, "%s", err);
    tk_call h = c;
    h.dtype = TK_DTYPE_F32, h.q = p->q, h.k = p->k, h.v = p->v, h.q0 = p->q0, h.k0 = p->k0, h.o = orf;
    h.key_mask = p->mask;
    TH_EQ_INT(tk_attention(ref, &h, cfg, mode, sr, &r.ref), TK_OK);
    TH_CHECKF(r.ref.reason == TK_REASON_NONE, "ref: %s: %s", tk_reason_name(r.ref.reason), r.ref.detail);
    r.gap = gap_of(p, oc, orf, sr);
    free(oc), free(orf);
    return r;
}

/* run_on with fresh contexts (the hybrid's PCA fitted on this call). */
static pair run_both(problem *p, tk_mode mode, const tk_config *cfg, const tk_stats_request *sr, int T, int gh,
                     int gw) {
    char err[256] = "";
    tk_context *cu = NULL, *ref = NULL;
    if (tk_context_open(TK_BACKEND_CUDA, &cu, err, sizeof err)) th_fail(__FILE__, __LINE__, "cuda: %s", err);
    if (tk_context_open(TK_BACKEND_REF, &ref, err, sizeof err)) th_fail(__FILE__, __LINE__, "ref: %s", err);
    pair r = run_on(cu, ref, p, mode, cfg, sr, T, gh, gw, 0);
    tk_context_close(cu), tk_context_close(ref);
    return r;
}

/* Everything but the time and den against ref; the same TK_HAVE_* bits. */
static void check_all(const pair *r, double mod_rel) {
    const tk_stats *c = &r->cu.stats, *f = &r->ref.stats;
    TH_CHECKF(c->have == f->have, "have bits: cuda 0x%x, ref 0x%x", c->have, f->have);
    if (f->have & TK_HAVE_QUALITY) {
        check_quality("quality_raw", &c->quality_raw, &f->quality_raw, &r->gap);
        check_quality("quality_eff", &c->quality_eff, &f->quality_eff, &r->gap);
    }
    if (f->have & TK_HAVE_WINDOW_MASS) check_dist("window_mass", &c->window_mass, &f->window_mass, 1e-5, 1e-6);
    check_dist("q_norm_raw", &c->q_norm_raw, &f->q_norm_raw, 1e-5, 1e-6);
    check_dist("k_norm_raw", &c->k_norm_raw, &f->k_norm_raw, 1e-5, 1e-6);
    check_dist("q_norm_mod", &c->q_norm_mod, &f->q_norm_mod, mod_rel, 1e-6);
    check_dist("k_norm_mod", &c->k_norm_mod, &f->k_norm_mod, mod_rel, 1e-6);
    if (f->have & TK_HAVE_QK) check_dist("qk", &c->qk, &f->qk, 1e-5, 1e-5);
}

/* Raw and eff must tell different stories, by far more than the tolerance. */
static void check_eff_differs(const pair *r) {
    double d = fabs(r->ref.stats.quality_eff.rel_l2_mean - r->ref.stats.quality_raw.rel_l2_mean);
    double tol = r->gap.rel_shift * (1 + r->ref.stats.quality_raw.rel_l2_max) + 1e-4;
    TH_CHECKF(d > 5 * tol, "raw and eff rel-L2 means differ by %.3g only (tolerance %.3g)", d, tol);
}

static void test_exact_stats_match_the_ref_backend_with_a_key_mask(void) {
    need_device();
    problem p = make_problem(2, 2, 200, 128, 0.8, 0, 0, 51);
    tk_config cfg;
    tk_config_defaults(&cfg);
    tk_stats_request sr = {16, 64, 9};
    pair r = run_both(&p, TK_MODE_EXACT, &cfg, &sr, 0, 0, 0);
    check_all(&r, 1e-5);
    TH_CHECK(r.cu.stats.have & TK_HAVE_QK);
    TH_CHECK(r.cu.stats.k_norm_raw.n < 2 * 2 * 200); /* masked keys left out */
    free_problem(&p);
}

static void test_taylor_stats_with_modified_slices_match_the_ref_backend(void) {
    need_device();
    problem p = make_problem(1, 2, 256, 64, 0.85, 0, 0, 52);
    tk_config cfg;
    tk_config_defaults(&cfg); /* P = 4, 4 sub-head blocks: d = 16 */
    cfg.qk_norm_power = 0.5;
    tk_stats_request sr = {16, 64, 11};
    pair r = run_both(&p, TK_MODE_TAYLOR, &cfg, &sr, 0, 0, 0);
    check_all(&r, 1e-5);
    check_eff_differs(&r);
    TH_EQ_INT(r.cu.stats.den.n, r.ref.stats.den.n);
    TH_CHECKF(fabs(r.ref.stats.q_norm_mod.mean - r.ref.stats.q_norm_raw.mean) > 0.1,
              "modified and raw norms should differ (%.4g vs %.4g)", r.ref.stats.q_norm_mod.mean,
              r.ref.stats.q_norm_raw.mean);
    free_problem(&p);
}

/* grid: the image side (grid x grid tokens after T = 8 text tokens); samples: quality rows. */
static void check_hybrid(int combine, double w, int with_q0, uint64_t seed, int grid, int samples) {
    need_device();
    int T = 8, gh = grid, gw = grid, N = T + gh * gw;
    problem p = make_problem(1, 2, N, 64, 1.0, !with_q0, with_q0, seed);
    tk_config cfg;
    tk_config_defaults(&cfg); /* 2d window, far dim 16, P = 3 */
    cfg.local_window = 2;
    cfg.combine = combine;
    cfg.global_weight = w;
    cfg.qk_norm_power = 0.25;
    tk_stats_request sr = {samples, 64, 13};
    pair r = run_both(&p, TK_MODE_HYBRID, &cfg, &sr, T, gh, gw);
    check_all(&r, 1e-3);
    TH_CHECK(r.cu.stats.have & TK_HAVE_WINDOW_MASS);
    TH_CHECK(r.cu.stats.window_mass.mean > 0 && r.cu.stats.window_mass.mean < 1);
    if (w > 0) {
        check_eff_differs(&r);
        TH_CHECK(r.cu.stats.q_norm_mod.n == 1 * 2 * N);
    }
    free_problem(&p);
}

static void test_hybrid_normalized_stats_with_q0_k0_match_the_ref_backend(void) {
    check_hybrid(TK_COMBINE_NORMALIZED, 1.0, 1, 61, 12, 16);
}
static void test_hybrid_normalized_stats_on_q_k_alone_match_the_ref_backend(void) {
    check_hybrid(TK_COMBINE_NORMALIZED, 1.0, 0, 62, 12, 16);
}
static void test_hybrid_additive_stats_match_the_ref_backend(void) {
    check_hybrid(TK_COMBINE_ADDITIVE, 0.5, 1, 63, 12, 16);
}
static void test_hybrid_window_alone_reports_no_modified_norms_like_ref(void) {
    check_hybrid(TK_COMBINE_NORMALIZED, 0.0, 1, 64, 12, 16);
}

/* One key split per head (TKC_ROWS_SPLIT=1; the test runs in its own child):
 * each split streams ten 64-key tiles, so both softmax streams and the window
 * mass carry across tiles; 40 quality rows make three groups of sampled rows,
 * the last of 8. */
static void test_hybrid_stats_over_many_tiles_and_row_groups_match_the_ref_backend(void) {
    setenv("TKC_ROWS_SPLIT", "1", 1);
    check_hybrid(TK_COMBINE_NORMALIZED, 1.0, 1, 65, 24, 40);
    check_hybrid(TK_COMBINE_ADDITIVE, 0.5, 1, 66, 24, 40);
}

/* Consecutive hybrid calls with stats on one context (steps 0..4, PCA refit
 * every 2 steps): the calls at steps 0, 2 and 4 fit the projection and run
 * the stats after the call; steps 1 and 3 find it cached and run the stats'
 * input passes on a side stream beside the call (backend.cu
 * hybrid_stats_beside), only the comparison with o after it. q and v are new
 * values and the stats seed new each call, o is poisoned before each: every
 * call's figures against ref's on the same context history. */
static void test_hybrid_stats_of_consecutive_calls_on_one_context_match_the_ref_backend(void) {
    need_device();
    const int T = 8, grid = 12, N = T + grid * grid, D = 64;
    problem p = make_problem(1, 2, N, D, 1.0, 0, 1, 67);
    tk_config cfg;
    tk_config_defaults(&cfg);
    cfg.local_window = 2;
    cfg.combine = TK_COMBINE_NORMALIZED;
    cfg.global_weight = 1.0;
    cfg.qk_norm_power = 0.25;
    cfg.pca_refit_every = 2;
    char err[256] = "";
    tk_context *cu = NULL, *ref = NULL;
    if (tk_context_open(TK_BACKEND_CUDA, &cu, err, sizeof err)) th_fail(__FILE__, __LINE__, "cuda: %s", err);
    if (tk_context_open(TK_BACKEND_REF, &ref, err, sizeof err)) th_fail(__FILE__, __LINE__, "ref: %s", err);
    const size_t n = (size_t)2 * N * D;
    for (int step = 0; step <= 4; step++) {
        if (step > 0) { /* new q and v (full rank; q0/k0 keep the subspace the projection was fitted on) */
            tkcu_free(p.dq), tkcu_free(p.dv);
            p.dq = p.dv = NULL;
            fill(p.q, &p.dq, n, D, 0, NULL);
            fill(p.v, &p.dv, n, D, 0, NULL);
        }
        tk_stats_request sr = {16, 64, (uint64_t)(80 + step)};
        pair r = run_on(cu, ref, &p, TK_MODE_HYBRID, &cfg, &sr, T, grid, grid, step);
        check_all(&r, 1e-3);
        check_eff_differs(&r);
        TH_CHECK(r.cu.stats.have & TK_HAVE_WINDOW_MASS);
        TH_CHECK(r.cu.stats.q_norm_mod.n == 1 * 2 * N);
        TH_CHECK(r.cu.stats.have & TK_HAVE_TIME);
    }
    /* a call on the cached layer (step 5: no refit due) that the cuda hybrid
     * refuses only inside (far P = 5: unsupported there, accepted by the
     * dispatcher), after the stats' input passes were queued: no stats, o
     * untouched */
    tk_call c;
    memset(&c, 0, sizeof c);
    c.B = 1, c.H = 2, c.Nq = c.Nk = N, c.D = c.Dv = D;
    c.dtype = TK_DTYPE_BF16;
    c.q = p.dq, c.k = p.dk, c.v = p.dv, c.q0 = p.dq0, c.k0 = p.dk0, c.o = p.dout;
    c.text_tokens = T, c.grid_h = grid, c.grid_w = grid;
    c.layer = 3, c.step = 5;
    cfg.global_P = 5;
    cfg.max_feature_dim_R = 100000;
    if (tkcu_poison(p.dout, n * 2, 0xff, err, sizeof err)) th_fail(__FILE__, __LINE__, "%s", err);
    tk_stats_request sr = {16, 64, 90};
    tk_result res;
    TH_EQ_INT(tk_attention(cu, &c, &cfg, TK_MODE_HYBRID, &sr, &res), TK_OK);
    TH_CHECKF(res.reason == TK_REASON_UNSUPPORTED_SHAPE, "reason %s: %s", tk_reason_name(res.reason), res.detail);
    TH_EQ_INT(res.stats.have, 0);
    unsigned char *ob = xmalloc(n * 2);
    if (tkcu_download_bytes(ob, p.dout, n * 2, err, sizeof err)) th_fail(__FILE__, __LINE__, "%s", err);
    size_t touched = 0;
    for (size_t i = 0; i < n * 2; i++) touched += ob[i] != 0xff;
    TH_CHECKF(touched == 0, "%zu bytes of o written by a call that fell back", touched);
    free(ob);
    tk_context_close(cu), tk_context_close(ref);
    free_problem(&p);
}

/* Every figure of two cuda runs of the same call (cuda vs cuda: no fit or
 * output gap between them): quality within rel_q relative (1e-5 absolute on
 * top), the distributions within rel_d relative. */
static void check_same_stats(const tk_stats *a, const tk_stats *b, double rel_q, double rel_d) {
    TH_CHECKF(a->have == b->have, "have bits 0x%x and 0x%x", a->have, b->have);
    const tk_quality *qa[2] = {&a->quality_raw, &a->quality_eff}, *qb[2] = {&b->quality_raw, &b->quality_eff};
    for (int k = 0; k < 2; k++) {
        TH_CHECK(qa[k]->n == qb[k]->n);
        const double av[7] = {qa[k]->rel_l2_mean, qa[k]->rel_l2_p95, qa[k]->rel_l2_max, qa[k]->cos_min,
                              qa[k]->cos_mean, qa[k]->abs_err_mean, qa[k]->abs_err_max};
        const double bv[7] = {qb[k]->rel_l2_mean, qb[k]->rel_l2_p95, qb[k]->rel_l2_max, qb[k]->cos_min,
                              qb[k]->cos_mean, qb[k]->abs_err_mean, qb[k]->abs_err_max};
        for (int i = 0; i < 7; i++)
            TH_CHECKF(fabs(av[i] - bv[i]) <= rel_q * fabs(bv[i]) + 1e-5, "quality %s field %d: %.9g vs %.9g",
                      k ? "eff" : "raw", i, av[i], bv[i]);
    }
    check_dist("window_mass", &a->window_mass, &b->window_mass, rel_d, 1e-7);
    check_dist("q_norm_raw", &a->q_norm_raw, &b->q_norm_raw, rel_d, 1e-7);
    check_dist("k_norm_raw", &a->k_norm_raw, &b->k_norm_raw, rel_d, 1e-7);
    check_dist("q_norm_mod", &a->q_norm_mod, &b->q_norm_mod, rel_d, 1e-7);
    check_dist("k_norm_mod", &a->k_norm_mod, &b->k_norm_mod, rel_d, 1e-7);
    check_dist("qk", &a->qk, &b->qk, rel_d, 1e-7);
}

/* By default a hybrid call on a cached projection takes the stats' row
 * norms and far logits from its own projection kernels (the stats taps,
 * backend.cu hybrid_stats_beside); with TKC_STATS_TAPS=0 the stats' own norms
 * pass runs. The same call both ways on one context: the taps ran (and
 * only where they apply), the output is the same bytes, and every figure equals
 * the separate pass's -- norms and window mass to fp32 rounding (2e-6), the
 * quality figures to 1e-4 relative (the far logits differ by fp32 rounding
 * of the same three-part products, moving the eff reference rows by ~1e-6).
 * Cases: q/k as the far rows, D 64, g 16; q0/k0 beside q/k, a key mask,
 * D 128, g 32. */
static void test_hybrid_stats_from_the_projections_equal_the_separate_norms_pass(void) {
    need_device();
    for (int c = 0; c < 2; c++) {
        const int T = 8, grid = 12, N = T + grid * grid, D = c ? 128 : 64;
        problem p = make_problem(1, 2, N, D, c ? 0.9 : 1.0, !c, c, 91 + c);
        tk_config cfg;
        tk_config_defaults(&cfg);
        cfg.local_window = 2;
        cfg.combine = TK_COMBINE_NORMALIZED;
        cfg.global_weight = 1.0;
        cfg.global_dim = c ? 32 : 16;
        cfg.qk_norm_power = 0.25;
        cfg.pca_refit_every = 0; /* fitted at step 0, cached after */
        char err[256] = "";
        tk_context *cu = NULL;
        if (tk_context_open(TK_BACKEND_CUDA, &cu, err, sizeof err)) th_fail(__FILE__, __LINE__, "cuda: %s", err);
        tk_call call;
        memset(&call, 0, sizeof call);
        call.B = 1, call.H = 2, call.Nq = call.Nk = N, call.D = call.Dv = D;
        call.dtype = TK_DTYPE_BF16;
        call.q = p.dq, call.k = p.dk, call.v = p.dv, call.q0 = p.dq0, call.k0 = p.dk0, call.o = p.dout;
        call.key_mask = p.dmask;
        call.text_tokens = T, call.grid_h = grid, call.grid_w = grid;
        call.layer = 3;
        const size_t n = (size_t)2 * N * D;
        unsigned char *o[2] = {xmalloc(n * 2), xmalloc(n * 2)};
        tk_result res[3];
        for (int run = 0; run < 3; run++) { /* step 0 (fit, stats after), step 1 taps, step 1 separate */
            if (run == 2) setenv("TKC_STATS_TAPS", "0", 1);
            else unsetenv("TKC_STATS_TAPS");
            call.step = run ? 1 : 0;
            tk_stats_request sr = {16, 64, 77};
            if (tkcu_poison(p.dout, n * 2, 0xff, err, sizeof err)) th_fail(__FILE__, __LINE__, "%s", err);
            TH_EQ_INT(tk_attention(cu, &call, &cfg, TK_MODE_HYBRID, &sr, &res[run]), TK_OK);
            TH_CHECKF(res[run].reason == TK_REASON_NONE, "%s: %s", tk_reason_name(res[run].reason), res[run].detail);
            TH_EQ_INT(tkcu_hybrid_stats_tapped(cu), run == 1);
            if (run && tkcu_download_bytes(o[run - 1], p.dout, n * 2, err, sizeof err))
                th_fail(__FILE__, __LINE__, "%s", err);
        }
        unsetenv("TKC_STATS_TAPS"); /* the default for the tests after this one */
        TH_CHECK(memcmp(o[0], o[1], n * 2) == 0);
        TH_CHECK(res[1].stats.have & TK_HAVE_WINDOW_MASS);
        TH_CHECK(res[1].stats.q_norm_mod.n == 2 * N);
        if (c) TH_CHECK(res[1].stats.k_norm_raw.n < 2 * N); /* the masked keys left out, as the separate pass */
        check_same_stats(&res[1].stats, &res[2].stats, 1e-4, 2e-6);
        free(o[0]), free(o[1]);
        tk_context_close(cu);
        free_problem(&p);
    }
}

/* Many rows per distribution and ties: every q row of one head scaled to the
 * same few norms, so whole histogram bins are equal values. */
static void test_order_statistics_of_tied_norms_match_the_ref_backend(void) {
    need_device();
    problem p = make_problem(1, 4, 1024, 64, 1.0, 0, 0, 71);
    char err[256] = "";
    size_t n = (size_t)4 * 1024 * 64;
    for (size_t r = 0; r < n / 64; r++) {
        double ss = 0;
        for (int i = 0; i < 64; i++) ss += (double)p.q[r * 64 + i] * p.q[r * 64 + i];
        double want = 1.0 + (double)(r % 3), f = want / sqrt(ss);
        for (int i = 0; i < 64; i++) p.q[r * 64 + i] = (float)(p.q[r * 64 + i] * f);
    }
    if (tkcu_upload(p.dq, p.q, n, TK_DTYPE_BF16, err, sizeof err) ||
        tkcu_download(p.q, p.dq, n, TK_DTYPE_BF16, err, sizeof err))
        th_fail(__FILE__, __LINE__, "%s", err);
    tk_config cfg;
    tk_config_defaults(&cfg);
    tk_stats_request sr = {16, 64, 17};
    pair r = run_both(&p, TK_MODE_EXACT, &cfg, &sr, 0, 0, 0);
    check_all(&r, 1e-5);
    free_problem(&p);
}

/* Distributions of several thousand values over a few blocks of the select,
 * with a length that is not a multiple of 4 (3 x 2051 rows: the last three go
 * outside the 16-byte loads) and masked keys. */
static void test_order_statistics_over_blocks_and_a_ragged_tail_match_the_ref_backend(void) {
    need_device();
    problem p = make_problem(1, 3, 2051, 64, 0.9, 0, 0, 72);
    tk_config cfg;
    tk_config_defaults(&cfg);
    tk_stats_request sr = {16, 64, 19};
    pair r = run_both(&p, TK_MODE_EXACT, &cfg, &sr, 0, 0, 0);
    check_all(&r, 1e-5);
    TH_CHECK(r.cu.stats.q_norm_raw.n == 3 * 2051);
    TH_CHECK(r.cu.stats.k_norm_raw.n < 3 * 2051);
    free_problem(&p);
}
/* SPEC 1: a FALLBACK writes nothing, so stats that fail after the output is
 * in o (exact, Taylor's small path, the hybrid in both orders: a fitting call
 * runs its stats after it, a call on a cached layer beside it) must leave the
 * call standing: reason none, the same output bytes as without stats, no
 * stats but the kernel time (have = TK_HAVE_TIME, as the ref backend when its
 * stats fail) and the error in detail. TKC_STATS_FAIL=1 makes the stats
 * job report a CUDA error (backend.cu; the device stays sound). */
static unsigned char *call_bytes(tk_context *cu, problem *p, tk_mode mode, const tk_config *cfg,
                                 const tk_stats_request *sr, int step, int expect_fail) {
    char err[256] = "";
    tk_call c;
    memset(&c, 0, sizeof c);
    c.B = p->B, c.H = p->H, c.Nq = c.Nk = p->N, c.D = c.Dv = p->D;
    c.dtype = TK_DTYPE_BF16;
    c.q = p->dq, c.k = p->dk, c.v = p->dv, c.o = p->dout;
    c.text_tokens = 8, c.grid_h = 12, c.grid_w = 12;
    c.layer = 3, c.step = step;
    size_t nb = (size_t)p->B * p->H * p->N * p->D * 2;
    if (tkcu_poison(p->dout, nb, 0xff, err, sizeof err)) th_fail(__FILE__, __LINE__, "%s", err);
    if (expect_fail) setenv("TKC_STATS_FAIL", "1", 1);
    tk_result res;
    TH_EQ_INT(tk_attention(cu, &c, cfg, mode, sr, &res), TK_OK);
    unsetenv("TKC_STATS_FAIL");
    TH_CHECKF(res.reason == TK_REASON_NONE, "mode %d: %s: %s", (int)mode, tk_reason_name(res.reason), res.detail);
    TH_CHECK(res.path != TK_PATH_FALLBACK);
    if (expect_fail) {
        TH_EQ_INT(res.stats.have, TK_HAVE_TIME);
        TH_CHECKF(strstr(res.detail, "no stats") && strstr(res.detail, "TKC_STATS_FAIL"), "detail \"%s\"",
                  res.detail);
    } else {
        TH_CHECK(sr == NULL || res.stats.have != 0);
    }
    unsigned char *ob = xmalloc(nb);
    if (tkcu_download_bytes(ob, p->dout, nb, err, sizeof err)) th_fail(__FILE__, __LINE__, "%s", err);
    return ob;
}

static void test_stats_that_fail_after_the_output_is_written_leave_the_call_standing_without_stats(void) {
    need_device();
    const int N = 8 + 12 * 12, D = 64;
    problem p = make_problem(1, 2, N, D, 1.0, 1, 0, 71);
    const size_t nb = (size_t)2 * N * D * 2;
    tk_stats_request sr = {16, 64, 5};
    char err[256] = "";
    tk_config cfg;
    tk_config_defaults(&cfg);
    cfg.local_window = 2;
    cfg.sub_head_blocks = 4, cfg.terms = 3; /* Taylor: slices of 16, P 3 (taylor_small.cu) */
    const tk_mode modes[2] = {TK_MODE_EXACT, TK_MODE_TAYLOR};
    for (int m = 0; m < 2; m++) {
        tk_context *cu = NULL;
        if (tk_context_open(TK_BACKEND_CUDA, &cu, err, sizeof err)) th_fail(__FILE__, __LINE__, "cuda: %s", err);
        unsigned char *o0 = call_bytes(cu, &p, modes[m], &cfg, NULL, 0, 0);
        unsigned char *o1 = call_bytes(cu, &p, modes[m], &cfg, &sr, 0, 1);
        TH_CHECKF(memcmp(o0, o1, nb) == 0, "mode %d: the output moved", (int)modes[m]);
        unsigned char *o2 = call_bytes(cu, &p, modes[m], &cfg, &sr, 0, 0); /* and the next call has stats */
        TH_CHECK(memcmp(o0, o2, nb) == 0);
        free(o0), free(o1), free(o2);
        tk_context_close(cu);
    }
    /* hybrid: a context that fits the layer without stats, one that fits it
     * with failing stats (after the call), then a cached call (beside it) */
    tk_context *c0 = NULL, *c1 = NULL;
    if (tk_context_open(TK_BACKEND_CUDA, &c0, err, sizeof err) || tk_context_open(TK_BACKEND_CUDA, &c1, err, sizeof err))
        th_fail(__FILE__, __LINE__, "cuda: %s", err);
    unsigned char *o0 = call_bytes(c0, &p, TK_MODE_HYBRID, &cfg, NULL, 0, 0);
    unsigned char *o1 = call_bytes(c1, &p, TK_MODE_HYBRID, &cfg, &sr, 0, 1);
    unsigned char *o2 = call_bytes(c1, &p, TK_MODE_HYBRID, &cfg, &sr, 1, 1);
    unsigned char *o3 = call_bytes(c1, &p, TK_MODE_HYBRID, &cfg, &sr, 2, 0);
    TH_CHECKF(memcmp(o0, o1, nb) == 0, "hybrid (stats after the call): the output moved");
    TH_CHECKF(memcmp(o0, o2, nb) == 0, "hybrid (stats beside the call): the output moved");
    TH_CHECK(memcmp(o0, o3, nb) == 0);
    free(o0), free(o1), free(o2), free(o3);
    tk_context_close(c0), tk_context_close(c1);
    free_problem(&p);
}
#endif

#define T(fn) TH_TEST(fn)
#ifndef TK_HAVE_CUDA
static void x(void) { th_skip("built without CUDA"); }
#endif

static const th_test tests[] = {
#ifdef TK_HAVE_CUDA
    T(test_exact_stats_match_the_ref_backend_with_a_key_mask),
    T(test_taylor_stats_with_modified_slices_match_the_ref_backend),
    T(test_hybrid_normalized_stats_with_q0_k0_match_the_ref_backend),
    T(test_hybrid_normalized_stats_on_q_k_alone_match_the_ref_backend),
    T(test_hybrid_additive_stats_match_the_ref_backend),
    T(test_hybrid_window_alone_reports_no_modified_norms_like_ref),
    T(test_hybrid_stats_over_many_tiles_and_row_groups_match_the_ref_backend),
    T(test_hybrid_stats_of_consecutive_calls_on_one_context_match_the_ref_backend),
    T(test_hybrid_stats_from_the_projections_equal_the_separate_norms_pass),
    T(test_order_statistics_of_tied_norms_match_the_ref_backend),
    T(test_order_statistics_over_blocks_and_a_ragged_tail_match_the_ref_backend),
    T(test_stats_that_fail_after_the_output_is_written_leave_the_call_standing_without_stats),
#else
    T(x),
#endif
    {0},
};

int main(int argc, char **argv) { return th_main(tests, argc, argv); }

/*
 * cpu_attention.c -- `make bench`: the cpu backend against its baseline,
 * measured in the same run on this machine.
 *
 *   baseline   one large OpenBLAS sgemm (M = N = K = 2048, OpenBLAS's own
 *              threads on every core): its FLOP rate
 *   exact      B=1, H=8, N=4096, D=Dv=128: time, FLOP rate counting
 *              4 N^2 D per head (QKᵀ and PV), and that rate as a share of the
 *              sgemm rate (the goal: >= 50%)
 *   taylor     P=4, 4 sub-head blocks (d = 32, R = 6545), same shape: time
 *              and useful FLOP rate, counting per head and slice the two
 *              products 2 N R (dv+1) twice (keys into [S|z], queries out)
 *   hybrid     2d window r=8 on a 64x64 grid (no text), far field g=16, P=3
 *              (R = 153): time and useful FLOP rate, counting per head
 *              4 N K_win D for the local window (K_win = the window's key
 *              count, 289 away from the edges) plus the far field's
 *              2 N R (Dv+1) twice
 *   threads    exact again with the backend's pool at 1 thread, OpenBLAS's
 *              own threads (all cores) inside each sgemm instead: which way
 *              of using both cores wins
 *   crossover  over a range of N (square grids, H=2, H=1 past 4096): exact vs taylor vs
 *              hybrid time per head, and the crossover: the smallest N of the
 *              range from which on each is faster than exact at every N
 *
 * Timings are the best of a few runs (min wall time). Keep it under ~2
 * minutes on 2 cores: the crossover uses H=2, then H=1.
 */
#include "kernels.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void fill(float *x, size_t n, uint64_t seed, float scale) {
    uint64_t s = seed * 0x9e3779b97f4a7c15ull + 1;
    for (size_t i = 0; i < n; i++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        x[i] = scale * ((float)(s >> 40) / (float)(1 << 24) * 2.0f - 1.0f);
    }
}

static double sgemm_rate(int n, int reps) {
    float *a = malloc((size_t)n * n * sizeof *a), *b = malloc((size_t)n * n * sizeof *b),
          *c = malloc((size_t)n * n * sizeof *c);
    fill(a, (size_t)n * n, 1, 1), fill(b, (size_t)n * n, 2, 1);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1, a, n, b, n, 0, c, n);
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        double t0 = now_s();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1, a, n, b, n, 0, c, n);
        double t = now_s() - t0;
        if (t < best) best = t;
    }
    free(a), free(b), free(c);
    return 2.0 * n * (double)n * n / best;
}

typedef struct {
    tk_call c;
    float *q, *k, *v, *o;
} bcall;

static void make_call(bcall *b, int H, int N, int D, int grid_side) {
    memset(b, 0, sizeof *b);
    size_t n = (size_t)H * N * D;
    b->q = malloc(n * sizeof(float));
    b->k = malloc(n * sizeof(float));
    b->v = malloc(n * sizeof(float));
    b->o = malloc(n * sizeof(float));
    fill(b->q, n, 3, 1.5f), fill(b->k, n, 4, 1.5f), fill(b->v, n, 5, 1.0f);
    tk_call *c = &b->c;
    c->B = 1, c->H = H, c->Nq = N, c->Nk = N, c->D = D, c->Dv = D;
    c->dtype = TK_DTYPE_F32;
    c->q = b->q, c->k = b->k, c->v = b->v, c->o = b->o;
    c->grid_h = grid_side, c->grid_w = grid_side;
    c->layer = 0;
}

static void free_call(bcall *b) { free(b->q), free(b->k), free(b->v), free(b->o); }

static void config_for(tk_config *cfg, tk_mode mode) {
    tk_config_defaults(cfg);
    cfg->mode = mode;
    cfg->min_tokens = 0;
    cfg->terms = 4;
    cfg->sub_head_blocks = 4;
    cfg->fallback_on_negative = 0; /* time the full pass, never a fallback */
    cfg->window_shape = TK_WINDOW_2D;
    cfg->local_window = 8;
    cfg->global_dim = 16;
    cfg->global_P = 3;
}

/* Best wall time of reps calls (seconds), or -1 on a fallback. */
static double time_call(tk_context *ctx, bcall *b, tk_mode mode, int reps) {
    tk_config cfg;
    config_for(&cfg, mode);
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        tk_result res;
        double t0 = now_s();
        tk_attention(ctx, &b->c, &cfg, mode, NULL, &res);
        double t = now_s() - t0;
        if (res.reason != TK_REASON_NONE) {
            fprintf(stderr, "bench: %d fell back: %s (%s)\n", (int)mode, tk_reason_name(res.reason), res.detail);
            return -1;
        }
        if (t < best) best = t;
    }
    return best;
}

/* Mean key count of the 2d window (radius r) over a side x side grid. */
static double window_keys(int side, int r) {
    double total = 0;
    for (int y = 0; y < side; y++) {
        int h = (y + r < side ? y + r : side - 1) - (y - r > 0 ? y - r : 0) + 1;
        total += h;
    }
    double mean_h = total / side; /* same along x */
    return mean_h * mean_h;
}

static double flops_exact(int H, int N, int D) { return 4.0 * H * (double)N * N * D; }
static double flops_taylor(int H, int N, int D, int blocks, int P) {
    int64_t R = taylor_feature_count(D / blocks, P);
    return 2.0 * 2.0 * H * blocks * (double)N * (double)R * (D / blocks + 1);
}
static double flops_hybrid(int H, int N, int D, int side, int r, int g, int P) {
    int64_t R = taylor_feature_count(g, P);
    return 4.0 * H * N * window_keys(side, r) * D + 2.0 * 2.0 * H * (double)N * (double)R * (D + 1);
}

int main(void) {
    char err[256];
    tk_context *ctx;
    if (tk_context_open(TK_BACKEND_CPU, &ctx, err, sizeof err) != 0) {
        fprintf(stderr, "bench: %s\n", err);
        return 1;
    }
    const char *th = getenv("TK_CPU_THREADS");
    printf("cpu backend, %s threads (TK_CPU_THREADS), OpenBLAS %d threads for the baseline\n",
           th ? th : "all", openblas_get_num_threads());
    double t_start = now_s();
    double base = 0;
    const int H = 8, N = 4096, D = 128, side = 64;
    bcall b;
    make_call(&b, H, N, D, side);
    /* baseline and exact interleaved, best of each: both see the same load */
    double te = 1e30;
    for (int rep = 0; rep < 3; rep++) {
        double r = sgemm_rate(2048, 3);
        if (r > base) base = r;
        double t = time_call(ctx, &b, TK_MODE_EXACT, 1);
        if (t > 0 && t < te) te = t;
    }
    double tt = time_call(ctx, &b, TK_MODE_TAYLOR, 2);
    double thy = time_call(ctx, &b, TK_MODE_HYBRID, 3);
    printf("\n%-34s %10s %12s %10s\n", "what", "time ms", "GFLOP/s", "% sgemm");
    printf("%-34s %10s %12.1f %10s\n", "sgemm 2048^3 (baseline)", "-", base / 1e9, "100");
    double fe = flops_exact(H, N, D), ft = flops_taylor(H, N, D, 4, 4), fh = flops_hybrid(H, N, D, side, 8, 16, 3);
    printf("%-34s %10.1f %12.1f %10.1f\n", "exact  B=1 H=8 N=4096 D=128", te * 1e3, fe / te / 1e9, 100 * fe / te / base);
    if (tt > 0)
        printf("%-34s %10.1f %12.1f %10.1f\n", "taylor P=4 b=4 (R=6545)", tt * 1e3, ft / tt / 1e9, 100 * ft / tt / base);
    if (thy > 0)
        printf("%-34s %10.1f %12.1f %10.1f\n", "hybrid 2d r=8 g=16 P=3 (R=153)", thy * 1e3, fh / thy / 1e9,
               100 * fh / thy / base);
    printf("exact reaches %.0f%% of the sgemm rate (goal >= 50%%)\n", 100 * fe / te / base);

    /* the same exact call with OpenBLAS threading instead of the pool */
    setenv("TK_CPU_THREADS", "1", 1);
    tk_context *ctx1;
    if (tk_context_open(TK_BACKEND_CPU, &ctx1, err, sizeof err) == 0) {
        double t1 = time_call(ctx1, &b, TK_MODE_EXACT, 3);
        printf("%-34s %10.1f %12.1f %10.1f\n", "exact, pool 1 + OpenBLAS threads", t1 * 1e3, fe / t1 / 1e9,
               100 * fe / t1 / base);
        tk_context_close(ctx1);
    }
    unsetenv("TK_CPU_THREADS");
    free_call(&b);

    /* crossover: time per head over N (square grids, no text) */
    static const int sides[] = {16, 24, 32, 48, 64, 96, 128, 160};
    enum { NS = sizeof sides / sizeof sides[0] };
    double te_n[NS], tt_n[NS], th_n[NS];
    printf("\n%8s %12s %12s %12s   (ms per head; H=2, H=1 above N=4096)\n", "N", "exact", "taylor", "hybrid");
    for (int s = 0; s < NS; s++) {
        int n = sides[s] * sides[s], HC = n <= 4096 ? 2 : 1;
        make_call(&b, HC, n, D, sides[s]);
        int reps = n <= 4096 ? 3 : 1;
        te_n[s] = time_call(ctx, &b, TK_MODE_EXACT, reps) / HC;
        tt_n[s] = time_call(ctx, &b, TK_MODE_TAYLOR, reps) / HC;
        th_n[s] = time_call(ctx, &b, TK_MODE_HYBRID, reps) / HC;
        printf("%8d %12.2f %12.2f %12.2f\n", n, te_n[s] * 1e3, tt_n[s] * 1e3, th_n[s] * 1e3);
        free_call(&b);
    }
    const char *names[2] = {"taylor", "hybrid"};
    double *times[2] = {tt_n, th_n};
    for (int m = 0; m < 2; m++) {
        int from = -1;
        for (int s = NS - 1; s >= 0 && times[m][s] > 0 && times[m][s] < te_n[s]; s--) from = s;
        if (from >= 0)
            printf("%s beats exact from N = %d tokens on (measured N = %d..%d)\n", names[m],
                   sides[from] * sides[from], sides[0] * sides[0], sides[NS - 1] * sides[NS - 1]);
        else
            printf("%s does not beat exact at N = %d (the largest measured)\n", names[m],
                   sides[NS - 1] * sides[NS - 1]);
    }
    printf("total bench time %.1f s (machine may be shared with other work: timings are noisy)\n",
           now_s() - t_start);
    tk_context_close(ctx);
    return 0;
}

/* gpu_attention -- the issue-4 table: Flux shapes B=1, H=24, D=128, bf16,
 * N = 4,608 / 16,896 / 66,048; our exact, Taylor (P=4 b=4; P=3 b=8), hybrid,
 * against PyTorch SDPA (cuDNN, flash; bench/gpu_sdpa.py run from here, same
 * process tree, same card), a cuBLAS bf16 GEMM and a device-to-device copy.
 * Device events, median of many runs, fresh random inputs before each run.
 * TFLOP/s count useful work only: exact 4 N^2 D H, Taylor 4 N R (Dv + b) H.
 * Options: gpu_attention [N ...] (default the three Flux sizes). */
#include "kernels.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef TK_HAVE_CUDA
#include "cuda/tkcuda_util.h"

enum { H = 24, D = 128 };

typedef struct {
    tk_context *ctx; /* cuda, through the public API (dispatch + tk_check) */
    tk_call call;
    tk_config cfg;
    tk_mode mode;
    tk_stats_request sr;
    int use_stats;
    tk_result res;
    uint64_t seed;
    int failed;
} bench_arg;

static int prep(void *p) {
    bench_arg *a = p;
    size_t n = (size_t)H * a->call.Nq * D;
    char err[256];
    a->seed += 3;
    return tkcu_random((void *)a->call.q, n, TK_DTYPE_BF16, a->seed, 1.f, err, sizeof err) ||
           tkcu_random((void *)a->call.k, n, TK_DTYPE_BF16, a->seed + 1, 1.f, err, sizeof err) ||
           tkcu_random((void *)a->call.v, n, TK_DTYPE_BF16, a->seed + 2, 1.f, err, sizeof err);
}

static int run(void *p) {
    bench_arg *a = p;
    memset(&a->res, 0, sizeof a->res);
    if (tk_attention(a->ctx, &a->call, &a->cfg, a->mode, a->use_stats ? &a->sr : NULL, &a->res))
        return 1;
    if (a->res.reason != TK_REASON_NONE) {
        a->failed = 1;
        return 1;
    }
    return 0;
}

static double sdpa_ms[2][8]; /* [cudnn, flash][size index] */

static void run_sdpa(const int *ns, int count) {
    char cmd[256] = "python3 bench/gpu_sdpa.py";
    for (int i = 0; i < count; i++) snprintf(cmd + strlen(cmd), sizeof cmd - strlen(cmd), " %d", ns[i]);
    for (int i = 0; i < 8; i++) sdpa_ms[0][i] = sdpa_ms[1][i] = NAN;
    FILE *f = popen(cmd, "r");
    if (!f) {
        printf("# PyTorch baseline: could not start '%s'\n", cmd);
        return;
    }
    char line[512];
    while (fgets(line, sizeof line, f)) {
        char be[32];
        int n;
        double ms;
        if (sscanf(line, "sdpa %31s %d %lf", be, &n, &ms) == 3) {
            for (int i = 0; i < count; i++)
                if (ns[i] == n) sdpa_ms[strcmp(be, "cudnn") == 0 ? 0 : 1][i] = ms;
        }
        if (strchr(line, '#')) printf("# %s", line);
    }
    pclose(f);
}

static double time_mode(bench_arg *a, int reps) {
    a->failed = 0;
    double ms = tkcu_time_ms(run, prep, a, 2, reps);
    if (a->failed || ms < 0) {
        printf("# %s failed: %s: %s\n", a->mode == TK_MODE_EXACT ? "exact" : a->mode == TK_MODE_TAYLOR ? "taylor" : "hybrid",
               tk_reason_name(a->res.reason), a->res.detail);
        return NAN;
    }
    return ms;
}

static void row(const char *name, int n, double ms, double flops, double cudnn_ms) {
    printf("| %-26s | %6d | %9.3f | %8.1f | %6.2fx |\n", name, n, ms, flops / (ms * 1e9), cudnn_ms / ms);
}

static int profile_only(const char *only, const int *ns, int count) {
    char err[256] = "";
    for (int si = 0; si < count; si++) {
        int n = ns[si];
        size_t elems = (size_t)H * n * D;
        bench_arg a;
        memset(&a, 0, sizeof a);
        void *q = NULL, *k = NULL, *v = NULL, *o = NULL;
        if (tk_context_open(TK_BACKEND_CUDA, &a.ctx, err, sizeof err) || tkcu_alloc(&q, elems * 2, err, sizeof err) ||
            tkcu_alloc(&k, elems * 2, err, sizeof err) || tkcu_alloc(&v, elems * 2, err, sizeof err) ||
            tkcu_alloc(&o, elems * 2, err, sizeof err)) {
            printf("# setup: %s\n", err);
            return 1;
        }
        a.call.B = 1, a.call.H = H, a.call.Nq = a.call.Nk = n, a.call.D = a.call.Dv = D;
        a.call.dtype = TK_DTYPE_BF16;
        a.call.q = q, a.call.k = k, a.call.v = v, a.call.o = o;
        tk_config_defaults(&a.cfg);
        a.mode = strcmp(only, "exact") == 0 ? TK_MODE_EXACT : strcmp(only, "hybrid") == 0 ? TK_MODE_HYBRID : TK_MODE_TAYLOR;
        if (a.mode == TK_MODE_HYBRID) {
            int side = (int)lround(sqrt((double)(n - 512)));
            a.call.text_tokens = 512, a.call.grid_h = side, a.call.grid_w = side;
        }
        if (strcmp(only, "taylor3") == 0) a.cfg.terms = 3, a.cfg.sub_head_blocks = 8;
        if (getenv("TKB_STATS")) {
            a.use_stats = 1;
            a.sr.quality_samples = 16;
            a.sr.seed = 7;
        }
        const char *rv = getenv("TKB_REPS"); /* timed runs, median (default 1: for profilers) */
        int reps = rv && atoi(rv) > 1 ? atoi(rv) : 1;
        double ms = time_mode(&a, reps);
        printf("# %s N=%d: %.3f ms (%s; median of %d)\n", only, n, ms, tk_reason_name(a.res.reason), reps);
        tkcu_free(q), tkcu_free(k), tkcu_free(v), tkcu_free(o);
        tk_context_close(a.ctx);
    }
    return 0;
}

int main(int argc, char **argv) {
    char name[128], err[256] = "";
    if (tkcu_device_name(name, sizeof name)) {
        printf("gpu_attention: no CUDA device, skipped\n");
        return 0;
    }
    int ns[8] = {4608, 16896, 66048}, count = 3;
    if (argc > 1) {
        count = 0;
        for (int i = 1; i < argc && count < 8; i++) ns[count++] = atoi(argv[i]);
    }
    /* TKB_ONLY=exact|taylor4|taylor3|hybrid: that kernel alone, one run (for profilers; TKB_REPS=n: median of n) */
    const char *only = getenv("TKB_ONLY");
    if (only) return profile_only(only, ns, count);
    printf("# gpu_attention on %s: B=1 H=%d D=%d bf16, median device time, fresh random inputs\n", name, H, D);
    fflush(stdout);
    run_sdpa(ns, count);
    double gemm_ms = tkcu_gemm_bf16_ms(8192, 8192, 8192, 20, err, sizeof err);
    double gemm_tf = 2.0 * 8192.0 * 8192.0 * 8192.0 / (gemm_ms * 1e9);
    size_t cbytes = (size_t)1 << 30;
    double copy_ms = tkcu_copy_ms(cbytes, 20, err, sizeof err);
    double copy_gbs = 2.0 * (double)cbytes / (copy_ms * 1e6); /* read + write */
    printf("# ceilings: cuBLAS bf16 GEMM 8192^3 %.3f ms = %.1f TFLOP/s; D2D copy 1 GiB %.3f ms = %.0f GB/s (read+write)\n",
           gemm_ms, gemm_tf, copy_ms, copy_gbs);
    printf("\n| kernel                     |      N |   ms      |  TFLOP/s | vs cuDNN |\n");
    printf("|----------------------------|--------|-----------|----------|---------|\n");
    for (int si = 0; si < count; si++) {
        int n = ns[si];
        int reps = n < 30000 ? 20 : 7;
        size_t elems = (size_t)H * n * D;
        bench_arg a;
        memset(&a, 0, sizeof a);
        if (tk_context_open(TK_BACKEND_CUDA, &a.ctx, err, sizeof err)) {
            printf("# tk_context_open(cuda): %s\n", err);
            return 1;
        }
        void *q = NULL, *k = NULL, *v = NULL, *o = NULL;
        if (tkcu_alloc(&q, elems * 2, err, sizeof err) || tkcu_alloc(&k, elems * 2, err, sizeof err) ||
            tkcu_alloc(&v, elems * 2, err, sizeof err) || tkcu_alloc(&o, elems * 2, err, sizeof err)) {
            printf("# allocation: %s\n", err);
            return 1;
        }
        a.call.B = 1, a.call.H = H, a.call.Nq = a.call.Nk = n, a.call.D = a.call.Dv = D;
        a.call.dtype = TK_DTYPE_BF16;
        a.call.q = q, a.call.k = k, a.call.v = v, a.call.o = o;
        a.call.text_tokens = 512;
        a.seed = 1000 + n;
        tk_config_defaults(&a.cfg);
        double exact_flops = 4.0 * n * (double)n * D * H;
        double cud = sdpa_ms[0][si], fla = sdpa_ms[1][si];
        if (!isnan(cud)) row("PyTorch SDPA cuDNN", n, cud, exact_flops, cud);
        if (!isnan(fla)) row("PyTorch SDPA flash", n, fla, exact_flops, cud);
        a.mode = TK_MODE_EXACT;
        unsetenv("TKC_EXACT_WARPS");
        double ms = time_mode(&a, reps);
        row("ours exact (wgmma, default)", n, ms, exact_flops, cud);
        setenv("TKC_EXACT_WARPS", "9", 1);
        ms = time_mode(&a, reps);
        row("ours exact (wgmma overlap)", n, ms, exact_flops, cud);
        setenv("TKC_EXACT_WARPS", "8", 1);
        ms = time_mode(&a, reps);
        row("ours exact (mma.sync 8w)", n, ms, exact_flops, cud);
        unsetenv("TKC_EXACT_WARPS");

        a.mode = TK_MODE_TAYLOR;
        a.cfg.terms = 4, a.cfg.sub_head_blocks = 4;
        double R4 = 6545, R3 = 153;
        ms = time_mode(&a, reps);
        row("ours taylor P=4 b=4", n, ms, 4.0 * n * R4 * (D + 4) * H, cud);
        printf("|   (P=4 b=4: %.1f%% of the GEMM rate) | | | | |\n",
               100.0 * (4.0 * n * R4 * (D + 4) * H / (ms * 1e9)) / gemm_tf);
        if (n == 16896) {
            a.use_stats = 1;
            a.sr.quality_samples = 16;
            a.sr.seed = 7;
            double ms_st = time_mode(&a, reps);
            row("ours taylor P=4 b=4 +stats", n, ms_st, 4.0 * n * R4 * (D + 4) * H, cud);
            printf("|   (stats on, 16 queries: +%.1f%%) | | | | |\n", 100.0 * (ms_st / ms - 1));
            a.use_stats = 0;
        }
        a.cfg.terms = 3, a.cfg.sub_head_blocks = 8;
        ms = time_mode(&a, reps);
        row("ours taylor P=3 b=8", n, ms, 4.0 * n * R3 * (D + 8) * H, cud);
        double floor_ms = 4.0 * (double)elems * 2 / (copy_gbs * 1e6);
        printf("|   (P=3 b=8: memory floor %.3f ms, time = %.2fx floor) | | | | |\n", floor_ms, ms / floor_ms);
        a.cfg.early_probe = 0;
        ms = time_mode(&a, reps);
        row("ours taylor P=3 b=8 noprobe", n, ms, 4.0 * n * R3 * (D + 8) * H, cud);
        a.cfg.early_probe = 1;
        {
            int side = (int)lround(sqrt((double)(n - 512)));
            a.call.text_tokens = 512, a.call.grid_h = side, a.call.grid_w = side;
            tk_config_defaults(&a.cfg); /* 2d, r = 8, all text keys, far dim 16, P = 3, w = 1 */
            a.mode = TK_MODE_HYBRID;
            double win = 17.0 * 17.0 + 512, Rg = 153;
            double hflops = (4.0 * n * win * D + 4.0 * n * Rg * (D + 1) + 4.0 * n * 289.0 * 16) * H;
            ms = time_mode(&a, reps);
            row("ours hybrid 2d r=8 g=16 P=3", n, ms, hflops, cud);
            printf("|   (hybrid: %.1fx faster than cuDNN) | | | | |\n", cud / ms);
            if (n == 16896) {
                a.use_stats = 1;
                a.sr.quality_samples = 16;
                a.sr.seed = 7;
                double ms_st = time_mode(&a, reps);
                row("ours hybrid +stats", n, ms_st, hflops, cud);
                printf("|   (stats on, 16 queries: +%.1f%%; quality rel-L2 mean %.3f) | | | | |\n",
                       100.0 * (ms_st / ms - 1), a.res.stats.quality_raw.rel_l2_mean);
                a.use_stats = 0;
            }
        }
        fflush(stdout);
        tkcu_free(q), tkcu_free(k), tkcu_free(v), tkcu_free(o);
        tk_context_close(a.ctx);
    }
    return 0;
}
#else
int main(void) {
    printf("gpu_attention: built without nvcc, skipped\n");
    return 0;
}
#endif

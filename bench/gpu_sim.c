/* gpu_sim -- issue 6's GPU goal: the synthetic generator's time per layer
 * beside the attention time, and its share of the step, at flux1 1024x1024
 * on the cuda backend (goal: the generator <= 20% of the step).
 *
 * 1. The generator alone, one layer (q k v q0 k0), CPU (workload.c, the
 *    baseline: what a cuda run paid before, plus its host->device copy)
 *    against the device generator (workload_cuda.cu), same seed, f32 and
 *    bf16 outputs (taylor-sim feeds the cuda backend bf16).
 * 2. taylor-sim end to end (tsim_run: telemetry off, stats on), flux1
 *    1024x1024, cuda backend, hybrid and exact: per layer call, the
 *    generator, the attention (with the host's exact fallback), the rest
 *    of the host's step (the output checksum, the agent's step work), and
 *    the generator's share of the step. The first step is shown apart: in
 *    hybrid mode it also fits every layer's PCA (SPEC 4), once per run.
 * Options: gpu_sim [steps] (default 8). */
#include "kernels.h"
#include "sim/sim.h"
#include "sim/workload_cuda.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifdef TK_HAVE_CUDA
#include "cuda/tkcuda_util.h"
#include "internal.h"

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

/* Mean ms per layer of the CPU and the device generator over reps draws of
 * layer 0 at falling sigma (each sigma rebuilds the latent, as a step does). */
static int generator_alone(const char *model, int px, int reps) {
    char err[256];
    tsim_shape s;
    if (tsim_shape_make(tsim_model_find(model), px, px, &s, err, sizeof err)) {
        fprintf(stderr, "gpu_sim: %s\n", err);
        return 1;
    }
    tsim_workload *w = NULL;
    tsim_workload_cuda *g = NULL;
    size_t n = (size_t)s.model.heads * s.tokens * s.model.head_dim;
    float *host[5] = {0};
    void *dev[5] = {0};
    int rc = 1;
    if (tsim_workload_open(&s, 1, &w, err, sizeof err) ||
        tsim_workload_cuda_open(w, &g, err, sizeof err))
        goto done;
    for (int i = 0; i < 5; i++) {
        host[i] = malloc(n * sizeof(float));
        if (!host[i] || tkcu_alloc(&dev[i], n * sizeof(float), err, sizeof err)) goto done;
    }
    /* first draws build and upload the layer's weights: untimed */
    if (tsim_workload_layer(w, 0, 0.5, host[0], host[1], host[2], host[3], host[4]) ||
        tsim_workload_cuda_layer(g, 0, 0.5, 0, dev[0], dev[1], dev[2], dev[3], dev[4], err, sizeof err))
        goto done;
    double t0 = now_ms();
    for (int r = 0; r < reps; r++)
        tsim_workload_layer(w, 0, 0.4 - 0.3 * r / reps, host[0], host[1], host[2], host[3], host[4]);
    double t1 = now_ms();
    for (int r = 0; r < reps; r++)
        if (tsim_workload_cuda_layer(g, 0, 0.4 - 0.3 * r / reps, 0, dev[0], dev[1], dev[2], dev[3],
                                     dev[4], err, sizeof err))
            goto done;
    double t2 = now_ms(), f32_ms = (t2 - t1) / reps;
    for (int r = 0; r < reps; r++)
        if (tsim_workload_cuda_layer(g, 0, 0.4 - 0.3 * r / reps, 1, dev[0], dev[1], dev[2], dev[3],
                                     dev[4], err, sizeof err))
            goto done;
    double bf16_ms = (now_ms() - t2) / reps;
    t2 = now_ms();
    /* the copy the CPU generator also needed on a cuda run */
    for (int i = 0; i < 5; i++)
        if (tkcu_upload(dev[i], host[i], n, TK_DTYPE_F32, err, sizeof err)) goto done;
    if (tkcu_sync(err, sizeof err)) goto done;
    double t3 = now_ms();
    printf("| %-5s | %4dx%-4d | %6d | %8.2f | %8.2f | %8.3f | %8.3f | %7.0fx |\n", model, px, px, s.tokens,
           (t1 - t0) / reps, t3 - t2, f32_ms, bf16_ms, ((t1 - t0) / reps + (t3 - t2)) / f32_ms);
    rc = 0;
done:
    if (rc) fprintf(stderr, "gpu_sim: generator %s %d: %s\n", model, px, err);
    for (int i = 0; i < 5; i++) free(host[i]), tkcu_free(dev[i]);
    tsim_workload_cuda_free(g);
    tsim_workload_free(w);
    return rc;
}

static int run(const char *mode, int steps, int *goal_met) {
    char steps_s[16];
    snprintf(steps_s, sizeof steps_s, "%d", steps);
    char *argv[] = {"taylor-sim", "--quiet", "--listen", "none", "--model", "flux1",
                    "--backend", "cuda", "--mode", (char *)mode, "--steps", steps_s,
                    "--knob", "stats=true"};
    tsim_options o;
    char err[512];
    if (tsim_parse_args(14, argv, &o, err, sizeof err)) {
        fprintf(stderr, "gpu_sim: %s\n", err);
        return 1;
    }
    tsim_run_stats st;
    if (tsim_run(&o, &st, err, sizeof err)) {
        fprintf(stderr, "gpu_sim: %s\n", err);
        return 1;
    }
    int layers = st.steps_done > 0 ? (int)(st.calls / st.steps_done) : 0;
    double calls = st.calls > 0 ? (double)st.calls : 1;
    double gen = st.generate_ms / calls, attn = (st.attention_ms + st.exact_ms) / calls;
    double layer = st.wall_ms / calls;
    /* the steps after the first (steady state: PCA fitted, caches warm) */
    double later_calls = st.calls - layers > 0 ? (double)(st.calls - layers) : 1;
    double lgen = (st.generate_ms - st.first_generate_ms) / later_calls;
    double lattn = (st.attention_ms + st.exact_ms - st.first_attention_ms) / later_calls;
    double llayer = (st.wall_ms - st.first_step_ms) / later_calls;
    double share_all = st.wall_ms > 0 ? st.generate_ms / st.wall_ms : 0;
    double share_later = llayer > 0 ? lgen / llayer : 0;
    if (goal_met) *goal_met = share_later <= 0.20 && share_all <= 0.20;
    printf("| %-6s | all %d steps   | %7.3f | %7.3f | %7.3f | %7.3f | %6.1f%% | %5lld/%lld |\n", mode,
           st.steps_done, gen, attn, layer - gen - attn, layer, 100 * share_all,
           (long long)st.fallbacks, (long long)st.calls);
    printf("| %-6s | step 1 alone  | %7.3f | %7.3f | %7.3f | %7.3f | %6.1f%% |  |\n", mode,
           st.first_generate_ms / layers, st.first_attention_ms / layers,
           (st.first_step_ms - st.first_generate_ms - st.first_attention_ms) / layers,
           st.first_step_ms / layers, 100 * st.first_generate_ms / st.first_step_ms);
    printf("| %-6s | steps 2..%-4d | %7.3f | %7.3f | %7.3f | %7.3f | %6.1f%% |  |\n", mode,
           st.steps_done, lgen, lattn, llayer - lgen - lattn, llayer, 100 * share_later);
    return 0;
}

int main(int argc, char **argv) {
    int steps = argc > 1 ? atoi(argv[1]) : 8;
    if (steps < 2) {
        fprintf(stderr, "usage: gpu_sim [steps >= 2]\n");
        return 2;
    }
    char dev[128];
    if (!tkcuda_available() || tkcu_device_name(dev, sizeof dev)) {
        printf("gpu_sim: no CUDA device; skipped\n");
        return 0;
    }
    printf("gpu_sim on %s\n\ngenerator alone, one layer (q k v q0 k0; ms)\n\n", dev);
    printf("| model | image px  | tokens | CPU gen | + upload | GPU gen f32 | GPU gen bf16 | speed-up (f32) |\n|---|---|---:|---:|---:|---:|---:|---:|\n");
    int rc = 0;
    rc |= generator_alone("flux1", 512, 5);
    rc |= generator_alone("flux1", 1024, 5);
    printf("\ntaylor-sim flux1 1024x1024, cuda backend, device generator (ms per layer call)\n\n");
    printf("| mode   | steps         | gen     | attn    | host rest | layer | gen/step | fallbacks |\n");
    printf("|---|---|---:|---:|---:|---:|---:|---:|\n");
    int met = 0;
    rc |= run("hybrid", steps, &met);
    rc |= run("exact", steps, NULL);
    printf("\n'host rest': the step's time outside generator and attention (the output checksum on the\n"
           "device, the agent's step work), per call. Generator output bf16 on the device.\n");
    printf("goal (issue 6): generator <= 20%% of the step at flux1 1024x1024 hybrid (all steps and steps 2..N): %s\n",
           rc ? "not measured" : met ? "met" : "NOT met");
    return rc;
}
#else
int main(void) {
    printf("gpu_sim: built without nvcc; skipped\n");
    return 0;
}
#endif

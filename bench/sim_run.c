/* sim_run -- taylor-sim end to end: tiny, CPU, 20 steps, hybrid with the
 * agent's stats on (goal: under 30 s wall), beside the exact baseline of the
 * same run, and the generator's time per layer beside the attention time.
 * Then the generator alone at flux1 sizes (the part a GPU run cannot hide). */
#include "sim/sim.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static int run(const char *backend, const char *mode, const char *model, int steps) {
    char steps_s[16];
    snprintf(steps_s, sizeof steps_s, "%d", steps);
    char *argv[] = {"taylor-sim", "--quiet", "--listen", "none", "--model", (char *)model,
                    "--backend", (char *)backend, "--mode", (char *)mode, "--steps", steps_s,
                    "--knob", "stats=true"};
    tsim_options o;
    char err[512];
    if (tsim_parse_args(14, argv, &o, err, sizeof err)) {
        fprintf(stderr, "sim_run: %s\n", err);
        return 1;
    }
    tsim_run_stats st;
    if (tsim_run(&o, &st, err, sizeof err)) {
        fprintf(stderr, "sim_run: %s\n", err);
        return 1;
    }
    double calls = st.calls > 0 ? (double)st.calls : 1;
    printf("| %-5s | %-7s | %-4s | %5d | %8.2f | %9.1f | %10.3f | %10.3f | %9.3f | %5lld/%lld |\n", model,
           mode, backend, steps, st.wall_ms / 1e3, st.wall_ms / steps, st.generate_ms / calls,
           st.attention_ms / calls, st.exact_ms / calls, (long long)st.fallbacks, (long long)st.calls);
    return 0;
}

static void generator_only(const char *model, int px) {
    char err[256];
    tsim_shape s;
    if (tsim_shape_make(tsim_model_find(model), px, px, &s, err, sizeof err)) return;
    tsim_workload *w;
    if (tsim_workload_open(&s, 1, &w, err, sizeof err)) return;
    size_t n = (size_t)s.model.heads * s.tokens * s.model.head_dim;
    float *q = malloc(n * 4), *k = malloc(n * 4), *v = malloc(n * 4), *q0 = malloc(n * 4), *k0 = malloc(n * 4);
    if (q && k && v && q0 && k0) {
        tsim_workload_layer(w, 0, 0.5, q, k, v, q0, k0); /* first draw builds the layer's weights */
        double t0 = now_ms();
        int reps = 3;
        for (int i = 0; i < reps; i++) tsim_workload_layer(w, 0, 0.5 - 0.1 * i, q, k, v, q0, k0);
        double ms = (now_ms() - t0) / reps;
        printf("| %-5s | %5dx%-5d | %6d | %10.1f | %10.0f |\n", model, px, px, s.tokens, ms,
               ms * s.layers);
    }
    free(q), free(k), free(v), free(q0), free(k0);
    tsim_workload_free(w);
}

int main(void) {
    printf("taylor-sim runs (CPU, telemetry off, stats on); times per call are averages\n\n");
    printf("| model | mode    | back | steps | wall (s) | step (ms) | gen ms/call | attn ms/call | exact ms/call | fallbacks |\n");
    printf("|---|---|---|---:|---:|---:|---:|---:|---:|---:|\n");
    int rc = 0;
    rc |= run("cpu", "exact", "tiny", 20);  /* the baseline */
    rc |= run("cpu", "hybrid", "tiny", 20); /* the goal: < 30 s */
    rc |= run("ref", "hybrid", "tiny", 20);
    rc |= run("cpu", "taylor", "tiny", 20);
    printf("\ngenerator alone (CPU, q k v q0 k0 of one layer)\n\n");
    printf("| model | image px    | tokens | ms/layer | ms/step |\n|---|---|---:|---:|---:|\n");
    generator_only("tiny", 256);
    generator_only("flux1", 512);
    generator_only("flux1", 1024);
    return rc;
}

/* taylor-sim -- the simulator host: a Flux-shaped sampler that embeds the
 * taylorscope agent (docs/SIMULATOR.md). Exit status: 0 done, 1 the run
 * failed, 2 bad options. */
#include "agent.h"
#include "sim.h"

#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* --calibrate: the table docs/SIMULATOR.md shows. */
static int calibrate(const tsim_options *o) {
    char err[512];
    tsim_shape s;
    if (tsim_shape_make(tsim_model_find(o->model), o->width_px, o->height_px, &s, err, sizeof err)) {
        fprintf(stderr, "taylor-sim: %s\n", err);
        return 2;
    }
    tsim_workload *w;
    if (tsim_workload_open(&s, o->seed, &w, err, sizeof err)) {
        fprintf(stderr, "taylor-sim: %s\n", err);
        return 1;
    }
    const double sigmas[] = {1.0, 0.75, 0.5, 0.25, 0.05};
    enum { NS = 5 };
    tsim_calib_row rows[NS];
    double *per_layer = malloc(sizeof(double) * NS * (size_t)s.layers);
    if (!per_layer || tsim_calibrate(w, sigmas, NS, o->calibrate_radius, o->calibrate_queries, rows,
                                     per_layer, NULL, err, sizeof err)) {
        fprintf(stderr, "taylor-sim: %s\n", per_layer ? err : "out of memory");
        free(per_layer);
        tsim_workload_free(w);
        return 1;
    }
    printf("calibration: model %s, %dx%d px (grid %dx%d, %d tokens), %d layers x %d heads, seed %llu,\n"
           "radius %d, %d image queries per head\n\n",
           s.model.name, s.grid_w * 16, s.grid_h * 16, s.grid_h, s.grid_w, s.tokens, s.layers,
           s.model.heads, (unsigned long long)o->seed, o->calibrate_radius, o->calibrate_queries);
    printf("| sigma | mass min | mass p10 | mass p50 | mass p90 | mass max | row-max min | row-max mean | row-max max |\n");
    printf("|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (int i = 0; i < NS; i++)
        printf("| %.2f | %.3f | %.3f | %.3f | %.3f | %.3f | %.2f | %.2f | %.2f |\n", rows[i].sigma,
               rows[i].mass_min, rows[i].mass_p10, rows[i].mass_p50, rows[i].mass_p90,
               rows[i].mass_max, rows[i].rowmax_min, rows[i].rowmax_mean, rows[i].rowmax_max);
    free(per_layer);
    tsim_workload_free(w);
    return 0;
}

static void on_stop_signal(int sig) {
    (void)sig;
    tsim_request_stop();
}

int main(int argc, char **argv) {
    tsim_options o;
    char err[1024];
    if (tsim_parse_args(argc, argv, &o, err, sizeof err)) {
        fprintf(stderr, "taylor-sim: %s\n", err);
        return 2;
    }
    if (o.help) {
        tsim_usage(stdout);
        return 0;
    }
    if (o.version) {
        printf("taylor-sim %s\n", TA_VERSION);
        return 0;
    }
    if (o.calibrate) return calibrate(&o);
    /* SIGINT/SIGTERM: finish the step in flight, end the run as failed */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    tsim_run_stats st;
    if (tsim_run(&o, &st, err, sizeof err)) {
        fprintf(stderr, "taylor-sim: %s\n", err);
        return 1;
    }
    tsim_print_summary(stdout, &st);
    return 0;
}

/*
 * sim.h -- private to taylor-sim (libtsim.a): model configs, the sigma
 * schedule, the synthetic workload, its calibration, capture/replay and the
 * host loop. Prefix tsim_. The process and the file formats are documented
 * in docs/SIMULATOR.md; this header says who owns what.
 *
 * Errors: functions that can fail return 0 and fill the caller's err buffer
 * otherwise ("what: why"), leaving their outputs empty.
 */
#ifndef TSIM_SIM_H
#define TSIM_SIM_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "kernels.h"

/* ------------------------------------------------------------------ */
/* Model configs (models.c)                                            */
/* ------------------------------------------------------------------ */

typedef struct {
    const char *name;        /* "tiny" */
    const char *description; /* one line for --help */
    int heads, head_dim;
    int n_double, n_single;  /* global layer = block (double) or n_double + block (single) */
    int text_tokens;
    int width_px, height_px; /* default image size; the grid is (H/16)x(W/16) */
    int patch_px;            /* pixels per image token side (16 for Flux) */
    int rope_axes[3];        /* RoPE dims per axis (index, row, col); sum = head_dim */
    double rope_theta;
} tsim_model;

int tsim_model_count(void);
const tsim_model *tsim_model_at(int i);
const tsim_model *tsim_model_find(const char *name); /* NULL if unknown */
/* Flux's 16/56/56 of 128 scaled to head_dim (each even, sum = head_dim).
 * Returns 0, or nonzero when head_dim is not a multiple of 4 or below 8. */
int tsim_rope_axes_for(int head_dim, int axes[3]);

/* The shape of one run: a model at one resolution. */
typedef struct {
    tsim_model model;        /* a copy; the name points to static storage */
    int grid_h, grid_w;      /* image tokens per side */
    int tokens;              /* text_tokens + grid_h * grid_w */
    int layers;              /* n_double + n_single */
} tsim_shape;

/* Fills *out for width x height pixels (0 = the model's default). Both must
 * be positive multiples of the patch size. */
int tsim_shape_make(const tsim_model *m, int width_px, int height_px, tsim_shape *out, char *err,
                    size_t errlen);

/* ------------------------------------------------------------------ */
/* Schedule (schedule.c)                                               */
/* ------------------------------------------------------------------ */

/* Flux's resolution-dependent shift: mu = linear interpolation through
 * (256, 0.5) and (4096, 1.15) at the image sequence length. */
double tsim_shift_mu(int image_tokens);
/* sigma' = e^mu / (e^mu + (1/t - 1)); t = 0 -> 0, t = 1 -> 1. */
double tsim_shift_sigma(double mu, double t);
/* sigmas[0..steps]: t_i = 1 - i/steps shifted; step i runs at sigmas[i]
 * and moves to sigmas[i+1] (= 0 after the last). sigmas holds steps + 1. */
void tsim_schedule(int steps, int image_tokens, double *sigmas);

/* ------------------------------------------------------------------ */
/* Random numbers (workload.c): counter-based, so any tensor of any step  */
/* and layer can be drawn on its own and the same seed gives the same bytes. */
/* ------------------------------------------------------------------ */

uint64_t tsim_mix64(uint64_t x);
/* A stream key from a seed and up to four labels. */
uint64_t tsim_key(uint64_t seed, uint64_t a, uint64_t b, uint64_t c, uint64_t d);
/* Uniform in [0,1) and standard normal, the i-th draw of stream key. */
double tsim_uniform(uint64_t key, uint64_t i);
double tsim_normal(uint64_t key, uint64_t i);

/* ------------------------------------------------------------------ */
/* Synthetic workload (workload.c)                                     */
/* ------------------------------------------------------------------ */

/* The per-head character the generator gives one (layer, head). */
typedef struct {
    double locality;    /* 0..1: the spread of heads, from content/text-driven to local */
    double pos_weight;  /* weight of the RoPE-position component at sigma 0 */
    double pos_length;  /* tokens: the RoPE pair energy is a band around omega = 1/pos_length */
    double text_weight; /* image-query / text-key affinity */
    double qk_corr;     /* correlation of the q and k content projections */
} tsim_head_params;

typedef struct tsim_workload tsim_workload;

/* Builds the seeded generator for a shape: the structure field, the noise,
 * the text embeddings and every layer's projections (owned by the
 * workload; tsim_workload_free releases). */
int tsim_workload_open(const tsim_shape *shape, uint64_t seed, tsim_workload **out, char *err,
                       size_t errlen);
void tsim_workload_free(tsim_workload *w);
const tsim_head_params *tsim_workload_head(const tsim_workload *w, int layer, int head);
double tsim_workload_layer_gain(const tsim_workload *w, int layer);

/* Tensors of one layer at one sigma, layout [1,H,N,D] (N = shape.tokens,
 * text first, then the grid row-major). All buffers are the caller's, each
 * H*N*D floats; q0/k0 (pre-RoPE) may be NULL. */
int tsim_workload_layer(tsim_workload *w, int layer, double sigma, float *q, float *k, float *v,
                        float *q0, float *k0);

/* Applies Flux's 2-D RoPE in place to x [H,N,D]: text tokens sit at
 * position (0,0,0), image token (r,c) at (0,r,c). */
void tsim_rope_apply(const tsim_shape *shape, float *x);

/* ------------------------------------------------------------------ */
/* Calibration (calibrate.c): exact softmax on sampled image queries    */
/* ------------------------------------------------------------------ */

typedef struct {
    double window_mass;  /* mean over sampled image queries: softmax mass on image keys
                          * within the (2r+1)^2 square around the query */
    double row_max;      /* mean over the same queries of max_j s0*q.k_j */
} tsim_head_stats;

/* Measures every head of one layer's tensors (q, k post-RoPE, [1,H,N,D]):
 * `queries` image queries sampled by seed, s0 = D^-1/2, window radius r.
 * out holds H entries. */
void tsim_measure_layer(const tsim_shape *shape, const float *q, const float *k, int radius,
                        int queries, uint64_t seed, tsim_head_stats *out);

/* Summary of one sigma over all layers and heads. */
typedef struct {
    double sigma;
    double mass_min, mass_p10, mass_p50, mass_p90, mass_max; /* across heads (all layers) */
    double rowmax_min, rowmax_mean, rowmax_max; /* across layers (per layer: mean over heads) */
} tsim_calib_row;

/* Calibrates `nsigma` sigmas of a workload; out has nsigma rows.
 * per_layer_rowmax (optional, layers * nsigma) and per_head_mass
 * (optional, layers * heads * nsigma) receive the detail, sigma-major. */
int tsim_calibrate(tsim_workload *w, const double *sigmas, int nsigma, int radius, int queries,
                   tsim_calib_row *out, double *per_layer_rowmax, double *per_head_mass,
                   char *err, size_t errlen);

const tsim_shape *tsim_workload_shape(const tsim_workload *w);

/* ------------------------------------------------------------------ */
/* Capture and replay (replay.c): a directory with manifest.tsv and one  */
/* tensor file (or five) per step and layer; format in docs/SIMULATOR.md */
/* ------------------------------------------------------------------ */

#define TSIM_MANIFEST "manifest.tsv"
#define TSIM_CAPTURE_VERSION 1

typedef struct {
    int step, layer;
    double sigma;
    char *file[5]; /* q, k, v, q0, k0: full paths; q0/k0 may be NULL */
} tsim_replay_call;

typedef struct {
    char model_name[64];
    tsim_shape shape;        /* heads, head_dim, blocks, text_tokens, grid from the manifest */
    int steps;               /* distinct steps, in file order */
    int ncalls;
    tsim_replay_call *calls; /* ncalls, ordered by step (owned) */
} tsim_replay;

/* Reads and checks DIR/manifest.tsv and that every file it names exists.
 * On success fills *out (release with tsim_replay_free). */
int tsim_replay_open(const char *dir, tsim_replay *out, char *err, size_t errlen);
void tsim_replay_free(tsim_replay *r);
/* Loads one call's tensors into [H,N,D] buffers (H*N*D floats each; q0/k0
 * may be NULL to skip). *have_q0k0 says whether the capture had them. */
int tsim_replay_load(const tsim_replay *r, int call, float *q, float *k, float *v, float *q0,
                     float *k0, int *have_q0k0, char *err, size_t errlen);

typedef enum { TSIM_FORMAT_SAFETENSORS = 0, TSIM_FORMAT_NPY = 1 } tsim_format;

typedef struct tsim_capture tsim_capture;
/* Creates DIR (or uses an empty existing one) and writes the manifest head. */
int tsim_capture_open(const char *dir, const char *model_name, const tsim_shape *shape, int steps,
                      tsim_format format, tsim_capture **out, char *err, size_t errlen);
/* Writes one call's tensors ([H,N,D] in memory, [1,H,N,D] in the files;
 * q0/k0 may be NULL) and its manifest line. */
int tsim_capture_write(tsim_capture *c, int step, double sigma, int layer, const float *q,
                       const float *k, const float *v, const float *q0, const float *k0,
                       char *err, size_t errlen);
/* Flushes and closes the manifest; returns nonzero when a write had failed. */
int tsim_capture_close(tsim_capture *c, char *err, size_t errlen);

/* ------------------------------------------------------------------ */
/* Options (options.c) and the host loop (host.c)                      */
/* ------------------------------------------------------------------ */

typedef struct {
    const char *model;          /* "tiny" */
    int width_px, height_px;    /* 0 = the model's default */
    int steps;
    uint64_t seed;
    tk_backend backend;
    tk_config knobs;            /* defaults, then --mode, then each --knob in order */
    const char *listen;         /* NULL = the agent's default ipc endpoint; "" = no telemetry */
    double wait_console_s;      /* 0 = start at once */
    double step_delay_s;        /* pause after each step (pacing a demo); 0 = none */
    int quiet;
    const char *replay_dir;     /* NULL = synthetic */
    const char *capture_dir;    /* NULL = no capture */
    tsim_format capture_format;
    int calibrate;              /* print the calibration table instead of running */
    int calibrate_radius;
    int calibrate_queries;
    int help, version;
} tsim_options;

/* Parses argv into *o (strings point into argv). Returns 0, or nonzero with
 * a message naming the option (the caller exits 2). */
int tsim_parse_args(int argc, char **argv, tsim_options *o, char *err, size_t errlen);
void tsim_usage(FILE *f);

typedef struct {
    int steps_done;
    int64_t calls, fallbacks;
    int64_t by_reason[TK_REASON_COUNT];
    int64_t by_path[4];
    double wall_ms, generate_ms, attention_ms, exact_ms; /* totals */
    /* the first step alone (it also fits each layer's PCA in hybrid mode) */
    double first_step_ms, first_generate_ms, first_attention_ms;
    double output_sum;       /* sum of every output value (replay comparisons) */
    double output_abs_sum;
    uint64_t published, dropped;
    char run_id[64];
    char endpoint[512];
} tsim_run_stats;

/* Runs the generation the options describe; progress on stderr unless
 * quiet. Returns 0 with *st filled, or nonzero with err. */
int tsim_run(const tsim_options *o, tsim_run_stats *st, char *err, size_t errlen);
/* Asks a running tsim_run to stop after the step in flight: the run then
 * ends as failed ("interrupted") and tsim_run returns nonzero. Async-signal
 * safe (main calls it from its SIGINT/SIGTERM handler). */
void tsim_request_stop(void);
/* The one summary line printed at the end of a run. */
void tsim_print_summary(FILE *f, const tsim_run_stats *st);

#endif

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
    double freq_decay;  /* RoPE pair energy ~ exp(-pair / freq_decay): small = sharp */
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
    double mass_min, mass_p50, mass_max;  /* across heads (all layers) */
    double rowmax_min, rowmax_mean, rowmax_max; /* across layers (per layer: mean over heads) */
} tsim_calib_row;

/* Calibrates `nsigma` sigmas of a workload; out has nsigma rows.
 * per_layer_rowmax (optional, layers * nsigma) and per_head_mass
 * (optional, layers * heads * nsigma) receive the detail, sigma-major. */
int tsim_calibrate(tsim_workload *w, const double *sigmas, int nsigma, int radius, int queries,
                   tsim_calib_row *out, double *per_layer_rowmax, double *per_head_mass,
                   char *err, size_t errlen);

const tsim_shape *tsim_workload_shape(const tsim_workload *w);

#endif

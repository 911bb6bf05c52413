/*
 * workload_cuda.h -- the synthetic generator of workload.c on the GPU
 * (workload_cuda.cu, built when nvcc is found: TK_HAVE_CUDA). It draws one
 * layer's q, k, v, q0, k0 straight into device buffers, so a cuda run copies
 * nothing host->device per layer. It runs the same process as workload.c
 * (docs/SIMULATOR.md): the per-run fields (structure, noise, text, RoPE
 * tables) and each layer's projections are those the CPU workload drew with
 * tsim_key/tsim_normal, uploaded once when it opens (every layer's); the
 * per-step work -- latent mix, RMS norm, projections, position and text
 * components, per-head RMS norm and gain, RoPE -- runs on the device. Same
 * seed, same tensors as the CPU generator up to float rounding (the order of
 * the 32-term projection sums and of the RMS reductions differ).
 * Prefix tsim_. Plain C, usable from C and from nvcc.
 */
#ifndef TSIM_WORKLOAD_CUDA_H
#define TSIM_WORKLOAD_CUDA_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

struct tsim_workload;

/* What the device generator reads of a CPU workload: pointers into it,
 * valid while it lives (workload.c fills them). */
typedef struct {
    int heads, head_dim, tokens, text_tokens, grid_h, grid_w, channels, layers;
    int rope_axes[3];
    const float *structure, *noise;   /* [G, C] */
    const float *text;                /* [T, C] */
    const float *cos_row, *sin_row;   /* [grid_h, rope_axes[1]/2] */
    const float *cos_col, *sin_col;   /* [grid_w, rope_axes[2]/2] */
} tsim_workload_fields;

typedef struct {
    const float *wq, *wk, *wv;        /* [C, H*D] */
    const float *u, *a, *gain;        /* [H*D] */
} tsim_layer_fields;

void tsim_workload_fields_get(const struct tsim_workload *w, tsim_workload_fields *f);
/* Draws the layer's weights on first use. pos_weight and text_weight
 * (caller's, H floats each) receive the heads' weights as the CPU rows use
 * them. Returns nonzero for a bad layer or out of memory. */
int tsim_workload_layer_fields(struct tsim_workload *w, int layer, tsim_layer_fields *f,
                               float *pos_weight, float *text_weight);

typedef struct tsim_workload_cuda tsim_workload_cuda;

/* Opens the device generator over w (borrowed: it must outlive the device
 * generator) and uploads the per-run fields. 0, or nonzero with err (no
 * device, out of device memory, a shape it does not handle). */
int tsim_workload_cuda_open(struct tsim_workload *w, tsim_workload_cuda **out, char *err,
                            size_t errlen);
void tsim_workload_cuda_free(tsim_workload_cuda *g); /* NULL ok */
/* Draws layer at sigma into device buffers [H,N,D] (H*N*D floats each, or
 * bf16 values when out_bf16, rounded to nearest; v, q0, k0 may be NULL) on
 * the default stream and waits for it, so the time around the call is the
 * generator's. 0, or nonzero with err. */
int tsim_workload_cuda_layer(tsim_workload_cuda *g, int layer, double sigma, int out_bf16, void *q,
                             void *k, void *v, void *q0, void *k0, char *err, size_t errlen);
/* Sum and sum of |x| (in double, fixed order: the same bytes give the same
 * sums) of n device values (float, or bf16 when bf16), for the host's
 * output checksum without copying the output back. 0, or nonzero with err. */
int tsim_workload_cuda_sums(tsim_workload_cuda *g, const void *x, size_t n, int bf16, double *sum,
                            double *abs_sum, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif

#endif

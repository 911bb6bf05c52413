/*
 * models.c -- the model configs taylor-sim can run (docs/SIMULATOR.md).
 *
 * flux1 is FLUX.1's transformer as the sampler sees it; flux2 is our
 * "flux2-like" choice (wider, fewer double blocks); small and tiny keep the
 * Flux shape but make a CPU run take seconds.
 */
#include "sim.h"

#include <stdio.h>
#include <string.h>

static const tsim_model models[] = {
    {"tiny", "4 heads x 32, 4+4 blocks, 64 text tokens, 256x256 (16x16 grid): a CPU run in seconds",
     4, 32, 4, 4, 64, 256, 256, 16, {4, 14, 14}, 10000.0},
    {"small", "8 heads x 64, 4+8 blocks, 128 text tokens, 512x512 (32x32 grid)",
     8, 64, 4, 8, 128, 512, 512, 16, {8, 28, 28}, 10000.0},
    {"flux1", "FLUX.1: 24 heads x 128, 19+38 blocks, 512 text tokens, 1024x1024 (64x64 grid)",
     24, 128, 19, 38, 512, 1024, 1024, 16, {16, 56, 56}, 10000.0},
    {"flux2", "flux2-like: 48 heads x 128, 8+48 blocks, 512 text tokens, 1024x1024 (64x64 grid)",
     48, 128, 8, 48, 512, 1024, 1024, 16, {16, 56, 56}, 10000.0},
};

#define MODEL_COUNT ((int)(sizeof models / sizeof models[0]))

int tsim_model_count(void) { return MODEL_COUNT; }

const tsim_model *tsim_model_at(int i) { return i >= 0 && i < MODEL_COUNT ? &models[i] : NULL; }

const tsim_model *tsim_model_find(const char *name) {
    if (!name) return NULL;
    for (int i = 0; i < MODEL_COUNT; i++)
        if (!strcmp(models[i].name, name)) return &models[i];
    return NULL;
}

int tsim_rope_axes_for(int head_dim, int axes[3]) {
    if (head_dim < 8 || head_dim % 4 != 0) return 1;
    /* Flux: 16 of 128 for the index axis (1/8), the rest split evenly. */
    int a0 = 2 * ((head_dim / 8 + 1) / 2);
    if (a0 < 2) a0 = 2;
    if ((head_dim - a0) % 4 != 0) a0 += 2;
    axes[0] = a0;
    axes[1] = axes[2] = (head_dim - a0) / 2;
    return 0;
}

int tsim_shape_make(const tsim_model *m, int width_px, int height_px, tsim_shape *out, char *err,
                    size_t errlen) {
    memset(out, 0, sizeof *out);
    if (width_px == 0) width_px = m->width_px;
    if (height_px == 0) height_px = m->height_px;
    if (width_px <= 0 || height_px <= 0 || width_px % m->patch_px || height_px % m->patch_px) {
        snprintf(err, errlen, "image size %dx%d: width and height must be positive multiples of %d",
                 width_px, height_px, m->patch_px);
        return 1;
    }
    if (width_px > 65536 || height_px > 65536) {
        snprintf(err, errlen, "image size %dx%d: at most 65536 pixels a side", width_px, height_px);
        return 1;
    }
    out->model = *m;
    out->grid_h = height_px / m->patch_px;
    out->grid_w = width_px / m->patch_px;
    out->tokens = m->text_tokens + out->grid_h * out->grid_w;
    out->layers = m->n_double + m->n_single;
    return 0;
}

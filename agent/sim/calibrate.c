/*
 * calibrate.c -- measures what makes a workload useful for tuning: how much
 * exact softmax mass each head keeps near the query on the grid, and how
 * large its logits get (docs/SIMULATOR.md, "Calibration").
 *
 * For sampled image queries i of head h: l_j = s0 q_i.k_j over all keys
 * (text and image), s0 = D^-1/2; window mass = sum of softmax weights of
 * image keys within max(|dr|,|dc|) <= r of the query, row max = max_j l_j.
 */
#include "sim.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void tsim_measure_layer(const tsim_shape *s, const float *q, const float *k, int radius,
                        int queries, uint64_t seed, tsim_head_stats *out) {
    int H = s->model.heads, D = s->model.head_dim, N = s->tokens, T = s->model.text_tokens;
    int G = s->grid_h * s->grid_w;
    float *logits = malloc(sizeof(float) * (size_t)N);
    if (!logits || G == 0 || queries <= 0) {
        for (int h = 0; h < H; h++) out[h].window_mass = out[h].row_max = NAN;
        free(logits);
        return;
    }
    float s0 = (float)(1.0 / sqrt((double)D));
    uint64_t key = tsim_key(seed, 77, 0, 0, 0);
    for (int h = 0; h < H; h++) {
        const float *qh = q + (size_t)h * N * D, *kh = k + (size_t)h * N * D;
        double mass_sum = 0, max_sum = 0;
        for (int i = 0; i < queries; i++) {
            int g = (int)(tsim_uniform(key, (uint64_t)i) * G);
            int qi = T + g, qr = g / s->grid_w, qc = g % s->grid_w;
            cblas_sgemv(CblasRowMajor, CblasNoTrans, N, D, s0, kh, D, qh + (size_t)qi * D, 1, 0.0f,
                        logits, 1);
            float m = logits[0];
            for (int j = 1; j < N; j++) m = logits[j] > m ? logits[j] : m;
            double tot = 0, win = 0;
            for (int j = 0; j < N; j++) {
                double e = exp((double)logits[j] - m);
                tot += e;
                if (j >= T) {
                    int kr = (j - T) / s->grid_w, kc = (j - T) % s->grid_w;
                    if (abs(kr - qr) <= radius && abs(kc - qc) <= radius) win += e;
                }
            }
            mass_sum += win / tot;
            max_sum += m;
        }
        out[h].window_mass = mass_sum / queries;
        out[h].row_max = max_sum / queries;
    }
    free(logits);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int tsim_calibrate(tsim_workload *w, const double *sigmas, int nsigma, int radius, int queries,
                   tsim_calib_row *out, double *per_layer_rowmax, double *per_head_mass,
                   char *err, size_t errlen) {
    const tsim_shape *s = tsim_workload_shape(w);
    int H = s->model.heads, L = s->layers;
    size_t n = (size_t)H * s->tokens * s->model.head_dim;
    float *q = malloc(sizeof(float) * n), *k = malloc(sizeof(float) * n);
    double *mass = malloc(sizeof(double) * (size_t)L * H);
    tsim_head_stats *hs = malloc(sizeof *hs * (size_t)H);
    int rc = 0;
    if (!q || !k || !mass || !hs) {
        snprintf(err, errlen, "calibration: out of memory");
        rc = 1;
        goto done;
    }
    for (int si = 0; si < nsigma; si++) {
        tsim_calib_row *row = &out[si];
        row->sigma = sigmas[si];
        row->rowmax_min = INFINITY, row->rowmax_max = -INFINITY, row->rowmax_mean = 0;
        for (int l = 0; l < L; l++) {
            if (tsim_workload_layer(w, l, sigmas[si], q, k, NULL, NULL, NULL)) {
                snprintf(err, errlen, "calibration: cannot draw layer %d at sigma %g", l, sigmas[si]);
                rc = 1;
                goto done;
            }
            tsim_measure_layer(s, q, k, radius, queries, (uint64_t)l * 7919 + 1, hs);
            double rm = 0;
            for (int h = 0; h < H; h++) {
                mass[l * H + h] = hs[h].window_mass;
                rm += hs[h].row_max / H;
                if (per_head_mass) per_head_mass[((size_t)si * L + l) * H + h] = hs[h].window_mass;
            }
            if (per_layer_rowmax) per_layer_rowmax[(size_t)si * L + l] = rm;
            row->rowmax_min = fmin(row->rowmax_min, rm);
            row->rowmax_max = fmax(row->rowmax_max, rm);
            row->rowmax_mean += rm / L;
        }
        qsort(mass, (size_t)L * H, sizeof(double), cmp_double);
        row->mass_min = mass[0];
        row->mass_p10 = mass[(size_t)L * H / 10];
        row->mass_p50 = mass[(size_t)L * H / 2];
        row->mass_p90 = mass[(size_t)L * H * 9 / 10];
        row->mass_max = mass[(size_t)L * H - 1];
    }
done:
    free(q), free(k), free(mass), free(hs);
    return rc;
}

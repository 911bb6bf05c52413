/*
 * schedule.c -- the sigma schedule of flow matching with Flux's
 * resolution-dependent shift (docs/SIMULATOR.md, "Schedule"):
 *
 *   mu(n)   = 0.5 + (1.15 - 0.5) * (n - 256) / (4096 - 256),  n = image tokens
 *   t_i     = 1 - i / steps,  i = 0..steps   (linear from 1 to 0)
 *   sigma_i = e^mu / (e^mu + (1/t_i - 1))    (sigma_steps = 0)
 *
 * Step i runs at sigma_i; an Euler sampler would move x by
 * (sigma_{i+1} - sigma_i) * velocity.
 */
#include "sim.h"

#include <math.h>

double tsim_shift_mu(int image_tokens) {
    const double x1 = 256, y1 = 0.5, x2 = 4096, y2 = 1.15;
    double slope = (y2 - y1) / (x2 - x1);
    return y1 + slope * ((double)image_tokens - x1);
}

double tsim_shift_sigma(double mu, double t) {
    if (t <= 0) return 0;
    if (t >= 1) return 1;
    double e = exp(mu);
    return e / (e + (1.0 / t - 1.0));
}

void tsim_schedule(int steps, int image_tokens, double *sigmas) {
    double mu = tsim_shift_mu(image_tokens);
    for (int i = 0; i <= steps; i++) {
        double t = steps > 0 ? 1.0 - (double)i / steps : 0.0;
        sigmas[i] = i == steps ? 0.0 : tsim_shift_sigma(mu, t);
    }
}

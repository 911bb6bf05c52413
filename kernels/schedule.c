/*
 * schedule.c -- the hybrid's schedules of sigma (SPEC 4).
 *
 * Window: local_window_max at sigma >= high, local_window_min at sigma <= low,
 * between them max + (min - max) * f(t), f(t) = t^2 (3 - 2t) (smoothstep),
 * t = (high - sigma) / (high - low), rounded to the nearest integer. The fixed
 * local_window when high <= low (schedule off). A window of 0 means full
 * attention, which has no size to interpolate: when one end is 0, the
 * schedule keeps that end while f(t) < 1/2 and the other from f(t) >= 1/2 on.
 *
 * Far weight: global_weight at sigma <= global_sigma_low, 0 at sigma >=
 * global_sigma_high, linear between; global_weight when high <= low.
 *
 * A NaN sigma cannot be placed on a schedule: it gets the fixed values
 * (local_window, global_weight).
 */
#include "kernels.h"

#include <math.h>

int tk_window_at(const tk_config *c, double sigma) {
    double lo = c->local_window_sigma_low, hi = c->local_window_sigma_high;
    if (hi <= lo || isnan(sigma)) return c->local_window;
    if (sigma >= hi) return c->local_window_max;
    if (sigma <= lo) return c->local_window_min;
    double t = (hi - sigma) / (hi - lo);
    double f = t * t * (3 - 2 * t);
    int wmax = c->local_window_max, wmin = c->local_window_min;
    if (wmax == 0 || wmin == 0) return f < 0.5 ? wmax : wmin;
    return (int)lround(wmax + (wmin - wmax) * f);
}

double tk_far_weight_at(const tk_config *c, double sigma) {
    double lo = c->global_sigma_low, hi = c->global_sigma_high;
    if (hi <= lo || isnan(sigma)) return c->global_weight;
    if (sigma <= lo) return c->global_weight;
    if (sigma >= hi) return 0;
    return c->global_weight * (hi - sigma) / (hi - lo);
}

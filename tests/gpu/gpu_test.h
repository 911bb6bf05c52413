/* gpu_test.h -- what the GPU tests (tests/gpu) share: the device
 * check, the seeded generator of their inputs (splitmix64: kernels/plan.c's
 * tki_mix64 over a counter) and host allocation that fails the test. Header
 * only; include it after harness.h, inside #ifdef TK_HAVE_CUDA. */
#ifndef TK_GPU_TEST_H
#define TK_GPU_TEST_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "harness.h"
#include "internal.h"
#include "plan.h"

static inline void need_device(void) {
    if (!tkcuda_available()) th_skip("no CUDA device");
}

static inline uint64_t *gt_rng(void) {
    static uint64_t state;
    return &state;
}
/* Restarts the input generator: the same seed gives the same inputs. */
static inline void gt_seed(uint64_t seed) { *gt_rng() = seed; }
/* Uniform in (0, 1). */
static inline double urand(void) {
    uint64_t z = tki_mix64(*gt_rng());
    *gt_rng() += 0x9e3779b97f4a7c15ull;
    return ((z >> 11) + 0.5) / 9007199254740992.0;
}
/* Standard normal (Box-Muller). */
static inline double nrand(void) { return sqrt(-2 * log(urand())) * cos(6.283185307179586 * urand()); }

static inline void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) th_fail(__FILE__, __LINE__, "host allocation of %zu bytes", n);
    return p;
}

#endif

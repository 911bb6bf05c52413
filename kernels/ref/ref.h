/*
 * ref.h -- private to kernels/ref: the reference (oracle) backend. Plain
 * loops, fp64 accumulation, written to be read next to docs/MATH.md. Each
 * family computes the whole call into an fp64 buffer o64 [B,H,Nq,Dv]; the
 * caller (attention.c) writes o only when no fallback was decided.
 */
#ifndef TK_REF_H
#define TK_REF_H

#include "internal.h"
#include "plan.h"
#include "stats.h"

/* Exact softmax attention (SPEC 2). Returns TK_OK. */
int tkref_exact(const tki_plan *p, const tk_call *call, double *o64);

/*
 * Taylor attention (SPEC 3): sub-head slices, q/k modification, early probe,
 * denominator rule. Denominators of the full pass go to den (before
 * clamping). A fallback sets res->reason/stage/detail and returns TK_OK.
 * Returns TK_ERR_NOMEM when a workspace cannot be had.
 */
int tkref_taylor(const tki_plan *p, const tk_call *call, double *o64, tki_den_acc *den,
                 tk_result *res);

/*
 * Hybrid attention (SPEC 4): exact local window + far-field Taylor on the
 * PCA-projected q0/k0, combined additively or normalized. Far denominators
 * go to den. NaN/Inf far denominators fall back (denominator_invalid).
 */
int tkref_hybrid(const tki_plan *p, const tk_call *call, double *o64, tki_den_acc *den,
                 tk_result *res);

#endif

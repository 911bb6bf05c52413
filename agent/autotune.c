/*
 * autotune.c -- the seed's auto-tune: during the first auto_tune_steps steps
 * of a run, calls try candidate settings of (qk_norm_power, qk_norm_clip,
 * scale_mul) inside the auto_tune_* ranges; each call is scored by its
 * quality_raw rel-L2 mean plus a penalty for bad denominators; at the step
 * boundary that ends the search the best candidate is locked in (the agent
 * applies it as a knob change with origin "autotune").
 *
 * Candidates: 0 is the configuration in force (clamped into the ranges),
 * the rest a Halton sequence (bases 2, 3, 5) over the box, so any count
 * spreads evenly. The calls of a search step take the candidates in turn
 * (call i runs candidate i mod n): each candidate is measured on real calls
 * without running any attention twice, and with 57 layers per step and n
 * not dividing 57 every candidate meets every layer over a few steps.
 *
 * Score of a call = rel-L2 mean + (den <= eps + non-finite den) / den count;
 * a fallback scores +inf (the candidate made the call unusable). A
 * candidate's score is the mean over its calls; never scored = +inf.
 */
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static double halton(int index, int base) {
    double f = 1, r = 0;
    for (int i = index; i > 0; i /= base) {
        f /= base;
        r += f * (i % base);
    }
    return r;
}

static double clamp(double v, double lo, double hi) { return v < lo ? lo : v > hi ? hi : v; }

int tai_tune_begin(tai_tune *t, const tk_config *cfg) {
    tai_tune_free(t);
    if (!cfg->auto_tune) return 0;
    int n = cfg->auto_tune_candidates > 0 ? cfg->auto_tune_candidates : 1;
    t->cand = calloc((size_t)n, sizeof *t->cand);
    if (!t->cand) return -1;
    t->n = n;
    t->cand[0].power = clamp(cfg->qk_norm_power, cfg->auto_tune_power_min, cfg->auto_tune_power_max);
    t->cand[0].clip = clamp(cfg->qk_norm_clip, cfg->auto_tune_clip_min, cfg->auto_tune_clip_max);
    t->cand[0].scale_mul =
        clamp(cfg->scale_mul, cfg->auto_tune_scale_min, cfg->auto_tune_scale_max);
    for (int i = 1; i < n; i++) {
        tai_candidate *c = &t->cand[i];
        c->power = cfg->auto_tune_power_min +
                   halton(i, 2) * (cfg->auto_tune_power_max - cfg->auto_tune_power_min);
        c->clip = cfg->auto_tune_clip_min +
                  halton(i, 3) * (cfg->auto_tune_clip_max - cfg->auto_tune_clip_min);
        c->scale_mul = cfg->auto_tune_scale_min +
                       halton(i, 5) * (cfg->auto_tune_scale_max - cfg->auto_tune_scale_min);
    }
    t->active = 1;
    t->steps_left = cfg->auto_tune_steps;
    t->calls = 0;
    return 0;
}

void tai_tune_free(tai_tune *t) {
    free(t->cand);
    memset(t, 0, sizeof *t);
}

const tk_config *tai_tune_config(tai_tune *t, const tk_config *cfg, tk_config *scratch, int *idx) {
    if (!t->active || t->n == 0) return NULL;
    int i = (int)(t->calls++ % (uint64_t)t->n);
    *scratch = *cfg;
    scratch->qk_norm_power = t->cand[i].power;
    scratch->qk_norm_clip = t->cand[i].clip;
    scratch->scale_mul = t->cand[i].scale_mul;
    *idx = i;
    return scratch;
}

double tai_tune_call_score(const tk_result *res) {
    if (res->reason != TK_REASON_NONE) return INFINITY;
    const tk_stats *st = &res->stats;
    if (!(st->have & TK_HAVE_QUALITY) || st->quality_raw.n <= 0) return NAN;
    double score = st->quality_raw.rel_l2_mean;
    if (isnan(score)) return INFINITY;
    if ((st->have & TK_HAVE_DENOMS) && st->den.n > 0)
        score += (double)(st->den.n_le_eps + st->den.n_nonfinite) / (double)st->den.n;
    return score;
}

void tai_tune_score(tai_tune *t, int idx, const tk_result *res) {
    if (idx < 0 || idx >= t->n) return;
    double s = tai_tune_call_score(res);
    if (isnan(s)) return;
    t->cand[idx].score_sum += s;
    t->cand[idx].scored++;
}

const tai_candidate *tai_tune_best(const tai_tune *t) {
    const tai_candidate *best = NULL;
    double best_score = INFINITY;
    for (int i = 0; i < t->n; i++) {
        const tai_candidate *c = &t->cand[i];
        if (!c->scored) continue;
        double s = c->score_sum / c->scored;
        if (s < best_score) best_score = s, best = c;
    }
    return best;
}

/*
 * plan.c -- one call's parameters resolved once, for every backend (see
 * plan.h): sampling, window, q/k modification, far vectors, denominator rule.
 */
#include "plan.h"

#include "internal.h"
#include "pca.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

uint64_t tki_mix64(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

int64_t tki_sample_indices(uint64_t seed, uint64_t salt, int64_t pool, int64_t count, int64_t *out) {
    if (pool <= 0 || count <= 0) return 0;
    int64_t m = count < pool ? count : pool;
    if (m == pool) {
        for (int64_t t = 0; t < pool; t++) out[t] = t;
        return m;
    }
    /* Selection sampling: take index t with probability
     * (still needed) / (still left). */
    uint64_t state = tki_mix64(seed ^ tki_mix64(salt));
    int64_t taken = 0;
    for (int64_t t = 0; t < pool && taken < m; t++) {
        state += 0x9e3779b97f4a7c15ull;
        double u = (double)(tki_mix64(state) >> 11) * 0x1.0p-53;
        if ((double)(pool - t) * u < (double)(m - taken)) out[taken++] = t;
    }
    return taken;
}

int tki_in_window(const tki_window *w, int64_t i, int64_t j) {
    if (w->radius <= 0 || i < w->text_tokens) return 1;
    if (w->shape == TK_WINDOW_1D) return (i > j ? i - j : j - i) <= w->radius;
    if (j < w->text_tokens || w->grid_w <= 0) return 1; /* no grid: tk_check refuses 2d */
    int64_t a = i - w->text_tokens, b = j - w->text_tokens;
    int64_t dr = a / w->grid_w - b / w->grid_w, dc = a % w->grid_w - b % w->grid_w;
    if (dr < 0) dr = -dr;
    if (dc < 0) dc = -dc;
    return dr <= w->radius && dc <= w->radius;
}

double tki_qkmod_factor(const tki_qkmod *m, double norm) {
    if (!m->active) return 1;
    double n = norm + m->eps;
    if (m->normalize) return 1.0 / n;
    double f = 1;
    if (m->power > 0) f *= pow(n, -m->power);
    if (m->clip > 0 && m->clip / n < 1) f *= m->clip / n;
    return f;
}

void tki_qkmod_apply(const tki_qkmod *m, const double *x, int n, double *out) {
    double ss = 0;
    for (int i = 0; i < n; i++) ss += x[i] * x[i];
    double f = tki_qkmod_factor(m, sqrt(ss));
    for (int i = 0; i < n; i++) out[i] = x[i] * f;
}

int64_t tki_elems4(int64_t a, int64_t b, int64_t c, int64_t d, size_t elem) {
    if (a < 0 || b < 0 || c < 0 || d < 0) return -1;
    int64_t lim = INT64_MAX;
    if ((uint64_t)lim > SIZE_MAX / elem) lim = (int64_t)(SIZE_MAX / elem);
    int64_t n = 1, f[4] = {a, b, c, d};
    for (int i = 0; i < 4; i++) {
        if (f[i] != 0 && n > lim / f[i]) return -1;
        n *= f[i];
    }
    return n;
}

int tki_plan_make(tk_context *ctx, const tk_call *call, const tk_config *cfg, tk_mode mode,
                  tki_plan *p, char *err, size_t errlen) {
    memset(p, 0, sizeof *p);
    p->mode = mode;
    p->B = call->B;
    p->H = call->H;
    p->Nq = call->Nq;
    p->Nk = call->Nk;
    p->D = call->D;
    p->Dv = call->Dv;
    p->s0 = call->scale > 0 ? call->scale : 1.0 / sqrt((double)call->D);
    p->eps = cfg->eps;
    p->fallback_on_negative = cfg->fallback_on_negative;
    p->frac_limit = cfg->denom_fallback_frac_limit;
    p->early_probe = cfg->early_probe;
    p->probe_samples = cfg->probe_samples;
    p->seed = (uint64_t)cfg->seed;
    p->blocks = 1;
    p->d = call->D;
    p->dv = call->Dv;
    p->s = p->s0;
    p->win.radius = -1;
    p->q_far = (const float *)(call->q0 ? call->q0 : call->q);
    p->k_far = (const float *)(call->k0 ? call->k0 : call->k);
    if (mode == TK_MODE_EXACT) return TK_OK;

    int gated_on = cfg->qk_norm_sigma_max <= 0 || call->sigma <= cfg->qk_norm_sigma_max;
    int anything = cfg->qk_normalize || cfg->qk_norm_power > 0 || cfg->qk_norm_clip > 0;
    p->mod.active = gated_on && anything;
    p->mod.normalize = cfg->qk_normalize;
    p->mod.power = cfg->qk_norm_power;
    p->mod.clip = cfg->qk_norm_clip;
    p->mod.eps = cfg->eps;

    if (mode == TK_MODE_TAYLOR) {
        p->blocks = cfg->sub_head_blocks;
        p->d = call->D / p->blocks;
        p->dv = call->Dv / p->blocks;
        p->terms = cfg->terms;
        p->s = cfg->scale_mul / sqrt((double)p->d);
        p->R = taylor_feature_count(p->d, p->terms);
        return TK_OK;
    }

    /* hybrid */
    p->g = cfg->global_dim < call->D ? cfg->global_dim : call->D;
    p->d = p->g;
    p->terms = cfg->global_P;
    p->s = cfg->global_scale_mul / sqrt((double)call->D);
    p->R = taylor_feature_count(p->g, p->terms);
    p->win.shape = (tk_window_shape)cfg->window_shape;
    p->win.radius = tk_window_at(cfg, call->sigma);
    p->win.text_tokens = call->text_tokens;
    p->win.grid_h = call->grid_h;
    p->win.grid_w = call->grid_w;
    p->w = tk_far_weight_at(cfg, call->sigma);
    p->combine = (tk_combine)cfg->combine;
    if (p->w > 0) return tki_pca_get(ctx, call, cfg, p->g, &p->proj, err, errlen);
    return TK_OK;
}

void tki_far_vector(const tki_plan *plan, int h, const float *x, double *hat) {
    const double *P = plan->proj + (size_t)h * plan->g * plan->D;
    for (int r = 0; r < plan->g; r++) {
        double acc = 0;
        for (int i = 0; i < plan->D; i++) acc += P[(size_t)r * plan->D + i] * x[i];
        hat[r] = acc;
    }
    tki_qkmod_apply(&plan->mod, hat, plan->g, hat);
}

tk_reason tki_denominator_rule(const tki_plan *plan, int64_t n_le_eps, int64_t n_nonfinite,
                               int64_t n_total, char *detail, size_t detail_len) {
    if (n_nonfinite > 0) {
        if (detail)
            snprintf(detail, detail_len, "%lld of %lld denominators are NaN or Inf",
                     (long long)n_nonfinite, (long long)n_total);
        return TK_REASON_DENOMINATOR_INVALID;
    }
    if (!plan->fallback_on_negative || n_le_eps == 0) return TK_REASON_NONE;
    double frac = n_total > 0 ? (double)n_le_eps / (double)n_total : 0;
    if (plan->frac_limit <= 0 || frac > plan->frac_limit) {
        if (detail)
            snprintf(detail, detail_len, "%lld of %lld denominators <= eps=%g (share %.4g, limit %g)",
                     (long long)n_le_eps, (long long)n_total, plan->eps, frac, plan->frac_limit);
        return TK_REASON_DENOMINATOR_TOO_SMALL;
    }
    return TK_REASON_NONE;
}

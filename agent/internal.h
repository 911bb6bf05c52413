/*
 * internal.h -- private to agent/: gates, the per-step aggregation and the
 * auto-tune search. Prefix tai_. Everything here runs on the host thread.
 */
#ifndef TA_INTERNAL_H
#define TA_INTERNAL_H

#include "agent.h"
#include "proto.h"

/* ---- gates.c ---- */

/* The agent-side gates of one call, before the kernels' own tk_check:
 * mode exact -> disabled; the mode's layer range -> skipped_by_layer;
 * taylor_sigma_max -> skipped_by_sigma; missing tensors or non-positive
 * sizes -> unsupported_shape. Fills detail. Returns TK_REASON_NONE when the
 * call may go to the kernels. */
tk_reason tai_gate(const tk_config *cfg, int layer, double sigma, const ta_call *call,
                   char *detail, size_t detail_len);
/* 1 if layer is inside [start, end] (-1 = open on that side). */
int tai_layer_in_range(int layer, int start, int end);

/* ---- aggregate.c ---- */

/* Accumulates one step's calls (host thread). Owns its arrays. */
typedef struct {
    int n_layers;           /* model layers */
    tp_step step;           /* totals being built; step.layers points into rows */
    tp_layer_row *rows;     /* [n_layers], row i = layer i */
    int *row_used;          /* [n_layers] */
    double *q_raw, *q_eff;  /* per-call rel-L2 means, for quantiles over calls */
    int n_q, cap_q;
    double den_sum;         /* for the weighted mean of denominators */
    int64_t den_n;
    double qn_sum, kn_sum;
    int qk_calls, wm_calls;
    double wm_sum;
    double *row_qraw_sum, *row_qeff_sum, *row_qn_sum, *row_kn_sum, *row_wm_sum;
    int *row_q_calls, *row_qk_calls, *row_wm_calls;
    tp_layer_row *out_rows; /* compacted rows handed out by tai_agg_finish */
} tai_agg;

int tai_agg_init(tai_agg *g, int n_layers);
void tai_agg_free(tai_agg *g);
void tai_agg_begin(tai_agg *g, int step, double sigma, uint32_t config_version);
/* One call: its layer, its result, its time. */
void tai_agg_add(tai_agg *g, int layer, const tk_result *res, double attn_ms);
/* Host-side fallback time (ta_exact_attention). */
void tai_agg_add_host_ms(tai_agg *g, double ms);
/* Finishes the step: quantiles, means; rows compacted when per_layer.
 * The returned step (and its rows) stay valid until the next begin. */
const tp_step *tai_agg_finish(tai_agg *g, double wall_ms, int per_layer);

/* Non-finite-preserving min/max: NaN in, NaN out. */
double tai_min(double a, double b);
double tai_max(double a, double b);
/* q-quantile (0..1) of v[0..n) (sorted in place; NaN sorts last). NaN when n = 0. */
double tai_quantile(double *v, int n, double q);

/* ---- autotune.c ---- */

typedef struct {
    double power, clip, scale_mul;
    double score_sum;
    int scored;
} tai_candidate;

typedef struct {
    int active;             /* searching */
    int steps_left;         /* step boundaries until the lock-in */
    int n;
    tai_candidate *cand;
    uint64_t calls;
} tai_tune;

/* Starts a search when cfg->auto_tune (candidates within the auto_tune_*
 * ranges; candidate 0 is the configuration in force, clamped). 0 or nonzero. */
int tai_tune_begin(tai_tune *t, const tk_config *cfg);
void tai_tune_free(tai_tune *t);
/* The config the next call runs under (candidate of this call), or NULL when
 * not searching. `scratch` receives the copy. Returns the candidate index in *idx. */
const tk_config *tai_tune_config(tai_tune *t, const tk_config *cfg, tk_config *scratch, int *idx);
/* Scores a call of candidate idx by its result. */
void tai_tune_score(tai_tune *t, int idx, const tk_result *res);
/* The best candidate (lowest mean score; candidates never scored lose). */
const tai_candidate *tai_tune_best(const tai_tune *t);
/* Score of one call: quality_raw rel-L2 mean + denominator penalty; +inf
 * when the call fell back; NaN when it measured nothing. */
double tai_tune_call_score(const tk_result *res);

#endif

/*
 * agent.h -- what a sampler includes. The agent runs the attention kernels
 * for the host, gates them by sigma and layer, measures them, streams
 * per-step stats over nng and applies knob changes at step boundaries.
 * Public prefix ta_.
 *
 * Life of a host:
 *   ta_open(&opts, &agent, err, sizeof err);
 *   ta_run_begin(agent, steps, "flux1", "euler", err, ...);
 *   for each step:  ta_step_begin(agent, step, sigma);
 *                   for each layer: ta_attention(agent, &call, &res);
 *                                   if (res.reason != TK_REASON_NONE)
 *                                       host's exact attention (or ta_exact_attention)
 *                   ta_step_end(agent);
 *   ta_run_end(agent, TA_RUN_FINISHED, "");
 *   ta_close(agent);
 *
 * Threading: the host calls every function from one thread. The agent's
 * own threads do the I/O (publishing, the control socket); they never block
 * the host: telemetry goes through a bounded queue whose drops are counted
 * and reported. Knob changes arriving from the console are validated at
 * once, queued, and applied atomically at the next ta_step_begin, never in
 * the middle of a step.
 *
 * Errors: functions return 0 (TA_OK) or nonzero with a message in the
 * caller's buffer. A FALLBACK from ta_attention is not an error.
 *
 * Ownership: the agent copies everything it keeps from the options; the
 * caller keeps ownership of tensors passed to ta_attention.
 *
 * Gates (agent/gates.c), checked before the kernels' own tk_check:
 *   mode = exact             -> FALLBACK `disabled`: approximation is off and
 *                               the host runs its exact attention (or
 *                               ta_exact_attention); the agent never spends
 *                               its own exact path on a host that has one.
 *   layer outside the mode's range (taylor_layer_start/end for taylor,
 *     hybrid_layer_start/end for hybrid; -1 = open)  -> `skipped_by_layer`
 *   taylor_sigma_max > 0 and sigma > it               -> `skipped_by_sigma`
 *   a NULL tensor, a size <= 0, a block index outside the model
 *                                                     -> `unsupported_shape`
 * then the kernels' limits and data checks give the other reasons (SPEC 6).
 * The model's grid (text_tokens, grid_h x grid_w) is passed to the kernels
 * only for calls with Nq = Nk = the model's token count.
 *
 * Runs: between ta_run_end and the next ta_run_begin nothing is published;
 * knob changes made then (live or not) are applied at ta_run_begin and are
 * part of the run's initial config. Knobs that are not live are refused
 * while a run is open. Statistics are requested on every quality_every-th
 * call that reaches the kernels (when `stats` is on).
 */
#ifndef TA_AGENT_H
#define TA_AGENT_H

#include <stddef.h>
#include <stdint.h>

#include "kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

#define TA_VERSION "0.1.0"
enum { TA_OK = 0, TA_ERR = 1 };
enum { TA_RUN_FINISHED = 0, TA_RUN_FAILED = 1 };

typedef struct ta_agent ta_agent;

typedef struct {
    const char *name;        /* "flux1" */
    int heads, head_dim;
    int n_double, n_single;  /* global layer = block_index (double) or n_double + block_index */
    int text_tokens;
    int grid_h, grid_w;      /* image tokens (H/16, W/16) */
} ta_model;

typedef struct {
    /* Telemetry endpoint (the PUB URL; control listens beside it, see
     * tp_control_url_for). NULL: the default ipc endpoint (SPEC 8);
     * "" : no telemetry at all. tcp URLs are used as given; "tcp://:PORT"
     * binds 127.0.0.1. */
    const char *endpoint;
    tk_backend backend;
    /* Initial knobs, applied over the defaults; NULL = defaults. Must pass
     * tk_config_validate. */
    const tk_config *knobs;
    ta_model model;
    /* Messages kept for replay (0 = default 4096). */
    int replay_ring;
    /* Bound of the publish queue in messages (0 = default 1024). */
    int queue_len;
    /* Seconds between run header re-sends (0 = default 2). */
    double header_every_s;
} ta_options;

int ta_open(const ta_options *opts, ta_agent **out, char *err, size_t errlen);
void ta_close(ta_agent *a);

/* The PUB URL the agent listens on ("" when telemetry is off). */
const char *ta_endpoint(const ta_agent *a);
/* Number of subscribers seen connected right now (nng pipe count). */
int ta_subscribers(const ta_agent *a);

/* A new run: a fresh run id and sequence, the run header published. */
int ta_run_begin(ta_agent *a, int total_steps, const char *model_name, const char *sampler,
                 char *err, size_t errlen);
int ta_run_end(ta_agent *a, int status, const char *message);
const char *ta_run_id(const ta_agent *a);

/* Step boundaries. step_begin applies queued knob changes first. */
int ta_step_begin(ta_agent *a, int step, double sigma);
int ta_step_end(ta_agent *a);

typedef enum { TA_BLOCK_DOUBLE = 0, TA_BLOCK_SINGLE = 1 } ta_block_type;

/* One attention call (SPEC 1). Tensors as in tk_call; the agent fills the
 * layout, step, sigma, layer from its own state. */
typedef struct {
    int B, H, Nq, Nk, D, Dv;
    tk_dtype dtype;
    const void *q, *k, *v;
    const void *q0, *k0;      /* optional pre-RoPE */
    const uint8_t *key_mask;  /* optional [B,Nk] */
    void *o;
    ta_block_type block_type;
    int block_index;
    double scale;             /* 0 = D^-1/2 */
    void *stream;             /* cudaStream_t for the cuda backend */
} ta_call;

/* Runs the call under the knobs in force (outside a step it runs but is
 * not counted in any step record). Returns TA_OK with *res filled:
 * res->reason == TK_REASON_NONE means o was written; anything else is a
 * FALLBACK (o untouched) that the host answers with exact attention. */
int ta_attention(ta_agent *a, const ta_call *call, tk_result *res);
/* The agent's own exact attention, for hosts that have none. Counted as
 * the host's fallback path in the step's time. */
int ta_exact_attention(ta_agent *a, const ta_call *call, char *err, size_t errlen);

/* Knobs from inside the host (origin "api"): validated, queued, applied
 * at the next step boundary like a console's change. Returns 0 with the
 * step it takes effect at, or nonzero with the validation error. */
int ta_set_knob(ta_agent *a, const char *name, const char *value, int *effective_step, char *err,
                size_t errlen);
/* The knobs in force and their version. */
const tk_config *ta_config(const ta_agent *a);
uint32_t ta_config_version(const ta_agent *a);

/* Telemetry counters. */
uint64_t ta_dropped(const ta_agent *a);
uint64_t ta_published(const ta_agent *a);

#ifdef __cplusplus
}
#endif
#endif /* TA_AGENT_H */

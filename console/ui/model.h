/*
 * model.h -- the console's view model: everything the panels draw, and
 * nothing about how. Data collection (tc_model_apply, fed by decoded
 * tp_msg messages from the live stream, or tc_model_load_* from the SQLite
 * store) is kept apart from drawing (console/ui/panel.h), htop-style.
 *
 * One model holds one run. A message with a different run id starts the
 * model over (a new run on the same agent). Steps are kept in step order,
 * one record per step number; a replayed duplicate replaces nothing.
 *
 * "Not reported" is kept as such: a figure whose TP_HAVE_* bit is clear is
 * NaN here and shows as "n/a" (tc_fmt_*), never as 0.
 *
 * Ownership: a tc_model owns deep copies of everything applied to it; the
 * caller keeps the tp_msg it passed. tc_model_free releases it all (safe
 * on a zeroed model).
 */
#ifndef TC_UI_MODEL_H
#define TC_UI_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "proto.h"

/* Where the data of the shown run come from, and how fresh they are. */
typedef enum {
    TC_CONN_WAITING = 0, /* attached, nothing received yet */
    TC_CONN_LIVE,        /* messages arriving */
    TC_CONN_STALE,       /* nothing for a while (agent gone or paused) */
    TC_CONN_ENDED,       /* run_end received */
    TC_CONN_HISTORY,     /* loaded from the database */
} tc_conn_state;
const char *tc_conn_state_name(tc_conn_state s); /* "waiting" "live" "stale" "ended" "history" */

/* A sequence gap seen on the stream: [from_seq, to_seq] missing. */
typedef struct {
    uint64_t from_seq, to_seq;
    int state;           /* TC_GAP_* */
    int backfill;        /* published before we attached: not a loss, but worth replaying */
} tc_gap;
enum { TC_GAP_OPEN = 0, TC_GAP_ASKED = 1, TC_GAP_RECOVERED = 2, TC_GAP_LOST = 3 };

/* The one knob request the editor has in flight (the REQ socket allows one). */
typedef enum {
    TC_EDIT_IDLE = 0,
    TC_EDIT_SENDING,     /* sent, waiting for the agent's reply */
    TC_EDIT_PENDING,     /* accepted: takes effect at effective_step */
    TC_EDIT_APPLIED,     /* knob_event applied seen */
    TC_EDIT_REJECTED,    /* the agent's validation error is in error[] */
} tc_edit_state;

typedef struct {
    tc_edit_state state;
    char request_id[TP_NAME_LEN];
    char knob[TP_NAME_LEN];
    char value[64];
    int effective_step;       /* -1 unknown */
    char error[256];
} tc_edit;

typedef struct {
    /* the run */
    char run_id[TP_RUN_ID_LEN];
    int have_header;
    tp_header header;             /* deep copy; knobs/reasons owned */
    tk_config config;             /* in force (header.current, then applied knob events) */
    uint32_t config_version;
    int have_config;

    /* steps, in step order */
    tp_step *steps;               /* deep copies; layers owned */
    int n_steps, cap_steps;
    int max_layers;               /* widest layer row seen (heat map width) */

    /* knob events of the run, arrival order */
    tp_knob_event *knob_events;   /* deep copies */
    int n_knob_events, cap_knob_events;

    int ended;
    tp_run_end end;

    /* stream bookkeeping */
    tc_conn_state conn;
    char endpoint[256];           /* where we are attached ("" for history) */
    int64_t first_msg_ns, last_msg_ns; /* local clock, ns */
    uint64_t msgs;                /* messages applied */
    double msg_rate_hz;           /* smoothed messages per second */
    int64_t rate_window_ns;       /* start of the current rate window */
    uint64_t rate_window_msgs;
    uint64_t last_seq;            /* highest seq seen this run */
    uint64_t dropped;             /* agent's drop count (heartbeat) */
    int hb_step, hb_total_steps;
    uint64_t missing;             /* messages missing by sequence, total */
    uint64_t recovered;           /* of them, replayed back */
    uint64_t lost;                /* of them, gone from the agent's ring */
    tc_gap *gaps;
    int n_gaps, cap_gaps;
    uint64_t decode_errors;

    /* the editor's request in flight and the last result */
    tc_edit edit;

    /* history: the run's stored status ("running" "finished" ...) */
    char stored_status[16];
    int64_t stored_started_ns, stored_ended_ns;
} tc_model;

void tc_model_init(tc_model *m);
void tc_model_free(tc_model *m);
/* Drops the run (keeps endpoint and connection counters' meaning: a new run). */
void tc_model_reset_run(tc_model *m);

/* Applies one decoded message received at local time now_ns. A message of
 * another run starts the model over. Replayed messages (seq at or below the
 * highest seen) fill holes and mark gaps recovered. The first message of a
 * run seen past seq 1 (attached late) opens a backfill gap [1, seq-1] that
 * is not counted as missing. Returns 0, or nonzero
 * with err when the message could not be kept (out of memory). */
int tc_model_apply(tc_model *m, const tp_msg *msg, int64_t now_ns, char *err, size_t errlen);
/* Connection upkeep without a message (stale detection, rate decay). */
void tc_model_tick(tc_model *m, int64_t now_ns);
/* Marks a gap's replay outcome: recovered messages come through
 * tc_model_apply; this records how many of [from,to] were gone. */
void tc_model_gap_result(tc_model *m, uint64_t from_seq, uint64_t to_seq, uint64_t gone);

/* Step lookups. */
const tp_step *tc_model_step_at(const tc_model *m, int i);  /* i-th in step order, or NULL */
const tp_step *tc_model_last_step(const tc_model *m);
int tc_model_total_steps(const tc_model *m);  /* header or heartbeat; 0 unknown */
int tc_model_layers(const tc_model *m);       /* header's n_double+n_single, or max rows seen */

/* Run totals of fallbacks by reason (sums the kept steps). */
void tc_model_run_reasons(const tc_model *m, int64_t out[TK_REASON_COUNT]);
/* Worst quality (max rel-L2; NaN if any step's was NaN) over the run;
 * *reported = 0 when no step reported quality. */
double tc_model_worst_quality(const tc_model *m, int *reported);
int64_t tc_model_run_fallbacks(const tc_model *m);

/* Per-step figures the table and sparklines show (check s->have first). */
double tc_step_worst_quality(const tp_step *s); /* quality_raw_max (TP_HAVE_QUALITY) */
double tc_step_fallback_share(const tp_step *s);/* n_fallback / calls; 0 with no calls */

/* Heat-map metrics over tp_layer_row, cycled with a key. */
typedef enum {
    TC_METRIC_QUALITY_RAW = 0, /* quality_raw_mean (log) */
    TC_METRIC_QUALITY_EFF,     /* quality_eff_mean (log) */
    TC_METRIC_DEN_MIN,         /* den_min (log) */
    TC_METRIC_QK_P99,          /* qk_p99 */
    TC_METRIC_FALLBACKS,       /* fallbacks / calls */
    TC_METRIC_ATTN_MS,         /* attn_ms */
    TC_METRIC_WINDOW_MASS,     /* window_mass_mean */
    TC_METRIC_COUNT
} tc_metric;
const char *tc_metric_name(tc_metric m);
int tc_metric_log_scale(tc_metric m);
/* Fills *out and returns 1 when the row reported the figure, 0 when not. */
int tc_metric_value(tc_metric m, const tp_layer_row *r, double *out);

/* Knob values in force, formatted; "n/a" when no config is known. */
const char *tc_model_knob_value(const tc_model *m, const char *knob, char *buf, size_t len);

/* Formatting: "n/a" when not reported; non-finite reported values as
 * "nan" "inf" "-inf"; else %g-ish with `sig` significant digits. */
const char *tc_fmt_num(double v, int reported, int sig, char *buf, size_t len);
const char *tc_fmt_int(int64_t v, int reported, char *buf, size_t len);
const char *tc_fmt_duration(double seconds, char *buf, size_t len); /* "1h02m" "3m04s" "12.3s" */

/* Deep copies (exposed for the store loader and tests). 0 or nonzero on OOM. */
int tc_copy_step(tp_step *dst, const tp_step *src);
void tc_free_step(tp_step *s);
int tc_copy_header(tp_header *dst, const tp_header *src);
void tc_free_header(tp_header *h);
int tc_copy_knob_event(tp_knob_event *dst, const tp_knob_event *src);
void tc_free_knob_event(tp_knob_event *e);

/* Adds a step record directly (store loader): copies it into step order. */
int tc_model_put_step(tc_model *m, const tp_step *s, char *err, size_t errlen);
int tc_model_put_knob_event(tc_model *m, const tp_knob_event *e, char *err, size_t errlen);
int tc_model_put_header(tc_model *m, const tp_header *h, char *err, size_t errlen);

#endif /* TC_UI_MODEL_H */

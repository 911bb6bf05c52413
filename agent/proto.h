/*
 * proto.h -- the agent <-> console wire protocol (SPEC 8): message structs,
 * and the MessagePack codec that the agent and the console both link.
 * docs/PROTOCOL.md is the byte-level definition (envelope table, every
 * field); this header is its C mirror. Public prefix tp_.
 *
 * Transport: stats and events on an nng PUB socket (console: SUB); control
 * on an nng REP socket (console: REQ). Every PUB message carries protocol
 * version, run id and a per-run sequence number (1, 2, 3, ... with no holes
 * on the agent side; a hole seen by a subscriber is a gap to replay).
 *
 * Non-finite numbers travel as MessagePack float64 NaN/+Inf/-Inf and
 * survive the trip. "Not reported" is a missing map key, decoded as NaN
 * with the field's bit clear in `have` (see the TP_HAVE_* bits).
 *
 * Ownership: tp_decode_* fill caller structs and allocate the variable-size
 * arrays inside them; free with tp_msg_free / tp_request_free /
 * tp_reply_free (safe on zeroed structs). tp_encode_* append to a tp_buf
 * that the caller frees with tp_buf_free.
 */
#ifndef TP_PROTO_H
#define TP_PROTO_H

#include <stddef.h>
#include <stdint.h>

#include "kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

#define TP_PROTOCOL_VERSION 1
#define TP_MAX_MESSAGE_BYTES (4u << 20) /* larger messages are refused */
#define TP_RUN_ID_LEN 40                /* run ids are printable, < 40 chars */
#define TP_NAME_LEN 64

/* A growable byte buffer. */
typedef struct {
    char *data;
    size_t len, cap;
} tp_buf;
void tp_buf_free(tp_buf *b);

/* ------------------------------------------------------------------ */
/* PUB messages                                                        */
/* ------------------------------------------------------------------ */

typedef enum {
    TP_MSG_HEADER = 1,     /* run header: model, shapes, knob table, reasons, config; re-sent */
    TP_MSG_STEP = 2,       /* one step's record plus its per-layer rows */
    TP_MSG_KNOB_EVENT = 3, /* a knob change requested / applied / rejected */
    TP_MSG_RUN_END = 4,    /* finished or failed */
    TP_MSG_HEARTBEAT = 5,  /* alive; dropped-message count */
} tp_msg_type;
const char *tp_msg_type_name(tp_msg_type t); /* "header" "step" "knob_event" "run_end" "heartbeat" */

typedef struct {
    char name[TP_NAME_LEN];  /* "flux1" */
    int heads, head_dim;
    int n_double, n_single;  /* block counts; layers = n_double + n_single */
    int text_tokens, grid_h, grid_w;
} tp_model;

/* A knob as described in the header (mirror of tk_knob, by value). */
typedef struct {
    char name[TP_NAME_LEN];
    char type[8];            /* "bool" "int" "float" "enum" */
    char group[16];
    int live;
    double def, min, max;
    char choices[96];        /* "a|b|c" or "" */
    char description[160];
} tp_knob_desc;

typedef struct {
    char agent_id[TP_NAME_LEN];   /* "host:pid" of the sampler process */
    char agent_version[16];
    char model_name[TP_NAME_LEN]; /* as the host named it in run_begin */
    char sampler[TP_NAME_LEN];
    char backend[8];              /* "ref" "cpu" "cuda" */
    tp_model model;
    int total_steps;
    int64_t started_ns;           /* unix time ns */
    int n_knobs;
    tp_knob_desc *knobs;          /* knob table */
    int n_reasons;
    char (*reasons)[TP_NAME_LEN]; /* reason names by code */
    tk_config initial;            /* config at run start */
    tk_config current;            /* config in force when this header was sent */
    uint32_t config_version;      /* version of `current` (initial = 1) */
    int last_step;                /* last step ended, -1 none */
} tp_header;

/* Bits of `have` in tp_layer_row and tp_step: which figures were reported. */
enum {
    TP_HAVE_QUALITY = 1u << 0, /* quality_raw_*, quality_eff_*, cos_min */
    TP_HAVE_DENOMS = 1u << 1,  /* den_* */
    TP_HAVE_QK = 1u << 2,      /* qk_* and norms */
    TP_HAVE_WINDOW = 1u << 3,  /* window_mass */
    TP_HAVE_TIME = 1u << 4,    /* attn_ms */
};

/* One row per global layer per step: the heat map's data. */
typedef struct {
    int layer;
    int calls;                 /* attention calls of this layer this step */
    int fallbacks;
    int path;                  /* tk_path of the last call */
    int reason;                /* tk_reason of the last fallback (NONE if none) */
    unsigned have;             /* TP_HAVE_* */
    double quality_raw_mean;   /* mean rel-L2 vs exact, unmodified q/k */
    double quality_raw_max;
    double quality_eff_mean;   /* mean rel-L2 vs exact, modified q/k */
    double quality_eff_max;
    double cos_min;
    double den_min;
    int64_t den_le_eps;
    int64_t den_nonfinite;
    double qk_p99;             /* sampled scaled q.k */
    double qk_max;
    double q_norm_mean, k_norm_mean;
    double window_mass_mean;   /* hybrid */
    int window;                /* W or r in force, 0 full, -1 n/a */
    double w;                  /* far weight in force */
    int64_t R;
    double attn_ms;            /* kernel time of the layer's calls */
} tp_layer_row;

typedef struct {
    int step;
    double sigma;
    double wall_ms;              /* host step time, step_begin to step_end */
    double attn_ms;              /* time inside attention calls */
    uint32_t config_version;     /* version of the knobs in force */
    int calls;
    int n_exact, n_taylor, n_hybrid, n_fallback; /* by path taken */
    int64_t reason_counts[TK_REASON_COUNT];      /* fallbacks by reason */
    int64_t probe_fallbacks;     /* denominator_too_small at the probe stage */
    unsigned have;               /* TP_HAVE_* */
    /* quality over the step's calls (rel-L2 of sampled queries) */
    double quality_raw_mean, quality_raw_p50, quality_raw_p95, quality_raw_max;
    double quality_eff_mean, quality_eff_p50, quality_eff_p95, quality_eff_max;
    double cos_min;
    double den_min, den_max, den_mean;
    int64_t den_le_eps, den_nonfinite;
    double qk_p50, qk_p99, qk_max;   /* max over calls of each call's figure */
    double q_norm_mean, k_norm_mean;
    double window_mass_mean, window_mass_min;
    int window;                  /* window in force at this step, -1 n/a */
    double w;                    /* far weight in force */
    int n_layers;
    tp_layer_row *layers;        /* n_layers rows (empty when per_layer_records off) */
} tp_step;

typedef enum {
    TP_KNOB_REQUESTED = 0, /* validated and queued for the next step boundary */
    TP_KNOB_APPLIED = 1,   /* in force from `effective_step` */
    TP_KNOB_REJECTED = 2,  /* validation failed; nothing changed */
} tp_knob_status;
const char *tp_knob_status_name(tp_knob_status s); /* "requested" "applied" "rejected" */

typedef struct {
    char name[TP_NAME_LEN];
    char value[64];        /* as text, e.g. "0.5", "true", "hybrid" */
    char old_value[64];    /* before the change ("" when requested/rejected) */
} tp_knob_change;

typedef struct {
    char request_id[TP_NAME_LEN]; /* client's id ("" for autotune/initial) */
    char origin[16];              /* "console" "api" "autotune" "cli" */
    tp_knob_status status;
    uint32_t config_version;      /* version after applying (applied), or expected (requested) */
    int effective_step;           /* step the change takes (took) effect at; -1 unknown */
    char error[256];              /* rejected: the validation message */
    int n_changes;
    tp_knob_change *changes;
} tp_knob_event;

typedef struct {
    char status[16];       /* "finished" | "failed" */
    int steps_done;
    char message[256];
} tp_run_end;

typedef struct {
    uint64_t dropped;      /* messages dropped by the agent's bounded queue, this run */
    uint64_t last_seq;     /* highest sequence number published so far */
    int step;              /* current step, -1 before the first */
    int total_steps;
} tp_heartbeat;

typedef struct {
    tp_msg_type type;
    uint32_t version;             /* protocol version of the sender */
    char run_id[TP_RUN_ID_LEN];
    uint64_t seq;                 /* per-run sequence number */
    int64_t t_ns;                 /* sender's unix time, ns */
    union {
        tp_header header;
        tp_step step;
        tp_knob_event knob;
        tp_run_end end;
        tp_heartbeat hb;
    } u;
} tp_msg;

int tp_encode_msg(const tp_msg *m, tp_buf *out, char *err, size_t errlen);
int tp_decode_msg(const void *data, size_t len, tp_msg *out, char *err, size_t errlen);
void tp_msg_free(tp_msg *m);

/* ------------------------------------------------------------------ */
/* Control: REQ (console) -> REP (agent)                               */
/* ------------------------------------------------------------------ */

typedef enum {
    TP_OP_GET_STATE = 1, /* run id, step, config version, counters */
    TP_OP_GET_KNOBS = 2, /* knob table and current values */
    TP_OP_SET_KNOBS = 3, /* validate, queue for the next step boundary, ack */
    TP_OP_REPLAY = 4,    /* re-publish [from_seq, to_seq] from the ring, returned in the reply */
} tp_op;
const char *tp_op_name(tp_op op); /* "get_state" "get_knobs" "set_knobs" "replay" */

typedef struct {
    uint32_t version;
    tp_op op;
    char request_id[TP_NAME_LEN];  /* set_knobs: a resend with the same id applies once */
    char origin[16];               /* who asks: "console", "cli", ... */
    int64_t expected_version;      /* set_knobs: refuse unless current version matches; -1 any */
    int n_changes;
    tp_knob_change *changes;       /* set_knobs */
    char run_id[TP_RUN_ID_LEN];    /* replay: which run ("" = current) */
    uint64_t from_seq, to_seq;     /* replay: inclusive range */
} tp_request;

typedef struct {
    uint32_t version;
    int ok;                        /* 1 ok, 0 error */
    char error[256];               /* when !ok: what was wrong (names the knob and range) */
    char run_id[TP_RUN_ID_LEN];
    int step;                      /* current step (-1 before the first) */
    int total_steps;
    uint32_t config_version;       /* after the request */
    int effective_step;            /* set_knobs: the step the change takes effect at */
    int duplicate;                 /* set_knobs: the request id was seen before; nothing re-applied */
    uint64_t last_seq, dropped;
    int has_config;
    tk_config config;              /* get_knobs/set_knobs: values in force (or pending) */
    int n_messages;                /* replay: the messages found, encoded as PUB messages */
    tp_buf *messages;
    uint64_t replay_first_missing; /* replay: first seq no longer in the ring (0 = none missing) */
    uint64_t replay_missing;       /* replay: how many of the range were gone */
} tp_reply;

int tp_encode_request(const tp_request *r, tp_buf *out, char *err, size_t errlen);
int tp_decode_request(const void *data, size_t len, tp_request *out, char *err, size_t errlen);
void tp_request_free(tp_request *r);
int tp_encode_reply(const tp_reply *r, tp_buf *out, char *err, size_t errlen);
int tp_decode_reply(const void *data, size_t len, tp_reply *out, char *err, size_t errlen);
void tp_reply_free(tp_reply *r);

/* One text line for people and scripts (`taylorscope tap`). */
int tp_msg_to_text(const tp_msg *m, tp_buf *out);

/* Default endpoints (SPEC 8): ipc in a per-user 0700 directory
 * ($XDG_RUNTIME_DIR/taylorscope or /tmp/taylorscope-$UID), socket mode 0600.
 * Fills "ipc:///.../agent-<name>.pub" and ".ctl". Creates the directory.
 * Returns 0 or nonzero with err. */
int tp_default_endpoints(const char *name, char *pub_url, size_t pub_len, char *ctl_url,
                         size_t ctl_len, char *err, size_t errlen);
/* The agents listening on the default endpoints right now: the sockets
 * agent-*.pub in the default directory that accept a connection (sockets a
 * killed agent left behind are skipped). Writes up to max PUB URLs, each
 * url_len bytes, into urls (max * url_len bytes); *found = how many live
 * agents there are (may exceed max). dir (may be NULL) receives the folder
 * searched. Returns 0, or nonzero with err when the folder is unusable. */
int tp_find_default_agents(char *urls, size_t url_len, int max, int *found, char *dir,
                           size_t dir_len, char *err, size_t errlen);
/* A control URL from a PUB URL: the agent listens on both; given one, the
 * console derives the other ("...pub" -> "...ctl"; tcp port + 1). */
int tp_control_url_for(const char *pub_url, char *ctl_url, size_t len, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif
#endif /* TP_PROTO_H */

/*
 * kernels.h -- the attention call: its inputs, its parameters (the knobs),
 * its result (an output plus stats, or a fallback reason), and the backends.
 *
 * Public prefix tk_. The math is written once, in docs/MATH.md; each backend
 * (kernels/ref, kernels/cpu, kernels/cuda) implements it and is tested
 * against ref, the fp64 oracle.
 *
 * Errors: functions that can fail return 0 (TK_OK) or a nonzero status and
 * fill a caller-supplied message buffer. A FALLBACK is not an error: it is a
 * result with a reason (tk_result.reason != TK_REASON_NONE) and no output.
 */
#ifndef TK_KERNELS_H
#define TK_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TK_VERSION "0.1.0"

enum { TK_OK = 0, TK_ERR = 1, TK_ERR_NOMEM = 2, TK_ERR_UNSUPPORTED = 3 };

/* ------------------------------------------------------------------ */
/* Enumerations                                                        */
/* ------------------------------------------------------------------ */

typedef enum { TK_DTYPE_F32 = 0, TK_DTYPE_F16 = 1, TK_DTYPE_BF16 = 2 } tk_dtype;

/* Order matches the choices of the `mode` knob in knobs.def. */
typedef enum { TK_MODE_EXACT = 0, TK_MODE_TAYLOR = 1, TK_MODE_HYBRID = 2 } tk_mode;

typedef enum { TK_BACKEND_REF = 0, TK_BACKEND_CPU = 1, TK_BACKEND_CUDA = 2 } tk_backend;

/* Order matches the `window_shape` and `combine` knob choices. */
typedef enum { TK_WINDOW_1D = 0, TK_WINDOW_2D = 1 } tk_window_shape;
typedef enum { TK_COMBINE_ADDITIVE = 0, TK_COMBINE_NORMALIZED = 1 } tk_combine;

/*
 * Fallback reasons (SPEC 6). The one list: stable names used by the
 * protocol, the database and the console. Never renumber; append.
 */
#define TK_REASONS(X)                                   \
    X(NONE, "none")                                     \
    X(DISABLED, "disabled")                             \
    X(SKIPPED_BY_SIGMA, "skipped_by_sigma")             \
    X(SKIPPED_BY_LAYER, "skipped_by_layer")             \
    X(CROSS_ATTENTION_DISABLED, "cross_attention_disabled") \
    X(BELOW_MIN_TOKENS, "below_min_tokens")             \
    X(HEAD_DIM_TOO_LARGE, "head_dim_too_large")         \
    X(FEATURE_DIM_TOO_LARGE, "feature_dim_too_large")   \
    X(SUB_HEAD_BLOCK_MISMATCH, "sub_head_block_mismatch") \
    X(UNSUPPORTED_MASK, "unsupported_mask")             \
    X(UNSUPPORTED_SHAPE, "unsupported_shape")           \
    X(BAD_INPUT, "bad_input")                           \
    X(DENOMINATOR_INVALID, "denominator_invalid")       \
    X(DENOMINATOR_TOO_SMALL, "denominator_too_small")   \
    X(OUT_OF_MEMORY, "out_of_memory")                   \
    X(BACKEND_ERROR, "backend_error")

#define TK_REASON_ENUM_(id, name) TK_REASON_##id,
typedef enum { TK_REASONS(TK_REASON_ENUM_) TK_REASON_COUNT } tk_reason;
#undef TK_REASON_ENUM_

/* Stage of a denominator_too_small fallback. */
typedef enum { TK_STAGE_NONE = 0, TK_STAGE_PROBE = 1, TK_STAGE_FULL = 2 } tk_stage;

/* The path a call actually took. */
typedef enum {
    TK_PATH_FALLBACK = 0, /* nothing written: the host runs exact attention */
    TK_PATH_EXACT = 1,
    TK_PATH_TAYLOR = 2,
    TK_PATH_HYBRID = 3,
} tk_path;

const char *tk_reason_name(tk_reason r);              /* "none" .. "backend_error" */
int tk_reason_from_name(const char *name, tk_reason *out); /* 0 ok, -1 unknown */
const char *tk_stage_name(tk_stage s);                /* "none" | "probe" | "full" */
const char *tk_path_name(tk_path p);                  /* "fallback" | "exact" | ... */
const char *tk_backend_name(tk_backend b);            /* "ref" | "cpu" | "cuda" */
int tk_backend_from_name(const char *name, tk_backend *out);
const char *tk_dtype_name(tk_dtype d);                /* "f32" | "f16" | "bf16" */
size_t tk_dtype_size(tk_dtype d);

/* ------------------------------------------------------------------ */
/* Knobs: the config struct generated from knobs.def                   */
/* ------------------------------------------------------------------ */

#define TK_KNOB_FIELD_BOOL int
#define TK_KNOB_FIELD_INT int
#define TK_KNOB_FIELD_ENUM int
#define TK_KNOB_FIELD_FLOAT double
#define KNOB(name, type, group, live, def, lo, hi, choices, desc) TK_KNOB_FIELD_##type name;
typedef struct {
#include "knobs.def"
} tk_config;
#undef KNOB

typedef enum { TK_KNOB_BOOL, TK_KNOB_INT, TK_KNOB_FLOAT, TK_KNOB_ENUM } tk_knob_type;

typedef struct {
    const char *name;        /* "qk_norm_power" */
    tk_knob_type type;
    const char *group;       /* "QK", "GATE", ... */
    int live;                /* 1 = may change mid-run */
    double def, min, max;    /* default and inclusive bounds (INT/FLOAT) */
    const char *choices;     /* "a|b|c" for ENUM, "" otherwise */
    const char *description; /* one line */
    size_t offset;           /* offset of the field in tk_config */
} tk_knob;

int tk_knob_count(void);
const tk_knob *tk_knob_at(int i);              /* table order */
const tk_knob *tk_knob_find(const char *name); /* accepts '-' for '_'; NULL if unknown */
void tk_config_defaults(tk_config *c);
/* Parse and validate one value ("true"/"false"/"1"/"0" for BOOL, a choice name
 * or index for ENUM). On error returns nonzero, names the knob and the allowed
 * range in err, and leaves *c unchanged. */
int tk_config_set(tk_config *c, const char *name, const char *value, char *err, size_t errlen);
/* Value as double (BOOL/INT/ENUM widen exactly). */
double tk_config_get(const tk_config *c, const tk_knob *k);
/* Set from a double after validation (range, integrality, enum index). */
int tk_config_set_number(tk_config *c, const tk_knob *k, double v, char *err, size_t errlen);
/* Formats the value ("0.5", "true", "hybrid"); returns buf. */
const char *tk_config_format(const tk_config *c, const tk_knob *k, char *buf, size_t len);
/* Whole-config checks that no single knob can make (e.g. min > max pairs).
 * Returns 0 or nonzero with a message. */
int tk_config_validate(const tk_config *c, char *err, size_t errlen);
/* Name of choice i of an ENUM knob, or NULL. */
const char *tk_knob_choice(const tk_knob *k, int i, char *buf, size_t len);

/* ------------------------------------------------------------------ */
/* Feature map (SPEC 3)                                                */
/* ------------------------------------------------------------------ */

/* R(d,P) = C(d+P-1, P-1): number of monomials of degree < P in d variables.
 * Returns -1 on overflow past INT64_MAX. */
int64_t taylor_feature_count(int d, int terms);

/* ------------------------------------------------------------------ */
/* The call (SPEC 1)                                                   */
/* ------------------------------------------------------------------ */

/*
 * Tensors are contiguous, layout [B,H,N,D]. For the ref and cpu backends
 * they live in host memory and dtype must be F32; for cuda they are device
 * pointers. The call does not own any pointer. o is written only when the
 * result's reason is TK_REASON_NONE.
 */
typedef struct {
    int B, H, Nq, Nk, D, Dv;
    tk_dtype dtype;
    const void *q;          /* [B,H,Nq,D] post-RoPE */
    const void *k;          /* [B,H,Nk,D] post-RoPE */
    const void *v;          /* [B,H,Nk,Dv] */
    const void *q0;         /* optional [B,H,Nq,D] pre-RoPE (hybrid far term), may be NULL */
    const void *k0;         /* optional [B,H,Nk,D] pre-RoPE, may be NULL */
    const uint8_t *key_mask;/* optional [B,Nk], nonzero = key kept; host memory (cuda: device) */
    void *o;                /* [B,H,Nq,Dv] output, v's dtype */
    int text_tokens;        /* first text_tokens tokens are text */
    int grid_h, grid_w;     /* image tokens after the text, row-major; 0,0 = no grid */
    double scale;           /* exact-attention scale s0; 0 = D^-1/2 */
    int layer;              /* global layer (PCA cache key, stats); -1 unknown */
    int step;               /* sampling step (PCA refit policy) */
    double sigma;           /* sigma of the step (schedules, gates) */
    void *stream;           /* cudaStream_t for the cuda backend; NULL = default */
} tk_call;

/* ------------------------------------------------------------------ */
/* Statistics (SPEC 5)                                                 */
/* ------------------------------------------------------------------ */

typedef struct {
    int quality_samples; /* sampled queries (all heads) for quality; 0 = none */
    int qk_samples;      /* side of the q.k sample (64 -> 64x64); 0 = none */
    uint64_t seed;       /* sample seed */
} tk_stats_request;

/* A distribution summary. n = number of values summarized (0 = not reported). */
typedef struct {
    double min, mean, p50, p90, p99, max;
    int64_t n;
} tk_dist;

/* Error of the output against an exact reference on the sampled queries.
 * rel-L2 per (query, head): ||o - e|| / ||e||. n = 0: not reported. */
typedef struct {
    double rel_l2_mean, rel_l2_p95, rel_l2_max;
    double cos_min, cos_mean;
    double abs_err_mean, abs_err_max;
    int64_t n;
} tk_quality;

typedef struct {
    double min, max, mean;
    int64_t n;           /* denominators summarized (0 = not reported) */
    int64_t n_le_eps;    /* count <= eps (before clamping) */
    int64_t n_nonfinite; /* NaN or Inf */
} tk_denoms;

/* Bits of tk_stats.have: which groups were measured. */
enum {
    TK_HAVE_QUALITY = 1u << 0,
    TK_HAVE_DENOMS = 1u << 1,
    TK_HAVE_NORMS = 1u << 2,
    TK_HAVE_QK = 1u << 3,
    TK_HAVE_WINDOW_MASS = 1u << 4,
    TK_HAVE_TIME = 1u << 5,
};

typedef struct {
    unsigned have;           /* TK_HAVE_* bits */
    tk_quality quality_raw;  /* vs exact on unmodified q/k with s0 */
    tk_quality quality_eff;  /* vs exact on modified q/k with the modified scale */
    tk_denoms den;           /* Taylor den, or far-field den (hybrid) */
    tk_dist q_norm_raw, k_norm_raw, q_norm_mod, k_norm_mod;
    tk_dist qk;              /* sampled scaled q.k (s0 * q.k, unmodified) */
    tk_dist window_mass;     /* hybrid: exact softmax mass inside the window */
    double kernel_ms;        /* kernel time (device events on GPU) */
} tk_stats;

/* ------------------------------------------------------------------ */
/* Result                                                              */
/* ------------------------------------------------------------------ */

typedef struct {
    tk_reason reason;        /* TK_REASON_NONE: o written */
    tk_stage stage;          /* for denominator_too_small */
    tk_path path;            /* path taken (FALLBACK when reason != NONE) */
    char detail[192];        /* human-readable detail of the reason, e.g. "R=366145 > 20000";
                                with reason NONE empty, or why requested stats are missing
                                (the output stands: "no stats: ...") */
    int64_t R;               /* feature count used (Taylor: per slice; hybrid: far field) */
    int window;              /* window W/r in force (hybrid), -1 n/a, 0 = full */
    double w;                /* far weight in force (hybrid) */
    tk_stats stats;          /* filled when stats were requested and the call ran */
} tk_result;

/* ------------------------------------------------------------------ */
/* Context and entry points                                            */
/* ------------------------------------------------------------------ */

/*
 * A context holds a backend's long-lived state: threads, workspaces, the
 * per-(layer, head) PCA cache of the hybrid far field. One context is used
 * from one thread at a time. tk_context_open returns 0 and *out (caller
 * frees with tk_context_close), or nonzero with err filled and *out NULL.
 */
typedef struct tk_context tk_context;

int tk_context_open(tk_backend backend, tk_context **out, char *err, size_t errlen);
void tk_context_close(tk_context *ctx);
tk_backend tk_context_backend(const tk_context *ctx);
/* Forget cached PCA projections (a new run). */
void tk_context_reset(tk_context *ctx);
/* 1 if the backend was compiled in and a device is present. */
int tk_backend_available(tk_backend b);

/* Schedules of sigma (SPEC 4). */
int tk_window_at(const tk_config *c, double sigma);      /* W or r; 0 = full */
double tk_far_weight_at(const tk_config *c, double sigma);

/*
 * "Can this call run in this mode, and if not, why" (ggml's supports_op,
 * returning a reason). Checks shapes, dtype for the backend, sigma gate,
 * limits, sub-head division, mask. Does not read tensor data. Fills
 * detail (may be NULL) with a human-readable explanation.
 */
tk_reason tk_check(const tk_context *ctx, const tk_call *call, const tk_config *cfg,
                   tk_mode mode, char *detail, size_t detail_len);

/*
 * Runs one attention call in `mode`. stats_req NULL = no stats.
 * Returns TK_OK with *res filled (check res->reason: NONE = output written,
 * anything else = FALLBACK, o untouched). Returns nonzero only for misuse
 * (NULL pointers); every condition of the data is a reason, never an abort.
 */
int tk_attention(tk_context *ctx, const tk_call *call, const tk_config *cfg, tk_mode mode,
                 const tk_stats_request *stats_req, tk_result *res);

#ifdef __cplusplus
}
#endif
#endif /* TK_KERNELS_H */

/*
 * taylor-attn -- one attention call on tensor files.
 *
 *   taylor-attn --mode taylor --terms 4 --sub-head-blocks 4 \
 *               --q q.npy --k k.npy --v v.npy --out o.npy [--stats]
 *
 * Every knob of kernels/knobs.def is an option `--name value` (with '-' or
 * '_'), parsed by tk_config_set; the options below are the call's own inputs.
 * Exit status: 0 output written, 3 fallback (reason on stderr, no output
 * file), 2 bad input (option, file, shape), 1 internal error.
 */
#include "kernels.h"
#include "tensorfile.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { EXIT_OUTPUT = 0, EXIT_INTERNAL = 1, EXIT_BAD_INPUT = 2, EXIT_FALLBACK = 3 };

#ifdef TK_HAVE_CUDA
/* The cuda backend takes device pointers (kernels.h). These four CUDA
 * runtime entry points (C linkage, cudaError_t is an int-sized enum, 0 =
 * success; cudaMemcpyKind 1 = host to device, 2 = device to host) are all
 * this program needs, declared here so a plain C compile needs no CUDA
 * headers; the binary links cudart when CUDA is built (Makefile). */
extern int cudaMalloc(void **ptr, size_t bytes);
extern int cudaFree(void *ptr);
extern int cudaMemcpy(void *dst, const void *src, size_t bytes, int kind);
extern int cudaDeviceSynchronize(void);
enum { H2D = 1, D2H = 2 };

/* Copies n bytes of host to a new device buffer; NULL host gives NULL. */
static int to_device(const void *host, size_t n, void **dev) {
    *dev = NULL;
    if (!host) return 0;
    if (cudaMalloc(dev, n ? n : 1) != 0) {
        *dev = NULL;
        return -1;
    }
    return cudaMemcpy(*dev, host, n, H2D) != 0 ? -1 : 0;
}
#endif

static void usage(FILE *f) {
    fprintf(f,
            "usage: taylor-attn --q FILE --k FILE --v FILE --out FILE [options]\n"
            "\n"
            "Runs one exact, Taylor or hybrid attention call on tensor files.\n"
            "Tensors are .npy (f32, f16) or .safetensors (F32, F16, BF16; name a tensor\n"
            "of a file holding several as FILE.safetensors:NAME), layout [B,H,N,D]:\n"
            "q [B,H,Nq,D], k [B,H,Nk,D], v [B,H,Nk,Dv]; the output is o [B,H,Nq,Dv],\n"
            "in the format of --out's extension and v's dtype (f32 when .npy cannot\n"
            "hold it), written atomically (temporary file, then rename).\n"
            "\n"
            "Inputs of the call:\n"
            "  --q FILE --k FILE --v FILE   post-RoPE q, k and v (required)\n"
            "  --out FILE                   output tensor (required)\n"
            "  --q0 FILE --k0 FILE          pre-RoPE q and k for the hybrid far field\n"
            "  --mask FILE                  key-padding mask [B,Nk], 1 = key kept, 0 = masked\n"
            "  --text-tokens N              the first N tokens are text (default 0)\n"
            "  --grid HxW                   image tokens after the text, row-major\n"
            "  --backend ref|cpu|cuda       backend (default cpu; cuda: tensors are copied to\n"
            "                               the GPU and the output back, f32)\n"
            "  --layer N  --step N          global layer (-1 unknown) and sampling step\n"
            "  --sigma S                    sigma of the step (schedules, gates; default 0)\n"
            "  --scale S                    exact-attention scale s0 (default D^-1/2)\n"
            "  --stats                      print the call's result and stats as one JSON\n"
            "                               object on stdout (also on a fallback)\n"
            "\n"
            "Knobs (every row of docs/KNOBS.md):\n"
            "  --NAME VALUE, --NAME=VALUE   e.g. --mode hybrid --terms 4 --qk-norm-power 0.5\n"
            "                               (--mode exact|taylor|hybrid, default taylor)\n"
            "  --NAME                       a true/false knob alone means true\n"
            "\n"
            "  -h, --help                   this help\n"
            "  --version                    print the version\n"
            "\n"
            "JSON: numbers are JSON numbers; the non-finite values are the strings \"NaN\",\n"
            "\"Infinity\" and \"-Infinity\"; a field that was not measured is omitted.\n"
            "\n"
            "Exit status: 0 output written, 3 fallback (reason and detail on stderr, no\n"
            "output file written), 2 bad input (option, file or shape), 1 internal error.\n");
}

/* ------------------------------------------------------------------ */
/* Options                                                             */
/* ------------------------------------------------------------------ */

typedef struct {
    const char *q, *k, *v, *q0, *k0, *mask, *out;
    int text_tokens, grid_h, grid_w, layer, step;
    double sigma, scale;
    int print_stats;
    tk_backend backend;
    tk_config cfg;
} options;

/* The call's own options (not knobs), '_' spelling. */
static const char *const call_options[] = {"q", "k", "v", "q0", "k0", "mask", "out", "text_tokens",
                                           "grid", "backend", "layer", "step", "sigma", "scale", NULL};

static int is_call_option(const char *name) {
    for (int i = 0; call_options[i]; i++)
        if (!strcmp(call_options[i], name)) return 1;
    return 0;
}

static int parse_int(const char *opt, const char *s, long lo, long hi, int *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (end == s || *end || errno == ERANGE || v < lo || v > hi) {
        fprintf(stderr, "taylor-attn: --%s: '%s' is not an integer in [%ld, %ld]\n", opt, s, lo, hi);
        return -1;
    }
    *out = (int)v;
    return 0;
}

static int parse_double(const char *opt, const char *s, double lo, double hi, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || *end || errno == ERANGE || !isfinite(v) || v < lo || v > hi) {
        fprintf(stderr, "taylor-attn: --%s: '%s' is not a number in [%g, %g]\n", opt, s, lo, hi);
        return -1;
    }
    *out = v;
    return 0;
}

static int set_call_option(options *o, const char *name, const char *val) {
    if (!strcmp(name, "q")) o->q = val;
    else if (!strcmp(name, "k")) o->k = val;
    else if (!strcmp(name, "v")) o->v = val;
    else if (!strcmp(name, "q0")) o->q0 = val;
    else if (!strcmp(name, "k0")) o->k0 = val;
    else if (!strcmp(name, "mask")) o->mask = val;
    else if (!strcmp(name, "out")) o->out = val;
    else if (!strcmp(name, "text_tokens")) return parse_int("text-tokens", val, 0, INT_MAX, &o->text_tokens);
    else if (!strcmp(name, "layer")) return parse_int("layer", val, -1, INT_MAX, &o->layer);
    else if (!strcmp(name, "step")) return parse_int("step", val, 0, INT_MAX, &o->step);
    else if (!strcmp(name, "sigma")) return parse_double("sigma", val, 0, 1e9, &o->sigma);
    else if (!strcmp(name, "scale")) return parse_double("scale", val, 0, 1e9, &o->scale);
    else if (!strcmp(name, "backend")) {
        if (tk_backend_from_name(val, &o->backend)) {
            fprintf(stderr, "taylor-attn: --backend: '%s' is not one of ref, cpu, cuda\n", val);
            return -1;
        }
    } else if (!strcmp(name, "grid")) {
        char *x = strchr(val, 'x');
        if (!x) x = strchr(val, 'X');
        char hbuf[32];
        size_t hl = x ? (size_t)(x - val) : 0;
        if (!x || hl == 0 || hl >= sizeof hbuf) {
            fprintf(stderr, "taylor-attn: --grid: '%s' is not HxW (e.g. 64x64)\n", val);
            return -1;
        }
        memcpy(hbuf, val, hl);
        hbuf[hl] = '\0';
        if (parse_int("grid", hbuf, 1, 1 << 20, &o->grid_h) || parse_int("grid", x + 1, 1, 1 << 20, &o->grid_w))
            return -1;
    }
    return 0;
}

/* Returns 0 ok, 1 help/version printed, -1 bad option. */
static int parse_args(int argc, char **argv, options *o) {
    memset(o, 0, sizeof *o);
    o->layer = -1;
    o->backend = TK_BACKEND_CPU;
    tk_config_defaults(&o->cfg);
    char err[256];
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 1;
        }
        if (!strcmp(a, "--version")) {
            printf("taylor-attn %s\n", TK_VERSION);
            return 1;
        }
        if (strncmp(a, "--", 2) != 0 || !a[2]) {
            fprintf(stderr, "taylor-attn: unexpected argument '%s' (options are --name value)\n", a);
            return -1;
        }
        char name[64];
        const char *eq = strchr(a + 2, '=');
        size_t nl = eq ? (size_t)(eq - a - 2) : strlen(a + 2);
        if (nl == 0 || nl >= sizeof name) {
            fprintf(stderr, "taylor-attn: unknown option '%s'\n", a);
            return -1;
        }
        for (size_t j = 0; j < nl; j++) name[j] = a[2 + j] == '-' ? '_' : a[2 + j];
        name[nl] = '\0';
        const tk_knob *knob = tk_knob_find(name);
        int call = is_call_option(name);
        if (!knob && !call) {
            fprintf(stderr, "taylor-attn: unknown option '%s' (see --help and docs/KNOBS.md)\n", a);
            return -1;
        }
        const char *val = eq ? eq + 1 : NULL;
        int has_next = i + 1 < argc && strncmp(argv[i + 1], "--", 2) != 0;
        if (!val && knob && knob->type == TK_KNOB_BOOL && !has_next)
            val = "true"; /* a flag: --stats, --qk-normalize */
        if (!val) {
            if (i + 1 >= argc) {
                fprintf(stderr, "taylor-attn: option '%s' needs a value\n", a);
                return -1;
            }
            val = argv[++i];
        }
        if (call) {
            if (set_call_option(o, name, val)) return -1;
            continue;
        }
        if (tk_config_set(&o->cfg, name, val, err, sizeof err)) {
            fprintf(stderr, "taylor-attn: %s\n", err);
            return -1;
        }
        if (!strcmp(name, "stats")) o->print_stats = o->cfg.stats;
    }
    if (tk_config_validate(&o->cfg, err, sizeof err)) {
        fprintf(stderr, "taylor-attn: %s\n", err);
        return -1;
    }
    const char *missing = !o->q ? "--q" : !o->k ? "--k" : !o->v ? "--v" : !o->out ? "--out" : NULL;
    if (missing) {
        fprintf(stderr, "taylor-attn: %s FILE is required (see --help)\n", missing);
        return -1;
    }
    if (tkf_format_of(o->out) == TKF_FORMAT_UNKNOWN) {
        fprintf(stderr, "taylor-attn: --out %s: use a .npy or .safetensors file name\n", o->out);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* Inputs                                                              */
/* ------------------------------------------------------------------ */

/* Reads FILE or FILE.safetensors:NAME. */
static int read_tensor(const char *arg, const char *opt, tkf_tensor *t) {
    char err[600];
    char path[4096];
    const char *name = NULL;
    const char *colon = strrchr(arg, ':');
    snprintf(path, sizeof path, "%s", arg);
    if (colon && (size_t)(colon - arg) < sizeof path) {
        path[colon - arg] = '\0';
        if (tkf_format_of(path) == TKF_FORMAT_SAFETENSORS)
            name = colon + 1;
        else
            snprintf(path, sizeof path, "%s", arg);
    }
    if (tkf_read(path, name, t, err, sizeof err)) {
        fprintf(stderr, "taylor-attn: --%s: %s\n", opt, err);
        return -1;
    }
    return 0;
}

static void shape_str(const tkf_tensor *t, char *buf, size_t len) {
    size_t off = (size_t)snprintf(buf, len, "[");
    for (int i = 0; i < t->ndim && off < len; i++)
        off += (size_t)snprintf(buf + off, len - off, "%s%lld", i ? "," : "", (long long)t->shape[i]);
    if (off < len) snprintf(buf + off, len - off, "]");
}

/* Checks t is 4-D with positive dims that fit an int. */
static int check_4d(const tkf_tensor *t, const char *opt) {
    char s[160];
    shape_str(t, s, sizeof s);
    if (t->ndim != 4) {
        fprintf(stderr, "taylor-attn: --%s has shape %s; expected 4 dimensions [B,H,N,D]\n", opt, s);
        return -1;
    }
    for (int i = 0; i < 4; i++)
        if (t->shape[i] < 1 || t->shape[i] > INT_MAX) {
            fprintf(stderr, "taylor-attn: --%s has shape %s; every dimension must be in [1, %d]\n", opt, s,
                    INT_MAX);
            return -1;
        }
    return 0;
}

static int same_dims(const tkf_tensor *a, const char *an, const tkf_tensor *b, const char *bn,
                     const int *dims, int nd) {
    for (int i = 0; i < nd; i++)
        if (a->shape[dims[i]] != b->shape[dims[i]]) {
            char sa[160], sb[160];
            shape_str(a, sa, sizeof sa);
            shape_str(b, sb, sizeof sb);
            static const char *const dn[4] = {"B", "H", "N", "D"};
            fprintf(stderr, "taylor-attn: shape mismatch: --%s %s and --%s %s differ in %s\n", an, sa, bn,
                    sb, dn[dims[i]]);
            return -1;
        }
    return 0;
}

/* ------------------------------------------------------------------ */
/* JSON output                                                         */
/* ------------------------------------------------------------------ */

static void jnum(const char *key, double v, int *first) {
    printf("%s\"%s\":", *first ? "" : ",", key);
    *first = 0;
    if (isnan(v))
        printf("\"NaN\"");
    else if (isinf(v))
        printf(v > 0 ? "\"Infinity\"" : "\"-Infinity\"");
    else
        printf("%.9g", v);
}

static void jint(const char *key, long long v, int *first) {
    printf("%s\"%s\":%lld", *first ? "" : ",", key, v);
    *first = 0;
}

static void jstr(const char *key, const char *s, int *first) {
    printf("%s\"%s\":\"", *first ? "" : ",", key);
    *first = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            printf("\\%c", *p);
        else if (*p < 0x20)
            printf("\\u%04x", *p);
        else
            putchar(*p);
    }
    putchar('"');
}

static void jopen(const char *key, int *first) {
    printf("%s\"%s\":{", *first ? "" : ",", key);
    *first = 0;
}

static void jquality(const char *key, const tk_quality *q, int *first) {
    if (q->n <= 0) return;
    jopen(key, first);
    int f = 1;
    jint("n", q->n, &f);
    jnum("rel_l2_mean", q->rel_l2_mean, &f);
    jnum("rel_l2_p95", q->rel_l2_p95, &f);
    jnum("rel_l2_max", q->rel_l2_max, &f);
    jnum("cos_min", q->cos_min, &f);
    jnum("cos_mean", q->cos_mean, &f);
    jnum("abs_err_mean", q->abs_err_mean, &f);
    jnum("abs_err_max", q->abs_err_max, &f);
    putchar('}');
}

static void jdist(const char *key, const tk_dist *d, int *first) {
    if (d->n <= 0) return;
    jopen(key, first);
    int f = 1;
    jint("n", d->n, &f);
    jnum("min", d->min, &f);
    jnum("mean", d->mean, &f);
    jnum("p50", d->p50, &f);
    jnum("p90", d->p90, &f);
    jnum("p99", d->p99, &f);
    jnum("max", d->max, &f);
    putchar('}');
}

static void print_json(const options *o, tk_mode mode, const int dims[6], const tk_result *r,
                       double wall_ms) {
    int f = 1;
    putchar('{');
    jstr("backend", tk_backend_name(o->backend), &f);
    char buf[64];
    jstr("mode", tk_config_format(&o->cfg, tk_knob_find("mode"), buf, sizeof buf), &f);
    jstr("path", tk_path_name(r->path), &f);
    jstr("reason", tk_reason_name(r->reason), &f);
    if (r->stage != TK_STAGE_NONE) jstr("stage", tk_stage_name(r->stage), &f);
    if (r->detail[0]) jstr("detail", r->detail, &f);
    static const char *const dn[6] = {"B", "H", "Nq", "Nk", "D", "Dv"};
    for (int i = 0; i < 6; i++) jint(dn[i], dims[i], &f);
    if (o->layer >= 0) jint("layer", o->layer, &f);
    jint("step", o->step, &f);
    jnum("sigma", o->sigma, &f);
    if (r->R > 0) jint("R", r->R, &f);
    if (mode == TK_MODE_HYBRID && r->path == TK_PATH_HYBRID) {
        if (r->window >= 0) jint("window", r->window, &f);
        jnum("w", r->w, &f);
    }
    jnum("wall_ms", wall_ms, &f);
    const tk_stats *s = &r->stats;
    if (s->have) {
        jopen("stats", &f);
        int g = 1;
        if (s->have & TK_HAVE_TIME) jnum("kernel_ms", s->kernel_ms, &g);
        if (s->have & TK_HAVE_QUALITY) {
            jquality("quality_raw", &s->quality_raw, &g);
            jquality("quality_eff", &s->quality_eff, &g);
        }
        if ((s->have & TK_HAVE_DENOMS) && s->den.n > 0) {
            jopen("denominators", &g);
            int h = 1;
            jint("n", s->den.n, &h);
            jnum("min", s->den.min, &h);
            jnum("max", s->den.max, &h);
            jnum("mean", s->den.mean, &h);
            jint("n_le_eps", s->den.n_le_eps, &h);
            jint("n_nonfinite", s->den.n_nonfinite, &h);
            putchar('}');
        }
        if (s->have & TK_HAVE_NORMS) {
            jdist("q_norm_raw", &s->q_norm_raw, &g);
            jdist("k_norm_raw", &s->k_norm_raw, &g);
            jdist("q_norm_mod", &s->q_norm_mod, &g);
            jdist("k_norm_mod", &s->k_norm_mod, &g);
        }
        if (s->have & TK_HAVE_QK) jdist("qk", &s->qk, &g);
        if (s->have & TK_HAVE_WINDOW_MASS) jdist("window_mass", &s->window_mass, &g);
        putchar('}');
    }
    printf("}\n");
    fflush(stdout);
}

/* ------------------------------------------------------------------ */
/* Main                                                                */
/* ------------------------------------------------------------------ */

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

int main(int argc, char **argv) {
    options o;
    int prc = parse_args(argc, argv, &o);
    if (prc > 0) return EXIT_OUTPUT;
    if (prc < 0) return EXIT_BAD_INPUT;

    int rc = EXIT_BAD_INPUT;
    tkf_tensor q = {0}, k = {0}, v = {0}, q0 = {0}, k0 = {0}, mask = {0};
    uint8_t *keep = NULL;
    float *out = NULL;
    tk_context *ctx = NULL;

    if (read_tensor(o.q, "q", &q) || read_tensor(o.k, "k", &k) || read_tensor(o.v, "v", &v)) goto done;
    if (o.q0 && read_tensor(o.q0, "q0", &q0)) goto done;
    if (o.k0 && read_tensor(o.k0, "k0", &k0)) goto done;
    if (o.mask && read_tensor(o.mask, "mask", &mask)) goto done;
    if (check_4d(&q, "q") || check_4d(&k, "k") || check_4d(&v, "v")) goto done;
    static const int bh_d[3] = {0, 1, 3}, bh_n[3] = {0, 1, 2}, all4[4] = {0, 1, 2, 3};
    if (same_dims(&q, "q", &k, "k", bh_d, 3) || same_dims(&k, "k", &v, "v", bh_n, 3)) goto done;
    if (o.q0 && (check_4d(&q0, "q0") || same_dims(&q0, "q0", &q, "q", all4, 4))) goto done;
    if (o.k0 && (check_4d(&k0, "k0") || same_dims(&k0, "k0", &k, "k", all4, 4))) goto done;
    int B = (int)q.shape[0], H = (int)q.shape[1], Nq = (int)q.shape[2], D = (int)q.shape[3];
    int Nk = (int)k.shape[2], Dv = (int)v.shape[3];
    if (o.mask) {
        char s[160];
        shape_str(&mask, s, sizeof s);
        if (mask.ndim != 2 || mask.shape[0] != B || mask.shape[1] != Nk) {
            fprintf(stderr, "taylor-attn: --mask has shape %s; expected [B,Nk] = [%d,%d]\n", s, B, Nk);
            goto done;
        }
        keep = malloc((size_t)B * (size_t)Nk);
        if (!keep) {
            fprintf(stderr, "taylor-attn: out of memory\n");
            rc = EXIT_INTERNAL;
            goto done;
        }
        for (int64_t i = 0; i < mask.count; i++) {
            if (mask.data[i] != 0.0f && mask.data[i] != 1.0f) {
                fprintf(stderr, "taylor-attn: --mask: element %lld is %g; a mask holds 0 (masked) or 1 (kept)\n",
                        (long long)i, (double)mask.data[i]);
                goto done;
            }
            keep[i] = mask.data[i] != 0.0f;
        }
    }
    if (o.grid_h > 0) {
        long long tokens = (long long)o.text_tokens + (long long)o.grid_h * o.grid_w;
        if (tokens != Nk || tokens != Nq) {
            fprintf(stderr,
                    "taylor-attn: --text-tokens %d --grid %dx%d describe %lld tokens, but Nq = %d and Nk = %d\n",
                    o.text_tokens, o.grid_h, o.grid_w, tokens, Nq, Nk);
            goto done;
        }
    } else if (o.text_tokens > Nk) {
        fprintf(stderr, "taylor-attn: --text-tokens %d is more than the %d key tokens\n", o.text_tokens, Nk);
        goto done;
    }
    size_t out_count = (size_t)B * (size_t)H * (size_t)Nq * (size_t)Dv;
    out = malloc(out_count * sizeof *out);
    if (!out) {
        fprintf(stderr, "taylor-attn: out of memory for the output (%zu floats)\n", out_count);
        rc = EXIT_INTERNAL;
        goto done;
    }

    char err[256];
    if (!tk_backend_available(o.backend)) {
        fprintf(stderr, "taylor-attn: backend %s is not available on this machine\n", tk_backend_name(o.backend));
        goto done;
    }
    if (tk_context_open(o.backend, &ctx, err, sizeof err)) {
        fprintf(stderr, "taylor-attn: %s\n", err);
        rc = EXIT_INTERNAL;
        goto done;
    }

    tk_call call;
    memset(&call, 0, sizeof call);
    call.B = B, call.H = H, call.Nq = Nq, call.Nk = Nk, call.D = D, call.Dv = Dv;
    call.dtype = TK_DTYPE_F32;
    call.q = q.data, call.k = k.data, call.v = v.data;
    call.q0 = o.q0 ? q0.data : NULL;
    call.k0 = o.k0 ? k0.data : NULL;
    call.key_mask = keep;
    call.o = out;
    call.text_tokens = o.text_tokens;
    call.grid_h = o.grid_h, call.grid_w = o.grid_w;
    call.scale = o.scale;
    call.layer = o.layer;
    call.step = o.step;
    call.sigma = o.sigma;
#ifdef TK_HAVE_CUDA
    void *dev[7] = {NULL, NULL, NULL, NULL, NULL, NULL, NULL}; /* q k v q0 k0 mask o */
    if (o.backend == TK_BACKEND_CUDA) {
        size_t qb = (size_t)q.count * 4, kb = (size_t)k.count * 4;
        if (to_device(call.q, qb, &dev[0]) || to_device(call.k, kb, &dev[1]) ||
            to_device(call.v, (size_t)v.count * 4, &dev[2]) || to_device(call.q0, qb, &dev[3]) ||
            to_device(call.k0, kb, &dev[4]) || to_device(call.key_mask, (size_t)B * Nk, &dev[5]) ||
            cudaMalloc(&dev[6], out_count * sizeof(float)) != 0) {
            fprintf(stderr, "taylor-attn: cannot copy the tensors to the GPU\n");
            for (int i = 0; i < 7; i++)
                if (dev[i]) cudaFree(dev[i]);
            rc = EXIT_INTERNAL;
            goto done;
        }
        call.q = dev[0], call.k = dev[1], call.v = dev[2], call.q0 = dev[3], call.k0 = dev[4];
        call.key_mask = dev[5];
        call.o = dev[6];
    }
#endif
    tk_stats_request sreq = {o.cfg.quality_samples, 64, (uint64_t)o.cfg.seed};
    tk_mode mode = (tk_mode)o.cfg.mode;
    tk_result res;
    double t0 = now_ms();
    if (tk_attention(ctx, &call, &o.cfg, mode, o.cfg.stats ? &sreq : NULL, &res) != TK_OK) {
        fprintf(stderr, "taylor-attn: the attention call was refused (internal error)\n");
        rc = EXIT_INTERNAL;
        goto done;
    }
#ifdef TK_HAVE_CUDA
    if (o.backend == TK_BACKEND_CUDA) {
        int copy_rc = cudaDeviceSynchronize();
        if (copy_rc == 0 && res.reason == TK_REASON_NONE)
            copy_rc = cudaMemcpy(out, dev[6], out_count * sizeof(float), D2H);
        for (int i = 0; i < 7; i++)
            if (dev[i]) cudaFree(dev[i]);
        if (copy_rc != 0) {
            fprintf(stderr, "taylor-attn: cannot copy the output back from the GPU (error %d)\n", copy_rc);
            rc = EXIT_INTERNAL;
            goto done;
        }
    }
#endif
    double wall_ms = now_ms() - t0;
    int dims[6] = {B, H, Nq, Nk, D, Dv};
    if (o.print_stats) print_json(&o, mode, dims, &res, wall_ms);
    if (res.reason != TK_REASON_NONE) {
        if (res.stage != TK_STAGE_NONE)
            fprintf(stderr, "taylor-attn: fallback: %s (stage %s)\n", tk_reason_name(res.reason),
                    tk_stage_name(res.stage));
        else
            fprintf(stderr, "taylor-attn: fallback: %s\n", tk_reason_name(res.reason));
        if (res.detail[0]) fprintf(stderr, "taylor-attn: detail: %s\n", res.detail);
        fprintf(stderr, "taylor-attn: no output written to %s\n", o.out);
        rc = EXIT_FALLBACK;
        goto done;
    }
    tk_dtype odt = v.file_dtype;
    if (odt == TK_DTYPE_BF16 && tkf_format_of(o.out) == TKF_FORMAT_NPY) odt = TK_DTYPE_F32;
    int64_t oshape[4] = {B, H, Nq, Dv};
    char werr[600];
    if (tkf_write(o.out, "o", 4, oshape, out, odt, werr, sizeof werr)) {
        fprintf(stderr, "taylor-attn: %s\n", werr);
        rc = EXIT_INTERNAL;
        goto done;
    }
    rc = EXIT_OUTPUT;
done:
    if (ctx) tk_context_close(ctx);
    tkf_free(&q), tkf_free(&k), tkf_free(&v), tkf_free(&q0), tkf_free(&k0), tkf_free(&mask);
    free(keep);
    free(out);
    return rc;
}

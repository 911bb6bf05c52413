/*
 * replay.c -- capture directories: write them from a run (--capture), read
 * them back (--replay). The format (docs/SIMULATOR.md, "Replay"):
 *
 *   DIR/manifest.tsv, tab-separated, '#' starts a comment line:
 *     # taylorscope capture 1          first line: the format version
 *     model        tiny                the model's name (for the run header)
 *     heads        4
 *     head_dim     32
 *     blocks       4   4               double and single blocks
 *     text_tokens  64
 *     grid         16  16              grid_h grid_w (image tokens after the text)
 *     0  1  0  q.safetensors  k.npy  v.npy  -  -     one line per call:
 *                                      step sigma layer q k v q0 k0
 *   Files are relative to DIR; "-" marks absent q0/k0 (both or neither). A
 *   .safetensors file holds the column's tensor under its name (q, k, v, q0,
 *   k0), so one file may hold all five; a .npy file holds one tensor. Shapes
 *   [H,N,D] or [1,H,N,D], N = text_tokens + grid_h*grid_w, D = head_dim;
 *   dtypes F32, F16 (and BF16 in .safetensors). Steps appear in order, one
 *   sigma per step; the global layer is < double + single blocks.
 */
#include "sim.h"
#include "tensorfile.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const char *const column_names[5] = {"q", "k", "v", "q0", "k0"};

void tsim_replay_free(tsim_replay *r) {
    if (!r) return;
    for (int i = 0; i < r->ncalls; i++)
        for (int t = 0; t < 5; t++) free(r->calls[i].file[t]);
    free(r->calls);
    memset(r, 0, sizeof *r);
}

/* Splits a line at tabs (runs of spaces too) in place; returns the count. */
static int split_fields(char *line, char **f, int max) {
    int n = 0;
    char *p = line;
    while (*p) {
        while (*p == '\t' || *p == ' ') p++;
        if (!*p) break;
        if (n == max) return max + 1;
        f[n++] = p;
        while (*p && *p != '\t' && *p != ' ') p++;
        if (*p) *p++ = 0;
    }
    return n;
}

static int to_int(const char *s, long lo, long hi, int *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (!*s || *end || errno || v < lo || v > hi) return 1;
    *out = (int)v;
    return 0;
}

int tsim_replay_open(const char *dir, tsim_replay *out, char *err, size_t errlen) {
    memset(out, 0, sizeof *out);
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, TSIM_MANIFEST);
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "replay: %s: cannot open: %s", path, strerror(errno));
        return 1;
    }
    int heads = -1, head_dim = -1, nd = -1, ns = -1, text = -1, gh = -1, gw = -1;
    snprintf(out->model_name, sizeof out->model_name, "replay");
    int cap = 0, lineno = 0, have_version = 0, last_step = -1;
    double last_sigma = 0;
    char line[8192];
    int rc = 1;
    while (fgets(line, sizeof line, f)) {
        lineno++;
        size_t len = strlen(line);
        if (len == sizeof line - 1 && line[len - 1] != '\n') {
            snprintf(err, errlen, "replay: %s:%d: line too long", path, lineno);
            goto done;
        }
        while (len && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = 0;
        if (lineno == 1) {
            int ver = 0;
            if (sscanf(line, "# taylorscope capture %d", &ver) != 1) {
                snprintf(err, errlen,
                         "replay: %s:1: not a capture manifest (expected \"# taylorscope capture "
                         "%d\")",
                         path, TSIM_CAPTURE_VERSION);
                goto done;
            }
            if (ver != TSIM_CAPTURE_VERSION) {
                snprintf(err, errlen, "replay: %s:1: capture format %d, this build reads %d", path,
                         ver, TSIM_CAPTURE_VERSION);
                goto done;
            }
            have_version = 1;
            continue;
        }
        if (line[0] == '#') continue;
        char *fld[10];
        int n = split_fields(line, fld, 9);
        if (n == 0) continue;
        if (fld[0][0] >= '0' && fld[0][0] <= '9') { /* a call */
            if (heads < 0 || head_dim < 0 || nd < 0 || ns < 0 || text < 0 || gh < 0) {
                snprintf(err, errlen,
                         "replay: %s:%d: a call before the header is complete (needs heads, "
                         "head_dim, blocks, text_tokens, grid)",
                         path, lineno);
                goto done;
            }
            if (n != 8) {
                snprintf(err, errlen,
                         "replay: %s:%d: expected 8 columns (step sigma layer q k v q0 k0), found %d",
                         path, lineno, n);
                goto done;
            }
            tsim_replay_call c;
            memset(&c, 0, sizeof c);
            char *end;
            errno = 0;
            c.sigma = strtod(fld[1], &end);
            if (to_int(fld[0], 0, 1000000, &c.step)) {
                snprintf(err, errlen, "replay: %s:%d: step \"%s\" is not a non-negative integer",
                         path, lineno, fld[0]);
                goto done;
            }
            if (!*fld[1] || *end || errno || !isfinite(c.sigma) || c.sigma < 0) {
                snprintf(err, errlen, "replay: %s:%d: sigma \"%s\" is not a finite number >= 0",
                         path, lineno, fld[1]);
                goto done;
            }
            if (to_int(fld[2], 0, nd + ns - 1, &c.layer)) {
                snprintf(err, errlen, "replay: %s:%d: layer \"%s\" is not in [0, %d]", path,
                         lineno, fld[2], nd + ns - 1);
                goto done;
            }
            if (c.step < last_step) {
                snprintf(err, errlen, "replay: %s:%d: step %d after step %d (steps must be in order)",
                         path, lineno, c.step, last_step);
                goto done;
            }
            if (c.step == last_step && c.sigma != last_sigma) {
                snprintf(err, errlen, "replay: %s:%d: step %d has two sigmas (%.17g and %.17g)",
                         path, lineno, c.step, last_sigma, c.sigma);
                goto done;
            }
            if ((strcmp(fld[6], "-") == 0) != (strcmp(fld[7], "-") == 0)) {
                snprintf(err, errlen, "replay: %s:%d: q0 and k0 must be given together", path,
                         lineno);
                goto done;
            }
            if (c.step != last_step) out->steps++;
            last_step = c.step, last_sigma = c.sigma;
            if (out->ncalls == cap) {
                int ncap = cap ? 2 * cap : 64;
                tsim_replay_call *nc = realloc(out->calls, sizeof *nc * (size_t)ncap);
                if (!nc) {
                    snprintf(err, errlen, "replay: out of memory");
                    goto done;
                }
                out->calls = nc, cap = ncap;
            }
            for (int t = 0; t < 5; t++) {
                if (!strcmp(fld[3 + t], "-")) {
                    if (t < 3) {
                        snprintf(err, errlen, "replay: %s:%d: column %s cannot be \"-\"", path,
                                 lineno, column_names[t]);
                        goto fail_call;
                    }
                    continue;
                }
                if (tkf_format_of(fld[3 + t]) == TKF_FORMAT_UNKNOWN) {
                    snprintf(err, errlen, "replay: %s:%d: %s: not a .npy or .safetensors file",
                             path, lineno, fld[3 + t]);
                    goto fail_call;
                }
                size_t plen = strlen(dir) + strlen(fld[3 + t]) + 2;
                c.file[t] = malloc(plen);
                if (!c.file[t]) {
                    snprintf(err, errlen, "replay: out of memory");
                    goto fail_call;
                }
                snprintf(c.file[t], plen, "%s/%s", dir, fld[3 + t]);
                struct stat st;
                if (stat(c.file[t], &st) != 0 || !S_ISREG(st.st_mode)) {
                    snprintf(err, errlen, "replay: %s:%d: %s: %s", path, lineno, c.file[t],
                             errno == ENOENT ? "no such file" : "not a readable file");
                    goto fail_call;
                }
            }
            out->calls[out->ncalls++] = c;
            continue;
        fail_call:
            for (int t = 0; t < 5; t++) free(c.file[t]);
            goto done;
        }
        /* a header key */
        if (out->ncalls > 0) {
            snprintf(err, errlen, "replay: %s:%d: header key \"%s\" after the first call", path,
                     lineno, fld[0]);
            goto done;
        }
        const char *key = fld[0];
        int bad = 0;
        if (!strcmp(key, "model")) {
            if (n != 2) bad = 1;
            else snprintf(out->model_name, sizeof out->model_name, "%s", fld[1]);
        } else if (!strcmp(key, "heads")) {
            bad = n != 2 || to_int(fld[1], 1, 4096, &heads);
        } else if (!strcmp(key, "head_dim")) {
            bad = n != 2 || to_int(fld[1], 1, 4096, &head_dim);
        } else if (!strcmp(key, "blocks")) {
            bad = n != 3 || to_int(fld[1], 0, 10000, &nd) || to_int(fld[2], 0, 10000, &ns) ||
                  nd + ns == 0;
        } else if (!strcmp(key, "text_tokens")) {
            bad = n != 2 || to_int(fld[1], 0, 1000000, &text);
        } else if (!strcmp(key, "grid")) {
            bad = n != 3 || to_int(fld[1], 0, 65536, &gh) || to_int(fld[2], 0, 65536, &gw) ||
                  (long)gh * gw > 100000000;
        } else if (!strcmp(key, "steps")) {
            int ignored;
            bad = n != 2 || to_int(fld[1], 0, 1000000, &ignored);
        } else {
            snprintf(err, errlen, "replay: %s:%d: unknown key \"%s\"", path, lineno, key);
            goto done;
        }
        if (bad) {
            snprintf(err, errlen, "replay: %s:%d: bad value for \"%s\"", path, lineno, key);
            goto done;
        }
    }
    if (ferror(f)) {
        snprintf(err, errlen, "replay: %s: read error", path);
        goto done;
    }
    if (!have_version) {
        snprintf(err, errlen, "replay: %s: empty manifest", path);
        goto done;
    }
    if (out->ncalls == 0) {
        snprintf(err, errlen, "replay: %s: no calls", path);
        goto done;
    }
    tsim_shape *s = &out->shape;
    s->model.name = out->model_name;
    s->model.description = "replayed capture";
    s->model.heads = heads, s->model.head_dim = head_dim;
    s->model.n_double = nd, s->model.n_single = ns;
    s->model.text_tokens = text;
    s->model.patch_px = 16;
    s->model.width_px = gw * 16, s->model.height_px = gh * 16;
    s->model.rope_theta = 10000;
    if (tsim_rope_axes_for(head_dim, s->model.rope_axes)) memset(s->model.rope_axes, 0, sizeof s->model.rope_axes);
    s->grid_h = gh, s->grid_w = gw;
    s->tokens = text + gh * gw;
    s->layers = nd + ns;
    if (s->tokens <= 0) {
        snprintf(err, errlen, "replay: %s: no tokens (text_tokens and grid are 0)", path);
        goto done;
    }
    rc = 0;
done:
    fclose(f);
    if (rc) tsim_replay_free(out);
    return rc;
}

/* Reads one tensor into dst [H,N,D], checking the shape. */
static int load_one(const tsim_replay *r, const char *file, const char *name, float *dst, char *err,
                    size_t errlen) {
    tkf_tensor t;
    const char *tname = tkf_format_of(file) == TKF_FORMAT_SAFETENSORS ? name : NULL;
    char e[512];
    if (tkf_read(file, tname, &t, e, sizeof e)) {
        snprintf(err, errlen, "replay: %s", e);
        return 1;
    }
    const tsim_shape *s = &r->shape;
    int off = t.ndim == 4 ? 1 : 0;
    int ok = (t.ndim == 3 || (t.ndim == 4 && t.shape[0] == 1)) && t.shape[off] == s->model.heads &&
             t.shape[off + 1] == s->tokens && t.shape[off + 2] == s->model.head_dim;
    if (!ok) {
        char got[128] = "";
        for (int i = 0; i < t.ndim; i++)
            snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", i ? "," : "",
                     (long long)t.shape[i]);
        snprintf(err, errlen, "replay: %s: %s has shape [%s], expected [%d,%d,%d] (heads, tokens, head_dim)",
                 file, name, got, s->model.heads, s->tokens, s->model.head_dim);
        tkf_free(&t);
        return 1;
    }
    memcpy(dst, t.data, sizeof(float) * (size_t)t.count);
    tkf_free(&t);
    return 0;
}

int tsim_replay_load(const tsim_replay *r, int call, float *q, float *k, float *v, float *q0,
                     float *k0, int *have_q0k0, char *err, size_t errlen) {
    const tsim_replay_call *c = &r->calls[call];
    float *dst[5] = {q, k, v, q0, k0};
    *have_q0k0 = c->file[3] != NULL;
    for (int t = 0; t < 5; t++) {
        if (!c->file[t] || !dst[t]) continue;
        if (load_one(r, c->file[t], column_names[t], dst[t], err, errlen)) return 1;
    }
    return 0;
}

/* ---- capture ---- */

struct tsim_capture {
    char dir[4096];
    FILE *manifest;
    tsim_shape shape;
    tsim_format format;
    int failed;
};

int tsim_capture_open(const char *dir, const char *model_name, const tsim_shape *shape, int steps,
                      tsim_format format, tsim_capture **out, char *err, size_t errlen) {
    *out = NULL;
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
        snprintf(err, errlen, "capture: %s: cannot create: %s", dir, strerror(errno));
        return 1;
    }
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", dir, TSIM_MANIFEST);
    struct stat st;
    if (stat(path, &st) == 0) {
        snprintf(err, errlen, "capture: %s already holds a capture (%s); choose another directory",
                 dir, TSIM_MANIFEST);
        return 1;
    }
    tsim_capture *c = calloc(1, sizeof *c);
    if (!c) {
        snprintf(err, errlen, "capture: out of memory");
        return 1;
    }
    snprintf(c->dir, sizeof c->dir, "%s", dir);
    c->shape = *shape;
    c->format = format;
    c->manifest = fopen(path, "w");
    if (!c->manifest) {
        snprintf(err, errlen, "capture: %s: cannot create: %s", path, strerror(errno));
        free(c);
        return 1;
    }
    fprintf(c->manifest,
            "# taylorscope capture %d\n"
            "model\t%s\nheads\t%d\nhead_dim\t%d\nblocks\t%d\t%d\ntext_tokens\t%d\ngrid\t%d\t%d\n"
            "steps\t%d\n"
            "# step\tsigma\tlayer\tq\tk\tv\tq0\tk0\n",
            TSIM_CAPTURE_VERSION, model_name, shape->model.heads, shape->model.head_dim,
            shape->model.n_double, shape->model.n_single, shape->model.text_tokens, shape->grid_h,
            shape->grid_w, steps);
    *out = c;
    return 0;
}

int tsim_capture_write(tsim_capture *c, int step, double sigma, int layer, const float *q,
                       const float *k, const float *v, const float *q0, const float *k0,
                       char *err, size_t errlen) {
    const tsim_shape *s = &c->shape;
    /* [1,H,N,D]: the layout taylor-attn reads, so a captured call can be
     * run on its own (taylor-attn --q FILE.safetensors:q ...) */
    int64_t shape[4] = {1, s->model.heads, s->tokens, s->model.head_dim};
    const float *src[5] = {q, k, v, q0, k0};
    int n = q0 && k0 ? 5 : 3;
    char names[5][64];
    char path[4300];
    if (c->format == TSIM_FORMAT_SAFETENSORS) {
        snprintf(names[0], sizeof names[0], "s%04d_l%03d.safetensors", step, layer);
        for (int t = 1; t < 5; t++) memcpy(names[t], names[0], sizeof names[0]);
        tkf_tensor tens[5];
        const tkf_tensor *tp[5];
        for (int t = 0; t < n; t++) {
            memset(&tens[t], 0, sizeof tens[t]);
            tens[t].ndim = 4;
            memcpy(tens[t].shape, shape, sizeof shape);
            tens[t].count = shape[1] * shape[2] * shape[3];
            tens[t].file_dtype = TK_DTYPE_F32;
            tens[t].data = (float *)src[t]; /* read only by the writer */
            tp[t] = &tens[t];
        }
        snprintf(path, sizeof path, "%s/%s", c->dir, names[0]);
        if (tkf_write_safetensors(path, n, column_names, tp, TK_DTYPE_F32, err, errlen)) {
            c->failed = 1;
            return 1;
        }
    } else {
        for (int t = 0; t < n; t++) {
            snprintf(names[t], sizeof names[t], "s%04d_l%03d_%s.npy", step, layer, column_names[t]);
            snprintf(path, sizeof path, "%s/%s", c->dir, names[t]);
            if (tkf_write(path, NULL, 4, shape, src[t], TK_DTYPE_F32, err, errlen)) {
                c->failed = 1;
                return 1;
            }
        }
    }
    fprintf(c->manifest, "%d\t%.17g\t%d\t%s\t%s\t%s\t%s\t%s\n", step, sigma, layer, names[0],
            names[1], names[2], n == 5 ? names[3] : "-", n == 5 ? names[4] : "-");
    return 0;
}

int tsim_capture_close(tsim_capture *c, char *err, size_t errlen) {
    if (!c) return 0;
    int rc = c->failed;
    if (fclose(c->manifest) != 0 && !rc) {
        snprintf(err, errlen, "capture: %s/%s: write failed: %s", c->dir, TSIM_MANIFEST,
                 strerror(errno));
        rc = 1;
    }
    free(c);
    return rc;
}

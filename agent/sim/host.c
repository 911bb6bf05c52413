/*
 * host.c -- the sampler loop, written the way a real host embeds the agent
 * (agent/agent.h):
 *
 *   ta_open; ta_run_begin(steps, model, "flow-euler")
 *   for each step:  ta_step_begin(step, sigma)
 *                   for each layer: draw (or load) q, k, v, q0, k0
 *                                   ta_attention; on FALLBACK ta_exact_attention
 *                   ta_step_end
 *   ta_run_end; ta_close
 *
 * The simulator is open-loop: the attention outputs do not feed the next
 * step's latent (docs/SIMULATOR.md says why); they are summed so a replay
 * can be compared with the run it was captured from.
 */
#include "agent.h"
#include "sim.h"
#include "workload_cuda.h"

#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifdef TK_HAVE_CUDA
/* The few CUDA runtime calls the cuda backend needs (device buffers); the
 * runtime is linked when nvcc was found. Declared here so the C build
 * needs no CUDA include path. */
extern int cudaMalloc(void **ptr, size_t bytes);
extern int cudaFree(void *ptr);
extern int cudaMemcpy(void *dst, const void *src, size_t bytes, int kind);
enum { TSIM_CUDA_H2D = 1, TSIM_CUDA_D2H = 2 };
#endif

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static void block_of_layer(const tsim_shape *s, int layer, ta_block_type *type, int *index) {
    if (layer < s->model.n_double) {
        *type = TA_BLOCK_DOUBLE;
        *index = layer;
    } else {
        *type = TA_BLOCK_SINGLE;
        *index = layer - s->model.n_double;
    }
}

typedef struct {
    float *q, *k, *v, *q0, *k0, *o;        /* host [H,N,D] */
    void *dq, *dk, *dv, *dq0, *dk0, *dout; /* device copies (cuda backend) */
    size_t n;
} buffers;

static void buffers_free(buffers *b) {
    free(b->q), free(b->k), free(b->v), free(b->q0), free(b->k0), free(b->o);
#ifdef TK_HAVE_CUDA
    void *d[6] = {b->dq, b->dk, b->dv, b->dq0, b->dk0, b->dout};
    for (int i = 0; i < 6; i++)
        if (d[i]) cudaFree(d[i]);
#endif
    memset(b, 0, sizeof *b);
}

static int buffers_alloc(buffers *b, size_t n, tk_backend backend, char *err, size_t errlen) {
    memset(b, 0, sizeof *b);
    b->n = n;
    b->q = malloc(n * sizeof(float)), b->k = malloc(n * sizeof(float));
    b->v = malloc(n * sizeof(float)), b->q0 = malloc(n * sizeof(float));
    b->k0 = malloc(n * sizeof(float)), b->o = malloc(n * sizeof(float));
    if (!b->q || !b->k || !b->v || !b->q0 || !b->k0 || !b->o) {
        buffers_free(b);
        snprintf(err, errlen, "out of memory for %zu-float tensors", n);
        return 1;
    }
    if (backend == TK_BACKEND_CUDA) {
#ifdef TK_HAVE_CUDA
        void **d[6] = {&b->dq, &b->dk, &b->dv, &b->dq0, &b->dk0, &b->dout};
        for (int i = 0; i < 6; i++)
            if (cudaMalloc(d[i], n * sizeof(float)) != 0) {
                *d[i] = NULL;
                buffers_free(b);
                snprintf(err, errlen, "cuda: cannot allocate device tensors (%zu bytes each)",
                         n * sizeof(float));
                return 1;
            }
#else
        buffers_free(b);
        snprintf(err, errlen, "backend cuda: this build has no CUDA");
        return 1;
#endif
    }
    return 0;
}

/* Points the call at host or device tensors (copying them up for cuda,
 * unless the device generator drew them there: on_device). */
static int stage_call(buffers *b, tk_backend backend, int have_q0k0, int on_device, ta_call *c,
                      char *err, size_t errlen) {
    if (backend != TK_BACKEND_CUDA) {
        c->q = b->q, c->k = b->k, c->v = b->v, c->o = b->o;
        c->q0 = have_q0k0 ? b->q0 : NULL, c->k0 = have_q0k0 ? b->k0 : NULL;
        return 0;
    }
#ifdef TK_HAVE_CUDA
    size_t bytes = b->n * sizeof(float);
    if (!on_device &&
        (cudaMemcpy(b->dq, b->q, bytes, TSIM_CUDA_H2D) || cudaMemcpy(b->dk, b->k, bytes, TSIM_CUDA_H2D) ||
         cudaMemcpy(b->dv, b->v, bytes, TSIM_CUDA_H2D) ||
         (have_q0k0 && (cudaMemcpy(b->dq0, b->q0, bytes, TSIM_CUDA_H2D) ||
                        cudaMemcpy(b->dk0, b->k0, bytes, TSIM_CUDA_H2D))))) {
        snprintf(err, errlen, "cuda: copying the tensors to the device failed");
        return 1;
    }
    c->q = b->dq, c->k = b->dk, c->v = b->dv, c->o = b->dout;
    c->q0 = have_q0k0 ? b->dq0 : NULL, c->k0 = have_q0k0 ? b->dk0 : NULL;
    return 0;
#else
    snprintf(err, errlen, "backend cuda: this build has no CUDA");
    return 1;
#endif
}

/* Adds the call's output to the run's checksums. With the device generator
 * the output (bf16, as its inputs) is summed on the device, nothing copied
 * back; otherwise it is copied back if need be and summed here. */
static int checksum_output(buffers *b, tk_backend backend, tsim_workload_cuda *gwork,
                           tsim_run_stats *st, char *err, size_t errlen) {
    double s = 0, sa = 0;
#ifdef TK_HAVE_CUDA
    if (backend == TK_BACKEND_CUDA && gwork) {
        if (tsim_workload_cuda_sums(gwork, b->dout, b->n, 1, &s, &sa, err, errlen)) return 1;
        st->output_sum += s, st->output_abs_sum += sa;
        return 0;
    }
    if (backend == TK_BACKEND_CUDA &&
        cudaMemcpy(b->o, b->dout, b->n * sizeof(float), TSIM_CUDA_D2H) != 0) {
        snprintf(err, errlen, "cuda: copying the output back failed");
        return 1;
    }
#else
    (void)backend, (void)gwork, (void)err, (void)errlen;
#endif
    for (size_t i = 0; i < b->n; i++) s += b->o[i], sa += fabs(b->o[i]);
    st->output_sum += s, st->output_abs_sum += sa;
    return 0;
}

static void progress(const tsim_options *o, const char *model, const char *mode, int step,
                     int steps, double sigma, double step_ms, double gen_ms, double attn_ms,
                     int64_t fb, int64_t calls, int done) {
    if (o->quiet) return;
    int tty = isatty(2);
    fprintf(stderr, "%staylor-sim %s %s  step %d/%d  sigma %.4f  step %.1f ms (gen %.1f, attn %.1f)  fallbacks %lld/%lld%s",
            tty ? "\r" : "", model, mode, step, steps, sigma, step_ms, gen_ms, attn_ms,
            (long long)fb, (long long)calls, tty ? "\033[K" : "\n");
    if (tty && done) fputc('\n', stderr);
    fflush(stderr);
}

static volatile sig_atomic_t stop_requested;

void tsim_request_stop(void) { stop_requested = 1; }

int tsim_run(const tsim_options *o, tsim_run_stats *st, char *err, size_t errlen) {
    memset(st, 0, sizeof *st);
    tsim_shape shape;
    tsim_replay rep;
    memset(&rep, 0, sizeof rep);
    tsim_workload *work = NULL;
    tsim_workload_cuda *gwork = NULL; /* the device generator (cuda backend, synthetic, no capture) */
    tsim_capture *cap = NULL;
    ta_agent *agent = NULL;
    buffers buf;
    memset(&buf, 0, sizeof buf);
    double *sigmas = NULL;
    int rc = 1, run_open = 0, steps;
    const char *model_name;

    if (o->replay_dir) {
        if (tsim_replay_open(o->replay_dir, &rep, err, errlen)) return 1;
        shape = rep.shape;
        steps = rep.steps;
        model_name = rep.model_name;
    } else {
        if (tsim_shape_make(tsim_model_find(o->model), o->width_px, o->height_px, &shape, err,
                            errlen))
            return 1;
        steps = o->steps;
        model_name = shape.model.name;
        sigmas = malloc(sizeof(double) * (size_t)(steps + 1));
        if (!sigmas) {
            snprintf(err, errlen, "out of memory");
            return 1;
        }
        tsim_schedule(steps, shape.grid_h * shape.grid_w, sigmas);
        if (tsim_workload_open(&shape, o->seed, &work, err, errlen)) goto done;
        if (o->capture_dir && tsim_capture_open(o->capture_dir, model_name, &shape, steps,
                                                o->capture_format, &cap, err, errlen))
            goto done;
    }
    int H = shape.model.heads, D = shape.model.head_dim, N = shape.tokens;
    if (buffers_alloc(&buf, (size_t)H * N * D, o->backend, err, errlen)) goto done;
#ifdef TK_HAVE_CUDA
    /* A capture needs the tensors on the host: it keeps the CPU generator. */
    if (work && !cap && o->backend == TK_BACKEND_CUDA &&
        tsim_workload_cuda_open(work, &gwork, err, errlen))
        goto done;
#endif

    ta_options ao;
    memset(&ao, 0, sizeof ao);
    ao.endpoint = o->listen;
    ao.backend = o->backend;
    ao.knobs = &o->knobs;
    ao.model.name = model_name;
    ao.model.heads = H, ao.model.head_dim = D;
    ao.model.n_double = shape.model.n_double, ao.model.n_single = shape.model.n_single;
    ao.model.text_tokens = shape.model.text_tokens;
    ao.model.grid_h = shape.grid_h, ao.model.grid_w = shape.grid_w;
    if (ta_open(&ao, &agent, err, errlen)) goto done;
    snprintf(st->endpoint, sizeof st->endpoint, "%s", ta_endpoint(agent));
    if (!o->quiet && st->endpoint[0]) fprintf(stderr, "taylor-sim: telemetry on %s\n", st->endpoint);

    if (o->wait_console_s > 0) {
        double t0 = now_ms();
        if (!o->quiet) fprintf(stderr, "taylor-sim: waiting up to %.0f s for a console...\n", o->wait_console_s);
        while (ta_subscribers(agent) < 1 && now_ms() - t0 < o->wait_console_s * 1e3) {
            struct timespec ts = {0, 20 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
        if (ta_subscribers(agent) < 1) {
            if (!o->quiet) fprintf(stderr, "taylor-sim: no console after %.0f s; starting anyway\n", o->wait_console_s);
        } else {
            /* a subscriber's pipe is up; give its subscription a moment */
            struct timespec ts = {0, 100 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
    }

    if (ta_run_begin(agent, steps, model_name, o->replay_dir ? "replay" : "flow-euler", err, errlen))
        goto done;
    run_open = 1;
    snprintf(st->run_id, sizeof st->run_id, "%s", ta_run_id(agent));
    char mode_name[32];
    tk_config_format(&o->knobs, tk_knob_find("mode"), mode_name, sizeof mode_name);
    char label[96];
    snprintf(label, sizeof label, "%s %dx%d", model_name, shape.grid_w * 16, shape.grid_h * 16);
    double run_t0 = now_ms();
    int call_i = 0;
    for (int si = 0; si < steps; si++) {
        if (stop_requested) {
            snprintf(err, errlen, "interrupted after %d of %d steps", si, steps);
            goto done;
        }
        int step = o->replay_dir ? rep.calls[call_i].step : si;
        double sigma = o->replay_dir ? rep.calls[call_i].sigma : sigmas[si];
        double t0 = now_ms(), gen_ms = 0, attn_ms = 0;
        int64_t fb0 = st->fallbacks, calls0 = st->calls;
        ta_step_begin(agent, step, sigma);
        /* the calls of this step: every layer, or the manifest's lines */
        int first = call_i, count = shape.layers;
        if (o->replay_dir)
            for (count = 0; first + count < rep.ncalls && rep.calls[first + count].step == step;)
                count++;
        call_i += count;
        for (int ci = 0; ci < count; ci++) {
            int layer = o->replay_dir ? rep.calls[first + ci].layer : ci, have_q0k0 = 1;
            double g0 = now_ms();
            if (o->replay_dir) {
                if (tsim_replay_load(&rep, first + ci, buf.q, buf.k, buf.v, buf.q0, buf.k0,
                                     &have_q0k0, err, errlen))
                    goto done;
            } else if (gwork) {
#ifdef TK_HAVE_CUDA
                /* pre-RoPE q0/k0 feed only the hybrid far field: drawn when the
                 * mode in force (it changes only at a step boundary) uses them */
                char e2[256];
                have_q0k0 = ta_config(agent)->mode == TK_MODE_HYBRID;
                if (tsim_workload_cuda_layer(gwork, layer, sigma, 1, buf.dq, buf.dk, buf.dv,
                                             have_q0k0 ? buf.dq0 : NULL, have_q0k0 ? buf.dk0 : NULL,
                                             e2, sizeof e2)) {
                    snprintf(err, errlen, "step %d layer %d: %s", step, layer, e2);
                    goto done;
                }
#endif
            } else {
                if (tsim_workload_layer(work, layer, sigma, buf.q, buf.k, buf.v, buf.q0, buf.k0)) {
                    snprintf(err, errlen, "step %d layer %d: out of memory drawing the layer's weights",
                             step, layer);
                    goto done;
                }
                if (cap && tsim_capture_write(cap, step, sigma, layer, buf.q, buf.k, buf.v, buf.q0,
                                              buf.k0, err, errlen))
                    goto done;
            }
            gen_ms += now_ms() - g0;
            ta_call c;
            memset(&c, 0, sizeof c);
            c.B = 1, c.H = H, c.Nq = c.Nk = N, c.D = c.Dv = D;
            /* the device generator draws bf16, as a real Flux host runs */
            c.dtype = gwork ? TK_DTYPE_BF16 : TK_DTYPE_F32;
            block_of_layer(&shape, layer, &c.block_type, &c.block_index);
            if (stage_call(&buf, o->backend, have_q0k0, gwork != NULL, &c, err, errlen)) goto done;
            tk_result res;
            double a0 = now_ms();
            ta_attention(agent, &c, &res);
            double a1 = now_ms();
            st->attention_ms += a1 - a0;
            attn_ms += a1 - a0;
            st->calls++;
            if (res.reason != TK_REASON_NONE) {
                st->fallbacks++;
                if ((int)res.reason >= 0 && res.reason < TK_REASON_COUNT) st->by_reason[res.reason]++;
                char e2[256];
                if (ta_exact_attention(agent, &c, e2, sizeof e2)) {
                    snprintf(err, errlen, "step %d layer %d: the host's exact attention failed: %s",
                             step, layer, e2);
                    goto done;
                }
                double a2 = now_ms();
                st->exact_ms += a2 - a1;
                attn_ms += a2 - a1;
            }
            if ((int)res.path >= 0 && res.path < 4) st->by_path[res.path]++;
            if (checksum_output(&buf, o->backend, gwork, st, err, errlen)) goto done;
        }
        ta_step_end(agent);
        if (si == 0) {
            st->first_step_ms = now_ms() - t0;
            st->first_generate_ms = gen_ms, st->first_attention_ms = attn_ms;
        }
        st->steps_done++;
        st->generate_ms += gen_ms;
        progress(o, label, mode_name, si + 1, steps, sigma, now_ms() - t0, gen_ms, attn_ms,
                 st->fallbacks - fb0, st->calls - calls0, si + 1 == steps);
        if (o->step_delay_s > 0 && si + 1 < steps && !stop_requested) {
            double ns = o->step_delay_s * 1e9;
            struct timespec ts = {(time_t)(ns / 1e9), (long)fmod(ns, 1e9)};
            nanosleep(&ts, NULL); /* a signal cuts it short */
        }
    }
    st->wall_ms = now_ms() - run_t0;
    ta_run_end(agent, TA_RUN_FINISHED, "");
    run_open = 0;
    st->published = ta_published(agent);
    st->dropped = ta_dropped(agent);
    rc = 0;
done:
    if (agent && run_open) ta_run_end(agent, TA_RUN_FAILED, err);
    ta_close(agent);
    if (cap) {
        char e2[256];
        if (tsim_capture_close(cap, e2, sizeof e2) && rc == 0) {
            snprintf(err, errlen, "%s", e2);
            rc = 1;
        }
    }
    buffers_free(&buf);
#ifdef TK_HAVE_CUDA
    tsim_workload_cuda_free(gwork);
#endif
    tsim_workload_free(work);
    tsim_replay_free(&rep);
    free(sigmas);
    return rc;
}

void tsim_print_summary(FILE *f, const tsim_run_stats *st) {
    fprintf(f, "run %s steps %d calls %lld fallbacks %lld wall_ms %.1f generate_ms %.1f attention_ms %.1f exact_ms %.1f output_sum %.9e output_abs_sum %.9e published %llu dropped %llu",
            st->run_id[0] ? st->run_id : "-", st->steps_done, (long long)st->calls,
            (long long)st->fallbacks, st->wall_ms, st->generate_ms, st->attention_ms, st->exact_ms,
            st->output_sum, st->output_abs_sum, (unsigned long long)st->published,
            (unsigned long long)st->dropped);
    for (int r = 1; r < TK_REASON_COUNT; r++)
        if (st->by_reason[r]) fprintf(f, " %s %lld", tk_reason_name((tk_reason)r), (long long)st->by_reason[r]);
    fputc('\n', f);
}

/*
 * options.c -- taylor-sim's command line. Every mistake is a message naming
 * the option and what it accepts; main exits 2 on it.
 */
#include "agent.h"
#include "sim.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void tsim_usage(FILE *f) {
    fprintf(f,
            "usage: taylor-sim [options]\n"
            "\n"
            "Runs a Flux-shaped generation that embeds the taylorscope agent: every step\n"
            "calls ta_step_begin(step, sigma), every layer's attention goes through the\n"
            "agent, the host runs exact attention when the agent falls back, then\n"
            "ta_step_end(). Tensors come from a seeded synthetic process or a capture\n"
            "(docs/SIMULATOR.md).\n"
            "\n"
            "  --model NAME          model config (default tiny):\n");
    for (int i = 0; i < tsim_model_count(); i++)
        fprintf(f, "                          %-6s %s\n", tsim_model_at(i)->name,
                tsim_model_at(i)->description);
    fprintf(f,
            "  --width PX, --height PX   image size, multiples of 16 (default: the model's)\n"
            "  --steps N             sampling steps (default 20)\n"
            "  --seed N              seed of the synthetic tensors (default 1)\n"
            "  --mode exact|taylor|hybrid   the `mode` knob\n"
            "  --backend ref|cpu|cuda     kernel backend (default cpu; cuda draws the tensors on the GPU, bf16)\n"
            "  --knob NAME=VALUE     set a knob before the run (repeatable; see docs/KNOBS.md)\n"
            "  --listen URL          telemetry PUB endpoint (default: a per-user ipc socket;\n"
            "                        tcp://:PORT binds 127.0.0.1; `none` = no telemetry)\n"
            "  --wait-console S      wait up to S seconds for a subscriber before starting\n"
            "  --step-delay S        pause S seconds after each step, to pace a demo (default 0)\n"
            "  --quiet               no progress line on stderr\n"
            "  --replay DIR          replay a capture (manifest.tsv + tensor files) instead\n"
            "                        of synthetic tensors\n"
            "  --capture DIR         write every call's q, k, v, q0, k0 and a manifest to DIR\n"
            "  --capture-format safetensors|npy   file format of --capture (default safetensors)\n"
            "  --calibrate           print the workload's calibration table and exit\n"
            "  --radius R            calibration window radius (default 8)\n"
            "  --queries N           calibration image queries per head (default 32)\n"
            "  -h, --help            this help\n"
            "  --version             print the version\n");
}

static int parse_int(const char *opt, const char *s, long lo, long hi, long *out, char *err,
                     size_t errlen) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (!*s || *end || errno || v < lo || v > hi) {
        snprintf(err, errlen, "%s: expected an integer in [%ld, %ld], got \"%s\"", opt, lo, hi, s);
        return 1;
    }
    *out = v;
    return 0;
}

static int parse_seconds(const char *opt, const char *s, double *out, char *err, size_t errlen) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (!*s || *end || errno || !isfinite(v) || v < 0 || v > 86400) {
        snprintf(err, errlen, "%s: expected seconds in [0, 86400], got \"%s\"", opt, s);
        return 1;
    }
    *out = v;
    return 0;
}

int tsim_parse_args(int argc, char **argv, tsim_options *o, char *err, size_t errlen) {
    memset(o, 0, sizeof *o);
    o->model = "tiny";
    o->steps = 20;
    o->seed = 1;
    o->backend = TK_BACKEND_CPU;
    o->calibrate_radius = 8;
    o->calibrate_queries = 32;
    tk_config_defaults(&o->knobs);
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (!strcmp(arg, "-h") || !strcmp(arg, "--help")) {
            o->help = 1;
            continue;
        }
        if (!strcmp(arg, "--version")) {
            o->version = 1;
            continue;
        }
        if (!strcmp(arg, "--quiet") || !strcmp(arg, "-q")) {
            o->quiet = 1;
            continue;
        }
        if (!strcmp(arg, "--calibrate")) {
            o->calibrate = 1;
            continue;
        }
        if (strncmp(arg, "--", 2) != 0) {
            snprintf(err, errlen, "unexpected argument \"%s\" (see --help)", arg);
            return 1;
        }
        /* --name value or --name=value */
        char name[64];
        const char *val = NULL, *eq = strchr(arg, '=');
        size_t nlen = eq ? (size_t)(eq - arg) : strlen(arg);
        if (nlen >= sizeof name) nlen = sizeof name - 1;
        memcpy(name, arg, nlen);
        name[nlen] = 0;
        static const char *const with_value[] = {
            "--model", "--width", "--height", "--steps", "--seed", "--mode", "--backend",
            "--knob", "--listen", "--wait-console", "--step-delay", "--replay", "--capture", "--capture-format",
            "--radius", "--queries", NULL};
        int known = 0;
        for (int j = 0; with_value[j]; j++) known |= !strcmp(name, with_value[j]);
        if (!known) {
            snprintf(err, errlen, "unknown option \"%s\" (see --help)", name);
            return 1;
        }
        if (eq) {
            val = eq + 1;
        } else if (i + 1 < argc) {
            val = argv[++i];
        } else {
            snprintf(err, errlen, "%s needs a value (see --help)", name);
            return 1;
        }
        long v;
        if (!strcmp(name, "--model")) {
            if (!tsim_model_find(val)) {
                char names[128] = "";
                for (int j = 0; j < tsim_model_count(); j++)
                    snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s",
                             j ? "|" : "", tsim_model_at(j)->name);
                snprintf(err, errlen, "--model: unknown model \"%s\" (one of %s)", val, names);
                return 1;
            }
            o->model = val;
        } else if (!strcmp(name, "--width") || !strcmp(name, "--height")) {
            if (parse_int(name, val, 16, 65536, &v, err, errlen)) return 1;
            if (v % 16) {
                snprintf(err, errlen, "%s: %ld is not a multiple of 16", name, v);
                return 1;
            }
            if (name[2] == 'w') o->width_px = (int)v;
            else o->height_px = (int)v;
        } else if (!strcmp(name, "--steps")) {
            if (parse_int(name, val, 1, 10000, &v, err, errlen)) return 1;
            o->steps = (int)v;
        } else if (!strcmp(name, "--seed")) {
            char *end;
            errno = 0;
            unsigned long long s = strtoull(val, &end, 10);
            if (!*val || *end || errno || val[0] == '-') {
                snprintf(err, errlen, "--seed: expected a non-negative integer, got \"%s\"", val);
                return 1;
            }
            o->seed = s;
        } else if (!strcmp(name, "--mode") || !strcmp(name, "--knob")) {
            char kname[64];
            const char *kval = val;
            if (!strcmp(name, "--mode")) {
                snprintf(kname, sizeof kname, "mode");
            } else {
                const char *keq = strchr(val, '=');
                if (!keq || keq == val || (size_t)(keq - val) >= sizeof kname) {
                    snprintf(err, errlen, "--knob: expected NAME=VALUE, got \"%s\"", val);
                    return 1;
                }
                memcpy(kname, val, (size_t)(keq - val));
                kname[keq - val] = 0;
                kval = keq + 1;
            }
            char kerr[256];
            if (tk_config_set(&o->knobs, kname, kval, kerr, sizeof kerr)) {
                snprintf(err, errlen, "%s: %s", name, kerr);
                return 1;
            }
        } else if (!strcmp(name, "--backend")) {
            if (tk_backend_from_name(val, &o->backend)) {
                snprintf(err, errlen, "--backend: expected ref|cpu|cuda, got \"%s\"", val);
                return 1;
            }
        } else if (!strcmp(name, "--listen")) {
            o->listen = !strcmp(val, "none") ? "" : val;
            if (!*val) {
                snprintf(err, errlen, "--listen: expected a URL or none");
                return 1;
            }
        } else if (!strcmp(name, "--wait-console")) {
            if (parse_seconds(name, val, &o->wait_console_s, err, errlen)) return 1;
        } else if (!strcmp(name, "--step-delay")) {
            if (parse_seconds(name, val, &o->step_delay_s, err, errlen)) return 1;
        } else if (!strcmp(name, "--replay")) {
            o->replay_dir = val;
        } else if (!strcmp(name, "--capture")) {
            o->capture_dir = val;
        } else if (!strcmp(name, "--capture-format")) {
            if (!strcmp(val, "safetensors")) o->capture_format = TSIM_FORMAT_SAFETENSORS;
            else if (!strcmp(val, "npy")) o->capture_format = TSIM_FORMAT_NPY;
            else {
                snprintf(err, errlen, "--capture-format: expected safetensors|npy, got \"%s\"", val);
                return 1;
            }
        } else if (!strcmp(name, "--radius")) {
            if (parse_int(name, val, 0, 4096, &v, err, errlen)) return 1;
            o->calibrate_radius = (int)v;
        } else if (!strcmp(name, "--queries")) {
            if (parse_int(name, val, 1, 100000, &v, err, errlen)) return 1;
            o->calibrate_queries = (int)v;
        }
    }
    if (o->replay_dir && o->capture_dir) {
        snprintf(err, errlen, "--replay and --capture cannot be combined");
        return 1;
    }
    if (o->wait_console_s > 0 && o->listen && !o->listen[0]) {
        snprintf(err, errlen, "--wait-console needs telemetry; drop --listen none");
        return 1;
    }
    if (o->replay_dir && o->calibrate) {
        snprintf(err, errlen, "--calibrate measures the synthetic workload; drop --replay");
        return 1;
    }
    char verr[256];
    if (tk_config_validate(&o->knobs, verr, sizeof verr)) {
        snprintf(err, errlen, "knobs: %s", verr);
        return 1;
    }
    return 0;
}

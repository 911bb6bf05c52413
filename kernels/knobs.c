/*
 * knobs.c -- the knob table (generated from knobs.def) and the generic
 * operations on it: lookup, parse, validate, format. Every user of knobs
 * (agent, protocol, console, taylor-attn, docs/KNOBS.md) goes through here.
 */
#include "kernels.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define KNOB(name, type, group, live, def, lo, hi, choices, desc) \
    {#name, TK_KNOB_##type, #group, live, (double)(def), (double)(lo), (double)(hi), choices, desc, \
     offsetof(tk_config, name)},
static const tk_knob knob_table[] = {
#include "knobs.def"
};
#undef KNOB

#define KNOB_COUNT ((int)(sizeof knob_table / sizeof knob_table[0]))

int tk_knob_count(void) { return KNOB_COUNT; }

const tk_knob *tk_knob_at(int i) { return (i >= 0 && i < KNOB_COUNT) ? &knob_table[i] : NULL; }

const tk_knob *tk_knob_find(const char *name) {
    if (!name) return NULL;
    char norm[64];
    size_t n = strlen(name);
    if (n == 0 || n >= sizeof norm) return NULL;
    for (size_t i = 0; i <= n; i++) norm[i] = name[i] == '-' ? '_' : name[i];
    for (int i = 0; i < KNOB_COUNT; i++)
        if (strcmp(knob_table[i].name, norm) == 0) return &knob_table[i];
    return NULL;
}

static int *int_field(tk_config *c, const tk_knob *k) { return (int *)((char *)c + k->offset); }
static double *dbl_field(tk_config *c, const tk_knob *k) { return (double *)((char *)c + k->offset); }

double tk_config_get(const tk_config *c, const tk_knob *k) {
    const char *p = (const char *)c + k->offset;
    if (k->type == TK_KNOB_FLOAT) return *(const double *)p;
    return (double)*(const int *)p;
}

/* Number of choices of an ENUM knob. */
static int choice_count(const tk_knob *k) {
    int n = 1;
    for (const char *s = k->choices; *s; s++) n += *s == '|';
    return n;
}

const char *tk_knob_choice(const tk_knob *k, int i, char *buf, size_t len) {
    if (k->type != TK_KNOB_ENUM || i < 0 || len == 0) return NULL;
    const char *s = k->choices;
    for (int j = 0; j < i; j++) {
        s = strchr(s, '|');
        if (!s) return NULL;
        s++;
    }
    size_t n = strcspn(s, "|");
    if (n >= len) n = len - 1;
    memcpy(buf, s, n);
    buf[n] = '\0';
    return buf;
}

static void range_text(const tk_knob *k, char *buf, size_t len) {
    switch (k->type) {
    case TK_KNOB_BOOL: snprintf(buf, len, "true or false"); break;
    case TK_KNOB_INT: snprintf(buf, len, "an integer in [%.0f, %.0f]", k->min, k->max); break;
    case TK_KNOB_FLOAT: snprintf(buf, len, "a number in [%g, %g]", k->min, k->max); break;
    case TK_KNOB_ENUM: {
        size_t off = (size_t)snprintf(buf, len, "one of ");
        for (const char *s = k->choices; *s && off + 1 < len; s++)
            buf[off++] = *s == '|' ? ',' : *s;
        if (off < len) buf[off] = '\0';
        break;
    }
    }
}

int tk_config_set_number(tk_config *c, const tk_knob *k, double v, char *err, size_t errlen) {
    char range[128];
    range_text(k, range, sizeof range);
    if (!isfinite(v)) {
        snprintf(err, errlen, "knob %s: value must be finite (%s)", k->name, range);
        return TK_ERR;
    }
    switch (k->type) {
    case TK_KNOB_BOOL:
        if (v != 0.0 && v != 1.0) {
            snprintf(err, errlen, "knob %s: %g is not %s", k->name, v, range);
            return TK_ERR;
        }
        *int_field(c, k) = (int)v;
        return TK_OK;
    case TK_KNOB_ENUM:
        if (v != floor(v) || v < 0 || v >= choice_count(k)) {
            snprintf(err, errlen, "knob %s: %g is not %s", k->name, v, range);
            return TK_ERR;
        }
        *int_field(c, k) = (int)v;
        return TK_OK;
    case TK_KNOB_INT:
        if (v != floor(v) || v < k->min || v > k->max) {
            snprintf(err, errlen, "knob %s: %g is out of range: %s", k->name, v, range);
            return TK_ERR;
        }
        *int_field(c, k) = (int)v;
        return TK_OK;
    case TK_KNOB_FLOAT:
        if (v < k->min || v > k->max) {
            snprintf(err, errlen, "knob %s: %g is out of range: %s", k->name, v, range);
            return TK_ERR;
        }
        *dbl_field(c, k) = v;
        return TK_OK;
    }
    snprintf(err, errlen, "knob %s: unknown type", k->name);
    return TK_ERR;
}

int tk_config_set(tk_config *c, const char *name, const char *value, char *err, size_t errlen) {
    const tk_knob *k = tk_knob_find(name);
    if (!k) {
        snprintf(err, errlen, "unknown knob '%s'", name ? name : "(null)");
        return TK_ERR;
    }
    if (!value || !*value) {
        snprintf(err, errlen, "knob %s: empty value", k->name);
        return TK_ERR;
    }
    char range[128];
    range_text(k, range, sizeof range);
    if (k->type == TK_KNOB_BOOL) {
        if (!strcasecmp(value, "true") || !strcasecmp(value, "on") || !strcmp(value, "1") ||
            !strcasecmp(value, "yes"))
            return tk_config_set_number(c, k, 1, err, errlen);
        if (!strcasecmp(value, "false") || !strcasecmp(value, "off") || !strcmp(value, "0") ||
            !strcasecmp(value, "no"))
            return tk_config_set_number(c, k, 0, err, errlen);
        snprintf(err, errlen, "knob %s: '%s' is not %s", k->name, value, range);
        return TK_ERR;
    }
    if (k->type == TK_KNOB_ENUM) {
        char buf[64];
        for (int i = 0; tk_knob_choice(k, i, buf, sizeof buf); i++)
            if (!strcasecmp(buf, value)) return tk_config_set_number(c, k, i, err, errlen);
        snprintf(err, errlen, "knob %s: '%s' is not %s", k->name, value, range);
        return TK_ERR;
    }
    char *end = NULL;
    errno = 0;
    double v = strtod(value, &end);
    while (end && isspace((unsigned char)*end)) end++;
    if (end == value || (end && *end) || errno == ERANGE) {
        snprintf(err, errlen, "knob %s: '%s' is not a number (%s)", k->name, value, range);
        return TK_ERR;
    }
    return tk_config_set_number(c, k, v, err, errlen);
}

void tk_config_defaults(tk_config *c) {
    memset(c, 0, sizeof *c);
    for (int i = 0; i < KNOB_COUNT; i++) {
        const tk_knob *k = &knob_table[i];
        if (k->type == TK_KNOB_FLOAT)
            *dbl_field(c, k) = k->def;
        else
            *int_field(c, k) = (int)k->def;
    }
}

const char *tk_config_format(const tk_config *c, const tk_knob *k, char *buf, size_t len) {
    double v = tk_config_get(c, k);
    switch (k->type) {
    case TK_KNOB_BOOL: snprintf(buf, len, "%s", v != 0 ? "true" : "false"); break;
    case TK_KNOB_INT: snprintf(buf, len, "%.0f", v); break;
    case TK_KNOB_FLOAT: snprintf(buf, len, "%.9g", v); break;
    case TK_KNOB_ENUM:
        if (!tk_knob_choice(k, (int)v, buf, len)) snprintf(buf, len, "%d", (int)v);
        break;
    }
    return buf;
}

int tk_config_validate(const tk_config *c, char *err, size_t errlen) {
    if (c->auto_tune_power_min > c->auto_tune_power_max) {
        snprintf(err, errlen, "auto_tune_power_min (%g) must be <= auto_tune_power_max (%g)",
                 c->auto_tune_power_min, c->auto_tune_power_max);
        return TK_ERR;
    }
    if (c->auto_tune_clip_min > c->auto_tune_clip_max) {
        snprintf(err, errlen, "auto_tune_clip_min (%g) must be <= auto_tune_clip_max (%g)",
                 c->auto_tune_clip_min, c->auto_tune_clip_max);
        return TK_ERR;
    }
    if (c->auto_tune_scale_min > c->auto_tune_scale_max) {
        snprintf(err, errlen, "auto_tune_scale_min (%g) must be <= auto_tune_scale_max (%g)",
                 c->auto_tune_scale_min, c->auto_tune_scale_max);
        return TK_ERR;
    }
    if (c->taylor_layer_start >= 0 && c->taylor_layer_end >= 0 &&
        c->taylor_layer_start > c->taylor_layer_end) {
        snprintf(err, errlen, "taylor_layer_start (%d) must be <= taylor_layer_end (%d)",
                 c->taylor_layer_start, c->taylor_layer_end);
        return TK_ERR;
    }
    if (c->hybrid_layer_start >= 0 && c->hybrid_layer_end >= 0 &&
        c->hybrid_layer_start > c->hybrid_layer_end) {
        snprintf(err, errlen, "hybrid_layer_start (%d) must be <= hybrid_layer_end (%d)",
                 c->hybrid_layer_start, c->hybrid_layer_end);
        return TK_ERR;
    }
    return TK_OK;
}

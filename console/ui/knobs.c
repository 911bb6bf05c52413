/* knobs.c -- the knob editor panel: every knob with its value in force,
 * range and description, grouped (core, q/k normalization, sigma gates,
 * layer ranges, window schedule, far field, Taylor, stats, auto-tune).
 * The table is the run header's (what the agent has), else the local one.
 * The bottom rows show the selected knob's description and range, the edit
 * line, and the request's fate: sending, pending (takes effect at step N),
 * applied at step N, or the agent's validation error. */
#include <curses.h>
#include <stdio.h>
#include <string.h>

#include "ui/ui.h"

static const char *const group_order[] = {"CORE", "QK", "GATE", "LAYER", "WINDOW",
                                          "FAR", "TAYLOR", "STATS", "TUNE"};
#define N_GROUPS ((int)(sizeof group_order / sizeof group_order[0]))

static const char *group_title(const char *g) {
    static const struct { const char *id, *title; } t[] = {
        {"CORE", "core"},          {"QK", "q/k norm"},   {"GATE", "gates"},
        {"LAYER", "layers"},       {"WINDOW", "window"}, {"FAR", "far field"},
        {"TAYLOR", "taylor"},      {"STATS", "stats"},   {"TUNE", "autotune"},
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
        if (!strcmp(t[i].id, g)) return t[i].title;
    return g;
}

static int group_rank(const char *g) {
    for (int i = 0; i < N_GROUPS; i++)
        if (!strcmp(group_order[i], g)) return i;
    return N_GROUPS;
}

static int raw_count(const tc_model *m) {
    if (m && m->have_header && m->header.n_knobs > 0) return m->header.n_knobs;
    return tk_knob_count();
}

static void raw_at(const tc_model *m, int i, tp_knob_desc *out) {
    if (m && m->have_header && m->header.n_knobs > 0) {
        *out = m->header.knobs[i];
        return;
    }
    const tk_knob *k = tk_knob_at(i);
    memset(out, 0, sizeof *out);
    static const char *const types[] = {"bool", "int", "float", "enum"};
    snprintf(out->name, sizeof out->name, "%s", k->name);
    snprintf(out->type, sizeof out->type, "%s", types[k->type]);
    snprintf(out->group, sizeof out->group, "%s", k->group);
    out->live = k->live;
    out->def = k->def;
    out->min = k->min;
    out->max = k->max;
    snprintf(out->choices, sizeof out->choices, "%s", k->choices);
    snprintf(out->description, sizeof out->description, "%s", k->description);
}

int tc_ui_knob_count(const tc_model *m) { return raw_count(m); }

/* Editor order: by group rank, then table order (stable). */
int tc_ui_knob_at(const tc_model *m, int want, tp_knob_desc *out) {
    int n = raw_count(m), seen = 0;
    tp_knob_desc d;
    for (int g = 0; g <= N_GROUPS; g++)
        for (int i = 0; i < n; i++) {
            raw_at(m, i, &d);
            if (group_rank(d.group) != g) continue;
            if (seen++ == want) {
                *out = d;
                return 0;
            }
        }
    return -1;
}

static void range_text(const tp_knob_desc *k, char *buf, size_t len) {
    if (!strcmp(k->type, "bool"))
        snprintf(buf, len, "true|false");
    else if (!strcmp(k->type, "enum"))
        snprintf(buf, len, "%s", k->choices);
    else if (!strcmp(k->type, "int"))
        snprintf(buf, len, "[%.0f, %.0f]", k->min, k->max);
    else
        snprintf(buf, len, "[%g, %g]", k->min, k->max);
}

static void draw_knobs(const tc_ui *ui, tc_rect r) {
    const tc_model *m = ui->shown;
    char t[160];
    snprintf(t, sizeof t, "knobs  cfg v%u%s   / find  Enter edit  Esc cancel  * not default", m ? m->config_version : 0,
             ui->readonly ? "  READ-ONLY observer" : (m && m->conn == TC_CONN_HISTORY) ? "  (stored run)" : "");
    tc_title(ui, r, t);
    if (r.h < 6) return;
    int n = tc_ui_knob_count(m);
    int list_h = r.h - 1 - 3;
    int sel = ui->knob_sel < 0 ? 0 : ui->knob_sel >= n ? n - 1 : ui->knob_sel;
    int top = sel - list_h / 2;
    if (top > n - list_h) top = n - list_h;
    if (top < 0) top = 0;
    const int gw = 9, nw = 26, vw = 12, rw = 18;
    tp_knob_desc k, prev;
    memset(&prev, 0, sizeof prev);
    if (top > 0) tc_ui_knob_at(m, top - 1, &prev);
    for (int i = top; i < n && i < top + list_h; i++) {
        if (tc_ui_knob_at(m, i, &k) != 0) break;
        int y = r.y + 1 + (i - top);
        char val[160], range[64];
        if (m)
            tc_model_knob_value(m, k.name, val, sizeof val);
        else
            snprintf(val, sizeof val, "n/a");
        const tk_knob *lk = tk_knob_find(k.name);
        if (m && m->have_config && lk) { /* '*': not the default */
            char dv[64];
            tk_config defaults;
            tk_config_defaults(&defaults);
            if (strcmp(tk_config_format(&defaults, lk, dv, sizeof dv), val) != 0) strcat(val, "*");
        }
        int pending = m && (m->edit.state == TC_EDIT_SENDING || m->edit.state == TC_EDIT_PENDING) &&
                      !strcmp(m->edit.knob, k.name);
        if (pending) {
            size_t l = strlen(val);
            snprintf(val + l, sizeof val - l, ">%s", m->edit.value);
        }
        if (ui->editing && i == sel) /* edited in place */
            snprintf(val, sizeof val, "%s_", ui->edit_buf);
        range_text(&k, range, sizeof range);
        int attr = i == sel ? tc_attr(ui, ui->editing ? TC_PAIR_KEY : TC_PAIR_SEL) : k.live ? (int)A_NORMAL : tc_attr(ui, TC_PAIR_DIM);
        if (pending && i != sel) attr = tc_attr(ui, TC_PAIR_WARN);
        const char *g = strcmp(prev.group, k.group) ? group_title(k.group) : "";
        tc_put(y, r.x, r.w, attr, "%-*s %-*s %-*s %-*s %s", gw, g, nw, k.name, vw, val, rw, range,
               k.description);
        prev = k;
    }
    /* details of the selected knob */
    int dy = r.y + r.h - 3;
    if (tc_ui_knob_at(m, sel, &k) == 0) {
        char range[96], def[64];
        range_text(&k, range, sizeof range);
        if (!strcmp(k.type, "enum")) {
            const tk_knob *lk = tk_knob_find(k.name);
            char cb[48];
            snprintf(def, sizeof def, "%s", lk && tk_knob_choice(lk, (int)k.def, cb, sizeof cb) ? cb : "?");
        } else if (!strcmp(k.type, "bool")) {
            snprintf(def, sizeof def, "%s", k.def != 0 ? "true" : "false");
        } else {
            snprintf(def, sizeof def, "%g", k.def);
        }
        tc_put(dy, r.x, r.w, A_BOLD, " %s: %s", k.name, k.description);
        tc_put(dy + 1, r.x, r.w, A_NORMAL, " %s %s  default %s  %s", k.type, range, def,
               k.live ? "live (applied at the next step)" : "fixed for the run");
    }
    /* edit line or the request's fate */
    int ey = dy + 2;
    if (ui->searching) {
        tc_put(ey, r.x, r.w, tc_attr(ui, TC_PAIR_KEY), " find knob: %s_", ui->search_buf);
        return;
    }
    if (ui->editing) {
        tc_put(ey, r.x, r.w, tc_attr(ui, TC_PAIR_KEY), " new value for %s: %s_", k.name, ui->edit_buf);
        return;
    }
    if (!m) return;
    const tc_edit *e = &m->edit;
    switch (e->state) {
    case TC_EDIT_IDLE: tc_put(ey, r.x, r.w, tc_attr(ui, TC_PAIR_DIM), " no change requested"); break;
    case TC_EDIT_SENDING:
        tc_put(ey, r.x, r.w, tc_attr(ui, TC_PAIR_WARN), " %s = %s: sending ...", e->knob, e->value);
        break;
    case TC_EDIT_PENDING:
        tc_put(ey, r.x, r.w, tc_attr(ui, TC_PAIR_WARN), " %s = %s: pending, takes effect at step %d", e->knob,
               e->value, e->effective_step);
        break;
    case TC_EDIT_APPLIED:
        tc_put(ey, r.x, r.w, tc_attr(ui, TC_PAIR_GOOD), " %s = %s: applied at step %d", e->knob, e->value,
               e->effective_step);
        break;
    case TC_EDIT_REJECTED:
        tc_put(ey, r.x, r.w, tc_attr(ui, TC_PAIR_BAD), " rejected: %s", e->error);
        break;
    }
}

const tc_panel tc_panel_knobs = {"knobs", draw_knobs};

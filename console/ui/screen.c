/* screen.c -- the screens' layouts (which panel goes where, for the
 * terminal's size) and the keys. Layouts are computed on every draw from
 * LINES/COLS, so a resize needs nothing but a redraw. */
#include <curses.h>
#include <langinfo.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ui/ui.h"

enum { MIN_W = 60, MIN_H = 16 };

void tc_ui_init(tc_ui *ui, int mono) {
    tc_model *live = ui->live, *shown = ui->shown;
    tc_history *hist = ui->hist;
    int readonly = ui->readonly;
    memset(ui, 0, sizeof *ui);
    ui->live = live;
    ui->shown = shown ? shown : live;
    ui->hist = hist;
    ui->readonly = readonly;
    ui->run_mark = -1;
    ui->screen = TC_SCREEN_LIVE;
    ui->back = TC_SCREEN_LIVE;
    const char *no_colour = getenv("NO_COLOR");
    ui->colour = !mono && !(no_colour && *no_colour) && has_colors();
    const char *cs = nl_langinfo(CODESET);
    ui->utf8 = cs && (!strcmp(cs, "UTF-8") || !strcmp(cs, "utf8"));
    tc_ui_colours_start(ui);
}

void tc_ui_status(tc_ui *ui, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ui->status, sizeof ui->status, fmt, ap);
    va_end(ap);
}

static tc_rect rect(int y, int x, int h, int w) { return (tc_rect){y, x, h, w}; }

static void draw_live(tc_ui *ui, int body_y, int body_h, int w) {
    int left_w = w;
    if (w >= 150) { /* the heat map beside the table */
        left_w = 84;
        tc_panel_heatmap.draw(ui, rect(body_y, left_w + 1, body_h, w - left_w - 1));
    }
    int sparks_h = 1 + TC_SPARK_COUNT;
    int reasons_h = body_h >= 30 ? 7 : 4;
    int steps_h = body_h - sparks_h - reasons_h;
    if (steps_h < 4) {
        reasons_h = 2;
        steps_h = body_h - sparks_h - reasons_h;
    }
    tc_panel_steps.draw(ui, rect(body_y, 0, steps_h, left_w));
    tc_panel_sparks.draw(ui, rect(body_y + steps_h, 0, sparks_h, left_w));
    tc_panel_reasons.draw(ui, rect(body_y + steps_h + sparks_h, 0, reasons_h, left_w));
}

void tc_ui_draw_noupdate(tc_ui *ui) {
    int h = LINES, w = COLS;
    erase();
    if (h < MIN_H || w < MIN_W) {
        tc_put(0, 0, w, A_BOLD, "taylorscope: terminal %dx%d is too small (need %dx%d); q quits", w, h, MIN_W,
               MIN_H);
        wnoutrefresh(stdscr);
        return;
    }
    int body_y = 3, body_h = h - 5;
    switch (ui->screen) {
    case TC_SCREEN_LIVE:
        tc_panel_header.draw(ui, rect(0, 0, 3, w));
        draw_live(ui, body_y, body_h, w);
        break;
    case TC_SCREEN_HEAT:
        tc_panel_header.draw(ui, rect(0, 0, 3, w));
        tc_panel_heatmap.draw(ui, rect(body_y, 0, body_h, w));
        break;
    case TC_SCREEN_KNOBS: {
        int log_h = body_h >= 30 ? 10 : 5;
        tc_panel_header.draw(ui, rect(0, 0, 3, w));
        tc_panel_knobs.draw(ui, rect(body_y, 0, body_h - log_h, w));
        tc_panel_knob_log.draw(ui, rect(body_y + body_h - log_h, 0, log_h, w));
        break;
    }
    case TC_SCREEN_HISTORY: tc_panel_runs.draw(ui, rect(0, 0, h - 2, w)); break;
    case TC_SCREEN_COMPARE: tc_panel_compare.draw(ui, rect(0, 0, h - 2, w)); break;
    case TC_SCREEN_HELP: tc_panel_help.draw(ui, rect(0, 0, h - 2, w)); break;
    case TC_SCREEN_COUNT: break;
    }
    tc_put(h - 2, 0, w, ui->status[0] ? A_BOLD : A_NORMAL, " %s", ui->status);
    tc_panel_fkeys.draw(ui, rect(h - 1, 0, 1, w));
    wnoutrefresh(stdscr);
}

void tc_ui_draw(tc_ui *ui) {
    tc_ui_draw_noupdate(ui);
    doupdate();
}

static int is_enter(int key) { return key == '\n' || key == '\r' || key == KEY_ENTER; }

static tc_action edit_key(tc_ui *ui, int key) {
    if (key == 27) { /* Esc */
        ui->editing = 0;
        tc_ui_status(ui, "edit cancelled");
        return TC_ACT_REDRAW;
    }
    if (is_enter(key)) {
        tp_knob_desc k;
        ui->editing = 0;
        if (tc_ui_knob_at(ui->shown, ui->knob_sel, &k) != 0) return TC_ACT_REDRAW;
        snprintf(ui->act_knob, sizeof ui->act_knob, "%s", k.name);
        snprintf(ui->act_value, sizeof ui->act_value, "%s", ui->edit_buf);
        return TC_ACT_SET_KNOB;
    }
    if (key == KEY_BACKSPACE || key == 127 || key == 8) {
        ui->edit_fresh = 0;
        if (ui->edit_len > 0) ui->edit_buf[--ui->edit_len] = '\0';
        return TC_ACT_REDRAW;
    }
    if (key == 21) { /* ^U clears */
        ui->edit_len = 0;
        ui->edit_buf[0] = '\0';
        return TC_ACT_REDRAW;
    }
    if (key >= 32 && key < 127) {
        if (ui->edit_fresh) {
            ui->edit_len = 0;
            ui->edit_fresh = 0;
        }
        if (ui->edit_len < (int)sizeof ui->edit_buf - 1) {
            ui->edit_buf[ui->edit_len++] = (char)key;
            ui->edit_buf[ui->edit_len] = '\0';
        }
        return TC_ACT_REDRAW;
    }
    if (key == KEY_RESIZE) return TC_ACT_REDRAW;
    return TC_ACT_NONE;
}

/* Up/Down/PgUp/PgDn/Home/End on a "rows up from the newest" offset. */
static int scroll_key(int key, int *offset, int page) {
    switch (key) {
    case KEY_UP: case 'k': (*offset)++; return 1;
    case KEY_DOWN: case 'j': if (*offset > 0) (*offset)--; return 1;
    case KEY_PPAGE: *offset += page; return 1;
    case KEY_NPAGE: *offset = *offset > page ? *offset - page : 0; return 1;
    case KEY_HOME: case 'g': *offset = 1 << 28; return 1;
    case KEY_END: case 'G': *offset = 0; return 1;
    }
    return 0;
}

/* Clamp a scroll offset to the steps kept (so Home then Down moves at once). */
static void clamp_scroll(const tc_ui *ui, int *offset) {
    int n = ui->shown ? ui->shown->n_steps : 0;
    if (*offset > n) *offset = n;
}

static int select_key(int key, int *sel, int n, int page) {
    int s = *sel;
    switch (key) {
    case KEY_UP: case 'k': s--; break;
    case KEY_DOWN: case 'j': s++; break;
    case KEY_PPAGE: s -= page; break;
    case KEY_NPAGE: s += page; break;
    case KEY_HOME: case 'g': s = 0; break;
    case KEY_END: case 'G': s = n - 1; break;
    default: return 0;
    }
    if (s >= n) s = n - 1;
    if (s < 0) s = 0;
    *sel = s;
    return 1;
}

static tc_action knob_edit_start(tc_ui *ui) {
    if (ui->readonly) {
        tc_ui_status(ui, "read-only observer: knobs are shown, not changed");
        return TC_ACT_REDRAW;
    }
    if (!ui->live || ui->shown != ui->live) {
        tc_ui_status(ui, "a stored run: knobs can only be changed on the live run (l)");
        return TC_ACT_REDRAW;
    }
    tp_knob_desc k;
    if (tc_ui_knob_at(ui->shown, ui->knob_sel, &k) != 0) return TC_ACT_NONE;
    tc_model_knob_value(ui->shown, k.name, ui->edit_buf, sizeof ui->edit_buf);
    if (!strcmp(ui->edit_buf, "n/a")) ui->edit_buf[0] = '\0';
    ui->edit_len = (int)strlen(ui->edit_buf);
    ui->edit_fresh = 1;
    ui->editing = 1;
    ui->status[0] = '\0';
    return TC_ACT_REDRAW;
}

/* "/" in the knob editor: type part of a knob's name, Enter selects the
 * first knob (in editor order) whose name contains it. */
static tc_action search_key(tc_ui *ui, int key) {
    if (key == 27) {
        ui->searching = 0;
        return TC_ACT_REDRAW;
    }
    if (is_enter(key)) {
        ui->searching = 0;
        int n = tc_ui_knob_count(ui->shown);
        tp_knob_desc k;
        for (int i = 0; i < n; i++)
            if (tc_ui_knob_at(ui->shown, i, &k) == 0 && strstr(k.name, ui->search_buf)) {
                ui->knob_sel = i;
                ui->status[0] = '\0';
                return TC_ACT_REDRAW;
            }
        tc_ui_status(ui, "no knob matches '%s'", ui->search_buf);
        return TC_ACT_REDRAW;
    }
    if (key == KEY_BACKSPACE || key == 127 || key == 8) {
        if (ui->search_len > 0) ui->search_buf[--ui->search_len] = '\0';
        return TC_ACT_REDRAW;
    }
    if (key > 32 && key < 127 && ui->search_len < (int)sizeof ui->search_buf - 1) {
        ui->search_buf[ui->search_len++] = (char)key;
        ui->search_buf[ui->search_len] = '\0';
        return TC_ACT_REDRAW;
    }
    return key == KEY_RESIZE ? TC_ACT_REDRAW : TC_ACT_NONE;
}

tc_action tc_ui_key(tc_ui *ui, int key) {
    if (key == ERR) return TC_ACT_NONE;
    if (ui->editing) return edit_key(ui, key);
    if (ui->searching) return search_key(ui, key);
    if (ui->screen == TC_SCREEN_HELP && key != KEY_RESIZE) {
        ui->screen = ui->back;
        return TC_ACT_REDRAW;
    }
    int page = LINES > 12 ? LINES - 12 : 4;
    switch (key) {
    case 'q': case 'Q': case KEY_F(10): return TC_ACT_QUIT;
    case '?': case KEY_F(1): case 'h':
        ui->back = ui->screen;
        ui->screen = TC_SCREEN_HELP;
        return TC_ACT_REDRAW;
    case KEY_F(2): case '1': ui->screen = TC_SCREEN_LIVE; return TC_ACT_REDRAW;
    case KEY_F(3): case '2': ui->screen = TC_SCREEN_HEAT; return TC_ACT_REDRAW;
    case KEY_F(4): case '3': ui->screen = TC_SCREEN_KNOBS; return TC_ACT_REDRAW;
    case KEY_F(5): case '4': ui->screen = TC_SCREEN_HISTORY; return TC_ACT_RELOAD_HISTORY;
    case KEY_RESIZE: return TC_ACT_REDRAW;
    case 'm':
        ui->heat_metric = (tc_metric)((ui->heat_metric + 1) % TC_METRIC_COUNT);
        return TC_ACT_REDRAW;
    case 'M':
        ui->heat_metric = (tc_metric)((ui->heat_metric + TC_METRIC_COUNT - 1) % TC_METRIC_COUNT);
        return TC_ACT_REDRAW;
    case 'l':
        if (ui->live) {
            ui->shown = ui->live;
            if (ui->screen == TC_SCREEN_HISTORY || ui->screen == TC_SCREEN_COMPARE) ui->screen = TC_SCREEN_LIVE;
            return TC_ACT_FOLLOW_LIVE;
        }
        return TC_ACT_NONE;
    default: break;
    }
    switch (ui->screen) {
    case TC_SCREEN_LIVE:
        if (scroll_key(key, &ui->step_scroll, page)) {
            clamp_scroll(ui, &ui->step_scroll);
            return TC_ACT_REDRAW;
        }
        break;
    case TC_SCREEN_HEAT:
        if (scroll_key(key, &ui->heat_scroll, page)) {
            clamp_scroll(ui, &ui->heat_scroll);
            return TC_ACT_REDRAW;
        }
        break;
    case TC_SCREEN_KNOBS:
        if (select_key(key, &ui->knob_sel, tc_ui_knob_count(ui->shown), page)) return TC_ACT_REDRAW;
        if (is_enter(key) || key == 'e') return knob_edit_start(ui);
        if (key == '/') {
            ui->searching = 1;
            ui->search_len = 0;
            ui->search_buf[0] = '\0';
            return TC_ACT_REDRAW;
        }
        break;
    case TC_SCREEN_HISTORY: {
        int n = ui->hist ? ui->hist->n : 0;
        if (select_key(key, &ui->run_sel, n, page)) return TC_ACT_REDRAW;
        if (key == 'r') return TC_ACT_RELOAD_HISTORY;
        if (n == 0) break;
        if (ui->run_sel >= n) ui->run_sel = n - 1;
        if (is_enter(key)) {
            snprintf(ui->act_run_a, sizeof ui->act_run_a, "%s", ui->hist->runs[ui->run_sel].run_id);
            return TC_ACT_OPEN_RUN;
        }
        if (key == 'c') {
            if (ui->run_mark < 0 || ui->run_mark >= n || ui->run_mark == ui->run_sel) {
                ui->run_mark = ui->run_mark == ui->run_sel ? -1 : ui->run_sel;
                tc_ui_status(ui, ui->run_mark >= 0 ? "marked for compare: pick the second run and press c"
                                                   : "compare mark cleared");
                return TC_ACT_REDRAW;
            }
            snprintf(ui->act_run_a, sizeof ui->act_run_a, "%s", ui->hist->runs[ui->run_mark].run_id);
            snprintf(ui->act_run_b, sizeof ui->act_run_b, "%s", ui->hist->runs[ui->run_sel].run_id);
            ui->run_mark = -1;
            return TC_ACT_COMPARE_RUNS;
        }
        break;
    }
    default: break;
    }
    return TC_ACT_NONE;
}

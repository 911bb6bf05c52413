/* help.c -- the help screen (? or F1; any key returns). */
#include <curses.h>

#include "ui/ui.h"

static const char *const help_lines[] = {
    "taylorscope: watch and steer approximate attention in a running sampler",
    "",
    "  F1 ?        this help (any key returns)",
    "  F2 1        live view: header, step table, curves, fallback reasons",
    "  F3 2        heat map: a metric per layer and step     m   next metric",
    "  F4 3        knob editor       Up/Down select  / find  Enter edit  Enter send  Esc cancel",
    "  F5 4        history browser   Enter open run   c mark / compare   r reload",
    "  l           back to the live run (after opening a stored one)",
    "  Up/Down PgUp/PgDn Home/End    scroll the step table and the heat map (End follows)",
    "  F10 q       quit (the recording is kept)",
    "",
    "Header: connection live|stale|waiting|ended, message rate, drops (agent's queue),",
    "gaps (sequence holes; replayed from the agent's ring when possible, else lost).",
    "Figures that were not reported show n/a, never 0; a reported NaN/Inf shows nan/inf or !.",
    "Step rows in bold: the window or the config version changed at that step.",
    "Knob changes go to the agent (set_knobs), are validated there (errors shown inline),",
    "and apply at the next step boundary: pending -> applied at step N.",
    "--readonly: observer, knobs cannot be changed.",
};

static void draw_help(const tc_ui *ui, tc_rect r) {
    tc_title(ui, r, "help");
    int n = (int)(sizeof help_lines / sizeof help_lines[0]);
    for (int i = 0; i < n && 1 + i < r.h; i++) tc_put(r.y + 1 + i, r.x, r.w, A_NORMAL, "%s", help_lines[i]);
}

const tc_panel tc_panel_help = {"help", draw_help};

/* fkeys.c -- the function-key bar on the last row, htop style. */
#include <curses.h>
#include <string.h>

#include "ui/ui.h"

static void draw_fkeys(const tc_ui *ui, tc_rect r) {
    static const struct { const char *key, *label; tc_screen screen; } keys[] = {
        {"F1", "Help", TC_SCREEN_HELP},    {"F2", "Live", TC_SCREEN_LIVE},      {"F3", "Heat", TC_SCREEN_HEAT},
        {"F4", "Knobs", TC_SCREEN_KNOBS},  {"F5", "Runs", TC_SCREEN_HISTORY},   {"F10", "Quit", TC_SCREEN_COUNT},
    };
    int x = r.x;
    tc_put(r.y, r.x, r.w, A_NORMAL, "%s", "");
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        int kw = (int)strlen(keys[i].key), lw = 7;
        if (x + kw + lw > r.x + r.w) break;
        tc_put(r.y, x, kw, A_BOLD, "%s", keys[i].key);
        int attr = tc_attr(ui, TC_PAIR_KEY);
        if (keys[i].screen == ui->screen) attr |= A_BOLD;
        tc_put(r.y, x + kw, lw, attr, "%s", keys[i].label);
        x += kw + lw;
    }
}

const tc_panel tc_panel_fkeys = {"fkeys", draw_fkeys};

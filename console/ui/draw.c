/* draw.c -- drawing helpers shared by the panels: colours with a
 * monochrome fallback, clipped text, titles, heat cells and sparklines. */
#include <curses.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "ui/ui.h"

/* Heat ramps: 256-colour (dark blue .. red), 8-colour, and glyphs for mono. */
static const short heat256[] = {17, 19, 25, 31, 37, 71, 142, 178, 208, 196};
static const short heat8[] = {COLOR_BLUE, COLOR_CYAN, COLOR_GREEN, COLOR_YELLOW, COLOR_RED,
                              COLOR_MAGENTA};
static const char heat_mono[] = " .:-=+*#%@";

int tc_heat_levels(const tc_ui *ui) {
    if (!ui->colour) return (int)strlen(heat_mono);
    return COLORS >= 256 ? (int)(sizeof heat256 / sizeof heat256[0])
                         : (int)(sizeof heat8 / sizeof heat8[0]);
}

void tc_ui_colours_start(tc_ui *ui) {
    if (!ui->colour) return;
    start_color();
    use_default_colors();
    init_pair(TC_PAIR_TITLE, COLOR_WHITE, COLOR_BLUE);
    init_pair(TC_PAIR_GOOD, COLOR_GREEN, -1);
    init_pair(TC_PAIR_WARN, COLOR_YELLOW, -1);
    init_pair(TC_PAIR_BAD, COLOR_RED, -1);
    init_pair(TC_PAIR_DIM, COLOR_BLUE, -1);
    init_pair(TC_PAIR_KEY, COLOR_BLACK, COLOR_CYAN);
    init_pair(TC_PAIR_SEL, COLOR_BLACK, COLOR_YELLOW);
    int n = tc_heat_levels(ui);
    for (int i = 0; i < n; i++)
        init_pair((short)(TC_PAIR_HEAT0 + i), COLOR_WHITE, COLORS >= 256 ? heat256[i] : heat8[i]);
}

int tc_attr(const tc_ui *ui, int pair) {
    if (ui->colour) {
        int a = COLOR_PAIR(pair);
        if (pair == TC_PAIR_BAD || pair == TC_PAIR_TITLE) a |= A_BOLD;
        return a;
    }
    switch (pair) {
    case TC_PAIR_TITLE: return A_BOLD | A_UNDERLINE;
    case TC_PAIR_BAD: return A_BOLD;
    case TC_PAIR_WARN: return A_UNDERLINE;
    case TC_PAIR_DIM: return A_DIM;
    case TC_PAIR_KEY: return A_REVERSE;
    case TC_PAIR_SEL: return A_REVERSE;
    default: return A_NORMAL;
    }
}

void tc_put(int y, int x, int w, int attr, const char *fmt, ...) {
    if (w <= 0 || y < 0 || y >= LINES || x >= COLS) return;
    if (x + w > COLS) w = COLS - x;
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n < 0) n = 0;
    if (n > (int)sizeof buf - 1) n = (int)sizeof buf - 1;
    /* pad or clip to w columns (the text is ASCII) */
    if (n > w) n = w;
    for (int i = n; i < w && i < (int)sizeof buf - 1; i++) buf[i] = ' ';
    buf[w < (int)sizeof buf - 1 ? w : (int)sizeof buf - 1] = '\0';
    attrset(attr);
    mvaddnstr(y, x, buf, w);
    attrset(A_NORMAL);
}

void tc_title(const tc_ui *ui, tc_rect r, const char *title) {
    tc_put(r.y, r.x, r.w, tc_attr(ui, TC_PAIR_TITLE), " %s", title);
}

void tc_heat_cell(const tc_ui *ui, int y, int x, int level) {
    int n = tc_heat_levels(ui);
    if (level < 0) level = 0;
    if (level >= n) level = n - 1;
    if (ui->colour) {
        attrset(COLOR_PAIR(TC_PAIR_HEAT0 + level));
        mvaddch(y, x, ' ');
    } else {
        attrset(A_NORMAL);
        mvaddch(y, x, (chtype)(unsigned char)heat_mono[level]);
    }
    attrset(A_NORMAL);
}

double tc_symlog(double v) {
    if (!isfinite(v)) return v;
    double a = log10(1.0 + fabs(v) / 1e-12);
    return v < 0 ? -a : a;
}

void tc_spark(const tc_ui *ui, int y, int x, int w, const double *v, const unsigned char *has, int n,
              double lo, double hi, int attr) {
    static const char *const blocks[] = {"\xe2\x96\x81", "\xe2\x96\x82", "\xe2\x96\x83",
                                         "\xe2\x96\x84", "\xe2\x96\x85", "\xe2\x96\x86",
                                         "\xe2\x96\x87", "\xe2\x96\x88"};
    static const char ascii[] = "_.-~=+*#";
    if (w <= 0 || y < 0 || y >= LINES) return;
    int first = n > w ? n - w : 0;
    double span = hi - lo;
    attrset(attr);
    move(y, x);
    for (int i = first; i < n; i++) {
        int col = x + (i - first);
        if (col >= COLS) break;
        if (has && !has[i]) {
            attrset(attr | A_DIM);
            mvaddch(y, col, ' ');
            attrset(attr);
            continue;
        }
        if (!isfinite(v[i])) { /* a reported NaN/Inf: marked, never a bar height */
            attrset(tc_attr(ui, TC_PAIR_BAD));
            mvaddch(y, col, '!');
            attrset(attr);
            continue;
        }
        int level = span > 0 ? (int)((v[i] - lo) / span * 7.999) : 3;
        if (level < 0) level = 0;
        if (level > 7) level = 7;
        if (ui->utf8)
            mvaddstr(y, col, blocks[level]);
        else
            mvaddch(y, col, (chtype)(unsigned char)ascii[level]);
    }
    attrset(A_NORMAL);
}

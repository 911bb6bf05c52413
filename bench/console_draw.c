/* console_draw -- one full redraw of the console's screens with a
 * 57-layer x 50-step run (the heat map's worst case at Flux size), drawn
 * into a virtual terminal (newterm on /dev/null, xterm-256color) at 80x24,
 * 160x50 and 240x70. Goal: <= 5 ms per full redraw (erase, every panel,
 * doupdate with all cells changed, since the first frame after a screen
 * switch repaints everything). Baseline of the same run: erase + doupdate
 * of an empty screen. */
#include <curses.h>
#include <locale.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "ui/synthetic.h"
#include "ui/ui.h"

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* ms per frame over `frames`, alternating two screens so every frame
 * really changes the cells (a worst case for doupdate). */
static double time_frames(tc_ui *ui, tc_screen a, tc_screen b, int frames, int empty) {
    double t0 = now_ms();
    for (int i = 0; i < frames; i++) {
        ui->screen = (i & 1) ? b : a;
        if (empty) {
            erase();
            mvaddstr(i & 1, 0, "x");
            wnoutrefresh(stdscr);
            doupdate();
        } else {
            tc_ui_draw(ui);
        }
    }
    return (now_ms() - t0) / frames;
}

int main(void) {
    setlocale(LC_ALL, "C.UTF-8");
    FILE *out = fopen("/dev/null", "w"), *in = fopen("/dev/null", "r");
    if (!out || !in) {
        fprintf(stderr, "console_draw: cannot open /dev/null\n");
        return 1;
    }
    SCREEN *scr = newterm("xterm-256color", out, in);
    if (!scr) {
        fprintf(stderr, "console_draw: newterm failed (TERMINFO?)\n");
        return 1;
    }
    set_term(scr);
    tc_model m;
    tc_model_init(&m);
    char err[256];
    if (tc_model_fill_synthetic(&m, 57, 50, err, sizeof err) != 0) {
        fprintf(stderr, "console_draw: %s\n", err);
        return 1;
    }
    tc_ui ui = {0};
    ui.live = &m;
    tc_ui_init(&ui, 0);
    ui.now_ns = m.last_msg_ns;
    static const int sizes[][2] = {{24, 80}, {50, 160}, {70, 240}};
    const int frames = 400;
    printf("%-9s %-24s %10s %10s\n", "size", "frames (alternating)", "ms/frame", "goal");
    int ok = 1;
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        resizeterm(sizes[s][0], sizes[s][1]);
        char size[16];
        snprintf(size, sizeof size, "%dx%d", sizes[s][1], sizes[s][0]);
        double base = time_frames(&ui, TC_SCREEN_LIVE, TC_SCREEN_HEAT, frames, 1);
        double live_heat = time_frames(&ui, TC_SCREEN_LIVE, TC_SCREEN_HEAT, frames, 0);
        double heat_knobs = time_frames(&ui, TC_SCREEN_HEAT, TC_SCREEN_KNOBS, frames, 0);
        printf("%-9s %-24s %10.3f %10s\n", size, "baseline (empty screen)", base, "");
        printf("%-9s %-24s %10.3f %10s\n", size, "live <-> heat map", live_heat, "<= 5");
        printf("%-9s %-24s %10.3f %10s\n", size, "heat map <-> knobs", heat_knobs, "<= 5");
        if (live_heat > 5 || heat_knobs > 5) ok = 0;
    }
    endwin();
    delscreen(scr);
    fclose(out);
    fclose(in);
    tc_model_free(&m);
    printf("console_draw: %s (57 layers x 50 steps, %d frames each)\n", ok ? "within goal" : "OVER GOAL", frames);
    return 0;
}

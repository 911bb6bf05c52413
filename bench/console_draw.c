/* console_draw -- one full redraw of the console's screens with a
 * 57-layer x 50-step run (the heat map's worst case at Flux size), drawn
 * into a virtual terminal (newterm on /dev/null, xterm-256color) at 80x24,
 * 160x50 and 240x70. Goal: <= 5 ms per full redraw (erase, every panel,
 * doupdate with all cells changed, since the first frame after a screen
 * switch repaints everything), judged on the median frame's wall time and
 * on the process CPU time per frame (the machine may be busy). Baseline of
 * the same run: erase + doupdate of an empty screen. */
#include <curses.h>
#include <locale.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "ui/synthetic.h"
#include "ui/ui.h"

static double clock_ms(clockid_t id) {
    struct timespec ts;
    clock_gettime(id, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

typedef struct {
    double median_ms; /* wall clock, median frame (robust to preemption on a busy machine) */
    double cpu_ms;    /* process CPU time per frame */
} frame_cost;

/* Costs of `frames` frames, alternating two screens so every frame really
 * changes the cells (a worst case for doupdate). */
static frame_cost time_frames(tc_ui *ui, tc_screen a, tc_screen b, int frames, int empty) {
    static double wall[4096];
    if (frames > 4096) frames = 4096;
    double c0 = clock_ms(CLOCK_PROCESS_CPUTIME_ID);
    for (int i = 0; i < frames; i++) {
        double t0 = clock_ms(CLOCK_MONOTONIC);
        ui->screen = (i & 1) ? b : a;
        if (empty) {
            erase();
            mvaddstr(i & 1, 0, "x");
            wnoutrefresh(stdscr);
            doupdate();
        } else {
            tc_ui_draw(ui);
        }
        wall[i] = clock_ms(CLOCK_MONOTONIC) - t0;
    }
    frame_cost c;
    c.cpu_ms = (clock_ms(CLOCK_PROCESS_CPUTIME_ID) - c0) / frames;
    qsort(wall, (size_t)frames, sizeof wall[0], cmp_double);
    c.median_ms = wall[frames / 2];
    return c;
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
    printf("%-9s %-24s %10s %10s %8s\n", "size", "frames (alternating)", "median ms", "cpu ms", "goal");
    int ok = 1;
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        resizeterm(sizes[s][0], sizes[s][1]);
        char size[16];
        snprintf(size, sizeof size, "%dx%d", sizes[s][1], sizes[s][0]);
        frame_cost base = time_frames(&ui, TC_SCREEN_LIVE, TC_SCREEN_HEAT, frames, 1);
        frame_cost live_heat = time_frames(&ui, TC_SCREEN_LIVE, TC_SCREEN_HEAT, frames, 0);
        frame_cost heat_knobs = time_frames(&ui, TC_SCREEN_HEAT, TC_SCREEN_KNOBS, frames, 0);
        printf("%-9s %-24s %10.3f %10.3f %8s\n", size, "baseline (empty screen)", base.median_ms, base.cpu_ms, "");
        printf("%-9s %-24s %10.3f %10.3f %8s\n", size, "live <-> heat map", live_heat.median_ms, live_heat.cpu_ms,
               "<= 5");
        printf("%-9s %-24s %10.3f %10.3f %8s\n", size, "heat map <-> knobs", heat_knobs.median_ms, heat_knobs.cpu_ms,
               "<= 5");
        if (live_heat.cpu_ms > 5 || heat_knobs.cpu_ms > 5 || live_heat.median_ms > 5 || heat_knobs.median_ms > 5)
            ok = 0;
    }
    endwin();
    delscreen(scr);
    fclose(out);
    fclose(in);
    tc_model_free(&m);
    printf("console_draw: %s (57 layers x 50 steps, %d frames each)\n", ok ? "within goal" : "OVER GOAL", frames);
    return 0;
}

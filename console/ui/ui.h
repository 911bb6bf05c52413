/*
 * ui.h -- the console's screens. Panels (one per file in console/ui/) sit
 * behind a small vtable and draw a tc_ui (the view models plus what the
 * operator selected) into a rectangle of the curses screen; they never
 * touch the network or the database. Key handling turns keys into changes
 * of the selection, or into an action (tc_action) that the caller (the live
 * loop, cmd_live.c) carries out: send a knob change, open a run, quit.
 *
 * Screens: F2 live (header, step table, sparklines, fallback reasons, and
 * the heat map beside them on wide terminals), F3 heat map, F4 knob editor,
 * F5 history (runs list), compare (two runs), F1/? help. 80x24 is the
 * smallest layout designed for; smaller terminals get a "too small" line.
 *
 * Ownership: tc_ui points at models it does not own (the caller's).
 */
#ifndef TC_UI_UI_H
#define TC_UI_UI_H

#include <stdint.h>

#include "ui/history.h"
#include "ui/model.h"

typedef struct {
    int y, x, h, w;
} tc_rect;

typedef enum {
    TC_SCREEN_LIVE = 0,
    TC_SCREEN_HEAT,
    TC_SCREEN_KNOBS,
    TC_SCREEN_HISTORY,
    TC_SCREEN_COMPARE,
    TC_SCREEN_HELP,
    TC_SCREEN_COUNT
} tc_screen;

typedef enum {
    TC_ACT_NONE = 0,
    TC_ACT_REDRAW,        /* the selection changed: draw again */
    TC_ACT_QUIT,
    TC_ACT_SET_KNOB,      /* send set_knobs(act_knob = act_value) */
    TC_ACT_OPEN_RUN,      /* load act_run_a from the database into the shown model */
    TC_ACT_COMPARE_RUNS,  /* load act_run_a and act_run_b for the compare screen */
    TC_ACT_RELOAD_HISTORY,/* re-read the runs list */
    TC_ACT_FOLLOW_LIVE,   /* show the attached run again */
} tc_action;

typedef struct tc_ui tc_ui;

/* A panel: draws part of a screen from the view models. */
typedef struct {
    const char *name;
    void (*draw)(const tc_ui *ui, tc_rect r);
} tc_panel;

extern const tc_panel tc_panel_header;     /* header.c: run, model, mode, progress, connection */
extern const tc_panel tc_panel_steps;      /* steps.c: one row per step, scrolling */
extern const tc_panel tc_panel_sparks;     /* sparks.c: curves across steps */
extern const tc_panel tc_panel_heatmap;    /* heatmap.c: layer x step map of a metric, legend */
extern const tc_panel tc_panel_reasons;    /* reasons.c: fallback reasons, step and run */
extern const tc_panel tc_panel_knobs;      /* knobs.c: the knob editor */
extern const tc_panel tc_panel_knob_log;   /* knob_log.c: the run's knob changes */
extern const tc_panel tc_panel_runs;       /* runs.c: the history browser's runs list */
extern const tc_panel tc_panel_compare;    /* compare.c: config diff and curves of two runs */
extern const tc_panel tc_panel_help;       /* help.c */
extern const tc_panel tc_panel_fkeys;      /* fkeys.c: the function-key bar */

struct tc_ui {
    tc_model *live;          /* the attached run; NULL when browsing history only */
    tc_model *shown;         /* the run the live/heat/knob screens show */
    tc_model *cmp[2];        /* the compare screen's runs (may be NULL) */
    tc_history *hist;        /* runs list (may be NULL: no database) */
    tc_screen screen, back;  /* back: where help returns to */
    int colour;              /* colours in use */
    int utf8;                /* block characters available */
    int readonly;            /* observer: knobs are shown, never sent */
    int64_t now_ns;          /* clock for elapsed/ETA */

    int step_scroll;         /* step table: rows up from the newest; 0 follows */
    tc_metric heat_metric;
    int heat_scroll;         /* heat map: rows up from the newest step */

    int knob_sel;            /* knob editor: selected knob (index into the shown table) */
    int editing;             /* the edit line is open */
    char edit_buf[64];       /* starts as the value in force; the first typed key replaces it */
    int edit_len;
    int edit_fresh;          /* nothing typed yet */
    int searching;           /* knob editor: the "/" find line is open */
    char search_buf[TP_NAME_LEN];
    int search_len;

    int run_sel;             /* history: selected run */
    int run_mark;            /* history: run marked for compare, -1 none */

    char act_knob[TP_NAME_LEN], act_value[64];         /* TC_ACT_SET_KNOB */
    char act_run_a[TP_RUN_ID_LEN], act_run_b[TP_RUN_ID_LEN]; /* OPEN / COMPARE */
    char status[256];        /* one line shown above the key bar */
};

/* Sets defaults; picks colour (has_colors, unless NO_COLOR or mono) and
 * utf8 from the locale. Call after curses is started (initscr/newterm). */
void tc_ui_init(tc_ui *ui, int mono);
/* Draws the current screen into stdscr and refreshes (doupdate). */
void tc_ui_draw(tc_ui *ui);
/* Same, without the final doupdate (benchmarks, tests). */
void tc_ui_draw_noupdate(tc_ui *ui);
/* A key (curses code) -> an action. */
tc_action tc_ui_key(tc_ui *ui, int key);
/* printf into ui->status. */
void tc_ui_status(tc_ui *ui, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The knob table shown by the editor: the header's (as the agent has it),
 * or the local one when no header arrived. Grouped order. */
int tc_ui_knob_count(const tc_model *m);
/* i-th knob in editor order; fills name/type/group/range/description. */
int tc_ui_knob_at(const tc_model *m, int i, tp_knob_desc *out);

/* ---- drawing helpers (draw.c) for panels ---- */
enum {
    TC_PAIR_TITLE = 1, /* panel titles, the header band */
    TC_PAIR_GOOD,
    TC_PAIR_WARN,
    TC_PAIR_BAD,
    TC_PAIR_DIM,
    TC_PAIR_KEY,       /* function-key labels */
    TC_PAIR_SEL,       /* selected row */
    TC_PAIR_HEAT0 = 16 /* heat levels TC_PAIR_HEAT0 .. + tc_heat_levels()-1 */
};
void tc_ui_colours_start(tc_ui *ui);      /* init_pair for the pairs below (colour only) */
int tc_attr(const tc_ui *ui, int pair);   /* the attribute of a pair (mono: bold/reverse/normal) */
/* Writes at most w columns of a formatted string at (y,x); pads with spaces to w. */
void tc_put(int y, int x, int w, int attr, const char *fmt, ...) __attribute__((format(printf, 5, 6)));
/* A titled rule across a panel's first row. */
void tc_title(const tc_ui *ui, tc_rect r, const char *title);
/* Heat levels available, and the glyph/attr of a level (0..levels-1) for a cell. */
int tc_heat_levels(const tc_ui *ui);
void tc_heat_cell(const tc_ui *ui, int y, int x, int level);
/* Sparkline of n values (NaN = not reported: blank) into w columns, scaled
 * to [lo,hi]. has[i] = 0 marks a value not reported. */
void tc_spark(const tc_ui *ui, int y, int x, int w, const double *v, const unsigned char *has, int n,
              double lo, double hi, int attr);
/* sparks.c: the curves, one row per figure; compare.c draws two runs on one
 * scale (fixed_scale with lo/hi from tc_spark_range of both). */
enum {
    TC_SPARK_QUALITY_RAW = 0,
    TC_SPARK_QUALITY_EFF,
    TC_SPARK_DEN_MIN,
    TC_SPARK_FALLBACK_SHARE,
    TC_SPARK_QK_P99,
    TC_SPARK_COUNT
};
void tc_spark_row(const tc_ui *ui, const tc_model *m, int kind, int y, int x, int w, int fixed_scale,
                  double lo, double hi);
void tc_spark_range(const tc_model *m, int kind, int n, double *lo, double *hi);
/* symmetric log used for den_min curves and maps: sign(v) log10(1 + |v|/1e-12). */
double tc_symlog(double v);

#endif /* TC_UI_UI_H */

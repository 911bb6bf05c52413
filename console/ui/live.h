/*
 * live.h -- what the live loop (console/cmd_live.c) needs besides the
 * panels: where the stream comes from and where it is recorded (the
 * source), the history database's path, and the history browser's actions.
 *
 * The source: with a database, the store branch's recorder
 * (console/recorder.h) subscribes to the agent, records every message
 * (replaying gaps from the agent's ring) and hands each decoded message to
 * the view model; the console's own SUB socket (ui/link.h) is then not
 * opened. Without one (--no-record, or a database that cannot be written),
 * the console subscribes itself and replays gaps into the view model only.
 *
 * Ownership: tc_live_source_open gives the caller a source to close with
 * tc_live_source_close; it borrows the model, which must outlive it.
 */
#ifndef TC_UI_LIVE_H
#define TC_UI_LIVE_H

#include <poll.h>
#include <stddef.h>
#include <stdint.h>

#include "ui/history.h"
#include "ui/model.h"
#include "ui/ui.h"

typedef struct tc_live_source tc_live_source;

/* db_path NULL: no recording. A database that cannot be opened for writing
 * is not fatal: the source records nothing and says why in err_note
 * (tc_live_source_note). Returns nonzero only on bad input (URL). */
int tc_live_source_open(tc_live_source **out, const char *pub_url, const char *db_path, tc_model *model,
                        char *err, size_t errlen);
void tc_live_source_close(tc_live_source *s);
/* 1 when the source delivers the stream (the recorder): no own SUB socket. */
int tc_live_source_has_stream(const tc_live_source *s);
/* Descriptors to poll (POLLIN); returns how many were written. */
int tc_live_source_fds(tc_live_source *s, struct pollfd *fds, int max);
/* Reads what is waiting, records it, feeds the model. 0, or nonzero with err. */
int tc_live_source_service(tc_live_source *s, int64_t now_ns, char *err, size_t errlen);
/* A line about recording for the status bar ("" when all is well). */
const char *tc_live_source_note(const tc_live_source *s);

/* The history database path: `given`, else the documented default
 * ($TAYLORSCOPE_DB, else $XDG_DATA_HOME/taylorscope/runs.db, else
 * ~/.local/share/taylorscope/runs.db). */
int tc_live_db_path(const char *given, char *buf, size_t len, char *err, size_t errlen);

/* Carries out a history action of the UI: TC_ACT_RELOAD_HISTORY (re-read
 * the runs list into *hist), TC_ACT_OPEN_RUN (load ui->act_run_a into
 * *opened and show it), TC_ACT_COMPARE_RUNS (load act_run_a/b into cmp[0],
 * cmp[1] and show the compare screen). 0, or nonzero with err (nothing
 * shown changes). */
int tc_live_history_action(const char *db_path, tc_action a, tc_ui *ui, tc_history *hist, tc_model *opened,
                           tc_model cmp[2], char *err, size_t errlen);

#endif

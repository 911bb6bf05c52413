/*
 * synth_pub.h -- a synthetic agent for the recorder's tests and benchmarks:
 * it speaks the wire protocol (proto.h) on a PUB socket and a REP control
 * socket (replay from a ring, set_knobs validated by tk_config_set, get_state)
 * without running any attention. It can hold messages back (published into
 * the ring but not sent) to make gaps on purpose. Prefix tc_synth_.
 *
 * Threading: publish from one thread; the control socket is served by the
 * synth's own thread. Ownership: tc_synth_close frees everything.
 */
#ifndef TC_SYNTH_PUB_H
#define TC_SYNTH_PUB_H

#include <stddef.h>
#include <stdint.h>

#include "proto.h"

typedef struct tc_synth tc_synth;

/* Listens on pub_url and on its control URL (tp_control_url_for). ring =
 * messages kept for replay (0 = 4096). */
int tc_synth_open(const char *pub_url, const char *run_id, int ring, tc_synth **out, char *err, size_t errlen);
void tc_synth_close(tc_synth *s);

int tc_synth_subscribers(tc_synth *s); /* connected SUB pipes */
uint64_t tc_synth_last_seq(tc_synth *s);
/* Starts another run: a new run id, sequence numbers from 1, an empty ring. */
void tc_synth_new_run(tc_synth *s, const char *run_id);
/* The next `count` messages are numbered and kept in the ring but not sent. */
void tc_synth_hold_back(tc_synth *s, int count);

/* Each publishes one message (the next sequence number). */
int tc_synth_header(tc_synth *s, int total_steps, int n_layers);
/* A step with n_layers rows; the figures are a function of (step, layer)
 * (tc_synth_expected_quality) so a test can check what was stored. */
int tc_synth_step(tc_synth *s, int step, int n_layers);
double tc_synth_expected_quality(int step, int layer);
int tc_synth_knob_event(tc_synth *s, tp_knob_status status, const char *name, const char *value,
                        int effective_step, const char *error);
int tc_synth_heartbeat(tc_synth *s);
int tc_synth_run_end(tc_synth *s, const char *status, int steps_done);

/* The knob values in force (set_knobs changes them); current step set by
 * tc_synth_step. */
void tc_synth_config(tc_synth *s, tk_config *out);

#endif

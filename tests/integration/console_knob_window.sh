#!/bin/sh
# The knob editor, as an operator uses it: F4, find local_window, type a new
# window, Enter. The agent acknowledges it (pending -> applied at step N)
# and the step rows from step N on show the new window while earlier rows
# keep the old one. Then an out-of-range value: the agent's error is shown
# inline and nothing changes. q quits with exit status 0.
. tests/integration/console_lib/tmux.sh
console_setup knob
console_need_sim
console_start_sim 200
console_start "$B/taylorscope" live "$URL" --db "$DB"
console_wait "step 1/200" 30
console_keys F4
console_wait "knobs  cfg v"
console_keys /
console_type local_window
console_keys Enter
console_wait " local_window: "
console_keys Enter
console_wait "new value for local_window:"
console_type 3
console_keys Enter
console_wait "local_window = 3: applied at step" 10
applied=$(console_screen | sed -n 's/.*local_window = 3: applied at step \([0-9]*\).*/\1/p' | head -1)
[ -n "$applied" ] || console_fail "no step in the applied line"

# out of range: the agent's validation error, inline; the value stays 3
console_keys Enter
console_wait "new value for local_window:"
console_type -1
console_keys Enter
console_wait "rejected: " 10
console_screen | grep -q "rejected: .*local_window" || console_fail "the error does not name the knob"
console_screen | grep -E "^ +local_window +3\*? " >/dev/null || console_fail "local_window is not 3 after the rejected change"

# the step table: the row of the applied step shows window 3, the one before 8
console_keys F2
console_wait "curves across steps"
console_wait_row "$applied" 30
before=$((applied - 1))
win_before=$(console_step_field "$before" 9)
win_after=$(console_step_field "$applied" 9)
[ "$win_before" = 8 ] || console_fail "step $before shows window '$win_before', expected 8"
[ "$win_after" = 3 ] || console_fail "step $applied shows window '$win_after', expected 3"

console_keys q
sleep 0.5
grep -q "console exited 0" "$CT_DIR/exit" 2>/dev/null || console_fail "q did not exit 0: $(cat "$CT_DIR/exit" 2>/dev/null)"

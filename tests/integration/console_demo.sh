#!/bin/sh
# `make demo` as a person sees it: scripts/demo.sh starts the simulator and
# the console; steps arrive (the progress counter moves), q quits the
# console with exit 0, the simulator is stopped (no process left), and the
# run is in the database with an end status.
. tests/integration/console_lib/tmux.sh
console_setup demo
console_need_sim
build=$(dirname "$B")
console_start env TMPDIR="$CT_DIR" BUILD="$build" DEMO_DB="$DB" DEMO_BACKEND=ref DEMO_STEPS=200 sh scripts/demo.sh
console_wait "step 1/200" 30
first=$(console_wait_progress 0)
second=$(console_wait_progress "$first")
screen=$(console_screen)
now=$(echo "$screen" | sed -n 's/^ step \([0-9]*\)\/200.*/\1/p' | head -1)
[ -n "$now" ] && [ "$now" -gt "$first" ] || console_fail "steps are not arriving (step $first, then $now)"
echo "$screen" | grep -qE "^ +$((now - 1)) +" || console_fail "no row for step $((now - 1))"
console_keys q
i=0
while [ ! -f "$CT_DIR/exit" ] && [ $i -lt 150 ]; do sleep 0.1; i=$((i + 1)); done
grep -q "console exited 0" "$CT_DIR/exit" 2>/dev/null || console_fail "the demo did not exit 0: $(cat "$CT_DIR/exit" 2>/dev/null)"
if pgrep -f "$CT_DIR/taylorscope-demo" >/dev/null; then
    pgrep -af "$CT_DIR/taylorscope-demo"
    console_fail "the demo left processes running"
fi
runs=$("$B/taylorscope" runs --db "$DB") || console_fail "taylorscope runs failed"
echo "$runs" | grep -qE "finished|failed|lost" || console_fail "no ended run in the database: $runs"
echo "$runs" | grep -q "running" && console_fail "the run is still 'running' in the database: $runs"
exit 0

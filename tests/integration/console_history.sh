#!/bin/sh
# The history browser: after a run finished (recorded by the console into
# the temp database), F5 lists it (model, mode, steps, status) and Enter
# opens it in the same views, read from the database.
. tests/integration/console_lib/tmux.sh
console_setup history
console_need_sim
console_start_sim 3
console_start "$B/taylorscope" live "$URL" --db "$DB"
console_wait "ended (finished)" 40
run=$(console_screen | sed -n 's/^ run \([^ ]*\) .*/\1/p' | head -1)
[ -n "$run" ] || console_fail "no run id in the header"
short=$(printf %.16s "$run") # the run column is 16 wide at 80 columns
console_keys F5
console_wait "runs in $DB"
console_wait "$short"
console_screen | grep -F "$short" | grep -q "finished" || console_fail "the run is not listed as finished"
console_screen | grep -F "$short" | grep -q " 3/3 " || console_fail "the run does not list 3/3 steps"
console_keys Enter
console_wait "history  status finished" 5
console_wait "stored run $run opened (3 steps)"
console_screen | grep -qE "^ +2 " || console_fail "the stored steps are not shown"
console_keys F3
console_wait "heat map:"
console_keys q
sleep 0.5
grep -q "console exited 0" "$CT_DIR/exit" 2>/dev/null || console_fail "q did not exit 0"
"$B/taylorscope" runs --db "$DB" | grep -F "$run" | grep -q finished || { echo "taylorscope runs does not list $run as finished"; exit 1; }

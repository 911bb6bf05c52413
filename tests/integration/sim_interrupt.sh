#!/bin/sh
# SIGTERM to taylor-sim mid-run: it finishes the step in flight, ends the run
# as failed ("interrupted"), exits 1, and a recorder attached to it stores
# the run as failed with every step that ran.
set -u
B=${TS_BIN:-build/bin}
tmp=$(mktemp -d)
rec=; sim=
cleanup() { [ -n "$rec" ] && kill "$rec" 2>/dev/null; [ -n "$sim" ] && kill "$sim" 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
fail() { echo "FAIL: $*"; sed 's/^/  sim: /' "$tmp/sim.err" 2>/dev/null | tail -5; exit 1; }
url="ipc://$tmp/sim.pub"
db="$tmp/runs.db"
TS="$B/taylorscope"
q() { "$TS" query "$1" --db "$db" 2>/dev/null | tail -1; }

"$TS" record "$url" --db "$db" --runs 1 --duration 60 2> "$tmp/rec.log" &
rec=$!
"$B/taylor-sim" --model tiny --steps 400 --backend cpu --mode taylor --step-delay 0.05 \
    --listen "$url" --wait-console 10 --quiet > "$tmp/sim.out" 2> "$tmp/sim.err" &
sim=$!
i=0
while :; do
    n=$(q "SELECT count(*) FROM steps")
    [ -n "$n" ] && [ "$n" -ge 3 ] 2>/dev/null && break
    i=$((i + 1)); [ $i -gt 300 ] && fail "no steps recorded after 30 s"
    sleep 0.1
done
kill -TERM "$sim"
wait "$sim"; rc=$?
sim=
[ $rc -eq 1 ] || fail "taylor-sim exited $rc after SIGTERM, expected 1"
grep -q "interrupted after [0-9]* of 400 steps" "$tmp/sim.err" || fail "no 'interrupted' message"
done_steps=$(sed -n 's/.*interrupted after \([0-9]*\) of.*/\1/p' "$tmp/sim.err")
wait "$rec" || fail "recorder exited $?"
rec=
[ "$(q "SELECT status FROM runs")" = failed ] || fail "run status $(q "SELECT status FROM runs"), expected failed"
[ "$(q "SELECT count(*) FROM steps")" = "$done_steps" ] || fail "steps recorded $(q "SELECT count(*) FROM steps"), sim ran $done_steps"
exit 0

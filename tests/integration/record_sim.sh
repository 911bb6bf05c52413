#!/bin/sh
# taylorscope record against the simulator (taylor-sim, tiny model, cpu):
# every step and layer row is recorded, a live `set` with an out-of-range
# value prints the agent's error and exits 1 (nothing changes), a valid one
# is acknowledged with its step and recorded as an applied knob event; the
# file passes PRAGMA integrity_check and the read-side commands work on it.
set -u
B=${TS_BIN:-build/bin}
[ -x "$B/taylor-sim" ] && [ -x "$B/taylorscope" ] || { echo "programs not built"; exit 77; }
"$B/taylor-sim" --help 2>/dev/null | grep -q -- '--listen' || { echo "taylor-sim has no --listen yet"; exit 77; }
tmp=$(mktemp -d)
rec=; sim=
cleanup() { [ -n "$rec" ] && kill "$rec" 2>/dev/null; [ -n "$sim" ] && kill "$sim" 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
fail() { echo "FAIL: $*"; [ -f "$tmp/rec.log" ] && sed 's/^/  rec: /' "$tmp/rec.log" | tail -20; exit 1; }
url="ipc://$tmp/sim.pub"
db="$tmp/runs.db"
TS="$B/taylorscope"

"$TS" record "$url" --db "$db" --runs 1 2> "$tmp/rec.log" &
rec=$!
steps=200
"$B/taylor-sim" --model tiny --steps $steps --backend cpu --mode taylor --listen "$url" \
    --wait-console 10 --quiet > "$tmp/sim.out" 2> "$tmp/sim.err" &
sim=$!

# wait for the first recorded steps, then change knobs live
i=0
while :; do
    n=$("$TS" query "SELECT count(*) FROM steps" --db "$db" 2>/dev/null | tail -1)
    [ -n "$n" ] && [ "$n" -gt 0 ] 2>/dev/null && break
    i=$((i + 1)); [ $i -gt 200 ] && fail "no step recorded after 20 s"
    sleep 0.1
done
out=$("$TS" set "$url" qk_norm_power=99 2>&1); rc=$?
[ $rc -eq 1 ] || fail "set out of range: exit $rc ($out)"
echo "$out" | grep -q "qk_norm_power" || fail "set out of range: error does not name the knob: $out"
out=$("$TS" set "$url" qk_norm_power=0.5 2>&1) || fail "valid set refused: $out"
echo "$out" | grep -q "takes effect at step" || fail "valid set: no step in the answer: $out"

wait "$sim" || fail "taylor-sim failed: $(cat "$tmp/sim.err")"
sim=
i=0
while kill -0 "$rec" 2>/dev/null; do
    i=$((i + 1)); [ $i -gt 100 ] && fail "the recorder did not stop after the run ended"
    sleep 0.1
done
wait "$rec" || fail "taylorscope record exited $?"
rec=

q() { "$TS" query "$1" --db "$db" | tail -1; }
[ "$(q "SELECT count(*) FROM runs")" = 1 ] || fail "expected one run"
[ "$(q "SELECT status FROM runs")" = finished ] || fail "status $(q "SELECT status FROM runs")"
[ "$(q "SELECT count(*) FROM steps")" = $steps ] || fail "steps: $(q "SELECT count(*) FROM steps")"
layers=$(q "SELECT n_double + n_single FROM runs")
[ "$(q "SELECT count(*) FROM layers")" = $((steps * layers)) ] || fail "layer rows: $(q "SELECT count(*) FROM layers")"
[ "$(q "SELECT count(*) FROM (SELECT DISTINCT step, layer FROM layers)")" = $((steps * layers)) ] || fail "duplicate layer rows"
[ "$(q "SELECT count(*) FROM knob_events e JOIN knob_changes c ON c.event_id = e.id
       WHERE e.status = 'applied' AND c.name = 'qk_norm_power' AND e.effective_step > 0")" = 1 ] ||
    fail "no applied knob event"
[ "$(q "SELECT count(*) FROM knob_events e JOIN knob_changes c ON c.event_id = e.id
       WHERE e.status = 'applied' AND c.value = '99'")" = 0 ] || fail "the out-of-range value was applied"
[ "$(q "SELECT count(*) FROM gaps WHERE recovered = 0")" = 0 ] || fail "unrecovered gaps"
[ "$(q "PRAGMA integrity_check")" = ok ] || fail "integrity_check"
n=$("$TS" export 1 --table layers --csv --db "$db" | wc -l)
[ "$n" = $((steps * layers + 1)) ] || fail "export: $n lines"
"$TS" show 1 --db "$db" | grep -q "status    finished" || fail "show"
"$TS" runs --db "$db" | grep -q "$steps/$steps" || fail "runs"
echo ok

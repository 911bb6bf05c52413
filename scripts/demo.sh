#!/bin/sh
# make demo: the simulator (tiny model, hybrid mode; the cpu backend, or
# cuda when a GPU answers, or ref when neither runs hybrid attention yet)
# with the console attached to it, recording into
# the history database: $TAYLORSCOPE_DB, else
# $XDG_DATA_HOME/taylorscope/runs.db, else ~/.local/share/taylorscope/runs.db
# (`taylorscope runs` lists what is there).
#
# Quit the console (q) to stop the demo: a simulator still running is
# interrupted, its run's end is recorded (finished, or failed/lost when cut
# short), and nothing is left running.
#
# Environment: DEMO_STEPS (default 50, paced at DEMO_STEP_DELAY seconds a step, default 0.3:
# about 20 s on cpu; 60 steps unpaced on ref), DEMO_BACKEND (cpu|cuda|ref),
# DEMO_DB (a database other than the default), BUILD (default build).
set -u
BUILD=${BUILD:-build}
B="$BUILD/bin"
steps=${DEMO_STEPS:-50}
delay=${DEMO_STEP_DELAY:-0.3}
backend=${DEMO_BACKEND:-}
# Whether a backend runs hybrid attention: a one-step probe run whose calls
# did not all fall back (the summary line says "calls N fallbacks M").
runs_hybrid() {
    "$B/taylor-sim" --model tiny --mode hybrid --backend "$1" --steps 1 --listen none --quiet 2>/dev/null |
        sed -n 's/.* calls \([0-9]*\) fallbacks \([0-9]*\) .*/\1 \2/p' | {
        read -r calls fallbacks || exit 1
        [ "$fallbacks" -lt "$calls" ]
    }
}
if [ -z "$backend" ]; then
    # the GPU when one answers, else the cpu backend; the reference backend
    # (slow: about half a second a step for tiny, which suits a demo) while
    # neither runs hybrid attention yet
    backend=ref
    for b in cpu cuda; do
        [ "$b" = cuda ] && ! { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; } && continue
        runs_hybrid "$b" && backend=$b
    done
    [ "$backend" = ref ] && steps=${DEMO_STEPS:-60} && delay=${DEMO_STEP_DELAY:-0}
fi
set -- 
[ -n "${DEMO_DB:-}" ] && set -- --db "$DEMO_DB"

dir=$(mktemp -d "${TMPDIR:-/tmp}/taylorscope-demo.XXXXXX") || exit 1
chmod 700 "$dir"
url="ipc://$dir/demo.pub"
sim_pid=
rec_pid=
cleanup() {
    [ -n "$rec_pid" ] && kill "$rec_pid" 2>/dev/null
    [ -n "$sim_pid" ] && kill "$sim_pid" 2>/dev/null
    wait 2>/dev/null
    rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' HUP INT TERM

"$B/taylor-sim" --model tiny --mode hybrid --backend "$backend" --steps "$steps" --step-delay "$delay" --listen "$url" \
    --wait-console 30 --quiet >"$dir/sim.log" 2>&1 &
sim_pid=$!

"$B/taylorscope" live "$url" "$@"
status=$?

if kill -0 "$sim_pid" 2>/dev/null; then
    # The run is still going: record its end while the simulator stops.
    "$B/taylorscope" record "$url" "$@" --runs 1 --lost-after 2 --duration 10 >/dev/null 2>&1 &
    rec_pid=$!
    sleep 1 # the recorder subscribes
    kill -TERM "$sim_pid" 2>/dev/null
    wait "$sim_pid" 2>/dev/null
    sim_pid=
    wait "$rec_pid" 2>/dev/null
    rec_pid=
else
    wait "$sim_pid" 2>/dev/null
    sim_pid=
fi
[ -s "$dir/sim.log" ] && grep -i "error" "$dir/sim.log" >&2
exit $status

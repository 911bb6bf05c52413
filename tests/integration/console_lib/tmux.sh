# tmux.sh -- helpers for the console's tmux-driven tests (sourced by
# tests/integration/console_*.sh; not a test itself, so it lives in a
# folder tests/run.sh does not scan).
#
# Each test gets a private tmux server (tmux -L <unique>), a temp folder
# holding the database and the ipc endpoints, and a trap that kills the
# tmux server and the simulator whatever happens.
#
#   console_setup NAME          temp dir, socket name, traps
#   console_need_sim            exit 77 unless taylor-sim can stream
#   console_start_sim STEPS     the tiny simulator (hybrid mode, ref backend:
#                               about half a second a step, slow enough for
#                               a person -- or a script -- to act between
#                               steps) publishing at $URL, in the background
#   console_start CMD...        a tmux session of 80x24 running CMD
#   console_wait TEXT [SECS]    until the screen shows TEXT (grep -F), else fail
#   console_wait_row STEP [SECS]    until the step table has STEP's row
#   console_wait_progress K [SECS]  until the progress line passes step K
#   console_screen              the screen as text
#   console_keys KEY...         tmux send-keys
#   console_type TEXT           send-keys -l (literal text)
#   console_fail WHY            print WHY and the screen, exit 1

B=${TS_BIN:-build/bin}

console_setup() {
    CT_NAME=$1
    CT_DIR=$(mktemp -d "${TMPDIR:-/tmp}/ts-$CT_NAME.XXXXXX")
    CT_SOCK="ts-$CT_NAME-$$"
    URL="ipc://$CT_DIR/agent.pub"
    DB="$CT_DIR/runs.db"
    CT_SIM_PID=
    trap console_cleanup EXIT
    trap 'exit 1' INT TERM
    command -v tmux >/dev/null 2>&1 || { echo "tmux is not installed"; exit 77; }
}

console_cleanup() {
    tmux -L "$CT_SOCK" kill-server >/dev/null 2>&1
    if [ -n "$CT_SIM_PID" ]; then
        kill "$CT_SIM_PID" 2>/dev/null
        wait "$CT_SIM_PID" 2>/dev/null
    fi
    rm -rf "$CT_DIR"
}

console_need_sim() {
    "$B/taylor-sim" --help 2>/dev/null | grep -q -- "--listen" ||
        { echo "taylor-sim cannot publish (no --listen)"; exit 77; }
}

console_start_sim() {
    "$B/taylor-sim" --model tiny --backend ref --mode hybrid --steps "$1" --listen "$URL" \
        --wait-console 20 --quiet >"$CT_DIR/sim.log" 2>&1 &
    CT_SIM_PID=$!
}

# (the session's TERM is tmux's own, so the keys it sends are the ones the
# program's terminfo expects)
console_start() {
    tmux -L "$CT_SOCK" -f /dev/null new-session -d -x 80 -y 24 -s console \
        "$*; echo \"console exited \$?\" > '$CT_DIR/exit'; sleep 60"
}

console_screen() { tmux -L "$CT_SOCK" capture-pane -p -t console; }

console_keys() { tmux -L "$CT_SOCK" send-keys -t console "$@"; }

console_type() { tmux -L "$CT_SOCK" send-keys -t console -l -- "$1"; }

console_fail() {
    echo "FAIL: $1"
    echo "---- screen ----"
    console_screen 2>/dev/null
    [ -f "$CT_DIR/sim.log" ] && { echo "---- sim.log (tail) ----"; tail -5 "$CT_DIR/sim.log"; }
    exit 1
}

# Timeouts stretch under the sanitizer build (TS_SANITIZE=1), where the
# reference backend is about ten times slower.
CT_SLOW=1
[ "${TS_SANITIZE:-0}" = 1 ] && CT_SLOW=6

console_wait() {
    ct_text=$1
    ct_secs=$(( ${2:-10} * CT_SLOW ))
    ct_i=0
    while [ $ct_i -lt $((ct_secs * 10)) ]; do
        console_screen 2>/dev/null | grep -qF -- "$ct_text" && return 0
        sleep 0.1
        ct_i=$((ct_i + 1))
    done
    console_fail "waited ${ct_secs}s for \"$ct_text\""
}

# Until the step table shows a row for step $1 (or fail after $2 seconds).
console_wait_row() {
    ct_secs=$(( ${2:-20} * CT_SLOW ))
    ct_i=0
    while [ $ct_i -lt $((ct_secs * 10)) ]; do
        [ -n "$(console_step_field "$1" 1)" ] && return 0
        sleep 0.1
        ct_i=$((ct_i + 1))
    done
    console_fail "waited ${ct_secs}s for the row of step $1"
}

# Until the progress line's step count is above $1; prints it.
console_wait_progress() {
    ct_secs=$(( ${2:-20} * CT_SLOW ))
    ct_i=0
    while [ $ct_i -lt $((ct_secs * 10)) ]; do
        ct_k=$(console_screen | sed -n 's/^ step \([0-9]*\)\/.*/\1/p' | head -1)
        [ -n "$ct_k" ] && [ "$ct_k" -gt "$1" ] && { echo "$ct_k"; return 0; }
        sleep 0.1
        ct_i=$((ct_i + 1))
    done
    console_fail "waited ${ct_secs}s for the step count to pass $1"
}

# The number in column $2 (1-based, whitespace-separated) of the step row of
# step $1 in the step table, or empty.
console_step_field() {
    console_screen | awk -v s="$1" -v c="$2" '$1 == s && NF >= 10 { print $c; exit }'
}

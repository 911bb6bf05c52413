#!/bin/sh
# taylor-sim from the command line: a run prints its progress and summary,
# --quiet silences the progress, bad options exit 2 with a message, a
# capture replays to the same outputs, a broken capture is a clear error.
set -u
B=${TS_BIN:-build/bin}
sim="$B/taylor-sim"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "sim_cli: $*"; exit 1; }

"$sim" --steps 3 --listen none --mode taylor >"$tmp/out" 2>"$tmp/err" || fail "run failed: $(cat "$tmp/err")"
grep -q "steps 3 calls 24 " "$tmp/out" || fail "summary: $(cat "$tmp/out")"
grep -q "step 3/3  sigma " "$tmp/err" || fail "no progress line: $(cat "$tmp/err")"
grep -q "fallbacks " "$tmp/err" || fail "progress line without fallbacks"

"$sim" --steps 2 --listen none --quiet >"$tmp/out" 2>"$tmp/err" || fail "quiet run failed"
[ -s "$tmp/err" ] && fail "--quiet still wrote: $(cat "$tmp/err")"

for bad in "--steps x" "--model nope" "--knob terms=99" "--width 100" "--bogus"; do
    # shellcheck disable=SC2086
    "$sim" $bad >"$tmp/out" 2>"$tmp/err"
    rc=$?
    [ $rc -eq 2 ] || fail "'$bad' exited $rc, expected 2"
    grep -q "^taylor-sim: " "$tmp/err" || fail "'$bad': no message"
done

"$sim" --calibrate --queries 8 >"$tmp/cal" || fail "--calibrate failed"
grep -q "^| 0.05 |" "$tmp/cal" || fail "calibration table: $(cat "$tmp/cal")"

"$sim" --steps 2 --listen none --quiet --mode taylor --capture "$tmp/cap" >"$tmp/a" || fail "capture failed"
"$sim" --listen none --quiet --mode taylor --replay "$tmp/cap" >"$tmp/b" || fail "replay failed"
pick() { sed 's/.*\(calls [0-9]* fallbacks [0-9]*\).*\(output_sum [^ ]* output_abs_sum [^ ]*\).*/\1 \2/' "$1"; }
[ "$(pick "$tmp/a")" = "$(pick "$tmp/b")" ] || fail "replay differs: $(pick "$tmp/a") / $(pick "$tmp/b")"

# a captured call runs on its own in taylor-attn (same [1,H,N,D] files)
f="$tmp/cap/s0001_l002.safetensors"
"$B/taylor-attn" --q "$f:q" --k "$f:k" --v "$f:v" --out "$tmp/o.npy" --mode exact \
    --text-tokens 64 --grid 16x16 >/dev/null 2>"$tmp/err" || fail "taylor-attn on a capture: $(cat "$tmp/err")"
[ -s "$tmp/o.npy" ] || fail "taylor-attn wrote no output"

rm "$tmp/cap/s0001_l005.safetensors"
"$sim" --listen none --quiet --replay "$tmp/cap" >"$tmp/out" 2>"$tmp/err"
[ $? -eq 1 ] || fail "replay with a missing file did not exit 1"
grep -q "s0001_l005.safetensors: no such file" "$tmp/err" || fail "missing file: $(cat "$tmp/err")"
exit 0

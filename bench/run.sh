#!/bin/sh
# make bench: every CPU benchmark program under build/bench (bench/*.c, not
# the GPU ones), each printing its own table with the baseline of the same run.
set -u
BUILD=${BUILD:-build}
found=0
for b in "$BUILD"/bench/*; do
    [ -x "$b" ] || continue
    case "$(basename "$b")" in gpu_*) continue ;; esac
    found=1
    echo "== $(basename "$b")"
    "$b" || echo "bench: $(basename "$b") failed (exit $?)"
done
[ $found -eq 1 ] || echo "bench: no benchmarks built yet"

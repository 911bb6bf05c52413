#!/bin/sh
# docs/KNOBS.md is generated from the knob table and must match it
# (run `make docs` after changing kernels/knobs.def).
set -eu
B=${TS_BIN:-build/bin}
"$B/gen-knobs-md" | diff -u docs/KNOBS.md - || { echo "docs/KNOBS.md is stale: run make docs"; exit 1; }

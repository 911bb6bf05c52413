#!/bin/sh
# make demo: the simulator (tiny model, CPU backend, hybrid mode) with its
# progress line. The console will later run in front of it
# (--wait-console keeps the first steps for it).
set -eu
BUILD=${BUILD:-build}
exec "$BUILD/bin/taylor-sim" --model tiny --backend cpu --mode hybrid --steps 20 "$@"

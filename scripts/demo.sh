#!/bin/sh
# make demo: the main job. For now: the simulator's help (later issues grow
# this into the simulator running in front of the live console).
set -eu
BUILD=${BUILD:-build}
"$BUILD/bin/taylor-sim" --help

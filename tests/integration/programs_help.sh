#!/bin/sh
# Every program answers --help (exit 0, a usage line) and --version, and
# refuses an unknown option with a non-zero exit.
set -eu
B=${TS_BIN:-build/bin}
for p in taylor-attn taylor-sim taylorscope; do
    out=$("$B/$p" --help)
    echo "$out" | grep -q "usage: $p" || { echo "$p --help: no usage line"; exit 1; }
    "$B/$p" --version | grep -q "^$p [0-9]" || { echo "$p --version: no version"; exit 1; }
    if "$B/$p" --no-such-option >/dev/null 2>&1; then echo "$p accepted --no-such-option"; exit 1; fi
done

#!/bin/sh
# make gpu-test: the GPU tests alone (tests/gpu/*_test.c), on a machine with an
# H100 or H200. Without a GPU they report themselves skipped.
set -u
BUILD=${BUILD:-build}
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu-test: no NVIDIA GPU on this machine; the GPU tests will report skipped."
    echo "gpu-test: run 'make gpu-test' on an H100/H200 machine (see docs/ARCHITECTURE.md)."
fi
if ! ls "$BUILD"/tests/tests__gpu__* >/dev/null 2>&1; then
    echo "gpu-test: no GPU tests were built (was nvcc on PATH?)"
    echo "0 passed, 0 failed"
    exit 0
fi
TEST_FILTER=tests__gpu__ BUILD=$BUILD exec sh "$(dirname "$0")/run.sh"

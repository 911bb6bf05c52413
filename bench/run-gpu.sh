#!/bin/sh
# make bench-gpu: the GPU benchmarks (bench/gpu_*.c) against PyTorch SDPA
# (cuDNN and flash backends) and cuBLAS/copy ceilings, on an H100 or H200.
set -u
BUILD=${BUILD:-build}
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "bench-gpu: no NVIDIA GPU on this machine. Run 'make bench-gpu' on an H100/H200"
    echo "bench-gpu: machine; it prints the table saved under docs/ (see docs/ARCHITECTURE.md)."
    exit 0
fi
found=0
for b in "$BUILD"/bench/gpu_*; do
    [ -x "$b" ] || continue
    found=1
    "$b" || echo "bench-gpu: $(basename "$b") failed (exit $?)"
done
[ $found -eq 1 ] || echo "bench-gpu: no GPU benchmarks built yet"

#!/bin/sh
# gpu-session.sh -- build and run the CUDA backend's tests and benchmark on a
# GPU machine that lacks the host libraries (nng, msgpack, sqlite, ncurses,
# openblas): compiles kernels/cuda/*.cu, the few plain-C kernel files the
# GPU code needs (knobs.c, names.c), the test harness, tests/gpu/*_test.c and
# bench/gpu_*.c, and links them against cuBLAS + cudart only.
#   sh scripts/gpu-session.sh [test|bench|all|build] [bench args]
# Logs go to $OUT (when set) as gpu-test.log / gpu-bench.log.
set -u
what=${1:-all}
[ $# -gt 0 ] && shift
B=build/gpu
OUTDIR=${OUT:-$B}
mkdir -p "$B" "$OUTDIR"
NV="nvcc -O3 -g -lineinfo -std=c++17 -gencode=arch=compute_90,code=sm_90 -Ikernels -DTK_HAVE_CUDA=1"
CC="gcc -O2 -g -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -Ikernels -Itests -DTK_HAVE_CUDA=1 -I/usr/local/cuda/include"
objs=""
for f in kernels/cuda/*.cu; do
    o=$B/$(basename "$f" .cu).o
    objs="$objs $o"
    $NV -c "$f" -o "$o" &
done
for f in kernels/knobs.c kernels/names.c tests/harness.c; do
    $CC -c "$f" -o "$B/$(basename "$f" .c).o" &
done
wait
for f in tests/gpu/*_test.c bench/gpu_*.c; do
    $CC -c "$f" -o "$B/$(basename "$f" .c).o" || exit 1
done
common="$objs $B/knobs.o $B/names.o"
for f in tests/gpu/*_test.c; do
    n=$(basename "$f" .c)
    nvcc -o "$B/$n" "$B/$n.o" "$B/harness.o" $common -lcublas || exit 1
done
for f in bench/gpu_*.c; do
    n=$(basename "$f" .c)
    nvcc -o "$B/$n" "$B/$n.o" $common -lcublas || exit 1
done
[ "$what" = build ] && exit 0
if [ "$what" = test ] || [ "$what" = all ]; then
    for t in "$B"/*_test; do
        echo "== $t"; "$t"
    done 2>&1 | tee "$OUTDIR/gpu-test.log"
    if command -v compute-sanitizer >/dev/null 2>&1; then
        echo "== compute-sanitizer (small cases)"
        compute-sanitizer --tool memcheck --error-exitcode 9 "$B/attention_test" \
            test_exact_f16_d64_cross_attention_with_key_mask_matches_fp64 \
            test_taylor_p3_eight_blocks_with_mask_and_normalized_qk_matches_fp64 \
            test_negative_denominators_fall_back_at_the_probe_and_leave_o_untouched 2>&1 | tail -8
        echo "compute-sanitizer exit $?"
    fi 2>&1 | tee -a "$OUTDIR/gpu-test.log"
fi
if [ "$what" = bench ] || [ "$what" = all ]; then
    for b in "$B"/gpu_*; do
        case "$b" in *.o) continue ;; esac
        "$b" "$@"
    done 2>&1 | tee "$OUTDIR/gpu-bench.log"
fi

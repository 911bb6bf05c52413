#!/bin/sh
# The wgmma kernels (kernels/cuda/exact.cu, hybrid_wgmma.cu and the far
# field of taylor_small.cu, sm_90a) as
# ptxas builds them: when ptxas cannot keep the warpgroup MMAs asynchronous
# it serializes them and says so only as an info line (C7510/C7515/C7520,
# "Potential Performance Loss", or C7519 "warpgroup.arrive is injected":
# that one came with a wait after every wgmma of the kernel), which -Werror
# does not catch; once that cost ~30% of the exact kernel's speed
# (docs/GPU-NOTES.md). This fails the
# build's tests when it happens. Needs nvcc (CI has it); skipped (77)
# without. WGMMA_CHECK_EXTRA adds nvcc flags (WGMMA_CHECK_EXTRA=-G
# serializes them: the check then fails).
command -v nvcc >/dev/null 2>&1 || { echo "no nvcc: skipped"; exit 77; }
flags=$(sed -n 's/^  NVCCFLAGS = .*\(-gencode=[^ ]*\).*/\1/p' Makefile | head -1)
[ -n "$flags" ] || { echo "cannot read the -gencode target from the Makefile"; exit 1; }
out=$(mktemp "${TMPDIR:-/tmp}/ts-ptxas.XXXXXX") || exit 1
trap 'rm -f "$out" "$out.o"' EXIT
for src in exact.cu hybrid_wgmma.cu taylor_small.cu; do
    nvcc -O3 -std=c++17 "$flags" ${WGMMA_CHECK_EXTRA:-} -Xptxas -v -Ikernels -DTK_HAVE_CUDA=1 \
        -c "kernels/cuda/$src" -o "$out.o" >"$out" 2>&1 || {
        cat "$out"
        echo "$src does not compile"
        exit 1
    }
    grep -q "wgmma_ss\|wgmma_rs\|wgmma\." "kernels/cuda/$src" || { echo "$src no longer uses wgmma"; exit 1; }
    if grep -E "C7515|C7510|C7519|C7520|Potential Performance Loss" "$out"; then
        echo "ptxas serialized wgmma in $src (see the lines above)"
        exit 1
    fi
    echo "ptxas kept every wgmma of $src asynchronous ($flags)"
done

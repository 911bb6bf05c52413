#!/bin/sh
# device-bundle.sh -- builds taylorscope here and packs into .devbundle/ what
# a GPU machine (Ubuntu 24.04, CUDA at /usr/local/cuda, without nng, msgpack,
# sqlite, ncurses or OpenBLAS) needs to run it: the three programs, the GPU
# test binaries (tests/gpu), build/bench/gpu_*, bench/*.py, and every shared
# library they load that is not the C/C++ runtime or CUDA (real files, in
# lib/). Each binary embeds the CUDA kernels (about 18 MB), so the whole is
# packed as payload.tar.xz (about 12 MB: the run tool carries 64 MiB at most)
# beside run.sh, which unpacks it under $TMPDIR on first use.
#   sh scripts/device-bundle.sh
#   ONLY="tests__gpu__stats_test gpu_attention" sh scripts/device-bundle.sh
#   on the device: cd .devbundle && ./run.sh CMD [ARGS...]
# ONLY (program names, space-separated) packs just those programs and the
# libraries they load: the whole bundle nears the 64 MiB the run tool carries.
# CMD is a program of bin/, tests/ or bench/ by name, or any command; it runs
# with LD_LIBRARY_PATH set to the bundle's lib/ only.
set -eu
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
DEST=.devbundle
STAGE=$DEST/x
jobs=$(nproc 2>/dev/null || echo 2)

make -j"$jobs" all tests >/dev/null
make -j"$jobs" $(for f in bench/gpu_*.c; do printf '%s/bench/%s ' "$BUILD" "$(basename "$f" .c)"; done) >/dev/null

rm -rf "$DEST"
mkdir -p "$STAGE/bin" "$STAGE/tests" "$STAGE/bench" "$STAGE/lib"
cp "$BUILD"/bin/taylor-attn "$BUILD"/bin/taylor-sim "$BUILD"/bin/taylorscope "$STAGE/bin/"
cp "$BUILD"/tests/tests__gpu__* "$STAGE/tests/"
cp "$BUILD"/bench/gpu_* "$STAGE/bench/"
cp bench/*.py "$STAGE/bench/" 2>/dev/null || true
if [ -n "${ONLY:-}" ]; then
    for b in "$STAGE"/bin/* "$STAGE"/tests/* "$STAGE"/bench/gpu_*; do
        [ -e "$b" ] || continue
        case "$b" in *.py) continue ;; esac
        case " $ONLY " in *" $(basename "$b") "*) ;; *) rm -f "$b" ;; esac
    done
    for n in $ONLY; do
        [ -e "$STAGE/bin/$n" ] || [ -e "$STAGE/tests/$n" ] || [ -e "$STAGE/bench/$n" ] ||
            { echo "device-bundle: ONLY names $n, which is not a program of bin/, tests/ or bench/" >&2; exit 1; }
    done
fi
for b in "$STAGE"/bin/* "$STAGE"/tests/* "$STAGE"/bench/gpu_*; do
    [ -e "$b" ] || continue # an empty folder under ONLY
    case "$b" in *.py) ;; *) strip --strip-debug "$b" ;; esac
done

# Libraries every Linux machine (or the CUDA toolkit) provides: never copied.
system_lib() {
    case "$1" in
    linux-vdso*|ld-linux*|libc.so*|libm.so*|libpthread.so*|libdl.so*|librt.so*|libstdc++.so*|\
    libgcc_s.so*|libcuda.so*|libcudart.so*|libcublas*|libcublasLt*|libnvidia*|libnvrtc*|libresolv.so*)
        return 0 ;;
    esac
    return 1
}

# Copies the non-system libraries one binary loads (ldd resolves the whole
# tree, so a library's own dependencies -- libgfortran, libquadmath -- come too).
collect() {
    ldd "$1" 2>/dev/null | while read -r name arrow path rest; do
        [ "$arrow" = "=>" ] || continue
        system_lib "$name" && continue
        [ -f "$path" ] || { echo "device-bundle: $1 needs $name, not found here" >&2; exit 1; }
        [ -f "$STAGE/lib/$name" ] || cp -L "$path" "$STAGE/lib/$name"
    done
}
for b in "$STAGE"/bin/* "$STAGE"/tests/* "$STAGE"/bench/*; do
    [ -e "$b" ] || continue
    case "$b" in *.py) ;; *) collect "$b" ;; esac
done

cat > "$DEST/run.sh" <<'EOF'
#!/bin/sh
# run.sh CMD [ARGS...] -- runs CMD with this bundle's libraries. CMD is a
# program of bin/, tests/ or bench/ by name, or any path/command. The first
# call unpacks payload.tar.xz under $TMPDIR (tar + xz, or python3 without
# xz), not beside it: the bundle folder stays small enough to carry.
set -u
top=$(cd "$(dirname "$0")" && pwd)
unpack=${TMPDIR:-/tmp}/taylorscope-bundle-$(cksum < "$top/payload.tar.xz" | cut -d' ' -f1)
here=$unpack/x
if [ ! -d "$here/lib" ]; then
    mkdir -p "$unpack" || exit 1
    if command -v xz >/dev/null 2>&1; then
        tar xJf "$top/payload.tar.xz" -C "$unpack" || exit 1
    else
        python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' \
            "$top/payload.tar.xz" "$unpack" || exit 1
    fi
fi
export LD_LIBRARY_PATH="$here/lib"
export TS_BIN="$here/bin"
export PATH="$here/bin:$PATH"
[ $# -gt 0 ] || { echo "usage: run.sh CMD [ARGS...]" >&2; exit 2; }
cmd=$1
shift
for d in bin tests bench; do
    if [ -x "$here/$d/$cmd" ]; then cmd="$here/$d/$cmd"; break; fi
done
exec "$cmd" "$@"
EOF
chmod +x "$DEST/run.sh"

# Every library a bundled binary loads must now resolve to lib/ or the system set.
bad=0
for b in "$STAGE"/bin/* "$STAGE"/tests/* "$STAGE"/bench/*; do
    [ -e "$b" ] || continue
    case "$b" in *.py) continue ;; esac
    LD_LIBRARY_PATH="$STAGE/lib" ldd "$b" 2>/dev/null | while read -r name arrow path rest; do
        [ "$arrow" = "=>" ] || continue
        system_lib "$name" && continue
        case "$path" in *"$STAGE/lib/"*) ;; *) echo "device-bundle: $b: $name -> $path (outside the bundle)" >&2; exit 1 ;; esac
    done || bad=1
done
[ $bad -eq 0 ] || exit 1
libs=$(ls "$STAGE/lib" | tr '\n' ' ')
(cd "$DEST" && tar cf - x | xz -T0 -6 > payload.tar.xz)
rm -rf "$STAGE"
echo "device-bundle: $DEST/payload.tar.xz $(du -h "$DEST/payload.tar.xz" | cut -f1) (libraries: $libs)"

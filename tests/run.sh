#!/bin/sh
# Runs every unit test binary and integration script, then prints one line:
# "N passed, N failed" (", N skipped" when some were skipped).
# Unit binaries print PASS/FAIL/SKIP lines (tests/harness.h); an integration
# script is one test: exit 0 pass, 77 skip, anything else fail.
# Environment: BUILD (default build), TEST_FILTER (substring of names to run).
set -u
BUILD=${BUILD:-build}
export BUILD
export TS_BIN="$BUILD/bin"
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root" || exit 1
log=$(mktemp)
trap 'rm -f "$log"' EXIT
pass=0 fail=0 skip=0

count() {   # count lines of a test binary's output
    while IFS= read -r line; do
        case "$line" in
        PASS\ *) pass=$((pass + 1)); echo "  ok    ${line#PASS }" ;;
        SKIP\ *) skip=$((skip + 1)); echo "  skip  ${line#SKIP }" ;;
        FAIL\ *) fail=$((fail + 1)); echo "  FAIL  ${line#FAIL }" ;;
        FAIL_DETAIL\ *|SKIP_DETAIL\ *) echo "        ${line#*_DETAIL }" ;;
        *) ;;
        esac
    done < "$log"
}

for t in "$BUILD"/tests/*; do
    [ -x "$t" ] || continue
    name=$(basename "$t")
    case "$name" in *"${TEST_FILTER:-}"*) ;; *) continue ;; esac
    echo "$name"
    timeout 300 "$t" > "$log" 2>"$log.err"
    rc=$?
    count
    if [ $rc -ne 0 ] && ! grep -q '^FAIL ' "$log"; then
        fail=$((fail + 1)); echo "  FAIL  $name exited $rc"; sed 's/^/        /' "$log.err" | tail -20
    elif grep -q '^FAIL ' "$log"; then
        sed 's/^/        /' "$log.err" | tail -20
    fi
    rm -f "$log.err"
done

for s in tests/integration/*.sh; do
    [ -f "$s" ] || continue
    name=$(basename "$s" .sh)
    case "$name" in *"${TEST_FILTER:-}"*) ;; *) continue ;; esac
    timeout 300 sh "$s" > "$log" 2>&1
    rc=$?
    case $rc in
    0) pass=$((pass + 1)); echo "  ok    $name" ;;
    77) skip=$((skip + 1)); echo "  skip  $name: $(tail -1 "$log")" ;;
    *) fail=$((fail + 1)); echo "  FAIL  $name (exit $rc)"; sed 's/^/        /' "$log" | tail -30 ;;
    esac
done

if [ $skip -gt 0 ]; then
    echo "$pass passed, $fail failed, $skip skipped"
else
    echo "$pass passed, $fail failed"
fi
[ $fail -eq 0 ]

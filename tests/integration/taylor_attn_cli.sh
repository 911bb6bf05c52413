#!/bin/sh
# taylor-attn end to end: exit 0 with an output file of the right size for
# each mode and backend, 3 on a fallback (reason on stderr, no output file,
# an existing one untouched), 2 on bad input (option, knob value, file,
# shape), --stats as one JSON object, .npy and .safetensors in and out.
# The input tensors are written here with printf: float32 values drawn from
# +-{1/8, 1/4, 1/2, 3/4, 1, 3/2} (bytes spelled in octal) by a small LCG.
set -u
B=${TS_BIN:-build/bin}
T=$B/taylor-attn
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }

# write_npy FILE "d0, d1, ..." COUNT SEED
write_npy() {
    file=$1 shape=$2 count=$3 seed=$4
    dict="{'descr': '<f4', 'fortran_order': False, 'shape': ($shape), }"
    len=${#dict}
    total=$(( (10 + len + 1 + 63) / 64 * 64 ))
    hl=$((total - 10))
    pad=$((total - 10 - len - 1))
    {
        printf '\223NUMPY\001\000'
        printf "\\$(printf %03o $((hl % 256)))\\$(printf %03o $((hl / 256)))"
        printf '%s' "$dict"
        printf "%${pad}s\n" ""
        s=$seed i=0 buf=""
        while [ $i -lt "$count" ]; do
            s=$(( (s * 1103515245 + 12345) % 2147483648 ))
            case $(( (s / 65536) % 12 )) in
            0) buf="$buf\\000\\000\\000\\076" ;;  1) buf="$buf\\000\\000\\200\\076" ;;
            2) buf="$buf\\000\\000\\000\\077" ;;  3) buf="$buf\\000\\000\\100\\077" ;;
            4) buf="$buf\\000\\000\\200\\077" ;;  5) buf="$buf\\000\\000\\300\\077" ;;
            6) buf="$buf\\000\\000\\000\\276" ;;  7) buf="$buf\\000\\000\\200\\276" ;;
            8) buf="$buf\\000\\000\\000\\277" ;;  9) buf="$buf\\000\\000\\100\\277" ;;
            10) buf="$buf\\000\\000\\200\\277" ;; 11) buf="$buf\\000\\000\\300\\277" ;;
            esac
            i=$((i + 1))
            if [ $((i % 256)) -eq 0 ]; then printf "$buf"; buf=""; fi
        done
        printf "$buf"
    } > "$file"
}

# B=1, H=2, N=4+8x9=76 tokens (4 text + a 8x9 grid), D=Dv=8
N=76
write_npy "$dir/q.npy" "1, 2, $N, 8" $((2 * N * 8)) 1
write_npy "$dir/k.npy" "1, 2, $N, 8" $((2 * N * 8)) 2
write_npy "$dir/v.npy" "1, 2, $N, 8" $((2 * N * 8)) 3
write_npy "$dir/k7.npy" "1, 2, $N, 7" $((2 * N * 7)) 4
write_npy "$dir/mask.npy" "1, $N" $N 5   # not 0/1: refused
write_npy "$dir/mask_bad_shape.npy" "2, $N" $((2 * N)) 5
IN="--q $dir/q.npy --k $dir/k.npy --v $dir/v.npy"
out_bytes=$(( 128 + 2 * N * 8 * 4 ))   # npy header (128 bytes for this shape) + data

run() { # expected_exit description args...
    want=$1 what=$2
    shift 2
    "$T" "$@" > "$dir/stdout" 2> "$dir/stderr"
    got=$?
    if [ $got -ne "$want" ]; then
        fail "$what: exit $got, expected $want"
        sed 's/^/    /' "$dir/stderr"
    fi
}

# ---- exit 0 with an output ----
for backend in ref cpu; do
    for mode in exact taylor hybrid; do
        rm -f "$dir/o.npy"
        run 0 "$mode on $backend" $IN --out "$dir/o.npy" --mode $mode --backend $backend \
            --min-tokens 0 --terms 3 --sub-head-blocks 2 --text-tokens 4 --grid 8x9 --local-window 2 \
            --global-dim 4 --stats
        size=$(wc -c < "$dir/o.npy" 2>/dev/null || echo 0)
        [ "$size" -eq $out_bytes ] || fail "$mode on $backend: output is $size bytes, expected $out_bytes"
        grep -q "\"path\":\"$mode\"" "$dir/stdout" || fail "$mode on $backend: --stats has no path $mode: $(cat "$dir/stdout")"
        [ "$(wc -l < "$dir/stdout")" -eq 1 ] || fail "$mode on $backend: --stats is not one line"
        case $(cat "$dir/stdout") in "{"*"}") ;; *) fail "$mode on $backend: --stats is not one JSON object" ;; esac
        ls "$dir" | grep -q '\.tmp\.' && fail "$mode on $backend: a temporary file was left behind"
    done
done
grep -q '"quality_raw":{' "$dir/stdout" || fail "--stats of hybrid has no quality_raw"

# both spellings of a knob, --name=value, and safetensors out then in
run 0 "underscore spelling" $IN --out "$dir/o.safetensors" --mode taylor --sub_head_blocks=4 --min_tokens 0
[ -s "$dir/o.safetensors" ] || fail "no safetensors output"
run 0 "safetensors input" --q "$dir/q.npy" --k "$dir/k.npy" --v "$dir/o.safetensors:o" \
    --out "$dir/o2.npy" --mode exact
run 0 "safetensors input without a name" --q "$dir/q.npy" --k "$dir/k.npy" --v "$dir/o.safetensors" \
    --out "$dir/o2.npy" --mode exact
run 2 "safetensors input with a wrong name" --q "$dir/q.npy" --k "$dir/k.npy" --v "$dir/o.safetensors:x" \
    --out "$dir/o3.npy" --mode exact
grep -q "no tensor named 'x'" "$dir/stderr" || fail "wrong tensor name: no message naming it"

# an f16 v gives an f16 output (v's dtype): v = 1.0 everywhere, so o = 1.0
{
    dict="{'descr': '<f2', 'fortran_order': False, 'shape': (1, 2, $N, 8), }"
    printf '\223NUMPY\001\000\166\000%s' "$dict"
    printf "%$((128 - 10 - ${#dict} - 1))s\n" ""
    i=0
    while [ $i -lt $((2 * N * 8)) ]; do printf '\000\074'; i=$((i + 1)); done
} > "$dir/v16.npy"
run 0 "f16 values" --q "$dir/q.npy" --k "$dir/k.npy" --v "$dir/v16.npy" --out "$dir/o16.npy" --mode exact
head -c 128 "$dir/o16.npy" | grep -q "'descr': '<f2'" || fail "f16 v: the output is not f16"
[ "$(wc -c < "$dir/o16.npy")" -eq $((128 + 2 * N * 8 * 2)) ] || fail "f16 v: output size"
[ "$(tail -c 2 "$dir/o16.npy" | od -An -tx1 | tr -d ' ')" = "003c" ] || fail "f16 v: o is not 1.0"

# ---- exit 3: fallback, no output ----
cp "$dir/o.npy" "$dir/keep.npy"
run 3 "below_min_tokens" $IN --out "$dir/f.npy" --mode taylor --min-tokens 1000
[ -e "$dir/f.npy" ] && fail "below_min_tokens: an output file was written"
grep -q "below_min_tokens" "$dir/stderr" || fail "below_min_tokens: reason not printed"
run 3 "denominator in the probe" $IN --out "$dir/f.npy" --mode taylor --min-tokens 0 --terms 2 \
    --sub-head-blocks 1 --scale-mul 60 --stats
[ -e "$dir/f.npy" ] && fail "denominator fallback: an output file was written"
grep -q "denominator_too_small (stage probe)" "$dir/stderr" || fail "denominator fallback: $(cat "$dir/stderr")"
grep -q '"reason":"denominator_too_small"' "$dir/stdout" || fail "fallback --stats has no reason"
run 3 "fallback keeps an existing output" $IN --out "$dir/keep.npy" --mode taylor --min-tokens 1000
cmp -s "$dir/o.npy" "$dir/keep.npy" || fail "a fallback changed an existing output file"
for backend in ref cpu; do
    run 3 "sub_head_block_mismatch on $backend" $IN --out "$dir/f.npy" --mode taylor --min-tokens 0 \
        --sub-head-blocks 3 --backend $backend
    [ -e "$dir/f.npy" ] && fail "sub_head_block_mismatch: an output file was written"
done

# NaN in q: the library's bad_input reason, a fallback like any other
{ head -c 128 "$dir/q.npy"; printf '\000\000\300\177'; tail -c +133 "$dir/q.npy"; } > "$dir/qnan.npy"
run 3 "NaN input" --q "$dir/qnan.npy" --k "$dir/k.npy" --v "$dir/v.npy" --out "$dir/f.npy" --mode exact
grep -q "bad_input" "$dir/stderr" || fail "NaN input: reason not printed: $(cat "$dir/stderr")"
[ -e "$dir/f.npy" ] && fail "NaN input: an output file was written"

# ---- exit 2: bad input, no output ----
run 2 "unknown option" $IN --out "$dir/b.npy" --no-such-knob 1
run 2 "knob out of range" $IN --out "$dir/b.npy" --terms 99
grep -q "terms" "$dir/stderr" || fail "knob out of range: message does not name the knob"
run 2 "missing file" --q "$dir/nope.npy" --k "$dir/k.npy" --v "$dir/v.npy" --out "$dir/b.npy"
printf 'garbage, not a tensor' > "$dir/bad.npy"
run 2 "corrupt file" --q "$dir/bad.npy" --k "$dir/k.npy" --v "$dir/v.npy" --out "$dir/b.npy"
grep -q "bad.npy: bad magic" "$dir/stderr" || fail "corrupt file: no message naming the file and problem"
run 2 "shape mismatch" --q "$dir/q.npy" --k "$dir/k7.npy" --v "$dir/v.npy" --out "$dir/b.npy"
grep -q "shape mismatch" "$dir/stderr" || fail "shape mismatch: no message"
run 2 "non-binary mask" $IN --mask "$dir/mask.npy" --out "$dir/b.npy"
run 2 "mask shape" $IN --mask "$dir/mask_bad_shape.npy" --out "$dir/b.npy"
run 2 "grid mismatch" $IN --grid 9x9 --text-tokens 4 --out "$dir/b.npy"
run 2 "bad grid" $IN --grid 9by9 --out "$dir/b.npy"
run 2 "output extension" $IN --out "$dir/b.txt"
run 2 "missing --out" $IN
run 2 "bad backend" $IN --out "$dir/b.npy" --backend gpu
[ -e "$dir/b.npy" ] && fail "bad input: an output file was written"

[ $fails -eq 0 ] || { echo "$fails failure(s)"; exit 1; }
echo "taylor-attn cli: all checks passed"

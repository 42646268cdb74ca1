#!/usr/bin/env bash
# A flipped byte anywhere in a layer file (header, strings, table, payload, statistics,
# padding) or a truncated file: verify exits 1 naming the file; export refuses the cache.
source "$(dirname "$0")/lib.sh" "$@"

$GEN "$WORK/m" --layers 2 --shards 1
expect_rc 0 "quantize" -- "$SLI" quantize "$WORK/m" --cache "$WORK/clean" --model-id m
LAYER=$(find "$WORK/clean" -name 'layer-00001.slc')
REL=${LAYER#"$WORK/clean/"}
u64() { python3 -c "import struct,sys; print(struct.unpack_from('<Q', open(sys.argv[1],'rb').read(), int(sys.argv[2]))[0])" "$1" "$2"; }
INDEX_BYTES=$(u64 "$LAYER" 16)
DATA_START=$(u64 "$LAYER" 24)
SIZE=$(stat -c %s "$LAYER")
declare -A SPOTS=(
    [magic]=0 [version]=8 [header-size-field]=16 [layer-index]=40 [checksum]=60
    [layer-name]=70 [table]=$((INDEX_BYTES - 30)) [padding-after-index]=$((INDEX_BYTES + 5))
    [first-payload]=$((DATA_START + 3)) [second-extent]=$((DATA_START + 4096 + 1))
    [late-payload]=$((SIZE - 4096 + 1)) [last-byte]=$((SIZE - 1))
)
for what in "${!SPOTS[@]}"; do
    rm -rf "$WORK/c"; cp -r "$WORK/clean" "$WORK/c"
    $ST flip "$WORK/c/$REL" "${SPOTS[$what]}"
    expect_rc 1 "verify detects a flipped byte in $what" -- "$SLI" verify "$WORK/c"
    expect_out "CORRUPT layer 1 .*layer-00001.slc" "verify names the file ($what)"
    expect_out "1 corrupt" "only that layer is corrupt ($what)"
done
# Export refuses damage that touches data it would hand on.
for what in magic table first-payload late-payload; do
    rm -rf "$WORK/c"; cp -r "$WORK/clean" "$WORK/c"
    $ST flip "$WORK/c/$REL" "${SPOTS[$what]}"
    expect_rc 1 "export refuses a flipped byte in $what" -- "$SLI" export "$WORK/c" --output "$WORK/o.safetensors"
    expect_out "Corruption: .*layer-00001.slc" "export names the file ($what)"
    [ ! -e "$WORK/o.safetensors" ] && pass "no partial export ($what)" || fail "partial export left ($what)"
done
for cut in 10 $((INDEX_BYTES - 1)) $((SIZE - 4096)) $((SIZE - 1)); do
    rm -rf "$WORK/c"; cp -r "$WORK/clean" "$WORK/c"
    truncate -s "$cut" "$WORK/c/$REL"
    expect_rc 1 "verify detects truncation to $cut bytes" -- "$SLI" verify "$WORK/c"
    expect_out "truncated" "truncation is named ($cut)"
    expect_rc 1 "export refuses truncation to $cut" -- "$SLI" export "$WORK/c" --output "$WORK/o.safetensors"
done
rm -rf "$WORK/c"; cp -r "$WORK/clean" "$WORK/c"
rm "$WORK/c/$REL"
expect_rc 0 "a missing layer is not corruption" -- "$SLI" verify "$WORK/c"
expect_out "MISSING layer 1" "missing layer listed"
expect_rc 3 "export of an incomplete cache fails" -- "$SLI" export "$WORK/c" --output "$WORK/o.safetensors"
expect_out "missing" "export says the layer is missing"
finish

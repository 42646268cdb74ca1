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
    expect_out "verify .* --repair" "verify says how to repair ($what)"
    # --repair quantizes the layer again from the source the manifest names: the file comes
    # back byte for byte as the clean run wrote it (quantization is deterministic).
    expect_rc 0 "verify --repair from another directory ($what)" -- \
        env -C / "$(realpath "$SLI")" verify "$WORK/c" --repair --quiet
    expect_out "REPAIRED 1 layers from $WORK/m " "the repair names its source ($what)"
    expect_out "0 corrupt, 0 missing \(1 repaired\)" "the repair is counted ($what)"
    cmp -s "$WORK/clean/$REL" "$WORK/c/$REL" && pass "repaired file is the clean one ($what)" \
        || fail "repaired file differs from the clean one ($what)"
done
# The same through quantize --repair (and not without it: its index is intact).
rm -rf "$WORK/c"; cp -r "$WORK/clean" "$WORK/c"
$ST flip "$WORK/c/$REL" "${SPOTS[late-payload]}"
expect_rc 0 "quantize reuses a layer whose index is intact" -- \
    "$SLI" quantize "$WORK/m" --cache "$WORK/c" --model-id m
expect_out "0 written, 4 already complete" "nothing rewritten without --repair"
expect_rc 0 "quantize --repair" -- env SLI_LOG=warn "$SLI" quantize "$WORK/m" --cache "$WORK/c" --model-id m --repair
expect_out "1 written, 3 already complete, 1 damaged ones rewritten" "quantize --repair rewrites it"
expect_out "layer 1 \(model.layers.0\) is damaged, quantizing it again: .*layer-00001.slc" \
    "the rewrite is logged with the damage"
cmp -s "$WORK/clean/$REL" "$WORK/c/$REL" && pass "quantize --repair restores the clean file" \
    || fail "quantize --repair left a different file"
# Missing layers are repaired too; a clean cache needs nothing.
rm "$WORK/c/$REL"
expect_rc 0 "verify --repair of a missing layer" -- "$SLI" verify "$WORK/c" --repair
expect_out "REPAIRED 1 layers" "the missing layer is written"
expect_rc 0 "verify --repair of an intact cache" -- "$SLI" verify "$WORK/c" --repair
expect_out "4 layers ok, 0 corrupt, 0 missing \(0 repaired\)" "nothing to repair"
grep -q REPAIRED "$WORK/out" && fail "an intact cache was rewritten" || pass "an intact cache is left alone"
expect_rc 2 "--threads needs --repair" -- "$SLI" verify "$WORK/c" --threads 2
# What --repair refuses: a changed source, a source that is gone, a cache moved by hand.
$ST flip "$WORK/c/$REL" "${SPOTS[late-payload]}"
cp -r "$WORK/m" "$WORK/m.orig"
$GEN "$WORK/m" --layers 3 --shards 1 >/dev/null
expect_rc 1 "verify --repair with a changed source" -- "$SLI" verify "$WORK/c" --repair
expect_out "NOT REPAIRED: .*source checkpoint $WORK/m has changed" "the changed source is named"
rm -rf "$WORK/m"
expect_rc 1 "verify --repair without the source" -- "$SLI" verify "$WORK/c" --repair
expect_out "NOT REPAIRED: .*source checkpoint $WORK/m .*no longer exists" "the missing source is named"
rm "$WORK/c/$REL"  # missing only: a repair that cannot be done still fails (exit 3)
expect_rc 3 "verify --repair of a missing layer without the source" -- "$SLI" verify "$WORK/c" --repair
expect_out "NOT REPAIRED" "the failed repair of a missing layer is reported"
mv "$WORK/m.orig" "$WORK/m"
mkdir -p "$WORK/moved"
mv "$WORK/c/$(dirname "$(dirname "$REL")")" "$WORK/moved/other"
expect_rc 3 "verify --repair of a cache moved by hand" -- "$SLI" verify "$WORK/moved" --repair
expect_out "NOT REPAIRED: .*moved or renamed by hand" "the move is explained"
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

#!/usr/bin/env bash
# Disk full / write error (RLIMIT_FSIZE) and kill -9 of `sli quantize` at random moments:
# clear errors, a cache that still verifies, and a rerun that completes it.
source "$(dirname "$0")/lib.sh" "$@"

$GEN "$WORK/m" --layers 6 --hidden 128 --intermediate 256 --vocab 512 --shards 2 --dtype BF16

# File size limit: the first layers fit, a later one does not.
( ulimit -f 200; exec "$SLI" quantize "$WORK/m" --cache "$WORK/c" --model-id m ) >"$WORK/out" 2>&1
rc=$?
[ "$rc" -eq 3 ] && pass "a write past RLIMIT_FSIZE fails with exit 3" || { fail "RLIMIT_FSIZE exit $rc"; cat "$WORK/out"; }
expect_out "File too large|No space" "the error says why"
expect_out "layer-0000[0-9].slc" "the error names the file"
expect_rc 0 "the cache still verifies after the write error" -- "$SLI" verify "$WORK/c"
expect_out "MISSING" "unwritten layers are listed as missing"
if [ -z "$(find "$WORK/c" -name '.*.tmp.*')" ]; then pass "no temporary file left"; else fail "temporary file left"; fi
expect_rc 0 "a rerun without the limit completes" -- "$SLI" quantize "$WORK/m" --cache "$WORK/c" --model-id m
expect_rc 0 "verify after the rerun" -- "$SLI" verify "$WORK/c"
expect_out "0 corrupt, 0 missing" "complete after the rerun"

# A real full disk (ENOSPC): a tmpfs too small for the cache, where mounting is permitted
# (root, or a user namespace); otherwise said and skipped.
FULL="$WORK/full"
mkdir -p "$FULL"
if mount -t tmpfs -o size=600k tmpfs "$FULL" 2>/dev/null; then
    trap 'umount "$FULL" 2>/dev/null; rm -rf "$WORK"' EXIT
    ( exec "$SLI" quantize "$WORK/m" --cache "$FULL/c" --model-id m ) >"$WORK/out" 2>&1
    rc=$?
    [ "$rc" -eq 3 ] && pass "quantize onto a full disk fails with exit 3" || { fail "ENOSPC exit $rc"; cat "$WORK/out"; }
    expect_out "No space left on device" "the error says the disk is full"
    expect_out "layer-0000[0-9].slc|MANIFEST" "the error names the file"
    expect_rc 0 "the cache on the full disk still verifies" -- "$SLI" verify "$FULL/c"
    if [ -z "$(find "$FULL" -name '.*.tmp.*')" ]; then pass "no temporary file left on the full disk"; else fail "temporary file left on the full disk"; fi
    # export onto the full disk: an error naming the output, and no partial file under its name
    expect_rc 0 "a complete cache elsewhere" -- "$SLI" quantize "$WORK/m" --cache "$WORK/c2" --model-id m --quiet
    head -c 400k /dev/zero > "$FULL/filler" 2>/dev/null
    ( exec "$SLI" export "$WORK/c2" --output "$FULL/out.safetensors" ) >"$WORK/out" 2>&1
    rc=$?
    [ "$rc" -eq 3 ] && pass "export onto a full disk fails with exit 3" || { fail "export ENOSPC exit $rc"; cat "$WORK/out"; }
    expect_out "writing $FULL/out.safetensors" "the export error names the output file"
    if [ ! -e "$FULL/out.safetensors" ] && [ -z "$(find "$FULL" -name '.*.tmp.*')" ]; then
        pass "no partial export left"; else fail "partial export left"; ls -la "$FULL"; fi
    umount "$FULL"
else
    echo "skip: mounting a small tmpfs is not permitted here (the ENOSPC cases need it)"
fi

# kill -9 at random moments.
rm -rf "$WORK/k"
RANDOM=42
for i in $(seq 1 12); do
    "$SLI" quantize "$WORK/m" --cache "$WORK/k" --model-id m --compute-dtype f32 >/dev/null 2>&1 &
    pid=$!
    sleep "0.0$((RANDOM % 10))$((RANDOM % 10))"
    kill -9 "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    if "$SLI" verify "$WORK/k" >"$WORK/out" 2>&1 || grep -Eq "no layer cache|cache directory .* does not exist" "$WORK/out"; then
        pass "verify after kill -9 #$i ($(grep -Eo '[0-9]+ layers ok' "$WORK/out" || echo 'no cache yet'))"
    else
        fail "verify after kill -9 #$i"; cat "$WORK/out"
    fi
done
expect_rc 0 "a rerun after the kills completes" -- "$SLI" quantize "$WORK/m" --cache "$WORK/k" --model-id m --compute-dtype f32
expect_rc 0 "verify after the rerun" -- "$SLI" verify "$WORK/k"
expect_out "8 layers ok, 0 corrupt, 0 missing" "all layers present"
if [ -z "$(find "$WORK/k" -name '.*.tmp.*')" ]; then pass "dead writers' temporary files removed"; else fail "temporary files left"; fi
expect_rc 0 "export after the kills" -- "$SLI" export "$WORK/k" --output "$WORK/k.safetensors"
finish

#!/usr/bin/env bash
# Missing permissions: an unwritable cache root, an unreadable shard, an unreadable layer file.
# Each is a clear error naming the path, exit 3 (I/O), never reported as corrupt data, and
# nothing half-written is left. Root is not refused by file modes, so as root the commands
# run as nobody (setpriv); without setpriv there, the test is skipped (exit 77).
source "$(dirname "$0")/lib.sh" "$@"

AS=()
if [ "$(id -u)" -eq 0 ]; then
    if ! command -v setpriv >/dev/null; then echo "skip: root without setpriv"; exit 77; fi
    AS=(setpriv --reuid=65534 --regid=65534 --clear-groups)
    "${AS[@]}" true 2>/dev/null || { echo "skip: setpriv cannot drop to nobody here"; exit 77; }
fi
chmod 755 "$WORK"
if ! "${AS[@]}" test -x "$SLI"; then  # e.g. a checkout under /root: run a copy
    cp "$SLI" "$WORK/sli" && chmod 755 "$WORK/sli" && SLI="$WORK/sli"
fi

$GEN "$WORK/m" --layers 2 --hidden 128 --intermediate 256 --vocab 512 --shards 2 --dtype BF16
chmod -R a+rX "$WORK/m"
mkdir -m 777 "$WORK/rw"
mkdir -m 555 "$WORK/ro"

expect_rc 3 "quantize into an unwritable cache root: exit 3" -- "${AS[@]}" "$SLI" quantize "$WORK/m" --cache "$WORK/ro/c" --quiet
expect_out "Permission denied" "the error says why"
expect_out "$WORK/ro/c" "the error names the directory"

chmod 000 "$WORK/m/model-00002-of-00002.safetensors"
expect_rc 3 "quantize with an unreadable shard: exit 3" -- "${AS[@]}" "$SLI" quantize "$WORK/m" --cache "$WORK/rw/c" --quiet
expect_out "model-00002-of-00002.safetensors: Permission denied" "the error names the shard"
chmod 644 "$WORK/m/model-00002-of-00002.safetensors"

expect_rc 0 "quantize" -- "${AS[@]}" "$SLI" quantize "$WORK/m" --cache "$WORK/rw/c" --model-id m --quiet
LAYER=$(find "$WORK/rw/c" -name 'layer-00001.slc')
chmod 000 "$LAYER"
expect_rc 3 "verify with an unreadable layer file: exit 3, not corrupt" -- "${AS[@]}" "$SLI" verify "$WORK/rw/c"
expect_out "ERROR   layer 1 .*layer-00001.slc: Permission denied" "verify names the layer and the file"
expect_out "3 layers ok, 0 corrupt, 0 missing, 1 unreadable" "verify counts it as unreadable"
expect_rc 3 "inspect with an unreadable layer file: exit 3" -- "${AS[@]}" "$SLI" inspect "$WORK/rw/c"
expect_out "UNREADABLE: open .*layer-00001.slc: Permission denied" "inspect says unreadable, naming the file"
expect_rc 3 "inspect --json: exit 3" -- "${AS[@]}" "$SLI" inspect "$WORK/rw/c" --json
expect_out '"status": ?"unreadable"' "inspect --json marks the layer unreadable"
expect_rc 3 "export with an unreadable layer file: exit 3" -- "${AS[@]}" "$SLI" export "$WORK/rw/c" --output "$WORK/rw/o.safetensors"
expect_out "layer-00001.slc: Permission denied" "export names the file"
if [ -z "$(find "$WORK/rw" -maxdepth 1 -name '*.safetensors' -o -maxdepth 1 -name '.*.tmp.*')" ]; then
    pass "no partial export left"; else fail "partial export left"; ls -la "$WORK/rw"; fi
chmod 644 "$LAYER"
expect_rc 0 "verify once readable again" -- "${AS[@]}" "$SLI" verify "$WORK/rw/c"
finish

#!/usr/bin/env bash
# A real checkpoint: all-MiniLM-L6-v2 (BERT, F32). Fetch it with scripts/fetch_minilm.sh;
# without it the test is skipped (exit 77).
source "$(dirname "$0")/lib.sh" "$@"
MODEL="$ROOT/tests/data/minilm/model.safetensors"
if [ ! -f "$MODEL" ]; then
    echo "SKIP: $MODEL is absent; run scripts/fetch_minilm.sh to fetch the real all-MiniLM-L6-v2 weights"
    exit 77
fi
expect_rc 0 "quantize all-MiniLM-L6-v2 (f32 -> f16)" -- "$SLI" quantize "$MODEL" --cache "$WORK/c" --model-id sentence-transformers/all-MiniLM-L6-v2 --threads 2
expect_out "layers +8 \(8 written" "embeddings, six encoder layers and the pooler"
expect_rc 0 "verify" -- "$SLI" verify "$WORK/c"
expect_rc 0 "inspect" -- "$SLI" inspect "$WORK/c"
expect_out "encoder.layer.5.attention.self.query.weight +none +f16 +\[384, 384\]" "a real tensor name and shape"
expect_rc 0 "export in f32" -- "$SLI" export "$WORK/c" --output "$WORK/f32.safetensors" --dtype f32
# f32 -> f16 -> f32 is lossy: compare the integer tensors exactly and count the rest.
python3 -c "
import sys, struct; sys.path.insert(0, '$HERE'); import st_tools as s
a, b = s.read_st('$MODEL'), s.read_st('$WORK/f32.safetensors')
assert set(a) == set(b), set(a) ^ set(b)
worst = 0.0
for n, (dt, sh, blob) in a.items():
    assert b[n][1] == sh, n
    if dt != 'F32':
        assert b[n][2] == blob, n; continue
    x = struct.unpack('<%df' % (len(blob)//4), blob); y = struct.unpack('<%df' % (len(blob)//4), b[n][2])
    for u, v in zip(x, y):
        if abs(u) > 1e-3: worst = max(worst, abs(u - v) / abs(u))
print('tensors %d, worst relative error %.2e' % (len(a), worst))
assert worst < 1e-3
" >"$WORK/out" 2>&1 && pass "export matches the source within f16 rounding" || { fail "export differs"; cat "$WORK/out"; }
expect_out "tensors 10[0-9]" "every tensor compared"
if have_kernels; then
    expect_rc 0 "quantize all-MiniLM-L6-v2 to nf4" -- "$SLI" quantize "$MODEL" --cache "$WORK/q" --mode nf4 --threads 2
    expect_rc 0 "verify nf4" -- "$SLI" verify "$WORK/q"
    expect_rc 0 "export nf4 dequantized" -- "$SLI" export "$WORK/q" --output "$WORK/q.safetensors"
fi
finish

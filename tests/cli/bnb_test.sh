#!/usr/bin/env bash
# A bitsandbytes-style checkpoint (bytes from the golden vectors bitsandbytes produced) is
# imported without re-quantizing: `export --raw` reproduces every quantized tensor byte for
# byte, the quant_state JSON included.
source "$(dirname "$0")/lib.sh" "$@"

$ST bnb "$WORK/bnb.safetensors" "$ROOT/tests/golden"
expect_rc 0 "quantize imports the bnb checkpoint" -- "$SLI" quantize "$WORK/bnb.safetensors" --cache "$WORK/c" --model-id bnb --mode nf4
expect_out "4 imported from bitsandbytes" "four quantized tensors imported as is"
expect_rc 0 "verify" -- "$SLI" verify "$WORK/c"
expect_rc 0 "inspect shows modes" -- "$SLI" inspect "$WORK/c"
expect_out "down_proj.weight +nf4 +u8 +\[136, 128\]" "nested nf4 tensor"
expect_out "q_proj.weight +int8 +i8 +\[64, 96\]" "int8 tensor"
expect_out "model.layers.1.mlp.up_proj.weight +fp4" "fp4 tensor"
expect_rc 0 "export --raw" -- "$SLI" export "$WORK/c" --output "$WORK/raw.safetensors" --raw
expect_rc 0 "raw export reproduces every tensor byte for byte" -- $ST compare "$WORK/bnb.safetensors" "$WORK/raw.safetensors" --exclude weight_format
expect_out "^17 tensors identical" "all seventeen tensors compared"
# A broken bnb set (quant_state without its absmax) is refused.
python3 -c "
import sys; sys.path.insert(0, '$HERE'); import st_tools as s
t = s.read_st('$WORK/bnb.safetensors')
s.write_st('$WORK/broken.safetensors', [(n, d, sh, b) for n, (d, sh, b) in t.items() if not n.endswith('down_proj.weight.absmax')])"
expect_rc 1 "an incomplete bnb set is refused" -- "$SLI" quantize "$WORK/broken.safetensors" --cache "$WORK/c2"
expect_out "down_proj.weight.*incomplete set" "the message names the tensor"
if have_kernels; then
    expect_rc 0 "export dequantizes imported tensors" -- "$SLI" export "$WORK/c" --output "$WORK/deq.safetensors" --dtype f32
    # Against bitsandbytes' own dequantization (golden vectors): NF4 bit for bit, FP4 equal
    # values, int8 within 1e-6 relative.
    python3 -c "
import sys, struct; sys.path.insert(0, '$HERE'); import st_tools as s
d = s.read_st('$WORK/deq.safetensors'); G = '$ROOT/tests/golden/'
for name, stem in [('model.layers.0.mlp.down_proj.weight', 'nf4_dq_bs64_136x128_f32'),
                   ('model.layers.0.mlp.up_proj.weight', 'nf4_bs64_32x96_f32'),
                   ('model.layers.1.mlp.up_proj.weight', 'fp4_bs64_3x33_f32')]:
    g = s.read_golden(G + stem + '.bin')['dequant_f32']
    assert d[name][1] == g[1], (name, d[name][1], g[1])
    # Values equal (FP4 code 1000 is -0.0 with the CUDA table the kernels follow, +0.0 with the
    # stored quant_map bitsandbytes' CPU backend used: equal as numbers).
    n = len(g[2]) // 4
    assert struct.unpack('<%df' % n, d[name][2]) == struct.unpack('<%df' % n, g[2]), name + ' differs from bitsandbytes dequantize_4bit'
    if 'nf4' in stem: assert d[name][2] == g[2], name + ' not bit-identical'
g = s.read_golden(G + 'int8_vectorwise_64x96_f16.bin')['dequant_f32'][2]
x = struct.unpack('<%df' % (len(g)//4), g)
y = struct.unpack('<%df' % (len(g)//4), d['model.layers.1.self_attn.q_proj.weight'][2])
bad = [i for i in range(len(x)) if abs(x[i] - y[i]) > 1e-6 * max(1.0, abs(x[i]))]
assert not bad, 'int8 dequant differs at %d elements' % len(bad)
print('dequantized imports match bitsandbytes')
" >"$WORK/out" 2>&1 && pass "dequantized imports match bitsandbytes' golden output" || { fail "dequantized imports differ"; cat "$WORK/out"; }
else
    echo "skip: dequantized export (no kernels in this build)"
fi
finish

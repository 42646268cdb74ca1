#!/usr/bin/env bash
# sli quantize policies: layer grouping through the architecture registry (Llama, GPT-2 and
# BERT names), default skips, --skip, --no-default-skips, the mixed preset (its own cache
# directory, per-tensor modes in inspect) and GPT-2 Conv1D transposition.
source "$(dirname "$0")/lib.sh" "$@"

if ! have_kernels; then
    echo "SKIP: this build has no quantization kernels"
    exit 77
fi
$GEN "$WORK/llama" --layers 2 --shards 1 --dtype F16

# Default skips, and --skip adding to them.
expect_rc 0 "quantize --preset nf4 --skip" -- "$SLI" quantize "$WORK/llama" --cache "$WORK/c" --preset nf4 --skip model.layers.1.mlp
expect_out "architecture +llama" "the summary names the detected architecture"
expect_rc 0 "inspect nf4" -- "$SLI" inspect "$WORK/c"
expect_out "architecture llama" "inspect shows the architecture"
expect_out "model.embed_tokens.weight +none" "embeddings stay none"
expect_out "lm_head.weight +none" "lm_head stays none"
expect_out "model.norm.weight +none" "the final norm stays none"
expect_out "model.layers.0.mlp.up_proj.weight +nf4" "block FFN weights are nf4"
expect_out "model.layers.1.mlp.up_proj.weight +none" "--skip keeps a module unquantized"
expect_out "model.layers.1.self_attn.q_proj.weight +nf4" "--skip leaves the rest alone"
expect_out "layer 0 pre:" "pre-layer tensors are layer 0"
expect_out "layer 3 post:" "post-layer tensors come last"

# --no-default-skips: a second cache beside the first, embeddings and lm_head quantized.
expect_rc 0 "quantize --no-default-skips" -- "$SLI" quantize "$WORK/llama" --cache "$WORK/c" --preset nf4 --no-default-skips
expect_out "\(4 written, 0 already complete\)" "--no-default-skips does not reuse the default-skips cache"
expect_rc 0 "verify sees both caches" -- "$SLI" verify "$WORK/c"
expect_out "8 layers ok" "two caches of four layers"
expect_rc 0 "inspect --no-default-skips cache" -- "$SLI" inspect "$WORK/c" --json
cp "$WORK/out" "$WORK/both.json"
python3 - "$WORK/both.json" >"$WORK/out" 2>&1 <<'PY'
import json, sys
caches = json.load(open(sys.argv[1]))
modes = {}
for c in caches:
    key = "nds" if c.get("policy", {}).get("default_skips") is False else "default"
    for l in c["layers"]:
        for t in l.get("tensors", []):
            modes[(key, t["name"])] = t["mode"]
assert len(caches) == 2, len(caches)
assert modes[("nds", "model.embed_tokens.weight")] == "nf4", modes
assert modes[("nds", "lm_head.weight")] == "nf4"
assert modes[("nds", "model.norm.weight")] == "none"   # 1-D
assert modes[("default", "model.embed_tokens.weight")] == "none"
print("policies ok")
PY
expect_out "policies ok" "--no-default-skips quantizes embeddings and lm_head, not 1-D norms"

# The mixed preset: attention int8, FFN nf4, a directory of its own.
expect_rc 2 "--preset mixed with --mode is a usage error" -- "$SLI" quantize "$WORK/llama" --cache "$WORK/m" --preset mixed --mode nf4
expect_rc 0 "quantize --preset mixed" -- "$SLI" quantize "$WORK/llama" --cache "$WORK/m" --preset mixed
expect_out "mixed: attention int8, ffn nf4, other nf4" "the summary names the mixed modes"
expect_rc 0 "quantize --preset nf4 beside it" -- "$SLI" quantize "$WORK/llama" --cache "$WORK/m" --preset nf4
expect_out "\(4 written, 0 already complete\)" "nf4 does not reuse the mixed cache"
expect_rc 0 "rerun of mixed reuses its layers" -- "$SLI" quantize "$WORK/llama" --cache "$WORK/m" --preset mixed
expect_out "\(0 written, 4 already complete\)" "mixed rerun writes nothing"
n=$(find "$WORK/m" -name MANIFEST.json | wc -l)
if [ "$n" = 2 ]; then pass "mixed and nf4 caches have separate directories"; else fail "expected 2 cache directories, found $n"; fi
expect_rc 0 "inspect mixed" -- "$SLI" inspect "$WORK/m"
expect_out "policy \{\"attention\"" "inspect shows the adaptive policy"
expect_out "model.layers.0.self_attn.q_proj.weight +int8 " "attention is int8"
expect_out "model.layers.1.self_attn.o_proj.weight +int8 " "all attention projections are int8"
expect_out "model.layers.0.mlp.down_proj.weight +nf4 " "FFN is nf4"
expect_rc 0 "verify mixed" -- "$SLI" verify "$WORK/m"
mdir=$(dirname "$(grep -l '"policy"' "$WORK"/m/*/*/MANIFEST.json)")
expect_rc 0 "raw export of the mixed cache" -- "$SLI" export "$mdir" --output "$WORK/mixed.safetensors" --raw
python3 -c "
import sys; sys.path.insert(0, '$HERE'); import st_tools as s
t = s.read_st('$WORK/mixed.safetensors')
assert 'model.layers.0.self_attn.q_proj.SCB' in t
assert 'model.layers.0.mlp.up_proj.weight.quant_state.bitsandbytes__nf4' in t
print('mixed raw export ok')" >"$WORK/out" 2>&1
expect_out "mixed raw export ok" "raw export holds int8 attention and nf4 FFN tensors"

# GPT-2 names: Conv1D weights transposed to [out, in] when quantized.
$ST synth "$WORK/gpt2.safetensors" transformer.wte.weight=64x32 transformer.wpe.weight=16x32 \
    transformer.h.0.ln_1.weight=32 transformer.h.0.attn.c_attn.weight=32x96 \
    transformer.h.0.attn.c_proj.weight=32x32 transformer.h.0.mlp.c_fc.weight=32x128 \
    transformer.h.0.mlp.c_proj.weight=128x32 transformer.ln_f.weight=32
expect_rc 0 "quantize a GPT-2-named checkpoint to int8" -- "$SLI" quantize "$WORK/gpt2.safetensors" --cache "$WORK/g" --model-id gpt2 --mode int8
expect_out "layers +3 \(3 written" "GPT-2: pre, one block, post"
expect_out "architecture +gpt2" "GPT-2 detected"
expect_rc 0 "inspect GPT-2" -- "$SLI" inspect "$WORK/g"
expect_out "transformer.wte.weight +none" "GPT-2 token embeddings stay none"
expect_out "transformer.h.0.attn.c_attn.weight +int8 +i8 +\[96, 32\]" "c_attn stored [out, in]"
expect_out "transformer.h.0.mlp.c_fc.weight +int8 +i8 +\[128, 32\]" "c_fc stored [out, in]"
expect_rc 0 "export GPT-2 raw" -- "$SLI" export "$WORK/g" --output "$WORK/g-raw.safetensors" --raw
expect_rc 0 "raw c_attn is the transpose of the source" -- $ST transposed "$WORK/gpt2.safetensors" transformer.h.0.attn.c_attn.weight "$WORK/g-raw.safetensors" transformer.h.0.attn.c_attn.weight

# Dequantized, the Conv1D weights go back to the source's [in, out]: same shapes, close values,
# and the export quantizes again to the same [out, in] cache.
if have_kernels; then
    expect_rc 0 "export GPT-2 dequantized" -- "$SLI" export "$WORK/g" --output "$WORK/g-f32.safetensors" --dtype f32
    python3 -c "
import struct, sys; sys.path.insert(0, '$HERE'); import st_tools as s
a, b = s.read_st('$WORK/gpt2.safetensors'), s.read_st('$WORK/g-f32.safetensors')
assert set(a) == set(b), set(a) ^ set(b)
worst = 0.0
for n, (dt, sh, blob) in a.items():
    assert b[n][1] == sh, (n, sh, b[n][1])
    x = struct.unpack('<%df' % (len(blob)//4), blob); y = struct.unpack('<%df' % (len(blob)//4), b[n][2])
    worst = max(worst, max(abs(u - v) for u, v in zip(x, y)))
print('gpt2 export: shapes as in the source, worst error %.2e' % worst)
assert worst < 2e-3
" >"$WORK/out" 2>&1
    expect_out "shapes as in the source" "dequantized GPT-2 export has the source's [in, out] shapes and values"
    expect_rc 0 "quantize the GPT-2 export again" -- "$SLI" quantize "$WORK/g-f32.safetensors" --cache "$WORK/g2" --model-id gpt2 --mode int8
    expect_rc 0 "inspect the re-quantized GPT-2" -- "$SLI" inspect "$WORK/g2"
    expect_out "transformer.h.0.attn.c_attn.weight +int8 +i8 +\[96, 32\]" "re-quantized c_attn is [out, in] again"
else
    echo "skip: dequantized GPT-2 export (no kernels in this build)"
fi

# BERT names: embeddings and pooler kept, attention int8 / FFN nf4 under mixed.
$ST synth "$WORK/bert.safetensors" embeddings.word_embeddings.weight=64x32 embeddings.LayerNorm.weight=32 \
    encoder.layer.0.attention.self.query.weight=32x32 encoder.layer.0.attention.output.dense.weight=32x32 \
    encoder.layer.0.intermediate.dense.weight=64x32 encoder.layer.0.output.dense.weight=32x64 \
    encoder.layer.1.attention.self.key.weight=32x32 pooler.dense.weight=32x32
expect_rc 0 "quantize a BERT-named checkpoint (mixed)" -- "$SLI" quantize "$WORK/bert.safetensors" --cache "$WORK/b" --model-id bert --preset mixed
expect_out "layers +4 \(4 written" "BERT: pre, two blocks, post"
expect_rc 0 "inspect BERT" -- "$SLI" inspect "$WORK/b"
expect_out "layer 1 encoder.layer.0:" "encoder blocks named by the registry"
expect_out "embeddings.word_embeddings.weight +none" "BERT embeddings stay none"
expect_out "encoder.layer.0.attention.self.query.weight +int8" "BERT attention is int8"
expect_out "encoder.layer.0.intermediate.dense.weight +nf4" "BERT FFN is nf4"
expect_out "pooler.dense.weight +none" "the pooler stays none"
finish

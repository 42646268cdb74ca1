#!/usr/bin/env bash
# sli CLI: help, usage errors, quantize / inspect / verify / export of a synthetic sharded
# Llama-shaped checkpoint, rerun, and broken inputs.
source "$(dirname "$0")/lib.sh" "$@"

expect_rc 0 "sli --help" -- "$SLI" --help
for c in quantize inspect verify export; do
    expect_rc 0 "sli $c --help" -- "$SLI" $c --help
    expect_out "usage: sli $c" "sli $c --help prints usage"
done
expect_rc 2 "no command is a usage error" -- "$SLI"
expect_rc 2 "unknown command is a usage error" -- "$SLI" frobnicate
expect_rc 2 "quantize without --cache" -- "$SLI" quantize "$WORK/x"
expect_rc 2 "quantize with a bad mode" -- "$SLI" quantize "$WORK/x" --cache "$WORK/c" --mode int3
expect_rc 2 "quantize with an unknown option" -- "$SLI" quantize "$WORK/x" --cache "$WORK/c" --frob
expect_rc 2 "quantize with a bad blocksize" -- "$SLI" quantize "$WORK/x" --cache "$WORK/c" --mode nf4 --blocksize 48
expect_rc 2 "export without --output" -- "$SLI" export "$WORK/c"
expect_rc 3 "verify of a missing directory is an I/O error" -- "$SLI" verify "$WORK/nonexistent"

$GEN "$WORK/tiny-llama" --layers 3 --shards 2 --unaligned --dtype F16
expect_rc 0 "quantize a sharded checkpoint (mode none)" -- "$SLI" quantize "$WORK/tiny-llama" --cache "$WORK/c" --threads 2
expect_out "layers +5 \(5 written, 0 already complete\)" "summary counts layers"
expect_out "bits/weight +16.000" "summary gives bits per weight"
expect_rc 0 "verify a fresh cache" -- "$SLI" verify "$WORK/c"
expect_out "5 layers ok, 0 corrupt, 0 missing" "verify summary"
expect_rc 0 "inspect" -- "$SLI" inspect "$WORK/c"
expect_out "model.layers.2.mlp.down_proj.weight +none +f16 +\[64, 128\]" "inspect lists tensors"
expect_rc 0 "inspect --json" -- "$SLI" inspect "$WORK/c" --json
cp "$WORK/out" "$WORK/inspect.json"
if [ "$($ST json-get "$WORK/inspect.json" 0 totals present)" = "5" ]; then pass "inspect --json totals"; else fail "inspect --json totals"; fi
expect_rc 0 "rerun reuses complete layers" -- "$SLI" quantize "$WORK/tiny-llama" --cache "$WORK/c"
expect_out "\(0 written, 5 already complete\)" "rerun writes nothing"
expect_rc 0 "export (default dtype)" -- "$SLI" export "$WORK/c" --output "$WORK/out.safetensors"
for s in "$WORK"/tiny-llama/model-0000*.safetensors; do
    expect_rc 0 "export reproduces $(basename "$s")" -- $ST compare "$s" "$WORK/out.safetensors"
done
expect_rc 0 "export --raw of mode none" -- "$SLI" export "$WORK/c" --output "$WORK/raw.safetensors" --raw
expect_rc 0 "raw export equals the source" -- $ST compare "$WORK/tiny-llama/model-00001-of-00002.safetensors" "$WORK/raw.safetensors"
expect_rc 0 "export --dtype f32" -- "$SLI" export "$WORK/c" --output "$WORK/f32.safetensors" --dtype f32
expect_rc 2 "export --threads must be a number" -- "$SLI" export "$WORK/c" --output "$WORK/x.safetensors" --threads abc
expect_rc 2 "export --threads out of range" -- "$SLI" export "$WORK/c" --output "$WORK/x.safetensors" --threads -1
expect_rc 0 "export --threads 1" -- "$SLI" export "$WORK/c" --output "$WORK/t1.safetensors" --threads 1
expect_rc 0 "export on one thread equals export on all" -- $ST compare "$WORK/out.safetensors" "$WORK/t1.safetensors"
expect_rc 2 "export --raw --dtype is a usage error" -- "$SLI" export "$WORK/c" --output "$WORK/x.safetensors" --raw --dtype f32

# A bf16 checkpoint quantized to f16 compute dtype and a second config beside the first.
$GEN "$WORK/bf" --layers 1 --shards 1 --dtype BF16
expect_rc 0 "quantize bf16 source into f32 compute dtype" -- "$SLI" quantize "$WORK/bf/model.safetensors" --cache "$WORK/c" --model-id org/bf --compute-dtype f32
expect_rc 0 "verify sees every cache under the root" -- "$SLI" verify "$WORK/c"
expect_out "8 layers ok" "verify counts both caches"
expect_rc 2 "export with several caches asks for --model-id" -- "$SLI" export "$WORK/c" --output "$WORK/y.safetensors"
expect_rc 0 "export --model-id picks one" -- "$SLI" export "$WORK/c" --model-id org/bf --output "$WORK/y.safetensors"

if have_kernels; then
    for m in nf4 fp4 int8 int8_dynamic int4; do
        expect_rc 0 "quantize --mode $m" -- "$SLI" quantize "$WORK/tiny-llama" --cache "$WORK/q-$m" --mode $m
        expect_rc 0 "verify --mode $m" -- "$SLI" verify "$WORK/q-$m"
        expect_rc 0 "export --mode $m" -- "$SLI" export "$WORK/q-$m" --output "$WORK/q-$m.safetensors"
        expect_rc 0 "export --raw --mode $m" -- "$SLI" export "$WORK/q-$m" --output "$WORK/q-$m-raw.safetensors" --raw
    done
    expect_rc 0 "preset nf4 keeps embeddings unquantized" -- "$SLI" inspect "$WORK/q-nf4"
    expect_out "model.embed_tokens.weight +none" "embeddings stay none"
    # --device: cpu is the default; a GPU that is not there is refused before anything is
    # written (bench/gpu_check.sh compares a cuda:0 cache with the CPU's byte for byte).
    expect_rc 2 "quantize --device with a bad name" -- "$SLI" quantize "$WORK/tiny-llama" --cache "$WORK/dv" --mode nf4 --device gpu0
    expect_out "expected cpu, cuda or cuda:N" "bad device message"
    expect_rc 1 "quantize on an absent GPU is refused" -- "$SLI" quantize "$WORK/tiny-llama" --cache "$WORK/dv" --mode nf4 --device cuda:99
    expect_out "cuda:99" "absent-device message names it"
    if [ -z "$(find "$WORK/dv" -name '*.slc' 2>/dev/null)" ]; then pass "nothing written for an absent GPU"; else fail "layer files written for an absent GPU"; fi
    expect_rc 0 "quantize --device cpu" -- "$SLI" quantize "$WORK/tiny-llama" --cache "$WORK/dv" --mode nf4 --device cpu
    # FP8 tensors without a scale tensor are kept as stored, with a warning when a quantizing
    # mode was asked for, and counted in the summary.
    $ST synth "$WORK/fp8.safetensors" model.layers.0.mlp.up_proj.weight=64x64@F8_E4M3 \
        model.layers.0.mlp.down_proj.weight=64x64
    expect_rc 0 "quantize an fp8 checkpoint to nf4" -- env SLI_LOG=warn "$SLI" quantize "$WORK/fp8.safetensors" --cache "$WORK/f8" --mode nf4
    expect_out "1 fp8 kept as stored" "summary counts the fp8 tensor"
    expect_out "FP8 tensor.*up_proj.weight.*kept as stored" "warning names the fp8 tensor"
    expect_rc 0 "inspect the fp8 cache" -- "$SLI" inspect "$WORK/f8"
    expect_out "up_proj.weight +none +f8_e4m3" "fp8 tensor stored as f8_e4m3"
    expect_out "down_proj.weight +nf4" "the f32 tensor beside it is quantized"
    expect_rc 0 "quantize the fp8 checkpoint in mode none" -- env SLI_LOG=warn "$SLI" quantize "$WORK/fp8.safetensors" --cache "$WORK/f8n" --mode none
    if grep -q "FP8 tensor" "$WORK/out"; then fail "mode none warned about fp8"; else pass "no fp8 warning in mode none"; fi
    # With a block scale tensor beside it (DeepSeek-V3 style, 128 x 128 blocks: one for 64 x 64)
    # the FP8 weight is scaled, then quantized; the scale tensor is not kept.
    $ST synth "$WORK/fp8s.safetensors" model.layers.0.mlp.up_proj.weight=64x64@F8_E4M3 \
        model.layers.0.mlp.up_proj.weight_scale_inv=1x1 model.layers.0.mlp.down_proj.weight=64x64
    expect_rc 0 "quantize a scaled fp8 checkpoint to nf4" -- env SLI_LOG=warn "$SLI" quantize "$WORK/fp8s.safetensors" --cache "$WORK/f8s" --mode nf4
    expect_out "1 fp8 dequantized with their scales" "summary counts the scaled fp8 tensor"
    if grep -q "FP8 tensor" "$WORK/out"; then fail "a scaled fp8 tensor was warned about"; else pass "no fp8 warning when the scales are applied"; fi
    expect_rc 0 "inspect the scaled fp8 cache" -- "$SLI" inspect "$WORK/f8s"
    expect_out "up_proj.weight +nf4" "the scaled fp8 weight is quantized"
    if grep -q "weight_scale_inv" "$WORK/out"; then fail "the scale tensor was kept"; else pass "the scale tensor is not kept"; fi
    # A scale tensor that fits no layout: exit 1, both tensors named, nothing written
    $ST synth "$WORK/fp8b.safetensors" model.layers.0.mlp.up_proj.weight=64x64@F8_E4M3 \
        model.layers.0.mlp.up_proj.weight_scale=3x7
    expect_rc 1 "a misshapen fp8 scale is refused" -- "$SLI" quantize "$WORK/fp8b.safetensors" --cache "$WORK/f8b" --mode nf4
    expect_out "up_proj.weight_scale .3, 7." "the error names the scale tensor and its shape"
    if [ -z "$(find "$WORK/f8b" -name '*.slc' 2>/dev/null)" ]; then pass "nothing written for a misshapen scale"; else fail "layer files written for a misshapen scale"; fi
    # MXFP4 experts (gpt-oss: NAME_blocks + NAME_scales) are decoded and quantized as NAME;
    # blocks and scales are not kept.
    $ST synth "$WORK/mx.safetensors" model.layers.0.mlp.experts.down_proj_blocks=2x64x2x16@U8 \
        model.layers.0.mlp.experts.down_proj_scales=2x64x2@E8M0 model.layers.0.mlp.router.weight=4x64
    expect_rc 0 "quantize an mxfp4 checkpoint to nf4" -- "$SLI" quantize "$WORK/mx.safetensors" --cache "$WORK/mx" --mode nf4
    expect_out "1 mxfp4 decoded" "summary counts the mxfp4 weight"
    expect_rc 0 "inspect the mxfp4 cache" -- "$SLI" inspect "$WORK/mx"
    expect_out "experts.down_proj +nf4 .*\[2, 64, 64\]" "the decoded weight is quantized with its logical shape"
    if grep -q "_blocks\|_scales" "$WORK/out"; then fail "mxfp4 blocks or scales were kept"; else pass "mxfp4 blocks and scales are not kept"; fi
    # Scales of the wrong shape: exit 1, both tensors named, nothing written
    $ST synth "$WORK/mxb.safetensors" model.layers.0.mlp.experts.down_proj_blocks=2x64x2x16@U8 \
        model.layers.0.mlp.experts.down_proj_scales=2x64x3@E8M0
    expect_rc 1 "misshapen mxfp4 scales are refused" -- "$SLI" quantize "$WORK/mxb.safetensors" --cache "$WORK/mxb" --mode nf4
    expect_out "down_proj_scales .2, 64, 3." "the error names the scales and their shape"
    if [ -z "$(find "$WORK/mxb" -name '*.slc' 2>/dev/null)" ]; then pass "nothing written for misshapen scales"; else fail "layer files written for misshapen scales"; fi
    expect_rc 0 "--device cpu reuses the default run's layers" -- "$SLI" quantize "$WORK/tiny-llama" --cache "$WORK/q-nf4" --mode nf4 --device cpu
    expect_out "0 written" "no layer rewritten"
else
    echo "skip: quantized modes (this build has no quantization kernels yet)"
fi

# Broken checkpoints: non-zero exit, message names the file and rule, nothing in the cache.
mkdir -p "$WORK/bad"
: > "$WORK/bad/empty.safetensors"
expect_rc 1 "zero-length checkpoint" -- "$SLI" quantize "$WORK/bad/empty.safetensors" --cache "$WORK/bc"
expect_out "empty.safetensors.*shorter than the 8-byte header length" "zero-length message"
$GEN "$WORK/sh" --layers 2 --shards 2
rm "$WORK/sh/model-00002-of-00002.safetensors"
expect_rc 3 "missing shard" -- "$SLI" quantize "$WORK/sh" --cache "$WORK/bc"
expect_out "model-00002-of-00002.safetensors, which is missing" "missing shard message"
$GEN "$WORK/sh2" --layers 2 --shards 2
sed -i 's/"lm_head.weight"/"lm_head.bias"/' "$WORK/sh2/model.safetensors.index.json"
expect_rc 3 "shard lacking a tensor the index names" -- "$SLI" quantize "$WORK/sh2" --cache "$WORK/bc"
expect_out "lm_head.bias in shard .* which lacks it" "lacking-tensor message"
printf '\x10\x00\x00\x00\x00\x00\x00\x00{"a": [1, 2]}   ' > "$WORK/bad/notobj.safetensors"
expect_rc 1 "tensor entry not an object" -- "$SLI" quantize "$WORK/bad/notobj.safetensors" --cache "$WORK/bc"
expect_out "notobj.safetensors: tensor \"a\": entry is not an object" "entry message"
if [ -z "$(find "$WORK/bc" -name '*.slc' 2>/dev/null)" ]; then pass "nothing partial left"; else fail "layer files left behind"; fi
finish

#!/usr/bin/env bash
# Builds and runs the libFuzzer targets for the safetensors header parser, the layer-cache
# file reader and the cache manifest / quantization config JSON (clang
# -fsanitize=fuzzer,address,undefined; Debian: clang + libclang-rt-dev).
#   scripts/fuzz.sh [SECONDS_PER_TARGET=60] [SLI_BINARY]
# Seeds are valid files made on the spot (synthetic checkpoints, their caches, a
# bitsandbytes-style checkpoint). Crashes are written to build-fuzz/crashes/. Exit 77 when no
# suitable clang is installed, 1 on a finding.
set -uo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-60}
SLI=${2:-build/tools/sli}
CXX=${FUZZ_CXX:-}
for c in clang++ clang++-14 clang++-15 clang++-16; do
    [ -z "$CXX" ] && command -v "$c" >/dev/null && CXX=$c
done
if [ -z "$CXX" ]; then
    echo "SKIP: no clang++ (apt-get install clang libclang-rt-dev)"; exit 77
fi
OUT=build-fuzz
mkdir -p "$OUT/crashes"
echo 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }' > "$OUT/probe.cpp"
if ! "$CXX" -fsanitize=fuzzer "$OUT/probe.cpp" -o "$OUT/probe" 2>/dev/null; then
    echo "SKIP: $CXX cannot link -fsanitize=fuzzer (install libclang-rt-dev)"; exit 77
fi
FLAGS=(-std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
       -DFUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION -Iinclude -I. -I"$OUT")
printf '#pragma once\n#define HAVE_IO_URING 0\n#define HAVE_CUDA 0\n#define SLI_VERSION "fuzz"\n' > "$OUT/sli_build_config.h"
CORE=(engine/core/config.cpp engine/core/cpu_features.cpp engine/core/dtype.cpp engine/core/json.cpp engine/core/log.cpp
      engine/core/quantized.cpp engine/core/status.cpp engine/core/tensor.cpp)
IO=(io/checksum.cpp io/file.cpp io/safetensors.cpp io/cache_format.cpp io/cache_manifest.cpp)
build() {
    local name=$1 src=$2
    if [ ! -x "$OUT/$name" ] || [ -n "$(find "${CORE[@]}" "${IO[@]}" "$src" -newer "$OUT/$name")" ]; then
        echo "building $OUT/$name"
        "$CXX" "${FLAGS[@]}" "${CORE[@]}" "${IO[@]}" "$src" -lzstd -lxxhash -o "$OUT/$name" || exit 2
    fi
}
build safetensors_fuzz tests/io/fuzz/safetensors_fuzz.cpp
build cache_file_fuzz tests/io/fuzz/cache_file_fuzz.cpp
build manifest_fuzz tests/io/fuzz/manifest_fuzz.cpp

# Seeds.
SEEDS=$OUT/seeds; rm -rf "$SEEDS"; mkdir -p "$SEEDS/st" "$SEEDS/slc" "$SEEDS/json"
python3 scripts/make_llama_checkpoint.py "$SEEDS/ck" --layers 1 --hidden 16 --intermediate 32 --vocab 32 --shards 2 --unaligned >/dev/null
python3 tests/cli/st_tools.py bnb "$SEEDS/st/bnb.safetensors" tests/golden
cp "$SEEDS"/ck/*.safetensors "$SEEDS/st/"
if [ -x "$SLI" ]; then
    for m in none nf4 int8 int4; do
        "$SLI" quantize "$SEEDS/ck" --cache "$SEEDS/cache-$m" --mode $m --no-default-skips --quiet >/dev/null 2>&1
    done
    "$SLI" quantize "$SEEDS/st/bnb.safetensors" --cache "$SEEDS/cache-bnb" --quiet >/dev/null 2>&1
    find "$SEEDS" -name '*.slc' | while read -r f; do cp "$f" "$SEEDS/slc/$(echo "$f" | md5sum | cut -c1-12).slc"; done
    find "$SEEDS" -name MANIFEST.json | while read -r f; do
        cp "$f" "$SEEDS/json/$(echo "$f" | md5sum | cut -c1-12).json"
        # the config alone, as QuantizationConfig::fromJsonString sees it
        python3 -c 'import json,sys; print(json.dumps(json.load(open(sys.argv[1]))["config"]))' "$f" \
            > "$SEEDS/json/$(echo "$f" | md5sum | cut -c1-12)-config.json" 2>/dev/null || true
    done
fi
echo "seeds: $(ls "$SEEDS/st" | wc -l) safetensors, $(ls "$SEEDS/slc" | wc -l) cache files, $(ls "$SEEDS/json" | wc -l) manifests / configs"

rc=0
for t in safetensors_fuzz:st cache_file_fuzz:slc manifest_fuzz:json; do
    name=${t%%:*}; seeds=${t##*:}
    mkdir -p "$OUT/corpus-$name"
    echo "== $name for ${SECS}s"
    "$OUT/$name" "$OUT/corpus-$name" "$SEEDS/$seeds" -max_total_time="$SECS" -max_len=65536 \
        -rss_limit_mb=2048 -artifact_prefix="$OUT/crashes/$name-" -print_final_stats=1 \
        >"$OUT/$name.log" 2>&1
    r=$?
    grep -E "^stat::number_of_executed_units|^stat::peak_rss|Done [0-9]+ runs|ERROR" "$OUT/$name.log" | head -5
    [ $r -ne 0 ] && { echo "FINDING in $name (see $OUT/$name.log, $OUT/crashes/)"; rc=1; }
done
exit $rc

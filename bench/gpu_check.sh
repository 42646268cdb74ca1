#!/usr/bin/env bash
# The one-shot GPU check (issue 6): run on a lent H100 / H200 machine in a single call
# (`timeout_s` about 560); it ends within DEADLINE_S (default 480 s). It
#   1. unpacks the Debian -dev packages carried in .debs/ (made here by
#      scripts/prepare_gpu_debs.sh) into a private prefix when the system lacks them,
#   2. configures and builds a release build with CUDA for sm_90 (only the CUDA targets),
#   3. runs the CUDA test suite (meson test --suite cuda),
#   4. runs bench/cuda_bench (H2D, dequant-kernel and pipeline ratios),
#   5. runs a brief `slibench --tiny --device cuda:0` (sli::Engine on the GPU: h2d stage),
#      and `sli quantize --device cuda:0` of a small checkpoint against the CPU's cache (nf4,
#      fp4, int8: every layer file byte-identical),
#   6. runs the CPU kernel tests on the host CPU (these machines' CPUs usually have AVX-512,
#      which the development VM lacks: the AVX-512 kernels then run natively, bit-exact
#      against the scalar reference) and a short kernels_bench per ISA,
#   7. when time is left: slibench's default model on cuda:0 (real layer sizes) and a
#      compute-sanitizer memcheck of the CUDA tests,
# and writes everything under $OUT (default ./gpu-check-out): gpu_check.log, nvidia-smi.txt,
# meson-testlog.txt, cuda_bench.txt, cuda_bench.json, slibench_cuda.txt, slibench_cuda.json,
# slibench_cuda_trace.json, quantize_device.txt, cpu.txt, kernels-test.txt,
# kernels_bench_<isa>.{txt,json}, slibench_cuda_full.{txt,json}, memcheck.txt, summary.txt.
#
# Usage on the device machine, from the repository root:   bash bench/gpu_check.sh
# The device tool brings back at most 8 files, so the device call packs the results:
#   D=$OUT; OUT=/tmp/gc bash bench/gpu_check.sh; rc=$?; tar czf $D/gc.tgz -C /tmp gc;
#   cp /tmp/gc/summary.txt /tmp/gc/gpu_check.log $D/; exit $rc        (carry: .debs)
# Environment: OUT, GPU_ARCHS (default 90), JOBS (default nproc), BENCH_ARGS (extra flags for
# cuda_bench, e.g. "--layers 8"), SLIBENCH_ARGS (extra slibench flags), FORCE_PREFIX=1 (use .debs/ even when the system has the
# packages; for checking the script on a CPU machine), DEADLINE_S (default 480: every step's
# timeout is cut so the whole script ends by then, and later steps are skipped once it is near,
# so a device call of 600 s always gets summary.txt back), STOP_AFTER=configure|build (a dry
# run on a machine without a GPU). Exit status: 0 when the tests passed and the bench ran.
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT" || exit 1
OUT="${OUT:-$ROOT/gpu-check-out}"
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
START=$(date +%s)
DEADLINE_S="${DEADLINE_S:-480}"
step() { echo "=== [$(( $(date +%s) - START ))s] $*"; }
# Seconds for a step that wants $1: at most what is left before the deadline (less a margin
# for the summary), at least 5.
budget() {
  local left=$(( DEADLINE_S - ($(date +%s) - START) - 10 ))
  [ "$left" -lt 5 ] && left=5
  [ "$1" -lt "$left" ] && left=$1
  echo "$left"
}
# True when fewer than $1 seconds are left: the step is skipped (and reported).
late() { [ $(( DEADLINE_S - ($(date +%s) - START) )) -lt "$1" ]; }
GPU_ARCHS="${GPU_ARCHS:-90}"
JOBS="${JOBS:-$(nproc)}"
BUILD="$ROOT/build-gpu-check"
status=0

# shellcheck disable=SC2317  # called from the EXIT trap
summary() {
  step "summary"
  {
    echo "device: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null)"
    echo "tests: $(grep -E '^(Ok|Fail|Skipped|Timeout):' "$BUILD/meson-logs/testlog.txt" 2>/dev/null | tr -s ' ' | tr '\n' ' ')"
    grep -E 'ratio|wall' "$OUT/cuda_bench.txt" 2>/dev/null
    grep -E 'h2d' "$OUT/slibench_cuda.txt" 2>/dev/null
    cat "$OUT/quantize_device.txt" 2>/dev/null
    echo "cpu: $(tr '\n' ' ' 2>/dev/null < "$OUT/cpu.txt")"
    echo "kernel tests: $(grep -E '^\[doctest\] (test cases|Status)' "$OUT/kernels-test.txt" 2>/dev/null | tr '\n' ' ')"
    echo "status: $1   elapsed: $(( $(date +%s) - START ))s"
  } | tee "$OUT/summary.txt"
}
# Every exit (a failed configure or build included) leaves summary.txt under $OUT.
# shellcheck disable=SC2154  # rc is assigned inside the trap
trap 'rc=$?; summary "$rc"' EXIT

step "machine"
uname -a
(nvidia-smi || true) | tee "$OUT/nvidia-smi.txt"
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
export PATH="$CUDA_HOME/bin:$PATH"
# The binaries link libcudart.so (meson's CUDA dependency adds -lcudart before
# -lcudart_static): load the one of the toolkit that builds them, not whatever the loader
# finds first (or nothing, when the toolkit's lib directory is not in ld.so.conf).
export LD_LIBRARY_PATH="$CUDA_HOME/lib64:$CUDA_HOME/targets/x86_64-linux/lib:$CUDA_HOME/lib:${LD_LIBRARY_PATH:-}"
nvcc --version | tail -2
meson --version
ninja --version

step "dependencies"
need_prefix="${FORCE_PREFIX:-0}"
command -v pkg-config >/dev/null || need_prefix=1
for pc in libzstd libxxhash; do
  pkg-config --exists "$pc" 2>/dev/null || need_prefix=1
done
[ -f /usr/include/boost/version.hpp ] || need_prefix=1
[ -f /usr/include/doctest/doctest.h ] || need_prefix=1
pkg-config --exists benchmark 2>/dev/null || need_prefix=1
if [ "$need_prefix" = 1 ]; then
  if ! ls "$ROOT"/.debs/*.deb >/dev/null 2>&1; then
    echo "missing -dev packages and no .debs/ carried (run scripts/prepare_gpu_debs.sh here first)"
    exit 2
  fi
  PREFIX="$ROOT/.gpu-prefix"
  rm -rf "$PREFIX"
  mkdir -p "$PREFIX"
  for deb in "$ROOT"/.debs/*.deb; do
    if command -v dpkg-deb >/dev/null; then
      dpkg-deb -x "$deb" "$PREFIX"
    else  # no dpkg: a .deb is an ar archive holding data.tar.*
      tmp=$(mktemp -d)
      (cd "$tmp" && ar x "$deb" && tar -xf data.tar.* -C "$PREFIX")
      rm -rf "$tmp"
    fi
  done
  LIBDIR="$PREFIX/usr/lib/x86_64-linux-gnu"
  # The .pc files say prefix=/usr: point them at the private prefix.
  for pc in "$LIBDIR"/pkgconfig/*.pc; do
    # (and so do some absolute libdir= / includedir= lines: left alone, the linker takes the
    # system's library of another version, e.g. an older libbenchmark.so, against our headers).
    sed -i -E "s#^(prefix|libdir|includedir|exec_prefix)=/usr(/|\$)#\1=$PREFIX/usr\2#" "$pc"
  done
  # doctest ships only CMake config files: give meson a pkg-config file.
  mkdir -p "$PREFIX/pkgconfig"
  cat > "$PREFIX/pkgconfig/doctest.pc" <<PC
prefix=$PREFIX/usr
includedir=\${prefix}/include
Name: doctest
Description: doctest (unpacked from doctest-dev)
Version: 2.4.9
Cflags: -I\${includedir}
PC
  export PKG_CONFIG_PATH="$LIBDIR/pkgconfig:$PREFIX/pkgconfig:${PKG_CONFIG_PATH:-}"
  export CPATH="$PREFIX/usr/include:${CPATH:-}"
  # Not LIBRARY_PATH: meson takes its directories for system ones and drops the .pc files' -L,
  # and the driver searches them after /usr/lib (which may hold another libbenchmark).
  export LDFLAGS="-L$LIBDIR ${LDFLAGS:-}"
  export LD_LIBRARY_PATH="$LIBDIR:${LD_LIBRARY_PATH:-}"
  if ! command -v pkg-config >/dev/null; then
    export PKG_CONFIG="$PREFIX/usr/bin/pkgconf"
    export PATH="$PATH:$PREFIX/usr/bin"
    ln -sf pkgconf "$PREFIX/usr/bin/pkg-config" 2>/dev/null
  fi
  export BOOST_ROOT="$PREFIX/usr"
  export CMAKE_PREFIX_PATH="$PREFIX/usr:${CMAKE_PREFIX_PATH:-}"
  echo "using the unpacked prefix $PREFIX"
fi

step "configure (release, CUDA, sm_$GPU_ARCHS)"
if [ "${KEEP_BUILD:-0}" = 1 ] && [ -f "$BUILD/build.ninja" ]; then
  echo "KEEP_BUILD=1: reusing $BUILD (ninja rebuilds what changed)"
elif ! { rm -rf "$BUILD"; meson setup "$BUILD" --buildtype=release -Dcuda=enabled -Dgpu_archs="$GPU_ARCHS" \
    -Dio_uring=disabled -Dtests=true -Dbench=true -Dprefer_static=true --wrap-mode=nodownload; }; then
  cp "$BUILD/meson-logs/meson-log.txt" "$OUT/" 2>/dev/null
  echo "configure failed"
  exit 3
fi
[ "${STOP_AFTER:-}" = configure ] && { echo "STOP_AFTER=configure: done"; exit 0; }

step "build the CUDA targets"
if ! timeout "$(budget 400)" ninja -C "$BUILD" -j "$JOBS" tests/cuda/test_cuda \
    tests/cuda/test_cuda_rules bench/cuda_bench bench/slibench; then
  echo "build failed (or ran past the deadline)"
  exit 4
fi
ldd "$BUILD/tests/cuda/test_cuda" | grep -E 'cudart|not found'
[ "${STOP_AFTER:-}" = build ] && { echo "STOP_AFTER=build: done"; exit 0; }

step "CUDA tests"
if ! timeout "$(budget 150)" meson test -C "$BUILD" --suite cuda --no-rebuild --print-errorlogs; then
  status=1
  echo "CUDA tests FAILED"
fi
cp "$BUILD/meson-logs/testlog.txt" "$OUT/meson-testlog.txt" 2>/dev/null
# test_cuda exits 77 (SKIP) when the runtime sees no device, e.g. a driver older than the
# toolkit: on this machine that is a failure, not a pass.
skipped=$(grep -E '^Skipped:' "$BUILD/meson-logs/testlog.txt" 2>/dev/null | tr -dc '0-9')
if [ "${skipped:-0}" != 0 ]; then
  status=1
  echo "CUDA tests SKIPPED ($skipped): the CUDA runtime sees no device (driver older than nvcc's toolkit?)"
fi

step "GPU benchmark"
# shellcheck disable=SC2086
timeout "$(budget 90)" "$BUILD/bench/cuda_bench" --json "$OUT/cuda_bench.json" ${BENCH_ARGS:-} | tee "$OUT/cuda_bench.txt"
bench_rc=${PIPESTATUS[0]}
if [ "$bench_rc" = 77 ]; then
  status=1
  echo "cuda_bench: no CUDA device"
elif [ "$bench_rc" != 0 ]; then
  status=1
  echo "cuda_bench FAILED (exit $bench_rc)"
fi

step "slibench on cuda:0 (engine on the GPU, brief)"
# shellcheck disable=SC2086
timeout "$(budget 90)" "$BUILD/bench/slibench" --tiny --device cuda:0 --backend pread \
  --workdir "$BUILD/slibench-work" --json "$OUT/slibench_cuda.json" \
  --trace "$OUT/slibench_cuda_trace.json" ${SLIBENCH_ARGS:-} | tee "$OUT/slibench_cuda.txt"
sb_rc=${PIPESTATUS[0]}
if [ "$sb_rc" != 0 ]; then
  status=1
  echo "slibench --device cuda:0 FAILED (exit $sb_rc)"
fi

step "sli quantize --device cuda:0 vs the CPU (byte-identical caches)"
if late 100; then
  echo "skipped: fewer than 100 s left before the deadline"
elif ! timeout "$(budget 90)" ninja -C "$BUILD" -j "$JOBS" tools/sli >/dev/null; then
  status=1
  echo "sli build FAILED"
else
  QW="$BUILD/quantize-device"
  rm -rf "$QW"
  python3 scripts/make_llama_checkpoint.py "$QW/ckpt" --layers 4 --hidden 256 --intermediate 512 \
    --vocab 512 --shards 1 --dtype BF16 > /dev/null
  for mode in nf4 fp4 int8; do
    extra=""
    [ "$mode" = int8 ] || extra="--double-quant"
    # shellcheck disable=SC2086
    timeout "$(budget 60)" "$BUILD/tools/sli" quantize "$QW/ckpt" --cache "$QW/cpu-$mode" --mode $mode $extra --quiet > "$QW/cpu-$mode.txt" 2>&1
    # shellcheck disable=SC2086
    timeout "$(budget 60)" "$BUILD/tools/sli" quantize "$QW/ckpt" --cache "$QW/gpu-$mode" --mode $mode $extra --device cuda:0 --quiet > "$QW/gpu-$mode.txt" 2>&1
    q_rc=$?
    grep -E "device|time" "$QW/gpu-$mode.txt"
    same=0 differ=0
    while IFS= read -r f; do
      if cmp -s "$QW/cpu-$mode/$f" "$QW/gpu-$mode/$f"; then same=$((same + 1)); else differ=$((differ + 1)); fi
    done < <(cd "$QW/cpu-$mode" && find . -name '*.slc' | sort)
    echo "quantize --device cuda:0 --mode $mode: exit $q_rc, $same layer files identical to the CPU's, $differ differ" \
      | tee -a "$OUT/quantize_device.txt"
    if [ "$q_rc" != 0 ] || [ "$differ" != 0 ] || [ "$same" = 0 ]; then
      status=1
      tail -3 "$QW/gpu-$mode.txt"
    fi
  done
fi

step "host CPU kernels (AVX-512 natively when this CPU has it)"
if late 120; then
  echo "skipped: fewer than 120 s left before the deadline"
  exit $status
fi
grep -m1 'model name' /proc/cpuinfo | tee "$OUT/cpu.txt"
grep -m1 -o 'avx512[a-z_]*' /proc/cpuinfo >/dev/null && has512=1 || has512=0
grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|f16c|avx512(f|bw|vl|dq))$' | tr '\n' ' ' | tee -a "$OUT/cpu.txt"
echo | tee -a "$OUT/cpu.txt"
if timeout "$(budget 120)" ninja -C "$BUILD" -j "$JOBS" tests/kernels/test_kernels bench/kernels_bench; then
  SLI_TEST_DATA="$ROOT/tests" SLI_LOG=error timeout "$(budget 120)" "$BUILD/tests/kernels/test_kernels" \
    > "$OUT/kernels-test.txt" 2>&1
  kt_rc=$?
  tail -3 "$OUT/kernels-test.txt"
  if [ "$kt_rc" != 0 ]; then
    status=1
    echo "kernel tests FAILED (exit $kt_rc)"
  fi
  isas="avx2"
  [ "$has512" = 1 ] && isas="avx2 avx512"
  for isa in $isas; do
    SLI_ISA=$isa timeout "$(budget 60)" "$BUILD/bench/kernels_bench" \
      --benchmark_filter='streamfill/32|movefloor|dequantize/(nf4|int8|int4)|quantize_kernel' \
      --benchmark_min_time=0.1 --benchmark_out="$OUT/kernels_bench_$isa.json" \
      --benchmark_out_format=json > "$OUT/kernels_bench_$isa.txt" 2>&1 || echo "kernels_bench $isa failed"
  done
else
  status=1
  echo "kernel test / bench build FAILED"
fi

step "slibench on cuda:0, default model (engine on the GPU at real layer sizes)"
if late 200; then
  echo "skipped: fewer than 200 s left before the deadline"
else
  # shellcheck disable=SC2086
  timeout "$(budget 180)" "$BUILD/bench/slibench" --device cuda:0 --workdir "$BUILD/slibench-full" \
    --json "$OUT/slibench_cuda_full.json" ${SLIBENCH_ARGS:-} > "$OUT/slibench_cuda_full.txt" 2>&1
  full_rc=$?
  grep -E "^  (none|int8|nf4|fp4|int4) |Headline|wall / slowest|h2d" "$OUT/slibench_cuda_full.txt"
  if [ "$full_rc" != 0 ]; then
    status=1
    echo "slibench --device cuda:0 (default model) FAILED (exit $full_rc)"
    tail -5 "$OUT/slibench_cuda_full.txt"
  fi
fi

step "compute-sanitizer memcheck of the CUDA tests (informative)"
if ! command -v compute-sanitizer >/dev/null; then
  echo "skipped: no compute-sanitizer"
elif late 60; then
  echo "skipped: fewer than 60 s left before the deadline"
else
  SLI_TEST_DATA="$ROOT/tests" SLI_LOG=error timeout "$(budget 120)" compute-sanitizer --tool memcheck \
    --report-api-errors no --error-exitcode 9 "$BUILD/tests/cuda/test_cuda" > "$OUT/memcheck.txt" 2>&1
  echo "memcheck exit $?"
  tail -4 "$OUT/memcheck.txt"
fi

exit $status

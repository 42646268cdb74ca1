#!/usr/bin/env bash
# The full test suite, set-up included: installs missing packages, builds twice and runs every
# doctest suite in both builds:
#   build/      CUDA and io_uring auto-detected (CUDA code is compiled even without a GPU;
#               its tests skip with exit code 77 when no device is present)
#   build-min/  -Dcuda=disabled -Dio_uring=disabled (the pread + CPU-only configuration),
#               with assertions on (-Db_ndebug=false, still optimized): the checks a debug
#               build makes, such as Result<T> never built from an OK status
# Extra arguments go to `meson test` (e.g. --suite kernels). The `slow` suite (fuzzing) runs
# only when asked for: scripts/test.sh --suite slow.
set -uo pipefail
cd "$(dirname "$0")/.."
test_args=("$@")
[ ${#test_args[@]} -gt 0 ] || test_args=(--no-suite slow)
rc=0
for cfg in "build" "build-min -Dcuda=disabled -Dio_uring=disabled -Db_ndebug=false"; do
    read -r -a words <<<"$cfg"
    scripts/build.sh "${words[@]}" || exit 1
    echo "== meson test -C ${words[0]}"
    meson test -C "${words[0]}" --num-processes 2 --print-errorlogs "${test_args[@]}" || rc=1
done
exit $rc

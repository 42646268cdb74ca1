#!/usr/bin/env bash
# Configures (once) and builds one build directory.
#   scripts/build.sh [BUILD_DIR] [meson options...]
# Default: build/, release, CUDA and io_uring auto-detected.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/bootstrap.sh)"
dir="${1:-build}"
shift || true
if [ ! -f "$dir/build.ninja" ]; then
    meson setup "$dir" --buildtype=release "$@" >"$dir.setup.log" 2>&1 || {
        cat "$dir.setup.log" >&2
        exit 1
    }
    rm -f "$dir.setup.log"
elif [ $# -gt 0 ]; then
    meson configure "$dir" "$@" >/dev/null
fi
ninja -C "$dir" >/dev/null || ninja -C "$dir"

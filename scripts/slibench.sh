#!/usr/bin/env bash
# The main job: installs missing packages, builds (release), then runs slibench on its
# built-in default model (a synthetic Llama-shaped checkpoint generated once under
# .slibench/). Arguments go to slibench (see `scripts/slibench.sh --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh build
exec build/bench/slibench --workdir "${SLIBENCH_WORKDIR:-.slibench}" "$@"

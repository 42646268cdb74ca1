#!/usr/bin/env bash
# Installs the Debian packages the build needs, only when some are missing.
# Quiet and quick (one dpkg query) when everything is present.
set -euo pipefail

pkgs=(meson ninja-build pkg-config g++ liburing-dev libzstd-dev libxxhash-dev libboost-dev
      doctest-dev libbenchmark-dev libsimde-dev)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "bootstrap: installing ${missing[*]}" >&2
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq >/dev/null
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# nvcc lives outside PATH on some machines: let meson find it when the toolkit is installed.
if ! command -v nvcc >/dev/null 2>&1; then
    for d in "${CUDA_HOME:-}" /usr/local/cuda; do
        if [ -n "$d" ] && [ -x "$d/bin/nvcc" ]; then
            echo "export PATH=\"$d/bin:\$PATH\""
            break
        fi
    done
fi

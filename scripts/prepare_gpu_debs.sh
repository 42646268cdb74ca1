#!/usr/bin/env bash
# Downloads (does not install) the Debian -dev packages the build needs into .debs/ at the
# repository root, so bench/gpu_check.sh can unpack them on a lent GPU machine that has nvcc,
# meson and ninja but no network and no -dev packages. Run it here, on a Debian 12 machine
# with apt sources configured:
#
#   scripts/prepare_gpu_debs.sh          # -> .debs/*.deb (about 15 MB)
#
# Then the GPU check runs on the device machine with .debs/ carried along (it travels as an
# untracked file; once .debs/ is git-ignored, name it in the device call's `carry`).
# Runtime library packages are included because -dev packages only hold the .so symlinks.
set -euo pipefail
cd "$(dirname "$0")/.."
PKGS=(
  libzstd-dev libzstd1
  libxxhash-dev libxxhash0
  liburing-dev liburing2
  libboost-dev libboost1.74-dev
  doctest-dev
  libbenchmark-dev libbenchmark1debian
  pkgconf pkgconf-bin libpkgconf3   # in case the machine has no pkg-config
)
mkdir -p .debs
cd .debs
apt-get download "${PKGS[@]}"
ls -l
du -sh .

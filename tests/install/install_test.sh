#!/usr/bin/env bash
# libsli as others consume it. Two ways, one per meson test:
#   install_test.sh pkgconfig BUILD_DIR SOURCE_DIR
#       `meson install --destdir` into a temporary directory; every installed public header
#       compiles on its own with only `pkg-config --cflags sli` (no private io/ or kernels/
#       header leaks); every include/sli/*.h is installed; consumer.cpp is built with
#       `pkg-config --cflags --libs sli` against the installed files and run.
#   install_test.sh subproject BUILD_DIR SOURCE_DIR
#       subproject_consumer/ (a parent meson project with `dependency('sli')`) copied to a
#       temporary directory with subprojects/sli -> SOURCE_DIR, configured, built and run.
# pkg-config sees the destdir through a copy of the installed sli.pc whose prefix= line
# points into the destdir, as a relocated install would (--define-variable=prefix would also
# move the prefix of libzstd.pc and the other packages sli.pc requires).
set -euo pipefail
MODE=$1
BUILD=$(cd "$2" && pwd)
SRC=$(cd "$3" && pwd)
CXX=${CXX:-c++}
TMP=$(mktemp -d /tmp/sli-install-XXXXXX)
trap 'rm -rf "$TMP"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

if [ "$MODE" = pkgconfig ]; then
    command -v pkg-config >/dev/null || { echo "SKIP: pkg-config is not installed"; exit 77; }
    DEST=$TMP/root
    meson install -C "$BUILD" --destdir "$DEST" --no-rebuild --quiet >"$TMP/install.log" 2>&1 \
        || { cat "$TMP/install.log"; fail "meson install --destdir"; }
    PC=$(find "$DEST" -name sli.pc | head -n1)
    [ -n "$PC" ] || fail "no sli.pc was installed"
    PREFIX=$(sed -n 's/^prefix=//p' "$PC")
    [ -n "$PREFIX" ] || fail "$PC has no prefix= line"
    mkdir -p "$TMP/pc"
    sed "s|^prefix=.*|prefix=$DEST$PREFIX|" "$PC" >"$TMP/pc/sli.pc"
    export PKG_CONFIG_PATH="$TMP/pc${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
    PKG=(pkg-config)
    CFLAGS=$("${PKG[@]}" --cflags sli)
    LIBS=$("${PKG[@]}" --libs sli)
    echo "installed sli.pc: $PC (prefix $PREFIX)"
    echo "cflags: $CFLAGS"
    echo "libs:   $LIBS"
    INC="$DEST$PREFIX/include/sli"
    [ -d "$INC" ] || fail "no headers under $INC"
    [ -n "$(find "$DEST$PREFIX" -name 'libsli.*' -print -quit)" ] \
        || fail "libsli was not installed under $DEST$PREFIX"
    for h in "$SRC"/include/sli/*.h; do
        [ -f "$INC/$(basename "$h")" ] || fail "public header $(basename "$h") is not installed"
    done
    # Each public header stands alone, seeing nothing but the installed headers.
    for h in "$INC"/*.h; do
        name=$(basename "$h")
        if grep -nE '#include +"(io|kernels|engine)/' "$h"; then fail "$name includes a private header"; fi
        echo "#include <sli/$name>" | $CXX -std=c++20 -fsyntax-only -x c++ - $CFLAGS \
            || fail "sli/$name does not compile on its own against the installed headers"
    done
    echo "every public header compiles on its own"
    # A sanitizer build's static library needs the same runtime in whatever links it.
    SAN=$(meson introspect --buildoptions "$BUILD" 2>/dev/null | python3 -c \
        'import json,sys; print(next((o["value"] for o in json.load(sys.stdin) if o["name"] == "b_sanitize"), "none"))' \
        2>/dev/null || echo none)
    SANFLAGS=""
    [ -n "$SAN" ] && [ "$SAN" != none ] && SANFLAGS="-fsanitize=$SAN"
    (cd "$TMP" && $CXX -std=c++20 -O1 $SANFLAGS "$SRC/tests/install/consumer.cpp" -o consumer $CFLAGS $LIBS) \
        || fail "consumer.cpp does not build against the installed library"
    "$TMP/consumer" "$TMP" || fail "the consumer built against the installed library failed"
    echo "PASS: installed library, headers and pkg-config file"
elif [ "$MODE" = subproject ]; then
    P=$TMP/parent
    mkdir -p "$P/subprojects"
    cp "$SRC/tests/install/subproject_consumer/meson.build" "$SRC/tests/install/consumer.cpp" "$P/"
    ln -s "$SRC" "$P/subprojects/sli"
    # CUDA, tests and benchmarks are not what this test is about: keep the rebuild small.
    meson setup "$P/build" "$P" --force-fallback-for=sli -Dsli:cuda=disabled -Dsli:tests=false \
        -Dsli:bench=false >"$TMP/setup.log" 2>&1 \
        || { cat "$TMP/setup.log"; fail "meson setup of a project using subproject('sli')"; }
    ninja -C "$P/build" -j2 consumer >"$TMP/build.log" 2>&1 \
        || { tail -n 40 "$TMP/build.log"; fail "building the consumer with the sli subproject"; }
    "$P/build/consumer" "$TMP" || fail "the consumer built with the sli subproject failed"
    echo "PASS: sli as a meson subproject (dependency('sli'))"
else
    echo "usage: install_test.sh pkgconfig|subproject BUILD_DIR SOURCE_DIR"; exit 2
fi

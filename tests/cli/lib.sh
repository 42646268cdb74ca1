# Shared helpers for the CLI tests. Usage: source lib.sh "$@"  (arg 1: the sli binary)
set -u
SLI="$1"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
ST="python3 $HERE/st_tools.py"
GEN="python3 $ROOT/scripts/make_llama_checkpoint.py"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/sli-cli-XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
FAILS=0

fail() { echo "FAIL: $*"; FAILS=$((FAILS + 1)); }
pass() { echo "ok: $*"; }
# expect_rc WANT DESCRIPTION -- command...   (output kept in $WORK/out)
expect_rc() {
    local want="$1" what="$2"; shift 3
    "$@" >"$WORK/out" 2>&1
    local rc=$?
    if [ "$rc" -ne "$want" ]; then
        fail "$what: exit $rc, expected $want"; sed 's/^/    /' "$WORK/out" | head -20
        return 1
    fi
    pass "$what"
}
# expect_out PATTERN DESCRIPTION   (grep -E in the last output)
expect_out() {
    if grep -Eq -- "$1" "$WORK/out"; then pass "$2"; else
        fail "$2: output lacks /$1/"; sed 's/^/    /' "$WORK/out" | head -20; fi
}
finish() {
    if [ "$FAILS" -ne 0 ]; then echo "$FAILS failure(s)"; exit 1; fi
    echo "all passed"; exit 0
}
have_kernels() { "$SLI" --version | grep -vq "kernels: none"; }

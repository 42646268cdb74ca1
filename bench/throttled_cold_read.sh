#!/usr/bin/env bash
# The issue-5 cold-read target (engine with checksum verification vs a raw O_DIRECT io_uring
# read of the same files) at several disk speeds on one machine: the block device is throttled
# with a blkio (cgroup v1) or io (cgroup v2) read limit, and `slibench --targets-only` runs
# inside that cgroup, so the engine and the raw reader see the same disk. Answers whether a
# miss at full speed is the disk path or the CPU the checksums take.
#
#   bench/throttled_cold_read.sh [--rates 1.5G,2.5G,4G,off] [--runs N] [--build DIR]
#                                [-- extra slibench options]
#
# Needs root, a cgroup hierarchy with the blkio or io controller, and a built slibench
# (default build/bench/slibench); caches come from slibench's work directory (.slibench) and
# are made there on the first run. Rates are bytes/s (K, M, G = 1e3, 1e6, 1e9); "off" runs
# unthrottled. Prints one line per run and the median ratio per rate.
set -euo pipefail

rates="1.5G,2.5G,4G,off"
runs=3
build=build
extra=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --rates) rates="$2"; shift 2 ;;
        --runs) runs="$2"; shift 2 ;;
        --build) build="$2"; shift 2 ;;
        --help|-h) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        --) shift; extra=("$@"); break ;;
        *) echo "throttled_cold_read: unknown option '$1' (see --help)" >&2; exit 2 ;;
    esac
done

slibench="$build/bench/slibench"
[[ -x "$slibench" ]] || { echo "throttled_cold_read: $slibench not built (meson compile -C $build)" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || { echo "throttled_cold_read: needs root (cgroup limits, dropping the page cache)" >&2; exit 1; }

workdir=.slibench
for ((i = 0; i < ${#extra[@]}; ++i)); do
    [[ "${extra[$i]}" == --workdir ]] && workdir="${extra[$((i + 1))]}"
done
mkdir -p "$workdir"
src=$(findmnt -no SOURCE --target "$workdir")
majmin=$(lsblk -dno MAJ:MIN "$src" 2>/dev/null | tr -d ' ')
[[ -n "$majmin" ]] || { echo "throttled_cold_read: no block device behind $workdir ($src)" >&2; exit 1; }

# cgroup v1 blkio, else v2 with the io controller.
cg=""
if [[ -f /sys/fs/cgroup/blkio/blkio.throttle.read_bps_device ]]; then
    cg=/sys/fs/cgroup/blkio/sli-throttle-$$
    mkdir "$cg"
    limit() { if [[ "$1" == off ]]; then echo "$majmin 0" > "$cg/blkio.throttle.read_bps_device"; \
              else echo "$majmin $1" > "$cg/blkio.throttle.read_bps_device"; fi; }
else
    root=$(findmnt -no TARGET -t cgroup2 | head -1)
    [[ -n "$root" ]] && grep -qw io "$root/cgroup.controllers" 2>/dev/null ||
        { echo "throttled_cold_read: no blkio (v1) or io (v2) cgroup controller here" >&2; exit 1; }
    grep -qw io "$root/cgroup.subtree_control" || echo +io > "$root/cgroup.subtree_control"
    cg=$root/sli-throttle-$$
    mkdir "$cg"
    limit() { if [[ "$1" == off ]]; then echo "$majmin rbps=max" > "$cg/io.max"; \
              else echo "$majmin rbps=$1" > "$cg/io.max"; fi; }
fi
trap 'rmdir "$cg" 2>/dev/null || true' EXIT

bytes() {
    local v=$1 m=1
    case "$v" in
        *K) m=1000; v=${v%K} ;; *M) m=1000000; v=${v%M} ;; *G) m=1000000000; v=${v%G} ;;
    esac
    python3 -c "print(int(float('$v') * $m))"
}

echo "device $src ($majmin), $runs run(s) per rate, slibench --targets-only ${extra[*]}"
printf '%-6s %4s %12s %10s %8s %16s\n' rate run "engine GB/s" "raw GB/s" ratio "vs verifying"
declare -A ratios
IFS=, read -ra list <<< "$rates"
for rate in "${list[@]}"; do
    if [[ "$rate" == off ]]; then limit off; else limit "$(bytes "$rate")"; fi
    for ((r = 1; r <= runs; ++r)); do
        json=$(mktemp)
        # The child joins the cgroup before exec, so every read it and its threads issue counts.
        bash -c 'echo $$ > "$1/cgroup.procs"; shift; exec "$@"' _ "$cg" \
            "$slibench" --targets-only --json "$json" "${extra[@]}" > /dev/null
        line=$(python3 - "$json" <<'EOF'
import json, sys
a = json.load(open(sys.argv[1]))["acceptance"]["cold_read_vs_raw"]
print(f'{a["median_engine_gbps"]:.2f} {a["median_raw_gbps"]:.2f} {a["ratio"]:.3f} '
      f'{a.get("ratio_vs_verifying_read", float("nan")):.3f}')
EOF
)
        rm -f "$json"
        read -r eng raw ratio vsv <<< "$line"
        printf '%-6s %4d %12s %10s %8s %16s\n' "$rate" "$r" "$eng" "$raw" "$ratio" "$vsv"
        ratios[$rate]+="$ratio "
    done
done
echo
echo "median engine / raw per rate (target >= 0.95):"
for rate in "${list[@]}"; do
    python3 -c "import statistics,sys; v=[float(x) for x in sys.argv[2:]]; print(f'  {sys.argv[1]:<6} {statistics.median(v):.3f}  ({len(v)} runs)')" "$rate" ${ratios[$rate]}
done

#!/usr/bin/env bash
# The block layer against an earlier revision of itself: block-bench built
# at REV (default: the commit before HEAD) and at the working tree, run
# alternately, RUNS of each (default 7), on the null driver (where the
# request path itself is all there is to measure) and on a tmpfs file
# through io_uring; medians of requests per second and the ratio
# new / old. For "does this change cost anything?".
#
# Wall-clock rates on a shared 2-core VM move by a few per cent with code
# layout alone, so it also counts the instructions each build executes per
# null-driver request (valgrind's callgrind; skipped without valgrind): a
# change that adds work to the request path shows there exactly.
#
#   bench/block-ab.sh 5705e77
#   RUNS=9 COUNT=2000000 bench/block-ab.sh HEAD~3
set -euo pipefail
cd "$(dirname "$0")/.."
REV=${1:-HEAD~1}
RUNS=${RUNS:-7}
COUNT=${COUNT:-1000000}
OLD_SRC=target/ab/src
OLD_TARGET=target/ab/target
rev=$(git rev-parse --short "$REV")
rm -rf "$OLD_SRC"
mkdir -p "$OLD_SRC"
git archive "$rev" | tar -x -C "$OLD_SRC"
CARGO_TARGET_DIR=$PWD/$OLD_TARGET cargo build -q --release --manifest-path "$OLD_SRC/Cargo.toml" -p block --bin block-bench
cargo build -q --release -p block --bin block-bench
OLD=$OLD_TARGET/release/block-bench
NEW=target/release/block-bench
IMG=${TMPFS_IMG:-/dev/shm/block-ab.img}
truncate -s 1G "$IMG"
trap 'rm -f "$IMG"' EXIT

cases=(
    "null 4k qd1|--driver null -d 1 -s 4k -c $((COUNT * 10))"
    "null 4k qd32|--driver null -d 32 -s 4k -c $((COUNT * 10))"
    "tmpfs 4k qd1 random|$IMG -d 1 -s 4k --random -c $((COUNT / 20))"
    "tmpfs 4k qd32 random|$IMG -d 32 -s 4k --random -c $((COUNT / 2))"
)
rate() { # BIN ARGS...: requests per second
    local out
    out=$("$@") || { echo "block-bench failed: $*" >&2; exit 1; }
    sed -n 's|^block-bench: .*: \([0-9]*\) requests/s.*|\1|p' <<<"$out" | grep . || { echo "no rate in: $out" >&2; exit 1; }
}
median() { sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
echo "block-ab: $rev (old) against the working tree (new), $RUNS runs each, alternating"
printf '| case | old req/s | new req/s | new/old |\n|---|---|---|---|\n'
for c in "${cases[@]}"; do
    name=${c%%|*}
    read -ra args <<<"${c#*|}"
    old=() new=()
    for _ in $(seq "$RUNS"); do
        old+=("$(rate "$OLD" "${args[@]}")")
        new+=("$(rate "$NEW" "${args[@]}")")
    done
    o=$(printf '%s\n' "${old[@]}" | median)
    n=$(printf '%s\n' "${new[@]}" | median)
    printf '| %s | %.0f (%s) | %.0f (%s) | %.3f |\n' "$name" "$o" "$(printf '%s\n' "${old[@]}" | sort -n | sed -n '1p;$p' | paste -sd-)" \
        "$n" "$(printf '%s\n' "${new[@]}" | sort -n | sed -n '1p;$p' | paste -sd-)" "$(awk -v n="$n" -v o="$o" 'BEGIN {print n / o}')"
done
if command -v valgrind >/dev/null; then
    n=200000
    irs() { # BIN: instructions executed for $n null 4 KiB reads at depth 1
        valgrind --tool=callgrind --callgrind-out-file=/dev/null "$1" --driver null -d 1 -s 4k -c $n 2>&1 |
            sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
    }
    io=$(irs "$OLD") in=$(irs "$NEW")
    awk -v o="$io" -v n="$in" -v c=$n 'BEGIN {
        printf "instructions per null 4k qd1 request (callgrind, %d requests, start-up included): old %.1f, new %.1f, %+.1f (%+.2f%%)\n",
            c, o / c, n / c, (n - o) / c, (n - o) * 100 / o }'
else
    echo "instruction counts: SKIPPED (no valgrind)"
fi

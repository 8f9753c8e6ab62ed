#!/usr/bin/env bash
# The block layer on the host: our `block-bench` side by side with QEMU's
# `qemu-img bench` (the same engine on both sides: io_uring against
# io_uring, threads against threads) and with fio (io_uring), on the same
# files in one run. Runs alternate, RUNS of each (default 3); medians of
# requests per second and the ratios ours / reference.
#
#   bench/block.sh                  # every case
#   RUNS=1 SECS=0.5 bench/block.sh null
#
# Backends: null (our null driver against qemu-img's null-co with
# read-zeroes=on; not against fio, whose null engine touches no buffer), tmpfs (a 1 GiB raw file on /dev/shm, cache=writeback
# and buffered fio), disk (a 1 GiB raw file in target/, cache=none and
# fio --direct=1).
# Workloads: 4 KiB random reads at depth 1 and 32; 64 KiB and 1 MiB
# sequential reads at depth 32. "Random" is random offsets without repeats,
# as fio's random map does, against fio; qemu-img bench has no random mode,
# so against it both sides use the same large odd stride (each 4 KiB slot
# once per pass, neighbours 158 MiB apart).
# Each case runs about SECS seconds (default 1) of our io_uring run; the
# count found for it is used by every tool.
#
# With BENCH_DIR set (bench/run) the section goes to $BENCH_DIR/block.md and
# the targets to $BENCH_DIR/block.targets. Needs qemu-utils and fio.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
SECS=${SECS:-1}
BACKENDS=("$@")
[ ${#BACKENDS[@]} -gt 0 ] || BACKENDS=(null tmpfs disk)
for tool in qemu-img fio; do
    command -v $tool >/dev/null || { echo "bench/block.sh: $tool not found (apt-get install qemu-utils fio)" >&2; exit 1; }
done
cargo build -q --release -p block --bin block-bench
B=target/release/block-bench
TMPFS_IMG=${TMPFS_IMG:-/dev/shm/block-bench.img}
DISK_IMG=${DISK_IMG:-target/block-bench-disk.img}
SIZE=1073741824
STRIDE=$((4096 * 40503)) # odd multiple of 4 KiB: a full cycle over 1 GiB

image() { # a 1 GiB file of random data, made once
    [ "$(stat -c %s "$1" 2>/dev/null)" = $SIZE ] && return
    head -c $SIZE /dev/urandom >"$1.tmp"
    mv "$1.tmp" "$1"
    sync
}

# Each tool prints one number: requests per second.
ours() { # fails if io_uring was asked for and block-bench fell back to threads
    local out
    out=$("$B" "$@") || return 1
    case " $* " in *" io_uring "*) grep -q 'engine IoUring' <<<"$out" || { echo "bench/block.sh: block-bench did not use io_uring: $out" >&2; return 1; } ;; esac
    awk '/^block-bench:/ { print $7 }' <<<"$out"
}
qimg() { # count, then qemu-img bench arguments
    local n=$1; shift
    qemu-img bench -c "$n" "$@" | awk -v n="$n" '/^Run completed in/ { printf "%.0f\n", n / $4 }'
}
fio_iops() { fio --name=bench --minimal "$@" | cut -d';' -f8; }
median() { sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) exit 1; print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

samples=$(mktemp -d)
trap 'rm -rf "$samples"' EXIT
sample() { # NAME CMD...: one sample of NAME; an empty or failed result is fatal
    local name=$1 v; shift
    v=$("$@") || { echo "bench/block.sh: $name failed: $*" >&2; exit 1; }
    [ -n "$v" ] || { echo "bench/block.sh: $name printed no result: $*" >&2; exit 1; }
    echo "$v" >>"$samples/$name"
}
med() { median <"$samples/$1"; }
range() { sort -g "$samples/$1" | awk 'NR == 1 { lo = $1 } { hi = $1 } END { print lo, hi }'; }

WORKLOADS=("4k-qd1 4k 1 rand" "4k-qd32 4k 32 rand" "64k-seq 64k 32 seq" "1m-seq 1M 32 seq")
bytes() { case $1 in 4k) echo 4096 ;; 64k) echo 65536 ;; 1M) echo 1048576 ;; esac; }

rows=()
worst_qemu=""; worst_fio=""
note() { # keeps the lowest ratio of a kind: note VAR RATIO CASE
    local cur=${!1}
    if [ -z "$cur" ] || awk -v a="$2" -v b="${cur%% *}" 'BEGIN { exit !(a < b) }'; then
        printf -v "$1" '%s %s' "$2" "$3"
    fi
}
# Ratios keep 4 decimals for the targets; tables show 2.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.4f", a / b }'; }
r2() { awk -v a="$1" 'BEGIN { printf "%.2f", a }'; }
k() { awk -v a="$1" 'BEGIN { if (a >= 100000) printf "%.0fk", a / 1000; else if (a >= 10000) printf "%.1fk", a / 1000; else printf "%.0f", a }'; }
cell() { # median (min-max) of a series
    local lo hi
    read -r lo hi <<<"$(range "$1")"
    echo "$(k "$(med "$1")") ($(k "$lo")-$(k "$hi"))"
}

for backend in "${BACKENDS[@]}"; do
    case $backend in
    null) file=(--driver null --null-size 1G); qfile=(--image-opts "driver=null-co,size=1G,read-zeroes=on")
          ffile=(--ioengine=null --size=1G); cache=() ; qcache=() ;;
    tmpfs) image "$TMPFS_IMG"; file=("$TMPFS_IMG"); qfile=(-f raw "$TMPFS_IMG")
           ffile=(--filename="$TMPFS_IMG" --size=1G --ioengine=io_uring); cache=(-t writeback); qcache=(-t writeback) ;;
    disk) image "$DISK_IMG"; file=("$DISK_IMG"); qfile=(-f raw "$DISK_IMG")
          ffile=(--filename="$DISK_IMG" --size=1G --ioengine=io_uring --direct=1); cache=(-t none); qcache=(-t none) ;;
    *) echo "bench/block.sh: unknown backend '$backend' (null, tmpfs, disk)" >&2; exit 1 ;;
    esac
    for w in "${WORKLOADS[@]}"; do
        read -r name bs depth pattern <<<"$w"
        c="$backend.$name"
        # Calibrate: our io_uring run for about SECS seconds.
        probe=$(ours "${file[@]}" -c 20000 -d "$depth" -s "$bs" "${cache[@]}" -i io_uring)
        n=$(awk -v r="$probe" -v s="$SECS" 'BEGIN { n = int(r * s); print (n < 2000) ? 2000 : n }')
        io=$(( n * $(bytes "$bs") ))
        if [ "$pattern" = rand ]; then
            ours_fio=(--random); qpat=(-S $STRIDE); opat=(-S $STRIDE); frw=randread
        else
            ours_fio=(); qpat=(); opat=(); frw=read
        fi
        for _ in $(seq "$RUNS"); do
            sample "$c.ours-uring" ours "${file[@]}" -c "$n" -d "$depth" -s "$bs" "${cache[@]}" -i io_uring "${opat[@]}" --shared-buffer
            sample "$c.qemu-uring" qimg "$n" -d "$depth" -s "$bs" "${qcache[@]}" -i io_uring "${qpat[@]}" "${qfile[@]}"
            if [ "$backend" != null ]; then
                sample "$c.ours-threads" ours "${file[@]}" -c "$n" -d "$depth" -s "$bs" "${cache[@]}" -i threads "${opat[@]}" --shared-buffer
                sample "$c.qemu-threads" qimg "$n" -d "$depth" -s "$bs" "${qcache[@]}" -i threads "${qpat[@]}" "${qfile[@]}"
            fi
            if [ "$backend" != null ]; then
                sample "$c.ours-fio" ours "${file[@]}" -c "$n" -d "$depth" -s "$bs" "${cache[@]}" -i io_uring "${ours_fio[@]}"
                sample "$c.fio" fio_iops "${ffile[@]}" --rw=$frw --bs="$bs" --iodepth="$depth" --io_size="$io"
            fi
        done
        ou=$(med "$c.ours-uring"); qu=$(med "$c.qemu-uring")
        r1=$(ratio "$ou" "$qu"); note worst_qemu "$r1" "$c io_uring"
        if [ "$backend" != null ]; then
            ot=$(med "$c.ours-threads"); qt=$(med "$c.qemu-threads")
            r2=$(ratio "$ot" "$qt"); note worst_qemu "$r2" "$c threads"
            thr="$(cell "$c.ours-threads") | $(cell "$c.qemu-threads") | **$(r2 "$r2")**"
            of=$(med "$c.ours-fio"); fi=$(med "$c.fio")
            rf=$(ratio "$of" "$fi"); note worst_fio "$rf" "$c"
            fio="$(cell "$c.ours-fio") | $(cell "$c.fio") | **$(r2 "$rf")**"
        else
            thr="n/a | n/a | (no engine)"
            fio="n/a | n/a | (see above)"
            rf=n/a
        fi
        rows+=("| $backend | $name | $(cell "$c.ours-uring") | $(cell "$c.qemu-uring") | **$(r2 "$r1")** | $thr | $fio |")
        echo "$c: ours/qemu io_uring $r1, ours/fio $rf ($n requests)" >&2
    done
done

section=$(mktemp)
{
    echo "## Block layer on the host"
    echo
    echo "Command: \`bench/block.sh\` (RUNS=$RUNS, SECS=$SECS). Ours is \`block-bench\`, which sends requests"
    echo "through \`BlockBackend\` and an \`IoQueue\` as a device does. $(qemu-img --version | head -1),"
    echo "$(fio --version). Requests per second, median (min-max) of $RUNS alternating runs;"
    echo "ratios of medians. Being faster than fio counts as within 5% of it."
    echo "Against qemu-img both sides read every request into one buffer, as qemu-img bench does"
    echo "(\`--shared-buffer\`); against fio both sides have a buffer per request slot."
    echo "Null: our null driver against qemu-img's \`null-co\` with \`read-zeroes=on\` (ours zero-fills"
    echo "reads too); not against fio, whose null engine does not touch the buffers at all."
    echo "tmpfs: 1 GiB raw file on /dev/shm, cache=writeback, buffered fio."
    echo "disk: 1 GiB raw file on the root disk, cache=none, \`fio --direct=1\`. Depth 32 except"
    echo "\`4k-qd1\`. 4 KiB cases are random offsets without repeats: against fio both sides use"
    echo "random order (fio's random map, our \`--random\` permutation); qemu-img bench has no random"
    echo "mode, so against it both sides use the same 158 MiB stride (\`-S\`), each slot once per pass."
    echo "64k and 1m cases are sequential."
    echo
    echo "| backend | case | ours io_uring | qemu-img io_uring | ratio | ours threads | qemu-img threads | ratio | ours (fio pattern) | fio io_uring | ours / fio |"
    echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    printf '%s\n' "${rows[@]}"
    echo
} >"$section"
cat "$section"
met() { awk -v a="$1" -v b="$2" 'BEGIN { print (a >= b) ? "met" : "missed" }'; }
targets=$(printf '%s\t%s\t%s\t%s\n' \
    "block-bench vs qemu-img bench, same engine (lowest case)" "$(r2 "${worst_qemu%% *}")x (${worst_qemu#* })" ">= 1.0x in every case" "$(met "${worst_qemu%% *}" 1.0)" \
    "block-bench vs fio (lowest case)" "$(r2 "${worst_fio%% *}")x (${worst_fio#* })" ">= 0.95x in every case" "$(met "${worst_fio%% *}" 0.95)")
echo "$targets" | sed 's/^/target: /'
if [ -n "${BENCH_DIR:-}" ]; then
    cp "$section" "$BENCH_DIR/block.md"
    echo "$targets" >"$BENCH_DIR/block.targets"
fi
rm -f "$section"

#!/usr/bin/env bash
# Our block layer (block-bench) side by side with QEMU's (`qemu-img bench`)
# and with fio, on the same files in one run: runs alternate, RUNS of each
# (default 5), medians of requests/s, and the ratios ours/reference.
#
#   resources/bench-block.sh            # all cases
#   RUNS=3 resources/bench-block.sh null tmpfs
#
# Cases (4 KiB requests, 32 in flight):
#   null   null driver vs qemu-img's null-co
#   tmpfs  1 GiB raw file on /dev/shm, cache=writeback, sequential reads:
#          ours (io_uring and threads) vs qemu-img -i threads, and fio io_uring
#   disk   1 GiB raw file on the root disk, cache=none (O_DIRECT): random
#          reads vs fio --direct=1 io_uring; sequential reads vs qemu-img
#          -t none -i io_uring
# Needs qemu-utils and fio (apt-get install qemu-utils fio).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
CASES=("$@")
[ ${#CASES[@]} -gt 0 ] || CASES=(null tmpfs disk)
for tool in qemu-img fio; do
    command -v $tool >/dev/null || { echo "bench-block: $tool not found (apt-get install qemu-utils fio)" >&2; exit 1; }
done
cargo build -q --release -p block --bin block-bench
B=target/release/block-bench
TMPFS_IMG=${TMPFS_IMG:-/dev/shm/block-bench.img}
DISK_IMG=${DISK_IMG:-target/block-bench-disk.img}

image() { # path: a 1 GiB file of random data, made once
    [ "$(stat -c %s "$1" 2>/dev/null)" = 1073741824 ] && return
    head -c 1G /dev/urandom >"$1"
    sync
}

# Each prints one number: requests per second.
ours() { "$B" "$@" | awk '/^block-bench:/ { print $7 }'; }
qimg() { # count, then qemu-img bench arguments
    local n=$1; shift
    qemu-img bench -c "$n" "$@" | awk -v n="$n" '/^Run completed in/ { printf "%.0f\n", n / $4 }'
}
fio_iops() { fio --name=bench --minimal "$@" | cut -d';' -f8; }

median() { sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

# run NAME CMD...: appends one sample to $samples/NAME
samples=$(mktemp -d)
trap 'rm -rf "$samples"' EXIT
run() { local name=$1; shift; "$@" >>"$samples/$name"; }
report() { # title ours reference
    local o r
    o=$(median <"$samples/$2")
    r=$(median <"$samples/$3")
    awk -v t="$1" -v o="$o" -v r="$r" 'BEGIN { printf "%-58s %10.0f %10.0f %6.2f\n", t, o, r, o / r }'
}

for case in "${CASES[@]}"; do
    case $case in
    null)
        for _ in $(seq "$RUNS"); do
            run null.ours ours --driver null --null-size 1G -c 2000000 -d 32 -s 4k
            run null.qemu qimg 2000000 -d 32 -s 4k --image-opts driver=null-co,size=1G
        done ;;
    tmpfs)
        image "$TMPFS_IMG"
        for _ in $(seq "$RUNS"); do
            run tmpfs.ours ours "$TMPFS_IMG" -c 1000000 -d 32 -s 4k -t writeback
            run tmpfs.ours-threads ours "$TMPFS_IMG" -c 1000000 -d 32 -s 4k -t writeback -i threads
            run tmpfs.qemu qimg 1000000 -f raw -d 32 -s 4k -t writeback -i threads "$TMPFS_IMG"
            run tmpfs.fio fio_iops --filename="$TMPFS_IMG" --rw=read --bs=4k --iodepth=32 \
                --ioengine=io_uring --size=1G --io_size=3906M
        done ;;
    disk)
        image "$DISK_IMG"
        for _ in $(seq "$RUNS"); do
            run disk.ours-rand ours "$DISK_IMG" -c 300000 -d 32 -s 4k -t none --random
            run disk.fio-rand fio_iops --filename="$DISK_IMG" --rw=randread --bs=4k --iodepth=32 \
                --ioengine=io_uring --direct=1 --size=1G --io_size=1171M
            run disk.ours-seq ours "$DISK_IMG" -c 300000 -d 32 -s 4k -t none
            run disk.qemu-seq qimg 300000 -f raw -d 32 -s 4k -t none -i io_uring "$DISK_IMG"
        done ;;
    *) echo "bench-block: unknown case '$case' (null, tmpfs, disk)" >&2; exit 1 ;;
    esac
done

echo
echo "medians of $RUNS runs, requests/s (4 KiB, depth 32)"
printf '%-58s %10s %10s %6s\n' case ours reference ratio
for case in "${CASES[@]}"; do
    case $case in
    null) report "null driver vs qemu-img null-co" null.ours null.qemu ;;
    tmpfs)
        report "tmpfs writeback seq read (io_uring) vs qemu-img threads" tmpfs.ours tmpfs.qemu
        report "tmpfs writeback seq read (threads) vs qemu-img threads" tmpfs.ours-threads tmpfs.qemu
        report "tmpfs writeback seq read (io_uring) vs fio io_uring" tmpfs.ours tmpfs.fio ;;
    disk)
        report "disk cache=none rand read vs fio io_uring direct" disk.ours-rand disk.fio-rand
        report "disk cache=none seq read vs qemu-img -t none io_uring" disk.ours-seq disk.qemu-seq ;;
    esac
done

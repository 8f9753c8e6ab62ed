#!/bin/busybox sh
# /init of the guest (L2) initramfs. It prepares a minimal userland, loads the
# block-device modules in dependency order (the stock Debian kernel has them all
# as modules), prints a marker the tests wait for, runs what the kernel command
# line asks in `run=...` (an interactive shell when absent) and powers off.
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /tmp /dev/pts
mount -t tmpfs tmpfs /tmp

# virtio.ko needs a symbol of virtio_ring.ko, and sd_mod must come after libata
# or an ATA disk gets no /dev/sdX: this order is load-bearing.
for m in virtio_ring virtio virtio_mmio virtio_blk \
         scsi_common scsi_mod libata pata_legacy cdrom sr_mod sd_mod isofs; do
    if ! insmod "/lib/modules/$m.ko" 2>/dev/null; then
        # pata_legacy refuses to stay loaded when no IDE port answers.
        [ "$m" = pata_legacy ] || echo "guest-init: could not load $m"
    fi
done

cpus=$(grep -c '^processor' /proc/cpuinfo)
mem_kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)
echo "VMM-GUEST-READY cpus=$cpus mem_kb=$mem_kb"

# The kernel hands unknown `key=value` words of its command line to init as
# environment variables, so `run="cmd args"` arrives here as $run.
if [ -n "$run" ]; then
    sh -c "$run"
    echo "VMM-GUEST-RC=$?"
else
    setsid cttyhack sh
fi
poweroff -f

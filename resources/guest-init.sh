#!/bin/busybox sh
# /init of the guest (L2) initramfs. It prepares a minimal userland, loads the
# block-device modules in dependency order (the stock Debian kernel has them all
# as modules), prints a marker the tests wait for, runs what the kernel command
# line asks in `run=...` (an interactive shell when absent) and powers off.
#
# First, before anything else, a marker: the boot benchmark (bench/) times
# the VMM from process start to this line, so it must come before any module
# or probe. `bench=init` on the command line powers off right after it, for
# the time to process exit.
echo VMM-INIT-START
[ "$bench" = init ] && exec /bin/busybox poweroff -f
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /tmp /dev/pts
mount -t tmpfs tmpfs /tmp

# The IDE channels the machine has, from the ACPI namespace (PNP0600 devices
# with their ports). pata_legacy probes all six ISA port ranges and each
# probe of nothing costs libata's reset timeouts, so it is told to look only
# at these (probe_mask bit 0 is 0x1f0, bit 1 0x170), and is not loaded at
# all when there are none.
ide_mask=0
for d in /sys/bus/pnp/devices/*; do
    grep -qx PNP0600 "$d/id" 2>/dev/null || continue
    grep -q '^io 0x1f0-' "$d/resources" && ide_mask=$((ide_mask | 1))
    grep -q '^io 0x170-' "$d/resources" && ide_mask=$((ide_mask | 2))
done

# virtio.ko needs a symbol of virtio_ring.ko, and sd_mod must come after libata
# or an ATA disk gets no /dev/sdX: this order is load-bearing.
for m in virtio_ring virtio virtio_mmio virtio_blk \
         scsi_common scsi_mod libata pata_legacy cdrom sr_mod sd_mod isofs; do
    args=
    if [ "$m" = pata_legacy ]; then
        [ "$ide_mask" = 0 ] && continue
        args="probe_mask=$ide_mask"
    fi
    insmod "/lib/modules/$m.ko" $args || echo "guest-init: could not load $m"
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

#!/bin/busybox sh
# /init of the L1 initramfs: a Linux VM under QEMU TCG whose kvm-amd gives a
# real-semantics /dev/kvm. The test harness appends a second cpio archive with
# the VMM binary, its libraries and /scenario.sh, which this runs.
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# /tmp stays the initramfs's own (already RAM, and writable): a tmpfs over
# it would hide the files the harness put there at their host paths (a
# checkout under /tmp puts its test helpers there, e.g. qmp-bridge).
mkdir -p /tmp /run
mount -t tmpfs tmpfs /run
for m in irqbypass kvm kvm-amd; do
    insmod "/lib/modules/$m.ko" || echo "L1: could not load $m"
done
if [ -c /dev/kvm ]; then echo "L1-KVM-READY"; else echo "L1-KVM-MISSING"; fi
cd /
sh /scenario.sh
echo "L1-SCENARIO-RC=$?"
poweroff -f

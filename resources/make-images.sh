#!/usr/bin/env bash
# Builds the guest images without root: Debian's stock cloud kernel, a busybox
# initramfs for the guest (L2), the base initramfs of the nested-KVM test VM
# (L1), and the small disk and ISO images the tests use. Everything goes to
# resources/out/ (git-ignored); a second run reuses what is already there.
#
# Needs: apt-get (with package lists), dpkg-deb, cpio, gzip, xorriso, ldd
# (a Debian 12 host: the guest tools take some libraries from it).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
out=${VMM_IMAGES:-$here/out}
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

need() { command -v "$1" >/dev/null || { echo "make-images: '$1' is missing (apt-get install $2)" >&2; exit 1; }; }
need apt-get apt
need dpkg-deb dpkg
need cpio cpio
need gzip gzip
need xorriso xorriso

# --- Debian packages, downloaded (not installed) -----------------------------
fetch() { # fetch PACKAGE -> extracts into $work/root, caches the .deb in $out/debs
    local pkg=$1 deb
    mkdir -p "$out/debs"
    deb=$(ls "$out/debs/${pkg}"_*.deb 2>/dev/null | head -n1 || true)
    if [ -z "$deb" ]; then
        (cd "$out/debs" && apt-get download "$pkg" >/dev/null 2>&1) || {
            echo "make-images: 'apt-get download $pkg' failed (run 'apt-get update' first?)" >&2; exit 1; }
        deb=$(ls "$out/debs/${pkg}"_*.deb | head -n1)
    fi
    dpkg-deb -x "$deb" "$work/root"
}

if [ ! -f "$out/vmlinuz" ] || [ ! -d "$out/modules" ]; then
    # The meta package names the versioned kernel package it depends on.
    (cd "$work" && apt-get download linux-image-cloud-amd64 >/dev/null 2>&1) || {
        echo "make-images: 'apt-get download linux-image-cloud-amd64' failed (run 'apt-get update' first?)" >&2; exit 1; }
    kpkg=$(dpkg-deb -f "$work"/linux-image-cloud-amd64_*.deb Depends | grep -o 'linux-image-[0-9][^ ,]*-cloud-amd64' | head -n1)
    echo "make-images: kernel package $kpkg"
    fetch "$kpkg"
    kver=${kpkg#linux-image-}
    cp "$work/root/boot/vmlinuz-$kver" "$out/vmlinuz.tmp" && mv "$out/vmlinuz.tmp" "$out/vmlinuz"
    rm -rf "$out/modules" && mkdir -p "$out/modules"
    for m in virtio/virtio_ring virtio/virtio virtio/virtio_mmio block/virtio_blk \
             scsi/scsi_common scsi/scsi_mod ata/libata ata/pata_legacy cdrom/cdrom \
             scsi/sr_mod scsi/sd_mod; do
        cp "$work/root/lib/modules/$kver/kernel/drivers/$m.ko" "$out/modules/"
    done
    cp "$work/root/lib/modules/$kver/kernel/fs/isofs/isofs.ko" "$out/modules/"
    cp "$work/root/lib/modules/$kver/kernel/virt/lib/irqbypass.ko" "$out/modules/"
    cp "$work/root/lib/modules/$kver/kernel/arch/x86/kvm/kvm.ko" "$out/modules/"
    cp "$work/root/lib/modules/$kver/kernel/arch/x86/kvm/kvm-amd.ko" "$out/modules/"
    echo "$kver" > "$out/kernel-version"
fi

if [ ! -x "$out/busybox" ]; then
    fetch busybox-static
    cp "$work/root/bin/busybox" "$out/busybox"
fi

# eject (util-linux) and sg3-utils for the CD-ROM tests, with the libraries
# ldd names (those of the packages themselves, the rest from this Debian 12
# host, which has the same versions as the guest's distribution).
tools="eject sg_inq sg_readcap sg_start sg_prevent sg_turs sg_raw"
# Rebuilt when the list changes (the list is kept beside the tools).
if [ "$(cat "$out/tools/.list" 2>/dev/null)" != "$tools" ]; then
    rm -rf "$work/root"
    fetch eject
    fetch sg3-utils
    fetch libsgutils2-1.46-2
    mkdir -p "$out/tools.tmp/usr/bin" "$out/tools.tmp/lib/x86_64-linux-gnu" "$out/tools.tmp/lib64"
    for t in $tools; do
        cp "$work/root/usr/bin/$t" "$out/tools.tmp/usr/bin/"
        LD_LIBRARY_PATH="$work/root/usr/lib/x86_64-linux-gnu" ldd "$work/root/usr/bin/$t" |
            grep -o '=> /[^ ]*' | cut -c4- | while read -r lib; do
                cp -L "$lib" "$out/tools.tmp/lib/x86_64-linux-gnu/"
            done
    done
    cp -L /lib64/ld-linux-x86-64.so.2 "$out/tools.tmp/lib64/"
    echo "$tools" > "$out/tools.tmp/.list"
    rm -rf "$out/tools" && mv "$out/tools.tmp" "$out/tools"
fi

mkcpio() { # mkcpio DIR OUT: a newc archive with root-owned entries
    (cd "$1" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) > "$2"
}

# --- the guest (L2) initramfs -------------------------------------------------
g=$work/guest
mkdir -p "$g/bin" "$g/sbin" "$g/proc" "$g/sys" "$g/dev" "$g/tmp" "$g/lib/modules" "$g/etc"
cp "$out/busybox" "$g/bin/busybox"
cp "$here/guest-init.sh" "$g/init" && chmod 755 "$g/init"
cp -a "$out/tools/." "$g/"
for m in virtio_ring virtio virtio_mmio virtio_blk scsi_common scsi_mod libata \
         pata_legacy cdrom sr_mod sd_mod isofs; do
    cp "$out/modules/$m.ko" "$g/lib/modules/"
done
mkcpio "$g" "$work/guest.cpio"
gzip -9n < "$work/guest.cpio" > "$out/initramfs.cpio.gz"

# --- disk and ISO images for the block tests -----------------------------------
truncate -s 64M "$out/disk.raw.tmp" && mv "$out/disk.raw.tmp" "$out/disk.raw"
mkdir -p "$work/iso"
echo "hello from the CD-ROM" > "$work/iso/hello.txt"
head -c 1048576 /dev/zero | tr '\0' 'C' > "$work/iso/pattern.bin"
xorriso -as mkisofs -quiet -V VMMTEST -o "$out/cd.iso" "$work/iso" 2>/dev/null
# A second CD for media changes: another file, another pattern, and the
# same size as the first, so that a sector read names its medium.
mkdir -p "$work/iso2"
echo "second disc" > "$work/iso2/two.txt"
head -c 1048576 /dev/zero | tr '\0' 'D' > "$work/iso2/pattern.bin"
xorriso -as mkisofs -quiet -V VMMTEST2 -o "$out/cd2.iso" "$work/iso2" 2>/dev/null

# --- the L1 base initramfs (nested KVM for tests on hosts without hardware KVM) --
l=$work/l1
mkdir -p "$l/bin" "$l/sbin" "$l/proc" "$l/sys" "$l/dev" "$l/tmp" "$l/run" "$l/lib/modules" "$l/images"
cp "$out/busybox" "$l/bin/busybox"
cp "$here/l1-init.sh" "$l/init" && chmod 755 "$l/init"
for m in irqbypass kvm kvm-amd; do cp "$out/modules/$m.ko" "$l/lib/modules/"; done
cp "$out/vmlinuz" "$out/initramfs.cpio.gz" "$out/cd.iso" "$out/cd2.iso" "$l/images/"
# Uncompressed: under TCG, gunzip in L1 costs more than reading the bytes.
mkcpio "$l" "$out/l1-base.cpio"

echo "make-images: done: $(cd "$out" && ls vmlinuz initramfs.cpio.gz l1-base.cpio disk.raw cd.iso cd2.iso | tr '\n' ' ')"

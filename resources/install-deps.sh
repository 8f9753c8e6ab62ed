#!/usr/bin/env bash
# Installs what building, the guest images and the tests need on Debian 12
# (root or sudo). Rust itself comes from rustup, not apt: Debian's rustc is
# too old for the rust-vmm crates.
set -euo pipefail
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# qemu-system-x86: the L1 VM for nested KVM on hosts without hardware KVM.
# busybox-static, cpio, xorriso, kmod: the guest images. gcc: crates that build C.
$SUDO apt-get install -y -qq --no-install-recommends \
    qemu-system-x86 busybox-static cpio xorriso kmod e2fsprogs gcc libc6-dev ca-certificates >/dev/null
if ! command -v cargo >/dev/null; then
    echo "install-deps: cargo not found; install Rust with rustup (https://rustup.rs), then re-run" >&2
    exit 1
fi

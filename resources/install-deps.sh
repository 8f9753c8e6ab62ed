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
# python3-venv: the QMP tests' client, qemu.qmp from PyPI, in a venv below.
# seabios, qemu-utils, fio: the references of bench/run (QEMU -M pc,
# qemu-img bench, fio).
$SUDO apt-get install -y -qq --no-install-recommends \
    qemu-system-x86 busybox-static cpio xorriso kmod e2fsprogs gcc libc6-dev ca-certificates \
    python3 python3-venv seabios qemu-utils fio >/dev/null
# QEMU's own QMP client library, the reference client of tests/tests/qmp.rs
# (which looks for this venv). Not in Debian 12; from PyPI, pinned.
venv="${XDG_CACHE_HOME:-$HOME/.cache}/rvmm/venv"
if ! "$venv/bin/python3" -c 'import qemu.qmp' 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q 'qemu.qmp==0.0.6'
fi
if ! command -v cargo >/dev/null; then
    echo "install-deps: cargo not found; install Rust with rustup (https://rustup.rs), then re-run" >&2
    exit 1
fi

#!/usr/bin/env bash
# One command from a fresh Debian 12 machine to a shell in the demo guest:
# installs the packages, builds the VMM and the guest images, and boots the
# stock Debian kernel (nested under QEMU TCG when /dev/kvm is not hardware).
# Arguments are passed to the VMM instead of the default demo ones.
set -euo pipefail
cd "$(dirname "$0")/.."
bash resources/install-deps.sh
exec cargo run -q -p e2e --bin run-guest -- "$@"

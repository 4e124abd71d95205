#!/usr/bin/env bash
# demo.sh: one command, on a fresh Debian 12 machine as root, that shows usb4rescue work
# end to end in QEMU VMs joined by the virtual USB4 cable:
#
#   machine A (a 256 MiB ext4 disk with files + a 64 MiB GPT disk with 2 partitions)
#     --rescue.mode=backup-->  machine B (rescue.mode=serve, store = ext4 disk "store",
#                               rescue.allow_restore=hosta: C may restore A's disks)
#   machine C (blank disks)  --rescue.mode=restore--> from B
#
# and prints what moved, how fast, and that it verified (A's disks == B's images ==
# C's disks by sha256, B's SHA256SUMS checked with sha256sum -c on the host).
#
#   sudo scripts/demo.sh
#
# Set-up it does (each step is skipped when already done):
#   apt-get install: build-essential curl git python3 qemu-system-x86 e2fsprogs fdisk
#                    musl-tools busybox-static bc file mmdebstrap
#   rustup (from https://sh.rustup.rs) if cargo is missing, and its x86_64-unknown-linux-musl target
#   scripts/fetch-kernel.sh (Debian trixie-backports kernel), scripts/buildroot.sh +
#   scripts/build-kmod.sh (usb4vhost.ko, the virtual USB4 host under Debian's own
#   thunderbolt_stream), cable-ctl, the static rescue, the initramfs
#   (all through tests/scenarios/run.sh, cached under ${USB4RESCUE_CACHE:-/var/cache/usb4rescue}).
# Then: tests/scenarios/run.sh --demo (tests/scenarios/scenarios.py --demo).
# A first run takes roughly 10 minutes (downloads and builds), later runs about 2.
set -euo pipefail

TOP=$(cd "$(dirname "$0")/.." && pwd)
[ "$(id -u)" = 0 ] || { echo "demo.sh: run as root (apt-get, the kernel build root, chroot)" >&2; exit 1; }

say() { printf '\n==> %s\n' "$*" >&2; }

say "Debian packages"
pkgs=()
for p in build-essential curl git python3 qemu-system-x86 e2fsprogs fdisk musl-tools busybox-static bc file mmdebstrap xz-utils; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || pkgs+=("$p")
done
if [ ${#pkgs[@]} -gt 0 ]; then
    apt-get -o DPkg::Lock::Timeout=600 update -q >&2
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${pkgs[@]}" >&2
fi

say "Rust toolchain (rustup, musl target)"
export PATH=$HOME/.cargo/bin:$PATH
if ! command -v cargo >/dev/null; then
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal >&2
    export PATH=$HOME/.cargo/bin:$PATH
fi
if command -v rustup >/dev/null; then
    rustup target list --installed | grep -q x86_64-unknown-linux-musl ||
        rustup target add x86_64-unknown-linux-musl >&2
fi

say "kernel, usb4vhost, cable-ctl, rescue, initramfs; then the VMs"
exec "$TOP/tests/scenarios/run.sh" --demo "$@"

#!/usr/bin/env bash
# Raw throughput and idle cost of the virtual USB4 host under TCG: dd through Debian's own
# thunderbolt_stream.ko on usb4vhost (MB/s both ways, bs=256k and bs=4k) and the CPU an
# idle link costs (host CPU of each QEMU process against a VM without the module, and
# the guest's poller thread). No rescue involved: bench/cable.sh compares rescue with dd.
#
#   bench/raw-dd.sh            (BENCH_MIB=256 BENCH_IDLE_S=10 by default)
#
# Builds what it needs (kernel, usb4vhost.ko, cable-ctl, initramfs; cached under
# ${USB4RESCUE_CACHE:-/var/cache/usb4rescue}).
set -euo pipefail
cd "$(dirname "$0")/.."
KDIR=$(scripts/fetch-kernel.sh | tail -n1)
KO=$(dirname "$(scripts/build-kmod.sh | tail -n1)")/usb4vhost.ko
[ -f "$KO" ] || { echo "raw-dd: scripts/build-kmod.sh did not produce usb4vhost.ko" >&2; exit 1; }
cargo build -q -p cable-ctl
tdir=$(cargo metadata -q --format-version 1 --no-deps |
       python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
export USB4RESCUE_CABLE_CTL=$tdir/debug/cable-ctl
export USB4RESCUE_VM_KERNEL=$KDIR/vmlinuz
USB4RESCUE_VM_VHOST_INITRD=$(python3 tests/vm/build-initramfs.py --kernel-dir "$KDIR" --ko "$KO" | tail -n1)
export USB4RESCUE_VM_VHOST_INITRD
exec python3 bench/raw_dd.py "$@"

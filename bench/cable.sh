#!/usr/bin/env bash
# Backup throughput over the virtual USB4 cable against raw dd over the same
# cable, in one run: two busybox guests joined by usb4vhost (the virtual USB4 host)
# running Debian's own thunderbolt_stream, the kernel's driver; each round moves
# the same random disk with `dd ... of=/dev/tbstreamN` and with
# `rescue backup --device /dev/tbstreamN` into `rescue serve` on an ext4 store;
# prints the medians, the ratio (target >= 0.9x) and the CPU each QEMU used.
#
#   bench/cable.sh [ROUNDS (default 5)] [--bench-mib 64] [--smp 1]
#
# Builds what it needs through tests/scenarios/run.sh (kernel, usb4vhost,
# static rescue, initramfs; cached). USB4RESCUE_QEMU=/path/to/qemu-system-x86_64
# runs another QEMU, e.g. one whose TCG emulates SHA-NI (QEMU >= 8.1) as every
# USB4-era CPU has it; QEMU 7.2 (Debian 12) does not.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=5
if [ $# -gt 0 ] && [[ $1 =~ ^[0-9]+$ ]]; then rounds=$1; shift; fi
exec tests/scenarios/run.sh --bench "$rounds" "$@"

#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# usb4vcable figures under TCG: raw dd throughput across the virtual cable (MB/s,
# both directions, bs=256k and bs=4k) and the CPU use of an idle cable (host CPU of
# each QEMU process, compared with a VM without the module, and the guest's poller).
#
#   kmod/bench.sh            (BENCH_MIB=256 BENCH_IDLE_S=10 by default)
#
# Builds what it needs (module, cable-ctl); needs the kernel from scripts/fetch-kernel.sh.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
export KO=${KO:-$("$REPO/scripts/build-kmod.sh" | tail -n1)}
if [ -z "${CABLE_CTL:-}" ]; then
	(cd "$REPO" && CARGO_TARGET_DIR=/tmp/target-kmod cargo build -q -p cable-ctl)
	export CABLE_CTL=/tmp/target-kmod/debug/cable-ctl
fi
exec python3 "$HERE/tests/bench.py" "$@"

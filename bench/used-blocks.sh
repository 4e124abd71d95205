#!/usr/bin/env bash
# Used-block backups (issue 13) on a realistic 2 GiB GPT disk built once in
# ${BENCH_DIR:-/var/tmp/usb4rescue-bench} (vfat, ext4 with a Debian tree and a
# deleted 300 MiB file, xfs, btrfs): rescue in used-block mode and with
# --all-blocks against partclone.<fs> -c -s of each partition, bytes read, bytes
# sent, wall time and their ratios. Root only (mkfs, losetup, mount).
# Usage: bench/used-blocks.sh [--rounds N]
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v partclone.ext4 >/dev/null || need+=(partclone)
command -v mcopy >/dev/null || need+=(mtools)
command -v mkfs.xfs >/dev/null || need+=(xfsprogs)
command -v mkfs.btrfs >/dev/null || need+=(btrfs-progs)
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null \
        || { echo "bench: could not install ${need[*]} (apt-get failed)" >&2; exit 1; }
fi
cargo build --release -q -p rescue
exec python3 bench/used_blocks.py --rescue "${CARGO_TARGET_DIR:-target}/release/rescue" "$@"

#!/usr/bin/env bash
# Benchmarks `rescue serve` + `rescue backup` over a UNIX socket against
# `dd | dd` and `bmaptool copy` on the same images, in one run, and prints the
# ratios and peak RSS. Usage: bench/run.sh [--mib N] [--rounds N] [--big];
# bench/run.sh incremental [--mib N] times a second backup with 1 % changed, and
# rsync's delta transfer of the same;
# bench/run.sh streams [--mib N] backs up over 1, 2 and 4 streams of 150 MB/s each;
# bench/run.sh cable-streams [ROUNDS] [--bench-mib N] [--ring-rate B/s] backs up over 1
# and 2 streams in paired VMs, every ring of the virtual cable capped (issue 15, 5c).
# Installs bmap-tools, GNU time and rsync when missing; images live in
# ${BENCH_DIR:-/var/tmp/usb4rescue-bench} (not in the tree).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = cable-streams ]; then
    # In VMs (as root): builds what it needs through tests/scenarios/run.sh (cached).
    shift
    rounds=1
    if [ $# -gt 0 ] && [[ $1 =~ ^[0-9]+$ ]]; then rounds=$1; shift; fi
    exec tests/scenarios/run.sh --bench-streams "$rounds" "$@"
fi
need=()
command -v bmaptool >/dev/null || need+=(bmap-tools)
[ -x /usr/bin/time ] || need+=(time)
command -v rsync >/dev/null || need+=(rsync)
if [ ${#need[@]} -gt 0 ]; then
    apt-get -o DPkg::Lock::Timeout=600 update -qq && DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq "${need[@]}" >/dev/null \
        || { echo "bench: could not install ${need[*]} (apt-get failed)" >&2; exit 1; }
fi
cargo build --release -q -p rescue
if [ "${1:-}" = streams ]; then
    # bench/run.sh streams [--mib N] [--rate B/s]: N = 1, 2, 4 shaped UNIX-socket streams (issue 15, 5a).
    shift
    exec python3 bench/streams.py --rescue "${CARGO_TARGET_DIR:-target}/release/rescue" "$@"
fi
if [ "${1:-}" = incremental ]; then
    # bench/run.sh incremental [--mib N]: a second backup with 1 % changed.
    shift
    exec python3 bench/incremental.py --rescue "${CARGO_TARGET_DIR:-target}/release/rescue" "$@"
fi
exec python3 bench/bench.py --rescue "${CARGO_TARGET_DIR:-target}/release/rescue" "$@"

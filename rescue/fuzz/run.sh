#!/usr/bin/env bash
# Runs the fuzzers for a bounded time in all (default 60 s), split between them:
# one per decoder of the protocol crate (`frame`: the frame reader, `chunk`: the
# CHUNK body, `control`: every JSON control message, `digests`: the DIGESTS body)
# and one per fsmap parser (`fsmap_ext4`, `fsmap_fat`, `fsmap_swap`, `xfs`, `btrfs`,
# `ntfs`, and `fsmap_opaque`: the whole-copy formats and the dispatch over all
# parsers), all reading fsmap::sparse images (seeds/fsmap_*: small real images from
# make_seeds.py; seeds/xfs, btrfs, ntfs: the metadata the parser read from a real
# image, make_seeds.py --fs), and `session` (serve's session handling fed arbitrary
# frame sequences, seeded with whole valid sessions from seeds/session, see
# make_seeds.py).
# Uses the stable toolchain with RUSTC_BOOTSTRAP=1 (cargo-fuzz needs nightly flags);
# installs cargo-fuzz from crates.io when missing.
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-60}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
decoders=(frame chunk control digests fsmap_ext4 fsmap_fat fsmap_swap fsmap_opaque xfs btrfs ntfs)
for t in "${decoders[@]}" session; do mkdir -p "corpus/$t"; done
cp -n seeds/session/* corpus/session/
for t in "${decoders[@]}"; do
    if [ -d "seeds/$t" ]; then cp -n "seeds/$t"/* "corpus/$t/"; fi
done
export RUSTC_BOOTSTRAP=1
# Nothing fuzzed reads the commit rescue --version names: a fixed one keeps rescue/build.rs
# from rerunning on every commit, which rebuilt rescue and every target with sanitizers
# even when no source had changed.
export USB4RESCUE_COMMIT=${USB4RESCUE_COMMIT:-fuzz-build}
# The fuzz build has sanitizer flags of its own: keep it beside cargo's target dir so a rerun
# does not rebuild every dependency.
target=${CARGO_TARGET_DIR:-${USB4RESCUE_CACHE:-/var/cache/usb4rescue}/target}/fuzz
mkdir -p "$target"
# The session target runs a server per input: it gets two thirds, the decoders
# and parsers (tens of thousands of inputs a second each) share the rest. A session that
# does not end within 10 s (the server stuck on a peer that has closed) is
# reported as a timeout.
n=${#decoders[@]}
decode_secs=$(( secs / (3 * n) > 0 ? secs / (3 * n) : 1 ))
session_secs=$(( secs - n * decode_secs > 0 ? secs - n * decode_secs : 1 ))
for t in "${decoders[@]}"; do
    cargo fuzz run --target-dir "$target" "$t" "corpus/$t" -- \
        -max_total_time="$decode_secs" -rss_limit_mb=512 -max_len=65536
done
cargo fuzz run --target-dir "$target" session corpus/session -- \
    -max_total_time="$session_secs" -rss_limit_mb=1024 -max_len=65536 -timeout=10

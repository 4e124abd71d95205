#!/usr/bin/env bash
# Runs the fuzzers for a bounded time in all (default 60 s), split between them:
# one per decoder of the protocol crate (`frame`: the frame reader, `chunk`: the
# CHUNK body, `control`: every JSON control message, `digests`: the DIGESTS body)
# and `session` (serve's session handling fed arbitrary frame sequences, seeded
# with whole valid sessions from seeds/session, see make_seeds.py), and one per
# filesystem parser of fsmap (`parsers`: sparse images seeded from seeds/<name>).
# Uses the stable toolchain with RUSTC_BOOTSTRAP=1 (cargo-fuzz needs nightly flags);
# installs cargo-fuzz from crates.io when missing.
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-60}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
decoders=(frame chunk control digests)
parsers=(xfs btrfs ntfs)
for t in "${decoders[@]}" "${parsers[@]}" session; do mkdir -p "corpus/$t"; done
cp -n seeds/session/* corpus/session/
for t in "${parsers[@]}"; do cp -n "seeds/$t"/* "corpus/$t/"; done
export RUSTC_BOOTSTRAP=1
# The fuzz build has sanitizer flags of its own: keep it beside cargo's target dir so a rerun
# does not rebuild every dependency.
target=${CARGO_TARGET_DIR:-${USB4RESCUE_CACHE:-/var/cache/usb4rescue}/target}/fuzz
mkdir -p "$target"
# The session target runs a server per input: it gets two thirds, the decoders
# (tens of thousands of inputs a second each) share the rest. A session that
# does not end within 10 s (the server stuck on a peer that has closed) is
# reported as a timeout.
decode_secs=$(( secs / 12 > 0 ? secs / 12 : 1 ))
fast=$(( ${#decoders[@]} + ${#parsers[@]} ))
session_secs=$(( secs - fast * decode_secs > 0 ? secs - fast * decode_secs : 1 ))
for t in "${decoders[@]}" "${parsers[@]}"; do
    cargo fuzz run --target-dir "$target" "$t" "corpus/$t" -- \
        -max_total_time="$decode_secs" -rss_limit_mb=512 -max_len=65536
done
cargo fuzz run --target-dir "$target" session corpus/session -- \
    -max_total_time="$session_secs" -rss_limit_mb=1024 -max_len=65536 -timeout=10

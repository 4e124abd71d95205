#!/usr/bin/env bash
# Runs the fuzzers for a bounded time in all (default 60 s), split between them:
# `decode` (frame reader and message decoders) and `session` (serve's session
# handling fed arbitrary frame sequences, seeded with whole valid sessions from
# seeds/session, see make_seeds.py).
# Uses the stable toolchain with RUSTC_BOOTSTRAP=1 (cargo-fuzz needs nightly flags);
# installs cargo-fuzz from crates.io when missing.
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-60}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
mkdir -p corpus/decode corpus/session
cp -n seeds/session/* corpus/session/
export RUSTC_BOOTSTRAP=1
# The fuzz build has sanitizer flags of its own: keep it beside cargo's target dir so a rerun
# does not rebuild every dependency.
target=${CARGO_TARGET_DIR:-${USB4RESCUE_CACHE:-/var/cache/usb4rescue}/target}/fuzz
mkdir -p "$target"
# The session target runs a server per input: it gets the larger share. A session
# that does not end within 10 s (the server stuck on a peer that has closed) is
# reported as a timeout.
decode_secs=$(( secs / 3 > 0 ? secs / 3 : 1 ))
session_secs=$(( secs - decode_secs > 0 ? secs - decode_secs : 1 ))
cargo fuzz run --target-dir "$target" decode corpus/decode -- \
    -max_total_time="$decode_secs" -rss_limit_mb=512 -max_len=65536
cargo fuzz run --target-dir "$target" session corpus/session -- \
    -max_total_time="$session_secs" -rss_limit_mb=1024 -max_len=65536 -timeout=10

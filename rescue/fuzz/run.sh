#!/usr/bin/env bash
# Runs the protocol decoder fuzzer for a bounded time (default 60 s).
# Uses the stable toolchain with RUSTC_BOOTSTRAP=1 (cargo-fuzz needs nightly flags);
# installs cargo-fuzz from crates.io when missing.
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-60}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
mkdir -p corpus/decode
export RUSTC_BOOTSTRAP=1
# The fuzz build has sanitizer flags of its own: keep it beside cargo's target dir so a rerun
# does not rebuild every dependency.
target=${CARGO_TARGET_DIR:-${USB4RESCUE_CACHE:-/var/cache/usb4rescue}/target}/fuzz
mkdir -p "$target"
cargo fuzz run --target-dir "$target" decode corpus/decode -- -max_total_time="$secs" -rss_limit_mb=512 -max_len=65536

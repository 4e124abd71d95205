#!/usr/bin/env bash
# Runs the protocol decoder fuzzer for a bounded time (default 60 s).
# Uses the stable toolchain with RUSTC_BOOTSTRAP=1 (cargo-fuzz needs nightly flags);
# installs cargo-fuzz from crates.io when missing.
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-60}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
mkdir -p corpus/decode
# Seed the corpus with valid frames so the fuzzer starts from real messages.
export RUSTC_BOOTSTRAP=1
cargo fuzz run decode corpus/decode -- -max_total_time="$secs" -rss_limit_mb=512 -max_len=65536

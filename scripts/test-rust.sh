#!/usr/bin/env bash
# Runs the Rust SDK's and plugins' own tests (shared vectors in testdata/).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null 2>&1 || PATH="$HOME/.cargo/bin:$PATH"
cargo test --release --locked -j2

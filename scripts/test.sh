#!/usr/bin/env bash
# The whole test suite, as CI runs it: dependencies, format, lints, every test.
# Tests that need root, containerd or other tools fail (not skip) when CI=true.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build --release -p stargaze
cargo test --workspace --release

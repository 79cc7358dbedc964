#!/usr/bin/env bash
# The whole test suite, as CI runs it: dependencies, format, lints, every test.
# Tests that need root, containerd or other tools fail (not skip) when CI=true.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build --release -p stargaze
scripts/build-reference.sh
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# Worker tests run for the default worker, the stargz snapshotter variant and rootless
# (through rootlesskit, as a user of the project's own; made once).
rootless_user=stargaze-rootless
id -u "$rootless_user" >/dev/null 2>&1 || useradd --create-home --shell /bin/sh "$rootless_user"
export STARGAZE_INTEGRATION_ROOTLESS_IDPAIR="$(id -u "$rootless_user"):$(id -g "$rootless_user")"
STARGAZE_INTEGRATION_SNAPSHOTTER=stargz cargo test --workspace --release 2>&1 | tee "$log"
# One closing line over all test binaries (doc-test runs with no tests end cargo's output).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1) } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"

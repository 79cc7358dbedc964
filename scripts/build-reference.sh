#!/usr/bin/env bash
# Builds the reference lazy-pulling snapshotter daemon (containerd-stargz-grpc) from Debian's Go
# packages, offline, with the lab's build script, into target/reference/ (skipped when present).
# The interop tests and the cold-start bench use it.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/target/reference/containerd-stargz-grpc}
if [ -x "$OUT" ]; then
  echo "build-reference: $OUT (cached)"
  exit 0
fi
LAB=../shared/lab/stargz-grpc/build.sh
if [ ! -x "$LAB" ] || ! command -v go >/dev/null; then
  echo "build-reference: needs go (golang-go) and $LAB" >&2
  exit 1
fi
mkdir -p "$(dirname "$OUT")"
OUT=$OUT OV=$PWD/target/reference/gopath GOCACHE=$PWD/target/reference/gocache "$LAB" >/dev/null
echo "build-reference: built $OUT"

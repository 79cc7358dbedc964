#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian 12 machine (idempotent; root only).
# Nothing is downloaded except Debian packages and crates through their normal clients.
set -euo pipefail
# debootstrap, fio and iproute2 are for the WAN benches (suite/benches: the debian image, random reads, the emulated link).
PKGS=(skopeo umoci containerd runc containernetworking-plugins rootlesskit uidmap sudo stargz-snapshotter busybox-static zstd attr fuse3 fuse-overlayfs docker-registry openssl golang-go golang-github-containerd-stargz-snapshotter-dev python3-grpcio debootstrap fio iproute2)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "install-deps: need root to install: ${missing[*]}" >&2
    exit 1
  fi
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "install-deps: cargo is required (rustup toolchain)" >&2; exit 1; }
rustup component list --installed 2>/dev/null | grep -q clippy || rustup component add clippy rustfmt
echo "install-deps: ok"

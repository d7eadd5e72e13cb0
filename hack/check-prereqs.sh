#!/bin/bash
# Stops in the first seconds, saying exactly what to install, when this machine lacks what
# the build and the test VM need (before a 5-minute image build is started for nothing).
set -euo pipefail
missing=()
min_rust=1.88
if ! command -v cargo >/dev/null; then
  missing+=("a Rust toolchain $min_rust or newer (cargo); Debian's packaged Rust is older: install rustup (https://rustup.rs), then 'rustup toolchain install stable'")
else
  have=$(cargo --version | awk '{print $2}')
  if [ "$(printf '%s\n%s\n' "$min_rust" "$have" | sort -V | head -1)" != "$min_rust" ]; then
    missing+=("Rust $min_rust or newer (this cargo is $have): 'rustup update stable'")
  fi
fi
command -v cc >/dev/null || missing+=("a C linker: apt-get install build-essential")
command -v python3 >/dev/null || missing+=("python3: apt-get install python3")
[ "$(id -u)" = 0 ] || missing+=("root: the VM image build uses debootstrap and chroot; run as root")
command -v apt-get >/dev/null || missing+=("a Debian bookworm host (apt-get): the test VM is built from Debian packages")
if [ ${#missing[@]} -gt 0 ]; then
  echo "zfs-csi: this machine lacks what the build and the test VM need:" >&2
  printf '  - %s\n' "${missing[@]}" >&2
  exit 2
fi

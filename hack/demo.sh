#!/bin/bash
# Sets everything up on a fresh Debian bookworm machine (host packages, the OpenZFS test VM
# image, the build) and shows zfs-csi doing its job on pools like the user's (ai, vms, tank
# with compression=lz4), inside the VM.
set -euo pipefail
cd "$(dirname "$0")/.."
bash hack/check-prereqs.sh   # Rust, root, Debian: said in the first second, not after the image build
echo "== host packages (qemu, debootstrap from bookworm-backports)"
bash hack/host-setup.sh
echo "== the OpenZFS VM image (built once, about 5 minutes, then cached)"
image=$(bash hack/testvm-image.sh)
echo "== building zfs-csi"
cargo build --quiet --release -p zfs-csi -p zfs-csi-tests --bins
share=$(mktemp -d)
trap 'rm -rf "$share"' EXIT
mkdir -p "$share/bin"
cp target/release/zfs-csi target/release/zfs-csi-demo "$share/bin/"
cp hack/vm/demo.sh "$share/run.sh"
echo "== booting the VM and running the demo"
set +e
bash hack/run-vm.sh "$image" "$share" >/dev/null
rc=$?
set -e
cat "$share/out/run.log"
exit $rc

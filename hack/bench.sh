#!/bin/bash
# Benchmark in the OpenZFS VM: driver CreateVolume+DeleteVolume latency (median, p95) against
# bare zfs create+destroy, for datasets and zvols, and 32 concurrent creations each way.
# Prints the figures; the README quotes them. Env: BENCH_ITERATIONS (40).
set -euo pipefail
cd "$(dirname "$0")/.."
image=$(bash hack/testvm-image.sh)
echo "== building (release)"
cargo build --quiet --release -p zfs-csi -p zfs-csi-tests --bins
share=$(mktemp -d)
trap 'rm -rf "$share"' EXIT
mkdir -p "$share/bin"
cp target/release/zfs-csi target/release/zfs-csi-bench "$share/bin/"
cp hack/vm/bench.sh "$share/run.sh"
sed -i "1a export BENCH_ITERATIONS=${BENCH_ITERATIONS:-40}" "$share/run.sh"
echo "== running in the VM"
set +e
bash hack/run-vm.sh "$image" "$share" >/dev/null
rc=$?
set -e
cat "$share/out/run.log"
exit $rc

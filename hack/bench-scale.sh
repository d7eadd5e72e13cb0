#!/bin/bash
# Scale benchmark in the OpenZFS VM: each CSI RPC's latency (p50, p95) and zfs/zpool processes
# per call on pools vms, ai and tank holding 1,000 driver volumes, first without, then with
# 20,000 foreign snapshots (50 operator datasets in vms with 400 sanoid-like snapshots each),
# against the bare zfs commands. Prints the figures (tests/src/bin/zfs-csi-scale.rs); the
# README quotes them. About 20 minutes in the VM at full size. The guest's out/ (with the
# drivers' log) and console log are kept in target/bench-scale/.
# Env (smaller counts to iterate fast): SCALE_VOLUMES (1000), SCALE_SNAPSHOTS (20000),
#   SCALE_FOREIGN_DATASETS (50), SCALE_SAMPLES (20), SCALE_HEAVY_SAMPLES (5),
#   SCALE_ZVOL_EVERY (10), SCALE_CONCURRENCY (32), SCALE_COUNT_REPS (3); and run-vm.sh's
#   MEM, TIMEOUT.
set -euo pipefail
cd "$(dirname "$0")/.."
image=$(bash hack/testvm-image.sh)
echo "== building (release)"
cargo build --quiet --release -p zfs-csi -p zfs-csi-tests --bins
share=$(mktemp -d)
keep=target/bench-scale
trap 'rm -rf "$keep"; mkdir -p "$keep"; cp -r "$share/out" "$share/console.log" "$keep/" 2>/dev/null; rm -rf "$share"' EXIT
mkdir -p "$share/bin"
cp target/release/zfs-csi target/release/zfs-csi-scale "$share/bin/"
cp hack/vm/bench-scale.sh "$share/run.sh"
for var in SCALE_VOLUMES SCALE_SNAPSHOTS SCALE_FOREIGN_DATASETS SCALE_SAMPLES SCALE_HEAVY_SAMPLES SCALE_ZVOL_EVERY SCALE_CONCURRENCY SCALE_COUNT_REPS; do
  value=${!var:-}
  [ -z "$value" ] && continue
  [[ "$value" =~ ^[0-9]+$ ]] || { echo "$var=$value: a number is needed" >&2; exit 2; }
  sed -i "1a export $var=$value" "$share/run.sh"
done
echo "== running in the VM"
set +e
bash hack/run-vm.sh "$image" "$share"
rc=$?
set -e
cat "$share/out/run.log"
exit $rc

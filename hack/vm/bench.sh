#!/bin/bash
# Runs inside the test VM (copied to the share as run.sh): the benchmark against the release
# build of zfs-csi, on a fresh pool like the user's.
set -euo pipefail
cd /mnt/share
zpool create -f -O compression=lz4 vms /dev/vdc
bin/zfs-csi --endpoint unix:///run/csi/csi.sock --node-id bench --parents vms --log-level warn 2> out/driver.log &
driver=$!
for _ in $(seq 100); do [ -S /run/csi/csi.sock ] && break; sleep 0.1; done
bin/zfs-csi-bench /run/csi/csi.sock vms "${BENCH_ITERATIONS:-40}"
echo; echo "zfs-csi resident memory: $(awk '/VmHWM/ {print $2, $3}' /proc/$driver/status) peak, $(awk '/VmRSS/ {print $2, $3}' /proc/$driver/status) now"
kill -TERM "$driver"; wait "$driver"

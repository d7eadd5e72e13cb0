#!/bin/bash
# Runs inside the test VM (copied to the share as run.sh): the driver doing its job on pools
# like the user's. Creates ai, vms and tank with compression=lz4, starts zfs-csi, asks it over
# CSI for a volume on each tier, and shows the result in `zfs list`.
set -euo pipefail
cd /mnt/share
for pool in ai:vdb vms:vdc tank:vdd; do
  zpool create -f -O compression=lz4 "${pool%%:*}" "/dev/${pool##*:}"
done
echo "\$ zfs-csi --endpoint unix:///run/csi/csi.sock --node-id demo-node --parents ai,vms,tank &"
bin/zfs-csi --endpoint unix:///run/csi/csi.sock --node-id demo-node --parents ai,vms,tank 2> out/driver.log &
driver=$!
for _ in $(seq 100); do [ -S /run/csi/csi.sock ] && break; sleep 0.1; done
echo
bin/zfs-csi-demo /run/csi/csi.sock
echo
echo "\$ zfs list -o name,type,volsize,refquota,compression,zfs-csi.io:csi-name"
zfs list -r -o name,type,volsize,refquota,compression,zfs-csi.io:csi-name ai vms tank
echo
echo "\$ zfs get -r -t filesystem,volume compression ai vms tank   # lz4 comes from the pools"
zfs get -r -t filesystem,volume -o name,value,source compression ai vms tank
kill -TERM "$driver"; wait "$driver"
echo
echo "driver log (last lines):"; tail -5 out/driver.log

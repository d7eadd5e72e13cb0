#!/bin/bash
# Runs inside the test VM (copied to the share as run.sh): creates the pools ai, vms and tank
# with compression=lz4 at their roots, as on the user's machine, then runs every test binary
# in bin/ with --ignored (the tests that need real ZFS).
set -uo pipefail
cd /mnt/share
export ZFS_CSI_BIN=/mnt/share/bin/zfs-csi PATH=/mnt/share/bin:$PATH
echo "guest: $(uname -r), $(zfs version | tr '\n' ' ')"
for pool in ai:vdb vms:vdc tank:vdd; do
  zpool create -f -O compression=lz4 "${pool%%:*}" "/dev/${pool##*:}" || exit 10
done
zfs list -o name,compression,avail
failed=0
for t in tests/*; do
  name=$(basename "$t")
  # untouched compares the whole machine's `zfs list` before and after: it runs alone.
  threads=2; [ "$name" = untouched ] && threads=1
  echo "=== $name"
  "$t" --ignored --test-threads="$threads" ${TEST_FILTER:-} || failed=1
done
zpool list
exit $failed

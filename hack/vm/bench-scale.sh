#!/bin/bash
# Runs inside the test VM (copied to the share as run.sh): the scale benchmark against the
# release build of zfs-csi, on fresh pools ai, vms and tank as on the user's machine (measured
# on vms, the first parent). The drivers' logs go to out/driver.log, the figures to standard
# output.
set -euo pipefail
cd /mnt/share
export ZFS_CSI_BIN=/mnt/share/bin/zfs-csi
echo "guest: $(uname -r), $(nproc) vCPUs, $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) MiB"
for pool in ai:vdb vms:vdc tank:vdd; do
  zpool create -f -O compression=lz4 "${pool%%:*}" "/dev/${pool##*:}"
done
# The counting driver's --command-prefix: `sh count-calls LOG zfs args…` appends one line per
# command to LOG, then runs the command itself.
cat > bin/count-calls <<'WRAPPER'
log=$1; shift
printf '%s\n' "$*" >> "$log"
exec "$@"
WRAPPER
set +e
bin/zfs-csi-scale vms,ai,tank /mnt/share/bin/count-calls 2> out/driver.log
rc=$?
set -e
if [ "$rc" != 0 ]; then
  echo "zfs-csi-scale failed (exit code $rc); the end of out/driver.log:"
  tail -30 out/driver.log
fi
echo
zpool list -o name,size,allocated,free,capacity
free -m | sed -n 2p
exit $rc

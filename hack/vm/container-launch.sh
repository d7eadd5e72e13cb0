#!/bin/bash
# Runs inside the test VM: starts zfs-csi the way the DaemonSet runs it (deploy/base/node.yaml),
# for tests/deployed.rs. The test harness execs this script with zfs-csi's arguments; every
# step execs, so the harness's child PID is zfs-csi's own.
#   - its own mount namespace, PID 1 of the host still visible (hostPID);
#   - the image's userland: the VM's Debian root without the ZFS userland (zfs, zpool), as an
#     overlay prepared by run-tests.sh at $ZFS_CSI_CONTAINER_ROOT;
#   - /dev, /sys and /proc of the host; the kubelet directory (the tests' /tmp) shared with
#     Bidirectional (rshared) propagation, so that the driver's mounts appear on the host;
#   - PATH as the manifest sets it, and every zfs/zpool through
#     "nsenter --target $ZFS_CSI_HOST_PID --mount --" (1 in the DaemonSet; a test may point it
#     at a process standing for a host whose zfs lives elsewhere, such as NixOS).
set -euo pipefail
root=${ZFS_CSI_CONTAINER_ROOT:?set by run-tests.sh}
host_pid=${ZFS_CSI_HOST_PID:-1}
path=${ZFS_CSI_CONTAINER_PATH:?set by run-tests.sh from deploy/base/node.yaml}
exec unshare --mount --propagation unchanged -- /bin/bash -c '
  set -euo pipefail
  root=$1 host_pid=$2 path=$3; shift 3
  mount --rbind /dev "$root/dev"; mount --make-rslave "$root/dev"
  mount --rbind /sys "$root/sys"; mount --make-rslave "$root/sys"
  mount -t proc proc "$root/proc"
  # The kubelet directory: a bind of the shared /tmp joins its peer group (Bidirectional).
  mount --rbind /tmp "$root/tmp"
  exec env PATH="$path" chroot "$root" /usr/local/bin/zfs-csi \
    --command-prefix "nsenter --target $host_pid --mount --" "$@"
' container-launch "$root" "$host_pid" "$path" "$@"

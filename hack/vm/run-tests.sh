#!/bin/bash
# Runs inside the test VM (copied to the share as run.sh): creates the pools ai, vms and tank
# with compression=lz4 at their roots, as on the user's machine, then runs every test binary
# in tests/ with --ignored (the tests that need real ZFS), and ends with the list of what
# failed.
set -uo pipefail
cd /mnt/share
export ZFS_CSI_BIN=/mnt/share/bin/zfs-csi PATH=/mnt/share/bin:$PATH
# Where tests leave output for host-side checks (tests/cli.rs: import's YAML, which
# hack/test.sh validates against the Kubernetes schemas).
export ZFS_CSI_TEST_OUT=/mnt/share/out
echo "guest: $(uname -r), $(zfs version | tr '\n' ' ')"
for pool in ai:vdb vms:vdc tank:vdd; do
  zpool create -f -O compression=lz4 "${pool%%:*}" "/dev/${pool##*:}" || exit 10
done
zfs list -o name,compression,avail

# The deployed shape (tests/deployed.rs, hack/vm/container-launch.sh): a container root that is
# this Debian root without the ZFS userland, as the image is, and the PATH the manifest sets.
root=/run/zfs-csi-container
mkdir -p /run/zfs-csi-overlay/upper /run/zfs-csi-overlay/work "$root"
mount -t overlay overlay -o lowerdir=/,upperdir=/run/zfs-csi-overlay/upper,workdir=/run/zfs-csi-overlay/work "$root"
mount --make-private "$root"
rm -f "$root"/usr/sbin/{zfs,zpool,zdb,mount.zfs} "$root"/sbin/{zfs,zpool} 2>/dev/null
install -m 755 /mnt/share/bin/zfs-csi "$root/usr/local/bin/zfs-csi"
container_path=$(awk '/- name: PATH$/ {getline; sub(/^ *value: */, ""); print; exit}' /mnt/share/node.yaml)
export ZFS_CSI_CONTAINER_ROOT=$root ZFS_CSI_CONTAINER_LAUNCH=/mnt/share/container-launch.sh
export ZFS_CSI_CONTAINER_PATH=${container_path:-/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin}
echo "container PATH (deploy/base/node.yaml): $ZFS_CSI_CONTAINER_PATH"
failed=0
failures=()
for t in tests/*; do
  name=$(basename "$t")
  # untouched compares the whole machine's `zfs list` before and after: it runs alone.
  threads=2; [ "$name" = untouched ] && threads=1
  echo "=== $name"
  "$t" --ignored --test-threads="$threads" ${TEST_FILTER:-} 2>&1 | tee /tmp/test-output
  [ "${PIPESTATUS[0]}" = 0 ] || failed=1
  while read -r test; do failures+=("$name: $test"); done < <(sed -n 's/^test \(.*\) \.\.\. FAILED$/\1/p' /tmp/test-output)
done
zpool list
if [ "$failed" != 0 ]; then
  echo "=== FAILED on $(uname -r):"
  printf '    %s\n' "${failures[@]:-(a test binary failed outside any test)}"
  dmesg | tail -40 > out/dmesg-tail.txt
else
  echo "=== all VM tests passed on $(uname -r)"
fi
exit $failed

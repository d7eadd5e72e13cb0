#!/bin/bash
# Make sure the OpenZFS test VM image exists in the machine-wide cache, building it on a
# miss (about 5 minutes on 2 cores), and print its directory.
# Cache key: a hash of the build script, the ZFS suite and the kernel suite. A cached image
# stays valid when Debian moves on (it holds its own packages); a fresh machine builds from
# whatever Debian serves that day, which is how the image was proven to build.
# Concurrent callers are safe: the build runs under a lock and lands by an atomic rename.
# Env: ZFS_SUITE (bookworm-backports = OpenZFS 2.3, bookworm = 2.1),
#      KERNEL_SUITE (bookworm = 6.1, bookworm-backports = 6.12+), ZFS_CSI_VM_CACHE.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export ZFS_SUITE=${ZFS_SUITE:-bookworm-backports} KERNEL_SUITE=${KERNEL_SUITE:-bookworm}
cache=${ZFS_CSI_VM_CACHE:-/var/cache/zfs-csi-testvm}
key=$( { cat "$here/build-image.sh"; echo "zfs=$ZFS_SUITE kernel=$KERNEL_SUITE"; } | sha256sum | cut -c1-16)
dir=$cache/$key
mkdir -p "$cache"
if [ ! -f "$dir/complete" ]; then
  exec 8>"$cache/$key.lock"
  if ! flock -n 8; then echo "testvm: another build of $key is running; waiting" >&2; flock 8; fi
fi
if [ -f "$dir/complete" ]; then
  echo "testvm: cached image $dir (zfs $ZFS_SUITE, kernel $KERNEL_SUITE)" >&2
else
  echo "testvm: no cached image for key $key (zfs $ZFS_SUITE, kernel $KERNEL_SUITE); building (about 5 minutes)" >&2
  bash "$here/host-setup.sh" >&2
  work=$(mktemp -d "$cache/build.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  W=$work R=$work/rootfs OUT=$work/out bash "$here/build-image.sh" >&2
  echo "zfs=$ZFS_SUITE kernel=$KERNEL_SUITE" > "$work/out/suites"
  touch "$work/out/complete"
  rm -rf "$dir"; mv "$work/out" "$dir"
  # keep the four newest images (two kernels x two OpenZFS versions), drop the rest
  ls -1dt "$cache"/*/ 2>/dev/null | grep -v '/build\.' | tail -n +5 | xargs -r rm -rf
fi
echo "$dir"

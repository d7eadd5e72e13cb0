#!/bin/bash
# Make sure the OpenZFS test VM image exists in the machine-wide cache, building it on a
# miss (about 5 minutes on 2 cores), and print its directory.
# Cache key: hash of the build script and the ZFS suite, plus the ISO week, because
# Debian drops superseded kernels and exact versions cannot be pinned.
# Env: ZFS_SUITE (bookworm-backports = OpenZFS 2.3, bookworm = 2.1), ZFS_CSI_VM_CACHE.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export ZFS_SUITE=${ZFS_SUITE:-bookworm-backports}
cache=${ZFS_CSI_VM_CACHE:-/var/cache/zfs-csi-testvm}
key=$( { cat "$here/build-image.sh"; echo "$ZFS_SUITE"; } | sha256sum | cut -c1-16)-$(date +%G-W%V)
dir=$cache/$key
if [ -f "$dir/complete" ]; then
  echo "testvm: cached image $dir" >&2
else
  echo "testvm: no cached image for key $key; building (about 5 minutes)" >&2
  bash "$here/host-setup.sh" >&2
  mkdir -p "$cache"
  work=$(mktemp -d "$cache/build.XXXXXX")
  W=$work R=$work/rootfs OUT=$work/out bash "$here/build-image.sh" >&2
  rm -rf "$dir"; mv "$work/out" "$dir"; rm -rf "$work"
  touch "$dir/complete"
  # keep the two newest images, drop the rest
  ls -1dt "$cache"/*/ 2>/dev/null | tail -n +3 | xargs -r rm -rf
fi
echo "$dir"

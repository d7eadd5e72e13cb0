#!/bin/bash
# Build a bootable Debian bookworm + OpenZFS (bookworm-backports zfs-dkms) VM image
# for qemu, entirely from Debian packages. Must run as root on a Debian host with
# debootstrap, qemu-utils and e2fsprogs (>=1.43, for mkfs.ext4 -d); hack/host-setup.sh
# installs them. Normally called through hack/testvm-image.sh, which caches the result.
# The guest carries what the node service runs: blkid, mount, mkfs/resize for ext4,
# xfs and btrfs.
#
# Outputs (in $OUT): vmlinux, vmlinuz, initrd.img, root.img (raw ext4, sparse),
# manifest.txt (package versions)
set -euo pipefail

W=${W:-/tmp/zfsvm}
R=${R:-$W/rootfs}
OUT=${OUT:-$W/out}
# The Debian mirror is taken from this host's own apt configuration (deb822 or one-line form),
# so the image comes from wherever this machine already gets its packages.
host_uri() { # host_uri SUITE -> first URI whose entry lists SUITE
  { cat /etc/apt/sources.list.d/*.sources 2>/dev/null; echo; } | awk -v s="$1" '
    /^URIs:/ {u=$2} /^Suites:/ {for (i=2;i<=NF;i++) if ($i==s) {print u; exit}}'
  grep -hE "^deb[[:space:]]" /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
    sed -E 's/\[[^]]*\][[:space:]]*//' | awk -v s="$1" '$3==s {print $2; exit}' || true
}
MIRROR=${MIRROR:-$(host_uri bookworm | head -1)}
SECMIRROR=${SECMIRROR:-$(host_uri bookworm-security | head -1)}
[ -n "$MIRROR" ] && [ -n "$SECMIRROR" ] || { echo "set MIRROR and SECMIRROR: no bookworm entries in this host's apt sources" >&2; exit 2; }
ROOT_SIZE=${ROOT_SIZE:-3G}
# OpenZFS version: bookworm-backports gives 2.3.x; bookworm gives 2.1.11 (for compatibility runs)
ZFS_SUITE=${ZFS_SUITE:-bookworm-backports}
# Guest kernel: bookworm gives 6.1; bookworm-backports gives a current LTS (6.12+). They differ
# where it hurts (on 6.1 a zvol's volsize change drops a mounted filesystem's dirty pages unless
# it is frozen first), so the suite runs on both.
KERNEL_SUITE=${KERNEL_SUITE:-bookworm}
export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8

T0=$(date +%s)
ts() { date +%s.%N; }
step() { # step NAME cmd...
  local name=$1; shift; local s; s=$(ts)
  echo ">>> [$name] start"; "$@"
  printf 'TIMING %-18s %7.1f s\n' "$name" "$(awk "BEGIN{print $(ts) - $s}")" | tee -a "$W/logs/build-timings.txt"
}

umount_chroot() {
  for d in dev/pts dev sys proc; do mountpoint -q "$R/$d" && umount -l "$R/$d" || true; done
}
trap umount_chroot EXIT
mount_chroot() { for d in proc sys dev dev/pts; do mountpoint -q "$R/$d" || mount --bind "/$d" "$R/$d"; done; }
in_root() { chroot "$R" "$@"; }

mkdir -p "$W/logs" "$OUT"; : > "$W/logs/build-timings.txt"

do_debootstrap() {
  rm -rf "$R"
  debootstrap --variant=minbase --components=main,contrib \
    --include=systemd-sysv,udev,kmod,iproute2,ca-certificates,e2fsprogs,xfsprogs,btrfs-progs,util-linux,mount,procps \
    bookworm "$R" "$MIRROR" > "$W/logs/debootstrap.log" 2>&1
}

do_apt_setup() {
  cat > "$R/etc/apt/sources.list" <<EOF
deb $MIRROR bookworm main contrib
deb $MIRROR bookworm-updates main contrib
deb $SECMIRROR bookworm-security main contrib
deb $MIRROR bookworm-backports main contrib
EOF
  printf '#!/bin/sh\nexit 101\n' > "$R/usr/sbin/policy-rc.d"; chmod +x "$R/usr/sbin/policy-rc.d"
  # small initramfs: only what is needed to mount an ext4 root on virtio-blk
  mkdir -p "$R/etc/initramfs-tools/conf.d" "$R/usr/share/initramfs-tools/modules.d"
  printf 'MODULES=list\nCOMPRESS=zstd\n' > "$R/etc/initramfs-tools/conf.d/zfsvm.conf"
  printf 'virtio_pci\nvirtio_blk\next4\ncrc32c_generic\n' > "$R/usr/share/initramfs-tools/modules.d/zfsvm"
  mount_chroot
  in_root apt-get update -q > "$W/logs/apt-update.log" 2>&1
}

do_kernel() {
  in_root apt-get install -y -q --no-install-recommends \
    "linux-image-amd64/$KERNEL_SUITE" "linux-headers-amd64/$KERNEL_SUITE" zstd \
    > "$W/logs/kernel.log" 2>&1
}

do_zfs() {
  # zfs-dkms' postinst builds zfs.ko for every installed kernel that has headers
  in_root apt-get install -y -q --no-install-recommends \
    "zfs-dkms/$ZFS_SUITE" "zfsutils-linux/$ZFS_SUITE" > "$W/logs/zfs.log" 2>&1
  KVER=$(ls "$R/lib/modules" | sort -V | tail -1)
  if ! in_root modinfo -k "$KVER" -F version zfs >/dev/null 2>&1; then
    in_root dkms autoinstall -k "$KVER" >> "$W/logs/zfs.log" 2>&1
  fi
  echo "zfs.ko for $KVER: $(in_root modinfo -k "$KVER" -F version zfs)"
}

do_configure() {
  echo zfsvm > "$R/etc/hostname"
  printf '127.0.0.1 localhost\n127.0.1.1 zfsvm\n' > "$R/etc/hosts"
  cat > "$R/etc/fstab" <<'EOF'
/dev/vda   /           ext4  rw,noatime,errors=remount-ro  0 0
share      /mnt/share  9p    trans=virtio,version=9p2000.L,msize=1048576,cache=none,nofail,x-systemd.device-timeout=5s  0 0
EOF
  mkdir -p "$R/mnt/share"
  # load zfs early via systemd-modules-load instead of zfs-load-module.service, which
  # Requires=systemd-udev-settle.service (costs ~4 s of boot under TCG); udevd still runs
  printf '9pnet_virtio\n9p\nzfs\n' > "$R/etc/modules-load.d/zfsvm.conf"
  passwd -R "$R" -d root >/dev/null
  # interactive fallback: root autologin on the serial console
  mkdir -p "$R/etc/systemd/system/serial-getty@ttyS0.service.d"
  cat > "$R/etc/systemd/system/serial-getty@ttyS0.service.d/autologin.conf" <<'EOF'
[Service]
ExecStart=
ExecStart=-/sbin/agetty --autologin root --keep-baud 115200,57600,38400,9600 %I $TERM
EOF
  # host-driven runner: if the share holds run.sh, run it, store output+rc, power off
  cat > "$R/usr/local/sbin/zfsvm-runner" <<'EOF'
#!/bin/bash
S=/mnt/share
[ -f $S/run.sh ] || { echo "zfsvm-runner: no $S/run.sh, staying up"; exit 0; }
mkdir -p $S/out
echo "runner-start uptime=$(cut -d' ' -f1 /proc/uptime)" > $S/out/ready
( cd $S && timeout "${ZFSVM_TIMEOUT:-3000}" bash ./run.sh ) > $S/out/run.log 2>&1
echo $? > $S/out/exit_code
systemd-analyze > $S/out/systemd-analyze.txt 2>&1; systemd-analyze blame >> $S/out/systemd-analyze.txt 2>&1
sync
if grep -q zfsvm.nopoweroff /proc/cmdline; then exit 0; fi
# root disk is a throw-away snapshot and the share is cache=none, so an immediate
# power-off is safe and saves a few seconds; fall back to a clean shutdown otherwise
if grep -q zfsvm.fastoff /proc/cmdline; then systemctl poweroff -ff; fi
systemctl poweroff --no-block
EOF
  chmod +x "$R/usr/local/sbin/zfsvm-runner"
  cat > "$R/etc/systemd/system/zfsvm-runner.service" <<'EOF'
[Unit]
Description=zfsvm host-driven test runner
RequiresMountsFor=/mnt/share
After=systemd-udevd.service systemd-udev-trigger.service systemd-modules-load.service local-fs.target
Wants=systemd-udevd.service
[Service]
Type=oneshot
ExecStart=/usr/local/sbin/zfsvm-runner
StandardOutput=journal+console
StandardError=journal+console
[Install]
WantedBy=multi-user.target
EOF
  ln -sf /etc/systemd/system/zfsvm-runner.service "$R/etc/systemd/system/multi-user.target.wants/zfsvm-runner.service"
  # ZFS: keep ARC small in a small VM; nothing to import at boot (pools are per-test)
  echo 'options zfs zfs_arc_max=536870912' > "$R/etc/modprobe.d/zfs-vm.conf"
  # drop timers/services that only cost boot time in a throw-away VM
  for u in apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer \
           fstrim.timer e2scrub_reap.service zfs-import-cache.service zfs-import-scan.service \
           zfs-share.service systemd-pstore.service getty@tty1.service zfs-load-module.service; do
    in_root systemctl mask "$u" >/dev/null 2>&1 || true
  done
  in_root update-initramfs -u -k all > "$W/logs/initramfs.log" 2>&1
  in_root dpkg-query -W -f '${Package} ${Version}\n' > "$OUT/manifest.txt"
  in_root apt-get clean
  rm -f "$R/usr/sbin/policy-rc.d"
  rm -rf "$R"/var/lib/apt/lists/* "$R"/tmp/* "$R"/var/log/*.log
}

do_image() {
  umount_chroot
  KVER=$(ls "$R/lib/modules" | sort -V | tail -1)
  cp "$R/boot/vmlinuz-$KVER" "$OUT/vmlinuz"; cp "$R/boot/initrd.img-$KVER" "$OUT/initrd.img"
  echo "$KVER" > "$OUT/kernel-version"
  # uncompressed ELF vmlinux for qemu's PVH boot (skips slow in-guest XZ decompression)
  python3 - "$OUT/vmlinuz" "$OUT/vmlinux" <<'PY'
import lzma, shutil, sys
d = open(sys.argv[1], "rb").read(); i = d.find(b"\xfd7zXZ\x00")
try:
    out = lzma.LZMADecompressor().decompress(d[i:]) if i >= 0 else b""
except lzma.LZMAError:
    out = b""
if out[:4] == b"\x7fELF":
    open(sys.argv[2], "wb").write(out)
else:  # not XZ-compressed (the backports kernel): boot the bzImage as it is
    shutil.copy(sys.argv[1], sys.argv[2])
PY
  rm -f "$OUT/root.img"
  mkfs.ext4 -q -F -L zfsvm-root -d "$R" "$OUT/root.img" "$ROOT_SIZE"
}

STEPS=${STEPS:-debootstrap apt_setup kernel zfs configure image}
for s in $STEPS; do step "$s" "do_$s"; done
printf 'TIMING %-18s %7d s\n' total $(( $(date +%s) - T0 )) | tee -a "$W/logs/build-timings.txt"
ls -la "$OUT"

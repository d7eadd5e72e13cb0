//! Mounts, by system call (no `mount` binary, so the container needs no mount helpers), the
//! mount table as `/proc/self/mountinfo` tells it, freezing a mounted filesystem, and what
//! holds a dataset or a zvol in use.
//!
//! Every call here can block in the kernel (an unmount or a `statvfs` on a suspended pool
//! blocks for good), so the services run them through `run`, off the async workers and with a
//! deadline: a stuck volume must not stall Probe or the other volumes.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// How long one mount-table read, mount, unmount, freeze or `statvfs` may take before the RPC
/// gives up on it (the blocked thread stays behind; the RPC answers DEADLINE_EXCEEDED).
pub const DEADLINE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("mounting {source_desc} on {target}: {errno}")]
    Mount { source_desc: String, target: String, errno: nix::Error },
    #[error("unmounting {target}: {errno}")]
    Unmount { target: String, errno: nix::Error },
    #[error("reading /proc/self/mountinfo: {0}")]
    MountInfo(std::io::Error),
    #[error("{what}: {errno}")]
    Io { what: String, errno: nix::Error },
    #[error("{what} did not finish within {after:?} (the kernel is blocked on it: is the pool suspended?)")]
    TimedOut { what: String, after: Duration },
}

/// Runs `f` (mount system calls, mount-table reads, `statvfs`) on the blocking pool, giving up
/// after `DEADLINE`.
pub async fn run<T: Send + 'static>(
    what: impl Into<String>,
    f: impl FnOnce() -> Result<T, MountError> + Send + 'static,
) -> Result<T, MountError> {
    let what = what.into();
    match tokio::time::timeout(DEADLINE, tokio::task::spawn_blocking(f)).await {
        Ok(Ok(result)) => result,
        Ok(Err(panicked)) => Err(MountError::Io { what: format!("{what}: {panicked}"), errno: nix::Error::EIO }),
        Err(_) => Err(MountError::TimedOut { what, after: DEADLINE }),
    }
}

/// `path` with the symlinks in its existing part resolved, as mountinfo shows mount points
/// (the kubelet directory is a symlink on some hosts); the part that does not exist yet is
/// kept as given.
pub fn resolve(path: &Path) -> PathBuf {
    let mut existing = path.to_path_buf();
    let mut missing = Vec::new();
    loop {
        if let Ok(real) = std::fs::canonicalize(&existing) {
            return missing.iter().rev().fold(real, |p, name| p.join(name));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                missing.push(name.to_owned());
                existing = parent.to_path_buf();
            }
            _ => return path.to_path_buf(),
        }
    }
}

/// One line of `/proc/self/mountinfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    /// The device's major:minor.
    pub device: String,
    /// The path inside the mounted filesystem that is mounted here (`/` unless a bind mount of
    /// a subdirectory or a file).
    pub root: String,
    pub mount_point: PathBuf,
    pub options: Vec<String>,
    pub fs_type: String,
    /// The device or dataset name given to mount(2).
    pub source: String,
}

impl MountEntry {
    pub fn is_read_only(&self) -> bool {
        self.options.iter().any(|o| o == "ro")
    }
}

/// Mountinfo escapes space, tab, newline and backslash as octal (`\040`).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b)) {
            let value = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(value);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let fields: Vec<&str> = before.split(' ').collect();
            let tail: Vec<&str> = after.split(' ').collect();
            if fields.len() < 6 || tail.len() < 2 {
                return None;
            }
            Some(MountEntry {
                device: fields[2].to_string(),
                root: unescape(fields[3]),
                mount_point: PathBuf::from(unescape(fields[4])),
                options: fields[5].split(',').map(str::to_string).collect(),
                fs_type: tail[0].to_string(),
                source: unescape(tail[1]),
            })
        })
        .collect()
}

pub fn mount_table() -> Result<Vec<MountEntry>, MountError> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").map_err(MountError::MountInfo)?;
    Ok(parse_mountinfo(&text))
}

/// The mount tables this process can see: its own and, when it differs (a container with
/// hostPID), the host's, through PID 1.
fn all_mount_tables() -> Result<Vec<MountEntry>, MountError> {
    let mut table = mount_table()?;
    let own = std::fs::read_link("/proc/self/ns/mnt").ok();
    let host = std::fs::read_link("/proc/1/ns/mnt").ok();
    if host.is_some() && host != own {
        if let Ok(text) = std::fs::read_to_string("/proc/1/mountinfo") {
            table.extend(parse_mountinfo(&text));
        }
    }
    Ok(table)
}

/// The kernel's name of a block device (`zd0` for `/dev/zd0`), which is also what a bind
/// mount of its device node shows as its root in mountinfo, and its directory in sysfs.
pub fn device_name(device: &Path) -> String {
    device.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default()
}

/// Whether `entry` mounts `device` (or one of its partitions) or bind-mounts its device node
/// (a raw block publish: the root of a devtmpfs bind is `/zd0`).
pub fn mounts_device(entry: &MountEntry, device: &Path) -> bool {
    let name = device_name(device);
    let partition = |s: &str| s.strip_prefix(&name).is_some_and(|rest| rest.starts_with('p') && rest[1..].chars().all(|c| c.is_ascii_digit()));
    let source = entry.source.strip_prefix("/dev/").unwrap_or("");
    let bound = entry.root.rsplit('/').next().unwrap_or("");
    source == name || partition(source) || (entry.root != "/" && (bound == name || partition(bound)))
}

/// What holds a dataset or a zvol's device in use, as this node can see it: mounts (in this
/// mount namespace and the host's), kernel holders of the device (device-mapper, md), and, when
/// `processes` is set, processes that have the device open. Empty when nothing is seen.
pub fn users(dataset: &str, device: Option<&Path>, processes: bool) -> Result<Vec<String>, MountError> {
    let mut users = Vec::new();
    for entry in all_mount_tables()? {
        let here = entry.mount_point.display();
        let found = match device {
            None => entry.fs_type == "zfs" && entry.source == dataset,
            Some(device) => mounts_device(&entry, device),
        };
        if found && !users.iter().any(|u: &String| u.ends_with(&format!("at {here}"))) {
            users.push(format!("mounted at {here}"));
        }
    }
    let Some(device) = device else { return Ok(users) };
    let name = device_name(device);
    if let Ok(holders) = std::fs::read_dir(format!("/sys/class/block/{name}/holders")) {
        users.extend(holders.flatten().map(|h| format!("held by the kernel device {}", h.file_name().to_string_lossy())));
    }
    if processes {
        users.extend(processes_with_open(device));
    }
    Ok(users)
}

/// Processes with `device` open (a VM's qemu, `dd`), found through `/proc/*/fd`.
fn processes_with_open(device: &Path) -> Vec<String> {
    let Ok(procs) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut found = Vec::new();
    for entry in procs.flatten() {
        let pid = entry.file_name().to_string_lossy().to_string();
        if !pid.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else { continue };
        if fds.flatten().any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target == device)) {
            let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            found.push(format!("open by process {pid} ({})", comm.trim()));
        }
    }
    found
}

/// The topmost mount at `path`, if any.
pub fn mount_at(path: &Path) -> Result<Option<MountEntry>, MountError> {
    Ok(mount_table()?.into_iter().rfind(|m| m.mount_point == path))
}

/// Mount flags that are flags to mount(2); anything else goes to the filesystem as data.
fn split_options(options: &[String], read_only: bool) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for option in options.iter().flat_map(|o| o.split(',')).filter(|o| !o.is_empty()) {
        match option {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" | "defaults" => {}
            "noatime" => flags |= MsFlags::MS_NOATIME,
            "nodiratime" => flags |= MsFlags::MS_NODIRATIME,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            "strictatime" => flags |= MsFlags::MS_STRICTATIME,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "sync" => flags |= MsFlags::MS_SYNCHRONOUS,
            "dirsync" => flags |= MsFlags::MS_DIRSYNC,
            other => data.push(other.to_string()),
        }
    }
    if read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    (flags, data.join(","))
}

/// Whether an existing mount gives what a request asks for: read-only or not, and each flag
/// that is a mount(2) flag (noatime, nodev, …). Filesystem data options (`discard`) are not in
/// the per-mount options and are not compared.
pub fn satisfies(entry: &MountEntry, options: &[String], read_only: bool) -> bool {
    let (flags, _) = split_options(options, read_only);
    let has = |o: &str| entry.options.iter().any(|x| x == o);
    let wanted = [
        (MsFlags::MS_NOATIME, "noatime"),
        (MsFlags::MS_NODIRATIME, "nodiratime"),
        (MsFlags::MS_NODEV, "nodev"),
        (MsFlags::MS_NOSUID, "nosuid"),
        (MsFlags::MS_NOEXEC, "noexec"),
    ];
    entry.is_read_only() == flags.contains(MsFlags::MS_RDONLY) && wanted.iter().all(|(f, o)| !flags.contains(*f) || has(o))
}

/// Makes the bind mount at `target` read-only: the second step of a read-only bind, for a bind
/// that a crash left read-write.
pub fn remount_bind_read_only(target: &Path) -> Result<(), MountError> {
    let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    mount(None::<&str>, target, None::<&str>, flags, None::<&str>).map_err(|errno| MountError::Mount {
        source_desc: "(read-only remount)".into(),
        target: target.display().to_string(),
        errno,
    })
}

/// Mounts a filesystem (`fs_type` "zfs" with a dataset name as `source`, or ext4/xfs/btrfs
/// with a device).
pub fn mount_filesystem(source: &str, target: &Path, fs_type: &str, options: &[String], read_only: bool) -> Result<(), MountError> {
    let (flags, data) = split_options(options, read_only);
    let data = (!data.is_empty()).then_some(data.as_str());
    mount(Some(source), target, Some(fs_type), flags, data).map_err(|errno| MountError::Mount {
        source_desc: format!("{source} ({fs_type})"),
        target: target.display().to_string(),
        errno,
    })
}

/// Bind-mounts `source` (a directory, or a device node onto a file) on `target`; read-only
/// takes a second, remounting call, as the kernel ignores MS_RDONLY on the first.
pub fn bind(source: &Path, target: &Path, options: &[String], read_only: bool) -> Result<(), MountError> {
    let err = |errno| MountError::Mount {
        source_desc: source.display().to_string(),
        target: target.display().to_string(),
        errno,
    };
    mount(Some(source), target, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(err)?;
    let (flags, _) = split_options(options, read_only);
    if !flags.is_empty() {
        let remount = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags;
        if let Err(errno) = mount(None::<&str>, target, None::<&str>, remount, None::<&str>) {
            let _ = umount2(target, MntFlags::empty());
            return Err(err(errno));
        }
    }
    Ok(())
}

/// How long an unmount that the kernel calls busy is retried. The VM suite saw a raw block
/// target (a device node bind-mounted on a file) refused with EBUSY right after its writer had
/// closed it; a moment later it unmounts. A real user (a pod's process) still gets EBUSY,
/// after this long, and the kubelet retries.
const UNMOUNT_BUSY_WINDOW: std::time::Duration = std::time::Duration::from_secs(2);

/// Unmounts everything stacked at `target`; nothing mounted is success. Never lazily
/// (MNT_DETACH): a filesystem still in use must stay where its user sees it.
pub fn unmount_all(target: &Path) -> Result<(), MountError> {
    let deadline = std::time::Instant::now() + UNMOUNT_BUSY_WINDOW;
    while mount_at(target)?.is_some() {
        match umount2(target, MntFlags::empty()) {
            Ok(()) => {}
            Err(nix::errno::Errno::EBUSY) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Err(errno) => return Err(MountError::Unmount { target: target.display().to_string(), errno }),
        }
    }
    Ok(())
}

nix::ioctl_readwrite!(fifreeze, b'X', 119, libc_int);
nix::ioctl_readwrite!(fithaw, b'X', 120, libc_int);
#[allow(non_camel_case_types)]
type libc_int = nix::libc::c_int;

/// A filesystem frozen with FIFREEZE: writes wait, and everything written before the freeze
/// is on the device. Dropping it thaws the filesystem, on every path (an error, a timeout, a
/// cancelled RPC: a filesystem left frozen hangs its workload), after opening `device` once so
/// that a pending media-change event of a resized zvol is consumed while nothing is dirty.
pub struct FrozenFilesystem {
    dir: std::fs::File,
    mount_point: PathBuf,
    device: PathBuf,
}

impl FrozenFilesystem {
    /// Freezes the filesystem mounted at `mount_point` from `device` (blocking: it writes out
    /// the dirty data first).
    pub fn freeze(mount_point: &Path, device: &Path) -> Result<Self, MountError> {
        let what = || format!("freezing the filesystem at {}", mount_point.display());
        let dir = std::fs::File::open(mount_point).map_err(|e| MountError::Io {
            what: what(),
            errno: nix::Error::from_raw(e.raw_os_error().unwrap_or(nix::libc::EIO)),
        })?;
        let mut unused: libc_int = 0;
        // SAFETY: FIFREEZE takes a pointer to an int that it does not use; `dir` is open.
        unsafe { fifreeze(dir.as_raw_fd(), &mut unused) }.map_err(|errno| MountError::Io { what: what(), errno })?;
        tracing::debug!(mount_point = %mount_point.display(), "frozen");
        Ok(Self { dir, mount_point: mount_point.to_path_buf(), device: device.to_path_buf() })
    }
}

/// Makes what a workload wrote to a zvol, buffered and not yet synced, reach the zvol before
/// ZFS acts on it (a snapshot, a size change): the filesystem mounted from `device` is frozen
/// (the guard thaws it), or, with none mounted (raw block), the device's page cache is
/// written out with fsync. Blocking.
pub fn quiesce_zvol(device: &Path) -> Result<Option<FrozenFilesystem>, MountError> {
    let device_str = device.to_string_lossy();
    let mounted = mount_table()?
        .into_iter()
        .find(|m| m.source == device_str && m.root == "/" && m.fs_type != "devtmpfs");
    if let Some(mounted) = mounted {
        return FrozenFilesystem::freeze(&mounted.mount_point, device).map(Some);
    }
    let io = |e: std::io::Error| MountError::Io {
        what: format!("writing out the buffered writes of {}", device.display()),
        errno: nix::Error::from_raw(e.raw_os_error().unwrap_or(nix::libc::EIO)),
    };
    std::fs::File::open(device).and_then(|f| f.sync_all()).map_err(io)?;
    Ok(None)
}

/// Opens and closes `device`: the first open after a zvol's size change is where the kernel
/// handles its media-change event (and, on 6.1, drops a mounted filesystem's dirty pages).
pub fn touch_device(device: &Path) {
    if let Err(e) = std::fs::File::open(device) {
        tracing::warn!(device = %device.display(), "cannot open the device: {e}");
    }
}

impl Drop for FrozenFilesystem {
    fn drop(&mut self) {
        touch_device(&self.device);
        let mut unused: libc_int = 0;
        // SAFETY: as in freeze.
        match unsafe { fithaw(self.dir.as_raw_fd(), &mut unused) } {
            Ok(_) => tracing::debug!(mount_point = %self.mount_point.display(), "thawed"),
            Err(errno) => tracing::error!(mount_point = %self.mount_point.display(), "cannot thaw the filesystem: {errno}"),
        }
    }
}

/// Thaws every filesystem on a zvol mounted under `root` that is frozen: a driver killed
/// between a freeze and its thaw leaves it frozen, and its workload hangs until thawed.
/// Returns the mount points it thawed.
pub fn thaw_frozen_under(root: &Path) -> Result<Vec<PathBuf>, MountError> {
    let mut thawed = Vec::new();
    for entry in mount_table()? {
        let ours = entry.source.starts_with("/dev/zd") && entry.root == "/" && entry.mount_point.starts_with(root);
        if !ours || !matches!(entry.fs_type.as_str(), "ext4" | "ext3" | "ext2" | "xfs" | "btrfs") {
            continue;
        }
        let Ok(dir) = std::fs::File::open(&entry.mount_point) else { continue };
        let mut unused: libc_int = 0;
        // SAFETY: as in freeze. EINVAL means it was not frozen.
        if unsafe { fithaw(dir.as_raw_fd(), &mut unused) }.is_ok() {
            thawed.push(entry.mount_point.clone());
        }
    }
    Ok(thawed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda rw
36 22 0:44 / /var/lib/kubelet/staging/pv\\040one rw,noatime shared:20 - zfs vms/pvc-1 rw,xattr,noacl
37 22 0:44 / /var/lib/kubelet/pods/a/volumes/pv ro,relatime shared:20 - zfs vms/pvc-1 rw,xattr,noacl
38 22 0:5 /zd0 /var/lib/kubelet/pods/b/volumeDevices/disk rw,nosuid master:2 - devtmpfs udev rw,size=1024k
";

    #[test]
    fn mountinfo_parses_escapes_and_fields() {
        let table = parse_mountinfo(SAMPLE);
        assert_eq!(table.len(), 4);
        assert_eq!(table[1].mount_point, PathBuf::from("/var/lib/kubelet/staging/pv one"));
        assert_eq!(table[1].fs_type, "zfs");
        assert_eq!(table[1].source, "vms/pvc-1");
        assert!(table[2].is_read_only());
        assert_eq!(table[3].root, "/zd0");
        assert_eq!(table[3].device, "0:5");
    }

    #[test]
    fn a_device_is_found_mounted_partitioned_or_bound() {
        let table = parse_mountinfo(SAMPLE);
        let zd0 = Path::new("/dev/zd0");
        assert!(mounts_device(&table[3], zd0), "a raw block publish binds the device node");
        assert!(!mounts_device(&table[1], zd0));
        let fs = parse_mountinfo("40 22 230:0 / /stage rw - ext4 /dev/zd0 rw\n41 22 230:1 / /p rw - ext4 /dev/zd0p1 rw\n42 22 230:16 / /q rw - ext4 /dev/zd16 rw\n");
        assert!(mounts_device(&fs[0], zd0));
        assert!(mounts_device(&fs[1], zd0), "a partition of the zvol");
        assert!(!mounts_device(&fs[2], zd0), "zd16 is another device");
    }

    #[test]
    fn resolving_keeps_the_missing_tail_and_follows_links() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, dir.path().join("link")).unwrap();
        let resolved = resolve(&dir.path().join("link/not/yet"));
        assert_eq!(resolved, std::fs::canonicalize(&real).unwrap().join("not/yet"));
    }

    #[test]
    fn mount_options_split_into_flags_and_data() {
        let (flags, data) = split_options(&["noatime,discard".into(), "nodev".into()], true);
        assert!(flags.contains(MsFlags::MS_NOATIME | MsFlags::MS_NODEV | MsFlags::MS_RDONLY));
        assert_eq!(data, "discard");
    }
}

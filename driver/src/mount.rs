//! Mounts, by system call (no `mount` binary, so the container needs no mount helpers), and
//! the mount table as `/proc/self/mountinfo` tells it.

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("mounting {source_desc} on {target}: {errno}")]
    Mount { source_desc: String, target: String, errno: nix::Error },
    #[error("unmounting {target}: {errno}")]
    Unmount { target: String, errno: nix::Error },
    #[error("reading /proc/self/mountinfo: {0}")]
    MountInfo(std::io::Error),
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

/// Unmounts everything stacked at `target`; nothing mounted is success.
pub fn unmount_all(target: &Path) -> Result<(), MountError> {
    while mount_at(target)?.is_some() {
        umount2(target, MntFlags::empty()).map_err(|errno| MountError::Unmount {
            target: target.display().to_string(),
            errno,
        })?;
    }
    Ok(())
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
    fn mount_options_split_into_flags_and_data() {
        let (flags, data) = split_options(&["noatime,discard".into(), "nodev".into()], true);
        assert!(flags.contains(MsFlags::MS_NOATIME | MsFlags::MS_NODEV | MsFlags::MS_RDONLY));
        assert_eq!(data, "discard");
    }
}

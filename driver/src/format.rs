//! What is on a zvol's device, making a filesystem on an empty one, growing one online, and
//! the device's read-only flag. The tools run in the driver's own container (blkid, mkfs.*,
//! resize2fs, xfs_growfs, btrfs, blockdev).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::params::FsType;
use crate::process::{ProcessError, ProcessRunner};

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error("`{command}` failed: {stderr}")]
    Failed { command: String, stderr: String },
    #[error("{device} did not appear within {after:?}")]
    NoDevice { device: String, after: Duration },
}

/// What `blkid` finds on a device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceContent {
    Empty,
    Filesystem(String),
    PartitionTable(String),
}

pub struct Formatter {
    runner: ProcessRunner,
}

impl Formatter {
    pub fn new(timeout: Duration) -> Self {
        Self { runner: ProcessRunner::new(Vec::new(), timeout) }
    }

    async fn run(&self, program: &str, args: &[&str]) -> Result<String, FormatError> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let done = self.runner.run(program, &args).await?;
        if done.success() {
            Ok(done.stdout)
        } else {
            Err(FormatError::Failed { command: done.command, stderr: done.stderr })
        }
    }

    /// Probes the device itself (`-p`: no cache), so a filesystem written a moment ago by
    /// someone else is seen.
    pub async fn probe(&self, device: &Path) -> Result<DeviceContent, FormatError> {
        let device = device.to_string_lossy().to_string();
        let args: Vec<String> = ["-p", "-o", "export", device.as_str()].iter().map(|s| s.to_string()).collect();
        let done = self.runner.run("blkid", &args).await?;
        match done.exit_code {
            // blkid exits 2 when it finds nothing it recognises.
            Some(2) if done.stdout.trim().is_empty() => Ok(DeviceContent::Empty),
            Some(0) => Ok(parse_blkid_export(&done.stdout)),
            _ => Err(FormatError::Failed { command: done.command, stderr: done.stderr }),
        }
    }

    /// Makes `fs_type` on an empty device. The callers probe first; the mkfs tools' own
    /// refusal to overwrite (no -f/-F) is a second guard.
    pub async fn make_filesystem(&self, device: &Path, fs_type: FsType) -> Result<(), FormatError> {
        let device = device.to_string_lossy();
        match fs_type {
            // lazy init keeps mkfs fast on large zvols; nodiscard: a new zvol is already empty.
            FsType::Ext4 => self.run("mkfs.ext4", &["-q", "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard", &device]).await,
            FsType::Xfs => self.run("mkfs.xfs", &["-q", "-K", &device]).await,
            FsType::Btrfs => self.run("mkfs.btrfs", &["-q", "--nodiscard", &device]).await,
            FsType::Zfs => unreachable_zfs(),
        }
        .map(drop)
    }

    /// Makes the whole device read-only, or read-write again (`blockdev --setro`/`--setrw`,
    /// the BLKROSET ioctl): a flag in the kernel, not in ZFS, gone at reboot.
    pub async fn set_read_only(&self, device: &Path, read_only: bool) -> Result<(), FormatError> {
        let flag = if read_only { "--setro" } else { "--setrw" };
        self.run("blockdev", &[flag, &device.to_string_lossy()]).await.map(drop)
    }

    /// Grows the filesystem mounted at `mount_point` from `device` to the device's size,
    /// online. Already at full size is success.
    pub async fn grow(&self, fs_type: &str, device: &Path, mount_point: &Path) -> Result<(), FormatError> {
        let device = device.to_string_lossy();
        let mount_point = mount_point.to_string_lossy();
        match fs_type {
            "ext4" | "ext3" | "ext2" => self.run("resize2fs", &[&device]).await,
            "xfs" => self.run("xfs_growfs", &[&mount_point]).await,
            "btrfs" => self.run("btrfs", &["filesystem", "resize", "max", &mount_point]).await,
            other => Err(FormatError::Failed {
                command: format!("grow {other}"),
                stderr: format!("growing {other} is not supported"),
            }),
        }
        .map(drop)
    }
}

fn unreachable_zfs() -> Result<String, FormatError> {
    Err(FormatError::Failed {
        command: "mkfs.zfs".into(),
        stderr: "a ZFS filesystem is a dataset, not something made on a zvol".into(),
    })
}

fn parse_blkid_export(stdout: &str) -> DeviceContent {
    let value = |key: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')))
            .map(str::to_string)
    };
    if let Some(pt) = value("PTTYPE") {
        return DeviceContent::PartitionTable(pt);
    }
    match value("TYPE") {
        Some(t) => DeviceContent::Filesystem(t),
        None => DeviceContent::Empty,
    }
}

/// `/dev/zdN` of the zvol `dataset` as it is now: `None` when there is no link (a dataset, a
/// zvol udev has not linked yet or any more).
pub fn zvol_device_now(dataset: &str) -> Option<PathBuf> {
    std::fs::canonicalize(format!("/dev/zvol/{dataset}")).ok()
}

/// `/dev/zvol/<dataset>`, resolved to the kernel's `/dev/zdN` once udev has made the link.
/// The link appears some time after `zfs create -V` or `zfs clone`; poll with a deadline.
pub async fn wait_for_zvol(dataset: &str, deadline: Duration) -> Result<PathBuf, FormatError> {
    let link = PathBuf::from(format!("/dev/zvol/{dataset}"));
    let start = tokio::time::Instant::now();
    loop {
        if let Ok(device) = std::fs::canonicalize(&link) {
            return Ok(device);
        }
        if start.elapsed() >= deadline {
            return Err(FormatError::NoDevice { device: link.display().to_string(), after: deadline });
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blkid_export_tells_filesystem_partition_table_or_nothing() {
        assert_eq!(
            parse_blkid_export("DEVNAME=/dev/zd0\nUUID=1234\nBLOCK_SIZE=4096\nTYPE=ext4\n"),
            DeviceContent::Filesystem("ext4".into())
        );
        assert_eq!(
            parse_blkid_export("DEVNAME=/dev/zd0\nPTUUID=ab\nPTTYPE=gpt\n"),
            DeviceContent::PartitionTable("gpt".into())
        );
        assert_eq!(parse_blkid_export("DEVNAME=/dev/zd0\n"), DeviceContent::Empty);
    }
}

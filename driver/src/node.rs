//! CSI Node service: stage (mount a dataset, or a zvol's filesystem, at the staging path),
//! publish (bind mounts; raw block zvols bind-mounted onto a file), stats, online expansion.
//!
//! Volumes the driver did not create (a static import such as `vms/HomeAssistant`) are served
//! exactly like its own: a device that already holds a filesystem or a partition table is never
//! formatted.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};

use crate::capability::{self, AccessType};
use crate::csi::volume_capability::access_mode::Mode;
use crate::csi::{self, node_server::Node, node_service_capability};
use crate::driver::Driver;
use crate::errors::{missing, zfs_status};
use crate::locks::LockKey;
use crate::format::{self, DeviceContent, FormatError, Formatter};
use crate::mount::{self, MountEntry, MountError};
use crate::params::{check_secret_key, FsType, SECRET_KEY};
use crate::state::{VolumeInfo, VolumeKind};
use crate::zfs::{DatasetName, KeyMaterial, Properties};

/// How long to wait for udev to create `/dev/zvol/<name>` after a zvol appears.
const ZVOL_DEVICE_DEADLINE: Duration = Duration::from_secs(30);
/// How long mkfs or a filesystem grower may take.
const FORMAT_TIMEOUT: Duration = Duration::from_secs(600);

pub struct NodeService {
    driver: Arc<Driver>,
    formatter: Formatter,
}

fn mount_status(err: MountError) -> Status {
    match err {
        MountError::TimedOut { .. } => Status::deadline_exceeded(err.to_string()),
        _ => Status::internal(err.to_string()),
    }
}

/// Mount system calls and mount-table reads, off the async workers and with a deadline
/// (`mount::run`).
async fn blocking<T: Send + 'static>(
    what: impl Into<String>,
    f: impl FnOnce() -> Result<T, MountError> + Send + 'static,
) -> Result<T, Status> {
    mount::run(what, f).await.map_err(mount_status)
}

async fn mount_at(path: &Path) -> Result<Option<MountEntry>, Status> {
    let path = path.to_path_buf();
    blocking("reading the mount table", move || mount::mount_at(&path)).await
}

async fn mount_table() -> Result<Vec<MountEntry>, Status> {
    blocking("reading the mount table", mount::mount_table).await
}

fn io_status(what: String) -> impl FnOnce(std::io::Error) -> MountError {
    move |e| MountError::Io { what, errno: nix::Error::from_raw(e.raw_os_error().unwrap_or(nix::libc::EIO)) }
}

/// `mkdir -p`, off the async workers.
async fn create_dir_all(dir: &Path) -> Result<(), Status> {
    let dir = dir.to_path_buf();
    blocking(format!("creating {}", dir.display()), move || {
        std::fs::create_dir_all(&dir).map_err(io_status(format!("creating {}", dir.display())))
    })
    .await
}

/// A repeated NodeStageVolume finds the volume staged: success when it was staged as this
/// request asks (read-only or not, the same mount flags), ALREADY_EXISTS otherwise.
fn staged_as_asked(volume: &VolumeInfo, existing: &MountEntry, mount_flags: &[String], read_only: bool) -> Result<(), Status> {
    if mount::satisfies(existing, mount_flags, read_only) {
        return Ok(());
    }
    Err(Status::already_exists(format!(
        "volume {} is staged at {} with other options ({}) than this request's (read-only: {read_only}, flags: {})",
        volume.name,
        existing.mount_point.display(),
        existing.options.join(","),
        mount_flags.join(",")
    )))
}

/// Whether this kernel shuts a mounted filesystem down when the zvol under it changes size:
/// RHEL 9-family kernels mark the block device dead on the media-change event that OpenZFS
/// raises on every volsize change (openzfs/zfs#18758), and freezing does not help there.
fn kernel_shuts_down_on_zvol_resize(release: &str) -> bool {
    release.split(['.', '-', '_']).any(|part| part == "el9")
}

fn format_status(what: &str, err: FormatError) -> Status {
    match err {
        FormatError::NoDevice { .. } => Status::unavailable(format!("{what}: {err}; retry")),
        FormatError::Process(crate::process::ProcessError::TimedOut { .. }) => {
            Status::deadline_exceeded(format!("{what}: {err}"))
        }
        _ => Status::internal(format!("{what}: {err}")),
    }
}

/// A path argument: required and absolute.
fn path_arg(field: &str, value: &str) -> Result<PathBuf, Status> {
    if value.is_empty() {
        return Err(missing(field));
    }
    let path = PathBuf::from(value);
    if !path.is_absolute() || path.components().any(|c| c == std::path::Component::ParentDir) {
        return Err(Status::invalid_argument(format!("{field} {value:?} must be an absolute path without '..'")));
    }
    Ok(path)
}

/// The path where the CO says a volume is (stats, expand): required. A path that is not
/// absolute cannot be where a volume was staged or published, so it is NOT_FOUND like any
/// other path that holds no volume (csi-sanity sends `some/path` and expects NOT_FOUND).
fn volume_path_arg(value: &str) -> Result<PathBuf, Status> {
    if value.is_empty() {
        return Err(missing("volume_path"));
    }
    let path = PathBuf::from(value);
    if !path.is_absolute() {
        return Err(Status::not_found(format!("volume path {value:?} does not exist: it is not absolute")));
    }
    Ok(path)
}

fn is_device_bind(entry: &MountEntry, device: &Path) -> bool {
    entry.root.rsplit('/').next() == Some(mount::device_name(device).as_str()) && entry.root != "/"
}

/// Whether the driver may make a filesystem on a zvol on which `blkid` finds nothing: only on
/// one it created to carry a filesystem. An imported zvol, or one created for raw block use
/// (the controller records fstype `block`), may hold data that no signature announces (an
/// encrypted disk, a database's raw device); that blkid knows nothing of it does not make it
/// empty.
///
/// A clone is never formatted either: its bytes are its source's, which may be a raw block
/// volume's data that blkid does not recognise.
fn may_format(volume: &VolumeInfo) -> bool {
    volume.managed && volume.fstype.as_deref() != Some("block") && volume.content_source.is_none()
}

/// Whether the kernel holds a block device read-only (sysfs `ro`, which `blockdev --setro`
/// sets).
fn device_read_only(device: &Path) -> bool {
    std::fs::read_to_string(format!("/sys/class/block/{}/ro", mount::device_name(device)))
        .is_ok_and(|ro| ro.trim() == "1")
}

/// The size of a block device, from sysfs (512-byte sectors).
fn device_size(device: &Path) -> Option<u64> {
    let sectors = std::fs::read_to_string(format!("/sys/class/block/{}/size", mount::device_name(device))).ok()?;
    sectors.trim().parse::<u64>().ok().map(|s| s * 512)
}

impl NodeService {
    pub fn new(driver: Arc<Driver>) -> Self {
        Self { driver, formatter: Formatter::new(FORMAT_TIMEOUT) }
    }

    /// A staging or target path: required, absolute, and below the kubelet directory once its
    /// symlinks are resolved. The resolved path is what the mount table shows, so every later
    /// comparison uses it.
    async fn kubelet_path(&self, field: &str, value: &str) -> Result<PathBuf, Status> {
        let path = path_arg(field, value)?;
        let resolved = blocking(format!("resolving {field}"), move || Ok(mount::resolve(&path))).await?;
        if !resolved.starts_with(&self.driver.kubelet_dir) {
            return Err(Status::invalid_argument(format!(
                "{field} {value:?} ({}) is not below the kubelet directory {}: the driver mounts nothing elsewhere (--kubelet-dir)",
                resolved.display(),
                self.driver.kubelet_dir.display()
            )));
        }
        Ok(resolved)
    }

    /// The volume named by `volume_id`: INVALID_ARGUMENT when malformed, NOT_FOUND when it is
    /// not one of ours to serve or does not exist.
    async fn existing_volume(&self, volume_id: &str) -> Result<VolumeInfo, Status> {
        let not_found = || Status::not_found(format!("volume {volume_id} does not exist on node {}", self.driver.node_id));
        let name = self.driver.volume_name(volume_id)?.ok_or_else(not_found)?;
        self.driver.volume(&name).await?.filter(|v| !v.deleted).ok_or_else(not_found)
    }

    /// Loads the key of the volume's encryption root when it is not loaded (after a reboot
    /// every key is unloaded): from the node-stage secret's `encryptionKey` on standard input
    /// for a root keyed from a Secret (`keylocation=prompt`), from its `keylocation` otherwise.
    /// A clone's root is its origin's, so a clone or restore loads with the origin's secret.
    /// A missing or wrong key is refused before anything is mounted, and ZFS changes nothing.
    async fn load_key_if_needed(&self, volume: &VolumeInfo, secrets: &std::collections::HashMap<String, String>) -> Result<(), Status> {
        let zfs = &self.driver.zfs;
        let what = format!("reading the encryption of volume {}", volume.name);
        let dataset = zfs
            .get_one(&volume.name, &["encryption", "encryptionroot", "keystatus"])
            .await
            .map_err(|e| zfs_status(&what, e))?;
        if matches!(dataset.get("encryption"), None | Some("off") | Some("-")) || dataset.get("keystatus") == Some("available") {
            return Ok(());
        }
        let root = dataset
            .get("encryptionroot")
            .and_then(|r| DatasetName::parse(r).ok())
            .ok_or_else(|| Status::internal(format!("volume {} is encrypted but has no encryption root", volume.name)))?;
        let location = zfs
            .get_one(&root, &["keylocation", "keyformat"])
            .await
            .map_err(|e| zfs_status(&format!("reading the key location of {root}"), e))?;
        let key = if location.get("keylocation") == Some("prompt") {
            let key = secrets.get(SECRET_KEY).ok_or_else(|| {
                Status::invalid_argument(format!(
                    "volume {} is encrypted with a key from a Secret (encryption root {root}), and the key is not                      loaded on node {}: its StorageClass must name the Secret in                      csi.storage.k8s.io/node-stage-secret-name and -namespace, with the key in {SECRET_KEY}",
                    volume.name, self.driver.node_id
                ))
            })?;
            check_secret_key(location.get("keyformat").unwrap_or("passphrase"), key)
                .map_err(|e| Status::invalid_argument(format!("node-stage secret for volume {}: {e}", volume.name)))?;
            Some(KeyMaterial::new(key.as_bytes()))
        } else {
            None
        };
        zfs.load_key(&root, key.as_ref())
            .await
            .map_err(|e| zfs_status(&format!("loading the key of {root} for volume {}", volume.name), e))?;
        tracing::info!(volume = %volume.name, root = %root, "encryption key loaded");
        Ok(())
    }

    async fn zvol_device(&self, name: &DatasetName) -> Result<PathBuf, Status> {
        format::wait_for_zvol(name.as_str(), ZVOL_DEVICE_DEADLINE)
            .await
            .map_err(|e| format_status(&format!("finding the device of zvol {name}"), e))
    }

    /// The filesystem a zvol carries: what the CO asks for, else what the controller recorded,
    /// else ext4 (Kubernetes' default fsType).
    fn zvol_fs_type(&self, volume: &VolumeInfo, requested: Option<FsType>, context: &std::collections::HashMap<String, String>) -> Result<FsType, Status> {
        let recorded = volume
            .fstype
            .as_deref()
            .or_else(|| context.get("fstype").map(String::as_str))
            .and_then(FsType::parse);
        let fs = requested.or(recorded).unwrap_or(FsType::Ext4);
        if fs == FsType::Zfs {
            return Err(Status::invalid_argument(format!(
                "{} is a zvol: it carries ext4, xfs or btrfs, not zfs",
                volume.name
            )));
        }
        Ok(fs)
    }

    /// Mounts the zvol's filesystem at `staging`, making one only on an empty device.
    async fn stage_zvol_filesystem(
        &self,
        volume: &VolumeInfo,
        fs_type: FsType,
        staging: &Path,
        mount_flags: &[String],
        read_only: bool,
    ) -> Result<(), Status> {
        let device = self.zvol_device(&volume.name).await?;
        let device_str = device.to_string_lossy().to_string();
        if let Some(existing) = mount_at(staging).await? {
            if existing.source == device_str {
                return staged_as_asked(volume, &existing, mount_flags, read_only);
            }
            return Err(Status::already_exists(format!(
                "staging path {} already holds {} ({}), not volume {}",
                staging.display(),
                existing.source,
                existing.fs_type,
                volume.name
            )));
        }
        let what = format!("staging volume {}", volume.name);
        match self.formatter.probe(&device).await.map_err(|e| format_status(&what, e))? {
            DeviceContent::Empty if read_only => {
                return Err(Status::failed_precondition(format!(
                    "volume {} holds no filesystem and is to be mounted read-only: nothing to mount",
                    volume.name
                )))
            }
            DeviceContent::Empty if !may_format(volume) => {
                return Err(Status::failed_precondition(format!(
                    "volume {} holds no filesystem that blkid recognises, but the driver did not create it \
                     to carry one, so it may hold data all the same: it is never formatted; make the \
                     filesystem yourself or use it as a raw block volume",
                    volume.name
                )))
            }
            DeviceContent::Empty => {
                tracing::info!(volume = %volume.name, device = %device_str, fs = fs_type.as_str(), "making a filesystem on the empty device");
                self.formatter
                    .make_filesystem(&device, fs_type)
                    .await
                    .map_err(|e| format_status(&what, e))?;
            }
            DeviceContent::Filesystem(found) if found == fs_type.as_str() => {}
            DeviceContent::Filesystem(found) => {
                return Err(Status::failed_precondition(format!(
                    "volume {} holds a {found} filesystem, not {}: it is never reformatted; ask for fsType {found}",
                    volume.name,
                    fs_type.as_str()
                )))
            }
            DeviceContent::PartitionTable(table) => {
                return Err(Status::failed_precondition(format!(
                    "volume {} holds a {table} partition table: it is never formatted; use it as a raw block volume",
                    volume.name
                )))
            }
        }
        let mut options = mount_flags.to_vec();
        if fs_type == FsType::Xfs {
            // A clone carries its origin's XFS UUID; without nouuid the kernel refuses to
            // mount both at once.
            options.push("nouuid".into());
        }
        create_dir_all(staging).await?;
        let staging = staging.to_path_buf();
        blocking(format!("mounting {device_str} at {}", staging.display()), move || {
            mount::mount_filesystem(&device_str, &staging, fs_type.as_str(), &options, read_only)
        })
        .await
    }

    async fn stage_dataset(&self, volume: &VolumeInfo, staging: &Path, mount_flags: &[String], read_only: bool) -> Result<(), Status> {
        if let Some(existing) = mount_at(staging).await? {
            if existing.fs_type == "zfs" && existing.source == volume.name.as_str() {
                return staged_as_asked(volume, &existing, mount_flags, read_only);
            }
            return Err(Status::already_exists(format!(
                "staging path {} already holds {} ({}), not volume {}",
                staging.display(),
                existing.source,
                existing.fs_type,
                volume.name
            )));
        }
        create_dir_all(staging).await?;
        let (dataset, staging, flags) = (volume.name.to_string(), staging.to_path_buf(), mount_flags.to_vec());
        blocking(format!("mounting {dataset} at {}", staging.display()), move || {
            mount::mount_filesystem(&dataset, &staging, "zfs", &flags, read_only)
        })
        .await
    }

    /// Refuses a second publish of a volume when the access mode or the volume says it has one
    /// user: always for SINGLE_NODE_SINGLE_WRITER (a ReadWriteOncePod PVC), whatever `shared`
    /// says; for SINGLE_NODE_WRITER unless the volume is `shared` (OpenEBS's parameter).
    /// SINGLE_NODE_MULTI_WRITER, which kubelet sends for ReadWriteOnce PVCs because the driver
    /// offers it, lets the pods of one node share the volume, as ReadWriteOnce means.
    async fn check_not_published_elsewhere(&self, volume: &VolumeInfo, mode: Mode, is_other_publish: impl Fn(&MountEntry) -> bool) -> Result<(), Status> {
        let exclusive = match mode {
            Mode::SingleNodeSingleWriter => true,
            Mode::SingleNodeMultiWriter => false,
            _ => !volume.shared,
        };
        if !exclusive {
            return Ok(());
        }
        let table = mount_table().await?;
        if let Some(other) = table.iter().find(|m| is_other_publish(m)) {
            let hint = if mode == Mode::SingleNodeSingleWriter {
                "it is ReadWriteOncePod (single-node single-writer): one pod at a time"
            } else {
                "set `shared: yes` on its StorageClass to let several pods use it"
            };
            return Err(Status::failed_precondition(format!(
                "volume {} is already published at {}; {hint}",
                volume.name,
                other.mount_point.display()
            )));
        }
        Ok(())
    }

    async fn publish_block(&self, volume: &VolumeInfo, target: &Path, mode: Mode, read_only: bool) -> Result<(), Status> {
        if volume.kind != VolumeKind::Zvol {
            return Err(Status::invalid_argument(format!(
                "volume {} is a ZFS filesystem; only zvols can be published as raw block",
                volume.name
            )));
        }
        let device = self.zvol_device(&volume.name).await?;
        let existing = mount_at(target).await?;
        if let Some(existing) = &existing {
            let completes_read_only = read_only && !existing.is_read_only();
            if is_device_bind(existing, &device) && !completes_read_only {
                if existing.is_read_only() != read_only {
                    return Err(Status::already_exists(format!(
                        "volume {} is published read-only at {}; not publishing it read-write there",
                        volume.name,
                        target.display()
                    )));
                }
                return Ok(());
            }
        }
        if let Some(existing) = existing.filter(|e| !is_device_bind(e, &device)) {
            return Err(Status::already_exists(format!(
                "target {} is already used by {}; not mounting volume {} over it",
                target.display(),
                existing.source,
                volume.name
            )));
        }
        self.check_not_published_elsewhere(volume, mode, |m| is_device_bind(m, &device) && m.mount_point != target).await?;
        // A read-only bind mount does not stop writes through a device node (the kernel checks
        // a mount's read-only flag when files are written, not devices), so read-only raw block
        // is the device's own flag, and that is one state for all the device's publishes.
        let table = mount_table().await?;
        if let Some(other) = table
            .iter()
            .find(|m| is_device_bind(m, &device) && m.mount_point != target && m.is_read_only() != read_only)
        {
            return Err(Status::failed_precondition(format!(
                "volume {} is published {} at {}; a raw block device is read-only for all its users or for none",
                volume.name,
                if other.is_read_only() { "read-only" } else { "read-write" },
                other.mount_point.display()
            )));
        }
        if device_read_only(&device) != read_only {
            self.formatter
                .set_read_only(&device, read_only)
                .await
                .map_err(|e| format_status(&format!("publishing volume {}", volume.name), e))?;
        }
        let target = target.to_path_buf();
        let already_bound = table.iter().any(|m| m.mount_point == target && is_device_bind(m, &device));
        blocking(format!("publishing {} at {}", volume.name, target.display()), move || {
            if already_bound {
                // A read-write bind left by a crash before its read-only remount.
                return mount::remount_bind_read_only(&target);
            }
            if let Some(dir) = target.parent() {
                std::fs::create_dir_all(dir).map_err(io_status(format!("creating {}", dir.display())))?;
            }
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&target)
                .map_err(io_status(format!("creating the block target file {}", target.display())))?;
            mount::bind(&device, &target, &[], read_only)
        })
        .await
    }

    /// After an unpublish: a zvol's device that no target publishes any more loses the
    /// read-only flag a read-only raw block publish gave it.
    async fn release_device(&self, name: &DatasetName) -> Result<(), Status> {
        // Only zvols have the link; a dataset's name finds nothing here.
        let Some(device) = format::zvol_device_now(name.as_str()) else {
            return Ok(());
        };
        if !device_read_only(&device) {
            return Ok(());
        }
        let table = mount_table().await?;
        if table.iter().any(|m| is_device_bind(m, &device)) {
            return Ok(());
        }
        self.formatter
            .set_read_only(&device, false)
            .await
            .map_err(|e| format_status(&format!("unpublishing volume {name}"), e))
    }

    async fn publish_mount(&self, volume: &VolumeInfo, staging: &Path, target: &Path, mode: Mode, mount_flags: &[String], read_only: bool) -> Result<(), Status> {
        let staged = mount_at(staging).await?.ok_or_else(|| {
            Status::failed_precondition(format!(
                "volume {} is not staged at {}: call NodeStageVolume first",
                volume.name,
                staging.display()
            ))
        })?;
        let same_volume = |m: &MountEntry| m.source == staged.source && m.root == staged.root && m.fs_type == staged.fs_type;
        if let Some(existing) = mount_at(target).await? {
            if same_volume(&existing) && mount::satisfies(&existing, mount_flags, read_only) {
                return Ok(());
            }
            if same_volume(&existing) && read_only && mount::satisfies(&existing, mount_flags, false) {
                // A read-write bind left by a crash between the bind and its read-only
                // remount: finish it, rather than hand a writable volume to a read-only pod.
                let target = target.to_path_buf();
                return blocking(format!("remounting {} read-only", target.display()), move || {
                    mount::remount_bind_read_only(&target)
                })
                .await;
            }
            if same_volume(&existing) {
                return Err(Status::already_exists(format!(
                    "volume {} is published at {} with other options ({}); not publishing it there again as asked",
                    volume.name,
                    target.display(),
                    existing.options.join(",")
                )));
            }
            return Err(Status::already_exists(format!(
                "target {} is already used by {}; not mounting volume {} over it",
                target.display(),
                existing.source,
                volume.name
            )));
        }
        self.check_not_published_elsewhere(volume, mode, |m| same_volume(m) && m.mount_point != staging && m.mount_point != target).await?;
        create_dir_all(target).await?;
        let (staging, target, flags) = (staging.to_path_buf(), target.to_path_buf(), mount_flags.to_vec());
        blocking(format!("publishing {} at {}", volume.name, target.display()), move || {
            mount::bind(&staging, &target, &flags, read_only)
        })
        .await
    }

    /// Grows what `expand_volume` was asked to grow; returns the capacity now.
    async fn grow_volume(&self, volume: &VolumeInfo, required: u64, limit: u64) -> Result<u64, Status> {
        let zfs = &self.driver.zfs;
        let what = format!("expanding volume {}", volume.name);
        let props = zfs
            .get_one(&volume.name, &["volblocksize", "refquota", "quota", "refreservation", "reservation"])
            .await
            .map_err(|e| zfs_status(&what, e))?;
        let granule = match volume.kind {
            VolumeKind::Zvol => props.get_u64("volblocksize").unwrap_or(1).max(1),
            VolumeKind::Filesystem => 1,
        };
        let target = required
            .div_ceil(granule)
            .checked_mul(granule)
            .ok_or_else(|| Status::out_of_range(format!("{what}: {required} bytes is too large")))?;
        if limit > 0 && target > limit {
            return Err(Status::out_of_range(format!(
                "{what}: {required} bytes rounded to the block size {granule} is {target}, above limit_bytes {limit}"
            )));
        }
        if volume.kind == VolumeKind::Filesystem && volume.capacity == 0 {
            // A dataset without a quota (an imported one) already has all the parent's space;
            // setting a quota now would limit it, not grow it.
            return Ok(target);
        }
        if target <= volume.capacity {
            return Ok(volume.capacity);
        }
        let parent = volume.name.parent().unwrap_or_else(|| volume.name.clone());
        let available = zfs
            .get_one(&parent, &["available"])
            .await
            .map_err(|e| zfs_status(&what, e))?
            .get_u64("available")
            .unwrap_or(0);
        let growth = target - volume.capacity;
        if growth > available {
            return Err(Status::out_of_range(format!(
                "{what}: growing by {growth} bytes needs more than the {available} bytes {parent} has free"
            )));
        }
        let mut set: Properties = Vec::new();
        let positive = |p: &str| props.get_u64(p).unwrap_or(0) > 0;
        match volume.kind {
            VolumeKind::Zvol => {
                set.push(("volsize".into(), target.to_string()));
                if positive("refreservation") {
                    set.push(("refreservation".into(), "auto".into()));
                }
            }
            VolumeKind::Filesystem => {
                let quota_only = !positive("refquota") && positive("quota");
                set.push((if quota_only { "quota" } else { "refquota" }.into(), target.to_string()));
                if positive("refreservation") {
                    set.push(("refreservation".into(), target.to_string()));
                }
                if positive("reservation") {
                    set.push(("reservation".into(), target.to_string()));
                }
            }
        }
        let set_size = || async {
            zfs.set(&volume.name, &set).await.map_err(|e| match e {
                crate::zfs::ZfsError::NoSpace(_) => Status::out_of_range(format!("{what}: {e}")),
                e => zfs_status(&what, e),
            })
        };
        match volume.kind {
            VolumeKind::Filesystem => set_size().await?,
            VolumeKind::Zvol => self.resize_zvol_safely(volume, target, set_size).await?,
        }
        tracing::info!(volume = %volume.name, from = volume.capacity, to = target, "expanded");
        Ok(target)
    }

    /// Changes a zvol's size without losing what a workload wrote and has not synced.
    ///
    /// OpenZFS flags a zvol as changed on every volsize change, and the next open of the device
    /// reports a media change; kernel 6.1 then invalidates the mounted filesystem's inodes and
    /// drops their dirty pages (`VFS: busy inodes on changed media`): files written without
    /// fsync come back empty. So the filesystem is frozen first (its dirty data written out,
    /// writers held), the size is changed, the device is opened while still frozen so that the
    /// media change is handled when nothing is dirty, and only then thawed. The guard thaws on
    /// every path, a cancelled RPC included. A raw block zvol has its page cache written out
    /// (fsync) instead. On RHEL 9-family kernels the media change shuts the filesystem down
    /// whatever is done first (openzfs/zfs#18758): there, a mounted filesystem is not resized.
    async fn resize_zvol_safely<F: std::future::Future<Output = Result<(), Status>>>(
        &self,
        volume: &VolumeInfo,
        size: u64,
        set_size: impl FnOnce() -> F,
    ) -> Result<(), Status> {
        let device = self.zvol_device(&volume.name).await?;
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        if kernel_shuts_down_on_zvol_resize(release.trim()) {
            let device_str = device.to_string_lossy().to_string();
            if let Some(m) = mount_table().await?.iter().find(|m| m.source == device_str && m.root == "/") {
                return Err(Status::failed_precondition(format!(
                    "volume {}: this kernel ({}) shuts a mounted filesystem down when its zvol changes size \
                     (openzfs/zfs#18758), and it is mounted at {}; nothing was changed. Stop the workload, \
                     set the size with `zfs set volsize=` while it is unmounted, or use a dataset StorageClass \
                     (fstype zfs), which grows safely",
                    volume.name,
                    release.trim(),
                    m.mount_point.display()
                )));
            }
        }
        let quiesce_device = device.clone();
        let frozen = blocking(format!("quiescing {} before its size changes", volume.name), move || {
            mount::quiesce_zvol(&quiesce_device)
        })
        .await?;
        let result = set_size().await;
        if result.is_ok() {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while device_size(&device).unwrap_or(0) < size && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        // Dropping the guard opens the device (the media change is handled now, while frozen)
        // and thaws; with no filesystem mounted, the device is opened all the same.
        blocking(format!("thawing {}", volume.name), move || {
            match frozen {
                Some(frozen) => drop(frozen),
                None => mount::touch_device(&device),
            }
            Ok(())
        })
        .await?;
        result
    }

    /// After a zvol grew: wait until the kernel device shows the new size, then grow the
    /// filesystem on it, if it carries one that is mounted.
    async fn grow_zvol_filesystem(&self, volume: &VolumeInfo, size: u64, volume_path: &Path) -> Result<(), Status> {
        let device = self.zvol_device(&volume.name).await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while device_size(&device).unwrap_or(0) < size && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let device_str = device.to_string_lossy().to_string();
        let table = mount_table().await?;
        let mounted = table
            .iter()
            .filter(|m| m.source == device_str && m.root == "/")
            .min_by_key(|m| m.mount_point != volume_path);
        let Some(mounted) = mounted else {
            // Raw block, or not mounted here: the consumer sees the new size of the device.
            return Ok(());
        };
        self.formatter
            .grow(&mounted.fs_type, &device, &mounted.mount_point)
            .await
            .map_err(|e| format_status(&format!("growing the filesystem of volume {}", volume.name), e))
    }
}

async fn statvfs_usage(path: &Path) -> Result<Vec<csi::VolumeUsage>, Status> {
    let path = path.to_path_buf();
    let what = format!("statvfs {}", path.display());
    let stat = blocking(what.clone(), move || {
        nix::sys::statvfs::statvfs(&path).map_err(|errno| MountError::Io { what, errno })
    })
    .await?;
    let fragment = stat.fragment_size() as u64;
    let blocks = stat.blocks() as u64;
    let files = stat.files() as u64;
    use csi::volume_usage::Unit;
    let mut usage = vec![csi::VolumeUsage {
        total: (blocks * fragment) as i64,
        available: (stat.blocks_available() as u64 * fragment) as i64,
        used: (blocks.saturating_sub(stat.blocks_free() as u64) * fragment) as i64,
        unit: Unit::Bytes as i32,
    }];
    // btrfs allocates inodes dynamically and reports a count of 0: say nothing rather than
    // "0 of 0 inodes free", which kubelet would read as an exhausted volume.
    if files > 0 {
        usage.push(csi::VolumeUsage {
            total: files as i64,
            available: stat.files_available() as i64,
            used: files.saturating_sub(stat.files_free() as u64) as i64,
            unit: Unit::Inodes as i32,
        });
    }
    Ok(usage)
}

#[tonic::async_trait]
impl Node for NodeService {
    async fn node_stage_volume(
        &self,
        request: Request<csi::NodeStageVolumeRequest>,
    ) -> Result<Response<csi::NodeStageVolumeResponse>, Status> {
        let req = request.into_inner();
        if req.volume_id.is_empty() {
            return Err(missing("volume_id"));
        }
        let staging = self.kubelet_path("staging_target_path", &req.staging_target_path).await?;
        let cap = req.volume_capability.as_ref().ok_or_else(|| missing("volume_capability"))?;
        let access = capability::parse(cap)?;
        let read_only = capability::is_read_only(cap);
        let _lock = self.driver.lock(LockKey::Volume(req.volume_id.clone()))?;
        let volume = self.existing_volume(&req.volume_id).await?;
        // Before anything is mounted: a locked zvol has no device, a locked dataset no data.
        self.load_key_if_needed(&volume, &req.secrets).await?;
        match (access, volume.kind) {
            (AccessType::Block, VolumeKind::Filesystem) => {
                return Err(Status::invalid_argument(format!(
                    "volume {} is a ZFS filesystem; only zvols can be used as raw block",
                    volume.name
                )))
            }
            // A raw block volume needs nothing at the staging path: publish binds the device.
            (AccessType::Block, VolumeKind::Zvol) => {
                self.zvol_device(&volume.name).await?;
            }
            (AccessType::Mount { fs_type, mount_flags }, VolumeKind::Filesystem) => {
                if fs_type.is_some_and(|f| f != FsType::Zfs) {
                    return Err(Status::invalid_argument(format!(
                        "volume {} is a ZFS filesystem; it cannot be mounted as {}",
                        volume.name,
                        fs_type.map(FsType::as_str).unwrap_or_default()
                    )));
                }
                self.stage_dataset(&volume, &staging, &mount_flags, read_only).await?;
            }
            (AccessType::Mount { fs_type, mount_flags }, VolumeKind::Zvol) => {
                let fs = self.zvol_fs_type(&volume, fs_type, &req.volume_context)?;
                self.stage_zvol_filesystem(&volume, fs, &staging, &mount_flags, read_only).await?;
            }
        }
        tracing::info!(volume = %volume.name, staging = %staging.display(), "staged");
        Ok(Response::new(csi::NodeStageVolumeResponse {}))
    }

    async fn node_unstage_volume(
        &self,
        request: Request<csi::NodeUnstageVolumeRequest>,
    ) -> Result<Response<csi::NodeUnstageVolumeResponse>, Status> {
        let req = request.into_inner();
        self.driver.volume_name(&req.volume_id)?;
        let staging = self.kubelet_path("staging_target_path", &req.staging_target_path).await?;
        let _lock = self.driver.lock(LockKey::Volume(req.volume_id.clone()))?;
        let path = staging.clone();
        blocking(format!("unmounting {}", staging.display()), move || mount::unmount_all(&path)).await?;
        tracing::info!(volume = %req.volume_id, staging = %staging.display(), "unstaged");
        Ok(Response::new(csi::NodeUnstageVolumeResponse {}))
    }

    async fn node_publish_volume(
        &self,
        request: Request<csi::NodePublishVolumeRequest>,
    ) -> Result<Response<csi::NodePublishVolumeResponse>, Status> {
        let req = request.into_inner();
        if req.volume_id.is_empty() {
            return Err(missing("volume_id"));
        }
        let target = self.kubelet_path("target_path", &req.target_path).await?;
        let cap = req.volume_capability.as_ref().ok_or_else(|| missing("volume_capability"))?;
        let staging = self.kubelet_path("staging_target_path", &req.staging_target_path).await?;
        let access = capability::parse(cap)?;
        let mode = cap.access_mode.as_ref().map(|m| m.mode()).unwrap_or(Mode::Unknown);
        let read_only = req.readonly || capability::is_read_only(cap);
        let _lock = self.driver.lock(LockKey::Volume(req.volume_id.clone()))?;
        let volume = self.existing_volume(&req.volume_id).await?;
        match access {
            AccessType::Block => self.publish_block(&volume, &target, mode, read_only).await?,
            AccessType::Mount { mount_flags, .. } => {
                self.publish_mount(&volume, &staging, &target, mode, &mount_flags, read_only).await?
            }
        }
        tracing::info!(volume = %volume.name, target = %target.display(), read_only, "published");
        Ok(Response::new(csi::NodePublishVolumeResponse {}))
    }

    async fn node_unpublish_volume(
        &self,
        request: Request<csi::NodeUnpublishVolumeRequest>,
    ) -> Result<Response<csi::NodeUnpublishVolumeResponse>, Status> {
        let req = request.into_inner();
        let name = self.driver.volume_name(&req.volume_id)?;
        let target = self.kubelet_path("target_path", &req.target_path).await?;
        let _lock = self.driver.lock(LockKey::Volume(req.volume_id.clone()))?;
        let path = target.clone();
        blocking(format!("unmounting {}", target.display()), move || mount::unmount_all(&path)).await?;
        if let Some(name) = &name {
            self.release_device(name).await?;
        }
        // Removes only an empty directory or the block target file: if something is still
        // inside, it is not ours to delete.
        let path = target.clone();
        blocking(format!("removing target {}", target.display()), move || {
            let removed = match std::fs::symlink_metadata(&path) {
                Ok(meta) if meta.is_dir() => std::fs::remove_dir(&path),
                Ok(_) => std::fs::remove_file(&path),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e),
            };
            removed.map_err(io_status(format!("removing target {}", path.display())))
        })
        .await?;
        tracing::info!(volume = %req.volume_id, target = %target.display(), "unpublished");
        Ok(Response::new(csi::NodeUnpublishVolumeResponse {}))
    }

    async fn node_get_volume_stats(
        &self,
        request: Request<csi::NodeGetVolumeStatsRequest>,
    ) -> Result<Response<csi::NodeGetVolumeStatsResponse>, Status> {
        let req = request.into_inner();
        let name = self.driver.volume_name(&req.volume_id)?;
        let path = volume_path_arg(&req.volume_path)?;
        let name = name.ok_or_else(|| Status::not_found(format!("volume {} does not exist", req.volume_id)))?;
        let (path, meta) = blocking(format!("looking at {}", path.display()), move || {
            let path = mount::resolve(&path);
            Ok(std::fs::metadata(&path).ok().map(|meta| (path, meta)))
        })
        .await?
        .ok_or_else(|| Status::not_found(format!("volume path {} does not exist", req.volume_path)))?;
        let mounted = mount_at(&path).await?;
        let volume = self.driver.volume(&name).await?;
        let mut condition = self.driver.volume_condition(&name).await;
        let volume = match volume {
            Some(v) => v,
            None if mounted.is_some() => {
                condition = csi::VolumeCondition {
                    abnormal: true,
                    message: format!("dataset {name} is gone but still mounted at {}", path.display()),
                };
                return Ok(Response::new(csi::NodeGetVolumeStatsResponse {
                    usage: if meta.is_dir() { statvfs_usage(&path).await? } else { Vec::new() },
                    volume_condition: Some(condition),
                }));
            }
            None => return Err(Status::not_found(format!("volume {} does not exist", req.volume_id))),
        };
        if mounted.is_none() && !condition.abnormal {
            condition = csi::VolumeCondition {
                abnormal: true,
                message: format!("volume {name} is not mounted at {}", path.display()),
            };
        }
        let usage = if meta.is_dir() {
            statvfs_usage(&path).await?
        } else {
            // A raw block volume: the device's size is all there is to report.
            let device = self.zvol_device(&volume.name).await?;
            let total = device_size(&device).unwrap_or(volume.capacity);
            vec![csi::VolumeUsage {
                total: total as i64,
                available: 0,
                used: 0,
                unit: csi::volume_usage::Unit::Bytes as i32,
            }]
        };
        Ok(Response::new(csi::NodeGetVolumeStatsResponse { usage, volume_condition: Some(condition) }))
    }

    async fn node_expand_volume(
        &self,
        request: Request<csi::NodeExpandVolumeRequest>,
    ) -> Result<Response<csi::NodeExpandVolumeResponse>, Status> {
        let req = request.into_inner();
        if req.volume_id.is_empty() {
            return Err(missing("volume_id"));
        }
        let volume_path = volume_path_arg(&req.volume_path)?;
        let block = req
            .volume_capability
            .as_ref()
            .map(capability::parse)
            .transpose()?
            .is_some_and(|a| a == AccessType::Block);
        let _lock = self.driver.lock(LockKey::Volume(req.volume_id.clone()))?;
        // The volume and its path before the capacity range: csi-sanity asks to expand an
        // unknown volume with no range at all and expects NOT_FOUND.
        let volume = self.existing_volume(&req.volume_id).await?;
        let volume_path = blocking(format!("looking at {}", volume_path.display()), move || {
            let path = mount::resolve(&volume_path);
            Ok(path.exists().then_some(path))
        })
        .await?
        .ok_or_else(|| Status::not_found(format!("volume path {} does not exist", req.volume_path)))?;
        let range = req.capacity_range.as_ref().ok_or_else(|| missing("capacity_range"))?;
        if range.required_bytes < 0 || range.limit_bytes < 0 {
            return Err(Status::invalid_argument("capacity_range: bytes must not be negative"));
        }
        if range.limit_bytes > 0 && range.limit_bytes < range.required_bytes {
            return Err(Status::invalid_argument("capacity_range: limit_bytes is below required_bytes"));
        }
        let capacity = self
            .grow_volume(&volume, range.required_bytes as u64, range.limit_bytes as u64)
            .await?;
        if volume.kind == VolumeKind::Zvol && !block {
            self.grow_zvol_filesystem(&volume, capacity, &volume_path).await?;
        }
        Ok(Response::new(csi::NodeExpandVolumeResponse { capacity_bytes: capacity as i64 }))
    }

    async fn node_get_capabilities(
        &self,
        _request: Request<csi::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<csi::NodeGetCapabilitiesResponse>, Status> {
        use node_service_capability::rpc::Type;
        let capabilities = [
            Type::StageUnstageVolume,
            Type::GetVolumeStats,
            Type::ExpandVolume,
            Type::VolumeCondition,
            Type::SingleNodeMultiWriter,
        ]
        .into_iter()
        .map(|t| csi::NodeServiceCapability {
            r#type: Some(node_service_capability::Type::Rpc(node_service_capability::Rpc { r#type: t as i32 })),
        })
        .collect();
        Ok(Response::new(csi::NodeGetCapabilitiesResponse { capabilities }))
    }

    async fn node_get_info(
        &self,
        _request: Request<csi::NodeGetInfoRequest>,
    ) -> Result<Response<csi::NodeGetInfoResponse>, Status> {
        Ok(Response::new(csi::NodeGetInfoResponse {
            node_id: self.driver.node_id.clone(),
            max_volumes_per_node: 0,
            accessible_topology: Some(self.driver.topology()),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zvol(managed: bool, fstype: Option<&str>) -> VolumeInfo {
        VolumeInfo {
            name: DatasetName::parse("vms/v").unwrap(),
            kind: VolumeKind::Zvol,
            managed,
            csi_name: None,
            capacity: 1 << 30,
            content_source: None,
            parameters: None,
            mutable_parameters: None,
            key_from_secret: false,
            fstype: fstype.map(str::to_string),
            shared: false,
            deleted: false,
            origin: None,
        }
    }

    #[test]
    fn only_zvols_created_for_a_filesystem_are_ever_formatted() {
        assert!(may_format(&zvol(true, Some("ext4"))));
        assert!(!may_format(&zvol(true, Some("block"))));
        assert!(!may_format(&zvol(false, None)));
        assert!(!may_format(&zvol(false, Some("ext4"))));
        let clone = VolumeInfo { content_source: Some("snapshot:vms/raw@s".into()), ..zvol(true, Some("ext4")) };
        assert!(!may_format(&clone), "a clone's bytes are its source's");
    }

    #[test]
    fn rhel9_kernels_are_known_to_shut_a_resized_zvols_filesystem_down() {
        assert!(kernel_shuts_down_on_zvol_resize("5.14.0-427.13.1.el9_4.x86_64"));
        assert!(kernel_shuts_down_on_zvol_resize("5.14.0-503.el9.x86_64"));
        assert!(!kernel_shuts_down_on_zvol_resize("6.1.0-40-amd64"));
        assert!(!kernel_shuts_down_on_zvol_resize("6.12.48+deb12-amd64"));
        assert!(!kernel_shuts_down_on_zvol_resize("6.8.0-el90-custom"));
    }

    #[test]
    fn a_volume_path_is_required_and_a_relative_one_holds_no_volume() {
        assert_eq!(volume_path_arg("").unwrap_err().code(), tonic::Code::InvalidArgument);
        assert_eq!(volume_path_arg("some/path").unwrap_err().code(), tonic::Code::NotFound);
        assert_eq!(volume_path_arg("/var/lib/kubelet/x").unwrap(), PathBuf::from("/var/lib/kubelet/x"));
    }
}

//! What the node and data-safety tests share: volumes of each kind, a scratch directory that
//! cleans up after a failed test, CSI node request builders, and test data written and read
//! the way a workload does.

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tonic::{Response, Status};

use crate::*;

pub const POOLS: [&str; 3] = ["ai", "vms", "tank"];
/// Bytes of test data written through each volume.
pub const DATA_LEN: usize = 1 << 20;
pub const DATA_FILE: &str = "data.bin";

// ---- volumes, paths and cleanup ---------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Dataset,
    Ext4,
    Xfs,
    Btrfs,
    Block,
}

impl Kind {
    pub fn capability(self) -> csi::VolumeCapability {
        match self {
            Kind::Dataset => mount_capability(""),
            Kind::Ext4 => mount_capability("ext4"),
            Kind::Xfs => mount_capability("xfs"),
            Kind::Btrfs => mount_capability("btrfs"),
            Kind::Block => block_capability(),
        }
    }

    pub fn size(self) -> i64 {
        match self {
            // mkfs.xfs (xfsprogs 5.19 and later) refuses filesystems smaller than 300 MB.
            Kind::Xfs => 320 * MIB,
            // mkfs.btrfs wants room for its mixed metadata and data chunks.
            Kind::Btrfs => 256 * MIB,
            _ => 128 * MIB,
        }
    }

    /// The filesystem type the mount table shows at the target.
    pub fn mounted_type(self) -> &'static str {
        match self {
            Kind::Dataset => "zfs",
            Kind::Ext4 => "ext4",
            Kind::Xfs => "xfs",
            Kind::Btrfs => "btrfs",
            // The zvol's device node, bind-mounted from /dev.
            Kind::Block => "devtmpfs",
        }
    }
}

/// A volume as a test uses it: what CreateVolume answered (or what an operator would write
/// in a static PV) and how it is consumed.
#[derive(Clone, Debug)]
pub struct Vol {
    pub id: String,
    pub kind: Kind,
    pub capacity: i64,
    pub context: HashMap<String, String>,
}

impl Vol {
    pub fn with_kind(&self, kind: Kind) -> Vol {
        Vol { kind, ..self.clone() }
    }
}

/// A temporary directory for staging and target paths, and the datasets a test made. A
/// passing test has cleaned up through the driver already; when a test fails half-way, drop
/// unmounts what is still mounted here and destroys the datasets, so that nothing leaks into
/// the next test (and removing the directory never walks into a mounted volume).
pub struct Scratch {
    pub datasets: Mutex<Vec<String>>,
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Self {
        Self { datasets: Mutex::new(Vec::new()), dir: tempfile::tempdir().expect("tempdir") }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn track(&self, dataset: &str) {
        self.datasets.lock().unwrap().push(dataset.to_string());
    }

    #[track_caller]
    pub fn assert_nothing_mounted(&self) {
        let left = mounts_under(self.dir.path());
        assert!(left.is_empty(), "still mounted: {left:?}");
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        use nix::mount::{umount2, MntFlags};
        // Newest first, so that a mount stacked on another goes before it.
        for mount_point in mounts_under(self.dir.path()).into_iter().rev() {
            if umount2(&mount_point, MntFlags::empty()).is_err() {
                let _ = umount2(&mount_point, MntFlags::MNT_DETACH);
            }
        }
        let datasets = self.datasets.lock().map(|d| d.clone()).unwrap_or_default();
        for dataset in datasets.iter().rev() {
            // A device just unmounted can be busy for a moment.
            for _ in 0..20 {
                if !dataset_exists(dataset) || run("zfs", &["destroy", "-R", dataset]).is_ok() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(250));
            }
            if dataset_exists(dataset) {
                eprintln!("cleanup: could not destroy {dataset}");
            }
        }
    }
}

pub async fn driver() -> DriverProcess {
    DriverProcess::start("ai,vms,tank").await
}

pub async fn create_volume_with(
    d: &DriverProcess,
    scratch: &Scratch,
    pool: &str,
    kind: Kind,
    extra: &[(&str, &str)],
    source: Option<csi::VolumeContentSource>,
) -> Vol {
    let mut req = create_request(&unique("pvc-node"), pool, kind.capability(), kind.size());
    req.parameters.extend(params(extra));
    req.volume_content_source = source;
    let volume = d.create(req).await;
    scratch.track(&volume.volume_id);
    Vol { id: volume.volume_id, kind, capacity: volume.capacity_bytes, context: volume.volume_context }
}

pub async fn create_volume(d: &DriverProcess, scratch: &Scratch, pool: &str, kind: Kind) -> Vol {
    create_volume_with(d, scratch, pool, kind, &[], None).await
}

/// A zvol made with plain `zfs create -V`, as an operator's existing VM disk is.
pub fn create_foreign_zvol(scratch: &Scratch, prefix: &str, size: &str) -> (Vol, PathBuf) {
    let id = format!("vms/{}", unique(prefix));
    zfs(&["create", "-V", size, &id]);
    scratch.track(&id);
    let device = wait_for_zvol_link(&id);
    let capacity = zfs_get(&id, "volsize").0.parse().expect("volsize");
    (Vol { id, kind: Kind::Block, capacity, context: HashMap::new() }, device)
}

/// A zvol made by hand (not by the driver) holding ext4 with `pattern(id)` written into it, as
/// an operator's existing disk is: its volume, device and the data.
pub fn create_foreign_ext4_zvol(scratch: &Scratch, prefix: &str) -> (Vol, PathBuf, Vec<u8>) {
    let (raw, device) = create_foreign_zvol(scratch, prefix, "128M");
    run("mkfs.ext4", &["-q", &device.display().to_string()]).expect("mkfs.ext4");
    let data = pattern(&raw.id);
    let prep = scratch.path("prep");
    std::fs::create_dir(&prep).unwrap();
    nix::mount::mount(Some(&device), &prep, Some("ext4"), nix::mount::MsFlags::empty(), None::<&str>).expect("mount");
    write_data(Kind::Ext4, &prep, &data);
    umount_retrying(&prep);
    (raw, device, data)
}

// ---- request builders -------------------------------------------------------------------

pub fn stage_request(vol: &Vol, staging: &Path) -> csi::NodeStageVolumeRequest {
    csi::NodeStageVolumeRequest {
        volume_id: vol.id.clone(),
        staging_target_path: staging.display().to_string(),
        volume_capability: Some(vol.kind.capability()),
        volume_context: vol.context.clone(),
        ..Default::default()
    }
}

pub fn publish_request(vol: &Vol, staging: &Path, target: &Path, readonly: bool) -> csi::NodePublishVolumeRequest {
    csi::NodePublishVolumeRequest {
        volume_id: vol.id.clone(),
        staging_target_path: staging.display().to_string(),
        target_path: target.display().to_string(),
        volume_capability: Some(vol.kind.capability()),
        readonly,
        volume_context: vol.context.clone(),
        ..Default::default()
    }
}

pub fn unpublish_request(id: &str, target: &Path) -> csi::NodeUnpublishVolumeRequest {
    csi::NodeUnpublishVolumeRequest { volume_id: id.into(), target_path: target.display().to_string() }
}

pub fn unstage_request(id: &str, staging: &Path) -> csi::NodeUnstageVolumeRequest {
    csi::NodeUnstageVolumeRequest { volume_id: id.into(), staging_target_path: staging.display().to_string() }
}

pub fn stats_request(id: &str, path: &str) -> csi::NodeGetVolumeStatsRequest {
    csi::NodeGetVolumeStatsRequest { volume_id: id.into(), volume_path: path.into(), ..Default::default() }
}

/// NodeExpandVolume as kubelet sends it: the published path, the staging path, the capability.
pub fn expand_request(vol: &Vol, staging: &Path, target: &Path, bytes: i64) -> csi::NodeExpandVolumeRequest {
    csi::NodeExpandVolumeRequest {
        volume_id: vol.id.clone(),
        volume_path: target.display().to_string(),
        staging_target_path: staging.display().to_string(),
        capacity_range: capacity(bytes, 0),
        volume_capability: Some(vol.kind.capability()),
        ..Default::default()
    }
}

pub async fn stage(d: &DriverProcess, vol: &Vol, staging: &Path) -> Result<Response<csi::NodeStageVolumeResponse>, Status> {
    d.node().node_stage_volume(stage_request(vol, staging)).await
}

pub async fn publish(
    d: &DriverProcess,
    vol: &Vol,
    staging: &Path,
    target: &Path,
) -> Result<Response<csi::NodePublishVolumeResponse>, Status> {
    d.node().node_publish_volume(publish_request(vol, staging, target, false)).await
}

pub async fn unpublish(d: &DriverProcess, id: &str, target: &Path) {
    d.node()
        .node_unpublish_volume(unpublish_request(id, target))
        .await
        .unwrap_or_else(|e| panic!("NodeUnpublishVolume {id} at {}: {e}", target.display()));
}

pub async fn unstage(d: &DriverProcess, id: &str, staging: &Path) {
    d.node()
        .node_unstage_volume(unstage_request(id, staging))
        .await
        .unwrap_or_else(|e| panic!("NodeUnstageVolume {id} at {}: {e}", staging.display()));
}

pub async fn stats(d: &DriverProcess, id: &str, path: &Path) -> csi::NodeGetVolumeStatsResponse {
    d.node()
        .node_get_volume_stats(stats_request(id, &path.display().to_string()))
        .await
        .unwrap_or_else(|e| panic!("NodeGetVolumeStats {id} at {}: {e}", path.display()))
        .into_inner()
}

pub async fn expand(
    d: &DriverProcess,
    vol: &Vol,
    staging: &Path,
    target: &Path,
    bytes: i64,
) -> Result<Response<csi::NodeExpandVolumeResponse>, Status> {
    d.node().node_expand_volume(expand_request(vol, staging, target, bytes)).await
}

/// Stages `vol` at `<scratch>/<label>-staging` and publishes it at `<scratch>/<label>-target`.
pub async fn stage_and_publish(d: &DriverProcess, scratch: &Scratch, vol: &Vol, label: &str) -> (PathBuf, PathBuf) {
    let staging = scratch.path(&format!("{label}-staging"));
    let target = scratch.path(&format!("{label}-target"));
    stage(d, vol, &staging).await.unwrap_or_else(|e| panic!("NodeStageVolume {}: {e}", vol.id));
    publish(d, vol, &staging, &target).await.unwrap_or_else(|e| panic!("NodePublishVolume {}: {e}", vol.id));
    (staging, target)
}

pub async fn unpublish_and_unstage(d: &DriverProcess, vol: &Vol, staging: &Path, target: &Path) {
    unpublish(d, &vol.id, target).await;
    unstage(d, &vol.id, staging).await;
}

// ---- data and what the system shows -------------------------------------------------------

/// Incompressible bytes (lz4 would shrink a repeating pattern to nothing), fixed by `seed`.
pub fn pattern(seed: &str) -> Vec<u8> {
    noise(DATA_LEN, seed)
}

/// `len` incompressible bytes fixed by `seed` (a xorshift stream seeded by its FNV hash).
pub fn noise(len: usize, seed: &str) -> Vec<u8> {
    let mut state = seed.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 32) as u8
        })
        .collect()
}

/// Writes `data` through a published path: into a file on a filesystem, or at the start of a
/// raw block device; then fsync.
pub fn write_data(kind: Kind, path: &Path, data: &[u8]) {
    let file = if kind == Kind::Block {
        let device = std::fs::OpenOptions::new().write(true).open(path).expect("open the block target");
        device.write_all_at(data, 0).expect("write to the block target");
        device
    } else {
        let file = std::fs::File::create(path.join(DATA_FILE)).expect("create a file on the volume");
        file.write_all_at(data, 0).expect("write to the volume");
        file
    };
    file.sync_all().expect("fsync");
}

pub fn read_data(kind: Kind, path: &Path, len: usize) -> Vec<u8> {
    if kind == Kind::Block {
        let device = std::fs::File::open(path).expect("open the block target");
        let mut data = vec![0; len];
        device.read_exact_at(&mut data, 0).expect("read the block target");
        data
    } else {
        std::fs::read(path.join(DATA_FILE)).expect("read the file on the volume")
    }
}

#[track_caller]
pub fn assert_data(kind: Kind, path: &Path, expected: &[u8]) {
    let found = read_data(kind, path, expected.len());
    assert!(found == expected, "the data at {} differs from what was written", path.display());
}

/// The size a consumer sees: `df` (statvfs) for a filesystem, `blockdev --getsize64` for a
/// raw block volume.
pub fn visible_size(kind: Kind, path: &Path) -> i64 {
    if kind == Kind::Block {
        let out = run("blockdev", &["--getsize64", &path.display().to_string()]).expect("blockdev --getsize64");
        out.trim().parse().expect("a size in bytes")
    } else {
        let stat = nix::sys::statvfs::statvfs(path).expect("statvfs");
        (stat.blocks() as u64 * stat.fragment_size() as u64) as i64
    }
}

/// The capacity ZFS holds for the volume: `refquota` of a dataset, `volsize` of a zvol.
pub fn zfs_capacity(vol: &Vol) -> i64 {
    let property = if vol.kind == Kind::Dataset { "refquota" } else { "volsize" };
    zfs_get(&vol.id, property).0.parse().expect("a size in bytes")
}

/// `blkid -p` of a device, as `KEY=value` lines; empty when it finds nothing it knows.
pub fn blkid(device: &Path) -> String {
    run("blkid", &["-p", "-o", "export", &device.display().to_string()]).unwrap_or_default()
}

pub fn blkid_value(device: &Path, key: &str) -> Option<String> {
    blkid(device)
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')).map(str::to_string))
}

pub fn mounts_at(path: &Path) -> Vec<zfs_csi::mount::MountEntry> {
    zfs_csi::mount::mount_table().expect("mountinfo").into_iter().filter(|m| m.mount_point == path).collect()
}

pub fn sha256(path: &Path) -> String {
    run("sha256sum", &[&path.display().to_string()]).expect("sha256sum").split(' ').next().unwrap_or_default().to_string()
}

/// Writes through a published path: a new file on a filesystem, the first bytes of a device.
pub fn try_write(kind: Kind, path: &Path) -> std::io::Result<()> {
    if kind == Kind::Block {
        let device = std::fs::OpenOptions::new().write(true).open(path)?;
        device.write_all_at(&[0xa5; 4096], 0)?;
        device.sync_all()
    } else {
        let file = std::fs::File::create(path.join("new-file"))?;
        file.write_all_at(b"x", 0)?;
        file.sync_all()
    }
}

/// How a write through a read-only publish fails: EROFS from a read-only mount; EPERM from a
/// read-only block device (the kernel's answer to writing one).
pub fn is_refused_write(kind: Kind, err: &std::io::Error) -> bool {
    use nix::errno::Errno;
    let allowed: &[Errno] = if kind == Kind::Block { &[Errno::EROFS, Errno::EPERM, Errno::EACCES] } else { &[Errno::EROFS] };
    allowed.iter().any(|e| err.raw_os_error() == Some(*e as i32))
}

pub fn device_read_only(vol: &Vol) -> bool {
    let device = wait_for_zvol_link(&vol.id);
    run("blockdev", &["--getro", &device.display().to_string()]).expect("blockdev --getro").trim() == "1"
}


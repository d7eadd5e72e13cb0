//! The driver's shared state, and the checks every service applies to the IDs it receives.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tonic::Status;

use crate::config::Config;
use crate::csi;
use crate::errors::zfs_status;
use crate::locks::{LockKey, OperationGuard, OperationLocks};
use crate::state::{VolumeInfo, VOLUME_PROPERTIES};
use crate::process::ProcessRunner;
use crate::zfs::{DatasetName, SnapshotName, Zfs};

/// The topology key of driver `driver_name`: `<driver-name>/node`, whose value is the node ID
/// (NodeGetInfo's accessible topology; `zfs-csi import` writes it into a PV's node affinity).
pub fn topology_key(driver_name: &str) -> String {
    format!("{driver_name}/node")
}

pub struct Driver {
    pub name: String,
    pub version: &'static str,
    pub node_id: String,
    /// The pools or parent datasets this node serves; every volume lies strictly below one.
    pub parents: Vec<DatasetName>,
    pub zfs: Zfs,
    /// The kubelet's root directory, symlinks resolved: staging and target paths lie below it.
    pub kubelet_dir: std::path::PathBuf,
    /// CSI snapshot names → snapshots, for CreateSnapshot's uniqueness check.
    pub snapshot_names: crate::snapshot_names::SnapshotNames,
    locks: Arc<OperationLocks>,
}

impl Driver {
    pub fn new(config: &Config) -> Self {
        let runner = ProcessRunner::new(
            config.command_prefix_words(),
            Duration::from_secs(config.command_timeout),
        );
        Self::with_zfs(config, Zfs::new(runner))
    }

    pub fn with_zfs(config: &Config, zfs: Zfs) -> Self {
        Self {
            name: config.driver_name.clone(),
            version: env!("CARGO_PKG_VERSION"),
            node_id: config.node_id.clone(),
            parents: config.parents.clone(),
            zfs,
            kubelet_dir: crate::mount::resolve(&config.kubelet_dir),
            snapshot_names: Default::default(),
            locks: Arc::new(OperationLocks::default()),
        }
    }

    pub fn topology_key(&self) -> String {
        topology_key(&self.name)
    }

    /// The one topology segment of this node: `{<driver>/node: <node id>}`.
    pub fn topology(&self) -> csi::Topology {
        csi::Topology {
            segments: HashMap::from([(self.topology_key(), self.node_id.clone())]),
        }
    }

    pub fn is_within_parents(&self, name: &DatasetName) -> bool {
        self.parents.iter().any(|p| name.is_strictly_under(p))
    }

    /// A volume ID as a dataset name. A malformed ID is INVALID_ARGUMENT; a well-formed ID
    /// outside the configured parents (a pool root, a parent itself, another pool) is `None`:
    /// no volume of ours can have it, and it never reaches a command.
    pub fn volume_name(&self, volume_id: &str) -> Result<Option<DatasetName>, Status> {
        if volume_id.is_empty() {
            return Err(Status::invalid_argument("volume_id is required"));
        }
        let name = DatasetName::parse(volume_id).map_err(|e| {
            Status::invalid_argument(format!("volume_id {volume_id:?} is not a dataset name: {e}"))
        })?;
        Ok(self.is_within_parents(&name).then_some(name))
    }

    /// A snapshot ID (`dataset@snapshot`) as a snapshot name; `None` when no snapshot of ours
    /// can have it: malformed (csi-sanity and the spec want DeleteSnapshot of such an ID to
    /// succeed and a clone from it to be NOT_FOUND) or outside the configured parents.
    /// Either way it never reaches a command.
    pub fn snapshot_name(&self, snapshot_id: &str) -> Result<Option<SnapshotName>, Status> {
        if snapshot_id.is_empty() {
            return Err(Status::invalid_argument("snapshot_id is required"));
        }
        match SnapshotName::parse(snapshot_id) {
            Ok(name) => Ok(self.is_within_parents(name.dataset()).then_some(name)),
            Err(e) => {
                tracing::debug!(snapshot = %snapshot_id, "not a snapshot name: {e}");
                Ok(None)
            }
        }
    }

    /// Holds the operation lock of `key`, or ABORTED when another RPC on it is in flight.
    pub fn lock(&self, key: LockKey) -> Result<OperationGuard, Status> {
        let what = key.to_string();
        self.locks.try_acquire(key).ok_or_else(|| {
            Status::aborted(format!("an operation on {what} is already in progress; retry later"))
        })
    }

    /// The lock of `key`, waiting up to `patience` for the RPC that holds it (the reaper
    /// waits; RPCs answer ABORTED at once). Waits only ever go from a clone to its origin, or
    /// from a snapshot to its volume, so they cannot form a cycle.
    pub async fn lock_within(&self, key: LockKey, patience: Duration) -> Option<OperationGuard> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            if let Some(guard) = self.locks.try_acquire(key.clone()) {
                return Some(guard);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Takes `snapshot` so that it holds everything written to the volume so far. A dataset's
    /// writes are in ZFS already; a zvol's filesystem keeps its dirty pages in the kernel's page
    /// cache, outside the zvol, so it is frozen for the moment of the snapshot (and a raw block
    /// zvol's page cache is written out). When that cannot be done the snapshot is still taken,
    /// crash-consistent, as `zfs snapshot` alone would.
    pub async fn take_snapshot(&self, snapshot: &SnapshotName, properties: &crate::zfs::Properties) -> Result<(), crate::zfs::ZfsError> {
        let device = crate::format::zvol_device_now(snapshot.dataset().as_str());
        let frozen = match device {
            Some(device) => {
                let what = format!("quiescing {} for snapshot {snapshot}", snapshot.dataset());
                match crate::mount::run(what, move || crate::mount::quiesce_zvol(&device)).await {
                    Ok(frozen) => frozen,
                    Err(e) => {
                        tracing::warn!(snapshot = %snapshot, "{e}; the snapshot is crash-consistent only");
                        None
                    }
                }
            }
            None => None,
        };
        let result = self.zfs.snapshot(snapshot, properties).await;
        if let Some(frozen) = frozen {
            let thawed = crate::mount::run(format!("thawing {} after snapshot", snapshot.dataset()), move || {
                drop(frozen);
                Ok(())
            });
            if let Err(e) = thawed.await {
                tracing::error!(snapshot = %snapshot, "{e}");
            }
        }
        result
    }

    /// The filesystem or zvol `name`, or `None` when it does not exist.
    pub async fn volume(&self, name: &DatasetName) -> Result<Option<VolumeInfo>, Status> {
        let dataset = self
            .zfs
            .find(name, VOLUME_PROPERTIES)
            .await
            .map_err(|e| zfs_status(&format!("reading volume {name}"), e))?;
        Ok(dataset.and_then(|d| VolumeInfo::from_dataset(&d, &self.name)))
    }

    /// The volume condition (CSI VOLUME_CONDITION): abnormal when the pool is not ONLINE.
    pub async fn volume_condition(&self, name: &DatasetName) -> csi::VolumeCondition {
        match self.zfs.pool(name.pool()).await {
            Ok(pool) if pool.is_healthy() => csi::VolumeCondition {
                abnormal: false,
                message: format!("pool {} is ONLINE", pool.name),
            },
            Ok(pool) => csi::VolumeCondition {
                abnormal: true,
                message: format!(
                    "pool {} is {}: check `zpool status {}`",
                    pool.name, pool.health, pool.name
                ),
            },
            Err(e) => csi::VolumeCondition {
                abnormal: true,
                message: format!("cannot read the health of pool {}: {e}", name.pool()),
            },
        }
    }
}

//! Replicated snapshots (docs/DESIGN.md section 11): a VolumeSnapshotClass with
//! `replicateTo: tank/backups` makes every snapshot of a volume a copy on another pool too, by
//! `zfs send | zfs receive`, incremental from the newest snapshot the replica already holds.
//!
//! - The replica of volume `vms/pvc-1` is the dataset `<replicateTo>/vms:pvc-1` (the volume's
//!   name with `/` as `:`), received with `-u` (never mounted) and `-s` (resumable). It carries
//!   `REPLICA_OWNER` and `REPLICA_OF`, never `MANAGED_BY`: no volume RPC lists, serves or
//!   destroys it.
//! - The VolumeSnapshot's ID is the replica's snapshot (`tank/backups/vms:pvc-1@snap`): the ID
//!   names the copy that survives the source pool. Until the replica holds it, the snapshot is
//!   not ready (`ready_to_use: false`); the snapshotter calls CreateSnapshot again until it is.
//! - Transfers run here, in the background, one at a time per volume, oldest snapshot first
//!   (each one is the base of the next). A driver killed mid-transfer resumes it when it
//!   starts again, from the receive token; a transfer that fails discards what it had
//!   received (`zfs receive -A`) and is retried on the next CreateSnapshot of it. At most
//!   `TRANSFERS_IN_FLIGHT` run at once, whatever the number of volumes.
//! - After each transfer the local snapshot gets a bookmark: deleting the local snapshot keeps
//!   the base of the next incremental send, at no space cost. A replica's newest snapshot
//!   deleted through CSI is hidden, not destroyed, while its volume lives, for the same reason.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tonic::Status;

use crate::driver::Driver;
use crate::errors::zfs_status;
use crate::state::{prop, SnapshotInfo, SNAPSHOT_PROPERTIES};
use crate::zfs::{DatasetName, DatasetType, Depth, Destroy, OwnedDelete, Properties, SendStream, SnapshotName, ZfsError};

/// The replica dataset of `volume` below `replicate_to`.
pub fn replica_dataset(replicate_to: &DatasetName, volume: &DatasetName) -> Result<DatasetName, Status> {
    replicate_to
        .child(&volume.as_str().replace('/', ":"))
        .map_err(|e| Status::invalid_argument(format!("replicateTo {replicate_to}: no replica name for {volume}: {e}")))
}

/// The volume a replica dataset copies, read from its name (`…/vms:pvc-1` → `vms/pvc-1`): for
/// the moment before the first transfer made it, when it has no properties to read.
pub fn replica_source(replica: &DatasetName) -> Option<DatasetName> {
    let (_, last) = replica.as_str().rsplit_once('/')?;
    last.contains(':').then(|| DatasetName::parse(&last.replace(':', "/")).ok()).flatten()
}

/// The bookmark kept of a replicated snapshot, as the base of later incremental sends.
fn bookmark_name(snapshot: &str) -> String {
    format!("zfs-csi-{snapshot}")
}

/// Why the last transfer of a volume's snapshot failed.
#[derive(Clone, Debug)]
pub struct Failure {
    pub snapshot: String,
    pub code: tonic::Code,
    pub message: String,
}

#[derive(Default)]
struct VolumeState {
    task: Option<tokio::task::JoinHandle<()>>,
    failure: Option<Failure>,
}

/// Transfers running at once across all volumes: each is sequential I/O on both pools, and a
/// backup job snapshotting many PVCs at once must not turn the replica's disks into random
/// I/O.
const TRANSFERS_IN_FLIGHT: usize = 2;
/// How long a resume waits, in seconds, for another receive that still owns the replica.
const RESUME_BUSY_SECONDS: u32 = 60;

pub struct Replicator {
    driver: Arc<Driver>,
    volumes: Mutex<HashMap<String, VolumeState>>,
    in_flight: tokio::sync::Semaphore,
}

impl Replicator {
    pub fn new(driver: Arc<Driver>) -> Arc<Self> {
        Arc::new(Self { driver, volumes: Mutex::new(HashMap::new()), in_flight: tokio::sync::Semaphore::new(TRANSFERS_IN_FLIGHT) })
    }

    fn volumes(&self) -> std::sync::MutexGuard<'_, HashMap<String, VolumeState>> {
        self.volumes.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Makes sure a transfer task runs for `volume` (it ends when every snapshot of the volume
    /// marked for replication is on its replica). Forgets the last failure: this is a retry.
    pub fn start(self: &Arc<Self>, volume: &DatasetName) {
        let mut volumes = self.volumes();
        let state = volumes.entry(volume.to_string()).or_default();
        state.failure = None;
        if state.task.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        let this = Arc::clone(self);
        let name = volume.clone();
        state.task = Some(tokio::spawn(async move { this.run(name).await }));
    }

    /// The failure of the last transfer of `snapshot` (short name) of `volume`, if it failed,
    /// handed out once: the CreateSnapshot that gets it answers the error, and the next one
    /// starts the transfer again (so nothing runs between the two, as the snapshotter backs
    /// off).
    pub fn take_failure(&self, volume: &DatasetName, snapshot: &str) -> Option<Failure> {
        let mut volumes = self.volumes();
        let state = volumes.get_mut(volume.as_str())?;
        if state.failure.as_ref()?.snapshot != snapshot {
            return None;
        }
        state.failure.take()
    }

    /// Stops `volume`'s transfer, if one runs, and discards what it had begun to receive into
    /// `replica`: before a snapshot it may be sending is destroyed.
    pub async fn stop(&self, volume: &DatasetName, replica: Option<&DatasetName>) {
        let task = self.volumes().get_mut(volume.as_str()).and_then(|s| s.task.take());
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
        if let Some(replica) = replica {
            match self.driver.zfs.receive_resume_token(replica).await {
                Ok(Some(_)) => {
                    if let Err(e) = self.driver.zfs.abort_receive(replica).await {
                        tracing::warn!(replica = %replica, "cannot discard the interrupted receive: {e}");
                    }
                }
                Ok(None) | Err(ZfsError::NotFound(_)) => {}
                Err(e) => tracing::warn!(replica = %replica, "cannot read the receive state: {e}"),
            }
        }
    }

    /// At start-up: every volume marked for replication gets a transfer task, which resumes
    /// an interrupted receive or sends what is missing, or ends at once.
    pub async fn resume_all(self: &Arc<Self>) {
        for parent in &self.driver.parents {
            let volumes = match self
                .driver
                .zfs
                .get(parent, &[prop::MANAGED_BY, prop::REPLICATE_TO], Depth::All, &[DatasetType::Filesystem, DatasetType::Volume])
                .await
            {
                Ok(v) => v,
                Err(e) if e.is_not_found() => continue,
                Err(e) => {
                    tracing::warn!(parent = %parent, "replication: cannot list: {e}");
                    continue;
                }
            };
            for dataset in volumes {
                let local = |p: &str| dataset.property(p).filter(|v| v.source == crate::zfs::PropertySource::Local).map(|v| v.value.clone());
                if local(prop::MANAGED_BY).as_deref() == Some(self.driver.name.as_str()) && local(prop::REPLICATE_TO).is_some() {
                    if let Ok(name) = DatasetName::parse(&dataset.name) {
                        self.start(&name);
                    }
                }
            }
        }
    }

    async fn run(self: Arc<Self>, volume: DatasetName) {
        loop {
            match self.replicate_next(&volume).await {
                Ok(true) => continue,
                Ok(false) => break,
                Err(failure) => {
                    tracing::warn!(volume = %volume, snapshot = %failure.snapshot, code = ?failure.code, "replication failed: {}", failure.message);
                    if let Some(state) = self.volumes().get_mut(volume.as_str()) {
                        state.failure = Some(failure);
                    }
                    break;
                }
            }
        }
    }

    /// The volume's snapshots to replicate, oldest first.
    async fn pending(&self, volume: &DatasetName) -> Result<Vec<SnapshotInfo>, ZfsError> {
        let mut properties: Vec<&str> = SNAPSHOT_PROPERTIES.to_vec();
        properties.push("createtxg");
        let mut found: Vec<(u64, SnapshotInfo)> = self
            .driver
            .zfs
            .get(volume, &properties, Depth::Levels(1), &[DatasetType::Snapshot])
            .await?
            .iter()
            .filter(|d| d.dataset_type() == Some(DatasetType::Snapshot))
            .map(|d| (d.get_u64("createtxg").unwrap_or(0), SnapshotInfo::from_dataset(d, &self.driver.name)))
            .filter(|(_, s)| s.managed && s.replicate_to.is_some() && !s.deferred_destroy)
            .collect();
        found.sort_by_key(|(txg, _)| *txg);
        Ok(found.into_iter().map(|(_, s)| s).collect())
    }

    /// Replicates the oldest snapshot of `volume` that its replica lacks, or finishes one the
    /// replica holds but has not marked yet. `Ok(false)` when nothing is left to do.
    async fn replicate_next(&self, volume: &DatasetName) -> Result<bool, Failure> {
        let fail = |snapshot: &str, status: Status| Failure { snapshot: snapshot.to_string(), code: status.code(), message: status.message().to_string() };
        let pending = match self.pending(volume).await {
            Ok(p) => p,
            Err(ZfsError::NotFound(_)) => return Ok(false),
            Err(e) => return Err(fail("", zfs_status(&format!("listing the snapshots of {volume}"), e))),
        };
        // Each replica's snapshots, read once per pass rather than once per snapshot.
        let mut held: HashMap<String, HashMap<String, SnapshotInfo>> = HashMap::new();
        for local in pending {
            let snapshot = SnapshotName::parse(&local.name).map_err(|e| fail(&local.name, Status::internal(e.to_string())))?;
            let short = snapshot.short_name().to_string();
            let replicate_to = DatasetName::parse(local.replicate_to.as_deref().unwrap_or_default())
                .map_err(|e| fail(&short, Status::internal(format!("replicate-to of {snapshot}: {e}"))))?;
            let replica = replica_dataset(&replicate_to, volume).map_err(|s| fail(&short, s))?;
            let target = replica.snapshot(&short).map_err(|e| fail(&short, Status::internal(e.to_string())))?;
            if !held.contains_key(replica.as_str()) {
                let found = match self.driver.zfs.get(&replica, SNAPSHOT_PROPERTIES, Depth::Levels(1), &[DatasetType::Snapshot]).await {
                    Ok(found) => found,
                    Err(ZfsError::NotFound(_)) => Vec::new(),
                    Err(e) => return Err(fail(&short, zfs_status(&format!("listing the snapshots of {replica}"), e))),
                };
                let infos = found
                    .iter()
                    .filter(|d| d.dataset_type() == Some(DatasetType::Snapshot))
                    .map(|d| (d.name.clone(), SnapshotInfo::from_dataset(d, &self.driver.name)))
                    .collect();
                held.insert(replica.to_string(), infos);
            }
            let existing = held.get(replica.as_str()).and_then(|infos| infos.get(&target.to_string())).cloned();
            match existing {
                Some(info) if info.managed => continue,
                Some(_) => {
                    // Received before a crash, not marked yet.
                    self.mark_received(volume, &snapshot, &local, &replica, &target).await.map_err(|s| fail(&short, s))?;
                    return Ok(true);
                }
                None => {
                    let _slot = self.in_flight.acquire().await.map_err(|e| fail(&short, Status::internal(e.to_string())))?;
                    self.transfer(volume, &snapshot, &replica).await.map_err(|s| fail(&short, s))?;
                    self.mark_received(volume, &snapshot, &local, &replica, &target).await.map_err(|s| fail(&short, s))?;
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// Sends `snapshot` into `replica`: the rest of an interrupted receive first if there is
    /// one, else incrementally from the newest snapshot the replica shares with the volume
    /// (through the bookmark when the local snapshot is gone), else whole into a new replica.
    async fn transfer(&self, volume: &DatasetName, snapshot: &SnapshotName, replica: &DatasetName) -> Result<(), Status> {
        let zfs = &self.driver.zfs;
        let what = format!("replicating {snapshot} to {replica}");
        let replica_exists = match zfs.receive_resume_token(replica).await {
            Ok(Some(token)) => {
                tracing::info!(replica = %replica, "resuming an interrupted receive");
                // The token shows while the receive that left it may still own the dataset (a
                // killed driver's `zfs receive` finishing what was in its pipe): busy is
                // waited out.
                let mut busy_for = 0;
                let bytes = loop {
                    match zfs.send_receive(&SendStream::Resume { token: token.clone() }, replica, true, &Vec::new()).await {
                        Err(ZfsError::Busy(_)) if busy_for < RESUME_BUSY_SECONDS => {
                            busy_for += 1;
                            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                        }
                        other => break other,
                    }
                };
                return self.finish_transfer(replica, bytes.map(|b| (b, "resumed")), &what).await;
            }
            Ok(None) => true,
            Err(ZfsError::NotFound(_)) => false,
            Err(e) => return Err(zfs_status(&format!("{what}: reading the replica"), e)),
        };
        let source = zfs
            .get_one(volume, &["type", "encryption"])
            .await
            .map_err(|e| zfs_status(&format!("{what}: reading the volume"), e))?;
        let raw = source.get("encryption").is_some_and(|e| e != "off" && e != "-");
        let stream = if replica_exists {
            let theirs = zfs.snapshots_and_bookmarks(replica).await.map_err(|e| zfs_status(&what, e))?;
            let ours = zfs.snapshots_and_bookmarks(volume).await.map_err(|e| zfs_status(&what, e))?;
            let newest = theirs.iter().filter(|p| p.name.contains('@')).max_by_key(|p| p.createtxg).ok_or_else(|| {
                Status::failed_precondition(format!("{what}: the replica holds no snapshot to send increments onto; \
                    it was not made by this driver's transfers, or was emptied by hand"))
            })?;
            // The same snapshot on our side: itself, or its bookmark.
            let base = ours.iter().filter(|p| p.guid == newest.guid).max_by_key(|p| p.name.contains('@')).ok_or_else(|| {
                Status::failed_precondition(format!(
                    "{what}: the replica's newest snapshot {} is neither a snapshot nor a bookmark of {volume} any more; \
                     no incremental send is possible",
                    newest.name
                ))
            })?;
            SendStream::Incremental { base: base.name.clone(), snapshot: snapshot.clone(), raw }
        } else {
            SendStream::Full { snapshot: snapshot.clone(), raw }
        };
        // A new replica is marked as it is received.
        let mut properties: Properties = Vec::new();
        if !replica_exists {
            properties.push((prop::REPLICA_OWNER.to_string(), self.driver.name.clone()));
            properties.push((prop::REPLICA_OF.to_string(), volume.to_string()));
            if source.get("type") == Some("filesystem") {
                // Never mounted, not even by `zfs mount -a` at boot.
                properties.push(("canmount".to_string(), "off".to_string()));
            }
        }
        let kind = if matches!(stream, SendStream::Incremental { .. }) { "incremental" } else { "full" };
        let bytes = zfs.send_receive(&stream, replica, true, &properties).await;
        self.finish_transfer(replica, bytes.map(|b| (b, kind)), &what).await
    }

    /// After a send: on success, counts it; on failure, discards the half-received state so
    /// that nothing is left behind, and answers the error.
    async fn finish_transfer(&self, replica: &DatasetName, result: Result<(u64, &str), ZfsError>, what: &str) -> Result<(), Status> {
        match result {
            Ok((bytes, kind)) => {
                tracing::info!(replica = %replica, bytes, kind, "{what}: done");
                crate::metrics::record_replication(replica.as_str(), bytes);
                Ok(())
            }
            Err(e) => {
                // Busy: another receive owns the replica, and its state is not ours to discard.
                if !matches!(e, ZfsError::Busy(_)) {
                    if let Ok(Some(_)) = self.driver.zfs.receive_resume_token(replica).await {
                        if let Err(abort) = self.driver.zfs.abort_receive(replica).await {
                            tracing::warn!(replica = %replica, "cannot discard the failed receive: {abort}");
                        }
                    }
                }
                Err(zfs_status(what, e))
            }
        }
    }

    /// Marks the replica's copy as ours (the CSI snapshot is then ready), bookmarks the local
    /// snapshot, and destroys what the new snapshot makes unnecessary: hidden replica
    /// snapshots and bookmarks older than it.
    async fn mark_received(&self, volume: &DatasetName, snapshot: &SnapshotName, local: &SnapshotInfo, replica: &DatasetName, target: &SnapshotName) -> Result<(), Status> {
        let zfs = &self.driver.zfs;
        // A resumed first receive may not have kept `-o`: make sure the replica is marked.
        let replica_props: Properties = vec![
            (prop::REPLICA_OWNER.to_string(), self.driver.name.clone()),
            (prop::REPLICA_OF.to_string(), volume.to_string()),
        ];
        zfs.set(replica, &replica_props).await.map_err(|e| zfs_status(&format!("marking replica {replica}"), e))?;
        let mut props: Properties = vec![
            (prop::MANAGED_BY.to_string(), self.driver.name.clone()),
            (prop::CAPACITY.to_string(), local.size_bytes.to_string()),
            (prop::SOURCE_VOLUME.to_string(), volume.to_string()),
        ];
        if let Some(csi_name) = &local.csi_name {
            props.push((prop::CSI_NAME.to_string(), csi_name.clone()));
        }
        // The bookmark before the mark: the mark makes the snapshot ready, and a VolumeSnapshot
        // deleted as soon as it is ready takes the local snapshot, the next send's only base
        // without the bookmark.
        match zfs.bookmark(snapshot, &bookmark_name(snapshot.short_name())).await {
            Ok(()) | Err(ZfsError::AlreadyExists(_)) => {}
            Err(e) => tracing::warn!(snapshot = %snapshot, "cannot bookmark the replicated snapshot: {e}"),
        }
        zfs.set(target, &props).await.map_err(|e| zfs_status(&format!("marking {target}"), e))?;
        if let Some(csi_name) = &local.csi_name {
            self.driver.snapshot_names.insert(csi_name, &target.to_string());
        }
        self.prune(volume, replica, target).await;
        tracing::info!(snapshot = %snapshot, replica = %target, "replicated");
        Ok(())
    }

    /// Destroys hidden replica snapshots older than `newest`, and our bookmarks of the volume
    /// older than it: the next incremental send starts from `newest`.
    async fn prune(&self, volume: &DatasetName, replica: &DatasetName, newest: &SnapshotName) {
        let zfs = &self.driver.zfs;
        if let Ok(points) = zfs.snapshots_and_bookmarks(replica).await {
            let newest_txg = points.iter().find(|p| p.name == newest.to_string()).map(|p| p.createtxg).unwrap_or(0);
            for point in points.iter().filter(|p| p.createtxg < newest_txg && p.name.contains('@')) {
                let Ok(name) = SnapshotName::parse(&point.name) else { continue };
                let hidden = zfs.find(&name, SNAPSHOT_PROPERTIES).await.ok().flatten().map(|d| SnapshotInfo::from_dataset(&d, &self.driver.name));
                if hidden.is_some_and(|s| s.managed && s.hidden) {
                    if let Err(e) = zfs.destroy_snapshot(&name, Destroy::DeferWhileCloned).await {
                        tracing::warn!(snapshot = %name, "cannot destroy a hidden replica snapshot: {e}");
                    }
                }
            }
        }
        if let Ok(points) = zfs.snapshots_and_bookmarks(volume).await {
            let newest_bookmark = format!("{volume}#{}", bookmark_name(newest.short_name()));
            let newest_txg = points.iter().find(|p| p.name == newest_bookmark).map(|p| p.createtxg).unwrap_or(0);
            for point in points.iter().filter(|p| p.createtxg < newest_txg) {
                if let Some(bookmark) = point.name.split_once('#').map(|(_, b)| b).filter(|b| b.starts_with("zfs-csi-")) {
                    if let Err(e) = zfs.destroy_bookmark(volume, bookmark).await {
                        tracing::warn!(volume = %volume, bookmark, "cannot destroy an old bookmark: {e}");
                    }
                }
            }
        }
    }

    /// DeleteSnapshot of a replicated snapshot, after its local copy is gone: the replica's
    /// copy is destroyed, or hidden while it is the base of the next incremental send of a
    /// volume that still lives; a replica left without snapshots is destroyed.
    pub async fn delete_replica_snapshot(&self, target: &SnapshotName, volume_lives: bool) -> Result<(), Status> {
        let zfs = &self.driver.zfs;
        let replica = target.dataset();
        let points = match zfs.snapshots_and_bookmarks(replica).await {
            Ok(p) => p,
            Err(ZfsError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(zfs_status(&format!("listing the snapshots of replica {replica}"), e)),
        };
        let snapshots: Vec<_> = points.iter().filter(|p| p.name.contains('@')).collect();
        let is_newest = snapshots.iter().max_by_key(|p| p.createtxg).is_some_and(|p| p.name == target.to_string());
        if snapshots.iter().any(|p| p.name == target.to_string()) {
            if is_newest && volume_lives {
                zfs.set(target, &vec![(prop::DELETED.to_string(), "true".to_string())])
                    .await
                    .map_err(|e| zfs_status(&format!("hiding {target}"), e))?;
                tracing::info!(snapshot = %target, "hidden: the base of the next incremental send");
                return Ok(());
            }
            match zfs.destroy_snapshot(target, Destroy::DeferWhileCloned).await {
                Ok(()) | Err(ZfsError::NotFound(_)) => tracing::info!(snapshot = %target, "replica copy destroyed"),
                Err(e) => return Err(zfs_status(&format!("deleting {target}"), e)),
            }
        }
        self.destroy_replica_if_unused(replica, volume_lives).await
    }

    pub async fn destroy_replica_if_unused(&self, replica: &DatasetName, volume_lives: bool) -> Result<(), Status> {
        destroy_replica_if_unused(&self.driver, replica, volume_lives).await
    }
}

/// Destroys `replica` when it holds nothing a VolumeSnapshot or the next incremental send
/// needs: no snapshots but hidden ones, and those only while its volume is gone. Called by
/// DeleteSnapshot and by the reaper's passes.
pub async fn destroy_replica_if_unused(driver: &Driver, replica: &DatasetName, volume_lives: bool) -> Result<(), Status> {
    let zfs = &driver.zfs;
    let snapshots = match zfs.get(replica, SNAPSHOT_PROPERTIES, Depth::Levels(1), &[DatasetType::Snapshot]).await {
        Ok(s) => s,
        Err(ZfsError::NotFound(_)) => return Ok(()),
        Err(e) => return Err(zfs_status(&format!("listing the snapshots of replica {replica}"), e)),
    };
    let infos: Vec<SnapshotInfo> = snapshots
        .iter()
        .filter(|d| d.dataset_type() == Some(DatasetType::Snapshot))
        .map(|d| SnapshotInfo::from_dataset(d, &driver.name))
        .collect();
    if volume_lives || infos.iter().any(|s| !(s.managed && s.hidden)) {
        return Ok(());
    }
    for hidden in &infos {
        if let Ok(name) = SnapshotName::parse(&hidden.name) {
            match zfs.destroy_snapshot(&name, Destroy::DeferWhileCloned).await {
                Ok(()) | Err(ZfsError::NotFound(_)) => {}
                Err(e) => return Err(zfs_status(&format!("deleting {name}"), e)),
            }
        }
    }
    match zfs.delete_if_owned(replica, prop::REPLICA_OWNER, &driver.name, prop::DELETED, None).await {
        Ok(OwnedDelete::Destroyed { .. }) => tracing::info!(replica = %replica, "replica destroyed: no snapshot left"),
        Ok(other) => tracing::info!(replica = %replica, outcome = ?other, "replica kept"),
        Err(e) => return Err(zfs_status(&format!("deleting replica {replica}"), e)),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_names_encode_the_volume_and_decode_back() {
        let to = DatasetName::parse("tank/backups").unwrap();
        let volume = DatasetName::parse("vms/k8s/pvc-1").unwrap();
        let replica = replica_dataset(&to, &volume).unwrap();
        assert_eq!(replica.as_str(), "tank/backups/vms:k8s:pvc-1");
        assert_eq!(replica_source(&replica), Some(volume));
        assert_eq!(replica_source(&DatasetName::parse("tank/backups/plain").unwrap()), None);
    }
}

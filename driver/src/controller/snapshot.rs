//! Snapshots: reading them, answering a repeated CreateSnapshot, and the CSI side of
//! replicated snapshots (`replication.rs` moves the data).

use super::*;
use crate::replication::replica_source;

/// The VolumeSnapshotClass parameter that makes snapshots replicated.
pub(super) const REPLICATE_TO_PARAMETER: &str = "replicateTo";

pub(super) fn csi_snapshot(snapshot: &SnapshotInfo, ready: bool) -> csi::Snapshot {
    csi::Snapshot {
        size_bytes: snapshot.size_bytes as i64,
        snapshot_id: snapshot.name.clone(),
        source_volume_id: snapshot.source_volume_id().to_string(),
        creation_time: Some(prost_types::Timestamp { seconds: snapshot.creation, nanos: 0 }),
        ready_to_use: ready,
        group_snapshot_id: String::new(),
    }
}

impl ControllerService {

    pub(super) async fn snapshot_info(&self, name: &SnapshotName) -> Result<Option<SnapshotInfo>, Status> {
        Ok(self
            .driver
            .zfs
            .find(name, SNAPSHOT_PROPERTIES)
            .await
            .map_err(|e| zfs_status(&format!("reading snapshot {name}"), e))?
            .map(|d| SnapshotInfo::from_dataset(&d, &self.driver.name)))
    }

    /// CreateSnapshot's answer when the snapshot it would take exists: that snapshot if this
    /// driver took it for the request `csi_name` (and it is not being deleted),
    /// ALREADY_EXISTS otherwise.
    pub(super) fn existing_snapshot(&self, info: &SnapshotInfo, csi_name: &str) -> Result<Response<csi::CreateSnapshotResponse>, Status> {
        if !info.managed || info.csi_name.as_deref() != Some(csi_name) || info.deferred_destroy {
            return Err(Status::already_exists(format!(
                "snapshot {} already exists and was not made by this driver for this request",
                info.name
            )));
        }
        if let Some(to) = &info.replicate_to {
            return Err(Status::already_exists(format!(
                "snapshot {} exists, replicated to {to}: the request names no {REPLICATE_TO_PARAMETER}",
                info.name
            )));
        }
        Ok(Response::new(csi::CreateSnapshotResponse { snapshot: Some(csi_snapshot(info, true)) }))
    }

    /// `replicateTo` of a VolumeSnapshotClass, checked: a dataset at or below a configured
    /// parent, not the source volume nor inside it.
    pub(super) fn replicate_to(&self, value: &str, source: &DatasetName) -> Result<DatasetName, Status> {
        let to = DatasetName::parse(value)
            .map_err(|e| Status::invalid_argument(format!("{REPLICATE_TO_PARAMETER} {value:?} is not a dataset name: {e}")))?;
        if !(self.driver.is_within_parents(&to) || self.driver.parents.contains(&to)) {
            return Err(Status::invalid_argument(format!(
                "{REPLICATE_TO_PARAMETER} {to} is not at or below a configured parent ({})",
                self.driver.parents.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(", ")
            )));
        }
        if to.is_same_or_under(source) {
            return Err(Status::invalid_argument(format!("{REPLICATE_TO_PARAMETER} {to} lies in the source volume {source}")));
        }
        Ok(to)
    }

    /// Before the first replicated snapshot of `source`: `to` exists (created, never mounted,
    /// if it does not), and the volume records it so that a restarted driver resumes its
    /// transfers.
    pub(super) async fn prepare_replication(&self, to: &DatasetName, source: &DatasetName) -> Result<(), Status> {
        let zfs = &self.driver.zfs;
        match zfs.find(to, &["type"]).await {
            Ok(Some(_)) => {}
            Ok(None) => match zfs.create_parents(to, &vec![("canmount".to_string(), "off".to_string())]).await {
                Ok(()) | Err(ZfsError::AlreadyExists(_)) => tracing::info!(dataset = %to, "created for replicas"),
                Err(ZfsError::NotFound(_)) => {
                    return Err(Status::failed_precondition(format!(
                        "{REPLICATE_TO_PARAMETER} {to}: pool {} is not imported on node {}",
                        to.pool(),
                        self.driver.node_id
                    )))
                }
                Err(e) => return Err(zfs_status(&format!("creating {REPLICATE_TO_PARAMETER} {to}"), e)),
            },
            Err(e) => return Err(zfs_status(&format!("reading {REPLICATE_TO_PARAMETER} {to}"), e)),
        }
        zfs.set(source, &vec![(prop::REPLICATE_TO.to_string(), to.to_string())])
            .await
            .map_err(|e| zfs_status(&format!("recording replication on {source}"), e))
    }

    /// CreateSnapshot's answer for a replicated snapshot that exists locally: the replica's
    /// copy (ready) once it holds it; until then not ready, with its transfer running; the
    /// transfer's error if it failed (retried from here).
    pub(super) async fn existing_replicated_snapshot(&self, info: &SnapshotInfo, csi_name: &str, to: &DatasetName, source: &DatasetName) -> Result<Response<csi::CreateSnapshotResponse>, Status> {
        if info.replicate_to.as_deref() != Some(to.as_str()) && info.managed && info.csi_name.as_deref() == Some(csi_name) {
            return Err(Status::already_exists(format!(
                "snapshot {} exists, replicated to {} rather than {to}",
                info.name,
                info.replicate_to.as_deref().unwrap_or("nothing")
            )));
        }
        if !info.managed || info.csi_name.as_deref() != Some(csi_name) || info.deferred_destroy {
            return self.existing_snapshot(info, csi_name);
        }
        let local = SnapshotName::parse(&info.name).map_err(|e| Status::internal(e.to_string()))?;
        let target = replica_dataset(to, source)?
            .snapshot(local.short_name())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if let Some(copy) = self.snapshot_info(&target).await?.filter(SnapshotInfo::is_listed) {
            return Ok(Response::new(csi::CreateSnapshotResponse { snapshot: Some(csi_snapshot(&copy, true)) }));
        }
        if let Some(failure) = self.replicator.take_failure(source, local.short_name()) {
            return Err(Status::new(
                failure.code,
                format!("{}; the local snapshot {local} is intact, and the next call tries again", failure.message),
            ));
        }
        self.replicator.start(source);
        let mut pending = info.clone();
        pending.name = target.to_string();
        pending.source_volume = Some(source.to_string());
        Ok(Response::new(csi::CreateSnapshotResponse { snapshot: Some(csi_snapshot(&pending, false)) }))
    }

    /// The local snapshot a replica's snapshot `target` will copy, while the replica does not
    /// hold it yet: the ID the snapshotter already has must be answered (not ready).
    pub(super) async fn pending_local(&self, target: &SnapshotName) -> Result<Option<SnapshotInfo>, Status> {
        let Some(volume) = replica_source(target.dataset()).filter(|v| self.driver.is_within_parents(v)) else {
            return Ok(None);
        };
        let Ok(local) = volume.snapshot(target.short_name()) else { return Ok(None) };
        let to = target.dataset().parent().map(|p| p.to_string());
        Ok(self.snapshot_info(&local).await?.filter(|s| {
            s.managed && !s.internal && !s.deferred_destroy && !s.hidden && s.replicate_to.is_some() && s.replicate_to == to
        }))
    }

    /// GetSnapshot and ListSnapshots by ID: a snapshot of ours (a replica's copy among them,
    /// ready), or a replicated snapshot the replica does not hold yet (not ready).
    pub(super) async fn csi_snapshot_by_id(&self, snapshot: &SnapshotName) -> Result<Option<csi::Snapshot>, Status> {
        if let Some(info) = self.snapshot_info(snapshot).await? {
            return Ok(info.is_listed().then(|| csi_snapshot(&info, true)));
        }
        Ok(self.pending_local(snapshot).await?.map(|mut local| {
            local.source_volume = local.name.split_once('@').map(|(d, _)| d.to_string());
            local.name = snapshot.to_string();
            csi_snapshot(&local, false)
        }))
    }

    /// The snapshots of the replicas that `volume`'s snapshots (`local`) are replicated to.
    pub(super) async fn replica_snapshots_of(&self, volume: &DatasetName, local: &[Dataset]) -> Result<Vec<Dataset>, Status> {
        let mut targets: Vec<String> = local
            .iter()
            .map(|d| SnapshotInfo::from_dataset(d, &self.driver.name))
            .filter_map(|s| s.replicate_to)
            .collect();
        targets.sort();
        targets.dedup();
        let mut found = Vec::new();
        for to in targets {
            let Ok(to) = DatasetName::parse(&to) else { continue };
            let replica = replica_dataset(&to, volume)?;
            match self.driver.zfs.get(&replica, SNAPSHOT_PROPERTIES, Depth::Levels(1), &[DatasetType::Snapshot]).await {
                Ok(d) => found.extend(d),
                Err(ZfsError::NotFound(_)) => {}
                Err(e) => return Err(zfs_status(&format!("listing the snapshots of replica {replica}"), e)),
            }
        }
        Ok(found)
    }

    /// The replicated snapshot behind a DeleteSnapshot ID: the replica's copy, the local
    /// snapshot a pending copy names, or (given the local name) the local one.
    pub(super) async fn replicated_snapshot(&self, snapshot: &SnapshotName, info: Option<&SnapshotInfo>) -> Result<Option<Replicated>, Status> {
        let invalid = |e: crate::zfs::NameError| Status::internal(e.to_string());
        match info {
            Some(info) if info.managed && info.source_volume.is_some() => {
                let volume = DatasetName::parse(info.source_volume.as_deref().unwrap_or_default()).map_err(invalid)?;
                let local = volume.snapshot(snapshot.short_name()).map_err(invalid)?;
                Ok(Some(Replicated { volume, local, target: snapshot.clone() }))
            }
            Some(info) if info.managed && info.replicate_to.is_some() => {
                let to = DatasetName::parse(info.replicate_to.as_deref().unwrap_or_default()).map_err(invalid)?;
                let volume = snapshot.dataset().clone();
                let target = replica_dataset(&to, &volume)?.snapshot(snapshot.short_name()).map_err(invalid)?;
                Ok(Some(Replicated { volume, local: snapshot.clone(), target }))
            }
            Some(_) => Ok(None),
            None => Ok(self.pending_local(snapshot).await?.and_then(|local| {
                let local = SnapshotName::parse(&local.name).ok()?;
                Some(Replicated { volume: local.dataset().clone(), local, target: snapshot.clone() })
            })),
        }
    }

    /// DeleteSnapshot of a replicated snapshot: its transfer stopped, the local snapshot and
    /// the replica's copy deleted (the copy hidden while it is the base of the next send).
    pub(super) async fn delete_replicated_snapshot(&self, replicated: Replicated) -> Result<(), Status> {
        let Replicated { volume, local, target } = replicated;
        self.replicator.stop(&volume, Some(target.dataset())).await;
        let mut reap = false;
        if let Some(info) = self.snapshot_info(&local).await?.filter(|s| s.managed) {
            match self.driver.zfs.destroy_snapshot(&local, Destroy::DeferWhileCloned).await {
                Ok(()) | Err(ZfsError::NotFound(_)) => {}
                Err(e) => return Err(zfs_status(&format!("deleting snapshot {local}"), e)),
            }
            reap = info.clones.is_empty();
            tracing::info!(snapshot = %local, "local copy of a replicated snapshot destroyed");
        }
        let lives = self.driver.volume(&volume).await?.is_some_and(|v| v.managed && !v.deleted);
        self.replicator.delete_replica_snapshot(&target, lives).await?;
        if reap {
            self.reaper.reap_deleted_volume(&volume).await;
        }
        if lives {
            self.replicator.start(&volume);
        }
        Ok(())
    }
}

/// A replicated snapshot: its volume, the local snapshot and the replica's copy (its CSI ID).
pub(super) struct Replicated {
    pub(super) volume: DatasetName,
    pub(super) local: SnapshotName,
    pub(super) target: SnapshotName,
}

/// What ListSnapshots shows of `datasets` (snapshots): ours by their names, and each
/// replicated snapshot once, under its replica's name, ready when the replica holds it.
pub(super) fn listed_snapshots(datasets: &[Dataset], driver_name: &str) -> Vec<csi::Snapshot> {
    let infos: Vec<SnapshotInfo> = datasets
        .iter()
        .filter(|d| d.dataset_type() == Some(DatasetType::Snapshot))
        .map(|d| SnapshotInfo::from_dataset(d, driver_name))
        .collect();
    let mut by_id: BTreeMap<String, csi::Snapshot> =
        infos.iter().filter(|s| s.is_listed()).map(|s| (s.name.clone(), csi_snapshot(s, true))).collect();
    for local in infos.iter().filter(|s| s.managed && !s.internal && !s.deferred_destroy && !s.hidden) {
        let (Some(to), Ok(name)) = (&local.replicate_to, SnapshotName::parse(&local.name)) else { continue };
        let Ok(to) = DatasetName::parse(to) else { continue };
        let Ok(target) = replica_dataset(&to, name.dataset()).map(|r| r.snapshot(name.short_name())) else { continue };
        let Ok(target) = target else { continue };
        by_id.entry(target.to_string()).or_insert_with(|| {
            let mut pending = local.clone();
            pending.name = target.to_string();
            pending.source_volume = Some(name.dataset().to_string());
            csi_snapshot(&pending, false)
        });
    }
    by_id.into_values().collect()
}

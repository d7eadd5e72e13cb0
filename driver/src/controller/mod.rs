//! CSI Controller service: volumes (datasets and zvols), snapshots, clones, capacity.
//!
//! This file holds every RPC; what they share lives beside it by concern: `create` (the
//! request, properties, idempotency, adoption), `clone` (clones and restores), `snapshot`,
//! `list`. Deletion is the reaper's (`reaper.rs`).
//!
//! Each RPC reads top to bottom: validate the request in the spec's order, take the ID's
//! operation lock, check idempotency, act, answer. All state is in ZFS user properties
//! (`state.rs`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::capability::{self, AccessType};
use crate::csi::{self, controller_server::Controller, controller_service_capability, volume_content_source};
use crate::driver::Driver;
use crate::errors::{missing, zfs_status};
use crate::params::{same_setting, FsType, MutableParams, QuotaType, VolumeParams, SECRET_KEY};
use crate::state::{canonical_parameters, prop, SnapshotInfo, VolumeInfo, VolumeKind, SNAPSHOT_PROPERTIES, VOLUME_PROPERTIES};
use crate::locks::LockKey;
use crate::reaper::{Deleted, Reaper};
use crate::replication::{replica_dataset, Replicator};
use crate::zfs::{
    validate_component, Dataset, DatasetName, DatasetType, Depth, Destroy, KeyMaterial, OwnedDelete, Properties,
    PropertySource, SnapshotName, ZfsError,
};

mod clone;
mod create;
mod list;
mod modify;
mod snapshot;

use clone::*;
use create::*;
use list::*;
use snapshot::*;

pub struct ControllerService {
    driver: Arc<Driver>,
    reaper: Reaper,
    replicator: Arc<Replicator>,
}

impl ControllerService {
    pub fn new(driver: Arc<Driver>, reaper: Reaper, replicator: Arc<Replicator>) -> Self {
        Self { driver, reaper, replicator }
    }
}

#[tonic::async_trait]
impl Controller for ControllerService {
    async fn create_volume(
        &self,
        request: Request<csi::CreateVolumeRequest>,
    ) -> Result<Response<csi::CreateVolumeResponse>, Status> {
        let req = request.into_inner();
        let mut request = self.volume_request(&req)?;
        let _lock = self.driver.lock(LockKey::Volume(request.name.to_string()))?;
        let origin = match &request.source {
            Some(source) => {
                let origin = self
                    .resolve_source(&request, source)
                    .await
                    .map_err(|status| self.source_elsewhere(request.placed, status))?;
                // Without a size, a clone is as large as its source; a zvol clone's size is a
                // multiple of its origin's volblocksize, which it keeps.
                let granule = request.granule(Some(&origin));
                request.capacity = capacity_from_range(request.range.as_ref(), granule, origin.capacity)?;
                Some(origin)
            }
            None => None,
        };
        let props = self.creation_properties(&request, origin.as_ref()).await?;
        let zfs = &self.driver.zfs;
        let what = format!("creating volume {}", request.name);
        // A plain volume is answered from the request (everything in it was given to
        // `zfs create -o`); a clone as read back after cloning.
        let created = match (&origin, request.kind) {
            (Some(origin), _) => self.create_clone(&request, origin, &props).await,
            (None, VolumeKind::Filesystem) => zfs
                .create_filesystem(&request.name, &props, request.key.as_ref())
                .await
                .map(|()| request.created_volume(None))
                .map_err(|e| zfs_status(&what, e)),
            (None, VolumeKind::Zvol) => zfs
                .create_volume(&request.name, request.capacity, request.params.thin, &props, request.key.as_ref())
                .await
                .map(|()| request.created_volume(None))
                .map_err(|e| zfs_status(&what, e)),
        };
        let volume = match created {
            Ok(volume) => {
                tracing::info!(volume = %request.name, kind = request.kind.as_str(), capacity = request.capacity, "created");
                volume
            }
            Err(status) if status.code() == tonic::Code::AlreadyExists => {
                self.existing_volume(&request, origin.as_ref(), &props).await?
            }
            Err(status) if status.code() == tonic::Code::NotFound && request.source.is_none() => {
                return Err(Status::invalid_argument(format!(
                    "{}; does poolname {} exist?",
                    status.message(),
                    request.name.parent().map(|p| p.to_string()).unwrap_or_default()
                )))
            }
            Err(status) => return Err(status),
        };
        Ok(Response::new(csi::CreateVolumeResponse {
            volume: Some(csi_volume(&volume, self.driver.topology())),
        }))
    }

    async fn delete_volume(
        &self,
        request: Request<csi::DeleteVolumeRequest>,
    ) -> Result<Response<csi::DeleteVolumeResponse>, Status> {
        let req = request.into_inner();
        let Some(name) = self.driver.volume_name(&req.volume_id)? else {
            tracing::info!(volume = %req.volume_id, "not below a configured parent: nothing of ours to delete");
            return Ok(Response::new(csi::DeleteVolumeResponse {}));
        };
        let _lock = self.driver.lock(LockKey::Volume(name.to_string()))?;
        match self.reaper.delete_volume(&name).await? {
            Deleted::AlreadyGone => {
                // A retry after a crash or a cancelled call: what the first attempt left
                // half-done (the origin of a destroyed clone) is found by a reaper pass.
                tracing::info!(volume = %name, "already gone");
                self.reaper.pass_soon(&name);
            }
            Deleted::Destroyed | Deleted::Deferred | Deleted::NotOurs => {}
        }
        Ok(Response::new(csi::DeleteVolumeResponse {}))
    }

    async fn controller_publish_volume(
        &self,
        _request: Request<csi::ControllerPublishVolumeRequest>,
    ) -> Result<Response<csi::ControllerPublishVolumeResponse>, Status> {
        Err(Status::unimplemented("local ZFS volumes need no controller publish (attachRequired: false)"))
    }

    async fn controller_unpublish_volume(
        &self,
        _request: Request<csi::ControllerUnpublishVolumeRequest>,
    ) -> Result<Response<csi::ControllerUnpublishVolumeResponse>, Status> {
        Err(Status::unimplemented("local ZFS volumes need no controller unpublish (attachRequired: false)"))
    }

    async fn validate_volume_capabilities(
        &self,
        request: Request<csi::ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<csi::ValidateVolumeCapabilitiesResponse>, Status> {
        let req = request.into_inner();
        let name = self.driver.volume_name(&req.volume_id)?;
        if req.volume_capabilities.is_empty() {
            return Err(missing("volume_capabilities"));
        }
        let volume = match name {
            Some(name) => self.driver.volume(&name).await?.filter(|v| !v.deleted),
            None => None,
        }
        .ok_or_else(|| Status::not_found(format!("volume {} does not exist", req.volume_id)))?;
        let mut problems = Vec::new();
        for cap in &req.volume_capabilities {
            match (capability::parse(cap), volume.kind) {
                (Err(e), _) => problems.push(e.message().to_string()),
                (Ok(AccessType::Block), VolumeKind::Filesystem) => {
                    problems.push("a ZFS filesystem cannot be used as a raw block device".into())
                }
                (Ok(AccessType::Mount { fs_type: Some(fs), .. }), VolumeKind::Filesystem) if fs != FsType::Zfs => {
                    problems.push(format!("a ZFS filesystem cannot be mounted as {}", fs.as_str()))
                }
                (Ok(AccessType::Mount { fs_type: Some(FsType::Zfs), .. }), VolumeKind::Zvol) => {
                    problems.push("a zvol cannot be mounted as zfs".into())
                }
                _ => {}
            }
        }
        if !problems.is_empty() {
            return Ok(Response::new(csi::ValidateVolumeCapabilitiesResponse {
                confirmed: None,
                message: problems.join("; "),
            }));
        }
        Ok(Response::new(csi::ValidateVolumeCapabilitiesResponse {
            confirmed: Some(csi::validate_volume_capabilities_response::Confirmed {
                volume_context: req.volume_context,
                volume_capabilities: req.volume_capabilities,
                parameters: req.parameters,
                mutable_parameters: req.mutable_parameters,
            }),
            message: String::new(),
        }))
    }

    async fn list_volumes(
        &self,
        request: Request<csi::ListVolumesRequest>,
    ) -> Result<Response<csi::ListVolumesResponse>, Status> {
        let req = request.into_inner();
        if req.max_entries < 0 {
            return Err(Status::invalid_argument("max_entries must not be negative"));
        }
        let datasets = self
            .list_below_parents(VOLUME_PROPERTIES, &[DatasetType::Filesystem, DatasetType::Volume])
            .await?;
        let volumes: Vec<VolumeInfo> = datasets
            .iter()
            .filter_map(|d| VolumeInfo::from_dataset(d, &self.driver.name))
            .filter(|v| v.managed && !v.deleted && self.driver.is_within_parents(&v.name))
            .collect();
        let (page, next_token) = paginate(volumes, req.max_entries, &req.starting_token, |v| v.name.as_str())?;
        let mut conditions: HashMap<String, csi::VolumeCondition> = HashMap::new();
        let mut entries = Vec::with_capacity(page.len());
        for volume in page {
            let pool = volume.name.pool().to_string();
            if !conditions.contains_key(&pool) {
                let condition = self.driver.volume_condition(&volume.name).await;
                conditions.insert(pool.clone(), condition);
            }
            entries.push(csi::list_volumes_response::Entry {
                volume: Some(csi_volume(&volume, self.driver.topology())),
                status: Some(csi::list_volumes_response::VolumeStatus {
                    published_node_ids: Vec::new(),
                    volume_condition: conditions.get(&pool).cloned(),
                }),
            });
        }
        Ok(Response::new(csi::ListVolumesResponse { entries, next_token }))
    }

    async fn get_capacity(
        &self,
        request: Request<csi::GetCapacityRequest>,
    ) -> Result<Response<csi::GetCapacityResponse>, Status> {
        let req = request.into_inner();
        for cap in &req.volume_capabilities {
            capability::parse(cap)?;
        }
        let params = VolumeParams::parse(&req.parameters).map_err(Status::invalid_argument)?;
        let parent = self.resolve_parent(&params)?;
        let here = req.accessible_topology.as_ref().is_none_or(|t| topology_matches(&self.driver, t));
        let available = if !here {
            0
        } else {
            match self.driver.zfs.get_one(&parent, &["available"]).await {
                Ok(d) => d.get_u64("available").unwrap_or(0),
                Err(ZfsError::NotFound(_)) => 0,
                Err(e) => return Err(zfs_status(&format!("reading the free space of {parent}"), e)),
            }
        }
        .min(i64::MAX as u64) as i64;
        // A zvol class with a volblocksize above the minimum rounds every size up to it.
        let minimum = MIN_VOLUME_SIZE.max(params.volblocksize.unwrap_or(0)).min(i64::MAX as u64) as i64;
        Ok(Response::new(csi::GetCapacityResponse {
            available_capacity: available,
            maximum_volume_size: Some(available),
            minimum_volume_size: Some(minimum),
        }))
    }

    async fn controller_get_capabilities(
        &self,
        _request: Request<csi::ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<csi::ControllerGetCapabilitiesResponse>, Status> {
        use controller_service_capability::rpc::Type;
        let capabilities = [
            Type::CreateDeleteVolume,
            Type::CreateDeleteSnapshot,
            Type::CloneVolume,
            Type::ListVolumes,
            Type::ListSnapshots,
            Type::GetCapacity,
            Type::GetVolume,
            // GetSnapshot is served, but GET_SNAPSHOT is not advertised: csi-sanity v5.4.0
            // rejects the capability as unknown.
            Type::VolumeCondition,
            Type::SingleNodeMultiWriter,
            Type::ModifyVolume,
        ]
        .into_iter()
        .map(|t| csi::ControllerServiceCapability {
            r#type: Some(controller_service_capability::Type::Rpc(controller_service_capability::Rpc {
                r#type: t as i32,
            })),
        })
        .collect();
        Ok(Response::new(csi::ControllerGetCapabilitiesResponse { capabilities }))
    }

    async fn create_snapshot(
        &self,
        request: Request<csi::CreateSnapshotRequest>,
    ) -> Result<Response<csi::CreateSnapshotResponse>, Status> {
        let req = request.into_inner();
        if req.source_volume_id.is_empty() {
            return Err(missing("source_volume_id"));
        }
        if req.name.is_empty() {
            return Err(missing("name"));
        }
        validate_component(&req.name)
            .map_err(|e| Status::invalid_argument(format!("name {:?} cannot name a snapshot: {e}", req.name)))?;
        let mut keys: Vec<&String> = req
            .parameters
            .keys()
            .filter(|k| !k.starts_with("csi.storage.k8s.io/") && k.as_str() != REPLICATE_TO_PARAMETER)
            .collect();
        keys.sort();
        if !keys.is_empty() {
            return Err(Status::invalid_argument(format!(
                "unknown snapshot parameters {keys:?}; the VolumeSnapshotClass takes only {REPLICATE_TO_PARAMETER}"
            )));
        }
        let source = self
            .driver
            .volume_name(&req.source_volume_id)?
            .ok_or_else(|| Status::not_found(format!("source volume {} does not exist", req.source_volume_id)))?;
        let snapshot = source
            .snapshot(&req.name)
            .map_err(|e| Status::invalid_argument(format!("name {:?}: {e}", req.name)))?;
        let replicate_to = match req.parameters.get(REPLICATE_TO_PARAMETER) {
            Some(value) => Some(self.replicate_to(value, &source)?),
            None => None,
        };
        let _lock = self.driver.lock(LockKey::Snapshot(req.name.clone()))?;
        // The snapshots known to carry this name (`snapshot_names.rs`: read from ZFS at
        // start-up, kept current since): the check costs the same however many datasets and
        // snapshots the parents hold. Each candidate is read back from ZFS before it counts.
        let mut candidates = vec![snapshot.to_string()];
        candidates.extend(
            self.driver
                .snapshot_names
                .candidates(&self.driver.zfs, &self.driver.parents, &req.name)
                .await
                .map_err(|e| zfs_status("reading the snapshot names below the parents", e))?,
        );
        candidates.sort();
        candidates.dedup();
        candidates.retain(|c| {
            c == &snapshot.to_string()
                || SnapshotName::parse(c).is_ok_and(|s| self.driver.is_within_parents(s.dataset()))
        });
        // The source's own snapshot first: its position is what the checks below rely on.
        candidates.sort_by_key(|c| c != &snapshot.to_string());
        let same_name: Vec<SnapshotInfo> = self
            .driver
            .zfs
            .get_existing(&candidates, SNAPSHOT_PROPERTIES)
            .await
            .map_err(|e| zfs_status(&format!("looking up snapshot name {}", req.name), e))?
            .iter()
            .map(|d| SnapshotInfo::from_dataset(d, &self.driver.name))
            .collect();
        // A retry finds its snapshot before anything about the source is checked: since the
        // first attempt (whose reply was lost), the source may have been deleted, and is then
        // only kept, hidden, for this very snapshot.
        if let Some(existing) = same_name.iter().find(|s| s.name == candidates[0]) {
            return match &replicate_to {
                Some(to) => self.existing_replicated_snapshot(existing, &req.name, to, &source).await,
                None => self.existing_snapshot(existing, &req.name),
            };
        }
        // Its replica's copy, the local one gone: the snapshot, ready.
        let copy = same_name.iter().find(|s| s.source_volume.as_deref() == Some(source.as_str()) && s.csi_name.as_deref() == Some(req.name.as_str()));
        if let (Some(copy), Some(_)) = (copy, &replicate_to) {
            if copy.is_listed() {
                return Ok(Response::new(csi::CreateSnapshotResponse { snapshot: Some(csi_snapshot(copy, true)) }));
            }
        }
        if let Some(other) = same_name
            .iter()
            .find(|s| s.is_listed() && s.csi_name.as_deref() == Some(req.name.as_str()) && s.source_volume.as_deref() != Some(source.as_str()))
        {
            return Err(Status::already_exists(format!(
                "snapshot name {} is already used by {}, of another volume",
                req.name, other.name
            )));
        }
        let volume = self
            .driver
            .volume(&source)
            .await?
            .filter(|v| !v.deleted)
            .ok_or_else(|| Status::not_found(format!("source volume {source} does not exist")))?;
        let mut props: Properties = vec![
            (prop::MANAGED_BY.to_string(), self.driver.name.clone()),
            (prop::CSI_NAME.to_string(), req.name.clone()),
            (prop::CAPACITY.to_string(), volume.capacity.to_string()),
        ];
        if let Some(to) = &replicate_to {
            self.prepare_replication(to, &source).await?;
            props.push((prop::REPLICATE_TO.to_string(), to.to_string()));
        }
        match self.driver.take_snapshot(&snapshot, &props).await {
            Ok(()) => tracing::info!(snapshot = %snapshot, "created"),
            Err(ZfsError::AlreadyExists(_)) => {}
            Err(e) => return Err(zfs_status(&format!("creating snapshot {snapshot}"), e)),
        }
        self.driver.snapshot_names.insert(&req.name, &snapshot.to_string());
        let info = self
            .snapshot_info(&snapshot)
            .await?
            .ok_or_else(|| Status::internal(format!("snapshot {snapshot} is missing right after its creation")))?;
        match &replicate_to {
            Some(to) => self.existing_replicated_snapshot(&info, &req.name, to, &source).await,
            None => self.existing_snapshot(&info, &req.name),
        }
    }

    async fn delete_snapshot(
        &self,
        request: Request<csi::DeleteSnapshotRequest>,
    ) -> Result<Response<csi::DeleteSnapshotResponse>, Status> {
        let req = request.into_inner();
        let Some(snapshot) = self.driver.snapshot_name(&req.snapshot_id)? else {
            return Ok(Response::new(csi::DeleteSnapshotResponse {}));
        };
        let _lock = self.driver.lock(LockKey::Snapshot(snapshot.short_name().to_string()))?;
        let info = self.snapshot_info(&snapshot).await?;
        if let Some(replicated) = self.replicated_snapshot(&snapshot, info.as_ref()).await? {
            self.delete_replicated_snapshot(replicated).await?;
            return Ok(Response::new(csi::DeleteSnapshotResponse {}));
        }
        let Some(info) = info else {
            return Ok(Response::new(csi::DeleteSnapshotResponse {}));
        };
        if !info.managed {
            tracing::info!(snapshot = %snapshot, "not created by this driver: left in place");
            return Ok(Response::new(csi::DeleteSnapshotResponse {}));
        }
        // -d: with clones it stays (hidden) until the last clone goes, instead of failing or
        // taking the clones along.
        match self.driver.zfs.destroy_snapshot(&snapshot, Destroy::DeferWhileCloned).await {
            Ok(()) | Err(ZfsError::NotFound(_)) => {}
            Err(e) => return Err(zfs_status(&format!("deleting snapshot {snapshot}"), e)),
        }
        if info.clones.is_empty() {
            tracing::info!(snapshot = %snapshot, "destroyed");
            self.reaper.reap_deleted_volume(snapshot.dataset()).await;
        } else {
            tracing::info!(snapshot = %snapshot, clones = %info.clones.join(","),
                "clones depend on it: hidden now, destroyed with its last clone");
        }
        Ok(Response::new(csi::DeleteSnapshotResponse {}))
    }

    async fn list_snapshots(
        &self,
        request: Request<csi::ListSnapshotsRequest>,
    ) -> Result<Response<csi::ListSnapshotsResponse>, Status> {
        let req = request.into_inner();
        if req.max_entries < 0 {
            return Err(Status::invalid_argument("max_entries must not be negative"));
        }
        // Unknown or malformed IDs in the filters match nothing: an empty list, not an error.
        let snapshots: Vec<csi::Snapshot> = if !req.snapshot_id.is_empty() {
            match self.driver.snapshot_name(&req.snapshot_id).ok().flatten() {
                Some(snapshot) => self.csi_snapshot_by_id(&snapshot).await?.into_iter().collect(),
                None => Vec::new(),
            }
        } else if !req.source_volume_id.is_empty() {
            match self.driver.volume_name(&req.source_volume_id).ok().flatten() {
                Some(volume) => {
                    let mut found = match self.driver.zfs.get(&volume, SNAPSHOT_PROPERTIES, Depth::Levels(1), &[DatasetType::Snapshot]).await {
                        Ok(d) => d,
                        Err(ZfsError::NotFound(_)) => Vec::new(),
                        Err(e) => return Err(zfs_status(&format!("listing the snapshots of {volume}"), e)),
                    };
                    found.extend(self.replica_snapshots_of(&volume, &found).await?);
                    listed_snapshots(&found, &self.driver.name)
                        .into_iter()
                        .filter(|s| s.source_volume_id == req.source_volume_id)
                        .collect()
                }
                None => Vec::new(),
            }
        } else {
            listed_snapshots(&self.list_below_parents(SNAPSHOT_PROPERTIES, &[DatasetType::Snapshot]).await?, &self.driver.name)
        };
        let (page, next_token) = paginate(snapshots, req.max_entries, &req.starting_token, |s| s.snapshot_id.as_str())?;
        Ok(Response::new(csi::ListSnapshotsResponse {
            entries: page
                .into_iter()
                .map(|s| csi::list_snapshots_response::Entry { snapshot: Some(s) })
                .collect(),
            next_token,
        }))
    }

    async fn get_snapshot(
        &self,
        request: Request<csi::GetSnapshotRequest>,
    ) -> Result<Response<csi::GetSnapshotResponse>, Status> {
        let req = request.into_inner();
        let not_found = || Status::not_found(format!("snapshot {} does not exist", req.snapshot_id));
        let snapshot = self.driver.snapshot_name(&req.snapshot_id)?.ok_or_else(not_found)?;
        // Only what ListSnapshots lists: not a snapshot the driver did not take (sanoid's, the
        // operator's), nor its internal or deleted ones.
        let found = self.csi_snapshot_by_id(&snapshot).await?.ok_or_else(not_found)?;
        Ok(Response::new(csi::GetSnapshotResponse { snapshot: Some(found) }))
    }

    async fn controller_expand_volume(
        &self,
        _request: Request<csi::ControllerExpandVolumeRequest>,
    ) -> Result<Response<csi::ControllerExpandVolumeResponse>, Status> {
        Err(Status::unimplemented(
            "expansion is done by NodeExpandVolume on the volume's node (the plugin advertises node EXPAND_VOLUME)",
        ))
    }

    async fn controller_get_volume(
        &self,
        request: Request<csi::ControllerGetVolumeRequest>,
    ) -> Result<Response<csi::ControllerGetVolumeResponse>, Status> {
        let req = request.into_inner();
        let not_found = || Status::not_found(format!("volume {} does not exist", req.volume_id));
        let name = self.driver.volume_name(&req.volume_id)?.ok_or_else(not_found)?;
        let volume = self.driver.volume(&name).await?.filter(|v| !v.deleted).ok_or_else(not_found)?;
        let condition = self.driver.volume_condition(&name).await;
        Ok(Response::new(csi::ControllerGetVolumeResponse {
            volume: Some(csi_volume(&volume, self.driver.topology())),
            status: Some(csi::controller_get_volume_response::VolumeStatus {
                published_node_ids: Vec::new(),
                volume_condition: Some(condition),
            }),
        }))
    }

    async fn controller_modify_volume(
        &self,
        request: Request<csi::ControllerModifyVolumeRequest>,
    ) -> Result<Response<csi::ControllerModifyVolumeResponse>, Status> {
        let req = request.into_inner();
        self.modify_volume(&req.volume_id, &req.mutable_parameters).await?;
        Ok(Response::new(csi::ControllerModifyVolumeResponse {}))
    }
}


//! Clones and restores: the snapshot a clone comes from, what a clone may and may not change,
//! and undoing a clone that failed half-way.

use super::*;

/// The snapshot a clone is made from, and what it was taken of.
pub(super) struct CloneOrigin {
    pub(super) snapshot: SnapshotName,
    pub(super) capacity: u64,
    /// The origin zvol's volblocksize, which the clone keeps; `None` for a filesystem.
    pub(super) volblocksize: Option<u64>,
    /// Bytes the source volume references, for a volume source: a clone's `refquota` cannot
    /// be below it.
    pub(super) referenced: Option<u64>,
    /// For a volume source: the driver's own snapshot still to be taken, with its properties.
    pub(super) take_snapshot: Option<Properties>,
    /// A replica's snapshot in another pool than the new volume: copied by `zfs send |
    /// zfs receive` instead of cloned (ZFS clones stay in their pool); `Some(true)` sends it
    /// raw (an encrypted replica).
    pub(super) copy_raw: Option<bool>,
}

#[derive(Clone, Debug)]
pub(super) enum ContentSource {
    Snapshot(SnapshotName),
    Volume(DatasetName),
}

impl ContentSource {
    pub(super) fn to_property(&self) -> String {
        match self {
            ContentSource::Snapshot(s) => format!("snapshot:{s}"),
            ContentSource::Volume(v) => format!("volume:{v}"),
        }
    }

    fn to_csi(&self) -> csi::VolumeContentSource {
        let r#type = match self {
            ContentSource::Snapshot(s) => volume_content_source::Type::Snapshot(
                volume_content_source::SnapshotSource { snapshot_id: s.to_string() },
            ),
            ContentSource::Volume(v) => volume_content_source::Type::Volume(
                volume_content_source::VolumeSource { volume_id: v.to_string() },
            ),
        };
        csi::VolumeContentSource { r#type: Some(r#type) }
    }
}

pub(super) fn content_source_from_property(value: &str) -> Option<csi::VolumeContentSource> {
    let source = if let Some(s) = value.strip_prefix("snapshot:") {
        ContentSource::Snapshot(SnapshotName::parse(s).ok()?)
    } else {
        ContentSource::Volume(DatasetName::parse(value.strip_prefix("volume:")?).ok()?)
    };
    Some(source.to_csi())
}

/// Read with a clone source's volume: the properties a clone takes from its origin and
/// cannot have otherwise, and what it references.
pub(super) const SOURCE_PROPERTIES: &[&str] = &["volblocksize", "encryption", "keyformat", "keylocation", "encryptionroot", "referenced"];

impl ControllerService {
    /// A source that is not on this node, for a volume the provisioner placed here: ZFS clones
    /// stay on their source's node, so this node can never make it. RESOURCE_EXHAUSTED is the
    /// code on which csi-provisioner, under WaitForFirstConsumer, hands the PVC back to the
    /// scheduler; NOT_FOUND would have it retry here for good. Which node holds the source
    /// cannot be known here (IDs name datasets, not nodes): the message says where it is not.
    pub(super) fn source_elsewhere(&self, placed: bool, status: Status) -> Status {
        if !placed || status.code() != tonic::Code::NotFound {
            return status;
        }
        Status::resource_exhausted(format!(
            "{} on node {}: a clone or restore is made on the node that holds its source; \
             schedule the pod on that node (deploy/README.md, \"Clones and restores across nodes\")",
            status.message(),
            self.driver.node_id
        ))
    }


    /// Finds the snapshot a clone comes from: the given one, or for a volume source the one
    /// the driver will take of it (marked internal). NOT_FOUND when the source is gone;
    /// INVALID_ARGUMENT for a snapshot the driver did not take (the CSI spec's "source
    /// incompatible or not supported") and for a class that conflicts with the source
    /// (`check_clone_source`).
    pub(super) async fn resolve_source(&self, request: &VolumeRequest, source: &ContentSource) -> Result<CloneOrigin, Status> {
        match source {
            ContentSource::Snapshot(id) => {
                let (snapshot, info, copy) = self.restore_point(request, id).await?;
                let snapshot = &snapshot;
                let info = info
                    .filter(|s| !s.deferred_destroy && !s.internal && !s.hidden)
                    .ok_or_else(|| Status::not_found(format!("source snapshot {id} does not exist")))?;
                if !info.managed {
                    return Err(Status::invalid_argument(format!(
                        "source snapshot {snapshot} was not taken by this driver ({} is not set on it): \
                         only the driver's own snapshots are restored",
                        prop::MANAGED_BY
                    )));
                }
                let (volume, dataset) = self.source_volume(snapshot.dataset()).await?.ok_or_else(|| {
                    Status::not_found(format!("the volume of source snapshot {snapshot} does not exist"))
                })?;
                self.check_clone_source(request, snapshot, &volume, &dataset, copy).await?;
                Ok(CloneOrigin {
                    snapshot: snapshot.clone(),
                    capacity: if info.size_bytes > 0 { info.size_bytes } else { volume.capacity },
                    volblocksize: dataset.get_u64("volblocksize"),
                    referenced: None,
                    take_snapshot: None,
                    copy_raw: copy.then(|| dataset.get("encryption").is_some_and(|e| e != "off" && e != "-")),
                })
            }
            ContentSource::Volume(name) => {
                let (volume, dataset) = self
                    .source_volume(name)
                    .await?
                    .filter(|(v, _)| !v.deleted)
                    .ok_or_else(|| Status::not_found(format!("source volume {name} does not exist")))?;
                let snapshot = name
                    .snapshot(&format!("clone-{}", request.csi_name))
                    .map_err(|e| Status::invalid_argument(format!("name {:?}: {e}", request.csi_name)))?;
                self.check_clone_source(request, &snapshot, &volume, &dataset, false).await?;
                let props: Properties = vec![
                    (prop::MANAGED_BY.to_string(), self.driver.name.clone()),
                    (prop::CLONE_OF_VOLUME.to_string(), request.name.to_string()),
                    (prop::CAPACITY.to_string(), volume.capacity.to_string()),
                ];
                Ok(CloneOrigin {
                    snapshot,
                    capacity: volume.capacity,
                    volblocksize: dataset.get_u64("volblocksize"),
                    referenced: dataset.get_u64("referenced"),
                    take_snapshot: Some(props),
                    copy_raw: None,
                })
            }
        }
    }

    /// Where a restore from the snapshot `id` comes from, and whether it is copied: a
    /// replicated snapshot is restored from its local snapshot while that exists in the new
    /// volume's pool (the cheapest clone); else from the replica's copy, cloned in the
    /// replica's pool or copied into any other (the source volume, or its whole pool, may be
    /// gone). Any other snapshot is itself.
    async fn restore_point(&self, request: &VolumeRequest, id: &SnapshotName) -> Result<(SnapshotName, Option<SnapshotInfo>, bool), Status> {
        let info = self.snapshot_info(id).await?;
        let in_pool = |s: &SnapshotName| s.dataset().pool() == request.name.pool();
        let usable = |s: &SnapshotInfo| s.managed && !s.deferred_destroy && !s.internal && !s.hidden;
        match &info {
            Some(copy) if copy.managed && copy.is_listed() && copy.source_volume.is_some() => {
                let local = DatasetName::parse(copy.source_volume.as_deref().unwrap_or_default())
                    .ok()
                    .and_then(|v| v.snapshot(id.short_name()).ok())
                    .filter(|l| in_pool(l) && self.driver.is_within_parents(l.dataset()));
                if let Some(local) = local {
                    if let Some(found) = self.snapshot_info(&local).await?.filter(|s| usable(s)) {
                        return Ok((local, Some(found), false));
                    }
                }
                Ok((id.clone(), info.clone(), !in_pool(id)))
            }
            Some(_) => Ok((id.clone(), info, false)),
            // The replica does not hold it yet: its local snapshot, in the same pool only.
            None => match self.pending_local(id).await?.and_then(|l| SnapshotName::parse(&l.name).ok().map(|n| (n, l))) {
                Some((local, found)) if in_pool(&local) => Ok((local, Some(found), false)),
                _ => Ok((id.clone(), None, false)),
            },
        }
    }

    /// A clone source's volume, with the properties its clones inherit (`SOURCE_PROPERTIES`).
    pub(super) async fn source_volume(&self, name: &DatasetName) -> Result<Option<(VolumeInfo, Dataset)>, Status> {
        let properties: Vec<&str> = VOLUME_PROPERTIES.iter().chain(SOURCE_PROPERTIES).copied().collect();
        let dataset = self
            .driver
            .zfs
            .find(name, &properties)
            .await
            .map_err(|e| zfs_status(&format!("reading source volume {name}"), e))?;
        Ok(dataset.and_then(|d| VolumeInfo::from_dataset(&d, &self.driver.name).map(|v| (v, d))))
    }

    /// Clones `origin` as `request.name` (taking the driver's snapshot of a volume source
    /// first), then grows the clone to the requested size; returns the clone. Whatever fails
    /// after `zfs clone` destroys the half-made clone again before the error is answered.
    pub(super) async fn create_clone(&self, request: &VolumeRequest, origin: &CloneOrigin, props: &Properties) -> Result<VolumeInfo, Status> {
        let zfs = &self.driver.zfs;
        if request.capacity < origin.capacity {
            return Err(Status::out_of_range(format!(
                "requested {} bytes is smaller than the source's {} bytes; a clone cannot shrink",
                request.capacity, origin.capacity
            )));
        }
        if let Some(referenced) = origin.referenced.filter(|&r| r > request.capacity) {
            if request.kind == VolumeKind::Filesystem && request.params.quota_type == QuotaType::RefQuota {
                return Err(Status::out_of_range(format!(
                    "the source {} references {referenced} bytes, more than the requested {} bytes: a clone's \
                     refquota cannot be below what it references; ask for at least {referenced} bytes",
                    origin.snapshot.dataset(),
                    request.capacity
                )));
            }
        }
        let took_snapshot = match &origin.take_snapshot {
            None => false,
            Some(snapshot_props) => match self.driver.take_snapshot(&origin.snapshot, snapshot_props).await {
                Ok(()) => true,
                // Left by an interrupted earlier attempt for this same clone.
                Err(ZfsError::AlreadyExists(_)) => false,
                Err(e) => return Err(zfs_status(&format!("snapshotting source volume {}", origin.snapshot.dataset()), e)),
            },
        };
        if let Some(raw) = origin.copy_raw {
            return self.create_copy(request, origin, props, raw).await;
        }
        self.load_source_key(request, origin.snapshot.dataset()).await?;
        if let Err(e) = zfs.clone_snapshot(&origin.snapshot, &request.name, props).await {
            if took_snapshot {
                self.discard_internal_snapshot(&origin.snapshot).await;
            }
            return Err(zfs_status(&format!("cloning {} into volume {}", origin.snapshot, request.name), e));
        }
        match self.finish_clone(request).await {
            Ok(created) => Ok(created),
            Err(status) => {
                self.discard_half_made_clone(request, origin, took_snapshot).await;
                Err(status)
            }
        }
    }

    /// A restore into another pool than the replica's: `zfs send | zfs receive` of the
    /// replica's snapshot, the received snapshot destroyed (the volume is independent of the
    /// replica), then grown like a clone. What fails after the receive is undone.
    async fn create_copy(&self, request: &VolumeRequest, origin: &CloneOrigin, props: &Properties, raw: bool) -> Result<VolumeInfo, Status> {
        let zfs = &self.driver.zfs;
        let what = format!("copying {} into volume {}", origin.snapshot, request.name);
        let stream = crate::zfs::SendStream::Full { snapshot: origin.snapshot.clone(), raw };
        let bytes = zfs.send_receive(&stream, &request.name, false, props).await.map_err(|e| zfs_status(&what, e))?;
        tracing::info!(volume = %request.name, source = %origin.snapshot, bytes, "restored by copy from the replica");
        let received = request
            .name
            .snapshot(origin.snapshot.short_name())
            .map_err(|e| Status::internal(format!("{what}: {e}")))?;
        let finished = match zfs.destroy_snapshot(&received, Destroy::Now).await {
            Ok(()) | Err(ZfsError::NotFound(_)) => self.finish_clone(request).await,
            Err(e) => Err(zfs_status(&format!("{what}: destroying the received snapshot"), e)),
        };
        if finished.is_err() {
            self.discard_internal_snapshot(&received).await;
            self.discard_half_made_clone(request, origin, false).await;
        }
        finished
    }

    /// ZFS clones an encrypted snapshot only while its encryption root's key is loaded (the
    /// clone stays under that root). After a reboot it is not, until a volume of that root is
    /// staged: a root keyed from a Secret gets its key from the request's provisioner secret
    /// (the class of a clone or restore names its source's Secret), any other from its
    /// `keylocation`.
    pub(super) async fn load_source_key(&self, request: &VolumeRequest, source: &DatasetName) -> Result<(), Status> {
        let zfs = &self.driver.zfs;
        let dataset = zfs
            .get_one(source, &["encryption", "encryptionroot", "keystatus", "keylocation"])
            .await
            .map_err(|e| zfs_status(&format!("reading the encryption of {source}"), e))?;
        if matches!(dataset.get("encryption"), None | Some("off") | Some("-")) || dataset.get("keystatus") == Some("available") {
            return Ok(());
        }
        let root = match dataset.get("encryptionroot").map(DatasetName::parse) {
            Some(Ok(root)) => root,
            _ => return Err(Status::internal(format!("{source} is encrypted but has no encryption root"))),
        };
        let prompt = self.key_location(&dataset).await? == "prompt";
        if prompt && request.key.is_none() {
            return Err(Status::failed_precondition(format!(
                "the key of {root}, the encryption root of the source {source}, is not loaded on node {}: give the \
                 class the source's Secret as csi.storage.k8s.io/provisioner-secret-name and -namespace, or stage \
                 a volume of that root first",
                self.driver.node_id
            )));
        }
        zfs.load_key(&root, if prompt { request.key.as_ref() } else { None })
            .await
            .map_err(|e| zfs_status(&format!("loading the key of {root} to clone {source}"), e))
    }

    /// Reads a new clone back and grows it to the requested size.
    pub(super) async fn finish_clone(&self, request: &VolumeRequest) -> Result<VolumeInfo, Status> {
        let mut created = self.driver.volume(&request.name).await?.ok_or_else(|| {
            Status::internal(format!("clone {} is missing right after its creation", request.name))
        })?;
        if created.capacity < request.capacity {
            self.resize(&created, request.capacity, &request.params).await?;
            // resize sets volsize or the quota to exactly this.
            created.capacity = request.capacity;
        }
        Ok(created)
    }

    /// Destroys a clone whose creation failed after `zfs clone`, if it carries our marker set
    /// on itself, and the internal snapshot taken for it. Failures are only logged: the RPC
    /// answers with the error that brought it here, and a retry finds what is left.
    pub(super) async fn discard_half_made_clone(&self, request: &VolumeRequest, origin: &CloneOrigin, took_snapshot: bool) {
        match self.driver.volume(&request.name).await {
            Ok(Some(clone)) if clone.managed => {
                let deleted = self.driver.zfs.delete_if_owned(
                    &request.name,
                    prop::MANAGED_BY,
                    &self.driver.name,
                    prop::DELETED,
                    crate::reaper::RELEASE_ORIGIN,
                );
                match deleted.await {
                    Ok(OwnedDelete::Destroyed { .. } | OwnedDelete::NotFound) => {
                        tracing::info!(volume = %request.name, "half-made clone destroyed")
                    }
                    Ok(other) => return tracing::warn!(volume = %request.name, outcome = ?other, "the half-made clone was not destroyed"),
                    Err(e) => return tracing::warn!(volume = %request.name, "cannot destroy the half-made clone: {e}"),
                }
            }
            Ok(Some(_)) => return tracing::warn!(volume = %request.name, "half-made clone without our marker: left in place"),
            Ok(None) => {}
            Err(status) => {
                return tracing::warn!(volume = %request.name, "cannot read the half-made clone: {}", status.message())
            }
        }
        if took_snapshot {
            self.discard_internal_snapshot(&origin.snapshot).await;
        }
    }

    /// Destroys the internal snapshot this request took, when its clone was not made.
    pub(super) async fn discard_internal_snapshot(&self, snapshot: &SnapshotName) {
        match self.driver.zfs.destroy_snapshot(snapshot, Destroy::Now).await {
            Ok(()) | Err(ZfsError::NotFound(_)) => {}
            Err(e) => tracing::warn!(snapshot = %snapshot, "cannot destroy the snapshot taken for a failed clone: {e}"),
        }
    }

    /// INVALID_ARGUMENT when `origin` (of `volume`, read as `dataset`) cannot be cloned for
    /// `request`: another pool, another kind, or creation-only properties in the class that
    /// differ from the source's (a clone keeps its origin's; equal values are fine).
    pub(super) async fn check_clone_source(&self, request: &VolumeRequest, origin: &SnapshotName, volume: &VolumeInfo, dataset: &Dataset, copied: bool) -> Result<(), Status> {
        if !copied && origin.dataset().pool() != request.name.pool() {
            return Err(Status::invalid_argument(format!(
                "the source {origin} is in pool {}, the new volume in pool {}: ZFS clones stay within a pool",
                origin.dataset().pool(),
                request.name.pool()
            )));
        }
        if volume.kind != request.kind {
            return Err(Status::invalid_argument(format!(
                "the source {origin} is a {} but the request asks for a {}",
                volume.kind.as_str(),
                request.kind.as_str()
            )));
        }
        let mut conflicts = Vec::new();
        for (property, wanted) in request.params.creation_only_properties() {
            let actual = match property {
                "keylocation" => self.key_location(dataset).await?,
                _ => dataset.get(property).unwrap_or("-").to_string(),
            };
            if !same_setting(property, &wanted, &actual) {
                conflicts.push(format!("{property}={wanted} (the source has {actual})"));
            }
        }
        if !conflicts.is_empty() {
            return Err(Status::invalid_argument(format!(
                "the StorageClass sets creation-only properties that differ from the source {}'s: {}; a clone \
                 keeps its source's, so use a class that leaves them out or matches them",
                origin.dataset(),
                conflicts.join(", ")
            )));
        }
        Ok(())
    }

    /// Where the key of `dataset` is: the `keylocation` of its encryption root (a dataset
    /// that is not its own root shows `none`); `none` when it is not encrypted.
    pub(super) async fn key_location(&self, dataset: &Dataset) -> Result<String, Status> {
        let own = dataset.get("keylocation").unwrap_or("none").to_string();
        let root = match dataset.get("encryptionroot").map(DatasetName::parse) {
            Some(Ok(root)) if root.as_str() != dataset.name => root,
            _ => return Ok(own),
        };
        let root_dataset = self
            .driver
            .zfs
            .get_one(&root, &["keylocation"])
            .await
            .map_err(|e| zfs_status(&format!("reading the key location of {root}"), e))?;
        Ok(root_dataset.get("keylocation").unwrap_or("none").to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_source_round_trips_through_its_property() {
        let source = ContentSource::Snapshot(SnapshotName::parse("vms/a@s1").unwrap());
        let back = content_source_from_property(&source.to_property()).unwrap();
        assert_eq!(back, source.to_csi());
        let source = ContentSource::Volume(DatasetName::parse("vms/a").unwrap());
        assert_eq!(content_source_from_property(&source.to_property()).unwrap(), source.to_csi());
        assert!(content_source_from_property("garbage").is_none());
    }
}

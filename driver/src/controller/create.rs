//! CreateVolume: the request, the properties a new volume gets, idempotency, and the adoption
//! of what a creation cut short by a power loss left.

use super::*;

/// What a CreateVolume request asks for, once validated.
pub(super) struct VolumeRequest {
    pub(super) csi_name: String,
    pub(super) name: DatasetName,
    pub(super) kind: VolumeKind,
    /// The filesystem on a zvol; `None` for a raw block zvol and for datasets.
    pub(super) zvol_fstype: Option<FsType>,
    pub(super) capacity: u64,
    pub(super) range: Option<csi::CapacityRange>,
    pub(super) params: VolumeParams,
    /// The VolumeAttributesClass's parameters (`mutable_parameters`).
    pub(super) mutable: MutableParams,
    /// The key from the provisioner secret: the volume becomes its own encryption root.
    pub(super) key: Option<KeyMaterial>,
    pub(super) source: Option<ContentSource>,
    /// The provisioner placed the volume on a node (accessibility requirements were sent, as
    /// with topology-aware provisioning under WaitForFirstConsumer).
    pub(super) placed: bool,
}

impl VolumeRequest {
    pub(super) fn fstype_property(&self) -> &'static str {
        match (self.kind, self.zvol_fstype) {
            (VolumeKind::Filesystem, _) => "zfs",
            (VolumeKind::Zvol, Some(fs)) => fs.as_str(),
            (VolumeKind::Zvol, None) => "block",
        }
    }

    /// The VolumeAttributesClass parameters that apply to this volume's kind, as recorded.
    pub(super) fn mutable_applied(&self) -> MutableParams {
        MutableParams { properties: self.mutable.applicable(self.kind == VolumeKind::Zvol) }
    }

    /// The volume as just made from this request: everything in it was given to the
    /// `zfs create -o` that succeeded (or set on adoption), so reading it back would only
    /// cost a command.
    pub(super) fn created_volume(&self, origin: Option<&SnapshotName>) -> VolumeInfo {
        VolumeInfo {
            name: self.name.clone(),
            kind: self.kind,
            managed: true,
            csi_name: Some(self.csi_name.clone()),
            capacity: self.capacity,
            content_source: self.source.as_ref().map(ContentSource::to_property),
            parameters: Some(canonical_parameters(&self.params.storage_class)),
            mutable_parameters: Some(self.mutable_applied().canonical()).filter(|m| !m.is_empty()),
            key_from_secret: self.key.is_some(),
            fstype: Some(self.fstype_property().to_string()),
            shared: self.params.shared,
            deleted: false,
            origin: origin.map(SnapshotName::to_string),
        }
    }

    /// The granule a size is rounded to: a zvol's volblocksize (its origin's for a clone).
    pub(super) fn granule(&self, origin: Option<&CloneOrigin>) -> u64 {
        match (self.kind, origin.and_then(|o| o.volblocksize)) {
            (VolumeKind::Filesystem, _) => 1,
            (VolumeKind::Zvol, Some(block)) => block,
            (VolumeKind::Zvol, None) => self.params.volblocksize.unwrap_or(DEFAULT_ZVOL_GRANULE),
        }
    }
}

/// Capacity of a volume when the request gives none.
pub(super) const DEFAULT_CAPACITY: u64 = 1 << 30;

/// The smallest volume: a smaller `refquota` is below what an empty dataset already holds
/// (`zfs create -o refquota=1` fails "out of space", a retry can never fix), and a
/// filesystem on a zvol needs room for its own metadata. A multiple of every volblocksize up
/// to 1 MiB. Smaller requests get this size (CSI lets a volume be larger than required);
/// GetCapacity reports it as `minimum_volume_size`.
pub(super) const MIN_VOLUME_SIZE: u64 = 1 << 20;

/// A new zvol's size must be a multiple of its volblocksize. Without an explicit one we round
/// to 16 KiB, the default since OpenZFS 2.2 and a multiple of 2.1's 8 KiB. A clone's size is
/// rounded to its origin's volblocksize instead, which it keeps.
pub(super) const DEFAULT_ZVOL_GRANULE: u64 = 16 << 10;

/// The most an unmarked dataset may have `written` and still count as empty, to be adopted
/// (`adoption_refusal`): an empty filesystem holds 24 KiB of metadata on a pool with 512-byte
/// sectors, 96 KiB with 4 KiB sectors, more with encryption (87 KiB at 512 bytes), raidz
/// or `copies`; an empty zvol less; a new clone nothing.
pub(super) const PRISTINE_WRITTEN: u64 = 1 << 20;

/// Why `dataset`, found without our marker at the name `request` derives, is not what a
/// `zfs create -o` or `zfs clone -o` of this request leaves when a power loss cuts it between
/// its two sync tasks (see `adopt`); `None` when it is. Such a leftover has none of our
/// properties; locally set only what the first sync task sets (`volsize`, an encryption
/// root's `keylocation`) and what the second sets one by one before the rest (quotas and
/// reservations), each with the request's value; the creation-only properties the class
/// asks for; the requested origin exactly when it is a clone; and next to nothing written.
/// Nothing received. (Snapshots and children are the caller's check.)
pub(super) fn adoption_refusal(dataset: &Dataset, request: &VolumeRequest, origin: Option<&SnapshotName>, props: &Properties) -> Option<String> {
    let kind = match dataset.dataset_type() {
        Some(DatasetType::Filesystem) => VolumeKind::Filesystem,
        Some(DatasetType::Volume) => VolumeKind::Zvol,
        _ => return Some("it is neither a filesystem nor a volume".into()),
    };
    if kind != request.kind {
        return Some(format!("it is a {}, the request asks for a {}", kind.as_str(), request.kind.as_str()));
    }
    let found_origin = dataset.get("origin").filter(|o| *o != "-");
    let wanted_origin = origin.map(SnapshotName::to_string);
    if found_origin != wanted_origin.as_deref() {
        return Some(match (found_origin, wanted_origin) {
            (Some(found), Some(wanted)) => format!("it is a clone of {found}, not of {wanted}"),
            (Some(found), None) => format!("it is a clone of {found}"),
            (None, _) => "it is not a clone".into(),
        });
    }
    match dataset.get_u64("written") {
        Some(written) if written <= PRISTINE_WRITTEN => {}
        Some(written) => return Some(format!("{written} bytes were written to it")),
        None => return Some("its written bytes are unknown".into()),
    }
    for (name, value) in &dataset.properties {
        match value.source {
            PropertySource::Local => {}
            PropertySource::Received => return Some(format!("it was received ({name} is a received property)")),
            _ => continue,
        }
        if name.starts_with(prop::PREFIX) {
            return Some(format!("it carries {name}={}", value.value));
        }
        let given = props.iter().any(|(k, v)| k == name && *v == value.value);
        let from_creation = match name.as_str() {
            "volsize" => match (kind, origin, value.value.parse::<u64>()) {
                (VolumeKind::Zvol, None, Ok(size)) => size == request.capacity,
                // A clone has its origin's size until it is grown.
                (VolumeKind::Zvol, Some(_), Ok(size)) => size <= request.capacity,
                _ => false,
            },
            // libzfs adds the reservation of a non-sparse zvol itself.
            "refreservation" => kind == VolumeKind::Zvol && !request.params.thin,
            "keylocation" => origin.is_none() && request.params.keylocation.as_deref() == Some(value.value.as_str()),
            _ => false,
        };
        if !given && !from_creation {
            return Some(format!("{name}={} is set on it", value.value));
        }
    }
    if origin.is_none() {
        for (property, wanted) in request.params.creation_only_properties() {
            let actual = dataset.get(property).unwrap_or("-");
            if !same_setting(property, &wanted, actual) {
                return Some(format!("its {property} is {actual}, the class asks for {wanted}"));
            }
        }
    }
    None
}

pub(super) fn round_up(value: u64, granule: u64) -> Option<u64> {
    value.div_ceil(granule).checked_mul(granule)
}

/// The capacity to provision (CSI CapacityRange semantics): at least `required_bytes` and
/// `MIN_VOLUME_SIZE`, at most `limit_bytes`, rounded up to `granule`, `default` when the range
/// names no size; OUT_OF_RANGE when no such size exists.
pub(super) fn capacity_from_range(range: Option<&csi::CapacityRange>, granule: u64, default: u64) -> Result<u64, Status> {
    let (required, limit) = range.map(|r| (r.required_bytes, r.limit_bytes)).unwrap_or((0, 0));
    if required < 0 || limit < 0 {
        return Err(Status::invalid_argument("capacity_range: bytes must not be negative"));
    }
    let (required, limit) = (required as u64, limit as u64);
    if limit > 0 && limit < required {
        return Err(Status::invalid_argument(format!(
            "capacity_range: limit_bytes {limit} is below required_bytes {required}"
        )));
    }
    let wanted = if required > 0 {
        required
    } else if limit > 0 {
        default.min(limit)
    } else {
        default
    };
    let size = round_up(wanted.max(MIN_VOLUME_SIZE), granule)
        .ok_or_else(|| Status::out_of_range("capacity_range: too large"))?;
    if limit > 0 && size > limit {
        return Err(Status::out_of_range(format!(
            "capacity_range: {wanted} bytes, raised to the minimum volume size {MIN_VOLUME_SIZE} and rounded up to \
             the block size {granule}, is {size}, above limit_bytes {limit}"
        )));
    }
    if size > i64::MAX as u64 {
        return Err(Status::out_of_range("capacity_range: too large"));
    }
    Ok(size)
}

impl ControllerService {
    pub(super) fn default_parent(&self) -> &DatasetName {
        // Config parsing guarantees at least one parent.
        &self.driver.parents[0]
    }

    pub(super) fn resolve_parent(&self, params: &VolumeParams) -> Result<DatasetName, Status> {
        let parent = params.parent.clone().unwrap_or_else(|| self.default_parent().clone());
        if !self.driver.parents.iter().any(|p| parent.is_same_or_under(p)) {
            let parents: Vec<&str> = self.driver.parents.iter().map(|p| p.as_str()).collect();
            return Err(Status::invalid_argument(format!(
                "poolname {parent} is not served by this node (parents: {})",
                parents.join(", ")
            )));
        }
        Ok(parent)
    }

    /// Validates a CreateVolume request into what to create.
    pub(super) fn volume_request(&self, req: &csi::CreateVolumeRequest) -> Result<VolumeRequest, Status> {
        if req.name.is_empty() {
            return Err(missing("name"));
        }
        validate_component(&req.name)
            .map_err(|e| Status::invalid_argument(format!("name {:?} cannot name a dataset: {e}", req.name)))?;
        if req.volume_capabilities.is_empty() {
            return Err(missing("volume_capabilities"));
        }
        let access: Vec<AccessType> =
            req.volume_capabilities.iter().map(capability::parse).collect::<Result<_, _>>()?;
        let mut params = VolumeParams::parse(&req.parameters).map_err(Status::invalid_argument)?;
        let mutable = MutableParams::parse(&req.mutable_parameters)
            .map_err(|e| Status::invalid_argument(format!("mutable_parameters (VolumeAttributesClass): {e}")))?;
        // The key never goes into a message: only whether and why it was refused.
        let key = match req.secrets.get(SECRET_KEY) {
            Some(key) => {
                params
                    .use_key_from_secret(key)
                    .map_err(|e| Status::invalid_argument(format!("provisioner secret: {e}")))?;
                Some(KeyMaterial::new(key.as_bytes()))
            }
            None => None,
        };
        let parent = self.resolve_parent(&params)?;
        if let Some(requirement) = &req.accessibility_requirements {
            if !requirement.requisite.is_empty()
                && !requirement.requisite.iter().any(|t| topology_matches(&self.driver, t))
            {
                return Err(Status::resource_exhausted(format!(
                    "the requisite topology does not include this node ({}={}); its pools are local to it",
                    self.driver.topology_key(),
                    self.driver.node_id
                )));
            }
        }
        let wants_block = access.contains(&AccessType::Block);
        let mount_fs: Vec<FsType> = access
            .iter()
            .filter_map(|a| match a {
                AccessType::Mount { fs_type, .. } => *fs_type,
                AccessType::Block => None,
            })
            .collect();
        if wants_block && access.iter().any(|a| matches!(a, AccessType::Mount { .. })) {
            return Err(Status::invalid_argument(
                "volume_capabilities ask for both block and mount access; a volume is one or the other",
            ));
        }
        let (kind, zvol_fstype) = if wants_block {
            // A raw block volume is a zvol whatever the class's fstype says.
            (VolumeKind::Zvol, None)
        } else {
            let fstype = match (params.fstype, mount_fs.first()) {
                (Some(p), Some(c)) if p != *c => {
                    return Err(Status::invalid_argument(format!(
                        "the StorageClass fstype {} differs from the capability's fs_type {}",
                        p.as_str(),
                        c.as_str()
                    )))
                }
                (Some(p), _) => p,
                (None, Some(c)) => *c,
                (None, None) => FsType::Zfs,
            };
            if mount_fs.iter().any(|f| *f != fstype) {
                return Err(Status::invalid_argument("volume_capabilities name different fs_types"));
            }
            match fstype {
                FsType::Zfs => (VolumeKind::Filesystem, None),
                other => (VolumeKind::Zvol, Some(other)),
            }
        };
        if kind == VolumeKind::Filesystem && params.volblocksize.is_some() {
            return Err(Status::invalid_argument("volblocksize applies to zvols only (block or ext4/xfs/btrfs)"));
        }
        let placed = req.accessibility_requirements.is_some();
        let source = match req.volume_content_source.as_ref().and_then(|s| s.r#type.as_ref()) {
            None => None,
            Some(volume_content_source::Type::Snapshot(s)) => Some(ContentSource::Snapshot(
                self.driver.snapshot_name(&s.snapshot_id)?.ok_or_else(|| {
                    self.source_elsewhere(placed, Status::not_found(format!("source snapshot {} does not exist", s.snapshot_id)))
                })?,
            )),
            Some(volume_content_source::Type::Volume(v)) => Some(ContentSource::Volume(
                self.driver.volume_name(&v.volume_id)?.ok_or_else(|| {
                    self.source_elsewhere(placed, Status::not_found(format!("source volume {} does not exist", v.volume_id)))
                })?,
            )),
        };
        let name = parent
            .child(&req.name)
            .map_err(|e| Status::invalid_argument(format!("name {:?}: {e}", req.name)))?;
        let mut request = VolumeRequest {
            csi_name: req.name.clone(),
            name,
            kind,
            zvol_fstype,
            capacity: 0,
            range: req.capacity_range,
            params,
            mutable,
            key,
            source,
            placed,
        };
        // A clone's size is settled once its source is known (`create_volume`); the range is
        // checked here all the same, in the spec's order.
        request.capacity = capacity_from_range(request.range.as_ref(), request.granule(None), DEFAULT_CAPACITY)?;
        Ok(request)
    }

    /// Properties set at creation: our state, then the StorageClass's ZFS properties that
    /// differ from the parent's effective values (equal ones stay inherited). A clone gets no
    /// creation-only properties (it has its origin's, which `resolve_source` compared with the
    /// class) and, when thick, the reservation `zfs create -V` gives a zvol by itself.
    pub(super) async fn creation_properties(&self, request: &VolumeRequest, origin: Option<&CloneOrigin>) -> Result<Properties, Status> {
        let mut props: Properties = Vec::new();
        let mut push = |k: &str, v: String| props.push((k.to_string(), v));
        push(prop::MANAGED_BY, self.driver.name.clone());
        push(prop::CSI_NAME, request.csi_name.clone());
        push(prop::CAPACITY, request.capacity.to_string());
        push(prop::PARAMETERS, canonical_parameters(&request.params.storage_class));
        if let Some(source) = &request.source {
            push(prop::CONTENT_SOURCE, source.to_property());
        }
        push(prop::FSTYPE, request.fstype_property().to_string());
        if request.params.shared {
            push(prop::SHARED, "yes".to_string());
        }
        let mutable = request.mutable_applied();
        if !mutable.is_empty() {
            push(prop::MUTABLE_PARAMETERS, mutable.canonical());
        }
        if request.key.is_some() {
            push(prop::KEY_SOURCE, "secret".to_string());
        }
        let metadata = &request.params.metadata;
        for (key, value) in [
            (prop::PVC_NAME, &metadata.pvc_name),
            (prop::PVC_NAMESPACE, &metadata.pvc_namespace),
            (prop::PV_NAME, &metadata.pv_name),
        ] {
            if let Some(v) = value {
                push(key, v.clone());
            }
        }
        // The VolumeAttributesClass's values over the StorageClass's: the class a PVC names
        // for its attributes is the more specific choice.
        let mut wanted: BTreeMap<&str, String> = request.params.zfs_properties().into_iter().collect();
        wanted.extend(mutable.properties);
        let wanted: Vec<(&str, String)> = wanted
            .into_iter()
            .filter(|(k, _)| !(request.kind == VolumeKind::Zvol && *k == "recordsize"))
            .collect();
        if !wanted.is_empty() {
            let parent = request.name.parent().unwrap_or_else(|| request.name.clone());
            let keys: Vec<&str> = wanted.iter().map(|(k, _)| *k).collect();
            let effective = self
                .driver
                .zfs
                .get_one(&parent, &keys)
                .await
                .map_err(|e| zfs_status(&format!("reading the properties of {parent}"), e))?;
            for (key, value) in wanted {
                if effective.get(key) != Some(value.as_str()) {
                    props.push((key.to_string(), value));
                }
            }
        }
        if origin.is_none() {
            for (key, value) in request.params.creation_only_properties() {
                props.push((key.to_string(), value));
            }
        }
        if request.kind == VolumeKind::Filesystem {
            // The node mounts datasets itself (`mount -t zfs`), never ZFS automount.
            props.push(("mountpoint".to_string(), "legacy".to_string()));
            let quota = match request.params.quota_type {
                QuotaType::RefQuota => ("refquota", "refreservation"),
                QuotaType::Quota => ("quota", "reservation"),
            };
            props.push((quota.0.to_string(), request.capacity.to_string()));
            if !request.params.thin {
                props.push((quota.1.to_string(), request.capacity.to_string()));
            }
        } else if origin.is_some() && !request.params.thin {
            // "auto": the reservation libzfs gives a non-sparse `zfs create -V`, for the
            // origin's volsize; a larger clone gets it again with its new size (`resize`).
            props.push(("refreservation".to_string(), "auto".to_string()));
        }
        Ok(props)
    }

    /// A repeated CreateVolume: the same volume when the arguments are compatible, after
    /// finishing a resize that a crash may have interrupted; a dataset that a creation cut
    /// short left without our properties is adopted (`adopt`); ALREADY_EXISTS otherwise.
    pub(super) async fn existing_volume(&self, request: &VolumeRequest, origin: Option<&CloneOrigin>, props: &Properties) -> Result<VolumeInfo, Status> {
        let conflict = |why: &str| {
            Status::already_exists(format!(
                "volume {} already exists with {why}; use another name or the original arguments",
                request.name
            ))
        };
        let existing = self
            .driver
            .volume(&request.name)
            .await?
            .ok_or_else(|| Status::aborted(format!("volume {} vanished while being created; retry", request.name)))?;
        if !existing.managed {
            return self.adopt(request, origin, props).await;
        }
        if existing.csi_name.as_deref() != Some(request.csi_name.as_str()) {
            return Err(conflict("a dataset that this driver did not create for this request"));
        }
        if existing.deleted {
            return Err(conflict("a deleted volume kept for its snapshots"));
        }
        if existing.kind != request.kind {
            return Err(conflict(&format!("kind {}", existing.kind.as_str())));
        }
        if existing.parameters.as_deref() != Some(canonical_parameters(&request.params.storage_class).as_str()) {
            return Err(conflict("different StorageClass parameters"));
        }
        if existing.mutable_parameters.as_deref().unwrap_or_default() != request.mutable_applied().canonical() {
            return Err(conflict("different VolumeAttributesClass parameters (mutable_parameters, or modified since)"));
        }
        if existing.key_from_secret != request.key.is_some() {
            return Err(conflict("another source of its encryption key (provisioner secret or not)"));
        }
        if existing.content_source != request.source.as_ref().map(ContentSource::to_property) {
            return Err(conflict("a different content source"));
        }
        let stored: u64 = self
            .driver
            .zfs
            .get_one(&request.name, &[prop::CAPACITY])
            .await
            .map_err(|e| zfs_status(&format!("reading volume {}", request.name), e))?
            .get_u64(prop::CAPACITY)
            .unwrap_or(existing.capacity);
        if stored != request.capacity {
            return Err(conflict(&format!("capacity {stored} bytes")));
        }
        if existing.capacity < stored {
            self.resize(&existing, stored, &request.params).await?;
            return self.driver.volume(&request.name).await?.ok_or_else(|| {
                Status::aborted(format!("volume {} vanished while being created; retry", request.name))
            });
        }
        Ok(existing)
    }

    /// Adopts the dataset at the request's name, which carries no marker, if a creation for
    /// this request that was cut short left it; ALREADY_EXISTS otherwise.
    ///
    /// `zfs create -o` and `zfs clone -o` are one ioctl but two sync tasks in OpenZFS: the
    /// dataset is made in the first, its properties (our markers among them) are set in the
    /// second. A power loss between the two leaves a dataset with exactly our derived name
    /// and none of our properties, and every retry would answer ALREADY_EXISTS for ever. So
    /// a dataset that is exactly such a leftover (`adoption_refusal`: no snapshots, no
    /// children, next to nothing written, only properties the request itself gives, the
    /// requested origin) gets the properties the creation would have set, and is the
    /// volume. Anything else is somebody else's: refused, and never destroyed or changed.
    pub(super) async fn adopt(&self, request: &VolumeRequest, origin: Option<&CloneOrigin>, props: &Properties) -> Result<VolumeInfo, Status> {
        let zfs = &self.driver.zfs;
        let found = zfs
            .get(&request.name, &["all"], Depth::Levels(1), &[])
            .await
            .map_err(|e| zfs_status(&format!("reading {}", request.name), e))?;
        let dataset = found
            .iter()
            .find(|d| d.name == request.name.as_str())
            .ok_or_else(|| Status::aborted(format!("volume {} vanished while being created; retry", request.name)))?;
        // Our marker now, though not a moment ago: an earlier attempt's `zfs create`, which
        // outlived its killed driver, has just set its properties (its second sync task). The
        // retry compares it as the volume it is.
        if dataset.property(prop::MANAGED_BY).is_some_and(|p| p.source == PropertySource::Local && p.value == self.driver.name) {
            return Err(Status::aborted(format!(
                "volume {} was still being created by an earlier attempt; retry",
                request.name
            )));
        }
        let refusal = if found.len() > 1 {
            Some("it has snapshots or child datasets".to_string())
        } else {
            adoption_refusal(dataset, request, origin.map(|o| &o.snapshot), props)
        };
        if let Some(why) = refusal {
            return Err(Status::already_exists(format!(
                "{} already exists and was not created by this driver for this request ({why}); it is left as it is: \
                 use another name, or destroy or rename the dataset",
                request.name
            )));
        }
        // Creation-only properties were checked, and cannot be set; everything else is set as
        // `zfs create -o` or `zfs clone -o` would have, with what the second sync task adds
        // to a thick zvol and a larger clone.
        let creation_only: Vec<&str> = request.params.creation_only_properties().iter().map(|(k, _)| *k).collect();
        let mut set: Properties = props.iter().filter(|(k, _)| !creation_only.contains(&k.as_str())).cloned().collect();
        if request.kind == VolumeKind::Zvol {
            if dataset.get_u64("volsize").is_some_and(|size| size < request.capacity) {
                set.push(("volsize".to_string(), request.capacity.to_string()));
            }
            if !request.params.thin && !set.iter().any(|(k, _)| k == "refreservation") {
                set.push(("refreservation".to_string(), "auto".to_string()));
            }
        }
        zfs.set(&request.name, &set)
            .await
            .map_err(|e| zfs_status(&format!("adopting {}", request.name), e))?;
        tracing::warn!(volume = %request.name,
            "found without our properties, as a creation cut short between its two sync tasks leaves it: adopted");
        Ok(request.created_volume(origin.map(|o| &o.snapshot)))
    }

    /// Grows a clone to its requested capacity.
    pub(super) async fn resize(&self, volume: &VolumeInfo, capacity: u64, params: &VolumeParams) -> Result<(), Status> {
        let mut props: Properties = Vec::new();
        match volume.kind {
            VolumeKind::Zvol => {
                props.push(("volsize".to_string(), capacity.to_string()));
                if !params.thin {
                    // "auto" keeps a thick zvol's reservation equal to its size.
                    props.push(("refreservation".to_string(), "auto".to_string()));
                }
            }
            VolumeKind::Filesystem => {
                let (quota, reservation) = match params.quota_type {
                    QuotaType::RefQuota => ("refquota", "refreservation"),
                    QuotaType::Quota => ("quota", "reservation"),
                };
                props.push((quota.to_string(), capacity.to_string()));
                if !params.thin {
                    props.push((reservation.to_string(), capacity.to_string()));
                }
            }
        }
        self.driver
            .zfs
            .set(&volume.name, &props)
            .await
            .map_err(|e| zfs_status(&format!("growing clone {} to {capacity} bytes", volume.name), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(required: i64, limit: i64) -> csi::CapacityRange {
        csi::CapacityRange { required_bytes: required, limit_bytes: limit }
    }

    #[test]
    fn capacity_defaults_rounds_and_respects_limits() {
        const D: u64 = DEFAULT_CAPACITY;
        const M: u64 = MIN_VOLUME_SIZE;
        assert_eq!(capacity_from_range(None, 1, D).unwrap(), D);
        assert_eq!(capacity_from_range(None, 1, 12345 * M).unwrap(), 12345 * M, "a clone defaults to its source's size");
        assert_eq!(capacity_from_range(Some(&range(M as i64 + 1, 0)), 16384, D).unwrap(), M + 16384);
        assert_eq!(capacity_from_range(Some(&range(0, 4 * M as i64)), 1, D).unwrap(), 4 * M);
        assert_eq!(capacity_from_range(Some(&range(1 << 30, 1 << 30)), 16384, D).unwrap(), 1 << 30);
        assert_eq!(capacity_from_range(Some(&range(1, 0)), 1, D).unwrap(), M, "raised to the minimum");
        assert_eq!(capacity_from_range(Some(&range(1000, 0)), 16384, D).unwrap(), M);
        assert_eq!(capacity_from_range(None, 16 << 20, D).unwrap(), D, "a multiple of a 16M block");
        assert_eq!(capacity_from_range(Some(&range(1, 0)), 16 << 20, D).unwrap(), 16 << 20);
        for (required, limit) in [(1000, 2000), (0, 4096), (1, M as i64 - 1)] {
            assert_eq!(
                capacity_from_range(Some(&range(required, limit)), 1, D).unwrap_err().code(),
                tonic::Code::OutOfRange,
                "{required}..{limit} is below the minimum volume size"
            );
        }
        assert_eq!(
            capacity_from_range(Some(&range(M as i64 + 1, M as i64 + 2)), 16384, D).unwrap_err().code(),
            tonic::Code::OutOfRange
        );
        assert_eq!(
            capacity_from_range(Some(&range(2000, 1000)), 1, D).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            capacity_from_range(Some(&range(-1, 0)), 1, D).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }

    fn request(kind: VolumeKind, pairs: &[(&str, &str)]) -> VolumeRequest {
        let parameters = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        VolumeRequest {
            csi_name: "pvc-1".into(),
            name: DatasetName::parse("vms/pvc-1").unwrap(),
            kind,
            zvol_fstype: None,
            capacity: 64 << 20,
            range: None,
            params: VolumeParams::parse(&parameters).unwrap(),
            mutable: MutableParams::default(),
            key: None,
            source: None,
            placed: false,
        }
    }

    /// `zfs get -p all` of a leftover: `(property, value, source)`.
    fn leftover(props: &[(&str, &str, &str)]) -> Dataset {
        Dataset {
            name: "vms/pvc-1".into(),
            properties: props
                .iter()
                .map(|(k, v, s)| {
                    (k.to_string(), crate::zfs::PropertyValue { value: v.to_string(), source: PropertySource::parse(s) })
                })
                .collect(),
        }
    }

    fn ours(pairs: &[(&str, &str)]) -> Properties {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn a_leftover_of_an_interrupted_creation_is_adoptable() {
        let fs = request(VolumeKind::Filesystem, &[]);
        let props = ours(&[(prop::MANAGED_BY, "zfs-csi.io"), ("mountpoint", "legacy"), ("refquota", "67108864")]);
        let bare = [("type", "filesystem", "-"), ("origin", "-", "-"), ("written", "24576", "-"), ("compression", "lz4", "inherited from vms")];
        assert_eq!(adoption_refusal(&leftover(&bare), &fs, None, &props), None);
        // The second sync task sets quotas one by one before the rest.
        let mut partial = bare.to_vec();
        partial.push(("refquota", "67108864", "local"));
        assert_eq!(adoption_refusal(&leftover(&partial), &fs, None, &props), None);

        let zvol = request(VolumeKind::Zvol, &[("volblocksize", "64k"), ("encryption", "on"), ("keylocation", "file:///k")]);
        let zvol_leftover = [
            ("type", "volume", "-"),
            ("written", "52224", "-"),
            ("volsize", "67108864", "local"),
            ("refreservation", "69206016", "local"),
            ("volblocksize", "65536", "-"),
            ("encryption", "aes-256-gcm", "-"),
            ("keylocation", "file:///k", "local"),
        ];
        assert_eq!(adoption_refusal(&leftover(&zvol_leftover), &zvol, None, &Vec::new()), None);

        let clone_of = SnapshotName::parse("vms/a@s").unwrap();
        let clone = [("type", "volume", "-"), ("origin", "vms/a@s", "-"), ("written", "0", "-"), ("volsize", "33554432", "local")];
        assert_eq!(adoption_refusal(&leftover(&clone), &request(VolumeKind::Zvol, &[]), Some(&clone_of), &Vec::new()), None);
    }

    #[test]
    fn anything_but_such_a_leftover_is_refused() {
        let fs = request(VolumeKind::Filesystem, &[]);
        let props = ours(&[("mountpoint", "legacy"), ("refquota", "67108864")]);
        let base = vec![("type", "filesystem", "-"), ("written", "24576", "-")];
        let with = |extra: &[(&'static str, &'static str, &'static str)]| {
            let mut all = base.clone();
            all.extend_from_slice(extra);
            leftover(&all)
        };
        let refused = |d: &Dataset, r: &VolumeRequest, origin: Option<&SnapshotName>| adoption_refusal(d, r, origin, &props);
        assert!(refused(&with(&[("written", "52428800", "-")]), &fs, None).unwrap().contains("written"));
        assert!(refused(&with(&[("compression", "zstd", "local")]), &fs, None).unwrap().contains("compression=zstd"));
        assert!(refused(&with(&[("refquota", "1048576", "local")]), &fs, None).is_some(), "another size");
        assert!(refused(&with(&[(prop::MANAGED_BY, "other.driver", "local")]), &fs, None).is_some());
        assert!(refused(&with(&[("atime", "off", "received")]), &fs, None).unwrap().contains("received"));
        assert!(refused(&with(&[("origin", "vms/x@y", "-")]), &fs, None).unwrap().contains("clone of vms/x@y"));
        let wanted = SnapshotName::parse("vms/a@s").unwrap();
        assert!(refused(&with(&[]), &fs, Some(&wanted)).unwrap().contains("not a clone"));
        assert!(refused(&with(&[("origin", "vms/b@s", "-")]), &fs, Some(&wanted)).unwrap().contains("not of vms/a@s"));
        let zvol = request(VolumeKind::Zvol, &[]);
        assert!(refused(&with(&[]), &zvol, None).unwrap().contains("asks for a zvol"));
        let zvol_leftover = |size: &'static str, block: &'static str| {
            leftover(&[("type", "volume", "-"), ("written", "12288", "-"), ("volsize", size, "local"), ("volblocksize", block, "default")])
        };
        assert!(refused(&zvol_leftover("33554432", "16384"), &zvol, None).unwrap().contains("volsize"));
        let big_blocks = request(VolumeKind::Zvol, &[("volblocksize", "64k")]);
        assert!(refused(&zvol_leftover("67108864", "16384"), &big_blocks, None).unwrap().contains("volblocksize"));
        let thin = request(VolumeKind::Zvol, &[("thinprovision", "yes")]);
        let mut reserved = vec![("type", "volume", "-"), ("written", "12288", "-"), ("volsize", "67108864", "local")];
        assert_eq!(refused(&leftover(&reserved), &thin, None), None);
        reserved.push(("refreservation", "69206016", "local"));
        assert!(refused(&leftover(&reserved), &thin, None).unwrap().contains("refreservation"));
    }
}

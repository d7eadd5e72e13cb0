//! CSI Controller service: volumes (datasets and zvols), snapshots, clones, capacity.
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
use crate::params::{same_setting, FsType, QuotaType, VolumeParams};
use crate::state::{canonical_parameters, prop, SnapshotInfo, VolumeInfo, VolumeKind, SNAPSHOT_PROPERTIES, VOLUME_PROPERTIES};
use crate::locks::LockKey;
use crate::reaper::{Deleted, Reaper};
use crate::zfs::{
    validate_component, Dataset, DatasetName, DatasetType, Depth, Destroy, OwnedDelete, Properties, PropertySource,
    SnapshotName, ZfsError,
};

/// Capacity of a volume when the request gives none.
const DEFAULT_CAPACITY: u64 = 1 << 30;
/// The smallest volume: a smaller `refquota` is below what an empty dataset already holds
/// (`zfs create -o refquota=1` fails "out of space", a retry can never fix), and a
/// filesystem on a zvol needs room for its own metadata. A multiple of every volblocksize up
/// to 1 MiB. Smaller requests get this size (CSI lets a volume be larger than required);
/// GetCapacity reports it as `minimum_volume_size`.
const MIN_VOLUME_SIZE: u64 = 1 << 20;
/// A new zvol's size must be a multiple of its volblocksize. Without an explicit one we round
/// to 16 KiB, the default since OpenZFS 2.2 and a multiple of 2.1's 8 KiB. A clone's size is
/// rounded to its origin's volblocksize instead, which it keeps.
const DEFAULT_ZVOL_GRANULE: u64 = 16 << 10;
/// The most an unmarked dataset may have `written` and still count as empty, to be adopted
/// (`adoption_refusal`): an empty filesystem holds 24 KiB of metadata on a pool with 512-byte
/// sectors, 96 KiB with 4 KiB sectors, more with encryption (87 KiB at 512 bytes), raidz
/// or `copies`; an empty zvol less; a new clone nothing.
const PRISTINE_WRITTEN: u64 = 1 << 20;

pub struct ControllerService {
    driver: Arc<Driver>,
    reaper: Reaper,
}

impl ControllerService {
    pub fn new(driver: Arc<Driver>, reaper: Reaper) -> Self {
        Self { driver, reaper }
    }
}

/// What a CreateVolume request asks for, once validated.
struct VolumeRequest {
    csi_name: String,
    name: DatasetName,
    kind: VolumeKind,
    /// The filesystem on a zvol; `None` for a raw block zvol and for datasets.
    zvol_fstype: Option<FsType>,
    capacity: u64,
    range: Option<csi::CapacityRange>,
    params: VolumeParams,
    source: Option<ContentSource>,
}

impl VolumeRequest {
    fn fstype_property(&self) -> &'static str {
        match (self.kind, self.zvol_fstype) {
            (VolumeKind::Filesystem, _) => "zfs",
            (VolumeKind::Zvol, Some(fs)) => fs.as_str(),
            (VolumeKind::Zvol, None) => "block",
        }
    }

    /// The volume as just made from this request: everything in it was given to the
    /// `zfs create -o` that succeeded (or set on adoption), so reading it back would only
    /// cost a command.
    fn created_volume(&self, origin: Option<&SnapshotName>) -> VolumeInfo {
        VolumeInfo {
            name: self.name.clone(),
            kind: self.kind,
            managed: true,
            csi_name: Some(self.csi_name.clone()),
            capacity: self.capacity,
            content_source: self.source.as_ref().map(ContentSource::to_property),
            parameters: Some(canonical_parameters(&self.params.storage_class)),
            fstype: Some(self.fstype_property().to_string()),
            shared: self.params.shared,
            deleted: false,
            origin: origin.map(SnapshotName::to_string),
        }
    }

    /// The granule a size is rounded to: a zvol's volblocksize (its origin's for a clone).
    fn granule(&self, origin: Option<&CloneOrigin>) -> u64 {
        match (self.kind, origin.and_then(|o| o.volblocksize)) {
            (VolumeKind::Filesystem, _) => 1,
            (VolumeKind::Zvol, Some(block)) => block,
            (VolumeKind::Zvol, None) => self.params.volblocksize.unwrap_or(DEFAULT_ZVOL_GRANULE),
        }
    }
}

/// The snapshot a clone is made from, and what it was taken of.
struct CloneOrigin {
    snapshot: SnapshotName,
    capacity: u64,
    /// The origin zvol's volblocksize, which the clone keeps; `None` for a filesystem.
    volblocksize: Option<u64>,
    /// Bytes the source volume references, for a volume source: a clone's `refquota` cannot
    /// be below it.
    referenced: Option<u64>,
    /// For a volume source: the driver's own snapshot still to be taken, with its properties.
    take_snapshot: Option<Properties>,
}

#[derive(Clone, Debug)]
enum ContentSource {
    Snapshot(SnapshotName),
    Volume(DatasetName),
}

impl ContentSource {
    fn to_property(&self) -> String {
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

fn content_source_from_property(value: &str) -> Option<csi::VolumeContentSource> {
    let source = if let Some(s) = value.strip_prefix("snapshot:") {
        ContentSource::Snapshot(SnapshotName::parse(s).ok()?)
    } else {
        ContentSource::Volume(DatasetName::parse(value.strip_prefix("volume:")?).ok()?)
    };
    Some(source.to_csi())
}

/// Read with a clone source's volume: the properties a clone takes from its origin and
/// cannot have otherwise, and what it references.
const SOURCE_PROPERTIES: &[&str] = &["volblocksize", "encryption", "keyformat", "keylocation", "encryptionroot", "referenced"];

/// Why `dataset`, found without our marker at the name `request` derives, is not what a
/// `zfs create -o` or `zfs clone -o` of this request leaves when a power loss cuts it between
/// its two sync tasks (see `adopt`); `None` when it is. Such a leftover has none of our
/// properties; locally set only what the first sync task sets (`volsize`, an encryption
/// root's `keylocation`) and what the second sets one by one before the rest (quotas and
/// reservations), each with the request's value; the creation-only properties the class
/// asks for; the requested origin exactly when it is a clone; and next to nothing written.
/// Nothing received. (Snapshots and children are the caller's check.)
fn adoption_refusal(dataset: &Dataset, request: &VolumeRequest, origin: Option<&SnapshotName>, props: &Properties) -> Option<String> {
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

fn round_up(value: u64, granule: u64) -> Option<u64> {
    value.div_ceil(granule).checked_mul(granule)
}

/// The capacity to provision (CSI CapacityRange semantics): at least `required_bytes` and
/// `MIN_VOLUME_SIZE`, at most `limit_bytes`, rounded up to `granule`, `default` when the range
/// names no size; OUT_OF_RANGE when no such size exists.
fn capacity_from_range(range: Option<&csi::CapacityRange>, granule: u64, default: u64) -> Result<u64, Status> {
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

fn topology_matches(driver: &Driver, topology: &csi::Topology) -> bool {
    topology.segments.get(&driver.topology_key()) == Some(&driver.node_id)
}

fn csi_volume(volume: &VolumeInfo, topology: csi::Topology) -> csi::Volume {
    csi::Volume {
        capacity_bytes: volume.capacity as i64,
        volume_id: volume.name.to_string(),
        volume_context: volume.volume_context(),
        content_source: volume.content_source.as_deref().and_then(content_source_from_property),
        accessible_topology: vec![topology],
    }
}

fn csi_snapshot(snapshot: &SnapshotInfo) -> csi::Snapshot {
    let source = snapshot.name.split_once('@').map(|(d, _)| d).unwrap_or_default();
    csi::Snapshot {
        size_bytes: snapshot.size_bytes as i64,
        snapshot_id: snapshot.name.clone(),
        source_volume_id: source.to_string(),
        creation_time: Some(prost_types::Timestamp { seconds: snapshot.creation, nanos: 0 }),
        ready_to_use: true,
        group_snapshot_id: String::new(),
    }
}

/// ListVolumes/ListSnapshots pagination over a list sorted by name. The token names the last
/// entry returned (`after:<name>`), so volumes created or deleted between two pages neither
/// repeat nor skip entries. A token that is not one of ours is ABORTED, as the spec asks.
fn paginate<T>(items: Vec<T>, max_entries: i32, starting_token: &str, name: impl Fn(&T) -> &str) -> Result<(Vec<T>, String), Status> {
    if max_entries < 0 {
        return Err(Status::invalid_argument("max_entries must not be negative"));
    }
    let after = match starting_token {
        "" => None,
        token => match token.strip_prefix(TOKEN_PREFIX) {
            Some(last) if !last.is_empty() => Some(last.to_string()),
            _ => {
                return Err(Status::aborted(format!(
                    "starting_token {starting_token:?} is not a token this driver gave; list again from the start"
                )))
            }
        },
    };
    let mut remaining = items.into_iter().filter(|item| after.as_deref().is_none_or(|last| name(item) > last));
    let page: Vec<T> = if max_entries == 0 {
        remaining.by_ref().collect()
    } else {
        remaining.by_ref().take(max_entries as usize).collect()
    };
    let next = match (remaining.next(), page.last()) {
        (Some(_), Some(last)) => format!("{TOKEN_PREFIX}{}", name(last)),
        _ => String::new(),
    };
    Ok((page, next))
}

const TOKEN_PREFIX: &str = "after:";


impl ControllerService {
    fn default_parent(&self) -> &DatasetName {
        // Config parsing guarantees at least one parent.
        &self.driver.parents[0]
    }

    fn resolve_parent(&self, params: &VolumeParams) -> Result<DatasetName, Status> {
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
    fn volume_request(&self, req: &csi::CreateVolumeRequest) -> Result<VolumeRequest, Status> {
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
        let params = VolumeParams::parse(&req.parameters).map_err(Status::invalid_argument)?;
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
        let source = match req.volume_content_source.as_ref().and_then(|s| s.r#type.as_ref()) {
            None => None,
            Some(volume_content_source::Type::Snapshot(s)) => Some(ContentSource::Snapshot(
                self.driver
                    .snapshot_name(&s.snapshot_id)?
                    .ok_or_else(|| Status::not_found(format!("source snapshot {} does not exist", s.snapshot_id)))?,
            )),
            Some(volume_content_source::Type::Volume(v)) => Some(ContentSource::Volume(
                self.driver
                    .volume_name(&v.volume_id)?
                    .ok_or_else(|| Status::not_found(format!("source volume {} does not exist", v.volume_id)))?,
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
            source,
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
    async fn creation_properties(&self, request: &VolumeRequest, origin: Option<&CloneOrigin>) -> Result<Properties, Status> {
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
        let wanted: Vec<(&str, String)> = request
            .params
            .zfs_properties()
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
    async fn existing_volume(&self, request: &VolumeRequest, origin: Option<&CloneOrigin>, props: &Properties) -> Result<VolumeInfo, Status> {
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
    async fn adopt(&self, request: &VolumeRequest, origin: Option<&CloneOrigin>, props: &Properties) -> Result<VolumeInfo, Status> {
        let zfs = &self.driver.zfs;
        let found = zfs
            .get(&request.name, &["all"], Depth::Levels(1), &[])
            .await
            .map_err(|e| zfs_status(&format!("reading {}", request.name), e))?;
        let dataset = found
            .iter()
            .find(|d| d.name == request.name.as_str())
            .ok_or_else(|| Status::aborted(format!("volume {} vanished while being created; retry", request.name)))?;
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
    async fn resize(&self, volume: &VolumeInfo, capacity: u64, params: &VolumeParams) -> Result<(), Status> {
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

    /// Finds the snapshot a clone comes from: the given one, or for a volume source the one
    /// the driver will take of it (marked internal). NOT_FOUND when the source is gone;
    /// INVALID_ARGUMENT for a snapshot the driver did not take (the CSI spec's "source
    /// incompatible or not supported") and for a class that conflicts with the source
    /// (`check_clone_source`).
    async fn resolve_source(&self, request: &VolumeRequest, source: &ContentSource) -> Result<CloneOrigin, Status> {
        match source {
            ContentSource::Snapshot(snapshot) => {
                let info = self
                    .snapshot_info(snapshot)
                    .await?
                    .filter(|s| !s.deferred_destroy && !s.internal)
                    .ok_or_else(|| Status::not_found(format!("source snapshot {snapshot} does not exist")))?;
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
                self.check_clone_source(request, snapshot, &volume, &dataset).await?;
                Ok(CloneOrigin {
                    snapshot: snapshot.clone(),
                    capacity: if info.size_bytes > 0 { info.size_bytes } else { volume.capacity },
                    volblocksize: dataset.get_u64("volblocksize"),
                    referenced: None,
                    take_snapshot: None,
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
                self.check_clone_source(request, &snapshot, &volume, &dataset).await?;
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
                })
            }
        }
    }

    /// A clone source's volume, with the properties its clones inherit (`SOURCE_PROPERTIES`).
    async fn source_volume(&self, name: &DatasetName) -> Result<Option<(VolumeInfo, Dataset)>, Status> {
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
    async fn create_clone(&self, request: &VolumeRequest, origin: &CloneOrigin, props: &Properties) -> Result<VolumeInfo, Status> {
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

    /// Reads a new clone back and grows it to the requested size.
    async fn finish_clone(&self, request: &VolumeRequest) -> Result<VolumeInfo, Status> {
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
    async fn discard_half_made_clone(&self, request: &VolumeRequest, origin: &CloneOrigin, took_snapshot: bool) {
        match self.driver.volume(&request.name).await {
            Ok(Some(clone)) if clone.managed => {
                let deleted = self.driver.zfs.delete_if_owned(&request.name, prop::MANAGED_BY, &self.driver.name, prop::DELETED);
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
    async fn discard_internal_snapshot(&self, snapshot: &SnapshotName) {
        match self.driver.zfs.destroy_snapshot(snapshot, Destroy::Now).await {
            Ok(()) | Err(ZfsError::NotFound(_)) => {}
            Err(e) => tracing::warn!(snapshot = %snapshot, "cannot destroy the snapshot taken for a failed clone: {e}"),
        }
    }

    /// INVALID_ARGUMENT when `origin` (of `volume`, read as `dataset`) cannot be cloned for
    /// `request`: another pool, another kind, or creation-only properties in the class that
    /// differ from the source's (a clone keeps its origin's; equal values are fine).
    async fn check_clone_source(&self, request: &VolumeRequest, origin: &SnapshotName, volume: &VolumeInfo, dataset: &Dataset) -> Result<(), Status> {
        if origin.dataset().pool() != request.name.pool() {
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
    async fn key_location(&self, dataset: &Dataset) -> Result<String, Status> {
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

    async fn snapshot_info(&self, name: &SnapshotName) -> Result<Option<SnapshotInfo>, Status> {
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
    fn existing_snapshot(&self, info: &SnapshotInfo, csi_name: &str) -> Result<Response<csi::CreateSnapshotResponse>, Status> {
        if !info.managed || info.csi_name.as_deref() != Some(csi_name) || info.deferred_destroy {
            return Err(Status::already_exists(format!(
                "snapshot {} already exists and was not made by this driver for this request",
                info.name
            )));
        }
        Ok(Response::new(csi::CreateSnapshotResponse { snapshot: Some(csi_snapshot(info)) }))
    }

    /// The driver's volumes and snapshots below all parents (nested parents listed once).
    async fn list_below_parents(&self, properties: &[&str], types: &[DatasetType]) -> Result<Vec<crate::zfs::Dataset>, Status> {
        let mut all: BTreeMap<String, crate::zfs::Dataset> = BTreeMap::new();
        for parent in &self.driver.parents {
            let datasets = match self.driver.zfs.get(parent, properties, Depth::All, types).await {
                Ok(d) => d,
                Err(ZfsError::NotFound(_)) => continue,
                Err(e) => return Err(zfs_status(&format!("listing {parent}"), e)),
            };
            for dataset in datasets {
                all.entry(dataset.name.clone()).or_insert(dataset);
            }
        }
        Ok(all.into_values().collect())
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
                let origin = self.resolve_source(&request, source).await?;
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
                .create_filesystem(&request.name, &props)
                .await
                .map(|()| request.created_volume(None))
                .map_err(|e| zfs_status(&what, e)),
            (None, VolumeKind::Zvol) => zfs
                .create_volume(&request.name, request.capacity, request.params.thin, &props)
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
                self.reaper.pass_soon();
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
        if !req.parameters.is_empty() {
            let mut keys: Vec<&String> = req.parameters.keys().filter(|k| !k.starts_with("csi.storage.k8s.io/")).collect();
            keys.sort();
            if !keys.is_empty() {
                return Err(Status::invalid_argument(format!(
                    "unknown snapshot parameters {keys:?}; the VolumeSnapshotClass takes none"
                )));
            }
        }
        let source = self
            .driver
            .volume_name(&req.source_volume_id)?
            .ok_or_else(|| Status::not_found(format!("source volume {} does not exist", req.source_volume_id)))?;
        let snapshot = source
            .snapshot(&req.name)
            .map_err(|e| Status::invalid_argument(format!("name {:?}: {e}", req.name)))?;
        let _lock = self.driver.lock(LockKey::Snapshot(req.name.clone()))?;
        // The volumes below the parents, then the name looked up on each of them: a cost that
        // grows with the datasets, never with the snapshots they have (sanoid's thousands).
        let datasets = self
            .list_below_parents(VOLUME_PROPERTIES, &[DatasetType::Filesystem, DatasetType::Volume])
            .await?;
        let volumes: Vec<VolumeInfo> = datasets
            .iter()
            .filter_map(|d| VolumeInfo::from_dataset(d, &self.driver.name))
            .filter(|v| self.driver.is_within_parents(&v.name))
            .collect();
        let mut candidates = vec![snapshot.to_string()];
        candidates.extend(volumes.iter().filter(|v| v.name != source).map(|v| format!("{}@{}", v.name, req.name)));
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
            return self.existing_snapshot(existing, &req.name);
        }
        if let Some(other) = same_name.iter().find(|s| s.is_listed() && s.csi_name.as_deref() == Some(req.name.as_str())) {
            return Err(Status::already_exists(format!(
                "snapshot name {} is already used by {}, of another volume",
                req.name, other.name
            )));
        }
        let volume = volumes
            .into_iter()
            .find(|v| v.name == source && !v.deleted)
            .ok_or_else(|| Status::not_found(format!("source volume {source} does not exist")))?;
        let props: Properties = vec![
            (prop::MANAGED_BY.to_string(), self.driver.name.clone()),
            (prop::CSI_NAME.to_string(), req.name.clone()),
            (prop::CAPACITY.to_string(), volume.capacity.to_string()),
        ];
        match self.driver.take_snapshot(&snapshot, &props).await {
            Ok(()) => tracing::info!(snapshot = %snapshot, "created"),
            Err(ZfsError::AlreadyExists(_)) => {}
            Err(e) => return Err(zfs_status(&format!("creating snapshot {snapshot}"), e)),
        }
        let info = self
            .snapshot_info(&snapshot)
            .await?
            .ok_or_else(|| Status::internal(format!("snapshot {snapshot} is missing right after its creation")))?;
        self.existing_snapshot(&info, &req.name)
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
        let Some(info) = self.snapshot_info(&snapshot).await? else {
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
        let datasets = if !req.snapshot_id.is_empty() {
            match self.driver.snapshot_name(&req.snapshot_id).ok().flatten() {
                Some(snapshot) => self
                    .driver
                    .zfs
                    .find(&snapshot, SNAPSHOT_PROPERTIES)
                    .await
                    .map_err(|e| zfs_status(&format!("reading snapshot {snapshot}"), e))?
                    .into_iter()
                    .collect(),
                None => Vec::new(),
            }
        } else if !req.source_volume_id.is_empty() {
            match self.driver.volume_name(&req.source_volume_id).ok().flatten() {
                Some(volume) => {
                    match self.driver.zfs.get(&volume, SNAPSHOT_PROPERTIES, Depth::Levels(1), &[DatasetType::Snapshot]).await {
                        Ok(d) => d,
                        Err(ZfsError::NotFound(_)) => Vec::new(),
                        Err(e) => return Err(zfs_status(&format!("listing the snapshots of {volume}"), e)),
                    }
                }
                None => Vec::new(),
            }
        } else {
            self.list_below_parents(SNAPSHOT_PROPERTIES, &[DatasetType::Snapshot]).await?
        };
        let mut snapshots: Vec<SnapshotInfo> = datasets
            .iter()
            .filter(|d| d.dataset_type() == Some(DatasetType::Snapshot))
            .map(|d| SnapshotInfo::from_dataset(d, &self.driver.name))
            .filter(|s| s.is_listed())
            .filter(|s| req.source_volume_id.is_empty() || s.name.starts_with(&format!("{}@", req.source_volume_id)))
            .collect();
        snapshots.sort_by(|a, b| a.name.cmp(&b.name));
        let (page, next_token) = paginate(snapshots, req.max_entries, &req.starting_token, |s| s.name.as_str())?;
        Ok(Response::new(csi::ListSnapshotsResponse {
            entries: page
                .iter()
                .map(|s| csi::list_snapshots_response::Entry { snapshot: Some(csi_snapshot(s)) })
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
        let info = self.snapshot_info(&snapshot).await?.filter(SnapshotInfo::is_listed).ok_or_else(not_found)?;
        Ok(Response::new(csi::GetSnapshotResponse { snapshot: Some(csi_snapshot(&info)) }))
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
        _request: Request<csi::ControllerModifyVolumeRequest>,
    ) -> Result<Response<csi::ControllerModifyVolumeResponse>, Status> {
        Err(Status::unimplemented("ControllerModifyVolume is not supported"))
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

    #[test]
    fn pagination_walks_the_list_and_rejects_foreign_tokens() {
        let items: Vec<String> = ["a", "b", "c", "d", "e"].iter().map(|s| s.to_string()).collect();
        let name = |s: &String| s.as_str().to_owned();
        let page = |items: Vec<String>, max, token: &str| {
            paginate(items, max, token, |s| s.as_str()).map(|(p, next)| (p.iter().map(name).collect::<Vec<_>>(), next))
        };
        assert_eq!(page(items.clone(), 2, "").unwrap(), (vec!["a".into(), "b".into()], "after:b".into()));
        assert_eq!(page(items.clone(), 2, "after:d").unwrap(), (vec!["e".into()], String::new()));
        assert_eq!(page(items.clone(), 0, "").unwrap().0.len(), 5);
        assert_eq!(page(items.clone(), 2, "after:e").unwrap(), (vec![], String::new()));
        // An entry created before the token's position does not shift the next page.
        let mut grown = items.clone();
        grown.insert(0, "0".into());
        assert_eq!(page(grown, 2, "after:b").unwrap().0, ["c", "d"]);
        for bad in ["3", "bogus", "after:"] {
            assert_eq!(page(items.clone(), 2, bad).unwrap_err().code(), tonic::Code::Aborted, "{bad}");
        }
        assert_eq!(page(items, -1, "").unwrap_err().code(), tonic::Code::InvalidArgument);
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
            source: None,
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

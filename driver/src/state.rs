//! What the driver keeps in ZFS itself (docs/DESIGN.md section 3): user properties set when a
//! dataset, zvol or snapshot is created, and read back to answer any later RPC, so the driver
//! needs no database and survives restarts and crashes. A snapshot gets its properties in the
//! same transaction that makes it; a dataset or clone in a second one right after, which a
//! power loss can cut off (`controller/create.rs`, `adopt`).

use std::collections::BTreeMap;

use crate::zfs::{Dataset, DatasetName, DatasetType, PropertySource};

/// User property names. `zfs list -o name,zfs-csi.io:pvc-name` shows an operator what each
/// dataset is.
pub mod prop {
    /// What every property of ours begins with.
    pub const PREFIX: &str = "zfs-csi.io:";
    /// The driver name that created it. Only datasets and snapshots carrying our name here
    /// are ever destroyed.
    pub const MANAGED_BY: &str = "zfs-csi.io:managed-by";
    /// The CSI request name (idempotency: a repeated CreateVolume finds its dataset).
    pub const CSI_NAME: &str = "zfs-csi.io:csi-name";
    /// The capacity provisioned, in bytes.
    pub const CAPACITY: &str = "zfs-csi.io:capacity";
    /// `snapshot:<id>` or `volume:<id>` for clones.
    pub const CONTENT_SOURCE: &str = "zfs-csi.io:content-source";
    /// The StorageClass parameters, canonical, to tell a compatible repeat from a conflict.
    pub const PARAMETERS: &str = "zfs-csi.io:parameters";
    /// The filesystem the node service puts on a zvol (ext4, xfs, btrfs), or zfs.
    pub const FSTYPE: &str = "zfs-csi.io:fstype";
    /// "yes" when several pods on the node may publish the volume at once.
    pub const SHARED: &str = "zfs-csi.io:shared";
    /// Set when DeleteVolume could not destroy it yet because snapshots or clones depend on
    /// it: hidden from ListVolumes and destroyed when the last dependent goes.
    pub const DELETED: &str = "zfs-csi.io:deleted";
    /// On a snapshot the driver took to clone a volume: the clone it was taken for. Such
    /// snapshots are internal (not listed) and go with their clone.
    pub const CLONE_OF_VOLUME: &str = "zfs-csi.io:clone-for";
    /// Set on such a snapshot by the channel program that destroys its clone, in the same
    /// transaction group: garbage from then on, whatever crashes before it is reaped.
    pub const CLONE_RELEASED: &str = "zfs-csi.io:clone-released";
    /// On a snapshot taken with a VolumeSnapshotClass's `replicateTo`: that dataset, below
    /// which the replica of its volume receives it; on the volume too, so that a restarted
    /// driver finds the volumes whose replication may be unfinished.
    pub const REPLICATE_TO: &str = "zfs-csi.io:replicate-to";
    /// On a replica dataset: the volume it copies. Replicas are not volumes: they carry
    /// `REPLICA_OWNER`, never `MANAGED_BY`, so no volume RPC lists, serves or destroys them.
    pub const REPLICA_OF: &str = "zfs-csi.io:replica-of";
    /// On a replica dataset: the driver name that created it (its marker, in place of
    /// `MANAGED_BY`).
    pub const REPLICA_OWNER: &str = "zfs-csi.io:replica-owner";
    /// On a replica's snapshot: the volume whose snapshot it copies (the CSI source volume).
    pub const SOURCE_VOLUME: &str = "zfs-csi.io:source-volume";
    /// The VolumeAttributesClass parameters in effect (`mutable_parameters` at creation, then
    /// each ControllerModifyVolume's merged over them), canonical (`MutableParams::canonical`).
    pub const MUTABLE_PARAMETERS: &str = "zfs-csi.io:mutable-parameters";
    /// "secret" on a volume whose encryption root is keyed from a Secret (`keylocation=prompt`):
    /// a volume created as its own root with the provisioner secret's key, or a clone or
    /// restore of one made with that Secret. The fact only, never the key.
    pub const KEY_SOURCE: &str = "zfs-csi.io:key-source";
    pub const PVC_NAME: &str = "zfs-csi.io:pvc-name";
    pub const PVC_NAMESPACE: &str = "zfs-csi.io:pvc-namespace";
    pub const PV_NAME: &str = "zfs-csi.io:pv-name";
}

/// The value of one of our user properties when it was set on this very dataset or snapshot,
/// locally. The one ownership rule, the same as the delete channel program's (`zfs/mod.rs`):
/// user properties are inherited, so a snapshot the operator (or sanoid) takes of our volume,
/// or a dataset created below it, would otherwise carry our marker; and a replica received
/// with `zfs send -p | zfs recv` carries it as a received value, yet the driver did not create
/// it.
fn own_property<'a>(dataset: &'a Dataset, property: &str) -> Option<&'a str> {
    let p = dataset.property(property)?;
    (p.source == PropertySource::Local).then_some(p.value.as_str())
}

/// What is read to describe a volume.
pub const VOLUME_PROPERTIES: &[&str] = &[
    "type",
    "volsize",
    "refquota",
    "quota",
    "origin",
    prop::MANAGED_BY,
    prop::CSI_NAME,
    prop::CAPACITY,
    prop::CONTENT_SOURCE,
    prop::PARAMETERS,
    prop::FSTYPE,
    prop::SHARED,
    prop::DELETED,
    prop::MUTABLE_PARAMETERS,
    prop::KEY_SOURCE,
];

/// What is read to describe a snapshot.
pub const SNAPSHOT_PROPERTIES: &[&str] = &[
    "type",
    "creation",
    "clones",
    "defer_destroy",
    prop::MANAGED_BY,
    prop::CSI_NAME,
    prop::CAPACITY,
    prop::CLONE_OF_VOLUME,
    prop::CLONE_RELEASED,
    prop::REPLICATE_TO,
    prop::SOURCE_VOLUME,
    prop::DELETED,
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VolumeKind {
    /// A ZFS filesystem, mounted with `mount -t zfs`.
    Filesystem,
    /// A zvol: raw block, or carrying ext4/xfs/btrfs.
    Zvol,
}

impl VolumeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            VolumeKind::Filesystem => "filesystem",
            VolumeKind::Zvol => "zvol",
        }
    }
}

/// A filesystem or zvol as the CSI services see it.
#[derive(Clone, Debug)]
pub struct VolumeInfo {
    pub name: DatasetName,
    pub kind: VolumeKind,
    /// Created by this driver (carries our name in `managed-by`).
    pub managed: bool,
    pub csi_name: Option<String>,
    /// Bytes the consumer can use: `volsize` of a zvol, `refquota` or `quota` of a
    /// filesystem; 0 when a filesystem has no quota (an imported dataset).
    pub capacity: u64,
    pub content_source: Option<String>,
    pub parameters: Option<String>,
    /// The VolumeAttributesClass parameters in effect, canonical.
    pub mutable_parameters: Option<String>,
    /// The key of this encryption root comes from a Secret.
    pub key_from_secret: bool,
    pub fstype: Option<String>,
    pub shared: bool,
    pub deleted: bool,
    /// The snapshot this clone was made from.
    pub origin: Option<String>,
}

impl VolumeInfo {
    /// `None` for a snapshot or an unparseable entry.
    pub fn from_dataset(dataset: &Dataset, driver_name: &str) -> Option<Self> {
        let kind = match dataset.dataset_type()? {
            DatasetType::Filesystem => VolumeKind::Filesystem,
            DatasetType::Volume => VolumeKind::Zvol,
            DatasetType::Snapshot => return None,
        };
        let positive = |p: &str| dataset.get_u64(p).filter(|&v| v > 0);
        let capacity = match kind {
            VolumeKind::Zvol => positive("volsize"),
            VolumeKind::Filesystem => positive("refquota").or_else(|| positive("quota")),
        }
        .unwrap_or(0);
        let owned = |p: &str| own_property(dataset, p).map(str::to_string);
        Some(Self {
            name: DatasetName::parse(&dataset.name).ok()?,
            kind,
            managed: own_property(dataset, prop::MANAGED_BY) == Some(driver_name),
            csi_name: owned(prop::CSI_NAME),
            capacity,
            content_source: owned(prop::CONTENT_SOURCE),
            parameters: owned(prop::PARAMETERS),
            mutable_parameters: owned(prop::MUTABLE_PARAMETERS),
            key_from_secret: own_property(dataset, prop::KEY_SOURCE) == Some("secret"),
            fstype: owned(prop::FSTYPE),
            shared: own_property(dataset, prop::SHARED) == Some("yes"),
            deleted: own_property(dataset, prop::DELETED) == Some("true"),
            origin: dataset.get("origin").filter(|o| *o != "-").map(str::to_string),
        })
    }

    /// The volume context handed to the node service (and shown on the PV).
    pub fn volume_context(&self) -> std::collections::HashMap<String, String> {
        let mut context = std::collections::HashMap::new();
        context.insert("kind".to_string(), self.kind.as_str().to_string());
        if let Some(fstype) = &self.fstype {
            context.insert("fstype".to_string(), fstype.clone());
        }
        context.insert("shared".to_string(), if self.shared { "yes" } else { "no" }.to_string());
        // What ControllerGetVolume and ListVolumes show of a VolumeAttributesClass applied.
        if let Some(mutable) = self.mutable_parameters.as_ref().filter(|m| !m.is_empty()) {
            context.insert("mutableParameters".to_string(), mutable.clone());
        }
        if self.key_from_secret {
            context.insert("keySource".to_string(), "secret".to_string());
        }
        context
    }
}

/// A snapshot as the CSI services see it.
#[derive(Clone, Debug)]
pub struct SnapshotInfo {
    pub name: String,
    pub managed: bool,
    pub csi_name: Option<String>,
    /// The source volume's capacity when the snapshot was taken (restoreSize).
    pub size_bytes: u64,
    /// Seconds since the epoch.
    pub creation: i64,
    pub clones: Vec<String>,
    /// `zfs destroy -d` was called while it had clones: it goes with its last clone.
    pub deferred_destroy: bool,
    /// Taken by the driver to clone a volume; not a user's snapshot.
    pub internal: bool,
    /// For an internal snapshot: the clone it was taken for (its volume ID).
    pub clone_for: Option<String>,
    /// For an internal snapshot: that clone was destroyed (`prop::CLONE_RELEASED`).
    pub clone_released: bool,
    /// A snapshot taken to be replicated: the dataset its volume's replica lives below. Its
    /// CSI ID is the replica's snapshot (`replication.rs`).
    pub replicate_to: Option<String>,
    /// A replica's snapshot: the volume whose snapshot it copies.
    pub source_volume: Option<String>,
    /// A replica's snapshot deleted through CSI but kept as the base of the next incremental
    /// send; destroyed once a newer one arrives.
    pub hidden: bool,
}

impl SnapshotInfo {
    pub fn from_dataset(dataset: &Dataset, driver_name: &str) -> Self {
        Self {
            name: dataset.name.clone(),
            managed: own_property(dataset, prop::MANAGED_BY) == Some(driver_name),
            csi_name: own_property(dataset, prop::CSI_NAME).map(str::to_string),
            size_bytes: own_property(dataset, prop::CAPACITY).and_then(|v| v.parse().ok()).unwrap_or(0),
            creation: dataset.get_u64("creation").unwrap_or(0) as i64,
            clones: dataset
                .get("clones")
                .map(|c| c.split(',').filter(|s| !s.is_empty()).map(str::to_string).collect())
                .unwrap_or_default(),
            deferred_destroy: dataset.get("defer_destroy") == Some("on"),
            internal: own_property(dataset, prop::CLONE_OF_VOLUME).is_some(),
            clone_for: own_property(dataset, prop::CLONE_OF_VOLUME).map(str::to_string),
            clone_released: own_property(dataset, prop::CLONE_RELEASED) == Some("true"),
            replicate_to: own_property(dataset, prop::REPLICATE_TO).map(str::to_string),
            source_volume: own_property(dataset, prop::SOURCE_VOLUME).map(str::to_string),
            hidden: own_property(dataset, prop::DELETED) == Some("true"),
        }
    }

    /// Shown by ListSnapshots under its own name: ours, neither internal, nor waiting for
    /// deferred destruction, nor hidden; and not a replicated snapshot's local copy, which is
    /// shown under its replica's name.
    pub fn is_listed(&self) -> bool {
        self.managed && !self.internal && !self.deferred_destroy && !self.hidden && self.replicate_to.is_none()
    }

    /// The volume it is a snapshot of, for CSI: a replica's snapshot names its source volume.
    pub fn source_volume_id(&self) -> &str {
        self.source_volume
            .as_deref()
            .unwrap_or_else(|| self.name.split_once('@').map(|(d, _)| d).unwrap_or_default())
    }
}

/// The canonical form of StorageClass parameters stored in `prop::PARAMETERS`.
pub fn canonical_parameters(parameters: &BTreeMap<String, String>) -> String {
    parameters
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zfs::{PropertySource, PropertyValue};

    fn dataset(name: &str, props: &[(&str, &str, PropertySource)]) -> Dataset {
        Dataset {
            name: name.into(),
            properties: props
                .iter()
                .map(|(k, v, s)| (k.to_string(), PropertyValue { value: v.to_string(), source: s.clone() }))
                .collect(),
        }
    }

    #[test]
    fn zvol_capacity_is_volsize_and_ownership_is_by_driver_name() {
        let d = dataset(
            "vms/pvc-1",
            &[
                ("type", "volume", PropertySource::None),
                ("volsize", "1073741824", PropertySource::Local),
                (prop::MANAGED_BY, "zfs-csi.io", PropertySource::Local),
            ],
        );
        let v = VolumeInfo::from_dataset(&d, "zfs-csi.io").unwrap();
        assert_eq!(v.kind, VolumeKind::Zvol);
        assert_eq!(v.capacity, 1 << 30);
        assert!(v.managed);
        assert!(!VolumeInfo::from_dataset(&d, "other.driver").unwrap().managed);
    }

    #[test]
    fn imported_filesystem_without_quota_has_unknown_capacity_and_is_not_managed() {
        let d = dataset(
            "tank/media",
            &[
                ("type", "filesystem", PropertySource::None),
                ("refquota", "0", PropertySource::Default),
                ("quota", "0", PropertySource::Default),
                (prop::MANAGED_BY, "-", PropertySource::None),
            ],
        );
        let v = VolumeInfo::from_dataset(&d, "zfs-csi.io").unwrap();
        assert_eq!(v.capacity, 0);
        assert!(!v.managed);
    }

    #[test]
    fn an_inherited_marker_does_not_make_a_snapshot_or_child_ours() {
        let inherited = PropertySource::Inherited("vms/pvc-1".into());
        let snap = dataset(
            "vms/pvc-1@sanoid-hourly",
            &[
                ("type", "snapshot", PropertySource::None),
                (prop::MANAGED_BY, "zfs-csi.io", inherited.clone()),
                (prop::CSI_NAME, "pvc-1", inherited.clone()),
            ],
        );
        let info = SnapshotInfo::from_dataset(&snap, "zfs-csi.io");
        assert!(!info.managed && info.csi_name.is_none() && !info.is_listed());
        let child = dataset(
            "vms/pvc-1/child",
            &[("type", "filesystem", PropertySource::None), (prop::MANAGED_BY, "zfs-csi.io", inherited)],
        );
        assert!(!VolumeInfo::from_dataset(&child, "zfs-csi.io").unwrap().managed);
    }

    #[test]
    fn snapshot_listing_hides_internal_and_deferred() {
        let base = |extra: (&str, &str)| {
            let d = dataset(
                "vms/a@s",
                &[
                    ("type", "snapshot", PropertySource::None),
                    (prop::MANAGED_BY, "zfs-csi.io", PropertySource::Local),
                    (extra.0, extra.1, PropertySource::Local),
                ],
            );
            SnapshotInfo::from_dataset(&d, "zfs-csi.io")
        };
        assert!(base(("clones", "vms/b,vms/c")).is_listed());
        assert_eq!(base(("clones", "vms/b,vms/c")).clones, ["vms/b", "vms/c"]);
        assert!(!base(("defer_destroy", "on")).is_listed());
        assert!(!base((prop::CLONE_OF_VOLUME, "vms/b")).is_listed());
        assert!(base((prop::CLONE_RELEASED, "true")).clone_released);
        assert!(!base((prop::CLONE_RELEASED, "false")).clone_released);
    }
}

//! `zfs-csi import DATASET`: the static import of an existing dataset or zvol as a
//! PersistentVolume and a PersistentVolumeClaim bound to it, printed for `kubectl apply`.
//!
//! It only reads: `zfs get` of the dataset (through the ZFS layer and `--command-prefix`) and,
//! for a zvol, `blkid -p` of its device. blkid runs in the driver's own container, as the node
//! service's probe before staging does (`format::Formatter`), so that what import decides is
//! what NodeStageVolume will see. It never sets a property, formats or mounts anything.
//!
//! What the PV says:
//! - a ZFS filesystem: volumeMode Filesystem, fsType `zfs`;
//! - a zvol holding ext4, xfs or btrfs: volumeMode Filesystem with that fsType;
//! - any other zvol (a partition table, as a VM disk has; another filesystem; nothing blkid
//!   knows): volumeMode Block, which passes the bytes through untouched (the driver never
//!   formats a zvol it did not create);
//! - capacity: `volsize` of a zvol; `refquota`, else `quota`, of a filesystem; a filesystem
//!   with neither gets `referenced + available`, rounded down to a MiB: the size `df` shows
//!   a consumer of it now (the pool's free space counts, so it is a snapshot of a moving
//!   figure: set a refquota first for a fixed size). The PVC requests exactly the PV's
//!   capacity, so it binds;
//! - `persistentVolumeReclaimPolicy: Retain`: deleting the PVC keeps the PV and the data
//!   (and the driver destroys only datasets carrying its own marker anyway);
//! - node affinity on `<driver-name>/node` = the node, the key the driver reports in
//!   NodeGetInfo, so the pod is scheduled where the pool is.

use clap::{Args, ValueEnum};
use serde_json::{json, Value};

use super::k8s::{self, AccessMode};
use super::{CliError, ZfsAccess};
use crate::format::{self, DeviceContent, Formatter};
use crate::state::{prop, VolumeInfo, VolumeKind};
use crate::zfs::DatasetName;

#[derive(Args, Debug, Clone)]
pub struct ImportArgs {
    /// The existing dataset or zvol, e.g. vms/HomeAssistant: below one of the parents, not a
    /// parent or pool root itself.
    pub dataset: String,

    /// The PersistentVolumeClaim's name [default: the dataset's last component made a valid
    /// name, e.g. homeassistant].
    #[arg(long, value_parser = k8s::check_subdomain)]
    pub name: Option<String>,

    /// The PersistentVolume's name [default: the whole dataset name made a valid name, e.g.
    /// vms-homeassistant].
    #[arg(long, value_parser = k8s::check_subdomain)]
    pub pv_name: Option<String>,

    /// The PersistentVolumeClaim's namespace.
    #[arg(long, default_value = "default", value_parser = k8s::check_label)]
    pub namespace: String,

    /// The StorageClass of both. Empty (the default): none, so that no provisioner acts on
    /// the claim and only this PV binds it.
    #[arg(long, default_value = "", value_parser = k8s::check_storage_class)]
    pub storage_class: String,

    /// The Kubernetes node that holds the dataset's pool (the driver's --node-id there)
    /// [default: $NODE_ID, else $NODE_NAME, which the node pod sets].
    #[arg(long, env = "NODE_ID", alias = "node-id", value_parser = k8s::check_label_value)]
    pub node: Option<String>,

    /// The access mode of both: ReadWriteOnce or ReadWriteOncePod (a pool serves one node).
    #[arg(long, default_value = "ReadWriteOnce", value_parser = AccessMode::parse)]
    pub access_mode: AccessMode,

    /// Output format: YAML documents, or a JSON v1 List (both for kubectl apply -f).
    #[arg(short = 'o', long, value_enum, default_value_t = ManifestFormat::Yaml)]
    pub output: ManifestFormat,

    #[command(flatten)]
    pub zfs: ZfsAccess,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ManifestFormat {
    Yaml,
    Json,
}

/// How a consumer sees the volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Presentation {
    /// Mounted: `zfs` for a ZFS filesystem, else the filesystem on the zvol.
    Filesystem { fs_type: String },
    /// A raw block device.
    Block,
}

/// What import found out about the dataset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inspected {
    pub dataset: DatasetName,
    pub kind: VolumeKind,
    pub capacity_bytes: u64,
    pub presentation: Presentation,
    /// What was found, in words, for the comment above the manifests.
    pub found: String,
    /// Things the operator should know, printed on standard error.
    pub notes: Vec<String>,
}

/// The names and placement the operator chose (or the defaults).
#[derive(Clone, Debug)]
pub struct ClaimOptions {
    pub driver_name: String,
    pub node: String,
    pub volume_name: String,
    pub claim_name: String,
    pub namespace: String,
    pub storage_class: String,
    pub access_mode: AccessMode,
}

/// How long to wait for a zvol's /dev/zvol link (udev makes it some time after the zvol
/// appears, e.g. just after boot or `zfs create -V`).
const DEVICE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The filesystems the node service mounts on a zvol.
const MOUNTABLE: [&str; 3] = ["ext4", "xfs", "btrfs"];

pub async fn run(args: &ImportArgs) -> Result<String, CliError> {
    let dataset = check_dataset(&args.dataset, &args.zfs.parents)?;
    let options = claim_options(args, &dataset)?;
    let inspected = inspect(&args.zfs, &dataset).await?;
    for note in &inspected.notes {
        eprintln!("zfs-csi import: note: {note}");
    }
    Ok(match args.output {
        ManifestFormat::Yaml => render_yaml(&inspected, &options),
        ManifestFormat::Json => render_json(&inspected, &options),
    })
}

fn parents_list(parents: &[DatasetName]) -> String {
    parents.iter().map(DatasetName::as_str).collect::<Vec<_>>().join(",")
}

/// The dataset named on the command line, if the driver may serve it: below a parent, and
/// neither a pool root nor a parent (which hold the driver's own volumes). Checked before
/// anything is run.
pub fn check_dataset(given: &str, parents: &[DatasetName]) -> Result<DatasetName, CliError> {
    if given.contains('@') {
        return Err(CliError::Refused(format!(
            "{given} is a snapshot: import a dataset or zvol (to serve a snapshot's content, `zfs clone` it first)"
        )));
    }
    let dataset = DatasetName::parse(given)
        .map_err(|e| CliError::Refused(format!("{given:?} is not a dataset name: {e}")))?;
    let parents_text = parents_list(parents);
    if dataset.parent().is_none() {
        return Err(CliError::Refused(format!(
            "{dataset} is the root of pool {}: a pool root cannot be a volume; import a dataset or zvol \
             below one of the parents ({parents_text})",
            dataset.pool()
        )));
    }
    if parents.contains(&dataset) {
        return Err(CliError::Refused(format!(
            "{dataset} is one of the parents ({parents_text}), which hold the driver's volumes: it cannot \
             be a volume itself; import a dataset or zvol below it"
        )));
    }
    if !parents.iter().any(|p| dataset.is_strictly_under(p)) {
        return Err(CliError::Refused(format!(
            "{dataset} is outside the parents ({parents_text}): the driver serves nothing else; \
             add its pool or a parent of it to ZFS_CSI_PARENTS on the node, or import a dataset below them"
        )));
    }
    Ok(dataset)
}

fn claim_options(args: &ImportArgs, dataset: &DatasetName) -> Result<ClaimOptions, CliError> {
    let node = match &args.node {
        Some(node) => node.clone(),
        None => {
            let from_pod = std::env::var("NODE_NAME").ok().filter(|n| !n.trim().is_empty()).ok_or_else(|| {
                CliError::Refused(format!(
                    "which node holds pool {}? give --node (the Kubernetes node name, the driver's \
                     --node-id there); in the node pod NODE_NAME says it",
                    dataset.pool()
                ))
            })?;
            k8s::check_label_value(&from_pod).map_err(|e| CliError::Refused(format!("NODE_NAME: {e}; give --node")))?
        }
    };
    let claim_name = match &args.name {
        Some(name) => name.clone(),
        None => k8s::derive_claim_name(dataset.as_str()).ok_or_else(|| {
            CliError::Refused(format!("no Kubernetes name can be made from {dataset}: give --name"))
        })?,
    };
    let volume_name = match &args.pv_name {
        Some(name) => name.clone(),
        None => k8s::derive_volume_name(dataset.as_str()).ok_or_else(|| {
            CliError::Refused(format!("no Kubernetes name can be made from {dataset}: give --pv-name"))
        })?,
    };
    Ok(ClaimOptions {
        driver_name: args.zfs.driver_name.clone(),
        node,
        volume_name,
        claim_name,
        namespace: args.namespace.clone(),
        storage_class: args.storage_class.clone(),
        access_mode: args.access_mode,
    })
}

/// What is read of the dataset.
const IMPORT_PROPERTIES: &[&str] = &[
    "type",
    "volsize",
    "refquota",
    "quota",
    "referenced",
    "available",
    "origin",
    "mounted",
    "mountpoint",
    prop::MANAGED_BY,
    prop::DELETED,
    prop::PVC_NAMESPACE,
    prop::PVC_NAME,
];

/// Reads the dataset's type, size and (for a zvol) what its device holds.
pub async fn inspect(access: &ZfsAccess, dataset: &DatasetName) -> Result<Inspected, CliError> {
    let read = access
        .zfs()
        .find(dataset, IMPORT_PROPERTIES)
        .await
        .map_err(|e| access.failure(&format!("reading {dataset}"), e))?
        .ok_or_else(|| CliError::Failed(format!("{dataset} does not exist")))?;
    let volume = VolumeInfo::from_dataset(&read, &access.driver_name)
        .ok_or_else(|| CliError::Failed(format!("{dataset}: zfs reported type {:?}", read.get("type"))))?;
    let mut notes = Vec::new();
    if volume.deleted {
        return Err(CliError::Refused(format!(
            "{dataset} is a volume of this driver that was deleted and is kept only until its snapshots \
             or clones go: it cannot be imported"
        )));
    }
    if volume.managed {
        let claim = match (read.get(prop::PVC_NAMESPACE), read.get(prop::PVC_NAME)) {
            (Some(ns), Some(name)) => format!(" for PVC {ns}/{name}"),
            _ => String::new(),
        };
        notes.push(format!(
            "{dataset} was created by this driver{claim}: its own PV may still exist; two PVs for one \
             dataset would let two claims use it"
        ));
    }
    if let Some(origin) = &volume.origin {
        notes.push(format!("{dataset} is a clone of {origin}: that snapshot cannot be destroyed while it exists"));
    }
    let (capacity_bytes, presentation, found) = match volume.kind {
        VolumeKind::Filesystem => {
            let (capacity, how) = if volume.capacity > 0 {
                (volume.capacity, "its quota".to_string())
            } else {
                let referenced = read.get_u64("referenced").unwrap_or(0);
                let available = read.get_u64("available").unwrap_or(0);
                let size = (referenced + available) / (1 << 20) * (1 << 20);
                notes.push(format!(
                    "{dataset} has no refquota or quota: its capacity is what df shows now \
                     (referenced + available = {}); set a refquota for a fixed size",
                    k8s::quantity(size)
                ));
                (size, "referenced + available, no quota".to_string())
            };
            if read.get("mounted") == Some("yes") {
                // Read through the command prefix, so this is the host's view, which the
                // driver's container may not share.
                let at = read.get("mountpoint").unwrap_or("its mountpoint");
                notes.push(format!(
                    "{dataset} is mounted on the host at {at}: the host and the pods would share it \
                     (a ReadWriteOncePod publish is refused while the driver sees that mount); to hand it \
                     to Kubernetes alone, stop its users and `zfs set mountpoint=legacy {dataset}` first"
                ));
            }
            let found = format!("a ZFS filesystem of {} ({how})", k8s::quantity(capacity));
            (capacity, Presentation::Filesystem { fs_type: "zfs".into() }, found)
        }
        VolumeKind::Zvol => {
            let device = format::wait_for_zvol(dataset.as_str(), DEVICE_WAIT).await.map_err(|e| {
                CliError::Failed(format!(
                    "{e}: cannot tell what zvol {dataset} holds (is volmode=none set on it, or is udev not running?)"
                ))
            })?;
            let content = Formatter::new(access.timeout())
                .probe(&device)
                .await
                .map_err(|e| CliError::Failed(format!("probing {}: {e}", device.display())))?;
            let size = k8s::quantity(volume.capacity);
            let (presentation, found) = zvol_presentation(&content, dataset, &size, &mut notes);
            (volume.capacity, presentation, found)
        }
    };
    Ok(Inspected { dataset: dataset.clone(), kind: volume.kind, capacity_bytes, presentation, found, notes })
}

/// A zvol's presentation by what blkid found on it, with the reason in words.
fn zvol_presentation(content: &DeviceContent, dataset: &DatasetName, size: &str, notes: &mut Vec<String>) -> (Presentation, String) {
    match content {
        DeviceContent::Filesystem(fs) if MOUNTABLE.contains(&fs.as_str()) => (
            Presentation::Filesystem { fs_type: fs.clone() },
            format!("a zvol of {size} holding {fs}: a filesystem volume"),
        ),
        DeviceContent::Filesystem(other) => {
            notes.push(format!(
                "{dataset} holds {other}, which the driver does not mount (it mounts ext4, xfs and btrfs): \
                 imported as a raw block volume"
            ));
            (Presentation::Block, format!("a zvol of {size} holding {other}: a raw block volume"))
        }
        DeviceContent::PartitionTable(table) => (
            Presentation::Block,
            format!("a zvol of {size} holding a {table} partition table (a whole disk): a raw block volume"),
        ),
        DeviceContent::Empty => {
            notes.push(format!(
                "blkid finds no filesystem or partition table on {dataset}: imported as a raw block volume \
                 (the driver never formats a zvol it did not create)"
            ));
            (Presentation::Block, format!("a zvol of {size} with no filesystem blkid knows: a raw block volume"))
        }
    }
}

fn volume_mode(inspected: &Inspected) -> &'static str {
    match inspected.presentation {
        Presentation::Filesystem { .. } => "Filesystem",
        Presentation::Block => "Block",
    }
}

pub fn persistent_volume(inspected: &Inspected, options: &ClaimOptions) -> Value {
    let mut csi = json!({
        "driver": options.driver_name,
        "volumeHandle": inspected.dataset.as_str(),
    });
    if let Presentation::Filesystem { fs_type } = &inspected.presentation {
        csi["fsType"] = json!(fs_type);
    }
    json!({
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": options.volume_name},
        "spec": {
            "capacity": {"storage": k8s::quantity(inspected.capacity_bytes)},
            "volumeMode": volume_mode(inspected),
            "accessModes": [options.access_mode.as_str()],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": options.storage_class,
            "claimRef": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": options.namespace,
                "name": options.claim_name,
            },
            "csi": csi,
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [{
                "key": crate::driver::topology_key(&options.driver_name),
                "operator": "In",
                "values": [options.node],
            }]}]}},
        },
    })
}

pub fn persistent_volume_claim(inspected: &Inspected, options: &ClaimOptions) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": options.claim_name, "namespace": options.namespace},
        "spec": {
            "storageClassName": options.storage_class,
            "volumeName": options.volume_name,
            "volumeMode": volume_mode(inspected),
            "accessModes": [options.access_mode.as_str()],
            "resources": {"requests": {"storage": k8s::quantity(inspected.capacity_bytes)}},
        },
    })
}

/// The two manifests as YAML documents, under a comment saying what was found.
pub fn render_yaml(inspected: &Inspected, options: &ClaimOptions) -> String {
    let mut out = format!(
        "# zfs-csi import {}, on node {}:\n\
         # {}.\n\
         # Nothing was changed on the dataset. Retain: deleting the claim or the PV leaves the data;\n\
         # the driver destroys only datasets it created.\n",
        inspected.dataset,
        options.node,
        // One comment line, whatever a tool reported.
        inspected.found.replace(['\n', '\r'], " ")
    );
    out.push_str(&super::yaml::to_yaml(&persistent_volume(inspected, options)));
    out.push_str("---\n");
    out.push_str(&super::yaml::to_yaml(&persistent_volume_claim(inspected, options)));
    out
}

/// The two manifests as a JSON v1 List.
pub fn render_json(inspected: &Inspected, options: &ClaimOptions) -> String {
    let list = json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": [persistent_volume(inspected, options), persistent_volume_claim(inspected, options)],
    });
    // A Value of strings and numbers always serializes.
    let mut text = serde_json::to_string_pretty(&list).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &str) -> Vec<DatasetName> {
        list.split(',').map(|p| DatasetName::parse(p).unwrap()).collect()
    }

    #[test]
    fn pool_roots_parents_and_outsiders_are_refused_before_anything_runs() {
        let parents = names("vms,tank/k8s");
        assert_eq!(check_dataset("vms/HomeAssistant", &parents).unwrap().as_str(), "vms/HomeAssistant");
        assert_eq!(check_dataset("tank/k8s/media", &parents).unwrap().as_str(), "tank/k8s/media");
        let refused = |given: &str| match check_dataset(given, &parents) {
            Err(CliError::Refused(message)) => message,
            other => panic!("{given}: {other:?}"),
        };
        assert!(refused("vms").contains("root of pool vms"));
        assert!(refused("tank").contains("root of pool tank"));
        assert!(refused("tank/k8s").contains("one of the parents"));
        assert!(refused("tank/media").contains("outside the parents (vms,tank/k8s)"));
        assert!(refused("ai/x").contains("outside the parents"));
        assert!(refused("vms/a@snap").contains("is a snapshot"));
        assert!(refused("vms/a b").contains("not a dataset name"));
        assert_eq!(CliError::Refused(String::new()).exit_code(), 2);
        assert_eq!(CliError::Failed(String::new()).exit_code(), 1);
    }

    fn options(storage_class: &str, access_mode: AccessMode) -> ClaimOptions {
        ClaimOptions {
            driver_name: "zfs-csi.io".into(),
            node: "zfs-node-1".into(),
            volume_name: "vms-homeassistant".into(),
            claim_name: "homeassistant".into(),
            namespace: "default".into(),
            storage_class: storage_class.into(),
            access_mode,
        }
    }

    fn zvol(name: &str, bytes: u64, presentation: Presentation, found: &str) -> Inspected {
        Inspected {
            dataset: DatasetName::parse(name).unwrap(),
            kind: VolumeKind::Zvol,
            capacity_bytes: bytes,
            presentation,
            found: found.into(),
            notes: Vec::new(),
        }
    }

    #[test]
    fn a_block_volume_has_no_fstype_and_binds_its_claim_only() {
        let raw = zvol("vms/HomeAssistant", 128 << 30, Presentation::Block, "raw");
        let o = options("", AccessMode::ReadWriteOnce);
        let pv = persistent_volume(&raw, &o);
        let spec = &pv["spec"];
        assert_eq!(spec["csi"], json!({"driver": "zfs-csi.io", "volumeHandle": "vms/HomeAssistant"}));
        assert_eq!(spec["volumeMode"], "Block");
        assert_eq!(spec["capacity"]["storage"], "128Gi");
        assert_eq!(spec["persistentVolumeReclaimPolicy"], "Retain");
        assert_eq!(spec["storageClassName"], "");
        assert_eq!(spec["claimRef"]["name"], "homeassistant");
        assert_eq!(spec["claimRef"]["namespace"], "default");
        let expression = &spec["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0];
        assert_eq!(expression, &json!({"key": "zfs-csi.io/node", "operator": "In", "values": ["zfs-node-1"]}));
        let pvc = persistent_volume_claim(&raw, &o);
        assert_eq!(pvc["metadata"], json!({"name": "homeassistant", "namespace": "default"}));
        assert_eq!(pvc["spec"]["volumeName"], "vms-homeassistant");
        assert_eq!(pvc["spec"]["volumeMode"], "Block");
        assert_eq!(pvc["spec"]["storageClassName"], "");
        assert_eq!(pvc["spec"]["resources"]["requests"]["storage"], spec["capacity"]["storage"]);
        assert_eq!(pvc["spec"]["accessModes"], spec["accessModes"]);
    }

    #[test]
    fn a_filesystem_volume_names_its_fstype() {
        let ext4 = zvol("vms/db", 20 << 30, Presentation::Filesystem { fs_type: "ext4".into() }, "ext4");
        let pv = persistent_volume(&ext4, &options("zfs-vms", AccessMode::ReadWriteOncePod));
        assert_eq!(pv["spec"]["csi"]["fsType"], "ext4");
        assert_eq!(pv["spec"]["volumeMode"], "Filesystem");
        assert_eq!(pv["spec"]["accessModes"], json!(["ReadWriteOncePod"]));
        assert_eq!(pv["spec"]["storageClassName"], "zfs-vms");
        let json: Value = serde_json::from_str(&render_json(&ext4, &options("", AccessMode::ReadWriteOnce))).unwrap();
        assert_eq!(json["kind"], "List");
        assert_eq!(json["items"][0]["kind"], "PersistentVolume");
        assert_eq!(json["items"][1]["kind"], "PersistentVolumeClaim");
    }

    #[test]
    fn what_blkid_finds_decides_the_volume_mode() {
        let name = DatasetName::parse("vms/x").unwrap();
        let mut notes = Vec::new();
        let mode = |content: DeviceContent, notes: &mut Vec<String>| zvol_presentation(&content, &name, "1Gi", notes).0;
        assert_eq!(mode(DeviceContent::Filesystem("xfs".into()), &mut notes), Presentation::Filesystem { fs_type: "xfs".into() });
        assert_eq!(mode(DeviceContent::Filesystem("btrfs".into()), &mut notes), Presentation::Filesystem { fs_type: "btrfs".into() });
        assert!(notes.is_empty());
        assert_eq!(mode(DeviceContent::PartitionTable("gpt".into()), &mut notes), Presentation::Block);
        assert_eq!(mode(DeviceContent::Filesystem("vfat".into()), &mut notes), Presentation::Block);
        assert_eq!(mode(DeviceContent::Empty, &mut notes), Presentation::Block);
        assert_eq!(notes.len(), 2, "{notes:?}");
    }

    /// The examples in deploy/examples/import are exactly what import prints for three
    /// datasets; hack/validate-deploy.sh checks them against the Kubernetes schemas, so this
    /// test ties the renderer to that check. After a deliberate change of the output:
    /// `ZFS_CSI_UPDATE_EXAMPLES=1 cargo test -p zfs-csi examples_in_deploy` rewrites them.
    #[test]
    fn examples_in_deploy_are_what_import_prints() {
        let found_gpt = "a zvol of 128Gi holding a gpt partition table (a whole disk): a raw block volume";
        let samples = [
            (
                "homeassistant-block.yaml",
                zvol("vms/HomeAssistant", 128 << 30, Presentation::Block, found_gpt),
                options("", AccessMode::ReadWriteOnce),
            ),
            (
                "postgres-ext4.yaml",
                zvol(
                    "vms/postgres-data",
                    20 << 30,
                    Presentation::Filesystem { fs_type: "ext4".into() },
                    "a zvol of 20Gi holding ext4: a filesystem volume",
                ),
                ClaimOptions {
                    volume_name: "vms-postgres-data".into(),
                    claim_name: "postgres-data".into(),
                    namespace: "databases".into(),
                    ..options("zfs-vms", AccessMode::ReadWriteOncePod)
                },
            ),
            (
                "media-library-zfs.yaml",
                Inspected {
                    dataset: DatasetName::parse("tank/media-library").unwrap(),
                    kind: VolumeKind::Filesystem,
                    capacity_bytes: 2 << 40,
                    presentation: Presentation::Filesystem { fs_type: "zfs".into() },
                    found: "a ZFS filesystem of 2Ti (its quota)".into(),
                    notes: Vec::new(),
                },
                ClaimOptions {
                    volume_name: "tank-media-library".into(),
                    claim_name: "media-library".into(),
                    namespace: "media".into(),
                    ..options("", AccessMode::ReadWriteOnce)
                },
            ),
        ];
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/import");
        let update = std::env::var_os("ZFS_CSI_UPDATE_EXAMPLES").is_some();
        for (file, inspected, options) in samples {
            let rendered = render_yaml(&inspected, &options);
            let path = dir.join(file);
            if update {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&path, &rendered).unwrap();
                continue;
            }
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                committed == rendered,
                "{} is not what import prints now:\n{rendered}\nregenerate: ZFS_CSI_UPDATE_EXAMPLES=1 cargo test -p zfs-csi examples_in_deploy",
                path.display()
            );
        }
    }
}

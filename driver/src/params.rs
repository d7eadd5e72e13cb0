//! StorageClass parameters, parsed once into a typed struct. Names follow OpenEBS ZFS-LocalPV
//! where the concept is the same, so its StorageClasses move over by changing `provisioner:`.

use std::collections::{BTreeMap, HashMap};

use crate::zfs::DatasetName;

/// Keys the provisioner adds (`--extra-create-metadata`) or consumes; metadata, not errors.
const PROVISIONER_PREFIX: &str = "csi.storage.k8s.io/";
const PVC_NAME: &str = "csi.storage.k8s.io/pvc/name";
const PVC_NAMESPACE: &str = "csi.storage.k8s.io/pvc/namespace";
const PV_NAME: &str = "csi.storage.k8s.io/pv/name";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsType {
    /// A ZFS filesystem (dataset).
    Zfs,
    Ext4,
    Xfs,
    Btrfs,
}

impl FsType {
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "zfs" => Some(Self::Zfs),
            "ext4" => Some(Self::Ext4),
            "xfs" => Some(Self::Xfs),
            "btrfs" => Some(Self::Btrfs),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Zfs => "zfs",
            Self::Ext4 => "ext4",
            Self::Xfs => "xfs",
            Self::Btrfs => "btrfs",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuotaType {
    /// `refquota`: snapshots do not count against the volume's size (the default).
    RefQuota,
    /// `quota`: snapshots and descendants count too.
    Quota,
}

/// Kubernetes names of the PVC and PV, when the provisioner passes them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KubernetesMetadata {
    pub pvc_name: Option<String>,
    pub pvc_namespace: Option<String>,
    pub pv_name: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeParams {
    /// `poolname`: the pool or parent dataset to create the volume in.
    pub parent: Option<DatasetName>,
    pub fstype: Option<FsType>,
    pub recordsize: Option<u64>,
    pub volblocksize: Option<u64>,
    pub compression: Option<String>,
    pub dedup: Option<String>,
    /// `thinprovision`: no reservation (datasets) or a sparse zvol. Default no, as OpenEBS.
    pub thin: bool,
    pub quota_type: QuotaType,
    /// `shared`: several pods on the node may publish the volume at once.
    pub shared: bool,
    pub encryption: Option<String>,
    pub keyformat: Option<String>,
    pub keylocation: Option<String>,
    pub metadata: KubernetesMetadata,
    /// The StorageClass keys as given, sorted: a repeated CreateVolume must carry the same.
    pub storage_class: BTreeMap<String, String>,
}

/// The ZFS properties a StorageClass may set, paired with their values.
impl VolumeParams {
    pub fn zfs_properties(&self) -> Vec<(&'static str, String)> {
        let mut props = Vec::new();
        if let Some(v) = &self.compression {
            props.push(("compression", v.clone()));
        }
        if let Some(v) = &self.dedup {
            props.push(("dedup", v.clone()));
        }
        if let Some(v) = self.recordsize {
            props.push(("recordsize", v.to_string()));
        }
        props
    }

    /// The StorageClass's creation-only properties: ZFS fixes them when it creates a dataset
    /// (`zfs set` cannot change them), and a clone has its origin's (`zfs clone -o` refuses
    /// them: "'volblocksize' is readonly", "Encryption properties must inherit from origin
    /// dataset"). They are passed as given, never compared with the parent: encryption
    /// depends on keys, not only values, and volblocksize is not inherited.
    pub fn creation_only_properties(&self) -> Vec<(&'static str, String)> {
        [
            ("volblocksize", self.volblocksize.map(|b| b.to_string())),
            ("encryption", self.encryption.clone()),
            ("keyformat", self.keyformat.clone()),
            ("keylocation", self.keylocation.clone()),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect()
    }
}

/// Whether the StorageClass value `wanted` of a creation-only property is the setting ZFS
/// shows as `actual` (`zfs get -p`): `encryption=on` is the default suite, aes-256-gcm.
pub fn same_setting(property: &str, wanted: &str, actual: &str) -> bool {
    match (property, wanted) {
        ("encryption", "on") => actual == "aes-256-gcm",
        _ => wanted == actual,
    }
}

fn yes_no(key: &str, v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "yes" | "true" | "on" => Ok(true),
        "no" | "false" | "off" => Ok(false),
        _ => Err(format!("{key}: {v:?} is not yes or no")),
    }
}

/// `128k`, `1M`, `4096`: a power of two between `min` and `max` bytes.
fn block_size(key: &str, v: &str, min: u64, max: u64) -> Result<u64, String> {
    let lower = v.trim().to_ascii_lowercase();
    let unit = lower.strip_suffix('b').unwrap_or(&lower);
    let (digits, multiplier) = if let Some(d) = unit.strip_suffix('k') {
        (d, 1u64 << 10)
    } else if let Some(d) = unit.strip_suffix('m') {
        (d, 1u64 << 20)
    } else {
        (unit, 1)
    };
    let bytes = digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(|| format!("{key}: {v:?} is not a size such as 16k or 131072"))?;
    if !bytes.is_power_of_two() || bytes < min || bytes > max {
        return Err(format!("{key}: {v:?} must be a power of two from {min} to {max} bytes"));
    }
    Ok(bytes)
}

fn one_of(key: &str, v: &str, allowed: &[&str]) -> Result<String, String> {
    let lower = v.to_ascii_lowercase();
    if allowed.contains(&lower.as_str()) {
        Ok(lower)
    } else {
        Err(format!("{key}: {v:?} is not one of {}", allowed.join(", ")))
    }
}

fn compression(v: &str) -> Result<String, String> {
    let lower = v.to_ascii_lowercase();
    let level_ok = |prefix: &str, range: std::ops::RangeInclusive<u32>| {
        lower
            .strip_prefix(prefix)
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|n| range.contains(&n))
    };
    let ok = matches!(lower.as_str(), "on" | "off" | "lzjb" | "gzip" | "zle" | "lz4" | "zstd" | "zstd-fast")
        || level_ok("gzip-", 1..=9)
        || level_ok("zstd-", 1..=19)
        || level_ok("zstd-fast-", 1..=1000);
    if ok {
        Ok(lower)
    } else {
        Err(format!("compression: {v:?} is not a ZFS compression (on, off, lz4, zstd, zstd-N, gzip-N, zle, lzjb)"))
    }
}

/// Kubernetes object names: DNS labels/subdomains, nothing that could confuse a property.
fn kubernetes_name(key: &str, v: &str) -> Result<String, String> {
    let ok = !v.is_empty()
        && v.len() <= 253
        && v.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    if ok {
        Ok(v.to_string())
    } else {
        Err(format!("{key}: {v:?} is not a Kubernetes object name"))
    }
}

impl VolumeParams {
    /// Parses CreateVolume/GetCapacity parameters; the error lists every problem found.
    pub fn parse(parameters: &HashMap<String, String>) -> Result<Self, String> {
        let mut params = VolumeParams {
            parent: None,
            fstype: None,
            recordsize: None,
            volblocksize: None,
            compression: None,
            dedup: None,
            thin: false,
            quota_type: QuotaType::RefQuota,
            shared: false,
            encryption: None,
            keyformat: None,
            keylocation: None,
            metadata: KubernetesMetadata::default(),
            storage_class: BTreeMap::new(),
        };
        let mut errors = Vec::new();
        let mut unknown = Vec::new();
        for (key, value) in parameters {
            let result: Result<(), String> = (|| {
                match key.as_str() {
                    "poolname" => {
                        params.parent = Some(
                            DatasetName::parse(value).map_err(|e| format!("poolname: {value:?}: {e}"))?,
                        )
                    }
                    "fstype" => {
                        params.fstype = Some(FsType::parse(value).ok_or_else(|| {
                            format!("fstype: {value:?} is not one of zfs, ext4, xfs, btrfs")
                        })?)
                    }
                    "recordsize" => params.recordsize = Some(block_size(key, value, 512, 16 << 20)?),
                    "volblocksize" => params.volblocksize = Some(block_size(key, value, 512, 16 << 20)?),
                    "compression" => params.compression = Some(compression(value)?),
                    "dedup" => {
                        params.dedup = Some(one_of(key, value, DEDUP_VALUES)?)
                    }
                    "thinprovision" => params.thin = yes_no(key, value)?,
                    "quotatype" => {
                        params.quota_type = match one_of(key, value, &["refquota", "quota"])?.as_str() {
                            "quota" => QuotaType::Quota,
                            _ => QuotaType::RefQuota,
                        }
                    }
                    "shared" => params.shared = yes_no(key, value)?,
                    "encryption" => {
                        params.encryption = Some(one_of(
                            key,
                            value,
                            &["on", "off", "aes-128-ccm", "aes-192-ccm", "aes-256-ccm", "aes-128-gcm",
                              "aes-192-gcm", "aes-256-gcm"],
                        )?)
                    }
                    "keyformat" => params.keyformat = Some(one_of(key, value, &["raw", "hex", "passphrase"])?),
                    "keylocation" => {
                        // "prompt" would wait for a terminal the driver does not have.
                        if !(value.starts_with("file:///") || value.starts_with("https://")) {
                            return Err(format!("keylocation: {value:?} must be file:///path or https://…"));
                        }
                        if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
                            return Err(format!("keylocation: {value:?} has whitespace"));
                        }
                        params.keylocation = Some(value.clone())
                    }
                    PVC_NAME => params.metadata.pvc_name = Some(kubernetes_name(key, value)?),
                    PVC_NAMESPACE => params.metadata.pvc_namespace = Some(kubernetes_name(key, value)?),
                    PV_NAME => params.metadata.pv_name = Some(kubernetes_name(key, value)?),
                    k if k.starts_with(PROVISIONER_PREFIX) => {}
                    _ => unknown.push(key.clone()),
                }
                Ok(())
            })();
            if let Err(e) = result {
                errors.push(e);
            }
            if !key.starts_with(PROVISIONER_PREFIX) {
                params.storage_class.insert(key.clone(), value.clone());
            }
        }
        if !unknown.is_empty() {
            unknown.sort();
            errors.push(format!(
                "unknown parameters {}; known: poolname, fstype, recordsize, volblocksize, compression, dedup, thinprovision, quotatype, shared, encryption, keyformat, keylocation",
                unknown.join(", ")
            ));
        }
        if !errors.is_empty() {
            errors.sort();
            return Err(errors.join("; "));
        }
        Ok(params)
    }
}

/// The key in a provisioner or node-stage Secret that holds a volume's encryption key.
pub const SECRET_KEY: &str = "encryptionKey";

impl VolumeParams {
    /// Makes the volume its own encryption root keyed from the provisioner secret
    /// (`keylocation=prompt`, the key on standard input), with the class's `encryption` and
    /// `keyformat` (default `on` and `passphrase`); the key is checked against the format.
    pub fn use_key_from_secret(&mut self, key: &str) -> Result<(), String> {
        if let Some(location) = &self.keylocation {
            return Err(format!(
                "keylocation {location} and the provisioner secret's {SECRET_KEY} both give the key; use one of them"
            ));
        }
        if self.encryption.as_deref() == Some("off") {
            return Err(format!("encryption is off, yet the provisioner secret gives an {SECRET_KEY}"));
        }
        let format = self.keyformat.get_or_insert_with(|| "passphrase".to_string()).clone();
        check_secret_key(&format, key)?;
        self.encryption.get_or_insert_with(|| "on".to_string());
        self.keylocation = Some("prompt".to_string());
        Ok(())
    }
}

/// Whether a Secret's key fits `keyformat`, checked before ZFS sees it so that a bad Secret is
/// named as such: a passphrase of 8 to 512 bytes, or 64 hexadecimal digits. `raw` (32 binary
/// bytes) cannot come through CSI, whose secrets are UTF-8 strings.
pub fn check_secret_key(keyformat: &str, key: &str) -> Result<(), String> {
    match keyformat {
        "passphrase" if (8..=512).contains(&key.len()) => Ok(()),
        "passphrase" => Err(format!("the Secret's {SECRET_KEY} must be a passphrase of 8 to 512 bytes")),
        "hex" if key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(()),
        "hex" => Err(format!("the Secret's {SECRET_KEY} must be 64 hexadecimal digits (keyformat hex)")),
        other => Err(format!(
            "keyformat {other} cannot be keyed from a Secret (its values are text): use passphrase or hex"
        )),
    }
}

/// The StorageClass keys that only mean something when a volume is created: asked for in a
/// VolumeAttributesClass they are refused, by name, as ZFS or the volume's kind fixes them.
const CREATION_ONLY_KEYS: &[(&str, &str)] = &[
    ("poolname", "a volume stays in the pool it was created in"),
    ("fstype", "a volume's filesystem is chosen at creation"),
    ("volblocksize", "ZFS fixes a zvol's block size at creation"),
    ("thinprovision", "the reservation follows the StorageClass at creation and expansion"),
    ("quotatype", "the quota property is chosen at creation"),
    ("shared", "sharing is recorded at creation"),
    ("encryption", "ZFS fixes encryption at creation"),
    ("keyformat", "ZFS fixes encryption at creation"),
    ("keylocation", "ZFS fixes encryption at creation"),
];

/// The ZFS properties a VolumeAttributesClass may change on a live volume (ControllerModifyVolume,
/// and `mutable_parameters` in CreateVolume), canonical: lower case, sizes in bytes, the form
/// `zfs get -p` prints, so a value compares equal to the parent's effective value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MutableParams {
    pub properties: BTreeMap<&'static str, String>,
}

/// The mutable keys, in the order the documentation lists them.
pub const MUTABLE_KEYS: &[&str] = &[
    "compression", "recordsize", "atime", "dedup", "sync", "logbias", "primarycache", "secondarycache",
    "redundant_metadata", "special_small_blocks",
];

const DEDUP_VALUES: &[&str] = &[
    "on", "off", "verify", "sha256", "sha256,verify", "sha512", "sha512,verify", "skein", "skein,verify",
    "edonr,verify", "blake3", "blake3,verify",
];

impl MutableParams {
    /// Parses mutable parameters; the error names every refused key and why.
    pub fn parse(parameters: &HashMap<String, String>) -> Result<Self, String> {
        let mut properties = BTreeMap::new();
        let mut errors = Vec::new();
        let mut unknown = Vec::new();
        for (key, value) in parameters {
            let parsed = match key.as_str() {
                "compression" => compression(value).map(|v| ("compression", v)),
                "recordsize" => block_size(key, value, 512, 16 << 20).map(|b| ("recordsize", b.to_string())),
                "atime" => one_of(key, value, &["on", "off"]).map(|v| ("atime", v)),
                "dedup" => one_of(key, value, DEDUP_VALUES).map(|v| ("dedup", v)),
                "sync" => one_of(key, value, &["standard", "always", "disabled"]).map(|v| ("sync", v)),
                "logbias" => one_of(key, value, &["latency", "throughput"]).map(|v| ("logbias", v)),
                "primarycache" => one_of(key, value, &["all", "none", "metadata"]).map(|v| ("primarycache", v)),
                "secondarycache" => one_of(key, value, &["all", "none", "metadata"]).map(|v| ("secondarycache", v)),
                "redundant_metadata" => {
                    one_of(key, value, &["all", "most", "some", "none"]).map(|v| ("redundant_metadata", v))
                }
                // 0 turns it off; else blocks up to this size go to the special vdev.
                "special_small_blocks" if value.trim() == "0" => Ok(("special_small_blocks", "0".to_string())),
                "special_small_blocks" => {
                    block_size(key, value, 512, 16 << 20).map(|b| ("special_small_blocks", b.to_string()))
                }
                k => {
                    match CREATION_ONLY_KEYS.iter().find(|(name, _)| *name == k) {
                        Some((name, why)) => errors.push(format!("{name} cannot change on a live volume ({why})")),
                        None => unknown.push(key.clone()),
                    }
                    continue;
                }
            };
            match parsed {
                Ok((k, v)) => {
                    properties.insert(k, v);
                }
                Err(e) => errors.push(e),
            }
        }
        if !unknown.is_empty() {
            unknown.sort();
            errors.push(format!(
                "unknown mutable parameters {}; mutable: {}",
                unknown.join(", "),
                MUTABLE_KEYS.join(", ")
            ));
        }
        if !errors.is_empty() {
            errors.sort();
            return Err(errors.join("; "));
        }
        Ok(Self { properties })
    }

    pub fn is_empty(&self) -> bool {
        self.properties.is_empty()
    }

    /// The properties that apply to a volume of this kind: a zvol has no `recordsize` (its
    /// block size is `volblocksize`, fixed at creation), so a class that serves both kinds
    /// leaves it out for zvols, as CreateVolume does with the StorageClass's.
    pub fn applicable(&self, zvol: bool) -> BTreeMap<&'static str, String> {
        self.properties
            .iter()
            .filter(|(k, _)| !(zvol && **k == "recordsize"))
            .map(|(k, v)| (*k, v.clone()))
            .collect()
    }

    /// The form recorded in `zfs-csi.io:mutable-parameters`: `key=value`, sorted, separated
    /// by `;` (a `dedup` value such as `sha256,verify` holds a comma).
    pub fn canonical(&self) -> String {
        self.properties.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(";")
    }

    /// Reads a recorded canonical form back; entries that no longer parse are dropped.
    pub fn from_canonical(recorded: &str) -> Self {
        let pairs: HashMap<String, String> = recorded
            .split(';')
            .filter_map(|entry| entry.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let properties = pairs
            .into_iter()
            .filter_map(|(k, v)| {
                let one = HashMap::from([(k, v)]);
                Self::parse(&one).ok()
            })
            .flat_map(|p| p.properties)
            .collect();
        Self { properties }
    }

    /// These parameters with `newer`'s values over them: a modification names only the keys
    /// it changes (CSI: "only keys that are specified should result in modifications").
    pub fn merged(&self, newer: &MutableParams) -> MutableParams {
        let mut properties = self.properties.clone();
        properties.extend(newer.properties.iter().map(|(k, v)| (*k, v.clone())));
        MutableParams { properties }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<VolumeParams, String> {
        VolumeParams::parse(&pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    #[test]
    fn empty_parameters_give_defaults() {
        let p = parse(&[]).unwrap();
        assert_eq!(p.parent, None);
        assert!(!p.thin);
        assert_eq!(p.quota_type, QuotaType::RefQuota);
        assert!(p.zfs_properties().is_empty());
    }

    #[test]
    fn openebs_storage_class_parameters_parse() {
        let p = parse(&[
            ("poolname", "tank/media"),
            ("fstype", "xfs"),
            ("volblocksize", "64k"),
            ("recordsize", "1M"),
            ("compression", "zstd-3"),
            ("dedup", "off"),
            ("thinprovision", "yes"),
            ("quotatype", "quota"),
            ("shared", "yes"),
            ("csi.storage.k8s.io/pvc/name", "data"),
            ("csi.storage.k8s.io/pvc/namespace", "default"),
            ("csi.storage.k8s.io/pv/name", "pvc-1234"),
        ])
        .unwrap();
        assert_eq!(p.parent.unwrap().as_str(), "tank/media");
        assert_eq!(p.fstype, Some(FsType::Xfs));
        assert_eq!(p.volblocksize, Some(65536));
        assert_eq!(p.recordsize, Some(1 << 20));
        assert_eq!(p.compression.as_deref(), Some("zstd-3"));
        assert!(p.thin && p.shared);
        assert_eq!(p.quota_type, QuotaType::Quota);
        assert_eq!(p.metadata.pv_name.as_deref(), Some("pvc-1234"));
        assert!(!p.storage_class.keys().any(|k| k.starts_with("csi.storage.k8s.io/")));
    }

    #[test]
    fn unknown_parameters_are_named() {
        let e = parse(&[("poolname", "vms"), ("compresion", "lz4"), ("zpool", "x")]).unwrap_err();
        assert!(e.contains("compresion, zpool"), "{e}");
    }

    #[test]
    fn creation_only_properties_are_the_class_values_and_on_means_aes_256_gcm() {
        let p = parse(&[("volblocksize", "64k"), ("encryption", "on"), ("keyformat", "hex"), ("compression", "zstd")]).unwrap();
        assert_eq!(
            p.creation_only_properties(),
            [("volblocksize", "65536".to_string()), ("encryption", "on".into()), ("keyformat", "hex".into())]
        );
        assert!(parse(&[("compression", "zstd")]).unwrap().creation_only_properties().is_empty());
        assert!(same_setting("encryption", "on", "aes-256-gcm"));
        assert!(!same_setting("encryption", "on", "off"));
        assert!(same_setting("encryption", "aes-128-ccm", "aes-128-ccm"));
        assert!(same_setting("volblocksize", "16384", "16384"));
        assert!(!same_setting("volblocksize", "65536", "16384"));
    }

    #[test]
    fn bad_values_are_refused() {
        for (k, v) in [
            ("poolname", "vms/../tank"),
            ("fstype", "ntfs"),
            ("volblocksize", "3k"),
            ("recordsize", "64"),
            ("compression", "gzip-12"),
            ("compression", "lz4;rm"),
            ("thinprovision", "maybe"),
            ("quotatype", "userquota"),
            ("keylocation", "prompt"),
            ("csi.storage.k8s.io/pvc/name", "Bad\tName"),
        ] {
            assert!(parse(&[(k, v)]).is_err(), "{k}={v} accepted");
        }
    }
    fn mutable(pairs: &[(&str, &str)]) -> Result<MutableParams, String> {
        MutableParams::parse(&pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    #[test]
    fn mutable_parameters_parse_to_the_form_zfs_get_prints() {
        let m = mutable(&[
            ("compression", "ZSTD"),
            ("recordsize", "1M"),
            ("atime", "off"),
            ("dedup", "sha256,verify"),
            ("sync", "always"),
            ("logbias", "throughput"),
            ("primarycache", "metadata"),
            ("secondarycache", "none"),
            ("redundant_metadata", "most"),
            ("special_small_blocks", "64K"),
        ])
        .unwrap();
        assert_eq!(m.properties.get("compression").map(String::as_str), Some("zstd"));
        assert_eq!(m.properties.get("recordsize").map(String::as_str), Some("1048576"));
        assert_eq!(m.properties.get("special_small_blocks").map(String::as_str), Some("65536"));
        assert_eq!(m.properties.len(), MUTABLE_KEYS.len());
        assert_eq!(mutable(&[("special_small_blocks", "0")]).unwrap().properties["special_small_blocks"], "0");
        assert!(mutable(&[]).unwrap().is_empty());
    }

    #[test]
    fn creation_only_and_unknown_mutable_parameters_are_refused_by_name() {
        for key in ["volblocksize", "encryption", "keyformat", "keylocation", "fstype", "poolname", "thinprovision", "quotatype", "shared"] {
            let e = mutable(&[(key, "x"), ("compression", "zstd")]).unwrap_err();
            assert!(e.contains(key) && e.contains("cannot change on a live volume"), "{key}: {e}");
        }
        let e = mutable(&[("XXX_FakeKey", "XXX_FakeValue"), ("compresion", "lz4")]).unwrap_err();
        assert!(e.contains("unknown mutable parameters XXX_FakeKey, compresion"), "{e}");
        for (k, v) in [("compression", "gzip-12"), ("recordsize", "3k"), ("atime", "maybe"), ("sync", "sometimes"), ("special_small_blocks", "100"), ("keylocation", "file:///k"), ("thinprovision", "yes")] {
            assert!(mutable(&[(k, v)]).is_err(), "{k}={v} accepted");
        }
    }

    #[test]
    fn mutable_parameters_round_trip_merge_and_skip_recordsize_on_zvols() {
        let m = mutable(&[("compression", "zstd"), ("dedup", "sha256,verify"), ("recordsize", "64k")]).unwrap();
        assert_eq!(m.canonical(), "compression=zstd;dedup=sha256,verify;recordsize=65536");
        assert_eq!(MutableParams::from_canonical(&m.canonical()), m);
        assert!(MutableParams::from_canonical("").is_empty());
        let later = mutable(&[("compression", "lz4"), ("atime", "off")]).unwrap();
        assert_eq!(m.merged(&later).canonical(), "atime=off;compression=lz4;dedup=sha256,verify;recordsize=65536");
        assert!(!m.applicable(true).contains_key("recordsize"));
        assert!(m.applicable(false).contains_key("recordsize"));
    }
    #[test]
    fn a_secret_key_makes_a_prompt_encryption_root_and_conflicts_are_refused() {
        let mut p = parse(&[("poolname", "vms")]).unwrap();
        p.use_key_from_secret("correct horse battery").unwrap();
        assert_eq!(
            p.creation_only_properties(),
            [("encryption", "on".to_string()), ("keyformat", "passphrase".into()), ("keylocation", "prompt".into())]
        );
        let mut hex = parse(&[("keyformat", "hex"), ("encryption", "aes-128-gcm")]).unwrap();
        assert!(hex.use_key_from_secret("not hex at all").unwrap_err().contains("64 hexadecimal"));
        hex.use_key_from_secret(&"ab".repeat(32)).unwrap();
        assert_eq!(hex.encryption.as_deref(), Some("aes-128-gcm"));
        assert!(parse(&[("keylocation", "file:///k")]).unwrap().use_key_from_secret("long enough").unwrap_err().contains("both"));
        assert!(parse(&[("encryption", "off")]).unwrap().use_key_from_secret("long enough").is_err());
        assert!(parse(&[("keyformat", "raw")]).unwrap().use_key_from_secret("long enough").unwrap_err().contains("raw"));
        assert!(parse(&[]).unwrap().use_key_from_secret("short").unwrap_err().contains("8 to 512"));
    }
}

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
                        params.dedup = Some(one_of(
                            key,
                            value,
                            &["on", "off", "verify", "sha256", "sha256,verify", "sha512", "sha512,verify",
                              "skein", "skein,verify", "edonr,verify", "blake3", "blake3,verify"],
                        )?)
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
}

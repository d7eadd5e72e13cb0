//! Kubernetes names, quantities and access modes as `zfs-csi import` writes them: checked here
//! so that the API server never refuses what it prints.

/// The longest DNS-1123 label (a namespace; also what a derived name is cut to).
const LABEL_MAX: usize = 63;
/// The longest DNS-1123 subdomain (a PersistentVolume or PersistentVolumeClaim name).
const SUBDOMAIN_MAX: usize = 253;

fn is_label(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A DNS-1123 label: a namespace.
pub fn check_label(s: &str) -> Result<String, String> {
    if is_label(s, LABEL_MAX) {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} is not a DNS-1123 label: at most {LABEL_MAX} lowercase letters, digits and '-', \
             beginning and ending with a letter or digit"
        ))
    }
}

/// A label value: the node ID, which kubelet puts on the Node as the label
/// `<driver-name>/node` (from NodeGetInfo) and which the PV's node affinity matches.
pub fn check_label_value(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= LABEL_MAX
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} cannot be a node's label value: at most {LABEL_MAX} letters, digits, '-', '_' and '.', \
             beginning and ending with a letter or digit"
        ))
    }
}

/// A DNS-1123 subdomain: the name of a PersistentVolume or PersistentVolumeClaim.
pub fn check_subdomain(s: &str) -> Result<String, String> {
    if s.len() <= SUBDOMAIN_MAX && s.split('.').all(|label| is_label(label, LABEL_MAX)) {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} is not a valid Kubernetes object name (DNS-1123 subdomain): at most {SUBDOMAIN_MAX} \
             lowercase letters, digits, '-' and '.', each '.'-separated part beginning and ending with \
             a letter or digit"
        ))
    }
}

/// A StorageClass name, or the empty string: no class, so that only this PV can bind the claim.
pub fn check_storage_class(s: &str) -> Result<String, String> {
    if s.is_empty() {
        Ok(String::new())
    } else {
        check_subdomain(s)
    }
}

/// A Kubernetes name made from a ZFS name: lowercase; anything but a letter or digit (ZFS
/// allows `_`, `.`, `:` and `-`, and `/` separates components) becomes one `-`; no `-` at
/// either end; cut to `max` characters. `None` when nothing is left (a name of only
/// punctuation).
pub fn derive_name(zfs_name: &str, max: usize) -> Option<String> {
    let mut name = String::with_capacity(zfs_name.len());
    for c in zfs_name.chars() {
        if c.is_ascii_alphanumeric() {
            name.push(c.to_ascii_lowercase());
        } else if !name.ends_with('-') {
            name.push('-');
        }
    }
    let mut name = name.trim_matches('-').to_string();
    name.truncate(max);
    let name = name.trim_end_matches('-').to_string();
    (!name.is_empty()).then_some(name)
}

/// The default claim name: the dataset's last component (`vms/HomeAssistant` → `homeassistant`),
/// a valid label (so also a valid object name).
pub fn derive_claim_name(dataset: &str) -> Option<String> {
    derive_name(dataset.rsplit('/').next().unwrap_or(dataset), LABEL_MAX)
}

/// The default PersistentVolume name: the whole dataset name (`vms/HomeAssistant` →
/// `vms-homeassistant`). PVs are cluster-wide; the pool in the name keeps `vms/data` and
/// `tank/data` apart. Cut to a label's 63 characters: a subdomain may be longer only
/// between dots, and a derived name has none.
pub fn derive_volume_name(dataset: &str) -> Option<String> {
    derive_name(dataset, LABEL_MAX)
}

/// Bytes as a Kubernetes quantity: the largest binary unit that divides them exactly, so
/// that the quantity is exactly the size (a PVC binds a PV only if its request is no larger).
pub fn quantity(bytes: u64) -> String {
    for (unit, size) in [("Ei", 1u64 << 60), ("Pi", 1 << 50), ("Ti", 1 << 40), ("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)] {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{}{unit}", bytes / size);
        }
    }
    bytes.to_string()
}

/// A PersistentVolume access mode. Kubernetes knows four; the driver serves the two on one
/// node (a pool is local).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessMode {
    ReadWriteOnce,
    ReadWriteOncePod,
}

impl AccessMode {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "ReadWriteOnce" => Ok(Self::ReadWriteOnce),
            "ReadWriteOncePod" => Ok(Self::ReadWriteOncePod),
            "ReadOnlyMany" | "ReadWriteMany" => Err(format!(
                "{s} needs a volume that several nodes reach; a ZFS pool is local to one node: \
                 use ReadWriteOnce or ReadWriteOncePod"
            )),
            _ => Err(format!(
                "{s:?} is not a Kubernetes access mode (ReadWriteOnce, ReadWriteOncePod, ReadOnlyMany, \
                 ReadWriteMany); this driver serves ReadWriteOnce and ReadWriteOncePod"
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ReadWriteOnce => "ReadWriteOnce",
            Self::ReadWriteOncePod => "ReadWriteOncePod",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_names_come_from_the_last_component() {
        assert_eq!(derive_claim_name("vms/HomeAssistant").as_deref(), Some("homeassistant"));
        assert_eq!(derive_claim_name("tank/media-library").as_deref(), Some("media-library"));
        assert_eq!(derive_claim_name("tank/a/My_Data.v2:old").as_deref(), Some("my-data-v2-old"));
        assert_eq!(derive_claim_name("tank/__x__").as_deref(), Some("x"));
        assert_eq!(derive_claim_name("tank/-_-"), None);
        let long = format!("tank/{}", "a-".repeat(100));
        let name = derive_claim_name(&long).unwrap();
        assert!(name.len() <= 63 && !name.ends_with('-'), "{name}");
        assert!(check_label(&name).is_ok());
    }

    #[test]
    fn volume_names_keep_the_pool() {
        assert_eq!(derive_volume_name("vms/HomeAssistant").as_deref(), Some("vms-homeassistant"));
        assert_eq!(derive_volume_name("tank/media/Library").as_deref(), Some("tank-media-library"));
        let name = derive_volume_name(&format!("tank/{}", "x".repeat(250))).unwrap();
        assert_eq!(name.len(), 63);
        assert!(check_subdomain(&name).is_ok());
    }

    #[test]
    fn names_are_checked_as_kubernetes_checks_them() {
        for good in ["a", "homeassistant", "a-1", "pvc.example", "0abc"] {
            assert!(check_subdomain(good).is_ok(), "{good}");
        }
        for bad in ["", "Home", "a_b", "-a", "a-", "a..b", ".a", "a b", &"a".repeat(64)] {
            assert!(check_subdomain(bad).is_err(), "{bad:?}");
        }
        assert!(check_label("kube-system").is_ok());
        assert!(check_label("a.b").is_err());
        assert!(check_label_value("zfs-node-1").is_ok());
        assert!(check_label_value("Node_1.lan").is_ok());
        for bad in ["", "-n", "n-", "a b", "a\nb", &"n".repeat(64)] {
            assert!(check_label_value(bad).is_err(), "{bad:?}");
        }
        assert_eq!(check_storage_class("").unwrap(), "");
        assert!(check_storage_class("zfs-vms").is_ok());
        assert!(check_storage_class("ZFS").is_err());
    }

    #[test]
    fn quantities_are_exact() {
        assert_eq!(quantity(128 << 30), "128Gi");
        assert_eq!(quantity(64 << 20), "64Mi");
        assert_eq!(quantity(1536 << 20), "1536Mi");
        assert_eq!(quantity(1 << 40), "1Ti");
        assert_eq!(quantity(8192 + 512), "8704");
        assert_eq!(quantity(0), "0");
    }

    #[test]
    fn access_modes_are_the_kubernetes_ones_this_driver_serves() {
        assert_eq!(AccessMode::parse("ReadWriteOnce"), Ok(AccessMode::ReadWriteOnce));
        assert_eq!(AccessMode::parse("ReadWriteOncePod").unwrap().as_str(), "ReadWriteOncePod");
        assert!(AccessMode::parse("ReadWriteMany").unwrap_err().contains("local to one node"));
        assert!(AccessMode::parse("ReadOnlyMany").is_err());
        assert!(AccessMode::parse("rwo").unwrap_err().contains("not a Kubernetes access mode"));
    }
}

//! Validated ZFS names. Every ID the driver receives becomes one of these at the edge, so no
//! string reaches a command without having passed the checks here.

use std::fmt;

/// ZFS_MAX_DATASET_NAME_LEN is 256 including the terminating NUL.
const MAX_NAME_LEN: usize = 255;

/// A filesystem or volume name such as `vms/pvc-5c1…`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct DatasetName(String);

/// A snapshot name such as `vms/pvc-5c1…@snapshot-9a0…`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SnapshotName {
    dataset: DatasetName,
    snapshot: String,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("name is empty")]
    Empty,
    #[error("name is longer than {MAX_NAME_LEN} characters")]
    TooLong,
    #[error("name has an empty component (leading, trailing or double '/')")]
    EmptyComponent,
    #[error("name has a '.' or '..' component")]
    DotComponent,
    #[error("name has the character {0:?}; ZFS names allow letters, digits and _ - . :")]
    BadCharacter(char),
    #[error("pool name must begin with a letter")]
    BadPoolName,
    #[error("a snapshot name needs exactly one '@' between dataset and snapshot")]
    NotASnapshot,
}

/// Checks one component (between '/' or after '@'). ZFS also allows a space; we refuse it
/// because nothing we create has one and it only invites quoting mistakes in operators' tools.
pub fn validate_component(component: &str) -> Result<(), NameError> {
    if component.is_empty() {
        return Err(NameError::EmptyComponent);
    }
    if component == "." || component == ".." {
        return Err(NameError::DotComponent);
    }
    match component
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':')))
    {
        Some(c) => Err(NameError::BadCharacter(c)),
        None => Ok(()),
    }
}

impl DatasetName {
    pub fn parse(name: &str) -> Result<Self, NameError> {
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        if name.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong);
        }
        for component in name.split('/') {
            validate_component(component)?;
        }
        if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
            return Err(NameError::BadPoolName);
        }
        Ok(Self(name.to_string()))
    }

    /// `self/child`, validated.
    pub fn child(&self, child: &str) -> Result<Self, NameError> {
        validate_component(child)?;
        Self::parse(&format!("{}/{}", self.0, child))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn pool(&self) -> &str {
        self.0.split('/').next().unwrap_or(&self.0)
    }

    /// The dataset this one lives in; `None` for a pool's root.
    pub fn parent(&self) -> Option<DatasetName> {
        self.0.rsplit_once('/').map(|(p, _)| DatasetName(p.to_string()))
    }

    /// True when `self` lies strictly below `ancestor` (not equal to it).
    pub fn is_strictly_under(&self, ancestor: &DatasetName) -> bool {
        self.0.len() > ancestor.0.len()
            && self.0.starts_with(&ancestor.0)
            && self.0.as_bytes()[ancestor.0.len()] == b'/'
    }

    pub fn is_same_or_under(&self, ancestor: &DatasetName) -> bool {
        self == ancestor || self.is_strictly_under(ancestor)
    }

    pub fn snapshot(&self, snapshot: &str) -> Result<SnapshotName, NameError> {
        SnapshotName::parse(&format!("{}@{}", self.0, snapshot))
    }
}

impl SnapshotName {
    pub fn parse(name: &str) -> Result<Self, NameError> {
        if name.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong);
        }
        let (dataset, snapshot) = name.split_once('@').ok_or(NameError::NotASnapshot)?;
        if snapshot.contains('@') {
            return Err(NameError::NotASnapshot);
        }
        let dataset = DatasetName::parse(dataset)?;
        validate_component(snapshot)?;
        Ok(Self {
            dataset,
            snapshot: snapshot.to_string(),
        })
    }

    pub fn dataset(&self) -> &DatasetName {
        &self.dataset
    }

    pub fn short_name(&self) -> &str {
        &self.snapshot
    }
}

impl fmt::Display for DatasetName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for SnapshotName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.dataset, self.snapshot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_names_parse() {
        assert_eq!(DatasetName::parse("vms/pvc-1a2b").unwrap().as_str(), "vms/pvc-1a2b");
        assert_eq!(DatasetName::parse("tank/media/pvc-x").unwrap().pool(), "tank");
        let snap = SnapshotName::parse("vms/pvc-1@snapshot-2").unwrap();
        assert_eq!(snap.dataset().as_str(), "vms/pvc-1");
        assert_eq!(snap.short_name(), "snapshot-2");
        assert_eq!(snap.to_string(), "vms/pvc-1@snapshot-2");
    }

    #[test]
    fn hostile_names_are_refused() {
        for bad in [
            "", "/vms/a", "vms/", "vms//a", "vms/../tank", "vms/./a", "vms/a b", "vms/a;rm",
            "vms/a\n", "-o/a", "1pool/a", "vms/a@s", "vms/$(x)", "vms/a\tb", "vms/a%b",
        ] {
            assert!(DatasetName::parse(bad).is_err(), "{bad:?} accepted");
        }
        for bad in ["vms/a", "vms/a@", "vms/a@b@c", "@s", "vms/a@../x", "vms/a@b/c", "vms/../a@s"] {
            assert!(SnapshotName::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            DatasetName::parse(&format!("vms/{}", "a".repeat(300))),
            Err(NameError::TooLong)
        );
    }

    #[test]
    fn containment_is_by_whole_components() {
        let vms = DatasetName::parse("vms").unwrap();
        assert!(DatasetName::parse("vms/a").unwrap().is_strictly_under(&vms));
        assert!(!DatasetName::parse("vmsx/a").unwrap().is_strictly_under(&vms));
        assert!(!vms.is_strictly_under(&vms));
        assert!(vms.is_same_or_under(&vms));
        assert_eq!(
            DatasetName::parse("vms/a/b").unwrap().parent().unwrap().as_str(),
            "vms/a"
        );
        assert!(vms.parent().is_none());
    }
}

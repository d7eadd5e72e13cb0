//! Typed errors of the ZFS layer, recognised from the messages `zfs`/`zpool` print (with
//! `LC_ALL=C`). The CSI services map each kind to a gRPC status in `errors.rs`.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ZfsError {
    #[error("{0}: does not exist")]
    NotFound(String),
    #[error("{0}: already exists")]
    AlreadyExists(String),
    #[error("{0}: busy (in use)")]
    Busy(String),
    #[error("{0}: has dependent snapshots, clones or children")]
    HasDependents(String),
    #[error("{0}: not enough space in the pool")]
    NoSpace(String),
    #[error("{0}: invalid argument")]
    Invalid(String),
    /// `zfs load-key` with a key that does not open the encryption root.
    #[error("{0}: wrong key")]
    WrongKey(String),
    /// A size ZFS cannot give the dataset (a quota below what it already holds).
    #[error("{0}: size out of range")]
    OutOfRange(String),
    #[error("could not run `{command}`: {reason}")]
    Unavailable { command: String, reason: String },
    #[error("`{command}` did not finish within {after:?}")]
    TimedOut { command: String, after: Duration },
    #[error("`{command}` failed: {stderr}")]
    Failed { command: String, stderr: String },
    #[error("could not parse the output of `{command}`: {reason}")]
    Parse { command: String, reason: String },
}

/// The kind of failure a `zfs`/`zpool` error message names, in the order the patterns are
/// tried. The patterns are the messages of OpenZFS 2.1 to 2.3 (lib/libzfs/libzfs_util.c,
/// libzfs_dataset.c, libzfs_crypto.c and the commands' own messages).
///
/// `Invalid` and `OutOfRange` are final: the same request fails the same way however often it
/// is retried, so they must not end up as INTERNAL, which a CO retries forever.
const PATTERNS: &[(&str, Kind)] = &[
    // zfs_crypto_load_key: "Incorrect key provided for '<dataset>'."
    ("incorrect key provided", Kind::WrongKey),
    ("dataset does not exist", Kind::NotFound),
    ("no such pool", Kind::NotFound),
    ("no such dataset", Kind::NotFound),
    ("could not find any snapshots to destroy", Kind::NotFound),
    ("does not exist", Kind::NotFound),
    ("dataset already exists", Kind::AlreadyExists),
    ("already exists", Kind::AlreadyExists),
    ("has dependent clones", Kind::HasDependents),
    ("has children", Kind::HasDependents),
    ("snapshots or clones", Kind::HasDependents),
    ("is busy", Kind::Busy),
    // libzfs's message for EBUSY from a receive into a dataset with a resume token: another
    // `zfs receive` (a killed driver's, still finishing) owns it.
    ("contains partially-complete state", Kind::Busy),
    ("target is busy", Kind::Busy),
    ("out of space", Kind::NoSpace),
    ("size is greater than available space", Kind::NoSpace),
    ("insufficient replicas", Kind::NoSpace),
    // zfs_setprop_error: a quota below the space the dataset already uses.
    ("size is less than current used or reserved space", Kind::OutOfRange),
    ("volume size exceeds limit", Kind::OutOfRange),
    ("invalid", Kind::Invalid),
    // zfs_valid_proplist: a set-once property on `zfs clone` or `zfs set`.
    ("is readonly", Kind::Invalid),
    ("property is read-only", Kind::Invalid),
    // zfs_crypto_clone_check: encryption properties on `zfs clone`.
    ("must inherit", Kind::Invalid),
    ("property setting is not allowed", Kind::Invalid),
    ("operation not applicable to datasets of this type", Kind::Invalid),
    ("bad numeric value", Kind::Invalid),
    ("bad property value", Kind::Invalid),
    ("must be a multiple of volume block size", Kind::Invalid),
    ("must be a power of 2", Kind::Invalid),
    ("is not supported", Kind::Invalid),
    ("cannot be", Kind::Invalid),
    ("missing", Kind::Invalid),
    ("must be", Kind::Invalid),
];

#[derive(Clone, Copy)]
enum Kind {
    NotFound,
    AlreadyExists,
    HasDependents,
    Busy,
    NoSpace,
    Invalid,
    OutOfRange,
    WrongKey,
}

impl ZfsError {
    pub fn from_stderr(command: String, stderr: String) -> Self {
        let lower = stderr.to_ascii_lowercase();
        let kind = PATTERNS
            .iter()
            .find(|(pattern, _)| lower.contains(pattern))
            .map(|(_, kind)| *kind);
        let detail = if stderr.is_empty() {
            command.clone()
        } else {
            stderr.clone()
        };
        match kind {
            Some(Kind::NotFound) => ZfsError::NotFound(detail),
            Some(Kind::AlreadyExists) => ZfsError::AlreadyExists(detail),
            Some(Kind::HasDependents) => ZfsError::HasDependents(detail),
            Some(Kind::Busy) => ZfsError::Busy(detail),
            Some(Kind::NoSpace) => ZfsError::NoSpace(detail),
            Some(Kind::Invalid) => ZfsError::Invalid(detail),
            Some(Kind::OutOfRange) => ZfsError::OutOfRange(detail),
            Some(Kind::WrongKey) => ZfsError::WrongKey(detail),
            None => ZfsError::Failed { command, stderr },
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, ZfsError::NotFound(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify(stderr: &str) -> ZfsError {
        ZfsError::from_stderr("zfs test".into(), stderr.into())
    }

    #[test]
    fn missing_dataset_is_not_found() {
        assert!(classify("cannot open 'vms/nope': dataset does not exist").is_not_found());
    }

    #[test]
    fn a_wrong_key_is_told_apart() {
        assert!(matches!(classify("Key load error: Incorrect key provided for 'vms/pvc-1'."), ZfsError::WrongKey(_)));
    }

    #[test]
    fn existing_dataset_is_already_exists() {
        assert!(matches!(
            classify("cannot create 'vms/a': dataset already exists"),
            ZfsError::AlreadyExists(_)
        ));
    }

    #[test]
    fn snapshot_with_clones_has_dependents() {
        let e = classify("cannot destroy 'vms/a@s': snapshot has dependent clones\nuse '-R' to destroy the following datasets:\nvms/b");
        assert!(matches!(e, ZfsError::HasDependents(_)));
    }

    #[test]
    fn dataset_with_snapshots_has_dependents() {
        let e = classify("cannot destroy 'vms/a': filesystem has children\nuse '-r' to destroy the following datasets:\nvms/a@s");
        assert!(matches!(e, ZfsError::HasDependents(_)));
    }

    #[test]
    fn busy_dataset_is_busy() {
        assert!(matches!(
            classify("cannot destroy 'vms/a': dataset is busy"),
            ZfsError::Busy(_)
        ));
        // A resume while the interrupted receive still owns the dataset (EBUSY with a token).
        assert!(matches!(
            classify("cannot receive resume stream: destination tank/b/vms:pvc contains partially-complete state from \"zfs receive -s\"."),
            ZfsError::Busy(_)
        ));
    }

    #[test]
    fn full_pool_is_no_space() {
        assert!(matches!(
            classify("cannot create 'vms/big': out of space"),
            ZfsError::NoSpace(_)
        ));
    }

    #[test]
    fn bad_property_value_is_invalid() {
        assert!(matches!(
            classify("cannot create 'vms/a': 'compression' must be one of 'on | off | lzjb'"),
            ZfsError::Invalid(_)
        ));
    }

    #[test]
    fn errors_no_retry_can_fix_are_final_kinds() {
        for stderr in [
            "cannot create 'vms/c': 'volblocksize' is readonly",
            "cannot create 'vms/c': Encryption properties must inherit from origin dataset.",
            "cannot set property for 'vms/a': volume size must be a multiple of volume block size",
            "cannot set property for 'vms/a': 'volblocksize' is readonly",
            "cannot set property for 'vms/a': property setting is not allowed on bootable datasets",
        ] {
            assert!(matches!(classify(stderr), ZfsError::Invalid(_)), "{stderr}");
        }
        for stderr in [
            "cannot set property for 'vms/a': size is less than current used or reserved space",
            "cannot create 'vms/c': size is less than current used or reserved space",
            "cannot set property for 'vms/a': volume size exceeds limit for this system",
        ] {
            assert!(matches!(classify(stderr), ZfsError::OutOfRange(_)), "{stderr}");
        }
        assert!(matches!(
            classify("cannot set property for 'vms/a': size is greater than available space"),
            ZfsError::NoSpace(_)
        ));
    }

    #[test]
    fn unknown_message_keeps_command_and_text() {
        match classify("something new went wrong") {
            ZfsError::Failed { command, stderr } => {
                assert_eq!(command, "zfs test");
                assert_eq!(stderr, "something new went wrong");
            }
            other => panic!("expected Failed, got {other:?}"),
        }
    }
}

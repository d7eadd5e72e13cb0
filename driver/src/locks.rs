//! Per-ID operation locks. An RPC on a volume or snapshot holds its ID's lock; a second RPC on
//! the same ID gets ABORTED (the CSI spec's "operation pending for volume"), so the CO retries
//! later instead of queueing behind it. RPCs on different IDs never wait for each other, so
//! ZFS can batch them into one transaction group.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// What an operation locks. Volumes and snapshots live in different key spaces, so a volume
/// and a snapshot never block each other by a coincidence of names.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum LockKey {
    /// A volume, by its ID (the dataset name), from CreateVolume (the name it will have),
    /// DeleteVolume, every node RPC and the reaper.
    Volume(String),
    /// A snapshot, by its CSI name (the short name after `@`), which is unique in the cluster.
    Snapshot(String),
}

impl std::fmt::Display for LockKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LockKey::Volume(id) => write!(f, "volume {id}"),
            LockKey::Snapshot(name) => write!(f, "snapshot {name}"),
        }
    }
}

#[derive(Debug, Default)]
pub struct OperationLocks {
    held: Mutex<HashSet<LockKey>>,
}

/// Releases its key when dropped.
#[derive(Debug)]
pub struct OperationGuard {
    locks: Arc<OperationLocks>,
    key: LockKey,
}

impl OperationLocks {
    /// `None` when another operation holds `key`.
    pub fn try_acquire(self: &Arc<Self>, key: LockKey) -> Option<OperationGuard> {
        let mut held = self.held.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        held.insert(key.clone()).then(|| OperationGuard { locks: Arc::clone(self), key })
    }
}

impl Drop for OperationGuard {
    fn drop(&mut self) {
        let mut held = self.locks.held.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        held.remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_key_is_exclusive_until_released() {
        let locks = Arc::new(OperationLocks::default());
        let volume = |id: &str| LockKey::Volume(id.to_string());
        let first = locks.try_acquire(volume("vms/a")).expect("free key");
        assert!(locks.try_acquire(volume("vms/a")).is_none());
        assert!(locks.try_acquire(volume("vms/b")).is_some(), "other keys are independent");
        assert!(locks.try_acquire(LockKey::Snapshot("vms/a".into())).is_some(), "snapshots are another key space");
        drop(first);
        assert!(locks.try_acquire(volume("vms/a")).is_some());
    }
}

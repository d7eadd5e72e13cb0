//! Per-ID operation locks. An RPC on a volume or snapshot holds its ID's lock; a second RPC on
//! the same ID gets ABORTED (the CSI spec's "operation pending for volume"), so the CO retries
//! later instead of queueing behind it. RPCs on different IDs never wait for each other, so
//! ZFS can batch them into one transaction group.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

#[derive(Debug, Default)]
pub struct OperationLocks {
    held: Mutex<HashSet<String>>,
}

/// Releases its ID when dropped.
#[derive(Debug)]
pub struct OperationGuard {
    locks: Arc<OperationLocks>,
    key: String,
}

impl OperationLocks {
    /// `None` when another operation holds `key`.
    pub fn try_acquire(self: &Arc<Self>, key: &str) -> Option<OperationGuard> {
        let mut held = self.held.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        held.insert(key.to_string()).then(|| OperationGuard {
            locks: Arc::clone(self),
            key: key.to_string(),
        })
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
        let first = locks.try_acquire("vms/a").expect("free key");
        assert!(locks.try_acquire("vms/a").is_none());
        assert!(locks.try_acquire("vms/b").is_some(), "other keys are independent");
        drop(first);
        assert!(locks.try_acquire("vms/a").is_some());
    }
}

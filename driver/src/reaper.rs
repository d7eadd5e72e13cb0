//! Deletion, deferred deletion and garbage, in one place (docs/DESIGN.md section 7).
//!
//! A volume is destroyed by one ZFS channel program that checks our marker and the volume's
//! dependents and either destroys it or marks it deleted, atomically (`Zfs::delete_if_owned`).
//! What is left behind on purpose (a volume marked deleted while snapshots or clones depend on
//! it, the driver's internal snapshot of a cloned volume) or by accident (a crash or a
//! cancelled RPC between a clone's destroy and the reaping of its origin, a crash between an
//! internal snapshot and its clone) is found here again:
//! - right after the step that frees it (a clone's destroy reaps its origin);
//! - by a full pass at start-up, every `PASS_INTERVAL`, and from every DeleteVolume that finds
//!   its volume already gone (the retry after a crash).
//!
//! The reaper takes the same per-volume locks as the RPCs (skipping what is busy: the next
//! pass takes it) and only ever destroys what carries our marker set locally. Those locks live
//! in this process; another process with our driver name on the same pools (a driver pod being
//! replaced, the test suite's drivers) may be between an internal snapshot and its clone, so an
//! unused internal snapshot younger than `INTERNAL_SNAPSHOT_GRACE` is only reaped once its
//! clone is known to be gone: destroyed (the destroy marks the snapshot released, atomically,
//! so a crash right after loses nothing), or named by a DeleteVolume that found it gone.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tonic::Status;

use crate::driver::Driver;
use crate::errors::zfs_status;
use crate::locks::LockKey;
use crate::mount;
use crate::state::{prop, SnapshotInfo, VolumeInfo, SNAPSHOT_PROPERTIES};
use crate::zfs::{DatasetName, DatasetType, Depth, Destroy, OwnedDelete, SnapshotName, ZfsError};

/// How often a full pass runs in the background.
pub const PASS_INTERVAL: Duration = Duration::from_secs(600);
/// How long a zvol that ZFS calls busy is retried before its users are looked for: udev
/// opens a new or just-closed zvol's device for a moment to probe it.
const UDEV_BUSY_WINDOW: Duration = Duration::from_secs(3);
/// How long it is retried while no user can be found at all: udev's probe of a device just
/// unmounted took over 3 s under emulation on a loaded machine.
const UNSEEN_BUSY_WINDOW: Duration = Duration::from_secs(15);
const EBUSY: i32 = 16;
/// How many volumes' snapshots one `zfs get` lists.
const SNAPSHOT_BATCH: usize = 200;
/// How long the reaper waits for an RPC that holds a volume's lock.
const LOCK_PATIENCE: Duration = Duration::from_secs(10);
/// How old an unused internal clone snapshot must be before a pass reaps it on its own: far
/// longer than the step from `zfs snapshot` to `zfs clone` in any CreateVolume.
const INTERNAL_SNAPSHOT_GRACE: Duration = Duration::from_secs(300);
/// A clone's destroy marks its internal origin snapshot released (`Zfs::delete_if_owned`).
pub const RELEASE_ORIGIN: Option<(&str, &str)> = Some((prop::CLONE_OF_VOLUME, prop::CLONE_RELEASED));

/// What deleting a volume did.
#[derive(Debug, PartialEq, Eq)]
pub enum Deleted {
    Destroyed,
    /// Snapshots or clones depend on it: marked deleted, hidden, destroyed with its last
    /// dependent.
    Deferred,
    AlreadyGone,
    /// Not created by this driver (an imported dataset): left in place.
    NotOurs,
}

#[derive(Clone)]
pub struct Reaper {
    driver: Arc<Driver>,
    /// A background pass is running.
    passing: Arc<AtomicBool>,
    /// A pass was asked for while one was running: it runs again once that one is done.
    again: Arc<AtomicBool>,
    /// Volumes whose DeleteVolume found them gone: their internal clone snapshots are garbage
    /// at any age.
    gone: Arc<std::sync::Mutex<HashSet<String>>>,
}

impl Reaper {
    pub fn new(driver: Arc<Driver>) -> Self {
        Self { driver, passing: Arc::default(), again: Arc::default(), gone: Arc::default() }
    }

    /// Deletes the volume `name` for DeleteVolume; the caller holds its lock. A volume in use
    /// (a mounted filesystem, a zvol mounted, bind-mounted for raw block, held or open) is
    /// FAILED_PRECONDITION naming what holds it, with everything untouched.
    pub async fn delete_volume(&self, name: &DatasetName) -> Result<Deleted, Status> {
        let device = crate::format::zvol_device_now(name.as_str());
        let users = self.users(name, device.clone(), false).await?;
        if !users.is_empty() {
            // Only ours are refused: DeleteVolume of an imported volume leaves it in place
            // anyway, in use or not.
            return match self.driver.volume(name).await? {
                Some(v) if v.managed => Err(in_use(name, &users)),
                Some(_) => Ok(Deleted::NotOurs),
                None => Ok(Deleted::AlreadyGone),
            };
        }
        let started = tokio::time::Instant::now();
        let mut deadline = started + UDEV_BUSY_WINDOW;
        let mut internal_reaped = false;
        loop {
            match self.delete_if_owned(name).await? {
                OwnedDelete::Destroyed { origin } => {
                    tracing::info!(volume = %name, "destroyed");
                    self.reap_origin(origin.as_deref(), name).await;
                    return Ok(Deleted::Destroyed);
                }
                // Our own internal snapshots left by an interrupted clone do not keep a volume.
                OwnedDelete::Marked if !internal_reaped && self.reap_internal_snapshots(name).await? => {
                    internal_reaped = true;
                }
                OwnedDelete::Marked => {
                    tracing::info!(volume = %name, "snapshots or clones depend on it: hidden now, destroyed with its last dependent");
                    return Ok(Deleted::Deferred);
                }
                OwnedDelete::NotFound => return Ok(Deleted::AlreadyGone),
                OwnedDelete::NotOwned => {
                    tracing::info!(volume = %name, "not created by this driver (imported or the operator's): left in place with its data");
                    return Ok(Deleted::NotOurs);
                }
                OwnedDelete::Refused(EBUSY) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                OwnedDelete::Refused(EBUSY) => {
                    let mut users = self.users(name, device.clone(), true).await?;
                    if users.is_empty() {
                        if tokio::time::Instant::now() < started + UNSEEN_BUSY_WINDOW {
                            // Nothing holds it that this node can see: most likely a probe
                            // that is about to end. Try again for a while.
                            deadline = started + UNSEEN_BUSY_WINDOW;
                            continue;
                        }
                        users.push("open or mounted where this node's driver cannot see it".into());
                    }
                    return Err(in_use(name, &users));
                }
                OwnedDelete::Refused(errno) => {
                    return Err(Status::internal(format!(
                        "deleting volume {name}: ZFS refused with {}",
                        nix::Error::from_raw(errno)
                    )))
                }
            }
        }
    }

    async fn users(&self, name: &DatasetName, device: Option<std::path::PathBuf>, processes: bool) -> Result<Vec<String>, Status> {
        let dataset = name.as_str().to_string();
        mount::run(format!("checking whether {name} is in use"), move || {
            mount::users(&dataset, device.as_deref(), processes)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))
    }

    async fn delete_if_owned(&self, name: &DatasetName) -> Result<OwnedDelete, Status> {
        self.driver
            .zfs
            .delete_if_owned(name, prop::MANAGED_BY, &self.driver.name, prop::DELETED, RELEASE_ORIGIN)
            .await
            .map_err(|e| zfs_status(&format!("deleting volume {name}"), e))
    }

    /// Destroys the driver's internal clone snapshots of `name` that no clone uses any more.
    /// True when any went.
    async fn reap_internal_snapshots(&self, name: &DatasetName) -> Result<bool, Status> {
        let snapshots = self
            .driver
            .zfs
            .get(name, SNAPSHOT_PROPERTIES, Depth::Levels(1), &[DatasetType::Snapshot])
            .await
            .map_err(|e| zfs_status(&format!("listing the snapshots of {name}"), e))?;
        let mut reaped = false;
        for snapshot in snapshots.iter().map(|d| SnapshotInfo::from_dataset(d, &self.driver.name)) {
            if let Ok(snap) = SnapshotName::parse(&snapshot.name) {
                reaped |= self.reap_internal_snapshot(&snap, &snapshot, None, &HashSet::new()).await;
            }
        }
        Ok(reaped)
    }

    /// `holding`: the volume whose lock the caller holds (a clone being deleted); `gone`:
    /// volumes known to be gone for good.
    async fn reap_internal_snapshot(
        &self,
        name: &SnapshotName,
        info: &SnapshotInfo,
        holding: Option<&DatasetName>,
        gone: &HashSet<String>,
    ) -> bool {
        if !(info.managed && info.internal && info.clones.is_empty()) {
            return false;
        }
        let clone = info.clone_for.clone().unwrap_or_default();
        let held = holding.is_some_and(|h| h.as_str() == clone);
        let known_garbage = held || info.clone_released || gone.contains(&clone);
        if !known_garbage && !older_than(info.creation, INTERNAL_SNAPSHOT_GRACE) {
            tracing::debug!(snapshot = %name, "unused internal snapshot too young to reap: a CreateVolume elsewhere may be cloning it");
            return false;
        }
        // The CreateVolume it was taken for may be between the snapshot and the clone right
        // now: it holds the clone's lock, and then the snapshot is not garbage yet.
        let _clone_lock = if held {
            None
        } else {
            match self.driver.lock_within(LockKey::Volume(clone), Duration::ZERO).await {
                Some(lock) => Some(lock),
                None => return false,
            }
        };
        match self.driver.zfs.destroy_snapshot(name, Destroy::DeferWhileCloned).await {
            Ok(()) | Err(ZfsError::NotFound(_)) => {
                tracing::info!(snapshot = %name, "reaped an internal clone snapshot that no clone uses");
                true
            }
            Err(e) => {
                tracing::warn!(snapshot = %name, "cannot reap internal snapshot: {e}");
                false
            }
        }
    }

    /// After the clone `clone` went (its lock held by the caller): its internal origin
    /// snapshot goes too, and the origin's volume if it was deleted and this was its last
    /// dependent. Failures are left to the next pass.
    pub async fn reap_origin(&self, origin: Option<&str>, clone: &DatasetName) {
        let Some(origin) = origin.and_then(|o| SnapshotName::parse(o).ok()) else {
            return;
        };
        if !self.driver.is_within_parents(origin.dataset()) {
            return;
        }
        match self.driver.zfs.find(&origin, SNAPSHOT_PROPERTIES).await {
            Ok(Some(d)) => {
                self.reap_internal_snapshot(&origin, &SnapshotInfo::from_dataset(&d, &self.driver.name), Some(clone), &HashSet::new())
                    .await;
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(snapshot = %origin, "cannot read the origin of a destroyed clone: {e}"),
        }
        self.reap_deleted_volume(origin.dataset()).await;
    }

    /// Destroys `name` if the driver marked it deleted and nothing depends on it any more;
    /// true when it did. Waits for the volume's lock (a DeleteVolume in flight may be marking
    /// it right now); still busy after `LOCK_PATIENCE`, the next pass comes back.
    pub async fn reap_deleted_volume(&self, name: &DatasetName) -> bool {
        let Some(_lock) = self.driver.lock_within(LockKey::Volume(name.to_string()), LOCK_PATIENCE).await else {
            tracing::info!(volume = %name, "busy: left to the next reaper pass");
            return false;
        };
        match self.driver.volume(name).await {
            Ok(Some(VolumeInfo { managed: true, deleted: true, .. })) => {}
            Ok(_) => return false,
            Err(e) => {
                tracing::warn!(volume = %name, "cannot read a volume to reap: {}", e.message());
                return false;
            }
        }
        match self.delete_if_owned(name).await {
            Ok(OwnedDelete::Destroyed { origin }) => {
                tracing::info!(volume = %name, "destroyed a deleted volume with its last dependent");
                // A chain of clones: the origin of this one may be waiting too.
                Box::pin(self.reap_origin(origin.as_deref(), name)).await;
                true
            }
            Ok(_) => false,
            Err(e) => {
                tracing::warn!(volume = %name, "cannot reap a deleted volume: {}", e.message());
                false
            }
        }
    }

    /// A full pass over every parent this node has: internal snapshots that no clone uses,
    /// then volumes marked deleted with nothing depending on them. Its cost follows the
    /// driver's own volumes and their snapshots: foreign datasets are listed (one `zfs get`
    /// without snapshots), their snapshots never. Returns how many datasets and snapshots it
    /// destroyed.
    pub async fn pass(&self) -> usize {
        let gone = std::mem::take(&mut *self.gone.lock().unwrap_or_else(|e| e.into_inner()));
        let mut reaped = 0;
        let mut living = HashSet::new();
        let mut listed = Vec::new();
        let mut replicas = Vec::new();
        for parent in &self.driver.parents {
            let volumes = match self
                .driver
                .zfs
                .get(
                    parent,
                    &["type", prop::MANAGED_BY, prop::DELETED, prop::REPLICA_OWNER, prop::REPLICA_OF],
                    Depth::All,
                    &[DatasetType::Filesystem, DatasetType::Volume],
                )
                .await
            {
                Ok(v) => v,
                Err(e) if e.is_not_found() => continue,
                Err(e) => {
                    tracing::warn!(parent = %parent, "reaper: cannot list: {e}");
                    continue;
                }
            };
            let ours: Vec<VolumeInfo> = volumes
                .iter()
                .filter_map(|d| VolumeInfo::from_dataset(d, &self.driver.name))
                .filter(|v| v.managed)
                .collect();
            for batch in ours.chunks(SNAPSHOT_BATCH) {
                let names: Vec<String> = batch.iter().map(|v| v.name.to_string()).collect();
                let snapshots = match self.driver.zfs.get_many(&names, SNAPSHOT_PROPERTIES, Depth::Levels(1), &[DatasetType::Snapshot]).await {
                    Ok(s) => s,
                    // A volume destroyed since the listing: the next pass sees the rest.
                    Err(e) => {
                        tracing::info!(parent = %parent, "reaper: cannot list snapshots: {e}");
                        continue;
                    }
                };
                for snapshot in &snapshots {
                    let info = SnapshotInfo::from_dataset(snapshot, &self.driver.name);
                    if let Ok(name) = SnapshotName::parse(&info.name) {
                        if self.reap_internal_snapshot(&name, &info, None, &gone).await {
                            reaped += 1;
                        }
                    }
                }
            }
            for volume in ours.iter().filter(|v| v.deleted) {
                if self.reap_deleted_volume(&volume.name).await {
                    reaped += 1;
                }
            }
            listed.push(parent.as_str());
            living.extend(ours.iter().filter(|v| !v.deleted).map(|v| v.name.to_string()));
            replicas.extend(volumes.iter().filter_map(|d| {
                let local = |p: &str| d.property(p).filter(|v| v.source == crate::zfs::PropertySource::Local).map(|v| v.value.clone());
                let source = local(prop::REPLICA_OF)?;
                (local(prop::REPLICA_OWNER)? == self.driver.name).then_some(())?;
                Some((DatasetName::parse(&d.name).ok()?, source))
            }));
        }
        // Replicas whose volume is gone or deleted: what only kept the base of the next
        // incremental send (hidden snapshots) goes, and the replica with it when empty. A
        // volume below a parent that could not be listed (its pool missing or faulted) is not
        // known to be gone: its replica may be all that is left of it.
        let known_gone = |source: &String| {
            !living.contains(source) && listed.iter().any(|p| source.strip_prefix(p).is_some_and(|rest| rest.starts_with('/')))
        };
        for (replica, source) in replicas.iter().filter(|(_, source)| known_gone(source)) {
            if let Err(status) = crate::replication::destroy_replica_if_unused(&self.driver, replica, false).await {
                tracing::info!(replica = %replica, source = %source, "reaper: {}", status.message());
            }
        }
        if reaped > 0 {
            tracing::info!(reaped, "reaper pass destroyed what was left behind");
        } else {
            tracing::debug!("reaper pass found nothing to destroy");
        }
        reaped
    }

    /// Starts a pass in the background: a DeleteVolume that finds its volume `gone` answers at
    /// once, whatever the pass costs. An internal snapshot taken for `gone` is reaped by the
    /// pass at any age. While a pass runs, one more follows it (which covers every call made
    /// meanwhile): the running one may have read ZFS before what this call frees was freed.
    pub fn pass_soon(&self, gone: &DatasetName) {
        self.gone.lock().unwrap_or_else(|e| e.into_inner()).insert(gone.to_string());
        self.again.store(true, Ordering::Release);
        if self.passing.swap(true, Ordering::AcqRel) {
            return;
        }
        let reaper = self.clone();
        tokio::spawn(async move {
            loop {
                while reaper.again.swap(false, Ordering::AcqRel) {
                    reaper.pass().await;
                }
                reaper.passing.store(false, Ordering::Release);
                // A call between the last check and the store above found `passing` still set.
                if !reaper.again.load(Ordering::Acquire) || reaper.passing.swap(true, Ordering::AcqRel) {
                    break;
                }
            }
        });
    }

    /// Runs a pass now and then every `PASS_INTERVAL`, for as long as the driver runs.
    pub fn spawn_periodic(self) {
        tokio::spawn(async move {
            loop {
                self.pass().await;
                tokio::time::sleep(PASS_INTERVAL).await;
            }
        });
    }
}

/// `creation` (seconds since the epoch) lies more than `age` in the past.
fn older_than(creation: i64, age: Duration) -> bool {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(i64::MAX);
    now.saturating_sub(creation) > age.as_secs() as i64
}

fn in_use(name: &DatasetName, users: &[String]) -> Status {
    Status::failed_precondition(format!(
        "volume {name} is in use ({}): nothing was changed; unpublish and unstage it first",
        users.join("; ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_snapshots_past_the_grace_are_old() {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        assert!(!older_than(now, INTERNAL_SNAPSHOT_GRACE));
        assert!(!older_than(now - 299, INTERNAL_SNAPSHOT_GRACE));
        assert!(older_than(now - 301, INTERNAL_SNAPSHOT_GRACE));
        // A clock that went back (or a creation in the future) never makes a snapshot old.
        assert!(!older_than(now + 3600, INTERNAL_SNAPSHOT_GRACE));
    }
}

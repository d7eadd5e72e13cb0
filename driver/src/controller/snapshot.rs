//! Snapshots: reading them and answering a repeated CreateSnapshot.

use super::*;

pub(super) fn csi_snapshot(snapshot: &SnapshotInfo) -> csi::Snapshot {
    let source = snapshot.name.split_once('@').map(|(d, _)| d).unwrap_or_default();
    csi::Snapshot {
        size_bytes: snapshot.size_bytes as i64,
        snapshot_id: snapshot.name.clone(),
        source_volume_id: source.to_string(),
        creation_time: Some(prost_types::Timestamp { seconds: snapshot.creation, nanos: 0 }),
        ready_to_use: true,
        group_snapshot_id: String::new(),
    }
}

impl ControllerService {

    pub(super) async fn snapshot_info(&self, name: &SnapshotName) -> Result<Option<SnapshotInfo>, Status> {
        Ok(self
            .driver
            .zfs
            .find(name, SNAPSHOT_PROPERTIES)
            .await
            .map_err(|e| zfs_status(&format!("reading snapshot {name}"), e))?
            .map(|d| SnapshotInfo::from_dataset(&d, &self.driver.name)))
    }

    /// CreateSnapshot's answer when the snapshot it would take exists: that snapshot if this
    /// driver took it for the request `csi_name` (and it is not being deleted),
    /// ALREADY_EXISTS otherwise.
    pub(super) fn existing_snapshot(&self, info: &SnapshotInfo, csi_name: &str) -> Result<Response<csi::CreateSnapshotResponse>, Status> {
        if !info.managed || info.csi_name.as_deref() != Some(csi_name) || info.deferred_destroy {
            return Err(Status::already_exists(format!(
                "snapshot {} already exists and was not made by this driver for this request",
                info.name
            )));
        }
        Ok(Response::new(csi::CreateSnapshotResponse { snapshot: Some(csi_snapshot(info)) }))
    }
}

//! Node service against real ZFS, over the real socket, with real mounts: the lifecycle of
//! datasets, ext4 and xfs zvols and raw block zvols on each tier, online expansion, clones,
//! static import of zvols made outside the driver, never formatting a device that holds
//! something, idempotency and the CSI error codes (what csi-sanity checks for the node
//! service, and more).

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use tonic::Code;
use zfs_csi::csi::volume_capability::access_mode::Mode;
use zfs_csi_tests::*;

use zfs_csi_tests::node_support::*;

// ---- lifecycle on each tier -------------------------------------------------------------

/// Create, stage, publish, write and read back, stats, unpublish, unstage, delete: on each
/// tier, leaving nothing mounted and nothing in `zfs list`.
async fn lifecycle_on_each_tier(kind: Kind) {
    let d = driver().await;
    for pool in POOLS {
        let scratch = Scratch::new();
        let vol = create_volume(&d, &scratch, pool, kind).await;
        let (staging, target) = stage_and_publish(&d, &scratch, &vol, "a").await;
        if kind != Kind::Block {
            let staged = mounts_at(&staging);
            assert_eq!(staged.len(), 1, "{staged:?}");
            assert_eq!(staged[0].fs_type, kind.mounted_type());
        }
        let published = mounts_at(&target);
        assert_eq!(published.len(), 1, "{published:?}");
        assert_eq!(published[0].fs_type, kind.mounted_type());

        let data = pattern(&vol.id);
        write_data(kind, &target, &data);
        assert_data(kind, &target, &data);
        // Until its transaction group is synced, ZFS does not count new data as used.
        run("zpool", &["sync", pool]).expect("zpool sync");

        let response = stats(&d, &vol.id, &target).await;
        let condition = response.volume_condition.expect("volume condition");
        assert!(!condition.abnormal, "{}", condition.message);
        let usage = |unit: csi::volume_usage::Unit| {
            response.usage.iter().find(|u| u.unit == unit as i32).unwrap_or_else(|| panic!("no {unit:?} in {:?}", response.usage))
        };
        let bytes = usage(csi::volume_usage::Unit::Bytes);
        if kind == Kind::Block {
            assert_eq!(response.usage.len(), 1, "{:?}", response.usage);
            assert_eq!(bytes.total, vol.capacity);
        } else {
            assert!(bytes.total > vol.capacity / 2 && bytes.total <= vol.capacity, "{bytes:?} of {}", vol.capacity);
            assert!(bytes.used >= DATA_LEN as i64, "{bytes:?}");
            assert!(bytes.available > 0 && bytes.available <= bytes.total - bytes.used, "{bytes:?}");
            if kind == Kind::Btrfs {
                // btrfs allocates inodes dynamically and reports no count: none is invented.
                assert!(response.usage.iter().all(|u| u.unit != csi::volume_usage::Unit::Inodes as i32), "{:?}", response.usage);
            } else {
                let inodes = usage(csi::volume_usage::Unit::Inodes);
                assert!(inodes.total > 0 && inodes.used >= 1 && inodes.available > 0, "{inodes:?}");
            }
        }

        unpublish(&d, &vol.id, &target).await;
        assert!(!target.exists(), "unpublish leaves {}", target.display());
        unstage(&d, &vol.id, &staging).await;
        scratch.assert_nothing_mounted();
        d.delete(&vol.id).await;
        assert!(!dataset_exists(&vol.id), "{} is still in zfs list", vol.id);
    }
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn dataset_lifecycle_on_each_tier_leaves_nothing_behind() {
    lifecycle_on_each_tier(Kind::Dataset).await;
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn ext4_zvol_lifecycle_on_each_tier_leaves_nothing_behind() {
    lifecycle_on_each_tier(Kind::Ext4).await;
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn xfs_zvol_lifecycle_on_each_tier_leaves_nothing_behind() {
    lifecycle_on_each_tier(Kind::Xfs).await;
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn btrfs_zvol_lifecycle_on_each_tier_leaves_nothing_behind() {
    lifecycle_on_each_tier(Kind::Btrfs).await;
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn block_zvol_lifecycle_on_each_tier_leaves_nothing_behind() {
    lifecycle_on_each_tier(Kind::Block).await;
}

// ---- online expansion -------------------------------------------------------------------

/// Grows a volume while it is published and holds data: ZFS, then what the consumer sees,
/// grow; the data stays; again, smaller, and more than the pool has are handled.
async fn expansion_while_in_use(kind: Kind) {
    let d = driver().await;
    let scratch = Scratch::new();
    let vol = create_volume(&d, &scratch, "vms", kind).await;
    let (staging, target) = stage_and_publish(&d, &scratch, &vol, "a").await;
    let data = pattern(&vol.id);
    write_data(kind, &target, &data);
    let before = visible_size(kind, &target);

    let grown = vol.capacity + 64 * MIB;
    let response = expand(&d, &vol, &staging, &target, grown).await.expect("NodeExpandVolume").into_inner();
    assert_eq!(response.capacity_bytes, grown);
    assert_eq!(zfs_capacity(&vol), grown);
    if kind == Kind::Dataset {
        assert_eq!(zfs_get(&vol.id, "refreservation").0, grown.to_string(), "a thick dataset keeps its reservation");
    }
    let after = visible_size(kind, &target);
    if kind == Kind::Block {
        assert_eq!(after, grown);
    } else {
        assert!(after >= before + 48 * MIB, "the filesystem did not grow online: {before} -> {after}");
    }
    assert_data(kind, &target, &data);

    let again = expand(&d, &vol, &staging, &target, grown).await.expect("repeated NodeExpandVolume").into_inner();
    assert_eq!(again.capacity_bytes, grown);
    assert_eq!(visible_size(kind, &target), after);

    let smaller = expand(&d, &vol, &staging, &target, vol.capacity).await.expect("NodeExpandVolume to a smaller size");
    assert_eq!(smaller.into_inner().capacity_bytes, grown, "a smaller size is a no-op that reports the capacity");
    assert_eq!(zfs_capacity(&vol), grown);

    let message = expect_code(expand(&d, &vol, &staging, &target, 64 * GIB).await, Code::OutOfRange);
    assert!(message.contains(&vol.id), "{message}");
    assert_eq!(zfs_capacity(&vol), grown);
    assert_eq!(visible_size(kind, &target), after);
    assert_data(kind, &target, &data);

    unpublish_and_unstage(&d, &vol, &staging, &target).await;
    scratch.assert_nothing_mounted();
    d.delete(&vol.id).await;
    assert!(!dataset_exists(&vol.id));
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn dataset_grows_online_by_refquota_and_keeps_its_data() {
    expansion_while_in_use(Kind::Dataset).await;
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn ext4_zvol_grows_online_with_its_filesystem_and_keeps_its_data() {
    expansion_while_in_use(Kind::Ext4).await;
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn xfs_zvol_grows_online_with_its_filesystem_and_keeps_its_data() {
    expansion_while_in_use(Kind::Xfs).await;
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn btrfs_zvol_grows_online_with_its_filesystem_and_keeps_its_data() {
    expansion_while_in_use(Kind::Btrfs).await;
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn block_zvol_grows_while_published_and_keeps_its_data() {
    expansion_while_in_use(Kind::Block).await;
}

// ---- snapshots and clones ---------------------------------------------------------------

/// A snapshot of a volume with data, a clone from it and a clone from the volume itself:
/// each clone stages and publishes (while the source stays mounted) with the data in it, and
/// is independent of its source.
async fn clones_carry_the_data(kind: Kind) {
    let d = driver().await;
    let scratch = Scratch::new();
    let source = create_volume(&d, &scratch, "vms", kind).await;
    let (source_staging, source_target) = stage_and_publish(&d, &scratch, &source, "source").await;
    let data = pattern(&source.id);
    write_data(kind, &source_target, &data);

    let snapshot = d.snapshot(&source.id, &unique("snap-node")).await;

    for (label, content) in [("from-snapshot", snapshot_source(&snapshot.snapshot_id)), ("from-volume", volume_source(&source.id))] {
        let clone = create_volume_with(&d, &scratch, "vms", kind, &[], content).await;
        assert_ne!(zfs_get(&clone.id, "origin").0, "-", "{label}: {} is not a ZFS clone", clone.id);
        // With the source still mounted: an XFS clone carries its origin's UUID, and only
        // mounting it with nouuid lets both be mounted at once.
        let (staging, target) = stage_and_publish(&d, &scratch, &clone, label).await;
        assert_data(kind, &target, &data);
        write_data(kind, &target, &pattern(&clone.id));
        assert_data(kind, &source_target, &data);
        unpublish_and_unstage(&d, &clone, &staging, &target).await;
        d.delete(&clone.id).await;
        assert!(!dataset_exists(&clone.id), "{label}: {} is still in zfs list", clone.id);
    }

    d.delete_snapshot(&snapshot.snapshot_id).await;
    unpublish_and_unstage(&d, &source, &source_staging, &source_target).await;
    scratch.assert_nothing_mounted();
    d.delete(&source.id).await;
    assert!(!dataset_exists(&source.id), "{} (or a snapshot of it) is still in zfs list", source.id);
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn dataset_clones_from_snapshot_and_volume_carry_the_data() {
    clones_carry_the_data(Kind::Dataset).await;
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn ext4_clones_from_snapshot_and_volume_carry_the_data() {
    clones_carry_the_data(Kind::Ext4).await;
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn xfs_clones_mount_beside_their_source_and_carry_the_data() {
    clones_carry_the_data(Kind::Xfs).await;
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn block_clones_from_snapshot_and_volume_carry_the_data() {
    clones_carry_the_data(Kind::Block).await;
}

// ---- static import ----------------------------------------------------------------------

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn an_imported_ext4_zvol_is_served_grown_and_never_destroyed() {
    let d = driver().await;
    let scratch = Scratch::new();
    let (raw, device, data) = create_foreign_ext4_zvol(&scratch, "imported-ext4");
    let uuid = blkid_value(&device, "UUID").expect("the new ext4 has a UUID");

    // As its filesystem, as a static PV with fsType ext4 and no volume attributes asks.
    let vol = raw.with_kind(Kind::Ext4);
    let (staging, target) = stage_and_publish(&d, &scratch, &vol, "fs").await;
    assert_data(Kind::Ext4, &target, &data);
    assert_eq!(blkid_value(&device, "UUID").as_deref(), Some(uuid.as_str()), "the ext4 was replaced");
    let before = visible_size(Kind::Ext4, &target);
    let grown = 192 * MIB;
    let response = expand(&d, &vol, &staging, &target, grown).await.expect("NodeExpandVolume").into_inner();
    assert_eq!(response.capacity_bytes, grown);
    assert_eq!(zfs_capacity(&vol), grown);
    let after = visible_size(Kind::Ext4, &target);
    assert!(after >= before + 48 * MIB, "the filesystem did not grow online: {before} -> {after}");
    assert_data(Kind::Ext4, &target, &data);
    unpublish_and_unstage(&d, &vol, &staging, &target).await;

    // As raw block: the same bytes, the ext4 superblock magic (0xEF53 at byte 1080) first.
    let (staging, target) = stage_and_publish(&d, &scratch, &raw, "block").await;
    assert_eq!(visible_size(Kind::Block, &target), grown);
    let mut magic = [0u8; 2];
    std::fs::File::open(&target).unwrap().read_exact_at(&mut magic, 1080).unwrap();
    assert_eq!(magic, [0x53, 0xef]);
    unpublish_and_unstage(&d, &raw, &staging, &target).await;
    scratch.assert_nothing_mounted();

    let guid = zfs_get(&raw.id, "guid").0;
    let checksum = sha256(&device);
    d.delete(&raw.id).await;
    assert!(dataset_exists(&raw.id), "DeleteVolume destroyed the imported {}", raw.id);
    assert_eq!(zfs_get(&raw.id, "guid").0, guid);
    assert_eq!(sha256(&device), checksum, "DeleteVolume changed the imported {}", raw.id);
    zfs(&["destroy", &raw.id]);
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn an_imported_raw_zvol_keeps_its_bytes_through_publish_growth_and_delete() {
    let d = driver().await;
    let scratch = Scratch::new();
    let (vol, device) = create_foreign_zvol(&scratch, "imported-raw", "64M");
    let data = pattern(&vol.id);
    write_data(Kind::Block, &device, &data);
    assert_eq!(blkid(&device), "", "the pattern must not look like a filesystem to blkid");

    // Bytes no tool recognises are still someone's data: never formatted.
    let staging = scratch.path("fs-staging");
    let message = expect_code(stage(&d, &vol.with_kind(Kind::Ext4), &staging).await, Code::FailedPrecondition);
    assert!(message.contains(&vol.id), "{message}");
    assert!(!is_mount_point(&staging));
    assert_eq!(blkid(&device), "");
    assert_data(Kind::Block, &device, &data);

    let (staging, target) = stage_and_publish(&d, &scratch, &vol, "block").await;
    assert_data(Kind::Block, &target, &data);
    let grown = 96 * MIB;
    let response = expand(&d, &vol, &staging, &target, grown).await.expect("NodeExpandVolume").into_inner();
    assert_eq!(response.capacity_bytes, grown);
    assert_eq!(visible_size(Kind::Block, &target), grown);
    assert_data(Kind::Block, &target, &data);
    unpublish_and_unstage(&d, &vol, &staging, &target).await;
    scratch.assert_nothing_mounted();

    let checksum = sha256(&device);
    d.delete(&vol.id).await;
    assert!(dataset_exists(&vol.id), "DeleteVolume destroyed the imported {}", vol.id);
    assert_eq!(sha256(&device), checksum, "DeleteVolume changed the imported {}", vol.id);
    assert_data(Kind::Block, &device, &data);
    zfs(&["destroy", &vol.id]);
}

// ---- never format -----------------------------------------------------------------------

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn a_zvol_holding_xfs_staged_as_ext4_is_failed_precondition_and_keeps_its_xfs() {
    let d = driver().await;
    let scratch = Scratch::new();
    let vol = create_volume(&d, &scratch, "vms", Kind::Xfs).await;
    let staging = scratch.path("staging");
    stage(&d, &vol, &staging).await.expect("NodeStageVolume as xfs");
    unstage(&d, &vol.id, &staging).await;
    let device = wait_for_zvol_link(&vol.id);
    let uuid = blkid_value(&device, "UUID").expect("the xfs has a UUID");

    let message = expect_code(stage(&d, &vol.with_kind(Kind::Ext4), &staging).await, Code::FailedPrecondition);
    assert!(message.contains("xfs") && message.contains(&vol.id), "{message}");
    assert!(!is_mount_point(&staging));
    assert_eq!(blkid_value(&device, "TYPE").as_deref(), Some("xfs"));
    assert_eq!(blkid_value(&device, "UUID"), Some(uuid));

    d.delete(&vol.id).await;
    assert!(!dataset_exists(&vol.id));
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn a_raw_block_volume_staged_as_a_filesystem_is_never_formatted() {
    let d = driver().await;
    let scratch = Scratch::new();
    let vol = create_volume(&d, &scratch, "vms", Kind::Block).await;
    let device = wait_for_zvol_link(&vol.id);
    // What a VM might write: bytes with no signature blkid knows.
    let data = pattern(&vol.id);
    write_data(Kind::Block, &device, &data);

    let staging = scratch.path("staging");
    let message = expect_code(stage(&d, &vol.with_kind(Kind::Ext4), &staging).await, Code::FailedPrecondition);
    assert!(message.contains(&vol.id), "{message}");
    assert!(!is_mount_point(&staging));
    assert_eq!(blkid(&device), "");
    assert_data(Kind::Block, &device, &data);

    d.delete(&vol.id).await;
    assert!(!dataset_exists(&vol.id));
}

/// One Linux partition from sector 2048 to the end, in an MBR: what `sfdisk` would write.
fn write_mbr(device: &Path, size: i64) {
    let mut sector = [0u8; 512];
    sector[440..444].copy_from_slice(&0x5a43_5349_u32.to_le_bytes());
    let entry = &mut sector[446..462];
    entry[4] = 0x83;
    entry[8..12].copy_from_slice(&2048_u32.to_le_bytes());
    entry[12..16].copy_from_slice(&((size / 512 - 2048) as u32).to_le_bytes());
    sector[510] = 0x55;
    sector[511] = 0xaa;
    let file = std::fs::OpenOptions::new().write(true).open(device).expect("open the zvol");
    file.write_all_at(&sector, 0).expect("write the MBR");
    file.sync_all().expect("fsync");
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn a_zvol_with_a_partition_table_staged_as_ext4_is_failed_precondition() {
    let d = driver().await;
    let scratch = Scratch::new();
    let vol = create_volume(&d, &scratch, "vms", Kind::Ext4).await;
    let device = wait_for_zvol_link(&vol.id);
    write_mbr(&device, vol.capacity);
    assert_eq!(blkid_value(&device, "PTTYPE").as_deref(), Some("dos"));

    let staging = scratch.path("staging");
    let message = expect_code(stage(&d, &vol, &staging).await, Code::FailedPrecondition);
    assert!(message.contains("partition table") && message.contains(&vol.id), "{message}");
    assert!(!is_mount_point(&staging));
    assert_eq!(blkid_value(&device, "PTTYPE").as_deref(), Some("dos"));
    assert_eq!(blkid_value(&device, "TYPE"), None, "a filesystem was made over the partition table");

    d.delete(&vol.id).await;
    assert!(!dataset_exists(&vol.id));
}

// ---- idempotency ------------------------------------------------------------------------

/// Every node RPC repeated succeeds and changes nothing more: one mount at the staging path,
/// one at the target, one expansion.
async fn every_node_rpc_is_idempotent(kind: Kind) {
    let d = driver().await;
    let scratch = Scratch::new();
    let vol = create_volume(&d, &scratch, "vms", kind).await;
    let staging = scratch.path("staging");
    let target = scratch.path("target");
    for _ in 0..2 {
        stage(&d, &vol, &staging).await.expect("NodeStageVolume");
    }
    assert_eq!(mounts_at(&staging).len(), if kind == Kind::Block { 0 } else { 1 });
    for _ in 0..2 {
        publish(&d, &vol, &staging, &target).await.expect("NodePublishVolume");
    }
    assert_eq!(mounts_at(&target).len(), 1, "{:?}", mounts_at(&target));
    let grown = vol.capacity + 32 * MIB;
    for _ in 0..2 {
        let response = expand(&d, &vol, &staging, &target, grown).await.expect("NodeExpandVolume");
        assert_eq!(response.into_inner().capacity_bytes, grown);
    }
    assert_eq!(zfs_capacity(&vol), grown);
    for _ in 0..2 {
        unpublish(&d, &vol.id, &target).await;
    }
    assert!(!target.exists());
    for _ in 0..2 {
        unstage(&d, &vol.id, &staging).await;
    }
    scratch.assert_nothing_mounted();
    d.delete(&vol.id).await;
    assert!(!dataset_exists(&vol.id));
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn every_node_rpc_on_a_dataset_is_idempotent() {
    every_node_rpc_is_idempotent(Kind::Dataset).await;
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn every_node_rpc_on_an_ext4_zvol_is_idempotent() {
    every_node_rpc_is_idempotent(Kind::Ext4).await;
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn every_node_rpc_on_a_block_zvol_is_idempotent() {
    every_node_rpc_is_idempotent(Kind::Block).await;
}

// ---- error codes ------------------------------------------------------------------------

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn missing_fields_are_invalid_argument() {
    let d = driver().await;
    let scratch = Scratch::new();
    let vol = create_volume(&d, &scratch, "vms", Kind::Dataset).await;
    let staging = scratch.path("staging");
    let target = scratch.path("target");
    let node = || d.node();
    let invalid = Code::InvalidArgument;

    let full = stage_request(&vol, &staging);
    for req in [
        csi::NodeStageVolumeRequest { volume_id: String::new(), ..full.clone() },
        csi::NodeStageVolumeRequest { staging_target_path: String::new(), ..full.clone() },
        csi::NodeStageVolumeRequest { staging_target_path: "relative/staging".into(), ..full.clone() },
        csi::NodeStageVolumeRequest { volume_capability: None, ..full.clone() },
    ] {
        expect_code(node().node_stage_volume(req).await, invalid);
    }
    let full = unstage_request(&vol.id, &staging);
    for req in [
        csi::NodeUnstageVolumeRequest { volume_id: String::new(), ..full.clone() },
        csi::NodeUnstageVolumeRequest { staging_target_path: String::new(), ..full.clone() },
    ] {
        expect_code(node().node_unstage_volume(req).await, invalid);
    }
    let full = publish_request(&vol, &staging, &target, false);
    for req in [
        csi::NodePublishVolumeRequest { volume_id: String::new(), ..full.clone() },
        csi::NodePublishVolumeRequest { target_path: String::new(), ..full.clone() },
        csi::NodePublishVolumeRequest { volume_capability: None, ..full.clone() },
        csi::NodePublishVolumeRequest { staging_target_path: String::new(), ..full.clone() },
        // csi-sanity's: only an ID and a target, no capability.
        csi::NodePublishVolumeRequest {
            volume_id: vol.id.clone(),
            target_path: target.display().to_string(),
            ..Default::default()
        },
    ] {
        expect_code(node().node_publish_volume(req).await, invalid);
    }
    let full = unpublish_request(&vol.id, &target);
    for req in [
        csi::NodeUnpublishVolumeRequest { volume_id: String::new(), ..full.clone() },
        csi::NodeUnpublishVolumeRequest { target_path: String::new(), ..full.clone() },
    ] {
        expect_code(node().node_unpublish_volume(req).await, invalid);
    }
    for req in [stats_request("", "some/path"), stats_request(&vol.id, "")] {
        expect_code(node().node_get_volume_stats(req).await, invalid);
    }
    let full = expand_request(&vol, &staging, scratch.dir.path(), vol.capacity + MIB);
    for req in [
        csi::NodeExpandVolumeRequest { volume_id: String::new(), ..full.clone() },
        csi::NodeExpandVolumeRequest { volume_path: String::new(), ..full.clone() },
        csi::NodeExpandVolumeRequest { capacity_range: None, ..full.clone() },
    ] {
        expect_code(node().node_expand_volume(req).await, invalid);
    }

    scratch.assert_nothing_mounted();
    assert_eq!(zfs_capacity(&vol), vol.capacity);
    d.delete(&vol.id).await;
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn unknown_volumes_are_not_found_and_unpublishing_them_succeeds() {
    let d = driver().await;
    let scratch = Scratch::new();
    let staging = scratch.path("staging");
    let target = scratch.path("target");
    let existing_path = scratch.dir.path().display().to_string();
    // Below a served pool but absent; and csi-sanity's kind of ID, outside every parent.
    for id in [format!("vms/{}", unique("no-such-volume")), unique("fake-vol-id")] {
        let vol = Vol { id: id.clone(), kind: Kind::Dataset, capacity: 0, context: HashMap::new() };
        expect_code(stage(&d, &vol, &staging).await, Code::NotFound);
        expect_code(publish(&d, &vol, &staging, &target).await, Code::NotFound);
        for path in [existing_path.as_str(), "some/path"] {
            expect_code(d.node().node_get_volume_stats(stats_request(&id, path)).await, Code::NotFound);
        }
        expect_code(expand(&d, &vol, &staging, scratch.dir.path(), GIB).await, Code::NotFound);
        // csi-sanity's: a relative path and no capacity range.
        let bare = csi::NodeExpandVolumeRequest { volume_id: id.clone(), volume_path: "some/path".into(), ..Default::default() };
        expect_code(d.node().node_expand_volume(bare).await, Code::NotFound);
        unpublish(&d, &id, &target).await;
        unstage(&d, &id, &staging).await;
    }
    assert!(!staging.exists() && !target.exists());
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn stats_for_a_path_that_does_not_exist_is_not_found() {
    let d = driver().await;
    let scratch = Scratch::new();
    let vol = create_volume(&d, &scratch, "vms", Kind::Dataset).await;
    let (staging, target) = stage_and_publish(&d, &scratch, &vol, "a").await;
    let missing = scratch.path("missing").display().to_string();
    // The second is csi-sanity's "volume does not exist on the specified path".
    for path in [missing.as_str(), "some/path"] {
        expect_code(d.node().node_get_volume_stats(stats_request(&vol.id, path)).await, Code::NotFound);
    }
    unpublish_and_unstage(&d, &vol, &staging, &target).await;
    d.delete(&vol.id).await;
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn a_path_holding_another_volume_is_already_exists_and_gets_no_second_mount() {
    let d = driver().await;
    let scratch = Scratch::new();
    for kind in [Kind::Dataset, Kind::Ext4, Kind::Block] {
        let label = format!("{kind:?}").to_lowercase();
        let first = create_volume(&d, &scratch, "vms", kind).await;
        let second = create_volume(&d, &scratch, "vms", kind).await;
        let (staging, target) = stage_and_publish(&d, &scratch, &first, &format!("{label}-first")).await;
        let second_staging = scratch.path(&format!("{label}-second-staging"));
        stage(&d, &second, &second_staging).await.expect("NodeStageVolume");
        let before_target = mounts_at(&target);
        let before_staging = mounts_at(&staging);

        let message = expect_code(publish(&d, &second, &second_staging, &target).await, Code::AlreadyExists);
        assert!(message.contains(&second.id), "{message}");
        assert_eq!(mounts_at(&target), before_target);
        if kind != Kind::Block {
            expect_code(stage(&d, &second, &staging).await, Code::AlreadyExists);
            assert_eq!(mounts_at(&staging), before_staging);
        }

        unpublish_and_unstage(&d, &first, &staging, &target).await;
        unstage(&d, &second.id, &second_staging).await;
        d.delete(&first.id).await;
        d.delete(&second.id).await;
    }
    scratch.assert_nothing_mounted();
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn publish_before_stage_is_failed_precondition() {
    let d = driver().await;
    let scratch = Scratch::new();
    for kind in [Kind::Dataset, Kind::Ext4] {
        let vol = create_volume(&d, &scratch, "vms", kind).await;
        let staging = scratch.path("staging");
        let target = scratch.path("target");
        let message = expect_code(publish(&d, &vol, &staging, &target).await, Code::FailedPrecondition);
        assert!(message.contains(&vol.id), "{message}");
        assert!(!is_mount_point(&target));
        d.delete(&vol.id).await;
    }
    scratch.assert_nothing_mounted();
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn node_info_is_the_node_id_and_its_topology_segment() {
    let d = driver().await;
    let info = d.node().node_get_info(csi::NodeGetInfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.node_id, NODE_ID);
    assert_eq!(info.max_volumes_per_node, 0);
    let segments = info.accessible_topology.expect("topology").segments;
    assert_eq!(segments, HashMap::from([("zfs-csi.io/node".to_string(), NODE_ID.to_string())]));
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn node_capabilities_are_stage_stats_expand_and_condition() {
    use csi::node_service_capability::{rpc::Type, Type as Cap};
    let d = driver().await;
    let caps = d.node().node_get_capabilities(csi::NodeGetCapabilitiesRequest {}).await.unwrap().into_inner();
    let types: Vec<i32> = caps
        .capabilities
        .into_iter()
        .map(|c| match c.r#type {
            Some(Cap::Rpc(rpc)) => rpc.r#type,
            other => panic!("not an RPC capability: {other:?}"),
        })
        .collect();
    for wanted in [Type::StageUnstageVolume, Type::GetVolumeStats, Type::ExpandVolume, Type::VolumeCondition] {
        assert!(types.contains(&(wanted as i32)), "{wanted:?} missing from {types:?}");
    }
}

// ---- read-only and shared ---------------------------------------------------------------

/// Published read-only, by the request's flag or by a reader-only access mode: the data
/// reads, and writing fails; published read-write afterwards, it takes writes again.
async fn read_only_publish_refuses_writes(kind: Kind) {
    let d = driver().await;
    let scratch = Scratch::new();
    let vol = create_volume(&d, &scratch, "vms", kind).await;
    let (staging, target) = stage_and_publish(&d, &scratch, &vol, "rw").await;
    let data = pattern(&vol.id);
    write_data(kind, &target, &data);
    unpublish(&d, &vol.id, &target).await;

    let reader_only = with_mode(kind.capability(), Mode::SingleNodeReaderOnly);
    let by_flag = publish_request(&vol, &staging, &scratch.path("ro-flag"), true);
    let by_mode = csi::NodePublishVolumeRequest {
        target_path: scratch.path("ro-mode").display().to_string(),
        volume_capability: Some(reader_only),
        ..publish_request(&vol, &staging, &target, false)
    };
    for req in [by_flag, by_mode] {
        let target = PathBuf::from(&req.target_path);
        d.node().node_publish_volume(req).await.expect("read-only NodePublishVolume");
        assert!(mounts_at(&target)[0].is_read_only(), "{:?}", mounts_at(&target));
        assert_data(kind, &target, &data);
        match try_write(kind, &target) {
            Err(e) if is_refused_write(kind, &e) => {}
            other => panic!("writing through read-only {} gave {other:?}", target.display()),
        }
        unpublish(&d, &vol.id, &target).await;
        if kind == Kind::Block {
            assert!(!device_read_only(&vol), "the device stays read-only after its last unpublish");
        }
    }
    publish(&d, &vol, &staging, &target).await.expect("read-write NodePublishVolume");
    assert_data(kind, &target, &data);
    try_write(kind, &target).expect("writing through a read-write publish after read-only ones");
    unpublish(&d, &vol.id, &target).await;

    unstage(&d, &vol.id, &staging).await;
    scratch.assert_nothing_mounted();
    d.delete(&vol.id).await;
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn read_only_publish_of_a_dataset_refuses_writes() {
    read_only_publish_refuses_writes(Kind::Dataset).await;
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn read_only_publish_of_an_ext4_zvol_refuses_writes() {
    read_only_publish_refuses_writes(Kind::Ext4).await;
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn read_only_publish_of_a_block_zvol_refuses_writes() {
    read_only_publish_refuses_writes(Kind::Block).await;
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn a_volume_that_is_not_shared_is_refused_at_a_second_target() {
    let d = driver().await;
    let scratch = Scratch::new();
    for kind in [Kind::Dataset, Kind::Ext4, Kind::Block] {
        let label = format!("{kind:?}").to_lowercase();
        let vol = create_volume(&d, &scratch, "vms", kind).await;
        let (staging, target) = stage_and_publish(&d, &scratch, &vol, &label).await;
        let second = scratch.path(&format!("{label}-second-target"));
        let message = expect_code(publish(&d, &vol, &staging, &second).await, Code::FailedPrecondition);
        assert!(message.contains("shared"), "{message}");
        assert!(!is_mount_point(&second));
        unpublish_and_unstage(&d, &vol, &staging, &target).await;
        d.delete(&vol.id).await;
    }
    scratch.assert_nothing_mounted();
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn a_shared_volume_is_published_at_two_targets_that_see_the_same_data() {
    let d = driver().await;
    let scratch = Scratch::new();
    for kind in [Kind::Dataset, Kind::Ext4, Kind::Block] {
        let label = format!("{kind:?}").to_lowercase();
        let vol = create_volume_with(&d, &scratch, "vms", kind, &[("shared", "yes")], None).await;
        let (staging, target) = stage_and_publish(&d, &scratch, &vol, &label).await;
        let second = scratch.path(&format!("{label}-second-target"));
        publish(&d, &vol, &staging, &second).await.expect("second NodePublishVolume of a shared volume");
        let data = pattern(&vol.id);
        write_data(kind, &target, &data);
        assert_data(kind, &second, &data);
        if kind == Kind::Block {
            // Read-only raw block is the device's own flag: not while others write to it.
            let third = scratch.path(&format!("{label}-read-only-target"));
            let req = publish_request(&vol, &staging, &third, true);
            let message = expect_code(d.node().node_publish_volume(req).await, Code::FailedPrecondition);
            assert!(message.contains("read-write"), "{message}");
            assert!(!is_mount_point(&third));
            try_write(kind, &target).expect("the device stays writable");
        }
        unpublish(&d, &vol.id, &second).await;
        unpublish_and_unstage(&d, &vol, &staging, &target).await;
        d.delete(&vol.id).await;
    }
    scratch.assert_nothing_mounted();
}

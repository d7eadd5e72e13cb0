//! The ZFS command layer against the real `zfs`/`zpool` in the test VM: every operation on all
//! three pools, each typed error from the real message that triggers it, and cancellation.

use std::time::Duration;

use zfs_csi::process::ProcessRunner;
use zfs_csi::zfs::{DatasetName, DatasetType, Depth, Destroy, PropertySource, SnapshotName, Zfs, ZfsError};
use zfs_csi_tests::{dataset_exists, umount_retrying, unique, wait_for_zvol_link, zfs as cli, zfs_get};

const POOLS: [&str; 3] = ["ai", "vms", "tank"];

fn layer() -> Zfs {
    Zfs::new(ProcessRunner::new(Vec::new(), Duration::from_secs(60)))
}

fn name(pool: &str, prefix: &str) -> DatasetName {
    DatasetName::parse(&format!("{pool}/{}", unique(prefix))).unwrap()
}

fn props(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn filesystems_and_zvols_are_created_with_properties_and_inherit_compression() {
    let zfs = layer();
    for pool in POOLS {
        let fs = name(pool, "layer-fs");
        zfs.create_filesystem(&fs, &props(&[("mountpoint", "legacy"), ("refquota", "1073741824"), ("zfs-csi.io:test", "yes")]), None)
            .await
            .unwrap();
        let zvol = name(pool, "layer-zvol");
        zfs.create_volume(&zvol, 64 << 20, true, &props(&[("volblocksize", "16384")]), None).await.unwrap();

        let got = zfs.get_one(&fs, &["type", "compression", "refquota", "zfs-csi.io:test", "mountpoint"]).await.unwrap();
        assert_eq!(got.dataset_type(), Some(DatasetType::Filesystem));
        assert_eq!(got.get("compression"), Some("lz4"));
        assert_eq!(got.property("compression").unwrap().source, PropertySource::Inherited(pool.to_string()));
        assert_eq!(got.get_u64("refquota"), Some(1 << 30));
        assert_eq!(got.property("refquota").unwrap().source, PropertySource::Local);
        assert_eq!(got.get("zfs-csi.io:test"), Some("yes"));

        let got = zfs.get_one(&zvol, &["type", "compression", "volsize", "volblocksize", "refreservation"]).await.unwrap();
        assert_eq!(got.dataset_type(), Some(DatasetType::Volume));
        assert_eq!(got.get_u64("volsize"), Some(64 << 20));
        assert_eq!(got.get_u64("refreservation"), Some(0), "sparse zvol has no reservation");
        assert_eq!(got.property("compression").unwrap().source, PropertySource::Inherited(pool.to_string()));
        // The real zfs agrees on the source, as a user would see it.
        assert_eq!(zfs_get(zvol.as_str(), "compression"), ("lz4".into(), format!("inherited from {pool}")));
        wait_for_zvol_link(zvol.as_str());

        zfs_cli_destroy(zvol.as_str());
        zfs_cli_destroy(fs.as_str());
        assert!(!dataset_exists(fs.as_str()) && !dataset_exists(zvol.as_str()));
    }
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn listing_follows_depth_and_type_filters() {
    let zfs = layer();
    let top = name("tank", "layer-list");
    zfs.create_filesystem(&top, &Vec::new(), None).await.unwrap();
    let child = top.child("child").unwrap();
    zfs.create_filesystem(&child, &Vec::new(), None).await.unwrap();
    let grandchild = child.child("vol").unwrap();
    zfs.create_volume(&grandchild, 1 << 20, true, &Vec::new(), None).await.unwrap();
    zfs.snapshot(&child.snapshot("s1").unwrap(), &Vec::new()).await.unwrap();

    let names = |sets: Vec<zfs_csi::zfs::Dataset>| sets.into_iter().map(|d| d.name).collect::<Vec<_>>();
    let one_level = zfs.get(&top, &["type"], Depth::Levels(1), &[DatasetType::Filesystem, DatasetType::Volume]).await.unwrap();
    assert_eq!(names(one_level), [top.to_string(), child.to_string()]);
    let all = zfs.get(&top, &["type"], Depth::All, &[]).await.unwrap();
    assert_eq!(all.len(), 4, "{:?}", names(all));
    let volumes = zfs.get(&top, &["type"], Depth::All, &[DatasetType::Volume]).await.unwrap();
    assert_eq!(names(volumes), [grandchild.to_string()]);
    let snapshots = zfs.get(&top, &["type"], Depth::All, &[DatasetType::Snapshot]).await.unwrap();
    assert_eq!(names(snapshots), [format!("{child}@s1")]);

    zfs_csi_tests::zfs(&["destroy", "-r", top.as_str()]);
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn snapshots_clones_properties_and_deferred_destroy() {
    let zfs = layer();
    for pool in POOLS {
        let origin = name(pool, "layer-origin");
        zfs.create_volume(&origin, 32 << 20, true, &Vec::new(), None).await.unwrap();
        let snap = origin.snapshot("s1").unwrap();
        zfs.snapshot(&snap, &props(&[("zfs-csi.io:csi-name", "s1")])).await.unwrap();
        let got = zfs.get_one(&snap, &["type", "zfs-csi.io:csi-name"]).await.unwrap();
        assert_eq!(got.dataset_type(), Some(DatasetType::Snapshot));
        assert_eq!(got.get("zfs-csi.io:csi-name"), Some("s1"));

        let clone = name(pool, "layer-clone");
        zfs.clone_snapshot(&snap, &clone, &props(&[("zfs-csi.io:managed-by", "test")])).await.unwrap();
        let got = zfs.get_one(&clone, &["origin", "zfs-csi.io:managed-by", "compression"]).await.unwrap();
        assert_eq!(got.get("origin"), Some(snap.to_string().as_str()));
        assert_eq!(got.get("zfs-csi.io:managed-by"), Some("test"));
        assert_eq!(got.property("compression").unwrap().source, PropertySource::Inherited(pool.to_string()));

        zfs.set(&clone, &props(&[("volsize", "67108864"), ("zfs-csi.io:note", "grown")])).await.unwrap();
        let got = zfs.get_one(&clone, &["volsize", "zfs-csi.io:note"]).await.unwrap();
        assert_eq!(got.get_u64("volsize"), Some(64 << 20));
        assert_eq!(got.get("zfs-csi.io:note"), Some("grown"));

        // Deferred: the snapshot stays while its clone lives, and goes with it.
        zfs.destroy_snapshot(&snap, Destroy::DeferWhileCloned).await.unwrap();
        let got = zfs.get_one(&snap, &["defer_destroy"]).await.unwrap();
        assert_eq!(got.get("defer_destroy"), Some("on"));
        zfs_cli_destroy(clone.as_str());
        assert!(!dataset_exists(&snap.to_string()), "deferred snapshot outlived its last clone");
        zfs_cli_destroy(origin.as_str());
    }
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn pool_health_and_capacity() {
    let zfs = layer();
    for pool in POOLS {
        let p = zfs.pool(pool).await.unwrap();
        assert_eq!(p.name, pool);
        assert!(p.is_healthy(), "{p:?}");
        assert!(p.size > 1 << 30 && p.free > 0 && p.free <= p.size, "{p:?}");
    }
    assert!(matches!(zfs.pool("nopool").await, Err(ZfsError::NotFound(_))));
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn real_error_messages_become_typed_errors() {
    let zfs = layer();
    let missing = DatasetName::parse("vms/does-not-exist").unwrap();
    let e = zfs.get_one(&missing, &["type"]).await.unwrap_err();
    assert!(matches!(e, ZfsError::NotFound(_)), "{e:?}");
    let e = zfs.destroy_snapshot(&SnapshotName::parse("vms/does-not-exist@s").unwrap(), Destroy::Now).await;
    // Destroying a missing snapshot succeeds or reports not found, depending on the release.
    assert!(matches!(e, Ok(()) | Err(ZfsError::NotFound(_))), "{e:?}");

    let fs = name("vms", "layer-errors");
    zfs.create_filesystem(&fs, &Vec::new(), None).await.unwrap();
    let e = zfs.create_filesystem(&fs, &Vec::new(), None).await.unwrap_err();
    assert!(matches!(e, ZfsError::AlreadyExists(_)), "{e:?}");

    let snap = fs.snapshot("s").unwrap();
    zfs.snapshot(&snap, &Vec::new()).await.unwrap();
    let clone = name("vms", "layer-errors-clone");
    zfs.clone_snapshot(&snap, &clone, &Vec::new()).await.unwrap();
    let e = zfs.destroy_snapshot(&snap, Destroy::Now).await.unwrap_err();
    assert!(matches!(e, ZfsError::HasDependents(_)), "snapshot with a clone: {e:?}");

    let e = zfs.create_volume(&name("vms", "layer-huge"), 100 << 30, false, &Vec::new(), None).await.unwrap_err();
    assert!(matches!(e, ZfsError::NoSpace(_)), "thick zvol larger than the pool: {e:?}");

    let e = zfs.create_filesystem(&name("vms", "layer-bad"), &props(&[("compression", "bogus")]), None).await.unwrap_err();
    assert!(matches!(e, ZfsError::Invalid(_)), "bad property value: {e:?}");
    let e = zfs.create_volume(&name("vms", "layer-bad"), 1 << 20, true, &props(&[("volblocksize", "3000")]), None).await.unwrap_err();
    assert!(matches!(e, ZfsError::Invalid(_)), "volblocksize not a power of two: {e:?}");


    zfs_cli_destroy(clone.as_str());
    zfs.destroy_snapshot(&snap, Destroy::Now).await.unwrap();
    zfs_cli_destroy(fs.as_str());
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn creation_only_properties_and_impossible_sizes_are_final_errors() {
    let zfs = layer();
    let origin = name("vms", "layer-final");
    zfs.create_volume(&origin, 32 << 20, true, &props(&[("volblocksize", "65536")]), None).await.unwrap();
    let snap = origin.snapshot("s").unwrap();
    zfs.snapshot(&snap, &Vec::new()).await.unwrap();
    for (property, value) in [("volblocksize", "16384"), ("encryption", "on"), ("keylocation", "file:///tmp/k")] {
        let e = zfs.clone_snapshot(&snap, &name("vms", "layer-final-clone"), &props(&[(property, value)])).await.unwrap_err();
        assert!(matches!(e, ZfsError::Invalid(_)), "clone -o {property}: {e:?}");
    }
    let e = zfs.set(&origin, &props(&[("volblocksize", "16384")])).await.unwrap_err();
    assert!(matches!(e, ZfsError::Invalid(_)), "set volblocksize: {e:?}");
    let e = zfs.set(&origin, &props(&[("volsize", "33570816")])).await.unwrap_err();
    assert!(matches!(e, ZfsError::Invalid(_)), "volsize not a multiple of the block size: {e:?}");

    let fs = name("vms", "layer-final-fs");
    zfs.create_filesystem(&fs, &Vec::new(), None).await.unwrap();
    zfs_csi_tests::write_incompressible(std::path::Path::new(&format!("/{fs}/data")), 4 << 20);
    let e = zfs.set(&fs, &props(&[("refquota", "1048576")])).await.unwrap_err();
    assert!(matches!(e, ZfsError::OutOfRange(_)), "refquota below what it uses: {e:?}");
    zfs_csi_tests::zfs(&["destroy", "-r", fs.as_str()]);
    zfs_csi_tests::zfs(&["destroy", "-r", origin.as_str()]);
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn get_existing_reads_the_targets_that_exist_and_skips_the_others() {
    let zfs = layer();
    let fs = name("tank", "layer-existing");
    zfs.create_filesystem(&fs, &Vec::new(), None).await.unwrap();
    zfs.snapshot(&fs.snapshot("s").unwrap(), &Vec::new()).await.unwrap();
    let targets: Vec<String> = [format!("{fs}@s"), format!("{fs}@missing"), "tank/none@x".into(), "nopool/x@y".into(), fs.to_string()].into();
    let found = zfs.get_existing(&targets, &["type"]).await.unwrap();
    let mut names: Vec<&str> = found.iter().map(|d| d.name.as_str()).collect();
    names.sort();
    assert_eq!(names, [fs.to_string(), format!("{fs}@s")]);
    assert!(zfs.get_existing(&targets[1..4], &["type"]).await.unwrap().is_empty());
    assert!(zfs.get_existing(&targets, &["bogus-property"]).await.is_err(), "other errors are errors");
    zfs_csi_tests::zfs(&["destroy", "-r", fs.as_str()]);
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn a_cancelled_call_leaves_no_process_behind() {
    // A prefix that forks a marked child before running zfs, like a wrapper would.
    let marker = format!("28.{}", std::process::id());
    let prefix = vec!["sh".to_string(), "-c".to_string(), format!("sleep {marker} & wait; exec \"$@\""), "sh".to_string()];
    let zfs = Zfs::new(ProcessRunner::new(prefix, Duration::from_secs(60)));
    let vms = DatasetName::parse("vms").unwrap();
    let call = zfs.get_one(&vms, &["type"]);
    assert!(tokio::time::timeout(Duration::from_millis(500), call).await.is_err(), "the call should still be running");
    let gone = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        !live_process_with(&marker)
    });
    assert!(gone, "the dropped call left a process running");
}

fn live_process_with(marker: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let zombie = stat.rsplit(')').next().is_some_and(|s| s.trim_start().starts_with('Z'));
        !zombie && String::from_utf8_lossy(&cmdline).contains(marker)
    })
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn delete_if_owned_destroys_only_what_carries_the_marker_itself_and_nothing_in_use() {
    use zfs_csi::zfs::OwnedDelete;
    let zfs = layer();
    let marker = "zfs-csi.io:managed-by";
    let mark = "zfs-csi.io:deleted";
    const CLAIM: &str = "zfs-csi.io:clone-for";
    const RELEASED: &str = "zfs-csi.io:clone-released";
    let ours = props(&[("mountpoint", "legacy"), (marker, "zfs-csi.io")]);
    let delete = |d: &DatasetName, owner: &'static str| {
        let (zfs, d) = (zfs.clone(), d.clone());
        async move { zfs.delete_if_owned(&d, marker, owner, mark, Some((CLAIM, RELEASED))).await.unwrap() }
    };

    let owned = name("ai", "owned");
    zfs.create_filesystem(&owned, &ours, None).await.unwrap();
    assert_eq!(delete(&owned, "zfs-csi.io").await, OwnedDelete::Destroyed { origin: None });
    assert!(!dataset_exists(owned.as_str()));
    assert_eq!(delete(&owned, "zfs-csi.io").await, OwnedDelete::NotFound);

    // Someone else's, another driver's, one that only inherits our marker, and a replica
    // received with `zfs send -p | zfs recv`, whose marker is a received value, not ours.
    let foreign = name("ai", "foreign");
    zfs.create_filesystem(&foreign, &Vec::new(), None).await.unwrap();
    let parent = name("ai", "marked-parent");
    zfs.create_filesystem(&parent, &ours, None).await.unwrap();
    let child = parent.child("child").unwrap();
    zfs.create_filesystem(&child, &Vec::new(), None).await.unwrap();
    let sent = name("ai", "sent");
    zfs.create_filesystem(&sent, &ours, None).await.unwrap();
    cli(&["snapshot", &format!("{sent}@r")]);
    let received = name("ai", "received");
    let send = std::process::Command::new("zfs").args(["send", "-p", &format!("{sent}@r")]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let status = std::process::Command::new("zfs").args(["recv", "-u", received.as_str()]).stdin(send.stdout.unwrap()).status().unwrap();
    assert!(status.success(), "zfs send -p | zfs recv");
    assert_eq!(zfs_get(received.as_str(), marker), ("zfs-csi.io".into(), "received".into()));
    cli(&["destroy", &format!("{received}@r")]);
    for (dataset, owner) in [(&foreign, "zfs-csi.io"), (&parent, "other.driver"), (&child, "zfs-csi.io"), (&received, "zfs-csi.io")] {
        assert_eq!(delete(dataset, owner).await, OwnedDelete::NotOwned, "{dataset}");
        assert!(dataset_exists(dataset.as_str()));
    }

    // Dependents: marked in the same step, untouched otherwise.
    let with_snapshot = name("ai", "with-snap");
    zfs.create_filesystem(&with_snapshot, &ours, None).await.unwrap();
    let snap = with_snapshot.snapshot("s").unwrap();
    zfs.snapshot(&snap, &Vec::new()).await.unwrap();
    assert_eq!(delete(&with_snapshot, "zfs-csi.io").await, OwnedDelete::Marked);
    assert_eq!(zfs_get(with_snapshot.as_str(), mark), ("true".into(), "local".into()));
    assert!(dataset_exists(&snap.to_string()));

    // In use: a mounted filesystem and an open zvol are refused (EBUSY), never unmounted.
    let mounted = name("ai", "mounted");
    zfs.create_filesystem(&mounted, &ours, None).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    zfs_csi::mount::mount_filesystem(mounted.as_str(), dir.path(), "zfs", &[], false).unwrap();
    std::fs::write(dir.path().join("f"), b"kept").unwrap();
    assert_eq!(delete(&mounted, "zfs-csi.io").await, OwnedDelete::Refused(16));
    assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), b"kept", "the mount and its data are untouched");
    umount_retrying(dir.path());
    assert_eq!(delete(&mounted, "zfs-csi.io").await, OwnedDelete::Destroyed { origin: None });

    let zvol = name("ai", "zvol");
    zfs.create_volume(&zvol, 1 << 20, true, &props(&[(marker, "zfs-csi.io")]), None).await.unwrap();
    let device = wait_for_zvol_link(zvol.as_str());
    let held = std::fs::File::open(&device).unwrap();
    assert_eq!(delete(&zvol, "zfs-csi.io").await, OwnedDelete::Refused(16), "an open zvol");
    drop(held);
    let mut outcome = delete(&zvol, "zfs-csi.io").await;
    for _ in 0..20 {
        // udev may still be probing the device it just saw closed
        if outcome != OwnedDelete::Refused(16) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        outcome = delete(&zvol, "zfs-csi.io").await;
    }
    assert_eq!(outcome, OwnedDelete::Destroyed { origin: None });
    let gone = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        !device.exists()
    });
    assert!(gone, "the destroyed zvol's device link went away");

    // A clone reports its origin, so the driver can reap what it came from. An origin taken
    // for another clone (or for none) is left as it is; one taken for this clone is marked
    // released in the same step, so a crash right after the destroy cannot hide that it is
    // garbage.
    let clone = name("ai", "clone");
    zfs.clone_snapshot(&snap, &clone, &ours).await.unwrap();
    assert_eq!(delete(&clone, "zfs-csi.io").await, OwnedDelete::Destroyed { origin: Some(snap.to_string()) });
    assert_eq!(zfs_get(&snap.to_string(), RELEASED).0, "-", "an origin not taken for this clone is not released");
    let taken_for = |clone: &DatasetName| with_snapshot.snapshot(&format!("for-{}", clone.as_str().replace('/', "-"))).unwrap();
    let internal = taken_for(&clone);
    zfs.snapshot(&internal, &props(&[(CLAIM, clone.as_str())])).await.unwrap();
    let other = name("ai", "other-clone");
    zfs.clone_snapshot(&internal, &other, &ours).await.unwrap();
    assert_eq!(delete(&other, "zfs-csi.io").await, OwnedDelete::Destroyed { origin: Some(internal.to_string()) });
    assert_eq!(zfs_get(&internal.to_string(), RELEASED).0, "-", "taken for another clone: not released");
    zfs.clone_snapshot(&internal, &clone, &ours).await.unwrap();
    assert_eq!(delete(&clone, "zfs-csi.io").await, OwnedDelete::Destroyed { origin: Some(internal.to_string()) });
    assert_eq!(zfs_get(&internal.to_string(), RELEASED), ("true".into(), "local".into()), "its clone's destroy released it");
    zfs.destroy_snapshot(&internal, Destroy::Now).await.unwrap();
    for d in [&child, &parent, &foreign, &received, &sent] {
        cli(&["destroy", "-r", d.as_str()]);
    }
    zfs.destroy_snapshot(&snap, Destroy::Now).await.unwrap();
    cli(&["destroy", with_snapshot.as_str()]);
}

/// Destroys a dataset with the real `zfs destroy`, as a test's cleanup (the driver itself never
/// hands a volume to the CLI, which unmounts before destroying).
fn zfs_cli_destroy(name: &str) {
    cli(&["destroy", name]);
}

//! Controller service against real ZFS, over the real socket: volumes on the ai/vms/tank
//! tiers, properties inherited from the pools, idempotency, snapshots, clones, deletion with
//! dependents, capacity, and hostile input that must touch nothing.

use tonic::Code;
use zfs_csi_tests::*;

const POOLS: [&str; 3] = ["ai", "vms", "tank"];
const MARKER: &str = "zfs-csi.io:managed-by";

async fn driver() -> DriverProcess {
    DriverProcess::start("ai,vms,tank").await
}





fn prop(name: &str, property: &str) -> String {
    zfs_get(name, property).0
}

async fn listed_volume_ids(d: &DriverProcess) -> Vec<String> {
    let list = d.controller().list_volumes(csi::ListVolumesRequest::default()).await.unwrap().into_inner();
    list.entries.into_iter().map(|e| e.volume.unwrap().volume_id).collect()
}

async fn listed_snapshot_ids(d: &DriverProcess, req: csi::ListSnapshotsRequest) -> Vec<String> {
    let list = d.controller().list_snapshots(req).await.unwrap().into_inner();
    list.entries.into_iter().map(|e| e.snapshot.unwrap().snapshot_id).collect()
}

// ---- CreateVolume ------------------------------------------------------------------------

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn filesystem_volume_on_each_tier_is_a_legacy_dataset_with_refquota_and_inherited_compression() {
    let d = driver().await;
    for pool in POOLS {
        let name = unique("pvc-fs");
        let v = d.create(create_request(&name, pool, mount_capability(""), 64 * MIB)).await;
        let id = format!("{pool}/{name}");
        assert_eq!(v.volume_id, id);
        assert_eq!(v.capacity_bytes, 64 * MIB);
        assert_eq!(v.accessible_topology[0].segments.get("zfs-csi.io/node").map(String::as_str), Some(NODE_ID));
        assert_eq!(v.volume_context.get("kind").map(String::as_str), Some("filesystem"));
        assert_eq!(prop(&id, "type"), "filesystem");
        assert_eq!(zfs_get(&id, "mountpoint"), ("legacy".into(), "local".into()));
        assert_eq!(prop(&id, "refquota"), (64 * MIB).to_string());
        assert_eq!(prop(&id, "refreservation"), (64 * MIB).to_string(), "thick by default, as OpenEBS");
        assert_eq!(zfs_get(&id, "compression"), ("lz4".into(), format!("inherited from {pool}")));
        assert_eq!(prop(&id, MARKER), DRIVER_NAME);
        assert_eq!(prop(&id, "zfs-csi.io:csi-name"), name);
        d.delete(&id).await;
        assert!(!dataset_exists(&id));
    }
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn block_and_ext4_xfs_requests_make_zvols_with_inherited_compression() {
    let d = driver().await;
    for pool in POOLS {
        for (cap, fstype) in [(block_capability(), "block"), (mount_capability("ext4"), "ext4"), (mount_capability("xfs"), "xfs")] {
            let name = unique("pvc-zvol");
            let id = format!("{pool}/{name}");
            // 100 MiB + 1 byte rounds up to the next 16 KiB.
            let v = d.create(create_request(&name, pool, cap, 100 * MIB + 1)).await;
            assert_eq!(v.capacity_bytes, 100 * MIB + 16384);
            assert_eq!(prop(&id, "type"), "volume");
            assert_eq!(prop(&id, "volsize"), (100 * MIB + 16384).to_string());
            assert_eq!(zfs_get(&id, "compression"), ("lz4".into(), format!("inherited from {pool}")));
            assert_eq!(prop(&id, "zfs-csi.io:fstype"), fstype);
            assert_ne!(prop(&id, "refreservation"), "0", "thick zvol reserves its size");
            d.delete(&id).await;
            assert!(!dataset_exists(&id));
        }
    }
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn fstype_zfs_class_still_gives_a_zvol_for_a_block_request() {
    let d = driver().await;
    let name = unique("pvc-blk");
    let mut req = create_request(&name, "vms", block_capability(), 32 * MIB);
    req.parameters.insert("fstype".into(), "zfs".into());
    let v = d.create(req).await;
    assert_eq!(prop(&v.volume_id, "type"), "volume");
    d.delete(&v.volume_id).await;
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn thin_provisioning_reserves_nothing() {
    let d = driver().await;
    for cap in [mount_capability(""), block_capability()] {
        let name = unique("pvc-thin");
        let mut req = create_request(&name, "tank", cap, 10 * GIB);
        req.parameters.insert("thinprovision".into(), "yes".into());
        let v = d.create(req).await;
        assert_eq!(prop(&v.volume_id, "refreservation"), "0");
        d.delete(&v.volume_id).await;
    }
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn class_properties_equal_to_the_pool_stay_inherited_and_others_are_set_locally() {
    let d = driver().await;
    let name = unique("pvc-props");
    let mut req = create_request(&name, "ai", mount_capability(""), 64 * MIB);
    req.parameters.extend(params(&[("compression", "lz4"), ("recordsize", "1M"), ("dedup", "off")]));
    let v = d.create(req).await;
    assert_eq!(zfs_get(&v.volume_id, "compression"), ("lz4".into(), "inherited from ai".into()));
    assert_eq!(zfs_get(&v.volume_id, "recordsize"), ((1 << 20).to_string(), "local".into()));
    assert_eq!(zfs_get(&v.volume_id, "dedup").1, "default", "equal to the default: left alone");

    let name = unique("pvc-zstd");
    let mut req = create_request(&name, "ai", block_capability(), 64 * MIB);
    req.parameters.extend(params(&[("compression", "zstd"), ("volblocksize", "64k")]));
    let v2 = d.create(req).await;
    assert_eq!(zfs_get(&v2.volume_id, "compression"), ("zstd".into(), "local".into()));
    assert_eq!(prop(&v2.volume_id, "volblocksize"), "65536");
    d.delete(&v.volume_id).await;
    d.delete(&v2.volume_id).await;
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn provisioner_metadata_is_recorded_on_the_dataset() {
    let d = driver().await;
    let name = unique("pvc-meta");
    let mut req = create_request(&name, "vms", mount_capability(""), 32 * MIB);
    req.parameters.extend(params(&[
        ("csi.storage.k8s.io/pvc/name", "data"),
        ("csi.storage.k8s.io/pvc/namespace", "media"),
        ("csi.storage.k8s.io/pv/name", "pvc-1234"),
    ]));
    let v = d.create(req).await;
    assert_eq!(prop(&v.volume_id, "zfs-csi.io:pvc-name"), "data");
    assert_eq!(prop(&v.volume_id, "zfs-csi.io:pvc-namespace"), "media");
    assert_eq!(prop(&v.volume_id, "zfs-csi.io:pv-name"), "pvc-1234");
    d.delete(&v.volume_id).await;
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn a_child_dataset_can_be_the_poolname() {
    let d = driver().await;
    let parent = format!("tank/{}", unique("media"));
    zfs(&["create", &parent]);
    let name = unique("pvc-child");
    let v = d.create(create_request(&name, &parent, mount_capability(""), 32 * MIB)).await;
    assert_eq!(v.volume_id, format!("{parent}/{name}"));
    assert_eq!(zfs_get(&v.volume_id, "compression"), ("lz4".into(), "inherited from tank".into()));
    d.delete(&v.volume_id).await;
    zfs(&["destroy", &parent]);
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn repeated_create_returns_the_same_volume_and_conflicts_are_already_exists() {
    let d = driver().await;
    let name = unique("pvc-idem");
    let req = create_request(&name, "vms", mount_capability(""), 64 * MIB);
    let first = d.create(req.clone()).await;
    let again = d.create(req.clone()).await;
    assert_eq!(first, again);

    let mut bigger = req.clone();
    bigger.capacity_range = capacity(128 * MIB, 0);
    expect_code(d.controller().create_volume(bigger).await, Code::AlreadyExists);
    let mut other_params = req.clone();
    other_params.parameters.insert("compression".into(), "zstd".into());
    expect_code(d.controller().create_volume(other_params).await, Code::AlreadyExists);
    let mut block = req.clone();
    block.volume_capabilities = vec![block_capability()];
    expect_code(d.controller().create_volume(block).await, Code::AlreadyExists);
    // A dataset the driver did not make under that name is not taken over (a snapshot shows
    // it is not what an interrupted creation leaves, which would be adopted).
    let foreign = unique("pvc-foreign");
    zfs(&["create", &format!("vms/{foreign}")]);
    zfs(&["snapshot", &format!("vms/{foreign}@keep")]);
    expect_code(
        d.controller().create_volume(create_request(&foreign, "vms", mount_capability(""), 64 * MIB)).await,
        Code::AlreadyExists,
    );
    assert_eq!(prop(&format!("vms/{foreign}"), MARKER), "-", "foreign dataset left unmarked");
    zfs(&["destroy", "-r", &format!("vms/{foreign}")]);
    d.delete(&first.volume_id).await;
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn racing_identical_creates_make_one_dataset() {
    let d = driver().await;
    let name = unique("pvc-race");
    let req = create_request(&name, "tank", block_capability(), 64 * MIB);
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let mut c = d.controller();
            let r = req.clone();
            tokio::spawn(async move { c.create_volume(r).await })
        })
        .collect();
    let mut ok = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(_) => ok += 1,
            Err(s) => assert_eq!(s.code(), Code::Aborted, "{s:?}"),
        }
    }
    assert!(ok >= 1);
    // Every caller succeeds when it retries, with the one volume.
    let v = d.create(req).await;
    let listed = zfs(&["list", "-H", "-o", "name", "-r", "tank"]);
    assert_eq!(listed.lines().filter(|l| l.contains(&name)).count(), 1);
    d.delete(&v.volume_id).await;
}

// ---- Creation cut short by a power loss --------------------------------------------------------
//
// `zfs create -o` and `zfs clone -o` make the dataset in one sync task and set its properties
// in a second; a power loss between them leaves the dataset without any. These tests make
// exactly that state by hand (the dataset, none of our properties) and retry CreateVolume.

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn leftovers_of_a_creation_cut_short_are_adopted_by_the_retry() {
    let d = driver().await;
    let name = unique("pvc-cut-fs");
    let id = format!("vms/{name}");
    zfs(&["create", &id]);
    let req = create_request(&name, "vms", mount_capability(""), 64 * MIB);
    let v = d.create(req.clone()).await;
    assert_eq!(v.volume_id, id);
    assert_eq!(zfs_get(&id, MARKER), (DRIVER_NAME.into(), "local".into()));
    assert_eq!(prop(&id, "zfs-csi.io:csi-name"), name);
    assert_eq!(zfs_get(&id, "mountpoint"), ("legacy".into(), "local".into()));
    assert_eq!(prop(&id, "refquota"), (64 * MIB).to_string());
    assert_eq!(prop(&id, "refreservation"), (64 * MIB).to_string());
    assert_eq!(d.create(req).await, v, "the next retry finds the volume");
    d.delete(&id).await;
    assert!(!dataset_exists(&id));

    // A zvol: volsize and volblocksize come with the first sync task, the reservation with
    // the second.
    let name = unique("pvc-cut-zvol");
    let id = format!("tank/{name}");
    zfs(&["create", "-s", "-V", "64M", "-o", "volblocksize=64k", &id]);
    let mut req = create_request(&name, "tank", block_capability(), 64 * MIB);
    req.parameters.insert("volblocksize".into(), "64k".into());
    let v = d.create(req).await;
    assert_eq!(zfs_get(&id, MARKER), (DRIVER_NAME.into(), "local".into()));
    assert!(prop(&id, "refreservation").parse::<i64>().unwrap() >= 64 * MIB, "thick, as asked");
    assert_eq!(v.capacity_bytes, 64 * MIB);
    d.delete(&id).await;

    // A clone, whose origin is the requested snapshot; grown to the requested size.
    let source = d.create(create_request(&unique("pvc-cut-src"), "tank", block_capability(), 32 * MIB)).await;
    let snap = d.snapshot(&source.volume_id, &unique("snap-cut")).await;
    let name = unique("pvc-cut-clone");
    let id = format!("tank/{name}");
    zfs(&["clone", &snap.snapshot_id, &id]);
    let mut req = create_request(&name, "tank", block_capability(), 64 * MIB);
    req.volume_content_source = snapshot_source(&snap.snapshot_id);
    let v = d.create(req).await;
    assert_eq!(v.content_source, snapshot_source(&snap.snapshot_id));
    assert_eq!(zfs_get(&id, MARKER), (DRIVER_NAME.into(), "local".into()));
    assert_eq!(prop(&id, "volsize"), (64 * MIB).to_string());
    assert!(prop(&id, "refreservation").parse::<i64>().unwrap() >= 64 * MIB);
    d.delete(&id).await;
    d.delete_snapshot(&snap.snapshot_id).await;
    d.delete(&source.volume_id).await;
    assert!(!dataset_exists(&source.volume_id));
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn unmarked_datasets_that_no_interrupted_creation_leaves_are_not_adopted() {
    let d = driver().await;
    let source = d.create(create_request(&unique("pvc-nocut-src"), "ai", block_capability(), 32 * MIB)).await;
    let snap = d.snapshot(&source.volume_id, &unique("snap-nocut")).await;
    let other = format!("{}@operator", source.volume_id);
    zfs(&["snapshot", &other]);

    let refused = |name: &str, req: csi::CreateVolumeRequest, why: &'static str| {
        let id = format!("ai/{name}");
        let mut c = d.controller();
        async move {
            let message = expect_code(c.create_volume(req).await, Code::AlreadyExists);
            assert!(message.contains(why), "{message:?} does not say {why:?}");
            assert_eq!(prop(&id, MARKER), "-", "{id} was marked");
            zfs(&["destroy", "-r", &id]);
        }
    };
    // Data written to it.
    let name = unique("pvc-nocut-data");
    zfs(&["create", &format!("ai/{name}")]);
    write_incompressible(std::path::Path::new(&format!("/ai/{name}/data")), 4 << 20);
    refused(&name, create_request(&name, "ai", mount_capability(""), 64 * MIB), "written").await;
    // A snapshot of its own.
    let name = unique("pvc-nocut-snap");
    zfs(&["create", &format!("ai/{name}")]);
    zfs(&["snapshot", &format!("ai/{name}@s")]);
    refused(&name, create_request(&name, "ai", mount_capability(""), 64 * MIB), "snapshots").await;
    // A property the request does not give.
    let name = unique("pvc-nocut-prop");
    zfs(&["create", "-o", "compression=zstd", &format!("ai/{name}")]);
    refused(&name, create_request(&name, "ai", mount_capability(""), 64 * MIB), "compression=zstd").await;
    // A zvol of another size.
    let name = unique("pvc-nocut-size");
    zfs(&["create", "-s", "-V", "32M", &format!("ai/{name}")]);
    refused(&name, create_request(&name, "ai", block_capability(), 64 * MIB), "volsize").await;
    // A clone of another snapshot.
    let name = unique("pvc-nocut-origin");
    zfs(&["clone", &other, &format!("ai/{name}")]);
    let mut req = create_request(&name, "ai", block_capability(), 0);
    req.volume_content_source = snapshot_source(&snap.snapshot_id);
    refused(&name, req, "clone of").await;

    zfs(&["destroy", &other]);
    d.delete_snapshot(&snap.snapshot_id).await;
    d.delete(&source.volume_id).await;
}

// ---- DeleteVolume ------------------------------------------------------------------------

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn delete_is_idempotent_and_unknown_ids_succeed() {
    let d = driver().await;
    let v = d.create(create_request(&unique("pvc-del"), "ai", mount_capability(""), 32 * MIB)).await;
    d.delete(&v.volume_id).await;
    d.delete(&v.volume_id).await;
    d.delete("ai/never-existed").await;
    d.delete("reallyfakevolumeid").await;
    assert!(!dataset_exists(&v.volume_id));
}



// ---- Snapshots -----------------------------------------------------------------------------

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn snapshots_on_each_tier_are_ready_sized_like_their_volume_and_idempotent() {
    let d = driver().await;
    for pool in POOLS {
        for cap in [mount_capability(""), block_capability()] {
            let v = d.create(create_request(&unique("pvc-snap"), pool, cap, 48 * MIB)).await;
            let name = unique("snapshot");
            let s = d.snapshot(&v.volume_id, &name).await;
            assert_eq!(s.snapshot_id, format!("{}@{name}", v.volume_id));
            assert_eq!(s.source_volume_id, v.volume_id);
            assert!(s.ready_to_use);
            assert_eq!(s.size_bytes, v.capacity_bytes, "restoreSize must be the volume's size (CDI needs it)");
            assert!(s.creation_time.as_ref().unwrap().seconds > 0);
            assert_eq!(prop(&s.snapshot_id, MARKER), DRIVER_NAME);
            assert_eq!(d.snapshot(&v.volume_id, &name).await, s, "repeat returns the same snapshot");
            let got = d.controller().get_snapshot(csi::GetSnapshotRequest { snapshot_id: s.snapshot_id.clone(), ..Default::default() }).await.unwrap();
            assert_eq!(got.into_inner().snapshot.unwrap(), s);
            d.delete_snapshot(&s.snapshot_id).await;
            d.delete_snapshot(&s.snapshot_id).await;
            assert!(!dataset_exists(&s.snapshot_id));
            d.delete(&v.volume_id).await;
        }
    }
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn snapshot_errors_get_the_spec_codes() {
    let d = driver().await;
    let a = d.create(create_request(&unique("pvc-sa"), "vms", mount_capability(""), 32 * MIB)).await;
    let b = d.create(create_request(&unique("pvc-sb"), "vms", mount_capability(""), 32 * MIB)).await;
    let name = unique("snap-dup");
    let s = d.snapshot(&a.volume_id, &name).await;
    let mut c = d.controller();
    let req = |source: &str, name: &str| csi::CreateSnapshotRequest { source_volume_id: source.into(), name: name.into(), ..Default::default() };
    expect_code(c.create_snapshot(req(&b.volume_id, &name)).await, Code::AlreadyExists);
    expect_code(c.create_snapshot(req("", "x")).await, Code::InvalidArgument);
    expect_code(c.create_snapshot(req(&a.volume_id, "")).await, Code::InvalidArgument);
    expect_code(c.create_snapshot(req(&a.volume_id, "bad/name")).await, Code::InvalidArgument);
    expect_code(c.create_snapshot(req("vms/no-such-volume", "x")).await, Code::NotFound);
    expect_code(c.get_snapshot(csi::GetSnapshotRequest { snapshot_id: "vms/none@none".into(), ..Default::default() }).await, Code::NotFound);
    d.delete_snapshot("vms/none@none").await;
    d.delete_snapshot(&s.snapshot_id).await;
    d.delete(&a.volume_id).await;
    d.delete(&b.volume_id).await;
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn list_snapshots_filters_and_paginates_and_hides_what_is_not_ours() {
    let d = DriverProcess::start("ai").await;
    let v = d.create(create_request(&unique("pvc-ls"), "ai", mount_capability(""), 32 * MIB)).await;
    let other = d.create(create_request(&unique("pvc-ls"), "ai", mount_capability(""), 32 * MIB)).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(d.snapshot(&v.volume_id, &unique("snap-ls")).await.snapshot_id);
    }
    let theirs = d.snapshot(&other.volume_id, &unique("snap-ls")).await.snapshot_id;
    zfs(&["snapshot", &format!("{}@sanoid-hourly", v.volume_id)]);
    ids.sort();

    let by_source = listed_snapshot_ids(&d, csi::ListSnapshotsRequest { source_volume_id: v.volume_id.clone(), ..Default::default() }).await;
    assert_eq!(by_source, ids, "operator's (sanoid's) snapshot is not listed");
    let by_id = listed_snapshot_ids(&d, csi::ListSnapshotsRequest { snapshot_id: theirs.clone(), ..Default::default() }).await;
    assert_eq!(by_id, std::slice::from_ref(&theirs));
    let all = listed_snapshot_ids(&d, csi::ListSnapshotsRequest::default()).await;
    assert!(ids.iter().chain([&theirs]).all(|id| all.contains(id)));
    for missing in ["ai/none@none", "none-exist-id", "ai/../x@y"] {
        let none = listed_snapshot_ids(&d, csi::ListSnapshotsRequest { snapshot_id: missing.into(), ..Default::default() }).await;
        assert!(none.is_empty(), "{missing}: {none:?}");
    }

    let mut c = d.controller();
    let mut paged = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .list_snapshots(csi::ListSnapshotsRequest { source_volume_id: v.volume_id.clone(), max_entries: 2, starting_token: token, ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        assert!(page.entries.len() <= 2);
        paged.extend(page.entries.into_iter().map(|e| e.snapshot.unwrap().snapshot_id));
        if page.next_token.is_empty() {
            break;
        }
        token = page.next_token;
    }
    assert_eq!(paged, ids);
    expect_code(c.list_snapshots(csi::ListSnapshotsRequest { starting_token: "999".into(), ..Default::default() }).await, Code::Aborted);
    expect_code(c.list_snapshots(csi::ListSnapshotsRequest { starting_token: "after:".into(), ..Default::default() }).await, Code::Aborted);

    zfs(&["destroy", &format!("{}@sanoid-hourly", v.volume_id)]);
    for id in ids.iter().chain([&theirs]) {
        d.delete_snapshot(id).await;
    }
    d.delete(&v.volume_id).await;
    d.delete(&other.volume_id).await;
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn create_snapshot_skips_parents_missing_on_this_node() {
    // The manifests let a node lack some of --parents.
    let absent = format!("vms/{}", unique("absent"));
    let d = DriverProcess::start(&format!("vms,nosuchpool,{absent}")).await;
    let v = d.create(create_request(&unique("pvc-skip"), "vms", mount_capability(""), 32 * MIB)).await;
    let name = unique("snap-skip");
    let s = d.snapshot(&v.volume_id, &name).await;
    assert_eq!(d.snapshot(&v.volume_id, &name).await, s);
    assert!(listed_snapshot_ids(&d, csi::ListSnapshotsRequest::default()).await.contains(&s.snapshot_id));
    assert!(listed_volume_ids(&d).await.contains(&v.volume_id));
    let mut c = d.controller();
    for parent in ["nosuchpool", absent.as_str()] {
        let got = c
            .get_capacity(csi::GetCapacityRequest { parameters: params(&[("poolname", parent)]), ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.available_capacity, 0, "{parent}");
    }
    d.delete_snapshot(&s.snapshot_id).await;
    d.delete(&v.volume_id).await;
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn create_snapshot_retry_after_its_source_was_deleted_returns_the_snapshot() {
    let d = driver().await;
    let v = d.create(create_request(&unique("pvc-retry"), "tank", mount_capability(""), 32 * MIB)).await;
    let name = unique("snap-retry");
    let s = d.snapshot(&v.volume_id, &name).await;
    // The reply was lost; meanwhile the source was deleted, and is kept hidden for the snapshot.
    d.delete(&v.volume_id).await;
    assert!(dataset_exists(&v.volume_id));
    assert_eq!(d.snapshot(&v.volume_id, &name).await, s, "the retry gets the snapshot it made");
    let req = csi::CreateSnapshotRequest { source_volume_id: v.volume_id.clone(), name: unique("snap-new"), ..Default::default() };
    expect_code(d.controller().create_snapshot(req).await, Code::NotFound);
    d.delete_snapshot(&s.snapshot_id).await;
    assert!(!dataset_exists(&v.volume_id), "destroyed with its last snapshot");
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn create_snapshot_cost_does_not_grow_with_foreign_snapshots() {
    // Counted, not timed: every command the driver runs goes through a prefix that logs it.
    // CreateSnapshot must run the same commands with 2,000 foreign snapshots as without, and
    // none of them may read snapshots (or every dataset's properties) recursively.
    let parent = format!("tank/{}", unique("sanoid"));
    zfs(&["create", &parent]);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("commands.log");
    let wrapper = dir.path().join("log-command");
    std::fs::write(&wrapper, "log=$1; shift\nprintf '%s\\n' \"$*\" >> \"$log\"\nexec \"$@\"\n").unwrap();
    let prefix = format!("/bin/sh {} {}", wrapper.display(), log.display());
    let d = DriverProcess::start_with(&["--parents", &parent, "--command-prefix", &prefix]).await;
    let v = d.create(create_request(&unique("pvc-cost"), &parent, mount_capability(""), 32 * MIB)).await;
    let logged = || std::fs::read_to_string(&log).unwrap_or_default().lines().map(str::to_string).collect::<Vec<_>>();
    // The subcommands and flags of one CreateSnapshot's commands, names left out.
    let snapshot_commands = |round: &'static str| {
        let d = &d;
        let v = &v;
        async move {
            // The driver's start-up reaper pass runs beside the first calls: wait until the
            // log has been still for two seconds.
            let mut before = logged().len();
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                let now = logged().len();
                if now == before {
                    break;
                }
                before = now;
            }
            d.snapshot(&v.volume_id, &unique(round)).await;
            let commands: Vec<String> = logged().split_off(before);
            for command in &commands {
                let words: Vec<&str> = command.split_whitespace().collect();
                let recursive = words.contains(&"-r") || words.windows(2).any(|w| w[0] == "-t" && w[1].contains("snapshot"));
                assert!(!recursive, "CreateSnapshot read recursively: {command}");
            }
            commands
                .iter()
                .map(|c| c.split_whitespace().filter(|w| w.starts_with('-') || !w.contains('/')).take(3).collect::<Vec<_>>().join(" "))
                .collect::<Vec<_>>()
        }
    };
    let before = snapshot_commands("snap-before").await;
    // 2,000 snapshots the driver did not take, as sanoid keeps them: 40 of each of 49
    // operator's datasets and of the driver's volume. One `zfs snapshot` takes one of each
    // dataset at a time.
    let mut datasets: Vec<String> = (0..49).map(|i| format!("{parent}/media-{i:02}")).collect();
    for dataset in &datasets {
        zfs(&["create", dataset]);
    }
    datasets.push(v.volume_id.clone());
    for round in 0..40 {
        let snapshots: Vec<String> = datasets.iter().map(|d| format!("{d}@autosnap_{round:02}")).collect();
        let mut args = vec!["snapshot"];
        args.extend(snapshots.iter().map(String::as_str));
        zfs(&args);
    }
    let after = snapshot_commands("snap-after").await;
    assert!(!before.is_empty(), "the prefix logged no command");
    assert_eq!(after, before, "CreateSnapshot's commands changed with 2,000 foreign snapshots");
    drop(d);
    zfs(&["destroy", "-r", &parent]);
}

// ---- Clones -------------------------------------------------------------------------------

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn clones_from_snapshot_and_volume_are_instant_zfs_clones_and_can_grow() {
    let d = driver().await;
    for pool in POOLS {
        for cap in [mount_capability(""), block_capability()] {
            let source = d.create(create_request(&unique("pvc-src"), pool, cap.clone(), 64 * MIB)).await;
            let snap = d.snapshot(&source.volume_id, &unique("snap-src")).await;

            let mut req = create_request(&unique("pvc-from-snap"), pool, cap.clone(), 0);
            req.volume_content_source = snapshot_source(&snap.snapshot_id);
            let from_snap = d.create(req).await;
            assert_eq!(prop(&from_snap.volume_id, "origin"), snap.snapshot_id);
            assert_eq!(from_snap.capacity_bytes, 64 * MIB);
            assert_eq!(from_snap.content_source, snapshot_source(&snap.snapshot_id));
            assert_eq!(zfs_get(&from_snap.volume_id, "compression").1, format!("inherited from {pool}"));

            let mut req = create_request(&unique("pvc-from-vol"), pool, cap.clone(), 128 * MIB);
            req.volume_content_source = volume_source(&source.volume_id);
            let from_vol = d.create(req.clone()).await;
            assert!(prop(&from_vol.volume_id, "origin").starts_with(&format!("{}@", source.volume_id)));
            assert_eq!(from_vol.capacity_bytes, 128 * MIB, "a larger size is applied after cloning");
            let size_prop = if cap == block_capability() { "volsize" } else { "refquota" };
            assert_eq!(prop(&from_vol.volume_id, size_prop), (128 * MIB).to_string());
            assert_eq!(d.create(req).await, from_vol, "repeat returns the same clone");
            // The driver's own snapshot behind the volume clone is not the user's to see.
            let listed = listed_snapshot_ids(&d, csi::ListSnapshotsRequest { source_volume_id: source.volume_id.clone(), ..Default::default() }).await;
            assert_eq!(listed, std::slice::from_ref(&snap.snapshot_id));

            let internal = prop(&from_vol.volume_id, "origin");
            d.delete(&from_vol.volume_id).await;
            assert!(!dataset_exists(&internal), "the internal snapshot goes with its clone");
            d.delete(&from_snap.volume_id).await;
            d.delete_snapshot(&snap.snapshot_id).await;
            d.delete(&source.volume_id).await;
            assert!(!dataset_exists(&source.volume_id));
        }
    }
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn zvol_clones_keep_the_origins_volblocksize_and_are_rounded_to_it() {
    let d = driver().await;
    let class = |extra: &[(&str, &str)]| {
        let mut p = params(&[("poolname", "vms")]);
        p.extend(params(extra));
        p
    };
    let mut req = create_request(&unique("pvc-vbs"), "vms", block_capability(), 32 * MIB);
    req.parameters = class(&[("volblocksize", "64k")]);
    let source = d.create(req).await;
    assert_eq!(prop(&source.volume_id, "volblocksize"), "65536");
    let snap = d.snapshot(&source.volume_id, &unique("snap-vbs")).await;
    let mut clones = Vec::new();
    // Restore and clone with the class the source was made with (OpenEBS classes often set
    // volblocksize): equal values are fine.
    for content in [snapshot_source(&snap.snapshot_id), volume_source(&source.volume_id)] {
        let mut req = create_request(&unique("pvc-vbs-same"), "vms", block_capability(), 0);
        req.parameters = class(&[("volblocksize", "64k")]);
        req.volume_content_source = content;
        let v = d.create(req).await;
        assert_eq!(prop(&v.volume_id, "volblocksize"), "65536");
        assert_eq!(v.capacity_bytes, 32 * MIB);
        clones.push(v.volume_id);
    }
    // Without volblocksize in the class: the size is rounded to the origin's 64 KiB, which
    // the clone keeps, not to the 16 KiB a new zvol would get.
    let mut req = create_request(&unique("pvc-vbs-round"), "vms", block_capability(), 100 * MIB + 1);
    req.volume_content_source = snapshot_source(&snap.snapshot_id);
    let v = d.create(req.clone()).await;
    assert_eq!(v.capacity_bytes, 100 * MIB + 64 * 1024);
    assert_eq!(prop(&v.volume_id, "volsize"), (100 * MIB + 64 * 1024).to_string());
    assert_eq!(d.create(req).await, v, "the retry is the same clone");
    clones.push(v.volume_id);
    // Another volblocksize: refused, saying so, with nothing made.
    let mut req = create_request(&unique("pvc-vbs-other"), "vms", block_capability(), 0);
    req.parameters = class(&[("volblocksize", "16k")]);
    req.volume_content_source = snapshot_source(&snap.snapshot_id);
    let message = expect_code(d.controller().create_volume(req.clone()).await, Code::InvalidArgument);
    assert!(message.contains("volblocksize=16384") && message.contains("65536"), "{message}");
    assert!(!dataset_exists(&format!("vms/{}", req.name)));
    for id in clones {
        d.delete(&id).await;
    }
    d.delete_snapshot(&snap.snapshot_id).await;
    d.delete(&source.volume_id).await;
    assert!(!dataset_exists(&source.volume_id));
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn encrypted_volumes_restore_with_their_class_and_refuse_a_conflicting_one() {
    let d = driver().await;
    let key = format!("/tmp/{}.key", unique("zfs-csi"));
    std::fs::write(&key, format!("{}\n", "0123456789abcdef".repeat(4))).unwrap();
    let location = format!("file://{key}");
    let class = |extra: &[(&str, &str)]| {
        let mut p = params(&[("poolname", "ai")]);
        p.extend(params(extra));
        p
    };
    let encrypted = class(&[("encryption", "on"), ("keyformat", "hex"), ("keylocation", &location)]);
    let make = |source: Option<csi::VolumeContentSource>, parameters: std::collections::HashMap<String, String>| {
        let mut req = create_request(&unique("pvc-enc"), "ai", mount_capability(""), 32 * MIB);
        req.parameters = parameters;
        req.volume_content_source = source;
        req
    };
    let source = d.create(make(None, encrypted.clone())).await;
    assert_eq!(prop(&source.volume_id, "encryption"), "aes-256-gcm");
    assert_eq!(prop(&source.volume_id, "encryptionroot"), source.volume_id);
    let snap = d.snapshot(&source.volume_id, &unique("snap-enc")).await;
    // The class it was made with: a restore, a clone, and a clone of the restore (whose key
    // is its encryption root's); a class without encryption: encrypted all the same.
    let restored = d.create(make(snapshot_source(&snap.snapshot_id), encrypted.clone())).await;
    let cloned = d.create(make(volume_source(&source.volume_id), encrypted.clone())).await;
    let second = d.create(make(volume_source(&restored.volume_id), encrypted.clone())).await;
    let plain = d.create(make(snapshot_source(&snap.snapshot_id), class(&[]))).await;
    for v in [&restored, &cloned, &second, &plain] {
        assert_eq!(prop(&v.volume_id, "encryption"), "aes-256-gcm", "{}", v.volume_id);
        assert_eq!(prop(&v.volume_id, "encryptionroot"), source.volume_id);
    }
    // A class that contradicts the source: refused, naming the property.
    let other_key = class(&[("encryption", "on"), ("keyformat", "hex"), ("keylocation", "file:///tmp/other.key")]);
    for (parameters, property) in [(class(&[("encryption", "off")]), "encryption=off"), (other_key, "keylocation")] {
        let req = make(snapshot_source(&snap.snapshot_id), parameters);
        let message = expect_code(d.controller().create_volume(req.clone()).await, Code::InvalidArgument);
        assert!(message.contains(property), "{message}");
        assert!(!dataset_exists(&format!("ai/{}", req.name)));
    }
    for v in [&second, &cloned, &plain, &restored] {
        d.delete(&v.volume_id).await;
    }
    d.delete_snapshot(&snap.snapshot_id).await;
    d.delete(&source.volume_id).await;
    assert!(!dataset_exists(&source.volume_id));
    std::fs::remove_file(&key).unwrap();
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn thick_zvol_clones_reserve_their_size_like_a_thick_volume() {
    let d = driver().await;
    let reserved = |id: &str| prop(id, "refreservation").parse::<u64>().unwrap();
    let source = d.create(create_request(&unique("pvc-thick"), "tank", block_capability(), 32 * MIB)).await;
    let thick64 = d.create(create_request(&unique("pvc-thick64"), "tank", block_capability(), 64 * MIB)).await;
    let snap = d.snapshot(&source.volume_id, &unique("snap-thick")).await;
    let clone = |bytes: i64, thin: bool| {
        let mut req = create_request(&unique("pvc-thick-clone"), "tank", block_capability(), bytes);
        req.volume_content_source = snapshot_source(&snap.snapshot_id);
        if thin {
            req.parameters.insert("thinprovision".into(), "yes".into());
        }
        req
    };
    let same = d.create(clone(0, false)).await;
    assert_eq!(reserved(&same.volume_id), reserved(&source.volume_id), "as reserved as a thick volume of its size");
    let grown = d.create(clone(64 * MIB, false)).await;
    assert_eq!(reserved(&grown.volume_id), reserved(&thick64.volume_id));
    let thin = d.create(clone(0, true)).await;
    assert_eq!(reserved(&thin.volume_id), 0);
    for v in [&same, &grown, &thin, &thick64] {
        d.delete(&v.volume_id).await;
    }
    d.delete_snapshot(&snap.snapshot_id).await;
    d.delete(&source.volume_id).await;
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn clone_of_a_foreign_filesystem_larger_than_the_request_is_out_of_range() {
    let d = driver().await;
    let media = format!("ai/{}", unique("media"));
    zfs(&["create", &media]);
    write_incompressible(std::path::Path::new(&format!("/{media}/data")), 4 << 20);
    // ZFS itself answers "out of space" to a clone whose refquota is below what it
    // references: a message every retry would get again.
    let mut req = create_request(&unique("pvc-media"), "ai", mount_capability(""), 2 * MIB);
    req.volume_content_source = volume_source(&media);
    let message = expect_code(d.controller().create_volume(req.clone()).await, Code::OutOfRange);
    assert!(message.contains("references"), "{message}");
    assert!(!dataset_exists(&format!("ai/{}", req.name)));
    assert!(!dataset_exists(&format!("{media}@clone-{}", req.name)), "no snapshot taken for it");
    req.capacity_range = capacity(16 * MIB, 0);
    let v = d.create(req).await;
    d.delete(&v.volume_id).await;
    zfs(&["destroy", "-r", &media]);
}

// ---- Deletion with dependents ---------------------------------------------------------------

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn a_volume_with_a_snapshot_is_hidden_then_destroyed_with_its_last_snapshot() {
    let d = driver().await;
    let v = d.create(create_request(&unique("pvc-dep"), "ai", block_capability(), 32 * MIB)).await;
    let s = d.snapshot(&v.volume_id, &unique("snap-dep")).await;
    d.delete(&v.volume_id).await;
    assert!(dataset_exists(&v.volume_id) && dataset_exists(&s.snapshot_id), "the snapshot's data is kept");
    assert!(!listed_volume_ids(&d).await.contains(&v.volume_id), "a deleted volume is hidden");
    expect_code(d.controller().controller_get_volume(csi::ControllerGetVolumeRequest { volume_id: v.volume_id.clone() }).await, Code::NotFound);
    // The snapshot still restores.
    let mut req = create_request(&unique("pvc-restore"), "ai", block_capability(), 0);
    req.volume_content_source = snapshot_source(&s.snapshot_id);
    let restored = d.create(req).await;
    d.delete(&restored.volume_id).await;
    d.delete_snapshot(&s.snapshot_id).await;
    assert!(!dataset_exists(&s.snapshot_id) && !dataset_exists(&v.volume_id), "destroyed with its last snapshot");
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn a_snapshot_with_a_clone_is_hidden_then_destroyed_with_its_clone() {
    let d = driver().await;
    let v = d.create(create_request(&unique("pvc-sc"), "vms", mount_capability(""), 32 * MIB)).await;
    let s = d.snapshot(&v.volume_id, &unique("snap-sc")).await;
    let mut req = create_request(&unique("pvc-clone"), "vms", mount_capability(""), 0);
    req.volume_content_source = snapshot_source(&s.snapshot_id);
    let clone = d.create(req).await;
    d.delete_snapshot(&s.snapshot_id).await;
    assert!(dataset_exists(&s.snapshot_id), "kept for its clone");
    assert_eq!(prop(&s.snapshot_id, "defer_destroy"), "on");
    assert!(listed_snapshot_ids(&d, csi::ListSnapshotsRequest::default()).await.iter().all(|id| id != &s.snapshot_id));
    expect_code(d.controller().get_snapshot(csi::GetSnapshotRequest { snapshot_id: s.snapshot_id.clone(), ..Default::default() }).await, Code::NotFound);
    d.delete(&v.volume_id).await;
    assert!(dataset_exists(&v.volume_id), "the origin of a live clone stays");
    assert!(dataset_exists(&clone.volume_id));
    d.delete(&clone.volume_id).await;
    for gone in [&clone.volume_id, &s.snapshot_id, &v.volume_id] {
        assert!(!dataset_exists(gone), "{gone} left over");
    }
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn a_chain_of_clones_deleted_from_the_root_loses_nothing_and_leaves_nothing() {
    let d = driver().await;
    let a = d.create(create_request(&unique("pvc-a"), "tank", block_capability(), 32 * MIB)).await;
    let s1 = d.snapshot(&a.volume_id, &unique("snap-1")).await;
    let mut req = create_request(&unique("pvc-b"), "tank", block_capability(), 0);
    req.volume_content_source = snapshot_source(&s1.snapshot_id);
    let b = d.create(req).await;
    let mut req = create_request(&unique("pvc-c"), "tank", block_capability(), 0);
    req.volume_content_source = volume_source(&b.volume_id);
    let c = d.create(req).await;

    for id in [&a.volume_id, &b.volume_id] {
        d.delete(id).await;
    }
    d.delete_snapshot(&s1.snapshot_id).await;
    assert!(dataset_exists(&c.volume_id) && dataset_exists(&a.volume_id) && dataset_exists(&b.volume_id));
    assert_eq!(listed_volume_ids(&d).await.iter().filter(|id| [&a.volume_id, &b.volume_id].contains(id)).count(), 0);
    assert!(listed_volume_ids(&d).await.contains(&c.volume_id));

    d.delete(&c.volume_id).await;
    let leftovers = zfs(&["list", "-H", "-t", "all", "-o", "name", "-r", "tank"]);
    for id in [&a.volume_id, &b.volume_id, &c.volume_id] {
        assert!(!leftovers.contains(id.as_str()), "{id} left over:\n{leftovers}");
    }
}

// ---- Listing, capacity, validation --------------------------------------------------------

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn list_volumes_shows_only_the_drivers_volumes_and_paginates() {
    let d = DriverProcess::start("tank").await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(d.create(create_request(&unique("pvc-lv"), "tank", mount_capability(""), 32 * MIB)).await.volume_id);
    }
    let foreign = format!("tank/{}", unique("foreign"));
    zfs(&["create", &foreign]);
    let listed = listed_volume_ids(&d).await;
    assert!(ids.iter().all(|id| listed.contains(id)));
    assert!(!listed.contains(&foreign) && !listed.contains(&"tank".to_string()));

    let mut c = d.controller();
    let mut paged = Vec::new();
    let mut token = String::new();
    loop {
        let page = c.list_volumes(csi::ListVolumesRequest { max_entries: 1, starting_token: token }).await.unwrap().into_inner();
        assert!(page.entries.len() <= 1);
        for e in &page.entries {
            let condition = e.status.as_ref().and_then(|s| s.volume_condition.as_ref()).expect("condition");
            assert!(!condition.abnormal, "{condition:?}");
        }
        paged.extend(page.entries.into_iter().map(|e| e.volume.unwrap().volume_id));
        if page.next_token.is_empty() {
            break;
        }
        token = page.next_token;
    }
    // Other tests create and delete volumes meanwhile: every entry once, ours all there.
    let mut unique_ids = paged.clone();
    unique_ids.dedup();
    assert_eq!(unique_ids, paged, "an entry came back on two pages");
    let mut ours = ids.clone();
    ours.sort();
    assert_eq!(paged.iter().filter(|id| ids.contains(id)).cloned().collect::<Vec<_>>(), ours);
    expect_code(c.list_volumes(csi::ListVolumesRequest { max_entries: 1, starting_token: "bogus".into() }).await, Code::Aborted);
    zfs(&["destroy", &foreign]);
    for id in ids {
        d.delete(&id).await;
    }
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn get_capacity_reports_the_parents_free_space_in_this_nodes_topology() {
    let d = driver().await;
    let mut c = d.controller();
    for pool in POOLS {
        let got = c
            .get_capacity(csi::GetCapacityRequest { parameters: params(&[("poolname", pool)]), ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        let available: i64 = prop(pool, "available").parse().unwrap();
        // Other tests run alongside: allow them 256 MiB of movement.
        assert!((got.available_capacity - available).abs() < 256 * MIB, "{pool}: {} vs {available}", got.available_capacity);
        assert_eq!(got.maximum_volume_size, Some(got.available_capacity));
    }
    let here = csi::Topology { segments: [("zfs-csi.io/node".to_string(), NODE_ID.to_string())].into() };
    let elsewhere = csi::Topology { segments: [("zfs-csi.io/node".to_string(), "other".to_string())].into() };
    let at = |t: csi::Topology| csi::GetCapacityRequest { parameters: params(&[("poolname", "vms")]), accessible_topology: Some(t), ..Default::default() };
    assert!(c.get_capacity(at(here)).await.unwrap().into_inner().available_capacity > 0);
    assert_eq!(c.get_capacity(at(elsewhere)).await.unwrap().into_inner().available_capacity, 0);
    // A quota on a parent dataset is honoured.
    let parent = format!("tank/{}", unique("quota"));
    zfs(&["create", "-o", "quota=100M", &parent]);
    let got = c.get_capacity(csi::GetCapacityRequest { parameters: params(&[("poolname", &parent)]), ..Default::default() }).await.unwrap();
    assert!(got.into_inner().available_capacity <= 100 * MIB);
    zfs(&["destroy", &parent]);
    expect_code(c.get_capacity(csi::GetCapacityRequest { parameters: params(&[("bogus", "1")]), ..Default::default() }).await, Code::InvalidArgument);
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn sizes_below_the_minimum_volume_size_are_raised_to_it_and_get_capacity_reports_it() {
    let d = driver().await;
    for (cap, size_prop) in [(mount_capability(""), "refquota"), (block_capability(), "volsize")] {
        // A refquota of 1 byte: ZFS answers "out of space", a retry never helps.
        let v = d.create(create_request(&unique("pvc-tiny"), "ai", cap, 1)).await;
        assert_eq!(v.capacity_bytes, MIB);
        assert_eq!(prop(&v.volume_id, size_prop), MIB.to_string());
        d.delete(&v.volume_id).await;
    }
    let mut req = create_request(&unique("pvc-tiny"), "ai", mount_capability(""), 1);
    req.capacity_range = capacity(1, 4096);
    let message = expect_code(d.controller().create_volume(req).await, Code::OutOfRange);
    assert!(message.contains("minimum"), "{message}");
    let mut c = d.controller();
    let minimum = |pairs: &[(&str, &str)]| csi::GetCapacityRequest { parameters: params(pairs), ..Default::default() };
    let got = c.get_capacity(minimum(&[("poolname", "ai")])).await.unwrap().into_inner();
    assert_eq!(got.minimum_volume_size, Some(MIB));
    let got = c.get_capacity(minimum(&[("poolname", "ai"), ("volblocksize", "16M")])).await.unwrap().into_inner();
    assert_eq!(got.minimum_volume_size, Some(16 * MIB));
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn validate_volume_capabilities_confirms_what_fits_and_not_found_otherwise() {
    let d = driver().await;
    let fs = d.create(create_request(&unique("pvc-vvc"), "vms", mount_capability(""), 32 * MIB)).await;
    let zvol = d.create(create_request(&unique("pvc-vvc"), "vms", block_capability(), 32 * MIB)).await;
    let mut c = d.controller();
    let validate = |id: &str, cap: csi::VolumeCapability| csi::ValidateVolumeCapabilitiesRequest {
        volume_id: id.into(),
        volume_capabilities: vec![cap],
        ..Default::default()
    };
    assert!(c.validate_volume_capabilities(validate(&fs.volume_id, mount_capability(""))).await.unwrap().into_inner().confirmed.is_some());
    assert!(c.validate_volume_capabilities(validate(&zvol.volume_id, block_capability())).await.unwrap().into_inner().confirmed.is_some());
    assert!(c.validate_volume_capabilities(validate(&zvol.volume_id, mount_capability("ext4"))).await.unwrap().into_inner().confirmed.is_some());
    let refused = c.validate_volume_capabilities(validate(&fs.volume_id, block_capability())).await.unwrap().into_inner();
    assert!(refused.confirmed.is_none() && !refused.message.is_empty());
    expect_code(c.validate_volume_capabilities(validate("vms/none", mount_capability(""))).await, Code::NotFound);
    expect_code(c.validate_volume_capabilities(validate("", mount_capability(""))).await, Code::InvalidArgument);
    expect_code(
        c.validate_volume_capabilities(csi::ValidateVolumeCapabilitiesRequest { volume_id: fs.volume_id.clone(), ..Default::default() }).await,
        Code::InvalidArgument,
    );
    d.delete(&fs.volume_id).await;
    d.delete(&zvol.volume_id).await;
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn controller_get_volume_reports_the_volume_and_a_normal_condition() {
    let d = driver().await;
    let v = d.create(create_request(&unique("pvc-get"), "ai", mount_capability(""), 32 * MIB)).await;
    let got = d.controller().controller_get_volume(csi::ControllerGetVolumeRequest { volume_id: v.volume_id.clone() }).await.unwrap().into_inner();
    assert_eq!(got.volume.unwrap(), v);
    let condition = got.status.unwrap().volume_condition.unwrap();
    assert!(!condition.abnormal, "{condition:?}");
    expect_code(d.controller().controller_get_volume(csi::ControllerGetVolumeRequest { volume_id: "ai/none".into() }).await, Code::NotFound);
    d.delete(&v.volume_id).await;
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn controller_capabilities_leave_expansion_to_the_node() {
    use csi::controller_service_capability::rpc::Type;
    let d = driver().await;
    let caps = d.controller().controller_get_capabilities(csi::ControllerGetCapabilitiesRequest {}).await.unwrap().into_inner();
    let types: Vec<i32> = caps
        .capabilities
        .into_iter()
        .map(|c| match c.r#type.unwrap() {
            csi::controller_service_capability::Type::Rpc(r) => r.r#type,
        })
        .collect();
    for t in [Type::CreateDeleteVolume, Type::CreateDeleteSnapshot, Type::CloneVolume, Type::ListVolumes, Type::ListSnapshots, Type::GetCapacity, Type::GetVolume] {
        assert!(types.contains(&(t as i32)), "{t:?} missing");
    }
    assert!(!types.contains(&(Type::ExpandVolume as i32)));
    assert!(!types.contains(&(Type::PublishUnpublishVolume as i32)));
}

//! Requests that must leave ZFS exactly as it was: refused creations, hostile IDs, datasets the
//! driver did not create. Each compares the machine's whole `zfs list` before and after, so
//! this binary runs alone and single-threaded in the VM (hack/vm/run-tests.sh).

use tonic::Code;
use zfs_csi_tests::*;

async fn driver() -> DriverProcess {
    DriverProcess::start("ai,vms,tank").await
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn bad_create_requests_get_the_spec_codes_and_create_nothing() {
    let d = driver().await;
    let before = zfs_inventory();
    let name = unique("pvc-bad");
    let ok = create_request(&name, "vms", mount_capability(""), 64 * MIB);
    let mut c = d.controller();
    let cases: Vec<(csi::CreateVolumeRequest, Code, &str)> = vec![
        (csi::CreateVolumeRequest { name: String::new(), ..ok.clone() }, Code::InvalidArgument, "name"),
        (csi::CreateVolumeRequest { volume_capabilities: vec![], ..ok.clone() }, Code::InvalidArgument, "volume_capabilities"),
        (csi::CreateVolumeRequest { name: "a/b".into(), ..ok.clone() }, Code::InvalidArgument, "name"),
        (csi::CreateVolumeRequest { name: "../x".into(), ..ok.clone() }, Code::InvalidArgument, "name"),
        (csi::CreateVolumeRequest { capacity_range: capacity(2 * GIB, GIB), ..ok.clone() }, Code::InvalidArgument, "limit"),
        (csi::CreateVolumeRequest { capacity_range: capacity(-1, 0), ..ok.clone() }, Code::InvalidArgument, "negative"),
        (
            csi::CreateVolumeRequest { volume_capabilities: vec![block_capability()], capacity_range: capacity(1000, 2000), ..ok.clone() },
            Code::OutOfRange,
            "limit",
        ),
        (
            csi::CreateVolumeRequest { capacity_range: capacity(100 * GIB, 0), ..ok.clone() },
            Code::ResourceExhausted,
            "space",
        ),
        (
            csi::CreateVolumeRequest { parameters: params(&[("poolname", "vms"), ("compresion", "lz4")]), ..ok.clone() },
            Code::InvalidArgument,
            "compresion",
        ),
        (
            csi::CreateVolumeRequest { parameters: params(&[("poolname", "otherpool")]), ..ok.clone() },
            Code::InvalidArgument,
            "otherpool",
        ),
        (
            csi::CreateVolumeRequest { parameters: params(&[("poolname", "vms/no-such-parent")]), ..ok.clone() },
            Code::InvalidArgument,
            "no-such-parent",
        ),
        (
            csi::CreateVolumeRequest {
                volume_capabilities: vec![with_mode(mount_capability(""), csi::volume_capability::access_mode::Mode::MultiNodeMultiWriter)],
                ..ok.clone()
            },
            Code::InvalidArgument,
            "MULTI_NODE",
        ),
        (
            csi::CreateVolumeRequest { volume_capabilities: vec![mount_capability("ntfs")], ..ok.clone() },
            Code::InvalidArgument,
            "ntfs",
        ),
        (
            csi::CreateVolumeRequest {
                accessibility_requirements: Some(csi::TopologyRequirement {
                    requisite: vec![csi::Topology { segments: [("zfs-csi.io/node".to_string(), "other-node".to_string())].into() }],
                    preferred: vec![],
                }),
                ..ok.clone()
            },
            Code::ResourceExhausted,
            "topology",
        ),
        (
            csi::CreateVolumeRequest { volume_content_source: snapshot_source("vms/none@none"), ..ok.clone() },
            Code::NotFound,
            "vms/none@none",
        ),
        (
            // Placed on this node by the provisioner, the source elsewhere: back to the scheduler.
            csi::CreateVolumeRequest {
                volume_content_source: snapshot_source("vms/none@none"),
                accessibility_requirements: Some(csi::TopologyRequirement {
                    requisite: vec![csi::Topology { segments: [("zfs-csi.io/node".to_string(), NODE_ID.to_string())].into() }],
                    preferred: vec![],
                }),
                ..ok.clone()
            },
            Code::ResourceExhausted,
            "made on the node that holds its source",
        ),
        (
            csi::CreateVolumeRequest { volume_content_source: volume_source("vms/none"), ..ok.clone() },
            Code::NotFound,
            "vms/none",
        ),
        (
            csi::CreateVolumeRequest { volume_content_source: snapshot_source("vms/../x@y"), ..ok.clone() },
            Code::NotFound,
            "vms/../x@y",
        ),
    ];
    for (req, code, mention) in cases {
        let message = expect_code(c.create_volume(req.clone()).await, code);
        assert!(message.contains(mention), "{code:?}: {message:?} does not mention {mention:?}");
    }
    assert_eq!(zfs_inventory(), before, "a refused request changed ZFS");
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn datasets_the_driver_did_not_create_are_never_destroyed() {
    let d = DriverProcess::start("ai,vms").await;
    // A static import such as vms/HomeAssistant, an operator's dataset, a pool root, a
    // configured parent, and a dataset outside the parents.
    let import = format!("vms/{}", unique("HomeAssistant"));
    zfs(&["create", "-s", "-V", "64M", &import]);
    let operator = format!("ai/{}", unique("operator"));
    zfs(&["create", &operator]);
    let outside = format!("tank/{}", unique("outside"));
    zfs(&["create", &outside]);
    let before = zfs_inventory();
    for id in [import.as_str(), operator.as_str(), "vms", "ai", outside.as_str(), "tank"] {
        d.delete(id).await;
    }
    assert_eq!(zfs_inventory(), before);
    for name in [&import, &operator, &outside] {
        zfs(&["destroy", name]);
    }
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn hostile_ids_touch_nothing() {
    let d = driver().await;
    let victim = d.create(create_request(&unique("pvc-victim"), "vms", mount_capability(""), 32 * MIB)).await;
    let snap = d.snapshot(&victim.volume_id, &unique("snap-victim")).await;
    let before = zfs_inventory();
    let hostile = [
        "../vms", "/vms/x", "vms/../tank", "vms/./x", "vms//x", "vms/x y", "vms/$(reboot)", "vms/x;zfs destroy -r vms",
        "-r vms", "vms/\nx", "vms@x", "@x", "vms/x@y@z", "vms/%x", &format!("{}@../x", victim.volume_id),
    ];
    let mut c = d.controller();
    for id in hostile {
        let r = c.delete_volume(csi::DeleteVolumeRequest { volume_id: id.into(), ..Default::default() }).await;
        assert!(matches!(&r, Err(s) if s.code() == Code::InvalidArgument) || r.is_ok(), "DeleteVolume {id:?}: {r:?}");
        let r = c.delete_snapshot(csi::DeleteSnapshotRequest { snapshot_id: id.into(), ..Default::default() }).await;
        assert!(matches!(&r, Err(s) if s.code() == Code::InvalidArgument) || r.is_ok(), "DeleteSnapshot {id:?}: {r:?}");
        let r = c.create_snapshot(csi::CreateSnapshotRequest { source_volume_id: id.into(), name: "x".into(), ..Default::default() }).await;
        assert!(matches!(&r, Err(s) if matches!(s.code(), Code::InvalidArgument | Code::NotFound)), "CreateSnapshot {id:?}: {r:?}");
        let r = c.controller_get_volume(csi::ControllerGetVolumeRequest { volume_id: id.into() }).await;
        assert!(matches!(&r, Err(s) if matches!(s.code(), Code::InvalidArgument | Code::NotFound)), "ControllerGetVolume {id:?}: {r:?}");
        let r = c
            .create_volume(csi::CreateVolumeRequest {
                volume_content_source: volume_source(id),
                ..create_request(&unique("pvc-h"), "vms", mount_capability(""), 32 * MIB)
            })
            .await;
        assert!(matches!(&r, Err(s) if matches!(s.code(), Code::InvalidArgument | Code::NotFound)), "clone of {id:?}: {r:?}");
    }
    // Pool roots and parents are never snapshotted either.
    for root in ["vms", "ai", "tank"] {
        let r = c.create_snapshot(csi::CreateSnapshotRequest { source_volume_id: root.into(), name: "x".into(), ..Default::default() }).await;
        expect_code(r, Code::NotFound);
    }
    assert_eq!(zfs_inventory(), before, "hostile input changed ZFS");
    d.delete_snapshot(&snap.snapshot_id).await;
    d.delete(&victim.volume_id).await;
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn clone_errors_get_the_spec_codes() {
    let d = driver().await;
    let source = d.create(create_request(&unique("pvc-csrc"), "vms", mount_capability(""), 64 * MIB)).await;
    let snap = d.snapshot(&source.volume_id, &unique("snap-c")).await;
    let before = zfs_inventory();
    let mut c = d.controller();
    let mut smaller = create_request(&unique("pvc-small"), "vms", mount_capability(""), 32 * MIB);
    smaller.volume_content_source = snapshot_source(&snap.snapshot_id);
    expect_code(c.create_volume(smaller).await, Code::OutOfRange);
    let mut other_pool = create_request(&unique("pvc-other"), "tank", mount_capability(""), 64 * MIB);
    other_pool.volume_content_source = snapshot_source(&snap.snapshot_id);
    expect_code(c.create_volume(other_pool).await, Code::InvalidArgument);
    let mut other_pool = create_request(&unique("pvc-other"), "ai", mount_capability(""), 64 * MIB);
    other_pool.volume_content_source = volume_source(&source.volume_id);
    expect_code(c.create_volume(other_pool).await, Code::InvalidArgument);
    let mut wrong_kind = create_request(&unique("pvc-kind"), "vms", block_capability(), 64 * MIB);
    wrong_kind.volume_content_source = snapshot_source(&snap.snapshot_id);
    expect_code(c.create_volume(wrong_kind).await, Code::InvalidArgument);
    assert_eq!(zfs_inventory(), before);
    d.delete_snapshot(&snap.snapshot_id).await;
    d.delete(&source.volume_id).await;
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn a_clone_that_fails_after_zfs_clone_leaves_nothing_behind() {
    let d = driver().await;
    let source = d.create(create_request(&unique("pvc-half"), "tank", block_capability(), 32 * MIB)).await;
    let snap = d.snapshot(&source.volume_id, &unique("snap-half")).await;
    let before = zfs_inventory();
    // A thick zvol clone larger than the pool: `zfs clone` succeeds, growing it cannot.
    for content in [snapshot_source(&snap.snapshot_id), volume_source(&source.volume_id)] {
        let mut req = create_request(&unique("pvc-half-clone"), "tank", block_capability(), 100 * GIB);
        req.volume_content_source = content;
        expect_code(d.controller().create_volume(req).await, Code::ResourceExhausted);
        assert_eq!(zfs_inventory(), before, "the half-made clone, or the snapshot taken for it, was left behind");
    }
    d.delete_snapshot(&snap.snapshot_id).await;
    d.delete(&source.volume_id).await;
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn snapshots_the_driver_did_not_take_are_not_served_or_cloned() {
    let d = driver().await;
    let v = d.create(create_request(&unique("pvc-theirs"), "vms", block_capability(), 32 * MIB)).await;
    let import = format!("vms/{}", unique("HomeAssistant"));
    zfs(&["create", "-s", "-V", "32M", &import]);
    let theirs = [format!("{}@autosnap_hourly", v.volume_id), format!("{import}@autosnap_hourly")];
    for snapshot in &theirs {
        zfs(&["snapshot", snapshot]);
    }
    let before = zfs_inventory();
    let mut c = d.controller();
    for snapshot in &theirs {
        let get = csi::GetSnapshotRequest { snapshot_id: snapshot.clone(), ..Default::default() };
        expect_code(c.get_snapshot(get).await, Code::NotFound);
        let list = csi::ListSnapshotsRequest { snapshot_id: snapshot.clone(), ..Default::default() };
        assert!(c.list_snapshots(list).await.unwrap().into_inner().entries.is_empty(), "{snapshot} listed");
        let mut req = create_request(&unique("pvc-from-theirs"), "vms", block_capability(), 0);
        req.volume_content_source = snapshot_source(snapshot);
        let message = expect_code(c.create_volume(req).await, Code::InvalidArgument);
        assert!(message.contains("not taken by this driver"), "{message}");
    }
    assert_eq!(zfs_inventory(), before);
    for snapshot in &theirs {
        zfs(&["destroy", snapshot]);
    }
    zfs(&["destroy", &import]);
    d.delete(&v.volume_id).await;
}

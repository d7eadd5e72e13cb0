//! The Prometheus endpoint against real ZFS: scraped while volumes are created, written,
//! snapshotted and deleted, its values checked against `zfs get`; RPC counts by code; pool
//! health and the volume condition on a mirror pool with a disk taken offline and back.

use std::io::{Read, Write};
use std::net::TcpStream;

use zfs_csi_tests::*;

/// A free TCP port on the loopback (bound, then released for the driver to take).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts a driver serving metrics with no caching, so each scrape reads ZFS anew.
async fn driver_with_metrics(parents: &str) -> (DriverProcess, String) {
    let address = format!("127.0.0.1:{}", free_port());
    let d = DriverProcess::start_with(&["--parents", parents, "--metrics-address", &address, "--metrics-cache-seconds", "0"]).await;
    (d, address)
}

/// GET `path` over plain HTTP/1.1: the status line and the body.
fn http_get(address: &str, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(address).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {address}\r\nAccept: text/plain\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    (head.lines().next().unwrap_or_default().to_string(), body.to_string())
}

fn scrape(address: &str) -> String {
    let (status, body) = http_get(address, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    body
}

/// The value of the sample `name{labels…}` whose labels include all of `with`.
fn sample(body: &str, name: &str, with: &[(&str, &str)]) -> Option<f64> {
    body.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, labels) = series.split_once('{').unwrap_or((series, "}"));
        if metric != name {
            return None;
        }
        let labels = labels.strip_suffix('}')?;
        with.iter()
            .all(|(k, v)| labels.split(',').any(|pair| pair == format!("{k}=\"{v}\"")))
            .then(|| value.parse().ok())?
    })
}

fn zfs_number(dataset: &str, property: &str) -> f64 {
    let value = zfs(&["get", "-H", "-p", "-o", "value", property, dataset]);
    value.trim().trim_end_matches('x').parse().unwrap_or_else(|e| panic!("{property} of {dataset}: {value:?}: {e}"))
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn volume_gauges_match_zfs_get_and_rpcs_are_counted_by_code() {
    let (d, address) = driver_with_metrics("vms,tank").await;
    let mut req = create_request(&unique("pvc-metrics"), "vms", block_capability(), 64 * MIB);
    req.parameters.insert("csi.storage.k8s.io/pvc/name".into(), "vm-disk".into());
    req.parameters.insert("csi.storage.k8s.io/pvc/namespace".into(), "homelab".into());
    req.parameters.insert("csi.storage.k8s.io/pv/name".into(), "pv-metrics".into());
    let zvol = d.create(req).await;
    let dataset = d.create(create_request(&unique("pvc-metrics-fs"), "tank", mount_capability(""), 64 * MIB)).await;
    // Compressible data through the zvol's device, as a VM writes it, then synced so that
    // the space figures stay still while both sides read them.
    let device = wait_for_zvol_link(&zvol.volume_id);
    let text: Vec<u8> = b"zfs-csi metrics test line, compressible by lz4\n".iter().copied().cycle().take(8 << 20).collect();
    std::fs::OpenOptions::new().write(true).open(&device).unwrap().write_all(&text).unwrap();
    run("sync", &[]).unwrap();
    run("zpool", &["sync", "vms"]).unwrap();
    let s1 = d.snapshot(&zvol.volume_id, &unique("snap-m1")).await;
    let s2 = d.snapshot(&zvol.volume_id, &unique("snap-m2")).await;
    zfs(&["snapshot", &format!("{}@operator", zvol.volume_id)]);
    // Two refused requests: counted under their code.
    for _ in 0..2 {
        let refused = d.controller().create_volume(csi::CreateVolumeRequest::default()).await;
        assert_eq!(refused.unwrap_err().code(), tonic::Code::InvalidArgument);
    }

    let body = scrape(&address);
    let volume = [("dataset", zvol.volume_id.as_str())];
    for (metric, property) in [
        ("zfs_csi_volume_used_bytes", "used"),
        ("zfs_csi_volume_logical_used_bytes", "logicalused"),
        ("zfs_csi_volume_referenced_bytes", "referenced"),
        ("zfs_csi_volume_compression_ratio", "compressratio"),
        ("zfs_csi_volume_capacity_bytes", "volsize"),
    ] {
        let exported = sample(&body, metric, &volume).unwrap_or_else(|| panic!("no {metric} for {}:\n{body}", zvol.volume_id));
        assert_eq!(exported, zfs_number(&zvol.volume_id, property), "{metric}");
    }
    // Free space moves with ZFS's asynchronous frees of other tests' volumes: close, not equal.
    let available = sample(&body, "zfs_csi_volume_available_bytes", &volume).expect("available");
    let expected = zfs_number(&zvol.volume_id, "available");
    assert!((available - expected).abs() <= expected * 0.02, "available {available}, zfs get {expected}");
    assert!(sample(&body, "zfs_csi_volume_compression_ratio", &volume).unwrap() > 2.0, "lz4 compresses the text");
    assert_eq!(sample(&body, "zfs_csi_volume_snapshots", &volume), Some(3.0), "two CSI snapshots and the operator's");
    let labelled = [("dataset", zvol.volume_id.as_str()), ("pvc_namespace", "homelab"), ("pvc_name", "vm-disk"), ("pv_name", "pv-metrics"), ("kind", "zvol")];
    assert!(sample(&body, "zfs_csi_volume_used_bytes", &labelled).is_some(), "PVC labels:\n{body}");
    assert_eq!(
        sample(&body, "zfs_csi_volume_capacity_bytes", &[("dataset", dataset.volume_id.as_str()), ("kind", "filesystem")]),
        Some(zfs_number(&dataset.volume_id, "refquota"))
    );
    let rpc = |method: &str, code: &str| {
        sample(&body, "csi_plugin_operations_seconds_count", &[("driver_name", "zfs-csi.io"), ("method_name", method), ("grpc_status_code", code)])
    };
    assert_eq!(rpc("/csi.v1.Controller/CreateVolume", "OK"), Some(2.0));
    assert_eq!(rpc("/csi.v1.Controller/CreateVolume", "InvalidArgument"), Some(2.0));
    assert_eq!(rpc("/csi.v1.Controller/CreateSnapshot", "OK"), Some(2.0));
    assert!(sample(&body, "zfs_csi_command_seconds_count", &[("command", "zfs create")]).unwrap() >= 2.0);
    assert_eq!(sample(&body, "zfs_csi_pool_health", &[("pool", "vms"), ("state", "ONLINE")]), Some(1.0));
    let pool_size = run("zpool", &["list", "-H", "-p", "-o", "size", "vms"]).unwrap();
    assert_eq!(sample(&body, "zfs_csi_pool_size_bytes", &[("pool", "vms")]), Some(pool_size.trim().parse().unwrap()));
    assert!(sample(&body, "process_resident_memory_bytes", &[]).unwrap() > 0.0);

    // Deleted with its snapshots still there: pending, and no longer a volume.
    d.delete(&zvol.volume_id).await;
    let body = scrape(&address);
    assert_eq!(sample(&body, "zfs_csi_volumes_pending_deletion", &[("pool", "vms")]), Some(1.0), "{body}");
    assert_eq!(sample(&body, "zfs_csi_volume_used_bytes", &volume), None);
    zfs(&["destroy", &format!("{}@operator", zvol.volume_id)]);
    d.delete_snapshot(&s1.snapshot_id).await;
    d.delete_snapshot(&s2.snapshot_id).await;
    assert!(!dataset_exists(&zvol.volume_id));
    let body = scrape(&address);
    assert_eq!(sample(&body, "zfs_csi_volumes_pending_deletion", &[("pool", "vms")]), Some(0.0));
    assert_eq!(rpc_count(&body, "/csi.v1.Controller/DeleteVolume", "OK"), Some(1.0));
    d.delete(&dataset.volume_id).await;
    let (status, _) = http_get(&address, "/other");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
}

fn rpc_count(body: &str, method: &str, code: &str) -> Option<f64> {
    sample(body, "csi_plugin_operations_seconds_count", &[("method_name", method), ("grpc_status_code", code)])
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn a_degraded_mirror_shows_in_pool_health_and_volume_condition_until_it_is_back_online() {
    // A mirror of two files, so that one side can be taken offline.
    let scratch = tempfile::tempdir().unwrap();
    // Pool names must not begin with a vdev type word ("mirror", "raidz", "spare"…).
    let pool = unique("degraded").replace('-', "");
    let disks: Vec<String> = ["a", "b"].iter().map(|d| scratch.path().join(d).display().to_string()).collect();
    for disk in &disks {
        run("truncate", &["-s", "128M", disk]).unwrap();
    }
    run("zpool", &["create", "-f", "-O", "compression=lz4", &pool, "mirror", &disks[0], &disks[1]]).unwrap();
    struct DestroyPool(String);
    impl Drop for DestroyPool {
        fn drop(&mut self) {
            let _ = run("zpool", &["destroy", "-f", &self.0]);
        }
    }
    let _cleanup = DestroyPool(pool.clone());
    let (d, address) = driver_with_metrics(&pool).await;
    let v = d.create(create_request(&unique("pvc-mirror"), &pool, mount_capability(""), 32 * MIB)).await;
    let condition = |d: &DriverProcess| {
        let mut c = d.controller();
        let id = v.volume_id.clone();
        async move {
            let got = c.controller_get_volume(csi::ControllerGetVolumeRequest { volume_id: id }).await.unwrap().into_inner();
            got.status.unwrap().volume_condition.unwrap()
        }
    };
    let healthy = condition(&d).await;
    assert!(!healthy.abnormal, "{}", healthy.message);
    assert_eq!(sample(&scrape(&address), "zfs_csi_pool_health", &[("pool", &pool), ("state", "ONLINE")]), Some(1.0));

    run("zpool", &["offline", &pool, &disks[1]]).unwrap();
    let degraded = condition(&d).await;
    assert!(degraded.abnormal, "a degraded pool is abnormal");
    assert!(degraded.message.contains("DEGRADED") && degraded.message.contains(&pool), "{}", degraded.message);
    // The node side reports it too, for a published volume.
    let kubelet = tempfile::tempdir_in("/tmp").unwrap();
    let staging = kubelet.path().join("staging");
    let target = kubelet.path().join("target");
    let cap = mount_capability("");
    let mut node = d.node();
    node.node_stage_volume(csi::NodeStageVolumeRequest {
        volume_id: v.volume_id.clone(),
        staging_target_path: staging.display().to_string(),
        volume_capability: Some(cap.clone()),
        volume_context: v.volume_context.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    node.node_publish_volume(csi::NodePublishVolumeRequest {
        volume_id: v.volume_id.clone(),
        staging_target_path: staging.display().to_string(),
        target_path: target.display().to_string(),
        volume_capability: Some(cap),
        volume_context: v.volume_context.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    let stats = |d: &DriverProcess| {
        let mut n = d.node();
        let req = csi::NodeGetVolumeStatsRequest { volume_id: v.volume_id.clone(), volume_path: target.display().to_string(), ..Default::default() };
        async move { n.node_get_volume_stats(req).await.unwrap().into_inner().volume_condition.unwrap() }
    };
    let node_degraded = stats(&d).await;
    assert!(node_degraded.abnormal && node_degraded.message.contains("DEGRADED"), "{}", node_degraded.message);
    let body = scrape(&address);
    assert_eq!(sample(&body, "zfs_csi_pool_health", &[("pool", &pool), ("state", "DEGRADED")]), Some(1.0), "{body}");
    assert_eq!(sample(&body, "zfs_csi_pool_health", &[("pool", &pool), ("state", "ONLINE")]), Some(0.0));

    run("zpool", &["online", &pool, &disks[1]]).unwrap();
    let back = condition(&d).await;
    assert!(!back.abnormal, "{}", back.message);
    assert!(!stats(&d).await.abnormal);
    assert_eq!(sample(&scrape(&address), "zfs_csi_pool_health", &[("pool", &pool), ("state", "ONLINE")]), Some(1.0));

    node.node_unpublish_volume(csi::NodeUnpublishVolumeRequest { volume_id: v.volume_id.clone(), target_path: target.display().to_string() })
        .await
        .unwrap();
    node.node_unstage_volume(csi::NodeUnstageVolumeRequest { volume_id: v.volume_id.clone(), staging_target_path: staging.display().to_string() })
        .await
        .unwrap();
    d.delete(&v.volume_id).await;
}

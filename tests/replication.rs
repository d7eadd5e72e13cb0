//! Replicated snapshots against real ZFS (VolumeSnapshotClass `replicateTo`): incremental
//! transfers with their bytes counted, restores from the replica after the source volume and
//! after its whole pool are gone, a driver killed mid-transfer that resumes, and a full
//! replica pool that fails cleanly with the local snapshot intact, and a pool missing at
//! start-up whose replicas the reaper leaves alone.

use std::io::{Read, Seek, SeekFrom, Write};
use std::time::{Duration, Instant};

use tonic::Code;
use zfs_csi_tests::node_support::noise;
use zfs_csi_tests::*;

/// A file-backed pool of `size`, destroyed when dropped: pools a test may fill or destroy.
struct ScratchPool {
    name: String,
    _dir: tempfile::TempDir,
}

impl ScratchPool {
    fn new(prefix: &str, size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("disk");
        run("truncate", &["-s", size, &file.display().to_string()]).unwrap();
        let name = unique(prefix).replace('-', "");
        run("zpool", &["create", "-f", "-O", "compression=lz4", &name, &file.display().to_string()]).unwrap();
        Self { name, _dir: dir }
    }
}

impl Drop for ScratchPool {
    fn drop(&mut self) {
        let _ = run("zpool", &["destroy", "-f", &self.name]);
    }
}

/// Parent datasets of one test's own in `vms` and `tank`, destroyed when dropped. Each test's
/// drivers serve only these, so that one test's driver starting up never resumes or reaps
/// another test's transfers (the tests run side by side).
struct OwnParents {
    vms: String,
    tank: String,
    _parents: [TestParent; 2],
}

impl OwnParents {
    fn new() -> Self {
        let parents = [TestParent::new("vms", "repl"), TestParent::new("tank", "repl")];
        Self { vms: parents[0].0.clone(), tank: parents[1].0.clone(), _parents: parents }
    }

    fn both(&self) -> String {
        format!("{},{}", self.vms, self.tank)
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The bytes sent into `replica` so far, from the driver's metrics.
fn replicated_bytes(metrics: &str, replica: &str) -> u64 {
    let mut stream = std::net::TcpStream::connect(metrics).unwrap();
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).unwrap();
    let series = format!("zfs_csi_replication_sent_bytes_total{{replica=\"{replica}\"}} ");
    body.lines().find_map(|l| l.strip_prefix(&series)).map(|v| v.trim().parse().unwrap()).unwrap_or(0)
}

/// Whether a `zfs receive` into `target` runs.
fn receiving_into(target: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|entry| {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        args.contains(&b"receive".as_slice()) && args.contains(&target.as_bytes())
    })
}

fn snapshot_request(source: &str, name: &str, replicate_to: &str) -> csi::CreateSnapshotRequest {
    csi::CreateSnapshotRequest {
        source_volume_id: source.into(),
        name: name.into(),
        parameters: params(&[("replicateTo", replicate_to)]),
        ..Default::default()
    }
}

/// Calls CreateSnapshot as the snapshotter does until the snapshot is ready.
async fn replicated_snapshot(d: &DriverProcess, source: &str, name: &str, replicate_to: &str) -> csi::Snapshot {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let got = d.controller().create_snapshot(snapshot_request(source, name, replicate_to)).await.unwrap().into_inner();
        let snapshot = got.snapshot.unwrap();
        assert_eq!(snapshot.source_volume_id, source);
        if snapshot.ready_to_use {
            return snapshot;
        }
        assert!(Instant::now() < deadline, "{name} not replicated after 10 minutes");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn write_at(device: &std::path::Path, offset: u64, data: &[u8]) {
    let mut f = std::fs::OpenOptions::new().write(true).open(device).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
}

fn read_all(device: &std::path::Path, len: usize) -> Vec<u8> {
    let mut data = vec![0; len];
    std::fs::File::open(device).unwrap().read_exact(&mut data).unwrap();
    data
}

/// A raw block zvol through the driver, `size` bytes, in `pool`.
async fn block_volume(d: &DriverProcess, pool: &str, size: i64) -> csi::Volume {
    d.create(create_request(&unique("pvc-repl"), pool, block_capability(), size)).await
}

async fn restore(d: &DriverProcess, pool: &str, snapshot_id: &str, size: i64) -> csi::Volume {
    let mut req = create_request(&unique("pvc-restored"), pool, block_capability(), size);
    req.volume_content_source = Some(csi::VolumeContentSource {
        r#type: Some(csi::volume_content_source::Type::Snapshot(csi::volume_content_source::SnapshotSource {
            snapshot_id: snapshot_id.into(),
        })),
    });
    d.create(req).await
}

fn assert_same(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(at) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!("{what}: first difference at byte {at}");
    }
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn three_replicated_snapshots_are_incremental_and_restore_after_the_source_is_gone() {
    const SIZE: i64 = 64 * MIB;
    let t = OwnParents::new();
    let backups = format!("{}/backups", t.tank);
    let metrics = format!("127.0.0.1:{}", free_port());
    let d = DriverProcess::start_with(&["--parents", &t.both(), "--metrics-address", &metrics]).await;
    let v = block_volume(&d, &t.vms, SIZE).await;
    let device = wait_for_zvol_link(&v.volume_id);
    let replica = format!("{backups}/{}", v.volume_id.replace('/', ":"));

    write_at(&device, 0, &noise(8 << 20, "1"));
    let at_s1 = read_all(&device, SIZE as usize);
    let s1 = replicated_snapshot(&d, &v.volume_id, &unique("s1"), &backups).await;
    assert!(s1.snapshot_id.starts_with(&format!("{replica}@")), "the ID names the replica's copy: {}", s1.snapshot_id);
    let full = replicated_bytes(&metrics, &replica);
    assert!(full >= 8 << 20, "the first transfer is full: {full} bytes");

    write_at(&device, 16 << 20, &noise(1 << 20, "2"));
    let s2 = replicated_snapshot(&d, &v.volume_id, &unique("s2"), &backups).await;
    let second = replicated_bytes(&metrics, &replica) - full;
    write_at(&device, 32 << 20, &noise(1 << 20, "3"));
    let at_s3 = read_all(&device, SIZE as usize);
    let s3 = replicated_snapshot(&d, &v.volume_id, &unique("s3"), &backups).await;
    let third = replicated_bytes(&metrics, &replica) - full - second;
    for (n, bytes) in [(2, second), (3, third)] {
        assert!((1 << 20..4 << 20).contains(&bytes), "snapshot {n} is sent incrementally: {bytes} bytes for 1 MiB written");
    }
    // Nothing of the replica shows as a volume; its copies list as the snapshots.
    let volumes = d.controller().list_volumes(csi::ListVolumesRequest::default()).await.unwrap().into_inner();
    assert!(volumes.entries.iter().all(|e| !e.volume.as_ref().unwrap().volume_id.starts_with(&backups)));
    let listed = d.controller().list_snapshots(csi::ListSnapshotsRequest { source_volume_id: v.volume_id.clone(), ..Default::default() }).await.unwrap().into_inner();
    let mut ids: Vec<String> = listed.entries.iter().map(|e| e.snapshot.as_ref().unwrap().snapshot_id.clone()).collect();
    let mut want: Vec<String> = [&s1, &s2, &s3].iter().map(|s| s.snapshot_id.clone()).collect();
    ids.sort();
    want.sort();
    assert_eq!(ids, want);

    // The source volume and its local snapshots destroyed (by hand, as a failing disk would).
    drop(device);
    zfs(&["destroy", "-r", &v.volume_id]);
    // Restored from the replica into the source's pool (a copy) and into the replica's pool
    // (a clone), every byte compared.
    let copy = restore(&d, &t.vms, &s3.snapshot_id, SIZE).await;
    assert_same(&read_all(&wait_for_zvol_link(&copy.volume_id), SIZE as usize), &at_s3, "restore of s3 into vms");
    assert_eq!(zfs_get(&copy.volume_id, "origin").0, "-", "a copy, independent of the replica");
    let clone = restore(&d, &t.tank, &s1.snapshot_id, SIZE).await;
    assert_same(&read_all(&wait_for_zvol_link(&clone.volume_id), SIZE as usize), &at_s1, "restore of s1 into tank");

    d.delete(&copy.volume_id).await;
    d.delete(&clone.volume_id).await;
    for s in [&s1, &s2, &s3] {
        d.delete_snapshot(&s.snapshot_id).await;
    }
    assert!(!dataset_exists(&replica), "the replica goes with its last snapshot");
    zfs(&["destroy", "-r", &backups]);
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn a_snapshot_replicated_off_a_destroyed_pool_restores_into_another_pool() {
    const SIZE: i64 = 32 * MIB;
    let source = ScratchPool::new("src", "256M");
    let t = OwnParents::new();
    let backups = format!("{}/backups", t.tank);
    let d = DriverProcess::start(&format!("{},{}", source.name, t.both())).await;
    let v = block_volume(&d, &source.name, SIZE).await;
    let device = wait_for_zvol_link(&v.volume_id);
    write_at(&device, 0, &noise(SIZE as usize, "7"));
    let data = read_all(&device, SIZE as usize);
    drop(device);
    let s = replicated_snapshot(&d, &v.volume_id, &unique("s"), &backups).await;
    run("zpool", &["destroy", "-f", &source.name]).unwrap();

    let in_tank = restore(&d, &t.tank, &s.snapshot_id, SIZE).await;
    assert_same(&read_all(&wait_for_zvol_link(&in_tank.volume_id), SIZE as usize), &data, "restore into the replica's pool");
    let in_vms = restore(&d, &t.vms, &s.snapshot_id, SIZE).await;
    assert_same(&read_all(&wait_for_zvol_link(&in_vms.volume_id), SIZE as usize), &data, "restore into a third pool");
    let got = d.controller().get_snapshot(csi::GetSnapshotRequest { snapshot_id: s.snapshot_id.clone(), ..Default::default() }).await.unwrap().into_inner();
    assert!(got.snapshot.unwrap().ready_to_use, "the replica's copy outlives the pool");

    d.delete(&in_tank.volume_id).await;
    d.delete(&in_vms.volume_id).await;
    d.delete_snapshot(&s.snapshot_id).await;
    zfs(&["destroy", "-r", &backups]);
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn a_driver_killed_mid_transfer_resumes_from_the_receive_token() {
    const SIZE: i64 = 256 * MIB;
    let t = OwnParents::new();
    let backups = format!("{}/backups", t.tank);
    let mut d = DriverProcess::start(&t.both()).await;
    let v = block_volume(&d, &t.vms, SIZE).await;
    let device = wait_for_zvol_link(&v.volume_id);
    write_at(&device, 0, &noise(SIZE as usize, "11"));
    let data = read_all(&device, SIZE as usize);
    drop(device);
    let replica = format!("{backups}/{}", v.volume_id.replace('/', ":"));
    let name = unique("s");
    let first = d.controller().create_snapshot(snapshot_request(&v.volume_id, &name, &backups)).await.unwrap().into_inner();
    assert!(!first.snapshot.unwrap().ready_to_use, "256 MiB are not replicated within the call");
    // Killed a second after its `zfs receive` starts, with most of the stream still to come.
    let deadline = Instant::now() + Duration::from_secs(300);
    while !receiving_into(&replica) {
        assert!(Instant::now() < deadline, "the transfer never began");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(d.pid() as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    drop(d);
    // The pipe through the driver broke: the receive stops and keeps its state.
    let deadline = Instant::now() + Duration::from_secs(60);
    let token = loop {
        let token = zfs_get(&replica, "receive_resume_token").0;
        if token != "-" {
            break token;
        }
        assert!(Instant::now() < deadline, "no resume token on {replica}: was the transfer over before the kill?");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(!token.is_empty());
    d = DriverProcess::start(&t.both()).await;
    let s = replicated_snapshot(&d, &v.volume_id, &name, &backups).await;
    assert_eq!(zfs_get(&replica, "receive_resume_token").0, "-");
    let restored = restore(&d, &t.tank, &s.snapshot_id, SIZE).await;
    assert_same(&read_all(&wait_for_zvol_link(&restored.volume_id), SIZE as usize), &data, "restore of the resumed copy");
    d.delete(&restored.volume_id).await;
    d.delete_snapshot(&s.snapshot_id).await;
    // The replica keeps its newest snapshot, hidden, as the base of the next incremental send
    // while the volume lives; once the volume is deleted, the reaper's pass (at start-up here)
    // removes it.
    assert!(dataset_exists(&replica));
    d.delete(&v.volume_id).await;
    drop(d);
    let _d = DriverProcess::start(&t.both()).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while dataset_exists(&replica) {
        assert!(Instant::now() < deadline, "{replica} outlived its volume and its snapshots");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(!dataset_exists(&v.volume_id));
    zfs(&["destroy", "-r", &backups]);
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn a_full_replica_pool_fails_the_snapshot_cleanly_and_keeps_the_local_one() {
    const SIZE: i64 = 128 * MIB;
    let small = ScratchPool::new("small", "96M");
    let t = OwnParents::new();
    let backups = format!("{}/backups", small.name);
    let d = DriverProcess::start(&format!("{},{}", t.vms, small.name)).await;
    let v = block_volume(&d, &t.vms, SIZE).await;
    let device = wait_for_zvol_link(&v.volume_id);
    write_at(&device, 0, &noise(SIZE as usize, "5"));
    drop(device);
    let name = unique("s");
    let deadline = Instant::now() + Duration::from_secs(600);
    let status = loop {
        match d.controller().create_snapshot(snapshot_request(&v.volume_id, &name, &backups)).await {
            Ok(reply) => assert!(!reply.into_inner().snapshot.unwrap().ready_to_use, "128 MiB cannot fit in a 96 MiB pool"),
            Err(status) => break status,
        }
        assert!(Instant::now() < deadline, "no failure reported");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{}", status.message());
    assert!(status.message().contains("intact"), "{}", status.message());
    let local = format!("{}@{name}", v.volume_id);
    assert!(dataset_exists(&local), "the local snapshot stays");
    // Nothing half-received: only the pool and the replicas' parent.
    let left = zfs(&["list", "-H", "-o", "name", "-t", "all", "-r", &small.name]);
    assert_eq!(left.lines().collect::<Vec<_>>(), [small.name.as_str(), backups.as_str()], "{left}");
    let replica = format!("{backups}/{}", v.volume_id.replace('/', ":"));
    d.delete_snapshot(&format!("{replica}@{name}")).await;
    assert!(!dataset_exists(&local));
    d.delete(&v.volume_id).await;
}

/// A pool not imported when the driver starts (a homelab's boot order) says nothing about its
/// volumes: the start-up reaper pass must not take their replicas' incremental bases for
/// leftovers of deleted volumes. Once the pool is back, the next replicated snapshot builds
/// on the kept base, and the pool's snapshot names count for CreateSnapshot again.
#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn a_pool_missing_at_start_up_keeps_its_volumes_replicas() {
    const SIZE: i64 = 32 * MIB;
    let source = ScratchPool::new("late", "256M");
    let t = OwnParents::new();
    let backups = format!("{}/backups", t.tank);
    let parents = format!("{},{}", source.name, t.tank);
    let d = DriverProcess::start(&parents).await;
    let v = block_volume(&d, &source.name, SIZE).await;
    let device = wait_for_zvol_link(&v.volume_id);
    write_at(&device, 0, &noise(8 << 20, "late"));
    drop(device);
    let replica = format!("{backups}/{}", v.volume_id.replace('/', ":"));
    let s1 = replicated_snapshot(&d, &v.volume_id, &unique("s1"), &backups).await;
    // Deleted through CSI while the volume lives: its copy stays, hidden, as the next base.
    d.delete_snapshot(&s1.snapshot_id).await;
    let base = s1.snapshot_id.clone();
    assert!(dataset_exists(&base), "the newest copy is kept as the base of the next send");
    let kept_name = unique("kept");
    let kept = d.snapshot(&v.volume_id, &kept_name).await;
    drop(d);

    run("zpool", &["export", &source.name]).unwrap();
    let log_dir = tempfile::tempdir().unwrap();
    let log = log_dir.path().join("driver.log");
    let d = DriverProcess::start_logging_to(&log, &["--parents", &parents]).await;
    assert!(wait_for_log(&log, "reaper pass", Duration::from_secs(60)).await, "the start-up reaper pass did not finish");
    assert!(dataset_exists(&base), "the start-up pass destroyed the replica base of a volume whose pool is only missing");

    let dir = source._dir.path().display().to_string();
    run("zpool", &["import", "-d", &dir, &source.name]).unwrap();
    let s2 = replicated_snapshot(&d, &v.volume_id, &unique("s2"), &backups).await;
    // The late pool's snapshot names count for CreateSnapshot's uniqueness check too.
    let other = block_volume(&d, &t.tank, SIZE).await;
    let taken = d
        .controller()
        .create_snapshot(csi::CreateSnapshotRequest {
            source_volume_id: other.volume_id.clone(),
            name: kept_name.clone(),
            ..Default::default()
        })
        .await;
    expect_code(taken, Code::AlreadyExists);
    d.delete(&other.volume_id).await;
    d.delete_snapshot(&kept.snapshot_id).await;
    // (The kept base is pruned once s2 is in, so the replica's `written` cannot tell; the
    // driver's log of the transfer can.)
    let logged = std::fs::read_to_string(&log).unwrap();
    let transfers: Vec<&str> = logged.lines().filter(|l| l.contains(&format!("to {replica}: done"))).collect();
    assert!(
        transfers.len() == 1 && transfers[0].contains("kind=\"incremental\""),
        "s2 was not sent incrementally onto the kept base: {transfers:?}"
    );
    d.delete_snapshot(&s2.snapshot_id).await;
    assert!(dataset_exists(&replica), "{replica} went while its volume lived");
    d.delete(&v.volume_id).await;
    zfs(&["destroy", "-r", &backups]);
}

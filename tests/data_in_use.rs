//! Data in use is never lost, against real ZFS on both guest kernels: tests that write the
//! way applications do (buffered, no fsync, a writer running during the operation) right
//! before every operation that touches a mounted volume, and that try to delete volumes that
//! are in use. Every byte is verified afterwards and again after a remount.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::Code;
use zfs_csi::csi::volume_capability::access_mode::Mode;
use zfs_csi_tests::node_support::*;
use zfs_csi_tests::*;

const RECORD: usize = 4096;
/// The most records a writer appends (16 MiB), so that it never fills a test volume.
const MAX_RECORDS: u64 = 4096;
/// Where a writer's records start on a raw block device: after the test pattern.
const BLOCK_WRITER_OFFSET: u64 = DATA_LEN as u64;

/// Record `i`: its number, repeated, so that a lost, torn or misplaced record shows.
fn record(i: u64) -> Vec<u8> {
    i.to_le_bytes().iter().copied().cycle().take(RECORD).collect()
}

/// Writes `data` the way most applications do: `write()` and nothing else, so it sits in the
/// page cache, not yet on the device.
fn write_buffered(kind: Kind, path: &Path, data: &[u8]) {
    if kind == Kind::Block {
        let device = std::fs::OpenOptions::new().write(true).open(path).expect("open the block target");
        device.write_all_at(data, 0).expect("write to the block target");
    } else {
        let file = std::fs::File::create(path.join(DATA_FILE)).expect("create a file on the volume");
        file.write_all_at(data, 0).expect("write to the volume");
    }
}

/// A workload writing while the driver works: numbered records appended to a file (or, on a
/// raw block device, written at increasing offsets), buffered, never synced, until stopped.
struct Writer {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<u64>,
}

impl Writer {
    fn start(kind: Kind, path: &Path) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let path = path.to_path_buf();
        let stopping = Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            let file = if kind == Kind::Block {
                std::fs::OpenOptions::new().write(true).open(&path).expect("open the block target")
            } else {
                std::fs::OpenOptions::new().create(true).append(true).open(path.join("writer.log")).expect("open the writer's file")
            };
            let mut written = 0;
            while !stopping.load(Ordering::Relaxed) && written < MAX_RECORDS {
                if kind == Kind::Block {
                    file.write_all_at(&record(written), BLOCK_WRITER_OFFSET + written * RECORD as u64)
                } else {
                    std::io::Write::write_all(&mut &file, &record(written))
                }
                .expect("the writer's write");
                written += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            written
        });
        Self { stop, handle }
    }

    /// Stops the writer; the number of records it wrote.
    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("the writer thread")
    }
}

#[track_caller]
fn assert_records(kind: Kind, path: &Path, count: u64) {
    let data = if kind == Kind::Block {
        let device = std::fs::File::open(path).expect("open the block target");
        let mut data = vec![0; count as usize * RECORD];
        device.read_exact_at(&mut data, BLOCK_WRITER_OFFSET).expect("read the block target");
        data
    } else {
        std::fs::read(path.join("writer.log")).expect("read the writer's file")
    };
    assert_eq!(data.len(), count as usize * RECORD, "the writer wrote {count} records; {} bytes are there", data.len());
    for (i, chunk) in data.chunks(RECORD).enumerate() {
        assert!(chunk == record(i as u64), "record {i} of {count} is not what the writer wrote");
    }
}

/// Unpublishes and unstages, then stages and publishes again at the same paths: what is read
/// now came from the device, not from the page cache.
async fn remount(d: &DriverProcess, vol: &Vol, staging: &Path, target: &Path) {
    unpublish(d, &vol.id, target).await;
    unstage(d, &vol.id, staging).await;
    stage(d, vol, staging).await.expect("NodeStageVolume again");
    publish(d, vol, staging, target).await.expect("NodePublishVolume again");
}

// ---- online expansion --------------------------------------------------------------------

/// Buffered writes right before NodeExpandVolume and a writer running through it: every byte
/// is there afterwards and after a remount. On kernel 6.1 `zfs set volsize` alone empties
/// such files (the media-change event drops a mounted filesystem's dirty pages).
async fn expansion_keeps_unsynced_and_concurrent_writes(kind: Kind) {
    let d = DriverProcess::start("ai,vms,tank").await;
    let scratch = Scratch::new();
    let vol = create_volume(&d, &scratch, "vms", kind).await;
    let (staging, target) = stage_and_publish(&d, &scratch, &vol, "a").await;
    let data = pattern(&vol.id);
    let mut capacity = vol.capacity;
    let mut records = 0;
    let mut sizes = vec![visible_size(kind, &target)];
    for round in 0..2 {
        // Round 0: buffered writes just before the call; round 1: a writer during it.
        write_buffered(kind, &target, &data);
        let writer = (round == 1).then(|| Writer::start(kind, &target));
        std::thread::sleep(Duration::from_millis(50));
        capacity += 32 * MIB;
        let grown = expand(&d, &vol, &staging, &target, capacity).await.expect("NodeExpandVolume").into_inner();
        assert_eq!(grown.capacity_bytes, capacity);
        if let Some(writer) = writer {
            std::thread::sleep(Duration::from_millis(50));
            records = writer.stop();
            assert!(records > 0, "the writer wrote nothing");
            assert_records(kind, &target, records);
        }
        assert_data(kind, &target, &data);
        sizes.push(visible_size(kind, &target));
    }
    remount(&d, &vol, &staging, &target).await;
    assert_data(kind, &target, &data);
    assert_records(kind, &target, records);
    sizes.push(visible_size(kind, &target));
    // The consumer sees the growth (a filesystem shows less than its device: metadata, log).
    assert!(sizes[3] >= sizes[0] + 48 * MIB, "the volume did not grow by 64 MiB; sizes seen: {sizes:?}");
    unpublish_and_unstage(&d, &vol, &staging, &target).await;
    d.delete(&vol.id).await;
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn ext4_expansion_keeps_unsynced_and_concurrent_writes() {
    expansion_keeps_unsynced_and_concurrent_writes(Kind::Ext4).await;
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn xfs_expansion_keeps_unsynced_and_concurrent_writes() {
    expansion_keeps_unsynced_and_concurrent_writes(Kind::Xfs).await;
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn btrfs_expansion_keeps_unsynced_and_concurrent_writes() {
    expansion_keeps_unsynced_and_concurrent_writes(Kind::Btrfs).await;
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn block_expansion_keeps_unsynced_and_concurrent_writes() {
    expansion_keeps_unsynced_and_concurrent_writes(Kind::Block).await;
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn dataset_expansion_keeps_unsynced_and_concurrent_writes() {
    expansion_keeps_unsynced_and_concurrent_writes(Kind::Dataset).await;
}

/// Whether a write and fsync to a file on `dir` finishes within `within` (a frozen filesystem
/// holds it until thawed). A write still hanging is thawed by the test itself, so that it does
/// not hang the suite.
fn writable_within(dir: &Path, within: Duration) -> bool {
    let file = dir.join("probe");
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let ok = std::fs::write(&file, b"probe").and_then(|()| std::fs::File::open(&file)?.sync_all()).is_ok();
        let _ = done.send(ok);
    });
    match finished.recv_timeout(within) {
        Ok(ok) => ok,
        Err(_) => {
            let _ = run("fsfreeze", &["-u", &dir.display().to_string()]);
            false
        }
    }
}

/// The provisioner's timeout or a crash cancels NodeExpandVolume at any moment: whenever the
/// call is dropped, the filesystem is left thawed and the data intact.
#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn a_cancelled_expansion_never_leaves_the_filesystem_frozen() {
    let d = DriverProcess::start("ai,vms,tank").await;
    let scratch = Scratch::new();
    let vol = create_volume(&d, &scratch, "vms", Kind::Ext4).await;
    let (staging, target) = stage_and_publish(&d, &scratch, &vol, "a").await;
    let data = pattern(&vol.id);
    let mut capacity = vol.capacity;
    for after_ms in [1, 3, 10, 20, 40, 80, 150, 300] {
        write_buffered(Kind::Ext4, &target, &data);
        capacity += 16 * MIB;
        let call = expand(&d, &vol, &staging, &target, capacity);
        let _ = tokio::time::timeout(Duration::from_millis(after_ms), call).await;
        // The driver finishes or unwinds what it started; the lock tells when.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let again = expand(&d, &vol, &staging, &target, capacity).await;
            match again {
                Ok(_) => break,
                Err(s) if s.code() == Code::Aborted && Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
                Err(s) => panic!("NodeExpandVolume after a cancelled one: {s}"),
            }
        }
        assert!(writable_within(&target, Duration::from_secs(10)), "cancelled after {after_ms} ms: the filesystem was left frozen");
        assert_data(Kind::Ext4, &target, &data);
    }
    remount(&d, &vol, &staging, &target).await;
    assert_data(Kind::Ext4, &target, &data);
    unpublish_and_unstage(&d, &vol, &staging, &target).await;
    d.delete(&vol.id).await;
}

/// A driver killed between a freeze and its thaw: the next one thaws the filesystem at
/// start-up, so the workload's writes go on.
#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn a_filesystem_left_frozen_by_a_killed_driver_is_thawed_at_start() {
    let d = DriverProcess::start("ai,vms,tank").await;
    let scratch = Scratch::new();
    let vol = create_volume(&d, &scratch, "tank", Kind::Xfs).await;
    let (staging, target) = stage_and_publish(&d, &scratch, &vol, "a").await;
    drop(d);
    run("fsfreeze", &["-f", &staging.display().to_string()]).expect("fsfreeze -f");
    let d = DriverProcess::start("ai,vms,tank").await;
    assert!(writable_within(&target, Duration::from_secs(15)), "the restarted driver did not thaw the filesystem");
    unpublish_and_unstage(&d, &vol, &staging, &target).await;
    d.delete(&vol.id).await;
}

// ---- snapshots, clones and unpublish -------------------------------------------------------

/// Buffered writes right before CreateSnapshot, and before CreateVolume from the volume: the
/// snapshot and both clones hold every byte. A zvol's filesystem is frozen for the snapshot
/// (its dirty pages are in the kernel's page cache, not yet in the zvol).
async fn snapshots_and_clones_hold_unsynced_writes(kind: Kind) {
    let d = DriverProcess::start("ai,vms,tank").await;
    let scratch = Scratch::new();
    let source = create_volume(&d, &scratch, "ai", kind).await;
    let (staging, target) = stage_and_publish(&d, &scratch, &source, "src").await;
    let data = pattern(&source.id);
    write_buffered(kind, &target, &data);
    let snapshot = d.snapshot(&source.id, &unique("snap-unsynced")).await;
    let from_snapshot = create_volume_with(&d, &scratch, "ai", kind, &[], snapshot_source(&snapshot.snapshot_id)).await;
    let later = pattern(&format!("{}-later", source.id));
    write_buffered(kind, &target, &later);
    let from_volume = create_volume_with(&d, &scratch, "ai", kind, &[], volume_source(&source.id)).await;
    // btrfs refuses two filesystems with one fsid at once on 6.1: the source goes first.
    unpublish_and_unstage(&d, &source, &staging, &target).await;
    for (clone, expected, label) in [(&from_snapshot, &data, "snap"), (&from_volume, &later, "vol")] {
        let (staging, target) = stage_and_publish(&d, &scratch, clone, label).await;
        assert_data(kind, &target, expected);
        unpublish_and_unstage(&d, clone, &staging, &target).await;
    }
    // Unsynced writes before NodeUnpublish: on the device after the unmount.
    let (staging, target) = stage_and_publish(&d, &scratch, &source, "again").await;
    let last = pattern(&format!("{}-last", source.id));
    write_buffered(kind, &target, &last);
    remount(&d, &source, &staging, &target).await;
    assert_data(kind, &target, &last);
    unpublish_and_unstage(&d, &source, &staging, &target).await;
    for id in [&from_volume.id, &from_snapshot.id] {
        d.delete(id).await;
    }
    d.delete_snapshot(&snapshot.snapshot_id).await;
    d.delete(&source.id).await;
    assert!(!dataset_exists(&source.id));
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn ext4_snapshots_and_clones_hold_unsynced_writes() {
    snapshots_and_clones_hold_unsynced_writes(Kind::Ext4).await;
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn xfs_snapshots_and_clones_hold_unsynced_writes() {
    snapshots_and_clones_hold_unsynced_writes(Kind::Xfs).await;
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn btrfs_snapshots_and_clones_hold_unsynced_writes() {
    snapshots_and_clones_hold_unsynced_writes(Kind::Btrfs).await;
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn block_snapshots_and_clones_hold_unsynced_writes() {
    snapshots_and_clones_hold_unsynced_writes(Kind::Block).await;
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn dataset_snapshots_and_clones_hold_unsynced_writes() {
    snapshots_and_clones_hold_unsynced_writes(Kind::Dataset).await;
}

// ---- DeleteVolume of a volume in use -----------------------------------------------------

/// DeleteVolume of a staged, then of a published volume: FAILED_PRECONDITION naming the
/// mount, with every mount and every byte untouched; then the normal way works.
async fn deleting_a_volume_in_use_is_refused(kind: Kind) {
    let d = DriverProcess::start("ai,vms,tank").await;
    let scratch = Scratch::new();
    let vol = create_volume(&d, &scratch, "tank", kind).await;
    let staging = scratch.path("in-use-staging");
    let target = scratch.path("in-use-target");
    stage(&d, &vol, &staging).await.expect("NodeStageVolume");
    let delete = |id: String| {
        let mut controller = d.controller();
        async move { controller.delete_volume(csi::DeleteVolumeRequest { volume_id: id, ..Default::default() }).await }
    };
    if kind != Kind::Block {
        // A raw block volume's staging holds nothing: there is nothing to refuse yet.
        let message = expect_code(delete(vol.id.clone()).await, Code::FailedPrecondition);
        assert!(message.contains(&staging.display().to_string()), "the message names the mount: {message}");
    }
    publish(&d, &vol, &staging, &target).await.expect("NodePublishVolume");
    let data = pattern(&vol.id);
    write_data(kind, &target, &data);
    let message = expect_code(delete(vol.id.clone()).await, Code::FailedPrecondition);
    assert!(message.contains(&target.display().to_string()), "the message names the publish: {message}");
    assert!(dataset_exists(&vol.id));
    assert!(is_mount_point(&target), "the target is still mounted");
    if kind != Kind::Block {
        assert!(is_mount_point(&staging), "the staging path is still mounted");
    }
    assert_data(kind, &target, &data);
    unpublish_and_unstage(&d, &vol, &staging, &target).await;

    if kind == Kind::Block {
        // Open by a process (a VM's qemu) without any mount: refused, naming the process.
        let device = wait_for_zvol_link(&vol.id);
        let holder = std::process::Command::new("sleep").arg("600").stdin(std::fs::File::open(&device).unwrap()).spawn().unwrap();
        let message = expect_code(delete(vol.id.clone()).await, Code::FailedPrecondition);
        assert!(message.contains(&holder.id().to_string()) && message.contains("sleep"), "the message names the process: {message}");
        let mut holder = holder;
        holder.kill().unwrap();
        holder.wait().unwrap();
        assert!(dataset_exists(&vol.id));
    }
    d.delete(&vol.id).await;
    assert!(!dataset_exists(&vol.id));
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn deleting_a_dataset_in_use_is_refused() {
    deleting_a_volume_in_use_is_refused(Kind::Dataset).await;
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn deleting_an_ext4_zvol_in_use_is_refused() {
    deleting_a_volume_in_use_is_refused(Kind::Ext4).await;
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn deleting_an_xfs_zvol_in_use_is_refused() {
    deleting_a_volume_in_use_is_refused(Kind::Xfs).await;
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn deleting_a_btrfs_zvol_in_use_is_refused() {
    deleting_a_volume_in_use_is_refused(Kind::Btrfs).await;
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn deleting_a_raw_block_zvol_in_use_is_refused() {
    deleting_a_volume_in_use_is_refused(Kind::Block).await;
}

/// A replica of a driver volume received with `zfs send -p | zfs recv` carries our marker as a
/// received value: the driver did not create it, so DeleteVolume and DeleteSnapshot leave it.
#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn a_received_replica_is_never_destroyed() {
    let d = DriverProcess::start("ai,vms,tank").await;
    let scratch = Scratch::new();
    for kind in [Kind::Dataset, Kind::Block] {
        let vol = create_volume(&d, &scratch, "ai", kind).await;
        let snapshot = d.snapshot(&vol.id, &unique("snap-sent")).await;
        let replica = format!("tank/{}", unique("replica"));
        scratch.track(&replica);
        let send = std::process::Command::new("zfs")
            .args(["send", "-p", &snapshot.snapshot_id])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let received = std::process::Command::new("zfs").args(["recv", "-u", &replica]).stdin(send.stdout.unwrap()).status().unwrap();
        assert!(received.success(), "zfs send -p | zfs recv");
        assert_eq!(zfs_get(&replica, "zfs-csi.io:managed-by").1, "received");
        let short = snapshot.snapshot_id.split_once('@').unwrap().1;
        let replica_snapshot = format!("{replica}@{short}");
        d.delete_snapshot(&replica_snapshot).await;
        assert!(dataset_exists(&replica_snapshot), "DeleteSnapshot destroyed a received snapshot");
        d.delete(&replica).await;
        assert!(dataset_exists(&replica), "DeleteVolume destroyed a received replica");
        d.delete_snapshot(&snapshot.snapshot_id).await;
        d.delete(&vol.id).await;
        assert!(!dataset_exists(&vol.id));
    }
}

// ---- access modes, read-only and paths --------------------------------------------------

/// A crash between the bind and the read-only remount leaves a read-write bind: a repeated
/// read-only publish makes it read-only instead of calling it done; a read-write publish over
/// a read-only one, and a read-only stage over a read-write one, are ALREADY_EXISTS.
#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn read_only_idempotency_compares_the_flags() {
    let d = DriverProcess::start("ai,vms,tank").await;
    let scratch = Scratch::new();
    for kind in [Kind::Dataset, Kind::Ext4, Kind::Block] {
        let vol = create_volume(&d, &scratch, "vms", kind).await;
        let staging = scratch.path(&format!("{kind:?}-ro-staging"));
        let target = scratch.path(&format!("{kind:?}-ro-target"));
        stage(&d, &vol, &staging).await.expect("NodeStageVolume");
        // What the crash left: a read-write bind of the right source at the target.
        publish(&d, &vol, &staging, &target).await.expect("NodePublishVolume read-write");
        let ro = publish_request(&vol, &staging, &target, true);
        d.node().node_publish_volume(ro.clone()).await.expect("read-only NodePublishVolume over the read-write bind");
        let err = try_write(kind, &target).expect_err("a write through the read-only publish");
        assert!(is_refused_write(kind, &err), "{err}");
        let rw = publish_request(&vol, &staging, &target, false);
        expect_code(d.node().node_publish_volume(rw).await, Code::AlreadyExists);
        d.node().node_publish_volume(ro).await.expect("a repeated read-only publish");
        if kind != Kind::Block {
            let mut ro_stage = stage_request(&vol, &staging);
            ro_stage.volume_capability = Some(with_mode(kind.capability(), Mode::SingleNodeReaderOnly));
            expect_code(d.node().node_stage_volume(ro_stage).await, Code::AlreadyExists);
        }
        unpublish_and_unstage(&d, &vol, &staging, &target).await;
        d.delete(&vol.id).await;
    }
}

/// A ReadWriteOncePod volume (SINGLE_NODE_SINGLE_WRITER) is published to one target only,
/// even on a `shared: yes` class.
#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn a_read_write_once_pod_volume_is_never_published_twice() {
    let d = DriverProcess::start("ai,vms,tank").await;
    let scratch = Scratch::new();
    for kind in [Kind::Dataset, Kind::Block] {
        let vol = create_volume_with(&d, &scratch, "vms", kind, &[("shared", "yes")], None).await;
        let staging = scratch.path(&format!("{kind:?}-rwop-staging"));
        let first = scratch.path(&format!("{kind:?}-rwop-a"));
        let second = scratch.path(&format!("{kind:?}-rwop-b"));
        let rwop = |target: &Path| {
            let mut req = publish_request(&vol, &staging, target, false);
            req.volume_capability = Some(with_mode(kind.capability(), Mode::SingleNodeSingleWriter));
            req
        };
        let mut stage_req = stage_request(&vol, &staging);
        stage_req.volume_capability = Some(with_mode(kind.capability(), Mode::SingleNodeSingleWriter));
        d.node().node_stage_volume(stage_req).await.expect("NodeStageVolume");
        d.node().node_publish_volume(rwop(&first)).await.expect("the first publish");
        d.node().node_publish_volume(rwop(&first)).await.expect("the same publish again");
        let message = expect_code(d.node().node_publish_volume(rwop(&second)).await, Code::FailedPrecondition);
        assert!(message.contains("ReadWriteOncePod"), "{message}");
        assert!(!is_mount_point(&second));
        unpublish(&d, &vol.id, &first).await;
        unstage(&d, &vol.id, &staging).await;
        d.delete(&vol.id).await;
    }
}

/// Paths through a symlink are compared resolved (the mount table shows resolved paths), so
/// stage, publish and their repeats and undoing work through either spelling; a path outside
/// the kubelet directory, directly or through a link, is INVALID_ARGUMENT and mounts nothing.
#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn paths_through_symlinks_and_outside_the_kubelet_directory() {
    let d = DriverProcess::start("ai,vms,tank").await;
    let scratch = Scratch::new();
    let vol = create_volume(&d, &scratch, "ai", Kind::Ext4).await;
    let real = scratch.path("real");
    std::fs::create_dir(&real).unwrap();
    let link = scratch.path("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let (staging_link, target_link) = (link.join("staging"), link.join("target"));
    let (staging_real, target_real) = (real.join("staging"), real.join("target"));
    stage(&d, &vol, &staging_link).await.expect("NodeStageVolume through the link");
    assert!(is_mount_point(&std::fs::canonicalize(&staging_real).unwrap()));
    stage(&d, &vol, &staging_real).await.expect("NodeStageVolume again by the resolved path");
    publish(&d, &vol, &staging_real, &target_link).await.expect("NodePublishVolume through the link");
    publish(&d, &vol, &staging_link, &target_real).await.expect("NodePublishVolume again");
    let data = pattern(&vol.id);
    write_data(Kind::Ext4, &target_link, &data);
    unpublish(&d, &vol.id, &target_link).await;
    unstage(&d, &vol.id, &staging_link).await;
    scratch.assert_nothing_mounted();

    let outside = PathBuf::from(format!("/var/tmp/{}", unique("outside")));
    let escape = scratch.path("escape");
    std::os::unix::fs::symlink("/var/tmp", &escape).unwrap();
    for path in [outside.join("staging"), escape.join(unique("staging"))] {
        let message = expect_code(stage(&d, &vol, &path).await, Code::InvalidArgument);
        assert!(message.contains("kubelet"), "{message}");
        assert!(mounts_under(Path::new("/var/tmp")).is_empty(), "something was mounted outside the kubelet directory");
    }
    let message = expect_code(publish(&d, &vol, &scratch.path("s"), &outside.join("t")).await, Code::InvalidArgument);
    assert!(message.contains("kubelet"), "{message}");
    d.delete(&vol.id).await;
}

//! Encryption keyed from Kubernetes Secrets, against real ZFS through the real binary: each
//! volume its own encryption root with `keylocation=prompt`; after a "reboot" (keys unloaded,
//! nothing mounted) NodeStageVolume loads the key from the node-stage secret; a wrong or
//! missing key changes nothing; clones and restores stay under their origin's root and stage
//! with its Secret; and the key shows up in no log line, no command line and no property.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tonic::Code;
use zfs_csi_tests::node_support::*;
use zfs_csi_tests::*;

/// Watches `ps -eo args` in a background thread while the RPCs run, and remembers any command
/// line that holds one of the watched strings.
struct CommandLineWatch {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<String>>>,
    polls: Arc<Mutex<u64>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CommandLineWatch {
    fn start(watched: Vec<String>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let polls = Arc::new(Mutex::new(0));
        let thread = {
            let (stop, seen, polls) = (Arc::clone(&stop), Arc::clone(&seen), Arc::clone(&polls));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let out = run("ps", &["-eo", "args"]).unwrap_or_default();
                    for line in out.lines().filter(|l| watched.iter().any(|w| l.contains(w.as_str()))) {
                        seen.lock().unwrap().push(line.to_string());
                    }
                    *polls.lock().unwrap() += 1;
                }
            })
        };
        Self { stop, seen, polls, thread: Some(thread) }
    }

    /// Stops watching; the command lines that held a watched string, and how many polls ran.
    fn finish(mut self) -> (Vec<String>, u64) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("the ps watcher");
        }
        let seen = self.seen.lock().unwrap().clone();
        let polls = *self.polls.lock().unwrap();
        (seen, polls)
    }
}

fn secrets(key: &str) -> HashMap<String, String> {
    params(&[("encryptionKey", key)])
}

/// Every property value of `dataset` (`zfs get all`).
fn all_values(dataset: &str) -> String {
    zfs(&["get", "-H", "-p", "-o", "value", "all", dataset])
}

fn key_status(dataset: &str) -> String {
    zfs_get(dataset, "keystatus").0
}

async fn create_encrypted(d: &DriverProcess, scratch: &Scratch, kind: Kind, key: &str, source: Option<csi::VolumeContentSource>) -> Vol {
    let mut req = create_request(&unique("pvc-sec"), "vms", kind.capability(), kind.size());
    req.secrets = secrets(key);
    req.volume_content_source = source;
    let volume = d.create(req).await;
    scratch.track(&volume.volume_id);
    Vol { id: volume.volume_id, kind, capacity: volume.capacity_bytes, context: volume.volume_context }
}

async fn stage_with(d: &DriverProcess, vol: &Vol, staging: &Path, key: Option<&str>) -> Result<tonic::Response<csi::NodeStageVolumeResponse>, tonic::Status> {
    let mut req = stage_request(vol, staging);
    req.secrets = key.map(secrets).unwrap_or_default();
    d.node().node_stage_volume(req).await
}

/// Stages with the key and publishes at `<label>-staging` / `<label>-target`.
async fn stage_and_publish_with(d: &DriverProcess, scratch: &Scratch, vol: &Vol, label: &str, key: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let staging = scratch.path(&format!("{label}-staging"));
    let target = scratch.path(&format!("{label}-target"));
    stage_with(d, vol, &staging, Some(key)).await.unwrap_or_else(|e| panic!("NodeStageVolume {}: {e}", vol.id));
    publish(d, vol, &staging, &target).await.unwrap_or_else(|e| panic!("NodePublishVolume {}: {e}", vol.id));
    (staging, target)
}

/// What a reboot does to an encryption root: nothing of it mounted, its key unloaded.
/// A zvol just released can be held for a moment by udev's probe: busy is retried a while.
fn as_after_a_reboot(root: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while let Err(e) = run("zfs", &["unload-key", root]) {
        assert!(e.contains("busy") && std::time::Instant::now() < deadline, "zfs unload-key {root}: {e}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(key_status(root), "unavailable");
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn encryption_from_a_secret_loads_on_stage_after_a_reboot_and_never_shows_the_key() {
    let log_dir = tempfile::tempdir().expect("tempdir");
    let log = log_dir.path().join("driver.log");
    let d = DriverProcess::start_logging_to(&log, &["--parents", "ai,vms,tank"]).await;
    let scratch = Scratch::new();
    let key = format!("passphrase-{}", unique("sekrit"));
    let wrong = format!("wrong-passphrase-{}", unique("sekrit"));
    let watch = CommandLineWatch::start(vec![key.clone(), wrong.clone()]);

    let vol = create_encrypted(&d, &scratch, Kind::Dataset, &key, None).await;
    assert_eq!(zfs_get(&vol.id, "encryption").0, "aes-256-gcm");
    assert_eq!(zfs_get(&vol.id, "keylocation"), ("prompt".into(), "local".into()));
    assert_eq!(zfs_get(&vol.id, "keyformat").0, "passphrase");
    assert_eq!(zfs_get(&vol.id, "encryptionroot").0, vol.id, "its own encryption root");
    assert_eq!(zfs_get(&vol.id, "zfs-csi.io:key-source"), ("secret".into(), "local".into()));
    assert_eq!(vol.context.get("keySource").map(String::as_str), Some("secret"));
    let data = pattern(&vol.id);
    let (staging, target) = stage_and_publish_with(&d, &scratch, &vol, "enc", &key).await;
    write_data(Kind::Dataset, &target, &data);
    unpublish_and_unstage(&d, &vol, &staging, &target).await;

    // A restore and a clone: under the origin's encryption root, no encryption of their own.
    let snap = d.snapshot(&vol.id, &unique("snap-sec")).await;
    let restored = create_encrypted(&d, &scratch, Kind::Dataset, &key, snapshot_source(&snap.snapshot_id)).await;
    let cloned = create_encrypted(&d, &scratch, Kind::Dataset, &key, volume_source(&vol.id)).await;
    for v in [&restored, &cloned] {
        assert_eq!(zfs_get(&v.id, "encryptionroot").0, vol.id, "{}", v.id);
        assert_eq!(zfs_get(&v.id, "keylocation").0, "none", "{}: not a root of its own", v.id);
    }

    as_after_a_reboot(&vol.id);
    let before = all_values(&vol.id);
    let staging = scratch.path("enc2-staging");
    let message = expect_code(stage_with(&d, &vol, &staging, Some(&wrong)).await, Code::FailedPrecondition);
    assert!(message.contains("does not open"), "{message}");
    let message = expect_code(stage_with(&d, &vol, &staging, None).await, Code::InvalidArgument);
    assert!(message.contains("node-stage-secret-name"), "{message}");
    assert_eq!(key_status(&vol.id), "unavailable", "a refused key loaded nothing");
    assert!(!is_mount_point(&staging), "a refused key mounted nothing");
    assert_eq!(all_values(&vol.id), before, "a refused key changed a property");

    let (staging, target) = stage_and_publish_with(&d, &scratch, &vol, "enc3", &key).await;
    assert_data(Kind::Dataset, &target, &data);
    unpublish_and_unstage(&d, &vol, &staging, &target).await;

    // A restore stages with the origin's Secret after a reboot, and its clone after it.
    as_after_a_reboot(&vol.id);
    for v in [&restored, &cloned] {
        let (staging, target) = stage_and_publish_with(&d, &scratch, v, &format!("enc-{}", unique("c")), &key).await;
        assert_data(Kind::Dataset, &target, &data);
        unpublish_and_unstage(&d, v, &staging, &target).await;
    }

    // A clone made while the root's key is unloaded gets it from the provisioner secret.
    as_after_a_reboot(&vol.id);
    let late = create_encrypted(&d, &scratch, Kind::Dataset, &key, snapshot_source(&snap.snapshot_id)).await;
    assert_eq!(zfs_get(&late.id, "encryptionroot").0, vol.id);

    let (seen, polls) = watch.finish();
    assert!(polls > 0, "ps never ran");
    assert!(seen.is_empty(), "the key was on a command line: {seen:?}");
    for dataset in [&vol.id, &restored.id, &cloned.id, &late.id, &snap.snapshot_id] {
        let values = all_values(dataset);
        assert!(!values.contains(&key) && !values.contains(&wrong), "a property of {dataset} holds the key");
    }
    for v in [&late, &cloned, &restored] {
        d.delete(&v.id).await;
    }
    d.delete_snapshot(&snap.snapshot_id).await;
    d.delete(&vol.id).await;
    drop(d);
    let logged = std::fs::read_to_string(&log).expect("the driver's log");
    assert!(logged.contains("load-key"), "the debug log holds the commands run, so its silence on the key means something");
    assert!(!logged.contains(&key) && !logged.contains(&wrong), "the key is in the driver's log");
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn encryption_from_a_secret_on_a_raw_block_zvol_brings_its_device_back_on_stage() {
    let d = driver().await;
    let scratch = Scratch::new();
    let key = "ab01".repeat(16);
    let mut req = create_request(&unique("pvc-sec"), "vms", Kind::Block.capability(), Kind::Block.size());
    req.parameters.extend(params(&[("keyformat", "hex"), ("encryption", "aes-256-ccm")]));
    req.secrets = secrets(&key);
    let volume = d.create(req).await;
    scratch.track(&volume.volume_id);
    let vol = Vol { id: volume.volume_id, kind: Kind::Block, capacity: volume.capacity_bytes, context: volume.volume_context };
    assert_eq!(zfs_get(&vol.id, "encryption").0, "aes-256-ccm");
    assert_eq!(zfs_get(&vol.id, "keyformat").0, "hex");
    let data = pattern(&vol.id);
    let (staging, target) = stage_and_publish_with(&d, &scratch, &vol, "encz", &key).await;
    write_data(Kind::Block, &target, &data);
    unpublish_and_unstage(&d, &vol, &staging, &target).await;

    as_after_a_reboot(&vol.id);
    let link = std::path::PathBuf::from(format!("/dev/zvol/{}", vol.id));
    let (staging, target) = stage_and_publish_with(&d, &scratch, &vol, "encz2", &key).await;
    assert!(link.exists(), "the zvol's device is back once its key is loaded");
    assert_data(Kind::Block, &target, &data);
    unpublish_and_unstage(&d, &vol, &staging, &target).await;
    d.delete(&vol.id).await;
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn encryption_create_refuses_a_bad_secret_and_creates_nothing() {
    let d = driver().await;
    for (extra, key, wanted) in [
        (vec![], "short", "8 to 512"),
        (vec![("keyformat", "hex")], "not-hex-not-hex-not-hex", "64 hexadecimal"),
        (vec![("keyformat", "raw")], "a-long-enough-passphrase", "raw"),
        (vec![("encryption", "off")], "a-long-enough-passphrase", "encryption is off"),
        (vec![("keyformat", "hex"), ("keylocation", "file:///tmp/k")], "a-long-enough-passphrase", "both give the key"),
    ] {
        let name = unique("pvc-sec");
        let mut req = create_request(&name, "vms", mount_capability(""), 64 * MIB);
        req.parameters.extend(params(&extra));
        req.secrets = secrets(key);
        let message = expect_code(d.controller().create_volume(req).await, Code::InvalidArgument);
        assert!(message.contains(wanted), "{extra:?}: {message}");
        assert!(!message.contains(key), "the message repeats the key");
        assert!(!dataset_exists(&format!("vms/{name}")));
    }
}

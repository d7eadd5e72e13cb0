//! ControllerModifyVolume (VolumeAttributesClass) against real ZFS, over the real socket: the
//! properties reach live volumes, mounted datasets and zvols alike; new writes use the new
//! compression; the parent's value makes a property inherited again; refused keys change
//! nothing; repeats are no-ops; and CreateVolume's `mutable_parameters`.

use std::os::unix::fs::FileExt;
use std::path::Path;

use tonic::Code;
use zfs_csi_tests::node_support::*;
use zfs_csi_tests::*;

fn modify_request(volume_id: &str, pairs: &[(&str, &str)]) -> csi::ControllerModifyVolumeRequest {
    csi::ControllerModifyVolumeRequest { volume_id: volume_id.into(), mutable_parameters: params(pairs), ..Default::default() }
}

async fn modify(d: &DriverProcess, volume_id: &str, pairs: &[(&str, &str)]) {
    d.controller()
        .controller_modify_volume(modify_request(volume_id, pairs))
        .await
        .unwrap_or_else(|e| panic!("ControllerModifyVolume {volume_id} {pairs:?}: {e}"));
}

/// Every property set on the dataset itself or inherited, with its source: what a
/// modification may change (space accounting, which moves by itself, left out).
fn settable_properties(dataset: &str) -> String {
    zfs(&["get", "-H", "-p", "-o", "property,value,source", "-s", "local,inherited,received", "all", dataset])
}

/// 4 MiB of bytes from a 16-letter alphabet in no repeating order: lz4, which only finds
/// repeats, leaves them as they are; zstd's entropy coding halves them.
fn low_entropy_data(seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..4 << 20)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            b'a' + (state >> 60) as u8
        })
        .collect()
}

/// How much `referenced` grows while `write` runs (the pool synced before and after).
fn referenced_growth(dataset: &str, write: impl FnOnce()) -> u64 {
    let pool = dataset.split('/').next().expect("pool");
    let referenced = || {
        run("zpool", &["sync", pool]).expect("zpool sync");
        zfs_get(dataset, "referenced").0.parse::<u64>().expect("referenced in bytes")
    };
    let before = referenced();
    write();
    referenced().saturating_sub(before)
}

fn write_file(path: &Path, data: &[u8]) {
    let file = std::fs::File::create(path).expect("create a file on the volume");
    file.write_all_at(data, 0).expect("write");
    file.sync_all().expect("fsync");
}

fn write_device(device: &Path, offset: u64, data: &[u8]) {
    let file = std::fs::OpenOptions::new().write(true).open(device).expect("open the block target");
    file.write_all_at(data, offset).expect("write");
    file.sync_all().expect("fsync");
}

async fn volume_context(d: &DriverProcess, volume_id: &str) -> std::collections::HashMap<String, String> {
    d.controller()
        .controller_get_volume(csi::ControllerGetVolumeRequest { volume_id: volume_id.into() })
        .await
        .expect("ControllerGetVolume")
        .into_inner()
        .volume
        .expect("volume")
        .volume_context
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn modify_compression_and_recordsize_of_a_mounted_dataset_then_back_to_the_pools_value_inherits() {
    let d = driver().await;
    let scratch = Scratch::new();
    let vol = create_volume(&d, &scratch, "ai", Kind::Dataset).await;
    let (staging, target) = stage_and_publish(&d, &scratch, &vol, "mod").await;
    assert_eq!(zfs_get(&vol.id, "compression"), ("lz4".into(), "inherited from ai".into()));
    let under_lz4 = referenced_growth(&vol.id, || write_file(&target.join("a"), &low_entropy_data(1)));

    modify(&d, &vol.id, &[("compression", "zstd"), ("recordsize", "1M")]).await;
    assert_eq!(zfs_get(&vol.id, "compression"), ("zstd".into(), "local".into()));
    assert_eq!(zfs_get(&vol.id, "recordsize"), ("1048576".into(), "local".into()));
    assert_eq!(zfs_get(&vol.id, "zfs-csi.io:mutable-parameters"), ("compression=zstd;recordsize=1048576".into(), "local".into()));
    assert_eq!(
        volume_context(&d, &vol.id).await.get("mutableParameters").map(String::as_str),
        Some("compression=zstd;recordsize=1048576")
    );
    // The same kind of data, written while mounted, after the change: zstd at work.
    let under_zstd = referenced_growth(&vol.id, || write_file(&target.join("b"), &low_entropy_data(2)));
    assert!(
        under_zstd * 4 < under_lz4 * 3,
        "4 MiB written under zstd took {under_zstd} bytes, under lz4 {under_lz4}: not compressed with zstd"
    );

    let before = settable_properties(&vol.id);
    modify(&d, &vol.id, &[("compression", "zstd"), ("recordsize", "1048576")]).await;
    assert_eq!(settable_properties(&vol.id), before, "a repeat changed something");

    modify(&d, &vol.id, &[("compression", "lz4")]).await;
    assert_eq!(zfs_get(&vol.id, "compression"), ("lz4".into(), "inherited from ai".into()), "the pool's value is inherited, not copied");
    assert_eq!(zfs_get(&vol.id, "recordsize"), ("1048576".into(), "local".into()), "keys not named are left alone");
    assert_eq!(zfs_get(&vol.id, "zfs-csi.io:mutable-parameters").0, "compression=lz4;recordsize=1048576");

    unpublish_and_unstage(&d, &vol, &staging, &target).await;
    d.delete(&vol.id).await;
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn modify_compression_of_a_zvol_in_use_leaves_recordsize_out() {
    let d = driver().await;
    let scratch = Scratch::new();
    let vol = create_volume(&d, &scratch, "vms", Kind::Block).await;
    let (staging, target) = stage_and_publish(&d, &scratch, &vol, "modz").await;
    let under_lz4 = referenced_growth(&vol.id, || write_device(&target, 0, &low_entropy_data(3)));

    modify(&d, &vol.id, &[("compression", "zstd"), ("recordsize", "1M")]).await;
    assert_eq!(zfs_get(&vol.id, "compression"), ("zstd".into(), "local".into()));
    assert_eq!(zfs_get(&vol.id, "recordsize").0, "-", "a zvol has no recordsize");
    assert_eq!(zfs_get(&vol.id, "zfs-csi.io:mutable-parameters").0, "compression=zstd", "only what applies is recorded");
    let under_zstd = referenced_growth(&vol.id, || write_device(&target, 16 << 20, &low_entropy_data(4)));
    assert!(
        under_zstd * 4 < under_lz4 * 3,
        "4 MiB written under zstd took {under_zstd} bytes, under lz4 {under_lz4}: not compressed with zstd"
    );

    modify(&d, &vol.id, &[("compression", "lz4")]).await;
    assert_eq!(zfs_get(&vol.id, "compression"), ("lz4".into(), "inherited from vms".into()));
    unpublish_and_unstage(&d, &vol, &staging, &target).await;
    d.delete(&vol.id).await;
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn modify_refuses_creation_only_unknown_and_special_keys_and_changes_nothing() {
    let d = driver().await;
    let scratch = Scratch::new();
    let vol = create_volume(&d, &scratch, "tank", Kind::Dataset).await;
    modify(&d, &vol.id, &[("atime", "off")]).await;
    let before = settable_properties(&vol.id);
    for (key, value) in [
        ("volblocksize", "64k"),
        ("encryption", "on"),
        ("keyformat", "passphrase"),
        ("keylocation", "file:///k"),
        ("fstype", "xfs"),
        ("poolname", "ai"),
        ("thinprovision", "yes"),
        ("quotatype", "quota"),
        ("shared", "yes"),
        ("XXX_FakeKey", "XXX_FakeValue"),
        ("compression", "gzip-12"),
        // The test pools have no special vdev.
        ("special_small_blocks", "64K"),
    ] {
        // With a valid key beside it: the whole request is refused, the valid key unapplied.
        let result = d.controller().controller_modify_volume(modify_request(&vol.id, &[(key, value), ("atime", "on")])).await;
        assert!(result.is_err(), "{key}={value} was accepted");
        let message = expect_code(result, Code::InvalidArgument);
        assert!(message.contains(key), "{key}: {message}");
        assert_eq!(settable_properties(&vol.id), before, "{key}={value} changed something");
    }
    d.delete(&vol.id).await;
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn modify_of_a_missing_foreign_or_unnamed_volume_is_refused() {
    let d = driver().await;
    let scratch = Scratch::new();
    expect_code(d.controller().controller_modify_volume(modify_request("", &[])).await, Code::InvalidArgument);
    for missing in ["ai/none", "non-existing-volume-id", "otherpool/pvc-1"] {
        let message = expect_code(
            d.controller().controller_modify_volume(modify_request(missing, &[("compression", "zstd")])).await,
            Code::NotFound,
        );
        assert!(message.contains(NODE_ID), "{missing}: the message names the node: {message}");
    }
    let handmade = format!("vms/{}", unique("handmade"));
    zfs(&["create", &handmade]);
    scratch.track(&handmade);
    let before = settable_properties(&handmade);
    expect_code(
        d.controller().controller_modify_volume(modify_request(&handmade, &[("compression", "zstd")])).await,
        Code::FailedPrecondition,
    );
    assert_eq!(settable_properties(&handmade), before);
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn modify_create_volume_with_mutable_parameters_applies_records_and_checks_them_on_repeat() {
    let d = driver().await;
    let name = unique("pvc-vac");
    let mut req = create_request(&name, "ai", mount_capability(""), 64 * MIB);
    req.mutable_parameters = params(&[("compression", "zstd"), ("atime", "off"), ("recordsize", "1M")]);
    let v = d.create(req.clone()).await;
    assert_eq!(zfs_get(&v.volume_id, "compression"), ("zstd".into(), "local".into()));
    assert_eq!(zfs_get(&v.volume_id, "atime"), ("off".into(), "local".into()));
    assert_eq!(v.volume_context.get("mutableParameters").map(String::as_str), Some("atime=off;compression=zstd;recordsize=1048576"));
    assert_eq!(d.create(req.clone()).await.volume_id, v.volume_id, "a repeat is the same volume");

    let mut other = req.clone();
    other.mutable_parameters = params(&[("compression", "gzip")]);
    expect_code(d.controller().create_volume(other).await, Code::AlreadyExists);
    let mut fake = create_request(&unique("pvc-vac"), "ai", mount_capability(""), 64 * MIB);
    fake.mutable_parameters = params(&[("XXX_FakeKey", "XXX_FakeValue")]);
    expect_code(d.controller().create_volume(fake).await, Code::InvalidArgument);

    // The pool's own value stays inherited at creation too.
    let inherit = unique("pvc-vac");
    let mut req = create_request(&inherit, "ai", mount_capability(""), 64 * MIB);
    req.mutable_parameters = params(&[("compression", "lz4")]);
    let w = d.create(req).await;
    assert_eq!(zfs_get(&w.volume_id, "compression"), ("lz4".into(), "inherited from ai".into()));
    d.delete(&v.volume_id).await;
    d.delete(&w.volume_id).await;
}

/// A pool of two image files, the second a special vdev; destroyed with the files on drop.
struct PoolWithSpecialVdev {
    name: String,
    _dir: tempfile::TempDir,
}

impl PoolWithSpecialVdev {
    fn create() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let name = unique("special").replace('-', "_");
        let (data, special) = (dir.path().join("data.img"), dir.path().join("special.img"));
        for image in [&data, &special] {
            std::fs::File::create(image).and_then(|f| f.set_len(256 << 20)).expect("an image file");
        }
        let (data, special) = (data.display().to_string(), special.display().to_string());
        run("zpool", &["create", "-f", &name, &data, "special", &special]).expect("zpool create with a special vdev");
        Self { name, _dir: dir }
    }
}

impl Drop for PoolWithSpecialVdev {
    fn drop(&mut self) {
        // The image files go with `dir`, after this.
        let _ = run("zpool", &["destroy", "-f", &self.name]);
    }
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn modify_special_small_blocks_on_a_pool_with_a_special_vdev() {
    let pool = PoolWithSpecialVdev::create();
    let d = DriverProcess::start(&pool.name).await;
    let v = d.create(create_request(&unique("pvc-special"), &pool.name, mount_capability(""), 64 * MIB)).await;
    modify(&d, &v.volume_id, &[("special_small_blocks", "64K")]).await;
    assert_eq!(zfs_get(&v.volume_id, "special_small_blocks"), ("65536".into(), "local".into()));
    modify(&d, &v.volume_id, &[("special_small_blocks", "0")]).await;
    assert_eq!(zfs_get(&v.volume_id, "special_small_blocks"), ("0".into(), "default".into()), "the pool's own value: inherited again");
    d.delete(&v.volume_id).await;
}

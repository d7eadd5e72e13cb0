//! The operator commands against real ZFS: `zfs-csi import` of an ext4 zvol, a raw zvol and a
//! plain dataset made outside the driver, whose printed PV the driver then stages and
//! publishes with the data intact and the dataset unchanged; its refusals and exit codes; and
//! `zfs-csi volumes`/`snapshots` compared with `zfs get`.

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use zfs_csi::csi::volume_capability::access_mode::Mode;
use zfs_csi_tests::node_support::*;
use zfs_csi_tests::*;

const PARENTS: &str = "ai,vms,tank";

/// Runs `zfs-csi args…` with only `env` of the driver's variables set: (exit code, stdout,
/// stderr).
fn cli_with_env(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut command = Command::new(driver_binary());
    for var in ["NODE_ID", "NODE_NAME", "CSI_DRIVER_NAME", "ZFS_CSI_PARENTS", "ZFS_CSI_COMMAND_PREFIX", "ZFS_CSI_COMMAND_TIMEOUT"] {
        command.env_remove(var);
    }
    let out = command.args(args).envs(env.iter().copied()).output().expect("run zfs-csi");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn cli(args: &[&str]) -> (i32, String, String) {
    cli_with_env(args, &[])
}

/// `zfs-csi import DATASET -o json` (flags after it), expected to succeed: the PV and the PVC,
/// and what it said on standard error.
fn import_json(dataset: &str, flags: &[&str]) -> (Value, Value, String) {
    let mut args = vec!["import", dataset, "-o", "json", "--parents", PARENTS, "--node", NODE_ID];
    args.extend_from_slice(flags);
    let (code, stdout, stderr) = cli(&args);
    assert_eq!(code, 0, "zfs-csi {args:?} failed: {stderr}");
    let list: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"));
    keep_yaml_for_validation(dataset, &args);
    assert_eq!(list["kind"], "List", "{list}");
    let items = list["items"].as_array().expect("items");
    assert_eq!(items.len(), 2, "{list}");
    (items[0].clone(), items[1].clone(), stderr)
}

/// Runs the same import with YAML output and leaves it in `$ZFS_CSI_TEST_OUT/import/` (set in
/// the VM), where hack/test.sh validates it against the Kubernetes schemas.
fn keep_yaml_for_validation(dataset: &str, json_args: &[&str]) {
    let args: Vec<&str> = json_args.iter().map(|a| if *a == "json" { "yaml" } else { a }).collect();
    let (code, yaml, stderr) = cli(&args);
    assert_eq!(code, 0, "zfs-csi {args:?} failed: {stderr}");
    assert!(yaml.contains(&format!("volumeHandle: {dataset}\n")), "{yaml}");
    if let Some(out) = std::env::var_os("ZFS_CSI_TEST_OUT") {
        let dir = Path::new(&out).join("import");
        std::fs::create_dir_all(&dir).expect("create the output directory");
        let file = dir.join(format!("{}.yaml", unique(&dataset.replace('/', "_"))));
        std::fs::write(&file, yaml).unwrap_or_else(|e| panic!("writing {}: {e}", file.display()));
    }
}

/// Every property of `dataset` with its source, after the pool has written out everything;
/// less `available`, which the other tests' writes to the pool move.
fn all_properties(dataset: &str) -> String {
    run("zpool", &["sync", dataset.split('/').next().unwrap()]).expect("zpool sync");
    let all = zfs(&["get", "-H", "-p", "-o", "property,value,source", "all", dataset]);
    all.lines().filter(|l| !l.starts_with("available\t")).collect::<Vec<_>>().join("\n")
}

/// The settable properties (those with a source): what a mount or a write must not change,
/// unlike `used` or `written`.
fn settable_properties(dataset: &str) -> String {
    all_properties(dataset).lines().filter(|l| !l.ends_with("\t-")).collect::<Vec<_>>().join("\n")
}

/// What every printed PV and PVC of `dataset` must say whatever it holds.
#[track_caller]
fn assert_binds_on_this_node(pv: &Value, pvc: &Value, dataset: &str, capacity: &str, volume_mode: &str) {
    assert_eq!(pv["apiVersion"], "v1");
    assert_eq!(pv["kind"], "PersistentVolume");
    let spec = &pv["spec"];
    assert_eq!(spec["csi"]["driver"], DRIVER_NAME, "{pv}");
    assert_eq!(spec["csi"]["volumeHandle"], dataset, "{pv}");
    assert_eq!(spec["volumeMode"], volume_mode, "{pv}");
    assert_eq!(spec["capacity"]["storage"], capacity, "{pv}");
    assert_eq!(spec["persistentVolumeReclaimPolicy"], "Retain", "{pv}");
    assert_eq!(spec["accessModes"], serde_json::json!(["ReadWriteOnce"]), "{pv}");
    assert_eq!(spec["storageClassName"], "", "{pv}");
    let expression = &spec["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0];
    assert_eq!(expression["key"], format!("{DRIVER_NAME}/node"), "{pv}");
    assert_eq!(expression["operator"], "In");
    assert_eq!(expression["values"], serde_json::json!([NODE_ID]));
    assert_eq!(pvc["kind"], "PersistentVolumeClaim");
    assert_eq!(spec["claimRef"]["name"], pvc["metadata"]["name"], "{pv}\n{pvc}");
    assert_eq!(spec["claimRef"]["namespace"], pvc["metadata"]["namespace"]);
    assert_eq!(pvc["spec"]["volumeName"], pv["metadata"]["name"], "{pvc}");
    assert_eq!(pvc["spec"]["volumeMode"], volume_mode);
    assert_eq!(pvc["spec"]["storageClassName"], "");
    assert_eq!(pvc["spec"]["resources"]["requests"]["storage"], capacity);
}

/// The capability kubelet builds from the PV: raw block for volumeMode Block, else a mount
/// with the PV's fsType; ReadWriteOnce is SINGLE_NODE_MULTI_WRITER (the driver offers it),
/// ReadWriteOncePod SINGLE_NODE_SINGLE_WRITER.
fn capability_of(pv: &Value) -> csi::VolumeCapability {
    let capability = match pv["spec"]["volumeMode"].as_str() {
        Some("Block") => block_capability(),
        _ => mount_capability(pv["spec"]["csi"]["fsType"].as_str().unwrap_or("")),
    };
    let mode = match pv["spec"]["accessModes"][0].as_str() {
        Some("ReadWriteOncePod") => Mode::SingleNodeSingleWriter,
        _ => Mode::SingleNodeMultiWriter,
    };
    with_mode(capability, mode)
}

/// NodeStageVolume and NodePublishVolume as kubelet makes them for the printed PV.
async fn stage_and_publish_pv(d: &DriverProcess, scratch: &Scratch, pv: &Value) -> (std::path::PathBuf, std::path::PathBuf) {
    let volume_id = pv["spec"]["csi"]["volumeHandle"].as_str().expect("volumeHandle").to_string();
    let staging = scratch.path("pv-staging");
    let target = scratch.path("pv-target");
    d.node()
        .node_stage_volume(csi::NodeStageVolumeRequest {
            volume_id: volume_id.clone(),
            staging_target_path: staging.display().to_string(),
            volume_capability: Some(capability_of(pv)),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("NodeStageVolume of the printed PV {volume_id}: {e}"));
    d.node()
        .node_publish_volume(csi::NodePublishVolumeRequest {
            volume_id: volume_id.clone(),
            staging_target_path: staging.display().to_string(),
            target_path: target.display().to_string(),
            volume_capability: Some(capability_of(pv)),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("NodePublishVolume of the printed PV {volume_id}: {e}"));
    (staging, target)
}

async fn unpublish_and_unstage_pv(d: &DriverProcess, pv: &Value, staging: &Path, target: &Path) {
    let volume_id = pv["spec"]["csi"]["volumeHandle"].as_str().expect("volumeHandle");
    unpublish(d, volume_id, target).await;
    unstage(d, volume_id, staging).await;
}

// ---- import -------------------------------------------------------------------------------

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn import_of_an_ext4_zvol_prints_a_filesystem_pv_the_driver_serves() {
    let d = DriverProcess::start(PARENTS).await;
    let scratch = Scratch::new();
    let (raw, _device, data) = create_foreign_ext4_zvol(&scratch, "Import_Ext4");

    let before = all_properties(&raw.id);
    // As `kubectl exec` into the node pod runs it: everything from the pod's environment.
    let env = [("ZFS_CSI_PARENTS", PARENTS), ("NODE_ID", NODE_ID)];
    let (code, yaml, stderr) = cli_with_env(&["import", &raw.id], &env);
    assert_eq!(code, 0, "{stderr}");
    assert!(yaml.contains(&format!("volumeHandle: {}\n", raw.id)), "{yaml}");
    assert!(yaml.contains("fsType: ext4\n") && yaml.contains("\n---\n"), "{yaml}");
    let (pv, pvc, _) = import_json(&raw.id, &[]);
    assert_eq!(all_properties(&raw.id), before, "import changed {}", raw.id);

    assert_binds_on_this_node(&pv, &pvc, &raw.id, "128Mi", "Filesystem");
    assert_eq!(pv["spec"]["csi"]["fsType"], "ext4");
    // The default names: the last component for the claim, the whole name for the PV.
    let component = raw.id.rsplit('/').next().unwrap().to_ascii_lowercase().replace('_', "-");
    assert_eq!(pvc["metadata"]["name"], component.as_str());
    assert_eq!(pvc["metadata"]["namespace"], "default");
    assert_eq!(pv["metadata"]["name"], format!("vms-{component}"));

    let settable = settable_properties(&raw.id);
    let (staging, target) = stage_and_publish_pv(&d, &scratch, &pv).await;
    assert_eq!(mounts_at(&target)[0].fs_type, "ext4");
    assert_data(Kind::Ext4, &target, &data);
    unpublish_and_unstage_pv(&d, &pv, &staging, &target).await;
    scratch.assert_nothing_mounted();
    assert_eq!(settable_properties(&raw.id), settable, "serving the import changed {}'s properties", raw.id);
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn import_of_a_raw_zvol_prints_a_block_pv_that_keeps_its_bytes() {
    let d = DriverProcess::start(PARENTS).await;
    let scratch = Scratch::new();
    let (raw, device) = create_foreign_zvol(&scratch, "import-raw", "64M");
    let data = pattern(&raw.id);
    write_data(Kind::Block, &device, &data);
    assert_eq!(blkid(&device), "", "the pattern must not look like a filesystem to blkid");
    let checksum = sha256(&device);

    let before = all_properties(&raw.id);
    let (pv, pvc, stderr) = import_json(&raw.id, &["--name", "vm-disk", "--namespace", "vms", "--pv-name", "vm-disk-pv"]);
    assert_eq!(all_properties(&raw.id), before, "import changed {}", raw.id);
    assert!(stderr.contains("raw block"), "no note on what was found: {stderr}");

    assert_binds_on_this_node(&pv, &pvc, &raw.id, "64Mi", "Block");
    assert!(pv["spec"]["csi"].get("fsType").is_none(), "a block PV has no fsType: {pv}");
    assert_eq!(pvc["metadata"], serde_json::json!({"name": "vm-disk", "namespace": "vms"}));
    assert_eq!(pv["metadata"]["name"], "vm-disk-pv");

    let settable = settable_properties(&raw.id);
    let (staging, target) = stage_and_publish_pv(&d, &scratch, &pv).await;
    assert_data(Kind::Block, &target, &data);
    unpublish_and_unstage_pv(&d, &pv, &staging, &target).await;
    scratch.assert_nothing_mounted();
    assert_eq!(sha256(&device), checksum, "serving the import changed the bytes of {}", raw.id);
    assert_eq!(settable_properties(&raw.id), settable);
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn import_of_a_plain_dataset_prints_a_zfs_pv_sized_by_its_quota_or_free_space() {
    let d = DriverProcess::start(PARENTS).await;
    let scratch = Scratch::new();
    // As an operator's dataset is: mounted by ZFS at its default mountpoint.
    let id = format!("tank/{}", unique("media-library"));
    zfs(&["create", &id]);
    scratch.track(&id);
    let mountpoint = zfs_get(&id, "mountpoint").0;
    let data = pattern(&id);
    write_data(Kind::Dataset, Path::new(&mountpoint), &data);

    let before = all_properties(&id);
    let (pv, pvc, stderr) = import_json(&id, &["--access-mode", "ReadWriteOnce"]);
    let after = all_properties(&id);
    assert_eq!(after, before, "import changed {id}");
    // No quota: what df shows, referenced + available, in whole MiB.
    assert!(stderr.contains("no refquota or quota"), "{stderr}");
    assert!(stderr.contains(&format!("mounted on the host at {mountpoint}")), "{stderr}");
    let property = |name: &str| -> i64 { zfs_get(&id, name).0.parse().unwrap() };
    let df_size = (property("referenced") + property("available")) / MIB * MIB;
    let printed = pv["spec"]["capacity"]["storage"].as_str().expect("capacity").to_string();
    let printed_bytes = quantity_bytes(&printed);
    // Other tests write to the pools meanwhile: available moves a little.
    assert!((printed_bytes - df_size).abs() <= 64 * MIB, "capacity {printed} is not about {df_size}");
    assert_binds_on_this_node(&pv, &pvc, &id, &printed, "Filesystem");
    assert_eq!(pv["spec"]["csi"]["fsType"], "zfs");

    let settable = settable_properties(&id);
    let (staging, target) = stage_and_publish_pv(&d, &scratch, &pv).await;
    assert_eq!(mounts_at(&target)[0].fs_type, "zfs");
    assert_data(Kind::Dataset, &target, &data);
    unpublish_and_unstage_pv(&d, &pv, &staging, &target).await;
    assert_eq!(settable_properties(&id), settable, "serving the import changed {id}'s properties");

    // With a refquota, that is the size, exactly.
    zfs(&["set", "refquota=256M", &id]);
    let (pv, pvc, _) = import_json(&id, &[]);
    assert_binds_on_this_node(&pv, &pvc, &id, "256Mi", "Filesystem");
    zfs(&["destroy", &id]);
}

/// A quantity as import prints it (`<n>Mi`, `<n>Gi`, … or bytes) in bytes.
fn quantity_bytes(quantity: &str) -> i64 {
    for (unit, shift) in [("Ki", 10), ("Mi", 20), ("Gi", 30), ("Ti", 40)] {
        if let Some(number) = quantity.strip_suffix(unit) {
            return number.parse::<i64>().expect("a number") << shift;
        }
    }
    quantity.parse().expect("bytes")
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn import_refuses_pool_roots_parents_outsiders_and_missing_datasets() {
    let parent = format!("tank/{}", unique("import-parent"));
    zfs(&["create", &parent]);
    let outside = format!("ai/{}", unique("import-outside"));
    zfs(&["create", &outside]);
    let parents = format!("vms,{parent}");
    let missing = format!("vms/{}", unique("import-missing"));
    let cases: [(&str, i32, &str); 5] = [
        ("vms", 2, "root of pool vms"),
        (&parent, 2, "one of the parents"),
        (&outside, 2, "outside the parents"),
        (&missing, 1, "does not exist"),
        ("vms/a@b", 2, "is a snapshot"),
    ];
    for (dataset, expected_code, message) in cases {
        let before = run("zfs", &["get", "-H", "-p", "all", dataset]).unwrap_or_default();
        let (code, stdout, stderr) = cli(&["import", dataset, "--parents", &parents, "--node", NODE_ID]);
        assert_eq!(code, expected_code, "import {dataset}: {stderr}");
        assert!(stdout.is_empty(), "import {dataset} printed {stdout}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "not one line: {stderr:?}");
        assert!(stderr.contains(message) && stderr.contains(dataset), "import {dataset}: {stderr:?} does not say {message:?}");
        assert_eq!(run("zfs", &["get", "-H", "-p", "all", dataset]).unwrap_or_default(), before);
    }
    // Usage errors are 2 as well: no node known, a mode the driver cannot serve, a bad name.
    let (code, _, stderr) = cli(&["import", &format!("{parent}/x"), "--parents", &parents]);
    assert_eq!((code, stderr.contains("--node")), (2, true), "{stderr}");
    for bad in [["--access-mode", "ReadWriteMany"], ["--name", "Not_A_Name"], ["--namespace", "a.b"]] {
        let mut args = vec!["import", "vms/x", "--parents", "vms", "--node", "n"];
        args.extend_from_slice(&bad);
        let (code, _, stderr) = cli(&args);
        assert_eq!(code, 2, "{bad:?}: {stderr}");
        assert!(stderr.contains(bad[0]), "{bad:?}: {stderr}");
    }
    // Through the command prefix: a prefix that cannot run zfs fails the read (exit 1).
    let (code, _, stderr) = cli(&["import", &format!("{parent}/x"), "--parents", &parents, "--node", "n", "--command-prefix", "/nonexistent/wrapper"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("could not run") && stderr.contains("--command-prefix \"/nonexistent/wrapper\""), "{stderr}");
    zfs(&["destroy", &parent]);
    zfs(&["destroy", &outside]);
}

// ---- volumes and snapshots ----------------------------------------------------------------

fn list_json(command: &str) -> Vec<Value> {
    let (code, stdout, stderr) = cli(&[command, "-o", "json", "--parents", PARENTS]);
    assert_eq!(code, 0, "zfs-csi {command}: {stderr}");
    serde_json::from_str::<Value>(&stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
        .as_array()
        .expect("a JSON array")
        .clone()
}

fn entry<'a>(entries: &'a [Value], key: &str, name: &str) -> Option<&'a Value> {
    entries.iter().find(|e| e[key] == name)
}

/// A volume's entry agrees with what `zfs get` says of it.
#[track_caller]
fn assert_matches_zfs(entry: &Value, dataset: &str) {
    let number = |property: &str| -> u64 { zfs_get(dataset, property).0.parse().unwrap() };
    assert_eq!(entry["used_bytes"], number("used"), "{entry}");
    assert_eq!(entry["referenced_bytes"], number("referenced"), "{entry}");
    let ratio: f64 = zfs_get(dataset, "compressratio").0.trim_end_matches('x').parse().unwrap();
    assert_eq!(entry["compressratio"].as_f64(), Some(ratio), "{entry}");
    let capacity = match entry["kind"].as_str() {
        Some("zvol") => number("volsize"),
        _ if number("refquota") > 0 => number("refquota"),
        _ => number("quota"),
    };
    assert_eq!(entry["capacity_bytes"], capacity, "{entry}");
    let snapshots = zfs(&["list", "-H", "-d", "1", "-t", "snapshot", "-o", "name", dataset]).lines().count();
    assert_eq!(entry["snapshots"], snapshots, "{entry}");
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn volumes_and_snapshots_list_the_drivers_datasets_as_zfs_sees_them() {
    let d = DriverProcess::start(PARENTS).await;
    let scratch = Scratch::new();
    let mut req = create_request(&unique("pvc-list"), "ai", mount_capability(""), 64 * MIB);
    req.parameters.extend(params(&[
        ("csi.storage.k8s.io/pvc/name", "data"),
        ("csi.storage.k8s.io/pvc/namespace", "media"),
        ("csi.storage.k8s.io/pv/name", "pvc-list-pv"),
    ]));
    let fs = d.create(req).await;
    scratch.track(&fs.volume_id);
    let zvol = d.create(create_request(&unique("pvc-list-zvol"), "vms", block_capability(), 32 * MIB)).await;
    scratch.track(&zvol.volume_id);
    // Data, so that used and the compression ratio are more than an empty dataset's.
    let (staging, target) = stage_and_publish(&d, &scratch, &Vol { id: fs.volume_id.clone(), kind: Kind::Dataset, capacity: fs.capacity_bytes, context: fs.volume_context.clone() }, "fs").await;
    std::fs::write(target.join("text"), "compressible ".repeat(100_000)).unwrap();
    unpublish(&d, &fs.volume_id, &target).await;
    unstage(&d, &fs.volume_id, &staging).await;
    let snapshot_name = unique("snapshot-list");
    let snap = d.snapshot(&fs.volume_id, &snapshot_name).await;
    let mut clone_req = create_request(&unique("pvc-list-clone"), "ai", mount_capability(""), 0);
    clone_req.volume_content_source = snapshot_source(&snap.snapshot_id);
    let clone = d.create(clone_req).await;
    scratch.track(&clone.volume_id);
    // Not the driver's: a dataset beside its volumes, one below a volume (it inherits the
    // marker) and an operator's snapshot of a volume (also inherited).
    let foreign = format!("ai/{}", unique("foreign"));
    zfs(&["create", &foreign]);
    scratch.track(&foreign);
    let child = format!("{}/child", fs.volume_id);
    zfs(&["create", &child]);
    let operator_snapshot = format!("{}@operator", fs.volume_id);
    zfs(&["snapshot", &operator_snapshot]);
    run("zpool", &["sync"]).expect("zpool sync");

    let volumes = list_json("volumes");
    let listed = entry(&volumes, "dataset", &fs.volume_id).unwrap_or_else(|| panic!("{} not listed: {volumes:?}", fs.volume_id));
    assert_matches_zfs(listed, &fs.volume_id);
    assert_eq!(listed["snapshots"], 2, "the driver's and the operator's: {listed}");
    assert!(listed["compressratio"].as_f64().unwrap() > 1.5, "{listed}");
    assert_eq!(listed["pvc_namespace"], "media");
    assert_eq!(listed["pvc_name"], "data");
    assert_eq!(listed["pv_name"], "pvc-list-pv");
    assert_eq!(listed["kind"], "filesystem");
    assert_eq!(listed["deletion_pending"], false);
    let listed_zvol = entry(&volumes, "dataset", &zvol.volume_id).expect("the zvol is listed");
    assert_matches_zfs(listed_zvol, &zvol.volume_id);
    assert_eq!(listed_zvol["kind"], "zvol");
    let listed_clone = entry(&volumes, "dataset", &clone.volume_id).expect("the clone is listed");
    assert_eq!(listed_clone["origin"], snap.snapshot_id.as_str());
    assert_matches_zfs(listed_clone, &clone.volume_id);
    for other in [&foreign, &child] {
        assert!(entry(&volumes, "dataset", other).is_none(), "{other} is not the driver's: {volumes:?}");
    }

    let snapshots = list_json("snapshots");
    let listed_snap = entry(&snapshots, "snapshot", &snap.snapshot_id).unwrap_or_else(|| panic!("{snapshots:?}"));
    assert_eq!(listed_snap["volume"], fs.volume_id.as_str());
    assert_eq!(listed_snap["csi_name"], snapshot_name.as_str());
    assert_eq!(listed_snap["clones"], serde_json::json!([clone.volume_id]));
    assert_eq!(listed_snap["restore_size_bytes"], snap.size_bytes);
    assert_eq!(listed_snap["creation_unix"], zfs_get(&snap.snapshot_id, "creation").0.parse::<i64>().unwrap());
    assert_eq!(listed_snap["deletion_pending"], false);
    assert!(entry(&snapshots, "snapshot", &operator_snapshot).is_none(), "the operator's snapshot is listed: {snapshots:?}");

    // The tables name the same.
    let (code, table, stderr) = cli(&["volumes", "--parents", PARENTS]);
    assert_eq!(code, 0, "{stderr}");
    let row = table.lines().find(|l| l.contains(&fs.volume_id)).unwrap_or_else(|| panic!("{table}"));
    assert!(table.starts_with("PVC ") && row.starts_with("media/data "), "{table}");
    let (code, table, stderr) = cli(&["snapshots", "--parents", PARENTS]);
    assert_eq!(code, 0, "{stderr}");
    assert!(table.lines().any(|l| l.starts_with(&snap.snapshot_id) && l.contains(&snapshot_name)), "{table}");

    // Deleted while its snapshot exists: kept, and shown as waiting.
    zfs(&["destroy", &operator_snapshot]);
    zfs(&["destroy", &child]);
    d.delete(&fs.volume_id).await;
    let volumes = list_json("volumes");
    let listed = entry(&volumes, "dataset", &fs.volume_id).expect("a volume waiting for its snapshot is listed");
    assert_eq!(listed["deletion_pending"], true, "{listed}");

    d.delete(&clone.volume_id).await;
    d.delete_snapshot(&snap.snapshot_id).await;
    d.delete(&zvol.volume_id).await;
    let volumes = list_json("volumes");
    for gone in [&fs.volume_id, &clone.volume_id, &zvol.volume_id] {
        assert!(entry(&volumes, "dataset", gone).is_none(), "{gone} still listed");
    }
}

//! The driver in its deployed shape, against real ZFS in the VM: zfs-csi started the way the
//! DaemonSet starts it (hack/vm/container-launch.sh: its own mount namespace, a root without
//! the ZFS userland, hostPID, `nsenter --target 1 --mount --` before every zfs/zpool, the
//! kubelet directory shared with Bidirectional propagation, PATH from deploy/base/node.yaml).
//! The node lifecycle must work there: the driver's mounts appear in the host's namespace,
//! zvols created after it started are usable, and a host that keeps zfs where NixOS does is
//! reached through the manifest's PATH.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use tonic::Code;
use zfs_csi_tests::node_support::*;
use zfs_csi_tests::*;

fn mount_namespace(pid: u32) -> std::path::PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/mnt")).expect("the mount namespace of a process")
}

/// Stage, publish, write, expand, an in-use DeleteVolume, unpublish, unstage, delete; every
/// mount checked from the host's namespace (this test's).
async fn lifecycle_in_the_deployed_shape(d: &DriverProcess, kind: Kind) {
    let scratch = Scratch::new();
    let vol = create_volume(d, &scratch, "vms", kind).await;
    let (staging, target) = stage_and_publish(d, &scratch, &vol, "deployed").await;
    if kind != Kind::Block {
        assert!(is_mount_point(&staging), "the driver's staging mount is not visible on the host");
    }
    assert!(is_mount_point(&target), "the driver's publish is not visible on the host");
    let data = pattern(&vol.id);
    write_data(kind, &target, &data);
    let grown = vol.capacity + 64 * MIB;
    let response = expand(d, &vol, &staging, &target, grown).await.expect("NodeExpandVolume").into_inner();
    assert_eq!(response.capacity_bytes, grown);
    if kind == Kind::Block {
        assert_eq!(visible_size(kind, &target), grown);
    }
    assert_data(kind, &target, &data);
    let in_use = d.controller().delete_volume(csi::DeleteVolumeRequest { volume_id: vol.id.clone(), ..Default::default() }).await;
    expect_code(in_use, Code::FailedPrecondition);
    unpublish_and_unstage(d, &vol, &staging, &target).await;
    scratch.assert_nothing_mounted();
    d.delete(&vol.id).await;
    assert!(!dataset_exists(&vol.id));
}

async fn containerized_driver(host_pid: u32) -> DriverProcess {
    let d = DriverProcess::start_in_container("ai,vms,tank", host_pid).await;
    assert_ne!(mount_namespace(d.pid()), mount_namespace(std::process::id()), "the driver must run in a mount namespace of its own");
    let root = std::env::var("ZFS_CSI_CONTAINER_ROOT").expect("ZFS_CSI_CONTAINER_ROOT");
    assert!(!Path::new(&root).join("usr/sbin/zfs").exists(), "the container root must not carry the ZFS userland");
    d
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn deployed_shape_dataset_lifecycle() {
    let d = containerized_driver(1).await;
    lifecycle_in_the_deployed_shape(&d, Kind::Dataset).await;
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn deployed_shape_ext4_zvol_lifecycle() {
    let d = containerized_driver(1).await;
    lifecycle_in_the_deployed_shape(&d, Kind::Ext4).await;
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn deployed_shape_raw_block_zvol_lifecycle() {
    let d = containerized_driver(1).await;
    lifecycle_in_the_deployed_shape(&d, Kind::Block).await;
}

/// A process standing for a NixOS host: in its mount namespace `zfs` and `zpool` live only in
/// /run/current-system/sw/bin (the usual places are empty). Killed when dropped.
struct NixosLikeHost(Child);

impl NixosLikeHost {
    fn start() -> Self {
        // The binaries are copied to the root filesystem (/run is mounted noexec here, unlike
        // the /nix/store that NixOS's /run/current-system points into).
        let script = r#"
            set -e
            mkdir -p /var/tmp/nixos-like/bin
            for tool in zfs zpool; do cp "$(command -v $tool)" /var/tmp/nixos-like/bin/; done
            mount --make-rprivate /
            mkdir -p /run/current-system/sw/bin
            mount --bind /var/tmp/nixos-like/bin /run/current-system/sw/bin
            for tool in zfs zpool; do mount --bind /dev/null "/usr/sbin/$tool"; done
            echo ready
            exec sleep 3600
        "#;
        let mut child = Command::new("unshare")
            .args(["--mount", "--", "bash", "-c", script])
            .stdout(Stdio::piped())
            .spawn()
            .expect("unshare");
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
        assert_eq!(line.trim(), "ready", "the NixOS-like host did not start");
        NixosLikeHost(child)
    }
}

impl Drop for NixosLikeHost {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// With the manifest's PATH the driver finds zfs where NixOS keeps it; the VM's own host keeps
/// working too. (Without /run/current-system/sw/bin in PATH, every call would fail with
/// UNAVAILABLE: `could not run zfs`.)
#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn deployed_shape_finds_zfs_on_a_nixos_like_host() {
    let host = NixosLikeHost::start();
    let ok = run("nsenter", &["--target", &host.0.id().to_string(), "--mount", "--", "/usr/sbin/zfs", "version"]);
    assert!(ok.is_err(), "the NixOS-like host still has /usr/sbin/zfs");
    let d = containerized_driver(host.0.id()).await;
    let probe = d.identity().probe(csi::ProbeRequest {}).await.expect("Probe").into_inner();
    assert_eq!(probe.ready, Some(true), "the driver did not reach zfs through the manifest's PATH");
    lifecycle_in_the_deployed_shape(&d, Kind::Dataset).await;
}

//! Identity service and process lifecycle, over the real socket, against real ZFS.

use zfs_csi_tests::*;


#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn plugin_info_names_the_driver_and_its_version() {
    let driver = DriverProcess::start("ai,vms,tank").await;
    let info = driver.identity().get_plugin_info(csi::GetPluginInfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.name, DRIVER_NAME);
    assert_eq!(info.vendor_version, env!("CARGO_PKG_VERSION"));
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn plugin_capabilities_are_controller_topology_and_online_expansion() {
    use csi::plugin_capability::{service, volume_expansion, Type};
    let driver = DriverProcess::start("vms").await;
    let caps = driver.identity().get_plugin_capabilities(csi::GetPluginCapabilitiesRequest {}).await.unwrap().into_inner();
    let mut services = Vec::new();
    let mut expansion = Vec::new();
    for cap in caps.capabilities {
        match cap.r#type.unwrap() {
            Type::Service(s) => services.push(s.r#type),
            Type::VolumeExpansion(e) => expansion.push(e.r#type),
        }
    }
    services.sort();
    assert_eq!(
        services,
        [service::Type::ControllerService as i32, service::Type::VolumeAccessibilityConstraints as i32]
    );
    assert_eq!(expansion, [volume_expansion::Type::Online as i32]);
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn probe_is_ready_when_the_parents_exist() {
    let driver = DriverProcess::start("ai,vms,tank").await;
    let probe = driver.identity().probe(csi::ProbeRequest {}).await.unwrap().into_inner();
    assert_eq!(probe.ready, Some(true));
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn probe_is_ready_when_at_least_one_parent_exists() {
    let driver = DriverProcess::start("vms,nopool-probe").await;
    let probe = driver.identity().probe(csi::ProbeRequest {}).await.unwrap().into_inner();
    assert_eq!(probe.ready, Some(true));
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn probe_fails_naming_the_missing_parents() {
    let driver = DriverProcess::start("nopool-a,vms/no-such-parent").await;
    let message = expect_code(driver.identity().probe(csi::ProbeRequest {}).await, tonic::Code::FailedPrecondition);
    assert!(message.contains("nopool-a") && message.contains("vms/no-such-parent"), "{message}");
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn probe_fails_when_the_zfs_command_is_unreachable() {
    let driver = DriverProcess::start_with(&["--parents", "vms", "--command-prefix", "/nonexistent/nsenter"]).await;
    let message = expect_code(driver.identity().probe(csi::ProbeRequest {}).await, tonic::Code::FailedPrecondition);
    assert!(message.contains("zfs"), "{message}");
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn sigterm_stops_gracefully_and_removes_the_socket() {
    let driver = DriverProcess::start("vms").await;
    let socket = driver.socket.clone();
    let status = driver.terminate().await;
    assert!(status.success(), "exit status {status:?}");
    assert!(!socket.exists(), "socket {} left behind", socket.display());
}

#[tokio::test]
#[ignore = "needs real ZFS: run by hack/test.sh inside the test VM"]
async fn a_stale_socket_is_replaced_on_start() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("csi.sock");
    let first = DriverProcess::start_on(tempfile::tempdir().unwrap(), socket.clone(), &["--parents", "vms"]).await;
    // SIGKILL: no chance to clean up, so the socket file stays.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(first.pid() as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(socket.exists());
    let second = DriverProcess::start_on(dir, socket.clone(), &["--parents", "vms"]).await;
    let channel = connect(&socket).await;
    let info = csi::identity_client::IdentityClient::new(channel)
        .get_plugin_info(csi::GetPluginInfoRequest {})
        .await
        .unwrap();
    assert_eq!(info.into_inner().name, DRIVER_NAME);
    drop(second);
    drop(first);
}

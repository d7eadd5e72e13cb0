//! The binary's command line: bad input gives one line on stderr and a non-zero exit. These
//! need no ZFS and run on the host.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use zfs_csi_tests::{connect, csi, driver_binary};

fn run(args: &[&str]) -> (i32, String, String) {
    run_with_env(args, &[])
}

/// Runs the binary with `env` set and no LOG_LEVEL or other flag variable inherited.
fn run_with_env(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut command = Command::new(driver_binary());
    for var in ["CSI_ENDPOINT", "NODE_ID", "NODE_NAME", "CSI_DRIVER_NAME", "ZFS_CSI_PARENTS", "ZFS_CSI_COMMAND_PREFIX",
        "ZFS_CSI_COMMAND_TIMEOUT", "LOG_FORMAT", "LOG_LEVEL"]
    {
        command.env_remove(var);
    }
    let out = command.args(args).envs(env.iter().copied()).output().expect("run zfs-csi");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[track_caller]
fn assert_one_line_failure(args: &[&str], mentions: &str) {
    assert_one_line_failure_with_env(args, &[], mentions);
}

#[track_caller]
fn assert_one_line_failure_with_env(args: &[&str], env: &[(&str, &str)], mentions: &str) {
    let (code, _, stderr) = run_with_env(args, env);
    assert_ne!(code, 0, "{args:?} with {env:?} succeeded");
    assert_eq!(stderr.trim_end().lines().count(), 1, "not one line: {stderr:?}");
    assert!(stderr.contains(mentions), "{stderr:?} does not mention {mentions:?}");
}

#[test]
fn unknown_flag_is_one_line_and_non_zero() {
    assert_one_line_failure(&["--node-id", "n", "--parents", "vms", "--no-such-flag"], "--no-such-flag");
}

#[test]
fn malformed_endpoint_is_one_line_and_non_zero() {
    assert_one_line_failure(&["--node-id", "n", "--parents", "vms", "--endpoint", "unix:relative.sock"], "endpoint");
    assert_one_line_failure(&["--node-id", "n", "--parents", "vms", "--endpoint", "tcp://nohost"], "endpoint");
}

#[test]
fn unwritable_socket_directory_is_one_line_and_non_zero() {
    // /proc refuses new directories even to root.
    assert_one_line_failure(
        &["--node-id", "n", "--parents", "vms", "--endpoint", "unix:///proc/zfs-csi-test/csi.sock"],
        "/proc/zfs-csi-test",
    );
}

#[test]
fn hostile_parent_is_refused() {
    assert_one_line_failure(&["--node-id", "n", "--parents", "vms/../etc"], "parents");
}

#[test]
fn missing_required_flags_are_named() {
    assert_one_line_failure(&["--node-id", "n"], "--parents");
}

#[test]
fn help_explains_every_flag() {
    let (code, stdout, _) = run(&["--help"]);
    assert_eq!(code, 0);
    for flag in [
        "--endpoint", "--node-id", "--driver-name", "--parents", "--command-prefix",
        "--command-timeout", "--log-format", "--log-level", "--print-config",
    ] {
        assert!(stdout.contains(flag), "--help does not explain {flag}");
    }
    for env in ["CSI_ENDPOINT", "NODE_ID", "ZFS_CSI_PARENTS", "ZFS_CSI_COMMAND_PREFIX"] {
        assert!(stdout.contains(env), "--help does not name {env}");
    }
}

#[test]
fn print_config_shows_the_effective_configuration() {
    let (code, stdout, _) = run(&["--node-id", "n1", "--parents", "ai,vms", "--endpoint", "tcp://127.0.0.1:9999"]
        .iter()
        .chain(&["--print-config"])
        .copied()
        .collect::<Vec<_>>());
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(json["parents"], serde_json::json!(["ai", "vms"]));
    assert_eq!(json["node_id"], "n1");
    assert_eq!(json["endpoint"], "tcp://127.0.0.1:9999");
}

#[test]
fn misspelled_log_level_is_refused() {
    let flags = ["--node-id", "n", "--parents", "vms", "--log-level", "debg"];
    assert_one_line_failure(&flags, "\"debg\" is not a log level");
}

#[test]
fn print_config_refuses_a_misspelled_log_level() {
    let (code, stdout, stderr) = run(&["--node-id", "n", "--parents", "vms", "--log-level", "debg", "--print-config"]);
    assert_ne!(code, 0, "printed {stdout}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.contains("debg"), "{stderr}");
}

#[test]
fn a_bad_value_from_the_environment_names_the_variable() {
    let flags = ["--node-id", "n", "--parents", "vms", "--print-config"];
    assert_one_line_failure_with_env(&flags, &[("LOG_LEVEL", "debg")], "LOG_LEVEL=debg");
    assert_one_line_failure_with_env(&flags, &[("LOG_FORMAT", "xml")], "LOG_FORMAT=xml");
    assert_one_line_failure_with_env(&flags, &[("ZFS_CSI_COMMAND_TIMEOUT", "0")], "ZFS_CSI_COMMAND_TIMEOUT=0");
    let without_parents = ["--node-id", "n", "--print-config"];
    assert_one_line_failure_with_env(&without_parents, &[("ZFS_CSI_PARENTS", "vms/../etc")], "ZFS_CSI_PARENTS=vms/../etc");
}

#[test]
fn a_bad_flag_is_named_as_the_flag_even_with_the_variable_set() {
    let (code, _, stderr) = run_with_env(
        &["--node-id", "n", "--parents", "vms", "--log-level", "debg", "--print-config"],
        &[("LOG_LEVEL", "info")],
    );
    assert_ne!(code, 0);
    assert!(stderr.contains("--log-level") && !stderr.contains("LOG_LEVEL="), "{stderr}");
}

/// Starts the driver at `log_level`, makes one RPC over HTTP/2, stops it and returns its log.
async fn log_of_one_rpc(log_level: &str) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("csi.sock");
    let mut child = Command::new(driver_binary())
        .args(["--node-id", "n", "--parents", "vms", "--log-format", "text", "--log-level", log_level])
        .arg(format!("--endpoint=unix://{}", socket.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start zfs-csi");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "zfs-csi did not create {}", socket.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut stderr = child.stderr.take().expect("piped stderr");
    let log = std::thread::spawn(move || {
        let mut log = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut log).map(|_| log)
    });
    let mut identity = csi::identity_client::IdentityClient::new(connect(&socket).await);
    identity.get_plugin_info(csi::GetPluginInfoRequest {}).await.expect("GetPluginInfo");
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    // Wait without blocking the runtime, so the client answers the server's GOAWAY.
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("wait for zfs-csi").is_none() {
        assert!(Instant::now() < deadline, "zfs-csi did not exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    log.join().expect("stderr reader").expect("read stderr")
}

#[tokio::test]
async fn log_level_debug_leaves_out_the_http2_transport() {
    let log = log_of_one_rpc("debug").await;
    assert!(log.contains("GetPluginInfo"), "the RPC is not in the log: {log}");
    for transport in [" h2::", " hyper", " tower::", " tonic::transport"] {
        assert!(!log.contains(transport), "{transport} logged at --log-level debug: {log}");
    }
}

#[tokio::test]
async fn a_transport_target_named_in_log_level_is_logged() {
    let log = log_of_one_rpc("debug,h2=debug").await;
    assert!(log.contains(" h2::"), "no h2 debug lines with h2=debug: {log}");
}

// ---- operator commands: what they refuse before running anything ----------------------------

#[test]
fn operator_commands_need_parents_but_not_the_servers_flags() {
    let (code, _, stderr) = run(&["volumes"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--parents") && !stderr.contains("--node-id"), "{stderr}");
    assert_one_line_failure(&["snapshots", "--parents", "vms", "--endpoint", "tcp://127.0.0.1:1"], "--endpoint");
}

#[test]
fn import_refuses_a_pool_root_a_parent_and_an_outsider_with_exit_code_2() {
    for (dataset, says) in [("vms", "root of pool vms"), ("vms/k8s", "one of the parents"), ("tank/media", "outside the parents")] {
        let (code, stdout, stderr) = run(&["import", dataset, "--parents", "vms/k8s,ai", "--node", "n1"]);
        assert_eq!(code, 2, "{dataset}: {stderr}");
        assert!(stdout.is_empty(), "{stdout}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr:?}");
        assert!(stderr.contains(says), "{dataset}: {stderr}");
    }
    // Without a node, from the flag or the pod's NODE_ID/NODE_NAME, the PV could not be pinned.
    let (code, _, stderr) = run(&["import", "vms/k8s/disk", "--parents", "vms/k8s"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--node"), "{stderr}");
}

#[test]
fn help_names_the_operator_commands() {
    let (code, stdout, _) = run(&["--help"]);
    assert_eq!(code, 0);
    for command in ["zfs-csi import DATASET", "zfs-csi volumes", "zfs-csi snapshots"] {
        assert!(stdout.contains(command), "--help does not name {command}");
    }
    let (code, stdout, _) = run(&["import", "--help"]);
    assert_eq!(code, 0);
    for flag in ["--name", "--namespace", "--storage-class", "--node", "--access-mode", "--parents", "Exit codes"] {
        assert!(stdout.contains(flag), "import --help does not explain {flag}");
    }
}

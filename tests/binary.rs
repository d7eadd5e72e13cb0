//! The binary's command line: bad input gives one line on stderr and a non-zero exit. These
//! need no ZFS and run on the host.

use std::process::Command;

use zfs_csi_tests::driver_binary;

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(driver_binary()).args(args).output().expect("run zfs-csi");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[track_caller]
fn assert_one_line_failure(args: &[&str], mentions: &str) {
    let (code, _, stderr) = run(args);
    assert_ne!(code, 0, "{args:?} succeeded");
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

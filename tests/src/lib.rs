//! Test harness: starts the real `zfs-csi` binary on a unix socket and talks CSI to it over
//! gRPC, as kubelet and the sidecars do; plus helpers that look at ZFS and the mount table
//! directly, to check what the driver did.
//!
//! Tests that need real ZFS are `#[ignore]`d on the host; `hack/test.sh` runs them inside the
//! OpenZFS test VM with `--ignored`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};
use tower::service_fn;

pub mod node_support;

pub use zfs_csi::csi;
use zfs_csi::csi::controller_client::ControllerClient;
use zfs_csi::csi::identity_client::IdentityClient;
use zfs_csi::csi::node_client::NodeClient;

pub const DRIVER_NAME: &str = "zfs-csi.io";
pub const NODE_ID: &str = "test-node";
pub const GIB: i64 = 1 << 30;
pub const MIB: i64 = 1 << 20;

/// The `zfs-csi` binary: `$ZFS_CSI_BIN`, else the one cargo built beside this test.
pub fn driver_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("ZFS_CSI_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("current test executable");
    exe.parent().and_then(Path::parent).expect("target dir").join("zfs-csi")
}

/// A running `zfs-csi`, stopped (SIGTERM) when dropped.
pub struct DriverProcess {
    child: Child,
    pub socket: PathBuf,
    _dir: tempfile::TempDir,
    channel: Channel,
}

impl DriverProcess {
    /// Starts the driver serving `parents` (comma-separated) on a fresh socket.
    pub async fn start(parents: &str) -> Self {
        Self::start_with(&["--parents", parents]).await
    }

    pub async fn start_with(extra_args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("csi.sock");
        Self::start_on(dir, socket, extra_args).await
    }

    /// Starts the driver as the DaemonSet runs it: in a mount namespace of its own, in a root
    /// without the ZFS userland, reaching the host's `zfs` through nsenter into the mount
    /// namespace of `host_pid` (see hack/vm/container-launch.sh; only inside the test VM).
    pub async fn start_in_container(parents: &str, host_pid: u32) -> Self {
        let launcher = std::env::var_os("ZFS_CSI_CONTAINER_LAUNCH")
            .expect("ZFS_CSI_CONTAINER_LAUNCH: the deployed-shape tests run in the VM, through hack/test.sh");
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("csi.sock");
        Self::launch(Some((PathBuf::from(launcher), host_pid)), dir, socket, &["--parents", parents]).await
    }

    /// Starts the driver on `socket` (kept in `dir`, which lives as long as the process).
    pub async fn start_on(dir: tempfile::TempDir, socket: PathBuf, extra_args: &[&str]) -> Self {
        Self::launch(None, dir, socket, extra_args).await
    }

    /// Starts the driver at debug level with its log (standard error) going to `log`, for a
    /// test that reads what the driver logged.
    pub async fn start_logging_to(log: &Path, extra_args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("csi.sock");
        let file = std::fs::File::create(log).unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
        Self::launch_with(None, dir, socket, extra_args, "debug", Some(file)).await
    }

    async fn launch(container: Option<(PathBuf, u32)>, dir: tempfile::TempDir, socket: PathBuf, extra_args: &[&str]) -> Self {
        Self::launch_with(container, dir, socket, extra_args, "info", None).await
    }

    async fn launch_with(
        container: Option<(PathBuf, u32)>,
        dir: tempfile::TempDir,
        socket: PathBuf,
        extra_args: &[&str],
        log_level: &str,
        stderr: Option<std::fs::File>,
    ) -> Self {
        let mut args = vec![
            format!("--endpoint=unix://{}", socket.display()),
            format!("--node-id={NODE_ID}"),
            format!("--log-level={log_level}"),
        ];
        args.extend(extra_args.iter().map(|s| s.to_string()));
        // Test volumes are staged and published in temporary directories: they stand for the
        // kubelet directory (a test's own --kubelet-dir flag overrides this).
        let mut command = match &container {
            Some((launcher, host_pid)) => {
                let mut c = Command::new(launcher);
                c.env("ZFS_CSI_HOST_PID", host_pid.to_string());
                c
            }
            None => Command::new(driver_binary()),
        };
        if let Some(file) = stderr {
            command.stderr(file);
        }
        let child = command
            .args(&args)
            .env("KUBELET_DIR", std::env::temp_dir())
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", driver_binary().display()));
        let deadline = Instant::now() + Duration::from_secs(20);
        let channel = loop {
            if let Ok(channel) = try_connect(&socket).await {
                break channel;
            }
            assert!(Instant::now() < deadline, "zfs-csi did not serve on {} in time", socket.display());
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        Self { child, socket, _dir: dir, channel }
    }

    pub fn identity(&self) -> IdentityClient<Channel> {
        IdentityClient::new(self.channel.clone())
    }

    pub fn controller(&self) -> ControllerClient<Channel> {
        ControllerClient::new(self.channel.clone())
    }

    pub fn node(&self) -> NodeClient<Channel> {
        NodeClient::new(self.channel.clone())
    }

    /// CreateVolume, expected to succeed.
    pub async fn create(&self, req: csi::CreateVolumeRequest) -> csi::Volume {
        self.controller().create_volume(req).await.expect("CreateVolume").into_inner().volume.expect("volume")
    }

    /// DeleteVolume, expected to succeed.
    pub async fn delete(&self, volume_id: &str) {
        self.controller()
            .delete_volume(csi::DeleteVolumeRequest { volume_id: volume_id.into(), ..Default::default() })
            .await
            .expect("DeleteVolume");
    }

    /// CreateSnapshot, expected to succeed.
    pub async fn snapshot(&self, source: &str, name: &str) -> csi::Snapshot {
        self.controller()
            .create_snapshot(csi::CreateSnapshotRequest { source_volume_id: source.into(), name: name.into(), ..Default::default() })
            .await
            .expect("CreateSnapshot")
            .into_inner()
            .snapshot
            .expect("snapshot")
    }

    /// DeleteSnapshot, expected to succeed.
    pub async fn delete_snapshot(&self, snapshot_id: &str) {
        self.controller()
            .delete_snapshot(csi::DeleteSnapshotRequest { snapshot_id: snapshot_id.into(), ..Default::default() })
            .await
            .expect("DeleteSnapshot");
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the exit status, with the client connection still open
    /// (as a sidecar's would be) and the test's runtime free to answer the server's GOAWAY.
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the driver") {
                return status;
            }
            assert!(Instant::now() < deadline, "zfs-csi did not exit after SIGTERM");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A test that is over needs no graceful stop (that is `terminate`'s test): SIGKILL, so the
/// driver does not wait its grace period on this test's still-open connection.
impl Drop for DriverProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A tonic channel over a unix socket.
/// A fresh parent dataset `<pool>/<prefix>-…` for one test, destroyed with everything below it
/// at the end (also after a failure).
pub struct TestParent(pub String);

impl TestParent {
    pub fn new(pool: &str, prefix: &str) -> Self {
        let name = format!("{pool}/{}", unique(prefix));
        zfs(&["create", &name]);
        TestParent(name)
    }
}

impl Drop for TestParent {
    fn drop(&mut self) {
        let _ = run("zfs", &["destroy", "-R", &self.0]);
    }
}

/// Waits up to `timeout` for `needle` to appear in the driver log `log` (see
/// `DriverProcess::start_logging_to`); whether it did.
pub async fn wait_for_log(log: &Path, needle: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if std::fs::read_to_string(log).unwrap_or_default().contains(needle) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn connect(socket: &Path) -> Channel {
    try_connect(socket).await.expect("connect to the driver socket")
}

async fn try_connect(socket: &Path) -> Result<Channel, tonic::transport::Error> {
    let socket = socket.to_path_buf();
    Endpoint::try_from("http://[::]:50051")
        .expect("static URI")
        .connect_with_connector(service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(socket).await?)) }
        }))
        .await
}

/// A name unique to this test run: `<prefix>-<pid>-<n>`.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// Runs a command, returning stdout, or stderr as the error.
pub fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .env("LC_ALL", "C")
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Runs `zfs args…`, panicking on failure.
pub fn zfs(args: &[&str]) -> String {
    run("zfs", args).unwrap_or_else(|e| panic!("zfs {}: {e}", args.join(" ")))
}

/// `(value, source)` of one property, from the real `zfs get`.
pub fn zfs_get(dataset: &str, property: &str) -> (String, String) {
    let out = zfs(&["get", "-H", "-p", "-o", "value,source", property, dataset]);
    let (value, source) = out.trim_end().split_once('\t').expect("value<TAB>source");
    (value.to_string(), source.to_string())
}

pub fn dataset_exists(name: &str) -> bool {
    run("zfs", &["list", "-H", "-o", "name", name]).is_ok()
}

/// Every dataset, zvol and snapshot on the machine with its GUID (a destroyed and recreated
/// dataset has a new one), to compare before and after. Only meaningful in a test that has
/// the machine to itself (tests/untouched.rs runs single-threaded, alone).
pub fn zfs_inventory() -> String {
    zfs(&["list", "-H", "-p", "-t", "all", "-o", "name,type,guid"])
}

/// Writes `bytes` of pseudo-random data to `path` and syncs it: data that lz4 (on every test
/// pool) cannot compress away, so it takes that much space.
pub fn write_incompressible(path: &Path, bytes: usize) {
    use std::io::Write;
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15 ^ bytes as u64;
    let data: Vec<u8> = (0..bytes)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let mut file = std::fs::File::create(path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
    file.write_all(&data).expect("write");
    file.sync_all().expect("sync");
}

/// The mount points in the mount table under `prefix`.
pub fn mounts_under(prefix: &Path) -> Vec<PathBuf> {
    zfs_csi::mount::mount_table()
        .expect("mountinfo")
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|p| p.starts_with(prefix))
        .collect()
}

/// Unmounts `path` as a test's own setup step. EBUSY is retried for a while: while another
/// test thread forks a child (the driver, mkfs), the child holds a copy of every open file
/// descriptor until it execs, and a file just closed here may be one of them.
pub fn umount_retrying(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match nix::mount::umount(path) {
            Ok(()) => return,
            Err(nix::errno::Errno::EBUSY) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("umount {}: {e}", path.display()),
        }
    }
}

pub fn is_mount_point(path: &Path) -> bool {
    zfs_csi::mount::mount_at(path).expect("mountinfo").is_some()
}

/// Waits (with a deadline) for `/dev/zvol/<name>`.
pub fn wait_for_zvol_link(name: &str) -> PathBuf {
    let link = PathBuf::from(format!("/dev/zvol/{name}"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !link.exists() {
        assert!(Instant::now() < deadline, "{} did not appear", link.display());
        std::thread::sleep(Duration::from_millis(25));
    }
    link
}

// ---- request builders -------------------------------------------------------------------

fn access_mode(mode: csi::volume_capability::access_mode::Mode) -> Option<csi::volume_capability::AccessMode> {
    Some(csi::volume_capability::AccessMode { mode: mode as i32 })
}

/// A single-node-writer mount capability with `fs_type` ("" for the default).
pub fn mount_capability(fs_type: &str) -> csi::VolumeCapability {
    csi::VolumeCapability {
        access_type: Some(csi::volume_capability::AccessType::Mount(csi::volume_capability::MountVolume {
            fs_type: fs_type.to_string(),
            mount_flags: Vec::new(),
            volume_mount_group: String::new(),
        })),
        access_mode: access_mode(csi::volume_capability::access_mode::Mode::SingleNodeWriter),
    }
}

pub fn block_capability() -> csi::VolumeCapability {
    csi::VolumeCapability {
        access_type: Some(csi::volume_capability::AccessType::Block(csi::volume_capability::BlockVolume {})),
        access_mode: access_mode(csi::volume_capability::access_mode::Mode::SingleNodeWriter),
    }
}

pub fn with_mode(mut cap: csi::VolumeCapability, mode: csi::volume_capability::access_mode::Mode) -> csi::VolumeCapability {
    cap.access_mode = access_mode(mode);
    cap
}

pub fn params(pairs: &[(&str, &str)]) -> std::collections::HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

pub fn capacity(required: i64, limit: i64) -> Option<csi::CapacityRange> {
    Some(csi::CapacityRange { required_bytes: required, limit_bytes: limit })
}

/// A CreateVolume request for `name` on `pool` with one capability and `bytes` required.
pub fn create_request(name: &str, pool: &str, cap: csi::VolumeCapability, bytes: i64) -> csi::CreateVolumeRequest {
    csi::CreateVolumeRequest {
        name: name.to_string(),
        capacity_range: capacity(bytes, 0),
        volume_capabilities: vec![cap],
        parameters: params(&[("poolname", pool)]),
        ..Default::default()
    }
}

pub fn snapshot_source(snapshot_id: &str) -> Option<csi::VolumeContentSource> {
    Some(csi::VolumeContentSource {
        r#type: Some(csi::volume_content_source::Type::Snapshot(csi::volume_content_source::SnapshotSource {
            snapshot_id: snapshot_id.to_string(),
        })),
    })
}

pub fn volume_source(volume_id: &str) -> Option<csi::VolumeContentSource> {
    Some(csi::VolumeContentSource {
        r#type: Some(csi::volume_content_source::Type::Volume(csi::volume_content_source::VolumeSource {
            volume_id: volume_id.to_string(),
        })),
    })
}

/// Asserts that `result` failed with `code`, and returns the message.
#[track_caller]
pub fn expect_code<T: std::fmt::Debug>(result: Result<tonic::Response<T>, tonic::Status>, code: tonic::Code) -> String {
    match result {
        Ok(r) => panic!("expected {code:?}, got success: {:?}", r.into_inner()),
        Err(status) => {
            assert_eq!(status.code(), code, "unexpected status: {}", status.message());
            status.message().to_string()
        }
    }
}

//! Prometheus metrics (docs/DESIGN.md section 10), served over plain HTTP on
//! `--metrics-address` when it is set.
//!
//! - every CSI RPC: `csi_plugin_operations_seconds{driver_name, method_name, grpc_status_code}`,
//!   the histogram the kubernetes-csi libraries give CSI plugins (sidecars export the same
//!   shape as `csi_sidecar_operations_seconds`), so existing dashboards and alerts read it;
//! - every `zfs`/`zpool` command: latency and failures by subcommand;
//! - the parents' pools and the driver's volumes, read from ZFS in the background every
//!   `--metrics-cache-seconds`: one `zpool list` for the pools, and per parent one recursive
//!   `zfs get` of the filesystems and volumes plus one read-only channel program counting
//!   snapshots. A scrape answers from the last reading at once, so neither the scrape rate
//!   nor a pool with thousands of datasets makes a scrape slow (the scale benchmark measured
//!   a reading at 70 s under emulation with 1,000 volumes and 20,000 snapshots, beyond any
//!   scrape timeout); with 0 seconds, each scrape reads ZFS itself (tests).
//!
//! The RPC and command figures live in process-wide registries, recorded where every RPC
//! (`server.rs`) and every command (`zfs/mod.rs`) passes; the HTTP side is a few lines on a
//! tokio listener, since the exposition format is plain text.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::driver::Driver;
use crate::state::{prop, VolumeInfo};
use crate::zfs::{DatasetType, Depth};

/// The bucket bounds of the kubernetes-csi libraries' operation histograms, in seconds.
const RPC_BUCKETS: &[f64] = &[0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 25.0, 50.0, 120.0, 300.0, 600.0];
/// Commands are mostly much shorter than RPCs.
const COMMAND_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0];

/// Pool states as `zpool list` prints them: one gauge each, 1 for the current one.
const POOL_STATES: &[&str] = &["ONLINE", "DEGRADED", "FAULTED", "OFFLINE", "UNAVAIL", "REMOVED", "SUSPENDED"];

#[derive(Clone, Debug)]
struct Histogram {
    bounds: &'static [f64],
    /// Per bucket, not cumulative; cumulated when rendered.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self { bounds, counts: vec![0; bounds.len()], sum: 0.0, count: 0 }
    }

    fn observe(&mut self, seconds: f64) {
        if let Some(i) = self.bounds.iter().position(|&b| seconds <= b) {
            self.counts[i] += 1;
        }
        self.sum += seconds;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (bound, n) in self.bounds.iter().zip(&self.counts) {
            cumulative += n;
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

#[derive(Default)]
struct Registry {
    /// Replica dataset → (transfers finished, bytes they carried).
    replications: BTreeMap<String, (u64, u64)>,
    /// (method, gRPC code name) → latency.
    rpcs: BTreeMap<(String, String), Histogram>,
    /// Subcommand ("zfs get", "zpool list") → latency, and how many failed.
    commands: BTreeMap<String, (Histogram, u64)>,
}

static REGISTRY: LazyLock<Mutex<Registry>> = LazyLock::new(|| Mutex::new(Registry::default()));

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    // A panic while holding the lock leaves only counters behind: still fine to read.
    REGISTRY.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Records one finished RPC: `method` as gRPC names it (`/csi.v1.Controller/CreateVolume`).
pub fn record_rpc(method: &str, code: tonic::Code, elapsed: Duration) {
    registry()
        .rpcs
        .entry((method.to_string(), grpc_code_name(code).to_string()))
        .or_insert_with(|| Histogram::new(RPC_BUCKETS))
        .observe(elapsed.as_secs_f64());
}

/// Records one `zfs`/`zpool` command: `subcommand` is the program and its first word
/// (`zfs get`); `failed` when it could not run or exited non-zero.
pub fn record_command(subcommand: &str, elapsed: Duration, failed: bool) {
    let mut registry = registry();
    let (histogram, failures) = registry
        .commands
        .entry(subcommand.to_string())
        .or_insert_with(|| (Histogram::new(COMMAND_BUCKETS), 0));
    histogram.observe(elapsed.as_secs_f64());
    if failed {
        *failures += 1;
    }
}

/// Records one finished transfer into `replica` (`replication.rs`) and the bytes it carried.
pub fn record_replication(replica: &str, bytes: u64) {
    let mut registry = registry();
    let (count, total) = registry.replications.entry(replica.to_string()).or_default();
    *count += 1;
    *total += bytes;
}

/// The code names of the Go gRPC library (`codes.Code.String()`), which the kubernetes-csi
/// metrics carry in `grpc_status_code`.
fn grpc_code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "Canceled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}

/// A label value in the exposition format: backslash, double quote and newline escaped.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn render_registry(out: &mut String, driver_name: &str) {
    let registry = registry();
    let driver_name = escape(driver_name);
    out.push_str("# HELP csi_plugin_operations_seconds Container Storage Interface operation duration with gRPC error code status total\n");
    out.push_str("# TYPE csi_plugin_operations_seconds histogram\n");
    for ((method, code), histogram) in &registry.rpcs {
        let labels = format!("driver_name=\"{driver_name}\",method_name=\"{}\",grpc_status_code=\"{code}\"", escape(method));
        histogram.render(out, "csi_plugin_operations_seconds", &labels);
    }
    out.push_str("# HELP zfs_csi_command_seconds Latency of the zfs and zpool commands the driver ran, by subcommand.\n");
    out.push_str("# TYPE zfs_csi_command_seconds histogram\n");
    for (command, (histogram, _)) in &registry.commands {
        histogram.render(out, "zfs_csi_command_seconds", &format!("command=\"{}\"", escape(command)));
    }
    out.push_str("# HELP zfs_csi_replication_sent_bytes_total Bytes of zfs send streams received into each replica (replicateTo).\n");
    out.push_str("# TYPE zfs_csi_replication_sent_bytes_total counter\n");
    for (replica, (_, bytes)) in &registry.replications {
        let _ = writeln!(out, "zfs_csi_replication_sent_bytes_total{{replica=\"{}\"}} {bytes}", escape(replica));
    }
    out.push_str("# HELP zfs_csi_replications_total Snapshot transfers finished into each replica.\n");
    out.push_str("# TYPE zfs_csi_replications_total counter\n");
    for (replica, (count, _)) in &registry.replications {
        let _ = writeln!(out, "zfs_csi_replications_total{{replica=\"{}\"}} {count}", escape(replica));
    }
    out.push_str("# HELP zfs_csi_command_failures_total zfs and zpool commands that failed or could not run, by subcommand.\n");
    out.push_str("# TYPE zfs_csi_command_failures_total counter\n");
    for (command, (_, failures)) in &registry.commands {
        let _ = writeln!(out, "zfs_csi_command_failures_total{{command=\"{}\"}} {failures}", escape(command));
    }
}

/// This process's resident memory, from /proc/self/statm (pages).
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let page_size = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok()??;
    Some(pages * u64::try_from(page_size).ok()?)
}

/// What is read of each volume for its gauges.
const VOLUME_GAUGE_PROPERTIES: &[&str] = &[
    "used",
    "logicalused",
    "referenced",
    "available",
    "compressratio",
    prop::PVC_NAME,
    prop::PVC_NAMESPACE,
    prop::PV_NAME,
];

/// Serves the metrics of `driver` on `listener` until the process ends.
pub struct Exporter {
    driver: Arc<Driver>,
    cache_for: Duration,
    /// The ZFS part of the metrics as last read. Without caching, the lock is held while
    /// reading ZFS, so concurrent scrapes wait for one reading instead of each starting their
    /// own.
    zfs_part: tokio::sync::Mutex<Option<String>>,
    /// Signalled when the background reader stored its first reading.
    first_reading: tokio::sync::Notify,
}

impl Exporter {
    pub fn new(driver: Arc<Driver>, cache_for: Duration) -> Arc<Self> {
        Arc::new(Self { driver, cache_for, zfs_part: tokio::sync::Mutex::new(None), first_reading: tokio::sync::Notify::new() })
    }

    /// Binds now (so that a bad address fails the start), serves in the background.
    pub async fn spawn(self: Arc<Self>, address: SocketAddr) -> Result<(), String> {
        let listener = TcpListener::bind(address)
            .await
            .map_err(|e| format!("cannot listen for metrics on {address}: {e}"))?;
        tracing::info!(address = %address, "serving metrics on /metrics");
        if !self.cache_for.is_zero() {
            let reader = Arc::clone(&self);
            tokio::spawn(async move {
                loop {
                    let text = reader.read_zfs().await;
                    *reader.zfs_part.lock().await = Some(text);
                    reader.first_reading.notify_waiters();
                    tokio::time::sleep(reader.cache_for).await;
                }
            });
        }
        tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        let exporter = Arc::clone(&self);
                        tokio::spawn(async move { exporter.answer(stream).await });
                    }
                    Err(e) => {
                        tracing::warn!("metrics listener: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        Ok(())
    }

    /// One HTTP/1.x exchange, then the connection is closed: `GET /metrics` gets the
    /// metrics, anything else 404 or 405. A client that sends no complete request head
    /// within 10 s is dropped.
    async fn answer(&self, mut stream: TcpStream) {
        let mut head = Vec::new();
        let mut buffer = [0u8; 1024];
        let read_head = async {
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
                match stream.read(&mut buffer).await {
                    Ok(0) | Err(_) => return false,
                    Ok(n) => head.extend_from_slice(&buffer[..n]),
                }
            }
            true
        };
        if !matches!(tokio::time::timeout(Duration::from_secs(10), read_head).await, Ok(true)) {
            return;
        }
        let request_line = String::from_utf8_lossy(&head).lines().next().unwrap_or_default().to_string();
        let mut words = request_line.split_whitespace();
        let (method, path) = (words.next().unwrap_or_default(), words.next().unwrap_or_default());
        let path = path.split('?').next().unwrap_or_default();
        let (status, content_type, body) = match (method, path) {
            ("GET", "/metrics") => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", self.render().await),
            (_, "/metrics") => ("405 Method Not Allowed", "text/plain", "only GET\n".to_string()),
            _ => ("404 Not Found", "text/plain", "metrics are on /metrics\n".to_string()),
        };
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    }

    /// The whole exposition: the ZFS part (cached) first read, so the command figures
    /// include what reading it cost.
    pub async fn render(&self) -> String {
        let zfs_part = self.zfs_part().await;
        let mut out = String::with_capacity(zfs_part.len() + 4096);
        render_registry(&mut out, &self.driver.name);
        out.push_str(&zfs_part);
        if let Some(bytes) = resident_bytes() {
            out.push_str("# HELP process_resident_memory_bytes Resident memory size in bytes.\n");
            out.push_str("# TYPE process_resident_memory_bytes gauge\n");
            let _ = writeln!(out, "process_resident_memory_bytes {bytes}");
        }
        out
    }

    /// The ZFS part: the background reader's latest (waiting for its first), or read now
    /// when nothing is cached.
    async fn zfs_part(&self) -> String {
        if self.cache_for.is_zero() {
            let _one_reading_at_a_time = self.zfs_part.lock().await;
            return self.read_zfs().await;
        }
        loop {
            let waiting = self.first_reading.notified();
            if let Some(text) = self.zfs_part.lock().await.as_ref() {
                return text.clone();
            }
            waiting.await;
        }
    }

    async fn read_zfs(&self) -> String {
        let started = Instant::now();
        let mut text = String::new();
        self.render_pools(&mut text).await;
        self.render_volumes(&mut text).await;
        text.push_str("# HELP zfs_csi_zfs_read_seconds How long reading the pools and volumes for the metrics took.\n");
        text.push_str("# TYPE zfs_csi_zfs_read_seconds gauge\n");
        let _ = writeln!(text, "zfs_csi_zfs_read_seconds {}", started.elapsed().as_secs_f64());
        text
    }

    /// The pools of the parents, each once.
    fn parent_pools(&self) -> Vec<&str> {
        let mut pools: Vec<&str> = self.driver.parents.iter().map(|p| p.pool()).collect();
        pools.sort();
        pools.dedup();
        pools
    }

    async fn render_pools(&self, out: &mut String) {
        let stats = match self.driver.zfs.pools(&self.parent_pools()).await {
            Ok(stats) => stats,
            Err(e) => {
                tracing::warn!("metrics: reading the pools: {e}");
                Vec::new()
            }
        };
        type Gauge = (&'static str, &'static str, fn(&crate::zfs::Pool) -> Option<f64>);
        let gauges: [Gauge; 4] = [
            ("zfs_csi_pool_size_bytes", "Size of the pool.", |p| Some(p.size as f64)),
            ("zfs_csi_pool_allocated_bytes", "Space allocated in the pool.", |p| Some(p.allocated as f64)),
            ("zfs_csi_pool_free_bytes", "Free space in the pool.", |p| Some(p.free as f64)),
            ("zfs_csi_pool_fragmentation_ratio", "Fragmentation of the pool's free space, 0 to 1.", |p| {
                p.fragmentation_percent.map(|f| f as f64 / 100.0)
            }),
        ];
        let _ = writeln!(out, "# HELP zfs_csi_pool_health 1 for the pool's current state (zpool list health), 0 for the others.");
        let _ = writeln!(out, "# TYPE zfs_csi_pool_health gauge");
        for pool in &stats {
            for state in POOL_STATES {
                let _ = writeln!(out, "zfs_csi_pool_health{{pool=\"{}\",state=\"{state}\"}} {}", escape(&pool.name), u8::from(pool.health == *state));
            }
        }
        for (name, help, value) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for pool in &stats {
                if let Some(v) = value(pool) {
                    let _ = writeln!(out, "{name}{{pool=\"{}\"}} {v}", escape(&pool.name));
                }
            }
        }
    }

    async fn render_volumes(&self, out: &mut String) {
        let properties: Vec<&str> = crate::state::VOLUME_PROPERTIES.iter().chain(VOLUME_GAUGE_PROPERTIES).copied().collect();
        let mut datasets = BTreeMap::new();
        let mut snapshot_counts = BTreeMap::new();
        for parent in &self.driver.parents {
            match self.driver.zfs.get(parent, &properties, Depth::All, &[DatasetType::Filesystem, DatasetType::Volume]).await {
                Ok(found) => datasets.extend(found.into_iter().map(|d| (d.name.clone(), d))),
                Err(crate::zfs::ZfsError::NotFound(_)) => continue,
                Err(e) => tracing::warn!("metrics: reading the volumes below {parent}: {e}"),
            }
            match self.driver.zfs.snapshot_counts(parent).await {
                Ok(counts) => snapshot_counts.extend(counts),
                Err(crate::zfs::ZfsError::NotFound(_)) => {}
                Err(e) => tracing::warn!("metrics: counting the snapshots below {parent}: {e}"),
            }
        }
        struct Row {
            labels: String,
            values: [Option<f64>; 7],
        }
        let mut rows = Vec::new();
        let mut pending: BTreeMap<String, u64> = BTreeMap::new();
        for dataset in datasets.values() {
            let Some(volume) = VolumeInfo::from_dataset(dataset, &self.driver.name) else { continue };
            if !volume.managed || !self.driver.is_within_parents(&volume.name) {
                continue;
            }
            if volume.deleted {
                *pending.entry(volume.name.pool().to_string()).or_default() += 1;
                continue;
            }
            // Our own metadata only when set locally, as everywhere (state.rs).
            let own = |p: &str| {
                dataset
                    .property(p)
                    .filter(|v| v.source == crate::zfs::PropertySource::Local)
                    .map(|v| escape(&v.value))
                    .unwrap_or_default()
            };
            let number = |p: &str| dataset.get(p).and_then(|v| v.trim_end_matches('x').parse::<f64>().ok());
            rows.push(Row {
                labels: format!(
                    "dataset=\"{}\",pool=\"{}\",kind=\"{}\",pvc_namespace=\"{}\",pvc_name=\"{}\",pv_name=\"{}\"",
                    escape(volume.name.as_str()),
                    escape(volume.name.pool()),
                    volume.kind.as_str(),
                    own(prop::PVC_NAMESPACE),
                    own(prop::PVC_NAME),
                    own(prop::PV_NAME),
                ),
                values: [
                    Some(volume.capacity as f64),
                    number("used"),
                    number("logicalused"),
                    number("referenced"),
                    number("available"),
                    number("compressratio"),
                    Some(snapshot_counts.get(volume.name.as_str()).copied().unwrap_or(0) as f64),
                ],
            });
        }
        let gauges = [
            ("zfs_csi_volume_capacity_bytes", "Capacity provisioned for the volume (volsize of a zvol, refquota of a filesystem)."),
            ("zfs_csi_volume_used_bytes", "Space used by the volume and its descendants (zfs used)."),
            ("zfs_csi_volume_logical_used_bytes", "Space the volume's data takes before compression (zfs logicalused)."),
            ("zfs_csi_volume_referenced_bytes", "Data the volume references (zfs referenced)."),
            ("zfs_csi_volume_available_bytes", "Space still available to the volume (zfs available)."),
            ("zfs_csi_volume_compression_ratio", "Compression ratio of the volume (zfs compressratio)."),
            ("zfs_csi_volume_snapshots", "Snapshots of the volume, the driver's and any other."),
        ];
        for (i, (name, help)) in gauges.iter().enumerate() {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for row in &rows {
                if let Some(v) = row.values[i] {
                    let _ = writeln!(out, "{name}{{{}}} {v}", row.labels);
                }
            }
        }
        let _ = writeln!(out, "# HELP zfs_csi_volumes_pending_deletion Volumes deleted through CSI and kept, hidden, until their snapshots and clones are gone.");
        let _ = writeln!(out, "# TYPE zfs_csi_volumes_pending_deletion gauge");
        for pool in self.parent_pools() {
            let _ = writeln!(out, "zfs_csi_volumes_pending_deletion{{pool=\"{}\"}} {}", escape(pool), pending.get(pool).copied().unwrap_or(0));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_with_sum_and_count() {
        let mut h = Histogram::new(&[0.1, 1.0]);
        for s in [0.05, 0.5, 0.7, 5.0] {
            h.observe(s);
        }
        let mut out = String::new();
        h.render(&mut out, "m", "a=\"b\"");
        assert_eq!(
            out,
            "m_bucket{a=\"b\",le=\"0.1\"} 1\nm_bucket{a=\"b\",le=\"1\"} 3\nm_bucket{a=\"b\",le=\"+Inf\"} 4\nm_sum{a=\"b\"} 6.25\nm_count{a=\"b\"} 4\n"
        );
    }

    #[test]
    fn rpcs_and_commands_are_rendered_with_their_labels() {
        record_rpc("/csi.v1.Controller/CreateVolume", tonic::Code::AlreadyExists, Duration::from_millis(300));
        record_command("zfs frobnicate", Duration::from_millis(20), true);
        let mut out = String::new();
        render_registry(&mut out, "zfs-csi.io");
        assert!(out.contains(
            "csi_plugin_operations_seconds_count{driver_name=\"zfs-csi.io\",method_name=\"/csi.v1.Controller/CreateVolume\",grpc_status_code=\"AlreadyExists\"} "
        ), "{out}");
        assert!(out.contains("zfs_csi_command_seconds_bucket{command=\"zfs frobnicate\",le=\"0.025\"} "), "{out}");
        assert!(out.contains("zfs_csi_command_failures_total{command=\"zfs frobnicate\"} "), "{out}");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}

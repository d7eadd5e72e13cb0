//! Scale benchmark, run inside the test VM by `hack/bench-scale.sh`: the cost of each CSI RPC
//! on parents holding many driver volumes, first without and then with many foreign snapshots
//! (an operator's datasets beside the volumes in the measured pool, snapshotted hourly the way
//! sanoid does), against the bare `zfs` commands of the same kind. For each RPC: latency (p50,
//! p95) on a driver started plainly, and the number of `zfs`/`zpool` processes per call on a
//! second driver whose `--command-prefix` is a wrapper that logs every command before running
//! it. Then, with every volume in place, the metrics endpoint's scrape latency and the
//! driver's memory (idle, and its peak over 100 concurrent RPCs). Prints figures; it asserts
//! nothing (targets are judged by reading them, not by a timed
//! test).
//!
//! Usage: zfs-csi-scale PARENTS WRAPPER
//!   PARENTS  comma-separated pools the driver serves, e.g. vms,ai,tank; the RPCs are measured
//!            on the first, which also holds the foreign datasets
//!   WRAPPER  a shell script run as `sh WRAPPER LOG zfs args…`: appends one line to LOG, then
//!            `exec "$@"`
//! Env: ZFS_CSI_BIN (the driver binary), SCALE_VOLUMES (1000, spread over the parents),
//! SCALE_ZVOL_EVERY (10: every tenth volume is a sparse zvol, 0 for none),
//! SCALE_FOREIGN_DATASETS (50), SCALE_SNAPSHOTS (20000, spread evenly over the foreign
//! datasets), SCALE_SAMPLES (20), SCALE_HEAVY_SAMPLES (5: ListVolumes, its bare
//! `zfs list` and CreateSnapshot read every dataset, tens of seconds each under TCG at full
//! size), SCALE_CONCURRENCY (32
//! creations in flight while populating), SCALE_COUNT_REPS (3 counted calls per RPC).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use zfs_csi::state::prop;
use zfs_csi_tests::*;

type Error = Box<dyn std::error::Error + Send + Sync>;
type Res<T> = Result<T, Error>;

/// Every volume is this small and thin: the VM's pools are 3 GiB sparse disks.
const VOLUME_BYTES: i64 = 64 * MIB;
/// Driver snapshots on the volume whose snapshots ListSnapshots lists.
const LISTED_SNAPSHOTS: usize = 3;
/// Foreign snapshot commands in flight at once while setting up.
const SNAPSHOT_COMMANDS_IN_FLIGHT: usize = 4;

struct Settings {
    parents: Vec<String>,
    wrapper: PathBuf,
    volumes: usize,
    zvol_every: usize,
    foreign_datasets: usize,
    snapshots: usize,
    samples: usize,
    /// Samples of what reads every dataset below the parents: ListVolumes and its bare
    /// `zfs list`, CreateSnapshot.
    heavy_samples: usize,
    concurrency: usize,
    count_reps: usize,
}

fn env_usize(name: &str, default: usize) -> Res<usize> {
    match std::env::var(name) {
        Ok(v) => v.parse().map_err(|e| format!("{name}={v:?}: {e}").into()),
        Err(_) => Ok(default),
    }
}

impl Settings {
    fn from_env() -> Res<Self> {
        let usage = "usage: zfs-csi-scale PARENTS WRAPPER";
        let mut args = std::env::args().skip(1);
        let parents: Vec<String> = args.next().ok_or(usage)?.split(',').map(str::to_string).collect();
        let wrapper = PathBuf::from(args.next().ok_or(usage)?);
        Ok(Self {
            parents,
            wrapper,
            volumes: env_usize("SCALE_VOLUMES", 1000)?,
            zvol_every: env_usize("SCALE_ZVOL_EVERY", 10)?,
            foreign_datasets: env_usize("SCALE_FOREIGN_DATASETS", 50)?.max(1),
            snapshots: env_usize("SCALE_SNAPSHOTS", 20_000)?,
            samples: env_usize("SCALE_SAMPLES", 20)?.max(1),
            heavy_samples: env_usize("SCALE_HEAVY_SAMPLES", 5)?.max(1),
            concurrency: env_usize("SCALE_CONCURRENCY", 32)?.max(1),
            count_reps: env_usize("SCALE_COUNT_REPS", 3)?.max(1),
        })
    }

    /// Counted calls of what reads every dataset: one (the count does not vary).
    fn heavy_reps(&self) -> usize {
        1
    }

    /// The pool the per-RPC measurements use.
    fn pool(&self) -> &str {
        &self.parents[0]
    }
}

// ---- figures ----------------------------------------------------------------------------

fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One line of a phase: an RPC (or a bare command alone), with its bare counterpart.
#[derive(Default)]
struct Row {
    name: String,
    bare_name: String,
    driver: Vec<Duration>,
    bare: Vec<Duration>,
    /// zfs/zpool processes per counted call.
    processes: Vec<usize>,
    /// The commands of the last counted call, e.g. "zfs get ×1, zfs snapshot ×1".
    commands: String,
}

impl Row {
    fn new(name: &str, bare_name: &str) -> Self {
        Self { name: name.into(), bare_name: bare_name.into(), ..Default::default() }
    }

    fn p50(&self) -> Option<f64> {
        (!self.driver.is_empty()).then(|| ms(percentile(&self.driver, 0.5)))
    }

    fn p95(&self) -> Option<f64> {
        (!self.driver.is_empty()).then(|| ms(percentile(&self.driver, 0.95)))
    }

    fn bare_p50(&self) -> Option<f64> {
        (!self.bare.is_empty()).then(|| ms(percentile(&self.bare, 0.5)))
    }

    fn bare_p95(&self) -> Option<f64> {
        (!self.bare.is_empty()).then(|| ms(percentile(&self.bare, 0.95)))
    }

    /// "1" or "1–3" when the counted calls differ.
    fn process_count(&self) -> String {
        match (self.processes.iter().min(), self.processes.iter().max()) {
            (Some(lo), Some(hi)) if lo == hi => lo.to_string(),
            (Some(lo), Some(hi)) => format!("{lo}–{hi}"),
            _ => "–".into(),
        }
    }
}

fn fmt_ms(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.0}")).unwrap_or_else(|| "–".into())
}

struct Phase {
    label: String,
    rows: Vec<Row>,
    snapshots: usize,
    datasets: usize,
    elapsed: Duration,
}

impl Phase {
    fn row(&self, name: &str) -> &Row {
        self.rows.iter().find(|r| r.name == name).expect("row")
    }

    fn print(&self) {
        println!(
            "\n== {} ({} filesystems and volumes, {} snapshots below the parents; measured in {:.0} s)",
            self.label,
            self.datasets,
            self.snapshots,
            self.elapsed.as_secs_f64()
        );
        println!(
            "{:<28} {:>9} {:>9} {:>6}   {:<42} {:>9} {:>9}   commands of one call",
            "RPC", "p50 ms", "p95 ms", "procs", "bare command", "p50 ms", "p95 ms"
        );
        for r in &self.rows {
            println!(
                "{:<28} {:>9} {:>9} {:>6}   {:<42} {:>9} {:>9}   {}",
                r.name,
                fmt_ms(r.p50()),
                fmt_ms(r.p95()),
                r.process_count(),
                r.bare_name,
                fmt_ms(r.bare_p50()),
                fmt_ms(r.bare_p95()),
                r.commands
            );
        }
    }
}

// ---- processes --------------------------------------------------------------------------

/// The processes whose parent is `pid`.
fn children_of(pid: u32) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0 };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| {
            // "pid (comm) state ppid …": comm may hold spaces and parentheses.
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|ppid| ppid.parse::<u32>().ok())
                == Some(pid)
        })
        .count()
}

/// Waits until the driver has run no command for a while: its reaper pass at start-up lists
/// every snapshot below the parents, and nothing should be measured beside it.
async fn wait_idle(driver: &DriverProcess) {
    let mut quiet_since = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(600);
    while Instant::now() < deadline {
        if children_of(driver.pid()) > 0 {
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= Duration::from_millis(1500) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("scale: driver {} still runs commands after 10 minutes; measuring anyway", driver.pid());
}

/// The latency driver, started plainly, and the counting driver, whose every zfs/zpool command
/// goes through the wrapper that logs it. Each runs a reaper pass at start-up and then every
/// ten minutes, which reads every dataset: the counting driver is used only in the first
/// minutes after a start, and the latency driver is restarted before a long stretch.
struct Drivers {
    plain: DriverProcess,
    counting: DriverProcess,
    log: PathBuf,
    parents: String,
}

impl Drivers {
    async fn start(s: &Settings, log_dir: &Path) -> Self {
        let parents = s.parents.join(",");
        let log = log_dir.join("calls.log");
        let prefix = format!("/bin/sh {} {}", s.wrapper.display(), log.display());
        let plain = DriverProcess::start_with(&["--parents", &parents]).await;
        let counting = DriverProcess::start_with(&["--parents", &parents, "--command-prefix", &prefix]).await;
        wait_idle(&plain).await;
        wait_idle(&counting).await;
        Self { plain, counting, log, parents }
    }

    async fn restart_plain(&mut self) {
        self.plain = DriverProcess::start_with(&["--parents", &self.parents]).await;
        wait_idle(&self.plain).await;
    }

    fn logged(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log).unwrap_or_default().lines().map(str::to_string).collect()
    }

    /// Runs one call on the counting driver: how many commands it ran, and which.
    async fn count<F: Future<Output = Res<()>>>(&self, call: F) -> Res<(usize, Vec<String>)> {
        let before = self.logged().len();
        call.await?;
        let commands = self.logged().split_off(before);
        Ok((commands.len(), commands))
    }
}

/// A logged command line in short: "zfs get -r", "zfs snapshot", "zpool list".
fn command_kind(line: &str) -> String {
    let words: Vec<&str> = line.split_whitespace().collect();
    let mut kind = words.iter().take(2).copied().collect::<Vec<_>>().join(" ");
    if words.contains(&"-r") {
        kind.push_str(" -r");
    } else if let Some(depth) = words.windows(2).find(|w| w[0] == "-d" && w[1].parse::<u32>().is_ok()) {
        kind.push_str(&format!(" -d {}", depth[1]));
    } else if words.get(1) == Some(&"destroy") && words.contains(&"-d") {
        kind.push_str(" -d");
    }
    kind
}

fn summarize(commands: &[String]) -> String {
    let mut kinds: Vec<(String, usize)> = Vec::new();
    for kind in commands.iter().map(|c| command_kind(c)) {
        match kinds.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, n)) => *n += 1,
            None => kinds.push((kind, 1)),
        }
    }
    kinds.iter().map(|(k, n)| format!("{k} ×{n}")).collect::<Vec<_>>().join(", ")
}

/// A snapshot of `volume` named `name`, taken by bare `zfs snapshot` with the properties
/// CreateSnapshot gives its snapshots: DeleteSnapshot deletes it as one of its own.
fn driver_like_snapshot(volume: &str, name: &str) -> String {
    let id = format!("{volume}@{name}");
    let capacity = VOLUME_BYTES.to_string();
    let props = [(prop::MANAGED_BY, DRIVER_NAME), (prop::CSI_NAME, name), (prop::CAPACITY, capacity.as_str())];
    let mut args = vec!["snapshot".to_string()];
    for (key, value) in props {
        args.extend(["-o".to_string(), format!("{key}={value}")]);
    }
    args.push(id.clone());
    zfs(&args.iter().map(String::as_str).collect::<Vec<_>>());
    id
}

/// A bare command, timed; it must succeed.
fn bare(args: &[&str]) -> Duration {
    let start = Instant::now();
    zfs(args);
    start.elapsed()
}

/// `zfs destroy`, retried while udev still has a new zvol's device open (as the driver does).
fn bare_destroy(name: &str) -> Duration {
    let start = Instant::now();
    let mut backoff = Duration::from_millis(50);
    for _ in 0..6 {
        match run("zfs", &["destroy", name]) {
            Ok(_) => return start.elapsed(),
            Err(e) if e.contains("busy") => {
                std::thread::sleep(backoff);
                backoff *= 2;
            }
            Err(e) => panic!("zfs destroy {name}: {e}"),
        }
    }
    zfs(&["destroy", name]);
    start.elapsed()
}

async fn timed<T, F: Future<Output = Result<T, tonic::Status>>>(call: F) -> Res<(Duration, T)> {
    let start = Instant::now();
    let value = call.await?;
    Ok((start.elapsed(), value))
}

// ---- requests ---------------------------------------------------------------------------

fn volume_request(pool: &str, name: &str, zvol: bool) -> csi::CreateVolumeRequest {
    let cap = if zvol { block_capability() } else { mount_capability("") };
    let mut req = create_request(name, pool, cap, VOLUME_BYTES);
    req.parameters.insert("thinprovision".into(), "yes".into());
    req
}

fn delete_request(id: &str) -> csi::DeleteVolumeRequest {
    csi::DeleteVolumeRequest { volume_id: id.into(), ..Default::default() }
}

fn snapshot_request(source: &str, name: &str) -> csi::CreateSnapshotRequest {
    csi::CreateSnapshotRequest { source_volume_id: source.into(), name: name.into(), ..Default::default() }
}

fn delete_snapshot_request(id: &str) -> csi::DeleteSnapshotRequest {
    csi::DeleteSnapshotRequest { snapshot_id: id.into(), ..Default::default() }
}

fn list_volumes_request() -> csi::ListVolumesRequest {
    csi::ListVolumesRequest { max_entries: 0, starting_token: String::new() }
}

fn list_snapshots_request(source: &str) -> csi::ListSnapshotsRequest {
    csi::ListSnapshotsRequest { source_volume_id: source.into(), ..Default::default() }
}

fn capacity_request(pool: &str) -> csi::GetCapacityRequest {
    csi::GetCapacityRequest {
        volume_capabilities: vec![mount_capability("")],
        parameters: params(&[("poolname", pool)]),
        ..Default::default()
    }
}

fn stats_request(id: &str, path: &Path) -> csi::NodeGetVolumeStatsRequest {
    csi::NodeGetVolumeStatsRequest { volume_id: id.into(), volume_path: path.display().to_string(), ..Default::default() }
}

// ---- setup ------------------------------------------------------------------------------

/// The volumes every phase measures on, made once.
struct Fixtures {
    /// A dataset volume that CreateSnapshot and DeleteSnapshot snapshot.
    snapshot_source: String,
    /// A dataset volume with `LISTED_SNAPSHOTS` driver snapshots, for ListSnapshots.
    listed: String,
    /// A dataset volume staged at `staging`, for NodeGetVolumeStats.
    staged: String,
    staging: PathBuf,
}

/// Creates the driver's volumes, `concurrency` in flight, spread over the parents; returns
/// the wall time.
async fn populate(s: &Settings, d: &DriverProcess) -> Res<Duration> {
    let start = Instant::now();
    let slots = Arc::new(tokio::sync::Semaphore::new(s.concurrency));
    let mut calls = Vec::with_capacity(s.volumes);
    for i in 0..s.volumes {
        let slot = Arc::clone(&slots).acquire_owned().await?;
        let mut c = d.controller();
        let pool = s.parents[i % s.parents.len()].clone();
        let zvol = s.zvol_every > 0 && i % s.zvol_every == s.zvol_every - 1;
        calls.push(tokio::spawn(async move {
            let created = c.create_volume(volume_request(&pool, &format!("pvc-scale-{i:04}"), zvol)).await;
            drop(slot);
            created.map(drop)
        }));
    }
    for call in calls {
        call.await??;
    }
    Ok(start.elapsed())
}

async fn make_fixtures(s: &Settings, d: &DriverProcess, dir: &Path) -> Res<Fixtures> {
    let mut ids = Vec::new();
    for name in ["pvc-scale-snapshot-source", "pvc-scale-listed", "pvc-scale-staged"] {
        let volume = d.controller().create_volume(volume_request(s.pool(), name, false)).await?.into_inner();
        ids.push(volume.volume.ok_or("no volume")?.volume_id);
    }
    for i in 0..LISTED_SNAPSHOTS {
        d.controller().create_snapshot(snapshot_request(&ids[1], &format!("scale-listed-{i}"))).await?;
    }
    let staging = dir.join("staging");
    std::fs::create_dir_all(&staging)?;
    d.node()
        .node_stage_volume(csi::NodeStageVolumeRequest {
            volume_id: ids[2].clone(),
            staging_target_path: staging.display().to_string(),
            volume_capability: Some(mount_capability("")),
            ..Default::default()
        })
        .await?;
    Ok(Fixtures { snapshot_source: ids[0].clone(), listed: ids[1].clone(), staged: ids[2].clone(), staging })
}

/// A sanoid-like hourly snapshot name, `n` hours after 2026-01-01 00:00.
fn autosnap_name(n: usize) -> String {
    const DAYS: [usize; 12] = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    let (mut day, hour) = (n / 24, n % 24);
    let (mut year, mut month) = (2026, 0);
    while day >= DAYS[month] {
        day -= DAYS[month];
        month += 1;
        if month == 12 {
            month = 0;
            year += 1;
        }
    }
    format!("autosnap_{year}-{:02}-{:02}_{hour:02}:00:00_hourly", month + 1, day + 1)
}

/// The operator's datasets, made with bare `zfs create` beside the driver's volumes in the
/// measured pool, and their snapshots. ZFS refuses two snapshots of one dataset in one
/// `zfs snapshot` command ("multiple snapshots of same fs not allowed"), so each command takes
/// one hour's snapshot of every operator dataset at once, as sanoid does.
fn make_foreign(s: &Settings) -> Res<(usize, Duration)> {
    let start = Instant::now();
    let per_dataset = s.snapshots / s.foreign_datasets;
    let datasets: Vec<String> = (0..s.foreign_datasets).map(|k| format!("{}/operator-{k:02}", s.pool())).collect();
    for dataset in &datasets {
        zfs(&["create", dataset]);
    }
    let mut running: Vec<Child> = Vec::new();
    for hour in 0..per_dataset {
        if running.len() >= SNAPSHOT_COMMANDS_IN_FLIGHT {
            wait_snapshot_command(running.remove(0))?;
        }
        let snapshot = autosnap_name(hour);
        let child = Command::new("zfs")
            .arg("snapshot")
            .args(datasets.iter().map(|d| format!("{d}@{snapshot}")))
            .env("LC_ALL", "C")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        running.push(child);
    }
    for child in running {
        wait_snapshot_command(child)?;
    }
    Ok((per_dataset * datasets.len(), start.elapsed()))
}

fn wait_snapshot_command(child: Child) -> Res<()> {
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(format!("zfs snapshot: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(())
}

// ---- one phase --------------------------------------------------------------------------

/// One phase of measurements; `snapshots` is how many snapshots lie below the parents. The
/// drivers are fresh: the processes are counted first, then the latencies are measured,
/// each RPC interleaved with its bare command (each side first in turn).
async fn measure(s: &Settings, label: &str, tag: &str, snapshots: usize, d: &mut Drivers, f: &Fixtures) -> Res<Phase> {
    let start = Instant::now();
    let pool = s.pool();
    let n = s.samples;
    let parents: Vec<&str> = s.parents.iter().map(String::as_str).collect();
    let source = &f.snapshot_source;
    let mut create = Row::new("CreateVolume", "zfs create");
    let mut delete = Row::new("DeleteVolume", "zfs destroy");
    let mut cycle = Row::new("CreateVolume+DeleteVolume", "zfs create + zfs destroy");
    let mut snap = Row::new("CreateSnapshot", "zfs snapshot");
    let mut unsnap = Row::new("DeleteSnapshot", "zfs destroy (snapshot)");
    let mut list = Row::new("ListVolumes", "zfs list -r (the parents)");
    let mut list_snaps = Row::new("ListSnapshots (by source)", "zfs list -t snapshot -d 1 (the volume)");
    let mut capacity = Row::new("GetCapacity", "zfs get available (the parent)");
    let mut stats = Row::new("NodeGetVolumeStats", "zfs get (one dataset)");

    // ---- processes per call, on the counting driver
    for i in 0..s.count_reps {
        let name = format!("pvc-count-{tag}-{i}");
        let mut id = String::new();
        let (nc, cc) = d
            .count(async {
                let v = d.counting.controller().create_volume(volume_request(pool, &name, false)).await?;
                id = v.into_inner().volume.ok_or("no volume")?.volume_id;
                Ok(())
            })
            .await?;
        let (nd, cd) = d
            .count(async {
                d.counting.controller().delete_volume(delete_request(&id)).await?;
                Ok(())
            })
            .await?;
        create.processes.push(nc);
        delete.processes.push(nd);
        cycle.processes.push(nc + nd);
        create.commands = summarize(&cc);
        delete.commands = summarize(&cd);
        cycle.commands = summarize(&[cc, cd].concat());
    }
    for i in 0..s.count_reps {
        let mut id = String::new();
        let name = format!("count-{tag}-{i}");
        if i < s.heavy_reps() {
            let (k, c) = d
                .count(async {
                    let v = d.counting.controller().create_snapshot(snapshot_request(source, &name)).await?;
                    id = v.into_inner().snapshot.ok_or("no snapshot")?.snapshot_id;
                    Ok(())
                })
                .await?;
            snap.processes.push(k);
            snap.commands = summarize(&c);
        } else {
            id = driver_like_snapshot(source, &name);
        }
        let (k, c) = d
            .count(async {
                d.counting.controller().delete_snapshot(delete_snapshot_request(&id)).await?;
                Ok(())
            })
            .await?;
        unsnap.processes.push(k);
        unsnap.commands = summarize(&c);
    }
    let mut listed_volumes = 0;
    for _ in 0..s.heavy_reps() {
        let (k, c) = d
            .count(async {
                listed_volumes = d.counting.controller().list_volumes(list_volumes_request()).await?.into_inner().entries.len();
                Ok(())
            })
            .await?;
        list.processes.push(k);
        list.commands = format!("{} ({listed_volumes} volumes listed)", summarize(&c));
    }
    if listed_volumes < s.volumes {
        return Err(format!("ListVolumes returned {listed_volumes} volumes, fewer than the {} created", s.volumes).into());
    }
    for _ in 0..s.count_reps {
        let (k, c) = d
            .count(async {
                let found = d.counting.controller().list_snapshots(list_snapshots_request(&f.listed)).await?.into_inner().entries.len();
                if found != LISTED_SNAPSHOTS {
                    return Err(format!("ListSnapshots of {} found {found} snapshots, not {LISTED_SNAPSHOTS}", f.listed).into());
                }
                Ok(())
            })
            .await?;
        list_snaps.processes.push(k);
        list_snaps.commands = summarize(&c);
        let (k, c) = d.count(async { d.counting.controller().get_capacity(capacity_request(pool)).await.map(drop).map_err(Into::into) }).await?;
        capacity.processes.push(k);
        capacity.commands = summarize(&c);
        let (k, c) = d
            .count(async { d.counting.node().node_get_volume_stats(stats_request(&f.staged, &f.staging)).await.map(drop).map_err(Into::into) })
            .await?;
        stats.processes.push(k);
        stats.commands = summarize(&c);
    }

    // ---- latency: CreateVolume and DeleteVolume, against bare zfs create and zfs destroy of
    // the same kind (a thin dataset with a legacy mountpoint and a refquota, without our user
    // properties).
    let quota = format!("refquota={VOLUME_BYTES}");
    for i in 0..n {
        for side in [i % 2, 1 - i % 2] {
            if side == 0 {
                let name = format!("pvc-bench-{tag}-{i}");
                let (c, v) = timed(d.plain.controller().create_volume(volume_request(pool, &name, false))).await?;
                let id = v.into_inner().volume.ok_or("no volume")?.volume_id;
                let (del, _) = timed(d.plain.controller().delete_volume(delete_request(&id))).await?;
                create.driver.push(c);
                delete.driver.push(del);
                cycle.driver.push(c + del);
            } else {
                let name = format!("{pool}/bare-{tag}-{i}");
                let c = bare(&["create", "-o", "mountpoint=legacy", "-o", &quota, &name]);
                let del = bare_destroy(&name);
                create.bare.push(c);
                delete.bare.push(del);
                cycle.bare.push(c + del);
            }
        }
    }

    // CreateSnapshot and DeleteSnapshot of a dataset volume, against bare zfs snapshot and
    // zfs destroy of a snapshot. CreateSnapshot reads every dataset below the parents (the
    // name must be unique across volumes): it gets the few heavy samples. DeleteSnapshot gets
    // the rest on snapshots taken by bare `zfs snapshot` with the properties CreateSnapshot
    // sets, which it deletes the same way.
    for i in 0..n.max(s.heavy_samples) {
        for side in [i % 2, 1 - i % 2] {
            if side == 0 {
                let name = format!("snap-{tag}-{i}");
                let id = if i < s.heavy_samples {
                    let (c, v) = timed(d.plain.controller().create_snapshot(snapshot_request(source, &name))).await?;
                    snap.driver.push(c);
                    v.into_inner().snapshot.ok_or("no snapshot")?.snapshot_id
                } else {
                    driver_like_snapshot(source, &name)
                };
                if i < n {
                    unsnap.driver.push(timed(d.plain.controller().delete_snapshot(delete_snapshot_request(&id))).await?.0);
                } else {
                    d.plain.controller().delete_snapshot(delete_snapshot_request(&id)).await?;
                }
            } else if i < n {
                let name = format!("{source}@bare-{tag}-{i}");
                snap.bare.push(bare(&["snapshot", &name]));
                unsnap.bare.push(bare(&["destroy", &name]));
            }
        }
    }

    // The read-only RPCs, each against the one bare command closest to it.
    for i in 0..n {
        for side in [i % 2, 1 - i % 2] {
            if side == 0 {
                list_snaps.driver.push(timed(d.plain.controller().list_snapshots(list_snapshots_request(&f.listed))).await?.0);
                capacity.driver.push(timed(d.plain.controller().get_capacity(capacity_request(pool))).await?.0);
                stats.driver.push(timed(d.plain.node().node_get_volume_stats(stats_request(&f.staged, &f.staging))).await?.0);
            } else {
                list_snaps.bare.push(bare(&["list", "-H", "-p", "-t", "snapshot", "-d", "1", &f.listed]));
                capacity.bare.push(bare(&["get", "-H", "-p", "available", pool]));
                stats.bare.push(bare(&["get", "-H", "-p", "used,available", &f.staged]));
            }
        }
    }

    // ListVolumes reads every dataset: the longest stretch, on a freshly started latency
    // driver so that no periodic reaper pass runs beside it.
    d.restart_plain().await;
    let mut list_args = vec!["list", "-H", "-p", "-r"];
    list_args.extend(&parents);
    let mut datasets = 0;
    for i in 0..s.heavy_samples {
        for side in [i % 2, 1 - i % 2] {
            if side == 0 {
                list.driver.push(timed(d.plain.controller().list_volumes(list_volumes_request())).await?.0);
            } else {
                let start = Instant::now();
                datasets = zfs(&list_args).lines().count();
                list.bare.push(start.elapsed());
            }
        }
    }

    Ok(Phase {
        label: label.to_string(),
        rows: vec![create, delete, cycle, snap, unsnap, list, list_snaps, capacity, stats],
        snapshots,
        datasets,
        elapsed: start.elapsed(),
    })
}

// ---- the report -------------------------------------------------------------------------

/// A figure of /proc/PID/status in bytes: VmRSS (resident now) or VmHWM (the peak).
fn status_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn mib(bytes: Option<u64>) -> String {
    bytes.map(|b| format!("{:.1} MiB", b as f64 / (1 << 20) as f64)).unwrap_or_else(|| "?".into())
}

/// GET /metrics over plain HTTP: the latency and the body's size.
fn scrape(address: &str) -> Res<(Duration, usize)> {
    use std::io::{Read, Write};
    let start = Instant::now();
    let mut stream = std::net::TcpStream::connect(address)?;
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: {address}\r\n\r\n")?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    if !response.starts_with(b"HTTP/1.1 200") {
        return Err(format!("scrape: {}", String::from_utf8_lossy(&response[..response.len().min(200)])).into());
    }
    Ok((start.elapsed(), response.len()))
}

/// The metrics endpoint and the driver's memory with every volume in place (issue 11's
/// targets: idle RSS under 10 MiB, under 32 MiB while answering 100 concurrent RPCs): a
/// fresh driver serving metrics without caching, so each scrape reads ZFS; its RSS idle,
/// after the scrapes, and its peak (VmHWM) over 100 concurrent CreateVolume then 100
/// concurrent DeleteVolume.
async fn metrics_and_memory(s: &Settings) -> Res<()> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let address = format!("127.0.0.1:{port}");
    let parents = s.parents.join(",");
    let d = DriverProcess::start_with(&["--parents", &parents, "--metrics-address", &address, "--metrics-cache-seconds", "0"]).await;
    wait_idle(&d).await;
    let idle = status_bytes(d.pid(), "VmRSS:");
    let mut latencies = Vec::new();
    let mut size = 0;
    for _ in 0..s.heavy_samples.max(1) {
        let (took, bytes) = scrape(&address)?;
        latencies.push(took);
        size = bytes;
    }
    latencies.sort();
    let after_scrapes = status_bytes(d.pid(), "VmRSS:");
    let pool = s.pool().to_string();
    let names: Vec<String> = (0..100).map(|i| format!("pvc-burst-{i:03}")).collect();
    let burst = Instant::now();
    let created = futures_join(names.iter().map(|name| {
        let mut c = d.controller();
        let req = volume_request(&pool, name, false);
        async move { c.create_volume(req).await.map(|r| r.into_inner().volume.map(|v| v.volume_id).unwrap_or_default()) }
    }))
    .await;
    let ids: Vec<String> = created.into_iter().collect::<Result<_, _>>()?;
    let deleted = futures_join(ids.iter().map(|id| {
        let mut c = d.controller();
        let req = delete_request(id);
        async move { c.delete_volume(req).await.map(drop) }
    }))
    .await;
    deleted.into_iter().collect::<Result<Vec<()>, _>>()?;
    let burst_took = burst.elapsed();
    let peak = status_bytes(d.pid(), "VmHWM:");
    println!("\n== metrics endpoint and memory ({} volumes below the parents)", s.volumes);
    println!(
        "scrape without cache (one zpool list; per parent one zfs get -r and one snapshot-counting channel program): p50 {:.0} ms, max {:.0} ms, {:.0} KiB of text",
        ms(percentile(&latencies, 0.5)),
        ms(*latencies.last().unwrap_or(&Duration::ZERO)),
        size as f64 / 1024.0
    );
    println!("driver RSS idle: {}; after the scrapes: {}; peak over 100 concurrent CreateVolume then 100 concurrent DeleteVolume ({:.1} s): {}",
        mib(idle), mib(after_scrapes), burst_took.as_secs_f64(), mib(peak));
    println!("targets: idle RSS under 10 MiB, under 32 MiB while answering 100 concurrent RPCs");
    Ok(())
}

/// Runs the futures concurrently (spawned), results in order.
async fn futures_join<F, T>(futures: impl Iterator<Item = F>) -> Vec<T>
where
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut results = Vec::with_capacity(handles.len());
    for handle in handles {
        results.push(handle.await.expect("a burst task panicked"));
    }
    results
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
        _ => "–".into(),
    }
}

fn report(without: &Phase, with: &Phase) {
    println!("\n== summary: p50/p95 ms and zfs/zpool processes per call, without → with foreign snapshots");
    println!(
        "| RPC | without: p50 / p95 | procs | with {} snapshots: p50 / p95 | procs | p50 with ÷ without (bare's) | bare command | bare p50 without | bare p50 with |",
        with.snapshots
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (a, b) in without.rows.iter().zip(&with.rows) {
        println!(
            "| {} | {} / {} | {} | {} / {} | {} | {} | {} | {} | {} |",
            a.name,
            fmt_ms(a.p50()),
            fmt_ms(a.p95()),
            a.process_count(),
            fmt_ms(b.p50()),
            fmt_ms(b.p95()),
            b.process_count(),
            format!("{} ({})", ratio(b.p50(), a.p50()), ratio(b.bare_p50(), a.bare_p50())),
            a.bare_name,
            fmt_ms(a.bare_p50()),
            fmt_ms(b.bare_p50())
        );
    }

    println!("\n== against the targets (figures only; read them, nothing is asserted)");
    for phase in [without, with] {
        let list = phase.row("ListVolumes");
        let cycle = phase.row("CreateVolume+DeleteVolume");
        println!(
            "{}: ListVolumes p50 {} ms = {} one bare `zfs list -r` of the parents ({} ms); target at most 2×",
            phase.label,
            fmt_ms(list.p50()),
            ratio(list.p50(), list.bare_p50()),
            fmt_ms(list.bare_p50())
        );
        let over = match (cycle.p50(), cycle.bare_p50()) {
            (Some(d), Some(b)) => format!("{:+.0}%", (d / b - 1.0) * 100.0),
            _ => "–".into(),
        };
        println!(
            "{}: CreateVolume+DeleteVolume p50 {} ms, bare zfs create+destroy {} ms: {over}; target at most +15%",
            phase.label,
            fmt_ms(cycle.p50()),
            fmt_ms(cycle.bare_p50())
        );
    }
    // The machine's speed drifts between the phases (other work on the host): each RPC's
    // growth is read against its bare command's, measured interleaved with it.
    for name in ["CreateVolume", "DeleteVolume", "CreateSnapshot", "DeleteSnapshot"] {
        let (a, b) = (without.row(name), with.row(name));
        let relative = match (a.p50(), b.p50(), a.bare_p50(), b.bare_p50()) {
            (Some(a), Some(b), Some(ab), Some(bb)) => format!("{:.2}", (b / a) / (bb / ab)),
            _ => "–".into(),
        };
        println!(
            "{name}: p50 {} → {} ms ({}; its bare command {}; relative {relative}), processes {} → {}; target: no growth with foreign snapshots",
            fmt_ms(a.p50()),
            fmt_ms(b.p50()),
            ratio(b.p50(), a.p50()),
            ratio(b.bare_p50(), a.bare_p50()),
            a.process_count(),
            b.process_count()
        );
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Res<()> {
    let s = Settings::from_env()?;
    let started = Instant::now();
    let work = tempfile::tempdir()?;
    println!(
        "zfs-csi scale benchmark: parents {}, {} driver volumes (every {} a sparse zvol), {} foreign datasets with {} snapshots in {}, {} samples per figure ({} for ListVolumes, its bare zfs list and CreateSnapshot)",
        s.parents.join(","),
        s.volumes,
        if s.zvol_every > 0 { s.zvol_every.to_string() } else { "none".into() },
        s.foreign_datasets,
        s.snapshots,
        s.pool(),
        s.samples,
        s.heavy_samples
    );
    println!("{}", zfs(&["version"]).trim().replace('\n', ", "));

    let drivers = Drivers::start(&s, work.path()).await;
    // First, while the pools are empty: CreateSnapshot reads every dataset.
    let fixtures = make_fixtures(&s, &drivers.plain, work.path()).await?;
    let took = populate(&s, &drivers.plain).await?;
    drop(drivers);
    println!(
        "setup: {} volumes created through the driver, {} in flight: {:.1} s ({:.0} ms per volume)",
        s.volumes,
        s.concurrency,
        took.as_secs_f64(),
        ms(took) / s.volumes.max(1) as f64
    );
    let start = Instant::now();
    let mut drivers = Drivers::start(&s, work.path()).await;
    println!("drivers restarted and idle after {:.1} s (their start-up reaper pass)", start.elapsed().as_secs_f64());
    let without = measure(&s, "without foreign snapshots", "a", LISTED_SNAPSHOTS, &mut drivers, &fixtures).await?;
    without.print();
    drop(drivers);

    let (snapshots, took) = make_foreign(&s)?;
    println!(
        "\nsetup: {} foreign datasets in {} with {snapshots} snapshots by bare zfs create/snapshot: {:.1} s",
        s.foreign_datasets,
        s.pool(),
        took.as_secs_f64()
    );
    // Fresh drivers: their start-up reaper pass is over before anything is measured, and the
    // next periodic pass is ten minutes away.
    let start = Instant::now();
    let mut drivers = Drivers::start(&s, work.path()).await;
    println!("drivers restarted and idle after {:.1} s (their start-up reaper pass)", start.elapsed().as_secs_f64());
    let with = measure(&s, "with foreign snapshots", "b", snapshots + LISTED_SNAPSHOTS, &mut drivers, &fixtures).await?;
    with.print();
    report(&without, &with);
    metrics_and_memory(&s).await?;

    drivers
        .plain
        .node()
        .node_unstage_volume(csi::NodeUnstageVolumeRequest {
            volume_id: fixtures.staged.clone(),
            staging_target_path: fixtures.staging.display().to_string(),
        })
        .await?;
    println!("\nscale benchmark done in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

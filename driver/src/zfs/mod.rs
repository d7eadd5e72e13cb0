//! The ZFS layer: typed operations over the host's `zfs` and `zpool` commands. Nothing else in
//! the driver runs them. Output is read in the parseable `-H -p` form that every OpenZFS
//! release from 2.1 to 2.3 prints the same way (no 2.3-only `-j` JSON).

mod error;
mod name;
mod types;

pub use error::ZfsError;
pub use name::{validate_component, DatasetName, NameError, SnapshotName};
pub use types::{Dataset, DatasetType, Pool, PoolStats, PropertySource, PropertyValue};

use crate::process::{Finished, ProcessError, ProcessRunner};

/// Properties given to `zfs create/snapshot/clone -o` or `zfs set`, in order.
pub type Properties = Vec<(String, String)>;

/// The wrapping key (or passphrase) of an encryption root, as a Secret gave it. It only ever
/// reaches `zfs` on standard input (`keylocation=prompt`): never an argument, which `ps` shows
/// to every user of the host, never a property, never a log line (`Debug` hides it).
#[derive(Clone, PartialEq, Eq)]
pub struct KeyMaterial(Vec<u8>);

impl KeyMaterial {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(bytes.into())
    }

    fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyMaterial(<redacted>)")
    }
}

pub type Result<T> = std::result::Result<T, ZfsError>;

/// Something `zfs get`/`zfs set` can address: a dataset or a snapshot.
pub trait ZfsTarget: Sync {
    fn zfs_name(&self) -> String;
}

impl ZfsTarget for DatasetName {
    fn zfs_name(&self) -> String {
        self.as_str().to_string()
    }
}

impl ZfsTarget for SnapshotName {
    fn zfs_name(&self) -> String {
        self.to_string()
    }
}

/// How far below the target `zfs get` looks.
#[derive(Clone, Copy, Debug)]
pub enum Depth {
    /// The target itself.
    Itself,
    /// The target and its descendants down to this many levels (`-d N`).
    Levels(u32),
    /// All descendants (`-r`).
    All,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destroy {
    Now,
    /// `zfs destroy -d`: a snapshot with clones is marked and goes with its last clone.
    DeferWhileCloned,
}

/// What `delete_if_owned` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OwnedDelete {
    /// Destroyed; a clone names the snapshot it came from.
    Destroyed { origin: Option<String> },
    /// Snapshots or child datasets depend on it: marked deleted (the property named in the
    /// call set to "true") instead, in the same transaction group as the check.
    Marked,
    NotFound,
    /// The owner property is not set on the dataset itself to the expected value, or it is
    /// not a filesystem or volume.
    NotOwned,
    /// ZFS refused: EBUSY when it is mounted or open (or udev is probing a new zvol).
    Refused(i32),
}

/// A ZFS channel program: destroy a filesystem or volume only if `owner_prop` is set on it,
/// locally (not inherited, not received), to `owner`; if snapshots or children depend on it,
/// set `mark_prop=true` on it instead. Everything happens in one transaction group, so nothing
/// can change the dataset between the checks and the destroy or the mark: a snapshot deleted
/// concurrently is either seen (marked, and its deleter then reaps the volume) or not (the
/// volume is destroyed); no interleaving leaves a marked volume without dependents.
///
/// It never unmounts anything (unlike `zfs destroy`): a mounted filesystem or an open zvol is
/// refused with EBUSY by the kernel.
const DELETE_IF_OWNED: &str = r#"
local argv = (...)["argv"]
local ds, owner_prop, owner, mark_prop = argv[1], argv[2], argv[3], argv[4]
if not zfs.exists(ds) then return "missing" end
local kind = zfs.get_prop(ds, "type")
if kind ~= "filesystem" and kind ~= "volume" then return "not-owned" end
local value, source = zfs.get_prop(ds, owner_prop)
if value ~= owner or source ~= ds then return "not-owned" end
local dependent = false
for _ in zfs.list.children(ds) do dependent = true break end
if not dependent then
  for _ in zfs.list.snapshots(ds) do dependent = true break end
end
if dependent then
  local err = zfs.sync.set_prop(ds, mark_prop, "true")
  if err ~= 0 then return "refused " .. err end
  return "marked"
end
local origin = zfs.get_prop(ds, "origin")
local err = zfs.sync.destroy(ds)
if err ~= 0 then return "refused " .. err end
return "destroyed " .. (origin or "")
"#;

/// A read-only ZFS channel program: the filesystems and volumes at or below `parent` that have
/// a snapshot named `snap`, separated by tabs (which no dataset name holds). The walk happens
/// in the kernel, one existence check per dataset: its cost grows with the datasets, never with
/// the snapshots they hold (sanoid's thousands), and it needs no transaction group (`-n`).
const DATASETS_WITH_SNAPSHOT: &str = r#"
local argv = (...)["argv"]
local parent, snap = argv[1], argv[2]
if not zfs.exists(parent) then return "" end
local found = {}
local pending = {parent}
while #pending > 0 do
  local ds = table.remove(pending)
  if zfs.exists(ds .. "@" .. snap) then found[#found + 1] = ds end
  for child in zfs.list.children(ds) do pending[#pending + 1] = child end
end
return table.concat(found, "\t")
"#;

/// A read-only ZFS channel program: how many snapshots each filesystem and volume at or below
/// `parent` has, as `name=count` entries separated by tabs (datasets without snapshots left
/// out). The snapshots are counted in the kernel, not listed through userland: for the
/// metrics, read once per cache interval.
const SNAPSHOT_COUNTS: &str = r#"
local argv = (...)["argv"]
local parent = argv[1]
if not zfs.exists(parent) then return "" end
local counts = {}
local pending = {parent}
while #pending > 0 do
  local ds = table.remove(pending)
  local n = 0
  for _ in zfs.list.snapshots(ds) do n = n + 1 end
  if n > 0 then counts[#counts + 1] = ds .. "=" .. n end
  for child in zfs.list.children(ds) do pending[#pending + 1] = child end
end
return table.concat(counts, "\t")
"#;

/// The string a channel program returned: `return: '<value>'` in `zfs program`'s output.
fn channel_program_result(output: &str) -> Option<&str> {
    let line = output.lines().find_map(|l| l.trim().strip_prefix("return: "))?;
    line.strip_prefix('\'')?.strip_suffix('\'')
}

fn parse_snapshot_counts(result: &str) -> std::result::Result<std::collections::BTreeMap<String, u64>, String> {
    result
        .split('\t')
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            let (name, count) = entry.rsplit_once('=').ok_or_else(|| format!("no count in {entry:?}"))?;
            Ok((name.to_string(), count.parse().map_err(|e| format!("{entry:?}: {e}"))?))
        })
        .collect()
}

fn parse_owned_delete(result: &str) -> Option<OwnedDelete> {
    Some(match result.split_once(' ').unwrap_or((result, "")) {
        ("missing", _) => OwnedDelete::NotFound,
        ("not-owned", _) => OwnedDelete::NotOwned,
        ("marked", _) => OwnedDelete::Marked,
        ("refused", errno) => OwnedDelete::Refused(errno.trim().parse().ok()?),
        ("destroyed", origin) => OwnedDelete::Destroyed {
            origin: Some(origin.trim()).filter(|o| !o.is_empty() && *o != "-").map(str::to_string),
        },
        _ => return None,
    })
}

#[derive(Clone, Debug)]
pub struct Zfs {
    runner: ProcessRunner,
}

fn option_args(properties: &Properties) -> Vec<String> {
    properties
        .iter()
        .flat_map(|(k, v)| ["-o".to_string(), format!("{k}={v}")])
        .collect()
}

fn strings<const N: usize>(args: [&str; N]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

impl Zfs {
    pub fn new(runner: ProcessRunner) -> Self {
        Self { runner }
    }

    /// Runs `zfs`/`zpool`: standard output on success, a typed error from standard error
    /// otherwise.
    async fn run(&self, program: &str, args: &[String]) -> Result<String> {
        self.run_with_input(program, args, None).await
    }

    async fn run_with_input(&self, program: &str, args: &[String], input: Option<&[u8]>) -> Result<String> {
        let finished = self.run_to_end(program, args, input).await?;
        if finished.success() {
            Ok(finished.stdout)
        } else {
            Err(ZfsError::from_stderr(finished.command, finished.stderr))
        }
    }

    /// Runs a command to its end, successful or not; an error only when it could not run.
    /// Every command's latency and outcome go to the metrics, by subcommand (`zfs get`).
    async fn run_to_end(&self, program: &str, args: &[String], input: Option<&[u8]>) -> Result<Finished> {
        let started = std::time::Instant::now();
        let result = self.runner.run_with_input(program, args, input).await;
        let subcommand = format!("{program} {}", args.first().map(String::as_str).unwrap_or_default());
        let failed = !matches!(&result, Ok(finished) if finished.success());
        crate::metrics::record_command(&subcommand, started.elapsed(), failed);
        result.map_err(|e| match e {
            ProcessError::Spawn { command, reason } => ZfsError::Unavailable { command, reason },
            ProcessError::TimedOut { command, after } => ZfsError::TimedOut { command, after },
        })
    }

    async fn zfs(&self, args: Vec<String>) -> Result<String> {
        self.run("zfs", &args).await
    }

    /// The userland and kernel module versions (`zfs version`, OpenZFS 0.8 and later).
    pub async fn version(&self) -> Result<String> {
        Ok(self.zfs(strings(["version"])).await?.trim().replace('\n', ", "))
    }

    /// `zfs create -o …`. One ioctl, but not one transaction: OpenZFS creates the dataset in
    /// one sync task and sets the properties in a second (`zfs_ioc_create`: "It would be nice
    /// to do this atomically"). A property ZFS refuses makes the ioctl destroy the new dataset
    /// again; a power loss between the two sync tasks leaves it without any of `properties`.
    /// `key`: the key of a new encryption root with `keylocation=prompt`, on standard input.
    pub async fn create_filesystem(&self, name: &DatasetName, properties: &Properties, key: Option<&KeyMaterial>) -> Result<()> {
        let mut args = strings(["create"]);
        args.extend(option_args(properties));
        args.push(name.zfs_name());
        self.run_with_input("zfs", &args, key.map(KeyMaterial::bytes)).await.map(drop)
    }

    /// `zfs create [-s] -V size -o …`: as `create_filesystem`, two sync tasks. `volsize`,
    /// `volblocksize` and the encryption properties are part of the first; the rest,
    /// including the `refreservation` libzfs adds for a non-sparse zvol, of the second.
    pub async fn create_volume(
        &self,
        name: &DatasetName,
        size_bytes: u64,
        sparse: bool,
        properties: &Properties,
        key: Option<&KeyMaterial>,
    ) -> Result<()> {
        let mut args = strings(["create"]);
        if sparse {
            args.push("-s".into());
        }
        args.extend(["-V".to_string(), size_bytes.to_string()]);
        args.extend(option_args(properties));
        args.push(name.zfs_name());
        self.run_with_input("zfs", &args, key.map(KeyMaterial::bytes)).await.map(drop)
    }

    /// `zfs load-key`: the key of the encryption root `root` from standard input (`key`, for
    /// `keylocation=prompt`) or from its `keylocation` (`None`). A key already loaded, by a
    /// concurrent call or the operator, is success. A wrong key is `WrongKey`, and ZFS has then
    /// changed nothing.
    pub async fn load_key(&self, root: &DatasetName, key: Option<&KeyMaterial>) -> Result<()> {
        let args = vec!["load-key".to_string(), root.zfs_name()];
        let finished = self.run_to_end("zfs", &args, key.map(KeyMaterial::bytes)).await?;
        if finished.success() || finished.stderr.to_ascii_lowercase().contains("key already loaded") {
            return Ok(());
        }
        Err(ZfsError::from_stderr(finished.command, finished.stderr))
    }

    /// `zfs inherit property target`: the property goes back to what the parent gives.
    pub async fn inherit(&self, target: &dyn ZfsTarget, property: &str) -> Result<()> {
        self.zfs(vec!["inherit".to_string(), property.to_string(), target.zfs_name()]).await.map(drop)
    }

    /// Whether `pool` has a special allocation class vdev, from the configuration `zpool status
    /// -P` prints: the class heads its vdevs on a line of its own, and `-P` makes every device
    /// a full path, so no device is printed as a bare `special`.
    pub async fn has_special_vdev(&self, pool: &str) -> Result<bool> {
        let output = self.run("zpool", &strings(["status", "-P", pool])).await?;
        Ok(output.lines().any(|line| line.split_whitespace().next() == Some("special")))
    }

    /// `zfs snapshot -o …`: atomic. The snapshot and its (user) properties are made in one
    /// sync task (`dsl_dataset_snapshot_sync`), so a snapshot never exists without them.
    pub async fn snapshot(&self, snapshot: &SnapshotName, properties: &Properties) -> Result<()> {
        let mut args = strings(["snapshot"]);
        args.extend(option_args(properties));
        args.push(snapshot.zfs_name());
        self.zfs(args).await.map(drop)
    }

    /// `zfs clone -o …`: as `create_filesystem`, two sync tasks (`zfs_ioc_clone`). A clone
    /// takes its origin's set-once properties (`volblocksize`, encryption, `casesensitivity`,
    /// …): ZFS refuses them here.
    pub async fn clone_snapshot(
        &self,
        origin: &SnapshotName,
        target: &DatasetName,
        properties: &Properties,
    ) -> Result<()> {
        let mut args = strings(["clone"]);
        args.extend(option_args(properties));
        args.push(origin.zfs_name());
        args.push(target.zfs_name());
        self.zfs(args).await.map(drop)
    }

    /// Destroys the filesystem or volume `name` if `owner_prop` is set on it to `owner`, or
    /// marks it with `mark_prop` while snapshots or children depend on it (see
    /// `DELETE_IF_OWNED`): the only way the driver destroys a volume. The script reaches
    /// `zfs program` on standard input as `/dev/stdin`, so it needs no file in the host's
    /// namespace behind a command prefix.
    pub async fn delete_if_owned(&self, name: &DatasetName, owner_prop: &str, owner: &str, mark_prop: &str) -> Result<OwnedDelete> {
        let args: Vec<String> = ["program", name.pool(), "/dev/stdin", name.as_str(), owner_prop, owner, mark_prop]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let command = format!("zfs {}", args.join(" "));
        let output = self.run_with_input("zfs", &args, Some(DELETE_IF_OWNED.as_bytes())).await?;
        channel_program_result(&output)
            .and_then(parse_owned_delete)
            .ok_or_else(|| ZfsError::Parse { command, reason: format!("unexpected output {output:?}") })
    }

    /// The filesystems and volumes at or below `parent` that have a snapshot named `snap`
    /// (see `DATASETS_WITH_SNAPSHOT`): one process per parent, whatever the snapshot count.
    pub async fn datasets_with_snapshot(&self, parent: &DatasetName, snap: &str) -> Result<Vec<String>> {
        let args: Vec<String> = ["program", "-n", parent.pool(), "/dev/stdin", parent.as_str(), snap]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let command = format!("zfs {}", args.join(" "));
        let output = self.run_with_input("zfs", &args, Some(DATASETS_WITH_SNAPSHOT.as_bytes())).await?;
        let found = channel_program_result(&output)
            .ok_or_else(|| ZfsError::Parse { command, reason: format!("unexpected output {output:?}") })?;
        Ok(found.split('\t').filter(|n| !n.is_empty()).map(str::to_string).collect())
    }

    pub async fn destroy_snapshot(&self, snapshot: &SnapshotName, mode: Destroy) -> Result<()> {
        let mut args = strings(["destroy"]);
        if mode == Destroy::DeferWhileCloned {
            args.push("-d".into());
        }
        args.push(snapshot.zfs_name());
        self.zfs(args).await.map(drop)
    }

    /// `zfs set k=v …` in one call, so the properties change together.
    pub async fn set(&self, target: &dyn ZfsTarget, properties: &Properties) -> Result<()> {
        if properties.is_empty() {
            return Ok(());
        }
        let mut args = strings(["set"]);
        args.extend(properties.iter().map(|(k, v)| format!("{k}={v}")));
        args.push(target.zfs_name());
        self.zfs(args).await.map(drop)
    }

    /// `zfs get -H -p -o name,property,value,source`, grouped by dataset in output order.
    pub async fn get(
        &self,
        target: &dyn ZfsTarget,
        properties: &[&str],
        depth: Depth,
        types: &[DatasetType],
    ) -> Result<Vec<Dataset>> {
        self.get_many(&[target.zfs_name()], properties, depth, types).await
    }

    /// `zfs get` of several datasets in one command (one process, however many).
    pub async fn get_many(
        &self,
        targets: &[String],
        properties: &[&str],
        depth: Depth,
        types: &[DatasetType],
    ) -> Result<Vec<Dataset>> {
        let mut args = strings(["get", "-H", "-p", "-o", "name,property,value,source"]);
        match depth {
            Depth::Itself => {}
            Depth::Levels(n) => args.extend(["-d".to_string(), n.to_string()]),
            Depth::All => args.push("-r".into()),
        }
        if !types.is_empty() {
            let types: Vec<&str> = types.iter().map(|t| t.as_str()).collect();
            args.extend(["-t".to_string(), types.join(",")]);
        }
        args.push(properties.join(","));
        args.extend(targets.iter().cloned());
        let command = format!("zfs {}", args.join(" "));
        let output = self.zfs(args).await?;
        types::parse_get_output(&output).map_err(|reason| ZfsError::Parse { command, reason })
    }

    /// The properties of those of `targets` that exist, in one command per 256 targets: a
    /// lookup of known names costs one open each, however many other snapshots the datasets
    /// have. `zfs get` reports a missing target on standard error and carries on with the
    /// others; any other error fails the call.
    pub async fn get_existing(&self, targets: &[String], properties: &[&str]) -> Result<Vec<Dataset>> {
        let mut found = Vec::new();
        for chunk in targets.chunks(256) {
            let mut args = strings(["get", "-H", "-p", "-o", "name,property,value,source"]);
            args.push(properties.join(","));
            args.extend(chunk.iter().cloned());
            let command = format!("zfs {}", args.join(" "));
            let finished = self.run_to_end("zfs", &args, None).await?;
            if !finished.success() {
                let other = finished
                    .stderr
                    .lines()
                    .filter(|l| !l.trim().is_empty())
                    .find(|l| !ZfsError::from_stderr(command.clone(), l.to_string()).is_not_found());
                if let Some(line) = other {
                    return Err(ZfsError::from_stderr(finished.command, line.to_string()));
                }
            }
            found.extend(types::parse_get_output(&finished.stdout).map_err(|reason| ZfsError::Parse { command, reason })?);
        }
        Ok(found)
    }

    /// The properties of one dataset or snapshot; `NotFound` when it does not exist.
    pub async fn get_one(&self, target: &dyn ZfsTarget, properties: &[&str]) -> Result<Dataset> {
        let name = target.zfs_name();
        self.get(target, properties, Depth::Itself, &[])
            .await?
            .into_iter()
            .find(|d| d.name == name)
            .ok_or(ZfsError::NotFound(name))
    }

    /// Like `get_one`, but `None` for a dataset that does not exist.
    pub async fn find(&self, target: &dyn ZfsTarget, properties: &[&str]) -> Result<Option<Dataset>> {
        match self.get_one(target, properties).await {
            Ok(d) => Ok(Some(d)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Size, allocation, fragmentation and health of `pools`, in one `zpool list`. A pool
    /// that is not imported is left out (a node may lack some of the parents' pools).
    pub async fn pool_stats(&self, pools: &[&str]) -> Result<Vec<PoolStats>> {
        let mut args = strings(["list", "-H", "-p", "-o", "name,size,allocated,free,fragmentation,health"]);
        args.extend(pools.iter().map(|p| p.to_string()));
        let command = format!("zpool {}", args.join(" "));
        let finished = self.run_to_end("zpool", &args, None).await?;
        if !finished.success() && finished.stdout.trim().is_empty() {
            let missing_only = finished.stderr.lines().all(|l| ZfsError::from_stderr(command.clone(), l.to_string()).is_not_found());
            if !missing_only {
                return Err(ZfsError::from_stderr(finished.command, finished.stderr));
            }
        }
        finished
            .stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(types::parse_pool_stats_line)
            .collect::<std::result::Result<_, _>>()
            .map_err(|reason| ZfsError::Parse { command, reason })
    }

    /// Snapshot counts of the filesystems and volumes at or below `parent` (see
    /// `SNAPSHOT_COUNTS`), by dataset name; one process whatever the counts.
    pub async fn snapshot_counts(&self, parent: &DatasetName) -> Result<std::collections::BTreeMap<String, u64>> {
        let args: Vec<String> = ["program", "-n", parent.pool(), "/dev/stdin", parent.as_str()]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let command = format!("zfs {}", args.join(" "));
        let output = self.run_with_input("zfs", &args, Some(SNAPSHOT_COUNTS.as_bytes())).await?;
        let result = channel_program_result(&output)
            .ok_or_else(|| ZfsError::Parse { command: command.clone(), reason: format!("unexpected output {output:?}") })?;
        parse_snapshot_counts(result).map_err(|reason| ZfsError::Parse { command, reason })
    }

    pub async fn pool(&self, pool: &str) -> Result<Pool> {
        let args = strings(["list", "-H", "-p", "-o", "name,size,allocated,free,health", pool]);
        let command = format!("zpool {}", args.join(" "));
        let output = self.run("zpool", &args).await?;
        types::parse_pool_line(output.lines().next().unwrap_or_default())
            .map_err(|reason| ZfsError::Parse { command, reason })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_program_output_is_read() {
        let out = "Channel program fully executed and produced output:\n    return: 'destroyed vms/s@x'\n";
        let result = channel_program_result(out).unwrap();
        assert_eq!(parse_owned_delete(result), Some(OwnedDelete::Destroyed { origin: Some("vms/s@x".into()) }));
        assert_eq!(parse_owned_delete("destroyed "), Some(OwnedDelete::Destroyed { origin: None }));
        assert_eq!(parse_owned_delete("refused 16"), Some(OwnedDelete::Refused(16)));
        assert_eq!(parse_owned_delete("marked"), Some(OwnedDelete::Marked));
        assert_eq!(parse_owned_delete("not-owned"), Some(OwnedDelete::NotOwned));
        assert_eq!(parse_owned_delete("missing"), Some(OwnedDelete::NotFound));
        assert_eq!(parse_owned_delete("something else"), None);
        assert_eq!(channel_program_result("Channel program fully executed with no return value.\n"), None);
    }

    #[test]
    fn snapshot_counts_and_snapshot_holders_are_read() {
        let out = "Channel program fully executed and produced output:\n    return: 'vms/a=3\tvms/b/c=1'\n";
        let counts = parse_snapshot_counts(channel_program_result(out).unwrap()).unwrap();
        assert_eq!(counts.get("vms/a"), Some(&3));
        assert_eq!(counts.get("vms/b/c"), Some(&1));
        assert!(parse_snapshot_counts("").unwrap().is_empty());
        assert!(parse_snapshot_counts("vms/a=x").is_err());
    }
}

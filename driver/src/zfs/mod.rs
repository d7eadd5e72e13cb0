//! The ZFS layer: typed operations over the host's `zfs` and `zpool` commands. Nothing else in
//! the driver runs them. Output is read in the parseable `-H -p` form that every OpenZFS
//! release from 2.1 to 2.3 prints the same way (no 2.3-only `-j` JSON).

mod error;
mod name;
mod types;

pub use error::ZfsError;
pub use name::{validate_component, DatasetName, NameError, SnapshotName};
pub use types::{Dataset, DatasetType, Pool, PropertySource, PropertyValue};

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

/// A snapshot or bookmark as a point of an incremental send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SendPoint {
    /// `dataset@snapshot` or `dataset#bookmark`.
    pub name: String,
    /// Equal on both sides of a send for the same snapshot.
    pub guid: u64,
    pub createtxg: u64,
}

/// What `zfs send` sends.
#[derive(Clone, Debug)]
pub enum SendStream {
    /// The whole snapshot.
    Full { snapshot: SnapshotName, raw: bool },
    /// From `base` (a snapshot or bookmark of the same dataset, full name) to `snapshot`.
    Incremental { base: String, snapshot: SnapshotName, raw: bool },
    /// The rest of an interrupted resumable send (`zfs send -t TOKEN`).
    Resume { token: String },
}

impl SendStream {
    fn args(&self) -> Vec<String> {
        // -L -e -c: large blocks, embedded and compressed blocks as they are on disk. An
        // encrypted dataset goes raw (-w, which implies them): the copy stays encrypted and
        // needs no loaded key.
        let flags = |raw: bool| if raw { vec!["-w".to_string()] } else { strings(["-L", "-e", "-c"]) };
        match self {
            SendStream::Full { snapshot, raw } => [flags(*raw), vec![snapshot.zfs_name()]].concat(),
            SendStream::Incremental { base, snapshot, raw } => [flags(*raw), vec!["-i".into(), base.clone(), snapshot.zfs_name()]].concat(),
            SendStream::Resume { token } => vec!["-t".into(), token.clone()],
        }
    }
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
local claim_prop, release_prop = argv[5], argv[6]
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
if origin and origin ~= "" and claim_prop and claim_prop ~= "" then
  -- The origin snapshot was taken for this clone: say so on it, in the same transaction
  -- group as the destroy, so that it is known garbage whatever happens next.
  local claim, claim_source = zfs.get_prop(origin, claim_prop)
  if claim == ds and claim_source == origin then
    zfs.sync.set_prop(origin, release_prop, "true")
  end
end
local err = zfs.sync.destroy(ds)
if err ~= 0 then return "refused " .. err end
return "destroyed " .. (origin or "")
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

    /// `zfs create -p -o … NAME`: a filesystem and any missing parents (which get defaults).
    pub async fn create_parents(&self, name: &DatasetName, properties: &Properties) -> Result<()> {
        let mut args = strings(["create", "-p"]);
        args.extend(option_args(properties));
        args.push(name.zfs_name());
        self.zfs(args).await.map(drop)
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
    /// `DELETE_IF_OWNED`): the only way the driver destroys a volume. With `release_origin`
    /// = `(claim_prop, release_prop)`, a destroyed clone whose origin snapshot has
    /// `claim_prop` set on itself to the clone's name gets `release_prop=true` on that
    /// snapshot in the same transaction group. The script reaches `zfs program` on standard
    /// input as `/dev/stdin`, so it needs no file in the host's namespace behind a command
    /// prefix.
    pub async fn delete_if_owned(
        &self,
        name: &DatasetName,
        owner_prop: &str,
        owner: &str,
        mark_prop: &str,
        release_origin: Option<(&str, &str)>,
    ) -> Result<OwnedDelete> {
        let (claim_prop, release_prop) = release_origin.unwrap_or(("", ""));
        let args: Vec<String> =
            ["program", name.pool(), "/dev/stdin", name.as_str(), owner_prop, owner, mark_prop, claim_prop, release_prop]
                .iter()
                .map(|s| s.to_string())
                .collect();
        let command = format!("zfs {}", args.join(" "));
        let output = self.run_with_input("zfs", &args, Some(DELETE_IF_OWNED.as_bytes())).await?;
        channel_program_result(&output)
            .and_then(parse_owned_delete)
            .ok_or_else(|| ZfsError::Parse { command, reason: format!("unexpected output {output:?}") })
    }

    /// Runs a read-only channel program (`zfs program -n`: no transaction group to wait for)
    /// in `parent`'s pool with `parent` and `args` as its arguments, the script on standard
    /// input; returns the string it returned and the command line, for errors.
    async fn read_only_program(&self, script: &str, parent: &DatasetName, args: &[&str]) -> Result<(String, String)> {
        let mut argv: Vec<String> = ["program", "-n", parent.pool(), "/dev/stdin", parent.as_str()].iter().map(|s| s.to_string()).collect();
        argv.extend(args.iter().map(|s| s.to_string()));
        let command = format!("zfs {}", argv.join(" "));
        let output = self.run_with_input("zfs", &argv, Some(script.as_bytes())).await?;
        match channel_program_result(&output) {
            Some(result) => Ok((result.to_string(), command)),
            None => Err(ZfsError::Parse { command, reason: format!("unexpected output {output:?}") }),
        }
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
        self.get_each_tolerating_missing(targets, properties, &[]).await
    }

    /// The snapshots of each of `datasets` (not of their descendants: `-d 1 -t snapshot`),
    /// with `properties`, in one command per 256 datasets. The cost is that of these
    /// datasets' own snapshots, whatever else the pool holds. A dataset destroyed meanwhile
    /// is skipped, as in `get_existing`.
    pub async fn snapshots_of(&self, datasets: &[String], properties: &[&str]) -> Result<Vec<Dataset>> {
        let options = strings(["-d", "1", "-t", DatasetType::Snapshot.as_str()]);
        self.get_each_tolerating_missing(datasets, properties, &options).await
    }

    /// The filesystems and volumes (`types`) below each of `parents`, the parents included,
    /// with `properties`: one recursive `zfs get` per parent, a nested parent's datasets
    /// listed once, sorted by name. A parent that does not exist (a node without that pool)
    /// adds nothing.
    pub async fn get_below(&self, parents: &[DatasetName], properties: &[&str], types: &[DatasetType]) -> Result<Vec<Dataset>> {
        let mut all: std::collections::BTreeMap<String, Dataset> = std::collections::BTreeMap::new();
        for parent in parents {
            let datasets = match self.get(parent, properties, Depth::All, types).await {
                Ok(d) => d,
                Err(ZfsError::NotFound(_)) => continue,
                Err(e) => return Err(e),
            };
            for dataset in datasets {
                all.entry(dataset.name.clone()).or_insert(dataset);
            }
        }
        Ok(all.into_values().collect())
    }

    /// `zfs get <options> properties target…` in chunks of 256 targets, skipping targets that
    /// do not exist.
    async fn get_each_tolerating_missing(&self, targets: &[String], properties: &[&str], options: &[String]) -> Result<Vec<Dataset>> {
        let mut found = Vec::new();
        for chunk in targets.chunks(256) {
            let mut args = strings(["get", "-H", "-p", "-o", "name,property,value,source"]);
            args.extend(options.iter().cloned());
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

    /// `zfs bookmark SNAPSHOT DATASET#NAME`: a bookmark keeps a snapshot's place as the base
    /// of later incremental sends after the snapshot itself is destroyed, holding no space.
    pub async fn bookmark(&self, snapshot: &SnapshotName, bookmark: &str) -> Result<()> {
        let args = vec!["bookmark".to_string(), snapshot.zfs_name(), format!("{}#{bookmark}", snapshot.dataset())];
        self.zfs(args).await.map(drop)
    }

    /// `zfs destroy DATASET#NAME`.
    pub async fn destroy_bookmark(&self, dataset: &DatasetName, bookmark: &str) -> Result<()> {
        self.zfs(vec!["destroy".to_string(), format!("{dataset}#{bookmark}")]).await.map(drop)
    }

    /// The snapshots and bookmarks directly of `dataset`, oldest first: the candidates for an
    /// incremental send's base, matched to the receiving side by `guid`.
    pub async fn snapshots_and_bookmarks(&self, dataset: &DatasetName) -> Result<Vec<SendPoint>> {
        let args = vec![
            "list".to_string(), "-H".into(), "-p".into(), "-o".into(), "name,guid,createtxg".into(),
            "-t".into(), "snapshot,bookmark".into(), "-d".into(), "1".into(), "-s".into(), "createtxg".into(),
            dataset.zfs_name(),
        ];
        let command = format!("zfs {}", args.join(" "));
        let output = self.zfs(args).await?;
        output
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|line| {
                let fields: Vec<&str> = line.split('\t').collect();
                let [name, guid, createtxg] = fields[..] else {
                    return Err(ZfsError::Parse { command: command.clone(), reason: format!("expected 3 fields in {line:?}") });
                };
                let number = |v: &str| v.parse::<u64>().map_err(|e| ZfsError::Parse { command: command.clone(), reason: format!("{v:?}: {e}") });
                Ok(SendPoint { name: name.to_string(), guid: number(guid)?, createtxg: number(createtxg)? })
            })
            .collect()
    }

    /// The token of an interrupted resumable receive into `dataset` (`zfs receive -s`), if
    /// one is pending.
    pub async fn receive_resume_token(&self, dataset: &DatasetName) -> Result<Option<String>> {
        let found = self.get_one(dataset, &["receive_resume_token"]).await?;
        Ok(found.get("receive_resume_token").filter(|t| !t.is_empty() && *t != "-").map(str::to_string))
    }

    /// `zfs receive -A DATASET`: discards the state of an interrupted resumable receive (and a
    /// dataset that a first, full receive had only begun).
    pub async fn abort_receive(&self, dataset: &DatasetName) -> Result<()> {
        self.zfs(vec!["receive".to_string(), "-A".into(), dataset.zfs_name()]).await.map(drop)
    }

    /// `zfs send SEND… | zfs receive -u [-s] [-o k=v]… TARGET`, the stream pumped through
    /// this process so that the bytes sent are counted and both ends die with the future
    /// (each runs in its own process group). Returns the bytes the stream carried. A failure
    /// of either side is the receiving side's error when it has one (out of space, …).
    pub async fn send_receive(&self, send: &SendStream, target: &DatasetName, resumable: bool, properties: &Properties) -> Result<u64> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut send_args = vec!["send".to_string()];
        send_args.extend(send.args());
        let mut receive_args = vec!["receive".to_string(), "-u".into()];
        if resumable {
            receive_args.push("-s".into());
        }
        receive_args.extend(option_args(properties));
        receive_args.push(target.zfs_name());
        let started = std::time::Instant::now();
        let unavailable = |e: ProcessError| match e {
            ProcessError::Spawn { command, reason } => ZfsError::Unavailable { command, reason },
            ProcessError::TimedOut { command, after } => ZfsError::TimedOut { command, after },
        };
        let mut sender = self.runner.spawn_streaming("zfs", &send_args, false, true).map_err(unavailable)?;
        let mut receiver = self.runner.spawn_streaming("zfs", &receive_args, true, false).map_err(unavailable)?;
        let mut bytes = 0u64;
        if let (Some(mut from), Some(mut to)) = (sender.child.stdout.take(), receiver.child.stdin.take()) {
            let mut buffer = vec![0u8; 1 << 20];
            loop {
                let n = match from.read(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                // The receiver gone (it failed): its exit status says why.
                if to.write_all(&buffer[..n]).await.is_err() {
                    break;
                }
                bytes += n as u64;
            }
            // Dropped: the receiver sees the end of the stream.
        }
        let received = receiver.finish().await.map_err(unavailable)?;
        let sent = sender.finish().await.map_err(unavailable)?;
        let failed = !(received.success() && sent.success());
        crate::metrics::record_command("zfs send", started.elapsed(), !sent.success());
        crate::metrics::record_command("zfs receive", started.elapsed(), !received.success());
        if failed {
            let (command, stderr) = if !received.success() && !received.stderr.is_empty() {
                (received.command, received.stderr)
            } else {
                (sent.command, sent.stderr)
            };
            return Err(ZfsError::from_stderr(command, stderr));
        }
        Ok(bytes)
    }

    /// Size, allocation, fragmentation and health of `pools`, in one `zpool list`. A pool
    /// that is not imported is left out (a node may lack some of the parents' pools).
    pub async fn pools(&self, pools: &[&str]) -> Result<Vec<Pool>> {
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
            .map(types::parse_pool_line)
            .collect::<std::result::Result<_, _>>()
            .map_err(|reason| ZfsError::Parse { command, reason })
    }

    /// Snapshot counts of the filesystems and volumes at or below `parent` (see
    /// `SNAPSHOT_COUNTS`), by dataset name; one process whatever the counts.
    pub async fn snapshot_counts(&self, parent: &DatasetName) -> Result<std::collections::BTreeMap<String, u64>> {
        let (result, command) = self.read_only_program(SNAPSHOT_COUNTS, parent, &[]).await?;
        parse_snapshot_counts(&result).map_err(|reason| ZfsError::Parse { command, reason })
    }

    pub async fn pool(&self, pool: &str) -> Result<Pool> {
        self.pools(&[pool]).await?.into_iter().find(|p| p.name == pool).ok_or_else(|| ZfsError::NotFound(pool.to_string()))
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
    fn snapshot_counts_are_read() {
        let out = "Channel program fully executed and produced output:\n    return: 'vms/a=3\tvms/b/c=1'\n";
        let counts = parse_snapshot_counts(channel_program_result(out).unwrap()).unwrap();
        assert_eq!(counts.get("vms/a"), Some(&3));
        assert_eq!(counts.get("vms/b/c"), Some(&1));
        assert!(parse_snapshot_counts("").unwrap().is_empty());
        assert!(parse_snapshot_counts("vms/a=x").is_err());
    }
}

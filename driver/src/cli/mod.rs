//! The operator commands of the `zfs-csi` binary, beside serving:
//!
//! - `zfs-csi import DATASET`: prints a PersistentVolume and a PersistentVolumeClaim bound to
//!   it for an existing dataset or zvol below the parents (`import.rs`); changes nothing.
//! - `zfs-csi volumes` and `zfs-csi snapshots`: the driver's volumes and snapshots as a table
//!   or JSON (`inventory.rs`), what `kubectl get zfsvolumes` shows for OpenEBS.
//!
//! They reach ZFS through the same layer (`crate::zfs`) and `--command-prefix` as the server,
//! and read the same environment variables (ZFS_CSI_PARENTS, CSI_DRIVER_NAME,
//! ZFS_CSI_COMMAND_PREFIX, NODE_ID), so that `kubectl exec` into the node pod needs no flags.
//! The server's own flags (`--endpoint`, `--kubelet-dir`, …) mean nothing here and are not
//! taken; `zfs-csi` without a command serves, exactly as before (config.rs).
//!
//! Exit codes: 0 done; 1 the dataset does not exist, or ZFS or a tool failed; 2 a usage error
//! or input refused (a bad flag, a pool root, a parent, a dataset outside the parents).

pub mod import;
pub mod inventory;
pub mod k8s;
pub mod yaml;

use std::ffi::OsString;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{parse_driver_name, parse_parent};
use crate::process::ProcessRunner;
use crate::zfs::{DatasetName, Zfs, ZfsError};

/// The first arguments that select an operator command instead of serving.
pub const COMMANDS: [&str; 3] = ["import", "volumes", "snapshots"];

/// True when `args` (with the program name first) name an operator command. Serving takes
/// only flags, so a first argument that is one of `COMMANDS` cannot be a server invocation.
pub fn is_operator_command(args: &[OsString]) -> bool {
    args.get(1).and_then(|a| a.to_str()).is_some_and(|a| COMMANDS.contains(&a))
}

const EXIT_CODES: &str = "Exit codes: 0 done; 1 not found, or ZFS or a tool failed; \
                          2 usage error or input refused (pool root, parent, outside the parents).";

#[derive(Parser, Debug)]
#[command(name = "zfs-csi", version, max_term_width = 100, subcommand_required = true, after_help = EXIT_CODES)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print a PersistentVolume for an existing dataset or zvol below the parents, and a
    /// PersistentVolumeClaim bound to it. Reads the dataset (and blkid of a zvol's device);
    /// never changes it.
    #[command(after_help = EXIT_CODES)]
    Import(import::ImportArgs),
    /// List the driver's volumes: datasets and zvols carrying its marker (set locally).
    #[command(after_help = EXIT_CODES)]
    Volumes(ListArgs),
    /// List the driver's snapshots of its volumes.
    #[command(after_help = EXIT_CODES)]
    Snapshots(ListArgs),
}

/// How the commands reach ZFS: the server's flags of the same names and variables.
#[derive(Args, Debug, Clone)]
pub struct ZfsAccess {
    /// Comma-separated pools or parent datasets the driver serves, as given to the server.
    #[arg(long, env = "ZFS_CSI_PARENTS", value_delimiter = ',', required = true, value_parser = parse_parent)]
    pub parents: Vec<DatasetName>,

    /// The CSI driver name: its marker tells the driver's datasets, and it names the
    /// topology key `<driver-name>/node`.
    #[arg(long, env = "CSI_DRIVER_NAME", default_value = "zfs-csi.io", value_parser = parse_driver_name)]
    pub driver_name: String,

    /// Command put before every zfs/zpool call, as for the server, e.g.
    /// "nsenter --target 1 --mount --".
    #[arg(long, env = "ZFS_CSI_COMMAND_PREFIX", default_value = "")]
    pub command_prefix: String,

    /// Seconds after which a zfs/zpool command is killed.
    #[arg(long, env = "ZFS_CSI_COMMAND_TIMEOUT", default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..))]
    pub command_timeout: u64,
}

impl ZfsAccess {
    /// A failed zfs command as the command's error (exit code 1), saying how zfs was reached
    /// when it could not be run at all.
    pub fn failure(&self, what: &str, error: ZfsError) -> CliError {
        let hint = match (&error, self.command_prefix.trim()) {
            (ZfsError::Unavailable { .. }, "") => "; is the zfs userland installed here? (--command-prefix is empty)".to_string(),
            (ZfsError::Unavailable { .. }, prefix) => format!("; check --command-prefix {prefix:?}"),
            _ => String::new(),
        };
        CliError::Failed(format!("{what}: {error}{hint}"))
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.command_timeout)
    }

    pub fn zfs(&self) -> Zfs {
        let prefix = self.command_prefix.split_whitespace().map(str::to_string).collect();
        Zfs::new(ProcessRunner::new(prefix, self.timeout()))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ListFormat {
    /// Aligned columns for people.
    Table,
    /// One JSON array, sizes in bytes.
    Json,
}

#[derive(Args, Debug, Clone)]
pub struct ListArgs {
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = ListFormat::Table)]
    pub output: ListFormat,

    #[command(flatten)]
    pub zfs: ZfsAccess,
}

/// Why a command failed, and so its exit code.
#[derive(Debug, PartialEq, Eq)]
pub enum CliError {
    /// Input refused (exit code 2): nothing was read or nothing can be done with it.
    Refused(String),
    /// Not found, or ZFS or a tool failed (exit code 1).
    Failed(String),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Refused(_) => 2,
            CliError::Failed(_) => 1,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            CliError::Refused(m) | CliError::Failed(m) => m,
        }
    }
}

/// Runs an operator command from the whole command line; prints the result on standard
/// output, an error as one line on standard error.
pub fn main(args: &[OsString]) -> ExitCode {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("zfs-csi: {}", crate::config::error_line(&e, args, |var| std::env::var_os(var)));
            return ExitCode::from(2);
        }
    };
    let (name, result) = run(cli);
    match result {
        Ok(output) => {
            print!("{output}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("zfs-csi {name}: {}", e.message());
            ExitCode::from(e.exit_code())
        }
    }
}

fn run(cli: Cli) -> (&'static str, Result<String, CliError>) {
    let name = match &cli.command {
        Command::Import(_) => "import",
        Command::Volumes(_) => "volumes",
        Command::Snapshots(_) => "snapshots",
    };
    // One command at a time: a runtime on this thread is all it needs.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return (name, Err(CliError::Failed(format!("cannot start the async runtime: {e}")))),
    };
    let result = match cli.command {
        Command::Import(args) => runtime.block_on(import::run(&args)),
        Command::Volumes(args) => runtime.block_on(inventory::volumes(&args)),
        Command::Snapshots(args) => runtime.block_on(inventory::snapshots(&args)),
    };
    (name, result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn only_a_command_word_first_selects_an_operator_command() {
        assert!(is_operator_command(&os(&["zfs-csi", "import", "vms/a"])));
        assert!(is_operator_command(&os(&["zfs-csi", "volumes"])));
        assert!(!is_operator_command(&os(&["zfs-csi"])));
        assert!(!is_operator_command(&os(&["zfs-csi", "--node-id", "import"])));
        assert!(!is_operator_command(&os(&["zfs-csi", "--parents", "vms"])));
    }

    #[test]
    fn commands_need_parents_but_no_node_id() {
        let cli = Cli::try_parse_from(["zfs-csi", "volumes", "--parents", "vms,tank", "-o", "json"]).unwrap();
        let Command::Volumes(args) = cli.command else { panic!("not volumes") };
        assert_eq!(args.output, ListFormat::Json);
        assert_eq!(args.zfs.parents.len(), 2);
        assert_eq!(args.zfs.driver_name, "zfs-csi.io");
        assert!(Cli::try_parse_from(["zfs-csi", "snapshots", "--parents", "vms/../x"]).is_err());
        assert!(Cli::try_parse_from(["zfs-csi", "volumes", "--parents", "vms", "--endpoint", "tcp://1.2.3.4:1"]).is_err());
    }
}

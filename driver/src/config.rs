//! Command-line flags (each with an environment-variable equivalent), parsed once into
//! validated types.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{CommandFactory, Parser, ValueEnum};
use serde::Serialize;
use tracing_subscriber::filter::{Directive, EnvFilter, LevelFilter};

use crate::zfs::DatasetName;

/// Kubernetes CSI driver for ZFS: serves the CSI Identity, Controller and Node services for
/// the ZFS pools of this node, turning volumes into datasets and zvols.
#[derive(Parser, Debug, Clone, Serialize)]
#[command(
    name = "zfs-csi",
    version,
    max_term_width = 100,
    after_help = "Operator commands (each with its own --help; they take --parents, --driver-name and \
                  --command-prefix as the server does, and need no --node-id):\n  \
                  zfs-csi import DATASET   print a PersistentVolume and a bound PersistentVolumeClaim for an existing dataset or zvol\n  \
                  zfs-csi volumes          list the driver's volumes\n  \
                  zfs-csi snapshots        list the driver's snapshots"
)]
pub struct Config {
    /// Where to serve CSI gRPC: unix:///path/to/csi.sock (for kubelet and the sidecars) or
    /// tcp://127.0.0.1:PORT (tests). A stale socket file is removed on start.
    #[arg(long, env = "CSI_ENDPOINT", default_value = "unix:///csi/csi.sock", value_parser = Endpoint::parse)]
    pub endpoint: Endpoint,

    /// This node's ID, normally the Kubernetes node name; it becomes the topology segment
    /// <driver-name>/node that pins volumes to this node.
    #[arg(long, env = "NODE_ID", value_parser = parse_node_id)]
    pub node_id: String,

    /// The CSI driver name (the provisioner of the StorageClasses).
    #[arg(long, env = "CSI_DRIVER_NAME", default_value = "zfs-csi.io", value_parser = parse_driver_name)]
    pub driver_name: String,

    /// Comma-separated pools or parent datasets this node serves, e.g. ai,vms,tank. Volumes
    /// are created below them; any ID outside them is refused. The first is the default
    /// when a StorageClass names no poolname.
    #[arg(long, env = "ZFS_CSI_PARENTS", value_delimiter = ',', required = true, value_parser = parse_parent)]
    pub parents: Vec<DatasetName>,

    /// Command put before every zfs/zpool call to reach the host's own ZFS userland from a
    /// container, split on whitespace, e.g. "nsenter --target 1 --mount --" (needs hostPID).
    #[arg(long, env = "ZFS_CSI_COMMAND_PREFIX", default_value = "")]
    pub command_prefix: String,

    /// Seconds after which a zfs/zpool command is killed.
    #[arg(long, env = "ZFS_CSI_COMMAND_TIMEOUT", default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..))]
    pub command_timeout: u64,

    /// The kubelet's root directory. Staging and target paths must lie below it (after
    /// resolving symlinks); the node service mounts nothing anywhere else. k0s uses
    /// /var/lib/k0s/kubelet.
    #[arg(long, env = "KUBELET_DIR", default_value = "/var/lib/kubelet", value_parser = parse_absolute_dir)]
    pub kubelet_dir: PathBuf,

    /// Serve Prometheus metrics over HTTP on this address (e.g. 0.0.0.0:9813), path /metrics.
    /// Off unless set.
    #[arg(long, env = "ZFS_CSI_METRICS_ADDRESS")]
    pub metrics_address: Option<SocketAddr>,

    /// Seconds between readings of the pool and volume figures from ZFS, done in the
    /// background (0: each scrape reads them); RPC and command figures are always current.
    #[arg(long, env = "ZFS_CSI_METRICS_CACHE_SECONDS", default_value_t = 30)]
    pub metrics_cache_seconds: u64,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter: a level (error, warn, info, debug, trace, off) or tracing directives
    /// TARGET=LEVEL, such as "info,zfs_csi=debug". The HTTP/2 transport (h2, hyper, tower,
    /// tonic::transport) stays at info unless a directive names it.
    #[arg(long, env = "LOG_LEVEL", default_value = "info", value_parser = LogFilter::parse)]
    pub log_level: LogFilter,

    /// Check the flags, print the effective configuration as JSON and exit without serving.
    #[arg(long)]
    #[serde(skip)]
    pub print_config: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl Endpoint {
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(format!("{s:?}: a unix endpoint needs an absolute path, e.g. unix:///csi/csi.sock"));
            }
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        if let Some(addr) = s.strip_prefix("tcp://") {
            return addr
                .parse()
                .map(Endpoint::Tcp)
                .map_err(|_| format!("{s:?}: a tcp endpoint is tcp://IP:PORT, e.g. tcp://127.0.0.1:10000"));
        }
        Err(format!("{s:?}: expected unix:///path/to/csi.sock or tcp://IP:PORT"))
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(path) => write!(f, "unix://{}", path.display()),
            Endpoint::Tcp(addr) => write!(f, "tcp://{addr}"),
        }
    }
}

/// Printed as the URL it was given as.
impl Serialize for Endpoint {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

pub(crate) fn parse_node_id(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        return Err("the node ID must not be empty".into());
    }
    if s.len() > 256 {
        return Err("the node ID is longer than 256 bytes (CSI's limit)".into());
    }
    Ok(s.to_string())
}

/// The CSI spec: at most 63 characters, alphanumerics, '-' and '.', beginning and ending with
/// an alphanumeric character.
pub(crate) fn parse_driver_name(s: &str) -> Result<String, String> {
    let ok_chars = s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    let ok_ends = s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric());
    if s.is_empty() || s.len() > 63 || !ok_chars || !ok_ends {
        return Err(format!(
            "{s:?}: a driver name has at most 63 letters, digits, '-' and '.', and begins and ends with a letter or digit"
        ));
    }
    Ok(s.to_ascii_lowercase())
}

fn parse_absolute_dir(s: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(s);
    if !path.is_absolute() || path.components().any(|c| c == std::path::Component::ParentDir) {
        return Err(format!("{s:?}: an absolute directory without '..' is needed"));
    }
    Ok(path)
}

pub(crate) fn parse_parent(s: &str) -> Result<DatasetName, String> {
    DatasetName::parse(s.trim()).map_err(|e| format!("{s:?}: {e}"))
}

/// Targets of the gRPC transport underneath tonic. At debug they log every HTTP/2 frame and
/// connection event, which drowns the driver's own debug output, so a level above info does
/// not reach them unless a directive names them (or a parent, such as `tonic`).
const TRANSPORT_TARGETS: [&str; 4] = ["h2", "hyper", "tower", "tonic::transport"];

/// The `--log-level` filter, checked when the flags are parsed. A bare word must be a level:
/// tracing would take `debg` as a target name and silently show nothing else.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogFilter {
    given: String,
    effective: String,
}

impl LogFilter {
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut targets = Vec::new();
        let mut default_level = None;
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part.rsplit_once('=') {
                None => {
                    let level = LevelFilter::from_str(part).map_err(|_| {
                        format!(
                            "{part:?} is not a log level: use error, warn, info, debug, trace or off, \
                             or directives TARGET=LEVEL such as info,zfs_csi=debug"
                        )
                    })?;
                    default_level = default_level.max(Some(level));
                }
                Some((selector, level)) => {
                    LevelFilter::from_str(level).map_err(|_| {
                        format!("{part:?}: {level:?} is not a log level (error, warn, info, debug, trace, off)")
                    })?;
                    let target = selector.split('[').next().unwrap_or_default();
                    if !target.is_empty() {
                        targets.push(target.to_string());
                    }
                }
            }
            Directive::from_str(part).map_err(|e| format!("{part:?} is not a tracing directive: {e}"))?;
        }
        let mut effective = s.to_string();
        if default_level.is_some_and(|level| level > LevelFilter::INFO) {
            for transport in TRANSPORT_TARGETS {
                let named = targets.iter().any(|t| transport == t || transport.starts_with(&format!("{t}::")));
                if !named {
                    effective.push_str(&format!(",{transport}=info"));
                }
            }
        }
        Ok(LogFilter { given: s.to_string(), effective })
    }

    /// The directives as given, then the transport limits this filter adds.
    pub fn effective(&self) -> &str {
        &self.effective
    }

    pub fn env_filter(&self) -> Result<EnvFilter, String> {
        EnvFilter::try_new(&self.effective).map_err(|e| format!("{:?}: {e}", self.effective))
    }
}

impl std::fmt::Display for LogFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.given)
    }
}

/// Printed as it was given.
impl Serialize for LogFilter {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl Config {
    pub fn command_prefix_words(&self) -> Vec<String> {
        self.command_prefix.split_whitespace().map(str::to_string).collect()
    }
}

/// A flag error as one line, as operators read it in `kubectl logs` or a CrashLoopBackOff
/// event. When the bad value came from a flag's environment variable (the flag is not on
/// the command line `args`), the line names the variable and its value, since that is what
/// the operator has to fix: `LOG_LEVEL=debg`, not `--log-level`.
pub fn error_line(error: &clap::Error, args: &[OsString], env: impl Fn(&str) -> Option<OsString>) -> String {
    let rendered = error.render().to_string();
    let mut line = rendered
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ")
        .trim_start_matches("error: ")
        .to_string();
    if !matches!(error.kind(), ErrorKind::InvalidValue | ErrorKind::ValueValidation) {
        return line;
    }
    let Some(ContextValue::String(invalid_arg)) = error.get(ContextKind::InvalidArg) else {
        return line;
    };
    let command = Config::command();
    let Some(arg) = command.get_arguments().find(|a| {
        a.get_long().is_some_and(|long| {
            invalid_arg == &format!("--{long}") || invalid_arg.starts_with(&format!("--{long} "))
        })
    }) else {
        return line;
    };
    let (Some(long), Some(var)) = (arg.get_long(), arg.get_env().and_then(|v| v.to_str())) else {
        return line;
    };
    let flag = format!("--{long}");
    let on_command_line = args
        .iter()
        .filter_map(|a| a.to_str())
        .any(|a| a == flag || a.starts_with(&format!("{flag}=")));
    if on_command_line {
        return line;
    }
    if let Some(value) = env(var) {
        line = line.replacen(
            &format!("'{invalid_arg}'"),
            &format!("{flag} (from the environment: {var}={})", value.to_string_lossy()),
            1,
        );
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        let mut all = vec!["zfs-csi"];
        all.extend_from_slice(args);
        Config::try_parse_from(all)
    }

    #[test]
    fn minimal_flags_parse_with_defaults() {
        let c = parse(&["--node-id", "n1", "--parents", "ai,vms,tank"]).unwrap();
        assert_eq!(c.endpoint, Endpoint::Unix("/csi/csi.sock".into()));
        assert_eq!(c.driver_name, "zfs-csi.io");
        let parents: Vec<&str> = c.parents.iter().map(|p| p.as_str()).collect();
        assert_eq!(parents, ["ai", "vms", "tank"]);
        assert!(c.command_prefix_words().is_empty());
        assert_eq!(c.kubelet_dir, PathBuf::from("/var/lib/kubelet"));
    }

    #[test]
    fn command_prefix_splits_on_whitespace() {
        let c = parse(&["--node-id", "n", "--parents", "vms", "--command-prefix", "nsenter --target 1  --mount --"]).unwrap();
        assert_eq!(c.command_prefix_words(), ["nsenter", "--target", "1", "--mount", "--"]);
    }

    #[test]
    fn endpoints_parse_or_explain() {
        assert_eq!(Endpoint::parse("tcp://127.0.0.1:9000").unwrap(), Endpoint::Tcp("127.0.0.1:9000".parse().unwrap()));
        assert!(Endpoint::parse("unix://relative/csi.sock").is_err());
        assert!(Endpoint::parse("/csi/csi.sock").is_err());
        assert!(Endpoint::parse("tcp://localhost").is_err());
        assert!(Endpoint::parse("http://127.0.0.1:1").is_err());
    }

    #[test]
    fn log_levels_and_directives_are_accepted() {
        for filter in ["info", "DEBUG", "off", "warn,zfs_csi=debug", "zfs_csi=trace", "info,zfs_csi[rpc{volume=a}]=debug"] {
            assert!(LogFilter::parse(filter).is_ok(), "{filter:?} refused");
        }
    }

    #[test]
    fn misspelled_log_level_is_refused_with_the_word() {
        let error = LogFilter::parse("debg").unwrap_err();
        assert!(error.contains("\"debg\" is not a log level"), "{error}");
        let error = LogFilter::parse("info,zfs_csi=verbose").unwrap_err();
        assert!(error.contains("\"verbose\" is not a log level"), "{error}");
        // tracing would read a bare word as a target at trace, and show nothing else.
        assert!(LogFilter::parse("zfs_csi").is_err());
        assert!(LogFilter::parse("info,zfs_csi[=debug").is_err());
    }

    #[test]
    fn misspelled_log_level_fails_the_flags_and_print_config() {
        assert!(parse(&["--node-id", "n", "--parents", "vms", "--log-level", "debg"]).is_err());
        let print_config = ["--node-id", "n", "--parents", "vms", "--log-level", "debg", "--print-config"];
        assert!(parse(&print_config).is_err());
    }

    #[test]
    fn debug_limits_only_the_transport_targets_not_named() {
        let effective = |filter: &str| LogFilter::parse(filter).unwrap().effective().to_string();
        assert_eq!(effective("debug"), "debug,h2=info,hyper=info,tower=info,tonic::transport=info");
        assert_eq!(effective("debug,h2=trace"), "debug,h2=trace,hyper=info,tower=info,tonic::transport=info");
        assert_eq!(effective("trace,tonic=debug"), "trace,tonic=debug,h2=info,hyper=info,tower=info");
        // A child target leaves the limit on the rest of its crate.
        assert_eq!(
            effective("debug,h2::codec=debug"),
            "debug,h2::codec=debug,h2=info,hyper=info,tower=info,tonic::transport=info"
        );
        // At info and below, the transport logs no more than the driver does.
        for quiet in ["info", "warn", "zfs_csi=debug", "off"] {
            assert_eq!(effective(quiet), quiet);
        }
    }

    /// Everything `filter` lets through of one event per target, as the fmt layer writes it.
    fn logged(filter: &str) -> String {
        #[derive(Clone, Default)]
        struct Buffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(LogFilter::parse(filter).unwrap().env_filter().unwrap())
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::debug!(target: "h2::codec::framed_read", "h2-frame");
            tracing::info!(target: "h2::proto::connection", "h2-connection-closed");
            tracing::debug!(target: "hyper_util::server", "hyper-event");
            tracing::debug!(target: "tower::buffer::worker", "tower-event");
            tracing::debug!(target: "tonic::transport::server", "tonic-transport-event");
            tracing::debug!(target: "zfs_csi::node", "driver-event");
        });
        let bytes = buffer.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn debug_logs_the_driver_but_not_http2_frames() {
        let out = logged("debug");
        assert!(out.contains("driver-event"), "{out}");
        assert!(out.contains("h2-connection-closed"), "{out}");
        for noise in ["h2-frame", "hyper-event", "tower-event", "tonic-transport-event"] {
            assert!(!out.contains(noise), "{noise} logged at --log-level debug: {out}");
        }
    }

    #[test]
    fn a_named_transport_target_logs_at_its_level() {
        let out = logged("debug,h2=debug");
        assert!(out.contains("h2-frame"), "{out}");
        assert!(!out.contains("hyper-event"), "{out}");
    }

    #[test]
    fn a_bad_value_from_the_environment_names_the_variable() {
        let error = parse(&["--node-id", "n", "--parents", "vms", "--log-level", "debg"]).unwrap_err();
        let from_env = |var: &str| (var == "LOG_LEVEL").then(|| OsString::from("debg"));
        // The same error as clap reports for a value taken from LOG_LEVEL, whose flag is not
        // on the command line.
        let without_flag: Vec<OsString> =
            ["zfs-csi", "--node-id", "n", "--parents", "vms"].map(OsString::from).into();
        let line = error_line(&error, &without_flag, from_env);
        assert!(line.contains("LOG_LEVEL=debg"), "{line}");
        assert!(line.contains("\"debg\" is not a log level"), "{line}");
        // Given as a flag, the flag is what the operator fixes.
        let with_flag: Vec<OsString> =
            ["zfs-csi", "--node-id", "n", "--parents", "vms", "--log-level", "debg"].map(OsString::from).into();
        let line = error_line(&error, &with_flag, from_env);
        assert!(line.contains("--log-level") && !line.contains("LOG_LEVEL="), "{line}");
    }

    #[test]
    fn bad_flags_are_refused() {
        assert!(parse(&["--node-id", "n", "--parents", "vms", "--bogus"]).is_err());
        assert!(parse(&["--node-id", "n"]).is_err());
        assert!(parse(&["--node-id", "n", "--parents", "vms/../tank"]).is_err());
        assert!(parse(&["--node-id", "n", "--parents", "vms", "--driver-name", "-bad"]).is_err());
        assert!(parse(&["--node-id", "", "--parents", "vms"]).is_err());
        assert!(parse(&["--node-id", "n", "--parents", "vms", "--kubelet-dir", "var/lib/kubelet"]).is_err());
    }
}

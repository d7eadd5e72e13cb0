//! Command-line flags (each with an environment-variable equivalent), parsed once into
//! validated types.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use serde::Serialize;

use crate::zfs::DatasetName;

/// Kubernetes CSI driver for ZFS: serves the CSI Identity, Controller and Node services for
/// the ZFS pools of this node, turning volumes into datasets and zvols.
#[derive(Parser, Debug, Clone, Serialize)]
#[command(name = "zfs-csi", version, max_term_width = 100)]
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

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter: a level (error, warn, info, debug, trace) or tracing directives such as
    /// "info,zfs_csi=debug".
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    pub log_level: String,

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

fn parse_node_id(s: &str) -> Result<String, String> {
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
fn parse_driver_name(s: &str) -> Result<String, String> {
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

fn parse_parent(s: &str) -> Result<DatasetName, String> {
    DatasetName::parse(s.trim()).map_err(|e| format!("{s:?}: {e}"))
}

impl Config {
    pub fn command_prefix_words(&self) -> Vec<String> {
        self.command_prefix.split_whitespace().map(str::to_string).collect()
    }
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
    fn bad_flags_are_refused() {
        assert!(parse(&["--node-id", "n", "--parents", "vms", "--bogus"]).is_err());
        assert!(parse(&["--node-id", "n"]).is_err());
        assert!(parse(&["--node-id", "n", "--parents", "vms/../tank"]).is_err());
        assert!(parse(&["--node-id", "n", "--parents", "vms", "--driver-name", "-bad"]).is_err());
        assert!(parse(&["--node-id", "", "--parents", "vms"]).is_err());
        assert!(parse(&["--node-id", "n", "--parents", "vms", "--kubelet-dir", "var/lib/kubelet"]).is_err());
    }
}

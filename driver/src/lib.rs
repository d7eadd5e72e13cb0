//! zfs-csi: a Kubernetes CSI driver for ZFS. One binary serves the Identity, Controller and
//! Node services for the pools of the node it runs on.

pub mod csi {
    //! The CSI v1.12 protocol, generated from proto/csi.proto.
    #![allow(clippy::all)]
    tonic::include_proto!("csi.v1");
}

pub mod capability;
pub mod cli;
pub mod config;
pub mod controller;
pub mod driver;
pub mod errors;
pub mod format;
pub mod identity;
pub mod locks;
pub mod metrics;
pub mod mount;
pub mod node;
pub mod params;
pub mod process;
pub mod reaper;
pub mod replication;
pub mod server;
pub mod snapshot_names;
pub mod state;
pub mod zfs;

//! Volume capabilities (access type and mode), checked the same way by the controller and the
//! node service.

use tonic::Status;

use crate::csi::volume_capability::{access_mode::Mode, AccessType as CsiAccessType};
use crate::csi::VolumeCapability;
use crate::params::FsType;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AccessType {
    Block,
    Mount {
        /// `None` when the CO left it empty.
        fs_type: Option<FsType>,
        mount_flags: Vec<String>,
    },
}

/// The access type of one capability; INVALID_ARGUMENT when it is missing or names a
/// filesystem we do not make. Only single-node access modes are possible: a pool is local.
pub fn parse(capability: &VolumeCapability) -> Result<AccessType, Status> {
    let mode = capability
        .access_mode
        .as_ref()
        .ok_or_else(|| Status::invalid_argument("volume capability: access_mode is required"))?
        .mode();
    match mode {
        Mode::SingleNodeWriter
        | Mode::SingleNodeReaderOnly
        | Mode::SingleNodeSingleWriter
        | Mode::SingleNodeMultiWriter => {}
        Mode::Unknown => return Err(Status::invalid_argument("volume capability: access_mode is UNKNOWN")),
        other => {
            return Err(Status::invalid_argument(format!(
                "volume capability: access mode {} is not supported: a ZFS pool is local to one node",
                other.as_str_name()
            )))
        }
    }
    match capability.access_type.as_ref() {
        None => Err(Status::invalid_argument("volume capability: access_type (block or mount) is required")),
        Some(CsiAccessType::Block(_)) => Ok(AccessType::Block),
        Some(CsiAccessType::Mount(mount)) => {
            let fs_type = if mount.fs_type.is_empty() {
                None
            } else {
                Some(FsType::parse(&mount.fs_type).ok_or_else(|| {
                    Status::invalid_argument(format!(
                        "volume capability: fs_type {:?} is not one of zfs, ext4, xfs, btrfs",
                        mount.fs_type
                    ))
                })?)
            };
            Ok(AccessType::Mount {
                fs_type,
                mount_flags: mount.mount_flags.clone(),
            })
        }
    }
}

pub fn is_read_only(capability: &VolumeCapability) -> bool {
    capability
        .access_mode
        .as_ref()
        .is_some_and(|m| m.mode() == Mode::SingleNodeReaderOnly)
}

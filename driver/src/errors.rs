//! The mapping from the driver's typed errors to gRPC status codes (CSI spec, "Error Scheme"
//! of each RPC). Every message names the object and, where there is one, what to do.

use tonic::Status;

use crate::zfs::ZfsError;

/// A ZFS failure while doing `what` (e.g. "creating volume vms/pvc-1").
pub fn zfs_status(what: &str, err: ZfsError) -> Status {
    let message = format!("{what}: {err}");
    match err {
        ZfsError::NotFound(_) => Status::not_found(message),
        ZfsError::AlreadyExists(_) => Status::already_exists(message),
        ZfsError::Busy(_) => Status::failed_precondition(format!(
            "{message}; it is still in use (mounted or open): unpublish and unstage it first"
        )),
        ZfsError::HasDependents(_) => Status::failed_precondition(message),
        ZfsError::NoSpace(_) => Status::resource_exhausted(message),
        ZfsError::Invalid(_) => Status::invalid_argument(message),
        ZfsError::OutOfRange(_) => Status::out_of_range(message),
        ZfsError::WrongKey(_) => Status::failed_precondition(format!(
            "{message}; the Secret's encryptionKey does not open this volume's encryption root: nothing was changed"
        )),
        ZfsError::Unavailable { .. } => Status::unavailable(format!(
            "{message}; check that the zfs userland is reachable (--command-prefix)"
        )),
        ZfsError::TimedOut { .. } => Status::deadline_exceeded(message),
        ZfsError::Failed { .. } | ZfsError::Parse { .. } => Status::internal(message),
    }
}

pub fn missing(field: &str) -> Status {
    Status::invalid_argument(format!("{field} is required"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn each_zfs_error_kind_has_its_code() {
        let cases = [
            (ZfsError::NotFound("x".into()), Code::NotFound),
            (ZfsError::AlreadyExists("x".into()), Code::AlreadyExists),
            (ZfsError::Busy("x".into()), Code::FailedPrecondition),
            (ZfsError::HasDependents("x".into()), Code::FailedPrecondition),
            (ZfsError::NoSpace("x".into()), Code::ResourceExhausted),
            (ZfsError::Invalid("x".into()), Code::InvalidArgument),
            (ZfsError::OutOfRange("x".into()), Code::OutOfRange),
            (ZfsError::WrongKey("x".into()), Code::FailedPrecondition),
            (ZfsError::Failed { command: "zfs".into(), stderr: "?".into() }, Code::Internal),
        ];
        for (err, code) in cases {
            let status = zfs_status("doing it", err);
            assert_eq!(status.code(), code);
            assert!(status.message().starts_with("doing it: "));
        }
    }
}

//! gRPC plumbing: bind the endpoint, serve Identity, Controller and Node on it, stop
//! gracefully (in-flight RPCs finish) and remove the socket.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use tokio::net::{TcpListener, UnixListener};
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tonic::transport::Server;

use crate::config::{Config, Endpoint};
use crate::controller::ControllerService;
use crate::csi::{controller_server::ControllerServer, identity_server::IdentityServer, node_server::NodeServer};
use crate::driver::Driver;
use crate::identity::IdentityService;
use crate::node::NodeService;

/// Resolves on SIGTERM (kubelet stopping the pod) or SIGINT.
pub async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot listen for SIGTERM: {e}");
            std::future::pending::<()>().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
    }
}

pub async fn serve(config: Config, shutdown: impl Future<Output = ()> + Send) -> Result<(), String> {
    let driver = Arc::new(Driver::new(&config));
    let router = Server::builder()
        .add_service(IdentityServer::new(IdentityService::new(Arc::clone(&driver))))
        .add_service(ControllerServer::new(ControllerService::new(Arc::clone(&driver))))
        .add_service(NodeServer::new(NodeService::new(Arc::clone(&driver))));
    let parents: Vec<&str> = driver.parents.iter().map(|p| p.as_str()).collect();
    match &config.endpoint {
        Endpoint::Unix(path) => {
            let listener = bind_unix(path)?;
            tracing::info!(endpoint = %config.endpoint, driver = %driver.name, node = %driver.node_id,
                parents = %parents.join(","), version = driver.version, "serving CSI");
            let result = router
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
                .await;
            let _ = std::fs::remove_file(path);
            result.map_err(|e| format!("serving on {}: {e}", config.endpoint))?;
        }
        Endpoint::Tcp(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen on {}: {e}", config.endpoint))?;
            tracing::info!(endpoint = %config.endpoint, driver = %driver.name, node = %driver.node_id,
                parents = %parents.join(","), version = driver.version, "serving CSI");
            router
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
                .await
                .map_err(|e| format!("serving on {}: {e}", config.endpoint))?;
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// Binds the socket, first removing a stale socket left by a previous run. Anything else at
/// that path is not ours to remove.
fn bind_unix(path: &Path) -> Result<UnixListener, String> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)
            .map_err(|e| format!("cannot remove the stale socket {}: {e}", path.display()))?,
        Ok(_) => {
            return Err(format!(
                "{} exists and is not a socket; refusing to replace it",
                path.display()
            ))
        }
        Err(_) => {}
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create the socket directory {}: {e}", dir.display()))?;
    }
    UnixListener::bind(path).map_err(|e| format!("cannot listen on {}: {e}", path.display()))
}

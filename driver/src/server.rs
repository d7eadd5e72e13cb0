//! gRPC plumbing: bind the endpoint, serve Identity, Controller and Node on it, stop
//! gracefully (in-flight RPCs finish) and remove the socket.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::net::{TcpListener, UnixListener};
use tonic::codegen::http;
use tracing::Instrument;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tonic::transport::Server;

use crate::config::{Config, Endpoint};
use crate::controller::ControllerService;
use crate::csi::{controller_server::ControllerServer, identity_server::IdentityServer, node_server::NodeServer};
use crate::driver::Driver;
use crate::identity::IdentityService;
use crate::node::NodeService;
use crate::reaper::Reaper;

/// A future that resolves on SIGTERM (kubelet stopping the pod) or SIGINT. The handlers are
/// installed now, before the socket exists: a signal that arrives as soon as a client can
/// connect must stop the driver gracefully, not kill it. Call it inside the runtime.
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()> + Send> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = interrupt.recv() => tracing::info!("SIGINT: shutting down"),
        }
    })
}

/// How long in-flight RPCs get to finish after SIGTERM before the driver exits anyway. Below
/// Kubernetes' default 30 s termination grace period; an idle client connection that never
/// closes must not hold the driver up.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(15);

/// Splits the shutdown signal into the graceful stop handed to the server and a hard stop
/// that fires `SHUTDOWN_GRACE` later; the hard stop must be polled for either to fire.
fn shutdown_stages(
    shutdown: impl Future<Output = ()> + Send,
) -> (impl Future<Output = ()> + Send, impl Future<Output = ()> + Send) {
    let (stopping, mut stop_requested) = tokio::sync::watch::channel(false);
    let graceful = async move {
        let _ = stop_requested.wait_for(|stop| *stop).await;
    };
    let hard = async move {
        shutdown.await;
        let _ = stopping.send(true);
        tokio::time::sleep(SHUTDOWN_GRACE).await;
        tracing::warn!("connections still open {SHUTDOWN_GRACE:?} after the stop signal; exiting anyway");
    };
    (graceful, hard)
}

pub async fn serve(config: Config, shutdown: impl Future<Output = ()> + Send) -> Result<(), String> {
    let (graceful, hard_stop) = shutdown_stages(shutdown);
    let driver = Arc::new(Driver::new(&config));
    let reaper = Reaper::new(Arc::clone(&driver));
    let replicator = crate::replication::Replicator::new(Arc::clone(&driver));
    // Background work starts once the endpoint is bound: a driver that cannot serve does
    // nothing else either.
    let start_background = || {
        thaw_left_frozen(driver.kubelet_dir.clone());
        reaper.clone().spawn_periodic();
        // CreateSnapshot's name index, read now rather than by the first CreateSnapshot.
        let names_driver = Arc::clone(&driver);
        tokio::spawn(async move {
            if let Err(e) = names_driver.snapshot_names.load(&names_driver.zfs, &names_driver.parents).await {
                tracing::warn!("reading the snapshot names: {e}; the first CreateSnapshot tries again");
            }
        });
        // Transfers a stopped driver left unfinished resume from their receive tokens.
        let replicator = Arc::clone(&replicator);
        tokio::spawn(async move { replicator.resume_all().await });
    };
    if let Some(address) = config.metrics_address {
        crate::metrics::Exporter::new(Arc::clone(&driver), Duration::from_secs(config.metrics_cache_seconds))
            .spawn(address)
            .await?;
    }
    let router = Server::builder()
        .layer(tower::layer::layer_fn(RpcLog))
        .add_service(IdentityServer::new(IdentityService::new(Arc::clone(&driver))))
        .add_service(ControllerServer::new(ControllerService::new(Arc::clone(&driver), reaper.clone(), Arc::clone(&replicator))))
        .add_service(NodeServer::new(NodeService::new(Arc::clone(&driver))));
    let parents: Vec<&str> = driver.parents.iter().map(|p| p.as_str()).collect();
    match &config.endpoint {
        Endpoint::Unix(path) => {
            let listener = bind_unix(path)?;
            start_background();
            tracing::info!(endpoint = %config.endpoint, driver = %driver.name, node = %driver.node_id,
                parents = %parents.join(","), version = driver.version, "serving CSI");
            let result = tokio::select! {
                result = router.serve_with_incoming_shutdown(UnixListenerStream::new(listener), graceful) => result,
                () = hard_stop => Ok(()),
            };
            let _ = std::fs::remove_file(path);
            result.map_err(|e| format!("serving on {}: {e}", config.endpoint))?;
        }
        Endpoint::Tcp(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen on {}: {e}", config.endpoint))?;
            start_background();
            tracing::info!(endpoint = %config.endpoint, driver = %driver.name, node = %driver.node_id,
                parents = %parents.join(","), version = driver.version, "serving CSI");
            let result = tokio::select! {
                result = router.serve_with_incoming_shutdown(TcpListenerStream::new(listener), graceful) => result,
                () = hard_stop => Ok(()),
            };
            result.map_err(|e| format!("serving on {}: {e}", config.endpoint))?;
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// A driver killed between freezing a filesystem (expansion, snapshot) and thawing it leaves
/// the workload's writes hanging: thaw what is frozen under the kubelet directory, in the
/// background so that a hung mount cannot delay serving.
fn thaw_left_frozen(kubelet_dir: std::path::PathBuf) {
    tokio::spawn(async move {
        let what = format!("thawing filesystems left frozen under {}", kubelet_dir.display());
        match crate::mount::run(what, move || crate::mount::thaw_frozen_under(&kubelet_dir)).await {
            Ok(thawed) => {
                for mount_point in thawed {
                    tracing::warn!(mount_point = %mount_point.display(), "thawed a filesystem that an interrupted expansion or snapshot left frozen");
                }
            }
            Err(e) => tracing::warn!("{e}"),
        }
    });
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

/// Logs every RPC: a span named for its method (so the services' own log lines carry it), a
/// debug line with its latency, and a warning with the gRPC code and message when it fails,
/// so a refused request is visible in `kubectl logs` without turning on debug logging.
#[derive(Clone)]
struct RpcLog<S>(S);

impl<S, B, R> tower::Service<http::Request<B>> for RpcLog<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Send,
    S::Future: Send + 'static,
    S::Error: Send,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path().to_string();
        let method = path.rsplit('/').next().unwrap_or_default().to_string();
        let span = tracing::info_span!("rpc", method = %method);
        let started = Instant::now();
        let response = self.0.call(request);
        Box::pin(
            async move {
                let response = response.await?;
                // Handler errors are trailers-only responses: the status is in the headers.
                let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok());
                let code = match header("grpc-status") {
                    Some(code) if code != "0" => {
                        let code = tonic::Code::from_i32(code.parse().unwrap_or(2));
                        let message = header("grpc-message")
                            .map(percent_decode)
                            .unwrap_or_default();
                        tracing::warn!(code = ?code, elapsed_ms = started.elapsed().as_millis() as u64, "{message}");
                        code
                    }
                    _ => {
                        tracing::debug!(elapsed_ms = started.elapsed().as_millis() as u64, "done");
                        tonic::Code::Ok
                    }
                };
                crate::metrics::record_rpc(&path, code, started.elapsed());
                Ok(response)
            }
            .instrument(span),
        )
    }
}

/// grpc-message is percent-encoded on the wire.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_messages_are_percent_decoded() {
        assert_eq!(percent_decode("volume%20vms%2Fa: 100%25"), "volume vms/a: 100%");
        assert_eq!(percent_decode("broken %2"), "broken %2");
    }
}

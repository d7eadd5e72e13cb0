//! CSI Identity service.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::csi::{self, identity_server::Identity, plugin_capability};
use crate::driver::Driver;
use crate::zfs::Depth;

pub struct IdentityService {
    driver: Arc<Driver>,
}

impl IdentityService {
    pub fn new(driver: Arc<Driver>) -> Self {
        Self { driver }
    }
}

fn service_capability(t: plugin_capability::service::Type) -> csi::PluginCapability {
    csi::PluginCapability {
        r#type: Some(plugin_capability::Type::Service(plugin_capability::Service { r#type: t as i32 })),
    }
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn get_plugin_info(
        &self,
        _request: Request<csi::GetPluginInfoRequest>,
    ) -> Result<Response<csi::GetPluginInfoResponse>, Status> {
        Ok(Response::new(csi::GetPluginInfoResponse {
            name: self.driver.name.clone(),
            vendor_version: self.driver.version.to_string(),
            manifest: Default::default(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _request: Request<csi::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<csi::GetPluginCapabilitiesResponse>, Status> {
        use plugin_capability::service::Type;
        // Expansion is ONLINE and node-side only (docs/DESIGN.md section 1): csi-resizer has no
        // per-node mode, so the controller does not advertise EXPAND_VOLUME.
        let online_expansion = csi::PluginCapability {
            r#type: Some(plugin_capability::Type::VolumeExpansion(plugin_capability::VolumeExpansion {
                r#type: plugin_capability::volume_expansion::Type::Online as i32,
            })),
        };
        Ok(Response::new(csi::GetPluginCapabilitiesResponse {
            capabilities: vec![
                service_capability(Type::ControllerService),
                service_capability(Type::VolumeAccessibilityConstraints),
                online_expansion,
            ],
        }))
    }

    /// Ready when the zfs command answers and at least one configured parent exists.
    async fn probe(
        &self,
        _request: Request<csi::ProbeRequest>,
    ) -> Result<Response<csi::ProbeResponse>, Status> {
        let zfs = &self.driver.zfs;
        zfs.version().await.map_err(|e| {
            Status::failed_precondition(format!("the zfs command is not usable: {e}"))
        })?;
        let mut missing = Vec::new();
        for parent in &self.driver.parents {
            match zfs.get(parent, &["type"], Depth::Itself, &[]).await {
                Ok(_) => {}
                Err(e) => missing.push(format!("{parent} ({e})")),
            }
        }
        if missing.len() == self.driver.parents.len() {
            return Err(Status::failed_precondition(format!(
                "none of the configured parents exists: {}; create them or fix --parents",
                missing.join(", ")
            )));
        }
        if !missing.is_empty() {
            tracing::warn!(missing = %missing.join(", "), "some configured parents do not exist");
        }
        Ok(Response::new(csi::ProbeResponse { ready: Some(true) }))
    }
}

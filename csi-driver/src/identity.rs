//! The Identity service: who the driver is, what it offers, whether it can serve now.

use std::sync::Arc;

use berth_cloud::Cloud as _;
use berth_cloud::api::DiskFilter;
use berth_proto::agent::v1 as agent;
use berth_proto::csi::v1 as csi;
use csi::plugin_capability::{Service, Type as CapType, VolumeExpansion, service, volume_expansion};
use tonic::{Request, Response, Status};

use crate::driver::Driver;

pub struct IdentityService(pub Arc<Driver>);

#[tonic::async_trait]
impl csi::identity_server::Identity for IdentityService {
    async fn get_plugin_info(&self, _: Request<csi::GetPluginInfoRequest>) -> Result<Response<csi::GetPluginInfoResponse>, Status> {
        Ok(Response::new(csi::GetPluginInfoResponse { name: self.0.cfg.driver.name.clone(), vendor_version: env!("CARGO_PKG_VERSION").into(), manifest: Default::default() }))
    }

    async fn get_plugin_capabilities(&self, _: Request<csi::GetPluginCapabilitiesRequest>) -> Result<Response<csi::GetPluginCapabilitiesResponse>, Status> {
        let service = |t: service::Type| csi::PluginCapability { r#type: Some(CapType::Service(Service { r#type: t as i32 })) };
        let mut capabilities = Vec::new();
        if self.0.cfg.serves_controller() {
            capabilities.push(service(service::Type::ControllerService));
        }
        capabilities.push(service(service::Type::VolumeAccessibilityConstraints));
        capabilities.push(csi::PluginCapability { r#type: Some(CapType::VolumeExpansion(VolumeExpansion { r#type: volume_expansion::Type::Online as i32 })) });
        Ok(Response::new(csi::GetPluginCapabilitiesResponse { capabilities }))
    }

    /// Ready only when what the services depend on answers: the node's agent, the cloud.
    async fn probe(&self, _: Request<csi::ProbeRequest>) -> Result<Response<csi::ProbeResponse>, Status> {
        let d = &self.0;
        if d.cfg.serves_node() {
            d.local_agent().disk_slots(agent::DiskSlotsRequest {}).await.map_err(|e| Status::failed_precondition(format!("not ready: the node's agent at {} does not answer: {}", d.cfg.agent.socket.display(), e.message())))?;
        }
        if let Some(cloud) = &d.cloud {
            cloud
                .describe_disks(&DiskFilter { ids: vec!["d-berth-probe".into()], ..Default::default() })
                .await
                .map_err(|e| Status::failed_precondition(format!("not ready: the cloud at {} does not answer: {e}", cloud.config().endpoint)))?;
        }
        Ok(Response::new(csi::ProbeResponse { ready: Some(true) }))
    }
}

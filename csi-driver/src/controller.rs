//! The Controller service: disks, NAS sub-directories and OSS prefixes are created and deleted
//! through the cloud; disks are attached through the agent of the node they are published to.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_cloud::api::{CreateDiskRequest, DiskFilter};
use berth_cloud::error::code;
use berth_cloud::model::{Disk, DiskStatus};
use berth_cloud::{Cloud as _, CloudError};
use berth_proto::agent::v1 as agent;
use berth_proto::csi::v1 as csi;
use csi::controller_service_capability::{Rpc, Type as CapType, rpc};
use csi::volume_capability::AccessType;
use tonic::{Request, Response, Status};

use crate::driver::Driver;
use crate::mounts;
use crate::volume::{GIB, Kind, VolumeId, VolumeSpec, ZONE_KEY, client_token, dir_name, disk_size_gib, disk_size_limits, unsupported};

pub struct ControllerService(pub Arc<Driver>);

/// A cloud error as the gRPC code a CO acts on.
pub fn cloud_status(e: CloudError) -> Status {
    let text = e.to_string();
    match e.code() {
        Some(code::INVALID_DISK_ID | code::INVALID_FILE_SYSTEM_ID | code::INVALID_INSTANCE_ID) => Status::not_found(text),
        Some(code::INVALID_DISK_SIZE | code::DISK_SIZE_SHRINK) => Status::out_of_range(text),
        Some(code::INCORRECT_DISK_STATUS | code::INCORRECT_INSTANCE_STATUS | code::ZONE_MISMATCH) => Status::failed_precondition(text),
        Some(code::DISK_LIMIT) => Status::resource_exhausted(text),
        Some(_) if e.api().is_some_and(|a| (400..500).contains(&a.http_status) && !a.is_retryable()) => Status::invalid_argument(text),
        _ => Status::unavailable(text),
    }
}

fn required(value: &str, what: &str) -> Result<(), Status> {
    if value.is_empty() {
        return Err(Status::invalid_argument(format!("{what} is missing")));
    }
    Ok(())
}

fn check_caps(kind: Kind, caps: &[csi::VolumeCapability]) -> Result<(), Status> {
    if caps.is_empty() {
        return Err(Status::invalid_argument("volume_capabilities is empty; give at least one"));
    }
    for c in caps {
        if let Some(why) = unsupported(kind, c) {
            return Err(Status::invalid_argument(why));
        }
    }
    Ok(())
}

/// Removes a volume's directory tree; what is already gone is fine. A mount point (an OSS prefix
/// mounted as the root) is emptied and stays.
fn remove_tree(dir: &Path) -> std::io::Result<()> {
    let gone = |r: std::io::Result<()>| match r {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for e in entries.flatten() {
        let path = e.path();
        if e.file_type().is_ok_and(|t| t.is_dir()) { gone(std::fs::remove_dir_all(&path))? } else { gone(std::fs::remove_file(&path))? }
    }
    // The mount point itself stays; a NAS sub-directory goes.
    if crate::mounts::mounted_at(dir).is_none() {
        gone(std::fs::remove_dir(dir))?;
    }
    Ok(())
}

/// CreateVolume's checks before any cloud call: the name, the parameters and the capabilities.
pub fn check_create_volume(req: &csi::CreateVolumeRequest) -> Result<VolumeSpec, Status> {
    required(&req.name, "name")?;
    let spec = VolumeSpec::parse(&req.parameters).map_err(|e| Status::invalid_argument(e.to_string()))?;
    check_caps(spec.kind(), &req.volume_capabilities)?;
    if req.volume_content_source.is_some() {
        return Err(Status::invalid_argument("volume_content_source: creating from a snapshot or a volume is not supported (CLONE_VOLUME and snapshots are not advertised)"));
    }
    Ok(spec)
}

/// ControllerPublishVolume's checks: the volume and node IDs, and a capability the volume's kind serves.
pub fn check_publish_volume(req: &csi::ControllerPublishVolumeRequest) -> Result<VolumeId, Status> {
    required(&req.volume_id, "volume_id")?;
    required(&req.node_id, "node_id")?;
    let cap = req.volume_capability.as_ref().ok_or_else(|| Status::invalid_argument("volume_capability is missing"))?;
    let id = VolumeId::parse(&req.volume_id).map_err(|e| Status::not_found(e.to_string()))?;
    if let Some(why) = unsupported(id.kind(), cap) {
        return Err(Status::invalid_argument(why));
    }
    Ok(id)
}

/// ValidateVolumeCapabilities' checks: the volume ID and at least one capability; with the reasons
/// the capabilities that are not served are refused (empty: all are).
pub fn check_validate_volume_capabilities(req: &csi::ValidateVolumeCapabilitiesRequest) -> Result<(VolumeId, Vec<String>), Status> {
    required(&req.volume_id, "volume_id")?;
    if req.volume_capabilities.is_empty() {
        return Err(Status::invalid_argument("volume_capabilities is empty; give at least one"));
    }
    let id = VolumeId::parse(&req.volume_id).map_err(|e| Status::not_found(e.to_string()))?;
    let refused = req.volume_capabilities.iter().filter_map(|c| unsupported(id.kind(), c)).collect();
    Ok((id, refused))
}

/// ControllerExpandVolume's checks: the volume ID and the capacity range.
pub fn check_expand_volume(req: &csi::ControllerExpandVolumeRequest) -> Result<(VolumeId, &csi::CapacityRange), Status> {
    required(&req.volume_id, "volume_id")?;
    let range = req.capacity_range.as_ref().ok_or_else(|| Status::invalid_argument("capacity_range is missing"))?;
    let id = VolumeId::parse(&req.volume_id).map_err(|e| Status::not_found(e.to_string()))?;
    Ok((id, range))
}

fn topology(zone: &str) -> csi::Topology {
    csi::Topology { segments: HashMap::from([(ZONE_KEY.to_string(), zone.to_string())]) }
}

fn context(kind: Kind) -> HashMap<String, String> {
    HashMap::from([("type".to_string(), kind.as_str().to_string())])
}

fn is_block(cap: Option<&csi::VolumeCapability>) -> bool {
    matches!(cap.and_then(|c| c.access_type.as_ref()), Some(AccessType::Block(_)))
}

impl ControllerService {
    async fn find_disk(&self, disk_id: &str) -> Result<Option<Disk>, Status> {
        let cloud = self.0.cloud()?;
        let found = cloud.describe_disks(&DiskFilter { ids: vec![disk_id.into()], ..Default::default() }).await.map_err(cloud_status)?;
        Ok(found.into_iter().find(|d| d.id == disk_id))
    }

    /// The zone a new disk goes to: the topology the CO asks for, the `zoneId` parameter, or this node's.
    async fn zone_for(&self, req: &csi::CreateVolumeRequest, param: Option<&String>) -> Result<String, Status> {
        if let Some(t) = &req.accessibility_requirements {
            for topo in t.preferred.iter().chain(&t.requisite) {
                if let Some(z) = topo.segments.get(ZONE_KEY) {
                    return Ok(z.clone());
                }
            }
        }
        if let Some(z) = param {
            return Ok(z.clone());
        }
        self.0.node().await.map(|n| n.zone_id).map_err(|e| Status::invalid_argument(format!("no zone for the disk: no {ZONE_KEY} topology, no zoneId parameter, and {}", e.message())))
    }

    async fn create_disk(&self, req: &csi::CreateVolumeRequest, category: &str, level: Option<&str>, zone_param: Option<&String>) -> Result<csi::Volume, Status> {
        let cloud = self.0.cloud()?;
        let (min, max) = disk_size_limits(category, level);
        let size = disk_size_gib(req.capacity_range.as_ref(), min, max).map_err(|e| Status::out_of_range(e.to_string()))?;
        let zone = self.zone_for(req, zone_param).await?;
        let same = |d: &Disk| -> Result<csi::Volume, Status> {
            if d.size_gib as i64 != size || d.category != category {
                return Err(Status::already_exists(format!(
                    "volume {:?} exists as {} ({} GiB {}), not {size} GiB {category}",
                    req.name, d.id, d.size_gib, d.category
                )));
            }
            Ok(csi::Volume { capacity_bytes: d.size_gib as i64 * GIB, volume_id: d.id.clone(), volume_context: context(Kind::Disk), content_source: None, accessible_topology: vec![topology(&d.zone_id)] })
        };
        let all = cloud.describe_disks(&DiskFilter { zone_id: Some(zone.clone()), ..Default::default() }).await.map_err(cloud_status)?;
        if let Some(d) = all.iter().find(|d| d.name == req.name) {
            return same(d);
        }
        // The token makes a retried create return the same disk; once that disk is deleted, the
        // next token follows from its ID so the name can be used again.
        let mut generation = String::new();
        for _ in 0..16 {
            let create = CreateDiskRequest {
                zone_id: zone.clone(),
                name: req.name.clone(),
                category: category.into(),
                performance_level: level.map(str::to_string),
                size_gib: size as u64,
                client_token: Some(client_token(&req.name, &generation)),
            };
            let id = cloud.create_disk(&create).await.map_err(cloud_status)?;
            match self.find_disk(&id).await? {
                Some(d) if d.name == req.name => {
                    if d.status == DiskStatus::Creating {
                        berth_cloud::wait::disk_status(cloud, &id, DiskStatus::Available, std::time::Duration::from_secs(60)).await.map_err(cloud_status)?;
                    }
                    tracing::info!(name = %req.name, disk = %id, size_gib = size, category, "disk created");
                    return same(&d);
                }
                _ => generation = id,
            }
        }
        Err(Status::internal(format!("could not create a disk for {:?}: every client token names a deleted disk", req.name)))
    }

    /// Runs `work` on the root of a NAS file system or on an OSS volume's prefix, mounted for the while.
    fn with_root<T>(&self, id: &VolumeId, work: impl FnOnce(&Path) -> std::io::Result<T>) -> Result<T, Status> {
        let internal = |e: &dyn std::fmt::Display| Status::internal(format!("{id}: {e}"));
        match id {
            VolumeId::Nas { fs_id, server, .. } => {
                let local = &self.0.cfg.nas.local_export_root;
                if !local.as_os_str().is_empty() {
                    let root = local.join(fs_id);
                    if !root.is_dir() {
                        return Err(Status::not_found(format!("NAS file system {fs_id} has no export at {}", root.display())));
                    }
                    return work(&root).map_err(|e| internal(&e));
                }
                let scratch = self.0.cfg.driver.state_dir.join("scratch").join(dir_name(fs_id));
                std::fs::create_dir_all(&scratch).map_err(|e| internal(&e))?;
                let opts = vec![self.0.cfg.nas.nfs_options.clone()];
                mounts::mount(&format!("{server}:/"), &scratch, Some("nfs"), &opts).map_err(|e| Status::unavailable(e.to_string()))?;
                let result = work(&scratch).map_err(|e| internal(&e));
                let _ = mounts::unmount_all(&scratch);
                result
            }
            VolumeId::Oss { bucket, path } => {
                // An OSS volume's root is its prefix, mounted on its own: a prefix exists only
                // through the objects under it, so it is not listed as a directory of the bucket.
                let scratch = self.0.oss.scratch_point(&format!("{bucket}{path}"));
                self.0.oss.mount(bucket, path, &scratch).map_err(|e| Status::unavailable(e.to_string()))?;
                let result = work(&scratch).map_err(|e| internal(&e));
                let _ = mounts::unmount_all(&scratch);
                let _ = std::fs::remove_dir(&scratch);
                result
            }
            VolumeId::Disk { .. } => Err(Status::internal("a disk has no root to mount")),
        }
    }

    async fn create_dir_volume(&self, req: &csi::CreateVolumeRequest, spec: &VolumeSpec) -> Result<csi::Volume, Status> {
        let id = match spec {
            VolumeSpec::Nas { fs_id, parent } => {
                let cloud = self.0.cloud()?;
                let fs = cloud.describe_nas_file_systems(Some(fs_id)).await.map_err(cloud_status)?.into_iter().find(|f| &f.id == fs_id);
                let Some(fs) = fs else { return Err(Status::not_found(format!("NAS file system {fs_id} does not exist"))) };
                let server = if self.0.cfg.nas.local_export_root.as_os_str().is_empty() { fs.mount_target } else { String::new() };
                VolumeId::Nas { fs_id: fs_id.clone(), server, path: format!("{parent}/{}", dir_name(&req.name)) }
            }
            VolumeSpec::Oss { bucket, parent } => VolumeId::Oss { bucket: bucket.clone(), path: format!("{parent}/{}", dir_name(&req.name)) },
            VolumeSpec::Disk { .. } => unreachable!("disks are created by create_disk"),
        };
        let path = match &id {
            VolumeId::Nas { path, .. } | VolumeId::Oss { path, .. } => PathBuf::from(path.trim_start_matches('/')),
            VolumeId::Disk { .. } => PathBuf::new(),
        };
        let task_id = id.clone();
        let this = ControllerService(self.0.clone());
        // An OSS prefix needs nothing made: it comes to exist with its first object.
        let needs_dir = matches!(id, VolumeId::Nas { .. });
        tokio::task::spawn_blocking(move || {
            if !needs_dir {
                return Ok(());
            }
            this.with_root(&task_id, |root| {
                use std::os::unix::fs::PermissionsExt as _;
                let dir = root.join(&path);
                std::fs::create_dir_all(&dir)?;
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))
            })
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))??;
        let capacity = req.capacity_range.as_ref().map(|r| r.required_bytes.max(0)).unwrap_or(0);
        tracing::info!(name = %req.name, volume = %id, "directory volume created");
        Ok(csi::Volume { capacity_bytes: capacity, volume_id: id.to_string(), volume_context: context(spec.kind()), content_source: None, accessible_topology: Vec::new() })
    }
}

#[tonic::async_trait]
impl csi::controller_server::Controller for ControllerService {
    async fn create_volume(&self, request: Request<csi::CreateVolumeRequest>) -> Result<Response<csi::CreateVolumeResponse>, Status> {
        let req = request.into_inner();
        let spec = check_create_volume(&req)?;
        let _lock = self.0.lock("name", &req.name)?;
        let volume = match &spec {
            VolumeSpec::Disk { category, performance_level, zone } => self.create_disk(&req, category, performance_level.as_deref(), zone.as_ref()).await?,
            _ => self.create_dir_volume(&req, &spec).await?,
        };
        Ok(Response::new(csi::CreateVolumeResponse { volume: Some(volume) }))
    }

    async fn delete_volume(&self, request: Request<csi::DeleteVolumeRequest>) -> Result<Response<csi::DeleteVolumeResponse>, Status> {
        let req = request.into_inner();
        required(&req.volume_id, "volume_id")?;
        // A volume ID this driver never made names nothing: deleting nothing succeeds.
        let Ok(id) = VolumeId::parse(&req.volume_id) else { return Ok(Response::new(csi::DeleteVolumeResponse {})) };
        let _lock = self.0.lock("volume", &req.volume_id)?;
        match &id {
            VolumeId::Disk { disk_id } => {
                let Some(d) = self.find_disk(disk_id).await? else { return Ok(Response::new(csi::DeleteVolumeResponse {})) };
                if d.status != DiskStatus::Available {
                    return Err(Status::failed_precondition(format!("disk {disk_id} is {} on {}; unpublish it first", d.status.as_str(), d.instance_id.unwrap_or_default())));
                }
                match self.0.cloud()?.delete_disk(disk_id).await {
                    Ok(()) => {}
                    Err(e) if e.is_code(code::INVALID_DISK_ID) => {}
                    Err(e) => return Err(cloud_status(e)),
                }
                tracing::info!(disk = %disk_id, "disk deleted");
            }
            VolumeId::Nas { .. } | VolumeId::Oss { .. } => {
                let rel = match &id {
                    VolumeId::Nas { path, .. } => PathBuf::from(path.trim_start_matches('/')),
                    _ => PathBuf::new(),
                };
                let this = ControllerService(self.0.clone());
                let task_id = id.clone();
                let result = tokio::task::spawn_blocking(move || this.with_root(&task_id, |root| remove_tree(&root.join(&rel))))
                .await
                .map_err(|e| Status::internal(e.to_string()))?;
                match result {
                    Err(e) if e.code() == tonic::Code::NotFound => {}
                    other => other?,
                }
            }
        }
        Ok(Response::new(csi::DeleteVolumeResponse {}))
    }

    async fn controller_publish_volume(&self, request: Request<csi::ControllerPublishVolumeRequest>) -> Result<Response<csi::ControllerPublishVolumeResponse>, Status> {
        let req = request.into_inner();
        let id = check_publish_volume(&req)?;
        let VolumeId::Disk { disk_id } = &id else {
            // NAS and OSS need no attach: the node mounts them.
            return Ok(Response::new(csi::ControllerPublishVolumeResponse::default()));
        };
        if self.find_disk(disk_id).await?.is_none() {
            return Err(Status::not_found(format!("disk {disk_id} does not exist")));
        }
        let mut agent = self.0.agent_of(&req.node_id).await?;
        let _lock = self.0.lock("volume", &req.volume_id)?;
        let a = agent.attach_disk(agent::AttachDiskRequest { disk_id: disk_id.clone() }).await?.into_inner();
        let publish_context = HashMap::from([("serial".to_string(), a.serial), ("device".to_string(), a.device_path)]);
        Ok(Response::new(csi::ControllerPublishVolumeResponse { publish_context }))
    }

    async fn controller_unpublish_volume(&self, request: Request<csi::ControllerUnpublishVolumeRequest>) -> Result<Response<csi::ControllerUnpublishVolumeResponse>, Status> {
        let req = request.into_inner();
        required(&req.volume_id, "volume_id")?;
        let done = Ok(Response::new(csi::ControllerUnpublishVolumeResponse {}));
        let Ok(VolumeId::Disk { disk_id }) = VolumeId::parse(&req.volume_id) else { return done };
        let Some(disk) = self.find_disk(&disk_id).await? else { return done };
        // An empty node ID means "wherever it is".
        let node = if req.node_id.is_empty() { disk.instance_id.clone().unwrap_or_default() } else { req.node_id.clone() };
        if node.is_empty() || disk.instance_id.as_deref() != Some(node.as_str()) {
            return done;
        }
        let mut agent = match self.0.agent_of(&node).await {
            Ok(a) => a,
            Err(e) if e.code() == tonic::Code::NotFound => return done,
            Err(e) => return Err(e),
        };
        let _lock = self.0.lock("volume", &req.volume_id)?;
        agent.detach_disk(agent::DetachDiskRequest { disk_id }).await?;
        done
    }

    async fn validate_volume_capabilities(&self, request: Request<csi::ValidateVolumeCapabilitiesRequest>) -> Result<Response<csi::ValidateVolumeCapabilitiesResponse>, Status> {
        let req = request.into_inner();
        let (id, refused) = check_validate_volume_capabilities(&req)?;
        if let VolumeId::Disk { disk_id } = &id
            && self.find_disk(disk_id).await?.is_none()
        {
            return Err(Status::not_found(format!("disk {disk_id} does not exist")));
        }
        if let VolumeId::Nas { fs_id, path, .. } = &id
            && !self.0.cfg.nas.local_export_root.as_os_str().is_empty()
            && !self.0.cfg.nas.local_export_root.join(fs_id).join(path.trim_start_matches('/')).is_dir()
        {
            return Err(Status::not_found(format!("NAS volume {id} does not exist")));
        }
        if !refused.is_empty() {
            return Ok(Response::new(csi::ValidateVolumeCapabilitiesResponse { confirmed: None, message: refused.join("; ") }));
        }
        let confirmed = csi::validate_volume_capabilities_response::Confirmed {
            volume_context: req.volume_context,
            volume_capabilities: req.volume_capabilities,
            parameters: req.parameters,
            mutable_parameters: Default::default(),
        };
        Ok(Response::new(csi::ValidateVolumeCapabilitiesResponse { confirmed: Some(confirmed), message: String::new() }))
    }

    async fn controller_expand_volume(&self, request: Request<csi::ControllerExpandVolumeRequest>) -> Result<Response<csi::ControllerExpandVolumeResponse>, Status> {
        let req = request.into_inner();
        let (id, range) = check_expand_volume(&req)?;
        let VolumeId::Disk { disk_id } = &id else {
            return Ok(Response::new(csi::ControllerExpandVolumeResponse { capacity_bytes: range.required_bytes, node_expansion_required: false }));
        };
        let _lock = self.0.lock("volume", &req.volume_id)?;
        let disk = self.find_disk(disk_id).await?.ok_or_else(|| Status::not_found(format!("disk {disk_id} does not exist")))?;
        let (min, max) = disk_size_limits(&disk.category, Some(disk.performance_level.as_str()).filter(|l| !l.is_empty()));
        let want = disk_size_gib(Some(range), min, max).map_err(|e| Status::out_of_range(e.to_string()))?;
        let node_expansion_required = !is_block(req.volume_capability.as_ref());
        if want <= disk.size_gib as i64 {
            return Ok(Response::new(csi::ControllerExpandVolumeResponse { capacity_bytes: disk.size_gib as i64 * GIB, node_expansion_required }));
        }
        let online = disk.status == DiskStatus::InUse;
        self.0.cloud()?.resize_disk(disk_id, want as u64, online).await.map_err(cloud_status)?;
        tracing::info!(disk = %disk_id, from_gib = disk.size_gib, to_gib = want, online, "disk expanded");
        Ok(Response::new(csi::ControllerExpandVolumeResponse { capacity_bytes: want * GIB, node_expansion_required }))
    }

    async fn controller_get_capabilities(&self, _: Request<csi::ControllerGetCapabilitiesRequest>) -> Result<Response<csi::ControllerGetCapabilitiesResponse>, Status> {
        let cap = |t: rpc::Type| csi::ControllerServiceCapability { r#type: Some(CapType::Rpc(Rpc { r#type: t as i32 })) };
        let capabilities = vec![cap(rpc::Type::CreateDeleteVolume), cap(rpc::Type::PublishUnpublishVolume), cap(rpc::Type::ExpandVolume)];
        Ok(Response::new(csi::ControllerGetCapabilitiesResponse { capabilities }))
    }

    async fn list_volumes(&self, _: Request<csi::ListVolumesRequest>) -> Result<Response<csi::ListVolumesResponse>, Status> {
        Err(Status::unimplemented("ListVolumes is not advertised"))
    }

    async fn get_capacity(&self, _: Request<csi::GetCapacityRequest>) -> Result<Response<csi::GetCapacityResponse>, Status> {
        Err(Status::unimplemented("GetCapacity is not advertised"))
    }

    async fn create_snapshot(&self, _: Request<csi::CreateSnapshotRequest>) -> Result<Response<csi::CreateSnapshotResponse>, Status> {
        Err(Status::unimplemented("snapshots are not advertised"))
    }

    async fn delete_snapshot(&self, _: Request<csi::DeleteSnapshotRequest>) -> Result<Response<csi::DeleteSnapshotResponse>, Status> {
        Err(Status::unimplemented("snapshots are not advertised"))
    }

    async fn list_snapshots(&self, _: Request<csi::ListSnapshotsRequest>) -> Result<Response<csi::ListSnapshotsResponse>, Status> {
        Err(Status::unimplemented("snapshots are not advertised"))
    }

    async fn controller_get_volume(&self, _: Request<csi::ControllerGetVolumeRequest>) -> Result<Response<csi::ControllerGetVolumeResponse>, Status> {
        Err(Status::unimplemented("GET_VOLUME is not advertised"))
    }

    async fn controller_modify_volume(&self, _: Request<csi::ControllerModifyVolumeRequest>) -> Result<Response<csi::ControllerModifyVolumeResponse>, Status> {
        Err(Status::unimplemented("MODIFY_VOLUME is not advertised"))
    }
}

#[cfg(test)]
mod tests {
    use berth_cloud::ApiError;

    use super::*;

    fn api(code: &str, http_status: u16) -> CloudError {
        CloudError::Api(ApiError { action: "X".into(), code: code.into(), message: "m".into(), request_id: "r".into(), http_status })
    }

    #[test]
    fn cloud_errors_become_the_codes_a_co_acts_on() {
        assert_eq!(cloud_status(api(code::INVALID_DISK_ID, 404)).code(), tonic::Code::NotFound);
        assert_eq!(cloud_status(api(code::INVALID_DISK_SIZE, 400)).code(), tonic::Code::OutOfRange);
        assert_eq!(cloud_status(api(code::INCORRECT_DISK_STATUS, 403)).code(), tonic::Code::FailedPrecondition);
        assert_eq!(cloud_status(api(code::DISK_LIMIT, 403)).code(), tonic::Code::ResourceExhausted);
        assert_eq!(cloud_status(api(code::INVALID_PARAMETER, 400)).code(), tonic::Code::InvalidArgument);
        assert_eq!(cloud_status(api(code::THROTTLING, 400)).code(), tonic::Code::Unavailable, "retryable: the CO retries");
        assert_eq!(cloud_status(api(code::INTERNAL_ERROR, 500)).code(), tonic::Code::Unavailable);
    }

    #[test]
    fn removing_a_tree_tolerates_what_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let vol = dir.path().join("k8s/pvc-1");
        std::fs::create_dir_all(vol.join("sub")).unwrap();
        std::fs::write(vol.join("sub/f"), b"x").unwrap();
        std::fs::write(vol.join("g"), b"y").unwrap();
        remove_tree(&vol).unwrap();
        assert!(!vol.exists() && dir.path().join("k8s").exists());
        remove_tree(&vol).unwrap();
    }
}

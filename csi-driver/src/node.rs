//! The Node service: a disk is found by its serial, verified, formatted only when blank, checked,
//! mounted at the staging path and grown to its device; each target is a bind mount of it (block
//! mode: of the device, onto a file). NAS is a bind of the local cloud's export (NFS on a real
//! host); OSS is a bind of the volume's one s3fs mount on the node. What is mounted is read back
//! from the kernel, so every call can be repeated and a restarted driver adopts what it finds.

use std::collections::HashMap;
use std::os::unix::fs::FileTypeExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_cloud::guest::{BY_ID_DIR, DeviceError, find_disk_device};
use berth_proto::agent::v1 as agent;
use berth_proto::csi::v1 as csi;
use csi::node_service_capability::{Rpc, Type as CapType, rpc};
use csi::volume_capability::AccessType;
use csi::volume_capability::access_mode::Mode;
use tonic::{Request, Response, Status};

use crate::driver::Driver;
use crate::mounts::{self, CommandError};
use crate::volume::{VolumeId, ZONE_KEY};

pub struct NodeService(pub Arc<Driver>);

fn required(value: &str, what: &str) -> Result<(), Status> {
    if value.is_empty() {
        return Err(Status::invalid_argument(format!("{what} is missing")));
    }
    Ok(())
}

fn cmd(e: CommandError) -> Status {
    Status::internal(e.to_string())
}

fn io(what: &Path) -> impl FnOnce(std::io::Error) -> Status + '_ {
    move |e| Status::internal(format!("{}: {e}", what.display()))
}

fn parse_id(id: &str) -> Result<VolumeId, Status> {
    VolumeId::parse(id).map_err(|e| Status::not_found(e.to_string()))
}

/// NodeStageVolume's checks: the volume ID, the staging path and the capability.
pub fn check_stage_volume(req: &csi::NodeStageVolumeRequest) -> Result<(VolumeId, csi::VolumeCapability), Status> {
    required(&req.volume_id, "volume_id")?;
    required(&req.staging_target_path, "staging_target_path")?;
    let cap = req.volume_capability.clone().ok_or_else(|| Status::invalid_argument("volume_capability is missing"))?;
    Ok((parse_id(&req.volume_id)?, cap))
}

/// NodePublishVolume's checks: the volume ID, the target and staging paths and the capability.
pub fn check_publish_volume(req: &csi::NodePublishVolumeRequest) -> Result<(VolumeId, csi::VolumeCapability), Status> {
    required(&req.volume_id, "volume_id")?;
    required(&req.target_path, "target_path")?;
    let cap = req.volume_capability.clone().ok_or_else(|| Status::invalid_argument("volume_capability is missing"))?;
    required(&req.staging_target_path, "staging_target_path (this driver stages volumes)")?;
    Ok((parse_id(&req.volume_id)?, cap))
}

/// Runs blocking work (commands, mounts) off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, Status> + Send + 'static) -> Result<T, Status> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Status::internal(e.to_string()))?
}

/// The verified device of a disk attached to this node.
fn disk_device(disk_id: &str, publish_context: &HashMap<String, String>) -> Result<PathBuf, Status> {
    let serial = publish_context.get("serial").cloned().unwrap_or_else(|| disk_id.trim_start_matches("d-").to_string());
    find_disk_device(Path::new(BY_ID_DIR), disk_id, &serial).map_err(|e| match e {
        DeviceError::Missing { .. } => Status::not_found(format!("{e}; is the volume published to this node?")),
        DeviceError::Mismatch { .. } => Status::internal(e.to_string()),
    })
}

fn fs_type_of_cap(cap: &csi::VolumeCapability) -> (String, Vec<String>) {
    match &cap.access_type {
        Some(AccessType::Mount(m)) => (if m.fs_type.is_empty() { "ext4".to_string() } else { m.fs_type.clone() }, m.mount_flags.clone()),
        _ => ("ext4".into(), Vec::new()),
    }
}

fn is_block(cap: &csi::VolumeCapability) -> bool {
    matches!(cap.access_type, Some(AccessType::Block(_)))
}

fn reader_only(cap: &csi::VolumeCapability) -> bool {
    let mode = cap.access_mode.as_ref().map(|m| Mode::try_from(m.mode).unwrap_or(Mode::Unknown));
    matches!(mode, Some(Mode::SingleNodeReaderOnly | Mode::MultiNodeReaderOnly))
}

/// Formats (only when blank), checks and mounts a disk at the staging path, then grows it to its device.
fn stage_disk(device: &Path, staging: &Path, cap: &csi::VolumeCapability) -> Result<(), Status> {
    std::fs::create_dir_all(staging).map_err(io(staging))?;
    if let Some(m) = mounts::mounted_at(staging) {
        let ours = std::fs::canonicalize(&m.source).is_ok_and(|s| s == device);
        if ours {
            return Ok(());
        }
        return Err(Status::already_exists(format!("{} is already a mount of {}, not of {}", staging.display(), m.source, device.display())));
    }
    let (fs_type, flags) = fs_type_of_cap(cap);
    match mounts::fs_type_of(device).map_err(cmd)? {
        None => {
            tracing::info!(device = %device.display(), fs_type, "blank disk: formatting");
            mounts::mkfs(device, &fs_type).map_err(cmd)?;
        }
        Some(found) if found != fs_type => {
            return Err(Status::failed_precondition(format!("{} holds {found}, not the {fs_type} asked for; it is not reformatted", device.display())));
        }
        Some(_) => mounts::fsck(device, &fs_type).map_err(cmd)?,
    }
    let mut options = flags;
    if fs_type == "xfs" {
        // Clones of one disk share an XFS UUID; without nouuid the second would not mount.
        options.push("nouuid".into());
    }
    mounts::mount(device.to_str().unwrap_or_default(), staging, Some(&fs_type), &options).map_err(cmd)?;
    mounts::resize(device, staging, &fs_type).map_err(cmd)?;
    Ok(())
}

/// Unmounts a target (a dead FUSE bind lazily) and removes the leaf the driver made.
fn clear_target(target: &Path) -> Result<(), Status> {
    if mounts::unmount_all(target).is_err() {
        mounts::detach_lazily(target).map_err(cmd)?;
    }
    match std::fs::symlink_metadata(target) {
        Ok(m) if m.is_dir() => {
            let _ = std::fs::remove_dir(target);
        }
        Ok(_) => {
            let _ = std::fs::remove_file(target);
        }
        Err(_) => {}
    }
    Ok(())
}

fn make_dir_target(target: &Path) -> Result<(), Status> {
    std::fs::create_dir_all(target).map_err(io(target))
}

impl NodeService {
    fn publish_blocking(d: &Driver, req: &csi::NodePublishVolumeRequest, id: &VolumeId, cap: &csi::VolumeCapability) -> Result<(), Status> {
        let target = Path::new(&req.target_path);
        if mounts::mounted_at(target).is_some() {
            return Ok(());
        }
        // Read-only when NodePublish says so, when the access mode allows no writer, or when the
        // volume was published read-only by ControllerPublish (its context says so).
        let ro = req.readonly || reader_only(cap) || req.publish_context.get(crate::controller::READONLY_KEY).is_some_and(|v| v == "true");
        match id {
            VolumeId::Disk { disk_id } if is_block(cap) => {
                let device = disk_device(disk_id, &req.publish_context)?;
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent).map_err(io(parent))?;
                }
                if std::fs::symlink_metadata(target).is_err() {
                    std::fs::File::create(target).map_err(io(target))?;
                }
                mounts::bind(&device, target, ro).map_err(cmd)
            }
            VolumeId::Disk { disk_id } => {
                let staging = Path::new(&req.staging_target_path);
                if mounts::mounted_at(staging).is_none() {
                    tracing::info!(volume = %disk_id, staging = %staging.display(), "staging mount is gone; staging again");
                    let device = disk_device(disk_id, &req.publish_context)?;
                    stage_disk(&device, staging, cap)?;
                }
                make_dir_target(target)?;
                mounts::bind(staging, target, ro).map_err(cmd)
            }
            VolumeId::Nas { fs_id, server, path } => {
                make_dir_target(target)?;
                let local = &d.cfg.nas.local_export_root;
                if local.as_os_str().is_empty() {
                    let mut options = vec![d.cfg.nas.nfs_options.clone()];
                    if ro {
                        options.push("ro".into());
                    }
                    return mounts::mount(&format!("{server}:{path}"), target, Some("nfs"), &options).map_err(cmd);
                }
                let source = local.join(fs_id).join(path.trim_start_matches('/'));
                if !source.is_dir() {
                    return Err(Status::not_found(format!("NAS volume {id}: {} does not exist", source.display())));
                }
                mounts::bind(&source, target, ro).map_err(cmd)
            }
            VolumeId::Oss { bucket, path } => {
                let at = d.oss.ensure(&req.volume_id, bucket, path).map_err(|e| Status::unavailable(e.to_string()))?;
                make_dir_target(target)?;
                mounts::bind(&at, target, ro).map_err(cmd)
            }
        }
    }
}

#[tonic::async_trait]
impl csi::node_server::Node for NodeService {
    async fn node_stage_volume(&self, request: Request<csi::NodeStageVolumeRequest>) -> Result<Response<csi::NodeStageVolumeResponse>, Status> {
        let req = request.into_inner();
        let (id, cap) = check_stage_volume(&req)?;
        let lock = self.0.lock("volume", &req.volume_id)?;
        let d = self.0.clone();
        blocking(move || {
            let _lock = lock;
            match &id {
                // A block volume is bound at publish; staging only checks the device is here.
                VolumeId::Disk { disk_id } if is_block(&cap) => disk_device(disk_id, &req.publish_context).map(drop),
                VolumeId::Disk { disk_id } => stage_disk(&disk_device(disk_id, &req.publish_context)?, Path::new(&req.staging_target_path), &cap),
                VolumeId::Nas { .. } => Ok(()),
                VolumeId::Oss { bucket, path } => d.oss.ensure(&req.volume_id, bucket, path).map(drop).map_err(|e| Status::unavailable(e.to_string())),
            }
        })
        .await?;
        Ok(Response::new(csi::NodeStageVolumeResponse {}))
    }

    async fn node_unstage_volume(&self, request: Request<csi::NodeUnstageVolumeRequest>) -> Result<Response<csi::NodeUnstageVolumeResponse>, Status> {
        let req = request.into_inner();
        required(&req.volume_id, "volume_id")?;
        required(&req.staging_target_path, "staging_target_path")?;
        let lock = self.0.lock("volume", &req.volume_id)?;
        let d = self.0.clone();
        blocking(move || {
            let _lock = lock;
            mounts::unmount_all(Path::new(&req.staging_target_path)).map_err(cmd)?;
            if let Ok(VolumeId::Oss { .. }) = VolumeId::parse(&req.volume_id) {
                d.oss.release_if_unused(&req.volume_id).map_err(|e| Status::internal(e.to_string()))?;
            }
            Ok(())
        })
        .await?;
        Ok(Response::new(csi::NodeUnstageVolumeResponse {}))
    }

    async fn node_publish_volume(&self, request: Request<csi::NodePublishVolumeRequest>) -> Result<Response<csi::NodePublishVolumeResponse>, Status> {
        let req = request.into_inner();
        let (id, cap) = check_publish_volume(&req)?;
        let lock = self.0.lock("volume", &req.volume_id)?;
        let d = self.0.clone();
        blocking(move || {
            let _lock = lock;
            Self::publish_blocking(&d, &req, &id, &cap)
        })
        .await?;
        Ok(Response::new(csi::NodePublishVolumeResponse {}))
    }

    async fn node_unpublish_volume(&self, request: Request<csi::NodeUnpublishVolumeRequest>) -> Result<Response<csi::NodeUnpublishVolumeResponse>, Status> {
        let req = request.into_inner();
        required(&req.volume_id, "volume_id")?;
        required(&req.target_path, "target_path")?;
        let lock = self.0.lock("volume", &req.volume_id)?;
        let d = self.0.clone();
        blocking(move || {
            let _lock = lock;
            clear_target(Path::new(&req.target_path))?;
            if let Ok(VolumeId::Oss { .. }) = VolumeId::parse(&req.volume_id) {
                d.oss.release_if_unused(&req.volume_id).map_err(|e| Status::internal(e.to_string()))?;
            }
            Ok(())
        })
        .await?;
        Ok(Response::new(csi::NodeUnpublishVolumeResponse {}))
    }

    async fn node_get_volume_stats(&self, request: Request<csi::NodeGetVolumeStatsRequest>) -> Result<Response<csi::NodeGetVolumeStatsResponse>, Status> {
        use csi::volume_usage::Unit;
        let req = request.into_inner();
        required(&req.volume_id, "volume_id")?;
        required(&req.volume_path, "volume_path")?;
        parse_id(&req.volume_id)?;
        let path = PathBuf::from(&req.volume_path);
        blocking(move || {
            let meta = std::fs::metadata(&path).map_err(|e| Status::not_found(format!("volume_path {}: {e}", path.display())))?;
            if meta.file_type().is_block_device() {
                let total = mounts::device_bytes(&path).map_err(cmd)?;
                let usage = vec![csi::VolumeUsage { available: 0, total, used: 0, unit: Unit::Bytes as i32 }];
                return Ok(Response::new(csi::NodeGetVolumeStatsResponse { usage, volume_condition: Some(csi::VolumeCondition { abnormal: false, message: String::new() }) }));
            }
            if mounts::mounted_at(&path).is_none() {
                return Err(Status::not_found(format!("volume_path {} is not a mount of the volume", path.display())));
            }
            match nix::sys::statvfs::statvfs(&path) {
                Ok(s) => {
                    let f = s.fragment_size() as i64;
                    let usage = vec![
                        csi::VolumeUsage { available: s.blocks_available() as i64 * f, total: s.blocks() as i64 * f, used: (s.blocks() - s.blocks_free()) as i64 * f, unit: Unit::Bytes as i32 },
                        csi::VolumeUsage { available: s.files_available() as i64, total: s.files() as i64, used: (s.files() - s.files_free()) as i64, unit: Unit::Inodes as i32 },
                    ];
                    Ok(Response::new(csi::NodeGetVolumeStatsResponse { usage, volume_condition: Some(csi::VolumeCondition { abnormal: false, message: String::new() }) }))
                }
                Err(e) => Ok(Response::new(csi::NodeGetVolumeStatsResponse {
                    usage: Vec::new(),
                    volume_condition: Some(csi::VolumeCondition { abnormal: true, message: format!("statfs {}: {e}", path.display()) }),
                })),
            }
        })
        .await
    }

    async fn node_expand_volume(&self, request: Request<csi::NodeExpandVolumeRequest>) -> Result<Response<csi::NodeExpandVolumeResponse>, Status> {
        let req = request.into_inner();
        required(&req.volume_id, "volume_id")?;
        required(&req.volume_path, "volume_path")?;
        let id = parse_id(&req.volume_id)?;
        let lock = self.0.lock("volume", &req.volume_id)?;
        blocking(move || {
            let _lock = lock;
            let path = PathBuf::from(&req.volume_path);
            let meta = std::fs::metadata(&path).map_err(|e| Status::not_found(format!("volume_path {}: {e}", path.display())))?;
            let VolumeId::Disk { .. } = id else {
                return Ok(Response::new(csi::NodeExpandVolumeResponse { capacity_bytes: req.capacity_range.map(|r| r.required_bytes).unwrap_or(0) }));
            };
            if meta.file_type().is_block_device() {
                return Ok(Response::new(csi::NodeExpandVolumeResponse { capacity_bytes: mounts::device_bytes(&path).map_err(cmd)? }));
            }
            let m = mounts::mounted_at(&path).ok_or_else(|| Status::not_found(format!("volume_path {} is not mounted", path.display())))?;
            let device = PathBuf::from(&m.source);
            mounts::resize(&device, &path, &m.fs_type).map_err(cmd)?;
            Ok(Response::new(csi::NodeExpandVolumeResponse { capacity_bytes: mounts::device_bytes(&device).map_err(cmd)? }))
        })
        .await
    }

    async fn node_get_capabilities(&self, _: Request<csi::NodeGetCapabilitiesRequest>) -> Result<Response<csi::NodeGetCapabilitiesResponse>, Status> {
        let cap = |t: rpc::Type| csi::NodeServiceCapability { r#type: Some(CapType::Rpc(Rpc { r#type: t as i32 })) };
        let capabilities = vec![cap(rpc::Type::StageUnstageVolume), cap(rpc::Type::GetVolumeStats), cap(rpc::Type::ExpandVolume), cap(rpc::Type::VolumeCondition)];
        Ok(Response::new(csi::NodeGetCapabilitiesResponse { capabilities }))
    }

    async fn node_get_info(&self, _: Request<csi::NodeGetInfoRequest>) -> Result<Response<csi::NodeGetInfoResponse>, Status> {
        let s = self.0.local_agent().disk_slots(agent::DiskSlotsRequest {}).await.map_err(|e| Status::unavailable(format!("the node's agent does not answer: {}", e.message())))?.into_inner();
        Ok(Response::new(csi::NodeGetInfoResponse {
            node_id: s.instance_id,
            // The agent never reports 0 (which a CO would read as "no limit").
            max_volumes_per_node: i64::from(s.limit.max(1)),
            accessible_topology: Some(csi::Topology { segments: HashMap::from([(ZONE_KEY.to_string(), s.zone_id)]) }),
        }))
    }
}

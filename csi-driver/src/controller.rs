//! The Controller service: disks, NAS sub-directories and OSS prefixes are created and deleted
//! through the cloud; disks are attached through the agent of the node they are published to.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_cloud::api::{CreateDiskRequest, CreateSnapshotRequest, DiskFilter, SnapshotFilter};
use berth_cloud::error::code;
use berth_cloud::model::{DataDiskStock, Disk, DiskStatus, Snapshot, SnapshotStatus};
use berth_cloud::{Cloud as _, CloudError};
use berth_proto::agent::v1 as agent;
use berth_proto::csi::v1 as csi;
use csi::controller_service_capability::{Rpc, Type as CapType, rpc};
use csi::volume_capability::AccessType;
use csi::volume_content_source::{SnapshotSource, Type as Source, VolumeSource};
use tonic::{Request, Response, Status};

use crate::driver::Driver;
use crate::mounts;
use crate::volume::{GIB, Kind, VolumeId, VolumeSpec, ZONE_KEY, client_token, dir_name, disk_size_gib, disk_size_limits, is_snapshot_id, snapshot_name, unsupported};

pub struct ControllerService(pub Arc<Driver>);

/// A cloud error as the gRPC code a CO acts on.
pub fn cloud_status(e: CloudError) -> Status {
    let text = e.to_string();
    match e.code() {
        Some(code::INVALID_DISK_ID | code::INVALID_FILE_SYSTEM_ID | code::INVALID_INSTANCE_ID | code::INVALID_SNAPSHOT_ID) => Status::not_found(text),
        Some(code::SNAPSHOT_NOT_READY) => Status::unavailable(text),
        Some(code::SNAPSHOT_QUOTA) => Status::resource_exhausted(text),
        Some(code::INVALID_DISK_SIZE | code::DISK_SIZE_SHRINK) => Status::out_of_range(text),
        Some(code::INCORRECT_DISK_STATUS | code::INCORRECT_INSTANCE_STATUS | code::ZONE_MISMATCH) => Status::failed_precondition(text),
        Some(code::DISK_LIMIT) => Status::resource_exhausted(text),
        // Out of stock in the zone: the CO may choose another zone or wait.
        Some(code::NO_STOCK) => Status::resource_exhausted(text),
        Some(_) if e.api().is_some_and(|a| (400..500).contains(&a.http_status) && !a.is_retryable()) => Status::invalid_argument(text),
        _ => Status::unavailable(text),
    }
}

/// The key of the publish context that tells the node a volume was published read-only.
pub const READONLY_KEY: &str = "readonly";

fn readonly_context(readonly: bool) -> HashMap<String, String> {
    if readonly { HashMap::from([(READONLY_KEY.to_string(), "true".to_string())]) } else { HashMap::new() }
}

/// The Description of a disk cloned from `volume_id`: a repeated clone request is checked against it.
fn clone_description(volume_id: &str) -> String {
    format!("CSI clone of volume {volume_id}")
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
    if let Some(source) = &req.volume_content_source {
        if spec.kind() != Kind::Disk {
            return Err(Status::invalid_argument(format!("volume_content_source: {} volumes are made empty; only disks are restored from a snapshot or cloned", spec.kind().as_str())));
        }
        match &source.r#type {
            Some(Source::Snapshot(s)) => required(&s.snapshot_id, "volume_content_source.snapshot.snapshot_id")?,
            Some(Source::Volume(v)) => required(&v.volume_id, "volume_content_source.volume.volume_id")?,
            None => return Err(Status::invalid_argument("volume_content_source names neither a snapshot nor a volume")),
        }
    }
    Ok(spec)
}

/// CreateSnapshot's checks: the name, the source volume (a disk of ours) and the parameters.
pub fn check_create_snapshot(req: &csi::CreateSnapshotRequest) -> Result<String, Status> {
    required(&req.name, "name")?;
    required(&req.source_volume_id, "source_volume_id")?;
    if let Some(k) = req.parameters.keys().find(|k| !k.starts_with("csi.storage.k8s.io/")) {
        return Err(Status::invalid_argument(format!("snapshot parameter {k:?} is unknown; snapshots take no parameters")));
    }
    match VolumeId::parse(&req.source_volume_id) {
        Ok(VolumeId::Disk { disk_id }) => Ok(disk_id),
        Ok(other) => Err(Status::invalid_argument(format!("source_volume_id {other} is a {} volume; only cloud disks have snapshots", other.kind().as_str()))),
        Err(e) => Err(Status::not_found(e.to_string())),
    }
}

/// One page of `items` for a CSI list call: `starting_token` is the index to start at (a token
/// this driver gave), `max_entries` 0 means all.
pub fn csi_page<T: Clone>(items: &[T], max_entries: i32, starting_token: &str) -> Result<(Vec<T>, String), Status> {
    if max_entries < 0 {
        return Err(Status::invalid_argument(format!("max_entries {max_entries} is negative; give 0 (all) or more")));
    }
    let start = match starting_token {
        "" => 0,
        t => t.parse::<usize>().ok().filter(|i| *i <= items.len()).ok_or_else(|| Status::aborted(format!("starting_token {t:?} is not one this driver gave (or the list shrank); list again from the start")))?,
    };
    let end = if max_entries == 0 { items.len() } else { (start + max_entries as usize).min(items.len()) };
    let next = if end < items.len() { end.to_string() } else { String::new() };
    Ok((items[start..end].to_vec(), next))
}

fn snapshot_to_csi(s: &Snapshot) -> csi::Snapshot {
    let seconds = berth_cloud::signing::parse_timestamp(&s.creation_time).unwrap_or(0) as i64;
    csi::Snapshot {
        size_bytes: s.source_disk_size_gib as i64 * GIB,
        snapshot_id: s.id.clone(),
        source_volume_id: s.source_disk_id.clone(),
        creation_time: Some(prost_types::Timestamp { seconds, nanos: 0 }),
        ready_to_use: s.status == SnapshotStatus::Accomplished,
        group_snapshot_id: String::new(),
    }
}

/// Where a new disk's data comes from: a snapshot (the user's, or one taken of the volume to clone).
struct DiskSource {
    snapshot_id: String,
    /// The source's size: the new disk is at least this big.
    min_gib: i64,
    /// A clone stays in its source's zone.
    zone: Option<String>,
    /// The snapshot was taken for a clone and goes once the disk exists.
    temporary: bool,
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

    /// The snapshot of `source_id`, ready to create a disk from, and what it asks of that disk.
    async fn snapshot_source(&self, snapshot_id: &str) -> Result<DiskSource, Status> {
        let cloud = self.0.cloud()?;
        let not_found = || Status::not_found(format!("snapshot {snapshot_id} does not exist"));
        if !is_snapshot_id(snapshot_id) {
            return Err(not_found());
        }
        let found = cloud.describe_snapshots(&SnapshotFilter { ids: vec![snapshot_id.into()], ..Default::default() }).await.map_err(cloud_status)?;
        let snap = found.into_iter().find(|s| s.id == snapshot_id).ok_or_else(not_found)?;
        if snap.status != SnapshotStatus::Accomplished {
            return Err(Status::unavailable(format!("snapshot {snapshot_id} is {} ({}%); retry once it is ready to use", snap.status.as_str(), snap.progress_percent)));
        }
        Ok(DiskSource { snapshot_id: snap.id, min_gib: snap.source_disk_size_gib as i64, zone: None, temporary: false })
    }

    /// A snapshot of the volume to clone, taken for the clone (or found again on a retry) and ready.
    async fn clone_source(&self, req: &csi::CreateVolumeRequest, volume_id: &str) -> Result<DiskSource, Status> {
        let cloud = self.0.cloud()?;
        let disk_id = match VolumeId::parse(volume_id) {
            Ok(VolumeId::Disk { disk_id }) => disk_id,
            Ok(other) => return Err(Status::invalid_argument(format!("volume_content_source.volume {other} is a {} volume; only disks are cloned", other.kind().as_str()))),
            Err(e) => return Err(Status::not_found(e.to_string())),
        };
        let disk = self.find_disk(&disk_id).await?.ok_or_else(|| Status::not_found(format!("source volume {disk_id} does not exist")))?;
        if let Some(t) = &req.accessibility_requirements {
            let zones: Vec<&String> = t.requisite.iter().filter_map(|t| t.segments.get(ZONE_KEY)).collect();
            if !t.requisite.is_empty() && !zones.contains(&&disk.zone_id) {
                return Err(Status::invalid_argument(format!(
                    "the source volume {disk_id} is in {} but the requisite topology allows only {zones:?}; a clone stays in its source's zone",
                    disk.zone_id
                )));
            }
        }
        let name = snapshot_name(&format!("clone:{}", req.name));
        let existing = cloud.describe_snapshots(&SnapshotFilter { name: Some(name.clone()), disk_id: Some(disk_id.clone()), ..Default::default() }).await.map_err(cloud_status)?;
        let id = match existing.into_iter().next() {
            Some(s) => s.id,
            None => cloud
                .create_snapshot(&CreateSnapshotRequest { disk_id: disk_id.clone(), name, description: format!("taken to clone {disk_id} as {:?}", req.name), client_token: None })
                .await
                .map_err(cloud_status)?,
        };
        match berth_cloud::wait::snapshot_settled(cloud, &id, std::time::Duration::from_secs(120)).await.map_err(cloud_status)? {
            Some(s) if s.status == SnapshotStatus::Accomplished => {}
            other => return Err(Status::unavailable(format!("the snapshot {id} taken to clone {disk_id} is {}; retry", other.map_or("gone", |s| s.status.as_str())))),
        }
        Ok(DiskSource { snapshot_id: id, min_gib: disk.size_gib as i64, zone: Some(disk.zone_id), temporary: true })
    }

    async fn create_disk(&self, req: &csi::CreateVolumeRequest, category: &str, level: Option<&str>, zone_param: Option<&String>) -> Result<csi::Volume, Status> {
        let cloud = self.0.cloud()?;
        let content = req.volume_content_source.clone();
        let (min, max) = disk_size_limits(category, level);
        let size = disk_size_gib(req.capacity_range.as_ref(), min, max).map_err(|e| Status::out_of_range(e.to_string()))?;
        let wanted_snapshot = match content.as_ref().and_then(|c| c.r#type.as_ref()) {
            Some(Source::Snapshot(SnapshotSource { snapshot_id })) => Some(snapshot_id.as_str()),
            _ => None,
        };
        let wanted_clone = match content.as_ref().and_then(|c| c.r#type.as_ref()) {
            Some(Source::Volume(VolumeSource { volume_id })) => Some(volume_id.as_str()),
            _ => None,
        };
        // The source is held for the while: a snapshot is not deleted under a restore (ABORTED).
        let _source_lock = match content.as_ref().and_then(|c| c.r#type.as_ref()) {
            Some(Source::Snapshot(SnapshotSource { snapshot_id })) => Some(self.0.lock("snapshot", snapshot_id)?),
            Some(Source::Volume(VolumeSource { volume_id })) => Some(self.0.lock("volume", volume_id)?),
            None => None,
        };
        let same = |d: &Disk| -> Result<csi::Volume, Status> {
            // A disk from a source may have been raised to the source's size, within the limit.
            let limit = req.capacity_range.as_ref().map_or(0, |r| r.limit_bytes);
            let fits = if content.is_some() { d.size_gib as i64 >= size && (limit == 0 || d.size_gib as i64 * GIB <= limit) } else { d.size_gib as i64 == size };
            if !fits || d.category != category {
                return Err(Status::already_exists(format!(
                    "volume {:?} exists as {} ({} GiB {}), not {size} GiB {category}",
                    req.name, d.id, d.size_gib, d.category
                )));
            }
            if let Some(sid) = wanted_snapshot
                && d.source_snapshot_id.as_deref() != Some(sid)
            {
                return Err(Status::already_exists(format!("volume {:?} exists as {}, not made from snapshot {sid}", req.name, d.id)));
            }
            if let Some(vid) = wanted_clone
                && d.description != clone_description(vid)
            {
                return Err(Status::already_exists(format!("volume {:?} exists as {}, not a clone of volume {vid}", req.name, d.id)));
            }
            Ok(csi::Volume { capacity_bytes: d.size_gib as i64 * GIB, volume_id: d.id.clone(), volume_context: context(Kind::Disk), content_source: content.clone(), accessible_topology: vec![topology(&d.zone_id)] })
        };
        // A disk of this name made earlier (a retried call) is answered as it is.
        let all = cloud.describe_disks(&DiskFilter::default()).await.map_err(cloud_status)?;
        if let Some(d) = all.iter().find(|d| d.name == req.name) {
            return same(d);
        }
        let source = match content.as_ref().and_then(|c| c.r#type.as_ref()) {
            Some(Source::Snapshot(SnapshotSource { snapshot_id })) => Some(self.snapshot_source(snapshot_id).await?),
            Some(Source::Volume(VolumeSource { volume_id })) => Some(self.clone_source(req, volume_id).await?),
            None => None,
        };
        let zone = match source.as_ref().and_then(|s| s.zone.clone()) {
            Some(z) => z,
            None => self.zone_for(req, zone_param).await?,
        };
        let size = match &source {
            Some(s) if s.min_gib > size => {
                // At least the source's size, within the limit the CO gave.
                let range = csi::CapacityRange { required_bytes: s.min_gib * GIB, limit_bytes: req.capacity_range.as_ref().map_or(0, |r| r.limit_bytes) };
                disk_size_gib(Some(&range), min, max).map_err(|e| Status::out_of_range(format!("the source holds {} GiB: {e}", s.min_gib)))?
            }
            _ => size,
        };
        let same = |d: &Disk| -> Result<csi::Volume, Status> {
            Ok(csi::Volume { capacity_bytes: d.size_gib as i64 * GIB, volume_id: d.id.clone(), volume_context: context(Kind::Disk), content_source: content.clone(), accessible_topology: vec![topology(&d.zone_id)] })
        };
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
                snapshot_id: source.as_ref().map(|s| s.snapshot_id.clone()),
                // A clone says what it is a clone of: its snapshot is deleted once it is made.
                description: wanted_clone.map(clone_description).unwrap_or_default(),
                client_token: Some(client_token(&req.name, &generation)),
            };
            let id = cloud.create_disk(&create).await.map_err(cloud_status)?;
            match self.find_disk(&id).await? {
                Some(d) if d.name == req.name => {
                    if d.status == DiskStatus::Creating {
                        berth_cloud::wait::disk_status(cloud, &id, DiskStatus::Available, std::time::Duration::from_secs(60)).await.map_err(cloud_status)?;
                    }
                    if let Some(s) = source.as_ref().filter(|s| s.temporary) {
                        // The clone's own data is in the disk now; the snapshot taken for it goes.
                        if let Err(e) = cloud.delete_snapshot(&s.snapshot_id, true).await {
                            tracing::warn!(snapshot = %s.snapshot_id, error = %e, "the snapshot taken for a clone could not be deleted");
                        }
                    }
                    tracing::info!(name = %req.name, disk = %id, size_gib = size, category, snapshot = ?source.as_ref().map(|s| &s.snapshot_id), "disk created");
                    return same(&d);
                }
                _ => generation = id,
            }
        }
        Err(Status::internal(format!("could not create a disk for {:?}: every client token names a deleted disk", req.name)))
    }

    /// NOT_FOUND for a NAS volume whose directory is not in the local export (where that can be
    /// seen without a mount).
    fn dir_volume_exists(&self, id: &VolumeId) -> Result<(), Status> {
        if let VolumeId::Nas { fs_id, path, .. } = id
            && !self.0.cfg.nas.local_export_root.as_os_str().is_empty()
            && !self.0.cfg.nas.local_export_root.join(fs_id).join(path.trim_start_matches('/')).is_dir()
        {
            return Err(Status::not_found(format!("NAS volume {id} does not exist")));
        }
        Ok(())
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

    /// A NAS or OSS volume's capacity (its record) and condition (a NAS volume whose directory is
    /// gone is abnormal; an OSS prefix exists through its objects, so only the record tells);
    /// NOT_FOUND without a record.
    async fn dir_volume_status(&self, id: &VolumeId) -> Result<(i64, csi::VolumeCondition), Status> {
        let (record_root, record) = capacity_record(id).ok_or_else(|| Status::not_found(format!("{id} names no directory volume")))?;
        let this = ControllerService(self.0.clone());
        let task_id = id.clone();
        tokio::task::spawn_blocking(move || {
            let recorded = this.with_root(&record_root, |root| match read_capacity(&root.join(&record)) {
                Ok(c) => Ok(Some(c)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            })?;
            let capacity = recorded.ok_or_else(|| Status::not_found(format!("volume {task_id} does not exist: it has no record")))?;
            let condition = match &task_id {
                VolumeId::Nas { path, .. } => {
                    let rel = PathBuf::from(path.trim_start_matches('/'));
                    if this.with_root(&task_id, |root| Ok(root.join(&rel).is_dir()))? {
                        csi::VolumeCondition { abnormal: false, message: format!("the directory {path} of NAS volume {task_id} is there") }
                    } else {
                        csi::VolumeCondition { abnormal: true, message: format!("the directory {path} of NAS volume {task_id} is gone; its record says {capacity} bytes") }
                    }
                }
                _ => csi::VolumeCondition { abnormal: false, message: format!("OSS volume {task_id} is recorded") },
            };
            Ok((capacity, condition))
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
    }

    /// Every NAS volume of every file system the cloud lists: their records (see [`nas_volumes_under`]).
    async fn nas_volumes(&self) -> Result<Vec<(VolumeId, i64)>, Status> {
        let local = !self.0.cfg.nas.local_export_root.as_os_str().is_empty();
        let mut out = Vec::new();
        for fs in self.0.cloud()?.describe_nas_file_systems(None).await.map_err(cloud_status)? {
            let root_id = VolumeId::Nas { fs_id: fs.id.clone(), server: if local { String::new() } else { fs.mount_target.clone() }, path: "/".into() };
            let this = ControllerService(self.0.clone());
            let task_id = root_id.clone();
            let found = match tokio::task::spawn_blocking(move || this.with_root(&task_id, nas_volumes_under)).await.map_err(|e| Status::internal(e.to_string()))? {
                Ok(found) => found,
                // A file system whose export is not there (yet) holds no volume of ours.
                Err(e) if e.code() == tonic::Code::NotFound => continue,
                Err(e) => return Err(e),
            };
            let VolumeId::Nas { fs_id, server, .. } = root_id else { unreachable!("made above") };
            out.extend(found.into_iter().map(|(path, capacity)| (VolumeId::Nas { fs_id: fs_id.clone(), server: server.clone(), path }, capacity)));
        }
        Ok(out)
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
        let capacity = req.capacity_range.as_ref().map(|r| r.required_bytes.max(0)).unwrap_or(0);
        let (record_root, record) = capacity_record(&id).expect("a directory volume");
        let task_id = id.clone();
        let this = ControllerService(self.0.clone());
        // An OSS prefix needs nothing made: it comes to exist with its first object.
        let needs_dir = matches!(id, VolumeId::Nas { .. });
        let recorded = tokio::task::spawn_blocking(move || {
            if needs_dir {
                this.with_root(&task_id, |root| {
                    use std::os::unix::fs::PermissionsExt as _;
                    let dir = root.join(&path);
                    std::fs::create_dir_all(&dir)?;
                    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))
                })?;
            }
            this.with_root(&record_root, |root| read_or_write_capacity(&root.join(&record), capacity))
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))??;
        if recorded != capacity {
            return Err(Status::already_exists(format!("volume {:?} exists as {id} with {recorded} bytes, not {capacity}", req.name)));
        }
        tracing::info!(name = %req.name, volume = %id, "directory volume created");
        Ok(dir_volume(&id, capacity))
    }
}

/// Where a NAS or OSS volume's capacity is recorded (directories have no size of their own): a
/// file named after the volume in a `.berth-volumes` directory beside it. The root to mount for it
/// and the file's path under that root.
fn capacity_record(id: &VolumeId) -> Option<(VolumeId, PathBuf)> {
    let (parent, leaf) = match id {
        VolumeId::Nas { path, .. } | VolumeId::Oss { path, .. } => path.rsplit_once('/')?,
        VolumeId::Disk { .. } => return None,
    };
    Some(match id {
        VolumeId::Nas { .. } => (id.clone(), PathBuf::from(parent.trim_start_matches('/')).join(RECORDS).join(leaf)),
        VolumeId::Oss { bucket, .. } => (VolumeId::Oss { bucket: bucket.clone(), path: format!("{parent}/{RECORDS}") }, PathBuf::from(leaf)),
        VolumeId::Disk { .. } => return None,
    })
}

const RECORDS: &str = ".berth-volumes";

/// The capacity recorded at `file`.
fn read_capacity(file: &Path) -> std::io::Result<i64> {
    let text = std::fs::read_to_string(file)?;
    text.trim().parse::<i64>().map_err(|e| std::io::Error::other(format!("{}: {e}", file.display())))
}

/// The capacity recorded at `file`, recording `capacity` there when there is none yet.
fn read_or_write_capacity(file: &Path, capacity: i64) -> std::io::Result<i64> {
    match read_capacity(file) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = file.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(file, capacity.to_string())?;
            Ok(capacity)
        }
        other => other,
    }
}

/// The NAS volumes recorded under `root` (a file system's root): each record of a `.berth-volumes`
/// directory, as the volume's path in the file system and its capacity. The volumes' own
/// directories (what the records name) are not entered, only the tree of their parents.
pub fn nas_volumes_under(root: &Path) -> std::io::Result<Vec<(String, i64)>> {
    let mut found = Vec::new();
    let mut dirs = vec![PathBuf::new()];
    while let Some(rel) = dirs.pop() {
        let dir = root.join(&rel);
        let mut volumes = std::collections::HashSet::new();
        match std::fs::read_dir(dir.join(RECORDS)) {
            Ok(records) => {
                for r in records {
                    let r = r?;
                    let leaf = r.file_name().to_string_lossy().into_owned();
                    found.push((format!("/{}", rel.join(&leaf).display()), read_capacity(&r.path())?));
                    volumes.insert(leaf);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        for e in std::fs::read_dir(&dir)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name != RECORDS && !volumes.contains(&name) && e.file_type()?.is_dir() {
                dirs.push(rel.join(name));
            }
        }
    }
    found.sort();
    Ok(found)
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
                let result = tokio::task::spawn_blocking(move || {
                    this.with_root(&task_id, |root| remove_tree(&root.join(&rel)))?;
                    let (record_root, record) = capacity_record(&task_id).expect("a directory volume");
                    this.with_root(&record_root, |root| {
                        let file = root.join(&record);
                        std::fs::remove_file(&file).or_else(|e| if e.kind() == std::io::ErrorKind::NotFound { Ok(()) } else { Err(e) })?;
                        // The records' directory goes with its last record (a mount point stays).
                        let _ = file.parent().map(std::fs::remove_dir);
                        Ok(())
                    })
                })
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

    // ControllerPublish with `readonly` (PUBLISH_READONLY): a cloud disk is attached the same way
    // (the service has no read-only attach), so the publish context tells the node, which then
    // mounts every target of the volume read-only.
    async fn controller_publish_volume(&self, request: Request<csi::ControllerPublishVolumeRequest>) -> Result<Response<csi::ControllerPublishVolumeResponse>, Status> {
        let req = request.into_inner();
        let id = check_publish_volume(&req)?;
        let VolumeId::Disk { disk_id } = &id else {
            // NAS and OSS need no attach (the node mounts them), but the node and the volume must exist.
            self.0.agent_of(&req.node_id).await?;
            self.dir_volume_exists(&id)?;
            return Ok(Response::new(csi::ControllerPublishVolumeResponse { publish_context: readonly_context(req.readonly) }));
        };
        if self.find_disk(disk_id).await?.is_none() {
            return Err(Status::not_found(format!("disk {disk_id} does not exist")));
        }
        let mut agent = self.0.agent_of(&req.node_id).await?;
        let _lock = self.0.lock("volume", &req.volume_id)?;
        let a = agent.attach_disk(agent::AttachDiskRequest { disk_id: disk_id.clone() }).await?.into_inner();
        let mut publish_context = HashMap::from([("serial".to_string(), a.serial), ("device".to_string(), a.device_path)]);
        publish_context.extend(readonly_context(req.readonly));
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
        self.dir_volume_exists(&id)?;
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
        let capabilities = vec![
            cap(rpc::Type::CreateDeleteVolume),
            cap(rpc::Type::PublishUnpublishVolume),
            cap(rpc::Type::ExpandVolume),
            cap(rpc::Type::CreateDeleteSnapshot),
            cap(rpc::Type::ListSnapshots),
            cap(rpc::Type::CloneVolume),
            cap(rpc::Type::ListVolumes),
            cap(rpc::Type::ListVolumesPublishedNodes),
            cap(rpc::Type::GetVolume),
            cap(rpc::Type::VolumeCondition),
            cap(rpc::Type::ModifyVolume),
            cap(rpc::Type::PublishReadonly),
            cap(rpc::Type::GetCapacity),
        ];
        Ok(Response::new(csi::ControllerGetCapabilitiesResponse { capabilities }))
    }

    async fn list_volumes(&self, request: Request<csi::ListVolumesRequest>) -> Result<Response<csi::ListVolumesResponse>, Status> {
        let req = request.into_inner();
        use csi::list_volumes_response::{Entry, VolumeStatus};
        // Cloud disks, and the NAS volumes recorded on the cloud's file systems (OSS volumes are
        // not listed: the cloud client lists no buckets). One order, by volume ID, for every page.
        let disks: Vec<Disk> = self.0.cloud()?.describe_disks(&DiskFilter::default()).await.map_err(cloud_status)?.into_iter().filter(|d| !d.system).collect();
        let mut all: Vec<Entry> = disks
            .iter()
            .map(|d| {
                let (published_node_ids, volume_condition) = disk_status(d);
                Entry { volume: Some(disk_volume(d)), status: Some(VolumeStatus { published_node_ids, volume_condition: Some(volume_condition) }) }
            })
            .collect();
        for (id, capacity) in self.nas_volumes().await? {
            // Listed from its record inside its parent's tree, so its directory is not looked at here.
            let condition = csi::VolumeCondition { abnormal: false, message: format!("NAS volume {id} is recorded") };
            all.push(Entry { volume: Some(dir_volume(&id, capacity)), status: Some(VolumeStatus { published_node_ids: Vec::new(), volume_condition: Some(condition) }) });
        }
        all.sort_by(|a, b| a.volume.as_ref().map(|v| &v.volume_id).cmp(&b.volume.as_ref().map(|v| &v.volume_id)));
        let (entries, next_token) = csi_page(&all, req.max_entries, &req.starting_token)?;
        Ok(Response::new(csi::ListVolumesResponse { entries, next_token }))
    }

    async fn get_capacity(&self, request: Request<csi::GetCapacityRequest>) -> Result<Response<csi::GetCapacityResponse>, Status> {
        let req = request.into_inner();
        let spec = VolumeSpec::parse(&req.parameters).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let VolumeSpec::Disk { category, performance_level, zone } = spec else {
            return Err(Status::invalid_argument(format!(
                "GetCapacity reports the cloud's stock of disks; a {} volume (parameter type={}) draws on no per-zone stock: ask with type=disk or without type",
                spec.kind().as_str(),
                spec.kind().as_str()
            )));
        };
        if !req.volume_capabilities.is_empty() {
            check_caps(Kind::Disk, &req.volume_capabilities)?;
        }
        let zone = match &req.accessible_topology {
            Some(t) if !t.segments.is_empty() => Some(
                t.segments.get(ZONE_KEY).cloned().ok_or_else(|| Status::invalid_argument(format!("accessible_topology {:?} has no {ZONE_KEY} segment, the only one this driver reports", t.segments)))?,
            ),
            _ => zone,
        };
        let stock = self.0.cloud()?.describe_data_disk_stock(zone.as_deref(), Some(&category)).await.map_err(|e| match e.code() {
            Some(code::INVALID_ZONE_ID) => Status::invalid_argument(format!("zone {:?} is not a zone of this cloud: {e}", zone.as_deref().unwrap_or_default())),
            _ => cloud_status(e),
        })?;
        let (min, max) = disk_size_limits(&category, performance_level.as_deref());
        let largest = largest_disks_gib(&stock, &category, min, max);
        Ok(Response::new(csi::GetCapacityResponse {
            available_capacity: largest.iter().sum::<i64>() * GIB,
            maximum_volume_size: Some(largest.iter().copied().max().unwrap_or(0) * GIB),
            minimum_volume_size: Some(min * GIB),
        }))
    }

    async fn create_snapshot(&self, request: Request<csi::CreateSnapshotRequest>) -> Result<Response<csi::CreateSnapshotResponse>, Status> {
        let req = request.into_inner();
        let disk_id = check_create_snapshot(&req)?;
        let _lock = self.0.lock("snapshot-name", &req.name)?;
        let cloud = self.0.cloud()?;
        let name = snapshot_name(&req.name);
        let answer = |s: &Snapshot| Response::new(csi::CreateSnapshotResponse { snapshot: Some(snapshot_to_csi(s)) });
        let by_name = SnapshotFilter { name: Some(name.clone()), ..Default::default() };
        if let Some(s) = cloud.describe_snapshots(&by_name).await.map_err(cloud_status)?.first() {
            if s.source_disk_id != disk_id {
                return Err(Status::already_exists(format!("snapshot {:?} exists as {} of volume {}, not of {disk_id}", req.name, s.id, s.source_disk_id)));
            }
            return Ok(answer(s));
        }
        if self.find_disk(&disk_id).await?.is_none() {
            return Err(Status::not_found(format!("source volume {disk_id} does not exist")));
        }
        // As for disks: the token makes a retry return the same snapshot; once that snapshot is
        // deleted, the next token follows from its ID so the name can be used again.
        let mut generation = String::new();
        for _ in 0..16 {
            let create = CreateSnapshotRequest {
                disk_id: disk_id.clone(),
                name: name.clone(),
                description: format!("CSI snapshot {:?}", req.name),
                client_token: Some(client_token(&format!("snapshot\0{}", req.name), &generation)),
            };
            let id = cloud.create_snapshot(&create).await.map_err(cloud_status)?;
            let found = cloud.describe_snapshots(&SnapshotFilter { ids: vec![id.clone()], ..Default::default() }).await.map_err(cloud_status)?;
            match found.into_iter().find(|s| s.id == id) {
                Some(s) => {
                    tracing::info!(name = %req.name, snapshot = %id, disk = %disk_id, "snapshot created");
                    return Ok(answer(&s));
                }
                None => generation = id,
            }
        }
        Err(Status::internal(format!("could not create a snapshot for {:?}: every client token names a deleted snapshot", req.name)))
    }

    async fn delete_snapshot(&self, request: Request<csi::DeleteSnapshotRequest>) -> Result<Response<csi::DeleteSnapshotResponse>, Status> {
        let req = request.into_inner();
        required(&req.snapshot_id, "snapshot_id")?;
        if !is_snapshot_id(&req.snapshot_id) {
            return Ok(Response::new(csi::DeleteSnapshotResponse {}));
        }
        // A restore from this snapshot in flight holds it: this call is ABORTED and retried.
        let _lock = self.0.lock("snapshot", &req.snapshot_id)?;
        // Force: disks made from the snapshot hold their own data and keep it.
        match self.0.cloud()?.delete_snapshot(&req.snapshot_id, true).await {
            Ok(()) => tracing::info!(snapshot = %req.snapshot_id, "snapshot deleted"),
            Err(e) if e.is_code(code::INVALID_SNAPSHOT_ID) => {}
            Err(e) => return Err(cloud_status(e)),
        }
        Ok(Response::new(csi::DeleteSnapshotResponse {}))
    }

    async fn list_snapshots(&self, request: Request<csi::ListSnapshotsRequest>) -> Result<Response<csi::ListSnapshotsResponse>, Status> {
        let req = request.into_inner();
        let mut filter = SnapshotFilter::default();
        let none = || Ok(Response::new(csi::ListSnapshotsResponse::default()));
        if !req.snapshot_id.is_empty() {
            if !is_snapshot_id(&req.snapshot_id) {
                return none();
            }
            filter.ids = vec![req.snapshot_id.clone()];
        }
        if !req.source_volume_id.is_empty() {
            match VolumeId::parse(&req.source_volume_id) {
                Ok(VolumeId::Disk { disk_id }) => filter.disk_id = Some(disk_id),
                _ => return none(),
            }
        }
        let mut all = self.0.cloud()?.describe_snapshots(&filter).await.map_err(cloud_status)?;
        all.sort_by(|a, b| a.id.cmp(&b.id));
        let (page, next_token) = csi_page(&all, req.max_entries, &req.starting_token)?;
        let entries = page.iter().map(|s| csi::list_snapshots_response::Entry { snapshot: Some(snapshot_to_csi(s)) }).collect();
        Ok(Response::new(csi::ListSnapshotsResponse { entries, next_token }))
    }

    async fn controller_get_volume(&self, request: Request<csi::ControllerGetVolumeRequest>) -> Result<Response<csi::ControllerGetVolumeResponse>, Status> {
        let req = request.into_inner();
        required(&req.volume_id, "volume_id")?;
        let id = VolumeId::parse(&req.volume_id).map_err(|e| Status::not_found(e.to_string()))?;
        let VolumeId::Disk { disk_id } = &id else {
            let (capacity, condition) = self.dir_volume_status(&id).await?;
            let status = csi::controller_get_volume_response::VolumeStatus { published_node_ids: Vec::new(), volume_condition: Some(condition) };
            return Ok(Response::new(csi::ControllerGetVolumeResponse { volume: Some(dir_volume(&id, capacity)), status: Some(status) }));
        };
        let d = self.find_disk(disk_id).await?.ok_or_else(|| Status::not_found(format!("disk {disk_id} does not exist")))?;
        let (published_node_ids, volume_condition) = disk_status(&d);
        let status = csi::controller_get_volume_response::VolumeStatus { published_node_ids, volume_condition: Some(volume_condition) };
        Ok(Response::new(csi::ControllerGetVolumeResponse { volume: Some(disk_volume(&d)), status: Some(status) }))
    }

    async fn controller_modify_volume(&self, request: Request<csi::ControllerModifyVolumeRequest>) -> Result<Response<csi::ControllerModifyVolumeResponse>, Status> {
        let req = request.into_inner();
        required(&req.volume_id, "volume_id")?;
        let level = check_mutable_parameters(&req.mutable_parameters)?;
        let id = VolumeId::parse(&req.volume_id).map_err(|e| Status::not_found(e.to_string()))?;
        let VolumeId::Disk { disk_id } = &id else {
            return Err(Status::invalid_argument(format!("{id} is a {} volume; only a disk's performance level can be modified", id.kind().as_str())));
        };
        let _lock = self.0.lock("volume", &req.volume_id)?;
        let d = self.find_disk(disk_id).await?.ok_or_else(|| Status::not_found(format!("disk {disk_id} does not exist")))?;
        let Some(level) = level else { return Ok(Response::new(csi::ControllerModifyVolumeResponse {})) };
        if d.performance_level == level {
            return Ok(Response::new(csi::ControllerModifyVolumeResponse {}));
        }
        if d.category != "cloud_essd" {
            return Err(Status::invalid_argument(format!("disk {disk_id} is {}; only cloud_essd disks have performance levels", d.category)));
        }
        let (min, _) = disk_size_limits(&d.category, Some(level.as_str()));
        if (d.size_gib as i64) < min {
            return Err(Status::out_of_range(format!("disk {disk_id} has {} GiB; {level} needs at least {min} GiB: expand it first", d.size_gib)));
        }
        self.0.cloud()?.modify_disk_performance_level(disk_id, &level).await.map_err(cloud_status)?;
        tracing::info!(disk = %disk_id, from = %d.performance_level, to = %level, "disk performance level modified");
        Ok(Response::new(csi::ControllerModifyVolumeResponse {}))
    }
}

/// ControllerModifyVolume's parameters: `performanceLevel` (PL0..PL3) only.
pub fn check_mutable_parameters(params: &HashMap<String, String>) -> Result<Option<String>, Status> {
    let mut level = None;
    for (k, v) in params {
        match (k.as_str(), v.as_str()) {
            ("performanceLevel", l @ ("PL0" | "PL1" | "PL2" | "PL3")) => level = Some(l.to_string()),
            ("performanceLevel", l) => return Err(Status::invalid_argument(format!("mutable parameter performanceLevel={l:?}: one of PL0, PL1, PL2, PL3"))),
            (k, _) => return Err(Status::invalid_argument(format!("mutable parameter {k:?} is unknown; the one that can change is performanceLevel"))),
        }
    }
    Ok(level)
}

/// The largest disk of `category` each zone of `stock` can create now, in GiB, within the
/// category's (and level's) `min..=max`: 0 where it is sold out or what is left is below `min`.
/// The cloud tells whether a zone has stock and the largest disk it sells, not how much it holds,
/// so the sum of these is the capacity known to be there, never more.
pub fn largest_disks_gib(stock: &[DataDiskStock], category: &str, min: i64, max: i64) -> Vec<i64> {
    stock
        .iter()
        .filter(|s| s.category == category)
        .map(|s| if s.available { (s.max_gib as i64).min(max) } else { 0 })
        .map(|gib| if gib < min { 0 } else { gib })
        .collect()
}

fn disk_volume(d: &Disk) -> csi::Volume {
    csi::Volume { capacity_bytes: d.size_gib as i64 * GIB, volume_id: d.id.clone(), volume_context: context(Kind::Disk), content_source: None, accessible_topology: vec![topology(&d.zone_id)] }
}

/// A NAS or OSS volume as CreateVolume answered it: its recorded capacity, no topology.
fn dir_volume(id: &VolumeId, capacity: i64) -> csi::Volume {
    csi::Volume { capacity_bytes: capacity, volume_id: id.to_string(), volume_context: context(id.kind()), content_source: None, accessible_topology: Vec::new() }
}

/// Where a disk is published and whether the cloud reports it healthy.
fn disk_status(d: &Disk) -> (Vec<String>, csi::VolumeCondition) {
    let nodes = match d.status {
        DiskStatus::InUse | DiskStatus::Attaching | DiskStatus::Detaching => d.instance_id.iter().cloned().collect(),
        _ => Vec::new(),
    };
    let condition = match d.status {
        DiskStatus::Unknown | DiskStatus::ReIniting => csi::VolumeCondition { abnormal: true, message: format!("the cloud reports disk {} as {}", d.id, d.status.as_str()) },
        s => csi::VolumeCondition { abnormal: false, message: format!("disk {} is {}", d.id, s.as_str()) },
    };
    (nodes, condition)
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
        assert_eq!(cloud_status(api(code::NO_STOCK, 403)).code(), tonic::Code::ResourceExhausted);
        assert_eq!(cloud_status(api(code::INVALID_DISK_ID, 404)).code(), tonic::Code::NotFound);
        assert_eq!(cloud_status(api(code::INVALID_DISK_SIZE, 400)).code(), tonic::Code::OutOfRange);
        assert_eq!(cloud_status(api(code::INCORRECT_DISK_STATUS, 403)).code(), tonic::Code::FailedPrecondition);
        assert_eq!(cloud_status(api(code::DISK_LIMIT, 403)).code(), tonic::Code::ResourceExhausted);
        assert_eq!(cloud_status(api(code::INVALID_PARAMETER, 400)).code(), tonic::Code::InvalidArgument);
        assert_eq!(cloud_status(api(code::THROTTLING, 400)).code(), tonic::Code::Unavailable, "retryable: the CO retries");
        assert_eq!(cloud_status(api(code::INTERNAL_ERROR, 500)).code(), tonic::Code::Unavailable);
    }

    #[test]
    fn pages_follow_their_tokens_and_refuse_strangers() {
        let items: Vec<u32> = (0..5).collect();
        assert_eq!(csi_page(&items, 0, "").unwrap(), (items.clone(), String::new()));
        assert_eq!(csi_page(&items, 2, "").unwrap(), (vec![0, 1], "2".into()));
        assert_eq!(csi_page(&items, 2, "4").unwrap(), (vec![4], String::new()));
        assert_eq!(csi_page(&items, 2, "9").unwrap_err().code(), tonic::Code::Aborted);
        assert_eq!(csi_page(&items, 2, "x").unwrap_err().code(), tonic::Code::Aborted);
        assert_eq!(csi_page(&items, -1, "").unwrap_err().code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn capacity_is_the_largest_disk_each_zone_can_make_now() {
        let stock = |zone: &str, category: &str, available: bool, max_gib: u64| DataDiskStock { zone_id: zone.into(), category: category.into(), available, min_gib: 1, max_gib };
        let stock = [stock("a", "cloud_essd", true, 65_536), stock("b", "cloud_essd", true, 300), stock("c", "cloud_essd", false, 0), stock("a", "cloud_ssd", true, 9)];
        // PL1: 20..=65536 GiB; zone b holds 300 GiB of it, zone c none, the ssd entry is not asked.
        assert_eq!(largest_disks_gib(&stock, "cloud_essd", 20, 65_536), vec![65_536, 300, 0]);
        // PL2 needs 461 GiB: what zone b has left holds no such disk.
        assert_eq!(largest_disks_gib(&stock, "cloud_essd", 461, 65_536), vec![65_536, 0, 0]);
        assert_eq!(largest_disks_gib(&stock, "cloud_ssd", 20, 32_768), vec![0]);
    }

    #[test]
    fn only_the_performance_level_is_mutable() {
        let p = |k: &str, v: &str| HashMap::from([(k.to_string(), v.to_string())]);
        assert_eq!(check_mutable_parameters(&p("performanceLevel", "PL1")).unwrap().as_deref(), Some("PL1"));
        assert_eq!(check_mutable_parameters(&HashMap::new()).unwrap(), None);
        assert!(check_mutable_parameters(&p("performanceLevel", "PL7")).is_err());
        assert!(check_mutable_parameters(&p("category", "cloud_ssd")).is_err());
    }

    #[test]
    fn nas_volumes_are_found_by_their_records_and_their_directories_are_not_entered() {
        let root = tempfile::tempdir().unwrap();
        let write = |rel: &str, text: &str| {
            let p = root.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        write(".berth-volumes/pvc-a-1", "1073741824");
        write("pvc-a-1/data/.berth-volumes/not-a-volume", "1");
        write("team/x/.berth-volumes/pvc-b-2", "2147483648");
        std::fs::create_dir_all(root.path().join("team/x/pvc-b-2")).unwrap();
        std::fs::create_dir_all(root.path().join("other/empty")).unwrap();
        let found = nas_volumes_under(root.path()).unwrap();
        assert_eq!(found, vec![("/pvc-a-1".to_string(), 1 << 30), ("/team/x/pvc-b-2".to_string(), 2 << 30)], "inside a volume's directory is its user's data");
        write("bad/.berth-volumes/pvc-c", "lots");
        assert!(nas_volumes_under(root.path()).is_err(), "a record that is not a number is an error, not a volume of size 0");
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

//! A pod's volumes through the node's CSI driver, as a kubelet would drive it: what each
//! `VolumeSpec` asks of the driver ([`plan`], pure), and the calls themselves ([`Csi`]).
//!
//! A `VolumeSpec` maps to CSI like this:
//! - `kind` selects the driver's volume type (CreateVolume parameter `type`: disk, nas, oss) and
//!   the access mode: a disk is SINGLE_NODE_WRITER, NAS and OSS are MULTI_NODE_MULTI_WRITER.
//! - `parameters` are the driver's CreateVolume parameters (`category`, `performanceLevel`,
//!   `zoneId` for a disk; `fileSystemId`, `path` for NAS; `bucket`, `path` for OSS — the driver
//!   checks them and names a wrong one), except four keys the runner reads itself:
//!   - `volumeId`: use this existing volume instead of creating one; the runner never deletes it
//!     (no other key but `fsType` may go with it);
//!   - `size`: the capacity asked for, in bytes or with a unit (`512Mi`, `20Gi`, `1Ti`, `10G`);
//!   - `fsType`: a disk's file system (`ext4`, the default, or `xfs`);
//!   - `snapshotId`: a disk made for the pod holds this snapshot's data (CreateVolume's content
//!     source; the size is at least the snapshot's);
//!   - `ephemeral`: `true` deletes the pod-owned volume when the pod is removed; `false` (the
//!     default) keeps it, and the same pod (namespace, name) and volume name get it back.
//! - A pod-owned volume's CSI name is [`csi_name`] of (namespace, pod, volume name): CreateVolume is
//!   idempotent by name, so a retried or repeated set-up finds the same volume.
//! - `mount_path` is relative to the pod's directory, which is its command's working directory
//!   (a leading `/` is ignored): `/data` is `./data` for the command.
//! - `read_only` publishes read-only (ControllerPublish and NodePublish `readonly`).

use std::collections::{BTreeSet, HashMap};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use berth_proto::cluster::v1 as pb;
use berth_proto::csi::v1 as csi;
use csi::volume_capability::access_mode::Mode;
use csi::volume_capability::{AccessMode, AccessType, MountVolume};
use tonic::transport::{Channel, Endpoint};

/// The `parameters` keys the runner reads; every other key goes to CreateVolume.
pub const RUNNER_KEYS: [&str; 5] = ["volumeId", "ephemeral", "size", "fsType", "snapshotId"];

/// Where a pod's volume comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// Made for the pod by CreateVolume (the request without its topology, which is the node's).
    Create(Box<csi::CreateVolumeRequest>),
    /// An existing volume, by its ID.
    Existing(String),
}

/// What the runner asks of the driver for one `VolumeSpec`.
#[derive(Debug, Clone, PartialEq)]
pub struct VolumePlan {
    pub name: String,
    pub source: Source,
    /// Deleted with the pod (pod-owned volumes only).
    pub ephemeral: bool,
    pub capability: csi::VolumeCapability,
    pub read_only: bool,
    /// Relative to the pod's directory.
    pub mount_path: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("volume {volume:?}: {what}")]
pub struct SpecError {
    pub volume: String,
    pub what: String,
}

/// The CSI name of a pod-owned volume: readable, and unique per (namespace, pod, volume) by a hash
/// of the three (a name the driver may use for a directory or a disk: at most 63 characters).
pub fn csi_name(namespace: &str, pod: &str, volume: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in namespace.bytes().chain([0]).chain(pod.bytes()).chain([0]).chain(volume.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let readable: String = format!("{namespace}-{pod}-{volume}").chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c.to_ascii_lowercase() } else { '-' }).take(42).collect();
    format!("pod-{readable}-{h:016x}")
}

/// Bytes from `123`, `512Mi`, `20Gi`, … (the scheduler reads a pod's sizes the same way).
pub use berth_cloud::disk::parse_size;

/// `mount_path` as a clean path relative to the pod's directory.
fn relative_mount_path(volume: &str, mount_path: &str) -> Result<PathBuf, SpecError> {
    let bad = |what: &str| SpecError { volume: volume.into(), what: format!("mount_path {mount_path:?} {what}") };
    if mount_path.contains('\0') {
        return Err(bad("contains NUL"));
    }
    let mut rel = PathBuf::new();
    for c in Path::new(mount_path).components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(p) => rel.push(p),
            Component::ParentDir | Component::Prefix(_) => return Err(bad("may not contain \"..\"; it is relative to the pod's directory")),
        }
    }
    if rel.as_os_str().is_empty() {
        return Err(bad("names no directory; give one such as /data (relative to the pod's directory)"));
    }
    Ok(rel)
}

fn capability(kind: pb::VolumeKind, fs_type: &str) -> csi::VolumeCapability {
    let mode = match kind {
        pb::VolumeKind::Nas | pb::VolumeKind::Oss => Mode::MultiNodeMultiWriter,
        _ => Mode::SingleNodeWriter,
    };
    csi::VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume { fs_type: fs_type.into(), ..Default::default() })),
        access_mode: Some(AccessMode { mode: mode as i32 }),
    }
}

/// One volume's plan.
pub fn plan_volume(namespace: &str, pod: &str, v: &pb::VolumeSpec) -> Result<VolumePlan, SpecError> {
    let err = |what: String| SpecError { volume: v.name.clone(), what };
    if v.name.is_empty() {
        return Err(err("a volume needs a name".into()));
    }
    let kind = pb::VolumeKind::try_from(v.kind).map_err(|_| err(format!("kind {} is unknown", v.kind)))?;
    let mount_path = relative_mount_path(&v.name, &v.mount_path)?;
    let p = &v.parameters;
    let ephemeral = match p.get("ephemeral").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => return Err(err(format!("parameter ephemeral={other:?}: true or false"))),
    };
    let fs_type = match (kind, p.get("fsType").map(String::as_str)) {
        (_, None) => "",
        (pb::VolumeKind::Disk | pb::VolumeKind::Unspecified, Some(f @ ("ext4" | "xfs"))) => f,
        (pb::VolumeKind::Disk | pb::VolumeKind::Unspecified, Some(f)) => return Err(err(format!("parameter fsType={f:?}: ext4 or xfs"))),
        (_, Some(_)) => return Err(err("parameter fsType: only a disk has a file system of its choosing".into())),
    };
    let capability = capability(kind, fs_type);
    if let Some(id) = p.get("volumeId") {
        if id.is_empty() {
            return Err(err("parameter volumeId is empty".into()));
        }
        if let Some(k) = p.keys().filter(|k| !matches!(k.as_str(), "volumeId" | "fsType")).min() {
            return Err(err(format!("parameter {k}: an existing volume (volumeId) is used as it is; only fsType may go with it")));
        }
        return Ok(VolumePlan { name: v.name.clone(), source: Source::Existing(id.clone()), ephemeral: false, capability, read_only: v.read_only, mount_path });
    }
    let kind_name = match kind {
        pb::VolumeKind::Disk => "disk",
        pb::VolumeKind::Nas => "nas",
        pb::VolumeKind::Oss => "oss",
        pb::VolumeKind::Unspecified => return Err(err("kind is unspecified: give DISK, NAS or OSS, or an existing volume as parameter volumeId".into())),
    };
    if p.contains_key("type") {
        return Err(err("parameter type: the volume's kind says it".into()));
    }
    let capacity_range = match p.get("size") {
        None => None,
        Some(s) => Some(csi::CapacityRange { required_bytes: parse_size(s).ok_or_else(|| err(format!("parameter size={s:?}: bytes, or a number with K, M, G, T, Ki, Mi, Gi or Ti")))?, limit_bytes: 0 }),
    };
    let mut parameters: HashMap<String, String> = p.iter().filter(|(k, _)| !RUNNER_KEYS.contains(&k.as_str())).map(|(k, v)| (k.clone(), v.clone())).collect();
    parameters.insert("type".into(), kind_name.into());
    let volume_content_source = match p.get("snapshotId") {
        None => None,
        Some(_) if kind != pb::VolumeKind::Disk => return Err(err("parameter snapshotId: only a disk is restored from a snapshot".into())),
        Some(id) => Some(csi::VolumeContentSource { r#type: Some(csi::volume_content_source::Type::Snapshot(csi::volume_content_source::SnapshotSource { snapshot_id: id.clone() })) }),
    };
    let request = csi::CreateVolumeRequest { name: csi_name(namespace, pod, &v.name), capacity_range, volume_capabilities: vec![capability.clone()], parameters, volume_content_source, ..Default::default() };
    Ok(VolumePlan { name: v.name.clone(), source: Source::Create(Box::new(request)), ephemeral, capability, read_only: v.read_only, mount_path })
}

/// The plans of a pod's volumes, parents before what is mounted inside them; names and mount
/// paths must be unique.
pub fn plan(spec: &pb::PodSpec) -> Result<Vec<VolumePlan>, SpecError> {
    let mut names = BTreeSet::new();
    let mut paths = BTreeSet::new();
    let mut plans = Vec::new();
    for v in &spec.volumes {
        let p = plan_volume(&spec.namespace, &spec.name, v)?;
        if !names.insert(p.name.clone()) {
            return Err(SpecError { volume: p.name, what: "two volumes have this name".into() });
        }
        if !paths.insert(p.mount_path.clone()) {
            return Err(SpecError { volume: p.name, what: format!("mount_path {:?} is another volume's too", v.mount_path) });
        }
        plans.push(p);
    }
    plans.sort_by_key(|p| p.mount_path.components().count());
    Ok(plans)
}

/// A gRPC status as the CSI spec names its code (`RESOURCE_EXHAUSTED`).
pub fn code_name(code: tonic::Code) -> String {
    let camel = format!("{code:?}");
    let mut out = String::new();
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// A CSI call that failed, with the volume it was for.
#[derive(Debug, Clone, thiserror::Error)]
#[error("volume {volume:?}: {call} failed: {code}: {message}", code = code_name(*.code))]
pub struct CallError {
    pub volume: String,
    pub call: &'static str,
    pub code: tonic::Code,
    pub message: String,
}

/// What the runner needs to know of the node's driver, asked once per pod set-up.
#[derive(Debug, Clone)]
pub struct DriverFacts {
    pub node_id: String,
    pub topology: Option<csi::Topology>,
    pub stage_unstage: bool,
    pub controller_publish: bool,
}

/// The node's CSI driver on its unix socket; calls block the calling (non-async) thread.
pub struct Csi {
    channel: Channel,
    handle: tokio::runtime::Handle,
}

/// How long one call may take (an attach waits for the cloud), and how long calls answered
/// ABORTED (another call on the volume in flight) or UNAVAILABLE are retried.
const CALL_TIMEOUT: Duration = Duration::from_secs(180);
const RETRY_FOR: Duration = Duration::from_secs(30);

impl Csi {
    pub fn new(socket: &Path, handle: tokio::runtime::Handle) -> Csi {
        let socket = socket.to_path_buf();
        let _guard = handle.enter();
        let channel = Endpoint::from_static("http://localhost").timeout(CALL_TIMEOUT).connect_with_connector_lazy(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move { Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(socket).await?)) }
        }));
        Csi { channel, handle }
    }

    /// Runs one call, retrying ABORTED and UNAVAILABLE with back-off for a while.
    fn call<T, F, Fut>(&self, volume: &str, name: &'static str, f: F) -> Result<T, CallError>
    where
        F: Fn(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let started = std::time::Instant::now();
        let mut pause = Duration::from_millis(100);
        loop {
            match self.handle.block_on(f(self.channel.clone())) {
                Ok(r) => return Ok(r.into_inner()),
                Err(s) if matches!(s.code(), tonic::Code::Aborted | tonic::Code::Unavailable) && started.elapsed() < RETRY_FOR => {
                    tracing::debug!(volume, call = name, code = ?s.code(), message = s.message(), "retrying");
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                Err(s) => return Err(CallError { volume: volume.into(), call: name, code: s.code(), message: s.message().to_string() }),
            }
        }
    }

    pub fn driver_facts(&self) -> Result<DriverFacts, CallError> {
        use csi::controller_service_capability::{Type as CType, rpc::Type as CRpc};
        use csi::node_service_capability::{Type as NType, rpc::Type as NRpc};
        let info = self.call("", "NodeGetInfo", |c| async move { csi::node_client::NodeClient::new(c).node_get_info(csi::NodeGetInfoRequest {}).await })?;
        let node = self.call("", "NodeGetCapabilities", |c| async move { csi::node_client::NodeClient::new(c).node_get_capabilities(csi::NodeGetCapabilitiesRequest {}).await })?;
        let ctl = self.call("", "ControllerGetCapabilities", |c| async move { csi::controller_client::ControllerClient::new(c).controller_get_capabilities(csi::ControllerGetCapabilitiesRequest {}).await })?;
        let stage_unstage = node.capabilities.iter().any(|c| matches!(&c.r#type, Some(NType::Rpc(r)) if r.r#type == NRpc::StageUnstageVolume as i32));
        let controller_publish = ctl.capabilities.iter().any(|c| matches!(&c.r#type, Some(CType::Rpc(r)) if r.r#type == CRpc::PublishUnpublishVolume as i32));
        Ok(DriverFacts { node_id: info.node_id, topology: info.accessible_topology, stage_unstage, controller_publish })
    }

    pub fn create(&self, volume: &str, mut req: csi::CreateVolumeRequest, topology: Option<&csi::Topology>) -> Result<csi::Volume, CallError> {
        if let Some(t) = topology {
            req.accessibility_requirements = Some(csi::TopologyRequirement { requisite: vec![t.clone()], preferred: vec![t.clone()] });
        }
        let r = self.call(volume, "CreateVolume", |c| {
            let req = req.clone();
            async move { csi::controller_client::ControllerClient::new(c).create_volume(req).await }
        })?;
        r.volume.ok_or_else(|| CallError { volume: volume.into(), call: "CreateVolume", code: tonic::Code::Internal, message: "the driver answered without a volume".into() })
    }

    pub fn delete(&self, volume: &str, volume_id: &str) -> Result<(), CallError> {
        let req = csi::DeleteVolumeRequest { volume_id: volume_id.into(), ..Default::default() };
        self.call(volume, "DeleteVolume", |c| {
            let req = req.clone();
            async move { csi::controller_client::ControllerClient::new(c).delete_volume(req).await }
        })
        .map(drop)
    }

    pub fn controller_publish(&self, volume: &str, req: csi::ControllerPublishVolumeRequest) -> Result<HashMap<String, String>, CallError> {
        self.call(volume, "ControllerPublishVolume", |c| {
            let req = req.clone();
            async move { csi::controller_client::ControllerClient::new(c).controller_publish_volume(req).await }
        })
        .map(|r| r.publish_context)
    }

    pub fn controller_unpublish(&self, volume: &str, volume_id: &str, node_id: &str) -> Result<(), CallError> {
        let req = csi::ControllerUnpublishVolumeRequest { volume_id: volume_id.into(), node_id: node_id.into(), ..Default::default() };
        self.call(volume, "ControllerUnpublishVolume", |c| {
            let req = req.clone();
            async move { csi::controller_client::ControllerClient::new(c).controller_unpublish_volume(req).await }
        })
        .map(drop)
    }

    pub fn stage(&self, volume: &str, req: csi::NodeStageVolumeRequest) -> Result<(), CallError> {
        self.call(volume, "NodeStageVolume", |c| {
            let req = req.clone();
            async move { csi::node_client::NodeClient::new(c).node_stage_volume(req).await }
        })
        .map(drop)
    }

    pub fn unstage(&self, volume: &str, volume_id: &str, staging: &Path) -> Result<(), CallError> {
        let req = csi::NodeUnstageVolumeRequest { volume_id: volume_id.into(), staging_target_path: staging.display().to_string() };
        self.call(volume, "NodeUnstageVolume", |c| {
            let req = req.clone();
            async move { csi::node_client::NodeClient::new(c).node_unstage_volume(req).await }
        })
        .map(drop)
    }

    pub fn publish(&self, volume: &str, req: csi::NodePublishVolumeRequest) -> Result<(), CallError> {
        self.call(volume, "NodePublishVolume", |c| {
            let req = req.clone();
            async move { csi::node_client::NodeClient::new(c).node_publish_volume(req).await }
        })
        .map(drop)
    }

    pub fn unpublish(&self, volume: &str, volume_id: &str, target: &Path) -> Result<(), CallError> {
        let req = csi::NodeUnpublishVolumeRequest { volume_id: volume_id.into(), target_path: target.display().to_string() };
        self.call(volume, "NodeUnpublishVolume", |c| {
            let req = req.clone();
            async move { csi::node_client::NodeClient::new(c).node_unpublish_volume(req).await }
        })
        .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vol(name: &str, kind: pb::VolumeKind, path: &str, params: &[(&str, &str)]) -> pb::VolumeSpec {
        pb::VolumeSpec { name: name.into(), kind: kind as i32, mount_path: path.into(), read_only: false, parameters: params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect() }
    }

    #[test]
    fn a_disk_spec_becomes_an_idempotent_create_with_the_drivers_parameters() {
        let v = vol("data", pb::VolumeKind::Disk, "/data", &[("category", "cloud_ssd"), ("size", "20Gi"), ("fsType", "xfs"), ("ephemeral", "true")]);
        let p = plan_volume("default", "web", &v).unwrap();
        let Source::Create(req) = &p.source else { panic!("{p:?}") };
        assert_eq!(req.name, csi_name("default", "web", "data"));
        assert_eq!(req.parameters, HashMap::from([("type".to_string(), "disk".to_string()), ("category".to_string(), "cloud_ssd".to_string())]), "runner keys are not passed on");
        assert_eq!(req.capacity_range.as_ref().map(|r| r.required_bytes), Some(20 << 30));
        assert_eq!(req.volume_capabilities, vec![p.capability.clone()]);
        let Some(AccessType::Mount(m)) = &p.capability.access_type else { panic!() };
        assert_eq!(m.fs_type, "xfs");
        assert_eq!(p.capability.access_mode.unwrap().mode, Mode::SingleNodeWriter as i32);
        assert!(p.ephemeral);
        assert_eq!(p.mount_path, PathBuf::from("data"));
        assert_eq!(plan_volume("default", "web", &v).unwrap(), p, "the same spec, the same request");
    }

    #[test]
    fn nas_oss_and_existing_volumes() {
        let p = plan_volume("ns", "p", &vol("shared", pb::VolumeKind::Nas, "mnt/shared", &[("fileSystemId", "fs-1")])).unwrap();
        assert_eq!(p.capability.access_mode.unwrap().mode, Mode::MultiNodeMultiWriter as i32);
        assert!(!p.ephemeral, "kept unless the spec says ephemeral");
        let Source::Create(req) = &p.source else { panic!() };
        assert_eq!(req.parameters["type"], "nas");
        assert!(req.capacity_range.is_none());
        let p = plan_volume("ns", "p", &vol("objects", pb::VolumeKind::Oss, "/o", &[("bucket", "b"), ("path", "x")])).unwrap();
        let Source::Create(req) = &p.source else { panic!() };
        assert_eq!((req.parameters["type"].as_str(), req.parameters["bucket"].as_str()), ("oss", "b"));
        let p = plan_volume("ns", "p", &vol("old", pb::VolumeKind::Unspecified, "/old", &[("volumeId", "d-123"), ("fsType", "ext4")])).unwrap();
        assert_eq!(p.source, Source::Existing("d-123".into()));
        assert!(!p.ephemeral, "an existing volume is never deleted");
        let e = plan_volume("ns", "p", &vol("old", pb::VolumeKind::Disk, "/old", &[("volumeId", "d-123"), ("category", "cloud_ssd")])).unwrap_err();
        assert!(e.to_string().contains("category"), "{e}");
        let p = plan_volume("ns", "p", &vol("restored", pb::VolumeKind::Disk, "/r", &[("snapshotId", "s-1"), ("size", "20Gi")])).unwrap();
        let Source::Create(req) = p.source else { panic!("a disk made for the pod") };
        assert!(matches!(req.volume_content_source.and_then(|c| c.r#type), Some(csi::volume_content_source::Type::Snapshot(s)) if s.snapshot_id == "s-1"));
        assert!(!req.parameters.contains_key("snapshotId"), "the runner's key is not a driver parameter");
        assert!(plan_volume("ns", "p", &vol("n", pb::VolumeKind::Nas, "/n", &[("fileSystemId", "f"), ("snapshotId", "s-1")])).is_err());
    }

    #[test]
    fn bad_specs_are_named() {
        let cases: &[(pb::VolumeSpec, &str)] = &[
            (vol("a", pb::VolumeKind::Disk, "/../etc", &[]), ".."),
            (vol("a", pb::VolumeKind::Disk, "/", &[]), "names no directory"),
            (vol("a", pb::VolumeKind::Unspecified, "/a", &[]), "unspecified"),
            (vol("a", pb::VolumeKind::Disk, "/a", &[("ephemeral", "yes")]), "ephemeral"),
            (vol("a", pb::VolumeKind::Disk, "/a", &[("size", "ten")]), "size"),
            (vol("a", pb::VolumeKind::Disk, "/a", &[("fsType", "btrfs")]), "fsType"),
            (vol("a", pb::VolumeKind::Nas, "/a", &[("fsType", "ext4")]), "fsType"),
            (vol("a", pb::VolumeKind::Disk, "/a", &[("type", "nas")]), "type"),
            (vol("", pb::VolumeKind::Disk, "/a", &[]), "name"),
        ];
        for (v, word) in cases {
            let e = plan_volume("ns", "p", v).unwrap_err();
            assert!(e.to_string().contains(word), "{v:?}: {e}");
        }
        let spec = |vols| pb::PodSpec { namespace: "ns".into(), name: "p".into(), volumes: vols, ..Default::default() };
        let e = plan(&spec(vec![vol("a", pb::VolumeKind::Disk, "/a", &[]), vol("a", pb::VolumeKind::Nas, "/b", &[])])).unwrap_err();
        assert!(e.what.contains("name"), "{e}");
        let e = plan(&spec(vec![vol("a", pb::VolumeKind::Disk, "/a", &[]), vol("b", pb::VolumeKind::Nas, "a/", &[])])).unwrap_err();
        assert!(e.what.contains("mount_path"), "{e}");
        let order: Vec<String> = plan(&spec(vec![vol("inner", pb::VolumeKind::Nas, "/a/b", &[]), vol("outer", pb::VolumeKind::Disk, "/a", &[])])).unwrap().into_iter().map(|p| p.name).collect();
        assert_eq!(order, ["outer", "inner"], "a parent is mounted before what is inside it");
    }

    #[test]
    fn names_sizes_and_codes() {
        assert_ne!(csi_name("a", "b-c", "d"), csi_name("a-b", "c", "d"));
        assert!(csi_name(&"x".repeat(300), "p", "v").len() <= 63);
        assert!(csi_name("Default", "Web_1", "data").starts_with("pod-default-web-1-data-"));
        assert_eq!(parse_size("20Gi"), Some(20 << 30));
        assert_eq!(parse_size("10G"), Some(10_000_000_000));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("0"), None);
        assert_eq!(parse_size("1Pi"), None);
        assert_eq!(code_name(tonic::Code::ResourceExhausted), "RESOURCE_EXHAUSTED");
        assert_eq!(code_name(tonic::Code::InvalidArgument), "INVALID_ARGUMENT");
    }
}

//! What a volume is, without I/O: the three kinds, their IDs (which carry what DeleteVolume and
//! the node need), the CreateVolume parameters, sizes, and which capabilities each kind serves.

use std::collections::HashMap;

use berth_proto::csi::v1 as csi;
use csi::volume_capability::access_mode::Mode;
use csi::volume_capability::AccessType;

pub const GIB: i64 = 1 << 30;
/// The topology key of a node's zone.
pub const ZONE_KEY: &str = "topology.berth.io/zone";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Disk,
    Nas,
    Oss,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Disk => "disk",
            Kind::Nas => "nas",
            Kind::Oss => "oss",
        }
    }
}

/// A volume ID. A disk's is the cloud's disk ID; NAS and OSS IDs carry their file system or bucket
/// and path, so DeleteVolume and the node need nothing else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeId {
    Disk { disk_id: String },
    /// `nas:<fs-id>:<server>:<path>`; the server (mount target) is empty on the local cloud.
    Nas { fs_id: String, server: String, path: String },
    /// `oss:<bucket>:<path>`
    Oss { bucket: String, path: String },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("volume ID {id:?} is not one of this driver's (d-..., nas:<fs>:<server>:<path>, oss:<bucket>:<path>): {why}")]
pub struct BadVolumeId {
    pub id: String,
    pub why: &'static str,
}

impl VolumeId {
    pub fn parse(id: &str) -> Result<VolumeId, BadVolumeId> {
        let bad = |why| BadVolumeId { id: id.into(), why };
        let clean = |p: &str| !p.split('/').any(|c| c == "..") && !p.contains('\0');
        if let Some(rest) = id.strip_prefix("nas:") {
            let mut parts = rest.splitn(3, ':');
            let (Some(fs_id), Some(server), Some(path)) = (parts.next(), parts.next(), parts.next()) else { return Err(bad("a NAS ID has three fields")) };
            if fs_id.is_empty() || !clean(path) || !path.starts_with('/') {
                return Err(bad("a NAS ID needs a file system and an absolute path without \"..\""));
            }
            return Ok(VolumeId::Nas { fs_id: fs_id.into(), server: server.into(), path: path.into() });
        }
        if let Some(rest) = id.strip_prefix("oss:") {
            let Some((bucket, path)) = rest.split_once(':') else { return Err(bad("an OSS ID has two fields")) };
            if bucket.is_empty() || !clean(path) || !path.starts_with('/') {
                return Err(bad("an OSS ID needs a bucket and an absolute path without \"..\""));
            }
            return Ok(VolumeId::Oss { bucket: bucket.into(), path: path.into() });
        }
        if id.starts_with("d-") && id.len() > 2 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Ok(VolumeId::Disk { disk_id: id.into() });
        }
        Err(bad("unknown form"))
    }

    pub fn kind(&self) -> Kind {
        match self {
            VolumeId::Disk { .. } => Kind::Disk,
            VolumeId::Nas { .. } => Kind::Nas,
            VolumeId::Oss { .. } => Kind::Oss,
        }
    }
}

impl std::fmt::Display for VolumeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VolumeId::Disk { disk_id } => write!(f, "{disk_id}"),
            VolumeId::Nas { fs_id, server, path } => write!(f, "nas:{fs_id}:{server}:{path}"),
            VolumeId::Oss { bucket, path } => write!(f, "oss:{bucket}:{path}"),
        }
    }
}

/// CreateVolume's parameters, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeSpec {
    Disk { category: String, performance_level: Option<String>, zone: Option<String> },
    Nas { fs_id: String, parent: String },
    Oss { bucket: String, parent: String },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("parameter {key}={value:?}: {hint}")]
pub struct BadParameter {
    pub key: String,
    pub value: String,
    pub hint: &'static str,
}

fn bad(key: &str, value: &str, hint: &'static str) -> BadParameter {
    BadParameter { key: key.into(), value: value.into(), hint }
}

/// Parameters keys the driver reads; any other is refused, so a typo is not silently ignored.
/// (`csi.storage.k8s.io/*` keys the external provisioner adds are allowed and ignored.)
const KNOWN: &[&str] = &["type", "category", "performanceLevel", "zoneId", "fileSystemId", "path", "bucket"];

fn clean_dir(key: &str, value: &str) -> Result<String, BadParameter> {
    if value.split('/').any(|c| c == "..") || value.contains(':') || value.contains('\0') {
        return Err(bad(key, value, "a path without \"..\" or \":\""));
    }
    let trimmed = value.trim_matches('/');
    Ok(if trimmed.is_empty() { String::new() } else { format!("/{trimmed}") })
}

impl VolumeSpec {
    pub fn parse(params: &HashMap<String, String>) -> Result<VolumeSpec, BadParameter> {
        for k in params.keys() {
            if !KNOWN.contains(&k.as_str()) && !k.starts_with("csi.storage.k8s.io/") {
                return Err(bad(k, &params[k], "unknown parameter; known: type, category, performanceLevel, zoneId (disk), fileSystemId, path (nas), bucket, path (oss)"));
            }
        }
        let get = |k: &str| params.get(k).map(String::as_str).filter(|v| !v.is_empty());
        match get("type").unwrap_or("disk") {
            "disk" => {
                let category = get("category").unwrap_or("cloud_essd").to_string();
                if !matches!(category.as_str(), "cloud_essd" | "cloud_ssd" | "cloud_efficiency" | "cloud_auto") {
                    return Err(bad("category", &category, "one of cloud_essd, cloud_ssd, cloud_efficiency, cloud_auto"));
                }
                let performance_level = match (category.as_str(), get("performanceLevel")) {
                    ("cloud_essd", None) => Some("PL0".to_string()),
                    ("cloud_essd", Some(l @ ("PL0" | "PL1" | "PL2" | "PL3"))) => Some(l.to_string()),
                    ("cloud_essd", Some(l)) => return Err(bad("performanceLevel", l, "one of PL0, PL1, PL2, PL3")),
                    (_, Some(l)) => return Err(bad("performanceLevel", l, "only cloud_essd has performance levels")),
                    (_, None) => None,
                };
                Ok(VolumeSpec::Disk { category, performance_level, zone: get("zoneId").map(str::to_string) })
            }
            "nas" => {
                let fs_id = get("fileSystemId").ok_or_else(|| bad("fileSystemId", "", "a NAS volume needs the file system to carve it from"))?;
                Ok(VolumeSpec::Nas { fs_id: fs_id.into(), parent: clean_dir("path", get("path").unwrap_or("/"))? })
            }
            "oss" => {
                let bucket = get("bucket").ok_or_else(|| bad("bucket", "", "an OSS volume needs its bucket"))?;
                if bucket.contains(':') || bucket.contains('/') {
                    return Err(bad("bucket", bucket, "a bucket name without \":\" or \"/\""));
                }
                Ok(VolumeSpec::Oss { bucket: bucket.into(), parent: clean_dir("path", get("path").unwrap_or("/"))? })
            }
            other => Err(bad("type", other, "one of disk, nas, oss")),
        }
    }

    pub fn kind(&self) -> Kind {
        match self {
            VolumeSpec::Disk { .. } => Kind::Disk,
            VolumeSpec::Nas { .. } => Kind::Nas,
            VolumeSpec::Oss { .. } => Kind::Oss,
        }
    }
}

/// A directory name for a volume from its CSI name: the name's safe characters plus a short hash,
/// so two names never share a directory.
pub fn dir_name(name: &str) -> String {
    use sha2::Digest as _;
    let safe: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' { c } else { '_' }).take(64).collect();
    let digest = sha2::Sha256::digest(name.as_bytes());
    format!("{safe}-{}", hex(&digest[..4]))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The ClientToken of CreateDisk for a volume name: the same name always asks for the same disk.
/// `generation` moves on when the token's disk was deleted, so the name can be used again.
pub fn client_token(name: &str, generation: &str) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(format!("{name}\0{generation}").as_bytes());
    format!("berth-{}", hex(&digest[..16]))
}

/// The cloud's SnapshotName for a CSI snapshot name: a letter first and only the characters the
/// cloud takes, with a hash so two names never share one.
pub fn snapshot_name(name: &str) -> String {
    format!("csi-{}", dir_name(name))
}

/// Whether `id` has the form of a cloud snapshot ID (`s-…`); anything else names no snapshot of ours.
pub fn is_snapshot_id(id: &str) -> bool {
    id.starts_with("s-") && id.len() > 2 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Disk size limits (GiB) per category and level, shared with the scheduler's API edge.
pub use berth_cloud::disk::size_limits_gib as disk_size_limits;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("capacity_range is negative ({0}); give sizes in bytes >= 0")]
    Negative(i64),
    #[error("limit_bytes {limit} is below required_bytes {required}")]
    LimitBelowRequired { required: i64, limit: i64 },
    #[error("{required} bytes round up to {gib} GiB, outside {min}..={max} GiB for this category")]
    OutOfRange { required: i64, gib: i64, min: i64, max: i64 },
}

/// The disk size in GiB for a capacity range: `required` rounded up to whole GiB, at least the
/// category's minimum, at most `limit`.
pub fn disk_size_gib(range: Option<&csi::CapacityRange>, min: i64, max: i64) -> Result<i64, SizeError> {
    let (required, limit) = range.map(|r| (r.required_bytes, r.limit_bytes)).unwrap_or((0, 0));
    if required < 0 || limit < 0 {
        return Err(SizeError::Negative(required.min(limit)));
    }
    if limit > 0 && limit < required {
        return Err(SizeError::LimitBelowRequired { required, limit });
    }
    // Rounded up without `required + GIB - 1`, which overflows near i64::MAX.
    let gib = (required / GIB + i64::from(required % GIB != 0)).max(min);
    if gib > max || (limit > 0 && gib.checked_mul(GIB).is_none_or(|bytes| bytes > limit)) {
        return Err(SizeError::OutOfRange { required, gib, min, max: if limit > 0 { (limit / GIB).min(max) } else { max } });
    }
    Ok(gib)
}

/// Why a capability is not served, or `None` when it is.
pub fn unsupported(kind: Kind, cap: &csi::VolumeCapability) -> Option<String> {
    let mode = cap.access_mode.as_ref().map(|m| Mode::try_from(m.mode).unwrap_or(Mode::Unknown)).unwrap_or(Mode::Unknown);
    let block = match &cap.access_type {
        Some(AccessType::Block(_)) => true,
        Some(AccessType::Mount(m)) => {
            if kind == Kind::Disk && !matches!(m.fs_type.as_str(), "" | "ext4" | "xfs") {
                return Some(format!("fs_type {:?} is not supported; use ext4 or xfs", m.fs_type));
            }
            false
        }
        None => return Some("the capability names neither block nor mount access".into()),
    };
    match (kind, mode, block) {
        (_, Mode::Unknown, _) => Some("the capability has no access mode".into()),
        (Kind::Disk, Mode::SingleNodeWriter | Mode::SingleNodeReaderOnly, _) => None,
        (Kind::Disk, m, _) => Some(format!("a cloud disk attaches to one node; access mode {} is not served", m.as_str_name())),
        (_, _, true) => Some(format!("{} volumes are file systems; block access is not served", kind.as_str())),
        (_, Mode::SingleNodeSingleWriter | Mode::SingleNodeMultiWriter, _) => Some("SINGLE_NODE_*_WRITER modes are not advertised; use SINGLE_NODE_WRITER".into()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn volume_ids_round_trip_and_refuse_strangers() {
        for id in ["d-abc123", "nas:fs1:srv.nas:/pvc-1-ab12", "nas:fs1::/a/b", "oss:pods:/data/pvc-1"] {
            assert_eq!(VolumeId::parse(id).unwrap().to_string(), id);
        }
        for id in ["", "d-", "vol-1", "nas:fs1:/x", "nas::s:/x", "nas:fs1:s:/../etc", "oss:b:relative", "oss::/x", "d-a/b"] {
            assert!(VolumeId::parse(id).is_err(), "{id}");
        }
    }

    #[test]
    fn parameters_select_the_kind_and_typos_are_named() {
        assert_eq!(VolumeSpec::parse(&params(&[])).unwrap(), VolumeSpec::Disk { category: "cloud_essd".into(), performance_level: Some("PL0".into()), zone: None });
        assert_eq!(
            VolumeSpec::parse(&params(&[("type", "nas"), ("fileSystemId", "fs1"), ("path", "/shared/")])).unwrap(),
            VolumeSpec::Nas { fs_id: "fs1".into(), parent: "/shared".into() }
        );
        assert_eq!(VolumeSpec::parse(&params(&[("type", "oss"), ("bucket", "b")])).unwrap(), VolumeSpec::Oss { bucket: "b".into(), parent: String::new() });
        let e = VolumeSpec::parse(&params(&[("performancelevel", "PL1")])).unwrap_err();
        assert_eq!(e.key, "performancelevel");
        assert!(VolumeSpec::parse(&params(&[("performanceLevel", "PL9")])).is_err());
        assert!(VolumeSpec::parse(&params(&[("category", "cloud_ssd"), ("performanceLevel", "PL1")])).is_err());
        assert!(VolumeSpec::parse(&params(&[("type", "nas")])).is_err());
        assert!(VolumeSpec::parse(&params(&[("type", "nas"), ("fileSystemId", "f"), ("path", "/../x")])).is_err());
        assert!(VolumeSpec::parse(&params(&[("csi.storage.k8s.io/pvc/name", "x")])).is_ok());
    }

    #[test]
    fn sizes_round_up_and_respect_limits() {
        let r = |req, lim| csi::CapacityRange { required_bytes: req, limit_bytes: lim };
        assert_eq!(disk_size_gib(None, 1, 10), Ok(1));
        assert_eq!(disk_size_gib(None, 20, 100), Ok(20));
        assert_eq!(disk_size_gib(Some(&r(GIB + 1, 0)), 1, 10), Ok(2));
        assert_eq!(disk_size_gib(Some(&r(10 * GIB, 10 * GIB)), 1, 100), Ok(10));
        assert!(matches!(disk_size_gib(Some(&r(2 * GIB, GIB)), 1, 10), Err(SizeError::LimitBelowRequired { .. })));
        assert!(matches!(disk_size_gib(Some(&r(11 * GIB, 0)), 1, 10), Err(SizeError::OutOfRange { .. })));
        assert!(matches!(disk_size_gib(Some(&r(0, GIB / 2)), 1, 10), Err(SizeError::OutOfRange { .. })), "the minimum does not fit the limit");
        assert!(disk_size_gib(Some(&r(-1, 0)), 1, 10).is_err());
    }

    /// Found reading the code for the csi_request fuzz target (its seed create-disk-huge-range):
    /// a required size near i64::MAX overflowed while rounding up to GiB.
    #[test]
    fn the_largest_sizes_are_refused_without_overflow() {
        let r = |req, lim| csi::CapacityRange { required_bytes: req, limit_bytes: lim };
        assert!(matches!(disk_size_gib(Some(&r(i64::MAX, 0)), 1, 65_536), Err(SizeError::OutOfRange { gib, .. }) if gib == i64::MAX / GIB + 1));
        assert!(matches!(disk_size_gib(Some(&r(i64::MAX, i64::MAX)), 1, 65_536), Err(SizeError::OutOfRange { .. })));
        assert!(matches!(disk_size_gib(Some(&r(0, i64::MAX)), 1, i64::MAX), Ok(1)));
        assert!(matches!(disk_size_gib(Some(&r(i64::MAX, i64::MAX)), 1, i64::MAX), Err(SizeError::OutOfRange { .. })), "a size whose bytes overflow is out of range");
        assert_eq!(disk_size_gib(Some(&r(65_536 * GIB, 0)), 1, 65_536), Ok(65_536));
    }

    #[test]
    fn tokens_and_dirs_are_stable_and_distinct() {
        assert_eq!(client_token("pvc-1", ""), client_token("pvc-1", ""));
        assert_ne!(client_token("pvc-1", ""), client_token("pvc-1", "d-old"));
        assert!(client_token("x", "").len() <= 64);
        assert_ne!(dir_name("a/b"), dir_name("a_b"));
        assert!(dir_name("pvc 1").starts_with("pvc_1-"));
    }

    #[test]
    fn snapshot_names_are_ones_the_cloud_takes() {
        let n = snapshot_name("snapshot-1/ü");
        assert!(n.starts_with("csi-snapshot-1_"), "{n}");
        assert!(n.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')));
        assert_ne!(snapshot_name("a/b"), snapshot_name("a_b"));
        assert!(is_snapshot_id("s-0123abc") && !is_snapshot_id("s-") && !is_snapshot_id("d-1") && !is_snapshot_id("s-a/b"));
    }

    #[test]
    fn capabilities_per_kind() {
        let cap = |block: bool, mode: Mode| csi::VolumeCapability {
            access_type: Some(if block { AccessType::Block(Default::default()) } else { AccessType::Mount(Default::default()) }),
            access_mode: Some(csi::volume_capability::AccessMode { mode: mode as i32 }),
        };
        assert!(unsupported(Kind::Disk, &cap(true, Mode::SingleNodeWriter)).is_none());
        assert!(unsupported(Kind::Disk, &cap(false, Mode::SingleNodeReaderOnly)).is_none());
        assert!(unsupported(Kind::Disk, &cap(false, Mode::MultiNodeMultiWriter)).is_some());
        assert!(unsupported(Kind::Nas, &cap(false, Mode::MultiNodeMultiWriter)).is_none());
        assert!(unsupported(Kind::Nas, &cap(true, Mode::SingleNodeWriter)).is_some());
        assert!(unsupported(Kind::Oss, &cap(false, Mode::Unknown)).is_some());
    }
}

//! The cloud's resources as Berth sees them, independent of the wire format.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnetwork::{Ipv4Network, Ipv6Network};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vpc {
    pub id: String,
    pub name: String,
    pub cidr_block: Ipv4Network,
    pub ipv6_cidr_block: Option<Ipv6Network>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VSwitch {
    pub id: String,
    pub vpc_id: String,
    pub zone_id: String,
    pub name: String,
    pub cidr_block: Ipv4Network,
    pub ipv6_cidr_block: Option<Ipv6Network>,
    /// Addresses still free for ENIs and secondary IPs.
    pub available_ip_address_count: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Direction {
    Ingress,
    Egress,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum IpProtocol {
    Tcp,
    Udp,
    Icmp,
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Policy {
    Accept,
    Drop,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityGroupRule {
    pub direction: Direction,
    pub protocol: IpProtocol,
    /// Inclusive port range; `None` for ICMP and "all".
    pub ports: Option<(u16, u16)>,
    /// The peer: the source for ingress rules, the destination for egress rules.
    pub peer_cidr: ipnetwork::IpNetwork,
    pub policy: Policy,
    /// 1 is the highest priority, 100 the lowest.
    pub priority: u8,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityGroup {
    pub id: String,
    pub vpc_id: String,
    pub name: String,
    pub rules: Vec<SecurityGroupRule>,
    /// Rules whose peer is a group or a prefix list (set outside Berth): kept, not enforced here.
    #[serde(default)]
    pub referenced_rules: Vec<ReferencedRule>,
}

/// A peer of a rule that is not an address block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RulePeer {
    Group(String),
    PrefixList(String),
}

/// A security-group rule whose peer is another group or a prefix list, as the service lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReferencedRule {
    pub direction: Direction,
    pub peer: RulePeer,
    pub protocol: String,
    pub port_range: String,
    pub policy: String,
    pub priority: String,
}

/// What an instance type offers. The pod and disk capacity of a node follows from these numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceType {
    pub id: String,
    pub family: String,
    pub vcpu: u32,
    pub memory_mib: u64,
    /// ENIs an instance may hold, the primary ENI included.
    pub eni_quota: u32,
    /// Private IPv4 addresses per ENI, the ENI's primary address included.
    pub ipv4_per_eni: u32,
    pub ipv6_per_eni: u32,
    /// Member ENIs that may be bound to the instance's trunk ENI; 0 when trunking is unsupported.
    pub member_eni_quota: u32,
    /// Data disks an instance may hold.
    pub disk_quota: u32,
    /// On-demand price per hour, in the account's currency, for the price expander.
    pub price_per_hour: f64,
}

impl InstanceType {
    /// Pods that shared-ENI mode can host: every secondary ENI's secondary IPs.
    pub fn max_shared_eni_pods(&self) -> u32 {
        self.eni_quota.saturating_sub(1) * self.ipv4_per_eni.saturating_sub(1)
    }

    /// Pods that exclusive-ENI mode can host: one secondary ENI each.
    pub fn max_exclusive_eni_pods(&self) -> u32 {
        self.eni_quota.saturating_sub(1)
    }

    pub fn supports_trunk(&self) -> bool {
        self.member_eni_quota > 0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InstanceStatus {
    Pending,
    Starting,
    Running,
    Stopping,
    Stopped,
}

impl InstanceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Starting => "Starting",
            Self::Running => "Running",
            Self::Stopping => "Stopping",
            Self::Stopped => "Stopped",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "Pending" => Self::Pending,
            "Starting" => Self::Starting,
            "Running" => Self::Running,
            "Stopping" => Self::Stopping,
            "Stopped" => Self::Stopped,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub id: String,
    pub name: String,
    pub instance_type: String,
    pub zone_id: String,
    pub vpc_id: String,
    pub vswitch_id: String,
    pub status: InstanceStatus,
    pub primary_ip: Ipv4Addr,
    pub primary_eni_id: String,
    pub security_group_ids: Vec<String>,
    pub spot: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EniKind {
    Primary,
    Secondary,
    Trunk,
    Member,
}

impl EniKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Primary => "Primary",
            Self::Secondary => "Secondary",
            Self::Trunk => "Trunk",
            Self::Member => "Member",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "Primary" => Self::Primary,
            "Secondary" => Self::Secondary,
            "Trunk" => Self::Trunk,
            "Member" => Self::Member,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EniStatus {
    Available,
    Attaching,
    InUse,
    Detaching,
    Deleting,
}

impl EniStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Available => "Available",
            Self::Attaching => "Attaching",
            Self::InUse => "InUse",
            Self::Detaching => "Detaching",
            Self::Deleting => "Deleting",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "Available" => Self::Available,
            "Attaching" => Self::Attaching,
            "InUse" => Self::InUse,
            "Detaching" => Self::Detaching,
            "Deleting" => Self::Deleting,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInterface {
    pub id: String,
    pub kind: EniKind,
    pub status: EniStatus,
    pub mac: String,
    pub vpc_id: String,
    pub vswitch_id: String,
    pub zone_id: String,
    pub security_group_ids: Vec<String>,
    /// The instance it is attached to (for a member ENI: the trunk's instance).
    pub instance_id: Option<String>,
    /// For a member ENI: the trunk ENI it is bound to.
    pub trunk_eni_id: Option<String>,
    /// For a member ENI: the VLAN ID that tells its frames apart on the trunk.
    pub vlan_id: Option<u16>,
    pub primary_ip: Ipv4Addr,
    /// Secondary private IPv4 addresses (the primary is not listed here).
    pub secondary_ips: Vec<Ipv4Addr>,
    pub ipv6_addresses: Vec<Ipv6Addr>,
    pub description: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DiskStatus {
    Creating,
    Available,
    Attaching,
    InUse,
    Detaching,
    /// Being re-initialized to its image or blank state (ECS DescribeDisks documents it).
    ReIniting,
    /// A status this client does not know (the service may add some): kept apart, never a
    /// failure of the whole listing; the caller treats the disk as busy.
    Unknown,
}

impl DiskStatus {
    /// The service spells "in use" as `In_use` for disks.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Creating => "Creating",
            Self::Available => "Available",
            Self::Attaching => "Attaching",
            Self::InUse => "In_use",
            Self::Detaching => "Detaching",
            Self::ReIniting => "ReIniting",
            Self::Unknown => "Unknown",
        }
    }

    /// The status `s` names, [`DiskStatus::Unknown`] for one the client does not know.
    pub fn parse_open(s: &str) -> Self {
        Self::parse(s).unwrap_or(Self::Unknown)
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "Creating" => Self::Creating,
            "Available" => Self::Available,
            "Attaching" => Self::Attaching,
            "In_use" => Self::InUse,
            "Detaching" => Self::Detaching,
            "ReIniting" => Self::ReIniting,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    pub id: String,
    pub name: String,
    pub zone_id: String,
    /// `cloud_essd`, `cloud_ssd`, `cloud_efficiency`, `cloud_auto`.
    pub category: String,
    /// `PL0`..`PL3` for ESSD, empty otherwise.
    pub performance_level: String,
    pub size_gib: u64,
    pub status: DiskStatus,
    pub instance_id: Option<String>,
    /// The serial the guest sees for this disk; the node finds the device by it.
    pub serial: String,
    /// The device name the cloud reports once attached (e.g. `/dev/vdb`); informative only.
    pub device: Option<String>,
    /// The instance's system disk (`Type=system`): it takes no data-disk slot and Berth never
    /// attaches, detaches or deletes it.
    #[serde(default)]
    pub system: bool,
    /// The snapshot the disk was created from, if any (`SourceSnapshotId`).
    #[serde(default)]
    pub source_snapshot_id: Option<String>,
    /// `Description`, as given to CreateDisk.
    #[serde(default)]
    pub description: String,
}

/// A snapshot's status as DescribeSnapshots reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotStatus {
    /// Being made: not yet usable to create a disk.
    Progressing,
    /// Made: a disk can be created from it.
    Accomplished,
    Failed,
    /// A status this client does not know: treated as not ready.
    Unknown,
}

impl SnapshotStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Progressing => "progressing",
            Self::Accomplished => "accomplished",
            Self::Failed => "failed",
            Self::Unknown => "unknown",
        }
    }

    pub fn parse_open(s: &str) -> Self {
        match s {
            "progressing" => Self::Progressing,
            "accomplished" => Self::Accomplished,
            "failed" => Self::Failed,
            _ => Self::Unknown,
        }
    }
}

/// A point-in-time copy of a disk's data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub id: String,
    pub name: String,
    pub source_disk_id: String,
    /// The source disk's size when the snapshot was taken; a disk made from it is at least this big.
    pub source_disk_size_gib: u64,
    pub status: SnapshotStatus,
    /// 0..=100.
    pub progress_percent: u8,
    /// ISO 8601, UTC (`2026-12-07T12:00:00Z`).
    pub creation_time: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NasFileSystem {
    pub id: String,
    pub zone_id: String,
    pub vpc_id: String,
    pub protocol: String,
    /// Where nodes mount it: a host name on a real VPC, an exported directory on the local cloud.
    pub mount_target: String,
    pub capacity_gib: u64,
}

/// Whether data disks of a category can be bought in a zone now, and in what sizes: one
/// SupportedResource of DescribeAvailableResource (`DestinationResource=DataDisk`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataDiskStock {
    pub zone_id: String,
    /// The disk category (`Value`): `cloud_essd`, …
    pub category: String,
    /// `Status` is `Available` (false when `SoldOut`).
    pub available: bool,
    /// The smallest and largest disk of the category that can be created now, in GiB (`Min`, `Max`).
    pub min_gib: u64,
    pub max_gib: u64,
}

/// Credentials for signing requests.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    pub access_key_id: String,
    pub access_key_secret: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("access_key_secret", &"<redacted>")
            .finish()
    }
}

//! The cloud as a trait: what the agent, the CSI driver and the scheduler ask of it. The HTTP client
//! implements it against the real service or the local cloud; tests may implement it in memory.

use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::error::Result;
use crate::model::{
    DataDiskStock, Disk, EniKind, EniStatus, Instance, InstanceType, NasFileSystem, NetworkInterface, SecurityGroup,
    SecurityGroupRule, Snapshot, VSwitch, Vpc,
};

/// How many addresses to assign, or exactly which.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Addresses<A> {
    Count(u32),
    These(Vec<A>),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunInstancesRequest {
    pub instance_type: String,
    pub vswitch_id: String,
    pub security_group_ids: Vec<String>,
    pub amount: u32,
    pub name: String,
    pub spot: bool,
    /// Makes the request idempotent: the same token never creates twice.
    pub client_token: Option<String>,
    /// What the instances boot; RunInstances needs one.
    pub image: Option<BootImage>,
    pub system_disk: Option<SystemDisk>,
    /// The script the instance runs at first boot (sent Base64-encoded, as the API takes it).
    pub user_data: Option<String>,
    pub tags: Vec<(String, String)>,
    /// The instance RAM role the instances get (`RamRoleName`; the caller needs `ram:PassRole` on
    /// it): their metadata then serves its STS credentials.
    pub ram_role_name: Option<String>,
}

/// The image an instance boots: an image, the newest image of a family, or a launch template
/// (at a version, or its default one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootImage {
    Id(String),
    Family(String),
    LaunchTemplate { id: String, version: Option<String> },
}

/// The instance's system disk: its category (`cloud_essd`, …) and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemDisk {
    pub category: String,
    pub size_gib: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstanceFilter {
    pub ids: Vec<String>,
    pub vpc_id: Option<String>,
    pub vswitch_id: Option<String>,
    pub zone_id: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreateVSwitchRequest {
    pub vpc_id: String,
    pub zone_id: String,
    pub cidr_block: String,
    /// Which /64 of the VPC's IPv6 block (0..=255), for a dual-stack vSwitch.
    pub ipv6_block_index: Option<u8>,
    pub name: String,
    pub client_token: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateEniRequest {
    pub vswitch_id: String,
    pub security_group_ids: Vec<String>,
    /// `Secondary` or `Trunk`; a member ENI is created as `Secondary` and bound to a trunk on attach.
    pub kind: EniKind,
    pub primary_ip: Option<Ipv4Addr>,
    pub secondary_ip_count: u32,
    pub ipv6_count: u32,
    pub description: String,
    pub client_token: Option<String>,
}

impl CreateEniRequest {
    /// A secondary ENI with only its primary address, in `vswitch_id` with `security_group_ids`.
    pub fn secondary(vswitch_id: impl Into<String>, security_group_ids: Vec<String>) -> Self {
        CreateEniRequest {
            vswitch_id: vswitch_id.into(),
            security_group_ids,
            kind: EniKind::Secondary,
            primary_ip: None,
            secondary_ip_count: 0,
            ipv6_count: 0,
            description: String::new(),
            client_token: None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EniFilter {
    pub ids: Vec<String>,
    pub instance_id: Option<String>,
    pub vswitch_id: Option<String>,
    pub vpc_id: Option<String>,
    pub kind: Option<EniKind>,
    pub status: Option<EniStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreateDiskRequest {
    pub zone_id: String,
    pub name: String,
    /// `cloud_essd`, `cloud_ssd`, `cloud_efficiency`, `cloud_auto`.
    pub category: String,
    /// `PL0`..`PL3` for `cloud_essd`.
    pub performance_level: Option<String>,
    pub size_gib: u64,
    /// Creates the disk with this snapshot's data (`SnapshotId`); the size is then at least the
    /// snapshot's source disk size.
    pub snapshot_id: Option<String>,
    /// `Description` (at most 256 characters).
    pub description: String,
    pub client_token: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreateSnapshotRequest {
    pub disk_id: String,
    pub name: String,
    pub description: String,
    pub client_token: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotFilter {
    pub ids: Vec<String>,
    pub disk_id: Option<String>,
    pub name: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskFilter {
    pub ids: Vec<String>,
    pub instance_id: Option<String>,
    pub zone_id: Option<String>,
}

/// The cloud's API as Berth uses it. Every call is one (or, for listings, a few paginated) API
/// requests; waiting for asynchronous transitions is left to the caller (see [`crate::wait`]).
pub trait Cloud: Send + Sync {
    fn describe_instance_types(&self, ids: &[String]) -> impl Future<Output = Result<Vec<InstanceType>>> + Send;
    fn run_instances(&self, req: &RunInstancesRequest) -> impl Future<Output = Result<Vec<String>>> + Send;
    fn delete_instances(&self, ids: &[String], force: bool) -> impl Future<Output = Result<()>> + Send;
    fn describe_instances(&self, filter: &InstanceFilter) -> impl Future<Output = Result<Vec<Instance>>> + Send;

    fn create_vpc(&self, cidr_block: &str, name: &str, ipv6: bool, client_token: Option<&str>) -> impl Future<Output = Result<String>> + Send;
    fn describe_vpcs(&self, id: Option<&str>) -> impl Future<Output = Result<Vec<Vpc>>> + Send;
    fn create_vswitch(&self, req: &CreateVSwitchRequest) -> impl Future<Output = Result<String>> + Send;
    fn describe_vswitches(&self, vpc_id: Option<&str>, id: Option<&str>) -> impl Future<Output = Result<Vec<VSwitch>>> + Send;

    fn create_security_group(&self, vpc_id: &str, name: &str, client_token: Option<&str>) -> impl Future<Output = Result<String>> + Send;
    fn authorize_security_group(&self, id: &str, rule: &SecurityGroupRule) -> impl Future<Output = Result<()>> + Send;
    fn revoke_security_group(&self, id: &str, rule: &SecurityGroupRule) -> impl Future<Output = Result<()>> + Send;
    fn describe_security_group(&self, id: &str) -> impl Future<Output = Result<SecurityGroup>> + Send;
    /// Fails with `DependencyViolation` while an instance or ENI is in the group.
    fn delete_security_group(&self, id: &str) -> impl Future<Output = Result<()>> + Send;

    fn create_network_interface(&self, req: &CreateEniRequest) -> impl Future<Output = Result<NetworkInterface>> + Send;
    /// With `trunk_eni_id`, binds the ENI to that trunk ENI of the instance as a member ENI.
    fn attach_network_interface(&self, eni_id: &str, instance_id: &str, trunk_eni_id: Option<&str>) -> impl Future<Output = Result<()>> + Send;
    fn detach_network_interface(&self, eni_id: &str, instance_id: &str, trunk_eni_id: Option<&str>) -> impl Future<Output = Result<()>> + Send;
    fn delete_network_interface(&self, eni_id: &str) -> impl Future<Output = Result<()>> + Send;
    /// ModifyNetworkInterfaceAttribute of the ENI's security groups: replaced in place, attached or not.
    fn set_eni_security_groups(&self, eni_id: &str, security_group_ids: &[String]) -> impl Future<Output = Result<()>> + Send;
    /// Every matching ENI, following the pages.
    fn describe_network_interfaces(&self, filter: &EniFilter) -> impl Future<Output = Result<Vec<NetworkInterface>>> + Send;
    fn assign_private_ips(&self, eni_id: &str, ips: &Addresses<Ipv4Addr>, client_token: Option<&str>) -> impl Future<Output = Result<Vec<Ipv4Addr>>> + Send;
    fn unassign_private_ips(&self, eni_id: &str, ips: &[Ipv4Addr]) -> impl Future<Output = Result<()>> + Send;
    fn assign_ipv6(&self, eni_id: &str, ips: &Addresses<Ipv6Addr>, client_token: Option<&str>) -> impl Future<Output = Result<Vec<Ipv6Addr>>> + Send;
    fn unassign_ipv6(&self, eni_id: &str, ips: &[Ipv6Addr]) -> impl Future<Output = Result<()>> + Send;

    fn create_disk(&self, req: &CreateDiskRequest) -> impl Future<Output = Result<String>> + Send;
    fn attach_disk(&self, disk_id: &str, instance_id: &str) -> impl Future<Output = Result<()>> + Send;
    fn detach_disk(&self, disk_id: &str, instance_id: &str) -> impl Future<Output = Result<()>> + Send;
    fn delete_disk(&self, disk_id: &str) -> impl Future<Output = Result<()>> + Send;
    fn resize_disk(&self, disk_id: &str, new_size_gib: u64, online: bool) -> impl Future<Output = Result<()>> + Send;
    fn describe_disks(&self, filter: &DiskFilter) -> impl Future<Output = Result<Vec<Disk>>> + Send;
    /// Changes an ESSD's performance level (ModifyDiskSpec).
    fn modify_disk_performance_level(&self, disk_id: &str, level: &str) -> impl Future<Output = Result<()>> + Send;

    /// DescribeAvailableResource of data disks bought alone (`DestinationResource=DataDisk`,
    /// `ResourceType=disk`): one entry per zone and category, in `zone_id` or every zone of the
    /// region, of `category` or every category.
    fn describe_data_disk_stock(&self, zone_id: Option<&str>, category: Option<&str>) -> impl Future<Output = Result<Vec<DataDiskStock>>> + Send;

    /// Starts a snapshot of the disk; it is usable once DescribeSnapshots reports it accomplished.
    fn create_snapshot(&self, req: &CreateSnapshotRequest) -> impl Future<Output = Result<String>> + Send;
    /// Every matching snapshot, following the pages.
    fn describe_snapshots(&self, filter: &SnapshotFilter) -> impl Future<Output = Result<Vec<Snapshot>>> + Send;
    /// With `force`, deletes a snapshot even when disks were created from it.
    fn delete_snapshot(&self, snapshot_id: &str, force: bool) -> impl Future<Output = Result<()>> + Send;

    /// Creates an NFS file system with a mount target in the vSwitch.
    fn create_nas_file_system(&self, zone_id: &str, vpc_id: &str, vswitch_id: &str, client_token: Option<&str>) -> impl Future<Output = Result<NasFileSystem>> + Send;
    fn describe_nas_file_systems(&self, id: Option<&str>) -> impl Future<Output = Result<Vec<NasFileSystem>>> + Send;
    fn delete_nas_file_system(&self, id: &str) -> impl Future<Output = Result<()>> + Send;
}

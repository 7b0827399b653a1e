//! The wire shapes of the RPC API: which product (and API version) serves each action, and the JSON
//! bodies of the responses, field for field as the service writes them (PascalCase, lists wrapped in
//! a singular-named object). The client decodes these; the local cloud encodes them.

use std::net::{Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use crate::model;

/// A product of the RPC API: its own endpoint on a real cloud, its own API version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Product {
    Ecs,
    Vpc,
    Nas,
}

impl Product {
    pub fn version(self) -> &'static str {
        match self {
            Product::Ecs => "2014-05-26",
            Product::Vpc => "2016-04-28",
            Product::Nas => "2017-06-26",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Product::Ecs => "ecs",
            Product::Vpc => "vpc",
            Product::Nas => "nas",
        }
    }

    /// The product that serves `action`.
    pub fn of(action: &str) -> Product {
        match action {
            "CreateVpc" | "DescribeVpcs" | "DeleteVpc" | "CreateVSwitch" | "DescribeVSwitches" | "DeleteVSwitch" => {
                Product::Vpc
            }
            "CreateFileSystem" | "DescribeFileSystems" | "DeleteFileSystem" | "CreateMountTarget" => Product::Nas,
            _ => Product::Ecs,
        }
    }
}

/// Every action the client calls, by product: what a RAM policy for Berth must allow (the README's
/// "Running on Alibaba Cloud" lists the same; tests keep the three in step).
pub const ACTIONS: &[&str] = &[
    "AssignIpv6Addresses",
    "AssignPrivateIpAddresses",
    "AttachDisk",
    "AttachNetworkInterface",
    "AuthorizeSecurityGroup",
    "AuthorizeSecurityGroupEgress",
    "CreateDisk",
    "CreateNetworkInterface",
    "CreateSecurityGroup",
    "DeleteDisk",
    "DeleteInstances",
    "DeleteNetworkInterface",
    "DeleteSecurityGroup",
    "DescribeAvailableResource",
    "DescribeDisks",
    "DescribeInstanceTypes",
    "DescribeInstances",
    "DescribeNetworkInterfaces",
    "DescribeSecurityGroupAttribute",
    "DetachDisk",
    "DetachNetworkInterface",
    "ResizeDisk",
    "RevokeSecurityGroup",
    "RevokeSecurityGroupEgress",
    "RunInstances",
    "UnassignIpv6Addresses",
    "UnassignPrivateIpAddresses",
    "CreateSnapshot",
    "DeleteSnapshot",
    "DescribeSnapshots",
    "ModifyDiskSpec",
    "ModifyNetworkInterfaceAttribute",
    "CreateVSwitch",
    "CreateVpc",
    "DescribeVSwitches",
    "DescribeVpcs",
    "CreateFileSystem",
    "CreateMountTarget",
    "DeleteFileSystem",
    "DescribeFileSystems",
];

/// The permission group every VPC mount target of a general-purpose or extreme NAS file system
/// needs (`AccessGroupName` of CreateMountTarget); each account has this default one for VPCs.
pub const DEFAULT_VPC_ACCESS_GROUP: &str = "DEFAULT_VPC_GROUP_NAME";

/// Whether the API model of `action` has a `RegionId` parameter. These do not: they take the
/// region from the endpoint, and the official SDKs send none (ECS and NAS API references).
pub fn takes_region_id(action: &str) -> bool {
    !matches!(
        action,
        "DescribeInstanceTypes" | "AttachDisk" | "DetachDisk" | "DeleteDisk" | "ResizeDisk" | "ModifyDiskSpec" | "CreateSnapshot" | "DeleteSnapshot" | "CreateFileSystem" | "DescribeFileSystems" | "DeleteFileSystem" | "CreateMountTarget"
    )
}

/// The error body the service answers with, on any HTTP status >= 400.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ErrorBody {
    pub request_id: String,
    #[serde(default)]
    pub host_id: String,
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub recommend: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RequestIdOnly {
    pub request_id: String,
}

macro_rules! wrapped_list {
    ($name:ident, $field:literal, $item:ty) => {
        #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
        pub struct $name {
            #[serde(rename = $field, default)]
            pub items: Vec<$item>,
        }

        impl From<Vec<$item>> for $name {
            fn from(items: Vec<$item>) -> Self {
                Self { items }
            }
        }
    };
}

wrapped_list!(SecurityGroupIdList, "SecurityGroupId", String);
wrapped_list!(InstanceIdList, "InstanceIdSet", String);
wrapped_list!(PrivateIpList, "PrivateIpSet", PrivateIpSet);
wrapped_list!(Ipv6List, "Ipv6Set", Ipv6Set);
wrapped_list!(AddressList, "PrivateIpAddress", Ipv4Addr);
wrapped_list!(Ipv6AddressList, "Ipv6Address", Ipv6Addr);
wrapped_list!(IpAddressList, "IpAddress", Ipv4Addr);
wrapped_list!(NetworkInterfaceList, "NetworkInterfaceSet", NetworkInterfaceSet);
wrapped_list!(InstanceList, "Instance", InstanceItem);
wrapped_list!(InstanceTypeList, "InstanceType", InstanceTypeItem);
wrapped_list!(VpcList, "Vpc", VpcItem);
wrapped_list!(VSwitchList, "VSwitch", VSwitchItem);
wrapped_list!(SecurityGroupList, "SecurityGroup", SecurityGroupItem);
wrapped_list!(PermissionList, "Permission", Permission);
wrapped_list!(DiskList, "Disk", DiskItem);
wrapped_list!(AvailableZoneList, "AvailableZone", AvailableZoneItem);
wrapped_list!(AvailableResourceList, "AvailableResource", AvailableResourceItem);
wrapped_list!(SupportedResourceList, "SupportedResource", SupportedResourceItem);
wrapped_list!(SnapshotList, "Snapshot", SnapshotItem);
wrapped_list!(FileSystemList, "FileSystem", FileSystemItem);
wrapped_list!(MountTargetList, "MountTarget", MountTargetItem);

// ---- ENIs -------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PrivateIpSet {
    pub private_ip_address: Ipv4Addr,
    pub primary: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Ipv6Set {
    pub ipv6_address: Ipv6Addr,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Attachment {
    #[serde(default)]
    pub instance_id: String,
    #[serde(default)]
    pub trunk_network_interface_id: String,
    /// For a member ENI: its VLAN ID on the trunk.
    #[serde(default)]
    pub device_index: Option<u16>,
}

/// One ENI as DescribeNetworkInterfaces and CreateNetworkInterface write it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkInterfaceSet {
    pub network_interface_id: String,
    pub status: String,
    #[serde(rename = "Type")]
    pub kind: String,
    pub vpc_id: String,
    #[serde(rename = "VSwitchId")]
    pub vswitch_id: String,
    pub zone_id: String,
    pub private_ip_address: Ipv4Addr,
    pub mac_address: String,
    #[serde(default)]
    pub instance_id: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub security_group_ids: SecurityGroupIdList,
    #[serde(default)]
    pub private_ip_sets: PrivateIpList,
    #[serde(default)]
    pub ipv6_sets: Ipv6List,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachment: Option<Attachment>,
}

impl NetworkInterfaceSet {
    pub fn to_model(&self) -> Option<model::NetworkInterface> {
        let attachment = self.attachment.clone().unwrap_or_default();
        let instance_id = Some(self.instance_id.clone())
            .filter(|s| !s.is_empty())
            .or_else(|| Some(attachment.instance_id.clone()).filter(|s| !s.is_empty()));
        Some(model::NetworkInterface {
            id: self.network_interface_id.clone(),
            kind: model::EniKind::parse(&self.kind)?,
            status: model::EniStatus::parse(&self.status)?,
            mac: self.mac_address.clone(),
            vpc_id: self.vpc_id.clone(),
            vswitch_id: self.vswitch_id.clone(),
            zone_id: self.zone_id.clone(),
            security_group_ids: self.security_group_ids.items.clone(),
            instance_id,
            trunk_eni_id: Some(attachment.trunk_network_interface_id).filter(|s| !s.is_empty()),
            vlan_id: attachment.device_index.filter(|_| self.kind == "Member"),
            primary_ip: self.private_ip_address,
            secondary_ips: self
                .private_ip_sets
                .items
                .iter()
                .filter(|s| !s.primary)
                .map(|s| s.private_ip_address)
                .collect(),
            ipv6_addresses: self.ipv6_sets.items.iter().map(|s| s.ipv6_address).collect(),
            description: self.description.clone(),
        })
    }

    pub fn from_model(eni: &model::NetworkInterface) -> Self {
        let mut ips = vec![PrivateIpSet { private_ip_address: eni.primary_ip, primary: true }];
        ips.extend(eni.secondary_ips.iter().map(|ip| PrivateIpSet { private_ip_address: *ip, primary: false }));
        let attachment = eni.instance_id.as_ref().map(|instance| Attachment {
            instance_id: instance.clone(),
            trunk_network_interface_id: eni.trunk_eni_id.clone().unwrap_or_default(),
            device_index: eni.vlan_id,
        });
        NetworkInterfaceSet {
            network_interface_id: eni.id.clone(),
            status: eni.status.as_str().to_string(),
            kind: eni.kind.as_str().to_string(),
            vpc_id: eni.vpc_id.clone(),
            vswitch_id: eni.vswitch_id.clone(),
            zone_id: eni.zone_id.clone(),
            private_ip_address: eni.primary_ip,
            mac_address: eni.mac.clone(),
            instance_id: eni.instance_id.clone().unwrap_or_default(),
            description: eni.description.clone(),
            security_group_ids: eni.security_group_ids.clone().into(),
            private_ip_sets: ips.into(),
            ipv6_sets: eni.ipv6_addresses.iter().map(|a| Ipv6Set { ipv6_address: *a }).collect::<Vec<_>>().into(),
            attachment,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeNetworkInterfacesResponse {
    pub request_id: String,
    #[serde(default)]
    pub total_count: u64,
    /// Empty on the last page.
    #[serde(default)]
    pub next_token: String,
    #[serde(default)]
    pub network_interface_sets: NetworkInterfaceList,
}

/// CreateNetworkInterface answers the new ENI's fields at the top level.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateNetworkInterfaceResponse {
    pub request_id: String,
    #[serde(flatten)]
    pub eni: NetworkInterfaceSet,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AssignedPrivateIpAddressesSet {
    pub network_interface_id: String,
    pub private_ip_set: AddressList,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AssignPrivateIpAddressesResponse {
    pub request_id: String,
    pub assigned_private_ip_addresses_set: AssignedPrivateIpAddressesSet,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AssignIpv6AddressesResponse {
    pub request_id: String,
    pub network_interface_id: String,
    pub ipv6_sets: Ipv6AddressList,
}

// ---- instances --------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunInstancesResponse {
    pub request_id: String,
    pub instance_id_sets: InstanceIdList,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct VpcAttributes {
    pub vpc_id: String,
    #[serde(rename = "VSwitchId")]
    pub vswitch_id: String,
    pub private_ip_address: IpAddressList,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct InstanceNetworkInterface {
    pub network_interface_id: String,
    pub mac_address: String,
    pub primary_ip_address: Ipv4Addr,
    #[serde(rename = "Type")]
    pub kind: String,
}

wrapped_list!(InstanceNetworkInterfaceList, "NetworkInterface", InstanceNetworkInterface);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct InstanceItem {
    pub instance_id: String,
    pub instance_name: String,
    pub instance_type: String,
    pub zone_id: String,
    pub status: String,
    pub cpu: u32,
    /// MiB.
    pub memory: u64,
    pub vpc_attributes: VpcAttributes,
    pub security_group_ids: SecurityGroupIdList,
    pub network_interfaces: InstanceNetworkInterfaceList,
    /// `NoSpot` for on-demand instances.
    pub spot_strategy: String,
}

impl InstanceItem {
    pub fn to_model(&self) -> Option<model::Instance> {
        let primary = self.network_interfaces.items.iter().find(|n| n.kind == "Primary")?;
        Some(model::Instance {
            id: self.instance_id.clone(),
            name: self.instance_name.clone(),
            instance_type: self.instance_type.clone(),
            zone_id: self.zone_id.clone(),
            vpc_id: self.vpc_attributes.vpc_id.clone(),
            vswitch_id: self.vpc_attributes.vswitch_id.clone(),
            status: model::InstanceStatus::parse(&self.status)?,
            primary_ip: *self.vpc_attributes.private_ip_address.items.first()?,
            primary_eni_id: primary.network_interface_id.clone(),
            security_group_ids: self.security_group_ids.items.clone(),
            spot: self.spot_strategy != "NoSpot",
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeInstancesResponse {
    pub request_id: String,
    #[serde(default)]
    pub total_count: u64,
    #[serde(default)]
    pub next_token: String,
    pub instances: InstanceList,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct InstanceTypeItem {
    pub instance_type_id: String,
    pub instance_type_family: String,
    pub cpu_core_count: u32,
    /// GiB, as a decimal number.
    pub memory_size: f64,
    pub eni_quantity: u32,
    pub eni_private_ip_address_quantity: u32,
    pub eni_ipv6_address_quantity: u32,
    /// ENIs of every kind, member ENIs included.
    pub eni_total_quantity: u32,
    pub eni_trunk_supported: bool,
    pub disk_quantity: u32,
    /// Not a field of the real service: the local cloud's list price, for the price expander.
    #[serde(default)]
    pub price_per_hour: f64,
}

impl InstanceTypeItem {
    pub fn from_model(t: &model::InstanceType) -> Self {
        InstanceTypeItem {
            instance_type_id: t.id.clone(),
            instance_type_family: t.family.clone(),
            cpu_core_count: t.vcpu,
            memory_size: t.memory_mib as f64 / 1024.0,
            eni_quantity: t.eni_quota,
            eni_private_ip_address_quantity: t.ipv4_per_eni,
            eni_ipv6_address_quantity: t.ipv6_per_eni,
            eni_total_quantity: t.eni_quota + t.member_eni_quota,
            eni_trunk_supported: t.member_eni_quota > 0,
            disk_quantity: t.disk_quota,
            price_per_hour: t.price_per_hour,
        }
    }

    pub fn to_model(&self) -> model::InstanceType {
        model::InstanceType {
            id: self.instance_type_id.clone(),
            family: self.instance_type_family.clone(),
            vcpu: self.cpu_core_count,
            memory_mib: (self.memory_size * 1024.0).round() as u64,
            eni_quota: self.eni_quantity,
            ipv4_per_eni: self.eni_private_ip_address_quantity,
            ipv6_per_eni: self.eni_ipv6_address_quantity,
            member_eni_quota: if self.eni_trunk_supported {
                self.eni_total_quantity.saturating_sub(self.eni_quantity)
            } else {
                0
            },
            disk_quota: self.disk_quantity,
            price_per_hour: self.price_per_hour,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeInstanceTypesResponse {
    pub request_id: String,
    pub instance_types: InstanceTypeList,
    #[serde(default)]
    pub next_token: String,
}

// ---- VPC, vSwitch, security group ---------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateVpcResponse {
    pub request_id: String,
    pub vpc_id: String,
    #[serde(rename = "VRouterId")]
    pub vrouter_id: String,
    pub route_table_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct VpcItem {
    pub vpc_id: String,
    pub vpc_name: String,
    pub cidr_block: String,
    #[serde(default)]
    pub ipv6_cidr_block: String,
    pub status: String,
}

impl VpcItem {
    /// `None` when a CIDR block is not one.
    pub fn to_model(&self) -> Option<model::Vpc> {
        Some(model::Vpc {
            id: self.vpc_id.clone(),
            name: self.vpc_name.clone(),
            cidr_block: self.cidr_block.parse().ok()?,
            ipv6_cidr_block: optional_block(&self.ipv6_cidr_block)?,
        })
    }
}

/// An IPv6 block that may be empty: `Some(None)` when empty, `None` when malformed.
fn optional_block(text: &str) -> Option<Option<ipnetwork::Ipv6Network>> {
    if text.is_empty() { Some(None) } else { text.parse().ok().map(Some) }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeVpcsResponse {
    pub request_id: String,
    pub total_count: u64,
    pub vpcs: VpcList,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateVSwitchResponse {
    pub request_id: String,
    #[serde(rename = "VSwitchId")]
    pub vswitch_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct VSwitchItem {
    #[serde(rename = "VSwitchId")]
    pub vswitch_id: String,
    pub vpc_id: String,
    pub zone_id: String,
    #[serde(rename = "VSwitchName")]
    pub vswitch_name: String,
    pub cidr_block: String,
    #[serde(default)]
    pub ipv6_cidr_block: String,
    pub available_ip_address_count: u64,
    pub status: String,
}

impl VSwitchItem {
    /// `None` when a CIDR block is not one.
    pub fn to_model(&self) -> Option<model::VSwitch> {
        Some(model::VSwitch {
            id: self.vswitch_id.clone(),
            vpc_id: self.vpc_id.clone(),
            zone_id: self.zone_id.clone(),
            name: self.vswitch_name.clone(),
            cidr_block: self.cidr_block.parse().ok()?,
            ipv6_cidr_block: optional_block(&self.ipv6_cidr_block)?,
            available_ip_address_count: self.available_ip_address_count,
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeVSwitchesResponse {
    pub request_id: String,
    pub total_count: u64,
    #[serde(rename = "VSwitches")]
    pub vswitches: VSwitchList,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateSecurityGroupResponse {
    pub request_id: String,
    pub security_group_id: String,
}

/// One rule of a security group as DescribeSecurityGroupAttribute writes it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Permission {
    /// `tcp`, `udp`, `icmp`, `all` (the service answers in upper case, and accepts either).
    pub ip_protocol: String,
    /// `from/to`; `-1/-1` for every port.
    pub port_range: String,
    #[serde(default)]
    pub source_cidr_ip: String,
    #[serde(default)]
    pub dest_cidr_ip: String,
    #[serde(default)]
    pub ipv6_source_cidr_ip: String,
    #[serde(default)]
    pub ipv6_dest_cidr_ip: String,
    /// A peer that is another security group.
    #[serde(default)]
    pub source_group_id: String,
    #[serde(default)]
    pub dest_group_id: String,
    /// A peer that is a prefix list.
    #[serde(default)]
    pub source_prefix_list_id: String,
    #[serde(default)]
    pub dest_prefix_list_id: String,
    /// `Accept` or `Drop`.
    pub policy: String,
    pub priority: String,
    /// `ingress` or `egress`.
    pub direction: String,
}

impl Permission {
    /// A rule whose peer is a security group or a prefix list, which Berth does not manage but
    /// keeps (the rule is still the group's), or `None` for a CIDR rule.
    pub fn to_referenced(&self) -> Option<model::ReferencedRule> {
        let ingress = self.direction.eq_ignore_ascii_case("ingress");
        let (group, list) = if ingress { (&self.source_group_id, &self.source_prefix_list_id) } else { (&self.dest_group_id, &self.dest_prefix_list_id) };
        let peer = if !group.is_empty() {
            model::RulePeer::Group(group.clone())
        } else if !list.is_empty() {
            model::RulePeer::PrefixList(list.clone())
        } else {
            return None;
        };
        Some(model::ReferencedRule {
            direction: if ingress { model::Direction::Ingress } else { model::Direction::Egress },
            peer,
            protocol: self.ip_protocol.to_ascii_lowercase(),
            port_range: self.port_range.clone(),
            policy: self.policy.clone(),
            priority: self.priority.clone(),
        })
    }

    /// The rule, or `None` when a field is not one Berth knows.
    pub fn to_rule(&self) -> Option<model::SecurityGroupRule> {
        use model::{Direction, IpProtocol, Policy};
        let direction = match self.direction.to_ascii_lowercase().as_str() {
            "ingress" => Direction::Ingress,
            "egress" => Direction::Egress,
            _ => return None,
        };
        let protocol = match self.ip_protocol.to_ascii_lowercase().as_str() {
            "tcp" => IpProtocol::Tcp,
            "udp" => IpProtocol::Udp,
            "icmp" => IpProtocol::Icmp,
            "all" => IpProtocol::All,
            _ => return None,
        };
        let ports = match self.port_range.split_once('/') {
            Some(("-1", "-1")) | None => None,
            Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
        };
        let (v4, v6) = if direction == Direction::Ingress { (&self.source_cidr_ip, &self.ipv6_source_cidr_ip) } else { (&self.dest_cidr_ip, &self.ipv6_dest_cidr_ip) };
        let peer = if v4.is_empty() { v6 } else { v4 };
        Some(model::SecurityGroupRule {
            direction,
            protocol,
            ports,
            peer_cidr: peer.parse().ok()?,
            policy: if self.policy.eq_ignore_ascii_case("drop") { Policy::Drop } else { Policy::Accept },
            priority: self.priority.parse().ok()?,
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeSecurityGroupAttributeResponse {
    pub request_id: String,
    pub security_group_id: String,
    pub security_group_name: String,
    pub vpc_id: String,
    pub permissions: PermissionList,
    #[serde(default)]
    pub next_token: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SecurityGroupItem {
    pub security_group_id: String,
    pub security_group_name: String,
    pub vpc_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeSecurityGroupsResponse {
    pub request_id: String,
    pub total_count: u64,
    pub security_groups: SecurityGroupList,
}

// ---- disks ------------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateDiskResponse {
    pub request_id: String,
    pub disk_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DiskItem {
    pub disk_id: String,
    pub disk_name: String,
    pub zone_id: String,
    pub category: String,
    #[serde(default)]
    pub performance_level: String,
    /// GiB.
    pub size: u64,
    pub status: String,
    #[serde(default)]
    pub instance_id: String,
    #[serde(default)]
    pub device: String,
    pub serial_number: String,
    /// `system` or `data`.
    #[serde(rename = "Type")]
    pub kind: String,
    #[serde(default)]
    pub source_snapshot_id: String,
    #[serde(default)]
    pub description: String,
}

impl DiskItem {
    pub fn to_model(&self) -> Option<model::Disk> {
        Some(model::Disk {
            id: self.disk_id.clone(),
            name: self.disk_name.clone(),
            zone_id: self.zone_id.clone(),
            category: self.category.clone(),
            performance_level: self.performance_level.clone(),
            size_gib: self.size,
            status: {
                let status = model::DiskStatus::parse_open(&self.status);
                if status == model::DiskStatus::Unknown {
                    tracing::warn!(disk = %self.disk_id, status = %self.status, "a disk status this client does not know; the disk is treated as busy");
                }
                status
            },
            instance_id: Some(self.instance_id.clone()).filter(|s| !s.is_empty()),
            serial: self.serial_number.clone(),
            device: Some(self.device.clone()).filter(|s| !s.is_empty()),
            system: self.kind == "system",
            source_snapshot_id: Some(self.source_snapshot_id.clone()).filter(|s| !s.is_empty()),
            description: self.description.clone(),
        })
    }

    pub fn from_model(d: &model::Disk) -> Self {
        DiskItem {
            disk_id: d.id.clone(),
            disk_name: d.name.clone(),
            zone_id: d.zone_id.clone(),
            category: d.category.clone(),
            performance_level: d.performance_level.clone(),
            size: d.size_gib,
            status: d.status.as_str().to_string(),
            instance_id: d.instance_id.clone().unwrap_or_default(),
            device: d.device.clone().unwrap_or_default(),
            serial_number: d.serial.clone(),
            kind: if d.system { "system" } else { "data" }.to_string(),
            source_snapshot_id: d.source_snapshot_id.clone().unwrap_or_default(),
            description: d.description.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeDisksResponse {
    pub request_id: String,
    #[serde(default)]
    pub total_count: u64,
    #[serde(default)]
    pub next_token: String,
    pub disks: DiskList,
}

// ---- stock (DescribeAvailableResource) --------------------------------------------------------

/// `Status` of a zone or a resource that can be bought now.
pub const STOCK_AVAILABLE: &str = "Available";
/// `Status` of one that cannot.
pub const STOCK_SOLD_OUT: &str = "SoldOut";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SupportedResourceItem {
    /// The disk category.
    pub value: String,
    /// `Available` or `SoldOut`.
    pub status: String,
    /// `WithStock`, `ClosedWithStock` or `WithoutStock`.
    #[serde(default)]
    pub status_category: String,
    #[serde(default)]
    pub min: u64,
    #[serde(default)]
    pub max: u64,
    /// `GiB` for disks.
    #[serde(default)]
    pub unit: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AvailableResourceItem {
    /// What the entries are: `DataDisk` here.
    #[serde(rename = "Type")]
    pub kind: String,
    #[serde(default)]
    pub supported_resources: SupportedResourceList,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AvailableZoneItem {
    #[serde(default)]
    pub region_id: String,
    pub zone_id: String,
    pub status: String,
    #[serde(default)]
    pub status_category: String,
    #[serde(default)]
    pub available_resources: AvailableResourceList,
}

impl AvailableZoneItem {
    /// The data disk entries of the zone; a unit other than GiB is refused, not misread.
    pub fn data_disks(&self) -> Option<Vec<model::DataDiskStock>> {
        let mut out = Vec::new();
        for r in self.available_resources.items.iter().filter(|r| r.kind == "DataDisk") {
            for s in &r.supported_resources.items {
                if !s.unit.is_empty() && s.unit != "GiB" {
                    return None;
                }
                out.push(model::DataDiskStock {
                    zone_id: self.zone_id.clone(),
                    category: s.value.clone(),
                    available: s.status == STOCK_AVAILABLE,
                    min_gib: s.min,
                    max_gib: s.max,
                });
            }
        }
        Some(out)
    }

    /// The zone entry that reports `stocks` (all of `zone_id`); the zone is available while any is.
    pub fn from_data_disks(region_id: &str, zone_id: &str, stocks: &[model::DataDiskStock]) -> Self {
        let status = |available: bool| if available { STOCK_AVAILABLE } else { STOCK_SOLD_OUT }.to_string();
        let category = |available: bool| if available { "WithStock" } else { "WithoutStock" }.to_string();
        let any = stocks.iter().any(|s| s.available);
        let supported: Vec<SupportedResourceItem> = stocks
            .iter()
            .map(|s| SupportedResourceItem { value: s.category.clone(), status: status(s.available), status_category: category(s.available), min: s.min_gib, max: s.max_gib, unit: "GiB".into() })
            .collect();
        AvailableZoneItem {
            region_id: region_id.into(),
            zone_id: zone_id.into(),
            status: status(any),
            status_category: category(any),
            available_resources: vec![AvailableResourceItem { kind: "DataDisk".into(), supported_resources: supported.into() }].into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeAvailableResourceResponse {
    pub request_id: String,
    #[serde(default)]
    pub available_zones: AvailableZoneList,
}

// ---- snapshots --------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateSnapshotResponse {
    pub request_id: String,
    pub snapshot_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SnapshotItem {
    pub snapshot_id: String,
    #[serde(default)]
    pub snapshot_name: String,
    #[serde(default)]
    pub description: String,
    /// A percentage as text: `"40%"`.
    #[serde(default)]
    pub progress: String,
    pub source_disk_id: String,
    /// GiB, as text (the service answers a string).
    pub source_disk_size: String,
    /// `system` or `data`.
    #[serde(default)]
    pub source_disk_type: String,
    /// `progressing`, `accomplished`, `failed`.
    pub status: String,
    #[serde(default)]
    pub creation_time: String,
    /// Whether the snapshot can be used (to create a disk).
    #[serde(default)]
    pub available: bool,
    /// `disk` once a disk was created from it, else `none`.
    #[serde(default)]
    pub usage: String,
}

impl SnapshotItem {
    pub fn to_model(&self) -> Option<model::Snapshot> {
        Some(model::Snapshot {
            id: self.snapshot_id.clone(),
            name: self.snapshot_name.clone(),
            source_disk_id: self.source_disk_id.clone(),
            source_disk_size_gib: self.source_disk_size.trim().parse().ok()?,
            status: model::SnapshotStatus::parse_open(&self.status),
            progress_percent: self.progress.trim().trim_end_matches('%').parse::<u8>().unwrap_or(0).min(100),
            creation_time: self.creation_time.clone(),
        })
    }

    /// The item for `s`; `used` says whether a disk was created from it.
    pub fn from_model(s: &model::Snapshot, used: bool) -> Self {
        SnapshotItem {
            snapshot_id: s.id.clone(),
            snapshot_name: s.name.clone(),
            description: String::new(),
            progress: format!("{}%", s.progress_percent),
            source_disk_id: s.source_disk_id.clone(),
            source_disk_size: s.source_disk_size_gib.to_string(),
            source_disk_type: "data".into(),
            status: s.status.as_str().to_string(),
            creation_time: s.creation_time.clone(),
            available: s.status == model::SnapshotStatus::Accomplished,
            usage: if used { "disk" } else { "none" }.into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeSnapshotsResponse {
    pub request_id: String,
    #[serde(default)]
    pub total_count: u64,
    #[serde(default)]
    pub next_token: String,
    pub snapshots: SnapshotList,
}

// ---- NAS --------------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateFileSystemResponse {
    pub request_id: String,
    pub file_system_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateMountTargetResponse {
    pub request_id: String,
    pub mount_target_domain: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct MountTargetItem {
    pub mount_target_domain: String,
    pub vpc_id: String,
    #[serde(rename = "VswId")]
    pub vsw_id: String,
    pub status: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct FileSystemItem {
    pub file_system_id: String,
    pub protocol_type: String,
    pub zone_id: String,
    /// GiB.
    pub capacity: u64,
    #[serde(default)]
    pub mount_targets: MountTargetList,
}

impl FileSystemItem {
    /// The file system with its first mount target (a NAS file system Berth makes has one).
    pub fn to_model(&self) -> model::NasFileSystem {
        let target = self.mount_targets.items.first();
        model::NasFileSystem {
            id: self.file_system_id.clone(),
            zone_id: self.zone_id.clone(),
            vpc_id: target.map(|t| t.vpc_id.clone()).unwrap_or_default(),
            protocol: self.protocol_type.clone(),
            mount_target: target.map(|t| t.mount_target_domain.clone()).unwrap_or_default(),
            capacity_gib: self.capacity,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeFileSystemsResponse {
    pub request_id: String,
    pub total_count: u64,
    pub file_systems: FileSystemList,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The RAM policy of the README's "Running on Alibaba Cloud" allows exactly the actions the
    /// client calls, each under its product.
    #[test]
    fn the_readme_ram_policy_lists_exactly_the_actions_called() {
        let readme = include_str!("../../README.md");
        let section = readme.split("## Running on Alibaba Cloud").nth(1).expect("the README has the section");
        let policy = section.split("```json").nth(1).and_then(|s| s.split("```").next()).expect("a json block");
        let doc: serde_json::Value = serde_json::from_str(policy).expect("the policy is JSON");
        let listed: std::collections::BTreeSet<String> =
            doc["Statement"][0]["Action"].as_array().expect("Action list").iter().map(|a| a.as_str().unwrap().to_string()).collect();
        let called: std::collections::BTreeSet<String> = ACTIONS.iter().map(|a| format!("{}:{a}", Product::of(a).name())).collect();
        assert_eq!(listed, called);
        // RunInstances with RamRoleName: passing the pool's role to its instances.
        assert_eq!(doc["Statement"][1]["Action"], serde_json::json!(["ram:PassRole"]));
    }

    #[test]
    fn eni_decodes_the_service_shape() {
        let body = r#"{
            "RequestId": "r1", "TotalCount": 1, "NextToken": "",
            "NetworkInterfaceSets": {"NetworkInterfaceSet": [{
                "NetworkInterfaceId": "eni-1", "Status": "InUse", "Type": "Member",
                "VpcId": "vpc-1", "VSwitchId": "vsw-1", "ZoneId": "local-1a",
                "PrivateIpAddress": "10.0.0.5", "MacAddress": "02:00:00:00:00:05",
                "InstanceId": "i-1",
                "SecurityGroupIds": {"SecurityGroupId": ["sg-1"]},
                "PrivateIpSets": {"PrivateIpSet": [
                    {"PrivateIpAddress": "10.0.0.5", "Primary": true},
                    {"PrivateIpAddress": "10.0.0.6", "Primary": false}]},
                "Ipv6Sets": {"Ipv6Set": [{"Ipv6Address": "fd00::5"}]},
                "Attachment": {"InstanceId": "i-1", "TrunkNetworkInterfaceId": "eni-t", "DeviceIndex": 7}
            }]}}"#;
        let resp: DescribeNetworkInterfacesResponse = serde_json::from_str(body).unwrap();
        let eni = resp.network_interface_sets.items[0].to_model().unwrap();
        assert_eq!(eni.kind, model::EniKind::Member);
        assert_eq!(eni.secondary_ips, vec!["10.0.0.6".parse::<Ipv4Addr>().unwrap()]);
        assert_eq!(eni.vlan_id, Some(7));
        assert_eq!(eni.trunk_eni_id.as_deref(), Some("eni-t"));
        // and back: the local cloud writes what the client reads
        let again = NetworkInterfaceSet::from_model(&eni).to_model().unwrap();
        assert_eq!(again, eni);
    }

    #[test]
    fn create_eni_response_is_flat() {
        let eni = model::NetworkInterface {
            id: "eni-2".into(),
            kind: model::EniKind::Secondary,
            status: model::EniStatus::Available,
            mac: "02:00:00:00:00:09".into(),
            vpc_id: "vpc-1".into(),
            vswitch_id: "vsw-1".into(),
            zone_id: "z".into(),
            security_group_ids: vec!["sg-1".into()],
            instance_id: None,
            trunk_eni_id: None,
            vlan_id: None,
            primary_ip: "10.0.0.9".parse().unwrap(),
            secondary_ips: vec![],
            ipv6_addresses: vec![],
            description: String::new(),
        };
        let resp = CreateNetworkInterfaceResponse { request_id: "r".into(), eni: NetworkInterfaceSet::from_model(&eni) };
        let json = serde_json::to_value(&resp).unwrap();
        assert_eq!(json["NetworkInterfaceId"], "eni-2");
        assert_eq!(json["SecurityGroupIds"]["SecurityGroupId"][0], "sg-1");
        assert!(json.get("Attachment").is_none());
    }

    #[test]
    fn products_route_actions() {
        assert_eq!(Product::of("CreateVSwitch"), Product::Vpc);
        assert_eq!(Product::of("AssignPrivateIpAddresses"), Product::Ecs);
        assert_eq!(Product::of("CreateFileSystem"), Product::Nas);
        assert_eq!(Product::Ecs.version(), "2014-05-26");
    }

    #[test]
    fn vpcs_vswitches_and_rules_refuse_what_is_not_theirs() {
        let vpc = |cidr: &str, v6: &str| VpcItem { vpc_id: "vpc-1".into(), vpc_name: "n".into(), cidr_block: cidr.into(), ipv6_cidr_block: v6.into(), status: "Available".into() };
        assert_eq!(vpc("10.0.0.0/16", "").to_model().unwrap().ipv6_cidr_block, None);
        assert!(vpc("10.0.0.0/16", "fd00::/56").to_model().unwrap().ipv6_cidr_block.is_some());
        assert!(vpc("10.0.0.0/33", "").to_model().is_none());
        assert!(vpc("10.0.0.0/16", "10.0.0.0/8").to_model().is_none());
        let rule = |ports: &str, priority: &str| Permission {
            ip_protocol: "TCP".into(),
            port_range: ports.into(),
            source_cidr_ip: "0.0.0.0/0".into(),
            dest_cidr_ip: String::new(),
            policy: "Drop".into(),
            priority: priority.into(),
            direction: "ingress".into(),
            ..Default::default()
        };
        let r = rule("80/443", "1").to_rule().unwrap();
        assert_eq!((r.ports, r.policy, r.priority), (Some((80, 443)), model::Policy::Drop, 1));
        assert_eq!(rule("-1/-1", "100").to_rule().unwrap().ports, None);
        assert!(rule("70000/1", "1").to_rule().is_none());
        assert!(rule("80/443", "300").to_rule().is_none());
    }

    #[test]
    fn every_peer_kind_of_a_rule_is_decoded() {
        // Rules as DescribeSecurityGroupAttribute lists them: IPv4, IPv6, group and prefix-list peers.
        let body = r#"{"RequestId": "r", "SecurityGroupId": "sg-1", "SecurityGroupName": "n", "VpcId": "vpc-1", "NextToken": "",
            "Permissions": {"Permission": [
                {"IpProtocol": "TCP", "PortRange": "22/22", "SourceCidrIp": "10.0.0.0/8", "Policy": "Accept", "Priority": "1", "Direction": "ingress"},
                {"IpProtocol": "ALL", "PortRange": "-1/-1", "Ipv6SourceCidrIp": "2001:db8::/32", "Policy": "Accept", "Priority": "1", "Direction": "ingress"},
                {"IpProtocol": "TCP", "PortRange": "80/80", "SourceGroupId": "sg-2", "Policy": "Accept", "Priority": "1", "Direction": "ingress"},
                {"IpProtocol": "UDP", "PortRange": "53/53", "DestPrefixListId": "pl-1", "Policy": "Drop", "Priority": "5", "Direction": "egress"}
            ]}}"#;
        let r: DescribeSecurityGroupAttributeResponse = serde_json::from_str(body).unwrap();
        let p = &r.permissions.items;
        assert!(p[0].to_referenced().is_none() && p[0].to_rule().is_some());
        assert!(p[1].to_referenced().is_none() && p[1].to_rule().unwrap().peer_cidr.is_ipv6());
        assert_eq!(p[2].to_referenced().unwrap().peer, model::RulePeer::Group("sg-2".into()));
        let egress = p[3].to_referenced().unwrap();
        assert_eq!((egress.peer, egress.direction), (model::RulePeer::PrefixList("pl-1".into()), model::Direction::Egress));
    }

    #[test]
    fn a_snapshot_reads_as_the_service_answers_it() {
        let body = r#"{"SnapshotId":"s-1","SnapshotName":"n","Progress":"40%","SourceDiskId":"d-1","SourceDiskSize":"20","Status":"progressing","CreationTime":"2026-12-07T12:00:00Z","Available":false}"#;
        let item: SnapshotItem = serde_json::from_str(body).unwrap();
        let s = item.to_model().unwrap();
        assert_eq!((s.progress_percent, s.source_disk_size_gib, s.status), (40, 20, model::SnapshotStatus::Progressing));
        let back = SnapshotItem::from_model(&s, true);
        assert_eq!((back.progress.as_str(), back.source_disk_size.as_str(), back.usage.as_str(), back.available), ("40%", "20", "disk", false));
        assert_eq!(model::SnapshotStatus::parse_open("copying"), model::SnapshotStatus::Unknown);
    }

    #[test]
    fn an_unknown_disk_status_is_kept_apart_and_the_system_disk_is_told_apart() {
        let item = |status: &str, kind: &str| DiskItem {
            disk_id: "d-1".into(),
            disk_name: String::new(),
            zone_id: "z".into(),
            category: "cloud_essd".into(),
            performance_level: "PL1".into(),
            size: 40,
            status: status.into(),
            instance_id: "i-1".into(),
            device: String::new(),
            serial_number: "1".into(),
            kind: kind.into(),
            source_snapshot_id: String::new(),
            description: String::new(),
        };
        assert_eq!(item("ReIniting", "data").to_model().unwrap().status, model::DiskStatus::ReIniting);
        assert_eq!(item("Migrating", "data").to_model().unwrap().status, model::DiskStatus::Unknown);
        let system = item("In_use", "system").to_model().unwrap();
        assert!(system.system && system.status == model::DiskStatus::InUse);
        assert!(!item("In_use", "data").to_model().unwrap().system);
        assert_eq!(DiskItem::from_model(&system).kind, "system");
    }

    #[test]
    fn instance_type_round_trips() {
        for t in crate::catalogue::instance_types() {
            assert_eq!(InstanceTypeItem::from_model(&t).to_model(), t);
        }
    }
}

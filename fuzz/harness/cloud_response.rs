//! The cloud client's decoding of an HTTP answer: the first line is `<Action> <HTTP status>`, the
//! rest the body. A 2xx body is decoded as that action's response and turned into the model as
//! the client does; any other status as the service's error body.
//! Shared by the fuzz target and the corpus test of `berth-cloud`.

use berth_cloud::client::decode_response;
use berth_cloud::wire;

pub fn run(data: &[u8]) {
    let split = data.iter().position(|b| *b == b'\n').unwrap_or(data.len());
    let (head, body) = data.split_at(split);
    let body = body.get(1..).unwrap_or_default();
    let head = String::from_utf8_lossy(head);
    let mut words = head.split_whitespace();
    let action = words.next().unwrap_or_default();
    let status: u16 = words.next().and_then(|s| s.parse().ok()).unwrap_or(200);
    let _ = wire::Product::of(action);

    macro_rules! decode {
        ($t:ty, |$r:ident| $use:expr) => {{
            let (result, _retry) = decode_response::<$t>(action, status, body);
            match result {
                Ok($r) => {
                    let _ = $use;
                }
                Err(e) => {
                    let _ = (e.to_string(), e.code(), e.api().map(|a| (a.is_retryable(), a.is_quota(), a.is_not_found())));
                }
            }
        }};
    }
    match action {
        "DescribeNetworkInterfaces" => decode!(wire::DescribeNetworkInterfacesResponse, |r| r.network_interface_sets.items.iter().map(wire::NetworkInterfaceSet::to_model).count()),
        "CreateNetworkInterface" => decode!(wire::CreateNetworkInterfaceResponse, |r| r.eni.to_model()),
        "AssignPrivateIpAddresses" => decode!(wire::AssignPrivateIpAddressesResponse, |r| r.assigned_private_ip_addresses_set.private_ip_set.items.len()),
        "AssignIpv6Addresses" => decode!(wire::AssignIpv6AddressesResponse, |r| r.ipv6_sets.items.len()),
        "RunInstances" => decode!(wire::RunInstancesResponse, |r| r.instance_id_sets.items.len()),
        "DescribeInstances" => decode!(wire::DescribeInstancesResponse, |r| r.instances.items.iter().map(wire::InstanceItem::to_model).count()),
        "DescribeInstanceTypes" => decode!(wire::DescribeInstanceTypesResponse, |r| r.instance_types.items.iter().map(wire::InstanceTypeItem::to_model).count()),
        "CreateVpc" => decode!(wire::CreateVpcResponse, |r| r.vpc_id),
        "DescribeVpcs" => decode!(wire::DescribeVpcsResponse, |r| r.vpcs.items.iter().map(wire::VpcItem::to_model).count()),
        "CreateVSwitch" => decode!(wire::CreateVSwitchResponse, |r| r.vswitch_id),
        "DescribeVSwitches" => decode!(wire::DescribeVSwitchesResponse, |r| r.vswitches.items.iter().map(wire::VSwitchItem::to_model).count()),
        "CreateSecurityGroup" => decode!(wire::CreateSecurityGroupResponse, |r| r.security_group_id),
        "DescribeSecurityGroupAttribute" => decode!(wire::DescribeSecurityGroupAttributeResponse, |r| r.permissions.items.iter().map(wire::Permission::to_rule).count()),
        "DescribeSecurityGroups" => decode!(wire::DescribeSecurityGroupsResponse, |r| r.security_groups.items.len()),
        "CreateDisk" => decode!(wire::CreateDiskResponse, |r| r.disk_id),
        "DescribeDisks" => decode!(wire::DescribeDisksResponse, |r| r.disks.items.iter().map(wire::DiskItem::to_model).count()),
        "CreateFileSystem" => decode!(wire::CreateFileSystemResponse, |r| r.file_system_id),
        "CreateMountTarget" => decode!(wire::CreateMountTargetResponse, |r| r.mount_target_domain),
        "DescribeFileSystems" => decode!(wire::DescribeFileSystemsResponse, |r| r.file_systems.items.iter().map(wire::FileSystemItem::to_model).count()),
        _ => decode!(wire::RequestIdOnly, |r| r.request_id),
    }
}

"""Drives the local cloud with Alibaba Cloud's official Python SDKs, unchanged: their default
signature (v3, ACS3-HMAC-SHA256), their parameter encoding (Permissions.N.*, Tag.N.*, SystemDisk.*,
no RegionId where the API model has none) and their response decoding.

Usage: official_sdk.py ECS_ENDPOINT VPC_ENDPOINT NAS_ENDPOINT (host:port each); the key id and
secret in $BERTH_TEST_KEY_ID / $BERTH_TEST_KEY_SECRET, and optionally an STS token in
$BERTH_TEST_TOKEN. Prints one line per call and exits non-zero at the first surprise.
"""

import os
import sys
import time

from alibabacloud_ecs20140526 import models as ecs_models
from alibabacloud_ecs20140526.client import Client as Ecs
from alibabacloud_nas20170626 import models as nas_models
from alibabacloud_nas20170626.client import Client as Nas
from alibabacloud_tea_openapi import utils_models as openapi
from alibabacloud_vpc20160428 import models as vpc_models
from alibabacloud_vpc20160428.client import Client as Vpc

REGION = "local-1"
ZONE = "local-1a"


def config(endpoint, secret=None):
    c = openapi.Config(
        access_key_id=os.environ["BERTH_TEST_KEY_ID"],
        access_key_secret=secret or os.environ["BERTH_TEST_KEY_SECRET"],
        endpoint=endpoint,
        protocol="http",
        region_id=REGION,
    )
    token = os.environ.get("BERTH_TEST_TOKEN")
    if token:
        c.security_token = token
    return c


def step(name, fn):
    try:
        out = fn()
    except Exception as e:  # the SDK's exception carries the service's code
        print(f"FAIL {name}: {getattr(e, 'code', '')} {e}", flush=True)
        sys.exit(1)
    print(f"ok {name}", flush=True)
    return out


def until(name, fn, want):
    """Polls `fn` until it returns `want` (a state the local cloud reaches within a few seconds)."""
    got = None
    for _ in range(100):
        got = fn()
        if got == want:
            print(f"ok {name} is {want}", flush=True)
            return
        time.sleep(0.1)
    print(f"FAIL {name}: still {got}, wanted {want}", flush=True)
    sys.exit(1)


def refused(name, code, fn):
    try:
        fn()
    except Exception as e:
        got = getattr(e, "code", None)
        if got != code:
            print(f"FAIL {name}: wanted {code}, got {got}: {e}", flush=True)
            sys.exit(1)
        print(f"ok {name} refused with {code}", flush=True)
        return
    print(f"FAIL {name}: accepted, wanted {code}", flush=True)
    sys.exit(1)


def main():
    ecs_ep, vpc_ep, nas_ep = sys.argv[1:4]
    ecs, vpc, nas = Ecs(config(ecs_ep)), Vpc(config(vpc_ep)), Nas(config(nas_ep))

    vpc_id = step("CreateVpc", lambda: vpc.create_vpc(vpc_models.CreateVpcRequest(region_id=REGION, cidr_block="10.70.0.0/16", vpc_name="sdk", enable_ipv_6=True))).body.vpc_id
    vpcs = step("DescribeVpcs", lambda: vpc.describe_vpcs(vpc_models.DescribeVpcsRequest(region_id=REGION, vpc_id=vpc_id))).body
    assert [v.vpc_id for v in vpcs.vpcs.vpc] == [vpc_id], vpcs
    vsw_id = step(
        "CreateVSwitch",
        lambda: vpc.create_vswitch(vpc_models.CreateVSwitchRequest(region_id=REGION, zone_id=ZONE, vpc_id=vpc_id, cidr_block="10.70.1.0/24", ipv_6cidr_block=1)),
    ).body.v_switch_id
    vsws = step("DescribeVSwitches", lambda: vpc.describe_vswitches(vpc_models.DescribeVSwitchesRequest(region_id=REGION, vpc_id=vpc_id))).body
    assert [v.v_switch_id for v in vsws.v_switches.v_switch] == [vsw_id], vsws

    sg = step("CreateSecurityGroup", lambda: ecs.create_security_group(ecs_models.CreateSecurityGroupRequest(region_id=REGION, vpc_id=vpc_id))).body.security_group_id
    perms = [
        ecs_models.AuthorizeSecurityGroupRequestPermissions(ip_protocol="TCP", port_range="22/22", source_cidr_ip="10.0.0.0/8", policy="accept", priority="1"),
        ecs_models.AuthorizeSecurityGroupRequestPermissions(ip_protocol="UDP", port_range="53/53", source_cidr_ip="10.1.0.0/16"),
    ]
    step("AuthorizeSecurityGroup (Permissions.N)", lambda: ecs.authorize_security_group(ecs_models.AuthorizeSecurityGroupRequest(region_id=REGION, security_group_id=sg, permissions=perms)))
    egress = [ecs_models.AuthorizeSecurityGroupEgressRequestPermissions(ip_protocol="ALL", port_range="-1/-1", dest_cidr_ip="0.0.0.0/0")]
    step("AuthorizeSecurityGroupEgress", lambda: ecs.authorize_security_group_egress(ecs_models.AuthorizeSecurityGroupEgressRequest(region_id=REGION, security_group_id=sg, permissions=egress)))
    attr = step(
        "DescribeSecurityGroupAttribute",
        lambda: ecs.describe_security_group_attribute(ecs_models.DescribeSecurityGroupAttributeRequest(region_id=REGION, security_group_id=sg, direction="ingress")),
    ).body
    ports = sorted(p.port_range for p in attr.permissions.permission)
    assert ports == ["22/22", "53/53"], ports
    revoke = [ecs_models.RevokeSecurityGroupRequestPermissions(ip_protocol="UDP", port_range="53/53", source_cidr_ip="10.1.0.0/16")]
    step("RevokeSecurityGroup (Permissions.N)", lambda: ecs.revoke_security_group(ecs_models.RevokeSecurityGroupRequest(region_id=REGION, security_group_id=sg, permissions=revoke)))

    types = step("DescribeInstanceTypes (no RegionId)", lambda: ecs.describe_instance_types(ecs_models.DescribeInstanceTypesRequest(instance_types=["ecs.g7.large"]))).body
    assert [t.instance_type_id for t in types.instance_types.instance_type] == ["ecs.g7.large"], types

    run = ecs_models.RunInstancesRequest(
        region_id=REGION,
        image_id="berth-node",
        instance_type="ecs.g7.large",
        v_switch_id=vsw_id,
        security_group_ids=[sg],
        amount=1,
        instance_name="sdk",
        system_disk=ecs_models.RunInstancesRequestSystemDisk(category="cloud_essd", size="40"),
        tag=[ecs_models.RunInstancesRequestTag(key="berth:pool", value="sdk")],
        client_token=f"sdk-run-{os.getpid()}-{time.time_ns()}",
        ram_role_name="berth-node",
    )
    instance = step("RunInstances (image, system disk, tags, RAM role)", lambda: ecs.run_instances(run)).body.instance_id_sets.instance_id_set[0]
    found = step("DescribeInstances", lambda: ecs.describe_instances(ecs_models.DescribeInstancesRequest(region_id=REGION, instance_ids=f'["{instance}"]'))).body
    assert [i.instance_id for i in found.instances.instance] == [instance], found

    def instance_status():
        r = ecs.describe_instances(ecs_models.DescribeInstancesRequest(region_id=REGION, instance_ids=f'["{instance}"]'))
        return r.body.instances.instance[0].status

    until("the instance", instance_status, "Running")

    eni = step(
        "CreateNetworkInterface",
        lambda: ecs.create_network_interface(ecs_models.CreateNetworkInterfaceRequest(region_id=REGION, v_switch_id=vsw_id, security_group_ids=[sg])),
    ).body.network_interface_id
    enis = step(
        "DescribeNetworkInterfaces",
        lambda: ecs.describe_network_interfaces(ecs_models.DescribeNetworkInterfacesRequest(region_id=REGION, network_interface_id=[eni])),
    ).body
    assert [e.network_interface_id for e in enis.network_interface_sets.network_interface_set] == [eni], enis

    def eni_status():
        r = ecs.describe_network_interfaces(ecs_models.DescribeNetworkInterfacesRequest(region_id=REGION, network_interface_id=[eni]))
        return r.body.network_interface_sets.network_interface_set[0].status

    step("AttachNetworkInterface", lambda: ecs.attach_network_interface(ecs_models.AttachNetworkInterfaceRequest(region_id=REGION, network_interface_id=eni, instance_id=instance)))
    until("the ENI", eni_status, "InUse")
    ips = step(
        "AssignPrivateIpAddresses",
        lambda: ecs.assign_private_ip_addresses(ecs_models.AssignPrivateIpAddressesRequest(region_id=REGION, network_interface_id=eni, secondary_private_ip_address_count=2)),
    ).body.assigned_private_ip_addresses_set.private_ip_set.private_ip_address
    assert len(ips) == 2, ips
    step(
        "UnassignPrivateIpAddresses",
        lambda: ecs.unassign_private_ip_addresses(ecs_models.UnassignPrivateIpAddressesRequest(region_id=REGION, network_interface_id=eni, private_ip_address=ips)),
    )
    v6 = step(
        "AssignIpv6Addresses",
        lambda: ecs.assign_ipv_6addresses(ecs_models.AssignIpv6AddressesRequest(region_id=REGION, network_interface_id=eni, ipv_6address_count=1)),
    ).body.ipv_6sets.ipv_6address
    assert len(v6) == 1, v6
    step(
        "UnassignIpv6Addresses",
        lambda: ecs.unassign_ipv_6addresses(ecs_models.UnassignIpv6AddressesRequest(region_id=REGION, network_interface_id=eni, ipv_6address=v6)),
    )
    step(
        "ModifyNetworkInterfaceAttribute",
        lambda: ecs.modify_network_interface_attribute(ecs_models.ModifyNetworkInterfaceAttributeRequest(region_id=REGION, network_interface_id=eni, security_group_id=[sg])),
    )
    r = ecs.describe_network_interfaces(ecs_models.DescribeNetworkInterfacesRequest(region_id=REGION, network_interface_id=[eni]))
    groups = r.body.network_interface_sets.network_interface_set[0].security_group_ids.security_group_id
    assert groups == [sg], groups
    step("DetachNetworkInterface", lambda: ecs.detach_network_interface(ecs_models.DetachNetworkInterfaceRequest(region_id=REGION, network_interface_id=eni, instance_id=instance)))
    until("the ENI", eni_status, "Available")
    step("DeleteNetworkInterface", lambda: ecs.delete_network_interface(ecs_models.DeleteNetworkInterfaceRequest(region_id=REGION, network_interface_id=eni)))

    def essd_stock():
        r = ecs.describe_available_resource(
            ecs_models.DescribeAvailableResourceRequest(region_id=REGION, zone_id=ZONE, destination_resource="DataDisk", resource_type="disk", data_disk_category="cloud_essd")
        )
        zones = r.body.available_zones.available_zone
        assert [z.zone_id for z in zones] == [ZONE], zones
        kinds = zones[0].available_resources.available_resource
        assert [k.type for k in kinds] == ["DataDisk"], kinds
        found = kinds[0].supported_resources.supported_resource
        assert [(s.value, s.status, s.unit) for s in found] == [("cloud_essd", "Available", "GiB")], found
        assert 1 <= found[0].min <= 20 <= found[0].max, (found[0].min, found[0].max)
        return r

    step("DescribeAvailableResource (DataDisk)", essd_stock)
    disk = step(
        "CreateDisk",
        lambda: ecs.create_disk(ecs_models.CreateDiskRequest(region_id=REGION, zone_id=ZONE, size=20, disk_category="cloud_essd")),
    ).body.disk_id
    disks = step("DescribeDisks", lambda: ecs.describe_disks(ecs_models.DescribeDisksRequest(region_id=REGION, disk_ids=f'["{disk}"]'))).body
    assert [d.disk_id for d in disks.disks.disk] == [disk], disks

    def disk_status():
        return ecs.describe_disks(ecs_models.DescribeDisksRequest(region_id=REGION, disk_ids=f'["{disk}"]')).body.disks.disk[0].status

    step("AttachDisk (no RegionId)", lambda: ecs.attach_disk(ecs_models.AttachDiskRequest(disk_id=disk, instance_id=instance)))
    until("the disk", disk_status, "In_use")
    step("DetachDisk (no RegionId)", lambda: ecs.detach_disk(ecs_models.DetachDiskRequest(disk_id=disk, instance_id=instance)))
    until("the disk", disk_status, "Available")
    step("ModifyDiskSpec (no RegionId)", lambda: ecs.modify_disk_spec(ecs_models.ModifyDiskSpecRequest(disk_id=disk, performance_level="PL0")))
    snap = step(
        "CreateSnapshot (no RegionId)",
        lambda: ecs.create_snapshot(ecs_models.CreateSnapshotRequest(disk_id=disk, snapshot_name="sdk-snap")),
    ).body.snapshot_id

    def snapshot_status():
        r = ecs.describe_snapshots(ecs_models.DescribeSnapshotsRequest(region_id=REGION, snapshot_ids=f'["{snap}"]'))
        return r.body.snapshots.snapshot[0].status

    step("DescribeSnapshots", snapshot_status)
    until("the snapshot", snapshot_status, "accomplished")
    step("DeleteSnapshot (no RegionId)", lambda: ecs.delete_snapshot(ecs_models.DeleteSnapshotRequest(snapshot_id=snap, force=True)))
    step("ResizeDisk (no RegionId)", lambda: ecs.resize_disk(ecs_models.ResizeDiskRequest(disk_id=disk, new_size=30)))
    step("DeleteDisk (no RegionId)", lambda: ecs.delete_disk(ecs_models.DeleteDiskRequest(disk_id=disk)))

    fs = step(
        "CreateFileSystem",
        lambda: nas.create_file_system(nas_models.CreateFileSystemRequest(protocol_type="NFS", storage_type="Performance", zone_id=ZONE, file_system_type="standard")),
    ).body.file_system_id
    refused(
        "CreateMountTarget without AccessGroupName",
        "MissingParameter",
        lambda: nas.create_mount_target(nas_models.CreateMountTargetRequest(file_system_id=fs, network_type="Vpc", vpc_id=vpc_id, v_switch_id=vsw_id)),
    )
    refused(
        "CreateMountTarget with an unknown access group",
        "InvalidAccessGroup.NotFound",
        lambda: nas.create_mount_target(nas_models.CreateMountTargetRequest(file_system_id=fs, network_type="Vpc", vpc_id=vpc_id, v_switch_id=vsw_id, access_group_name="nope")),
    )
    step(
        "CreateMountTarget (AccessGroupName)",
        lambda: nas.create_mount_target(
            nas_models.CreateMountTargetRequest(file_system_id=fs, network_type="Vpc", vpc_id=vpc_id, v_switch_id=vsw_id, access_group_name="DEFAULT_VPC_GROUP_NAME")
        ),
    )
    fss = step("DescribeFileSystems", lambda: nas.describe_file_systems(nas_models.DescribeFileSystemsRequest(file_system_id=fs))).body
    assert [f.file_system_id for f in fss.file_systems.file_system] == [fs], fss
    step("DeleteFileSystem", lambda: nas.delete_file_system(nas_models.DeleteFileSystemRequest(file_system_id=fs)))

    step(
        "RevokeSecurityGroupEgress (Permissions.N)",
        lambda: ecs.revoke_security_group_egress(
            ecs_models.RevokeSecurityGroupEgressRequest(
                region_id=REGION,
                security_group_id=sg,
                permissions=[ecs_models.RevokeSecurityGroupEgressRequestPermissions(ip_protocol="ALL", port_range="-1/-1", dest_cidr_ip="0.0.0.0/0")],
            )
        ),
    )
    refused("DeleteSecurityGroup of a group in use", "DependencyViolation", lambda: ecs.delete_security_group(ecs_models.DeleteSecurityGroupRequest(region_id=REGION, security_group_id=sg)))
    step("DeleteInstances", lambda: ecs.delete_instances(ecs_models.DeleteInstancesRequest(region_id=REGION, instance_id=[instance], force=True)))


    def instances_left():
        r = ecs.describe_instances(ecs_models.DescribeInstancesRequest(region_id=REGION, instance_ids=f'["{instance}"]'))
        return len(r.body.instances.instance)

    until("the instances left", instances_left, 0)
    step("DeleteSecurityGroup", lambda: ecs.delete_security_group(ecs_models.DeleteSecurityGroupRequest(region_id=REGION, security_group_id=sg)))

    # What the real cloud refuses, refused here with its code.
    wrong = Ecs(config(ecs_ep, secret="not-the-secret"))
    refused("a wrong secret", "SignatureDoesNotMatch", lambda: wrong.describe_instance_types(ecs_models.DescribeInstanceTypesRequest()))
    if vpc_ep != ecs_ep:
        to_ecs = Vpc(config(ecs_ep))
        refused("a VPC call sent to the ECS endpoint", "InvalidAction.NotFound", lambda: to_ecs.describe_vpcs(vpc_models.DescribeVpcsRequest(region_id=REGION)))
    print("sdk: every call answered as the SDK expects", flush=True)


if __name__ == "__main__":
    main()

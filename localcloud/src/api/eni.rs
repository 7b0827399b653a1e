//! Elastic network interfaces and their private IPv4 and IPv6 addresses.

use std::net::{Ipv4Addr, Ipv6Addr};

use berth_cloud::catalogue;
use berth_cloud::error::code;
use berth_cloud::model::{EniKind, EniStatus, InstanceStatus, NetworkInterface};
use berth_cloud::wire;

use super::params::invalid;
use super::{ApiFailure, ApiResult, Ctx, Outcome, Params, Pending, by_token, changed, instance, page, remember_token, reply, vpc};
use crate::addressing;
use crate::state::State;

pub fn eni<'s>(state: &'s State, id: &str) -> ApiResult<&'s NetworkInterface> {
    state
        .enis
        .get(id)
        .ok_or_else(|| ApiFailure::not_found(code::INVALID_ENI_ID, format!("The specified network interface \"{id}\" does not exist.")))
}

/// A locally administered unicast MAC, unique in this local cloud.
pub fn new_mac(state: &mut State, ctx: &Ctx) -> String {
    state.next_serial += 1;
    let n = state.next_serial;
    let r = u16::from_str_radix(ctx.entropy.get(..4).unwrap_or("0"), 16).unwrap_or(0);
    format!("02:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", r >> 8, r & 0xff, (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff)
}

/// Detaching finished: the ENI is free again (a member ENI loses its trunk and VLAN).
pub fn finish_detach(e: &mut NetworkInterface) {
    e.status = EniStatus::Available;
    e.instance_id = None;
    if e.kind == EniKind::Member {
        e.kind = EniKind::Secondary;
    }
    e.trunk_eni_id = None;
    e.vlan_id = None;
}

fn invalid_state(e: &NetworkInterface, want: &str) -> ApiFailure {
    ApiFailure::forbidden(code::INVALID_ENI_STATE, format!("The network interface {} is {}; this operation needs it {want}.", e.id, e.status.as_str()))
}

pub fn create(state: &mut State, ctx: &Ctx, p: &Params<'_>) -> ApiResult<Outcome> {
    let id = match by_token(state, ctx, "CreateNetworkInterface", p) {
        Some(id) => id,
        None => {
            let vsw = vpc::vswitch(state, p.req("VSwitchId")?)?.clone();
            let groups = vpc::security_groups_of(state, p, &vsw)?;
            let kind = match p.opt("InstanceType").unwrap_or("Secondary") {
                "Secondary" => EniKind::Secondary,
                "Trunk" => EniKind::Trunk,
                other => return Err(invalid("InstanceType", other)),
            };
            let secondary_count = p.parse::<usize>("SecondaryPrivateIpAddressCount")?.unwrap_or(0);
            let max_per_eni = catalogue::instance_types().iter().map(|t| t.ipv4_per_eni).max().unwrap_or(1) as usize;
            if secondary_count + 1 > max_per_eni {
                return Err(ApiFailure::forbidden(code::ENI_IPV4_FULL, format!("{} addresses exceed the {max_per_eni} an ENI may hold.", secondary_count + 1)));
            }
            let primary = match p.parse::<Ipv4Addr>("PrimaryIpAddress")? {
                Some(ip) => {
                    check_explicit_ip(state, &vsw, ip)?;
                    ip
                }
                None => vpc::take_ips(state, ctx, &vsw.id, 1)?[0],
            };
            let mut used = vpc::used_ips(state, &vsw.id);
            used.insert(primary);
            let secondaries = addressing::pick_free(vsw.cidr_block, &used, secondary_count, ctx.vswitch_ip_limit.get(&vsw.id).copied())
                .ok_or_else(|| ApiFailure::forbidden(code::VSWITCH_IP_NOT_ENOUGH, format!("The specified VSwitch \"{}\" has not enough IpAddress.", vsw.id)))?;
            let ipv6_count = p.parse::<usize>("Ipv6AddressCount")?.unwrap_or(0);
            let ipv6 = take_ipv6(state, &vsw, ipv6_count)?;
            let id = super::new_id(state, ctx, "eni");
            let mac = new_mac(state, ctx);
            state.enis.insert(
                id.clone(),
                NetworkInterface {
                    id: id.clone(),
                    kind,
                    status: EniStatus::Available,
                    mac,
                    vpc_id: vsw.vpc_id.clone(),
                    vswitch_id: vsw.id.clone(),
                    zone_id: vsw.zone_id.clone(),
                    security_group_ids: groups,
                    instance_id: None,
                    trunk_eni_id: None,
                    vlan_id: None,
                    primary_ip: primary,
                    secondary_ips: secondaries,
                    ipv6_addresses: ipv6,
                    description: p.opt("Description").unwrap_or_default().to_string(),
                },
            );
            remember_token(state, ctx, "CreateNetworkInterface", p, &id);
            vpc::refresh_available(state, ctx);
            id
        }
    };
    let eni = eni(state, &id)?;
    changed(wire::CreateNetworkInterfaceResponse { request_id: ctx.request_id.clone(), eni: wire::NetworkInterfaceSet::from_model(eni) }, vec![])
}

fn check_explicit_ip(state: &State, vsw: &berth_cloud::model::VSwitch, ip: Ipv4Addr) -> ApiResult<()> {
    if !addressing::is_usable(vsw.cidr_block, ip) {
        return Err(ApiFailure::forbidden(code::IP_INVALID, format!("The address {ip} is not a usable address of vSwitch {} ({}).", vsw.id, vsw.cidr_block)));
    }
    if vpc::used_ips(state, &vsw.id).contains(&ip) {
        return Err(ApiFailure::forbidden(code::IP_ASSIGNED, format!("The address {ip} is already assigned in vSwitch {}.", vsw.id)));
    }
    Ok(())
}

fn take_ipv6(state: &State, vsw: &berth_cloud::model::VSwitch, count: usize) -> ApiResult<Vec<Ipv6Addr>> {
    if count == 0 {
        return Ok(Vec::new());
    }
    let Some(block) = vsw.ipv6_cidr_block else {
        return Err(ApiFailure::bad(code::INVALID_PARAMETER, format!("vSwitch {} has no IPv6 block; create it with Ipv6CidrBlock to assign IPv6 addresses.", vsw.id)));
    };
    let used: std::collections::HashSet<Ipv6Addr> = state.enis.values().flat_map(|e| e.ipv6_addresses.iter().copied()).collect();
    let base = u128::from(block.network());
    Ok((1u128..).map(|n| Ipv6Addr::from(base + n)).filter(|a| !used.contains(a)).take(count).collect())
}

/// The instance type whose per-ENI quotas apply to an ENI: its instance's (a member: the trunk's).
fn quota_type(state: &State, e: &NetworkInterface) -> berth_cloud::model::InstanceType {
    e.instance_id
        .as_ref()
        .and_then(|i| state.instances.get(i))
        .and_then(|i| catalogue::instance_type(&i.instance_type))
        .unwrap_or_else(|| catalogue::instance_types().into_iter().max_by_key(|t| t.ipv4_per_eni).expect("catalogue is not empty"))
}

pub fn attach(state: &mut State, ctx: &Ctx, p: &Params<'_>) -> ApiResult<Outcome> {
    let e = eni(state, p.req("NetworkInterfaceId")?)?.clone();
    let inst = instance::instance(state, p.req("InstanceId")?)?.clone();
    let trunk = p.opt("TrunkNetworkInstanceId");
    if !matches!(inst.status, InstanceStatus::Running | InstanceStatus::Stopped) {
        return Err(ApiFailure::forbidden(code::INCORRECT_INSTANCE_STATUS, format!("The instance {} is {}; wait until it is Running.", inst.id, inst.status.as_str())));
    }
    if e.status != EniStatus::Available {
        return Err(invalid_state(&e, "Available"));
    }
    if e.kind == EniKind::Primary {
        return Err(ApiFailure::forbidden(code::INVALID_ENI_TYPE, format!("{} is a primary network interface and cannot be attached.", e.id)));
    }
    if e.zone_id != inst.zone_id {
        return Err(ApiFailure::forbidden(code::ZONE_MISMATCH, format!("The network interface {} is in {} but the instance {} is in {}.", e.id, e.zone_id, inst.id, inst.zone_id)));
    }
    if e.vpc_id != inst.vpc_id {
        return Err(ApiFailure::forbidden(code::VPC_MISMATCH, format!("The network interface {} is in {} but the instance {} is in {}.", e.id, e.vpc_id, inst.id, inst.vpc_id)));
    }
    let t = instance::instance_type(&inst.instance_type)?;
    let on_instance = |kind_filter: &dyn Fn(&NetworkInterface) -> bool| {
        state.enis.values().filter(|x| x.instance_id.as_deref() == Some(inst.id.as_str()) && kind_filter(x)).count() as u32
    };
    let mut vlan = None;
    match trunk {
        None => {
            let count = on_instance(&|x| x.kind != EniKind::Member);
            if count >= t.eni_quota {
                return Err(ApiFailure::forbidden(
                    code::ENI_PER_INSTANCE_LIMIT,
                    format!("The instance {} of type {} already holds {count} of its {} network interfaces.", inst.id, t.id, t.eni_quota),
                ));
            }
        }
        Some(trunk_id) => {
            if e.kind == EniKind::Trunk {
                return Err(ApiFailure::forbidden(code::INVALID_ENI_TYPE, format!("{} is a trunk ENI and cannot be a member.", e.id)));
            }
            let tr = eni(state, trunk_id)?;
            if tr.kind != EniKind::Trunk || tr.instance_id.as_deref() != Some(inst.id.as_str()) || !t.supports_trunk() {
                return Err(ApiFailure::forbidden(code::INVALID_ENI_TYPE, format!("{trunk_id} is not a trunk ENI attached to {} (type {}).", inst.id, t.id)));
            }
            let members: Vec<u16> = state.enis.values().filter(|x| x.trunk_eni_id.as_deref() == Some(trunk_id)).filter_map(|x| x.vlan_id).collect();
            if members.len() as u32 >= t.member_eni_quota {
                return Err(ApiFailure::forbidden(code::MEMBER_ENI_LIMIT, format!("The trunk {trunk_id} already has {} of the {} member ENIs of type {}.", members.len(), t.member_eni_quota, t.id)));
            }
            vlan = (1u16..=4094).find(|v| !members.contains(v));
        }
    }
    let addresses = 1 + e.secondary_ips.len() as u32;
    if addresses > t.ipv4_per_eni {
        return Err(ApiFailure::forbidden(code::ENI_IPV4_FULL, format!("The network interface {} holds {addresses} addresses, more than the {} of type {}.", e.id, t.ipv4_per_eni, t.id)));
    }
    let entry = state.enis.get_mut(&e.id).expect("checked above");
    entry.status = EniStatus::Attaching;
    entry.instance_id = Some(inst.id.clone());
    if let Some(trunk_id) = trunk {
        entry.kind = EniKind::Member;
        entry.trunk_eni_id = Some(trunk_id.to_string());
        entry.vlan_id = vlan;
    }
    changed(super::request_id(ctx), vec![Pending::Eni(e.id)])
}

pub fn detach(state: &mut State, ctx: &Ctx, p: &Params<'_>) -> ApiResult<Outcome> {
    let e = eni(state, p.req("NetworkInterfaceId")?)?.clone();
    let instance_id = p.req("InstanceId")?;
    instance::instance(state, instance_id)?;
    if e.kind == EniKind::Primary {
        return Err(ApiFailure::forbidden(code::INVALID_ENI_TYPE, format!("{} is the primary network interface of {instance_id} and cannot be detached.", e.id)));
    }
    if e.status != EniStatus::InUse || e.instance_id.as_deref() != Some(instance_id) {
        return Err(ApiFailure::forbidden(code::INVALID_ENI_STATE, format!("The network interface {} is {} and not attached to {instance_id}.", e.id, e.status.as_str())));
    }
    state.enis.get_mut(&e.id).expect("checked above").status = EniStatus::Detaching;
    changed(super::request_id(ctx), vec![Pending::Eni(e.id)])
}

pub fn delete(state: &mut State, ctx: &Ctx, p: &Params<'_>) -> ApiResult<Outcome> {
    let e = eni(state, p.req("NetworkInterfaceId")?)?.clone();
    if e.status != EniStatus::Available || e.kind == EniKind::Primary {
        return Err(invalid_state(&e, "Available (detached)"));
    }
    state.enis.remove(&e.id);
    vpc::refresh_available(state, ctx);
    changed(super::request_id(ctx), vec![])
}

/// ModifyNetworkInterfaceAttribute: the ENI's security groups (`SecurityGroupId.N`, all of its
/// VPC) replaced in place, attached or not, and its description set; what is not sent stays.
pub fn modify_attribute(state: &mut State, ctx: &Ctx, p: &Params<'_>) -> ApiResult<Outcome> {
    let e = eni(state, p.req("NetworkInterfaceId")?)?.clone();
    let groups = p.list("SecurityGroupId");
    for g in &groups {
        if vpc::security_group(state, g)?.vpc_id != e.vpc_id {
            return Err(ApiFailure::forbidden(code::VPC_MISMATCH, format!("Security group {g} is not in the VPC {} of network interface {}.", e.vpc_id, e.id)));
        }
    }
    let e = state.enis.get_mut(&e.id).expect("looked up above");
    if !groups.is_empty() {
        e.security_group_ids = groups;
    }
    if let Some(d) = p.opt("Description") {
        e.description = d.to_string();
    }
    changed(super::request_id(ctx), vec![])
}

pub fn describe(state: &mut State, ctx: &Ctx, p: &Params<'_>) -> ApiResult<Outcome> {
    let ids = p.list("NetworkInterfaceId");
    let (inst, vsw, vpc_id, kind, status) = (p.opt("InstanceId"), p.opt("VSwitchId"), p.opt("VpcId"), p.opt("Type"), p.opt("Status"));
    let matching: Vec<&NetworkInterface> = if ids.is_empty() {
        state.enis.values().collect()
    } else {
        ids.iter().filter_map(|id| state.enis.get(id)).collect()
    };
    let all: Vec<&NetworkInterface> = matching
        .into_iter()
        .filter(|e| {
            inst.is_none_or(|v| e.instance_id.as_deref() == Some(v))
                && vsw.is_none_or(|v| v == e.vswitch_id)
                && vpc_id.is_none_or(|v| v == e.vpc_id)
                && kind.is_none_or(|v| v == e.kind.as_str())
                && status.is_none_or(|v| v == e.status.as_str())
        })
        .collect();
    let (chunk, next) = page(&all, p, 10, 500)?;
    let items: Vec<wire::NetworkInterfaceSet> = chunk.into_iter().map(wire::NetworkInterfaceSet::from_model).collect();
    reply(wire::DescribeNetworkInterfacesResponse { request_id: ctx.request_id.clone(), total_count: all.len() as u64, next_token: next, network_interface_sets: items.into() })
}

pub fn assign_private_ips(state: &mut State, ctx: &Ctx, p: &Params<'_>) -> ApiResult<Outcome> {
    let e = eni(state, p.req("NetworkInterfaceId")?)?.clone();
    let token_key = p.opt("ClientToken").map(|t| format!("AssignPrivateIpAddresses/{t}"));
    let assigned: Vec<Ipv4Addr> = match token_key.as_ref().and_then(|k| super::token_result(state, ctx, k)) {
        Some(list) => list.split(',').filter_map(|s| s.parse().ok()).collect(),
        None => {
            let explicit = p.list("PrivateIpAddress");
            let count = if explicit.is_empty() { p.req_parse::<usize>("SecondaryPrivateIpAddressCount")? } else { explicit.len() };
            if count == 0 {
                return Err(invalid("SecondaryPrivateIpAddressCount", "0"));
            }
            let t = quota_type(state, &e);
            let holds = 1 + e.secondary_ips.len();
            if holds + count > t.ipv4_per_eni as usize {
                return Err(ApiFailure::forbidden(
                    code::ENI_IPV4_FULL,
                    format!("The network interface {} holds {holds} of the {} private IPv4 addresses of type {}; {count} more do not fit.", e.id, t.ipv4_per_eni, t.id),
                ));
            }
            let vsw = vpc::vswitch(state, &e.vswitch_id)?.clone();
            let ips = if explicit.is_empty() {
                vpc::take_ips(state, ctx, &vsw.id, count)?
            } else {
                let mut ips = Vec::new();
                for text in &explicit {
                    let ip: Ipv4Addr = text.parse().map_err(|_| invalid("PrivateIpAddress", text))?;
                    check_explicit_ip(state, &vsw, ip)?;
                    if ips.contains(&ip) {
                        return Err(ApiFailure::forbidden(code::IP_ASSIGNED, format!("The address {ip} is listed twice.")));
                    }
                    ips.push(ip);
                }
                ips
            };
            state.enis.get_mut(&e.id).expect("checked above").secondary_ips.extend(ips.iter().copied());
            if let Some(k) = token_key {
                super::remember_token_key(state, ctx, k, ips.iter().map(ToString::to_string).collect::<Vec<_>>().join(","));
            }
            vpc::refresh_available(state, ctx);
            ips
        }
    };
    changed(
        wire::AssignPrivateIpAddressesResponse {
            request_id: ctx.request_id.clone(),
            assigned_private_ip_addresses_set: wire::AssignedPrivateIpAddressesSet { network_interface_id: e.id, private_ip_set: assigned.into() },
        },
        vec![],
    )
}

pub fn unassign_private_ips(state: &mut State, ctx: &Ctx, p: &Params<'_>) -> ApiResult<Outcome> {
    let e = eni(state, p.req("NetworkInterfaceId")?)?.clone();
    let list = p.list("PrivateIpAddress");
    if list.is_empty() {
        return Err(ApiFailure::bad(code::MISSING_PARAMETER, "The input parameter \"PrivateIpAddress.1\" that is mandatory for processing this request is not supplied."));
    }
    let mut ips = Vec::new();
    for text in &list {
        let ip: Ipv4Addr = text.parse().map_err(|_| invalid("PrivateIpAddress", text))?;
        if ip == e.primary_ip {
            return Err(ApiFailure::bad(code::INVALID_PARAMETER, format!("{ip} is the primary address of {}; it goes with the ENI.", e.id)));
        }
        if !e.secondary_ips.contains(&ip) {
            return Err(ApiFailure::forbidden(code::IP_UNASSIGNED, format!("The address {ip} is not assigned to {}.", e.id)));
        }
        ips.push(ip);
    }
    state.enis.get_mut(&e.id).expect("checked above").secondary_ips.retain(|ip| !ips.contains(ip));
    vpc::refresh_available(state, ctx);
    changed(super::request_id(ctx), vec![])
}

pub fn assign_ipv6(state: &mut State, ctx: &Ctx, p: &Params<'_>) -> ApiResult<Outcome> {
    let e = eni(state, p.req("NetworkInterfaceId")?)?.clone();
    let token_key = p.opt("ClientToken").map(|t| format!("AssignIpv6Addresses/{t}"));
    let assigned: Vec<Ipv6Addr> = match token_key.as_ref().and_then(|k| super::token_result(state, ctx, k)) {
        Some(list) => list.split(',').filter_map(|s| s.parse().ok()).collect(),
        None => {
            let explicit = p.list("Ipv6Address");
            let count = if explicit.is_empty() { p.req_parse::<usize>("Ipv6AddressCount")? } else { explicit.len() };
            let t = quota_type(state, &e);
            if e.ipv6_addresses.len() + count > t.ipv6_per_eni as usize {
                return Err(ApiFailure::forbidden(code::ENI_IPV6_FULL, format!("The network interface {} holds {} of the {} IPv6 addresses of type {}.", e.id, e.ipv6_addresses.len(), t.ipv6_per_eni, t.id)));
            }
            let vsw = vpc::vswitch(state, &e.vswitch_id)?.clone();
            let ips = if explicit.is_empty() {
                take_ipv6(state, &vsw, count)?
            } else {
                let block = vsw.ipv6_cidr_block.ok_or_else(|| ApiFailure::bad(code::INVALID_PARAMETER, format!("vSwitch {} has no IPv6 block.", vsw.id)))?;
                let mut ips = Vec::new();
                for text in &explicit {
                    let ip: Ipv6Addr = text.parse().map_err(|_| invalid("Ipv6Address", text))?;
                    if !block.contains(ip) {
                        return Err(ApiFailure::forbidden(code::IP_INVALID, format!("{ip} is not in vSwitch {}'s {block}.", vsw.id)));
                    }
                    if state.enis.values().any(|x| x.ipv6_addresses.contains(&ip)) {
                        return Err(ApiFailure::forbidden(code::IP_ASSIGNED, format!("{ip} is already assigned.")));
                    }
                    ips.push(ip);
                }
                ips
            };
            state.enis.get_mut(&e.id).expect("checked above").ipv6_addresses.extend(ips.iter().copied());
            if let Some(k) = token_key {
                super::remember_token_key(state, ctx, k, ips.iter().map(ToString::to_string).collect::<Vec<_>>().join(","));
            }
            ips
        }
    };
    changed(wire::AssignIpv6AddressesResponse { request_id: ctx.request_id.clone(), network_interface_id: e.id, ipv6_sets: assigned.into() }, vec![])
}

pub fn unassign_ipv6(state: &mut State, ctx: &Ctx, p: &Params<'_>) -> ApiResult<Outcome> {
    let e = eni(state, p.req("NetworkInterfaceId")?)?.clone();
    let mut ips = Vec::new();
    for text in p.list("Ipv6Address") {
        let ip: Ipv6Addr = text.parse().map_err(|_| invalid("Ipv6Address", &text))?;
        if !e.ipv6_addresses.contains(&ip) {
            return Err(ApiFailure::forbidden(code::IP_UNASSIGNED, format!("The address {ip} is not assigned to {}.", e.id)));
        }
        ips.push(ip);
    }
    state.enis.get_mut(&e.id).expect("checked above").ipv6_addresses.retain(|ip| !ips.contains(ip));
    changed(super::request_id(ctx), vec![])
}

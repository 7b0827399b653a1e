//! VPCs, vSwitches and security groups.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use berth_cloud::error::code;
use berth_cloud::model::{Direction, IpProtocol, Policy, SecurityGroup, SecurityGroupRule, VSwitch, Vpc};
use berth_cloud::wire;
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

use super::params::invalid;
use super::{ApiFailure, ApiResult, Ctx, Outcome, Params, by_token, changed, new_id, page, remember_token, reply};
use crate::addressing;
use crate::state::State;

pub fn vpc<'s>(state: &'s State, id: &str) -> ApiResult<&'s Vpc> {
    state.vpcs.get(id).ok_or_else(|| ApiFailure::not_found(code::INVALID_VPC_ID, format!("The specified VPC \"{id}\" does not exist.")))
}

pub fn vswitch<'s>(state: &'s State, id: &str) -> ApiResult<&'s VSwitch> {
    state
        .vswitches
        .get(id)
        .ok_or_else(|| ApiFailure::not_found(code::INVALID_VSWITCH_ID, format!("The specified vSwitch \"{id}\" does not exist.")))
}

/// Addresses of a vSwitch held by ENIs (primaries and secondaries).
pub fn used_ips(state: &State, vswitch_id: &str) -> HashSet<Ipv4Addr> {
    state
        .enis
        .values()
        .filter(|e| e.vswitch_id == vswitch_id)
        .flat_map(|e| std::iter::once(e.primary_ip).chain(e.secondary_ips.iter().copied()))
        .collect()
}

/// Takes `count` free addresses of a vSwitch, or fails with the service's exhaustion error.
pub fn take_ips(state: &State, ctx: &Ctx, vswitch_id: &str, count: usize) -> ApiResult<Vec<Ipv4Addr>> {
    let vsw = vswitch(state, vswitch_id)?;
    let used = used_ips(state, vswitch_id);
    addressing::pick_free(vsw.cidr_block, &used, count, ctx.vswitch_ip_limit.get(vswitch_id).copied()).ok_or_else(|| {
        ApiFailure::forbidden(
            code::VSWITCH_IP_NOT_ENOUGH,
            format!("The specified VSwitch \"{vswitch_id}\" has not enough IpAddress: {count} requested; use another vSwitch or release addresses."),
        )
    })
}

/// Keeps `available_ip_address_count` of every vSwitch true.
pub fn refresh_available(state: &mut State, ctx: &Ctx) {
    let ids: Vec<String> = state.vswitches.keys().cloned().collect();
    for id in ids {
        let used = used_ips(state, &id).len() as u64;
        if let Some(vsw) = state.vswitches.get_mut(&id) {
            let usable = addressing::usable_count(vsw.cidr_block).min(ctx.vswitch_ip_limit.get(&id).copied().unwrap_or(u64::MAX));
            vsw.available_ip_address_count = usable.saturating_sub(used);
        }
    }
}

fn check_zone(ctx: &Ctx, zone: &str) -> ApiResult<()> {
    if ctx.zones.iter().any(|z| z == zone) {
        Ok(())
    } else {
        Err(ApiFailure::not_found(code::INVALID_ZONE_ID, format!("The specified zone \"{zone}\" does not exist; zones of {} are {}.", ctx.region_id, ctx.zones.join(", "))))
    }
}

pub fn zone(ctx: &Ctx, zone: &str) -> ApiResult<()> {
    check_zone(ctx, zone)
}

pub fn create_vpc(state: &mut State, ctx: &Ctx, p: &Params<'_>) -> ApiResult<Outcome> {
    let id = match by_token(state, ctx, "CreateVpc", p) {
        Some(id) => id,
        None => {
            let cidr_text = p.opt("CidrBlock").unwrap_or("172.16.0.0/12");
            let cidr: Ipv4Network = cidr_text.parse().map_err(|_| ApiFailure::bad(code::INVALID_CIDR_BLOCK, format!("The CidrBlock \"{cidr_text}\" is malformed; use a private IPv4 CIDR like 10.0.0.0/8.")))?;
            let id = new_id(state, ctx, "vpc");
            let ipv6 = if p.bool("EnableIpv6")? {
                // A ULA /56 unique to this VPC.
                let n = state.next_serial;
                Some(Ipv6Network::new(format!("fd00:{:x}:{:x}::", (n >> 16) & 0xffff, (n & 0xffff) << 8).parse().map_err(|_| invalid("EnableIpv6", "true"))?, 56).map_err(|_| invalid("EnableIpv6", "true"))?)
            } else {
                None
            };
            let name = p.opt("VpcName").unwrap_or_default().to_string();
            state.vpcs.insert(id.clone(), Vpc { id: id.clone(), name, cidr_block: cidr, ipv6_cidr_block: ipv6 });
            remember_token(state, ctx, "CreateVpc", p, &id);
            id
        }
    };
    changed(
        wire::CreateVpcResponse { request_id: ctx.request_id.clone(), vpc_id: id.clone(), vrouter_id: id.replace("vpc-", "vrt-"), route_table_id: id.replace("vpc-", "vtb-") },
        vec![],
    )
}

pub fn describe_vpcs(state: &mut State, ctx: &Ctx, p: &Params<'_>) -> ApiResult<Outcome> {
    let wanted = p.opt("VpcId");
    let items: Vec<wire::VpcItem> = state
        .vpcs
        .values()
        .filter(|v| wanted.is_none_or(|w| w == v.id))
        .map(|v| wire::VpcItem {
            vpc_id: v.id.clone(),
            vpc_name: v.name.clone(),
            cidr_block: v.cidr_block.to_string(),
            ipv6_cidr_block: v.ipv6_cidr_block.map(|c| c.to_string()).unwrap_or_default(),
            status: "Available".into(),
        })
        .collect();
    let (total, items) = super::page_number(items, p, 10, 50)?;
    reply(wire::DescribeVpcsResponse { request_id: ctx.request_id.clone(), total_count: total, vpcs: items.into() })
}

pub fn create_vswitch(state: &mut State, ctx: &Ctx, p: &Params<'_>) -> ApiResult<Outcome> {
    let id = match by_token(state, ctx, "CreateVSwitch", p) {
        Some(id) => id,
        None => {
            let vpc_id = p.req("VpcId")?;
            let the_vpc = vpc(state, vpc_id)?.clone();
            let zone_id = p.req("ZoneId")?;
            check_zone(ctx, zone_id)?;
            let cidr_text = p.req("CidrBlock")?;
            let cidr: Ipv4Network = cidr_text.parse().map_err(|_| ApiFailure::bad(code::INVALID_CIDR_BLOCK, format!("The CidrBlock \"{cidr_text}\" is malformed.")))?;
            if cidr.network() != cidr.ip() || cidr.prefix() > 29 || !the_vpc.cidr_block.contains(cidr.network()) || !the_vpc.cidr_block.contains(cidr.broadcast()) {
                return Err(ApiFailure::bad(code::INVALID_CIDR_BLOCK, format!("The CidrBlock \"{cidr}\" must be a network of /29 or larger inside the VPC's {}.", the_vpc.cidr_block)));
            }
            if let Some(other) = state.vswitches.values().find(|v| v.vpc_id == vpc_id && (v.cidr_block.contains(cidr.network()) || cidr.contains(v.cidr_block.network()))) {
                return Err(ApiFailure::bad(code::CIDR_OVERLAP, format!("The CidrBlock \"{cidr}\" overlaps vSwitch {} ({}); choose a free range.", other.id, other.cidr_block)));
            }
            let ipv6 = match p.parse::<u8>("Ipv6CidrBlock")? {
                None => None,
                Some(index) => {
                    let Some(block) = the_vpc.ipv6_cidr_block else {
                        return Err(ApiFailure::bad(code::INVALID_PARAMETER, format!("VPC {vpc_id} has no IPv6 block; create it with EnableIpv6=true to give vSwitches IPv6.")));
                    };
                    let base = u128::from(block.network()) | (u128::from(index) << 64);
                    Some(Ipv6Network::new(base.into(), 64).map_err(|_| invalid("Ipv6CidrBlock", &index.to_string()))?)
                }
            };
            let id = new_id(state, ctx, "vsw");
            let name = p.opt("VSwitchName").unwrap_or_default().to_string();
            state.vswitches.insert(
                id.clone(),
                VSwitch { id: id.clone(), vpc_id: vpc_id.to_string(), zone_id: zone_id.to_string(), name, cidr_block: cidr, ipv6_cidr_block: ipv6, available_ip_address_count: 0 },
            );
            remember_token(state, ctx, "CreateVSwitch", p, &id);
            refresh_available(state, ctx);
            id
        }
    };
    changed(wire::CreateVSwitchResponse { request_id: ctx.request_id.clone(), vswitch_id: id }, vec![])
}

pub fn describe_vswitches(state: &mut State, ctx: &Ctx, p: &Params<'_>) -> ApiResult<Outcome> {
    let (vpc_id, id, zone) = (p.opt("VpcId"), p.opt("VSwitchId"), p.opt("ZoneId"));
    let all: Vec<wire::VSwitchItem> = state
        .vswitches
        .values()
        .filter(|v| vpc_id.is_none_or(|w| w == v.vpc_id) && id.is_none_or(|w| w == v.id) && zone.is_none_or(|w| w == v.zone_id))
        .map(|v| wire::VSwitchItem {
            vswitch_id: v.id.clone(),
            vpc_id: v.vpc_id.clone(),
            zone_id: v.zone_id.clone(),
            vswitch_name: v.name.clone(),
            cidr_block: v.cidr_block.to_string(),
            ipv6_cidr_block: v.ipv6_cidr_block.map(|c| c.to_string()).unwrap_or_default(),
            available_ip_address_count: v.available_ip_address_count,
            status: "Available".into(),
        })
        .collect();
    let size = p.parse::<usize>("PageSize")?.unwrap_or(10).clamp(1, 50);
    let number = p.parse::<usize>("PageNumber")?.unwrap_or(1).max(1);
    let items: Vec<_> = all.iter().skip((number - 1) * size).take(size).cloned().collect();
    reply(wire::DescribeVSwitchesResponse { request_id: ctx.request_id.clone(), total_count: all.len() as u64, vswitches: items.into() })
}

pub fn security_group<'s>(state: &'s State, id: &str) -> ApiResult<&'s SecurityGroup> {
    state
        .security_groups
        .get(id)
        .ok_or_else(|| ApiFailure::not_found(code::INVALID_SECURITY_GROUP_ID, format!("The specified security group \"{id}\" does not exist.")))
}

/// The security groups a request names (at least one), each of the vSwitch's VPC.
pub fn security_groups_of(state: &State, p: &Params<'_>, vsw: &VSwitch) -> ApiResult<Vec<String>> {
    let groups = p.security_groups();
    if groups.is_empty() {
        return Err(ApiFailure::bad(code::MISSING_PARAMETER, "The input parameter \"SecurityGroupId\" that is mandatory for processing this request is not supplied."));
    }
    for g in &groups {
        if security_group(state, g)?.vpc_id != vsw.vpc_id {
            return Err(ApiFailure::forbidden(code::VPC_MISMATCH, format!("Security group {g} is not in the VPC {} of vSwitch {}.", vsw.vpc_id, vsw.id)));
        }
    }
    Ok(groups)
}

pub fn create_security_group(state: &mut State, ctx: &Ctx, p: &Params<'_>) -> ApiResult<Outcome> {
    let id = match by_token(state, ctx, "CreateSecurityGroup", p) {
        Some(id) => id,
        None => {
            let vpc_id = p.req("VpcId")?;
            vpc(state, vpc_id)?;
            let id = new_id(state, ctx, "sg");
            let name = p.opt("SecurityGroupName").unwrap_or_default().to_string();
            // Default rules (not listed): egress accepted, ingress accepted only from the group's members.
            state.security_groups.insert(id.clone(), SecurityGroup { id: id.clone(), vpc_id: vpc_id.to_string(), name, rules: Vec::new(), referenced_rules: Vec::new() });
            remember_token(state, ctx, "CreateSecurityGroup", p, &id);
            id
        }
    };
    changed(wire::CreateSecurityGroupResponse { request_id: ctx.request_id.clone(), security_group_id: id }, vec![])
}

/// Deletes a group nothing uses; an instance or ENI in it is a dependency, as on ECS.
pub fn delete_security_group(state: &mut State, ctx: &Ctx, p: &Params<'_>) -> ApiResult<Outcome> {
    let id = security_group(state, p.req("SecurityGroupId")?)?.id.clone();
    let user = state
        .instances
        .values()
        .filter(|i| i.security_group_ids.contains(&id))
        .map(|i| i.id.clone())
        .chain(state.enis.values().filter(|e| e.security_group_ids.contains(&id)).map(|e| e.id.clone()))
        .next();
    if let Some(user) = user {
        return Err(ApiFailure::of(code::DEPENDENCY_VIOLATION, format!("The security group {id} is still used by {user}; remove it from every instance and ENI first.")));
    }
    state.security_groups.remove(&id);
    changed(wire::RequestIdOnly { request_id: ctx.request_id.clone() }, vec![])
}

/// The most rules one call takes as `Permissions.N` (N from 1).
const MAX_PERMISSIONS: usize = 100;

/// The rules of an Authorize/Revoke call: `Permissions.1.*` … `Permissions.N.*` (the form the SDKs
/// send), or the one rule of the older top-level parameters; never both.
fn parse_rules(p: &Params<'_>, direction: Direction) -> ApiResult<Vec<SecurityGroupRule>> {
    let given = |n: usize| p.0.keys().any(|k| k.strip_prefix("Permissions.").and_then(|r| r.strip_prefix(&n.to_string())).is_some_and(|r| r.starts_with('.')));
    if !p.0.keys().any(|k| k.starts_with("Permissions.")) {
        return Ok(vec![parse_rule(p, direction, "")?]);
    }
    if let Some(top) = ["IpProtocol", "PortRange"].into_iter().find(|k| p.opt(k).is_some()) {
        return Err(ApiFailure::bad(code::INVALID_PARAMETER, format!("\"{top}\" cannot be given beside Permissions.N: put every rule in Permissions.N.")));
    }
    let count = (1..).take_while(|&n| given(n)).count();
    if count == 0 || count > MAX_PERMISSIONS || given(count + 1) || p.0.keys().any(|k| k.starts_with("Permissions.") && !(1..=count).any(|n| k.starts_with(&format!("Permissions.{n}.")))) {
        return Err(ApiFailure::bad(code::INVALID_PARAMETER, format!("Permissions.N must be numbered 1, 2, … without gaps, at most {MAX_PERMISSIONS}.")));
    }
    (1..=count).map(|n| parse_rule(p, direction, &format!("Permissions.{n}."))).collect()
}

/// One rule from the parameters under `prefix` ("" or `Permissions.N.`).
fn parse_rule(p: &Params<'_>, direction: Direction, prefix: &str) -> ApiResult<SecurityGroupRule> {
    let key = |name: &str| format!("{prefix}{name}");
    let proto_key = key("IpProtocol");
    let proto_text = p.req(&proto_key)?;
    let protocol = match proto_text.to_ascii_lowercase().as_str() {
        "tcp" => IpProtocol::Tcp,
        "udp" => IpProtocol::Udp,
        "icmp" => IpProtocol::Icmp,
        "all" => IpProtocol::All,
        _ => return Err(invalid(&proto_key, proto_text)),
    };
    let range_key = key("PortRange");
    let range = p.req(&range_key)?;
    let ports = match range.split_once('/') {
        Some(("-1", "-1")) => None,
        Some((a, b)) => {
            let (a, b): (u16, u16) = (a.parse().map_err(|_| invalid(&range_key, range))?, b.parse().map_err(|_| invalid(&range_key, range))?);
            if a == 0 || a > b {
                return Err(invalid(&range_key, range));
            }
            Some((a, b))
        }
        None => return Err(invalid(&range_key, range)),
    };
    if ports.is_none() != matches!(protocol, IpProtocol::Icmp | IpProtocol::All) {
        return Err(ApiFailure::bad(code::INVALID_PARAMETER, format!("{range_key} \"{range}\" does not fit {proto_key} \"{proto_text}\": use -1/-1 for icmp and all, from/to for tcp and udp.")));
    }
    // IPv6 peers have their own parameters, as on the real API.
    let (v4_key, v6_key) = if direction == Direction::Ingress { (key("SourceCidrIp"), key("Ipv6SourceCidrIp")) } else { (key("DestCidrIp"), key("Ipv6DestCidrIp")) };
    let (peer_key, peer_text) = match (p.opt(&v4_key), p.opt(&v6_key)) {
        (Some(v4), None) => (&v4_key, v4),
        (None, Some(v6)) => (&v6_key, v6),
        (None, None) => (&v4_key, "0.0.0.0/0"),
        (Some(_), Some(_)) => return Err(ApiFailure::bad(code::INVALID_PARAMETER, format!("{v4_key} and {v6_key} cannot both be set in one rule."))),
    };
    let peer: IpNetwork = peer_text.parse().map_err(|_| invalid(peer_key, peer_text))?;
    if (*peer_key == v6_key) != peer.is_ipv6() {
        return Err(invalid(peer_key, peer_text));
    }
    let policy_key = key("Policy");
    let policy = match p.opt(&policy_key).unwrap_or("accept").to_ascii_lowercase().as_str() {
        "accept" => Policy::Accept,
        "drop" => Policy::Drop,
        other => return Err(invalid(&policy_key, other)),
    };
    let priority_key = key("Priority");
    let priority = p.parse::<u8>(&priority_key)?.unwrap_or(1);
    if !(1..=100).contains(&priority) {
        return Err(invalid(&priority_key, &priority.to_string()));
    }
    Ok(SecurityGroupRule { direction, protocol, ports, peer_cidr: peer, policy, priority })
}

pub fn change_rule(state: &mut State, ctx: &Ctx, p: &Params<'_>, direction: Direction, add: bool) -> ApiResult<Outcome> {
    let id = p.req("SecurityGroupId")?.to_string();
    security_group(state, &id)?;
    // Every rule is read before any is applied: a bad one changes nothing.
    let rules = parse_rules(p, direction)?;
    let sg = state.security_groups.get_mut(&id).expect("checked above");
    for rule in rules {
        if add {
            if !sg.rules.contains(&rule) {
                sg.rules.push(rule);
            }
        } else {
            sg.rules.retain(|r| r != &rule);
        }
    }
    changed(super::request_id(ctx), vec![])
}

fn permission(rule: &SecurityGroupRule) -> wire::Permission {
    let cidr = rule.peer_cidr.to_string();
    let (ingress, v6) = (rule.direction == Direction::Ingress, rule.peer_cidr.is_ipv6());
    let peer = |want_ingress: bool, want_v6: bool| if ingress == want_ingress && v6 == want_v6 { cidr.clone() } else { String::new() };
    wire::Permission {
        ip_protocol: match rule.protocol {
            IpProtocol::Tcp => "TCP",
            IpProtocol::Udp => "UDP",
            IpProtocol::Icmp => "ICMP",
            IpProtocol::All => "ALL",
        }
        .into(),
        port_range: rule.ports.map(|(a, b)| format!("{a}/{b}")).unwrap_or_else(|| "-1/-1".into()),
        source_cidr_ip: peer(true, false),
        dest_cidr_ip: peer(false, false),
        ipv6_source_cidr_ip: peer(true, true),
        ipv6_dest_cidr_ip: peer(false, true),
        policy: if rule.policy == Policy::Accept { "Accept" } else { "Drop" }.into(),
        priority: rule.priority.to_string(),
        direction: if rule.direction == Direction::Ingress { "ingress" } else { "egress" }.into(),
        ..Default::default()
    }
}

pub fn describe_security_group_attribute(state: &mut State, ctx: &Ctx, p: &Params<'_>) -> ApiResult<Outcome> {
    let sg = security_group(state, p.req("SecurityGroupId")?)?;
    let direction = p.opt("Direction").unwrap_or("all").to_ascii_lowercase();
    let rules = sg
        .rules
        .iter()
        .filter(|r| match direction.as_str() {
            "ingress" => r.direction == Direction::Ingress,
            "egress" => r.direction == Direction::Egress,
            _ => true,
        })
        .map(permission)
        .collect::<Vec<_>>();
    // The service pages rules with NextToken when MaxResults is given (10 to 1000).
    let (rules, next_token) = if p.opt("MaxResults").is_some() || p.opt("NextToken").is_some() { super::page(&rules, p, 100, 1000)? } else { (rules, String::new()) };
    reply(wire::DescribeSecurityGroupAttributeResponse {
        request_id: ctx.request_id.clone(),
        security_group_id: sg.id.clone(),
        security_group_name: sg.name.clone(),
        vpc_id: sg.vpc_id.clone(),
        permissions: rules.into(),
        next_token,
    })
}

pub fn describe_security_groups(state: &mut State, ctx: &Ctx, p: &Params<'_>) -> ApiResult<Outcome> {
    let vpc_id = p.opt("VpcId");
    let ids = p.json_list("SecurityGroupIds")?;
    let items: Vec<wire::SecurityGroupItem> = state
        .security_groups
        .values()
        .filter(|s| vpc_id.is_none_or(|v| v == s.vpc_id) && (ids.is_empty() || ids.contains(&s.id)))
        .map(|s| wire::SecurityGroupItem { security_group_id: s.id.clone(), security_group_name: s.name.clone(), vpc_id: s.vpc_id.clone() })
        .collect();
    let (items, _) = page(&items, &Params(&Default::default()), 100, 100)?;
    reply(wire::DescribeSecurityGroupsResponse { request_id: ctx.request_id.clone(), total_count: items.len() as u64, security_groups: items.into() })
}

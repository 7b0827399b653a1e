//! The shared-ENI datapath of one pod interface, built in the node's namespace (where the plugin
//! runs) and the pod's:
//! - a veth pair: `bth…` on the node, CNI_IFNAME in the pod;
//! - pod side: `<ip>/32`, a default route via 169.254.1.1 on-link, and 169.254.1.1 a permanent
//!   neighbour at the host end's MAC (no ARP, no gateway address anywhere);
//! - node side: `<ip>/32` routed to the host end with a permanent neighbour, and the policy rules
//!   `to <ip> lookup main` (512) and `from <ip> lookup <ENI table>` (2048), so the pod's traffic
//!   leaves by the ENI that owns its IP.
//!
//! A trunk pod ([`trunk`]) has the same veth, no `from` rule, and a VLAN program; its routes are
//! in [`guard::POD_TABLE`] and its `to` rule matches only what comes in on its trunk NIC, so that
//! everyone else on the node reaches it through the VPC and its security groups ([`guard`]).
//!
//! Names and priorities are the contract with the agent, which removes leftovers by them.

pub mod bandwidth;
pub mod exclusive;
pub mod guard;
pub mod trunk;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsFd as _;

use berth_nodenet::{Address, IpFamily, Link, MacAddr, Neighbour, NetOps, Netlink, Netns, Route, Rule, Scope, Veth};
use ipnetwork::IpNetwork;

/// The pod's gateway: an address nobody has, answered by the permanent neighbour entry.
pub const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The pod's IPv6 gateway (dual-stack): link-local, a permanent neighbour like the IPv4 one.
pub const POD_GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
/// `to <pod> lookup main`: traffic to a pod goes to its veth, whatever ENI it came in by.
pub const RULE_PRIORITY_TO_POD: u32 = 512;
/// `from <pod> lookup <ENI table>`: a pod's traffic leaves by the ENI that owns its IP.
pub const RULE_PRIORITY_FROM_POD: u32 = 2048;
/// Host ends of pod veths start with this.
pub const HOST_VETH_PREFIX: &str = "bth";

/// The host end of a pod's veth: `bth` and 11 hex digits of the FNV-1a hash of
/// `<containerID>/<ifname>`, so that DEL and GC find it without state.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container_id.bytes().chain(std::iter::once(b'/')).chain(ifname.bytes()) {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{HOST_VETH_PREFIX}{}", &format!("{hash:016x}")[..11])
}

/// What one pod interface needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNet {
    pub container_id: String,
    pub ifname: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    /// The ENI table of a shared pod; 0 for a trunk pod (no `from` rule).
    pub route_table: u32,
    pub mtu: u32,
    /// A trunk pod's member ENI.
    pub trunk: Option<trunk::TrunkLeg>,
    /// The pod's IPv6 address on a dual-stack node.
    pub ip6: Option<Ipv6Addr>,
    /// The gateway of the pod's vSwitch (a trunk pod's VLAN sub-interface routes via it).
    pub gateway: Ipv4Addr,
}

/// What was built, for the result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    pub host: Link,
    pub pod: Link,
}

#[derive(Debug)]
pub enum DatapathError {
    /// The interface the runtime named already exists in the container.
    Exists(String),
    /// The container's namespace cannot be opened.
    Netns(String),
    Netlink(String),
    /// CHECK: something ADD built is missing or different.
    Mismatch(String),
}

impl std::fmt::Display for DatapathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DatapathError::Exists(s) | DatapathError::Netns(s) | DatapathError::Netlink(s) | DatapathError::Mismatch(s) => f.write_str(s),
        }
    }
}

pub(crate) fn nl_err(what: impl std::fmt::Display) -> impl FnOnce(berth_nodenet::Error) -> DatapathError {
    move |e| DatapathError::Netlink(format!("{what}: {e}"))
}

pub(crate) fn exists_ok(e: berth_nodenet::Error) -> berth_nodenet::Result<()> {
    if e.is_exists() { Ok(()) } else { Err(e) }
}

pub(crate) fn gone_ok(e: berth_nodenet::Error) -> berth_nodenet::Result<()> {
    if e.is_not_found() { Ok(()) } else { Err(e) }
}

fn host_net(ip: impl Into<IpAddr>) -> IpNetwork {
    let ip = ip.into();
    IpNetwork::new(ip, if ip.is_ipv4() { 32 } else { 128 }).expect("a host prefix is valid")
}

fn rule_to(ip: IpAddr) -> Rule {
    Rule::lookup(IpFamily::of(&ip), berth_nodenet::TABLE_MAIN).to(host_net(ip)).priority(RULE_PRIORITY_TO_POD)
}

/// A trunk pod's `to` rule: only frames the trunk NIC (or the member's VLAN sub-interface) took
/// in from the VPC are delivered to it.
fn rule_to_trunk_pod(ip: IpAddr, from_vpc_by: &str) -> Rule {
    Rule::lookup(IpFamily::of(&ip), guard::POD_TABLE).to(host_net(ip)).iif(from_vpc_by).priority(RULE_PRIORITY_TO_POD)
}

/// `fwmark LEG_MARK lookup POD_TABLE`: the node's replies on exclusive pods' legs.
pub(crate) fn rule_leg_replies(family: IpFamily) -> Rule {
    Rule::lookup(family, guard::POD_TABLE).fwmark(guard::LEG_MARK, guard::LEG_MARK).priority(guard::RULE_PRIORITY_LEG_REPLY)
}

pub(crate) fn rule_from(ip: IpAddr, table: u32) -> Rule {
    Rule::lookup(IpFamily::of(&ip), table).from(host_net(ip)).priority(RULE_PRIORITY_FROM_POD)
}

pub(crate) fn open_pod_netns(path: &str) -> Result<(Netns, Netlink), DatapathError> {
    let ns = Netns::open(path).map_err(|e| DatapathError::Netns(format!("cannot open the container's network namespace {path}: {e}")))?;
    let nl = Netlink::open_in_netns(&ns).map_err(|e| DatapathError::Netns(format!("cannot open netlink in {path}: {e}")))?;
    Ok((ns, nl))
}

/// Builds the datapath. On error, what was built is left for [`teardown`], which the caller runs.
pub fn setup(node: &mut Netlink, p: &PodNet) -> Result<Built, DatapathError> {
    let (pod_ns, mut pod) = open_pod_netns(&p.netns)?;
    let host_name = host_veth_name(&p.container_id, &p.ifname);
    // A host end with our name is a leftover of an ADD of this very interface that died half-way.
    // Deleting it takes its peer, which may hold CNI_IFNAME in the pod, so the retry can proceed.
    if let Ok(old) = node.link_by_name(&host_name)
        && old.kind.as_deref() == Some("veth")
    {
        node.delete_link(old.index).or_else(gone_ok).map_err(nl_err(format_args!("stale {host_name}")))?;
    }
    if pod.link_by_name(&p.ifname).is_ok() {
        return Err(DatapathError::Exists(format!("interface {} already exists in {}", p.ifname, p.netns)));
    }
    let mut veth = Veth::new(&host_name, &p.ifname).mtu(p.mtu).peer_netns(pod_ns.as_fd());
    if let Some(leg) = &p.trunk {
        // The pod sees its member ENI's MAC.
        veth = veth.peer_mac(leg.member_mac);
    }
    let host = node.create_veth(&veth).map_err(nl_err(format_args!("veth {host_name}/{}", p.ifname)))?;
    let host_mac = host.mac.ok_or_else(|| DatapathError::Netlink(format!("{host_name} has no MAC")))?;
    let pod_link = pod.link_by_name(&p.ifname).map_err(nl_err(format_args!("{} in {}", p.ifname, p.netns)))?;
    let pod_mac = pod_link.mac.ok_or_else(|| DatapathError::Netlink(format!("{} has no MAC", p.ifname)))?;

    // Pod side.
    if let Ok(lo) = pod.link_by_name("lo") {
        pod.set_link_up(lo.index).map_err(nl_err("lo up in the pod"))?;
    }
    pod.add_address(&Address::new(pod_link.index, host_net(p.ip))).or_else(exists_ok).map_err(nl_err(format_args!("address {} on {}", p.ip, p.ifname)))?;
    pod.set_link_up(pod_link.index).map_err(nl_err(format_args!("{} up", p.ifname)))?;
    pod.replace_neighbour(&Neighbour::permanent(pod_link.index, IpAddr::V4(POD_GATEWAY), host_mac)).map_err(nl_err("gateway neighbour in the pod"))?;
    // The gateway's own link route, so that tools (and CHECK) see how 169.254.1.1 is reached.
    pod.replace_route(&Route::new(host_net(POD_GATEWAY)).dev(pod_link.index).scope(Scope::Link)).map_err(nl_err("route to the gateway in the pod"))?;
    let default = Route::default_route(IpFamily::V4).via(IpAddr::V4(POD_GATEWAY)).dev(pod_link.index).onlink();
    pod.replace_route(&default).map_err(nl_err("default route in the pod"))?;

    // Node side. A trunk pod's routes are out of the main table: see the module's doc.
    let table = if p.trunk.is_some() { guard::POD_TABLE } else { berth_nodenet::TABLE_MAIN };
    node.set_link_up(host.index).map_err(nl_err(format_args!("{host_name} up")))?;
    node.replace_route(&Route::new(host_net(p.ip)).dev(host.index).scope(Scope::Link).table(table)).map_err(nl_err(format_args!("route to {}", p.ip)))?;
    node.replace_neighbour(&Neighbour::permanent(host.index, IpAddr::V4(p.ip), pod_mac)).map_err(nl_err(format_args!("neighbour {}", p.ip)))?;
    // A rule of an earlier holder of this IP pointing to another ENI's table would win over ours.
    if let Some(ip6) = p.ip6 {
        pod_v6(&pod_ns, &mut pod, p, pod_link.index, host_mac, ip6)?;
        node.replace_route(&Route::new(host_net(ip6)).dev(host.index).table(table)).map_err(nl_err(format_args!("route to {ip6}")))?;
        node.replace_neighbour(&Neighbour::permanent(host.index, IpAddr::V6(ip6), pod_mac)).map_err(nl_err(format_args!("neighbour {ip6}")))?;
    }
    let ips: Vec<IpAddr> = std::iter::once(IpAddr::V4(p.ip)).chain(p.ip6.map(IpAddr::V6)).collect();
    // Where the VPC hands a trunk pod's frames to the node: its VLAN sub-interface, or the trunk NIC.
    let from_vpc_by = match &p.trunk {
        Some(leg) => Some(match trunk::tag(node, host.index, leg, p.ip, p.gateway)? {
            trunk::Tagging::SubInterface(name) => name,
            trunk::Tagging::Program => leg.trunk_nic.clone(),
        }),
        None => None,
    };
    for ip in ips.iter().copied() {
        // A rule of an earlier holder of this IP pointing to another ENI's table would win over ours.
        let stale: Vec<Rule> = node.rules().map_err(nl_err("rules"))?.into_iter().filter(|r| r.priority == Some(RULE_PRIORITY_FROM_POD) && r.from == Some(host_net(ip)) && r.table != p.route_table && !(p.trunk.is_some() && r.table >= trunk::VLAN_TABLE_BASE)).collect();
        for rule in &stale {
            node.delete_rule(rule).or_else(gone_ok).map_err(nl_err(format_args!("stale rule {rule}")))?;
        }
        let to = match &from_vpc_by {
            Some(iif) => rule_to_trunk_pod(ip, iif),
            None => rule_to(ip),
        };
        node.add_rule(&to).or_else(exists_ok).map_err(nl_err(format_args!("rule to {ip}")))?;
        if p.route_table != 0 {
            node.add_rule(&rule_from(ip, p.route_table)).or_else(exists_ok).map_err(nl_err(format_args!("rule from {ip}")))?;
        }
    }
    let reach = match from_vpc_by {
        Some(iif) => guard::Reach::FromVpcBy(iif),
        None => guard::Reach::Node,
    };
    guard::admit(&guard::Guarded { iface: host_name.clone(), sources: ips, reach })?;
    let host = node.link_by_index(host.index).map_err(nl_err(&host_name))?;
    Ok(Built { host, pod: pod_link })
}

/// The pod side of a dual-stack pod: its IPv6 address (no duplicate detection: the VPC gave it to
/// this pod alone), and a default route via the link-local gateway at the host end's MAC.
fn pod_v6(pod_ns: &Netns, pod: &mut Netlink, p: &PodNet, index: u32, host_mac: MacAddr, ip6: Ipv6Addr) -> Result<(), DatapathError> {
    berth_nodenet::sysctl_in(pod_ns, &format!("net/ipv6/conf/{}/accept_dad", p.ifname), "0").map_err(|e| DatapathError::Netlink(format!("IPv6 on {}: {e}", p.ifname)))?;
    pod.add_address(&Address::new(index, host_net(ip6))).or_else(exists_ok).map_err(nl_err(format_args!("address {ip6} on {}", p.ifname)))?;
    pod.replace_neighbour(&Neighbour::permanent(index, IpAddr::V6(POD_GATEWAY6), host_mac)).map_err(nl_err("IPv6 gateway neighbour in the pod"))?;
    pod.replace_route(&Route::default_route(IpFamily::V6).via(IpAddr::V6(POD_GATEWAY6)).dev(index)).map_err(nl_err("IPv6 default route in the pod"))
}

/// Removes the node-side policy rules of a pod IP, v4 or v6 ("already gone" is success).
pub fn remove_rules(node: &mut Netlink, ip: impl Into<IpAddr>) -> Result<(), DatapathError> {
    let ip = ip.into();
    // Table 0 and no iif: the shared pod's rule and the trunk pod's alike.
    let mut to = rule_to(ip);
    to.table = 0;
    node.delete_rule(&to).or_else(gone_ok).map_err(nl_err(format_args!("rule to {ip}")))?;
    // Table 0 matches the rule whatever ENI table it names.
    node.delete_rule(&rule_from(ip, 0)).or_else(gone_ok).map_err(nl_err(format_args!("rule from {ip}")))?;
    Ok(())
}

/// Deletes the host end of the pod's veth (and so the pair, its routes and neighbours).
pub fn delete_veth(node: &mut Netlink, container_id: &str, ifname: &str) -> Result<(), DatapathError> {
    let name = host_veth_name(container_id, ifname);
    match node.link_by_name(&name) {
        Ok(link) => node.delete_link(link.index).or_else(gone_ok).map_err(nl_err(&name)),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(nl_err(&name)(e)),
    }
}

/// Takes the pod's interface out of its way without waiting for the kernel's slow veth deletion:
/// down and renamed `bthdel…` in the pod's namespace, so the name is free at once (a runtime may ADD
/// again into the same namespace) while the pair is deleted later. Only our veth is touched: the
/// pod end whose peer is this interface's host end. Returns whether it retired something.
pub fn retire_pod_side(node: &mut Netlink, netns: &str, container_id: &str, ifname: &str) -> Result<bool, DatapathError> {
    if netns.is_empty() {
        return Ok(false);
    }
    let Ok(host) = node.link_by_name(&host_veth_name(container_id, ifname)) else { return Ok(false) };
    let Ok((_ns, mut pod)) = open_pod_netns(netns) else { return Ok(false) };
    let Ok(link) = pod.link_by_name(ifname) else { return Ok(false) };
    if link.kind.as_deref() != Some("veth") || link.parent_index != Some(host.index) {
        return Ok(false);
    }
    pod.set_link_down(link.index).map_err(nl_err(format_args!("{ifname} down")))?;
    let retired = format!("bthdel{:09x}", host.index);
    pod.rename_link(link.index, &retired).map_err(nl_err(format_args!("renaming {ifname} to {retired}")))?;
    Ok(true)
}

/// Everything of one pod interface: rules (of the IPs that are known) and the veth.
pub fn teardown(node: &mut Netlink, container_id: &str, ifname: &str, ips: &[IpAddr]) -> Result<(), DatapathError> {
    guard::forget(&guard::Guarded { iface: host_veth_name(container_id, ifname), sources: ips.to_vec(), reach: guard::Reach::Node });
    let rules = ips.iter().try_for_each(|ip| remove_rules(node, *ip));
    delete_veth(node, container_id, ifname)?;
    rules
}

/// CHECK: the datapath ADD built is still there.
pub fn check(node: &mut Netlink, p: &PodNet) -> Result<(), DatapathError> {
    let miss = |what: String| Err(DatapathError::Mismatch(what));
    let host_name = host_veth_name(&p.container_id, &p.ifname);
    let host = match node.link_by_name(&host_name) {
        Ok(l) => l,
        Err(_) => return miss(format!("the host end {host_name} of the pod's veth is missing")),
    };
    if !host.up {
        return miss(format!("{host_name} is down"));
    }
    let table = if p.trunk.is_some() { guard::POD_TABLE } else { berth_nodenet::TABLE_MAIN };
    let routes = node.routes(Some(table)).map_err(nl_err("routes"))?;
    if !routes.iter().any(|r| r.destination == host_net(p.ip) && r.oif == Some(host.index)) {
        return miss(format!("the route {}/32 dev {host_name} in table {table} is missing", p.ip));
    }
    let rules = node.rules().map_err(nl_err("rules"))?;
    if !rules.iter().any(|r| r.priority == Some(RULE_PRIORITY_TO_POD) && r.to == Some(host_net(p.ip))) {
        return miss(format!("the rule \"to {} lookup main\" is missing", p.ip));
    }
    if p.route_table != 0 && !rules.iter().any(|r| r.priority == Some(RULE_PRIORITY_FROM_POD) && r.from == Some(host_net(p.ip)) && r.table == p.route_table) {
        return miss(format!("the rule \"from {} lookup {}\" is missing", p.ip, p.route_table));
    }
    if let Some(leg) = &p.trunk {
        trunk::check(node, host.index, &host_name, leg)?;
    }
    let (_ns, mut pod) = open_pod_netns(&p.netns)?;
    let link = match pod.link_by_name(&p.ifname) {
        Ok(l) => l,
        Err(_) => return miss(format!("{} is missing in {}", p.ifname, p.netns)),
    };
    let addrs = pod.addresses(Some(link.index)).map_err(nl_err("pod addresses"))?;
    if !addrs.iter().any(|a| a.network == host_net(p.ip)) {
        return miss(format!("{} has no address {}/32", p.ifname, p.ip));
    }
    let routes = pod.routes(Some(berth_nodenet::TABLE_MAIN)).map_err(nl_err("pod routes"))?;
    if !routes.iter().any(|r| r.destination.prefix() == 0 && r.destination.is_ipv4() && r.gateway == Some(IpAddr::V4(POD_GATEWAY))) {
        return miss(format!("the pod's default route via {POD_GATEWAY} is missing"));
    }
    Ok(())
}

/// Host ends of pod veths on the node, for GC.
pub fn host_veths(node: &mut Netlink) -> Result<Vec<Link>, DatapathError> {
    Ok(node.links().map_err(nl_err("links"))?.into_iter().filter(|l| l.name.starts_with(HOST_VETH_PREFIX) && l.kind.as_deref() == Some("veth")).collect())
}

/// MAC as CNI prints it.
pub fn mac_string(mac: Option<MacAddr>) -> String {
    mac.map(|m| m.to_string()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_veth_names_fit_and_differ() {
        let a = host_veth_name("c1", "eth0");
        assert_eq!(a.len(), 14);
        assert!(a.len() <= 15 && a.starts_with("bth"));
        assert_eq!(a, host_veth_name("c1", "eth0"));
        assert_ne!(a, host_veth_name("c1", "eth1"));
        assert_ne!(a, host_veth_name("c2", "eth0"));
    }
}

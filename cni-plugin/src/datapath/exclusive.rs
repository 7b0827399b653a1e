//! The exclusive-ENI datapath: the pod's own ENI NIC moves from the node's namespace into the
//! pod's, renamed to CNI_IFNAME, with the ENI's primary address and a default route via its
//! vSwitch gateway. DEL moves it back to the node (named `bxe…`), so that the agent can detach it
//! and nothing is lost when the pod's namespace goes.
//!
//! Beside it, a veth to the node (`h-<ifname>` in the pod, `bth…` on the node, as a shared pod's)
//! carries what the pod and the node say to each other: the pod routes the node's addresses via
//! 169.254.1.1 on it, the node routes the pod's address to it in its main table. Only the node's
//! own traffic takes it (shared pods' traffic follows their ENI tables out to the VPC), so the
//! security groups of the pod's ENI still judge everyone else.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsFd as _;

use berth_nodenet::{Address, IpFamily, Link, MacAddr, Neighbour, NetOps, Netlink, Netns, Route, Veth};
use ipnetwork::{IpNetwork, Ipv4Network};

use super::{DatapathError, nl_err, open_pod_netns};

/// Names of ENI NICs handed back to the node by DEL start with this.
pub const RETURNED_NIC_PREFIX: &str = "bxe";

/// What one exclusive pod interface needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExclusiveNet {
    pub ifname: String,
    pub netns: String,
    /// The ENI's NIC in the node's namespace, and its MAC (checked before moving it).
    pub node_nic: String,
    pub mac: MacAddr,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    /// For the veth to the node.
    pub container_id: String,
    pub node_addresses: Vec<Ipv4Addr>,
    pub mtu: u32,
    /// Dual-stack: the ENI's IPv6 address, its vSwitch's prefix length and IPv6 gateway.
    pub ip6: Option<(std::net::Ipv6Addr, u8, std::net::Ipv6Addr)>,
}

/// The pod's end of its veth to the node.
pub fn host_leg_name(ifname: &str) -> String {
    format!("h-{ifname}")
}

/// Moves the ENI into the pod and configures it; returns the pod's interface.
pub fn setup(node: &mut Netlink, p: &ExclusiveNet) -> Result<Link, DatapathError> {
    let (pod_ns, mut pod) = open_pod_netns(&p.netns)?;
    if pod.link_by_name(&p.ifname).is_ok() {
        return Err(DatapathError::Exists(format!("interface {} already exists in {}", p.ifname, p.netns)));
    }
    let nic = node.link_by_name(&p.node_nic).map_err(nl_err(format_args!("the pod's ENI NIC {} on the node", p.node_nic)))?;
    if nic.mac != Some(p.mac) {
        return Err(DatapathError::Netlink(format!("{} has MAC {:?}, the pod's ENI has {}", p.node_nic, nic.mac.map(|m| m.to_string()), p.mac)));
    }
    node.set_link_down(nic.index).map_err(nl_err(format_args!("{} down", p.node_nic)))?;
    node.move_link(nic.index, pod_ns.as_fd(), Some(&p.ifname)).map_err(nl_err(format_args!("moving {} into {}", p.node_nic, p.netns)))?;
    if let Ok(lo) = pod.link_by_name("lo") {
        pod.set_link_up(lo.index).map_err(nl_err("lo up in the pod"))?;
    }
    let link = pod.link_by_name(&p.ifname).map_err(nl_err(format_args!("{} in {}", p.ifname, p.netns)))?;
    let net = Ipv4Network::new(p.ip, p.prefix_len).map_err(|e| DatapathError::Netlink(format!("address {}/{}: {e}", p.ip, p.prefix_len)))?;
    pod.add_address(&Address::new(link.index, IpNetwork::V4(net))).or_else(|e| if e.is_exists() { Ok(()) } else { Err(e) }).map_err(nl_err(format_args!("address {net} on {}", p.ifname)))?;
    pod.set_link_up(link.index).map_err(nl_err(format_args!("{} up", p.ifname)))?;
    pod.replace_route(&Route::default_route(IpFamily::V4).via(IpAddr::V4(p.gateway)).dev(link.index)).map_err(nl_err("default route in the pod"))?;
    if let Some((ip6, prefix, gateway6)) = p.ip6 {
        // The VPC gave this address to this ENI alone: no duplicate detection to wait for.
        berth_nodenet::sysctl_in(&pod_ns, &format!("net/ipv6/conf/{}/accept_dad", p.ifname), "0").map_err(|e| DatapathError::Netlink(format!("IPv6 on {}: {e}", p.ifname)))?;
        let net = ipnetwork::Ipv6Network::new(ip6, prefix).map_err(|e| DatapathError::Netlink(format!("address {ip6}/{prefix}: {e}")))?;
        pod.add_address(&Address::new(link.index, IpNetwork::V6(net))).or_else(|e| if e.is_exists() { Ok(()) } else { Err(e) }).map_err(nl_err(format_args!("address {net} on {}", p.ifname)))?;
        pod.replace_route(&Route::default_route(IpFamily::V6).via(IpAddr::V6(gateway6)).dev(link.index)).map_err(nl_err("IPv6 default route in the pod"))?;
    }
    host_leg(node, &pod_ns, &mut pod, p)?;
    pod.link_by_index(link.index).map_err(nl_err(&p.ifname))
}

/// The veth to the node and its routes.
fn host_leg(node: &mut Netlink, pod_ns: &Netns, pod: &mut Netlink, p: &ExclusiveNet) -> Result<(), DatapathError> {
    let host_name = super::host_veth_name(&p.container_id, &p.ifname);
    let pod_name = host_leg_name(&p.ifname);
    if let Ok(old) = node.link_by_name(&host_name) {
        node.delete_link(old.index).or_else(super::gone_ok).map_err(nl_err(format_args!("stale {host_name}")))?;
    }
    let host = node.create_veth(&Veth::new(&host_name, &pod_name).mtu(p.mtu).peer_netns(pod_ns.as_fd())).map_err(nl_err(format_args!("veth {host_name}/{pod_name}")))?;
    let host_mac = host.mac.ok_or_else(|| DatapathError::Netlink(format!("{host_name} has no MAC")))?;
    let leg = pod.link_by_name(&pod_name).map_err(nl_err(format_args!("{pod_name} in {}", p.netns)))?;
    let leg_mac = leg.mac.ok_or_else(|| DatapathError::Netlink(format!("{pod_name} has no MAC")))?;
    pod.set_link_up(leg.index).map_err(nl_err(format_args!("{pod_name} up")))?;
    pod.replace_neighbour(&Neighbour::permanent(leg.index, IpAddr::V4(super::POD_GATEWAY), host_mac)).map_err(nl_err("gateway neighbour on the node's veth"))?;
    for addr in &p.node_addresses {
        let dst = IpNetwork::V4(Ipv4Network::new(*addr, 32).expect("/32"));
        pod.replace_route(&Route::new(dst).via(IpAddr::V4(super::POD_GATEWAY)).dev(leg.index).onlink()).map_err(nl_err(format_args!("route to the node's {addr}")))?;
    }
    node.set_link_up(host.index).map_err(nl_err(format_args!("{host_name} up")))?;
    // The leg carries the node's replies to what the pod started on it, nothing else: the node's
    // own connections to the pod go through the VPC and the pod's security groups (see `guard`).
    let pod_ip = IpNetwork::V4(Ipv4Network::new(p.ip, 32).expect("/32"));
    let route = Route::new(pod_ip).dev(host.index).scope(berth_nodenet::Scope::Link).table(super::guard::POD_TABLE);
    node.replace_route(&route).map_err(nl_err(format_args!("route to {} on the node", p.ip)))?;
    node.add_rule(&super::rule_leg_replies(IpFamily::V4)).or_else(super::exists_ok).map_err(nl_err("the rule of replies on pods' legs"))?;
    node.replace_neighbour(&Neighbour::permanent(host.index, IpAddr::V4(p.ip), leg_mac)).map_err(nl_err(format_args!("neighbour {} on the node", p.ip)))?;
    let sources = std::iter::once(IpAddr::V4(p.ip)).chain(p.ip6.map(|(ip6, _, _)| IpAddr::V6(ip6))).collect();
    super::guard::admit(&super::guard::Guarded { iface: host_name, sources, reach: super::guard::Reach::Leg })
}

/// The name an ENI NIC gets when DEL hands it back to the node.
pub fn returned_name(container_id: &str, ifname: &str) -> String {
    format!("{RETURNED_NIC_PREFIX}{}", &super::host_veth_name(container_id, ifname)[super::HOST_VETH_PREFIX.len()..])
}

/// Moves the pod's ENI NIC (CNI_IFNAME with `mac` in the pod) back into the node's namespace.
/// Nothing to do when the namespace or the interface is gone. Returns whether it moved one.
pub fn return_to_node(netns: &str, container_id: &str, ifname: &str, mac: MacAddr) -> Result<bool, DatapathError> {
    if netns.is_empty() {
        return Ok(false);
    }
    let Ok((_ns, mut pod)) = open_pod_netns(netns) else { return Ok(false) };
    let Ok(link) = pod.link_by_name(ifname) else { return Ok(false) };
    if link.mac != Some(mac) {
        return Ok(false);
    }
    let node_ns = Netns::current().map_err(|e| DatapathError::Netns(format!("the node's own namespace: {e}")))?;
    pod.set_link_down(link.index).map_err(nl_err(format_args!("{ifname} down")))?;
    // The pod's bandwidth shaping stays behind: its redirect to the pod's ifb means nothing on the node.
    pod.detach_bpf(link.index, berth_nodenet::TcHook::Ingress).map_err(nl_err(format_args!("{ifname}'s ingress program")))?;
    if let Ok(ifb) = pod.link_by_name(super::bandwidth::IFB_NAME) {
        pod.delete_link(ifb.index).or_else(super::gone_ok).map_err(nl_err(super::bandwidth::IFB_NAME))?;
    }
    let name = returned_name(container_id, ifname);
    pod.move_link(link.index, node_ns.as_fd(), Some(&name)).map_err(nl_err(format_args!("moving {ifname} back to the node as {name}")))?;
    Ok(true)
}

/// CHECK: the ENI is the pod's interface with its address and default route.
pub fn check(p: &ExclusiveNet) -> Result<(), DatapathError> {
    let miss = |what: String| Err(DatapathError::Mismatch(what));
    let (_ns, mut pod) = open_pod_netns(&p.netns)?;
    let Ok(link) = pod.link_by_name(&p.ifname) else { return miss(format!("{} is missing in {}", p.ifname, p.netns)) };
    if link.mac != Some(p.mac) {
        return miss(format!("{} is not the pod's ENI (MAC {:?}, the ENI's {})", p.ifname, link.mac.map(|m| m.to_string()), p.mac));
    }
    let addrs = pod.addresses(Some(link.index)).map_err(nl_err("pod addresses"))?;
    if !addrs.iter().any(|a| a.network.ip() == IpAddr::V4(p.ip)) {
        return miss(format!("{} has no address {}", p.ifname, p.ip));
    }
    let routes = pod.routes(Some(berth_nodenet::TABLE_MAIN)).map_err(nl_err("pod routes"))?;
    if !routes.iter().any(|r| r.destination.prefix() == 0 && r.destination.is_ipv4() && r.gateway == Some(IpAddr::V4(p.gateway))) {
        return miss(format!("the pod's default route via {} is missing", p.gateway));
    }
    if !p.node_addresses.is_empty() && pod.link_by_name(&host_leg_name(&p.ifname)).is_err() {
        return miss(format!("the pod's veth to the node {} is missing", host_leg_name(&p.ifname)));
    }
    Ok(())
}

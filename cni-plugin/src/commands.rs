//! The CNI commands. VERSION answers alone; the others check their input fully, then ask the
//! node's agent (over its socket) and build or tear down the datapath.

use std::net::{IpAddr, Ipv4Addr};

use ipnetwork::{IpNetwork, Ipv4Network};
use std::os::unix::fs::DirBuilderExt as _;

use berth_nodenet::{NetOps as _, Netlink};
use berth_proto::agent::v1 as pb;

use crate::agent_client::Agent;
use crate::datapath::exclusive::{self, ExclusiveNet};
use crate::datapath::{bandwidth, guard};
use crate::datapath::trunk::TrunkLeg;
use crate::protocol::bandwidth::Limits;
use crate::datapath::{self, DatapathError, PodNet};
use crate::protocol::config::NetConf;
use crate::protocol::env::{Command, Env};
use crate::protocol::error::{CniError, code};
use crate::protocol::version;
use crate::protocol::result::{self, CniResult, Interface, IpEntry, RouteEntry};

/// What a command prints on success (nothing for DEL, CHECK, GC, STATUS).
pub type Output = Option<String>;

pub fn version(stdin: &[u8]) -> Result<Output, CniError> {
    // VERSION may come with a config or with just {"cniVersion": …}, or with nothing.
    let asked = serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion").and_then(|s| s.as_str()).map(str::to_string))
        .unwrap_or_else(|| version::LATEST.to_string());
    let doc = serde_json::json!({ "cniVersion": asked, "supportedVersions": version::SUPPORTED });
    Ok(Some(doc.to_string()))
}

/// The version a command needs at least.
fn minimum(command: Command) -> &'static str {
    match command {
        Command::Check => "0.4.0",
        Command::Gc | Command::Status => "1.1.0",
        _ => "0.3.0",
    }
}

/// Checks the config's version against what the command needs.
pub fn check_version(command: Command, conf: &NetConf) -> Result<(), CniError> {
    version::check(&conf.cni_version)?;
    let min = minimum(command);
    if !version::at_least(&conf.cni_version, min) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("{command:?} needs cniVersion {min} or newer, the config says {}", conf.cni_version),
            "raise cniVersion in the network config",
        ));
    }
    Ok(())
}

pub fn run(env: &Env, conf: &NetConf) -> Result<Output, CniError> {
    check_version(env.command, conf)?;
    match env.command {
        Command::Version => Ok(None),
        Command::Add => add(env, conf),
        Command::Del => del(env, conf).map(|()| None),
        Command::Check => check(env, conf).map(|()| None),
        Command::Gc => gc(conf).map(|()| None),
        Command::Status => status(conf).map(|()| None),
    }
}

fn key(env: &Env) -> pb::AllocationKey {
    pb::AllocationKey { container_id: env.container_id.clone(), ifname: env.ifname.clone() }
}

fn node_netlink() -> Result<Netlink, CniError> {
    Netlink::open().map_err(|e| CniError::new(code::IO_FAILURE, format!("cannot open netlink: {e}"), "run the plugin as root in the node's namespace"))
}

fn datapath_error(e: DatapathError) -> CniError {
    match e {
        DatapathError::Exists(m) => CniError::new(code::INTERFACE_EXISTS, m, "use another CNI_IFNAME, or DEL the attachment first"),
        DatapathError::Netns(m) => CniError::new(code::IO_FAILURE, m, "CNI_NETNS must name the container's existing network namespace"),
        DatapathError::Netlink(m) => CniError::new(code::IO_FAILURE, m, "see the kernel's answer above"),
        DatapathError::Mismatch(m) => CniError::new(code::DATAPATH_MISMATCH, m, "the pod's network was changed after ADD; recreate the pod"),
    }
}

/// The allocation's IPv6 address on a dual-stack node.
fn ipv6_of(a: &pb::Allocation) -> Result<Option<std::net::Ipv6Addr>, CniError> {
    match a.ipv6.as_ref().map(|c| c.address.as_str()).filter(|t| !t.is_empty()) {
        None => Ok(None),
        Some(text) => text.parse().map(Some).map_err(|_| CniError::new(code::IO_FAILURE, format!("the agent answered an invalid IPv6 address ({text:?})"), "see berth-agent's log")),
    }
}

/// The gateway of the allocation's vSwitch (unspecified when the agent gave none).
fn gateway_of(a: &pb::Allocation) -> Ipv4Addr {
    a.ipv4.as_ref().and_then(|c| c.gateway.parse().ok()).unwrap_or(Ipv4Addr::UNSPECIFIED)
}

fn ipv4_of(a: &pb::Allocation) -> Result<Ipv4Addr, CniError> {
    let text = a.ipv4.as_ref().map(|c| c.address.as_str()).unwrap_or_default();
    text.parse().map_err(|_| CniError::new(code::IO_FAILURE, format!("the agent answered an allocation without a valid IPv4 address ({text:?})"), "see berth-agent's log"))
}

fn add(env: &Env, conf: &NetConf) -> Result<Output, CniError> {
    let mtu = conf.mtu()?;
    conf.pod_network()?;
    // Bad limits fail before an IP is taken.
    let limits = pod_limits(env, conf)?;
    let mut agent = Agent::connect(&conf.agent_socket, code::TRY_AGAIN_LATER)?;
    let pod = pb::PodIdentity {
        namespace: env.pod.namespace.clone().unwrap_or_default(),
        name: env.pod.name.clone().unwrap_or_default(),
        uid: env.pod.uid.clone().unwrap_or_default(),
        infra_container_id: env.pod.infra_container_id.clone().unwrap_or_default(),
    };
    // The pod's own CNI_ARGS first, then what its network says (the only way for runtimes that
    // pass no CNI_ARGS of ours).
    let network = conf.pod_network()?;
    let mode = match env.pod.network_mode.as_deref().or(network.mode.as_deref()) {
        Some("exclusive") => pb::NetworkMode::Exclusive,
        Some("trunk") => pb::NetworkMode::Trunk,
        _ => pb::NetworkMode::Shared,
    };
    let security_group_ids = if env.pod.security_group_ids.is_empty() { network.security_group_ids } else { env.pod.security_group_ids.clone() };
    let request = pb::AllocateIpRequest {
        key: Some(key(env)),
        netns: env.netns.clone(),
        pod: Some(pod),
        mode: mode as i32,
        vswitch_id: env.pod.vswitch_id.clone().or(network.vswitch_id).unwrap_or_default(),
        security_group_ids,
        want_ipv4: true,
        ..Default::default()
    };
    let allocation = agent.allocate(request)?;
    if allocation.mode == pb::NetworkMode::Exclusive as i32 {
        return add_exclusive(env, conf, &mut agent, &allocation, &limits);
    }
    let built = (|| {
        let ip = ipv4_of(&allocation)?;
        let trunk = trunk_leg(&allocation)?;
        let table = allocation.eni.as_ref().map(|e| e.route_table).unwrap_or_default();
        if table == 0 && trunk.is_none() {
            return Err(CniError::new(code::IO_FAILURE, format!("the agent gave {ip} without the routing table of its ENI"), "see berth-agent's log"));
        }
        let mut node = node_netlink()?;
        let ip6 = ipv6_of(&allocation)?;
        let p = PodNet { container_id: env.container_id.clone(), ifname: env.ifname.clone(), netns: env.netns.clone(), ip, route_table: table, mtu, trunk, ip6, gateway: gateway_of(&allocation) };
        match datapath::setup(&mut node, &p).and_then(|built| bandwidth::apply(&mut node, Some(built.host.index), &env.netns, &env.ifname, &limits).map(|()| built)) {
            Ok(built) => Ok((ip, ip6, built)),
            Err(e) => {
                // Leave nothing behind: not an interface that was already there, not our veth, not the rules.
                let ips: Vec<IpAddr> = std::iter::once(IpAddr::V4(ip)).chain(ip6.map(IpAddr::V6)).collect();
                if !matches!(e, DatapathError::Exists(_)) {
                    let _ = datapath::teardown(&mut node, &env.container_id, &env.ifname, &ips);
                } else {
                    for ip in ips {
                        let _ = datapath::remove_rules(&mut node, ip);
                    }
                }
                Err(datapath_error(e))
            }
        }
    })();
    let (ip, ip6, built) = match built {
        Ok(b) => b,
        Err(e) => {
            // The IP goes back to the pool: a failed ADD keeps nothing.
            let _ = agent.release(key(env));
            return Err(e);
        }
    };
    let ours = CniResult {
        interfaces: vec![
            Interface { name: built.host.name.clone(), mac: datapath::mac_string(built.host.mac), sandbox: None, mtu: Some(mtu) },
            Interface { name: env.ifname.clone(), mac: datapath::mac_string(built.pod.mac), sandbox: Some(env.netns.clone()), mtu: Some(mtu) },
        ],
        ips: std::iter::once(IpEntry { address: IpNetwork::V4(Ipv4Network::new(ip, 32).expect("/32")), gateway: Some(IpAddr::V4(datapath::POD_GATEWAY)), interface: Some(1) })
            .chain(ip6.map(|ip6| IpEntry { address: IpNetwork::V6(ipnetwork::Ipv6Network::new(ip6, 128).expect("/128")), gateway: Some(IpAddr::V6(datapath::POD_GATEWAY6)), interface: Some(1) }))
            .collect(),
        routes: std::iter::once(RouteEntry { dst: "0.0.0.0/0".parse().expect("a CIDR"), gw: Some(IpAddr::V4(datapath::POD_GATEWAY)) })
            .chain(ip6.map(|_| RouteEntry { dst: "::/0".parse().expect("a CIDR"), gw: Some(IpAddr::V6(datapath::POD_GATEWAY6)) }))
            .collect(),
        dns: conf.dns().cloned(),
    };
    let result = ours.render(&conf.cni_version, conf.prev_result.as_ref());
    Ok(Some(result.to_string()))
}

/// The pod's bandwidth limits: its CNI_ARGS (annotations) over the runtime's capability.
fn pod_limits(env: &Env, conf: &NetConf) -> Result<Limits, CniError> {
    let runtime = crate::protocol::bandwidth::from_runtime_config(conf.runtime_config.as_ref())?;
    Ok(crate::protocol::bandwidth::merge((env.pod.ingress_bandwidth, env.pod.egress_bandwidth), runtime))
}

/// A trunk allocation's member ENI; `None` for other modes.
fn trunk_leg(a: &pb::Allocation) -> Result<Option<TrunkLeg>, CniError> {
    if a.mode != pb::NetworkMode::Trunk as i32 {
        return Ok(None);
    }
    let bad = |what: &str| CniError::new(code::IO_FAILURE, format!("the agent's trunk allocation lacks {what}"), "see berth-agent's log");
    let eni = a.eni.as_ref().ok_or_else(|| bad("its member ENI"))?;
    let vlan_id = u16::try_from(eni.vlan_id).ok().filter(|v| (1..4095).contains(v)).ok_or_else(|| bad("a VLAN ID in 1..4094"))?;
    let member_mac = eni.mac.parse().map_err(|_| bad("the member's MAC"))?;
    if eni.node_ifname.is_empty() {
        return Err(bad("the trunk NIC"));
    }
    Ok(Some(TrunkLeg { vlan_id, member_mac, trunk_nic: eni.node_ifname.clone() }))
}

/// The exclusive-ENI facts of an allocation.
fn exclusive_net(env: &Env, a: &pb::Allocation, mtu: u32) -> Result<ExclusiveNet, CniError> {
    let ip = ipv4_of(a)?;
    let bad = |what: &str| CniError::new(code::IO_FAILURE, format!("the agent's exclusive allocation of {ip} lacks {what}"), "see berth-agent's log");
    let eni = a.eni.as_ref().ok_or_else(|| bad("its ENI"))?;
    let v4 = a.ipv4.as_ref().ok_or_else(|| bad("its address"))?;
    Ok(ExclusiveNet {
        ifname: env.ifname.clone(),
        netns: env.netns.clone(),
        node_nic: eni.node_ifname.clone(),
        mac: eni.mac.parse().map_err(|_| bad("a valid MAC"))?,
        ip,
        prefix_len: u8::try_from(v4.prefix_length).map_err(|_| bad("a valid prefix length"))?,
        container_id: env.container_id.clone(),
        node_addresses: a.node_addresses.iter().filter_map(|s| s.parse().ok()).collect(),
        mtu,
        ip6: match (ipv6_of(a)?, a.ipv6.as_ref()) {
            (Some(ip6), Some(c)) => Some((ip6, u8::try_from(c.prefix_length).map_err(|_| bad("a valid IPv6 prefix length"))?, c.gateway.parse().map_err(|_| bad("a valid IPv6 gateway"))?)),
            _ => None,
        },
        gateway: v4.gateway.parse().map_err(|_| bad("a valid gateway"))?,
    })
}

/// ADD of a pod with its own ENI: moved into the pod and configured; undone and released on failure.
fn add_exclusive(env: &Env, conf: &NetConf, agent: &mut Agent, allocation: &pb::Allocation, limits: &Limits) -> Result<Output, CniError> {
    let built = exclusive_net(env, allocation, conf.mtu()?).and_then(|p| {
        let mut node = node_netlink()?;
        match exclusive::setup(&mut node, &p).and_then(|link| bandwidth::apply(&mut node, None, &env.netns, &env.ifname, limits).map(|()| link)) {
            Ok(link) => Ok((p, link)),
            Err(e) => {
                // Give the ENI back to the node if it had moved, so that the release finds it.
                let _ = exclusive::return_to_node(&env.netns, &env.container_id, &env.ifname, p.mac);
                let _ = datapath::delete_veth(&mut node, &env.container_id, &env.ifname);
                let sources = std::iter::once(IpAddr::V4(p.ip)).chain(p.ip6.map(|(ip6, _, _)| IpAddr::V6(ip6))).collect();
                guard::forget(&guard::Guarded { iface: datapath::host_veth_name(&env.container_id, &env.ifname), sources, reach: guard::Reach::Leg });
                Err(datapath_error(e))
            }
        }
    });
    let (p, link) = match built {
        Ok(b) => b,
        Err(e) => {
            let _ = agent.release(key(env));
            return Err(e);
        }
    };
    let ours = CniResult {
        interfaces: vec![Interface { name: env.ifname.clone(), mac: datapath::mac_string(link.mac), sandbox: Some(env.netns.clone()), mtu: Some(link.mtu) }],
        ips: std::iter::once(IpEntry { address: IpNetwork::V4(Ipv4Network::new(p.ip, p.prefix_len).map_err(|e| CniError::new(code::IO_FAILURE, e.to_string(), ""))?), gateway: Some(IpAddr::V4(p.gateway)), interface: Some(0) })
            .chain(p.ip6.and_then(|(ip6, prefix, gw)| Some(IpEntry { address: IpNetwork::V6(ipnetwork::Ipv6Network::new(ip6, prefix).ok()?), gateway: Some(IpAddr::V6(gw)), interface: Some(0) })))
            .collect(),
        routes: std::iter::once(RouteEntry { dst: "0.0.0.0/0".parse().expect("a CIDR"), gw: Some(IpAddr::V4(p.gateway)) })
            .chain(p.ip6.map(|(_, _, gw)| RouteEntry { dst: "::/0".parse().expect("a CIDR"), gw: Some(IpAddr::V6(gw)) }))
            .collect(),
        dns: conf.dns().cloned(),
    };
    Ok(Some(ours.render(&conf.cni_version, conf.prev_result.as_ref()).to_string()))
}

/// Queues a release for the agent to carry out when it is back. The file holds the DEL's time
/// (Unix nanoseconds): the agent releases only an allocation made before it, never one a later ADD
/// of the same container and interface made.
fn queue_release(conf: &NetConf, env: &Env) -> Result<(), CniError> {
    let dir = conf.release_queue_dir()?;
    let fail = |e: std::io::Error| CniError::new(code::IO_FAILURE, format!("the agent is down and the release cannot be queued in {}: {e}", dir.display()), "check releaseQueueDir in the network config");
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir).map_err(fail)?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or_default();
    std::fs::write(dir.join(format!("{}.{}", env.container_id, env.ifname)), now.to_string()).map_err(fail)
}

/// The MAC of the pod interface in a previous result that shows no host veth of ours (an
/// exclusive pod's result lists only its ENI).
fn exclusive_mac_in(prev: &serde_json::Value, ifname: &str) -> Option<berth_nodenet::MacAddr> {
    let interfaces = prev["interfaces"].as_array()?;
    if interfaces.iter().any(|i| i["name"].as_str().is_some_and(|n| n.starts_with(datapath::HOST_VETH_PREFIX))) {
        return None;
    }
    interfaces.iter().find(|i| i["name"] == ifname && i.get("sandbox").is_some())?["mac"].as_str()?.parse().ok()
}

fn del(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    let mut agent = Agent::connect(&conf.agent_socket, code::TRY_AGAIN_LATER).ok();
    let ip = conf.prev_result.as_ref().and_then(|p| result::pod_ipv4(p, &env.ifname)).or_else(|| {
        let a = agent.as_mut()?.get(key(env)).ok()??;
        ipv4_of(&a).ok()
    });
    let ip6 = conf.prev_result.as_ref().and_then(|p| result::pod_ipv6(p, &env.ifname)).or_else(|| {
        let a = agent.as_mut()?.get(key(env)).ok()??;
        ipv6_of(&a).ok().flatten()
    });
    let mut node = node_netlink()?;
    // A pod's own ENI goes back to the node before the release, so the agent can detach it and the
    // pod's namespace can go without taking it along.
    let exclusive_mac = match agent.as_mut().map(|a| a.get(key(env))) {
        Some(Ok(Some(a))) if a.mode == pb::NetworkMode::Exclusive as i32 => a.eni.and_then(|e| e.mac.parse().ok()),
        Some(Ok(_)) => None,
        // The agent cannot say: the previous result can, when it has no host veth of ours.
        _ => conf.prev_result.as_ref().and_then(|p| exclusive_mac_in(p, &env.ifname)),
    };
    if let Some(mac) = exclusive_mac {
        exclusive::return_to_node(&env.netns, &env.container_id, &env.ifname, mac).map_err(datapath_error)?;
    }
    let ips: Vec<IpAddr> = ip.map(IpAddr::V4).into_iter().chain(ip6.map(IpAddr::V6)).collect();
    for ip in &ips {
        datapath::remove_rules(&mut node, *ip).map_err(datapath_error)?;
    }
    let trunk = match agent.as_mut().map(|a| a.get(key(env))) {
        Some(Ok(Some(a))) => trunk_leg(&a).ok().flatten(),
        _ => None,
    };
    let reach = match (&exclusive_mac, &trunk) {
        (Some(_), _) => guard::Reach::Leg,
        (None, Some(leg)) => guard::Reach::FromVpcBy(leg.trunk_nic.clone()),
        (None, None) => guard::Reach::Node,
    };
    guard::forget(&guard::Guarded { iface: datapath::host_veth_name(&env.container_id, &env.ifname), sources: ips, reach });
    // A trunk pod's VLAN sub-interface (kernels with 8021q) goes with it.
    if let Some(leg) = &trunk {
        datapath::trunk::remove_sub_interface(&mut node, leg).map_err(datapath_error)?;
    }
    // With the agent up, it deletes the veth after the release, off the runtime's clock; the pod's
    // interface name is freed now.
    if agent.is_some() {
        datapath::retire_pod_side(&mut node, &env.netns, &env.container_id, &env.ifname).map_err(datapath_error)?;
    }
    match agent.as_mut().map(|a| a.release(key(env))) {
        Some(Ok(_)) => Ok(()),
        _ => {
            datapath::delete_veth(&mut node, &env.container_id, &env.ifname).map_err(datapath_error)?;
            queue_release(conf, env)
        }
    }
}

fn check(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    let Some(prev) = conf.prev_result.as_ref() else {
        return Err(CniError::new(code::INVALID_NETWORK_CONFIG, "CHECK needs prevResult", "pass the result of ADD as prevResult"));
    };
    let mut agent = Agent::connect(&conf.agent_socket, code::TRY_AGAIN_LATER)?;
    let Some(allocation) = agent.get(key(env))? else {
        return Err(CniError::new(code::UNKNOWN_CONTAINER, format!("the agent has no allocation for {}/{}", env.container_id, env.ifname), "the pod's IP was released; recreate the pod"));
    };
    let ip = ipv4_of(&allocation)?;
    if result::pod_ipv4(prev, &env.ifname) != Some(ip) {
        return Err(CniError::new(code::DATAPATH_MISMATCH, format!("prevResult does not list the pod's address {ip}"), "the pod's IP changed after ADD; recreate the pod"));
    }
    let limits = pod_limits(env, conf)?;
    let mut node = node_netlink()?;
    if allocation.mode == pb::NetworkMode::Exclusive as i32 {
        exclusive::check(&exclusive_net(env, &allocation, conf.mtu()?)?).map_err(datapath_error)?;
        return bandwidth::check(&mut node, None, &env.netns, &env.ifname, &limits).map_err(datapath_error);
    }
    let table = allocation.eni.as_ref().map(|e| e.route_table).unwrap_or_default();
    let p = PodNet { container_id: env.container_id.clone(), ifname: env.ifname.clone(), netns: env.netns.clone(), ip, route_table: table, mtu: conf.mtu()?, trunk: trunk_leg(&allocation)?, ip6: ipv6_of(&allocation)?, gateway: gateway_of(&allocation) };
    datapath::check(&mut node, &p).map_err(datapath_error)?;
    let host = node.link_by_name(&datapath::host_veth_name(&env.container_id, &env.ifname)).ok().map(|l| l.index);
    bandwidth::check(&mut node, host, &env.netns, &env.ifname, &limits).map_err(datapath_error)
}

fn gc(conf: &NetConf) -> Result<(), CniError> {
    let valid: std::collections::BTreeSet<(String, String)> = conf.attachments_in_use().into_iter().map(|a| (a.container_id, a.ifname)).collect();
    let mut agent = Agent::connect(&conf.agent_socket, code::TRY_AGAIN_LATER)?;
    let mut node = node_netlink()?;
    let mut errors = Vec::new();
    // Links before allocations: an ADD allocates before it builds, so a veth listed here whose
    // allocation is not in the list after is a leftover, not an ADD in flight.
    let veths = datapath::host_veths(&mut node);
    let allocations = agent.list()?;
    let mut kept_veths = std::collections::BTreeSet::new();
    // A network of one mode (berth-exclusive, berth-trunk) collects only its mode's attachments:
    // the runtime's list names only that network's. The default network collects them all.
    let only = match conf.pod_network()?.mode.as_deref() {
        Some("exclusive") => Some(pb::NetworkMode::Exclusive as i32),
        Some("trunk") => Some(pb::NetworkMode::Trunk as i32),
        Some(_) | None => None,
    };
    for a in allocations.iter().filter(|a| only.is_some_and(|m| a.mode != m)) {
        if let Some(k) = &a.key {
            kept_veths.insert(datapath::host_veth_name(&k.container_id, &k.ifname));
        }
    }
    for a in allocations.iter().filter(|a| only.is_none_or(|m| a.mode == m)) {
        let Some(k) = a.key.clone() else { continue };
        if valid.contains(&(k.container_id.clone(), k.ifname.clone())) {
            kept_veths.insert(datapath::host_veth_name(&k.container_id, &k.ifname));
            continue;
        }
        let ips: Vec<IpAddr> = ipv4_of(a).ok().map(IpAddr::V4).into_iter().chain(ipv6_of(a).ok().flatten().map(IpAddr::V6)).collect();
        if let Err(e) = datapath::teardown(&mut node, &k.container_id, &k.ifname, &ips) {
            errors.push(format!("{}/{}: {e}", k.container_id, k.ifname));
        }
        if let Err(e) = agent.release(k.clone()) {
            errors.push(format!("{}/{}: {}", k.container_id, k.ifname, e.msg));
        }
    }
    match veths {
        Ok(links) => {
            for l in links.into_iter().filter(|l| !kept_veths.contains(&l.name)) {
                if let Err(e) = berth_nodenet::NetOps::delete_link(&mut node, l.index)
                    && !e.is_not_found()
                {
                    errors.push(format!("{}: {e}", l.name));
                }
            }
        }
        Err(e) => errors.push(e.to_string()),
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(code::IO_FAILURE, format!("GC could not remove everything: {}", errors.join("; ")), "the agent's reconciliation retries; see its log"))
    }
}

fn status(conf: &NetConf) -> Result<(), CniError> {
    let mut agent = Agent::connect(&conf.agent_socket, code::PLUGIN_NOT_AVAILABLE)?;
    let s = agent.status()?;
    if s.ready {
        Ok(())
    } else {
        Err(CniError::new(code::PLUGIN_NOT_AVAILABLE, format!("the Berth agent cannot serve an ADD now: {}", s.reason), "see berth-agent's status and log"))
    }
}

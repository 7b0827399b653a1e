//! The agent's work on the node itself: each pool ENI's NIC brought up with its own policy-routing
//! table (default route via the vSwitch gateway out of that NIC), and leftovers of pods that are
//! gone (host veths, policy rules) removed. The per-pod datapath is the plugin's.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use std::os::fd::AsFd as _;

use berth_nodenet::bpf::{load_tc_program, vlan};
use berth_nodenet::{IpFamily, TcHook, MacAddr, NetOps, Netlink, Netns, Route, Scope, sysctl_in};
use ipnetwork::{IpNetwork, Ipv4Network};

use crate::pool::ledger::Nic;

/// The name of the trunk NIC's ingress program.
pub const TRUNK_PROGRAM: &str = "berth_trunk_in";

/// Tables of ENIs are 1000 + the NIC's interface index, as Terway numbers them.
pub const ENI_TABLE_BASE: u32 = 1000;
// The pod datapath's names and priorities are the plugin's; the agent removes leftovers by them.
pub use berth_cni::datapath::{HOST_VETH_PREFIX, RULE_PRIORITY_FROM_POD, RULE_PRIORITY_TO_POD, host_veth_name};

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("node {what}: {source}")]
    Netlink { what: String, source: berth_nodenet::Error },
    #[error("the cloud reports MAC {0:?}, which is not a MAC address")]
    BadMac(String),
    #[error("node trunk NIC {nic}: {reason}")]
    Bpf { nic: String, reason: String },
}

fn fail(what: impl Into<String>) -> impl FnOnce(berth_nodenet::Error) -> NodeError {
    let what = what.into();
    move |source| NodeError::Netlink { what, source }
}

fn gone_ok(e: berth_nodenet::Error) -> berth_nodenet::Result<()> {
    if e.is_not_found() { Ok(()) } else { Err(e) }
}

/// The link group released pods' veths join just before they are deleted together (no other link
/// of the node's namespace is in it; group 0 is the kernel's default).
const RETIRED_LINK_GROUP: u32 = 0x6265;

/// The node's namespace and a netlink socket opened in it.
pub struct Node {
    netns: Option<Netns>,
    nl: Netlink,
}

impl Node {
    /// `netns`: a path or a name under /run/netns; `None` is the agent's own namespace.
    pub fn open(netns: Option<&str>) -> Result<Node, NodeError> {
        let netns = match netns {
            Some(n) if n.contains('/') => Some(Netns::open(n).map_err(fail(format!("namespace {n}")))?),
            Some(n) => Some(Netns::open_named(n).map_err(fail(format!("namespace {n}")))?),
            None => None,
        };
        let nl = match &netns {
            Some(ns) => Netlink::open_in_netns(ns),
            None => Netlink::open(),
        }
        .map_err(fail("netlink socket"))?;
        Ok(Node { netns, nl })
    }

    pub fn netns(&self) -> Option<&Netns> {
        self.netns.as_ref()
    }

    fn sysctl(&self, key: &str, value: &str) -> Result<(), NodeError> {
        let ns = match &self.netns {
            Some(ns) => ns,
            None => &Netns::current().map_err(fail("own namespace"))?,
        };
        sysctl_in(ns, key, value).map_err(fail(format!("sysctl {key}")))
    }

    /// Forwarding on: the node routes between pod veths and ENI NICs.
    pub fn prepare(&mut self) -> Result<(), NodeError> {
        self.sysctl("net/ipv4/ip_forward", "1")?;
        // Pods' IPv6 (dual-stack) is forwarded too; a kernel without IPv6 has no such knob.
        let _ = self.sysctl("net/ipv6/conf/all/forwarding", "1");
        Ok(())
    }

    /// Finds the ENI's NIC by MAC and gives it its table: the gateway on-link and the default
    /// route through it. Idempotent.
    pub fn configure_eni(&mut self, mac: &str, gateway: Ipv4Addr, gateway6: Option<std::net::Ipv6Addr>) -> Result<Option<Nic>, NodeError> {
        let want: MacAddr = mac.parse().map_err(|_| NodeError::BadMac(mac.to_string()))?;
        let links = self.nl.links().map_err(fail("links"))?;
        let Some(link) = links.into_iter().find(|l| l.mac == Some(want) && l.kind.as_deref() != Some("bridge")) else {
            return Ok(None);
        };
        let table = ENI_TABLE_BASE + link.index;
        self.sysctl(&format!("net/ipv4/conf/{}/rp_filter", link.name), "0")?;
        self.nl.set_link_up(link.index).map_err(fail(format!("{} up", link.name)))?;
        let gw = IpNetwork::V4(Ipv4Network::new(gateway, 32).expect("/32"));
        self.nl.replace_route(&Route::new(gw).dev(link.index).scope(Scope::Link).table(table)).map_err(fail(format!("gateway route in table {table}")))?;
        let default = Route::default_route(IpFamily::V4).via(IpAddr::V4(gateway)).dev(link.index).onlink().table(table);
        self.nl.replace_route(&default).map_err(fail(format!("default route in table {table}")))?;
        if let Some(gw6) = gateway6 {
            // The vSwitch's IPv6 gateway is link-local: reached on this NIC.
            let default6 = Route::default_route(IpFamily::V6).via(IpAddr::V6(gw6)).dev(link.index).table(table);
            self.nl.replace_route(&default6).map_err(fail(format!("IPv6 default route in table {table}")))?;
        }
        Ok(Some(Nic { name: link.name, index: link.index, route_table: table }))
    }

    /// Brings up the trunk ENI's NIC and runs the program that takes members' VLAN tags off the
    /// frames it receives (so the node routes them to the members' pods). Idempotent.
    pub fn configure_trunk(&mut self, mac: &str) -> Result<Option<Nic>, NodeError> {
        let Some((name, index)) = self.find_nic(mac)? else { return Ok(None) };
        self.sysctl(&format!("net/ipv4/conf/{name}/rp_filter"), "0")?;
        // The node reaches its trunk pods through the VPC: its own packets come back in by the
        // trunk NIC, with the node's address as source, which the kernel takes only with this.
        self.sysctl(&format!("net/ipv4/conf/{name}/accept_local"), "1")?;
        self.nl.set_link_up(index).map_err(fail(format!("{name} up")))?;
        let bpf = |reason: String| NodeError::Bpf { nic: name.clone(), reason };
        let insns = vlan::trunk_ingress().map_err(|e| bpf(e.to_string()))?;
        let prog = load_tc_program(TRUNK_PROGRAM, &insns).map_err(|e| bpf(e.to_string()))?;
        self.nl.attach_bpf(index, TcHook::Ingress, prog.as_fd(), TRUNK_PROGRAM).map_err(fail(format!("trunk program on {name}")))?;
        Ok(Some(Nic { name, index, route_table: 0 }))
    }

    /// The NIC with this MAC on the node, if it is there: (name, index).
    pub fn find_nic(&mut self, mac: &str) -> Result<Option<(String, u32)>, NodeError> {
        let want: MacAddr = mac.parse().map_err(|_| NodeError::BadMac(mac.to_string()))?;
        Ok(self.nl.links().map_err(fail("links"))?.into_iter().find(|l| l.mac == Some(want)).map(|l| (l.name, l.index)))
    }

    /// Empties an ENI's table before it goes.
    pub fn release_eni(&mut self, nic: &Nic) -> Result<(), NodeError> {
        // A pod's own ENI has no table (0); never touch the kernel's or the main ones.
        if nic.route_table < ENI_TABLE_BASE {
            return Ok(());
        }
        let routes = self.nl.routes(Some(nic.route_table)).map_err(fail("routes"))?;
        for r in routes {
            self.nl.delete_route(&r).or_else(gone_ok).map_err(fail(format!("route in table {}", nic.route_table)))?;
        }
        Ok(())
    }

    /// Removes what pods that are gone left behind: policy rules of the pod priorities for IPs no
    /// allocation holds, and host veths whose name belongs to no allocation. `held` is asked only
    /// after the node was listed: an ADD allocates before it builds, so whatever it built by then
    /// is in the answer. Returns what was removed.
    pub fn remove_leftovers(&mut self, held: impl FnOnce() -> (BTreeSet<Ipv4Addr>, BTreeSet<String>)) -> Result<Vec<String>, NodeError> {
        let rules = self.nl.rules().map_err(fail("rules"))?;
        let links = self.nl.links().map_err(fail("links"))?;
        let (held_ips, host_veths) = held();
        let mut removed = Vec::new();
        for rule in rules {
            let ip = match rule.priority {
                Some(RULE_PRIORITY_TO_POD) => rule.to,
                Some(RULE_PRIORITY_FROM_POD) => rule.from,
                _ => None,
            };
            let Some(IpNetwork::V4(net)) = ip else { continue };
            if net.prefix() == 32 && !held_ips.contains(&net.ip()) {
                self.nl.delete_rule(&rule).or_else(gone_ok).map_err(fail(format!("rule for {}", net.ip())))?;
                removed.push(format!("rule {} {}", rule.priority.unwrap_or_default(), net.ip()));
            }
        }
        for link in links {
            if link.name.starts_with(HOST_VETH_PREFIX) && link.kind.as_deref() == Some("veth") && !host_veths.contains(&link.name) {
                self.nl.delete_link(link.index).or_else(gone_ok).map_err(fail(format!("veth {}", link.name)))?;
                removed.push(format!("veth {}", link.name));
            }
        }
        Ok(removed)
    }

    /// The interface index of a link, if it exists.
    pub fn link_index(&mut self, name: &str) -> Option<u32> {
        self.nl.link_by_name(name).ok().map(|l| l.index)
    }

    /// Deletes a link by index; gone already is fine.
    pub fn delete_link(&mut self, index: u32) -> Result<(), NodeError> {
        self.nl.delete_link(index).or_else(gone_ok).map_err(fail(format!("link index {index}")))
    }

    /// A thread with its own netlink socket in the node's namespace that deletes the links whose
    /// indexes it is sent; it ends when the sender is dropped.
    pub fn spawn_link_deleter(&self) -> std::sync::mpsc::Sender<u32> {
        let (tx, rx) = std::sync::mpsc::channel::<u32>();
        let nl = match &self.netns {
            Some(ns) => Netlink::open_in_netns(ns),
            None => Netlink::open(),
        };
        std::thread::Builder::new()
            .name("berth-unwire".into())
            .spawn(move || {
                let mut nl = match nl {
                    Ok(nl) => nl,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot open netlink for deleting veths; reconciliation removes them instead");
                        return;
                    }
                };
                // What arrived meanwhile goes in the same batch: the kernel deletes a batch of
                // links for about the price of one.
                while let Ok(first) = rx.recv() {
                    let batch: Vec<u32> = std::iter::once(first).chain(rx.try_iter()).collect();
                    if let Err(e) = nl.delete_links_together(&batch, RETIRED_LINK_GROUP) {
                        tracing::warn!(?batch, error = %e, "cannot delete released pods' veths; reconciliation retries");
                    }
                }
            })
            .expect("spawn a thread");
        tx
    }

    /// Names of the host ends of pod veths on the node.
    pub fn host_veth_names(&mut self) -> Result<Vec<String>, NodeError> {
        Ok(self.nl.links().map_err(fail("links"))?.into_iter().filter(|l| l.name.starts_with(HOST_VETH_PREFIX) && l.kind.as_deref() == Some("veth")).map(|l| l.name).collect())
    }

    /// The ENI tables and rules the node has, for introspection: (rule priority, IP, table).
    pub fn pod_rules(&mut self) -> Result<Vec<(u32, Ipv4Addr, u32)>, NodeError> {
        let mut out = Vec::new();
        for rule in self.nl.rules().map_err(fail("rules"))? {
            let ip = match rule.priority {
                Some(RULE_PRIORITY_TO_POD) => rule.to,
                Some(RULE_PRIORITY_FROM_POD) => rule.from,
                _ => None,
            };
            if let Some(IpNetwork::V4(net)) = ip {
                out.push((rule.priority.unwrap_or_default(), net.ip(), rule.table));
            }
        }
        Ok(out)
    }
}



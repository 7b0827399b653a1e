//! Trunk mode's leg of the datapath: a trunk pod has the shared datapath's veth and routes (its
//! IP is its member ENI's primary address, so no `from` rule and no ENI table), its interface
//! carries the member's MAC, and a tc program on the host end's ingress gives every IP frame the
//! pod sends the member's MAC as source, the VPC gateway's as destination and the member's VLAN
//! tag, and sends it out of the trunk NIC. Frames for the pod come back tagged; the trunk NIC's own
//! program (the agent's) untags them and the node routes them to the veth like a shared pod's.
//!
//! On a kernel with 8021q the member gets a VLAN sub-interface of the trunk NIC instead (named
//! `<trunk>.<vlan>`, the member's MAC, a routing table of its own whose default route leaves by
//! it, and the pod's `from` rule into that table); the kernel tags and untags. Kernels without
//! 8021q (EOPNOTSUPP) take the tc program path, which works everywhere tc BPF does.

use std::os::fd::AsFd as _;

use berth_nodenet::bpf::{load_tc_program, vlan};
use berth_nodenet::{MacAddr, NetOps, Netlink, TcHook};

use super::{DatapathError, nl_err};

/// The VPC's gateway MAC: the vRouter answers for every address with it.
pub const VPC_GATEWAY_MAC: MacAddr = MacAddr([0xee, 0xff, 0xff, 0xff, 0xff, 0xff]);
/// The name of the host end's program.
pub const MEMBER_PROGRAM: &str = "berth_member";

/// A trunk pod's member ENI as the node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrunkLeg {
    pub vlan_id: u16,
    pub member_mac: MacAddr,
    /// The trunk ENI's NIC on the node.
    pub trunk_nic: String,
}

/// Tables of members' VLAN sub-interfaces: 3000 + the VLAN ID.
pub const VLAN_TABLE_BASE: u32 = 3000;

/// How a trunk pod's frames get their tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tagging {
    /// By the kernel, through this VLAN sub-interface.
    SubInterface(String),
    /// By the tc program on the host end of the pod's veth.
    Program,
}

/// The member's VLAN sub-interface name: `<trunk>.<vlan>` when it fits in 15 bytes.
pub fn sub_interface_name(trunk_nic: &str, vlan_id: u16) -> String {
    let name = format!("{trunk_nic}.{vlan_id}");
    if name.len() <= 15 { name } else { format!("btv{vlan_id}") }
}

/// Gives the pod's frames their member's tag: a VLAN sub-interface where the kernel has 8021q,
/// else the tc program on the host end (`host_index`) of the pod's veth. `ip` is the pod's address
/// and `gateway` its vSwitch's gateway, for the sub-interface's table.
pub fn tag(node: &mut Netlink, host_index: u32, leg: &TrunkLeg, ip: std::net::Ipv4Addr, gateway: std::net::Ipv4Addr) -> Result<Tagging, DatapathError> {
    let trunk = node.link_by_name(&leg.trunk_nic).map_err(nl_err(format_args!("the trunk NIC {}", leg.trunk_nic)))?;
    let name = sub_interface_name(&leg.trunk_nic, leg.vlan_id);
    if let Ok(old) = node.link_by_name(&name) {
        node.delete_link(old.index).or_else(super::gone_ok).map_err(nl_err(format_args!("stale {name}")))?;
    }
    match node.create_vlan(&name, trunk.index, leg.vlan_id, leg.member_mac) {
        Ok(sub) => {
            use std::net::IpAddr;
            let table = VLAN_TABLE_BASE + u32::from(leg.vlan_id);
            node.set_link_up(sub.index).map_err(nl_err(format_args!("{name} up")))?;
            let default = berth_nodenet::Route::default_route(berth_nodenet::IpFamily::V4).via(IpAddr::V4(gateway)).dev(sub.index).onlink().table(table);
            node.replace_route(&default).map_err(nl_err(format_args!("default route in table {table}")))?;
            node.add_rule(&super::rule_from(IpAddr::V4(ip), table)).or_else(super::exists_ok).map_err(nl_err(format_args!("rule from {ip}")))?;
            Ok(Tagging::SubInterface(name))
        }
        Err(e) if e.is_unsupported() => {
            tag_by_program(node, host_index, trunk.index, leg)?;
            Ok(Tagging::Program)
        }
        Err(e) => Err(nl_err(format_args!("VLAN sub-interface {name}"))(e)),
    }
}

/// Deletes the member's VLAN sub-interface, if it has one.
pub fn remove_sub_interface(node: &mut Netlink, leg: &TrunkLeg) -> Result<(), DatapathError> {
    let name = sub_interface_name(&leg.trunk_nic, leg.vlan_id);
    match node.link_by_name(&name) {
        Ok(l) if l.kind.as_deref() == Some("vlan") => node.delete_link(l.index).or_else(super::gone_ok).map_err(nl_err(&name)),
        _ => Ok(()),
    }
}

/// Runs the member's program on the host end (`host_index`) of the pod's veth.
fn tag_by_program(node: &mut Netlink, host_index: u32, trunk_index: u32, leg: &TrunkLeg) -> Result<(), DatapathError> {
    let trunk = node.link_by_index(trunk_index).map_err(nl_err(format_args!("the trunk NIC {}", leg.trunk_nic)))?;
    let insns = vlan::member_egress(leg.vlan_id, trunk.index, leg.member_mac, VPC_GATEWAY_MAC).map_err(|e| DatapathError::Netlink(e.to_string()))?;
    let prog = load_tc_program(MEMBER_PROGRAM, &insns).map_err(|e| DatapathError::Netlink(e.to_string()))?;
    node.attach_bpf(host_index, TcHook::Ingress, prog.as_fd(), MEMBER_PROGRAM).map_err(nl_err(format_args!("VLAN {} program", leg.vlan_id)))
}

/// CHECK: the member's sub-interface is up, or its program still runs on the host end.
pub fn check(node: &mut Netlink, host_index: u32, host_name: &str, leg: &TrunkLeg) -> Result<(), DatapathError> {
    if let Ok(sub) = node.link_by_name(&sub_interface_name(&leg.trunk_nic, leg.vlan_id))
        && sub.kind.as_deref() == Some("vlan")
    {
        return if sub.up { Ok(()) } else { Err(DatapathError::Mismatch(format!("the VLAN sub-interface {} is down", sub.name))) };
    }
    let filters = node.bpf_filters(host_index, TcHook::Ingress).map_err(nl_err(format_args!("filters of {host_name}")))?;
    if filters.iter().any(|f| f.name.starts_with(MEMBER_PROGRAM) && f.direct_action) {
        Ok(())
    } else {
        Err(DatapathError::Mismatch(format!("the VLAN program {MEMBER_PROGRAM} on {host_name} is missing: the pod's frames would leave untagged")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_interface_names_fit() {
        assert_eq!(sub_interface_name("eth1", 4094), "eth1.4094");
        let long = sub_interface_name("enp0s31f6xyz", 4094);
        assert!(long.len() <= 15 && long.contains("4094"), "{long}");
    }
}

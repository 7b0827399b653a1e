//! Trunk mode's leg of the datapath: a trunk pod has the shared datapath's veth and routes (its
//! IP is its member ENI's primary address, so no `from` rule and no ENI table), its interface
//! carries the member's MAC, and a tc program on the host end's ingress gives every IP frame the
//! pod sends the member's MAC as source, the VPC gateway's as destination and the member's VLAN
//! tag, and sends it out of the trunk NIC. Frames for the pod come back tagged; the trunk NIC's own
//! program (the agent's) untags them and the node routes them to the veth like a shared pod's.

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

/// Runs the member's program on the host end (`host_index`) of the pod's veth.
pub fn tag_pod_frames(node: &mut Netlink, host_index: u32, leg: &TrunkLeg) -> Result<(), DatapathError> {
    let trunk = node.link_by_name(&leg.trunk_nic).map_err(nl_err(format_args!("the trunk NIC {}", leg.trunk_nic)))?;
    let insns = vlan::member_egress(leg.vlan_id, trunk.index, leg.member_mac, VPC_GATEWAY_MAC).map_err(|e| DatapathError::Netlink(e.to_string()))?;
    let prog = load_tc_program(MEMBER_PROGRAM, &insns).map_err(|e| DatapathError::Netlink(e.to_string()))?;
    node.attach_bpf(host_index, TcHook::Ingress, prog.as_fd(), MEMBER_PROGRAM).map_err(nl_err(format_args!("VLAN {} program", leg.vlan_id)))
}

/// CHECK: the member's program still runs on the host end.
pub fn check(node: &mut Netlink, host_index: u32, host_name: &str) -> Result<(), DatapathError> {
    let filters = node.bpf_filters(host_index, TcHook::Ingress).map_err(nl_err(format_args!("filters of {host_name}")))?;
    if filters.iter().any(|f| f.name.starts_with(MEMBER_PROGRAM) && f.direct_action) {
        Ok(())
    } else {
        Err(DatapathError::Mismatch(format!("the VLAN program {MEMBER_PROGRAM} on {host_name} is missing: the pod's frames would leave untagged")))
    }
}

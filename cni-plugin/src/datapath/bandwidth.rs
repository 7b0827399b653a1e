//! A pod's bandwidth limits, in every mode, as token buckets on the links its traffic leaves by:
//! - egress (what the pod sends): the pod's own interface's root qdisc;
//! - ingress (what it receives): the host end of its veth (shared and trunk pods); an exclusive pod
//!   has no veth, so its ENI's incoming traffic is redirected (tc BPF on the interface's ingress)
//!   to an `ifb` link in the pod's namespace, whose root qdisc is the bucket.

use std::os::fd::AsFd as _;

use berth_nodenet::bpf::{load_tc_program, redirect_program};
use berth_nodenet::{NetOps, Netlink, RateLimit, TcHook};

use super::{DatapathError, nl_err, open_pod_netns};
use crate::protocol::bandwidth::Limits;

/// The ifb link of an exclusive pod with an ingress limit, in the pod's namespace.
pub const IFB_NAME: &str = "berth-ifb0";
const REDIRECT_PROGRAM: &str = "berth_to_ifb";

/// Applies the limits. `host_index`: the host end of the pod's veth, if it has one.
pub fn apply(node: &mut Netlink, host_index: Option<u32>, netns: &str, ifname: &str, limits: &Limits) -> Result<(), DatapathError> {
    if limits.is_empty() {
        return Ok(());
    }
    let (_ns, mut pod) = open_pod_netns(netns)?;
    let link = pod.link_by_name(ifname).map_err(nl_err(format_args!("{ifname} in {netns}")))?;
    if let Some(egress) = limits.egress {
        pod.set_rate_limit(link.index, egress).map_err(nl_err(format_args!("egress limit on {ifname}")))?;
    }
    let Some(ingress) = limits.ingress else { return Ok(()) };
    match host_index {
        Some(host) => node.set_rate_limit(host, ingress).map_err(nl_err("ingress limit on the host veth")),
        None => shape_ingress_by_ifb(&mut pod, link.index, ingress),
    }
}

fn shape_ingress_by_ifb(pod: &mut Netlink, index: u32, ingress: RateLimit) -> Result<(), DatapathError> {
    let ifb = match pod.link_by_name(IFB_NAME) {
        Ok(l) => l,
        Err(_) => pod.create_ifb(IFB_NAME).map_err(nl_err(IFB_NAME))?,
    };
    pod.set_link_up(ifb.index).map_err(nl_err(format_args!("{IFB_NAME} up")))?;
    pod.set_rate_limit(ifb.index, ingress).map_err(nl_err(format_args!("ingress limit on {IFB_NAME}")))?;
    let insns = redirect_program(ifb.index).map_err(|e| DatapathError::Netlink(e.to_string()))?;
    let prog = load_tc_program(REDIRECT_PROGRAM, &insns).map_err(|e| DatapathError::Netlink(e.to_string()))?;
    pod.attach_bpf(index, TcHook::Ingress, prog.as_fd(), REDIRECT_PROGRAM).map_err(nl_err("redirect to the ifb"))
}

/// CHECK: the buckets ADD set are there with their rates.
pub fn check(node: &mut Netlink, host_index: Option<u32>, netns: &str, ifname: &str, limits: &Limits) -> Result<(), DatapathError> {
    if limits.is_empty() {
        return Ok(());
    }
    let miss = |what: String| Err(DatapathError::Mismatch(what));
    let (_ns, mut pod) = open_pod_netns(netns)?;
    let link = pod.link_by_name(ifname).map_err(nl_err(format_args!("{ifname} in {netns}")))?;
    let rate_of = |rate: u64| rate / 8 * 8;
    if let Some(e) = limits.egress
        && pod.rate_limit(link.index).map_err(nl_err("qdiscs"))? != Some(rate_of(e.rate_bits))
    {
        return miss(format!("the egress limit of {} bit/s on {ifname} is missing", e.rate_bits));
    }
    if let Some(i) = limits.ingress {
        let have = match host_index {
            Some(host) => node.rate_limit(host).map_err(nl_err("qdiscs"))?,
            None => match pod.link_by_name(IFB_NAME) {
                Ok(ifb) => pod.rate_limit(ifb.index).map_err(nl_err("qdiscs"))?,
                Err(_) => None,
            },
        };
        if have != Some(rate_of(i.rate_bits)) {
            return miss(format!("the ingress limit of {} bit/s is missing", i.rate_bits));
        }
    }
    Ok(())
}

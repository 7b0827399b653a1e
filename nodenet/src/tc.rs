//! tc over netlink: the `clsact` qdisc and direct-action BPF filters on its ingress and
//! egress hooks (what `tc qdisc add dev X clsact` and `tc filter add dev X ingress bpf da`
//! do), so programs built by [`crate::bpf`] run on a link.

use std::fmt;
use std::os::fd::{AsRawFd as _, BorrowedFd};

use netlink_packet_route::tc::{TcAttribute, TcBpfFlags, TcFilterBpfOption, TcHandle, TcMessage, TcOption};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::error::Result;
use crate::netlink::Netlink;

/// Which side of a link a program sees: what the link receives, or what it sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcHook {
    Ingress,
    Egress,
}

impl TcHook {
    fn parent(self) -> TcHandle {
        let minor = match self {
            TcHook::Ingress => TcHandle::MIN_INGRESS,
            TcHook::Egress => TcHandle::MIN_EGRESS,
        };
        TcHandle { major: TcHandle::CLSACT.major, minor }
    }
}

impl fmt::Display for TcHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TcHook::Ingress => "ingress",
            TcHook::Egress => "egress",
        })
    }
}

/// The one filter slot Berth uses per hook: priority 1, handle 1, every protocol.
const PRIORITY: u32 = 1;
const HANDLE: TcHandle = TcHandle { major: 0, minor: 1 };
/// `htons(ETH_P_ALL)`.
const ETH_P_ALL_BE: u32 = 0x0300;

fn message(ifindex: u32, handle: TcHandle, parent: TcHandle, info: u32) -> TcMessage {
    let mut m = TcMessage::default();
    m.header.family = AddressFamily::Unspec;
    m.header.index = ifindex as i32;
    m.header.handle = handle;
    m.header.parent = parent;
    m.header.info = info;
    m
}

/// A BPF filter found on a hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BpfFilter {
    pub name: String,
    pub direct_action: bool,
}

impl Netlink {
    /// Adds the `clsact` qdisc to a link unless it has one.
    pub fn ensure_clsact(&mut self, ifindex: u32) -> Result<()> {
        let mut m = message(ifindex, TcHandle { major: TcHandle::CLSACT.major, minor: 0 }, TcHandle::CLSACT, 0);
        m.attributes.push(TcAttribute::Kind("clsact".into()));
        let flags = netlink_packet_core::NLM_F_CREATE | netlink_packet_core::NLM_F_EXCL;
        match self.ack("add clsact qdisc", &format!("link index {ifindex}"), RouteNetlinkMessage::NewQueueDiscipline(m), flags) {
            Err(e) if e.is_exists() => Ok(()),
            other => other,
        }
    }

    /// Runs the loaded program `prog` in direct-action mode on a hook of a link, replacing the
    /// program Berth had there. Adds the `clsact` qdisc when missing.
    pub fn attach_bpf(&mut self, ifindex: u32, hook: TcHook, prog: BorrowedFd<'_>, name: &str) -> Result<()> {
        self.ensure_clsact(ifindex)?;
        let mut m = message(ifindex, HANDLE, hook.parent(), (PRIORITY << 16) | ETH_P_ALL_BE);
        m.attributes.push(TcAttribute::Kind("bpf".into()));
        m.attributes.push(TcAttribute::Options(vec![
            TcOption::Bpf(TcFilterBpfOption::ProgFd(prog.as_raw_fd() as u32)),
            TcOption::Bpf(TcFilterBpfOption::ProgName(name.to_string())),
            TcOption::Bpf(TcFilterBpfOption::Flags(TcBpfFlags::DirectAction)),
        ]));
        let flags = netlink_packet_core::NLM_F_CREATE | netlink_packet_core::NLM_F_REPLACE;
        self.ack("attach bpf", &format!("{name} on {hook} of link index {ifindex}"), RouteNetlinkMessage::NewTrafficFilter(m), flags)
    }

    /// Removes Berth's program from a hook; absent is success.
    pub fn detach_bpf(&mut self, ifindex: u32, hook: TcHook) -> Result<()> {
        let m = message(ifindex, HANDLE, hook.parent(), (PRIORITY << 16) | ETH_P_ALL_BE);
        match self.ack("detach bpf", &format!("{hook} of link index {ifindex}"), RouteNetlinkMessage::DelTrafficFilter(m), 0) {
            Err(e) if e.is_not_found() => Ok(()),
            other => other,
        }
    }

    /// The BPF filters on a hook of a link, by the names they were attached with.
    pub fn bpf_filters(&mut self, ifindex: u32, hook: TcHook) -> Result<Vec<BpfFilter>> {
        let m = message(ifindex, TcHandle::UNSPEC, hook.parent(), 0);
        let replies = match self.dump("list filters", &format!("{hook} of link index {ifindex}"), RouteNetlinkMessage::GetTrafficFilter(m)) {
            // A link without clsact has no such hook: no filters.
            Err(e) if e.is_not_found() || e.errno() == Some(libc::EINVAL) => return Ok(Vec::new()),
            other => other?,
        };
        let mut found = Vec::new();
        for r in replies {
            let RouteNetlinkMessage::NewTrafficFilter(f) = r else { continue };
            if !f.attributes.iter().any(|a| matches!(a, TcAttribute::Kind(k) if k == "bpf")) {
                continue;
            }
            let mut filter = BpfFilter { name: String::new(), direct_action: false };
            for a in &f.attributes {
                if let TcAttribute::Options(opts) = a {
                    for o in opts {
                        match o {
                            TcOption::Bpf(TcFilterBpfOption::ProgName(n)) => filter.name = n.clone(),
                            TcOption::Bpf(TcFilterBpfOption::Flags(fl)) => filter.direct_action = fl.contains(TcBpfFlags::DirectAction),
                            _ => {}
                        }
                    }
                }
            }
            // The kernel reports each filter twice (its chain head and the filter); keep one.
            if !filter.name.is_empty() && !found.contains(&filter) {
                found.push(filter);
            }
        }
        Ok(found)
    }
}

//! tc over netlink: the `clsact` qdisc and direct-action BPF filters on its ingress and
//! egress hooks (what `tc qdisc add dev X clsact` and `tc filter add dev X ingress bpf da`
//! do), so programs built by [`crate::bpf`] run on a link; and the token-bucket filter (`tbf`)
//! as a link's root qdisc, which limits what the link sends.

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

/// A rate limit: bits per second and the burst in bits that may pass at line rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub rate_bits: u64,
    pub burst_bits: u64,
}

// Attributes of the tbf qdisc's options (linux/pkt_sched.h).
const TCA_TBF_PARMS: u16 = 1;
const TCA_TBF_RATE64: u16 = 4;
const TCA_TBF_BURST: u16 = 6;
/// `TC_LINKLAYER_ETHERNET`: no rate table needed.
const LINKLAYER_ETHERNET: u8 = 1;
/// How long a packet may wait in the bucket's queue before it is dropped.
const TBF_LATENCY_MS: u64 = 50;

/// The tbf options for a limit: `struct tc_tbf_qopt` (rate, peak rate, limit, buffer, mtu), the
/// 64-bit rate when it does not fit in 32 bits, and the burst in bytes.
fn tbf_options(limit: RateLimit) -> Vec<TcOption> {
    let rate_bytes = (limit.rate_bits / 8).max(1);
    let burst_bytes = (limit.burst_bits / 8).clamp(1, u64::from(u32::MAX)) as u32;
    let queue_bytes = (rate_bytes.saturating_mul(TBF_LATENCY_MS) / 1000).saturating_add(u64::from(burst_bytes)).min(u64::from(u32::MAX)) as u32;
    // Ticks of 64 ns the burst takes at the rate; the kernel recomputes it from TCA_TBF_BURST.
    let buffer_ticks = (u64::from(burst_bytes).saturating_mul(1_000_000_000) / rate_bytes / 64).min(u64::from(u32::MAX)) as u32;
    let mut qopt = Vec::with_capacity(36);
    // struct tc_ratespec: cell_log, linklayer, overhead, cell_align, mpu, rate.
    qopt.extend_from_slice(&[0, LINKLAYER_ETHERNET]);
    qopt.extend_from_slice(&0u16.to_ne_bytes());
    qopt.extend_from_slice(&0i16.to_ne_bytes());
    qopt.extend_from_slice(&0u16.to_ne_bytes());
    qopt.extend_from_slice(&(rate_bytes.min(u64::from(u32::MAX)) as u32).to_ne_bytes());
    // No peak rate.
    qopt.extend_from_slice(&[0u8; 12]);
    qopt.extend_from_slice(&queue_bytes.to_ne_bytes());
    qopt.extend_from_slice(&buffer_ticks.to_ne_bytes());
    qopt.extend_from_slice(&0u32.to_ne_bytes());
    let mut opts = vec![TcOption::Other(netlink_packet_core::DefaultNla::new(TCA_TBF_PARMS, qopt))];
    if rate_bytes > u64::from(u32::MAX) {
        opts.push(TcOption::Other(netlink_packet_core::DefaultNla::new(TCA_TBF_RATE64, rate_bytes.to_ne_bytes().to_vec())));
    }
    opts.push(TcOption::Other(netlink_packet_core::DefaultNla::new(TCA_TBF_BURST, burst_bytes.to_ne_bytes().to_vec())));
    opts
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
            // No clsact qdisc (EINVAL) or no such filter: nothing to remove.
            Err(e) if e.is_not_found() || e.errno() == Some(libc::EINVAL) => Ok(()),
            other => other,
        }
    }

    /// Creates an `ifb` link (down) and returns it.
    pub fn create_ifb(&mut self, name: &str) -> Result<crate::Link> {
        let msg = crate::link::create_ifb_request(name)?;
        self.ack("create ifb", &name, msg, netlink_packet_core::NLM_F_CREATE | netlink_packet_core::NLM_F_EXCL)?;
        crate::NetOps::link_by_name(self, name)
    }

    /// Creates an 802.1Q sub-interface of `parent` with VLAN `id` and `mac` (down). Kernels without
    /// 8021q refuse with EOPNOTSUPP ([`crate::Error::errno`]).
    pub fn create_vlan(&mut self, name: &str, parent: u32, id: u16, mac: crate::MacAddr) -> Result<crate::Link> {
        let msg = crate::link::create_vlan_request(name, parent, id, mac)?;
        self.ack("create vlan", &name, msg, netlink_packet_core::NLM_F_CREATE | netlink_packet_core::NLM_F_EXCL)?;
        crate::NetOps::link_by_name(self, name)
    }

    /// Limits what a link sends with a token bucket as its root qdisc (replacing the one it had).
    pub fn set_rate_limit(&mut self, ifindex: u32, limit: RateLimit) -> Result<()> {
        let mut m = message(ifindex, TcHandle { major: 1, minor: 0 }, TcHandle::ROOT, 0);
        m.attributes.push(TcAttribute::Kind("tbf".into()));
        m.attributes.push(TcAttribute::Options(tbf_options(limit)));
        let flags = netlink_packet_core::NLM_F_CREATE | netlink_packet_core::NLM_F_REPLACE;
        self.ack("set tbf qdisc", &format!("{} bit/s on link index {ifindex}", limit.rate_bits), RouteNetlinkMessage::NewQueueDiscipline(m), flags)
    }

    /// The rate of a link's root token bucket, in bits per second, if it has one.
    pub fn rate_limit(&mut self, ifindex: u32) -> Result<Option<u64>> {
        let m = message(ifindex, TcHandle::UNSPEC, TcHandle::UNSPEC, 0);
        let replies = self.dump("list qdiscs", &format!("link index {ifindex}"), RouteNetlinkMessage::GetQueueDiscipline(m))?;
        for r in replies {
            let RouteNetlinkMessage::NewQueueDiscipline(q) = r else { continue };
            if q.header.index != ifindex as i32 || q.header.parent != TcHandle::ROOT || !q.attributes.iter().any(|a| matches!(a, TcAttribute::Kind(k) if k == "tbf")) {
                continue;
            }
            for a in &q.attributes {
                if let TcAttribute::Options(opts) = a {
                    for o in opts {
                        if let TcOption::Other(nla) = o
                            && netlink_packet_core::Nla::kind(nla) == TCA_TBF_PARMS
                        {
                            let mut buf = vec![0u8; netlink_packet_core::Nla::value_len(nla)];
                            netlink_packet_core::Nla::emit_value(nla, &mut buf);
                            if buf.len() >= 12 {
                                let rate = u32::from_ne_bytes([buf[8], buf[9], buf[10], buf[11]]);
                                return Ok(Some(u64::from(rate) * 8));
                            }
                        }
                    }
                }
            }
        }
        Ok(None)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(o: &TcOption) -> (u16, Vec<u8>) {
        let TcOption::Other(nla) = o else { panic!("{o:?}") };
        let mut buf = vec![0u8; netlink_packet_core::Nla::value_len(nla)];
        netlink_packet_core::Nla::emit_value(nla, &mut buf);
        (netlink_packet_core::Nla::kind(nla), buf)
    }

    #[test]
    fn tbf_options_carry_rate_burst_and_queue() {
        // 20 Mbit/s with a 200 kbit burst: 2,500,000 bytes/s, 25,000 bytes.
        let opts = tbf_options(RateLimit { rate_bits: 20_000_000, burst_bits: 200_000 });
        assert_eq!(opts.len(), 2, "no 64-bit rate below 4 GB/s");
        let (kind, qopt) = bytes(&opts[0]);
        assert_eq!((kind, qopt.len()), (TCA_TBF_PARMS, 36));
        assert_eq!(qopt[1], LINKLAYER_ETHERNET);
        assert_eq!(u32::from_ne_bytes(qopt[8..12].try_into().unwrap()), 2_500_000);
        // Queue: 50 ms at the rate plus the burst.
        assert_eq!(u32::from_ne_bytes(qopt[24..28].try_into().unwrap()), 125_000 + 25_000);
        let (kind, burst) = bytes(&opts[1]);
        assert_eq!((kind, u32::from_ne_bytes(burst.try_into().unwrap())), (TCA_TBF_BURST, 25_000));
        let fast = tbf_options(RateLimit { rate_bits: 100_000_000_000, burst_bits: 8_000_000 });
        assert!(fast.iter().any(|o| bytes(o).0 == TCA_TBF_RATE64), "100 Gbit/s needs the 64-bit rate");
    }
}

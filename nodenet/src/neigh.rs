//! Neighbour (ARP / NDP) entries and their `RTM_*NEIGH` messages.

use std::fmt;
use std::net::IpAddr;

use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage,
    NeighbourState as NlState,
};

use crate::{IpFamily, MacAddr};

/// The state of a neighbour entry (`NUD_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum NeighbourState {
    /// Never expires or gets probed: what a datapath installs.
    #[default]
    Permanent,
    Noarp,
    Reachable,
    Stale,
    Delay,
    Probe,
    Failed,
    Incomplete,
    None,
    Other(u16),
}

impl From<NlState> for NeighbourState {
    fn from(s: NlState) -> NeighbourState {
        match s {
            NlState::Permanent => NeighbourState::Permanent,
            NlState::Noarp => NeighbourState::Noarp,
            NlState::Reachable => NeighbourState::Reachable,
            NlState::Stale => NeighbourState::Stale,
            NlState::Delay => NeighbourState::Delay,
            NlState::Probe => NeighbourState::Probe,
            NlState::Failed => NeighbourState::Failed,
            NlState::Incomplete => NeighbourState::Incomplete,
            NlState::None => NeighbourState::None,
            other => NeighbourState::Other(u16::from(other)),
        }
    }
}

impl From<NeighbourState> for NlState {
    fn from(s: NeighbourState) -> NlState {
        match s {
            NeighbourState::Permanent => NlState::Permanent,
            NeighbourState::Noarp => NlState::Noarp,
            NeighbourState::Reachable => NlState::Reachable,
            NeighbourState::Stale => NlState::Stale,
            NeighbourState::Delay => NlState::Delay,
            NeighbourState::Probe => NlState::Probe,
            NeighbourState::Failed => NlState::Failed,
            NeighbourState::Incomplete => NlState::Incomplete,
            NeighbourState::None => NlState::None,
            NeighbourState::Other(v) => NlState::from(v),
        }
    }
}

/// A neighbour entry: `ip` is at `mac` on link `index`. A proxy entry (answer ARP /
/// NDP for `ip` on that link) has no MAC.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Neighbour {
    pub index: u32,
    pub ip: IpAddr,
    pub mac: Option<MacAddr>,
    pub state: NeighbourState,
    pub proxy: bool,
}

impl Neighbour {
    /// `ip neigh add IP lladdr MAC dev INDEX nud permanent`.
    pub fn permanent(index: u32, ip: IpAddr, mac: MacAddr) -> Neighbour {
        Neighbour {
            index,
            ip,
            mac: Some(mac),
            state: NeighbourState::Permanent,
            proxy: false,
        }
    }

    /// `ip neigh add proxy IP dev INDEX`.
    pub fn proxy(index: u32, ip: IpAddr) -> Neighbour {
        Neighbour {
            index,
            ip,
            mac: None,
            state: NeighbourState::None,
            proxy: true,
        }
    }
}

impl fmt::Display for Neighbour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.proxy {
            f.write_str("proxy ")?;
        }
        write!(f, "{}", self.ip)?;
        if let Some(mac) = self.mac {
            write!(f, " lladdr {mac}")?;
        }
        write!(f, " dev {}", self.index)
    }
}

pub(crate) fn dump_request(family: IpFamily, proxy: bool) -> RouteNetlinkMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = family.to_netlink();
    // The kernel dumps the proxy table instead when exactly NTF_PROXY is set.
    if proxy {
        msg.header.flags = NeighbourFlags::Proxy;
    }
    RouteNetlinkMessage::GetNeighbour(msg)
}

fn message(neighbour: &Neighbour, with_lladdr: bool) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = IpFamily::of(&neighbour.ip).to_netlink();
    msg.header.ifindex = neighbour.index;
    if neighbour.proxy {
        msg.header.flags = NeighbourFlags::Proxy;
    } else {
        msg.header.state = neighbour.state.into();
    }
    let dst = match neighbour.ip {
        IpAddr::V4(ip) => NeighbourAddress::Inet(ip),
        IpAddr::V6(ip) => NeighbourAddress::Inet6(ip),
    };
    msg.attributes.push(NeighbourAttribute::Destination(dst));
    if with_lladdr && let Some(mac) = neighbour.mac {
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
    }
    msg
}

pub(crate) fn add_request(neighbour: &Neighbour) -> RouteNetlinkMessage {
    RouteNetlinkMessage::NewNeighbour(message(neighbour, true))
}

pub(crate) fn delete_request(neighbour: &Neighbour) -> RouteNetlinkMessage {
    RouteNetlinkMessage::DelNeighbour(message(neighbour, false))
}

/// The entry in a `RTM_NEWNEIGH` reply; `None` for other messages and families.
pub(crate) fn from_reply(reply: RouteNetlinkMessage) -> Option<Neighbour> {
    let RouteNetlinkMessage::NewNeighbour(msg) = reply else {
        return None;
    };
    IpFamily::from_netlink(msg.header.family)?;
    let mut ip = None;
    let mut mac = None;
    for attr in msg.attributes {
        match attr {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => ip = Some(IpAddr::V4(a)),
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => ip = Some(IpAddr::V6(a)),
            NeighbourAttribute::LinkLayerAddress(bytes) => mac = MacAddr::from_bytes(&bytes),
            _ => {}
        }
    }
    let proxy = msg.header.flags.contains(NeighbourFlags::Proxy);
    Some(Neighbour {
        index: msg.header.ifindex,
        ip: ip?,
        mac,
        state: if proxy {
            NeighbourState::None
        } else {
            msg.header.state.into()
        },
        proxy,
    })
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::{Emitable, Parseable};
    use netlink_packet_route::AddressFamily;

    use super::*;

    fn round_trip(msg: RouteNetlinkMessage) -> NeighbourMessage {
        let (RouteNetlinkMessage::NewNeighbour(m) | RouteNetlinkMessage::DelNeighbour(m)) = msg
        else {
            panic!()
        };
        let mut buf = vec![0; m.buffer_len()];
        m.emit(&mut buf);
        NeighbourMessage::parse(&buf[..]).unwrap()
    }

    #[test]
    fn permanent_entry_round_trips() {
        let n = Neighbour::permanent(2, "169.254.1.1".parse().unwrap(), MacAddr([0xee; 6]));
        let msg = round_trip(add_request(&n));
        assert_eq!(msg.header.family, AddressFamily::Inet);
        assert_eq!(msg.header.state, NlState::Permanent);
        assert_eq!(
            from_reply(RouteNetlinkMessage::NewNeighbour(msg)).unwrap(),
            n
        );
        assert_eq!(n.to_string(), "169.254.1.1 lladdr ee:ee:ee:ee:ee:ee dev 2");
    }

    #[test]
    fn proxy_entry_sets_the_proxy_flag_and_no_lladdr() {
        let n = Neighbour::proxy(3, "fd00::1".parse().unwrap());
        let msg = round_trip(add_request(&n));
        assert_eq!(msg.header.family, AddressFamily::Inet6);
        assert!(msg.header.flags.contains(NeighbourFlags::Proxy));
        assert!(
            !msg.attributes
                .iter()
                .any(|a| matches!(a, NeighbourAttribute::LinkLayerAddress(_)))
        );
        assert_eq!(
            from_reply(RouteNetlinkMessage::NewNeighbour(msg)).unwrap(),
            n
        );
    }

    #[test]
    fn proxy_dump_asks_for_the_proxy_table() {
        let RouteNetlinkMessage::GetNeighbour(msg) = dump_request(IpFamily::V4, true) else {
            panic!()
        };
        assert_eq!(msg.header.flags, NeighbourFlags::Proxy);
    }
}

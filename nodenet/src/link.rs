//! Links: what a link is, veth pairs, and the `RTM_*LINK` messages that create,
//! change, move, delete and read them.

use std::fmt;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::str::FromStr;

use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};

use crate::error::{Error, Result};

/// An Ethernet MAC address, printed and parsed as `aa:bb:cc:dd:ee:ff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    pub fn from_bytes(bytes: &[u8]) -> Option<MacAddr> {
        Some(MacAddr(bytes.try_into().ok()?))
    }

    /// Locally administered, unicast: safe to assign to a veth.
    pub fn is_local_unicast(&self) -> bool {
        self.0[0] & 0b11 == 0b10
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl FromStr for MacAddr {
    type Err = Error;

    fn from_str(s: &str) -> Result<MacAddr> {
        let bad = || {
            Error::invalid(
                "MAC address",
                s,
                "expected six hex bytes like 02:00:0a:00:00:01",
            )
        };
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(out))
    }
}

/// A network interface as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// The driver kind from `IFLA_INFO_KIND` ("veth", "bridge", ...); `None` for
    /// physical NICs and loopback.
    pub kind: Option<String>,
    pub mac: Option<MacAddr>,
    pub mtu: u32,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// Carrier present (`IFF_LOWER_UP`).
    pub lower_up: bool,
    /// `IFLA_LINK`: for a veth, the peer's index (in the namespace `link_netnsid`
    /// names, when that is set).
    pub parent_index: Option<u32>,
    /// The peer namespace's id as seen from this namespace, when the peer is elsewhere.
    pub link_netnsid: Option<i32>,
    /// The bridge or bond this link is enslaved to.
    pub master: Option<u32>,
}

/// A veth pair to create. The first end stays in the socket's namespace; the peer
/// goes into `peer_netns` when set, in the same request.
#[derive(Debug, Clone)]
pub struct Veth<'a> {
    pub name: String,
    pub peer_name: String,
    pub mac: Option<MacAddr>,
    pub peer_mac: Option<MacAddr>,
    /// MTU of both ends.
    pub mtu: Option<u32>,
    pub peer_netns: Option<BorrowedFd<'a>>,
}

impl<'a> Veth<'a> {
    pub fn new(name: impl Into<String>, peer_name: impl Into<String>) -> Veth<'a> {
        Veth {
            name: name.into(),
            peer_name: peer_name.into(),
            mac: None,
            peer_mac: None,
            mtu: None,
            peer_netns: None,
        }
    }

    pub fn mac(mut self, mac: MacAddr) -> Self {
        self.mac = Some(mac);
        self
    }

    pub fn peer_mac(mut self, mac: MacAddr) -> Self {
        self.peer_mac = Some(mac);
        self
    }

    pub fn mtu(mut self, mtu: u32) -> Self {
        self.mtu = Some(mtu);
        self
    }

    /// Places the peer into this namespace (e.g. `netns.as_fd()`).
    pub fn peer_netns(mut self, netns: BorrowedFd<'a>) -> Self {
        self.peer_netns = Some(netns);
        self
    }
}

impl fmt::Display for Veth<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} peer {}", self.name, self.peer_name)?;
        if let Some(fd) = self.peer_netns {
            write!(f, " (peer in netns fd {})", fd.as_raw_fd())?;
        }
        Ok(())
    }
}

/// Checks a link name the way the kernel does (`dev_valid_name`), so the error can
/// say what is wrong instead of a bare EINVAL.
pub(crate) fn validate_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "is empty"
    } else if name.len() > 15 {
        "is longer than 15 bytes (IFNAMSIZ)"
    } else if name == "." || name == ".." {
        "is . or .."
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c == '\0')
    {
        "contains '/', ':', NUL or whitespace"
    } else {
        return Ok(());
    };
    Err(Error::invalid("link name", name, reason))
}

pub(crate) fn dump_request() -> RouteNetlinkMessage {
    RouteNetlinkMessage::GetLink(LinkMessage::default())
}

pub(crate) fn get_by_name_request(name: &str) -> Result<RouteNetlinkMessage> {
    validate_name(name)?;
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
    Ok(RouteNetlinkMessage::GetLink(msg))
}

pub(crate) fn get_by_index_request(index: u32) -> RouteNetlinkMessage {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    RouteNetlinkMessage::GetLink(msg)
}

pub(crate) fn create_veth_request(veth: &Veth<'_>) -> Result<RouteNetlinkMessage> {
    validate_name(&veth.name)?;
    validate_name(&veth.peer_name)?;
    if veth.peer_netns.is_none() && veth.name == veth.peer_name {
        return Err(Error::invalid(
            "veth peer name",
            &veth.peer_name,
            "equals the first end's name in the same namespace",
        ));
    }
    let mut peer = LinkMessage::default();
    peer.attributes
        .push(LinkAttribute::IfName(veth.peer_name.clone()));
    if let Some(mtu) = veth.mtu {
        peer.attributes.push(LinkAttribute::Mtu(mtu));
    }
    if let Some(mac) = veth.peer_mac {
        peer.attributes.push(LinkAttribute::Address(mac.0.to_vec()));
    }
    if let Some(fd) = veth.peer_netns {
        peer.attributes.push(LinkAttribute::NetNsFd(fd.as_raw_fd()));
    }

    let mut msg = LinkMessage::default();
    msg.attributes
        .push(LinkAttribute::IfName(veth.name.clone()));
    if let Some(mtu) = veth.mtu {
        msg.attributes.push(LinkAttribute::Mtu(mtu));
    }
    if let Some(mac) = veth.mac {
        msg.attributes.push(LinkAttribute::Address(mac.0.to_vec()));
    }
    msg.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::Veth),
        LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
    ]));
    Ok(RouteNetlinkMessage::NewLink(msg))
}

/// `ip link add NAME type ifb`: an intermediate functional block, which shapes what another link
/// receives when that traffic is redirected to it.
pub(crate) fn create_ifb_request(name: &str) -> Result<RouteNetlinkMessage> {
    validate_name(name)?;
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(name.to_string()));
    msg.attributes.push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Ifb)]));
    Ok(RouteNetlinkMessage::NewLink(msg))
}

/// `ip link add NAME link PARENT address MAC type vlan id ID`.
pub(crate) fn create_vlan_request(name: &str, parent: u32, id: u16, mac: MacAddr) -> Result<RouteNetlinkMessage> {
    validate_name(name)?;
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(name.to_string()));
    msg.attributes.push(LinkAttribute::Link(parent));
    msg.attributes.push(LinkAttribute::Address(mac.0.to_vec()));
    msg.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::Vlan),
        LinkInfo::Data(InfoData::Vlan(vec![netlink_packet_route::link::InfoVlan::Id(id)])),
    ]));
    Ok(RouteNetlinkMessage::NewLink(msg))
}

pub(crate) fn delete_request(index: u32) -> RouteNetlinkMessage {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    RouteNetlinkMessage::DelLink(msg)
}

pub(crate) fn set_group_request(index: u32, group: u32) -> RouteNetlinkMessage {
    RouteNetlinkMessage::NewLink(change(index, vec![LinkAttribute::Group(group)]))
}

/// RTM_DELLINK without an index, naming a group: every link of the group goes in one request.
pub(crate) fn delete_group_request(group: u32) -> RouteNetlinkMessage {
    RouteNetlinkMessage::DelLink(change(0, vec![LinkAttribute::Group(group)]))
}

fn change(index: u32, attributes: Vec<LinkAttribute>) -> LinkMessage {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg.attributes = attributes;
    msg
}

pub(crate) fn set_up_request(index: u32, up: bool) -> RouteNetlinkMessage {
    let mut msg = change(index, vec![]);
    msg.header.flags = if up {
        LinkFlags::Up
    } else {
        LinkFlags::empty()
    };
    msg.header.change_mask = LinkFlags::Up;
    RouteNetlinkMessage::NewLink(msg)
}

pub(crate) fn set_mac_request(index: u32, mac: MacAddr) -> RouteNetlinkMessage {
    RouteNetlinkMessage::NewLink(change(index, vec![LinkAttribute::Address(mac.0.to_vec())]))
}

pub(crate) fn set_mtu_request(index: u32, mtu: u32) -> RouteNetlinkMessage {
    RouteNetlinkMessage::NewLink(change(index, vec![LinkAttribute::Mtu(mtu)]))
}

pub(crate) fn rename_request(index: u32, name: &str) -> Result<RouteNetlinkMessage> {
    validate_name(name)?;
    Ok(RouteNetlinkMessage::NewLink(change(
        index,
        vec![LinkAttribute::IfName(name.to_owned())],
    )))
}

pub(crate) fn move_request(
    index: u32,
    netns: BorrowedFd<'_>,
    new_name: Option<&str>,
) -> Result<RouteNetlinkMessage> {
    let mut attributes = vec![LinkAttribute::NetNsFd(netns.as_raw_fd())];
    if let Some(name) = new_name {
        validate_name(name)?;
        attributes.push(LinkAttribute::IfName(name.to_owned()));
    }
    Ok(RouteNetlinkMessage::NewLink(change(index, attributes)))
}

/// The link in a `RTM_NEWLINK` reply; `None` for any other message.
pub(crate) fn from_reply(reply: RouteNetlinkMessage) -> Option<Link> {
    let RouteNetlinkMessage::NewLink(msg) = reply else {
        return None;
    };
    let mut link = Link {
        index: msg.header.index,
        name: String::new(),
        kind: None,
        mac: None,
        mtu: 0,
        up: msg.header.flags.contains(LinkFlags::Up),
        lower_up: msg.header.flags.contains(LinkFlags::LowerUp),
        parent_index: None,
        link_netnsid: None,
        master: None,
    };
    for attr in msg.attributes {
        match attr {
            LinkAttribute::IfName(name) => link.name = name,
            LinkAttribute::Address(bytes) => link.mac = MacAddr::from_bytes(&bytes),
            LinkAttribute::Mtu(mtu) => link.mtu = mtu,
            LinkAttribute::Link(index) => link.parent_index = Some(index),
            LinkAttribute::LinkNetNsId(id) => link.link_netnsid = Some(id),
            LinkAttribute::Controller(index) => link.master = Some(index),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Kind(kind) = info {
                        link.kind = Some(kind.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    Some(link)
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use netlink_packet_core::{Emitable, Parseable};

    use super::*;

    /// Serializes and parses back, as the kernel would see and echo the message.
    fn round_trip(msg: &LinkMessage) -> LinkMessage {
        let mut buf = vec![0; msg.buffer_len()];
        msg.emit(&mut buf);
        LinkMessage::parse(&buf[..]).unwrap()
    }

    #[test]
    fn mac_parses_and_prints() {
        let mac: MacAddr = "02:Fc:00:00:0a:01".parse().unwrap();
        assert_eq!(mac, MacAddr([0x02, 0xfc, 0, 0, 0x0a, 0x01]));
        assert_eq!(mac.to_string(), "02:fc:00:00:0a:01");
        assert!(mac.is_local_unicast());
        for bad in [
            "",
            "02:fc:00:00:0a",
            "02:fc:00:00:0a:01:02",
            "2:fc:00:00:0a:01",
            "zz:fc:00:00:0a:01",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn link_names_follow_kernel_rules() {
        validate_name("eth0").unwrap();
        validate_name("veth-0123456789").unwrap();
        for bad in ["", "a-name-that-is-16", ".", "..", "a/b", "a b", "a:b"] {
            let e = validate_name(bad).unwrap_err();
            assert_eq!(e.errno(), Some(libc::EINVAL), "{bad:?}");
        }
    }

    #[test]
    fn veth_request_nests_the_peer_with_its_namespace() {
        let file = std::fs::File::open("/dev/null").unwrap();
        let veth = Veth::new("vethab12", "eth0")
            .mtu(1400)
            .mac(MacAddr([2, 0, 0, 0, 0, 1]))
            .peer_mac(MacAddr([2, 0, 0, 0, 0, 2]))
            .peer_netns(file.as_fd());
        let RouteNetlinkMessage::NewLink(msg) = create_veth_request(&veth).unwrap() else {
            panic!("not NEWLINK")
        };
        let msg = round_trip(&msg);
        assert!(
            msg.attributes
                .contains(&LinkAttribute::IfName("vethab12".into()))
        );
        assert!(msg.attributes.contains(&LinkAttribute::Mtu(1400)));
        assert!(
            msg.attributes
                .contains(&LinkAttribute::Address(vec![2, 0, 0, 0, 0, 1]))
        );
        let infos = msg
            .attributes
            .iter()
            .find_map(|a| {
                if let LinkAttribute::LinkInfo(i) = a {
                    Some(i)
                } else {
                    None
                }
            })
            .unwrap();
        assert!(infos.contains(&LinkInfo::Kind(InfoKind::Veth)));
        let peer = infos
            .iter()
            .find_map(|i| {
                if let LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(p))) = i {
                    Some(p)
                } else {
                    None
                }
            })
            .unwrap();
        assert!(
            peer.attributes
                .contains(&LinkAttribute::IfName("eth0".into()))
        );
        assert!(
            peer.attributes
                .contains(&LinkAttribute::Address(vec![2, 0, 0, 0, 0, 2]))
        );
        assert!(
            peer.attributes
                .contains(&LinkAttribute::NetNsFd(file.as_raw_fd()))
        );
    }

    #[test]
    fn veth_names_are_checked_before_sending() {
        assert!(create_veth_request(&Veth::new("same", "same")).is_err());
        assert!(create_veth_request(&Veth::new("ok", "this-name-is-too-long")).is_err());
    }

    #[test]
    fn up_and_down_touch_only_the_up_flag() {
        let RouteNetlinkMessage::NewLink(up) = set_up_request(5, true) else {
            panic!()
        };
        assert_eq!(
            (up.header.index, up.header.flags, up.header.change_mask),
            (5, LinkFlags::Up, LinkFlags::Up)
        );
        let RouteNetlinkMessage::NewLink(down) = set_up_request(5, false) else {
            panic!()
        };
        assert_eq!(
            (down.header.flags, down.header.change_mask),
            (LinkFlags::empty(), LinkFlags::Up)
        );
    }

    #[test]
    fn move_carries_fd_and_new_name() {
        let file = std::fs::File::open("/dev/null").unwrap();
        let RouteNetlinkMessage::NewLink(msg) =
            move_request(7, file.as_fd(), Some("eth0")).unwrap()
        else {
            panic!()
        };
        let msg = round_trip(&msg);
        assert_eq!(msg.header.index, 7);
        assert!(
            msg.attributes
                .contains(&LinkAttribute::NetNsFd(file.as_raw_fd()))
        );
        assert!(
            msg.attributes
                .contains(&LinkAttribute::IfName("eth0".into()))
        );
    }

    #[test]
    fn reply_becomes_link() {
        let mut msg = LinkMessage::default();
        msg.header.index = 12;
        msg.header.flags = LinkFlags::Up | LinkFlags::LowerUp | LinkFlags::Broadcast;
        msg.attributes = vec![
            LinkAttribute::IfName("veth1".into()),
            LinkAttribute::Mtu(1500),
            LinkAttribute::Address(vec![2, 0, 0, 0, 0, 9]),
            LinkAttribute::Link(11),
            LinkAttribute::LinkNetNsId(0),
            LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Veth)]),
        ];
        let link = from_reply(RouteNetlinkMessage::NewLink(round_trip(&msg))).unwrap();
        assert_eq!(
            link,
            Link {
                index: 12,
                name: "veth1".into(),
                kind: Some("veth".into()),
                mac: Some(MacAddr([2, 0, 0, 0, 0, 9])),
                mtu: 1500,
                up: true,
                lower_up: true,
                parent_index: Some(11),
                link_netnsid: Some(0),
                master: None,
            }
        );
        assert!(from_reply(get_by_index_request(1)).is_none());
    }
}

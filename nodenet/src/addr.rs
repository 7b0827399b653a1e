//! Interface addresses (v4 and v6) and their `RTM_*ADDR` messages.

use std::fmt;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};

use crate::{IpFamily, Scope};

/// An address on a link: `10.0.0.5/24` is the address 10.0.0.5 with prefix 24.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Address {
    /// Interface index of the link holding it.
    pub index: u32,
    pub network: IpNetwork,
    pub scope: Scope,
    /// IPv6: skip duplicate address detection, so the address is usable at once.
    pub nodad: bool,
    /// Do not add the prefix route the kernel adds for a new address.
    pub noprefixroute: bool,
}

impl Address {
    /// A global-scope address on link `index`.
    pub fn new(index: u32, network: IpNetwork) -> Address {
        Address {
            index,
            network,
            scope: Scope::Universe,
            nodad: false,
            noprefixroute: false,
        }
    }

    pub fn nodad(mut self) -> Self {
        self.nodad = true;
        self
    }

    pub fn noprefixroute(mut self) -> Self {
        self.noprefixroute = true;
        self
    }

    pub fn scope(mut self, scope: Scope) -> Self {
        self.scope = scope;
        self
    }

    pub fn ip(&self) -> IpAddr {
        self.network.ip()
    }

    fn flags(&self) -> AddressFlags {
        let mut flags = AddressFlags::empty();
        if self.nodad {
            flags |= AddressFlags::Nodad;
        }
        if self.noprefixroute {
            flags |= AddressFlags::Noprefixroute;
        }
        flags
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} dev {}", self.network, self.index)?;
        if self.scope != Scope::Universe {
            write!(f, " scope {}", self.scope)?;
        }
        Ok(())
    }
}

pub(crate) fn dump_request(family: IpFamily) -> RouteNetlinkMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = family.to_netlink();
    RouteNetlinkMessage::GetAddress(msg)
}

fn message(address: &Address) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = IpFamily::of(&address.ip()).to_netlink();
    msg.header.prefix_len = address.network.prefix();
    msg.header.index = address.index;
    msg.header.scope = u8::from(address.scope).into();
    let flags = address.flags();
    // The legacy 8-bit header field holds the low flags; IFA_FLAGS holds them all.
    msg.header.flags = AddressHeaderFlags::from_bits_retain(flags.bits() as u8);
    // Like iproute2 without a peer: IFA_LOCAL and IFA_ADDRESS are both the address.
    msg.attributes.push(AddressAttribute::Local(address.ip()));
    msg.attributes.push(AddressAttribute::Address(address.ip()));
    if !flags.is_empty() {
        msg.attributes.push(AddressAttribute::Flags(flags));
    }
    msg
}

pub(crate) fn add_request(address: &Address) -> RouteNetlinkMessage {
    RouteNetlinkMessage::NewAddress(message(address))
}

pub(crate) fn delete_request(address: &Address) -> RouteNetlinkMessage {
    RouteNetlinkMessage::DelAddress(message(address))
}

/// The address in a `RTM_NEWADDR` reply; `None` for any other message.
pub(crate) fn from_reply(reply: RouteNetlinkMessage) -> Option<Address> {
    let RouteNetlinkMessage::NewAddress(msg) = reply else {
        return None;
    };
    let (mut local, mut address) = (None, None);
    let mut flags = AddressFlags::from_bits_retain(u32::from(msg.header.flags.bits()));
    for attr in msg.attributes {
        match attr {
            AddressAttribute::Local(ip) => local = Some(ip),
            AddressAttribute::Address(ip) => address = Some(ip),
            AddressAttribute::Flags(f) => flags = f,
            _ => {}
        }
    }
    // IFA_LOCAL is the link's own address; IFA_ADDRESS is the peer on point-to-point links.
    let ip = local.or(address)?;
    let network = IpNetwork::new(ip, msg.header.prefix_len).ok()?;
    Some(Address {
        index: msg.header.index,
        network,
        scope: Scope::from(u8::from(msg.header.scope)),
        nodad: flags.contains(AddressFlags::Nodad),
        noprefixroute: flags.contains(AddressFlags::Noprefixroute),
    })
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::{Emitable, Parseable};
    use netlink_packet_route::AddressFamily;

    use super::*;

    fn round_trip(msg: RouteNetlinkMessage) -> AddressMessage {
        let (RouteNetlinkMessage::NewAddress(m) | RouteNetlinkMessage::DelAddress(m)) = msg else {
            panic!()
        };
        let mut buf = vec![0; m.buffer_len()];
        m.emit(&mut buf);
        AddressMessage::parse(&buf[..]).unwrap()
    }

    #[test]
    fn v4_address_request_sets_local_and_address() {
        let a = Address::new(3, "10.1.2.3/24".parse().unwrap());
        let msg = round_trip(add_request(&a));
        assert_eq!(msg.header.family, AddressFamily::Inet);
        assert_eq!((msg.header.prefix_len, msg.header.index), (24, 3));
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        assert!(msg.attributes.contains(&AddressAttribute::Local(ip)));
        assert!(msg.attributes.contains(&AddressAttribute::Address(ip)));
        assert!(
            !msg.attributes
                .iter()
                .any(|a| matches!(a, AddressAttribute::Flags(_)))
        );
    }

    #[test]
    fn v6_nodad_goes_into_flags_and_back() {
        let a = Address::new(4, "fd00::5/64".parse().unwrap())
            .nodad()
            .noprefixroute();
        let msg = round_trip(add_request(&a));
        assert_eq!(msg.header.family, AddressFamily::Inet6);
        assert!(msg.attributes.contains(&AddressAttribute::Flags(
            AddressFlags::Nodad | AddressFlags::Noprefixroute
        )));
        assert_eq!(from_reply(RouteNetlinkMessage::NewAddress(msg)).unwrap(), a);
    }

    #[test]
    fn reply_prefers_local_over_peer() {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.prefix_len = 32;
        msg.header.index = 9;
        msg.header.scope = u8::from(Scope::Link).into();
        msg.attributes = vec![
            AddressAttribute::Address("10.0.0.2".parse().unwrap()),
            AddressAttribute::Local("10.0.0.1".parse().unwrap()),
        ];
        let a = from_reply(RouteNetlinkMessage::NewAddress(msg)).unwrap();
        assert_eq!(
            a,
            Address::new(9, "10.0.0.1/32".parse().unwrap()).scope(Scope::Link)
        );
        assert_eq!(a.to_string(), "10.0.0.1/32 dev 9 scope link");
    }
}

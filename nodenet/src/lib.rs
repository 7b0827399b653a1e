//! Netlink and network-namespace primitives shared by the Berth CNI plugin, the
//! agent and the local cloud.
//!
//! - [`Netlink`]: one synchronous `NETLINK_ROUTE` socket, opened in the current
//!   namespace or inside another one without moving the caller's thread.
//! - [`NetOps`]: the link, address, route, rule and neighbour operations the higher
//!   layers need; [`Netlink`] does them for real, [`FakeNet`] in memory for unit tests.
//! - [`Netns`], [`NetnsGuard`], [`sysctl_in`]: named namespaces like `ip netns`,
//!   code run inside a namespace on a short-lived thread, sysctls per namespace.
//!
//! - [`nftables`]: set elements and named counters of nftables tables over netlink, the hot
//!   paths that would otherwise start nft(8).
//! - [`bpf`], [`TcHook`]: eBPF programs assembled in Rust and run by tc (`clsact`), e.g.
//!   the VLAN tagging of trunk mode on kernels without 8021q.
//!
//! Errors are one [`Error`] enum; [`Error::is_not_found`] tells "already gone",
//! which teardown treats as success, and [`Error::is_exists`] tells EEXIST.

use std::fmt;
use std::os::fd::BorrowedFd;

mod addr;
pub mod bpf;
pub mod cgroup;
mod error;
mod fake;
mod link;
mod neigh;
mod netlink;
mod netns;
pub mod nftables;
mod route;
mod rule;
mod tc;

pub use addr::Address;
pub use error::{Error, Result};
pub use fake::{Call, FakeNet};
pub use link::{Link, MacAddr, Veth};
pub use neigh::{Neighbour, NeighbourState};
pub use netlink::Netlink;
pub use netns::{NETNS_RUN_DIR, Netns, NetnsGuard, sysctl_in, sysctl_read_in};
pub use route::{Route, RouteKind, TABLE_DEFAULT, TABLE_LOCAL, TABLE_MAIN, proto};
pub use rule::{Rule, RuleAction};
pub use tc::{BpfFilter, RateLimit, TcHook};

/// The operations on one network namespace that the CNI plugin, the agent and the
/// local cloud need. Links are named by interface index; look the index up with
/// [`NetOps::link_by_name`].
///
/// Adds fail with an error for which [`Error::is_exists`] holds when the object is
/// already there; deletes of an absent object fail with [`Error::is_not_found`].
pub trait NetOps {
    /// Every link in the namespace.
    fn links(&mut self) -> Result<Vec<Link>>;
    /// The link called `name`; not found is ENODEV.
    fn link_by_name(&mut self, name: &str) -> Result<Link>;
    /// The link with interface index `index`; not found is ENODEV.
    fn link_by_index(&mut self, index: u32) -> Result<Link>;
    /// Creates a veth pair; the peer goes straight into `veth.peer_netns` when set.
    /// Returns the end that stays in this namespace.
    fn create_veth(&mut self, veth: &Veth<'_>) -> Result<Link>;
    /// Deletes a link (for a veth, both ends).
    fn delete_link(&mut self, index: u32) -> Result<()>;
    fn set_link_up(&mut self, index: u32) -> Result<()>;
    fn set_link_down(&mut self, index: u32) -> Result<()>;
    fn set_link_mac(&mut self, index: u32, mac: MacAddr) -> Result<()>;
    fn set_link_mtu(&mut self, index: u32, mtu: u32) -> Result<()>;
    /// Renames a link. Kernels before 6.x refuse to rename a link that is up
    /// (EBUSY): set it down first to be portable.
    fn rename_link(&mut self, index: u32, name: &str) -> Result<()>;
    /// Moves a link into the namespace `netns` (any fd on a netns, e.g.
    /// `netns.as_fd()`), renaming it on the way when `new_name` is set, so that
    /// `eth0` can be taken even if this namespace has one.
    fn move_link(
        &mut self,
        index: u32,
        netns: BorrowedFd<'_>,
        new_name: Option<&str>,
    ) -> Result<()>;

    /// Addresses of one link, or of all links when `index` is `None` (v4 and v6).
    fn addresses(&mut self, index: Option<u32>) -> Result<Vec<Address>>;
    fn add_address(&mut self, address: &Address) -> Result<()>;
    fn delete_address(&mut self, address: &Address) -> Result<()>;

    /// Routes of one table, or of all tables when `table` is `None` (v4 and v6).
    fn routes(&mut self, table: Option<u32>) -> Result<Vec<Route>>;
    fn add_route(&mut self, route: &Route) -> Result<()>;
    /// Adds the route or replaces the one with the same destination, table and metric.
    fn replace_route(&mut self, route: &Route) -> Result<()>;
    fn delete_route(&mut self, route: &Route) -> Result<()>;

    /// Policy rules, v4 and v6, including the kernel's default ones.
    fn rules(&mut self) -> Result<Vec<Rule>>;
    fn add_rule(&mut self, rule: &Rule) -> Result<()>;
    fn delete_rule(&mut self, rule: &Rule) -> Result<()>;

    /// Neighbour entries (and proxy entries) of one link or of all links.
    fn neighbours(&mut self, index: Option<u32>) -> Result<Vec<Neighbour>>;
    fn add_neighbour(&mut self, neighbour: &Neighbour) -> Result<()>;
    /// Adds the entry or overwrites the one the kernel has (e.g. a learned one).
    fn replace_neighbour(&mut self, neighbour: &Neighbour) -> Result<()>;
    fn delete_neighbour(&mut self, neighbour: &Neighbour) -> Result<()>;
}

/// IPv4 or IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum IpFamily {
    #[default]
    V4,
    V6,
}

impl IpFamily {
    pub fn of(ip: &std::net::IpAddr) -> IpFamily {
        if ip.is_ipv4() {
            IpFamily::V4
        } else {
            IpFamily::V6
        }
    }

    /// `0.0.0.0/0` or `::/0`.
    pub fn any_network(self) -> ipnetwork::IpNetwork {
        const ANY_V4: ipnetwork::Ipv4Network =
            match ipnetwork::Ipv4Network::new_checked(std::net::Ipv4Addr::UNSPECIFIED, 0) {
                Some(n) => n,
                None => panic!("0.0.0.0/0 is a valid network"),
            };
        const ANY_V6: ipnetwork::Ipv6Network =
            match ipnetwork::Ipv6Network::new_checked(std::net::Ipv6Addr::UNSPECIFIED, 0) {
                Some(n) => n,
                None => panic!("::/0 is a valid network"),
            };
        match self {
            IpFamily::V4 => ipnetwork::IpNetwork::V4(ANY_V4),
            IpFamily::V6 => ipnetwork::IpNetwork::V6(ANY_V6),
        }
    }

    pub(crate) fn to_netlink(self) -> netlink_packet_route::AddressFamily {
        match self {
            IpFamily::V4 => netlink_packet_route::AddressFamily::Inet,
            IpFamily::V6 => netlink_packet_route::AddressFamily::Inet6,
        }
    }

    pub(crate) fn from_netlink(family: netlink_packet_route::AddressFamily) -> Option<IpFamily> {
        match family {
            netlink_packet_route::AddressFamily::Inet => Some(IpFamily::V4),
            netlink_packet_route::AddressFamily::Inet6 => Some(IpFamily::V6),
            _ => None,
        }
    }
}

/// The scope of an address or a route (`RT_SCOPE_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Scope {
    #[default]
    Universe,
    Site,
    /// Reachable on the link only: device routes, on-link gateways.
    Link,
    Host,
    Nowhere,
    Other(u8),
}

impl From<u8> for Scope {
    fn from(v: u8) -> Scope {
        match v {
            0 => Scope::Universe,
            200 => Scope::Site,
            253 => Scope::Link,
            254 => Scope::Host,
            255 => Scope::Nowhere,
            other => Scope::Other(other),
        }
    }
}

impl From<Scope> for u8 {
    fn from(s: Scope) -> u8 {
        match s {
            Scope::Universe => 0,
            Scope::Site => 200,
            Scope::Link => 253,
            Scope::Host => 254,
            Scope::Nowhere => 255,
            Scope::Other(v) => v,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Universe => f.write_str("global"),
            Scope::Site => f.write_str("site"),
            Scope::Link => f.write_str("link"),
            Scope::Host => f.write_str("host"),
            Scope::Nowhere => f.write_str("nowhere"),
            Scope::Other(v) => write!(f, "{v}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_numbers_round_trip() {
        for s in [
            Scope::Universe,
            Scope::Site,
            Scope::Link,
            Scope::Host,
            Scope::Nowhere,
            Scope::Other(7),
        ] {
            assert_eq!(Scope::from(u8::from(s)), s);
        }
        assert_eq!(u8::from(Scope::Link), 253);
    }

    #[test]
    fn handles_can_move_between_threads() {
        fn send<T: Send>() {}
        send::<Netlink>();
        send::<Netns>();
        send::<FakeNet>();
        send::<Error>();
    }

    #[test]
    fn netops_is_object_safe() {
        fn takes(_: &mut dyn NetOps) {}
        takes(&mut FakeNet::new());
    }
}

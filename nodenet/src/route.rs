//! Routes (v4 and v6, any table) and their `RTM_*ROUTE` messages.

use std::fmt;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteFlags, RouteMessage};

use crate::error::{Error, Result};
use crate::{IpFamily, Scope};

/// The main table, where routes go unless told otherwise.
pub const TABLE_MAIN: u32 = 254;
/// The local table (addresses of this host, broadcast).
pub const TABLE_LOCAL: u32 = 255;
pub const TABLE_DEFAULT: u32 = 253;
/// `RT_TABLE_COMPAT`: the header's table byte when the real id (in `RTA_TABLE`) is above 255.
const TABLE_COMPAT: u8 = 252;

/// Route protocol numbers (`RTPROT_*`): who installed a route.
pub mod proto {
    pub const UNSPEC: u8 = 0;
    /// Installed by the kernel, e.g. the prefix route of an address.
    pub const KERNEL: u8 = 2;
    /// Installed by an administrator or a program: the default for new routes.
    pub const BOOT: u8 = 3;
    pub const STATIC: u8 = 4;
}

/// What a route does (`RTN_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RouteKind {
    #[default]
    Unicast,
    Local,
    Broadcast,
    Anycast,
    Multicast,
    Blackhole,
    Unreachable,
    Prohibit,
    Throw,
    Other(u8),
}

impl From<u8> for RouteKind {
    fn from(v: u8) -> RouteKind {
        match v {
            1 => RouteKind::Unicast,
            2 => RouteKind::Local,
            3 => RouteKind::Broadcast,
            4 => RouteKind::Anycast,
            5 => RouteKind::Multicast,
            6 => RouteKind::Blackhole,
            7 => RouteKind::Unreachable,
            8 => RouteKind::Prohibit,
            9 => RouteKind::Throw,
            other => RouteKind::Other(other),
        }
    }
}

impl From<RouteKind> for u8 {
    fn from(k: RouteKind) -> u8 {
        match k {
            RouteKind::Unicast => 1,
            RouteKind::Local => 2,
            RouteKind::Broadcast => 3,
            RouteKind::Anycast => 4,
            RouteKind::Multicast => 5,
            RouteKind::Blackhole => 6,
            RouteKind::Unreachable => 7,
            RouteKind::Prohibit => 8,
            RouteKind::Throw => 9,
            RouteKind::Other(v) => v,
        }
    }
}

/// A route. Build one with [`Route::new`] and the setters:
/// `Route::new(dst).via(gw).dev(index).table(100)`.
///
/// `scope` and `protocol` left `None` are chosen like iproute2 does on add (link
/// scope for a v4 route without gateway, protocol boot) and match anything on delete.
/// Routes read from the kernel have them set.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Route {
    /// Destination prefix; `0.0.0.0/0` or `::/0` is the default route. Host bits must be zero.
    pub destination: IpNetwork,
    pub gateway: Option<IpAddr>,
    /// Output interface index.
    pub oif: Option<u32>,
    pub table: u32,
    pub scope: Option<Scope>,
    /// Metric (`RTA_PRIORITY`). IPv6 routes without one get 1024 from the kernel.
    pub metric: Option<u32>,
    /// The gateway is on the link even though no address covers it. The kernel checks
    /// such a gateway against the local table, which a namespace without any address
    /// (not even lo up) lacks: there it answers "Nexthop has invalid gateway".
    pub onlink: bool,
    pub protocol: Option<u8>,
    /// Preferred source address (`RTA_PREFSRC`).
    pub src: Option<IpAddr>,
    pub kind: RouteKind,
}

impl Route {
    /// A unicast route to `destination` in the main table.
    pub fn new(destination: IpNetwork) -> Route {
        Route {
            destination,
            gateway: None,
            oif: None,
            table: TABLE_MAIN,
            scope: None,
            metric: None,
            onlink: false,
            protocol: None,
            src: None,
            kind: RouteKind::Unicast,
        }
    }

    /// The default route of `family` (`0.0.0.0/0` or `::/0`).
    pub fn default_route(family: IpFamily) -> Route {
        Route::new(family.any_network())
    }

    pub fn via(mut self, gateway: IpAddr) -> Self {
        self.gateway = Some(gateway);
        self
    }

    pub fn dev(mut self, index: u32) -> Self {
        self.oif = Some(index);
        self
    }

    pub fn table(mut self, table: u32) -> Self {
        self.table = table;
        self
    }

    pub fn scope(mut self, scope: Scope) -> Self {
        self.scope = Some(scope);
        self
    }

    pub fn metric(mut self, metric: u32) -> Self {
        self.metric = Some(metric);
        self
    }

    pub fn onlink(mut self) -> Self {
        self.onlink = true;
        self
    }

    pub fn protocol(mut self, protocol: u8) -> Self {
        self.protocol = Some(protocol);
        self
    }

    pub fn src(mut self, src: IpAddr) -> Self {
        self.src = Some(src);
        self
    }

    pub fn kind(mut self, kind: RouteKind) -> Self {
        self.kind = kind;
        self
    }

    pub fn family(&self) -> IpFamily {
        IpFamily::of(&self.destination.ip())
    }

    /// The scope iproute2 would pick for this route on add.
    fn default_scope(&self) -> Scope {
        match (self.family(), self.kind) {
            (IpFamily::V6, _) => Scope::Universe,
            (_, RouteKind::Local) => Scope::Host,
            (_, RouteKind::Broadcast | RouteKind::Multicast | RouteKind::Anycast) => Scope::Link,
            (_, RouteKind::Unicast) if self.gateway.is_none() => Scope::Link,
            _ => Scope::Universe,
        }
    }

    fn validate(&self) -> Result<()> {
        let family = self.family();
        if self.destination.ip() != self.destination.network() {
            return Err(Error::invalid(
                "route destination",
                self.destination.to_string(),
                "has host bits set",
            ));
        }
        for (what, ip) in [("route gateway", self.gateway), ("route source", self.src)] {
            if let Some(ip) = ip
                && IpFamily::of(&ip) != family
            {
                return Err(Error::invalid(
                    what,
                    ip.to_string(),
                    "is of another family than the destination",
                ));
            }
        }
        Ok(())
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.kind != RouteKind::Unicast {
            write!(f, "{:?} ", self.kind)?;
        }
        write!(f, "{}", self.destination)?;
        if let Some(gw) = self.gateway {
            write!(f, " via {gw}")?;
        }
        if let Some(oif) = self.oif {
            write!(f, " dev {oif}")?;
        }
        write!(f, " table {}", self.table)?;
        if let Some(scope) = self.scope {
            write!(f, " scope {scope}")?;
        }
        if let Some(metric) = self.metric {
            write!(f, " metric {metric}")?;
        }
        if let Some(src) = self.src {
            write!(f, " src {src}")?;
        }
        if let Some(proto) = self.protocol {
            write!(f, " proto {proto}")?;
        }
        if self.onlink {
            f.write_str(" onlink")?;
        }
        Ok(())
    }
}

pub(crate) fn dump_request(family: IpFamily) -> RouteNetlinkMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = family.to_netlink();
    RouteNetlinkMessage::GetRoute(msg)
}

fn message(route: &Route, scope: Scope, protocol: u8, kind: u8) -> Result<RouteMessage> {
    route.validate()?;
    let mut msg = RouteMessage::default();
    msg.header.address_family = route.family().to_netlink();
    msg.header.destination_prefix_length = route.destination.prefix();
    msg.header.table = u8::try_from(route.table).unwrap_or(TABLE_COMPAT);
    msg.header.protocol = protocol.into();
    msg.header.scope = u8::from(scope).into();
    msg.header.kind = kind.into();
    if route.onlink {
        msg.header.flags = RouteFlags::Onlink;
    }
    if route.destination.prefix() > 0 {
        msg.attributes
            .push(RouteAttribute::Destination(route.destination.ip().into()));
    }
    if let Some(gw) = route.gateway {
        msg.attributes.push(RouteAttribute::Gateway(gw.into()));
    }
    if let Some(oif) = route.oif {
        msg.attributes.push(RouteAttribute::Oif(oif));
    }
    if let Some(metric) = route.metric {
        msg.attributes.push(RouteAttribute::Priority(metric));
    }
    if let Some(src) = route.src {
        msg.attributes.push(RouteAttribute::PrefSource(src.into()));
    }
    msg.attributes.push(RouteAttribute::Table(route.table));
    Ok(msg)
}

/// The route as it is sent on add (and listed back): scope and protocol chosen.
pub(crate) fn as_added(route: &Route) -> Result<Route> {
    route.validate()?;
    Ok(Route {
        scope: Some(route.scope.unwrap_or_else(|| route.default_scope())),
        protocol: Some(route.protocol.unwrap_or(proto::BOOT)),
        ..route.clone()
    })
}

pub(crate) fn add_request(route: &Route) -> Result<RouteNetlinkMessage> {
    let route = as_added(route)?;
    let (scope, protocol) = (
        route.scope.unwrap_or_default(),
        route.protocol.unwrap_or_default(),
    );
    Ok(RouteNetlinkMessage::NewRoute(message(
        &route,
        scope,
        protocol,
        route.kind.into(),
    )?))
}

/// A delete matches on what is set: unset scope, protocol and a unicast kind
/// match any route with the same destination, table, gateway, device and metric.
pub(crate) fn delete_request(route: &Route) -> Result<RouteNetlinkMessage> {
    let any_scope = match route.family() {
        IpFamily::V4 => Scope::Nowhere,
        IpFamily::V6 => Scope::Universe,
    };
    let kind = if route.kind == RouteKind::Unicast {
        0
    } else {
        route.kind.into()
    };
    let msg = message(
        route,
        route.scope.unwrap_or(any_scope),
        route.protocol.unwrap_or(proto::UNSPEC),
        kind,
    )?;
    Ok(RouteNetlinkMessage::DelRoute(msg))
}

fn route_ip(addr: RouteAddress) -> Option<IpAddr> {
    match addr {
        RouteAddress::Inet(ip) => Some(ip.into()),
        RouteAddress::Inet6(ip) => Some(ip.into()),
        _ => None,
    }
}

/// The route in a `RTM_NEWROUTE` reply; `None` for other messages and families.
/// Multipath routes come back without their next hops.
pub(crate) fn from_reply(reply: RouteNetlinkMessage) -> Option<Route> {
    let RouteNetlinkMessage::NewRoute(msg) = reply else {
        return None;
    };
    let family = IpFamily::from_netlink(msg.header.address_family)?;
    let mut destination = None;
    let mut route = Route::new(family.any_network());
    route.table = u32::from(msg.header.table);
    route.scope = Some(Scope::from(u8::from(msg.header.scope)));
    route.protocol = Some(u8::from(msg.header.protocol));
    route.kind = RouteKind::from(u8::from(msg.header.kind));
    route.onlink = msg.header.flags.contains(RouteFlags::Onlink);
    for attr in msg.attributes {
        match attr {
            RouteAttribute::Destination(a) => destination = route_ip(a),
            RouteAttribute::Gateway(a) => route.gateway = route_ip(a),
            RouteAttribute::PrefSource(a) => route.src = route_ip(a),
            RouteAttribute::Oif(i) => route.oif = Some(i),
            RouteAttribute::Priority(m) => route.metric = Some(m),
            RouteAttribute::Table(t) => route.table = t,
            _ => {}
        }
    }
    if let Some(ip) = destination {
        route.destination = IpNetwork::new(ip, msg.header.destination_prefix_length).ok()?;
    }
    Some(route)
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::{Emitable, Parseable};
    use netlink_packet_route::AddressFamily;
    use netlink_packet_route::route::{RouteProtocol, RouteScope, RouteType};

    use super::*;

    fn round_trip(msg: RouteNetlinkMessage) -> RouteMessage {
        let (RouteNetlinkMessage::NewRoute(m) | RouteNetlinkMessage::DelRoute(m)) = msg else {
            panic!()
        };
        let mut buf = vec![0; m.buffer_len()];
        m.emit(&mut buf);
        RouteMessage::parse(&buf[..]).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn default_route_via_onlink_gateway() {
        let r = Route::default_route(IpFamily::V4)
            .via(ip("169.254.1.1"))
            .dev(2)
            .onlink();
        let msg = round_trip(add_request(&r).unwrap());
        assert_eq!(msg.header.address_family, AddressFamily::Inet);
        assert_eq!(msg.header.destination_prefix_length, 0);
        assert_eq!(msg.header.scope, RouteScope::Universe);
        assert_eq!(msg.header.protocol, RouteProtocol::Boot);
        assert_eq!(msg.header.kind, RouteType::Unicast);
        assert!(msg.header.flags.contains(RouteFlags::Onlink));
        assert!(
            !msg.attributes
                .iter()
                .any(|a| matches!(a, RouteAttribute::Destination(_)))
        );
        assert!(
            msg.attributes
                .contains(&RouteAttribute::Gateway(ip("169.254.1.1").into()))
        );
        assert!(msg.attributes.contains(&RouteAttribute::Oif(2)));
        assert!(msg.attributes.contains(&RouteAttribute::Table(TABLE_MAIN)));
    }

    #[test]
    fn device_route_gets_link_scope_and_big_table_goes_in_attribute() {
        let r = Route::new("10.0.3.7/32".parse().unwrap())
            .dev(5)
            .table(1000)
            .metric(7)
            .src(ip("10.0.0.1"));
        let msg = round_trip(add_request(&r).unwrap());
        assert_eq!(msg.header.scope, RouteScope::Link);
        assert_eq!(msg.header.table, TABLE_COMPAT);
        assert!(msg.attributes.contains(&RouteAttribute::Table(1000)));
        assert!(msg.attributes.contains(&RouteAttribute::Priority(7)));
        assert!(
            msg.attributes
                .contains(&RouteAttribute::PrefSource(ip("10.0.0.1").into()))
        );
        assert!(
            msg.attributes
                .contains(&RouteAttribute::Destination(ip("10.0.3.7").into()))
        );
    }

    #[test]
    fn delete_matches_any_scope_protocol_and_type() {
        let r = Route::new("10.0.3.0/24".parse().unwrap()).dev(5);
        let msg = round_trip(delete_request(&r).unwrap());
        assert_eq!(msg.header.scope, RouteScope::NoWhere);
        assert_eq!(msg.header.protocol, RouteProtocol::Unspec);
        assert_eq!(msg.header.kind, RouteType::Unspec);
    }

    #[test]
    fn bad_routes_are_refused_before_sending() {
        let host_bits = Route::new("10.0.3.1/24".parse().unwrap());
        assert!(
            add_request(&host_bits)
                .unwrap_err()
                .to_string()
                .contains("host bits")
        );
        let mixed = Route::new("10.0.3.0/24".parse().unwrap()).via(ip("fe80::1"));
        assert!(add_request(&mixed).is_err());
    }

    #[test]
    fn reply_round_trips_to_the_same_route() {
        let r = Route::new("fd00:1::/64".parse().unwrap())
            .via(ip("fd00::1"))
            .dev(3)
            .table(100)
            .metric(1024)
            .scope(Scope::Universe)
            .protocol(proto::STATIC);
        let RouteNetlinkMessage::NewRoute(msg) = add_request(&r).unwrap() else {
            panic!()
        };
        assert_eq!(from_reply(RouteNetlinkMessage::NewRoute(msg)).unwrap(), r);
        assert_eq!(
            r.to_string(),
            "fd00:1::/64 via fd00::1 dev 3 table 100 scope global metric 1024 proto 4"
        );
    }
}

//! `FakeNet`: an in-memory network namespace that implements [`NetOps`] and records
//! every call, so the plugin, agent and local cloud can unit-test their datapath
//! logic without root.
//!
//! It answers like the kernel where callers depend on it: EEXIST for duplicates,
//! ENODEV for unknown links, ESRCH / ENOENT / EADDRNOTAVAIL for deleting what is
//! not there; deleting or moving a link drops its addresses, routes and
//! neighbours. It does not add the kernel's automatic
//! routes (prefix routes of addresses, local table).

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use crate::error::{Result, kernel_error};
use crate::{
    Address, IpFamily, Link, MacAddr, Neighbour, NetOps, Route, Rule, TABLE_DEFAULT, TABLE_LOCAL,
    TABLE_MAIN,
};
use crate::{link, route, rule};

const NETNS: &str = "fake";

/// One recorded [`NetOps`] call, with its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Links,
    LinkByName(String),
    LinkByIndex(u32),
    CreateVeth {
        name: String,
        peer_name: String,
        mac: Option<MacAddr>,
        peer_mac: Option<MacAddr>,
        mtu: Option<u32>,
        /// The raw fd the peer was sent to, if any.
        peer_netns: Option<RawFd>,
    },
    DeleteLink(u32),
    SetLinkUp(u32),
    SetLinkDown(u32),
    SetLinkMac(u32, MacAddr),
    SetLinkMtu(u32, u32),
    RenameLink(u32, String),
    MoveLink {
        index: u32,
        netns: RawFd,
        new_name: Option<String>,
    },
    Addresses(Option<u32>),
    AddAddress(Address),
    DeleteAddress(Address),
    Routes(Option<u32>),
    AddRoute(Route),
    ReplaceRoute(Route),
    DeleteRoute(Route),
    Rules,
    AddRule(Rule),
    DeleteRule(Rule),
    Neighbours(Option<u32>),
    AddNeighbour(Neighbour),
    ReplaceNeighbour(Neighbour),
    DeleteNeighbour(Neighbour),
}

impl Call {
    /// The [`NetOps`] method this call was, e.g. `"add_route"`: the key for
    /// [`FakeNet::fail_next`].
    pub fn method(&self) -> &'static str {
        match self {
            Call::Links => "links",
            Call::LinkByName(_) => "link_by_name",
            Call::LinkByIndex(_) => "link_by_index",
            Call::CreateVeth { .. } => "create_veth",
            Call::DeleteLink(_) => "delete_link",
            Call::SetLinkUp(_) => "set_link_up",
            Call::SetLinkDown(_) => "set_link_down",
            Call::SetLinkMac(..) => "set_link_mac",
            Call::SetLinkMtu(..) => "set_link_mtu",
            Call::RenameLink(..) => "rename_link",
            Call::MoveLink { .. } => "move_link",
            Call::Addresses(_) => "addresses",
            Call::AddAddress(_) => "add_address",
            Call::DeleteAddress(_) => "delete_address",
            Call::Routes(_) => "routes",
            Call::AddRoute(_) => "add_route",
            Call::ReplaceRoute(_) => "replace_route",
            Call::DeleteRoute(_) => "delete_route",
            Call::Rules => "rules",
            Call::AddRule(_) => "add_rule",
            Call::DeleteRule(_) => "delete_rule",
            Call::Neighbours(_) => "neighbours",
            Call::AddNeighbour(_) => "add_neighbour",
            Call::ReplaceNeighbour(_) => "replace_neighbour",
            Call::DeleteNeighbour(_) => "delete_neighbour",
        }
    }
}

/// An in-memory namespace: links, addresses, routes, rules and neighbours, plus the
/// links it handed to other namespaces and the log of calls.
#[derive(Debug, Clone)]
pub struct FakeNet {
    links: BTreeMap<u32, Link>,
    addresses: Vec<Address>,
    routes: Vec<Route>,
    rules: Vec<Rule>,
    neighbours: Vec<Neighbour>,
    elsewhere: Vec<(RawFd, Link)>,
    calls: Vec<Call>,
    failures: Vec<(&'static str, i32)>,
    next_index: u32,
}

impl Default for FakeNet {
    fn default() -> Self {
        FakeNet::new()
    }
}

impl FakeNet {
    /// A fresh namespace: `lo` (index 1, down) and the kernel's default rules.
    pub fn new() -> FakeNet {
        let mut fake = FakeNet {
            links: BTreeMap::new(),
            addresses: Vec::new(),
            routes: Vec::new(),
            rules: Vec::new(),
            neighbours: Vec::new(),
            elsewhere: Vec::new(),
            calls: Vec::new(),
            failures: Vec::new(),
            next_index: 1,
        };
        let mut lo = fake.add_link("lo", None);
        lo.mac = Some(MacAddr::default());
        lo.mtu = 65536;
        fake.links.insert(lo.index, lo);
        for (family, defaults) in [
            (
                IpFamily::V4,
                &[
                    (0, TABLE_LOCAL),
                    (32766, TABLE_MAIN),
                    (32767, TABLE_DEFAULT),
                ][..],
            ),
            (IpFamily::V6, &[(0, TABLE_LOCAL), (32766, TABLE_MAIN)][..]),
        ] {
            for &(priority, table) in defaults {
                fake.rules
                    .push(Rule::lookup(family, table).priority(priority));
            }
        }
        fake
    }

    /// Adds a link as if it had been there already (a NIC, an ENI); not recorded.
    pub fn add_link(&mut self, name: &str, kind: Option<&str>) -> Link {
        let index = self.next_index;
        self.next_index += 1;
        let link = Link {
            index,
            name: name.to_owned(),
            kind: kind.map(str::to_owned),
            mac: Some(Self::mac_for(index)),
            mtu: 1500,
            up: false,
            lower_up: false,
            parent_index: None,
            link_netnsid: None,
            master: None,
        };
        self.links.insert(index, link.clone());
        link
    }

    /// Every call so far, oldest first.
    pub fn calls(&self) -> &[Call] {
        &self.calls
    }

    /// Returns the calls so far and forgets them.
    pub fn take_calls(&mut self) -> Vec<Call> {
        std::mem::take(&mut self.calls)
    }

    /// Makes the next call of `method` (e.g. `"add_route"`) fail with `errno`,
    /// without changing anything; the call is still recorded.
    pub fn fail_next(&mut self, method: &'static str, errno: i32) {
        self.failures.push((method, errno));
    }

    /// Links this namespace handed to another one (veth peers created there,
    /// moved links), with the raw fd they were sent to.
    pub fn elsewhere(&self) -> &[(RawFd, Link)] {
        &self.elsewhere
    }

    fn mac_for(index: u32) -> MacAddr {
        let [a, b, c, d] = index.to_be_bytes();
        MacAddr([0x02, 0xfa, a, b, c, d])
    }

    /// Records the call and applies an injected failure, if one is due.
    fn enter(&mut self, call: Call) -> Result<()> {
        let method = call.method();
        self.calls.push(call);
        if let Some(pos) = self.failures.iter().position(|(m, _)| *m == method) {
            let (_, errno) = self.failures.remove(pos);
            return Err(kernel_error(method, "(injected failure)", NETNS, errno));
        }
        Ok(())
    }

    fn link_mut(&mut self, op: &'static str, index: u32) -> Result<&mut Link> {
        self.links
            .get_mut(&index)
            .ok_or_else(|| kernel_error(op, format!("link index {index}"), NETNS, libc::ENODEV))
    }

    fn name_taken(&self, name: &str, except: Option<u32>) -> bool {
        self.links
            .values()
            .any(|l| l.name == name && Some(l.index) != except)
    }

    /// Removes a link and what hangs off it, as the kernel does on delete or move.
    fn detach(&mut self, index: u32) -> Option<Link> {
        let link = self.links.remove(&index)?;
        self.addresses.retain(|a| a.index != index);
        self.routes.retain(|r| r.oif != Some(index));
        self.neighbours.retain(|n| n.index != index);
        Some(link)
    }

    fn new_link(&mut self, name: &str, mac: Option<MacAddr>, mtu: Option<u32>) -> Link {
        let mut link = self.add_link(name, Some("veth"));
        self.links.remove(&link.index);
        if let Some(mac) = mac {
            link.mac = Some(mac);
        }
        link.mtu = mtu.unwrap_or(1500);
        link
    }

    fn route_key(r: &Route) -> (u32, ipnetwork::IpNetwork, Option<u32>) {
        (r.table, r.destination, r.metric)
    }

    fn route_matches(want: &Route, have: &Route) -> bool {
        want.destination == have.destination
            && want.table == have.table
            && want.gateway.is_none_or(|g| have.gateway == Some(g))
            && want.oif.is_none_or(|o| have.oif == Some(o))
            && want.metric.is_none_or(|m| have.metric == Some(m))
            && want.scope.is_none_or(|s| have.scope == Some(s))
            && want.protocol.is_none_or(|p| have.protocol == Some(p))
            && want.kind == have.kind
    }

    /// The route as the kernel would list it back: scope and protocol filled in.
    fn stored_route(r: &Route) -> Result<Route> {
        route::as_added(r)
    }

    fn rule_matches(want: &Rule, have: &Rule) -> bool {
        want.priority.is_none_or(|p| have.priority == Some(p))
            && Rule {
                priority: have.priority,
                ..want.clone()
            } == *have
    }
}

impl NetOps for FakeNet {
    fn links(&mut self) -> Result<Vec<Link>> {
        self.enter(Call::Links)?;
        Ok(self.links.values().cloned().collect())
    }

    fn link_by_name(&mut self, name: &str) -> Result<Link> {
        self.enter(Call::LinkByName(name.to_owned()))?;
        self.links
            .values()
            .find(|l| l.name == name)
            .cloned()
            .ok_or_else(|| kernel_error("get", format!("link {name}"), NETNS, libc::ENODEV))
    }

    fn link_by_index(&mut self, index: u32) -> Result<Link> {
        self.enter(Call::LinkByIndex(index))?;
        self.link_mut("get", index).map(|l| l.clone())
    }

    fn create_veth(&mut self, veth: &link::Veth<'_>) -> Result<Link> {
        self.enter(Call::CreateVeth {
            name: veth.name.clone(),
            peer_name: veth.peer_name.clone(),
            mac: veth.mac,
            peer_mac: veth.peer_mac,
            mtu: veth.mtu,
            peer_netns: veth.peer_netns.map(|fd| fd.as_raw_fd()),
        })?;
        link::create_veth_request(veth)?;
        let peer_here = veth.peer_netns.is_none();
        if self.name_taken(&veth.name, None)
            || (peer_here && self.name_taken(&veth.peer_name, None))
        {
            return Err(kernel_error(
                "create veth",
                veth.to_string(),
                NETNS,
                libc::EEXIST,
            ));
        }
        let mut local = self.new_link(&veth.name, veth.mac, veth.mtu);
        let mut peer = self.new_link(&veth.peer_name, veth.peer_mac, veth.mtu);
        local.parent_index = Some(peer.index);
        peer.parent_index = Some(local.index);
        match veth.peer_netns {
            Some(fd) => {
                local.link_netnsid = Some(0);
                self.elsewhere.push((fd.as_raw_fd(), peer));
            }
            None => {
                self.links.insert(peer.index, peer);
            }
        }
        self.links.insert(local.index, local.clone());
        Ok(local)
    }

    fn delete_link(&mut self, index: u32) -> Result<()> {
        self.enter(Call::DeleteLink(index))?;
        let link = self.detach(index).ok_or_else(|| {
            kernel_error("delete", format!("link index {index}"), NETNS, libc::ENODEV)
        })?;
        if link.kind.as_deref() == Some("veth")
            && let Some(peer) = link.parent_index
        {
            match link.link_netnsid {
                None => {
                    self.detach(peer);
                }
                Some(_) => self.elsewhere.retain(|(_, l)| l.index != peer),
            }
        }
        Ok(())
    }

    fn set_link_up(&mut self, index: u32) -> Result<()> {
        self.enter(Call::SetLinkUp(index))?;
        let link = self.link_mut("set up", index)?;
        link.up = true;
        link.lower_up = true;
        Ok(())
    }

    fn set_link_down(&mut self, index: u32) -> Result<()> {
        self.enter(Call::SetLinkDown(index))?;
        let link = self.link_mut("set down", index)?;
        link.up = false;
        link.lower_up = false;
        Ok(())
    }

    fn set_link_mac(&mut self, index: u32, mac: MacAddr) -> Result<()> {
        self.enter(Call::SetLinkMac(index, mac))?;
        self.link_mut("set mac", index)?.mac = Some(mac);
        Ok(())
    }

    fn set_link_mtu(&mut self, index: u32, mtu: u32) -> Result<()> {
        self.enter(Call::SetLinkMtu(index, mtu))?;
        self.link_mut("set mtu", index)?.mtu = mtu;
        Ok(())
    }

    fn rename_link(&mut self, index: u32, name: &str) -> Result<()> {
        self.enter(Call::RenameLink(index, name.to_owned()))?;
        link::validate_name(name)?;
        let object = format!("link index {index} to {name}");
        if self.name_taken(name, Some(index)) {
            return Err(kernel_error("rename", object, NETNS, libc::EEXIST));
        }
        self.link_mut("rename", index)?.name = name.to_owned();
        Ok(())
    }

    fn move_link(
        &mut self,
        index: u32,
        netns: BorrowedFd<'_>,
        new_name: Option<&str>,
    ) -> Result<()> {
        let fd = netns.as_raw_fd();
        self.enter(Call::MoveLink {
            index,
            netns: fd,
            new_name: new_name.map(str::to_owned),
        })?;
        if let Some(name) = new_name {
            link::validate_name(name)?;
        }
        let mut link = self.detach(index).ok_or_else(|| {
            kernel_error("move", format!("link index {index}"), NETNS, libc::ENODEV)
        })?;
        if let Some(name) = new_name {
            link.name = name.to_owned();
        }
        link.up = false;
        link.lower_up = false;
        self.elsewhere.push((fd, link));
        Ok(())
    }

    fn addresses(&mut self, index: Option<u32>) -> Result<Vec<Address>> {
        self.enter(Call::Addresses(index))?;
        Ok(self
            .addresses
            .iter()
            .filter(|a| index.is_none_or(|i| a.index == i))
            .cloned()
            .collect())
    }

    fn add_address(&mut self, address: &Address) -> Result<()> {
        self.enter(Call::AddAddress(address.clone()))?;
        self.link_mut("add address", address.index)?;
        let same = |a: &Address| a.index == address.index && a.network == address.network;
        if self.addresses.iter().any(same) {
            return Err(kernel_error(
                "add address",
                address.to_string(),
                NETNS,
                libc::EEXIST,
            ));
        }
        self.addresses.push(address.clone());
        Ok(())
    }

    fn delete_address(&mut self, address: &Address) -> Result<()> {
        self.enter(Call::DeleteAddress(address.clone()))?;
        let before = self.addresses.len();
        self.addresses
            .retain(|a| !(a.index == address.index && a.network == address.network));
        if self.addresses.len() == before {
            return Err(kernel_error(
                "delete address",
                address.to_string(),
                NETNS,
                libc::EADDRNOTAVAIL,
            ));
        }
        Ok(())
    }

    fn routes(&mut self, table: Option<u32>) -> Result<Vec<Route>> {
        self.enter(Call::Routes(table))?;
        Ok(self
            .routes
            .iter()
            .filter(|r| table.is_none_or(|t| r.table == t))
            .cloned()
            .collect())
    }

    fn add_route(&mut self, route: &Route) -> Result<()> {
        self.enter(Call::AddRoute(route.clone()))?;
        let stored = Self::stored_route(route)?;
        if let Some(oif) = route.oif {
            self.link_mut("add route", oif)?;
        }
        if self
            .routes
            .iter()
            .any(|r| Self::route_key(r) == Self::route_key(&stored))
        {
            return Err(kernel_error(
                "add route",
                route.to_string(),
                NETNS,
                libc::EEXIST,
            ));
        }
        self.routes.push(stored);
        Ok(())
    }

    fn replace_route(&mut self, route: &Route) -> Result<()> {
        self.enter(Call::ReplaceRoute(route.clone()))?;
        let stored = Self::stored_route(route)?;
        if let Some(oif) = route.oif {
            self.link_mut("replace route", oif)?;
        }
        match self
            .routes
            .iter_mut()
            .find(|r| Self::route_key(r) == Self::route_key(&stored))
        {
            Some(existing) => *existing = stored,
            None => self.routes.push(stored),
        }
        Ok(())
    }

    fn delete_route(&mut self, route: &Route) -> Result<()> {
        self.enter(Call::DeleteRoute(route.clone()))?;
        route::delete_request(route)?;
        match self
            .routes
            .iter()
            .position(|r| Self::route_matches(route, r))
        {
            Some(pos) => {
                self.routes.remove(pos);
                Ok(())
            }
            None => Err(kernel_error(
                "delete route",
                route.to_string(),
                NETNS,
                libc::ESRCH,
            )),
        }
    }

    fn rules(&mut self) -> Result<Vec<Rule>> {
        self.enter(Call::Rules)?;
        Ok(self.rules.clone())
    }

    fn add_rule(&mut self, rule: &Rule) -> Result<()> {
        self.enter(Call::AddRule(rule.clone()))?;
        rule::add_request(rule)?;
        let mut stored = rule.clone();
        if stored.priority.is_none() {
            // The kernel picks one below the first non-zero rule (usually 32765).
            let first = self
                .rules
                .iter()
                .filter(|r| r.family == rule.family)
                .filter_map(|r| r.priority)
                .filter(|p| *p > 0)
                .min();
            stored.priority = Some(first.map_or(0, |p| p - 1));
        }
        if self.rules.contains(&stored) {
            return Err(kernel_error(
                "add rule",
                rule.to_string(),
                NETNS,
                libc::EEXIST,
            ));
        }
        self.rules.push(stored);
        self.rules.sort_by_key(|r| r.priority);
        Ok(())
    }

    fn delete_rule(&mut self, rule: &Rule) -> Result<()> {
        self.enter(Call::DeleteRule(rule.clone()))?;
        rule::delete_request(rule)?;
        match self.rules.iter().position(|r| Self::rule_matches(rule, r)) {
            Some(pos) => {
                self.rules.remove(pos);
                Ok(())
            }
            None => Err(kernel_error(
                "delete rule",
                rule.to_string(),
                NETNS,
                libc::ENOENT,
            )),
        }
    }

    fn neighbours(&mut self, index: Option<u32>) -> Result<Vec<Neighbour>> {
        self.enter(Call::Neighbours(index))?;
        Ok(self
            .neighbours
            .iter()
            .filter(|n| index.is_none_or(|i| n.index == i))
            .cloned()
            .collect())
    }

    fn add_neighbour(&mut self, neighbour: &Neighbour) -> Result<()> {
        self.enter(Call::AddNeighbour(neighbour.clone()))?;
        self.link_mut("add neighbour", neighbour.index)?;
        if self.neighbours.iter().any(|n| same_neighbour(n, neighbour)) {
            return Err(kernel_error(
                "add neighbour",
                neighbour.to_string(),
                NETNS,
                libc::EEXIST,
            ));
        }
        self.neighbours.push(neighbour.clone());
        Ok(())
    }

    fn replace_neighbour(&mut self, neighbour: &Neighbour) -> Result<()> {
        self.enter(Call::ReplaceNeighbour(neighbour.clone()))?;
        self.link_mut("replace neighbour", neighbour.index)?;
        self.neighbours.retain(|n| !same_neighbour(n, neighbour));
        self.neighbours.push(neighbour.clone());
        Ok(())
    }

    fn delete_neighbour(&mut self, neighbour: &Neighbour) -> Result<()> {
        self.enter(Call::DeleteNeighbour(neighbour.clone()))?;
        let before = self.neighbours.len();
        self.neighbours.retain(|n| !same_neighbour(n, neighbour));
        if self.neighbours.len() == before {
            return Err(kernel_error(
                "delete neighbour",
                neighbour.to_string(),
                NETNS,
                libc::ENOENT,
            ));
        }
        Ok(())
    }
}

fn same_neighbour(a: &Neighbour, b: &Neighbour) -> bool {
    a.index == b.index && a.ip == b.ip && a.proxy == b.proxy
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::os::fd::AsFd;

    use super::*;
    use crate::{RouteKind, Scope, Veth};

    fn net(s: &str) -> ipnetwork::IpNetwork {
        s.parse().unwrap()
    }

    #[test]
    fn starts_like_a_new_namespace() {
        let mut fake = FakeNet::new();
        let links = fake.links().unwrap();
        assert_eq!(links.len(), 1);
        assert_eq!(
            (links[0].index, links[0].name.as_str(), links[0].up),
            (1, "lo", false)
        );
        let prios: Vec<_> = fake
            .rules()
            .unwrap()
            .iter()
            .filter(|r| r.family == IpFamily::V4)
            .map(|r| r.priority)
            .collect();
        assert_eq!(prios, [Some(0), Some(32766), Some(32767)]);
    }

    #[test]
    fn veth_with_peer_elsewhere_is_recorded_and_listed() {
        let mut fake = FakeNet::new();
        let ns = File::open("/dev/null").unwrap();
        let mac = MacAddr([2, 0, 0, 0, 0, 7]);
        let host = fake
            .create_veth(
                &Veth::new("veth1", "eth0")
                    .peer_mac(mac)
                    .mtu(1400)
                    .peer_netns(ns.as_fd()),
            )
            .unwrap();
        assert_eq!(host.kind.as_deref(), Some("veth"));
        assert_eq!(host.mtu, 1400);
        assert_eq!(fake.link_by_name("veth1").unwrap(), host);
        assert!(fake.link_by_name("eth0").unwrap_err().is_not_found());
        let (fd, peer) = &fake.elsewhere()[0];
        assert_eq!(
            (*fd, peer.name.as_str(), peer.mac),
            (ns.as_raw_fd(), "eth0", Some(mac))
        );
        assert_eq!(
            fake.calls()[0],
            Call::CreateVeth {
                name: "veth1".into(),
                peer_name: "eth0".into(),
                mac: None,
                peer_mac: Some(mac),
                mtu: Some(1400),
                peer_netns: Some(ns.as_raw_fd()),
            }
        );
        // Deleting one end takes the other with it.
        fake.delete_link(host.index).unwrap();
        assert!(fake.elsewhere().is_empty());
        assert!(fake.delete_link(host.index).unwrap_err().is_not_found());
    }

    #[test]
    fn duplicates_and_absent_objects_answer_like_the_kernel() {
        let mut fake = FakeNet::new();
        let eth = fake.add_link("eth1", None);
        let a = Address::new(eth.index, net("10.0.0.2/24"));
        fake.add_address(&a).unwrap();
        assert!(fake.add_address(&a).unwrap_err().is_exists());
        fake.delete_address(&a).unwrap();
        assert!(fake.delete_address(&a).unwrap_err().is_not_found());

        let r = Route::new(net("10.1.0.0/16"))
            .via("10.0.0.1".parse().unwrap())
            .dev(eth.index)
            .table(100);
        fake.add_route(&r).unwrap();
        assert!(fake.add_route(&r).unwrap_err().is_exists());
        fake.replace_route(&r.clone().src("10.0.0.2".parse().unwrap()))
            .unwrap();
        assert_eq!(fake.routes(Some(100)).unwrap().len(), 1);
        assert!(fake.routes(Some(TABLE_MAIN)).unwrap().is_empty());
        fake.delete_route(&Route::new(net("10.1.0.0/16")).table(100))
            .unwrap();
        assert_eq!(
            fake.delete_route(&r).unwrap_err().errno(),
            Some(libc::ESRCH)
        );

        let n = Neighbour::permanent(
            eth.index,
            "169.254.1.1".parse().unwrap(),
            MacAddr([0xee; 6]),
        );
        fake.add_neighbour(&n).unwrap();
        assert!(fake.add_neighbour(&n).unwrap_err().is_exists());
        fake.replace_neighbour(&n).unwrap();
        fake.delete_neighbour(&n).unwrap();
        assert!(fake.delete_neighbour(&n).unwrap_err().is_not_found());

        assert_eq!(
            fake.add_address(&Address::new(99, net("10.9.9.9/32")))
                .unwrap_err()
                .errno(),
            Some(libc::ENODEV)
        );
    }

    #[test]
    fn routes_are_listed_as_the_kernel_fills_them_in() {
        let mut fake = FakeNet::new();
        let eth = fake.add_link("eth1", None);
        fake.add_route(&Route::new(net("10.0.0.5/32")).dev(eth.index))
            .unwrap();
        let listed = fake.routes(None).unwrap();
        assert_eq!(listed[0].scope, Some(Scope::Link));
        assert_eq!(listed[0].protocol, Some(crate::proto::BOOT));
        assert_eq!(listed[0].kind, RouteKind::Unicast);
        // A bad route is refused as the real socket refuses it.
        assert!(fake.add_route(&Route::new(net("10.0.0.5/24"))).is_err());
    }

    #[test]
    fn rules_get_a_priority_and_delete_matches_without_one() {
        let mut fake = FakeNet::new();
        let r = Rule::lookup(IpFamily::V4, 100).from(net("10.0.0.5/32"));
        fake.add_rule(&r).unwrap();
        let added = fake
            .rules()
            .unwrap()
            .into_iter()
            .find(|x| x.table == 100)
            .unwrap();
        assert_eq!(added.priority, Some(32765));
        assert!(fake.add_rule(&added).unwrap_err().is_exists());
        fake.delete_rule(&r).unwrap();
        assert!(fake.delete_rule(&r).unwrap_err().is_not_found());
        assert!(fake.add_rule(&Rule::lookup(IpFamily::V4, 0)).is_err());
    }

    #[test]
    fn moving_a_link_drops_its_state_and_renames_it() {
        let mut fake = FakeNet::new();
        let eni = fake.add_link("eth2", None);
        fake.add_address(&Address::new(eni.index, net("10.0.0.9/24")))
            .unwrap();
        fake.add_route(&Route::new(net("10.0.0.0/24")).dev(eni.index))
            .unwrap();
        let ns = File::open("/dev/null").unwrap();
        fake.move_link(eni.index, ns.as_fd(), Some("eth0")).unwrap();
        assert!(fake.link_by_index(eni.index).unwrap_err().is_not_found());
        assert!(fake.addresses(None).unwrap().is_empty());
        assert!(fake.routes(None).unwrap().is_empty());
        assert_eq!(fake.elsewhere()[0].1.name, "eth0");
    }

    #[test]
    fn rename_needs_a_free_name() {
        let mut fake = FakeNet::new();
        let a = fake.add_link("a", None);
        fake.add_link("b", None);
        assert!(fake.rename_link(a.index, "b").unwrap_err().is_exists());
        fake.rename_link(a.index, "c").unwrap();
        fake.set_link_mtu(a.index, 9000).unwrap();
        fake.set_link_mac(a.index, MacAddr([2, 1, 1, 1, 1, 1]))
            .unwrap();
        let c = fake.link_by_name("c").unwrap();
        assert_eq!((c.mtu, c.mac), (9000, Some(MacAddr([2, 1, 1, 1, 1, 1]))));
        assert!(fake.rename_link(a.index, "bad name").is_err());
    }

    #[test]
    fn injected_failure_hits_once_and_is_recorded() {
        let mut fake = FakeNet::new();
        fake.fail_next("delete_link", libc::ENODEV);
        let err = fake.delete_link(1).unwrap_err();
        assert!(err.is_not_found());
        assert_eq!(
            fake.links().unwrap().len(),
            1,
            "failed call changed nothing"
        );
        assert_eq!(fake.take_calls(), [Call::DeleteLink(1), Call::Links]);
        fake.delete_link(1).unwrap();
        assert!(fake.calls().iter().all(|c| c.method() == "delete_link"));
    }
}

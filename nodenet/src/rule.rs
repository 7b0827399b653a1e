//! Policy-routing rules and their `RTM_*RULE` messages.

use std::fmt;

use ipnetwork::IpNetwork;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::rule::{RuleAttribute, RuleMessage};

use crate::IpFamily;
use crate::error::{Error, Result};

/// What a matching rule does (`FR_ACT_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RuleAction {
    /// Look the packet up in [`Rule::table`]. A rule sent without this action is
    /// accepted by the kernel and then never finds a route.
    #[default]
    ToTable,
    Nop,
    Blackhole,
    Unreachable,
    Prohibit,
    Other(u8),
}

impl From<u8> for RuleAction {
    fn from(v: u8) -> RuleAction {
        match v {
            1 => RuleAction::ToTable,
            3 => RuleAction::Nop,
            6 => RuleAction::Blackhole,
            7 => RuleAction::Unreachable,
            8 => RuleAction::Prohibit,
            other => RuleAction::Other(other),
        }
    }
}

impl From<RuleAction> for u8 {
    fn from(a: RuleAction) -> u8 {
        match a {
            RuleAction::ToTable => 1,
            RuleAction::Nop => 3,
            RuleAction::Blackhole => 6,
            RuleAction::Unreachable => 7,
            RuleAction::Prohibit => 8,
            RuleAction::Other(v) => v,
        }
    }
}

/// A policy rule: `Rule::lookup(IpFamily::V4, 100).from(pod_ip).priority(1000)` is
/// `ip rule add pref 1000 from POD lookup 100`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rule {
    /// Set by [`Rule::from`] and [`Rule::to`]; matters alone for "from all" rules.
    pub family: IpFamily,
    /// Lower runs first. `None` lets the kernel pick one on add.
    pub priority: Option<u32>,
    pub from: Option<IpNetwork>,
    pub to: Option<IpNetwork>,
    /// Input interface name.
    pub iif: Option<String>,
    /// Output interface name.
    pub oif: Option<String>,
    pub fwmark: Option<u32>,
    pub fwmask: Option<u32>,
    /// The table to look up; 0 for actions other than [`RuleAction::ToTable`].
    pub table: u32,
    pub action: RuleAction,
}

impl Rule {
    /// "from all lookup `table`" for `family`.
    pub fn lookup(family: IpFamily, table: u32) -> Rule {
        Rule {
            family,
            priority: None,
            from: None,
            to: None,
            iif: None,
            oif: None,
            fwmark: None,
            fwmask: None,
            table,
            action: RuleAction::ToTable,
        }
    }

    /// Match source prefix `net` (also sets the family).
    pub fn from(mut self, net: IpNetwork) -> Self {
        self.family = IpFamily::of(&net.ip());
        self.from = Some(net);
        self
    }

    /// Match destination prefix `net` (also sets the family).
    pub fn to(mut self, net: IpNetwork) -> Self {
        self.family = IpFamily::of(&net.ip());
        self.to = Some(net);
        self
    }

    pub fn priority(mut self, priority: u32) -> Self {
        self.priority = Some(priority);
        self
    }

    pub fn iif(mut self, name: impl Into<String>) -> Self {
        self.iif = Some(name.into());
        self
    }

    pub fn oif(mut self, name: impl Into<String>) -> Self {
        self.oif = Some(name.into());
        self
    }

    pub fn fwmark(mut self, mark: u32, mask: u32) -> Self {
        self.fwmark = Some(mark);
        self.fwmask = Some(mask);
        self
    }

    pub fn action(mut self, action: RuleAction) -> Self {
        self.action = action;
        if action != RuleAction::ToTable {
            self.table = 0;
        }
        self
    }

    fn validate(&self) -> Result<()> {
        for net in [self.from, self.to].into_iter().flatten() {
            if IpFamily::of(&net.ip()) != self.family {
                return Err(Error::invalid(
                    "rule prefix",
                    net.to_string(),
                    "is of another family than the rule",
                ));
            }
        }
        for name in [&self.iif, &self.oif].into_iter().flatten() {
            crate::link::validate_name(name)?;
        }
        Ok(())
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(p) = self.priority {
            write!(f, "pref {p} ")?;
        }
        match self.from {
            Some(net) => write!(f, "from {net}")?,
            None => f.write_str("from all")?,
        }
        if let Some(net) = self.to {
            write!(f, " to {net}")?;
        }
        if let Some(mark) = self.fwmark {
            write!(
                f,
                " fwmark {mark:#x}/{:#x}",
                self.fwmask.unwrap_or(u32::MAX)
            )?;
        }
        if let Some(iif) = &self.iif {
            write!(f, " iif {iif}")?;
        }
        if let Some(oif) = &self.oif {
            write!(f, " oif {oif}")?;
        }
        match self.action {
            RuleAction::ToTable => write!(f, " lookup {}", self.table),
            other => write!(f, " {other:?}"),
        }?;
        if self.family == IpFamily::V6 && self.from.is_none() && self.to.is_none() {
            f.write_str(" (ipv6)")?;
        }
        Ok(())
    }
}

pub(crate) fn dump_request(family: IpFamily) -> RouteNetlinkMessage {
    let mut msg = RuleMessage::default();
    msg.header.family = family.to_netlink();
    RouteNetlinkMessage::GetRule(msg)
}

fn message(rule: &Rule, adding: bool) -> Result<RuleMessage> {
    rule.validate()?;
    if adding && rule.action == RuleAction::ToTable && rule.table == 0 {
        return Err(Error::invalid("rule", rule.to_string(), "a lookup rule needs a table"));
    }
    let mut msg = RuleMessage::default();
    msg.header.family = rule.family.to_netlink();
    msg.header.action = u8::from(rule.action).into();
    msg.header.table = u8::try_from(rule.table).unwrap_or(252);
    if let Some(p) = rule.priority {
        msg.attributes.push(RuleAttribute::Priority(p));
    }
    if let Some(net) = rule.from {
        msg.header.src_len = net.prefix();
        msg.attributes.push(RuleAttribute::Source(net.ip()));
    }
    if let Some(net) = rule.to {
        msg.header.dst_len = net.prefix();
        msg.attributes.push(RuleAttribute::Destination(net.ip()));
    }
    if let Some(name) = &rule.iif {
        msg.attributes.push(RuleAttribute::Iifname(name.clone()));
    }
    if let Some(name) = &rule.oif {
        msg.attributes.push(RuleAttribute::Oifname(name.clone()));
    }
    if let Some(mark) = rule.fwmark {
        msg.attributes.push(RuleAttribute::FwMark(mark));
    }
    if let Some(mask) = rule.fwmask {
        msg.attributes.push(RuleAttribute::FwMask(mask));
    }
    if rule.table != 0 {
        msg.attributes.push(RuleAttribute::Table(rule.table));
    }
    Ok(msg)
}

pub(crate) fn add_request(rule: &Rule) -> Result<RouteNetlinkMessage> {
    Ok(RouteNetlinkMessage::NewRule(message(rule, true)?))
}

pub(crate) fn delete_request(rule: &Rule) -> Result<RouteNetlinkMessage> {
    // Deleting with table 0 matches the rule whatever table it looks up (the kernel treats an
    // unset table as a wildcard), so a caller that knows only the selector can remove it.
    Ok(RouteNetlinkMessage::DelRule(message(rule, false)?))
}

/// The rule in a `RTM_NEWRULE` reply; `None` for other messages and families.
pub(crate) fn from_reply(reply: RouteNetlinkMessage) -> Option<Rule> {
    let RouteNetlinkMessage::NewRule(msg) = reply else {
        return None;
    };
    let family = IpFamily::from_netlink(msg.header.family)?;
    let mut rule = Rule::lookup(family, u32::from(msg.header.table));
    rule.action = RuleAction::from(u8::from(msg.header.action));
    for attr in msg.attributes {
        match attr {
            RuleAttribute::Priority(p) => rule.priority = Some(p),
            RuleAttribute::Source(ip) => rule.from = IpNetwork::new(ip, msg.header.src_len).ok(),
            RuleAttribute::Destination(ip) => rule.to = IpNetwork::new(ip, msg.header.dst_len).ok(),
            RuleAttribute::Iifname(name) => rule.iif = Some(name),
            RuleAttribute::Oifname(name) => rule.oif = Some(name),
            RuleAttribute::FwMark(m) => rule.fwmark = Some(m),
            RuleAttribute::FwMask(m) => rule.fwmask = Some(m),
            RuleAttribute::Table(t) => rule.table = t,
            _ => {}
        }
    }
    Some(rule)
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::{Emitable, Parseable};
    use netlink_packet_route::AddressFamily;
    use netlink_packet_route::rule::RuleAction as NlRuleAction;

    use super::*;

    fn round_trip(msg: RouteNetlinkMessage) -> RuleMessage {
        let (RouteNetlinkMessage::NewRule(m) | RouteNetlinkMessage::DelRule(m)) = msg else {
            panic!()
        };
        let mut buf = vec![0; m.buffer_len()];
        m.emit(&mut buf);
        RuleMessage::parse(&buf[..]).unwrap()
    }

    #[test]
    fn lookup_rule_carries_the_to_table_action() {
        let r = Rule::lookup(IpFamily::V4, 1001)
            .from("10.0.0.5/32".parse().unwrap())
            .priority(2000)
            .iif("eth1");
        let msg = round_trip(add_request(&r).unwrap());
        assert_eq!(msg.header.family, AddressFamily::Inet);
        assert_eq!(msg.header.action, NlRuleAction::ToTable);
        assert_eq!(msg.header.src_len, 32);
        assert_eq!(msg.header.table, 252);
        assert!(msg.attributes.contains(&RuleAttribute::Table(1001)));
        assert!(msg.attributes.contains(&RuleAttribute::Priority(2000)));
        assert!(
            msg.attributes
                .contains(&RuleAttribute::Iifname("eth1".into()))
        );
        assert_eq!(from_reply(RouteNetlinkMessage::NewRule(msg)).unwrap(), r);
        assert_eq!(
            r.to_string(),
            "pref 2000 from 10.0.0.5/32 iif eth1 lookup 1001"
        );
    }

    #[test]
    fn v6_rule_from_prefix_and_fwmark_round_trip() {
        let r = Rule::lookup(IpFamily::V4, 7)
            .to("fd00::/64".parse().unwrap())
            .fwmark(0x10, 0xff);
        assert_eq!(r.family, IpFamily::V6);
        let msg = round_trip(add_request(&r).unwrap());
        assert_eq!(msg.header.family, AddressFamily::Inet6);
        assert_eq!(msg.header.table, 7);
        assert_eq!(from_reply(RouteNetlinkMessage::NewRule(msg)).unwrap(), r);
    }

    #[test]
    fn rules_that_cannot_work_are_refused() {
        assert!(add_request(&Rule::lookup(IpFamily::V4, 0)).is_err());
        let mut mixed = Rule::lookup(IpFamily::V4, 5).from("10.0.0.0/8".parse().unwrap());
        mixed.to = Some("fd00::/8".parse().unwrap());
        assert!(add_request(&mixed).is_err());
        let blackhole = Rule::lookup(IpFamily::V4, 5)
            .action(RuleAction::Blackhole)
            .priority(10);
        let msg = round_trip(add_request(&blackhole).unwrap());
        assert_eq!(msg.header.action, NlRuleAction::Blackhole);
        assert!(
            !msg.attributes
                .iter()
                .any(|a| matches!(a, RuleAttribute::Table(_)))
        );
    }
}

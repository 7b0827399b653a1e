//! The vRouter's filters as nftables scripts, rendered from the state, and its drop counters read
//! back from `nft -j list counters`. Pure: no I/O.
//!
//! Two tables per VPC namespace:
//! - `inet berth_antispoof` is never deleted, so its named counters `spoofed_mac` and `spoofed_ip`
//!   keep counting across converges; only its set elements are replaced.
//! - `inet berth_sg` (security groups) is rebuilt whole on each converge.
//!
//! A trunk ENI's port carries its members' frames too: the port's tc program has taken each
//! frame's VLAN tag off and left the VLAN ID as the packet mark (0 for untagged frames), so every
//! check is keyed by (port, mark). An untagged frame of a member, or a member's frame under another
//! member's tag, matches no (port, mark, MAC) and is counted as `wrong_vlan` and dropped.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use berth_cloud::model::{Direction, IpProtocol, NetworkInterface, Policy, SecurityGroupRule};
use ipnetwork::IpNetwork;

use crate::state::State;

/// An ENI on the wire in a VPC: its vRouter port and what it may send.
#[derive(Debug, Clone)]
pub struct WiredEni<'a> {
    pub port: String,
    /// The VLAN ID of a member ENI on its trunk's port; 0 for an ENI with a port of its own.
    pub vlan: u16,
    pub eni: &'a NetworkInterface,
}

impl WiredEni<'_> {
    /// The suffix of this ENI's security-group chains.
    fn chains(&self) -> String {
        if self.vlan == 0 { self.port.clone() } else { format!("{}_v{}", self.port, self.vlan) }
    }
}

/// The table of the anti-spoofing filter and its named counters, each counting the packets dropped
/// for one reason.
pub const ANTISPOOF_TABLE: &str = "berth_antispoof";
pub const DROP_COUNTERS: [&str; 3] = ["spoofed_mac", "spoofed_ip", "wrong_vlan"];
/// The security groups' table and its named counters: denied by the sender's egress rules, and by
/// the receiver's ingress rules (an explicit drop, or no rule accepting).
pub const SG_TABLE: &str = "berth_sg";
pub const SG_DROP_COUNTERS: [&str; 2] = ["sg_egress_denied", "sg_ingress_denied"];

/// The packets each drop counter of [`ANTISPOOF_TABLE`] counted, from the JSON of
/// `nft -j list counters` (counters of other tables are not ours and are left out).
pub fn drop_counts(listing: &str) -> Result<BTreeMap<String, u64>, String> {
    let doc: serde_json::Value = serde_json::from_str(listing).map_err(|e| format!("the output of nft -j is not JSON: {e}"))?;
    let items = doc.get("nftables").and_then(serde_json::Value::as_array).ok_or("the output of nft -j has no \"nftables\" list")?;
    let mut counts = BTreeMap::new();
    for c in items.iter().filter_map(|o| o.get("counter")) {
        let table = c["table"].as_str().unwrap_or_default();
        if c["family"] == "inet"
            && let Some(name) = c["name"].as_str().filter(|n| (table == ANTISPOOF_TABLE && DROP_COUNTERS.contains(n)) || (table == SG_TABLE && SG_DROP_COUNTERS.contains(n)))
        {
            *counts.entry(name.to_string()).or_default() += c["packets"].as_u64().unwrap_or(0);
        }
    }
    Ok(counts)
}

fn addresses(e: &NetworkInterface) -> (Vec<String>, Vec<String>) {
    let v4 = std::iter::once(e.primary_ip).chain(e.secondary_ips.iter().copied()).map(|ip| ip.to_string()).collect();
    let v6 = e.ipv6_addresses.iter().map(ToString::to_string).collect();
    (v4, v6)
}

fn elements(items: &[String]) -> String {
    items.join(", ")
}

/// Anti-spoofing: only the ENI's MAC and addresses may enter the vRouter from its port (for a
/// member ENI: from its trunk's port under its VLAN ID).
pub fn antispoof(enis: &[WiredEni<'_>]) -> String {
    let mut ports = Vec::new();
    let mut trunks = Vec::new();
    let mut macs = Vec::new();
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for w in enis {
        let port = format!("\"{}\"", w.port);
        if w.vlan != 0 && !trunks.contains(&port) {
            trunks.push(port.clone());
        }
        if !ports.contains(&port) {
            ports.push(port);
        }
        let key = format!("\"{}\" . {}", w.port, w.vlan);
        macs.push(format!("{key} . {}", w.eni.mac));
        let (a4, a6) = addresses(w.eni);
        v4.extend(a4.into_iter().map(|a| format!("{key} . {a}")));
        v6.extend(a6.into_iter().map(|a| format!("{key} . {a}")));
    }
    let t = format!("inet {ANTISPOOF_TABLE}");
    let mut s = String::new();
    let _ = writeln!(s, "add table {t}");
    for counter in DROP_COUNTERS {
        let _ = writeln!(s, "add counter {t} {counter}");
    }
    let _ = writeln!(s, "add set {t} ports {{ type ifname; }}");
    let _ = writeln!(s, "add set {t} trunk_ports {{ type ifname; }}");
    let _ = writeln!(s, "add set {t} port_vlan_mac {{ type ifname . mark . ether_addr; }}");
    let _ = writeln!(s, "add set {t} port_vlan_ipv4 {{ type ifname . mark . ipv4_addr; }}");
    let _ = writeln!(s, "add set {t} port_vlan_ipv6 {{ type ifname . mark . ipv6_addr; }}");
    let _ = writeln!(s, "add chain {t} ingress {{ type filter hook prerouting priority -300; policy accept; }}");
    let _ = writeln!(s, "flush chain {t} ingress");
    let sets = [("ports", &ports), ("trunk_ports", &trunks), ("port_vlan_mac", &macs), ("port_vlan_ipv4", &v4), ("port_vlan_ipv6", &v6)];
    for (set, _) in sets {
        let _ = writeln!(s, "flush set {t} {set}");
    }
    for (set, items) in sets {
        if !items.is_empty() {
            let _ = writeln!(s, "add element {t} {set} {{ {} }}", elements(items));
        }
    }
    let _ = writeln!(s, "add rule {t} ingress iifname != @ports accept");
    let _ = writeln!(s, "add rule {t} ingress iifname @trunk_ports iifname . meta mark . ether saddr != @port_vlan_mac counter name wrong_vlan drop");
    let _ = writeln!(s, "add rule {t} ingress iifname . meta mark . ether saddr != @port_vlan_mac counter name spoofed_mac drop");
    let _ = writeln!(s, "add rule {t} ingress meta nfproto ipv4 iifname . meta mark . ip saddr != @port_vlan_ipv4 counter name spoofed_ip drop");
    // IPv6 neighbour discovery uses link-local and unspecified sources.
    let _ = writeln!(s, "add rule {t} ingress meta nfproto ipv6 ip6 saddr != {{ ::, fe80::/10 }} iifname . meta mark . ip6 saddr != @port_vlan_ipv6 counter name spoofed_ip drop");
    s
}

fn set_name(group: &str) -> String {
    format!("members_{}", group.replace('-', "_"))
}

fn match_rule(rule: &SecurityGroupRule) -> String {
    let mut m = String::new();
    let peer_dir = if rule.direction == Direction::Ingress { "saddr" } else { "daddr" };
    match rule.peer_cidr {
        IpNetwork::V4(n) if n.prefix() == 0 => m.push_str("meta nfproto ipv4 "),
        IpNetwork::V4(n) => {
            let _ = write!(m, "ip {peer_dir} {n} ");
        }
        IpNetwork::V6(n) if n.prefix() == 0 => m.push_str("meta nfproto ipv6 "),
        IpNetwork::V6(n) => {
            let _ = write!(m, "ip6 {peer_dir} {n} ");
        }
    }
    match (rule.protocol, rule.ports) {
        (IpProtocol::Tcp, Some((a, b))) => {
            let _ = write!(m, "tcp dport {a}-{b} ");
        }
        (IpProtocol::Udp, Some((a, b))) => {
            let _ = write!(m, "udp dport {a}-{b} ");
        }
        (IpProtocol::Tcp, None) => m.push_str("meta l4proto tcp "),
        (IpProtocol::Udp, None) => m.push_str("meta l4proto udp "),
        (IpProtocol::Icmp, _) => m.push_str("meta l4proto { icmp, ipv6-icmp } "),
        (IpProtocol::All, _) => {}
    }
    m
}

/// The rules of an ENI's groups for one direction, in the order the cloud applies them:
/// by priority (1 first), a drop before an accept of the same priority.
fn ordered<'a>(state: &'a State, eni: &NetworkInterface, direction: Direction) -> Vec<&'a SecurityGroupRule> {
    let mut rules: Vec<&SecurityGroupRule> = eni
        .security_group_ids
        .iter()
        .filter_map(|g| state.security_groups.get(g))
        .flat_map(|g| g.rules.iter())
        .filter(|r| r.direction == direction)
        .collect();
    rules.sort_by_key(|r| (r.priority, r.policy == Policy::Accept));
    rules
}

/// The chains and sets a security-group script made, so that the next one removes those it no
/// longer needs (the table itself stays, and with it its counters).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SgObjects {
    pub chains: std::collections::BTreeSet<String>,
    pub sets: std::collections::BTreeSet<String>,
}

/// Security groups, enforced statefully between the vRouter's ports, as a fresh table.
pub fn security_groups(state: &State, enis: &[WiredEni<'_>]) -> String {
    security_groups_over(state, enis, None).0
}

/// Security groups over what an earlier script of this process made (`previous`): the table is
/// flushed, not deleted, so its drop counters keep counting; chains and sets no longer wanted are
/// deleted. Without `previous` (the first converge of a process) the table is made afresh.
pub fn security_groups_over(state: &State, enis: &[WiredEni<'_>], previous: Option<&SgObjects>) -> (String, SgObjects) {
    let t = format!("inet {SG_TABLE}");
    let mut s = String::new();
    let mut made = SgObjects::default();
    let _ = writeln!(s, "add table {t}");
    if previous.is_none() {
        // Adding first makes the delete valid when the table does not exist yet.
        let _ = writeln!(s, "delete table {t}");
        let _ = writeln!(s, "add table {t}");
    } else {
        let _ = writeln!(s, "flush table {t}");
    }
    for counter in SG_DROP_COUNTERS {
        let _ = writeln!(s, "add counter {t} {counter}");
    }
    let mut members: BTreeMap<&str, (Vec<String>, Vec<String>)> = BTreeMap::new();
    for e in state.enis.values() {
        for g in &e.security_group_ids {
            let (v4, v6) = addresses(e);
            let entry = members.entry(g.as_str()).or_default();
            entry.0.extend(v4);
            entry.1.extend(v6);
        }
    }
    for (g, (v4, v6)) in &members {
        let name = set_name(g);
        for (set, ty, items) in [(format!("{name}_v4"), "ipv4_addr", v4), (format!("{name}_v6"), "ipv6_addr", v6)] {
            let _ = writeln!(s, "add set {t} {set} {{ type {ty}; }}");
            let _ = writeln!(s, "flush set {t} {set}");
            if !items.is_empty() {
                let _ = writeln!(s, "add element {t} {set} {{ {} }}", elements(items));
            }
            made.sets.insert(set);
        }
    }
    let _ = writeln!(s, "add chain {t} forward {{ type filter hook forward priority 0; policy accept; }}");
    made.chains.insert("forward".into());
    let _ = writeln!(s, "add rule {t} forward ct state established,related accept");
    for w in enis {
        let (out, inn) = (format!("out_{}", w.chains()), format!("in_{}", w.chains()));
        let _ = writeln!(s, "add chain {t} {out}");
        for r in ordered(state, w.eni, Direction::Egress) {
            let verdict = if r.policy == Policy::Accept { "return" } else { "counter name sg_egress_denied drop" };
            let _ = writeln!(s, "add rule {t} {out} {}{verdict}", match_rule(r));
        }
        let _ = writeln!(s, "add chain {t} {inn}");
        for r in ordered(state, w.eni, Direction::Ingress) {
            let verdict = if r.policy == Policy::Accept { "accept" } else { "counter name sg_ingress_denied drop" };
            let _ = writeln!(s, "add rule {t} {inn} {}{verdict}", match_rule(r));
        }
        for g in &w.eni.security_group_ids {
            if members.contains_key(g.as_str()) {
                let name = set_name(g);
                let _ = writeln!(s, "add rule {t} {inn} ip saddr @{name}_v4 accept");
                let _ = writeln!(s, "add rule {t} {inn} ip6 saddr @{name}_v6 accept");
            }
        }
        let _ = writeln!(s, "add rule {t} {inn} counter name sg_ingress_denied drop");
        made.chains.insert(out);
        made.chains.insert(inn);
        // Egress of the sender first (it returns when allowed), then ingress of the receiver.
        let _ = writeln!(s, "add rule {t} forward iifname \"{}\" meta mark {} jump out_{}", w.port, w.vlan, w.chains());
    }
    // Into a trunk's port: a member by its addresses first, the trunk ENI itself for the rest.
    for w in enis.iter().filter(|w| w.vlan != 0) {
        let (v4, v6) = addresses(w.eni);
        let _ = writeln!(s, "add rule {t} forward oifname \"{}\" ip daddr {{ {} }} jump in_{}", w.port, elements(&v4), w.chains());
        if !v6.is_empty() {
            let _ = writeln!(s, "add rule {t} forward oifname \"{}\" ip6 daddr {{ {} }} jump in_{}", w.port, elements(&v6), w.chains());
        }
    }
    for w in enis.iter().filter(|w| w.vlan == 0) {
        let _ = writeln!(s, "add rule {t} forward oifname \"{}\" jump in_{}", w.port, w.port);
    }
    // What the earlier script made and this one does not: flushed above, so nothing refers to it.
    if let Some(prev) = previous {
        for c in prev.chains.difference(&made.chains) {
            let _ = writeln!(s, "delete chain {t} {c}");
        }
        for set in prev.sets.difference(&made.sets) {
            let _ = writeln!(s, "delete set {t} {set}");
        }
    }
    (s, made)
}

#[cfg(test)]
mod tests {
    use berth_cloud::model::{EniKind, EniStatus, SecurityGroup};

    use super::*;

    fn eni(id: &str, ip: &str, groups: &[&str]) -> NetworkInterface {
        NetworkInterface {
            id: id.into(),
            kind: EniKind::Secondary,
            status: EniStatus::InUse,
            mac: "02:00:00:00:00:01".into(),
            vpc_id: "vpc-1".into(),
            vswitch_id: "vsw-1".into(),
            zone_id: "z".into(),
            security_group_ids: groups.iter().map(|g| g.to_string()).collect(),
            instance_id: Some("i-1".into()),
            trunk_eni_id: None,
            vlan_id: None,
            primary_ip: ip.parse().unwrap(),
            secondary_ips: vec!["10.0.0.9".parse().unwrap()],
            ipv6_addresses: vec![],
            description: String::new(),
        }
    }

    #[test]
    fn antispoof_keeps_counters_and_lists_every_address() {
        let e = eni("eni-1", "10.0.0.5", &["sg-1"]);
        let s = antispoof(&[WiredEni { port: "pabc".into(), vlan: 0, eni: &e }]);
        assert!(s.contains("add counter inet berth_antispoof spoofed_mac"));
        assert!(!s.contains("delete table inet berth_antispoof"), "the counters' table is never deleted");
        assert!(s.contains("add element inet berth_antispoof port_vlan_ipv4 { \"pabc\" . 0 . 10.0.0.5, \"pabc\" . 0 . 10.0.0.9 }"));
        assert!(s.contains("add element inet berth_antispoof port_vlan_mac { \"pabc\" . 0 . 02:00:00:00:00:01 }"));
        assert!(s.contains("counter name spoofed_ip drop"));
    }

    #[test]
    fn drop_counts_are_read_from_the_antispoof_table_only() {
        let listing = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
            {"counter": {"family": "inet", "name": "spoofed_mac", "table": "berth_antispoof", "handle": 1, "packets": 4, "bytes": 336}},
            {"counter": {"family": "inet", "name": "spoofed_ip", "table": "berth_antispoof", "handle": 2, "packets": 0, "bytes": 0}},
            {"counter": {"family": "inet", "name": "spoofed_mac", "table": "other", "handle": 1, "packets": 99, "bytes": 0}},
            {"counter": {"family": "inet", "name": "mine", "table": "berth_antispoof", "handle": 3, "packets": 5, "bytes": 0}}]}"#;
        let counts = drop_counts(listing).unwrap();
        assert_eq!(counts, [("spoofed_ip".to_string(), 0), ("spoofed_mac".to_string(), 4)].into());
        assert_eq!(drop_counts(r#"{"nftables": [{"metainfo": {}}]}"#).unwrap(), BTreeMap::new());
        assert!(drop_counts("Error: no such table").is_err());
        let script = antispoof(&[]);
        for c in DROP_COUNTERS {
            assert!(script.contains(&format!("add counter inet berth_antispoof {c}\n")), "{c} is not declared:\n{script}");
        }
    }

    #[test]
    fn members_are_told_apart_on_their_trunks_port_by_vlan() {
        let mut state = State::default();
        let trunk = eni("eni-t", "10.0.0.5", &["sg-1"]);
        let mut member = eni("eni-m", "10.0.0.7", &["sg-2"]);
        member.mac = "02:00:00:00:00:07".into();
        member.secondary_ips.clear();
        member.kind = EniKind::Member;
        member.vlan_id = Some(12);
        state.enis.insert(trunk.id.clone(), trunk.clone());
        state.enis.insert(member.id.clone(), member.clone());
        let wired = [WiredEni { port: "pt".into(), vlan: 0, eni: &trunk }, WiredEni { port: "pt".into(), vlan: 12, eni: &member }];
        let a = antispoof(&wired);
        assert!(a.contains("add element inet berth_antispoof port_vlan_mac { \"pt\" . 0 . 02:00:00:00:00:01, \"pt\" . 12 . 02:00:00:00:00:07 }"), "{a}");
        assert!(a.contains("add element inet berth_antispoof trunk_ports { \"pt\" }"), "{a}");
        assert!(a.contains("add element inet berth_antispoof ports { \"pt\" }"), "one port: {a}");
        let at = |needle: &str| a.find(needle).unwrap_or_else(|| panic!("{needle} missing in\n{a}"));
        assert!(at("counter name wrong_vlan drop") < at("counter name spoofed_mac drop"));
        let s = security_groups(&state, &wired);
        let at = |needle: &str| s.find(needle).unwrap_or_else(|| panic!("{needle} missing in\n{s}"));
        assert!(s.contains("add rule inet berth_sg forward iifname \"pt\" meta mark 12 jump out_pt_v12"));
        assert!(at("oifname \"pt\" ip daddr { 10.0.0.7 } jump in_pt_v12") < at("oifname \"pt\" jump in_pt"));
    }

    #[test]
    fn rules_are_ordered_by_priority_with_drops_first() {
        let mut state = State::default();
        let rule = |ports, policy, priority| SecurityGroupRule {
            direction: Direction::Ingress,
            protocol: IpProtocol::Tcp,
            ports: Some(ports),
            peer_cidr: "0.0.0.0/0".parse().unwrap(),
            policy,
            priority,
        };
        state.security_groups.insert(
            "sg-1".into(),
            SecurityGroup { id: "sg-1".into(), vpc_id: "vpc-1".into(), name: String::new(), rules: vec![rule((80, 80), Policy::Accept, 5), rule((80, 80), Policy::Drop, 5), rule((22, 22), Policy::Accept, 1)], referenced_rules: Vec::new() },
        );
        let e = eni("eni-1", "10.0.0.5", &["sg-1"]);
        state.enis.insert(e.id.clone(), e.clone());
        let s = security_groups(&state, &[WiredEni { port: "pabc".into(), vlan: 0, eni: &e }]);
        let lines: Vec<&str> = s.lines().filter(|l| l.contains("chain") || l.contains(" in_pabc ")).collect();
        let at = |needle: &str| s.find(needle).unwrap_or_else(|| panic!("{needle} missing in\n{s}\n{lines:?}"));
        assert!(at("tcp dport 22-22 accept") < at("tcp dport 80-80 counter name sg_ingress_denied drop"));
        assert!(at("tcp dport 80-80 counter name sg_ingress_denied drop") < at("tcp dport 80-80 accept"));
        assert!(at("tcp dport 80-80 accept") < at("ip saddr @members_sg_1_v4 accept"));
        assert!(s.contains("add element inet berth_sg members_sg_1_v4 { 10.0.0.5, 10.0.0.9 }"));
        assert!(at("iifname \"pabc\" meta mark 0 jump out_pabc") < at("oifname \"pabc\" jump in_pabc"));
    }

    #[test]
    fn the_security_group_table_is_flushed_not_deleted_so_its_drop_counters_keep_counting() {
        let mut state = State::default();
        let a = eni("eni-a", "10.0.0.5", &["sg-1"]);
        let b = eni("eni-b", "10.0.0.6", &["sg-2"]);
        state.enis.insert(a.id.clone(), a.clone());
        state.enis.insert(b.id.clone(), b.clone());
        let both = [WiredEni { port: "pa".into(), vlan: 0, eni: &a }, WiredEni { port: "pb".into(), vlan: 0, eni: &b }];
        let (first, made) = security_groups_over(&state, &both, None);
        assert!(first.contains("delete table inet berth_sg"), "a process's first script starts afresh: {first}");
        assert!(first.contains("add counter inet berth_sg sg_ingress_denied") && first.contains("in_pa counter name sg_ingress_denied drop"), "{first}");
        assert!(made.chains.contains("in_pb") && made.sets.contains("members_sg_2_v4"), "{made:?}");
        state.enis.remove("eni-b");
        let (next, again) = security_groups_over(&state, &both[..1], Some(&made));
        assert!(!next.contains("delete table") && next.contains("flush table inet berth_sg"), "{next}");
        for gone in ["delete chain inet berth_sg in_pb", "delete chain inet berth_sg out_pb", "delete set inet berth_sg members_sg_2_v4"] {
            assert!(next.contains(gone), "{gone} missing:\n{next}");
        }
        assert!(next.contains("flush set inet berth_sg members_sg_1_v4"), "a kept set is refilled: {next}");
        assert!(!again.chains.contains("in_pb"));
    }
}

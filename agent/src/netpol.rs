//! NetworkPolicy on the node: what the scheduler sent ([`PolicyHeld`]: the compiled policies its
//! pods need and which pods they select) and the nftables table each pod gets in its own network
//! namespace ([`pod_script`]), so shared, exclusive and trunk pods are treated alike (an exclusive
//! pod's ENI lives in its namespace, where the node's forward path never sees its traffic).
//!
//! The table `inet berth_policy` of a pod:
//! - replies of connections already allowed (`ct direction reply`) and related ICMP always pass;
//! - a direction no policy selects the pod for passes whole;
//! - a selected direction passes what one of four sets allows, each looked up once per packet
//!   (peer address alone, or peer address . protocol . port, IPv4 and IPv6), then drops and
//!   counts (`ingress_denied`, `egress_denied`). The sets hold disjoint intervals made from every
//!   rule of every policy selecting the pod, so a packet's cost does not grow with the number of
//!   policies or peers. A connection they allowed is marked (conntrack mark) with the rules'
//!   generation and its later packets pass on that one comparison; new rules have a new
//!   generation, so each connection is judged again by its next packet and one a new policy
//!   denies stops.
//!
//! A pod's table is replaced whole in one nft transaction; the tables live in the pods'
//! namespaces, so they stay in force while the agent restarts, until the scheduler's next full
//! update is applied.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::{Command, Stdio};

use berth_proto::cluster::v1 as pb;

pub const TABLE: &str = "berth_policy";

/// The policies a node's pods need and each pod's selection, as the scheduler last said.
#[derive(Debug, Default, Clone)]
pub struct PolicyHeld {
    pub policies: HashMap<String, pb::CompiledPolicy>,
    /// pod → (ingress policies, egress policies).
    pub selections: HashMap<String, (Vec<String>, Vec<String>)>,
    /// The pods the parts taken so far of an update in parts change (see [`PolicyHeld::apply`]).
    pending: Option<Affected>,
}

/// Which pods an update changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Affected {
    /// A full update: every pod of the node.
    All,
    Pods(BTreeSet<String>),
}

impl Affected {
    fn merge(self, other: Affected) -> Affected {
        match (self, other) {
            (Affected::Pods(mut a), Affected::Pods(b)) => {
                a.extend(b);
                Affected::Pods(a)
            }
            _ => Affected::All,
        }
    }
}

impl PolicyHeld {
    /// Takes an update (or one part of it) in. The pods whose tables must be rewritten come with
    /// the last part: `None` while `more` parts follow, so no table is written from half an
    /// update (a full update's first part clears what the pods' selections were).
    pub fn apply(&mut self, u: &pb::PolicyUpdate) -> Option<Affected> {
        let affected = self.apply_part(u);
        let merged = match self.pending.take() {
            Some(before) => before.merge(affected),
            None => affected,
        };
        if u.more {
            self.pending = Some(merged);
            return None;
        }
        Some(merged)
    }

    fn apply_part(&mut self, u: &pb::PolicyUpdate) -> Affected {
        if u.full {
            self.policies.clear();
            self.selections.clear();
        }
        let mut changed_policies: BTreeSet<&str> = BTreeSet::new();
        for p in &u.upsert {
            changed_policies.insert(&p.key);
            self.policies.insert(p.key.clone(), p.clone());
        }
        for k in &u.remove {
            changed_policies.insert(k);
            self.policies.remove(k);
        }
        let mut pods: BTreeSet<String> = BTreeSet::new();
        for s in &u.selections {
            pods.insert(s.pod.clone());
            if s.ingress.is_empty() && s.egress.is_empty() {
                self.selections.remove(&s.pod);
            } else {
                self.selections.insert(s.pod.clone(), (s.ingress.clone(), s.egress.clone()));
            }
        }
        if u.full {
            return Affected::All;
        }
        for (pod, (i, e)) in &self.selections {
            if i.iter().chain(e).any(|k| changed_policies.contains(k.as_str())) {
                pods.insert(pod.clone());
            }
        }
        Affected::Pods(pods)
    }

    /// The policy keys selecting a pod, per direction.
    pub fn selection(&self, pod: &str) -> (&[String], &[String]) {
        self.selections.get(pod).map_or((&[], &[]), |(i, e)| (i.as_slice(), e.as_slice()))
    }
}

/// What one direction of one family allows: whole addresses, and address × protocol × port.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Allowed {
    any: Vec<(u128, u128)>,
    ported: Vec<(u128, u128, u8, u16, u16)>,
}

fn range_of(n: ipnetwork::IpNetwork) -> (u128, u128) {
    match n {
        ipnetwork::IpNetwork::V4(n) => (u32::from(n.network()) as u128, u32::from(n.broadcast()) as u128),
        ipnetwork::IpNetwork::V6(n) => {
            let lo = u128::from(n.network());
            let host_bits = 128 - u32::from(n.prefix());
            let hi = if host_bits == 128 { u128::MAX } else { lo | ((1u128 << host_bits) - 1) };
            (lo, hi)
        }
    }
}

/// `range` less each of `holes`.
fn subtract(range: (u128, u128), holes: &[(u128, u128)]) -> Vec<(u128, u128)> {
    let mut out = vec![range];
    for &(hlo, hhi) in holes {
        let mut next = Vec::new();
        for (lo, hi) in out {
            if hhi < lo || hlo > hi {
                next.push((lo, hi));
                continue;
            }
            if hlo > lo {
                next.push((lo, hlo - 1));
            }
            if hhi < hi {
                next.push((hhi + 1, hi));
            }
        }
        out = next;
    }
    out
}

fn merge(mut ranges: Vec<(u128, u128)>) -> Vec<(u128, u128)> {
    ranges.sort_unstable();
    let mut out: Vec<(u128, u128)> = Vec::new();
    for (lo, hi) in ranges {
        match out.last_mut() {
            Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out
}

fn allowed(rules: &[&pb::CompiledRule], v6: bool) -> Allowed {
    let mut a = Allowed::default();
    for r in rules {
        let mut ranges = Vec::new();
        for c in &r.cidrs {
            let Ok(net) = c.cidr.parse::<ipnetwork::IpNetwork>() else { continue };
            if net.is_ipv6() != v6 {
                continue;
            }
            let holes: Vec<(u128, u128)> = c.except.iter().filter_map(|e| e.parse::<ipnetwork::IpNetwork>().ok()).filter(|e| e.is_ipv6() == v6).map(range_of).collect();
            ranges.extend(subtract(range_of(net), &holes));
        }
        if r.ports.is_empty() {
            a.any.extend(ranges);
            continue;
        }
        for p in &r.ports {
            let (plo, phi) = if p.port == 0 { (0, 65535) } else { (p.port as u16, p.end_port.max(p.port).min(65535) as u16) };
            for &(lo, hi) in &ranges {
                a.ported.push((lo, hi, p.protocol as u8, plo, phi));
            }
        }
    }
    a.any = merge(std::mem::take(&mut a.any));
    a.ported = disjoint(&a.ported);
    a
}

/// A piece of the address space with the port ranges allowed in it.
type Piece = (u128, u128, Vec<(u128, u128)>);

/// The same allowances as disjoint elements (an interval set refuses overlapping ones): the
/// address space cut at every bound, each piece with the union of its ports, equal neighbours
/// joined.
fn disjoint(entries: &[(u128, u128, u8, u16, u16)]) -> Vec<(u128, u128, u8, u16, u16)> {
    let mut by_proto: BTreeMap<u8, Vec<(u128, u128, u16, u16)>> = BTreeMap::new();
    for &(lo, hi, proto, plo, phi) in entries {
        by_proto.entry(proto).or_default().push((lo, hi, plo, phi));
    }
    let mut out = Vec::new();
    for (proto, es) in by_proto {
        let mut cuts: Vec<u128> = es.iter().flat_map(|e| [Some(e.0), e.1.checked_add(1)]).flatten().collect();
        cuts.sort_unstable();
        cuts.dedup();
        let reaches_end = es.iter().any(|e| e.1 == u128::MAX);
        let mut pieces: Vec<(u128, u128)> = cuts.windows(2).map(|w| (w[0], w[1] - 1)).collect();
        if reaches_end && let Some(&last) = cuts.last() {
            pieces.push((last, u128::MAX));
        }
        let mut prev: Option<Piece> = None;
        let emit = |p: Piece, out: &mut Vec<(u128, u128, u8, u16, u16)>| {
            for (plo, phi) in p.2 {
                out.push((p.0, p.1, proto, plo as u16, phi as u16));
            }
        };
        for (lo, hi) in pieces {
            let ports = merge(es.iter().filter(|e| e.0 <= lo && e.1 >= hi).map(|e| (e.2 as u128, e.3 as u128)).collect());
            if ports.is_empty() {
                if let Some(p) = prev.take() {
                    emit(p, &mut out);
                }
                continue;
            }
            match prev.as_mut() {
                Some(p) if p.2 == ports && p.1.checked_add(1) == Some(lo) => p.1 = hi,
                _ => {
                    if let Some(p) = prev.replace((lo, hi, ports)) {
                        emit(p, &mut out);
                    }
                }
            }
        }
        if let Some(p) = prev {
            emit(p, &mut out);
        }
    }
    out
}

fn addr(x: u128, v6: bool) -> String {
    if v6 { Ipv6Addr::from(x).to_string() } else { Ipv4Addr::from(x as u32).to_string() }
}

fn span(lo: u128, hi: u128, v6: bool) -> String {
    if lo == hi { addr(lo, v6) } else { format!("{}-{}", addr(lo, v6), addr(hi, v6)) }
}

fn ports(lo: u16, hi: u16) -> String {
    if lo == hi { lo.to_string() } else { format!("{lo}-{hi}") }
}

/// The script that makes a pod's table what `held` says (replacing any table it had), in one
/// transaction. Packets of a connection the same rules already allowed (its conntrack mark is the
/// rules' generation) pass after one comparison. A pod no policy selects gets the table with its reply rules only, so conntrack
/// follows its connections from the start and a later policy sees them the right way round.
pub fn pod_script(held: &PolicyHeld, pod: &str) -> String {
    let (ingress, egress) = held.selection(pod);
    let rules = |keys: &[String], ingress: bool| -> Vec<&pb::CompiledRule> {
        keys.iter().filter_map(|k| held.policies.get(k)).flat_map(|p| if ingress { &p.ingress_rules } else { &p.egress_rules }).collect()
    };
    let t = format!("inet {TABLE}");
    let mut s = String::new();
    for (dir, keys, hook, is_in) in [("ingress", ingress, "input", true), ("egress", egress, "output", false)] {
        s += &format!("add chain {t} {dir} {{ type filter hook {hook} priority -10; policy accept; }}\n");
        s += &format!("add rule {t} {dir} ct direction reply accept\nadd rule {t} {dir} ct state related accept\n");
        if keys.is_empty() {
            continue;
        }
        // A connection allowed by these very rules is not looked up again.
        s += &format!("add rule {t} {dir} ct mark {GEN} accept\n");
        s += &format!("add rule {t} {dir} meta {} lo accept\n", if is_in { "iif" } else { "oif" });
        // Neighbour discovery keeps IPv6 working on the link; it is never routed.
        s += &format!("add rule {t} {dir} icmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit, nd-router-advert }} accept\n");
        let rs = rules(keys, is_in);
        let (field, short) = if is_in { ("saddr", "in") } else { ("daddr", "out") };
        for (v6, fam, ty) in [(false, "ip", "ipv4_addr"), (true, "ip6", "ipv6_addr")] {
            let a = allowed(&rs, v6);
            let n = if v6 { 6 } else { 4 };
            s += &format!("add set {t} {short}{n}_any {{ type {ty}; flags interval; }}\n");
            s += &format!("add set {t} {short}{n}_ports {{ type {ty} . inet_proto . inet_service; flags interval; }}\n");
            if !a.any.is_empty() {
                let e: Vec<String> = a.any.iter().map(|&(lo, hi)| span(lo, hi, v6)).collect();
                s += &format!("add element {t} {short}{n}_any {{ {} }}\n", e.join(", "));
            }
            if !a.ported.is_empty() {
                let e: Vec<String> = a.ported.iter().map(|&(lo, hi, proto, plo, phi)| format!("{} . {proto} . {}", span(lo, hi, v6), ports(plo, phi))).collect();
                s += &format!("add element {t} {short}{n}_ports {{ {} }}\n", e.join(", "));
            }
            s += &format!("add rule {t} {dir} {fam} {field} @{short}{n}_any ct mark set {GEN} accept\n");
            s += &format!("add rule {t} {dir} {fam} {field} . meta l4proto . th dport @{short}{n}_ports ct mark set {GEN} accept\n");
        }
        s += &format!("add rule {t} {dir} counter name {dir}_denied drop\n");
    }
    // The rules' generation, marked on the connections they allowed: rules that change make a new
    // one, so every connection is judged again by its next packet (a denied one stops there).
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::hash::Hash::hash(&s, &mut h);
    let generation = (std::hash::Hasher::finish(&h) as u32) | 1;
    let head = format!("add table {t}\ndelete table {t}\nadd table {t}\nadd counter {t} ingress_denied\nadd counter {t} egress_denied\n");
    head + &s.replace(GEN, &format!("{generation:#x}"))
}

/// Where a script's generation goes, until it is known.
const GEN: &str = "@GENERATION@";

/// Runs an nft script inside a pod's network namespace (`/run/netns/<name>`): nft is started
/// from a thread inside it, so it inherits that namespace.
pub fn run_in_pod(netns: &str, script: &str) -> Result<(), String> {
    let ns = berth_nodenet::Netns::open_named(netns).map_err(|e| format!("the pod's namespace {netns}: {e}"))?;
    let out = ns
        .run_in(|| -> Result<std::process::Output, String> {
            let mut child = Command::new(berth_cni::datapath::guard::nft_binary())
                .args(["-f", "-"])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| format!("cannot run nft in the pod's namespace {netns} (install nftables): {e}"))?;
            child.stdin.take().expect("piped").write_all(script.as_bytes()).map_err(|e| format!("nft: {e}"))?;
            child.wait_with_output().map_err(|e| format!("nft: {e}"))
        })
        .map_err(|e| format!("the pod's namespace {netns}: {e}"))??;
    if out.status.success() { Ok(()) } else { Err(format!("nft refused the NetworkPolicy table of namespace {netns}: {}", String::from_utf8_lossy(&out.stderr).trim())) }
}

/// The packets each direction's policy dropped in a pod's namespace: (ingress, egress); `None`
/// when no policy selects the pod (it has no table).
pub fn denied_packets(netns: &str) -> Result<Option<(u64, u64)>, String> {
    let ns = berth_nodenet::Netns::open_named(netns).map_err(|e| e.to_string())?;
    let counters = berth_nodenet::nftables::Nftables::open_in_netns(&ns).and_then(|mut nf| nf.counters(berth_nodenet::nftables::Family::Inet, TABLE)).map_err(|e| e.to_string())?;
    let packets = |c: &str| counters.get(c).map_or(0, |n| n.packets);
    Ok((!counters.is_empty()).then(|| (packets("ingress_denied"), packets("egress_denied"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(cidrs: &[(&str, &[&str])], ports: &[(u32, u32, u32)]) -> pb::CompiledRule {
        pb::CompiledRule {
            cidrs: cidrs.iter().map(|(c, e)| pb::CompiledCidr { cidr: c.to_string(), except: e.iter().map(|x| x.to_string()).collect() }).collect(),
            ports: ports.iter().map(|&(protocol, port, end_port)| pb::CompiledPort { protocol, port, end_port }).collect(),
        }
    }

    fn v4(s: &str) -> u128 {
        u32::from(s.parse::<Ipv4Addr>().unwrap()) as u128
    }

    #[test]
    fn exceptions_cut_holes_and_overlaps_become_disjoint() {
        let r = rule(&[("10.0.0.0/24", &["10.0.0.128/25", "10.0.0.5/32"])], &[]);
        let a = allowed(&[&r], false);
        assert_eq!(a.any, vec![(v4("10.0.0.0"), v4("10.0.0.4")), (v4("10.0.0.6"), v4("10.0.0.127"))]);
        let r1 = rule(&[("10.0.0.0/24", &[])], &[(6, 80, 90)]);
        let r2 = rule(&[("10.0.0.7/32", &[])], &[(6, 85, 100), (17, 53, 53)]);
        let a = allowed(&[&r1, &r2], false);
        assert_eq!(
            a.ported,
            vec![
                (v4("10.0.0.0"), v4("10.0.0.6"), 6, 80, 90),
                (v4("10.0.0.7"), v4("10.0.0.7"), 6, 80, 100),
                (v4("10.0.0.8"), v4("10.0.0.255"), 6, 80, 90),
                (v4("10.0.0.7"), v4("10.0.0.7"), 17, 53, 53),
            ]
        );
        let everywhere = allowed(&[&rule(&[("::/0", &[])], &[(6, 0, 0)])], true);
        assert_eq!(everywhere.ported, vec![(0, u128::MAX, 6, 0, 65535)]);
    }

    #[test]
    fn updates_track_which_pods_change() {
        let mut held = PolicyHeld::default();
        let p = pb::CompiledPolicy { key: "a/p".into(), ingress: true, ingress_rules: vec![rule(&[("10.0.0.1/32", &[])], &[])], ..Default::default() };
        let full = pb::PolicyUpdate { full: true, upsert: vec![p.clone()], selections: vec![pb::PodSelection { pod: "a/db".into(), ingress: vec!["a/p".into()], egress: vec![] }], ..Default::default() };
        assert_eq!(held.apply(&full), Some(Affected::All));
        let script = pod_script(&held, "a/db");
        assert!(script.contains("add element inet berth_policy in4_any { 10.0.0.1 }"), "{script}");
        assert!(script.contains("counter name ingress_denied drop") && !script.contains("egress_denied drop"), "{script}");
        let open = pod_script(&held, "a/web");
        assert!(!open.contains("drop"), "an unselected pod is open: {open}");
        let peers = pb::PolicyUpdate { upsert: vec![p], ..Default::default() };
        assert_eq!(held.apply(&peers), Some(Affected::Pods(["a/db".to_string()].into())));
        let gone = pb::PolicyUpdate { remove: vec!["a/p".into()], selections: vec![pb::PodSelection { pod: "a/db".into(), ..Default::default() }], ..Default::default() };
        assert_eq!(held.apply(&gone), Some(Affected::Pods(["a/db".to_string()].into())));
        assert!(!pod_script(&held, "a/db").contains("drop"));
    }

    #[test]
    fn an_update_in_parts_is_enforced_once_whole() {
        let mut held = PolicyHeld::default();
        let p = pb::CompiledPolicy { key: "a/p".into(), ingress: true, ingress_rules: vec![rule(&[("10.0.0.1/32", &[])], &[])], ..Default::default() };
        let first = pb::PolicyUpdate { full: true, upsert: vec![p.clone()], more: true, ..Default::default() };
        assert_eq!(held.apply(&first), None, "nothing is written from the first part");
        let second = pb::PolicyUpdate { selections: vec![pb::PodSelection { pod: "a/db".into(), ingress: vec!["a/p".into()], egress: vec![] }], ..Default::default() };
        assert_eq!(held.apply(&second), Some(Affected::All), "the last part brings the first's full rewrite");
        assert!(pod_script(&held, "a/db").contains("in4_any { 10.0.0.1 }"));
        let a = pb::PolicyUpdate { selections: vec![pb::PodSelection { pod: "a/x".into(), ingress: vec!["a/p".into()], egress: vec![] }], more: true, ..Default::default() };
        let b = pb::PolicyUpdate { selections: vec![pb::PodSelection { pod: "a/y".into(), ingress: vec!["a/p".into()], egress: vec![] }], ..Default::default() };
        assert_eq!(held.apply(&a), None);
        assert_eq!(held.apply(&b), Some(Affected::Pods(["a/x".to_string(), "a/y".to_string()].into())));
    }
}

//! The node's own filter on pod-facing interfaces, `inet berth_pods` in the node's namespace:
//! - every pod interface (host end `bth…`) accepts only the sources its pod was given, IPv4 and
//!   IPv6 (link-local only towards link-local and multicast); anything else is counted as
//!   `spoofed_source` and dropped, before conntrack;
//! - a pod with security groups of its own is reached only through the VPC, where the cloud
//!   applies them: a trunk pod's veth takes only what arrives on its trunk NIC (untagged by the
//!   agent's program), an exclusive pod's leg to the node carries only replies of what the pod
//!   started there, and nothing entering by a leg is forwarded. What tries another way is counted
//!   as `bypassed_security_group` and dropped.
//!
//! Connections a pod opens on its leg get [`LEG_MARK`] as conntrack mark; the node's replies copy
//! it to the packet mark, and the rule `fwmark LEG_MARK lookup POD_TABLE` sends them back on the
//! leg. Everything else the node sends to such a pod follows the main table out through the VPC.
//!
//! The table's skeleton is rewritten whole and atomically on every ADD (idempotent, safe under
//! parallel ADDs); each pod only adds and removes its set elements, so a later per-pod policy
//! chain fits in as one jump per interface.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::IpAddr;
use std::process::{Command, Stdio};

use berth_nodenet::nftables::{self, Family};

use super::DatapathError;

pub const TABLE: &str = "berth_pods";
/// Named counters of [`TABLE`], one per drop reason.
pub const DROP_COUNTERS: [&str; 2] = ["spoofed_source", "bypassed_security_group"];
/// The conntrack/packet mark bit of connections an exclusive pod opened on its leg to the node.
pub const LEG_MARK: u32 = 0x0010_0000;
/// The table of routes into pods with security groups of their own (trunk veths, exclusive legs):
/// reached only by the rules `iif <trunk NIC> to <pod>` and `fwmark LEG_MARK`, never by the main
/// table, so nothing else on the node takes the short way past the VPC.
pub const POD_TABLE: u32 = 250;
/// `fwmark LEG_MARK lookup POD_TABLE`: before every pod rule.
pub const RULE_PRIORITY_LEG_REPLY: u32 = 500;

/// How a pod interface is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    /// A shared pod: its veth is the node's own business (no security group of its own).
    Node,
    /// A trunk pod's veth: only from this VPC-facing interface (the trunk NIC).
    FromVpcBy(String),
    /// An exclusive pod's leg to the node: replies of the pod's own connections only.
    Leg,
}

/// What one pod interface adds to the filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guarded {
    /// The host end of the pod's veth.
    pub iface: String,
    pub sources: Vec<IpAddr>,
    pub reach: Reach,
}

/// The skeleton: table, counters, sets and chains with their fixed rules. Repeating it changes
/// nothing but the rules' (identical) contents; the sets keep their elements.
pub fn skeleton() -> String {
    let t = format!("inet {TABLE}");
    let mut s = format!("add table {t}\n");
    for c in DROP_COUNTERS {
        s += &format!("add counter {t} {c}\n");
    }
    for (set, ty) in [("sources_v4", "ifname . ipv4_addr"), ("sources_v6", "ifname . ipv6_addr"), ("legs", "ifname"), ("vpc_only", "ifname"), ("vpc_in", "ifname . ifname")] {
        s += &format!("add set {t} {set} {{ type {ty}; }}\n");
    }
    let chains = [
        ("sources", "type filter hook prerouting priority -300; policy accept;"),
        ("mark_legs", "type filter hook prerouting priority -150; policy accept;"),
        ("forward", "type filter hook forward priority -10; policy accept;"),
        ("leg_replies", "type route hook output priority -150; policy accept;"),
        ("output", "type filter hook output priority -10; policy accept;"),
    ];
    for (chain, spec) in chains {
        s += &format!("add chain {t} {chain} {{ {spec} }}\nflush chain {t} {chain}\n");
    }
    let rules = [
        "sources meta nfproto ipv4 iifname \"bth*\" iifname . ip saddr != @sources_v4 counter name spoofed_source drop".to_string(),
        // Neighbour discovery and the like stay on the link; they are never routed.
        "sources meta nfproto ipv6 iifname \"bth*\" ip6 saddr { ::, fe80::/10 } ip6 daddr { fe80::/10, ff02::/16 } accept".to_string(),
        "sources meta nfproto ipv6 iifname \"bth*\" iifname . ip6 saddr != @sources_v6 counter name spoofed_source drop".to_string(),
        format!("mark_legs iifname @legs ct state new ct mark set ct mark or {LEG_MARK:#x}"),
        "forward iifname @legs counter name bypassed_security_group drop".to_string(),
        "forward oifname @legs counter name bypassed_security_group drop".to_string(),
        "forward oifname @vpc_only iifname . oifname != @vpc_in counter name bypassed_security_group drop".to_string(),
        format!("leg_replies ct direction reply ct mark and {LEG_MARK:#x} != 0 meta mark set meta mark or {LEG_MARK:#x}"),
        // The node's own neighbour discovery and multicast reports on the link.
        "output meta nfproto ipv6 ip6 daddr ff02::/16 accept".to_string(),
        "output oifname @vpc_only counter name bypassed_security_group drop".to_string(),
        "output oifname @legs ct direction original counter name bypassed_security_group drop".to_string(),
    ];
    for r in rules {
        s += &format!("add rule {t} {r}\n");
    }
    s
}

/// One field of a set element's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field<'a> {
    Name(&'a str),
    Ip(IpAddr),
}

/// The set elements of one interface: (set, key fields).
fn elements(g: &Guarded) -> Vec<(&'static str, Vec<Field<'_>>)> {
    let iface = Field::Name(&g.iface);
    let mut out: Vec<(&'static str, Vec<Field>)> = g
        .sources
        .iter()
        .map(|&ip| (if ip.is_ipv4() { "sources_v4" } else { "sources_v6" }, vec![iface, Field::Ip(ip)]))
        .collect();
    match &g.reach {
        Reach::Node => {}
        Reach::Leg => out.push(("legs", vec![iface])),
        Reach::FromVpcBy(nic) => {
            out.push(("vpc_only", vec![iface]));
            out.push(("vpc_in", vec![Field::Name(nic), iface]));
        }
    }
    out
}

/// An element as nft(8) writes it: `"bth1" . 10.0.0.7`.
fn element_text(fields: &[Field]) -> String {
    let text: Vec<String> = fields
        .iter()
        .map(|f| match f {
            Field::Name(n) => format!("\"{n}\""),
            Field::Ip(ip) => ip.to_string(),
        })
        .collect();
    text.join(" . ")
}

/// The elements as netlink carries them.
fn netlink_elements(g: &Guarded) -> Vec<nftables::Element> {
    elements(g)
        .into_iter()
        .map(|(set, fields)| nftables::Element {
            set: set.to_owned(),
            key: fields.iter().fold(nftables::SetKey::new(), |k, f| match *f {
                Field::Name(n) => k.ifname(n),
                Field::Ip(ip) => k.ip(ip),
            }),
        })
        .collect()
}

/// ADD without the agent's skeleton: the skeleton and this interface's elements, in one
/// transaction.
pub fn admit_script(g: &Guarded) -> String {
    admit_all_script(std::slice::from_ref(g))
}

/// The skeleton and the elements of many interfaces, in one transaction (the agent at start).
pub fn admit_all_script(pods: &[Guarded]) -> String {
    let mut s = skeleton();
    for g in pods {
        for (set, fields) in elements(g) {
            s += &format!("add element inet {TABLE} {set} {{ {} }}\n", element_text(&fields));
        }
    }
    s
}

/// DEL through nft(8): this interface's elements out, each on its own line.
fn forget_lines(g: &Guarded) -> Vec<String> {
    elements(g).into_iter().map(|(set, fields)| format!("delete element inet {TABLE} {set} {{ {} }}\n", element_text(&fields))).collect()
}

/// Where `nft` is: runtimes do not always pass a PATH with the sbin directories.
pub fn nft_binary() -> String {
    for dir in std::env::var("PATH").unwrap_or_default().split(':').chain(["/usr/sbin", "/sbin", "/usr/bin"]) {
        let p = std::path::Path::new(dir).join("nft");
        if p.is_file() {
            return p.display().to_string();
        }
    }
    "nft".into()
}

/// Applies a script atomically in the current namespace (the node's: where the plugin runs).
pub fn run(script: &str) -> Result<(), DatapathError> {
    let mut child = Command::new(nft_binary())
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| DatapathError::Netlink(format!("cannot run nft for the pod interface filter (install nftables): {e}")))?;
    child.stdin.take().expect("piped").write_all(script.as_bytes()).map_err(|e| DatapathError::Netlink(format!("nft: {e}")))?;
    let out = child.wait_with_output().map_err(|e| DatapathError::Netlink(format!("nft: {e}")))?;
    if out.status.success() { Ok(()) } else { Err(DatapathError::Netlink(format!("nft refused the pod interface filter: {}", String::from_utf8_lossy(&out.stderr).trim()))) }
}

/// ADD: this interface's elements, over netlink in one batch, into the skeleton the agent wrote
/// at its start. Where the skeleton is missing (no agent started on this node yet) or netlink
/// fails, nft writes the skeleton and the elements together.
pub fn admit(g: &Guarded) -> Result<(), DatapathError> {
    match nftables::Nftables::open().and_then(|mut nf| nf.add_elements(Family::Inet, TABLE, &netlink_elements(g))) {
        Ok(()) => Ok(()),
        // nft's own error, if it fails too, is the one that says what to fix.
        Err(_) => run(&admit_script(g)),
    }
}

/// Best effort: an element (or the whole table) already gone is fine. One batch when all are
/// there, else one by one.
pub fn forget(g: &Guarded) {
    let elements = netlink_elements(g);
    match nftables::Nftables::open() {
        Ok(mut nf) => {
            if nf.delete_elements(Family::Inet, TABLE, &elements).is_err() {
                for e in elements {
                    let _ = nf.delete_elements(Family::Inet, TABLE, std::slice::from_ref(&e));
                }
            }
        }
        Err(_) => {
            for line in forget_lines(g) {
                let _ = run(&line);
            }
        }
    }
}

/// The packets each drop counter of [`TABLE`] in the current namespace counted; every reason
/// is there (0 when the table does not exist yet: no pod was added).
pub fn read_drop_counts() -> Result<BTreeMap<String, u64>, String> {
    let counters = nftables::Nftables::open().and_then(|mut nf| nf.counters(Family::Inet, TABLE)).map_err(|e| e.to_string())?;
    Ok(DROP_COUNTERS.iter().map(|&c| (c.to_owned(), counters.get(c).map_or(0, |n| n.packets))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trunk_pod_is_reached_only_from_its_trunk_nic() {
        let g = Guarded { iface: "bth1".into(), sources: vec!["10.0.0.7".parse().unwrap(), "fd00::7".parse().unwrap()], reach: Reach::FromVpcBy("eth2".into()) };
        let s = admit_script(&g);
        assert!(s.contains("add element inet berth_pods sources_v4 { \"bth1\" . 10.0.0.7 }"), "{s}");
        assert!(s.contains("add element inet berth_pods sources_v6 { \"bth1\" . fd00::7 }"), "{s}");
        assert!(s.contains("add element inet berth_pods vpc_in { \"eth2\" . \"bth1\" }"), "{s}");
        assert!(!s.contains("delete table"), "the counters survive: {s}");
        let forget = forget_lines(&g);
        assert_eq!(forget.len(), 4);
        assert!(forget.iter().all(|l| l.starts_with("delete element inet berth_pods ")));
    }

    #[test]
    fn netlink_keys_are_the_elements_nft_writes() {
        let g = Guarded { iface: "bth1".into(), sources: vec!["10.0.0.7".parse().unwrap()], reach: Reach::FromVpcBy("eth2".into()) };
        let keys = netlink_elements(&g);
        let sets: Vec<&str> = keys.iter().map(|e| e.set.as_str()).collect();
        assert_eq!(sets, ["sources_v4", "vpc_only", "vpc_in"]);
        assert_eq!(keys[0].key, nftables::SetKey::new().ifname("bth1").ip("10.0.0.7".parse().unwrap()));
        assert_eq!(keys[2].key, nftables::SetKey::new().ifname("eth2").ifname("bth1"), "the trunk NIC first, as the set's type says");
    }

    #[test]
    fn the_skeleton_is_repeatable_and_counts_every_drop() {
        let s = skeleton();
        for chain in ["sources", "mark_legs", "forward", "leg_replies", "output"] {
            assert!(s.contains(&format!("flush chain inet berth_pods {chain}\n")), "{chain} is flushed before its rules: {s}");
        }
        for line in s.lines().filter(|l| l.ends_with(" drop")) {
            assert!(DROP_COUNTERS.iter().any(|c| line.contains(&format!("counter name {c} drop"))), "an uncounted drop: {line}");
        }
        let legs = Guarded { iface: "bth2".into(), sources: vec!["10.0.0.8".parse().unwrap()], reach: Reach::Leg };
        assert!(admit_script(&legs).contains("add element inet berth_pods legs { \"bth2\" }"));
    }
}

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

use std::io::Write as _;
use std::net::IpAddr;
use std::process::{Command, Stdio};

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

fn elements(g: &Guarded) -> Vec<(&'static str, String)> {
    let mut out: Vec<(&'static str, String)> = g
        .sources
        .iter()
        .map(|ip| match ip {
            IpAddr::V4(a) => ("sources_v4", format!("\"{}\" . {a}", g.iface)),
            IpAddr::V6(a) => ("sources_v6", format!("\"{}\" . {a}", g.iface)),
        })
        .collect();
    match &g.reach {
        Reach::Node => {}
        Reach::Leg => out.push(("legs", format!("\"{}\"", g.iface))),
        Reach::FromVpcBy(nic) => {
            out.push(("vpc_only", format!("\"{}\"", g.iface)));
            out.push(("vpc_in", format!("\"{nic}\" . \"{}\"", g.iface)));
        }
    }
    out
}

/// ADD: the skeleton and this interface's elements, in one transaction.
pub fn admit_script(g: &Guarded) -> String {
    let mut s = skeleton();
    for (set, e) in elements(g) {
        s += &format!("add element inet {TABLE} {set} {{ {e} }}\n");
    }
    s
}

/// The skeleton and the elements of many interfaces, in one transaction (the agent at start).
pub fn admit_all_script(pods: &[Guarded]) -> String {
    let mut s = skeleton();
    for g in pods {
        for (set, e) in elements(g) {
            s += &format!("add element inet {TABLE} {set} {{ {e} }}\n");
        }
    }
    s
}

/// DEL: this interface's elements out (each on its own, so that one already gone stops nothing).
pub fn forget_lines(g: &Guarded) -> Vec<String> {
    elements(g).into_iter().map(|(set, e)| format!("delete element inet {TABLE} {set} {{ {e} }}\n")).collect()
}

/// Where `nft` is: runtimes do not always pass a PATH with the sbin directories.
fn nft_binary() -> String {
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

pub fn admit(g: &Guarded) -> Result<(), DatapathError> {
    run(&admit_script(g))
}

/// Best effort: an element (or the whole table) already gone is fine. One transaction when all
/// are there, else one by one.
pub fn forget(g: &Guarded) {
    let lines = forget_lines(g);
    if run(&lines.concat()).is_err() {
        for line in lines {
            let _ = run(&line);
        }
    }
}

/// The packets each drop counter of [`TABLE`] counted, from `nft -j list counters`; every reason
/// is there (0 when the table does not exist yet: no pod was added).
pub fn drop_counts(listing: &str) -> std::collections::BTreeMap<String, u64> {
    let mut counts: std::collections::BTreeMap<String, u64> = DROP_COUNTERS.iter().map(|c| (c.to_string(), 0)).collect();
    let doc: serde_json::Value = serde_json::from_str(listing).unwrap_or_default();
    for c in doc["nftables"].as_array().into_iter().flatten().filter_map(|o| o.get("counter")) {
        if c["family"] == "inet"
            && c["table"] == TABLE
            && let Some(n) = c["name"].as_str().and_then(|n| counts.get_mut(n))
        {
            *n += c["packets"].as_u64().unwrap_or(0);
        }
    }
    counts
}

/// [`drop_counts`] of the current namespace.
pub fn read_drop_counts() -> Result<std::collections::BTreeMap<String, u64>, String> {
    let out = Command::new(nft_binary()).args(["-j", "list", "counters", "table", "inet", TABLE]).stdin(Stdio::null()).output().map_err(|e| format!("cannot run nft: {e}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    match out.status.success() {
        true => Ok(drop_counts(std::str::from_utf8(&out.stdout).unwrap_or(""))),
        // No table yet: nothing was dropped.
        false if stderr.contains("No such file or directory") => Ok(drop_counts("")),
        false => Err(format!("nft -j list counters: {}", stderr.trim())),
    }
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
    fn drop_counts_are_ours_only() {
        let listing = r#"{"nftables": [{"counter": {"family": "inet", "name": "spoofed_source", "table": "berth_pods", "packets": 3}},
            {"counter": {"family": "inet", "name": "spoofed_source", "table": "other", "packets": 9}}]}"#;
        let counts = drop_counts(listing);
        assert_eq!((counts["spoofed_source"], counts["bypassed_security_group"]), (3, 0));
        assert_eq!(drop_counts("")["spoofed_source"], 0);
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

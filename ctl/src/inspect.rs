//! `berthctl inspect`'s judgement, pure: the agent's ledger (`/debug/pool`), the cloud's view of the
//! node's ENIs but the primary (pool ENIs, pods' own exclusive and member ENIs, the trunk), and the
//! node's datapath (in the ledger document) must tell one story.

use std::collections::{BTreeMap, BTreeSet};

use berth_cloud::model::NetworkInterface;
use berth_proto::cluster::v1 as pb;
use serde_json::Value;


/// One pod interface as inspect shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PodRow {
    pub container_id: String,
    pub ifname: String,
    pub ip: String,
    pub eni: String,
    pub in_cloud: bool,
    pub veth: bool,
    pub rules: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Report {
    pub pods: Vec<PodRow>,
    pub idle: usize,
    pub enis: usize,
    pub mismatches: Vec<String>,
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect()).unwrap_or_default()
}

/// Compares; `now` is Unix seconds; an allocation younger than `grace_secs` may still be building
/// its datapath.
pub fn compare(pool: &Value, cloud: &[NetworkInterface], now: i64, grace_secs: i64) -> Report {
    let mut r = Report::default();
    let cloud_ips: BTreeMap<String, BTreeSet<String>> = cloud.iter().map(|e| (e.id.clone(), e.secondary_ips.iter().map(ToString::to_string).collect())).collect();
    let mut pool_ips: BTreeMap<String, String> = BTreeMap::new();
    let enis = pool["enis"].as_array().cloned().unwrap_or_default();
    r.enis = enis.len();
    for e in &enis {
        let id = e["id"].as_str().unwrap_or_default().to_string();
        r.idle += e["idle"].as_array().map_or(0, Vec::len);
        let ips: BTreeSet<String> = strs(&e["ips"]).into_iter().collect();
        match cloud_ips.get(&id) {
            None => r.mismatches.push(format!("the pool has ENI {id}, which the cloud does not show on this instance")),
            Some(c) => {
                for ip in ips.difference(c) {
                    r.mismatches.push(format!("the pool has {ip} on {id}, the cloud does not"));
                }
                for ip in c.difference(&ips) {
                    r.mismatches.push(format!("the cloud assigned {ip} to {id}, the pool does not know it (a leak)"));
                }
            }
        }
        for ip in ips {
            if let Some(other) = pool_ips.insert(ip.clone(), id.clone()) {
                r.mismatches.push(format!("{ip} is on two ENIs of the pool: {other} and {id}"));
            }
        }
    }
    for id in cloud_ips.keys() {
        if !enis.iter().any(|e| e["id"] == id.as_str()) {
            r.mismatches.push(format!("the cloud shows ENI {id} on this instance, the agent does not own it"));
        }
    }
    let rules: Vec<(u64, String)> = pool["datapath"]["rules"].as_array().map(|a| a.iter().map(|x| (x["priority"].as_u64().unwrap_or_default(), x["ip"].as_str().unwrap_or_default().to_string())).collect()).unwrap_or_default();
    let veths: BTreeSet<String> = strs(&pool["datapath"]["host_veths"]).into_iter().collect();
    let mut held: BTreeSet<String> = BTreeSet::new();
    let mut wanted_veths = BTreeSet::new();
    for a in pool["allocations"].as_array().cloned().unwrap_or_default() {
        let ip = a["ip"].as_str().unwrap_or_default().to_string();
        let eni = a["eni_id"].as_str().unwrap_or_default().to_string();
        let veth_name = a["host_veth"].as_str().unwrap_or_default().to_string();
        let young = now - a["created_at"].as_i64().unwrap_or_default() < grace_secs;
        // A pod with its own ENI holds the ENI's primary address; an exclusive pod has a veth to
        // the node and no rules, a trunk pod a veth and only the `to` rule (its frames leave by its
        // VLAN program).
        let exclusive = a["mode"] == "exclusive";
        let trunk = a["mode"] == "trunk";
        let row = PodRow {
            container_id: a["key"]["container_id"].as_str().unwrap_or_default().to_string(),
            ifname: a["key"]["ifname"].as_str().unwrap_or_default().to_string(),
            in_cloud: if exclusive || trunk { cloud.iter().any(|e| e.id == eni && e.primary_ip.to_string() == ip) } else { cloud_ips.get(&eni).is_some_and(|c| c.contains(&ip)) },
            veth: veths.contains(&veth_name),
            rules: exclusive || rules.iter().filter(|(_, rip)| *rip == ip).count() >= if trunk { 1 } else { 2 },
            ip: ip.clone(),
            eni,
        };
        if !held.insert(ip.clone()) {
            r.mismatches.push(format!("{ip} is held by two pods"));
        }
        if !row.in_cloud {
            r.mismatches.push(format!("{}/{} holds {ip}, which the cloud does not assign to {}", row.container_id, row.ifname, row.eni));
        }
        let built = row.veth && row.rules;
        if !young && !built {
            r.mismatches.push(format!("{}/{} holds {ip} but the node lacks its {}", row.container_id, row.ifname, if row.veth { "policy rules" } else { "veth" }));
        }
        wanted_veths.insert(veth_name);
        r.pods.push(row);
    }
    for (priority, ip) in &rules {
        if !held.contains(ip) {
            r.mismatches.push(format!("the node has a rule (priority {priority}) for {ip}, which no pod holds"));
        }
    }
    for v in veths.difference(&wanted_veths) {
        r.mismatches.push(format!("the node has the veth {v}, which belongs to no pod"));
    }
    r
}

/// Why a pod is where it is, for `berthctl inspect --pod`: its phase and node (the scheduler's),
/// the conditions of the nodes that keep it pending, what its node's agent holds for it (`pool`,
/// the agent's `/debug/pool`), and which of its volumes failed.
pub fn explain_pod(status: &pb::PodStatus, nodes: &[pb::NodeState], pool: Option<&Value>) -> Vec<String> {
    let spec = status.spec.clone().unwrap_or_default();
    let mut out = Vec::new();
    let node_state = nodes.iter().find(|n| n.last_report.as_ref().and_then(|r| r.identity.as_ref()).is_some_and(|i| i.instance_id == status.node));
    match pb::PodPhase::try_from(status.phase).unwrap_or(pb::PodPhase::Unspecified) {
        pb::PodPhase::Pending => {
            out.push(format!("Pending: no node can take it now ({})", status.message));
            for n in nodes {
                let Some(r) = &n.last_report else { continue };
                let id = r.identity.as_ref().map(|i| i.instance_id.as_str()).unwrap_or_default();
                for c in r.conditions.iter().filter(|c| c.status) {
                    out.push(format!("node {id}: {} ({})", c.r#type, c.reason));
                }
            }
            out.push("the autoscaler adds a node when a pool's template can take it; otherwise free capacity or change the pod".into());
        }
        pb::PodPhase::Bound => out.push(format!("Bound to {}: its agent is setting it up (volumes, then network, then command){}", status.node, if status.message.is_empty() { String::new() } else { format!(": {}", status.message) })),
        pb::PodPhase::Running => out.push(format!("Running on {} with IP {}", status.node, status.pod_ip)),
        pb::PodPhase::Failed => out.push(format!("Failed on {}: {} — delete the pod and submit it again once the cause is fixed", status.node, status.message)),
        other => out.push(format!("{} on {}: {}", other.as_str_name(), status.node, status.message)),
    }
    if node_state.is_some_and(|n| n.state == "Unknown") {
        out.push(format!("its node {} has not reported within its lease: its pods are being placed elsewhere", status.node));
    }
    if let Some(pool) = pool {
        let held = pool["allocations"].as_array().into_iter().flatten().find(|a| a["pod"]["name"] == spec.name.as_str() && a["pod"]["namespace"] == spec.namespace.as_str());
        match held {
            Some(a) => {
                let ip = a["ip"].as_str().unwrap_or_default();
                out.push(format!("its agent holds {ip} for it on {} ({})", a["eni_id"].as_str().unwrap_or_default(), a["mode"].as_str().unwrap_or_default()));
                if !status.pod_ip.is_empty() && ip != status.pod_ip {
                    out.push(format!("MISMATCH: the scheduler says {} but the agent holds {ip}", status.pod_ip));
                }
            }
            None if !status.pod_ip.is_empty() => out.push(format!("NO IP held for it by the agent of {}: its network is gone; delete the pod and submit it again", status.node)),
            None => out.push(format!("no IP held for it by the agent of {} (yet)", status.node)),
        }
    }
    for v in &spec.volumes {
        let failed = status.message.contains(&format!("volume {:?}", v.name));
        out.push(format!("volume {}{}", crate::views::volume(v), if failed { ": this volume's set-up failed (see above)" } else { "" }));
    }
    out
}

/// Which NetworkPolicies select a pod and what they allow, one line each.
pub fn explain_policies(p: &pb::PodPolicies) -> Vec<String> {
    let mut out = Vec::new();
    let direction = |keys: &[String], dir: &str| if keys.is_empty() { format!("{dir}: open (no NetworkPolicy selects the pod for {dir})") } else { format!("{dir}: only what {} allow{}", keys.join(", "), if keys.len() == 1 { "s" } else { "" }) };
    out.push(direction(&p.ingress_policies, "ingress"));
    out.push(direction(&p.egress_policies, "egress"));
    let rule_text = |r: &pb::CompiledRule| {
        let peers: Vec<String> = r.cidrs.iter().map(|c| if c.except.is_empty() { c.cidr.clone() } else { format!("{} except {}", c.cidr, c.except.join(",")) }).collect();
        let ports: Vec<String> = r
            .ports
            .iter()
            .map(|p| {
                let proto = match p.protocol {
                    17 => "udp",
                    132 => "sctp",
                    _ => "tcp",
                };
                match (p.port, p.end_port) {
                    (0, _) => format!("{proto} any port"),
                    (a, b) if b > a => format!("{proto} {a}-{b}"),
                    (a, _) => format!("{proto} {a}"),
                }
            })
            .collect();
        format!("{} on {}", if peers.is_empty() { "no address yet".to_string() } else { peers.join(" ") }, if ports.is_empty() { "every port".to_string() } else { ports.join(", ") })
    };
    for c in &p.policies {
        for r in &c.ingress_rules {
            out.push(format!("  {} (version {}) allows from {}", c.key, c.version, rule_text(r)));
        }
        for r in &c.egress_rules {
            out.push(format!("  {} (version {}) allows to {}", c.key, c.version, rule_text(r)));
        }
        if c.ingress && c.ingress_rules.is_empty() {
            out.push(format!("  {} (version {}) allows no ingress", c.key, c.version));
        }
        if c.egress && c.egress_rules.is_empty() {
            out.push(format!("  {} (version {}) allows no egress", c.key, c.version));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_pods_explanation_names_what_keeps_it_from_running() {
        use berth_proto::cluster::v1 as pb;
        let spec = pb::PodSpec { namespace: "default".into(), name: "web".into(), volumes: vec![pb::VolumeSpec { name: "data".into(), kind: pb::VolumeKind::Disk as i32, mount_path: "/data".into(), ..Default::default() }], ..Default::default() };
        let full = pb::NodeState {
            state: "Ready".into(),
            last_report: Some(pb::NodeReport { identity: Some(pb::NodeIdentity { instance_id: "i-1".into(), ..Default::default() }), conditions: vec![pb::Condition { r#type: "IpExhausted".into(), status: true, reason: "no idle IP and the pool may not grow".into(), ..Default::default() }], ..Default::default() }),
            ..Default::default()
        };
        let pending = pb::PodStatus { spec: Some(spec.clone()), phase: pb::PodPhase::Pending as i32, message: "0/1 nodes available: 1 node: no shared IP left".into(), ..Default::default() };
        let lines = super::explain_pod(&pending, std::slice::from_ref(&full), None);
        assert!(lines[0].contains("no shared IP left"), "{lines:?}");
        assert!(lines.iter().any(|l| l.contains("node i-1: IpExhausted")), "{lines:?}");

        let failed = pb::PodStatus { spec: Some(spec.clone()), phase: pb::PodPhase::Failed as i32, node: "i-1".into(), message: "volume \"data\": ControllerPublishVolume failed: RESOURCE_EXHAUSTED".into(), ..Default::default() };
        let lines = super::explain_pod(&failed, &[], None);
        assert!(lines.iter().any(|l| l.starts_with("volume data=disk:/data: this volume's set-up failed")), "{lines:?}");

        let running = pb::PodStatus { spec: Some(spec), phase: pb::PodPhase::Running as i32, node: "i-1".into(), pod_ip: "10.0.0.5".into(), ..Default::default() };
        let pool = serde_json::json!({ "allocations": [] });
        assert!(super::explain_pod(&running, &[], Some(&pool)).iter().any(|l| l.starts_with("NO IP held")));
        let pool = serde_json::json!({ "allocations": [{ "ip": "10.0.0.5", "eni_id": "eni-1", "mode": "shared", "pod": { "namespace": "default", "name": "web" } }] });
        assert!(super::explain_pod(&running, &[], Some(&pool)).iter().any(|l| l == "its agent holds 10.0.0.5 for it on eni-1 (shared)"));

        // A disk restored from a snapshot names it.
        let restored = pb::VolumeSpec { name: "db".into(), kind: pb::VolumeKind::Disk as i32, mount_path: "/db".into(), parameters: [("snapshotId".to_string(), "s-7".to_string())].into(), ..Default::default() };
        let st = pb::PodStatus { spec: Some(pb::PodSpec { name: "db".into(), volumes: vec![restored], ..Default::default() }), phase: pb::PodPhase::Running as i32, node: "i-1".into(), ..Default::default() };
        assert!(super::explain_pod(&st, &[], None).iter().any(|l| l == "volume db=disk:/db(snapshot=s-7)"), "{:?}", super::explain_pod(&st, &[], None));
    }

    use super::*;

    fn eni(id: &str, ips: &[&str]) -> NetworkInterface {
        serde_json::from_value(serde_json::json!({
            "id": id, "kind": "Secondary", "status": "InUse", "mac": "02:00:00:00:00:01", "vpc_id": "vpc-1",
            "vswitch_id": "vsw-1", "zone_id": "z", "security_group_ids": [], "instance_id": "i-1", "trunk_eni_id": null,
            "vlan_id": null, "primary_ip": "10.0.0.2", "secondary_ips": ips, "ipv6_addresses": [], "description": ""
        }))
        .unwrap()
    }

    fn pool(rules: &[(u32, &str)], veths: &[&str]) -> Value {
        serde_json::json!({
            "enis": [{"id": "eni-1", "ips": ["10.0.0.5", "10.0.0.6"], "idle": ["10.0.0.6"]}],
            "allocations": [{"key": {"container_id": "c1", "ifname": "eth0"}, "ip": "10.0.0.5", "eni_id": "eni-1", "created_at": 0, "host_veth": "bth1"}],
            "datapath": {"rules": rules.iter().map(|(p, ip)| serde_json::json!({"priority": p, "ip": ip, "table": 1003})).collect::<Vec<_>>(), "host_veths": veths},
        })
    }

    #[test]
    fn a_consistent_node_has_no_mismatch() {
        let r = compare(&pool(&[(512, "10.0.0.5"), (2048, "10.0.0.5")], &["bth1"]), &[eni("eni-1", &["10.0.0.5", "10.0.0.6"])], 100, 10);
        assert!(r.mismatches.is_empty(), "{:?}", r.mismatches);
        assert_eq!((r.idle, r.enis, r.pods.len()), (1, 1, 1));
    }

    #[test]
    fn leaks_missing_rules_and_orphans_are_reported() {
        let r = compare(&pool(&[(512, "10.0.0.5"), (2048, "10.0.0.9")], &["bth1", "bth2"]), &[eni("eni-1", &["10.0.0.5", "10.0.0.6", "10.0.0.7"]), eni("eni-2", &[])], 100, 10);
        let text = r.mismatches.join("\n");
        assert!(text.contains("10.0.0.7 to eni-1"), "{text}");
        assert!(text.contains("lacks its policy rules"), "{text}");
        assert!(text.contains("rule (priority 2048) for 10.0.0.9"), "{text}");
        assert!(text.contains("veth bth2"), "{text}");
        assert!(text.contains("ENI eni-2"), "{text}");
    }
}


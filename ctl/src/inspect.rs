//! `berthctl inspect`'s judgement, pure: the agent's ledger (`/debug/pool`), the cloud's view of the
//! node's ENIs but the primary (pool ENIs, pods' own exclusive and member ENIs, the trunk), and the
//! node's datapath (in the ledger document) must tell one story.

use std::collections::{BTreeMap, BTreeSet};

use berth_cloud::model::NetworkInterface;
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

#[cfg(test)]
mod tests {
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

//! `berth` first in a chain, Debian's reference `portmap` and `bandwidth` plugins after it, as a
//! runtime runs a conflist: each later plugin gets the result so far as `prevResult`, and DEL runs
//! the chain in reverse.

mod common;

use std::path::Path;

use common::{FakeAgent, Invocation, Node, conf, with_prev};
use serde_json::{Value, json};

const PORTMAP: &str = "/usr/lib/cni/portmap";
const BANDWIDTH: &str = "/usr/lib/cni/bandwidth";

/// The plugin config of a later plugin in the same network (Debian's plugins speak up to 1.0.0).
fn chained(plugin: &str, capabilities: Value, runtime_config: Value, prev: &Value) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "pods",
        "type": plugin,
        "capabilities": capabilities,
        "runtimeConfig": runtime_config,
        "prevResult": prev,
    })
}

#[test]
fn portmap_chains_after_berth_and_the_chain_deletes() {
    if !Path::new(PORTMAP).exists() {
        eprintln!("skipped: {PORTMAP} is not installed (apt-get install containernetworking-plugins)");
        return;
    }
    let agent = FakeAgent::start();
    let mut node = Node::new();
    let pod = node.pod();
    let inv = Invocation::new("ADD", "ctr-portmap", &pod);
    let result = node.berth(&inv, &conf("1.0.0", &agent)).result();
    let ip = agent.ip_of("ctr-portmap", "eth0").unwrap();

    let mappings = json!({"portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}]});
    let portmap = node.plugin(PORTMAP, &inv, &chained("portmap", json!({"portMappings": true}), mappings.clone(), &result));
    let final_result = portmap.result();
    assert_eq!(final_result["ips"], result["ips"], "portmap passes berth's result through");
    let nat = node_iptables_nat(&node);
    assert!(nat.contains(&format!("{ip}:80")), "portmap DNATs host port 18080 to the pod's {ip}:80:\n{nat}");

    // DEL in reverse order, each with the final result.
    node.plugin(PORTMAP, &inv.command("DEL"), &chained("portmap", json!({"portMappings": true}), mappings, &final_result)).assert_ok_silent();
    node.berth(&inv.command("DEL"), &with_prev(conf("1.0.0", &agent), &final_result)).assert_ok_silent();
    let nat = node_iptables_nat(&node);
    assert!(!nat.contains(&format!("{ip}:80")), "the mapping is gone:\n{nat}");
    assert_eq!(agent.ip_of("ctr-portmap", "eth0"), None);
}

#[test]
fn bandwidth_chains_after_berth_on_its_host_veth() {
    if !Path::new(BANDWIDTH).exists() {
        eprintln!("skipped: {BANDWIDTH} is not installed (apt-get install containernetworking-plugins)");
        return;
    }
    let agent = FakeAgent::start();
    let mut node = Node::new();
    let pod = node.pod();
    let inv = Invocation::new("ADD", "ctr-bandwidth", &pod);
    let result = node.berth(&inv, &conf("1.0.0", &agent)).result();
    let host_veth = result["interfaces"][0]["name"].as_str().unwrap().to_string();

    let limits = json!({"bandwidth": {"ingressRate": 8_000_000, "ingressBurst": 800_000}});
    let run = node.plugin(BANDWIDTH, &inv, &chained("bandwidth", json!({"bandwidth": true}), limits.clone(), &result));
    let final_result = run.result();
    let tc = common::run_ok(std::process::Command::new("nsenter").arg(format!("--net={}", node.path())).args(["tc", "qdisc", "show", "dev", &host_veth]));
    assert!(tc.contains("tbf"), "bandwidth shaped berth's host veth {host_veth}: {tc}");

    node.plugin(BANDWIDTH, &inv.command("DEL"), &chained("bandwidth", json!({"bandwidth": true}), limits, &final_result)).assert_ok_silent();
    node.berth(&inv.command("DEL"), &with_prev(conf("1.0.0", &agent), &final_result)).assert_ok_silent();
    assert_eq!(agent.ip_of("ctr-bandwidth", "eth0"), None);
}

/// The node namespace's NAT rules as `iptables-save` prints them (nft-backed iptables included).
fn node_iptables_nat(node: &Node) -> String {
    common::run_ok(std::process::Command::new("nsenter").arg(format!("--net={}", node.path())).args(["iptables-save", "-t", "nat"]))
}

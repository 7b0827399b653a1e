//! NetworkPolicy propagation as the scheduler computes it, with 1,000 simulated nodes running 10
//! pods each in 50 namespaces and 1,000 policies (20 per namespace, each selecting one app and
//! allowing two others, one of them from every namespace): the time from a change to the updates
//! of every node it affects, p50/p99 over 50 changes each of
//! 1. a policy applied (replaced with a new peer label),
//! 2. a pod of a selected peer label getting its address (as its node reports it running).
//!
//! The agents' side (loading a pod's table) is measured by `cargo bench -p berth-agent --bench netpol`.
//!
//! `cargo bench -p berth-scheduler --bench netpol`

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use berth_proto::cluster::v1 as pb;
use berth_scheduler::netpol::{PodFacts, PolicyBook};

const NODES: usize = 1000;
const PODS_PER_NODE: usize = 10;
const NAMESPACES: usize = 50;
const POLICIES_PER_NAMESPACE: usize = 20;
const APPS: usize = 40;

fn sel(app: usize) -> pb::LabelSelector {
    pb::LabelSelector { match_labels: [("app".to_string(), format!("a{app}"))].into(), match_expressions: vec![] }
}

fn policy(ns: usize, k: usize, peer: usize) -> pb::NetworkPolicy {
    let rule = pb::NetworkPolicyRule {
        peers: vec![
            pb::NetworkPolicyPeer { pod_selector: Some(sel(peer)), ..Default::default() },
            pb::NetworkPolicyPeer { pod_selector: Some(sel((peer + 1) % APPS)), namespace_selector: Some(pb::LabelSelector::default()), ip_block: None },
        ],
        ports: vec![pb::NetworkPolicyPort { protocol: "TCP".into(), port: 80, end_port: 0 }],
    };
    pb::NetworkPolicy { namespace: format!("ns{ns}"), name: format!("p{k}"), spec: Some(pb::NetworkPolicySpec { pod_selector: Some(sel(k % APPS)), ingress: vec![rule], ..Default::default() }), version: 0 }
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let total = NODES * PODS_PER_NODE;
    let keys: Vec<String> = (0..total).map(|i| format!("ns{}/pod{i}", i % NAMESPACES)).collect();
    let nodes: Vec<String> = (0..NODES).map(|n| format!("i-{n:05}")).collect();
    let labels: Vec<HashMap<String, String>> = (0..total).map(|i| [("app".to_string(), format!("a{}", (i / NAMESPACES) % APPS))].into()).collect();
    let mut ips: Vec<Vec<IpAddr>> = (0..total).map(|i| vec![IpAddr::V4(Ipv4Addr::new(10, (i >> 16) as u8, (i >> 8) as u8, i as u8))]).collect();
    let mut book = PolicyBook::default();
    for ns in 0..NAMESPACES {
        for k in 0..POLICIES_PER_NAMESPACE {
            book.apply(policy(ns, k, (k + 7) % APPS));
        }
    }

    let started = Instant::now();
    let pods: Vec<PodFacts<'_>> = (0..total).map(|i| PodFacts { key: &keys[i], namespace: keys[i].split_once('/').unwrap().0, labels: &labels[i], node: Some(&nodes[i % NODES]), ips: ips[i].clone() }).collect();
    let all: BTreeSet<String> = nodes.iter().cloned().collect();
    let first = book.updates(&pods, &all);
    println!("{NODES} nodes, {total} pods, {} policies: first full updates of every node in {:.0} ms ({} nodes told)", NAMESPACES * POLICIES_PER_NAMESPACE, started.elapsed().as_secs_f64() * 1e3, first.len());
    drop(pods);

    let mut applied = Vec::new();
    let mut told = 0;
    for r in 0..50 {
        let t = Instant::now();
        book.apply(policy(r % NAMESPACES, r % POLICIES_PER_NAMESPACE, (r + 13) % APPS));
        let pods: Vec<PodFacts<'_>> = (0..total).map(|i| PodFacts { key: &keys[i], namespace: keys[i].split_once('/').unwrap().0, labels: &labels[i], node: Some(&nodes[i % NODES]), ips: ips[i].clone() }).collect();
        told += book.updates(&pods, &BTreeSet::new()).len();
        applied.push(t.elapsed().as_secs_f64() * 1e3);
    }
    println!("a policy applied → every affected node's update: p50 {:.0} ms, p99 {:.0} ms ({} nodes told per change on average)", percentile(&mut applied, 0.5), percentile(&mut applied, 0.99), told / 50);

    let mut peer = Vec::new();
    let mut told = 0;
    for r in 0..50 {
        let i = r * 197 % total;
        ips[i] = vec![IpAddr::V4(Ipv4Addr::new(172, 16, r as u8, 1))];
        let t = Instant::now();
        let pods: Vec<PodFacts<'_>> = (0..total).map(|i| PodFacts { key: &keys[i], namespace: keys[i].split_once('/').unwrap().0, labels: &labels[i], node: Some(&nodes[i % NODES]), ips: ips[i].clone() }).collect();
        told += book.updates(&pods, &BTreeSet::new()).len();
        peer.push(t.elapsed().as_secs_f64() * 1e3);
    }
    println!("a peer pod's new address → every affected node's update: p50 {:.0} ms, p99 {:.0} ms ({} nodes told per change on average)", percentile(&mut peer, 0.5), percentile(&mut peer, 0.99), told / 50);
}

//! Simulated nodes and pods shared by the benchmarks: deterministic, generated in-process.

#![allow(dead_code)]

use std::collections::BTreeMap;

use berth_cloud::catalogue;
use berth_proto::cluster::v1 as pb;
use berth_scheduler::autoscaler::{NodePool, PoolVSwitch, template_capacity};
use berth_scheduler::placement::node::condition;

pub const POOLS: [&str; 5] = ["general", "compute", "memory", "batch", "edge"];
pub const TYPES: [&str; 5] = ["ecs.g7.2xlarge", "ecs.c7.2xlarge", "ecs.r7.2xlarge", "ecs.g7.4xlarge", "ecs.g7.xlarge"];
pub const ZONES: [&str; 3] = ["zone-a", "zone-b", "zone-c"];

/// A small deterministic generator (xorshift), so runs compare.
pub struct Rng(pub u64);

impl Rng {
    pub fn step(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.step() % n
    }
}

/// The first report of node `i`: an empty node of its pool's type, 2% of them saying their IP
/// pool cannot grow.
pub fn node_report(i: usize, rng: &mut Rng) -> pb::NodeReport {
    let p = i % POOLS.len();
    let zone = ZONES[(i / POOLS.len()) % ZONES.len()];
    let t = catalogue::instance_type(TYPES[p]).expect("catalogue type");
    let cap = pb::Resources::from(&template_capacity(&t));
    let mut conditions = Vec::new();
    if rng.below(50) == 0 {
        conditions.push(pb::Condition { r#type: condition::IP_EXHAUSTED.into(), status: true, reason: "vSwitch has no free address".into(), since: 0 });
    }
    let mut labels = std::collections::HashMap::new();
    labels.insert("disk".to_string(), if i.is_multiple_of(2) { "ssd".to_string() } else { "hdd".to_string() });
    pb::NodeReport {
        identity: Some(pb::NodeIdentity { instance_id: format!("i-{i:06}"), instance_type: t.id.clone(), zone_id: zone.into(), pool: POOLS[p].into(), vswitch_ids: vec![format!("vsw-{zone}")], labels, taints: Vec::new() }),
        allocatable: Some(cap),
        free: Some(cap),
        conditions,
        sequence: 1,
        sent_at: 0,
        pods: vec![],
    }
}

/// Pod `k` of a mix that exercises every filter: 70% shared, 15% exclusive, 15% trunk; 30% with
/// a disk; 20% with a pool selector, 10% with a label selector, 10% pinned to a vSwitch, 10%
/// spread across zones.
pub fn pod_spec(k: usize, rng: &mut Rng) -> pb::PodSpec {
    let mode = match rng.below(100) {
        0..70 => pb::NetworkMode::Shared,
        70..85 => pb::NetworkMode::Exclusive,
        _ => pb::NetworkMode::Trunk,
    };
    let mut spec = pb::PodSpec {
        namespace: format!("ns{}", k % 20),
        name: format!("pod-{k:06}"),
        cpu_millicores: 50 + rng.below(200),
        memory_bytes: (64 + rng.below(256)) << 20,
        network_mode: mode as i32,
        ..Default::default()
    };
    if rng.below(10) < 3 {
        spec.volumes.push(pb::VolumeSpec { name: "data".into(), kind: pb::VolumeKind::Disk as i32, mount_path: "/data".into(), ..Default::default() });
    }
    let r = rng.below(10);
    if r < 2 {
        spec.pool_selector.insert("pool".into(), POOLS[rng.below(POOLS.len() as u64) as usize].into());
    } else if r < 3 {
        spec.pool_selector.insert("disk".into(), "ssd".into());
    }
    if rng.below(10) == 0 {
        spec.vswitch_id = format!("vsw-{}", ZONES[rng.below(3) as usize]);
    }
    // Every pod belongs to one of 300 apps; 30% carry a rule counting their app's pods: the old
    // zone spread flag, a DoNotSchedule zone spread (maxSkew 1), or anti-affinity per node.
    let app = format!("app{}", rng.below(300));
    spec.labels.insert("app".into(), app.clone());
    let selector = || Some(pb::LabelSelector { match_labels: [("app".to_string(), app.clone())].into(), match_expressions: vec![] });
    match rng.below(10) {
        0 => spec.spread_zones = true,
        1 => spec.topology_spread_constraints.push(pb::TopologySpreadConstraint { max_skew: 1, topology_key: "topology.kubernetes.io/zone".into(), when_unsatisfiable: "DoNotSchedule".into(), label_selector: selector(), min_domains: 0 }),
        2 => spec.pod_anti_affinity = Some(pb::PodAffinity { required: vec![pb::PodAffinityTerm { label_selector: selector(), namespaces: vec![], topology_key: "kubernetes.io/hostname".into() }], preferred: vec![] }),
        _ => {}
    }
    spec
}

/// Whether the spec carries a rule that counts other pods (the benchmarks' constrained share).
pub fn constrained(spec: &pb::PodSpec) -> bool {
    spec.spread_zones || !spec.topology_spread_constraints.is_empty() || spec.pod_anti_affinity.is_some()
}

/// Ten pools (each of `POOLS` on demand, and a spot one beside it), each of the five types of
/// `TYPES`, over the three zones: 150 options for the planner.
pub fn pools(max_nodes: u32) -> Vec<NodePool> {
    POOLS
        .iter()
        .flat_map(|name| [(name.to_string(), Default::default()), (format!("{name}-spot"), berth_scheduler::autoscaler::CapacityType::Spot)])
        .enumerate()
        .map(|(i, (name, capacity))| NodePool {
            name,
            capacity,
            instance_types: TYPES.iter().map(|t| t.to_string()).collect(),
            vswitches: ZONES.iter().map(|z| PoolVSwitch { id: format!("vsw-{z}"), zone: z.to_string() }).collect(),
            security_group_ids: vec![],
            min_nodes: 0,
            max_nodes,
            priority: i as i32,
            labels: BTreeMap::from([("disk".to_string(), "ssd".to_string())]),
            disruption_budget: 1,
            image_id: Some("m-test".into()),
            ..Default::default()
        })
        .collect()
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

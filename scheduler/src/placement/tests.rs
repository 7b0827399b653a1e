use proptest::prelude::*;
use proptest::strategy::Strategy as _;

use super::node::condition;
use super::*;
use super::Strategy;

pub(crate) fn caps(ips: u32, disks: u32) -> pb::Resources {
    pb::Resources { cpu_millicores: 4000, memory_bytes: 8 << 30, pods: 64, shared_ips: ips, eni_slots: 2, member_eni_slots: 4, disk_slots: disks }
}

pub(crate) fn report(id: &str, pool: &str, zone: &str, free: pb::Resources, seq: u64, pods: &[&str]) -> pb::NodeReport {
    pb::NodeReport {
        identity: Some(pb::NodeIdentity { instance_id: id.into(), instance_type: "ecs.g7.xlarge".into(), zone_id: zone.into(), pool: pool.into(), vswitch_ids: vec![format!("vsw-{zone}")], ..Default::default() }),
        allocatable: Some(caps(10, 16)),
        free: Some(free),
        sequence: seq,
        pods: pods
            .iter()
            .map(|k| {
                let (ns, name) = k.split_once('/').unwrap();
                pb::PodReport { namespace: ns.into(), name: name.into(), ..Default::default() }
            })
            .collect(),
        ..Default::default()
    }
}

fn small_pod() -> PodRequest {
    PodRequest::of(&pb::PodSpec { namespace: "d".into(), name: "p".into(), cpu_millicores: 100, memory_bytes: 1 << 20, ..Default::default() })
}

#[test]
fn reservations_hold_the_last_ip_until_a_report_lists_the_pod() {
    let mut p = Placement::new(Strategy::BinPack, 0);
    p.apply_report(&report("i-1", "a", "z1", caps(1, 16), 1, &[]), 0);
    let req = small_pod();
    let Decision::Node(i) = p.choose(&req) else { panic!("one IP is free") };
    p.bind(i, "d/p1", &req);
    assert!(matches!(p.choose(&req), Decision::Unschedulable(m) if m.contains("1 node: no shared IP left")));
    // A report written before the agent heard of the pod still says one IP is free: still held.
    p.apply_report(&report("i-1", "a", "z1", caps(1, 16), 2, &[]), 1);
    assert!(matches!(p.choose(&req), Decision::Unschedulable(_)));
    // The agent runs the pod and counts it: the reservation is acknowledged, 0 free.
    p.apply_report(&report("i-1", "a", "z1", caps(0, 16), 3, &["d/p1"]), 2);
    assert!(p.node(i).unwrap().reservations.is_empty());
    assert!(matches!(p.choose(&req), Decision::Unschedulable(_)));
    // Unbinding a pod that was acknowledged frees nothing until the agent says so.
    p.unbind(i, "d/p1", &req);
    assert!(matches!(p.choose(&req), Decision::Unschedulable(_)));
    p.apply_report(&report("i-1", "a", "z1", caps(1, 16), 4, &[]), 3);
    assert_eq!(p.choose(&req), Decision::Node(i));
}

#[test]
fn a_node_that_cannot_grow_takes_no_pod_of_that_kind() {
    let mut p = Placement::new(Strategy::BinPack, 0);
    let mut r = report("i-1", "a", "z1", caps(5, 16), 1, &[]);
    r.conditions.push(pb::Condition { r#type: condition::IP_EXHAUSTED.into(), status: true, reason: "vSwitch full".into(), since: 0 });
    p.apply_report(&r, 0);
    assert!(matches!(p.choose(&small_pod()), Decision::Unschedulable(m) if m.contains("can add no shared IP (IpExhausted)")));
    let trunk = PodRequest::of(&pb::PodSpec { network_mode: pb::NetworkMode::Trunk as i32, ..Default::default() });
    assert!(matches!(p.choose(&trunk), Decision::Node(_)), "member ENIs are not blocked by an IP condition");
}

#[test]
fn filters_on_disk_slots_selector_and_vswitch() {
    let mut p = Placement::new(Strategy::BinPack, 0);
    let a = p.apply_report(&report("i-a", "a", "z1", caps(10, 0), 1, &[]), 0);
    let b = p.apply_report(&report("i-b", "b", "z2", caps(10, 2), 1, &[]), 0);
    let disk = pb::VolumeSpec { kind: pb::VolumeKind::Disk as i32, ..Default::default() };
    let with_disk = PodRequest::of(&pb::PodSpec { volumes: vec![disk.clone()], ..Default::default() });
    assert_eq!(p.choose(&with_disk), Decision::Node(b));
    let two = PodRequest::of(&pb::PodSpec { volumes: vec![disk.clone(), disk.clone(), disk], ..Default::default() });
    assert!(matches!(p.choose(&two), Decision::Unschedulable(m) if m.contains("no disk slot")));
    let mut sel = pb::PodSpec::default();
    sel.pool_selector.insert("pool".into(), "a".into());
    assert_eq!(p.choose(&PodRequest::of(&sel)), Decision::Node(a));
    sel.pool_selector.insert("pool".into(), "c".into());
    assert!(matches!(p.choose(&PodRequest::of(&sel)), Decision::Unschedulable(m) if m.contains("pool c")));
    let vsw = PodRequest::of(&pb::PodSpec { vswitch_id: "vsw-z2".into(), ..Default::default() });
    assert_eq!(p.choose(&vsw), Decision::Node(b));
    let mut z = pb::PodSpec::default();
    z.pool_selector.insert("zone".into(), "z1".into());
    assert_eq!(p.choose(&PodRequest::of(&z)), Decision::Node(a));
}

#[test]
fn bin_pack_fills_the_fuller_node_and_spread_the_emptier() {
    let mut p = Placement::new(Strategy::BinPack, 0);
    let full = p.apply_report(&report("i-full", "a", "z1", caps(2, 16), 1, &[]), 0);
    let empty = p.apply_report(&report("i-empty", "a", "z1", caps(10, 16), 1, &[]), 0);
    assert_eq!(p.choose(&small_pod()), Decision::Node(full));
    p.strategy = Strategy::Spread;
    assert_eq!(p.choose(&small_pod()), Decision::Node(empty));
}

#[test]
fn zone_spread_puts_a_group_in_every_zone_before_doubling_up() {
    let mut p = Placement::new(Strategy::BinPack, 0);
    for (id, z) in [("i-1", "z1"), ("i-2", "z2"), ("i-3", "z3")] {
        p.apply_report(&report(id, "a", z, caps(10, 16), 1, &[]), 0);
    }
    let mut spec = pb::PodSpec { namespace: "d".into(), spread_zones: true, ..Default::default() };
    spec.labels.insert("app".into(), "web".into());
    let req = PodRequest::of(&spec);
    let mut zones = Vec::new();
    for k in 0..6 {
        let Decision::Node(i) = p.choose(&req) else { panic!() };
        p.bind(i, &format!("d/w{k}"), &req);
        zones.push(p.node(i).unwrap().identity.zone_id.clone());
    }
    for z in ["z1", "z2", "z3"] {
        assert_eq!(zones.iter().filter(|x| *x == z).count(), 2, "{zones:?}");
    }
}

#[test]
fn unknown_and_draining_nodes_take_nothing() {
    let mut p = Placement::new(Strategy::BinPack, 0);
    let i = p.apply_report(&report("i-1", "a", "z1", caps(10, 16), 1, &[]), 0);
    p.set_health(i, Health::Draining);
    assert!(matches!(p.choose(&small_pod()), Decision::Unschedulable(m) if m.contains("1 node: being drained")));
    p.set_health(i, Health::Unknown);
    assert!(matches!(p.choose(&small_pod()), Decision::Unschedulable(_)));
    p.apply_report(&report("i-1", "a", "z1", caps(10, 16), 2, &[]), 1);
    assert_eq!(p.choose(&small_pod()), Decision::Node(i), "a report brings an unknown node back");
}

#[derive(Debug, Clone)]
enum Step {
    Submit { mode: u8, disks: u8 },
    /// The node's agent reports; with `deliver` it has first received every instruction sent
    /// (binds and removals), without it the report is written from what it knew before.
    Report { node: u8, deliver: bool, exhausted: bool },
    Delete { pod: u8 },
}

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    prop_oneof![
        (0u8..3, 0u8..3).prop_map(|(mode, disks)| Step::Submit { mode, disks }),
        (0u8..4, any::<bool>(), any::<bool>()).prop_map(|(node, deliver, exhausted)| Step::Report { node, deliver, exhausted }),
        any::<u8>().prop_map(|pod| Step::Delete { pod }),
    ]
}

proptest! {
    /// Whatever the order of submissions, reports (including ones written before the agent
    /// heard of the latest binds, which still show the last IP free) and deletions: the pods
    /// an agent runs never need more of a resource than its node has, and no pod is bound to a
    /// node whose last report said it cannot grow that resource.
    #[test]
    fn never_two_pods_on_the_last_ip_or_slot(steps in proptest::collection::vec(step(), 1..150)) {
        const IPS: u32 = 3;
        const ENIS: u32 = 1;
        const MEMBERS: u32 = 2;
        const DISKS: u32 = 2;
        let alloc = pb::Resources { cpu_millicores: 100_000, memory_bytes: 1 << 40, pods: 100, shared_ips: IPS, eni_slots: ENIS, member_eni_slots: MEMBERS, disk_slots: DISKS };
        let mut p = Placement::new(Strategy::BinPack, 0);
        // What the scheduler bound: (pod, node index, request).
        let mut bound: Vec<(String, u32, PodRequest)> = Vec::new();
        // What each agent runs (it learns binds and removals only when instructions arrive).
        let mut runs: Vec<Vec<(String, Resources)>> = vec![Vec::new(); 4];
        let mut seq = [0u64; 4];
        let mut n = 0;
        let agent_report = |node: usize, seq: u64, runs: &[(String, Resources)], exhausted: bool| {
            let used = runs.iter().fold(Resources::default(), |a, b| a.saturating_add(&b.1));
            let free = pb::Resources::from(&Resources::from(&alloc).saturating_sub(&used));
            let names: Vec<&str> = runs.iter().map(|r| r.0.as_str()).collect();
            let mut r = report(&format!("i-{node}"), "a", "z1", free, seq, &names);
            r.allocatable = Some(alloc);
            if exhausted {
                r.conditions.push(pb::Condition { r#type: condition::IP_EXHAUSTED.into(), status: true, ..Default::default() });
            }
            r
        };
        let mut idx = Vec::new();
        for node in 0..4 {
            seq[node] += 1;
            idx.push(p.apply_report(&agent_report(node, seq[node], &runs[node], false), 0));
        }
        for s in steps {
            match s {
                Step::Submit { mode, disks } => {
                    let mode = [pb::NetworkMode::Shared, pb::NetworkMode::Exclusive, pb::NetworkMode::Trunk][mode as usize];
                    let vols = (0..disks).map(|_| pb::VolumeSpec { kind: pb::VolumeKind::Disk as i32, ..Default::default() }).collect();
                    let req = PodRequest::of(&pb::PodSpec { network_mode: mode as i32, volumes: vols, ..Default::default() });
                    if let Decision::Node(i) = p.choose(&req) {
                        prop_assert!(!p.node(i).unwrap().blocked.forbids(&req.demand), "bound to a node that cannot grow");
                        let key = format!("d/p{n}");
                        n += 1;
                        p.bind(i, &key, &req);
                        bound.push((key, i, req));
                    }
                }
                Step::Report { node, deliver, exhausted } => {
                    let node = node as usize;
                    if deliver {
                        runs[node] = bound.iter().filter(|b| b.1 == idx[node]).map(|b| (b.0.clone(), b.2.demand)).collect();
                    }
                    seq[node] += 1;
                    p.apply_report(&agent_report(node, seq[node], &runs[node], exhausted), 0);
                }
                Step::Delete { pod } => {
                    if !bound.is_empty() {
                        let (key, i, req) = bound.remove(pod as usize % bound.len());
                        p.unbind(i, &key, &req);
                    }
                }
            }
            // Once every instruction arrives, each agent runs what is bound to it (and the pods
            // it still runs until a removal arrives): that must fit.
            for node in 0..4 {
                let mut pods: Vec<(String, Resources)> = bound.iter().filter(|b| b.1 == idx[node]).map(|b| (b.0.clone(), b.2.demand)).collect();
                for r in &runs[node] {
                    if !pods.iter().any(|p| p.0 == r.0) {
                        pods.push(r.clone());
                    }
                }
                let used = pods.iter().fold(Resources::default(), |a, b| a.saturating_add(&b.1));
                prop_assert!(used.shared_ips <= IPS && used.eni_slots <= ENIS && used.member_eni_slots <= MEMBERS && used.disk_slots <= DISKS, "over-committed node {node}: {used:?}");
            }
        }
    }
}

#[test]
fn selectors_are_matched_per_identity_class_and_a_changed_identity_moves_its_node() {
    let mut p = Placement::new(Strategy::BinPack, 100);
    let labelled = |id: &str, gpu: &str, seq: u64| {
        let mut r = report(id, "a", "z1", caps(10, 16), seq, &[]);
        r.identity.as_mut().unwrap().labels.insert("gpu".into(), gpu.into());
        r
    };
    // Two nodes alike but for their instance IDs share a class; the third differs in a label.
    let (a, b, c) = (p.apply_report(&labelled("i-1", "no", 1), 0), p.apply_report(&labelled("i-2", "no", 1), 0), p.apply_report(&labelled("i-3", "yes", 1), 0));
    assert_eq!(p.node(a).unwrap().class, p.node(b).unwrap().class);
    assert_ne!(p.node(a).unwrap().class, p.node(c).unwrap().class);
    let wants_gpu = PodRequest::of(&pb::PodSpec { namespace: "d".into(), name: "g".into(), cpu_millicores: 100, memory_bytes: 1 << 20, pool_selector: [("gpu".to_string(), "yes".to_string())].into(), ..Default::default() });
    assert_eq!(p.choose(&wants_gpu), Decision::Node(c));
    // i-3 loses its label and i-1 gains it: the next decision follows the reports.
    p.apply_report(&labelled("i-3", "no", 2), 1);
    p.apply_report(&labelled("i-1", "yes", 2), 1);
    assert_eq!(p.choose(&wants_gpu), Decision::Node(a));
    p.apply_report(&labelled("i-1", "no", 3), 2);
    assert!(matches!(p.choose(&wants_gpu), Decision::Unschedulable(m) if m == "0/3 nodes available: 3 nodes: without label gpu=yes"), "no node has the label any more");
}

fn tainted(id: &str, pool: &str, zone: &str, taints: &[(&str, &str, &str)]) -> pb::NodeReport {
    let mut r = report(id, pool, zone, caps(10, 16), 1, &[]);
    r.identity.as_mut().unwrap().taints = taints.iter().map(|(k, v, e)| pb::Taint { key: k.to_string(), value: v.to_string(), effect: e.to_string() }).collect();
    r
}

fn toleration(key: &str, op: &str, value: &str, effect: &str) -> pb::Toleration {
    pb::Toleration { key: key.into(), operator: op.into(), value: value.into(), effect: effect.into(), toleration_seconds: None }
}

fn web(name: &str) -> pb::PodSpec {
    pb::PodSpec { namespace: "d".into(), name: name.into(), cpu_millicores: 100, memory_bytes: 1 << 20, labels: [("app".to_string(), "web".to_string())].into(), ..Default::default() }
}

fn app_selector(app: &str) -> pb::LabelSelector {
    pb::LabelSelector { match_labels: [("app".to_string(), app.to_string())].into(), match_expressions: Vec::new() }
}

#[test]
fn a_taint_keeps_off_pods_that_do_not_tolerate_it_and_its_pool_gives_it_to_every_node() {
    let mut p = Placement::new(Strategy::BinPack, 0);
    let traits = PoolTraits { labels: vec![("gpu".into(), "yes".into())], taints: vec![pb::Taint { key: "dedicated".into(), value: "gpu".into(), effect: "NoSchedule".into() }] };
    p.set_pool_traits([("gpu".to_string(), traits)].into());
    let g = p.apply_report(&report("i-g", "gpu", "z1", caps(10, 16), 1, &[]), 0);
    assert!(matches!(p.choose(&small_pod()), Decision::Unschedulable(m) if m == "0/1 nodes available: 1 node: taint dedicated=gpu:NoSchedule not tolerated"));
    for t in [toleration("dedicated", "Equal", "gpu", "NoSchedule"), toleration("dedicated", "Exists", "", ""), toleration("", "Exists", "", "")] {
        let spec = pb::PodSpec { tolerations: vec![t.clone()], ..web("w") };
        assert_eq!(p.choose(&PodRequest::of(&spec)), Decision::Node(g), "{t:?}");
    }
    let wrong = pb::PodSpec { tolerations: vec![toleration("dedicated", "Equal", "cpu", "NoSchedule")], ..web("w") };
    assert!(matches!(p.choose(&PodRequest::of(&wrong)), Decision::Unschedulable(_)));
    // A PreferNoSchedule taint only lowers the node's score.
    let soft = p.apply_report(&tainted("i-s", "a", "z1", &[("spot", "", "PreferNoSchedule")]), 0);
    let plain = p.apply_report(&report("i-p", "a", "z1", caps(10, 16), 1, &[]), 0);
    p.strategy = Strategy::Spread;
    assert_eq!(p.choose(&small_pod()), Decision::Node(plain));
    p.apply_report(&report("i-p", "a", "z1", caps(0, 16), 2, &[]), 0);
    assert_eq!(p.choose(&small_pod()), Decision::Node(soft));
}

#[test]
fn node_affinity_requires_and_prefers_well_known_labels() {
    let mut p = Placement::new(Strategy::BinPack, 0);
    let z1 = p.apply_report(&report("i-1", "a", "z1", caps(10, 16), 1, &[]), 0);
    let z2 = p.apply_report(&report("i-2", "a", "z2", caps(2, 16), 1, &[]), 0);
    let req = |op: &str, values: &[&str]| pb::NodeSelectorRequirement { key: labels::ZONE.into(), operator: op.into(), values: values.iter().map(|v| v.to_string()).collect() };
    let required = pb::PodSpec { node_affinity: Some(pb::NodeAffinity { required: vec![pb::NodeSelectorTerm { match_expressions: vec![req("NotIn", &["z2"])] }], preferred: vec![] }), ..web("w") };
    assert_eq!(p.choose(&PodRequest::of(&required)), Decision::Node(z1), "bin-pack alone would pick the fuller z2");
    let preferred = pb::PodSpec { node_affinity: Some(pb::NodeAffinity { required: vec![], preferred: vec![pb::PreferredSchedulingTerm { weight: 100, preference: Some(pb::NodeSelectorTerm { match_expressions: vec![req("In", &["z1"])] }) }] }), ..web("w") };
    assert_eq!(p.choose(&PodRequest::of(&preferred)), Decision::Node(z1));
    assert_eq!(p.choose(&PodRequest::of(&web("w"))), Decision::Node(z2));
    let nowhere = pb::PodSpec { node_affinity: Some(pb::NodeAffinity { required: vec![pb::NodeSelectorTerm { match_expressions: vec![req("In", &["z9"])] }], preferred: vec![] }), ..web("w") };
    assert!(matches!(p.choose(&PodRequest::of(&nowhere)), Decision::Unschedulable(m) if m == "0/2 nodes available: 2 nodes: not matching the pod's required node affinity"));
}

#[test]
fn anti_affinity_keeps_one_per_node_both_ways_and_says_so() {
    let mut p = Placement::new(Strategy::BinPack, 0);
    for i in 0..3 {
        p.apply_report(&report(&format!("i-{i}"), "a", "z1", caps(10, 16), 1, &[]), 0);
    }
    let anti = pb::PodAffinity { required: vec![pb::PodAffinityTerm { label_selector: Some(app_selector("web")), namespaces: vec![], topology_key: labels::HOSTNAME.into() }], preferred: vec![] };
    let spec = |n: &str| pb::PodSpec { pod_anti_affinity: Some(anti.clone()), ..web(n) };
    let mut nodes = Vec::new();
    for k in 0..3 {
        let req = PodRequest::of(&spec(&format!("w{k}")));
        let Decision::Node(i) = p.choose(&req) else { panic!("pod {k} fits") };
        p.bind(i, &format!("d/w{k}"), &req);
        nodes.push(i);
    }
    nodes.sort();
    nodes.dedup();
    assert_eq!(nodes.len(), 3, "one per node");
    assert!(matches!(p.choose(&PodRequest::of(&spec("w3"))), Decision::Unschedulable(m) if m.contains("3 nodes: a pod of app=web in its node (pod anti-affinity)")));
    // A web pod without the rule is kept off too: the pods there repel it.
    assert!(matches!(p.choose(&PodRequest::of(&web("plain"))), Decision::Unschedulable(m) if m.contains("anti-affinity to pods of app=web")));
    // Another app goes anywhere; a pod in another namespace is not selected.
    let other = pb::PodSpec { namespace: "e".into(), ..web("x") };
    assert!(matches!(p.choose(&PodRequest::of(&other)), Decision::Node(_)));
    // Removing one frees its node.
    p.unbind(nodes[0], "d/w0", &PodRequest::of(&spec("w0")));
    assert!(matches!(p.choose(&PodRequest::of(&spec("w3"))), Decision::Node(i) if i == nodes[0] || p.node(i).unwrap().pods.is_empty()));
}

#[test]
fn required_affinity_follows_its_peers_and_the_first_pod_goes_anywhere() {
    let mut p = Placement::new(Strategy::Spread, 0);
    for (id, z) in [("i-1", "z1"), ("i-2", "z2")] {
        p.apply_report(&report(id, "a", z, caps(10, 16), 1, &[]), 0);
    }
    let affinity = pb::PodAffinity { required: vec![pb::PodAffinityTerm { label_selector: Some(app_selector("web")), namespaces: vec![], topology_key: labels::ZONE.into() }], preferred: vec![] };
    let spec = |n: &str| pb::PodSpec { pod_affinity: Some(affinity.clone()), ..web(n) };
    let first = PodRequest::of(&spec("w0"));
    let Decision::Node(i) = p.choose(&first) else { panic!("the first of the group goes anywhere") };
    p.bind(i, "d/w0", &first);
    let zone = p.node(i).unwrap().identity.zone_id.clone();
    for k in 1..4 {
        let req = PodRequest::of(&spec(&format!("w{k}")));
        let Decision::Node(j) = p.choose(&req) else { panic!() };
        assert_eq!(p.node(j).unwrap().identity.zone_id, zone, "spread strategy alone would alternate zones");
        p.bind(j, &format!("d/w{k}"), &req);
    }
    let db = pb::PodSpec { labels: [("app".to_string(), "db".to_string())].into(), pod_affinity: Some(pb::PodAffinity { required: vec![pb::PodAffinityTerm { label_selector: Some(app_selector("cache")), namespaces: vec![], topology_key: labels::ZONE.into() }], preferred: vec![] }), ..web("db") };
    assert!(matches!(p.choose(&PodRequest::of(&db)), Decision::Unschedulable(m) if m.contains("no pod of app=cache in its zone (pod affinity)")));
}

#[test]
fn a_hard_spread_constraint_keeps_zones_within_max_skew_and_refuses_past_it() {
    let mut p = Placement::new(Strategy::BinPack, 0);
    // z1 has room for many, z2 for one pod.
    p.apply_report(&report("i-1", "a", "z1", caps(10, 16), 1, &[]), 0);
    p.apply_report(&report("i-2", "a", "z2", caps(1, 16), 1, &[]), 0);
    let c = pb::TopologySpreadConstraint { max_skew: 1, topology_key: labels::ZONE.into(), when_unsatisfiable: String::new(), label_selector: Some(app_selector("web")), min_domains: 0 };
    let spec = |n: &str| pb::PodSpec { topology_spread_constraints: vec![c.clone()], ..web(n) };
    let mut zones = Vec::new();
    for k in 0..4 {
        let req = PodRequest::of(&spec(&format!("w{k}")));
        match p.choose(&req) {
            Decision::Node(i) => {
                p.bind(i, &format!("d/w{k}"), &req);
                zones.push(p.node(i).unwrap().identity.zone_id.clone());
            }
            Decision::Unschedulable(m) => {
                assert_eq!(k, 3, "z1 would hold 3 against z2's 1: {m}");
                assert!(m.contains("1 node: spreading pods of app=web over zones: past maxSkew 1"), "{m}");
                assert!(m.contains("1 node: no shared IP left"), "{m}");
            }
        }
    }
    zones.sort();
    assert_eq!(zones, ["z1", "z1", "z2"]);
    // ScheduleAnyway: the same pod goes to z1 regardless.
    let soft = pb::PodSpec { topology_spread_constraints: vec![pb::TopologySpreadConstraint { when_unsatisfiable: "ScheduleAnyway".into(), ..c.clone() }], ..web("w9") };
    assert!(matches!(p.choose(&PodRequest::of(&soft)), Decision::Node(_)));
    // minDomains 3 with two zones: the emptiest counts as 0, so even z2 is past the skew.
    let min3 = pb::PodSpec { topology_spread_constraints: vec![pb::TopologySpreadConstraint { min_domains: 3, ..c }], ..web("w8") };
    assert!(matches!(p.choose(&PodRequest::of(&min3)), Decision::Unschedulable(_)));
}

#[derive(Debug, Clone)]
struct RandomPod {
    app: u8,
    tolerates: bool,
    tier_a: bool,
    /// (app, by zone)
    anti: Option<(u8, bool)>,
    affinity: Option<u8>,
    /// (by zone, max skew)
    spread: Option<(bool, u8)>,
}

const APPS: [&str; 3] = ["web", "db", "cache"];

fn random_pod() -> impl proptest::strategy::Strategy<Value = RandomPod> {
    (0u8..3, any::<bool>(), any::<bool>(), proptest::option::of((0u8..3, any::<bool>())), proptest::option::of(0u8..3), proptest::option::of((any::<bool>(), 1u8..3)))
        .prop_map(|(app, tolerates, tier_a, anti, affinity, spread)| RandomPod { app, tolerates, tier_a, anti, affinity, spread })
}

fn spec_of(p: &RandomPod, name: &str) -> pb::PodSpec {
    let topology = |zone: bool| if zone { labels::ZONE } else { labels::HOSTNAME }.to_string();
    let term = |app: u8, zone: bool| pb::PodAffinityTerm { label_selector: Some(app_selector(APPS[app as usize])), namespaces: vec![], topology_key: topology(zone) };
    pb::PodSpec {
        labels: [("app".to_string(), APPS[p.app as usize].to_string())].into(),
        tolerations: if p.tolerates { vec![toleration("dedicated", "Exists", "", "")] } else { vec![] },
        node_affinity: p.tier_a.then(|| pb::NodeAffinity { required: vec![pb::NodeSelectorTerm { match_expressions: vec![pb::NodeSelectorRequirement { key: "tier".into(), operator: "In".into(), values: vec!["a".into()] }] }], preferred: vec![] }),
        pod_anti_affinity: p.anti.map(|(app, zone)| pb::PodAffinity { required: vec![term(app, zone)], preferred: vec![] }),
        pod_affinity: p.affinity.map(|app| pb::PodAffinity { required: vec![term(app, true)], preferred: vec![] }),
        topology_spread_constraints: p.spread.map(|(zone, skew)| pb::TopologySpreadConstraint { max_skew: skew.into(), topology_key: topology(zone), when_unsatisfiable: "DoNotSchedule".into(), label_selector: Some(app_selector(APPS[p.app as usize])), min_domains: 0 }).into_iter().collect(),
        ..web(name)
    }
}

proptest! {
    /// Whatever pods come and go, a bind never breaks a required rule, checked against a model
    /// of the bound pods kept apart from placement's own index: the node's NoSchedule taints are
    /// tolerated, its labels match the required node affinity, no pod the new one's
    /// anti-affinity selects shares its domain (nor one whose anti-affinity selects the new
    /// pod), a required affinity finds a peer in its zone (unless it is the first of them),
    /// maxSkew holds over the domains the pod may use, and the node has an IP left.
    #[test]
    fn no_bind_breaks_a_required_rule(tiers in proptest::collection::vec(any::<bool>(), 6), taints in proptest::collection::vec(any::<bool>(), 6), steps in proptest::collection::vec(proptest::option::of(random_pod()), 1..60)) {
        let mut p = Placement::new(Strategy::BinPack, 0);
        let mut nodes = Vec::new();
        for k in 0..6 {
            let zone = format!("z{}", k % 3);
            let mut r = if taints[k] { tainted(&format!("i-{k}"), "a", &zone, &[("dedicated", "x", "NoSchedule")]) } else { report(&format!("i-{k}"), "a", &zone, caps(4, 16), 1, &[]) };
            r.free = Some(caps(4, 16));
            r.identity.as_mut().unwrap().labels.insert("tier".into(), if tiers[k] { "a" } else { "b" }.into());
            nodes.push((p.apply_report(&r, 0), zone, tiers[k], taints[k]));
        }
        // The model: (key, node, its pod).
        let mut bound: Vec<(String, u32, RandomPod)> = Vec::new();
        for (n, step) in steps.into_iter().enumerate() {
            let Some(pod) = step else {
                if !bound.is_empty() {
                    let (key, node, pod) = bound.remove(n % bound.len());
                    p.unbind(node, &key, &PodRequest::of(&spec_of(&pod, "x")));
                }
                continue;
            };
            let req = PodRequest::of(&spec_of(&pod, &format!("p{n}")));
            let Decision::Node(i) = p.choose(&req) else { continue };
            let (_, zone, tier_a, tainted) = nodes.iter().find(|x| x.0 == i).cloned().unwrap();
            let zone_of = |j: u32| nodes.iter().find(|x| x.0 == j).unwrap().1.clone();
            let same = |j: u32, by_zone: bool| if by_zone { zone_of(j) == zone } else { j == i };
            prop_assert!(!tainted || pod.tolerates, "an untolerated taint");
            prop_assert!(!pod.tier_a || tier_a, "required node affinity broken");
            if let Some((app, by_zone)) = pod.anti {
                prop_assert!(!bound.iter().any(|(_, j, q)| q.app == app && same(*j, by_zone)), "anti-affinity broken");
            }
            prop_assert!(!bound.iter().any(|(_, j, q)| q.anti.is_some_and(|(app, by_zone)| app == pod.app && same(*j, by_zone))), "a bound pod's anti-affinity broken");
            if let Some(app) = pod.affinity {
                let first = !bound.iter().any(|(_, _, q)| q.app == app) && app == pod.app;
                prop_assert!(first || bound.iter().any(|(_, j, q)| q.app == app && zone_of(*j) == zone), "affinity broken");
            }
            if let Some((by_zone, skew)) = pod.spread {
                let eligible: Vec<&(u32, String, bool, bool)> = nodes.iter().filter(|x| !pod.tier_a || x.2).collect();
                let count = |d: &(u32, String, bool, bool)| bound.iter().filter(|(_, j, q)| q.app == pod.app && if by_zone { zone_of(*j) == d.1 } else { *j == d.0 }).count();
                let min = eligible.iter().map(|d| count(d)).min().unwrap_or(0);
                let here = nodes.iter().find(|x| x.0 == i).unwrap();
                prop_assert!(count(here) + 1 - min <= skew as usize, "maxSkew {skew} broken: {} against {min}", count(here) + 1);
            }
            prop_assert!(bound.iter().filter(|b| b.1 == i).count() < 4, "more pods than IPs");
            let key = format!("d/p{n}");
            p.bind(i, &key, &req);
            bound.push((key, i, pod));
        }
    }
}

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

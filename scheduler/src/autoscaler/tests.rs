use berth_cloud::catalogue;

use super::*;
use crate::placement::Strategy;
use crate::placement::tests::{caps, report};

fn pool(name: &str, types: &[&str], max: u32, priority: i32) -> NodePool {
    NodePool {
        name: name.into(),
        instance_types: types.iter().map(|s| s.to_string()).collect(),
        vswitches: vec![PoolVSwitch { id: "vsw-z1".into(), zone: "z1".into() }],
        security_group_ids: vec![],
        min_nodes: 0,
        max_nodes: max,
        capacity: CapacityType::OnDemand,
        priority,
        labels: BTreeMap::new(),
        disruption_budget: 1,
        image_id: Some("m-test".into()),
        ..Default::default()
    }
}

/// A g7.large node of the pool asked of the cloud in the zone (vSwitch `vsw-<zone>`).
fn requested(id: &str, pool: &str, zone: &str) -> RequestedNode {
    RequestedNode { instance_id: id.into(), pool: pool.into(), instance_type: "ecs.g7.large".into(), zone_id: zone.into(), vswitch_id: format!("vsw-{zone}"), requested_at_ms: 0 }
}

fn shared_pod() -> PodRequest {
    PodRequest::of(&pb::PodSpec { cpu_millicores: 100, memory_bytes: 64 << 20, ..Default::default() })
}

#[test]
fn template_capacity_counts_ips_and_slots_from_the_catalogue() {
    let t = catalogue::instance_type("ecs.g7.large").unwrap();
    let c = template_capacity(&t);
    assert_eq!((c.shared_ips, c.eni_slots, c.member_eni_slots, c.disk_slots), (10, 2, 6, 16));
    assert_eq!(c.cpu_millicores, 2000);
}

#[test]
fn ip_bound_pods_get_enough_nodes_and_requested_nodes_count() {
    let pods: Vec<PodRequest> = (0..25).map(|_| shared_pod()).collect();
    let refs: Vec<&PodRequest> = pods.iter().collect();
    let pools = [pool("small", &["ecs.g7.large"], 10, 0)];
    // g7.large: 10 shared IPs, CPU would allow 20 such pods: IPs decide, 3 nodes.
    let plan = plan_scale_up(&refs, &pools, &catalogue::instance_type, &PoolNodes::default(), &[], Expander::LeastWaste).into_iter().next().unwrap();
    assert_eq!((plan.count, plan.pods, plan.pool.as_str()), (3, 25, "small"));
    // Two nodes already on their way host 20: one more is enough.
    let plan = plan_scale_up(&refs, &pools, &catalogue::instance_type, &PoolNodes::default(), &[requested("i-1", "small", "z1"), requested("i-2", "small", "z1")], Expander::LeastWaste).into_iter().next().unwrap();
    assert_eq!((plan.count, plan.pods_on_requested), (1, 20));
    // At its maximum the pool plans nothing.
    let full: PoolNodes = std::iter::repeat_n(("small", "z1"), 10).collect();
    assert!(plan_scale_up(&refs, &pools, &catalogue::instance_type, &full, &[], Expander::LeastWaste).is_empty());
}

#[test]
fn disk_slots_decide_when_disks_are_the_scarce_resource() {
    let disk = pb::VolumeSpec { kind: pb::VolumeKind::Disk as i32, ..Default::default() };
    let pods: Vec<PodRequest> = (0..4).map(|_| PodRequest::of(&pb::PodSpec { volumes: vec![disk.clone(); 8], ..Default::default() })).collect();
    let refs: Vec<&PodRequest> = pods.iter().collect();
    let plan = plan_scale_up(&refs, &[pool("p", &["ecs.g7.large"], 10, 0)], &catalogue::instance_type, &PoolNodes::default(), &[], Expander::LeastWaste).into_iter().next().unwrap();
    assert_eq!(plan.count, 2, "16 disk slots per node, 8 disks per pod");
}

#[test]
fn expanders_choose_by_waste_priority_and_price() {
    let pods: Vec<PodRequest> = (0..10).map(|_| shared_pod()).collect();
    let refs: Vec<&PodRequest> = pods.iter().collect();
    let pools = [pool("big", &["ecs.g7.4xlarge"], 10, 0), pool("small", &["ecs.g7.large"], 10, 5)];
    let lw = plan_scale_up(&refs, &pools, &catalogue::instance_type, &PoolNodes::default(), &[], Expander::LeastWaste).into_iter().next().unwrap();
    assert_eq!(lw.pool, "small", "10 pods fill a g7.large's 10 IPs exactly");
    let pools = [pool("big", &["ecs.g7.4xlarge"], 10, 9), pool("small", &["ecs.g7.large"], 10, 5)];
    assert_eq!(plan_scale_up(&refs, &pools, &catalogue::instance_type, &PoolNodes::default(), &[], Expander::Priority).into_iter().next().unwrap().pool, "big");
    let pools = [pool("t6", &["ecs.t6-c1m2.large"], 10, 0), pool("c7", &["ecs.c7.large"], 10, 0)];
    // t6: 5 IPs for 0.08/h → 0.016 per pod; c7: 10 IPs for 0.21/h → 0.021 per pod.
    assert_eq!(plan_scale_up(&refs, &pools, &catalogue::instance_type, &PoolNodes::default(), &[], Expander::Price).into_iter().next().unwrap().pool, "t6");
}

#[test]
fn pods_no_pool_can_host_plan_nothing() {
    let mut spec = pb::PodSpec::default();
    spec.pool_selector.insert("pool".into(), "gpu".into());
    let req = PodRequest::of(&spec);
    assert!(plan_scale_up(&[&req], &[pool("p", &["ecs.g7.large"], 10, 0)], &catalogue::instance_type, &PoolNodes::default(), &[], Expander::LeastWaste).is_empty());
}

#[test]
fn an_idle_node_is_removed_after_the_period_when_its_pods_fit_elsewhere() {
    let mut c = Cluster::new(Strategy::BinPack, 0, 15_000);
    let s = ScaleDownSettings { utilisation_threshold: 0.5, underused_for_ms: 600_000 };
    let pools = [pool("a", &["ecs.g7.large"], 10, 0)];
    c.report(&report("i-1", "a", "z1", caps(4, 16), 1, &[]), 0); // 60% of IPs used
    c.report(&report("i-2", "a", "z1", caps(9, 16), 1, &[]), 0); // 10% used
    c.report(&report("i-3", "a", "z1", caps(10, 16), 1, &[]), 0); // idle
    observe_utilisation(&mut c, s.utilisation_threshold, 0);
    assert!(plan_scale_down(&c, &pools, &s, 599_000).is_empty(), "not yet underused for the period");
    observe_utilisation(&mut c, s.utilisation_threshold, 600_000);
    let plan = plan_scale_down(&c, &pools, &s, 600_000);
    assert_eq!(plan.len(), 1, "disruption budget of 1: {plan:?}");
    assert_ne!(plan[0], "i-1");
    c.drain(&plan[0], 600_000);
    assert!(plan_scale_down(&c, &pools, &s, 600_000).is_empty(), "one node is already being removed");
    // Silent past its lease, then back: still being removed, it takes no pods.
    c.expire_leases(700_000);
    c.report(&report(&plan[0], "a", "z1", caps(10, 16), 2, &[]), 700_001);
    let idx = c.placement.index_of(&plan[0]).unwrap();
    assert_eq!(c.placement.node(idx).unwrap().health, Health::Draining);
}

#[test]
fn the_eni_a_nodes_shared_pool_keeps_does_not_make_an_empty_node_busy() {
    let mut c = Cluster::new(Strategy::BinPack, 0, 15_000);
    let s = ScaleDownSettings { utilisation_threshold: 0.5, underused_for_ms: 0 };
    let pools = [pool("a", &["ecs.g7.large"], 10, 0)];
    // Both secondary ENI slots hold the shared pool's ENIs; no pod runs on either node.
    let pool_enis = pb::Resources { eni_slots: 0, ..caps(10, 16) };
    c.report(&report("i-1", "a", "z1", pool_enis, 1, &[]), 0);
    c.report(&report("i-2", "a", "z1", pool_enis, 1, &[]), 0);
    observe_utilisation(&mut c, s.utilisation_threshold, 0);
    assert_eq!(plan_scale_down(&c, &pools, &s, 1).len(), 1, "an empty node is idle whatever ENIs its pool keeps");
}

#[test]
fn a_node_whose_pods_fit_nowhere_else_stays() {
    let mut c = Cluster::new(Strategy::BinPack, 0, 15_000);
    let s = ScaleDownSettings { utilisation_threshold: 0.5, underused_for_ms: 0 };
    let pools = [pool("a", &["ecs.g7.large"], 10, 0)];
    c.report(&report("i-1", "a", "z1", caps(10, 16), 1, &[]), 0);
    c.report(&report("i-2", "a", "z1", caps(0, 16), 1, &[]), 0); // no IP left anywhere else
    c.submit(pb::PodSpec { namespace: "d".into(), name: "p".into(), ..Default::default() }, 0).unwrap();
    c.schedule(0);
    observe_utilisation(&mut c, 0.5, 0);
    assert!(plan_scale_down(&c, &pools, &s, 1).is_empty());
}

#[test]
fn pools_below_their_minimum_get_nodes_counting_requested_ones() {
    let mut p = pool("base", &["ecs.g7.large"], 10, 0);
    p.min_nodes = 3;
    let pools = [p, pool("other", &["ecs.g7.large"], 10, 0)];
    let plans = plan_minimums(&pools, &catalogue::instance_type, &PoolNodes::from_iter([("base", "z1")]), &[]);
    assert_eq!(plans.len(), 1);
    assert_eq!((plans[0].pool.as_str(), plans[0].count), ("base", 2));
    let plans = plan_minimums(&pools, &catalogue::instance_type, &PoolNodes::from_iter([("base", "z1"), ("base", "z1")]), &[requested("i-9", "base", "z1")]);
    assert!(plans.is_empty());
}

fn two_zone_pool(name: &str, min: u32) -> NodePool {
    let mut p = pool(name, &["ecs.g7.large"], 10, 0);
    p.min_nodes = min;
    p.vswitches = vec![PoolVSwitch { id: "vsw-z1".into(), zone: "z1".into() }, PoolVSwitch { id: "vsw-z2".into(), zone: "z2".into() }];
    p
}

fn counts_by_zone(plans: &[ScaleUpPlan]) -> Vec<(&str, u32)> {
    plans.iter().map(|p| (p.zone_id.as_str(), p.count)).collect()
}

#[test]
fn minimum_nodes_spread_over_the_pools_zones() {
    let pools = [two_zone_pool("base", 3)];
    let plans = plan_minimums(&pools, &catalogue::instance_type, &PoolNodes::default(), &[]);
    assert_eq!(counts_by_zone(&plans), [("z1", 2), ("z2", 1)]);
    assert_eq!(plans[1].vswitch_id, "vsw-z2");
    // Two reporting nodes in z1 and one requested in z1: the two missing go to z2.
    let pools = [two_zone_pool("base", 5)];
    let nodes = PoolNodes::from_iter([("base", "z1"), ("base", "z1"), ("other", "z2")]);
    assert_eq!(counts_by_zone(&plan_minimums(&pools, &catalogue::instance_type, &nodes, &[requested("i-9", "base", "z1")])), [("z2", 2)]);
}

#[test]
fn two_vswitches_of_one_zone_count_as_one_zone() {
    let mut p = two_zone_pool("base", 4);
    p.vswitches.insert(1, PoolVSwitch { id: "vsw-z1b".into(), zone: "z1".into() });
    let plans = plan_minimums(&[p], &catalogue::instance_type, &PoolNodes::default(), &[]);
    let by_zone = |z: &str| plans.iter().filter(|p| p.zone_id == z).map(|p| p.count).sum::<u32>();
    assert_eq!((by_zone("z1"), by_zone("z2")), (2, 2));
}

#[test]
fn scale_up_goes_to_the_zone_with_fewest_nodes_of_the_pool_on_a_tie() {
    let pods: Vec<PodRequest> = (0..5).map(|_| shared_pod()).collect();
    let refs: Vec<&PodRequest> = pods.iter().collect();
    let pools = [two_zone_pool("base", 0)];
    let plan = |nodes: &PoolNodes, requested: &[RequestedNode]| plan_scale_up(&refs, &pools, &catalogue::instance_type, nodes, requested, Expander::LeastWaste).into_iter().next().unwrap();
    assert_eq!(plan(&PoolNodes::default(), &[]).zone_id, "z1");
    assert_eq!(plan(&PoolNodes::from_iter([("base", "z1")]), &[]).zone_id, "z2");
    // A node of another pool in z2 does not count; one requested for this pool in z2 does.
    assert_eq!(plan(&PoolNodes::from_iter([("base", "z1"), ("other", "z2"), ("other", "z2")]), &[]).zone_id, "z2");
    let big: Vec<PodRequest> = (0..15).map(|_| shared_pod()).collect();
    let big_refs: Vec<&PodRequest> = big.iter().collect();
    let p = plan_scale_up(&big_refs, &pools, &catalogue::instance_type, &PoolNodes::default(), &[requested("i-9", "base", "z2")], Expander::LeastWaste).into_iter().next().unwrap();
    assert_eq!((p.zone_id.as_str(), p.pods_on_requested), ("z1", 10));
}

#[test]
fn a_two_zone_pool_scales_up_over_both_zones() {
    // 25 shared pods need three g7.large nodes (10 IPs each); the pool has none yet.
    let pods: Vec<PodRequest> = (0..25).map(|_| shared_pod()).collect();
    let refs: Vec<&PodRequest> = pods.iter().collect();
    let pools = [two_zone_pool("base", 0)];
    let plans = plan_scale_up(&refs, &pools, &catalogue::instance_type, &PoolNodes::from_iter([("base", "z1"), ("base", "z2")]), &[], Expander::LeastWaste);
    assert_eq!(counts_by_zone(&plans), [("z1", 2), ("z2", 1)]);
    // With z1 ahead by one, the new nodes even it out.
    let plans = plan_scale_up(&refs, &pools, &catalogue::instance_type, &PoolNodes::from_iter([("base", "z1")]), &[], Expander::LeastWaste);
    assert_eq!(counts_by_zone(&plans), [("z1", 1), ("z2", 2)]);
    // Pods bound to z1 (a selector) keep every node there.
    let pinned: Vec<PodRequest> = (0..25).map(|_| PodRequest::of(&pb::PodSpec { cpu_millicores: 100, memory_bytes: 64 << 20, pool_selector: [("zone".to_string(), "z1".to_string())].into(), ..Default::default() })).collect();
    let refs: Vec<&PodRequest> = pinned.iter().collect();
    assert_eq!(counts_by_zone(&plan_scale_up(&refs, &pools, &catalogue::instance_type, &PoolNodes::default(), &[], Expander::LeastWaste)), [("z1", 3)]);
}

#[test]
fn template_nodes_carry_the_pools_taints_and_the_reason_no_pool_helps_is_given() {
    let mut gpu = pool("gpu", &["ecs.g7.large"], 4, 0);
    gpu.taints = vec![PoolTaint { key: "dedicated".into(), value: "gpu".into(), effect: "NoSchedule".into() }];
    let small = pool("small", &["ecs.g7.large"], 0, 0);
    let pools = [gpu, small];
    let plain = shared_pod();
    assert!(plan_scale_up(&[&plain], &pools, &catalogue::instance_type, &PoolNodes::default(), &[], Expander::LeastWaste).is_empty(), "no pool the pod could land on");
    let why = why_unhelped(&plain, &pools, &catalogue::instance_type, &PoolNodes::default(), &[]).unwrap();
    assert_eq!(why, "no pool can add a node for it: pool gpu: its nodes would be taint dedicated=gpu:NoSchedule not tolerated; pool small at its maximum of 0 nodes");
    let tolerant = PodRequest::of(&pb::PodSpec { cpu_millicores: 100, memory_bytes: 64 << 20, tolerations: vec![pb::Toleration { key: "dedicated".into(), operator: "Exists".into(), ..Default::default() }], ..Default::default() });
    assert_eq!(plan_scale_up(&[&tolerant], &pools, &catalogue::instance_type, &PoolNodes::default(), &[], Expander::LeastWaste)[0].pool, "gpu");
    assert_eq!(why_unhelped(&tolerant, &pools, &catalogue::instance_type, &PoolNodes::default(), &[]), None);
    let huge = PodRequest::of(&pb::PodSpec { cpu_millicores: 64_000, tolerations: vec![pb::Toleration { operator: "Exists".into(), ..Default::default() }], ..Default::default() });
    assert!(why_unhelped(&huge, &pools, &catalogue::instance_type, &PoolNodes::default(), &[]).unwrap().contains("pool gpu: no instance type large enough (64000 millicores, 0 MiB asked)"));
}

#[test]
fn anti_affinity_per_node_is_simulated_one_pod_per_new_node() {
    let anti = pb::PodAffinity { required: vec![pb::PodAffinityTerm { label_selector: Some(pb::LabelSelector { match_labels: [("app".to_string(), "db".to_string())].into(), match_expressions: vec![] }), namespaces: vec![], topology_key: "kubernetes.io/hostname".into() }], preferred: vec![] };
    let pods: Vec<PodRequest> = (0..3).map(|_| PodRequest::of(&pb::PodSpec { namespace: "d".into(), cpu_millicores: 100, memory_bytes: 64 << 20, labels: [("app".to_string(), "db".to_string())].into(), pod_anti_affinity: Some(anti.clone()), ..Default::default() })).collect();
    let refs: Vec<&PodRequest> = pods.iter().collect();
    let plans = plan_scale_up(&refs, &[pool("p", &["ecs.g7.large"], 10, 0)], &catalogue::instance_type, &PoolNodes::default(), &[], Expander::LeastWaste);
    assert_eq!(counts_by_zone(&plans), [("z1", 3)]);
}

/// Two nodes of pool `a`, each running one `app=web` pod built by `spec`, both underused.
fn two_web_nodes(spec: &dyn Fn(&str) -> pb::PodSpec) -> Cluster {
    // Spread: the second pod goes to the emptier node.
    let mut c = Cluster::new(Strategy::Spread, 0, 15_000);
    c.report(&report("i-1", "a", "z1", caps(10, 16), 1, &[]), 0);
    c.report(&report("i-2", "a", "z1", caps(10, 16), 1, &[]), 0);
    c.submit(spec("w1"), 0).unwrap();
    c.schedule(0);
    c.submit(spec("w2"), 0).unwrap();
    c.schedule(0);
    let on = |id: &str| c.placement.node(c.placement.index_of(id).unwrap()).unwrap().pods.len();
    assert_eq!((on("i-1"), on("i-2")), (1, 1), "one pod per node");
    observe_utilisation(&mut c, 0.5, 0);
    c
}

fn web_pod(name: &str) -> pb::PodSpec {
    pb::PodSpec { namespace: "d".into(), name: name.into(), cpu_millicores: 100, memory_bytes: 1 << 20, labels: [("app".to_string(), "web".to_string())].into(), ..Default::default() }
}

#[test]
fn scale_down_moves_no_pod_that_may_not_be_disrupted_nor_more_than_a_budget_allows_nor_against_anti_affinity() {
    let s = ScaleDownSettings { utilisation_threshold: 0.5, underused_for_ms: 0 };
    let pools = [pool("a", &["ecs.g7.large"], 10, 0)];
    // The base case: one of the two underused nodes goes, its pod fits on the other.
    let c = two_web_nodes(&web_pod);
    assert_eq!(plan_scale_down(&c, &pools, &s, 1).len(), 1);
    // A pod labelled do-not-disrupt keeps its node.
    let c = two_web_nodes(&|n| {
        let mut spec = web_pod(n);
        spec.labels.insert(DO_NOT_DISRUPT.into(), "true".into());
        spec
    });
    assert!(plan_scale_down(&c, &pools, &s, 1).is_empty(), "a do-not-disrupt pod's node was removed");
    // A budget keeping both web pods available lets neither move.
    let mut c = two_web_nodes(&web_pod);
    c.budgets = vec![crate::placement::preemption::DisruptionBudget { namespace: "d".into(), match_labels: [("app".to_string(), "web".to_string())].into(), min_available: Some(2), max_unavailable: None }];
    assert!(plan_scale_down(&c, &pools, &s, 1).is_empty(), "a node was removed against the budget");
    // Pods that repel each other per node cannot be moved together.
    let anti = pb::PodAffinity { required: vec![pb::PodAffinityTerm { label_selector: Some(pb::LabelSelector { match_labels: [("app".to_string(), "web".to_string())].into(), match_expressions: Vec::new() }), namespaces: vec![], topology_key: crate::placement::labels::HOSTNAME.into() }], preferred: vec![] };
    let c = two_web_nodes(&|n| pb::PodSpec { pod_anti_affinity: Some(anti.clone()), ..web_pod(n) });
    assert!(plan_scale_down(&c, &pools, &s, 1).is_empty(), "a pod was moved beside one it repels");
}

#[test]
fn an_underused_node_whose_pods_fit_on_a_cheaper_type_is_replaced_by_one_then_removed() {
    let s = ScaleDownSettings { utilisation_threshold: 0.9, underused_for_ms: 600_000 };
    let pools = [pool("a", &["ecs.g7.xlarge", "ecs.g7.large", "ecs.c7.large"], 10, 0)];
    let big_pod = |labels: &[(&str, &str)]| pb::PodSpec { namespace: "d".into(), name: "p".into(), cpu_millicores: 1000, memory_bytes: 5 << 30, labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), ..Default::default() };
    let one_node = |spec: pb::PodSpec| {
        let mut c = Cluster::new(Strategy::BinPack, 0, 15_000);
        c.report(&report("i-big", "a", "z1", caps(10, 16), 1, &[]), 0); // an ecs.g7.xlarge
        c.submit(spec, 0).unwrap();
        c.schedule(0);
        observe_utilisation(&mut c, s.utilisation_threshold, 0);
        c
    };
    let mut c = one_node(big_pod(&[]));
    assert!(plan_replacements(&c, &pools, &catalogue::instance_type, &[], &s, 599_000).is_none(), "not yet underused for the period");
    assert!(plan_scale_down(&c, &pools, &s, 600_000).is_empty(), "its pod fits on no other node");
    // The cheapest type that holds the pod: 5 GiB rule out the c7.large's 4 GiB.
    let plan = plan_replacements(&c, &pools, &catalogue::instance_type, &[], &s, 600_000).expect("a replacement");
    assert_eq!((plan.instance_type.as_str(), plan.zone_id.as_str(), plan.count), ("ecs.g7.large", "z1", 1));
    // Nothing more while it is on its way, nor once it is up and runs nothing yet.
    assert!(plan_replacements(&c, &pools, &catalogue::instance_type, &[requested("i-new", "a", "z1")], &s, 600_000).is_none());
    c.report(&report("i-new", "a", "z1", caps(10, 16), 1, &[]), 600_000);
    observe_utilisation(&mut c, s.utilisation_threshold, 600_000);
    assert!(plan_replacements(&c, &pools, &catalogue::instance_type, &[], &s, 600_001).is_none(), "a second replacement");
    // Then the dearer node goes: its pod has a home on the new one.
    assert_eq!(plan_scale_down(&c, &pools, &s, 600_001), vec!["i-big".to_string()]);
    // A pod that may not be disrupted, or a pool at its maximum, keeps the node as it is.
    let c = one_node(big_pod(&[(DO_NOT_DISRUPT, "true")]));
    assert!(plan_replacements(&c, &pools, &catalogue::instance_type, &[], &s, 600_000).is_none());
    let c = one_node(big_pod(&[]));
    let full = [pool("a", &["ecs.g7.xlarge", "ecs.g7.large"], 1, 0)];
    assert!(plan_replacements(&c, &full, &catalogue::instance_type, &[], &s, 600_000).is_none());
}

//! The autoscaler end to end on the local cloud: node pools whose instances boot a Berth node
//! image (agent with its pod runner, CSI driver), a real `berth-scheduler` with the autoscaler on.
//! Pods beyond the nodes' IPs (CPU still free) or disk slots stay pending, a new instance comes
//! within seconds and runs them, reachable from the others; no node is ever given more pods than
//! it has IPs; once the pods are gone the extra instance is removed after the idle period.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use berth_cloud::Cloud as _;
use berth_cloud::api::CreateDiskRequest;
use berth_proto::cluster::v1 as pb;
use berth_proto::cluster::v1::scheduler_client::SchedulerClient;
use berth_tests::e2e::{Cluster, cluster, cluster_two_zones, is, name, netns_of, pods, ready_nodes, sleeper};
use berth_tests::guest::GuestLeftovers;
use berth_tests::{is_root, wait_for};
use tonic::transport::Channel;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_beyond_the_nodes_ips_bring_a_new_instance_which_goes_once_they_are_deleted() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    // ecs.t6-c1m2.large: 2 vCPU, 4 GiB, one secondary ENI of 6 IPs, its primary IP the ENI's own:
    // 5 pods by IPs, 20 by CPU.
    let c = cluster("small", "ecs.t6-c1m2.large", 2, 3, 6, ("10.86.0.0/16", "10.86.1.0/24"), &[]).await;
    let _leftovers = GuestLeftovers::new(&c.lc, &c.tag);
    let mut client = c.scheduler.client().await;

    // The pool's minimum: two instances, made by the autoscaler, boot and report.
    let first = wait_for!(c, Duration::from_secs(90), "two nodes of the pool reporting", {
        let ready = ready_nodes(&mut client).await;
        (ready.len() == 2).then_some(ready)
    });
    for r in first.values() {
        let (all, id) = (r.allocatable.unwrap(), r.identity.clone().unwrap());
        assert_eq!((all.shared_ips, id.pool.as_str(), id.instance_type.as_str()), (5, "small", "ecs.t6-c1m2.large"));
    }

    // 12 pods: 10 IPs on the two nodes, 1.2 of 4 vCPUs. Two stay pending, then a third node comes.
    let submitted = Instant::now();
    for i in 0..12 {
        client.submit_pod(pb::SubmitPodRequest { spec: Some(sleeper(&format!("ip-{i:02}"))) }).await.expect("SubmitPod");
    }
    let running = wait_for!(c, Duration::from_secs(120), "12 pods running", {
        let all = pods(&mut client).await;
        assert!(!all.iter().any(|p| is(p, pb::PodPhase::Failed)), "a pod failed: {:?}", all.iter().filter(|p| is(p, pb::PodPhase::Failed)).collect::<Vec<_>>());
        // Never more pods on a node than it has IPs.
        let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
        for p in all.iter().filter(|p| !p.node.is_empty()) {
            *per_node.entry(p.node.as_str()).or_default() += 1;
        }
        assert!(per_node.values().all(|n| *n <= 5), "a node was given more pods than its 5 IPs: {per_node:?}");
        (all.iter().filter(|p| is(p, pb::PodPhase::Running) && !p.pod_ip.is_empty()).count() == 12).then_some(all)
    });
    let scaled_in = submitted.elapsed();
    let ready = ready_nodes(&mut client).await;
    assert_eq!(ready.len(), 3, "one more node: {:?}", ready.keys().collect::<Vec<_>>());
    let new_node = ready.keys().find(|id| !first.contains_key(*id)).expect("the new node").clone();
    assert_eq!(c.instances().await.len(), 3);
    let on_new: Vec<&pb::PodStatus> = running.iter().filter(|p| p.node == new_node).collect();
    assert_eq!(on_new.len(), 2, "the two pods that did not fit run on the new node");
    eprintln!("12 pods running on 3 nodes {scaled_in:?} after submission");
    // The scheduler's metrics tell the same: two scale-ups (the minimum, then the pending pods),
    // three instances made, 12 pods running on 3 ready nodes.
    let metrics = c.scheduler.metrics().await;
    for line in ["berth_scheduler_scale_ups_total{pool=\"small\"} 2", "berth_scheduler_nodes_requested_total{pool=\"small\"} 3", "berth_scheduler_pods{phase=\"Running\"} 12", "berth_scheduler_nodes{state=\"Ready\"} 3"] {
        assert!(metrics.lines().any(|l| l == line), "{line} not in the scheduler's metrics:\n{metrics}");
    }

    // The new node's pods reach pods of the first nodes, through the VPC.
    let from = netns_of(&c, &new_node, &on_new[0].pod_ip);
    for other in running.iter().filter(|p| p.node != new_node).take(2) {
        let ok = std::process::Command::new("ip").args(["netns", "exec", &from, "ping", "-c", "3", "-i", "0.2", "-W", "2", &other.pod_ip]).output().expect("ping").status.success();
        assert!(ok, "{} on {new_node} does not reach {} ({}) on {}", name(on_new[0]), name(other), other.pod_ip, other.node);
    }

    // Delete them all: the extra node goes after the idle period, the pool's minimum stays.
    for p in &running {
        client.delete_pod(pb::DeletePodRequest { namespace: "default".into(), name: name(p) }).await.expect("DeletePod");
    }
    let left = wait_for!(c, Duration::from_secs(90), "the pool back to 2 instances", {
        let ids = c.instances().await;
        (ids.len() == 2).then_some(ids)
    });
    let removed: Vec<&String> = ready.keys().filter(|id| !left.contains(id)).collect();
    assert_eq!(removed.len(), 1, "{removed:?}");
    // The removed instance's guest is stopped and its directory gone.
    wait_for!(c, Duration::from_secs(30), "the removed node's guest gone", (!c.lc.guest_dir(removed[0]).exists()).then_some(()));
    assert!(pods(&mut client).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_wanting_a_disk_where_no_disk_slot_is_left_brings_a_new_instance() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let c = cluster("disks", "ecs.c7.large", 1, 2, 600, ("10.85.0.0/16", "10.85.1.0/24"), &[]).await;
    let _leftovers = GuestLeftovers::new(&c.lc, &c.tag);
    let mut client = c.scheduler.client().await;
    let (first, _) = wait_for!(c, Duration::from_secs(90), "the pool's node reporting", ready_nodes(&mut client).await.into_iter().next());

    // 15 of its 16 disk slots taken by disks Berth does not manage (attached by someone else, seen
    // at the agent's next reconciliation): one slot left for Berth.
    let cloud = c.lc.client();
    for i in 0..15 {
        let req = CreateDiskRequest { zone_id: "local-1a".into(), size_gib: 20, category: "cloud_essd".into(), name: format!("other-{i}"), ..Default::default() };
        let disk = cloud.create_disk(&req).await.expect("CreateDisk");
        cloud.attach_disk(&disk, &first).await.expect("AttachDisk");
    }
    wait_report_disks(&c, &mut client, &first, 1).await;

    // Two pods with a disk each: the first takes the last slot, the second waits for a node.
    let with_disk = |name: &str| {
        let mut spec = sleeper(name);
        spec.volumes = vec![pb::VolumeSpec {
            name: "data".into(),
            kind: pb::VolumeKind::Disk as i32,
            mount_path: "/data".into(),
            read_only: false,
            parameters: [("size".to_string(), "20Gi".to_string()), ("ephemeral".to_string(), "true".to_string())].into(),
        }];
        spec
    };
    client.submit_pod(pb::SubmitPodRequest { spec: Some(with_disk("disk-1")) }).await.unwrap();
    let one = wait_for!(c, Duration::from_secs(60), "disk-1 running", pods(&mut client).await.into_iter().find(|p| is(p, pb::PodPhase::Running)));
    assert_eq!(one.node, first);
    wait_report_disks(&c, &mut client, &first, 0).await;
    client.submit_pod(pb::SubmitPodRequest { spec: Some(with_disk("disk-2")) }).await.unwrap();
    let two = wait_for!(c, Duration::from_secs(120), "disk-2 running", {
        let all = pods(&mut client).await;
        assert!(!all.iter().any(|p| is(p, pb::PodPhase::Failed)), "a disk pod failed rather than wait for a node: {all:?}");
        all.into_iter().find(|p| name(p) == "disk-2" && is(p, pb::PodPhase::Running))
    });
    assert_ne!(two.node, first, "disk-2 runs on a new node");
    assert_eq!(c.instances().await.len(), 2);
    for n in ["disk-1", "disk-2"] {
        client.delete_pod(pb::DeletePodRequest { namespace: "default".into(), name: n.into() }).await.unwrap();
    }
    wait_for!(c, Duration::from_secs(60), "both disk pods gone", pods(&mut client).await.is_empty().then_some(()));
}

/// Waits until the node reports `free` disk slots.
async fn wait_report_disks(c: &Cluster, client: &mut SchedulerClient<Channel>, node: &str, free: u32) {
    wait_for!(c, Duration::from_secs(30), format!("{node} reporting {free} free disk slots"), {
        ready_nodes(client).await.get(node).and_then(|r| r.free).is_some_and(|f| f.disk_slots == free).then_some(())
    });
}

/// A pool over two zones: its minimum puts one node in each, and pods beyond their IPs bring two
/// more, one in each zone (not both in the first), every pod running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_zone_pool_scales_up_across_both_zones() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    // ecs.t6-c1m2.large: 5 pods by IPs each.
    let c = cluster_two_zones("wide", "ecs.t6-c1m2.large", 2, 4, ("10.76.0.0/16", "10.76.1.0/24"), "10.76.2.0/24").await;
    let _leftovers = GuestLeftovers::new(&c.lc, &c.tag);
    let mut client = c.scheduler.client().await;
    let zones_of = |ready: &BTreeMap<String, pb::NodeReport>| {
        let mut z: BTreeMap<String, usize> = BTreeMap::new();
        for r in ready.values() {
            *z.entry(r.identity.clone().unwrap().zone_id).or_default() += 1;
        }
        z
    };
    let first = wait_for!(c, Duration::from_secs(120), "two nodes of the pool reporting", {
        let ready = ready_nodes(&mut client).await;
        (ready.len() == 2).then_some(ready)
    });
    assert_eq!(zones_of(&first), BTreeMap::from([("local-1a".to_string(), 1), ("local-1b".to_string(), 1)]), "the minimum is spread");
    // 20 pods: 10 fit, 10 need two more nodes.
    for i in 0..20 {
        client.submit_pod(pb::SubmitPodRequest { spec: Some(sleeper(&format!("wide-{i:02}"))) }).await.expect("SubmitPod");
    }
    wait_for!(c, Duration::from_secs(180), "20 pods running", {
        let all = pods(&mut client).await;
        assert!(!all.iter().any(|p| is(p, pb::PodPhase::Failed)), "a pod failed");
        (all.iter().filter(|p| is(p, pb::PodPhase::Running)).count() == 20).then_some(())
    });
    let ready = ready_nodes(&mut client).await;
    assert_eq!(zones_of(&ready), BTreeMap::from([("local-1a".to_string(), 2), ("local-1b".to_string(), 2)]), "the two new nodes went one to each zone: {:?}", ready.keys().collect::<Vec<_>>());
    for p in pods(&mut client).await {
        client.delete_pod(pb::DeletePodRequest { namespace: "default".into(), name: name(&p) }).await.expect("DeletePod");
    }
}

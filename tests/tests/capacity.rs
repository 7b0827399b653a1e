//! Capacity reports: an agent configured with the scheduler's endpoint streams its node's
//! allocatable and free counts (shared IPs, ENI slots, member-ENI slots, disk slots, CPU, memory),
//! and the scheduler's node table follows what pods take.

use std::time::{Duration, Instant};

use berth_proto::cluster::v1 as pb;
use berth_tests::agent::AgentProcess;
use berth_tests::pods::{add_pod, del_pod};
use berth_tests::scheduler::{RunnerLeftovers, Scheduler, wait_report};
use berth_tests::{LocalCloud, LocalCloudOptions, SampleNet, is_root};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_reports_its_nodes_capacity_and_the_counts_follow_its_pods() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let lc = LocalCloud::start(LocalCloudOptions::default());
    let cloud = lc.client();
    let net = SampleNet::create(&cloud, "10.92.0.0/16", "10.92.1.0/24").await;
    let node = net.run(&cloud, "ecs.c7.xlarge", &net.sg).await;
    let scheduler = Scheduler::start(&[]);
    let url = scheduler.url.clone();
    let agent = AgentProcess::start(&lc, &node, &["--min-idle-ips", "2", "--max-idle-ips", "4", "--trunk", "true", "--scheduler-endpoint", &url, "--report-secs", "1", "--node-pool", "small"]);
    let mut client = scheduler.client().await;

    // ecs.c7.xlarge: 4 vCPU, 8 GiB, 4 ENIs of 15 IPv4 (one secondary ENI slot goes to the trunk,
    // so two shared ENIs of 14 pod IPs), 12 member ENIs, 16 disks.
    let r = wait_report(&mut client, &node, "a report", |r| r.allocatable.is_some()).await;
    let id = r.identity.clone().unwrap();
    assert_eq!((id.instance_type.as_str(), id.pool.as_str(), id.zone_id.as_str()), ("ecs.c7.xlarge", "small", "local-1a"));
    let all = r.allocatable.unwrap();
    assert_eq!((all.cpu_millicores, all.memory_bytes), (4000, 8 * 1024 * 1024 * 1024));
    assert_eq!((all.shared_ips, all.eni_slots, all.member_eni_slots, all.disk_slots), (28, 3, 12, 16));
    let free = r.free.unwrap();
    assert_eq!((free.shared_ips, free.member_eni_slots, free.disk_slots), (28, 12, 16));
    assert!(r.conditions.is_empty(), "{:?}", r.conditions);

    // A trunk pod and a shared pod: one member slot and one IP fewer in the next reports.
    let (trunk, shared) = tokio::task::block_in_place(|| (add_pod(&agent, "cap-t", "BERTH_NETWORK_MODE=trunk"), add_pod(&agent, "cap-s", "")));
    let r = wait_report(&mut client, &node, "the pods' counts", |r| r.free.as_ref().is_some_and(|f| f.member_eni_slots == 11 && f.shared_ips == 27)).await;
    assert_eq!(r.free.unwrap().disk_slots, 16);
    tokio::task::block_in_place(|| {
        del_pod(&agent, &trunk);
        del_pod(&agent, &shared);
    });
    wait_report(&mut client, &node, "the freed counts", |r| r.free.as_ref().is_some_and(|f| f.member_eni_slots == 12 && f.shared_ips == 28)).await;
}

/// The pod runner: a pod submitted to the scheduler is bound to the reporting node, whose agent
/// makes its namespace, runs the conflist and its command, and reports it Running with its IP;
/// deleting it takes everything away again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submitted_pod_runs_on_the_node_that_reports_and_goes_when_deleted() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let lc = LocalCloud::start(LocalCloudOptions::default());
    let cloud = lc.client();
    let net = SampleNet::create(&cloud, "10.91.0.0/16", "10.91.1.0/24").await;
    net.open_to(&cloud, "10.0.0.0/8").await;
    let node = net.run(&cloud, "ecs.c7.xlarge", &net.sg).await;
    let scheduler = Scheduler::start(&[]);
    let url = scheduler.url.clone();
    let prefix = berth_tests::unique("brp");
    let _leftovers = RunnerLeftovers(vec![prefix.clone()]);
    let cni_path = berth_tests::cni::cni_path();
    let agent = AgentProcess::start(&lc, &node, &["--min-idle-ips", "2", "--max-idle-ips", "4", "--scheduler-endpoint", &url, "--report-secs", "1", "--pod-runner", "true", "--runner-cni-path", &cni_path, "--runner-netns-prefix", &prefix]);
    let mut client = scheduler.client().await;
    wait_report(&mut client, &node, "a report", |r| r.allocatable.is_some()).await;
    let spec = pb::PodSpec { namespace: "default".into(), name: "web".into(), cpu_millicores: 500, memory_bytes: 256 << 20, command: vec!["sleep".into(), "300".into()], ..Default::default() };
    client.submit_pod(pb::SubmitPodRequest { spec: Some(spec) }).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let st = client.get_pod(pb::GetPodRequest { namespace: "default".into(), name: "web".into() }).await.unwrap().into_inner();
        if st.phase == pb::PodPhase::Running as i32 && !st.pod_ip.is_empty() {
            break st;
        }
        assert!(Instant::now() < deadline, "the pod never ran: {st:?}\n{}", agent.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(status.node, node);
    // The pod is on the VPC: a pod made beside it reaches it, and the node's report counts it.
    let peer = tokio::task::block_in_place(|| add_pod(&agent, "peer", ""));
    assert!(berth_tests::pods::ping(&peer.path(), status.pod_ip.parse().unwrap()), "peer → the runner's pod {}", status.pod_ip);
    // The node's reports list it (the scheduler keeps the counts, not the list): it holds its CPU.
    wait_report(&mut client, &node, "the pod's CPU held", |r| r.free.is_some_and(|f| f.cpu_millicores == 4000 - 500)).await;
    let pool = agent.pool().await;
    assert!(pool["allocations"].as_array().unwrap().iter().any(|a| a["ip"] == status.pod_ip.as_str()), "the agent allocated the pod's IP");

    client.delete_pod(pb::DeletePodRequest { namespace: "default".into(), name: "web".into() }).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let pool = agent.pool().await;
        let held = pool["allocations"].as_array().unwrap().iter().any(|a| a["ip"] == status.pod_ip.as_str());
        let netns_left = std::fs::read_dir("/run/netns").unwrap().flatten().any(|e| e.file_name().to_string_lossy().starts_with(&prefix));
        if !held && !netns_left {
            break;
        }
        assert!(Instant::now() < deadline, "the deleted pod left its IP ({held}) or namespace ({netns_left})\n{}", agent.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::task::block_in_place(|| del_pod(&agent, &peer));
}

/// A node whose agent dies is found out by its lease, and its pods run again on another node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_pods_are_rescheduled_on_another_node() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let lc = LocalCloud::start(LocalCloudOptions::default());
    let cloud = lc.client();
    let net = SampleNet::create(&cloud, "10.90.0.0/16", "10.90.1.0/24").await;
    let nodes = [net.run(&cloud, "ecs.c7.xlarge", &net.sg).await, net.run(&cloud, "ecs.c7.xlarge", &net.sg).await];
    let scheduler = Scheduler::start(&["--lease-secs", "3"]);
    let url = scheduler.url.clone();
    let cni_path = berth_tests::cni::cni_path();
    let prefixes = [berth_tests::unique("brd"), berth_tests::unique("brd")];
    let _leftovers = RunnerLeftovers(prefixes.to_vec());
    let mut agents: Vec<AgentProcess> = nodes
        .iter()
        .zip(&prefixes)
        .map(|(n, prefix)| AgentProcess::start(&lc, n, &["--min-idle-ips", "1", "--max-idle-ips", "2", "--scheduler-endpoint", &url, "--report-secs", "1", "--pod-runner", "true", "--runner-cni-path", &cni_path, "--runner-netns-prefix", prefix]))
        .collect();
    let mut client = scheduler.client().await;
    for n in &nodes {
        wait_report(&mut client, n, "a report", |r| r.allocatable.is_some()).await;
    }
    let spec = pb::PodSpec { namespace: "default".into(), name: "moves".into(), cpu_millicores: 100, command: vec!["sleep".into(), "300".into()], ..Default::default() };
    client.submit_pod(pb::SubmitPodRequest { spec: Some(spec) }).await.unwrap();
    let running_on = |exclude: Option<String>| {
        let mut client = client.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let st = client.get_pod(pb::GetPodRequest { namespace: "default".into(), name: "moves".into() }).await.unwrap().into_inner();
                if st.phase == pb::PodPhase::Running as i32 && !st.pod_ip.is_empty() && Some(&st.node) != exclude.as_ref() {
                    return st;
                }
                assert!(Instant::now() < deadline, "the pod does not run (elsewhere than {exclude:?}): {st:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let first = running_on(None).await;
    let dead = nodes.iter().position(|n| *n == first.node).expect("on one of the nodes");
    agents[dead].kill9();
    let second = running_on(Some(first.node.clone())).await;
    assert_eq!(second.node, nodes[1 - dead], "rescheduled on the live node");
    let states = berth_tests::scheduler::list_nodes(&mut client).await.unwrap();
    let dead_state = states.iter().find(|s| s.last_report.as_ref().and_then(|r| r.identity.as_ref()).is_some_and(|i| i.instance_id == first.node)).map(|s| s.state.clone());
    assert_eq!(dead_state.as_deref(), Some("Unknown"), "the silent node is Unknown");
    // The live node removes it on delete; the dead node's namespace and command are left to the
    // guard (its agent is gone, and a restarted runner only undoes pods the scheduler gives it).
    client.delete_pod(pb::DeletePodRequest { namespace: "default".into(), name: "moves".into() }).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_dir("/run/netns").unwrap().flatten().any(|e| e.file_name().to_string_lossy().starts_with(&prefixes[1 - dead])) {
        assert!(Instant::now() < deadline, "the live node kept the deleted pod's namespace");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

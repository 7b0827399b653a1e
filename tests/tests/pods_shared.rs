//! Pod networking end to end in shared-ENI mode: two local-cloud instances as nodes, an agent on
//! each, 20 pods per node through the `berth` plugin. Pods reach each other on one node and across
//! nodes through the vRouter, which drops any packet whose source IP is not on the ENI it leaves
//! by; each pod IP is a secondary IP of that ENI in the cloud; after DEL everything is back.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use berth_cloud::Cloud;
use berth_cloud::api::EniFilter;
use berth_cloud::model::EniKind;
use berth_nodenet::NetnsGuard;
use berth_tests::agent::AgentProcess;
use berth_tests::cni::{self, Invocation};
use berth_tests::pods::{ChurnOutcome, Pod, add_pods, churn, conflist, del_pod, inspect, ping};
use berth_tests::{LocalCloud, LocalCloudOptions, SampleNet, in_netns, is_root};

const PODS_PER_NODE: usize = 20;

/// The ENI (by MAC of the NIC) a packet from `pod_ip` to `dst` leaves the node by.
fn egress_mac(node: &Path, pod_ip: Ipv4Addr, dst: Ipv4Addr, iif: &str) -> String {
    let (ok, out) = in_netns(node, &["ip", "-o", "route", "get", &dst.to_string(), "from", &pod_ip.to_string(), "iif", iif]);
    assert!(ok, "route get: {out}");
    let dev = out.split_whitespace().skip_while(|w| *w != "dev").nth(1).unwrap_or_else(|| panic!("no dev in {out}")).to_string();
    let (ok, link) = in_netns(node, &["ip", "-o", "link", "show", "dev", &dev]);
    assert!(ok, "{link}");
    link.split_whitespace().skip_while(|w| *w != "link/ether").nth(1).unwrap_or_else(|| panic!("no MAC in {link}")).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_reach_each_other_through_the_vpc_and_give_everything_back() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let lc = LocalCloud::start(LocalCloudOptions::default());
    let cloud = lc.client();
    let net = SampleNet::create(&cloud, "10.93.0.0/16", "10.93.1.0/24").await;
    net.open_to(&cloud, "10.0.0.0/8").await;
    let node_a = net.run(&cloud, "ecs.c7.xlarge", &net.sg).await;
    let node_b = net.run(&cloud, "ecs.c7.xlarge", &net.sg).await;
    let flags = ["--min-idle-ips", "4", "--max-idle-ips", "6", "--cooldown-secs", "2"];
    let agent_a = AgentProcess::start(&lc, &node_a, &flags);
    let agent_b = AgentProcess::start(&lc, &node_b, &flags);

    let pods_a = tokio::task::block_in_place(|| add_pods(&agent_a, "a", PODS_PER_NODE));
    let pods_b = tokio::task::block_in_place(|| add_pods(&agent_b, "b", PODS_PER_NODE));
    let all: BTreeSet<Ipv4Addr> = pods_a.iter().chain(&pods_b).map(|p| p.ip).collect();
    assert_eq!(all.len(), 2 * PODS_PER_NODE, "every pod has its own IP");

    // In the cloud, each pod IP is a secondary IP of the ENI its traffic leaves by.
    for (node, agent, pods, peer) in [(&node_a, &agent_a, &pods_a, pods_b[0].ip), (&node_b, &agent_b, &pods_b, pods_a[0].ip)] {
        let enis = cloud.describe_network_interfaces(&EniFilter { instance_id: Some(node.clone()), kind: Some(EniKind::Secondary), ..Default::default() }).await.unwrap();
        for pod in pods.iter() {
            let host_veth = pod.result["interfaces"][0]["name"].as_str().unwrap().to_string();
            let mac = egress_mac(&agent.netns, pod.ip, peer, &host_veth);
            let eni = enis.iter().find(|e| e.mac == mac).unwrap_or_else(|| panic!("{} leaves by {mac}, which is no secondary ENI of {node}", pod.ip));
            assert!(eni.secondary_ips.contains(&pod.ip), "{} leaves by {} which does not own it in the cloud", pod.ip, eni.id);
        }
    }

    // Same node, across nodes (through the vRouter, which drops a source IP not on the ENI).
    let ns = |p: &Pod| std::path::PathBuf::from(format!("/run/netns/{}", p.netns.name()));
    let pairs = [(&pods_a[0], &pods_a[1]), (&pods_a[2], &pods_a[PODS_PER_NODE - 1]), (&pods_a[3], &pods_b[4]), (&pods_b[PODS_PER_NODE - 1], &pods_a[PODS_PER_NODE - 2]), (&pods_b[5], &pods_b[6])];
    for (from, to) in pairs {
        assert!(ping(&ns(from), to.ip), "{} ({}) cannot reach {} ({})", from.container_id, from.ip, to.container_id, to.ip);
    }

    // `berthctl inspect` sees pods, pool and cloud agree, and names a rule removed behind its back.
    let (ok, text) = inspect(&lc, &agent_a);
    assert!(ok, "inspect on a healthy node: {text}");
    let victim = pods_a[7].ip.to_string();
    assert!(in_netns(&agent_a.netns, &["ip", "rule", "del", "pref", "2048", "from", &victim]).0);
    let (ok, text) = inspect(&lc, &agent_a);
    assert!(!ok && text.contains(&victim) && text.contains("lacks its policy rules"), "inspect must report the missing rule: {text}");

    // CHECK passes on an intact pod.
    let check_conf = cni::plugin_conf(&conflist(&agent_a), 0, Some(&pods_a[0].result));
    let ns0 = format!("/run/netns/{}", pods_a[0].netns.name());
    let out = cni::exec(Some(&agent_a.netns), &cni::cni_path(), "berth", &check_conf, &Invocation { command: "CHECK", container_id: &pods_a[0].container_id, netns: &ns0, ifname: "eth0", args: "" });
    assert!(out.ok, "CHECK: {out:?}");

    // DEL everything: every IP back in the pool, then the surplus back in the cloud.
    tokio::task::block_in_place(|| {
        for p in pods_a.iter() {
            del_pod(&agent_a, p);
        }
        for p in pods_b.iter() {
            del_pod(&agent_b, p);
        }
    });
    for (agent, node) in [(&agent_a, &node_a), (&agent_b, &node_b)] {
        let pool = agent.pool().await;
        assert_eq!(pool["allocations"].as_array().unwrap().len(), 0, "{pool:#}");
        let (_, rules) = in_netns(&agent.netns, &["ip", "rule", "show"]);
        assert!(!rules.contains("10.93."), "pod rules left on {node}: {rules}");
        // The agent deletes the veths after DEL has returned (the kernel takes ~20 ms each).
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let (_, links) = in_netns(&agent.netns, &["ip", "-o", "link", "show"]);
            if !links.contains("bth") {
                break;
            }
            assert!(Instant::now() < deadline, "host veths left on {node}: {links}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let enis = cloud.describe_network_interfaces(&EniFilter { instance_id: Some(node.clone()), kind: Some(EniKind::Secondary), ..Default::default() }).await.unwrap();
            let assigned: usize = enis.iter().map(|e| e.secondary_ips.len()).sum();
            if assigned <= 6 {
                break;
            }
            assert!(Instant::now() < deadline, "{assigned} IPs still assigned to {node} after the cool-down\n{}", agent.log());
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// `berthctl inspect` of one node: whether pods, pool and cloud agree, and its report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_churn_of_adds_and_dels_leaks_nothing() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let lc = LocalCloud::start(LocalCloudOptions::default());
    let cloud = lc.client();
    let net = SampleNet::create(&cloud, "10.96.0.0/16", "10.96.1.0/24").await;
    let node = net.run(&cloud, "ecs.c7.xlarge", &net.sg).await;
    // A pool that grows and shrinks all the time, so that kills also land inside cloud calls.
    let agent = AgentProcess::start(&lc, &node, &["--min-idle-ips", "2", "--max-idle-ips", "3", "--cooldown-secs", "0", "--reconcile-secs", "1"]);
    let (agent, outcome) = tokio::task::block_in_place(|| churn(agent, &[""; 8], 50));
    let ChurnOutcome { live, ops, kills, added } = outcome;
    let mut agent = agent;
    assert!(ops >= 300, "{ops} operations");
    assert!(added >= 100, "only {added} ADDs succeeded: the churn did not exercise the agent");
    assert!(kills >= 3, "only {kills} kills");
    agent.restart();

    // In the end: every IP the cloud assigned is idle in the pool or held by exactly one live pod,
    // live pods have their datapath, nothing is left of the others (inspect says so).
    let live_ids: BTreeSet<String> = live.iter().map(|(id, _)| id.clone()).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (ok, text) = inspect(&lc, &agent);
        let pool = agent.pool().await;
        let holders: BTreeSet<String> = pool["allocations"].as_array().unwrap().iter().map(|a| a["key"]["container_id"].as_str().unwrap().to_string()).collect();
        if ok && holders == live_ids {
            break;
        }
        assert!(Instant::now() < deadline, "after {ops} operations and {kills} kills the books do not balance: holders {holders:?}, live {live_ids:?}\n{text}\n{}", agent.log());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for (_, ns) in &live {
        let ns_path = std::path::PathBuf::from(format!("/run/netns/{}", ns.name()));
        assert!(in_netns(&ns_path, &["ip", "-o", "addr", "show", "dev", "eth0"]).1.contains("10.96."), "a live pod lost its address");
    }
    eprintln!("{ops} ADD/DEL ({added} successful ADDs), {kills} kills, {} pods alive at the end", live.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exclusive_pod_gets_its_own_eni_beside_shared_pods() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let lc = LocalCloud::start(LocalCloudOptions::default());
    let cloud = lc.client();
    let net = SampleNet::create(&cloud, "10.86.0.0/16", "10.86.1.0/24").await;
    net.open_to(&cloud, "10.0.0.0/8").await;
    let node_a = net.run(&cloud, "ecs.c7.xlarge", &net.sg).await;
    let node_b = net.run(&cloud, "ecs.c7.xlarge", &net.sg).await;
    let flags = ["--min-idle-ips", "2", "--max-idle-ips", "4", "--cooldown-secs", "1"];
    let mut agent_a = AgentProcess::start(&lc, &node_a, &flags);
    let agent_b = AgentProcess::start(&lc, &node_b, &flags);
    let path = cni::cni_path();

    let (shared_a, shared_b) = tokio::task::block_in_place(|| (add_pods(&agent_a, "sa", 1).remove(0), add_pods(&agent_b, "sb", 1).remove(0)));
    let excl_ns = NetnsGuard::unique("bx").unwrap();
    let excl_path = format!("/run/netns/{}", excl_ns.name());
    let inv = Invocation { command: "ADD", container_id: "x-1", netns: &excl_path, ifname: "eth0", args: "BERTH_NETWORK_MODE=exclusive" };
    let result = tokio::task::block_in_place(|| cni::add_list(Some(&agent_a.netns), &path, &conflist(&agent_a), &inv)).unwrap_or_else(|e| panic!("exclusive ADD: {e:?}\n{}", agent_a.log()));
    let ip: Ipv4Addr = result["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap().parse().unwrap();
    assert_eq!(result["interfaces"].as_array().unwrap().len(), 1, "an exclusive pod has only its ENI: {result}");

    // In the cloud: an ENI of its own, attached to node A, whose primary address is the pod's.
    let enis = cloud.describe_network_interfaces(&EniFilter { instance_id: Some(node_a.clone()), kind: Some(EniKind::Secondary), ..Default::default() }).await.unwrap();
    let own = enis.iter().find(|e| e.primary_ip == ip).unwrap_or_else(|| panic!("no ENI of node A has {ip} as its primary address: {enis:#?}"));
    assert!(own.secondary_ips.is_empty() && own.mac == result["interfaces"][0]["mac"].as_str().unwrap(), "{own:#?}");
    let (_, links) = in_netns(Path::new(&excl_path), &["ip", "-o", "link", "show", "dev", "eth0"]);
    assert!(links.contains(&own.mac), "the pod's eth0 is the ENI's NIC: {links}");

    // It reaches shared pods on its node and on another, and they reach it.
    let ns = |p: &Pod| std::path::PathBuf::from(format!("/run/netns/{}", p.netns.name()));
    assert!(ping(Path::new(&excl_path), shared_a.ip), "exclusive → shared pod on its node");
    assert!(ping(Path::new(&excl_path), shared_b.ip), "exclusive → shared pod on another node");
    assert!(ping(&ns(&shared_b), ip), "shared pod on another node → exclusive");
    let (ok, text) = inspect(&lc, &agent_a);
    assert!(ok, "inspect with an exclusive pod: {text}");
    let check = cni::plugin_conf(&conflist(&agent_a), 0, Some(&result));
    let out = cni::exec(Some(&agent_a.netns), &path, "berth", &check, &Invocation { command: "CHECK", ..inv.clone() });
    assert!(out.ok, "CHECK: {out:?}");
    // A restarted agent knows the pod's ENI again (and neither deletes it nor lets the pool take its slot).
    agent_a.restart();
    let out = cni::exec(Some(&agent_a.netns), &path, "berth", &check, &Invocation { command: "CHECK", ..inv.clone() });
    assert!(out.ok, "CHECK after an agent restart: {out:?}\n{}", agent_a.log());
    let (ok, text) = inspect(&lc, &agent_a);
    assert!(ok, "inspect after an agent restart: {text}");

    // DEL gives the ENI back: the node gets its NIC back until the cloud detaches and deletes it.
    tokio::task::block_in_place(|| cni::del_list(Some(&agent_a.netns), &path, &conflist(&agent_a), &Invocation { command: "DEL", ..inv.clone() }, Some(&result))).unwrap_or_else(|e| panic!("DEL: {e:?}"));
    let deadline = Instant::now() + Duration::from_secs(15);
    while cloud.describe_network_interfaces(&EniFilter { ids: vec![own.id.clone()], ..Default::default() }).await.unwrap().iter().any(|e| e.id == own.id) {
        assert!(Instant::now() < deadline, "the pod's ENI {} was not deleted\n{}", own.id, agent_a.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let pool = agent_a.pool().await;
    assert_eq!(pool["allocations"].as_array().unwrap().len(), 1, "only the shared pod is left: {pool:#}");
    tokio::task::block_in_place(|| {
        del_pod(&agent_a, &shared_a);
        del_pod(&agent_b, &shared_b);
    });
}

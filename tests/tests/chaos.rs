//! A chaos run, bounded in time: on a two-node cluster (local cloud booting the Berth node image,
//! the real scheduler), pods of every network mode, some with a NAS or disk volume, are created
//! and deleted while agents, CSI drivers, the scheduler and the local cloud are killed (`kill -9`)
//! and come back (the guests' supervisor restarts agents and drivers; the test restarts the
//! scheduler and the local cloud on the same state). Afterwards every pod that exists runs with
//! its IP (held by its node's agent, on an interface of its namespace) and its volumes mounted;
//! once they are deleted nothing is left: no IP allocation, no pod namespace, no mount, no member
//! or unattached ENI, no disk in the cloud.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use berth_cloud::Cloud as _;
use berth_cloud::api::{DiskFilter, EniFilter};
use berth_cloud::model::{EniKind, EniStatus};
use berth_proto::agent::v1::agent_client::AgentClient;
use berth_proto::agent::v1 as agentpb;
use berth_proto::cluster::v1 as pb;
use berth_tests::csi::mounts_under;
use berth_tests::e2e::{Cluster, cluster, is, name, netns_of, pods, ready_nodes, sleeper};
use berth_tests::guest::{GuestLeftovers, recorded_pids};
use berth_tests::{is_root, wait_for};

/// A small deterministic generator (xorshift), seeded from the clock and printed, so a failing
/// run can be replayed with `BERTH_CHAOS_SEED`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// The n-th pod: modes and volumes in turn (NAS volumes carved from `nas_fs`).
fn spec(n: usize, nas_fs: &str) -> pb::PodSpec {
    let mut s = sleeper(&format!("chaos-{n:03}"));
    s.network_mode = [pb::NetworkMode::Shared, pb::NetworkMode::Trunk, pb::NetworkMode::Exclusive][n % 3] as i32;
    let volume = |kind: pb::VolumeKind, param: (&str, &str)| pb::VolumeSpec {
        name: "data".into(),
        kind: kind as i32,
        mount_path: "/data".into(),
        read_only: false,
        parameters: [(param.0.to_string(), param.1.to_string()), ("ephemeral".to_string(), "true".to_string())].into(),
    };
    match n % 4 {
        1 => s.volumes = vec![volume(pb::VolumeKind::Nas, ("fileSystemId", nas_fs))],
        3 => s.volumes = vec![volume(pb::VolumeKind::Disk, ("size", "20Gi"))],
        _ => {}
    }
    s
}

/// What the agent of `node` holds: IP → container.
async fn allocations(c: &Cluster, node: &str) -> BTreeMap<String, String> {
    let channel = berth_tests::agent::unix_channel(&c.lc.guest_dir(node).join("agent.sock")).await;
    let listed = AgentClient::new(channel).list_allocations(agentpb::ListAllocationsRequest::default()).await.expect("ListAllocations").into_inner().allocations;
    listed.into_iter().map(|a| (a.ipv4.map(|i| i.address).unwrap_or_default(), a.key.map(|k| k.container_id).unwrap_or_default())).collect()
}

/// Kills one service of a node's guest with SIGKILL; its supervisor starts it again.
fn kill_service(c: &Cluster, node: &str, service: &str) -> bool {
    let pid = recorded_pids(&c.lc.guest_dir(node)).into_iter().find(|(n, _)| n == service).map(|(_, p)| p);
    pid.is_some_and(|pid| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).is_ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_come_and_go_while_every_daemon_is_killed_and_nothing_is_lost_or_leaked() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    // ecs.c7.2xlarge: 5 secondary ENI slots (the trunk, the shared pool's ENI, 3 for exclusive
    // pods), room for every pod alive at once (at most 10, a third of them exclusive).
    let mut c = cluster("chaos", "ecs.c7.2xlarge", 2, 2, 600, ("10.84.0.0/16", "10.84.1.0/24"), &["--trunk", "true"]).await;
    let _leftovers = GuestLeftovers::new(&c.lc, &c.tag);
    let mut client = c.scheduler.client().await;
    let nodes: Vec<String> = wait_for!(c, Duration::from_secs(90), "the pool's two nodes reporting", {
        let ready = ready_nodes(&mut client).await;
        (ready.len() == 2).then(|| ready.into_keys().collect())
    });

    let nas_fs = c.lc.client().create_nas_file_system("local-1a", &c.net.vpc, &c.net.vsw, None).await.expect("CreateFileSystem").id;
    let seed = std::env::var("BERTH_CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1);
    eprintln!("chaos seed {seed} (BERTH_CHAOS_SEED={seed} replays the choices)");
    let mut rng = Rng(seed);
    let (mut live, mut made, mut kills): (Vec<String>, usize, Vec<String>) = (Vec::new(), 0, Vec::new());
    let started = Instant::now();
    let mut next_kill = started + Duration::from_secs(3);
    while started.elapsed() < Duration::from_secs(30) {
        // A pod more, or one fewer: about 8 at a time.
        if live.len() < 4 || (live.len() < 10 && rng.below(10) < 6) {
            let s = spec(made, &nas_fs);
            made += 1;
            // The scheduler may be down this instant: a refused call is the caller's to retry.
            if client.submit_pod(pb::SubmitPodRequest { spec: Some(s.clone()) }).await.is_ok() {
                live.push(s.name);
            }
        } else {
            let victim = live.swap_remove(rng.below(live.len()));
            if client.delete_pod(pb::DeletePodRequest { namespace: "default".into(), name: victim.clone() }).await.is_err() {
                live.push(victim);
            }
        }
        if Instant::now() >= next_kill {
            let node = nodes[rng.below(nodes.len())].clone();
            let what = match rng.below(4) {
                0 => format!("agent of {node}: {}", kill_service(&c, &node, "agent")),
                1 => format!("CSI driver of {node}: {}", kill_service(&c, &node, "csi")),
                2 => {
                    c.scheduler.restart();
                    client = c.scheduler.client().await;
                    "scheduler".to_string()
                }
                _ => {
                    c.lc.restart();
                    "local cloud".to_string()
                }
            };
            kills.push(what);
            next_kill = Instant::now() + Duration::from_millis(2000 + rng.below(2000) as u64);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    eprintln!("{made} pods submitted, {} live at the end; kills: {kills:?}", live.len());

    // Every pod that exists runs, with its IP and volumes.
    let mut seen = String::new();
    let running = wait_for!(c, Duration::from_secs(120), format!("every live pod running; last seen: {seen}"), {
        let all = pods(&mut client).await;
        seen.clear();
        seen.push_str(&format!("{:?}", all.iter().filter(|p| !is(p, pb::PodPhase::Running)).map(|p| (name(p), p.phase, p.node.clone(), p.message.clone())).collect::<Vec<_>>()));
        let failed: Vec<String> = all.iter().filter(|p| is(p, pb::PodPhase::Failed)).map(|p| format!("{}: {}", name(p), p.message)).collect();
        assert!(failed.is_empty(), "pods failed under chaos: {failed:?}");
        let names: Vec<String> = all.iter().map(name).collect();
        (all.len() == live.len() && live.iter().all(|n| names.contains(n)) && all.iter().all(|p| is(p, pb::PodPhase::Running) && !p.pod_ip.is_empty())).then_some(all)
    });
    // Each agent comes to hold exactly its running pods' IPs (trunk and exclusive pods' too): a pod
    // the scheduler moved while its first node was away is removed there at that node's next
    // report, a release the plugin queued while the agent was down is drained at its next period.
    let mut extra_seen = String::new();
    let held: BTreeMap<String, BTreeMap<String, String>> = wait_for!(c, Duration::from_secs(30), format!("each agent holding just its running pods' IPs; last seen: {extra_seen}"), {
        let mut held = BTreeMap::new();
        for n in &nodes {
            held.insert(n.clone(), allocations(&c, n).await);
        }
        extra_seen.clear();
        for n in &nodes {
            let mine: Vec<&str> = running.iter().filter(|p| &p.node == n).map(|p| p.pod_ip.as_str()).collect();
            if held[n].len() != mine.len() {
                extra_seen.push_str(&format!("{n} holds {:?} for pods {mine:?}; ", held[n]));
            }
        }
        extra_seen.is_empty().then_some(held)
    });
    for p in &running {
        if !held.contains_key(&p.node) {
            let ids = c.instances().await;
            panic!("{} runs on {}, not one of the pool's nodes {nodes:?} (instances {ids:?})\n{}", name(p), p.node, c.logs(&ids));
        }
        let ns = netns_of(&c, &p.node, &p.pod_ip);
        assert!(held[&p.node].contains_key(&p.pod_ip), "{} ({}) on {} is not held by its agent: {:?}", name(p), p.pod_ip, p.node, held[&p.node]);
        if p.spec.as_ref().is_some_and(|s| !s.volumes.is_empty()) {
            let pod_dir = c.lc.guest_dir(&p.node).join("agent-state/runner/pods").join(&ns);
            assert!(mounts_under(&pod_dir).iter().any(|m| m.ends_with("data")), "{}'s volume is not mounted under {}", name(p), pod_dir.display());
        }
    }

    // Delete them all: nothing is left.
    for p in &running {
        client.delete_pod(pb::DeletePodRequest { namespace: "default".into(), name: name(p) }).await.expect("DeletePod");
    }
    wait_for!(c, Duration::from_secs(60), "every pod gone", pods(&mut client).await.is_empty().then_some(()));
    let cloud = c.lc.client();
    let mut left_seen = String::new();
    wait_for!(c, Duration::from_secs(90), format!("no allocation, namespace, mount, member ENI, loose ENI or disk left; last seen: {left_seen}"), {
        let mut left = Vec::new();
        for n in &nodes {
            let a = allocations(&c, n).await;
            if !a.is_empty() {
                left.push(format!("{n} allocations {a:?}"));
            }
            let m = mounts_under(&c.lc.guest_dir(n).join("agent-state/runner"));
            if !m.is_empty() {
                left.push(format!("{n} mounts {m:?}"));
            }
        }
        let ns = berth_tests::scheduler::runner_netns(&c.tag);
        if !ns.is_empty() {
            left.push(format!("namespaces {ns:?}"));
        }
        let enis = cloud.describe_network_interfaces(&EniFilter { vpc_id: Some(c.net.vpc.clone()), ..Default::default() }).await.expect("DescribeNetworkInterfaces");
        let loose: Vec<String> = enis.iter().filter(|e| e.kind == EniKind::Member || e.status == EniStatus::Available).map(|e| format!("{} {:?} {:?}", e.id, e.kind, e.status)).collect();
        if !loose.is_empty() {
            left.push(format!("ENIs {loose:?}"));
        }
        let disks = cloud.describe_disks(&DiskFilter::default()).await.expect("DescribeDisks");
        if !disks.is_empty() {
            left.push(format!("disks {:?}", disks.iter().map(|d| (&d.id, d.status)).collect::<Vec<_>>()));
        }
        left_seen.clear();
        left_seen.push_str(&left.join("; "));
        left.is_empty().then_some(())
    });
}

//! Three real `berth-scheduler` replicas on a real 3-member etcd, nodes that report as agents do
//! (finding the leader themselves), and a client submitting without pause: the leader is killed
//! with SIGKILL and another must bind again within 3 s, with every acknowledged pod stored and bound
//! once, no pod on two nodes and no node over its capacity.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_proto::cluster::v1 as pb;
use berth_proto::cluster::v1::scheduler_client::SchedulerClient;
use berth_scheduler_client::{NodeReporter, connect_leader, endpoints};
use berth_tests::etcd::EtcdCluster;
use berth_tests::scheduler::{Scheduler, free_port};

/// Pods a node can hold (its shared IPs).
const NODE_IPS: u32 = 40;

fn replica_config(etcd: &[String], port: u16) -> String {
    let endpoints = etcd.iter().map(|e| format!("\"{e}\"")).collect::<Vec<_>>().join(", ");
    format!(
        "[server]\nadvertise = \"127.0.0.1:{port}\"\n[placement]\nlease_secs = 4\ntick_ms = 50\n[autoscaler]\nenabled = false\n[store]\nkind = \"etcd\"\n[store.etcd]\nendpoints = [{endpoints}]\nprefix = \"/failover\"\nlease_ttl_secs = 2\nrequest_timeout_ms = 3000\n"
    )
}

/// What the simulated nodes run: pod → nodes running it.
type Running = Arc<Mutex<BTreeMap<String, BTreeSet<String>>>>;

fn report(id: &str, pods: &BTreeSet<String>) -> pb::NodeReport {
    let all = pb::Resources { cpu_millicores: 64_000, memory_bytes: 256 << 30, pods: NODE_IPS, shared_ips: NODE_IPS, eni_slots: 4, member_eni_slots: 8, disk_slots: 8 };
    let used = pods.len() as u32;
    let free = pb::Resources { cpu_millicores: all.cpu_millicores - u64::from(used) * 100, memory_bytes: all.memory_bytes, pods: NODE_IPS - used, shared_ips: NODE_IPS - used, ..all };
    pb::NodeReport {
        identity: Some(pb::NodeIdentity { instance_id: id.into(), instance_type: "ecs.g7.large".into(), zone_id: "z1".into(), pool: "p".into(), vswitch_ids: vec!["vsw-1".into()], ..Default::default() }),
        allocatable: Some(all),
        free: Some(free),
        pods: pods.iter().map(|k| {
            let (namespace, name) = k.split_once('/').unwrap();
            pb::PodReport { namespace: namespace.into(), name: name.into(), phase: pb::PodPhase::Running as i32, ..Default::default() }
        }).collect(),
        ..Default::default()
    }
}

/// A node as its agent would be: reports every 200 ms, applies instructions, reconnects to
/// whichever replica leads.
fn start_node(id: String, replicas: String, running: Running, stop: tokio::sync::watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut mine: BTreeSet<String> = BTreeSet::new();
        while !*stop.borrow() {
            let Ok(mut reporter) = NodeReporter::connect(&replicas, report(&id, &mine)).await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                if *stop.borrow() {
                    return;
                }
                tokio::select! {
                    _ = tick.tick() => if reporter.report(report(&id, &mine)).await.is_err() { break },
                    i = reporter.instruction() => match i {
                        Ok(Some(i)) => {
                            let mut r = running.lock().unwrap();
                            for k in i.remove {
                                mine.remove(&k);
                                r.entry(k).or_default().remove(&id);
                            }
                            for s in i.run {
                                let k = format!("{}/{}", s.namespace, s.name);
                                mine.insert(k.clone());
                                r.entry(k).or_default().insert(id.clone());
                            }
                        }
                        _ => break,
                    },
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

fn leader_of(replicas: &[Scheduler], rt: &tokio::runtime::Runtime) -> Option<usize> {
    rt.block_on(async {
        for (i, r) in replicas.iter().enumerate() {
            if let Ok(mut c) = SchedulerClient::connect(r.url.clone()).await
                && c.get_leader(pb::GetLeaderRequest {}).await.is_ok_and(|s| s.into_inner().leads)
            {
                return Some(i);
            }
        }
        None
    })
}

#[test]
fn killing_the_leader_under_load_loses_no_pod_and_binds_again_within_3_s() {
    let etcd = EtcdCluster::start(3);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut replicas: Vec<Scheduler> = ports.iter().map(|&p| Scheduler::start_on(p, &replica_config(&etcd.endpoints(), p), &[])).collect();
    let list = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect::<Vec<_>>().join(",");
    let t = Instant::now();
    let first = loop {
        if let Some(i) = leader_of(&replicas, &rt) {
            break i;
        }
        assert!(t.elapsed() < Duration::from_secs(15), "no replica leads after 15 s:\n{}", replicas.iter().map(Scheduler::log).collect::<String>());
        std::thread::sleep(Duration::from_millis(100));
    };
    let running: Running = Default::default();
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let _guard = rt.enter();
    let nodes: Vec<_> = (0..4).map(|k| start_node(format!("i-{k}"), list.clone(), running.clone(), stop.clone())).collect();

    // One client submits without pause, finding the leader again when it loses it; it notes every
    // pod acknowledged, and when the first pod after the kill was bound.
    let acked: Arc<Mutex<Vec<String>>> = Default::default();
    let killed_at: Arc<Mutex<Option<Instant>>> = Default::default();
    let rebound: Arc<Mutex<Option<Duration>>> = Default::default();
    let submitter = {
        let (acked, killed_at, rebound, stop, eps) = (acked.clone(), killed_at.clone(), rebound.clone(), stop.clone(), endpoints(&list));
        rt.spawn(async move {
            let mut k = 0;
            let mut client: Option<SchedulerClient<tonic::transport::Channel>> = None;
            while !*stop.borrow() {
                let c = match &mut client {
                    Some(c) => c,
                    None => match connect_leader(&eps, Duration::from_millis(500)).await {
                        Ok((_, ch)) => client.insert(SchedulerClient::new(ch)),
                        Err(_) => continue,
                    },
                };
                let name = format!("p{k:05}");
                let spec = pb::PodSpec { namespace: "load".into(), name: name.clone(), cpu_millicores: 100, memory_bytes: 64 << 20, network_mode: pb::NetworkMode::Shared as i32, ..Default::default() };
                match c.submit_pod(pb::SubmitPodRequest { spec: Some(spec) }).await {
                    Ok(st) => {
                        acked.lock().unwrap().push(format!("load/{name}"));
                        let bound = st.into_inner().phase == pb::PodPhase::Bound as i32;
                        if bound && let Some(at) = *killed_at.lock().unwrap() {
                            rebound.lock().unwrap().get_or_insert(at.elapsed());
                        }
                        k += 1;
                        // Keep well under the nodes' capacity: 4 nodes × 40 IPs.
                        if k >= 120 {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    // The same name again after a lost answer is a retry, not a duplicate.
                    Err(_) => client = None,
                }
            }
        })
    };
    let wait = |what: &str, within: Duration, f: &dyn Fn() -> bool| {
        let t = Instant::now();
        while !f() {
            assert!(t.elapsed() < within, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait("40 pods acknowledged", Duration::from_secs(20), &|| acked.lock().unwrap().len() >= 40);
    replicas[first].kill();
    *killed_at.lock().unwrap() = Some(Instant::now());
    wait("a pod bound by the new leader", Duration::from_secs(10), &|| rebound.lock().unwrap().is_some());
    let took = rebound.lock().unwrap().unwrap();
    println!("leader killed with SIGKILL: the next pod was bound by the new leader {took:?} later");
    assert!(took < Duration::from_secs(3), "failover took {took:?}");
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(30), submitter).await }).expect("submitter done").unwrap();
    let second = leader_of(&replicas, &rt).expect("a leader");
    assert_ne!(second, first);

    // Every acknowledged pod is stored and bound, and runs on exactly one node within capacity.
    let acked: Vec<String> = acked.lock().unwrap().clone();
    let stored = rt.block_on(async {
        let mut c = SchedulerClient::connect(replicas[second].url.clone()).await.unwrap();
        berth_tests::scheduler::list_pods(&mut c, "load").await.unwrap()
    });
    let by_key: BTreeMap<String, &pb::PodStatus> = stored.iter().map(|p| (format!("{}/{}", p.spec.as_ref().unwrap().namespace, p.spec.as_ref().unwrap().name), p)).collect();
    for k in &acked {
        let p = by_key.get(k).unwrap_or_else(|| panic!("{k} was acknowledged and is not stored"));
        assert!(!p.node.is_empty(), "{k} is not bound: {}", p.message);
    }
    wait("every acknowledged pod to run on one node", Duration::from_secs(15), &|| {
        let r = running.lock().unwrap();
        acked.iter().all(|k| r.get(k).is_some_and(|n| n.len() == 1)) && r.values().all(|n| n.len() <= 1)
    });
    let r = running.lock().unwrap().clone();
    for (k, on) in &r {
        assert!(on.len() <= 1, "{k} runs on {on:?}");
        if let Some(node) = on.iter().next() {
            assert_eq!(by_key.get(k).map(|p| p.node.as_str()), Some(node.as_str()), "{k} runs where it is not bound");
        }
    }
    let mut per_node: BTreeMap<&str, u32> = BTreeMap::new();
    for on in r.values() {
        for n in on {
            *per_node.entry(n.as_str()).or_default() += 1;
        }
    }
    assert!(per_node.values().all(|&n| n <= NODE_IPS), "{per_node:?}");
    let _ = stop_tx.send(true);
    for n in nodes {
        n.abort();
    }
    drop(replicas);
}

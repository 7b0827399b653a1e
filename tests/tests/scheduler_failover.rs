//! Three real `berth-scheduler` replicas on a real 3-member etcd, nodes that report as agents do
//! (finding the leader themselves), and a client submitting without pause: the leader is killed
//! with SIGKILL and another must bind again within 3 s, with every acknowledged pod stored and bound
//! once, no pod on two nodes and no node over its capacity.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_proto::cluster::v1 as pb;
use berth_proto::cluster::v1::scheduler_client::SchedulerClient;
use berth_scheduler::client::{NodeReporter, connect_leader, endpoints};
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

/// Three replicas on a 3-member etcd, four simulated nodes and a client submitting without pause.
struct Rig {
    // Dropped in this order: nodes stop, then the replicas, then etcd.
    stop_tx: tokio::sync::watch::Sender<bool>,
    nodes: Vec<tokio::task::JoinHandle<()>>,
    replicas: Vec<Scheduler>,
    etcd: EtcdCluster,
    running: Running,
    submitter: Option<tokio::task::JoinHandle<()>>,
    attempts: Attempts,
    rt: tokio::runtime::Runtime,
}

/// Every SubmitPod the client made: when it started and ended, and its error if it failed.
#[derive(Clone)]
struct Attempt {
    started: Instant,
    ended: Instant,
    pod: String,
    error: Option<(tonic::Code, String)>,
}

type Attempts = Arc<Mutex<Vec<Attempt>>>;

impl Rig {
    fn start() -> Rig {
        let etcd = EtcdCluster::start(3);
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let replicas: Vec<Scheduler> = ports.iter().map(|&p| Scheduler::start_on(p, &replica_config(&etcd.endpoints(), p), &[])).collect();
        let list = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect::<Vec<_>>().join(",");
        let t = Instant::now();
        while leader_of(&replicas, &rt).is_none() {
            assert!(t.elapsed() < Duration::from_secs(15), "no replica leads after 15 s:\n{}", replicas.iter().map(Scheduler::log).collect::<String>());
            std::thread::sleep(Duration::from_millis(100));
        }
        let running: Running = Default::default();
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let nodes: Vec<_> = {
            let _guard = rt.enter();
            (0..4).map(|k| start_node(format!("i-{k}"), list.clone(), running.clone(), stop.clone())).collect()
        };
        let attempts: Attempts = Default::default();
        let submitter = Some(rt.spawn(submit_until_stopped(endpoints(&list), attempts.clone(), stop)));
        Rig { stop_tx, nodes, replicas, etcd, running, submitter, attempts, rt }
    }

    fn leader(&self) -> Option<usize> {
        leader_of(&self.replicas, &self.rt)
    }

    fn acked(&self) -> Vec<Attempt> {
        self.attempts.lock().unwrap().iter().filter(|a| a.error.is_none()).cloned().collect()
    }

    fn wait(&self, what: &str, within: Duration, f: &dyn Fn(&Rig) -> bool) {
        let t = Instant::now();
        while !f(self) {
            assert!(t.elapsed() < within, "timed out after {within:?} waiting for {what}:\n{}", self.replicas.iter().map(Scheduler::log).collect::<String>());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the client, then checks that every acknowledged pod is stored, bound and runs on
    /// exactly one node, where it is bound, with no node over its capacity.
    fn stop_and_verify(mut self) {
        let _ = self.stop_tx.send(true);
        if let Some(s) = self.submitter.take() {
            self.rt.block_on(async { tokio::time::timeout(Duration::from_secs(30), s).await }).expect("submitter done").unwrap();
        }
        let acked: Vec<String> = self.acked().into_iter().map(|a| a.pod).collect();
        let leader = self.leader().expect("a leader at the end");
        let stored = self.rt.block_on(async {
            let mut c = SchedulerClient::connect(self.replicas[leader].url.clone()).await.unwrap();
            berth_tests::scheduler::list_pods(&mut c, "load").await.unwrap()
        });
        let by_key: BTreeMap<String, &pb::PodStatus> = stored.iter().map(|p| (format!("{}/{}", p.spec.as_ref().unwrap().namespace, p.spec.as_ref().unwrap().name), p)).collect();
        for k in &acked {
            let p = by_key.get(k).unwrap_or_else(|| panic!("{k} was acknowledged and is not stored"));
            assert!(!p.node.is_empty(), "{k} is not bound: {}", p.message);
        }
        let running = self.running.clone();
        self.wait("every acknowledged pod to run on one node", Duration::from_secs(15), &|_| {
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
        for n in &self.nodes {
            n.abort();
        }
    }
}

/// Submits pods one after another until stopped (or 140 are acknowledged: well under the nodes'
/// 4 × 40 IPs), finding the leader again whenever a call fails; a failed pod is submitted again
/// under the same name (a retry, not a duplicate).
async fn submit_until_stopped(eps: Vec<String>, attempts: Attempts, stop: tokio::sync::watch::Receiver<bool>) {
    let mut k = 0;
    let mut client: Option<SchedulerClient<tonic::transport::Channel>> = None;
    while !*stop.borrow() && k < 140 {
        let name = format!("p{k:05}");
        let started = Instant::now();
        let c = match &mut client {
            Some(c) => c,
            None => match connect_leader(&eps, Duration::from_millis(500)).await {
                Ok((_, ch)) => client.insert(SchedulerClient::new(ch)),
                Err(e) => {
                    attempts.lock().unwrap().push(Attempt { started, ended: Instant::now(), pod: format!("load/{name}"), error: Some((tonic::Code::Unavailable, e.to_string())) });
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let spec = pb::PodSpec { namespace: "load".into(), name: name.clone(), cpu_millicores: 100, memory_bytes: 64 << 20, network_mode: pb::NetworkMode::Shared as i32, ..Default::default() };
        let r = c.submit_pod(pb::SubmitPodRequest { spec: Some(spec) }).await;
        let error = r.as_ref().err().map(|e| (e.code(), e.message().to_string()));
        attempts.lock().unwrap().push(Attempt { started, ended: Instant::now(), pod: format!("load/{name}"), error: error.clone() });
        if error.is_some() {
            client = None;
            continue;
        }
        k += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn killing_the_leader_under_load_loses_no_pod_and_binds_again_within_3_s() {
    let mut rig = Rig::start();
    let first = rig.leader().expect("a leader");
    rig.wait("40 pods acknowledged", Duration::from_secs(20), &|r| r.acked().len() >= 40);
    rig.replicas[first].kill();
    let killed_at = Instant::now();
    // The first pod acknowledged as Bound after the kill was bound by the new leader.
    rig.wait("a pod acknowledged by the new leader", Duration::from_secs(10), &|r| r.acked().iter().any(|a| a.started >= killed_at));
    let took = rig.acked().iter().find(|a| a.started >= killed_at).map(|a| a.ended - killed_at).unwrap();
    println!("leader killed with SIGKILL: the next pod was bound by the new leader {took:?} later");
    assert!(took < Duration::from_secs(3), "failover took {took:?}");
    rig.wait("40 more pods acknowledged", Duration::from_secs(20), &|r| r.acked().iter().filter(|a| a.started >= killed_at).count() >= 40);
    let second = rig.leader().expect("a leader");
    assert_ne!(second, first);
    rig.stop_and_verify();
}

/// etcd keeps a quorum with one member of three down: the scheduler goes on without a refused
/// call. With two down it has none: every write is refused with UNAVAILABLE naming the quorum and
/// nothing is acknowledged; once the members are back, submits succeed again, and nothing that
/// was acknowledged is lost or bound twice.
#[test]
fn etcd_members_lost_under_load_one_changes_nothing_two_refuse_writes_until_they_return() {
    let mut rig = Rig::start();
    let leader = rig.leader().expect("a leader");
    rig.wait("20 pods acknowledged", Duration::from_secs(20), &|r| r.acked().len() >= 20);

    // One member down, not the raft leader (that one would cost an election, ~1 s).
    let raft_leader = rig.etcd.raft_leader().expect("etcd has a raft leader");
    let first = (0..3).find(|&i| i != raft_leader).unwrap();
    rig.etcd.kill(first);
    let one_down = Instant::now();
    rig.wait("20 more pods with one etcd member down", Duration::from_secs(20), &|r| r.acked().iter().filter(|a| a.started >= one_down).count() >= 20);
    let since: Vec<Attempt> = rig.attempts.lock().unwrap().iter().filter(|a| a.ended >= one_down).cloned().collect();
    let refused: Vec<_> = since.iter().filter_map(|a| a.error.clone()).collect();
    assert!(refused.is_empty(), "with one etcd member of three down, calls were refused: {refused:?}");
    let slowest = since.iter().map(|a| a.ended - a.started).max().unwrap();
    println!("one etcd member down: {} pods acknowledged, none refused, slowest SubmitPod {slowest:?}", since.len());
    assert!(slowest < Duration::from_secs(1), "a SubmitPod took {slowest:?} with one member down");
    assert_eq!(rig.leader(), Some(leader), "the scheduler leader changed though etcd kept its quorum");

    // A second member down: no quorum.
    let second = (0..3).find(|&i| i != first && Some(i) != rig.etcd.raft_leader()).or_else(|| (0..3).find(|&i| i != first)).unwrap();
    rig.etcd.kill(second);
    let two_down = Instant::now();
    std::thread::sleep(Duration::from_secs(8));
    let during: Vec<Attempt> = rig.attempts.lock().unwrap().iter().filter(|a| a.started >= two_down).cloned().collect();
    assert!(!during.is_empty(), "the client made no call in 8 s without quorum");
    let acked: Vec<_> = during.iter().filter(|a| a.error.is_none()).map(|a| a.pod.clone()).collect();
    assert!(acked.is_empty(), "pods acknowledged without an etcd quorum: {acked:?}");
    for a in &during {
        let (code, message) = a.error.as_ref().unwrap();
        assert_eq!(*code, tonic::Code::Unavailable, "a call without quorum was answered {code:?}: {message}");
    }
    let named = during.iter().filter(|a| a.error.as_ref().is_some_and(|(_, m)| m.contains("quorum"))).count();
    println!("two etcd members down: {} calls refused, {named} naming the quorum; first: {}", during.len(), during[0].error.as_ref().unwrap().1);
    assert!(named > 0, "no refusal names the lost quorum: {:?}", during.iter().map(|a| &a.error).collect::<Vec<_>>());

    // Both back: writes are acknowledged again.
    rig.etcd.restart(first);
    rig.etcd.restart(second);
    let back = Instant::now();
    rig.wait("a pod acknowledged once the members are back", Duration::from_secs(30), &|r| r.acked().iter().any(|a| a.started >= back));
    let recovered = rig.acked().iter().find(|a| a.started >= back).map(|a| a.ended - back).unwrap();
    println!("etcd members restarted: the next pod was acknowledged {recovered:?} later");
    rig.wait("20 pods after the recovery", Duration::from_secs(20), &|r| r.acked().iter().filter(|a| a.started >= back).count() >= 20);
    rig.stop_and_verify();
}

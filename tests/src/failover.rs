//! A replicated control plane under load, for the failover tests and benchmark: three real
//! `berth-scheduler` replicas on a real 3-member etcd, nodes that report as agents do (through the
//! agents' client, finding the leader themselves) and a client submitting without pause that
//! notes every call. Everything stops and is removed when the rig is dropped.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_proto::cluster::v1 as pb;
use berth_proto::cluster::v1::scheduler_client::SchedulerClient;
use berth_scheduler_client::{NodeReporter, connect_leader, endpoints};
use crate::etcd::EtcdCluster;
use crate::scheduler::{Scheduler, free_port};

fn replica_config(etcd: &[String], port: u16) -> String {
    let endpoints = etcd.iter().map(|e| format!("\"{e}\"")).collect::<Vec<_>>().join(", ");
    format!(
        "[server]\nadvertise = \"127.0.0.1:{port}\"\n[placement]\nlease_secs = 4\ntick_ms = 50\n[autoscaler]\nenabled = false\n[store]\nkind = \"etcd\"\n[store.etcd]\nendpoints = [{endpoints}]\nprefix = \"/failover\"\nlease_ttl_secs = 2\nrequest_timeout_ms = 3000\n"
    )
}

/// What the simulated nodes run: pod → nodes running it.
type Running = Arc<Mutex<BTreeMap<String, BTreeSet<String>>>>;

fn report(id: &str, pods: &BTreeSet<String>, node_ips: u32) -> pb::NodeReport {
    let all = pb::Resources { cpu_millicores: 64_000, memory_bytes: 256 << 30, pods: node_ips, shared_ips: node_ips, eni_slots: 4, member_eni_slots: 8, disk_slots: 8 };
    let used = pods.len() as u32;
    let free = pb::Resources { cpu_millicores: all.cpu_millicores - u64::from(used) * 100, memory_bytes: all.memory_bytes, pods: node_ips - used, shared_ips: node_ips - used, ..all };
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
fn start_node(id: String, replicas: String, node_ips: u32, running: Running, stop: tokio::sync::watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut mine: BTreeSet<String> = BTreeSet::new();
        while !*stop.borrow() {
            let Ok(mut reporter) = NodeReporter::connect(&replicas, report(&id, &mine, node_ips)).await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                if *stop.borrow() {
                    return;
                }
                tokio::select! {
                    _ = tick.tick() => if reporter.report(report(&id, &mine, node_ips)).await.is_err() { break },
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

pub fn leader_of(replicas: &[Scheduler], rt: &tokio::runtime::Runtime) -> Option<usize> {
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

/// How big the rig is: nodes, the pods each holds (its shared IPs), and how many pods the client
/// submits at most (keep it under nodes × node_ips).
#[derive(Clone, Copy)]
pub struct Size {
    pub nodes: usize,
    pub node_ips: u32,
    pub max_pods: usize,
}

/// What the failover tests use: 4 nodes of 40 pods, 140 pods.
pub const SMALL: Size = Size { nodes: 4, node_ips: 40, max_pods: 140 };

/// Three replicas on a 3-member etcd, simulated nodes and a client submitting without pause.
pub struct Rig {
    // Dropped in this order: nodes stop, then the replicas, then etcd.
    stop_tx: tokio::sync::watch::Sender<bool>,
    nodes: Vec<tokio::task::JoinHandle<()>>,
    pub replicas: Vec<Scheduler>,
    pub etcd: EtcdCluster,
    running: Running,
    submitter: Option<tokio::task::JoinHandle<()>>,
    pub attempts: Attempts,
    size: Size,
    pub rt: tokio::runtime::Runtime,
}

/// Every SubmitPod the client made: when it started and ended, and its error if it failed.
#[derive(Clone)]
pub struct Attempt {
    pub started: Instant,
    pub ended: Instant,
    pub pod: String,
    pub error: Option<(tonic::Code, String)>,
}

pub type Attempts = Arc<Mutex<Vec<Attempt>>>;

impl Rig {
    pub fn start(size: Size) -> Rig {
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
            (0..size.nodes).map(|k| start_node(format!("i-{k}"), list.clone(), size.node_ips, running.clone(), stop.clone())).collect()
        };
        let attempts: Attempts = Default::default();
        let submitter = Some(rt.spawn(submit_until_stopped(endpoints(&list), size.max_pods, attempts.clone(), stop)));
        Rig { stop_tx, nodes, replicas, etcd, running, submitter, attempts, size, rt }
    }

    pub fn leader(&self) -> Option<usize> {
        leader_of(&self.replicas, &self.rt)
    }

    /// The calls acknowledged so far.
    pub fn acked(&self) -> Vec<Attempt> {
        self.attempts.lock().unwrap().iter().filter(|a| a.error.is_none()).cloned().collect()
    }

    pub fn wait(&self, what: &str, within: Duration, f: &dyn Fn(&Rig) -> bool) {
        let t = Instant::now();
        while !f(self) {
            assert!(t.elapsed() < within, "timed out after {within:?} waiting for {what}:\n{}", self.replicas.iter().map(Scheduler::log).collect::<String>());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the client, then checks that every acknowledged pod is stored, bound and runs on
    /// exactly one node, where it is bound, with no node over its capacity.
    pub fn stop_and_verify(mut self) {
        let _ = self.stop_tx.send(true);
        if let Some(s) = self.submitter.take() {
            self.rt.block_on(async { tokio::time::timeout(Duration::from_secs(30), s).await }).expect("submitter done").unwrap();
        }
        let acked: Vec<String> = self.acked().into_iter().map(|a| a.pod).collect();
        let leader = self.leader().expect("a leader at the end");
        let stored = self.rt.block_on(async {
            let mut c = SchedulerClient::connect(self.replicas[leader].url.clone()).await.unwrap();
            crate::scheduler::list_pods(&mut c, "load").await.unwrap()
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
        assert!(per_node.values().all(|&n| n <= self.size.node_ips), "{per_node:?}");
        for n in &self.nodes {
            n.abort();
        }
    }
}

/// Submits pods one after another until stopped (or `max_pods` are acknowledged), finding the
/// leader again whenever a call fails; a failed pod is submitted again under the same name (a
/// retry, not a duplicate).
async fn submit_until_stopped(eps: Vec<String>, max_pods: usize, attempts: Attempts, stop: tokio::sync::watch::Receiver<bool>) {
    let mut k = 0;
    let mut client: Option<SchedulerClient<tonic::transport::Channel>> = None;
    while !*stop.borrow() && k < max_pods {
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


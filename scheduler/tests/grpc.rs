//! The scheduler over its real gRPC server on loopback, with fake nodes that report like agents
//! (free counts = allocatable minus the pods they were told to run) and a recording provisioner.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_proto::cluster::v1 as pb;
use berth_proto::cluster::v1::scheduler_client::SchedulerClient;
use berth_scheduler::autoscaler::driver::{NodeProvisioner, PoolInstance};
use berth_scheduler::autoscaler::{NodePool, PoolVSwitch, ScaleUpPlan};
use berth_scheduler_client::{self as client, NodeReporter};
use berth_scheduler::config::SchedulerConfig;
use berth_scheduler::placement::demand_of;
use berth_scheduler::server::{self, Shared};
use berth_scheduler::store::{JournalStore, MemoryStore, Store};
use tonic::transport::Channel;

#[derive(Clone, Default)]
struct RecordingProvisioner {
    created: Arc<Mutex<Vec<ScaleUpPlan>>>,
    deleted: Arc<Mutex<Vec<String>>>,
    /// RunInstances fails for this pool (as with an exhausted quota).
    failing_pool: Option<String>,
    failed: Arc<Mutex<u32>>,
    /// Instances the cloud lists for every pool (made before a restart).
    existing: Vec<String>,
}

impl NodeProvisioner for RecordingProvisioner {
    async fn create(&self, _pool: &NodePool, plan: &ScaleUpPlan, _token: &str) -> Result<Vec<String>, String> {
        if self.failing_pool.as_deref() == Some(plan.pool.as_str()) {
            *self.failed.lock().unwrap() += 1;
            return Err(format!("QuotaExceeded: no more instances in pool {}", plan.pool));
        }
        let mut c = self.created.lock().unwrap();
        let ids = (0..plan.count).map(|k| format!("i-new-{}-{k}", c.len())).collect();
        c.push(plan.clone());
        Ok(ids)
    }

    async fn delete(&self, ids: &[String]) -> Result<(), String> {
        self.deleted.lock().unwrap().extend(ids.iter().cloned());
        Ok(())
    }

    async fn list(&self, pool: &NodePool) -> Result<Vec<PoolInstance>, String> {
        let vsw = &pool.vswitches[0];
        Ok(self.existing.iter().map(|id| PoolInstance { instance_id: id.clone(), instance_type: pool.instance_types[0].clone(), zone_id: vsw.zone.clone(), vswitch_id: vsw.id.clone() }).collect())
    }
}

struct Running {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn start(cfg: SchedulerConfig, store: Box<dyn Store>, provisioner: Option<RecordingProvisioner>) -> Running {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Shared::new(cfg, store).unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server::serve(shared, provisioner, listener, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        Running { addr, stop: Some(tx), task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn client(&self) -> SchedulerClient<Channel> {
        SchedulerClient::connect(self.url()).await.unwrap()
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

fn config() -> SchedulerConfig {
    let mut cfg = SchedulerConfig::default();
    cfg.placement.lease_secs = 1;
    cfg.placement.tick_ms = 50;
    cfg.autoscaler.interval_ms = 100;
    cfg.autoscaler.pending_threshold_secs = 1;
    cfg.pool = vec![NodePool {
        name: "small".into(),
        instance_types: vec!["ecs.g7.large".into()],
        vswitches: vec![PoolVSwitch { id: "vsw-a".into(), zone: "zone-a".into() }],
        security_group_ids: vec![],
        min_nodes: 0,
        max_nodes: 5,
        capacity: Default::default(),
        priority: 0,
        labels: BTreeMap::new(),
        disruption_budget: 1,
        image_id: Some("m-test".into()),
        ..Default::default()
    }];
    cfg
}

/// A node that reports every 100 ms like an agent: it runs what it is told to, and its free
/// counts are what its pods leave.
struct FakeNode {
    task: tokio::task::JoinHandle<()>,
    runs: Arc<Mutex<BTreeMap<String, pb::PodSpec>>>,
    /// The CPU (millicores) a steady load takes of the node's pods, shared evenly among them as
    /// a service's requests would be (none: not measured yet).
    load: Arc<Mutex<Option<u64>>>,
}

impl FakeNode {
    async fn start(url: &str, id: &str, ips: u32) -> FakeNode {
        Self::with_disks(url, id, ips, 16).await
    }

    async fn with_disks(url: &str, id: &str, ips: u32, disks: u32) -> FakeNode {
        let alloc = pb::Resources { cpu_millicores: 2000, memory_bytes: 8 << 30, pods: 64, shared_ips: ips, eni_slots: 2, member_eni_slots: 6, disk_slots: disks };
        let identity = pb::NodeIdentity { instance_id: id.into(), instance_type: "ecs.g7.large".into(), zone_id: "zone-a".into(), pool: "small".into(), vswitch_ids: vec!["vsw-a".into()], ..Default::default() };
        let runs: Arc<Mutex<BTreeMap<String, pb::PodSpec>>> = Arc::default();
        let load: Arc<Mutex<Option<u64>>> = Arc::default();
        let report = {
            let (runs, load) = (runs.clone(), load.clone());
            move || {
                let runs = runs.lock().unwrap();
                let usage = load.lock().unwrap().map(|total| pb::PodUsage { cpu_millicores: total / runs.len().max(1) as u64, window_ms: 100, ..Default::default() });
                let mut free = alloc;
                for spec in runs.values() {
                    let d = demand_of(spec);
                    free.cpu_millicores -= d.cpu_millicores;
                    free.memory_bytes -= d.memory_bytes;
                    free.pods -= d.pods;
                    free.shared_ips -= d.shared_ips;
                    free.disk_slots -= d.disk_slots;
                }
                let pods = runs.values().map(|s| pb::PodReport { namespace: s.namespace.clone(), name: s.name.clone(), phase: pb::PodPhase::Running as i32, usage, ..Default::default() }).collect();
                pb::NodeReport { identity: Some(identity.clone()), allocatable: Some(alloc), free: Some(free), pods, ..Default::default() }
            }
        };
        let mut reporter = NodeReporter::connect(url, report()).await.unwrap();
        let task = {
            let runs = runs.clone();
            tokio::spawn(async move {
                let mut iv = tokio::time::interval(Duration::from_millis(100));
                loop {
                    tokio::select! {
                        _ = iv.tick() => {
                            if reporter.report(report()).await.is_err() {
                                return;
                            }
                        }
                        ins = reporter.instruction() => {
                            let Ok(Some(ins)) = ins else { return };
                            let mut r = runs.lock().unwrap();
                            for key in ins.remove {
                                r.remove(&key);
                            }
                            for spec in ins.run {
                                r.insert(format!("{}/{}", spec.namespace, spec.name), spec);
                            }
                        }
                    }
                }
            })
        };
        FakeNode { task, runs, load }
    }

    fn running(&self) -> usize {
        self.runs.lock().unwrap().len()
    }

    fn kill(&self) {
        self.task.abort();
    }

    fn set_load(&self, total_cpu_millicores: u64) {
        *self.load.lock().unwrap() = Some(total_cpu_millicores);
    }
}

fn pod(name: &str) -> pb::SubmitPodRequest {
    pb::SubmitPodRequest { spec: Some(pb::PodSpec { namespace: "default".into(), name: name.into(), cpu_millicores: 50, memory_bytes: 32 << 20, ..Default::default() }) }
}

async fn pods(c: &mut SchedulerClient<Channel>) -> Vec<pb::PodStatus> {
    client::list_pods(c, "").await.unwrap()
}

async fn wait_for<F: FnMut() -> bool>(what: &str, limit: Duration, mut f: F) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_beyond_ip_capacity_scale_the_pool_up_and_land_on_the_new_node() {
    let prov = RecordingProvisioner::default();
    let s = Running::start(config(), Box::new(MemoryStore::default()), Some(prov.clone())).await;
    let a = FakeNode::start(&s.url(), "i-a", 10).await;
    let b = FakeNode::start(&s.url(), "i-b", 10).await;
    let mut c = s.client().await;
    // Wait until both nodes are known.
    let t = Instant::now();
    while client::list_nodes(&mut c).await.unwrap().len() < 2 {
        assert!(t.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = Instant::now();
    for k in 0..25 {
        c.submit_pod(pod(&format!("p{k}"))).await.unwrap();
    }
    let all = pods(&mut c).await;
    let pending: Vec<_> = all.iter().filter(|p| p.phase == pb::PodPhase::Pending as i32).collect();
    assert_eq!(pending.len(), 5, "20 IPs on two nodes, CPU to spare");
    assert!(pending[0].message.contains("no shared IP left"), "{}", pending[0].message);
    wait_for("the two nodes to run 20 pods", Duration::from_secs(5), || a.running() + b.running() == 20).await;
    assert!(prov.created.lock().unwrap().is_empty(), "nothing is created before the pending threshold");
    wait_for("a scale-up", Duration::from_secs(5), || !prov.created.lock().unwrap().is_empty()).await;
    let decided = started.elapsed();
    let plan = prov.created.lock().unwrap()[0].clone();
    assert_eq!((plan.pool.as_str(), plan.instance_type.as_str(), plan.count), ("small", "ecs.g7.large", 1));
    // The five were submitted a few ms apart: a round may catch only some beyond the threshold;
    // the next round counts the requested node for the rest.
    assert!((1..=5).contains(&plan.pods), "{plan:?}");
    assert!(decided < Duration::from_secs(3), "decided after {decided:?}");
    // The requested node is counted while it boots: no second request.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(prov.created.lock().unwrap().len(), 1);
    let new = FakeNode::start(&s.url(), "i-new-0-0", 10).await;
    wait_for("the new node to run the 5 pods", Duration::from_secs(5), || new.running() == 5).await;
    assert!(pods(&mut c).await.iter().all(|p| p.phase != pb::PodPhase::Pending as i32));
    for n in [&a, &b, &new] {
        n.kill();
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_stops_reporting_has_its_pods_rescheduled() {
    let mut cfg = config();
    cfg.autoscaler.enabled = false;
    let s = Running::start(cfg, Box::new(MemoryStore::default()), None).await;
    let a = FakeNode::start(&s.url(), "i-a", 10).await;
    let mut c = s.client().await;
    let st = c.submit_pod(pod("web")).await.unwrap().into_inner();
    assert_eq!(st.node, "i-a");
    let b = FakeNode::start(&s.url(), "i-b", 10).await;
    wait_for("i-a to run the pod", Duration::from_secs(5), || a.running() == 1).await;
    a.kill();
    let t = Instant::now();
    loop {
        let st = c.get_pod(pb::GetPodRequest { namespace: "default".into(), name: "web".into() }).await.unwrap().into_inner();
        if st.node == "i-b" {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "pod still on {:?}: {}", st.node, st.message);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_for("i-b to run the pod", Duration::from_secs(5), || b.running() == 1).await;
    let nodes = client::list_nodes(&mut c).await.unwrap();
    let state = |id: &str| nodes.iter().find(|n| n.last_report.as_ref().unwrap().identity.as_ref().unwrap().instance_id == id).unwrap().state.clone();
    assert_eq!((state("i-a").as_str(), state("i-b").as_str()), ("Unknown", "Ready"));
    b.kill();
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_scheduler_keeps_pods_bindings_and_requested_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config();
    cfg.placement.lease_secs = 30;
    let prov = RecordingProvisioner::default();
    let s = Running::start(cfg.clone(), Box::new(JournalStore::open(dir.path()).unwrap()), Some(prov.clone())).await;
    let a = FakeNode::start(&s.url(), "i-a", 2).await;
    let mut c = s.client().await;
    for k in 0..4 {
        c.submit_pod(pod(&format!("p{k}"))).await.unwrap();
    }
    wait_for("a scale-up", Duration::from_secs(5), || !prov.created.lock().unwrap().is_empty()).await;
    let before = pods(&mut c).await;
    a.kill();
    s.stop().await;

    let s = Running::start(cfg, Box::new(JournalStore::open(dir.path()).unwrap()), Some(prov.clone())).await;
    let mut c = s.client().await;
    let after = pods(&mut c).await;
    let view = |v: &[pb::PodStatus]| v.iter().map(|p| (p.spec.as_ref().unwrap().name.clone(), p.node.clone())).collect::<Vec<_>>();
    assert_eq!(view(&after), view(&before));
    assert_eq!(after.iter().filter(|p| p.node == "i-a").count(), 2);
    // The node requested before the restart is still counted: no new request for the 2 pending.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(prov.created.lock().unwrap().len(), 1);
    // The node comes back (a fresh agent) and is sent its two pods again; the new node takes the rest.
    let a = FakeNode::start(&s.url(), "i-a", 2).await;
    let new = FakeNode::start(&s.url(), "i-new-0-0", 10).await;
    wait_for("every pod running", Duration::from_secs(5), || a.running() == 2 && new.running() == 2).await;
    a.kill();
    new.kill();
    s.stop().await;
}

/// A scheduler that starts (or restarts: it keeps no nodes, only their reports) while its pool's
/// instances exist counts them before it plans: no second minimum, nothing beyond the maximum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_starting_scheduler_counts_the_pools_instances_before_it_plans() {
    let mut cfg = config();
    cfg.pool[0].min_nodes = 2;
    cfg.pool[0].max_nodes = 2;
    let provisioner = RecordingProvisioner { existing: vec!["i-old-1".into(), "i-old-2".into()], ..Default::default() };
    let s = Running::start(cfg, Box::new(MemoryStore::default()), Some(provisioner.clone())).await;
    let mut c = s.client().await;
    // Pods that fit nowhere yet: the instances are booting, not missing.
    for i in 0..3 {
        c.submit_pod(pb::SubmitPodRequest { spec: Some(pb::PodSpec { namespace: "d".into(), name: format!("p{i}"), cpu_millicores: 100, ..Default::default() }) }).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(provisioner.created.lock().unwrap().is_empty(), "created {:?} while the pool's instances exist", provisioner.created.lock().unwrap());
    // They report: the pods land on them.
    let _a = FakeNode::start(&s.url(), "i-old-1", 10).await;
    let _b = FakeNode::start(&s.url(), "i-old-2", 10).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while pods(&mut c).await.iter().any(|p| p.node.is_empty()) {
        assert!(std::time::Instant::now() < deadline, "pods not bound: {:?}", pods(&mut c).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(provisioner.created.lock().unwrap().is_empty());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_underused_node_is_emptied_and_deleted_after_the_idle_period() {
    let mut cfg = config();
    cfg.autoscaler.scale_down_after_secs = 1;
    let prov = RecordingProvisioner::default();
    let s = Running::start(cfg, Box::new(MemoryStore::default()), Some(prov.clone())).await;
    let a = FakeNode::start(&s.url(), "i-a", 10).await;
    let b = FakeNode::start(&s.url(), "i-b", 10).await;
    let mut c = s.client().await;
    c.submit_pod(pod("web")).await.unwrap();
    wait_for("a node to be deleted", Duration::from_secs(6), || !prov.deleted.lock().unwrap().is_empty()).await;
    let deleted = prov.deleted.lock().unwrap().clone();
    assert_eq!(deleted.len(), 1, "one node at a time (disruption budget 1), and the last one hosts the pod");
    let (kept, gone) = if deleted[0] == "i-a" { (&b, &a) } else { (&a, &b) };
    // The cloud would stop the deleted node's agent; its late reports are ignored anyway.
    tokio::time::sleep(Duration::from_millis(300)).await;
    gone.kill();
    let st = c.get_pod(pb::GetPodRequest { namespace: "default".into(), name: "web".into() }).await.unwrap().into_inner();
    assert_ne!(st.node, deleted[0]);
    wait_for("the kept node to run the pod", Duration::from_secs(3), || kept.running() == 1).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(prov.deleted.lock().unwrap().len(), 1, "the node with the pod stays: nothing else could host it");
    a.kill();
    b.kill();
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_wanting_a_disk_where_no_disk_slot_is_left_scales_up_instead_of_failing() {
    let prov = RecordingProvisioner::default();
    let s = Running::start(config(), Box::new(MemoryStore::default()), Some(prov.clone())).await;
    let a = FakeNode::with_disks(&s.url(), "i-a", 10, 1).await;
    let b = FakeNode::with_disks(&s.url(), "i-b", 10, 1).await;
    let mut c = s.client().await;
    let disk = pb::VolumeSpec { name: "data".into(), kind: pb::VolumeKind::Disk as i32, mount_path: "/data".into(), ..Default::default() };
    let mut last = pb::PodStatus::default();
    for k in 0..3 {
        let mut req = pod(&format!("db{k}"));
        req.spec.as_mut().unwrap().volumes.push(disk.clone());
        last = c.submit_pod(req).await.unwrap().into_inner();
    }
    assert_eq!(last.phase, pb::PodPhase::Pending as i32, "two disk slots for three disks");
    assert!(last.message.contains("no disk slot left"), "{}", last.message);
    // A pod without a disk still fits on the nodes.
    assert_eq!(c.submit_pod(pod("web")).await.unwrap().into_inner().phase, pb::PodPhase::Bound as i32);
    wait_for("a scale-up for the disk", Duration::from_secs(5), || !prov.created.lock().unwrap().is_empty()).await;
    let plan = prov.created.lock().unwrap()[0].clone();
    assert_eq!((plan.count, plan.pods), (1, 1));
    let new = FakeNode::start(&s.url(), "i-new-0-0", 10).await;
    wait_for("the new node to run the pod with the disk", Duration::from_secs(5), || new.running() == 1).await;
    for n in [&a, &b, &new] {
        n.kill();
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_whose_scale_up_fails_is_left_out_and_another_serves_the_pods() {
    let mut cfg = config();
    cfg.autoscaler.expander = berth_scheduler::autoscaler::Expander::Priority;
    cfg.pool[0].priority = 10;
    let mut backup = cfg.pool[0].clone();
    backup.name = "backup".into();
    backup.priority = 1;
    cfg.pool.push(backup);
    let prov = RecordingProvisioner { failing_pool: Some("small".into()), ..Default::default() };
    let s = Running::start(cfg, Box::new(MemoryStore::default()), Some(prov.clone())).await;
    let mut c = s.client().await;
    c.submit_pod(pod("web")).await.unwrap();
    wait_for("a scale-up in the backup pool", Duration::from_secs(5), || !prov.created.lock().unwrap().is_empty()).await;
    assert_eq!(prov.created.lock().unwrap()[0].pool, "backup");
    assert_eq!(*prov.failed.lock().unwrap(), 1, "the failing pool was asked once, then left out");
    s.stop().await;
}

/// A replica that never leads: another one, at `leader`, does.
struct Following {
    leader: tokio::sync::watch::Sender<Option<String>>,
}

impl berth_scheduler::replica::Terms for Following {
    async fn next(&mut self) -> Result<berth_scheduler::replica::Term, String> {
        std::future::pending().await
    }

    fn leader(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.leader.subscribe()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_names_the_leader_and_clients_find_it() {
    let leader = Running::start(config(), Box::new(MemoryStore::default()), None).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let follower_addr = listener.local_addr().unwrap();
    let mut cfg = config();
    cfg.server.listen = follower_addr.to_string();
    let terms = Following { leader: tokio::sync::watch::channel(Some(leader.addr.to_string())).0 };
    let replica = server::replica_of(&cfg, &terms);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server::serve_replica(cfg, replica, terms, None::<RecordingProvisioner>, listener, async {
        let _ = stopped.await;
    }));
    let mut c = SchedulerClient::connect(format!("http://{follower_addr}")).await.unwrap();
    let status = c.get_leader(pb::GetLeaderRequest {}).await.unwrap().into_inner();
    assert!(!status.leads);
    assert_eq!(status.leader, leader.addr.to_string());
    let refused = c.submit_pod(pod("p")).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    assert_eq!(refused.metadata().get(berth_scheduler::replica::LEADER_METADATA).unwrap().to_str().unwrap(), leader.addr.to_string());
    assert!(refused.message().contains("does not lead"), "{}", refused.message());
    // A client given only the follower ends up at the leader.
    let endpoints = berth_scheduler_client::endpoints(&format!("{follower_addr}"));
    let (at, channel) = berth_scheduler_client::connect_leader(&endpoints, Duration::from_secs(2)).await.unwrap();
    assert_eq!(at, leader.url());
    SchedulerClient::new(channel).submit_pod(pod("p")).await.unwrap();
    assert_eq!(pods(&mut leader.client().await).await.len(), 1);
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    leader.stop().await;
}

fn large_pod(name: &str, command_bytes: usize) -> pb::SubmitPodRequest {
    let mut req = pod(name);
    // A long command line: the one field without a length rule below the spec's cap.
    req.spec.as_mut().unwrap().command = vec!["sh".into(), "-c".into(), "x".repeat(command_bytes)];
    req
}

/// Waits until the scheduler has the node as Ready: a node's first report is applied after its
/// stream opens, so a pod submitted at once may find no node yet.
async fn wait_ready(c: &mut SchedulerClient<Channel>, id: &str) {
    let t = Instant::now();
    while state_of(&client::list_nodes(c).await.unwrap(), id) != "Ready" {
        assert!(t.elapsed() < Duration::from_secs(5), "node {id} never became Ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn state_of(nodes: &[pb::NodeState], id: &str) -> String {
    nodes.iter().find(|n| n.last_report.as_ref().unwrap().identity.as_ref().unwrap().instance_id == id).map(|n| n.state.clone()).unwrap_or_default()
}

/// 40 pods of 200 KiB specs (8 MiB together, twice the gRPC limit) on one node: its reports
/// carry keys only, and a fresh stream gets every pod in instructions under 1 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_holding_forty_large_pods_keeps_reporting_and_gets_them_all_again_on_a_new_stream() {
    let mut cfg = config();
    cfg.autoscaler.enabled = false;
    let s = Running::start(cfg, Box::new(MemoryStore::default()), None).await;
    let a = FakeNode::start(&s.url(), "i-a", 64).await;
    let mut c = s.client().await;
    wait_ready(&mut c, "i-a").await;
    for k in 0..40 {
        let st = c.submit_pod(large_pod(&format!("p{k:02}"), 200 << 10)).await.unwrap().into_inner();
        assert_eq!(st.node, "i-a", "{}", st.message);
    }
    wait_for("i-a to run the 40 pods", Duration::from_secs(10), || a.running() == 40).await;
    // The agent restarts: a new stream, numbered from 1, is sent everything bound to the node.
    a.kill();
    let again = FakeNode::start(&s.url(), "i-a", 64).await;
    wait_for("the restarted i-a to be sent the 40 pods", Duration::from_secs(10), || again.running() == 40).await;
    // Two leases later it is still Ready and its pods have stayed.
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    assert_eq!(state_of(&client::list_nodes(&mut c).await.unwrap(), "i-a"), "Ready");
    let all = pods(&mut c).await;
    assert_eq!(all.len(), 40);
    assert!(all.iter().all(|p| p.node == "i-a" && p.phase == pb::PodPhase::Running as i32), "{:?}", all.iter().map(|p| (&p.node, p.phase)).collect::<Vec<_>>());
    again.kill();
    s.stop().await;
}

/// A report past the scheduler's decode limit is answered, not dropped: the agent hears
/// RESOURCE_EXHAUSTED with what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_too_large_to_take_is_answered_with_resource_exhausted() {
    let mut cfg = config();
    cfg.autoscaler.enabled = false;
    let s = Running::start(cfg, Box::new(MemoryStore::default()), None).await;
    let identity = pb::NodeIdentity { instance_id: "i-big".into(), pool: "small".into(), ..Default::default() };
    let small = pb::NodeReport { identity: Some(identity.clone()), ..Default::default() };
    let mut reporter = NodeReporter::connect(&s.url(), small).await.unwrap();
    let huge = pb::PodReport { namespace: "d".into(), name: "n".repeat(client::REPORT_LIMIT_BYTES + 1), ..Default::default() };
    reporter.report(pb::NodeReport { identity: Some(identity), pods: vec![huge], ..Default::default() }).await.unwrap();
    assert!(reporter.last_report().0 > client::REPORT_LIMIT_BYTES);
    let refused = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match reporter.instruction().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the stream closed without a status"),
                Err(e) => return e,
            }
        }
    })
    .await
    .expect("an answer within 5 s");
    assert!(refused.report_too_big(), "{refused}");
    assert!(refused.to_string().contains("too large") && refused.to_string().contains("delete such pods"), "{refused}");
    s.stop().await;
}

/// More pods than a page: the client's loop lists each exactly once; a bad token is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_pods_than_a_page_are_each_listed_once_through_the_pages() {
    let mut cfg = config();
    cfg.autoscaler.enabled = false;
    let s = Running::start(cfg, Box::new(MemoryStore::default()), None).await;
    let mut c = s.client().await;
    for k in 0..(berth_scheduler::page::DEFAULT_PAGE_SIZE + 120) {
        c.submit_pod(pod(&format!("p{k:04}"))).await.unwrap();
    }
    let first = c.list_pods(pb::ListPodsRequest::default()).await.unwrap().into_inner();
    assert_eq!(first.pods.len(), berth_scheduler::page::DEFAULT_PAGE_SIZE as usize);
    assert!(!first.next_page_token.is_empty());
    let names: Vec<String> = pods(&mut c).await.into_iter().map(|p| p.spec.unwrap().name).collect();
    let expected: Vec<String> = (0..(berth_scheduler::page::DEFAULT_PAGE_SIZE + 120)).map(|k| format!("p{k:04}")).collect();
    assert_eq!(names, expected);
    let bad = c.list_pods(pb::ListPodsRequest { page_token: "not-a-token".into(), ..Default::default() }).await.unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument, "{bad}");
    assert!(bad.message().contains("next_page_token"), "{}", bad.message());
}

fn scheduler_alone() -> SchedulerConfig {
    let mut cfg = config();
    cfg.autoscaler.enabled = false;
    cfg
}

/// Each bad input is refused at the edge (INVALID_ARGUMENT naming the field), and none is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_pod_refuses_a_bad_spec_naming_the_field_and_stores_nothing() {
    let s = Running::start(scheduler_alone(), Box::new(MemoryStore::default()), None).await;
    let mut c = s.client().await;
    let disk = |mount_path: &str, size: &str| pb::VolumeSpec { name: "data".into(), kind: pb::VolumeKind::Disk as i32, mount_path: mount_path.into(), parameters: [("size".to_string(), size.to_string())].into(), ..Default::default() };
    type Change = fn(&mut pb::PodSpec);
    let rows: Vec<(&str, Change, &str)> = vec![
        ("a 3 MiB name", |s| s.name = "a".repeat(3 << 20), "spec = "),
        ("a name with a space", |s| s.name = "my pod".into(), "spec.name"),
        ("a name with a newline", |s| s.name = "web\n1".into(), "spec.name"),
        ("a name with NUL", |s| s.name = "web\0".into(), "spec.name"),
        ("an upper-case name", |s| s.name = "Web".into(), "spec.name"),
        ("an upper-case namespace", |s| s.namespace = "Default".into(), "spec.namespace"),
        ("no namespace", |s| s.namespace.clear(), "spec.namespace"),
        ("network mode 99", |s| s.network_mode = 99, "spec.network_mode"),
        ("volume kind 99", |s| s.volumes[0].kind = 99, "spec.volumes[0].kind"),
        ("a climbing mount path", |s| s.volumes[0].mount_path = "../../etc".into(), "spec.volumes[0].mount_path"),
        ("a relative mount path", |s| s.volumes[0].mount_path = "relative".into(), "spec.volumes[0].mount_path"),
        ("disk size 0", |s| _ = s.volumes[0].parameters.insert("size".into(), "0".into()), "spec.volumes[0].parameters[\"size\"]"),
        ("a disk beyond 64 TiB", |s| _ = s.volumes[0].parameters.insert("size".into(), "65Ti".into()), "spec.volumes[0].parameters[\"size\"]"),
        ("CPU 2^64-1", |s| s.cpu_millicores = u64::MAX, "no pool can ever host it: the largest instance type of the configured pools is ecs.g7.large"),
        ("a bad label key", |s| _ = s.labels.insert("my app".into(), "x".into()), "spec.labels"),
        ("a bad selector value", |s| _ = s.pool_selector.insert("pool".into(), "a b".into()), "spec.pool_selector[\"pool\"]"),
        ("a bad security group", |s| s.security_group_ids.push("group-1".into()), "spec.security_group_ids[0]"),
        ("a bad vSwitch", |s| s.vswitch_id = "zone-a".into(), "spec.vswitch_id"),
        ("a command entry with NUL", |s| s.command.push("a\0b".into()), "spec.command[0]"),
    ];
    for (what, change, named) in rows {
        let mut req = pod("web");
        let spec = req.spec.as_mut().unwrap();
        spec.volumes.push(disk("/data", "20Gi"));
        change(spec);
        let err = c.submit_pod(req).await.expect_err(what);
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{what}: {err:?}");
        assert!(err.message().contains(named), "{what}: {:?} does not name {named:?}", err.message());
        assert!(err.message().len() < 1000, "{what}: the message stays short");
    }
    let err = c.submit_pod(pb::SubmitPodRequest { spec: None }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(pods(&mut c).await.is_empty(), "nothing refused is stored");
    s.stop().await;
}

/// A lost reply makes a client submit again: the same spec answers the pod's status, another
/// spec under the name is refused naming what differs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_submit_answers_the_status_and_another_spec_is_refused() {
    let s = Running::start(scheduler_alone(), Box::new(MemoryStore::default()), None).await;
    let a = FakeNode::start(&s.url(), "i-a", 10).await;
    let mut c = s.client().await;
    wait_ready(&mut c, "i-a").await;
    let first = c.submit_pod(pod("web")).await.unwrap().into_inner();
    assert_eq!((first.phase, first.node.as_str()), (pb::PodPhase::Bound as i32, "i-a"));
    let again = c.submit_pod(pod("web")).await.unwrap().into_inner();
    assert_eq!((again.phase, again.node.as_str()), (pb::PodPhase::Bound as i32, "i-a"));
    // A disk pod is pinned to its node's zone at its bind; its original spec is still a retry.
    let mut db = pod("db");
    db.spec.as_mut().unwrap().volumes.push(pb::VolumeSpec { name: "data".into(), kind: pb::VolumeKind::Disk as i32, mount_path: "/data".into(), ..Default::default() });
    c.submit_pod(db.clone()).await.unwrap();
    let again = c.submit_pod(db).await.unwrap().into_inner();
    assert_eq!(again.spec.unwrap().pool_selector.get("zone").map(String::as_str), Some("zone-a"));
    let mut other = pod("web");
    other.spec.as_mut().unwrap().cpu_millicores = 500;
    let err = c.submit_pod(other).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err:?}");
    assert!(err.message().contains("default/web") && err.message().contains("cpu_millicores"), "{}", err.message());
    assert_eq!(pods(&mut c).await.len(), 2);
    a.kill();
    s.stop().await;
}

/// Bytes sent as they are, to call the service with what no client of cluster.proto would send.
#[derive(Clone, Copy, Default)]
struct RawBytes;

impl tonic::codec::Codec for RawBytes {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawBytes;
    type Decoder = RawBytes;

    fn encoder(&mut self) -> RawBytes {
        RawBytes
    }

    fn decoder(&mut self) -> RawBytes {
        RawBytes
    }
}

impl tonic::codec::Encoder for RawBytes {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, buf: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        prost::bytes::BufMut::put_slice(buf, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawBytes {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(&mut self, buf: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        use prost::bytes::Buf as _;
        Ok(Some(buf.copy_to_bytes(buf.remaining()).to_vec()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_submit_is_invalid_argument() {
    let s = Running::start(scheduler_alone(), Box::new(MemoryStore::default()), None).await;
    let channel = Channel::from_shared(s.url()).unwrap().connect().await.unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    // A spec field (1) claiming 5 bytes and carrying 1; a varint that never ends.
    for garbage in [vec![0x0a, 0x05, 0x01], vec![0xff; 12]] {
        grpc.ready().await.unwrap();
        let path = tonic::codegen::http::uri::PathAndQuery::from_static("/berth.cluster.v1.Scheduler/SubmitPod");
        let err = grpc.unary(tonic::Request::new(garbage.clone()), path, RawBytes).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{garbage:?}: {err:?}");
        assert!(err.message().contains("decode"), "{}", err.message());
    }
    let mut c = s.client().await;
    assert!(pods(&mut c).await.is_empty());
    s.stop().await;
}

fn workload(replicas: u32, command: &str, surge: u32, unavailable: u32) -> pb::Workload {
    let labels: std::collections::HashMap<String, String> = [("app".to_string(), "web".to_string())].into();
    pb::Workload {
        namespace: "default".into(),
        name: "web".into(),
        replicas,
        selector: Some(pb::LabelSelector { match_labels: labels.clone(), ..Default::default() }),
        rolling_update: Some(pb::RollingUpdate { max_surge: Some(pb::IntOrPercent { value: surge, percent: false }), max_unavailable: Some(pb::IntOrPercent { value: unavailable, percent: false }) }),
        template: Some(pb::PodSpec { cpu_millicores: 50, memory_bytes: 32 << 20, labels, command: vec![command.into()], ..Default::default() }),
        ..Default::default()
    }
}

async fn workload_status(c: &mut SchedulerClient<Channel>) -> pb::WorkloadStatus {
    c.get_workload(pb::GetWorkloadRequest { namespace: "default".into(), name: "web".into() }).await.unwrap().into_inner()
}

async fn wait_rolled_out(c: &mut SchedulerClient<Channel>, what: &str) -> pb::WorkloadStatus {
    let t = Instant::now();
    loop {
        let st = workload_status(c).await;
        if st.rolled_out {
            return st;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "timed out waiting for {what}: {st:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_keeps_ten_replicas_through_a_node_kill() {
    let mut cfg = config();
    cfg.autoscaler.enabled = false;
    let s = Running::start(cfg, Box::new(MemoryStore::default()), None).await;
    let nodes = [FakeNode::start(&s.url(), "i-a", 10).await, FakeNode::start(&s.url(), "i-b", 10).await, FakeNode::start(&s.url(), "i-c", 10).await];
    let mut c = s.client().await;
    while client::list_nodes(&mut c).await.unwrap().len() < 3 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.apply_workload(pb::ApplyWorkloadRequest { workload: Some(workload(10, "v1", 1, 0)) }).await.unwrap();
    let st = wait_rolled_out(&mut c, "10 Running").await;
    assert_eq!((st.running, st.pods), (10, 10));
    let (victim, held) = nodes.iter().enumerate().map(|(i, n)| (i, n.running())).max_by_key(|(_, n)| *n).unwrap();
    assert!(held > 0 && nodes.iter().map(FakeNode::running).sum::<usize>() == 10);
    nodes[victim].kill();
    let victim_id = ["i-a", "i-b", "i-c"][victim];
    let t = Instant::now();
    loop {
        let all = pods(&mut c).await;
        assert!(all.len() <= 10, "a node kill never makes more than 10 pods: {}", all.len());
        let running_elsewhere = all.iter().filter(|p| p.phase == pb::PodPhase::Running as i32 && p.node != victim_id).count();
        if running_elsewhere == 10 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "only {running_elsewhere} Running off {victim_id}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let survivors: usize = nodes.iter().enumerate().filter(|(i, _)| *i != victim).map(|(_, n)| n.running()).sum();
    assert_eq!(survivors, 10, "the surviving nodes run all 10");
    // Deleting the workload deletes its pods.
    c.delete_workload(pb::GetWorkloadRequest { namespace: "default".into(), name: "web".into() }).await.unwrap();
    assert!(pods(&mut c).await.is_empty());
    assert_eq!(c.get_workload(pb::GetWorkloadRequest { namespace: "default".into(), name: "web".into() }).await.unwrap_err().code(), tonic::Code::NotFound);
    for n in &nodes {
        n.kill();
    }
    s.stop().await;
}

/// Follows every change of the workload's pods (WatchPods, in revision order) during a rollout
/// and an undo, and asserts that at no revision fewer than replicas - maxUnavailable are Running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_never_has_fewer_than_replicas_minus_max_unavailable_running() {
    let mut cfg = config();
    cfg.autoscaler.enabled = false;
    let s = Running::start(cfg, Box::new(MemoryStore::default()), None).await;
    let nodes = [FakeNode::start(&s.url(), "i-a", 20).await, FakeNode::start(&s.url(), "i-b", 20).await];
    let mut c = s.client().await;
    while client::list_nodes(&mut c).await.unwrap().len() < 2 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (replicas, surge, unavailable) = (10, 2, 3);
    c.apply_workload(pb::ApplyWorkloadRequest { workload: Some(workload(replicas, "v1", surge, unavailable)) }).await.unwrap();
    wait_rolled_out(&mut c, "the first revision").await;
    let mut watch = c.watch_pods(pb::WatchPodsRequest { namespace: "default".into(), ..Default::default() }).await.unwrap().into_inner();
    let first = watch.message().await.unwrap().unwrap();
    let mut phases: BTreeMap<String, (i32, String)> = pods(&mut c).await.into_iter().map(|p| (p.spec.clone().unwrap().name, (p.phase, p.spec.unwrap().labels["berth.io/revision"].clone()))).collect();
    assert_eq!(phases.values().filter(|(ph, _)| *ph == pb::PodPhase::Running as i32).count(), replicas as usize);
    let mut last = first.revision;
    let mut lowest = usize::MAX;
    let mut most = 0;
    for (step, command) in [(2, "v2"), (3, "undo")] {
        let st = if command == "undo" {
            c.undo_workload(pb::GetWorkloadRequest { namespace: "default".into(), name: "web".into() }).await.unwrap().into_inner()
        } else {
            c.apply_workload(pb::ApplyWorkloadRequest { workload: Some(workload(replicas, command, surge, unavailable)) }).await.unwrap().into_inner()
        };
        let w = st.workload.unwrap();
        assert_eq!(w.revision, step);
        if command == "undo" {
            assert_eq!(w.template.unwrap().command, ["v1"], "undo goes back to the first template");
        }
        let t = Instant::now();
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), watch.message()).await.expect("watch events").unwrap().unwrap();
            for e in msg.events {
                assert!(e.revision > last);
                last = e.revision;
                let p = e.pod.unwrap();
                let spec = p.spec.unwrap();
                if e.r#type == pb::PodEventType::Deleted as i32 {
                    phases.remove(&spec.name);
                } else {
                    phases.insert(spec.name.clone(), (p.phase, spec.labels["berth.io/revision"].clone()));
                }
                let running = phases.values().filter(|(ph, _)| *ph == pb::PodPhase::Running as i32).count();
                lowest = lowest.min(running);
                most = most.max(phases.len());
                assert!(running >= (replicas - unavailable) as usize, "at revision {last} only {running} Running: {phases:?}");
                assert!(phases.len() <= (replicas + surge) as usize, "at revision {last} {} pods: {phases:?}", phases.len());
            }
            let done = phases.len() == replicas as usize && phases.values().all(|(ph, rev)| *ph == pb::PodPhase::Running as i32 && *rev == step.to_string());
            if done {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(10), "rollout to revision {step} not done: {phases:?}");
        }
        assert!(wait_rolled_out(&mut c, "the rollout").await.rolled_out);
    }
    assert!(lowest < replicas as usize || most > replicas as usize, "the rollout replaced pods (lowest {lowest}, most {most})");
    for n in &nodes {
        n.kill();
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_that_does_not_validate_is_refused_naming_the_field() {
    let s = Running::start(config(), Box::new(MemoryStore::default()), None).await;
    let mut c = s.client().await;
    let mut w = workload(3, "v1", 1, 0);
    w.selector.as_mut().unwrap().match_labels.insert("tier".into(), "front".into());
    let e = c.apply_workload(pb::ApplyWorkloadRequest { workload: Some(w) }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("spec.selector.matchLabels[\"tier\"]"), "{}", e.message());
    let mut w = workload(3, "v1", 0, 0);
    w.template.as_mut().unwrap().cpu_millicores = 1 << 40;
    let e = c.apply_workload(pb::ApplyWorkloadRequest { workload: Some(w) }).await.unwrap_err();
    assert!(e.message().contains("maxSurge 0, maxUnavailable 0"), "{}", e.message());
    let mut w = workload(3, "v1", 1, 0);
    w.template.as_mut().unwrap().network_mode = 9;
    let e = c.apply_workload(pb::ApplyWorkloadRequest { workload: Some(w) }).await.unwrap_err();
    assert!(e.message().contains("spec.template.spec.network_mode = 9"), "{}", e.message());
    let e = c.scale_workload(pb::ScaleWorkloadRequest { namespace: "default".into(), name: "web".into(), replicas: 2 }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    s.stop().await;
}

fn cpu_hpa(min: u32, max: u32, window_secs: u32) -> pb::HorizontalPodAutoscaler {
    pb::HorizontalPodAutoscaler {
        namespace: "default".into(),
        name: "web".into(),
        target: "web".into(),
        min_replicas: min,
        max_replicas: max,
        metrics: vec![pb::HpaMetric { source: pb::MetricSource::CpuUtilization as i32, external_name: String::new(), target: Some(pb::MetricTarget { average_utilization: 50, ..Default::default() }) }],
        // Up to 10 pods a second (Kubernetes' default allows 4 or 100 % per 15 s).
        scale_up: Some(pb::ScalingRules { stabilization_window_secs: Some(0), select_policy: pb::SelectPolicy::Max as i32, policies: vec![pb::ScalingPolicy { kind: pb::ScalingPolicyKind::Pods as i32, value: 10, period_secs: 1 }] }),
        scale_down: Some(pb::ScalingRules { stabilization_window_secs: Some(window_secs), ..Default::default() }),
        prediction: None,
    }
}

async fn replicas(c: &mut SchedulerClient<Channel>) -> u32 {
    workload_status(c).await.workload.unwrap().replicas
}

/// Waits until the workload asks for `want` replicas; answers how long that took.
async fn wait_replicas(c: &mut SchedulerClient<Channel>, want: u32, limit: Duration) -> Duration {
    let t = Instant::now();
    loop {
        let n = replicas(c).await;
        if n == want {
            return t.elapsed();
        }
        assert!(t.elapsed() < limit, "replicas {n}, not {want}, after {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An HPA on CPU (50 % of the pods' 50m request): a load step from 40m to 200m (shared by the
/// pods) takes the workload from 2 to 8 replicas within one interval; when the load stops it falls
/// to the minimum once the 2 s stabilisation window has passed, not before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hpa_scales_a_workload_up_on_cpu_and_down_after_the_window() {
    let mut cfg = config();
    cfg.autoscaler.enabled = false;
    cfg.hpa.interval_ms = 300;
    let s = Running::start(cfg, Box::new(MemoryStore::default()), None).await;
    let node = FakeNode::start(&s.url(), "i-a", 20).await;
    let mut c = s.client().await;
    while client::list_nodes(&mut c).await.unwrap().is_empty() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.apply_workload(pb::ApplyWorkloadRequest { workload: Some(workload(2, "v1", 1, 0)) }).await.unwrap();
    wait_rolled_out(&mut c, "2 Running").await;
    let get = pb::GetWorkloadRequest { namespace: "default".into(), name: "web".into() };
    // 20m each: 40 % → ceil(2 × 0.8) = 2, no change.
    node.set_load(40);
    c.apply_horizontal_pod_autoscaler(pb::ApplyHorizontalPodAutoscalerRequest { hpa: Some(cpu_hpa(1, 10, 2)) }).await.unwrap();
    let t = Instant::now();
    while c.get_horizontal_pod_autoscaler(get.clone()).await.unwrap().into_inner().current_metrics.first().is_none_or(|m| m.current_milli != 40_000) {
        assert!(t.elapsed() < Duration::from_secs(2), "the HPA did not read 40 %");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(replicas(&mut c).await, 2);
    // 100m each: 200 % → ceil(2 × 4) = 8.
    node.set_load(200);
    let took = wait_replicas(&mut c, 8, Duration::from_secs(2)).await;
    assert!(took < Duration::from_millis(700), "the scale-up took {took:?}, more than the interval and a report");
    let st = c.get_horizontal_pod_autoscaler(get.clone()).await.unwrap().into_inner();
    assert_eq!((st.desired_replicas, st.current_metrics[0].current_milli), (8, 200_000), "{st:?}");
    assert!(st.last_scale_ms > 0 && st.conditions.iter().any(|c| c.kind == "ScalingLimited" && !c.status), "{st:?}");
    wait_rolled_out(&mut c, "8 Running").await;
    // 25m each: 50 %, on target: 8 stays.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(replicas(&mut c).await, 8);
    // Idle: the 2 s window holds 8 for its length, then the minimum.
    node.set_load(0);
    let took = wait_replicas(&mut c, 1, Duration::from_secs(5)).await;
    assert!(took >= Duration::from_millis(1500), "scaled down after {took:?}, within the 2 s window");
    let st = c.get_horizontal_pod_autoscaler(get).await.unwrap().into_inner();
    assert!(st.conditions.iter().any(|c| c.kind == "ScalingLimited" && c.status && c.reason == "TooFewReplicas"), "{:?}", st.conditions);
    node.kill();
    s.stop().await;
}

/// A cron job a few seconds ahead sets the size on time; with an HPA on the workload it sets the
/// HPA's minimum instead, and the larger of the two wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cron_autoscaler_raises_replicas_on_time_and_the_larger_of_it_and_the_hpa_wins() {
    let mut cfg = config();
    cfg.autoscaler.enabled = false;
    cfg.hpa.interval_ms = 60_000;
    let s = Running::start(cfg, Box::new(MemoryStore::default()), None).await;
    let node = FakeNode::start(&s.url(), "i-a", 20).await;
    let mut c = s.client().await;
    while client::list_nodes(&mut c).await.unwrap().is_empty() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.apply_workload(pb::ApplyWorkloadRequest { workload: Some(workload(2, "v1", 1, 0)) }).await.unwrap();
    wait_rolled_out(&mut c, "2 Running").await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    // Two seconds ahead, in a zone 8 hours from UTC (the schedule names its local second).
    let at = now.as_secs() + 2;
    let local = (at + 8 * 3600) % 86_400;
    let schedule = format!("{} {} {} * * *", local % 60, local / 60 % 60, local / 3600);
    let cron = pb::CronHorizontalPodAutoscaler { namespace: "default".into(), name: "evening".into(), target: "web".into(), time_zone: "Asia/Shanghai".into(), exclude_dates: vec![], jobs: vec![pb::CronJob { name: "up".into(), schedule, target_size: 6, run_once: true }] };
    c.apply_cron_horizontal_pod_autoscaler(pb::ApplyCronHorizontalPodAutoscalerRequest { cron: Some(cron.clone()) }).await.unwrap();
    wait_replicas(&mut c, 6, Duration::from_secs(5)).await;
    let fired = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    assert!(fired.as_millis() >= u128::from(at) * 1000, "fired at {fired:?}, before {at} s");
    assert!(fired.as_millis() < u128::from(at) * 1000 + 500, "fired at {fired:?}, late for {at} s");
    let st = c.get_cron_horizontal_pod_autoscaler(pb::GetWorkloadRequest { namespace: "default".into(), name: "evening".into() }).await.unwrap().into_inner();
    assert_eq!((st.jobs[0].next_run_ms, st.jobs[0].message.as_str()), (0, "set workload web's replicas to 6"));

    // With an HPA (its pods at their target, 25m each of 150m: it keeps 6): a job for 8 raises
    // its minimum to 8, applied at once; a later job for 3 lowers the minimum, and the HPA's own
    // count (150m over 8 pods is 37 %: 6) wins over 3.
    wait_rolled_out(&mut c, "6 Running").await;
    node.set_load(150);
    c.apply_horizontal_pod_autoscaler(pb::ApplyHorizontalPodAutoscalerRequest { hpa: Some(cpu_hpa(1, 10, 0)) }).await.unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let (up, down) = ((now + 2 + 8 * 3600) % 86_400, (now + 5 + 8 * 3600) % 86_400);
    let at_sec = |l: u64| format!("{} {} {} * * *", l % 60, l / 60 % 60, l / 3600);
    let jobs = vec![pb::CronJob { name: "up".into(), schedule: at_sec(up), target_size: 8, run_once: true }, pb::CronJob { name: "down".into(), schedule: at_sec(down), target_size: 3, run_once: true }];
    c.apply_cron_horizontal_pod_autoscaler(pb::ApplyCronHorizontalPodAutoscalerRequest { cron: Some(pb::CronHorizontalPodAutoscaler { jobs, ..cron }) }).await.unwrap();
    wait_replicas(&mut c, 8, Duration::from_secs(5)).await;
    let hpa = |c: &mut SchedulerClient<Channel>| {
        let mut c = c.clone();
        async move { c.get_horizontal_pod_autoscaler(pb::GetWorkloadRequest { namespace: "default".into(), name: "web".into() }).await.unwrap().into_inner().hpa.unwrap() }
    };
    assert_eq!(hpa(&mut c).await.min_replicas, 8);
    wait_rolled_out(&mut c, "8 Running").await;
    wait_replicas(&mut c, 6, Duration::from_secs(5)).await;
    assert_eq!(hpa(&mut c).await.min_replicas, 3, "the second job set the minimum");
    node.kill();
    s.stop().await;
}

#[tokio::test]
async fn autoscalers_that_do_not_validate_are_refused_naming_the_field() {
    let s = Running::start(scheduler_alone(), Box::new(MemoryStore::default()), None).await;
    let mut c = s.client().await;
    let refused = |st: tonic::Status| (st.code(), st.message().to_string());
    let mut bad = cpu_hpa(5, 3, 0);
    let (code, msg) = refused(c.apply_horizontal_pod_autoscaler(pb::ApplyHorizontalPodAutoscalerRequest { hpa: Some(bad.clone()) }).await.unwrap_err());
    assert_eq!(code, tonic::Code::InvalidArgument);
    assert!(msg.contains("spec.minReplicas = \"5\": may not be above maxReplicas (3)"), "{msg}");
    bad.min_replicas = 1;
    bad.metrics[0].target = None;
    let (_, msg) = refused(c.apply_horizontal_pod_autoscaler(pb::ApplyHorizontalPodAutoscalerRequest { hpa: Some(bad) }).await.unwrap_err());
    assert!(msg.contains("spec.metrics[0].resource.target.averageUtilization"), "{msg}");
    c.apply_horizontal_pod_autoscaler(pb::ApplyHorizontalPodAutoscalerRequest { hpa: Some(cpu_hpa(1, 3, 0)) }).await.unwrap();
    let second = pb::HorizontalPodAutoscaler { name: "other".into(), ..cpu_hpa(1, 3, 0) };
    let (code, msg) = refused(c.apply_horizontal_pod_autoscaler(pb::ApplyHorizontalPodAutoscalerRequest { hpa: Some(second) }).await.unwrap_err());
    assert_eq!(code, tonic::Code::FailedPrecondition);
    assert!(msg.contains("scaled by HPA web already"), "{msg}");
    let cron = pb::CronHorizontalPodAutoscaler { namespace: "default".into(), name: "c".into(), target: "web".into(), time_zone: "Mars/Base".into(), exclude_dates: vec![], jobs: vec![pb::CronJob { name: "up".into(), schedule: "0 0 8 * * *".into(), target_size: 2, run_once: false }] };
    let (_, msg) = refused(c.apply_cron_horizontal_pod_autoscaler(pb::ApplyCronHorizontalPodAutoscalerRequest { cron: Some(cron.clone()) }).await.unwrap_err());
    assert!(msg.contains("spec.timeZone = \"Mars/Base\""), "{msg}");
    let mut cron = pb::CronHorizontalPodAutoscaler { time_zone: String::new(), ..cron };
    cron.jobs[0].schedule = "0 61 8 * * *".into();
    let (_, msg) = refused(c.apply_cron_horizontal_pod_autoscaler(pb::ApplyCronHorizontalPodAutoscalerRequest { cron: Some(cron) }).await.unwrap_err());
    assert!(msg.contains("spec.jobs[0].schedule = \"0 61 8 * * *\": field 2 (minutes)"), "{msg}");
    let (_, msg) = refused(c.set_external_metric(pb::SetExternalMetricRequest { namespace: "default".into(), name: "Queue Depth".into(), value_milli: 1 }).await.unwrap_err());
    assert!(msg.contains("name = \"Queue Depth\""), "{msg}");
    assert_eq!(c.get_horizontal_pod_autoscaler(pb::GetWorkloadRequest { namespace: "default".into(), name: "nope".into() }).await.unwrap_err().code(), tonic::Code::NotFound);
    s.stop().await;
}

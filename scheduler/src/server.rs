//! The `Scheduler` gRPC service of cluster.proto, and the loops around the pure state: a tick that
//! expires leases and retries pending pods, and the autoscaler loop that executes plans through a
//! [`NodeProvisioner`].
//!
//! Every change is appended to the store (one sync per batch) before any answer or instruction
//! leaves, so what a client or agent was told survives a restart. The clock is Unix time in ms,
//! the same one the store's request times use.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use berth_proto::cluster::v1 as pb;
use berth_proto::cluster::v1::scheduler_server::{Scheduler, SchedulerServer};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

use crate::autoscaler::driver::NodeProvisioner;
use crate::autoscaler::{self, ScaleDownSettings};
use crate::cluster::{Cluster, SubmitError};
use crate::config::SchedulerConfig;
use crate::placement::pod_key;
use crate::store::{Event, RequestedNode, Store};
use crate::validation;

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

struct Core {
    cluster: Cluster,
    store: Box<dyn Store>,
}

impl Core {
    fn commit(&mut self, events: &[Event]) -> Result<(), Status> {
        self.store.append(events).map_err(|e| {
            tracing::error!(error = %e, "cannot persist scheduler state");
            Status::unavailable(format!("the scheduler cannot persist its state: {e}"))
        })
    }
}

type InstructionSender = mpsc::Sender<Result<pb::NodeInstruction, Status>>;
/// The answer stream of ReportNode (the generated trait's boxed stream type).
type InstructionStream = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::NodeInstruction, Status>> + Send + 'static>>;

/// State shared by the gRPC handlers and the loops.
pub struct Shared {
    core: Mutex<Core>,
    /// Connected agents: node → (stream generation, sender).
    streams: Mutex<HashMap<String, (u64, InstructionSender)>>,
    next_stream: std::sync::atomic::AtomicU64,
    cfg: SchedulerConfig,
    /// Pools whose last RunInstances failed, and until when (ms) they are left out of plans.
    backoff: Mutex<HashMap<String, u64>>,
    /// What `/metrics` counts.
    pub counters: crate::metrics::Counters,
}

/// How long a pool whose scale-up failed (quota, no stock, vSwitch full) is left out of plans,
/// so that another pool can serve the pods and the cloud API is not asked every round.
const SCALE_UP_BACKOFF_MS: u64 = 30_000;

/// How long in-flight calls may finish after a stop signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

impl Shared {
    /// Loads the store's state into a fresh cluster.
    pub fn new(cfg: SchedulerConfig, mut store: Box<dyn Store>) -> Result<Arc<Shared>, String> {
        let mut cluster = Cluster::new(cfg.placement.strategy, cfg.placement.percent_of_nodes_to_score, cfg.placement.lease_secs * 1000);
        cluster.restore(&store.load().map_err(|e| e.to_string())?, now_ms())?;
        Ok(Arc::new(Shared { core: Mutex::new(Core { cluster, store }), streams: Mutex::new(HashMap::new()), next_stream: 0.into(), cfg, backoff: Mutex::new(HashMap::new()), counters: Default::default() }))
    }

    /// `/metrics`: the cluster as it is now and what the scheduler counted.
    pub fn metrics_text(&self) -> String {
        let snapshot = {
            let core = self.core();
            let c = &core.cluster;
            let mut s = crate::metrics::Snapshot { requested_nodes: c.requested.len() as u64, ..Default::default() };
            for p in c.pods() {
                let phase = match p.phase {
                    pb::PodPhase::Pending | pb::PodPhase::Unspecified => "Pending",
                    pb::PodPhase::Bound => "Bound",
                    pb::PodPhase::Running => "Running",
                    pb::PodPhase::Succeeded => "Succeeded",
                    pb::PodPhase::Failed => "Failed",
                    pb::PodPhase::Terminating => "Terminating",
                };
                *s.pods_by_phase.entry(phase).or_default() += 1;
            }
            for (_, n) in c.placement.nodes() {
                let state = match n.health {
                    crate::placement::Health::Ready => "Ready",
                    crate::placement::Health::Unknown => "Unknown",
                    crate::placement::Health::Draining => "Draining",
                };
                *s.nodes_by_state.entry(state).or_default() += 1;
            }
            s
        };
        crate::metrics::render(&snapshot, &self.counters)
    }

    fn core(&self) -> std::sync::MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sends waiting instructions to connected agents.
    fn flush(&self) {
        let streams = self.streams.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if streams.is_empty() {
            return;
        }
        let mut core = self.core();
        for node in core.cluster.nodes_with_instructions() {
            let Some((_, tx)) = streams.get(&node) else { continue };
            if let Some(ins) = core.cluster.take_instruction(&node)
                && tx.try_send(Ok(ins)).is_err()
            {
                tracing::warn!(node = %node, "instruction stream full or closed; the node gets everything again when it reconnects");
            }
        }
    }

    /// One tick: leases, then pending pods.
    pub fn tick(&self) {
        {
            let started = std::time::Instant::now();
            let mut core = self.core();
            let now = now_ms();
            let mut events = core.cluster.expire_leases(now);
            events.extend(core.cluster.schedule(now));
            self.counters.round(started.elapsed().as_secs_f64());
            if let Err(e) = core.commit(&events) {
                tracing::error!(error = %e.message(), "tick not persisted");
            }
        }
        self.flush();
    }

    /// Takes a pod in and tries to place it at once; answers once that is durable.
    pub fn submit(&self, spec: pb::PodSpec) -> Result<pb::PodStatus, Status> {
        let key = pod_key(&spec.namespace, &spec.name);
        let status = {
            let mut core = self.core();
            let now = now_ms();
            let mut events = core.cluster.submit(spec, now).map_err(submit_error)?;
            events.extend(core.cluster.schedule_pod(&key, now));
            core.commit(&events)?;
            core.cluster.pod(&key).map(|r| r.status()).unwrap_or_default()
        };
        self.flush();
        Ok(status)
    }

    pub fn delete(&self, key: &str) -> Result<(), Status> {
        {
            let mut core = self.core();
            let events = core.cluster.delete(key).ok_or_else(|| Status::not_found(format!("no pod {key}")))?;
            core.commit(&events)?;
        }
        self.flush();
        Ok(())
    }

    /// Takes a report in outside a stream (benchmarks; agents use ReportNode).
    pub fn report(&self, report: &pb::NodeReport) -> Result<(), Status> {
        let mut core = self.core();
        let events = core.cluster.report(report, now_ms());
        core.commit(&events)
    }

    /// The status of one pod.
    pub fn pod_status(&self, key: &str) -> Option<pb::PodStatus> {
        self.core().cluster.pod(key).map(|r| r.status())
    }
}

/// The gRPC service.
pub struct SchedulerService {
    shared: Arc<Shared>,
    /// What a submitted pod may ask for, from the pools of the config.
    limits: validation::Limits,
}

impl SchedulerService {
    pub fn new(shared: Arc<Shared>) -> SchedulerService {
        let limits = validation::Limits::of_pools(&shared.cfg.pool);
        SchedulerService { shared, limits }
    }
}

fn submit_error(e: SubmitError) -> Status {
    match e {
        SubmitError::Exists { .. } => Status::already_exists(e.to_string()),
    }
}

#[tonic::async_trait]
impl Scheduler for SchedulerService {
    async fn report_node(&self, request: Request<Streaming<pb::NodeReport>>) -> Result<Response<InstructionStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(256);
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let generation = shared.next_stream.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut node: Option<String> = None;
            while let Some(msg) = inbound.next().await {
                let report = match msg {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::debug!(error = %e, "report stream ended with an error");
                        break;
                    }
                };
                let Some(id) = report.identity.as_ref().map(|i| i.instance_id.clone()).filter(|i| !i.is_empty()) else {
                    let _ = tx.send(Err(Status::invalid_argument("a node report needs identity.instance_id"))).await;
                    break;
                };
                let first = node.is_none();
                if first {
                    shared.streams.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(id.clone(), (generation, tx.clone()));
                    node = Some(id.clone());
                }
                let full = {
                    let mut core = shared.core();
                    let now = now_ms();
                    // Pending pods are retried by the tick, not per report: thousands of
                    // agents report, and one pass over the queue serves them all.
                    let events = core.cluster.report(&report, now);
                    core.commit(&events).map(|()| first.then(|| core.cluster.full_instruction(&id)))
                };
                let full = match full {
                    Ok(f) => f,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        break;
                    }
                };
                if let Some(ins) = full
                    && tx.send(Ok(ins)).await.is_err()
                {
                    break;
                }
                shared.flush();
            }
            if let Some(id) = node {
                let mut streams = shared.streams.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if streams.get(&id).is_some_and(|(g, _)| *g == generation) {
                    streams.remove(&id);
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn submit_pod(&self, request: Request<pb::SubmitPodRequest>) -> Result<Response<pb::PodStatus>, Status> {
        let spec = request.into_inner().spec.ok_or_else(|| Status::invalid_argument("SubmitPod needs a spec"))?;
        validation::pod(&spec, &self.limits)?;
        self.shared.submit(spec).map(Response::new)
    }

    async fn delete_pod(&self, request: Request<pb::DeletePodRequest>) -> Result<Response<pb::DeletePodResponse>, Status> {
        let r = request.into_inner();
        self.shared.delete(&pod_key(&r.namespace, &r.name))?;
        Ok(Response::new(pb::DeletePodResponse {}))
    }

    async fn get_pod(&self, request: Request<pb::GetPodRequest>) -> Result<Response<pb::PodStatus>, Status> {
        let r = request.into_inner();
        let key = pod_key(&r.namespace, &r.name);
        self.shared.pod_status(&key).map(Response::new).ok_or_else(|| Status::not_found(format!("no pod {key}")))
    }

    async fn list_pods(&self, request: Request<pb::ListPodsRequest>) -> Result<Response<pb::ListPodsResponse>, Status> {
        let ns = request.into_inner().namespace;
        let core = self.shared.core();
        let mut pods: Vec<pb::PodStatus> = core.cluster.pods().filter(|p| ns.is_empty() || p.spec.namespace == ns).map(|p| p.status()).collect();
        pods.sort_by(|a, b| {
            let k = |s: &pb::PodStatus| s.spec.as_ref().map(|s| (s.namespace.clone(), s.name.clone()));
            k(a).cmp(&k(b))
        });
        Ok(Response::new(pb::ListPodsResponse { pods }))
    }

    async fn list_nodes(&self, _request: Request<pb::ListNodesRequest>) -> Result<Response<pb::ListNodesResponse>, Status> {
        let mut nodes = self.shared.core().cluster.node_states();
        nodes.sort_by(|a, b| {
            let k = |n: &pb::NodeState| n.last_report.as_ref().and_then(|r| r.identity.as_ref()).map(|i| i.instance_id.clone());
            k(a).cmp(&k(b))
        });
        Ok(Response::new(pb::ListNodesResponse { nodes }))
    }
}

/// One round of the autoscaler: plan under the lock, call the cloud without it, record after.
pub async fn autoscale_once<P: NodeProvisioner>(shared: &Shared, provisioner: &P) {
    let cfg = &shared.cfg;
    let now = now_ms();
    let settings = ScaleDownSettings { utilisation_threshold: cfg.autoscaler.scale_down_utilisation, underused_for_ms: cfg.autoscaler.scale_down_after_secs * 1000 };
    let pools: Vec<autoscaler::NodePool> = {
        let mut backoff = shared.backoff.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        backoff.retain(|_, until| *until > now);
        cfg.pool.iter().filter(|p| !backoff.contains_key(&p.name)).cloned().collect()
    };
    let (plans, to_delete, timed_out) = {
        let mut core = shared.core();
        let c = &mut core.cluster;
        autoscaler::observe_utilisation(c, settings.utilisation_threshold, now);
        let threshold = cfg.autoscaler.pending_threshold_secs * 1000;
        let waiting: Vec<_> = c.pending().filter(|p| now.saturating_sub(p.pending_since_ms) >= threshold).map(|p| p.req.clone()).collect();
        let refs: Vec<_> = waiting.iter().collect();
        let pool_nodes = autoscaler::PoolNodes::of_cluster(c);
        let requested: Vec<RequestedNode> = c.requested.values().cloned().collect();
        let mut plans = autoscaler::plan_minimums(&pools, &berth_cloud::catalogue::instance_type, &pool_nodes, &requested);
        if plans.is_empty()
            && !refs.is_empty()
            && let Some(plan) = autoscaler::plan_scale_up(&refs, &pools, &berth_cloud::catalogue::instance_type, &pool_nodes, &requested, cfg.autoscaler.expander)
        {
            plans.push(plan);
        }
        let mut events = Vec::new();
        // No scale-down while pods wait: they may need the capacity.
        if c.pending_len() == 0 {
            for node in autoscaler::plan_scale_down(c, &cfg.pool, &settings, now) {
                tracing::info!(node = %node, "node underused; moving its pods and removing it");
                events.extend(c.drain(&node, now));
            }
        }
        // A drained node is deleted once its agent reports that it runs nothing any more, or once
        // it stopped reporting (its pods were moved when its lease ran out).
        let to_delete: Vec<String> = c
            .deleting
            .iter()
            .filter(|id| c.placement.index_of(id).and_then(|i| c.placement.node(i)).is_none_or(|n| n.health == crate::placement::Health::Unknown || (n.pods.is_empty() && n.reported_pods == 0 && n.reservations.is_empty())))
            .cloned()
            .collect();
        let timed_out: Vec<String> = requested.iter().filter(|r| now.saturating_sub(r.requested_at_ms) > cfg.autoscaler.node_boot_timeout_secs * 1000).map(|r| r.instance_id.clone()).collect();
        events.extend(core.cluster.schedule(now));
        if let Err(e) = core.commit(&events) {
            tracing::error!(error = %e.message(), "autoscaler round not persisted");
            return;
        }
        (plans, to_delete, timed_out)
    };
    shared.flush();
    for plan in plans {
        let Some(pool) = cfg.pool.iter().find(|p| p.name == plan.pool) else { continue };
        let token = uuid::Uuid::new_v4().to_string();
        tracing::info!(pool = %plan.pool, instance_type = %plan.instance_type, count = plan.count, pods = plan.pods, "scaling up");
        match provisioner.create(pool, &plan, &token).await {
            Ok(ids) => {
                shared.counters.scaled_up(&plan.pool, ids.len() as u32);
                let mut core = shared.core();
                let mut events = Vec::new();
                for id in ids {
                    events.extend(core.cluster.request_node(RequestedNode { instance_id: id, pool: plan.pool.clone(), instance_type: plan.instance_type.clone(), zone_id: plan.zone_id.clone(), vswitch_id: plan.vswitch_id.clone(), requested_at_ms: now }));
                }
                let _ = core.commit(&events);
            }
            Err(e) => {
                tracing::warn!(pool = %plan.pool, error = %e, backoff_ms = SCALE_UP_BACKOFF_MS, "scale-up failed; the pool is left out of plans for a while");
                shared.backoff.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(plan.pool.clone(), now_ms() + SCALE_UP_BACKOFF_MS);
            }
        }
    }
    let gone: Vec<String> = to_delete.iter().chain(&timed_out).cloned().collect();
    if !gone.is_empty() {
        match provisioner.delete(&gone).await {
            Ok(()) => {
                shared.counters.deleted(gone.len());
                let mut core = shared.core();
                let mut events = Vec::new();
                for id in &gone {
                    tracing::info!(node = %id, "node deleted");
                    core.cluster.forget_node(id);
                    events.extend(core.cluster.clear_request(id));
                }
                let _ = core.commit(&events);
            }
            Err(e) => tracing::warn!(error = %e, "deleting nodes failed; retrying next round"),
        }
    }
}

/// Counts the pools' instances the cloud has and the scheduler does not know (after a restart it
/// knows nodes only by their reports) as requested nodes, so the first plans neither add a pool's
/// minimum again nor exceed its maximum; those that never report are deleted after
/// `node_boot_timeout_secs`, as any requested node.
pub async fn adopt_pool_instances<P: NodeProvisioner>(shared: &Shared, provisioner: &P) -> Result<usize, String> {
    let mut found = Vec::new();
    for pool in &shared.cfg.pool {
        found.extend(provisioner.list(pool).await?.into_iter().map(|i| (pool.name.clone(), i)));
    }
    let now = now_ms();
    let mut core = shared.core();
    let mut events = Vec::new();
    for (pool, i) in found {
        let known = core.cluster.placement.index_of(&i.instance_id).is_some() || core.cluster.requested.contains_key(&i.instance_id);
        if !known {
            events.extend(core.cluster.request_node(RequestedNode { instance_id: i.instance_id, pool, instance_type: i.instance_type, zone_id: i.zone_id, vswitch_id: i.vswitch_id, requested_at_ms: now }));
        }
    }
    let adopted = events.len();
    core.commit(&events).map_err(|e| e.message().to_string())?;
    Ok(adopted)
}

/// Serves the API on `listener` and runs the loops until `shutdown` resolves.
pub async fn serve<P: NodeProvisioner>(shared: Arc<Shared>, provisioner: Option<P>, listener: TcpListener, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), tonic::transport::Error> {
    let tick = Duration::from_millis(shared.cfg.placement.tick_ms);
    let ticker = {
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut iv = tokio::time::interval(tick);
            iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                iv.tick().await;
                shared.tick();
            }
        })
    };
    let scaler = match provisioner {
        Some(p) if shared.cfg.autoscaler.enabled => {
            let shared = shared.clone();
            let every = Duration::from_millis(shared.cfg.autoscaler.interval_ms);
            Some(tokio::spawn(async move {
                let mut iv = tokio::time::interval(every);
                iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut adopted = false;
                loop {
                    iv.tick().await;
                    // No plan before the pools' existing instances are counted.
                    if !adopted {
                        match adopt_pool_instances(&shared, &p).await {
                            Ok(n) => {
                                tracing::info!(instances = n, "the pools' existing instances counted");
                                adopted = true;
                            }
                            Err(e) => {
                                berth_daemon::limited!(warn, "adopt-instances", error = %e, "cannot list the pools' instances; not scaling until it can");
                                continue;
                            }
                        }
                    }
                    autoscale_once(&shared, &p).await;
                }
            }))
        }
        _ => None,
    };
    // Agents' report streams never end on their own: after the signal, in-flight calls get a
    // short grace, then the connections are dropped (agents reconnect to the next scheduler).
    let (stopping, stopped) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        let _ = stopping.send(());
    };
    let server = tonic::transport::Server::builder()
        .add_service(SchedulerServer::new(SchedulerService::new(shared.clone())))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), signal);
    let grace = async {
        if stopped.await.is_ok() {
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    let result = tokio::select! {
        r = server => r,
        () = grace => Ok(()),
    };
    ticker.abort();
    if let Some(s) = scaler {
        s.abort();
    }
    // Report streams end with the server; drop their senders so nothing keeps them alive.
    shared.streams.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clear();
    result
}

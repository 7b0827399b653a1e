//! The `Scheduler` gRPC service of cluster.proto, and the loops around the pure state: a tick that
//! expires leases and retries pending pods, and the autoscaler loop that executes plans through a
//! [`NodeProvisioner`].
//!
//! Every change is made durable by the [`Committer`] (many calls' changes in one sync or one
//! round of etcd transactions) before any answer or instruction leaves, so what a client or agent
//! was told survives a restart or a failover. The clock is Unix time in ms, the same one the
//! store's request times use.

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
use crate::autoscaling;
use crate::cluster::{Cluster, SubmitError};
use crate::committer::{Committer, Pending, Streams};
use crate::config::SchedulerConfig;
use crate::netpol;
use crate::placement::pod_key;
use crate::replica::{Reader, Replica, Role, Terms, from_leader};
use crate::report_stream;
use crate::store::{Event, RequestedNode, ScaleUp, Store};
use crate::validation;
use crate::watch::{self, WatchLog};
use crate::workload;

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The answer stream of ReportNode (the generated trait's boxed stream type).
type InstructionStream = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::NodeInstruction, Status>> + Send + 'static>>;

/// State shared by the gRPC handlers and the loops of one term (the time this replica leads).
pub struct Shared {
    cluster: Mutex<Cluster>,
    committer: Committer,
    /// Connected agents' instruction streams; the committer sends to them.
    streams: Streams,
    next_stream: std::sync::atomic::AtomicU64,
    cfg: SchedulerConfig,
    /// Pools whose last RunInstances failed, and until when (ms) they are left out of plans.
    backoff: Mutex<HashMap<String, u64>>,
    /// Set when the term ends: report streams close and calls are refused.
    ended: tokio::sync::watch::Sender<Option<String>>,
    /// What `/metrics` counts.
    pub counters: crate::metrics::Counters,
    /// The term's pod changes, for WatchPods.
    pub watch: Arc<WatchLog>,
}

/// How long a pool whose scale-up failed (quota, no stock, vSwitch full) is left out of plans,
/// so that another pool can serve the pods and the cloud API is not asked every round.
const SCALE_UP_BACKOFF_MS: u64 = 30_000;

/// How long in-flight calls may finish after a stop signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

impl Shared {
    /// Loads the store's state into a fresh cluster; the store then belongs to the committer.
    pub fn new(cfg: SchedulerConfig, mut store: Box<dyn Store>) -> Result<Arc<Shared>, String> {
        let cfg_watch = cfg.watch.limits();
        let mut cluster = Cluster::new(cfg.placement.strategy, cfg.placement.percent_of_nodes_to_score, cfg.placement.lease_secs * 1000);
        cluster.placement.set_pool_traits(cfg.pool.iter().map(|p| (p.name.clone(), p.traits())).collect());
        cluster.budgets.clone_from(&cfg.disruption_budget);
        cluster.restore(&store.load().map_err(|e| e.to_string())?, now_ms())?;
        cluster.record_changes();
        let streams = Streams::default();
        let committer = Committer::start(store, streams.clone());
        Ok(Arc::new(Shared {
            cluster: Mutex::new(cluster),
            committer,
            streams,
            next_stream: 0.into(),
            cfg,
            backoff: Mutex::new(HashMap::new()),
            ended: tokio::sync::watch::channel(None).0,
            counters: Default::default(),
            watch: WatchLog::new(cfg_watch),
        }))
    }

    /// `/metrics`: the cluster as it is now and what the scheduler counted.
    pub fn metrics_text(&self) -> String {
        let snapshot = {
            let c = self.cluster();
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
        let stats = &self.committer.stats;
        let commits = crate::metrics::Commits { appends: stats.appends.load(std::sync::atomic::Ordering::Relaxed), events: stats.events.load(std::sync::atomic::Ordering::Relaxed) };
        let mut text = crate::metrics::render(&snapshot, &self.counters, &commits);
        text.push_str(&self.watch.metrics_text());
        text
    }

    fn cluster(&self) -> std::sync::MutexGuard<'_, Cluster> {
        self.cluster.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Changes the cluster under its lock and queues the events with the instructions that follow;
    /// the returned [`Pending`] resolves once they are durable (and the instructions sent).
    fn change<T>(&self, f: impl FnOnce(&mut Cluster, u64) -> Result<(Vec<Event>, T), Status>) -> Result<(Pending, T), Status> {
        if let Some(why) = self.ended.borrow().clone() {
            return Err(Status::unavailable(format!("this scheduler's term ended ({why}); retry")));
        }
        let mut c = self.cluster();
        let result = f(&mut c, now_ms());
        // WatchPods hears of the pods' changes once the batch they came with is durable.
        let changes = c.take_changes();
        let then: Option<Box<dyn FnOnce() + Send>> = if changes.is_empty() {
            None
        } else {
            let (stamped, log) = (self.watch.stamp(changes), self.watch.clone());
            Some(Box::new(move || log.publish(stamped)))
        };
        let (events, out) = match result {
            Ok(r) => r,
            Err(e) => {
                if then.is_some() {
                    drop(self.committer.queue_with(Vec::new(), Vec::new(), None, then));
                }
                return Err(e);
            }
        };
        let instructions = c.take_instructions();
        let checkpoint = self.committer.take_checkpoint_request().then(|| c.checkpoint());
        Ok((self.committer.queue_with(events, instructions, checkpoint, then), out))
    }

    /// One tick: leases, then pending pods; queued without waiting for the sync.
    pub fn tick(&self) {
        let started = std::time::Instant::now();
        let _ = self.change(|c, now| {
            let mut events = c.expire_leases(now);
            events.extend(c.reconcile_autoscalers(now, self.cfg.hpa.interval_ms));
            events.extend(c.reconcile_workloads(now));
            events.extend(c.schedule(now));
            Ok((events, ()))
        });
        self.counters.round(started.elapsed().as_secs_f64());
    }

    /// Takes a pod in and tries to place it at once; answers once that is durable.
    pub async fn submit(&self, spec: pb::PodSpec) -> Result<pb::PodStatus, Status> {
        let key = pod_key(&spec.namespace, &spec.name);
        let (durable, status) = self.change(|c, now| {
            let mut events = c.submit(spec, now).map_err(submit_error)?;
            events.extend(c.schedule_pod(&key, now));
            Ok((events, c.pod(&key).map(|r| r.status()).unwrap_or_default()))
        })?;
        durable.durable().await?;
        Ok(status)
    }

    pub async fn delete(&self, key: &str) -> Result<(), Status> {
        let (durable, ()) = self.change(|c, _| Ok((c.delete(key).ok_or_else(|| Status::not_found(format!("no pod {key}")))?, ())))?;
        durable.durable().await
    }

    /// Takes a report in outside a stream (benchmarks; agents use ReportNode).
    pub async fn report(&self, report: &pb::NodeReport) -> Result<(), Status> {
        let (durable, ()) = self.change(|c, now| Ok((c.report(report, now), ())))?;
        durable.durable().await
    }

    /// Creates or replaces a workload checked by the API edge; answers once that is durable.
    pub async fn apply_workload(&self, w: pb::Workload) -> Result<pb::WorkloadStatus, Status> {
        let key = workload::workload_key(&w.namespace, &w.name);
        let (durable, status) = self.change(|c, _| {
            let (event, _) = c.apply_workload(w);
            Ok((vec![event], c.workload_status(&key).unwrap_or_default()))
        })?;
        durable.durable().await?;
        Ok(status)
    }

    /// Sets a workload's replicas (Some) or rolls it back to its previous template (None).
    pub async fn scale_or_undo_workload(&self, key: &str, replicas: Option<u32>) -> Result<pb::WorkloadStatus, Status> {
        let (durable, status) = self.change(|c, _| {
            let w = c.workloads.get(key).ok_or_else(|| Status::not_found(format!("no workload {key}")))?;
            let changed = match replicas {
                Some(n) => pb::Workload { replicas: n, ..w.clone() },
                None => workload::undone(w).ok_or_else(|| Status::failed_precondition(format!("workload {key} has no previous template to roll back to (it was never changed)")))?,
            };
            let event = c.replace_workload(changed);
            Ok((vec![event], c.workload_status(key).unwrap_or_default()))
        })?;
        durable.durable().await?;
        Ok(status)
    }

    pub async fn delete_workload(&self, key: &str) -> Result<(), Status> {
        let (durable, ()) = self.change(|c, _| Ok((c.delete_workload(key).ok_or_else(|| Status::not_found(format!("no workload {key}")))?, ())))?;
        durable.durable().await
    }

    /// Creates or replaces an HPA or a cron autoscaler checked by the API edge; one HPA per
    /// workload (another one scaling it is FAILED_PRECONDITION).
    pub async fn apply_autoscaler(&self, kind: pb::stored_autoscaler::Kind) -> Result<pb::stored_autoscaler::Kind, Status> {
        let (durable, ()) = self.change(|c, _| {
            if let pb::stored_autoscaler::Kind::Hpa(h) = &kind
                && let Some(other) = c.autoscalers.hpa_of(&h.namespace, &h.target, &h.name)
            {
                return Err(Status::failed_precondition(format!("HPA {}/{} refused: spec.scaleTargetRef.name = {:?}: workload {} is scaled by HPA {} already; delete that one or edit it", h.namespace, h.name, h.target, h.target, other.name)));
            }
            Ok((vec![c.autoscalers.apply(kind.clone())], ()))
        })?;
        durable.durable().await?;
        Ok(kind)
    }

    /// Deletes an HPA (`hpa` true) or a cron autoscaler by "namespace/name".
    pub async fn delete_autoscaler(&self, key: &str, hpa: bool) -> Result<(), Status> {
        let (durable, ()) = self.change(|c, _| {
            let events = if hpa { c.autoscalers.delete_hpa(key) } else { c.autoscalers.delete_cron(key).map(|e| vec![e]) };
            let what = if hpa { "HPA" } else { "cron autoscaler" };
            Ok((events.ok_or_else(|| Status::not_found(format!("no {what} {key}")))?, ()))
        })?;
        durable.durable().await
    }

    pub fn workload_status(&self, key: &str) -> Option<pb::WorkloadStatus> {
        self.cluster().workload_status(key)
    }

    /// The status of one pod.
    pub fn pod_status(&self, key: &str) -> Option<pb::PodStatus> {
        self.cluster().pod(key).map(|r| r.status())
    }

    /// Ends the term: calls are refused, report streams are told and closed.
    pub fn end(&self, why: &str) {
        self.ended.send_replace(Some(why.to_string()));
        let streams = std::mem::take(&mut *self.streams.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        for (_, (_, tx)) in streams {
            let _ = tx.try_send(Err(Box::new(Status::unavailable(format!("this scheduler no longer leads ({why}); report to the leader")))));
        }
    }

    /// Resolves when the term ends (see [`Shared::end`]).
    async fn ended(&self) -> String {
        let mut rx = self.ended.subscribe();
        loop {
            if let Some(why) = rx.borrow_and_update().clone() {
                return why;
            }
            if rx.changed().await.is_err() {
                return "stopped".into();
            }
        }
    }

    /// Resolves when the store refused a batch: the term is over.
    pub async fn store_failed(&self) -> String {
        self.committer.failed().await.0
    }
}

/// The gRPC service: every call goes to the term this replica leads, or is told where the leader is.
pub struct SchedulerService {
    replica: Arc<Replica>,
    /// What a submitted pod may ask for, from the pools of the config.
    limits: validation::Limits,
}

impl SchedulerService {
    pub fn new(replica: Arc<Replica>, limits: validation::Limits) -> SchedulerService {
        SchedulerService { replica, limits }
    }
}

fn submit_error(e: SubmitError) -> Status {
    match e {
        SubmitError::Exists { .. } => Status::already_exists(e.to_string()),
    }
}

/// The replica's state when it leads; on a follower, the call passed to the leader once and its
/// answer returned (reads only: writes and report streams are redirected).
macro_rules! local_or_forward {
    ($service:ident, $request:ident, $method:ident) => {
        match $service.replica.reader($request.metadata())? {
            Reader::Local(shared) => shared,
            Reader::Leader { address, mut client } => return client.$method($service.replica.forwarded($request)).await.map_err(|e| from_leader(&address, e)),
        }
    };
}

#[tonic::async_trait]
impl Scheduler for SchedulerService {
    async fn report_node(&self, request: Request<Streaming<pb::NodeReport>>) -> Result<Response<InstructionStream>, Status> {
        let shared = self.replica.leading()?;
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            let generation = shared.next_stream.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut node: Option<String> = None;
            loop {
                let msg = tokio::select! {
                    m = inbound.next() => m,
                    _ = shared.ended() => break,
                };
                let Some(msg) = msg else { break };
                let report = match msg {
                    Ok(r) => r,
                    Err(e) => {
                        let answer = report_stream::refusal(&e);
                        if matches!(answer.code(), tonic::Code::ResourceExhausted | tonic::Code::InvalidArgument) {
                            berth_daemon::limited!(warn, "report-refused", node = node.as_deref().unwrap_or("?"), code = ?answer.code(), error = %e.message(), "a node report could not be taken; the stream ends");
                        } else {
                            tracing::debug!(error = %e, "report stream ended with an error");
                        }
                        let _ = tx.send(Err(Box::new(answer))).await;
                        break;
                    }
                };
                let id = match report_stream::reporting_node(&report, node.as_deref()) {
                    Ok(id) => id,
                    Err(answer) => {
                        let _ = tx.send(Err(Box::new(answer))).await;
                        break;
                    }
                };
                let first = node.is_none();
                if first {
                    shared.streams.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(id.clone(), (generation, tx.clone()));
                    node = Some(id.clone());
                }
                // Pending pods are retried by the tick, not per report: thousands of agents
                // report, and one pass over the queue serves them all. The first instructions
                // of a stream (everything bound to the node) go out with the report's batch.
                let changed = shared.change(|c, now| {
                    if first {
                        // The stream numbers its reports from 1 again.
                        c.stream_opened(&id);
                    }
                    let events = c.report(&report, now);
                    if first {
                        c.resend_all(&id);
                    }
                    Ok((events, ()))
                });
                let result = match changed {
                    Ok((durable, ())) => durable.durable().await,
                    Err(e) => Err(e),
                };
                if let Err(e) = result {
                    let _ = tx.send(Err(Box::new(e))).await;
                    break;
                }
            }
            if let Some(id) = node {
                let mut streams = shared.streams.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if streams.get(&id).is_some_and(|(g, _)| *g == generation) {
                    streams.remove(&id);
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx).map(|r| r.map_err(|e| *e)))))
    }

    async fn submit_pod(&self, request: Request<pb::SubmitPodRequest>) -> Result<Response<pb::PodStatus>, Status> {
        let shared = self.replica.leading()?;
        let mut spec = request.into_inner().spec.ok_or_else(|| Status::invalid_argument("SubmitPod needs a spec"))?;
        validation::pod(&spec, &self.limits)?;
        spec.priority = self.limits.priority_of(&spec.priority_class_name).unwrap_or(0);
        shared.submit(spec).await.map(Response::new)
    }

    async fn delete_pod(&self, request: Request<pb::DeletePodRequest>) -> Result<Response<pb::DeletePodResponse>, Status> {
        let shared = self.replica.leading()?;
        let r = request.into_inner();
        shared.delete(&pod_key(&r.namespace, &r.name)).await?;
        Ok(Response::new(pb::DeletePodResponse {}))
    }

    async fn get_pod(&self, request: Request<pb::GetPodRequest>) -> Result<Response<pb::PodStatus>, Status> {
        let shared = local_or_forward!(self, request, get_pod);
        let r = request.into_inner();
        let key = pod_key(&r.namespace, &r.name);
        shared.pod_status(&key).map(Response::new).ok_or_else(|| Status::not_found(format!("no pod {key}")))
    }

    async fn list_pods(&self, request: Request<pb::ListPodsRequest>) -> Result<Response<pb::ListPodsResponse>, Status> {
        let shared = local_or_forward!(self, request, list_pods);
        // The revision is read under the cluster's lock: changes are stamped under it too.
        let page = {
            let c = shared.cluster();
            c.list_pods(request.get_ref()).map(|mut p| {
                p.revision = shared.watch.revision();
                p.term = shared.watch.term;
                p
            })
        };
        page.map(Response::new).map_err(|e| Status::invalid_argument(e.to_string()))
    }

    async fn watch_pods(&self, request: Request<pb::WatchPodsRequest>) -> Result<Response<watch::WatchStream>, Status> {
        let shared = match self.replica.reader(request.metadata())? {
            Reader::Local(s) => s,
            Reader::Leader { address, mut client } => {
                // The leader's events pass as they come; its closing status (a new term, a lagging
                // watcher) reaches the caller unchanged, a lost leader as a redirect.
                let events = client.watch_pods(self.replica.forwarded(request)).await.map_err(|e| from_leader(&address, e))?.into_inner();
                return Ok(Response::new(Box::pin(events.map(move |e| e.map_err(|e| from_leader(&address, e))))));
            }
        };
        let r = request.into_inner();
        let filter = watch::Filter::of(&r)?;
        let cursor = shared.watch.start(r.revision, r.term)?;
        let log = shared.watch.clone();
        let ended = async move { shared.ended().await };
        Ok(Response::new(watch::watcher(log, filter, cursor, ended)))
    }

    async fn get_leader(&self, _request: Request<pb::GetLeaderRequest>) -> Result<Response<pb::LeaderStatus>, Status> {
        Ok(Response::new(pb::LeaderStatus { leader: self.replica.leader().unwrap_or_default(), replica: self.replica.advertise.clone(), leads: self.replica.leads() }))
    }

    async fn apply_network_policy(&self, request: Request<pb::ApplyNetworkPolicyRequest>) -> Result<Response<pb::NetworkPolicy>, Status> {
        let shared = self.replica.leading()?;
        let policy = request.into_inner().policy.ok_or_else(|| Status::invalid_argument("ApplyNetworkPolicy needs a policy"))?;
        validation::network_policy(&policy).map_err(|e| Status::invalid_argument(format!("NetworkPolicy {}/{} refused: {e}", policy.namespace, policy.name)))?;
        let (durable, stored) = shared.change(|c, _| {
            let (event, stored) = c.policy.apply(policy);
            Ok((vec![event], stored))
        })?;
        durable.durable().await?;
        Ok(Response::new(stored))
    }

    async fn get_network_policy(&self, request: Request<pb::GetNetworkPolicyRequest>) -> Result<Response<pb::NetworkPolicy>, Status> {
        let shared = local_or_forward!(self, request, get_network_policy);
        let r = request.into_inner();
        let key = netpol::policy_key(&r.namespace, &r.name);
        shared.cluster().policy.policies.get(&key).cloned().map(Response::new).ok_or_else(|| Status::not_found(format!("no NetworkPolicy {key}")))
    }

    async fn list_network_policies(&self, request: Request<pb::ListNetworkPoliciesRequest>) -> Result<Response<pb::ListNetworkPoliciesResponse>, Status> {
        let shared = local_or_forward!(self, request, list_network_policies);
        let ns = request.into_inner().namespace;
        let policies = shared.cluster().policy.policies.values().filter(|p| ns.is_empty() || p.namespace == ns).cloned().collect();
        Ok(Response::new(pb::ListNetworkPoliciesResponse { policies }))
    }

    async fn delete_network_policy(&self, request: Request<pb::GetNetworkPolicyRequest>) -> Result<Response<pb::DeleteNetworkPolicyResponse>, Status> {
        let shared = self.replica.leading()?;
        let r = request.into_inner();
        let key = netpol::policy_key(&r.namespace, &r.name);
        let (durable, ()) = shared.change(|c, _| Ok((vec![c.policy.delete(&key).ok_or_else(|| Status::not_found(format!("no NetworkPolicy {key}")))?], ())))?;
        durable.durable().await?;
        Ok(Response::new(pb::DeleteNetworkPolicyResponse {}))
    }

    async fn cordon_node(&self, request: Request<pb::CordonNodeRequest>) -> Result<Response<pb::NodeState>, Status> {
        let shared = self.replica.leading()?;
        let r = request.into_inner();
        let (durable, state) = shared.change(|c, now| {
            let events = c.cordon(&r.instance_id, r.cordon, r.drain, now).ok_or_else(|| Status::not_found(format!("instance_id = {:?}: no such node reports to this scheduler; `berthctl nodes` lists them", r.instance_id)))?;
            let state = c.node_state_of(&r.instance_id);
            Ok((events, state))
        })?;
        durable.durable().await?;
        state.map(Response::new).ok_or_else(|| Status::not_found(format!("node {} is gone", r.instance_id)))
    }

    async fn label_namespace(&self, request: Request<pb::LabelNamespaceRequest>) -> Result<Response<pb::Namespace>, Status> {
        let shared = self.replica.leading()?;
        let r = request.into_inner();
        validation::namespace_labels(&r.namespace, &r.labels).map_err(|e| Status::invalid_argument(format!("namespace labels refused: {e}")))?;
        let (durable, labels) = shared.change(|c, _| {
            let (event, labels) = c.policy.label(&r.namespace, &r.labels);
            Ok((vec![event], labels))
        })?;
        durable.durable().await?;
        Ok(Response::new(pb::Namespace { name: r.namespace, labels: labels.into_iter().collect() }))
    }

    async fn list_namespaces(&self, request: Request<pb::ListNamespacesRequest>) -> Result<Response<pb::ListNamespacesResponse>, Status> {
        let shared = local_or_forward!(self, request, list_namespaces);
        let c = shared.cluster();
        let mut names: std::collections::BTreeSet<String> = c.policy.namespaces.0.keys().cloned().collect();
        names.extend(c.policy.policies.values().map(|p| p.namespace.clone()));
        names.extend(c.pod_namespaces().into_iter().map(str::to_string));
        let namespaces = names.into_iter().map(|n| pb::Namespace { labels: c.policy.namespaces.0.get(&n).cloned().unwrap_or_default().into_iter().collect(), name: n }).collect();
        Ok(Response::new(pb::ListNamespacesResponse { namespaces }))
    }

    async fn get_pod_policies(&self, request: Request<pb::GetPodRequest>) -> Result<Response<pb::PodPolicies>, Status> {
        let shared = local_or_forward!(self, request, get_pod_policies);
        let r = request.into_inner();
        let key = pod_key(&r.namespace, &r.name);
        let c = shared.cluster();
        let facts = c.pod_facts();
        let pod = facts.iter().find(|f| f.key == key).ok_or_else(|| Status::not_found(format!("no pod {key}")))?;
        Ok(Response::new(c.policy.pod_policies(pod, &facts)))
    }

    async fn apply_workload(&self, request: Request<pb::ApplyWorkloadRequest>) -> Result<Response<pb::WorkloadStatus>, Status> {
        let shared = self.replica.leading()?;
        let mut w = request.into_inner().workload.ok_or_else(|| Status::invalid_argument("ApplyWorkload needs a workload"))?;
        w.revision = 0;
        w.previous_template = None;
        validation::workload(&w, &self.limits).map_err(|e| Status::invalid_argument(format!("workload {}/{} refused: {e}", w.namespace, w.name)))?;
        if let Some(t) = w.template.as_mut() {
            t.priority = self.limits.priority_of(&t.priority_class_name).unwrap_or(0);
        }
        shared.apply_workload(w).await.map(Response::new)
    }

    async fn get_workload(&self, request: Request<pb::GetWorkloadRequest>) -> Result<Response<pb::WorkloadStatus>, Status> {
        let shared = local_or_forward!(self, request, get_workload);
        let r = request.into_inner();
        let key = workload::workload_key(&r.namespace, &r.name);
        shared.workload_status(&key).map(Response::new).ok_or_else(|| Status::not_found(format!("no workload {key}")))
    }

    async fn list_workloads(&self, request: Request<pb::ListWorkloadsRequest>) -> Result<Response<pb::ListWorkloadsResponse>, Status> {
        let shared = local_or_forward!(self, request, list_workloads);
        let ns = request.into_inner().namespace;
        let c = shared.cluster();
        let workloads = c.workloads.iter().filter(|(_, w)| ns.is_empty() || w.namespace == ns).filter_map(|(k, _)| c.workload_status(k)).collect();
        Ok(Response::new(pb::ListWorkloadsResponse { workloads }))
    }

    async fn scale_workload(&self, request: Request<pb::ScaleWorkloadRequest>) -> Result<Response<pb::WorkloadStatus>, Status> {
        let shared = self.replica.leading()?;
        let r = request.into_inner();
        if r.replicas > workload::MAX_REPLICAS {
            let e = validation::InvalidSpec { field: "replicas".into(), value: r.replicas.to_string(), rule: validation::Rule::TooMany { max: workload::MAX_REPLICAS } };
            return Err(Status::invalid_argument(format!("ScaleWorkload {}/{} refused: {e}", r.namespace, r.name)));
        }
        shared.scale_or_undo_workload(&workload::workload_key(&r.namespace, &r.name), Some(r.replicas)).await.map(Response::new)
    }

    async fn undo_workload(&self, request: Request<pb::GetWorkloadRequest>) -> Result<Response<pb::WorkloadStatus>, Status> {
        let shared = self.replica.leading()?;
        let r = request.into_inner();
        shared.scale_or_undo_workload(&workload::workload_key(&r.namespace, &r.name), None).await.map(Response::new)
    }

    async fn delete_workload(&self, request: Request<pb::GetWorkloadRequest>) -> Result<Response<pb::DeleteWorkloadResponse>, Status> {
        let shared = self.replica.leading()?;
        let r = request.into_inner();
        shared.delete_workload(&workload::workload_key(&r.namespace, &r.name)).await?;
        Ok(Response::new(pb::DeleteWorkloadResponse {}))
    }

    async fn apply_horizontal_pod_autoscaler(&self, request: Request<pb::ApplyHorizontalPodAutoscalerRequest>) -> Result<Response<pb::HorizontalPodAutoscalerStatus>, Status> {
        let shared = self.replica.leading()?;
        let h = request.into_inner().hpa.ok_or_else(|| Status::invalid_argument("ApplyHorizontalPodAutoscaler needs an hpa"))?;
        validation::hpa(&h).map_err(|e| Status::invalid_argument(format!("HPA {}/{} refused: {e}", h.namespace, h.name)))?;
        let key = autoscaling::key(&h.namespace, &h.name);
        shared.apply_autoscaler(pb::stored_autoscaler::Kind::Hpa(h)).await?;
        Ok(Response::new(shared.cluster().autoscalers.hpa_status(&key).unwrap_or_default()))
    }

    async fn get_horizontal_pod_autoscaler(&self, request: Request<pb::GetWorkloadRequest>) -> Result<Response<pb::HorizontalPodAutoscalerStatus>, Status> {
        let shared = local_or_forward!(self, request, get_horizontal_pod_autoscaler);
        let r = request.into_inner();
        let key = autoscaling::key(&r.namespace, &r.name);
        shared.cluster().autoscalers.hpa_status(&key).map(Response::new).ok_or_else(|| Status::not_found(format!("no HPA {key}")))
    }

    async fn list_horizontal_pod_autoscalers(&self, request: Request<pb::ListWorkloadsRequest>) -> Result<Response<pb::ListHorizontalPodAutoscalersResponse>, Status> {
        let shared = local_or_forward!(self, request, list_horizontal_pod_autoscalers);
        let ns = request.into_inner().namespace;
        let c = shared.cluster();
        let hpas = c.autoscalers.hpas.iter().filter(|(_, h)| ns.is_empty() || h.namespace == ns).filter_map(|(k, _)| c.autoscalers.hpa_status(k)).collect();
        Ok(Response::new(pb::ListHorizontalPodAutoscalersResponse { hpas }))
    }

    async fn delete_horizontal_pod_autoscaler(&self, request: Request<pb::GetWorkloadRequest>) -> Result<Response<pb::DeleteWorkloadResponse>, Status> {
        let shared = self.replica.leading()?;
        let r = request.into_inner();
        shared.delete_autoscaler(&autoscaling::key(&r.namespace, &r.name), true).await?;
        Ok(Response::new(pb::DeleteWorkloadResponse {}))
    }

    async fn apply_cron_horizontal_pod_autoscaler(&self, request: Request<pb::ApplyCronHorizontalPodAutoscalerRequest>) -> Result<Response<pb::CronHorizontalPodAutoscalerStatus>, Status> {
        let shared = self.replica.leading()?;
        let c = request.into_inner().cron.ok_or_else(|| Status::invalid_argument("ApplyCronHorizontalPodAutoscaler needs a cron"))?;
        validation::cron_hpa(&c).map_err(|e| Status::invalid_argument(format!("cron autoscaler {}/{} refused: {e}", c.namespace, c.name)))?;
        let key = autoscaling::key(&c.namespace, &c.name);
        shared.apply_autoscaler(pb::stored_autoscaler::Kind::Cron(c)).await?;
        Ok(Response::new(shared.cluster().autoscalers.cron_status(&key).unwrap_or_default()))
    }

    async fn get_cron_horizontal_pod_autoscaler(&self, request: Request<pb::GetWorkloadRequest>) -> Result<Response<pb::CronHorizontalPodAutoscalerStatus>, Status> {
        let shared = local_or_forward!(self, request, get_cron_horizontal_pod_autoscaler);
        let r = request.into_inner();
        let key = autoscaling::key(&r.namespace, &r.name);
        shared.cluster().autoscalers.cron_status(&key).map(Response::new).ok_or_else(|| Status::not_found(format!("no cron autoscaler {key}")))
    }

    async fn list_cron_horizontal_pod_autoscalers(&self, request: Request<pb::ListWorkloadsRequest>) -> Result<Response<pb::ListCronHorizontalPodAutoscalersResponse>, Status> {
        let shared = local_or_forward!(self, request, list_cron_horizontal_pod_autoscalers);
        let ns = request.into_inner().namespace;
        let c = shared.cluster();
        let crons = c.autoscalers.crons.iter().filter(|(_, x)| ns.is_empty() || x.namespace == ns).filter_map(|(k, _)| c.autoscalers.cron_status(k)).collect();
        Ok(Response::new(pb::ListCronHorizontalPodAutoscalersResponse { crons }))
    }

    async fn delete_cron_horizontal_pod_autoscaler(&self, request: Request<pb::GetWorkloadRequest>) -> Result<Response<pb::DeleteWorkloadResponse>, Status> {
        let shared = self.replica.leading()?;
        let r = request.into_inner();
        shared.delete_autoscaler(&autoscaling::key(&r.namespace, &r.name), false).await?;
        Ok(Response::new(pb::DeleteWorkloadResponse {}))
    }

    async fn set_external_metric(&self, request: Request<pb::SetExternalMetricRequest>) -> Result<Response<pb::SetExternalMetricResponse>, Status> {
        let shared = self.replica.leading()?;
        let r = request.into_inner();
        validation::external_metric(&r.namespace, &r.name).map_err(|e| Status::invalid_argument(format!("SetExternalMetric refused: {e}")))?;
        shared.cluster().autoscalers.external.insert(autoscaling::key(&r.namespace, &r.name), r.value_milli);
        Ok(Response::new(pb::SetExternalMetricResponse {}))
    }

    async fn list_nodes(&self, request: Request<pb::ListNodesRequest>) -> Result<Response<pb::ListNodesResponse>, Status> {
        let shared = local_or_forward!(self, request, list_nodes);
        let page = shared.cluster().list_nodes(request.get_ref());
        page.map(Response::new).map_err(|e| Status::invalid_argument(e.to_string()))
    }
}

/// A planned scale-up as it is stored before RunInstances is sent, with a ClientToken of its own.
fn scale_up_of(plan: &autoscaler::ScaleUpPlan, now_ms: u64) -> ScaleUp {
    ScaleUp { client_token: uuid::Uuid::new_v4().to_string(), pool: plan.pool.clone(), instance_type: plan.instance_type.clone(), zone_id: plan.zone_id.clone(), vswitch_id: plan.vswitch_id.clone(), count: plan.count, started_at_ms: now_ms }
}

/// One round of the autoscaler: plan under the lock, call the cloud without it, record after.
/// A scale-up is made durable with its ClientToken before RunInstances is sent, so a leader that
/// takes over in between repeats the same call instead of creating other nodes.
pub async fn autoscale_once<P: NodeProvisioner>(shared: &Shared, provisioner: &P) {
    let cfg = &shared.cfg;
    let now = now_ms();
    let settings = ScaleDownSettings { utilisation_threshold: cfg.autoscaler.scale_down_utilisation, underused_for_ms: cfg.autoscaler.scale_down_after_secs * 1000 };
    let pools: Vec<autoscaler::NodePool> = {
        let mut backoff = shared.backoff.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        backoff.retain(|_, until| *until > now);
        cfg.pool.iter().filter(|p| !backoff.contains_key(&p.name)).cloned().collect()
    };
    let planned = shared.change(|c, now| {
        autoscaler::observe_utilisation(c, settings.utilisation_threshold, now);
        let threshold = cfg.autoscaler.pending_threshold_secs * 1000;
        let waiting: Vec<(String, crate::placement::PodRequest)> = c.pending_keyed().filter(|(_, p)| now.saturating_sub(p.pending_since_ms) >= threshold && p.req.priority >= cfg.autoscaler.scale_up_min_priority).map(|(k, p)| (k.to_string(), p.req.clone())).collect();
        let refs: Vec<_> = waiting.iter().map(|(_, r)| r).collect();
        let pool_nodes = autoscaler::PoolNodes::of_cluster(c);
        let on_the_way = c.on_the_way();
        // Each waiting pod learns why no pool can help it, if none can (once per distinct request).
        let mut unhelped: HashMap<&crate::placement::PodRequest, Option<String>> = HashMap::new();
        for (key, req) in &waiting {
            let why = unhelped.entry(req).or_insert_with(|| autoscaler::why_unhelped(req, &cfg.pool, &berth_cloud::catalogue::instance_type, &pool_nodes, &on_the_way)).clone();
            c.note_unhelped(key, why);
        }
        let mut plans = autoscaler::plan_minimums(&pools, &berth_cloud::catalogue::instance_type, &pool_nodes, &on_the_way);
        if plans.is_empty() && !refs.is_empty() {
            plans = autoscaler::plan_scale_up(&refs, &pools, &berth_cloud::catalogue::instance_type, &pool_nodes, &on_the_way, cfg.autoscaler.expander);
        }
        let mut events = Vec::new();
        // Scale-ups a former leader began (or this one, when its call failed to answer) are sent
        // again with their own tokens before anything new.
        let mut calls: Vec<(ScaleUp, Option<autoscaler::ScaleUpPlan>)> = c.scale_ups.values().map(|u| (u.clone(), None)).collect();
        for plan in plans {
            let u = scale_up_of(&plan, now);
            tracing::info!(pool = %plan.pool, instance_type = %plan.instance_type, count = plan.count, pods = plan.pods, "scaling up");
            events.extend(c.start_scale_up(u.clone()));
            calls.push((u, Some(plan)));
        }
        // No scale-down while pods wait: they may need the capacity.
        if c.pending_len() == 0 {
            for node in autoscaler::plan_scale_down(c, &cfg.pool, &settings, now) {
                tracing::info!(node = %node, "node underused; moving its pods and removing it");
                events.extend(c.drain(&node, now));
            }
            let idle_round = calls.is_empty() && c.deleting.is_empty();
            if idle_round
                && cfg.autoscaler.replace_with_cheaper
                && let Some(plan) = autoscaler::plan_replacements(c, &pools, &berth_cloud::catalogue::instance_type, &on_the_way, &settings, now)
            {
                let u = scale_up_of(&plan, now);
                tracing::info!(pool = %plan.pool, instance_type = %plan.instance_type, pods = plan.pods, "an underused node's pods fit on a cheaper one; adding it to replace the node");
                events.extend(c.start_scale_up(u.clone()));
                calls.push((u, Some(plan)));
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
        let timed_out: Vec<String> = c.requested.values().filter(|r| now.saturating_sub(r.requested_at_ms) > cfg.autoscaler.node_boot_timeout_secs * 1000).map(|r| r.instance_id.clone()).collect();
        events.extend(c.schedule(now));
        Ok((events, (calls, to_delete, timed_out)))
    });
    let (calls, to_delete, timed_out) = match planned {
        Ok((durable, out)) => match durable.durable().await {
            Ok(()) => out,
            Err(e) => {
                tracing::error!(error = %e.message(), "autoscaler round not persisted");
                return;
            }
        },
        Err(_) => return,
    };
    for (u, plan) in calls {
        let Some(pool) = cfg.pool.iter().find(|p| p.name == u.pool) else { continue };
        // A call repeated for an earlier term knows only what was stored of its plan.
        let plan = plan.unwrap_or_else(|| autoscaler::ScaleUpPlan { pool: u.pool.clone(), instance_type: u.instance_type.clone(), vswitch_id: u.vswitch_id.clone(), zone_id: u.zone_id.clone(), count: u.count, pods: 0, pods_on_requested: 0, waste: 0.0, price_per_hour: 0.0 });
        let ids = match provisioner.create(pool, &plan, &u.client_token).await {
            Ok(ids) => {
                shared.counters.scaled_up(&u.pool, ids.len() as u32);
                ids
            }
            Err(e) => {
                tracing::warn!(pool = %u.pool, error = %e, backoff_ms = SCALE_UP_BACKOFF_MS, "scale-up failed; the pool is left out of plans for a while");
                shared.backoff.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(u.pool.clone(), now_ms() + SCALE_UP_BACKOFF_MS);
                Vec::new()
            }
        };
        if let Ok((durable, ())) = shared.change(|c, _| Ok((c.finish_scale_up(&u.client_token, &ids), ()))) {
            let _ = durable.durable().await;
        }
    }
    let gone: Vec<String> = to_delete.iter().chain(&timed_out).cloned().collect();
    if !gone.is_empty() {
        match provisioner.delete(&gone).await {
            Ok(()) => {
                shared.counters.deleted(gone.len());
                let changed = shared.change(|c, _| {
                    let mut events = Vec::new();
                    for id in &gone {
                        tracing::info!(node = %id, "node deleted");
                        c.forget_node(id);
                        events.extend(c.clear_request(id));
                    }
                    Ok((events, ()))
                });
                if let Ok((durable, ())) = changed {
                    let _ = durable.durable().await;
                }
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
    let (durable, adopted) = shared
        .change(|c, now| {
            let mut events = Vec::new();
            for (pool, i) in found {
                let known = c.placement.index_of(&i.instance_id).is_some() || c.requested.contains_key(&i.instance_id);
                if !known {
                    events.extend(c.request_node(RequestedNode { instance_id: i.instance_id, pool, instance_type: i.instance_type, zone_id: i.zone_id, vswitch_id: i.vswitch_id, requested_at_ms: now }));
                }
            }
            let adopted = events.len();
            Ok((events, adopted))
        })
        .map_err(|e| e.message().to_string())?;
    durable.durable().await.map_err(|e| e.message().to_string())?;
    Ok(adopted)
}

/// Runs one term's loops (the tick, and the autoscaler when there is a provisioner) until dropped.
async fn lead<P: NodeProvisioner>(shared: Arc<Shared>, provisioner: Option<Arc<P>>) {
    let tick = Duration::from_millis(shared.cfg.placement.tick_ms);
    let ticker = {
        let shared = shared.clone();
        async move {
            let mut iv = tokio::time::interval(tick);
            iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                iv.tick().await;
                shared.tick();
            }
        }
    };
    let scaler = async move {
        let Some(p) = provisioner.filter(|_| shared.cfg.autoscaler.enabled) else { return std::future::pending::<()>().await };
        let every = Duration::from_millis(shared.cfg.autoscaler.interval_ms);
        let mut iv = tokio::time::interval(every);
        iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut adopted = false;
        loop {
            iv.tick().await;
            // No plan before the pools' existing instances are counted.
            if !adopted {
                match adopt_pool_instances(&shared, &*p).await {
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
            autoscale_once(&shared, &*p).await;
        }
    };
    tokio::join!(ticker, scaler);
}

/// Serves one term that never ends (tests and benchmarks, with a store of their choosing) until
/// `shutdown` resolves.
pub async fn serve<P: NodeProvisioner>(shared: Arc<Shared>, provisioner: Option<P>, listener: TcpListener, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), tonic::transport::Error> {
    let replica = Replica::new(String::new(), tokio::sync::watch::channel(None).1);
    replica.set(Role::Leading(shared.clone()));
    let loops = tokio::spawn(lead(shared.clone(), provisioner.map(Arc::new)));
    let limits = validation::Limits::of_pools(&shared.cfg.pool).with_priority_classes(&shared.cfg.priority_class);
    let result = serve_api(replica, limits, listener, shutdown).await;
    loops.abort();
    shared.end("stopping");
    result
}

/// The replica `serve_replica` serves, made first so `/metrics` can read it.
pub fn replica_of<T: Terms>(cfg: &SchedulerConfig, terms: &T) -> Arc<Replica> {
    Replica::new(cfg.server.advertised().to_string(), terms.leader())
}

/// `/metrics` of a replica: its term's figures when it leads, and whether it does.
pub fn metrics_text(replica: &Replica) -> String {
    let mut text = replica.leading().map(|s| s.metrics_text()).unwrap_or_default();
    text.push_str("# HELP berth_scheduler_leader 1 while this replica leads (binds, scales, writes), else 0.\n# TYPE berth_scheduler_leader gauge\n");
    text.push_str(&format!("berth_scheduler_leader {}\n", u8::from(replica.leads())));
    text
}

/// Serves the API as a replica: it follows (redirecting callers to the leader) until `terms` gives
/// it a term, leads until the term is lost or its store fails, then follows again.
pub async fn serve_replica<T: Terms, P: NodeProvisioner>(cfg: SchedulerConfig, replica: Arc<Replica>, mut terms: T, provisioner: Option<P>, listener: TcpListener, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), tonic::transport::Error> {
    let provisioner = provisioner.map(Arc::new);
    let limits = validation::Limits::of_pools(&cfg.pool).with_priority_classes(&cfg.priority_class);
    let terms_loop = {
        let replica = replica.clone();
        tokio::spawn(async move {
            loop {
                replica.set(Role::Following);
                let term = match terms.next().await {
                    Ok(t) => t,
                    Err(e) => {
                        berth_daemon::limited!(warn, "term", error = %e, "cannot take the lead; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                };
                let started = std::time::Instant::now();
                let shared = match tokio::task::block_in_place(|| Shared::new(cfg.clone(), term.store)) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot load the scheduler's state; not leading");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                tracing::info!(load_ms = started.elapsed().as_millis() as u64, "leading: state loaded, binding and scaling");
                replica.set(Role::Leading(shared.clone()));
                let why = tokio::select! {
                    why = term.lost => why,
                    why = shared.store_failed() => format!("the store refused a write: {why}"),
                    () = lead(shared.clone(), provisioner.clone()) => "the loops stopped".to_string(),
                };
                tracing::warn!(reason = %why, "no longer leading");
                replica.set(Role::Following);
                shared.end(&why);
            }
        })
    };
    let result = serve_api(replica.clone(), limits, listener, shutdown).await;
    terms_loop.abort();
    if let Ok(shared) = replica.leading() {
        shared.end("stopping");
    }
    result
}

async fn serve_api(replica: Arc<Replica>, limits: validation::Limits, listener: TcpListener, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), tonic::transport::Error> {
    // Agents' report streams never end on their own: after the signal, in-flight calls get a
    // short grace, then the connections are dropped (agents reconnect to the next scheduler).
    let (stopping, stopped) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        let _ = stopping.send(());
    };
    let server = tonic::transport::Server::builder().add_service(SchedulerServer::new(SchedulerService::new(replica, limits))).serve_with_incoming_shutdown(TcpListenerStream::new(listener), signal);
    let grace = async {
        if stopped.await.is_ok() {
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        r = server => r,
        () = grace => Ok(()),
    }
}

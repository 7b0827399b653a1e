//! The scheduler's whole state as pure logic: pods (pending or bound), nodes (through
//! [`Placement`]), nodes requested of the cloud, and what each node's agent must be told. Every
//! mutation returns the [`Event`]s to make durable; the caller appends them to the store before
//! answering anyone or sending instructions.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::ops::Bound;

use berth_proto::cluster::v1 as pb;
use prost::Message as _;

use crate::instruction::{INSTRUCTION_BUDGET_BYTES, split};
use crate::netpol::{PodFacts, PolicyBook};
use crate::page::{self, Listing, PAGE_BUDGET_BYTES, PageError};
use crate::placement::{Decision, Health, Placement, PodRequest, Strategy, pod_key};
use crate::store::{Checkpoint, CheckpointPod, EncodedSpec, Event, RequestedNode, ScaleUp, Snapshot, StoredSpec, StoredTaint, StoredWorkload};
use crate::workload;
use crate::watch::{Change, ChangeKind, ChangeLog};

#[derive(Debug, Clone)]
pub struct PodRecord {
    /// Encoded: placement reads `req` only, and a decoded spec takes several times the room.
    pub spec: EncodedSpec,
    pub req: PodRequest,
    pub phase: pb::PodPhase,
    pub node: Option<String>,
    pub pod_ip: String,
    pub message: String,
    /// Every address its node reported (IPv4 and IPv6), for NetworkPolicy peers.
    pub pod_ips: Vec<std::net::IpAddr>,
    /// Its labels, for NetworkPolicy selectors (the spec is held encoded).
    pub labels: Arc<HashMap<String, String>>,
    /// Scheduler clock (ms) since when the pod waits for a node.
    pub pending_since_ms: u64,
    order: u64,
    /// The placement's capacity epoch when the pod last found no node.
    tried_at_epoch: Option<u64>,
    /// Why no pool can add a node for it, while it waits (the autoscaler says so each round).
    pub unhelped: Option<String>,
    /// What it used over its node's last measuring window (kept in memory only: the next report
    /// brings a fresh one).
    pub usage: Option<pb::PodUsage>,
}

impl PodRecord {
    pub fn status(&self) -> pb::PodStatus {
        let message = match (&self.unhelped, self.node.is_none()) {
            (Some(why), true) => format!("{}; {why}", self.message),
            _ => self.message.clone(),
        };
        pb::PodStatus { spec: Some(self.spec.decode()), phase: self.phase as i32, node: self.node.clone().unwrap_or_default(), pod_ip: self.pod_ip.clone(), message, usage: self.usage }
    }
}

#[derive(Debug, Clone, Default)]
struct Outbox {
    run: Vec<pb::PodSpec>,
    remove: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubmitError {
    #[error("pod {key} exists with another spec (differing in {}); delete it first or choose another name", .differs.join(", "))]
    Exists { key: String, differs: Vec<&'static str> },
}

pub struct Cluster {
    pub placement: Placement,
    /// In key order, so a page of ListPods starts at its cursor.
    pods: BTreeMap<String, PodRecord>,
    /// Pending pods by submission order.
    pending: BTreeMap<u64, String>,
    next_order: u64,
    outbox: HashMap<String, Outbox>,
    /// Pods bound before a restart to nodes that have not reported since.
    awaiting_node: HashMap<String, Vec<String>>,
    /// Nodes asked of the cloud that have not reported yet.
    pub requested: BTreeMap<String, RequestedNode>,
    /// Nodes whose stream just opened: they get an instruction even if it is empty.
    greet: Vec<String>,
    /// Scale-ups whose RunInstances may have been sent, by ClientToken.
    pub scale_ups: BTreeMap<String, ScaleUp>,
    /// Nodes being removed by the autoscaler: emptied, then deleted once they run nothing.
    pub deleting: HashSet<String>,
    /// Nodes deleted by the autoscaler: a late report of theirs must not bring them back.
    deleted: HashSet<String>,
    pub lease_ms: u64,
    /// When the state was loaded: pods awaiting a node are rescheduled a lease after this.
    started_ms: u64,
    /// Pods' status changes since the last [`Cluster::take_changes`], in order, for WatchPods
    /// (recorded once [`Cluster::record_changes`] turned it on).
    changes: ChangeLog,
    /// NetworkPolicies, namespaces' labels and what each node was told of them.
    pub policy: PolicyBook,
    /// Since when each node has carried each NoExecute taint (`key=value:NoExecute`): a pod
    /// tolerating it for some seconds is evicted once they have passed.
    no_execute_since: HashMap<String, Vec<(String, u64)>>,
    /// Per-label disruption budgets preemption honours (from the config).
    pub budgets: Vec<crate::placement::preemption::DisruptionBudget>,
    /// Workloads by "namespace/name" ([`crate::workload`]).
    pub workloads: BTreeMap<String, pb::Workload>,
    /// HorizontalPodAutoscalers, cron autoscalers and external metrics ([`crate::autoscaling`]).
    pub autoscalers: crate::autoscaling::Autoscalers,
}

impl Cluster {
    pub fn new(strategy: Strategy, percent_of_nodes_to_score: u32, lease_ms: u64) -> Cluster {
        Cluster {
            placement: Placement::new(strategy, percent_of_nodes_to_score),
            pods: BTreeMap::new(),
            pending: BTreeMap::new(),
            next_order: 0,
            outbox: HashMap::new(),
            awaiting_node: HashMap::new(),
            requested: BTreeMap::new(),
            scale_ups: BTreeMap::new(),
            greet: Vec::new(),
            deleting: HashSet::new(),
            deleted: HashSet::new(),
            lease_ms,
            started_ms: 0,
            changes: ChangeLog::default(),
            policy: PolicyBook::default(),
            no_execute_since: HashMap::new(),
            budgets: Vec::new(),
            workloads: BTreeMap::new(),
            autoscalers: Default::default(),
        }
    }

    /// Rebuilds the state a store holds. Bound pods wait for their node's first report (which
    /// says whether the agent runs them) for up to a lease, then go back to pending.
    pub fn restore(&mut self, snap: &Snapshot, now_ms: u64) -> Result<(), String> {
        self.started_ms = now_ms;
        self.next_order = snap.next_order;
        for (key, stored) in &snap.pods {
            let decoded = stored.spec.decode().map_err(|e| format!("pod {key} in the store does not decode: {e}"))?;
            let (req, spec) = (PodRequest::of(&decoded), EncodedSpec::of(&decoded));
            let phase = if stored.node.is_some() { pb::PodPhase::Bound } else { pb::PodPhase::Pending };
            let labels = Arc::new(decoded.labels.clone());
            self.pods.insert(key.clone(), PodRecord { spec, req, phase, node: stored.node.clone(), pod_ip: String::new(), pod_ips: Vec::new(), message: String::new(), labels, pending_since_ms: now_ms, order: stored.order, tried_at_epoch: None, unhelped: None, usage: None });
            match &stored.node {
                Some(n) => self.awaiting_node.entry(n.clone()).or_default().push(key.clone()),
                None => {
                    self.pending.insert(stored.order, key.clone());
                }
            }
        }
        self.requested = snap.requested.clone();
        self.scale_ups = snap.scale_ups.clone();
        for (node, taints) in &snap.node_taints {
            self.placement.set_node_taints(node, taints.iter().map(|t| pb::Taint { key: t.key.clone(), value: t.value.clone(), effect: t.effect.clone() }).collect());
        }
        for (key, stored) in &snap.workloads {
            self.workloads.insert(key.clone(), stored.decode().map_err(|e| format!("workload {key} in the store does not decode: {e}"))?);
        }
        self.autoscalers.restore(&snap.autoscalers)?;
        self.policy.restore(&snap.policies, &snap.namespaces)
    }

    /// The durable part of the state, for a store's checkpoint: quick enough to take under the
    /// lock (the encoded specs are shared), written by the committer outside it.
    pub fn checkpoint(&self) -> Checkpoint {
        let pods = self.pods.iter().map(|(k, r)| (k.clone(), CheckpointPod { spec: r.spec.clone(), order: r.order, node: r.node.clone() })).collect();
        let policies = self.policy.policies.iter().map(|(k, p)| (k.clone(), crate::store::StoredPolicy::of(p))).collect();
        let workloads = self.workloads.iter().map(|(k, w)| (k.clone(), StoredWorkload::of(w))).collect();
        Checkpoint { pods, requested: self.requested.clone(), next_order: self.next_order, scale_ups: self.scale_ups.clone(), policies, namespaces: self.policy.namespaces.0.clone(), workloads, autoscalers: self.autoscalers.checkpoint() }
    }

    /// Creates or replaces a workload the API edge checked ([`crate::validation::workload`]);
    /// its pods follow in the next [`Cluster::reconcile_workloads`].
    pub fn apply_workload(&mut self, w: pb::Workload) -> (Event, pb::Workload) {
        let key = workload::workload_key(&w.namespace, &w.name);
        let w = workload::applied(w, self.workloads.get(&key));
        self.workloads.insert(key.clone(), w.clone());
        (Event::WorkloadApplied { key, workload: StoredWorkload::of(&w) }, w)
    }

    /// Sets a stored workload anew (scaled or undone).
    pub fn replace_workload(&mut self, w: pb::Workload) -> Event {
        let key = workload::workload_key(&w.namespace, &w.name);
        self.workloads.insert(key.clone(), w.clone());
        Event::WorkloadApplied { key, workload: StoredWorkload::of(&w) }
    }

    /// Deletes a workload and its pods.
    pub fn delete_workload(&mut self, key: &str) -> Option<Vec<Event>> {
        let w = self.workloads.remove(key)?;
        let mut events = vec![Event::WorkloadDeleted { key: key.to_string() }];
        for p in self.workload_pods(&w) {
            events.extend(self.delete(&pod_key(&w.namespace, &p.name)).unwrap_or_default());
        }
        Some(events)
    }

    /// The pods of a workload: those of its namespace whose name starts with its own and whose
    /// label names it.
    pub fn workload_pods(&self, w: &pb::Workload) -> Vec<workload::PodOf> {
        self.workload_records(w)
            .map(|(k, r)| workload::PodOf {
                name: k[w.namespace.len() + 1..].to_string(),
                revision: r.labels.get(workload::REVISION_LABEL).and_then(|v| v.parse().ok()).unwrap_or(0),
                running: r.phase == pb::PodPhase::Running,
                done: matches!(r.phase, pb::PodPhase::Failed | pb::PodPhase::Succeeded),
            })
            .collect()
    }

    fn workload_records<'a>(&'a self, w: &'a pb::Workload) -> impl Iterator<Item = (&'a String, &'a PodRecord)> + 'a {
        let start = format!("{}-", pod_key(&w.namespace, &w.name));
        self.pods
            .range::<String, _>((Bound::Included(start.clone()), Bound::Unbounded))
            .take_while(move |(k, _)| k.starts_with(&start))
            .filter(|(_, r)| r.labels.get(workload::WORKLOAD_LABEL) == Some(&w.name))
    }

    pub fn workload_status(&self, key: &str) -> Option<pb::WorkloadStatus> {
        let w = self.workloads.get(key)?;
        Some(workload::status(w, &self.workload_pods(w)))
    }

    /// One round of the pod autoscalers ([`crate::autoscaling`]): cron jobs due and HPAs due set
    /// their workloads' replicas (through [`Cluster::replace_workload`], as ScaleWorkload does).
    pub fn reconcile_autoscalers(&mut self, now_ms: u64, hpa_interval_ms: u64) -> Vec<Event> {
        if self.autoscalers.hpas.is_empty() && self.autoscalers.crons.is_empty() {
            return Vec::new();
        }
        let mut autoscalers = std::mem::take(&mut self.autoscalers);
        let round = {
            let view = |k: &str| {
                let w = self.workloads.get(k)?;
                let pods = self
                    .workload_records(w)
                    .filter(|(_, r)| !matches!(r.phase, pb::PodPhase::Failed | pb::PodPhase::Succeeded | pb::PodPhase::Terminating))
                    .map(|(_, r)| crate::autoscaling::PodView { running: r.phase == pb::PodPhase::Running, usage: r.usage, cpu_request: r.req.demand.cpu_millicores })
                    .collect();
                Some(crate::autoscaling::TargetView { replicas: w.replicas, pods })
            };
            autoscalers.round(now_ms, hpa_interval_ms, view)
        };
        self.autoscalers = autoscalers;
        let mut events = round.events;
        for (key, replicas) in round.scale {
            let Some(w) = self.workloads.get(&key) else { continue };
            if w.replicas != replicas {
                let scaled = pb::Workload { replicas: replicas.min(workload::MAX_REPLICAS), ..w.clone() };
                events.push(self.replace_workload(scaled));
            }
        }
        events
    }

    /// One step of every workload ([`workload::plan`]): pods created (pending) and deleted.
    pub fn reconcile_workloads(&mut self, now_ms: u64) -> Vec<Event> {
        let mut events = Vec::new();
        let workloads: Vec<pb::Workload> = self.workloads.values().cloned().collect();
        for w in workloads {
            let plan = workload::plan(&w, &self.workload_pods(&w));
            for name in plan.delete {
                events.extend(self.delete(&pod_key(&w.namespace, &name)).unwrap_or_default());
            }
            for name in plan.create {
                match self.submit(workload::pod_spec(&w, name), now_ms) {
                    Ok(e) => events.extend(e),
                    Err(e) => tracing::warn!("workload {}/{}: {e}", w.namespace, w.name),
                }
            }
        }
        events
    }

    pub fn pod(&self, key: &str) -> Option<&PodRecord> {
        self.pods.get(key)
    }

    pub fn pods(&self) -> impl Iterator<Item = &PodRecord> {
        self.pods.values()
    }

    pub fn pending(&self) -> impl Iterator<Item = &PodRecord> {
        self.pending.values().filter_map(|k| self.pods.get(k))
    }

    /// Pending pods with their keys, by submission order.
    pub fn pending_keyed(&self) -> impl Iterator<Item = (&str, &PodRecord)> {
        self.pending.values().filter_map(|k| self.pods.get(k).map(|r| (k.as_str(), r)))
    }

    /// Records why no pool can help a pending pod (None: some pool can).
    pub fn note_unhelped(&mut self, key: &str, why: Option<String>) {
        let Some(rec) = self.pods.get_mut(key) else { return };
        if rec.unhelped != why {
            rec.unhelped = why;
            self.changes.note(ChangeKind::StatusChanged, rec);
        }
    }

    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Takes in a pod whose spec the API edge checked ([`crate::validation::pod`]). The same spec
    /// again (a retry after a lost reply) changes nothing and gives no events: the caller answers
    /// with the pod's current status.
    pub fn submit(&mut self, spec: pb::PodSpec, now_ms: u64) -> Result<Vec<Event>, SubmitError> {
        let key = pod_key(&spec.namespace, &spec.name);
        if let Some(rec) = self.pods.get(&key) {
            let differs = differences(&rec.spec.decode(), &spec);
            if differs.is_empty() {
                return Ok(Vec::new());
            }
            return Err(SubmitError::Exists { key, differs });
        }
        let order = self.next_order;
        self.next_order += 1;
        let event = Event::Submitted { pod: key.clone(), spec: StoredSpec::of(&spec) };
        let req = PodRequest::of(&spec);
        let labels = Arc::new(spec.labels.clone());
        let rec = PodRecord { spec: EncodedSpec::of(&spec), req, phase: pb::PodPhase::Pending, node: None, pod_ip: String::new(), pod_ips: Vec::new(), message: "waiting for a node".into(), labels, pending_since_ms: now_ms, order, tried_at_epoch: None, unhelped: None, usage: None };
        self.changes.note(ChangeKind::Added, &rec);
        self.pods.insert(key.clone(), rec);
        self.pending.insert(order, key);
        Ok(vec![event])
    }

    /// Deletes a pod; a bound one is removed from its node.
    pub fn delete(&mut self, key: &str) -> Option<Vec<Event>> {
        let rec = self.pods.remove(key)?;
        self.placement.release_hold(key);
        self.changes.note(ChangeKind::Deleted, &rec);
        self.pending.remove(&rec.order);
        if let Some(node) = &rec.node {
            if let Some(idx) = self.placement.index_of(node) {
                self.placement.unbind(idx, key, &rec.req);
            }
            self.outbox.entry(node.clone()).or_default().remove.push(key.to_string());
        }
        Some(vec![Event::Deleted { pod: key.to_string() }])
    }

    /// Places pending pods in submission order. A pod that found no node is tried again only
    /// once capacity may have appeared, and a request that found none is not tried again in the
    /// same round.
    pub fn schedule(&mut self, now_ms: u64) -> Vec<Event> {
        let mut events = Vec::new();
        let mut failed: HashMap<PodRequest, String> = HashMap::new();
        let epoch = self.placement.capacity_epoch;
        let keys: Vec<String> = self.pending.values().filter(|k| self.pods.get(*k).is_none_or(|r| r.tried_at_epoch != Some(epoch))).cloned().collect();
        for key in keys {
            self.try_place(&key, &mut failed, now_ms, &mut events);
        }
        events
    }

    /// Places one pending pod (just submitted), leaving the queue to [`Cluster::schedule`].
    pub fn schedule_pod(&mut self, key: &str, now_ms: u64) -> Vec<Event> {
        let mut events = Vec::new();
        self.try_place(key, &mut HashMap::new(), now_ms, &mut events);
        events
    }

    fn try_place(&mut self, key: &str, failed: &mut HashMap<PodRequest, String>, now_ms: u64, events: &mut Vec<Event>) {
        let epoch = self.placement.capacity_epoch;
        let Some(rec) = self.pods.get_mut(key) else { return };
        if rec.node.is_some() {
            return;
        }
        if let Some(m) = failed.get(&rec.req) {
            if rec.message != *m {
                rec.message.clone_from(m);
                self.changes.note(ChangeKind::StatusChanged, rec);
            }
            rec.tried_at_epoch = Some(epoch);
            return;
        }
        match self.placement.choose_as(key, &rec.req) {
            Decision::Node(idx) => {
                self.placement.release_hold(key);
                self.placement.bind(idx, key, &rec.req);
                let chosen = self.placement.node(idx).expect("chosen node exists");
                let node = chosen.id.clone();
                let mut spec = rec.spec.decode();
                if rec.req.pins_zone(&spec) && !chosen.identity.zone_id.is_empty() {
                    // Moved later (its node lost), the pod must find its disk: same zone.
                    spec.pool_selector.insert("zone".into(), chosen.identity.zone_id.clone());
                    rec.req = PodRequest::of(&spec);
                    rec.spec = EncodedSpec::of(&spec);
                    events.push(Event::ZonePinned { pod: key.to_string(), spec: StoredSpec::of(&spec) });
                }
                rec.node = Some(node.clone());
                rec.phase = pb::PodPhase::Bound;
                // Not `clear`: the room of "waiting for a node" would stay with every bound pod.
                rec.message = String::new();
                rec.tried_at_epoch = None;
                self.pending.remove(&rec.order);
                self.outbox.entry(node.clone()).or_default().run.push(spec);
                self.changes.note(ChangeKind::Bound, rec);
                events.push(Event::Bound { pod: key.to_string(), node });
            }
            Decision::Unschedulable(m) => {
                let req = rec.req.clone();
                let held = self.placement.held_for(key);
                let m = match held.and_then(|i| self.placement.node(i)) {
                    Some(n) => format!("{m}; nominated node {}: waiting for the pods it preempted to leave", n.id),
                    None => m,
                };
                let rec = self.pods.get_mut(key).expect("pod looked up above");
                if rec.message != m {
                    rec.message.clone_from(&m);
                    self.changes.note(ChangeKind::StatusChanged, rec);
                }
                rec.tried_at_epoch = Some(epoch);
                if held.is_none() && self.placement.lowest_bound_priority().is_some_and(|p| p < req.priority) {
                    events.extend(self.preempt(key, &req, now_ms));
                }
                failed.insert(req, m);
            }
        }
    }

    /// How many more pods each disruption budget lets go, from the pods it selects now.
    pub(crate) fn budget_allowance(&self) -> Vec<u32> {
        self.budgets
            .iter()
            .map(|b| {
                let (all, bound) = self.pods.values().filter(|r| b.selects(&r.req.own)).fold((0, 0), |(all, bound), r| (all + 1, bound + u32::from(r.node.is_some())));
                b.allowance(all, bound)
            })
            .collect()
    }

    /// Makes room for a pending pod that fits nowhere by evicting pods of lower priority from
    /// one node: the node needing the fewest victims (then the lowest of their priorities) among
    /// those whose node rules admit the pod, within every disruption budget. The room is held
    /// for the pod until it binds.
    fn preempt(&mut self, key: &str, req: &PodRequest, now_ms: u64) -> Vec<Event> {
        use crate::placement::preemption::{Candidate, victims};
        let budgets = &self.budgets;
        let allowance = self.budget_allowance();
        let mut best: Option<(u32, Vec<String>, (usize, i32))> = None;
        for (idx, n) in self.placement.nodes() {
            if n.health != Health::Ready || n.blocked.forbids(&req.demand) || crate::placement::plugins::admits(req, &n.identity).is_err() {
                continue;
            }
            let pods: Vec<Candidate<'_>> = n.pods.iter().filter_map(|k| self.pods.get(k).map(|r| Candidate { key: k.as_str(), priority: r.req.priority, demand: r.req.demand, own: &r.req.own })).collect();
            if !pods.iter().any(|p| p.priority < req.priority) {
                continue;
            }
            let mut left = allowance.clone();
            let Some(chosen) = victims(&n.free, &req.demand, req.priority, &pods, budgets, &mut left) else { continue };
            if chosen.is_empty() {
                continue;
            }
            let rank = (chosen.len(), chosen.iter().map(|&i| pods[i].priority).max().unwrap_or(i32::MIN));
            if best.as_ref().is_none_or(|b| rank < b.2) {
                best = Some((idx, chosen.iter().map(|&i| pods[i].key.to_string()).collect(), rank));
            }
        }
        let Some((idx, keys, _)) = best else { return Vec::new() };
        let node = self.placement.node(idx).map(|n| n.id.clone()).unwrap_or_default();
        tracing::info!(pod = %key, node = %node, victims = keys.len(), "preempting pods of lower priority");
        self.placement.hold(idx, key, req.demand);
        let mut events = Vec::new();
        for victim in keys {
            events.extend(self.unbind_to_pending(&victim, now_ms, format!("preempted on node {node} by {key} (priority {})", req.priority)));
        }
        events
    }

    /// Takes a node's report in. Pods it runs that are no longer bound to it are told to go.
    pub fn report(&mut self, report: &pb::NodeReport, now_ms: u64) -> Vec<Event> {
        let Some(id) = report.identity.as_ref().map(|i| i.instance_id.clone()).filter(|i| !i.is_empty()) else {
            return Vec::new();
        };
        if self.deleted.contains(&id) {
            return Vec::new();
        }
        let mut events = Vec::new();
        let idx = self.placement.apply_report(report, now_ms);
        if self.deleting.contains(&id) {
            // Back after its lease ran out while being removed: it still takes no pods.
            self.placement.set_health(idx, Health::Draining);
        }
        if self.requested.remove(&id).is_some() {
            events.push(Event::NodeRequestCleared { instance_id: id.clone() });
        }
        events.extend(self.evict_untolerated(idx, now_ms));
        let listed: HashSet<String> = report.pods.iter().map(|p| pod_key(&p.namespace, &p.name)).collect();
        if let Some(waiting) = self.awaiting_node.remove(&id) {
            for key in waiting {
                let Some(rec) = self.pods.get(&key) else { continue };
                if rec.node.as_deref() != Some(id.as_str()) {
                    continue;
                }
                if listed.contains(&key) {
                    // The agent runs it: its counts include it already.
                    self.placement.adopt(idx, &key, &rec.req);
                } else {
                    self.placement.bind(idx, &key, &rec.req);
                    self.outbox.entry(id.clone()).or_default().run.push(rec.spec.decode());
                }
            }
        }
        for st in &report.pods {
            let key = pod_key(&st.namespace, &st.name);
            match self.pods.get_mut(&key) {
                Some(rec) if rec.node.as_deref() == Some(id.as_str()) => {
                    let mut changed = false;
                    if let Ok(phase) = pb::PodPhase::try_from(st.phase)
                        && phase != pb::PodPhase::Unspecified
                        && phase != rec.phase
                    {
                        rec.phase = phase;
                        changed = true;
                    }
                    if rec.pod_ip != st.pod_ip {
                        rec.pod_ip.clone_from(&st.pod_ip);
                        changed = true;
                    }
                    let ips: Vec<std::net::IpAddr> = if st.pod_ips.is_empty() { st.pod_ip.parse().ok().into_iter().collect() } else { st.pod_ips.iter().filter_map(|a| a.parse().ok()).collect() };
                    if rec.pod_ips != ips {
                        rec.pod_ips = ips;
                        self.changes.touched = true;
                    }
                    // Not a change of status: watchers are not told, nothing is stored.
                    rec.usage = if rec.phase == pb::PodPhase::Running { st.usage.or(rec.usage) } else { None };
                    if !st.message.is_empty() {
                        let message = crate::client::bounded_message(&st.message);
                        if rec.message != message {
                            rec.message = message;
                            changed = true;
                        }
                    }
                    if changed {
                        self.changes.note(ChangeKind::StatusChanged, rec);
                    }
                }
                _ => {
                    let ob = self.outbox.entry(id.clone()).or_default();
                    if !ob.remove.contains(&key) {
                        ob.remove.push(key);
                    }
                }
            }
        }
        events
    }

    /// Cordons (or uncordons) a node: the taint `node.kubernetes.io/unschedulable:NoSchedule` keeps
    /// new pods off it; `drain` also sends its pods back to the queue, as far as the disruption
    /// budgets allow. None: no such node.
    pub fn cordon(&mut self, node: &str, cordon: bool, drain: bool, now_ms: u64) -> Option<Vec<Event>> {
        use crate::placement::plugins::taints::{NO_SCHEDULE, UNSCHEDULABLE};
        let idx = self.placement.index_of(node)?;
        let mut taints: Vec<pb::Taint> = self.placement.node_taints(node).to_vec();
        taints.retain(|t| t.key != UNSCHEDULABLE);
        if cordon || drain {
            taints.push(pb::Taint { key: UNSCHEDULABLE.into(), value: String::new(), effect: NO_SCHEDULE.into() });
        }
        let mut events = vec![Event::NodeTainted { node: node.to_string(), taints: taints.iter().map(|t| StoredTaint { key: t.key.clone(), value: t.value.clone(), effect: t.effect.clone() }).collect() }];
        self.placement.set_node_taints(node, taints);
        if drain {
            // Within the disruption budgets: a pod whose budget has no room left stays (a later
            // drain moves it once its peers run elsewhere).
            let mut pods: Vec<String> = self.placement.node(idx).map(|n| n.pods.iter().cloned().collect()).unwrap_or_default();
            pods.sort();
            let mut allowance = self.budget_allowance();
            for key in pods {
                let Some(own) = self.pods.get(&key).map(|r| r.req.own.clone()) else { continue };
                let hit: Vec<usize> = self.budgets.iter().enumerate().filter(|(_, b)| b.selects(&own)).map(|(k, _)| k).collect();
                if hit.iter().any(|&k| allowance[k] == 0) {
                    tracing::info!(node = %node, pod = %key, "drain leaves the pod: its disruption budget allows no more");
                    continue;
                }
                for k in hit {
                    allowance[k] -= 1;
                }
                events.extend(self.unbind_to_pending(&key, now_ms, format!("node {node} drained; moving")));
            }
        }
        Some(events)
    }

    /// Sends back to pending the pods of a node that do not tolerate one of its NoExecute taints,
    /// or tolerated it for fewer seconds than it has been there.
    fn evict_untolerated(&mut self, idx: u32, now_ms: u64) -> Vec<Event> {
        use crate::placement::plugins::taints::{NO_EXECUTE, shown, toleration_for};
        let Some(n) = self.placement.node(idx) else { return Vec::new() };
        let taints: Vec<pb::Taint> = n.identity.taints.iter().filter(|t| t.effect == NO_EXECUTE).cloned().collect();
        if taints.is_empty() {
            self.no_execute_since.remove(&n.id);
            return Vec::new();
        }
        let id = n.id.clone();
        let since = self.no_execute_since.entry(id.clone()).or_default();
        since.retain(|(t, _)| taints.iter().any(|x| shown(x) == *t));
        for t in &taints {
            if !since.iter().any(|(s, _)| *s == shown(t)) {
                since.push((shown(t), now_ms));
            }
        }
        let since = since.clone();
        let mut evict = Vec::new();
        for key in &n.pods {
            let Some(rec) = self.pods.get(key) else { continue };
            let why = taints.iter().find_map(|t| {
                let tainted_ms = since.iter().find(|(s, _)| *s == shown(t)).map_or(now_ms, |(_, ms)| *ms);
                match toleration_for(&rec.req, t).map(|tol| tol.toleration_seconds) {
                    None => Some(format!("evicted from node {id}: taint {} not tolerated", shown(t))),
                    Some(Some(secs)) if now_ms.saturating_sub(tainted_ms) >= u64::try_from(secs).unwrap_or(0).saturating_mul(1000) => Some(format!("evicted from node {id}: taint {} tolerated for {secs} s only", shown(t))),
                    Some(_) => None,
                }
            });
            if let Some(why) = why {
                evict.push((key.clone(), why));
            }
        }
        let mut events = Vec::new();
        for (key, why) in evict {
            tracing::info!(node = %id, pod = %key, "{why}");
            events.extend(self.unbind_to_pending(&key, now_ms, why));
        }
        events
    }

    /// Marks nodes whose lease ran out Unknown and sends their pods back to pending; pods that
    /// waited since a restart for a node that never reported go back too.
    pub fn expire_leases(&mut self, now_ms: u64) -> Vec<Event> {
        let mut events = Vec::new();
        let expired: Vec<u32> = self.placement.nodes().filter(|(_, n)| n.health != Health::Unknown && now_ms.saturating_sub(n.last_seen_ms) > self.lease_ms).map(|(i, _)| i).collect();
        for idx in expired {
            self.placement.set_health(idx, Health::Unknown);
            let (id, pods) = {
                let n = self.placement.node(idx).expect("listed node exists");
                (n.id.clone(), n.pods.iter().cloned().collect::<Vec<_>>())
            };
            tracing::warn!(node = %id, pods = pods.len(), "node stopped reporting; rescheduling its pods");
            for key in pods {
                events.extend(self.unbind_to_pending(&key, now_ms, format!("node {id} stopped reporting; rescheduling")));
            }
        }
        if now_ms.saturating_sub(self.started_ms) > self.lease_ms && !self.awaiting_node.is_empty() {
            for (node, keys) in std::mem::take(&mut self.awaiting_node) {
                for key in keys {
                    events.extend(self.unbind_to_pending(&key, now_ms, format!("node {node} did not report since the scheduler restarted; rescheduling")));
                }
            }
        }
        events
    }

    /// Sends a bound pod back to the queue (its place kept) and tells its node to drop it.
    pub fn unbind_to_pending(&mut self, key: &str, now_ms: u64, why: String) -> Vec<Event> {
        let Some(rec) = self.pods.get_mut(key) else { return Vec::new() };
        let Some(node) = rec.node.take() else { return Vec::new() };
        if let Some(idx) = self.placement.index_of(&node) {
            self.placement.unbind(idx, key, &rec.req);
        }
        rec.phase = pb::PodPhase::Pending;
        rec.pod_ip.clear();
        rec.message = why;
        rec.pending_since_ms = now_ms;
        self.changes.note(ChangeKind::StatusChanged, rec);
        self.pending.insert(rec.order, key.to_string());
        self.outbox.entry(node).or_default().remove.push(key.to_string());
        vec![Event::Unbound { pod: key.to_string() }]
    }

    /// Starts removing a node: it takes no new pods, and its pods go back to pending.
    pub fn drain(&mut self, node: &str, now_ms: u64) -> Vec<Event> {
        let Some(idx) = self.placement.index_of(node) else { return Vec::new() };
        self.placement.set_health(idx, Health::Draining);
        self.deleting.insert(node.to_string());
        let pods: Vec<String> = self.placement.node(idx).map(|n| n.pods.iter().cloned().collect()).unwrap_or_default();
        let mut events = Vec::new();
        for key in pods {
            events.extend(self.unbind_to_pending(&key, now_ms, format!("node {node} is being removed; moving")));
        }
        events
    }

    /// Forgets a node that was deleted; its reports are ignored from now on.
    pub fn forget_node(&mut self, node: &str) {
        self.deleted.insert(node.to_string());
        self.deleting.remove(node);
        self.outbox.remove(node);
        if let Some(idx) = self.placement.index_of(node) {
            self.placement.remove_node(idx);
        }
    }

    pub fn request_node(&mut self, r: RequestedNode) -> Vec<Event> {
        self.requested.insert(r.instance_id.clone(), r.clone());
        vec![Event::NodeRequested(r)]
    }

    /// Records a scale-up before its RunInstances is sent.
    pub fn start_scale_up(&mut self, u: ScaleUp) -> Vec<Event> {
        self.scale_ups.insert(u.client_token.clone(), u.clone());
        vec![Event::ScaleUpStarted(u)]
    }

    /// The scale-up's call answered: its instances become requested nodes (none if it failed).
    pub fn finish_scale_up(&mut self, client_token: &str, instance_ids: &[String]) -> Vec<Event> {
        let Some(u) = self.scale_ups.remove(client_token) else { return Vec::new() };
        let mut events = Vec::new();
        for id in instance_ids {
            if !self.requested.contains_key(id) && self.placement.index_of(id).is_none() {
                events.extend(self.request_node(RequestedNode { instance_id: id.clone(), pool: u.pool.clone(), instance_type: u.instance_type.clone(), zone_id: u.zone_id.clone(), vswitch_id: u.vswitch_id.clone(), requested_at_ms: u.started_at_ms }));
            }
        }
        events.push(Event::ScaleUpFinished { client_token: client_token.to_string() });
        events
    }

    /// Nodes on their way, as the planners count them: requested ones, and the instances of
    /// scale-ups under way (named by their token, as the cloud has not answered yet).
    pub fn on_the_way(&self) -> Vec<RequestedNode> {
        let mut out: Vec<RequestedNode> = self.requested.values().cloned().collect();
        for u in self.scale_ups.values() {
            out.extend((0..u.count).map(|k| RequestedNode { instance_id: format!("{}#{k}", u.client_token), pool: u.pool.clone(), instance_type: u.instance_type.clone(), zone_id: u.zone_id.clone(), vswitch_id: u.vswitch_id.clone(), requested_at_ms: u.started_at_ms }));
        }
        out
    }

    pub fn clear_request(&mut self, instance_id: &str) -> Vec<Event> {
        match self.requested.remove(instance_id) {
            Some(_) => vec![Event::NodeRequestCleared { instance_id: instance_id.to_string() }],
            None => Vec::new(),
        }
    }

    /// A node's agent opened a new report stream: its sequence starts again (the agent restarted
    /// or reconnected), so what the scheduler holds for the node waits for a report of this
    /// stream, not for one numbered above the old stream's last.
    pub fn stream_opened(&mut self, node: &str) {
        if let Some(idx) = self.placement.index_of(node) {
            self.placement.restart_sequence(idx);
        }
    }

    /// What the node's agent has not been told yet, in instructions under the byte budget
    /// (removals first); none if nothing waits.
    pub fn take_instruction(&mut self, node: &str) -> Vec<pb::NodeInstruction> {
        let Some(ob) = self.outbox.remove(node) else { return Vec::new() };
        split(ob.remove, ob.run, self.acknowledged(node), INSTRUCTION_BUDGET_BYTES)
    }

    /// Everything bound to the node, for an agent that (re)connects; replaces its outbox. At
    /// least one instruction (an empty one for a node without pods), so the agent hears back.
    pub fn full_instruction(&mut self, node: &str) -> Vec<pb::NodeInstruction> {
        let ob = self.full_outbox(node);
        let acknowledged_sequence = self.acknowledged(node);
        let parts = split(ob.remove, ob.run, acknowledged_sequence, INSTRUCTION_BUDGET_BYTES);
        if parts.is_empty() { vec![pb::NodeInstruction { acknowledged_sequence, ..Default::default() }] } else { parts }
    }

    /// The node's waiting removals and every pod bound to it (in key order), taken from its outbox.
    fn full_outbox(&mut self, node: &str) -> Outbox {
        let remove = self.outbox.remove(node).map(|o| o.remove).unwrap_or_default();
        let mut keys: Vec<&String> = self.placement.index_of(node).and_then(|i| self.placement.node(i)).map(|n| n.pods.iter().collect()).unwrap_or_default();
        keys.sort();
        let run = keys.into_iter().filter_map(|k| self.pods.get(k)).map(|r| r.spec.decode()).collect();
        Outbox { run, remove }
    }

    fn acknowledged(&self, node: &str) -> u64 {
        self.placement.index_of(node).and_then(|i| self.placement.node(i)).map_or(0, |n| n.sequence)
    }

    /// Every instruction waiting, for the committer to send once the changes behind them are
    /// durable. A node that is not connected gets everything again when it reconnects.
    pub fn take_instructions(&mut self) -> Vec<(String, pb::NodeInstruction)> {
        // The whole map is taken, not walked and emptied: walking a map costs its capacity, which
        // stays at every node's once all were greeted.
        let mut out = Vec::new();
        for (node, ob) in std::mem::take(&mut self.outbox) {
            if ob.run.is_empty() && ob.remove.is_empty() {
                continue;
            }
            let acknowledged = self.acknowledged(&node);
            out.extend(split(ob.remove, ob.run, acknowledged, INSTRUCTION_BUDGET_BYTES).into_iter().map(|i| (node.clone(), i)));
        }
        // A stream that just opened hears back even when nothing is bound to its node.
        let greet = std::mem::take(&mut self.greet);
        let mut greeted: HashSet<String> = out.iter().map(|(n, _)| n.clone()).collect();
        for node in greet.iter().cloned() {
            if greeted.insert(node.clone()) {
                let acknowledged_sequence = self.acknowledged(&node);
                out.push((node, pb::NodeInstruction { acknowledged_sequence, ..Default::default() }));
            }
        }
        self.attach_policy_updates(&greet, &mut out);
        out
    }

    /// The namespaces pods are in.
    pub fn pod_namespaces(&self) -> BTreeSet<&str> {
        self.pods.keys().filter_map(|k| k.split_once('/').map(|(ns, _)| ns)).collect()
    }

    /// The pods as NetworkPolicy sees them: bound ones, with their addresses once reported.
    pub fn pod_facts(&self) -> Vec<PodFacts<'_>> {
        facts_of(&self.pods)
    }

    /// Puts each node's NetworkPolicy update in its first instruction (applied before its
    /// removals and runs), or in one of its own. Nodes whose stream just opened get everything.
    fn attach_policy_updates(&mut self, greeted: &[String], out: &mut Vec<(String, pb::NodeInstruction)>) {
        let touched = std::mem::take(&mut self.changes.touched);
        let anything = !self.policy.policies.is_empty() || !self.policy.sent.is_empty();
        if greeted.is_empty() && !(anything && (touched || self.policy.dirty)) {
            return;
        }
        let full: BTreeSet<String> = greeted.iter().cloned().collect();
        let facts = facts_of(&self.pods);
        let updates = self.policy.updates(&facts, &full);
        drop(facts);
        for (node, update) in updates {
            // Instructions of their own, before the node's others: its pods start with them.
            let acknowledged_sequence = self.acknowledged(&node);
            let at = out.iter().position(|(n, _)| *n == node).unwrap_or(out.len());
            let parts = crate::netpol::split_update(update, INSTRUCTION_BUDGET_BYTES);
            for (k, part) in parts.into_iter().enumerate() {
                out.insert(at + k, (node.clone(), pb::NodeInstruction { acknowledged_sequence, policy: Some(part), ..Default::default() }));
            }
        }
    }

    /// Puts everything bound to the node in its outbox, for an agent that (re)connects.
    pub fn resend_all(&mut self, node: &str) {
        let full = self.full_outbox(node);
        self.outbox.insert(node.to_string(), full);
        self.greet.push(node.to_string());
    }

    /// Records every change of a pod's status from now on, for [`Cluster::take_changes`] (the
    /// server does; benchmarks and tests of placement alone need not).
    pub fn record_changes(&mut self) {
        self.changes.on = true;
    }

    /// The pods' status changes made since the last call, in order (see [`crate::watch`]).
    pub fn take_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.changes.list)
    }

    /// Nodes with instructions waiting.
    pub fn nodes_with_instructions(&self) -> Vec<String> {
        self.outbox.iter().filter(|(_, o)| !o.run.is_empty() || !o.remove.is_empty()).map(|(k, _)| k.clone()).collect()
    }

    /// One node's state, as ListNodes gives it.
    pub fn node_state_of(&self, id: &str) -> Option<pb::NodeState> {
        self.placement.index_of(id).and_then(|i| self.placement.node(i)).map(node_state)
    }

    pub fn node_states(&self) -> Vec<pb::NodeState> {
        self.placement.nodes().map(|(_, n)| node_state(n)).collect()
    }

    /// One page of ListPods: pods of `namespace` ("" for all) in key order after the token's.
    pub fn list_pods(&self, r: &pb::ListPodsRequest) -> Result<pb::ListPodsResponse, PageError> {
        let ns = r.namespace.as_str();
        let after = page::after(Listing::Pods, ns, &r.page_token)?;
        let prefix = if ns.is_empty() { String::new() } else { format!("{ns}/") };
        let start = match &after {
            Some(k) => Bound::Excluded(k.clone()),
            None => Bound::Included(prefix.clone()),
        };
        let items = self.pods.range((start, Bound::Unbounded)).take_while(|(k, _)| k.starts_with(&prefix)).map(|(k, p)| (k.clone(), p.status()));
        let (pods, last) = page::fill(items, page::page_size(r.page_size), PAGE_BUDGET_BYTES, pb::PodStatus::encoded_len);
        Ok(pb::ListPodsResponse { pods, next_page_token: last.map(|k| page::token(Listing::Pods, ns, &k)).unwrap_or_default(), ..Default::default() })
    }

    /// One page of ListNodes, in instance-ID order after the token's.
    pub fn list_nodes(&self, r: &pb::ListNodesRequest) -> Result<pb::ListNodesResponse, PageError> {
        let after = page::after(Listing::Nodes, "", &r.page_token)?;
        let mut ids: Vec<(&str, u32)> = self.placement.nodes().map(|(i, n)| (n.id.as_str(), i)).filter(|(id, _)| after.as_deref().is_none_or(|a| *id > a)).collect();
        ids.sort_unstable();
        let items = ids.into_iter().filter_map(|(id, i)| self.placement.node(i).map(|n| (id.to_string(), node_state(n))));
        let (nodes, last) = page::fill(items, page::page_size(r.page_size), PAGE_BUDGET_BYTES, pb::NodeState::encoded_len);
        Ok(pb::ListNodesResponse { nodes, next_page_token: last.map(|k| page::token(Listing::Nodes, "", &k)).unwrap_or_default() })
    }
}

fn facts_of(pods: &BTreeMap<String, PodRecord>) -> Vec<PodFacts<'_>> {
    pods.iter()
        .map(|(key, r)| PodFacts { key, namespace: key.split_once('/').map_or("", |(ns, _)| ns), labels: &r.labels, node: r.node.as_deref(), ips: if r.node.is_some() { r.pod_ips.clone() } else { Vec::new() } })
        .collect()
}

fn node_state(n: &crate::placement::Node) -> pb::NodeState {
    pb::NodeState { last_report: Some(n.last_report.clone()), state: n.health.as_str().to_string(), taints: n.identity.taints.clone(), labels: crate::placement::labels::all_node_labels(&n.identity) }
}

/// The fields of a submitted spec that differ from the stored one's, by their names. A zone the
/// cluster pinned (a disk pod's first bind) is not the submitter's and does not count.
fn differences(stored: &pb::PodSpec, submitted: &pb::PodSpec) -> Vec<&'static str> {
    let mut stored = stored.clone();
    if !submitted.pool_selector.contains_key("zone") && PodRequest::of(submitted).pins_zone(submitted) {
        stored.pool_selector.remove("zone");
    }
    // Every field named (no `..`): a field added to PodSpec must be added here.
    let pb::PodSpec { namespace, name, cpu_millicores, memory_bytes, network_mode, security_group_ids, vswitch_id, ingress_bandwidth, egress_bandwidth, volumes, pool_selector, labels, spread_zones, command, tolerations, node_affinity, pod_affinity, pod_anti_affinity, topology_spread_constraints, priority_class_name, priority } = submitted;
    [
        ("namespace", *namespace != stored.namespace),
        ("name", *name != stored.name),
        ("cpu_millicores", *cpu_millicores != stored.cpu_millicores),
        ("memory_bytes", *memory_bytes != stored.memory_bytes),
        ("network_mode", *network_mode != stored.network_mode),
        ("security_group_ids", *security_group_ids != stored.security_group_ids),
        ("vswitch_id", *vswitch_id != stored.vswitch_id),
        ("ingress_bandwidth", *ingress_bandwidth != stored.ingress_bandwidth),
        ("egress_bandwidth", *egress_bandwidth != stored.egress_bandwidth),
        ("volumes", *volumes != stored.volumes),
        ("pool_selector", *pool_selector != stored.pool_selector),
        ("labels", *labels != stored.labels),
        ("spread_zones", *spread_zones != stored.spread_zones),
        ("command", *command != stored.command),
        ("tolerations", *tolerations != stored.tolerations),
        ("node_affinity", *node_affinity != stored.node_affinity),
        ("pod_affinity", *pod_affinity != stored.pod_affinity),
        ("pod_anti_affinity", *pod_anti_affinity != stored.pod_anti_affinity),
        ("topology_spread_constraints", *topology_spread_constraints != stored.topology_spread_constraints),
        ("priority_class_name", *priority_class_name != stored.priority_class_name),
        ("priority", *priority != stored.priority),
    ]
    .into_iter()
    .filter_map(|(field, differs)| differs.then_some(field))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::tests::{caps, report};
    use crate::store::{MemoryStore, Store as _};

    fn pod(name: &str) -> pb::PodSpec {
        pb::PodSpec { namespace: "d".into(), name: name.into(), cpu_millicores: 100, ..Default::default() }
    }

    #[test]
    fn pods_beyond_the_ips_stay_pending_with_the_reason() {
        let mut c = Cluster::new(Strategy::BinPack, 0, 15_000);
        c.report(&report("i-1", "a", "z1", caps(2, 16), 1, &[]), 0);
        for k in 0..3 {
            c.submit(pod(&format!("p{k}")), 0).unwrap();
        }
        let ev = c.schedule(0);
        assert_eq!(ev.len(), 2);
        let waiting: Vec<_> = c.pending().collect();
        assert_eq!(waiting.len(), 1);
        assert!(waiting[0].message.contains("no shared IP left"), "{}", waiting[0].message);
        let ins = c.take_instruction("i-1");
        assert_eq!((ins.len(), ins[0].run.len()), (1, 2));
        assert!(c.take_instruction("i-1").is_empty());
        assert_eq!(c.submit(pod("p0"), 0), Ok(Vec::new()), "the same spec again is a retry");
        let other = pb::PodSpec { cpu_millicores: 200, labels: [("app".to_string(), "x".to_string())].into(), ..pod("p0") };
        assert_eq!(c.submit(other, 0), Err(SubmitError::Exists { key: "d/p0".into(), differs: vec!["cpu_millicores", "labels"] }));
    }

    #[test]
    fn every_status_change_is_recorded_once_for_watchers() {
        use crate::watch::ChangeKind::*;
        let kinds = |c: &mut Cluster| c.take_changes().into_iter().map(|ch| (ch.kind, ch.status.phase, ch.status.node)).collect::<Vec<_>>();
        let mut c = Cluster::new(Strategy::BinPack, 0, 15_000);
        c.report(&report("i-1", "a", "z1", caps(10, 16), 1, &[]), 0);
        c.submit(pod("z"), 0).unwrap();
        c.schedule(0);
        assert!(c.take_changes().is_empty(), "nothing is recorded until asked");
        c.record_changes();
        c.submit(pod("p"), 0).unwrap();
        c.schedule(0);
        let (pending, bound, running) = (pb::PodPhase::Pending as i32, pb::PodPhase::Bound as i32, pb::PodPhase::Running as i32);
        assert_eq!(kinds(&mut c), vec![(Added, pending, String::new()), (Bound, bound, "i-1".into())]);
        c.submit(pod("p"), 0).unwrap();
        assert!(kinds(&mut c).is_empty(), "a retried submit changes nothing");
        let runs = |seq| {
            let mut r = report("i-1", "a", "z1", caps(9, 16), seq, &["d/p"]);
            r.pods[0].phase = running;
            r
        };
        c.report(&runs(2), 100);
        assert_eq!(kinds(&mut c), vec![(StatusChanged, running, "i-1".into())]);
        c.report(&runs(3), 200);
        assert!(kinds(&mut c).is_empty(), "a report that changes nothing of the pod is no change");
        c.delete("d/p").unwrap();
        assert_eq!(kinds(&mut c), vec![(Deleted, running, "i-1".into())]);
        // A pod that finds no node changes once with the reason, not at every try.
        let mut big = pod("big");
        big.cpu_millicores = 1 << 40;
        c.submit(big, 300).unwrap();
        c.schedule(300);
        c.report(&report("i-1", "a", "z1", caps(10, 16), 4, &[]), 400);
        c.schedule(400);
        c.schedule(500);
        let ch = c.take_changes();
        assert_eq!(ch.iter().map(|c| c.kind).collect::<Vec<_>>(), vec![Added, StatusChanged], "{ch:?}");
    }

    #[test]
    fn an_expired_lease_reschedules_the_pods_elsewhere() {
        let mut c = Cluster::new(Strategy::BinPack, 0, 15_000);
        c.report(&report("i-1", "a", "z1", caps(10, 16), 1, &[]), 0);
        c.submit(pod("p"), 0).unwrap();
        c.schedule(0);
        assert_eq!(c.pod("d/p").unwrap().node.as_deref(), Some("i-1"));
        c.report(&report("i-2", "a", "z1", caps(10, 16), 1, &[]), 10_000);
        assert!(c.expire_leases(14_000).is_empty());
        let ev = c.expire_leases(16_000);
        assert_eq!(ev, vec![Event::Unbound { pod: "d/p".into() }]);
        c.schedule(16_000);
        assert_eq!(c.pod("d/p").unwrap().node.as_deref(), Some("i-2"));
        // The first node comes back still running the pod: it is told to remove it.
        c.report(&report("i-1", "a", "z1", caps(9, 16), 2, &["d/p"]), 17_000);
        assert_eq!(c.take_instruction("i-1")[0].remove, vec!["d/p".to_string()]);
    }

    #[test]
    fn a_no_execute_taint_evicts_what_does_not_tolerate_it_and_tolerated_seconds_run_out() {
        let mut c = Cluster::new(Strategy::BinPack, 0, 60_000);
        c.report(&report("i-1", "a", "z1", caps(10, 16), 1, &[]), 0);
        let tol = |secs: Option<i64>| pb::Toleration { key: "maintenance".into(), operator: "Exists".into(), effect: "NoExecute".into(), toleration_seconds: secs, ..Default::default() };
        c.submit(pod("plain"), 0).unwrap();
        c.submit(pb::PodSpec { tolerations: vec![tol(Some(30))], ..pod("brief") }, 0).unwrap();
        c.submit(pb::PodSpec { tolerations: vec![tol(None)], ..pod("always") }, 0).unwrap();
        c.schedule(0);
        assert_eq!(c.pods().filter(|p| p.node.is_some()).count(), 3);
        let tainted = |seq: u64| {
            let mut r = report("i-1", "a", "z1", caps(10, 16), seq, &["d/plain", "d/brief", "d/always"]);
            r.identity.as_mut().unwrap().taints.push(pb::Taint { key: "maintenance".into(), value: String::new(), effect: "NoExecute".into() });
            r
        };
        let ev = c.report(&tainted(2), 1_000);
        assert_eq!(ev, vec![Event::Unbound { pod: "d/plain".into() }]);
        assert!(c.pod("d/plain").unwrap().message.contains("taint maintenance:NoExecute not tolerated"), "{}", c.pod("d/plain").unwrap().message);
        assert!(c.report(&tainted(3), 20_000).is_empty(), "30 s not yet passed");
        assert_eq!(c.report(&tainted(4), 31_000), vec![Event::Unbound { pod: "d/brief".into() }]);
        assert_eq!(c.pod("d/always").unwrap().node.as_deref(), Some("i-1"));
        c.schedule(31_000);
        assert_eq!(c.pod("d/plain").unwrap().node, None, "the only node is tainted");
    }

    #[test]
    fn a_pod_of_higher_priority_preempts_the_lowest_and_its_node_is_held_for_it() {
        let mut c = Cluster::new(Strategy::BinPack, 0, 60_000);
        c.report(&report("i-1", "a", "z1", caps(2, 16), 1, &[]), 0);
        let low = |n: &str, p: i32| pb::PodSpec { priority: p, labels: [("app".to_string(), n.to_string())].into(), ..pod(n) };
        c.submit(low("batch", -10), 0).unwrap();
        c.submit(low("web", 0), 0).unwrap();
        c.schedule(0);
        c.budgets = vec![crate::placement::preemption::DisruptionBudget { namespace: "d".into(), match_labels: [("app".to_string(), "web".to_string())].into(), min_available: Some(1), max_unavailable: None }];
        // Both IPs taken: a pod of priority 100 evicts the batch pod, not web (higher, and kept by
        // its budget), and the room is held for it while the agent removes the victim.
        c.submit(low("critical", 100), 0).unwrap();
        let ev = c.schedule(0);
        assert!(ev.contains(&Event::Unbound { pod: "d/batch".into() }), "{ev:?}");
        assert_eq!(c.pod("d/web").unwrap().node.as_deref(), Some("i-1"));
        assert!(c.pod("d/batch").unwrap().message.contains("preempted on node i-1 by d/critical (priority 100)"));
        // The victim's unacknowledged reservation came back at once: the preemptor binds there, and
        // the victim does not take its place back.
        c.schedule(1);
        assert_eq!(c.pod("d/critical").unwrap().node.as_deref(), Some("i-1"));
        assert_eq!(c.pod("d/batch").unwrap().node, None);
        // Equal priority preempts nothing; the web pod's budget forbids evicting it.
        c.submit(low("other", 100), 2).unwrap();
        let ev = c.schedule(2);
        assert!(!ev.iter().any(|e| matches!(e, Event::Unbound { .. })), "{ev:?}");
    }

    #[test]
    fn a_cordoned_node_takes_no_new_pod_a_drained_one_gives_its_pods_back_and_both_survive_a_restart() {
        let mut c = Cluster::new(Strategy::BinPack, 0, 60_000);
        let mut store = MemoryStore::default();
        c.report(&report("i-1", "a", "z1", caps(10, 16), 1, &[]), 0);
        c.report(&report("i-2", "a", "z1", caps(10, 16), 1, &[]), 0);
        store.append(&c.submit(pod("p"), 0).unwrap()).unwrap();
        store.append(&c.schedule(0)).unwrap();
        let on = c.pod("d/p").unwrap().node.clone().unwrap();
        let other = if on == "i-1" { "i-2" } else { "i-1" };
        store.append(&c.cordon(other, true, false, 1).unwrap()).unwrap();
        assert!(c.node_state_of(other).unwrap().taints.iter().any(|t| t.key == "node.kubernetes.io/unschedulable"));
        // Draining the pod's node leaves it nowhere to go: both are cordoned.
        let ev = c.cordon(&on, false, true, 2).unwrap();
        assert!(ev.contains(&Event::Unbound { pod: "d/p".into() }), "{ev:?}");
        store.append(&ev).unwrap();
        c.schedule(2);
        assert_eq!(c.pending().next().unwrap().message, "0/2 nodes available: 2 nodes: cordoned");
        // A new leader (or a restart) keeps the cordons; uncordoning one lets the pod back.
        let mut d = Cluster::new(Strategy::BinPack, 0, 60_000);
        d.restore(&store.load().unwrap(), 3).unwrap();
        d.report(&report("i-1", "a", "z1", caps(10, 16), 1, &[]), 3);
        d.report(&report("i-2", "a", "z1", caps(10, 16), 1, &[]), 3);
        d.schedule(3);
        assert_eq!(d.pod("d/p").unwrap().node, None);
        d.cordon(other, false, false, 4).unwrap();
        d.schedule(4);
        assert_eq!(d.pod("d/p").unwrap().node.as_deref(), Some(other));
        assert!(d.cordon("i-9", true, false, 5).is_none());
        // A drain honours the budgets: of two web pods with min_available 1, one moves.
        store.append(&d.submit(pb::PodSpec { labels: [("app".to_string(), "web".to_string())].into(), ..pod("w1") }, 6).unwrap()).unwrap();
        store.append(&d.submit(pb::PodSpec { labels: [("app".to_string(), "web".to_string())].into(), ..pod("w2") }, 6).unwrap()).unwrap();
        d.schedule(6);
        assert_eq!(d.pod("d/w1").unwrap().node.as_deref(), Some(other));
        d.budgets = vec![crate::placement::preemption::DisruptionBudget { namespace: "d".into(), match_labels: [("app".to_string(), "web".to_string())].into(), min_available: Some(1), max_unavailable: None }];
        let ev = d.cordon(other, true, true, 7).unwrap();
        assert_eq!(ev.iter().filter(|e| matches!(e, Event::Unbound { pod } if pod.starts_with("d/w"))).count(), 1, "{ev:?}");
    }

    #[test]
    fn a_restored_state_keeps_bindings_and_the_queue() {
        let mut store = MemoryStore::default();
        let mut c = Cluster::new(Strategy::BinPack, 0, 15_000);
        c.report(&report("i-1", "a", "z1", caps(1, 16), 1, &[]), 0);
        for k in 0..3 {
            store.append(&c.submit(pod(&format!("p{k}")), 0).unwrap()).unwrap();
        }
        store.append(&c.schedule(0)).unwrap();
        let mut d = Cluster::new(Strategy::BinPack, 0, 15_000);
        d.restore(&store.load().unwrap(), 100).unwrap();
        assert_eq!(d.pod("d/p0").unwrap().node.as_deref(), Some("i-1"));
        assert_eq!(d.pending().map(|p| p.spec.decode().name).collect::<Vec<_>>(), vec!["p1", "p2"]);
        // The node reports without the pod (it never got it): it is reserved and sent again.
        d.report(&report("i-1", "a", "z1", caps(1, 16), 5, &[]), 200);
        assert_eq!(d.take_instruction("i-1")[0].run.len(), 1);
        assert!(d.schedule(200).is_empty(), "the last IP is held for p0");
    }

    fn disk_pod(name: &str, params: &[(&str, &str)]) -> pb::PodSpec {
        let disk = pb::VolumeSpec { name: "data".into(), kind: pb::VolumeKind::Disk as i32, mount_path: "/data".into(), parameters: params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), ..Default::default() };
        pb::PodSpec { volumes: vec![disk], ..pod(name) }
    }

    #[test]
    fn a_pod_with_a_disk_stays_in_its_first_zone_when_moved_and_after_a_restart() {
        let mut store = MemoryStore::default();
        let mut c = Cluster::new(Strategy::BinPack, 0, 15_000);
        c.report(&report("i-1", "a", "z1", caps(10, 16), 1, &[]), 0);
        store.append(&c.submit(disk_pod("db", &[]), 0).unwrap()).unwrap();
        store.append(&c.submit(pod("web"), 0).unwrap()).unwrap();
        let ev = c.schedule(0);
        assert!(ev.iter().any(|e| matches!(e, Event::ZonePinned { pod, .. } if pod == "d/db")), "{ev:?}");
        assert_eq!(ev.iter().filter(|e| matches!(e, Event::ZonePinned { .. })).count(), 1, "a pod without a disk is not pinned");
        store.append(&ev).unwrap();
        // Its node lost, only a node of z1 may take it; the pod without a disk goes anywhere.
        c.report(&report("i-2", "a", "z2", caps(10, 16), 1, &[]), 10_000);
        c.expire_leases(16_000);
        c.schedule(16_000);
        assert_eq!(c.pod("d/web").unwrap().node.as_deref(), Some("i-2"));
        assert_eq!(c.pod("d/db").unwrap().node, None);
        assert!(c.pending().next().unwrap().message.contains("not in zone z1"), "{}", c.pending().next().unwrap().message);
        c.report(&report("i-3", "a", "z1", caps(10, 16), 1, &[]), 16_500);
        c.schedule(16_500);
        assert_eq!(c.pod("d/db").unwrap().node.as_deref(), Some("i-3"));
        // The pin is in the store: a restarted scheduler keeps it.
        let mut d = Cluster::new(Strategy::BinPack, 0, 15_000);
        d.restore(&store.load().unwrap(), 20_000).unwrap();
        assert_eq!(d.pod("d/db").unwrap().req.zone.as_deref(), Some("z1"));
        assert_eq!(d.pod("d/web").unwrap().req.zone, None);
    }

    #[test]
    fn a_retried_submit_matches_a_pod_whose_zone_was_pinned() {
        let mut c = Cluster::new(Strategy::BinPack, 0, 15_000);
        c.report(&report("i-1", "a", "z1", caps(10, 16), 1, &[]), 0);
        c.submit(disk_pod("db", &[]), 0).unwrap();
        c.schedule(0);
        assert_eq!(c.pod("d/db").unwrap().spec.decode().pool_selector.get("zone").map(String::as_str), Some("z1"));
        assert_eq!(c.submit(disk_pod("db", &[]), 10), Ok(Vec::new()), "the original spec is a retry");
        assert_eq!(c.pod("d/db").unwrap().node.as_deref(), Some("i-1"));
        let mut elsewhere = disk_pod("db", &[]);
        elsewhere.pool_selector.insert("zone".into(), "z2".into());
        assert_eq!(c.submit(elsewhere, 10), Err(SubmitError::Exists { key: "d/db".into(), differs: vec!["pool_selector"] }));
        // A pod without a disk is never pinned: a zone in the store is its submitter's.
        let mut web = pod("web");
        web.pool_selector.insert("zone".into(), "z1".into());
        c.submit(web, 0).unwrap();
        assert_eq!(c.submit(pod("web"), 0), Err(SubmitError::Exists { key: "d/web".into(), differs: vec!["pool_selector"] }));
        let err = c.submit(pod("web"), 0).unwrap_err().to_string();
        assert!(err.contains("d/web exists with another spec (differing in pool_selector)"), "{err}");
    }

    #[test]
    fn a_disk_naming_its_zone_goes_only_there() {
        let mut c = Cluster::new(Strategy::BinPack, 0, 15_000);
        c.report(&report("i-1", "a", "z1", caps(10, 16), 1, &[]), 0);
        c.submit(disk_pod("db", &[("zoneId", "z2")]), 0).unwrap();
        let ev = c.schedule(0);
        assert!(ev.is_empty(), "{ev:?}");
        c.report(&report("i-2", "a", "z2", caps(10, 16), 1, &[]), 100);
        let ev = c.schedule(100);
        assert_eq!(ev, vec![Event::Bound { pod: "d/db".into(), node: "i-2".into() }], "bound, and not pinned again: the disk names its zone");
    }

    #[test]
    fn a_scale_up_begun_before_a_takeover_is_counted_and_finished_by_the_next_leader() {
        let mut store = MemoryStore::default();
        let mut c = Cluster::new(Strategy::BinPack, 0, 15_000);
        let u = ScaleUp { client_token: "t-1".into(), pool: "a".into(), instance_type: "ecs.g7.large".into(), zone_id: "z1".into(), vswitch_id: "vsw-1".into(), count: 2, started_at_ms: 7 };
        store.append(&c.start_scale_up(u)).unwrap();
        // The leader dies before RunInstances answers; the next one loads the store.
        let mut d = Cluster::new(Strategy::BinPack, 0, 15_000);
        d.restore(&store.load().unwrap(), 100).unwrap();
        assert_eq!(d.scale_ups.keys().collect::<Vec<_>>(), vec!["t-1"]);
        assert_eq!(d.on_the_way().len(), 2, "its two instances count as on their way, so no plan makes them again");
        let ev = d.finish_scale_up("t-1", &["i-1".into(), "i-2".into()]);
        store.append(&ev).unwrap();
        let snap = store.load().unwrap();
        assert!(snap.scale_ups.is_empty());
        assert_eq!(snap.requested.keys().collect::<Vec<_>>(), vec!["i-1", "i-2"]);
        assert_eq!(snap.requested["i-1"].requested_at_ms, 7, "the boot timeout runs from the first call");
        assert!(d.finish_scale_up("t-1", &[]).is_empty(), "finished once");
    }

    #[test]
    fn an_agent_that_reconnects_numbering_from_one_releases_what_was_held_for_it() {
        let mut c = Cluster::new(Strategy::BinPack, 0, 15_000);
        c.report(&report("i-1", "a", "z1", caps(2, 16), 50, &[]), 0);
        c.submit(pod("p0"), 0).unwrap();
        c.schedule(0);
        assert_eq!(c.pod("d/p0").unwrap().node.as_deref(), Some("i-1"));
        // The agent restarts and runs the pod; its new stream starts again at 1 and its counts
        // include the pod (one IP left). Without a new baseline the scheduler would hold the pod's
        // IP until report 51, and take it twice.
        c.stream_opened("i-1");
        c.report(&report("i-1", "a", "z1", caps(1, 16), 1, &["d/p0"]), 1_000);
        let n = c.placement.node(c.placement.index_of("i-1").unwrap()).unwrap();
        assert!(n.reservations.is_empty(), "{:?}", n.reservations);
        assert_eq!(n.free.shared_ips, 1);
        c.submit(pod("p1"), 1_000).unwrap();
        assert_eq!(c.schedule(1_000), vec![Event::Bound { pod: "d/p1".into(), node: "i-1".into() }]);
        // A pod bound on the new stream is held until a later report of it lists the pod.
        c.report(&report("i-1", "a", "z1", caps(1, 16), 2, &["d/p0"]), 2_000);
        let n = c.placement.node(c.placement.index_of("i-1").unwrap()).unwrap();
        assert_eq!((n.reservations.len(), n.free.shared_ips), (1, 0));
    }

    #[test]
    fn the_first_instructions_of_a_stream_carry_every_pod_under_the_budget() {
        let mut c = Cluster::new(Strategy::BinPack, 0, 15_000);
        let big = pb::NodeReport { allocatable: Some(caps(64, 16)), ..report("i-1", "a", "z1", caps(64, 16), 1, &[]) };
        c.report(&big, 0);
        for k in 0..40 {
            let mut spec = pod(&format!("p{k:02}"));
            spec.labels.insert("blob".into(), "x".repeat(200 << 10));
            c.submit(spec, 0).unwrap();
        }
        c.schedule(0);
        assert!(c.take_instruction("i-1").iter().all(|i| i.encoded_len() <= INSTRUCTION_BUDGET_BYTES));
        c.stream_opened("i-1");
        let parts = c.full_instruction("i-1");
        assert!(parts.iter().all(|i| i.encoded_len() <= INSTRUCTION_BUDGET_BYTES));
        let names: Vec<String> = parts.iter().flat_map(|i| i.run.iter().map(|s| s.name.clone())).collect();
        assert_eq!(names, (0..40).map(|k| format!("p{k:02}")).collect::<Vec<_>>());
        // A node without pods still hears back.
        c.report(&report("i-2", "a", "z1", caps(64, 16), 1, &[]), 0);
        assert_eq!(c.full_instruction("i-2").len(), 1);
    }

    /// Every pod key of `namespace` page after page, and the number of pages.
    fn list_all(c: &Cluster, namespace: &str, page_size: u32) -> (Vec<String>, usize) {
        let mut names = Vec::new();
        let mut pages = 0;
        let mut page_token = String::new();
        loop {
            let page = c.list_pods(&pb::ListPodsRequest { namespace: namespace.into(), page_size, page_token }).unwrap();
            pages += 1;
            assert!(page.encoded_len() <= PAGE_BUDGET_BYTES || page.pods.len() == 1, "page of {} bytes", page.encoded_len());
            names.extend(page.pods.iter().map(|p| p.spec.as_ref().map(|s| format!("{}/{}", s.namespace, s.name)).unwrap_or_default()));
            if page.next_page_token.is_empty() {
                return (names, pages);
            }
            page_token = page.next_page_token;
        }
    }

    #[test]
    fn pods_are_listed_by_pages_each_once_even_while_pods_come_and_go() {
        let mut c = Cluster::new(Strategy::BinPack, 0, 15_000);
        for k in 0..1_200 {
            c.submit(pod(&format!("p{k:04}")), 0).unwrap();
        }
        c.submit(pb::PodSpec { namespace: "e".into(), ..pod("other") }, 0).unwrap();
        let (all, pages) = list_all(&c, "", 0);
        assert_eq!((all.len(), pages), (1_201, 3), "500 a page by default");
        let (d, _) = list_all(&c, "d", 5_000);
        assert_eq!(d.len(), 1_200);
        assert!(d.windows(2).all(|w| w[0] < w[1]), "in key order, each once");
        // Between pages, pods are added and deleted: every pod there throughout is listed once.
        let mut page_token = String::new();
        let mut seen = Vec::new();
        let mut round = 0;
        loop {
            let page = c.list_pods(&pb::ListPodsRequest { namespace: "d".into(), page_size: 100, page_token }).unwrap();
            seen.extend(page.pods.iter().map(|p| p.spec.as_ref().unwrap().name.clone()));
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
            let last = seen.last().unwrap().clone();
            // Delete the page's last pod (the cursor) and one ahead; add one behind and one ahead.
            c.delete(&format!("d/{last}")).unwrap();
            c.delete(&format!("d/p{:04}", 1_100 + round)).unwrap();
            c.submit(pod(&format!("a{round}")), 0).unwrap();
            c.submit(pod(&format!("q{round}")), 0).unwrap();
            round += 1;
        }
        let mut sorted = seen.clone();
        sorted.dedup();
        assert_eq!(sorted.len(), seen.len(), "nothing twice");
        for k in 0..1_100 {
            assert!(seen.contains(&format!("p{k:04}")), "p{k:04} missing");
        }
        assert!(seen.iter().any(|n| n.starts_with('q')), "pods added ahead of the cursor are listed");
        let bad = c.list_pods(&pb::ListPodsRequest { namespace: "e".into(), page_size: 0, page_token: page::token(Listing::Pods, "d", "d/p0001") });
        assert!(bad.is_err(), "a token of another namespace");
    }

    #[test]
    fn a_page_of_large_specs_is_cut_by_bytes() {
        let mut c = Cluster::new(Strategy::BinPack, 0, 15_000);
        for k in 0..30 {
            let mut spec = pod(&format!("p{k:02}"));
            spec.labels.insert("blob".into(), "x".repeat(300 << 10));
            c.submit(spec, 0).unwrap();
        }
        let (all, pages) = list_all(&c, "", 0);
        assert_eq!(all.len(), 30);
        assert!(pages >= 10, "{pages} pages of at most 1 MiB");
        for k in 0..3 {
            c.report(&report(&format!("i-{k}"), "a", "z1", caps(1, 16), 1, &[]), 0);
        }
        let first = c.list_nodes(&pb::ListNodesRequest { page_size: 2, page_token: String::new() }).unwrap();
        let rest = c.list_nodes(&pb::ListNodesRequest { page_size: 2, page_token: first.next_page_token.clone() }).unwrap();
        let ids = |r: &pb::ListNodesResponse| r.nodes.iter().map(|n| n.last_report.as_ref().unwrap().identity.as_ref().unwrap().instance_id.clone()).collect::<Vec<_>>();
        assert_eq!((ids(&first), ids(&rest), rest.next_page_token.as_str()), (vec!["i-0".to_string(), "i-1".into()], vec!["i-2".to_string()], ""));
        assert!(c.list_nodes(&pb::ListNodesRequest { page_size: 2, page_token: "nope".into() }).is_err());
    }
}

//! The scheduler's whole state as pure logic: pods (pending or bound), nodes (through
//! [`Placement`]), nodes requested of the cloud, and what each node's agent must be told. Every
//! mutation returns the [`Event`]s to make durable; the caller appends them to the store before
//! answering anyone or sending instructions.

use std::collections::{BTreeMap, HashMap, HashSet};

use berth_proto::cluster::v1 as pb;

use crate::placement::{Decision, Health, Placement, PodRequest, Strategy, pod_key};
use crate::store::{Event, RequestedNode, Snapshot, StoredSpec};

#[derive(Debug, Clone)]
pub struct PodRecord {
    pub spec: pb::PodSpec,
    pub req: PodRequest,
    pub phase: pb::PodPhase,
    pub node: Option<String>,
    pub pod_ip: String,
    pub message: String,
    /// Scheduler clock (ms) since when the pod waits for a node.
    pub pending_since_ms: u64,
    order: u64,
    /// The placement's capacity epoch when the pod last found no node.
    tried_at_epoch: Option<u64>,
}

impl PodRecord {
    pub fn status(&self) -> pb::PodStatus {
        pb::PodStatus { spec: Some(self.spec.clone()), phase: self.phase as i32, node: self.node.clone().unwrap_or_default(), pod_ip: self.pod_ip.clone(), message: self.message.clone() }
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
    pods: HashMap<String, PodRecord>,
    /// Pending pods by submission order.
    pending: BTreeMap<u64, String>,
    next_order: u64,
    outbox: HashMap<String, Outbox>,
    /// Pods bound before a restart to nodes that have not reported since.
    awaiting_node: HashMap<String, Vec<String>>,
    /// Nodes asked of the cloud that have not reported yet.
    pub requested: BTreeMap<String, RequestedNode>,
    /// Nodes being removed by the autoscaler: emptied, then deleted once they run nothing.
    pub deleting: HashSet<String>,
    /// Nodes deleted by the autoscaler: a late report of theirs must not bring them back.
    deleted: HashSet<String>,
    pub lease_ms: u64,
    /// When the state was loaded: pods awaiting a node are rescheduled a lease after this.
    started_ms: u64,
}

impl Cluster {
    pub fn new(strategy: Strategy, percent_of_nodes_to_score: u32, lease_ms: u64) -> Cluster {
        Cluster {
            placement: Placement::new(strategy, percent_of_nodes_to_score),
            pods: HashMap::new(),
            pending: BTreeMap::new(),
            next_order: 0,
            outbox: HashMap::new(),
            awaiting_node: HashMap::new(),
            requested: BTreeMap::new(),
            deleting: HashSet::new(),
            deleted: HashSet::new(),
            lease_ms,
            started_ms: 0,
        }
    }

    /// Rebuilds the state a store holds. Bound pods wait for their node's first report (which
    /// says whether the agent runs them) for up to a lease, then go back to pending.
    pub fn restore(&mut self, snap: &Snapshot, now_ms: u64) -> Result<(), String> {
        self.started_ms = now_ms;
        self.next_order = snap.next_order;
        for (key, stored) in &snap.pods {
            let spec = stored.spec.decode().map_err(|e| format!("pod {key} in the store does not decode: {e}"))?;
            let req = PodRequest::of(&spec);
            let phase = if stored.node.is_some() { pb::PodPhase::Bound } else { pb::PodPhase::Pending };
            self.pods.insert(key.clone(), PodRecord { spec, req, phase, node: stored.node.clone(), pod_ip: String::new(), message: String::new(), pending_since_ms: now_ms, order: stored.order, tried_at_epoch: None });
            match &stored.node {
                Some(n) => self.awaiting_node.entry(n.clone()).or_default().push(key.clone()),
                None => {
                    self.pending.insert(stored.order, key.clone());
                }
            }
        }
        self.requested = snap.requested.clone();
        Ok(())
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

    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Takes in a pod whose spec the API edge checked ([`crate::validation::pod`]). The same spec
    /// again (a retry after a lost reply) changes nothing and gives no events: the caller answers
    /// with the pod's current status.
    pub fn submit(&mut self, spec: pb::PodSpec, now_ms: u64) -> Result<Vec<Event>, SubmitError> {
        let key = pod_key(&spec.namespace, &spec.name);
        if let Some(rec) = self.pods.get(&key) {
            let differs = differences(&rec.spec, &spec);
            if differs.is_empty() {
                return Ok(Vec::new());
            }
            return Err(SubmitError::Exists { key, differs });
        }
        let order = self.next_order;
        self.next_order += 1;
        let event = Event::Submitted { pod: key.clone(), spec: StoredSpec::of(&spec) };
        let req = PodRequest::of(&spec);
        self.pods.insert(key.clone(), PodRecord { spec, req, phase: pb::PodPhase::Pending, node: None, pod_ip: String::new(), message: "waiting for a node".into(), pending_since_ms: now_ms, order, tried_at_epoch: None });
        self.pending.insert(order, key);
        Ok(vec![event])
    }

    /// Deletes a pod; a bound one is removed from its node.
    pub fn delete(&mut self, key: &str) -> Option<Vec<Event>> {
        let rec = self.pods.remove(key)?;
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

    fn try_place(&mut self, key: &str, failed: &mut HashMap<PodRequest, String>, _now_ms: u64, events: &mut Vec<Event>) {
        let epoch = self.placement.capacity_epoch;
        let Some(rec) = self.pods.get_mut(key) else { return };
        if rec.node.is_some() {
            return;
        }
        if let Some(m) = failed.get(&rec.req) {
            rec.message.clone_from(m);
            rec.tried_at_epoch = Some(epoch);
            return;
        }
        match self.placement.choose(&rec.req) {
            Decision::Node(idx) => {
                self.placement.bind(idx, key, &rec.req);
                let chosen = self.placement.node(idx).expect("chosen node exists");
                let node = chosen.id.clone();
                if rec.req.pins_zone(&rec.spec) && !chosen.identity.zone_id.is_empty() {
                    // Moved later (its node lost), the pod must find its disk: same zone.
                    rec.spec.pool_selector.insert("zone".into(), chosen.identity.zone_id.clone());
                    rec.req = PodRequest::of(&rec.spec);
                    events.push(Event::ZonePinned { pod: key.to_string(), spec: StoredSpec::of(&rec.spec) });
                }
                rec.node = Some(node.clone());
                rec.phase = pb::PodPhase::Bound;
                rec.message.clear();
                rec.tried_at_epoch = None;
                self.pending.remove(&rec.order);
                self.outbox.entry(node.clone()).or_default().run.push(rec.spec.clone());
                events.push(Event::Bound { pod: key.to_string(), node });
            }
            Decision::Unschedulable(m) => {
                rec.message.clone_from(&m);
                rec.tried_at_epoch = Some(epoch);
                failed.insert(rec.req.clone(), m);
            }
        }
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
        let listed: HashSet<String> = report.pods.iter().filter_map(|p| p.spec.as_ref()).map(|s| pod_key(&s.namespace, &s.name)).collect();
        if let Some(waiting) = self.awaiting_node.remove(&id) {
            for key in waiting {
                let Some(rec) = self.pods.get(&key) else { continue };
                if rec.node.as_deref() != Some(id.as_str()) {
                    continue;
                }
                if listed.contains(&key) {
                    // The agent runs it: its counts include it already.
                    if let Some(n) = self.placement.node_mut(idx) {
                        n.pods.insert(key.clone());
                    }
                } else {
                    self.placement.bind(idx, &key, &rec.req);
                    self.outbox.entry(id.clone()).or_default().run.push(rec.spec.clone());
                }
            }
        }
        for st in &report.pods {
            let Some(spec) = &st.spec else { continue };
            let key = pod_key(&spec.namespace, &spec.name);
            match self.pods.get_mut(&key) {
                Some(rec) if rec.node.as_deref() == Some(id.as_str()) => {
                    if let Ok(phase) = pb::PodPhase::try_from(st.phase)
                        && phase != pb::PodPhase::Unspecified
                    {
                        rec.phase = phase;
                    }
                    rec.pod_ip.clone_from(&st.pod_ip);
                    if !st.message.is_empty() {
                        rec.message.clone_from(&st.message);
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

    pub fn clear_request(&mut self, instance_id: &str) -> Vec<Event> {
        match self.requested.remove(instance_id) {
            Some(_) => vec![Event::NodeRequestCleared { instance_id: instance_id.to_string() }],
            None => Vec::new(),
        }
    }

    /// What the node's agent has not been told yet, if anything.
    pub fn take_instruction(&mut self, node: &str) -> Option<pb::NodeInstruction> {
        let ob = self.outbox.remove(node)?;
        if ob.run.is_empty() && ob.remove.is_empty() {
            return None;
        }
        let acknowledged_sequence = self.placement.index_of(node).and_then(|i| self.placement.node(i)).map_or(0, |n| n.sequence);
        Some(pb::NodeInstruction { run: ob.run, remove: ob.remove, acknowledged_sequence })
    }

    /// Everything bound to the node, for an agent that (re)connects; replaces its outbox.
    pub fn full_instruction(&mut self, node: &str) -> pb::NodeInstruction {
        let removes = self.outbox.remove(node).map(|o| o.remove).unwrap_or_default();
        let run = match self.placement.index_of(node).and_then(|i| self.placement.node(i)) {
            Some(n) => n.pods.iter().filter_map(|k| self.pods.get(k)).map(|r| r.spec.clone()).collect(),
            None => Vec::new(),
        };
        let acknowledged_sequence = self.placement.index_of(node).and_then(|i| self.placement.node(i)).map_or(0, |n| n.sequence);
        pb::NodeInstruction { run, remove: removes, acknowledged_sequence }
    }

    /// Nodes with instructions waiting.
    pub fn nodes_with_instructions(&self) -> Vec<String> {
        self.outbox.iter().filter(|(_, o)| !o.run.is_empty() || !o.remove.is_empty()).map(|(k, _)| k.clone()).collect()
    }

    pub fn node_states(&self) -> Vec<pb::NodeState> {
        self.placement.nodes().map(|(_, n)| pb::NodeState { last_report: Some(n.last_report.clone()), state: n.health.as_str().to_string() }).collect()
    }
}

/// The fields of a submitted spec that differ from the stored one's, by their names. A zone the
/// cluster pinned (a disk pod's first bind) is not the submitter's and does not count.
fn differences(stored: &pb::PodSpec, submitted: &pb::PodSpec) -> Vec<&'static str> {
    let mut stored = stored.clone();
    if !submitted.pool_selector.contains_key("zone") && PodRequest::of(submitted).pins_zone(submitted) {
        stored.pool_selector.remove("zone");
    }
    // Every field named (no `..`): a field added to PodSpec must be added here.
    let pb::PodSpec { namespace, name, cpu_millicores, memory_bytes, network_mode, security_group_ids, vswitch_id, ingress_bandwidth, egress_bandwidth, volumes, pool_selector, labels, spread_zones, command } = submitted;
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
        let ins = c.take_instruction("i-1").unwrap();
        assert_eq!(ins.run.len(), 2);
        assert!(c.take_instruction("i-1").is_none());
        assert_eq!(c.submit(pod("p0"), 0), Ok(Vec::new()), "the same spec again is a retry");
        let other = pb::PodSpec { cpu_millicores: 200, labels: [("app".to_string(), "x".to_string())].into(), ..pod("p0") };
        assert_eq!(c.submit(other, 0), Err(SubmitError::Exists { key: "d/p0".into(), differs: vec!["cpu_millicores", "labels"] }));
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
        assert_eq!(c.take_instruction("i-1").unwrap().remove, vec!["d/p".to_string()]);
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
        assert_eq!(d.pending().map(|p| p.spec.name.clone()).collect::<Vec<_>>(), vec!["p1", "p2"]);
        // The node reports without the pod (it never got it): it is reserved and sent again.
        d.report(&report("i-1", "a", "z1", caps(1, 16), 5, &[]), 200);
        assert_eq!(d.take_instruction("i-1").unwrap().run.len(), 1);
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
        assert!(c.pending().next().unwrap().message.contains("selector"), "{}", c.pending().next().unwrap().message);
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
        assert_eq!(c.pod("d/db").unwrap().spec.pool_selector.get("zone").map(String::as_str), Some("z1"));
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
}

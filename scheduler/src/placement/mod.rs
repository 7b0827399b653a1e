//! Placement: the capacity model of every node (from its reports, minus what the scheduler bound
//! since) and the choice of a node for a pod — filters on every resource, then a score.
//!
//! Speed: nodes live in a slot vector indexed by pool; a decision walks only the candidate list
//! (the pool a selector names, else every node) from a rotating start, checks each node with a
//! handful of integer comparisons and no allocation, and stops once it has found
//! `nodes_to_score` feasible nodes (as kube-scheduler's percentageOfNodesToScore: adaptive
//! `max(5, 50 − n/125)` percent of n, at least 100). Only the best-scored of those is bound.

pub mod labels;
pub mod node;
pub mod plugins;
pub mod pods;
pub mod preemption;
pub mod resources;
pub mod rules;

use std::collections::HashMap;
use std::sync::Arc;

use berth_proto::cluster::v1 as pb;

pub use node::{Health, Node};
pub use resources::{Resources, demand_of};
use plugins::{Context, Refusals, Why};
use pods::PodIndex;
use rules::{PodLabels, Rules};

/// How to choose among feasible nodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// The fullest node that fits: fewer, fuller nodes, so that idle ones can be removed.
    #[default]
    BinPack,
    /// The emptiest node that fits.
    Spread,
}

/// `namespace/name`, the key of a pod everywhere in the scheduler.
pub fn pod_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// What a pod asks of a node, computed once per pod from its spec.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct PodRequest {
    pub demand: Resources,
    /// `pool_selector["pool"]`.
    pub pool: Option<String>,
    /// `pool_selector["zone"]`, else the `zoneId` of its first disk volume that names one: a
    /// disk attaches only to instances of its zone.
    pub zone: Option<String>,
    /// Other selector entries, matched against the node's labels.
    pub labels: Vec<(String, String)>,
    pub vswitch: Option<String>,
    /// Its namespace and labels, which other pods' affinity and spread rules select.
    pub own: Arc<PodLabels>,
    /// Tolerations, node affinity, pod affinity and spread, when it has any.
    pub rules: Option<Arc<Rules>>,
    /// From its priority class (the scheduler set it at submission).
    pub priority: i32,
}

impl PodRequest {
    pub fn of(spec: &pb::PodSpec) -> PodRequest {
        let mut labels = Vec::new();
        let (mut pool, mut zone) = (None, None);
        for (k, v) in &spec.pool_selector {
            match k.as_str() {
                "pool" => pool = Some(v.clone()),
                "zone" => zone = Some(v.clone()),
                _ => labels.push((k.clone(), v.clone())),
            }
        }
        labels.sort();
        if zone.is_none() {
            zone = spec.volumes.iter().filter(|v| resources::is_disk(v)).find_map(|v| v.parameters.get("zoneId")).cloned();
        }
        PodRequest {
            demand: demand_of(spec),
            pool,
            zone,
            labels,
            vswitch: (!spec.vswitch_id.is_empty()).then(|| spec.vswitch_id.clone()),
            own: Arc::new(PodLabels::of(spec)),
            rules: Rules::of(spec),
            priority: spec.priority,
        }
    }

    /// Whether the pod must stay in the zone of the first node it is bound to: it has a disk
    /// volume (a disk attaches only in its zone) and no zone of its own.
    pub fn pins_zone(&self, spec: &pb::PodSpec) -> bool {
        self.zone.is_none() && spec.volumes.iter().any(resources::is_disk)
    }

    /// Whether a node of this identity may ever take the pod (every node rule: selectors,
    /// vSwitch, taints, node affinity; no counts).
    pub fn matches_identity(&self, identity: &pb::NodeIdentity) -> bool {
        plugins::admits(self, identity).is_ok()
    }
}

/// What a pool gives each of its nodes beyond what the agent reports: labels and taints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolTraits {
    pub labels: Vec<(String, String)>,
    pub taints: Vec<pb::Taint>,
}

impl PoolTraits {
    /// Adds the pool's labels (the node's own win) and taints (once each) to an identity.
    pub fn inherit(&self, identity: &mut pb::NodeIdentity) {
        for (k, v) in &self.labels {
            identity.labels.entry(k.clone()).or_insert_with(|| v.clone());
        }
        for t in &self.taints {
            if !identity.taints.contains(t) {
                identity.taints.push(t.clone());
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Node(u32),
    Unschedulable(String),
}

/// Every node the scheduler knows, indexed for placement.
#[derive(Debug, Default)]
pub struct Placement {
    nodes: Vec<Option<Node>>,
    free_slots: Vec<u32>,
    by_id: HashMap<String, u32>,
    by_pool: HashMap<String, Vec<u32>>,
    all: Vec<u32>,
    zones: Vec<String>,
    /// Where bound pods are, for affinity and spread rules.
    pods: PodIndex,
    /// Room held on a node for the pod that preempted pods there (node → pod, demand): other
    /// pods may not take it.
    held: HashMap<u32, Vec<(String, Resources)>>,
    /// What each pool (by name) gives its nodes: labels and taints from the config.
    pool_traits: HashMap<String, PoolTraits>,
    /// Taints given to nodes through the API (a cordon among them), by instance ID.
    node_taints: HashMap<String, Vec<pb::Taint>>,
    pub strategy: Strategy,
    /// 0: adaptive (see the module doc); otherwise a percentage of candidates.
    pub percent_of_nodes_to_score: u32,
    cursor: usize,
    scratch: Vec<(u32, f64)>,
    /// Nodes alike in everything a selector may look at share a class, so one decision matches a
    /// pod's selectors once per class, not once per node.
    classes: IdentityClasses,
    /// Per class during one decision: the node rules' verdict, once looked at.
    class_verdicts: Vec<Option<Result<f64, String>>>,
    /// Nodes per class, and each class's zone index.
    class_nodes: Vec<u32>,
    class_zone: Vec<u16>,
    /// Grows whenever capacity may have appeared (a node added or back, a free count grown, a
    /// reservation returned): a pod that found no node need not be tried again before it moves.
    pub capacity_epoch: u64,
}

impl Placement {
    pub fn new(strategy: Strategy, percent_of_nodes_to_score: u32) -> Placement {
        Placement { strategy, percent_of_nodes_to_score, ..Default::default() }
    }

    pub fn node(&self, idx: u32) -> Option<&Node> {
        self.nodes.get(idx as usize).and_then(Option::as_ref)
    }

    pub(crate) fn node_mut(&mut self, idx: u32) -> Option<&mut Node> {
        self.nodes.get_mut(idx as usize).and_then(Option::as_mut)
    }

    pub fn index_of(&self, id: &str) -> Option<u32> {
        self.by_id.get(id).copied()
    }

    pub fn nodes(&self) -> impl Iterator<Item = (u32, &Node)> {
        self.all.iter().filter_map(|&i| self.node(i).map(|n| (i, n)))
    }

    pub fn len(&self) -> usize {
        self.all.len()
    }

    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    /// Sets what each pool gives its nodes; taken in from each node's next report.
    pub fn set_pool_traits(&mut self, traits: HashMap<String, PoolTraits>) {
        self.pool_traits = traits;
    }

    /// The taints the API gave a node.
    pub fn node_taints(&self, id: &str) -> &[pb::Taint] {
        self.node_taints.get(id).map_or(&[], Vec::as_slice)
    }

    /// Sets the taints the API gives a node, taking effect at once on a node that reports.
    pub fn set_node_taints(&mut self, id: &str, taints: Vec<pb::Taint>) {
        let old = if taints.is_empty() { self.node_taints.remove(id) } else { self.node_taints.insert(id.to_string(), taints.clone()) };
        let Some(idx) = self.index_of(id) else { return };
        let Some(n) = self.node(idx) else { return };
        let mut identity = n.identity.clone();
        identity.taints.retain(|t| !old.as_ref().is_some_and(|o| o.contains(t)));
        for t in taints {
            if !identity.taints.contains(&t) {
                identity.taints.push(t);
            }
        }
        let old_class = n.class;
        let class = self.class_of(&identity);
        self.class_nodes[old_class as usize] -= 1;
        self.class_nodes[class as usize] += 1;
        let n = self.node_mut(idx).expect("indexed node exists");
        n.class = class;
        n.identity = identity;
        // An uncordoned node may take pods again.
        self.capacity_epoch += 1;
    }

    fn class_of(&mut self, identity: &pb::NodeIdentity) -> u32 {
        let class = self.classes.of(identity);
        let c = class as usize;
        if self.class_nodes.len() <= c {
            self.class_nodes.resize(c + 1, 0);
            self.class_zone.resize(c + 1, 0);
        }
        self.class_zone[c] = self.zone_index(&identity.zone_id);
        class
    }

    pub fn zone_name(&self, zone: u16) -> &str {
        self.zones.get(zone as usize).map_or("", String::as_str)
    }

    fn zone_index(&mut self, name: &str) -> u16 {
        if let Some(i) = self.zones.iter().position(|z| z == name) {
            return i as u16;
        }
        self.zones.push(name.to_string());
        (self.zones.len() - 1) as u16
    }

    /// Takes a node's report in; a node seen for the first time is added (Ready). Returns its index.
    pub fn apply_report(&mut self, report: &pb::NodeReport, now_ms: u64) -> u32 {
        let mut identity = report.identity.clone().unwrap_or_default();
        if let Some(t) = self.pool_traits.get(&identity.pool) {
            t.inherit(&mut identity);
        }
        if let Some(taints) = self.node_taints.get(&identity.instance_id) {
            PoolTraits { labels: Vec::new(), taints: taints.clone() }.inherit(&mut identity);
        }
        let id = identity.instance_id.clone();
        let idx = match self.by_id.get(&id) {
            Some(&i) => {
                let old_pool = self.node(i).map(|n| n.identity.pool.clone()).unwrap_or_default();
                if old_pool != identity.pool {
                    self.unindex_pool(&old_pool, i);
                    self.by_pool.entry(identity.pool.clone()).or_default().push(i);
                }
                let zone = self.zone_index(&identity.zone_id);
                let changed = self.node(i).is_none_or(|n| n.identity != identity);
                let old_class = self.node(i).map_or(0, |n| n.class);
                let class = if changed { self.class_of(&identity) } else { old_class };
                if class != old_class {
                    self.class_nodes[old_class as usize] -= 1;
                    self.class_nodes[class as usize] += 1;
                }
                let n = self.node_mut(i).expect("indexed node exists");
                n.zone = zone;
                n.class = class;
                if changed {
                    n.identity = identity;
                }
                i
            }
            None => {
                let zone = self.zone_index(&identity.zone_id);
                let class = self.class_of(&identity);
                self.class_nodes[class as usize] += 1;
                let node = Node {
                    id: id.clone(),
                    identity: identity.clone(),
                    zone,
                    class,
                    allocatable: Resources::default(),
                    reported_free: Resources::default(),
                    free: Resources::default(),
                    blocked: Default::default(),
                    reservations: Vec::new(),
                    pods: Default::default(),
                    health: Health::Ready,
                    sequence: 0,
                    last_seen_ms: now_ms,
                    underused_since_ms: None,
                    reported_pods: 0,
                    last_report: Default::default(),
                };
                let i = match self.free_slots.pop() {
                    Some(i) => {
                        self.nodes[i as usize] = Some(node);
                        i
                    }
                    None => {
                        self.nodes.push(Some(node));
                        (self.nodes.len() - 1) as u32
                    }
                };
                self.by_id.insert(id, i);
                self.by_pool.entry(identity.pool.clone()).or_default().push(i);
                self.all.push(i);
                i
            }
        };
        let n = self.node_mut(idx).expect("node exists");
        let before = n.free;
        n.apply_report(report, now_ms);
        let mut grew = !before.fits(&n.free);
        if n.health == Health::Unknown {
            n.health = Health::Ready;
            grew = true;
        }
        if grew {
            self.capacity_epoch += 1;
        }
        idx
    }

    /// The node's agent opened a new report stream (see [`Node::restart_sequence`]).
    pub fn restart_sequence(&mut self, idx: u32) {
        if let Some(n) = self.node_mut(idx) {
            n.restart_sequence();
        }
    }

    fn unindex_pool(&mut self, pool: &str, idx: u32) {
        if let Some(v) = self.by_pool.get_mut(pool) {
            v.retain(|&i| i != idx);
        }
    }

    /// Forgets a node; the caller has dealt with its pods first.
    pub fn remove_node(&mut self, idx: u32) -> Option<Node> {
        let node = self.nodes.get_mut(idx as usize)?.take()?;
        self.by_id.remove(&node.id);
        self.held.remove(&idx);
        self.class_nodes[node.class as usize] -= 1;
        self.unindex_pool(&node.identity.pool, idx);
        self.all.retain(|&i| i != idx);
        self.free_slots.push(idx);
        Some(node)
    }

    pub fn set_health(&mut self, idx: u32, health: Health) {
        if let Some(n) = self.node_mut(idx) {
            n.health = health;
            if health == Health::Ready {
                self.capacity_epoch += 1;
            }
        }
    }

    fn nodes_to_score(&self, candidates: usize) -> usize {
        let percent = if self.percent_of_nodes_to_score == 0 {
            50usize.saturating_sub(candidates / 125).max(5)
        } else {
            self.percent_of_nodes_to_score.min(100) as usize
        };
        (candidates * percent / 100).max(100).min(candidates)
    }

    fn score(&self, n: &Node, d: &Resources) -> f64 {
        let after = n.free.saturating_sub(d);
        // CPU, memory and pod slots always count; the network and disk resources only when the
        // pod uses them, so a shared-mode pod is packed by its IPs, not by unrelated ENI slots.
        let counted = [true, true, true, d.shared_ips > 0, d.eni_slots > 0, d.member_eni_slots > 0, d.disk_slots > 0];
        let packed = n.allocatable.mean_used_fraction(&after, counted);
        match self.strategy {
            Strategy::BinPack => packed,
            Strategy::Spread => 1.0 - packed,
        }
    }

    /// Holds room on a node for a pod that preempted pods there, until it binds or goes.
    pub fn hold(&mut self, idx: u32, pod: &str, demand: Resources) {
        self.held.entry(idx).or_default().push((pod.to_string(), demand));
    }

    /// Releases what was held for the pod (it is bound, deleted, or gave up).
    pub fn release_hold(&mut self, pod: &str) {
        self.held.retain(|_, v| {
            v.retain(|(p, _)| p != pod);
            !v.is_empty()
        });
    }

    /// The lowest priority of a bound pod: a pod of no higher priority can preempt nothing.
    pub fn lowest_bound_priority(&self) -> Option<i32> {
        self.pods.lowest_priority()
    }

    /// The node a pod holds room on, if any.
    pub fn held_for(&self, pod: &str) -> Option<u32> {
        self.held.iter().find(|(_, v)| v.iter().any(|(p, _)| p == pod)).map(|(i, _)| *i)
    }

    /// Chooses a node for the pod, or says why none fits. Does not bind.
    pub fn choose(&mut self, req: &PodRequest) -> Decision {
        self.choose_as("", req)
    }

    /// As [`Placement::choose`], for the pod `key`: room held for it counts as free.
    pub fn choose_as(&mut self, key: &str, req: &PodRequest) -> Decision {
        let candidates: &[u32] = match &req.pool {
            Some(p) => self.by_pool.get(p).map_or(&[][..], Vec::as_slice),
            None => &self.all,
        };
        let total = candidates.len();
        if total == 0 {
            return Decision::Unschedulable(match &req.pool {
                Some(p) => format!("no node of pool {p} reports"),
                None => "no node reports".to_string(),
            });
        }
        let want = self.nodes_to_score(total);
        let start = self.cursor % total;
        let mut refusals = Refusals::default();
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        let mut verdicts = std::mem::take(&mut self.class_verdicts);
        verdicts.clear();
        verdicts.resize(self.classes.len(), None);
        let mut texts: Vec<String> = Vec::new();
        // The pod rules' state for this decision (only those with something to say).
        let prepared: Vec<Box<dyn plugins::Prepared>> = {
            let mut cx = Context { index: &mut self.pods, nodes: &self.nodes, classes: &self.classes.identities, class_nodes: &self.class_nodes, class_zone: &self.class_zone };
            plugins::POD_RULES.iter().filter_map(|r| r.prepare(req, &mut cx)).collect()
        };
        let per_node = req.rules.as_ref().is_some_and(|r| r.names_hostname);
        let mut examined = 0;
        for k in 0..total {
            let idx = candidates[(start + k) % total];
            examined += 1;
            let Some(n) = self.nodes[idx as usize].as_ref() else { continue };
            let free = match self.held.get(&idx) {
                Some(held) => held.iter().filter(|(p, _)| p != key).fold(n.free, |f, (_, d)| f.saturating_sub(d)),
                None => n.free,
            };
            if let Some(why) = plugins::fit::refusal(n, &free, &req.demand) {
                refusals.add(Why::State(why));
                continue;
            }
            let node_score = if per_node {
                match plugins::judge(req, &n.identity) {
                    Ok(s) => s,
                    Err(t) => {
                        texts.push(t);
                        refusals.add(Why::Text(texts.len() as u32 - 1));
                        continue;
                    }
                }
            } else {
                let v = verdicts[n.class as usize].get_or_insert_with(|| plugins::judge(req, self.classes.identity(n.class)));
                match v {
                    Ok(s) => *s,
                    Err(_) => {
                        refusals.add(Why::Class(n.class));
                        continue;
                    }
                }
            };
            let mut refused = None;
            let mut rule_score = 0.0;
            for (r, p) in prepared.iter().enumerate() {
                if let Some(why) = p.filter(&self.pods, idx, n.zone) {
                    refused = Some(Why::Pod(r as u16, why));
                    break;
                }
                rule_score += p.score(&self.pods, idx, n.zone);
            }
            if let Some(why) = refused {
                refusals.add(why);
                continue;
            }
            scratch.push((idx, self.score(n, &req.demand) + node_score + rule_score));
            if scratch.len() >= want {
                break;
            }
        }
        self.cursor = self.cursor.wrapping_add(examined);
        let decision = match scratch.iter().max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0))) {
            Some(&(idx, _)) => Decision::Node(idx),
            None => {
                let zone_name = |z: u16| self.zone_name(z).to_string();
                Decision::Unschedulable(refusals.message(total, &|why| match why {
                    Why::State(s) => s.to_string(),
                    Why::Class(c) => verdicts.get(c as usize).and_then(|v| v.clone()).and_then(Result::err).unwrap_or_default(),
                    Why::Text(t) => texts[t as usize].clone(),
                    Why::Pod(r, w) => prepared[r as usize].reason(w, &zone_name),
                }))
            }
        };
        self.scratch = scratch;
        self.class_verdicts = verdicts;
        decision
    }

    /// Binds: takes the pod's demand from the node until the agent's report counts it.
    pub fn bind(&mut self, idx: u32, pod: &str, req: &PodRequest) {
        let Some(n) = self.node_mut(idx) else { return };
        n.reserve(pod, req.demand);
        let zone = n.zone;
        self.pods.add(pod, idx, zone, req);
    }

    /// Records a pod its node's report already counts (bound before a restart).
    pub fn adopt(&mut self, idx: u32, pod: &str, req: &PodRequest) {
        let Some(n) = self.node_mut(idx) else { return };
        n.pods.insert(pod.to_string());
        let zone = n.zone;
        self.pods.add(pod, idx, zone, req);
    }

    /// Undoes a bind (pod deleted or moved).
    pub fn unbind(&mut self, idx: u32, pod: &str, _req: &PodRequest) {
        let Some(n) = self.node_mut(idx) else { return };
        n.release(pod);
        self.capacity_epoch += 1;
        self.pods.remove(pod);
    }
}

/// The distinct node identities as node rules see them (no instance ID), each with a number.
#[derive(Debug, Default)]
struct IdentityClasses {
    by_key: HashMap<String, u32>,
    pub(crate) identities: Vec<pb::NodeIdentity>,
}

impl IdentityClasses {
    /// What selectors see of an identity, and a key for it: each part prefixed by its length, so
    /// no two different identities share a key whatever bytes they hold.
    fn selector_view(identity: &pb::NodeIdentity) -> (String, pb::NodeIdentity) {
        let mut vswitch_ids = identity.vswitch_ids.clone();
        vswitch_ids.sort();
        vswitch_ids.dedup();
        let mut labels: Vec<_> = identity.labels.iter().collect();
        labels.sort();
        let mut key = format!("{}/{}/", vswitch_ids.len(), identity.taints.len());
        let parts = [&identity.pool, &identity.zone_id, &identity.instance_type].into_iter().chain(&vswitch_ids).chain(labels.into_iter().flat_map(|(k, v)| [k, v]));
        for part in parts {
            key.push_str(&part.len().to_string());
            key.push(':');
            key.push_str(part);
        }
        let mut taints = identity.taints.clone();
        taints.sort_by(|a, b| (&a.key, &a.value, &a.effect).cmp(&(&b.key, &b.value, &b.effect)));
        taints.dedup();
        for t in &taints {
            for part in [&t.key, &t.value, &t.effect] {
                key.push_str(&part.len().to_string());
                key.push(':');
                key.push_str(part);
            }
        }
        (key, pb::NodeIdentity { instance_id: String::new(), vswitch_ids, taints, ..identity.clone() })
    }

    /// The class of an identity, numbered the first time it is seen. Classes are few (pools ×
    /// zones × label sets) and kept for the process's life.
    fn of(&mut self, identity: &pb::NodeIdentity) -> u32 {
        let (key, view) = Self::selector_view(identity);
        if let Some(&c) = self.by_key.get(&key) {
            return c;
        }
        let c = self.identities.len() as u32;
        self.identities.push(view);
        self.by_key.insert(key, c);
        c
    }

    fn identity(&self, class: u32) -> &pb::NodeIdentity {
        &self.identities[class as usize]
    }

    fn len(&self) -> usize {
        self.identities.len()
    }
}

#[cfg(test)]
pub(crate) mod tests;

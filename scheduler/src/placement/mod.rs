//! Placement: the capacity model of every node (from its reports, minus what the scheduler bound
//! since) and the choice of a node for a pod — filters on every resource, then a score.
//!
//! Speed: nodes live in a slot vector indexed by pool; a decision walks only the candidate list
//! (the pool a selector names, else every node) from a rotating start, checks each node with a
//! handful of integer comparisons and no allocation, and stops once it has found
//! `nodes_to_score` feasible nodes (as kube-scheduler's percentageOfNodesToScore: adaptive
//! `max(5, 50 − n/125)` percent of n, at least 100). Only the best-scored of those is bound.

pub mod node;
pub mod resources;

use std::collections::HashMap;

use berth_proto::cluster::v1 as pb;

pub use node::{Health, Node};
pub use resources::{Resources, demand_of};

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
    /// The group whose pods are spread across zones (its sorted labels), if the pod asks for it.
    pub spread_group: Option<String>,
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
        if zone.is_none() {
            zone = spec.volumes.iter().filter(|v| resources::is_disk(v)).find_map(|v| v.parameters.get("zoneId")).cloned();
        }
        let spread_group = spec.spread_zones.then(|| {
            let mut l: Vec<_> = spec.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            l.sort();
            format!("{}|{}", spec.namespace, l.join(","))
        });
        PodRequest {
            demand: demand_of(spec),
            pool,
            zone,
            labels,
            vswitch: (!spec.vswitch_id.is_empty()).then(|| spec.vswitch_id.clone()),
            spread_group,
        }
    }

    /// Whether the pod must stay in the zone of the first node it is bound to: it has a disk
    /// volume (a disk attaches only in its zone) and no zone of its own.
    pub fn pins_zone(&self, spec: &pb::PodSpec) -> bool {
        self.zone.is_none() && spec.volumes.iter().any(resources::is_disk)
    }

    /// Whether a node of this identity may ever take the pod (selectors and vSwitch, no counts).
    pub fn matches_identity(&self, identity: &pb::NodeIdentity) -> bool {
        self.pool.as_ref().is_none_or(|p| *p == identity.pool)
            && self.zone.as_ref().is_none_or(|z| *z == identity.zone_id)
            && self.vswitch.as_ref().is_none_or(|v| identity.vswitch_ids.contains(v))
            && self.labels.iter().all(|(k, v)| identity.labels.get(k) == Some(v))
    }
}

/// Why nodes were refused, counted over one decision, for the pending pod's message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Refusals {
    pub not_ready: u32,
    pub selector: u32,
    pub cannot_grow: u32,
    pub cpu: u32,
    pub memory: u32,
    pub pods: u32,
    pub shared_ips: u32,
    pub eni_slots: u32,
    pub member_eni_slots: u32,
    pub disk_slots: u32,
}

impl Refusals {
    pub fn message(&self, examined: usize) -> String {
        let parts = [
            (self.not_ready, "not ready"),
            (self.selector, "not matching pool selector or vSwitch"),
            (self.cannot_grow, "agent cannot grow the resource"),
            (self.cpu, "too little CPU"),
            (self.memory, "too little memory"),
            (self.pods, "no pod slot"),
            (self.shared_ips, "no shared IP left"),
            (self.eni_slots, "no ENI slot left"),
            (self.member_eni_slots, "no member-ENI slot left"),
            (self.disk_slots, "no disk slot left"),
        ];
        let why: Vec<String> = parts.iter().filter(|(n, _)| *n > 0).map(|(n, s)| format!("{n} {s}")).collect();
        if why.is_empty() {
            format!("0/{examined} nodes available: no node reports")
        } else {
            format!("0/{examined} nodes available: {}", why.join(", "))
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
    /// Spread group → pods per zone index.
    spread: HashMap<String, Vec<u32>>,
    pub strategy: Strategy,
    /// 0: adaptive (see the module doc); otherwise a percentage of candidates.
    pub percent_of_nodes_to_score: u32,
    cursor: usize,
    scratch: Vec<(u32, f64)>,
    /// Nodes alike in everything a selector may look at share a class, so one decision matches a
    /// pod's selectors once per class, not once per node.
    classes: IdentityClasses,
    /// Per class during one decision: 0 not looked at yet, 1 matches, 2 does not.
    class_verdicts: Vec<u8>,
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
        let identity = report.identity.clone().unwrap_or_default();
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
                let class = if changed { self.classes.of(&identity) } else { self.node(i).map_or(0, |n| n.class) };
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
                let class = self.classes.of(&identity);
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

    /// Chooses a node for the pod, or says why none fits. Does not bind.
    pub fn choose(&mut self, req: &PodRequest) -> Decision {
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
        verdicts.resize(self.classes.len(), 0);
        let mut examined = 0;
        for k in 0..total {
            let idx = candidates[(start + k) % total];
            examined += 1;
            let Some(n) = self.nodes[idx as usize].as_ref() else { continue };
            if n.health != Health::Ready {
                refusals.not_ready += 1;
                continue;
            }
            if n.blocked.forbids(&req.demand) {
                refusals.cannot_grow += 1;
                continue;
            }
            let (f, d) = (&n.free, &req.demand);
            let short = if d.shared_ips > f.shared_ips {
                &mut refusals.shared_ips
            } else if d.eni_slots > f.eni_slots {
                &mut refusals.eni_slots
            } else if d.member_eni_slots > f.member_eni_slots {
                &mut refusals.member_eni_slots
            } else if d.disk_slots > f.disk_slots {
                &mut refusals.disk_slots
            } else if d.pods > f.pods {
                &mut refusals.pods
            } else if d.cpu_millicores > f.cpu_millicores {
                &mut refusals.cpu
            } else if d.memory_bytes > f.memory_bytes {
                &mut refusals.memory
            } else {
                let verdict = &mut verdicts[n.class as usize];
                if *verdict == 0 {
                    *verdict = if req.matches_identity(self.classes.identity(n.class)) { 1 } else { 2 };
                }
                if *verdict == 2 {
                    refusals.selector += 1;
                    continue;
                }
                scratch.push((idx, self.score(n, d)));
                if scratch.len() >= want {
                    break;
                }
                continue;
            };
            *short += 1;
        }
        self.cursor = self.cursor.wrapping_add(examined);
        let decision = match self.pick(&scratch, req) {
            Some(idx) => Decision::Node(idx),
            None => Decision::Unschedulable(refusals.message(total)),
        };
        self.scratch = scratch;
        self.class_verdicts = verdicts;
        decision
    }

    fn pick(&self, feasible: &[(u32, f64)], req: &PodRequest) -> Option<u32> {
        let zone_of = |i: u32| self.nodes[i as usize].as_ref().map_or(0, |n| n.zone);
        // Zone spread: only nodes in the feasible zones holding the fewest pods of the group.
        let counts = req.spread_group.as_ref().and_then(|g| self.spread.get(g));
        let min_zone_count = counts.map(|c| feasible.iter().map(|&(i, _)| c.get(zone_of(i) as usize).copied().unwrap_or(0)).min().unwrap_or(0));
        feasible
            .iter()
            .filter(|&&(i, _)| match (counts, min_zone_count) {
                (Some(c), Some(m)) => c.get(zone_of(i) as usize).copied().unwrap_or(0) == m,
                _ => true,
            })
            .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)))
            .map(|&(i, _)| i)
    }

    /// Binds: takes the pod's demand from the node until the agent's report counts it.
    pub fn bind(&mut self, idx: u32, pod: &str, req: &PodRequest) {
        let Some(n) = self.node_mut(idx) else { return };
        n.reserve(pod, req.demand);
        let zone = n.zone as usize;
        if let Some(g) = &req.spread_group {
            let c = self.spread.entry(g.clone()).or_default();
            if c.len() <= zone {
                c.resize(zone + 1, 0);
            }
            c[zone] += 1;
        }
    }

    /// Undoes a bind (pod deleted or moved).
    pub fn unbind(&mut self, idx: u32, pod: &str, req: &PodRequest) {
        let Some(n) = self.node_mut(idx) else { return };
        n.release(pod);
        let zone = n.zone as usize;
        self.capacity_epoch += 1;
        if let Some(g) = &req.spread_group
            && let Some(c) = self.spread.get_mut(g)
            && let Some(x) = c.get_mut(zone)
        {
            *x = x.saturating_sub(1);
        }
    }
}

/// The distinct node identities as selectors see them (no instance ID or type), each with a number.
#[derive(Debug, Default)]
struct IdentityClasses {
    by_key: HashMap<String, u32>,
    identities: Vec<pb::NodeIdentity>,
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
        let mut key = format!("{}/", vswitch_ids.len());
        let parts = [&identity.pool, &identity.zone_id].into_iter().chain(&vswitch_ids).chain(labels.into_iter().flat_map(|(k, v)| [k, v]));
        for part in parts {
            key.push_str(&part.len().to_string());
            key.push(':');
            key.push_str(part);
        }
        (key, pb::NodeIdentity { instance_id: String::new(), instance_type: String::new(), vswitch_ids, ..identity.clone() })
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

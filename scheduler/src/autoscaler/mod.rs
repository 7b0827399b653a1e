//! The autoscaler's pure planners. Scale up: pods pending beyond a threshold are first placed, in
//! simulation, on nodes already requested but not yet reporting; the rest on template nodes of
//! each pool option (pool × instance type × vSwitch), whose capacity comes from the instance-type
//! catalogue — shared IPs, ENI and member-ENI slots and disk slots included; an expander chooses
//! one option. Scale down: a node whose utilisation (its scarcest resource, IPs and disk slots
//! included) stayed under a threshold for a period, whose pods all fit elsewhere, within the
//! pool's minimum and disruption budget. The planners return plans; [`driver`] executes them.

pub mod driver;

use std::collections::{BTreeMap, HashMap};

use berth_cloud::model::InstanceType;
use berth_proto::cluster::v1 as pb;
use serde::Deserialize;

use crate::cluster::Cluster;
use crate::placement::{Health, PodRequest, PoolTraits, Resources};
use crate::store::RequestedNode;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CapacityType {
    #[default]
    OnDemand,
    Spot,
}

/// How to choose among pool options that would help pending pods.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Expander {
    /// The option leaving the least CPU, memory and IPs unused on its new nodes.
    #[default]
    LeastWaste,
    /// The pool of highest `priority`, then least waste.
    Priority,
    /// The lowest price per pod helped.
    Price,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolVSwitch {
    pub id: String,
    pub zone: String,
}

/// A node pool of the scheduler's config (`[[pool]]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodePool {
    pub name: String,
    /// Instance types the pool may create, e.g. `ecs.g7.large`.
    pub instance_types: Vec<String>,
    /// Where its nodes go; each vSwitch's zone is the node's zone.
    pub vswitches: Vec<PoolVSwitch>,
    #[serde(default)]
    pub security_group_ids: Vec<String>,
    #[serde(default)]
    pub min_nodes: u32,
    pub max_nodes: u32,
    #[serde(default)]
    pub capacity: CapacityType,
    #[serde(default)]
    pub priority: i32,
    /// Labels its nodes carry (besides what their agents report), which pod selectors and node
    /// affinity may name.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Taints its nodes carry: pods must tolerate them (`[[pool.taints]]`: key, value, effect).
    #[serde(default)]
    pub taints: Vec<PoolTaint>,
    /// Nodes of the pool removed at the same time at most.
    #[serde(default = "one")]
    pub disruption_budget: u32,
    /// What its nodes boot, as RunInstances takes it (one of the three is needed to create nodes):
    /// an image, the newest image of a family, or a launch template at `launch_template_version`
    /// (else its default version).
    #[serde(default)]
    pub image_id: Option<String>,
    #[serde(default)]
    pub image_family: Option<String>,
    #[serde(default)]
    pub launch_template_id: Option<String>,
    #[serde(default)]
    pub launch_template_version: Option<String>,
    /// The nodes' system disk: category (`cloud_essd`, …) and size in GiB; the image's default
    /// when unset.
    #[serde(default)]
    pub system_disk_category: Option<String>,
    #[serde(default)]
    pub system_disk_gib: Option<u32>,
    /// A script the nodes run at first boot (the one that installs and starts the Berth units and
    /// points them at the scheduler), read when nodes are created; at most 32 KiB.
    #[serde(default)]
    pub user_data_file: Option<std::path::PathBuf>,
    /// Tags of the pool's instances (at most 20 with Berth's own `berth:pool`).
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// The instance RAM role the nodes boot with (RunInstances `RamRoleName`): their agents and
    /// CSI drivers then sign with its STS credentials (`cloud.credentials_source = "ram_role"`).
    /// The scheduler's own credentials need `ram:PassRole` on it.
    #[serde(default)]
    pub ram_role_name: Option<String>,
}

/// A taint of a pool's nodes; effect NoSchedule, PreferNoSchedule or NoExecute.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolTaint {
    pub key: String,
    #[serde(default)]
    pub value: String,
    pub effect: String,
}

impl NodePool {
    /// What the pool gives each of its nodes: its labels (and its capacity type) and taints.
    pub fn traits(&self) -> PoolTraits {
        let mut labels: Vec<(String, String)> = self.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let capacity = match self.capacity {
            CapacityType::OnDemand => "on-demand",
            CapacityType::Spot => "spot",
        };
        labels.push((crate::placement::labels::CAPACITY_TYPE.to_string(), capacity.to_string()));
        PoolTraits { labels, taints: self.taints.iter().map(|t| pb::Taint { key: t.key.clone(), value: t.value.clone(), effect: t.effect.clone() }).collect() }
    }

    /// The image RunInstances is given, if the pool names one.
    pub fn boot_image(&self) -> Option<berth_cloud::api::BootImage> {
        use berth_cloud::api::BootImage;
        if let Some(id) = &self.image_id {
            return Some(BootImage::Id(id.clone()));
        }
        if let Some(family) = &self.image_family {
            return Some(BootImage::Family(family.clone()));
        }
        self.launch_template_id.as_ref().map(|id| BootImage::LaunchTemplate { id: id.clone(), version: self.launch_template_version.clone() })
    }
}

fn one() -> u32 {
    1
}

/// What a node of this type offers, as the agent would report it when empty: shared IPs are the
/// secondary IPs of every secondary ENI, ENI slots the secondary ENIs (the primary ENI serves the
/// node itself), member-ENI slots the type's member-ENI quota, disk slots its data-disk quota.
pub fn template_capacity(t: &InstanceType) -> Resources {
    let shared = t.max_shared_eni_pods();
    let eni = t.max_exclusive_eni_pods();
    Resources {
        cpu_millicores: u64::from(t.vcpu) * 1000,
        memory_bytes: t.memory_mib * 1024 * 1024,
        pods: shared + eni + t.member_eni_quota,
        shared_ips: shared,
        eni_slots: eni,
        member_eni_slots: t.member_eni_quota,
        disk_slots: t.disk_quota,
    }
}

/// The identity a new node of the pool would have: what node rules are simulated on.
pub fn template_identity(pool: &NodePool, t: &InstanceType, vsw: &PoolVSwitch) -> pb::NodeIdentity {
    let mut identity = pb::NodeIdentity { instance_type: t.id.clone(), zone_id: vsw.zone.clone(), pool: pool.name.clone(), vswitch_ids: vec![vsw.id.clone()], ..Default::default() };
    pool.traits().inherit(&mut identity);
    identity
}

/// Reporting nodes of each pool, by zone: a pool's room below its maximum, and where its next
/// node goes so that its nodes spread evenly over its vSwitches' zones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolNodes {
    by_zone: HashMap<(String, String), u32>,
}

impl PoolNodes {
    pub fn add(&mut self, pool: &str, zone: &str) {
        *self.by_zone.entry((pool.to_string(), zone.to_string())).or_default() += 1;
    }

    /// The nodes of the cluster's placement state that report a pool.
    pub fn of_cluster(cluster: &Cluster) -> Self {
        cluster.placement.nodes().map(|(_, n)| (n.identity.pool.as_str(), n.identity.zone_id.as_str())).collect()
    }

    /// Reporting nodes of the pool plus those requested and not reporting yet.
    fn in_pool(&self, pool: &str, requested: &[RequestedNode]) -> u32 {
        let reporting: u32 = self.by_zone.iter().filter(|((p, _), _)| p == pool).map(|(_, n)| n).sum();
        reporting + requested.iter().filter(|r| r.pool == pool).count() as u32
    }

    /// Reporting and requested nodes of the pool in one zone.
    fn in_zone(&self, pool: &str, zone: &str, requested: &[RequestedNode]) -> u32 {
        let reporting = self.by_zone.get(&(pool.to_string(), zone.to_string())).copied().unwrap_or(0);
        reporting + requested.iter().filter(|r| r.pool == pool && r.zone_id == zone).count() as u32
    }
}

impl<'a> FromIterator<(&'a str, &'a str)> for PoolNodes {
    /// From (pool, zone) pairs, one per node.
    fn from_iter<I: IntoIterator<Item = (&'a str, &'a str)>>(iter: I) -> Self {
        let mut nodes = Self::default();
        for (pool, zone) in iter {
            nodes.add(pool, zone);
        }
        nodes
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ScaleUpPlan {
    pub pool: String,
    pub instance_type: String,
    pub vswitch_id: String,
    pub zone_id: String,
    pub count: u32,
    /// Pending pods the new nodes would host.
    pub pods: usize,
    /// Pods that nodes already requested will host.
    pub pods_on_requested: usize,
    pub waste: f64,
    pub price_per_hour: f64,
}

/// Bins of a simulation: only the last few opened nodes are tried before opening another, so a
/// plan for 30,000 pods stays linear (first-fit over a window, not over every node).
const OPEN_WINDOW: usize = 8;

struct Sim<'p> {
    identity: pb::NodeIdentity,
    capacity: Resources,
    bins: Vec<Bin<'p>>,
    limit: usize,
    pods: usize,
}

/// A simulated node: what is left of it and the pods it took.
struct Bin<'p> {
    free: Resources,
    pods: Vec<&'p PodRequest>,
}

/// Whether two pods may share a node under their required anti-affinity per node (either way).
fn may_share_node(a: &PodRequest, b: &PodRequest) -> bool {
    use crate::placement::rules::Topology;
    let repels = |x: &PodRequest, y: &PodRequest| x.rules.as_ref().is_some_and(|r| r.anti_affinity.iter().any(|t| t.topology == Topology::Node && y.own.selected_by(&t.namespaces, &t.selector)));
    !repels(a, b) && !repels(b, a)
}

impl<'p> Sim<'p> {
    /// Places the pod on a simulated node; false when it cannot go on this template at all or
    /// the pool has no room for another node.
    fn place(&mut self, req: &'p PodRequest) -> bool {
        if !req.matches_identity(&self.identity) || !self.capacity.fits(&req.demand) {
            return false;
        }
        let from = self.bins.len().saturating_sub(OPEN_WINDOW);
        if let Some(b) = self.bins[from..].iter_mut().find(|b| b.free.fits(&req.demand) && b.pods.iter().all(|q| may_share_node(q, req))) {
            b.free = b.free.saturating_sub(&req.demand);
            b.pods.push(req);
            self.pods += 1;
            return true;
        }
        if self.bins.len() >= self.limit {
            return false;
        }
        self.bins.push(Bin { free: self.capacity.saturating_sub(&req.demand), pods: vec![req] });
        self.pods += 1;
        true
    }

    fn waste(&self) -> f64 {
        if self.bins.is_empty() {
            return 1.0;
        }
        let c = &self.capacity;
        let per: f64 = self
            .bins
            .iter()
            .map(|b| {
                let free = &b.free;
                let f = |all: u64, free: u64| if all == 0 { 0.0 } else { free as f64 / all as f64 };
                (f(c.cpu_millicores, free.cpu_millicores) + f(c.memory_bytes, free.memory_bytes) + f(c.shared_ips.into(), free.shared_ips.into())) / 3.0
            })
            .sum();
        per / self.bins.len() as f64
    }
}

/// Plans one scale-up for the pods pending beyond the threshold (`pending`), or nothing when
/// requested nodes will host them all or no pool can. Among options the expander finds equal
/// (the same pool and type in different zones), the zone with fewest nodes of the pool wins; and
/// when the chosen option's pods could go to the pool's other zones as well, its nodes are shared
/// out over those zones, fewest nodes first (one plan per zone that gets nodes).
pub fn plan_scale_up(pending: &[&PodRequest], pools: &[NodePool], catalogue: &dyn Fn(&str) -> Option<InstanceType>, nodes: &PoolNodes, requested: &[RequestedNode], expander: Expander) -> Vec<ScaleUpPlan> {
    // Nodes on their way take what they can first, grouped by template; each group is filled
    // like a simulation (a window of open nodes), so re-planning stays linear in the pods.
    let mut on_the_way: Vec<Sim> = Vec::new();
    for r in requested {
        let Some(pool) = pools.iter().find(|p| p.name == r.pool) else { continue };
        let Some(t) = catalogue(&r.instance_type) else { continue };
        let vsw = PoolVSwitch { id: r.vswitch_id.clone(), zone: r.zone_id.clone() };
        let identity = template_identity(pool, &t, &vsw);
        match on_the_way.iter_mut().find(|g| g.identity == identity) {
            Some(g) => g.limit += 1,
            None => on_the_way.push(Sim { identity, capacity: template_capacity(&t), bins: Vec::new(), limit: 1, pods: 0 }),
        }
    }
    let mut left: Vec<&PodRequest> = Vec::with_capacity(pending.len());
    for &req in pending {
        if !on_the_way.iter_mut().any(|g| g.place(req)) {
            left.push(req);
        }
    }
    let on_requested = on_the_way.iter().map(|g| g.pods).sum();
    if left.is_empty() {
        return Vec::new();
    }
    let mut best: Option<Candidate> = None;
    // Pods each (pool, type, vSwitch) option would host, for sharing the chosen one out.
    let mut hosted: HashMap<(&str, String, &str), usize> = HashMap::new();
    for pool in pools {
        let room = pool.max_nodes.saturating_sub(nodes.in_pool(&pool.name, requested));
        if room == 0 {
            continue;
        }
        for t in pool.instance_types.iter().filter_map(|id| catalogue(id)) {
            for vsw in &pool.vswitches {
                let mut sim = Sim { identity: template_identity(pool, &t, vsw), capacity: template_capacity(&t), bins: Vec::new(), limit: room as usize, pods: 0 };
                for &req in &left {
                    sim.place(req);
                }
                hosted.insert((pool.name.as_str(), t.id.clone(), vsw.id.as_str()), sim.pods);
                if sim.pods == 0 {
                    continue;
                }
                let plan = ScaleUpPlan {
                    pool: pool.name.clone(),
                    instance_type: t.id.clone(),
                    vswitch_id: vsw.id.clone(),
                    zone_id: vsw.zone.clone(),
                    count: sim.bins.len() as u32,
                    pods: sim.pods,
                    pods_on_requested: on_requested,
                    waste: sim.waste(),
                    price_per_hour: t.price_per_hour * f64::from(sim.bins.len() as u32),
                };
                let candidate = Candidate { zone_nodes: nodes.in_zone(&pool.name, &vsw.zone, requested), priority: pool.priority, plan };
                if best.as_ref().is_none_or(|b| candidate.better_than(b, expander)) {
                    best = Some(candidate);
                }
            }
        }
    }
    let Some(best) = best else { return Vec::new() };
    let plan = best.plan;
    let Some(pool) = pools.iter().find(|p| p.name == plan.pool) else { return vec![plan] };
    // The pool's zones (their first vSwitch) whose option hosts the same pods as the chosen one.
    let mut zones: Vec<&PoolVSwitch> = Vec::new();
    for vsw in &pool.vswitches {
        if !zones.iter().any(|z| z.zone == vsw.zone) && hosted.get(&(pool.name.as_str(), plan.instance_type.clone(), vsw.id.as_str())).is_some_and(|&n| n >= plan.pods) {
            zones.push(if vsw.zone == plan.zone_id { pool.vswitches.iter().find(|v| v.id == plan.vswitch_id).unwrap_or(vsw) } else { vsw });
        }
    }
    if zones.len() < 2 || plan.count < 2 {
        return vec![plan];
    }
    let mut in_zone: Vec<u32> = zones.iter().map(|z| nodes.in_zone(&pool.name, &z.zone, requested)).collect();
    let mut counts = vec![0u32; zones.len()];
    for _ in 0..plan.count {
        let k = (0..zones.len()).min_by_key(|&k| (in_zone[k], zones[k].zone != plan.zone_id, k)).expect("zones are not empty");
        counts[k] += 1;
        in_zone[k] += 1;
    }
    let per_node = plan.pods as f64 / f64::from(plan.count);
    zones
        .iter()
        .zip(counts)
        .filter(|(_, c)| *c > 0)
        .map(|(z, c)| ScaleUpPlan {
            vswitch_id: z.id.clone(),
            zone_id: z.zone.clone(),
            count: c,
            pods: (per_node * f64::from(c)).round() as usize,
            price_per_hour: plan.price_per_hour / f64::from(plan.count) * f64::from(c),
            ..plan.clone()
        })
        .collect()
}

/// Why no pool can ever help a pending pod, or None when some pool's template node would take
/// it: each pool's reason (at its maximum, its nodes refuse the pod, no type large enough).
pub fn why_unhelped(req: &PodRequest, pools: &[NodePool], catalogue: &dyn Fn(&str) -> Option<InstanceType>, nodes: &PoolNodes, requested: &[RequestedNode]) -> Option<String> {
    if pools.is_empty() {
        return None;
    }
    let mut reasons = Vec::new();
    for pool in pools {
        let mut refusal = None;
        let mut too_small = false;
        let mut fits = false;
        for t in pool.instance_types.iter().filter_map(|id| catalogue(id)) {
            for vsw in &pool.vswitches {
                match crate::placement::plugins::admits(req, &template_identity(pool, &t, vsw)) {
                    Err(why) => refusal = refusal.or(Some(why)),
                    Ok(()) if !template_capacity(&t).fits(&req.demand) => too_small = true,
                    Ok(()) => fits = true,
                }
            }
        }
        let room = pool.max_nodes.saturating_sub(nodes.in_pool(&pool.name, requested));
        let why = match (fits, room, refusal, too_small) {
            (true, 0, _, _) => format!("pool {} at its maximum of {} nodes", pool.name, pool.max_nodes),
            (true, _, _, _) => return None,
            (false, _, _, true) => format!("pool {}: no instance type large enough ({} millicores, {} MiB asked)", pool.name, req.demand.cpu_millicores, req.demand.memory_bytes >> 20),
            (false, _, Some(why), false) => format!("pool {}: its nodes would be {why}", pool.name),
            (false, _, None, false) => format!("pool {}: no instance type of the catalogue", pool.name),
        };
        reasons.push(why);
    }
    Some(format!("no pool can add a node for it: {}", reasons.join("; ")))
}

/// Nodes to create so that every pool has its `min_nodes` (reporting or requested), on the
/// pool's first instance type, each in the zone of the pool's vSwitches that has fewest of its
/// nodes (the first vSwitch on a tie): one plan per vSwitch that gets nodes.
pub fn plan_minimums(pools: &[NodePool], catalogue: &dyn Fn(&str) -> Option<InstanceType>, nodes: &PoolNodes, requested: &[RequestedNode]) -> Vec<ScaleUpPlan> {
    let mut plans = Vec::new();
    for pool in pools {
        let missing = pool.min_nodes.saturating_sub(nodes.in_pool(&pool.name, requested));
        let Some(t) = pool.instance_types.iter().find_map(|id| catalogue(id)) else { continue };
        if missing == 0 || pool.vswitches.is_empty() {
            continue;
        }
        // Counted per zone, so two vSwitches of one zone do not both look empty.
        let mut in_zone: HashMap<&str, u32> = pool.vswitches.iter().map(|v| (v.zone.as_str(), nodes.in_zone(&pool.name, &v.zone, requested))).collect();
        let mut counts = vec![0u32; pool.vswitches.len()];
        for _ in 0..missing {
            let k = (0..pool.vswitches.len()).min_by_key(|&k| (in_zone[pool.vswitches[k].zone.as_str()], k)).expect("vSwitches are not empty");
            counts[k] += 1;
            *in_zone.get_mut(pool.vswitches[k].zone.as_str()).expect("every vSwitch's zone is counted") += 1;
        }
        for (vsw, count) in pool.vswitches.iter().zip(counts).filter(|(_, c)| *c > 0) {
            plans.push(ScaleUpPlan {
                pool: pool.name.clone(),
                instance_type: t.id.clone(),
                vswitch_id: vsw.id.clone(),
                zone_id: vsw.zone.clone(),
                count,
                pods: 0,
                pods_on_requested: 0,
                waste: 1.0,
                price_per_hour: t.price_per_hour * f64::from(count),
            });
        }
    }
    plans
}

/// A scale-up option under comparison: its plan, its pool's priority and how many nodes of the
/// pool its zone already has.
struct Candidate {
    plan: ScaleUpPlan,
    priority: i32,
    zone_nodes: u32,
}

impl Candidate {
    fn better_than(&self, other: &Candidate, expander: Expander) -> bool {
        use std::cmp::Ordering::*;
        let (a, b) = (&self.plan, &other.plan);
        let waste = a.waste.total_cmp(&b.waste);
        let pods = b.pods.cmp(&a.pods);
        let ord = match expander {
            Expander::LeastWaste => waste.then(pods),
            Expander::Priority => other.priority.cmp(&self.priority).then(waste).then(pods),
            Expander::Price => (a.price_per_hour / a.pods as f64).total_cmp(&(b.price_per_hour / b.pods as f64)).then(pods),
        };
        ord.then(self.zone_nodes.cmp(&other.zone_nodes)) == Less
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScaleDownSettings {
    pub utilisation_threshold: f64,
    pub underused_for_ms: u64,
}

/// Remembers since when each node has been under the threshold (a node above it starts over).
///
/// A node's utilisation is its scarcest resource's used share (IPs and disk slots included), from
/// its report — except ENI slots, which count only as far as its pods ask for them: the node's
/// shared pool keeps its own secondary ENIs, and an empty node still holds those.
pub fn observe_utilisation(cluster: &mut Cluster, threshold: f64, now_ms: u64) {
    let ids: Vec<u32> = cluster.placement.nodes().map(|(i, _)| i).collect();
    for i in ids {
        let requested_enis = match cluster.placement.node(i) {
            Some(n) => n.pods.iter().filter_map(|k| cluster.pod(k)).map(|p| p.req.demand.eni_slots).sum::<u32>(),
            None => continue,
        };
        if let Some(n) = cluster.placement.node_mut(i) {
            let free = Resources { eni_slots: n.allocatable.eni_slots.saturating_sub(requested_enis), ..n.free };
            let utilisation = n.allocatable.utilisation(&free);
            let under = n.health == Health::Ready && utilisation < threshold;
            n.underused_since_ms = match (under, n.underused_since_ms) {
                (true, Some(t)) => Some(t),
                (true, None) => Some(now_ms),
                (false, _) => None,
            };
        }
    }
}

/// The pod label that keeps a pod's node from being removed by the autoscaler (value `true`), as
/// Karpenter's do-not-disrupt annotation does: a batch job or a singleton that must not move.
pub const DO_NOT_DISRUPT: &str = "berth.io/do-not-disrupt";

/// Nodes to remove now: managed by a pool, underused for the period, above the pool's minimum,
/// within its node disruption budget (nodes being removed count), with no pod labelled
/// [`DO_NOT_DISRUPT`], whose pods may all move within the per-label pod disruption budgets, and
/// whose every pod fits on another Ready node that stays and whose node rules (taints, affinity,
/// per-node anti-affinity with the pods there and those moved there) admit it.
pub fn plan_scale_down(cluster: &Cluster, pools: &[NodePool], s: &ScaleDownSettings, now_ms: u64) -> Vec<String> {
    let p = &cluster.placement;
    let mut per_pool: HashMap<&str, (u32, u32)> = HashMap::new(); // (nodes, being removed)
    for (_, n) in p.nodes() {
        let e = per_pool.entry(n.identity.pool.as_str()).or_default();
        e.0 += 1;
        if cluster.deleting.contains(&n.id) {
            e.1 += 1;
        }
    }
    // Free counts other nodes would have after taking moved pods, and the pods moved there.
    let mut sim_free: HashMap<u32, Resources> = HashMap::new();
    let mut sim_pods: HashMap<u32, Vec<&PodRequest>> = HashMap::new();
    let mut allowance = cluster.budget_allowance();
    let mut chosen: Vec<String> = Vec::new();
    let mut chosen_idx: Vec<u32> = Vec::new();
    for (idx, n) in p.nodes() {
        let Some(pool) = pools.iter().find(|x| x.name == n.identity.pool) else { continue };
        if n.health != Health::Ready || cluster.deleting.contains(&n.id) {
            continue;
        }
        let Some(since) = n.underused_since_ms else { continue };
        if now_ms.saturating_sub(since) < s.underused_for_ms {
            continue;
        }
        let (count, removing) = per_pool.get(pool.name.as_str()).copied().unwrap_or_default();
        if count.saturating_sub(removing) <= pool.min_nodes || removing >= pool.disruption_budget {
            continue;
        }
        let pods: Vec<&PodRequest> = n.pods.iter().filter_map(|k| cluster.pod(k)).map(|r| &r.req).collect();
        if pods.iter().any(|r| r.own.get(DO_NOT_DISRUPT) == Some("true")) {
            continue;
        }
        // Every pod may go within its budgets, and fits on a node that stays.
        let mut left = allowance.clone();
        let mut trial = sim_free.clone();
        let mut trial_pods = sim_pods.clone();
        let mut movable = true;
        for req in &pods {
            for (k, b) in cluster.budgets.iter().enumerate() {
                if b.selects(&req.own) {
                    movable &= left[k] > 0;
                    left[k] = left[k].saturating_sub(1);
                }
            }
            let target = movable
                .then(|| {
                    p.nodes().find(|(j, m)| {
                        *j != idx
                            && !chosen_idx.contains(j)
                            && m.health == Health::Ready
                            && !cluster.deleting.contains(&m.id)
                            && !m.blocked.forbids(&req.demand)
                            && req.matches_identity(&m.identity)
                            && crate::placement::plugins::admits(req, &m.identity).is_ok()
                            && trial.get(j).unwrap_or(&m.free).fits(&req.demand)
                            && m.pods.iter().filter_map(|k| cluster.pod(k)).map(|r| &r.req).chain(trial_pods.get(j).into_iter().flatten().copied()).all(|other| may_share_node(req, other))
                    })
                })
                .flatten();
            match target {
                Some((j, m)) => {
                    let f = trial.get(&j).copied().unwrap_or(m.free);
                    trial.insert(j, f.saturating_sub(&req.demand));
                    trial_pods.entry(j).or_default().push(req);
                }
                None => {
                    movable = false;
                    break;
                }
            }
        }
        if !movable {
            continue;
        }
        sim_free = trial;
        sim_pods = trial_pods;
        allowance = left;
        chosen.push(n.id.clone());
        chosen_idx.push(idx);
        if let Some(e) = per_pool.get_mut(pool.name.as_str()) {
            e.1 += 1;
        }
    }
    chosen
}

/// Consolidation by replacement, as Karpenter replaces a node by a cheaper one: an underused node
/// (for the period, no [`DO_NOT_DISRUPT`] pod, its pods free to move within the disruption
/// budgets) whose pods would all fit on one node of a cheaper instance type of its pool, in its
/// zone, gets that node — the cheapest such type. Once the new node reports, [`plan_scale_down`]
/// finds the pods a home there and removes the dearer node; until then nothing more is planned
/// for the pool (a node of it on its way, or one that came up for less than the period and runs
/// nothing, is a replacement not used yet). At most one replacement per round; none for a pool
/// at its maximum or with its disruption budget in use.
pub fn plan_replacements(cluster: &Cluster, pools: &[NodePool], catalogue: &dyn Fn(&str) -> Option<InstanceType>, requested: &[RequestedNode], s: &ScaleDownSettings, now_ms: u64) -> Option<ScaleUpPlan> {
    let p = &cluster.placement;
    let nodes = PoolNodes::of_cluster(cluster);
    let young_and_empty = |pool: &str| p.nodes().any(|(_, n)| n.identity.pool == pool && n.pods.is_empty() && n.underused_since_ms.is_none_or(|t| now_ms.saturating_sub(t) < s.underused_for_ms));
    let allowance = cluster.budget_allowance();
    for (_, n) in p.nodes() {
        let Some(pool) = pools.iter().find(|x| x.name == n.identity.pool) else { continue };
        if n.health != Health::Ready || cluster.deleting.contains(&n.id) || n.pods.is_empty() {
            continue;
        }
        if n.underused_since_ms.is_none_or(|since| now_ms.saturating_sub(since) < s.underused_for_ms) {
            continue;
        }
        let removing = p.nodes().filter(|(_, m)| m.identity.pool == pool.name && cluster.deleting.contains(&m.id)).count() as u32;
        if nodes.in_pool(&pool.name, requested) >= pool.max_nodes || removing >= pool.disruption_budget || requested.iter().any(|r| r.pool == pool.name) || young_and_empty(&pool.name) {
            continue;
        }
        let pods: Vec<&PodRequest> = n.pods.iter().filter_map(|k| cluster.pod(k)).map(|r| &r.req).collect();
        if pods.iter().any(|r| r.own.get(DO_NOT_DISRUPT) == Some("true")) {
            continue;
        }
        let mut left = allowance.clone();
        let within_budgets = pods.iter().all(|req| {
            cluster.budgets.iter().enumerate().filter(|(_, b)| b.selects(&req.own)).all(|(k, _)| {
                let ok = left[k] > 0;
                left[k] = left[k].saturating_sub(1);
                ok
            })
        });
        let Some(price_now) = catalogue(&n.identity.instance_type).map(|t| t.price_per_hour) else { continue };
        let Some(vsw) = pool.vswitches.iter().find(|v| v.zone == n.identity.zone_id) else { continue };
        if !within_budgets {
            continue;
        }
        let holds_all = |t: &InstanceType| {
            let identity = template_identity(pool, t, vsw);
            let mut free = template_capacity(t);
            pods.iter().enumerate().all(|(i, req)| {
                let fits = free.fits(&req.demand) && req.matches_identity(&identity) && crate::placement::plugins::admits(req, &identity).is_ok() && pods[..i].iter().all(|other| may_share_node(req, other));
                free = free.saturating_sub(&req.demand);
                fits
            })
        };
        let cheapest = pool.instance_types.iter().filter_map(|id| catalogue(id)).filter(|t| t.price_per_hour < price_now && holds_all(t)).min_by(|a, b| a.price_per_hour.total_cmp(&b.price_per_hour));
        if let Some(t) = cheapest {
            return Some(ScaleUpPlan { pool: pool.name.clone(), instance_type: t.id.clone(), vswitch_id: vsw.id.clone(), zone_id: vsw.zone.clone(), count: 1, pods: pods.len(), pods_on_requested: 0, waste: 0.0, price_per_hour: t.price_per_hour });
        }
    }
    None
}

#[cfg(test)]
mod tests;

//! Placement's rules as plugins, in the shape of kube-scheduler's framework: each constraint is
//! one file with its filter (why a node may not take the pod, in the user's words), its score,
//! and — for the rules on a node's identity — the check the autoscaler runs on a pool's template
//! node. A decision runs the node rules once per identity class, the state check per node, and
//! the pod rules (which count other pods) against a state prepared once per decision. A new
//! constraint is a new file listed here; `Placement::choose` does not change.

pub mod fit;
pub mod node_affinity;
pub mod pod_affinity;
pub mod selector;
pub mod spread;
pub mod taints;

use berth_proto::cluster::v1 as pb;

use super::node::Node;
use super::pods::PodIndex;
use super::PodRequest;

/// A rule on what a node is (pool, zone, labels, taints): the same for every node of one
/// identity class, and for the template nodes of a pool.
pub trait NodeRule: Sync {
    /// Why no node of this identity may take the pod, in the user's words; None: it may.
    fn filter(&self, pod: &PodRequest, node: &pb::NodeIdentity) -> Option<String>;
    /// Added to the score of a node that passes (preferences; 0 when the pod states none).
    fn score(&self, _pod: &PodRequest, _node: &pb::NodeIdentity) -> f64 {
        0.0
    }
    /// Whether the rule decides which domains a spread constraint counts (node affinity and
    /// selectors do; taints do not, as kube-scheduler's default nodeTaintsPolicy Ignore).
    fn bounds_domains(&self) -> bool;
}

/// Every node rule, in the order refusals are reported.
pub const NODE_RULES: &[&dyn NodeRule] = &[&selector::Selector, &taints::TaintToleration, &node_affinity::NodeAffinity];

/// Whether a node of this identity may ever take the pod (every node rule), else the first
/// reason: what the autoscaler asks of a pool's template node.
pub fn admits(pod: &PodRequest, node: &pb::NodeIdentity) -> Result<(), String> {
    match NODE_RULES.iter().find_map(|r| r.filter(pod, node)) {
        Some(why) => Err(why),
        None => Ok(()),
    }
}

/// The node rules' verdict on one identity: the first refusal, else the summed scores.
pub fn judge(pod: &PodRequest, node: &pb::NodeIdentity) -> Result<f64, String> {
    admits(pod, node)?;
    Ok(NODE_RULES.iter().map(|r| r.score(pod, node)).sum())
}

/// Whether the spread domains of a pod include nodes of this identity.
pub fn in_spread_domains(pod: &PodRequest, node: &pb::NodeIdentity) -> bool {
    NODE_RULES.iter().filter(|r| r.bounds_domains()).all(|r| r.filter(pod, node).is_none())
}

/// What pod rules see when preparing a decision.
pub struct Context<'a> {
    pub index: &'a mut PodIndex,
    pub nodes: &'a [Option<Node>],
    /// Class identities and how many nodes each has.
    pub classes: &'a [pb::NodeIdentity],
    pub class_nodes: &'a [u32],
    /// Zone index of each class.
    pub class_zone: &'a [u16],
}

/// A rule that counts other pods (affinity, anti-affinity, spread).
pub trait PodRule: Sync {
    /// The rule's state for one decision; None when it has nothing to say about this pod.
    fn prepare(&self, pod: &PodRequest, cx: &mut Context<'_>) -> Option<Box<dyn Prepared>>;
}

pub trait Prepared {
    /// Why the node may not take the pod (an index for [`Prepared::reason`]); None: it may.
    fn filter(&self, index: &PodIndex, node: u32, zone: u16) -> Option<u16>;
    fn reason(&self, why: u16, zone_name: &dyn Fn(u16) -> String) -> String;
    fn score(&self, _index: &PodIndex, _node: u32, _zone: u16) -> f64 {
        0.0
    }
}

pub const POD_RULES: &[&dyn PodRule] = &[&pod_affinity::InterPodAffinity, &spread::TopologySpread];

/// Why one node was refused, cheap to count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    State(&'static str),
    /// A node rule's refusal of an identity class.
    Class(u32),
    /// A per-node text (node rules that depend on the hostname).
    Text(u32),
    /// A prepared pod rule (its position) and its reason.
    Pod(u16, u16),
}

/// Refusals counted over one decision, for the pending pod's message.
#[derive(Debug, Default)]
pub struct Refusals {
    counts: Vec<(Why, u32)>,
}

impl Refusals {
    pub fn add(&mut self, why: Why) {
        match self.counts.iter_mut().find(|(w, _)| *w == why) {
            Some((_, n)) => *n += 1,
            None => self.counts.push((why, 1)),
        }
    }

    /// `0/12 nodes available: 9 nodes: too little memory; 3 nodes: taint dedicated=gpu:NoSchedule
    /// not tolerated` — each reason once, the most frequent first.
    pub fn message(&self, examined: usize, text: &dyn Fn(Why) -> String) -> String {
        let mut merged: Vec<(String, u32)> = Vec::new();
        for &(why, n) in &self.counts {
            let t = text(why);
            match merged.iter_mut().find(|(m, _)| *m == t) {
                Some((_, c)) => *c += n,
                None => merged.push((t, n)),
            }
        }
        if merged.is_empty() {
            return format!("0/{examined} nodes available: no node reports");
        }
        merged.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let parts: Vec<String> = merged.iter().map(|(t, n)| format!("{n} {}: {t}", if *n == 1 { "node" } else { "nodes" })).collect();
        format!("0/{examined} nodes available: {}", parts.join("; "))
    }
}

//! Topology spread constraints: over the domains (nodes or zones) of the nodes the pod's
//! selectors and node affinity admit, a domain may hold at most maxSkew more of the selected
//! pods than the emptiest (DoNotSchedule), or is preferred the emptier it is (ScheduleAnyway).

use super::{Context, PodRule, Prepared, in_spread_domains};
use crate::placement::pods::PodIndex;
use crate::placement::rules::Topology;
use crate::placement::PodRequest;

pub struct TopologySpread;

struct Constraint {
    tracker: usize,
    topology: Topology,
    /// The count of the emptiest eligible domain.
    min: u32,
    max_skew: u32,
    hard: bool,
    shown: String,
}

struct State(Vec<Constraint>);

/// How heavily a ScheduleAnyway constraint weighs each pod above the emptiest domain: above any
/// resource score or preference, so pods of a group fill every domain before doubling up.
const SOFT_WEIGHT: f64 = 100.0;

impl PodRule for TopologySpread {
    fn prepare(&self, pod: &PodRequest, cx: &mut Context<'_>) -> Option<Box<dyn Prepared>> {
        let rules = pod.rules.as_ref().filter(|r| !r.spread.is_empty())?;
        let eligible: Vec<bool> = cx.classes.iter().zip(cx.class_nodes).map(|(id, &n)| n > 0 && in_spread_domains(pod, id)).collect();
        let mut out = Vec::new();
        for c in &rules.spread {
            let t = cx.index.tracker(&c.term);
            let tracker = cx.index.get(t);
            let (domains, min) = match c.term.topology {
                Topology::Zone => {
                    let mut zones: Vec<u16> = eligible.iter().enumerate().filter(|(_, e)| **e).map(|(k, _)| cx.class_zone[k]).collect();
                    zones.sort_unstable();
                    zones.dedup();
                    let min = zones.iter().map(|&z| tracker.per_zone.get(z as usize).copied().unwrap_or(0)).min().unwrap_or(0);
                    (zones.len() as u32, min)
                }
                Topology::Node => {
                    let nodes: u32 = eligible.iter().zip(cx.class_nodes).filter(|(e, _)| **e).map(|(_, n)| n).sum();
                    let (mut holding, mut min) = (0u32, u32::MAX);
                    for (&node, &count) in &tracker.per_node {
                        if cx.nodes.get(node as usize).and_then(Option::as_ref).is_some_and(|n| eligible.get(n.class as usize).copied().unwrap_or(false)) {
                            holding += 1;
                            min = min.min(count);
                        }
                    }
                    (nodes, if holding < nodes { 0 } else { min })
                }
            };
            let min = if c.hard && domains < c.min_domains { 0 } else { min };
            out.push(Constraint { tracker: t, topology: c.term.topology, min, max_skew: c.max_skew, hard: c.hard, shown: c.term.shown().to_string() });
        }
        Some(Box::new(State(out)))
    }
}

impl Prepared for State {
    fn filter(&self, index: &PodIndex, node: u32, zone: u16) -> Option<u16> {
        self.0.iter().position(|c| c.hard && index.get(c.tracker).in_domain(c.topology, node, zone) + 1 > c.min + c.max_skew).map(|i| i as u16)
    }

    fn reason(&self, why: u16, _zone_name: &dyn Fn(u16) -> String) -> String {
        let c = &self.0[why as usize];
        format!("spreading pods of {} over {}s: past maxSkew {}", c.shown, c.topology.word(), c.max_skew)
    }

    fn score(&self, index: &PodIndex, node: u32, zone: u16) -> f64 {
        self.0.iter().filter(|c| !c.hard).map(|c| -SOFT_WEIGHT * f64::from(index.get(c.tracker).in_domain(c.topology, node, zone).saturating_sub(c.min))).sum()
    }
}

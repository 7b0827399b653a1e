//! Pod affinity and anti-affinity, required and preferred, per node or per zone. Required
//! anti-affinity holds both ways: a pod may not join a domain whose pods' anti-affinity selects it.

use super::{Context, PodRule, Prepared};
use crate::placement::pods::PodIndex;
use crate::placement::rules::Topology;
use crate::placement::PodRequest;

pub struct InterPodAffinity;

struct Counted {
    tracker: usize,
    topology: Topology,
    shown: String,
}

struct State {
    /// Its required affinity terms; `anywhere` when no pod matches yet and the pod matches its
    /// own term (the first pod of a group that wants its peers' company).
    affinity: Vec<(Counted, bool)>,
    anti: Vec<Counted>,
    /// Anti-affinity terms of bound pods that select this pod.
    repelled_by: Vec<(usize, String)>,
    preferred: Vec<(f64, usize, Topology)>,
}

impl PodRule for InterPodAffinity {
    fn prepare(&self, pod: &PodRequest, cx: &mut Context<'_>) -> Option<Box<dyn Prepared>> {
        let mut s = State { affinity: Vec::new(), anti: Vec::new(), repelled_by: Vec::new(), preferred: Vec::new() };
        if let Some(r) = &pod.rules {
            for term in &r.affinity {
                let t = cx.index.tracker(term);
                let anywhere = cx.index.get(t).total == 0 && pod.own.selected_by(&term.namespaces, &term.selector);
                s.affinity.push((Counted { tracker: t, topology: term.topology, shown: term.shown().to_string() }, anywhere));
            }
            for term in &r.anti_affinity {
                s.anti.push(Counted { tracker: cx.index.tracker(term), topology: term.topology, shown: term.shown().to_string() });
            }
            for (w, term) in &r.preferred_affinity {
                s.preferred.push((f64::from(*w) / 100.0, cx.index.tracker(term), term.topology));
            }
            for (w, term) in &r.preferred_anti_affinity {
                s.preferred.push((-f64::from(*w) / 100.0, cx.index.tracker(term), term.topology));
            }
        }
        for (t, tracker) in cx.index.holding_ids() {
            if pod.own.selected_by(&tracker.namespaces, &tracker.selector) {
                s.repelled_by.push((t, crate::placement::rules::PodLabels::shown(&pod.own)));
            }
        }
        if s.affinity.is_empty() && s.anti.is_empty() && s.repelled_by.is_empty() && s.preferred.is_empty() {
            return None;
        }
        Some(Box::new(s))
    }
}

impl Prepared for State {
    fn filter(&self, index: &PodIndex, node: u32, zone: u16) -> Option<u16> {
        let base = self.affinity.len();
        if let Some(i) = self.affinity.iter().position(|(c, anywhere)| !*anywhere && index.get(c.tracker).in_domain(c.topology, node, zone) == 0) {
            return Some(i as u16);
        }
        if let Some(i) = self.anti.iter().position(|c| index.get(c.tracker).in_domain(c.topology, node, zone) > 0) {
            return Some((base + i) as u16);
        }
        let base = base + self.anti.len();
        self.repelled_by.iter().position(|(t, _)| index.get(*t).repels(node, zone)).map(|i| (base + i) as u16)
    }

    fn reason(&self, why: u16, _zone_name: &dyn Fn(u16) -> String) -> String {
        let i = why as usize;
        if let Some((c, _)) = self.affinity.get(i) {
            return format!("no pod of {} in its {} (pod affinity)", c.shown, c.topology.word());
        }
        let i = i - self.affinity.len();
        if let Some(c) = self.anti.get(i) {
            return format!("a pod of {} in its {} (pod anti-affinity)", c.shown, c.topology.word());
        }
        let i = i - self.anti.len();
        match self.repelled_by.get(i) {
            Some((_, own)) => format!("a pod there has anti-affinity to pods of {own}"),
            None => "pod affinity".into(),
        }
    }

    fn score(&self, index: &PodIndex, node: u32, zone: u16) -> f64 {
        self.preferred.iter().filter(|(_, t, top)| index.get(*t).in_domain(*top, node, zone) > 0).map(|(w, _, _)| w).sum()
    }
}

//! Where the bound pods are, as the selectors of pod affinity and spread constraints count them:
//! one tracker per distinct (namespaces, selector), kept current on every bind and unbind, so a
//! decision reads a count per node or zone instead of walking the pods.

use std::collections::HashMap;
use std::sync::Arc;

use super::rules::{PodLabels, Term, Topology};
use super::PodRequest;

#[derive(Debug, Clone, Default)]
pub struct Tracker {
    pub namespaces: Vec<String>,
    pub selector: berth_proto::cluster::v1::LabelSelector,
    /// Matching pods per node and per zone index.
    pub per_node: HashMap<u32, u32>,
    pub per_zone: Vec<u32>,
    pub total: u32,
    /// Bound pods whose required anti-affinity term is this selector, per node (node topology)
    /// and per zone (zone topology): a pod the selector matches may not join them.
    pub anti_node: HashMap<u32, u32>,
    pub anti_zone: Vec<u32>,
    pub anti_total: u32,
}

impl Tracker {
    pub fn in_domain(&self, topology: Topology, node: u32, zone: u16) -> u32 {
        match topology {
            Topology::Node => self.per_node.get(&node).copied().unwrap_or(0),
            Topology::Zone => self.per_zone.get(zone as usize).copied().unwrap_or(0),
        }
    }

    /// Whether a holder of this anti-affinity term sits in the node's domain.
    pub fn repels(&self, node: u32, zone: u16) -> bool {
        self.anti_node.get(&node).is_some_and(|&n| n > 0) || self.anti_zone.get(zone as usize).is_some_and(|&n| n > 0)
    }
}

#[derive(Debug, Clone)]
struct Placed {
    node: u32,
    zone: u16,
    own: Arc<PodLabels>,
    /// Trackers whose selector matches the pod.
    matched: Vec<usize>,
    /// Its required anti-affinity terms: (tracker, topology).
    anti: Vec<(usize, Topology)>,
    priority: i32,
}

#[derive(Debug, Default)]
pub struct PodIndex {
    trackers: Vec<Tracker>,
    by_key: HashMap<String, usize>,
    pods: HashMap<String, Placed>,
    /// Trackers with anti-affinity holders.
    holding: Vec<usize>,
    /// Bound pods per priority.
    priorities: std::collections::BTreeMap<i32, u32>,
}

fn bump(v: &mut Vec<u32>, i: usize, up: bool) {
    if v.len() <= i {
        v.resize(i + 1, 0);
    }
    v[i] = if up { v[i] + 1 } else { v[i].saturating_sub(1) };
}

fn bump_map(m: &mut HashMap<u32, u32>, k: u32, up: bool) {
    if up {
        *m.entry(k).or_default() += 1;
    } else if let Some(n) = m.get_mut(&k) {
        *n -= 1;
        if *n == 0 {
            m.remove(&k);
        }
    }
}

impl PodIndex {
    /// The lowest priority of a bound pod.
    pub fn lowest_priority(&self) -> Option<i32> {
        self.priorities.keys().next().copied()
    }

    pub fn get(&self, t: usize) -> &Tracker {
        &self.trackers[t]
    }

    /// The tracker of a term, made (and filled from the bound pods) the first time it is asked.
    pub fn tracker(&mut self, term: &Term) -> usize {
        if let Some(&t) = self.by_key.get(&term.key) {
            return t;
        }
        let t = self.trackers.len();
        let mut tracker = Tracker { namespaces: term.namespaces.clone(), selector: term.selector.clone(), ..Default::default() };
        for p in self.pods.values_mut() {
            if p.own.selected_by(&tracker.namespaces, &tracker.selector) {
                bump_map(&mut tracker.per_node, p.node, true);
                bump(&mut tracker.per_zone, p.zone as usize, true);
                tracker.total += 1;
                p.matched.push(t);
            }
        }
        self.trackers.push(tracker);
        self.by_key.insert(term.key.clone(), t);
        t
    }

    /// Trackers holding anti-affinity terms of bound pods, with their numbers.
    pub fn holding_ids(&self) -> impl Iterator<Item = (usize, &Tracker)> {
        self.holding.iter().map(|&t| (t, &self.trackers[t]))
    }

    pub fn add(&mut self, key: &str, node: u32, zone: u16, req: &PodRequest) {
        if self.pods.contains_key(key) {
            self.remove(key);
        }
        let anti: Vec<(usize, Topology)> = req.rules.iter().flat_map(|r| r.anti_affinity.clone()).map(|term| (self.tracker(&term), term.topology)).collect();
        let mut matched = Vec::new();
        for (t, tracker) in self.trackers.iter_mut().enumerate() {
            if req.own.selected_by(&tracker.namespaces, &tracker.selector) {
                bump_map(&mut tracker.per_node, node, true);
                bump(&mut tracker.per_zone, zone as usize, true);
                tracker.total += 1;
                matched.push(t);
            }
        }
        for &(t, topology) in &anti {
            let tracker = &mut self.trackers[t];
            match topology {
                Topology::Node => bump_map(&mut tracker.anti_node, node, true),
                Topology::Zone => bump(&mut tracker.anti_zone, zone as usize, true),
            }
            tracker.anti_total += 1;
            if tracker.anti_total == 1 {
                self.holding.push(t);
            }
        }
        *self.priorities.entry(req.priority).or_default() += 1;
        self.pods.insert(key.to_string(), Placed { node, zone, own: req.own.clone(), matched, anti, priority: req.priority });
    }

    pub fn remove(&mut self, key: &str) {
        let Some(p) = self.pods.remove(key) else { return };
        if let Some(n) = self.priorities.get_mut(&p.priority) {
            *n -= 1;
            if *n == 0 {
                self.priorities.remove(&p.priority);
            }
        }
        for &t in &p.matched {
            let tracker = &mut self.trackers[t];
            bump_map(&mut tracker.per_node, p.node, false);
            bump(&mut tracker.per_zone, p.zone as usize, false);
            tracker.total = tracker.total.saturating_sub(1);
        }
        for &(t, topology) in &p.anti {
            let tracker = &mut self.trackers[t];
            match topology {
                Topology::Node => bump_map(&mut tracker.anti_node, p.node, false),
                Topology::Zone => bump(&mut tracker.anti_zone, p.zone as usize, false),
            }
            tracker.anti_total = tracker.anti_total.saturating_sub(1);
            if tracker.anti_total == 0 {
                self.holding.retain(|&x| x != t);
            }
        }
    }
}

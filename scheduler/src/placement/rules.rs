//! A pod's placement rules beyond its resources and selectors, compiled once from its spec:
//! tolerations, node affinity, pod (anti-)affinity and topology spread constraints.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use berth_proto::cluster::v1 as pb;
use prost::Message as _;

use super::labels::{self, HOSTNAME};

/// What a pod affinity term or a spread constraint counts pods over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Topology {
    Node,
    Zone,
}

impl Topology {
    /// The topology of a key the API edge accepted (`kubernetes.io/hostname` or the zone label).
    pub fn of(key: &str) -> Topology {
        if key == HOSTNAME { Topology::Node } else { Topology::Zone }
    }

    pub fn word(self) -> &'static str {
        match self {
            Topology::Node => "node",
            Topology::Zone => "zone",
        }
    }
}

/// A pod's namespace and labels, sorted, for the selectors of other pods' rules.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct PodLabels {
    pub namespace: String,
    labels: Vec<(String, String)>,
}

impl PodLabels {
    pub fn of(spec: &pb::PodSpec) -> PodLabels {
        let mut labels: Vec<(String, String)> = spec.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        labels.sort();
        PodLabels { namespace: spec.namespace.clone(), labels }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.labels.binary_search_by(|(k, _)| k.as_str().cmp(key)).ok().map(|i| self.labels[i].1.as_str())
    }

    /// Whether a term's selector and namespaces take this pod.
    pub fn selected_by(&self, namespaces: &[String], selector: &pb::LabelSelector) -> bool {
        namespaces.contains(&self.namespace) && crate::netpol::matches(selector, &|k| self.get(k))
    }

    pub fn shown(&self) -> String {
        self.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
    }
}

/// Pods a term counts: those its selector matches in its namespaces.
#[derive(Debug, Clone, PartialEq)]
pub struct Term {
    /// Namespaces and selector in a canonical text: one tracker per distinct key.
    pub key: String,
    pub namespaces: Vec<String>,
    pub selector: pb::LabelSelector,
    pub topology: Topology,
}

impl Term {
    fn of(selector: Option<&pb::LabelSelector>, namespaces: &[String], own_namespace: &str, topology_key: &str) -> Term {
        let selector = selector.cloned().unwrap_or_default();
        let mut namespaces = if namespaces.is_empty() { vec![own_namespace.to_string()] } else { namespaces.to_vec() };
        namespaces.sort();
        namespaces.dedup();
        let mut key = namespaces.join(",");
        key.push('|');
        key.push_str(&selector_text(&selector));
        Term { key, namespaces, selector, topology: Topology::of(topology_key) }
    }

    /// The selector as the user wrote it, for messages.
    pub fn shown(&self) -> &str {
        self.key.split_once('|').map_or("", |(_, s)| s)
    }
}

/// A selector as canonical text: `a=b,c In (x,y),d Exists`.
fn selector_text(sel: &pb::LabelSelector) -> String {
    let mut parts: Vec<String> = sel.match_labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    parts.sort();
    let mut exprs: Vec<String> = sel
        .match_expressions
        .iter()
        .map(|e| {
            let mut values = e.values.clone();
            values.sort();
            if values.is_empty() { format!("{} {}", e.key, e.operator) } else { format!("{} {} ({})", e.key, e.operator, values.join(",")) }
        })
        .collect();
    exprs.sort();
    parts.extend(exprs);
    if parts.is_empty() { "every pod".into() } else { parts.join(",") }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Spread {
    pub term: Term,
    pub max_skew: u32,
    /// DoNotSchedule; else ScheduleAnyway (a score).
    pub hard: bool,
    pub min_domains: u32,
}

/// The rules of a pod that has any; compared and hashed by its encoded source.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    source: Vec<u8>,
    pub tolerations: Vec<pb::Toleration>,
    pub required_nodes: Vec<pb::NodeSelectorTerm>,
    pub preferred_nodes: Vec<(i32, pb::NodeSelectorTerm)>,
    /// Node affinity names the hostname: it cannot be decided once per identity class.
    pub names_hostname: bool,
    pub affinity: Vec<Term>,
    pub anti_affinity: Vec<Term>,
    pub preferred_affinity: Vec<(i32, Term)>,
    pub preferred_anti_affinity: Vec<(i32, Term)>,
    pub spread: Vec<Spread>,
}

impl PartialEq for Rules {
    fn eq(&self, o: &Rules) -> bool {
        self.source == o.source
    }
}
impl Eq for Rules {}
impl Hash for Rules {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.source.hash(h);
    }
}

impl Rules {
    /// None when the pod has no rule beyond selectors and resources.
    pub fn of(spec: &pb::PodSpec) -> Option<Arc<Rules>> {
        let has_any = !spec.tolerations.is_empty() || spec.node_affinity.is_some() || spec.pod_affinity.is_some() || spec.pod_anti_affinity.is_some() || !spec.topology_spread_constraints.is_empty() || spec.spread_zones;
        if !has_any {
            return None;
        }
        let source = pb::PodSpec {
            tolerations: spec.tolerations.clone(),
            node_affinity: spec.node_affinity.clone(),
            pod_affinity: spec.pod_affinity.clone(),
            pod_anti_affinity: spec.pod_anti_affinity.clone(),
            topology_spread_constraints: spec.topology_spread_constraints.clone(),
            spread_zones: spec.spread_zones,
            labels: if spec.spread_zones { spec.labels.clone() } else { Default::default() },
            namespace: spec.namespace.clone(),
            ..Default::default()
        }
        .encode_to_vec();
        let ns = &spec.namespace;
        let na = spec.node_affinity.clone().unwrap_or_default();
        let names_hostname = na.required.iter().chain(na.preferred.iter().filter_map(|p| p.preference.as_ref())).flat_map(|t| &t.match_expressions).any(|r| r.key == HOSTNAME);
        let terms = |a: &Option<pb::PodAffinity>| {
            let a = a.clone().unwrap_or_default();
            let required = a.required.iter().map(|t| Term::of(t.label_selector.as_ref(), &t.namespaces, ns, &t.topology_key)).collect::<Vec<_>>();
            let preferred = a.preferred.iter().filter_map(|w| w.term.as_ref().map(|t| (w.weight, Term::of(t.label_selector.as_ref(), &t.namespaces, ns, &t.topology_key)))).collect::<Vec<_>>();
            (required, preferred)
        };
        let (affinity, preferred_affinity) = terms(&spec.pod_affinity);
        let (anti_affinity, preferred_anti_affinity) = terms(&spec.pod_anti_affinity);
        let mut spread: Vec<Spread> = spec
            .topology_spread_constraints
            .iter()
            .map(|c| Spread {
                term: Term::of(c.label_selector.as_ref(), &[], ns, &c.topology_key),
                max_skew: u32::try_from(c.max_skew).unwrap_or(1).max(1),
                hard: c.when_unsatisfiable != "ScheduleAnyway",
                min_domains: u32::try_from(c.min_domains).unwrap_or(0),
            })
            .collect();
        if spec.spread_zones {
            // The old flag: zones holding fewest pods of the same labels first, never refusing.
            let selector = pb::LabelSelector { match_labels: spec.labels.clone(), match_expressions: Vec::new() };
            spread.push(Spread { term: Term::of(Some(&selector), &[], ns, labels::ZONE), max_skew: 1, hard: false, min_domains: 0 });
        }
        Some(Arc::new(Rules {
            source,
            tolerations: spec.tolerations.clone(),
            required_nodes: na.required.clone(),
            preferred_nodes: na.preferred.iter().filter_map(|p| p.preference.clone().map(|t| (p.weight, t))).collect(),
            names_hostname,
            affinity,
            anti_affinity,
            preferred_affinity,
            preferred_anti_affinity,
            spread,
        }))
    }

    /// Whether any rule counts other pods (affinity, anti-affinity, spread).
    pub fn counts_pods(&self) -> bool {
        !self.affinity.is_empty() || !self.anti_affinity.is_empty() || !self.preferred_affinity.is_empty() || !self.preferred_anti_affinity.is_empty() || !self.spread.is_empty()
    }
}

//! NetworkPolicy, the pure part the scheduler keeps (Kubernetes semantics, networking.k8s.io/v1):
//! namespaces with labels, policies by `namespace/name`, which pods a policy selects, its peers
//! resolved to addresses, and what each node must be told.
//!
//! - A policy selects the pods of its own namespace that its `podSelector` matches, for the
//!   directions of its `policyTypes` (none given: Ingress, plus Egress when it has egress rules).
//! - A peer is `podSelector` (pods of the policy's namespace), `namespaceSelector` (every pod of
//!   the matching namespaces), both (those pods of those namespaces), or `ipBlock` (a CIDR less its
//!   exceptions). A rule without peers allows any address; without ports, every port and protocol.
//! - Each namespace carries `kubernetes.io/metadata.name: <name>` besides its own labels.
//!
//! The scheduler knows every pod's labels, node and address, so it resolves each policy once for
//! the cluster ([`compile`]) and sends each node only the policies selecting its pods, with the
//! selections of those pods ([`NodeView`]); [`NodeView::diff`] turns two views into the
//! incremental [`pb::PolicyUpdate`] an agent applies.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash as _, Hasher as _};
use std::net::IpAddr;

use berth_proto::cluster::v1 as pb;
use prost::Message as _;

use crate::store::{Event, StoredPolicy};

/// A policy's key: "namespace/name", as a pod's.
pub fn policy_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// The label every namespace has, naming it (as Kubernetes sets it).
pub const NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Whether a Kubernetes label selector matches a label set: every `matchLabels` pair and every
/// expression holds (the empty selector matches everything).
pub fn matches<'a>(sel: &pb::LabelSelector, labels: &dyn Fn(&str) -> Option<&'a str>) -> bool {
    sel.match_labels.iter().all(|(k, v)| labels(k) == Some(v.as_str()))
        && sel.match_expressions.iter().all(|e| {
            let have = labels(&e.key);
            match e.operator.as_str() {
                "In" => have.is_some_and(|v| e.values.iter().any(|x| x == v)),
                "NotIn" => have.is_none_or(|v| !e.values.iter().any(|x| x == v)),
                "Exists" => have.is_some(),
                "DoesNotExist" => have.is_none(),
                // Refused at the API edge; selects nothing if it ever got here.
                _ => false,
            }
        })
}

fn matches_map(sel: &pb::LabelSelector, labels: &HashMap<String, String>) -> bool {
    matches(sel, &|k| labels.get(k).map(String::as_str))
}

/// Which directions a policy governs for the pods it selects.
pub fn directions(spec: &pb::NetworkPolicySpec) -> (bool, bool) {
    if spec.policy_types.is_empty() {
        (true, !spec.egress.is_empty())
    } else {
        (spec.policy_types.iter().any(|t| t == "Ingress"), spec.policy_types.iter().any(|t| t == "Egress"))
    }
}

/// What a policy needs to know of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodFacts<'a> {
    pub key: &'a str,
    pub namespace: &'a str,
    pub labels: &'a HashMap<String, String>,
    pub node: Option<&'a str>,
    /// Its addresses (none until its node reported it running).
    pub ips: Vec<IpAddr>,
}

/// Namespaces and their labels (a namespace named by no label call has none but its name's).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Namespaces(pub BTreeMap<String, BTreeMap<String, String>>);

impl Namespaces {
    pub fn label<'a>(&'a self, ns: &'a str, key: &str) -> Option<&'a str> {
        if key == NAME_LABEL {
            return Some(ns);
        }
        self.0.get(ns).and_then(|l| l.get(key)).map(String::as_str)
    }

    pub fn matches(&self, sel: &pb::LabelSelector, ns: &str) -> bool {
        matches(sel, &|k| self.label(ns, k))
    }
}

/// Whether `policy` selects the pod (for either direction).
pub fn selects(policy: &pb::NetworkPolicy, pod: &PodFacts<'_>) -> bool {
    pod.namespace == policy.namespace && policy.spec.as_ref().and_then(|s| s.pod_selector.as_ref()).is_none_or(|sel| matches_map(sel, pod.labels))
}

/// The CIDRs "anywhere": a rule without peers.
const ANYWHERE: [&str; 2] = ["0.0.0.0/0", "::/0"];

fn host_cidr(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}/32"),
        IpAddr::V6(a) => format!("{a}/128"),
    }
}

fn protocol_number(name: &str) -> u32 {
    match name {
        "UDP" => 17,
        "SCTP" => 132,
        _ => 6,
    }
}

/// Pods by namespace, for resolving peers without a pass over every pod per peer.
pub struct PodIndex<'a> {
    by_namespace: BTreeMap<&'a str, Vec<&'a PodFacts<'a>>>,
    /// Pods with an address by label (key, value): a selector's matchLabels start from the
    /// shortest of its lists instead of every pod.
    by_label: HashMap<(&'a str, &'a str), Vec<&'a PodFacts<'a>>>,
}

impl<'a> PodIndex<'a> {
    pub fn new(pods: &'a [PodFacts<'a>]) -> PodIndex<'a> {
        let mut by_namespace: BTreeMap<&str, Vec<&PodFacts<'_>>> = BTreeMap::new();
        let mut by_label: HashMap<(&str, &str), Vec<&PodFacts<'_>>> = HashMap::new();
        for p in pods {
            by_namespace.entry(p.namespace).or_default().push(p);
            if !p.ips.is_empty() {
                for (k, v) in p.labels {
                    by_label.entry((k.as_str(), v.as_str())).or_default().push(p);
                }
            }
        }
        PodIndex { by_namespace, by_label }
    }

    fn in_namespace(&self, ns: &str) -> &[&'a PodFacts<'a>] {
        self.by_namespace.get(ns).map_or(&[], Vec::as_slice)
    }
}

/// The policy with its peers resolved to addresses (pods without an address yet count for none).
pub fn compile(key: &str, policy: &pb::NetworkPolicy, pods: &PodIndex<'_>, namespaces: &Namespaces) -> pb::CompiledPolicy {
    let spec = policy.spec.clone().unwrap_or_default();
    let (ingress, egress) = directions(&spec);
    let rules = |rules: &[pb::NetworkPolicyRule]| -> Vec<pb::CompiledRule> {
        rules
            .iter()
            .map(|r| {
                let mut cidrs: BTreeMap<String, Vec<String>> = BTreeMap::new();
                if r.peers.is_empty() {
                    cidrs.extend(ANYWHERE.iter().map(|c| (c.to_string(), Vec::new())));
                }
                for peer in &r.peers {
                    if let Some(b) = &peer.ip_block {
                        // The same CIDR twice allows what either allows: the exceptions both make.
                        match cidrs.get_mut(&b.cidr) {
                            Some(except) => except.retain(|e| b.except.contains(e)),
                            None => {
                                cidrs.insert(b.cidr.clone(), b.except.clone());
                            }
                        }
                        continue;
                    }
                    let in_ns: BTreeSet<&str> = match &peer.namespace_selector {
                        None => [policy.namespace.as_str()].into(),
                        Some(sel) => pods.by_namespace.keys().copied().filter(|ns| namespaces.matches(sel, ns)).collect(),
                    };
                    let shortest = peer.pod_selector.as_ref().and_then(|sel| sel.match_labels.iter().map(|(k, v)| pods.by_label.get(&(k.as_str(), v.as_str())).map_or(&[][..], Vec::as_slice)).min_by_key(|l| l.len()));
                    let candidates: Vec<&PodFacts<'_>> = match shortest {
                        Some(list) => list.iter().copied().filter(|p| in_ns.contains(p.namespace)).collect(),
                        None => in_ns.iter().flat_map(|ns| pods.in_namespace(ns).iter().copied()).collect(),
                    };
                    for p in candidates {
                        if peer.pod_selector.as_ref().is_none_or(|sel| matches_map(sel, p.labels)) {
                            for ip in &p.ips {
                                cidrs.insert(host_cidr(*ip), Vec::new());
                            }
                        }
                    }
                }
                let ports = r.ports.iter().map(|p| pb::CompiledPort { protocol: protocol_number(&p.protocol), port: p.port.max(0) as u32, end_port: p.end_port.max(p.port).max(0) as u32 }).collect();
                pb::CompiledRule { cidrs: cidrs.into_iter().map(|(cidr, except)| pb::CompiledCidr { cidr, except }).collect(), ports }
            })
            .collect()
    };
    pb::CompiledPolicy {
        key: key.to_string(),
        version: policy.version,
        ingress,
        egress,
        ingress_rules: if ingress { rules(&spec.ingress) } else { Vec::new() },
        egress_rules: if egress { rules(&spec.egress) } else { Vec::new() },
    }
}

/// The policies selecting one pod, per direction, in key order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Selection {
    pub ingress: Vec<String>,
    pub egress: Vec<String>,
}

/// What one node was told: each of its selected pods' selection and a digest of each compiled
/// policy it holds (not the policy: a thousand nodes would hold a copy each).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeView {
    pub selections: BTreeMap<String, Selection>,
    pub policies: BTreeMap<String, u64>,
}

fn digest(p: &pb::CompiledPolicy) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    p.encode_to_vec().hash(&mut h);
    h.finish()
}

impl NodeView {
    /// The update that brings an agent holding `old` to `self` (`None`: the agent holds nothing
    /// known, so everything, marked full). `None` when nothing changed.
    pub fn diff(&self, old: Option<&NodeView>, compiled: &HashMap<String, pb::CompiledPolicy>) -> Option<pb::PolicyUpdate> {
        let Some(old) = old else {
            return Some(pb::PolicyUpdate {
                full: true,
                upsert: self.policies.keys().filter_map(|k| compiled.get(k).cloned()).collect(),
                remove: Vec::new(),
                selections: self.selections.iter().map(|(pod, s)| selection(pod, s)).collect(),
                more: false,
            });
        };
        let upsert: Vec<pb::CompiledPolicy> = self.policies.iter().filter(|(k, d)| old.policies.get(*k) != Some(d)).filter_map(|(k, _)| compiled.get(k).cloned()).collect();
        let remove: Vec<String> = old.policies.keys().filter(|k| !self.policies.contains_key(*k)).cloned().collect();
        let mut selections: Vec<pb::PodSelection> = self.selections.iter().filter(|(pod, s)| old.selections.get(*pod) != Some(s)).map(|(pod, s)| selection(pod, s)).collect();
        selections.extend(old.selections.keys().filter(|pod| !self.selections.contains_key(*pod)).map(|pod| selection(pod, &Selection::default())));
        if upsert.is_empty() && remove.is_empty() && selections.is_empty() {
            return None;
        }
        Some(pb::PolicyUpdate { full: false, upsert, remove, selections, more: false })
    }
}

/// Cuts an update into parts of at most `budget` bytes each (a policy or selection larger than
/// that alone): the first keeps `full` and the removals, then come the policies, then the
/// selections; every part but the last says `more`, so the agent applies them all before it
/// rewrites a table. Applied in order they are the same update.
pub fn split_update(mut u: pb::PolicyUpdate, budget: usize) -> Vec<pb::PolicyUpdate> {
    let upsert = std::mem::take(&mut u.upsert);
    let selections = std::mem::take(&mut u.selections);
    let mut parts = vec![u];
    let mut size = parts[0].encoded_len();
    let mut room = |parts: &mut Vec<pb::PolicyUpdate>, cost: usize| {
        let last = parts.last().expect("one part");
        let empty = last.upsert.is_empty() && last.selections.is_empty() && last.remove.is_empty() && !last.full;
        if size + cost > budget && !empty {
            parts.push(pb::PolicyUpdate::default());
            size = 0;
        }
        size += cost;
    };
    for p in upsert {
        room(&mut parts, crate::instruction::element_len(p.encoded_len()));
        parts.last_mut().expect("one part").upsert.push(p);
    }
    for s in selections {
        room(&mut parts, crate::instruction::element_len(s.encoded_len()));
        parts.last_mut().expect("one part").selections.push(s);
    }
    let last = parts.len() - 1;
    for p in &mut parts[..last] {
        p.more = true;
    }
    parts
}

fn selection(pod: &str, s: &Selection) -> pb::PodSelection {
    pb::PodSelection { pod: pod.to_string(), ingress: s.ingress.clone(), egress: s.egress.clone() }
}

/// The policies and namespaces of the cluster, with what each node was last told.
#[derive(Debug, Default)]
pub struct PolicyBook {
    pub policies: BTreeMap<String, pb::NetworkPolicy>,
    pub namespaces: Namespaces,
    /// The version the next apply gets.
    pub next_version: u64,
    /// Something that may change a node's view happened since the last [`PolicyBook::views`].
    pub dirty: bool,
    pub sent: HashMap<String, NodeView>,
}

/// Every node's view and the compiled policies they refer to.
pub struct Views {
    pub nodes: BTreeMap<String, NodeView>,
    pub compiled: HashMap<String, pb::CompiledPolicy>,
}

impl PolicyBook {
    /// Creates or replaces a policy (checked at the API edge) with the next version.
    pub fn apply(&mut self, mut policy: pb::NetworkPolicy) -> (Event, pb::NetworkPolicy) {
        self.next_version = self.next_version.max(1);
        policy.version = self.next_version;
        self.next_version += 1;
        let key = policy_key(&policy.namespace, &policy.name);
        self.policies.insert(key.clone(), policy.clone());
        self.dirty = true;
        (Event::PolicyApplied { key, policy: StoredPolicy::of(&policy) }, policy)
    }

    pub fn delete(&mut self, key: &str) -> Option<Event> {
        self.policies.remove(key)?;
        self.dirty = true;
        Some(Event::PolicyDeleted { key: key.to_string() })
    }

    /// Sets (a value "" removes) labels of a namespace; the label naming it cannot be changed.
    pub fn label(&mut self, namespace: &str, changes: &HashMap<String, String>) -> (Event, BTreeMap<String, String>) {
        let labels = self.namespaces.0.entry(namespace.to_string()).or_default();
        for (k, v) in changes {
            if v.is_empty() {
                labels.remove(k);
            } else {
                labels.insert(k.clone(), v.clone());
            }
        }
        let now = labels.clone();
        if now.is_empty() {
            self.namespaces.0.remove(namespace);
        }
        self.dirty = true;
        (Event::NamespaceLabeled { namespace: namespace.to_string(), labels: now.clone() }, now)
    }

    /// Loads what a store holds.
    pub fn restore(&mut self, policies: &BTreeMap<String, StoredPolicy>, namespaces: &BTreeMap<String, BTreeMap<String, String>>) -> Result<(), String> {
        for (key, stored) in policies {
            let p = stored.decode().map_err(|e| format!("policy {key} in the store does not decode: {e}"))?;
            self.next_version = self.next_version.max(p.version + 1);
            self.policies.insert(key.clone(), p);
        }
        self.namespaces.0 = namespaces.clone();
        self.dirty = true;
        Ok(())
    }

    /// The view of every node with selected pods, and the policies compiled (only those
    /// selecting some pod).
    pub fn views(&self, pods: &[PodFacts<'_>]) -> Views {
        let mut by_namespace: BTreeMap<&str, Vec<(&String, &pb::NetworkPolicy)>> = BTreeMap::new();
        for (k, p) in &self.policies {
            by_namespace.entry(p.namespace.as_str()).or_default().push((k, p));
        }
        let index = PodIndex::new(pods);
        let mut nodes: BTreeMap<String, NodeView> = BTreeMap::new();
        let mut compiled: HashMap<String, pb::CompiledPolicy> = HashMap::new();
        for pod in pods {
            let (Some(node), Some(candidates)) = (pod.node, by_namespace.get(pod.namespace)) else { continue };
            let mut sel = Selection::default();
            for (key, policy) in candidates.iter().filter(|(_, p)| selects(p, pod)) {
                let c = compiled.entry((*key).clone()).or_insert_with(|| compile(key, policy, &index, &self.namespaces));
                if c.ingress {
                    sel.ingress.push((*key).clone());
                }
                if c.egress {
                    sel.egress.push((*key).clone());
                }
            }
            if sel.ingress.is_empty() && sel.egress.is_empty() {
                continue;
            }
            let view = nodes.entry(node.to_string()).or_default();
            for k in sel.ingress.iter().chain(&sel.egress) {
                view.policies.entry(k.clone()).or_insert_with(|| digest(&compiled[k]));
            }
            view.selections.insert(pod.key.to_string(), sel);
        }
        Views { nodes, compiled }
    }

    /// The updates every node needs since what it was told, and records them as told. `full`:
    /// nodes whose agent holds nothing known (a new stream).
    pub fn updates(&mut self, pods: &[PodFacts<'_>], full: &BTreeSet<String>) -> Vec<(String, pb::PolicyUpdate)> {
        let views = self.views(pods);
        let mut out = Vec::new();
        let empty = NodeView::default();
        let mut nodes: BTreeSet<String> = views.nodes.keys().cloned().collect();
        nodes.extend(self.sent.keys().cloned());
        nodes.extend(full.iter().cloned());
        for node in nodes {
            let view = views.nodes.get(&node).unwrap_or(&empty);
            let old = if full.contains(&node) { None } else { Some(self.sent.get(&node).unwrap_or(&empty)) };
            if let Some(u) = view.diff(old, &views.compiled) {
                out.push((node.clone(), u));
            }
            if view.selections.is_empty() {
                self.sent.remove(&node);
            } else {
                self.sent.insert(node, view.clone());
            }
        }
        self.dirty = false;
        out
    }

    /// What one pod's policies are, as GetPodPolicies answers.
    pub fn pod_policies(&self, pod: &PodFacts<'_>, pods: &[PodFacts<'_>]) -> pb::PodPolicies {
        let index = PodIndex::new(pods);
        let mut out = pb::PodPolicies::default();
        for (key, policy) in self.policies.iter().filter(|(_, p)| selects(p, pod)) {
            let c = compile(key, policy, &index, &self.namespaces);
            if c.ingress {
                out.ingress_policies.push(key.clone());
            }
            if c.egress {
                out.egress_policies.push(key.clone());
            }
            out.policies.push(c);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn sel(pairs: &[(&str, &str)]) -> pb::LabelSelector {
        pb::LabelSelector { match_labels: labels(pairs), match_expressions: Vec::new() }
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> pb::LabelSelector {
        pb::LabelSelector { match_labels: HashMap::new(), match_expressions: vec![pb::LabelSelectorRequirement { key: key.into(), operator: op.into(), values: values.iter().map(|v| v.to_string()).collect() }] }
    }

    fn policy(ns: &str, name: &str, spec: pb::NetworkPolicySpec) -> pb::NetworkPolicy {
        pb::NetworkPolicy { namespace: ns.into(), name: name.into(), spec: Some(spec), version: 1 }
    }

    fn peer(pods: Option<pb::LabelSelector>, namespaces: Option<pb::LabelSelector>) -> pb::NetworkPolicyPeer {
        pb::NetworkPolicyPeer { pod_selector: pods, namespace_selector: namespaces, ip_block: None }
    }

    #[test]
    fn a_large_update_is_cut_under_the_budget_and_marked_until_its_last_part() {
        let big = |k: usize| pb::CompiledPolicy { key: format!("a/p{k}"), ingress: true, ingress_rules: vec![pb::CompiledRule { cidrs: (0..2000).map(|i| pb::CompiledCidr { cidr: format!("10.{k}.{}.{}/32", i / 256, i % 256), except: vec![] }).collect(), ports: vec![] }], ..Default::default() };
        // As many selections as a node holds pods, each selected by many policies: more than
        // one instruction's worth on their own.
        let selections: Vec<pb::PodSelection> = (0..300).map(|i| pb::PodSelection { pod: format!("a/pod{i}"), ingress: (0..200).map(|k| format!("a/some-long-policy-name-{k}")).collect(), egress: vec![] }).collect();
        let u = pb::PolicyUpdate { full: true, upsert: (0..80).map(big).collect(), remove: vec!["a/old".into()], selections, more: false };
        let budget = crate::instruction::INSTRUCTION_BUDGET_BYTES;
        let parts = split_update(u.clone(), budget);
        assert!(parts.len() > 3, "{} parts", parts.len());
        for p in &parts {
            assert!(p.encoded_len() <= budget, "{} bytes", p.encoded_len());
        }
        assert!(parts[0].full && parts[0].remove == u.remove);
        assert!(parts[1..].iter().all(|p| !p.full && p.remove.is_empty()));
        assert_eq!(parts.iter().flat_map(|p| p.upsert.clone()).collect::<Vec<_>>(), u.upsert);
        assert_eq!(parts.iter().flat_map(|p| p.selections.clone()).collect::<Vec<_>>(), u.selections, "every selection, in order");
        assert!(parts.iter().filter(|p| !p.selections.is_empty()).count() > 1, "the selections are cut too");
        assert!(parts[..parts.len() - 1].iter().all(|p| p.more) && !parts.last().unwrap().more);
        let alone = split_update(pb::PolicyUpdate { full: true, ..Default::default() }, 100);
        assert_eq!(alone.len(), 1);
        assert!(!alone[0].more);
    }

    #[test]
    fn selectors_follow_kubernetes() {
        let l = labels(&[("app", "web"), ("tier", "front")]);
        assert!(matches_map(&sel(&[]), &l), "the empty selector matches everything");
        assert!(matches_map(&sel(&[("app", "web")]), &l));
        assert!(!matches_map(&sel(&[("app", "web"), ("tier", "back")]), &l));
        assert!(matches_map(&expr("app", "In", &["db", "web"]), &l));
        assert!(!matches_map(&expr("app", "NotIn", &["web"]), &l));
        assert!(matches_map(&expr("zone", "NotIn", &["a"]), &l), "NotIn holds for a missing key");
        assert!(matches_map(&expr("tier", "Exists", &[]), &l));
        assert!(!matches_map(&expr("zone", "Exists", &[]), &l));
        assert!(matches_map(&expr("zone", "DoesNotExist", &[]), &l));
        assert!(!matches_map(&expr("app", "Bogus", &[]), &l));
    }

    #[test]
    fn policy_types_default_as_kubernetes_says() {
        let mut s = pb::NetworkPolicySpec::default();
        assert_eq!(directions(&s), (true, false));
        s.egress.push(pb::NetworkPolicyRule::default());
        assert_eq!(directions(&s), (true, true));
        s.policy_types = vec!["Egress".into()];
        assert_eq!(directions(&s), (false, true));
    }

    struct World {
        labels: Vec<HashMap<String, String>>,
    }

    fn world() -> World {
        World { labels: vec![labels(&[("app", "web")]), labels(&[("app", "db")]), labels(&[("app", "web")]), labels(&[("role", "client")])] }
    }

    fn pods(w: &World) -> Vec<PodFacts<'_>> {
        vec![
            PodFacts { key: "a/web", namespace: "a", labels: &w.labels[0], node: Some("n1"), ips: vec!["10.0.0.1".parse().unwrap()] },
            PodFacts { key: "a/db", namespace: "a", labels: &w.labels[1], node: Some("n2"), ips: vec!["10.0.0.2".parse().unwrap()] },
            PodFacts { key: "b/web", namespace: "b", labels: &w.labels[2], node: Some("n1"), ips: vec!["10.0.0.3".parse().unwrap()] },
            PodFacts { key: "b/client", namespace: "b", labels: &w.labels[3], node: Some("n2"), ips: vec![] },
        ]
    }

    fn cidrs(r: &pb::CompiledRule) -> Vec<&str> {
        r.cidrs.iter().map(|c| c.cidr.as_str()).collect()
    }

    #[test]
    fn peers_resolve_by_pod_namespace_both_and_ip_block() {
        let w = world();
        let pods = pods(&w);
        let index = PodIndex::new(&pods);
        let mut ns = Namespaces::default();
        ns.0.insert("b".into(), [("team".to_string(), "x".to_string())].into());
        let rule = |peers| pb::NetworkPolicyRule { peers, ports: vec![] };
        let spec = pb::NetworkPolicySpec {
            pod_selector: Some(sel(&[("app", "db")])),
            ingress: vec![
                // Pods of the policy's own namespace only.
                rule(vec![peer(Some(sel(&[("app", "web")])), None)]),
                // Every pod of the namespaces with team=x (b/client has no address yet).
                rule(vec![peer(None, Some(sel(&[("team", "x")])))]),
                // Both: web pods of namespaces named b.
                rule(vec![peer(Some(sel(&[("app", "web")])), Some(sel(&[(NAME_LABEL, "b")])))]),
                rule(vec![pb::NetworkPolicyPeer { ip_block: Some(pb::IpBlock { cidr: "192.168.0.0/16".into(), except: vec!["192.168.1.0/24".into()] }), ..Default::default() }]),
                rule(vec![]),
            ],
            ..Default::default()
        };
        let c = compile("a/p", &policy("a", "p", spec), &index, &ns);
        assert!(c.ingress && !c.egress);
        assert_eq!(cidrs(&c.ingress_rules[0]), ["10.0.0.1/32"]);
        assert_eq!(cidrs(&c.ingress_rules[1]), ["10.0.0.3/32"]);
        assert_eq!(cidrs(&c.ingress_rules[2]), ["10.0.0.3/32"]);
        assert_eq!(c.ingress_rules[3].cidrs, vec![pb::CompiledCidr { cidr: "192.168.0.0/16".into(), except: vec!["192.168.1.0/24".into()] }]);
        assert_eq!(cidrs(&c.ingress_rules[4]), ["0.0.0.0/0", "::/0"], "no peers: anywhere");
    }

    #[test]
    fn ports_default_to_tcp_and_ranges_close() {
        let w = world();
        let pods = pods(&w);
        let spec = pb::NetworkPolicySpec {
            ingress: vec![pb::NetworkPolicyRule { peers: vec![], ports: vec![pb::NetworkPolicyPort { protocol: "".into(), port: 80, end_port: 0 }, pb::NetworkPolicyPort { protocol: "UDP".into(), port: 5000, end_port: 5010 }, pb::NetworkPolicyPort { protocol: "SCTP".into(), port: 0, end_port: 0 }] }],
            ..Default::default()
        };
        let c = compile("a/p", &policy("a", "p", spec), &PodIndex::new(&pods), &Namespaces::default());
        let ports: Vec<(u32, u32, u32)> = c.ingress_rules[0].ports.iter().map(|p| (p.protocol, p.port, p.end_port)).collect();
        assert_eq!(ports, [(6, 80, 80), (17, 5000, 5010), (132, 0, 0)]);
    }

    #[test]
    fn nodes_get_only_the_policies_of_their_pods_and_then_only_changes() {
        let w = world();
        let mut pods = pods(&w);
        let mut book = PolicyBook::default();
        let deny_db = policy("a", "deny-db", pb::NetworkPolicySpec { pod_selector: Some(sel(&[("app", "db")])), ..Default::default() });
        let from_web = policy("a", "from-web", pb::NetworkPolicySpec { pod_selector: Some(sel(&[("app", "db")])), ingress: vec![pb::NetworkPolicyRule { peers: vec![peer(Some(sel(&[("app", "web")])), Some(sel(&[])))], ports: vec![] }], ..Default::default() });
        book.policies.insert("a/deny-db".into(), deny_db);
        let first = book.updates(&pods, &BTreeSet::new());
        assert_eq!(first.len(), 1, "only n2 runs a selected pod: {first:?}");
        let (node, u) = &first[0];
        assert_eq!((node.as_str(), u.full), ("n2", false));
        assert_eq!(u.selections, vec![pb::PodSelection { pod: "a/db".into(), ingress: vec!["a/deny-db".into()], egress: vec![] }]);
        assert!(book.updates(&pods, &BTreeSet::new()).is_empty(), "nothing changed, nothing sent");

        book.policies.insert("a/from-web".into(), from_web);
        let u = book.updates(&pods, &BTreeSet::new());
        assert_eq!(u.len(), 1);
        assert_eq!(u[0].1.upsert.iter().map(|p| p.key.as_str()).collect::<Vec<_>>(), ["a/from-web"], "the unchanged policy is not sent again");
        assert_eq!(cidrs(&u[0].1.upsert[0].ingress_rules[0]), ["10.0.0.1/32", "10.0.0.3/32"]);

        // A web pod gets an address: the policy's peers change, and only it is sent.
        let l = labels(&[("app", "web")]);
        pods.push(PodFacts { key: "c/web", namespace: "c", labels: &l, node: Some("n3"), ips: vec!["10.0.0.9".parse().unwrap()] });
        let u = book.updates(&pods, &BTreeSet::new());
        assert_eq!(u.len(), 1, "n3 runs no selected pod: {u:?}");
        assert_eq!(cidrs(&u[0].1.upsert[0].ingress_rules[0]), ["10.0.0.1/32", "10.0.0.3/32", "10.0.0.9/32"]);

        // The selected pod goes: its node is told to drop the policies and the selection.
        pods.retain(|p| p.key != "a/db");
        let u = book.updates(&pods, &BTreeSet::new());
        assert_eq!(u[0].1.remove, ["a/deny-db", "a/from-web"]);
        assert_eq!(u[0].1.selections, vec![pb::PodSelection { pod: "a/db".into(), ..Default::default() }]);
        assert!(book.sent.is_empty());

        // A new stream hears everything, marked full, even with nothing selected.
        let u = book.updates(&pods, &["n1".to_string()].into());
        assert_eq!(u, vec![("n1".to_string(), pb::PolicyUpdate { full: true, ..Default::default() })]);
    }
}

//! `berthctl pod add -f POD.yaml`: a Kubernetes Pod document (the fields Berth places and runs
//! by, in Kubernetes' own names) made into a pod spec. A field Berth does not take is refused
//! by name rather than ignored.

use std::collections::BTreeMap;

use anyhow::{Context as _, bail};
use berth_proto::cluster::v1 as pb;
use serde::Deserialize;

use super::policy::{Requirement, Selector, selector_pb};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodDocument {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: Spec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Spec {
    #[serde(default)]
    node_selector: BTreeMap<String, String>,
    #[serde(default)]
    priority_class_name: Option<String>,
    #[serde(default)]
    tolerations: Vec<Toleration>,
    #[serde(default)]
    affinity: Affinity,
    #[serde(default)]
    topology_spread_constraints: Vec<Spread>,
    containers: Vec<Container>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Toleration {
    #[serde(default)]
    key: String,
    #[serde(default)]
    operator: String,
    #[serde(default)]
    value: String,
    #[serde(default)]
    effect: String,
    #[serde(default)]
    toleration_seconds: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Affinity {
    #[serde(default)]
    node_affinity: Option<NodeAffinity>,
    #[serde(default)]
    pod_affinity: Option<PodAffinity>,
    #[serde(default)]
    pod_anti_affinity: Option<PodAffinity>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NodeAffinity {
    #[serde(default, rename = "requiredDuringSchedulingIgnoredDuringExecution")]
    required: Option<NodeSelector>,
    #[serde(default, rename = "preferredDuringSchedulingIgnoredDuringExecution")]
    preferred: Vec<PreferredNode>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NodeSelector {
    node_selector_terms: Vec<NodeTerm>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NodeTerm {
    #[serde(default)]
    match_expressions: Vec<Requirement>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PreferredNode {
    weight: i32,
    preference: NodeTerm,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PodAffinity {
    #[serde(default, rename = "requiredDuringSchedulingIgnoredDuringExecution")]
    required: Vec<PodTerm>,
    #[serde(default, rename = "preferredDuringSchedulingIgnoredDuringExecution")]
    preferred: Vec<WeightedPodTerm>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PodTerm {
    #[serde(default)]
    label_selector: Option<Selector>,
    #[serde(default)]
    namespaces: Vec<String>,
    topology_key: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct WeightedPodTerm {
    weight: i32,
    pod_affinity_term: PodTerm,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Spread {
    max_skew: i32,
    topology_key: String,
    #[serde(default)]
    when_unsatisfiable: String,
    #[serde(default)]
    label_selector: Option<Selector>,
    #[serde(default)]
    min_domains: Option<i32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Container {
    /// Taken and unused: the pod's name is the Pod's.
    #[serde(default, rename = "name")]
    _name: String,
    /// Taken and unused: Berth's pods run their command on the node, not an image.
    #[serde(default, rename = "image")]
    _image: Option<String>,
    #[serde(default)]
    command: Vec<String>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    resources: Resources,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Resources {
    #[serde(default)]
    requests: BTreeMap<String, String>,
}

/// CPU as Kubernetes writes it: millicores (`250m`) or cores (`2`, `0.5`).
fn millicores(q: &str) -> Option<u64> {
    match q.strip_suffix('m') {
        Some(m) => m.parse().ok(),
        None => q.parse::<f64>().ok().filter(|c| *c >= 0.0).map(|c| (c * 1000.0).round() as u64),
    }
}

/// Memory as Kubernetes writes it: bytes, or with Ki, Mi, Gi, Ti, K, M, G, T.
fn bytes(q: &str) -> Option<u64> {
    const UNITS: [(&str, u64); 8] = [("Ki", 1 << 10), ("Mi", 1 << 20), ("Gi", 1 << 30), ("Ti", 1 << 40), ("K", 1_000), ("M", 1_000_000), ("G", 1_000_000_000), ("T", 1_000_000_000_000)];
    for (unit, factor) in UNITS {
        if let Some(n) = q.strip_suffix(unit) {
            return n.parse::<u64>().ok().and_then(|n| n.checked_mul(factor));
        }
    }
    q.parse().ok()
}

fn node_term(t: &NodeTerm) -> pb::NodeSelectorTerm {
    pb::NodeSelectorTerm { match_expressions: t.match_expressions.iter().map(|r| pb::NodeSelectorRequirement { key: r.key.clone(), operator: r.operator.clone(), values: r.values.clone() }).collect() }
}

fn pod_term(t: &PodTerm) -> pb::PodAffinityTerm {
    pb::PodAffinityTerm { label_selector: t.label_selector.as_ref().map(selector_pb), namespaces: t.namespaces.clone(), topology_key: t.topology_key.clone() }
}

fn pod_affinity(a: &PodAffinity) -> pb::PodAffinity {
    pb::PodAffinity { required: a.required.iter().map(pod_term).collect(), preferred: a.preferred.iter().map(|w| pb::WeightedPodAffinityTerm { weight: w.weight, term: Some(pod_term(&w.pod_affinity_term)) }).collect() }
}

/// The pod spec of a Pod document; `namespace` when the document names none.
pub fn spec_of(text: &str, namespace: &str) -> anyhow::Result<pb::PodSpec> {
    let d: PodDocument = serde_yaml_ng::from_str(text).context("not a Kubernetes Pod this berthctl takes")?;
    if d.kind != "Pod" || d.api_version != "v1" {
        bail!("kind {:?} apiVersion {:?}: give a Pod of apiVersion v1", d.kind, d.api_version);
    }
    let mut spec = template_spec(d.metadata.labels, d.spec, "spec")?;
    spec.namespace = d.metadata.namespace.unwrap_or_else(|| namespace.to_string());
    spec.name = d.metadata.name;
    Ok(spec)
}

/// The pod spec of a Pod's labels and spec (no name or namespace yet): a Pod document's, or a
/// Deployment's template (`at` is where its spec is, for errors: `spec.template.spec`).
pub fn template_spec(labels: BTreeMap<String, String>, s: Spec, at: &str) -> anyhow::Result<pb::PodSpec> {
    let [c] = s.containers.as_slice() else { bail!("{at}.containers: a Berth pod runs one command; give exactly one container") };
    let request = |k: &str| c.resources.requests.get(k);
    let cpu_millicores = match request("cpu") {
        Some(q) => millicores(q).with_context(|| format!("{at}.containers[0].resources.requests.cpu {q:?} is not a CPU quantity (250m, 2)"))?,
        None => 100,
    };
    let memory_bytes = match request("memory") {
        Some(q) => bytes(q).with_context(|| format!("{at}.containers[0].resources.requests.memory {q:?} is not a memory quantity (128Mi, 1Gi)"))?,
        None => 128 << 20,
    };
    if let Some(k) = c.resources.requests.keys().find(|k| *k != "cpu" && *k != "memory") {
        bail!("{at}.containers[0].resources.requests.{k}: Berth places by cpu and memory only");
    }
    let mut command: Vec<String> = c.command.iter().chain(&c.args).cloned().collect();
    if command.is_empty() {
        command = vec!["sleep".into(), "infinity".into()];
    }
    let na = s.affinity.node_affinity.as_ref();
    Ok(pb::PodSpec {
        cpu_millicores,
        memory_bytes,
        labels: labels.into_iter().collect(),
        pool_selector: s.node_selector.into_iter().collect(),
        priority_class_name: s.priority_class_name.unwrap_or_default(),
        tolerations: s.tolerations.into_iter().map(|t| pb::Toleration { key: t.key, operator: t.operator, value: t.value, effect: t.effect, toleration_seconds: t.toleration_seconds }).collect(),
        node_affinity: na.map(|n| pb::NodeAffinity {
            required: n.required.as_ref().map(|r| r.node_selector_terms.iter().map(node_term).collect()).unwrap_or_default(),
            preferred: n.preferred.iter().map(|p| pb::PreferredSchedulingTerm { weight: p.weight, preference: Some(node_term(&p.preference)) }).collect(),
        }),
        pod_affinity: s.affinity.pod_affinity.as_ref().map(pod_affinity),
        pod_anti_affinity: s.affinity.pod_anti_affinity.as_ref().map(pod_affinity),
        topology_spread_constraints: s
            .topology_spread_constraints
            .iter()
            .map(|c| pb::TopologySpreadConstraint { max_skew: c.max_skew, topology_key: c.topology_key.clone(), when_unsatisfiable: c.when_unsatisfiable.clone(), label_selector: c.label_selector.as_ref().map(selector_pb), min_domains: c.min_domains.unwrap_or(0) })
            .collect(),
        command,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const POD: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: web-0
  labels: { app: web }
spec:
  nodeSelector: { pool: general }
  priorityClassName: critical
  tolerations:
    - { key: dedicated, operator: Equal, value: gpu, effect: NoSchedule }
    - { key: spot, operator: Exists, effect: NoExecute, tolerationSeconds: 30 }
  affinity:
    nodeAffinity:
      requiredDuringSchedulingIgnoredDuringExecution:
        nodeSelectorTerms:
          - matchExpressions: [{ key: kubernetes.io/arch, operator: In, values: [amd64] }]
      preferredDuringSchedulingIgnoredDuringExecution:
        - weight: 50
          preference: { matchExpressions: [{ key: topology.kubernetes.io/zone, operator: In, values: [z1] }] }
    podAntiAffinity:
      requiredDuringSchedulingIgnoredDuringExecution:
        - { labelSelector: { matchLabels: { app: web } }, topologyKey: kubernetes.io/hostname }
  topologySpreadConstraints:
    - { maxSkew: 1, topologyKey: topology.kubernetes.io/zone, whenUnsatisfiable: DoNotSchedule, labelSelector: { matchLabels: { app: web } } }
  containers:
    - name: main
      image: unused
      command: [sleep]
      args: ["600"]
      resources: { requests: { cpu: 250m, memory: 256Mi } }
"#;

    #[test]
    fn a_kubernetes_pod_becomes_the_spec() {
        let s = spec_of(POD, "default").unwrap();
        assert_eq!((s.namespace.as_str(), s.name.as_str(), s.cpu_millicores, s.memory_bytes), ("default", "web-0", 250, 256 << 20));
        assert_eq!(s.command, ["sleep", "600"]);
        assert_eq!(s.pool_selector["pool"], "general");
        assert_eq!(s.priority_class_name, "critical");
        assert_eq!(s.tolerations[1].toleration_seconds, Some(30));
        let na = s.node_affinity.as_ref().unwrap();
        assert_eq!((na.required[0].match_expressions[0].key.as_str(), na.preferred[0].weight), ("kubernetes.io/arch", 50));
        assert_eq!(s.pod_anti_affinity.as_ref().unwrap().required[0].topology_key, "kubernetes.io/hostname");
        assert_eq!(s.topology_spread_constraints[0].max_skew, 1);
        let mut spec = s.clone();
        spec.priority_class_name.clear();
        berth_scheduler::validation::pod(&spec, &berth_scheduler::validation::Limits::of_pools(&[])).expect("the scheduler takes it");
        assert_eq!(millicores("2"), Some(2000));
        assert_eq!(bytes("1Gi"), Some(1 << 30));
    }

    #[test]
    fn what_is_not_taken_is_named() {
        let e = spec_of(&POD.replace("nodeSelector", "hostNetwork: true\n  nodeSelector"), "default").unwrap_err();
        assert!(format!("{e:#}").contains("hostNetwork"), "{e:#}");
        let e = spec_of(&POD.replace("cpu: 250m", "cpu: lots"), "default").unwrap_err();
        assert!(e.to_string().contains("requests.cpu \"lots\""), "{e}");
    }
}

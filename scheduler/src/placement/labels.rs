//! Node labels as placement rules see them: the node's own labels and the well-known ones derived
//! from its identity, and the requirement operators of node affinity.

use std::borrow::Cow;

use berth_proto::cluster::v1 as pb;

pub const ZONE: &str = "topology.kubernetes.io/zone";
pub const HOSTNAME: &str = "kubernetes.io/hostname";
pub const INSTANCE_TYPE: &str = "node.kubernetes.io/instance-type";
pub const POOL: &str = "berth.io/pool";
/// `on-demand` or `spot`, from the node's pool (the scheduler sets it).
pub const CAPACITY_TYPE: &str = "karpenter.sh/capacity-type";
pub const ARCH: &str = "kubernetes.io/arch";

/// Every label derived from a node's identity.
pub const WELL_KNOWN: [&str; 6] = [ZONE, HOSTNAME, INSTANCE_TYPE, POOL, CAPACITY_TYPE, ARCH];

/// The topology keys pod affinity and spread constraints take.
pub const TOPOLOGY_KEYS: [&str; 2] = [HOSTNAME, ZONE];

/// The CPU architecture of an ECS instance type: the families of ARM processors end in `y`
/// (g8y, c8y, r8y: Yitian) or `r` (g6r, c6r: Ampere); the others are x86-64.
pub fn arch_of(instance_type: &str) -> &'static str {
    let family = instance_type.split('.').nth(1).unwrap_or("");
    if family.ends_with('y') || family.ends_with('r') { "arm64" } else { "amd64" }
}

/// A label of a node: a well-known one from its identity, else its own.
pub fn node_label<'a>(id: &'a pb::NodeIdentity, key: &str) -> Option<Cow<'a, str>> {
    let own = |v: &'a str| (!v.is_empty()).then_some(Cow::Borrowed(v));
    match key {
        ZONE => own(&id.zone_id),
        HOSTNAME => own(&id.instance_id),
        INSTANCE_TYPE => own(&id.instance_type),
        POOL => own(&id.pool),
        ARCH if !id.labels.contains_key(ARCH) && !id.instance_type.is_empty() => Some(Cow::Borrowed(arch_of(&id.instance_type))),
        CAPACITY_TYPE if !id.labels.contains_key(CAPACITY_TYPE) => Some(Cow::Borrowed("on-demand")),
        _ => id.labels.get(key).map(|v| Cow::Borrowed(v.as_str())),
    }
}

/// Every label of a node, the well-known ones included (for ListNodes).
pub fn all_node_labels(id: &pb::NodeIdentity) -> std::collections::HashMap<String, String> {
    let mut all = id.labels.clone();
    for key in WELL_KNOWN {
        if let Some(v) = node_label(id, key) {
            all.insert(key.to_string(), v.into_owned());
        }
    }
    all
}

/// Whether a node-affinity requirement holds for the value a node has (None: no such label).
/// Gt and Lt compare integers; a value that is not one never matches.
pub fn requirement_holds(r: &pb::NodeSelectorRequirement, have: Option<&str>) -> bool {
    let int = |s: &str| s.parse::<i64>().ok();
    match r.operator.as_str() {
        "In" => have.is_some_and(|v| r.values.iter().any(|x| x == v)),
        "NotIn" => have.is_none_or(|v| !r.values.iter().any(|x| x == v)),
        "Exists" => have.is_some(),
        "DoesNotExist" => have.is_none(),
        "Gt" => matches!((have.and_then(int), r.values.first().and_then(|v| int(v))), (Some(a), Some(b)) if a > b),
        "Lt" => matches!((have.and_then(int), r.values.first().and_then(|v| int(v))), (Some(a), Some(b)) if a < b),
        // Refused at the API edge.
        _ => false,
    }
}

/// Whether every requirement of a term holds on the node (an empty term matches nothing, as in
/// Kubernetes).
pub fn term_matches(term: &pb::NodeSelectorTerm, id: &pb::NodeIdentity) -> bool {
    !term.match_expressions.is_empty() && term.match_expressions.iter().all(|r| requirement_holds(r, node_label(id, &r.key).as_deref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(key: &str, op: &str, values: &[&str]) -> pb::NodeSelectorRequirement {
        pb::NodeSelectorRequirement { key: key.into(), operator: op.into(), values: values.iter().map(|v| v.to_string()).collect() }
    }

    #[test]
    fn well_known_labels_come_from_the_identity() {
        let id = pb::NodeIdentity { instance_id: "i-1".into(), instance_type: "ecs.g8y.large".into(), zone_id: "z1".into(), pool: "gp".into(), labels: [("gpus".to_string(), "4".to_string())].into(), ..Default::default() };
        assert_eq!(node_label(&id, ZONE).as_deref(), Some("z1"));
        assert_eq!(node_label(&id, ARCH).as_deref(), Some("arm64"));
        assert_eq!(node_label(&id, CAPACITY_TYPE).as_deref(), Some("on-demand"));
        assert_eq!(arch_of("ecs.g7.xlarge"), "amd64");
        assert!(term_matches(&pb::NodeSelectorTerm { match_expressions: vec![req("gpus", "Gt", &["2"]), req(POOL, "In", &["gp", "x"])] }, &id));
        assert!(!term_matches(&pb::NodeSelectorTerm { match_expressions: vec![req("gpus", "Lt", &["4"])] }, &id));
        assert!(term_matches(&pb::NodeSelectorTerm { match_expressions: vec![req("spot", "DoesNotExist", &[]), req(ZONE, "NotIn", &["z2"])] }, &id));
        assert!(!term_matches(&pb::NodeSelectorTerm::default(), &id), "an empty term matches nothing");
    }
}

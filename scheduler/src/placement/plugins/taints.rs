//! Taints and tolerations: a NoSchedule or NoExecute taint keeps off every pod that does not
//! tolerate it; a PreferNoSchedule one lowers the node's score.

use berth_proto::cluster::v1 as pb;

use super::NodeRule;
use crate::placement::PodRequest;

pub const NO_SCHEDULE: &str = "NoSchedule";
pub const PREFER_NO_SCHEDULE: &str = "PreferNoSchedule";
pub const NO_EXECUTE: &str = "NoExecute";
pub const EFFECTS: [&str; 3] = [NO_SCHEDULE, PREFER_NO_SCHEDULE, NO_EXECUTE];

/// The taint of a cordoned node.
pub const UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";

/// Whether a toleration tolerates a taint (Kubernetes' rules: an empty effect matches every
/// effect, an empty key with Exists every key, Exists any value, Equal the same value).
pub fn tolerates(t: &pb::Toleration, taint: &pb::Taint) -> bool {
    (t.effect.is_empty() || t.effect == taint.effect)
        && (t.key.is_empty() && t.operator == "Exists" || t.key == taint.key)
        && match t.operator.as_str() {
            "Exists" => true,
            _ => t.value == taint.value,
        }
}

/// The toleration of the pod that tolerates the taint, if any.
pub fn toleration_for<'a>(pod: &'a PodRequest, taint: &pb::Taint) -> Option<&'a pb::Toleration> {
    pod.rules.as_ref().and_then(|r| r.tolerations.iter().find(|t| tolerates(t, taint)))
}

/// `key=value:Effect` (`key:Effect` without a value).
pub fn shown(taint: &pb::Taint) -> String {
    if taint.value.is_empty() { format!("{}:{}", taint.key, taint.effect) } else { format!("{}={}:{}", taint.key, taint.value, taint.effect) }
}

pub struct TaintToleration;

impl NodeRule for TaintToleration {
    fn filter(&self, pod: &PodRequest, node: &pb::NodeIdentity) -> Option<String> {
        node.taints
            .iter()
            .find(|t| (t.effect == NO_SCHEDULE || t.effect == NO_EXECUTE) && toleration_for(pod, t).is_none())
            .map(|t| if t.key == UNSCHEDULABLE { "cordoned".to_string() } else { format!("taint {} not tolerated", shown(t)) })
    }

    fn score(&self, pod: &PodRequest, node: &pb::NodeIdentity) -> f64 {
        -(node.taints.iter().filter(|t| t.effect == PREFER_NO_SCHEDULE && toleration_for(pod, t).is_none()).count() as f64)
    }

    fn bounds_domains(&self) -> bool {
        false
    }
}

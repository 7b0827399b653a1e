//! Node affinity: required terms (one must match), preferred terms (their weights add to the
//! score), on the node's labels and the well-known ones.

use berth_proto::cluster::v1 as pb;

use super::NodeRule;
use crate::placement::PodRequest;
use crate::placement::labels::term_matches;

pub struct NodeAffinity;

impl NodeRule for NodeAffinity {
    fn filter(&self, pod: &PodRequest, node: &pb::NodeIdentity) -> Option<String> {
        let rules = pod.rules.as_ref()?;
        if rules.required_nodes.is_empty() || rules.required_nodes.iter().any(|t| term_matches(t, node)) {
            return None;
        }
        Some("not matching the pod's required node affinity".into())
    }

    fn score(&self, pod: &PodRequest, node: &pb::NodeIdentity) -> f64 {
        let Some(rules) = pod.rules.as_ref() else { return 0.0 };
        rules.preferred_nodes.iter().filter(|(_, t)| term_matches(t, node)).map(|(w, _)| f64::from(*w) / 100.0).sum()
    }

    fn bounds_domains(&self) -> bool {
        true
    }
}

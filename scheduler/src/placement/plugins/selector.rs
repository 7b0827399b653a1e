//! The pod's pool selector (`pool`, `zone`, other node labels) and vSwitch.

use berth_proto::cluster::v1 as pb;

use super::NodeRule;
use crate::placement::PodRequest;

pub struct Selector;

impl NodeRule for Selector {
    fn filter(&self, pod: &PodRequest, node: &pb::NodeIdentity) -> Option<String> {
        if let Some(p) = pod.pool.as_ref().filter(|p| **p != node.pool) {
            return Some(format!("not of pool {p}"));
        }
        if let Some(z) = pod.zone.as_ref().filter(|z| **z != node.zone_id) {
            return Some(format!("not in zone {z}"));
        }
        if let Some(v) = pod.vswitch.as_ref().filter(|v| !node.vswitch_ids.contains(v)) {
            return Some(format!("without vSwitch {v}"));
        }
        pod.labels.iter().find(|(k, v)| node.labels.get(k) != Some(v)).map(|(k, v)| format!("without label {k}={v}"))
    }

    fn bounds_domains(&self) -> bool {
        true
    }
}

//! Which planes a local cloud runs: the network data plane and the storage plane, or none
//! (`--no-dataplane`, API only).

use std::path::Path;
use std::sync::Arc;

use crate::state::Plane;
use crate::volumes::VolumePlane;
use crate::vpcnet::VpcNet;

pub fn build(state_dir: &Path, netns_prefix: &str, no_dataplane: bool) -> Vec<Arc<dyn Plane>> {
    if no_dataplane {
        return Vec::new();
    }
    vec![Arc::new(VpcNet::new(netns_prefix)), Arc::new(VolumePlane::new(state_dir))]
}

//! Which planes a local cloud runs: the guests, the network data plane and the storage plane, or
//! none (`--no-dataplane`, API only).

use std::path::Path;
use std::sync::Arc;

use crate::guest::GuestPlane;
use crate::state::Plane;
use crate::volumes::VolumePlane;
use crate::vpcnet::VpcNet;

/// `guests` is the plane of `--image` (its supervisor running); without one, guests recorded
/// under the state directory are still stopped on teardown. Guests come first so that teardown
/// stops them while their instances' namespaces still exist.
pub fn build(state_dir: &Path, netns_prefix: &str, no_dataplane: bool, guests: Option<GuestPlane>) -> Vec<Arc<dyn Plane>> {
    if no_dataplane {
        return Vec::new();
    }
    let guests = guests.unwrap_or_else(|| GuestPlane::recorded_only(state_dir));
    vec![Arc::new(guests), Arc::new(VpcNet::new(netns_prefix)), Arc::new(VolumePlane::new(state_dir))]
}

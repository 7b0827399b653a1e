//! The CSI driver's request checks: the first line names the RPC, the rest is its request as
//! protobuf (as gRPC delivers it). Each request goes through the checks its handler makes before
//! any cloud call, mount or agent call (volume IDs, parameters, capabilities, capacity ranges).
//! Shared by the fuzz target and the corpus test of `berth-csi`.

use berth_csi::volume::{self, VolumeId, VolumeSpec};
use berth_csi::{controller, node};
use berth_proto::csi::v1 as csi;
use prost::Message as _;

/// The sizes a disk volume can take (as CreateVolume and ControllerExpandVolume compute them).
fn sizes(spec_or_levels: Option<(&str, Option<&str>)>, range: Option<&csi::CapacityRange>) {
    let (category, level) = spec_or_levels.unwrap_or(("cloud_essd", Some("PL0")));
    let (min, max) = volume::disk_size_limits(category, level);
    let _ = volume::disk_size_gib(range, min, max);
}

fn id_round_trip(id: &VolumeId) {
    let text = id.to_string();
    assert_eq!(VolumeId::parse(&text).as_ref(), Ok(id), "a volume ID the driver accepts prints back to itself: {text:?}");
}

pub fn run(data: &[u8]) {
    let split = data.iter().position(|b| *b == b'\n').unwrap_or(data.len());
    let (head, body) = data.split_at(split);
    let body = body.get(1..).unwrap_or_default();
    match head {
        b"CreateVolume" => {
            let Ok(req) = csi::CreateVolumeRequest::decode(body) else { return };
            if let Ok(spec) = controller::check_create_volume(&req) {
                if let VolumeSpec::Disk { category, performance_level, .. } = &spec {
                    sizes(Some((category, performance_level.as_deref())), req.capacity_range.as_ref());
                }
                let _ = volume::dir_name(&req.name);
                let _ = volume::client_token(&req.name, "");
            }
        }
        b"DeleteVolume" => {
            let Ok(req) = csi::DeleteVolumeRequest::decode(body) else { return };
            if let Ok(id) = VolumeId::parse(&req.volume_id) {
                id_round_trip(&id);
            }
        }
        b"ControllerPublishVolume" => {
            let Ok(req) = csi::ControllerPublishVolumeRequest::decode(body) else { return };
            if let Ok(id) = controller::check_publish_volume(&req) {
                id_round_trip(&id);
            }
        }
        b"ValidateVolumeCapabilities" => {
            let Ok(req) = csi::ValidateVolumeCapabilitiesRequest::decode(body) else { return };
            let _ = controller::check_validate_volume_capabilities(&req);
        }
        b"ControllerExpandVolume" => {
            let Ok(req) = csi::ControllerExpandVolumeRequest::decode(body) else { return };
            if let Ok((_, range)) = controller::check_expand_volume(&req) {
                for (category, level) in [("cloud_essd", Some("PL1")), ("cloud_ssd", None), ("cloud_auto", None)] {
                    sizes(Some((category, level)), Some(range));
                }
            }
        }
        b"NodeStageVolume" => {
            let Ok(req) = csi::NodeStageVolumeRequest::decode(body) else { return };
            if let Ok((id, cap)) = node::check_stage_volume(&req) {
                let _ = volume::unsupported(id.kind(), &cap);
            }
        }
        b"NodePublishVolume" => {
            let Ok(req) = csi::NodePublishVolumeRequest::decode(body) else { return };
            if let Ok((id, cap)) = node::check_publish_volume(&req) {
                let _ = volume::unsupported(id.kind(), &cap);
            }
        }
        _ => {
            // Any other text: a volume ID and a parameter map of `k=v` lines.
            let text = String::from_utf8_lossy(data);
            if let Ok(id) = VolumeId::parse(&text) {
                id_round_trip(&id);
            }
            let params = text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect();
            let _ = VolumeSpec::parse(&params);
            sizes(None, None);
        }
    }
}

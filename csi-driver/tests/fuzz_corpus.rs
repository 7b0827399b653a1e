//! Every input of `fuzz/corpus/csi_request/` and `fuzz/regressions/csi_request/` through the
//! fuzz target's harness: the request checks stay panic-free without a fuzzer in CI.

use berth_proto::csi::v1 as csi;
use csi::volume_capability::access_mode::Mode;
use csi::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume};

#[path = "../../fuzz/harness/csi_request.rs"]
mod harness;
#[path = "../../fuzz/harness/corpus.rs"]
mod corpus;

#[test]
fn csi_request_corpus_never_panics() {
    corpus::run_all("csi_request", harness::run);
}

fn mount(fs_type: &str, mode: Mode) -> csi::VolumeCapability {
    csi::VolumeCapability { access_type: Some(AccessType::Mount(MountVolume { fs_type: fs_type.into(), ..Default::default() })), access_mode: Some(AccessMode { mode: mode as i32 }) }
}

fn block(mode: Mode) -> csi::VolumeCapability {
    csi::VolumeCapability { access_type: Some(AccessType::Block(BlockVolume {})), access_mode: Some(AccessMode { mode: mode as i32 }) }
}

fn seed(rpc: &str, msg: &impl prost::Message) -> Vec<u8> {
    let mut out = format!("{rpc}\n").into_bytes();
    out.extend(msg.encode_to_vec());
    out
}

/// The seeds of `fuzz/corpus/csi_request/`, from requests a CO sends; binary, so written by
/// `cargo test -p berth-csi --test fuzz_corpus -- --ignored write_csi_seeds`.
fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let params = |kv: &[(&str, &str)]| kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let range = |required_bytes, limit_bytes| Some(csi::CapacityRange { required_bytes, limit_bytes });
    vec![
        ("create-disk-essd", seed("CreateVolume", &csi::CreateVolumeRequest { name: "pvc-1".into(), capacity_range: range(1 << 30, 0), volume_capabilities: vec![mount("ext4", Mode::SingleNodeWriter)], parameters: params(&[("type", "disk"), ("category", "cloud_essd"), ("performanceLevel", "PL1")]), ..Default::default() })),
        ("create-disk-block-xfs", seed("CreateVolume", &csi::CreateVolumeRequest { name: "pvc-2".into(), capacity_range: range(20 << 30, 40 << 30), volume_capabilities: vec![block(Mode::SingleNodeWriter), mount("xfs", Mode::SingleNodeReaderOnly)], parameters: params(&[("category", "cloud_ssd"), ("zoneId", "local-1a"), ("csi.storage.k8s.io/pvc/name", "data")]), ..Default::default() })),
        ("create-disk-huge-range", seed("CreateVolume", &csi::CreateVolumeRequest { name: "pvc-3".into(), capacity_range: range(i64::MAX, 0), volume_capabilities: vec![mount("", Mode::SingleNodeWriter)], ..Default::default() })),
        ("create-nas", seed("CreateVolume", &csi::CreateVolumeRequest { name: "pvc-4".into(), volume_capabilities: vec![mount("", Mode::MultiNodeMultiWriter)], parameters: params(&[("type", "nas"), ("fileSystemId", "fs-1"), ("path", "/shared/")]), ..Default::default() })),
        ("create-oss", seed("CreateVolume", &csi::CreateVolumeRequest { name: "pvc 5/../x".into(), volume_capabilities: vec![mount("", Mode::MultiNodeReaderOnly)], parameters: params(&[("type", "oss"), ("bucket", "pods"), ("path", "a/../b")]), ..Default::default() })),
        ("create-typo", seed("CreateVolume", &csi::CreateVolumeRequest { name: "pvc-6".into(), volume_capabilities: vec![mount("btrfs", Mode::SingleNodeWriter)], parameters: params(&[("performancelevel", "PL1")]), ..Default::default() })),
        ("delete-nas", seed("DeleteVolume", &csi::DeleteVolumeRequest { volume_id: "nas:fs-1:fs-1.nas.local:/shared/pvc-4-ab12".into(), ..Default::default() })),
        ("delete-oss", seed("DeleteVolume", &csi::DeleteVolumeRequest { volume_id: "oss:pods:/data/pvc-1".into(), ..Default::default() })),
        ("publish-disk", seed("ControllerPublishVolume", &csi::ControllerPublishVolumeRequest { volume_id: "d-abc123".into(), node_id: "i-1".into(), volume_capability: Some(mount("ext4", Mode::SingleNodeWriter)), ..Default::default() })),
        ("publish-disk-multi", seed("ControllerPublishVolume", &csi::ControllerPublishVolumeRequest { volume_id: "d-abc123".into(), node_id: "i-1".into(), volume_capability: Some(block(Mode::MultiNodeMultiWriter)), ..Default::default() })),
        ("validate-caps", seed("ValidateVolumeCapabilities", &csi::ValidateVolumeCapabilitiesRequest { volume_id: "nas:fs-1::/a".into(), volume_capabilities: vec![mount("", Mode::SingleNodeSingleWriter), block(Mode::SingleNodeWriter), csi::VolumeCapability::default()], ..Default::default() })),
        ("expand-disk", seed("ControllerExpandVolume", &csi::ControllerExpandVolumeRequest { volume_id: "d-abc123".into(), capacity_range: range(30 << 30, 0), ..Default::default() })),
        ("expand-negative", seed("ControllerExpandVolume", &csi::ControllerExpandVolumeRequest { volume_id: "d-abc123".into(), capacity_range: range(-1, i64::MIN), ..Default::default() })),
        ("stage-disk", seed("NodeStageVolume", &csi::NodeStageVolumeRequest { volume_id: "d-abc123".into(), staging_target_path: "/var/lib/kubelet/plugins/staging/pv1".into(), volume_capability: Some(mount("xfs", Mode::SingleNodeWriter)), publish_context: params(&[("serial", "abc123"), ("device", "/dev/vdb")]), ..Default::default() })),
        ("publish-node-oss", seed("NodePublishVolume", &csi::NodePublishVolumeRequest { volume_id: "oss:pods:/data/pvc-1".into(), staging_target_path: "/staging".into(), target_path: "/pods/x/volumes/v".into(), volume_capability: Some(mount("", Mode::MultiNodeMultiWriter)), readonly: true, ..Default::default() })),
        ("text-volume-id", b"nas:fs-1:srv:/a/b".to_vec()),
        ("text-parameters", b"type=nas\nfileSystemId=fs-1\npath=/x/".to_vec()),
    ]
}

#[test]
#[ignore = "writes the seed files; run by hand when the seeds change"]
fn write_csi_seeds() {
    let dir = corpus::dir("corpus", "csi_request");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, bytes) in seeds() {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

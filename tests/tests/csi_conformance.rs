//! Conformance of `berth-csi`'s gRPC services, wired to the local cloud and a node agent: the
//! behaviours a CO (and the kubernetes-csi sanity suite) relies on — idempotent calls, the right
//! codes for wrong or missing arguments, absent things unpublished and unstaged without error,
//! mount and block mode, expansion, stats, capability validation, one call per volume at a time.

use std::collections::HashMap;
use std::path::Path;

use berth_proto::csi::v1 as csi;
use berth_tests::csi::{Ctl, OneNodeCsi, block_cap, mount, mount_cap, mount_count, unmount};
use berth_tests::{LocalCloudOptions, is_root};
use csi::volume_capability::access_mode::Mode;
use tonic::Code;

const GIB: i64 = 1 << 30;

fn code<T>(r: Result<T, tonic::Status>) -> Code {
    match r {
        Ok(_) => Code::Ok,
        Err(e) => e.code(),
    }
}

fn create(name: &str, gib: i64, params: &[(&str, &str)], cap: csi::VolumeCapability) -> csi::CreateVolumeRequest {
    csi::CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(csi::CapacityRange { required_bytes: gib * GIB, limit_bytes: 0 }),
        volume_capabilities: vec![cap],
        parameters: params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..Default::default()
    }
}

#[tokio::test]
async fn identity_controller_and_node_services_behave_as_a_co_expects() {
    if !is_root() {
        eprintln!("skipped: needs root (loop devices, mounts, namespaces)");
        return;
    }
    // Zone local-1a has 100 GiB of cloud_ssd to sell; every other zone and category the default.
    let options = LocalCloudOptions { extra_args: vec!["--disk-stock".into(), "local-1a/cloud_ssd=100".into()], ..Default::default() };
    let mut t = OneNodeCsi::start_with(options, "10.72.0.0/16", "10.72.1.0/24").await;
    let (ctl, ns, cluster, pods) = (&mut t.ctl, &mut t.ns, &mut t.cluster, t.pods.path());
    let node = &cluster.nodes[0];
    let mut identity = node.driver.identity().await;
    // XFS: it grows online with CAP_SYS_ADMIN alone; ext4 needs CAP_SYS_RESOURCE, which this
    // machine's root lacks (the cross-node test covers ext4).
    let rw = mount_cap("xfs", Mode::SingleNodeWriter);

    // Identity.
    let info = identity.get_plugin_info(csi::GetPluginInfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.name, "csi.berth.io");
    assert!(!info.vendor_version.is_empty());
    let caps = identity.get_plugin_capabilities(csi::GetPluginCapabilitiesRequest {}).await.unwrap().into_inner().capabilities;
    assert_eq!(caps.len(), 3, "controller service, accessibility constraints, online expansion: {caps:?}");
    assert_eq!(identity.probe(csi::ProbeRequest {}).await.unwrap().into_inner().ready, Some(true));
    let ctl_caps = ctl.controller_get_capabilities(csi::ControllerGetCapabilitiesRequest {}).await.unwrap().into_inner().capabilities;
    assert_eq!(ctl_caps.len(), 13, "create/delete, publish/unpublish, expand, snapshots, list snapshots, clone, list volumes and their nodes, get volume, condition, modify, publish read-only, capacity: {ctl_caps:?}");
    let node_caps = ns.node_get_capabilities(csi::NodeGetCapabilitiesRequest {}).await.unwrap().into_inner().capabilities;
    assert_eq!(node_caps.len(), 4, "stage, stats, expand, condition: {node_caps:?}");
    let ni = ns.node_get_info(csi::NodeGetInfoRequest {}).await.unwrap().into_inner();
    assert_eq!(ni.node_id, node.instance_id, "the node ID is the instance ID");
    assert_eq!(ni.max_volumes_per_node, 16, "ecs.g7.large holds 16 data disks");
    assert_eq!(ni.accessible_topology.unwrap().segments.get("topology.berth.io/zone").map(String::as_str), Some("local-1a"));

    // CreateVolume: wrong or missing arguments.
    assert_eq!(code(ctl.create_volume(create("", 1, &[], rw.clone())).await), Code::InvalidArgument, "no name");
    let mut no_caps = create("v-nocaps", 1, &[], rw.clone());
    no_caps.volume_capabilities.clear();
    assert_eq!(code(ctl.create_volume(no_caps).await), Code::InvalidArgument, "no capabilities");
    assert_eq!(code(ctl.create_volume(create("v-typo", 1, &[("categroy", "cloud_ssd")], rw.clone())).await), Code::InvalidArgument, "unknown parameter");
    assert_eq!(code(ctl.create_volume(create("v-pl9", 1, &[("performanceLevel", "PL9")], rw.clone())).await), Code::InvalidArgument);
    assert_eq!(code(ctl.create_volume(create("v-mw", 1, &[], mount_cap("ext4", Mode::MultiNodeMultiWriter))).await), Code::InvalidArgument, "a disk is single-attach");
    assert_eq!(code(ctl.create_volume(create("v-btrfs", 1, &[], mount_cap("btrfs", Mode::SingleNodeWriter))).await), Code::InvalidArgument);
    let mut bad_range = create("v-range", 2, &[], rw.clone());
    bad_range.capacity_range.as_mut().unwrap().limit_bytes = GIB;
    assert_eq!(code(ctl.create_volume(bad_range).await), Code::OutOfRange, "limit below required");
    // Every answer so far is counted by method and code in the driver's /metrics.
    let metrics = node.driver.metrics().await;
    for line in [
        "berth_csi_operations_total{method=\"CreateVolume\",code=\"InvalidArgument\"} 6",
        "berth_csi_operations_total{method=\"CreateVolume\",code=\"OutOfRange\"} 1",
        "berth_csi_operations_total{method=\"Probe\",code=\"Ok\"} 1",
        "berth_csi_operations_total{method=\"NodeGetInfo\",code=\"Ok\"} 1",
        "berth_csi_operation_seconds_count{method=\"CreateVolume\"} 7",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} not in the driver's metrics:\n{metrics}");
    }
    assert_eq!(code(ctl.create_volume(create("v-pl1small", 1, &[("performanceLevel", "PL3"), ("zoneId", "local-1a")], rw.clone())).await.map(|_| ())), Code::Ok, "the size rounds up to the category's minimum");

    // GetCapacity: what csi-sanity asks (no fields at all) and by zone and category. The cloud
    // tells the largest disk each zone can make now; the capacity is their sum over the zones asked.
    let capacity = |params: &[(&str, &str)], zone: Option<&str>| csi::GetCapacityRequest {
        parameters: params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        accessible_topology: zone.map(|z| csi::Topology { segments: HashMap::from([("topology.berth.io/zone".to_string(), z.to_string())]) }),
        ..Default::default()
    };
    let sizes = |r: csi::GetCapacityResponse| (r.available_capacity / GIB, r.maximum_volume_size.map(|b| b / GIB), r.minimum_volume_size.map(|b| b / GIB));
    let any = ctl.get_capacity(csi::GetCapacityRequest::default()).await.unwrap().into_inner();
    assert_eq!(sizes(any), (2 * 65_536, Some(65_536), Some(1)), "cloud_essd PL0 by default, in both zones");
    let ssd = [("category", "cloud_ssd")];
    assert_eq!(sizes(ctl.get_capacity(capacity(&ssd, Some("local-1a"))).await.unwrap().into_inner()), (100, Some(100), Some(20)));
    assert_eq!(sizes(ctl.get_capacity(capacity(&ssd, None)).await.unwrap().into_inner()), (100 + 32_768, Some(32_768), Some(20)), "local-1a's 100 GiB and local-1b's largest disk");
    let pl2 = [("performanceLevel", "PL2")];
    assert_eq!(sizes(ctl.get_capacity(capacity(&pl2, Some("local-1b"))).await.unwrap().into_inner()), (65_536, Some(65_536), Some(461)));
    let with_caps = csi::GetCapacityRequest { volume_capabilities: vec![rw.clone(), block_cap(Mode::SingleNodeWriter)], ..capacity(&ssd, Some("local-1a")) };
    assert_eq!(sizes(ctl.get_capacity(with_caps).await.unwrap().into_inner()).0, 100);
    let ssd_a = [("category", "cloud_ssd"), ("zoneId", "local-1a")];
    let used = ctl.create_volume(create("pvc-ssd", 60, &ssd_a, rw.clone())).await.unwrap().into_inner().volume.unwrap();
    assert_eq!(sizes(ctl.get_capacity(capacity(&ssd_a, None)).await.unwrap().into_inner()), (40, Some(40), Some(20)), "the zoneId parameter, and 60 GiB taken");
    let sold_out = ctl.create_volume(create("pvc-ssd-2", 41, &ssd_a, rw.clone())).await.unwrap_err();
    assert_eq!(sold_out.code(), Code::ResourceExhausted, "{sold_out:?}");
    assert!(sold_out.message().contains("OperationDenied.NoStock"), "{}", sold_out.message());
    ctl.delete_volume(csi::DeleteVolumeRequest { volume_id: used.volume_id.clone(), ..Default::default() }).await.unwrap();
    assert_eq!(sizes(ctl.get_capacity(capacity(&ssd_a, None)).await.unwrap().into_inner()).0, 100, "a deleted disk gives its space back");
    // A zone the cloud does not have, a topology without the zone, NAS and OSS, bad parameters.
    assert_eq!(code(ctl.get_capacity(capacity(&[], Some("local-9z"))).await), Code::InvalidArgument);
    let other_key = csi::GetCapacityRequest { accessible_topology: Some(csi::Topology { segments: HashMap::from([("rack".to_string(), "r1".to_string())]) }), ..Default::default() };
    assert_eq!(code(ctl.get_capacity(other_key).await), Code::InvalidArgument);
    assert_eq!(code(ctl.get_capacity(capacity(&[("type", "nas"), ("fileSystemId", "x")], None)).await), Code::InvalidArgument);
    assert_eq!(code(ctl.get_capacity(capacity(&[("categroy", "cloud_ssd")], None)).await), Code::InvalidArgument);
    let multi = csi::GetCapacityRequest { volume_capabilities: vec![mount_cap("ext4", Mode::MultiNodeMultiWriter)], ..Default::default() };
    assert_eq!(code(ctl.get_capacity(multi).await), Code::InvalidArgument, "a disk is single-attach");

    // NAS and OSS: file systems only, and what they are carved from must be named and exist.
    let shared = mount_cap("", Mode::MultiNodeMultiWriter);
    assert_eq!(code(ctl.create_volume(create("v-nas-nofs", 1, &[("type", "nas")], shared.clone())).await), Code::InvalidArgument, "no fileSystemId");
    assert_eq!(code(ctl.create_volume(create("v-nas-missing", 1, &[("type", "nas"), ("fileSystemId", "nosuchfs")], shared.clone())).await), Code::NotFound);
    assert_eq!(code(ctl.create_volume(create("v-nas-block", 1, &[("type", "nas"), ("fileSystemId", "x")], block_cap(Mode::MultiNodeMultiWriter))).await), Code::InvalidArgument);
    assert_eq!(code(ctl.create_volume(create("v-oss-nobucket", 1, &[("type", "oss")], shared.clone())).await), Code::InvalidArgument);
    assert_eq!(code(ctl.create_volume(create("v-kind", 1, &[("type", "tape")], shared.clone())).await), Code::InvalidArgument);
    assert_eq!(code(ctl.validate_volume_capabilities(csi::ValidateVolumeCapabilitiesRequest { volume_id: "nas:nosuchfs::/x".into(), volume_capabilities: vec![shared.clone()], ..Default::default() }).await), Code::NotFound);

    // CreateVolume is idempotent by name; the same name with another size is ALREADY_EXISTS.
    let v1 = ctl.create_volume(create("pvc-one", 1, &[], rw.clone())).await.unwrap().into_inner().volume.unwrap();
    assert!(v1.volume_id.starts_with("d-"), "{}", v1.volume_id);
    assert_eq!(v1.capacity_bytes, GIB);
    assert_eq!(v1.accessible_topology[0].segments["topology.berth.io/zone"], "local-1a");
    let again = ctl.create_volume(create("pvc-one", 1, &[], rw.clone())).await.unwrap().into_inner().volume.unwrap();
    assert_eq!(again.volume_id, v1.volume_id);
    assert_eq!(code(ctl.create_volume(create("pvc-one", 2, &[], rw.clone())).await), Code::AlreadyExists);

    // ValidateVolumeCapabilities.
    let validate = |id: &str, caps: Vec<csi::VolumeCapability>| csi::ValidateVolumeCapabilitiesRequest { volume_id: id.into(), volume_capabilities: caps, ..Default::default() };
    assert_eq!(code(ctl.validate_volume_capabilities(validate("", vec![rw.clone()])).await), Code::InvalidArgument);
    assert_eq!(code(ctl.validate_volume_capabilities(validate(&v1.volume_id, vec![])).await), Code::InvalidArgument);
    assert_eq!(code(ctl.validate_volume_capabilities(validate("d-nosuchdisk", vec![rw.clone()])).await), Code::NotFound);
    let ok = ctl.validate_volume_capabilities(validate(&v1.volume_id, vec![rw.clone(), block_cap(Mode::SingleNodeWriter)])).await.unwrap().into_inner();
    assert!(ok.confirmed.is_some(), "{}", ok.message);
    let no = ctl.validate_volume_capabilities(validate(&v1.volume_id, vec![mount_cap("", Mode::MultiNodeMultiWriter)])).await.unwrap().into_inner();
    assert!(no.confirmed.is_none() && !no.message.is_empty());

    // ControllerPublish: arguments, absent things, idempotency.
    let publish = |vol: &str, node: &str, cap: Option<csi::VolumeCapability>| csi::ControllerPublishVolumeRequest { volume_id: vol.into(), node_id: node.into(), volume_capability: cap, ..Default::default() };
    let me = node.instance_id.as_str();
    assert_eq!(code(ctl.controller_publish_volume(publish("", me, Some(rw.clone()))).await), Code::InvalidArgument);
    assert_eq!(code(ctl.controller_publish_volume(publish(&v1.volume_id, "", Some(rw.clone()))).await), Code::InvalidArgument);
    assert_eq!(code(ctl.controller_publish_volume(publish(&v1.volume_id, me, None)).await), Code::InvalidArgument);
    assert_eq!(code(ctl.controller_publish_volume(publish("d-nosuchdisk", me, Some(rw.clone()))).await), Code::NotFound);
    assert_eq!(code(ctl.controller_publish_volume(publish(&v1.volume_id, "i-nosuchnode", Some(rw.clone()))).await), Code::NotFound);
    let ctx = ctl.controller_publish_volume(publish(&v1.volume_id, me, Some(rw.clone()))).await.unwrap().into_inner().publish_context;
    assert!(ctx["device"].starts_with("/dev/loop"), "{ctx:?}");
    let ctx2 = ctl.controller_publish_volume(publish(&v1.volume_id, me, Some(rw.clone()))).await.unwrap().into_inner().publish_context;
    assert_eq!(ctx, ctx2, "publishing again answers the same");

    // NodeStage / NodePublish in mount mode.
    let staging = pods.join("staging/pvc-one");
    let target = pods.join("pod-a/volumes/pvc-one");
    let stage = |vol: &str, path: &Path, cap: Option<csi::VolumeCapability>, ctx: &HashMap<String, String>| csi::NodeStageVolumeRequest {
        volume_id: vol.into(),
        staging_target_path: path.display().to_string(),
        volume_capability: cap,
        publish_context: ctx.clone(),
        ..Default::default()
    };
    assert_eq!(code(ns.node_stage_volume(stage("", &staging, Some(rw.clone()), &ctx)).await), Code::InvalidArgument);
    assert_eq!(code(ns.node_stage_volume(stage(&v1.volume_id, Path::new(""), Some(rw.clone()), &ctx)).await), Code::InvalidArgument);
    assert_eq!(code(ns.node_stage_volume(stage(&v1.volume_id, &staging, None, &ctx)).await), Code::InvalidArgument);
    assert_eq!(code(ns.node_stage_volume(stage("d-nosuchdisk", &staging, Some(rw.clone()), &HashMap::new())).await), Code::NotFound, "a disk not attached here");
    ns.node_stage_volume(stage(&v1.volume_id, &staging, Some(rw.clone()), &ctx)).await.unwrap();
    ns.node_stage_volume(stage(&v1.volume_id, &staging, Some(rw.clone()), &ctx)).await.unwrap();
    assert_eq!(mount_count(&staging), 1, "staging twice mounts once");
    let publish_req = |vol: &str, target: &Path, cap: Option<csi::VolumeCapability>, readonly: bool| csi::NodePublishVolumeRequest {
        volume_id: vol.into(),
        staging_target_path: staging.display().to_string(),
        target_path: target.display().to_string(),
        volume_capability: cap,
        readonly,
        publish_context: ctx.clone(),
        ..Default::default()
    };
    assert_eq!(code(ns.node_publish_volume(publish_req("", &target, Some(rw.clone()), false)).await), Code::InvalidArgument);
    assert_eq!(code(ns.node_publish_volume(publish_req(&v1.volume_id, Path::new(""), Some(rw.clone()), false)).await), Code::InvalidArgument);
    assert_eq!(code(ns.node_publish_volume(publish_req(&v1.volume_id, &target, None, false)).await), Code::InvalidArgument);
    ns.node_publish_volume(publish_req(&v1.volume_id, &target, Some(rw.clone()), false)).await.unwrap();
    ns.node_publish_volume(publish_req(&v1.volume_id, &target, Some(rw.clone()), false)).await.unwrap();
    assert_eq!(mount_count(&target), 1, "publishing twice mounts once");
    std::fs::write(target.join("data.txt"), b"hello from pod a\n").expect("the published mount is writable");
    let ro_target = pods.join("pod-b/volumes/pvc-one");
    ns.node_publish_volume(publish_req(&v1.volume_id, &ro_target, Some(rw.clone()), true)).await.unwrap();
    assert_eq!(std::fs::read(ro_target.join("data.txt")).unwrap(), b"hello from pod a\n");
    assert!(std::fs::write(ro_target.join("nope.txt"), b"x").is_err(), "a read-only publish refuses writes");

    // Stats.
    let stats = |vol: &str, path: &Path| csi::NodeGetVolumeStatsRequest { volume_id: vol.into(), volume_path: path.display().to_string(), ..Default::default() };
    assert_eq!(code(ns.node_get_volume_stats(stats("", &target)).await), Code::InvalidArgument);
    assert_eq!(code(ns.node_get_volume_stats(stats(&v1.volume_id, Path::new(""))).await), Code::InvalidArgument);
    assert_eq!(code(ns.node_get_volume_stats(stats(&v1.volume_id, &pods.join("nowhere"))).await), Code::NotFound);
    let usage = ns.node_get_volume_stats(stats(&v1.volume_id, &target)).await.unwrap().into_inner();
    let bytes = usage.usage.iter().find(|u| u.unit == csi::volume_usage::Unit::Bytes as i32).unwrap();
    assert!(bytes.total > GIB / 2 && bytes.total <= GIB && bytes.used > 0, "{bytes:?}");
    assert!(usage.usage.iter().any(|u| u.unit == csi::volume_usage::Unit::Inodes as i32 && u.total > 0));
    assert!(!usage.volume_condition.unwrap().abnormal);

    // Online expansion: the cloud grows the disk, the node grows the file system, the data stays.
    let expand = |gib: i64| csi::ControllerExpandVolumeRequest { volume_id: v1.volume_id.clone(), capacity_range: Some(csi::CapacityRange { required_bytes: gib * GIB, limit_bytes: 0 }), volume_capability: Some(rw.clone()), ..Default::default() };
    assert_eq!(code(ctl.controller_expand_volume(csi::ControllerExpandVolumeRequest { volume_id: v1.volume_id.clone(), ..Default::default() }).await), Code::InvalidArgument);
    assert_eq!(code(ctl.controller_expand_volume(csi::ControllerExpandVolumeRequest { volume_id: "d-nosuchdisk".into(), ..expand(2) }).await), Code::NotFound);
    let grown = ctl.controller_expand_volume(expand(2)).await.unwrap().into_inner();
    assert_eq!(grown.capacity_bytes, 2 * GIB);
    assert!(grown.node_expansion_required);
    let device = ctx["device"].clone();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::fs::read_to_string(format!("/sys/block/{}/size", device.trim_start_matches("/dev/"))).unwrap().trim().parse::<i64>().unwrap() * 512 < 2 * GIB {
        assert!(std::time::Instant::now() < deadline, "the device did not grow");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let node_expand = csi::NodeExpandVolumeRequest { volume_id: v1.volume_id.clone(), volume_path: target.display().to_string(), capacity_range: Some(csi::CapacityRange { required_bytes: 2 * GIB, limit_bytes: 0 }), ..Default::default() };
    assert_eq!(code(ns.node_expand_volume(csi::NodeExpandVolumeRequest { volume_path: String::new(), ..node_expand.clone() }).await), Code::InvalidArgument);
    assert_eq!(ns.node_expand_volume(node_expand).await.unwrap().into_inner().capacity_bytes, 2 * GIB);
    let usage = ns.node_get_volume_stats(stats(&v1.volume_id, &target)).await.unwrap().into_inner();
    assert!(usage.usage[0].total > GIB + GIB / 2, "the file system grew online: {:?}", usage.usage[0]);
    assert_eq!(std::fs::read(target.join("data.txt")).unwrap(), b"hello from pod a\n");
    assert_eq!(ctl.controller_expand_volume(expand(1)).await.unwrap().into_inner().capacity_bytes, 2 * GIB, "shrinking asks nothing");

    // Unpublish, unstage: twice each, and of things that never were.
    let unpublish = |vol: &str, path: &Path| csi::NodeUnpublishVolumeRequest { volume_id: vol.into(), target_path: path.display().to_string() };
    assert_eq!(code(ns.node_unpublish_volume(unpublish("", &target)).await), Code::InvalidArgument);
    assert_eq!(code(ns.node_unpublish_volume(unpublish(&v1.volume_id, Path::new(""))).await), Code::InvalidArgument);
    for t in [&target, &target, &ro_target] {
        ns.node_unpublish_volume(unpublish(&v1.volume_id, t)).await.unwrap();
    }
    assert!(!target.exists(), "the target leaf is removed");
    ns.node_unpublish_volume(unpublish("d-nosuchdisk", &pods.join("never"))).await.unwrap();
    let unstage = |vol: &str, path: &Path| csi::NodeUnstageVolumeRequest { volume_id: vol.into(), staging_target_path: path.display().to_string() };
    assert_eq!(code(ns.node_unstage_volume(unstage("", &staging)).await), Code::InvalidArgument);
    assert_eq!(code(ns.node_unstage_volume(unstage(&v1.volume_id, Path::new(""))).await), Code::InvalidArgument);
    ns.node_unstage_volume(unstage(&v1.volume_id, &staging)).await.unwrap();
    ns.node_unstage_volume(unstage(&v1.volume_id, &staging)).await.unwrap();
    ns.node_unstage_volume(unstage("d-nosuchdisk", &pods.join("never"))).await.unwrap();
    assert_eq!(mount_count(&staging), 0);

    // Block mode: the device bound onto a file.
    let block = block_cap(Mode::SingleNodeWriter);
    let v2 = ctl.create_volume(create("pvc-block", 1, &[], block.clone())).await.unwrap().into_inner().volume.unwrap();
    let ctx_b = ctl.controller_publish_volume(publish(&v2.volume_id, me, Some(block.clone()))).await.unwrap().into_inner().publish_context;
    let staging_b = pods.join("staging/pvc-block");
    ns.node_stage_volume(stage(&v2.volume_id, &staging_b, Some(block.clone()), &ctx_b)).await.unwrap();
    let target_b = pods.join("pod-c/devices/pvc-block");
    let req_b = csi::NodePublishVolumeRequest {
        volume_id: v2.volume_id.clone(),
        staging_target_path: staging_b.display().to_string(),
        target_path: target_b.display().to_string(),
        volume_capability: Some(block.clone()),
        publish_context: ctx_b.clone(),
        ..Default::default()
    };
    ns.node_publish_volume(req_b.clone()).await.unwrap();
    ns.node_publish_volume(req_b).await.unwrap();
    assert_eq!(mount_count(&target_b), 1);
    {
        use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
        let mut f = std::fs::OpenOptions::new().read(true).write(true).open(&target_b).expect("the block target opens");
        f.seek(SeekFrom::Start(4096)).unwrap();
        f.write_all(b"raw block bytes").unwrap();
        f.sync_all().unwrap();
        let mut dev = std::fs::File::open(&ctx_b["device"]).unwrap();
        dev.seek(SeekFrom::Start(4096)).unwrap();
        let mut back = [0u8; 15];
        dev.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"raw block bytes", "writes through the target reach the disk's device");
    }
    let bstats = ns.node_get_volume_stats(stats(&v2.volume_id, &target_b)).await.unwrap().into_inner();
    assert_eq!(bstats.usage[0].total, GIB, "a block volume's stats give its size");
    ns.node_unpublish_volume(unpublish(&v2.volume_id, &target_b)).await.unwrap();
    assert!(!target_b.exists());
    ns.node_unstage_volume(unstage(&v2.volume_id, &staging_b)).await.unwrap();

    // One call per volume at a time: with a slow attach, a second publish of the same disk is ABORTED.
    cluster.lc.set_faults(serde_json::json!({ "attach_delay_ms": 1500 })).await;
    let v3 = ctl.create_volume(create("pvc-slow", 1, &[], rw.clone())).await.unwrap().into_inner().volume.unwrap();
    let (mut c1, mut c2) = (ctl.clone(), ctl.clone());
    let (p1, p2) = tokio::join!(c1.controller_publish_volume(publish(&v3.volume_id, me, Some(rw.clone()))), async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        c2.controller_publish_volume(publish(&v3.volume_id, me, Some(rw.clone()))).await
    });
    assert_eq!((code(p1), code(p2)), (Code::Ok, Code::Aborted));
    cluster.lc.set_faults(serde_json::json!({ "attach_delay_ms": 50 })).await;

    // ControllerUnpublish: arguments, twice, absent; then DeleteVolume: in use, twice, absent.
    let unpub = |vol: &str| csi::ControllerUnpublishVolumeRequest { volume_id: vol.into(), node_id: me.into(), ..Default::default() };
    assert_eq!(code(ctl.controller_unpublish_volume(unpub("")).await), Code::InvalidArgument);
    assert_eq!(code(ctl.delete_volume(csi::DeleteVolumeRequest { volume_id: v1.volume_id.clone(), ..Default::default() }).await), Code::FailedPrecondition, "an attached disk is not deleted");
    for v in [&v1, &v1, &v2, &v3] {
        ctl.controller_unpublish_volume(unpub(&v.volume_id)).await.unwrap();
    }
    ctl.controller_unpublish_volume(unpub("d-nosuchdisk")).await.unwrap();
    assert_eq!(code(ctl.delete_volume(csi::DeleteVolumeRequest::default()).await), Code::InvalidArgument);
    for v in [&v1, &v1, &v2, &v3] {
        ctl.delete_volume(csi::DeleteVolumeRequest { volume_id: v.volume_id.clone(), ..Default::default() }).await.unwrap();
    }
    ctl.delete_volume(csi::DeleteVolumeRequest { volume_id: "d-nosuchdisk".into(), ..Default::default() }).await.unwrap();
    ctl.delete_volume(csi::DeleteVolumeRequest { volume_id: "not-ours".into(), ..Default::default() }).await.unwrap();

    // A name used again after its disk was deleted gets a new disk.
    let v4 = ctl.create_volume(create("pvc-one", 2, &[], rw.clone())).await.unwrap().into_inner().volume.unwrap();
    assert_ne!(v4.volume_id, v1.volume_id);
    assert_eq!(v4.capacity_bytes, 2 * GIB);

    // Probe is ready only while the node's agent answers ...
    cluster.nodes[0].agent.kill9();
    let mut identity = cluster.nodes[0].driver.identity().await;
    assert_eq!(code(identity.probe(csi::ProbeRequest {}).await), Code::FailedPrecondition, "not ready without the agent");
    cluster.nodes[0].agent.restart();
    assert_eq!(identity.probe(csi::ProbeRequest {}).await.unwrap().into_inner().ready, Some(true));
    // ... and the cloud.
    cluster.lc.kill();
    assert_eq!(code(identity.probe(csi::ProbeRequest {}).await), Code::FailedPrecondition, "not ready without the cloud");
}

fn write_synced(path: &Path, data: &[u8]) {
    use std::io::Write as _;
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
    std::fs::File::open(path.parent().unwrap()).unwrap().sync_all().unwrap();
}

async fn wait_ready(ctl: &mut Ctl, snapshot_id: &str) -> csi::Snapshot {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let list = ctl.list_snapshots(csi::ListSnapshotsRequest { snapshot_id: snapshot_id.into(), ..Default::default() }).await.unwrap().into_inner();
        let snap = list.entries[0].snapshot.clone().unwrap();
        if snap.ready_to_use {
            return snap;
        }
        assert!(std::time::Instant::now() < deadline, "snapshot {snapshot_id} never became ready");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn snapshots_restores_and_clones_hold_the_data_of_their_moment() {
    if !is_root() {
        eprintln!("skipped: needs root (loop devices, mounts, namespaces)");
        return;
    }
    let mut t = OneNodeCsi::start("10.75.0.0/16", "10.75.1.0/24").await;
    let (ctl, ns, cluster, pods, me) = (&mut t.ctl, &mut t.ns, &t.cluster, t.pods.path(), t.node_id.clone());
    let rw = mount_cap("ext4", Mode::SingleNodeWriter);
    let at = |p: &str| pods.join(p);

    // Write, snapshot, write more.
    let src = ctl.create_volume(create("pvc-src", 2, &[], rw.clone())).await.unwrap().into_inner().volume.unwrap();
    mount(ctl, ns, &me, &src.volume_id, &rw, &at("st/src"), &at("pod-a/src")).await;
    write_synced(&at("pod-a/src/before.txt"), b"written before the snapshot\n");
    let snap_req = |name: &str, source: &str| csi::CreateSnapshotRequest { name: name.into(), source_volume_id: source.into(), ..Default::default() };
    assert_eq!(code(ctl.create_snapshot(snap_req("", &src.volume_id)).await), Code::InvalidArgument, "no name");
    assert_eq!(code(ctl.create_snapshot(snap_req("snap-x", "")).await), Code::InvalidArgument, "no source");
    assert_eq!(code(ctl.create_snapshot(snap_req("snap-x", "d-nosuchdisk")).await), Code::NotFound);
    let snap = ctl.create_snapshot(snap_req("snap-1", &src.volume_id)).await.unwrap().into_inner().snapshot.unwrap();
    assert!(snap.snapshot_id.starts_with("s-") && snap.source_volume_id == src.volume_id && snap.size_bytes == 2 * GIB, "{snap:?}");
    assert!(snap.creation_time.is_some_and(|t| t.seconds > 1_700_000_000));
    write_synced(&at("pod-a/src/after.txt"), b"written after the snapshot\n");
    write_synced(&at("pod-a/src/before.txt"), b"changed after the snapshot\n");
    let again = ctl.create_snapshot(snap_req("snap-1", &src.volume_id)).await.unwrap().into_inner().snapshot.unwrap();
    assert_eq!(again.snapshot_id, snap.snapshot_id, "CreateSnapshot is idempotent by name");
    let other = ctl.create_volume(create("pvc-other", 1, &[], rw.clone())).await.unwrap().into_inner().volume.unwrap();
    assert_eq!(code(ctl.create_snapshot(snap_req("snap-1", &other.volume_id)).await), Code::AlreadyExists, "the name is taken by a snapshot of another volume");
    let ready = wait_ready(ctl, &snap.snapshot_id).await;
    assert_eq!(ready.snapshot_id, snap.snapshot_id);

    // Listing: by ID, by source, pages, and IDs that name nothing.
    let snap2 = ctl.create_snapshot(snap_req("snap-2", &src.volume_id)).await.unwrap().into_inner().snapshot.unwrap();
    let snap3 = ctl.create_snapshot(snap_req("snap-3", &other.volume_id)).await.unwrap().into_inner().snapshot.unwrap();
    let list = |max: i32, token: &str, source: &str, id: &str| csi::ListSnapshotsRequest { max_entries: max, starting_token: token.into(), source_volume_id: source.into(), snapshot_id: id.into(), ..Default::default() };
    let by_src = ctl.list_snapshots(list(0, "", &src.volume_id, "")).await.unwrap().into_inner();
    let mut ids: Vec<String> = by_src.entries.iter().map(|e| e.snapshot.clone().unwrap().snapshot_id).collect();
    ids.sort();
    let mut want = vec![snap.snapshot_id.clone(), snap2.snapshot_id.clone()];
    want.sort();
    assert_eq!(ids, want, "by source volume");
    let p1 = ctl.list_snapshots(list(2, "", "", "")).await.unwrap().into_inner();
    assert_eq!(p1.entries.len(), 2);
    assert!(!p1.next_token.is_empty());
    let p2 = ctl.list_snapshots(list(2, &p1.next_token, "", "")).await.unwrap().into_inner();
    assert_eq!(p2.entries.len(), 1);
    assert!(p2.next_token.is_empty());
    let all: std::collections::BTreeSet<String> = p1.entries.iter().chain(&p2.entries).map(|e| e.snapshot.clone().unwrap().snapshot_id).collect();
    assert!(all.contains(&snap3.snapshot_id) && all.len() == 3, "{all:?}");
    assert_eq!(code(ctl.list_snapshots(list(2, "not-a-token", "", "")).await), Code::Aborted);
    assert_eq!(code(ctl.list_snapshots(list(-1, "", "", "")).await), Code::InvalidArgument);
    assert!(ctl.list_snapshots(list(0, "", "", "s-nosuchsnapshot")).await.unwrap().into_inner().entries.is_empty());
    assert!(ctl.list_snapshots(list(0, "", "", "not-ours")).await.unwrap().into_inner().entries.is_empty());

    // Restore into a new volume (smaller asked: raised to the source's size) seen by a new pod:
    // exactly the data of the snapshot's moment.
    let mut restore = create("pvc-restored", 1, &[], rw.clone());
    restore.volume_content_source = Some(csi::VolumeContentSource { r#type: Some(csi::volume_content_source::Type::Snapshot(csi::volume_content_source::SnapshotSource { snapshot_id: snap.snapshot_id.clone() })) });
    let restored = ctl.create_volume(restore.clone()).await.unwrap().into_inner().volume.unwrap();
    assert_eq!(restored.capacity_bytes, 2 * GIB, "at least the snapshot's size");
    assert!(restored.content_source.is_some());
    assert_eq!(ctl.create_volume(restore.clone()).await.unwrap().into_inner().volume.unwrap().volume_id, restored.volume_id, "idempotent");
    let mut from_missing = restore.clone();
    from_missing.name = "pvc-from-missing".into();
    from_missing.volume_content_source = Some(csi::VolumeContentSource { r#type: Some(csi::volume_content_source::Type::Snapshot(csi::volume_content_source::SnapshotSource { snapshot_id: "s-nosuchsnapshot".into() })) });
    assert_eq!(code(ctl.create_volume(from_missing).await), Code::NotFound);
    mount(ctl, ns, &me, &restored.volume_id, &rw, &at("st/restored"), &at("pod-b/restored")).await;
    assert_eq!(std::fs::read(at("pod-b/restored/before.txt")).unwrap(), b"written before the snapshot\n");
    assert!(!at("pod-b/restored/after.txt").exists(), "what was written after the snapshot is not in it");
    unmount(ctl, ns, &me, &restored.volume_id, &at("st/restored"), &at("pod-b/restored")).await;

    // Clone: the source's data now, in the source's zone; a requisite zone elsewhere is refused.
    let clone_source = csi::VolumeContentSource { r#type: Some(csi::volume_content_source::Type::Volume(csi::volume_content_source::VolumeSource { volume_id: src.volume_id.clone() })) };
    let mut clone_req = create("pvc-clone", 2, &[], rw.clone());
    clone_req.volume_content_source = Some(clone_source.clone());
    let mut elsewhere = clone_req.clone();
    elsewhere.name = "pvc-clone-elsewhere".into();
    let zone_b = csi::Topology { segments: HashMap::from([("topology.berth.io/zone".to_string(), "local-1b".to_string())]) };
    elsewhere.accessibility_requirements = Some(csi::TopologyRequirement { requisite: vec![zone_b.clone()], preferred: vec![zone_b] });
    assert_eq!(code(ctl.create_volume(elsewhere).await), Code::InvalidArgument, "a clone stays in its source's zone");
    let clone = ctl.create_volume(clone_req.clone()).await.unwrap().into_inner().volume.unwrap();
    assert_eq!(clone.accessible_topology[0].segments["topology.berth.io/zone"], "local-1a");
    assert_eq!(ctl.create_volume(clone_req.clone()).await.unwrap().into_inner().volume.unwrap().volume_id, clone.volume_id, "a repeated clone is idempotent");
    let mut other_source = clone_req.clone();
    other_source.volume_content_source = Some(csi::VolumeContentSource { r#type: Some(csi::volume_content_source::Type::Volume(csi::volume_content_source::VolumeSource { volume_id: other.volume_id.clone() })) });
    assert_eq!(code(ctl.create_volume(other_source).await), Code::AlreadyExists, "the name is a clone of another volume");
    mount(ctl, ns, &me, &clone.volume_id, &rw, &at("st/clone"), &at("pod-c/clone")).await;
    assert_eq!(std::fs::read(at("pod-c/clone/after.txt")).unwrap(), b"written after the snapshot\n");
    assert_eq!(std::fs::read(at("pod-c/clone/before.txt")).unwrap(), b"changed after the snapshot\n");
    unmount(ctl, ns, &me, &clone.volume_id, &at("st/clone"), &at("pod-c/clone")).await;
    let left: Vec<_> = ctl.list_snapshots(list(0, "", &src.volume_id, "")).await.unwrap().into_inner().entries;
    assert_eq!(left.len(), 2, "the snapshot taken for the clone is gone: {left:?}");

    // A snapshot being restored from is not deleted under the restore: DeleteSnapshot is ABORTED
    // and succeeds once the restore is done; the restored volume keeps its data.
    cluster.lc.set_faults(serde_json::json!({ "latency_ms": 400 })).await;
    let mut slow = restore.clone();
    slow.name = "pvc-restored-slow".into();
    let (mut c1, mut c2) = (ctl.clone(), ctl.clone());
    let (made, deleted) = tokio::join!(c1.create_volume(slow), async {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        c2.delete_snapshot(csi::DeleteSnapshotRequest { snapshot_id: snap.snapshot_id.clone(), ..Default::default() }).await
    });
    cluster.lc.set_faults(serde_json::json!({ "latency_ms": 0 })).await;
    let slow = made.unwrap().into_inner().volume.unwrap();
    assert_eq!(code(deleted), Code::Aborted, "the restore in flight holds its snapshot");
    for id in [&snap.snapshot_id, &snap.snapshot_id, &snap2.snapshot_id, &snap3.snapshot_id] {
        ctl.delete_snapshot(csi::DeleteSnapshotRequest { snapshot_id: id.clone(), ..Default::default() }).await.unwrap();
    }
    ctl.delete_snapshot(csi::DeleteSnapshotRequest { snapshot_id: "s-nosuchsnapshot".into(), ..Default::default() }).await.unwrap();
    assert_eq!(code(ctl.delete_snapshot(csi::DeleteSnapshotRequest::default()).await), Code::InvalidArgument);
    assert!(ctl.list_snapshots(list(0, "", "", "")).await.unwrap().into_inner().entries.is_empty());
    mount(ctl, ns, &me, &slow.volume_id, &rw, &at("st/slow"), &at("pod-d/slow")).await;
    assert_eq!(std::fs::read(at("pod-d/slow/before.txt")).unwrap(), b"written before the snapshot\n", "a restored disk outlives its snapshot");
    unmount(ctl, ns, &me, &slow.volume_id, &at("st/slow"), &at("pod-d/slow")).await;

    // ListVolumes (pages, published nodes) and ControllerGetVolume, while the source is published.
    let lv = |max: i32, token: &str| csi::ListVolumesRequest { max_entries: max, starting_token: token.into() };
    let first = ctl.list_volumes(lv(2, "")).await.unwrap().into_inner();
    let rest = ctl.list_volumes(lv(0, &first.next_token)).await.unwrap().into_inner();
    let listed: Vec<csi::list_volumes_response::Entry> = first.entries.into_iter().chain(rest.entries).collect();
    let mut listed_ids: Vec<String> = listed.iter().map(|e| e.volume.clone().unwrap().volume_id).collect();
    listed_ids.sort();
    let mut made: Vec<String> = [&src, &other, &restored, &clone, &slow].iter().map(|v| v.volume_id.clone()).collect();
    made.sort();
    assert_eq!(listed_ids, made, "every disk, once");
    let src_entry = listed.iter().find(|e| e.volume.as_ref().unwrap().volume_id == src.volume_id).unwrap();
    assert_eq!(src_entry.status.as_ref().unwrap().published_node_ids, vec![me.clone()]);
    assert!(listed.iter().find(|e| e.volume.as_ref().unwrap().volume_id == other.volume_id).unwrap().status.as_ref().unwrap().published_node_ids.is_empty());
    assert_eq!(code(ctl.list_volumes(lv(1, "junk")).await), Code::Aborted);
    let got = ctl.controller_get_volume(csi::ControllerGetVolumeRequest { volume_id: src.volume_id.clone() }).await.unwrap().into_inner();
    assert_eq!(got.volume.unwrap().capacity_bytes, 2 * GIB);
    let status = got.status.unwrap();
    assert_eq!(status.published_node_ids, vec![me.clone()]);
    assert!(!status.volume_condition.unwrap().abnormal);
    assert_eq!(code(ctl.controller_get_volume(csi::ControllerGetVolumeRequest { volume_id: "d-nosuchdisk".into() }).await), Code::NotFound);
    unmount(ctl, ns, &me, &src.volume_id, &at("st/src"), &at("pod-a/src")).await;

    // ControllerModifyVolume: the performance level of an ESSD, through the cloud.
    let modify = |id: &str, k: &str, v: &str| csi::ControllerModifyVolumeRequest { volume_id: id.into(), mutable_parameters: HashMap::from([(k.to_string(), v.to_string())]), ..Default::default() };
    assert_eq!(code(ctl.controller_modify_volume(modify(&src.volume_id, "performanceLevel", "PL9")).await), Code::InvalidArgument);
    assert_eq!(code(ctl.controller_modify_volume(modify(&src.volume_id, "category", "cloud_ssd")).await), Code::InvalidArgument);
    assert_eq!(code(ctl.controller_modify_volume(modify("d-nosuchdisk", "performanceLevel", "PL0")).await), Code::NotFound);
    assert_eq!(code(ctl.controller_modify_volume(modify(&src.volume_id, "performanceLevel", "PL1")).await), Code::OutOfRange, "PL1 needs 20 GiB");
    let big = ctl.create_volume(create("pvc-big", 20, &[], rw.clone())).await.unwrap().into_inner().volume.unwrap();
    ctl.controller_modify_volume(modify(&big.volume_id, "performanceLevel", "PL1")).await.unwrap();
    ctl.controller_modify_volume(modify(&big.volume_id, "performanceLevel", "PL1")).await.unwrap();
    let disks = berth_cloud::Cloud::describe_disks(&cluster.cloud, &berth_cloud::api::DiskFilter { ids: vec![big.volume_id.clone()], ..Default::default() }).await.unwrap();
    assert_eq!(disks[0].performance_level, "PL1", "the cloud's disk changed level");

    // NAS: a name taken with another capacity is ALREADY_EXISTS; publishing to a node that does
    // not exist is NOT_FOUND, as for disks.
    let fs = cluster.nas().await;
    let shared = mount_cap("", Mode::MultiNodeMultiWriter);
    let nas = |gib| create("pvc-nas", gib, &[("type", "nas"), ("fileSystemId", fs.as_str())], shared.clone());
    let v = ctl.create_volume(nas(1)).await.unwrap().into_inner().volume.unwrap();
    assert_eq!(ctl.create_volume(nas(1)).await.unwrap().into_inner().volume.unwrap().volume_id, v.volume_id);
    assert_eq!(code(ctl.create_volume(nas(2)).await), Code::AlreadyExists);
    let publish = |node: &str| csi::ControllerPublishVolumeRequest { volume_id: v.volume_id.clone(), node_id: node.into(), volume_capability: Some(shared.clone()), ..Default::default() };
    assert_eq!(code(ctl.controller_publish_volume(publish("i-nosuchnode")).await), Code::NotFound);
    ctl.controller_publish_volume(publish(&me)).await.unwrap();
    ctl.delete_volume(csi::DeleteVolumeRequest { volume_id: v.volume_id.clone(), ..Default::default() }).await.unwrap();
    assert_eq!(code(ctl.controller_publish_volume(publish(&me)).await), Code::NotFound, "a deleted NAS volume");
    let v = ctl.create_volume(nas(2)).await.expect("the name is free again once deleted").into_inner().volume.unwrap();

    // NAS and OSS volumes in ListVolumes (NAS: found by their records on the cloud's file
    // systems) and ControllerGetVolume, with their recorded capacity and condition.
    let deeper = ctl.create_volume(create("pvc-nas-team", 3, &[("type", "nas"), ("fileSystemId", fs.as_str()), ("path", "team/x")], shared.clone())).await.unwrap().into_inner().volume.unwrap();
    let all = ctl.list_volumes(lv(0, "")).await.unwrap().into_inner();
    assert!(all.next_token.is_empty());
    let mut paged = Vec::new();
    let mut token = String::new();
    loop {
        let page = ctl.list_volumes(lv(1, &token)).await.unwrap().into_inner();
        assert!(page.entries.len() <= 1);
        paged.extend(page.entries);
        if page.next_token.is_empty() {
            break;
        }
        token = page.next_token;
    }
    assert_eq!(paged, all.entries, "pages of one give the whole list, in its order");
    let of = |id: &str| all.entries.iter().find(|e| e.volume.as_ref().unwrap().volume_id == id).map(|e| e.volume.clone().unwrap());
    assert_eq!(of(&v.volume_id).map(|x| (x.capacity_bytes, x.volume_context["type"].clone())), Some((2 * GIB, "nas".to_string())));
    assert_eq!(of(&deeper.volume_id).map(|x| x.capacity_bytes), Some(3 * GIB), "a volume under a path parameter");
    assert!(of(&big.volume_id).is_some(), "disks are still listed");
    assert_eq!(all.entries.iter().filter(|e| e.volume.as_ref().unwrap().volume_id.starts_with("nas:")).count(), 2, "no directory inside a volume is taken for one");
    let get = |id: &str| csi::ControllerGetVolumeRequest { volume_id: id.into() };
    let got = ctl.controller_get_volume(get(&deeper.volume_id)).await.unwrap().into_inner();
    assert_eq!(got.volume.unwrap().capacity_bytes, 3 * GIB);
    assert!(!got.status.unwrap().volume_condition.unwrap().abnormal);
    // nas:<fs>:<server>:<path>; the server is empty on the local cloud.
    let dir = deeper.volume_id.splitn(4, ':').nth(3).unwrap().to_string();
    assert!(dir.starts_with("/team/x/"), "{}", deeper.volume_id);
    std::fs::remove_dir_all(cluster.lc.state_dir().join("nas").join(&fs).join(dir.trim_start_matches('/'))).unwrap();
    let condition = ctl.controller_get_volume(get(&deeper.volume_id)).await.unwrap().into_inner().status.unwrap().volume_condition.unwrap();
    assert!(condition.abnormal && condition.message.contains("gone"), "{condition:?}");
    assert_eq!(code(ctl.controller_get_volume(get(&format!("nas:{fs}::/never-made"))).await), Code::NotFound);
    cluster.bucket("objects");
    let oss = ctl.create_volume(create("pvc-oss", 1, &[("type", "oss"), ("bucket", "objects")], shared.clone())).await.unwrap().into_inner().volume.unwrap();
    let got = ctl.controller_get_volume(get(&oss.volume_id)).await.unwrap().into_inner();
    assert_eq!((got.volume.unwrap().capacity_bytes, got.status.unwrap().volume_condition.unwrap().abnormal), (GIB, false));
    assert_eq!(code(ctl.controller_get_volume(get("oss:objects:/never-made")).await), Code::NotFound);
}

/// Writing `path` fails with EROFS (the mount is read-only), and nothing is left behind.
fn assert_read_only(path: &Path) {
    let e = std::fs::write(path, b"x").expect_err("a write in a read-only mount must fail");
    assert_eq!(e.kind(), std::io::ErrorKind::ReadOnlyFilesystem, "{}: {e}", path.display());
    assert!(!path.exists());
}

#[tokio::test]
async fn read_only_publishes_are_enforced_for_disks_and_nas() {
    if !is_root() {
        eprintln!("skipped: needs root (loop devices, mounts, namespaces)");
        return;
    }
    let mut t = OneNodeCsi::start("10.76.0.0/16", "10.76.1.0/24").await;
    let (ctl, ns, cluster, pods, me) = (&mut t.ctl, &mut t.ns, &t.cluster, t.pods.path(), t.node_id.clone());
    let rw = mount_cap("ext4", Mode::SingleNodeWriter);
    let at = |p: &str| pods.join(p);
    let ctl_caps = ctl.controller_get_capabilities(csi::ControllerGetCapabilitiesRequest {}).await.unwrap().into_inner().capabilities;
    let publish_readonly = csi::controller_service_capability::rpc::Type::PublishReadonly as i32;
    assert!(
        ctl_caps.iter().any(|c| matches!(&c.r#type, Some(csi::controller_service_capability::Type::Rpc(r)) if r.r#type == publish_readonly)),
        "PUBLISH_READONLY is advertised: {ctl_caps:?}"
    );
    let publish_req = |volume: &str, cap: &csi::VolumeCapability, readonly: bool| csi::ControllerPublishVolumeRequest {
        volume_id: volume.into(),
        node_id: me.clone(),
        volume_capability: Some(cap.clone()),
        readonly,
        ..Default::default()
    };
    let node_publish = |volume: &str, ctx: &HashMap<String, String>, cap: &csi::VolumeCapability, staging: &Path, target: &Path, readonly: bool| csi::NodePublishVolumeRequest {
        volume_id: volume.into(),
        publish_context: ctx.clone(),
        staging_target_path: staging.display().to_string(),
        target_path: target.display().to_string(),
        volume_capability: Some(cap.clone()),
        readonly,
        ..Default::default()
    };

    // A disk with data on it.
    let v = ctl.create_volume(create("pvc-ro", 1, &[], rw.clone())).await.unwrap().into_inner().volume.unwrap();
    mount(ctl, ns, &me, &v.volume_id, &rw, &at("st/w"), &at("w")).await;
    write_synced(&at("w/data.txt"), b"data\n");
    unmount(ctl, ns, &me, &v.volume_id, &at("st/w"), &at("w")).await;

    // ControllerPublish readonly: every target on the node is read-only, whatever NodePublish says.
    let ctx = ctl.controller_publish_volume(publish_req(&v.volume_id, &rw, true)).await.unwrap().into_inner().publish_context;
    assert_eq!(ctx.get("readonly").map(String::as_str), Some("true"), "{ctx:?}");
    let stage = csi::NodeStageVolumeRequest { volume_id: v.volume_id.clone(), publish_context: ctx.clone(), staging_target_path: at("st/r").display().to_string(), volume_capability: Some(rw.clone()), ..Default::default() };
    ns.node_stage_volume(stage).await.unwrap();
    ns.node_publish_volume(node_publish(&v.volume_id, &ctx, &rw, &at("st/r"), &at("r1"), false)).await.unwrap();
    assert_eq!(std::fs::read(at("r1/data.txt")).unwrap(), b"data\n", "readable");
    assert_read_only(&at("r1/new.txt"));
    ns.node_unpublish_volume(csi::NodeUnpublishVolumeRequest { volume_id: v.volume_id.clone(), target_path: at("r1").display().to_string() }).await.unwrap();
    ns.node_unstage_volume(csi::NodeUnstageVolumeRequest { volume_id: v.volume_id.clone(), staging_target_path: at("st/r").display().to_string() }).await.unwrap();
    ctl.controller_unpublish_volume(csi::ControllerUnpublishVolumeRequest { volume_id: v.volume_id.clone(), node_id: me.clone(), ..Default::default() }).await.unwrap();

    // Published writable: NodePublish readonly makes that target read-only, and only that one.
    let ctx = ctl.controller_publish_volume(publish_req(&v.volume_id, &rw, false)).await.unwrap().into_inner().publish_context;
    assert!(!ctx.contains_key("readonly"), "{ctx:?}");
    let stage = csi::NodeStageVolumeRequest { volume_id: v.volume_id.clone(), publish_context: ctx.clone(), staging_target_path: at("st/m").display().to_string(), volume_capability: Some(rw.clone()), ..Default::default() };
    ns.node_stage_volume(stage).await.unwrap();
    ns.node_publish_volume(node_publish(&v.volume_id, &ctx, &rw, &at("st/m"), &at("m-ro"), true)).await.unwrap();
    ns.node_publish_volume(node_publish(&v.volume_id, &ctx, &rw, &at("st/m"), &at("m-rw"), false)).await.unwrap();
    assert_read_only(&at("m-ro/new.txt"));
    write_synced(&at("m-rw/new.txt"), b"written\n");
    assert_eq!(std::fs::read(at("m-ro/new.txt")).unwrap(), b"written\n", "the read-only target sees the same file system");
    for t in ["m-ro", "m-rw"] {
        ns.node_unpublish_volume(csi::NodeUnpublishVolumeRequest { volume_id: v.volume_id.clone(), target_path: at(t).display().to_string() }).await.unwrap();
    }
    ns.node_unstage_volume(csi::NodeUnstageVolumeRequest { volume_id: v.volume_id.clone(), staging_target_path: at("st/m").display().to_string() }).await.unwrap();
    ctl.controller_unpublish_volume(csi::ControllerUnpublishVolumeRequest { volume_id: v.volume_id.clone(), node_id: me.clone(), ..Default::default() }).await.unwrap();
    ctl.delete_volume(csi::DeleteVolumeRequest { volume_id: v.volume_id.clone(), ..Default::default() }).await.unwrap();

    // NAS published read-only.
    let fs = cluster.nas().await;
    let shared = mount_cap("", Mode::MultiNodeMultiWriter);
    let nas = ctl.create_volume(create("pvc-nas-ro", 1, &[("type", "nas"), ("fileSystemId", fs.as_str())], shared.clone())).await.unwrap().into_inner().volume.unwrap();
    let ctx = ctl.controller_publish_volume(publish_req(&nas.volume_id, &shared, true)).await.unwrap().into_inner().publish_context;
    assert_eq!(ctx.get("readonly").map(String::as_str), Some("true"), "{ctx:?}");
    let stage = csi::NodeStageVolumeRequest { volume_id: nas.volume_id.clone(), publish_context: ctx.clone(), staging_target_path: at("st/nas").display().to_string(), volume_capability: Some(shared.clone()), ..Default::default() };
    ns.node_stage_volume(stage).await.unwrap();
    ns.node_publish_volume(node_publish(&nas.volume_id, &ctx, &shared, &at("st/nas"), &at("nas-ro"), false)).await.unwrap();
    assert_read_only(&at("nas-ro/new.txt"));
    ns.node_unpublish_volume(csi::NodeUnpublishVolumeRequest { volume_id: nas.volume_id.clone(), target_path: at("nas-ro").display().to_string() }).await.unwrap();
    ns.node_unstage_volume(csi::NodeUnstageVolumeRequest { volume_id: nas.volume_id.clone(), staging_target_path: at("st/nas").display().to_string() }).await.unwrap();
    ctl.delete_volume(csi::DeleteVolumeRequest { volume_id: nas.volume_id.clone(), ..Default::default() }).await.unwrap();
}

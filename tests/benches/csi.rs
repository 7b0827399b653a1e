//! Volume latencies through `berth-csi` against the local cloud (its default 200 ms attach delay
//! stands in for the real service's attach time): from CreateVolume to a published, writable disk
//! mount, step by step; and NodePublishVolume of NAS and OSS volumes, for the first target on a
//! node (OSS: the s3fs mount) and for further targets (bind mounts).
//!
//! `cargo build --release --workspace --bins && cargo bench -p berth-tests --bench csi`

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use berth_proto::csi::v1 as csi;
use berth_tests::csi::{CsiCluster, CsiNode, MountGuard, mount_cap};
use csi::volume_capability::access_mode::Mode;

const GIB: i64 = 1 << 30;
const DISK_ROUNDS: usize = 8;
const PUBLISH_ROUNDS: usize = 30;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// "median X ms, min Y, max Z" of a sample.
fn summary(mut v: Vec<Duration>) -> String {
    v.sort();
    format!("median {:.1} ms, min {:.1}, max {:.1} (n={})", ms(v[v.len() / 2]), ms(v[0]), ms(v[v.len() - 1]), v.len())
}

async fn publish(node: &CsiNode, id: &str, cap: &csi::VolumeCapability, ctx: &HashMap<String, String>, staging: &Path, target: &Path) -> Duration {
    let mut ns = node.driver.node().await;
    let started = Instant::now();
    ns.node_publish_volume(csi::NodePublishVolumeRequest {
        volume_id: id.into(),
        publish_context: ctx.clone(),
        staging_target_path: staging.display().to_string(),
        target_path: target.display().to_string(),
        volume_capability: Some(cap.clone()),
        ..Default::default()
    })
    .await
    .expect("NodePublishVolume");
    started.elapsed()
}

async fn unpublish(node: &CsiNode, id: &str, target: &Path) {
    node.driver.node().await.node_unpublish_volume(csi::NodeUnpublishVolumeRequest { volume_id: id.into(), target_path: target.display().to_string() }).await.expect("NodeUnpublishVolume");
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let cluster = CsiCluster::start(1, "10.98.0.0/16", "10.98.1.0/24").await;
    let pods = tempfile::Builder::new().prefix("berth-bench-pods-").tempdir().unwrap();
    let _mounts = MountGuard(pods.path().to_path_buf());
    let node = &cluster.nodes[0];
    let mut ctl = node.driver.controller().await;
    let mut ns = node.driver.node().await;

    // A disk, from nothing to a file written in the pod's mount.
    let cap = mount_cap("ext4", Mode::SingleNodeWriter);
    let (mut totals, mut creates, mut attaches, mut stages, mut publishes) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..DISK_ROUNDS {
        let (staging, target) = (pods.path().join(format!("disk{i}/staging")), pods.path().join(format!("disk{i}/pod")));
        let t0 = Instant::now();
        let vol = ctl
            .create_volume(csi::CreateVolumeRequest {
                name: format!("bench-disk-{i}"),
                capacity_range: Some(csi::CapacityRange { required_bytes: GIB, limit_bytes: 0 }),
                volume_capabilities: vec![cap.clone()],
                ..Default::default()
            })
            .await
            .expect("CreateVolume")
            .into_inner()
            .volume
            .unwrap();
        let t1 = Instant::now();
        let ctx = ctl
            .controller_publish_volume(csi::ControllerPublishVolumeRequest { volume_id: vol.volume_id.clone(), node_id: node.instance_id.clone(), volume_capability: Some(cap.clone()), ..Default::default() })
            .await
            .expect("ControllerPublishVolume")
            .into_inner()
            .publish_context;
        let t2 = Instant::now();
        ns.node_stage_volume(csi::NodeStageVolumeRequest { volume_id: vol.volume_id.clone(), publish_context: ctx.clone(), staging_target_path: staging.display().to_string(), volume_capability: Some(cap.clone()), ..Default::default() })
            .await
            .expect("NodeStageVolume");
        let t3 = Instant::now();
        publish(node, &vol.volume_id, &cap, &ctx, &staging, &target).await;
        std::fs::write(target.join("first-write"), b"ok").expect("the mount is writable");
        let t4 = Instant::now();
        totals.push(t4 - t0);
        creates.push(t1 - t0);
        attaches.push(t2 - t1);
        stages.push(t3 - t2);
        publishes.push(t4 - t3);
        // Undo, untimed.
        unpublish(node, &vol.volume_id, &target).await;
        ns.node_unstage_volume(csi::NodeUnstageVolumeRequest { volume_id: vol.volume_id.clone(), staging_target_path: staging.display().to_string() }).await.unwrap();
        ctl.controller_unpublish_volume(csi::ControllerUnpublishVolumeRequest { volume_id: vol.volume_id.clone(), node_id: node.instance_id.clone(), ..Default::default() }).await.unwrap();
        ctl.delete_volume(csi::DeleteVolumeRequest { volume_id: vol.volume_id.clone(), ..Default::default() }).await.unwrap();
    }
    println!("disk (1 GiB cloud_essd PL0, ext4), CreateVolume to a written file in the published mount: {}", summary(totals));
    println!("  CreateVolume {}", summary(creates));
    println!("  ControllerPublishVolume (agent ledger, AttachDisk, wait In_use, device found and verified) {}", summary(attaches));
    println!("  NodeStageVolume (blkid, mkfs.ext4, mount, resize2fs) {}", summary(stages));
    println!("  NodePublishVolume + first write {}", summary(publishes));

    // NAS and OSS: NodePublishVolume latency.
    let shared = mount_cap("", Mode::MultiNodeMultiWriter);
    let fs = cluster.nas().await;
    cluster.bucket("bench");
    for (kind, params) in [("nas", vec![("type", "nas"), ("fileSystemId", fs.as_str())]), ("oss", vec![("type", "oss"), ("bucket", "bench")])] {
        let vol = ctl
            .create_volume(csi::CreateVolumeRequest {
                name: format!("bench-{kind}"),
                volume_capabilities: vec![shared.clone()],
                parameters: params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                ..Default::default()
            })
            .await
            .expect("CreateVolume")
            .into_inner()
            .volume
            .unwrap();
        let staging = pods.path().join(format!("{kind}/staging"));
        let (mut firsts, mut further) = (Vec::new(), Vec::new());
        for round in 0..PUBLISH_ROUNDS {
            let keep = pods.path().join(format!("{kind}/keep"));
            let target = pods.path().join(format!("{kind}/pod{round}"));
            // First target on the node (for OSS: the FUSE mount is made), then one more beside it.
            if round < 5 {
                firsts.push(publish(node, &vol.volume_id, &shared, &HashMap::new(), &staging, &keep).await);
            } else if round == 5 {
                publish(node, &vol.volume_id, &shared, &HashMap::new(), &staging, &keep).await;
            }
            if round >= 5 {
                further.push(publish(node, &vol.volume_id, &shared, &HashMap::new(), &staging, &target).await);
                std::fs::write(target.join(format!("w{round}")), b"x").expect("writable");
                unpublish(node, &vol.volume_id, &target).await;
            }
            if round < 5 {
                unpublish(node, &vol.volume_id, &keep).await;
            }
        }
        unpublish(node, &vol.volume_id, &pods.path().join(format!("{kind}/keep"))).await;
        let what = if kind == "oss" { "first target on the node (starts s3fs and waits for its mount)" } else { "first target on the node (bind of the export)" };
        println!("{kind} NodePublishVolume, {what}: {}", summary(firsts));
        println!("{kind} NodePublishVolume, a further target (bind mount): {}", summary(further));
        ctl.delete_volume(csi::DeleteVolumeRequest { volume_id: vol.volume_id.clone(), ..Default::default() }).await.unwrap();
    }
}

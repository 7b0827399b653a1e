//! Volumes that follow pods across two nodes of the local cloud, each with its agent and driver:
//! a disk written on one node is read on the other; a restart of the agent and the driver adopts
//! what is attached and mounted; NAS is shared between nodes; OSS writes land in the bucket, a
//! killed FUSE process is found and remounted, and the FUSE mount outlives the driver.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_proto::agent::v1 as pb;
use berth_proto::csi::v1 as csi;
use berth_tests::csi::{CsiCluster, CsiNode, MountGuard, mount_cap, mount_count};
use berth_tests::is_root;
use csi::volume_capability::access_mode::Mode;

const GIB: i64 = 1 << 30;

/// What a CO does to run a pod with a volume on a node: publish (controller), stage, publish (node).
async fn attach_and_mount(ctl_node: &CsiNode, node: &CsiNode, volume_id: &str, cap: &csi::VolumeCapability, staging: &Path, target: &Path) -> HashMap<String, String> {
    let ctx = ctl_node
        .driver
        .controller()
        .await
        .controller_publish_volume(csi::ControllerPublishVolumeRequest { volume_id: volume_id.into(), node_id: node.instance_id.clone(), volume_capability: Some(cap.clone()), ..Default::default() })
        .await
        .expect("ControllerPublishVolume")
        .into_inner()
        .publish_context;
    let mut ns = node.driver.node().await;
    ns.node_stage_volume(csi::NodeStageVolumeRequest {
        volume_id: volume_id.into(),
        publish_context: ctx.clone(),
        staging_target_path: staging.display().to_string(),
        volume_capability: Some(cap.clone()),
        ..Default::default()
    })
    .await
    .expect("NodeStageVolume");
    publish(node, volume_id, cap, &ctx, staging, target).await;
    ctx
}

async fn publish(node: &CsiNode, volume_id: &str, cap: &csi::VolumeCapability, ctx: &HashMap<String, String>, staging: &Path, target: &Path) {
    node.driver
        .node()
        .await
        .node_publish_volume(csi::NodePublishVolumeRequest {
            volume_id: volume_id.into(),
            publish_context: ctx.clone(),
            staging_target_path: staging.display().to_string(),
            target_path: target.display().to_string(),
            volume_capability: Some(cap.clone()),
            ..Default::default()
        })
        .await
        .expect("NodePublishVolume");
}

async fn unmount_and_detach(ctl_node: &CsiNode, node: &CsiNode, volume_id: &str, staging: &Path, target: &Path) {
    let mut ns = node.driver.node().await;
    ns.node_unpublish_volume(csi::NodeUnpublishVolumeRequest { volume_id: volume_id.into(), target_path: target.display().to_string() }).await.expect("NodeUnpublishVolume");
    ns.node_unstage_volume(csi::NodeUnstageVolumeRequest { volume_id: volume_id.into(), staging_target_path: staging.display().to_string() }).await.expect("NodeUnstageVolume");
    ctl_node
        .driver
        .controller()
        .await
        .controller_unpublish_volume(csi::ControllerUnpublishVolumeRequest { volume_id: volume_id.into(), node_id: node.instance_id.clone(), ..Default::default() })
        .await
        .expect("ControllerUnpublishVolume");
}

async fn create(node: &CsiNode, name: &str, params: &[(&str, &str)], cap: &csi::VolumeCapability) -> csi::Volume {
    node.driver
        .controller()
        .await
        .create_volume(csi::CreateVolumeRequest {
            name: name.into(),
            capacity_range: Some(csi::CapacityRange { required_bytes: GIB, limit_bytes: 0 }),
            volume_capabilities: vec![cap.clone()],
            parameters: params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Default::default()
        })
        .await
        .expect("CreateVolume")
        .into_inner()
        .volume
        .unwrap()
}

fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "{what} did not happen within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn a_disk_follows_its_pod_to_another_node_and_survives_restarts() {
    if !is_root() {
        eprintln!("skipped: needs root (loop devices, mounts, namespaces)");
        return;
    }
    let mut cluster = CsiCluster::start(2, "10.73.0.0/16", "10.73.1.0/24").await;
    let pods = tempfile::Builder::new().prefix("berth-pods-").tempdir().unwrap();
    let _mounts = MountGuard(pods.path().to_path_buf());
    let cap = mount_cap("ext4", Mode::SingleNodeWriter);
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);

    // Node A: created, attached, formatted, written, unmounted, detached.
    let vol = create(a, "pvc-data", &[("category", "cloud_essd"), ("performanceLevel", "PL0")], &cap).await;
    let (staging_a, target_a) = (pods.path().join("a/staging"), pods.path().join("a/pod/data"));
    let ctx = attach_and_mount(a, a, &vol.volume_id, &cap, &staging_a, &target_a).await;
    assert_eq!(cluster.lc.client().describe_disks_in_use(&vol.volume_id).await.as_deref(), Some(a.instance_id.as_str()));
    let mounted = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = mounted.lines().find(|l| l.contains(staging_a.to_str().unwrap())).expect("staged");
    assert!(line.contains(" - ext4 ") && line.contains(&ctx["device"]), "{line}");
    std::fs::write(target_a.join("journal.txt"), b"written on node A\n").unwrap();
    let uuid = std::process::Command::new("blkid").args(["-s", "UUID", "-o", "value", &ctx["device"]]).output().unwrap().stdout;
    unmount_and_detach(a, a, &vol.volume_id, &staging_a, &target_a).await;
    assert_eq!(mount_count(&staging_a) + mount_count(&target_a), 0);

    // Node B (its controller call made from node A's driver, through B's agent): same data, not reformatted.
    let (staging_b, target_b) = (pods.path().join("b/staging"), pods.path().join("b/pod/data"));
    let ctx_b = attach_and_mount(a, b, &vol.volume_id, &cap, &staging_b, &target_b).await;
    assert_eq!(std::fs::read(target_b.join("journal.txt")).unwrap(), b"written on node A\n", "the data followed the pod");
    let uuid_b = std::process::Command::new("blkid").args(["-s", "UUID", "-o", "value", &ctx_b["device"]]).output().unwrap().stdout;
    assert_eq!(uuid, uuid_b, "the file system was not made again");
    // Attached to B, it cannot be published to A.
    let elsewhere = a
        .driver
        .controller()
        .await
        .controller_publish_volume(csi::ControllerPublishVolumeRequest { volume_id: vol.volume_id.clone(), node_id: a.instance_id.clone(), volume_capability: Some(cap.clone()), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(elsewhere.code(), tonic::Code::FailedPrecondition, "{elsewhere:?}");
    // Mounted on B, its agent does not detach it.
    let busy = a
        .driver
        .controller()
        .await
        .controller_unpublish_volume(csi::ControllerUnpublishVolumeRequest { volume_id: vol.volume_id.clone(), node_id: b.instance_id.clone(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(busy.code(), tonic::Code::FailedPrecondition, "{busy:?}");
    assert!(busy.message().contains("mounted"), "{}", busy.message());
    let held_b = b.agent.client().await.list_attachments(pb::ListAttachmentsRequest {}).await.unwrap().into_inner().attachments;
    assert_eq!(held_b.iter().map(|h| h.disk_id.as_str()).collect::<Vec<_>>(), vec![vol.volume_id.as_str()]);
    assert!(a.agent.client().await.list_attachments(pb::ListAttachmentsRequest {}).await.unwrap().into_inner().attachments.is_empty());

    // Restart B's agent and driver (SIGKILL both): the attachment and the mounts are adopted.
    let b = &mut cluster.nodes[1];
    b.agent.restart();
    b.driver.restart();
    let b = &cluster.nodes[1];
    let held = b.agent.client().await.list_attachments(pb::ListAttachmentsRequest {}).await.unwrap().into_inner().attachments;
    assert_eq!(held.len(), 1, "no attachment lost");
    assert_eq!((held[0].device_path.as_str(), held[0].state), (ctx_b["device"].as_str(), pb::AttachState::Attached as i32));
    let debug: serde_json::Value = reqwest::get(format!("http://{}/debug/disks", b.agent.metrics_addr)).await.unwrap().json().await.unwrap();
    assert_eq!(debug["slots"]["used"], 1, "{debug}");
    // The CO repeats its calls after a restart: each answers success and mounts nothing twice.
    let ctx_again = attach_and_mount(&cluster.nodes[0], b, &vol.volume_id, &cap, &staging_b, &target_b).await;
    assert_eq!(ctx_again, ctx_b);
    assert_eq!((mount_count(&staging_b), mount_count(&target_b)), (1, 1), "no duplicate mount");
    std::fs::write(target_b.join("journal.txt"), b"written on node B after restarts\n").unwrap();
    // A vanished staging mount is staged again by the next publish.
    let target_b2 = pods.path().join("b/pod2/data");
    std::process::Command::new("umount").arg(&target_b).status().unwrap();
    std::process::Command::new("umount").arg(&staging_b).status().unwrap();
    publish(b, &vol.volume_id, &cap, &ctx_b, &staging_b, &target_b2).await;
    assert_eq!(std::fs::read(target_b2.join("journal.txt")).unwrap(), b"written on node B after restarts\n");
    let a = &cluster.nodes[0];
    let mut ns = b.driver.node().await;
    for t in [&target_b, &target_b2] {
        ns.node_unpublish_volume(csi::NodeUnpublishVolumeRequest { volume_id: vol.volume_id.clone(), target_path: t.display().to_string() }).await.unwrap();
    }
    unmount_and_detach(a, b, &vol.volume_id, &staging_b, &target_b).await;
    a.driver.controller().await.delete_volume(csi::DeleteVolumeRequest { volume_id: vol.volume_id.clone(), ..Default::default() }).await.unwrap();
}

#[tokio::test]
async fn nas_is_shared_between_nodes_and_oss_lands_in_its_bucket() {
    if !is_root() {
        eprintln!("skipped: needs root (mounts, FUSE, namespaces)");
        return;
    }
    let mut cluster = CsiCluster::start(2, "10.74.0.0/16", "10.74.1.0/24").await;
    let pods = tempfile::Builder::new().prefix("berth-pods-").tempdir().unwrap();
    let _mounts = MountGuard(pods.path().to_path_buf());
    let shared = mount_cap("", Mode::MultiNodeMultiWriter);
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);

    // NAS: a sub-directory of the file system, published on both nodes.
    let fs = cluster.nas().await;
    let nas = create(a, "pvc-shared", &[("type", "nas"), ("fileSystemId", &fs), ("path", "/k8s")], &shared).await;
    assert!(nas.volume_id.starts_with(&format!("nas:{fs}::/k8s/pvc-shared-")), "{}", nas.volume_id);
    let again = create(a, "pvc-shared", &[("type", "nas"), ("fileSystemId", &fs), ("path", "/k8s")], &shared).await;
    assert_eq!(again.volume_id, nas.volume_id);
    let (ta, tb) = (pods.path().join("a/pod/shared"), pods.path().join("b/pod/shared"));
    attach_and_mount(a, a, &nas.volume_id, &shared, &pods.path().join("a/staging-nas"), &ta).await;
    attach_and_mount(a, b, &nas.volume_id, &shared, &pods.path().join("b/staging-nas"), &tb).await;
    std::fs::write(ta.join("from-a.txt"), b"pod on node A\n").unwrap();
    std::fs::write(tb.join("from-b.txt"), b"pod on node B\n").unwrap();
    assert_eq!(std::fs::read(tb.join("from-a.txt")).unwrap(), b"pod on node A\n", "B sees A's write");
    assert_eq!(std::fs::read(ta.join("from-b.txt")).unwrap(), b"pod on node B\n", "A sees B's write");
    let export = cluster.lc.state_dir().join("nas").join(&fs);
    let sub = nas.volume_id.rsplit(':').next().unwrap().trim_start_matches('/');
    assert!(export.join(sub).join("from-a.txt").exists(), "the files are in the file system's sub-directory");
    unmount_and_detach(a, a, &nas.volume_id, &pods.path().join("a/staging-nas"), &ta).await;
    unmount_and_detach(a, b, &nas.volume_id, &pods.path().join("b/staging-nas"), &tb).await;
    a.driver.controller().await.delete_volume(csi::DeleteVolumeRequest { volume_id: nas.volume_id.clone(), ..Default::default() }).await.unwrap();
    assert!(!export.join(sub).exists(), "DeleteVolume removed the sub-directory, knowing only the volume ID");
    a.driver.controller().await.delete_volume(csi::DeleteVolumeRequest { volume_id: nas.volume_id.clone(), ..Default::default() }).await.unwrap();

    // OSS: a prefix of a bucket; a write through the mount is an object in the bucket.
    let bucket = cluster.bucket("pods");
    let oss = create(a, "pvc-objects", &[("type", "oss"), ("bucket", "pods")], &shared).await;
    let prefix = oss.volume_id.rsplit(':').next().unwrap().trim_start_matches('/').to_string();
    let (sa, oa) = (pods.path().join("a/staging-oss"), pods.path().join("a/pod/objects"));
    attach_and_mount(a, a, &oss.volume_id, &shared, &sa, &oa).await;
    std::fs::write(oa.join("report.txt"), b"written through s3fs on A\n").unwrap();
    eventually("the object in the bucket", Duration::from_secs(10), || std::fs::read(bucket.join(&prefix).join("report.txt")).is_ok_and(|b| b == b"written through s3fs on A\n"));
    // Read back through the S3 endpoint by node B's own s3fs process.
    let (sb, ob) = (pods.path().join("b/staging-oss"), pods.path().join("b/pod/objects"));
    attach_and_mount(a, b, &oss.volume_id, &shared, &sb, &ob).await;
    assert_eq!(std::fs::read(ob.join("report.txt")).unwrap(), b"written through s3fs on A\n");
    // A second pod on node A shares A's one FUSE mount.
    let oa2 = pods.path().join("a/pod2/objects");
    publish(a, &oss.volume_id, &shared, &HashMap::new(), &sa, &oa2).await;
    let fuse_a = s3fs_processes(&a.driver.state_dir());
    assert_eq!(fuse_a.len(), 1, "one FUSE process per volume per node: {fuse_a:?}");
    let passwd = std::fs::metadata(a.driver.state_dir().join("oss/passwd-s3fs")).unwrap();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&passwd.permissions()) & 0o777, 0o600);
    let secret = &cluster.lc.credentials.access_key_secret;
    for pid in &fuse_a {
        let argv = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        assert!(!String::from_utf8_lossy(&argv).contains(secret.as_str()), "the secret is not in s3fs's argv");
    }
    assert!(!a.driver.log().contains(secret.as_str()), "nor in the driver's log");

    // The driver dies (SIGKILL): the FUSE process and the pods' mounts live on; the new driver adopts them.
    cluster.nodes[0].driver.restart();
    let a = &cluster.nodes[0];
    assert!(Path::new(&format!("/proc/{}", fuse_a[0])).exists(), "s3fs outlived the driver");
    assert_eq!(std::fs::read(oa.join("report.txt")).unwrap(), b"written through s3fs on A\n");
    publish(a, &oss.volume_id, &shared, &HashMap::new(), &sa, &oa).await;
    assert_eq!(mount_count(&oa), 1, "publishing again after the restart mounts nothing twice");
    assert_eq!(s3fs_processes(&a.driver.state_dir()), fuse_a, "and starts no second s3fs");

    // The FUSE process is killed: the driver finds the dead mount with statfs and remounts it,
    // and the pods' mounts work again.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(fuse_a[0] as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    eventually("a new s3fs for the volume", Duration::from_secs(15), || {
        let now = s3fs_processes(&a.driver.state_dir());
        now.len() == 1 && now != fuse_a && mount_count(&oa2) == 1 && std::fs::write(oa2.join("after.txt"), b"after the remount\n").is_ok()
    });
    assert!(a.driver.log().contains("remount"), "the driver says it remounted:\n{}", a.driver.log());
    let metrics = a.driver.metrics().await;
    for line in ["berth_csi_oss_remounts_total 1", "berth_csi_oss_mounts{health=\"alive\"} 1", "berth_csi_oss_mounts{health=\"dead\"} 0"] {
        assert!(metrics.lines().any(|l| l == line), "{line} not in the driver's metrics:\n{metrics}");
    }
    eventually("the write after the remount in the bucket", Duration::from_secs(10), || bucket.join(&prefix).join("after.txt").exists());
    assert_eq!(std::fs::read(oa.join("report.txt")).unwrap(), b"written through s3fs on A\n", "the first pod's mount is bound again too");

    // Unpublish everywhere: the FUSE mounts go with the last target; the prefix goes with DeleteVolume.
    let mut ns = a.driver.node().await;
    ns.node_unpublish_volume(csi::NodeUnpublishVolumeRequest { volume_id: oss.volume_id.clone(), target_path: oa2.display().to_string() }).await.unwrap();
    unmount_and_detach(a, a, &oss.volume_id, &sa, &oa).await;
    unmount_and_detach(a, &cluster.nodes[1], &oss.volume_id, &sb, &ob).await;
    // (s3fs exits a moment after its mount is gone.)
    eventually("every s3fs to exit", Duration::from_secs(10), || s3fs_processes(&a.driver.state_dir()).is_empty() && s3fs_processes(&cluster.nodes[1].driver.state_dir()).is_empty());
    a.driver.controller().await.delete_volume(csi::DeleteVolumeRequest { volume_id: oss.volume_id.clone(), ..Default::default() }).await.unwrap();
    // (The local cloud's bucket is a directory tree; an emptied prefix may stay as an empty directory.)
    let left: Vec<_> = std::fs::read_dir(bucket.join(&prefix)).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "DeleteVolume removed every object under the prefix: {left:?}");
}

/// PIDs of the s3fs processes whose mount point is under `dir`.
fn s3fs_processes(dir: &Path) -> Vec<u32> {
    let needle = dir.display().to_string();
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let argv = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let argv = String::from_utf8_lossy(&argv);
            argv.starts_with("s3fs\0") && argv.split('\0').any(|a| PathBuf::from(a).starts_with(&needle) && a.contains("/oss/mounts/"))
        })
        .collect();
    pids.sort();
    pids
}

trait DiskHolder {
    async fn describe_disks_in_use(&self, disk_id: &str) -> Option<String>;
}

impl DiskHolder for berth_cloud::HttpCloud {
    /// The instance a disk is in use by.
    async fn describe_disks_in_use(&self, disk_id: &str) -> Option<String> {
        use berth_cloud::Cloud as _;
        let d = self.describe_disks(&berth_cloud::api::DiskFilter { ids: vec![disk_id.into()], ..Default::default() }).await.ok()?;
        d.into_iter().find(|d| d.status == berth_cloud::model::DiskStatus::InUse).and_then(|d| d.instance_id)
    }
}

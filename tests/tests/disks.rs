//! Disks of the local cloud through the real API: attach makes a loop device appear behind the
//! disk's by-serial link, detach removes it, and the instance type's disk quota is enforced.

use std::path::PathBuf;
use std::time::Duration;

use berth_cloud::api::CreateDiskRequest;
use berth_cloud::error::code;
use berth_cloud::model::DiskStatus;
use berth_cloud::{Cloud, HttpCloud, wait};
use berth_tests::{LocalCloud, LocalCloudOptions, SampleNet, is_root};

const WAIT: Duration = Duration::from_secs(30);

async fn disk(cloud: &HttpCloud, name: &str) -> String {
    cloud
        .create_disk(&CreateDiskRequest { zone_id: "local-1a".into(), name: name.into(), category: "cloud_essd".into(), performance_level: Some("PL0".into()), size_gib: 1, snapshot_id: None, description: String::new(), client_token: None })
        .await
        .unwrap()
}

#[tokio::test]
async fn attach_detach_and_quota() {
    if !is_root() {
        eprintln!("skipped: needs root (loop devices)");
        return;
    }
    let lc = LocalCloud::start(LocalCloudOptions::default());
    let cloud = lc.client();
    let net = SampleNet::create(&cloud, "10.70.0.0/16", "10.70.1.0/24").await;
    let node = net.run(&cloud, "ecs.g7.large", &net.sg).await;
    let quota = cloud.describe_instance_types(&["ecs.g7.large".into()]).await.unwrap()[0].disk_quota;

    let first = disk(&cloud, "first").await;
    cloud.attach_disk(&first, &node).await.unwrap();
    let attached = wait::disk_status(&cloud, &first, DiskStatus::InUse, WAIT).await.unwrap();
    assert_eq!(attached.instance_id.as_deref(), Some(node.as_str()));
    let link = PathBuf::from(format!("/dev/disk/by-id/virtio-{}", attached.serial));
    let device = std::fs::canonicalize(&link).unwrap_or_else(|e| panic!("{} resolves: {e}", link.display()));
    assert!(device.to_string_lossy().starts_with("/dev/loop"), "{} -> {}", link.display(), device.display());
    let loop_name = device.file_name().unwrap().to_string_lossy().into_owned();
    let backing = std::fs::read_to_string(format!("/sys/block/{loop_name}/loop/backing_file")).unwrap();
    assert!(backing.trim().contains(&first), "the loop device is backed by the disk's file: {backing}");

    // Fill the quota, then one more is refused before anything is attached.
    let mut others = Vec::new();
    for i in 1..quota {
        let d = disk(&cloud, &format!("d{i}")).await;
        cloud.attach_disk(&d, &node).await.unwrap();
        others.push(d);
    }
    for d in &others {
        wait::disk_status(&cloud, d, DiskStatus::InUse, WAIT).await.unwrap();
    }
    let extra = disk(&cloud, "extra").await;
    let err = cloud.attach_disk(&extra, &node).await.unwrap_err();
    assert!(err.is_code(code::DISK_LIMIT), "{err}");
    // The status the code table gives the code (both the client and the local cloud read it).
    assert_eq!(err.api().unwrap().http_status, berth_cloud::codes::status_of(code::DISK_LIMIT));

    cloud.detach_disk(&first, &node).await.unwrap();
    wait::disk_status(&cloud, &first, DiskStatus::Available, WAIT).await.unwrap();
    assert!(!link.exists(), "the by-serial link is gone after detach");
    let still = std::fs::read_to_string(format!("/sys/block/{loop_name}/loop/backing_file")).unwrap_or_default();
    assert!(!still.contains(&first), "the loop device was released");

    for d in &others {
        cloud.detach_disk(d, &node).await.unwrap();
    }
    for d in &others {
        wait::disk_status(&cloud, d, DiskStatus::Available, WAIT).await.unwrap();
        cloud.delete_disk(d).await.unwrap();
    }
    cloud.delete_disk(&first).await.unwrap();
    cloud.delete_disk(&extra).await.unwrap();
}

//! The agent's attach ledger against the local cloud: a 16-disk instance type takes 16 disks and
//! the 17th is refused before any cloud call; a stuck attach is timed out, detached and failed
//! cleanly; concurrent operations on one disk are ABORTED; a disk attached behind the agent's back
//! (while it runs, or while it is down) is counted as unmanaged; a restarted agent adopts its
//! attachments.

use std::time::{Duration, Instant};

use berth_cloud::api::CreateDiskRequest;
use berth_cloud::model::DiskStatus;
use berth_cloud::{Cloud, HttpCloud, wait};
use berth_proto::agent::v1 as pb;
use berth_tests::agent::AgentProcess;
use berth_tests::csi::agent_for;
use berth_tests::{LocalCloud, LocalCloudOptions, SampleNet, is_root};
use tonic::Code;

async fn disk(cloud: &HttpCloud, name: &str) -> String {
    let req = CreateDiskRequest { zone_id: "local-1a".into(), name: name.into(), category: "cloud_essd".into(), performance_level: Some("PL0".into()), size_gib: 1, snapshot_id: None, description: String::new(), client_token: None };
    cloud.create_disk(&req).await.unwrap()
}

/// The agent's calls of disk actions so far (its cloud latency histogram's counts).
async fn disk_calls(agent: &AgentProcess) -> u64 {
    agent
        .metrics()
        .await
        .lines()
        .filter(|l| l.starts_with("berth_agent_cloud_call_seconds_count") && l.contains("Disk"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

async fn slots(agent: &AgentProcess) -> pb::DiskSlotsResponse {
    agent.client().await.disk_slots(pb::DiskSlotsRequest {}).await.unwrap().into_inner()
}

#[tokio::test]
async fn the_ledger_holds_sixteen_disks_refuses_the_seventeenth_and_survives_a_restart() {
    if !is_root() {
        eprintln!("skipped: needs root (loop devices, namespaces)");
        return;
    }
    let lc = LocalCloud::start(LocalCloudOptions::default());
    let cloud = lc.client();
    let net = SampleNet::create(&cloud, "10.71.0.0/16", "10.71.1.0/24").await;
    let node = net.run(&cloud, "ecs.g7.large", &net.sg).await;
    let mut agent = agent_for(&lc, &node, &["--disk-attach-timeout-secs", "1"]);
    let s = slots(&agent).await;
    assert_eq!((s.instance_id.as_str(), s.zone_id.as_str(), s.disk_quota, s.limit, s.free), (node.as_str(), "local-1a", 16, 16, 16));

    // A stuck attach: the cloud takes 3 s, the agent waits 1 s, then detaches and fails.
    lc.set_faults(serde_json::json!({ "attach_delay_ms": 3000 })).await;
    let stuck = disk(&cloud, "stuck").await;
    let mut client = agent.client().await;
    let err = client.attach_disk(pb::AttachDiskRequest { disk_id: stuck.clone() }).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    let again = client.attach_disk(pb::AttachDiskRequest { disk_id: stuck.clone() }).await.unwrap_err();
    assert_eq!(again.code(), Code::Aborted, "a retry while the stuck disk is being detached is ABORTED: {again:?}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let held = client.list_attachments(pb::ListAttachmentsRequest {}).await.unwrap().into_inner().attachments;
        let d = &cloud.describe_disks(&berth_cloud::api::DiskFilter { ids: vec![stuck.clone()], ..Default::default() }).await.unwrap()[0];
        if held.is_empty() && d.status == DiskStatus::Available {
            break;
        }
        assert!(Instant::now() < deadline, "the stuck disk was not detached: ledger {held:?}, cloud {:?}", d.status);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(agent.metrics().await.contains("berth_agent_disk_attach_timeouts_total 1"), "the timeout is counted");
    lc.set_faults(serde_json::json!({ "attach_delay_ms": 50 })).await;

    // Sixteen disks, attached concurrently through the ledger.
    let mut disks = Vec::new();
    for i in 0..17 {
        disks.push(disk(&cloud, &format!("d{i}")).await);
    }
    let attaches = disks[..16].iter().map(|d| {
        let mut c = client.clone();
        let d = d.clone();
        async move { c.attach_disk(pb::AttachDiskRequest { disk_id: d }).await }
    });
    let attached: Vec<pb::DiskAttachment> = futures_join_all(attaches).await.into_iter().map(|r| r.expect("attach").into_inner()).collect();
    for a in &attached {
        assert_eq!(a.state, pb::AttachState::Attached as i32);
        assert!(a.device_path.starts_with("/dev/loop"), "{a:?}");
        let backing = std::fs::read_to_string(format!("/sys/block/{}/loop/backing_file", a.device_path.trim_start_matches("/dev/"))).unwrap();
        assert!(backing.contains(&a.disk_id), "the device is the disk's: {backing}");
    }
    let s = slots(&agent).await;
    assert_eq!((s.limit, s.used, s.free), (16, 16, 0));
    assert!(agent.metrics().await.contains("berth_agent_disk_slots_free 0"));

    // The 17th: refused by the ledger, the cloud never asked.
    let before = disk_calls(&agent).await;
    let err = client.attach_disk(pb::AttachDiskRequest { disk_id: disks[16].clone() }).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("16 of 16"), "{}", err.message());
    assert_eq!(disk_calls(&agent).await, before, "no disk call reached the cloud for the refused attach");
    let d16 = &cloud.describe_disks(&berth_cloud::api::DiskFilter { ids: vec![disks[16].clone()], ..Default::default() }).await.unwrap()[0];
    assert_eq!(d16.status, DiskStatus::Available);

    // Attaching what is attached answers from the ledger; detaching what is not attached succeeds.
    let again = client.attach_disk(pb::AttachDiskRequest { disk_id: disks[0].clone() }).await.unwrap().into_inner();
    assert_eq!(again.device_path, attached[0].device_path);
    assert!(!client.detach_disk(pb::DetachDiskRequest { disk_id: disks[16].clone() }).await.unwrap().into_inner().detached);
    // Two detaches of one disk at once: one does it, the other is ABORTED.
    let (mut c1, mut c2) = (client.clone(), client.clone());
    let (a, b) = tokio::join!(c1.detach_disk(pb::DetachDiskRequest { disk_id: disks[0].clone() }), c2.detach_disk(pb::DetachDiskRequest { disk_id: disks[0].clone() }));
    let codes = [a.as_ref().map(|_| Code::Ok).unwrap_or_else(|e| e.code()), b.as_ref().map(|_| Code::Ok).unwrap_or_else(|e| e.code())];
    assert!(codes.contains(&Code::Ok) && codes.contains(&Code::Aborted), "{codes:?}");
    wait::disk_status(&cloud, &disks[0], DiskStatus::Available, Duration::from_secs(10)).await.unwrap();

    // A disk attached behind the agent's back while it is down is not Berth's: it takes a slot.
    cloud.attach_disk(&disks[16], &node).await.unwrap();
    agent.kill9();
    wait::disk_status(&cloud, &disks[16], DiskStatus::InUse, Duration::from_secs(10)).await.unwrap();
    agent.restart();
    let mut client = agent.client().await;
    let s = slots(&agent).await;
    assert_eq!((s.unmanaged, s.limit, s.used, s.free), (1, 15, 15, 0), "{s:?}");
    let held = client.list_attachments(pb::ListAttachmentsRequest {}).await.unwrap().into_inner().attachments;
    assert_eq!(held.len(), 15, "no attachment lost across the restart");
    for a in &attached[1..] {
        let h = held.iter().find(|h| h.disk_id == a.disk_id).expect("still held");
        assert_eq!((h.device_path.as_str(), h.state), (a.device_path.as_str(), pb::AttachState::Attached as i32));
    }
    let err = client.attach_disk(pb::AttachDiskRequest { disk_id: disks[0].clone() }).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "the unmanaged disk's slot is not Berth's to use");
}

#[tokio::test]
async fn the_periodic_check_counts_disks_attached_behind_the_agents_back() {
    if !is_root() {
        eprintln!("skipped: needs root (loop devices, namespaces)");
        return;
    }
    let lc = LocalCloud::start(LocalCloudOptions::default());
    let cloud = lc.client();
    let net = SampleNet::create(&cloud, "10.75.0.0/16", "10.75.1.0/24").await;
    let node = net.run(&cloud, "ecs.g7.large", &net.sg).await;
    let agent = agent_for(&lc, &node, &["--reconcile-secs", "1"]);
    let foreign = disk(&cloud, "foreign").await;
    cloud.attach_disk(&foreign, &node).await.unwrap();
    wait::disk_status(&cloud, &foreign, DiskStatus::InUse, Duration::from_secs(10)).await.unwrap();
    let until = |want: u32| {
        let agent = &agent;
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let s = slots(agent).await;
                if s.unmanaged == want {
                    return s;
                }
                assert!(Instant::now() < deadline, "the agent did not count {want} unmanaged disks: {s:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let s = until(1).await;
    assert_eq!((s.limit, s.free), (15, 15));
    cloud.detach_disk(&foreign, &node).await.unwrap();
    wait::disk_status(&cloud, &foreign, DiskStatus::Available, Duration::from_secs(10)).await.unwrap();
    let s = until(0).await;
    assert_eq!((s.limit, s.free), (16, 16), "the slot comes back");
}

/// Runs futures concurrently and collects their outputs in order.
async fn futures_join_all<F: std::future::Future + Send + 'static>(futs: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("task"));
    }
    out
}

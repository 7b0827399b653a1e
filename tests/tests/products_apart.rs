//! Every binary against a local cloud whose products listen apart, as the real ECS, VPC and NAS
//! endpoints are: the autoscaler's instances, an agent's pod allocations and the CSI driver's NAS
//! volume each reach their product; a binary given another product's endpoint fails naming the
//! product and the setting to fix.

use std::time::Duration;

use berth_cloud::Cloud as _;
use berth_proto::cluster::v1 as pb;
use berth_proto::csi::v1 as csi;
use berth_tests::agent::AgentProcess;
use berth_tests::csi::{CsiProcess, agent_for, link_agent, mount_cap};
use berth_tests::e2e::{cluster, is, pods, ready_nodes};
use berth_tests::guest::GuestLeftovers;
use berth_tests::scheduler::{Scheduler, free_port};
use berth_tests::{LocalCloud, LocalCloudOptions, SampleNet, is_root, wait_for};

/// The local cloud's count of calls answered with `outcome`, by action.
async fn calls(lc: &LocalCloud, outcome: &str) -> Vec<(String, u64)> {
    let text = reqwest::get(format!("{}/metrics", lc.endpoint)).await.expect("GET /metrics").text().await.expect("text");
    let wanted = format!("outcome=\"{outcome}\"}} ");
    text.lines()
        .filter(|l| l.starts_with("berth_localcloud_api_calls_total{") && l.contains(&wanted))
        .filter_map(|l| {
            let action = l.split("action=\"").nth(1)?.split('"').next()?.to_string();
            Some((action, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_autoscaler_an_agent_and_the_csi_driver_each_reach_their_product_on_its_own_listener() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    // e2e clusters run the products apart: the autoscaler makes the pool's node (ECS), whose agent
    // allocates the pod's IP (ECS) and whose CSI driver looks up the NAS file system (NAS).
    let c = cluster("apart", "ecs.g7.large", 1, 1, 600, ("10.57.0.0/16", "10.57.1.0/24"), &[]).await;
    let _leftovers = GuestLeftovers::new(&c.lc, &c.tag);
    assert!(c.lc.vpc_endpoint != c.lc.endpoint && c.lc.nas_endpoint != c.lc.endpoint, "{} {} {}", c.lc.endpoint, c.lc.vpc_endpoint, c.lc.nas_endpoint);
    let mut client = c.scheduler.client().await;
    wait_for!(c, Duration::from_secs(90), "the pool's node reporting", (ready_nodes(&mut client).await.len() == 1).then_some(()));

    let cloud = c.lc.client();
    let fs = cloud.create_nas_file_system("local-1a", &c.net.vpc, &c.net.vsw, None).await.expect("CreateFileSystem").id;
    let export = c.lc.state_dir().join("nas").join(&fs);
    wait_for!(c, Duration::from_secs(10), "the NAS export", export.is_dir().then_some(()));
    let volume = pb::VolumeSpec { name: "shared".into(), kind: pb::VolumeKind::Nas as i32, mount_path: "/shared".into(), read_only: false, parameters: [("fileSystemId".to_string(), fs.clone())].into() };
    let spec = pb::PodSpec { namespace: "default".into(), name: "on-nas".into(), cpu_millicores: 100, memory_bytes: 32 << 20, volumes: vec![volume], command: vec!["sh".into(), "-c".into(), "echo apart > shared/f.txt && exec sleep 600".into()], ..Default::default() };
    client.submit_pod(pb::SubmitPodRequest { spec: Some(spec) }).await.expect("SubmitPod");
    wait_for!(c, Duration::from_secs(60), "the NAS pod running with an IP", {
        let all = pods(&mut client).await;
        assert!(!all.iter().any(|p| is(p, pb::PodPhase::Failed)), "{all:?}");
        all.iter().any(|p| is(p, pb::PodPhase::Running) && !p.pod_ip.is_empty()).then_some(())
    });
    wait_for!(c, Duration::from_secs(20), "the pod's write on the NAS export", std::fs::read_dir(&export).ok().and_then(|mut d| d.next()).map(|_| ()));

    // Each product answered its own actions, and no call of any binary went to another's listener.
    let ok: std::collections::BTreeMap<String, u64> = calls(&c.lc, "ok").await.into_iter().collect();
    // RunInstances: the autoscaler; CreateNetworkInterface: the agent; DescribeFileSystems: the CSI driver.
    for action in ["RunInstances", "CreateNetworkInterface", "DescribeFileSystems"] {
        assert!(ok.get(action).is_some_and(|n| *n > 0), "no {action} answered: {ok:?}");
    }
    assert_eq!(calls(&c.lc, "InvalidAction.NotFound").await, vec![], "a call reached the wrong product's listener");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_given_another_products_endpoint_fails_naming_the_product_and_the_setting() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let mut lc = LocalCloud::start(LocalCloudOptions { products_apart: true, ..Default::default() });
    let cloud = lc.client();
    let net = SampleNet::create(&cloud, "10.58.0.0/16", "10.58.1.0/24").await;
    let node = net.run(&cloud, "ecs.g7.large", &net.sg).await;
    let fs = cloud.create_nas_file_system("local-1a", &net.vpc, &net.vsw, None).await.expect("CreateFileSystem").id;

    // The agent with its ECS endpoint at the VPC listener stops at its first call.
    let (ecs, vpc, nas) = (lc.endpoint.clone(), lc.vpc_endpoint.clone(), lc.nas_endpoint.clone());
    lc.endpoint = vpc.clone();
    let (status, log) = AgentProcess::exit_of(&lc, &node, &[]);
    lc.endpoint = ecs.clone();
    assert!(!status.success(), "{log}");
    assert!(log.contains("ECS") && log.contains("cloud.endpoint") && log.contains(&vpc), "{log}");

    // The CSI driver with its NAS endpoint at the VPC listener refuses a NAS volume, saying why.
    let agent = agent_for(&lc, &node, &[]);
    let agents = tempfile::tempdir().unwrap();
    link_agent(agents.path(), &agent);
    lc.nas_endpoint = vpc.clone();
    let driver = CsiProcess::start(&lc, &agent, agents.path());
    lc.nas_endpoint = nas;
    let shared = mount_cap("", csi::volume_capability::access_mode::Mode::MultiNodeMultiWriter);
    let req = csi::CreateVolumeRequest {
        name: "pvc-apart".into(),
        volume_capabilities: vec![shared],
        parameters: [("type".to_string(), "nas".to_string()), ("fileSystemId".to_string(), fs), ("path".to_string(), "/k8s".to_string())].into(),
        ..Default::default()
    };
    let err = driver.controller().await.create_volume(req).await.expect_err("a NAS volume through the VPC endpoint");
    assert!(err.message().contains("NAS") && err.message().contains("cloud.nas_endpoint"), "{err:?}");

    // The autoscaler with its ECS endpoint at the NAS listener says so in its log.
    let config = format!(
        "[autoscaler]\nenabled = true\ninterval_ms = 250\n\n\
         [cloud]\nendpoint = \"{}\"\nvpc_endpoint = \"{vpc}\"\nregion = \"local-1\"\ncredentials_file = \"{}\"\n\n\
         [[pool]]\nname = \"apart\"\ninstance_types = [\"ecs.g7.large\"]\nvswitches = [{{ id = \"{}\", zone = \"local-1a\" }}]\nsecurity_group_ids = [\"{}\"]\nmin_nodes = 1\nmax_nodes = 1\nimage_id = \"berth-node\"\n",
        lc.nas_endpoint,
        lc.dir.path().join("credentials.json").display(),
        net.vsw,
        net.sg,
    );
    let scheduler = Scheduler::start_on(free_port(), &config, &[]);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !(scheduler.log().contains("cloud.endpoint") && scheduler.log().contains("ECS")) {
        assert!(std::time::Instant::now() < deadline, "the autoscaler did not name the setting:\n{}", scheduler.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(cloud.describe_instances(&Default::default()).await.unwrap().len(), 1, "no instance made through the wrong endpoint");
}

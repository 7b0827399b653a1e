//! The real client against the real local cloud over HTTP: resources, quotas with the real error
//! codes, throttling absorbed by retries, signatures checked, state kept across a `kill -9`.

use std::time::Duration;

use berth_cloud::api::{Addresses, CreateEniRequest, DiskFilter, EniFilter, InstanceFilter, RunInstancesRequest};
use berth_cloud::error::code;
use berth_cloud::model::{Credentials, EniKind, EniStatus};
use berth_cloud::{Cloud, HttpCloud, wait};
use berth_tests::{LocalCloud, LocalCloudOptions, SampleNet};

const WAIT: Duration = Duration::from_secs(20);

fn api_only() -> LocalCloud {
    LocalCloud::start(LocalCloudOptions { no_dataplane: true, ..Default::default() })
}

async fn network(cloud: &HttpCloud, cidr: &str) -> SampleNet {
    SampleNet::create(cloud, "10.0.0.0/8", cidr).await
}

async fn run(cloud: &HttpCloud, net: &SampleNet, instance_type: &str) -> String {
    net.run(cloud, instance_type, &net.sg).await
}

fn eni_request(net: &SampleNet) -> CreateEniRequest {
    CreateEniRequest::secondary(net.vsw.clone(), vec![net.sg.clone()])
}

async fn attached_eni(cloud: &HttpCloud, net: &SampleNet, instance: &str) -> String {
    let eni = cloud.create_network_interface(&eni_request(net)).await.unwrap();
    cloud.attach_network_interface(&eni.id, instance, None).await.unwrap();
    wait::eni_status(cloud, &eni.id, EniStatus::InUse, WAIT).await.unwrap();
    eni.id
}

#[tokio::test]
async fn resources_lifecycle_over_http() {
    let lc = api_only();
    let cloud = lc.client();
    let net = network(&cloud, "10.1.0.0/24").await;
    let a = run(&cloud, &net, "ecs.g7.large").await;
    let b = run(&cloud, &net, "ecs.c7.xlarge").await;

    let instances = cloud.describe_instances(&InstanceFilter { vpc_id: Some(net.vpc.clone()), ..Default::default() }).await.unwrap();
    let types: Vec<_> = instances.iter().map(|i| (i.id.clone(), i.instance_type.clone())).collect();
    assert!(types.contains(&(a.clone(), "ecs.g7.large".into())) && types.contains(&(b.clone(), "ecs.c7.xlarge".into())), "{types:?}");

    let eni = attached_eni(&cloud, &net, &a).await;
    let ips = cloud.assign_private_ips(&eni, &Addresses::Count(3), None).await.unwrap();
    assert_eq!(ips.len(), 3);
    let found = cloud.describe_network_interfaces(&EniFilter { instance_id: Some(a.clone()), ..Default::default() }).await.unwrap();
    let on_wire = found.iter().find(|e| e.id == eni).expect("the ENI is listed under its instance");
    assert_eq!(on_wire.secondary_ips, ips);
    assert_eq!(on_wire.instance_id.as_deref(), Some(a.as_str()));
    assert!(found.iter().any(|e| e.kind == EniKind::Primary), "the primary ENI is listed too");

    cloud.unassign_private_ips(&eni, &ips[..2]).await.unwrap();
    let after = cloud.describe_network_interfaces(&EniFilter { ids: vec![eni.clone()], ..Default::default() }).await.unwrap();
    assert_eq!(after[0].secondary_ips, ips[2..].to_vec());
    // unassigning again is refused with the service's code
    let err = cloud.unassign_private_ips(&eni, &ips[..1]).await.unwrap_err();
    assert!(err.is_code(code::IP_UNASSIGNED), "{err}");

    cloud.detach_network_interface(&eni, &a, None).await.unwrap();
    wait::eni_status(&cloud, &eni, EniStatus::Available, WAIT).await.unwrap();
    cloud.delete_network_interface(&eni).await.unwrap();
    assert!(cloud.describe_network_interfaces(&EniFilter { ids: vec![eni.clone()], ..Default::default() }).await.unwrap().is_empty());
}

#[tokio::test]
async fn quotas_refuse_with_the_real_codes() {
    let lc = api_only();
    let cloud = lc.client();
    let net = network(&cloud, "10.2.0.0/24").await;
    // ecs.t6-c1m2.large: 2 ENIs (the primary included), 6 IPv4 per ENI, no trunk.
    let small = run(&cloud, &net, "ecs.t6-c1m2.large").await;
    let eni = attached_eni(&cloud, &net, &small).await;

    let extra = cloud.create_network_interface(&eni_request(&net)).await.unwrap();
    let err = cloud.attach_network_interface(&extra.id, &small, None).await.unwrap_err();
    assert!(err.is_code(code::ENI_PER_INSTANCE_LIMIT), "{err}");
    assert_eq!(err.api().unwrap().http_status, 403);

    cloud.assign_private_ips(&eni, &Addresses::Count(5), None).await.unwrap();
    let err = cloud.assign_private_ips(&eni, &Addresses::Count(1), None).await.unwrap_err();
    assert!(err.is_code(code::ENI_IPV4_FULL), "{err}");

    let err = cloud
        .run_instances(&RunInstancesRequest { instance_type: "ecs.nope.large".into(), vswitch_id: net.vsw.clone(), amount: 1, ..Default::default() })
        .await
        .unwrap_err();
    assert!(err.is_code(code::INVALID_INSTANCE_TYPE), "{err}");
}

/// RunInstances as the real API takes it: without an image it is refused naming ImageId; with an
/// image family, a system disk, user data (which the client Base64-encodes) and tags it runs.
#[tokio::test]
async fn run_instances_boots_an_image_with_its_system_disk_user_data_and_tags() {
    use berth_cloud::api::{BootImage, SystemDisk};
    let lc = api_only();
    let cloud = lc.client();
    let net = network(&cloud, "10.6.0.0/24").await;
    let base = RunInstancesRequest { instance_type: "ecs.g7.large".into(), vswitch_id: net.vsw.clone(), security_group_ids: vec![net.sg.clone()], amount: 1, name: "boot".into(), ..Default::default() };
    let err = cloud.run_instances(&base).await.unwrap_err();
    assert!(err.is_code(code::MISSING_PARAMETER) && err.to_string().contains("ImageId"), "{err}");
    let full = RunInstancesRequest {
        image: Some(BootImage::Family("berth-node".into())),
        system_disk: Some(SystemDisk { category: "cloud_essd".into(), size_gib: Some(40) }),
        user_data: Some("#!/bin/sh
systemctl enable --now berth-agent
".into()),
        tags: vec![("berth:pool".into(), "boot".into()), ("team".into(), "infra".into())],
        ..base.clone()
    };
    assert_eq!(cloud.run_instances(&full).await.unwrap().len(), 1);
    let bad_disk = RunInstancesRequest { system_disk: Some(SystemDisk { category: "cloud_essd".into(), size_gib: Some(5) }), ..full };
    let err = cloud.run_instances(&bad_disk).await.unwrap_err();
    assert!(err.to_string().contains("SystemDisk.Size"), "{err}");
}

#[tokio::test]
async fn a_small_vswitch_runs_out_of_addresses() {
    let lc = api_only();
    let cloud = lc.client();
    // A /28 has 16 addresses: the network address and the last three are reserved.
    let net = network(&cloud, "10.3.0.0/28").await;
    let big = run(&cloud, &net, "ecs.g7.4xlarge").await; // its primary takes one: 11 left
    let vsw = &cloud.describe_vswitches(None, Some(&net.vsw)).await.unwrap()[0];
    assert_eq!(vsw.available_ip_address_count, 11);
    let eni = attached_eni(&cloud, &net, &big).await; // 10 left
    let ips = cloud.assign_private_ips(&eni, &Addresses::Count(10), None).await.unwrap();
    assert_eq!(ips.len(), 10);
    let err = cloud.assign_private_ips(&eni, &Addresses::Count(1), None).await.unwrap_err();
    assert!(err.is_code(code::VSWITCH_IP_NOT_ENOUGH), "{err}");
    assert_eq!(cloud.describe_vswitches(None, Some(&net.vsw)).await.unwrap()[0].available_ip_address_count, 0);
}

#[tokio::test]
async fn injected_throttling_is_absorbed_by_retries() {
    let lc = api_only();
    // 40 calls against 30% throttling: with the default 8 attempts one call in ~15,000 still sees
    // eight throttles in a row (0.3^8), which made this test fail about once in 400 runs; 14
    // attempts with a short back-off make that one run in ~500,000 without changing what is shown.
    let cloud = lc.client_with(|c| {
        c.retry.max_attempts = 14;
        c.retry.max_delay = std::time::Duration::from_millis(200);
    });
    let net = network(&cloud, "10.4.0.0/24").await;
    let a = run(&cloud, &net, "ecs.g7.xlarge").await;
    let eni = attached_eni(&cloud, &net, &a).await;
    lc.set_faults(serde_json::json!({ "throttle_rate": 0.3 })).await;
    for _ in 0..10 {
        let ips = cloud.assign_private_ips(&eni, &Addresses::Count(1), None).await.expect("throttling absorbed");
        cloud.unassign_private_ips(&eni, &ips).await.expect("throttling absorbed");
    }
    for _ in 0..20 {
        cloud.describe_network_interfaces(&EniFilter { instance_id: Some(a.clone()), ..Default::default() }).await.expect("throttling absorbed");
    }
    // Without retries the same rate is visible.
    let fragile = lc.client_with(|c| c.retry.max_attempts = 1);
    let mut throttled = 0;
    for _ in 0..40 {
        if let Err(e) = fragile.describe_vpcs(None).await {
            assert!(e.is_code(code::THROTTLING), "{e}");
            throttled += 1;
        }
    }
    assert!((3..=25).contains(&throttled), "about 30% of 40 calls should be throttled, got {throttled}");
}

#[tokio::test]
async fn bad_signatures_are_refused() {
    let lc = api_only();
    // Both signature versions, each refused as the real service refuses it.
    for version in [berth_cloud::signing::Version::V3, berth_cloud::signing::Version::V1] {
        let key = |id: &str, secret: &str| Credentials { access_key_id: id.into(), access_key_secret: secret.into() };
        let wrong_secret = lc.client_with(|c| {
            c.credentials = key(&lc.credentials.access_key_id, "not-the-secret").into();
            c.signature = version;
        });
        let err = wrong_secret.describe_vpcs(None).await.unwrap_err();
        assert!(err.is_code(code::SIGNATURE_DOES_NOT_MATCH), "{version:?}: {err}");
        assert_eq!(err.api().unwrap().http_status, 400);
        let wrong_key = lc.client_with(|c| {
            c.credentials = key("LTAIunknown", &lc.credentials.access_key_secret).into();
            c.signature = version;
        });
        let err = wrong_key.describe_vpcs(None).await.unwrap_err();
        assert!(err.is_code(code::INVALID_ACCESS_KEY_ID), "{version:?}: {err}");
        let right = lc.client_with(|c| c.signature = version);
        right.describe_vpcs(None).await.unwrap_or_else(|e| panic!("{version:?}: {e}"));
    }
}

#[tokio::test]
async fn every_resource_survives_a_kill_and_restart() {
    let mut lc = api_only();
    let cloud = lc.client();
    let net = network(&cloud, "10.5.0.0/24").await;
    let a = run(&cloud, &net, "ecs.r7.large").await;
    let eni = attached_eni(&cloud, &net, &a).await;
    cloud.assign_private_ips(&eni, &Addresses::Count(2), None).await.unwrap();
    let disk = cloud
        .create_disk(&berth_cloud::api::CreateDiskRequest { zone_id: "local-1a".into(), name: "data".into(), category: "cloud_essd".into(), performance_level: Some("PL0".into()), size_gib: 20, snapshot_id: None, description: "kept across restarts".into(), client_token: None })
        .await
        .unwrap();
    let bad = berth_cloud::api::CreateDiskRequest { zone_id: "local-1a".into(), name: "bad".into(), category: "cloud_essd".into(), size_gib: 20, description: "https://x".into(), ..Default::default() };
    assert!(cloud.create_disk(&bad).await.unwrap_err().is_code("InvalidParameter"), "a Description may not start with https://");
    assert_eq!(cloud.describe_disks(&DiskFilter { ids: vec![disk.clone()], ..Default::default() }).await.unwrap()[0].description, "kept across restarts");

    let before = (
        cloud.describe_vpcs(None).await.unwrap(),
        cloud.describe_vswitches(None, None).await.unwrap(),
        cloud.describe_security_group(&net.sg).await.unwrap(),
        cloud.describe_instances(&InstanceFilter::default()).await.unwrap(),
        cloud.describe_network_interfaces(&EniFilter::default()).await.unwrap(),
        cloud.describe_disks(&DiskFilter::default()).await.unwrap(),
    );
    lc.restart();
    let cloud = lc.client();
    let after = (
        cloud.describe_vpcs(None).await.unwrap(),
        cloud.describe_vswitches(None, None).await.unwrap(),
        cloud.describe_security_group(&net.sg).await.unwrap(),
        cloud.describe_instances(&InstanceFilter::default()).await.unwrap(),
        cloud.describe_network_interfaces(&EniFilter::default()).await.unwrap(),
        cloud.describe_disks(&DiskFilter::default()).await.unwrap(),
    );
    assert_eq!(before, after);
    assert!(after.5.iter().any(|d| d.id == disk));
}

#[tokio::test]
async fn a_client_token_never_creates_twice() {
    let lc = api_only();
    let cloud = lc.client();
    let net = network(&cloud, "10.6.0.0/24").await;
    let mut req = eni_request(&net);
    req.client_token = Some("intent-7".into());
    let first = cloud.create_network_interface(&req).await.unwrap();
    let again = cloud.create_network_interface(&req).await.unwrap();
    assert_eq!(first.id, again.id);
    let all = cloud.describe_network_interfaces(&EniFilter { vswitch_id: Some(net.vsw.clone()), ..Default::default() }).await.unwrap();
    assert_eq!(all.len(), 1);
}

#[tokio::test]
async fn instance_metadata_is_served_on_loopback() {
    let lc = api_only();
    let cloud = lc.client();
    let net = network(&cloud, "10.7.0.0/24").await;
    let id = run(&cloud, &net, "ecs.g7.large").await;
    let get = |path: String| {
        let url = format!("{}/_localcloud/metadata/{id}/latest/meta-data/{path}", lc.endpoint);
        async move { reqwest::get(url).await.unwrap().text().await.unwrap() }
    };
    assert_eq!(get("instance-id".into()).await, id);
    assert_eq!(get("instance/instance-type".into()).await, "ecs.g7.large");
    assert_eq!(get("region-id".into()).await, "local-1");
    let mac = get("mac".into()).await;
    assert_eq!(get("network/interfaces/macs/".into()).await.trim(), format!("{mac}/"));
    assert_eq!(get(format!("network/interfaces/macs/{mac}/gateway")).await, "10.7.0.253");
    assert_eq!(get(format!("network/interfaces/macs/{mac}/netmask")).await, "255.255.255.0");
}

#[tokio::test]
async fn every_list_is_read_to_its_last_page_and_every_rule_peer_kind_decodes() {
    use berth_cloud::model::{Direction, IpProtocol, Policy, SecurityGroupRule};
    let lc = api_only();
    let cloud = lc.client();
    // More VPCs than one page of DescribeVpcs holds (PageSize at most 50).
    for i in 0..52 {
        cloud.create_vpc(&format!("10.{i}.0.0/16"), &format!("v{i}"), false, None).await.unwrap();
    }
    assert_eq!(cloud.describe_vpcs(None).await.unwrap().len(), 52);
    assert!(!cloud.describe_instance_types(&[]).await.unwrap().is_empty());
    // An IPv6 peer goes out as Ipv6SourceCidrIp and comes back as a rule.
    let vpc = cloud.create_vpc("172.16.0.0/16", "six", true, None).await.unwrap();
    let sg = cloud.create_security_group(&vpc, "sg", None).await.unwrap();
    let rule = SecurityGroupRule { direction: Direction::Ingress, protocol: IpProtocol::Tcp, ports: Some((443, 443)), peer_cidr: "2001:db8::/32".parse().unwrap(), policy: Policy::Accept, priority: 1 };
    cloud.authorize_security_group(&sg, &rule).await.unwrap();
    let got = cloud.describe_security_group(&sg).await.unwrap();
    assert_eq!(got.rules, vec![rule]);
    // DeleteSecurityGroup: refused while an instance is in the group, done once nothing is.
    let net = network(&cloud, "10.200.0.0/24").await;
    run(&cloud, &net, "ecs.g7.large").await;
    let err = cloud.delete_security_group(&net.sg).await.unwrap_err();
    assert!(err.is_code(code::DEPENDENCY_VIOLATION), "{err}");
    cloud.delete_security_group(&sg).await.unwrap();
    assert!(cloud.describe_security_group(&sg).await.unwrap_err().is_code(code::INVALID_SECURITY_GROUP_ID));
}

#[tokio::test]
async fn each_product_is_served_apart_and_a_misconfigured_endpoint_names_the_setting() {
    let lc = LocalCloud::start(LocalCloudOptions { no_dataplane: true, products_apart: true, ..Default::default() });
    assert!(!lc.vpc_endpoint.is_empty() && !lc.nas_endpoint.is_empty() && lc.vpc_endpoint != lc.nas_endpoint);
    // Every call reaches its product: each listener refuses the others' actions.
    let cloud = lc.client();
    let net = network(&cloud, "10.9.0.0/24").await;
    let vm = run(&cloud, &net, "ecs.g7.large").await;
    let fs = cloud.create_nas_file_system("local-1a", &net.vpc, &net.vsw, None).await.expect("NAS at the NAS endpoint");
    assert_eq!(cloud.describe_nas_file_systems(Some(&fs.id)).await.unwrap().len(), 1);
    assert_eq!(cloud.describe_instances(&InstanceFilter { ids: vec![vm], ..Default::default() }).await.unwrap().len(), 1);

    // A product left on the ECS endpoint fails naming the product and the setting to fix.
    let no_vpc = lc.client_with(|c| c.vpc_endpoint = None);
    let err = no_vpc.describe_vpcs(None).await.unwrap_err();
    assert!(matches!(err, berth_cloud::CloudError::WrongEndpoint { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("VPC") && text.contains("cloud.vpc_endpoint") && text.contains("DescribeVpcs"), "{text}");
    let nas_at_vpc = lc.client_with(|c| c.nas_endpoint = Some(lc.vpc_endpoint.clone()));
    let text = nas_at_vpc.describe_nas_file_systems(None).await.unwrap_err().to_string();
    assert!(text.contains("NAS") && text.contains("cloud.nas_endpoint"), "{text}");
    // ECS actions are not served at the VPC endpoint either.
    let ecs_at_vpc = lc.client_with(|c| c.endpoint = lc.vpc_endpoint.clone());
    let text = ecs_at_vpc.describe_instances(&InstanceFilter::default()).await.unwrap_err().to_string();
    assert!(text.contains("ECS") && text.contains("cloud.endpoint"), "{text}");
}

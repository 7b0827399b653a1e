//! The client on an instance's RAM role: STS credentials from the local cloud's metadata service,
//! which expire after a short lifetime here, rotate during a run without a failed call, and a
//! token left to expire is replaced before the next call.

use std::time::{Duration, Instant};

use berth_cloud::Cloud as _;
use berth_cloud::credentials::Source;
use berth_cloud::error::code;
use berth_tests::{LocalCloud, LocalCloudOptions, SampleNet};

const LIFETIME_SECS: u64 = 3;

fn cloud_with_short_role_credentials() -> LocalCloud {
    LocalCloud::start(LocalCloudOptions {
        no_dataplane: true,
        extra_args: vec!["--role-credential-lifetime-secs".into(), LIFETIME_SECS.to_string()],
        ..Default::default()
    })
}

#[tokio::test]
async fn role_credentials_rotate_during_a_run_without_a_failed_call() {
    let lc = cloud_with_short_role_credentials();
    let admin = lc.client();
    let net = SampleNet::create(&admin, "10.80.0.0/16", "10.80.1.0/24").await;
    let instance = net.run(&admin, "ecs.g7.large", &net.sg).await;
    let metadata_url = format!("{}/_localcloud/metadata/{instance}/latest/meta-data", lc.endpoint);
    // No role named: the one the instance lists is used.
    let node = lc.client_with(|c| c.credentials = Source::RamRole { metadata_url: metadata_url.clone(), role: String::new() });

    let started = Instant::now();
    let mut calls = 0;
    while started.elapsed() < Duration::from_secs(7) {
        let vpcs = node.describe_vpcs(Some(&net.vpc)).await.unwrap_or_else(|e| panic!("call {calls} failed after {:?}: {e}", started.elapsed()));
        assert_eq!(vpcs.len(), 1);
        calls += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Fetched again with a third of each lifetime left: every 2 s, so 4 fetches in 7 s (one
    // either way for the second boundaries), never one per call.
    let fetches = node.credential_fetches();
    assert!((3..=5).contains(&fetches), "{fetches} fetches of role credentials for {calls} calls in 7 s");
    let issued = lc.log().matches("issued role credentials").count() as u64;
    assert_eq!(issued, fetches, "every fetch found new credentials (the service rotates them from half their lifetime)");

    // A token left to expire is replaced before the next call goes out.
    tokio::time::sleep(Duration::from_secs(LIFETIME_SECS + 1)).await;
    node.describe_vpcs(Some(&net.vpc)).await.expect("a call after the token expired");
    assert_eq!(node.credential_fetches(), fetches + 1);
}

#[tokio::test]
async fn a_role_key_without_its_token_is_refused_and_a_wrong_role_is_named() {
    let lc = cloud_with_short_role_credentials();
    let admin = lc.client();
    let net = SampleNet::create(&admin, "10.81.0.0/16", "10.81.1.0/24").await;
    let instance = net.run(&admin, "ecs.g7.large", &net.sg).await;
    let metadata_url = format!("{}/_localcloud/metadata/{instance}/latest/meta-data", lc.endpoint);
    let doc = reqwest::get(format!("{metadata_url}/ram/security-credentials/berth-node")).await.unwrap().text().await.unwrap();
    let session = berth_cloud::credentials::parse_role_credentials("berth-node", &doc, 0).unwrap();
    // The same key used as a long-term key: no token, then the token after it expired.
    let key = berth_cloud::model::Credentials { access_key_id: session.access_key_id.clone(), access_key_secret: session.access_key_secret.clone() };
    let tokenless = lc.client_with(|c| c.credentials = key.clone().into());
    let err = tokenless.describe_vpcs(None).await.unwrap_err();
    assert!(err.is_code(code::SECURITY_TOKEN_MALFORMED), "{err}");

    let role = lc.client_with(|c| c.credentials = Source::RamRole { metadata_url: metadata_url.clone(), role: "not-this-role".into() });
    let err = role.describe_vpcs(None).await.unwrap_err().to_string();
    assert!(err.contains("not-this-role") && err.contains("cloud.ram_role"), "{err}");
}

/// The role listed in an instance's metadata, and whether its credentials sign a call.
async fn role_of(lc: &LocalCloud, instance: &str) -> String {
    let url = format!("{}/_localcloud/metadata/{instance}/latest/meta-data/ram/security-credentials/", lc.endpoint);
    reqwest::get(url).await.unwrap().text().await.unwrap().trim().to_string()
}

#[tokio::test]
async fn an_instance_run_with_a_ram_role_serves_its_credentials_and_an_unknown_role_is_refused() {
    let lc = LocalCloud::start(LocalCloudOptions { no_dataplane: true, extra_args: vec!["--account-ram-role".into(), "berth-web".into()], ..Default::default() });
    let admin = lc.client();
    let net = SampleNet::create(&admin, "10.82.0.0/16", "10.82.1.0/24").await;
    let run = |role: &str| berth_cloud::api::RunInstancesRequest {
        instance_type: "ecs.g7.large".into(),
        vswitch_id: net.vsw.clone(),
        security_group_ids: vec![net.sg.clone()],
        amount: 1,
        image: Some(berth_cloud::api::BootImage::Id("berth-node".into())),
        ram_role_name: Some(role.into()),
        ..Default::default()
    };

    // A role of the account: the instance's metadata lists it and serves its credentials, which sign.
    let id = admin.run_instances(&run("berth-web")).await.expect("RunInstances with a role").remove(0);
    assert_eq!(role_of(&lc, &id).await, "berth-web");
    let metadata_url = format!("{}/_localcloud/metadata/{id}/latest/meta-data", lc.endpoint);
    let gone = reqwest::get(format!("{metadata_url}/ram/security-credentials/berth-node")).await.unwrap();
    assert_eq!(gone.status(), 404, "the default role is not this instance's");
    let node = lc.client_with(|c| c.credentials = Source::RamRole { metadata_url: metadata_url.clone(), role: "berth-web".into() });
    node.describe_vpcs(Some(&net.vpc)).await.expect("a call signed with the role's credentials");
    // Without RamRoleName, the local cloud's default role.
    let plain = net.run(&admin, "ecs.g7.large", &net.sg).await;
    assert_eq!(role_of(&lc, &plain).await, "berth-node");

    // A role the account does not have: refused with the real code, naming it; nothing is made.
    let before = admin.describe_instances(&Default::default()).await.unwrap().len();
    let err = admin.run_instances(&run("berth-nope")).await.unwrap_err();
    assert!(err.is_code(code::INVALID_RAM_ROLE), "{err}");
    assert!(err.to_string().contains("berth-nope"), "{err}");
    assert_eq!(admin.describe_instances(&Default::default()).await.unwrap().len(), before);
}

#[tokio::test]
async fn the_autoscaler_boots_a_pools_nodes_with_its_ram_role() {
    let lc = LocalCloud::start(LocalCloudOptions { no_dataplane: true, extra_args: vec!["--account-ram-role".into(), "berth-pool".into()], ..Default::default() });
    let admin = lc.client();
    let net = SampleNet::create(&admin, "10.83.0.0/16", "10.83.1.0/24").await;
    let config = format!(
        "[autoscaler]\nenabled = true\ninterval_ms = 250\n\n\
         [cloud]\nendpoint = \"{}\"\nregion = \"local-1\"\ncredentials_file = \"{}\"\n\n\
         [[pool]]\nname = \"roled\"\ninstance_types = [\"ecs.g7.large\"]\nvswitches = [{{ id = \"{}\", zone = \"local-1a\" }}]\nsecurity_group_ids = [\"{}\"]\nmin_nodes = 1\nmax_nodes = 1\nimage_id = \"berth-node\"\nram_role_name = \"berth-pool\"\n",
        lc.endpoint,
        lc.dir.path().join("credentials.json").display(),
        net.vsw,
        net.sg,
    );
    let scheduler = berth_tests::scheduler::Scheduler::start_on(berth_tests::scheduler::free_port(), &config, &[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let id = loop {
        if let Some(i) = admin.describe_instances(&Default::default()).await.unwrap().into_iter().next() {
            break i.id;
        }
        assert!(Instant::now() < deadline, "the autoscaler made no node:\n{}", scheduler.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(role_of(&lc, &id).await, "berth-pool");
}

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

//! The local cloud driven by Alibaba Cloud's official Python SDKs, unchanged (`tests/sdk/official_sdk.py`):
//! every action Berth's client uses, signed as the SDKs sign by default (signature v3), encoded as
//! they encode (Permissions.N.*, Tag.N.*, no RegionId where the API model has none) and decoded by
//! the SDKs' own response models. `./run test` installs the pinned SDKs into target/python-sdk.

use std::path::PathBuf;
use std::process::Command;

use berth_tests::{LocalCloud, LocalCloudOptions};

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// Runs the SDK script against the given product endpoints (`host:port`), with `token` as the STS
/// token if given; returns its output, or panics with it.
fn run_sdk(ecs: &str, vpc: &str, nas: &str, key_id: &str, secret: &str, token: Option<&str>) -> String {
    let sdk = workspace().join("target/python-sdk");
    assert!(
        sdk.join("alibabacloud_ecs20140526").exists(),
        "the official SDKs are missing from {}: `./run test` installs them (see PY_SDK in ./run)",
        sdk.display()
    );
    let mut cmd = Command::new("python3");
    cmd.arg(workspace().join("tests/sdk/official_sdk.py"))
        .args([ecs, vpc, nas])
        .env("PYTHONPATH", &sdk)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("BERTH_TEST_KEY_ID", key_id)
        .env("BERTH_TEST_KEY_SECRET", secret)
        .env_remove("BERTH_TEST_TOKEN");
    if let Some(t) = token {
        cmd.env("BERTH_TEST_TOKEN", t);
    }
    let out = cmd.output().expect("run python3");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the official SDK run failed:\n{text}");
    text
}

fn host(url: &str) -> &str {
    url.trim_start_matches("http://")
}

#[test]
fn the_official_sdks_drive_every_action_berth_uses() {
    // Each product at its own endpoint, as on the real cloud.
    let lc = LocalCloud::start(LocalCloudOptions { no_dataplane: true, products_apart: true, ..Default::default() });
    let out = run_sdk(host(&lc.endpoint), host(&lc.vpc_endpoint), host(&lc.nas_endpoint), &lc.credentials.access_key_id, &lc.credentials.access_key_secret, None);
    for action in berth_cloud::wire::ACTIONS {
        let called = |l: &str| l.strip_prefix("ok ").and_then(|r| r.strip_prefix(action)).is_some_and(|r| r.is_empty() || r.starts_with(' '));
        assert!(out.lines().any(called), "the SDK run did not call {action}:\n{out}");
    }
    assert!(out.contains("ok a wrong secret refused with SignatureDoesNotMatch"), "{out}");
    assert!(out.contains("ok a VPC call sent to the ECS endpoint refused with InvalidAction.NotFound"), "{out}");
    assert!(lc.log().contains("DescribeInstanceTypes"), "the calls reached this local cloud");
}

#[tokio::test]
async fn the_official_sdks_sign_with_an_instances_role_credentials() {
    let lc = LocalCloud::start(LocalCloudOptions { no_dataplane: true, ..Default::default() });
    let admin = lc.client();
    let net = berth_tests::SampleNet::create(&admin, "10.71.0.0/16", "10.71.1.0/24").await;
    let instance = net.run(&admin, "ecs.g7.large", &net.sg).await;
    let url = format!("{}/_localcloud/metadata/{instance}/latest/meta-data/ram/security-credentials/berth-node", lc.endpoint);
    let doc = reqwest::get(url).await.unwrap().text().await.unwrap();
    let role = berth_cloud::credentials::parse_role_credentials("berth-node", &doc, 0).unwrap();
    let ep = host(&lc.endpoint).to_string();
    let out = tokio::task::spawn_blocking(move || run_sdk(&ep, &ep, &ep, &role.access_key_id, &role.access_key_secret, role.security_token.as_deref())).await.unwrap();
    assert!(out.contains("sdk: every call answered"), "{out}");
}

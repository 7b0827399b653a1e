//! The local cloud's `/metrics` on its API listener: calls counted by action and outcome (unknown
//! actions under one label), injected faults, gauges that follow the state; with the data plane and
//! a guest image, the guests, their restarts and the vRouter's drop counters.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use berth_cloud::api::{CreateEniRequest, InstanceFilter};
use berth_cloud::error::code;
use berth_cloud::params::Params;
use berth_cloud::{Cloud, HttpCloud};
use berth_tests::guest::GuestLeftovers;
use berth_tests::{LocalCloud, LocalCloudOptions, SampleNet, in_netns, is_root, nft_counter};

const WAIT: Duration = Duration::from_secs(30);

const FAMILIES: [&str; 7] = [
    "berth_localcloud_api_calls_total",
    "berth_localcloud_api_call_seconds",
    "berth_localcloud_faults_injected_total",
    "berth_localcloud_instances",
    "berth_localcloud_enis",
    "berth_localcloud_disks",
    "berth_localcloud_vswitch_free_ips",
];

async fn scrape(lc: &LocalCloud) -> String {
    // No admin header: a scraper has none.
    let resp = reqwest::get(format!("{}/metrics", lc.endpoint)).await.expect("GET /metrics");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers().get("content-type").and_then(|v| v.to_str().ok()), Some("text/plain; version=0.0.4; charset=utf-8"));
    resp.text().await.expect("the body")
}

/// The value of the sample written exactly as `series` (name and labels), if there is one.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn value(text: &str, series: &str) -> f64 {
    sample(text, series).unwrap_or_else(|| panic!("{series} is missing:\n{text}"))
}

fn declared(text: &str, family: &str) -> bool {
    text.contains(&format!("# HELP {family} ")) && text.contains(&format!("# TYPE {family} "))
}

/// One attempt per call: every call the test makes is one call the local cloud counts.
fn single_attempt(lc: &LocalCloud) -> HttpCloud {
    lc.client_with(|c| c.retry.max_attempts = 1)
}

#[tokio::test]
async fn api_calls_faults_and_resources_are_counted() {
    let lc = LocalCloud::start(LocalCloudOptions { no_dataplane: true, ..Default::default() });
    let cloud = single_attempt(&lc);

    let first = scrape(&lc).await;
    for family in FAMILIES {
        assert!(declared(&first, family), "{family} has no HELP or TYPE:\n{first}");
    }
    assert!(!first.contains("berth_localcloud_guests") && !first.contains("vrouter"), "no data plane, no plane families:\n{first}");
    assert_eq!(value(&first, "berth_localcloud_instances{state=\"Running\"}"), 0.0);
    assert_eq!(sample(&first, "berth_localcloud_api_calls_total{action=\"DescribeInstances\",outcome=\"ok\"}"), None);

    cloud.describe_instances(&InstanceFilter::default()).await.expect("DescribeInstances");
    cloud.describe_instances(&InstanceFilter::default()).await.expect("DescribeInstances");
    let err = cloud.call::<serde_json::Value>("DescribeInstances", Params::new().set("MaxResults", 0)).await.expect_err("MaxResults 0 is refused");
    assert!(err.is_code(code::INVALID_PARAMETER), "{err}");
    // An action the endpoint does not serve: the client names the product and the setting to fix.
    let err = cloud.call::<serde_json::Value>("DescribeEverything", Params::new()).await.expect_err("an unknown action is refused");
    let said = err.to_string();
    assert!(said.contains(code::INVALID_ACTION) && said.contains("cloud.endpoint"), "{said}");

    let text = scrape(&lc).await;
    assert_eq!(value(&text, "berth_localcloud_api_calls_total{action=\"DescribeInstances\",outcome=\"ok\"}"), 2.0);
    assert_eq!(value(&text, "berth_localcloud_api_calls_total{action=\"DescribeInstances\",outcome=\"InvalidParameter\"}"), 1.0);
    assert_eq!(value(&text, "berth_localcloud_api_calls_total{action=\"unknown\",outcome=\"InvalidAction.NotFound\"}"), 1.0);
    assert!(!text.contains("DescribeEverything"), "an unknown action's name became a label:\n{text}");
    assert_eq!(value(&text, "berth_localcloud_api_call_seconds_count{action=\"DescribeInstances\"}"), 3.0);
    assert_eq!(value(&text, "berth_localcloud_api_call_seconds_bucket{action=\"DescribeInstances\",le=\"+Inf\"}"), 3.0);
    assert!(value(&text, "berth_localcloud_api_call_seconds_sum{action=\"DescribeInstances\"}") > 0.0);

    // Injected faults: one failure of DescribeDisks, then a delay on every call.
    lc.set_faults(serde_json::json!({ "fail_actions": { "DescribeDisks": { "code": "InternalError", "count": 1 } } })).await;
    let err = cloud.describe_disks(&Default::default()).await.expect_err("the injected failure");
    assert!(err.is_code(code::INTERNAL_ERROR), "{err}");
    cloud.describe_disks(&Default::default()).await.expect("the count is spent");
    lc.set_faults(serde_json::json!({ "latency_ms": 30 })).await;
    cloud.describe_vpcs(None).await.expect("DescribeVpcs");
    lc.set_faults(serde_json::json!({})).await;
    let text = scrape(&lc).await;
    assert_eq!(value(&text, "berth_localcloud_faults_injected_total{kind=\"fail_action\"}"), 1.0);
    assert_eq!(value(&text, "berth_localcloud_faults_injected_total{kind=\"latency\"}"), 1.0);
    assert_eq!(value(&text, "berth_localcloud_faults_injected_total{kind=\"throttling\"}"), 0.0);
    assert_eq!(value(&text, "berth_localcloud_api_calls_total{action=\"DescribeDisks\",outcome=\"InternalError\"}"), 1.0);
    assert_eq!(value(&text, "berth_localcloud_api_calls_total{action=\"DescribeDisks\",outcome=\"ok\"}"), 1.0);
    assert_eq!(value(&text, "berth_localcloud_api_call_seconds_bucket{action=\"DescribeVpcs\",le=\"0.025\"}"), 0.0, "the 30 ms delay is in the time:\n{text}");

    // The gauges follow a create.
    let net = SampleNet::create(&cloud, "10.0.0.0/8", "10.77.1.0/24").await;
    let vsw_free = format!("berth_localcloud_vswitch_free_ips{{vswitch=\"{}\"}}", net.vsw);
    let free_before = value(&scrape(&lc).await, &vsw_free);
    let instance = net.run(&cloud, "ecs.g7.large", &net.sg).await;
    let eni = cloud.create_network_interface(&CreateEniRequest::secondary(net.vsw.clone(), vec![net.sg.clone()])).await.expect("CreateNetworkInterface");
    let text = scrape(&lc).await;
    assert_eq!(value(&text, "berth_localcloud_instances{state=\"Running\"}"), 1.0);
    assert_eq!(value(&text, "berth_localcloud_enis{status=\"InUse\"}"), 1.0, "the primary ENI");
    assert_eq!(value(&text, "berth_localcloud_enis{status=\"Available\"}"), 1.0, "the new ENI");
    assert_eq!(value(&text, &vsw_free), free_before - 2.0, "the primary and the new ENI take an address each");
    assert_eq!(value(&text, "berth_localcloud_api_calls_total{action=\"CreateNetworkInterface\",outcome=\"ok\"}"), 1.0);

    cloud.delete_network_interface(&eni.id).await.expect("DeleteNetworkInterface");
    cloud.delete_instances(std::slice::from_ref(&instance), true).await.expect("DeleteInstances");
    let text = scrape(&lc).await;
    assert_eq!(value(&text, "berth_localcloud_enis{status=\"Available\"}"), 0.0);
    assert_eq!(value(&text, "berth_localcloud_instances{state=\"Running\"}"), 0.0);
}

/// Polls the metrics until `ok` holds of them; panics with them and the log after [`WAIT`].
async fn wait_for_metrics(lc: &LocalCloud, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = scrape(lc).await;
        if ok(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "{what} not within {WAIT:?}:\n{text}\n{}", lc.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn guests_restarts_and_vrouter_drops_are_reported_with_the_data_plane() {
    if !is_root() {
        eprintln!("skipped: needs root (namespaces, veths, guests)");
        return;
    }
    let image_dir = tempfile::Builder::new().prefix("berth-image-").tempdir().unwrap();
    let image: PathBuf = image_dir.path().join("image.toml");
    std::fs::write(
        &image,
        r#"
stop_grace_secs = 2

[[service]]
name = "flaky"
command = ["sh", "-c", "exit 3"]
restart = "on-failure"

[[service]]
name = "steady"
command = ["sleep", "600"]
"#,
    )
    .unwrap();
    let lc = LocalCloud::start(LocalCloudOptions { image: Some(image), ..Default::default() });
    let _leftovers = GuestLeftovers::new(&lc, "");
    let cloud = lc.client();

    let text = scrape(&lc).await;
    assert!(declared(&text, "berth_localcloud_guests") && declared(&text, "berth_localcloud_guest_restarts_total"), "{text}");
    assert!(declared(&text, "berth_localcloud_vrouter_dropped_packets_total"), "{text}");
    assert_eq!(value(&text, "berth_localcloud_vrouter_dropped_packets_total{reason=\"spoofed_ip\"}"), 0.0, "no VPC yet");

    let net = SampleNet::create(&cloud, "10.0.0.0/8", "10.78.1.0/24").await;
    let instance = net.run(&cloud, "ecs.g7.large", &net.sg).await;
    wait_for_metrics(&lc, "a running guest whose flaky service was restarted", |t| {
        sample(t, "berth_localcloud_guests{state=\"running\"}") == Some(1.0)
            && sample(t, "berth_localcloud_guest_restarts_total{service=\"flaky\"}").is_some_and(|n| n >= 1.0)
            && sample(t, "berth_localcloud_guest_services{state=\"running\"}").is_some_and(|n| n >= 1.0)
    })
    .await;

    // A packet from an address the cloud never gave the instance: the vRouter drops and counts it.
    let vpc_ns = PathBuf::from(format!("/run/netns/{}-{}", lc.prefix, net.vpc));
    let before = value(&scrape(&lc).await, "berth_localcloud_vrouter_dropped_packets_total{reason=\"spoofed_ip\"}");
    let netns = lc.instance_netns(&instance);
    let spoofed = Ipv4Addr::new(10, 78, 1, 200);
    let (ok, out) = in_netns(&netns, &["ip", "addr", "add", &format!("{spoofed}/32"), "dev", "eth0"]);
    assert!(ok, "{out}");
    // To the vSwitch's gateway, on the vRouter.
    let (answered, _) = in_netns(&netns, &["ping", "-c", "2", "-i", "0.2", "-W", "1", "-I", &spoofed.to_string(), "10.78.1.253"]);
    assert!(!answered, "a spoofed source must not pass the vRouter");
    let text = scrape(&lc).await;
    let after = value(&text, "berth_localcloud_vrouter_dropped_packets_total{reason=\"spoofed_ip\"}");
    assert!(after >= before + 2.0, "the two spoofed pings are counted ({before} → {after})");
    assert_eq!(after, nft_counter(&vpc_ns, "spoofed_ip") as f64, "the metric is the vRouter's counter");

    cloud.delete_instances(std::slice::from_ref(&instance), true).await.expect("DeleteInstances");
    wait_for_metrics(&lc, "the guest gone", |t| {
        sample(t, "berth_localcloud_guests{state=\"running\"}") == Some(0.0) && sample(t, "berth_localcloud_guests{state=\"stopping\"}") == Some(0.0)
    })
    .await;
}

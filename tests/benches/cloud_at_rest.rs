//! Cloud API calls per minute a node makes at rest: an agent on a node holding 30 pods' addresses,
//! no churn, its warm pool settled; counted by the agent's own call metrics, by action, over a
//! window of several reconcile periods (the goal: at most 2 a minute, every list paged).
//!
//! `cargo build --release --workspace --bins && cargo bench -p berth-tests --bench cloud_at_rest`
//! (`BERTH_AT_REST_SECS` sets the window, 180 s by default).

use std::collections::BTreeMap;
use std::time::Duration;

use berth_proto::agent::v1 as pb;
use berth_tests::agent::AgentProcess;
use berth_tests::{LocalCloud, LocalCloudOptions, SampleNet};

const PODS: usize = 30;

/// The agent's call counts by action (every outcome).
async fn calls_by_action(agent: &AgentProcess) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for line in agent.metrics().await.lines().filter(|l| l.starts_with("berth_agent_cloud_call_seconds_count")) {
        let action = line.split("action=\"").nth(1).and_then(|r| r.split('"').next()).unwrap_or("?").to_string();
        let n: u64 = line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0);
        *out.entry(action).or_default() += n;
    }
    out
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let window = Duration::from_secs(std::env::var("BERTH_AT_REST_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(180));
    let lc = LocalCloud::start(LocalCloudOptions::default());
    let cloud = lc.client();
    let net = SampleNet::create(&cloud, "10.96.0.0/16", "10.96.0.0/20").await;
    let node = net.run(&cloud, "ecs.g7.xlarge", &net.sg).await;
    let agent = AgentProcess::start(&lc, &node, &[]);
    let mut client = agent.client().await;
    for i in 0..PODS {
        let key = pb::AllocationKey { container_id: format!("rest{i}"), ifname: "eth0".into() };
        let req = pb::AllocateIpRequest { key: Some(key), mode: pb::NetworkMode::Shared as i32, want_ipv4: true, ..Default::default() };
        client.allocate_ip(req).await.expect("AllocateIp");
    }
    // Let the warm pool refill and settle before counting.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let before = calls_by_action(&agent).await;
    tokio::time::sleep(window).await;
    let after = calls_by_action(&agent).await;
    let delta: BTreeMap<&String, u64> = after.iter().map(|(a, n)| (a, n - before.get(a).copied().unwrap_or(0))).filter(|(_, n)| *n > 0).collect();
    let total: u64 = delta.values().sum();
    println!(
        "cloud API calls at rest, a node with {PODS} pods: {total} in {} s = {:.2} per minute ({delta:?})",
        window.as_secs(),
        total as f64 * 60.0 / window.as_secs_f64()
    );
}

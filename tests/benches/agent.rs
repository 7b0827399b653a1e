//! The agent's footprint and recovery: resident memory idle and with 200 allocations, time from a
//! `kill -9` restart to ready with them, and cloud API calls per pod over a churn of 1,000 pods
//! with the default warm pool.
//!
//! `cargo build --release --workspace --bins && cargo bench -p berth-tests --bench agent`
//! (200 allocations: the largest shared-mode node of the catalogue, ecs.c7.4xlarge, holds 203.)

use std::time::{Duration, Instant};

use berth_proto::agent::v1 as pb;
use berth_tests::agent::AgentProcess;
use berth_tests::{LocalCloud, LocalCloudOptions, SampleNet};

const ALLOCATIONS: usize = 200;

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the agent's status");
    let kib: f64 = status.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()).expect("VmRSS");
    kib / 1024.0
}

fn request(c: &str) -> pb::AllocateIpRequest {
    pb::AllocateIpRequest { key: Some(pb::AllocationKey { container_id: c.into(), ifname: "eth0".into() }), mode: pb::NetworkMode::Shared as i32, want_ipv4: true, ..Default::default() }
}


#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let lc = LocalCloud::start(LocalCloudOptions::default());
    let cloud = lc.client();
    let net = SampleNet::create(&cloud, "10.97.0.0/16", "10.97.0.0/20").await;
    let node = net.run(&cloud, "ecs.c7.4xlarge", &net.sg).await;
    let mut agent = AgentProcess::start(&lc, &node, &[]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = rss_mib(agent.pid().unwrap());

    let mut client = agent.client().await;
    for i in 0..ALLOCATIONS {
        client.allocate_ip(request(&format!("p{i}"))).await.expect("AllocateIp");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let loaded = rss_mib(agent.pid().unwrap());
    println!("agent resident memory: idle {idle:.1} MiB, with {ALLOCATIONS} allocations {loaded:.1} MiB");

    let mut readies = Vec::new();
    for _ in 0..5 {
        agent.restart();
        readies.push(agent.last_ready);
    }
    readies.sort();
    println!("kill -9, restart to ready (conflist written) with {ALLOCATIONS} allocations: median {:.0} ms, max {:.0} ms (5 restarts, process start included)", readies[2].as_secs_f64() * 1000.0, readies[4].as_secs_f64() * 1000.0);

    let mut client = agent.client().await;
    for i in 0..ALLOCATIONS {
        client.release_ip(pb::ReleaseIpRequest { key: request(&format!("p{i}")).key }).await.expect("ReleaseIp");
    }
    // A churn of 1,000 pods, 8 at a time, against the default warm targets.
    let before = agent.cloud_calls().await;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..8 {
        let mut c = client.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..125 {
                let id = format!("churn{w}-{i}");
                c.allocate_ip(request(&id)).await.expect("AllocateIp");
                c.release_ip(pb::ReleaseIpRequest { key: request(&id).key }).await.expect("ReleaseIp");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let calls = agent.cloud_calls().await - before;
    println!("cloud API calls over a churn of 1,000 pods (8 in parallel, default warm pool): {calls} ({:.3} per pod), {:.0} allocate+release pairs/s", calls as f64 / 1000.0, 1000.0 / started.elapsed().as_secs_f64());
}

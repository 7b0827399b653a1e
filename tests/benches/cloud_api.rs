//! Benchmark of the cloud API through the real client against the local cloud (API only):
//! DescribeNetworkInterfaces requests/s with 1,000 ENIs, AssignPrivateIpAddresses latency p50/p99.
//!
//! Run: `cargo build --release --workspace --bins && cargo bench -p berth-tests --bench cloud_api`

use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_cloud::api::{Addresses, CreateEniRequest, CreateVSwitchRequest, EniFilter, RunInstancesRequest};
use berth_cloud::model::{EniStatus, InstanceStatus};
use berth_cloud::ratelimit::Limit;
use berth_cloud::{Cloud, HttpCloud, wait};
use berth_tests::{LocalCloud, LocalCloudOptions};

const ENIS: usize = 1000;
const CONCURRENCY: usize = 8;
const DESCRIBE_FOR: Duration = Duration::from_secs(5);
const ASSIGNS: usize = 500;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let lc = LocalCloud::start(LocalCloudOptions { no_dataplane: true, ..Default::default() });
    // No client-side rate limit: the benchmark measures the service and the client, not the bucket.
    let cloud = Arc::new(lc.client_with(|c| c.default_limit = Limit { rate_per_sec: 1e9, burst: 1_000_000 }));

    let vpc = cloud.create_vpc("10.0.0.0/8", "bench", false, None).await.unwrap();
    let vsw = cloud
        .create_vswitch(&CreateVSwitchRequest { vpc_id: vpc.clone(), zone_id: "local-1a".into(), cidr_block: "10.16.0.0/16".into(), name: "bench".into(), ..Default::default() })
        .await
        .unwrap();
    let sg = cloud.create_security_group(&vpc, "bench", None).await.unwrap();

    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..CONCURRENCY {
        let cloud = cloud.clone();
        let (vsw, sg) = (vsw.clone(), sg.clone());
        tasks.push(tokio::spawn(async move {
            for _ in (worker..ENIS).step_by(CONCURRENCY) {
                cloud
                    .create_network_interface(&CreateEniRequest::secondary(vsw.clone(), vec![sg.clone()]))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let create_rate = ENIS as f64 / started.elapsed().as_secs_f64();

    // Every ENI of the VPC: 1,000 ENIs in two pages of 500.
    let all = cloud.describe_network_interfaces(&EniFilter { vpc_id: Some(vpc.clone()), ..Default::default() }).await.unwrap();
    assert!(all.len() >= ENIS);
    let (list_rate, list_pages) = describe_rate(&cloud, EniFilter { vpc_id: Some(vpc.clone()), ..Default::default() }, 2).await;
    let one = EniFilter { ids: vec![all[ENIS / 2].id.clone()], ..Default::default() };
    let (one_rate, _) = describe_rate(&cloud, one, 1).await;

    // AssignPrivateIpAddresses on an attached ENI of a large instance.
    let instance = cloud
        .run_instances(&RunInstancesRequest { instance_type: "ecs.g7.4xlarge".into(), vswitch_id: vsw.clone(), security_group_ids: vec![sg.clone()], amount: 1, name: "bench".into(), image: Some(berth_cloud::api::BootImage::Id("berth-node".into())), ..Default::default() })
        .await
        .unwrap()
        .remove(0);
    wait::instance_status(&*cloud, &instance, InstanceStatus::Running, Duration::from_secs(30)).await.unwrap();
    let eni = all[0].id.clone();
    cloud.attach_network_interface(&eni, &instance, None).await.unwrap();
    wait::eni_status(&*cloud, &eni, EniStatus::InUse, Duration::from_secs(30)).await.unwrap();
    let mut latencies = Vec::with_capacity(ASSIGNS);
    for _ in 0..ASSIGNS {
        let t = Instant::now();
        let ips = cloud.assign_private_ips(&eni, &Addresses::Count(1), None).await.unwrap();
        latencies.push(t.elapsed());
        cloud.unassign_private_ips(&eni, &ips).await.unwrap();
    }
    latencies.sort();

    println!("cloud API through berth-cloud's HttpCloud against berth-localcloud --no-dataplane");
    println!("CreateNetworkInterface ({CONCURRENCY} concurrent): {create_rate:.0} ENIs/s");
    println!("DescribeNetworkInterfaces, all {} ENIs of the VPC ({list_pages} pages per listing, {CONCURRENCY} concurrent): {list_rate:.0} requests/s", all.len());
    println!("DescribeNetworkInterfaces, one ENI by ID among {} ({CONCURRENCY} concurrent): {one_rate:.0} requests/s", all.len());
    println!(
        "AssignPrivateIpAddresses, 1 IP, sequential x{ASSIGNS}: p50 {:.2} ms, p99 {:.2} ms",
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3
    );
}

/// Requests per second of a Describe call with `CONCURRENCY` callers for `DESCRIBE_FOR`.
async fn describe_rate(cloud: &Arc<HttpCloud>, filter: EniFilter, pages: usize) -> (f64, usize) {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let (cloud, filter) = (cloud.clone(), filter.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0usize;
            while started.elapsed() < DESCRIBE_FOR {
                cloud.describe_network_interfaces(&filter).await.unwrap();
                n += pages;
            }
            n
        }));
    }
    let mut requests = 0;
    for t in tasks {
        requests += t.await.unwrap();
    }
    (requests as f64 / started.elapsed().as_secs_f64(), pages)
}

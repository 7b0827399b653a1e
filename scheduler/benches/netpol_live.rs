//! NetworkPolicy propagation end to end over the scheduler's real interface: the release
//! `berth-scheduler` binary (journal store on a disk), 1,000 simulated agents holding ReportNode
//! streams, 10,000 pods in 50 namespaces submitted through SubmitPod and reported running with
//! their addresses, then 1,000 policies applied through ApplyNetworkPolicy (20 per namespace, each
//! selecting one app and allowing two others, one of them from every namespace, as the in-process
//! `netpol` bench). Measured, p50/p99 over the changes:
//! 1. a policy applied (a new peer label) → the new version received by every node running a pod
//!    it selects (the API call included);
//! 2. a new pod of a peer label reported running by its node → its address received by every
//!    node running a pod of a policy that allows that label.
//!
//! What the agents then do with an update (one nft transaction per pod) is measured by
//! `cargo bench -p berth-agent --bench netpol`.
//!
//! `cargo build --release -p berth-scheduler && cargo bench -p berth-scheduler --bench netpol_live`
//! (`BERTH_NETPOL_NODES`, 1,000; `BERTH_NETPOL_CHANGES`, 50.)

mod common;
#[path = "common/process.rs"]
mod process;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use berth_proto::cluster::v1 as pb;
use berth_proto::cluster::v1::scheduler_client::SchedulerClient;
use berth_scheduler_client::NodeReporter;
use common::{Rng, node_report, percentile};
use process::{SchedulerProcess, scheduler_binary, state_parent};
use tonic::transport::{Channel, Endpoint};

const PODS_PER_NODE: usize = 10;
const NAMESPACES: usize = 50;
const POLICIES_PER_NAMESPACE: usize = 20;
const APPS: usize = 40;
const STREAMS_PER_CONNECTION: usize = 100;
const REPORT_EVERY: Duration = Duration::from_secs(2);
/// A change is over when no node received anything of it for this long.
const QUIET: Duration = Duration::from_millis(1500);

fn number(var: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(var) {
        Ok(v) => v.replace(['_', ','], "").parse().with_context(|| format!("{var}={v:?} is not a number")),
        Err(_) => Ok(default),
    }
}

fn app(i: usize) -> String {
    format!("a{}", i % APPS)
}

fn selector(app: &str) -> pb::LabelSelector {
    pb::LabelSelector { match_labels: [("app".to_string(), app.to_string())].into(), match_expressions: vec![] }
}

/// Policy `k` of namespace `ns`: selects app `k`, allows app `peer` of its namespace and app
/// `peer + 1` of every namespace on TCP 80.
fn policy(ns: usize, k: usize, peer: usize) -> pb::NetworkPolicy {
    let rule = pb::NetworkPolicyRule {
        peers: vec![
            pb::NetworkPolicyPeer { pod_selector: Some(selector(&app(peer))), ..Default::default() },
            pb::NetworkPolicyPeer { pod_selector: Some(selector(&app(peer + 1))), namespace_selector: Some(pb::LabelSelector::default()), ip_block: None },
        ],
        ports: vec![pb::NetworkPolicyPort { protocol: "TCP".into(), port: 80, end_port: 0 }],
    };
    pb::NetworkPolicy { namespace: format!("ns{ns}"), name: format!("p{k}"), spec: Some(pb::NetworkPolicySpec { pod_selector: Some(selector(&app(k))), ingress: vec![rule], ..Default::default() }), version: 0 }
}

/// Which nodes received something, and when.
type Arrivals = Vec<(usize, Instant)>;

/// What the simulated agents saw, shared by their tasks.
#[derive(Default)]
struct Seen {
    connected: AtomicUsize,
    running: AtomicUsize,
    /// (namespace, app) → the nodes running such a pod.
    hosts: Mutex<HashMap<(String, String), BTreeSet<usize>>>,
    /// (policy key, version) → when each node received it.
    versions: Mutex<HashMap<(String, u64), Arrivals>>,
    /// A peer address being watched → when each node received a policy holding it.
    addresses: Mutex<HashMap<String, Arrivals>>,
    /// Pods to report at once (their node sends a report as soon as it runs one): key → its
    /// address and when the report holding it was sent.
    watched: Mutex<HashMap<String, Option<(String, Instant)>>>,
    lost: AtomicUsize,
}

/// One agent: runs what it is told (each pod gets an address of the node's own range), reports
/// every 2 s and at once when it starts a watched pod, and notes every policy update it receives.
async fn agent(i: usize, first: pb::NodeReport, channel: Channel, seen: Arc<Seen>) {
    let mut reporter = match NodeReporter::over(channel, first.clone()).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("agent {i}: {e}");
            seen.lost.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    seen.connected.fetch_add(1, Ordering::Relaxed);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (i as u64 + 1));
    let mut running: Vec<pb::PodReport> = Vec::new();
    let mut next_report = tokio::time::Instant::now() + Duration::from_millis(rng.below(REPORT_EVERY.as_millis() as u64));
    loop {
        tokio::select! {
            ins = reporter.instruction() => {
                let mut report_now = false;
                let Ok(Some(ins)) = ins else {
                    seen.lost.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                let at = Instant::now();
                if let Some(update) = &ins.policy {
                    let mut versions = seen.versions.lock().unwrap();
                    let mut addresses = seen.addresses.lock().unwrap();
                    for p in &update.upsert {
                        versions.entry((p.key.clone(), p.version)).or_default().push((i, at));
                        for cidr in p.ingress_rules.iter().flat_map(|r| &r.cidrs) {
                            if let Some(seen_by) = addresses.get_mut(&cidr.cidr) && !seen_by.iter().any(|(n, _)| *n == i) {
                                seen_by.push((i, at));
                            }
                        }
                    }
                }
                let mut started = Vec::new();
                for spec in ins.run {
                    let n = running.len();
                    let ip = format!("10.{}.{}.{}", i / 250, i % 250, n + 2);
                    let key = format!("{}/{}", spec.namespace, spec.name);
                    if seen.watched.lock().unwrap().contains_key(&key) {
                        seen.addresses.lock().unwrap().insert(format!("{ip}/32"), Vec::new());
                        started.push((key, ip.clone()));
                        report_now = true;
                    }
                    seen.hosts.lock().unwrap().entry((spec.namespace.clone(), spec.labels.get("app").cloned().unwrap_or_default())).or_default().insert(i);
                    running.push(pb::PodReport { namespace: spec.namespace, name: spec.name, phase: pb::PodPhase::Running as i32, pod_ip: ip.clone(), message: String::new(), pod_ips: vec![ip], usage: None });
                    seen.running.fetch_add(1, Ordering::Relaxed);
                }
                if report_now {
                    let mut report = first.clone();
                    report.pods = running.clone();
                    report.sent_at = berth_scheduler::server::now_ms() as i64;
                    let sent = Instant::now();
                    if reporter.report(report).await.is_err() {
                        seen.lost.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    let mut watched = seen.watched.lock().unwrap();
                    for (key, ip) in started {
                        watched.insert(key, Some((format!("{ip}/32"), sent)));
                    }
                }
            }
            () = tokio::time::sleep_until(next_report) => {
                next_report += Duration::from_millis(1_800 + rng.below(400));
                let mut report = first.clone();
                report.pods = running.clone();
                report.sent_at = berth_scheduler::server::now_ms() as i64;
                if reporter.report(report).await.is_err() {
                    seen.lost.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
    }
}

async fn submit(client: &mut SchedulerClient<Channel>, namespace: String, name: String, app: String) -> anyhow::Result<()> {
    let spec = pb::PodSpec { namespace, name, cpu_millicores: 10, memory_bytes: 16 << 20, network_mode: pb::NetworkMode::Shared as i32, labels: [("app".to_string(), app)].into(), ..Default::default() };
    client.submit_pod(pb::SubmitPodRequest { spec: Some(spec) }).await.context("SubmitPod")?;
    Ok(())
}

/// Waits until `arrivals()` has not grown for [`QUIET`] (or 30 s passed); the arrivals then.
async fn settle(arrivals: impl Fn() -> Arrivals) -> Arrivals {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = (0, Instant::now());
    loop {
        let now = arrivals();
        if now.len() != last.0 {
            last = (now.len(), Instant::now());
        } else if last.1.elapsed() >= QUIET || Instant::now() > deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let nodes = number("BERTH_NETPOL_NODES", 1_000)?;
    let changes = number("BERTH_NETPOL_CHANGES", 50)?;
    if nodes == 0 || changes == 0 {
        bail!("BERTH_NETPOL_NODES and BERTH_NETPOL_CHANGES must be at least 1");
    }
    let binary = scheduler_binary()?;
    let (parent, _) = state_parent()?;
    let mut scheduler = SchedulerProcess::start(&binary, tempfile::tempdir_in(&parent)?, None)?;
    scheduler.serving().await?;
    let endpoint = Endpoint::from_shared(scheduler.url.clone())?;

    let seen = Arc::new(Seen::default());
    let mut rng = Rng(7);
    let mut channel = endpoint.connect().await?;
    for i in 0..nodes {
        if i % STREAMS_PER_CONNECTION == 0 {
            channel = endpoint.connect().await?;
        }
        tokio::spawn(agent(i, node_report(i, &mut rng), channel.clone(), seen.clone()));
    }
    let mut client = SchedulerClient::new(endpoint.connect().await?);
    let t = Instant::now();
    while seen.connected.load(Ordering::Relaxed) < nodes {
        if t.elapsed() > Duration::from_secs(60) {
            bail!("only {} of {nodes} agents connected after 60 s", seen.connected.load(Ordering::Relaxed));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The nodes Ready before pods come, or the first ones get them all.
    tokio::time::sleep(REPORT_EVERY + Duration::from_millis(500)).await;

    let total = nodes * PODS_PER_NODE;
    for i in 0..total {
        submit(&mut client, format!("ns{}", i % NAMESPACES), format!("pod{i}"), app(i / NAMESPACES)).await?;
    }
    while seen.running.load(Ordering::Relaxed) < total {
        if t.elapsed() > Duration::from_secs(300) {
            bail!("only {} of {total} pods reached their agents", seen.running.load(Ordering::Relaxed));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Every address reported once.
    tokio::time::sleep(REPORT_EVERY + Duration::from_millis(500)).await;
    let t = Instant::now();
    let mut peers: Vec<Vec<usize>> = vec![vec![0; POLICIES_PER_NAMESPACE]; NAMESPACES];
    for (ns, row) in peers.iter_mut().enumerate() {
        for (k, peer) in row.iter_mut().enumerate() {
            *peer = k + 7;
            client.apply_network_policy(pb::ApplyNetworkPolicyRequest { policy: Some(policy(ns, k, *peer)) }).await.context("ApplyNetworkPolicy")?;
        }
    }
    println!("netpol_live: {nodes} agents, {total} pods running, {} policies applied in {:.1} s", NAMESPACES * POLICIES_PER_NAMESPACE, t.elapsed().as_secs_f64());
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 1. A policy applied with a new peer.
    let (mut applied, mut told) = (Vec::new(), 0);
    for r in 0..changes {
        let (ns, k) = (r % NAMESPACES, (r * 7) % POLICIES_PER_NAMESPACE);
        peers[ns][k] += 13;
        let t0 = Instant::now();
        let answer = client.apply_network_policy(pb::ApplyNetworkPolicyRequest { policy: Some(policy(ns, k, peers[ns][k])) }).await.context("ApplyNetworkPolicy")?.into_inner();
        let key = (format!("ns{ns}/p{k}"), answer.version);
        let wanted = seen.hosts.lock().unwrap().get(&(format!("ns{ns}"), app(k))).cloned().unwrap_or_default();
        let got = settle(|| seen.versions.lock().unwrap().get(&key).cloned().unwrap_or_default()).await;
        let reached: BTreeSet<usize> = got.iter().map(|(n, _)| *n).collect();
        if !wanted.is_subset(&reached) {
            bail!("policy {} version {}: {} of the {} nodes running a pod it selects got it", key.0, key.1, wanted.intersection(&reached).count(), wanted.len());
        }
        let last = got.iter().filter(|(n, _)| wanted.contains(n)).map(|(_, at)| at.duration_since(t0)).max().unwrap_or_default();
        applied.push(last.as_secs_f64() * 1e3);
        told += wanted.len();
    }
    applied.sort_by(f64::total_cmp);
    println!(
        "a policy applied → its new version at every node running a pod it selects: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms ({} nodes per change on average)",
        percentile(&applied, 0.5),
        percentile(&applied, 0.99),
        applied.last().copied().unwrap_or(0.0),
        told / changes
    );

    // 2. A new pod of a peer label, reported running with its address.
    let (mut peer_times, mut told) = (Vec::new(), 0);
    for r in 0..changes {
        let ns = (r * 3) % NAMESPACES;
        let peer_app = peers[ns][r % POLICIES_PER_NAMESPACE];
        let name = format!("probe{r}");
        seen.watched.lock().unwrap().insert(format!("ns{ns}/{name}"), None);
        submit(&mut client, format!("ns{ns}"), name.clone(), app(peer_app)).await?;
        // The nodes that need its address: those running a pod of a policy allowing its label
        // (from its own namespace, or `peer + 1` from every namespace).
        let mut wanted = BTreeSet::new();
        for (pns, row) in peers.iter().enumerate() {
            for (k, &peer) in row.iter().enumerate() {
                if (pns == ns && peer % APPS == peer_app % APPS) || (peer + 1) % APPS == peer_app % APPS {
                    wanted.extend(seen.hosts.lock().unwrap().get(&(format!("ns{pns}"), app(k))).cloned().unwrap_or_default());
                }
            }
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        let (cidr, sent) = loop {
            if let Some(Some(reported)) = seen.watched.lock().unwrap().get(&format!("ns{ns}/{name}")).cloned() {
                break reported;
            }
            if Instant::now() > deadline {
                bail!("the probe pod ns{ns}/{name} was not reported running in 20 s");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let got = settle(|| seen.addresses.lock().unwrap().get(&cidr).cloned().unwrap_or_default()).await;
        let reached: BTreeSet<usize> = got.iter().map(|(n, _)| *n).collect();
        if !wanted.is_subset(&reached) {
            bail!("the address {cidr} of ns{ns}/{name}: {} of the {} nodes that need it got it", wanted.intersection(&reached).count(), wanted.len());
        }
        let last = got.iter().filter(|(n, _)| wanted.contains(n)).map(|(_, at)| at.saturating_duration_since(sent)).max().unwrap_or_default();
        peer_times.push(last.as_secs_f64() * 1e3);
        told += wanted.len();
    }
    peer_times.sort_by(f64::total_cmp);
    println!(
        "a new peer pod reported running → its address at every node that needs it: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms ({} nodes per change on average)",
        percentile(&peer_times, 0.5),
        percentile(&peer_times, 0.99),
        peer_times.last().copied().unwrap_or(0.0),
        told / changes
    );
    if seen.lost.load(Ordering::Relaxed) > 0 {
        bail!("{} report streams were lost during the run", seen.lost.load(Ordering::Relaxed));
    }
    drop(scheduler);
    Ok(())
}

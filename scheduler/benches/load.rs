//! The scheduler under load over its real interface: the release `berth-scheduler` binary with
//! its journal store on a disk, N simulated agents holding ReportNode streams (reporting every
//! 2 s what they were told to run), and concurrent clients calling SubmitPod.
//!
//! Prints pods/s from the first submit until every pod was bound (by the answers, and as received
//! by the agents), SubmitPod p50/p99/max, the group commit's mean events per append, the
//! scheduler's RSS, the load average and the CPU the scheduler and this generator used.
//!
//! `cargo build --release -p berth-scheduler && cargo bench -p berth-scheduler --bench load [-- rss] [-- etcd]`
//!
//! `etcd` (or `BERTH_LOAD_STORE=etcd`) runs the scheduler on three real etcd members on loopback,
//! their data beside the scheduler's, instead of its journal.
//!
//! `BERTH_LOAD_NODES` (5,000), `BERTH_LOAD_PODS` (50,000; 150,000 with `rss`), `BERTH_LOAD_CLIENTS`
//! (32), `BERTH_LOAD_RSS=1` (as `rss`: RSS with every pod bound and reported), `BERTH_SCHEDULER_BIN`
//! (default: `berth-scheduler` beside this bench's target directory), `BERTH_LOAD_DIR` (where the
//! temporary state goes; default: cargo's target tmp directory, which must not be tmpfs).

mod common;
#[path = "common/etcd.rs"]
mod etcd;
#[path = "common/process.rs"]
mod process;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use berth_proto::cluster::v1 as pb;
use berth_proto::cluster::v1::scheduler_client::SchedulerClient;
use berth_scheduler::placement::{Resources, demand_of};
use berth_scheduler_client::NodeReporter;
use common::{Rng, node_report, percentile, pod_spec};
use process::{SchedulerProcess, scheduler_binary, scrape, state_parent};
use tonic::transport::{Channel, Endpoint};

/// Report streams per HTTP/2 connection (servers cap concurrent streams per connection).
const STREAMS_PER_CONNECTION: usize = 100;
/// SubmitPod clients per connection.
const CLIENTS_PER_CONNECTION: usize = 8;
const REPORT_EVERY: Duration = Duration::from_secs(2);
/// Giving up when no pod reached an agent for this long.
const STALL: Duration = Duration::from_secs(20);

struct Settings {
    nodes: usize,
    pods: usize,
    clients: usize,
    rss: bool,
    /// The scheduler's store on three real etcd members instead of its journal.
    etcd: bool,
}

impl Settings {
    fn from_env() -> anyhow::Result<Settings> {
        fn number(var: &str, default: usize) -> anyhow::Result<usize> {
            match std::env::var(var) {
                Ok(v) => v.replace(['_', ','], "").parse().with_context(|| format!("{var}={v:?} is not a number")),
                Err(_) => Ok(default),
            }
        }
        // cargo passes --bench; `rss` and `etcd` are the arguments of ours.
        let arg = |a: &str| std::env::args().skip(1).any(|x| x == a);
        let rss = arg("rss") || std::env::var("BERTH_LOAD_RSS").is_ok_and(|v| v == "1");
        let etcd = arg("etcd") || std::env::var("BERTH_LOAD_STORE").is_ok_and(|v| v == "etcd");
        let s = Settings { nodes: number("BERTH_LOAD_NODES", 5_000)?, pods: number("BERTH_LOAD_PODS", if rss { 150_000 } else { 50_000 })?, clients: number("BERTH_LOAD_CLIENTS", 32)?, rss, etcd };
        if s.nodes == 0 || s.pods == 0 || s.clients == 0 {
            bail!("BERTH_LOAD_NODES, BERTH_LOAD_PODS and BERTH_LOAD_CLIENTS must be at least 1");
        }
        Ok(s)
    }
}

/// A process's status line, in KiB (VmRSS, VmHWM).
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// CPU seconds (user + system) a process used so far; /proc counts in USER_HZ, 100 on Linux.
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(") ").map(|(_, rest)| rest.split(' ').collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (ticks(11) + ticks(12)) as f64 / 100.0
}

fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg").ok().and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok())).unwrap_or(0.0)
}

/// What the simulated agents saw, shared by their tasks.
#[derive(Default)]
struct AgentCounts {
    connected: AtomicUsize,
    /// Pods received in a run instruction for the first time (over every agent).
    received: AtomicUsize,
    /// Run entries for a pod the agent already ran (a full instruction after a reconnect).
    repeated: AtomicUsize,
    reports: AtomicU64,
    streams_lost: AtomicUsize,
    /// Run entries per agent.
    per_agent: Vec<AtomicUsize>,
}

/// One agent: reports its node every 2 s (jittered) with free = allocatable minus the pods it was
/// told to run, those pods listed as running; takes removals first, then runs.
async fn agent(i: usize, first: pb::NodeReport, channel: Channel, counts: Arc<AgentCounts>) {
    let allocatable = Resources::from(first.allocatable.as_ref().expect("node_report sets allocatable"));
    let node = first.identity.as_ref().map(|id| id.instance_id.clone()).unwrap_or_default();
    let mut reporter = match NodeReporter::over(channel, first.clone()).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("agent {node}: {e}");
            counts.streams_lost.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    counts.connected.fetch_add(1, Ordering::Relaxed);
    let mut rng = Rng(0x5851_f42d_4c95_7f2d ^ (i as u64 + 1));
    let mut running: HashMap<String, (pb::PodReport, Resources)> = HashMap::new();
    let mut used = Resources::default();
    let mut next_report = tokio::time::Instant::now() + Duration::from_millis(rng.below(REPORT_EVERY.as_millis() as u64));
    loop {
        tokio::select! {
            ins = reporter.instruction() => {
                let ins = match ins {
                    Ok(Some(ins)) => ins,
                    Ok(None) | Err(_) => {
                        counts.streams_lost.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                };
                for key in &ins.remove {
                    if let Some((_, demand)) = running.remove(key) {
                        used = used.saturating_sub(&demand);
                    }
                }
                counts.per_agent[i].fetch_add(ins.run.len(), Ordering::Relaxed);
                for spec in ins.run {
                    let key = format!("{}/{}", spec.namespace, spec.name);
                    if running.contains_key(&key) {
                        counts.repeated.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let demand = demand_of(&spec);
                    used = used.saturating_add(&demand);
                    let n = running.len();
                    let status = pb::PodReport { namespace: spec.namespace.clone(), name: spec.name.clone(), phase: pb::PodPhase::Running as i32, pod_ip: format!("10.{}.{}.{}", i / 256 % 256, i % 256, n % 250 + 2), message: String::new(), pod_ips: Vec::new(), usage: None };
                    running.insert(key, (status, demand));
                    counts.received.fetch_add(1, Ordering::Relaxed);
                }
            }
            () = tokio::time::sleep_until(next_report) => {
                let mut report = first.clone();
                report.free = Some(pb::Resources::from(&allocatable.saturating_sub(&used)));
                report.pods = running.values().map(|(s, _)| s.clone()).collect();
                report.sent_at = berth_scheduler::server::now_ms() as i64;
                if reporter.report(report).await.is_err() {
                    counts.streams_lost.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                counts.reports.fetch_add(1, Ordering::Relaxed);
                // 2 s ± 10%, as agents' clocks drift apart.
                next_report += Duration::from_millis(1_800 + rng.below(400));
            }
        }
    }
}

/// What the SubmitPod clients measured.
#[derive(Default)]
struct Submitted {
    latencies_ms: Vec<f64>,
    bound: usize,
    pending: usize,
    errors: usize,
    first_error: Option<String>,
    last_answer: Option<Instant>,
}

async fn submit_client(channel: Channel, next: Arc<AtomicUsize>, pods: usize, answered: Arc<AtomicUsize>) -> Submitted {
    let mut client = SchedulerClient::new(channel);
    let mut out = Submitted::default();
    loop {
        let k = next.fetch_add(1, Ordering::Relaxed);
        if k >= pods {
            return out;
        }
        let spec = pod_spec(k, &mut Rng(0x2545_f491_4f6c_dd1d ^ (k as u64 + 1)));
        let t = Instant::now();
        let r = client.submit_pod(pb::SubmitPodRequest { spec: Some(spec) }).await;
        out.latencies_ms.push(t.elapsed().as_secs_f64() * 1e3);
        out.last_answer = Some(Instant::now());
        answered.fetch_add(1, Ordering::Relaxed);
        match r {
            Ok(s) if s.get_ref().phase == pb::PodPhase::Bound as i32 => out.bound += 1,
            Ok(_) => out.pending += 1,
            Err(e) => {
                out.errors += 1;
                out.first_error.get_or_insert_with(|| format!("{}: {}", e.code(), e.message()));
            }
        }
    }
}

async fn connections(url: &str, n: usize) -> anyhow::Result<Vec<Channel>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(Endpoint::from_shared(url.to_string())?.connect().await.with_context(|| format!("connecting to {url}"))?);
    }
    Ok(out)
}

async fn run(s: Settings) -> anyhow::Result<()> {
    let binary = scheduler_binary()?;
    let (parent, fs) = state_parent()?;
    let dir = tempfile::Builder::new().prefix("berth-load-").tempdir_in(&parent).with_context(|| format!("cannot make a directory in {}", parent.display()))?;
    // Dropped after the scheduler (declared first): the scheduler never outlives its store.
    let etcd = if s.etcd { Some(etcd::EtcdTrio::start(dir.path())?) } else { None };
    let endpoints = etcd.as_ref().map(etcd::EtcdTrio::endpoints);
    let mut scheduler = SchedulerProcess::start(&binary, dir, endpoints.as_deref())?;
    let metrics = scheduler.serving().await?;
    let pid = scheduler.pid();
    let store = match &endpoints {
        Some(e) => format!("store on 3 etcd members ({}), their data", e.join(",")),
        None => "journal".to_string(),
    };
    println!("load: {} (pid {pid}), {store} in {} on {fs}; {} nodes, {} pods, {} clients{}", binary.display(), scheduler.dir.path().display(), s.nodes, s.pods, s.clients, if s.rss { ", RSS mode" } else { "" });

    // Agents connect and report; the run starts once the scheduler counts them all Ready.
    let t = Instant::now();
    let counts = Arc::new(AgentCounts { per_agent: (0..s.nodes).map(|_| AtomicUsize::new(0)).collect(), ..Default::default() });
    let agent_channels = connections(&scheduler.url, s.nodes.div_ceil(STREAMS_PER_CONNECTION)).await?;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut agents = Vec::with_capacity(s.nodes);
    for i in 0..s.nodes {
        agents.push(tokio::spawn(agent(i, node_report(i, &mut rng), agent_channels[i / STREAMS_PER_CONNECTION].clone(), counts.clone())));
    }
    loop {
        let ready = scrape(&metrics).await?.get("berth_scheduler_nodes{state=\"Ready\"}").copied().unwrap_or(0.0) as usize;
        if ready >= s.nodes {
            break;
        }
        if counts.streams_lost.load(Ordering::Relaxed) > 0 {
            bail!("{} agents lost their stream while connecting; the scheduler's log:\n{}", counts.streams_lost.load(Ordering::Relaxed), scheduler.log_tail());
        }
        if t.elapsed() > Duration::from_secs(120) {
            bail!("only {ready} of {} nodes Ready after 120 s", s.nodes);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("load: {} agents connected and Ready in {:.1} s over {} connections; RSS {:.0} MiB", s.nodes, t.elapsed().as_secs_f64(), agent_channels.len(), status_kib(pid, "VmRSS:") as f64 / 1024.0);

    // The load average and both processes' CPU over the measured interval.
    let load_before = load_average();
    let load_max = Arc::new(AtomicU64::new(load_before.to_bits()));
    let sampler = {
        let load_max = load_max.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let l = load_average();
                load_max.fetch_max(l.to_bits(), Ordering::Relaxed);
            }
        })
    };
    let (cpu_sched_before, cpu_bench_before) = (cpu_seconds(&pid.to_string()), cpu_seconds("self"));

    let client_channels = connections(&scheduler.url, s.clients.div_ceil(CLIENTS_PER_CONNECTION)).await?;
    let next = Arc::new(AtomicUsize::new(0));
    let answered = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let clients: Vec<_> = (0..s.clients).map(|c| tokio::spawn(submit_client(client_channels[c / CLIENTS_PER_CONNECTION].clone(), next.clone(), s.pods, answered.clone()))).collect();

    // Until every pod reached an agent (or nothing moves for a minute), with progress every 5 s.
    let (mut last_received, mut last_progress, mut last_line) = (0, Instant::now(), Instant::now());
    let received_all = loop {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let received = counts.received.load(Ordering::Relaxed);
        if received >= s.pods {
            break Some(start.elapsed());
        }
        if received != last_received {
            (last_received, last_progress) = (received, Instant::now());
        }
        if last_progress.elapsed() > STALL {
            break None;
        }
        if let Some(status) = scheduler.child.try_wait()? {
            bail!("berth-scheduler exited ({status}) during the run; its log:\n{}", scheduler.log_tail());
        }
        if last_line.elapsed() > Duration::from_secs(5) {
            eprintln!("load: {:.0} s: {} answered, {received} at agents, load {:.2}", start.elapsed().as_secs_f64(), answered.load(Ordering::Relaxed), load_average());
            last_line = Instant::now();
        }
    };
    let mut submitted = Submitted::default();
    for c in clients {
        let r = c.await?;
        submitted.latencies_ms.extend(r.latencies_ms);
        (submitted.bound, submitted.pending, submitted.errors) = (submitted.bound + r.bound, submitted.pending + r.pending, submitted.errors + r.errors);
        submitted.first_error = submitted.first_error.or(r.first_error);
        submitted.last_answer = submitted.last_answer.max(r.last_answer);
    }
    let wall = start.elapsed().as_secs_f64();
    let (cpu_sched, cpu_bench) = (cpu_seconds(&pid.to_string()) - cpu_sched_before, cpu_seconds("self") - cpu_bench_before);
    let (load_end, load_max) = (load_average(), f64::from_bits(load_max.load(Ordering::Relaxed)));
    sampler.abort();

    let answers = submitted.last_answer.map_or(0.0, |t| (t - start).as_secs_f64());
    let received = counts.received.load(Ordering::Relaxed);
    match received_all {
        Some(d) => println!("load: {} pods bound and at their agents in {:.2} s: {:.0} pods/s", s.pods, d.as_secs_f64(), s.pods as f64 / d.as_secs_f64()),
        None => println!("load: only {received} of {} pods reached the agents; nothing moved for {} s", s.pods, STALL.as_secs()),
    }
    println!(
        "load: SubmitPod answered {} Bound, {} Pending, {} failed{} in {answers:.2} s: {:.0} pods/s by the answers",
        submitted.bound,
        submitted.pending,
        submitted.errors,
        submitted.first_error.as_ref().map(|e| format!(" (first: {e})")).unwrap_or_default(),
        submitted.bound as f64 / answers.max(1e-9),
    );
    let mut lat = submitted.latencies_ms;
    lat.sort_by(f64::total_cmp);
    println!("load: SubmitPod latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} clients)", percentile(&lat, 0.5), percentile(&lat, 0.99), lat.last().copied().unwrap_or(0.0), s.clients);
    let per_agent: Vec<usize> = counts.per_agent.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    println!(
        "load: agents received {received} pods in run instructions (per agent {}–{}, {} repeated), sent {} reports, {} streams lost",
        per_agent.iter().min().unwrap_or(&0),
        per_agent.iter().max().unwrap_or(&0),
        counts.repeated.load(Ordering::Relaxed),
        counts.reports.load(Ordering::Relaxed),
        counts.streams_lost.load(Ordering::Relaxed)
    );
    println!(
        "load: CPU over the {wall:.1} s: scheduler {cpu_sched:.1} s ({:.2} cores), this bench {cpu_bench:.1} s ({:.2} cores), of {} cores; load average (1 min) {load_before:.2} before, {load_max:.2} at most, {load_end:.2} at the end",
        cpu_sched / wall,
        cpu_bench / wall,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    if s.rss {
        // Every agent reports once more, so the scheduler holds their pods as reported, not reserved.
        tokio::time::sleep(REPORT_EVERY + Duration::from_secs(1)).await;
    }
    let m = scrape(&metrics).await?;
    match (m.get("berth_scheduler_store_events_total"), m.get("berth_scheduler_store_appends_total")) {
        (Some(e), Some(a)) if s.etcd => println!("load: etcd: {e:.0} events in {a:.0} appends, {:.1} events per append (one or more transactions each)", e / a.max(1.0)),
        (Some(e), Some(a)) => println!("load: journal: {e:.0} events in {a:.0} appends, {:.1} events per append (fdatasync)", e / a.max(1.0)),
        _ => println!("load: journal: this binary does not export berth_scheduler_store_events_total / _appends_total"),
    }
    let phase = |p: &str| m.get(&format!("berth_scheduler_pods{{phase=\"{p}\"}}")).copied().unwrap_or(0.0);
    let node = |st: &str| m.get(&format!("berth_scheduler_nodes{{state=\"{st}\"}}")).copied().unwrap_or(0.0);
    println!("load: the scheduler holds {} Running, {} Bound, {} Pending pods; nodes {} Ready, {} Unknown", phase("Running"), phase("Bound"), phase("Pending"), node("Ready"), node("Unknown"));
    println!(
        "load: scheduler RSS {:.0} MiB (VmHWM, its peak, {:.0} MiB) with {} agents connected and {} pods",
        status_kib(pid, "VmRSS:") as f64 / 1024.0,
        status_kib(pid, "VmHWM:") as f64 / 1024.0,
        counts.connected.load(Ordering::Relaxed),
        submitted.bound + submitted.pending
    );
    for a in agents {
        a.abort();
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    // On Ctrl-C the run is dropped, and with it the scheduler process and its directory.
    runtime.block_on(async {
        tokio::select! {
            r = run(settings) => r,
            _ = tokio::signal::ctrl_c() => bail!("interrupted"),
        }
    })
}

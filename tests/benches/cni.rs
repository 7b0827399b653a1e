//! CNI ADD and DEL latency and throughput of `berth` (with its agent, warm pool, on a local-cloud
//! node) beside Debian's reference `ptp` + `host-local`, in the same run, each pod in its own
//! namespace, the plugins executed as libcni does inside the node's namespace.
//!
//! `cargo build --release --workspace --bins && cargo bench -p berth-tests --bench cni`
//! (`BERTH_BENCH_PODS=100,200` to choose the pod counts; berth's largest node type holds 203 pods).
//!
//! Then ADD latency per network mode with warm pools (shared IPs, exclusive ENIs kept attached,
//! member ENIs kept bound to the trunk) on a second node, rounds of pods of every mode beside the
//! reference in the same rounds; and, for scale, the ADD of an exclusive and a trunk pod whose own
//! vSwitch no warm ENI matches (the cloud calls included, with the local cloud's default 200 ms
//! attach). Last, trunk and exclusive pods through the same sequential and 8-parallel phases as
//! the shared ones, beside the reference, with the cloud calls per pod.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_nodenet::NetnsGuard;
use berth_tests::agent::AgentProcess;
use berth_tests::cni::{self, Invocation};
use berth_tests::{LocalCloud, LocalCloudOptions, SampleNet};

struct Stats {
    p50: Duration,
    p99: Duration,
}

fn stats(mut v: Vec<Duration>) -> Stats {
    v.sort();
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    Stats { p50: at(0.50), p99: at(0.99) }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// One network under test: its node namespace, conflist and plugin path.
struct Net {
    name: &'static str,
    node: PathBuf,
    conflist: serde_json::Value,
    cni_path: String,
}

fn run_one(net: &Net, command: &str, id: &str, netns: &str, prev: Option<&serde_json::Value>) -> (Duration, Option<serde_json::Value>) {
    run_with(net, command, id, netns, prev, "")
}

/// Like [`run_one`], with extra CNI_ARGS (a network mode).
fn run_with(net: &Net, command: &str, id: &str, netns: &str, prev: Option<&serde_json::Value>, extra: &str) -> (Duration, Option<serde_json::Value>) {
    let args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME=p{}{extra}", if extra.is_empty() { "" } else { ";" });
    let inv = Invocation { command, container_id: id, netns, ifname: "eth0", args: &args };
    let t = Instant::now();
    if command == "ADD" {
        let r = cni::add_list(Some(&net.node), &net.cni_path, &net.conflist, &inv).unwrap_or_else(|e| panic!("{} ADD {id}: {e:?}", net.name));
        (t.elapsed(), Some(r))
    } else {
        cni::del_list(Some(&net.node), &net.cni_path, &net.conflist, &inv, prev).unwrap_or_else(|e| panic!("{} DEL {id}: {e:?}", net.name));
        (t.elapsed(), None)
    }
}

/// Sequential ADD then DEL of `pods`, then the same in 8 threads; prints one line per phase.
/// `extra`: CNI_ARGS of every pod (a network mode), empty for none.
fn measure(net: &Net, pods: usize, tag: &str, extra: &str) -> [Duration; 3] {
    let namespaces: Vec<NetnsGuard> = (0..pods).map(|_| NetnsGuard::unique("bb").expect("pod netns")).collect();
    let paths: Vec<String> = namespaces.iter().map(|n| format!("/run/netns/{}", n.name())).collect();
    let ids: Vec<String> = (0..pods).map(|i| format!("{tag}{i}")).collect();

    let mut add = Vec::new();
    let mut results = Vec::new();
    for i in 0..pods {
        let (d, r) = run_with(net, "ADD", &ids[i], &paths[i], None, extra);
        add.push(d);
        results.push(r.unwrap());
    }
    let mut del = Vec::new();
    for i in 0..pods {
        del.push(run_with(net, "DEL", &ids[i], &paths[i], Some(&results[i]), extra).0);
    }
    let (a, d) = (stats(add), stats(del));
    let drained_seq = drain(net);

    // 8 in parallel.
    let started = Instant::now();
    let chunks: Vec<Vec<usize>> = (0..8).map(|t| (t..pods).step_by(8).collect()).collect();
    let par_results: Vec<Vec<(usize, serde_json::Value)>> = std::thread::scope(|s| {
        let handles: Vec<_> = chunks.iter().map(|c| s.spawn(|| c.iter().map(|&i| (i, run_with(net, "ADD", &format!("{}p", ids[i]), &paths[i], None, extra).1.unwrap())).collect::<Vec<_>>())).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let add_rate = pods as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    let (ids, paths) = (&ids, &paths);
    std::thread::scope(|s| {
        for chunk in &par_results {
            s.spawn(move || {
                for (i, r) in chunk {
                    run_with(net, "DEL", &format!("{}p", ids[*i]), &paths[*i], Some(r), extra);
                }
            });
        }
    });
    let del_rate = pods as f64 / started.elapsed().as_secs_f64();
    let drained_par = drain(net);
    println!(
        "{:<24} pods {:>4}  ADD p50 {:>8} p99 {:>8}  DEL p50 {:>8} p99 {:>8}  8-parallel ADD {:>5.0} pods/s  DEL {:>5.0} pods/s  (veths gone {} / {} after the last DEL)",
        net.name,
        pods,
        ms(a.p50),
        ms(a.p99),
        ms(d.p50),
        ms(d.p99),
        add_rate,
        del_rate,
        ms(drained_seq),
        ms(drained_par)
    );
    [a.p50, d.p50, Duration::from_secs_f64(1.0 / add_rate)]
}

/// Waits until no pod veth is left on the node (berth deletes them after DEL returns), so that
/// one phase's deletions do not slow the next; returns how long that took.
fn drain(net: &Net) -> Duration {
    let started = Instant::now();
    loop {
        let (_, links) = berth_tests::in_netns(&net.node, &["ip", "-o", "link", "show", "type", "veth"]);
        let pods = links.lines().filter(|l| l.contains(": bth") || l.contains(": veth")).count();
        if pods == 0 || started.elapsed() > Duration::from_secs(60) {
            return started.elapsed();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn reference_net(node: &NetnsGuard, dir: &Path) -> Net {
    let conflist = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "ref",
        "plugins": [{ "type": "ptp", "ipMasq": false, "ipam": { "type": "host-local", "subnet": "10.201.0.0/16", "dataDir": dir.join("ipam") } }],
    });
    Net { name: "reference ptp+host-local", node: PathBuf::from(format!("/run/netns/{}", node.name())), conflist, cni_path: cni::REFERENCE_PLUGINS.into() }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if !Path::new(cni::REFERENCE_PLUGINS).join("ptp").exists() {
        println!("skipped: Debian's containernetworking-plugins are not installed ({} has no ptp)", cni::REFERENCE_PLUGINS);
        return;
    }
    let counts: Vec<usize> = std::env::var("BERTH_BENCH_PODS").unwrap_or_else(|_| "100,200".into()).split(',').map(|s| s.trim().parse().expect("pod counts")).collect();
    let max = *counts.iter().max().unwrap();

    let lc = LocalCloud::start(LocalCloudOptions::default());
    let cloud = lc.client();
    let net = SampleNet::create(&cloud, "10.94.0.0/16", "10.94.0.0/20").await;
    let node = net.run(&cloud, "ecs.c7.4xlarge", &net.sg).await;
    // A warm pool as large as the largest run: no cloud call while measuring.
    let warm = max.to_string();
    let agent = AgentProcess::start(&lc, &node, &["--min-idle-ips", &warm, "--max-idle-ips", &warm]);
    let deadline = Instant::now() + Duration::from_secs(120);
    while agent.pool().await["status"]["idle"].as_u64().unwrap_or(0) < max as u64 {
        assert!(Instant::now() < deadline, "the pool did not warm up to {max}:\n{}", agent.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let calls_before = agent.cloud_calls().await;
    let berth = Net {
        name: "berth (shared ENI)",
        node: agent.netns.clone(),
        conflist: serde_json::from_str(&std::fs::read_to_string(agent.conflist_path()).unwrap()).unwrap(),
        cni_path: cni::cni_path(),
    };
    let ref_node = NetnsGuard::unique("bn").expect("reference node netns");
    let dir = tempfile::tempdir().unwrap();
    let reference = reference_net(&ref_node, dir.path());

    tokio::task::block_in_place(|| {
        for &n in &counts {
            let b = measure(&berth, n, &format!("b{n}x"), "");
            let r = measure(&reference, n, &format!("r{n}x"), "");
            print_ratios(n, &b, &r);
        }
    });
    let calls = agent.cloud_calls().await - calls_before;
    let pods: usize = counts.iter().map(|n| 2 * n).sum();
    println!("cloud API calls during {pods} pod ADD/DEL cycles with a warm pool: {calls} ({:.3} per pod)", calls as f64 / pods as f64);
    per_mode(&lc, &cloud, &net, &reference).await;
    own_eni_modes(&lc, &cloud, &net, &reference).await;
}

fn print_ratios(n: usize, b: &[Duration; 3], r: &[Duration; 3]) {
    println!(
        "  ratio berth/reference at {n} pods: ADD p50 {:.2}, DEL p50 {:.2}, 8-parallel ADD throughput {:.2}x",
        b[0].as_secs_f64() / r[0].as_secs_f64(),
        b[1].as_secs_f64() / r[1].as_secs_f64(),
        r[2].as_secs_f64() / b[2].as_secs_f64()
    );
}

/// Trunk and exclusive pods measured like shared ones (sequential ADD and DEL, then 8 in
/// parallel) beside the reference, each on a node of its own whose warm pool is full first, with
/// the cloud calls the agent made during the run.
async fn own_eni_modes(lc: &LocalCloud, cloud: &berth_cloud::HttpCloud, net: &SampleNet, reference: &Net) {
    // ecs.c7.4xlarge: 50 member ENIs; 7 secondary ENIs, 1 of them the shared pool's.
    for (mode, pods, warm_flag, phase, trunk) in [("trunk", 48, "--warm-member-enis", "WarmMember", "true"), ("exclusive", 6, "--warm-exclusive-enis", "WarmExclusive", "false")] {
        let node = net.run(cloud, "ecs.c7.4xlarge", &net.sg).await;
        let warm = pods.to_string();
        let agent = AgentProcess::start(lc, &node, &["--min-idle-ips", "1", "--max-idle-ips", "2", "--trunk", trunk, warm_flag, &warm]);
        // The top-up leaves the last slot to pods.
        let want = if mode == "exclusive" { pods - 1 } else { pods };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let pool = agent.pool().await;
            if pool["enis"].as_array().map_or(0, |a| a.iter().filter(|e| e["phase"] == phase).count()) >= want {
                break;
            }
            assert!(Instant::now() < deadline, "the warm {mode} pool did not fill to {want}:\n{}", agent.log());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let berth = Net { name: if mode == "trunk" { "berth (trunk)" } else { "berth (exclusive)" }, node: agent.netns.clone(), conflist: serde_json::from_str(&std::fs::read_to_string(agent.conflist_path()).unwrap()).unwrap(), cni_path: cni::cni_path() };
        let calls_before = agent.cloud_calls().await;
        let args = format!("BERTH_NETWORK_MODE={mode}");
        let (b, r) = tokio::task::block_in_place(|| (measure(&berth, pods, &format!("{mode}x"), &args), measure(reference, pods, &format!("r{mode}x"), "")));
        print_ratios(pods, &b, &r);
        let calls = agent.cloud_calls().await - calls_before;
        println!("  cloud API calls during {} {mode} pod ADD/DEL cycles with a warm pool: {calls} ({:.3} per pod)", 2 * pods, calls as f64 / (2 * pods) as f64);
    }
}

/// ADD latency of each mode with warm pools, in rounds: the warm pools are full, then a pod of
/// every mode and of the reference is added in turn, then all are deleted.
async fn per_mode(lc: &LocalCloud, cloud: &berth_cloud::HttpCloud, net: &SampleNet, reference: &Net) {
    const ROUNDS: usize = 6;
    const PER_ROUND: usize = 4;
    let node = net.run(cloud, "ecs.c7.4xlarge", &net.sg).await;
    let per = PER_ROUND.to_string();
    let agent = AgentProcess::start(lc, &node, &["--min-idle-ips", &per, "--max-idle-ips", "8", "--trunk", "true", "--warm-exclusive-enis", &per, "--warm-member-enis", &per]);
    let berth = Net { name: "berth", node: agent.netns.clone(), conflist: serde_json::from_str(&std::fs::read_to_string(agent.conflist_path()).unwrap()).unwrap(), cni_path: cni::cni_path() };
    let modes = [("shared", ""), ("exclusive", "BERTH_NETWORK_MODE=exclusive"), ("trunk", "BERTH_NETWORK_MODE=trunk")];
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); modes.len() + 1];
    for round in 0..ROUNDS {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let pool = agent.pool().await;
            let count = |phase: &str| pool["enis"].as_array().map_or(0, |a| a.iter().filter(|e| e["phase"] == phase).count());
            if count("WarmExclusive") >= PER_ROUND && count("WarmMember") >= PER_ROUND && pool["status"]["idle"].as_u64().unwrap_or(0) >= PER_ROUND as u64 {
                break;
            }
            assert!(Instant::now() < deadline, "warm pools not full:\n{}", agent.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::task::block_in_place(|| {
            let namespaces: Vec<NetnsGuard> = (0..PER_ROUND * (modes.len() + 1)).map(|_| NetnsGuard::unique("bm").expect("pod netns")).collect();
            let mut added = Vec::new();
            for i in 0..PER_ROUND {
                for (m, (_, args)) in modes.iter().enumerate() {
                    let ns = &namespaces[i * (modes.len() + 1) + m];
                    let (id, path) = (format!("m{round}-{m}-{i}"), format!("/run/netns/{}", ns.name()));
                    let (d, r) = run_with(&berth, "ADD", &id, &path, None, args);
                    samples[m].push(d);
                    added.push((&berth, id, path, r.unwrap()));
                }
                let ns = &namespaces[i * (modes.len() + 1) + modes.len()];
                let (id, path) = (format!("mr{round}-{i}"), format!("/run/netns/{}", ns.name()));
                let (d, r) = run_one(reference, "ADD", &id, &path, None);
                samples[modes.len()].push(d);
                added.push((reference, id, path, r.unwrap()));
            }
            for (net, id, path, r) in &added {
                run_one(net, "DEL", id, path, Some(r));
            }
        });
        drain(&berth);
    }
    let reference_p50 = stats(samples[modes.len()].clone()).p50;
    println!("ADD latency per mode with warm pools ({} pods of each, rounds of {PER_ROUND}):", ROUNDS * PER_ROUND);
    for (m, (name, _)) in modes.iter().enumerate() {
        let s = stats(samples[m].clone());
        println!("  berth {name:<10} ADD p50 {:>8} p99 {:>8}  (p50 ratio to the reference {:.2})", ms(s.p50), ms(s.p99), s.p50.as_secs_f64() / reference_p50.as_secs_f64());
    }
    let r = stats(samples[modes.len()].clone());
    println!("  reference ptp    ADD p50 {:>8} p99 {:>8}", ms(r.p50), ms(r.p99));
    // No warm ENI matches a pod's own vSwitch (another one of the zone): the ADD waits for the cloud.
    let vsw = {
        use berth_cloud::Cloud as _;
        let req = berth_cloud::api::CreateVSwitchRequest { vpc_id: net.vpc.clone(), zone_id: "local-1a".into(), cidr_block: "10.94.16.0/20".into(), name: "cold".into(), ..Default::default() };
        cloud.create_vswitch(&req).await.expect("CreateVSwitch")
    };
    tokio::task::block_in_place(|| {
        for (name, mode) in [("exclusive", "exclusive"), ("trunk", "trunk")] {
            let ns = NetnsGuard::unique("bm").expect("pod netns");
            let path = format!("/run/netns/{}", ns.name());
            let (d, r) = run_with(&berth, "ADD", &format!("cold-{name}"), &path, None, &format!("BERTH_NETWORK_MODE={mode};BERTH_VSWITCH_ID={vsw}"));
            println!("  berth {name:<10} ADD without a warm ENI (create + attach + wait): {}", ms(d));
            run_one(&berth, "DEL", &format!("cold-{name}"), &path, r.as_ref());
        }
    });
}


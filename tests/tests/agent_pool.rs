//! `berth-agent` against the local cloud, through its gRPC socket: the warm pool, allocations that
//! are secondary IPs of the ENI they name in the cloud, surplus given back after the cool-down,
//! and allocations that survive `kill -9`.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt as _;
use std::time::{Duration, Instant};

use berth_cloud::Cloud;
use berth_cloud::api::EniFilter;
use berth_cloud::model::EniKind;
use berth_proto::agent::v1 as pb;
use berth_tests::agent::AgentProcess;
use berth_tests::{LocalCloud, LocalCloudOptions, SampleNet, is_root};

fn key(c: &str) -> Option<pb::AllocationKey> {
    Some(pb::AllocationKey { container_id: c.into(), ifname: "eth0".into() })
}

fn allocate_request(c: &str) -> pb::AllocateIpRequest {
    pb::AllocateIpRequest { key: key(c), netns: String::new(), mode: pb::NetworkMode::Shared as i32, want_ipv4: true, ..Default::default() }
}

/// The instance's secondary ENIs in the cloud: ENI → its secondary IPs.
async fn cloud_ips(cloud: &impl Cloud, instance: &str) -> Vec<(String, BTreeSet<String>)> {
    let filter = EniFilter { instance_id: Some(instance.into()), kind: Some(EniKind::Secondary), ..Default::default() };
    cloud.describe_network_interfaces(&filter).await.unwrap().into_iter().map(|e| (e.id, e.secondary_ips.iter().map(ToString::to_string).collect())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_serves_from_the_cloud_and_gives_surplus_back() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let lc = LocalCloud::start(LocalCloudOptions::default());
    let cloud = lc.client();
    let net = SampleNet::create(&cloud, "10.91.0.0/16", "10.91.1.0/24").await;
    net.open_to(&cloud, "10.0.0.0/8").await;
    let node = net.run(&cloud, "ecs.c7.xlarge", &net.sg).await;
    let agent = AgentProcess::start(&lc, &node, &["--min-idle-ips", "2", "--max-idle-ips", "4", "--cooldown-secs", "2"]);

    // Ready means a warm pool: one secondary ENI holding the warm IPs, and a conflist.
    let mode = std::fs::metadata(agent.socket()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the agent socket must be 0600");
    let conflist: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(agent.conflist_path()).unwrap()).unwrap();
    assert_eq!(conflist["plugins"][0]["type"], "berth");
    let enis = cloud_ips(&cloud, &node).await;
    assert_eq!(enis.len(), 1, "one secondary ENI: {enis:?}");
    assert!(enis[0].1.len() >= 2, "the warm IPs are assigned in the cloud: {enis:?}");

    let mut client = agent.client().await;
    let hello = client.hello(pb::HelloRequest { plugin_version: "test".into(), protocol_version: 1 }).await.unwrap().into_inner();
    assert!(hello.min_protocol_version <= 1 && hello.max_protocol_version >= 1);

    // 20 pods at once: 20 distinct IPs, each a secondary IP of the ENI it names, in the cloud.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let mut c = client.clone();
        tasks.push(tokio::spawn(async move { c.allocate_ip(allocate_request(&format!("pod{i}"))).await.map(|r| r.into_inner()) }));
    }
    let mut allocations = Vec::new();
    for t in tasks {
        allocations.push(t.await.unwrap().expect("AllocateIp"));
    }
    let enis = cloud_ips(&cloud, &node).await;
    let mut seen = BTreeSet::new();
    for a in &allocations {
        let ip = a.ipv4.as_ref().unwrap().address.clone();
        assert!(seen.insert(ip.clone()), "{ip} handed out twice");
        let eni = a.eni.as_ref().unwrap();
        assert!(eni.route_table >= 1000 && !eni.node_ifname.is_empty(), "the ENI's NIC is configured: {eni:?}");
        let on = enis.iter().find(|(id, _)| *id == eni.eni_id).unwrap_or_else(|| panic!("{} is not on the instance", eni.eni_id));
        assert!(on.1.contains(&ip), "{ip} is not a secondary IP of {} in the cloud", eni.eni_id);
    }
    // Asking again for the same pod interface gives the same IP.
    let again = client.allocate_ip(allocate_request("pod3")).await.unwrap().into_inner();
    assert_eq!(again.ipv4, allocations[3].ipv4);
    let metrics = agent.metrics().await;
    assert!(metrics.contains("berth_agent_pool_allocated_ips 20"), "{metrics}");
    assert!(metrics.contains("berth_agent_cloud_call_seconds_bucket"), "{metrics}");

    // Survives kill -9: the same allocations, nothing assigned twice.
    let mut agent = agent;
    agent.restart();
    let mut client = agent.client().await;
    let listed = client.list_allocations(pb::ListAllocationsRequest::default()).await.unwrap().into_inner().allocations;
    assert_eq!(listed.len(), 20);
    for a in &allocations {
        let got = client.get_allocation(pb::GetAllocationRequest { key: a.key.clone() }).await.unwrap().into_inner();
        assert_eq!(got.ipv4, a.ipv4);
    }

    // Everything back: first to the pool, then after the cool-down the surplus to the cloud.
    for i in 0..20 {
        let r = client.release_ip(pb::ReleaseIpRequest { key: key(&format!("pod{i}")) }).await.unwrap().into_inner();
        assert!(r.released);
    }
    let r = client.release_ip(pb::ReleaseIpRequest { key: key("pod0") }).await.unwrap().into_inner();
    assert!(!r.released, "a second release finds nothing");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let total: usize = cloud_ips(&cloud, &node).await.iter().map(|(_, ips)| ips.len()).sum();
        if total <= 4 {
            break;
        }
        assert!(Instant::now() < deadline, "the surplus was not given back: {total} IPs still assigned\n{}", agent.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let pool = agent.pool().await;
    assert_eq!(pool["allocations"].as_array().unwrap().len(), 0);
    let st = client.status(pb::StatusRequest {}).await.unwrap().into_inner();
    assert!(st.ready, "{st:?}");
}

/// Every IP the cloud assigned to the instance is idle in the pool or held by exactly one pod,
/// the pool holds nothing the cloud does not, and no ENI of the pool is left unattached.
async fn books_balance(cloud: &impl Cloud, agent: &AgentProcess, node: &str, live: &BTreeSet<String>) -> Result<(), String> {
    let pool = agent.pool().await;
    let mut pool_ips = BTreeSet::new();
    for e in pool["enis"].as_array().unwrap() {
        for ip in e["ips"].as_array().unwrap() {
            if !pool_ips.insert(ip.as_str().unwrap().to_string()) {
                return Err(format!("{ip} on two ENIs of the pool"));
            }
        }
    }
    let mut cloud_all = BTreeSet::new();
    for (_, ips) in cloud_ips(cloud, node).await {
        cloud_all.extend(ips);
    }
    if pool_ips != cloud_all {
        return Err(format!("the pool and the cloud disagree on the instance's IPs: pool {pool_ips:?}, cloud {cloud_all:?}\n{pool:#}"));
    }
    let mut held = BTreeSet::new();
    let mut holders = BTreeSet::new();
    for a in pool["allocations"].as_array().unwrap() {
        let ip = a["ip"].as_str().unwrap().to_string();
        if !cloud_all.contains(&ip) {
            return Err(format!("{ip} is held but not assigned in the cloud"));
        }
        if !held.insert(ip.clone()) {
            return Err(format!("{ip} held twice"));
        }
        holders.insert(a["key"]["container_id"].as_str().unwrap().to_string());
    }
    if &holders != live {
        return Err(format!("the pods holding IPs {holders:?} are not the live ones {live:?}"));
    }
    let orphans: Vec<_> = cloud
        .describe_network_interfaces(&EniFilter { kind: Some(EniKind::Secondary), ..Default::default() })
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.instance_id.is_none())
        .map(|e| e.id)
        .collect();
    if !orphans.is_empty() {
        return Err(format!("ENIs left unattached: {orphans:?}"));
    }
    Ok(())
}

/// The books balance once the pool is quiet (a cloud call in flight is a moment of difference).
async fn assert_books_balance(cloud: &impl Cloud, agent: &AgentProcess, node: &str, live: &BTreeSet<String>) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match books_balance(cloud, agent, node, live).await {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => panic!("{e}\n{}", agent.log()),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_instants_loses_and_doubles_nothing() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let lc = LocalCloud::start(LocalCloudOptions::default());
    let cloud = lc.client();
    let net = SampleNet::create(&cloud, "10.92.0.0/16", "10.92.1.0/24").await;
    let node = net.run(&cloud, "ecs.c7.xlarge", &net.sg).await;
    // A pool that grows and shrinks all the time, so that kills land in the middle of cloud calls.
    let mut agent = AgentProcess::start(&lc, &node, &["--min-idle-ips", "1", "--max-idle-ips", "2", "--cooldown-secs", "0", "--reconcile-secs", "1"]);
    let mut live: BTreeSet<String> = BTreeSet::new();
    let mut maybe: BTreeSet<String> = BTreeSet::new();
    let mut next = 0u32;
    let mut ops = 0;
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut rand = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    while ops < 300 {
        let round = Instant::now();
        let client = agent.client().await;
        // A burst of parallel ADDs and DELs, with the agent killed at a random instant inside it.
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let mut c = client.clone();
            if !live.is_empty() && rand(2) == 0 {
                let pod = live.iter().nth(rand(live.len() as u64) as usize).unwrap().clone();
                live.remove(&pod);
                tasks.push(tokio::spawn(async move { (pod.clone(), false, c.release_ip(pb::ReleaseIpRequest { key: key(&pod) }).await.is_ok()) }));
            } else {
                let pod = format!("p{next}");
                next += 1;
                tasks.push(tokio::spawn(async move { (pod.clone(), true, c.allocate_ip(allocate_request(&pod)).await.is_ok()) }));
            }
        }
        tokio::time::sleep(Duration::from_millis(rand(60))).await;
        if rand(3) == 0 {
            agent.kill9();
        }
        for t in tasks {
            let (pod, add, ok) = t.await.unwrap();
            ops += 1;
            match (add, ok) {
                (true, true) => {
                    live.insert(pod);
                }
                // A failed ADD is followed by a DEL (the runtime's contract); a failed DEL is retried.
                (true, false) | (false, false) => {
                    maybe.insert(pod);
                }
                (false, true) => {}
            }
        }
        if agent.pid().is_none() {
            agent.restart();
        }
        let mut c = agent.client().await;
        for pod in std::mem::take(&mut maybe) {
            c.release_ip(pb::ReleaseIpRequest { key: key(&pod) }).await.expect("DEL after restart");
        }
        if round.elapsed() > Duration::from_secs(5) {
            eprintln!("slow round: {:?}\n{}", round.elapsed(), agent.log().lines().filter(|l| !l.contains(" INFO ")).collect::<Vec<_>>().join("\n"));
        }
    }
    // Let in-flight pool work settle, then compare the books.
    agent.restart();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_books_balance(&cloud, &agent, &node, &live).await;
    eprintln!("{ops} operations, {} pods alive at the end", live.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_ready_only_with_a_serving_pool_then_watchdog_pings() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let lc = LocalCloud::start(LocalCloudOptions::default());
    let cloud = lc.client();
    let net = SampleNet::create(&cloud, "10.95.0.0/16", "10.95.1.0/24").await;
    let node = net.run(&cloud, "ecs.c7.large", &net.sg).await;
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // Read as systemd does, from the start, until the first watchdog ping.
    let reader = std::thread::spawn(move || {
        let mut messages: Vec<String> = Vec::new();
        let mut buf = [0u8; 4096];
        while !messages.iter().any(|m| m.contains("WATCHDOG=1")) {
            match notify.recv(&mut buf) {
                Ok(n) => messages.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
                Err(e) => panic!("no watchdog ping after READY ({e}): {messages:?}"),
            }
        }
        messages
    });
    let agent = AgentProcess::start_with_env(&lc, &node, &["--min-idle-ips", "3"], &[("NOTIFY_SOCKET", notify_path.to_str().unwrap()), ("WATCHDOG_USEC", "400000")]);
    let messages = tokio::task::spawn_blocking(move || reader.join().expect("notifications")).await.unwrap();
    let ready = messages.iter().position(|m| m.lines().any(|l| l == "READY=1")).unwrap_or_else(|| panic!("no READY=1: {messages:?}"));
    assert!(messages[ready].contains("STATUS=ready: "), "READY comes with a status text: {messages:?}");
    // READY only once the pool can serve: its warm IPs were in the cloud before systemd heard it.
    let idle: u64 = messages[ready].split("STATUS=ready: ").nth(1).and_then(|s| s.split_whitespace().next()).and_then(|n| n.parse().ok()).unwrap();
    assert!(idle >= 1, "READY with an empty pool: {messages:?}");
    let pool = agent.pool().await;
    assert!(pool["status"]["idle"].as_u64().unwrap() >= 3, "{pool:#}");

    // Least privilege: every thread of the agent holds CAP_NET_ADMIN, CAP_SYS_ADMIN and
    // CAP_SYS_PTRACE (bits 12, 21, 19) and nothing else, in its effective and bounding sets.
    let expected = (1u64 << 12) | (1u64 << 19) | (1u64 << 21);
    let pid = agent.pid().unwrap();
    for (tid, sets) in berth_tests::privileges::threads(pid) {
        assert_eq!((sets.effective, sets.permitted, sets.bounding), (expected, expected, expected), "the sets of thread {tid}: {sets:x?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_vswitch_inhibits_growth_and_says_why() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let lc = LocalCloud::start(LocalCloudOptions::default());
    let cloud = lc.client();
    // A /28: 16 addresses, 4 reserved, one for the node's primary ENI, one per secondary ENI.
    let net = SampleNet::create(&cloud, "10.89.0.0/16", "10.89.1.0/28").await;
    let node = net.run(&cloud, "ecs.c7.xlarge", &net.sg).await;
    let agent = AgentProcess::start(&lc, &node, &["--min-idle-ips", "1", "--inhibit-secs", "30", "--allocate-timeout-secs", "2"]);
    let mut client = agent.client().await;
    let mut got = 0;
    let refusal = loop {
        match client.allocate_ip(allocate_request(&format!("p{got}"))).await {
            Ok(_) => got += 1,
            Err(status) => break status,
        }
        assert!(got < 20, "a /28 cannot hold {got} pods");
    };
    assert_eq!(refusal.code(), tonic::Code::ResourceExhausted, "{refusal:?}");
    assert!(refusal.message().contains("IpNotEnough"), "the refusal names the cloud's reason: {}", refusal.message());
    let total: usize = cloud_ips(&cloud, &node).await.iter().map(|(_, ips)| ips.len()).sum();
    assert_eq!(total, got, "every IP the vSwitch had is held by a pod: {total} assigned, {got} pods");
    // STATUS says the pool cannot serve, and why; the plugin turns that into CNI code 50.
    let st = client.status(pb::StatusRequest {}).await.unwrap().into_inner();
    assert!(!st.ready && st.reason.contains("IpNotEnough"), "{st:?}");
    let conf = serde_json::json!({ "cniVersion": "1.1.0", "name": "berth", "type": "berth", "agentSocket": agent.socket() });
    let out = berth_tests::cni::exec(Some(&agent.netns), &berth_tests::cni::cni_path(), "berth", &conf, &berth_tests::cni::Invocation { command: "STATUS", container_id: "", netns: "", ifname: "", args: "" });
    assert!(!out.ok && out.json()["code"] == 50 && out.stdout.contains("IpNotEnough"), "{out:?}");
    // Inhibited: the pool does not hammer the cloud while the vSwitch is full.
    let before = agent.cloud_calls().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let metrics = agent.metrics().await;
    assert_eq!(agent.cloud_calls().await, before, "cloud calls inside the inhibit window:\n{metrics}");
    assert!(metrics.contains("berth_agent_allocations_failed_total 1"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eni_the_cloud_calls_full_makes_the_pool_grow_on_the_next_eni() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let lc = LocalCloud::start(LocalCloudOptions::default());
    let cloud = lc.client();
    let net = SampleNet::create(&cloud, "10.88.0.0/16", "10.88.1.0/24").await;
    let node = net.run(&cloud, "ecs.c7.xlarge", &net.sg).await;
    let agent = AgentProcess::start(&lc, &node, &["--min-idle-ips", "1", "--inhibit-secs", "60", "--allocate-timeout-secs", "10"]);
    let mut client = agent.client().await;
    client.allocate_ip(allocate_request("p0")).await.unwrap();
    // From now on every ENI is full for the cloud as soon as it exists, whatever the catalogue says
    // (the code the real AssignPrivateIpAddresses answers for an ENI at its type's limit).
    lc.set_faults(serde_json::json!({ "fail_actions": { "AssignPrivateIpAddresses": { "code": "InvalidOperation.Ipv4CountExceeded" } } })).await;
    for i in 1..4 {
        // Not inhibited for 60 s: each pod is served from a new ENI, well within its timeout.
        let t = Instant::now();
        client.allocate_ip(allocate_request(&format!("p{i}"))).await.unwrap_or_else(|e| panic!("pod {i}: {e:?}"));
        assert!(t.elapsed() < Duration::from_secs(8), "pod {i} waited {:?}", t.elapsed());
    }
    let enis = cloud_ips(&cloud, &node).await;
    assert!(enis.len() >= 2, "a full ENI is followed by another: {enis:?}");
    let st = client.status(pb::StatusRequest {}).await.unwrap().into_inner();
    assert!(st.reason.is_empty() || !st.reason.contains("IpNotEnough"), "{st:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_whose_uid_is_not_allowed_is_disconnected() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let lc = LocalCloud::start(LocalCloudOptions::default());
    let cloud = lc.client();
    let net = SampleNet::create(&cloud, "10.88.0.0/16", "10.88.1.0/24").await;
    let node = net.run(&cloud, "ecs.c7.large", &net.sg).await;
    let agent = AgentProcess::start(&lc, &node, &["--min-idle-ips", "1"]);
    // Open the socket's mode so that only the agent's own uid check stands in the way.
    std::fs::set_permissions(agent.socket(), std::fs::Permissions::from_mode(0o666)).unwrap();
    std::fs::set_permissions(agent.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let conf = serde_json::json!({ "cniVersion": "1.1.0", "name": "berth", "type": "berth", "agentSocket": agent.socket() }).to_string();
    let status_as = |uid: &str| {
        use std::io::Write as _;
        let mut child = std::process::Command::new("setpriv")
            .args(["--reuid", uid, "--regid", uid, "--clear-groups"])
            .arg(berth_tests::bin("berth"))
            .env_clear()
            .env("CNI_COMMAND", "STATUS")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(conf.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (ok, out) = status_as("0");
    assert!(ok, "root is allowed: {out}");
    let (ok, out) = status_as("65534");
    assert!(!ok && out.contains("\"code\":50"), "uid 65534 must be refused: {out}");
    assert!(agent.log().contains("refused a connection from a uid not in api.allowed_uids"), "{}", agent.log());
}

//! The three network modes on one node at once: a shared pod, an exclusive pod and a trunk pod on
//! node A (whose agent serves trunk mode), a shared pod on node B. Every pod reaches every other;
//! the cloud's books match (the member ENI bound to A's trunk with its VLAN ID, the exclusive ENI
//! attached to A); the vRouter drops a trunk pod's frames under a wrong tag or none.

use std::os::fd::AsFd as _;
use std::time::{Duration, Instant};

use berth_cloud::Cloud;
use berth_cloud::api::EniFilter;
use berth_cloud::model::EniKind;
use berth_nodenet::bpf::{self, Asm, R1, R2, R3, R4, R5, R6, R10, load_tc_program, vlan};
use berth_nodenet::{MacAddr, NetOps as _, Netlink, TcHook};
use berth_tests::agent::AgentProcess;
use berth_tests::cni::{self, Invocation};
use berth_tests::pods::{Pod, add_pod, conflist, del_pod, inspect, ping};
use berth_tests::{LocalCloud, LocalCloudOptions, SampleNet, is_root, nft_counter};

const GATEWAY_MAC: MacAddr = MacAddr([0xee, 0xff, 0xff, 0xff, 0xff, 0xff]);

/// A program that sends the pod's frames out of the trunk as the member's, but without a tag.
fn untagged_program(trunk_ifindex: u32, member_mac: MacAddr) -> Vec<bpf::Insn> {
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(&GATEWAY_MAC.0);
    macs[6..].copy_from_slice(&member_mac.0);
    let mut a = Asm::new();
    a.mov(R6, R1)
        .store_bytes_on_stack(-16, &macs)
        .mov(R1, R6)
        .mov_imm(R2, 0)
        .mov(R3, R10)
        .add_imm(R3, -16)
        .mov_imm(R4, 12)
        .mov_imm(R5, 0)
        .call(bpf::helper::SKB_STORE_BYTES)
        .mov_imm(R1, trunk_ifindex as i32)
        .mov_imm(R2, 0)
        .call(bpf::helper::REDIRECT)
        .exit();
    a.finish().unwrap()
}

/// Replaces the program on the trunk pod's host veth.
fn replace_member_program(agent: &AgentProcess, pod: &Pod, name: &str, insns: &[bpf::Insn]) {
    let mut nl = Netlink::open_in(&agent.netns).unwrap();
    let veth = nl.link_by_name(&berth_cni::datapath::host_veth_name(&pod.container_id, "eth0")).unwrap();
    let prog = load_tc_program(name, insns).unwrap_or_else(|e| panic!("{e}"));
    nl.attach_bpf(veth.index, TcHook::Ingress, prog.as_fd(), name).unwrap();
}

fn check(agent: &AgentProcess, pod: &Pod) -> cni::CniOutput {
    let conf = cni::plugin_conf(&conflist(agent), 0, Some(&pod.result));
    let ns = pod.path();
    let inv = Invocation { command: "CHECK", container_id: &pod.container_id, netns: ns.to_str().unwrap(), ifname: "eth0", args: "" };
    cni::exec(Some(&agent.netns), &cni::cni_path(), "berth", &conf, &inv)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_of_all_three_modes_on_one_node_reach_each_other_and_members_are_told_apart_by_vlan() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let lc = LocalCloud::start(LocalCloudOptions::default());
    let cloud = lc.client();
    let net = SampleNet::create(&cloud, "10.87.0.0/16", "10.87.1.0/24").await;
    net.open_to(&cloud, "10.0.0.0/8").await;
    let node_a = net.run(&cloud, "ecs.c7.xlarge", &net.sg).await;
    let node_b = net.run(&cloud, "ecs.c7.xlarge", &net.sg).await;
    let flags = ["--min-idle-ips", "2", "--max-idle-ips", "4", "--cooldown-secs", "1"];
    let mut agent_a = AgentProcess::start(&lc, &node_a, &[&flags[..], &["--trunk", "true"]].concat());
    let agent_b = AgentProcess::start(&lc, &node_b, &flags);

    let (shared_a, exclusive_a, trunk_a, shared_b) = tokio::task::block_in_place(|| {
        (add_pod(&agent_a, "sa", ""), add_pod(&agent_a, "xa", "BERTH_NETWORK_MODE=exclusive"), add_pod(&agent_a, "ta", "BERTH_NETWORK_MODE=trunk"), add_pod(&agent_b, "sb", ""))
    });

    // The cloud's books: A has a trunk, the trunk pod's address is its member's, bound with a VLAN ID.
    let enis = cloud.describe_network_interfaces(&EniFilter { instance_id: Some(node_a.clone()), ..Default::default() }).await.unwrap();
    let trunk = enis.iter().find(|e| e.kind == EniKind::Trunk).unwrap_or_else(|| panic!("node A has no trunk ENI: {enis:#?}\n{}", agent_a.log()));
    let member = enis.iter().find(|e| e.primary_ip == trunk_a.ip).unwrap_or_else(|| panic!("no ENI of A has {} as its address: {enis:#?}", trunk_a.ip));
    assert_eq!((member.kind, member.trunk_eni_id.as_deref()), (EniKind::Member, Some(trunk.id.as_str())), "{member:#?}");
    let vlan_id = member.vlan_id.expect("a member has a VLAN ID");
    let own = enis.iter().find(|e| e.primary_ip == exclusive_a.ip).expect("the exclusive pod's ENI");
    assert_eq!(own.kind, EniKind::Secondary);
    let member_mac: MacAddr = member.mac.parse().unwrap();
    let pod_mac = trunk_a.result["interfaces"].as_array().unwrap().iter().find(|i| i["sandbox"].is_string()).map(|i| i["mac"].as_str().unwrap().to_string());
    assert_eq!(pod_mac.as_deref(), Some(member.mac.as_str()), "the trunk pod's interface has its member's MAC: {}", trunk_a.result);

    // Everyone reaches everyone, across the node and across the VPC.
    let pods = [&shared_a, &exclusive_a, &trunk_a, &shared_b];
    for from in pods {
        for to in pods {
            if from.container_id != to.container_id {
                assert!(ping(&from.path(), to.ip), "{} ({}) → {} ({})\n{}", from.container_id, from.ip, to.container_id, to.ip, agent_a.log());
            }
        }
    }
    // The exclusive pod reaches its node through its veth, not through the VPC.
    let node_ip = cloud.describe_instances(&berth_cloud::api::InstanceFilter { ids: vec![node_a.clone()], ..Default::default() }).await.unwrap()[0].primary_ip;
    assert!(ping(&exclusive_a.path(), node_ip), "exclusive pod → its node {node_ip}");
    let (_, route) = berth_tests::in_netns(&exclusive_a.path(), &["ip", "-o", "route", "get", &node_ip.to_string()]);
    assert!(route.contains("dev h-eth0"), "the node is reached by the veth: {route}");
    let (ok, text) = inspect(&lc, &agent_a);
    assert!(ok, "inspect with pods of three modes: {text}");
    assert!(check(&agent_a, &trunk_a).ok, "CHECK of the trunk pod");

    // The vRouter drops the member's frames under another member's VLAN, and untagged ones.
    let vpc_ns = std::path::PathBuf::from(format!("/run/netns/{}-{}", lc.prefix, net.vpc));
    let trunk_index = Netlink::open_in(&agent_a.netns).unwrap().links().unwrap().into_iter().find(|l| l.mac == trunk.mac.parse().ok()).expect("the trunk NIC").index;
    let wrong = nft_counter(&vpc_ns, "wrong_vlan");
    let other_vlan = if vlan_id == 4094 { 4093 } else { vlan_id + 1 };
    replace_member_program(&agent_a, &trunk_a, "mistag", &vlan::member_egress(other_vlan, trunk_index, member_mac, GATEWAY_MAC).unwrap());
    assert!(!ping(&trunk_a.path(), shared_b.ip), "a frame under another VLAN must not pass");
    let after_mistag = nft_counter(&vpc_ns, "wrong_vlan");
    assert!(after_mistag > wrong, "the vRouter counted the mistagged frames ({wrong} → {after_mistag})");
    let out = check(&agent_a, &trunk_a);
    assert!(!out.ok && out.stdout.contains("berth_member"), "CHECK notices the member's program is gone: {out:?}");
    replace_member_program(&agent_a, &trunk_a, "untagged", &untagged_program(trunk_index, member_mac));
    assert!(!ping(&trunk_a.path(), shared_b.ip), "an untagged member frame must not pass");
    assert!(nft_counter(&vpc_ns, "wrong_vlan") > after_mistag, "the vRouter counted the untagged frames");
    replace_member_program(&agent_a, &trunk_a, "berth_member", &vlan::member_egress(vlan_id, trunk_index, member_mac, GATEWAY_MAC).unwrap());
    assert!(ping(&trunk_a.path(), shared_b.ip), "the right tag passes again");

    // A restarted agent knows the trunk and the member again.
    agent_a.restart();
    assert!(check(&agent_a, &trunk_a).ok, "CHECK after an agent restart\n{}", agent_a.log());
    let (ok, text) = inspect(&lc, &agent_a);
    assert!(ok, "inspect after an agent restart: {text}");
    assert!(ping(&trunk_a.path(), shared_b.ip), "trunk pod → node B after the restart");

    // DEL gives the member back; the trunk stays.
    tokio::task::block_in_place(|| del_pod(&agent_a, &trunk_a));
    let deadline = Instant::now() + Duration::from_secs(15);
    while cloud.describe_network_interfaces(&EniFilter { ids: vec![member.id.clone()], ..Default::default() }).await.unwrap().iter().any(|e| e.id == member.id) {
        assert!(Instant::now() < deadline, "the member ENI {} was not deleted\n{}", member.id, agent_a.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let enis = cloud.describe_network_interfaces(&EniFilter { ids: vec![trunk.id.clone()], ..Default::default() }).await.unwrap();
    assert_eq!(enis.first().and_then(|e| e.instance_id.clone()).as_deref(), Some(node_a.as_str()), "the trunk stays attached");
    tokio::task::block_in_place(|| {
        del_pod(&agent_a, &shared_a);
        del_pod(&agent_a, &exclusive_a);
        del_pod(&agent_b, &shared_b);
    });
}

/// Security groups follow a pod's own ENI: a member or exclusive ENI in a group that drops a port
/// cannot be reached on it, while a pod of another group can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pods_own_security_groups_decide_who_reaches_it() {
    use berth_cloud::model::{Direction, IpProtocol, Policy, SecurityGroupRule};
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let lc = LocalCloud::start(LocalCloudOptions::default());
    let cloud = lc.client();
    let net = SampleNet::create(&cloud, "10.88.0.0/16", "10.88.1.0/24").await;
    net.open_to(&cloud, "10.0.0.0/8").await;
    let rule = |policy, priority| SecurityGroupRule { direction: Direction::Ingress, protocol: IpProtocol::Tcp, ports: Some((9000, 9000)), peer_cidr: "10.88.0.0/16".parse().unwrap(), policy, priority };
    let open = cloud.create_security_group(&net.vpc, "open", None).await.unwrap();
    let closed = cloud.create_security_group(&net.vpc, "closed", None).await.unwrap();
    cloud.authorize_security_group(&open, &rule(Policy::Accept, 10)).await.unwrap();
    // "closed" accepts the port at priority 10 but drops it at priority 1, which wins.
    cloud.authorize_security_group(&closed, &rule(Policy::Accept, 10)).await.unwrap();
    cloud.authorize_security_group(&closed, &rule(Policy::Drop, 1)).await.unwrap();
    let node_a = net.run(&cloud, "ecs.c7.xlarge", &net.sg).await;
    let node_b = net.run(&cloud, "ecs.c7.xlarge", &net.sg).await;
    // No shared pool on A: its three secondary ENI slots go to the trunk and two exclusive pods.
    let agent_a = AgentProcess::start(&lc, &node_a, &["--min-idle-ips", "0", "--max-idle-ips", "0", "--trunk", "true"]);
    let agent_b = AgentProcess::start(&lc, &node_b, &["--min-idle-ips", "1", "--max-idle-ips", "2"]);

    let pods = tokio::task::block_in_place(|| {
        [
            add_pod(&agent_a, "t-open", &format!("BERTH_NETWORK_MODE=trunk;BERTH_SECURITY_GROUP_IDS={open}")),
            add_pod(&agent_a, "t-closed", &format!("BERTH_NETWORK_MODE=trunk;BERTH_SECURITY_GROUP_IDS={closed}")),
            add_pod(&agent_a, "x-open", &format!("BERTH_NETWORK_MODE=exclusive;BERTH_SECURITY_GROUP_IDS={open}")),
            add_pod(&agent_a, "x-closed", &format!("BERTH_NETWORK_MODE=exclusive;BERTH_SECURITY_GROUP_IDS={closed}")),
        ]
    });
    let client = tokio::task::block_in_place(|| add_pod(&agent_b, "client", ""));
    for p in &pods {
        berth_tests::tcp_listen(&p.path(), 9000);
        let eni = cloud.describe_network_interfaces(&EniFilter { instance_id: Some(node_a.clone()), ..Default::default() }).await.unwrap().into_iter().find(|e| e.primary_ip == p.ip).expect("the pod's own ENI");
        let want = if p.container_id.ends_with("-open") { &open } else { &closed };
        assert_eq!(&eni.security_group_ids, &vec![want.clone()], "{}'s ENI is in the group it asked for", p.container_id);
    }
    for p in &pods {
        let reached = tokio::task::block_in_place(|| berth_tests::tcp_connects(&client.path(), p.ip, 9000));
        assert_eq!(reached, p.container_id.ends_with("-open"), "{} ({}) on port 9000", p.container_id, p.ip);
    }

    // Impossible requests get a clear, final error (CNI 7) naming what is wrong, and leave nothing.
    let other_vpc = SampleNet::create(&cloud, "10.99.0.0/16", "10.99.1.0/24").await;
    let enis_before = cloud.describe_network_interfaces(&EniFilter::default()).await.unwrap().len();
    for (args, names) in [
        ("BERTH_NETWORK_MODE=trunk".to_string(), "trunk".to_string()),
        ("BERTH_NETWORK_MODE=exclusive;BERTH_VSWITCH_ID=vsw-nowhere".to_string(), "vsw-nowhere".to_string()),
        (format!("BERTH_NETWORK_MODE=exclusive;BERTH_SECURITY_GROUP_IDS={}", other_vpc.sg), other_vpc.sg.clone()),
    ] {
        let e = tokio::task::block_in_place(|| berth_tests::pods::try_add_pod(&agent_b, "impossible", &args)).err().unwrap_or_else(|| panic!("{args} must fail"));
        assert!(e.contains("CNI error 7") && e.contains(&names), "{args}: {e}");
    }
    assert_eq!(cloud.describe_network_interfaces(&EniFilter::default()).await.unwrap().len(), enis_before, "no ENI left behind by refused ADDs");
    assert_eq!(agent_b.pool().await["allocations"].as_array().unwrap().len(), 1, "only the client holds an IP on B");
    tokio::task::block_in_place(|| {
        for p in &pods {
            del_pod(&agent_a, p);
        }
        del_pod(&agent_b, &client);
    });
}

/// Bits per second a bulk TCP stream from one namespace to another reaches, measured at the
/// receiver over 2.5 s after a 1 s warm-up.
fn stream_rate(from: &std::path::Path, to_ns: &std::path::Path, to: std::net::Ipv4Addr, port: u16) -> f64 {
    use std::io::{Read as _, Write as _};
    let listener = berth_nodenet::Netns::open(to_ns).unwrap().run_in(move || std::net::TcpListener::bind(("0.0.0.0", port))).unwrap().unwrap();
    let stream = berth_nodenet::Netns::open(from).unwrap().run_in(move || std::net::TcpStream::connect_timeout(&(to, port).into(), Duration::from_secs(3))).unwrap().expect("connect");
    let sender = std::thread::spawn(move || {
        let mut stream = stream;
        let chunk = vec![0u8; 64 * 1024];
        let end = Instant::now() + Duration::from_millis(3800);
        while Instant::now() < end {
            if stream.write_all(&chunk).is_err() {
                break;
            }
        }
    });
    let (mut conn, _) = listener.accept().unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = vec![0u8; 256 * 1024];
    let start = Instant::now();
    let (warm, end) = (start + Duration::from_secs(1), start + Duration::from_millis(3500));
    let mut counted = 0u64;
    while Instant::now() < end {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) if Instant::now() >= warm => counted += n as u64,
            Ok(_) => {}
        }
    }
    drop(conn);
    sender.join().unwrap();
    counted as f64 * 8.0 / 2.5
}

/// Bandwidth limits hold in every mode: a limited pod's bulk stream stays within 10% of its limit,
/// in the direction it was limited, and CHECK sees the limits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bandwidth_limits_hold_within_ten_percent_in_every_mode() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    const LIMIT: f64 = 20_000_000.0;
    let lc = LocalCloud::start(LocalCloudOptions::default());
    let cloud = lc.client();
    let net = SampleNet::create(&cloud, "10.89.0.0/16", "10.89.1.0/24").await;
    net.open_to(&cloud, "10.0.0.0/8").await;
    let node_a = net.run(&cloud, "ecs.c7.xlarge", &net.sg).await;
    let node_b = net.run(&cloud, "ecs.c7.xlarge", &net.sg).await;
    let agent_a = AgentProcess::start(&lc, &node_a, &["--min-idle-ips", "1", "--max-idle-ips", "2", "--trunk", "true"]);
    let agent_b = AgentProcess::start(&lc, &node_b, &["--min-idle-ips", "1", "--max-idle-ips", "2"]);
    let both = "BERTH_INGRESS_BANDWIDTH=20M;BERTH_EGRESS_BANDWIDTH=20M";
    let (free, shared, trunk, exclusive, peer) = tokio::task::block_in_place(|| {
        (
            add_pod(&agent_a, "bw-free", ""),
            add_pod(&agent_a, "bw-s", both),
            add_pod(&agent_a, "bw-t", &format!("BERTH_NETWORK_MODE=trunk;{both}")),
            add_pod(&agent_a, "bw-x", &format!("BERTH_NETWORK_MODE=exclusive;{both}")),
            add_pod(&agent_b, "peer", ""),
        )
    });
    // An unlimited pod on the same path is far faster: the limit is the pod's, not the path's.
    let unlimited = tokio::task::block_in_place(|| stream_rate(&peer.path(), &free.path(), free.ip, 7000));
    eprintln!("unlimited: {:.2} Mbit/s", unlimited / 1e6);
    assert!(unlimited > 2.0 * LIMIT, "an unlimited stream ran at {:.2} Mbit/s", unlimited / 1e6);
    for (pod, port) in [(&shared, 7001), (&trunk, 7002), (&exclusive, 7003)] {
        for (direction, rate) in [
            ("egress", tokio::task::block_in_place(|| stream_rate(&pod.path(), &peer.path(), peer.ip, port))),
            ("ingress", tokio::task::block_in_place(|| stream_rate(&peer.path(), &pod.path(), pod.ip, port + 100))),
        ] {
            let off = (rate - LIMIT).abs() / LIMIT;
            eprintln!("{} {direction}: {:.2} Mbit/s ({:.1}% off the limit)", pod.container_id, rate / 1e6, off * 100.0);
            assert!(off <= 0.10, "{} {direction} ran at {:.2} Mbit/s, limit 20", pod.container_id, rate / 1e6);
        }
    }
    let bad = tokio::task::block_in_place(|| berth_tests::pods::try_add_pod(&agent_a, "bw-bad", "BERTH_EGRESS_BANDWIDTH=fast")).err().expect("a bad bandwidth is refused");
    assert!(bad.contains("BERTH_EGRESS_BANDWIDTH") && bad.contains("CNI error 4"), "{bad}");
    assert_eq!(agent_a.pool().await["allocations"].as_array().unwrap().len(), 4, "the refused ADD took no IP");
    tokio::task::block_in_place(|| {
        for p in [&free, &shared, &trunk, &exclusive] {
            del_pod(&agent_a, p);
        }
        del_pod(&agent_b, &peer);
    });
}

/// Crash safety of the new modes: `kill -9` at random instants while runtimes churn shared, trunk
/// and exclusive pods; in the end no ENI or member ENI leaks (none left unattached in the cloud,
/// every attached one owned by the agent), and the books match the live pods.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_churn_of_all_modes_leaks_no_eni() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let lc = LocalCloud::start(LocalCloudOptions::default());
    let cloud = lc.client();
    let net = SampleNet::create(&cloud, "10.95.0.0/16", "10.95.1.0/24").await;
    let node = net.run(&cloud, "ecs.c7.2xlarge", &net.sg).await;
    let agent = AgentProcess::start(&lc, &node, &["--min-idle-ips", "2", "--max-idle-ips", "3", "--cooldown-secs", "0", "--reconcile-secs", "1", "--trunk", "true"]);
    let (trunk, exclusive) = ("BERTH_NETWORK_MODE=trunk", "BERTH_NETWORK_MODE=exclusive");
    let (mut agent, outcome) = tokio::task::block_in_place(|| berth_tests::pods::churn(agent, &["", "", trunk, trunk, trunk, exclusive, exclusive], 25));
    assert!(outcome.added >= 10 && outcome.kills >= 3, "{} ADDs, {} kills: the churn did not exercise the agent", outcome.added, outcome.kills);
    agent.restart();
    let live: std::collections::BTreeSet<String> = outcome.live.iter().map(|(id, _)| id.clone()).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, text) = inspect(&lc, &agent);
        let pool = agent.pool().await;
        let holders: std::collections::BTreeSet<String> = pool["allocations"].as_array().unwrap().iter().map(|a| a["key"]["container_id"].as_str().unwrap().to_string()).collect();
        let enis = cloud.describe_network_interfaces(&EniFilter { vpc_id: Some(net.vpc.clone()), ..Default::default() }).await.unwrap();
        let loose: Vec<&str> = enis.iter().filter(|e| e.instance_id.is_none()).map(|e| e.id.as_str()).collect();
        let members = enis.iter().filter(|e| e.kind == EniKind::Member).count();
        let trunk_pods = outcome.live.iter().filter(|(id, _)| id.starts_with("w2-") || id.starts_with("w3-") || id.starts_with("w4-")).count();
        if ok && holders == live && loose.is_empty() && members == trunk_pods {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after {} operations and {} kills: holders {holders:?}, live {live:?}, unattached ENIs {loose:?}, {members} members for {trunk_pods} trunk pods\n{text}\n{}",
            outcome.ops,
            outcome.kills,
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    eprintln!("{} ADD/DEL ({} successful ADDs), {} kills, {} pods alive at the end", outcome.ops, outcome.added, outcome.kills, live.len());
}

/// Warm pools of pods' own ENIs: an exclusive ENI kept attached and member ENIs kept bound serve
/// pods that ask for nothing special, and are topped up again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_exclusive_and_member_enis_serve_adds_and_are_topped_up() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let lc = LocalCloud::start(LocalCloudOptions::default());
    let cloud = lc.client();
    let net = SampleNet::create(&cloud, "10.94.0.0/16", "10.94.1.0/24").await;
    net.open_to(&cloud, "10.0.0.0/8").await;
    let node = net.run(&cloud, "ecs.c7.2xlarge", &net.sg).await;
    let mut agent = AgentProcess::start(&lc, &node, &["--min-idle-ips", "1", "--max-idle-ips", "2", "--trunk", "true", "--warm-exclusive-enis", "1", "--warm-member-enis", "2"]);
    let warm = |pool: &serde_json::Value, phase: &str| -> Vec<String> { pool["enis"].as_array().unwrap().iter().filter(|e| e["phase"] == phase).map(|e| e["id"].as_str().unwrap().to_string()).collect() };
    let wait_warm = |want: (usize, usize)| {
        let agent = &agent;
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let pool = agent.pool().await;
                let (x, m) = (warm(&pool, "WarmExclusive"), warm(&pool, "WarmMember"));
                if (x.len(), m.len()) == want {
                    return (x, m);
                }
                assert!(Instant::now() < deadline, "warm ENIs {x:?} {m:?}, want {want:?}\n{}", agent.log());
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let (warm_x, warm_m) = wait_warm((1, 2)).await;
    let (excl, trunk) = tokio::task::block_in_place(|| (add_pod(&agent, "wx", "BERTH_NETWORK_MODE=exclusive"), add_pod(&agent, "wt", "BERTH_NETWORK_MODE=trunk")));
    let pool = agent.pool().await;
    let eni_of = |id: &str| pool["allocations"].as_array().unwrap().iter().find(|a| a["key"]["container_id"] == id).map(|a| a["eni_id"].as_str().unwrap().to_string()).unwrap();
    assert!(warm_x.contains(&eni_of("wx")), "the exclusive pod took the warm ENI");
    assert!(warm_m.contains(&eni_of("wt")), "the trunk pod took a warm member");
    assert!(ping(&excl.path(), trunk.ip), "exclusive ↔ trunk on warm ENIs");
    // Topped up again, with new ENIs.
    let (again_x, again_m) = wait_warm((1, 2)).await;
    assert!(!again_x.contains(&eni_of("wx")) && !again_m.contains(&eni_of("wt")));
    let (ok, text) = inspect(&lc, &agent);
    assert!(ok, "inspect with warm ENIs: {text}");
    tokio::task::block_in_place(|| {
        del_pod(&agent, &excl);
        del_pod(&agent, &trunk);
    });
    // The released ENIs are warm again and the surplus goes back to the cloud. A restarted agent
    // keeps the warm ones as they are, without a cloud call for them.
    let before = settled_warm(&agent).await;
    agent.restart();
    let after = settled_warm(&agent).await;
    assert_eq!(after, before, "the restarted agent kept other warm ENIs\n{}", agent.log());
    let metrics = agent.metrics().await;
    let eni_calls: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("berth_agent_cloud_call_seconds_count") && ["CreateNetworkInterface", "DeleteNetworkInterface", "AttachNetworkInterface", "DetachNetworkInterface"].iter().any(|a| l.contains(&format!("\"{a}\""))))
        .collect();
    assert!(eni_calls.is_empty(), "the restarted agent made ENI calls for warm ENIs it had: {eni_calls:?}");
    let (ok, text) = inspect(&lc, &agent);
    assert!(ok, "inspect after the restart: {text}");
}

/// The agent's warm exclusive and member ENIs once it has one and two of them and nothing is
/// being deleted.
async fn settled_warm(agent: &AgentProcess) -> (Vec<String>, Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let pool = agent.pool().await;
        let enis = pool["enis"].as_array().unwrap();
        let of = |phase: &str| -> Vec<String> { enis.iter().filter(|e| e["phase"] == phase).map(|e| e["id"].as_str().unwrap().to_string()).collect() };
        let (x, m) = (of("WarmExclusive"), of("WarmMember"));
        if (x.len(), m.len()) == (1, 2) && of("Draining").is_empty() {
            return (x, m);
        }
        assert!(Instant::now() < deadline, "warm ENIs {x:?} {m:?}, draining {:?}\n{}", of("Draining"), agent.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn ipv6_of(pod: &Pod) -> std::net::Ipv6Addr {
    pod.result["ips"].as_array().unwrap().iter().filter_map(|e| e["address"].as_str()?.split('/').next()?.parse().ok()).next().unwrap_or_else(|| panic!("{} has no IPv6 address: {}", pod.container_id, pod.result))
}

/// Dual-stack: on agents with `pool.ip_stack = "dual"`, pods of all three modes get an IPv6 address
/// of their ENI beside the IPv4 one and reach each other over IPv6, on one node and across nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_pods_of_every_mode_reach_each_other_over_ipv6() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let lc = LocalCloud::start(LocalCloudOptions::default());
    let cloud = lc.client();
    let net = SampleNet::create_dual(&cloud, "10.93.0.0/16", "10.93.1.0/24").await;
    net.open_to(&cloud, "10.0.0.0/8").await;
    net.open_to(&cloud, "::/0").await;
    let node_a = net.run(&cloud, "ecs.c7.xlarge", &net.sg).await;
    let node_b = net.run(&cloud, "ecs.c7.xlarge", &net.sg).await;
    let flags = ["--min-idle-ips", "2", "--max-idle-ips", "4", "--ip-stack", "dual"];
    let agent_a = AgentProcess::start(&lc, &node_a, &[&flags[..], &["--trunk", "true"]].concat());
    let agent_b = AgentProcess::start(&lc, &node_b, &flags);
    let pods = tokio::task::block_in_place(|| {
        [add_pod(&agent_a, "s6", ""), add_pod(&agent_a, "x6", "BERTH_NETWORK_MODE=exclusive"), add_pod(&agent_a, "t6", "BERTH_NETWORK_MODE=trunk"), add_pod(&agent_b, "b6", "")]
    });
    // Each pod's IPv6 address is its ENI's in the cloud.
    let enis = cloud.describe_network_interfaces(&EniFilter { vpc_id: Some(net.vpc.clone()), ..Default::default() }).await.unwrap();
    for p in &pods {
        let ip6 = ipv6_of(p);
        assert!(enis.iter().any(|e| e.ipv6_addresses.contains(&ip6)), "{}'s {ip6} is no ENI's in the cloud", p.container_id);
    }
    for from in &pods {
        for to in &pods {
            if from.container_id != to.container_id {
                let (ok, out) = tokio::task::block_in_place(|| berth_tests::in_netns(&from.path(), &["ping", "-6", "-c", "2", "-i", "0.2", "-W", "2", &ipv6_of(to).to_string()]));
                assert!(ok, "{} → {} over IPv6: {out}\n{}", from.container_id, to.container_id, agent_a.log());
                assert!(ping(&from.path(), to.ip), "{} → {} over IPv4", from.container_id, to.container_id);
            }
        }
    }
    let (ok, text) = inspect(&lc, &agent_a);
    assert!(ok, "inspect of a dual-stack node: {text}");
    tokio::task::block_in_place(|| {
        for p in &pods[..3] {
            del_pod(&agent_a, p);
        }
        del_pod(&agent_b, &pods[3]);
    });
}

/// Pods' own ENIs on this node, by phase, as the agent's books have them.
fn eni_phases(pool: &serde_json::Value) -> std::collections::BTreeMap<String, String> {
    pool["enis"].as_array().unwrap().iter().map(|e| (e["id"].as_str().unwrap().to_string(), e["phase"].as_str().unwrap().to_string())).collect()
}

/// Waits until the node has no pod left and its pods' own ENIs in the cloud are exactly the warm
/// ones the agent keeps (the surplus deleted, none left unattached in the VPC); returns them.
async fn settled(lc: &LocalCloud, agent: &AgentProcess, vpc: &str, warm_phase: &str, warm_target: usize) -> Vec<String> {
    let cloud = lc.client();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let pool = agent.pool().await;
        let phases = eni_phases(&pool);
        let warm: Vec<String> = phases.iter().filter(|(_, p)| *p == warm_phase).map(|(id, _)| id.clone()).collect();
        let enis = cloud.describe_network_interfaces(&EniFilter { vpc_id: Some(vpc.to_string()), ..Default::default() }).await.unwrap();
        let loose: Vec<&str> = enis.iter().filter(|e| e.instance_id.is_none()).map(|e| e.id.as_str()).collect();
        let own: Vec<String> = enis.iter().filter(|e| e.instance_id.as_deref() == Some(&agent.instance_id) && (e.description.starts_with("berth warm") || e.description.starts_with("berth member") || e.description.starts_with("berth exclusive"))).map(|e| e.id.clone()).collect();
        let allocations = pool["allocations"].as_array().unwrap().len();
        let mut sorted_warm = warm.clone();
        sorted_warm.sort();
        let mut sorted_own = own.clone();
        sorted_own.sort();
        if allocations == 0 && loose.is_empty() && sorted_own == sorted_warm && warm.len() <= warm_target {
            return warm;
        }
        assert!(Instant::now() < deadline, "{allocations} allocations left, unattached ENIs {loose:?}, pods' ENIs in the cloud {own:?}, warm in the agent {warm:?} (target {warm_target})\n{}", agent.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Churn at each mode's quota (200 trunk pods, 100 exclusive, 8 in parallel, mixed security
/// groups, ADD and DEL in random order, never more pods alive than the node has slots): no ADD
/// fails, no ENI leaks, and the cloud calls per pod are counted and kept far below one ENI's
/// create, attach, poll, detach and delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_at_the_quota_of_trunk_and_exclusive_mode_fails_no_add_and_leaks_no_eni() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let lc = LocalCloud::start(LocalCloudOptions::default());
    let cloud = lc.client();
    let net = SampleNet::create(&cloud, "10.93.0.0/16", "10.93.0.0/20").await;
    let other_sg = cloud.create_security_group(&net.vpc, "other", None).await.unwrap();
    let mixed = |mode: &str| vec![format!("BERTH_NETWORK_MODE={mode}"), format!("BERTH_NETWORK_MODE={mode};BERTH_SECURITY_GROUP_IDS={other_sg}")];
    // ecs.c7.xlarge: 12 member ENIs; ecs.c7.2xlarge: 5 secondary ENIs, 1 taken by the shared pool.
    for (mode, instance_type, quota, pods, flags, warm_phase) in [
        ("trunk", "ecs.c7.xlarge", 12, 200, ["--trunk", "true", "--warm-member-enis", "4"], "WarmMember"),
        ("exclusive", "ecs.c7.2xlarge", 4, 100, ["--trunk", "false", "--warm-exclusive-enis", "2"], "WarmExclusive"),
    ] {
        let node = net.run(&cloud, instance_type, &net.sg).await;
        let mut args = vec!["--min-idle-ips", "1", "--max-idle-ips", "2", "--reconcile-secs", "2"];
        args.extend(flags);
        let agent = AgentProcess::start(&lc, &node, &args);
        let target: usize = flags[3].parse().unwrap();
        // The warm pool full before counting: the churn's own calls are what is measured.
        settled(&lc, &agent, &net.vpc, warm_phase, target).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        while eni_phases(&agent.pool().await).values().filter(|p| *p == warm_phase).count() < target {
            assert!(Instant::now() < deadline, "the warm pool did not fill:\n{}", agent.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let calls_before = agent.cloud_calls().await;
        let started = Instant::now();
        let outcome = tokio::task::block_in_place(|| berth_tests::pods::churn_at_quota(&agent, &mixed(mode), pods, quota, 8));
        let took = started.elapsed();
        assert!(outcome.failed.is_empty(), "{mode}: {} ADDs failed with a slot free:\n{}\n{}", outcome.failed.len(), outcome.failed.join("\n"), agent.log());
        assert_eq!((outcome.added, outcome.peak), (pods, quota), "{mode}: every pod added, the node at its quota at times");
        settled(&lc, &agent, &net.vpc, warm_phase, target).await;
        let calls = agent.cloud_calls().await - calls_before;
        let per_pod = calls as f64 / pods as f64;
        eprintln!("{mode}: {pods} pods churned at a quota of {quota} in {took:?}: {calls} cloud calls ({per_pod:.2} per pod)");
        // Without reuse each pod costs a create, an attach, its polls, a detach and a delete (8–11).
        assert!(per_pod <= 2.0, "{mode}: {calls} cloud calls for {pods} pods ({per_pod:.2} per pod)\n{}", agent.log());
        let (ok, text) = inspect(&lc, &agent);
        assert!(ok, "{mode}: inspect after the churn: {text}");
    }
}

/// `kill -9` while the agent deletes the ENIs DELs gave back (no warm pool to keep them): DEL has
/// returned before the cloud is done, the restarted agent finishes the journaled deletions, and the
/// ENIs of the pods still alive are untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_the_background_deletion_leaves_no_surplus_eni_and_keeps_every_pods() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let lc = LocalCloud::start(LocalCloudOptions::default());
    let cloud = lc.client();
    let net = SampleNet::create(&cloud, "10.92.0.0/16", "10.92.1.0/24").await;
    let node = net.run(&cloud, "ecs.c7.2xlarge", &net.sg).await;
    let mut agent = AgentProcess::start(&lc, &node, &["--min-idle-ips", "1", "--max-idle-ips", "2", "--trunk", "true"]);
    let modes = ["BERTH_NETWORK_MODE=trunk", "BERTH_NETWORK_MODE=exclusive"];
    let pods: Vec<Pod> = tokio::task::block_in_place(|| (0..6).map(|i| add_pod(&agent, &format!("k{i}"), modes[i % 2])).collect());
    let pool = agent.pool().await;
    let eni_of = |id: &str| pool["allocations"].as_array().unwrap().iter().find(|a| a["key"]["container_id"] == id).map(|a| a["eni_id"].as_str().unwrap().to_string()).unwrap();
    let (kept, gone): (Vec<&Pod>, Vec<&Pod>) = pods.iter().partition(|p| p.container_id == "k0" || p.container_id == "k1");
    let kept_enis: Vec<String> = kept.iter().map(|p| eni_of(&p.container_id)).collect();
    let gone_enis: Vec<String> = gone.iter().map(|p| eni_of(&p.container_id)).collect();
    tokio::task::block_in_place(|| gone.iter().for_each(|p| del_pod(&agent, p)));
    // The DELs are back; the cloud still has what they released (each detach takes 200 ms here).
    let present = |enis: Vec<berth_cloud::model::NetworkInterface>, ids: &[String]| ids.iter().filter(|id| enis.iter().any(|e| &e.id == *id)).cloned().collect::<Vec<_>>();
    let all = cloud.describe_network_interfaces(&EniFilter { vpc_id: Some(net.vpc.clone()), ..Default::default() }).await.unwrap();
    let interrupted = present(all, &gone_enis);
    agent.kill9();
    assert!(!interrupted.is_empty(), "the DELs waited for the cloud: all of {gone_enis:?} were gone when they returned");
    agent.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let all = cloud.describe_network_interfaces(&EniFilter { vpc_id: Some(net.vpc.clone()), ..Default::default() }).await.unwrap();
        let left = present(all.clone(), &gone_enis);
        let intact: Vec<&String> = kept_enis.iter().filter(|id| all.iter().any(|e| &e.id == *id && e.status == berth_cloud::model::EniStatus::InUse && e.instance_id.as_deref() == Some(&agent.instance_id))).collect();
        let pool = agent.pool().await;
        let held: Vec<String> = pool["allocations"].as_array().unwrap().iter().map(|a| a["eni_id"].as_str().unwrap().to_string()).collect();
        if left.is_empty() && intact.len() == kept_enis.len() && kept_enis.iter().all(|e| held.contains(e)) && held.len() == kept_enis.len() {
            break;
        }
        assert!(Instant::now() < deadline, "released ENIs still in the cloud {left:?} (interrupted {interrupted:?}), kept pods' ENIs intact {intact:?} of {kept_enis:?}, held {held:?}\n{}", agent.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(ping(&kept[0].path(), kept[1].ip), "the kept trunk pod reaches the kept exclusive pod after the restart");
    let (ok, text) = inspect(&lc, &agent);
    assert!(ok, "inspect after the restart: {text}");
    tokio::task::block_in_place(|| kept.iter().for_each(|p| del_pod(&agent, p)));
}

/// A released exclusive ENI serves the next exclusive pod without a cloud call (DEL none either),
/// its NIC back from the first pod's namespace and working in the second's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_exclusive_eni_serves_the_next_pod_without_a_cloud_call() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let lc = LocalCloud::start(LocalCloudOptions::default());
    let cloud = lc.client();
    let net = SampleNet::create(&cloud, "10.91.0.0/16", "10.91.1.0/24").await;
    net.open_to(&cloud, "10.0.0.0/8").await;
    // ecs.c7.xlarge: 3 secondary ENIs, 1 the shared pool's; the warm top-up leaves the last to pods.
    let node = net.run(&cloud, "ecs.c7.xlarge", &net.sg).await;
    let agent = AgentProcess::start(&lc, &node, &["--min-idle-ips", "1", "--max-idle-ips", "2", "--trunk", "false", "--warm-exclusive-enis", "2", "--reconcile-secs", "3600"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while eni_phases(&agent.pool().await).values().filter(|p| *p == "WarmExclusive").count() < 1 {
        assert!(Instant::now() < deadline, "no warm ENI:\n{}", agent.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let shared = tokio::task::block_in_place(|| add_pod(&agent, "rs", ""));
    let eni_of = |pool: &serde_json::Value, id: &str| pool["allocations"].as_array().unwrap().iter().find(|a| a["key"]["container_id"] == id).map(|a| a["eni_id"].as_str().unwrap().to_string());
    let first = tokio::task::block_in_place(|| add_pod(&agent, "rx1", "BERTH_NETWORK_MODE=exclusive"));
    let eni = eni_of(&agent.pool().await, "rx1").unwrap();
    // The shared pool done growing after the shared pod took an IP: its calls are not counted.
    while agent.pool().await["status"]["idle"].as_u64().unwrap_or(0) < 1 {
        assert!(Instant::now() < deadline + Duration::from_secs(20), "the shared pool did not grow back:\n{}", agent.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let calls = agent.cloud_calls().await;
    tokio::task::block_in_place(|| del_pod(&agent, &first));
    assert_eq!(eni_phases(&agent.pool().await)[&eni], "WarmExclusive", "the released ENI waits for the next pod");
    let second = tokio::task::block_in_place(|| add_pod(&agent, "rx2", "BERTH_NETWORK_MODE=exclusive"));
    assert_eq!(eni_of(&agent.pool().await, "rx2").as_deref(), Some(eni.as_str()), "the next exclusive pod got the released ENI");
    assert_eq!(agent.cloud_calls().await - calls, 0, "neither the DEL nor the ADD called the cloud");
    assert!(ping(&second.path(), shared.ip), "the reused ENI carries the second pod's traffic");
    let (ok, text) = inspect(&lc, &agent);
    assert!(ok, "inspect with a reused ENI: {text}");
    tokio::task::block_in_place(|| {
        del_pod(&agent, &second);
        del_pod(&agent, &shared);
    });
}

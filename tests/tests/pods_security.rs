//! Security groups on every path, in every mode (issue 16, item 1): a target pod of each mode
//! (shared, exclusive, trunk) on node A is sent to by a shared, a trunk and an exclusive pod of
//! the same node, by node A itself, by a pod of node B, and by a pod forging a source, and each
//! datagram (UDP, and a TCP connection for every real source) arrives exactly when the target's
//! security groups allow that source. Each target's rules are /32 rules per source, written twice
//! with opposite verdicts (round 1, then round 2), so every cell is seen both allowed and denied
//! wherever the VPC is on its path. The drops are counted in both daemons' metrics per reason.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_cloud::Cloud as _;
use berth_cloud::model::{Direction, IpProtocol, Policy, SecurityGroupRule};
use berth_tests::agent::AgentProcess;
use berth_tests::pods::{Pod, add_pod, del_pod};
use berth_tests::{LocalCloud, LocalCloudOptions, SampleNet, in_netns, is_root};

const UDP_PORT: u16 = 9500;
const TCP_PORT: u16 = 9600;
/// An address of the vSwitch the cloud never assigned: what the forging pod claims to be.
const FORGED: Ipv4Addr = Ipv4Addr::new(10, 86, 1, 250);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Target {
    Shared,
    Exclusive,
    Trunk,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Source {
    SharedPod,
    TrunkPod,
    ExclusivePod,
    Node,
    OtherNode,
    Forged,
}

const TARGETS: [Target; 3] = [Target::Shared, Target::Exclusive, Target::Trunk];
const SOURCES: [Source; 6] = [Source::SharedPod, Source::TrunkPod, Source::ExclusivePod, Source::Node, Source::OtherNode, Source::Forged];

/// What the target's security groups say about the source in a round. A shared target is an
/// address of the node's own ENIs: the node and the node's other shared pods reach it inside the
/// node, as processes of one VM reach its addresses without crossing an ENI, so its groups admit
/// them in both rounds (a rule against them would never be met, on a real VPC as here). A forged
/// source is admitted by the groups (an accept rule for the forged address), so only the source
/// check stops it.
fn allowed(round: usize, t: Target, s: Source) -> bool {
    match (t, s) {
        (_, Source::Forged) => true,
        (Target::Shared, Source::SharedPod | Source::Node) => true,
        _ => (t as usize + s as usize + round).is_multiple_of(2),
    }
}

/// Whether the datagram is delivered: the groups' verdict, except that a forged one never is.
fn expected(round: usize, t: Target, s: Source) -> bool {
    s != Source::Forged && allowed(round, t, s)
}

/// Collects the UDP payloads a namespace receives on a port (of IPv4, or IPv6 with `v6`), on a
/// thread of its own.
fn udp_collector(netns: &Path, port: u16, v6: bool) -> Arc<Mutex<Vec<String>>> {
    let any = if v6 { "::" } else { "0.0.0.0" };
    let sock = berth_nodenet::Netns::open(netns).unwrap().run_in(move || UdpSocket::bind((any, port))).unwrap().unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let into = got.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        while let Ok((n, _)) = sock.recv_from(&mut buf) {
            into.lock().unwrap().push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    });
    got
}

/// A socket of `ty` in a namespace bound to `src` (a forging pod holds the address it claims).
fn socket_from(netns: &Path, src: IpAddr, ty: nix::sys::socket::SockType) -> std::os::fd::OwnedFd {
    use nix::sys::socket::{AddressFamily, SockFlag, SockaddrIn, SockaddrIn6, bind, setsockopt, socket, sockopt};
    berth_nodenet::Netns::open(netns)
        .unwrap()
        .run_in(move || {
            let family = if src.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
            let fd = socket(family, ty, SockFlag::SOCK_CLOEXEC, None).unwrap();
            setsockopt(&fd, sockopt::SendTimeout, &nix::sys::time::TimeVal::new(3, 0)).unwrap();
            use std::os::fd::AsRawFd as _;
            match src {
                IpAddr::V4(a) => bind(fd.as_raw_fd(), &SockaddrIn::from(std::net::SocketAddrV4::new(a, 0))),
                IpAddr::V6(a) => bind(fd.as_raw_fd(), &SockaddrIn6::from(std::net::SocketAddrV6::new(a, 0, 0, 0))),
            }
            .unwrap_or_else(|e| panic!("bind {src}: {e}"));
            fd
        })
        .unwrap()
}

fn udp_from(netns: &Path, src: IpAddr) -> UdpSocket {
    UdpSocket::from(socket_from(netns, src, nix::sys::socket::SockType::Datagram))
}

/// Whether a TCP connection from `src` in a namespace reaches `to` within 3 s.
fn tcp_from(netns: &Path, src: Ipv4Addr, to: Ipv4Addr) -> bool {
    use std::os::fd::AsRawFd as _;
    let fd = socket_from(netns, IpAddr::V4(src), nix::sys::socket::SockType::Stream);
    nix::sys::socket::connect(fd.as_raw_fd(), &nix::sys::socket::SockaddrIn::from(std::net::SocketAddrV4::new(to, TCP_PORT))).is_ok()
}

fn rule(peer: Ipv4Addr, policy: Policy) -> SecurityGroupRule {
    SecurityGroupRule { direction: Direction::Ingress, protocol: IpProtocol::All, ports: None, peer_cidr: format!("{peer}/32").parse().unwrap(), policy, priority: 1 }
}

fn ipv6_of(pod: &Pod) -> Ipv6Addr {
    pod.result["ips"].as_array().unwrap().iter().filter_map(|e| e["address"].as_str()?.split('/').next()?.parse().ok()).next().unwrap_or_else(|| panic!("{} has no IPv6 address: {}", pod.container_id, pod.result))
}

fn metric(text: &str, name: &str, reason: &str) -> u64 {
    let prefix = format!("{name}{{reason=\"{reason}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|v| v.trim().parse::<f64>().ok()).map(|v| v as u64).unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mode_is_reached_from_every_source_exactly_when_its_security_groups_allow() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let lc = LocalCloud::start(LocalCloudOptions::default());
    let cloud = lc.client();
    let net = SampleNet::create_dual(&cloud, "10.86.0.0/16", "10.86.1.0/24").await;
    // Groups: the nodes' (their primary and pool ENIs: shared pods), the sending pods' own ENIs',
    // and one per target with its own ENI. None admits anything but what the rounds write.
    let sg_src = cloud.create_security_group(&net.vpc, "sources", None).await.unwrap();
    let sg_x = cloud.create_security_group(&net.vpc, "target-exclusive", None).await.unwrap();
    let sg_t = cloud.create_security_group(&net.vpc, "target-trunk", None).await.unwrap();
    let node_a = net.run(&cloud, "ecs.c7.2xlarge", &net.sg).await;
    let node_b = net.run(&cloud, "ecs.c7.xlarge", &net.sg).await;
    let flags = ["--min-idle-ips", "2", "--max-idle-ips", "4", "--ip-stack", "dual"];
    let mut agent_a = AgentProcess::start(&lc, &node_a, &[&flags[..], &["--trunk", "true"]].concat());
    let agent_b = AgentProcess::start(&lc, &node_b, &flags);
    let own = |mode: &str, sg: &str| format!("BERTH_NETWORK_MODE={mode};BERTH_SECURITY_GROUP_IDS={sg}");
    let (targets, sources, other) = tokio::task::block_in_place(|| {
        let targets: BTreeMap<Target, Pod> =
            [(Target::Shared, add_pod(&agent_a, "t-shared", "")), (Target::Exclusive, add_pod(&agent_a, "t-excl", &own("exclusive", &sg_x))), (Target::Trunk, add_pod(&agent_a, "t-trunk", &own("trunk", &sg_t)))].into();
        let sources: BTreeMap<Source, Pod> =
            [(Source::SharedPod, add_pod(&agent_a, "s-shared", "")), (Source::TrunkPod, add_pod(&agent_a, "s-trunk", &own("trunk", &sg_src))), (Source::ExclusivePod, add_pod(&agent_a, "s-excl", &own("exclusive", &sg_src)))].into();
        (targets, sources, add_pod(&agent_b, "s-other", ""))
    });
    let node_ip = cloud.describe_instances(&berth_cloud::api::InstanceFilter { ids: vec![node_a.clone()], ..Default::default() }).await.unwrap()[0].primary_ip;
    // Where each source sends from, and with which address.
    let origin = |s: Source| -> (PathBuf, Ipv4Addr) {
        match s {
            Source::SharedPod | Source::TrunkPod | Source::ExclusivePod => (sources[&s].path(), sources[&s].ip),
            Source::Node => (agent_a.netns.clone(), node_ip),
            Source::OtherNode => (other.path(), other.ip),
            Source::Forged => (sources[&Source::SharedPod].path(), FORGED),
        }
    };
    // The forging pod holds the address it claims, so that its kernel sends with it.
    let (ok, out) = in_netns(&sources[&Source::SharedPod].path(), &["ip", "addr", "add", &format!("{FORGED}/32"), "dev", "eth0"]);
    assert!(ok, "{out}");
    let inboxes: BTreeMap<Target, Arc<Mutex<Vec<String>>>> = targets.iter().map(|(t, p)| (*t, udp_collector(&p.path(), UDP_PORT, false))).collect();
    for p in targets.values() {
        berth_tests::tcp_listen(&p.path(), TCP_PORT);
    }
    let group_of = |t: Target| match t {
        Target::Shared => net.sg.clone(),
        Target::Exclusive => sg_x.clone(),
        Target::Trunk => sg_t.clone(),
    };
    let vpc_ns = PathBuf::from(format!("/run/netns/{}-{}", lc.prefix, net.vpc));
    let lc_metrics = || async { reqwest::get(format!("{}/metrics", lc.endpoint)).await.unwrap().text().await.unwrap() };

    let mut written: Vec<(String, SecurityGroupRule)> = Vec::new();
    let mut failures = Vec::new();
    let mut cells = 0;
    for round in 0..2 {
        for (g, r) in written.drain(..) {
            cloud.revoke_security_group(&g, &r).await.unwrap();
        }
        for t in TARGETS {
            for s in SOURCES {
                let r = rule(origin(s).1, if allowed(round, t, s) { Policy::Accept } else { Policy::Drop });
                cloud.authorize_security_group(&group_of(t), &r).await.unwrap();
                written.push((group_of(t), r));
            }
        }
        // The vRouter converges after each call; give the last one a moment.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let sg_drops_before = berth_tests::nft_counter(&vpc_ns, "sg_ingress_denied");
        let spoofed_before = metric(&agent_a.metrics().await, "berth_agent_pod_dropped_packets_total", "spoofed_source");

        // UDP: every cell at once, then a look at what arrived.
        for t in TARGETS {
            for s in SOURCES {
                let (ns, src) = origin(s);
                let sock = udp_from(&ns, IpAddr::V4(src));
                for _ in 0..3 {
                    sock.send_to(format!("{round}:{s:?}").as_bytes(), (targets[&t].ip, UDP_PORT)).unwrap_or_else(|e| panic!("{s:?} from {src}: {e}"));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        // TCP from every real source, in parallel.
        let tcp: Vec<_> = TARGETS
            .iter()
            .flat_map(|t| SOURCES.iter().filter(|s| **s != Source::Forged).map(move |s| (*t, *s)))
            .map(|(t, s)| {
                let ((ns, src), to) = (origin(s), targets[&t].ip);
                (t, s, std::thread::spawn(move || tcp_from(&ns, src, to)))
            })
            .collect();
        for t in TARGETS {
            let inbox = inboxes[&t].lock().unwrap().clone();
            for s in SOURCES {
                let got = inbox.iter().any(|m| *m == format!("{round}:{s:?}"));
                cells += 1;
                if got != expected(round, t, s) {
                    failures.push(format!("round {round}: UDP {s:?} → {t:?} ({}) delivered {got}, its groups {}", targets[&t].ip, if allowed(round, t, s) { "allow it" } else { "deny it" }));
                }
            }
        }
        for (t, s, h) in tcp {
            let got = h.join().unwrap();
            if got != expected(round, t, s) {
                failures.push(format!("round {round}: TCP {s:?} → {t:?} connected {got}, its groups {}", if allowed(round, t, s) { "allow it" } else { "deny it" }));
            }
        }
        // The drops were counted: the vRouter's denials, the node's forged sources.
        let sg_drops = berth_tests::nft_counter(&vpc_ns, "sg_ingress_denied");
        assert!(sg_drops > sg_drops_before, "round {round}: the vRouter counted no security-group drop ({sg_drops_before} → {sg_drops})");
        let spoofed = metric(&agent_a.metrics().await, "berth_agent_pod_dropped_packets_total", "spoofed_source");
        assert!(spoofed >= spoofed_before + 3, "round {round}: node A's agent counted {} forged datagrams (the node's table: {}); cells: {failures:#?}\n{}", spoofed - spoofed_before, berth_tests::nft_counter(&agent_a.netns, "spoofed_source"), agent_a.metrics().await.lines().filter(|l| l.contains("dropped")).collect::<Vec<_>>().join("\n"));
    }
    assert!(failures.is_empty(), "{} of {cells} UDP cells (and their TCP twins) are wrong:\n{}\n{}", failures.len(), failures.join("\n"), agent_a.log());
    let text = lc_metrics().await;
    assert!(metric(&text, "berth_localcloud_vrouter_dropped_packets_total", "sg_ingress_denied") > 0, "{text}");
    metric(&text, "berth_localcloud_vrouter_dropped_packets_total", "sg_egress_denied");

    // IPv6: a shared pod's own address reaches its neighbour on the node, a forged one does not.
    let (from, to) = (&sources[&Source::SharedPod], &targets[&Target::Shared]);
    let forged6: Ipv6Addr = {
        let mut seg = ipv6_of(from).segments();
        seg[7] = seg[7].wrapping_add(0x77);
        Ipv6Addr::from(seg)
    };
    let (ok, out) = in_netns(&from.path(), &["ip", "-6", "addr", "add", &format!("{forged6}/128"), "dev", "eth0", "nodad"]);
    assert!(ok, "{out}");
    let inbox6 = udp_collector(&to.path(), UDP_PORT + 1, true);
    for (src, tag) in [(ipv6_of(from), "own6"), (forged6, "forged6")] {
        let sock = udp_from(&from.path(), IpAddr::V6(src));
        for _ in 0..3 {
            sock.send_to(tag.as_bytes(), (ipv6_of(to), UDP_PORT + 1)).unwrap();
        }
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let got6 = inbox6.lock().unwrap().clone();
    assert!(got6.iter().any(|m| m == "own6"), "the pod's own IPv6 source must pass: {got6:?}");
    assert!(!got6.iter().any(|m| m == "forged6"), "a forged IPv6 source must not pass: {got6:?}");

    // An agent starting on a node whose pods the filter does not know (made before it) admits
    // them all at once: their own sources pass again, forged ones still do not.
    let (ok, out) = in_netns(&agent_a.netns, &["nft", "delete", "table", "inet", "berth_pods"]);
    assert!(ok, "{out}");
    agent_a.restart();
    let inbox = udp_collector(&to.path(), UDP_PORT + 2, false);
    for (src, tag) in [(from.ip, "own"), (FORGED, "forged")] {
        let sock = udp_from(&from.path(), IpAddr::V4(src));
        for _ in 0..3 {
            sock.send_to(tag.as_bytes(), (to.ip, UDP_PORT + 2)).unwrap();
        }
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let got = inbox.lock().unwrap().clone();
    assert!(got.iter().any(|m| m == "own") && !got.iter().any(|m| m == "forged"), "after the agent admitted the node's pods: {got:?}\n{}", agent_a.log());

    tokio::task::block_in_place(|| {
        for p in targets.values().chain(sources.values()) {
            del_pod(&agent_a, p);
        }
        del_pod(&agent_b, &other);
    });
}

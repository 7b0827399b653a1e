//! NetworkPolicy with real traffic, on one two-node cluster (local cloud booting the node image,
//! the real scheduler, `berthctl policy apply -f` with Kubernetes YAML): database pods of the three
//! network modes on node A, clients on A and on B in two namespaces. Default open; deny-all
//! ingress; allow from a label; from a namespace; from both; ipBlock with except; port and endPort
//! ranges over TCP and UDP; egress; a policy added while connections flow stops the denied one and
//! keeps the allowed one; and the agent of node A killed with SIGKILL and restarted by its
//! supervisor: no connection the policy denies gets through meanwhile, and the policy holds after.
//! Every expectation is a TCP connection with an echo or a UDP datagram and its echo.

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use berth_proto::cluster::v1 as pb;
use berth_proto::cluster::v1::scheduler_client::SchedulerClient;
use berth_tests::e2e::{Cluster, cluster, cluster_of, is, netns_of, pods, ready_nodes, sleeper};
use berth_tests::guest::{GuestLeftovers, recorded_pids};
use berth_tests::{bin, is_root, wait_for};
use tonic::transport::Channel;

const TCP_PORTS: [u16; 3] = [80, 8085, 9000];
const UDP_PORTS: [u16; 2] = [53, 54];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    Tcp,
    Udp,
}

/// A pod of the test: where it runs and its namespace's path.
#[derive(Clone, Debug)]
struct Pod {
    name: String,
    ip: IpAddr,
    netns: PathBuf,
}

fn in_ns<T: Send + 'static>(netns: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    berth_nodenet::Netns::open(netns).unwrap().run_in(f).unwrap()
}

/// TCP echo servers on [`TCP_PORTS`] and UDP echo servers on [`UDP_PORTS`] inside a pod's
/// namespace, each on a thread of its own (they end with the test process).
fn serve(p: &Pod) {
    // `::` takes IPv4 too (dual-stack sockets), where the namespace has IPv6.
    let any = if p.ip.is_ipv6() { "::" } else { "0.0.0.0" };
    for port in TCP_PORTS {
        let l = in_ns(&p.netns, move || std::net::TcpListener::bind((any, port))).unwrap();
        std::thread::spawn(move || {
            for mut conn in l.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = conn.read(&mut buf) {
                        if n == 0 || conn.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
    }
    for port in UDP_PORTS {
        let s = in_ns(&p.netns, move || std::net::UdpSocket::bind((any, port))).unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while let Ok((n, from)) = s.recv_from(&mut buf) {
                let _ = s.send_to(&buf[..n], from);
            }
        });
    }
}

/// Whether one exchange (a connection and an echo, or a datagram and its echo) from `from` to
/// `to` succeeds within about a second.
fn reaches(from: &Pod, to: IpAddr, proto: Proto, port: u16) -> bool {
    let addr = SocketAddr::new(to, port);
    in_ns(&from.netns, move || match proto {
        Proto::Tcp => {
            let Ok(mut c) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(800)) else { return false };
            c.set_read_timeout(Some(Duration::from_millis(800))).unwrap();
            let mut buf = [0u8; 4];
            c.write_all(b"ping").is_ok() && c.read_exact(&mut buf).is_ok() && &buf == b"ping"
        }
        Proto::Udp => {
            let s = std::net::UdpSocket::bind((if to.is_ipv6() { "::" } else { "0.0.0.0" }, 0)).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(400))).unwrap();
            let mut buf = [0u8; 4];
            // Two tries: the first datagram may wait for the neighbour entry.
            (0..2).any(|_| s.send_to(b"ping", addr).is_ok() && s.recv_from(&mut buf).is_ok_and(|(n, _)| n == 4))
        }
    })
}

/// One expectation: `from` reaches `to` on `proto`/`port`, or not.
type Cell<'a> = (&'a Pod, &'a Pod, Proto, u16, bool);

/// Checks every cell at once (a thread each) until all hold, for up to 20 s (a policy takes
/// effect once the scheduler told the nodes); panics naming the cells that do not.
fn expect(what: &str, cells: &[Cell<'_>]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let wrong: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = cells.iter().map(|&(from, to, proto, port, want)| s.spawn(move || (reaches(from, to.ip, proto, port) != want).then(|| format!("{} -> {} {proto:?}/{port}: wanted {}", from.name, to.name, if want { "delivered" } else { "dropped" })))).collect();
            handles.into_iter().filter_map(|h| h.join().unwrap()).collect()
        });
        if wrong.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {wrong:#?}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// `berthctl` against the cluster's scheduler.
struct Ctl {
    env: Vec<(String, String)>,
    dir: tempfile::TempDir,
}

impl Ctl {
    fn new(c: &Cluster) -> Ctl {
        let dir = tempfile::tempdir().unwrap();
        let listen = c.scheduler.url.trim_start_matches("http://").to_string();
        let env = vec![("BERTH_SCHEDULER_LISTEN".into(), listen), ("BERTH_STATE_DIR".into(), dir.path().join("state").display().to_string()), ("BERTH_RUN_DIR".into(), dir.path().join("run").display().to_string())];
        Ctl { env, dir }
    }

    fn run(&self, args: &[&str]) -> (bool, String) {
        let out = std::process::Command::new(bin("berthctl")).args(args).envs(self.env.iter().map(|(k, v)| (k, v))).output().unwrap();
        (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }

    fn ok(&self, args: &[&str]) -> String {
        let (ok, out) = self.run(args);
        assert!(ok, "berthctl {args:?}: {out}");
        out
    }

    fn apply(&self, yaml: &str) {
        let file = self.dir.path().join("policy.yaml");
        std::fs::write(&file, yaml).unwrap();
        self.ok(&["policy", "apply", "-f", file.to_str().unwrap()]);
    }

    fn delete(&self, name: &str) {
        self.ok(&["policy", "delete", name, "-n", "prod"]);
    }
}

fn policy(name: &str, selector: &str, spec: &str) -> String {
    format!("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: {name}\n  namespace: prod\nspec:\n  podSelector:\n    matchLabels: {{app: {selector}}}\n{spec}")
}

/// Kills one service of a node's guest with SIGKILL; its supervisor starts it again.
fn kill_service(c: &Cluster, node: &str, service: &str) -> i32 {
    let pid = recorded_pids(&c.lc.guest_dir(node)).into_iter().find(|(n, _)| n == service).map(|(_, p)| p).expect("the service's pid");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    pid
}

/// A pod to run: name, namespace, its `app` label, its network mode and the node it is pinned to.
type Wanted<'a> = (&'a str, &'a str, &'a str, pb::NetworkMode, &'a str);

/// Submits every wanted pod and waits until all of them run with an IP.
async fn run_pods(c: &Cluster, client: &mut SchedulerClient<Channel>, wanted: &[Wanted<'_>]) -> Vec<pb::PodStatus> {
    for &(name, ns, app, mode, node) in wanted {
        let mut s = sleeper(name);
        s.namespace = ns.into();
        s.network_mode = mode as i32;
        s.labels = [("app".to_string(), app.to_string())].into();
        s.pool_selector = [("berth.io/node".to_string(), node.to_string())].into();
        client.submit_pod(pb::SubmitPodRequest { spec: Some(s) }).await.expect("SubmitPod");
    }
    wait_for!(c, Duration::from_secs(120), "every pod running with an IP", {
        let all = pods(client).await;
        (all.len() == wanted.len() && all.iter().all(|p| is(p, pb::PodPhase::Running) && !p.pod_ip.is_empty())).then_some(all)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_policy_holds_for_real_traffic_in_every_mode_on_and_across_nodes_and_through_an_agent_restart() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    // Each agent serves its metrics on a port of its own, written to its guest directory.
    let mut c = cluster("np", "ecs.c7.2xlarge", 2, 2, 600, ("10.86.0.0/16", "10.86.1.0/24"), &["--trunk", "true", "--metrics-listen", "127.0.0.1:0"]).await;
    let _leftovers = GuestLeftovers::new(&c.lc, &c.tag);
    let mut client = c.scheduler.client().await;
    let nodes: Vec<String> = wait_for!(c, Duration::from_secs(90), "the pool's two nodes reporting", {
        let ready = ready_nodes(&mut client).await;
        (ready.len() == 2).then(|| ready.into_keys().collect())
    });
    let (a, b) = (nodes[0].clone(), nodes[1].clone());
    let ctl = Ctl::new(&c);
    ctl.ok(&["namespace", "label", "prod", "team=a"]);
    ctl.ok(&["namespace", "label", "dev", "team=b"]);
    // The label naming a namespace is the scheduler's.
    let (ok, out) = ctl.run(&["namespace", "label", "dev", "kubernetes.io/metadata.name=x"]);
    assert!(!ok && out.contains("kubernetes.io/metadata.name"), "{out}");

    let wanted: [Wanted<'_>; 8] = [
        ("db-shared", "prod", "db", pb::NetworkMode::Shared, &a),
        ("db-trunk", "prod", "db", pb::NetworkMode::Trunk, &a),
        ("db-excl", "prod", "db", pb::NetworkMode::Exclusive, &a),
        ("web-a", "prod", "web", pb::NetworkMode::Shared, &a),
        ("dev-x-a", "dev", "x", pb::NetworkMode::Shared, &a),
        ("web-b", "prod", "web", pb::NetworkMode::Shared, &b),
        ("other-b", "prod", "other", pb::NetworkMode::Shared, &b),
        ("dev-web-b", "dev", "web", pb::NetworkMode::Shared, &b),
    ];
    let running = run_pods(&c, &mut client, &wanted).await;
    let pod = |name: &str| -> Pod {
        let st = running.iter().find(|p| p.spec.as_ref().unwrap().name == name).unwrap();
        assert_eq!(st.node, if wanted.iter().find(|w| w.0 == name).unwrap().4 == a { a.clone() } else { b.clone() }, "{name} on its node");
        Pod { name: name.into(), ip: st.pod_ip.parse().unwrap(), netns: PathBuf::from(format!("/run/netns/{}", netns_of(&c, &st.node, &st.pod_ip))) }
    };
    let (db_shared, db_trunk, db_excl) = (pod("db-shared"), pod("db-trunk"), pod("db-excl"));
    let (web_a, dev_x_a, web_b, other_b, dev_web_b) = (pod("web-a"), pod("dev-x-a"), pod("web-b"), pod("other-b"), pod("dev-web-b"));
    let dbs = [&db_shared, &db_trunk, &db_excl];
    let clients = [&web_a, &dev_x_a, &web_b, &other_b, &dev_web_b];
    for p in dbs.iter().chain(&clients) {
        serve(p);
    }
    // Every client to every database, TCP and UDP, with the same answer.
    let all = |want: &dyn Fn(&Pod) -> bool, proto: Proto, port: u16| -> Vec<(&Pod, &Pod, Proto, u16, bool)> {
        clients.iter().flat_map(|cl| dbs.iter().map(move |db| (*cl, *db, proto, port, want(cl)))).collect()
    };
    let both = |want: &dyn Fn(&Pod) -> bool| -> Vec<(&Pod, &Pod, Proto, u16, bool)> {
        let mut v = all(want, Proto::Tcp, 80);
        v.extend(all(want, Proto::Udp, 53));
        v
    };

    expect("no policy: open", &both(&|_| true));

    // The API refuses what does not validate, naming the field and the value.
    let file = ctl.dir.path().join("bad.yaml");
    std::fs::write(&file, policy("bad", "db", "  ingress:\n  - from:\n    - ipBlock:\n        cidr: 10.86.1.5/16\n")).unwrap();
    let (ok, out) = ctl.run(&["policy", "apply", "-f", file.to_str().unwrap()]);
    assert!(!ok && out.contains("spec.ingress[0].from[0].ipBlock.cidr") && out.contains("10.86.1.5/16"), "{out}");

    ctl.apply(&policy("deny-db", "db", "  policyTypes: [Ingress]\n"));
    let mut cells = both(&|_| false);
    // Pods no policy selects stay open.
    cells.push((&web_b, &web_a, Proto::Tcp, 80, true));
    cells.push((&dev_x_a, &other_b, Proto::Udp, 53, true));
    expect("deny-all ingress to the databases", &cells);
    // The drops are counted per pod and direction in node A's agent metrics; pods no policy
    // selects have no count.
    let metrics_of_a = std::fs::read_to_string(c.lc.guest_dir(&a).join("agent.metrics")).expect("node A's metrics address");
    let scraped = reqwest::get(format!("http://{metrics_of_a}/metrics")).await.unwrap().text().await.unwrap();
    for db in dbs {
        let line = format!("berth_agent_policy_denied_packets_total{{pod=\"prod/{}\",direction=\"ingress\"}} ", db.name);
        let n: u64 = scraped.lines().find_map(|l| l.strip_prefix(&line)).unwrap_or_else(|| panic!("no {line} in {scraped}")).parse().unwrap();
        assert!(n > 0, "{line}{n}");
    }
    assert!(!scraped.contains("berth_agent_policy_denied_packets_total{pod=\"prod/web-a\""), "web-a is selected by no policy: {scraped}");
    // Every running pod's traffic is measured, selected or not.
    assert!(scraped.contains("berth_agent_pod_network_packets_total{pod=\"prod/web-a\",direction=\"receive\"}"), "web-a's traffic: {scraped}");
    let inspected = ctl.ok(&["inspect", "db-excl", "-n", "prod"]);
    assert!(inspected.contains("ingress: only what prod/deny-db allows") && inspected.contains("egress: open"), "{inspected}");

    // From `policy apply` to a connection it allows going through (the command included).
    let applied = Instant::now();
    ctl.apply(&policy("from-web", "db", "  ingress:\n  - from:\n    - podSelector:\n        matchLabels: {app: web}\n"));
    let target = SocketAddr::new(db_excl.ip, 80);
    let enforced = in_ns(&web_b.netns, move || {
        while std::net::TcpStream::connect_timeout(&target, Duration::from_millis(100)).is_err() {
            assert!(applied.elapsed() < Duration::from_secs(20), "the policy never let web-b in");
        }
        applied.elapsed()
    });
    eprintln!("berthctl policy apply to the connection it allows (from node B to an exclusive pod of node A) going through: {} ms", enforced.as_millis());
    expect("from the label app=web of the policy's namespace", &both(&|p| p.name == "web-a" || p.name == "web-b"));
    ctl.delete("from-web");

    ctl.apply(&policy("from-dev", "db", "  ingress:\n  - from:\n    - namespaceSelector:\n        matchLabels: {team: b}\n"));
    expect("from the namespaces labelled team=b", &both(&|p| p.name.starts_with("dev-")));
    ctl.delete("from-dev");

    ctl.apply(&policy("web-of-dev", "db", "  ingress:\n  - from:\n    - podSelector:\n        matchLabels: {app: web}\n      namespaceSelector:\n        matchLabels: {team: b}\n"));
    expect("from app=web pods of team=b namespaces", &both(&|p| p.name == "dev-web-b"));
    ctl.delete("web-of-dev");

    let block = format!("  ingress:\n  - from:\n    - ipBlock:\n        cidr: 10.86.0.0/16\n        except: [{}/32]\n", web_b.ip);
    ctl.apply(&policy("block", "db", &block));
    expect("from the VPC except web-b", &both(&|p| p.name != "web-b"));
    ctl.delete("block");

    ctl.apply(&policy("ports", "db", "  ingress:\n  - ports:\n    - port: 8080\n      endPort: 8090\n    - protocol: UDP\n      port: 53\n"));
    let mut cells = Vec::new();
    for (proto, port, want) in [(Proto::Tcp, 80, false), (Proto::Tcp, 8085, true), (Proto::Tcp, 9000, false), (Proto::Udp, 53, true), (Proto::Udp, 54, false)] {
        cells.extend(all(&|_| want, proto, port));
    }
    expect("TCP 8080-8090 and UDP 53 from anywhere", &cells);
    ctl.delete("ports");
    ctl.delete("deny-db");
    expect("the policies deleted: open again", &both(&|_| true));

    // Egress of the web pods: only to the databases on TCP 80.
    ctl.apply(&policy("web-out", "web", "  policyTypes: [Egress]\n  egress:\n  - to:\n    - podSelector:\n        matchLabels: {app: db}\n    ports:\n    - protocol: TCP\n      port: 80\n"));
    let mut cells = Vec::new();
    for db in dbs {
        cells.extend([(&web_a, db, Proto::Tcp, 80, true), (&web_b, db, Proto::Tcp, 80, true), (&web_a, db, Proto::Tcp, 8085, false), (&web_b, db, Proto::Udp, 53, false), (&other_b, db, Proto::Udp, 53, true)]);
    }
    cells.extend([(&web_a, &dev_x_a, Proto::Tcp, 80, false), (&web_b, &other_b, Proto::Udp, 53, false), (&other_b, &web_b, Proto::Tcp, 80, true)]);
    expect("web pods' egress: databases on TCP 80 only (replies of what they are sent pass)", &cells);
    ctl.delete("web-out");

    // A policy added while connections flow: the allowed one goes on, the denied one stops.
    let connect = |from: &Pod, to: &Pod| {
        let addr = SocketAddr::new(to.ip, 80);
        in_ns(&from.netns, move || {
            let c = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
            c.set_read_timeout(Some(Duration::from_millis(800))).unwrap();
            c
        })
    };
    let echo = |c: &mut std::net::TcpStream| {
        let mut buf = [0u8; 4];
        c.write_all(b"ping").is_ok() && c.read_exact(&mut buf).is_ok()
    };
    let mut streams: Vec<(&str, std::net::TcpStream, bool)> = Vec::new();
    for db in dbs {
        streams.push(("web-b", connect(&web_b, db), true));
        streams.push(("other-b", connect(&other_b, db), false));
    }
    for (who, s, _) in &mut streams {
        assert!(echo(s), "{who}: the connection echoes before any policy");
    }
    ctl.apply(&policy("from-web", "db", "  ingress:\n  - from:\n    - podSelector:\n        matchLabels: {app: web}\n"));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let results: Vec<bool> = streams.iter_mut().map(|(_, s, _)| echo(s)).collect();
        let allowed_ok = streams.iter().zip(&results).filter(|((_, _, want), _)| *want).all(|(_, ok)| *ok);
        assert!(allowed_ok, "an allowed connection stopped when the policy came: {results:?}");
        if streams.iter().zip(&results).filter(|((_, _, want), _)| !*want).all(|(_, ok)| !*ok) {
            break;
        }
        assert!(Instant::now() < deadline, "the denied connections kept going: {results:?}");
    }

    // The agent of node A killed: its supervisor starts it again; meanwhile and after, nothing
    // the policy denies gets through, and what it allows does.
    let stop = Arc::new(AtomicBool::new(false));
    let leaked = Arc::new(AtomicU64::new(0));
    let tries = Arc::new(AtomicU64::new(0));
    let probers: Vec<_> = dbs
        .iter()
        .flat_map(|db| [(other_b.clone(), (*db).clone(), Proto::Tcp), (dev_x_a.clone(), (*db).clone(), Proto::Udp)])
        .map(|(from, to, proto)| {
            let (stop, leaked, tries) = (stop.clone(), leaked.clone(), tries.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    tries.fetch_add(1, Ordering::Relaxed);
                    if reaches(&from, to.ip, proto, if proto == Proto::Tcp { 80 } else { 53 }) {
                        leaked.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let old = kill_service(&c, &a, "agent");
    wait_for!(c, Duration::from_secs(60), "the agent of node A started again", recorded_pids(&c.lc.guest_dir(&a)).into_iter().find(|(n, p)| n == "agent" && *p != old));
    let restarted = Instant::now();
    wait_for!(c, Duration::from_secs(60), "node A reporting again", ready_nodes(&mut client).await.contains_key(&a).then_some(()));
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(restarted.elapsed())).await;
    stop.store(true, Ordering::Relaxed);
    for p in probers {
        p.join().unwrap();
    }
    assert_eq!(leaked.load(Ordering::Relaxed), 0, "denied exchanges got through around the agent's restart ({} tries)", tries.load(Ordering::Relaxed));
    assert!(tries.load(Ordering::Relaxed) > 12, "the probes ran through the restart");
    expect("after the agent's restart: the policy still holds", &both(&|p| p.name == "web-a" || p.name == "web-b"));

    // The scheduler restarted on its journal: the policy, its version and the labels are kept and
    // still enforced.
    c.scheduler.restart();
    let listed = ctl.ok(&["policy", "list", "-n", "prod"]);
    assert!(listed.contains("from-web") && listed.contains("app=db"), "{listed}");
    assert!(ctl.ok(&["namespace", "list"]).contains("team=b"));
    expect("after the scheduler's restart: the policy still holds", &both(&|p| p.name == "web-a" || p.name == "web-b"));
    ctl.delete("from-web");
    expect("the policy deleted after the restart: open", &both(&|_| true));
    drop(streams);
}

/// The pod's global IPv6 address, from its namespace.
fn ipv6_in(netns: &Path) -> IpAddr {
    let out = std::process::Command::new("nsenter").arg(format!("--net={}", netns.display())).args(["ip", "-6", "-o", "addr", "show", "scope", "global"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let addr = text.split_whitespace().skip_while(|w| *w != "inet6").nth(1).unwrap_or_else(|| panic!("no global IPv6 address in {}: {text}", netns.display()));
    addr.split('/').next().unwrap().parse().unwrap()
}

/// IPv6 on a dual-stack vSwitch: a podSelector peer resolves to the pods' IPv6 addresses too, and
/// an IPv6 ipBlock with except holds, for the three modes, on the same node and across nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_policy_holds_over_ipv6_on_a_dual_stack_vswitch() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let c = cluster_of("np6", "ecs.c7.2xlarge", (2, 2), 600, ("10.87.0.0/16", "10.87.1.0/24"), true, &["--trunk", "true", "--ip-stack", "dual"]).await;
    let _leftovers = GuestLeftovers::new(&c.lc, &c.tag);
    let mut client = c.scheduler.client().await;
    let nodes: Vec<String> = wait_for!(c, Duration::from_secs(90), "the pool's two nodes reporting", {
        let ready = ready_nodes(&mut client).await;
        (ready.len() == 2).then(|| ready.into_keys().collect())
    });
    let (a, b) = (nodes[0].clone(), nodes[1].clone());
    let ctl = Ctl::new(&c);
    let wanted: [Wanted<'_>; 6] = [
        ("db-shared", "prod", "db", pb::NetworkMode::Shared, &a),
        ("db-trunk", "prod", "db", pb::NetworkMode::Trunk, &a),
        ("db-excl", "prod", "db", pb::NetworkMode::Exclusive, &a),
        ("web-a", "prod", "web", pb::NetworkMode::Shared, &a),
        ("web-b", "prod", "web", pb::NetworkMode::Shared, &b),
        ("other-b", "prod", "other", pb::NetworkMode::Shared, &b),
    ];
    let running = run_pods(&c, &mut client, &wanted).await;
    let pod = |name: &str| -> Pod {
        let st = running.iter().find(|p| p.spec.as_ref().unwrap().name == name).unwrap();
        let netns = PathBuf::from(format!("/run/netns/{}", netns_of(&c, &st.node, &st.pod_ip)));
        Pod { name: name.into(), ip: ipv6_in(&netns), netns }
    };
    let dbs = [pod("db-shared"), pod("db-trunk"), pod("db-excl")];
    let clients = [pod("web-a"), pod("web-b"), pod("other-b")];
    for p in dbs.iter().chain(&clients) {
        serve(p);
    }
    let both = |want: &dyn Fn(&Pod) -> bool| -> Vec<Cell<'_>> {
        let mut v = Vec::new();
        for cl in &clients {
            for db in &dbs {
                v.push((cl, db, Proto::Tcp, 80, want(cl)));
                v.push((cl, db, Proto::Udp, 53, want(cl)));
            }
        }
        v
    };
    expect("IPv6, no policy: open", &both(&|_| true));
    ctl.apply(&policy("from-web", "db", "  ingress:\n  - from:\n    - podSelector:\n        matchLabels: {app: web}\n"));
    expect("IPv6 from the label app=web", &both(&|p| p.name.starts_with("web-")));
    ctl.delete("from-web");
    let block = format!("  ingress:\n  - from:\n    - ipBlock:\n        cidr: ::/0\n        except: [{}/128]\n", clients[1].ip);
    ctl.apply(&policy("block6", "db", &block));
    expect("IPv6 from anywhere except web-b", &both(&|p| p.name != "web-b"));
    ctl.delete("block6");
    expect("IPv6, the policies deleted: open", &both(&|_| true));
}

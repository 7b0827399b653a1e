//! NetworkPolicy's datapath cost: TCP throughput and request/response latency between two network
//! namespaces over a veth pair, with no table at all, with the table of an unselected pod, and
//! with the server pod selected by 1,000 policies whose rules name 5,000 peer addresses (the
//! client's among them, near the end) on several ports; and the time nft takes to load that table.
//! Root; makes and removes its own namespaces.
//!
//! `cargo bench -p berth-agent --bench netpol`

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use berth_agent::netpol::{PolicyHeld, pod_script, run_in_pod};
use berth_proto::cluster::v1 as pb;

const POLICIES: usize = 1000;
const PEERS: usize = 5000;

struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    berth_nodenet::Netns::open_named(ns).unwrap().run_in(f).unwrap()
}

/// The server pod selected by POLICIES policies allowing PEERS addresses in all (the client's
/// address the last of them) on TCP 5201 and a few other ports.
fn heavy(client: Ipv4Addr) -> PolicyHeld {
    let mut held = PolicyHeld::default();
    let per = PEERS / POLICIES;
    let mut keys = Vec::new();
    for p in 0..POLICIES {
        let cidrs = (0..per)
            .map(|i| {
                let n = p * per + i;
                let ip = if n == PEERS - 1 { client } else { Ipv4Addr::new(10, 200 + (n / 65536) as u8, (n / 256 % 256) as u8, (n % 256) as u8) };
                pb::CompiledCidr { cidr: format!("{ip}/32"), except: vec![] }
            })
            .collect();
        let ports = [5201, 8080 + (p % 50) as u32, 9000].iter().map(|&port| pb::CompiledPort { protocol: 6, port, end_port: port }).collect();
        let key = format!("bench/p{p}");
        held.policies.insert(key.clone(), pb::CompiledPolicy { key: key.clone(), version: 1, ingress: true, egress: false, ingress_rules: vec![pb::CompiledRule { cidrs, ports }], egress_rules: vec![] });
        keys.push(key);
    }
    held.selections.insert("bench/server".into(), (keys, vec![]));
    held
}

/// MB/s over `secs` of one TCP stream, and the p50/p99 round trip (µs) of 1-byte requests.
fn measure(client_ns: &str, server: SocketAddr, secs: u64) -> (f64, f64, f64) {
    in_ns(client_ns, move || {
        let mut s = TcpStream::connect_timeout(&server, Duration::from_secs(2)).expect("connect");
        let buf = vec![0u8; 128 << 10];
        let started = Instant::now();
        let mut sent = 0u64;
        while started.elapsed() < Duration::from_secs(secs) {
            s.write_all(&buf).unwrap();
            sent += buf.len() as u64;
        }
        let mbps = sent as f64 / started.elapsed().as_secs_f64() / 1e6;
        drop(s);
        let mut s = TcpStream::connect_timeout(&SocketAddr::new(server.ip(), server.port() + 1), Duration::from_secs(2)).expect("connect");
        s.set_nodelay(true).unwrap();
        let mut rtts = Vec::new();
        let mut b = [0u8; 1];
        for _ in 0..5000 {
            let t = Instant::now();
            s.write_all(b"x").unwrap();
            s.read_exact(&mut b).unwrap();
            rtts.push(t.elapsed().as_secs_f64() * 1e6);
        }
        rtts.sort_by(f64::total_cmp);
        (mbps, rtts[rtts.len() / 2], rtts[rtts.len() * 99 / 100])
    })
}

fn main() {
    if !std::fs::read_to_string("/proc/self/status").is_ok_and(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))) {
        eprintln!("skipped: needs root");
        return;
    }
    let tag = std::process::id();
    let (cns, sns) = (format!("bnpc{tag}"), format!("bnps{tag}"));
    let _guard = Namespaces(vec![cns.clone(), sns.clone()]);
    sh(&["ip", "netns", "add", &cns]);
    sh(&["ip", "netns", "add", &sns]);
    sh(&["ip", "-n", &cns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", &sns]);
    for (ns, ip) in [(&cns, "10.99.0.1/24"), (&sns, "10.99.0.2/24")] {
        sh(&["ip", "-n", ns, "addr", "add", ip, "dev", "eth0"]);
        sh(&["ip", "-n", ns, "link", "set", "eth0", "up"]);
        sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
    }
    let server = SocketAddr::from(([10, 99, 0, 2], 5201));
    let sink = in_ns(&sns, move || TcpListener::bind(server).unwrap());
    std::thread::spawn(move || {
        for mut c in sink.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 128 << 10];
                while c.read(&mut buf).is_ok_and(|n| n > 0) {}
            });
        }
    });
    let echo = in_ns(&sns, move || TcpListener::bind(SocketAddr::new(server.ip(), server.port() + 1)).unwrap());
    std::thread::spawn(move || {
        for mut c in echo.incoming().flatten() {
            let _ = c.set_nodelay(true);
            std::thread::spawn(move || {
                let mut b = [0u8; 1];
                while c.read_exact(&mut b).is_ok() && c.write_all(&b).is_ok() {}
            });
        }
    });
    let secs = std::env::var("BERTH_BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);

    let (base, base50, base99) = measure(&cns, server, secs);
    println!("no table:                         {base:8.0} MB/s  rtt p50 {base50:6.1} µs  p99 {base99:6.1} µs");
    run_in_pod(&sns, &pod_script(&PolicyHeld::default(), "bench/server")).unwrap();
    let (open, open50, open99) = measure(&cns, server, secs);
    println!("unselected pod's table:           {open:8.0} MB/s  rtt p50 {open50:6.1} µs  p99 {open99:6.1} µs  ({:.0}% of no table)", open / base * 100.0);
    // The same table without the client's address: the client is really refused.
    run_in_pod(&sns, &pod_script(&heavy(Ipv4Addr::new(10, 250, 0, 1)), "bench/server")).unwrap();
    let refused = in_ns(&cns, move || TcpStream::connect_timeout(&server, Duration::from_secs(1)).is_err());
    assert!(refused, "a client no policy names reached the server");
    let mut held = heavy(Ipv4Addr::new(10, 99, 0, 1));
    // The echo port too, for the latency probe.
    for p in held.policies.values_mut() {
        p.ingress_rules[0].ports.push(pb::CompiledPort { protocol: 6, port: 5202, end_port: 5202 });
    }
    let script = pod_script(&held, "bench/server");
    let t = Instant::now();
    run_in_pod(&sns, &script).unwrap();
    let load = t.elapsed();
    let (heavy_mbps, h50, h99) = measure(&cns, server, secs);
    println!(
        "{POLICIES} policies, {PEERS} peers:       {heavy_mbps:8.0} MB/s  rtt p50 {h50:6.1} µs  p99 {h99:6.1} µs  ({:.0}% of no table; table loaded in {} ms, script {} KiB)",
        heavy_mbps / base * 100.0,
        load.as_millis(),
        script.len() >> 10
    );
}

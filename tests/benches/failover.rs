//! Failover time of the replicated control plane: three release-built `berth-scheduler` replicas
//! on a real 3-member etcd, simulated nodes reporting through the agents' client, one client
//! submitting pods without pause. The leader is killed with SIGKILL 20 times (brought back as a
//! follower after each); each time, the time from the kill until the first pod submitted after it
//! is acknowledged by the new leader. Prints p50, p90 and max, then checks that every acknowledged
//! pod is stored, bound and runs on one node.
//!
//! `cargo build --release --workspace --bins && cargo bench -p berth-tests --bench failover`
//! (`BERTH_FAILOVER_KILLS` changes the 20.)

use std::time::{Duration, Instant};

use berth_tests::failover::{Rig, Size};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let kills: usize = std::env::var("BERTH_FAILOVER_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    // A failover lasts about 2 s, with the client submitting every ~25 ms: 8 nodes × 400 pods
    // hold far more than 20 rounds submit.
    let mut rig = Rig::start(Size { nodes: 8, node_ips: 400, max_pods: 3_000 });
    let mut took = Vec::with_capacity(kills);
    for round in 1..=kills {
        let since = Instant::now();
        rig.wait("10 pods acknowledged before the kill", Duration::from_secs(30), &|r| r.acked().iter().filter(|a| a.started >= since).count() >= 10);
        let leader = rig.leader().expect("a leader before the kill");
        rig.replicas[leader].kill();
        let killed = Instant::now();
        rig.wait("a pod acknowledged by the new leader", Duration::from_secs(30), &|r| r.acked().iter().any(|a| a.started >= killed));
        let t = rig.acked().iter().find(|a| a.started >= killed).map(|a| a.ended - killed).expect("an acknowledged pod");
        let new = rig.leader();
        println!("failover: kill {round:2}: replica {leader} killed, replica {} leads; first pod acknowledged {:.0} ms after the kill", new.map_or("?".into(), |n| n.to_string()), t.as_secs_f64() * 1e3);
        took.push(t);
        // Back as a follower, so every round has three replicas to elect from.
        rig.replicas[leader].restart();
    }
    took.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "failover: {kills} kills -9 of the leader: p50 {:.0} ms, p90 {:.0} ms, max {:.0} ms (kill → first pod acknowledged by the new leader; lease TTL 2 s)",
        ms(percentile(&took, 0.5)),
        ms(percentile(&took, 0.9)),
        ms(*took.last().unwrap())
    );
    let acked = rig.acked().len();
    let refused = rig.attempts.lock().unwrap().iter().filter(|a| a.error.is_some()).count();
    rig.stop_and_verify();
    println!("failover: {acked} pods acknowledged ({refused} calls refused and retried), each stored, bound and running on one node");
}

//! Scheduler memory: resident set size with 5,000 nodes and 150,000 pods bound (specs with labels,
//! selectors and volumes, reservations, indexes, queued instructions drained as an agent would).
//!
//! `cargo bench -p berth-scheduler --bench memory`

mod common;

use std::time::Instant;

use berth_scheduler::cluster::Cluster;
use berth_scheduler::placement::Strategy;
use common::{Rng, node_report, pod_spec, rss_kib};

fn main() {
    let (nodes, pods) = (5_000, 150_000);
    let base = rss_kib();
    let mut rng = Rng(3);
    let mut cluster = Cluster::new(Strategy::Spread, 0, 15_000);
    let reports: Vec<_> = (0..nodes).map(|i| node_report(i, &mut rng)).collect();
    for r in &reports {
        cluster.report(r, 0);
    }
    drop(reports);
    let t = Instant::now();
    let mut bound = 0;
    for k in 0..pods {
        let spec = pod_spec(k, &mut rng);
        let key = format!("{}/{}", spec.namespace, spec.name);
        cluster.submit(spec, 0).expect("unique pod");
        if !cluster.schedule_pod(&key, 0).is_empty() {
            bound += 1;
        }
        // Agents receive their instructions as they come.
        if k % 1_000 == 999 {
            for id in (0..nodes).map(|i| format!("i-{i:06}")) {
                let _ = cluster.take_instruction(&id);
            }
        }
    }
    let rss = rss_kib();
    println!(
        "memory: {nodes} nodes and {pods} pods ({bound} bound, {} pending) in {:.1} s: RSS {:.0} MiB ({:.0} MiB before the state)",
        cluster.pending_len(),
        t.elapsed().as_secs_f64(),
        rss as f64 / 1024.0,
        base as f64 / 1024.0
    );
}

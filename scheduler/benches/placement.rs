//! Placement throughput: 5,000 simulated nodes (reports generated in-process), 30,000 pods with
//! every filter on (network mode → shared IP / ENI slot / member-ENI slot, disk slots, pool and
//! label selectors, vSwitch, zone spread, nodes that cannot grow), one decision per pod through
//! 30% of the pods with a rule counting their app's pods (zone spread, old flag or DoNotSchedule,
//! or anti-affinity per node), one decision per pod through
//! the scheduler's own path (submit, filter, score, reserve, instruction queued), with a node
//! report taken in between decisions as agents keep reporting.
//!
//! Runs bin-pack and spread with the adaptive sample (0), then bin-pack scoring every feasible
//! node (100).
//!
//! `cargo bench -p berth-scheduler --bench placement [-- NODES PODS]`

mod common;

use std::time::Instant;

use berth_scheduler::cluster::Cluster;
use berth_scheduler::placement::Strategy;
use common::{Rng, constrained, node_report, percentile, pod_spec};

fn run(strategy: Strategy, percent_of_nodes_to_score: u32, nodes: usize, pods: usize) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut cluster = Cluster::new(strategy, percent_of_nodes_to_score, 15_000);
    let reports: Vec<_> = (0..nodes).map(|i| node_report(i, &mut rng)).collect();
    let t = Instant::now();
    for r in &reports {
        cluster.report(r, 0);
    }
    let load = t.elapsed();
    let specs: Vec<_> = (0..pods).map(|k| pod_spec(k, &mut rng)).collect();
    let with_rules = specs.iter().filter(|s| constrained(s)).count();
    let mut decisions = Vec::with_capacity(pods);
    let mut report_times = Vec::with_capacity(pods);
    let mut unschedulable = 0;
    let start = Instant::now();
    for (k, spec) in specs.into_iter().enumerate() {
        let key = format!("{}/{}", spec.namespace, spec.name);
        let t = Instant::now();
        cluster.submit(spec, 0).expect("unique pod");
        let ev = cluster.schedule_pod(&key, 0);
        decisions.push(t.elapsed().as_secs_f64() * 1e3);
        if ev.is_empty() {
            unschedulable += 1;
        }
        // An agent reports (unchanged counts: it has not started its new pods yet).
        let mut r = reports[k % nodes].clone();
        r.sequence = 2 + (k / nodes) as u64;
        let t = Instant::now();
        cluster.report(&r, 0);
        report_times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let total = start.elapsed();
    let decide: f64 = decisions.iter().sum::<f64>() / 1e3;
    decisions.sort_by(f64::total_cmp);
    report_times.sort_by(f64::total_cmp);
    println!(
        "placement {strategy:?}, percent_of_nodes_to_score {percent_of_nodes_to_score}: {nodes} nodes (loaded in {:.0} ms), {pods} pods in {:.2} s with reports in between: {:.0} pods/s by decision time ({:.0} pods/s wall), decision p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms; report p50 {:.3} ms, p99 {:.3} ms; {unschedulable} unschedulable; {with_rules} pods with spread or anti-affinity rules",
        load.as_secs_f64() * 1e3,
        total.as_secs_f64(),
        pods as f64 / decide,
        pods as f64 / total.as_secs_f64(),
        percentile(&decisions, 0.5),
        percentile(&decisions, 0.99),
        decisions.last().copied().unwrap_or(0.0),
        percentile(&report_times, 0.5),
        percentile(&report_times, 0.99),
    );
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let nodes = args.first().copied().unwrap_or(5_000);
    let pods = args.get(1).copied().unwrap_or(30_000);
    run(Strategy::BinPack, 0, nodes, pods);
    run(Strategy::Spread, 0, nodes, pods);
    // Every feasible node scored: the cost of not sampling.
    run(Strategy::BinPack, 100, nodes, pods);
}

//! `/metrics` in Prometheus text: the scheduler's view (pods by phase, nodes by state, nodes
//! requested from the cloud and not reporting yet) read at each scrape, and counters of what the
//! scheduler did (scheduling rounds and their duration, scale-ups and node deletions per pool).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds (seconds) of the scheduling-round histogram.
const ROUND_BUCKETS: [f64; 8] = [0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0];

/// What the scheduler counts as it works.
#[derive(Default)]
pub struct Counters {
    rounds: [AtomicU64; ROUND_BUCKETS.len() + 1],
    round_seconds_sum_us: AtomicU64,
    scale_ups: Mutex<BTreeMap<String, u64>>,
    nodes_requested: Mutex<BTreeMap<String, u64>>,
    nodes_deleted: AtomicU64,
}

impl Counters {
    /// One scheduling round (leases checked, pending pods placed) that took `seconds`.
    pub fn round(&self, seconds: f64) {
        let i = ROUND_BUCKETS.iter().position(|b| seconds <= *b).unwrap_or(ROUND_BUCKETS.len());
        self.rounds[i].fetch_add(1, Ordering::Relaxed);
        self.round_seconds_sum_us.fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }

    /// A scale-up of `pool` by `nodes` instances.
    pub fn scaled_up(&self, pool: &str, nodes: u32) {
        *lock(&self.scale_ups).entry(pool.to_string()).or_default() += 1;
        *lock(&self.nodes_requested).entry(pool.to_string()).or_default() += u64::from(nodes);
    }

    pub fn deleted(&self, nodes: usize) {
        self.nodes_deleted.fetch_add(nodes as u64, Ordering::Relaxed);
    }
}

fn lock(m: &Mutex<BTreeMap<String, u64>>) -> std::sync::MutexGuard<'_, BTreeMap<String, u64>> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The cluster at one instant, as the scrape reads it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub pods_by_phase: BTreeMap<&'static str, u64>,
    pub nodes_by_state: BTreeMap<&'static str, u64>,
    pub requested_nodes: u64,
}

/// What the committer wrote: appends (one sync or one round of etcd transactions each) and the
/// events in them; their ratio is the group commit's batch size.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Commits {
    pub appends: u64,
    pub events: u64,
}

/// The Prometheus text of a snapshot and the counters.
pub fn render(s: &Snapshot, c: &Counters, commits: &Commits) -> String {
    let family = |name: &str, kind: &str, help: &str| format!("# HELP {name} {help}\n# TYPE {name} {kind}\n");
    let mut out = family("berth_scheduler_pods", "gauge", "Pods the scheduler knows, by phase.");
    for phase in ["Pending", "Bound", "Running", "Succeeded", "Failed", "Terminating"] {
        let _ = writeln!(out, "berth_scheduler_pods{{phase=\"{phase}\"}} {}", s.pods_by_phase.get(phase).copied().unwrap_or(0));
    }
    let mut lines = String::new();
    for state in ["Ready", "Unknown", "Draining"] {
        let _ = writeln!(lines, "berth_scheduler_nodes{{state=\"{state}\"}} {}", s.nodes_by_state.get(state).copied().unwrap_or(0));
    }
    out.push_str(&family("berth_scheduler_nodes", "gauge", "Nodes that report (or reported), by state."));
    out.push_str(&lines);
    out.push_str(&family("berth_scheduler_requested_nodes", "gauge", "Instances the autoscaler created that have not reported yet."));
    let _ = writeln!(out, "berth_scheduler_requested_nodes {}", s.requested_nodes);

    out.push_str(&family("berth_scheduler_round_seconds", "histogram", "Duration of a scheduling round (leases checked, pending pods placed)."));
    let mut cumulative = 0;
    for (i, bound) in ROUND_BUCKETS.iter().enumerate() {
        cumulative += c.rounds[i].load(Ordering::Relaxed);
        let _ = writeln!(out, "berth_scheduler_round_seconds_bucket{{le=\"{bound}\"}} {cumulative}");
    }
    cumulative += c.rounds[ROUND_BUCKETS.len()].load(Ordering::Relaxed);
    let _ = writeln!(out, "berth_scheduler_round_seconds_bucket{{le=\"+Inf\"}} {cumulative}");
    let _ = writeln!(out, "berth_scheduler_round_seconds_sum {}", c.round_seconds_sum_us.load(Ordering::Relaxed) as f64 / 1e6);
    let _ = writeln!(out, "berth_scheduler_round_seconds_count {cumulative}");

    let per_pool = |m: &Mutex<BTreeMap<String, u64>>| lock(m).clone();
    out.push_str(&family("berth_scheduler_scale_ups_total", "counter", "Scale-ups (RunInstances calls that succeeded), by pool."));
    for (pool, n) in per_pool(&c.scale_ups) {
        let _ = writeln!(out, "berth_scheduler_scale_ups_total{{pool=\"{pool}\"}} {n}");
    }
    out.push_str(&family("berth_scheduler_nodes_requested_total", "counter", "Instances created by the autoscaler, by pool."));
    for (pool, n) in per_pool(&c.nodes_requested) {
        let _ = writeln!(out, "berth_scheduler_nodes_requested_total{{pool=\"{pool}\"}} {n}");
    }
    out.push_str(&family("berth_scheduler_nodes_deleted_total", "counter", "Instances deleted by the autoscaler (scaled down or never reported)."));
    let _ = writeln!(out, "berth_scheduler_nodes_deleted_total {}", c.nodes_deleted.load(Ordering::Relaxed));
    out.push_str(&family("berth_scheduler_store_appends_total", "counter", "Batches made durable (one fsync of the journal, or one round of etcd transactions) in this term."));
    let _ = writeln!(out, "berth_scheduler_store_appends_total {}", commits.appends);
    out.push_str(&family("berth_scheduler_store_events_total", "counter", "Events made durable in this term; divided by the appends, the group commit's batch size."));
    let _ = writeln!(out, "berth_scheduler_store_events_total {}", commits.events);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_has_help_and_type_and_the_histogram_is_cumulative() {
        let c = Counters::default();
        c.round(0.0002);
        c.round(0.003);
        c.round(2.0);
        c.scaled_up("small", 2);
        c.scaled_up("small", 1);
        c.deleted(1);
        let s = Snapshot { pods_by_phase: [("Running", 3), ("Pending", 1)].into(), nodes_by_state: [("Ready", 2)].into(), requested_nodes: 1 };
        let text = render(&s, &c, &Commits { appends: 2, events: 7 });
        for line in [
            "berth_scheduler_pods{phase=\"Running\"} 3",
            "berth_scheduler_pods{phase=\"Failed\"} 0",
            "berth_scheduler_nodes{state=\"Ready\"} 2",
            "berth_scheduler_requested_nodes 1",
            "berth_scheduler_round_seconds_bucket{le=\"0.0005\"} 1",
            "berth_scheduler_round_seconds_bucket{le=\"0.005\"} 2",
            "berth_scheduler_round_seconds_bucket{le=\"+Inf\"} 3",
            "berth_scheduler_round_seconds_count 3",
            "berth_scheduler_scale_ups_total{pool=\"small\"} 2",
            "berth_scheduler_nodes_requested_total{pool=\"small\"} 3",
            "berth_scheduler_nodes_deleted_total 1",
            "berth_scheduler_store_appends_total 2",
            "berth_scheduler_store_events_total 7",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
        // Every sample belongs to a family declared before it.
        let mut declared = Vec::new();
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                declared.push(rest.split(' ').next().unwrap().to_string());
            } else if !l.starts_with('#') {
                let name = l.split(['{', ' ']).next().unwrap();
                assert!(declared.iter().any(|d| name == d || name.strip_prefix(d.as_str()).is_some_and(|s| ["_bucket", "_sum", "_count"].contains(&s))), "{name} has no TYPE before it");
            }
        }
    }
}

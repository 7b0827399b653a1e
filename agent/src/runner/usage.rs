//! What a pod uses, measured on the node: its CPU from a cgroup of its own (cgroup v2: the
//! pod's processes are put there before its command starts, so everything it forks is counted),
//! its network traffic from its interface inside its namespace (`eth0`: the veth end of a shared
//! or trunk pod, the ENI of an exclusive one), which only the node sees for all three modes.
//!
//! The cgroups (`berth_nodenet::cgroup`) live under `<cgroup2 mount>/berth-pods/<pod namespace
//! name>` (or `runner.cgroup_root`), outside the agent's own, so an agent that stops (or a systemd
//! that stops its unit) leaves them and their pods as the runner leaves pods; removing a pod kills
//! what is left in its cgroup.

use std::time::{Duration, Instant};

use berth_proto::cluster::v1 as pb;

/// The shortest window a rate is taken over. A report sent early (a pod changed phase) within
/// this of the last sample carries the last rates again instead of a rate over a few
/// milliseconds, which is mostly noise (no packet, or one packet as a burst) and would swing an
/// HPA reading it.
pub const MIN_WINDOW: Duration = Duration::from_millis(500);

/// A pod's last sample and the rates it gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measured {
    pub sample: Sample,
    pub rates: Option<pb::PodUsage>,
}

/// Whether a new sample is due at `now`: none yet, or the last one at least [`MIN_WINDOW`] old.
pub fn due(last: Option<&Measured>, now: Instant) -> bool {
    last.is_none_or(|m| now.checked_duration_since(m.sample.at).is_some_and(|d| d >= MIN_WINDOW))
}

/// The counters of one pod at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub at: Instant,
    /// `None` when the pod has no cgroup (no command, or no cgroup v2).
    pub cpu: Option<Duration>,
    pub traffic: Option<Traffic>,
}

/// Bytes and packets through the pod's interface, as the pod sees them (receive = into the pod).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
}

/// `ifname`'s counters in a `/proc/net/dev` listing.
pub fn traffic_of(net_dev: &str, ifname: &str) -> Option<Traffic> {
    let line = net_dev.lines().find_map(|l| l.trim_start().strip_prefix(ifname)?.strip_prefix(':'))?;
    let f: Vec<u64> = line.split_whitespace().filter_map(|v| v.parse().ok()).collect();
    // receive: bytes packets errs drop fifo frame compressed multicast; transmit: bytes packets …
    (f.len() >= 10).then(|| Traffic { rx_bytes: f[0], rx_packets: f[1], tx_bytes: f[8], tx_packets: f[9] })
}

/// The pod's `eth0` counters, read inside its namespace.
pub fn pod_traffic(netns: &str) -> Option<Traffic> {
    let ns = berth_nodenet::Netns::open_named(netns).ok()?;
    let listing = ns.run_in(|| std::fs::read_to_string("/proc/thread-self/net/dev")).ok()?.ok()?;
    traffic_of(&listing, "eth0")
}

/// The rates between two samples of one pod, as reported to the scheduler.
pub fn usage(before: &Sample, now: &Sample) -> Option<pb::PodUsage> {
    let secs = now.at.checked_duration_since(before.at)?.as_secs_f64();
    if secs <= 0.0 {
        return None;
    }
    let per_sec = |a: u64, b: u64| (b.saturating_sub(a) as f64 / secs).round() as u64;
    let mut u = pb::PodUsage { window_ms: (secs * 1e3) as u64, ..Default::default() };
    if let (Some(a), Some(b)) = (before.cpu, now.cpu) {
        u.cpu_millicores = (b.saturating_sub(a).as_secs_f64() * 1e3 / secs).round() as u64;
    }
    if let (Some(a), Some(b)) = (before.traffic, now.traffic) {
        u.rx_bytes_per_sec = per_sec(a.rx_bytes, b.rx_bytes);
        u.tx_bytes_per_sec = per_sec(a.tx_bytes, b.tx_bytes);
        u.rx_packets_per_sec = per_sec(a.rx_packets, b.rx_packets);
        u.tx_packets_per_sec = per_sec(a.tx_packets, b.tx_packets);
    }
    Some(u)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_is_due_only_after_the_shortest_window() {
        let at = Instant::now();
        let last = Measured { sample: Sample { at, cpu: None, traffic: None }, rates: None };
        assert!(due(None, at));
        assert!(!due(Some(&last), at + Duration::from_millis(20)));
        assert!(due(Some(&last), at + MIN_WINDOW));
    }

    const NET_DEV: &str = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     120       2    0    0    0     0          0         0      120       2    0    0    0     0       0          0
  eth0: 1500000    1000    0    0    0     0          0         0   300000     500    0    0    0     0       0          0
";

    #[test]
    fn the_pods_interface_counters_are_read_by_name() {
        assert_eq!(traffic_of(NET_DEV, "eth0"), Some(Traffic { rx_bytes: 1_500_000, rx_packets: 1000, tx_bytes: 300_000, tx_packets: 500 }));
        assert_eq!(traffic_of(NET_DEV, "eth1"), None);
        assert_eq!(traffic_of(NET_DEV, "lo").map(|t| t.tx_packets), Some(2));
    }

    #[test]
    fn rates_are_the_differences_over_the_window() {
        let t0 = Instant::now();
        let before = Sample { at: t0, cpu: Some(Duration::from_millis(100)), traffic: Some(Traffic { rx_bytes: 1000, rx_packets: 10, tx_bytes: 0, tx_packets: 0 }) };
        let now = Sample { at: t0 + Duration::from_secs(2), cpu: Some(Duration::from_millis(1100)), traffic: Some(Traffic { rx_bytes: 201_000, rx_packets: 210, tx_bytes: 4000, tx_packets: 4 }) };
        let u = usage(&before, &now).unwrap();
        assert_eq!((u.cpu_millicores, u.rx_bytes_per_sec, u.rx_packets_per_sec, u.tx_bytes_per_sec, u.tx_packets_per_sec, u.window_ms), (500, 100_000, 100, 2000, 2, 2000));
        assert!(usage(&now, &before).is_none(), "no rate backwards in time");
        let no_cgroup = Sample { cpu: None, ..now };
        assert_eq!(usage(&before, &no_cgroup).unwrap().cpu_millicores, 0);
    }
}

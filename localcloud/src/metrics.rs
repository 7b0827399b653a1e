//! `/metrics` in Prometheus text (version 0.0.4) on the API listener: counters of the RPC calls
//! served and the faults injected, and gauges read from the state and the planes at each scrape.
//! [`render`] is pure; the server gathers what it renders.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use berth_cloud::model::{DiskStatus, EniStatus, InstanceStatus};

use crate::faults::FaultKind;
use crate::state::State;

/// Upper bounds (seconds) of the call histogram: a call takes about a millisecond; injected
/// latency and a slow converge of the data plane take longer.
const CALL_BUCKETS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

/// The time to serve one action's calls.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CallTimes {
    /// Per bucket of [`CALL_BUCKETS`], the last one for what is above them all (not cumulative).
    pub buckets: [u64; CALL_BUCKETS.len() + 1],
    pub sum_seconds: f64,
}

/// What the API counted since the start.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ApiCalls {
    /// (action, outcome): `ok` or the error code answered.
    pub calls: BTreeMap<(&'static str, String), u64>,
    pub times: BTreeMap<&'static str, CallTimes>,
    pub faults: BTreeMap<FaultKind, u64>,
}

/// The counters the server adds to as it answers.
#[derive(Default)]
pub struct ApiCounters(Mutex<ApiCalls>);

impl ApiCounters {
    /// One call answered: `action` is a label of [`crate::api::action_label`], `outcome` `ok` or an
    /// error code.
    pub fn call(&self, action: &'static str, outcome: &str, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let i = CALL_BUCKETS.iter().position(|b| seconds <= *b).unwrap_or(CALL_BUCKETS.len());
        let mut c = self.lock();
        *c.calls.entry((action, outcome.to_string())).or_default() += 1;
        let t = c.times.entry(action).or_default();
        t.buckets[i] += 1;
        t.sum_seconds += seconds;
    }

    pub fn fault(&self, kind: FaultKind) {
        *self.lock().faults.entry(kind).or_default() += 1;
    }

    pub fn snapshot(&self) -> ApiCalls {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ApiCalls> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The resources of the state, counted at a scrape.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    pub instances: BTreeMap<&'static str, u64>,
    pub enis: BTreeMap<&'static str, u64>,
    pub disks: BTreeMap<&'static str, u64>,
    pub vswitch_free_ips: BTreeMap<String, u64>,
}

impl Resources {
    /// Every status has a sample (0 when none is in it), so a series does not vanish.
    pub fn of(state: &State) -> Resources {
        use InstanceStatus as I;
        let mut r = Resources::default();
        r.instances.extend([I::Pending, I::Starting, I::Running, I::Stopping, I::Stopped].map(|s| (s.as_str(), 0)));
        r.enis.extend([EniStatus::Available, EniStatus::Attaching, EniStatus::InUse, EniStatus::Detaching, EniStatus::Deleting].map(|s| (s.as_str(), 0)));
        r.disks.extend([DiskStatus::Creating, DiskStatus::Available, DiskStatus::Attaching, DiskStatus::InUse, DiskStatus::Detaching].map(|s| (s.as_str(), 0)));
        for i in state.instances.values() {
            *r.instances.entry(i.status.as_str()).or_default() += 1;
        }
        for e in state.enis.values() {
            *r.enis.entry(e.status.as_str()).or_default() += 1;
        }
        for d in state.disks.values() {
            *r.disks.entry(d.status.as_str()).or_default() += 1;
        }
        r.vswitch_free_ips = state.vswitches.values().map(|v| (v.id.clone(), v.available_ip_address_count)).collect();
        r
    }
}

/// What the planes report at a scrape; a plane that is off leaves its part `None`, and its
/// families are left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlaneReport {
    /// The guest supervisor's (with `--image`).
    pub guests: Option<GuestReport>,
    /// The vRouters' drop counters summed over the VPCs, by counter name (with the data plane).
    pub vrouter_dropped_packets: Option<BTreeMap<String, u64>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestReport {
    /// Guests by state: `running` (supervised), `stopping`.
    pub guests: BTreeMap<&'static str, u64>,
    /// Services of the supervised guests by state: `waiting`, `running`, `backing_off`,
    /// `exited` (0, for good), `failed` (for good).
    pub services: BTreeMap<&'static str, u64>,
    /// Restarts of failed services since the start, by service name (the image's names).
    pub restarts: BTreeMap<String, u64>,
}

const PREFIX: &str = "berth_localcloud_";

/// A label value as the text format writes it.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

struct Text(String);

impl Text {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {PREFIX}{name} {help}\n# TYPE {PREFIX}{name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
        if labels.is_empty() {
            let _ = writeln!(self.0, "{PREFIX}{name} {value}");
        } else {
            let _ = writeln!(self.0, "{PREFIX}{name}{{{}}} {value}", labels.join(","));
        }
    }

    fn by_label<K: AsRef<str>>(&mut self, name: &str, label: &str, values: &BTreeMap<K, u64>) {
        for (k, v) in values {
            self.sample(name, &[(label, k.as_ref())], v);
        }
    }
}

/// The Prometheus text of the counters, the state's resources and the planes' reports.
pub fn render(calls: &ApiCalls, resources: &Resources, planes: &PlaneReport) -> String {
    let mut t = Text(String::new());
    t.family("api_calls_total", "counter", "RPC API calls answered, by action (unknown for actions not served) and outcome (ok or the error code).");
    for ((action, outcome), n) in &calls.calls {
        t.sample("api_calls_total", &[("action", action), ("outcome", outcome)], n);
    }
    t.family("api_call_seconds", "histogram", "Time to answer one RPC API call (checks, injected faults, the action and its converge), by action.");
    for (action, times) in &calls.times {
        let mut cumulative = 0;
        for (i, bound) in CALL_BUCKETS.iter().enumerate() {
            cumulative += times.buckets[i];
            t.sample("api_call_seconds_bucket", &[("action", action), ("le", &bound.to_string())], cumulative);
        }
        cumulative += times.buckets[CALL_BUCKETS.len()];
        t.sample("api_call_seconds_bucket", &[("action", action), ("le", "+Inf")], cumulative);
        t.sample("api_call_seconds_sum", &[("action", action)], times.sum_seconds);
        t.sample("api_call_seconds_count", &[("action", action)], cumulative);
    }
    t.family("faults_injected_total", "counter", "Calls the fault injector delayed (latency) or answered with an error (throttling, fail_action), by kind.");
    for kind in FaultKind::ALL {
        t.sample("faults_injected_total", &[("kind", kind.as_str())], calls.faults.get(&kind).copied().unwrap_or(0));
    }

    t.family("instances", "gauge", "Instances in the state, by status.");
    t.by_label("instances", "state", &resources.instances);
    t.family("enis", "gauge", "ENIs in the state (primary ENIs included), by status.");
    t.by_label("enis", "status", &resources.enis);
    t.family("disks", "gauge", "Disks in the state, by status.");
    t.by_label("disks", "status", &resources.disks);
    t.family("vswitch_free_ips", "gauge", "Addresses a vSwitch can still hand out (after a vswitch_ip_limit fault), by vSwitch.");
    t.by_label("vswitch_free_ips", "vswitch", &resources.vswitch_free_ips);

    if let Some(g) = &planes.guests {
        t.family("guests", "gauge", "Guests of instances (with --image), by state.");
        t.by_label("guests", "state", &g.guests);
        t.family("guest_services", "gauge", "Services of the running guests, by state.");
        t.by_label("guest_services", "state", &g.services);
        t.family("guest_restarts_total", "counter", "Restarts of guest services that failed, by service.");
        t.by_label("guest_restarts_total", "service", &g.restarts);
    }
    if let Some(drops) = &planes.vrouter_dropped_packets {
        t.family("vrouter_dropped_packets_total", "counter", "Packets the vRouters dropped (nftables counters of the VPC namespaces, summed), by reason.");
        t.by_label("vrouter_dropped_packets_total", "reason", drops);
    }
    t.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every sample's family, and that it was declared (HELP, then TYPE) before the sample.
    fn check_families(text: &str) -> Vec<String> {
        let mut helped: Vec<String> = Vec::new();
        let mut typed: Vec<String> = Vec::new();
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("# HELP ") {
                helped.push(rest.split(' ').next().unwrap().to_string());
            } else if let Some(rest) = l.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap().to_string();
                assert_eq!(helped.last(), Some(&name), "TYPE of {name} without its HELP just before");
                assert!(!typed.contains(&name), "{name} declared twice");
                typed.push(name);
            } else {
                let name = l.split(['{', ' ']).next().unwrap();
                let family = typed.last().unwrap_or_else(|| panic!("{l} before any TYPE"));
                let ok = name == family || name.strip_prefix(family.as_str()).is_some_and(|s| ["_bucket", "_sum", "_count"].contains(&s));
                assert!(ok, "{name} is not a sample of the family declared before it ({family})");
            }
        }
        typed
    }

    #[test]
    fn every_family_is_declared_before_its_samples_with_the_counts() {
        let counters = ApiCounters::default();
        counters.call("DescribeInstances", "ok", Duration::from_micros(300));
        counters.call("DescribeInstances", "ok", Duration::from_millis(3));
        counters.call("DescribeInstances", "InvalidParameter", Duration::from_secs(5));
        counters.call("unknown", "InvalidAction.NotFound", Duration::from_micros(100));
        counters.fault(FaultKind::Throttling);
        counters.fault(FaultKind::Throttling);
        let resources = Resources {
            instances: [("Running", 2), ("Pending", 0)].into(),
            enis: [("InUse", 3)].into(),
            disks: [("Available", 1)].into(),
            vswitch_free_ips: [("vsw-1".to_string(), 250)].into(),
        };
        let planes = PlaneReport {
            guests: Some(GuestReport { guests: [("running", 2)].into(), services: [("backing_off", 1)].into(), restarts: [("agent".to_string(), 4)].into() }),
            vrouter_dropped_packets: Some([("spoofed_ip".to_string(), 7), ("wrong_vlan".to_string(), 0)].into()),
        };
        let text = render(&counters.snapshot(), &resources, &planes);
        for line in [
            "berth_localcloud_api_calls_total{action=\"DescribeInstances\",outcome=\"ok\"} 2",
            "berth_localcloud_api_calls_total{action=\"DescribeInstances\",outcome=\"InvalidParameter\"} 1",
            "berth_localcloud_api_calls_total{action=\"unknown\",outcome=\"InvalidAction.NotFound\"} 1",
            "berth_localcloud_api_call_seconds_bucket{action=\"DescribeInstances\",le=\"0.0005\"} 1",
            "berth_localcloud_api_call_seconds_bucket{action=\"DescribeInstances\",le=\"0.005\"} 2",
            "berth_localcloud_api_call_seconds_bucket{action=\"DescribeInstances\",le=\"2.5\"} 2",
            "berth_localcloud_api_call_seconds_bucket{action=\"DescribeInstances\",le=\"+Inf\"} 3",
            "berth_localcloud_api_call_seconds_count{action=\"DescribeInstances\"} 3",
            "berth_localcloud_faults_injected_total{kind=\"throttling\"} 2",
            "berth_localcloud_faults_injected_total{kind=\"latency\"} 0",
            "berth_localcloud_instances{state=\"Running\"} 2",
            "berth_localcloud_enis{status=\"InUse\"} 3",
            "berth_localcloud_disks{status=\"Available\"} 1",
            "berth_localcloud_vswitch_free_ips{vswitch=\"vsw-1\"} 250",
            "berth_localcloud_guests{state=\"running\"} 2",
            "berth_localcloud_guest_services{state=\"backing_off\"} 1",
            "berth_localcloud_guest_restarts_total{service=\"agent\"} 4",
            "berth_localcloud_vrouter_dropped_packets_total{reason=\"spoofed_ip\"} 7",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
        let sum: f64 = text.lines().find_map(|l| l.strip_prefix("berth_localcloud_api_call_seconds_sum{action=\"DescribeInstances\"} ")).unwrap().parse().unwrap();
        assert!((sum - 5.0033).abs() < 1e-9, "{sum}");
        let families = check_families(&text);
        for f in [
            "api_calls_total", "api_call_seconds", "faults_injected_total", "instances", "enis", "disks", "vswitch_free_ips", "guests", "guest_services",
            "guest_restarts_total", "vrouter_dropped_packets_total",
        ] {
            assert!(families.contains(&format!("{PREFIX}{f}")), "{f} is not declared:\n{text}");
        }
    }

    #[test]
    fn families_of_planes_that_are_off_are_left_out_and_labels_are_escaped() {
        let counters = ApiCounters::default();
        counters.call("unknown", "Bad\"Code\\", Duration::ZERO);
        let text = render(&counters.snapshot(), &Resources::of(&State::default()), &PlaneReport::default());
        assert!(!text.contains("guest") && !text.contains("vrouter"), "{text}");
        assert!(text.lines().any(|l| l == "berth_localcloud_api_calls_total{action=\"unknown\",outcome=\"Bad\\\"Code\\\\\"} 1"), "{text}");
        assert!(text.lines().any(|l| l == "berth_localcloud_instances{state=\"Running\"} 0"), "{text}");
        check_families(&text);
    }

    #[test]
    fn resources_are_counted_by_status() {
        let mut state = State::default();
        let vsw = berth_cloud::model::VSwitch {
            id: "vsw-1".into(),
            vpc_id: "vpc-1".into(),
            zone_id: "z".into(),
            name: String::new(),
            cidr_block: "10.0.0.0/24".parse().unwrap(),
            ipv6_cidr_block: None,
            available_ip_address_count: 9,
        };
        state.vswitches.insert(vsw.id.clone(), vsw);
        let r = Resources::of(&state);
        assert_eq!(r.vswitch_free_ips.get("vsw-1"), Some(&9));
        assert_eq!(r.enis.get("InUse"), Some(&0));
        assert_eq!(r.disks.len(), 5);
    }
}

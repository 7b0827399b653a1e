//! Prometheus metrics of the agent, in the text exposition format.

use std::sync::Arc;
use std::time::Duration;

use berth_cloud::client::{CallObserver, CallOutcome};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;
/// Every pod with a network, as the pod runner holds it.
pub type PodNamespaces = Box<dyn Fn() -> Vec<PodRow> + Send + Sync>;

/// One pod of the runner: its key, namespace name and last usage sample.
pub struct PodRow {
    pub key: String,
    pub netns: String,
    pub sample: Option<crate::runner::usage::Sample>,
}

pub struct Metrics {
    registry: Registry,
    /// The node's namespace ("" for the agent's own), where the pod interface filter's drop
    /// counters are read at each scrape.
    pub node_netns: std::sync::OnceLock<String>,
    /// The pods with a network (the pod runner's): each one's NetworkPolicy drop counters are
    /// read in its namespace at each scrape, its usage totals come from its last sample.
    pub pod_namespaces: std::sync::OnceLock<PodNamespaces>,
    pub idle_ips: Gauge,
    pub allocated_ips: Gauge,
    pub enis: Gauge,
    pub waiting: Gauge,
    pub allocation_seconds: Histogram,
    pub allocations_failed: Counter,
    pub cloud_call_seconds: Family<Labels, Histogram>,
    pub cloud_errors: Family<Labels, Counter>,
    pub cloud_throttled: Family<Labels, Counter>,
    pub reconcile_fixes: Family<Labels, Counter>,
    pub disk_slots_free: Gauge,
    pub disk_attachments: Gauge,
    pub disk_attach_timeouts: Counter,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("berth_agent");
        let m = Metrics {
            idle_ips: Gauge::default(),
            allocated_ips: Gauge::default(),
            enis: Gauge::default(),
            waiting: Gauge::default(),
            allocation_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 18)),
            allocations_failed: Counter::default(),
            cloud_call_seconds: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.001, 2.0, 14))),
            cloud_errors: Family::default(),
            cloud_throttled: Family::default(),
            reconcile_fixes: Family::default(),
            disk_slots_free: Gauge::default(),
            disk_attachments: Gauge::default(),
            disk_attach_timeouts: Counter::default(),
            registry: Registry::default(),
            node_netns: std::sync::OnceLock::new(),
            pod_namespaces: std::sync::OnceLock::new(),
        };
        registry.register("pool_idle_ips", "Idle IPs ready to serve pods", m.idle_ips.clone());
        registry.register("pool_allocated_ips", "IPs held by pods", m.allocated_ips.clone());
        registry.register("pool_enis", "Secondary ENIs owned by the pool", m.enis.clone());
        registry.register("pool_waiting_allocations", "Allocations waiting for the pool to grow", m.waiting.clone());
        registry.register("allocation_seconds", "Time to answer AllocateIp", m.allocation_seconds.clone());
        registry.register("allocations_failed", "AllocateIp calls that could not be served", m.allocations_failed.clone());
        registry.register("cloud_call_seconds", "Cloud API call latency per action and outcome", m.cloud_call_seconds.clone());
        registry.register("cloud_errors", "Cloud API calls that failed, per action", m.cloud_errors.clone());
        registry.register("cloud_throttled", "Cloud API calls answered with Throttling, per action", m.cloud_throttled.clone());
        registry.register("reconcile_fixes", "Differences reconciliation found and repaired, per kind", m.reconcile_fixes.clone());
        registry.register("disk_slots_free", "Disks the node may still attach (the instance type's quota minus the disks held)", m.disk_slots_free.clone());
        registry.register("disk_attachments", "Disks Berth holds on the node, in any state", m.disk_attachments.clone());
        registry.register("disk_attach_timeouts", "Disk attaches that timed out and were detached again", m.disk_attach_timeouts.clone());
        Arc::new(Metrics { registry, ..m })
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        if let Some(drops) = self.node_drops() {
            let mut family = String::from("# HELP berth_agent_pod_dropped_packets Packets the node's filter of pod interfaces dropped, by reason (spoofed_source: a source the pod was not given; bypassed_security_group: a way to a pod with its own security groups that is not through the VPC).\n# TYPE berth_agent_pod_dropped_packets counter\n");
            for (reason, n) in drops {
                family += &format!("berth_agent_pod_dropped_packets_total{{reason=\"{reason}\"}} {n}\n");
            }
            insert_family(&mut out, &family);
        }
        if let Some(pods) = self.pod_namespaces.get() {
            let pods = pods();
            let mut family = String::from("# HELP berth_agent_policy_denied_packets Packets a pod's NetworkPolicy dropped, by pod and direction (pods no policy selects are left out).\n# TYPE berth_agent_policy_denied_packets counter\n");
            for p in &pods {
                match crate::netpol::denied_packets(&p.netns) {
                    Ok(Some((ingress, egress))) => {
                        for (direction, n) in [("ingress", ingress), ("egress", egress)] {
                            family += &format!("berth_agent_policy_denied_packets_total{{pod=\"{}\",direction=\"{direction}\"}} {n}\n", label_value(&p.key));
                        }
                    }
                    Ok(None) => {}
                    Err(e) => tracing::debug!(pod = %p.key, error = %e, "cannot read the pod's NetworkPolicy drop counters"),
                }
            }
            insert_family(&mut out, &family);
            insert_family(&mut out, &usage_families(&pods));
        }
        out
    }

    /// The node filter's drop counters; `None` (and the family left out) when they cannot be read.
    fn node_drops(&self) -> Option<std::collections::BTreeMap<String, u64>> {
        let netns = self.node_netns.get().map(String::as_str).unwrap_or("");
        let read = if netns.is_empty() {
            berth_cni::datapath::guard::read_drop_counts()
        } else {
            let ns = if netns.contains('/') { berth_nodenet::Netns::open(netns) } else { berth_nodenet::Netns::open_named(netns) };
            ns.map_err(|e| e.to_string()).and_then(|ns| ns.run_in(berth_cni::datapath::guard::read_drop_counts).map_err(|e| e.to_string()).and_then(|r| r))
        };
        read.map_err(|e| tracing::debug!(error = %e, "cannot read the pod filter's drop counters")).ok()
    }
}

/// Each pod's CPU and traffic totals at its last sample (taken at each report to the scheduler).
fn usage_families(pods: &[PodRow]) -> String {
    let mut cpu = String::from("# HELP berth_agent_pod_cpu_seconds CPU time the pod's processes used (its cgroup), at the last sample.\n# TYPE berth_agent_pod_cpu_seconds counter\n");
    let mut bytes = String::from("# HELP berth_agent_pod_network_bytes Bytes through the pod's interface by direction (receive: into the pod), at the last sample.\n# TYPE berth_agent_pod_network_bytes counter\n");
    let mut packets = String::from("# HELP berth_agent_pod_network_packets Packets through the pod's interface by direction (receive: into the pod), at the last sample.\n# TYPE berth_agent_pod_network_packets counter\n");
    for p in pods {
        let Some(s) = &p.sample else { continue };
        let pod = label_value(&p.key);
        if let Some(used) = s.cpu {
            cpu += &format!("berth_agent_pod_cpu_seconds_total{{pod=\"{pod}\"}} {}\n", used.as_secs_f64());
        }
        if let Some(t) = s.traffic {
            for (direction, b, n) in [("receive", t.rx_bytes, t.rx_packets), ("transmit", t.tx_bytes, t.tx_packets)] {
                bytes += &format!("berth_agent_pod_network_bytes_total{{pod=\"{pod}\",direction=\"{direction}\"}} {b}\n");
                packets += &format!("berth_agent_pod_network_packets_total{{pod=\"{pod}\",direction=\"{direction}\"}} {n}\n");
            }
        }
    }
    cpu + &bytes + &packets
}

/// Puts a family written by hand before the exposition's end marker.
fn insert_family(out: &mut String, family: &str) {
    match out.rfind("# EOF") {
        Some(at) => out.insert_str(at, family),
        None => out.push_str(family),
    }
}

/// A label value as the text format wants it: backslash, quote and newline escaped.
fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Feeds every cloud call attempt into the metrics.
pub struct CloudCalls(pub Arc<Metrics>);

impl CallObserver for CloudCalls {
    fn observe(&self, action: &str, elapsed: Duration, outcome: CallOutcome) {
        let name = match outcome {
            CallOutcome::Ok => "ok",
            CallOutcome::Throttled => "throttled",
            CallOutcome::ApiError => "api_error",
            CallOutcome::TransportError => "transport_error",
        };
        self.0.cloud_call_seconds.get_or_create(&vec![("action", action.to_string()), ("outcome", name.to_string())]).observe(elapsed.as_secs_f64());
        match outcome {
            CallOutcome::Ok => {}
            CallOutcome::Throttled => {
                self.0.cloud_throttled.get_or_create(&vec![("action", action.to_string())]).inc();
            }
            CallOutcome::ApiError | CallOutcome::TransportError => {
                self.0.cloud_errors.get_or_create(&vec![("action", action.to_string())]).inc();
            }
        }
    }
}

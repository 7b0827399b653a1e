//! `berthctl top pods|nodes`: what running pods use, as their nodes' agents measured it (CPU
//! from each pod's cgroup, traffic through its interface), and those figures summed per node.

use std::collections::BTreeMap;
use std::time::Duration;

use berth_proto::cluster::v1 as pb;
use clap::{Args, Subcommand};
use serde::Serialize;

use crate::Output;
use crate::cluster::{self, ClusterPaths};
use crate::table::Table;

#[derive(Args)]
pub struct Top {
    #[command(subcommand)]
    what: What,
    #[command(flatten)]
    paths: ClusterPaths,
}

#[derive(Subcommand)]
enum What {
    /// Each running pod: CPU (millicores, and % of its request), bytes and packets per second.
    Pods {
        /// Only this namespace's pods ("": all).
        #[arg(long, short = 'n', default_value = "")]
        namespace: String,
    },
    /// Each node: its pods' CPU summed (and % of the node's allocatable), their traffic summed.
    Nodes,
}

/// One pod's figures; `None` while its node has not measured it twice.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PodTop {
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub cpu_millicores: Option<u64>,
    pub cpu_request_millicores: u64,
    pub rx_bytes_per_sec: Option<u64>,
    pub tx_bytes_per_sec: Option<u64>,
    pub rx_packets_per_sec: Option<u64>,
    pub tx_packets_per_sec: Option<u64>,
}

/// One node's figures: its measured pods' sums.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeTop {
    pub instance_id: String,
    pub cpu_millicores: u64,
    pub cpu_allocatable_millicores: u64,
    pub rx_bytes_per_sec: u64,
    pub tx_bytes_per_sec: u64,
    /// Running pods, and of those the ones measured.
    pub pods: usize,
    pub measured: usize,
}

/// The running pods' figures, sorted by namespace and name.
pub fn pod_rows(pods: &[pb::PodStatus]) -> Vec<PodTop> {
    let mut rows: Vec<PodTop> = pods
        .iter()
        .filter(|p| p.phase == pb::PodPhase::Running as i32)
        .filter_map(|p| {
            let spec = p.spec.as_ref()?;
            let u = p.usage.as_ref();
            Some(PodTop {
                namespace: spec.namespace.clone(),
                name: spec.name.clone(),
                node: p.node.clone(),
                cpu_millicores: u.map(|u| u.cpu_millicores),
                cpu_request_millicores: spec.cpu_millicores,
                rx_bytes_per_sec: u.map(|u| u.rx_bytes_per_sec),
                tx_bytes_per_sec: u.map(|u| u.tx_bytes_per_sec),
                rx_packets_per_sec: u.map(|u| u.rx_packets_per_sec),
                tx_packets_per_sec: u.map(|u| u.tx_packets_per_sec),
            })
        })
        .collect();
    rows.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    rows
}

/// Every node the scheduler knows, with its running pods' sums, sorted by instance ID.
pub fn node_rows(nodes: &[pb::NodeState], pods: &[PodTop]) -> Vec<NodeTop> {
    let mut by_node: BTreeMap<String, NodeTop> = nodes
        .iter()
        .filter_map(|n| {
            let r = n.last_report.as_ref()?;
            let id = r.identity.as_ref()?.instance_id.clone();
            let allocatable = r.allocatable.as_ref().map_or(0, |a| a.cpu_millicores);
            Some((id.clone(), NodeTop { instance_id: id, cpu_millicores: 0, cpu_allocatable_millicores: allocatable, rx_bytes_per_sec: 0, tx_bytes_per_sec: 0, pods: 0, measured: 0 }))
        })
        .collect();
    for p in pods {
        let Some(n) = by_node.get_mut(&p.node) else { continue };
        n.pods += 1;
        if let Some(cpu) = p.cpu_millicores {
            n.measured += 1;
            n.cpu_millicores += cpu;
            n.rx_bytes_per_sec += p.rx_bytes_per_sec.unwrap_or(0);
            n.tx_bytes_per_sec += p.tx_bytes_per_sec.unwrap_or(0);
        }
    }
    by_node.into_values().collect()
}

fn percent(part: u64, whole: u64) -> String {
    if whole == 0 { "-".into() } else { format!("{}%", (part as f64 * 100.0 / whole as f64).round() as u64) }
}

fn or_dash(v: Option<u64>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

pub fn render_pods(rows: &[PodTop]) -> String {
    let mut t = Table::new("PODS (measured on their nodes; - : not measured yet)", &["NAMESPACE", "NAME", "NODE", "CPU(m)", "CPU/REQUEST", "RX B/s", "TX B/s", "RX pkt/s", "TX pkt/s"]);
    for r in rows {
        let of_request = r.cpu_millicores.map_or_else(|| "-".into(), |c| percent(c, r.cpu_request_millicores));
        t.row(vec![r.namespace.clone(), r.name.clone(), r.node.clone(), or_dash(r.cpu_millicores), of_request, or_dash(r.rx_bytes_per_sec), or_dash(r.tx_bytes_per_sec), or_dash(r.rx_packets_per_sec), or_dash(r.tx_packets_per_sec)]);
    }
    t.render()
}

pub fn render_nodes(rows: &[NodeTop]) -> String {
    let mut t = Table::new("NODES (their running pods' figures summed)", &["NODE", "CPU(m)", "CPU/ALLOCATABLE", "RX B/s", "TX B/s", "PODS", "MEASURED"]);
    for r in rows {
        t.row(vec![r.instance_id.clone(), r.cpu_millicores.to_string(), percent(r.cpu_millicores, r.cpu_allocatable_millicores), r.rx_bytes_per_sec.to_string(), r.tx_bytes_per_sec.to_string(), r.pods.to_string(), r.measured.to_string()]);
    }
    t.render()
}

impl Top {
    pub async fn exec(self, output: Output) -> anyhow::Result<()> {
        let mut c = cluster::scheduler(&self.paths, Duration::from_secs(2)).await?;
        let rpc = |s: tonic::Status| anyhow::anyhow!("{}", s.message());
        let namespace = match &self.what {
            What::Pods { namespace } => namespace.clone(),
            What::Nodes => String::new(),
        };
        let pods = pod_rows(&berth_scheduler_client::list_pods(&mut c, &namespace).await.map_err(rpc)?);
        let text = match self.what {
            What::Pods { .. } if output == Output::Json => serde_json::to_string_pretty(&pods)?,
            What::Pods { .. } => render_pods(&pods),
            What::Nodes => {
                let nodes = node_rows(&berth_scheduler_client::list_nodes(&mut c).await.map_err(rpc)?, &pods);
                if output == Output::Json { serde_json::to_string_pretty(&nodes)? } else { render_nodes(&nodes) }
            }
        };
        println!("{}", text.trim_end());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, node: &str, phase: pb::PodPhase, request: u64, usage: Option<(u64, u64, u64)>) -> pb::PodStatus {
        pb::PodStatus {
            spec: Some(pb::PodSpec { namespace: "default".into(), name: name.into(), cpu_millicores: request, ..Default::default() }),
            phase: phase as i32,
            node: node.into(),
            usage: usage.map(|(cpu, rx, tx)| pb::PodUsage { cpu_millicores: cpu, rx_bytes_per_sec: rx, tx_bytes_per_sec: tx, rx_packets_per_sec: rx / 100, tx_packets_per_sec: tx / 100, window_ms: 2000 }),
            ..Default::default()
        }
    }

    fn node(id: &str, cpu: u64) -> pb::NodeState {
        pb::NodeState {
            last_report: Some(pb::NodeReport {
                identity: Some(pb::NodeIdentity { instance_id: id.into(), ..Default::default() }),
                allocatable: Some(pb::Resources { cpu_millicores: cpu, ..Default::default() }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn running_pods_are_shown_and_summed_per_node_unmeasured_ones_apart() {
        let pods = [
            pod("web-1", "i-a", pb::PodPhase::Running, 500, Some((250, 10_000, 2_000))),
            pod("web-2", "i-a", pb::PodPhase::Running, 500, None),
            pod("db", "i-b", pb::PodPhase::Running, 0, Some((1000, 100, 300))),
            pod("later", "", pb::PodPhase::Pending, 100, None),
        ];
        let rows = pod_rows(&pods);
        assert_eq!(rows.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["db", "web-1", "web-2"], "only running pods");
        let nodes = node_rows(&[node("i-b", 2000), node("i-a", 4000), node("i-c", 1000)], &rows);
        let got: Vec<(&str, u64, u64, usize, usize)> = nodes.iter().map(|n| (n.instance_id.as_str(), n.cpu_millicores, n.rx_bytes_per_sec, n.pods, n.measured)).collect();
        assert_eq!(got, [("i-a", 250, 10_000, 2, 1), ("i-b", 1000, 100, 1, 1), ("i-c", 0, 0, 0, 0)]);
        let table = render_pods(&rows);
        assert!(table.lines().any(|l| l.starts_with("default") && l.contains("web-1") && l.contains("250") && l.contains("50%")), "{table}");
        assert!(table.lines().any(|l| l.contains("db") && l.contains("1000") && l.split_whitespace().nth(4) == Some("-")), "no request, no share: {table}");
        let table = render_nodes(&nodes);
        assert!(table.lines().any(|l| l.starts_with("i-a") && l.contains("6%")), "250 of 4000 m: {table}");
    }
}

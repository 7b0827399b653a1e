//! `berthctl nodes` and `berthctl pools`: the cluster's nodes as its scheduler sees them (free and
//! allocatable counts), and the node pools of the scheduler's config with their node counts.

use std::time::Duration;

use anyhow::Context as _;
use berth_scheduler::config::SchedulerConfig;
use clap::Args;
use serde::Serialize;

use crate::Output;
use crate::cluster::{self, ClusterPaths};
use crate::commands::pod;
use crate::table::Table;
use crate::views;

#[derive(Args)]
pub struct Nodes {
    #[command(flatten)]
    paths: ClusterPaths,
}

impl Nodes {
    pub async fn exec(self, output: Output) -> anyhow::Result<()> {
        let mut c = cluster::scheduler(&self.paths, Duration::from_secs(2)).await?;
        let (_, nodes) = pod::snapshot(&self.paths, &mut c, "").await?;
        views::print_nodes(&nodes, output)
    }
}

#[derive(Args)]
pub struct NodeCmd {
    #[command(subcommand)]
    action: NodeAction,
    #[command(flatten)]
    paths: ClusterPaths,
}

#[derive(clap::Subcommand)]
enum NodeAction {
    /// Keep new pods off the node (the taint node.kubernetes.io/unschedulable:NoSchedule).
    Cordon { instance_id: String },
    /// Let the node take pods again.
    Uncordon { instance_id: String },
    /// Cordon the node and send its pods back to the queue, to go elsewhere.
    Drain { instance_id: String },
}

impl NodeCmd {
    pub async fn exec(self, output: Output) -> anyhow::Result<()> {
        let mut c = cluster::scheduler(&self.paths, Duration::from_secs(2)).await?;
        let (instance_id, cordon, drain) = match self.action {
            NodeAction::Cordon { instance_id } => (instance_id, true, false),
            NodeAction::Uncordon { instance_id } => (instance_id, false, false),
            NodeAction::Drain { instance_id } => (instance_id, true, true),
        };
        c.cordon_node(berth_proto::cluster::v1::CordonNodeRequest { instance_id, cordon, drain }).await.map_err(|s| anyhow::anyhow!("{}", s.message()))?;
        let (_, nodes) = pod::snapshot(&self.paths, &mut c, "").await?;
        views::print_nodes(&nodes, output)
    }
}

#[derive(Args)]
pub struct Pools {
    /// The scheduler's config; default: the local cluster's (`<run-dir>/scheduler.toml`).
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    #[command(flatten)]
    paths: ClusterPaths,
}

#[derive(Serialize)]
struct PoolView {
    name: String,
    instance_types: Vec<String>,
    zones: Vec<String>,
    min_nodes: u32,
    max_nodes: u32,
    /// Nodes of the pool the scheduler hears from, and of those the Ready ones.
    nodes: usize,
    ready: usize,
}

impl Pools {
    pub async fn exec(self, output: Output) -> anyhow::Result<()> {
        let path = self.config.clone().unwrap_or_else(|| self.paths.scheduler_config());
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading the scheduler's config {} (is the local cluster up? --config names another)", path.display()))?;
        let config = SchedulerConfig::parse(&text, &path)?;
        let mut c = cluster::scheduler(&self.paths, Duration::from_secs(2)).await?;
        let (_, nodes) = pod::snapshot(&self.paths, &mut c, "").await?;
        let pools: Vec<PoolView> = config
            .pool
            .iter()
            .map(|p| PoolView {
                name: p.name.clone(),
                instance_types: p.instance_types.clone(),
                zones: p.vswitches.iter().map(|v| format!("{} ({})", v.zone, v.id)).collect(),
                min_nodes: p.min_nodes,
                max_nodes: p.max_nodes,
                nodes: nodes.iter().filter(|n| n.pool == p.name).count(),
                ready: nodes.iter().filter(|n| n.pool == p.name && n.state == "Ready").count(),
            })
            .collect();
        if output == Output::Json {
            println!("{}", serde_json::to_string_pretty(&pools)?);
            return Ok(());
        }
        let mut t = Table::new("POOLS", &["NAME", "NODES (READY)", "MIN", "MAX", "INSTANCE TYPES", "ZONES (VSWITCHES)"]);
        for p in &pools {
            t.row(vec![p.name.clone(), format!("{} ({})", p.nodes, p.ready), p.min_nodes.to_string(), p.max_nodes.to_string(), p.instance_types.join(","), p.zones.join(", ")]);
        }
        print!("{}", t.render());
        Ok(())
    }
}

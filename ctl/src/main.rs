//! `berthctl`: parses the command line and dispatches to one command.

mod cluster;
mod commands;
mod ha;
mod inspect;
mod table;
mod views;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "berthctl", version, about = "Operate Berth: a local cluster on the local cloud, and what it holds")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How to print results.
    #[arg(long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Bring up the local cluster: the local cloud (instances boot the Berth node image: agent and
    /// CSI driver), a sample VPC, the scheduler with a node pool of two nodes, a sample workload;
    /// print its pods and nodes.
    Up(commands::up::Up),
    /// Delete the pods, stop the scheduler, the nodes and the local cloud, remove everything made.
    Down(commands::down::Down),
    /// Pods, through the scheduler: add, del, get, list.
    Pod(commands::pod::Pod),
    /// Replicated workloads (Kubernetes Deployment YAML): apply -f FILE, get, list, scale,
    /// delete, rollout status|undo.
    Workload(commands::workload::Workload),
    /// Horizontal pod autoscalers (Kubernetes autoscaling/v2 YAML) on workloads: apply -f FILE,
    /// get, list, delete.
    Hpa(commands::hpa::Hpa),
    /// Cron autoscalers (ACK CronHorizontalPodAutoscaler YAML): apply -f FILE, get, list, delete.
    Cronhpa(commands::hpa::CronHpa),
    /// External metrics HPAs read: set NAME VALUE.
    Metric(commands::hpa::Metric),
    /// NetworkPolicies (Kubernetes YAML): apply -f FILE, list, get, delete.
    Policy(commands::policy::Policy),
    /// Namespaces' labels (what policies' namespaceSelectors match): label NS KEY=VALUE, list.
    Namespace(commands::policy::Namespace),
    /// The nodes as the scheduler sees them: state, pool, zone, free/allocatable IPs and slots.
    Nodes(commands::nodes::Nodes),
    /// Cordon, uncordon or drain a node.
    Node(commands::nodes::NodeCmd),
    /// The scheduler's node pools with their node counts.
    Pools(commands::nodes::Pools),
    /// Compare one node's pods, its agent's pool and the cloud; exit non-zero on any mismatch.
    Inspect(commands::inspect::Inspect),
    /// Cloud disk snapshots: create DISK [--name N], list [--disk DISK], delete SNAPSHOT.
    Snapshot(commands::snapshot::SnapshotCmd),
    /// What running pods use, measured on their nodes (CPU, traffic): top pods | top nodes.
    Top(commands::top::Top),
    /// Show the local cloud's VPCs, vSwitches, instances and ENIs.
    Status(commands::status::Status),
    /// Put the binaries, the CNI plugin, the systemd units and example configs in place (idempotent).
    Install(commands::install::Install),
    /// Remove what install put in place (configuration and state only with --purge).
    Uninstall(commands::install::Uninstall),
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Up(c) => c.exec(cli.output).await,
        Command::Down(c) => c.exec(cli.output).await,
        Command::Status(c) => c.exec(cli.output).await,
        Command::Inspect(c) => c.exec(cli.output).await,
        Command::Pod(c) => c.exec(cli.output).await,
        Command::Policy(c) => c.exec(cli.output).await,
        Command::Workload(c) => c.exec(cli.output).await,
        Command::Hpa(c) => c.exec(cli.output).await,
        Command::Cronhpa(c) => c.exec(cli.output).await,
        Command::Metric(c) => c.exec(cli.output).await,
        Command::Namespace(c) => c.exec(cli.output).await,
        Command::Install(c) => c.exec().await,
        Command::Uninstall(c) => c.exec().await,
        Command::Nodes(c) => c.exec(cli.output).await,
        Command::Snapshot(c) => c.exec(cli.output).await,
        Command::Top(c) => c.exec(cli.output).await,
        Command::Node(c) => c.exec(cli.output).await,
        Command::Pools(c) => c.exec(cli.output).await,
    };
    if let Err(e) = result {
        eprintln!("berthctl: {e:#}");
        std::process::exit(1);
    }
}

//! `berthctl sched submit|delete|get|pods|nodes`: pods and nodes as the central scheduler sees
//! them, over its gRPC API.

use std::collections::HashMap;

use anyhow::{Context as _, bail};
use berth_proto::cluster::v1 as pb;
use berth_proto::cluster::v1::scheduler_client::SchedulerClient;
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;
use tonic::transport::Channel;

use crate::Output;
use crate::table::Table;

#[derive(Args)]
pub struct Sched {
    #[command(subcommand)]
    command: SchedCommand,
    /// The scheduler's address.
    #[arg(long, global = true, env = "BERTH_SCHEDULER", default_value = "http://127.0.0.1:19470")]
    scheduler: String,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Shared,
    Exclusive,
    Trunk,
}

#[derive(Args)]
struct SubmitArgs {
    name: String,
    #[arg(long, short = 'n', default_value = "default")]
    namespace: String,
    #[arg(long, default_value_t = 100)]
    cpu_millicores: u64,
    #[arg(long, default_value_t = 128)]
    memory_mib: u64,
    #[arg(long, value_enum, default_value_t = Mode::Shared)]
    mode: Mode,
    /// The pod's own vSwitch (exclusive and trunk mode), also a placement filter.
    #[arg(long)]
    vswitch: Option<String>,
    #[arg(long = "security-group")]
    security_groups: Vec<String>,
    /// A cloud disk volume: NAME:MOUNT_PATH:SIZE_GIB (repeatable; each takes a disk slot).
    #[arg(long = "disk")]
    disks: Vec<String>,
    /// Node selector KEY=VALUE: "pool" and "zone" name a pool and a zone, other keys node labels.
    #[arg(long = "selector")]
    selectors: Vec<String>,
    #[arg(long = "label")]
    labels: Vec<String>,
    /// Spread pods with the same labels across zones.
    #[arg(long)]
    spread_zones: bool,
    /// The command the pod runs.
    #[arg(last = true)]
    command: Vec<String>,
}

#[derive(Subcommand)]
enum SchedCommand {
    /// Submit a pod; it is bound to a node at once when one fits, else it waits (and may make
    /// the autoscaler add a node).
    Submit(SubmitArgs),
    /// Delete a pod (its node removes it).
    Delete {
        name: String,
        #[arg(long, short = 'n', default_value = "default")]
        namespace: String,
    },
    /// One pod's phase, node, IP and why it waits.
    Get {
        name: String,
        #[arg(long, short = 'n', default_value = "default")]
        namespace: String,
    },
    /// Every pod (of one namespace with -n).
    Pods {
        #[arg(long, short = 'n', default_value = "")]
        namespace: String,
    },
    /// Every node: state, pool, zone and free counts.
    Nodes,
}

fn pairs(items: &[String], what: &str) -> anyhow::Result<HashMap<String, String>> {
    items
        .iter()
        .map(|s| match s.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => bail!("{what} {s:?} is not KEY=VALUE"),
        })
        .collect()
}

fn spec_of(a: &SubmitArgs) -> anyhow::Result<pb::PodSpec> {
    let volumes = a
        .disks
        .iter()
        .map(|d| {
            let parts: Vec<&str> = d.split(':').collect();
            let [name, path, size] = parts.as_slice() else { bail!("--disk {d:?} is not NAME:MOUNT_PATH:SIZE_GIB") };
            size.parse::<u64>().with_context(|| format!("--disk {d:?}: size {size:?} is not a number of GiB"))?;
            Ok(pb::VolumeSpec { name: name.to_string(), kind: pb::VolumeKind::Disk as i32, mount_path: path.to_string(), read_only: false, parameters: HashMap::from([("size_gib".to_string(), size.to_string())]) })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(pb::PodSpec {
        namespace: a.namespace.clone(),
        name: a.name.clone(),
        cpu_millicores: a.cpu_millicores,
        memory_bytes: a.memory_mib << 20,
        network_mode: match a.mode {
            Mode::Shared => pb::NetworkMode::Shared,
            Mode::Exclusive => pb::NetworkMode::Exclusive,
            Mode::Trunk => pb::NetworkMode::Trunk,
        } as i32,
        security_group_ids: a.security_groups.clone(),
        vswitch_id: a.vswitch.clone().unwrap_or_default(),
        volumes,
        pool_selector: pairs(&a.selectors, "--selector")?,
        labels: pairs(&a.labels, "--label")?,
        spread_zones: a.spread_zones,
        command: a.command.clone(),
        ..Default::default()
    })
}

fn phase(p: i32) -> &'static str {
    match pb::PodPhase::try_from(p).unwrap_or(pb::PodPhase::Unspecified) {
        pb::PodPhase::Pending => "Pending",
        pb::PodPhase::Bound => "Bound",
        pb::PodPhase::Running => "Running",
        pb::PodPhase::Succeeded => "Succeeded",
        pb::PodPhase::Failed => "Failed",
        pb::PodPhase::Terminating => "Terminating",
        pb::PodPhase::Unspecified => "Unknown",
    }
}

fn print_pods(pods: &[pb::PodStatus], output: Output) -> anyhow::Result<()> {
    if output == Output::Json {
        let v: Vec<_> = pods
            .iter()
            .map(|p| {
                let s = p.spec.clone().unwrap_or_default();
                json!({"namespace": s.namespace, "name": s.name, "phase": phase(p.phase), "node": p.node, "pod_ip": p.pod_ip, "message": p.message})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let mut t = Table::new("PODS", &["NAMESPACE", "NAME", "PHASE", "NODE", "IP", "MESSAGE"]);
    for p in pods {
        let s = p.spec.clone().unwrap_or_default();
        t.row(vec![s.namespace, s.name, phase(p.phase).into(), p.node.clone(), p.pod_ip.clone(), p.message.clone()]);
    }
    println!("{}", t.render());
    Ok(())
}

fn print_nodes(nodes: &[pb::NodeState], output: Output) -> anyhow::Result<()> {
    let row = |n: &pb::NodeState| {
        let r = n.last_report.clone().unwrap_or_default();
        let id = r.identity.unwrap_or_default();
        (id, r.allocatable.unwrap_or_default(), r.free.unwrap_or_default(), r.conditions)
    };
    if output == Output::Json {
        let v: Vec<_> = nodes
            .iter()
            .map(|n| {
                let (id, all, free, conds) = row(n);
                let conds: Vec<_> = conds.iter().filter(|c| c.status).map(|c| json!({"type": c.r#type, "reason": c.reason})).collect();
                json!({"instance_id": id.instance_id, "state": n.state, "pool": id.pool, "zone": id.zone_id, "instance_type": id.instance_type,
                    "shared_ips": [free.shared_ips, all.shared_ips], "eni_slots": [free.eni_slots, all.eni_slots],
                    "member_eni_slots": [free.member_eni_slots, all.member_eni_slots], "disk_slots": [free.disk_slots, all.disk_slots],
                    "cpu_millicores": [free.cpu_millicores, all.cpu_millicores], "conditions": conds})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let mut t = Table::new("NODES (free/allocatable)", &["ID", "STATE", "POOL", "ZONE", "TYPE", "CPU", "IPS", "ENIS", "MEMBERS", "DISKS", "CONDITIONS"]);
    for n in nodes {
        let (id, all, free, conds) = row(n);
        let conds: Vec<String> = conds.iter().filter(|c| c.status).map(|c| c.r#type.clone()).collect();
        t.row(vec![
            id.instance_id,
            n.state.clone(),
            id.pool,
            id.zone_id,
            id.instance_type,
            format!("{}/{}m", free.cpu_millicores, all.cpu_millicores),
            format!("{}/{}", free.shared_ips, all.shared_ips),
            format!("{}/{}", free.eni_slots, all.eni_slots),
            format!("{}/{}", free.member_eni_slots, all.member_eni_slots),
            format!("{}/{}", free.disk_slots, all.disk_slots),
            conds.join(","),
        ]);
    }
    println!("{}", t.render());
    Ok(())
}

impl Sched {
    pub async fn exec(self, output: Output) -> anyhow::Result<()> {
        let mut c: SchedulerClient<Channel> = SchedulerClient::connect(self.scheduler.clone()).await.with_context(|| format!("cannot reach the scheduler at {} (is berth-scheduler running? --scheduler or BERTH_SCHEDULER)", self.scheduler))?;
        match self.command {
            SchedCommand::Submit(a) => {
                let spec = spec_of(&a)?;
                let st = c.submit_pod(pb::SubmitPodRequest { spec: Some(spec) }).await.map_err(|s| anyhow::anyhow!("{}", s.message()))?.into_inner();
                print_pods(&[st], output)
            }
            SchedCommand::Delete { name, namespace } => {
                c.delete_pod(pb::DeletePodRequest { namespace, name }).await.map_err(|s| anyhow::anyhow!("{}", s.message()))?;
                Ok(())
            }
            SchedCommand::Get { name, namespace } => {
                let st = c.get_pod(pb::GetPodRequest { namespace, name }).await.map_err(|s| anyhow::anyhow!("{}", s.message()))?.into_inner();
                print_pods(&[st], output)
            }
            SchedCommand::Pods { namespace } => {
                let pods = c.list_pods(pb::ListPodsRequest { namespace }).await.map_err(|s| anyhow::anyhow!("{}", s.message()))?.into_inner().pods;
                print_pods(&pods, output)
            }
            SchedCommand::Nodes => {
                let nodes = c.list_nodes(pb::ListNodesRequest {}).await.map_err(|s| anyhow::anyhow!("{}", s.message()))?.into_inner().nodes;
                print_nodes(&nodes, output)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        c: SchedCommand,
    }

    #[test]
    fn submit_flags_make_the_spec() {
        let cli = Cli::try_parse_from(["t", "submit", "web", "--mode", "trunk", "--disk", "data:/data:20", "--selector", "pool=small", "--label", "app=web", "--spread-zones", "--", "sleep", "60"]).unwrap();
        let SchedCommand::Submit(a) = cli.c else { panic!() };
        let s = spec_of(&a).unwrap();
        assert_eq!(s.network_mode, pb::NetworkMode::Trunk as i32);
        assert_eq!(s.volumes[0].mount_path, "/data");
        assert_eq!(s.pool_selector["pool"], "small");
        assert!(s.spread_zones);
        assert_eq!(s.command, vec!["sleep", "60"]);
        let cli = Cli::try_parse_from(["t", "submit", "web", "--disk", "data"]).unwrap();
        let SchedCommand::Submit(a) = cli.c else { panic!() };
        assert!(spec_of(&a).unwrap_err().to_string().contains("NAME:MOUNT_PATH:SIZE_GIB"));
    }
}

//! `berthctl pod add|del|get|list`: pods of the cluster, through its scheduler. The scheduler binds
//! a pod to a node that has what it asks for; that node's agent runs it (volumes through the CSI
//! driver, a network namespace networked by the node's CNI config, the command).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use berth_cloud::Cloud as _;
use berth_cloud::api::EniFilter;
use berth_proto::cluster::v1 as pb;
use berth_proto::cluster::v1::scheduler_client::SchedulerClient;
use clap::{Args, Subcommand, ValueEnum};
use tonic::transport::Channel;

use crate::Output;
use crate::cluster::{self, ClusterPaths};
use crate::views::{self, NodeView, PodView};

#[derive(Args)]
pub struct Pod {
    #[command(subcommand)]
    command: PodCommand,
    #[command(flatten)]
    paths: ClusterPaths,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    Shared,
    Exclusive,
    Trunk,
}

#[derive(Args)]
pub struct AddArgs {
    pub name: String,
    #[arg(long, short = 'n', default_value = "default")]
    pub namespace: String,
    #[arg(long, default_value_t = 100)]
    pub cpu_millicores: u64,
    #[arg(long, default_value_t = 128)]
    pub memory_mib: u64,
    /// How the pod is networked: shared (a secondary IP of a pool ENI), exclusive (an ENI of its
    /// own) or trunk (a member ENI on the node's trunk).
    #[arg(long, value_enum, default_value_t = Mode::Shared)]
    pub mode: Mode,
    /// The pod's own vSwitch (exclusive and trunk mode), also a placement filter.
    #[arg(long)]
    pub vswitch: Option<String>,
    #[arg(long = "security-group")]
    pub security_groups: Vec<String>,
    /// A cloud disk made for the pod: NAME:MOUNT_PATH:SIZE_GIB (repeatable; each takes a disk
    /// slot; deleted with the pod).
    #[arg(long = "disk")]
    pub disks: Vec<String>,
    /// An existing volume: NAME:MOUNT_PATH:VOLUME_ID, e.g. a NAS directory
    /// `shared:/shared:nas:<fs-id>::/` that several pods share (repeatable).
    #[arg(long = "volume")]
    pub volumes: Vec<String>,
    /// Node selector KEY=VALUE: "pool" and "zone" name a pool and a zone, other keys node labels.
    #[arg(long = "selector")]
    pub selectors: Vec<String>,
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// Spread pods with the same labels across zones.
    #[arg(long)]
    pub spread_zones: bool,
    /// Wait until the pod runs (and fail with its message if it fails).
    #[arg(long)]
    pub wait: bool,
    /// The command the pod runs (default: sleep infinity).
    #[arg(last = true)]
    pub command: Vec<String>,
}

#[derive(Subcommand)]
enum PodCommand {
    /// Submit a pod; the scheduler binds it to a node at once when one fits, else it waits (and
    /// may make the autoscaler add a node).
    Add(AddArgs),
    /// Delete a pod and wait until its node removed it (volumes unpublished, IP released).
    Del {
        name: String,
        #[arg(long, short = 'n', default_value = "default")]
        namespace: String,
    },
    /// One pod: phase, node, IP, ENI, mode, volumes, why it waits or failed.
    Get {
        name: String,
        #[arg(long, short = 'n', default_value = "default")]
        namespace: String,
    },
    /// Every pod (of one namespace with -n).
    List {
        #[arg(long, short = 'n', default_value = "")]
        namespace: String,
    },
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

pub fn volume(name: &str, kind: pb::VolumeKind, mount_path: &str, params: &[(&str, &str)]) -> pb::VolumeSpec {
    pb::VolumeSpec { name: name.into(), kind: kind as i32, mount_path: mount_path.into(), read_only: false, parameters: params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect() }
}

pub fn spec_of(a: &AddArgs) -> anyhow::Result<pb::PodSpec> {
    let mut volumes = Vec::new();
    for d in &a.disks {
        let parts: Vec<&str> = d.split(':').collect();
        let [name, path, size] = parts.as_slice() else { bail!("--disk {d:?} is not NAME:MOUNT_PATH:SIZE_GIB") };
        size.parse::<u64>().with_context(|| format!("--disk {d:?}: size {size:?} is not a number of GiB"))?;
        volumes.push(volume(name, pb::VolumeKind::Disk, path, &[("size", &format!("{size}Gi")), ("ephemeral", "true")]));
    }
    for v in &a.volumes {
        let mut parts = v.splitn(3, ':');
        let (Some(name), Some(path), Some(id)) = (parts.next(), parts.next(), parts.next()) else { bail!("--volume {v:?} is not NAME:MOUNT_PATH:VOLUME_ID") };
        let kind = match id.split(':').next() {
            Some("nas") => pb::VolumeKind::Nas,
            Some("oss") => pb::VolumeKind::Oss,
            _ if id.starts_with("d-") => pb::VolumeKind::Disk,
            _ => bail!("--volume {v:?}: {id:?} is not a volume ID (d-…, nas:<fs>:<server>:<path>, oss:<bucket>:<path>)"),
        };
        volumes.push(volume(name, kind, path, &[("volumeId", id)]));
    }
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
        command: if a.command.is_empty() { vec!["sleep".into(), "infinity".into()] } else { a.command.clone() },
        ..Default::default()
    })
}

fn rpc(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", s.message())
}

/// The cluster's pods and nodes as shown, with the ENI of each pod's IP when the local cloud runs.
pub async fn snapshot(paths: &ClusterPaths, c: &mut SchedulerClient<Channel>, namespace: &str) -> anyhow::Result<(Vec<PodView>, Vec<NodeView>)> {
    let pods = berth_scheduler_client::list_pods(c, namespace).await.map_err(rpc)?;
    let nodes = berth_scheduler_client::list_nodes(c).await.map_err(rpc)?;
    let enis = match cluster::connect(paths) {
        Ok(cloud) => cloud.describe_network_interfaces(&EniFilter::default()).await.map(|e| views::enis_by_ip(&e)).unwrap_or_default(),
        Err(_) => HashMap::new(),
    };
    let mut pods: Vec<PodView> = pods.iter().map(|p| views::pod_view(p, &enis)).collect();
    pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let mut nodes: Vec<NodeView> = nodes.iter().map(|n| views::node_view(n, &pods)).collect();
    nodes.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
    Ok((pods, nodes))
}

/// Waits until every named pod runs; fails naming the first that failed, with its message.
pub async fn wait_running(c: &mut SchedulerClient<Channel>, namespace: &str, names: &[String], timeout: Duration, progress: impl Fn(&str)) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut said = String::new();
    loop {
        let pods = berth_scheduler_client::list_pods(c, namespace).await.map_err(rpc)?;
        let mine: Vec<&pb::PodStatus> = pods.iter().filter(|p| p.spec.as_ref().is_some_and(|s| names.contains(&s.name))).collect();
        if let Some(f) = mine.iter().find(|p| p.phase == pb::PodPhase::Failed as i32) {
            let name = f.spec.as_ref().map(|s| s.name.as_str()).unwrap_or_default();
            bail!("pod {name} failed on {}: {}; see `berthctl pod get {name}` and the node's agent.log under <state-dir>/guests/{}/", f.node, f.message, f.node);
        }
        let running = mine.iter().filter(|p| p.phase == pb::PodPhase::Running as i32 && !p.pod_ip.is_empty()).count();
        if running == names.len() {
            return Ok(());
        }
        let text = format!("{running}/{} pods running", names.len());
        if text != said {
            progress(&text);
            said = text;
        }
        if started.elapsed() > timeout {
            let waiting: Vec<String> = names
                .iter()
                .filter(|n| !mine.iter().any(|p| p.spec.as_ref().is_some_and(|s| &s.name == *n) && p.phase == pb::PodPhase::Running as i32))
                .map(|n| {
                    let st = mine.iter().find(|p| p.spec.as_ref().is_some_and(|s| &s.name == n));
                    format!("{n} ({})", st.map(|p| format!("{} {}", views::phase(p.phase), p.message)).unwrap_or_else(|| "unknown to the scheduler".into()))
                })
                .collect();
            bail!("pods not running within {timeout:?}: {}", waiting.join("; "));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Deletes a pod and waits until the scheduler forgot it (its node removed it).
pub async fn delete(c: &mut SchedulerClient<Channel>, namespace: &str, name: &str, timeout: Duration) -> anyhow::Result<()> {
    c.delete_pod(pb::DeletePodRequest { namespace: namespace.into(), name: name.into() }).await.map_err(rpc)?;
    let started = Instant::now();
    loop {
        match c.get_pod(pb::GetPodRequest { namespace: namespace.into(), name: name.into() }).await {
            Err(s) if s.code() == tonic::Code::NotFound => return Ok(()),
            Err(s) => return Err(rpc(s)),
            Ok(st) if started.elapsed() > timeout => {
                let st = st.into_inner();
                bail!("pod {namespace}/{name} is still {} on {} after {timeout:?}: {}", views::phase(st.phase), st.node, st.message);
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Waits until the scheduler holds no pod (every node removed its pods).
pub async fn wait_gone(c: &mut SchedulerClient<Channel>, timeout: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let pods = berth_scheduler_client::list_pods(c, "").await.map_err(rpc)?;
        if pods.is_empty() {
            return Ok(());
        }
        if started.elapsed() > timeout {
            let left: Vec<String> = pods.iter().map(|p| format!("{} ({} on {}: {})", p.spec.as_ref().map(|s| s.name.as_str()).unwrap_or_default(), views::phase(p.phase), p.node, p.message)).collect();
            bail!("pods still there after {timeout:?}: {}", left.join("; "));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

impl Pod {
    pub async fn exec(self, output: Output) -> anyhow::Result<()> {
        let paths = &self.paths;
        let mut c = cluster::scheduler(paths, Duration::from_secs(2)).await?;
        match self.command {
            PodCommand::Add(a) => {
                let spec = spec_of(&a)?;
                if c.get_pod(pb::GetPodRequest { namespace: a.namespace.clone(), name: a.name.clone() }).await.is_ok() {
                    bail!("pod {}/{} exists; delete it first with `berthctl pod del {}`", a.namespace, a.name, a.name);
                }
                c.submit_pod(pb::SubmitPodRequest { spec: Some(spec) }).await.map_err(rpc)?;
                if a.wait {
                    wait_running(&mut c, &a.namespace, std::slice::from_ref(&a.name), Duration::from_secs(120), |s| if output == Output::Table { eprintln!("==> {s}") }).await?;
                }
                show(paths, &mut c, &a.namespace, &a.name, output).await
            }
            PodCommand::Del { name, namespace } => delete(&mut c, &namespace, &name, Duration::from_secs(60)).await,
            PodCommand::Get { name, namespace } => show(paths, &mut c, &namespace, &name, output).await,
            PodCommand::List { namespace } => {
                let (pods, _) = snapshot(paths, &mut c, &namespace).await?;
                views::print_pods(&pods, output)
            }
        }
    }
}

async fn show(paths: &ClusterPaths, c: &mut SchedulerClient<Channel>, namespace: &str, name: &str, output: Output) -> anyhow::Result<()> {
    let (pods, _) = snapshot(paths, c, namespace).await?;
    let pod: Vec<PodView> = pods.into_iter().filter(|p| p.name == name).collect();
    if pod.is_empty() {
        bail!("no pod {namespace}/{name}; `berthctl pod list` shows them");
    }
    views::print_pods(&pod, output)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        c: PodCommand,
    }

    #[test]
    fn add_flags_make_the_spec() {
        let cli = Cli::try_parse_from(["t", "add", "web", "--mode", "trunk", "--disk", "data:/data:20", "--volume", "shared:/shared:nas:fs-1::/", "--selector", "pool=small", "--label", "app=web", "--spread-zones", "--", "sleep", "60"]).unwrap();
        let PodCommand::Add(a) = cli.c else { panic!() };
        let s = spec_of(&a).unwrap();
        assert_eq!(s.network_mode, pb::NetworkMode::Trunk as i32);
        assert_eq!((s.volumes[0].mount_path.as_str(), s.volumes[0].parameters["size"].as_str()), ("/data", "20Gi"));
        assert_eq!((s.volumes[1].kind, s.volumes[1].parameters["volumeId"].as_str()), (pb::VolumeKind::Nas as i32, "nas:fs-1::/"));
        assert_eq!(s.pool_selector["pool"], "small");
        assert!(s.spread_zones);
        assert_eq!(s.command, vec!["sleep", "60"]);
        let limits = berth_scheduler::validation::Limits::of_pools(&[]);
        berth_scheduler::validation::pod(&s, &limits).unwrap();
        let cli = Cli::try_parse_from(["t", "add", "web"]).unwrap();
        let PodCommand::Add(a) = cli.c else { panic!() };
        assert_eq!(spec_of(&a).unwrap().command, vec!["sleep", "infinity"]);
        berth_scheduler::validation::pod(&spec_of(&a).unwrap(), &limits).expect("the defaults make a spec the scheduler takes");
        let cli = Cli::try_parse_from(["t", "add", "web", "--disk", "data"]).unwrap();
        let PodCommand::Add(a) = cli.c else { panic!() };
        assert!(spec_of(&a).unwrap_err().to_string().contains("NAME:MOUNT_PATH:SIZE_GIB"));
        let cli = Cli::try_parse_from(["t", "add", "web", "--volume", "x:/x:vol-1"]).unwrap();
        let PodCommand::Add(a) = cli.c else { panic!() };
        assert!(spec_of(&a).unwrap_err().to_string().contains("not a volume ID"));
    }
}

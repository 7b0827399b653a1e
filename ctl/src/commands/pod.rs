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
use berth_scheduler::client::watch::{PodUpdate, PodWatch, key_of};
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
    /// The pod's name (not with -f).
    #[arg(required_unless_present = "file")]
    pub name: Option<String>,
    /// A Kubernetes Pod document (metadata, nodeSelector, tolerations, affinity,
    /// topologySpreadConstraints, priorityClassName, one container's command and requests)
    /// instead of the flags.
    #[arg(long, short = 'f', conflicts_with = "name")]
    pub file: Option<std::path::PathBuf>,
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
    /// A cloud disk made for the pod: NAME:MOUNT_PATH:SIZE_GIB, or NAME:MOUNT_PATH:SIZE_GIB:snapshot=s-…
    /// restored from a snapshot (repeatable; each takes a disk slot; deleted with the pod).
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
    /// Spread pods with the same labels across zones (a preference; see --spread for a rule).
    #[arg(long)]
    pub spread_zones: bool,
    /// Tolerate a taint: KEY=VALUE[:EFFECT] (Equal), KEY[:EFFECT] (Exists, any value) (repeatable).
    #[arg(long = "toleration")]
    pub tolerations: Vec<String>,
    /// Required node affinity: "KEY OP [V1,V2]", OP one of In, NotIn, Exists, DoesNotExist, Gt,
    /// Lt, on node labels or the well-known ones (topology.kubernetes.io/zone,
    /// node.kubernetes.io/instance-type, berth.io/pool, karpenter.sh/capacity-type,
    /// kubernetes.io/arch); every one must hold (repeatable).
    #[arg(long = "node-affinity")]
    pub node_affinity: Vec<String>,
    /// Keep off the node or zone of pods with these labels: KEY=VALUE@node or KEY=VALUE@zone
    /// (repeatable).
    #[arg(long = "anti-affinity")]
    pub anti_affinity: Vec<String>,
    /// Go only to a node or zone holding pods with these labels: KEY=VALUE@node|zone (repeatable).
    #[arg(long = "affinity")]
    pub affinity: Vec<String>,
    /// Spread pods with the same labels: node|zone[:MAX_SKEW] (DoNotSchedule; max skew 1 by
    /// default) (repeatable).
    #[arg(long = "spread")]
    pub spread: Vec<String>,
    /// A priority class of the scheduler's config.
    #[arg(long)]
    pub priority_class: Option<String>,
    /// Wait until the pod runs with an IP (watching it, not polling); fail with its message if it
    /// fails, is deleted, or does not run within --timeout.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits, in seconds.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    /// The command the pod runs (default: sleep infinity).
    #[arg(last = true)]
    pub command: Vec<String>,
}

#[derive(Subcommand)]
enum PodCommand {
    /// Submit a pod; the scheduler binds it to a node at once when one fits, else it waits (and
    /// may make the autoscaler add a node).
    Add(Box<AddArgs>),
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
        /// Then print each change as it happens (a row, or a JSON line with --output json) until
        /// interrupted.
        #[arg(long, short = 'w')]
        watch: bool,
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
    if let Some(path) = &a.file {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        return super::podfile::spec_of(&text, &a.namespace).with_context(|| format!("{}", path.display()));
    }
    let mut volumes = Vec::new();
    for d in &a.disks {
        let parts: Vec<&str> = d.split(':').collect();
        let (name, path, size, from) = match parts.as_slice() {
            [name, path, size] => (name, path, size, None),
            [name, path, size, from] => match from.strip_prefix("snapshot=") {
                Some(id) if id.starts_with("s-") && id.len() > 2 => (name, path, size, Some(id)),
                _ => bail!("--disk {d:?}: {from:?} is not snapshot=s-… (see `berthctl snapshot list`)"),
            },
            _ => bail!("--disk {d:?} is not NAME:MOUNT_PATH:SIZE_GIB[:snapshot=s-…]"),
        };
        size.parse::<u64>().with_context(|| format!("--disk {d:?}: size {size:?} is not a number of GiB"))?;
        let size = format!("{size}Gi");
        let mut params = vec![("size", size.as_str()), ("ephemeral", "true")];
        if let Some(id) = from {
            params.push(("snapshotId", id));
        }
        volumes.push(volume(name, pb::VolumeKind::Disk, path, &params));
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
    let labels = pairs(&a.labels, "--label")?;
    let topology = |t: &str, flag: &str, v: &str| match t {
        "node" => Ok(berth_scheduler::placement::labels::HOSTNAME.to_string()),
        "zone" => Ok(berth_scheduler::placement::labels::ZONE.to_string()),
        _ => bail!("{flag} {v:?}: the topology is node or zone, not {t:?}"),
    };
    let term = |v: &String, flag: &str| -> anyhow::Result<pb::PodAffinityTerm> {
        let Some((sel, t)) = v.rsplit_once('@') else { bail!("{flag} {v:?} is not KEY=VALUE@node or KEY=VALUE@zone") };
        let match_labels = pairs(&sel.split(',').map(str::to_string).collect::<Vec<_>>(), flag)?;
        Ok(pb::PodAffinityTerm { label_selector: Some(pb::LabelSelector { match_labels, match_expressions: vec![] }), namespaces: vec![], topology_key: topology(t, flag, v)? })
    };
    let terms = |vs: &[String], flag: &str| -> anyhow::Result<Option<pb::PodAffinity>> {
        if vs.is_empty() {
            return Ok(None);
        }
        Ok(Some(pb::PodAffinity { required: vs.iter().map(|v| term(v, flag)).collect::<anyhow::Result<_>>()?, preferred: vec![] }))
    };
    let mut tolerations = Vec::new();
    for t in &a.tolerations {
        let (kv, effect) = match t.rsplit_once(':') {
            Some((kv, e)) => (kv, e.to_string()),
            None => (t.as_str(), String::new()),
        };
        let (key, operator, value) = match kv.split_once('=') {
            Some((k, v)) => (k, "Equal", v),
            None => (kv, "Exists", ""),
        };
        tolerations.push(pb::Toleration { key: key.into(), operator: operator.into(), value: value.into(), effect, toleration_seconds: None });
    }
    let mut expressions = Vec::new();
    for e in &a.node_affinity {
        let parts: Vec<&str> = e.split_whitespace().collect();
        let (key, op, values) = match parts.as_slice() {
            [k, op] => (k, op, Vec::new()),
            [k, op, vs] => (k, op, vs.split(',').map(str::to_string).collect()),
            _ => bail!("--node-affinity {e:?} is not \"KEY OP [V1,V2]\""),
        };
        expressions.push(pb::NodeSelectorRequirement { key: key.to_string(), operator: op.to_string(), values });
    }
    let mut spread = Vec::new();
    for v in &a.spread {
        let (t, skew) = v.split_once(':').unwrap_or((v.as_str(), "1"));
        let max_skew = skew.parse::<i32>().with_context(|| format!("--spread {v:?}: max skew {skew:?} is not a number"))?;
        let match_labels = labels.clone();
        spread.push(pb::TopologySpreadConstraint { max_skew, topology_key: topology(t, "--spread", v)?, when_unsatisfiable: "DoNotSchedule".into(), label_selector: Some(pb::LabelSelector { match_labels, match_expressions: vec![] }), min_domains: 0 });
    }
    Ok(pb::PodSpec {
        tolerations,
        node_affinity: (!expressions.is_empty()).then(|| pb::NodeAffinity { required: vec![pb::NodeSelectorTerm { match_expressions: expressions }], preferred: vec![] }),
        pod_affinity: terms(&a.affinity, "--affinity")?,
        pod_anti_affinity: terms(&a.anti_affinity, "--anti-affinity")?,
        topology_spread_constraints: spread,
        priority_class_name: a.priority_class.clone().unwrap_or_default(),
        namespace: a.namespace.clone(),
        name: a.name.clone().unwrap_or_default(),
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
        labels,
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

fn runs(p: &pb::PodStatus) -> bool {
    p.phase == pb::PodPhase::Running as i32 && !p.pod_ip.is_empty()
}

/// Waits, following `watch`, until every named pod of `namespace` runs with an IP; fails naming
/// the first that failed (with its message) or was deleted, or past `timeout` each that does not
/// run, with its phase and message.
pub async fn wait_running(mut watch: PodWatch, namespace: &str, names: &[String], timeout: Duration, progress: impl Fn(&str)) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    watch.patience = timeout;
    let mut known: HashMap<String, pb::PodStatus> = HashMap::new();
    let mine = |p: &pb::PodStatus| p.spec.as_ref().is_some_and(|s| s.namespace == namespace && names.contains(&s.name));
    let mut said = String::new();
    loop {
        if let Some(f) = names.iter().filter_map(|n| known.get(n)).find(|p| p.phase == pb::PodPhase::Failed as i32) {
            let name = f.spec.as_ref().map(|s| s.name.as_str()).unwrap_or_default();
            bail!("pod {name} failed on {}: {}; see `berthctl pod get {name}` and the node's agent.log under <state-dir>/guests/{}/", f.node, f.message, f.node);
        }
        let running = names.iter().filter(|n| known.get(*n).is_some_and(runs)).count();
        if running == names.len() {
            return Ok(());
        }
        let text = format!("{running}/{} pods running", names.len());
        if text != said {
            progress(&text);
            said = text;
        }
        let update = match tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), watch.next()).await {
            Ok(u) => u?,
            Err(_) => {
                let waiting: Vec<String> = names
                    .iter()
                    .filter(|n| !known.get(*n).is_some_and(runs))
                    .map(|n| format!("{n} ({})", known.get(n).map(|p| format!("{} {}", views::phase(p.phase), p.message)).unwrap_or_else(|| "unknown to the scheduler".into())))
                    .collect();
                bail!("pods not running within {timeout:?}: {}", waiting.join("; "));
            }
        };
        match update {
            PodUpdate::Listed(pods) => known = pods.into_iter().filter(|p| mine(p)).map(|p| (p.spec.as_ref().map(|s| s.name.clone()).unwrap_or_default(), p)).collect(),
            PodUpdate::Event(e) => {
                let Some(p) = e.pod.filter(|p| mine(p)) else { continue };
                let name = p.spec.as_ref().map(|s| s.name.clone()).unwrap_or_default();
                if e.r#type == pb::PodEventType::Deleted as i32 {
                    bail!("pod {namespace}/{name} was deleted while waiting for it to run (it was {}: {})", views::phase(p.phase), p.message);
                }
                known.insert(name, p);
            }
        }
    }
}

/// Deletes a pod and waits, watching, until the scheduler forgot it.
pub async fn delete(paths: &ClusterPaths, c: &mut SchedulerClient<Channel>, namespace: &str, name: &str, timeout: Duration) -> anyhow::Result<()> {
    c.delete_pod(pb::DeletePodRequest { namespace: namespace.into(), name: name.into() }).await.map_err(rpc)?;
    wait_until_none(PodWatch::list_then_watch(&paths.scheduler_endpoints(), namespace, name), timeout, &format!("pod {namespace}/{name}")).await
}

/// Waits, watching, until the scheduler holds no pod (every node removed its pods).
pub async fn wait_gone(paths: &ClusterPaths, timeout: Duration) -> anyhow::Result<()> {
    wait_until_none(PodWatch::list_then_watch(&paths.scheduler_endpoints(), "", ""), timeout, "pods").await
}

async fn wait_until_none(mut watch: PodWatch, timeout: Duration, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    watch.patience = timeout;
    let mut left: HashMap<String, pb::PodStatus> = HashMap::new();
    let mut listed = false;
    loop {
        if listed && left.is_empty() {
            return Ok(());
        }
        match tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), watch.next()).await {
            Ok(Ok(PodUpdate::Listed(pods))) => {
                listed = true;
                left = pods.into_iter().map(|p| (key_of(&p), p)).collect();
            }
            Ok(Ok(PodUpdate::Event(e))) => {
                let Some(p) = e.pod else { continue };
                if e.r#type == pb::PodEventType::Deleted as i32 {
                    left.remove(&key_of(&p));
                } else {
                    left.insert(key_of(&p), p);
                }
            }
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => {
                let mut names: Vec<String> = left.values().map(|p| format!("{} ({} on {}: {})", key_of(p), views::phase(p.phase), p.node, p.message)).collect();
                names.sort();
                bail!("{what} still there after {timeout:?}: {}", names.join("; "));
            }
        }
    }
}

/// The ENI of a pod's IP, from the local cloud when it runs, asked again (at most every 2 s) for
/// an IP it did not know.
struct EniLookup {
    cloud: Option<berth_cloud::HttpCloud>,
    by_ip: HashMap<String, String>,
    asked: Option<Instant>,
}

impl EniLookup {
    fn new(paths: &ClusterPaths) -> EniLookup {
        EniLookup { cloud: cluster::connect(paths).ok(), by_ip: HashMap::new(), asked: None }
    }

    async fn view(&mut self, p: &pb::PodStatus) -> PodView {
        if !p.pod_ip.is_empty() && !self.by_ip.contains_key(&p.pod_ip) && self.asked.is_none_or(|t| t.elapsed() > Duration::from_secs(2)) {
            if let Some(cloud) = &self.cloud
                && let Ok(enis) = cloud.describe_network_interfaces(&EniFilter::default()).await
            {
                self.by_ip = views::enis_by_ip(&enis);
            }
            self.asked = Some(Instant::now());
        }
        views::pod_view(p, &self.by_ip)
    }
}

/// `pod list --watch`: the listing, then every change as it happens, until interrupted.
async fn watch_pods(paths: &ClusterPaths, namespace: &str, output: Output) -> anyhow::Result<()> {
    let mut watch = PodWatch::list_then_watch(&paths.scheduler_endpoints(), namespace, "");
    let mut enis = EniLookup::new(paths);
    let mut known: HashMap<String, pb::PodStatus> = HashMap::new();
    let mut first = true;
    loop {
        match watch.next().await? {
            PodUpdate::Listed(pods) => {
                let fresh: HashMap<String, pb::PodStatus> = pods.into_iter().map(|p| (key_of(&p), p)).collect();
                if first {
                    let mut rows = Vec::new();
                    for p in fresh.values() {
                        rows.push(enis.view(p).await);
                    }
                    rows.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
                    match output {
                        Output::Table => print!("{}", views::pods_table(&rows)),
                        Output::Json => {
                            for r in &rows {
                                println!("{}", views::watch_line_json("listed", watch.position().0, r));
                            }
                        }
                    }
                    if output == Output::Table {
                        println!("{}", views::watch_header());
                    }
                    first = false;
                } else {
                    // Listed again (the leader no longer kept our revision): what changed meanwhile.
                    let mut gone: Vec<&String> = known.keys().filter(|k| !fresh.contains_key(*k)).collect();
                    gone.sort();
                    for k in gone {
                        let row = enis.view(&known[k]).await;
                        print_change(output, "deleted", watch.position().0, &row);
                    }
                    let mut changed: Vec<&pb::PodStatus> = fresh.iter().filter(|(k, p)| known.get(*k) != Some(*p)).map(|(_, p)| p).collect();
                    changed.sort_by_key(|p| key_of(p));
                    for p in changed {
                        let row = enis.view(p).await;
                        print_change(output, "listed", watch.position().0, &row);
                    }
                }
                known = fresh;
            }
            PodUpdate::Event(e) => {
                let Some(p) = e.pod else { continue };
                let row = enis.view(&p).await;
                let kind = match pb::PodEventType::try_from(e.r#type).unwrap_or(pb::PodEventType::Unspecified) {
                    pb::PodEventType::Added => "added",
                    pb::PodEventType::Bound => "bound",
                    pb::PodEventType::StatusChanged => "status_changed",
                    pb::PodEventType::Deleted => "deleted",
                    pb::PodEventType::Unspecified => "changed",
                };
                print_change(output, kind, e.revision, &row);
                if e.r#type == pb::PodEventType::Deleted as i32 {
                    known.remove(&key_of(&p));
                } else {
                    known.insert(key_of(&p), p);
                }
            }
        }
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
    }
}

fn print_change(output: Output, kind: &str, revision: u64, row: &PodView) {
    match output {
        Output::Table => println!("{}", views::watch_row(kind, revision, row)),
        Output::Json => println!("{}", views::watch_line_json(kind, revision, row)),
    }
}

impl Pod {
    pub async fn exec(self, output: Output) -> anyhow::Result<()> {
        let paths = &self.paths;
        let mut c = cluster::scheduler(paths, Duration::from_secs(2)).await?;
        match self.command {
            PodCommand::Add(a) => {
                let spec = spec_of(&a)?;
                let (namespace, name) = (spec.namespace.clone(), spec.name.clone());
                if c.get_pod(pb::GetPodRequest { namespace: namespace.clone(), name: name.clone() }).await.is_ok() {
                    bail!("pod {namespace}/{name} exists; delete it first with `berthctl pod del {name}`");
                }
                // The watch starts before the submit, so it sees the pod's whole life.
                let watch = if a.wait { Some(PodWatch::from_now(&paths.scheduler_endpoints(), &namespace, &name).await?) } else { None };
                c.submit_pod(pb::SubmitPodRequest { spec: Some(spec) }).await.map_err(rpc)?;
                if let Some(watch) = watch {
                    wait_running(watch, &namespace, std::slice::from_ref(&name), Duration::from_secs(a.timeout), |s| if output == Output::Table { eprintln!("==> {s}") }).await?;
                }
                show(paths, &mut c, &namespace, &name, output).await
            }
            PodCommand::Del { name, namespace } => delete(paths, &mut c, &namespace, &name, Duration::from_secs(60)).await,
            PodCommand::Get { name, namespace } => show(paths, &mut c, &namespace, &name, output).await,
            PodCommand::List { namespace, watch: true } => watch_pods(paths, &namespace, output).await,
            PodCommand::List { namespace, watch: false } => {
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
        let cli = Cli::try_parse_from([
            "t", "add", "web", "--label", "app=web", "--toleration", "dedicated=gpu:NoSchedule", "--toleration", "spot", "--node-affinity", "kubernetes.io/arch In amd64",
            "--node-affinity", "gpu Exists", "--anti-affinity", "app=web@node", "--affinity", "app=db@zone", "--spread", "zone:2",
        ])
        .unwrap();
        let PodCommand::Add(a) = cli.c else { panic!() };
        let s = spec_of(&a).unwrap();
        assert_eq!(s.tolerations[0], pb::Toleration { key: "dedicated".into(), operator: "Equal".into(), value: "gpu".into(), effect: "NoSchedule".into(), toleration_seconds: None });
        assert_eq!((s.tolerations[1].key.as_str(), s.tolerations[1].operator.as_str()), ("spot", "Exists"));
        let na = s.node_affinity.as_ref().unwrap();
        assert_eq!(na.required[0].match_expressions.len(), 2);
        assert_eq!(s.pod_anti_affinity.as_ref().unwrap().required[0].topology_key, "kubernetes.io/hostname");
        assert_eq!(s.pod_affinity.as_ref().unwrap().required[0].topology_key, "topology.kubernetes.io/zone");
        assert_eq!((s.topology_spread_constraints[0].max_skew, s.topology_spread_constraints[0].label_selector.as_ref().unwrap().match_labels["app"].as_str()), (2, "web"));
        berth_scheduler::validation::pod(&s, &limits).expect("the flags make a spec the scheduler takes");
        let cli = Cli::try_parse_from(["t", "add", "web", "--anti-affinity", "app=web@rack"]).unwrap();
        let PodCommand::Add(a) = cli.c else { panic!() };
        assert!(spec_of(&a).unwrap_err().to_string().contains("node or zone"));
        let cli = Cli::try_parse_from(["t", "add", "web", "--disk", "data"]).unwrap();
        let PodCommand::Add(a) = cli.c else { panic!() };
        assert!(spec_of(&a).unwrap_err().to_string().contains("NAME:MOUNT_PATH:SIZE_GIB"));
        let cli = Cli::try_parse_from(["t", "add", "web", "--disk", "data:/data:20:snapshot=s-abc1"]).unwrap();
        let PodCommand::Add(a) = cli.c else { panic!() };
        let s = spec_of(&a).unwrap();
        assert_eq!(s.volumes[0].parameters["snapshotId"], "s-abc1");
        berth_scheduler::validation::pod(&s, &limits).expect("a restored disk is a spec the scheduler takes");
        let cli = Cli::try_parse_from(["t", "add", "web", "--disk", "data:/data:20:snap=s-1"]).unwrap();
        let PodCommand::Add(a) = cli.c else { panic!() };
        assert!(spec_of(&a).unwrap_err().to_string().contains("snapshot=s-"));
        let cli = Cli::try_parse_from(["t", "add", "web", "--volume", "x:/x:vol-1"]).unwrap();
        let PodCommand::Add(a) = cli.c else { panic!() };
        assert!(spec_of(&a).unwrap_err().to_string().contains("not a volume ID"));
    }
}

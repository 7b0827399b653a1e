//! `berthctl up`: the local cluster through its scheduler. The local cloud boots the Berth node
//! image on every instance (agent with its pod runner, CSI driver); a sample VPC; `berth-scheduler`
//! with the node pool `sample`, whose autoscaler creates the pool's two nodes; then a sample
//! workload submitted to the scheduler (pods of each network mode, a disk, a NAS volume shared by
//! two pods, an OSS volume), shown once it runs, with the reachability between its pods.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use berth_cloud::api::CreateVSwitchRequest;
use berth_cloud::model::{Direction, IpProtocol, Policy, SecurityGroupRule};
use berth_cloud::{Cloud, HttpCloud};
use berth_proto::cluster::v1 as pb;
use clap::Args;
use serde::Serialize;

use crate::Output;
use crate::cluster::{self, ClusterPaths};
use crate::commands::pod::{self, volume};
use crate::ha::{self, HaLayout};
use crate::views::{self, PodView};

#[derive(Args)]
pub struct Up {
    #[command(flatten)]
    paths: ClusterPaths,
    /// A replicated control plane: three etcd members on loopback and three scheduler replicas on
    /// them (one leads; agents and berthctl know all three). A cluster brought up so stays so.
    #[arg(long)]
    ha: bool,
}

/// The sample cluster: every create carries a fixed ClientToken, so `up` run twice makes nothing twice.
const VPC_CIDR: &str = "10.88.0.0/16";
const VSWITCHES: &[(&str, &str, &str)] = &[("local-1a", "10.88.1.0/24", "nodes-a"), ("local-1b", "10.88.2.0/24", "nodes-b")];
pub const POOL: &str = "sample";
/// ecs.c7.xlarge first (the pool's minimum is made of its first type): 3 ENI slots, one for the
/// trunk, one for the shared pool, one for an exclusive pod.
const INSTANCE_TYPES: &[&str] = &["ecs.c7.xlarge", "ecs.g7.large"];
const MIN_NODES: u32 = 2;
const MAX_NODES: u32 = 4;
const BUCKET: &str = "berth-sample";

/// The Berth node image: what every instance of the local cloud boots (as `berth_tests::guest::
/// NodeImage` writes it for the tests). `bin` is the directory of the binaries.
pub fn node_image(paths: &ClusterPaths, bin: &Path) -> String {
    let image_dir = paths.image_dir();
    let b = |name: &str| bin.join(name).display().to_string();
    let cni_path = format!("{}:/opt/cni/bin:/usr/lib/cni", bin.display());
    let scheduler = paths.scheduler_endpoints().join(",");
    let pod_prefix = paths.pod_netns_prefix("{instance_id}");
    let agent: Vec<String> = [
        b("berth-agent").as_str(),
        "--config",
        &image_dir.join("agent.toml").display().to_string(),
        "--node-netns",
        "{netns}",
        "--metadata-url",
        "{metadata_url}",
        "--cloud-endpoint",
        "{cloud_endpoint}",
        "--vpc-endpoint",
        "{vpc_endpoint}",
        "--nas-endpoint",
        "{nas_endpoint}",
        "--credentials",
        "{credentials}",
        "--socket",
        "{dir}/agent.sock",
        "--state-dir",
        "{dir}/agent-state",
        "--cni-conf-dir",
        "{dir}/net.d",
        "--release-queue-dir",
        "{dir}/release-queue",
        // Every node's agent shares the machine's loopback: a free port, written to {dir}/agent.metrics.
        "--metrics-listen",
        "127.0.0.1:0",
        "--min-idle-ips",
        "2",
        "--max-idle-ips",
        "8",
        "--cooldown-secs",
        "60",
        "--trunk",
        "true",
        "--scheduler-endpoint",
        &scheduler,
        "--report-secs",
        "2",
        "--node-pool",
        POOL,
        "--pod-runner",
        "true",
        "--runner-cni-path",
        &cni_path,
        "--runner-netns-prefix",
        &pod_prefix,
        "--runner-csi-socket",
        "{dir}/csi.sock",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(paths.pod_cgroups().into_iter().flat_map(|root| ["--runner-cgroup-root".to_string(), root.join("{instance_id}").display().to_string()]))
    .collect();
    let csi: Vec<String> = [
        b("berth-csi").as_str(),
        "--config",
        &image_dir.join("csi.toml").display().to_string(),
        "--mode",
        "all",
        "--endpoint",
        "unix://{dir}/csi.sock",
        "--state-dir",
        "{dir}/csi-state",
        "--cloud-endpoint",
        "{cloud_endpoint}",
        "--vpc-endpoint",
        "{vpc_endpoint}",
        "--nas-endpoint",
        "{nas_endpoint}",
        "--credentials",
        "{credentials}",
        "--agent-socket",
        "{dir}/agent.sock",
        "--nas-local-export-root",
        "{nas_export_root}",
        "--oss-endpoint",
        "{oss_endpoint}",
        // Like the agent's: a free port, written to {dir}/csi.metrics.
        "--metrics-listen",
        "127.0.0.1:0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let list = |items: &[String]| format!("[{}]", items.iter().map(|s| serde_json::to_string(s).expect("a string")).collect::<Vec<_>>().join(", "));
    format!(
        "# The Berth node image of the local cluster, written by `berthctl up`: every instance runs\n\
         # its agent (reporting to the scheduler, running the pods bound to it), then its CSI driver.\n\
         stop_grace_secs = 10\n\n\
         [[service]]\nname = \"agent\"\ncommand = {}\nenv = {{ BERTH_LOG = \"info\" }}\nrestart = \"on-failure\"\nready_file = \"{{dir}}/net.d/10-berth.conflist\"\nready_timeout_secs = 120\n\n\
         [[service]]\nname = \"csi\"\ncommand = {}\nenv = {{ BERTH_LOG = \"info\" }}\nrestart = \"on-failure\"\nready_file = \"{{dir}}/csi.sock\"\n\n\
         [cleanup]\nnetns_prefixes = [{}]\n",
        list(&agent),
        list(&csi),
        serde_json::to_string(&pod_prefix).expect("a string"),
    )
}

/// The scheduler's config: the pool `sample` over both vSwitches, its minimum made by the
/// autoscaler; pods spread over the nodes (a demo shows both nodes at work).
pub fn scheduler_config(paths: &ClusterPaths, endpoints: &cluster::Endpoints, vswitches: &[(String, String)], sg: &str) -> String {
    let vsw: Vec<String> = vswitches.iter().map(|(id, zone)| format!("{{ id = \"{id}\", zone = \"{zone}\" }}")).collect();
    let types: Vec<String> = INSTANCE_TYPES.iter().map(|t| format!("\"{t}\"")).collect();
    format!(
        "# The local cluster's scheduler, written by `berthctl up` (every key: scheduler/scheduler.toml.example).\n\
         [placement]\nstrategy = \"spread\"\n\n\
         [autoscaler]\nenabled = true\n\n\
         [cloud]\nendpoint = \"{}\"\nvpc_endpoint = \"{}\"\nnas_endpoint = \"{}\"\nregion = \"{}\"\ncredentials_file = \"{}\"\n\n\
         [[pool]]\nname = \"{POOL}\"\ninstance_types = [{}]\nvswitches = [{}]\nsecurity_group_ids = [\"{sg}\"]\nmin_nodes = {MIN_NODES}\nmax_nodes = {MAX_NODES}\nimage_id = \"{}\"\n",
        endpoints.ecs,
        endpoints.vpc,
        endpoints.nas,
        cluster::REGION,
        paths.credentials().display(),
        types.join(", "),
        vsw.join(", "),
        cluster::NODE_IMAGE_ID,
    )
}

fn sh(script: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script.into()]
}

/// The sample workload: pods of each network mode, a disk, one NAS volume two pods share, an OSS
/// volume; the pods with a volume write into it.
pub fn sample_pods(nas_volume_id: &str) -> Vec<pb::PodSpec> {
    let pod = |name: &str, mode: pb::NetworkMode, volumes: Vec<pb::VolumeSpec>, command: Vec<String>| pb::PodSpec {
        namespace: "default".into(),
        name: name.into(),
        cpu_millicores: 100,
        memory_bytes: 64 << 20,
        network_mode: mode as i32,
        volumes,
        labels: [("app".to_string(), name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '-').to_string())].into(),
        command,
        ..Default::default()
    };
    let sleep = || vec!["sleep".to_string(), "infinity".to_string()];
    let write_into = |dir: &str| sh(&format!("echo \"written by $BERTH_POD_NAME\" > {dir}/$BERTH_POD_NAME.txt && exec sleep infinity"));
    vec![
        pod("shared-1", pb::NetworkMode::Shared, vec![], sleep()),
        pod("shared-2", pb::NetworkMode::Shared, vec![], sleep()),
        pod("exclusive-1", pb::NetworkMode::Exclusive, vec![], sleep()),
        pod("trunk-1", pb::NetworkMode::Trunk, vec![], sleep()),
        pod("disk-1", pb::NetworkMode::Shared, vec![volume("data", pb::VolumeKind::Disk, "/data", &[("size", "20Gi"), ("ephemeral", "true")])], write_into("data")),
        pod("nas-1", pb::NetworkMode::Shared, vec![volume("shared", pb::VolumeKind::Nas, "/shared", &[("volumeId", nas_volume_id)])], write_into("shared")),
        pod("nas-2", pb::NetworkMode::Shared, vec![volume("shared", pb::VolumeKind::Nas, "/shared", &[("volumeId", nas_volume_id)])], write_into("shared")),
        pod("oss-1", pb::NetworkMode::Shared, vec![volume("objects", pb::VolumeKind::Oss, "/objects", &[("bucket", BUCKET), ("ephemeral", "true")])], write_into("objects")),
    ]
}

/// One ping from a pod to another.
#[derive(Serialize)]
struct Reach {
    from: String,
    to: String,
    ip: String,
    node: String,
    reachable: bool,
}

#[derive(Serialize)]
struct UpReport<'a> {
    pods: &'a [PodView],
    nodes: &'a [views::NodeView],
    reachability: &'a [Reach],
}

fn progress(step: &str) {
    eprintln!("==> {step}");
}

impl Up {
    pub async fn exec(self, output: Output) -> anyhow::Result<()> {
        let paths = &self.paths;
        if paths.netns_prefix.is_empty() || paths.netns_prefix.len() > 11 || !paths.netns_prefix.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            bail!("--netns-prefix {:?}: use 1 to 11 letters, digits, '-' or '_' (the pods' namespaces add the instance ID to it)", paths.netns_prefix);
        }
        let ha = match (self.ha, HaLayout::load(paths)) {
            (true, None) if cluster::scheduler_pid(paths).is_some() => bail!("this cluster runs one scheduler on the embedded journal; `berthctl down` first to bring it up again with --ha"),
            (true, None) => Some(HaLayout::load_or_choose(paths)?),
            (_, Some(l)) => Some(l),
            (false, None) => None,
        };
        progress("starting the local cloud; its instances boot the Berth node image (agent, CSI driver)");
        let bin = cluster::sibling_binary("berthctl")?.parent().context("berthctl's directory")?.to_path_buf();
        for name in ["berth-agent", "berth-csi", "berth", "berth-scheduler", "berth-localcloud"] {
            cluster::sibling_binary(name)?;
        }
        std::fs::create_dir_all(paths.image_dir()).with_context(|| format!("creating {}", paths.image_dir().display()))?;
        // Explicit, empty config files: the binaries would otherwise read /etc/berth.
        write_if_changed(&paths.image_dir().join("agent.toml"), "# the node image passes everything as flags; see README.md for the keys\n")?;
        write_if_changed(&paths.image_dir().join("csi.toml"), "# the node image passes everything as flags; see README.md for the keys\n")?;
        write_if_changed(&paths.image_file(), &node_image(paths, &bin))?;
        cluster::ensure_credentials(paths)?;
        cluster::start_localcloud(paths)?;
        let endpoints = cluster::wait_for_endpoint(paths, Duration::from_secs(30))?;
        let cloud = cluster::client(paths, &endpoints)?;

        progress("creating the sample VPC, vSwitches and security group");
        let (vpc, vswitches, sg) = sample_network(&cloud).await?;

        let config = scheduler_config(paths, &endpoints, &vswitches, &sg);
        match &ha {
            None => {
                progress(&format!("starting the scheduler on {} with the node pool {POOL} ({MIN_NODES} to {MAX_NODES} nodes)", paths.scheduler_listen));
                std::fs::create_dir_all(paths.scheduler_state_dir())?;
                write_if_changed(&paths.scheduler_config(), &config)?;
                cluster::start_scheduler(paths)?;
            }
            Some(layout) => {
                progress(&format!("starting etcd: {} members on {}", ha::REPLICAS, layout.etcd_endpoints().join(",")));
                ha::start_etcd(paths, layout)?;
                ha::wait_etcd(paths, layout, Duration::from_secs(30))?;
                progress(&format!("starting {} scheduler replicas on {} with the node pool {POOL} ({MIN_NODES} to {MAX_NODES} nodes)", ha::REPLICAS, layout.schedulers.join(",")));
                for i in 0..ha::REPLICAS {
                    write_if_changed(&ha::replica_config(paths, i), &ha::replica_config_text(&config, layout, i))?;
                    ha::start_replica(paths, layout, i)?;
                }
            }
        }
        let mut sched = cluster::scheduler(paths, Duration::from_secs(15)).await?;

        wait_for_nodes(paths, &mut sched).await?;

        let existing: Vec<String> = berth_scheduler_client::list_pods(&mut sched, "default").await.map_err(|s| anyhow::anyhow!("{}", s.message()))?.into_iter().filter_map(|p| p.spec.map(|s| s.name)).collect();
        let nas = sample_nas(&cloud, paths, &vpc, &vswitches[0].0).await?;
        std::fs::create_dir_all(paths.bucket_dir(BUCKET)).with_context(|| format!("creating the bucket {BUCKET}"))?;
        let specs = sample_pods(&nas);
        let missing: Vec<&pb::PodSpec> = specs.iter().filter(|s| !existing.contains(&s.name)).collect();
        if !missing.is_empty() {
            progress(&format!("submitting the sample workload to the scheduler: {}", missing.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")));
            for spec in missing {
                sched.submit_pod(pb::SubmitPodRequest { spec: Some(spec.clone()) }).await.map_err(|s| anyhow::anyhow!("submitting pod {}: {}", spec.name, s.message()))?;
            }
        }
        let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
        let watch = berth_scheduler::client::watch::PodWatch::list_then_watch(&paths.scheduler_endpoints(), "default", "");
        pod::wait_running(watch, "default", &names, Duration::from_secs(180), |s| progress(&format!("waiting for the sample pods: {s}"))).await?;

        let (pods, nodes) = pod::snapshot(paths, &mut sched, "").await?;
        let reach = reachability(paths, &pods);
        if output == Output::Json {
            println!("{}", serde_json::to_string_pretty(&UpReport { pods: &pods, nodes: &nodes, reachability: &reach })?);
            return Ok(());
        }
        println!("{}", views::pods_table(&pods));
        println!("{}", views::nodes_table(&nodes));
        for r in &reach {
            println!("{} -> {} ({}) on {}: {}", r.from, r.to, r.ip, r.node, if r.reachable { "reachable" } else { "UNREACHABLE" });
        }
        let node = nodes.first().map(|n| n.instance_id.as_str()).unwrap_or("<instance-id>");
        println!("\nnext (target/release/berthctl):");
        for (cmd, what) in [
            ("pod add web --mode trunk --wait".to_string(), "a pod through the scheduler (--disk, --volume, -- COMMAND…)"),
            ("pod list | nodes | pools".to_string(), "the pods, the nodes' free counts, the node pools"),
            (format!("inspect [{node}|POD]"), "every node's (or one's) pods, pool and cloud; why a pod has no IP or volume"),
            ("pod del web".to_string(), "delete a pod (its node unpublishes its volumes)"),
            ("down".to_string(), "delete the pods, stop everything, remove what up made"),
        ] {
            println!("  berthctl {cmd:<36} # {what}");
        }
        Ok(())
    }
}

fn write_if_changed(path: &Path, text: &str) -> anyhow::Result<()> {
    if std::fs::read_to_string(path).is_ok_and(|old| old == text) {
        return Ok(());
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// The sample VPC, its vSwitches (ID, zone) and security group (open to the VPC).
async fn sample_network(cloud: &HttpCloud) -> anyhow::Result<(String, Vec<(String, String)>, String)> {
    let vpc = cloud.create_vpc(VPC_CIDR, "berth-sample", false, Some("berth-sample-vpc")).await.context("CreateVpc")?;
    let mut vswitches = Vec::new();
    for (zone, cidr, name) in VSWITCHES {
        let req = CreateVSwitchRequest {
            vpc_id: vpc.clone(),
            zone_id: zone.to_string(),
            cidr_block: cidr.to_string(),
            ipv6_block_index: None,
            name: name.to_string(),
            client_token: Some(format!("berth-sample-{name}")),
        };
        vswitches.push((cloud.create_vswitch(&req).await.context("CreateVSwitch")?, zone.to_string()));
    }
    let sg = cloud.create_security_group(&vpc, "berth-sample", Some("berth-sample-sg")).await.context("CreateSecurityGroup")?;
    let from_vpc = SecurityGroupRule { direction: Direction::Ingress, protocol: IpProtocol::All, ports: None, peer_cidr: VPC_CIDR.parse()?, policy: Policy::Accept, priority: 1 };
    if !cloud.describe_security_group(&sg).await?.rules.contains(&from_vpc) {
        cloud.authorize_security_group(&sg, &from_vpc).await.context("AuthorizeSecurityGroup")?;
    }
    Ok((vpc, vswitches, sg))
}

/// The sample NAS file system (made once), as the volume ID of its root directory.
async fn sample_nas(cloud: &HttpCloud, paths: &ClusterPaths, vpc: &str, vswitch: &str) -> anyhow::Result<String> {
    let existing = cloud.describe_nas_file_systems(None).await.context("DescribeFileSystems")?;
    let fs = match existing.into_iter().find(|f| f.vpc_id == vpc) {
        Some(fs) => fs,
        None => cloud.create_nas_file_system(VSWITCHES[0].0, vpc, vswitch, Some("berth-sample-nas")).await.context("CreateFileSystem")?,
    };
    // The export appears in the local cloud's state a moment after the call.
    let export = paths.state_dir.join("nas").join(&fs.id);
    let started = Instant::now();
    while !export.is_dir() && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(format!("nas:{}::/", fs.id))
}

/// Waits until the pool's minimum of nodes report Ready.
async fn wait_for_nodes(paths: &ClusterPaths, sched: &mut berth_proto::cluster::v1::scheduler_client::SchedulerClient<tonic::transport::Channel>) -> anyhow::Result<()> {
    let started = Instant::now();
    let timeout = Duration::from_secs(180);
    let mut said = usize::MAX;
    loop {
        let nodes = berth_scheduler_client::list_nodes(sched).await.map_err(|s| anyhow::anyhow!("{}", s.message()))?;
        let ready = nodes.iter().filter(|n| n.state == "Ready" && n.last_report.as_ref().and_then(|r| r.identity.as_ref()).is_some_and(|i| i.pool == POOL)).count();
        if ready >= MIN_NODES as usize {
            return Ok(());
        }
        if ready != said {
            progress(&format!("waiting for the pool's nodes to boot and report: {ready}/{MIN_NODES} ready (the autoscaler creates them)"));
            said = ready;
        }
        if started.elapsed() > timeout {
            bail!("only {ready} of the pool's {MIN_NODES} nodes reported within {timeout:?}; see {} and the guests' agent.log under {}", paths.scheduler_log_file().display(), paths.state_dir.join("guests").display());
        }
        if !cluster::scheduler_runs(paths) {
            bail!("berth-scheduler stopped; see {}", paths.scheduler_log_file().display());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The namespace of the runner's pod holding `ip` on `node`.
fn pod_netns(paths: &ClusterPaths, node: &str, ip: &str) -> Option<String> {
    let prefix = paths.pod_netns_prefix(node);
    std::fs::read_dir("/run/netns").ok()?.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.starts_with(&prefix)).find(|ns| {
        std::process::Command::new("ip").args(["-n", ns, "-4", "-o", "addr"]).output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&format!(" {ip}/")))
    })
}

/// Pings every other pod from the first: same node, and across nodes through the VPC.
fn reachability(paths: &ClusterPaths, pods: &[PodView]) -> Vec<Reach> {
    let running: Vec<&PodView> = pods.iter().filter(|p| p.phase == "Running" && !p.pod_ip.is_empty()).collect();
    let Some(first) = running.first() else { return Vec::new() };
    let Some(netns) = pod_netns(paths, &first.node, &first.pod_ip) else { return Vec::new() };
    running[1..]
        .iter()
        .map(|other| {
            let reachable = std::process::Command::new("ip")
                // Three tries: one lost echo on a busy machine is not unreachable.
                .args(["netns", "exec", &netns, "ping", "-c", "3", "-i", "0.2", "-W", "2", &other.pod_ip])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            Reach { from: first.name.clone(), to: other.name.clone(), ip: other.pod_ip.clone(), node: other.node.clone(), reachable }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        paths: ClusterPaths,
    }

    fn paths() -> ClusterPaths {
        Cli::parse_from(["t", "--state-dir", "/s", "--run-dir", "/r", "--netns-prefix", "bx", "--scheduler-listen", "127.0.0.1:1234"]).paths
    }

    fn endpoints() -> cluster::Endpoints {
        cluster::Endpoints { ecs: "http://127.0.0.1:9".into(), vpc: "http://127.0.0.1:10".into(), nas: "http://127.0.0.1:11".into() }
    }

    #[test]
    fn the_scheduler_config_is_valid_and_names_the_pool_over_both_vswitches() {
        let text = scheduler_config(&paths(), &endpoints(), &[("vsw-a".into(), "local-1a".into()), ("vsw-b".into(), "local-1b".into())], "sg-1");
        let c = berth_scheduler::config::SchedulerConfig::parse(&text, Path::new("x")).unwrap();
        c.validate().unwrap();
        let p = &c.pool[0];
        assert_eq!((p.name.as_str(), p.min_nodes, p.max_nodes, p.vswitches.len()), ("sample", 2, 4, 2));
        assert_eq!(c.cloud.credentials_file, Path::new("/s/credentials.json"));
        assert_eq!((c.cloud.endpoint.as_str(), c.cloud.vpc_endpoint.as_str(), c.cloud.nas_endpoint.as_str()), ("http://127.0.0.1:9", "http://127.0.0.1:10", "http://127.0.0.1:11"));
    }

    #[test]
    fn the_node_image_reports_to_the_scheduler_and_names_pods_after_the_cluster() {
        let text = node_image(&paths(), Path::new("/bin-dir"));
        for part in ["\"/bin-dir/berth-agent\"", "\"--scheduler-endpoint\", \"http://127.0.0.1:1234\"", "\"--runner-netns-prefix\", \"bx-pod-{instance_id}\"", "\"--trunk\", \"true\"", "netns_prefixes = [\"bx-pod-{instance_id}\"]", "\"--mode\", \"all\"", "\"--vpc-endpoint\", \"{vpc_endpoint}\"", "\"--nas-endpoint\", \"{nas_endpoint}\""] {
            assert!(text.contains(part), "{part} missing:\n{text}");
        }
    }

    #[test]
    fn the_sample_has_every_mode_and_volume_kind() {
        let pods = sample_pods("nas:fs-1::/");
        let modes: std::collections::BTreeSet<i32> = pods.iter().map(|p| p.network_mode).collect();
        assert_eq!(modes.len(), 3);
        let nas: Vec<_> = pods.iter().filter(|p| p.volumes.iter().any(|v| v.parameters.get("volumeId").is_some_and(|id| id == "nas:fs-1::/"))).collect();
        assert_eq!(nas.len(), 2, "two pods share the NAS volume");
        for kind in [pb::VolumeKind::Disk, pb::VolumeKind::Oss] {
            assert!(pods.iter().any(|p| p.volumes.iter().any(|v| v.kind == kind as i32)));
        }
        // The scheduler takes each, under the sample pool.
        let text = scheduler_config(&paths(), &endpoints(), &[("vsw-a".into(), "local-1a".into())], "sg-1");
        let limits = berth_scheduler::validation::Limits::of_pools(&berth_scheduler::config::SchedulerConfig::parse(&text, Path::new("x")).unwrap().pool);
        for p in &pods {
            berth_scheduler::validation::pod(p, &limits).unwrap();
        }
    }
}

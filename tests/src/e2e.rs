//! A whole cluster for end-to-end tests: the local cloud booting the Berth node image (agent with
//! its pod runner, CSI driver), a sample VPC, a real `berth-scheduler` with one node pool whose
//! autoscaler makes the pool's instances; and the views of it tests wait on. The local cloud
//! serves ECS, VPC and NAS on listeners of their own, as the real products are, and every binary
//! is given each product's endpoint.

use std::collections::BTreeMap;

use berth_cloud::Cloud as _;
use berth_cloud::api::InstanceFilter;
use berth_proto::cluster::v1 as pb;
use berth_proto::cluster::v1::scheduler_client::SchedulerClient;
use tonic::transport::Channel;

use crate::guest::NodeImage;
use crate::scheduler::{Scheduler, free_port, url_of};
use crate::{LocalCloud, LocalCloudOptions, SampleNet};

/// A cluster: the local cloud booting the node image, a sample VPC, the scheduler with one pool.
pub struct Cluster {
    /// In the names of the pods' namespaces (`<tag><instance>-p…`), unique to this test.
    pub tag: String,
    pub scheduler: Scheduler,
    pub lc: LocalCloud,
    pub net: SampleNet,
    pub _image: NodeImage,
}

/// `pool` of `instance_type`, `min`..`max` nodes; pods pending 2 s ask for a node; a node idle
/// `idle_secs` goes.
pub async fn cluster(pool: &str, instance_type: &str, min: u32, max: u32, idle_secs: u64, cidr: (&str, &str), extra_agent_args: &[&str]) -> Cluster {
    cluster_of(pool, instance_type, (min, max), idle_secs, cidr, false, extra_agent_args).await
}

/// As [`cluster`]; `dual`: a dual-stack VPC and vSwitch, open to every IPv6 source too (the
/// agents need `--ip-stack dual` among `extra_agent_args` to give pods IPv6 addresses).
pub async fn cluster_of(pool: &str, instance_type: &str, (min, max): (u32, u32), idle_secs: u64, cidr: (&str, &str), dual: bool, extra_agent_args: &[&str]) -> Cluster {
    start(pool, instance_type, (min, max), idle_secs, cidr, dual, extra_agent_args, None).await
}

/// As [`cluster`], the pool spanning two zones: its vSwitch in local-1a and a second one
/// (`second_cidr`) in local-1b.
pub async fn cluster_two_zones(pool: &str, instance_type: &str, min: u32, max: u32, cidr: (&str, &str), second_cidr: &str) -> Cluster {
    start(pool, instance_type, (min, max), 600, cidr, false, &[], Some(second_cidr)).await
}

#[allow(clippy::too_many_arguments)]
async fn start(pool: &str, instance_type: &str, (min, max): (u32, u32), idle_secs: u64, cidr: (&str, &str), dual: bool, extra_agent_args: &[&str], second_cidr: Option<&str>) -> Cluster {
    let port = free_port();
    let tag = crate::unique("as");
    let runner_prefix = format!("{tag}{{instance_id}}-p");
    let url = url_of(port);
    let mut agent_args = vec!["--min-idle-ips", "1", "--max-idle-ips", "6", "--scheduler-endpoint", &url, "--report-secs", "1", "--pod-runner", "true", "--node-pool", pool, "--runner-netns-prefix", &runner_prefix, "--reconcile-secs", "2"];
    agent_args.extend_from_slice(extra_agent_args);
    let image = NodeImage::write(&agent_args);
    let lc = LocalCloud::start(LocalCloudOptions { image: Some(image.path.clone()), products_apart: true, ..Default::default() });
    let cloud = lc.client();
    let net = if dual { SampleNet::create_dual(&cloud, cidr.0, cidr.1).await } else { SampleNet::create(&cloud, cidr.0, cidr.1).await };
    net.open_to(&cloud, cidr.0).await;
    let mut vswitches = format!("{{ id = \"{}\", zone = \"local-1a\" }}", net.vsw);
    if let Some(second) = second_cidr {
        use berth_cloud::api::CreateVSwitchRequest;
        let vsw = cloud.create_vswitch(&CreateVSwitchRequest { vpc_id: net.vpc.clone(), zone_id: "local-1b".into(), cidr_block: second.into(), name: "b".into(), ..Default::default() }).await.expect("CreateVSwitch");
        vswitches.push_str(&format!(", {{ id = \"{vsw}\", zone = \"local-1b\" }}"));
    }
    if dual {
        net.open_to(&cloud, "::/0").await;
    }
    let config = format!(
        "[placement]\nlease_secs = 15\ntick_ms = 100\n\n\
         [autoscaler]\nenabled = true\npending_threshold_secs = 2\nscale_down_utilisation = 0.5\nscale_down_after_secs = {idle_secs}\nnode_boot_timeout_secs = 120\ninterval_ms = 250\n\n\
         [cloud]\nendpoint = \"{}\"\nvpc_endpoint = \"{}\"\nnas_endpoint = \"{}\"\nregion = \"local-1\"\ncredentials_file = \"{}\"\n\n\
         [[pool]]\nname = \"{pool}\"\ninstance_types = [\"{instance_type}\"]\nvswitches = [{vswitches}]\nsecurity_group_ids = [\"{}\"]\nmin_nodes = {min}\nmax_nodes = {max}\nimage_id = \"berth-node\"\n",
        lc.endpoint,
        lc.vpc_endpoint,
        lc.nas_endpoint,
        lc.dir.path().join("credentials.json").display(),
        net.sg,
    );
    let scheduler = Scheduler::start_on(port, &config, &[]);
    Cluster { tag, scheduler, lc, net, _image: image }
}

impl Cluster {
    /// The pool's instances in the cloud.
    pub async fn instances(&self) -> Vec<String> {
        let filter = InstanceFilter { vpc_id: Some(self.net.vpc.clone()), ..Default::default() };
        let mut ids: Vec<String> = self.lc.client().describe_instances(&filter).await.expect("DescribeInstances").into_iter().map(|i| i.id).collect();
        ids.sort();
        ids
    }

    pub fn logs(&self, ids: &[String]) -> String {
        let guests: Vec<String> = ids.iter().map(|id| format!("--- guest {id}\n{}", self.lc.guest_logs(id))).collect();
        format!("--- scheduler\n{}\n{}", self.scheduler.log(), guests.join("\n"))
    }
}

/// Nodes the scheduler has heard from (Ready), by instance ID; none while no replica leads yet
/// (UNAVAILABLE, as a freshly started or loaded cluster answers before its first election). Any
/// other error fails the test.
pub async fn ready_nodes(client: &mut SchedulerClient<Channel>) -> BTreeMap<String, pb::NodeReport> {
    let nodes = match crate::scheduler::list_nodes(client).await {
        Ok(nodes) => nodes,
        Err(s) if s.code() == tonic::Code::Unavailable => return BTreeMap::new(),
        Err(s) => panic!("ListNodes: {s}"),
    };
    nodes
        .into_iter()
        .filter(|n| n.state == "Ready")
        .filter_map(|n| {
            let r = n.last_report?;
            Some((r.identity.clone()?.instance_id, r))
        })
        .collect()
}

pub async fn pods(client: &mut SchedulerClient<Channel>) -> Vec<pb::PodStatus> {
    crate::scheduler::list_pods(client, "").await.expect("ListPods")
}

pub fn name(p: &pb::PodStatus) -> String {
    p.spec.as_ref().map(|s| s.name.clone()).unwrap_or_default()
}

pub fn is(p: &pb::PodStatus, phase: pb::PodPhase) -> bool {
    p.phase == phase as i32
}

/// Waits for `what` (checked every 250 ms) up to `timeout`; the cluster's logs on failure.
#[macro_export]
macro_rules! wait_for {
    ($c:expr, $timeout:expr, $what:expr, $check:expr) => {{
        let deadline = std::time::Instant::now() + $timeout;
        loop {
            if let Some(v) = $check {
                break v;
            }
            if std::time::Instant::now() > deadline {
                let ids = $c.instances().await;
                panic!("not within {:?}: {}\n{}", $timeout, $what, $c.logs(&ids));
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    }};
}

/// The namespace of the runner's pod with `ip` on `node`.
pub fn netns_of(c: &Cluster, node: &str, ip: &str) -> String {
    for ns in crate::scheduler::runner_netns(&format!("{}{node}-p", c.tag)) {
        let out = std::process::Command::new("ip").args(["-n", &ns, "-4", "-o", "addr"]).output().expect("ip addr");
        if String::from_utf8_lossy(&out.stdout).contains(&format!(" {ip}/")) {
            return ns;
        }
    }
    panic!("no namespace of {node} holds {ip}");
}

pub fn sleeper(name: &str) -> pb::PodSpec {
    pb::PodSpec { namespace: "default".into(), name: name.into(), cpu_millicores: 100, memory_bytes: 32 << 20, command: vec!["sleep".into(), "600".into()], ..Default::default() }
}


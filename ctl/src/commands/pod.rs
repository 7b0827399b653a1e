//! `berthctl pod add|del|list`: pods of the local cluster, each a network namespace wired by the
//! CNI plugins of its node's conflist, executed as a container runtime executes them.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use berth_cni::libcni::{self, Invocation};
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};

use crate::Output;
use crate::cluster::{self, ClusterPaths};
use crate::table::Table;

#[derive(Args)]
pub struct Pod {
    #[command(subcommand)]
    command: PodCommand,
    #[command(flatten)]
    paths: ClusterPaths,
}

#[derive(Subcommand)]
enum PodCommand {
    /// Make a pod: a network namespace, networked by the node's CNI config.
    Add {
        name: String,
        /// The instance to run it on; default: the node with the fewest pods.
        #[arg(long)]
        node: Option<String>,
        /// How the pod is networked: shared (a secondary IP of a pool ENI), exclusive (an ENI of
        /// its own) or trunk (a member ENI on the node's trunk).
        #[arg(long, default_value = "shared", value_parser = ["shared", "exclusive", "trunk"])]
        mode: String,
    },
    /// Delete a pod: CNI DEL, then its namespace.
    Del { name: String },
    /// The pods, their nodes and IPs.
    List,
}

/// What `pod add` made, kept for `pod del` (the ADD result is DEL's prevResult).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodRecord {
    pub name: String,
    pub node: String,
    pub netns: String,
    pub container_id: String,
    pub ip: String,
    pub result: serde_json::Value,
    #[serde(default = "shared")]
    pub mode: String,
}

fn shared() -> String {
    "shared".into()
}

impl Pod {
    pub async fn exec(self, output: Output) -> anyhow::Result<()> {
        let paths = &self.paths;
        match self.command {
            PodCommand::Add { name, node, mode } => {
                let node = match node {
                    Some(n) => n,
                    None => least_busy_node(paths)?,
                };
                let pod = add(paths, &name, &node, &mode)?;
                print(&[pod], output)
            }
            PodCommand::Del { name } => del(paths, &name),
            PodCommand::List => print(&list(paths), output),
        }
    }
}

fn record_path(paths: &ClusterPaths, name: &str) -> PathBuf {
    paths.pods_dir().join(format!("{name}.json"))
}

/// The plugins' directories: next to berthctl (where `berth` is built), then the usual ones.
fn cni_path() -> anyhow::Result<String> {
    let berth = cluster::sibling_binary("berth")?;
    Ok(format!("{}:/opt/cni/bin:/usr/lib/cni", berth.parent().map(|p| p.display().to_string()).unwrap_or_default()))
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 40 && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

pub fn list(paths: &ClusterPaths) -> Vec<PodRecord> {
    let mut pods: Vec<PodRecord> = std::fs::read_dir(paths.pods_dir()).into_iter().flatten().flatten().filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok()).collect();
    pods.sort_by(|a, b| a.name.cmp(&b.name));
    pods
}

fn least_busy_node(paths: &ClusterPaths) -> anyhow::Result<String> {
    let pods = list(paths);
    let nodes: Vec<String> = std::fs::read_dir(paths.run_dir.join("agents")).into_iter().flatten().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| paths.agent_conflist(n).exists()).collect();
    nodes.into_iter().min_by_key(|n| (pods.iter().filter(|p| &p.node == n).count(), n.clone())).context("no node has a ready agent; run `berthctl up` first")
}

pub fn add(paths: &ClusterPaths, name: &str, node: &str, mode: &str) -> anyhow::Result<PodRecord> {
    if !valid_name(name) {
        bail!("invalid pod name {name:?}: use up to 40 letters, digits and dashes");
    }
    if record_path(paths, name).exists() {
        bail!("pod {name} exists; delete it first with `berthctl pod del {name}`");
    }
    let conflist: serde_json::Value = serde_json::from_slice(&std::fs::read(paths.agent_conflist(node)).with_context(|| format!("node {node} has no CNI config: is its agent ready? (berthctl up)"))?)?;
    let netns_name = format!("{}-pod-{name}", paths.netns_prefix);
    berth_nodenet::Netns::create(&netns_name).with_context(|| format!("creating the pod's namespace {netns_name}"))?;
    let netns = format!("/run/netns/{netns_name}");
    let container_id = format!("pod-{name}");
    let args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={name};BERTH_NETWORK_MODE={mode}");
    let inv = Invocation { command: "ADD", container_id: &container_id, netns: &netns, ifname: "eth0", args: &args };
    let result = match libcni::add_list(Some(&paths.node_netns(node)), &cni_path()?, &conflist, &inv) {
        Ok(r) => r,
        Err(out) => {
            // A failed ADD is followed by DEL, as runtimes do; then the namespace goes.
            let _ = libcni::del_list(Some(&paths.node_netns(node)), &cni_path()?, &conflist, &Invocation { command: "DEL", ..inv.clone() }, None);
            let _ = berth_nodenet::Netns::delete(&netns_name);
            bail!("CNI ADD of pod {name} on {node} failed: {}{}", out.stdout, out.stderr);
        }
    };
    let ip = result["ips"][0]["address"].as_str().unwrap_or_default().split('/').next().unwrap_or_default().to_string();
    let pod = PodRecord { name: name.to_string(), node: node.to_string(), netns, container_id, ip, result, mode: mode.to_string() };
    std::fs::create_dir_all(paths.pods_dir())?;
    std::fs::write(record_path(paths, name), serde_json::to_vec_pretty(&pod)?)?;
    Ok(pod)
}

pub fn del(paths: &ClusterPaths, name: &str) -> anyhow::Result<()> {
    let pod: PodRecord = serde_json::from_slice(&std::fs::read(record_path(paths, name)).with_context(|| format!("no pod {name}"))?)?;
    let conflist: serde_json::Value = serde_json::from_slice(&std::fs::read(paths.agent_conflist(&pod.node)).with_context(|| format!("node {} has no CNI config", pod.node))?)?;
    let inv = Invocation { command: "DEL", container_id: &pod.container_id, netns: &pod.netns, ifname: "eth0", args: "" };
    if let Err(out) = libcni::del_list(Some(&paths.node_netns(&pod.node)), &cni_path()?, &conflist, &inv, Some(&pod.result)) {
        bail!("CNI DEL of pod {name} failed: {}{}", out.stdout, out.stderr);
    }
    let netns_name = pod.netns.trim_start_matches("/run/netns/");
    berth_nodenet::Netns::delete(netns_name).with_context(|| format!("deleting {}", pod.netns))?;
    std::fs::remove_file(record_path(paths, name))?;
    Ok(())
}

pub fn print(pods: &[PodRecord], output: Output) -> anyhow::Result<()> {
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(pods)?);
        return Ok(());
    }
    let mut t = Table::new("PODS", &["NAME", "NODE", "MODE", "IP", "NETNS"]);
    for p in pods {
        t.row(vec![p.name.clone(), p.node.clone(), p.mode.clone(), p.ip.clone(), p.netns.clone()]);
    }
    println!("{}", t.render());
    Ok(())
}

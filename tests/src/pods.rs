//! Pods made the way a runtime makes them: a namespace of their own and the agent's conflist
//! executed through libcni's rules, in the node's namespace.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use berth_nodenet::NetnsGuard;

use crate::agent::AgentProcess;
use crate::cni::{self, Invocation};
use crate::{LocalCloud, in_netns};

/// A pod: its namespace (removed on drop), its container ID, its IPv4 address and its CNI result.
pub struct Pod {
    pub netns: NetnsGuard,
    pub container_id: String,
    pub ip: Ipv4Addr,
    pub result: serde_json::Value,
}

impl Pod {
    /// The path of the pod's namespace, as CNI_NETNS names it.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.netns.name()))
    }
}

/// Three pings; whether one came back.
pub fn ping(from: &Path, to: Ipv4Addr) -> bool {
    in_netns(from, &["ping", "-c", "3", "-i", "0.2", "-W", "2", &to.to_string()]).0
}

/// The conflist the agent wrote.
pub fn conflist(agent: &AgentProcess) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(agent.conflist_path()).unwrap()).unwrap()
}

/// ADDs a pod with extra CNI_ARGS (`args`, e.g. `BERTH_NETWORK_MODE=trunk`); the CNI error on failure.
pub fn try_add_pod(agent: &AgentProcess, container_id: &str, args: &str) -> Result<Pod, String> {
    let netns = NetnsGuard::unique("bp").expect("pod namespace");
    let ns_path = format!("/run/netns/{}", netns.name());
    let args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={container_id}{}{args}", if args.is_empty() { "" } else { ";" });
    let inv = Invocation { command: "ADD", container_id, netns: &ns_path, ifname: "eth0", args: &args };
    let result = cni::add_list(Some(&agent.netns), &cni::cni_path(), &conflist(agent), &inv).map_err(|e| format!("ADD {container_id}: {e:?}"))?;
    let ip: Ipv4Addr = result["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap().parse().unwrap();
    Ok(Pod { netns, container_id: container_id.to_string(), ip, result })
}

/// ADDs a pod; panics with the agent's log on failure.
pub fn add_pod(agent: &AgentProcess, container_id: &str, args: &str) -> Pod {
    try_add_pod(agent, container_id, args).unwrap_or_else(|e| panic!("{e}\n{}", agent.log()))
}

/// ADDs `n` shared-mode pods `<tag>-0`….
pub fn add_pods(agent: &AgentProcess, tag: &str, n: usize) -> Vec<Pod> {
    (0..n).map(|i| add_pod(agent, &format!("{tag}-{i}"), "")).collect()
}

/// DELs a pod with its ADD's result as prevResult.
pub fn del_pod(agent: &AgentProcess, pod: &Pod) {
    let ns_path = format!("/run/netns/{}", pod.netns.name());
    let inv = Invocation { command: "DEL", container_id: &pod.container_id, netns: &ns_path, ifname: "eth0", args: "" };
    cni::del_list(Some(&agent.netns), &cni::cni_path(), &conflist(agent), &inv, Some(&pod.result)).unwrap_or_else(|e| panic!("DEL {}: {e:?}", pod.container_id));
}

/// `berthctl inspect` of one agent's node against the cloud: whether it found pods, pool, cloud
/// and node in agreement, and what it printed.
pub fn inspect(lc: &LocalCloud, agent: &AgentProcess) -> (bool, String) {
    let out = std::process::Command::new(crate::bin("berthctl"))
        .args(["inspect", "--agent", &agent.metrics_addr, "--cloud-endpoint", &lc.endpoint, "--credentials"])
        .arg(lc.dir.path().join("credentials.json"))
        .args(["--region", crate::REGION, "--grace-secs", "0", "--output", "json"])
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

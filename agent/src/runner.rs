//! The pod runner (ARCHITECTURE.md flow 5): where no kubelet runs, the agent realizes the pods the
//! scheduler binds to its node as a kubelet and a runtime would — a sandbox network namespace, the
//! conflist of the CNI config directory executed per the spec (so any plugin and chain works), the
//! pod's command started inside the namespace — and reports their status; removal in reverse order.
//! Volumes are not mounted yet, and a restarted agent makes its pods again (their old namespace's
//! network undone first) rather than adopting them. Off by default (`runner.enabled`): on a
//! Kubernetes node kubelet does this.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

use berth_cni::libcni::{self, Invocation};
use berth_proto::cluster::v1 as pb;

/// What the runner needs to know of the node.
#[derive(Debug, Clone)]
pub struct RunnerSettings {
    /// The node's namespace the plugins run in (None: this process's).
    pub node_netns: Option<PathBuf>,
    /// Where the conflist is (the first `*.conflist` by name is the pod network).
    pub cni_conf_dir: PathBuf,
    /// Where the plugins are (`CNI_PATH`).
    pub cni_path: String,
    /// Prefix of the pods' namespace names (unique per node).
    pub netns_prefix: String,
    pub node_name: String,
}

struct RunningPod {
    spec: pb::PodSpec,
    netns_name: String,
    container_id: String,
    result: Option<serde_json::Value>,
    ip: String,
    child: Option<Child>,
    phase: pb::PodPhase,
    message: String,
}

pub struct PodRunner {
    settings: RunnerSettings,
    pods: Mutex<BTreeMap<String, RunningPod>>,
}

/// `namespace/name`, the scheduler's key of a pod.
pub fn pod_key(spec: &pb::PodSpec) -> String {
    format!("{}/{}", spec.namespace, spec.name)
}

/// The CNI_ARGS a pod's spec asks for: its identity, network mode, own ENI's vSwitch and groups,
/// bandwidth (bits per second).
pub fn cni_args(spec: &pb::PodSpec) -> String {
    let mut args = vec!["IgnoreUnknown=1".to_string(), format!("K8S_POD_NAMESPACE={}", spec.namespace), format!("K8S_POD_NAME={}", spec.name)];
    let mode = match pb::NetworkMode::try_from(spec.network_mode).unwrap_or(pb::NetworkMode::Unspecified) {
        pb::NetworkMode::Exclusive => "exclusive",
        pb::NetworkMode::Trunk => "trunk",
        _ => "shared",
    };
    args.push(format!("BERTH_NETWORK_MODE={mode}"));
    if !spec.vswitch_id.is_empty() {
        args.push(format!("BERTH_VSWITCH_ID={}", spec.vswitch_id));
    }
    if !spec.security_group_ids.is_empty() {
        args.push(format!("BERTH_SECURITY_GROUP_IDS={}", spec.security_group_ids.join(",")));
    }
    if spec.ingress_bandwidth > 0 {
        args.push(format!("BERTH_INGRESS_BANDWIDTH={}", spec.ingress_bandwidth));
    }
    if spec.egress_bandwidth > 0 {
        args.push(format!("BERTH_EGRESS_BANDWIDTH={}", spec.egress_bandwidth));
    }
    args.join(";")
}

/// The pod's namespace name: the prefix and a stable hash of its key (names are ≤ 255 bytes,
/// but short ones read better in `ip netns`).
fn netns_name(prefix: &str, key: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{prefix}-{h:012x}")
}

fn first_conflist(dir: &Path) -> anyhow::Result<serde_json::Value> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "conflist")).collect();
    files.sort();
    let path = files.first().ok_or_else(|| anyhow::anyhow!("no *.conflist in {}: is the agent ready?", dir.display()))?;
    Ok(serde_json::from_slice(&std::fs::read(path)?)?)
}

impl PodRunner {
    pub fn new(settings: RunnerSettings) -> PodRunner {
        PodRunner { settings, pods: Mutex::new(BTreeMap::new()) }
    }

    fn pods(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, RunningPod>> {
        self.pods.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a pod unless it runs already. Blocking (CNI executions): call from a blocking thread.
    pub fn run(&self, spec: pb::PodSpec) {
        let key = pod_key(&spec);
        if self.pods().contains_key(&key) {
            return;
        }
        let netns_name = netns_name(&self.settings.netns_prefix, &key);
        let container_id = format!("berth-pod-{}", &netns_name[netns_name.len() - 12..]);
        let mut pod = RunningPod { spec: spec.clone(), netns_name, container_id, result: None, ip: String::new(), child: None, phase: pb::PodPhase::Pending, message: String::new() };
        match self.start(&mut pod) {
            Ok(()) => {
                pod.phase = pb::PodPhase::Running;
                tracing::info!(pod = %key, ip = %pod.ip, "pod running");
            }
            Err(e) => {
                pod.phase = pb::PodPhase::Failed;
                pod.message = format!("{e:#}");
                tracing::warn!(pod = %key, error = %pod.message, "pod failed to start");
                self.stop(&mut pod);
            }
        }
        self.pods().insert(key, pod);
    }

    fn start(&self, pod: &mut RunningPod) -> anyhow::Result<()> {
        // A namespace of this pod from before the agent's restart: its network is undone (CNI DEL
        // without a previous result) and it is made again; the runner keeps no pod across restarts.
        if berth_nodenet::Netns::open_named(&pod.netns_name).is_ok() {
            tracing::info!(pod = %pod_key(&pod.spec), "a namespace of this pod is left from before a restart; making it again");
            self.stop(pod);
        }
        berth_nodenet::Netns::create(&pod.netns_name).map_err(|e| anyhow::anyhow!("sandbox namespace {}: {e}", pod.netns_name))?;
        let conflist = first_conflist(&self.settings.cni_conf_dir)?;
        let netns = format!("/run/netns/{}", pod.netns_name);
        let args = cni_args(&pod.spec);
        let inv = Invocation { command: "ADD", container_id: &pod.container_id, netns: &netns, ifname: "eth0", args: &args };
        let result = libcni::add_list(self.settings.node_netns.as_deref(), &self.settings.cni_path, &conflist, &inv).map_err(|out| anyhow::anyhow!("CNI ADD failed: {}{}", out.stdout.trim(), out.stderr.trim()))?;
        pod.ip = result["ips"][0]["address"].as_str().unwrap_or_default().split('/').next().unwrap_or_default().to_string();
        pod.result = Some(result);
        if !pod.spec.command.is_empty() {
            let child = Command::new("nsenter")
                .arg(format!("--net={netns}"))
                .arg("--")
                .args(&pod.spec.command)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .map_err(|e| anyhow::anyhow!("starting {:?}: {e}", pod.spec.command))?;
            pod.child = Some(child);
        }
        Ok(())
    }

    /// Stops the command, CNI DEL with the ADD's result, deletes the namespace; each step tolerates
    /// what is already gone.
    fn stop(&self, pod: &mut RunningPod) {
        if let Some(mut child) = pod.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Ok(conflist) = first_conflist(&self.settings.cni_conf_dir) {
            let netns = format!("/run/netns/{}", pod.netns_name);
            let args = cni_args(&pod.spec);
            let inv = Invocation { command: "DEL", container_id: &pod.container_id, netns: &netns, ifname: "eth0", args: &args };
            if let Err(out) = libcni::del_list(self.settings.node_netns.as_deref(), &self.settings.cni_path, &conflist, &inv, pod.result.as_ref()) {
                tracing::warn!(pod = %pod_key(&pod.spec), error = %out.stdout.trim(), "CNI DEL failed");
            }
        }
        let _ = berth_nodenet::Netns::delete(&pod.netns_name);
    }

    /// Removes a pod (`namespace/name`); unknown is success. Blocking.
    pub fn remove(&self, key: &str) {
        let Some(mut pod) = self.pods().remove(key) else { return };
        self.stop(&mut pod);
        tracing::info!(pod = %key, "pod removed");
    }

    /// The pods and their status, for the capacity report.
    pub fn statuses(&self) -> Vec<pb::PodStatus> {
        let mut pods = self.pods();
        pods.values_mut()
            .map(|p| {
                // A command that ended: the pod succeeded or failed with it.
                if let Some(child) = p.child.as_mut()
                    && let Ok(Some(status)) = child.try_wait()
                {
                    p.phase = if status.success() { pb::PodPhase::Succeeded } else { pb::PodPhase::Failed };
                    p.message = format!("the command exited: {status}");
                    p.child = None;
                }
                pb::PodStatus { spec: Some(p.spec.clone()), phase: p.phase as i32, node: self.settings.node_name.clone(), pod_ip: p.ip.clone(), message: p.message.clone() }
            })
            .collect()
    }

    /// Stops every pod (the agent is shutting down its runner).
    pub fn stop_all(&self) {
        let keys: Vec<String> = self.pods().keys().cloned().collect();
        for k in keys {
            self.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cni_args_carry_the_spec() {
        let spec = pb::PodSpec { namespace: "default".into(), name: "web".into(), network_mode: pb::NetworkMode::Trunk as i32, security_group_ids: vec!["sg-1".into(), "sg-2".into()], egress_bandwidth: 20_000_000, ..Default::default() };
        let args = cni_args(&spec);
        assert_eq!(args, "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;BERTH_NETWORK_MODE=trunk;BERTH_SECURITY_GROUP_IDS=sg-1,sg-2;BERTH_EGRESS_BANDWIDTH=20000000");
        assert_eq!(netns_name("p", "default/web"), netns_name("p", "default/web"));
        assert_ne!(netns_name("p", "default/web"), netns_name("p", "default/db"));
    }
}

//! Guest images for `berth-localcloud serve --image`: what every Running instance of the local
//! cloud runs, as a VM runs its image. [`NodeImage`] makes each instance a Berth node (its agent,
//! then its CSI node service), the way an autoscaler's new VM boots; [`GuestLeftovers`] removes
//! what guests leave if a test fails before the local cloud stops them.
//!
//! ```no_run
//! # async fn demo(scheduler_url: &str) {
//! use berth_tests::guest::NodeImage;
//! use berth_tests::{LocalCloud, LocalCloudOptions};
//! let image = NodeImage::write(&["--scheduler-endpoint", scheduler_url, "--report-secs", "1", "--pod-runner", "true", "--node-pool", "small"]);
//! let lc = LocalCloud::start(LocalCloudOptions { image: Some(image.path.clone()), ..Default::default() });
//! // Every instance RunInstances makes (the autoscaler's too) now runs an agent reporting to the
//! // scheduler and a CSI node service; DeleteInstances stops them and removes their pods.
//! # }
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{LocalCloud, bin};

/// A guest image file in a directory of its own (removed when dropped, after the local cloud that
/// uses it: declare it before the [`LocalCloud`]).
pub struct NodeImage {
    pub path: PathBuf,
    pub dir: tempfile::TempDir,
}

/// The agent's flags a [`NodeImage`] passes unless `extra_agent_args` names the same flag.
fn agent_defaults(image_dir: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("--config", image_dir.join("agent.toml").display().to_string()),
        ("--node-netns", "{netns}".into()),
        ("--metadata-url", "{metadata_url}".into()),
        ("--cloud-endpoint", "{cloud_endpoint}".into()),
        ("--vpc-endpoint", "{vpc_endpoint}".into()),
        ("--nas-endpoint", "{nas_endpoint}".into()),
        ("--credentials", "{credentials}".into()),
        ("--socket", "{dir}/agent.sock".into()),
        ("--state-dir", "{dir}/agent-state".into()),
        ("--cni-conf-dir", "{dir}/net.d".into()),
        ("--release-queue-dir", "{dir}/release-queue".into()),
        // Every node's agent shares the machine's loopback: no fixed metrics port.
        ("--metrics-listen", String::new()),
        ("--runner-cni-path", crate::cni::cni_path()),
        ("--runner-netns-prefix", "{instance_id}-p".into()),
        // The pod runner's volumes go through the node's own CSI driver.
        ("--runner-csi-socket", "{dir}/csi.sock".into()),
    ]
    .into_iter()
    // The pods' cgroups under the image's own, removed with it.
    .chain(crate::agent::test_cgroup_root(image_dir).map(|root| ("--runner-cgroup-root", root.join("{instance_id}").display().to_string())))
    .collect()
}

fn csi_defaults(image_dir: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("--config", image_dir.join("csi.toml").display().to_string()),
        // Controller and node: the pod runner creates and publishes volumes through it (the
        // controller publishes to this node's agent).
        ("--mode", "all".into()),
        ("--endpoint", "unix://{dir}/csi.sock".into()),
        ("--state-dir", "{dir}/csi-state".into()),
        ("--cloud-endpoint", "{cloud_endpoint}".into()),
        ("--vpc-endpoint", "{vpc_endpoint}".into()),
        ("--nas-endpoint", "{nas_endpoint}".into()),
        ("--credentials", "{credentials}".into()),
        ("--agent-socket", "{dir}/agent.sock".into()),
        ("--nas-local-export-root", "{nas_export_root}".into()),
        ("--oss-endpoint", "{oss_endpoint}".into()),
    ]
}

/// `defaults` without the flags `extra` sets (the binaries refuse a flag given twice), then `extra`.
fn argv(program: &Path, defaults: Vec<(&'static str, String)>, extra: &[&str]) -> Vec<String> {
    let mut args = vec![program.display().to_string()];
    for (flag, value) in defaults {
        if !extra.contains(&flag) {
            args.extend([flag.to_string(), value]);
        }
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn toml_list(items: &[String]) -> String {
    format!("[{}]", items.iter().map(|s| serde_json::to_string(s).expect("a string")).collect::<Vec<_>>().join(", "))
}

impl Drop for NodeImage {
    fn drop(&mut self) {
        if let Some(root) = crate::agent::test_cgroup_root(self.dir.path())
            && let Err(e) = berth_nodenet::cgroup::Cgroup::at(root).remove()
        {
            eprintln!("{e}");
        }
    }
}

impl NodeImage {
    /// A Berth node: `berth-agent` for the instance (its namespace, the metadata service in it, the
    /// local cloud's API and credentials; socket, state, CNI config and release queue under the
    /// guest's directory `{dir}`; pod runner namespaces `{instance_id}-p…`), ready once it wrote
    /// `{dir}/net.d/10-berth.conflist`; then `berth-csi --mode all` on `{dir}/csi.sock` against
    /// that agent. `extra_agent_args` are added to the agent's flags (and replace a default flag
    /// they name), e.g. `--scheduler-endpoint URL --pod-runner true --node-pool NAME`.
    pub fn write(extra_agent_args: &[&str]) -> NodeImage {
        Self::write_with(extra_agent_args, &[])
    }

    /// Like [`NodeImage::write`], with extra flags for `berth-csi` as well.
    pub fn write_with(extra_agent_args: &[&str], extra_csi_args: &[&str]) -> NodeImage {
        let dir = tempfile::Builder::new().prefix("berth-image-").tempdir().expect("tempdir");
        // Explicit, empty config files: the binaries would otherwise read /etc/berth.
        std::fs::write(dir.path().join("agent.toml"), "").expect("agent.toml");
        std::fs::write(dir.path().join("csi.toml"), "").expect("csi.toml");
        let agent = argv(&bin("berth-agent"), agent_defaults(dir.path()), extra_agent_args);
        let csi = argv(&bin("berth-csi"), csi_defaults(dir.path()), extra_csi_args);
        // The runner's pods belong to the node: stopped and removed with it.
        let runner_prefix = agent.iter().position(|a| a == "--runner-netns-prefix").and_then(|i| agent.get(i + 1)).cloned().unwrap_or_default();
        let cleanup: Vec<String> = if runner_prefix.contains("{instance_id}") { vec![runner_prefix] } else { Vec::new() };
        let text = format!(
            "# A Berth node: written by berth_tests::guest::NodeImage.\n\
             stop_grace_secs = 10\n\n\
             [[service]]\nname = \"agent\"\ncommand = {}\nenv = {{ BERTH_LOG = \"info\" }}\nready_file = \"{{dir}}/net.d/10-berth.conflist\"\nready_timeout_secs = 120\n\n\
             [[service]]\nname = \"csi\"\ncommand = {}\nenv = {{ BERTH_LOG = \"info\" }}\nready_file = \"{{dir}}/csi.sock\"\n\n\
             [cleanup]\nnetns_prefixes = {}\n",
            toml_list(&agent),
            toml_list(&csi),
            toml_list(&cleanup),
        );
        let path = dir.path().join("node-image.toml");
        std::fs::write(&path, text).expect("node-image.toml");
        NodeImage { path, dir }
    }
}

impl LocalCloud {
    /// The private directory of an instance's guest, `<state-dir>/guests/<instance-id>` (as the
    /// local cloud resolves it: `{dir}` in an image).
    pub fn guest_dir(&self, instance_id: &str) -> PathBuf {
        std::fs::canonicalize(self.state_dir()).unwrap_or_else(|_| self.state_dir()).join("guests").join(instance_id)
    }

    /// Waits until `path` (e.g. under [`LocalCloud::guest_dir`]) exists; panics with the local
    /// cloud's log and the guest's logs after `timeout`.
    pub fn wait_for_guest_file(&self, instance_id: &str, path: &Path, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !path.exists() {
            assert!(Instant::now() < deadline, "{} did not appear in {timeout:?}\n{}", path.display(), self.guest_logs(instance_id));
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The local cloud's log and every `<service>.log` of a guest, for failure messages.
    pub fn guest_logs(&self, instance_id: &str) -> String {
        let mut text = format!("--- localcloud.log\n{}", self.log());
        for e in std::fs::read_dir(self.guest_dir(instance_id)).into_iter().flatten().flatten() {
            if e.path().extension().is_some_and(|x| x == "log") {
                text += &format!("--- {}\n{}", e.path().display(), std::fs::read_to_string(e.path()).unwrap_or_default());
            }
        }
        text
    }
}

/// Pids of processes whose environment carries `BERTH_GUEST_DIR=<dir>` (the local cloud marks
/// every guest service so; what the services start inherits it).
pub fn guest_processes(dir: &Path) -> Vec<i32> {
    let entry = format!("BERTH_GUEST_DIR={}", dir.display());
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == entry.as_bytes())))
        .collect()
}

/// Whether a process runs (exists and is not a zombie).
pub fn process_runs(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z')))
}

/// Removes, even when a test fails, what guests of a local cloud may have left: processes marked
/// with a guest directory under `<state-dir>/guests`, namespaces whose name contains `netns_tag`,
/// mounts under the guests' directories. Declare it after the [`LocalCloud`] (dropped first).
pub struct GuestLeftovers {
    pub guests_dir: PathBuf,
    pub netns_tag: String,
}

impl GuestLeftovers {
    pub fn new(lc: &LocalCloud, netns_tag: &str) -> GuestLeftovers {
        std::fs::create_dir_all(lc.state_dir()).expect("state dir");
        GuestLeftovers { guests_dir: lc.guest_dir("x").parent().expect("guests dir").to_path_buf(), netns_tag: netns_tag.to_string() }
    }
}

impl Drop for GuestLeftovers {
    fn drop(&mut self) {
        let marker = format!("BERTH_GUEST_DIR={}/", self.guests_dir.display());
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
            if std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| env.split(|b| *b == 0).any(|v| v.starts_with(marker.as_bytes()))) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
        }
        if !self.netns_tag.is_empty() {
            for e in std::fs::read_dir("/run/netns").into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.contains(&self.netns_tag) {
                    let pids = Command::new("ip").args(["netns", "pids", &name]).output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
                    for pid in pids.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
                        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
                    }
                    let _ = berth_nodenet::Netns::delete(&name);
                }
            }
        }
        drop(crate::csi::MountGuard(self.guests_dir.clone()));
    }
}

/// The services of a guest that run, by name, with their pids (from its `guest.json`).
pub fn recorded_pids(dir: &Path) -> Vec<(String, i32)> {
    let Ok(text) = std::fs::read_to_string(dir.join("guest.json")) else { return Vec::new() };
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    doc["services"].as_array().into_iter().flatten().filter(|s| s["finished"].is_null()).map(|s| (s["name"].as_str().unwrap_or_default().to_string(), s["pid"].as_i64().unwrap_or(0) as i32)).collect()
}

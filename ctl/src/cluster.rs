//! Where the local cluster lives on this machine, and how its local cloud process is started and
//! stopped.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use berth_cloud::{ClientConfig, HttpCloud};
use clap::Args;

pub const REGION: &str = "local-1";

/// Paths and names of one local cluster; flags so that tests can run one beside another.
#[derive(Args, Debug, Clone)]
pub struct ClusterPaths {
    /// Directory of the local cloud's state (resources, disk images, NAS exports).
    #[arg(long, env = "BERTH_STATE_DIR", default_value = "/var/lib/berth/localcloud")]
    pub state_dir: PathBuf,
    /// Directory of runtime files (pid file, logs).
    #[arg(long, env = "BERTH_RUN_DIR", default_value = "/run/berth")]
    pub run_dir: PathBuf,
    /// Prefix of every network namespace the local cloud makes.
    #[arg(long, env = "BERTH_NETNS_PREFIX", default_value = "berth")]
    pub netns_prefix: String,
    /// Loopback address the local cloud's API listens on.
    #[arg(long, env = "BERTH_LOCALCLOUD_LISTEN", default_value = "127.0.0.1:17380")]
    pub listen: String,
    /// The agents listen for metrics and introspection on loopback from this port up, one per node.
    #[arg(long, env = "BERTH_AGENT_PORT_BASE", default_value_t = 19480)]
    pub agent_port_base: u16,
}

impl ClusterPaths {
    pub fn credentials(&self) -> PathBuf {
        self.state_dir.join("credentials.json")
    }
    pub fn pid_file(&self) -> PathBuf {
        self.run_dir.join("localcloud.pid")
    }
    pub fn log_file(&self) -> PathBuf {
        self.run_dir.join("localcloud.log")
    }
    pub fn endpoint_file(&self) -> PathBuf {
        self.state_dir.join("endpoint")
    }
    /// Runtime files of the agent serving one instance: socket, CNI config, pid file, log.
    pub fn agent_run_dir(&self, instance_id: &str) -> PathBuf {
        self.run_dir.join("agents").join(instance_id)
    }
    /// Durable state of the agent serving one instance.
    pub fn agent_state_dir(&self, instance_id: &str) -> PathBuf {
        self.state_dir.join("agents").join(instance_id)
    }
    pub fn agent_conflist(&self, instance_id: &str) -> PathBuf {
        self.agent_run_dir(instance_id).join("net.d").join("10-berth.conflist")
    }
    /// The network namespace of an instance (a node of the cluster).
    pub fn node_netns(&self, instance_id: &str) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}-{instance_id}", self.netns_prefix))
    }
    /// Records of the pods `berthctl pod add` made.
    pub fn pods_dir(&self) -> PathBuf {
        self.run_dir.join("pods")
    }
}


/// A binary installed next to `berthctl`.
pub fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe().context("cannot find berthctl's own path")?;
    let path = me.with_file_name(name);
    if !path.exists() {
        bail!("{} is missing; build every binary with `cargo build --release --workspace --bins`", path.display());
    }
    Ok(path)
}

/// The pid of the running local cloud, if its pid file names a live process.
pub fn running_pid(paths: &ClusterPaths) -> Option<i32> {
    pid_in(&paths.pid_file())
}

/// Has the local cloud write fresh credentials (0600) unless they exist.
pub fn ensure_credentials(paths: &ClusterPaths) -> anyhow::Result<()> {
    let path = paths.credentials();
    if path.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(&paths.state_dir).with_context(|| format!("creating {}", paths.state_dir.display()))?;
    let status = Command::new(sibling_binary("berth-localcloud")?)
        .arg("init-credentials")
        .arg(&path)
        .stdout(Stdio::null())
        .status()
        .context("running berth-localcloud init-credentials")?;
    if !status.success() {
        bail!("berth-localcloud init-credentials {} failed ({status})", path.display());
    }
    Ok(())
}

/// Starts `berth-localcloud serve` in its own session, logging to the run directory, unless it runs.
pub fn start_localcloud(paths: &ClusterPaths) -> anyhow::Result<()> {
    if running_pid(paths).is_some() {
        return Ok(());
    }
    std::fs::create_dir_all(&paths.run_dir).with_context(|| format!("creating {}", paths.run_dir.display()))?;
    let _ = std::fs::remove_file(paths.endpoint_file());
    let log = std::fs::File::create(paths.log_file()).with_context(|| format!("creating {}", paths.log_file().display()))?;
    let mut cmd = Command::new(sibling_binary("berth-localcloud")?);
    cmd.arg("serve")
        .arg("--listen")
        .arg(&paths.listen)
        .arg("--state-dir")
        .arg(&paths.state_dir)
        .arg("--credentials")
        .arg(paths.credentials())
        .arg("--netns-prefix")
        .arg(&paths.netns_prefix)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0);
    let child = cmd.spawn().context("starting berth-localcloud")?;
    std::fs::write(paths.pid_file(), child.id().to_string())?;
    Ok(())
}

/// Waits until the local cloud has written its endpoint, and returns a client for it.
pub fn wait_for_endpoint(paths: &ClusterPaths, timeout: Duration) -> anyhow::Result<String> {
    let started = Instant::now();
    loop {
        if let Ok(s) = std::fs::read_to_string(paths.endpoint_file())
            && !s.trim().is_empty()
        {
            return Ok(s.trim().to_string());
        }
        if running_pid(paths).is_none() {
            let log = std::fs::read_to_string(paths.log_file()).unwrap_or_default();
            bail!("berth-localcloud stopped during start; its log ({}):\n{log}", paths.log_file().display());
        }
        if started.elapsed() > timeout {
            bail!("berth-localcloud did not answer within {timeout:?}; see {}", paths.log_file().display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn client(paths: &ClusterPaths, endpoint: &str) -> anyhow::Result<HttpCloud> {
    let creds = berth_cloud::client::load_credentials(&paths.credentials())?;
    Ok(HttpCloud::new(ClientConfig::new(endpoint, REGION, creds))?)
}

/// A client for the running local cloud, or a clear error saying how to start it.
pub fn connect(paths: &ClusterPaths) -> anyhow::Result<HttpCloud> {
    if running_pid(paths).is_none() {
        bail!("the local cloud is not running; start it with `berthctl up`");
    }
    let endpoint = std::fs::read_to_string(paths.endpoint_file()).context("reading the local cloud's endpoint file")?;
    client(paths, endpoint.trim())
}

/// Starts `berth-agent` for one instance (a simulated node) in its own session, unless it runs.
pub fn start_agent(paths: &ClusterPaths, endpoint: &str, instance_id: &str, index: usize) -> anyhow::Result<()> {
    let run = paths.agent_run_dir(instance_id);
    if pid_in(&run.join("agent.pid")).is_some() {
        return Ok(());
    }
    std::fs::create_dir_all(&run).with_context(|| format!("creating {}", run.display()))?;
    let _ = std::fs::remove_file(paths.agent_conflist(instance_id));
    let metrics = format!("127.0.0.1:{}", paths.agent_port_base + index as u16);
    std::fs::write(run.join("metrics"), &metrics)?;
    let log = std::fs::File::create(run.join("agent.log"))?;
    std::fs::write(run.join("agent.toml"), "# the local cluster passes everything as flags; see README.md for the keys\n")?;
    let state = paths.agent_state_dir(instance_id);
    let child = Command::new(sibling_binary("berth-agent")?)
        .arg("--config")
        .arg(run.join("agent.toml"))
        .arg("--node-netns")
        .arg(paths.node_netns(instance_id))
        .args(["--metadata-url", "http://127.0.0.1:8100/latest/meta-data", "--cloud-endpoint", endpoint])
        .arg("--credentials")
        .arg(paths.credentials())
        .arg("--socket")
        .arg(run.join("agent.sock"))
        .arg("--state-dir")
        .arg(state.join("state"))
        .arg("--release-queue-dir")
        .arg(state.join("release-queue"))
        .arg("--cni-conf-dir")
        .arg(run.join("net.d"))
        .args(["--metrics-listen", &metrics, "--min-idle-ips", "2", "--max-idle-ips", "8", "--cooldown-secs", "60", "--trunk", "true"])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting berth-agent")?;
    std::fs::write(run.join("agent.pid"), child.id().to_string())?;
    Ok(())
}

/// Waits until the agent of an instance is ready (its CNI config written).
pub fn wait_for_agent(paths: &ClusterPaths, instance_id: &str, timeout: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    let run = paths.agent_run_dir(instance_id);
    while !paths.agent_conflist(instance_id).exists() {
        if pid_in(&run.join("agent.pid")).is_none() {
            let log = std::fs::read_to_string(run.join("agent.log")).unwrap_or_default();
            bail!("berth-agent for {instance_id} stopped during start; its log:\n{log}");
        }
        if started.elapsed() > timeout {
            bail!("berth-agent for {instance_id} was not ready within {timeout:?}; see {}", run.join("agent.log").display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Stops every agent of the local cluster.
pub fn stop_agents(paths: &ClusterPaths) {
    for entry in std::fs::read_dir(paths.run_dir.join("agents")).into_iter().flatten().flatten() {
        stop_pid_file(&entry.path().join("agent.pid"));
    }
}

fn pid_in(file: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(file).ok()?.trim().parse().ok()?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).ok().map(|_| pid)
}

/// Stops the local cloud: SIGTERM, then SIGKILL after a grace period.
pub fn stop_localcloud(paths: &ClusterPaths) {
    stop_pid_file(&paths.pid_file());
}

/// SIGTERM to the process a pid file names, SIGKILL after a grace period; removes the file.
fn stop_pid_file(file: &Path) {
    use nix::sys::signal::{Signal, kill};
    let Some(pid) = pid_in(file) else {
        let _ = std::fs::remove_file(file);
        return;
    };
    let pid = nix::unistd::Pid::from_raw(pid);
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    while kill(pid, None).is_ok() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = kill(pid, Signal::SIGKILL);
    let _ = std::fs::remove_file(file);
}

pub fn remove_if_exists(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_dir_all(path).or_else(|e| if e.kind() == std::io::ErrorKind::NotADirectory { std::fs::remove_file(path) } else { Err(e) }) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

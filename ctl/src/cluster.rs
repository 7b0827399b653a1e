//! Where the local cluster lives on this machine, and how its processes (the local cloud, the
//! scheduler) are started and stopped. The nodes' software (agent, CSI driver) is not started here:
//! it is the node image every instance of the local cloud boots.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use berth_cloud::{ClientConfig, HttpCloud};
use berth_proto::cluster::v1::scheduler_client::SchedulerClient;
use clap::Args;
use tonic::transport::Channel;

pub const REGION: &str = "local-1";
/// The ImageId the local pool's nodes are created with (RunInstances needs one; the local cloud's
/// instances boot the node image `up` builds, whatever the ID).
pub const NODE_IMAGE_ID: &str = "berth-node";

/// Paths and names of one local cluster; flags so that tests can run one beside another.
#[derive(Args, Debug, Clone)]
pub struct ClusterPaths {
    /// Directory of the cluster's state (the local cloud's resources, disk images, NAS exports,
    /// OSS buckets, the nodes' guest directories; the scheduler's store under `scheduler/`).
    #[arg(long, global = true, env = "BERTH_STATE_DIR", default_value = "/var/lib/berth/localcloud")]
    pub state_dir: PathBuf,
    /// Directory of runtime files (pid files, logs, the node image, the scheduler's config).
    #[arg(long, global = true, env = "BERTH_RUN_DIR", default_value = "/run/berth")]
    pub run_dir: PathBuf,
    /// Prefix of every network namespace of the cluster (nodes `<prefix>-<instance>`, their pods
    /// `<prefix>-pod-<instance>-…`); at most 11 characters.
    #[arg(long, global = true, env = "BERTH_NETNS_PREFIX", default_value = "berth")]
    pub netns_prefix: String,
    /// Loopback address the local cloud's API listens on.
    #[arg(long, global = true, env = "BERTH_LOCALCLOUD_LISTEN", default_value = "127.0.0.1:17380")]
    pub listen: String,
    /// Loopback address of the local cloud's VPC API, apart from ECS's as on the real cloud.
    #[arg(long, global = true, env = "BERTH_VPC_LISTEN", default_value = "127.0.0.1:17381")]
    pub vpc_listen: String,
    /// Loopback address of the local cloud's NAS API.
    #[arg(long, global = true, env = "BERTH_NAS_LISTEN", default_value = "127.0.0.1:17382")]
    pub nas_listen: String,
    /// Loopback address the scheduler listens on (agents and berthctl reach it there).
    #[arg(long, global = true, env = "BERTH_SCHEDULER_LISTEN", default_value = "127.0.0.1:19470")]
    pub scheduler_listen: String,
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
    /// The node image every instance boots: agent and CSI driver (`berth-localcloud serve --image`).
    pub fn image_dir(&self) -> PathBuf {
        self.run_dir.join("node-image")
    }
    pub fn image_file(&self) -> PathBuf {
        self.image_dir().join("node-image.toml")
    }
    pub fn scheduler_config(&self) -> PathBuf {
        self.run_dir.join("scheduler.toml")
    }
    pub fn scheduler_pid_file(&self) -> PathBuf {
        self.run_dir.join("scheduler.pid")
    }
    pub fn scheduler_log_file(&self) -> PathBuf {
        self.run_dir.join("scheduler.log")
    }
    pub fn scheduler_state_dir(&self) -> PathBuf {
        self.state_dir.join("scheduler")
    }
    /// The scheduler replicas' URLs: those of `up --ha`'s layout, else `--scheduler-listen` (one
    /// address, or several comma-separated).
    pub fn scheduler_endpoints(&self) -> Vec<String> {
        match crate::ha::HaLayout::load(self) {
            Some(l) => berth_scheduler::client::endpoints(&l.schedulers.join(",")),
            None => berth_scheduler::client::endpoints(&self.scheduler_listen),
        }
    }
    /// The guest directory of an instance (its agent's socket and state, its CSI driver's), as the
    /// local cloud resolves `{dir}`.
    pub fn guest_dir(&self, instance_id: &str) -> PathBuf {
        std::fs::canonicalize(&self.state_dir).unwrap_or_else(|_| self.state_dir.clone()).join("guests").join(instance_id)
    }
    /// The network namespace of an instance (a node of the cluster).
    pub fn node_netns(&self, instance_id: &str) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}-{instance_id}", self.netns_prefix))
    }
    /// Prefix of the namespaces of the pods an instance runs (its runner's). Not
    /// `<prefix>-i-…`: the local cloud deletes such namespaces when no instance has the name.
    pub fn pod_netns_prefix(&self, instance_id: &str) -> String {
        format!("{}-pod-{instance_id}", self.netns_prefix)
    }
    /// The cgroup v2 directory the cluster's pods' cgroups go under, one directory per instance;
    /// `None` without cgroup v2.
    pub fn pod_cgroups(&self) -> Option<PathBuf> {
        berth_nodenet::cgroup::cgroup2_mount().map(|m| m.join(format!("{}-pods", self.netns_prefix)))
    }
    /// The local cloud's OSS directory of a bucket.
    pub fn bucket_dir(&self, bucket: &str) -> PathBuf {
        self.state_dir.join("oss").join(bucket)
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
        .arg("--vpc-listen")
        .arg(&paths.vpc_listen)
        .arg("--nas-listen")
        .arg(&paths.nas_listen)
        .arg("--state-dir")
        .arg(&paths.state_dir)
        .arg("--credentials")
        .arg(paths.credentials())
        .arg("--netns-prefix")
        .arg(&paths.netns_prefix)
        .arg("--image")
        .arg(paths.image_file())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0);
    let child = cmd.spawn().context("starting berth-localcloud")?;
    std::fs::write(paths.pid_file(), child.id().to_string())?;
    Ok(())
}

/// Where the running local cloud serves each product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub ecs: String,
    pub vpc: String,
    pub nas: String,
}

impl Endpoints {
    /// The URLs the local cloud wrote in its state directory; a product it serves with ECS (no
    /// file of its own, as a local cloud started before products listened apart) is at ECS's.
    fn read(paths: &ClusterPaths) -> Option<Endpoints> {
        let read = |file: &str| std::fs::read_to_string(paths.state_dir.join(file)).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
        let ecs = read("endpoint")?;
        let (vpc, nas) = (read("vpc-endpoint").unwrap_or_else(|| ecs.clone()), read("nas-endpoint").unwrap_or_else(|| ecs.clone()));
        Some(Endpoints { ecs, vpc, nas })
    }
}

/// Waits until the local cloud has written its endpoints, and returns them.
pub fn wait_for_endpoint(paths: &ClusterPaths, timeout: Duration) -> anyhow::Result<Endpoints> {
    let started = Instant::now();
    loop {
        if let Some(endpoints) = Endpoints::read(paths) {
            return Ok(endpoints);
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

pub fn client(paths: &ClusterPaths, endpoints: &Endpoints) -> anyhow::Result<HttpCloud> {
    let creds = berth_cloud::client::load_credentials(&paths.credentials())?;
    Ok(HttpCloud::new(ClientConfig::from_settings(&endpoints.ecs, &endpoints.vpc, &endpoints.nas, REGION, creds))?)
}

/// A client for the running local cloud, or a clear error saying how to start it.
pub fn connect(paths: &ClusterPaths) -> anyhow::Result<HttpCloud> {
    if running_pid(paths).is_none() {
        bail!("the local cloud is not running; start it with `berthctl up`");
    }
    let endpoints = Endpoints::read(paths).with_context(|| format!("the local cloud runs but has written no {}; see {}", paths.endpoint_file().display(), paths.log_file().display()))?;
    client(paths, &endpoints)
}

pub fn pid_in(file: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(file).ok()?.trim().parse().ok()?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).ok().map(|_| pid)
}

/// Stops the local cloud: SIGTERM, then SIGKILL after a grace period.
pub fn stop_localcloud(paths: &ClusterPaths) {
    stop_pid_file(&paths.pid_file());
}

/// The pid of the running scheduler, if its pid file names a live process.
pub fn scheduler_pid(paths: &ClusterPaths) -> Option<i32> {
    pid_in(&paths.scheduler_pid_file())
}

/// Whether the scheduler, or any replica of `up --ha`, runs.
pub fn scheduler_runs(paths: &ClusterPaths) -> bool {
    scheduler_pid(paths).is_some() || crate::ha::any_replica_runs(paths)
}

/// Starts `berth-scheduler` with the cluster's config in its own session, logging to the run
/// directory, unless it runs.
pub fn start_scheduler(paths: &ClusterPaths) -> anyhow::Result<()> {
    if scheduler_pid(paths).is_some() {
        return Ok(());
    }
    let log = std::fs::File::create(paths.scheduler_log_file()).with_context(|| format!("creating {}", paths.scheduler_log_file().display()))?;
    spawn_scheduler(&paths.scheduler_config(), &paths.scheduler_listen, &paths.scheduler_state_dir(), log, &paths.scheduler_pid_file())
}

/// Starts one `berth-scheduler` in its own session, logging to `log`, its metrics on a free port
/// (written to its state directory as metrics.address), its pid to `pid_file`. `up` and `up --ha`
/// both start theirs so.
pub fn spawn_scheduler(config: &std::path::Path, listen: &str, state_dir: &std::path::Path, log: std::fs::File, pid_file: &std::path::Path) -> anyhow::Result<()> {
    let child = Command::new(sibling_binary("berth-scheduler")?)
        .arg("--config")
        .arg(config)
        .arg("--listen")
        .arg(listen)
        .arg("--state-dir")
        .arg(state_dir)
        .arg("--metrics-listen")
        .arg("127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting berth-scheduler")?;
    std::fs::write(pid_file, child.id().to_string())?;
    Ok(())
}

/// A client of the scheduler replica that leads (`--scheduler-listen` may list several,
/// comma-separated), waiting up to `timeout` for one to lead.
pub async fn scheduler(paths: &ClusterPaths, timeout: Duration) -> anyhow::Result<SchedulerClient<Channel>> {
    let started = Instant::now();
    let endpoints = paths.scheduler_endpoints();
    loop {
        match berth_scheduler_client::connect_leader(&endpoints, Duration::from_millis(500)).await {
            // One pod's spec travels whole (GetPod, a page holding one large pod).
            Ok((_, channel)) => return Ok(SchedulerClient::new(channel).max_decoding_message_size(berth_scheduler_client::REPLY_LIMIT_BYTES)),
            Err(e) if started.elapsed() >= timeout => {
                let hint = if scheduler_runs(paths) { format!("see {}", paths.scheduler_log_file().display()) } else { "is the local cluster up? (berthctl up; --scheduler-listen or BERTH_SCHEDULER_LISTEN name another)".to_string() };
                bail!("cannot reach the scheduler at {}: {e}; {hint}", endpoints.join(","));
            }
            Err(_) => {}
        }
        if started.elapsed() > Duration::from_millis(200) && scheduler_pid(paths).is_none() && paths.scheduler_pid_file().exists() {
            let log = std::fs::read_to_string(paths.scheduler_log_file()).unwrap_or_default();
            bail!("berth-scheduler stopped during start; its log ({}):\n{log}", paths.scheduler_log_file().display());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Stops the scheduler: SIGTERM, then SIGKILL after a grace period.
pub fn stop_scheduler(paths: &ClusterPaths) {
    stop_pid_file(&paths.scheduler_pid_file());
}

/// SIGTERM to the process a pid file names, SIGKILL after a grace period; removes the file.
pub fn stop_pid_file(file: &Path) {
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

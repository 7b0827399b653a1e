//! A `berth-agent` process serving one local-cloud instance as its node, with its own socket,
//! state, CNI config and queue directories; killed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_proto::agent::v1::agent_client::AgentClient;
use tonic::transport::Channel;

use crate::{LocalCloud, bin};

pub struct AgentProcess {
    pub dir: tempfile::TempDir,
    pub instance_id: String,
    pub netns: PathBuf,
    pub metrics_addr: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    child: Option<Child>,
    /// How long the last start took until the CNI config appeared.
    pub last_ready: Duration,
    /// The cgroup the runner's pod cgroups go under (its own, removed with it); `None` without
    /// cgroup v2.
    pub pod_cgroups: Option<PathBuf>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

impl AgentProcess {
    /// Starts an agent for `instance_id` and waits until it is ready (its conflist written).
    pub fn start(lc: &LocalCloud, instance_id: &str, extra: &[&str]) -> AgentProcess {
        Self::start_with_env(lc, instance_id, extra, &[])
    }

    /// Like [`AgentProcess::start`], with extra environment variables.
    pub fn start_with_env(lc: &LocalCloud, instance_id: &str, extra: &[&str], env: &[(&str, &str)]) -> AgentProcess {
        let mut a = Self::prepare(lc, instance_id, extra, env);
        a.spawn();
        a
    }

    /// Starts an agent that is to stop by itself (e.g. refusing a setting) and waits for it, at
    /// most 60 s: its exit status and its log.
    pub fn exit_of(lc: &LocalCloud, instance_id: &str, extra: &[&str]) -> (std::process::ExitStatus, String) {
        let mut a = Self::prepare(lc, instance_id, extra, &[]);
        a.launch();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = a.child.as_mut().unwrap().try_wait().unwrap() {
                a.child = None;
                return (status, a.log());
            }
            assert!(Instant::now() < deadline, "berth-agent still runs after 60 s:\n{}", a.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn prepare(lc: &LocalCloud, instance_id: &str, extra: &[&str], env: &[(&str, &str)]) -> AgentProcess {
        let dir = tempfile::Builder::new().prefix("berth-agent-").tempdir().expect("tempdir");
        let netns = lc.instance_netns(instance_id);
        let metrics_addr = format!("127.0.0.1:{}", free_port());
        let mut args: Vec<String> = vec![
            "--config".into(),
            dir.path().join("agent.toml").display().to_string(),
            "--node-netns".into(),
            netns.display().to_string(),
            "--metadata-url".into(),
            "http://127.0.0.1:8100/latest/meta-data".into(),
            "--cloud-endpoint".into(),
            lc.endpoint.clone(),
            "--vpc-endpoint".into(),
            lc.vpc_endpoint.clone(),
            "--nas-endpoint".into(),
            lc.nas_endpoint.clone(),
            "--credentials".into(),
            lc.dir.path().join("credentials.json").display().to_string(),
            "--socket".into(),
            dir.path().join("agent.sock").display().to_string(),
            "--state-dir".into(),
            dir.path().join("state").display().to_string(),
            "--cni-conf-dir".into(),
            dir.path().join("net.d").display().to_string(),
            "--release-queue-dir".into(),
            dir.path().join("release-queue").display().to_string(),
            "--metrics-listen".into(),
            metrics_addr.clone(),
        ];
        let pod_cgroups = test_cgroup_root(dir.path());
        if let Some(root) = &pod_cgroups {
            args.extend(["--runner-cgroup-root".to_string(), root.display().to_string()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        std::fs::write(dir.path().join("agent.toml"), "").unwrap();
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        AgentProcess { dir, instance_id: instance_id.into(), netns, metrics_addr, args, env, child: None, last_ready: Duration::ZERO, pod_cgroups }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("agent.sock")
    }

    pub fn conflist_path(&self) -> PathBuf {
        self.dir.path().join("net.d").join("10-berth.conflist")
    }

    pub fn queue_dir(&self) -> PathBuf {
        self.dir.path().join("release-queue")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    fn launch(&mut self) {
        let _ = std::fs::remove_file(self.conflist_path());
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("agent.log")).unwrap();
        let child = Command::new(bin("berth-agent")).args(&self.args).envs(self.env.iter().map(|(k, v)| (k, v))).env("BERTH_LOG", "info").stdin(Stdio::null()).stdout(Stdio::null()).stderr(log).spawn().expect("start berth-agent");
        self.child = Some(child);
    }

    fn spawn(&mut self) {
        let started = Instant::now();
        self.launch();
        let deadline = started + Duration::from_secs(60);
        while !self.conflist_path().exists() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("berth-agent exited with {status}:\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "berth-agent not ready in 60 s:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(5));
        }
        self.last_ready = started.elapsed();
    }

    /// SIGKILL: no chance to tidy up.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The agent's introspection document (`/debug/pool`).
    pub async fn pool(&self) -> serde_json::Value {
        reqwest::get(format!("http://{}/debug/pool", self.metrics_addr)).await.expect("GET /debug/pool").json().await.expect("JSON")
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.metrics_addr)).await.expect("GET /metrics").text().await.expect("text")
    }

    /// Cloud API calls the agent made so far (its latency histogram's counts, all actions and outcomes).
    pub async fn cloud_calls(&self) -> u64 {
        self.metrics().await.lines().filter(|l| l.starts_with("berth_agent_cloud_call_seconds_count")).filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok()).sum()
    }

    pub async fn client(&self) -> AgentClient<Channel> {
        AgentClient::new(unix_channel(&self.socket()).await)
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill9();
        if let Some(root) = &self.pod_cgroups
            && let Err(e) = berth_nodenet::cgroup::Cgroup::at(root).remove()
        {
            eprintln!("{e}");
        }
    }
}

/// A cgroup directory of a test's own for an agent's (or a guest image's) pod cgroups, named
/// after `dir` (a unique temporary directory): `<cgroup2 mount>/berth-test-<dir name>`.
pub fn test_cgroup_root(dir: &Path) -> Option<PathBuf> {
    let name = dir.file_name()?.to_string_lossy().into_owned();
    berth_nodenet::cgroup::cgroup2_mount().map(|m| m.join(format!("berth-test-{name}")))
}

/// A gRPC channel over a unix socket.
pub async fn unix_channel(path: &Path) -> Channel {
    let socket = path.to_path_buf();
    tonic::transport::Endpoint::try_from("http://localhost")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move { Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(socket).await?)) }
        }))
        .await
        .expect("connect to the agent socket")
}

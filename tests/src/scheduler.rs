//! A `berth-scheduler` process for tests whose agents report to it, the pod runner's leftovers
//! guard, and waits on what the scheduler sees.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_proto::cluster::v1 as pb;
use berth_proto::cluster::v1::scheduler_client::SchedulerClient;
use tonic::transport::Channel;

use crate::bin;

/// A `berth-scheduler` process on a free loopback port with its own state (autoscaler off),
/// stopped when dropped.
pub struct Scheduler {
    child: Child,
    pub url: String,
    dir: tempfile::TempDir,
    port: u16,
    extra: Vec<String>,
    /// Where its `/metrics` is served.
    pub metrics_addr: String,
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The scheduler's URL on a loopback port.
pub fn url_of(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

impl Scheduler {
    /// The autoscaler off: placement only.
    pub fn start(extra: &[&str]) -> Scheduler {
        Self::start_on(free_port(), "[autoscaler]\nenabled = false\n", extra)
    }

    /// On `port` (agents may be told the URL before it listens: they reconnect), with `config` as
    /// its scheduler.toml (e.g. node pools and a shortened autoscaler).
    pub fn start_on(port: u16, config: &str, extra: &[&str]) -> Scheduler {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("scheduler.toml"), config).unwrap();
        let metrics_addr = format!("127.0.0.1:{}", free_port());
        let mut extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        extra.extend(["--metrics-listen".to_string(), metrics_addr.clone()]);
        let child = Self::spawn(dir.path(), port, &extra);
        Scheduler { child, url: url_of(port), dir, port, extra, metrics_addr }
    }

    fn spawn(dir: &std::path::Path, port: u16, extra: &[String]) -> Child {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("scheduler.log")).unwrap();
        Command::new(bin("berth-scheduler"))
            .arg("--config")
            .arg(dir.join("scheduler.toml"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(extra)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    /// SIGKILL, then the same scheduler again: same port, config and state.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Self::spawn(self.dir.path(), self.port, &self.extra);
    }

    /// SIGKILL (kill -9) and wait for it; `restart` brings it back.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Its `/metrics` text.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.metrics_addr)).await.expect("GET /metrics").text().await.expect("text")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("scheduler.log")).unwrap_or_default()
    }

    pub async fn client(&self) -> SchedulerClient<Channel> {
        let t = Instant::now();
        loop {
            if let Ok(c) = SchedulerClient::connect(self.url.clone()).await {
                return c;
            }
            assert!(t.elapsed() < Duration::from_secs(10), "berth-scheduler does not listen on {}", self.url);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Removes, even when a test fails, the pod runner's namespaces with these prefixes and the
/// commands that live in them (a runner's pods outlive an agent that is killed).
pub struct RunnerLeftovers(pub Vec<String>);

impl Drop for RunnerLeftovers {
    fn drop(&mut self) {
        for e in std::fs::read_dir("/run/netns").into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if self.0.iter().any(|p| name.starts_with(p.as_str())) {
                for pid in netns_pids(&name) {
                    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                }
                let _ = berth_nodenet::Netns::delete(&name);
            }
        }
    }
}

/// The processes inside a named network namespace.
pub fn netns_pids(name: &str) -> Vec<i32> {
    let out = Command::new("ip").args(["netns", "pids", name]).output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    out.split_whitespace().filter_map(|p| p.parse().ok()).collect()
}

/// The runner's namespaces with this prefix.
pub fn runner_netns(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/run/netns").into_iter().flatten().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.starts_with(prefix)).collect()
}

/// Every node the scheduler knows, following ListNodes' pages.
pub async fn list_nodes(client: &mut SchedulerClient<Channel>) -> Result<Vec<pb::NodeState>, tonic::Status> {
    let (mut all, mut page_token) = (Vec::new(), String::new());
    loop {
        let page = client.list_nodes(pb::ListNodesRequest { page_size: 0, page_token }).await?.into_inner();
        all.extend(page.nodes);
        if page.next_page_token.is_empty() {
            return Ok(all);
        }
        page_token = page.next_page_token;
    }
}

/// Every pod of `namespace` ("" for all), following ListPods' pages.
pub async fn list_pods(client: &mut SchedulerClient<Channel>, namespace: &str) -> Result<Vec<pb::PodStatus>, tonic::Status> {
    let (mut all, mut page_token) = (Vec::new(), String::new());
    loop {
        let page = client.list_pods(pb::ListPodsRequest { namespace: namespace.to_string(), page_size: 0, page_token }).await?.into_inner();
        all.extend(page.pods);
        if page.next_page_token.is_empty() {
            return Ok(all);
        }
        page_token = page.next_page_token;
    }
}

pub async fn node_state(client: &mut SchedulerClient<Channel>, instance: &str) -> Option<pb::NodeState> {
    let nodes = list_nodes(client).await.ok()?;
    nodes.into_iter().find(|n| n.last_report.as_ref().and_then(|r| r.identity.as_ref()).is_some_and(|i| i.instance_id == instance))
}

/// Waits until the node's last report satisfies `ok`; returns it.
pub async fn wait_report(client: &mut SchedulerClient<Channel>, instance: &str, what: &str, ok: impl Fn(&pb::NodeReport) -> bool) -> pb::NodeReport {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(r) = node_state(client, instance).await.and_then(|n| n.last_report)
            && ok(&r)
        {
            return r;
        }
        assert!(Instant::now() < deadline, "the scheduler never saw {what} for {instance}: {:?}", node_state(client, instance).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the pod `default/<name>` satisfies `ok` (within `timeout`); returns its status.
pub async fn wait_pod(client: &mut SchedulerClient<Channel>, name: &str, timeout: Duration, what: &str, ok: impl Fn(&pb::PodStatus) -> bool) -> pb::PodStatus {
    let deadline = Instant::now() + timeout;
    loop {
        let st = client.get_pod(pb::GetPodRequest { namespace: "default".into(), name: name.into() }).await.unwrap().into_inner();
        if ok(&st) {
            return st;
        }
        assert!(Instant::now() < deadline, "pod {name} never became {what}: {st:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

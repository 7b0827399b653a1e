//! The release `berth-scheduler` binary as the benchmarks over its real interface run it: found
//! beside the bench, its state in a directory on a disk, killed when dropped; and its `/metrics`.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use berth_proto::cluster::v1 as pb;
use berth_proto::cluster::v1::scheduler_client::SchedulerClient;

/// The scheduler binary: `BERTH_SCHEDULER_BIN`, else beside this bench (target/release/deps/…).
pub fn scheduler_binary() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("BERTH_SCHEDULER_BIN") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("BERTH_SCHEDULER_BIN={} is not a file", p.display());
        }
        return Ok(p);
    }
    let exe = std::env::current_exe().context("where is this bench")?;
    let release = exe.parent().and_then(Path::parent).context("the bench is not in a target directory")?;
    let p = release.join("berth-scheduler");
    if !p.is_file() {
        bail!("{} is missing: run `cargo build --release -p berth-scheduler` first (or set BERTH_SCHEDULER_BIN)", p.display());
    }
    Ok(p)
}

/// A directory on a disk for the scheduler's journal: fsync on tmpfs would measure nothing.
pub fn state_parent() -> anyhow::Result<(PathBuf, String)> {
    let dir = PathBuf::from(std::env::var("BERTH_LOAD_DIR").unwrap_or_else(|_| env!("CARGO_TARGET_TMPDIR").to_string()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = dir.canonicalize().with_context(|| format!("cannot resolve {}", dir.display()))?;
    let mount = berth_daemon::mountinfo::mounts().into_iter().filter(|m| dir.starts_with(&m.mount_point)).max_by_key(|m| m.mount_point.components().count());
    let fs = mount.map(|m| format!("{} ({})", m.fs_type, m.source)).unwrap_or_else(|| "unknown".into());
    if fs.starts_with("tmpfs") || fs.starts_with("ramfs") {
        bail!("{} is on {fs}: the journal's fsync would cost nothing; set BERTH_LOAD_DIR to a directory on a disk", dir.display());
    }
    Ok((dir, fs))
}

/// The scheduler process and its directory: killed and removed when dropped, panics included.
pub struct SchedulerProcess {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub url: String,
}

impl SchedulerProcess {
    /// Starts the scheduler with its state in a new directory of `parent`: on the journal there,
    /// or on the etcd members at `etcd` (client URLs).
    pub fn start(binary: &Path, dir: tempfile::TempDir, etcd: Option<&[String]>) -> anyhow::Result<SchedulerProcess> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut config = format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nadvertise = \"127.0.0.1:{port}\"\nstate_dir = \"{}\"\nmetrics_listen = \"127.0.0.1:0\"\n\n[autoscaler]\nenabled = false\n",
            dir.path().join("state").display()
        );
        if let Some(endpoints) = etcd {
            let quoted: Vec<String> = endpoints.iter().map(|e| format!("{e:?}")).collect();
            config.push_str(&format!("\n[store]\nkind = \"etcd\"\n\n[store.etcd]\nendpoints = [{}]\nprefix = \"/berth-load\"\n", quoted.join(", ")));
        }
        std::fs::write(dir.path().join("scheduler.toml"), config)?;
        // The scheduler writes metrics.address before its store makes the directory.
        std::fs::create_dir(dir.path().join("state"))?;
        let log = std::fs::File::create(dir.path().join("scheduler.log"))?;
        let child = Command::new(binary)
            .arg("--config")
            .arg(dir.path().join("scheduler.toml"))
            .env("BERTH_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        Ok(SchedulerProcess { child, dir, url: format!("http://127.0.0.1:{port}") })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("scheduler.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Waits until it answers ListNodes and has written its metrics address; returns the latter.
    pub async fn serving(&mut self) -> anyhow::Result<String> {
        let started = Instant::now();
        let address_file = self.dir.path().join("state/metrics.address");
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("berth-scheduler exited ({status}) before serving; its log:\n{}", self.log_tail());
            }
            if let Ok(mut c) = SchedulerClient::connect(self.url.clone()).await
                && c.list_nodes(pb::ListNodesRequest::default()).await.is_ok()
                && let Ok(a) = std::fs::read_to_string(&address_file)
                && !a.trim().is_empty()
            {
                return Ok(a.trim().to_string());
            }
            if started.elapsed() > Duration::from_secs(20) {
                bail!("berth-scheduler does not serve {} (and {}) after 20 s; its log:\n{}", self.url, address_file.display(), self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for SchedulerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `/metrics` of the scheduler, as (name with labels → value).
pub async fn scrape(address: &str) -> anyhow::Result<HashMap<String, f64>> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(address).await.with_context(|| format!("connecting to /metrics at {address}"))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: berth\r\nconnection: close\r\n\r\n").await?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).await?;
    let (head, body) = reply.split_once("\r\n\r\n").context("/metrics answered no body")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("GET http://{address}/metrics: {head}");
    }
    Ok(body.lines().filter(|l| !l.starts_with('#')).filter_map(|l| l.rsplit_once(' ')).filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?))).collect())
}


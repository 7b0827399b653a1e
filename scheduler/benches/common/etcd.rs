//! Three real etcd members (Debian's `etcd-server`, installed by `./run`) on free loopback ports,
//! their data in a directory of the caller's on a disk: the replicated store the load benchmark
//! runs the scheduler on in its `etcd` mode. Killed when dropped, panics included.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

pub struct EtcdTrio {
    children: Vec<Child>,
    client_ports: Vec<u16>,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl EtcdTrio {
    /// Starts the three members in `dir` and waits until they elected a leader.
    pub fn start(dir: &Path) -> anyhow::Result<EtcdTrio> {
        let ports: Vec<(u16, u16)> = (0..3).map(|_| Ok((free_port()?, free_port()?))).collect::<anyhow::Result<_>>()?;
        let initial_cluster = ports.iter().enumerate().map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}")).collect::<Vec<_>>().join(",");
        let token = format!("berth-load-{}", std::process::id());
        let mut trio = EtcdTrio { children: Vec::new(), client_ports: ports.iter().map(|p| p.0).collect() };
        for (i, (client, peer)) in ports.iter().enumerate() {
            let (client, peer) = (format!("http://127.0.0.1:{client}"), format!("http://127.0.0.1:{peer}"));
            let log = std::fs::File::create(dir.join(format!("etcd-m{i}.log")))?;
            let child = Command::new("etcd")
                .args(["--name", &format!("m{i}")])
                .arg("--data-dir")
                .arg(dir.join(format!("etcd-m{i}")))
                .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
                .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
                .args(["--initial-cluster", &initial_cluster, "--initial-cluster-token", &token, "--initial-cluster-state", "new"])
                .args(["--logger", "zap", "--log-level", "warn"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .context("cannot start etcd (Debian's etcd-server; ./run installs it)")?;
            trio.children.push(child);
        }
        let started = Instant::now();
        while !trio.healthy() {
            if started.elapsed() > Duration::from_secs(20) {
                bail!("etcd members on {} not healthy after 20 s; their logs are in {}", trio.endpoints().join(","), dir.display());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(trio)
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.client_ports.iter().map(|p| format!("http://127.0.0.1:{p}")).collect()
    }

    fn healthy(&self) -> bool {
        Command::new("etcdctl")
            .args(["--endpoints", &self.endpoints().join(","), "--command-timeout", "2s", "endpoint", "health"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for EtcdTrio {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

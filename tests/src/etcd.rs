//! Real etcd members (Debian's `etcd-server`) for the replicated store's tests: 1 or 3 members on
//! free loopback ports, data in a tempdir, a cluster token of their own, so clusters of tests run
//! side by side (never the host's default 127.0.0.1:2379). Killed and removed when dropped, also
//! when the test fails.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use berth_scheduler::store::etcd_member::{EtcdMember, etcd_binary, initial_cluster};

use crate::scheduler::free_port;
use crate::unique;

struct Member {
    etcd: EtcdMember,
    child: Option<Child>,
}

pub struct EtcdCluster {
    dir: tempfile::TempDir,
    token: String,
    members: Vec<Member>,
}

impl EtcdCluster {
    /// Starts `n` members and waits until every one is healthy (a leader elected).
    pub fn start(n: usize) -> EtcdCluster {
        let dir = tempfile::Builder::new().prefix("berth-etcd-").tempdir().expect("tempdir");
        let token = unique("berth-etcd-");
        let members = (0..n).map(|i| Member { etcd: EtcdMember::new(i, free_port(), free_port()), child: None }).collect();
        let mut cluster = EtcdCluster { dir, token, members };
        for i in 0..n {
            cluster.spawn(i);
        }
        cluster.wait_healthy(&(0..n).collect::<Vec<_>>(), Duration::from_secs(20));
        cluster
    }

    /// Client URLs of every member, as `store.etcd.endpoints`.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.etcd.client_url()).collect()
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("{}.log", self.members[i].etcd.name))
    }

    /// The logs of every member, for a failing assertion.
    pub fn logs(&self) -> String {
        (0..self.members.len()).map(|i| format!("== {}\n{}", self.members[i].etcd.name, std::fs::read_to_string(self.log_path(i)).unwrap_or_default())).collect()
    }

    fn spawn(&mut self, i: usize) {
        let members: Vec<EtcdMember> = self.members.iter().map(|m| m.etcd.clone()).collect();
        let etcd = etcd_binary().unwrap_or_else(|e| panic!("{e}"));
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path(i)).unwrap();
        let m = &members[i];
        let child = m.command(&etcd, &self.dir.path().join(&m.name), &initial_cluster(&members), &self.token).stderr(log).spawn().expect("start etcd");
        self.members[i].child = Some(child);
    }

    /// Whether a member answers `/health` with a leader elected.
    pub fn healthy(&self, i: usize) -> bool {
        self.members[i].etcd.healthy()
    }

    /// Waits until every listed member is healthy.
    pub fn wait_healthy(&self, members: &[usize], within: Duration) {
        let deadline = Instant::now() + within;
        while !members.iter().all(|&i| self.healthy(i)) {
            assert!(Instant::now() < deadline, "etcd members {members:?} not healthy within {within:?}:\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The index of the member that is the raft leader now (`etcdctl endpoint status`), if any
    /// running member knows one.
    pub fn raft_leader(&self) -> Option<usize> {
        let running: Vec<String> = (0..self.members.len()).filter(|&i| self.members[i].child.is_some()).map(|i| self.endpoints()[i].clone()).collect();
        let out = Command::new("etcdctl").args(["--endpoints", &running.join(","), "--command-timeout", "2s", "endpoint", "status", "-w", "json"]).output().ok()?;
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let statuses = doc.as_array()?;
        let leader = statuses.iter().find_map(|s| s["Status"]["leader"].as_u64().filter(|&l| l != 0))?;
        let endpoint = statuses.iter().find(|s| s["Status"]["header"]["member_id"].as_u64() == Some(leader))?["Endpoint"].as_str()?.to_string();
        self.endpoints().iter().position(|e| *e == endpoint)
    }

    /// SIGKILL: no chance to tidy up.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a killed member again on its data (and ports); does not wait for it.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

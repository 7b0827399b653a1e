//! Three real etcd members (Debian's `etcd-server`, installed by `./run`) on free loopback ports,
//! their data in a directory of the caller's on a disk: the replicated store the load benchmark
//! runs the scheduler on in its `etcd` mode. Killed when dropped, panics included.

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use berth_scheduler::store::etcd_member::{EtcdMember, etcd_binary, initial_cluster};

pub struct EtcdTrio {
    children: Vec<Child>,
    members: Vec<EtcdMember>,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl EtcdTrio {
    /// Starts the three members in `dir` and waits until they elected a leader.
    pub fn start(dir: &Path) -> anyhow::Result<EtcdTrio> {
        let members: Vec<EtcdMember> = (0..3).map(|i| Ok(EtcdMember::new(i, free_port()?, free_port()?))).collect::<anyhow::Result<_>>()?;
        let etcd = etcd_binary().map_err(|e| anyhow!(e))?;
        let initial = initial_cluster(&members);
        let token = format!("berth-load-{}", std::process::id());
        let mut trio = EtcdTrio { children: Vec::new(), members };
        for m in &trio.members {
            let log = std::fs::File::create(dir.join(format!("etcd-{}.log", m.name)))?;
            let child = m.command(&etcd, &dir.join(format!("etcd-{}", m.name)), &initial, &token).stderr(log).spawn().context("cannot start etcd")?;
            trio.children.push(child);
        }
        let started = Instant::now();
        while !trio.members.iter().all(EtcdMember::healthy) {
            if started.elapsed() > Duration::from_secs(20) {
                bail!("etcd members on {} not healthy after 20 s; their logs are in {}", trio.endpoints().join(","), dir.display());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(trio)
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(EtcdMember::client_url).collect()
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

//! The local cluster's replicated control plane (`berthctl up --ha`): three etcd members on
//! loopback (Debian's `/usr/bin/etcd`, data under the cluster's state directory) and three
//! `berth-scheduler` replicas on them; one leads, the others follow, and agents and `berthctl`
//! know all three. The layout (ports) is chosen once and kept in `<state-dir>/ha.json`, so `up`
//! run again, `status` and `down` find the same processes.

use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
pub use berth_scheduler::store::etcd_member::EtcdMember;
use berth_scheduler::store::etcd_member::{etcd_binary, initial_cluster};
use serde::{Deserialize, Serialize};

use crate::cluster::{self, ClusterPaths};

/// Members of etcd and scheduler replicas: three, so one of each may be lost.
pub const REPLICAS: usize = 3;
/// Where the schedulers keep their keys in etcd.
const PREFIX: &str = "/berth/local";

/// Which ports the replicated control plane uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaLayout {
    pub etcd: Vec<EtcdMember>,
    /// The scheduler replicas' listen (and advertised) addresses.
    pub schedulers: Vec<String>,
    /// etcd's cluster token: the members of this cluster only find each other.
    pub token: String,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0").context("finding a free loopback port")?.local_addr()?.port())
}

pub fn layout_file(paths: &ClusterPaths) -> PathBuf {
    paths.state_dir.join("ha.json")
}

impl HaLayout {
    /// The cluster's layout, if it is replicated.
    pub fn load(paths: &ClusterPaths) -> Option<HaLayout> {
        serde_json::from_str(&std::fs::read_to_string(layout_file(paths)).ok()?).ok()
    }

    /// The layout kept, or a new one: the schedulers on `--scheduler-listen` (three addresses,
    /// comma-separated, or one, the other two then on free ports), etcd on free ports.
    pub fn load_or_choose(paths: &ClusterPaths) -> anyhow::Result<HaLayout> {
        if let Some(l) = Self::load(paths) {
            return Ok(l);
        }
        let given: Vec<String> = paths.scheduler_listen.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect();
        let schedulers = match given.len() {
            REPLICAS => given,
            1 => {
                let mut s = given;
                for _ in 1..REPLICAS {
                    s.push(format!("127.0.0.1:{}", free_port()?));
                }
                s
            }
            n => bail!("--scheduler-listen lists {n} addresses; `up --ha` runs {REPLICAS} scheduler replicas: give one (the others take free ports) or {REPLICAS}"),
        };
        let mut etcd = Vec::new();
        for i in 0..REPLICAS {
            etcd.push(EtcdMember::new(i, free_port()?, free_port()?));
        }
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let token = format!("berth-{}-{now}", std::process::id());
        let layout = HaLayout { etcd, schedulers, token };
        std::fs::create_dir_all(&paths.state_dir).with_context(|| format!("creating {}", paths.state_dir.display()))?;
        std::fs::write(layout_file(paths), serde_json::to_string_pretty(&layout)?).with_context(|| format!("writing {}", layout_file(paths).display()))?;
        Ok(layout)
    }

    pub fn etcd_endpoints(&self) -> Vec<String> {
        self.etcd.iter().map(EtcdMember::client_url).collect()
    }
}

pub fn etcd_data_dir(paths: &ClusterPaths, i: usize) -> PathBuf {
    paths.state_dir.join("etcd").join(format!("m{i}"))
}
pub fn etcd_pid_file(paths: &ClusterPaths, i: usize) -> PathBuf {
    paths.run_dir.join(format!("etcd-{i}.pid"))
}
pub fn etcd_log_file(paths: &ClusterPaths, i: usize) -> PathBuf {
    paths.run_dir.join(format!("etcd-{i}.log"))
}
pub fn replica_config(paths: &ClusterPaths, i: usize) -> PathBuf {
    paths.run_dir.join(format!("scheduler-{i}.toml"))
}
pub fn replica_pid_file(paths: &ClusterPaths, i: usize) -> PathBuf {
    paths.run_dir.join(format!("scheduler-{i}.pid"))
}
pub fn replica_log_file(paths: &ClusterPaths, i: usize) -> PathBuf {
    paths.run_dir.join(format!("scheduler-{i}.log"))
}
pub fn replica_state_dir(paths: &ClusterPaths, i: usize) -> PathBuf {
    paths.state_dir.join(format!("scheduler-{i}"))
}

/// Every file of the replicated control plane in the run directory (for `down`).
pub fn run_files(paths: &ClusterPaths) -> Vec<PathBuf> {
    (0..REPLICAS).flat_map(|i| [etcd_pid_file(paths, i), etcd_log_file(paths, i), replica_config(paths, i), replica_pid_file(paths, i), replica_log_file(paths, i)]).collect()
}

/// Starts the members that do not run (each in its own session, logging to the run directory).
pub fn start_etcd(paths: &ClusterPaths, layout: &HaLayout) -> anyhow::Result<()> {
    let etcd = etcd_binary().map_err(|e| anyhow!("`up --ha` runs etcd: {e}"))?;
    let initial = initial_cluster(&layout.etcd);
    std::fs::create_dir_all(&paths.run_dir).with_context(|| format!("creating {}", paths.run_dir.display()))?;
    for (i, m) in layout.etcd.iter().enumerate() {
        if cluster::pid_in(&etcd_pid_file(paths, i)).is_some() {
            continue;
        }
        let data = etcd_data_dir(paths, i);
        std::fs::create_dir_all(data.parent().expect("under the state dir")).with_context(|| format!("creating {}", data.display()))?;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(etcd_log_file(paths, i)).with_context(|| format!("creating {}", etcd_log_file(paths, i).display()))?;
        let child = m.command(&etcd, &data, &initial, &layout.token).stdout(log.try_clone()?).stderr(log).process_group(0).spawn().with_context(|| format!("starting {}", etcd.display()))?;
        std::fs::write(etcd_pid_file(paths, i), child.id().to_string())?;
    }
    Ok(())
}

/// Waits until a quorum of members is healthy.
pub fn wait_etcd(paths: &ClusterPaths, layout: &HaLayout, timeout: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let healthy = layout.etcd.iter().filter(|m| m.healthy()).count();
        if healthy > REPLICAS / 2 {
            return Ok(());
        }
        if started.elapsed() > timeout {
            bail!("only {healthy} of the {REPLICAS} etcd members are healthy after {timeout:?}; see {}", etcd_log_file(paths, 0).display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Replica `i`'s config: the cluster's scheduler config on the etcd store, advertising its address.
pub fn replica_config_text(base: &str, layout: &HaLayout, i: usize) -> String {
    let endpoints: Vec<String> = layout.etcd_endpoints().iter().map(|e| format!("\"{e}\"")).collect();
    format!(
        "# Scheduler replica {i} of the local cluster (`berthctl up --ha`): one of {REPLICAS} on the same etcd.\n\
         [server]\nadvertise = \"{}\"\n\n\
         [store]\nkind = \"etcd\"\n\n\
         [store.etcd]\nendpoints = [{}]\nprefix = \"{PREFIX}\"\n\n{base}",
        layout.schedulers[i],
        endpoints.join(", "),
    )
}

/// Starts replica `i` unless it runs.
pub fn start_replica(paths: &ClusterPaths, layout: &HaLayout, i: usize) -> anyhow::Result<()> {
    if cluster::pid_in(&replica_pid_file(paths, i)).is_some() {
        return Ok(());
    }
    std::fs::create_dir_all(replica_state_dir(paths, i))?;
    let log = std::fs::OpenOptions::new().create(true).append(true).open(replica_log_file(paths, i)).with_context(|| format!("creating {}", replica_log_file(paths, i).display()))?;
    cluster::spawn_scheduler(&replica_config(paths, i), &layout.schedulers[i], &replica_state_dir(paths, i), log, &replica_pid_file(paths, i))
}

/// Stops the replicas (before etcd: they would log its loss), then the members.
pub fn stop(paths: &ClusterPaths) {
    for i in 0..REPLICAS {
        cluster::stop_pid_file(&replica_pid_file(paths, i));
    }
    for i in 0..REPLICAS {
        cluster::stop_pid_file(&etcd_pid_file(paths, i));
    }
}

/// Whether any replica runs.
pub fn any_replica_runs(paths: &ClusterPaths) -> bool {
    (0..REPLICAS).any(|i| cluster::pid_in(&replica_pid_file(paths, i)).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_config_is_valid_and_on_the_etcd_store() {
        let layout = HaLayout {
            etcd: (0..3).map(|i| EtcdMember::new(i, 3000 + i as u16, 4000 + i as u16)).collect(),
            schedulers: vec!["127.0.0.1:5000".into(), "127.0.0.1:5001".into(), "127.0.0.1:5002".into()],
            token: "t".into(),
        };
        let text = replica_config_text("[placement]\nstrategy = \"spread\"\n\n[autoscaler]\nenabled = false\n", &layout, 1);
        let c = berth_scheduler::config::SchedulerConfig::parse(&text, std::path::Path::new("x")).unwrap();
        c.validate().unwrap();
        assert_eq!(c.store.kind, berth_scheduler::config::StoreKind::Etcd);
        assert_eq!(c.store.etcd.endpoints, vec!["http://127.0.0.1:3000", "http://127.0.0.1:3001", "http://127.0.0.1:3002"]);
        assert_eq!(c.server.advertised(), "127.0.0.1:5001");
    }
}

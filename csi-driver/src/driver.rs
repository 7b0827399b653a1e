//! The driver's shared parts: its config, the cloud, the agents, the node it runs on, and the
//! per-volume in-flight marks that answer a concurrent call ABORTED.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use berth_cloud::HttpCloud;
use berth_proto::agent::v1 as agent;
use tokio::sync::OnceCell;
use tonic::Status;
use tonic::transport::{Channel, Endpoint};

use crate::config::CsiConfig;
use crate::oss::OssMounter;

/// Who the node is, from its agent (fixed for the process's life; slots are asked afresh).
#[derive(Debug, Clone)]
pub struct NodeFacts {
    pub instance_id: String,
    pub zone_id: String,
}

pub struct Driver {
    pub cfg: CsiConfig,
    pub cloud: Option<HttpCloud>,
    pub oss: OssMounter,
    node: OnceCell<NodeFacts>,
    in_flight: Mutex<HashSet<String>>,
}

/// Holds a volume's in-flight mark until dropped.
pub struct VolumeLock {
    driver: Arc<Driver>,
    key: String,
}

impl Drop for VolumeLock {
    fn drop(&mut self) {
        self.driver.in_flight.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.key);
    }
}

/// A gRPC channel over a unix socket, connected on first use.
pub fn unix_channel(path: &Path) -> Channel {
    let socket = path.to_path_buf();
    Endpoint::from_static("http://localhost").connect_with_connector_lazy(tower::service_fn(move |_| {
        let socket = socket.clone();
        async move { Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(socket).await?)) }
    }))
}

impl Driver {
    pub fn new(cfg: CsiConfig, cloud: Option<HttpCloud>, oss: OssMounter) -> Arc<Driver> {
        Arc::new(Driver { cfg, cloud, oss, node: OnceCell::new(), in_flight: Mutex::new(HashSet::new()) })
    }

    /// Marks the volume (or name) busy for the call, or answers ABORTED when another call holds it.
    pub fn lock(self: &Arc<Self>, what: &str, key: &str) -> Result<VolumeLock, Status> {
        let key = format!("{what}/{key}");
        if !self.in_flight.lock().unwrap_or_else(|p| p.into_inner()).insert(key.clone()) {
            return Err(Status::aborted(format!("an operation on {key} is in flight; retry when it is done")));
        }
        Ok(VolumeLock { driver: self.clone(), key })
    }

    pub fn cloud(&self) -> Result<&HttpCloud, Status> {
        self.cloud.as_ref().ok_or_else(|| Status::failed_precondition("this driver runs without the controller's cloud access (driver.mode = node)"))
    }

    pub fn local_agent(&self) -> agent::agent_client::AgentClient<Channel> {
        agent::agent_client::AgentClient::new(unix_channel(&self.cfg.agent.socket))
    }

    /// The agent of `node_id`: `<sockets_dir>/<node>.sock`, or this node's own agent.
    pub async fn agent_of(&self, node_id: &str) -> Result<agent::agent_client::AgentClient<Channel>, Status> {
        if !self.cfg.agent.sockets_dir.as_os_str().is_empty() && !node_id.contains('/') {
            let path: PathBuf = self.cfg.agent.sockets_dir.join(format!("{node_id}.sock"));
            if path.exists() {
                return Ok(agent::agent_client::AgentClient::new(unix_channel(&path)));
            }
        }
        match self.node().await {
            Ok(n) if n.instance_id == node_id => Ok(self.local_agent()),
            _ => Err(Status::not_found(format!(
                "node {node_id:?} is unknown: no agent socket {}/{node_id}.sock and it is not this node",
                self.cfg.agent.sockets_dir.display()
            ))),
        }
    }

    /// This node's identity, asked of its agent once.
    pub async fn node(&self) -> Result<NodeFacts, Status> {
        self.node
            .get_or_try_init(|| async {
                let s = self.local_agent().disk_slots(agent::DiskSlotsRequest {}).await.map_err(|e| Status::unavailable(format!("the node's agent at {} does not answer: {}", self.cfg.agent.socket.display(), e.message())))?.into_inner();
                Ok::<_, Status>(NodeFacts { instance_id: s.instance_id, zone_id: s.zone_id })
            })
            .await
            .cloned()
    }
}

impl Driver {
    /// Remounts the dead OSS mounts of this node, each under its volume's lock (a volume with a
    /// call in flight is left to the next round); returns how many were remounted.
    pub fn remount_dead_oss(self: &Arc<Self>) -> usize {
        let mut remounted = 0;
        for id in self.oss.dead_volumes() {
            let Ok(crate::volume::VolumeId::Oss { bucket, path }) = crate::volume::VolumeId::parse(&id) else { continue };
            let Ok(_lock) = self.lock("volume", &id) else { continue };
            match self.oss.ensure(&id, &bucket, &path) {
                Ok(_) => remounted += 1,
                Err(e) => tracing::warn!(volume = %id, error = %e, "remounting a dead OSS mount failed; retrying at the next check"),
            }
        }
        remounted
    }
}

/// The region of a zone (`cn-hangzhou-h` → `cn-hangzhou`, `local-1a` → `local-1`).
pub fn region_of_zone(zone: &str) -> String {
    let z = zone.trim_end_matches(|c: char| c.is_ascii_lowercase());
    z.trim_end_matches('-').to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn regions_of_zones() {
        assert_eq!(super::region_of_zone("local-1a"), "local-1");
        assert_eq!(super::region_of_zone("cn-hangzhou-h"), "cn-hangzhou");
    }
}

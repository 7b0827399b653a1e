//! `/etc/berth/scheduler.toml`: strict (an unknown key is an error naming it), every key with a
//! default; flags and environment variables override the file (see `main.rs`). README.md
//! documents every key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::autoscaler::{Expander, NodePool};
use crate::placement::Strategy;

pub const DEFAULT_PATH: &str = "/etc/berth/scheduler.toml";

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    pub server: ServerConfig,
    pub placement: PlacementConfig,
    pub autoscaler: AutoscalerConfig,
    pub cloud: CloudConfig,
    /// Node pools the autoscaler manages (`[[pool]]`).
    pub pool: Vec<NodePool>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// The gRPC address agents and berthctl reach.
    pub listen: String,
    /// Where the embedded store keeps its checkpoint and journal.
    pub state_dir: PathBuf,
    /// `/metrics` (Prometheus text) on this address; empty: not served.
    pub metrics_listen: String,
    /// The address other replicas send clients to while this one leads; empty: `listen`.
    pub advertise: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig { listen: "127.0.0.1:19470".into(), state_dir: "/var/lib/berth/scheduler".into(), metrics_listen: String::new(), advertise: String::new() }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlacementConfig {
    /// "bin-pack" (fullest node first) or "spread" (emptiest first).
    pub strategy: Strategy,
    /// Feasible nodes scored per decision, as a percentage of candidates; 0 is adaptive.
    pub percent_of_nodes_to_score: u32,
    /// A node that has not reported for this long is Unknown and its pods are rescheduled.
    pub lease_secs: u64,
    /// How often pending pods are retried and leases checked.
    pub tick_ms: u64,
}

impl Default for PlacementConfig {
    fn default() -> Self {
        PlacementConfig { strategy: Strategy::BinPack, percent_of_nodes_to_score: 0, lease_secs: 15, tick_ms: 200 }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AutoscalerConfig {
    /// Whether to create and delete nodes (needs `cloud.endpoint` and at least one pool).
    pub enabled: bool,
    /// "least-waste", "priority" or "price".
    pub expander: Expander,
    /// A pod pending this long asks for a node.
    pub pending_threshold_secs: u64,
    /// A node under this utilisation (its scarcest resource) is a removal candidate…
    pub scale_down_utilisation: f64,
    /// …once it has stayed under it this long.
    pub scale_down_after_secs: u64,
    /// A requested node that has not reported after this long is forgotten (and deleted).
    pub node_boot_timeout_secs: u64,
    /// How often the autoscaler plans.
    pub interval_ms: u64,
}

impl Default for AutoscalerConfig {
    fn default() -> Self {
        AutoscalerConfig { enabled: true, expander: Expander::LeastWaste, pending_threshold_secs: 10, scale_down_utilisation: 0.5, scale_down_after_secs: 600, node_boot_timeout_secs: 600, interval_ms: 1000 }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CloudConfig {
    /// The ECS API endpoint, e.g. http://127.0.0.1:17380 for the local cloud; empty: no autoscaling.
    pub endpoint: String,
    pub region: String,
    /// `access_key_id` and `access_key_secret` as TOML; refused unless mode 0600.
    pub credentials_file: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {reason}; pass --config with a readable file, or none for the defaults")]
    Read { path: PathBuf, reason: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{key} = {value:?} is not valid: {hint}")]
    Invalid { key: String, value: String, hint: &'static str },
}

impl SchedulerConfig {
    pub fn parse(text: &str, path: &Path) -> Result<SchedulerConfig, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse { path: path.to_path_buf(), message: e.to_string() })
    }

    /// Reads the file; a missing file at the default path means all defaults.
    pub fn load(path: &Path, explicit: bool) -> Result<SchedulerConfig, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => Ok(SchedulerConfig::default()),
            Err(reason) => Err(ConfigError::Read { path: path.to_path_buf(), reason }),
        }
    }

    /// Checks what serde cannot: values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, value: String, hint| Err(ConfigError::Invalid { key: key.to_string(), value, hint });
        if self.server.listen.parse::<SocketAddr>().is_err() {
            return invalid("server.listen", self.server.listen.clone(), "an address:port such as 127.0.0.1:19470");
        }
        if self.placement.lease_secs == 0 || self.placement.tick_ms == 0 || self.autoscaler.interval_ms == 0 {
            return invalid("placement.lease_secs", self.placement.lease_secs.to_string(), "lease_secs, tick_ms and autoscaler.interval_ms must be at least 1");
        }
        if self.placement.percent_of_nodes_to_score > 100 {
            return invalid("placement.percent_of_nodes_to_score", self.placement.percent_of_nodes_to_score.to_string(), "0 (adaptive) to 100");
        }
        if !(0.0..=1.0).contains(&self.autoscaler.scale_down_utilisation) {
            return invalid("autoscaler.scale_down_utilisation", self.autoscaler.scale_down_utilisation.to_string(), "between 0 and 1");
        }
        for (i, p) in self.pool.iter().enumerate() {
            if p.name.is_empty() || self.pool.iter().skip(i + 1).any(|q| q.name == p.name) {
                return invalid("pool.name", p.name.clone(), "every pool needs a unique, non-empty name");
            }
            if p.instance_types.is_empty() || p.vswitches.is_empty() {
                return invalid("pool.instance_types", p.name.clone(), "a pool needs at least one instance type and one vSwitch");
            }
            if let Some(t) = p.instance_types.iter().find(|t| berth_cloud::catalogue::instance_type(t).is_none()) {
                return invalid("pool.instance_types", t.clone(), "an instance type of the catalogue, e.g. ecs.g7.large");
            }
            if p.max_nodes < p.min_nodes {
                return invalid("pool.max_nodes", p.max_nodes.to_string(), "must be at least min_nodes");
            }
        }
        if self.autoscaler.enabled && !self.pool.is_empty() && self.cloud.endpoint.is_empty() {
            return invalid("cloud.endpoint", String::new(), "set the cloud API endpoint for the autoscaler, or autoscaler.enabled = false");
        }
        if self.autoscaler.enabled && !self.pool.is_empty() && self.cloud.region.is_empty() {
            return invalid("cloud.region", String::new(), "set the region the pools' vSwitches are in (local-1 on the local cloud)");
        }
        Ok(())
    }

    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.placement.lease_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example file shipped beside the binary is a valid config whose values are the defaults.
    #[test]
    fn the_example_file_is_the_defaults() {
        let text = include_str!("../scheduler.toml.example");
        let parsed = SchedulerConfig::parse(text, Path::new("scheduler.toml.example")).unwrap();
        assert_eq!(parsed, SchedulerConfig::default());
        parsed.validate().unwrap();
    }

    #[test]
    fn unknown_keys_are_refused_and_pools_parse() {
        let err = SchedulerConfig::parse("[placement]\nstrategy = \"bin-pack\"\nlease = 3\n", Path::new("x.toml")).unwrap_err();
        assert!(err.to_string().contains("lease"), "{err}");
        let c = SchedulerConfig::parse(
            r#"
[cloud]
endpoint = "http://127.0.0.1:17380"
region = "local-1"
[autoscaler]
expander = "price"
[[pool]]
name = "small"
instance_types = ["ecs.g7.large"]
vswitches = [{ id = "vsw-1", zone = "cn-local-a" }]
max_nodes = 4
capacity = "spot"
"#,
            Path::new("x.toml"),
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.autoscaler.expander, Expander::Price);
        assert_eq!(c.pool[0].disruption_budget, 1);
        let mut bad = c.clone();
        bad.pool[0].instance_types = vec!["ecs.nope".into()];
        assert!(bad.validate().unwrap_err().to_string().contains("ecs.nope"));
    }
}

//! `/etc/berth/csi.toml`: strict (an unknown key is an error naming it); flags and environment
//! variables override the file (see `main.rs`). README.md documents every key.

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub const DEFAULT_PATH: &str = "/etc/berth/csi.toml";

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CsiConfig {
    pub driver: DriverConfig,
    pub cloud: CloudConfig,
    pub agent: AgentConfig,
    pub nas: NasConfig,
    pub oss: OssConfig,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DriverConfig {
    /// The CSI driver name the CO knows it by.
    pub name: String,
    /// The gRPC socket (mode 0600).
    pub socket: PathBuf,
    /// `all`, `controller` or `node`: which services this process serves.
    pub mode: String,
    /// Per-node state: the OSS credentials file and the OSS FUSE mounts.
    pub state_dir: PathBuf,
    /// uids allowed on the socket (`SO_PEERCRED`); other peers are disconnected.
    pub allowed_uids: Vec<u32>,
    /// Where `/metrics` is served ("" for nowhere; port 0 takes a free port, written to the socket's
    /// path with the extension `.metrics`).
    pub metrics_listen: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CloudConfig {
    /// The ECS API endpoint; empty: `https://ecs.<region>.aliyuncs.com`.
    pub endpoint: String,
    /// The VPC (2016-04-28) API endpoint; empty: `endpoint` if set (the local cloud serving every
    /// product there), else `https://vpc.<region>.aliyuncs.com`.
    pub vpc_endpoint: String,
    /// The NAS (2017-06-26) API endpoint; empty: `endpoint` if set, else `https://nas.<region>.aliyuncs.com`.
    pub nas_endpoint: String,
    /// Empty: the node's zone without its last letter (local-1a → local-1).
    pub region: String,
    /// `access_key_id` and `access_key_secret`; refused unless mode 0600.
    pub credentials_file: PathBuf,
    /// Where the credentials come from: `file` (`credentials_file`) or `ram_role` (the
    /// instance's RAM role: STS credentials from the metadata service, refreshed before expiry).
    pub credentials_source: berth_cloud::credentials::SourceKind,
    /// The RAM role of the `ram_role` source; empty: the one role the instance has.
    pub ram_role: String,
    /// The instance metadata service the `ram_role` source asks.
    pub metadata_url: String,
    /// The request signature: `v3` (ACS3-HMAC-SHA256, the default) or `v1` (HMAC-SHA1).
    pub signature: berth_cloud::signing::Version,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// The agent of this node.
    pub socket: PathBuf,
    /// Where the controller reaches the agent of node N: `<sockets_dir>/<N>.sock`. Empty: the
    /// controller publishes only to its own node.
    pub sockets_dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NasConfig {
    /// Mount options of NFS (v3) on a real host.
    pub nfs_options: String,
    /// The local cloud only: its NAS export directory (`<state>/nas`); a NAS volume is then a
    /// bind mount of `<local_export_root>/<fs-id>/<path>` (this kernel has no NFS client).
    pub local_export_root: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OssConfig {
    /// The OSS (S3-compatible) endpoint URL s3fs talks to.
    pub endpoint: String,
    /// How often FUSE mounts are checked with statfs and remounted when dead.
    pub health_secs: u64,
}

impl Default for DriverConfig {
    fn default() -> Self {
        DriverConfig { name: "csi.berth.io".into(), socket: "/run/berth/csi.sock".into(), mode: "all".into(), state_dir: "/var/lib/berth/csi".into(), allowed_uids: vec![0], metrics_listen: String::new() }
    }
}

impl Default for CloudConfig {
    fn default() -> Self {
        CloudConfig { endpoint: String::new(), vpc_endpoint: String::new(), nas_endpoint: String::new(), region: String::new(), credentials_file: "/etc/berth/credentials".into(), credentials_source: Default::default(), ram_role: String::new(), metadata_url: berth_cloud::credentials::INSTANCE_METADATA_URL.into(), signature: Default::default() }
    }
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig { socket: "/run/berth/agent.sock".into(), sockets_dir: PathBuf::new() }
    }
}

impl Default for NasConfig {
    fn default() -> Self {
        NasConfig { nfs_options: "vers=3,nolock,proto=tcp,rsize=1048576,wsize=1048576,hard,timeo=600,retrans=2,noresvport".into(), local_export_root: PathBuf::new() }
    }
}

impl Default for OssConfig {
    fn default() -> Self {
        OssConfig { endpoint: String::new(), health_secs: 10 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {reason}; pass --config with a readable file, or none for the defaults")]
    Read { path: PathBuf, reason: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid {key} = {value:?}: {hint}")]
    Invalid { key: &'static str, value: String, hint: &'static str },
}

impl CsiConfig {
    pub fn parse(text: &str, path: &Path) -> Result<CsiConfig, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse { path: path.to_path_buf(), message: e.to_string() })
    }

    /// Reads the file; a missing file at the default path means all defaults.
    pub fn load(path: &Path, explicit: bool) -> Result<CsiConfig, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => Ok(CsiConfig::default()),
            Err(reason) => Err(ConfigError::Read { path: path.to_path_buf(), reason }),
        }
    }

    pub fn serves_controller(&self) -> bool {
        matches!(self.driver.mode.as_str(), "all" | "controller")
    }

    pub fn serves_node(&self) -> bool {
        matches!(self.driver.mode.as_str(), "all" | "node")
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, value: String, hint| Err(ConfigError::Invalid { key, value, hint });
        if !matches!(self.driver.mode.as_str(), "all" | "controller" | "node") {
            return invalid("driver.mode", self.driver.mode.clone(), "one of all, controller, node");
        }
        if self.driver.name.is_empty() || self.driver.name.len() > 63 {
            return invalid("driver.name", self.driver.name.clone(), "a DNS-style name of at most 63 characters");
        }
        if let Err((key, value)) = berth_cloud::endpoints::check_settings(&self.cloud.endpoint, &self.cloud.vpc_endpoint, &self.cloud.nas_endpoint) {
            return invalid(key, value.to_string(), berth_cloud::endpoints::SETTING_HINT);
        }
        if self.cloud.credentials_source == berth_cloud::credentials::SourceKind::RamRole && !self.oss.endpoint.is_empty() {
            return invalid("cloud.credentials_source", "ram_role".into(), "\"file\" while oss.endpoint is set: OSS volumes mount with a long-term key (s3fs does not refresh STS tokens)");
        }
        if !self.driver.metrics_listen.is_empty() && self.driver.metrics_listen.parse::<std::net::SocketAddr>().is_err() {
            return invalid("driver.metrics_listen", self.driver.metrics_listen.clone(), "an address:port such as 127.0.0.1:9481, or empty");
        }
        if self.oss.health_secs == 0 {
            return invalid("oss.health_secs", "0".into(), "at least 1");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped node bootstrap (user data for a pool) writes a config this driver takes.
    #[test]
    fn the_node_bootstrap_writes_a_valid_config() {
        let root = tempfile::tempdir().unwrap();
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/node-bootstrap.sh");
        let out = std::process::Command::new("sh").arg(&script).env("BERTH_ROOT", root.path()).env("BERTH_REGION", "cn-hangzhou").output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let path = root.path().join("etc/berth/csi.toml");
        let c = CsiConfig::parse(&std::fs::read_to_string(&path).unwrap(), &path).unwrap();
        c.validate().unwrap();
        assert_eq!(c.cloud.nas_endpoint, "https://nas.cn-hangzhou.aliyuncs.com");
    }

    #[test]
    fn unknown_keys_are_named_and_validation_names_the_value() {
        let e = CsiConfig::parse("[driver]\nsock = \"/x\"\n", Path::new("/etc/berth/csi.toml")).unwrap_err().to_string();
        assert!(e.contains("sock") && e.contains("/etc/berth/csi.toml"), "{e}");
        let c = CsiConfig::parse("[cloud]\nendpoint = \"http://127.0.0.1:1\"\n[driver]\nmode = \"both\"\n", Path::new("c.toml")).unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("driver.mode") && e.contains("both"), "{e}");
        let c = CsiConfig::parse("[cloud]\nendpoint = \"http://127.0.0.1:1\"\n[driver]\nmetrics_listen = \"localhost\"\n", Path::new("c.toml")).unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("driver.metrics_listen") && e.contains("localhost"), "{e}");
    }

    /// The example file shipped beside the binary is a valid config whose values are the defaults.
    #[test]
    fn the_example_file_is_the_defaults() {
        let text = include_str!("../csi.toml.example");
        let parsed = CsiConfig::parse(text, Path::new("csi.toml.example")).unwrap();
        assert_eq!(parsed, CsiConfig::default());
    }
}

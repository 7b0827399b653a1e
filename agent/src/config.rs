//! `/etc/berth/agent.toml`: strict (an unknown key is an error naming it), every key with a
//! default; flags and environment variables override the file
//! (see `main.rs`). README.md documents every key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::pool::PoolTargets;

pub const DEFAULT_PATH: &str = "/etc/berth/agent.toml";

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    pub node: NodeConfig,
    pub cloud: CloudConfig,
    pub pool: PoolConfig,
    pub api: ApiConfig,
    pub paths: PathsConfig,
    pub cni: CniConfig,
    pub disks: DisksConfig,
    pub scheduler: SchedulerConfig,
    pub runner: RunnerConfig,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunnerConfig {
    /// Run the pods the scheduler binds to this node (where no kubelet does).
    pub enabled: bool,
    /// Where the CNI plugins are (CNI_PATH).
    pub cni_path: String,
    /// Prefix of the pods' network namespace names.
    pub netns_prefix: String,
    /// The node's CSI driver socket the runner asks for pods' volumes; empty: pods with volumes fail.
    pub csi_socket: PathBuf,
    /// The cgroup v2 directory under which each pod gets a cgroup of its own (its CPU measured
    /// there, what it leaves killed with it); empty: `berth-pods` of the cgroup v2 mount.
    pub cgroup_root: PathBuf,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        RunnerConfig { enabled: false, cni_path: "/opt/cni/bin:/usr/lib/cni".into(), netns_prefix: "berth-pod".into(), csi_socket: "/run/berth/csi.sock".into(), cgroup_root: PathBuf::new() }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    /// The scheduler's gRPC URL (e.g. http://127.0.0.1:19470); empty: no capacity reports.
    pub endpoint: String,
    /// Seconds between reports (the scheduler's lease must be longer).
    pub report_secs: u64,
    /// The node pool this node belongs to, as the scheduler's config names it.
    pub pool: String,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig { endpoint: String::new(), report_secs: 5, pool: String::new() }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DisksConfig {
    /// How long a cloud disk may take to attach before it is detached again and the attach fails.
    pub attach_timeout_secs: u64,
}

impl Default for DisksConfig {
    fn default() -> Self {
        DisksConfig { attach_timeout_secs: 60 }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CniConfig {
    /// The network's name in the conflist.
    pub network_name: String,
    /// The conflist's cniVersion: 1.0.0 is what today's runtimes (podman 4, containerd 1.6) read;
    /// 1.1.0 lets a runtime that knows it call GC and STATUS.
    pub cni_version: String,
    /// MTU of pod interfaces.
    pub mtu: u32,
    /// Plugins chained after `berth` (e.g. "portmap", "bandwidth"); they must be in CNI_PATH.
    pub chain: Vec<String>,
    /// Where `berth` appends one JSON line per command (its trace ID, outcome, time); empty: none.
    pub log_file: PathBuf,
}

impl Default for CniConfig {
    fn default() -> Self {
        CniConfig { network_name: "berth".into(), cni_version: "1.0.0".into(), mtu: 1500, chain: Vec::new(), log_file: PathBuf::new() }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// The node's network namespace (a path, or a name under /run/netns); empty on a real VM.
    pub netns: String,
    /// Instance metadata, reached from inside the node's namespace.
    pub metadata_url: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CloudConfig {
    /// The ECS API endpoint, e.g. http://127.0.0.1:17380 for the local cloud; empty:
    /// `https://ecs.<region>.aliyuncs.com`.
    pub endpoint: String,
    /// The VPC (2016-04-28) API endpoint; empty: `endpoint` if set (the local cloud serving every
    /// product there), else `https://vpc.<region>.aliyuncs.com`.
    pub vpc_endpoint: String,
    /// The NAS (2017-06-26) API endpoint; empty: `endpoint` if set, else `https://nas.<region>.aliyuncs.com`.
    pub nas_endpoint: String,
    /// Empty: the region the instance metadata names.
    pub region: String,
    /// `access_key_id` and `access_key_secret` as TOML; refused unless mode 0600.
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
    /// Calls per second allowed for each API action (token bucket), and its burst.
    pub rate_per_second: f64,
    pub burst: u32,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    /// Idle IPs kept ready beyond current demand (the warm IP target).
    pub min_idle_ips: u32,
    /// Idle IPs above this are given back to the cloud after the cool-down.
    pub max_idle_ips: u32,
    /// How long the pool keeps surplus after it last grew or served.
    pub cooldown_secs: u64,
    /// No growing for this long after a quota or vSwitch-exhaustion error.
    pub inhibit_secs: u64,
    /// vSwitches for new ENIs; empty: the node's own vSwitch.
    pub vswitch_ids: Vec<String>,
    /// Security groups for new ENIs; empty: those of the node's primary ENI.
    pub security_group_ids: Vec<String>,
    /// How long an ADD waits for the pool to grow before answering "try again".
    pub allocate_timeout_secs: u64,
    /// How long an ENI may take to attach.
    pub attach_timeout_secs: u64,
    /// Serve trunk mode: a trunk ENI on the node (taking one ENI slot) with member ENIs per pod.
    pub trunk: bool,
    /// Exclusive ENIs kept attached for pods without a vSwitch or groups of their own (each takes
    /// an ENI slot).
    pub warm_exclusive_enis: u32,
    /// Member ENIs kept bound to the trunk for such pods.
    pub warm_member_enis: u32,
    /// `ipv4`, or `dual`: every pod also gets an IPv6 address from its ENI.
    pub ip_stack: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// The gRPC socket the CNI plugin calls (mode 0600).
    pub socket: PathBuf,
    /// Peers (by uid) allowed on the socket.
    pub allowed_uids: Vec<u32>,
    /// Prometheus metrics (/metrics) and introspection (/debug/pool); empty to disable. The
    /// address bound (port 0: any free one) is written to the socket's path with `.metrics`.
    pub metrics_listen: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PathsConfig {
    /// Durable state (journal and checkpoint).
    pub state_dir: PathBuf,
    /// Where the CNI config is written once the agent is ready.
    pub cni_conf_dir: PathBuf,
    /// Releases the plugin queued while the agent was down.
    pub release_queue_dir: PathBuf,
    /// Reconcile with the cloud and the node this often.
    pub reconcile_secs: u64,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig { netns: String::new(), metadata_url: "http://100.100.100.200/latest/meta-data".into() }
    }
}

impl Default for CloudConfig {
    fn default() -> Self {
        CloudConfig { endpoint: String::new(), vpc_endpoint: String::new(), nas_endpoint: String::new(), region: String::new(), credentials_file: "/etc/berth/credentials".into(), credentials_source: Default::default(), ram_role: String::new(), metadata_url: berth_cloud::credentials::INSTANCE_METADATA_URL.into(), signature: Default::default(), rate_per_second: 10.0, burst: 20 }
    }
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            min_idle_ips: 4,
            max_idle_ips: 16,
            cooldown_secs: 300,
            inhibit_secs: 60,
            vswitch_ids: Vec::new(),
            security_group_ids: Vec::new(),
            allocate_timeout_secs: 20,
            attach_timeout_secs: 60,
            trunk: false,
            warm_exclusive_enis: 0,
            warm_member_enis: 0,
            ip_stack: "ipv4".into(),
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig { socket: "/run/berth/agent.sock".into(), allowed_uids: vec![0], metrics_listen: "127.0.0.1:9480".into() }
    }
}

impl Default for PathsConfig {
    fn default() -> Self {
        PathsConfig {
            state_dir: "/var/lib/berth/agent".into(),
            cni_conf_dir: "/etc/cni/net.d".into(),
            release_queue_dir: "/var/lib/berth/release-queue".into(),
            reconcile_secs: 60,
        }
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

impl AgentConfig {
    pub fn parse(text: &str, path: &Path) -> Result<AgentConfig, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse { path: path.to_path_buf(), message: e.to_string() })
    }

    /// Reads the file; a missing file at the default path means all defaults.
    pub fn load(path: &Path, explicit: bool) -> Result<AgentConfig, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => Ok(AgentConfig::default()),
            Err(reason) => Err(ConfigError::Read { path: path.to_path_buf(), reason }),
        }
    }

    /// Checks what serde cannot: values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, value: String, hint| Err(ConfigError::Invalid { key, value, hint });
        if let Err((key, value)) = berth_cloud::endpoints::check_settings(&self.cloud.endpoint, &self.cloud.vpc_endpoint, &self.cloud.nas_endpoint) {
            return invalid(key, value.to_string(), berth_cloud::endpoints::SETTING_HINT);
        }
        if !self.node.metadata_url.starts_with("http://") {
            return invalid("node.metadata_url", self.node.metadata_url.clone(), "an http:// URL ending in /latest/meta-data");
        }
        if self.pool.max_idle_ips < self.pool.min_idle_ips {
            return invalid("pool.max_idle_ips", self.pool.max_idle_ips.to_string(), "must be at least pool.min_idle_ips");
        }
        if self.cloud.rate_per_second.is_nan() || self.cloud.rate_per_second <= 0.0 || self.cloud.burst == 0 {
            return invalid("cloud.rate_per_second", self.cloud.rate_per_second.to_string(), "a positive rate and a burst of at least 1");
        }
        if !self.api.metrics_listen.is_empty() && self.api.metrics_listen.parse::<SocketAddr>().is_err() {
            return invalid("api.metrics_listen", self.api.metrics_listen.clone(), "an address:port such as 127.0.0.1:9480, or empty");
        }
        if !["0.3.1", "0.4.0", "1.0.0", "1.1.0"].contains(&self.cni.cni_version.as_str()) {
            return invalid("cni.cni_version", self.cni.cni_version.clone(), "one of 0.3.1, 0.4.0, 1.0.0, 1.1.0");
        }
        if !(576..=65535).contains(&self.cni.mtu) {
            return invalid("cni.mtu", self.cni.mtu.to_string(), "between 576 and 65535");
        }
        if !["ipv4", "dual"].contains(&self.pool.ip_stack.as_str()) {
            return invalid("pool.ip_stack", self.pool.ip_stack.clone(), "ipv4, or dual for IPv4 and IPv6 (the vSwitches need IPv6 blocks)");
        }
        if self.disks.attach_timeout_secs == 0 {
            return invalid("disks.attach_timeout_secs", "0".into(), "at least 1");
        }
        let endpoint = &self.scheduler.endpoint;
        if !(endpoint.is_empty() || endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return invalid("scheduler.endpoint", self.scheduler.endpoint.clone(), "an http:// URL such as http://127.0.0.1:19470, or empty for no reports");
        }
        if self.scheduler.report_secs == 0 {
            return invalid("scheduler.report_secs", "0".into(), "at least 1");
        }
        let csi = &self.runner.csi_socket;
        if !(csi.as_os_str().is_empty() || csi.is_absolute()) {
            return invalid("runner.csi_socket", csi.display().to_string(), "an absolute path such as /run/berth/csi.sock (the CSI driver's socket), or empty for no volumes");
        }
        let cg = &self.runner.cgroup_root;
        if !cg.as_os_str().is_empty() && !cg.is_absolute() {
            return invalid("runner.cgroup_root", cg.display().to_string(), "an absolute path inside the cgroup v2 mount such as /sys/fs/cgroup/berth-pods, or empty for that default");
        }
        let prefix = &self.runner.netns_prefix;
        if prefix.is_empty() || prefix.len() > 32 || !prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return invalid("runner.netns_prefix", prefix.clone(), "1 to 32 letters, digits, '-' or '_'");
        }
        if self.paths.reconcile_secs == 0 {
            return invalid("paths.reconcile_secs", "0".into(), "at least 1");
        }
        Ok(())
    }

    pub fn targets(&self) -> PoolTargets {
        PoolTargets { min_idle: self.pool.min_idle_ips, max_idle: self.pool.max_idle_ips }
    }

    pub fn cooldown(&self) -> Duration {
        Duration::from_secs(self.pool.cooldown_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_named() {
        let e = AgentConfig::parse("[pool]\nmin_idle = 3\n", Path::new("/etc/berth/agent.toml")).unwrap_err().to_string();
        assert!(e.contains("min_idle"), "{e}");
        assert!(e.contains("/etc/berth/agent.toml"), "{e}");
    }

    #[test]
    fn defaults_fill_the_rest_and_validation_names_the_value() {
        let c = AgentConfig::parse("[cloud]\nendpoint = \"http://127.0.0.1:1\"\n[pool]\nmin_idle_ips = 8\nmax_idle_ips = 2\n", Path::new("a.toml")).unwrap();
        assert_eq!(c.api.socket, PathBuf::from("/run/berth/agent.sock"));
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("pool.max_idle_ips") && e.contains("\"2\""), "{e}");
        // No endpoint: the region's public ones.
        AgentConfig::default().validate().unwrap();
        let c = AgentConfig::parse("[cloud]\nvpc_endpoint = \"vpc.cn-hangzhou.aliyuncs.com\"\n", Path::new("a.toml")).unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("cloud.vpc_endpoint") && e.contains("vpc.cn-hangzhou.aliyuncs.com"), "{e}");
        let c = AgentConfig::parse("[cloud]\nendpoint = \"http://127.0.0.1:1\"\n[runner]\ncsi_socket = \"run/csi.sock\"\n", Path::new("a.toml")).unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("runner.csi_socket") && e.contains("run/csi.sock"), "{e}");
        let c = AgentConfig::parse("[cloud]\nendpoint = \"http://127.0.0.1:1\"\n[runner]\ncsi_socket = \"\"\n", Path::new("a.toml")).unwrap();
        c.validate().unwrap();
    }

    #[test]
    fn the_credential_source_and_signature_are_named_when_bad() {
        let e = AgentConfig::parse("[cloud]\ncredentials_source = \"metadata\"\n", Path::new("a.toml")).unwrap_err().to_string();
        assert!(e.contains("credentials_source") && e.contains("ram_role"), "{e}");
        let e = AgentConfig::parse("[cloud]\nsignature = \"v2\"\n", Path::new("a.toml")).unwrap_err().to_string();
        assert!(e.contains("signature") && e.contains("v3"), "{e}");
        let c = AgentConfig::parse("[cloud]\ncredentials_source = \"ram_role\"\nsignature = \"v1\"\n", Path::new("a.toml")).unwrap();
        assert_eq!((c.cloud.credentials_source, c.cloud.signature), (berth_cloud::credentials::SourceKind::RamRole, berth_cloud::signing::Version::V1));
    }
}

#[cfg(test)]
mod example {
    use super::*;

    /// The shipped node bootstrap (user data for a pool) writes a config this agent takes.
    #[test]
    fn the_node_bootstrap_writes_a_valid_config() {
        let root = tempfile::tempdir().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/node-bootstrap.sh");
        let out = std::process::Command::new("sh")
            .arg(&script)
            .env("BERTH_ROOT", root.path())
            .env("BERTH_REGION", "cn-hangzhou")
            .env("BERTH_SCHEDULER", "http://10.0.0.5:19470")
            .env("BERTH_POOL", "web")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let path = root.path().join("etc/berth/agent.toml");
        let c = AgentConfig::parse(&std::fs::read_to_string(&path).unwrap(), &path).unwrap();
        c.validate().unwrap();
        assert_eq!(c.cloud.vpc_endpoint, "https://vpc.cn-hangzhou.aliyuncs.com");
        assert_eq!(c.cloud.credentials_source, berth_cloud::credentials::SourceKind::RamRole);
        assert_eq!((c.scheduler.endpoint.as_str(), c.scheduler.pool.as_str()), ("http://10.0.0.5:19470", "web"));
        let bad = std::process::Command::new("sh").arg(&script).env("BERTH_ROOT", root.path()).env("BERTH_REGION", "cn hangzhou").output().unwrap();
        assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("cn hangzhou"));
    }

    /// The example file shipped beside the binary is a valid config whose values are the defaults.
    #[test]
    fn the_example_file_is_the_defaults() {
        let text = include_str!("../agent.toml.example");
        let parsed = AgentConfig::parse(text, Path::new("agent.toml.example")).unwrap();
        assert_eq!(parsed, AgentConfig::default());
    }
}
